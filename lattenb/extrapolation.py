"""Extrapolation grades: how far an atom's environment lies outside the training data.

The D-optimality / MaxVol grade of MTP and ACE (Podryabinkin & Shapeev 2017; Lysogorskiy et al.
2023) on a feature vector phi (m numbers) per atom, of one of two kinds (`FEATURES`, the name saved
with the model as `grade_features`):

    "descriptors" (default)  phi = (x, 1), the standardised descriptors (m = T + 1): what MTP's and
                             ACE's grades use, since their energies are linear in their basis;
    "last_hidden"            phi = (h, 1), the last hidden layer's outputs, which lattenb's atomic
                             energy is linear in (m = layer_sizes[-2] + 1).

The descriptors are the default because the hidden layers saturate: with the Gaussian activation a
far-out input drives every unit to 0, back inside the training features. On a Cu model fitted to
the bundled subset, fcc compressed to 0.8 x a0 grades 0.92 on "last_hidden" but 20.5 on
"descriptors"; bcc 0.61 against 1.63; a dimer 1.36 against 6.0 (notes of issue 18).

At the end of a fit, MaxVol picks for every species the m training environments whose feature
matrix A (m, m) has the largest |det| (the "active set"). An atom's coefficients c = phi A^-1
express it in that basis, and its grade is gamma = max_k |c_k|:

    gamma <= 1   interpolation: every training environment grades <= 1 (MaxVol's guarantee,
                 up to its tolerance MAXVOL_TOL), the members of the active set exactly 1;
    gamma > 1    extrapolation; MTP users flag 2 and stop at around 10.

A structure's grade is the maximum over its atoms. When the training features of a species do not
span all m directions (a descriptor term constant over the training data, a hidden unit that never
fires), the active set lives in the spanned subspace (`basis` V, m x r) and grades use phi V; a
feature's part outside that subspace, |phi - phi V V^T|, divided by `null_scale` (RANK_TOL times
the largest singular value of the training features, over sqrt(n): far below any training
variation) is graded too, so leaving an unseen direction is never silently "inside". Species without
training atoms grade inf.

    active = build_active_set(model, frames)     # or done by `lattenb.fit` at the end
    model.set_active_set(active)                 # saved with the model
    model.compute(..., grades=True)["extrapolation_grades"]

`select_structures` picks the structures of a pool that enlarge the active set most (active
learning, `lattenb select`).
"""
from dataclasses import dataclass

import numpy as np

from .mlp import mlp_reference

#: MaxVol stops when no training row has a coefficient above this (its guarantee on training data)
MAXVOL_TOL = 1.0 + 1e-9
#: singular values below this fraction of the largest count as directions the data do not span
RANK_TOL = 1e-9


@dataclass
class ActiveSet:
    """Per species s: basis (S, m, m) whose first rank[s] columns span the training features,
    active (S, m, m) the active set's features in that basis (rank[s] x rank[s] in its top-left
    corner, the identity elsewhere), rank (S,) int, null_scale (S,) the scale of a feature's part
    outside the basis (inf when the basis spans everything). Saved with the model as four
    arrays."""
    basis: np.ndarray
    active: np.ndarray
    rank: np.ndarray
    null_scale: np.ndarray

    ARRAYS = ("active_set_basis", "active_set", "active_set_rank", "active_set_null_scale")

    def arrays(self):
        return dict(zip(self.ARRAYS, (self.basis, self.active, self.rank, self.null_scale)))

    @classmethod
    def from_arrays(cls, arrays, n_species, n_features, path="model file"):
        """The active set a file holds, or None when it has none; ValueError for bad shapes."""
        present = [n for n in cls.ARRAYS if n in arrays]
        if not present:
            return None
        if present == list(cls.ARRAYS[:3]):    # written before null_scale: full rank assumed
            arrays = {**arrays, cls.ARRAYS[3]: np.full(len(arrays[cls.ARRAYS[2]]), np.inf)}
            present = list(cls.ARRAYS)
        if len(present) != len(cls.ARRAYS):
            raise ValueError(f"{path}: incomplete active set (has {present}, needs "
                             f"{list(cls.ARRAYS)})")
        basis, active, rank, null_scale = (np.asarray(arrays[n]) for n in cls.ARRAYS)
        m = n_features
        if (basis.shape != (n_species, m, m) or active.shape != (n_species, m, m)
                or rank.shape != (n_species,) or null_scale.shape != (n_species,)):
            raise ValueError(f"{path}: active set arrays have shapes {basis.shape}, "
                             f"{active.shape}, {rank.shape}, {null_scale.shape}; expected "
                             f"({n_species}, {m}, {m}) twice and ({n_species},) twice")
        return cls(basis.astype(np.float64), active.astype(np.float64), rank.astype(np.int64),
                   null_scale.astype(np.float64))

    def grades(self, phi, species):
        """Per-atom grades (N,) of features phi (N, m) with species indices (N,)."""
        if getattr(self, "_matrices", None) is None:     # c = phi M: basis x active^-1
            self._matrices = np.einsum("sij,sjk->sik", self.basis, np.linalg.inv(self.active))
        out = np.empty(len(phi))
        for s in np.unique(species):
            rows = species == s
            if not self.rank[s]:
                out[rows] = np.inf
                continue
            x = phi[rows]
            g = np.abs(x @ self._matrices[s]).max(axis=1)
            if np.isfinite(self.null_scale[s]):
                v = self.basis[s]
                outside = np.linalg.norm(x - (x @ v) @ v.T, axis=1) / self.null_scale[s]
                g = np.maximum(g, outside)
            out[rows] = g
        return out


def _standardised(model, G, species):
    p = model.params
    return (G - p["g_mean"][species]) / p["g_std"][species]


def _with_bias(values):
    return np.hstack([values, np.ones((len(values), 1))])


def descriptor_features(model, G, species):
    """phi = (x, 1): the standardised descriptors x (N, T) and a one."""
    return _with_bias(_standardised(model, G, species))


def last_hidden_features(model, G, species):
    """phi = (h, 1): the last hidden layer's outputs h (N, layer_sizes[-2]) and a one (the output
    layer's bias), the features the atomic energy is linear in."""
    x = _standardised(model, G, species)
    out = np.empty((len(G), model.layer_sizes[-2]))
    for s in np.unique(species):
        rows = species == s
        out[rows] = mlp_reference(model.params["mlp"][s], model.layer_sizes, model.activation,
                                  x[rows], hidden_only=True)
    return _with_bias(out)


#: feature kinds by name (saved with the model as `grade_features`): function (model, raw
#: descriptors G (N, T), species (N,)) -> phi (N, m), and m as a function of the model
FEATURES = {"descriptors": (descriptor_features, lambda model: model.layout.n_terms + 1),
            "last_hidden": (last_hidden_features, lambda model: int(model.layer_sizes[-2]) + 1)}
DEFAULT_FEATURES = "descriptors"


def check_features(name):
    if name not in FEATURES:
        raise ValueError(f"unknown grade features {name!r}; choose one of {sorted(FEATURES)}")
    return name


def n_features(model):
    """m, the length of an atom's feature vector for the model's `grade_features`."""
    return FEATURES[model.grade_features][1](model)


def features_from_descriptors(model, G, species):
    """phi (N, m) from raw descriptors G (N, T) and species indices (N,), of the model's kind
    (`grade_features`)."""
    return FEATURES[model.grade_features][0](model, G, species)


def maxvol(psi, tol=MAXVOL_TOL, max_swaps=None):
    """Rows (r,) of psi (n, r), full column rank, whose square submatrix has a locally maximal
    |det|: every row of psi has coefficients of magnitude <= tol in their basis (Goreinov et al.
    2010). Starts from the rows of a pivoted LU (scipy), then swaps in the row with the largest
    coefficient, updating the coefficients by a rank-one formula."""
    from scipy.linalg import lu
    n, r = psi.shape
    if n < r:
        raise ValueError(f"maxvol needs at least {r} rows, got {n}")
    perm = lu(psi, p_indices=True)[0]         # row order of a partially pivoted LU
    rows = np.array(perm[:r])
    coeff = psi @ np.linalg.inv(psi[rows])
    max_swaps = max_swaps or 100 * r
    for swap in range(max_swaps):
        i, j = np.unravel_index(np.argmax(np.abs(coeff)), coeff.shape)
        if abs(coeff[i, j]) <= tol:
            break
        # row i replaces rows[j]: c <- c - c[:, j] (c[i] - e_j) / c[i, j]
        u = coeff[:, j].copy()
        v = coeff[i].copy()
        v[j] -= 1.0
        coeff -= np.outer(u / coeff[i, j], v)
        rows[j] = i
        if swap % (4 * r) == 4 * r - 1:       # refresh against round-off
            coeff = psi @ np.linalg.inv(psi[rows])
    return rows


def _species_active_set(phi, m):
    """(basis (m, m), active (m, m), rank, null_scale) for one species' training features phi
    (n, m)."""
    basis, active = np.zeros((m, m)), np.eye(m)
    if len(phi) == 0:
        return basis, active, 0, np.inf
    _, sv, vt = np.linalg.svd(phi, full_matrices=False)
    rank = int(np.sum(sv > RANK_TOL * sv[0])) if sv[0] > 0 else 0
    if rank == 0:
        return basis, active, 0, np.inf
    v = vt[:rank].T                            # (m, rank), orthonormal columns
    psi = phi @ v
    rows = maxvol(psi)
    basis[:, :rank] = v
    active[:rank, :rank] = psi[rows]
    null_scale = np.inf if rank == m else RANK_TOL * sv[0] / np.sqrt(len(phi))
    return basis, active, rank, null_scale


def active_set_from_features(phi, species, n_species):
    """The `ActiveSet` of training features phi (N, m) with species indices (N,)."""
    m = phi.shape[1]
    parts = [_species_active_set(phi[species == s], m) for s in range(n_species)]
    return ActiveSet(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]),
                     np.array([p[2] for p in parts], dtype=np.int64),
                     np.array([p[3] for p in parts], dtype=np.float64))


def dataset_features(model, data):
    """phi (N, m) of every atom of a `Dataset`."""
    from .predict import dataset_descriptors
    return features_from_descriptors(model, dataset_descriptors(model, data), data.species)


def build_active_set(model, frames):
    """The `ActiveSet` of `model` on training structures (ASE Atoms or a `Dataset`)."""
    from .dataset import as_dataset
    data = as_dataset(frames, model)
    return active_set_from_features(dataset_features(model, data), data.species, model.n_species)


def dataset_grades(model, data):
    """(per-atom grades (N,), per-structure grades (F,)) of a `Dataset`."""
    per_atom = model.require_active_set().grades(dataset_features(model, data), data.species)
    return per_atom, structure_grades(per_atom, data.frame_of_atom, data.n_frames)


def structure_grades(per_atom, frame_of_atom, n_frames):
    """The maximum grade of each structure (F,) from per-atom grades (N,)."""
    out = np.zeros(n_frames)
    np.maximum.at(out, frame_of_atom, per_atom)
    return out


def select_structures(model, pool, n, log=None):
    """Greedy D-optimal choice of n structures of `pool` (a `Dataset`): repeatedly take the
    structure with the largest grade against the current active set, then let MaxVol take its
    atoms into the active set (so similar structures stop grading high). Returns (indices (k,),
    grades at the time each was taken (k,), the grades of every pool structure before any was
    taken (F,), the grown `ActiveSet`); k < n when no structure grades above 1 any more (nothing
    new left to learn)."""
    active = model.require_active_set()
    phi = dataset_features(model, pool)
    species = pool.species
    basis, act, rank = active.basis.copy(), active.active.copy(), active.rank.copy()
    null_scale = active.null_scale
    chosen, taken_grades, first = [], [], None
    for _ in range(n):
        g = structure_grades(ActiveSet(basis, act, rank, null_scale).grades(phi, species),
                             pool.frame_of_atom, pool.n_frames)
        if first is None:
            first = g.copy()
        g[chosen] = -np.inf
        best = int(np.argmax(g))
        if g[best] <= MAXVOL_TOL:          # the active set's own members grade 1 + round-off
            if log is not None:
                log(f"no structure grades above 1 after {len(chosen)}: stopping")
            break
        chosen.append(best)
        taken_grades.append(float(g[best]))
        atoms = pool.frame_of_atom == best
        for s in np.unique(species[atoms]):
            r = rank[s]
            if r == 0:
                continue
            candidates = np.vstack([act[s, :r, :r], phi[atoms & (species == s)] @ basis[s, :, :r]])
            act[s, :r, :r] = candidates[maxvol(candidates)]
        if log is not None:
            log(f"picked structure {best} (grade {g[best]:.3g}), {len(chosen)}/{n}")
    if first is None:
        first = np.zeros(pool.n_frames)
    return (np.array(chosen, dtype=np.int64), np.array(taken_grades), first,
            ActiveSet(basis, act, rank, null_scale))
