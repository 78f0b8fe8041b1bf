"""Dimer and uniform-compression curves of fitted models, with and without their core
repulsion (`lattenb.repulsion`): do they rise monotonically below the training data?

    python benchmarks/repulsion_curves.py MODEL.npz [MODEL.npz ...] [--tag TAG]

For every model: the dimer energy E(r) of each species pair from 0.4 Å to the cutoff, and for a
unary model the energy per atom of its element's ASE reference crystal (`ase.build.bulk`)
compressed uniformly to nearest-neighbour distances from 0.4 Å up to its equilibrium one. Both
with the model's repulsion (ZBL and the wall `fit` solves, `lattenb.short_range`) and without it
(the learned part alone). Reports where each curve stops rising as r decreases ("monotonic below
X Å": the largest r below which E only grows as r shrinks) next to the shortest training
distance d of the pair (r_out / 0.9 where `fit` placed the repulsion) and, for the crystal,
next to the distance below which its coordination leaves the training data's range
(`fit_info["short_range"]["coordination_range"]`, by `short_range.DENSE_GAP`). Writes
results/repulsion_curves_<tag>.{json,png}.
"""
import argparse
import copy
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def monotonic_below(r, energy):
    """The largest r_k such that E decreases strictly along r up to r_k (r ascending)."""
    rising = np.diff(energy) < 0
    k = 0
    while k < len(rising) and rising[k]:
        k += 1
    return float(r[k])


def curves(model, radii):
    """name -> (r (n,) Å, energy (n,) eV or eV/atom, the pair's r_out Å)."""
    from ase.build import bulk
    from ase.data import reference_states
    from ase.neighborlist import neighbor_list
    out = {}
    r = np.linspace(0.4, model.cutoff, 200)
    for a in range(model.n_species):
        for b in range(a, model.n_species):
            name = model.species[a] + "-" + model.species[b]
            e = [model.compute(np.array([[0, 0, 0], [x, 0, 0]]), None, False,
                               [model.numbers[a], model.numbers[b]])["energy"] for x in r]
            out["dimer " + name] = (r, np.array(e), radii[a, b, 1], None)
    if model.n_species == 1:
        symbol = model.species[0]
        crystal = bulk(symbol, cubic=True) * (2, 2, 2)
        d0 = min(crystal.get_distance(0, j, mic=True) for j in range(1, len(crystal)))
        scale = np.linspace(0.4 / d0, 1.0, 400)
        e, n = [], []
        for s in scale:
            x = crystal.copy()
            x.set_cell(crystal.cell * s, scale_atoms=True)
            e.append(model.compute(x.positions, x.cell.array, x.pbc, x.numbers)["energy"] / len(x))
            i, dist = neighbor_list("id", x, model.cutoff)
            n.append(np.bincount(i, (1 - dist**2 / model.cutoff**2) ** 3, len(x)).max())
        out[f"compression {symbol} ({reference_states[model.numbers[0]]['symmetry']})"] = (
            scale * d0, np.array(e), radii[0, 0, 1], np.array(n))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--tag", default="models")
    args = ap.parse_args()
    import lattenb
    from lattenb.repulsion import RADIUS_FRACTIONS
    from lattenb.short_range import DENSE_GAP
    report = {}
    panels = []
    for path in args.models:
        model = lattenb.load(path)
        if model.repulsion == "none":
            raise SystemExit(f"{path}: the model has no core repulsion")
        plain = copy.deepcopy(model)
        plain.set_repulsion("none")
        radii = np.array(model.repulsion_radii)
        with_rep, without = curves(model, radii), curves(plain, radii)
        summary = model.fit_info.get("short_range") or {}
        high = np.array(summary.get("coordination_range", [[0.0, np.inf]] * model.n_species))[:, 1]
        for name in with_rep:
            r, e, r_out, n = with_rep[name]
            e0 = without[name][1]
            d = r_out / RADIUS_FRACTIONS[1]
            below = monotonic_below(r, e)
            row = {"model": Path(path).name, "curve": name, "r_out": float(r_out),
                   "shortest_training_distance": float(d),
                   "monotonic_below_with_repulsion": below,
                   "rises_below_d": bool(below >= r[r <= d].max() - 1e-12),
                   "monotonic_below_without": monotonic_below(r, e0),
                   "wall": model.repulsion_wall is not None,
                   "coordination_terms": model.repulsion_coordination is not None}
            if n is not None:
                # where the crystal's coordination leaves the training data's range (by
                # short_range.DENSE_GAP), as a fraction of its equilibrium neighbour distance
                past = n >= (1 + DENSE_GAP) * high[0]
                exit_r = float(r[past].max()) if past.any() else None
                row.update(equilibrium_distance=float(r[-1]),
                           coordination_leaves_data_below=exit_r,
                           rises_past_the_data=bool(exit_r is not None and below >= exit_r - 1e-12),
                           monotonic_below_over_equilibrium=below / float(r[-1]))
            report[f"{Path(path).name}: {name}"] = row
            print(json.dumps(row))
            panels.append((f"{Path(path).stem}: {name}", r, e, e0, d,
                           row.get("coordination_leaves_data_below")))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"repulsion_curves_{args.tag}.json").write_text(json.dumps(report, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed")
        return
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, r, e, e0, d, exit_r) in zip(axes.flat, panels):
        # each curve from its own value at d: the coordination terms already add a lot at d
        # to a crystal squeezed that far
        ax.plot(r, e - np.interp(d, r, e), label="with repulsion, wall and coordination terms")
        ax.plot(r, e0 - np.interp(d, r, e0), "--", label="learned part alone")
        ax.axvline(d, color="grey", lw=0.8, label="d (shortest training distance)")
        if exit_r is not None:
            ax.axvline(exit_r, color="grey", lw=0.8, ls=":",
                       label="coordination past the training data")
            ax.legend(fontsize=6)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("distance (Å)" if "dimer" in title else "nearest-neighbour distance (Å)")
        ax.set_ylabel("E - E(d) (eV" + ("/atom)" if "compression" in title else ")"))
        ax.set_title(title, fontsize=9)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"repulsion_curves_{args.tag}.png", dpi=110)
    print(f"wrote {RESULTS / f'repulsion_curves_{args.tag}.png'}")


if __name__ == "__main__":
    main()
