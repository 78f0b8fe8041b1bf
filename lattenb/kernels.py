"""Kernel drivers: the per-atom pipeline pairs -> moments -> contraction -> MLP and its reverse
passes, as parallel loops over chunks of atoms (design page, §3-5).

The stages, in order: pairs (`pairs`), moments (`moments`, with the radial family of `radial`),
projections (`projection`), contractions (`contraction`), MLP (`mlp`), and back.
Every driver takes the same three structures instead of long positional lists:
    system  `System`: the atoms and their neighbour list (one structure or a whole dataset)
    sorted  `pairs.SortedPairs`: every atom's pairs sorted once (training), or the empty one
            (`pairs.no_sorted_pairs()`): then each atom's pairs are sorted as it is visited (MD)
    arrays  `KernelArrays`: the model's parameters as kernel arrays (`LatteModel.kernel_arrays`)

and the radial family token (`lattenb.radial`) inside `arrays`. The public drivers are plain
Python functions that hand the structures to the Numba kernels as flat arguments
(`flat_inputs`): Numba types tuple arguments slowly on every call, and its parallel loops cannot
take tuples of arrays. Each atom's pairs come from two plain calls, `pairs.copy_sorted_pairs` or
`pairs.gather_pairs`, rather than one wrapper taking both sets of arrays: passing them all per
atom cost 3 % of an MD step. Per chunk, the scratch is allocated once; per atom, nothing
outlives the atom but its outputs (energies, per-pair gradients, the atom's strain derivative,
gradient buffers per chunk), so memory stays O(pairs) and no two threads write to the same
place. Forces are gathered from the per-pair gradients in a serial pass
(`gather_forces`): F_i += dE/dv_ij, F_j -= dE/dv_ij.
"""
from collections import namedtuple

import numpy as np
from numba import get_num_threads, njit, prange

from ._numba import FASTMATH
from .contraction import (contract, contract_adjoint, contract_tangent, contract_tangent_adjoint,
                          pair, pair_adjoint, pair_tangent, pair_tangent_adjoint)
from .mlp import mlp_forward, mlp_input_gradient, mlp_tangent_forward, mlp_tangent_reverse
from .moments import (atom_moments, atom_pair_gradients, atom_parameter_gradients,
                      atom_tangent_moments)
from .pairs import (TANGENT_ROWS, copy_sorted_pairs, gather_pairs, max_neighbours, pair_scratch,
                    pair_tangents, support_bin_ranges)
from .projection import has_projection, project

#: Atoms of one structure or of many (a dataset) with a full neighbour list: positions (N, 3) Å,
#: cells (F, 3, 3) Å and frame_of_atom (N,) (atom i's pairs use cells[frame_of_atom[i]]; one
#: structure passes cell[None] and zeros), the neighbour list offsets (N + 1,), second (P,),
#: shifts (P, 3) from `lattenb.neighbors`, species (N,) int64 indices into the model's species.
System = namedtuple("System", ["positions", "cells", "frame_of_atom", "offsets", "second", "shifts",
                               "species"])

#: Everything the kernels need from a model, as plain arrays (see `LatteModel.kernel_arrays`):
#: cutoff (Å), layout (`blocks.DescriptorLayout.kernel_tuple`), radial_family (the family token),
#: radial (R, B, K) its constants in R rows, radial_row int64 the row of central species s and
#: neighbour species s': (S,) s, or 0 for shared radial functions, or (S, S) s S + s' for radial
#: functions per species pair (`moments.radial_row_of`), n_radial_slots its number of gradient
#: slots, sigma (S, S, B) and sigma_scaled = sigma * the family's scale, the support bins
#: (bin_ptr, bin_bodies, inv_bin of `radial.support_bins`, per radial row), the standardisation
#: g_mean, g_inv_std (S, T), mlp_params (S, n), layer_sizes, activation code and e0 (S,) eV.
KernelArrays = namedtuple("KernelArrays", [
    "cutoff", "layout", "radial_family", "radial", "radial_row", "n_radial_slots", "sigma",
    "sigma_scaled", "bin_ptr", "bin_bodies", "inv_bin", "g_mean", "g_inv_std", "mlp_params",
    "layer_sizes", "activation", "e0"])


def default_chunks(n_atoms):
    """Enough chunks to balance threads, few enough that scratch allocation stays negligible."""
    return max(1, min(n_atoms, 8 * get_num_threads()))


@njit(cache=True, error_model="numpy")
def _setup(offsets, body_rank, body_projection, pair_rows, bin_ptr, bin_bodies, sorted_count):
    """What every driver derives once per call: (largest neighbour count, number of distance bins,
    the support bins of every body per radial row (R, B, 2), whether any body is projected,
    whether any term contracts through intermediates (`contraction.pair`), whether the pairs
    come sorted)."""
    return (max_neighbours(offsets), bin_ptr.shape[1] - 1,
            support_bin_ranges(bin_ptr, bin_bodies, body_rank.shape[0]),
            has_projection(body_projection), pair_rows.shape[0] > 0, sorted_count.shape[0] > 0)


@njit(cache=True, error_model="numpy")
def _atom_scratch(m, n_terms, n_act, widest):
    """One set of per-atom buffers (allocated per chunk): moments and their adjoint (m,), the
    descriptor, its standardised form and adjoint (n_terms,), MLP activations and
    pre-activations (n_act,), two MLP backward buffers (widest,)."""
    return (np.empty(m), np.empty(m), np.empty(n_terms), np.empty(n_terms), np.empty(n_terms),
            np.empty(n_act), np.empty(n_act), np.empty(widest), np.empty(widest))


@njit(cache=True, error_model="numpy")
def _mlp_sizes(layer_sizes):
    """(sum of the layer sizes, widest layer): the MLP scratch sizes."""
    n_act = 0
    widest = 0
    for k in range(layer_sizes.shape[0]):
        n_act += layer_sizes[k]
        widest = max(widest, layer_sizes[k])
    return n_act, widest


def flat_inputs(system, sorted_pairs, arrays):
    """The three structures as one flat tuple of arrays and scalars, which is how the Numba
    kernels take them (in this order): Numba types a tuple argument in Python, array by array, on
    every call (300 µs per call with these structures, 3 % of an 864-atom MD step; `*args`
    too, since it packs them into a tuple), but plain array arguments through its fast path."""
    return (*system, *sorted_pairs, arrays.cutoff, *arrays.layout, *arrays[2:])


def descriptors_kernel(system, sorted_pairs, arrays, n_chunks):
    """G (N, T) for every atom (no gradients) and each atom's closest-neighbour distance (N,)."""
    return _descriptors(n_chunks, *flat_inputs(system, sorted_pairs, arrays))


def energy_forces_kernel(system, sorted_pairs, arrays, n_centres, n_chunks, n_feature_atoms=0):
    """Per-atom energies (N,), per-pair dE/dv (P, 3), per-atom dE/d(strain) (N, 9), the
    per-atom closest-neighbour distance (N,) and the raw descriptors (n_feature_atoms, T) of
    atoms i < n_feature_atoms (what the extrapolation grades start from, `lattenb.extrapolation`;
    pass 0 for none). Units eV, eV/Å, eV.

    Only atoms i < n_centres are centres: the others (e.g. ghost atoms of a domain) act only as
    neighbours and get energy 0, strain 0 and zero pair gradients."""
    return _energy_forces(n_centres, n_chunks, n_feature_atoms,
                          *flat_inputs(system, sorted_pairs, arrays))


def tangent_reverse_kernel(system, sorted_pairs, arrays, e_bar, delta, strain_bar, n_chunks):
    """Gradient of sum_i (e_bar_i e_i + edot_i) with respect to the MLP parameters (S, nP),
    species weights (S, S, B) and the radial family's gradient slots (R, B, n_slots) (R: the radial
    rows, `LatteModel.n_radial_species`).

    edot_i is the derivative of e_i along the pair tangent field
    vtilde_ij = delta_i - delta_j + strain_bar[frame] . v_ij (delta (N, 3), strain_bar (F, 3, 3)).
    Per atom: pairs sorted as in the energy kernel plus their tangent rows, A and Adot
    body-major, the contraction and the MLP with their tangents, then the reverse of all of it
    back to the radial parameters, again body-major (design page, §5). Atoms are split into
    n_chunks fixed chunks with one gradient buffer each, summed in chunk order, so the result
    does not depend on the number of threads.
    """
    return _tangent_reverse(e_bar, delta, strain_bar, n_chunks,
                            *flat_inputs(system, sorted_pairs, arrays))


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
def _descriptors(n_chunks, positions, cells, frame_of_atom, offsets, second, shifts, species,
                 sorted_rows, sorted_q, sorted_start, sorted_count, sorted_keys, sorted_closest,
                 cutoff, body_rank, body_offset, term_body_start, term_pattern, pattern_rows,
                 pattern_table_start, tables, body_projection, operand_start, index_start, index,
                 pair_rows, moment_sizes, family, radial, radial_row, n_radial_slots, sigma,
                 sigma_scaled, bin_ptr, bin_bodies, inv_bin, g_mean, g_inv_std, mlp_params,
                 layer_sizes, act, e0):
    n_max, n_bins, body_bins, projected, paired, presorted = _setup(
        offsets, body_rank, body_projection, pair_rows, bin_ptr, bin_bodies, sorted_count)
    n_atoms = positions.shape[0]
    n_terms = term_pattern.shape[0]
    G = np.empty((n_atoms, n_terms))
    closest = np.empty(n_atoms)
    for chunk in prange(n_chunks):
        A = np.empty(moment_sizes[1])
        P, pair_q, key_start, work = pair_scratch(n_max, sigma.shape[1] * n_bins)
        for i in range(chunk * n_atoms // n_chunks, (chunk + 1) * n_atoms // n_chunks):
            if presorted:
                closest[i], _ = copy_sorted_pairs(
                    i, sorted_rows, sorted_q, sorted_start, sorted_count, sorted_keys,
                    sorted_closest, P, pair_q, key_start)
            else:
                closest[i], _ = gather_pairs(i, positions, cells[frame_of_atom[i]], offsets,
                                            second, shifts, species, cutoff, inv_bin,
                                            n_bins, P, pair_q, key_start, work)
            atom_moments(family, species[i], P, key_start, n_bins, body_rank, body_offset,
                         body_bins, sigma_scaled, radial, radial_row, A)
            if projected:
                project(A, body_rank, body_offset, body_projection, False)
            if paired:
                pair(A, pair_rows, moment_sizes)
            contract(A, operand_start, index_start, index, G[i])
    return G, closest


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
def _energy_forces(n_centres, n_chunks, n_feature_atoms, positions, cells, frame_of_atom, offsets,
                   second, shifts, species, sorted_rows, sorted_q, sorted_start, sorted_count,
                   sorted_keys, sorted_closest, cutoff, body_rank, body_offset, term_body_start,
                   term_pattern, pattern_rows, pattern_table_start, tables, body_projection,
                   operand_start, index_start, index, pair_rows, moment_sizes, family, radial,
                   radial_row, n_radial_slots, sigma, sigma_scaled, bin_ptr, bin_bodies, inv_bin,
                   g_mean, g_inv_std, mlp_params, layer_sizes, act, e0):
    n_max, n_bins, body_bins, projected, paired, presorted = _setup(
        offsets, body_rank, body_projection, pair_rows, bin_ptr, bin_bodies, sorted_count)
    n_atoms = positions.shape[0]
    n_terms = term_pattern.shape[0]
    m = moment_sizes[1]              # the moments, then the intermediates
    n_act, widest = _mlp_sizes(layer_sizes)
    energies = np.zeros(n_atoms)
    closest = np.full(n_atoms, np.inf)
    pair_grad = np.zeros((second.shape[0], 3))
    strain = np.zeros((n_atoms, 9))
    descriptors = np.zeros((n_feature_atoms, n_terms))
    for chunk in prange(n_chunks):
        lo = chunk * n_centres // n_chunks
        hi = (chunk + 1) * n_centres // n_chunks
        # per-chunk scratch, reused by every atom of the chunk
        A, Abar, G, x, xbar, a, z, buf_out, buf_in = _atom_scratch(m, n_terms, n_act, widest)
        P, pair_q, key_start, work = pair_scratch(n_max, sigma.shape[1] * n_bins)
        Q = np.empty((4, n_max))
        for i in range(lo, hi):
            s = species[i]
            if presorted:
                closest[i], n_kept = copy_sorted_pairs(
                    i, sorted_rows, sorted_q, sorted_start, sorted_count, sorted_keys,
                    sorted_closest, P, pair_q, key_start)
            else:
                closest[i], n_kept = gather_pairs(i, positions, cells[frame_of_atom[i]], offsets,
                                                 second, shifts, species, cutoff, inv_bin,
                                                 n_bins, P, pair_q, key_start, work)
            atom_moments(family, s, P, key_start, n_bins, body_rank, body_offset, body_bins,
                         sigma_scaled, radial, radial_row, A)
            if projected:
                project(A, body_rank, body_offset, body_projection, False)
            if paired:
                pair(A, pair_rows, moment_sizes)
            # the descriptors are an output too (grades): contracted into the output row and
            # copied back, since copying G out after the MLP made every MD step 3 % slower
            # even with no atom asking (bench_compare, 1 thread: 1.029-1.038 against 1.005)
            if i < n_feature_atoms:
                contract(A, operand_start, index_start, index, descriptors[i])
                for t in range(n_terms):
                    G[t] = descriptors[i, t]
            else:
                contract(A, operand_start, index_start, index, G)
            for t in range(n_terms):
                x[t] = (G[t] - g_mean[s, t]) * g_inv_std[s, t]
            energies[i] = (mlp_forward(mlp_params[s], layer_sizes, act, x, a,
                                       z) + e0[s])
            mlp_input_gradient(mlp_params[s], layer_sizes, act, a, z, buf_out,
                               buf_in, xbar)
            for t in range(n_terms):
                xbar[t] *= g_inv_std[s, t]          # dE/dG
            contract_adjoint(A, xbar, operand_start, index_start, index, Abar)
            if paired:
                pair_adjoint(A, Abar, pair_rows)
            if projected:
                project(Abar, body_rank, body_offset, body_projection, True)
            st = atom_pair_gradients(family, s, n_kept, P, pair_q, key_start, n_bins, body_rank,
                                     body_offset, body_bins, sigma_scaled, radial,
                                     radial_row, Abar, Q, pair_grad)
            for k in range(9):
                strain[i, k] = st[k]
    return energies, pair_grad, strain, closest, descriptors


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


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
def _tangent_reverse(e_bar, delta, strain_bar, n_chunks, positions, cells, frame_of_atom, offsets,
                     second, shifts, species, sorted_rows, sorted_q, sorted_start, sorted_count,
                     sorted_keys, sorted_closest, cutoff, body_rank, body_offset, term_body_start,
                     term_pattern, pattern_rows, pattern_table_start, tables, body_projection,
                     operand_start, index_start, index, pair_rows, moment_sizes, family, radial,
                     radial_row, n_radial_slots, sigma, sigma_scaled, bin_ptr, bin_bodies, inv_bin,
                     g_mean, g_inv_std, mlp_params, layer_sizes, act, e0):
    n_max, n_bins, body_bins, projected, paired, presorted = _setup(
        offsets, body_rank, body_projection, pair_rows, bin_ptr, bin_bodies, sorted_count)
    n_atoms = positions.shape[0]
    n_species = sigma.shape[0]
    n_bodies = body_rank.shape[0]
    n_terms = term_pattern.shape[0]
    n_mlp = mlp_params.shape[1]
    m = moment_sizes[1]              # the moments, then the intermediates
    max_rank = 0
    for b in range(n_bodies):
        max_rank = max(max_rank, body_rank[b])
    n_act, widest = _mlp_sizes(layer_sizes)
    g_mlp = np.zeros((n_chunks, n_species, n_mlp))
    g_sigma = np.zeros((n_chunks, n_species, n_species, n_bodies))
    g_radial = np.zeros((n_chunks, radial.shape[0], n_bodies, n_radial_slots))
    for chunk in prange(n_chunks):
        lo = chunk * n_atoms // n_chunks
        hi = (chunk + 1) * n_atoms // n_chunks
        A, Abar, G, x, xbar, a, z, zbar, buf = _atom_scratch(m, n_terms, n_act, widest)
        Adot, Adotbar, Gdot, xdot, xdotbar, adot, zdot, zdotbar, bufdot = _atom_scratch(
            m, n_terms, n_act, widest)
        P, pair_q, key_start, work = pair_scratch(n_max, n_species * n_bins)
        T = np.empty((TANGENT_ROWS, n_max))
        W = np.empty((2, n_max))         # per-pair weights of the parameter reverse pass
        for i in range(lo, hi):
            si = species[i]
            fi = frame_of_atom[i]
            # ---- forward and tangent moments
            if presorted:
                _, n_kept = copy_sorted_pairs(
                    i, sorted_rows, sorted_q, sorted_start, sorted_count, sorted_keys,
                    sorted_closest, P, pair_q, key_start)
            else:
                _, n_kept = gather_pairs(i, positions, cells[frame_of_atom[i]], offsets,
                                        second, shifts, species, cutoff, inv_bin,
                                        n_bins, P, pair_q, key_start, work)
            pair_tangents(i, n_kept, P, pair_q, second, delta, strain_bar[fi], max_rank, T)
            atom_tangent_moments(family, si, P, T, key_start, n_bins, body_rank, body_offset,
                                 body_bins, sigma_scaled, radial, radial_row, A, Adot)
            if projected:
                project(A, body_rank, body_offset, body_projection, False)
                project(Adot, body_rank, body_offset, body_projection, False)
            if paired:
                pair_tangent(A, Adot, pair_rows, moment_sizes)
            contract_tangent(A, Adot, operand_start, index_start, index, G, Gdot)
            for t in range(n_terms):
                x[t] = (G[t] - g_mean[si, t]) * g_inv_std[si, t]
                xdot[t] = Gdot[t] * g_inv_std[si, t]
            mlp_tangent_forward(mlp_params[si], layer_sizes, act, x, xdot, a, adot, z, zdot)
            # ---- reverse
            mlp_tangent_reverse(mlp_params[si], layer_sizes, act, a, adot, z, zdot, e_bar[i], 1.0,
                                g_mlp[chunk, si], zbar, zdotbar, buf, bufdot, xbar, xdotbar)
            for t in range(n_terms):
                xbar[t] *= g_inv_std[si, t]
                xdotbar[t] *= g_inv_std[si, t]
            contract_tangent_adjoint(A, Adot, xbar, xdotbar, operand_start, index_start, index,
                                     Abar, Adotbar)
            if paired:
                pair_tangent_adjoint(A, Adot, Abar, Adotbar, pair_rows)
            if projected:
                project(Abar, body_rank, body_offset, body_projection, True)
                project(Adotbar, body_rank, body_offset, body_projection, True)
            atom_parameter_gradients(family, si, P, T, key_start, n_bins, body_rank, body_offset,
                                     body_bins, sigma_scaled, radial, radial_row, Abar, Adotbar,
                                     g_sigma[chunk], g_radial[chunk], W)
    return g_mlp.sum(axis=0), g_sigma.sum(axis=0), g_radial.sum(axis=0)
