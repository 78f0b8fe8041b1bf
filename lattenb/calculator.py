"""ASE calculator: energy, free_energy, energies, forces, stress from a `LatteModel`."""
from ase.calculators.calculator import Calculator, all_changes

from .neighbors import NeighborCache


class LatteCalculator(Calculator):
    """ASE calculator for a `LatteModel`.

    skin (Å): the neighbour list is built with cutoff + skin and reused until an atom has moved
    more than skin / 2, as MD codes do. Stress is reported when the cell has a volume.
    device: "cpu" or "cuda" (default: the model's, see `LatteModel.to`); dtype "float64" or
    "float32" (CUDA only). On "cuda" the neighbour list is built and kept on the GPU.
    """
    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model, skin=0.5, device=None, dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.device, self.dtype = model._device(device, dtype)
        if self.device == "cuda":
            from .gpu import CudaEvaluator
            self.gpu = CudaEvaluator(model, dtype=self.dtype, skin=skin)
            self.neighbors = self.gpu.neighbors
        else:
            self.neighbors = NeighborCache(model.cutoff, skin=skin)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.device == "cuda":
            out = self.gpu.compute(self.atoms.positions, self.atoms.cell.array, self.atoms.pbc,
                                   self.atoms.numbers)
        else:
            out = self.model.compute(self.atoms.positions, self.atoms.cell.array,
                                     self.atoms.pbc, self.atoms.numbers, neighbors=self.neighbors)
        self.results = {"energy": out["energy"], "free_energy": out["energy"],
                        "energies": out["energies"], "forces": out["forces"]}
        if out["stress"] is not None:
            self.results["stress"] = out["stress"]
