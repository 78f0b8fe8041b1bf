"""Side-by-side speed of this tree against another checkout of lattenb (a refactor's "nothing lost").

    git worktree add /tmp/old <commit>          # or: git clone . /tmp/old && git -C /tmp/old checkout <commit>
    python benchmarks/bench_compare.py --baseline /tmp/old

Runs, in alternating child processes (baseline, this tree, baseline, ...) so that both see the
same machine load: the fast preset's energy + forces + stress on fcc Cu (864 atoms, neighbour
list rebuilt every step, as `bench_md.py`'s main column) and on a random 4-species bcc alloy (432
atoms) on 1 and 2 threads, and one training loss + full gradient evaluation on the bundled Cu
subset (as `bench_training.py`). Where this tree has radial functions per species pair
(`pair_radial`), the row md_alloy_pair compares them with the per-central-species ones on the
alloy, in the same children of this tree. Each child warms
the JIT up first (compile time is not counted) and reports the median of its repeats; the table
gives the median over rounds of each tree and the ratio this tree / baseline (below 1: faster).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time
import numpy as np
import numba
numba.set_num_threads(int(sys.argv[1]))
import lattenb
from ase.build import bulk
from ase.io import read


def md_us_per_atom(model, atoms, traj):
    """Median over the repeats of µs/atom of energy + forces + stress along traj, after warm-up."""
    cell, pbc, numbers = atoms.cell.array, atoms.pbc, atoms.numbers
    model.compute(traj[0], cell, pbc, numbers)
    times = []
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter()
        for pos in traj:
            model.compute(pos, cell, pbc, numbers)
        times.append((time.perf_counter() - t0) / (len(traj) * len(atoms)) * 1e6)
    return float(np.median(times))


model = lattenb.LatteModel.preset("fast", ["Cu"])
atoms = bulk("Cu", "fcc", a=3.621, cubic=True).repeat((6, 6, 6))
rng = np.random.default_rng(0)
traj = [atoms.positions + rng.normal(0.0, 0.03, atoms.positions.shape) for _ in range(10)]
md = md_us_per_atom(model, atoms, traj)
# a random 4-species bcc alloy (432 atoms): the per-neighbour-species runs of the pair loops, with
# one set of radial functions per central species and, where the tree has it, per species pair
alloy = bulk("Mo", "bcc", a=3.2, cubic=True).repeat((6, 6, 6))
alloy.numbers = rng.choice([41, 42, 73, 74], len(alloy))
traj_alloy = [alloy.positions + rng.normal(0.0, 0.03, alloy.positions.shape) for _ in range(10)]
alloy_models = {"md_alloy": lattenb.LatteModel.preset("fast", ["Nb", "Mo", "Ta", "W"])}
try:
    alloy_models["md_alloy_pair"] = lattenb.LatteModel.preset("fast", ["Nb", "Mo", "Ta", "W"],
                                                              pair_radial=True)
except TypeError:                             # a tree without radial functions per species pair
    pass
alloy_times = {key: md_us_per_atom(m, alloy, traj_alloy) for key, m in alloy_models.items()}
try:                                          # the stage layout
    from functools import partial
    from lattenb.dataset import prepare_dataset
    from lattenb.loss import LossWeights, loss_and_gradient
    prepare_dataset = partial(prepare_dataset, keep_pairs=True)   # as `fit` does
except ImportError:                           # before it
    from lattenb.training import LossWeights, loss_and_gradient, prepare_dataset
from pathlib import Path
frames = read(str(Path(lattenb.__file__).parent / "data" / "Cu_train_subset.xyz"), ":")
data = prepare_dataset(frames, model)
n_atoms = len(data.positions)
loss_and_gradient(model, data, LossWeights(10.0, 1.0, 0.001), n_chunks=64)
train = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    for _ in range(3):
        loss_and_gradient(model, data, LossWeights(10.0, 1.0, 0.001), n_chunks=64)
    train.append((time.perf_counter() - t0) / (3 * n_atoms) * 1e6)
print(json.dumps({"md": md, "train": float(np.median(train)), **alloy_times,
                  "file": lattenb.__file__}))
'''


def run_child(tree, threads, repeats):
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_NUM_THREADS=str(max(threads, 1)))
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(repeats)], env=env,
                         capture_output=True, text=True, cwd=str(tree))
    if out.returncode:
        raise SystemExit(f"child for {tree} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["file"].startswith(str(tree)):
        raise SystemExit(f"the child imported {result['file']}, not the tree {tree}")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="path of the other lattenb checkout")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per tree")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats inside each child")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    trees = {"baseline": Path(args.baseline).resolve(), "this": ROOT}
    results = {}
    for threads in (int(t) for t in args.threads.split(",")):
        runs = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(run_child(tree, threads, args.repeats))
        for what in ("md", "train", "md_alloy"):
            base = statistics.median(r[what] for r in runs["baseline"])
            this = statistics.median(r[what] for r in runs["this"])
            results[f"{what}_{threads}t"] = {"baseline_us_per_atom": base,
                                             "this_us_per_atom": this, "ratio": this / base}
        if all("md_alloy_pair" in r for r in runs["this"]):     # this tree only, same children
            central = statistics.median(r["md_alloy"] for r in runs["this"])
            pair = statistics.median(r["md_alloy_pair"] for r in runs["this"])
            results[f"md_alloy_pair_{threads}t"] = {
                "baseline_us_per_atom": central, "this_us_per_atom": pair, "ratio": pair / central,
                "note": "this tree: radial functions per species pair against per central species"}
    print(f"{'measure':<12} {'baseline µs/atom':>17} {'this µs/atom':>13} {'this/baseline':>14}")
    for key, row in results.items():
        print(f"{key:<12} {row['baseline_us_per_atom']:>17.3f} {row['this_us_per_atom']:>13.3f} "
              f"{row['ratio']:>14.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
