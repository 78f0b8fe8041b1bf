"""Radial families: the trainable radial functions f(r) that weight every body (design page, §2).

A family is chosen by a name saved with the model (`LatteModel(..., radial="polynomial")`), as
MACE chooses its radial basis. Everything about one family lives in its own module; adding a family
means writing one module with a `RadialFamily` subclass and registering it (`register`, or one
line in `FAMILIES` for the built-in ones). The kernels never name a family: they take a *family token* (the
registered instance) and call the generic functions below, which Numba resolves at compile time to
the family's own inlined functions, so a new family costs nothing in the pair loops and is cached on
disk like the built-in one (`@njit(cache=True)` keys the compiled kernel by the family's name).

The contract of a family (per central species s and body b, S species and B bodies):

Python side (plain NumPy, once per parameter change):
    parameter_shapes(S, B)            {name: shape} of its trainable arrays, saved in model files
    initial_parameters(rng, S, B, cutoff, width)
    check(params, cutoff)             ValueError for parameters that break the contract below
    support(params, cutoff)           (lo, hi) (S, B) Å: f_sb(r) = 0 outside [lo, hi] (the pair
                                      loops visit only the distance bins inside it)
    kernel_constants(params, cutoff)  (constants (S, B, K) float64, scale (S, B)): what the Numba
                                      functions read; f_sb(r) = scale_sb * value(r, constants[s, b])
                                      (the kernels fold scale into the species weight)
    gradient_names                    the names of the kernels' gradient slots (S, B, len) ...
    free_* / from_free                the bounded reparametrisation L-BFGS-B works on
    variant(arg)                      optional: the family named "<name>-<arg>" (e.g. "spline-12",
                                      a spline with 12 coefficients), made on first use by `get`

Numba side (`@njit(inline="always")` functions, attributes of the family):
    load(constants, s, b) -> kb       the body's constants as a tuple (read once per body)
    value(r, kb) -> g                 g(r) (scale excluded)
    value_deriv(r, kb) -> (g, dg/dr)
    adjoint_init() -> acc             accumulators of the parameter adjoint (a tuple)
    adjoint_pair(acc, r, kb, p, q)    adds one pair's share of sum_k (f p_k + f' q_k) and of its
                                      parameter derivatives (p_k, q_k: see `moments`)
    adjoint_finish(acc, kb, sc)       -> (dJ/dsigma, (dJ/dtheta_0, ...)) with sc = sigma * scale;
                                      theta are the family's gradient slots

CUDA side (optional): `cuda_functions(real)` returns plain-Python scalar functions inside, value,
value_deriv on the kernel constants, which `lattenb.cuda.kernels_energy` compiles as device
functions; a family without them runs on the CPU only (the CUDA backend says so).
All of them must be exact: the tests check value_deriv and the parameter gradients against finite
differences, for every registered family.
"""
import hashlib
import importlib
import inspect

import numpy as np
from numba import njit, types
from numba.core.extending import (NativeValue, models, overload, register_model, typeof_impl,
                                  unbox)

#: built-in families: name -> "module:attribute" (relative to this package), imported on first use
FAMILIES = {"polynomial": ".polynomial:POLYNOMIAL", "spline": ".spline:SPLINE"}
DEFAULT = "polynomial"
_REGISTRY = {}


#: the Numba functions every family provides (see the module docstring)
NUMBA_FUNCTIONS = ("load", "value", "value_deriv", "adjoint_init", "adjoint_pair",
                   "adjoint_finish")


class RadialFamily:
    """Base class of radial families (see the module docstring for the contract).

    Subclasses set `name` and `gradient_names`, and name the module namespace that defines the
    Numba functions of NUMBA_FUNCTIONS: ``class Spline(RadialFamily, functions=globals())``."""
    name = None
    gradient_names = ()

    def __init_subclass__(cls, functions=None, **kwargs):
        super().__init_subclass__(**kwargs)
        if functions is not None:
            for name in NUMBA_FUNCTIONS:
                # staticmethod: a Numba dispatcher would otherwise bind to the instance
                setattr(cls, name, staticmethod(functions[name]))

    def parameter_shapes(self, n_species, n_bodies):
        raise NotImplementedError

    def initial_parameters(self, rng, n_species, n_bodies, cutoff, width=None):
        raise NotImplementedError

    def check(self, params, cutoff):
        pass

    def support(self, params, cutoff):
        raise NotImplementedError

    def kernel_constants(self, params, cutoff):
        raise NotImplementedError

    def gradients(self, slots):
        """{parameter name: dL/dparameter} from the kernels' (S, B, len(gradient_names)) slots."""
        return {name: np.ascontiguousarray(slots[..., m])
                for m, name in enumerate(self.gradient_names)}

    # the bounded variables L-BFGS-B works on (default: the parameters themselves, unbounded)
    def free_variables(self, params, cutoff):
        return {name: params[name] for name in self.parameter_names()}

    def free_bounds(self, name, cutoff):
        return (None, None)

    def from_free(self, free, cutoff):
        return dict(free)

    def free_gradient(self, free, grad, cutoff):
        return {name: grad[name] for name in free}

    def parameter_names(self):
        return tuple(self.parameter_shapes(1, 1))

    def cuda_functions(self, real):
        """Plain-Python scalar functions the CUDA kernels compile as device functions (optional;
        a family without them runs on the CPU only): {"inside", "value", "value_deriv"}, each
        called as fn(r, constants, s, b) on the kernel constants (S, B, K) (`kernel_constants`,
        in the kernel's float type `real`, np.float64 or np.float32, which should type the
        functions' literals): inside -> bool, False where f_sb(r) = 0 (the pair is skipped);
        value -> g(r); value_deriv -> (g, dg/dr), both for r inside and with scale excluded."""
        raise NotImplementedError(f"radial family {self.name!r} has no CUDA functions")

    def variant(self, arg):
        """The family named f"{self.name}-{arg}" (a family with a setting in its name, such as
        "spline-12"); `get` calls it for names it does not know yet and registers the result."""
        raise ValueError(f"radial family {self.name!r} has no variants; "
                         f"got {self.name + '-' + arg!r}")

    def __repr__(self):
        return f"<radial family {self.name!r}>"


def register(family):
    """Make a `RadialFamily` instance available by its name (returns it)."""
    if not isinstance(family, RadialFamily) or not isinstance(family.name, str) or not family.name:
        raise TypeError("register() takes a RadialFamily instance with a non-empty name")
    _REGISTRY[family.name] = family
    return family


def names():
    """Every family name known now (built-in and registered)."""
    return sorted(set(FAMILIES) | set(_REGISTRY))


def get(name):
    """The family registered under `name` (built-in ones are imported on first use). A name
    "<family>-<arg>" that is not registered yet, e.g. "spline-12", is made by the family's
    `variant(arg)` and registered (ValueError from it for an invalid arg)."""
    if isinstance(name, RadialFamily):
        return name
    if name not in _REGISTRY and name in FAMILIES:
        module, attr = FAMILIES[name].split(":")
        register(getattr(importlib.import_module(module, __name__), attr))
    if name not in _REGISTRY and isinstance(name, str):
        base, _, arg = name.rpartition("-")
        if base and (base in FAMILIES or base in _REGISTRY):
            family = get(base).variant(arg)
            if family.name != name:     # another name of a known family ("spline-8" is "spline")
                return family
            register(family)
    if name not in _REGISTRY:
        raise ValueError(f"unknown radial family {name!r}; choose one of {names()}")
    return _REGISTRY[name]


# ----------------------------------------------------------------------------- Numba dispatch
# A family instance passed to a kernel is typed by its name and a digest of the source files of
# its Numba functions, so a compiled kernel is cached and found again per family, and editing a
# family's module makes the kernels recompile for it (Numba's own cache only watches the file of
# the kernel itself). The generic functions below inline that family's functions.
class RadialFamilyType(types.Dummy):
    def __init__(self, name, digest):
        self.family_name = name
        self.digest = digest
        super().__init__(f"RadialFamily({name}, {digest})")


def source_digest(family):
    """A short hash of the source files that define the family's Numba functions."""
    if "_digest" not in family.__dict__:
        files = sorted({inspect.getsourcefile(getattr(getattr(family, name), "py_func",
                                                      getattr(family, name)))
                        for name in NUMBA_FUNCTIONS})
        digest = hashlib.sha1()
        for path in files:
            with open(path, "rb") as fh:
                digest.update(fh.read())
        family._digest = digest.hexdigest()[:12]
    return family._digest


@typeof_impl.register(RadialFamily)
def _typeof_family(value, context):
    return RadialFamilyType(value.name, source_digest(value))


register_model(RadialFamilyType)(models.OpaqueModel)


@unbox(RadialFamilyType)
def _unbox_family(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


def _impl(family_type, attr):
    return getattr(get(family_type.family_name), attr)


def radial_load(family, constants, s, b):
    """The constants of body b in radial row s (the central species, or its pair row:
    `moments.radial_row_of`), as a tuple (`RadialFamily.load`)."""
    raise NotImplementedError("only callable from Numba kernels")


def radial_value(family, r, kb):
    """g(r) of one body (`RadialFamily.value`)."""
    raise NotImplementedError("only callable from Numba kernels")


def radial_value_deriv(family, r, kb):
    """(g(r), dg/dr) of one body (`RadialFamily.value_deriv`)."""
    raise NotImplementedError("only callable from Numba kernels")


def radial_adjoint_init(family):
    raise NotImplementedError("only callable from Numba kernels")


def radial_adjoint_pair(family, acc, r, kb, p, q):
    raise NotImplementedError("only callable from Numba kernels")


def radial_adjoint_finish(family, acc, kb, sc):
    raise NotImplementedError("only callable from Numba kernels")


@overload(radial_load, inline="always")
def _ol_load(family, constants, s, b):
    fn = _impl(family, "load")
    return lambda family, constants, s, b: fn(constants, s, b)


@overload(radial_value, inline="always")
def _ol_value(family, r, kb):
    fn = _impl(family, "value")
    return lambda family, r, kb: fn(r, kb)


@overload(radial_value_deriv, inline="always")
def _ol_value_deriv(family, r, kb):
    fn = _impl(family, "value_deriv")
    return lambda family, r, kb: fn(r, kb)


@overload(radial_adjoint_init, inline="always")
def _ol_adjoint_init(family):
    fn = _impl(family, "adjoint_init")
    return lambda family: fn()


@overload(radial_adjoint_pair, inline="always")
def _ol_adjoint_pair(family, acc, r, kb, p, q):
    fn = _impl(family, "adjoint_pair")
    return lambda family, acc, r, kb, p, q: fn(acc, r, kb, p, q)


@overload(radial_adjoint_finish, inline="always")
def _ol_adjoint_finish(family, acc, kb, sc):
    fn = _impl(family, "adjoint_finish")
    return lambda family, acc, kb, sc: fn(acc, kb, sc)


@njit(cache=True)
def _curves(family, constants, scale, r, out):
    for s in range(constants.shape[0]):
        for b in range(constants.shape[1]):
            kb = radial_load(family, constants, s, b)
            for k in range(r.shape[0]):
                out[s, b, k] = scale[s, b] * radial_value(family, r[k], kb)


def values(family, params, cutoff, r):
    """f_sb(r) (S, B, len(r)) of every central species s and body b at the distances r (Å),
    through the family's Numba functions as the kernels call them (for pictures and checks)."""
    family = get(family)
    constants, scale = family.kernel_constants(params, cutoff)
    r = np.ascontiguousarray(r, dtype=np.float64)
    out = np.zeros(constants.shape[:2] + r.shape)
    _curves(family, np.ascontiguousarray(constants, dtype=np.float64),
            np.ascontiguousarray(scale, dtype=np.float64), r, out)
    return out


def support_bins(lo, hi, cutoff, bin_width=0.1, body_rank=None):
    """Which radial functions can be non-zero in each distance bin, per radial row (central
    species, or species pair with `pair_radial`; written below for rows s = central species).

    Lets a pair loop visit only the bodies whose support [lo, hi] overlaps the pair's distance
    bin, so a radial function that is zero for a pair costs nothing for that pair.

    lo, hi: (S, B) arrays (central species, body), Å, from `RadialFamily.support`.
    body_rank (B,): if given, the candidates of each bin are listed by increasing rank, so the
    kernels' per-rank branch is predictable.
    Returns (bin_ptr (S, nbins + 1) int64, bin_bodies (K,) int64, inv_bin_width float): the
    candidate bodies for species s and distance r are
    bin_bodies[bin_ptr[s, k]:bin_ptr[s, k + 1]] with k = int(r * inv_bin_width).
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    n_species, n_bodies = lo.shape
    order = (np.arange(n_bodies) if body_rank is None
             else np.argsort(np.asarray(body_rank), kind="stable"))
    nbins = max(1, int(np.ceil(cutoff / bin_width)))
    bin_lo = np.arange(nbins) * bin_width
    bin_hi = bin_lo + bin_width
    ptr = np.zeros((n_species, nbins + 1), dtype=np.int64)
    chunks = []
    total = 0
    for s in range(n_species):
        overlap = ((lo[s][None, :] < bin_hi[:, None])
                   & (hi[s][None, :] > bin_lo[:, None]))[:, order]       # (nbins, B)
        counts = overlap.sum(axis=1)
        ptr[s, 0] = total
        ptr[s, 1:] = total + np.cumsum(counts)
        total = ptr[s, -1]
        chunks.append(order[np.nonzero(overlap)[1]].astype(np.int64))  # row-major: bins in order
    bodies = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return ptr, bodies, 1.0 / bin_width

