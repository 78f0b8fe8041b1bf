"""CUDA kernels (Numba CUDA) of the optional GPU backend: what they share.

The kernels are in two modules:

* `lattenb.cuda.kernels_neighbors`: the GPU cell-list neighbour list (ELL layout) and the small
  utility kernels of its Verlet-skin check; used by `lattenb.cuda.neighbors.DeviceNeighborList`.
* `lattenb.cuda.kernels_energy`: the fused energy/gradient kernel, the force gather and the
  deterministic reductions to energy, virial and stress; used by
  `lattenb.cuda.evaluator.CudaEvaluator`.

This module holds their launch configuration. Importing any of the three imports ``numba.cuda``:
they are imported only after `lattenb.cuda.probe.check_cuda` has found a usable CUDA target (or
the simulator, NUMBA_ENABLE_CUDASIM=1).
"""
import warnings

from numba import cuda  # noqa: F401  (re-exported to the kernel modules and their users)

__all__ = ["cuda", "BLOCK", "RED_BLOCK", "blocks_for"]

# small systems launch small grids on purpose
warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utili")

#: threads per block for the one-thread-per-item kernels
BLOCK = 128
#: threads per block of the deterministic reductions (a power of two)
RED_BLOCK = 128


def blocks_for(n, block=BLOCK):
    """Blocks of `block` threads that cover n items (at least one)."""
    return max(1, (int(n) + block - 1) // block)
