"""Checks of the structures users pass in (positions, cell, pbc, numbers, cutoff), shared by the
model, the neighbour list and the CUDA backend, and the overlapping-atoms check of the kernels.
Every check raises ValueError with a message saying what is wrong."""
import math

import numpy as np

from .species import species_indices

MIN_DISTANCE = 0.1   # Å; closer pairs are reported as overlapping atoms


def check_positions(positions):
    """Positions as a C-contiguous float64 (N, 3) array of finite numbers."""
    try:
        positions = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"positions must be a numeric (N, 3) array: {exc}") from None
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(
            f"positions must have shape (N, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or infinite values")
    return np.ascontiguousarray(positions)


def check_cell(cell):
    """The cell as a C-contiguous float64 (3, 3) array of finite numbers (rows are the lattice
    vectors); None gives zeros (a structure without a cell)."""
    if cell is None:
        return np.zeros((3, 3))
    try:
        cell = np.asarray(cell, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cell must be a numeric (3, 3) array: {exc}") from None
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3) (rows are lattice "
                         f"vectors), got {cell.shape}")
    if not np.all(np.isfinite(cell)):
        raise ValueError("cell contains NaN or infinite values")
    return np.ascontiguousarray(cell)


def check_pbc(pbc):
    """Periodicity as a (3,) bool array from a bool or 3 bools."""
    pbc_arr = np.asarray(pbc)
    if pbc_arr.shape == ():
        pbc_arr = np.full(3, bool(pbc_arr))
    if pbc_arr.shape != (3,):
        raise ValueError(f"pbc must be a bool or a sequence of 3 bools, "
                         f"got shape {pbc_arr.shape}")
    return pbc_arr.astype(bool)


def check_cutoff(cutoff):
    """The cutoff (Å) as a positive finite float."""
    try:
        cutoff = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a positive finite number, "
                         f"got {cutoff!r}") from None
    if not (math.isfinite(cutoff) and cutoff > 0.0):
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
    return cutoff


def check_structure(positions, cell, pbc):
    """(positions (N, 3), cell (3, 3), pbc (3,)) checked and converted: C-contiguous float64
    positions and cell of finite numbers (cell None: zeros), pbc a (3,) bool array."""
    return check_positions(positions), check_cell(cell), check_pbc(pbc)


def check_atom_count(n_positions, n_numbers):
    """ValueError unless there are as many atomic numbers as positions."""
    if n_numbers != n_positions:
        raise ValueError(f"{n_positions} positions but {n_numbers} atomic numbers")


def check_inputs(positions, cell, pbc, numbers, known_numbers):
    """A structure as the kernels take it: (positions (N, 3), cell (3, 3), pbc (3,), species
    (N,) int64 indices into `known_numbers`, a model's atomic numbers), all checked (see
    `check_structure` and `lattenb.species.species_indices`)."""
    positions, cell, pbc = check_structure(positions, cell, pbc)
    species = species_indices(known_numbers, numbers)
    check_atom_count(positions.shape[0], species.shape[0])
    return positions, cell, pbc, species


def check_overlap(closest, first_atom=0):
    """ValueError if any atom's closest neighbour (closest (N,), Å) is nearer than MIN_DISTANCE."""
    if len(closest) == 0:
        return
    i = int(np.argmin(closest))
    if not closest[i] >= MIN_DISTANCE:
        raise ValueError(f"overlapping atoms: atom {i + first_atom} has a neighbour "
                         f"{closest[i]:.3g} Å away (closer than {MIN_DISTANCE} Å)")
