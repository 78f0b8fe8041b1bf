"""The NbMoTaW alloy benchmark (Li et al. 2020, unary and binary data) and the species modes.

    python benchmarks/nbmotaw.py --species-mode pair --time 30m --tag pair
    python benchmarks/nbmotaw.py --species-mode embedding --time 30m --tag embedding
    python benchmarks/nbmotaw.py --species-mode pair --leave-out NbMo --time 10m --tag pair_noNbMo
    python benchmarks/nbmotaw.py --table pair embedding pair_noNbMo embedding_noNbMo
    python benchmarks/nbmotaw.py --scaling      # parameters and µs/atom/step for 1-16 species
    python benchmarks/nbmotaw.py --memory       # bytes per training atom, s per iteration

Fit: what plain `lattenb fit train.xyz --species-mode MODE --time T` does (cutoff, radial family,
stress offset and validation split chosen from the training data, `lattenb.cli.fit_settings`);
never a look at the test file. `--leave-out NbMo` drops every training structure that holds
exactly those two elements (the unseen-chemistry experiment) and reports that binary's test
structures separately. Test: ../shared/data/nbmotaw/test_unary_binary.xyz, with the published
SNAP re-evaluated on it (data README): energy MAE |dE|/N per structure (meV/atom), force MAE
over components (eV/Å), stress MAE over the six Voigt components (GPa). Cost: µs/atom/step of
energy + forces + stress on one thread, as bench_md.py measures. Writes
benchmarks/results/nbmotaw_<tag>.{json,npz} and, with --table, nbmotaw.md.
"""
import argparse
import json
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nbmotaw"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))    # bench_md, mlearn

#: ../shared/data/nbmotaw/README.md: the published SNAP on test_unary_binary.xyz (fitted on more
#: data than train.xyz: also ternary and quaternary cells)
SNAP = {"energy_mae": 5.06, "force_mae": 0.109, "stress_mae": 0.522}
SPECIES = ["Nb", "Mo", "Ta", "W"]
#: 16 elements for the scaling table (bcc and neighbouring transition metals)
SCALING_SPECIES = ["Nb", "Mo", "Ta", "W", "V", "Cr", "Ti", "Zr", "Hf", "Re", "Fe", "Ru", "Os", "Rh",
                   "Ir", "Pt"]


def elements_of(atoms):
    return frozenset(atoms.get_chemical_symbols())


def parse_pair(text):
    """"NbMo" -> frozenset({"Nb", "Mo"})."""
    import re
    symbols = re.findall(r"[A-Z][a-z]?", text)
    if len(symbols) != 2 or set(symbols) - set(SPECIES) or symbols[0] == symbols[1]:
        raise SystemExit(f"--leave-out takes two of {SPECIES}, e.g. NbMo; got {text!r}")
    return frozenset(symbols)


def errors(model, frames):
    from lattenb.evaluation import evaluate_frames
    row = evaluate_frames(model, frames, groups=False)["all"]
    return {"structures": row["structures"], "energy_mae": row["energy_meV_per_atom"]["mae"],
            "force_mae": row["forces_eV_per_A"]["mae"], "stress_mae": row["stress_GPa"]["mae"]}


def n_parameters(model):
    """(trainable parameters, of which species weights)."""
    species = sum(model.params[n].size for n in model.species_parameter_names)
    total = sum(v.size for k, v in model.params.items() if k not in ("g_mean", "g_std"))
    return total, species


def fit_run(args):
    import numba
    from ase.io import read

    import lattenb
    from lattenb import cli
    from mlearn import cost_us_per_atom
    if args.threads:
        numba.set_num_threads(args.threads)
    frames = read(DATA / "train.xyz", ":")
    test = read(DATA / "test_unary_binary.xyz", ":")
    left_out = parse_pair(args.leave_out) if args.leave_out else None
    if left_out:
        frames = [a for a in frames if elements_of(a) != left_out]
    ns = cli.build_parser().parse_args(
        ["fit", str(DATA / "train.xyz"), "-o", "unused.npz", "--time", args.time,
         "--species-mode", args.species_mode, "--seed", str(args.seed)])
    train, valid, auto = cli.fit_settings(ns, frames)
    t0 = time.perf_counter()
    model = lattenb.fit(train, valid=valid, preset="fast", seed=args.seed, max_iter=None,
                        species_mode=args.species_mode, max_time=cli.parse_duration(args.time),
                        pair_radial=args.pair_radial or None,
                        log=lambda line: print(f"  [{args.tag}] {line}", flush=True), log_every=50,
                        **auto)
    wall = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    model.save(RESULTS / f"nbmotaw_{args.tag}.npz")
    groups = {"all": test, "unary": [a for a in test if len(elements_of(a)) == 1],
              "binary": [a for a in test if len(elements_of(a)) == 2]}
    if left_out:
        groups["left-out pair"] = [a for a in test if elements_of(a) == left_out]
        groups["seen"] = [a for a in test if elements_of(a) != left_out]
    total, species = n_parameters(model)
    row = {"tag": args.tag, "species_mode": model.species_mode,
           "embedding_dim": model.embedding_dim if model.species_mode == "embedding" else None,
           "pair_radial": model.pair_radial,
           "leave_out": "".join(sorted(left_out)) if left_out else None,
           "train_structures": len(train), "train_atoms": int(sum(len(a) for a in train)),
           "valid": errors(model, valid), "test": {k: errors(model, v) for k, v in groups.items()},
           "parameters": total, "species_parameters": species, "train_wall_s": wall,
           "iterations": model.fit_info["iterations"], "stopped": model.fit_info["stopped"],
           "threads": numba.get_num_threads(), "cutoff": model.cutoff, "radial": model.radial,
           "blocks": model.blocks, "hidden": list(model.hidden),
           "cost_us_per_atom_step": cost_us_per_atom(model, test),
           "date": str(date.today()),
           "machine": f"{platform.machine()}, {numba.config.NUMBA_DEFAULT_NUM_THREADS} cores"}
    (RESULTS / f"nbmotaw_{args.tag}.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row["test"], indent=1))


def table(tags):
    rows = [json.loads((RESULTS / f"nbmotaw_{t}.json").read_text()) for t in tags]
    lines = ["| model | trained on | test E MAE (meV/atom) | F MAE (eV/Å) | stress MAE (GPa) | "
             "left-out pair E / F | parameters (species weights) | iterations, time, threads | "
             "µs/atom/step |", "|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| SNAP (published, re-evaluated) | train.xyz + ternary/quaternary SQS | "
                 f"{SNAP['energy_mae']} | {SNAP['force_mae']} | {SNAP['stress_mae']} | | | | |")
    for r in rows:
        t = r["test"]["all"] if not r["leave_out"] else r["test"]["seen"]
        out = r["test"].get("left-out pair")
        mode = (r["species_mode"] + (f" (d={r['embedding_dim']})" if r["embedding_dim"] else "")
                + (", radial per species pair" if r.get("pair_radial") else ""))
        lines.append(
            f"| lattenb {mode} | " + (f"train.xyz without {r['leave_out']}" if r["leave_out"]
                                      else "train.xyz") + " | "
            f"{t['energy_mae']:.2f} | {t['force_mae']:.3f} | {t['stress_mae']:.3f} | "
            + (f"{out['energy_mae']:.1f} / {out['force_mae']:.3f}" if out else "") + " | "
            f"{r['parameters']} ({r['species_parameters']}) | {r['iterations']}, "
            f"{r['train_wall_s'] / 60:.0f} min, {r['threads']} | "
            f"{r['cost_us_per_atom_step']:.1f} |")
    lines += ["", "Rows with a left-out pair show the errors on the other test structures; the "
              "left-out pair's own errors are in their column.", ""]
    text = "\n".join(lines)
    (RESULTS / "nbmotaw.md").write_text(text)
    print(text)


def scaling(threads=1):
    """Parameters and µs/atom/step of the fast preset for 1, 2, 4, 8, 16 species, each mode, on
    a random 250-atom bcc alloy (5x5x5 cubic cells, a = 3.2 Å, thermal displacements)."""
    import numba
    from ase.build import bulk

    from bench_md import time_lattenb
    from lattenb import LatteModel
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    atoms = bulk("Nb", "bcc", a=3.2, cubic=True) * (5, 5, 5)
    rows = []
    for S in (1, 2, 4, 8, 16):
        species = SCALING_SPECIES[:S]
        alloy = atoms.copy()
        alloy.symbols = rng.choice(species, len(alloy))
        for mode in ("pair", "embedding"):
            model = LatteModel.preset("fast", species, species_mode=mode)
            model.compute(alloy.positions, alloy.cell.array, alloy.pbc, alloy.numbers)  # warm-up
            cost = time_lattenb(model, alloy, 20, 5, skin=0.0)
            total, part = n_parameters(model)
            rows.append({"species": S, "mode": mode, "parameters": total,
                         "species_parameters": part, "us_per_atom_step": cost})
            print(rows[-1], flush=True)
    lines = ["| species | pair: parameters (species weights) | embedding: parameters (species "
             "weights) | pair µs/atom/step | embedding µs/atom/step |", "|---|---|---|---|---|"]
    for S in (1, 2, 4, 8, 16):
        p, e = (next(r for r in rows if r["species"] == S and r["mode"] == m)
                for m in ("pair", "embedding"))
        lines.append(f"| {S} | {p['parameters']} ({p['species_parameters']}) | {e['parameters']} "
                     f"({e['species_parameters']}) | {p['us_per_atom_step']:.1f} | "
                     f"{e['us_per_atom_step']:.1f} |")
    text = "\n".join(lines)
    (RESULTS / "nbmotaw_scaling.json").write_text(json.dumps(
        {"rows": rows, "threads": threads, "date": str(date.today()),
         "machine": platform.machine()}, indent=1))
    (RESULTS / "nbmotaw_scaling.md").write_text(text + "\n")
    print(text)


def memory_of_mode(mode, threads=None):
    """One row of `memory`, measured in this process (its peak resident memory must be this
    mode's alone, so `memory` runs each mode in a fresh process)."""
    import numba
    from ase.io import read

    from lattenb import LatteModel
    from lattenb.auto import choose_cutoff
    from lattenb.dataset import prepare_dataset
    from lattenb.loss import LossWeights, loss_and_gradient
    from lattenb.steps import standardise
    if threads:
        numba.set_num_threads(threads)
    frames = read(DATA / "train.xyz", ":")
    n_atoms = sum(len(a) for a in frames)
    cutoff, _ = choose_cutoff(frames)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = LatteModel.preset("fast", SPECIES, cutoff=cutoff, species_mode=mode)
    data = prepare_dataset(frames, model, keep_pairs=True)
    standardise(model, data)
    loss_and_gradient(model, data, LossWeights())          # JIT and the pair sort
    stored = data.nbytes      # arrays and sorted pairs (before 2026-12-02 the pairs were missed)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss_and_gradient(model, data, LossWeights())
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    return {"mode": mode, "atoms": n_atoms, "dataset_bytes_per_atom": stored / n_atoms,
            "peak_rss_bytes_per_atom": peak / n_atoms,
            "seconds_per_iteration": float(np.median(times)),
            "threads": numba.get_num_threads(), "cutoff": cutoff}


def memory(threads=None):
    """Bytes per training atom (the prepared dataset with its sorted pairs, and the peak resident
    memory of a loss + gradient above the loaded frames) and seconds per loss + gradient (what one
    L-BFGS iteration costs, median of 3 after a warm-up) on the full train.xyz, for each mode,
    each in its own process."""
    import subprocess
    import sys
    rows = []
    for mode in ("pair", "embedding"):
        command = [sys.executable, __file__, "--memory-of", mode]
        if threads:
            command += ["--threads", str(threads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    (RESULTS / "nbmotaw_memory.json").write_text(json.dumps(
        {"rows": rows, "date": str(date.today()), "machine": platform.machine()}, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--species-mode", default="pair", choices=("pair", "embedding"))
    ap.add_argument("--time", default="30m", help="training time budget (30m, 2h, ...)")
    ap.add_argument("--leave-out", metavar="PAIR", help="drop this binary's training structures, "
                    "e.g. NbMo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pair-radial", action="store_true",
                    help="radial functions per species pair (lattenb fit --pair-radial)")
    ap.add_argument("--threads", type=int, help="Numba threads (default: all)")
    ap.add_argument("--tag", help="results/nbmotaw_<tag>.json (default: the species mode)")
    ap.add_argument("--table", nargs="+", metavar="TAG", help="write results/nbmotaw.md from runs")
    ap.add_argument("--scaling", action="store_true", help="the species-count scaling table")
    ap.add_argument("--memory", action="store_true", help="memory and time per iteration")
    ap.add_argument("--memory-of", choices=("pair", "embedding"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        return table(args.table)
    if args.scaling:
        return scaling(args.threads or 1)
    if not DATA.is_dir():
        raise SystemExit(f"NbMoTaW data not found at {DATA}")
    if args.memory_of:
        return print(json.dumps(memory_of_mode(args.memory_of, args.threads)))
    if args.memory:
        return memory(args.threads)
    args.tag = args.tag or args.species_mode + (f"_no{args.leave_out}" if args.leave_out else "")
    fit_run(args)


if __name__ == "__main__":
    main()
