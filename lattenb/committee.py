"""Committees: models of one setting averaged into one model (`merge_models`).

Two fits of one setting land in different places, and the average of their predictions is
better than either: on AcAc two 30-minute fits' force errors are correlated by only 0.47 and
their average takes 15 % off the validation force RMSE (README, AcAc section). `merge_models`
writes such an average as one ordinary `LatteModel`, so it runs wherever a model runs (ASE, the
CLI, LAMMPS, CUDA) and is saved and loaded like any other:

    E_merged = sum_k w_k E_k,   w_k = 1/K by default,

exactly, structure by structure, and so are the forces and the stress. It can, because every
part of a model is either per body or additive:
- descriptor: the members' blocks one after the other (block string "A:B"); bodies, terms and
  the standardisation (g_mean, g_std) are concatenated in that order, and so are the radial
  parameters and the species weights sigma, per body (sigma as the member's full (S, S, B)
  array, so members in any species mode merge into the "pair" mode);
- MLP: block-diagonal, hidden layers side by side (member k's units see only member k's terms),
  the linear output layer's weights and bias scaled by w_k, e0 = sum_k w_k e0_k;
- core repulsion: the ZBL term is the same in every member (the radii come from the training
  data) and kept once; the wall and the coordination terms are sums of non-negative terms, so
  the merged model holds every member's terms with their coefficients scaled by w_k.

Members may have different cutoffs: the merged model takes the largest, and each member's
radial functions, which vanish beyond its own cutoff, stay as they are. The cost per MD step is
about the sum of the members' (their pair loops and MLPs side by side). The merged model has no
active set (compute one with `lattenb activeset`).
"""
import numpy as np
from scipy.linalg import block_diag

from .mlp import layer_arrays, n_parameters
from .model import LatteModel


def block_diagonal_mlp(members, weights):
    """(n_parameters,) flat parameters of the block-diagonal MLP of one species: members
    [(flat parameters, layer sizes), ...]; hidden layers side by side, the output layer's
    weights stacked and its bias summed, each scaled by the member's weight."""
    layers = [layer_arrays(np.asarray(p), s) for p, s in members]
    flat = []
    for layer in range(len(layers[0]) - 1):
        flat += [block_diag(*(m[layer][0] for m in layers)).ravel(),
                 np.concatenate([m[layer][1] for m in layers])]
    flat += [np.concatenate([w * m[-1][0] for m, w in zip(layers, weights)]).ravel(),
             sum(w * m[-1][1] for m, w in zip(layers, weights))]
    return np.concatenate(flat)


#: settings every member must share (attribute: what it is, for the error message)
SHARED_SETTINGS = {"species": "species (in order)", "radial": "radial family",
                   "shared_radial": "shared radial functions",
                   "pair_radial": "radial functions per species pair",
                   "activation": "activation", "repulsion": "core repulsion"}


def _check_members(models):
    if len(models) < 2:
        raise ValueError(f"a committee needs at least two models, got {len(models)}")
    first = models[0]
    for k, m in enumerate(models[1:], start=2):
        for name, what in SHARED_SETTINGS.items():
            if getattr(m, name) != getattr(first, name):
                raise ValueError(f"cannot merge: model {k} has {what} {getattr(m, name)!r}, "
                                 f"model 1 {getattr(first, name)!r}; committee members share it")
        if len(m.hidden) != len(first.hidden):
            raise ValueError(f"cannot merge: model {k} has {len(m.hidden)} hidden layers, model 1 "
                             f"{len(first.hidden)}; committee members have the same depth")
        if first.repulsion != "none" and not np.allclose(m.repulsion_radii, first.repulsion_radii,
                                                         rtol=0, atol=1e-12):
            raise ValueError(f"cannot merge: the core repulsion radii of model {k} differ from "
                             "model 1's (members fitted to the same training data share them)")


def _merged_coordination(models, weights):
    """The members' coordination terms as one set (None when no member has any), coefficients
    scaled by weights; ValueError when members' terms differ in cutoff or sparse limit."""
    have = [(m.repulsion_arrays(), w) for m, w in zip(models, weights)
            if m.repulsion_coordination is not None]
    if not have:
        return None
    ref = have[0][0]
    for c, _ in have[1:]:
        if c.coordination_cutoff != ref.coordination_cutoff or not np.allclose(
                c.sparse_limit, ref.sparse_limit, rtol=0, atol=1e-12):
            raise ValueError("cannot merge: the members' coordination terms differ in their "
                             "cutoff or sparse limit (members fitted to the same training data "
                             "share them)")
    return {"cutoff": ref.coordination_cutoff,
            "dense": np.concatenate([c.dense * [1.0, w] for c, w in have], axis=1),
            "sparse_limit": ref.sparse_limit,
            "sparse_wall": np.concatenate([c.sparse_wall * [1.0, w] for c, w in have], axis=2)}


def merge_models(models, weights=None):
    """One `LatteModel` whose energy is sum_k weights[k] E_k of `models` (module docstring),
    for any structure; weights (K,) positive, summing to 1, default 1/K. ValueError when the
    models do not share the settings a committee needs (species in order, radial family and its
    rows, activation, MLP depth, core repulsion and its radii)."""
    models = list(models)
    _check_members(models)
    K = len(models)
    weights = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (K,) or not np.all(np.isfinite(weights)) or np.any(weights <= 0) \
            or abs(weights.sum() - 1.0) > 1e-9:
        raise ValueError(f"weights must be {K} positive numbers that sum to 1, got "
                         f"{weights.tolist()!r}")
    first = models[0]
    repulsion = {}
    if first.repulsion != "none":
        wall = np.concatenate([m.repulsion_arrays().wall * [1.0, w]
                               for m, w in zip(models, weights)], axis=2)
        repulsion = dict(repulsion_radii=first.repulsion_radii,
                         repulsion_wall=wall if wall.shape[2] else None,
                         repulsion_coordination=_merged_coordination(models, weights))
    merged = LatteModel(
        first.species, cutoff=max(m.cutoff for m in models),
        blocks=":".join(m.blocks for m in models),
        hidden=tuple(int(sum(h)) for h in zip(*(m.hidden for m in models))),
        activation=first.activation, seed=first.seed, radial=first.radial,
        shared_radial=first.shared_radial, pair_radial=first.pair_radial, species_mode="pair",
        repulsion=first.repulsion, **repulsion)
    family = first.radial_family
    arrays = {name: np.concatenate([np.asarray(m.params[name]) for m in models], axis=1)
              for name in family.parameter_names()}
    arrays["sigma"] = np.concatenate([m.species_weights() for m in models], axis=2)
    arrays["g_mean"] = np.concatenate([m.params["g_mean"] for m in models], axis=1)
    arrays["g_std"] = np.concatenate([m.params["g_std"] for m in models], axis=1)
    arrays["e0"] = sum(w * np.asarray(m.params["e0"]) for m, w in zip(models, weights))
    arrays["mlp"] = np.stack([
        block_diagonal_mlp([(m.params["mlp"][s], m.layer_sizes) for m in models], weights)
        for s in range(merged.n_species)])
    assert arrays["mlp"].shape[1] == n_parameters(merged.layer_sizes)
    merged.set_parameters(**arrays)
    merged.fit_info = {"committee": {"members": K, "weights": weights.tolist(),
                                     "member_fit_info": [dict(m.fit_info) for m in models]}}
    return merged
