"""Hot MD stability: NVT at twice the highest training temperature, the closest approach of any two
atoms against the core repulsion's inner radius, and the extrapolation grade along the way.

    python benchmarks/hot_md.py Ni.npz Cu.npz Li.npz Mo.npz [--ps 20] [--dt 0.5] \
        [-o benchmarks/results/hot_md]

Each model is one element's plain `lattenb fit` model (with its core repulsion and active set).
The crystal is the element's ground state from ASE (fcc Ni, Cu: 3x3x3 cubic cells, 108 atoms;
bcc Li, Mo: 4x4x4, 128 atoms) at ASE's lattice constant, run with ASE's Langevin thermostat
(friction 0.01/fs) at 2 x the highest AIMD temperature of the element's mlearn training data
(`TRAINING_MAX_K`). Every step records the smallest ratio d_ij / r_in over all pairs (r_in: the
repulsion's inner radius, below which ZBL acts whole) and d_ij / r_out; every step the largest
extrapolation grade. Writes OUT.json, OUT.md (table) and OUT.png (with matplotlib).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.constraints import FixCom
from ase.md.velocitydistribution import Stationary

try:
    from ase.md.velocitydistribution import thermalize_momenta as thermalise
except ImportError:        # ASE < 3.28
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalise

import lattenb

#: highest AIMD temperature (K) in each element's mlearn training set: the descriptions of the
#: Li and Mo frames ("AIMD NVT simulation at 907 K"); Ni and Cu frames carry none, their test
#: frames name 300, 1000 and 3000 K (Zuo et al.'s protocol runs the same temperatures for
#: training and test)
TRAINING_MAX_K = {"Ni": 3000.0, "Cu": 3000.0, "Li": 907.0, "Mo": 6000.0}
CELLS = {"fcc": 3, "bcc": 4}


def crystal(symbol):
    from ase.data import reference_states, atomic_numbers
    state = reference_states[atomic_numbers[symbol]]
    return bulk(symbol, cubic=True).repeat(CELLS[state["symmetry"]])


def closest_ratios(atoms, r_in, r_out):
    """(min d/r_in, min d/r_out, min d) over all pairs, minimum image in the orthorhombic cell."""
    x = atoms.positions
    lengths = np.diag(atoms.cell.array)
    d = x[:, None, :] - x[None, :, :]
    d -= lengths * np.round(d / lengths)
    r = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
    np.fill_diagonal(r, np.inf)
    m = r.min()
    return m / r_in, m / r_out, m


def run(path, ps, dt_fs, factor, seed, log):
    model = lattenb.load(path)
    if len(model.species) != 1:
        raise SystemExit(f"{path}: a one-element model is expected, got {model.species}")
    symbol = model.species[0]
    if model.repulsion == "none":
        raise SystemExit(f"{path}: the model has no core repulsion")
    r_in, r_out = model.repulsion_radii[0][0]
    temperature = factor * TRAINING_MAX_K[symbol]
    atoms = crystal(symbol)
    atoms.calc = model.calculator()
    rng = np.random.default_rng(seed)
    thermalise(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, dt_fs * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                   fixcm=False, rng=rng)
    n_steps = int(round(ps * 1000 / dt_fs))
    rec = {"step": [], "t_ps": [], "min_over_r_in": [], "min_over_r_out": [], "grade": [],
           "temperature_K": [], "epot_per_atom": []}
    worst = {"min_over_r_in": np.inf, "min_distance": np.inf, "max_grade": 0.0}

    def observe():
        a, b, m = closest_ratios(atoms, r_in, r_out)
        g = atoms.calc.results.get("extrapolation_grade", np.nan)
        worst["min_over_r_in"] = min(worst["min_over_r_in"], a)
        worst["min_distance"] = min(worst["min_distance"], m)
        worst["max_grade"] = max(worst["max_grade"], g)
        if dyn.nsteps % 50 == 0:
            rec["step"].append(dyn.nsteps)
            rec["t_ps"].append(dyn.nsteps * dt_fs / 1000)
            rec["min_over_r_in"].append(a)
            rec["min_over_r_out"].append(b)
            rec["grade"].append(g)
            rec["temperature_K"].append(atoms.get_temperature())
            rec["epot_per_atom"].append(atoms.get_potential_energy() / len(atoms))
        if dyn.nsteps % 5000 == 0:
            log(f"{symbol} {temperature:.0f} K step {dyn.nsteps}/{n_steps}: T "
                f"{atoms.get_temperature():.0f} K, closest {m:.3f} Å (r_in {r_in:.3f}), "
                f"grade {g:.2f}")

    atoms.get_potential_energy()
    dyn.attach(observe, interval=1)
    t0 = time.perf_counter()
    dyn.run(n_steps)
    wall = time.perf_counter() - t0
    return {"element": symbol, "model": str(path), "atoms": len(atoms),
            "temperature_K": temperature, "training_max_K": TRAINING_MAX_K[symbol],
            "ps": ps, "dt_fs": dt_fs, "steps": n_steps, "r_in": r_in, "r_out": r_out,
            "min_distance": worst["min_distance"], "min_over_r_in": worst["min_over_r_in"],
            "inside_r_in": bool(worst["min_over_r_in"] < 1.0), "max_grade": worst["max_grade"],
            "mean_temperature_K": float(np.mean(rec["temperature_K"][len(rec["step"]) // 5:])),
            "wall_s": wall, "trace": rec}


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for r in results:
        t = r["trace"]
        label = f"{r['element']} {r['temperature_K']:.0f} K"
        axes[0].plot(t["t_ps"], t["min_over_r_in"], label=label, lw=0.8)
        axes[1].plot(t["t_ps"], t["grade"], label=label, lw=0.8)
    axes[0].axhline(1.0, color="k", ls="--", lw=0.8)
    axes[0].set_ylabel("closest pair / r_in")
    axes[0].set_title("NVT at 2 x the highest training temperature (sampled every 50 steps)")
    axes[1].axhline(1.0, color="k", ls="--", lw=0.8)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("max extrapolation grade")
    axes[1].set_xlabel("time (ps)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--ps", type=float, default=20.0)
    p.add_argument("--dt", type=float, default=0.5, help="time step in fs")
    p.add_argument("--factor", type=float, default=2.0, help="x the highest training temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="benchmarks/results/hot_md")
    p.add_argument("--merge", action="store_true",
                   help="the arguments are JSON outputs of earlier runs: write them as one")
    args = p.parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)
    if args.merge:
        results = [r for path in args.models for r in json.loads(Path(path).read_text())["runs"]]
    else:
        results = [run(m, args.ps, args.dt, args.factor, args.seed, log) for m in args.models]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
            "lattenb": getattr(lattenb, "__version__", None)}
    # one line per run: the traces are long
    out.with_suffix(".json").write_text("{\n" + ",\n".join(
        [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()]
        + ['"runs": [\n' + ",\n".join(json.dumps(r) for r in results) + "\n]"]) + "\n}\n")
    lines = ["| element | atoms | T (K) | steps | closest pair (Å) | r_in (Å) | closest / r_in | "
             "inside r_in | max grade | wall (s) |", "|---" * 10 + "|"]
    for r in results:
        lines.append(f"| {r['element']} | {r['atoms']} | {r['temperature_K']:.0f} | {r['steps']} | "
                     f"{r['min_distance']:.3f} | {r['r_in']:.3f} | {r['min_over_r_in']:.2f} | "
                     f"{'yes' if r['inside_r_in'] else 'never'} | {r['max_grade']:.1f} | "
                     f"{r['wall_s']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        plot(results, out.with_suffix(".png"))
    except ImportError:
        log("matplotlib not installed: no picture")


if __name__ == "__main__":
    main()
