"""The steps of a fit, each on its own: descriptor standardisation, reference energies by least
squares on composition, the packed parameter vector and L-BFGS-B objective (with exact replay for
resumed runs), and the exact least-squares solve of the output layer."""
import hashlib
from dataclasses import replace

import numpy as np

from .conventions import EV_A3_TO_GPA
from .distributed import tsqr_lstsq
from .loss import LossWeights, loss_and_gradient
from .predict import dataset_descriptors, predict

#: energy weight of the final output-layer solve relative to that of the L-BFGS fit: the
#: validation error of the mlearn Ni and Cu fits is lowest between 30 and 100 (issue 3 notes)
OUTPUT_ENERGY_FACTOR = 100.0
TRAINING_CHUNKS = 64     # fixed, so gradients are bit-identical whatever the thread count


def standardise(model, data):
    """Set the descriptor standardisation (g_mean, g_std per species) from a dataset (over every
    rank's shard: two reductions, the sums and then the squared deviations from the mean)."""
    G = dataset_descriptors(model, data)
    S, T = model.n_species, G.shape[1]
    comm = data.comm
    by_species = [G[data.species == s] for s in range(S)]
    sums = comm.sum(np.array([np.append(rows.sum(axis=0), len(rows)) for rows in by_species]))
    count = sums[:, T]
    centre = sums[:, :T] / np.maximum(count, 1.0)[:, None]
    squares = comm.sum(np.array([np.sum((rows - c) ** 2, axis=0)
                                 for rows, c in zip(by_species, centre)]))
    mean = np.array(model.params["g_mean"])
    std = np.array(model.params["g_std"])
    for s in range(S):
        if count[s]:
            mean[s] = centre[s]
            sd = np.sqrt(squares[s] / count[s])
            std[s] = np.where(sd > 1e-8 * (1 + np.abs(mean[s])), sd, 1.0)
    model.set_parameters(g_mean=mean, g_std=std)


def zero_output_layer(model):
    """Set the output layer (weights and bias) of every species to zero: the model's energies
    are then e0 alone, and `fit_reference_energies` the exact composition fit."""
    mlp = model.params["mlp"].copy()
    n_last = model.layer_sizes[-2]
    mlp[:, -(n_last + 1):] = 0.0
    model.set_parameters(mlp=mlp)


def fit_reference_energies(model, data, fixed_e0=False):
    """e0 by linear least squares of (E_ref - current energy) on composition; with `fixed_e0`
    (isolated-atom energies given) e0 stays and the per-species constants go into the output
    biases instead."""
    fixed = model.params["e0"].copy() if fixed_e0 else np.zeros(model.n_species)
    mlp = model.params["mlp"].copy()
    if fixed_e0:
        mlp[:, -1] = 0.0
        model.set_parameters(mlp=mlp)
    else:
        model.set_parameters(e0=fixed)
    E, _, _, _ = predict(model, data)
    m = data.has_energy
    # every rank's structures, in file order (shards are contiguous): the one-process problem
    comp = data.comm.concat(data.composition(model.n_species)[m])
    target = data.comm.concat(data.energies[m] - E[m])
    shift, *_ = np.linalg.lstsq(comp, target, rcond=None)
    present = comp.sum(axis=0) > 0
    if fixed_e0:
        mlp[:, -1] = np.where(present, shift, 0.0)
        model.set_parameters(mlp=mlp)
    else:
        model.set_parameters(e0=np.where(present, shift, 0.0))


class ParameterVector:
    """Packs the trainable parameters into one vector with box bounds for L-BFGS-B.

    Order: MLP, e0, the radial family's free variables (`RadialFamily.free_variables`: for the
    polynomial family (w, u) with c = w + u (r_cut - 2 w), w in [MIN_WIDTH, r_cut / 2], u in
    [0, 1], which keeps 0 <= c - w and c + w <= r_cut), the species mode's arrays (sigma, or
    the embedding factors; train_sigma=False freezes them).
    """

    def __init__(self, model, train_radial=True, train_sigma=True, train_e0=True):
        self.model = model
        self.rc = model.cutoff
        self.family = model.radial_family
        radial = self.family.free_variables(model.params, self.rc)
        self.radial_names = tuple(radial)
        self.shapes = ([("mlp", model.params["mlp"].shape), ("e0", model.params["e0"].shape)]
                       + [(name, np.shape(value)) for name, value in radial.items()]
                       + [(name, model.params[name].shape) for name in model.species_parameter_names])
        self.species_names = model.species_parameter_names
        self.sizes = [int(np.prod(s)) for _, s in self.shapes]
        bounds = []
        for (name, _), n in zip(self.shapes, self.sizes):
            bound = (self.family.free_bounds(name, self.rc) if name in self.radial_names
                     else (None, None))
            bounds += [bound] * n
        self.bounds = bounds
        self.frozen = np.zeros(sum(self.sizes), bool)
        start = 0
        for (name, _), n in zip(self.shapes, self.sizes):
            if ((name in self.radial_names and not train_radial) or (name in self.species_names and not train_sigma)
                    or (name == "e0" and not train_e0)):
                self.frozen[start:start + n] = True
            start += n

    def _values(self):
        p = self.model.params
        return {"mlp": p["mlp"], "e0": p["e0"], **{n: p[n] for n in self.species_names},
                **self.family.free_variables(p, self.rc)}

    def get(self):
        values = self._values()
        return np.concatenate([np.ravel(values[name]) for name, _ in self.shapes])

    def _split(self, x):
        out, start = {}, 0
        for (name, shape), n in zip(self.shapes, self.sizes):
            out[name] = x[start:start + n].reshape(shape)
            start += n
        return out

    def set(self, x):
        v = self._split(np.asarray(x, dtype=np.float64))
        radial = self.family.from_free({n: v[n] for n in self.radial_names}, self.rc)
        self.model.set_parameters(mlp=v["mlp"], e0=v["e0"], **{n: v[n] for n in self.species_names},
                                  **radial)

    def gradient(self, grad):
        """Chain rule from dL/d(model params) to dL/dx (frozen entries zeroed)."""
        v = self._split(self.get())
        g = {"mlp": grad["mlp"], "e0": grad["e0"], **{n: grad[n] for n in self.species_names},
             **self.family.free_gradient({n: v[n] for n in self.radial_names}, grad, self.rc)}
        out = np.concatenate([np.ravel(g[name]) for name, _ in self.shapes])
        out[self.frozen] = 0.0
        return out


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
        x = self.data.comm.same(x)      # rank 0's parameters on every rank (`lattenb.distributed`)
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


def solve_output_layer(model, data, weights=LossWeights(), n_chunks=None, fixed_e0=False):
    """Set the output layer weights and e0 of every species to their exact minimiser of the
    loss with everything else fixed (with `fixed_e0`, the isolated-atom e0 stays and the
    per-species constant goes into the output bias).

    The energy is linear in the output layer weights W (S, K) and in e0 (S,), and forces and
    stress are linear in W, so the loss is quadratic in them: one energy/force pass per hidden
    unit of the last layer gives one column of a weighted linear least-squares problem (with
    the isotropic stress offset as one more unknown when `weights.stress_offset`, and the L2
    penalty on W as ridge rows). The output bias is left as it is: it duplicates e0.
    Gradient descent resolves these directions slowly when the energy term is a small part of
    the loss, which is why `fit` solves them exactly. Memory: one (rows, S K + S + 1) matrix,
    rows = frames with energy + 3 x atoms with forces + 6 x frames with stress + S K, per rank
    for its shard of a distributed set (`Dataset.comm`), whose rows are solved together by TSQR
    (`distributed.tsqr_lstsq`)."""
    S, K = model.n_species, int(model.layer_sizes[-2])
    comm = data.comm
    mlp0, e00 = model.params["mlp"].copy(), model.params["e0"].copy()
    n = data.n_atoms_per_frame.astype(np.float64)
    me = data.has_energy
    mf = np.repeat(data.has_forces[data.frame_of_atom], 3) & (weights.forces > 0)
    ms = data.has_stress & (weights.stress > 0)
    comp = data.composition(S)
    n_w = S * K
    # row blocks (energy, forces, stress, ridge) of the one design matrix, filled in place
    # the ridge rows go to rank 0's block only
    sizes = (int(me.sum()), int(mf.sum()), 6 * int(ms.sum()),
             n_w if weights.l2 > 0 and comm.rank == 0 else 0)
    totals = comm.sum(np.array(sizes[:3], dtype=np.float64))
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
                put(s * K + k, *predict(model, data, n_chunks, repulsion=False)[:3])
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
    for rows, scale in ((rE, weights.energy / max(totals[0], 1)),
                        (rF, weights.forces / max(totals[1], 1)),
                        (rS, weights.stress / max(totals[2], 1)), (rL, weights.l2)):
        A[rows] *= np.sqrt(scale)
        y[rows] *= np.sqrt(scale)
    x = tsqr_lstsq(comm, A, y)
    present = comm.sum(comp.sum(axis=0)) > 0   # species absent from the data keep theirs
    mlp = mlp0.copy()
    mlp[present, -(K + 1):-1] = x[:n_w].reshape(S, K)[present]
    if fixed_e0:     # the solved per-species constant x_e0 = output bias shift + e0, e0 kept
        mlp[present, -1] += x[n_w:n_w + S][present] - e00[present]
        model.set_parameters(mlp=mlp)
    else:
        model.set_parameters(mlp=mlp, e0=np.where(present, x[n_w:n_w + S], e00))
