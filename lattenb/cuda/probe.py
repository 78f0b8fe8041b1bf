"""Is a CUDA target usable? Availability probe of the optional CUDA backend (``lattenb[cuda]``).

Importing this module does not import ``numba.cuda``: only `check_cuda` does, when called. The
probe is what ``device="cuda"`` runs first, so that a missing package or GPU gives one clear
RuntimeError (`MISSING_NUMBA_CUDA` or `NO_GPU`, with the reason) instead of a failure deep in
the kernels.

Simulator: with NUMBA_ENABLE_CUDASIM=1 set before ``numba.cuda`` is first imported, the Numba
CUDA simulator counts as a usable target (slow; for tests without a GPU).
"""
import importlib.util
import os

import numpy as np

from ..conventions import DTYPES, dtype_name  # noqa: F401  (part of this module's interface)

__all__ = ["MISSING_NUMBA_CUDA", "NO_GPU", "DTYPES", "check_cuda", "dtype_name"]

MISSING_NUMBA_CUDA = "numba-cuda is not installed (pip install lattenb[cuda])"
NO_GPU = "no usable NVIDIA GPU/driver found"

_usable = None          # description of the usable CUDA target, once found


def _numba_cuda_installed():
    return importlib.util.find_spec("numba_cuda") is not None


def _simulator_requested():
    """True when NUMBA_ENABLE_CUDASIM asks for the Numba CUDA simulator."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def _import_cuda():
    from numba import cuda
    return cuda


def _is_simulator(cuda):
    """True when the imported ``numba.cuda`` is the simulator."""
    return "simulator" in getattr(cuda.to_device, "__module__", "")


def _gpu_problem(cuda):
    """None if a GPU is usable (driver found, a trivial kernel compiles and runs), else why not."""
    try:
        if not cuda.is_available():
            err = cuda.cuda_error()
            text = " ".join(str(err).split()) if err is not None else ""
            return text or "the CUDA driver reports no device"
        device = cuda.get_current_device()

        @cuda.jit
        def probe(a):
            i = cuda.grid(1)
            if i < a.shape[0]:
                a[i] = 2.0 * a[i]

        a = cuda.to_device(np.ones(4))
        probe[1, 32](a)
        if not np.array_equal(a.copy_to_host(), 2.0 * np.ones(4)):
            return f"a test kernel gave wrong results on {device.name}"
    except Exception as exc:                      # driver, NVVM/toolkit or launch failures
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


def check_cuda():
    """Make sure a CUDA target is usable; returns a short description of it.

    Raises RuntimeError with one clear message naming what is missing:
    ``numba-cuda is not installed (pip install lattenb[cuda])`` or
    ``no usable NVIDIA GPU/driver found: <reason>``. The Numba CUDA simulator
    (NUMBA_ENABLE_CUDASIM=1) counts as usable.
    """
    global _usable
    if _usable is not None:
        return _usable
    if not _simulator_requested() and not _numba_cuda_installed():
        raise RuntimeError(MISSING_NUMBA_CUDA)
    try:
        cuda = _import_cuda()
    except ImportError as exc:
        raise RuntimeError(f"{MISSING_NUMBA_CUDA}: cannot import numba.cuda ({exc})") from None
    if _is_simulator(cuda):
        _usable = "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
        return _usable
    if not _numba_cuda_installed():
        # numba's deprecated built-in CUDA target without the numba-cuda package: not supported
        raise RuntimeError(MISSING_NUMBA_CUDA)
    problem = _gpu_problem(cuda)
    if problem:
        raise RuntimeError(f"{NO_GPU}: {problem}")
    _usable = f"CUDA device {cuda.get_current_device().name}"
    return _usable


