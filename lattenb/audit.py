"""Descriptor audit: which terms of a descriptor are functionally independent.

After Allen, Shinkle, Bujack and Lubbers, "Optimal invariant bases for atomistic machine learning"
(arXiv:2503.23515): a term is functionally dependent on the others near an environment when its
gradient with respect to the neighbour coordinates is a linear combination of theirs. We sample
random environments (one central atom, n neighbours at random directions and distances inside the
cutoff, random species), compute the exact Jacobian J (T terms x 3n coordinates) of the central
atom's descriptor, normalise its rows and run a greedy Gram-Schmidt in term order: a term whose
normalised gradient keeps a residual below `tol` after removing the span of the terms kept
before it adds nothing to the rank there. A term is reported dependent when it adds nothing in
every sampled environment (its coefficients may change from one environment to the next, as
for ij:ij = IJ:IJ + S_1 S_2 / 3), and the rank is the largest rank over the environments.
Rotations leave the descriptor unchanged, so the rank is at most 3n - 3 in an environment of n
neighbours; small environments cap it, which is why several sizes are sampled.

The Jacobian row of term t is the force of a copy of the model whose energy is G_t of the
central atom (a linear read-out of term t, no standardisation): the same exact adjoint pass as
the forces, tested by finite differences elsewhere.
"""
import numpy as np

from .species import parse_species
from .validate import MIN_DISTANCE

#: neighbour counts of the sampled environments (each used `repeats` times)
NEIGHBOUR_COUNTS = (4, 6, 8, 12, 16, 24, 32)
#: default tolerance on the relative residual of a normalised term gradient
TOLERANCE = 1e-7


def term_labels(model):
    """'t:pattern' for every term t of the model's descriptor, e.g. '3:ij,ij'."""
    labels = []
    for block in model.layout.blocks:
        for _ in range(block.n_terms):
            labels.append(f"{len(labels)}:{block.pattern}")
    return labels


def random_environment(rng, n_neighbours, cutoff, n_species, r_min=0.7, separation=0.6):
    """Positions (n + 1, 3) Å with the central atom at the origin and n neighbours at distances
    uniform in [r_min, 0.98 cutoff], no two closer than `separation`; species indices (n + 1,)."""
    points = [np.zeros(3)]
    while len(points) < n_neighbours + 1:
        u = rng.normal(size=3)
        p = u / np.linalg.norm(u) * rng.uniform(r_min, 0.98 * cutoff)
        if min(np.linalg.norm(p - q) for q in points) >= separation:
            points.append(p)
    return np.array(points), rng.integers(0, n_species, n_neighbours + 1)


def descriptor_jacobian(model, positions, numbers):
    """(G (T,), J (T, 3n)): the descriptor of atom 0 of a cluster and its exact derivative with
    respect to the positions of atoms 1..n (Å), from T force evaluations of read-out models."""
    from .model import LatteModel
    T = model.layout.n_terms
    probe = LatteModel(model.species, cutoff=model.cutoff, blocks=model.blocks, hidden=(),
                       radial=model.radial, shared_radial=model.shared_radial,
                       pair_radial=model.pair_radial, species_mode=model.species_mode,
                       embedding_dim=model.embedding_dim)
    probe.set_parameters(**{k: v for k, v in model.params.items()
                            if k not in ("mlp", "e0", "g_mean", "g_std")})
    G = np.empty(T)
    J = np.empty((T, 3 * (len(positions) - 1)))
    for t in range(T):
        w = np.zeros((model.n_species, T + 1))
        w[:, t] = 1.0                          # energy = G_t, the output weights then the bias
        probe.set_parameters(mlp=w)
        out = probe.compute(positions, None, False, numbers, n_centres=1)
        G[t] = out["energy"]
        J[t] = -out["forces"][1:].ravel()
    return G, J


def greedy_independent(J, tol=TOLERANCE):
    """Boolean (T,): whether each row of J adds to the span of the rows kept before it (rows
    normalised; modified Gram-Schmidt, applied twice for stability)."""
    basis = []
    kept = np.zeros(J.shape[0], bool)
    for t, row in enumerate(J):
        norm = np.linalg.norm(row)
        if norm == 0.0:
            continue
        v = row / norm
        for _ in range(2):
            for q in basis:
                v = v - (q @ v) * q
        residual = np.linalg.norm(v)
        if residual > tol:
            basis.append(v / residual)
            kept[t] = True
    return kept


def audit(model, species=None, repeats=2, tol=TOLERANCE, seed=0, counts=NEIGHBOUR_COUNTS):
    """Functional independence of a model's descriptor terms on random environments.

    species: the chemical symbols to draw atoms from (default: the model's). Returns a dict:
    n_terms, rank (largest numerical rank over the environments), independent and dependent
    (labels, `term_labels`), dependent_index, tolerance, environments (neighbour count and rank
    of each) and labels.
    """
    rng = np.random.default_rng(seed)
    if species is None:
        numbers = np.asarray(model.numbers)
    else:
        numbers = parse_species(species)
        model.species_indices(numbers)     # ValueError for a species the model does not know
    T = model.layout.n_terms
    ever_kept = np.zeros(T, bool)
    environments = []
    for n in counts:
        for _ in range(repeats):
            positions, pick = random_environment(rng, n, model.cutoff, len(numbers),
                                                 separation=max(0.6, MIN_DISTANCE))
            _, J = descriptor_jacobian(model, positions, numbers[pick])
            kept = greedy_independent(J, tol)
            ever_kept |= kept
            environments.append({"neighbours": int(n), "rank": int(kept.sum())})
    labels = term_labels(model)
    return {
        "n_terms": T,
        "rank": max(e["rank"] for e in environments),
        "independent": [labels[t] for t in range(T) if ever_kept[t]],
        "dependent": [labels[t] for t in range(T) if not ever_kept[t]],
        "dependent_index": [t for t in range(T) if not ever_kept[t]],
        "tolerance": tol,
        "environments": environments,
        "labels": labels,
    }


def format_report(model, report):
    """The human-readable audit report (lines)."""
    sizes = sorted({e["neighbours"] for e in report["environments"]})
    lines = [f"descriptor {model.blocks}",
             (f"  {report['n_terms']} terms, species {','.join(model.species)}, "
              f"cutoff {model.cutoff:g} Å, radial family {model.radial}"),
             (f"  {len(report['environments'])} random environments of {sizes[0]}-{sizes[-1]} "
              f"neighbours; tolerance {report['tolerance']:g} (relative residual of a term's "
              f"normalised gradient)"),
             f"numerical rank: {report['rank']} of {report['n_terms']}"]
    by_size = {}
    for e in report["environments"]:
        by_size.setdefault(e["neighbours"], []).append(e["rank"])
    lines.append("  rank by neighbour count (3n - 3 caps it): "
                 + ", ".join(f"{n}: {max(r)}" for n, r in sorted(by_size.items())))
    if report["dependent"]:
        lines.append(f"dependent terms ({len(report['dependent'])}, in greedy order: each adds "
                     f"nothing to the terms before it):")
        lines += [f"  {label}" for label in report["dependent"]]
    else:
        lines.append("no dependent terms")
    return lines
