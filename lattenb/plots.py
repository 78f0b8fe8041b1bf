"""Pictures a user would rather look at than read: the learning curve of a fit, the parity
plot of a model on reference data and the radial functions of a model. matplotlib is an optional extra (``pip install
'lattenb[plot]'``): the functions that draw raise ImportError without it, and `lattenb fit`
then writes only the CSV of its learning curve."""
import csv

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'lattenb[plot]'") from None
    matplotlib.use("Agg")            # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def write_csv(rows, path):
    """Rows (a list of dicts with the same keys, or a superset in later rows) as a CSV file."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def learning_curve(rows, path):
    """Loss and train/validation RMSE of energy (meV/atom) and forces (eV/Å) against wall time
    (s), from `model.fit_curve` rows, as a PNG."""
    plt = _pyplot()
    t = np.array([r["time_s"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].semilogy(t, [r["loss"] for r in rows], color="k")
    axes[0].set_ylabel("training loss")
    for ax, key, unit in ((axes[1], "energy_meV_per_atom", "energy RMSE (meV/atom)"),
                          (axes[2], "forces_eV_per_A", "force RMSE (eV/Å)")):
        for split, style in (("train", "-"), ("valid", "--")):
            values = [r.get(f"{split}_{key}", np.nan) for r in rows]
            if np.isfinite(values).any():
                ax.semilogy(t, values, style, label=split)
        ax.set_ylabel(unit)
        ax.legend()
    for ax in axes:
        ax.set_xlabel("wall time (s)")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parity(model, frames, path, title=None):
    """Predicted against reference energy per atom (eV/atom) and force components (eV/Å),
    coloured by config_type, with RMSEs in the legend, as a PNG."""
    from .dataset import prepare_dataset
    from .predict import predict
    plt = _pyplot()
    data = prepare_dataset(frames, model, require_energy=False)
    E, F, _, _ = predict(model, data)
    labels = np.array(data.config_types)
    n = data.n_atoms_per_frame
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for name in sorted(set(labels)):
        fm = labels == name
        me = fm & data.has_energy
        if me.any():
            ref, pred = data.energies[me] / n[me], E[me] / n[me]
            rmse = 1000 * np.sqrt(np.mean((pred - ref) ** 2))
            axes[0].scatter(ref, pred, s=8, alpha=0.7, label=f"{name} ({rmse:.2f} meV/atom)")
        am = (fm & data.has_forces)[data.frame_of_atom]
        if am.any():
            ref, pred = data.forces[am].ravel(), F[am].ravel()
            rmse = np.sqrt(np.mean((pred - ref) ** 2))
            axes[1].scatter(ref, pred, s=4, alpha=0.5, label=f"{name} ({rmse:.3f} eV/Å)")
    for ax, what in ((axes[0], "energy (eV/atom)"), (axes[1], "force component (eV/Å)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set_xlabel(f"reference {what}")
        ax.set_ylabel(f"predicted {what}")
        if ax.has_data():
            ax.legend(fontsize=7, markerscale=2)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LINESTYLES = ("-", "--", ":", "-.")


def radial_functions(model, path, n_points=400, title=None):
    """Every radial function of a model (any radial family) as a PNG: one panel per block, with
    sigma_b(s, s') f_sb(r) (the weight a neighbour of species s' at distance r (Å) gets in body b
    of an atom of species s) for every term of the block, body (line style: its place in the
    pattern) and species pair (colour)."""
    from . import radial
    plt = _pyplot()
    r = np.linspace(0.0, model.cutoff, int(n_points))
    f = radial.values(model.radial_family, model.params, model.cutoff, r)     # (rows, B, n)
    row = model.radial_row()                                                  # (S, S)
    sigma = model.species_weights()                                           # (S, S, B)
    layout = model.layout
    blocks = layout.blocks
    S = model.n_species
    ncols = min(3, len(blocks))
    nrows = -(-len(blocks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    b0 = 0
    for k, block in enumerate(blocks):
        ax = axes.flat[k]
        for local, place in enumerate(block.body_places):     # line style: place in the pattern
            b = b0 + local
            for si in range(S):
                for sj in range(S):
                    ax.plot(r, sigma[si, sj, b] * f[row[si, sj], b], lw=0.9, alpha=0.8,
                            ls=LINESTYLES[place % len(LINESTYLES)],
                            color=colours[(si * S + sj) % len(colours)])
        b0 += block.n_bodies
        ax.axhline(0.0, color="k", lw=0.5)
        what = f"{block.n} channels, {block.n_terms} terms" if block.channels else f"{block.n} x"
        ax.set_title(f"block {k}: {what} {block.pattern}", fontsize=9)
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("σ f(r)")
        ax.set_xlim(0.0, model.cutoff)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(blocks):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colours[(si * S + sj) % len(colours)],
                          label=f"{model.species[si]}←{model.species[sj]}")
               for si in range(S) for sj in range(S)]
    handles += [plt.Line2D([], [], color="grey", ls=LINESTYLES[p], label=f"body {p + 1}")
                for p in range(min(len(LINESTYLES), max(len(b.bodies) for b in blocks)))]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8,
               frameon=False)
    fig.suptitle(f"{title + ': ' if title else ''}radial family {model.radial}"
                 f"{' (shared by all central species)' if model.shared_radial else ''}"
                 f"{' (per species pair)' if model.pair_radial else ''}, "
                 f"cutoff {model.cutoff:g} Å (central←neighbour species)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
