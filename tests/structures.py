"""Random test structures shared by the test modules."""
import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list


def random_atoms(rng, n, cell, pbc, box=None, dmin=1.8, numbers=(28, 42)):
    """n atoms of random species, no two closer than dmin (periodic images included)."""
    atoms = Atoms(cell=cell, pbc=pbc)
    cell = np.asarray(cell, dtype=float)
    tries = 0
    while len(atoms) < n:
        tries += 1
        assert tries < 20000, "could not place the atoms"
        pos = rng.uniform(0.0, 1.0, 3) @ cell if box is None else rng.uniform(0.0, box, 3)
        trial = atoms + Atoms(numbers=[rng.choice(numbers)], positions=[pos])
        if len(ase_neighbor_list("i", trial, dmin)) == 0:
            atoms = trial
    atoms.numbers[0], atoms.numbers[-1] = numbers[0], numbers[1]
    return atoms
