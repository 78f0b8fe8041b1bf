"""Training data: structures and their targets (energy, forces, stress) prepared once for a model.

A `Dataset` concatenates the structures (positions, species indices, cells, one global neighbour
list) and their targets, with masks saying which structures have which target.
"""
from dataclasses import dataclass, field

import numpy as np

from .conventions import MIN_VOLUME, voigt_from_tensor
from .distributed import SERIAL
from .kernels import System, default_chunks
from .neighbors import neighbor_list
from .pairs import no_sorted_pairs, sort_dataset_pairs


def read_targets(atoms):
    """(energy or None, forces or None, stress (6,) or None) of one ASE Atoms."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy"))
    forces = results.get("forces", atoms.arrays.get("forces"))
    stress = results.get("stress", atoms.info.get("stress"))
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (3, 3):
            stress = voigt_from_tensor(stress)
        elif stress.shape != (6,):
            raise ValueError(f"stress has shape {stress.shape}; expected (6,) or (3, 3)")
    return (None if energy is None else float(energy),
            None if forces is None else np.asarray(forces, dtype=np.float64), stress)


@dataclass
class Dataset:
    """Structures and targets prepared once for a model (species order, cutoff).

    Concatenated over F frames and N atoms: positions (N, 3), species (N,), frame_of_atom (N,),
    cells (F, 3, 3), volumes (F,), atom_start (F + 1,), a global neighbour list (offsets, second,
    shifts), energies (F,), forces (N, 3), stresses (F, 6) eV/Å^3 and has_* masks (F,).
    comm: the communicator of the ranks whose datasets together make the training set, this one
    being one contiguous shard (`lattenb.distributed`); `SERIAL` for a whole dataset in one
    process. Losses, statistics and solves over a dataset reduce through it.
    """
    positions: np.ndarray
    species: np.ndarray
    frame_of_atom: np.ndarray
    cells: np.ndarray
    volumes: np.ndarray
    atom_start: np.ndarray
    offsets: np.ndarray
    second: np.ndarray
    shifts: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    stresses: np.ndarray
    has_energy: np.ndarray
    has_forces: np.ndarray
    has_stress: np.ndarray
    config_types: list
    keep_pairs: bool = False
    comm: object = field(default=SERIAL, repr=False, compare=False)
    _sorted: tuple = field(default=(None, None), repr=False, compare=False)

    @property
    def n_frames(self):
        return len(self.cells)

    @property
    def n_atoms_per_frame(self):
        return np.diff(self.atom_start)

    def kernel_inputs(self, arrays):
        """(`kernels.System`, `pairs.SortedPairs`) of the whole dataset for a model's
        `KernelArrays`. With `keep_pairs` (a training set, evaluated every iteration) every atom's
        pairs are sorted on first use and kept, since they depend on the cutoff, the distance
        bins and the species, not on the parameters; otherwise (one-off predictions) the kernels
        sort them as they go and nothing is kept."""
        system = System(self.positions, self.cells, self.frame_of_atom, self.offsets, self.second,
                        self.shifts, self.species)
        if not self.keep_pairs:
            return system, no_sorted_pairs()
        n_bins = arrays.bin_ptr.shape[1] - 1
        key = (arrays.cutoff, n_bins, arrays.inv_bin, arrays.sigma.shape[0])
        if self._sorted[0] != key:
            self._sorted = (key, sort_dataset_pairs(system, arrays.cutoff, arrays.inv_bin, n_bins,
                                                    arrays.sigma.shape[0],
                                                    default_chunks(len(self.positions))))
        return system, self._sorted[1]

    @property
    def nbytes(self):
        """Bytes the dataset keeps between loss evaluations: its arrays and, once sorted, its
        sorted pairs (`kernel_inputs`)."""
        total = sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))
        if self._sorted[1] is not None:
            total += sum(a.nbytes for a in self._sorted[1] if isinstance(a, np.ndarray))
        return total

    def composition(self, n_species):
        """(F, S) atom counts per species."""
        counts = np.zeros((self.n_frames, n_species))
        np.add.at(counts, (self.frame_of_atom, self.species), 1.0)
        return counts


def as_dataset(frames, model):
    """`frames` itself if it is a `Dataset`, else a `Dataset` of the ASE Atoms for `model`
    (targets optional): for functions that take either, so a caller can prepare once."""
    return frames if isinstance(frames, Dataset) else prepare_dataset(frames, model,
                                                                      require_energy=False)


def prepare_dataset(frames, model, require_energy=True, keep_pairs=False, comm=SERIAL):
    """Build a `Dataset` from ASE Atoms for `model` (neighbour lists computed once here).
    keep_pairs: sort every atom's pairs once and keep them (48 bytes per pair) for the many
    evaluations of training (see `Dataset.kernel_inputs`). comm: `frames` are this rank's shard
    of a training set spread over the ranks of `comm` (`lattenb.distributed`)."""
    if not len(frames):
        raise ValueError("no structures given")
    pos, spec, frame_idx, cells, vols, starts = [], [], [], [], [], [0]
    offs, seconds, shifts = [np.zeros(1, np.int64)], [], []
    energies, forces, stresses, he, hf, hs, ctypes = [], [], [], [], [], [], []
    n_pairs = 0
    for f, atoms in enumerate(frames):
        n = len(atoms)
        if n == 0:
            raise ValueError(f"structure {f} has no atoms")
        try:
            species = model.species_indices(atoms.numbers)
        except ValueError as exc:
            raise ValueError(f"structure {f}: {exc}") from None
        cell = np.array(atoms.cell.array, dtype=np.float64)
        positions = np.array(atoms.positions, dtype=np.float64)
        try:
            o, s2, sh = neighbor_list(positions, cell, atoms.pbc, model.cutoff)
        except ValueError as exc:
            raise ValueError(f"structure {f}: {exc}") from None
        offs.append(o[1:] + n_pairs)
        seconds.append(s2 + starts[-1])
        shifts.append(sh)
        n_pairs += len(s2)
        e, fr, st = read_targets(atoms)
        if fr is not None and fr.shape != (n, 3):
            raise ValueError(f"structure {f}: forces have shape {fr.shape}, expected ({n}, 3)")
        for name, value in (("energy", e), ("forces", fr), ("stress", st)):
            if value is not None and not np.all(np.isfinite(value)):
                raise ValueError(f"structure {f}: {name} contains NaN or infinite values")
        pos.append(positions)
        spec.append(species)
        frame_idx.append(np.full(n, f, np.int64))
        cells.append(cell)
        vol = abs(np.linalg.det(cell))
        vols.append(vol)
        starts.append(starts[-1] + n)
        energies.append(np.nan if e is None else e)
        he.append(e is not None)
        forces.append(np.zeros((n, 3)) if fr is None else fr)
        hf.append(fr is not None)
        has_s = st is not None and vol > MIN_VOLUME
        stresses.append(st if has_s else np.zeros(6))
        hs.append(has_s)
        ctypes.append(str(atoms.info.get("config_type", "default")))
    if require_energy and not comm.max(float(any(he))):
        raise ValueError("none of the structures has an energy: training needs energies "
                         "(extended XYZ 'energy=' in the comment line or a calculator result)")
    return Dataset(
        positions=np.concatenate(pos), species=np.concatenate(spec),
        frame_of_atom=np.concatenate(frame_idx), cells=np.array(cells), volumes=np.array(vols),
        atom_start=np.array(starts, np.int64), offsets=np.concatenate(offs),
        second=np.concatenate(seconds) if seconds else np.zeros(0, np.int64),
        shifts=np.concatenate(shifts) if shifts else np.zeros((0, 3), np.int64),
        energies=np.array(energies), forces=np.concatenate(forces), stresses=np.array(stresses),
        has_energy=np.array(he), has_forces=np.array(hf), has_stress=np.array(hs),
        config_types=ctypes, keep_pairs=bool(keep_pairs), comm=comm)
