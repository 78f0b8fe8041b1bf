"""Second-order steps built on the tangent pass: Levenberg-Marquardt (Gauss-Newton) against L-BFGS.

    python benchmarks/gauss_newton.py MODEL --method gn --time 480 --threads 1 --tag T
    python benchmarks/gauss_newton.py MODEL --method lbfgs --time 480 --threads 1 --tag T

continues a fitted AcAc model (plain `lattenb fit train_300K.xyz --e0 isolated_atoms.xyz`, its
validation split: every 10th structure) for a time budget with either optimiser, on the plain
fit's loss (energy weight 10, forces 1, L2 1e-5 on the MLP weights, squared forces), and writes
the learning curve to benchmarks/results/gauss_newton_<tag>.json. Run the two side by side, one
thread each, to compare them at equal time.

The Levenberg-Marquardt step solves (J^T J + l2 M + lam D) p = -(J^T r + l2 M x) by truncated,
Jacobi-preconditioned conjugate gradients (`--cg` steps), with r the loss's residual vector
(`ResidualMap`, so that the loss is r.r + l2 |M x|^2), and adapts lam from the ratio of the actual
to the predicted decrease (Nielsen's rule). Each CG step costs one J v and one J^T u:
- J^T u is one tangent-reverse pass (`Backend.parameter_gradients` with e_bar and delta taken
  from u): what a loss gradient costs without its energy/force pass;
- J v is a one-sided finite difference of the residuals along v (one energy/force pass; the
  relative difference from a central one is about 1e-5 at the step used).
D, the diagonal of J^T J, is estimated from 4 Rademacher probes, E[(J^T u)^2] (Hutchinson),
every 50 steps. No result here looks at a test set.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "acac"
RESULTS = ROOT / "benchmarks" / "results"
DIAGONAL_PROBES = 4          # Rademacher probes of diag(J^T J)
DIAGONAL_EVERY = 50          # outer steps between two estimates
FD_STEP = 1e-6               # length of the finite-difference step of J v in parameter space


class ResidualMap:
    """The loss of `lattenb.loss.loss_and_gradient` (energy per atom and force residuals,
    squared; no stress, no Huber width) as r.r + l2 |M x|^2, over the packed parameters x of a
    `ParameterVector`: `residuals(x)` (F + 3N,), `jvp(x, r, v)` = J v and `vjp(u)` = J^T u at the
    parameters the model holds."""

    def __init__(self, vector, data, weights):
        from lattenb.loss import residual_counts
        from lattenb.steps import bound_arrays
        if data.has_stress.any() or weights.huber:
            raise ValueError("ResidualMap covers squared energy and force residuals only")
        self.vector, self.data, self.weights = vector, data, weights
        self.model = vector.model
        self.mask = vector.weight_mask().astype(float)
        self.lower, self.upper = bound_arrays(vector.bounds)
        n_per = data.n_atoms_per_frame
        ne, nf, _ = residual_counts(data)
        atom_has_f = data.has_forces[data.frame_of_atom]
        # residual = scale * (prediction - reference): energies per frame, force components
        self.energy_scale = np.where(data.has_energy, np.sqrt(weights.energy / ne) / n_per, 0.0)
        self.force_scale = np.where(atom_has_f, np.sqrt(weights.forces / nf), 0.0)[:, None]
        self.reference_energies = np.where(data.has_energy, data.energies, 0.0)

    def residuals(self, x):
        from lattenb.predict import predict
        self.vector.set(x)
        E, F, _, _ = predict(self.model, self.data)
        return np.concatenate([self.energy_scale * (E - self.reference_energies),
                               (self.force_scale * (F - self.data.forces)).ravel()])

    def loss(self, x, r):
        return float(r @ r + self.weights.l2 * np.sum(self.mask * x * x))

    def jvp(self, x, r, v):
        """J v by a one-sided difference from the residuals r at x (clipped to the bounds)."""
        eps = FD_STEP / max(float(np.sqrt(v @ v)), 1e-300)
        return (self.residuals(np.clip(x + eps * v, self.lower, self.upper)) - r) / eps

    def vjp(self, u):
        """J^T u at the model's parameters, as a packed vector (frozen entries zero)."""
        from lattenb.loss import adjoint_gradient
        from lattenb.steps import TRAINING_CHUNKS
        n_frames = self.data.n_frames
        delta = np.ascontiguousarray(u[n_frames:].reshape(-1, 3) * self.force_scale)
        grad = adjoint_gradient(self.model, self.data, u[:n_frames] * self.energy_scale, delta,
                                n_chunks=TRAINING_CHUNKS)
        return self.vector.gradient(grad)


def lm_minimise(run, cg_steps, seed=0):
    """Levenberg-Marquardt in place of `_LbfgsRun.minimise`: every accepted step is one
    'iteration' of the run (its callback validates, logs, keeps the best and stops at the time
    limit)."""
    maps = ResidualMap(run.vector, run.data, run.weights)
    l2, mask = run.weights.l2, maps.mask
    rng = np.random.default_rng(seed)
    x = np.array(run.x0, dtype=float)
    r = maps.residuals(x)
    loss = maps.loss(x, r)
    lam, nu, diag, steps = 1e-2, 2.0, None, 0
    run.stats = {"cg_steps": 0, "outer_steps": 0, "rejected": 0}
    try:
        while True:
            run.vector.set(x)
            g = maps.vjp(r) + l2 * mask * x                  # half the loss gradient
            at_lower = (x <= maps.lower + 1e-12) & (g > 0)
            at_upper = (x >= maps.upper - 1e-12) & (g < 0)
            free = ~run.vector.frozen & ~at_lower & ~at_upper
            if diag is None or steps % DIAGONAL_EVERY == 0:
                probes = [maps.vjp(rng.choice([-1.0, 1.0], size=r.size)) ** 2
                          for _ in range(DIAGONAL_PROBES)]
                diag = np.mean(probes, axis=0) + l2 * mask
                diag = np.maximum(diag, 1e-6 * diag.max())
            inverse = np.where(free, 1.0 / (diag * (1.0 + lam)), 0.0)
            p, Jp = np.zeros_like(x), np.zeros_like(r)
            residual = -g * free
            z = inverse * residual
            d = z.copy()
            rz = residual @ z
            for _ in range(cg_steps):
                Jd = maps.jvp(x, r, d)
                run.vector.set(x)
                Ad = (maps.vjp(Jd) + (l2 * mask + lam * diag) * d) * free
                run.stats["cg_steps"] += 1
                dAd = d @ Ad
                if dAd <= 0.0:
                    break
                alpha = rz / dAd
                p += alpha * d
                Jp += alpha * Jd
                residual -= alpha * Ad
                z = inverse * residual
                rz_next = residual @ z
                if rz_next < 1e-8 * rz:
                    break
                d = z + (rz_next / rz) * d
                rz = rz_next
            x_new = np.clip(x + p, maps.lower, maps.upper)
            r_new = maps.residuals(x_new)
            loss_new = maps.loss(x_new, r_new)
            predicted = -(2.0 * p @ g + Jp @ Jp + l2 * np.sum(mask * p * p))
            rho = (loss - loss_new) / predicted if predicted > 0 else -1.0
            steps += 1
            run.stats["outer_steps"] += 1
            if rho > 0:
                x, r, loss = x_new, r_new, loss_new
                lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                nu = 2.0
                run.vector.set(x)
                run.objective.f_hist.append(loss)
                run.callback(x)                  # raises StopIteration at the time limit
            else:
                run.stats["rejected"] += 1
                lam *= nu
                nu *= 2.0
                if time.perf_counter() - run.t_start > run.max_time:
                    break
    except StopIteration:
        pass
    run.vector.set(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a fitted AcAc model (plain lattenb fit) to continue from")
    ap.add_argument("--method", choices=("gn", "lbfgs"), required=True)
    ap.add_argument("--time", type=float, default=480.0, help="seconds")
    ap.add_argument("--cg", type=int, default=20, help="CG steps per Gauss-Newton step")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--tag", required=True)
    args = ap.parse_args()
    import numba
    from ase.io import read

    from lattenb import training
    from lattenb.auto import MOLECULE_L2, read_e0, split_validation
    from lattenb.model import load_model
    if args.threads:
        numba.set_num_threads(args.threads)
    stats = {}
    if args.method == "gn":
        def minimise(run, max_iter):
            lm_minimise(run, args.cg)
            stats.update(run.stats)
        training._LbfgsRun.minimise = minimise
    train, valid = split_validation(read(DATA / "train_300K.xyz", ":"))
    model = training.fit(train, valid=valid, model=load_model(args.model), max_time=args.time,
                         max_iter=None, l2=MOLECULE_L2, e0=read_e0(DATA / "isolated_atoms.xyz"),
                         solve_output=False, adam_epochs=0, adam_time=0,
                         log=lambda line: print(line, flush=True))
    out = {"method": args.method, "cg_steps_per_step": args.cg if args.method == "gn" else None,
           "start_model": str(args.model), "time_s": args.time, "threads": numba.get_num_threads(),
           "iterations": model.fit_info["iterations"], "stats": stats, "curve": model.fit_curve}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"gauss_newton_{args.tag}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
