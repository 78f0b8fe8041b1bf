"""Errors of a model against reference data: `evaluate_frames` (MAE and RMSE overall and per
config_type, what ``lattenb eval`` prints), `rmse_report` (the RMSEs a fit logs) and `force_mae`
(the short-range wall's yardstick); the last two over every rank of a distributed set."""
import numpy as np

from .conventions import EV_A3_TO_GPA
from .dataset import as_dataset
from .predict import predict


def evaluate_frames(model, frames, groups=True):
    """MAE and RMSE of energy (meV/atom), forces (eV/Å), stress (GPa) overall and per config_type.

    Energy errors are |dE|/N per structure averaged over structures (Zuo et al.'s metric);
    force errors run over all Cartesian components. frames: ASE Atoms or a prepared `Dataset`.
    Returns {group: {metric: value}}."""
    data = as_dataset(frames, model)
    E, F, S, _ = predict(model, data)
    de = (E - data.energies) / data.n_atoms_per_frame * 1000.0
    df = F - data.forces
    ds = (S - data.stresses) * EV_A3_TO_GPA
    labels = np.array(data.config_types)
    out = {}
    names = ["all"] + (sorted(set(labels)) if groups else [])
    for name in names:
        fm = np.ones(data.n_frames, bool) if name == "all" else labels == name
        row = {"structures": int(fm.sum()), "atoms": int(data.n_atoms_per_frame[fm].sum())}
        for key, err, mask in (("energy_meV_per_atom", de, fm & data.has_energy),
                               ("stress_GPa", ds, fm & data.has_stress)):
            e = err[mask]
            row[key] = ({"mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e ** 2)))}
                        if e.size else None)
        am = (fm & data.has_forces)[data.frame_of_atom]
        e = df[am]
        row["forces_eV_per_A"] = ({"mae": float(np.mean(np.abs(e))),
                                   "rmse": float(np.sqrt(np.mean(e ** 2)))} if e.size else None)
        out[name] = row
    return out


def rmse_report(model, data):
    """Energy RMSE (meV/atom), force RMSE (eV/Å), stress RMSE (GPa) on a dataset (nan if absent;
    over every rank's shard of a distributed set, `Dataset.comm`)."""
    E, F, S, _ = predict(model, data)
    n = data.n_atoms_per_frame
    me, ms = data.has_energy, data.has_stress
    af = data.has_forces[data.frame_of_atom]
    sums = data.comm.sum(np.array([
        np.sum(((E - data.energies) / n)[me] ** 2), me.sum(),
        np.sum((F - data.forces)[af] ** 2), 3.0 * af.sum(),
        np.sum((S - data.stresses)[ms] ** 2), 6.0 * ms.sum()]))
    e, f, s = (np.sqrt(sums[k] / sums[k + 1]) if sums[k + 1] else np.nan for k in (0, 2, 4))
    return 1000 * e, f, EV_A3_TO_GPA * s


def force_mae(model, data):
    """Force MAE (eV/Å, over Cartesian components) on a dataset (nan without forces; over every
    rank's shard of a distributed set, `Dataset.comm`)."""
    F = predict(model, data)[1]
    af = data.has_forces[data.frame_of_atom]
    sums = data.comm.sum(np.array([np.abs(F - data.forces)[af].sum(), 3.0 * af.sum()]))
    return float(sums[0] / sums[1]) if sums[1] else np.nan
