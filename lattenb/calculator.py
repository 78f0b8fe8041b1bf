"""ASE calculator: energy, free_energy, energies, forces, stress from a `LatteModel`."""
from ase.calculators.calculator import Calculator, all_changes


class LatteCalculator(Calculator):
    """ASE calculator for a `LatteModel`, on any backend (`lattenb.backends`).

    skin (Å): the neighbour list is built with cutoff + skin and reused until an atom has moved
    more than skin / 2, as MD codes do. Stress is reported when the cell has a volume.
    device: a backend name, "cpu" or "cuda" (default: the model's, see `LatteModel.to`); dtype
    "float64" or "float32" (CUDA only). On "cuda" the neighbour list is built and kept on the GPU.
    grades: put the extrapolation grades in `results` (default: when the model has an active
    set, which `lattenb fit` stores): "extrapolation_grades" (N,) per atom and
    "extrapolation_grade" the structure's maximum; above 1 the model extrapolates.
    """
    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress",
                              "extrapolation_grades", "extrapolation_grade"]

    def __init__(self, model, skin=0.5, device=None, dtype=None, grades=None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        #: whether results hold extrapolation_grades (per atom) and extrapolation_grade (the
        #: maximum); default: when the model has an active set (`lattenb.extrapolation`)
        self.grades = model.active_set is not None if grades is None else bool(grades)
        if self.grades:
            model.require_active_set()           # a clear error now rather than at the first step
        self.backend = model.backend(device, dtype)
        self.device, self.dtype = self.backend.name, self.backend.dtype
        self.neighbors = self.backend.neighbor_list(skin)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = self.backend.compute(self.atoms.positions, self.atoms.cell.array, self.atoms.pbc,
                                   self.atoms.numbers, neighbors=self.neighbors,
                                   grades=self.grades)
        self.results = {"energy": out["energy"], "free_energy": out["energy"],
                        "energies": out["energies"], "forces": out["forces"]}
        if self.grades:
            self.results["extrapolation_grades"] = out["extrapolation_grades"]
            self.results["extrapolation_grade"] = out["extrapolation_grade"]
        if out["stress"] is not None:
            self.results["stress"] = out["stress"]
