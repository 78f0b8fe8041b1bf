"""The cubic B-spline family "spline" (s-NNP / uf3-style radial basis; design page, §2):

    f(r) = sum_{j<N} a_j B(x - j),    x = (r - c + w) / h,    h = 2 w / K,    K = N + 3

on the window [c - w, c + w] of each (central species s, body b), with B the uniform cubic
B-spline (support [0, 4] in units of the knot spacing h). The window has K uniform knot intervals
and N trainable coefficients a_j; f = 0 outside it. This is exactly uf3's clamped cubic B-spline
on the K intervals of the window (knots repeated four times at both ends, K + 3 basis functions)
with its first three and last three coefficients fixed at zero: on a clamped grid the basis
functions 3 .. K - 1 are the uniform B(x - j), and the three zeros at each end make the value, the
first and the second derivative vanish at r = c - w and r = c + w, so f is C^2 everywhere and
needs no separate cutoff function.

Parameters per (central species, body): `centres`, `widths` (S, B), Å, bounded and
reparametrised exactly like the polynomial family (`radial.polynomial`: L-BFGS-B works on (w, u)
with c = w + u (r_cut - 2 w), which keeps c - w >= 0 and c + w <= r_cut), and `coefficients`
(S, B, N), dimensionless, unbounded. Scale 1: f = g (the species weight sigma multiplies f, so
a common factor of a body's coefficients trades against its sigma; L-BFGS-B copes with this
one-dimensional degeneracy). Initial coefficients: the least-squares fit of the polynomial bump
t^3, t = 1 - ((r - c)/w)^2, the same for every body, so a new spline model starts close to a
new polynomial one. Units: r, c, w in Å; f dimensionless.

Configurable knots: the name carries the number of trainable coefficients. "spline" has
N = DEFAULT_COEFFICIENTS; `radial.get("spline-12")` (or `LatteModel(..., radial="spline-12")`,
`lattenb fit --radial spline-12`, or a model file naming it) creates and registers the family with
N = 12 on first use ("spline-8" is "spline"). N is a compile-time constant of the family's Numba
functions (they are made per N by `_numba_functions`): the seam's parameter-adjoint accumulator is
a tuple of fixed length, here N + 10, and the kernels are compiled and cached per family name.

Cost (O(1) per distance): a pair locates its knot interval i = floor(x) and its offset u in it,
reads the 4 coefficients that are non-zero there and evaluates 4 cubic pieces (value) and their
derivatives (value_deriv): no loop over N. The training adjoint adds 4 terms to the coefficient
accumulators at a run-time place (`_accumulate`). Like every family, a body visits only the
pairs of the distance bins its window overlaps; a spline that spans the whole range
(c - w = 0, c + w = r_cut) visits every pair within the cutoff, as many as all its narrow siblings
together: with about 80 neighbours per atom in a close-packed metal at 5 Å that is 80 spline
evaluations per atom and body, against about 20 for a window of width r_cut / 4 near the first
shell, i.e. several times the cost of a narrow body. Windows stay trainable and bounded as for the
polynomial family, so the fit can move and shrink them.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .._numba import FASTMATH
from . import RadialFamily
from .polynomial import POLYNOMIAL

DEFAULT_COEFFICIENTS = 8   # N of the family named "spline"
MAX_COEFFICIENTS = 64      # largest N of "spline-N" (the adjoint accumulator has N + 10 entries)
_JIT = dict(error_model="numpy", fastmath=FASTMATH, inline="always")
_FIT_POINTS = 401          # samples of the bump the initial coefficients are fitted to


# ----------------------------------------------------------------------------- tuple intrinsics
# Numba indexes a homogeneous tuple at a run-time index by branching over every index; these do
# it with one stack copy and direct loads/stores (no bounds check: the caller keeps idx + 3 inside
# the tuple). The stack slot is allocated once per function (alloca_once), not per pair.
@intrinsic
def _accumulate(typingctx, acc, head, idx, body):
    """acc with acc[0:4] += head and acc[idx:idx + 4] += body (head, body: 4-tuples)."""
    if (not isinstance(acc, types.UniTuple) or not isinstance(idx, types.Integer)
            or not isinstance(head, types.UniTuple) or not isinstance(body, types.UniTuple)
            or head.count != 4 or body.count != 4 or acc.count < 4):
        return None

    def codegen(context, builder, sig, args):
        a, h, i, bd = args
        for m in range(4):
            a = builder.insert_value(a, builder.fadd(builder.extract_value(a, m),
                                                     builder.extract_value(h, m)), m)
        stack = cgutils.alloca_once(builder, a.type)
        builder.store(a, stack)
        zero = ir.Constant(i.type, 0)
        for m in range(4):
            ptr = builder.gep(stack, [zero, builder.add(i, ir.Constant(i.type, m))], inbounds=True)
            builder.store(builder.fadd(builder.load(ptr), builder.extract_value(bd, m)), ptr)
        return builder.load(stack)
    return acc(acc, types.UniTuple(acc.dtype, 4), idx, types.UniTuple(acc.dtype, 4)), codegen


@intrinsic
def _scaled(typingctx, tup, factor):
    """Every entry of a homogeneous float tuple times factor."""
    if not isinstance(tup, types.UniTuple) or not isinstance(factor, types.Float):
        return None

    def codegen(context, builder, sig, args):
        t, f = args
        for m in range(tup.count):
            t = builder.insert_value(t, builder.fmul(builder.extract_value(t, m), f), m)
        return t
    return tup(tup, tup.dtype), codegen


# ----------------------------------------------------------------------------- the B-spline pieces
# In knot interval i, with u = x - i in [0, 1], the four basis functions that are non-zero are
# j = i - 3, i - 2, i - 1, i; they take the pieces 3, 2, 1, 0 of B (times 6 below):
#   (1 - u)^3,  3 u^3 - 6 u^2 + 4,  -3 u^3 + 3 u^2 + 3 u + 1,  u^3
# (their u-derivatives are written out in `_pieces`).
@njit(**_JIT)
def _pieces(u):
    """(B, dB/du, d2B/du2) of the four basis functions j = i - 3 .. i at offset u of interval i,
    each a 4-tuple."""
    v = 1.0 - u
    u2 = u * u
    s6 = 1.0 / 6.0
    b = (s6 * v * v * v, s6 * (3.0 * u2 * u - 6.0 * u2 + 4.0),
         s6 * (-3.0 * u2 * u + 3.0 * u2 + 3.0 * u + 1.0), s6 * u2 * u)
    d = (-0.5 * v * v, 1.5 * u2 - 2.0 * u, -1.5 * u2 + u + 0.5, 0.5 * u2)
    d2 = (v, 3.0 * u - 2.0, 1.0 - 3.0 * u, u)
    return b, d, d2


@njit(**_JIT)
def _coefficients(row, i):
    """The four coefficients of knot interval i (padded row: entries i + 2 .. i + 5; i >= 0, and
    unsigned indices spare Numba's negative-index wraparound)."""
    k = np.uint64(i) + np.uint64(2)
    return row[k], row[k + np.uint64(1)], row[k + np.uint64(2)], row[k + np.uint64(3)]


@njit(**_JIT)
def _dot4(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3]


def _numba_functions(n):
    """The Numba functions of the seam (`radial.NUMBA_FUNCTIONS`) for N = n coefficients.

    Kernel constants per body (a row of n + 8): lo = c - w, s = 1/h = K / (2 w), then the padded
    coefficients 0, 0, 0, a_0 .. a_{n-1}, 0, 0, 0, so the four coefficients of interval i are the
    entries i + 2 .. i + 5 whatever i is (the zeros are the clamped ends). Adjoint accumulators (a
    tuple of n + 10): sum (g p + g' q), sum (g' p + g'' q), sum y (g' p + g'' q), sum g' q, then
    one per padded coefficient (the pads collect terms that are dropped)."""
    K = n + 3
    KF = float(K)
    LAST = K - 1
    TWO_OVER_K = 2.0 / K       # y = (r - c) / w = x 2 / K - 1, and 1/w = s 2 / K
    ZERO = (0.0,) * (n + 10)
    C_LO, C_HI = 7, 7 + n      # accumulator places of a_0 .. a_{n-1}

    @njit(**_JIT)
    def load(constants, s, b):
        """(lo, s, row): row = constants[s, b], a view (no copy) from which a pair reads the four
        coefficients of its interval (a tuple of all of them would be copied per pair)."""
        return constants[s, b, 0], constants[s, b, 1], constants[s, b]

    @njit(**_JIT)
    def _locate(r, kb):
        """(x, i, u): x = (r - lo) / h clamped to the window [0, K], its knot interval i in
        [0, K - 1] and u = x - i. Outside the window x sits on an end, where every piece that
        meets a non-zero coefficient vanishes with its first and second derivative."""
        x = min(max((r - kb[0]) * kb[1], 0.0), KF)
        i = min(int(x), LAST)
        return x, i, x - i

    @njit(**_JIT)
    def value_deriv(r, kb):
        """(g, dg/dr = s dg/dx). Written with the pieces (not as one cubic in u) so that both
        vanish exactly outside the window: there the non-zero coefficient meets a piece that is
        exactly 0 (u^3 at u = 0, (1 - u)^3 at u = 1) with its derivative."""
        _, i, u = _locate(r, kb)
        a = _coefficients(kb[2], i)
        b, d, _ = _pieces(u)
        return _dot4(a, b), kb[1] * _dot4(a, d)

    @njit(**_JIT)
    def value(r, kb):
        """g, bit-identical to value_deriv's: LLVM's reassociation and fused multiply-adds
        (FASTMATH) depend on which intermediates have other uses, so g is computed with its
        derivative (a few flops) and the derivative kept alive by adding 0 times it (not folded:
        FASTMATH keeps NaN and infinity semantics)."""
        g, g1 = value_deriv(r, kb)
        return g + 0.0 * g1

    @njit(**_JIT)
    def adjoint_init():
        return ZERO

    @njit(**_JIT)
    def adjoint_pair(acc, r, kb, p, q):
        """With g_c = -g', g'_c = -g'', g_w = -y g', g'_w = -g'/w - y g'' (x depends on c and w)
        and g_a_j = B_j, g'_a_j = s B_j': the four sums of the docstring above, and
        B_j p + s B_j' q for the four coefficients of the pair's interval."""
        x, i, u = _locate(r, kb)
        s = kb[1]
        a = _coefficients(kb[2], i)
        b, d, d2 = _pieces(u)
        g = _dot4(a, b)
        g1 = s * _dot4(a, d)
        g2 = s * s * _dot4(a, d2)
        e = g1 * p + g2 * q
        y = x * TWO_OVER_K - 1.0
        sq = s * q
        return _accumulate(acc, (g * p + g1 * q, e, y * e, g1 * q), i + 4,
                           (b[0] * p + d[0] * sq, b[1] * p + d[1] * sq, b[2] * p + d[2] * sq,
                            b[3] * p + d[3] * sq))

    @njit(**_JIT)
    def adjoint_finish(acc, kb, sc):
        """(dJ/dsigma, (dJ/dc, dJ/dw, dJ/da_0, ..., dJ/da_{n-1})) with sc = sigma (scale 1):
        dJ/dc = -sc sum (g' p + g'' q), dJ/dw = -sc (sum y (g' p + g'' q) + sum g' q / w)."""
        inv_w = kb[1] * TWO_OVER_K
        return acc[0], (-sc * acc[1], -sc * (acc[2] + acc[3] * inv_w)) + _scaled(acc, sc)[C_LO:C_HI]

    return {"load": load, "value": value, "value_deriv": value_deriv,
            "adjoint_init": adjoint_init, "adjoint_pair": adjoint_pair,
            "adjoint_finish": adjoint_finish}


# ----------------------------------------------------------------------------- NumPy side
def cardinal_bspline(t):
    """The uniform cubic B-spline B(t) (support [0, 4]), NumPy, from its four cubic pieces."""
    t = np.asarray(t, dtype=np.float64)
    return np.select([(t >= 0) & (t < 1), (t >= 1) & (t < 2), (t >= 2) & (t < 3), (t >= 3) & (t <= 4)],
                     [t ** 3, -3 * t ** 3 + 12 * t ** 2 - 12 * t + 4,
                      3 * t ** 3 - 24 * t ** 2 + 60 * t - 44, (4 - t) ** 3], 0.0) / 6.0


def bump_coefficients(n):
    """(n,): least-squares coefficients of the polynomial bump t^3 = (1 - y^2)^3, y in [-1, 1],
    in the window's basis (x = (y + 1) K / 2)."""
    K = n + 3
    y = np.linspace(-1.0, 1.0, _FIT_POINTS)
    x = (y + 1.0) * K / 2
    basis = cardinal_bspline(x[:, None] - np.arange(n)[None, :])
    coef, *_ = np.linalg.lstsq(basis, (1.0 - y ** 2) ** 3, rcond=None)
    return coef


class Spline(RadialFamily):
    """Window centre and width per (central species, body): `centres`, `widths` (S, B), Å; and
    N B-spline coefficients `coefficients` (S, B, N)."""

    def __init__(self, n_coefficients=DEFAULT_COEFFICIENTS):
        n = int(n_coefficients)
        if not 1 <= n <= MAX_COEFFICIENTS:
            raise ValueError(f"a spline radial family has 1 to {MAX_COEFFICIENTS} coefficients, "
                             f"got {n}")
        self.n_coefficients = n
        self.n_intervals = n + 3
        self.name = "spline" if n == DEFAULT_COEFFICIENTS else f"spline-{n}"
        self.gradient_names = ("centres", "widths") + tuple(f"coefficients[{j}]" for j in range(n))
        # per-instance Numba functions (instance attributes: not bound to the instance)
        self.__dict__.update(_numba_functions(n))
        self._bump = bump_coefficients(n)

    def variant(self, arg):
        """The family "spline-N" for arg = "N" (N trainable coefficients per body)."""
        try:
            n = int(arg)
        except ValueError:
            n = 0
        if str(n) != arg or not 1 <= n <= MAX_COEFFICIENTS:
            raise ValueError(f"radial family spline-N takes an integer N in [1, "
                             f"{MAX_COEFFICIENTS}] (trainable coefficients per body), got "
                             f"'spline-{arg}'")
        return SPLINE if n == DEFAULT_COEFFICIENTS else Spline(n)

    def parameter_shapes(self, n_species, n_bodies):
        return {"centres": (n_species, n_bodies), "widths": (n_species, n_bodies),
                "coefficients": (n_species, n_bodies, self.n_coefficients)}

    def initial_parameters(self, rng, n_species, n_bodies, cutoff, width=None):
        """Windows as the polynomial family's (centres uniform in [w, cutoff - w], all widths w,
        default cutoff / 4); coefficients the least-squares fit of the bump t^3."""
        window = POLYNOMIAL.initial_parameters(rng, n_species, n_bodies, cutoff, width)
        return {**window, "coefficients": np.broadcast_to(
            self._bump, (n_species, n_bodies, self.n_coefficients)).copy()}

    def check(self, params, cutoff):
        POLYNOMIAL.check(params, cutoff)

    def support(self, params, cutoff):
        return POLYNOMIAL.support(params, cutoff)

    def kernel_constants(self, params, cutoff):
        c = np.asarray(params["centres"], dtype=np.float64)
        w = np.asarray(params["widths"], dtype=np.float64)
        n = self.n_coefficients
        rows = np.zeros(c.shape + (n + 8,))
        rows[..., 0] = c - w
        rows[..., 1] = self.n_intervals / (2.0 * w)
        rows[..., 5:5 + n] = params["coefficients"]
        return rows, np.ones_like(c)

    def gradients(self, slots):
        return {"centres": np.ascontiguousarray(slots[..., 0]),
                "widths": np.ascontiguousarray(slots[..., 1]),
                "coefficients": np.ascontiguousarray(slots[..., 2:])}

    # L-BFGS-B variables: the polynomial family's (w, u) for the window, the coefficients as they are
    def free_variables(self, params, cutoff):
        return {**POLYNOMIAL.free_variables(params, cutoff), "coefficients": params["coefficients"]}

    def free_bounds(self, name, cutoff):
        return (None, None) if name == "coefficients" else POLYNOMIAL.free_bounds(name, cutoff)

    def from_free(self, free, cutoff):
        return {**POLYNOMIAL.from_free(free, cutoff), "coefficients": free["coefficients"]}

    def free_gradient(self, free, grad, cutoff):
        return {**POLYNOMIAL.free_gradient(free, grad, cutoff),
                "coefficients": grad["coefficients"]}


SPLINE = Spline()
