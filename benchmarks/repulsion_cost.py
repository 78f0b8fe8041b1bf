"""Cost of the core repulsion (`lattenb.repulsion`): µs/atom/step of energy + forces + stress
for the fast preset with and without the ZBL repulsion, side by side in one process.

    python benchmarks/repulsion_cost.py [--repeats 7] [--threads 1]

fcc Cu (256 atoms, a = 3.61 Å, rattled 0.05 Å, cutoff 5 Å) with the repulsion off above 2.2 Å (as
`fit` places it below the shortest training distance: no pair inside it at equilibrium, the
usual MD case, so what is measured is the extra pass over the pairs). Medians of --repeats
alternating runs after JIT warm-up, measured as `bench_md.py` does (`time_lattenb`, 20 steps).
Writes results/repulsion_cost.json.
"""
import argparse
import json
import platform
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
    numba.set_num_threads(args.threads)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4)
    atoms.rattle(0.05, seed=1)
    models = {"none": LatteModel.preset("fast", ["Cu"], cutoff=5.0),
              "zbl": LatteModel.preset("fast", ["Cu"], cutoff=5.0, repulsion="zbl",
                                       repulsion_radii=[[[1.65, 2.2]]])}
    for m in models.values():                                   # JIT warm-up
        m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, m in models.items():
            times[name].append(time_lattenb(m, atoms, 20, 5, skin=0.0))
    ratio = float(np.median(np.array(times["zbl"]) / np.array(times["none"])))
    row = {"us_per_atom_step": {k: float(np.median(v)) for k, v in times.items()},
           "ratio_zbl_to_none": ratio, "threads": args.threads, "repeats": args.repeats,
           "date": str(date.today()), "machine": platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "repulsion_cost.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
