"""Public Python API: ``chunk_gated_delta_rule``, a drop-in for FLA's function of the same name."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import _lib
from .ops import chunk_fwd_autograd, chunk_fwd_pool_op


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    use_qk_l2norm_in_kernel: bool = False,
    state_v_first: bool = False,
    *,
    state_indices: Optional[torch.Tensor] = None,
    has_initial_state: Optional[torch.Tensor] = None,
    cp: str = "auto",
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    cu_seqlens_cpu: Optional[torch.Tensor] = None,
    chunk_indices: Optional[torch.Tensor] = None,
    cp_context=None,
    **kwargs,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chunked gated delta rule forward.

    Args (FLA's names and order):
        q, k: ``[B, T, Hqk, K]``; v: ``[B, T, Hv, V]`` (Hv a multiple of Hqk; value head h reads q/k head
            ``h // (Hv // Hqk)``); fp16 or bf16 on the GPU, any float dtype on the CPU (reference).
        g: ``[B, T, Hv]`` fp32 per-token log decay (<= 0). beta: ``[B, T, Hv]`` fp32 or q's dtype.
        scale: defaults to ``K ** -0.5``.
        initial_state: ``[N, Hv, K, V]`` (``[N, Hv, V, K]`` if ``state_v_first``), fp32 or bf16.
        output_final_state: also return the final state (fp32, same layout).
        cu_seqlens: ``[N + 1]`` int32/int64 offsets of packed sequences (then B must be 1).
        use_qk_l2norm_in_kernel: L2-normalise q and k per head (``x * rsqrt(sum(x^2) + 1e-6)``).
        state_indices: ``[N]`` slots into a state pool; ``initial_state`` is then the pool ``[P, Hv, K, V]``,
            read and written in place (-1: start from zeros, write nothing); returns ``(o, None)``.
        has_initial_state: ``[N]`` bool; False starts that sequence from zeros.
        cp: intra-card context parallelism, "auto" | "on" | "off": "auto" takes it where the cost model
            predicts a gain (few heads x sequences, long sequences), "on" always, "off" never
            (docs/design.md §5.1; on Hopper with its gate-driven warm-up, whose dropped term is below e^-20 of the
            state it replaces, §6.1).

    FLA compatibility (keyword-only): ``use_beta_sigmoid_in_kernel`` (beta are logits: sigmoid applied
    first), ``allow_neg_eigval`` (with it, ``2 * sigmoid(beta)``), ``cu_seqlens_cpu`` (a host copy of
    cu_seqlens: used only to plan the V slice and context parallelism from the real lengths, never for
    results), ``chunk_indices`` (accepted and unused), ``transpose_state_layout`` (FLA's deprecated name of
    ``state_v_first``). ``cp_context`` (FLA's multi-GPU context parallelism) and ``head_first`` are
    rejected with an error, as are unknown keyword arguments.

    Returns ``(o, final_state or None)``; ``o`` has q's dtype. Set ``FLASHGDN_CHECK=1`` to validate the
    contents of ``cu_seqlens`` / ``state_indices`` and g (synchronises; not for CUDA graphs).
    """
    if "transpose_state_layout" in kwargs:
        if state_v_first:
            raise ValueError("flashgdn: pass either 'state_v_first' or the deprecated 'transpose_state_layout'")
        state_v_first = bool(kwargs.pop("transpose_state_layout"))
    if "head_first" in kwargs:
        raise ValueError("flashgdn: 'head_first' is not supported: inputs are sequence-first [B, T, H, D]")
    if kwargs:
        raise TypeError(f"flashgdn: unexpected keyword arguments {sorted(kwargs)}")
    if cp_context is not None:
        raise NotImplementedError("flashgdn: 'cp_context' (FLA's multi-GPU context parallelism) is not supported")
    del chunk_indices  # accepted for drop-in compatibility; not needed
    if use_beta_sigmoid_in_kernel:
        beta = beta.float().sigmoid().to(beta.dtype) * (2.0 if allow_neg_eigval else 1.0)
    elif allow_neg_eigval:
        raise ValueError("flashgdn: 'allow_neg_eigval' takes effect only with 'use_beta_sigmoid_in_kernel=True'")
    if cp not in _lib.CP_MODES:
        raise ValueError(f"flashgdn: argument 'cp' must be one of 'auto', 'on', 'off', got {cp!r}")
    kd = q.shape[-1] if q.dim() > 0 else 0
    if scale is None:
        scale = 1.0 / math.sqrt(kd) if kd > 0 else 1.0
    if not math.isfinite(float(scale)) or float(scale) == 0.0:
        raise ValueError(f"flashgdn: argument 'scale' must be finite and nonzero, got {scale}")
    cp_mode = _lib.CP_MODES[cp]
    if state_indices is not None:
        if initial_state is None:
            raise ValueError("flashgdn: argument 'state_indices' requires 'initial_state' (the state pool)")
        if output_final_state:
            raise ValueError("flashgdn: 'output_final_state' must be False with 'state_indices': final states are "
                             "written back into the 'initial_state' pool in place")
        o = chunk_fwd_pool_op(q, k, v, g, beta, float(scale), initial_state, state_indices, cu_seqlens,
                              has_initial_state, bool(use_qk_l2norm_in_kernel), bool(state_v_first), cp_mode,
                              cu_seqlens_cpu)
        return o, None
    o, ht = chunk_fwd_autograd(q, k, v, g, beta, float(scale), initial_state, bool(output_final_state), cu_seqlens,
                         has_initial_state, bool(use_qk_l2norm_in_kernel), bool(state_v_first), cp_mode,
                         cu_seqlens_cpu)
    return o, (ht if output_final_state else None)
