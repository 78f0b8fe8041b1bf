"""Energy, per-atom energies, forces and stress: the fused forward + reverse kernel.

One parallel loop over chunks of atoms does, for each atom i and in compiled code,
moments A_i -> descriptor G_i -> standardise -> MLP -> e_i, then the hand-derived reverse pass
dE/dG_i -> dE/dA_i -> dE/dv_ij for each of i's pairs (design page, section 4). Nothing per atom
outlives the atom except e_i, the per-pair gradients (P, 3) and the atom's strain derivative, so
memory stays O(pairs). Forces are gathered from the per-pair gradients in a serial pass (no racing
scatter): F_i += dE/dv_ij, F_j -= dE/dv_ij.
"""
from collections import namedtuple

import numpy as np
from numba import get_num_threads, njit, prange
from ._numba import FASTMATH

from .descriptor import (RANK_SIZE, atom_moments, atom_pair_gradients, contract, contract_adjoint,
                         contraction_indices, gather_pairs, max_neighbours, pair_scratch,
                         support_bin_ranges)
from .mlp import mlp_forward, mlp_input_gradient

MIN_DISTANCE = 0.1   # Å; closer pairs are reported as overlapping atoms

#: Everything the kernels need from a model, as plain arrays (see `LatteModel.kernel_arrays`).
KernelArrays = namedtuple("KernelArrays", [
    "cutoff", "layout", "sigma", "sigma_c2", "centres", "inv_w", "inv_c2", "bin_ptr", "bin_bodies",
    "inv_bin",
    "g_mean", "g_inv_std", "mlp_params", "layer_sizes", "activation", "e0"])


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
def energy_forces_kernel(positions, cells, frame_of_atom, offsets, second, shifts, species,
                         cutoff, layout, sigma_c2, centres, inv_w, bin_ptr, bin_bodies, inv_bin,
                         g_mean, g_inv_std, mlp_params, layer_sizes, act, e0, n_centres,
                         n_chunks):
    """Per-atom energies (N,), per-pair dE/dv (P, 3), per-atom dE/d(strain) (N, 9) and the
    per-atom closest-neighbour distance (N,). Units eV, eV/Å, eV.

    cells (F, 3, 3) and frame_of_atom (N,) let one call cover many structures (a training set):
    atom i's pairs use cells[frame_of_atom[i]]; for one structure pass cell[None] and zeros.
    Only atoms i < n_centres are centres: the others (e.g. ghost atoms of a domain) act only as
    neighbours and get energy 0, strain 0 and zero pair gradients."""
    body_rank, body_offset, term_body_start, term_pattern = layout[:4]
    n_atoms = positions.shape[0]
    n_terms = term_pattern.shape[0]
    m = body_offset[-1] + RANK_SIZE[body_rank[-1]]
    n_act = 0
    widest = 0
    for k in range(layer_sizes.shape[0]):
        n_act += layer_sizes[k]
        widest = max(widest, layer_sizes[k])
    energies = np.zeros(n_atoms)
    closest = np.full(n_atoms, np.inf)
    pair_grad = np.zeros((second.shape[0], 3))
    strain = np.zeros((n_atoms, 9))
    n_max = max_neighbours(offsets)
    n_bins = bin_ptr.shape[1] - 1
    body_bins = support_bin_ranges(bin_ptr, bin_bodies, body_rank.shape[0])
    index_start, index = contraction_indices(layout)
    for chunk in prange(n_chunks):
        lo = chunk * n_centres // n_chunks
        hi = (chunk + 1) * n_centres // n_chunks
        # per-chunk scratch, reused by every atom of the chunk
        A = np.empty(m)
        Abar = np.empty(m)
        G = np.empty(n_terms)
        x = np.empty(n_terms)
        xbar = np.empty(n_terms)
        a = np.empty(n_act)
        z = np.empty(n_act)
        buf_out = np.empty(widest)
        buf_in = np.empty(widest)
        P, pair_q, key_start, work = pair_scratch(n_max, sigma_c2.shape[1] * n_bins)
        Q = np.empty((4, n_max))
        for i in range(lo, hi):
            s = species[i]
            closest[i], n_kept = gather_pairs(
                i, positions, cells[frame_of_atom[i]], offsets, second, shifts, species, cutoff,
                inv_bin, n_bins, P, pair_q, key_start, work)
            atom_moments(s, P, key_start, n_bins, body_rank, body_offset, body_bins, sigma_c2,
                         centres, inv_w, A)
            contract(A, term_body_start, index_start, index, G)
            for t in range(n_terms):
                x[t] = (G[t] - g_mean[s, t]) * g_inv_std[s, t]
            energies[i] = mlp_forward(mlp_params[s], layer_sizes, act, x, a, z) + e0[s]
            mlp_input_gradient(mlp_params[s], layer_sizes, act, a, z, buf_out, buf_in, xbar)
            for t in range(n_terms):
                xbar[t] *= g_inv_std[s, t]          # dE/dG
            contract_adjoint(A, xbar, term_body_start, index_start, index, Abar)
            st = atom_pair_gradients(s, n_kept, P, pair_q, key_start, n_bins, body_rank,
                                     body_offset, body_bins, sigma_c2, centres, inv_w, Abar, Q,
                                     pair_grad)
            for k in range(9):
                strain[i, k] = st[k]
    return energies, pair_grad, strain, closest


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def gather_forces(offsets, second, pair_grad, n_atoms):
    """F_i = sum_{q in row i} g_q - sum_{q: second[q] = i} g_q, (N, 3) eV/Å."""
    forces = np.zeros((n_atoms, 3))
    for i in range(n_atoms):
        for q in range(offsets[i], offsets[i + 1]):
            j = second[q]
            for c in range(3):
                g = pair_grad[q, c]
                forces[i, c] += g
                forces[j, c] -= g
    return forces


def check_overlap(closest, first_atom=0):
    """ValueError if any atom's closest neighbour (closest (N,), Å) is nearer than MIN_DISTANCE."""
    if len(closest) == 0:
        return
    i = int(np.argmin(closest))
    if not closest[i] >= MIN_DISTANCE:
        raise ValueError(f"overlapping atoms: atom {i + first_atom} has a neighbour "
                         f"{closest[i]:.3g} Å away (closer than {MIN_DISTANCE} Å)")


def default_chunks(n_atoms):
    """Enough chunks to balance threads, few enough that scratch allocation stays negligible."""
    return max(1, min(n_atoms, 8 * get_num_threads()))


def evaluate(arrays, positions, cell, species, offsets, second, shifts, volume=None,
             n_centres=None):
    """Energy, per-atom energies, forces and strain derivative for one structure.

    arrays: `KernelArrays`; positions (N, 3) Å; cell (3, 3) Å; species (N,) int64 indices into the
    model's species; neighbour list (offsets, second, shifts) from `lattenb.neighbors`
    built with a cutoff >= arrays.cutoff (longer pairs are ignored).
    volume: cell volume in Å^3, or None for a structure without a volume (no stress).
    n_centres: only atoms i < n_centres carry energy (default all); the rest are neighbours only.

    Returns a dict with energy (eV), energies (N,) eV, forces (N, 3) eV/Å,
    virial (3, 3) eV, the usual W = -dE/d(strain) (= sum r (x) F for a finite system),
    stress (6,) eV/Å^3 in ASE's Voigt order and sign, stress = (1/V) dE/d(strain) = -W/V, or None,
    atom_virial (N, 3, 3) eV: each centre's share of the virial (-d e_i/d(strain)).
    Raises ValueError for overlapping atoms (closer than MIN_DISTANCE).
    """
    n_atoms = positions.shape[0]
    n_centres = n_atoms if n_centres is None else int(n_centres)
    if n_centres == 0:
        return structure_results(np.zeros(n_atoms), np.zeros((n_atoms, 3)),
                                 np.zeros((n_atoms, 3, 3)), volume)
    energies, pair_grad, strain, closest = energy_forces_kernel(
        positions, cell[None], np.zeros(n_atoms, np.int64), offsets, second, shifts, species,
        arrays.cutoff, arrays.layout, arrays.sigma_c2, arrays.centres, arrays.inv_w, arrays.bin_ptr,
        arrays.bin_bodies, arrays.inv_bin, arrays.g_mean, arrays.g_inv_std, arrays.mlp_params,
        arrays.layer_sizes, arrays.activation, arrays.e0, n_centres, default_chunks(n_centres))
    check_overlap(closest)
    forces = gather_forces(offsets, second, pair_grad, n_atoms)
    return structure_results(energies, forces, -strain.reshape(n_atoms, 3, 3), volume)


def structure_results(energies, forces, atom_virial, volume):
    """The result dict of `evaluate` (shared with the CUDA backend) from per-atom energies (N,) eV,
    forces (N, 3) eV/Å, per-atom virials (N, 3, 3) eV and the volume (Å^3, or None: no stress)."""
    virial = atom_virial.sum(axis=0)
    virial = 0.5 * (virial + virial.T)
    stress = None
    if volume:
        s = -virial / volume
        stress = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    return {"energy": float(energies.sum()), "energies": energies, "forces": forces,
            "virial": virial, "stress": stress, "atom_virial": atom_virial}
