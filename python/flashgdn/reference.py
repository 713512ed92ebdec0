"""The CPU references of libflashgdn on numpy arrays (no torch needed).

``reference_fwd`` runs the fp64 token-by-token recurrence (``algo="recurrent"``) or the chunked fp32
implementation that mirrors the GPU decomposition (``algo="chunked"``); ``reference_bwd`` its reverse
mode. Shapes and semantics are those of :func:`flashgdn.chunk_gated_delta_rule`.
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import _lib
from ._convert import from_numpy

_ALGOS = {"recurrent": _lib.REFERENCE_RECURRENT_FP64, "chunked": _lib.REFERENCE_CHUNKED_FP32}


def _state_shape(n, hv, kd, vd, v_first):
    return (n, hv, vd, kd) if v_first else (n, hv, kd, vd)


def _num_seqs(q, cu_seqlens):
    return len(cu_seqlens) - 1 if cu_seqlens is not None else q.shape[0]


def reference_fwd(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                  use_qk_l2norm_in_kernel=False, state_v_first=False, state_indices=None, has_initial_state=None,
                  algo="recurrent"):
    """Returns ``(o, final_state)`` as float64 arrays (``final_state`` None unless requested).

    With ``state_indices``, ``initial_state`` is a pool updated in place (it must then be a writable
    float32/float64 array) and ``final_state`` is None.
    """
    if algo not in _ALGOS:
        raise ValueError(f"flashgdn: argument 'algo' must be one of {sorted(_ALGOS)}, got {algo!r}")
    keep = []

    def arr(x, dtype=None):
        if x is None:
            return None
        a = np.asarray(x, dtype=dtype)
        keep.append(a)
        return a

    p = _lib.new_fwd_params()
    q, k, v, g, beta = (arr(x) for x in (q, k, v, g, beta))
    for name, a in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta)):
        setattr(p, name, from_numpy(a, name))
    o = np.full(v.shape if v.ndim == 4 else (1,), np.nan, dtype=np.float64)
    keep.append(o)
    p.o = from_numpy(o, "o")
    cu = arr(cu_seqlens)
    p.cu_seqlens = from_numpy(cu, "cu_seqlens")
    if state_indices is not None:
        if not isinstance(initial_state, np.ndarray):
            raise TypeError("flashgdn: with 'state_indices', 'initial_state' must be a numpy array (updated in place)")
        p.initial_state = from_numpy(initial_state, "initial_state")
        p.state_indices = from_numpy(arr(state_indices), "state_indices")
    else:
        p.initial_state = from_numpy(arr(initial_state), "initial_state")
    p.has_initial_state = from_numpy(arr(has_initial_state, np.bool_), "has_initial_state")
    ht = None
    if output_final_state and state_indices is None:
        n = _num_seqs(q, cu)
        ht = np.full(_state_shape(n, v.shape[2], q.shape[3], v.shape[3], state_v_first), np.nan)
        p.final_state = from_numpy(ht, "final_state")
    p.scale = 0.0 if scale is None else float(scale)
    p.use_qk_l2norm = int(bool(use_qk_l2norm_in_kernel))
    p.state_v_first = int(bool(state_v_first))
    _lib.check(_lib.lib.flashgdn_reference_fwd(ctypes.byref(p), _ALGOS[algo]))
    return o, ht


def reference_bwd(q, k, v, g, beta, do, dht=None, scale=None, initial_state=None, cu_seqlens=None,
                  use_qk_l2norm_in_kernel=False, state_v_first=False):
    """Gradients of ``sum(o * do) + sum(final_state * dht)``; returns a dict of float64 arrays
    ``dq, dk, dv, dg, dbeta`` and ``dh0`` (None without an initial state)."""
    keep = []

    def arr(x):
        if x is None:
            return None
        a = np.asarray(x)
        keep.append(a)
        return a

    p = _lib.new_bwd_params()
    q, k, v, g, beta, do, dht, h0, cu = (arr(x) for x in (q, k, v, g, beta, do, dht, initial_state, cu_seqlens))
    for name, a in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta), ("d_o", do),
                    ("d_final_state", dht), ("initial_state", h0), ("cu_seqlens", cu)):
        setattr(p, name, from_numpy(a, name))
    out = {}
    for name, like in (("dq", q), ("dk", k), ("dv", v), ("dg", g), ("dbeta", beta)):
        out[name] = np.full(like.shape, np.nan)
        setattr(p, name, from_numpy(out[name], name))
    out["dh0"] = None
    if h0 is not None:
        out["dh0"] = np.full(h0.shape, np.nan)
        p.d_initial_state = from_numpy(out["dh0"], "d_initial_state")
    p.scale = 0.0 if scale is None else float(scale)
    p.use_qk_l2norm = int(bool(use_qk_l2norm_in_kernel))
    p.state_v_first = int(bool(state_v_first))
    _lib.check(_lib.lib.flashgdn_reference_bwd(ctypes.byref(p)))
    return out
