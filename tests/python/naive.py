"""An independent numpy implementation of the recurrence, used to cross-check the library's reference."""
import numpy as np


def naive_fwd(q, k, v, g, beta, scale, h0=None, cu=None, l2norm=False):
    B, T, Hqk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    grp = Hv // Hqk
    seqs = [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)] if cu is not None else [(b, 0, T) for b in range(B)]
    o = np.zeros((B, T, Hv, V))
    ht = np.zeros((len(seqs), Hv, K, V))
    for n, (b, s, e) in enumerate(seqs):
        for h in range(Hv):
            S = np.zeros((K, V)) if h0 is None else h0[n, h].astype(np.float64).copy()
            for t in range(s, e):
                qt, kt = q[b, t, h // grp].astype(np.float64), k[b, t, h // grp].astype(np.float64)
                if l2norm:
                    qt = qt / np.sqrt((qt * qt).sum() + 1e-6)
                    kt = kt / np.sqrt((kt * kt).sum() + 1e-6)
                S = S * np.exp(g[b, t, h])
                u = beta[b, t, h] * (v[b, t, h] - S.T @ kt)
                S = S + np.outer(kt, u)
                o[b, t, h] = scale * (S.T @ qt)
            ht[n, h] = S
    return o, ht
