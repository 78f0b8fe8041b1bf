"""Pictures a user would rather look at than read: the learning curve of a fit and the parity
plot of a model on reference data. matplotlib is an optional extra (``pip install
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
