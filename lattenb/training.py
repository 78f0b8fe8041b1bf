"""Training: loss over a dataset and its exact gradient with respect to every parameter.

Loss (design page, section 5), residuals in eV/atom, eV/Å and GPa:

    L = w_E mean_frames ((E - E_ref) / N)^2 + w_F mean_components (F - F_ref)^2
        + w_S mean_{frames, voigt} (S - S_ref)^2 + l2 |W_MLP|^2

Frames contribute only the targets they have. The gradient costs one energy/force pass plus one
tangent + reverse pass: with delta_i = dL/dF_i and Delta = dL/d(dE/dstrain) the force and stress
terms are the directional derivative Phi = sum_pairs vtilde_ij . dE/dv_ij along the fixed tangent
vtilde_ij = delta_i - delta_j + Delta v_ij (because F_i = sum_j g_ij - sum_k g_ki and
dE/dstrain = sum g (x) v), so dL/dtheta = sum_i dJ_i/dtheta with J_i = ebar_i e_i + edot_i, and
no Jacobian is stored.
"""
import copy
from dataclasses import dataclass, replace

import numpy as np
from numba import njit, prange
from ._numba import FASTMATH

from .descriptor import (RANK_SIZE, TANGENT_ROWS, atom_parameter_gradients, atom_tangent_moments,
                         contract_tangent, contract_tangent_adjoint, contraction_indices,
                         descriptors_kernel, gather_pairs, max_neighbours, pair_scratch,
                         pair_tangents, support_bin_ranges)
from .energy import check_overlap, default_chunks, energy_forces_kernel, gather_forces
from .mlp import mlp_tangent_forward, mlp_tangent_reverse
from .neighbors import neighbor_list

EV_A3_TO_GPA = 160.21766208


# --------------------------------------------------------------------------- data
def _targets(atoms):
    """(energy or None, forces or None, stress (6,) or None) of one ASE Atoms."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy"))
    forces = results.get("forces", atoms.arrays.get("forces"))
    stress = results.get("stress", atoms.info.get("stress"))
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (3, 3):
            stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
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

    @property
    def n_frames(self):
        return len(self.cells)

    @property
    def n_atoms_per_frame(self):
        return np.diff(self.atom_start)

    def composition(self, n_species):
        """(F, S) atom counts per species."""
        counts = np.zeros((self.n_frames, n_species))
        np.add.at(counts, (self.frame_of_atom, self.species), 1.0)
        return counts


def prepare_dataset(frames, model, require_energy=True):
    """Build a `Dataset` from ASE Atoms for `model` (neighbour lists computed once here)."""
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
        e, fr, st = _targets(atoms)
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
        has_s = st is not None and vol > 1e-12
        stresses.append(st if has_s else np.zeros(6))
        hs.append(has_s)
        ctypes.append(str(atoms.info.get("config_type", "default")))
    if require_energy and not any(he):
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
        config_types=ctypes)


def dataset_descriptors(model, data):
    """Raw descriptors G (N, T) of every atom of a dataset."""
    k = model.kernel_arrays()
    G, closest = descriptors_kernel(data.positions, data.cells, data.frame_of_atom, data.offsets,
                                    data.second, data.shifts, data.species, k.cutoff, k.layout,
                                    k.sigma_c2, k.centres, k.inv_w, k.bin_ptr,
                                    k.bin_bodies, k.inv_bin, default_chunks(len(data.positions)))
    check_overlap(closest)
    return G


# --------------------------------------------------------------------------- predictions
def predict(model, data, n_chunks=None):
    """Energies (F,), forces (N, 3), stresses (F, 6) eV/Å^3 (nan without volume) and per-atom
    energies (N,) of a dataset in one pass."""
    k = model.kernel_arrays()
    n_atoms = len(data.positions)
    energies, pair_grad, strain, closest = energy_forces_kernel(
        data.positions, data.cells, data.frame_of_atom, data.offsets, data.second, data.shifts,
        data.species, k.cutoff, k.layout, k.sigma_c2, k.centres, k.inv_w, k.bin_ptr,
        k.bin_bodies, k.inv_bin, k.g_mean, k.g_inv_std, k.mlp_params, k.layer_sizes,
        k.activation, k.e0, n_atoms, n_chunks or default_chunks(n_atoms))
    check_overlap(closest)
    frame_energy = np.bincount(data.frame_of_atom, weights=energies, minlength=data.n_frames)
    forces = gather_forces(data.offsets, data.second, pair_grad, n_atoms)
    dstrain = np.zeros((data.n_frames, 9))
    np.add.at(dstrain, data.frame_of_atom, strain)
    dstrain = dstrain.reshape(-1, 3, 3)
    dstrain = 0.5 * (dstrain + dstrain.transpose(0, 2, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = dstrain / np.where(data.volumes > 1e-12, data.volumes, np.nan)[:, None, None]
    stresses = s[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return frame_energy, forces, stresses, energies


# --------------------------------------------------------------------------- kernel
@njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
def tangent_reverse_kernel(positions, cells, frame_of_atom, offsets, second, shifts, species,
                           cutoff, layout, sigma_c2, centres, inv_w, inv_c2, bin_ptr, bin_bodies,
                           inv_bin, g_mean, g_inv_std, mlp_params, layer_sizes, act, e_bar, delta,
                           strain_bar, n_chunks):
    """Gradient of sum_i (e_bar_i e_i + edot_i) with respect to the MLP parameters (S, nP),
    species weights (S, S, B), radial centres (S, B) and widths (S, B).

    edot_i is the derivative of e_i along the pair tangent field
    vtilde_ij = delta_i - delta_j + strain_bar[frame] . v_ij (delta (N, 3), strain_bar (F, 3, 3)).
    Per atom: pairs sorted as in the energy kernel plus their tangent rows, A and Adot
    body-major, the contraction and the MLP with their tangents, then the reverse of all of it
    back to the radial parameters, again body-major. Atoms are split into n_chunks fixed chunks
    with one gradient buffer each, summed in chunk order, so the result does not depend on the
    number of threads.
    """
    body_rank, body_offset, term_body_start, term_pattern = layout[:4]
    n_atoms = positions.shape[0]
    n_species = sigma_c2.shape[0]
    n_bodies = body_rank.shape[0]
    n_terms = term_pattern.shape[0]
    n_mlp = mlp_params.shape[1]
    m = body_offset[-1] + RANK_SIZE[body_rank[-1]]
    max_rank = 0
    for b in range(n_bodies):
        max_rank = max(max_rank, body_rank[b])
    n_act = 0
    widest = 0
    for k in range(layer_sizes.shape[0]):
        n_act += layer_sizes[k]
        widest = max(widest, layer_sizes[k])
    n_max = max_neighbours(offsets)
    n_bins = bin_ptr.shape[1] - 1
    body_bins = support_bin_ranges(bin_ptr, bin_bodies, n_bodies)
    index_start, index = contraction_indices(layout)
    g_mlp = np.zeros((n_chunks, n_species, n_mlp))
    g_sigma = np.zeros((n_chunks, n_species, n_species, n_bodies))
    g_c = np.zeros((n_chunks, n_species, n_bodies))
    g_w = np.zeros((n_chunks, n_species, n_bodies))
    for chunk in prange(n_chunks):
        lo = chunk * n_atoms // n_chunks
        hi = (chunk + 1) * n_atoms // n_chunks
        A = np.empty(m)
        Adot = np.empty(m)
        Abar = np.empty(m)
        Adotbar = np.empty(m)
        G = np.empty(n_terms)
        Gdot = np.empty(n_terms)
        x = np.empty(n_terms)
        xdot = np.empty(n_terms)
        xbar = np.empty(n_terms)
        xdotbar = np.empty(n_terms)
        a = np.empty(n_act)
        adot = np.empty(n_act)
        z = np.empty(n_act)
        zdot = np.empty(n_act)
        zbar = np.empty(widest)
        zdotbar = np.empty(widest)
        buf = np.empty(widest)
        bufdot = np.empty(widest)
        P, pair_q, key_start, work = pair_scratch(n_max, n_species * n_bins)
        T = np.empty((TANGENT_ROWS, n_max))
        for i in range(lo, hi):
            si = species[i]
            fi = frame_of_atom[i]
            # ---- forward and tangent moments
            n_kept = gather_pairs(i, positions, cells[fi], offsets, second, shifts, species,
                                  cutoff, inv_bin, n_bins, P, pair_q, key_start, work)[1]
            pair_tangents(i, n_kept, P, pair_q, second, delta, strain_bar[fi], max_rank, T)
            atom_tangent_moments(si, P, T, key_start, n_bins, body_rank, body_offset, body_bins,
                                 sigma_c2, centres, inv_w, A, Adot)
            contract_tangent(A, Adot, term_body_start, index_start, index, G, Gdot)
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
            contract_tangent_adjoint(A, Adot, xbar, xdotbar, term_body_start, index_start, index,
                                     Abar, Adotbar)
            atom_parameter_gradients(si, P, T, key_start, n_bins, body_rank, body_offset,
                                     body_bins, sigma_c2, centres, inv_w, inv_c2, Abar, Adotbar,
                                     g_sigma[chunk], g_c[chunk], g_w[chunk])
    return g_mlp.sum(axis=0), g_sigma.sum(axis=0), g_c.sum(axis=0), g_w.sum(axis=0)


# --------------------------------------------------------------------------- loss
@dataclass
class LossWeights:
    """Weights of the loss terms: energy per atom (1/eV^2), forces (Å^2/eV^2), stress (1/GPa^2),
    and the L2 penalty on MLP weights (biases are not penalised).

    stress_offset: compare stresses up to one isotropic offset p (GPa) per dataset, the value that
    minimises the stress term (see `stress_residuals`). Plane-wave DFT stresses carry such a
    constant Pulay stress from the finite basis; the energies do not, so fitting raw stresses pulls
    the model's E(V) away from the DFT energies."""
    energy: float = 1.0
    forces: float = 1.0
    stress: float = 1.0
    l2: float = 0.0
    stress_offset: bool = False


def stress_residuals(S, data, fit_offset=False):
    """Stress residuals (n_frames, 6) in GPa (zero for frames without stress) and the isotropic
    offset p (GPa) removed from their diagonal: p = mean diagonal residual when `fit_offset`,
    else 0. Because p minimises the squared residuals, dL/dS at fixed p is the exact gradient."""
    ms = data.has_stress
    res = np.where(ms[:, None], (np.nan_to_num(S) - data.stresses) * EV_A3_TO_GPA, 0.0)
    offset = float(np.mean(res[ms, :3])) if fit_offset and ms.any() else 0.0
    res[ms, :3] -= offset
    return res, offset


def mlp_weight_mask(layer_sizes):
    """(n_parameters,) 1.0 for weights, 0.0 for biases."""
    parts = []
    for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
        parts += [np.ones(n_in * n_out), np.zeros(n_out)]
    return np.concatenate(parts)


def loss_and_gradient(model, data, weights=LossWeights(), with_gradient=True, n_chunks=None):
    """Loss (float), its parts (dict) and, if asked, dL/dparams as a dict of arrays shaped like
    `model.params` (centres, widths, sigma, mlp, e0; g_mean and g_std are fixed buffers)."""
    k = model.kernel_arrays()
    E, F, S, _ = predict(model, data)
    n_per = data.n_atoms_per_frame
    parts = {}
    # energy per atom
    me = data.has_energy
    res_e = np.where(me, (E - np.where(me, data.energies, 0.0)) / n_per, 0.0)
    ne = max(int(me.sum()), 1)
    parts["energy"] = weights.energy * float(np.sum(res_e ** 2)) / ne
    e_bar_frame = 2.0 * weights.energy * res_e / n_per / ne
    # forces
    atom_has_f = data.has_forces[data.frame_of_atom]
    res_f = np.where(atom_has_f[:, None], F - data.forces, 0.0)
    nf = max(3 * int(atom_has_f.sum()), 1)
    parts["forces"] = weights.forces * float(np.sum(res_f ** 2)) / nf
    delta = 2.0 * weights.forces * res_f / nf
    # stress, residual in GPa
    ms = data.has_stress
    res_s, _ = stress_residuals(S, data, weights.stress_offset)
    ns = max(6 * int(ms.sum()), 1)
    parts["stress"] = weights.stress * float(np.sum(res_s ** 2)) / ns
    s_bar = 2.0 * weights.stress * res_s * EV_A3_TO_GPA / ns                     # dL/dS (F, 6)
    vol = np.where(data.volumes > 1e-12, data.volumes, 1.0)
    # S = sym(M)/V with M = sum g (x) v: dL/dM_aa = sbar_aa / V, dL/dM_ab = sbar_ab / (2 V)
    strain_bar = np.zeros((data.n_frames, 3, 3))
    for voigt, (a, b) in enumerate(((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))):
        scale = 1.0 if a == b else 0.5
        strain_bar[:, a, b] += scale * s_bar[:, voigt] / vol
        if a != b:
            strain_bar[:, b, a] += scale * s_bar[:, voigt] / vol
    mask = mlp_weight_mask(model.layer_sizes)
    mlp = model.params["mlp"]
    parts["l2"] = weights.l2 * float(np.sum((mlp * mask) ** 2))
    loss = sum(parts.values())
    if not with_gradient:
        return loss, parts, None
    e_bar = e_bar_frame[data.frame_of_atom]
    n_atoms = len(data.positions)
    g_mlp, g_sigma, g_c, g_w = tangent_reverse_kernel(
        data.positions, data.cells, data.frame_of_atom, data.offsets, data.second, data.shifts,
        data.species, k.cutoff, k.layout, k.sigma_c2, k.centres, k.inv_w, k.inv_c2, k.bin_ptr,
        k.bin_bodies, k.inv_bin, k.g_mean, k.g_inv_std, k.mlp_params, k.layer_sizes, k.activation,
        e_bar, delta, strain_bar, n_chunks or default_chunks(n_atoms))
    g_mlp += 2.0 * weights.l2 * mlp * mask
    g_e0 = np.bincount(data.species, weights=e_bar, minlength=model.n_species)
    grad = {"mlp": g_mlp, "e0": g_e0, "sigma": g_sigma, "centres": g_c, "widths": g_w}
    return loss, parts, grad


def solve_output_layer(model, data, weights=LossWeights(), n_chunks=None):
    """Set the output layer weights and e0 of every species to their exact minimiser of the
    loss with everything else fixed.

    The energy is linear in the output layer weights W (S, K) and in e0 (S,), and forces and
    stress are linear in W, so the loss is quadratic in them: one energy/force pass per hidden
    unit of the last layer gives one column of a weighted linear least-squares problem (with
    the isotropic stress offset as one more unknown when `weights.stress_offset`, and the L2
    penalty on W as ridge rows). The output bias is left as it is: it duplicates e0.
    Gradient descent resolves these directions slowly when the energy term is a small part of
    the loss, which is why `fit` solves them exactly. Memory: one (rows, S K + S + 1) matrix,
    rows = frames with energy + 3 x atoms with forces + 6 x frames with stress + S K."""
    S, K = model.n_species, int(model.layer_sizes[-2])
    mlp0, e00 = model.params["mlp"].copy(), model.params["e0"].copy()
    n = data.n_atoms_per_frame.astype(np.float64)
    me = data.has_energy
    mf = np.repeat(data.has_forces[data.frame_of_atom], 3) & (weights.forces > 0)
    ms = data.has_stress & (weights.stress > 0)
    comp = data.composition(S)
    n_w = S * K
    # row blocks (energy, forces, stress, ridge) of the one design matrix, filled in place
    sizes = (int(me.sum()), int(mf.sum()), 6 * int(ms.sum()), n_w if weights.l2 > 0 else 0)
    rE, rF, rS, rL = (slice(a, b) for a, b in zip(np.cumsum((0,) + sizes[:-1]), np.cumsum(sizes)))
    A = np.zeros((sum(sizes), n_w + S + 1))
    y = np.zeros(sum(sizes))

    def put(column, E, F, St):
        A[rE, column] = E[me] / n[me]
        A[rF, column] = F.ravel()[mf]
        A[rS, column] = St[ms].ravel() * EV_A3_TO_GPA
    try:
        for s in range(S):
            for k in range(K):
                mlp = mlp0.copy()
                mlp[:, -(K + 1):] = 0.0
                mlp[s, -(K + 1) + k] = 1.0
                model.set_parameters(mlp=mlp, e0=np.zeros(S))
                put(s * K + k, *predict(model, data, n_chunks)[:3])
        # what does not depend on W or e0 (the output biases) goes to the right-hand side
        mlp = mlp0.copy()
        mlp[:, -(K + 1):-1] = 0.0
        model.set_parameters(mlp=mlp, e0=np.zeros(S))
        E_b, F_b, S_b, _ = predict(model, data, n_chunks)
    finally:
        model.set_parameters(mlp=mlp0, e0=e00)
    A[rE, n_w:n_w + S] = comp[me] / n[me, None]
    y[rE] = (data.energies[me] - E_b[me]) / n[me]
    y[rF] = data.forces.ravel()[mf] - F_b.ravel()[mf]
    y[rS] = (data.stresses[ms] - S_b[ms]).ravel() * EV_A3_TO_GPA
    if weights.stress_offset:
        A[rS, -1] = np.tile([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], int(ms.sum()))
    if sizes[3]:
        A[rL, :n_w] = np.eye(n_w)
    # the loss weights and means of `loss_and_gradient` as row scales
    for rows, scale in ((rE, weights.energy / max(sizes[0], 1)),
                        (rF, weights.forces / max(sizes[1], 1)),
                        (rS, weights.stress / max(sizes[2], 1)), (rL, weights.l2)):
        A[rows] *= np.sqrt(scale)
        y[rows] *= np.sqrt(scale)
    x, *_ = np.linalg.lstsq(A, y, rcond=None)
    present = comp.sum(axis=0) > 0             # species absent from the data keep theirs
    mlp = mlp0.copy()
    mlp[present, -(K + 1):-1] = x[:n_w].reshape(S, K)[present]
    model.set_parameters(mlp=mlp, e0=np.where(present, x[n_w:n_w + S], e00))


# --------------------------------------------------------------------------- fit
#: energy weight of the final output-layer solve relative to that of the L-BFGS fit: the
#: validation error of the mlearn Ni and Cu fits is lowest between 30 and 100 (issue 3 notes)
OUTPUT_ENERGY_FACTOR = 100.0
TRAINING_CHUNKS = 64     # fixed, so gradients are bit-identical whatever the thread count


def standardise(model, data):
    """Set the descriptor standardisation (g_mean, g_std per species) from a dataset."""
    G = dataset_descriptors(model, data)
    mean = np.array(model.params["g_mean"])
    std = np.array(model.params["g_std"])
    for s in range(model.n_species):
        rows = G[data.species == s]
        if len(rows):
            mean[s] = rows.mean(axis=0)
            sd = rows.std(axis=0)
            std[s] = np.where(sd > 1e-8 * (1 + np.abs(mean[s])), sd, 1.0)
    model.set_parameters(g_mean=mean, g_std=std)


def fit_reference_energies(model, data):
    """e0 by linear least squares of (E_ref - current MLP energy) on composition."""
    model.set_parameters(e0=np.zeros(model.n_species))
    E, _, _, _ = predict(model, data)
    m = data.has_energy
    comp = data.composition(model.n_species)[m]
    e0, *_ = np.linalg.lstsq(comp, data.energies[m] - E[m], rcond=None)
    present = comp.sum(axis=0) > 0
    model.set_parameters(e0=np.where(present, e0, 0.0))


class ParameterVector:
    """Packs the trainable parameters into one vector with box bounds for L-BFGS-B.

    Radial functions are reparametrised as (w, u) with c = w + u (r_cut - 2 w),
    w in [MIN_WIDTH, r_cut / 2], u in [0, 1], which keeps 0 <= c - w and c + w <= r_cut.
    """

    def __init__(self, model, train_radial=True, train_sigma=True):
        from .model import MIN_WIDTH
        self.model = model
        self.rc = model.cutoff
        self.shapes = [("mlp", model.params["mlp"].shape), ("e0", model.params["e0"].shape),
                       ("widths", model.params["widths"].shape), ("u", model.params["centres"].shape),
                       ("sigma", model.params["sigma"].shape)]
        self.sizes = [int(np.prod(s)) for _, s in self.shapes]
        bounds = []
        for (name, _), n in zip(self.shapes, self.sizes):
            if name == "widths":
                bounds += [(MIN_WIDTH, self.rc / 2)] * n
            elif name == "u":
                bounds += [(0.0, 1.0)] * n
            else:
                bounds += [(None, None)] * n
        self.bounds = bounds
        self.frozen = np.zeros(sum(self.sizes), bool)
        start = 0
        for (name, _), n in zip(self.shapes, self.sizes):
            if (name in ("widths", "u") and not train_radial) or (name == "sigma" and not train_sigma):
                self.frozen[start:start + n] = True
            start += n

    def get(self):
        p = self.model.params
        w = p["widths"]
        span = self.rc - 2 * w
        u = np.where(span > 1e-12, (p["centres"] - w) / np.where(span > 1e-12, span, 1.0), 0.5)
        values = {"mlp": p["mlp"], "e0": p["e0"], "widths": w, "u": np.clip(u, 0, 1),
                  "sigma": p["sigma"]}
        return np.concatenate([values[name].ravel() for name, _ in self.shapes])

    def _split(self, x):
        out, start = {}, 0
        for (name, shape), n in zip(self.shapes, self.sizes):
            out[name] = x[start:start + n].reshape(shape)
            start += n
        return out

    def set(self, x):
        v = self._split(np.asarray(x, dtype=np.float64))
        w, u = v["widths"], v["u"]
        self.model.set_parameters(mlp=v["mlp"], e0=v["e0"], widths=w,
                                  centres=w + u * (self.rc - 2 * w), sigma=v["sigma"])

    def gradient(self, grad):
        """Chain rule from dL/d(model params) to dL/dx (frozen entries zeroed)."""
        v = self._split(self.get())
        w, u = v["widths"], v["u"]
        g = {"mlp": grad["mlp"], "e0": grad["e0"], "sigma": grad["sigma"],
             "widths": grad["widths"] + grad["centres"] * (1 - 2 * u),
             "u": grad["centres"] * (self.rc - 2 * w)}
        out = np.concatenate([g[name].ravel() for name, _ in self.shapes])
        out[self.frozen] = 0.0
        return out


def rmse_report(model, data):
    """Energy RMSE (meV/atom), force RMSE (eV/Å), stress RMSE (GPa) on a dataset (nan if absent)."""
    E, F, S, _ = predict(model, data)
    n = data.n_atoms_per_frame
    me, ms = data.has_energy, data.has_stress
    af = data.has_forces[data.frame_of_atom]
    e = 1000 * np.sqrt(np.mean(((E - data.energies) / n)[me] ** 2)) if me.any() else np.nan
    f = np.sqrt(np.mean((F - data.forces)[af] ** 2)) if af.any() else np.nan
    s = (EV_A3_TO_GPA * np.sqrt(np.mean((S - data.stresses)[ms] ** 2))) if ms.any() else np.nan
    return e, f, s


class _Objective:
    """loss(x) and its gradient for SciPy, recording every evaluation so a run can be resumed
    exactly: a resumed fit replays the recorded values through the same deterministic L-BFGS-B
    and so reaches the same model as an uninterrupted run."""

    def __init__(self, vector, data, weights, history=None):
        self.vector, self.data, self.weights = vector, data, weights
        self.f_hist, self.g_hist = ([], []) if history is None else (list(history[0]), list(history[1]))
        self.x_hash = [] if history is None else list(history[2])
        self.calls = 0

    def __call__(self, x):
        import hashlib
        digest = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
        if self.calls < len(self.f_hist):
            if digest != self.x_hash[self.calls]:
                raise ValueError("the checkpoint does not match this data or these settings "
                                 "(replayed parameters differ)")
            f, g = self.f_hist[self.calls], self.g_hist[self.calls]
            self.calls += 1
            return f, np.array(g)
        self.vector.set(x)
        loss, parts, grad = loss_and_gradient(self.vector.model, self.data, self.weights,
                                              n_chunks=TRAINING_CHUNKS)
        g = self.vector.gradient(grad)
        self.f_hist.append(loss)
        self.g_hist.append(g.copy())
        self.x_hash.append(digest)
        self.calls += 1
        return loss, g


def _output_weights(weights, values):
    """LossWeights of the final output-layer solve: `values` (energy, forces, stress) with the
    L2 penalty and stress offset of `weights`; None gives the energy weight x OUTPUT_ENERGY_FACTOR."""
    if values is None:
        return replace(weights, energy=OUTPUT_ENERGY_FACTOR * weights.energy)
    values = tuple(float(v) for v in values)
    if len(values) != 3 or not all(np.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"output_weights must be three finite non-negative numbers (energy, "
                         f"forces, stress), got {values}")
    return replace(weights, energy=values[0], forces=values[1], stress=values[2])


def _final_output_solve(model, data, vdata, weights, log):
    """Replace the output layer weights and e0 by their exact minimiser of the training loss at
    `weights` (see `solve_output_layer`), logging train and validation errors before and after.

    Always kept: a validation loss this energy-heavy is dominated by its worst structure (on the
    mlearn Cu split the solve lowered the validation energy MAE from 1.20 to 0.87 meV/atom and
    still raised the squared loss)."""
    names = ("mlp", "e0")
    before = {n: model.params[n].copy() for n in names}

    def report(when):
        if log is None:
            return
        e, f, _ = rmse_report(model, data)
        line = f"  {when}: train E {e:.3f} meV/atom  F {f:.4f} eV/A"
        if vdata is not None:
            ve, vf, _ = rmse_report(model, vdata)
            line += f"  valid E {ve:.3f}  F {vf:.4f}"
        log(line + " (RMSE)")
    if log is not None:
        log(f"solving the output layer exactly at weights E,F,S = {weights.energy:g},"
            f"{weights.forces:g},{weights.stress:g}")
    report("before")
    try:
        solve_output_layer(model, data, weights, TRAINING_CHUNKS)
    except KeyboardInterrupt:
        model.set_parameters(**before)
        model.interrupted = True
        return
    report("after ")


def _species_of(frames):
    numbers = sorted({int(z) for atoms in frames for z in atoms.numbers})
    from ase.data import chemical_symbols
    return [chemical_symbols[z] for z in numbers]


def _save_checkpoint(path, model, best_params, x0, objective, val_hist, iteration, settings):
    from .io import save_model
    best = {n: best_params[n] for n in best_params}
    hashes = np.array([np.frombuffer(h.encode("ascii"), np.uint8) for h in objective.x_hash],
                      dtype=np.uint8).reshape(-1, 16)
    extra = {"fit_x0": x0, "fit_f": np.array(objective.f_hist),
             "fit_g": np.array(objective.g_hist).reshape(len(objective.f_hist), -1),
             "fit_xhash": hashes, "fit_val": np.array(val_hist, dtype=np.float64)}
    save_model(model, path, params=best, extra_arrays=extra,
               extra_header={"fit": dict(settings, iteration=iteration)})


def fit(frames, species=None, *, valid=None, model=None, preset="fast", cutoff=None, blocks=None,
        hidden=None, activation="gaussian", weights=(10.0, 1.0, 0.001), l2=1e-6, max_iter=500,
        stress_offset=False, seed=0, train_radial=True, output_weights=None, solve_output=True,
        checkpoint=None, checkpoint_every=50, resume=None, max_time=None, log=print,
        log_every=10):
    """Fit a LATTE model to structures with energies (and forces/stress where present).

    frames, valid: lists of ASE Atoms (energy, forces, stress from their calculators or info).
    species: chemical symbols (default: all elements in frames). model: start from (a copy of)
    this model instead of a new one built from `preset` with the cutoff/blocks/hidden overrides;
    a fitted model (standardisation set) continues from its parameters, e.g. to refine it with
    other weights or data.
    weights: (energy, forces, stress) loss weights (see `LossWeights`); l2: MLP weight penalty.
    stress_offset: fit reference stresses up to one isotropic offset (a DFT Pulay stress); the
    fitted value, in GPa, is `model.fit_info["stress_offset_GPa"]` (the validation loss fits
    its own).
    output_weights: (energy, forces, stress) weights of a last, exact least-squares solve of the
    output layer and e0 (default: `weights` with the energy weight times OUTPUT_ENERGY_FACTOR;
    `solve_output=False` skips it). L-BFGS makes good progress only while forces dominate the
    loss, and then resolves the energy directions slowly; the energy is linear in the output
    layer, so a solve with a larger energy weight places the energies without retraining.
    max_iter: L-BFGS-B iterations. checkpoint: path written every `checkpoint_every` iterations
    (a loadable model file holding the best parameters so far plus the optimiser history);
    resume: a checkpoint path to continue from (reaches the same model as an uninterrupted run).
    max_time: stop after this many seconds of wall time (the best parameters so far are kept).
    Returns the model with the parameters best on `valid` (the last ones without `valid`).
    Ctrl-C stops the fit cleanly and returns the best model so far (attribute `interrupted`).
    """
    import time

    from scipy.optimize import minimize

    from .model import LatteModel
    t_start = time.perf_counter()
    if not isinstance(weights, LossWeights):
        weights = LossWeights(*weights, l2=l2, stress_offset=bool(stress_offset))
    output_weights = _output_weights(weights, output_weights)
    history, val_hist_init = None, []
    settings = {"preset": preset, "weights": [weights.energy, weights.forces, weights.stress],
                "l2": weights.l2, "stress_offset": weights.stress_offset, "seed": seed,
                "train_radial": bool(train_radial), "max_iter": int(max_iter),
                "output_weights": [output_weights.energy, output_weights.forces,
                                   output_weights.stress] if solve_output else None}
    if resume is not None:
        from .io import read_model_file
        model, header, extra = read_model_file(resume)
        if "fit_x0" not in extra:
            raise ValueError(f"{resume}: not a checkpoint (no optimiser history)")
        fit_info = header.get("fit", {})
        weights = LossWeights(*fit_info["weights"], l2=fit_info["l2"],
                              stress_offset=fit_info.get("stress_offset", False))
        train_radial = fit_info["train_radial"]
        settings.update({k: fit_info[k] for k in ("preset", "weights", "l2", "seed", "train_radial")})
        settings["stress_offset"] = weights.stress_offset
        settings["output_weights"] = fit_info.get("output_weights")
        solve_output = settings["output_weights"] is not None
        if solve_output:
            output_weights = _output_weights(weights, settings["output_weights"])
        history = (extra["fit_f"], list(extra["fit_g"]),
                   [bytes(h).decode("ascii") for h in extra["fit_xhash"]])
        val_hist_init = list(extra["fit_val"])
    elif model is None:
        species = species or _species_of(frames)
        overrides = {k: v for k, v in (("cutoff", cutoff), ("blocks", blocks), ("hidden", hidden))
                     if v is not None}
        model = LatteModel.preset(preset, species, activation=activation, seed=seed, **overrides)
    else:
        model = copy.deepcopy(model)
    # a model whose standardisation is set has been fitted: continue from it as it is
    fitted = resume is None and not (np.all(model.params["g_mean"] == 0.0)
                                     and np.all(model.params["g_std"] == 1.0))
    data = prepare_dataset(frames, model)
    vdata = prepare_dataset(valid, model) if valid else None
    vector = ParameterVector(model, train_radial=train_radial)
    if resume is not None:
        x0 = extra["fit_x0"]
        vector.set(x0)
    elif fitted:
        x0 = vector.get()                         # continue from the given model's parameters
    else:
        standardise(model, data)
        # a zero output layer: the first predictions are exactly the composition fit
        mlp = model.params["mlp"].copy()
        n_last = model.layer_sizes[-2]
        mlp[:, -(n_last + 1):] = 0.0
        model.set_parameters(mlp=mlp)
        fit_reference_energies(model, data)
        x0 = vector.get()
    objective = _Objective(vector, data, weights, history)
    state = {"iteration": 0, "best": None, "best_val": np.inf, "val_hist": list(val_hist_init)}
    replay = len(val_hist_init)

    def validate(x):
        """Validation loss at x (replayed when resuming); keeps the best parameters."""
        it = state["iteration"]
        if it <= replay:
            val = state["val_hist"][it - 1]
        else:
            vector.set(x)
            val = (loss_and_gradient(model, vdata, replace(weights, l2=0.0), False)[0]
                   if vdata is not None else objective.f_hist[-1])
            state["val_hist"].append(val)
        if val <= state["best_val"]:
            vector.set(x)
            state["best_val"] = val
            state["best"] = {n: v.copy() for n, v in model.params.items()}

    def callback(x):
        state["iteration"] += 1
        it = state["iteration"]
        validate(x)
        if it > replay and log is not None and (it % log_every == 0 or it == 1):
            vector.set(x)
            e, f, _ = rmse_report(model, data)
            line = (f"iter {it:5d}  loss {objective.f_hist[-1]:.6e}  train E {e:7.3f} meV/atom"
                    f"  F {f:.4f} eV/A")
            if vdata is not None:
                ve, vf, _ = rmse_report(model, vdata)
                line += f"  valid E {ve:7.3f}  F {vf:.4f}"
            log(line + f"  {time.perf_counter() - t_start:7.1f} s")
        if checkpoint and it > replay and it % checkpoint_every == 0:
            _save_checkpoint(checkpoint, model, state["best"], x0, objective, state["val_hist"],
                             it, settings)
        if max_time is not None and time.perf_counter() - t_start > max_time:
            if log is not None:
                log(f"stopping at iteration {it}: time limit of {max_time:.0f} s reached")
            raise StopIteration

    if replay and log is not None:
        log(f"resuming from {resume}: replaying {replay} recorded iterations")
    model.interrupted = False
    try:
        if max_iter > 0:       # L-BFGS-B would still take a step with maxiter=0
            minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=vector.bounds,
                     callback=callback,
                     options={"maxiter": int(max_iter), "maxfun": 4 * int(max_iter) + 20,
                              "ftol": 1e-14, "gtol": 1e-12, "maxcor": 20})
    except KeyboardInterrupt:
        model.interrupted = True
        if log is not None:
            log(f"interrupted at iteration {state['iteration']}: keeping the best parameters so far")
    if state["best"] is None:
        state["best"] = {n: v.copy() for n, v in model.params.items()}
    model.set_parameters(**{n: state["best"][n] for n in ("centres", "widths", "sigma", "mlp", "e0")})
    if checkpoint:
        _save_checkpoint(checkpoint, model, state["best"], x0, objective, state["val_hist"],
                         state["iteration"], settings)
    if solve_output and not model.interrupted:
        _final_output_solve(model, data, vdata, output_weights, log)
    model.fit_info = {"iterations": state["iteration"], "best_valid_loss": state["best_val"],
                      "output_weights": settings["output_weights"],
                      "wall_time_s": time.perf_counter() - t_start}
    if weights.stress_offset and data.has_stress.any():
        offset = stress_residuals(predict(model, data)[2], data, True)[1]
        model.fit_info["stress_offset_GPa"] = offset
        if log is not None:
            log(f"fitted isotropic stress offset of the reference data: {offset:+.3f} GPa")
    return model
