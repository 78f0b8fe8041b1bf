"""Cost of one training loss + gradient evaluation next to one energy + forces evaluation.

    python benchmarks/bench_training.py                   # bundled Cu subset (3554 atoms)
    python benchmarks/bench_training.py --file ../shared/data/mlearn/Ni_train.xyz
    python benchmarks/bench_training.py --hidden 32,256   # the MLP of the mlearn benchmark

Both are timed on the same prepared dataset (neighbour lists built once, as in training), median
of --repeats after JIT warm-up, in µs per atom. The loss + gradient covers energies, forces and
stress (where present) with respect to every parameter; the reference evaluation is the
energy/force/stress pass alone. Target: ratio <= 5.
"""
import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def median_time(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", default=str(ROOT / "lattenb" / "data" / "Cu_train_subset.xyz"))
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--hidden", default=None, help="hidden layer sizes, e.g. 32,256 (default: the preset's)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import numba
    from ase.io import read

    from lattenb.model import LatteModel
    from lattenb.dataset import prepare_dataset
    from lattenb.loss import LossWeights, loss_and_gradient
    from lattenb.predict import predict
    from lattenb.steps import TRAINING_CHUNKS, standardise
    frames = read(args.file, ":")
    species = sorted({s for a in frames for s in a.get_chemical_symbols()})
    overrides = {"hidden": args.hidden} if args.hidden else {}
    model = LatteModel.preset(args.preset, species, **overrides)
    t0 = time.perf_counter()
    data = prepare_dataset(frames, model, keep_pairs=True)
    t_prep = time.perf_counter() - t0
    standardise(model, data)
    n = len(data.positions)
    t0 = time.perf_counter()
    loss_and_gradient(model, data, LossWeights(1, 1, 1), n_chunks=TRAINING_CHUNKS)
    t_jit = time.perf_counter() - t0
    t_fwd = median_time(lambda: predict(model, data), args.repeats)
    t_grad = median_time(lambda: loss_and_gradient(model, data, LossWeights(1, 1, 1),
                                                   n_chunks=TRAINING_CHUNKS), args.repeats)
    print(f"{args.file}: {len(frames)} structures, {n} atoms, {len(data.second) / n:.1f} pairs/atom, "
          f"{args.preset} preset, MLP {model.layer_sizes}, {numba.get_num_threads()} threads")
    print(f"dataset preparation (neighbour lists, once): {t_prep:.2f} s; first loss+gradient "
          f"(JIT compile or cache load included): {t_jit:.1f} s")
    print(f"energy + forces + stress : {t_fwd / n * 1e6:8.2f} us/atom")
    print(f"loss + full gradient     : {t_grad / n * 1e6:8.2f} us/atom")
    print(f"ratio                    : {t_grad / t_fwd:8.2f}  (target <= 5)")


if __name__ == "__main__":
    main()
