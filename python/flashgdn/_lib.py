"""ctypes binding of the FlashGDN C ABI (include/flashgdn/flashgdn.h).

The shared library is found, in order, at $FLASHGDN_LIBRARY, next to this file (``pip install .``
puts it there), or in a build tree (``build/`` at the repository root). The ABI version is checked at
import.
"""
from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

ABI_VERSION = 1
MAX_DIMS = 4

SUCCESS = 0
ERROR_INVALID_ARGUMENT = 1
ERROR_UNSUPPORTED = 2
ERROR_WORKSPACE = 3
ERROR_INVALID_DATA = 4
ERROR_CUDA = 5
ERROR_NO_DEVICE = 6
ERROR_INTERNAL = 7

DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_FLOAT64, DTYPE_INT32, DTYPE_INT64, DTYPE_BOOL = range(7)

REFERENCE_RECURRENT_FP64 = 0
REFERENCE_CHUNKED_FP32 = 1

CP_MODES = {"auto": 0, "on": 1, "off": 2}


class FlashGDNError(RuntimeError):
    """A FlashGDN call failed. ``status`` is the C status code; the message names the argument."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIMS),
        ("stride", ctypes.c_int64 * MAX_DIMS),
    ]


class FwdParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t)] + [
        (n, Tensor)
        for n in ("q", "k", "v", "g", "beta", "o", "initial_state", "final_state", "cu_seqlens",
                  "state_indices", "has_initial_state")
    ] + [
        ("scale", ctypes.c_float),
        ("use_qk_l2norm", ctypes.c_int32),
        ("state_v_first", ctypes.c_int32),
        ("check_inputs", ctypes.c_int32),
        ("cp_mode", ctypes.c_int32),
        ("reserved0", ctypes.c_int32),
        ("cu_seqlens_host", Tensor),
    ]


class BwdParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t)] + [
        (n, Tensor)
        for n in ("q", "k", "v", "g", "beta", "initial_state", "cu_seqlens", "d_o", "d_final_state", "dq",
                  "dk", "dv", "dg", "dbeta", "d_initial_state")
    ] + [
        ("scale", ctypes.c_float),
        ("use_qk_l2norm", ctypes.c_int32),
        ("state_v_first", ctypes.c_int32),
        ("check_inputs", ctypes.c_int32),
    ]


def _candidates():
    env = os.environ.get("FLASHGDN_LIBRARY")
    if env:
        yield Path(env)
        return
    here = Path(__file__).resolve().parent
    yield here / "libflashgdn.so"
    root = here.parent.parent
    for build in sorted(root.glob("build*")):
        yield build / "libflashgdn.so"


def _load():
    tried = []
    for path in _candidates():
        tried.append(str(path))
        if path.is_file():
            return ctypes.CDLL(str(path)), str(path)
    raise ImportError(
        "flashgdn: libflashgdn.so not found (tried: " + ", ".join(tried) + "). Install with `pip install .` "
        "or set FLASHGDN_LIBRARY to the library built by CMake."
    )


lib, library_path = _load()

lib.flashgdn_abi_version.restype = ctypes.c_int32
lib.flashgdn_version_string.restype = ctypes.c_char_p
lib.flashgdn_built_with_gpu.restype = ctypes.c_int32
lib.flashgdn_get_last_error.restype = ctypes.c_char_p
lib.flashgdn_status_string.restype = ctypes.c_char_p
lib.flashgdn_status_string.argtypes = [ctypes.c_int]
lib.flashgdn_chunk_fwd_params_init.argtypes = [ctypes.POINTER(FwdParams)]
lib.flashgdn_chunk_bwd_params_init.argtypes = [ctypes.POINTER(BwdParams)]
for _name, _params in (("fwd", FwdParams), ("bwd", BwdParams)):
    getattr(lib, f"flashgdn_chunk_{_name}_workspace_size").argtypes = [
        ctypes.POINTER(_params), ctypes.POINTER(ctypes.c_size_t)]
    getattr(lib, f"flashgdn_chunk_{_name}_workspace_size").restype = ctypes.c_int
    getattr(lib, f"flashgdn_chunk_{_name}").argtypes = [
        ctypes.POINTER(_params), ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    getattr(lib, f"flashgdn_chunk_{_name}").restype = ctypes.c_int
lib.flashgdn_init.argtypes = [ctypes.c_int32]
lib.flashgdn_init.restype = ctypes.c_int
lib.flashgdn_reference_fwd.argtypes = [ctypes.POINTER(FwdParams), ctypes.c_int]
lib.flashgdn_reference_fwd.restype = ctypes.c_int
lib.flashgdn_reference_bwd.argtypes = [ctypes.POINTER(BwdParams)]
lib.flashgdn_reference_bwd.restype = ctypes.c_int

_abi = lib.flashgdn_abi_version()
if _abi != ABI_VERSION:
    raise ImportError(
        f"flashgdn: {library_path} has ABI version {_abi}, but this Python package expects {ABI_VERSION}; "
        "rebuild or reinstall so that both come from the same checkout."
    )

version = lib.flashgdn_version_string().decode()
built_with_gpu = bool(lib.flashgdn_built_with_gpu())


# C field names that the Python API spells differently: named in the message as the caller wrote them.
_PY_NAMES = {"'cu_seqlens_host'": "'cu_seqlens_cpu'"}


def check(status: int) -> None:
    if status != SUCCESS:
        msg = lib.flashgdn_get_last_error().decode(errors="replace")
        for c_name, py_name in _PY_NAMES.items():
            msg = msg.replace(c_name, py_name)
        raise FlashGDNError(status, f"{lib.flashgdn_status_string(status).decode()}: {msg}")


def init(device: int = -1) -> None:
    """The one-time work of the first GPU call, done now: the library's CUDA runtime, the device's attributes, the
    tensor-map entry point and the sm_90a forward's kernels (bf16, K = V = 128) loaded (``flashgdn_init``; -1: the
    current device). Optional; call it once per device at startup. Raises FlashGDNError on failure."""
    check(lib.flashgdn_init(int(device)))


def new_fwd_params() -> FwdParams:
    p = FwdParams()
    lib.flashgdn_chunk_fwd_params_init(ctypes.byref(p))
    return p


def new_bwd_params() -> BwdParams:
    p = BwdParams()
    lib.flashgdn_chunk_bwd_params_init(ctypes.byref(p))
    return p


# One tensor description as bytes: data, dtype, ndim, shape[4], stride[4] (80 bytes, as ``Tensor``).
TENSOR_PACK = struct.Struct("=Qii4q4q")
assert TENSOR_PACK.size == ctypes.sizeof(Tensor)
PAD = tuple((0,) * (MAX_DIMS - n) for n in range(MAX_DIMS + 1))  # PAD[n]: the zeros after n dimensions


def make_tensor(data_ptr: int, dtype: int, shape, strides) -> Tensor:
    t = Tensor()
    n = len(shape)
    TENSOR_PACK.pack_into(memoryview(t).cast("B"), 0, data_ptr or 0, dtype, n, *shape, *PAD[n], *strides, *PAD[n])
    return t
