"""A committee of fits against its members: accuracy and cost of `lattenb merge`.

    python benchmarks/committee.py acac MEMBER.npz MEMBER.npz --tag T   # AcAc protocol
    python benchmarks/committee.py Ni MEMBER.npz MEMBER.npz --tag T     # an mlearn element

Merges the members (`lattenb.committee.merge_models`, equal weights) and evaluates the members
and the merged model on the same data: the validation split the fits used (every 10th training
structure, `--split`) and the test sets, with each data set's own metrics (AcAc: RMSE of the
energy per molecule and of the force components on test_MD_300K and test_MD_600K; mlearn: MAE of
the energy per atom and of the force components on <El>_test.xyz), the correlation of the
members' force-component errors on validation, and the cost per MD step of every model (energy
+ forces + stress, one thread, as `bench_md.py` measures, on the structure acac.py or mlearn.py
times on), the three timed in turn, twice, median of the rounds.

Writes benchmarks/results/committee_<tag>.{json,md} and the merged model committee_<tag>.npz.
"""
import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


def residuals(model, frames):
    """(energy residuals per structure eV, force-component residuals eV/Å, atoms per structure)."""
    from lattenb.dataset import prepare_dataset
    from lattenb.predict import predict
    data = prepare_dataset(frames, model)
    E, F, _, _ = predict(model, data)
    return E - data.energies, (F - data.forces).ravel(), data.n_atoms_per_frame


def metrics(kind, dE, dF, n):
    """Of `residuals`: AcAc (energy RMSE meV/molecule, force RMSE meV/Å); mlearn (energy MAE
    meV/atom, force MAE eV/Å), Zuo et al.'s metrics."""
    if kind == "acac":
        return 1000 * float(np.sqrt(np.mean(dE ** 2))), 1000 * float(np.sqrt(np.mean(dF ** 2)))
    return 1000 * float(np.mean(np.abs(dE / n))), float(np.mean(np.abs(dF)))


def validation(frames, split):
    """The validation structures of a training file as the members' fits took them: "plain"
    (plain `lattenb fit`, `lattenb.auto.split_validation`: structures 9, 19, ...) or "setting"
    (`mlearn.py`'s benchmark setting: structures 0, 10, ...)."""
    from lattenb.auto import split_validation
    return split_validation(frames)[1] if split == "plain" else frames[::10]


def data_sets(kind, split):
    """{name: frames}: the validation split and the test sets of `kind`."""
    from ase.io import read
    if kind == "acac":
        train = read(SHARED / "acac" / "train_300K.xyz", ":")
        return {"valid": validation(train, split),
                "test_300K": read(SHARED / "acac" / "test_MD_300K.xyz", ":"),
                "test_600K": read(SHARED / "acac" / "test_MD_600K.xyz", ":")}
    train = read(SHARED / "mlearn" / f"{kind}_train.xyz", ":")
    return {"valid": validation(train, split),
            "test": read(SHARED / "mlearn" / f"{kind}_test.xyz", ":")}


def cost(kind, model, sets):
    if kind == "acac":
        from acac import cost_us_per_atom
        return cost_us_per_atom(model)
    from mlearn import cost_us_per_atom
    return cost_us_per_atom(model, sets["test"])


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", help="acac, or an mlearn element (Ni, Cu, Li, Mo)")
    ap.add_argument("members", nargs="+", help="model files of one setting")
    ap.add_argument("--split", choices=("plain", "setting"),
                    help="the validation split the members were fitted with: plain `lattenb "
                         "fit`'s (default for acac, whose acac.py runs plain fit) or mlearn.py's "
                         "benchmark setting's (default for an element)")
    ap.add_argument("--tag", required=True)
    args = ap.parse_args()
    import lattenb
    from lattenb.committee import merge_models
    members = [lattenb.load(p) for p in args.members]
    merged = merge_models(members)
    RESULTS.mkdir(parents=True, exist_ok=True)
    merged.save(RESULTS / f"committee_{args.tag}.npz")
    split = args.split or ("plain" if args.kind == "acac" else "setting")
    sets = data_sets(args.kind, split)
    names = [Path(p).stem for p in args.members] + ["committee"]
    models = members + [merged]
    res = {name: {s: residuals(m, frames) for s, frames in sets.items()}
           for name, m in zip(names, models)}
    rows = {name: {s: metrics(args.kind, *r) for s, r in res[name].items()} for name in names}
    correlation = float(np.corrcoef(res[names[0]]["valid"][1], res[names[1]]["valid"][1])[0, 1])
    timings = {name: [] for name in names}
    for _ in range(2):
        for name, m in zip(names, models):
            timings[name].append(cost(args.kind, m, sets))
    for name in names:
        rows[name]["cost_us_per_atom_step"] = float(np.median(timings[name]))
    result = {"kind": args.kind, "members": args.members, "split": split, "rows": rows,
              "valid_force_error_correlation": correlation,
              "date": str(date.today()), "machine": f"{platform.machine()}, "
                                                    f"{__import__('os').cpu_count()} cores"}
    (RESULTS / f"committee_{args.tag}.json").write_text(json.dumps(result, indent=1))
    unit = ("RMSE, energy meV/molecule, forces meV/Å" if args.kind == "acac"
            else "MAE, energy meV/atom, forces eV/Å")
    cols = list(sets)
    lines = ["| model | " + " | ".join(f"{c} E / F" for c in cols) + " | µs/atom/step |",
             "|---|" + "---|" * (len(cols) + 1)]
    fmt = "{:.2f} / {:.1f}" if args.kind == "acac" else "{:.2f} / {:.4f}"
    for name in names:
        lines.append(f"| {name} | " + " | ".join(fmt.format(*rows[name][c]) for c in cols)
                     + f" | {rows[name]['cost_us_per_atom_step']:.1f} |")
    lines += ["", f"{unit}; cost on one thread (median of two rounds, the models timed in turn). "
              f"Correlation of the members' validation force errors: {correlation:.2f}. "
              f"{result['date']}, {result['machine']}."]
    (RESULTS / f"committee_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
