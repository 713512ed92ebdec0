"""torch integration: the ``flashgdn::chunk_fwd``, ``flashgdn::chunk_fwd_pool`` and ``flashgdn::chunk_bwd``
custom ops, and autograd for ``chunk_fwd``.

Each op runs libflashgdn on the current CUDA stream for CUDA tensors (outputs and workspace come from
torch's caching allocator; nothing synchronises), and the fp64 CPU reference for CPU tensors. Fake
implementations make them traceable by ``torch.compile(fullgraph=True)``.

``chunk_fwd_autograd`` (what ``chunk_gated_delta_rule`` calls) runs eager calls on plain tensors through
``_ChunkFwdFunction`` (the op's implementation, context and backward, without its dispatch) and traced calls
through the op.

Low-level entry points (FLA / FlashQLA style): ``chunk_fwd(...) -> (o, final_state)`` and
``chunk_bwd(...) -> (dq, dk, dv, dg, dbeta, dh0)``.
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional, Tuple

import torch

from . import _lib
from ._convert import from_torch, pack_torch


def _check_env() -> bool:
    return os.environ.get("FLASHGDN_CHECK", "0") not in ("", "0")


def _num_seqs(q: torch.Tensor, cu_seqlens: Optional[torch.Tensor]) -> int:
    return cu_seqlens.shape[0] - 1 if cu_seqlens is not None else q.shape[0]


def _state_shape(n, hv, kd, vd, v_first):
    return (n, hv, vd, kd) if v_first else (n, hv, kd, vd)


def _state_dtype(q: torch.Tensor) -> torch.dtype:
    # fp32 final states (as FLA); fp64 only for the CPU reference on fp64 inputs.
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _raw_stream(device: torch.device) -> int:
    """The current CUDA stream's handle. NOTE: torch's private raw-stream query where it exists (~1 µs; a
    torch.cuda.Stream object costs ~7 µs on the GPU box, before the first kernel)."""
    if _RAW_STREAM is not None:
        return _RAW_STREAM(device.index if device.index is not None else torch.cuda.current_device())
    return torch.cuda.current_stream(device).cuda_stream


_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _launch_on_gpu(kind: str, p, device: torch.device) -> None:
    """Workspace from torch's caching allocator, launch on the current stream (no synchronisation)."""
    nbytes = ctypes.c_size_t(0)
    _lib.check(getattr(_lib.lib, f"flashgdn_chunk_{kind}_workspace_size")(ctypes.byref(p), ctypes.byref(nbytes)))
    ws = torch.empty(nbytes.value, dtype=torch.uint8, device=device) if nbytes.value else None
    stream = _raw_stream(device)
    _lib.check(getattr(_lib.lib, f"flashgdn_chunk_{kind}")(ctypes.byref(p), ws.data_ptr() if ws is not None else None,
                                                          nbytes.value, stream))


def _fill_params(p, q, named, scale, l2norm, v_first):
    """The fields forward and backward parameters share; every tensor checked to be on q's device first."""
    buf = memoryview(p).cast("B")  # the struct's own bytes, written in place
    offsets = _OFFSETS[type(p)]
    dev = q.device
    for name, t in named:  # fresh params: absent tensors are already empty descriptions
        if t is not None:
            if t.device != dev:
                raise ValueError(f"flashgdn: argument '{name}' is on {t.device}, expected {dev} (the device of 'q')")
            pack_torch(buf, offsets[name], t, name)
    p.scale = float(scale)
    p.use_qk_l2norm = int(l2norm)
    p.state_v_first = int(v_first)
    p.check_inputs = int(_check_env())
    return p


_OFFSETS = {cls: {name: getattr(cls, name).offset for name, ftype in cls._fields_ if ftype is _lib.Tensor}
            for cls in (_lib.FwdParams, _lib.BwdParams)}


def _launch_fwd(q, k, v, g, beta, o, scale, initial_state, final_state, cu_seqlens, state_indices,
                has_initial_state, l2norm, v_first, cp_mode, cu_seqlens_cpu=None):
    named = (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta), ("o", o), ("initial_state", initial_state),
             ("final_state", final_state), ("cu_seqlens", cu_seqlens), ("state_indices", state_indices),
             ("has_initial_state", has_initial_state))
    p = _fill_params(_lib.new_fwd_params(), q, named, scale, l2norm, v_first)
    p.cp_mode = int(cp_mode)
    if cu_seqlens_cpu is not None and q.device.type != "cpu":
        # Planning only (V slice, context parallelism from the real lengths); read during this call.
        if cu_seqlens_cpu.device.type != "cpu":
            raise ValueError(f"flashgdn: argument 'cu_seqlens_cpu' is on {cu_seqlens_cpu.device}, expected the CPU")
        p.cu_seqlens_host = from_torch(cu_seqlens_cpu, "cu_seqlens_cpu")
    if q.device.type == "cpu":
        _lib.check(_lib.lib.flashgdn_reference_fwd(ctypes.byref(p), _lib.REFERENCE_RECURRENT_FP64))
        return
    _launch_on_gpu("fwd", p, q.device)


def _chunk_fwd_impl(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, has_initial_state,
                    l2norm, v_first, cp_mode, cu_seqlens_cpu=None):
    o = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    if output_final_state:
        n = _num_seqs(q, cu_seqlens)
        ht = torch.empty(_state_shape(n, v.shape[2], q.shape[3], v.shape[3], v_first), dtype=_state_dtype(q),
                         device=q.device)
    else:
        ht = torch.empty(0, dtype=_state_dtype(q), device=q.device)
    _launch_fwd(q, k, v, g, beta, o, scale, initial_state, ht if output_final_state else None, cu_seqlens, None,
                has_initial_state, l2norm, v_first, cp_mode, cu_seqlens_cpu)
    return o, ht


@torch.library.custom_op("flashgdn::chunk_fwd", mutates_args=())
def chunk_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                 scale: float, initial_state: Optional[torch.Tensor], output_final_state: bool,
                 cu_seqlens: Optional[torch.Tensor], has_initial_state: Optional[torch.Tensor], l2norm: bool,
                 v_first: bool, cp_mode: int,
                 cu_seqlens_cpu: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    return _chunk_fwd_impl(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                           has_initial_state, l2norm, v_first, cp_mode, cu_seqlens_cpu)


@chunk_fwd_op.register_fake
def _(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, has_initial_state, l2norm, v_first,
      cp_mode, cu_seqlens_cpu=None):
    o = q.new_empty(v.shape)
    if output_final_state:
        n = _num_seqs(q, cu_seqlens)
        ht = q.new_empty(_state_shape(n, v.shape[2], q.shape[3], v.shape[3], v_first), dtype=_state_dtype(q))
    else:
        ht = q.new_empty(0, dtype=_state_dtype(q))
    return o, ht


@torch.library.custom_op("flashgdn::chunk_fwd_pool", mutates_args=("pool",))
def chunk_fwd_pool_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                      scale: float, pool: torch.Tensor, state_indices: torch.Tensor,
                      cu_seqlens: Optional[torch.Tensor], has_initial_state: Optional[torch.Tensor], l2norm: bool,
                      v_first: bool, cp_mode: int, cu_seqlens_cpu: Optional[torch.Tensor] = None) -> torch.Tensor:
    o = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    _launch_fwd(q, k, v, g, beta, o, scale, pool, None, cu_seqlens, state_indices, has_initial_state, l2norm,
                v_first, cp_mode, cu_seqlens_cpu)
    return o


@chunk_fwd_pool_op.register_fake
def _(q, k, v, g, beta, scale, pool, state_indices, cu_seqlens, has_initial_state, l2norm, v_first, cp_mode,
      cu_seqlens_cpu=None):
    return q.new_empty(v.shape)


def _launch_bwd(q, k, v, g, beta, scale, initial_state, cu_seqlens, do, dht, dq, dk, dv, dg, dbeta, dh0, l2norm,
                v_first):
    named = (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta), ("initial_state", initial_state),
             ("cu_seqlens", cu_seqlens), ("d_o", do), ("d_final_state", dht), ("dq", dq), ("dk", dk), ("dv", dv),
             ("dg", dg), ("dbeta", dbeta), ("d_initial_state", dh0))
    p = _fill_params(_lib.new_bwd_params(), q, named, scale, l2norm, v_first)
    if q.device.type == "cpu":
        _lib.check(_lib.lib.flashgdn_reference_bwd(ctypes.byref(p)))
        return
    _launch_on_gpu("bwd", p, q.device)


def _chunk_bwd_impl(q, k, v, g, beta, scale, initial_state, cu_seqlens, do, dht, l2norm, v_first):
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dg = torch.empty_like(g)  # fp32 on the GPU (g is fp32 there); the CPU reference also takes fp64
    dbeta = torch.empty_like(beta)
    if initial_state is not None:
        dh0 = torch.empty(initial_state.shape, dtype=torch.float64 if initial_state.dtype == torch.float64
                          else torch.float32, device=q.device)
    else:
        dh0 = torch.empty(0, dtype=torch.float32, device=q.device)
    _launch_bwd(q, k, v, g, beta, scale, initial_state, cu_seqlens, do.contiguous(),
                None if dht is None else dht.to(_state_dtype(q)).contiguous(), dq, dk, dv, dg, dbeta,
                dh0 if initial_state is not None else None, l2norm, v_first)
    return dq, dk, dv, dg, dbeta, dh0


@torch.library.custom_op("flashgdn::chunk_bwd", mutates_args=())
def chunk_bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                 scale: float, initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                 do: torch.Tensor, dht: Optional[torch.Tensor], l2norm: bool,
                 v_first: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                         torch.Tensor]:
    return _chunk_bwd_impl(q, k, v, g, beta, scale, initial_state, cu_seqlens, do, dht, l2norm, v_first)


@chunk_bwd_op.register_fake
def _(q, k, v, g, beta, scale, initial_state, cu_seqlens, do, dht, l2norm, v_first):
    dh0 = (q.new_empty(initial_state.shape, dtype=torch.float64 if initial_state.dtype == torch.float64
                       else torch.float32) if initial_state is not None
           else q.new_empty(0, dtype=torch.float32))
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(g),
            torch.empty_like(beta), dh0)


def _plain_eager(tensors) -> bool:
    """Not traced (torch.compile) and every given tensor a plain torch.Tensor (no fake, functional or other
    subclass): the implementation may be called without the custom op."""
    return not torch.compiler.is_compiling() and all(type(t) is torch.Tensor for t in tensors if t is not None)


def _fwd_setup_context(ctx, inputs, output):
    (q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, has_initial_state, l2norm, v_first,
     cp_mode, cu_seqlens_cpu) = inputs
    if initial_state is not None and has_initial_state is not None:
        # Sequences whose mask is False start from zeros: their initial state takes no part in the result.
        mask = has_initial_state.view(-1, *([1] * (initial_state.dim() - 1)))
        initial_state = torch.where(mask, initial_state, torch.zeros_like(initial_state))
    else:
        mask = None
    ctx.save_for_backward(q, k, v, g, beta, initial_state, cu_seqlens, mask)
    ctx.scale, ctx.l2norm, ctx.v_first, ctx.output_final_state = scale, l2norm, v_first, output_final_state
    ctx.initial_state_dtype = None if initial_state is None else initial_state.dtype


def _fwd_backward(ctx, do, dht):
    q, k, v, g, beta, initial_state, cu_seqlens, mask = ctx.saved_tensors
    if do is None:
        do = torch.zeros(v.shape, dtype=q.dtype, device=q.device)
    if not ctx.output_final_state or dht is None or dht.numel() == 0:
        dht = None
    # NOTE: an eager backward on plain tensors calls the implementation directly: the custom op's dispatch
    # costs tens of µs of CPU that precede the first kernel. Traced (torch.compile, fake or functional
    # tensor subclasses), the op itself goes into the graph.
    bwd = _chunk_bwd_impl if _plain_eager((q,)) else chunk_bwd_op
    dq, dk, dv, dg, dbeta, dh0 = bwd(q, k, v, g, beta, ctx.scale, initial_state, cu_seqlens, do, dht, ctx.l2norm,
                                     ctx.v_first)
    if initial_state is None:
        dh0 = None
    else:
        if mask is not None:
            dh0 = torch.where(mask, dh0, torch.zeros_like(dh0))
        dh0 = dh0.to(ctx.initial_state_dtype)
    return dq, dk, dv, dg, dbeta, None, dh0, None, None, None, None, None, None, None


chunk_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


class _ChunkFwdFunction(torch.autograd.Function):
    """The eager form of ``chunk_fwd_op`` with its autograd: the same implementation, context and backward,
    without the custom op's dispatch and autograd wrapper (tens of µs of CPU per call, all of it before the
    first kernel)."""

    @staticmethod
    def forward(ctx, *inputs):
        o, ht = _chunk_fwd_impl(*inputs)
        _fwd_setup_context(ctx, inputs, (o, ht))
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        return _fwd_backward(ctx, do, dht)


def chunk_fwd_autograd(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, has_initial_state,
                       l2norm, v_first, cp_mode, cu_seqlens_cpu=None):
    """``chunk_fwd_op`` with autograd. NOTE: eager calls on plain tensors skip the custom op (see
    _ChunkFwdFunction); traced calls (torch.compile, fake or functional tensors, ...) take the op, which is
    what the graph records."""
    inputs = (q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, has_initial_state, l2norm,
              v_first, cp_mode, cu_seqlens_cpu)
    if not _plain_eager((q, k, v, g, beta, initial_state, cu_seqlens, has_initial_state, cu_seqlens_cpu)):
        return chunk_fwd_op(*inputs)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, g, beta, initial_state)):
        return _ChunkFwdFunction.apply(*inputs)
    return _chunk_fwd_impl(*inputs)


def _default_scale(q: torch.Tensor, scale: Optional[float]) -> float:
    return float(scale) if scale is not None else q.shape[-1] ** -0.5


def chunk_fwd(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
              use_qk_l2norm_in_kernel=False, state_v_first=False, has_initial_state=None, cp="auto",
              cu_seqlens_cpu=None):
    """Low-level forward without autograd bookkeeping: returns ``(o, final_state or None)``."""
    o, ht = chunk_fwd_op(q, k, v, g, beta, _default_scale(q, scale), initial_state, bool(output_final_state),
                         cu_seqlens, has_initial_state, bool(use_qk_l2norm_in_kernel), bool(state_v_first),
                         _lib.CP_MODES[cp], cu_seqlens_cpu)
    return o, (ht if output_final_state else None)


def chunk_bwd(q, k, v, g, beta, do, dht=None, scale=None, initial_state=None, cu_seqlens=None,
              use_qk_l2norm_in_kernel=False, state_v_first=False):
    """Low-level backward of :func:`chunk_fwd`: gradients of ``sum(o * do) + sum(final_state * dht)``.

    Returns ``(dq, dk, dv, dg, dbeta, dh0)``: dq/dk/dv in q's dtype (dq, dk summed over the value heads of
    each group, w.r.t. the un-normalised q/k when l2norm is on), dg fp32 w.r.t. the raw per-token g,
    dbeta in beta's dtype, dh0 fp32 (None without an initial state).
    """
    dq, dk, dv, dg, dbeta, dh0 = chunk_bwd_op(q, k, v, g, beta, _default_scale(q, scale), initial_state, cu_seqlens,
                                              do, dht, bool(use_qk_l2norm_in_kernel), bool(state_v_first))
    return dq, dk, dv, dg, dbeta, (dh0 if initial_state is not None else None)
