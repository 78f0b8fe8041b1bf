"""The training loss over a dataset and its exact gradient with respect to every parameter.

Loss (design page, §5), residuals in eV/atom, eV/Å and GPa:

    L = w_E mean_frames ((E - E_ref) / N)^2 + w_F mean_components h(F - F_ref)
        + w_S mean_{frames, voigt} (S - S_ref)^2 + l2 |W_MLP|^2

with h(r) = r^2, or with a Huber width d (`LossWeights.huber`, eV/Å) h(r) = r^2 for |r| <= d and
2 d |r| - d^2 beyond (the same value and slope at |r| = d; `force_penalty`).

Frames contribute only the targets they have. The gradient costs one energy/force pass plus one
tangent + reverse pass: with delta_i = dL/dF_i and Delta = dL/d(dE/dstrain) the force and stress
terms are the directional derivative Phi = sum_pairs vtilde_ij . dE/dv_ij along the fixed tangent
vtilde_ij = delta_i - delta_j + Delta v_ij (because F_i = sum_j g_ij - sum_k g_ki and
dE/dstrain = sum g (x) v), so dL/dtheta = sum_i dJ_i/dtheta with J_i = ebar_i e_i + edot_i, and
no Jacobian is stored.
"""
from dataclasses import dataclass

import numpy as np

from .conventions import EV_A3_TO_GPA, strain_derivative_bar
from .mlp import layer_arrays, n_parameters
from .predict import predict


@dataclass
class LossWeights:
    """Weights of the loss terms: energy per atom (1/eV^2), forces (Å^2/eV^2), stress (1/GPa^2),
    and the L2 penalty on MLP weights (biases are not penalised).

    stress_offset: compare stresses up to one isotropic offset p (GPa) per dataset, the value that
    minimises the stress term (see `stress_residuals`). Plane-wave DFT stresses carry such a
    constant Pulay stress from the finite basis; the energies do not, so fitting raw stresses pulls
    the model's E(V) away from the DFT energies.

    huber: 0 (squared force residuals) or a width d in eV/Å: force residuals beyond d count
    linearly (`force_penalty`), as MACE's Huber loss does. A squared loss gives the largest
    residuals most of the weight: on mlearn Ni the tenth of force components with the largest
    residuals carries 80 % of their squares and 50 % of their absolute values."""
    energy: float = 1.0
    forces: float = 1.0
    stress: float = 1.0
    l2: float = 0.0
    stress_offset: bool = False
    huber: float = 0.0

    def __post_init__(self):
        try:
            width = float(self.huber)
        except (TypeError, ValueError):
            width = np.nan
        if not (np.isfinite(width) and width >= 0.0):
            raise ValueError(f"huber must be a finite width in eV/Å, 0 or more, got "
                             f"{self.huber!r}")
        self.huber = width


def force_penalty(res, huber):
    """(h(res), h'(res) / 2), elementwise: h(r) = r^2 with `huber` 0, else the Huber penalty of
    width `huber`, r^2 for |r| <= huber and 2 huber |r| - huber^2 beyond (`LossWeights`)."""
    if not huber:
        return res * res, res
    slope = np.clip(res, -huber, huber)
    return slope * (2.0 * res - slope), slope


def stress_residuals(S, data, fit_offset=False):
    """Stress residuals (n_frames, 6) in GPa (zero for frames without stress) and the isotropic
    offset p (GPa) removed from their diagonal: p = mean diagonal residual when `fit_offset`,
    else 0. Because p minimises the squared residuals, dL/dS at fixed p is the exact gradient.
    The mean runs over every rank's shard (`Dataset.comm`)."""
    ms = data.has_stress
    res = np.where(ms[:, None], (np.nan_to_num(S) - data.stresses) * EV_A3_TO_GPA, 0.0)
    offset = 0.0
    if fit_offset:
        total, count = data.comm.sum(np.array([np.sum(res[ms, :3]), 3.0 * ms.sum()]))
        offset = float(total / count) if count else 0.0
    res[ms, :3] -= offset
    return res, offset


def mlp_weight_mask(layer_sizes):
    """(n_parameters,) 1.0 for weights, 0.0 for biases."""
    mask = np.zeros(n_parameters(layer_sizes))
    for weights, _ in layer_arrays(mask, layer_sizes):      # views into mask
        weights[...] = 1.0
    return mask


def residual_counts(data):
    """(energies, force components, stress components) with a reference in a dataset, over
    every rank's shard, each at least 1: the loss's mean squared residuals divide by them."""
    atom_has_f = data.has_forces[data.frame_of_atom]
    counts = data.comm.sum(np.array([data.has_energy.sum(), 3.0 * atom_has_f.sum(),
                                     6.0 * data.has_stress.sum()]))
    return tuple(max(int(c), 1) for c in counts)


def adjoint_gradient(model, data, e_bar_frame, delta, s_bar=None, n_chunks=None):
    """d/dparams of J = sum_frames e_bar_frame E + sum_atoms delta . F + sum_frames s_bar . S:
    the parameter gradient of any scalar of the predictions, given its adjoints dJ/dE (F,)
    per frame, dJ/dF (N, 3) and dJ/dS (F, 6) (S in eV/Å^3, Voigt; None: no stress term).
    One tangent + reverse pass (`Backend.parameter_gradients`); a dict shaped like
    `model.params` with e0, summed over every rank's shard (`Dataset.comm`), so every rank gets
    it. `loss_and_gradient` gives it the loss's adjoints, `steps.group_scales` random signs."""
    e_bar = e_bar_frame[data.frame_of_atom]
    strain_bar = (np.zeros((data.n_frames, 3, 3)) if s_bar is None
                  else strain_derivative_bar(s_bar, data.volumes))   # S = sym(M) / V
    grad = model.backend("cpu").parameter_gradients(data, e_bar, delta, strain_bar, n_chunks)
    grad["e0"] = np.bincount(data.species, weights=e_bar, minlength=model.n_species)
    comm = data.comm
    if comm.size > 1:                  # one reduction of the whole gradient
        names = sorted(grad)
        flat = comm.sum(np.concatenate([np.ravel(grad[n]) for n in names]))
        start = 0
        for n in names:
            size = np.size(grad[n])
            grad[n] = flat[start:start + size].reshape(np.shape(grad[n]))
            start += size
    return grad


def loss_and_gradient(model, data, weights=LossWeights(), with_gradient=True, n_chunks=None):
    """Loss (float), its parts (dict) and, if asked, dL/dparams as a dict of arrays shaped like
    `model.params` (the radial family's, sigma, mlp, e0; g_mean and g_std are fixed buffers).
    On a shard of a distributed set (`Dataset.comm`) the means, the loss and the gradient run
    over every rank's shard, and every rank gets them."""
    comm = data.comm
    E, F, S, _ = predict(model, data)
    n_per = data.n_atoms_per_frame
    me = data.has_energy
    atom_has_f = data.has_forces[data.frame_of_atom]
    ne, nf, ns = residual_counts(data)
    # energy per atom
    res_e = np.where(me, (E - np.where(me, data.energies, 0.0)) / n_per, 0.0)
    e_bar_frame = 2.0 * weights.energy * res_e / n_per / ne
    # forces
    res_f = np.where(atom_has_f[:, None], F - data.forces, 0.0)
    penalty_f, slope_f = force_penalty(res_f, weights.huber)
    delta = 2.0 * weights.forces * slope_f / nf
    # stress, residual in GPa
    res_s, _ = stress_residuals(S, data, weights.stress_offset)
    squares = comm.sum(np.array([np.sum(res_e ** 2), np.sum(penalty_f), np.sum(res_s ** 2)]))
    parts = {"energy": weights.energy * float(squares[0]) / ne,
             "forces": weights.forces * float(squares[1]) / nf,
             "stress": weights.stress * float(squares[2]) / ns}
    s_bar = 2.0 * weights.stress * res_s * EV_A3_TO_GPA / ns                     # dL/dS (F, 6)
    mask = mlp_weight_mask(model.layer_sizes)
    mlp = model.params["mlp"]
    parts["l2"] = weights.l2 * float(np.sum((mlp * mask) ** 2))
    loss = sum(parts.values())
    if not with_gradient:
        return loss, parts, None
    grad = adjoint_gradient(model, data, e_bar_frame, delta, s_bar, n_chunks)
    grad["mlp"] += 2.0 * weights.l2 * mlp * mask
    return loss, parts, grad
