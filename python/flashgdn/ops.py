"""torch integration: the ``flashgdn::chunk_fwd`` and ``flashgdn::chunk_fwd_pool`` custom ops.

Each op runs libflashgdn on the current CUDA stream for CUDA tensors (outputs and workspace come from
torch's caching allocator; nothing synchronises), and the fp64 CPU reference for CPU tensors. Fake
implementations make them traceable by ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional, Tuple

import torch

from . import _lib
from ._convert import from_torch


def _check_env() -> bool:
    return os.environ.get("FLASHGDN_CHECK", "0") not in ("", "0")


def _num_seqs(q: torch.Tensor, cu_seqlens: Optional[torch.Tensor]) -> int:
    return cu_seqlens.shape[0] - 1 if cu_seqlens is not None else q.shape[0]


def _state_shape(n, hv, kd, vd, v_first):
    return (n, hv, vd, kd) if v_first else (n, hv, kd, vd)


def _launch_fwd(q, k, v, g, beta, o, scale, initial_state, final_state, cu_seqlens, state_indices,
                has_initial_state, l2norm, v_first, cp_mode):
    p = _lib.new_fwd_params()
    for name, t in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta), ("o", o),
                    ("initial_state", initial_state), ("final_state", final_state), ("cu_seqlens", cu_seqlens),
                    ("state_indices", state_indices), ("has_initial_state", has_initial_state)):
        setattr(p, name, from_torch(t, name))
    p.scale = float(scale)
    p.use_qk_l2norm = int(l2norm)
    p.state_v_first = int(v_first)
    p.cp_mode = int(cp_mode)
    p.check_inputs = int(_check_env())
    if q.device.type == "cpu":
        _lib.check(_lib.lib.flashgdn_reference_fwd(ctypes.byref(p), _lib.REFERENCE_RECURRENT_FP64))
        return
    for name, t in (("cu_seqlens", cu_seqlens), ("state_indices", state_indices),
                    ("has_initial_state", has_initial_state), ("initial_state", initial_state)):
        if t is not None and t.device != q.device:
            raise ValueError(f"flashgdn: argument '{name}' is on {t.device}, expected {q.device} (the device of 'q')")
    nbytes = ctypes.c_size_t(0)
    _lib.check(_lib.lib.flashgdn_chunk_fwd_workspace_size(ctypes.byref(p), ctypes.byref(nbytes)))
    ws = torch.empty(nbytes.value, dtype=torch.uint8, device=q.device) if nbytes.value else None
    stream = torch.cuda.current_stream(q.device).cuda_stream
    _lib.check(_lib.lib.flashgdn_chunk_fwd(ctypes.byref(p), ws.data_ptr() if ws is not None else None,
                                           nbytes.value, stream))


@torch.library.custom_op("flashgdn::chunk_fwd", mutates_args=())
def chunk_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                 scale: float, initial_state: Optional[torch.Tensor], output_final_state: bool,
                 cu_seqlens: Optional[torch.Tensor], has_initial_state: Optional[torch.Tensor], l2norm: bool,
                 v_first: bool, cp_mode: int) -> Tuple[torch.Tensor, torch.Tensor]:
    o = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    if output_final_state:
        n = _num_seqs(q, cu_seqlens)
        ht = torch.empty(_state_shape(n, v.shape[2], q.shape[3], v.shape[3], v_first), dtype=torch.float32,
                         device=q.device)
    else:
        ht = torch.empty(0, dtype=torch.float32, device=q.device)
    _launch_fwd(q, k, v, g, beta, o, scale, initial_state, ht if output_final_state else None, cu_seqlens, None,
                has_initial_state, l2norm, v_first, cp_mode)
    return o, ht


@chunk_fwd_op.register_fake
def _(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, has_initial_state, l2norm, v_first,
      cp_mode):
    o = q.new_empty(v.shape)
    if output_final_state:
        n = _num_seqs(q, cu_seqlens)
        ht = q.new_empty(_state_shape(n, v.shape[2], q.shape[3], v.shape[3], v_first), dtype=torch.float32)
    else:
        ht = q.new_empty(0, dtype=torch.float32)
    return o, ht


@torch.library.custom_op("flashgdn::chunk_fwd_pool", mutates_args=("pool",))
def chunk_fwd_pool_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                      scale: float, pool: torch.Tensor, state_indices: torch.Tensor,
                      cu_seqlens: Optional[torch.Tensor], has_initial_state: Optional[torch.Tensor], l2norm: bool,
                      v_first: bool, cp_mode: int) -> torch.Tensor:
    o = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    _launch_fwd(q, k, v, g, beta, o, scale, pool, None, cu_seqlens, state_indices, has_initial_state, l2norm,
                v_first, cp_mode)
    return o


@chunk_fwd_pool_op.register_fake
def _(q, k, v, g, beta, scale, pool, state_indices, cu_seqlens, has_initial_state, l2norm, v_first, cp_mode):
    return q.new_empty(v.shape)
