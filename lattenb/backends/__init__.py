"""Backends: where a model is evaluated, behind one protocol and chosen by name.

    backend = lattenb.backends.get("cpu", model)           # or model.backend("cpu")
    out = backend.compute(positions, cell, pbc, numbers)   # the result dict below
    E, F, S, e = backend.predict(data)                     # a whole training set (`Dataset`)
    grads = backend.parameter_gradients(data, e_bar, delta, strain_bar)

`BACKENDS` maps a name to "module:class", imported on first use, so the default "cpu" never
imports the CUDA code. A backend implements `Backend`; the model, the ASE calculator, the LAMMPS
coupling and training all go through `get` (the model keeps one instance per (name, dtype)). A
new backend is one module with a `Backend` subclass plus one line in `BACKENDS`.

Results of `compute` (every backend, packed by `structure_results`): energy (eV), energies (N,)
eV, forces (N, 3) eV/Å, virial (3, 3) eV (W = -dE/d(strain), see `lattenb.conventions`), stress
(6,) eV/Å^3 in ASE's Voigt order and sign, or None for a cell without volume, atom_virial
(N, 3, 3) eV (each atom's share of W); with compute(..., grades=True) also
extrapolation_grades (N,) (0 for atoms that are not centres) and extrapolation_grade, their maximum
(`lattenb.extrapolation`).
"""
import importlib

import numpy as np

from ..conventions import dtype_name, stress_from_virial, symmetrise

#: name -> "module:class" of every backend (relative to this package), imported on first use
BACKENDS = {"cpu": ".cpu:CpuBackend", "cuda": ".cuda:CudaBackend"}


class Backend:
    """The protocol every backend implements (NotImplementedError where it cannot).

    model: the `LatteModel` (read, never modified); dtype: "float64" or "float32".
    `neighbor_list(skin)` returns the backend's neighbour list (`lattenb.neighbor_protocol`),
    which `compute(..., neighbors=...)` reuses between MD steps."""
    name = None
    dtypes = ("float64",)

    def __init__(self, model, dtype="float64"):
        if dtype not in self.dtypes:
            raise ValueError(f"dtype {dtype!r} is not available on the {self.name!r} backend "
                             f"(it supports {', '.join(self.dtypes)})")
        self.model = model
        self.dtype = dtype

    @classmethod
    def check_available(cls):
        """Raise RuntimeError saying what is missing if this backend cannot run here."""

    def neighbor_list(self, skin=0.5):
        raise NotImplementedError

    def compute(self, positions, cell, pbc, numbers, neighbors=None, n_centres=None,
                grades=False):
        raise NotImplementedError

    def descriptors(self, positions, cell, pbc, numbers, neighbors=None):
        raise NotImplementedError(f"the {self.name!r} backend does not compute raw descriptors")

    def predict(self, data, n_chunks=None, repulsion=True):
        raise NotImplementedError(f"training and batched prediction run on the CPU backend, "
                                  f"not {self.name!r}")

    def dataset_descriptors(self, data):
        raise NotImplementedError(f"training runs on the CPU backend, not {self.name!r}")

    def parameter_gradients(self, data, e_bar, delta, strain_bar, n_chunks=None):
        raise NotImplementedError(f"training runs on the CPU backend, not {self.name!r}")


def names():
    return sorted(BACKENDS)


def backend_class(name):
    """The `Backend` subclass registered as `name` (imported now)."""
    if name not in BACKENDS:
        raise ValueError(f"device must be one of {names()}, got {name!r}")
    module, attr = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module, __name__), attr)


def get(name, model, dtype=None):
    """The model's backend `name` with `dtype` (one instance per model, name and dtype; looked up
    first under the arguments as given, since MD asks for it on every step)."""
    cache = model.__dict__.setdefault("_backends", {})
    try:
        return cache[name, dtype]
    except (KeyError, TypeError):           # TypeError: an unhashable dtype argument
        pass
    cls = backend_class(name)
    key = (name, dtype_name(dtype))
    if key not in cache:
        cls.check_available()
        cache[key] = cls(model, key[1])
    try:
        cache[name, dtype] = cache[key]
    except TypeError:
        pass
    return cache[key]


def structure_results(energies, forces, atom_virial, volume):
    """The result dict of `Backend.compute` from per-atom energies (N,) eV, forces (N, 3) eV/Å,
    per-atom virials (N, 3, 3) eV and the volume (Å^3, or None: no stress)."""
    virial = symmetrise(atom_virial.sum(axis=0))
    stress = None
    if volume:
        stress = stress_from_virial(virial, volume)
    return {"energy": float(energies.sum()), "energies": energies, "forces": forces,
            "virial": virial, "stress": stress, "atom_virial": atom_virial}


def add_grades(results, phi, species, model, n_atoms):
    """Add extrapolation_grades (n_atoms,) and extrapolation_grade to `results`, from the features
    phi (n, m) and species indices (n,) of the first n atoms (the centres; the rest grade 0)."""
    per_atom = np.zeros(n_atoms)
    per_atom[:len(phi)] = model.require_active_set().grades(phi, species)
    results["extrapolation_grades"] = per_atom
    results["extrapolation_grade"] = float(per_atom.max(initial=0.0))
    return results
