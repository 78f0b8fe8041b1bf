"""Data-parallel training cost: seconds per loss + gradient evaluation on the NbMoTaW training set
for ranks x threads, the reduction's size and time, and the memory per training atom.

    python benchmarks/mpi_scaling.py [--configs 1x1 1x2 2x1] [--repeats 5] \
        [--data ../shared/data/nbmotaw/train.xyz] [-o benchmarks/results/mpi_scaling]

Each configuration RxT runs `mpiexec -np R python benchmarks/mpi_scaling.py --worker` with T
Numba threads per rank (the MPICH wheel's mpiexec). In the worker, rank 0 reads the file and
scatters contiguous, pair-balanced shards (`lattenb.distributed.scatter_frames`, as
`lattenb fit --np R` does); every rank prepares its shard (sorted pairs kept, as in training);
the fast preset at the cutoff plain `lattenb fit` chooses (5.8 Å), standardised over all shards;
then one warm-up and --repeats timed evaluations of `loss_and_gradient` (the median is what one
L-BFGS iteration costs), and 20 timed sums of the gradient vector (the only per-iteration
communication besides a few scalars). Memory: the bytes of each rank's prepared shard per atom, and
the peak resident memory per rank. Writes OUT.json and OUT.md.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nbmotaw" / "train.xyz"
CUTOFF = 5.8


def worker(args):
    from ase.io import read

    import lattenb
    from lattenb.dataset import prepare_dataset
    from lattenb.distributed import scatter_frames, set_threads, world
    from lattenb.loss import LossWeights, loss_and_gradient
    from lattenb.species import species_in
    from lattenb.steps import TRAINING_CHUNKS, standardise
    comm = world()
    threads = set_threads(args.threads, comm.comm if comm.size > 1 else None)
    t0 = time.perf_counter()
    frames = read(args.data, ":", parallel=False) if comm.rank == 0 else None
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    species = comm.bcast(species_in(frames) if comm.rank == 0 else None)
    shard = scatter_frames(comm, frames, CUTOFF)
    t_scatter = time.perf_counter() - t0
    del frames
    model = lattenb.LatteModel.preset("fast", species, cutoff=CUTOFF)
    t0 = time.perf_counter()
    data = prepare_dataset(shard, model, keep_pairs=True, comm=comm)
    standardise(model, data)
    t_prepare = time.perf_counter() - t0
    weights = LossWeights(1.0, 1.0, 0.001, l2=1e-6)
    loss_and_gradient(model, data, weights, n_chunks=TRAINING_CHUNKS)       # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _, _, grad = loss_and_gradient(model, data, weights, n_chunks=TRAINING_CHUNKS)
        times.append(time.perf_counter() - t0)
    flat = np.concatenate([np.ravel(v) for v in grad.values()])
    sums = []
    for _ in range(20):
        t0 = time.perf_counter()
        comm.sum(flat)
        sums.append(time.perf_counter() - t0)
    atoms = len(data.positions)
    row = {"rank": comm.rank, "atoms": atoms, "structures": data.n_frames,
           "pairs": int(len(data.second)), "dataset_bytes_per_atom": data.nbytes / atoms,
           "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "s_per_eval": float(np.median(times)), "read_s": t_read, "scatter_s": t_scatter,
           "prepare_s": t_prepare, "gradient_floats": int(flat.size),
           "sum_s": float(np.median(sums)), "threads": threads}
    rows = comm.allgather(row)
    if comm.rank == 0:
        print(json.dumps(rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["1x1", "1x2", "2x1"],
                   help="RANKSxTHREADS configurations")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--threads", type=int, default=1, help="(worker) threads per rank")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-o", "--output", default="benchmarks/results/mpi_scaling")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    from lattenb.lammps import mpiexec_path
    results = []
    for config in args.configs:
        ranks, threads = (int(v) for v in config.split("x"))
        command = [mpiexec_path(), "-np", str(ranks), sys.executable, __file__, "--worker",
                   "--threads", str(threads), "--repeats", str(args.repeats), "--data", args.data]
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        print("$ " + " ".join(command), file=sys.stderr, flush=True)
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(out.stdout + out.stderr)
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        results.append({"ranks": ranks, "threads": threads, "per_rank": rows,
                        "s_per_eval": max(r["s_per_eval"] for r in rows)})
        print(config, results[-1]["s_per_eval"], file=sys.stderr, flush=True)
    base = results[0]["s_per_eval"]
    lines = ["| ranks x threads | s per loss+gradient | speed-up | atoms per rank | dataset "
             "bytes/atom | peak RSS per rank (MB) | gradient sum (ms) |", "|---" * 7 + "|"]
    for r in results:
        per = r["per_rank"]
        rss = ", ".join(f"{x['peak_rss_MB']:.0f}" for x in per)
        lines.append(f"| {r['ranks']} x {r['threads']} | {r['s_per_eval']:.3f} | "
                     f"{base / r['s_per_eval']:.2f} | "
                     f"{', '.join(str(x['atoms']) for x in per)} | "
                     f"{np.mean([x['dataset_bytes_per_atom'] for x in per]):.0f} | "
                     f"{rss} | "
                     f"{1000 * max(x['sum_s'] for x in per):.3f} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": os.uname().machine,
            "cores": os.cpu_count(), "data": args.data, "cutoff": CUTOFF}
    out.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
