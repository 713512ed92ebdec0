"""FlashGDN: Gated DeltaNet (gated delta rule) chunked kernels.

``chunk_gated_delta_rule`` (needs torch) is a drop-in for FLA's function of the same name; the
``reference`` module runs the library's CPU references on numpy arrays. ``init(device)`` does the first GPU call's
one-time work at startup (optional).
"""
from ._lib import FlashGDNError, built_with_gpu, init, library_path, version  # noqa: F401

__version__ = version

try:
    import torch  # noqa: F401
except ImportError:  # the reference module still works without torch
    torch = None

if torch is not None:
    from .api import chunk_gated_delta_rule  # noqa: F401
else:
    def chunk_gated_delta_rule(*args, **kwargs):  # noqa: D103
        raise ImportError("flashgdn.chunk_gated_delta_rule needs PyTorch; install torch first")
