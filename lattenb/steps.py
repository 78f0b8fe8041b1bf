"""The steps of a fit, each on its own: descriptor standardisation, reference energies by least
squares on composition, the packed parameter vector and the scales of its parameter arrays, the
Adam update of the mini-batch phase, the L-BFGS-B objective (with exact replay for resumed runs),
and the exact least-squares solve of the output layer."""
import hashlib
from dataclasses import replace

import numpy as np

from .conventions import EV_A3_TO_GPA
from .distributed import tsqr_factor
from .loss import (LossWeights, adjoint_gradient, loss_and_gradient, mlp_weight_mask,
                   residual_counts)
from .mlp import layer_arrays
from .predict import dataset_descriptors, predict

#: the energy weights, relative to the L-BFGS fit's, that the final solve compares by
#: cross-validation when its own energy weight is not given (`choose_output_layer`). A fixed
#: 100 had been chosen on the validation errors of mlearn Ni and Cu (issue 3 notes); Li and Mo
#: cross-validate best at 10 and 30.
OUTPUT_ENERGY_FACTORS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
OUTPUT_FOLDS = 5         # folds of the training structures that compare them
TRAINING_CHUNKS = 64     # fixed, so gradients are bit-identical whatever the thread count
GROUP_SCALE_PROBES = 16  # reverse passes that estimate the Gauss-Newton diagonal (`group_scales`)


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
    """Packs the trainable parameters into one vector x with box bounds for L-BFGS-B; x is the
    parameters divided entry by entry by `scale` (ones unless a fit sets `group_scales`).

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
        self.box = bounds            # of the parameters themselves; `bounds`: of x
        #: x = parameters / scale entry by entry: what the optimisers see (`group_scales`)
        self.scale = np.ones(sum(self.sizes))
        self.frozen = np.zeros(sum(self.sizes), bool)
        for name, part in self.groups():
            if ((name in self.radial_names and not train_radial) or (name in self.species_names and not train_sigma)
                    or (name == "e0" and not train_e0)):
                self.frozen[part] = True

    def weight_mask(self):
        """(n,) bool, True at the MLP's weights (not its biases), which the L2 penalty and
        weight decay act on."""
        mask = np.zeros(sum(self.sizes), bool)
        mlp = self.model.params["mlp"]          # one row per species, or one shared row
        mask[:mlp.size] = np.broadcast_to(mlp_weight_mask(self.model.layer_sizes), mlp.shape).ravel()
        return mask

    @property
    def bounds(self):
        """Box bounds of x as SciPy takes them, [(lower, upper), ...], None for no bound."""
        return [(None if lo is None else lo / c, None if hi is None else hi / c)
                for (lo, hi), c in zip(self.box, self.scale)]

    def _values(self):
        p = self.model.params
        return {"mlp": p["mlp"], "e0": p["e0"], **{n: p[n] for n in self.species_names},
                **self.family.free_variables(p, self.rc)}

    def _unscaled(self):
        values = self._values()
        return np.concatenate([np.ravel(values[name]) for name, _ in self.shapes])

    def get(self):
        return self._unscaled() / self.scale

    def _split(self, x):
        return {name: x[part].reshape(shape)
                for (name, part), (_, shape) in zip(self.groups(), self.shapes)}

    def set(self, x):
        v = self._split(np.asarray(x, dtype=np.float64) * self.scale)
        radial = self.family.from_free({n: v[n] for n in self.radial_names}, self.rc)
        self.model.set_parameters(mlp=v["mlp"], e0=v["e0"], **{n: v[n] for n in self.species_names},
                                  **radial)

    def gradient(self, grad, scaled=True):
        """Chain rule from dL/d(model params) to dL/dx (frozen entries zeroed); scaled=False:
        to the gradient with respect to the unscaled packed parameters x * scale."""
        v = self._split(self._unscaled())
        g = {"mlp": grad["mlp"], "e0": grad["e0"], **{n: grad[n] for n in self.species_names},
             **self.family.free_gradient({n: v[n] for n in self.radial_names}, grad, self.rc)}
        out = np.concatenate([np.ravel(g[name]) for name, _ in self.shapes])
        if scaled:
            out *= self.scale
        out[self.frozen] = 0.0
        return out

    def groups(self):
        """(name, slice of x) of every parameter array (`shapes`), in order."""
        bounds = np.cumsum([0] + self.sizes)
        return [(name, slice(int(lo), int(hi)))
                for (name, _), lo, hi in zip(self.shapes, bounds[:-1], bounds[1:])]

    def layer_groups(self):
        """`groups` with the MLP split into the weights and the biases of each layer of each
        species' row ("mlp[s].W1", "mlp[s].b1", ...), the groups `group_scales` may take."""
        rows, per_row = self.model.params["mlp"].shape
        # the layout of one row, as `mlp.layer_arrays` reads it, on the row's entry numbers
        layers = layer_arrays(np.arange(per_row), self.model.layer_sizes)
        out = []
        for name, part in self.groups():
            if name != "mlp":
                out.append((name, part))
                continue
            for row in range(rows):
                base = part.start + row * per_row
                for layer, (weights, biases) in enumerate(layers, 1):
                    for kind, entries in (("W", weights), ("b", biases)):
                        out.append((f"mlp[{row}].{kind}{layer}",
                                    slice(base + int(entries.min()), base + int(entries.max()) + 1)))
        return out


def group_scales(vector, data, weights, n_probes=GROUP_SCALE_PROBES, seed=0, groups=None):
    """(n,) one scale per group of entries of `vector` (`groups`: [(name, slice), ...], by
    default its parameter arrays, `ParameterVector.groups`; `ParameterVector.layer_groups` splits
    the MLP by layer), repeated over the group's entries: the inverse square root of the median
    over the group's trained entries of the
    Gauss-Newton diagonal 2 diag(J^T W J) + 2 l2 (J: the residuals' Jacobian, W: the loss
    weights over their counts, `loss_and_gradient`), normalised to a geometric mean of 1 over
    the trained entries;
    at the model's current parameters, which L-BFGS-B then works on divided by these scales
    (`_LbfgsRun`). Why: L-BFGS-B starts every update from one multiple of the identity, while
    the curvature of the radial windows is 30-280 times the MLP's (AcAc, after 200 iterations).

    The diagonal is estimated from `n_probes` reverse passes, each the gradient of v . W^1/2 r
    for random signs v on every residual (energies, force components, stress components): its
    square has the diagonal as expectation. The signs are drawn over every rank's structures
    (numbered as in file order), so a distributed set gets the one-process estimate."""
    comm = data.comm
    ne, nf, ns = residual_counts(data)
    n_atoms = np.array(comm.allgather(len(data.positions)))
    n_frames = np.array(comm.allgather(data.n_frames))
    atoms = slice(int(n_atoms[:comm.rank].sum()), int(n_atoms[:comm.rank + 1].sum()))
    frames = slice(int(n_frames[:comm.rank].sum()), int(n_frames[:comm.rank + 1].sum()))
    atom_has_f = data.has_forces[data.frame_of_atom][:, None]
    diagonal = np.zeros(sum(vector.sizes))
    for probe in range(n_probes):
        rng = np.random.default_rng([seed, probe])
        v_f = 2.0 * rng.integers(0, 2, size=(n_atoms.sum(), 3)) - 1.0
        v_e = 2.0 * rng.integers(0, 2, size=n_frames.sum()) - 1.0
        v_s = 2.0 * rng.integers(0, 2, size=(n_frames.sum(), 6)) - 1.0
        # the adjoints of v . W^1/2 r: residuals E / n (eV/atom), F (eV/Å), S (GPa)
        e_bar = (np.sqrt(weights.energy / ne) * np.where(data.has_energy, v_e[frames], 0.0)
                 / data.n_atoms_per_frame)
        delta = np.sqrt(weights.forces / nf) * v_f[atoms] * atom_has_f
        s_bar = (np.sqrt(weights.stress / ns) * EV_A3_TO_GPA
                 * np.where(data.has_stress[:, None], v_s[frames], 0.0))
        # fixed chunks: the scales, and so a resumed run, do not depend on the thread count
        grad = adjoint_gradient(vector.model, data, e_bar, delta, s_bar, TRAINING_CHUNKS)
        diagonal += vector.gradient(grad, scaled=False) ** 2
    diagonal = 2.0 * diagonal / n_probes + 2.0 * weights.l2 * vector.weight_mask()
    trained = ~vector.frozen
    scale = np.ones_like(diagonal)
    for _, part in (vector.groups() if groups is None else groups):
        values = diagonal[part][trained[part]]
        if values.size and np.median(values) > 0:
            scale[part] = 1.0 / np.sqrt(np.median(values))
    if trained.any():
        scale /= np.exp(np.mean(np.log(scale[trained])))
    return scale


def bound_arrays(bounds):
    """(lower (n,), upper (n,)) of box bounds given as SciPy's [(lower, upper), ...] with None
    for no bound (`ParameterVector.bounds`): -inf and +inf there."""
    lower = np.array([-np.inf if lo is None else lo for lo, _ in bounds], dtype=np.float64)
    upper = np.array([np.inf if hi is None else hi for _, hi in bounds], dtype=np.float64)
    return lower, upper


class Adam:
    """Adam (Kingma and Ba, arXiv:1412.6980) on a packed parameter vector, each step projected
    onto the box bounds of `ParameterVector` (bounds: a list of (lower, upper), None for no
    bound). `step(g, lr)` moves `x` by -lr * m_hat / (sqrt(v_hat) + eps) from the gradient g
    and returns it. With `weight_decay` > 0 the entries where `decay_mask` is True also shrink by
    the factor (1 - lr * weight_decay) each step: decoupled weight decay (AdamW, Loshchilov and
    Hutter, arXiv:1711.05101). An L2 term in g would instead be divided by the same running RMS
    as the loss gradient, so that weights with large loss gradients are barely penalised.
    `average` keeps the exponential moving average of the iterates with that decay per step
    (x_average; inside the bounds, which are a box), as MACE's `--ema` option does: it removes
    most of the steps' noise. Step t uses the decay min(average, (1 + t) / (10 + t)), so that
    the first steps do not hold the average near the start (torch-ema's warm-up)."""

    def __init__(self, x, bounds, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 decay_mask=None, average=0.99):
        self.x = np.array(x, dtype=np.float64)
        self.lower, self.upper = bound_arrays(bounds)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        # per entry: weight_decay where decay_mask is True, 0 elsewhere
        self.decay_rate = float(weight_decay) * (np.ones(self.x.size) if decay_mask is None
                                                 else np.asarray(decay_mask, np.float64))
        self.average = average
        self.x_average = self.x.copy()
        self.m = np.zeros_like(self.x)
        self.v = np.zeros_like(self.x)
        self.t = 0

    def step(self, g, lr):
        self.t += 1
        self.m *= self.beta1
        self.m += (1.0 - self.beta1) * g
        self.v *= self.beta2
        self.v += (1.0 - self.beta2) * g * g
        m_hat = self.m / (1.0 - self.beta1 ** self.t)
        v_hat = self.v / (1.0 - self.beta2 ** self.t)
        x = self.x - lr * (m_hat / (np.sqrt(v_hat) + self.eps) + self.decay_rate * self.x)
        self.x = np.clip(x, self.lower, self.upper)
        decay = min(self.average, (1.0 + self.t) / (10.0 + self.t))
        self.x_average *= decay
        self.x_average += (1.0 - decay) * self.x
        return self.x


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
    """(LossWeights, energies) of the final output-layer solve: `values` (energy, forces,
    stress) with the L2 penalty and stress offset of `weights`, and energies None; or, for an
    energy of None (and for `values` None, which also takes the forces and stress weights of
    `weights`), the candidate energy weights `choose_output_layer` compares,
    `weights.energy` x OUTPUT_ENERGY_FACTORS."""
    if values is None:
        values = (None, weights.forces, weights.stress)
    values = tuple(values)
    energies = None
    if len(values) == 3 and values[0] is None:
        energies = [f * weights.energy for f in OUTPUT_ENERGY_FACTORS]
        values = (weights.energy,) + values[1:]
    values = tuple(float(v) for v in values)
    if len(values) != 3 or not all(np.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"output_weights must be three finite non-negative numbers (energy, "
                         f"forces, stress; the energy may be None), got {values}")
    return replace(weights, energy=values[0], forces=values[1], stress=values[2]), energies


class OutputLayerProblem:
    """The output layer's linear least-squares problem on one dataset, before any loss weight.

    The energy is linear in the output layer weights W (S, K) and in e0 (S,), and forces and
    stress are linear in W: with everything else fixed, the model's energies per atom (eV/atom),
    force components (eV/Å) and stress components (GPa) are `A x` plus the targets' residual,
    for x = (W.ravel(), e0, p), p the isotropic stress offset (GPa). One energy/force pass per
    hidden unit of the last layer gives one column. `rows[name]` holds (A, y) of the "energy",
    "forces" and "stress" rows of this rank's shard; `counts` the rows over every rank.

    The rows are grouped into `n_folds` folds of structures (structure index mod n_folds,
    numbered over every rank), each reduced once to one TSQR factor per block. Stacking every
    fold's factors answers any loss weights (`solve`); stacking all but one, the same problem
    without that fold (`cross_validated_errors`), which is how `choose_output_layer` compares
    energy weights. Memory: (rows, S K + S + 1) per block, rows = frames with energy + 3 x
    atoms with forces + 6 x frames with stress.

    huber: the Huber width of the force penalty (`LossWeights.huber`, eV/Å; 0: squared). The
    solve stays linear least squares, with each force row weighted by min(1, huber / |r|) for
    its residual r at the model's current output layer: one step of iteratively reweighted
    least squares from the point L-BFGS reached on the same penalty."""

    def __init__(self, model, data, n_chunks=None, n_folds=1, huber=0.0):
        S, K = model.n_species, int(model.layer_sizes[-2])
        self.S, self.K, self.comm, self.n_folds = S, K, data.comm, n_folds
        n_w = S * K
        mlp0, e00 = model.params["mlp"].copy(), model.params["e0"].copy()
        n = data.n_atoms_per_frame.astype(np.float64)
        me = data.has_energy
        mf = np.repeat(data.has_forces[data.frame_of_atom], 3)
        ms = data.has_stress
        # the structure of each row, numbered over every rank (shards are contiguous); the rows
        # are stored fold by fold, so that a fold is a slice of each block
        first = sum(self.comm.allgather(len(n))[:self.comm.rank])
        fold = {"energy": (first + np.flatnonzero(me)) % n_folds,
                "forces": (first + np.repeat(data.frame_of_atom, 3)[mf]) % n_folds,
                "stress": (first + np.repeat(np.flatnonzero(ms), 6)) % n_folds}
        order = {name: np.argsort(f, kind="stable") for name, f in fold.items()}
        self.folds = {name: np.searchsorted(f[order[name]], np.arange(n_folds + 1))
                      for name, f in fold.items()}      # fold k: rows bounds[k]:bounds[k + 1]

        def E_of(E):          # per frame (F,) -> energy rows, eV/atom
            return (E[me] / n[me])[order["energy"]]

        def F_of(F):          # per atom (N, 3) -> force rows, eV/Å
            return F.ravel()[mf][order["forces"]]

        def S_of(St):         # per frame (F, 6) eV/Å^3 -> stress rows, GPa
            return (St[ms].ravel() * EV_A3_TO_GPA)[order["stress"]]

        C = n_w + S + 1
        A_E, A_F, A_S = (np.zeros((len(f), C)) for f in fold.values())
        try:
            for s in range(S):
                for k in range(K):
                    mlp = mlp0.copy()
                    mlp[:, -(K + 1):] = 0.0
                    mlp[s, -(K + 1) + k] = 1.0
                    model.set_parameters(mlp=mlp, e0=np.zeros(S))
                    E, F, St = predict(model, data, n_chunks, repulsion=False)[:3]
                    c = s * K + k
                    A_E[:, c], A_F[:, c], A_S[:, c] = E_of(E), F_of(F), S_of(St)
            # what does not depend on W or e0 (the output biases) goes to the right-hand side
            mlp = mlp0.copy()
            mlp[:, -(K + 1):-1] = 0.0
            model.set_parameters(mlp=mlp, e0=np.zeros(S))
            E_b, F_b, S_b, _ = predict(model, data, n_chunks)
        finally:
            model.set_parameters(mlp=mlp0, e0=e00)
        A_E[:, n_w:n_w + S] = (data.composition(S)[me] / n[me, None])[order["energy"]]
        A_S[:, -1] = np.tile([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], int(ms.sum()))[order["stress"]]
        self.rows = {"energy": (A_E, E_of(data.energies - E_b)),
                     "forces": (A_F, F_of(data.forces - F_b)),
                     "stress": (A_S, S_of(data.stresses - S_b))}
        self.row_scale = {name: None for name in self.rows}   # sqrt of each row's weight
        if huber:
            residual = A_F[:, :n_w] @ mlp0[:, -(K + 1):-1].ravel() - self.rows["forces"][1]
            self.row_scale["forces"] = np.sqrt(np.minimum(
                1.0, huber / np.maximum(np.abs(residual), 1e-300)))
        # rows per fold over every rank, and in all
        self.fold_counts = dict(zip(self.rows, self.comm.sum(
            np.array([np.diff(self.folds[name]) for name in self.rows], dtype=np.float64))))
        self.counts = {name: c.sum() for name, c in self.fold_counts.items()}
        self.present = self.comm.sum(data.composition(S).sum(axis=0)) > 0
        self._factors = None

    def _fold(self, name, k):
        """(A, y) of fold k of a block: views, no copy."""
        A, y = self.rows[name]
        lo, hi = self.folds[name][k], self.folds[name][k + 1]
        return A[lo:hi], y[lo:hi]

    def _scaled(self, name, k):
        """[A y] of fold k of a block, each row times its `row_scale` (a new array)."""
        A, y = self._fold(name, k)
        Ay = np.hstack([A, y[:, None]])
        scale = self.row_scale[name]
        if scale is not None:
            lo, hi = self.folds[name][k], self.folds[name][k + 1]
            Ay *= scale[lo:hi, None]
        return Ay

    def _fold_factors(self):
        """Per fold, {block: TSQR factor of [A y]} (on rank 0; None elsewhere), computed once."""
        if self._factors is None:
            self._factors = [{name: tsqr_factor(self.comm, self._scaled(name, k))
                              for name in self.rows} for k in range(self.n_folds)]
        return self._factors

    def solve(self, weights, without=None):
        """x minimising the loss at `weights` (LossWeights; their means and the L2 penalty on W
        as in `loss_and_gradient`), on every rank; over the rows of every fold but `without`."""
        factors = [f for k, f in enumerate(self._fold_factors()) if k != without]
        counts = {name: total - (0 if without is None else self.fold_counts[name][without])
                  for name, total in self.counts.items()}
        x = None
        if self.comm.rank == 0:
            n_w, C = self.S * self.K, self.S * self.K + self.S + 1
            ridge = np.zeros((n_w, C + 1))
            ridge[:, :n_w] = np.eye(n_w)
            stacked = np.vstack([np.sqrt(getattr(weights, name) / max(counts[name], 1)) * R
                                 for part in factors for name, R in part.items()]
                                + [np.sqrt(weights.l2) * ridge])
            unknowns = np.arange(C) if weights.stress_offset else np.arange(C - 1)
            x = np.zeros(C)
            x[unknowns] = np.linalg.lstsq(stacked[:, unknowns], stacked[:, C], rcond=None)[0]
        return self.comm.bcast(x)

    def cross_validated_errors(self, weights):
        """Energy MAE (meV/atom) and force MAE (eV/Å) of the rows of each fold predicted by the
        solve at `weights` without that fold: the output layer's own generalisation, from the
        training data alone (nan for a block without rows)."""
        sums = np.zeros(4)
        for k in range(self.n_folds):
            x = self.solve(weights, without=k)
            for j, name in enumerate(("energy", "forces")):
                A, y = self._fold(name, k)
                sums[2 * j:2 * j + 2] += np.abs(A @ x - y).sum(), len(y)
        sums = self.comm.sum(sums)
        e, f = (sums[k] / sums[k + 1] if sums[k + 1] else np.nan for k in (0, 2))
        return 1000.0 * e, f

    def set(self, model, x, fixed_e0=False):
        """Write x's output layer and e0 into `model` (species absent from the data keep
        theirs). With `fixed_e0`, the isolated-atom e0 stays and the solved per-species
        constant (output bias shift + e0) goes into the output bias."""
        S, K, n_w, present = self.S, self.K, self.S * self.K, self.present
        mlp, e00 = model.params["mlp"].copy(), model.params["e0"]
        mlp[present, -(K + 1):-1] = x[:n_w].reshape(S, K)[present]
        if fixed_e0:
            mlp[present, -1] += x[n_w:n_w + S][present] - e00[present]
            model.set_parameters(mlp=mlp)
        else:
            model.set_parameters(mlp=mlp, e0=np.where(present, x[n_w:n_w + S], e00))


def solve_output_layer(model, data, weights=LossWeights(), n_chunks=None, fixed_e0=False):
    """Set the output layer weights and e0 of every species to their exact minimiser of the
    loss at `weights` with everything else fixed (`OutputLayerProblem`; with `fixed_e0`, the
    isolated-atom e0 stays and the per-species constant goes into the output bias). The output
    bias is left as it is: it duplicates e0. Gradient descent resolves these directions slowly
    when the energy term is a small part of the loss, which is why `fit` solves them exactly.
    The rows of a distributed set (`Dataset.comm`) are solved together by TSQR."""
    problem = OutputLayerProblem(model, data, n_chunks, huber=weights.huber)
    problem.set(model, problem.solve(weights), fixed_e0)


def choose_output_layer(model, data, weights, energies, n_chunks=None, fixed_e0=False,
                        n_folds=OUTPUT_FOLDS):
    """Solve the output layer (as `solve_output_layer`) at the energy weight, of `energies`
    (with the forces, stress and L2 weights of `weights`), whose cross-validated errors over the
    training structures are lowest (`OutputLayerProblem.cross_validated_errors`). The score is
    the mean of the energy and force MAE, each relative to the lowest among the candidates
    (scale-free; MAE because a squared loss this energy-heavy follows its worst structure).
    Returns rows (energy weight, cross-validated energy MAE in meV/atom, force MAE in eV/Å,
    score), best first.

    Why: how far the solve may trade forces for energies depends on the data (re-solving the
    mlearn rank-3 models, the best energy weight was 30x the L-BFGS one for Ni and Mo, 300x for
    Cu and 10x for Li; Mo's validation energy MAE was 2.24 meV/atom at 10x and 2.83 at 1000x).
    Cross-validation uses every training structure rather than the tenth a validation split
    holds, and needs no split; the solve is linear, so it costs a few small factorisations."""
    problem = OutputLayerProblem(model, data, n_chunks, n_folds, huber=weights.huber)
    errors = {w: problem.cross_validated_errors(replace(weights, energy=w)) for w in energies}
    # the lowest energy and force MAE (nan for a quantity the data lacks, e.g. no forces)
    best = [min((e[k] for e in errors.values() if np.isfinite(e[k])), default=np.nan)
            for k in (0, 1)]

    def score(e):
        parts = [v / ref for v, ref in zip(e, best) if ref > 0]
        return float(np.mean(parts)) if parts else 0.0
    rows = sorted(((w, *e, score(e)) for w, e in errors.items()), key=lambda r: r[3])
    problem.set(model, problem.solve(replace(weights, energy=rows[0][0])), fixed_e0)
    return rows
