"""Transfer of learned radial filters between systems (s-NNP's shared filters; issue 16).

    python benchmarks/transfer.py --source-model benchmarks/results/mlearn_spline6_Ni.npz \
        --target Cu --time 300 --arms scratch,warm,fixed

Filters (the radial functions, `lattenb.radial`) learned on a source system start a fit on a
target system, against a fit from scratch with the same setting and the same wall-time budget:

    scratch  a new model, radial functions initialised as usual and trained
    warm     the source's radial functions as the start, trained (`fit(..., radial_from=...)`)
    fixed    the source's radial functions kept fixed (`train_radial=False`); the species
             weights sigma, which scale each body's function, and the MLP are trained

Data: the mlearn sets (../shared/data/mlearn), with benchmarks/mlearn.py's setting for the target
element (cutoff, MLP, loss weights, output solve, validation = every 10th training structure).
The source model must use the same radial family, blocks and a cutoff that holds its windows;
`--source-model` takes one (e.g. a model written by `benchmarks/mlearn.py --radial spline`),
otherwise the source element is fitted first with `--source-time`. Each arm runs at one Numba
thread (`--arms` lets two processes share a 2-core machine). Writes
benchmarks/results/transfer_<source>_<target>.{json,md,png} (the table, and the validation force
RMSE against wall time) and one file per arm, transfer_<source>_<target>.<arm>.json; arms run by
parallel processes (--arms) are put together by a last call with --merge.
"""
import argparse
import json
import time

import numpy as np

from mlearn import DATA, RESULTS, SETTING

ARMS = ("scratch", "warm", "fixed")


def fit_arm(arm, train, valid, source, cutoff, max_time, log_prefix):
    import lattenb
    t0 = time.perf_counter()
    model = lattenb.fit(train, valid=valid, preset=SETTING["preset"], cutoff=cutoff,
                        blocks=source.blocks, radial=source.radial, hidden=SETTING["hidden"],
                        weights=SETTING["weights"], output_weights=SETTING["output_weights"],
                        l2=SETTING["l2"], stress_offset=SETTING["stress_offset"],
                        seed=SETTING["seed"], max_iter=None, max_time=max_time,
                        radial_from=None if arm == "scratch" else source,
                        train_radial=arm != "fixed",
                        log=lambda line: print(f"  [{log_prefix}] {line}", flush=True),
                        log_every=25)
    return model, time.perf_counter() - t0


def curve_at(rows, times):
    """Validation force RMSE (eV/Å) of the last learning-curve row at or before each time (s)."""
    out = {}
    for t in times:
        before = [r for r in rows if r["time_s"] <= t and "valid_forces_eV_per_A" in r]
        out[str(t)] = before[-1]["valid_forces_eV_per_A"] if before else None
    return out


def plot(rows, path, title):
    from lattenb.plots import _pyplot
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        curve = r["curve"]
        ax.semilogy([c["time_s"] for c in curve], [c.get("valid_forces_eV_per_A", np.nan)
                                                   for c in curve], label=r["arm"])
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("validation force RMSE (eV/Å)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows, meta):
    lines = ["| arm | test E MAE (meV/atom) | test F MAE (eV/Å) | valid F RMSE at 1/4, 1/2, end "
             "of budget (eV/Å) | iterations |", "|---|---|---|---|---|"]
    for r in rows:
        at = " / ".join("–" if v is None else f"{v:.4f}" for v in r["valid_F_at"].values())
        lines.append(f"| {r['arm']} | {r['energy_mae']:.2f} | {r['force_mae']:.4f} | {at} | "
                     f"{r['iterations']} |")
    lines += ["", f"Source {meta['source']} ({meta['source_model']}), target {meta['target']}, "
              f"radial {meta['radial']}, blocks {meta['blocks']}, {meta['max_time_s']:.0f} s "
              f"per arm at one thread."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="Ni", help="source element (default Ni)")
    ap.add_argument("--source-model", help="model file of the source (default: fit it first)")
    ap.add_argument("--source-time", type=float, default=480, help="seconds for the source fit")
    ap.add_argument("--radial", default="spline", help="radial family of a source fitted here")
    ap.add_argument("--blocks", default="6,-:6,i,i:6,ij,ij:6,i,j,ij",
                    help="blocks of a source fitted here")
    ap.add_argument("--target", default="Cu")
    ap.add_argument("--time", type=float, default=300, help="seconds per arm")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--merge", action="store_true",
                    help="only merge the per-arm files of runs with --arms (parallel processes)")
    args = ap.parse_args()
    import numba
    from ase.io import read

    import lattenb
    from lattenb.evaluation import evaluate_frames
    numba.set_num_threads(1)
    arms = [a.strip() for a in args.arms.split(",")]
    if not set(arms) <= set(ARMS) or args.target not in SETTING["cutoffs"]:
        raise SystemExit(f"arms are {ARMS}; targets {list(SETTING['cutoffs'])}")
    if args.source_model:
        source = lattenb.load(args.source_model)
        source_name = args.source_model
    else:
        frames = read(DATA / f"{args.source}_train.xyz", ":")
        source = lattenb.fit([a for k, a in enumerate(frames) if k % 10], valid=frames[::10],
                             preset=SETTING["preset"], cutoff=SETTING["cutoffs"][args.source],
                             blocks=args.blocks, radial=args.radial, hidden=SETTING["hidden"],
                             weights=SETTING["weights"], stress_offset=SETTING["stress_offset"],
                             max_iter=None, max_time=args.source_time,
                             log=lambda line: print(f"  [source {args.source}] {line}", flush=True),
                             log_every=25)
        source_name = f"fitted here, {args.source_time:.0f} s"
    frames = read(DATA / f"{args.target}_train.xyz", ":")
    test = read(DATA / f"{args.target}_test.xyz", ":")
    valid = frames[::10]
    train = [a for k, a in enumerate(frames) if k % 10]
    cutoff = max(SETTING["cutoffs"][args.target], source.cutoff)
    meta = {"source": args.source, "source_model": source_name, "target": args.target,
            "radial": source.radial, "blocks": source.blocks, "cutoff": cutoff,
            "max_time_s": args.time}
    stem = RESULTS / f"transfer_{args.source}_{args.target}"
    rows = []
    if args.merge:        # the arms' own files (each process writes its arms' file)
        arms = []
        for arm in ARMS:
            path = stem.with_name(f"{stem.name}.{arm}.json")
            if path.is_file():
                part = json.loads(path.read_text())
                if part["meta"] == json.loads(json.dumps(meta)):
                    rows += part["rows"]
    for arm in arms:
        model, wall = fit_arm(arm, train, valid, source, cutoff, args.time, arm)
        table = evaluate_frames(model, test)["all"]
        rows.append({"arm": arm, "energy_mae": table["energy_meV_per_atom"]["mae"],
                     "force_mae": table["forces_eV_per_A"]["mae"],
                     "iterations": model.fit_info["iterations"], "train_wall_s": wall,
                     "valid_F_at": curve_at(model.fit_curve, [args.time / 4, args.time / 2,
                                                              args.time]),
                     "curve": model.fit_curve})
        print(markdown(rows, meta), flush=True)
        stem.with_name(f"{stem.name}.{arm}.json").write_text(
            json.dumps({"meta": meta, "rows": [rows[-1]]}, indent=1))
    rows.sort(key=lambda r: ARMS.index(r["arm"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    stem.with_suffix(".md").write_text(markdown(rows, meta) + "\n")
    try:
        plot(rows, stem.with_suffix(".png"), f"{args.source} filters → {args.target}")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
