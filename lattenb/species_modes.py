"""Species modes: how the species weights sigma (S, S, B) of the bodies are parametrised.

The kernels read one weight per (central species, neighbour species, body), `sigma[s, s', b]`.
A species mode says where that table comes from, owns its parameter arrays, their
initialisation and the chain rule from dL/dsigma to them. Chosen by name and saved with the
model (`LatteModel(..., species_mode=...)`, header field "species_mode"):

- "pair" (default, and every file written before the field existed): sigma itself is the
  parameter, S^2 B numbers, nothing shared between species pairs.
- "embedding": a rank-d canonical (CP) factorisation of the table, the low-rank species
  dependence of Hodapp & Shapeev's equivariant tensor networks,

      sigma[s, s', b] = sum_k  central[s, k] * neighbour[s', k] * body[b, k],

  with a central-role and a neighbour-role embedding vector of dimension d per species and one
  d-vector per body: 2 S d + B d numbers, linear in the number of species, and a weight for
  every species pair, including pairs the training data never showed together (they come from
  what the embeddings learned elsewhere). Two roles rather than one embedding because
  <a_b * e_s, c_b * e_s'> is symmetric in s, s' and would force sigma[s, s'] = sigma[s', s].
  The embeddings start from physical properties of the elements (`element_features`: period,
  group, covalent radius, log mass from `ase.data`), so similar elements start with similar
  weights.

Adding a mode: a class with the attributes and methods of `PairMode`, registered in MODES.
"""
import numpy as np
from ase.data import atomic_masses, covalent_radii

DEFAULT = "pair"
DEFAULT_EMBEDDING_DIM = 8

_PERIOD_ENDS = (2, 10, 18, 36, 54, 86, 118)


def period_and_group(z):
    """Period (1-7) and group (1-18; lanthanides and actinides count as group 3) of element z."""
    z = int(z)
    if not 0 < z <= _PERIOD_ENDS[-1]:
        raise ValueError(f"no period for atomic number {z}")
    period = next(p for p, end in enumerate(_PERIOD_ENDS, 1) if z <= end)
    start = _PERIOD_ENDS[period - 2] if period > 1 else 0
    k, length = z - start, _PERIOD_ENDS[period - 1] - start     # place in the period, 1-based
    if length == 2:
        return period, 1 if k == 1 else 18
    if length == 8:
        return period, k if k <= 2 else k + 10
    if length == 18:
        return period, k
    return period, k if k <= 2 else (3 if k <= 17 else k - 14)     # 32: f block in group 3


def element_features(numbers):
    """(S, 5) physical features of the elements: a constant 1, then period, group, covalent
    radius (Å) and log atomic mass, each standardised over elements 1-86 (so an element's row
    does not depend on which other species a model has)."""
    def raw(z):
        period, group = period_and_group(z)
        return [period, group, covalent_radii[z], np.log(atomic_masses[z])]
    table = np.array([raw(z) for z in range(1, 87)])
    mean, std = table.mean(axis=0), table.std(axis=0)
    rows = (np.array([raw(z) for z in numbers]) - mean) / std
    return np.hstack([np.ones((len(rows), 1)), rows])


class PairMode:
    """One free weight per (central species, neighbour species, body): sigma (S, S, B)."""
    name = "pair"
    parameter_names = ("sigma",)

    def parameter_shapes(self, S, B, d):
        return {"sigma": (S, S, B)}

    def initial_parameters(self, rng, numbers, B, d):
        S = len(numbers)
        return {"sigma": rng.normal(0.0, 1.0, size=(S, S, B))}

    def weights(self, params):
        """sigma (S, S, B) from the mode's parameters."""
        return params["sigma"]

    def gradients(self, params, g_sigma):
        """{parameter name: dL/dparameter} from dL/dsigma (S, S, B)."""
        return {"sigma": g_sigma}


class EmbeddingMode:
    """sigma[s, s', b] = sum_k central[s, k] neighbour[s', k] body[b, k] (module docstring)."""
    name = "embedding"
    parameter_names = ("embedding_central", "embedding_neighbour", "embedding_body")

    def parameter_shapes(self, S, B, d):
        return {"embedding_central": (S, d), "embedding_neighbour": (S, d), "embedding_body": (B, d)}

    def initial_parameters(self, rng, numbers, B, d):
        # both roles start as random projections of the same physical features (plus a little
        # noise, so that elements with equal features can still separate); unit-variance rows
        # and body factors of variance 1/d give sigma of unit variance, as in the "pair" mode
        features = element_features(numbers)
        n_features = features.shape[1]
        central, neighbour = (features @ rng.normal(0.0, 1.0 / np.sqrt(n_features), (n_features, d))
                              + rng.normal(0.0, 0.1, (len(numbers), d)) for _ in range(2))
        body = rng.normal(0.0, 1.0 / np.sqrt(d), (B, d))
        return {"embedding_central": central, "embedding_neighbour": neighbour,
                "embedding_body": body}

    def weights(self, params):
        return np.einsum("ik,jk,bk->ijb", params["embedding_central"],
                         params["embedding_neighbour"], params["embedding_body"], optimize=True)

    def gradients(self, params, g_sigma):
        u, v, w = (params[n] for n in ("embedding_central", "embedding_neighbour", "embedding_body"))
        return {"embedding_central": np.einsum("ijb,jk,bk->ik", g_sigma, v, w, optimize=True),
                "embedding_neighbour": np.einsum("ijb,ik,bk->jk", g_sigma, u, w, optimize=True),
                "embedding_body": np.einsum("ijb,ik,jk->bk", g_sigma, u, v, optimize=True)}


MODES = {mode.name: mode for mode in (PairMode(), EmbeddingMode())}


def names():
    """The registered species modes, for the API and the CLI's choices."""
    return tuple(MODES)


def get(name):
    """The species mode called `name`; ValueError listing the known ones."""
    if name not in MODES:
        raise ValueError(f"unknown species mode {name!r}; choose one of {list(MODES)}")
    return MODES[name]


def check_embedding_dim(d):
    """d as a positive int; ValueError otherwise."""
    if isinstance(d, bool) or not float(d).is_integer() or int(d) < 1:
        raise ValueError(f"embedding_dim must be a positive integer, got {d!r}")
    return int(d)
