"""The CUDA backend: the `lattenb.cuda` evaluator (NVIDIA GPU, numba-cuda), float64 or float32.

The GPU builds and keeps its own neighbour list (`lattenb.cuda.neighbors.DeviceNeighborList`),
one per skin; `compute(..., neighbors=nl)` takes that object back. Training and batched
prediction run on the CPU backend. Nothing here imports numba.cuda before `check_available`.
"""
from . import Backend, add_grades

UNSUPPORTED = ("neighbors and n_centres are not supported with device='cuda' (the GPU builds "
               "and keeps its own neighbour list)")


class CudaBackend(Backend):
    name = "cuda"
    dtypes = ("float64", "float32")

    @classmethod
    def check_available(cls):
        from ..cuda.probe import check_cuda
        check_cuda()

    def __init__(self, model, dtype="float64"):
        super().__init__(model, dtype)
        self._evaluators = {}

    def evaluator(self, skin=0.5):
        """The `lattenb.cuda.CudaEvaluator` with a neighbour list of this skin (Å), kept."""
        skin = float(skin)
        if skin not in self._evaluators:
            from ..cuda.evaluator import CudaEvaluator
            self._evaluators[skin] = CudaEvaluator(self.model, dtype=self.dtype, skin=skin)
        return self._evaluators[skin]

    def neighbor_list(self, skin=0.5):
        return self.evaluator(skin).neighbors

    def compute(self, positions, cell, pbc, numbers, neighbors=None, n_centres=None,
                grades=False):
        """As the CPU backend's; grades=True adds the extrapolation grades from a CPU descriptor
        pass on the host (exact, and costing about a CPU evaluation)."""
        if n_centres is not None:
            raise ValueError(UNSUPPORTED)
        if neighbors is None:
            evaluator = self.evaluator()
        else:
            owners = [e for e in self._evaluators.values() if e.neighbors is neighbors]
            if not owners:
                raise ValueError(UNSUPPORTED)
            evaluator = owners[0]
        out = evaluator.compute(positions, cell, pbc, numbers)
        if grades:
            from ..extrapolation import features_from_descriptors
            cpu = self.model.backend("cpu")
            species = self.model.species_indices(numbers)
            phi = features_from_descriptors(
                self.model, cpu.descriptors(positions, cell, pbc, numbers), species)
            add_grades(out, phi, species, self.model, len(phi))
        return out
