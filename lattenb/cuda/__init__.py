"""Optional CUDA backend of lattenb (``device="cuda"``; the extra ``lattenb[cuda]``, numba-cuda).

Modules:

* `lattenb.cuda.probe`: is a CUDA target usable? `check_cuda`, `dtype_name` and the two error
  messages `MISSING_NUMBA_CUDA` / `NO_GPU`; simulator detection (NUMBA_ENABLE_CUDASIM=1).
* `lattenb.cuda.neighbors`: `DeviceNeighborList`, the neighbour list built and kept on the GPU
  (the interface `lattenb.neighbor_protocol.NeighborList`, shared with the CPU
  `lattenb.neighbors.NeighborCache`).
* `lattenb.cuda.evaluator`: `CudaEvaluator` (energy, forces, virial, stress on the GPU, from host
  or device arrays); the model keeps its evaluators through the "cuda" backend
  (`lattenb.backends.cuda`).
* `lattenb.cuda.kernels`, `kernels_neighbors`, `kernels_energy`: the ``@cuda.jit`` kernels.

The public names are exported lazily: ``import lattenb.cuda`` (and importing `probe`, `neighbors`
or `evaluator`) does not import ``numba.cuda``; `check_cuda` and creating a `DeviceNeighborList`
or a `CudaEvaluator` do.
"""
import importlib

_EXPORTS = {
    "check_cuda": "probe",
    "dtype_name": "probe",
    "MISSING_NUMBA_CUDA": "probe",
    "NO_GPU": "probe",
    "DTYPES": "probe",
    "DeviceNeighborList": "neighbors",
    "CudaEvaluator": "evaluator",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
