"""What the short-range wall and the coordination terms cost in accuracy: test errors of fitted
models with them and without them (the same model otherwise: `fit` adds both last,
`lattenb.short_range`).

    python benchmarks/wall_accuracy.py MODEL.npz=TEST.xyz[,TEST2.xyz] ... [--tag TAG]

For every model and test file: energy MAE (meV/atom) and force MAE and RMSE (eV/Å), with the
wall and coordination terms and with both removed, the share of test structures the wall reaches
(a pair inside its reach) and the share the coordination terms change (an atom outside the
training data's coordination range: energy or a force differs), and the summary from the fit
(`fit_info["short_range"]`).
Writes results/wall_accuracy_<tag>.{json,md}.
"""
import argparse
import copy
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def errors(model, frames):
    """Test errors of `model` on `frames`: `lattenb.evaluation.evaluate_frames`' overall row."""
    from lattenb.evaluation import evaluate_frames
    row = evaluate_frames(model, frames, groups=False)["all"]
    return {"E_MAE_meV_per_atom": row["energy_meV_per_atom"]["mae"],
            "F_MAE_eV_per_A": row["forces_eV_per_A"]["mae"],
            "F_RMSE_eV_per_A": row["forces_eV_per_A"]["rmse"]}


def reached(model, frames):
    """How many of `frames` have a pair inside the reach of a term of the model's wall whose
    coefficient is not zero."""
    from lattenb.dataset import prepare_dataset
    from lattenb.short_range import wall_energies
    if model.repulsion_wall is None:
        return 0
    wall = np.array(model.repulsion_wall)
    data = prepare_dataset(frames, model)
    upper = np.triu_indices(len(wall))
    used = wall[upper][..., 1] > 0                                  # (U, K)
    basis = wall_energies(model, data, wall[..., 0])                # (F, U, K)
    return int(np.sum((basis * used).reshape(len(frames), -1).max(axis=1) > 0))


def coordination_reached(model, frames):
    """How many of `frames` the model's coordination terms change (energy or any force differs
    from the model without them)."""
    from lattenb.dataset import prepare_dataset
    from lattenb.predict import predict
    if model.repulsion_coordination is None:
        return 0
    without = copy.deepcopy(model)
    without.set_repulsion(model.repulsion, model.repulsion_radii, model.repulsion_wall)
    data = prepare_dataset(frames, model)
    (e1, f1), (e0, f0) = (predict(m, data)[:2] for m in (model, without))
    changed = (e1 != e0) | np.bincount(data.frame_of_atom, np.any(f1 != f0, axis=1),
                                       len(frames)).astype(bool)
    return int(changed.sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", metavar="MODEL=TEST[,TEST]")
    ap.add_argument("--tag", default="models")
    args = ap.parse_args()
    import lattenb
    from ase.io import read
    report, lines = {}, []
    lines.append("| model | test file | structures the wall reaches | structures the coordination "
                 "terms change | E MAE with / without (meV/atom) "
                 "| F MAE with / without (eV/Å) | F RMSE with / without (eV/Å) |")
    lines.append("|---|---|---|---|---|---|---|")
    for pair in args.pairs:
        path, tests = pair.split("=", 1)
        model = lattenb.load(path)
        if model.repulsion_wall is None and model.repulsion_coordination is None:
            raise SystemExit(f"{path}: the model has no wall and no coordination terms")
        plain = copy.deepcopy(model)
        plain.set_repulsion(model.repulsion, model.repulsion_radii)
        for test in tests.split(","):
            frames = read(test, ":")
            row = {"with_wall": errors(model, frames), "without_wall": errors(plain, frames),
                   "structures": len(frames), "reached": reached(model, frames),
                   "coordination_changes": coordination_reached(model, frames),
                   "fit_summary": model.fit_info.get("short_range")}
            report[f"{Path(path).name}: {Path(test).name}"] = row
            w, o = row["with_wall"], row["without_wall"]
            lines.append(f"| {Path(path).name} | {Path(test).name} | {row['reached']} of "
                         f"{row['structures']} | {row['coordination_changes']} of "
                         f"{row['structures']} | {w['E_MAE_meV_per_atom']:.3f} / "
                         f"{o['E_MAE_meV_per_atom']:.3f} | {w['F_MAE_eV_per_A']:.4f} / "
                         f"{o['F_MAE_eV_per_A']:.4f} | {w['F_RMSE_eV_per_A']:.4f} / "
                         f"{o['F_RMSE_eV_per_A']:.4f} |")
            print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"wall_accuracy_{args.tag}.json").write_text(json.dumps(report, indent=1))
    (RESULTS / f"wall_accuracy_{args.tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
