"""Active learning on real data: fit on a small part of an mlearn training set, run hot MD, select
the most informative structures of the rest of the set with `lattenb select`, add them, refit; and
the same number of random structures as the baseline.

    python benchmarks/active_learning.py [--element Ni] [--start 25] [-n 25] [--time 3m] \
        [-o benchmarks/results/active_learning_Ni]

The rest of the training set stands in for the structures one would compute with DFT (they come
labelled). Every step is a `lattenb` command, printed as it runs (the README's recipe). Reports,
for the start model, the selected refit and the random refit: test MAE (energy, forces), the
extrapolation grades of the test set, and the largest grade and closest approach in a hot NVT
run (benchmarks/hot_md.py at --md-factor x the highest training temperature, default 1: where the
full training set has data; --md-ps long).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase.io import read, write

sys.path.insert(0, str(Path(__file__).parent))
import hot_md  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mlearn"


def sh(args, log):
    log("$ " + " ".join(str(a) for a in args))
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def evaluate(model, test, log):
    report = json.loads(sh(["lattenb", "eval", model, test, "--grade", "--json"], log))[test]
    row = report["all"]
    return {"energy_mae_meV_atom": row["energy_meV_per_atom"]["mae"],
            "force_mae_eV_A": row["forces_eV_per_A"]["mae"],
            "test_grade_median": report["extrapolation"]["median"],
            "test_grade_max": report["extrapolation"]["max"],
            "test_above_1": report["extrapolation"]["above_1"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--element", default="Ni")
    p.add_argument("--start", type=int, default=25, help="structures in the first training set")
    p.add_argument("-n", type=int, default=25, help="structures to select")
    p.add_argument("--time", default="3m", help="time budget of each fit")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--md-ps", type=float, default=2.0, help="ps of hot MD per model")
    p.add_argument("--md-factor", type=float, default=1.0,
                   help="MD temperature as a multiple of the highest training temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default=None)
    p.add_argument("--work", default=None, help="folder for the files (default: next to -o)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the fitted models and picks already in the work folder")
    args = p.parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)
    out = Path(args.output or f"benchmarks/results/active_learning_{args.element}")
    work = Path(args.work or out.parent / f"{out.name}_files")
    work.mkdir(parents=True, exist_ok=True)
    train_all = read(DATA / f"{args.element}_train.xyz", ":")
    test = str(DATA / f"{args.element}_test.xyz")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train_all))
    start, rest = order[:args.start], order[args.start:]
    write(work / "start.xyz", [train_all[k] for k in start])
    write(work / "pool.xyz", [train_all[k] for k in rest])
    random_pick = rng.choice(len(rest), size=args.n, replace=False)
    write(work / "random.xyz", [train_all[rest[k]] for k in random_pick])
    fit = ["lattenb", "fit", "--time", args.time, "--threads", args.threads]
    t0 = time.perf_counter()

    def step(output, command):
        if not (args.reuse and (work / output).exists()):
            sh(command, log)
    step("start.npz", fit + [work / "start.xyz", "-o", work / "start.npz"])
    step("picked.xyz", ["lattenb", "select", work / "start.npz", work / "pool.xyz", "-n", args.n,
                        "-o", work / "picked.xyz"])
    step("selected.npz", fit + [work / "start.xyz", work / "picked.xyz", "-o",
                                work / "selected.npz"])
    step("random.npz", fit + [work / "start.xyz", work / "random.xyz", "-o", work / "random.npz"])
    picked = read(work / "picked.xyz", ":")
    rows = {}
    for name in ("start", "selected", "random"):
        model = str(work / f"{name}.npz")
        row = evaluate(model, test, log)
        md = hot_md.run(model, args.md_ps, 0.5, args.md_factor, args.seed, log)
        row.update(md_max_grade=md["max_grade"], md_min_over_r_in=md["min_over_r_in"],
                   md_temperature_K=md["temperature_K"], md_ps=args.md_ps)
        rows[name] = row
    result = {"date": time.strftime("%Y-%m-%d"), "element": args.element,
              "start_structures": args.start, "selected": len(picked), "fit_time": args.time,
              "threads": args.threads, "picked_grades": [a.info["extrapolation_grade"]
                                                         for a in picked],
              "picked_config_types": [a.info.get("config_type") for a in picked],
              "wall_s": time.perf_counter() - t0, "models": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"{args.element}: {args.start} random training structures, then +{len(picked)} "
             f"selected by `lattenb select` or +{args.n} random (each fit `--time {args.time}`, "
             f"{args.threads} thread)", "",
             "| model | E MAE (meV/atom) | F MAE (eV/Å) | test grade median | test grade max | "
             "test > 1 | hot MD max grade | hot MD closest / r_in |", "|---" * 8 + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['energy_mae_meV_atom']:.2f} | {r['force_mae_eV_A']:.4f} | "
                     f"{r['test_grade_median']:.2f} | {r['test_grade_max']:.2f} | "
                     f"{r['test_above_1']} | {r['md_max_grade']:.1f} | "
                     f"{r['md_min_over_r_in']:.2f} |")
    types = {t: result["picked_config_types"].count(t) for t in set(result["picked_config_types"])}
    lines += ["", f"picked config types: {types}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
