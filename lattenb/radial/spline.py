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
N = 12 on first use ("spline-8" is "spline"; 1 <= N <= MAX_COEFFICIENTS). N is a compile-time
constant of the family's Numba functions (they are made per N by `_numba_functions`, closures
inlined into the kernels): the seam's parameter-adjoint accumulator is a tuple of fixed length,
here N + 10, and the kernels are compiled and cached per family name (`radial.RadialFamilyType`),
so the seam itself is unchanged. On CUDA the same arithmetic runs as device functions
(`Spline.cuda_functions`; compiled per N by the CUDA energy kernel).

Cost (O(1) per distance, whatever N): the kernel constants hold, per body, f on each knot
interval as a cubic in the offset u (`kernel_constants`), so a pair finds its interval
k = floor(x), reads 4 adjacent numbers and takes 3 fused multiply-adds for the value (5 for the
value and derivative); no loop over N. The training adjoint also evaluates the 4 B-spline pieces
of the pair's interval and adds them to the coefficient accumulators at a run-time place
(`_accumulate`). Like every family, a body visits only the pairs of the distance bins its window
overlaps. Measured (fast preset, 256-atom fcc Cu cell, one thread, same windows): polynomial about
11, spline about 18 µs/atom/step; a spline spanning the whole range (c - w = 0, c + w = r_cut)
visits every pair within the cutoff (42 neighbours per atom in fcc Cu at 5 Å, against 12 to 42
for a default window of width r_cut / 2, depending on where it sits): with every window spanning
the range, polynomial about 13, spline about 30 µs/atom/step. Windows stay trainable and bounded as for the polynomial family,
so the fit can move and narrow them.
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
# Numba indexes a homogeneous tuple at a run-time index by branching over every index;
# `_accumulate` does it with one stack copy and direct loads/stores (no bounds check: the caller
# keeps idx + 3 inside the tuple; the stack slot is allocated once per function, alloca_once, not
# per pair). `_scaled` multiplies a whole tuple, which Numba cannot do without a loop.
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
def _cubic(row, k):
    """The cubic m0 + m1 u + m2 u^2 + m3 u^3 of row interval k: row[2 + 4 k .. 5 + 4 k] (k >= 0;
    unsigned indices spare Numba's negative-index wraparound)."""
    e = np.uint64(2) + np.uint64(4) * np.uint64(k)
    return row[e], row[e + np.uint64(1)], row[e + np.uint64(2)], row[e + np.uint64(3)]


def _numba_functions(n):
    """The Numba functions of the seam (`radial.NUMBA_FUNCTIONS`) for N = n coefficients.

    Kernel constants per body (a row of 4 (K + 2) + 2): lo = c - w, s = 1/h = K / (2 w), then
    per row interval k = 0 .. K + 1 the four coefficients m0..m3 of f on it as a cubic in u:
    row intervals 1 .. K are the window's knot intervals 0 .. K - 1, and 0 and K + 1 (all zero)
    stand for everything below and above the window, so f and f' are exactly zero there with no
    branch. value and value_deriv read 4 adjacent numbers per pair and take 3 (value) or 5
    (derivative) fused multiply-adds. Adjoint accumulators (a tuple of n + 10): sum (g p + g' q),
    sum (g' p + g'' q), sum y (g' p + g'' q), sum g' q, then one per coefficient of the clamped
    grid (K + 3 = n + 6: the three zero coefficients at each end collect terms that are dropped).
    """
    K = n + 3
    KF = float(K)
    LAST = K - 1
    TWO_OVER_K = 2.0 / K       # y = (r - c) / w = x 2 / K - 1, and 1/w = s 2 / K
    ZERO = (0.0,) * (n + 10)
    C_LO, C_HI = 7, 7 + n      # accumulator places of a_0 .. a_{n-1}

    @njit(**_JIT)
    def load(constants, s, b):
        """(lo, s, row): row = constants[s, b], a view (no copy) from which a pair reads the
        cubic of its interval."""
        return constants[s, b, 0], constants[s, b, 1], constants[s, b]

    @njit(**_JIT)
    def _row_interval(r, kb):
        """(k, u): the row interval k in [0, K + 1] of r and u in [0, 1) within it (x = (r - lo)
        s clamped to [-1, K]: x + 1 = k + u)."""
        x1 = min(max((r - kb[0]) * kb[1], -1.0), KF) + 1.0
        k = int(x1)
        return k, x1 - k

    @njit(**_JIT)
    def value_deriv(r, kb):
        """(g, dg/dr = s dg/du)."""
        k, u = _row_interval(r, kb)
        m0, m1, m2, m3 = _cubic(kb[2], k)
        return m0 + u * (m1 + u * (m2 + u * m3)), kb[1] * (m1 + u * (2.0 * m2 + u * (3.0 * m3)))

    @njit(**_JIT)
    def value(r, kb):
        """g, the same operations as value_deriv's (equal up to how fastmath fuses them)."""
        k, u = _row_interval(r, kb)
        m0, m1, m2, m3 = _cubic(kb[2], k)
        return m0 + u * (m1 + u * (m2 + u * m3))

    @njit(**_JIT)
    def adjoint_init():
        return ZERO

    @njit(**_JIT)
    def adjoint_pair(acc, r, kb, p, q):
        """With g_c = -g', g'_c = -g'', g_w = -y g', g'_w = -g'/w - y g'' (x depends on c and w)
        and g_a_j = B_j, g'_a_j = s B_j': the four sums of the docstring above, and
        B_j p + s B_j' q for the four coefficients of the pair's window interval i (x clamped to
        the window [0, K], where the pieces that meet a_0 or a_{n-1} vanish with their
        derivative, so pairs outside add only to the zero coefficients)."""
        k, v = _row_interval(r, kb)
        s = kb[1]
        m0, m1, m2, m3 = _cubic(kb[2], k)
        g = m0 + v * (m1 + v * (m2 + v * m3))
        g1 = s * (m1 + v * (2.0 * m2 + v * (3.0 * m3)))
        g2 = s * s * (2.0 * m2 + v * (6.0 * m3))
        e = g1 * p + g2 * q
        x = min(max((r - kb[0]) * s, 0.0), KF)
        i = min(int(x), LAST)
        b, d, _ = _pieces(x - i)
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
        """Rows (S, B, 4 (K + 2) + 2) of lo, s and the cubics of the row intervals (see
        `_numba_functions`), scale ones (S, B)."""
        c = np.asarray(params["centres"], dtype=np.float64)
        w = np.asarray(params["widths"], dtype=np.float64)
        n, K = self.n_coefficients, self.n_intervals
        padded = np.zeros(c.shape + (K + 3,))                 # the clamped grid's coefficients
        padded[..., 3:3 + n] = params["coefficients"]
        # window interval i: sum_m padded[i + m] piece_(3 - m)(u), expanded in powers of u
        a0, a1, a2, a3 = (padded[..., m:m + K] for m in range(4))
        cubics = np.zeros(c.shape + (K + 2, 4))
        cubics[..., 1:K + 1, 0] = (a0 + 4.0 * a1 + a2) / 6.0
        cubics[..., 1:K + 1, 1] = (a2 - a0) / 2.0
        cubics[..., 1:K + 1, 2] = (a0 + a2) / 2.0 - a1
        cubics[..., 1:K + 1, 3] = (a3 - a0) / 6.0 + (a1 - a2) / 2.0
        rows = np.empty(c.shape + (4 * (K + 2) + 2,))
        rows[..., 0] = c - w
        rows[..., 1] = K / (2.0 * w)
        rows[..., 2:] = cubics.reshape(c.shape + (-1,))
        return rows, np.ones_like(c)

    def cuda_functions(self, real):
        """Device functions of the CUDA kernels, the same arithmetic as `value_deriv` of
        `_numba_functions`: x = (r - lo) s, inside 0 < x < K; row interval k = int(x) + 1 and
        u = x + 1 - k; the cubic of row k from the constants row."""
        zero, one, two, three = real(0.0), real(1.0), real(2.0), real(3.0)
        k_float = real(self.n_intervals)

        def inside(r, constants, s, b):
            x = (r - constants[s, b, 0]) * constants[s, b, 1]
            return x > zero and x < k_float

        def value_deriv(r, constants, s, b):
            x1 = min(max((r - constants[s, b, 0]) * constants[s, b, 1], -one), k_float) + one
            k = int(x1)
            u = x1 - k
            e = 2 + 4 * k
            m0 = constants[s, b, e]
            m1 = constants[s, b, e + 1]
            m2 = constants[s, b, e + 2]
            m3 = constants[s, b, e + 3]
            return (m0 + u * (m1 + u * (m2 + u * m3)),
                    constants[s, b, 1] * (m1 + u * (two * m2 + u * (three * m3))))

        def value(r, constants, s, b):
            x1 = min(max((r - constants[s, b, 0]) * constants[s, b, 1], -one), k_float) + one
            k = int(x1)
            u = x1 - k
            e = 2 + 4 * k
            return constants[s, b, e] + u * (constants[s, b, e + 1] + u * (
                constants[s, b, e + 2] + u * constants[s, b, e + 3]))
        return {"inside": inside, "value": value, "value_deriv": value_deriv}

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
