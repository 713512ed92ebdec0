"""numpy arrays / torch tensors -> flashgdn_tensor_t descriptions (pointer, dtype, shape, strides)."""
from __future__ import annotations

from . import _lib

_NP = {"float32": _lib.DTYPE_FLOAT32, "float16": _lib.DTYPE_FLOAT16, "float64": _lib.DTYPE_FLOAT64,
       "int32": _lib.DTYPE_INT32, "int64": _lib.DTYPE_INT64, "bool": _lib.DTYPE_BOOL}


def from_numpy(a, name: str) -> _lib.Tensor:
    if a is None:
        return _lib.Tensor()
    key = str(a.dtype)
    if key not in _NP:
        raise TypeError(f"flashgdn: argument '{name}' has unsupported numpy dtype {a.dtype}")
    if a.ndim == 0 or a.ndim > _lib.MAX_DIMS:
        raise ValueError(f"flashgdn: argument '{name}' must have 1 to 4 dimensions, got {a.ndim}")
    item = a.itemsize
    if any(s % item for s in a.strides):
        raise ValueError(f"flashgdn: argument '{name}' has strides that are not a multiple of its item size")
    return _lib.make_tensor(a.ctypes.data, _NP[key], a.shape, [s // item for s in a.strides])


_TORCH_CODES = None  # torch dtype -> flashgdn dtype, built on first use (torch is optional)


def _torch_codes() -> dict:
    global _TORCH_CODES
    if _TORCH_CODES is None:
        import torch

        _TORCH_CODES = {torch.float32: _lib.DTYPE_FLOAT32, torch.float16: _lib.DTYPE_FLOAT16,
                        torch.bfloat16: _lib.DTYPE_BFLOAT16, torch.float64: _lib.DTYPE_FLOAT64,
                        torch.int32: _lib.DTYPE_INT32, torch.int64: _lib.DTYPE_INT64, torch.bool: _lib.DTYPE_BOOL}
    return _TORCH_CODES


def pack_torch(buf, offset: int, t, name: str) -> None:
    """Describes torch tensor ``t`` (not None) into the params buffer ``buf`` at byte ``offset``."""
    # NOTE: one struct.pack_into per tensor: a backward call describes 15 tensors, and ctypes field
    # assignments cost several times more (the call's CPU time is latency before its first kernel).
    shape = t.shape
    n = len(shape)
    if n == 0 or n > _lib.MAX_DIMS:
        raise ValueError(f"flashgdn: argument '{name}' must have 1 to 4 dimensions, got {n}")
    code = _torch_codes().get(t.dtype)
    if code is None:
        raise TypeError(f"flashgdn: argument '{name}' has unsupported dtype {t.dtype}")
    pad = _lib.PAD[n]
    _lib.TENSOR_PACK.pack_into(buf, offset, t.data_ptr(), code, n, *shape, *pad, *t.stride(), *pad)


def from_torch(t, name: str) -> _lib.Tensor:
    if t is None:
        return _lib.Tensor()
    dst = _lib.Tensor()
    pack_torch(memoryview(dst).cast("B"), 0, t, name)
    return dst
