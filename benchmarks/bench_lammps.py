"""Speed of a lattenb model inside LAMMPS (1 and 2 MPI ranks), through ASE, and of LAMMPS's own
SNAP with the published Zuo et al. qSNAP Cu model, measured side by side in one run.

    python benchmarks/bench_lammps.py [--model model.npz] [--steps 50] [--repeats 5]

System: 864-atom fcc Cu supercell (6x6x6 cubic cells, a = 3.615 A), 300 K, NVE, 1 fs. Every
timed segment starts from the same positions and velocities; each configuration is warmed up
first and the segments are interleaved (round robin), and medians are reported in microseconds
per atom per step, with ratios. The two-rank rows run in a subprocess under the MPICH wheel's
mpiexec (`lattenb.lammps.mpiexec_path`) and report only their own timed segments.

Callback overhead is reported two ways: (a) the LAMMPS loop time minus the time spent inside
the model's `compute` (glue: LAMMPS integration and communication, the Python callback, the
neighbour list of the fix and copies), and (b) a LAMMPS run whose `fix external` callback does
nothing but return zero forces (the bare cost of the mechanism).

The model is --model, or the "fast" preset for Cu with random parameters (speed does not depend
on parameter values); the qSNAP files come from ../shared/data/mlearn/snap_models/Cu/qsnap/
(their obsolete `diagonalstyle 3` line is dropped, as the data README says).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from ase import units
from ase.build import bulk

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import lattenb  # noqa: E402
import lattenb.lammps as ll  # noqa: E402

SNAP_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "mlearn", "snap_models",
                                         "Cu", "qsnap"))


def structure():
    return bulk("Cu", "fcc", a=3.615, cubic=True).repeat(6)


def load_model(path):
    if path:
        return lattenb.load(path), f"{path}"
    atoms = structure()
    atoms.rattle(0.05, seed=1)
    model = lattenb.LatteModel.preset("fast", ["Cu"], seed=0)
    g = model.descriptors(atoms.positions, atoms.cell.array, True, atoms.numbers)
    model.set_parameters(g_mean=g.mean(0)[None], g_std=g.std(0)[None] + 1e-3)
    return model, "random 'fast' preset Cu model (standardised on the structure)"


def snap_files(directory):
    """(coeff, param) paths; the param file is copied without the obsolete `diagonalstyle`."""
    coeff = os.path.join(directory, "SNAPotential.snapcoeff")
    with open(os.path.join(directory, "SNAPotential.snapparam")) as fh:
        lines = [line for line in fh if not line.split()[:1] == ["diagonalstyle"]]
    fd, param = tempfile.mkstemp(suffix=".snapparam", prefix="qsnap_")
    with os.fdopen(fd, "w") as fh:
        fh.writelines(lines)
    return coeff, param


class LammpsRun:
    """One LAMMPS instance ("lattenb", "snap" or "empty" callback), reset before each segment."""

    def __init__(self, kind, model=None, snap=None, mode="auto"):
        atoms = structure()
        self.natoms = len(atoms)
        self.lmp = lmp = ll.start_lammps(quiet=True)
        ll.create_from_atoms(lmp, atoms, ["Cu"])
        self.fix = None
        if kind == "lattenb":
            self.fix = ll.attach(lmp, model, ["Cu"], mode=mode)
        elif kind == "snap":
            coeff, param = snap_files(snap)
            try:
                lmp.commands_list(["pair_style snap", f"pair_coeff * * {coeff} {param} Cu"])
            finally:
                os.unlink(param)
        elif kind == "empty":
            lmp.commands_list(["pair_style zero 5.0", "pair_coeff * *",
                               "fix ext all external pf/callback 1 1"])

            def callback(caller, step, nlocal, tag, x, f):
                f[:] = 0.0
            lmp.set_fix_external_callback("ext", callback)
        lmp.commands_list(["velocity all create 300 87287 loop geom", "fix md all nve",
                           "timestep 0.001", "thermo 0"])
        self.x0 = lmp.gather_atoms("x", 1, 3)
        self.v0 = lmp.gather_atoms("v", 1, 3)

    def segment(self, steps):
        """Seconds for `run steps` from the reference state, and seconds inside the model."""
        lmp = self.lmp
        lmp.scatter_atoms("x", 1, 3, self.x0)
        lmp.scatter_atoms("v", 1, 3, self.v0)
        lmp.command("run 0 post no")       # setup (neighbour lists, first forces) untimed
        compute0 = self.fix.timing["compute_s"] if self.fix else 0.0
        t0 = time.perf_counter()
        lmp.command(f"run {steps} pre no post no")
        elapsed = time.perf_counter() - t0
        compute = (self.fix.timing["compute_s"] - compute0) if self.fix else 0.0
        return elapsed, compute


def ase_segment(model, steps, state):
    from ase.md.verlet import VelocityVerlet
    atoms = structure()
    atoms.set_positions(state[0])
    atoms.set_velocities(state[1])
    atoms.calc = model.calculator()
    atoms.get_forces()                     # first evaluation untimed, as LAMMPS's setup
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    t0 = time.perf_counter()
    dyn.run(steps)
    return time.perf_counter() - t0


def worker(args):
    """Run under mpiexec: time one configuration, print JSON from rank 0."""
    import numba
    model, _ = load_model(args.model)
    run = LammpsRun(args.worker, model=model, snap=args.snap)
    run.segment(args.warmup)
    times = [run.segment(args.steps) for _ in range(args.repeats)]
    summary = run.fix.timing_summary() if run.fix else {}
    if run.lmp.extract_setting("world_rank") == 0:
        print("RESULT " + json.dumps({
            "times": times, "ranks": run.lmp.extract_setting("world_size"),
            "threads": numba.get_num_threads(), "fix": summary}))
    run.lmp.close()


def mpi_segment(kind, args, ranks):
    mpiexec = ll.mpiexec_path()
    command = [mpiexec, "-np", str(ranks), sys.executable, os.path.abspath(__file__),
               "--worker", kind, "--steps", str(args.steps), "--repeats", "1",
               "--warmup", str(args.warmup), "--snap", args.snap]
    if args.model:
        command += ["--model", args.model]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout}\n{proc.stderr}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="saved lattenb model (default: random 'fast' Cu)")
    parser.add_argument("--steps", type=int, default=50, help="MD steps per timed segment")
    parser.add_argument("--repeats", type=int, default=5, help="timed segments per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks of the parallel rows")
    parser.add_argument("--snap", default=SNAP_DIR, help="directory of the qSNAP Cu files")
    parser.add_argument("--worker", choices=("lattenb", "snap", "empty"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import numba
    threads = numba.get_num_threads()
    model, description = load_model(args.model)
    snap = args.snap
    natoms = len(structure())
    print(f"system: {natoms} fcc Cu atoms, 300 K NVE, 1 fs; {args.steps} steps x "
          f"{args.repeats} segments per row after {args.warmup} warm-up steps")
    print(f"model: {description}: {model!r}")
    print(f"machine: {os.cpu_count()} CPUs; numba threads {threads}; "
          f"LAMMPS {ll.start_lammps(quiet=True).version()}")

    lat = LammpsRun("lattenb", model=model)
    qsnap = LammpsRun("snap", snap=snap)
    empty = LammpsRun("empty")
    # the same start for ASE: LAMMPS velocities are in A/ps, ASE's in A per ASE time unit
    order = np.argsort(lat.lmp.numpy.extract_atom("id")[:natoms])
    state = (lat.lmp.numpy.extract_atom("x")[:natoms][order].copy(),
             lat.lmp.numpy.extract_atom("v")[:natoms][order] / (1000.0 * units.fs))

    rows = {}

    def add(name, seconds, compute=None, **info):
        rows.setdefault(name, {"us": [], "compute_us": [], **info})
        rows[name]["us"].append(seconds / (natoms * args.steps) * 1e6)
        if compute is not None:
            rows[name]["compute_us"].append(compute / (natoms * args.steps) * 1e6)

    # warm-up (JIT caches, first neighbour lists)
    for run in (lat, qsnap, empty):
        run.segment(args.warmup)
    ase_segment(model, args.warmup, state)

    for rep in range(args.repeats):
        numba.set_num_threads(threads)
        t, c = lat.segment(args.steps)
        add(f"lattenb LAMMPS 1 rank x {threads} threads", t, c, ranks=1, threads=threads)
        if threads > 1:
            numba.set_num_threads(1)
            t, c = lat.segment(args.steps)
            add("lattenb LAMMPS 1 rank x 1 thread", t, c, ranks=1, threads=1)
            numba.set_num_threads(threads)
        r = mpi_segment("lattenb", args, args.ranks)
        t, c = r["times"][0]
        add(f"lattenb LAMMPS {args.ranks} ranks x {r['threads']} thread(s)", t, c,
            ranks=args.ranks, threads=r["threads"], fix=r["fix"])
        add(f"lattenb ASE (VelocityVerlet) x {threads} threads",
            ase_segment(model, args.steps, state), ranks=1, threads=threads)
        add("qSNAP Cu LAMMPS 1 rank", qsnap.segment(args.steps)[0], ranks=1, threads=1)
        r = mpi_segment("snap", args, args.ranks)
        add(f"qSNAP Cu LAMMPS {args.ranks} ranks", r["times"][0][0], ranks=args.ranks, threads=1)
        add("empty fix external callback, 1 rank", empty.segment(args.steps)[0], ranks=1,
            threads=threads)
        print(f"  segment {rep + 1}/{args.repeats} done", flush=True)

    med = {name: float(np.median(row["us"])) for name, row in rows.items()}
    base = med[f"lattenb LAMMPS 1 rank x {threads} threads"]
    snap1 = med["qSNAP Cu LAMMPS 1 rank"]
    print()
    print(f"{'configuration':48s} {'us/atom/step':>13s} {'x lattenb-LAMMPS-1':>19s} "
          f"{'x qSNAP-1':>10s} {'cores':>6s}")
    for name, row in rows.items():
        print(f"{name:48s} {med[name]:13.2f} {med[name] / base:19.3f} {med[name] / snap1:10.3f} "
              f"{row['ranks'] * row['threads']:6d}")
    print()
    print("callback overhead (median us/atom/step):")
    for name, row in rows.items():
        if row["compute_us"]:
            total, inside = med[name], float(np.median(row["compute_us"]))
            print(f"  {name:46s} total {total:8.2f}, in model.compute {inside:8.2f}, "
                  f"outside {total - inside:6.2f} ({100 * (total - inside) / total:4.1f} %)")
    print(f"  bare fix external + Python callback (zero forces): "
          f"{med['empty fix external callback, 1 rank']:.3f} us/atom/step")
    for name, row in rows.items():
        if row.get("fix"):
            f = row["fix"]
            print(f"  {name}: rank 0 evaluates {f['centres_per_local']:.2f} centres per local atom"
                  f" (cluster {f['cluster_per_local']:.2f} atoms per local atom)")
    print()
    print("ratios: " + ", ".join(f"{n} / {m} = {med[n] / med[m]:.2f}" for n, m in [
        (f"lattenb ASE (VelocityVerlet) x {threads} threads",
         f"lattenb LAMMPS 1 rank x {threads} threads"),
        (f"lattenb LAMMPS 1 rank x {threads} threads", "qSNAP Cu LAMMPS 1 rank")]))
    for lmp_run in (lat, qsnap, empty):
        lmp_run.lmp.close()


if __name__ == "__main__":
    main()
