"""GPU throughput: atom-steps per second for energy + forces + stress, neighbour list included.

    python benchmarks/bench_gpu.py                          # fcc Cu 1e4, 1e5, 1e6 atoms
    python benchmarks/bench_gpu.py --sizes 1e6 --dtype float64 --repeats 10
    python benchmarks/bench_gpu.py --smoke                  # 4 atoms on the CUDA simulator

Model: the "fast" preset (LatteModel.preset("fast", ["Cu"]), random parameters), fcc Cu
(a = 3.615 Å, rattled by 0.05 Å) in cubic supercells of about each requested size.

For every size and dtype the GPU is timed for one MD-like step: positions already on the device,
``CudaEvaluator.compute_device`` with the neighbour list *rebuilt on the GPU every step* (the
worst case), the reductions to energy / virial / stress included, synchronised; the median of
--repeats steps, after a warm-up step whose time (JIT compilation included) is printed separately.
The column "list reused" is the same float64 step with the list kept (0.5 Å skin), as between
rebuilds in MD. The CPU kernels (LatteModel.compute, neighbour list included, all threads) are
timed up to --cpu-max atoms. The GPU result is compared with the CPU result on the same structure
up to --check-max atoms: |dE|/N (eV), max |dF| (eV/Å), max |dS| (eV/Å^3).

Target (issue 5): >= 5e7 atom-steps/s at 1e6 atoms, float64, on one H200.

--smoke: 4 atoms (one fcc cell, many periodic images), one repeat, and the Numba CUDA simulator
unless NUMBA_ENABLE_CUDASIM is set in the environment (``NUMBA_ENABLE_CUDASIM=0 ... --smoke``
smoke-tests a real GPU).
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET = 5e7


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1e4,1e5,1e6",
                   help="comma-separated atom counts (rounded to cubic fcc supercells)")
    p.add_argument("--dtype", default="float64,float32", help="float64, float32 or both")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median)")
    p.add_argument("--cpu-max", type=float, default=1e5, help="time the CPU up to this size")
    p.add_argument("--check-max", type=float, default=1e6,
                   help="compare GPU with CPU (one CPU evaluation) up to this size")
    p.add_argument("--smoke", action="store_true", help="tiny run, simulator unless set otherwise")
    args = p.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
        args.sizes = "4"
        args.repeats = 1
    args.sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    args.dtype = [d.strip() for d in args.dtype.split(",") if d.strip()]
    for d in args.dtype:
        if d not in ("float64", "float32"):
            p.error(f"--dtype: {d!r} is not float64 or float32")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def fcc_cu(n_atoms, seed=0):
    from ase.build import bulk
    reps = max(1, int(round((n_atoms / 4) ** (1 / 3))))
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat((reps, reps, reps))
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def time_gpu(model, atoms, dtype, repeats, skin=0.0):
    """(first step s, median step s, host copy of the result) for compute_device."""
    from numba import cuda

    from lattenb.cuda import CudaEvaluator
    ev = CudaEvaluator(model, dtype=dtype, skin=skin)
    d_pos = cuda.to_device(np.ascontiguousarray(atoms.positions))
    cell, pbc = atoms.cell.array, atoms.pbc
    t0 = time.perf_counter()
    ev.compute_device(d_pos, cell, pbc, atoms.numbers)
    cuda.synchronize()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = ev.compute_device(d_pos, cell, pbc, rebuild=skin == 0.0)
        cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {"energy": float(res["energy"].copy_to_host()[0]), "forces": res["forces"].copy_to_host(),
           "stress": res["stress"].copy_to_host()}
    del ev
    return first, float(np.median(times)), out


def time_cpu(model, atoms, repeats):
    args = (atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    t0 = time.perf_counter()
    out = model.compute(*args)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.compute(*args)
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times)), out


def fmt_rate(n, seconds):
    return "-" if seconds is None else f"{n / seconds:.3g}"


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import numba

    from lattenb import LatteModel
    from lattenb.cuda import check_cuda
    device = check_cuda()          # RuntimeError naming what is missing
    model = LatteModel.preset("fast", ["Cu"])
    print(f"device: {device}; CPU threads: {numba.get_num_threads()}; model: fast preset "
          f"({model.blocks}, cutoff {model.cutoff} Å, hidden {model.hidden})")
    print(f"repeats: {args.repeats} (median); GPU steps rebuild the neighbour list on the GPU")
    rows = []
    for n_req in args.sizes:
        atoms = fcc_cu(n_req)
        n = len(atoms)
        row = {"n": n}
        results = {}
        for dtype in args.dtype:
            first, t, out = time_gpu(model, atoms, dtype, args.repeats)
            row[dtype] = t
            row[dtype + "_first"] = first
            results[dtype] = out
            print(f"  N={n} GPU {dtype}: first step {first:.2f} s (JIT included), "
                  f"step {t * 1e3:.2f} ms", flush=True)
        if "float64" in args.dtype:
            _, t, _ = time_gpu(model, atoms, "float64", args.repeats, skin=0.5)
            row["reused"] = t
        cpu_out = None
        if n <= args.cpu_max:
            first, t, cpu_out = time_cpu(model, atoms, args.repeats)
            row["cpu"] = t
            print(f"  N={n} CPU: first {first:.2f} s, step {t * 1e3:.1f} ms", flush=True)
        elif n <= args.check_max:
            cpu_out = model.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        if cpu_out is not None:
            for dtype, out in results.items():
                row[dtype + "_dE"] = abs(out["energy"] - cpu_out["energy"]) / n
                row[dtype + "_dF"] = float(np.abs(out["forces"] - cpu_out["forces"]).max())
                row[dtype + "_dS"] = float(np.abs(out["stress"] - cpu_out["stress"]).max())
        rows.append(row)

    print()
    head = (f"{'atoms':>9} {'GPU f64':>10} {'GPU f32':>10} {'f64 reused':>10} {'CPU':>10}   "
            f"{'f64 |dE|/N':>10} {'f64 max|dF|':>11} {'f64 max|dS|':>11} {'f32 max|dF|':>11}")
    print("atom-steps/s (energy + forces + stress, neighbour list rebuilt on the GPU every step)")
    print(head)
    for r in rows:
        g = lambda k: r.get(k)                                           # noqa: E731
        e = lambda k: "-" if r.get(k) is None else f"{r[k]:.1e}"         # noqa: E731
        print(f"{r['n']:>9} {fmt_rate(r['n'], g('float64')):>10} "
              f"{fmt_rate(r['n'], g('float32')):>10} "
              f"{fmt_rate(r['n'], g('reused')):>10} {fmt_rate(r['n'], g('cpu')):>10}   "
              f"{e('float64_dE'):>10} {e('float64_dF'):>11} {e('float64_dS'):>11} "
              f"{e('float32_dF'):>11}")
    big = [r for r in rows if r["n"] >= 9e5 and r.get("float64")]
    for r in big:
        rate = r["n"] / r["float64"]
        verdict = "meets" if rate >= TARGET else "misses"
        print(f"\n{r['n']} atoms, float64: {rate:.3g} atom-steps/s {verdict} the target "
              f"{TARGET:.0e}")
    bad = [r for r in rows if r.get("float64_dF") is not None and r["float64_dF"] > 1e-10]
    if bad:
        print("\nWARNING: GPU float64 forces differ from the CPU by more than 1e-10 eV/Å")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
