"""Training: `fit`, a LATTE model fitted to structures with energies (and forces and stress where
present), as three named steps:

1. starting point: for a new model, the descriptor standardisation, a zero output layer and the
   reference energies e0 by least squares on composition (`lattenb.steps`);
2a. with a time budget, a first-order phase: Adam on mini-batches of structures
   (`_minibatch_phase`);
2. L-BFGS-B on the loss of `lattenb.loss` over all trainable parameters (`_LbfgsRun`: keeps the
   parameters best on the validation set, writes checkpoints, resumes exactly, stops on Ctrl-C);
3. the exact least-squares solve of the output layer and e0 (`lattenb.steps.solve_output_layer`).

The stages it uses have their own modules: `lattenb.dataset` (structures and targets),
`lattenb.predict`, `lattenb.loss` (loss and gradient), `lattenb.steps`, `lattenb.evaluation`.
"""
import copy
import signal
import time
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from threadpoolctl import threadpool_limits

from .auto import isolated_atom_energies
from .dataset import prepare_dataset
from .distributed import SERIAL
from .repulsion import closest_by_species, radii_from_data
from .evaluation import rmse_report
from .extrapolation import active_set_from_features, dataset_features, n_features
from .short_range import close_short_range, crystal_candidates
from .loss import LossWeights, loss_and_gradient, stress_residuals
from .model import DEFAULT_PRESET, LatteModel, load_model, read_model
from .predict import predict
from .species import species_in
from .steps import (OUTPUT_FOLDS, TRAINING_CHUNKS, Adam, ParameterVector, _Objective, _output_weights,
                    choose_output_layer, fit_reference_energies, group_scales, solve_output_layer,
                    standardise, zero_output_layer)

#: the fixed buffers of a model (set by `standardise`), not trained by L-BFGS
BUFFERS = ("g_mean", "g_std")

#: convergence: stop when the best validation loss improved by less than CONVERGENCE_TOL
#: (relative) over the last CONVERGENCE_WINDOW iterations (or the last third of the run)
CONVERGENCE_WINDOW = 200
CONVERGENCE_TOL = 1e-3

#: L-BFGS-B memory (correction pairs kept). On AcAc (fast preset, 1 thread) 50 pairs reached the
#: validation force RMSE of 20 pairs in about 25 % fewer iterations (0.087 against 0.107 eV/Å at
#: iteration 1000, 0.073 at 1500 against 0.071 at 2000) at no measurable cost per iteration;
#: checkpoints record theirs (20, then 50 before this was raised) so that they resume exactly.
#: 100 pairs on the scaled parameters (AcAc plain fit, seed 0, 20 minutes at one thread, two
#: side by side): validation force RMSE 37.2 / 26.0 / 22.8 meV/Å at iterations 1000 / 2000 /
#: 3000 against 42.3 / 29.5 / 25.5 with 50, 3604 iterations against 3649 in the 20 minutes,
#: and 0.304 meV/atom and 21.6 meV/Å at the end against 0.358 and 23.5. At two threads the
#: iteration time did not measurably change (200-225 ms for 50, 100 and 200 pairs). 200 pairs
#: was another 2-5 % ahead on the forces up to iteration 2000 (measured no further).
LBFGS_MEMORY = 100

#: after this many L-BFGS iterations the run restarts on the parameters divided by one scale per
#: parameter array (`steps.group_scales`, from the Gauss-Newton diagonal there; at the start the
#: output layer is zero and nothing below it has a gradient to measure). AcAc plain fit,
#: validation force RMSE at iteration 4000, seeds 0 / 1: 21.8 / 27.0 meV/Å against 24.6 / 31.9;
#: at iteration 1000 (seed 0) 41.5 against 50.3 for the same restart unscaled and 50.7 without a
#: restart; one scale per parameter (Jacobi) was worse, 67.9, from its noise and its few extreme
#: entries. The lead fades in a long fit (level with the unscaled seed-0 fit from iteration 8000
#: on), so it pays in fits with few iterations. Checkpoints record theirs (None before this).
GROUP_SCALES_AFTER = 200
#: then again every this many iterations (None: once). AcAc seed 0, every 1000: 31.1 / 23.9
#: meV/Å at iterations 2000 / 4000 against 29.2 / 22.1 once (each restart drops the L-BFGS-B
#: history and the scales barely move: widths 0.18 -> 0.25, the MLP's 1.08 -> 1.05).
GROUP_SCALES_EVERY = None
#: the groups that share a scale: "array" (each parameter array, `ParameterVector.groups`) or
#: "layer" (the MLP's weights and biases per layer and species, `ParameterVector.layer_groups`).
#: Per layer the output layer's scale is 10-100 times below the hidden layers', but AcAc seed 0
#: fitted worse with it: 60.3 / 40.4 meV/Å at iterations 1000 / 2000 against 42.3 / 29.2 per
#: array (and 50.3 / 32.0 without scales): the MLP's layers are coupled, so a diagonal scaling
#: within it undoes more than it fixes, as one scale per entry did (README).
SCALE_GROUPS = "array"


#: step 2a, the mini-batch phase: Adam on mini-batches of about ADAM_BATCH_ATOMS atoms,
#: the learning rate decaying geometrically from ADAM_LEARNING_RATE[0] to [1] over the phase.
#: A fit with a time budget spends ADAM_TIME_FRACTION of it there (at most ADAM_MAX_EPOCHS
#: passes over the data), then hands the parameters to L-BFGS. Full-batch L-BFGS creeps once
#: the forces dominate the loss; many small steps get there first. mlearn Ni (1 thread, the
#: benchmark's blocks, validation split): L-BFGS alone reached a training force RMSE of 0.047
#: eV/Å in 530 s; Adam reached 0.032 in 300 s (220 passes), and 140 s of L-BFGS after it
#: 0.031. The mlearn benchmark with it (14 minutes, with the weight decay and average below):
#: test force MAE Cu 0.017 -> 0.012, Li 0.0086 -> 0.0076, Ni 0.019 -> 0.018 eV/Å, Mo level
#: (README, "The mini-batch phase").
ADAM_BATCH_ATOMS = 200
ADAM_LEARNING_RATE = (1e-3, 1e-4)
ADAM_TIME_FRACTION = 0.5
ADAM_MAX_EPOCHS = 1000
#: decoupled weight decay of the MLP weights in the phase (`steps.Adam`), in place of the L2
#: penalty, whose gradient Adam divides by the loss gradient's running RMS: on mlearn Mo the
#: penalty was 0.5 % of the loss and the weight norm grew all through the phase. Mo, 300 s of
#: the phase on one thread, validation force RMSE: 0.1792 eV/Å with the L2 penalty, 0.1757 with
#: decay 0.1 (weight norm 7.1 against 14.1), 0.187 with 0.5 (training held back too).
ADAM_WEIGHT_DECAY = 0.1
#: the phase logs and hands over the exponential moving average of its iterates, with this
#: decay per step (about two passes on mlearn Mo). At pass 200 of a 300 s probe (one thread,
#: decay 0.1), training / validation RMSE, meV/atom and eV/Å: Mo 6.4 / 7.3 and 0.176 / 0.180
#: for the last iterate, 4.2 / 4.7 and 0.173 / 0.181 for the average; Ni (pass 125) 5.1 / 5.6
#: and 0.035 / 0.048 against 1.3 / 3.3 and 0.033 / 0.047.
ADAM_AVERAGE = 0.99


# --------------------------------------------------------------------------- step 1
def _initialise(model, data, vector, fixed_e0=False):
    """Starting point of a new model: standardisation from the data, a zero output layer (so the
    first predictions are exactly the composition fit) and e0 by least squares on composition
    (with `fixed_e0`, the isolated-atom e0 stays and the output biases take the fit).
    Returns the packed parameters."""
    standardise(model, data)
    zero_output_layer(model)
    fit_reference_energies(model, data, fixed_e0)
    return vector.get()


def set_reference_energies(model, e0):
    """Set e0 from {symbol: eV} (isolated-atom energies); every species of the model needs one."""
    missing = [s for s in model.species if s not in e0]
    if missing:
        raise ValueError(f"no isolated-atom energy for {', '.join(missing)} (given for "
                         f"{', '.join(sorted(e0)) or 'none'})")
    model.set_parameters(e0=np.array([float(e0[s]) for s in model.species]))


# --------------------------------------------------------------------------- steps 2a and 2
@contextmanager
def _ctrl_c_flag(comm):
    """Yields a flag whose `requested` turns True on Ctrl-C. On several ranks Ctrl-C only sets
    it, and the ranks agree on it at their next step (an exception in the middle of a reduction
    would leave the others waiting); one process gets KeyboardInterrupt as usual."""
    flag = SimpleNamespace(requested=False)
    if comm.size == 1:
        yield flag
        return

    def request(signum, frame):
        flag.requested = True
    previous = signal.signal(signal.SIGINT, request)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress(model, data, vdata, step, loss, t_start):
    """(log line, learning-curve row) at the model's current parameters: `step` a (name, count)
    pair such as ("iter", 100) or ("pass", 3), the training `loss`, and the training and
    validation RMSE of energy and forces."""
    e, f, _ = rmse_report(model, data)
    elapsed = time.perf_counter() - t_start
    name, count = step
    row = {"epoch" if name == "pass" else "iteration": count, "time_s": elapsed, "loss": loss,
           "train_energy_meV_per_atom": e, "train_forces_eV_per_A": f}
    line = f"{name:4s} {count:5d}  loss {loss:.6e}  train E {e:7.3f} meV/atom  F {f:.4f} eV/A"
    if vdata is not None:
        ve, vf, _ = rmse_report(model, vdata)
        line += f"  valid E {ve:7.3f}  F {vf:.4f}"
        row.update(valid_energy_meV_per_atom=ve, valid_forces_eV_per_A=vf)
    return line + f"  {elapsed:7.1f} s", row


def _validation_loss(model, vdata, weights):
    """The loss on the validation set at the model's parameters, without the L2 penalty."""
    return loss_and_gradient(model, vdata, replace(weights, l2=0.0), False)[0]


class _LbfgsRun:
    """One L-BFGS-B run over `vector` and the state it keeps: the iteration count, the
    validation losses, the parameters best on the validation set (on the training loss without
    one), progress lines, checkpoints and the time limit. A resumed run (history, val_hist from a
    checkpoint) first replays the recorded iterations (see `_Objective`)."""

    def __init__(self, vector, data, vdata, weights, x0, settings, history=None, val_hist=(), *,
                 checkpoint=None, checkpoint_every=50, max_time=None, log=None, log_every=10,
                 t_start=None):
        self.model, self.vector, self.data, self.vdata = vector.model, vector, data, vdata
        self.weights, self.x0, self.settings = weights, x0, settings
        self.objective = _Objective(vector, data, weights, history)
        self.iteration = 0
        self.best = None
        self.best_val = np.inf
        self.val_hist = list(val_hist)
        self.replay = len(self.val_hist)
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.max_time, self.log, self.log_every = max_time, log, log_every
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.best_hist = []              # best validation loss after each iteration
        self.last_x = None               # the last accepted iterate (`rescale` starts there)
        self.curve = []                  # learning curve rows, one per log line
        self.stop_reason = None

    def validate(self, x):
        """Validation loss at x (replayed when resuming); keeps the best parameters."""
        it = self.iteration
        if it <= self.replay:
            val = self.val_hist[it - 1]
        else:
            self.vector.set(x)
            val = (_validation_loss(self.model, self.vdata, self.weights)
                   if self.vdata is not None else self.objective.f_hist[-1])
            self.val_hist.append(val)
        if val <= self.best_val:
            self.vector.set(x)
            self.keep_if_best(val)
        self.best_hist.append(self.best_val)

    def keep_if_best(self, val):
        """Keep the model's current parameters if `val` is the lowest validation loss so far
        (also how the fit hands the mini-batch phase's best pass to the run)."""
        if val <= self.best_val:
            self.best_val = val
            self.best = {n: v.copy() for n, v in self.model.params.items()}

    def converged(self):
        """True when the best validation loss (training loss without validation data) improved
        by less than CONVERGENCE_TOL (relative) over the last CONVERGENCE_WINDOW iterations
        (or a third of the run, if longer)."""
        it = len(self.best_hist)
        window = max(CONVERGENCE_WINDOW, it // 3)
        if it <= window:
            return False
        before, now = self.best_hist[it - 1 - window], self.best_hist[-1]
        return now > (1.0 - CONVERGENCE_TOL) * before

    def progress_line(self, it):
        """The log line of iteration `it` (the model holds its parameters); also a row of the
        learning curve."""
        line, row = _progress(self.model, self.data, self.vdata, ("iter", it),
                              self.objective.f_hist[-1], self.t_start)
        self.curve.append(row)
        return line

    def callback(self, x):
        """Called by SciPy after every iteration: validation, log line, checkpoint, time limit.
        On several ranks the decision to stop is rank 0's (its clock), or any rank's Ctrl-C."""
        self.iteration += 1
        it = self.iteration
        comm = self.data.comm
        x = comm.same(x)
        self.last_x = x
        self.validate(x)
        if it > self.replay and self.log is not None and (it % self.log_every == 0 or it == 1):
            self.vector.set(x)
            self.log(self.progress_line(it))
        if self.checkpoint and it > self.replay and it % self.checkpoint_every == 0:
            self.save_checkpoint(self.checkpoint)
        if self.max_time is not None and time.perf_counter() - self.t_start > self.max_time:
            self.stop_reason = f"time limit of {self.max_time:.0f} s reached"
        elif it > self.replay and self.converged():
            self.stop_reason = (f"converged (best {'validation' if self.vdata is not None else 'training'}"
                                f" loss improved by less than {CONVERGENCE_TOL:g} in the last "
                                f"{max(CONVERGENCE_WINDOW, it // 3)} iterations)")
        if comm.size > 1:
            self.stop_reason = comm.bcast(self.stop_reason)
            if comm.max(float(self.ctrl_c.requested)):
                self.model.interrupted = True
                self.stop_reason = "interrupted (Ctrl-C)"
        if self.stop_reason is not None:
            if self.log is not None:
                if it % self.log_every:
                    self.vector.set(x)
                    self.log(self.progress_line(it))
                self.log(f"stopping at iteration {it}: {self.stop_reason}")
            raise StopIteration

    def minimise(self, max_iter):
        """Run L-BFGS-B for at most `max_iter` iterations (None: until the time limit or
        convergence); Ctrl-C stops it and sets `model.interrupted`."""
        from scipy.optimize import minimize
        self.model.interrupted = False
        max_iter = 10 ** 9 if max_iter is None else max_iter
        try:
            # one BLAS thread: L-BFGS-B's vector operations on the 10^4 parameters wake the
            # BLAS library's threads, which then spin between calls and take the cores from
            # the Numba kernels (AcAc fit of 60 iterations at 2 Numba threads: 14.4 s against
            # 10.1 s with this limit; two 1-thread fits side by side: 30 s against 21 s each)
            with threadpool_limits(limits=1, user_api="blas"), \
                    _ctrl_c_flag(self.data.comm) as self.ctrl_c:
                x = self.x0
                while self.iteration < max_iter:   # maxiter=0 would still take a step
                    rescale_at = self.next_rescale()
                    stop = max_iter if rescale_at is None else min(max_iter, rescale_at)
                    left, start = int(stop - self.iteration), self.iteration
                    result = minimize(self.objective, x, jac=True, method="L-BFGS-B",
                                      bounds=self.vector.bounds, callback=self.callback,
                                      options={"maxiter": left, "maxfun": 4 * left + 20,
                                               "ftol": 1e-14, "gtol": 1e-12,
                                               "maxcor": self.settings["lbfgs_memory"]})
                    if self.stop_reason is not None or self.iteration >= max_iter:
                        break
                    if self.iteration == rescale_at:
                        x = self.rescale()
                        continue
                    # L-BFGS-B ended on its own, mostly on a failed line search (after the
                    # mini-batch phase on mlearn Ni it did so at iteration 138 of a 14-minute
                    # fit with 5 minutes left): start again from its last point with a fresh
                    # history, as long as that makes progress
                    if self.iteration == start:
                        self.stop_reason = f"L-BFGS-B: {result.message}"
                        break
                    if self.log is not None:
                        self.log(f"L-BFGS-B stopped at iteration {self.iteration} "
                                 f"({result.message}); restarting from there")
                    x = result.x
        except KeyboardInterrupt:
            self.model.interrupted = True
        if self.model.interrupted and self.log is not None:
            self.log(f"interrupted at iteration {self.iteration}: keeping the best parameters "
                     f"so far")

    def next_rescale(self):
        """The next iteration after the current one at which L-BFGS-B restarts on new scales
        (`group_scales_after`, then every `group_scales_every`), None for none."""
        first, every = self.settings["group_scales_after"], self.settings["group_scales_every"]
        if first is None:
            return None
        if self.iteration < first:
            return first
        if not every:
            return None
        return first + every * ((self.iteration - first) // every + 1)

    def rescale(self):
        """Divide the parameters L-BFGS-B works on by `steps.group_scales` at the last iterate
        and return that iterate in the new variables (a fresh L-BFGS-B history starts there)."""
        self.vector.set(self.last_x)
        t = time.perf_counter()
        kind = self.settings["scale_groups"]
        groups = self.vector.layer_groups() if kind == "layer" else self.vector.groups()
        scale = group_scales(self.vector, self.data, self.weights, groups=groups)
        self.vector.scale = scale
        if self.log is not None and self.iteration > self.replay:
            parts = ", ".join(f"{name} {scale[part][0]:.3g}" for name, part in groups
                              if not self.vector.frozen[part].all())
            self.log(f"iteration {self.iteration}: L-BFGS-B restarts on the parameters divided "
                     f"by one scale per {kind} ({parts}; {time.perf_counter() - t:.1f} s)")
        return self.vector.get()

    def keep_best(self):
        """Give the model the best parameters of the run (its current ones if none was kept)."""
        if self.best is None:
            self.best = {n: v.copy() for n, v in self.model.params.items()}
        self.model.set_parameters(**{n: v for n, v in self.best.items() if n not in BUFFERS})

    def save_checkpoint(self, path):
        """Write a loadable model with the best parameters so far plus the optimiser history."""
        _save_checkpoint(path, self.model, self.best, self.x0, self.objective, self.val_hist,
                         self.iteration, self.settings)


# --------------------------------------------------------------------------- step 2a
def minibatches(frames, model, batch_atoms=ADAM_BATCH_ATOMS, seed=0, comm=SERIAL):
    """The training structures as Datasets of about `batch_atoms` atoms each (one structure at
    least), grouped by a seeded random permutation (so that a batch mixes the kinds of
    structure a file lists in runs). On several ranks every rank makes the same number of
    batches, from its smallest shard, and a step takes one batch of every rank."""
    atoms = sum(len(a) for a in frames)
    n_batches = min(len(frames), max(1, round(atoms / batch_atoms)))
    n_batches = int(comm.min(float(n_batches)))
    order = np.random.default_rng(seed).permutation(len(frames))
    return [prepare_dataset([frames[i] for i in part], model, keep_pairs=True, comm=comm)
            for part in np.array_split(order, n_batches)]


def _minibatch_phase(vector, batches, data, vdata, weights, *, epochs=None, max_time=None, seed=0,
                     log=None, log_every=10, t_start=None, curve=None):
    """Step 2a: Adam over `batches` (from `minibatches`) in a seeded random order, for `epochs`
    passes and/or `max_time` seconds (whichever ends first), the learning rate decaying from
    ADAM_LEARNING_RATE[0] to [1] with the fraction done. Logs every `log_every` passes (training
    and validation RMSE on `data`, `vdata`) and appends learning-curve rows to `curve`. Ctrl-C
    stops it and sets `model.interrupted`. With `vdata` the moving average of the iterates
    (ADAM_AVERAGE; also what it logs) is validated after every pass, and the phase leaves the
    best of them in the model; without, the last. Returns it packed, its validation loss (None
    without `vdata`) and a summary dict."""
    model, comm = vector.model, data.comm
    adam = Adam(vector.get(), vector.bounds, weight_decay=ADAM_WEIGHT_DECAY,
                decay_mask=vector.weight_mask(), average=ADAM_AVERAGE)
    batch_weights = replace(weights, l2=0.0)        # the weight decay regularises instead
    lr_start, lr_end = ADAM_LEARNING_RATE
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    t_start = t0 if t_start is None else t_start
    steps_total = None if epochs is None else epochs * len(batches)
    model.interrupted = False
    steps, epoch, losses, lr = 0, 0, [], lr_start
    best_x, best_val, best_epoch = None, np.inf, 0

    def fraction_done(ctrl_c):
        done = 0.0 if steps_total is None else steps / steps_total
        # from the first step on: a phase that ends on its passes takes the same steps whatever
        # the clock (at step 0 the clock's few microseconds would set the first rate)
        if max_time is not None and steps:
            done = max(done, (time.perf_counter() - t0) / max_time if max_time > 0 else 1.0)
        if comm.size == 1:
            return done
        # one reduction: the ranks take the same steps (the slowest clock) and agree on Ctrl-C
        done, requested = comm.max(np.array([done, float(ctrl_c.requested)]))
        if requested:
            raise KeyboardInterrupt
        return done

    try:
        with threadpool_limits(limits=1, user_api="blas"), _ctrl_c_flag(comm) as ctrl_c:
            done = fraction_done(ctrl_c)
            while done < 1.0:
                losses = []
                for k in rng.permutation(len(batches)):
                    lr = lr_start * (lr_end / lr_start) ** done
                    vector.set(adam.x)
                    loss, _, grad = loss_and_gradient(model, batches[k], batch_weights,
                                                      n_chunks=TRAINING_CHUNKS)
                    adam.step(vector.gradient(grad), lr)
                    losses.append(loss)
                    steps += 1
                    done = fraction_done(ctrl_c)
                    if done >= 1.0:
                        break
                epoch += 1
                report = log is not None and (epoch % log_every == 0 or epoch == 1 or done >= 1.0)
                if vdata is not None or report:
                    vector.set(adam.x_average)
                if vdata is not None:
                    # early stopping inside the phase: on mlearn Mo the averaged iterate's
                    # validation force RMSE was lowest at pass 600 (0.163 eV/Å) and rose to
                    # 0.169 by pass 964, where L-BFGS took over and only rose further
                    val = _validation_loss(model, vdata, weights)
                    if val <= best_val:
                        best_x, best_val, best_epoch = adam.x_average.copy(), val, epoch
                if report:
                    line, row = _progress(model, data, vdata, ("pass", epoch),
                                          float(np.mean(losses)), t_start)
                    if curve is not None:
                        curve.append(row)
                    log(f"{line}  (lr {lr:.1e})")
    except KeyboardInterrupt:
        model.interrupted = True
        if log is not None:
            log(f"interrupted in the mini-batch phase at pass {epoch}")
    x = comm.same(adam.x_average if best_x is None else best_x)
    vector.set(x)
    if log is not None and best_x is not None and best_epoch < epoch:
        log(f"handing over the average of pass {best_epoch}, best on the validation set")
    return x, (None if best_x is None else best_val), {
        "epochs": epoch, "steps": steps, "batches": len(batches), "best_epoch": best_epoch,
        "time_s": time.perf_counter() - t0}


def minibatch_limits(epochs, seconds, max_time, max_iter, new_model):
    """(passes, seconds) of the mini-batch phase, None for no limit and (None, None) for no
    phase: as given, where 0 for either means none; both None gives a new model on a time
    budget alone ADAM_TIME_FRACTION of it and at most ADAM_MAX_EPOCHS passes. `lattenb fit`
    asks it too, for the choices that depend on the phase (`lattenb.auto.choose_huber`)."""
    if epochs is None and seconds is None:
        if not (new_model and max_time is not None and max_iter is None):
            return None, None
        return ADAM_MAX_EPOCHS, ADAM_TIME_FRACTION * max_time
    if epochs == 0 or seconds == 0:
        return None, None
    return epochs, seconds


# --------------------------------------------------------------------------- step 3
def _final_output_solve(model, data, vdata, weights, log, fixed_e0=False, energies=None):
    """Replace the output layer weights and e0 by their exact minimiser of the training loss at
    `weights` (see `solve_output_layer`), logging train and validation errors before and after;
    given candidate `energies`, at the one of them that cross-validates best over the training
    structures (`choose_output_layer`). Returns the energy weight used.

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
        log("solving the output layer exactly at weights E,F,S = "
            + ("chosen by cross-validation" if energies is not None else f"{weights.energy:g}")
            + f",{weights.forces:g},{weights.stress:g}")
    report("before")
    energy = weights.energy
    try:
        if energies is not None:
            rows = choose_output_layer(model, data, weights, energies, TRAINING_CHUNKS, fixed_e0)
            energy = rows[0][0]
            if log is not None:
                log(f"  energy weight: {OUTPUT_FOLDS}-fold cross-validated MAE E (meV/atom), "
                    f"F (eV/A), score (mean of both relative to the lowest), best first")
                for w, e, f, score in rows:
                    log(f"    {w:8g}  E {e:.3f}  F {f:.4f}  score {score:.3f}")
        else:
            solve_output_layer(model, data, weights, TRAINING_CHUNKS, fixed_e0)
    except KeyboardInterrupt:
        model.set_parameters(**before)
        model.interrupted = True
        return None
    report("after ")
    return energy


# --------------------------------------------------------------------------- checkpoints
def _store_active_set(model, data, vdata, log):
    """The extrapolation grades' active set of the training and validation environments
    (`lattenb.extrapolation`), stored in the model."""
    t0 = time.perf_counter()
    comm = data.comm
    sets = [d for d in (data, vdata) if d is not None]
    phi = comm.gather(np.vstack([dataset_features(model, d) for d in sets]))   # on rank 0
    species = comm.gather(np.concatenate([d.species for d in sets]))
    active = (active_set_from_features(phi, species, model.n_species) if comm.rank == 0
              else None)
    model.set_active_set(comm.bcast(active))
    if log is not None:
        n = comm.bcast(0 if phi is None else len(phi))
        log(f"active set for extrapolation grades: {n_features(model)} environments per species "
            f"from {n} ({time.perf_counter() - t0:.1f} s)")


def _save_checkpoint(path, model, best_params, x0, objective, val_hist, iteration, settings):
    best = {n: best_params[n] for n in best_params}
    hashes = np.array([np.frombuffer(h.encode("ascii"), np.uint8) for h in objective.x_hash],
                      dtype=np.uint8).reshape(-1, 16)
    extra = {"fit_x0": x0, "fit_f": np.array(objective.f_hist),
             "fit_g": np.array(objective.g_hist).reshape(len(objective.f_hist), len(x0)),
             "fit_xhash": hashes, "fit_val": np.array(val_hist, dtype=np.float64)}
    model.save(path, params=best, extra_arrays=extra,
               extra_header={"fit": dict(settings, iteration=iteration)})


def _read_checkpoint(path):
    """(model, the "fit" settings of its header, L-BFGS history (f, g, x hashes), validation
    losses, starting point x0) of a checkpoint written by `_save_checkpoint`."""
    model, header, extra = read_model(path)
    if "fit_x0" not in extra:
        raise ValueError(f"{path}: not a checkpoint (no optimiser history)")
    history = (extra["fit_f"], list(extra["fit_g"]),
               [bytes(h).decode("ascii") for h in extra["fit_xhash"]])
    return model, header.get("fit", {}), history, list(extra["fit_val"]), extra["fit_x0"]


# --------------------------------------------------------------------------- fit
def fit(frames, species=None, *, valid=None, model=None, preset=None, cutoff=None, blocks=None,
        hidden=None, activation="gaussian", radial=None, weights=(10.0, 1.0, 0.001), l2=1e-6, max_iter=500,
        stress_offset=False, seed=0, train_radial=True, output_weights=None, solve_output=True,
        checkpoint=None, checkpoint_every=50, resume=None, max_time=None, log=print,
        log_every=10, e0=None, shared_radial=None, pair_radial=None, radial_from=None,
        species_mode=None, embedding_dim=None, repulsion=None, adam_epochs=None, adam_time=None,
        huber=0.0, comm=None):
    """Fit a LATTE model to structures with energies (and forces/stress where present).

    frames, valid: lists of ASE Atoms (energy, forces, stress from their calculators or info).
    species: chemical symbols (default: all elements in frames). model: start from (a copy of)
    this model instead of a new one built from `preset` (a name in `PRESETS`, default
    `DEFAULT_PRESET`) with the cutoff/blocks/hidden/radial overrides (radial: a radial family
    name, `lattenb.radial.names()`; shared_radial: one set of radial functions for every
    central species; pair_radial: one set per species pair; species_mode: "pair" or
    "embedding", `lattenb.species_modes`, with its embedding_dim);
    a fitted model (standardisation set) continues from its parameters, e.g. to refine it with
    other weights or data.
    weights: (energy, forces, stress) loss weights (see `LossWeights`); l2: MLP weight penalty.
    huber: 0 for squared force residuals, or a width in eV/Å beyond which force residuals count
    linearly (`LossWeights.huber`; the output solve reweights its force rows to match).
    stress_offset: fit reference stresses up to one isotropic offset (a DFT Pulay stress); the
    fitted value, in GPa, is `model.fit_info["stress_offset_GPa"]` (the validation loss fits
    its own).
    output_weights: (energy, forces, stress) weights of a last, exact least-squares solve of the
    output layer and e0 (`solve_output=False` skips it). An energy weight of None, and the
    default None (with the forces and stress weights of `weights`), is chosen among `weights`'
    energy weight times OUTPUT_ENERGY_FACTORS by cross-validation over the training structures
    (`choose_output_layer`; the choice is `fit_info["output_energy_weight"]`). L-BFGS makes
    good progress only while forces dominate the loss, and then resolves the energy directions
    slowly; the energy is linear in the output layer, so a solve with a larger energy weight
    places the energies without retraining.
    max_iter: L-BFGS-B iterations (None: no limit). checkpoint: path written every `checkpoint_every` iterations
    (a loadable model file holding the best parameters so far plus the optimiser history);
    resume: a checkpoint path to continue from (reaches the same model as an uninterrupted run).
    max_time: stop after this many seconds of wall time (the best parameters so far are kept).
    The fit also stops when it has converged (`CONVERGENCE_WINDOW`, `CONVERGENCE_TOL`).
    adam_epochs, adam_time: the mini-batch phase before L-BFGS (`_minibatch_phase`), at most this
    many passes over the training structures and/or seconds; 0 for either skips it. Both None
    (the default): a new model fitted on a time budget alone (`max_time` given, `max_iter`
    None) spends ADAM_TIME_FRACTION of it there (at most ADAM_MAX_EPOCHS passes); with an
    iteration limit, or when refining or resuming, there is none (`lattenb fit` also gives
    molecules none, `lattenb.auto.choose_minibatch`). The phase's summary is
    `fit_info["adam"]`.
    radial_from: a model (or model file) whose radial functions start this fit
    (`LatteModel.take_radial`: filters learned on another system); with train_radial=False they
    stay fixed (the species weights sigma still scale them).
    repulsion: "zbl" adds the core repulsion (`lattenb.repulsion`): ZBL, off above 0.9 x the
    shortest distance of each species pair in `frames` (so it leaves the fit unchanged), and a
    wall and coordination terms the fit solves at its end (`lattenb.short_range`) so that dimers
    and compressed crystals rise below the training data; "none" removes them; None keeps the
    model's (a new model has none).
    e0: isolated-atom reference energies {symbol: eV}, kept fixed (the MLP learns the binding
    energy). Frames marked as isolated atoms (config_type IsolatedAtom / isolated_atom) are taken
    out of `frames` and give e0 when it is not given; without either, e0 is fitted on composition.
    The learning curve (one row per log line) is `model.fit_curve`.
    Returns the model with the parameters best on `valid` (the last ones without `valid`).
    Ctrl-C stops the fit cleanly and returns the best model so far (attribute `interrupted`).
    comm: data-parallel training (`lattenb.distributed`): `frames` and `valid` are this rank's
    contiguous shards of the training and validation sets (`distributed.scatter_frames`), and
    every rank of `comm` calls `fit` with the same settings; every rank returns the same model,
    rank 0 logs and writes the checkpoint. None: one process.
    """
    t_start = time.perf_counter()
    comm = SERIAL if comm is None else comm
    reporting = comm.bcast(log is not None)        # every rank computes what rank 0 logs
    log = (log if comm.rank == 0 else (lambda line: None)) if reporting else None
    if comm.rank != 0:
        checkpoint = None
    isolated, frames = isolated_atom_energies(frames)
    for part in comm.allgather(isolated):
        isolated.update(part)
    if valid:
        valid = isolated_atom_energies(valid)[1]
    if e0 is None and isolated:
        e0 = isolated
    if not comm.min(float(len(frames))):
        raise ValueError("no training structures (besides isolated atoms)"
                         + (" on one of the ranks" if comm.size > 1 else ""))
    if not isinstance(weights, LossWeights):
        weights = LossWeights(*weights, l2=l2, stress_offset=bool(stress_offset), huber=huber)
    output_weights, output_energies = _output_weights(weights, output_weights)
    history, val_hist, x0 = None, [], None
    preset = DEFAULT_PRESET if preset is None else preset
    settings = {"preset": preset, "weights": [weights.energy, weights.forces, weights.stress],
                "l2": weights.l2, "stress_offset": weights.stress_offset, "huber": weights.huber,
                "seed": seed,
                "train_radial": bool(train_radial), "max_iter": None if max_iter is None else int(max_iter),
                "lbfgs_memory": LBFGS_MEMORY, "group_scales_after": GROUP_SCALES_AFTER,
                "group_scales_every": GROUP_SCALES_EVERY, "scale_groups": SCALE_GROUPS,
                "output_weights": [None if output_energies else output_weights.energy,
                                   output_weights.forces, output_weights.stress]
                if solve_output else None}
    if radial_from is not None and not isinstance(radial_from, LatteModel):
        radial_from = load_model(radial_from)
    if resume is not None:           # the settings of the checkpoint's run replace these
        model, fit_info, history, val_hist, x0 = _read_checkpoint(resume)
        weights = LossWeights(*fit_info["weights"], l2=fit_info["l2"],
                              stress_offset=fit_info.get("stress_offset", False),
                              huber=fit_info.get("huber", 0.0))    # 0 before it was recorded
        train_radial = fit_info["train_radial"]
        settings.update({k: fit_info[k] for k in ("preset", "weights", "l2", "seed", "train_radial")})
        settings["stress_offset"] = weights.stress_offset
        settings["huber"] = weights.huber
        settings["output_weights"] = fit_info.get("output_weights")
        e0 = fit_info.get("e0")
        settings["lbfgs_memory"] = fit_info.get("lbfgs_memory", 20)   # 20 before it was recorded
        settings["group_scales_after"] = fit_info.get("group_scales_after")   # none before
        settings["group_scales_every"] = fit_info.get("group_scales_every")   # once before
        settings["scale_groups"] = fit_info.get("scale_groups", "array")     # arrays before
        settings["adam"] = fit_info.get("adam")
        solve_output = settings["output_weights"] is not None
        if solve_output:
            output_weights, output_energies = _output_weights(weights, settings["output_weights"])
    elif model is None:
        if radial_from is not None and radial is None:     # the source's family
            radial = radial_from.radial
        if not species:          # every rank's elements, ordered by atomic number
            numbers = {atomic_numbers[s] for part in comm.allgather(species_in(frames))
                       for s in part}
            species = [chemical_symbols[z] for z in sorted(numbers)]
        overrides = {k: v for k, v in (("cutoff", cutoff), ("blocks", blocks), ("hidden", hidden),
                                       ("radial", radial), ("shared_radial", shared_radial),
                                       ("pair_radial", pair_radial),
                                       ("species_mode", species_mode),
                                       ("embedding_dim", embedding_dim))
                     if v is not None}
        model = LatteModel.preset(preset, species, activation=activation, seed=seed, **overrides)
    else:
        model = copy.deepcopy(model)
    if radial_from is not None and resume is None:
        model.take_radial(radial_from)
    fixed_e0 = e0 is not None
    if fixed_e0:
        set_reference_energies(model, e0)
        settings["e0"] = {sym: float(v) for sym, v in zip(model.species, model.params["e0"])}
    # a model whose standardisation is set has been fitted: continue from it as it is
    fitted = resume is None and not (np.all(model.params["g_mean"] == 0.0)
                                     and np.all(model.params["g_std"] == 1.0))
    data = prepare_dataset(frames, model, keep_pairs=True, comm=comm)
    has_valid = comm.max(float(bool(valid)))
    if has_valid and comm.size > 1 and not comm.min(float(bool(valid))):
        raise ValueError("every rank needs validation structures (use fewer ranks)")
    vdata = prepare_dataset(valid, model, keep_pairs=True, comm=comm) if has_valid else None
    if repulsion is not None and resume is None:
        radii = None
        if repulsion != "none":
            radii = radii_from_data(comm.min(closest_by_species(*data.kernel_inputs(
                model.kernel_arrays())[0], model.n_species)))
        model.set_repulsion(repulsion, radii)
        if log is not None and repulsion != "none":
            r = np.array(model.repulsion_radii)
            log(f"core repulsion {repulsion}: full below {r[..., 0].min():.2f}-"
                f"{r[..., 0].max():.2f} Å, off above {r[..., 1].min():.2f}-{r[..., 1].max():.2f} Å "
                f"(0.6 and 0.9 x the shortest distances in the training data)")
    vector = ParameterVector(model, train_radial=train_radial, train_e0=not fixed_e0)

    # step 1: the starting point
    if resume is not None:
        vector.set(x0)                  # the checkpoint's; L-BFGS-B replays its recorded history
    elif fitted:
        x0 = vector.get()               # continue from the given model's parameters
    else:
        x0 = _initialise(model, data, vector, fixed_e0)

    # step 2a: Adam on mini-batches (a checkpoint's x0 is where it ended)
    curve = []
    phase_val = None
    model.interrupted = False
    adam_epochs, adam_time = minibatch_limits(adam_epochs, adam_time, max_time, max_iter,
                                              resume is None and not fitted)
    if resume is None and (adam_epochs or adam_time):
        batches = minibatches(frames, model, seed=seed, comm=comm)
        if log is not None:
            limits = " or ".join(filter(None, [adam_epochs and f"{adam_epochs} passes",
                                               adam_time and f"{adam_time:.0f} s"]))
            log(f"mini-batch phase: Adam on {len(batches)} batches of about "
                f"{data.comm.sum(float(data.n_atoms_per_frame.sum())) / len(batches):.0f} atoms, "
                f"at most {limits}")
        x0, phase_val, phase = _minibatch_phase(
            vector, batches, data, vdata, weights, epochs=adam_epochs, max_time=adam_time,
            seed=seed, log=log, log_every=log_every, t_start=t_start, curve=curve)
        del batches
        settings["adam"] = {"batch_atoms": ADAM_BATCH_ATOMS,
                            "learning_rate": list(ADAM_LEARNING_RATE),
                            "weight_decay": ADAM_WEIGHT_DECAY, "average": ADAM_AVERAGE, **phase}

    # step 2: L-BFGS-B, keeping the parameters best on the validation set
    run = _LbfgsRun(vector, data, vdata, weights, x0, settings, history, val_hist,
                    checkpoint=checkpoint, checkpoint_every=checkpoint_every, max_time=max_time,
                    log=log, log_every=log_every, t_start=t_start)
    run.curve = curve
    if phase_val is not None:           # L-BFGS must beat the phase's best to replace it
        run.keep_if_best(phase_val)     # (the model holds x0, that pass's parameters)
    if run.replay and log is not None:
        log(f"resuming from {resume}: replaying {run.replay} recorded iterations")
    if not model.interrupted:
        run.minimise(max_iter)
    run.keep_best()
    if checkpoint:
        run.save_checkpoint(checkpoint)

    # step 3: the exact solve of the output layer
    output_energy = None
    if solve_output and not model.interrupted:
        output_energy = _final_output_solve(model, data, vdata, output_weights, log, fixed_e0,
                                            output_energies)

    # the loss and optimiser settings travel with the model (a user asks what made it)
    model.fit_info = {**{k: settings[k] for k in ("preset", "weights", "l2", "stress_offset",
                                                  "huber", "seed", "train_radial",
                                                  "lbfgs_memory", "group_scales_after",
                                                  "group_scales_every", "scale_groups")},
                      "iterations": run.iteration, "best_valid_loss": run.best_val,
                      "output_weights": settings["output_weights"],
                      "adam": settings.get("adam"),
                      "output_energy_weight": output_energy,
                      "wall_time_s": time.perf_counter() - t_start,
                      "stopped": run.stop_reason or ("interrupted" if model.interrupted
                                                     else "iteration limit")}
    # step 4: the short-range wall (`lattenb.short_range`)
    if model.repulsion != "none":
        model.fit_info["short_range"] = close_short_range(
            model, data, crystal_candidates(frames, comm), log, vdata)
    if fixed_e0:
        model.fit_info["e0_isolated_atoms"] = settings["e0"]
    model.fit_curve = run.curve
    _store_active_set(model, data, vdata, log)
    if weights.stress_offset and comm.max(float(data.has_stress.any())):
        offset = stress_residuals(predict(model, data)[2], data, True)[1]
        model.fit_info["stress_offset_GPa"] = offset
        if log is not None:
            log(f"fitted isotropic stress offset of the reference data: {offset:+.3f} GPa")
    return model
