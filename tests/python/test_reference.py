"""The library's CPU references through Python (numpy only, no GPU, no torch)."""
import numpy as np
import pytest

import flashgdn
from flashgdn.reference import reference_bwd, reference_fwd
from naive import naive_fwd


def make(rng, lens, hqk=1, hv=2, kd=8, vd=8, varlen=True):
    T = sum(lens) if varlen else lens[0]
    B = 1 if varlen else len(lens)
    q = rng.standard_normal((B, T, hqk, kd)) / np.sqrt(kd)
    k = rng.standard_normal((B, T, hqk, kd)) / np.sqrt(kd)
    v = rng.standard_normal((B, T, hv, vd))
    g = -rng.uniform(0, 0.5, (B, T, hv))
    beta = rng.uniform(0, 1, (B, T, hv))
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32) if varlen else None
    h0 = rng.standard_normal((len(lens), hv, kd, vd)) * 0.5
    return q, k, v, g, beta, cu, h0


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("l2norm", [False, True])
@pytest.mark.parametrize("lens,hqk,hv", [([1, 63, 65], 1, 3), ([20, 0, 7], 2, 4)])
def test_recurrent_matches_independent_numpy(l2norm, lens, hqk, hv):
    rng = np.random.default_rng(0)
    q, k, v, g, beta, cu, h0 = make(rng, lens, hqk, hv)
    o, ht = reference_fwd(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                          use_qk_l2norm_in_kernel=l2norm)
    o2, ht2 = naive_fwd(q, k, v, g, beta, 8 ** -0.5, h0, cu, l2norm)
    assert rel(o, o2) < 1e-12 and rel(ht, ht2) < 1e-12


def test_chunked_matches_recurrent_and_v_first():
    rng = np.random.default_rng(1)
    q, k, v, g, beta, cu, h0 = make(rng, [130, 64], 1, 2, 16, 16)
    o, ht = reference_fwd(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    o2, ht2 = reference_fwd(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                            algo="chunked")
    assert rel(o2, o) < 1e-5 and rel(ht2, ht) < 1e-5
    o3, ht3 = reference_fwd(q, k, v, g, beta, initial_state=np.ascontiguousarray(h0.transpose(0, 1, 3, 2)),
                            output_final_state=True, cu_seqlens=cu, state_v_first=True)
    assert rel(o3, o) < 1e-14 and rel(ht3.transpose(0, 1, 3, 2), ht) < 1e-14


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    q, k, v, g, beta, cu, h0 = make(rng, [5, 3], 1, 2, 4, 4)
    do = rng.standard_normal(v.shape)
    dht = rng.standard_normal(h0.shape)
    grads = reference_bwd(q, k, v, g, beta, do, dht, initial_state=h0, cu_seqlens=cu)

    def loss(q_, g_):
        o, ht = reference_fwd(q_, k, v, g_, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
        return (o * do).sum() + (ht * dht).sum()

    eps = 1e-6
    for idx in [(0, 0, 0, 1), (0, 6, 0, 3)]:
        qp, qm = q.copy(), q.copy()
        qp[idx] += eps
        qm[idx] -= eps
        fd = (loss(qp, g) - loss(qm, g)) / (2 * eps)
        assert abs(fd - grads["dq"][idx]) < 1e-6 * max(1, abs(fd))
    for idx in [(0, 0, 1), (0, 7, 0)]:
        gp, gm = g.copy(), g.copy()
        gp[idx] += eps
        gm[idx] -= eps
        fd = (loss(q, gp) - loss(q, gm)) / (2 * eps)
        assert abs(fd - grads["dg"][idx]) < 1e-6 * max(1, abs(fd))


def test_state_pool_in_place():
    rng = np.random.default_rng(3)
    q, k, v, g, beta, cu, _ = make(rng, [4, 6, 2])
    pool = rng.standard_normal((4, 2, 8, 8))
    pool0 = pool.copy()
    o, ht = reference_fwd(q, k, v, g, beta, initial_state=pool, cu_seqlens=cu,
                          state_indices=np.array([2, -1, 0], np.int64), has_initial_state=np.array([True, True, False]))
    assert ht is None
    h0 = np.stack([pool0[2], np.zeros_like(pool0[0]), np.zeros_like(pool0[0])])
    o2, ht2 = naive_fwd(q, k, v, g, beta, 8 ** -0.5, h0, cu)
    assert rel(o, o2) < 1e-12
    assert rel(pool[2], ht2[0]) < 1e-12 and rel(pool[0], ht2[2]) < 1e-12
    assert np.array_equal(pool[1], pool0[1]) and np.array_equal(pool[3], pool0[3])


def test_errors_name_the_argument():
    rng = np.random.default_rng(4)
    q, k, v, g, beta, cu, h0 = make(rng, [4, 4])
    with pytest.raises(flashgdn.FlashGDNError, match="argument 'k' has shape"):
        reference_fwd(q, k[:, :5], v, g, beta, cu_seqlens=cu)
    with pytest.raises(flashgdn.FlashGDNError, match="cu_seqlens is not non-decreasing") as e:
        reference_fwd(q, k, v, g, beta, cu_seqlens=np.array([0, 5, 4, 8][:3], np.int32))
    assert e.value.status == 4
    with pytest.raises(flashgdn.FlashGDNError, match="Hv = 3 value heads, not a multiple of Hqk = 2"):
        reference_fwd(np.concatenate([q, q], 2), np.concatenate([k, k], 2), v[:, :, :1].repeat(3, 2),
                      g[:, :, :1].repeat(3, 2), beta[:, :, :1].repeat(3, 2), cu_seqlens=cu)


def test_library_info():
    assert flashgdn.__version__ == "0.1.0"
    assert isinstance(flashgdn.built_with_gpu, bool)


def test_init_names_a_bad_device():
    with pytest.raises(flashgdn.FlashGDNError, match="argument 'device' = -2"):
        flashgdn.init(-2)
