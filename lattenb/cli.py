"""Command line: ``lattenb fit``, ``lattenb eval``, ``lattenb example``.

    lattenb fit Cu_train.xyz --valid Cu_test.xyz -o cu.npz
    lattenb eval cu.npz Cu_test.xyz [--json] [--grade]
    lattenb select cu.npz md_frames.xyz -n 20 -o picked.xyz   # active learning
    lattenb activeset old.npz Cu_train.xyz -o new.npz       # grades for a model without them
    lattenb plot-radial cu.npz -o radial.png   # every radial function of a model
    lattenb example            # fit on the bundled Cu subset and evaluate it (a smoke run)

Any file ASE can read works; extended XYZ is the default format.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import extrapolation, radial, repulsion, species_modes
from .auto import (MATERIAL_HIDDEN, MATERIAL_HUBER, MATERIAL_L2, MATERIAL_RADIAL, MOLECULE_HIDDEN,
                   MOLECULE_HUBER, MOLECULE_L2, MOLECULE_RADIAL, choose_blocks, choose_cutoff,
                   choose_hidden, choose_huber, choose_l2, choose_minibatch, choose_radial,
                   has_stress, isolated_atom_energies, read_e0, split_validation)
from .audit import TOLERANCE as AUDIT_TOLERANCE
from .dataset import as_dataset
from .evaluation import evaluate_frames
from .mlp import ACTIVATIONS
from .model import DEFAULT_PRESET, PRESETS
from .training import ADAM_MAX_EPOCHS, minibatch_limits

DATA_DIR = Path(__file__).parent / "data"


def _read(paths):
    from ase.io import read
    frames = []
    for path in paths:
        try:
            frames += read(path, index=":", parallel=False)   # ASE would read on every rank
        except FileNotFoundError:
            raise SystemExit(f"lattenb: no such file: {path}")
        except Exception as exc:   # ASE raises many types for malformed files
            raise SystemExit(f"lattenb: cannot read {path}: {exc}")
    return frames


def _floats(text, n, name):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"lattenb: --{name} takes {n} comma-separated numbers, got {text!r}")
    if len(values) != n:
        raise SystemExit(f"lattenb: --{name} takes {n} comma-separated numbers, got {text!r}")
    return values


def _committee_size(text):
    """argparse type of --committee: a whole number of fits, 1 or more."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"takes a whole number of fits, 1 or more, got {text!r}")
    return n


def _print_table(path, table):
    print(f"{path}")
    print(f"  {'group':<12} {'n':>4}  {'E MAE':>8} {'E RMSE':>8}  {'F MAE':>7} {'F RMSE':>7}"
          f"  {'S MAE':>7} {'S RMSE':>7}")
    print(f"  {'':<12} {'':>4}  {'meV/atom':>17}  {'eV/A':>15}  {'GPa':>15}")

    def fmt(d, width):
        return (f"{d['mae']:>{width}.3f} {d['rmse']:>{width}.3f}" if d
                else f"{'-':>{width}} {'-':>{width}}")
    for name, row in table.items():
        print(f"  {name:<12} {row['structures']:>4}  {fmt(row['energy_meV_per_atom'], 8)}  "
              f"{fmt(row['forces_eV_per_A'], 7)}  {fmt(row['stress_GPa'], 7)}")


def _load_model(path):
    """A model file, or SystemExit saying what is wrong with it."""
    from .model import load_model
    try:
        return load_model(path)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"lattenb: {exc}")


def radial_name(text):
    """argparse type of --radial: a radial family name, including names made on demand such as
    "spline-12" (`lattenb.radial.get`)."""
    try:
        return radial.get(text).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


RADIAL_HELP = ("radial family {}: {} or spline-N (a cubic B-spline with N trainable "
               "coefficients per body; spline is spline-8) (default %(default)s)")


def _default_by_kind(molecule, material, condition=""):
    """The default of an option that `lattenb.auto` chooses by kind of data, as help text, from
    its MOLECULE_* and MATERIAL_* constants (so the help cannot drift from the choice):
    "M for periodic data<condition>, else m", or one value where both agree."""
    def text(value):
        if isinstance(value, tuple):             # layer sizes
            return ",".join(map(str, value))
        return f"{value:g}" if isinstance(value, float) else str(value)
    if molecule == material:
        return text(material)
    return f"{text(material)} for periodic data{condition}, else {text(molecule)}"


def parse_duration(text, allow_zero=False):
    """Seconds from "90", "90s", "30m", "2h" or "1.5h"; with `allow_zero`, also 0 ("0", "0m")."""
    text = str(text).strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:], None)
    number = text[:-1] if scale else text
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 900, 30m, 2h)") from None
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"duration must be {'non-negative' if allow_zero else 'positive'}, "
                         f"got {text!r}")
    return value


def time_budget(args):
    """The fit's time budget in seconds: --max-time, else --time."""
    return args.max_time if args.max_time is not None else parse_duration(args.time)


def fit_settings(args, frames, log=print):
    """The settings of `lattenb fit` that are chosen from the training data when not given
    (see `lattenb.auto`): validation split, isolated-atom energies, cutoff, radial family,
    descriptor blocks, hidden layers, L2 penalty, stress offset, core repulsion (zbl unless
    --repulsion none).
    Returns (train, valid, keyword arguments of `fit`)."""
    e0, frames = isolated_atom_energies(frames)
    if args.e0:
        e0 = read_e0(args.e0)
        log(f"isolated-atom energies from {args.e0}: {e0}")
    elif e0:
        log(f"isolated-atom energies from the training files: {e0}")
    if args.valid:
        train, valid = frames, _read([args.valid])
    else:          # deterministic, so `--resume` with the same command sees the same split
        train, valid = split_validation(frames)
        if valid:
            log(f"validation: every 10th training structure ({len(valid)} of {len(frames)}); "
                f"give --valid FILE to choose")
    cutoff = args.cutoff
    if cutoff is None and not args.resume:
        cutoff, why = choose_cutoff(train)
        log(f"cutoff {cutoff:.1f} Å ({why}); give --cutoff to choose")
    family = args.radial      # with --radial-from, the source model's family (`fit`)
    if family is None and not args.resume and not args.radial_from:
        family, why = choose_radial(train)
        log(f"radial family {family} ({why}); give --radial to choose")
    # a chosen preset, a resumed fit or --radial-from fix the model's shape (blocks, hidden)
    shape_free = args.preset is None and not args.resume and not args.radial_from
    blocks = args.blocks
    if blocks is None and shape_free:
        blocks, why = choose_blocks(train)
        log(f"descriptor blocks {blocks} ({why}); give --blocks or --preset to choose")
    hidden = args.hidden
    if hidden is None and shape_free:
        hidden, why = choose_hidden(train)
        log(f"hidden layers {':'.join(map(str, hidden))} ({why}); give --hidden or --preset to "
            f"choose")
    l2 = args.l2             # a resumed fit keeps its checkpoint's
    if l2 is None:
        l2, why = choose_l2(train)
        if not args.resume:
            log(f"L2 penalty {l2:g} on the MLP weights ({why}); give --l2 to choose")
    offset = args.stress_offset
    if offset is None:
        offset = has_stress(train)
        if offset:
            log("fitting stresses up to an isotropic offset (--no-stress-offset to fit them as "
                "they are)")
    repulsion = args.repulsion
    if repulsion is None and not args.resume:
        repulsion = "zbl"
        log("core repulsion zbl below the shortest distances of the training data (give "
            "--repulsion none to leave it out)")
    adam_time = (None if args.adam_time is None
                 else parse_duration(args.adam_time, allow_zero=True))
    if (adam_time is None and args.adam_epochs is None and args.max_iter is None
            and not args.resume):
        adam_time, why = choose_minibatch(train)
        log(f"mini-batch phase: {'none' if adam_time == 0 else 'half of the time budget'} "
            f"({why}); give --adam-time to choose")
    huber = args.huber       # a resumed fit keeps its checkpoint's
    if huber is None:        # the Huber loss needs the mini-batch phase before L-BFGS
        phase = minibatch_limits(args.adam_epochs, adam_time, time_budget(args), args.max_iter,
                                 not args.resume)
        huber, why = choose_huber(train, minibatch=any(phase))
        if not args.resume:
            log(f"force loss: {f'Huber, width {huber:g} eV/Å' if huber else 'squared'} ({why}); "
                f"give --huber to choose (0: squared)")
    return train, valid, {"cutoff": cutoff, "radial": family, "blocks": blocks, "hidden": hidden,
                          "l2": l2, "stress_offset": offset, "e0": e0 or None,
                          "repulsion": repulsion, "adam_time": adam_time,
                          "huber": huber}


def write_learning_curve(model, output, log=print):
    """The fit's learning curve next to the model: OUTPUT.curve.csv and, with matplotlib,
    OUTPUT.curve.png."""
    from . import plots
    rows = getattr(model, "fit_curve", [])
    if not rows:
        return
    stem = str(output).removesuffix(".npz")
    plots.write_csv(rows, stem + ".curve.csv")
    try:
        plots.learning_curve(rows, stem + ".curve.png")
        log(f"learning curve: {stem}.curve.csv, {stem}.curve.png")
    except ImportError:
        log(f"learning curve: {stem}.curve.csv (install matplotlib, pip install "
            f"'lattenb[plot]', for the picture)")


def _fit_inputs(args, comm, log):
    """(train, valid, auto settings) of `lattenb fit`: this rank's shards under MPI, where rank 0
    reads the files, chooses the settings and scatters contiguous, pair-balanced shards
    (`lattenb.distributed`)."""
    if comm.size == 1:
        return fit_settings(args, _read(args.train), log)
    from .distributed import scatter_frames
    outcome = None
    if comm.rank == 0:
        try:
            t0 = time.perf_counter()
            train, valid, auto = fit_settings(args, _read(args.train), log)
            outcome = ("ok", auto)
        except (SystemExit, ValueError) as exc:
            outcome = ("error", str(exc))
    outcome = comm.bcast(outcome)
    if outcome[0] == "error":
        raise SystemExit(outcome[1] if comm.rank == 0 else 1)
    auto = outcome[1]
    cutoff = auto["cutoff"] or PRESETS[args.preset or DEFAULT_PRESET]["cutoff"]
    train = scatter_frames(comm, train if comm.rank == 0 else None, cutoff)
    has_valid = comm.bcast(comm.rank == 0 and bool(valid))
    valid = scatter_frames(comm, valid if comm.rank == 0 else None, cutoff) if has_valid else None
    sizes = comm.allgather((len(train), sum(len(a) for a in train)))
    if comm.rank == 0:
        log(f"{comm.size} MPI ranks: " + ", ".join(f"{n} structures / {a} atoms"
                                                  for n, a in sizes)
            + f" (read and split in {time.perf_counter() - t0:.1f} s)")
    return train, valid, auto


def cmd_fit(args):
    from .distributed import abort, set_threads, world
    from .training import fit
    if args.np:
        from .lammps import relaunch
        relaunch(args.np, "lattenb.cli", sys.argv[1:], "--np")
    try:
        comm = world()
    except ImportError as exc:
        raise SystemExit(f"lattenb fit: {exc}")
    set_threads(args.threads, comm.comm if comm.size > 1 else None)
    if args.embedding_dim is not None and args.species_mode != "embedding":
        raise SystemExit("lattenb fit: --embedding-dim applies to --species-mode embedding")
    log = (lambda line: print(line, flush=True)) if comm.rank == 0 else (lambda line: None)
    try:
        return _fit(args, comm, fit, log)
    except BaseException as exc:
        if comm.size == 1 or isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        print(f"lattenb fit (rank {comm.rank}): {type(exc).__name__}: {exc}", file=sys.stderr)
        abort(comm, 1)


def _fit(args, comm, fit, log):
    train, valid, auto = _fit_inputs(args, comm, log)
    if args.committee > 1:
        return _fit_committee(args, train, valid, auto, comm, fit, log)
    model = fit_model(args, train, valid, auto, comm=comm, fit=fit, log=log)
    if comm.rank != 0:
        return 130 if model.interrupted else 0
    _write_fit(model, args.output, log)
    if model.interrupted:
        return 130
    return 0


def _write_fit(model, path, log):
    """Write a fitted model and its learning curve, and log what was written."""
    model.save(path)
    info = model.fit_info
    adam = f"{info['adam']['epochs']} Adam passes, " if info.get("adam") else ""
    log(f"wrote {path} ({adam}{info['iterations']} iterations, {info['wall_time_s']:.1f} s, "
        f"stopped: {info['stopped']})")
    write_learning_curve(model, path, log)


def _validation_line(model, valid):
    """'validation RMSE E meV/atom, F eV/Å' of a model on the validation structures."""
    row = evaluate_frames(model, valid, groups=False)["all"]
    e, f = row["energy_meV_per_atom"], row["forces_eV_per_A"]
    return (f"validation RMSE E {e['rmse'] if e else float('nan'):.3f} meV/atom, "
            f"F {f['rmse'] if f else float('nan'):.4f} eV/Å")


def _fit_committee(args, train, valid, auto, comm, fit, log):
    """`lattenb fit --committee N`: N fits of one setting with the seeds --seed ... --seed + N - 1,
    each with the whole time budget, written as OUTPUT.memberK.npz (with their learning curves),
    then their average as one model, OUTPUT (`lattenb.committee.merge_models`), with its active
    set on the training and validation structures. Fits of a molecule from other seeds err in
    different places (AcAc: force errors correlated by 0.37), so the average is more accurate
    than its members at the cost of both (README, AcAc, "A committee of two plain fits").
    Ctrl-C during a member keeps the members so far, that one with its best parameters."""
    from .auto import isolated_atom_energies
    from .committee import merge_models
    from .extrapolation import build_active_set
    if args.resume or args.checkpoint:
        raise SystemExit("lattenb fit: --committee does not combine with --checkpoint or --resume "
                         "(fit the members one by one with --seed and join them with lattenb "
                         "merge)")
    stem = str(args.output).removesuffix(".npz")
    members, t0 = [], time.perf_counter()
    for k in range(args.committee):
        log(f"committee member {k + 1} of {args.committee} (seed {args.seed + k})")
        member_args = argparse.Namespace(**{**vars(args), "seed": args.seed + k})
        model = fit_model(member_args, train, valid, auto, comm=comm, fit=fit, log=log)
        members.append(model)
        if comm.rank == 0:
            _write_fit(model, f"{stem}.member{k}.npz", log)
        if model.interrupted:
            break
    interrupted = members[-1].interrupted
    if comm.rank != 0:
        return 130 if interrupted else 0
    if len(members) == 1:        # interrupted in the first fit: it is all there is
        members[0].save(args.output)
        print(f"wrote {args.output}: the first member alone (interrupted)")
        return 130
    merged = merge_models(members)
    if comm.size == 1:           # under MPI this rank holds a shard: lattenb activeset makes one
        frames = [isolated_atom_energies(part)[1] for part in (train, valid or [])]
        merged.set_active_set(build_active_set(merged, frames[0] + frames[1]))
    merged.save(args.output)
    if valid and comm.size == 1:
        for k, model in enumerate(members):
            log(f"member {k}: {_validation_line(model, valid)}")
        log(f"committee: {_validation_line(merged, valid)}")
    print(f"wrote {args.output}: the average of {len(members)} fits "
          f"({time.perf_counter() - t0:.1f} s; members {stem}.member0.npz ...)"
          + (" (interrupted)" if interrupted else ""))
    return 130 if interrupted else 0


def fit_model(args, train, valid, auto, comm=None, fit=None, log=print):
    """The model `lattenb fit` trains, from its parsed arguments `args` and what
    `fit_settings` chose (`train`, `valid`, `auto`); one process unless `comm` is given, and
    `lattenb.training.fit` unless `fit` is. Benchmarks call it to run exactly the plain fit."""
    if comm is None:
        from .distributed import SERIAL as comm
    if fit is None:
        from .training import fit
    weights = _floats(args.weights, 3, "weights")
    output_weights = None
    if args.output_weights:      # an "auto" energy weight is chosen by cross-validation
        energy, _, rest = args.output_weights.partition(",")
        auto_energy = energy.strip() == "auto"
        output_weights = _floats(("0," if auto_energy else energy + ",") + rest, 3,
                                 "output-weights")
        if auto_energy:
            output_weights = (None,) + output_weights[1:]
    max_time = time_budget(args)
    return fit(train, valid=valid, preset=args.preset, activation=args.activation,
               shared_radial=args.shared_radial or None, pair_radial=args.pair_radial or None,
               radial_from=args.radial_from,
               species_mode=args.species_mode, embedding_dim=args.embedding_dim,
               train_radial=not args.freeze_radial, weights=weights,
               output_weights=output_weights,
               solve_output=not args.no_output_solve, max_iter=args.max_iter, seed=args.seed,
               checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
               resume=args.resume, max_time=max_time, log=log, log_every=args.log_every,
               adam_epochs=args.adam_epochs, comm=comm, **auto)


def cmd_eval(args):
    model = _load_model(args.model)
    results = {}
    frames, data = {}, {}
    for path in args.files:
        frames[path] = _read([path])
        data[path] = as_dataset(frames[path], model)     # prepared once: errors and grades
        results[path] = evaluate_frames(model, data[path])
    if getattr(args, "plot", None):
        from . import plots
        every = [a for path in args.files for a in frames[path]]
        try:
            plots.parity(model, every, args.plot, title=f"{args.model} on {', '.join(args.files)}")
        except ImportError as exc:
            raise SystemExit(f"lattenb: {exc}")
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        if args.grade:
            for path, grades in cmd_grade(model, data, True).items():
                results[path]["extrapolation"] = grades
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        for path, table in results.items():
            _print_table(path, table)
        if args.grade:
            cmd_grade(model, data, False)
        offset = model.fit_info.get("stress_offset_GPa")
        if offset is not None:
            print(f"note: this model was fitted to reference stresses up to an isotropic offset of "
                  f"{offset:+.3f} GPa (the training data's Pulay stress); the stress errors above "
                  f"include it for data from the same DFT setting")
    return 0


def grade_summary(grades):
    """{structures, max, median, above_1, above_2, above_10} of per-structure grades (above: by
    more than MaxVol's tolerance, since the active set's own members grade 1 + round-off)."""
    g = np.asarray(grades)
    return {"structures": int(g.size), "max": float(g.max(initial=0.0)),
            "median": float(np.median(g)) if g.size else 0.0,
            **{f"above_{t}": int(np.sum(g > t * extrapolation.MAXVOL_TOL)) for t in (1, 2, 10)}}


def cmd_grade(model, data_by_path, as_json):
    """The extrapolation grades of every file's structures (`lattenb eval --grade`), from their
    prepared `Dataset`s."""
    from .extrapolation import dataset_grades
    try:
        model.require_active_set()
    except ValueError as exc:
        raise SystemExit(f"lattenb eval --grade: {exc}")
    report = {}
    for path, data in data_by_path.items():
        per_structure = dataset_grades(model, data)[1]
        report[path] = {**grade_summary(per_structure), "grades": per_structure.tolist()}
    if as_json:
        return report
    print("extrapolation grades (max over each structure's atoms; <= 1 inside the training "
          "data, > 1 extrapolating)")
    print(f"  {'file':<40} {'n':>5} {'median':>8} {'max':>9} {'>1':>5} {'>2':>5} {'>10':>5}")
    for path, r in report.items():
        print(f"  {str(path)[-40:]:<40} {r['structures']:>5} {r['median']:>8.3f} {r['max']:>9.3f} "
              f"{r['above_1']:>5} {r['above_2']:>5} {r['above_10']:>5}")
    return report


def cmd_activeset(args):
    """Compute a model's active set on training files and write the model with it."""
    from .extrapolation import build_active_set
    model = _load_model(args.model)
    if args.features:
        model.grade_features = args.features
    frames = _read(args.train)
    model.set_active_set(build_active_set(model, frames))
    model.save(args.output)
    print(f"wrote {args.output}: active set of {int(model.active_set.rank.max())} environments "
          f"per species from {sum(len(a) for a in frames)} atoms ({model.grade_features})",
          file=sys.stderr)
    return 0


def cmd_select(args):
    """Pick the most informative structures of a pool (`extrapolation.select_structures`)."""
    from ase.io import write

    from .extrapolation import select_structures
    model = _load_model(args.model)
    pool = _read(args.pool)
    if args.n < 1:
        raise SystemExit("lattenb select: -n must be at least 1")
    log = lambda line: print(line, file=sys.stderr, flush=True)
    try:
        chosen, taken, before, _ = select_structures(model, as_dataset(pool, model), args.n,
                                                  log=log if args.verbose else None)
    except ValueError as exc:
        raise SystemExit(f"lattenb select: {exc}")
    picked = []
    for k, g in zip(chosen, taken):
        atoms = pool[k].copy()
        atoms.calc = pool[k].calc
        atoms.info["extrapolation_grade"] = float(g)          # when it was picked
        atoms.info["pool_grade"] = float(before[k])           # against the model's active set
        atoms.info["pool_index"] = int(k)
        picked.append(atoms)
    write(args.output, picked)
    summary = grade_summary(before)
    print(f"pool: {summary['structures']} structures, grade median {summary['median']:.3f}, max "
          f"{summary['max']:.3f}, {summary['above_1']} above 1")
    print(f"wrote {len(picked)} structures to {args.output}"
          + (f" (only {len(picked)} of {args.n} requested grade above 1 against the growing "
             f"active set)" if len(picked) < args.n else ""))
    return 0


def cmd_merge(args):
    """Average models of one setting into one model file (`lattenb.committee.merge_models`)."""
    from .committee import merge_models
    models = [_load_model(path) for path in args.models]
    weights = _floats(args.weights, len(models), "weights") if args.weights else None
    try:
        merged = merge_models(models, weights)
    except ValueError as exc:
        raise SystemExit(f"lattenb merge: {exc}")
    merged.save(args.output)
    print(f"wrote {args.output}: the average of {len(models)} models "
          f"({merged.layout.n_terms} terms, MLP {':'.join(map(str, merged.hidden))})",
          file=sys.stderr)
    return 0


def cmd_plot_radial(args):
    """Every radial function of a model file as one picture (`lattenb.plots.radial_functions`)."""
    from . import plots
    model = _load_model(args.model)
    try:
        plots.radial_functions(model, args.output, n_points=args.points, title=args.model)
    except ImportError as exc:
        raise SystemExit(f"lattenb plot-radial: {exc}")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_example(args):
    """Fit on the bundled Cu subset, evaluate on the bundled test subset: a quick smoke run."""
    import tempfile
    out = args.output or str(Path(tempfile.gettempdir()) / "lattenb-example.npz")
    train, test = str(DATA_DIR / "Cu_train_subset.xyz"), str(DATA_DIR / "Cu_test_subset.xyz")
    # through the parser, so the example runs with exactly the defaults of `lattenb fit`
    ns = build_parser().parse_args(["fit", train, "--valid", test, "-o", out,
                                    "--max-iter", str(args.max_iter)])
    code = cmd_fit(ns)
    cmd_eval(argparse.Namespace(model=out, files=[test], json=False, plot=None, grade=True))
    return code


def cmd_audit(args):
    """Functional independence of a descriptor's terms (`lattenb.audit`)."""
    from .audit import audit, format_report
    from .model import LatteModel
    if (args.model is None) == (args.blocks is None):
        raise SystemExit("lattenb audit: give either a model file or --blocks STRING")
    species = args.species.split(",") if args.species else None
    if args.model is not None:
        model = _load_model(args.model)
        if args.cutoff is not None:
            raise SystemExit("lattenb audit: --cutoff applies to --blocks; a model has its own")
    else:
        model = LatteModel(species or ["H"], cutoff=args.cutoff or 5.0, blocks=args.blocks,
                           hidden=(1,), radial=args.radial, seed=args.seed)
    report = audit(model, species=species, repeats=args.repeats, tol=args.tol, seed=args.seed)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print("\n".join(format_report(model, report)))
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="lattenb", description="LATTE interatomic potentials")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a model to structures with energies/forces/stress")
    f.add_argument("train", nargs="+", help="training files (any ASE-readable format)")
    f.add_argument("--valid", help="validation file: the parameters best on it are kept "
                                   "(default: every 10th training structure)")
    f.add_argument("-o", "--output", required=True, help="model file to write (.npz)")
    f.add_argument("--preset", choices=sorted(PRESETS),
                   help=f"descriptor and MLP size (default {DEFAULT_PRESET}'s MLP, with blocks chosen "
                        "from the data: shared channels for molecules, rank-3 bodies for materials)")
    f.add_argument("--blocks", help="descriptor block string, e.g. '8,-:8,i,i:8,ij,ij' (n terms per "
                   "block), or '8c,-:8c,i,i:4c,i,j,ij' (n shared channels per block)")
    f.add_argument("--hidden", help="hidden layer sizes, e.g. 32,16 (default: "
                   f"{_default_by_kind(MOLECULE_HIDDEN, MATERIAL_HIDDEN)}; a "
                   "--preset's own)")
    f.add_argument("--cutoff", type=float, help="cutoff radius in Angstrom (default: from the "
                                                "neighbour shells of the training structures)")
    f.add_argument("--activation", default="gaussian", choices=sorted(ACTIVATIONS))
    f.add_argument("--radial", type=radial_name,
                   help=RADIAL_HELP.format("of the descriptor", ", ".join(radial.names())).replace(
                       "%(default)s", _default_by_kind(MOLECULE_RADIAL, MATERIAL_RADIAL)))
    f.add_argument("--shared-radial", action="store_true",
                   help="one set of radial functions for every central species (s-NNP's shared "
                        "filters; the species weights stay per species pair)")
    f.add_argument("--pair-radial", action="store_true",
                   help="one set of radial functions per (central, neighbour) species pair, as "
                        "MTP and ACE resolve their radial bases (same pair work per step, S "
                        "times the radial parameters)")
    f.add_argument("--species-mode", choices=species_modes.names(),
                   help="how the species weights are parametrised: pair (one per species pair "
                        "and body) or embedding (low-rank, through learned per-species vectors "
                        "initialised from element properties; parameters linear in the number "
                        f"of species) (default {species_modes.DEFAULT})")
    f.add_argument("--embedding-dim", type=int,
                   help="dimension of the species embeddings of --species-mode embedding "
                        f"(default {species_modes.DEFAULT_EMBEDDING_DIM})")
    f.add_argument("--repulsion", choices=repulsion.NAMES,
                   help="core repulsion added to the learned energy: zbl (the ZBL screened "
                        "nuclear repulsion, whole below 0.6 x and off above 0.9 x the shortest "
                        "distance of each species pair in the training data, plus a wall "
                        "and terms on each atom's coordination outside the training range, "
                        "solved at the end of the fit so that dimers and compressed crystals "
                        "rise below the data; the default) or none")
    f.add_argument("--radial-from", metavar="MODEL",
                   help="start from the radial functions of this model (same radial family and "
                        "blocks): filters learned on another system")
    f.add_argument("--freeze-radial", action="store_true",
                   help="keep the radial functions fixed (e.g. those of --radial-from)")
    f.add_argument("--weights", default="10,1,0.001",
                   help="loss weights E,F,S for energy/atom (eV), forces (eV/A), stress (GPa)")
    f.add_argument("--huber", type=float,
                   help="Huber width of the force loss in eV/A: force residuals beyond it count "
                        "linearly, not squared; 0: squared (default: "
                        + _default_by_kind(MOLECULE_HUBER, MATERIAL_HUBER,
                                           " with the mini-batch phase") + ")")
    f.add_argument("--output-weights",
                   help="weights E,F,S of the final exact solve of the output layer; E may "
                        "be 'auto' (default: auto,F,S of --weights: the one of the energy "
                        "weight of --weights x 1 to 1000 that cross-validates best)")
    f.add_argument("--no-output-solve", action="store_true",
                   help="skip the final output-layer solve")
    f.add_argument("--l2", type=float,
                   help="L2 penalty on the MLP weights (default: "
                        f"{_default_by_kind(MOLECULE_L2, MATERIAL_L2)})")
    f.add_argument("--stress-offset", dest="stress_offset", action="store_true", default=None,
                   help="fit stresses up to one isotropic offset (the Pulay stress of plane-wave "
                        "DFT; the default when the training data has stresses); the fitted "
                        "offset is printed at the end")
    f.add_argument("--no-stress-offset", dest="stress_offset", action="store_false", default=None,
                   help="fit the reference stresses as they are")
    f.add_argument("--e0", help="isolated-atom energies: a JSON file {\"H\": -13.6, ...} (eV) or "
                                "a file of one-atom frames (default: frames of config_type "
                                "IsolatedAtom in the training files, else fitted on composition)")
    f.add_argument("--time", default="30m",
                   help="time budget of the fit, e.g. 900, 30m, 2h (default %(default)s); it also "
                        "stops when the validation loss has converged")
    f.add_argument("--max-iter", type=int, help="stop after this many L-BFGS iterations")
    f.add_argument("--adam-time", metavar="DURATION",
                   help="time of the mini-batch phase (Adam on batches of about 200 atoms) "
                        "before L-BFGS, e.g. 10m, or 0 for none (default: half of --time, at "
                        f"most {ADAM_MAX_EPOCHS} passes over the data, for periodic data; none "
                        "for molecules or with --max-iter)")
    f.add_argument("--adam-epochs", type=int, metavar="N",
                   help="at most N passes over the training structures in the mini-batch phase")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--committee", type=_committee_size, default=1, metavar="N",
                   help="fit N models with the seeds --seed ... --seed + N - 1, each for the "
                        "whole --time, and write their average (OUTPUT.memberK.npz: the "
                        "members); N times the training time and the cost per MD step, for "
                        "smaller errors where fits from other seeds err in different places "
                        "(molecules; default 1)")
    f.add_argument("--threads", type=int, help="Numba threads per process (default: all cores, "
                                               "shared among the MPI ranks of a node)")
    f.add_argument("--np", type=int, metavar="N",
                   help="train on N MPI ranks (started with the MPICH wheel's mpiexec, "
                        "pip install 'lattenb[mpi]'); the same as mpiexec -np N lattenb fit ...")
    f.add_argument("--checkpoint", help="checkpoint file, written every --checkpoint-every iterations")
    f.add_argument("--checkpoint-every", type=int, default=50)
    f.add_argument("--resume", help="continue from a checkpoint file")
    f.add_argument("--log-every", type=int, default=10)
    f.add_argument("--max-time", type=float, help="time budget in seconds (overrides --time)")
    f.set_defaults(func=cmd_fit)
    e = sub.add_parser("eval", help="MAE/RMSE of a model on files, overall and per config_type")
    e.add_argument("model")
    e.add_argument("files", nargs="+")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.add_argument("--plot", metavar="PNG", help="write energy and force parity plots, coloured "
                                                 "by config_type (needs matplotlib)")
    e.add_argument("--grade", action="store_true",
                   help="also the extrapolation grades of the structures (<= 1 inside the "
                        "training data; in --json, one per structure)")
    e.set_defaults(func=cmd_eval)
    sel = sub.add_parser("select", help="pick the structures of a pool (MD frames, candidates) "
                                        "that most extend the training data, by extrapolation "
                                        "grade and D-optimality, to label and add")
    sel.add_argument("model")
    sel.add_argument("pool", nargs="+", help="candidate structures (any ASE-readable files)")
    sel.add_argument("-n", type=int, required=True, help="how many to pick")
    sel.add_argument("-o", "--output", required=True, help="file for the picked structures "
                                                           "(extended XYZ)")
    sel.add_argument("-v", "--verbose", action="store_true", help="log every pick")
    sel.set_defaults(func=cmd_select)
    act = sub.add_parser("activeset", help="compute a model's active set (for extrapolation "
                                           "grades) from training files; a fit stores one")
    act.add_argument("model")
    act.add_argument("train", nargs="+", help="the training files")
    act.add_argument("-o", "--output", required=True, help="model file to write")
    act.add_argument("--features", choices=sorted(extrapolation.FEATURES),
                     help="what the grades are computed on (default: the model's, "
                          f"{extrapolation.DEFAULT_FEATURES} for a new one)")
    act.set_defaults(func=cmd_activeset)
    a = sub.add_parser("audit", help="which descriptor terms are functionally independent "
                                     "(rank of the descriptor's Jacobian on random environments)")
    a.add_argument("model", nargs="?", help="model file (or give --blocks)")
    a.add_argument("--blocks", help="block string to audit with freshly initialised radial "
                                    "functions, e.g. '8,-:8,IJ,IJ'")
    a.add_argument("--species", help="species to draw atoms from, e.g. Ni,Mo (default: the "
                                     "model's; H for --blocks)")
    a.add_argument("--cutoff", type=float, help="cutoff for --blocks in Angstrom (default 5)")
    a.add_argument("--radial", default=radial.DEFAULT, type=radial_name,
                   help=RADIAL_HELP.format("for --blocks", ", ".join(radial.names())))
    a.add_argument("--repeats", type=int, default=2,
                   help="environments per neighbour count (default %(default)s)")
    a.add_argument("--tol", type=float, default=AUDIT_TOLERANCE,
                   help="tolerance on the relative residual of a normalised term gradient "
                        "(default %(default)s)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.set_defaults(func=cmd_audit)
    mg = sub.add_parser("merge", help="average models of one setting (a committee, e.g. fits "
                                      "with other seeds) into one model file")
    mg.add_argument("models", nargs="+", help="model files: same species, radial "
                                              "family, activation, MLP depth and repulsion")
    mg.add_argument("-o", "--output", required=True, help="model file to write")
    mg.add_argument("--weights", help="weights summing to 1, e.g. 0.5,0.5 (default: equal)")
    mg.set_defaults(func=cmd_merge)
    r = sub.add_parser("plot-radial", help="draw every radial function of a model: per block, "
                                           "sigma f(r) of each body and species pair (needs "
                                           "matplotlib)")
    r.add_argument("model")
    r.add_argument("-o", "--output", required=True, help="picture to write (.png)")
    r.add_argument("--points", type=int, default=400, help="distances per curve (default "
                                                            "%(default)s)")
    r.set_defaults(func=cmd_plot_radial)
    x = sub.add_parser("example", help="fit and evaluate on the bundled Cu example data")
    x.add_argument("-o", "--output", help="model file to write (default: a temporary file)")
    x.add_argument("--max-iter", type=int, default=100)
    x.set_defaults(func=cmd_example)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        raise SystemExit(f"lattenb: {exc}")


if __name__ == "__main__":
    sys.exit(main())
