"""Chemical species: one parser for user input (symbols or atomic numbers) and the map from
atomic numbers to a model's species indices."""
import numpy as np
from ase.data import atomic_numbers, chemical_symbols


def atomic_number(element):
    """The atomic number of one element given as a chemical symbol ("Ni") or an atomic number
    (28); ValueError for anything else."""
    if isinstance(element, (int, np.integer)):
        if not 0 < int(element) < len(chemical_symbols):
            raise ValueError(f"unknown atomic number {element}")
        return int(element)
    if isinstance(element, str) and element in atomic_numbers and element != "X":
        return atomic_numbers[element]
    raise ValueError(f"unknown chemical symbol {element!r}")


def parse_species(species):
    """(S,) int64 atomic numbers of a non-empty list of chemical symbols or atomic numbers, in
    the given order; ValueError for unknown elements and duplicates."""
    if isinstance(species, str) or not len(species):
        raise ValueError(f"species must be a non-empty list of chemical symbols, got {species!r}")
    numbers = [atomic_number(s) for s in species]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"species contains duplicates: {species!r}")
    return np.array(numbers, dtype=np.int64)


def species_in(frames):
    """Chemical symbols of all elements present in a list of ASE Atoms, by atomic number."""
    numbers = sorted({int(z) for atoms in frames for z in atoms.numbers})
    return [chemical_symbols[z] for z in numbers]


def species_indices(known_numbers, numbers):
    """Map atomic numbers (N,) to indices into `known_numbers` (S,) (a model's species);
    ValueError for unknown ones, naming them and the known species."""
    numbers = np.asarray(numbers)
    if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
        raise ValueError(f"numbers must be a 1-d integer array, got shape {numbers.shape} "
                         f"and dtype {numbers.dtype}")
    lookup = np.full(max(int(numbers.max(initial=0)), int(known_numbers.max())) + 1, -1, np.int64)
    lookup[known_numbers] = np.arange(len(known_numbers))
    if numbers.size and numbers.min() < 0:
        raise ValueError("atomic numbers must be non-negative")
    index = lookup[numbers]
    if np.any(index < 0):
        unknown = sorted({chemical_symbols[z] if z < len(chemical_symbols) else str(z)
                          for z in numbers[index < 0]})
        raise ValueError(f"species {unknown} not known to this model (it knows "
                         f"{[chemical_symbols[z] for z in known_numbers]})")
    return index
