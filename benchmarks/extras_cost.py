"""Cost of what MD can add to the learned energy: the core repulsion (`lattenb.repulsion`) and the
extrapolation grades (`lattenb.extrapolation`). µs/atom/step of energy + forces + stress for the
fast preset, plain, with the core repulsion (ZBL and wall), with it and the coordination terms,
with per-atom grades, side by side in one process.

    python benchmarks/extras_cost.py [--repeats 7] [--threads 1]

fcc Cu (256 atoms, a = 3.61 Å, rattled 0.05 Å, cutoff 5 Å). The repulsion (ZBL and the wall) is
off above 2.3 Å (as `fit` places it for a shortest training distance of 2 Å: no pair inside it at
equilibrium, the usual MD case, so what is measured is the extra pass over the pairs); the
coordination terms act outside the crystal's range of coordination (their pass sums n_i over
every pair within the cutoff, without a square root). The grades' active set is
computed on ten rattled copies; they reuse the descriptors of the energy kernel's pass (copied out
per atom), standardised and multiplied by the (T+1, T+1) grade matrix in NumPy. Medians of
--repeats alternating runs after JIT warm-up, measured as `bench_md.py` does (`time_lattenb`,
20 steps), and the repulsion kernel alone (with and without the coordination terms), medians of
3 x --repeats alternating calls, as a share of the plain step: two whole steps differ by more
than the repulsion costs on a shared machine. Writes results/extras_cost.json
(results/repulsion_cost.json: earlier runs of the repulsion alone).
"""
import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import numba
    from ase.build import bulk

    from bench_md import time_lattenb
    from lattenb import LatteModel
    from lattenb.extrapolation import build_active_set
    numba.set_num_threads(args.threads)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4)
    atoms.rattle(0.05, seed=1)
    plain = LatteModel.preset("fast", ["Cu"], cutoff=5.0)
    G = plain.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    plain.set_parameters(g_mean=G.mean(0)[None], g_std=G.std(0)[None] + 1e-3)
    train = []
    for k in range(10):
        a = atoms.copy()
        a.rattle(0.1, seed=10 + k)
        train.append(a)
    plain.set_active_set(build_active_set(plain, train))
    # as `fit` places them for a shortest training distance d = 2 Å: ZBL off above 0.9 d, the
    # wall's terms reaching 0.95-1.15 d
    from lattenb.repulsion import WALL_FRACTIONS
    wall = [[[[2.0 * f, 1.0] for f in WALL_FRACTIONS]]]
    zbl = LatteModel.preset("fast", ["Cu"], cutoff=5.0, repulsion="zbl",
                            repulsion_radii=[[[1.2, 1.8]]], repulsion_wall=wall)
    zbl.set_parameters(**plain.params)
    # with the coordination terms as `fit` places them: every atom of the rattled crystal inside
    # the range (the usual MD case: what is measured is the pass that sums n_i)
    from ase.neighborlist import neighbor_list
    from lattenb.short_range import DENSE_ONSETS, SPARSE_FRACTION
    i, dist = neighbor_list("id", atoms, 5.0)
    n = np.bincount(i, (1 - dist**2 / 25.0) ** 3, len(atoms))
    coordination = {"cutoff": 5.0,
                    "dense": [[[1.05 * n.max() * f, 1.0] for f in DENSE_ONSETS]],
                    "sparse_limit": [SPARSE_FRACTION * 0.95 * n.min()],
                    "sparse_wall": wall}
    coord = LatteModel.preset("fast", ["Cu"], cutoff=5.0, repulsion="zbl",
                              repulsion_radii=[[[1.2, 1.8]]], repulsion_wall=wall,
                              repulsion_coordination=coordination)
    coord.set_parameters(**plain.params)
    cases = {"plain": (plain, False), "zbl": (zbl, False), "zbl_coordination": (coord, False),
             "grades": (plain, True)}
    for model, grades in cases.values():                       # JIT warm-up
        model.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers, grades=grades)
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (model, grades) in cases.items():
            times[name].append(time_lattenb(model, atoms, 20, 5, skin=0.0, grades=grades))
    base = np.array(times["plain"])
    # the repulsion kernel alone (what the repulsion adds to a step, without the noise of two
    # whole steps), alternating, medians of as many repeats
    from lattenb.repulsion import add_repulsion
    system = plain.backend()._system(atoms.positions, atoms.cell.array, atoms.pbc,
                                     atoms.numbers, None)[0]
    n_atoms, n_pairs = len(atoms), len(system.second)

    def kernel_time(model, reps=20):
        t0 = time.perf_counter()
        for _ in range(reps):
            add_repulsion(model, system, n_atoms, np.zeros(n_atoms), np.zeros((n_pairs, 3)),
                          np.zeros((n_atoms, 9)))
        return (time.perf_counter() - t0) / reps / n_atoms * 1e6
    kernels = {"zbl": [], "zbl_coordination": []}
    for _ in range(3 * args.repeats):
        for name in kernels:
            kernels[name].append(kernel_time(cases[name][0]))
    plain_step = float(np.median(base))
    row = {"us_per_atom_step": {k: float(np.median(v)) for k, v in times.items()},
           "ratio_to_plain": {k: float(np.median(np.array(v) / base)) for k, v in times.items()
                              if k != "plain"},
           "repulsion_kernel_us_per_atom": {k: float(np.median(v)) for k, v in kernels.items()},
           "repulsion_kernel_share_of_plain_step": {k: float(np.median(v)) / plain_step
                                                    for k, v in kernels.items()},
           "threads": args.threads, "repeats": args.repeats, "date": str(date.today()),
           "machine": platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "extras_cost.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
