"""The CPU backend: the Numba kernels of `lattenb.kernels`, float64, parallel over atoms.

One structure (`compute`, `descriptors`) sorts each atom's pairs as it goes; a dataset
(`predict`, `dataset_descriptors`, `parameter_gradients`) reuses the pairs its `Dataset` sorted
once (`Dataset.kernel_inputs`), since they do not depend on the parameters.
"""
import numpy as np

from ..conventions import MIN_VOLUME, stress_from_strain_derivative
from ..kernels import (System, default_chunks, descriptors_kernel, energy_forces_kernel,
                       gather_forces, tangent_reverse_kernel)
from ..neighbors import NeighborCache, neighbor_list
from ..pairs import no_sorted_pairs
from ..repulsion import add_repulsion
from ..validate import check_overlap
from ..extrapolation import features_from_descriptors
from . import Backend, add_grades, structure_results


class CpuBackend(Backend):
    name = "cpu"
    dtypes = ("float64",)

    def neighbor_list(self, skin=0.5):
        return NeighborCache(self.model.cutoff, skin=skin)

    # ------------------------------------------------------------------ one structure
    def _system(self, positions, cell, pbc, numbers, neighbors):
        """(System, volume or None) after the input checks (`LatteModel.prepare_inputs`)."""
        positions, cell, pbc, species = self.model.prepare_inputs(positions, cell, pbc, numbers)
        if neighbors is None:
            offsets, second, shifts = neighbor_list(positions, cell, pbc, self.model.cutoff)
        elif hasattr(neighbors, "get"):
            offsets, second, shifts = neighbors.get(positions, cell, pbc)[:3]
        else:
            offsets, second, shifts = neighbors
        volume = abs(np.linalg.det(cell))
        system = System(positions, cell[None], np.zeros(len(positions), np.int64), offsets, second,
                        shifts, species)
        return system, (volume if volume > MIN_VOLUME else None)

    def compute(self, positions, cell, pbc, numbers, neighbors=None, n_centres=None,
                grades=False):
        """The result dict (see `lattenb.backends`) of one structure. neighbors: a neighbour list
        (offsets, second, shifts) built with a cutoff >= the model's, or a `NeighborCache`;
        n_centres: only atoms i < n_centres carry energy, the rest are neighbours only.
        grades: add the extrapolation grades (their descriptors come out of the same kernel
        pass). ValueError for overlapping atoms."""
        if grades:
            self.model.require_active_set()          # fails early without an active set
        system, volume = self._system(positions, cell, pbc, numbers, neighbors)
        n_atoms = len(system.positions)
        n_centres = n_atoms if n_centres is None else int(n_centres)
        if n_centres == 0:
            energies, forces = np.zeros(n_atoms), np.zeros((n_atoms, 3))
            strain = np.zeros((n_atoms, 9))
            descriptors = np.zeros((0, self.model.layout.n_terms))
        else:
            energies, pair_grad, strain, closest, descriptors = energy_forces_kernel(
                system, no_sorted_pairs(), self.model.kernel_arrays(), n_centres,
                default_chunks(n_centres), n_centres if grades else 0)
            check_overlap(closest)
            add_repulsion(self.model, system, n_centres, energies, pair_grad, strain)
            forces = gather_forces(system.offsets, system.second, pair_grad, n_atoms)
        out = structure_results(energies, forces, -strain.reshape(n_atoms, 3, 3), volume)
        if grades:
            species = system.species[:n_centres]
            add_grades(out, features_from_descriptors(self.model, descriptors, species), species,
                       self.model, n_atoms)
        return out

    def descriptors(self, positions, cell, pbc, numbers, neighbors=None):
        """Raw (unstandardised) descriptors G (N, T) of one structure."""
        system, _ = self._system(positions, cell, pbc, numbers, neighbors)
        G, closest = descriptors_kernel(system, no_sorted_pairs(), self.model.kernel_arrays(),
                                        default_chunks(len(system.positions)))
        check_overlap(closest)
        return G

    # ------------------------------------------------------------------ datasets
    def dataset_descriptors(self, data):
        """Raw descriptors G (N, T) of every atom of a `Dataset`."""
        arrays = self.model.kernel_arrays()
        system, pairs = data.kernel_inputs(arrays)
        G, closest = descriptors_kernel(system, pairs, arrays, default_chunks(len(data.positions)))
        check_overlap(closest)
        return G

    def predict(self, data, n_chunks=None, repulsion=True):
        """Energies (F,), forces (N, 3), stresses (F, 6) eV/Å^3 (nan without volume) and per-atom
        energies (N,) of a `Dataset` in one pass; repulsion=False leaves out the model's core
        repulsion (the learned part alone)."""
        arrays = self.model.kernel_arrays()
        system, pairs = data.kernel_inputs(arrays)
        n_atoms = len(data.positions)
        energies, pair_grad, strain, closest, _ = energy_forces_kernel(
            system, pairs, arrays, n_atoms, n_chunks or default_chunks(n_atoms))
        check_overlap(closest)
        if repulsion:
            add_repulsion(self.model, system, n_atoms, energies, pair_grad, strain)
        frame_energy = np.bincount(data.frame_of_atom, weights=energies, minlength=data.n_frames)
        forces = gather_forces(data.offsets, data.second, pair_grad, n_atoms)
        # per frame, column by column: np.bincount sums in atom order as np.add.at does (the same
        # bits) in half the time (AcAc training set: 0.4 against 0.8 ms per pass)
        dstrain = np.stack([np.bincount(data.frame_of_atom, weights=strain[:, k],
                                        minlength=data.n_frames) for k in range(9)], axis=1)
        stresses = stress_from_strain_derivative(dstrain.reshape(-1, 3, 3), data.volumes)
        return frame_energy, forces, stresses, energies

    def parameter_gradients(self, data, e_bar, delta, strain_bar, n_chunks=None):
        """d/dparams of sum_i (e_bar_i e_i + edot_i), edot_i the derivative of atom i's energy
        along the pair tangent field delta_i - delta_j + strain_bar[frame] . v_ij (design page,
        §5): a dict with "mlp", the species mode's parameters ("sigma" in the "pair" mode) and
        the radial family's parameters (e0 excluded)."""
        arrays = self.model.kernel_arrays()
        system, pairs = data.kernel_inputs(arrays)
        g_mlp, g_sigma, g_radial = tangent_reverse_kernel(
            system, pairs, arrays, e_bar, delta, strain_bar,
            n_chunks or default_chunks(len(data.positions)))
        return {"mlp": g_mlp, **self.model.species_gradients(g_sigma),
                **self.model.radial_gradients(g_radial)}
