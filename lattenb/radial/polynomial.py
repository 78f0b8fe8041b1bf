"""The polynomial bump family "polynomial" (design page, §2), LATTE's own radial functions:

    f(r; c, w) = t^3 / c^2,    t = max(0, 1 - y^2),    y = (r - c) / w

f is C^2 at r = c +- w, so no separate cutoff function is needed as long as c + w <= r_cut.
Parameters per (central species, body): centre c and width w (Å). The kernels see
g = t^3 (value) and fold the scale 1/c^2 into the species weight. Training works on (w, u) with
c = w + u (r_cut - 2 w), w in [MIN_WIDTH, r_cut / 2], u in [0, 1], which keeps c - w >= 0 and
c + w <= r_cut. Units: r, c, w in Å; f in 1/Å^2.
"""
import numpy as np
from numba import njit

from .._numba import FASTMATH
from . import RadialFamily

MIN_WIDTH = 0.3          # Å: smallest radial width the fit may reach
_JIT = dict(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")


@njit(**_JIT)
def radial_support(r, c, inv_w):
    """y = (r - c) / w and t = max(0, 1 - y^2), the building block of every quantity below.

    t = 0 outside the support, so g = t^3 and all its derivatives vanish there without a branch:
    the vectorised pair loops rely on this."""
    y = (r - c) * inv_w
    return y, max(0.0, 1.0 - y * y)


@njit(**_JIT)
def load(constants, s, b):
    """(c, 1/w, 1/c^2) of body b for central species s."""
    return constants[s, b, 0], constants[s, b, 1], constants[s, b, 2]


@njit(**_JIT)
def value(r, kb):
    t = radial_support(r, kb[0], kb[1])[1]
    return t * t * t


@njit(**_JIT)
def value_deriv(r, kb):
    """(t^3, d(t^3)/dr = -6 y t^2 / w)."""
    y, t = radial_support(r, kb[0], kb[1])
    t2 = t * t
    return t2 * t, -6.0 * kb[1] * y * t2


@njit(**_JIT)
def adjoint_init():
    return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@njit(**_JIT)
def adjoint_pair(acc, r, kb, p, q):
    """The six pair sums whose combination `adjoint_finish` turns into dJ/dsigma, dJ/dc and dJ/dw:
    t^3, y t^2, y^2 t^2 times p and y t^2, t^2 - 4 y^2 t, y (2 t^2 - 4 y^2 t) times q."""
    y, t = radial_support(r, kb[0], kb[1])
    t2 = t * t
    yt2 = y * t2
    h = t2 - 4.0 * y * y * t
    return (acc[0] + t2 * t * p, acc[1] + yt2 * p, acc[2] + y * yt2 * p, acc[3] + yt2 * q,
            acc[4] + h * q, acc[5] + y * (t2 + h) * q)


@njit(**_JIT)
def adjoint_finish(acc, kb, sc):
    """(dJ/dsigma, (dJ/dc, dJ/dw)) of one body and neighbour species from the pair sums, with
    sc = sigma / c^2. The radial derivatives used (as in `param_derivs`):
      f = t^3 / c^2,                          f_r = -6 y t^2 / (w c^2),
      f_c = (6 y t^2 / w - 2 t^3 / c) / c^2,  f_w = 6 y^2 t^2 / (w c^2),
      f_rc = (6 (t^2 - 4 y^2 t) / w^2 + 12 y t^2 / (w c)) / c^2,
      f_rw = 6 y (2 t^2 - 4 y^2 t) / (w^2 c^2)."""
    s0, s1, s2, s3, s4, s5 = acc
    iw = kb[1]
    inv_c2 = kb[2]
    kd = -6.0 * iw
    radial = s0 + kd * s3                       # sum_k (t^3 p_k - 6 y t^2 q_k / w)
    return (inv_c2 * radial, (sc * (-kd * s1 - 2.0 * (1.0 / kb[0]) * radial + 6.0 * iw * iw * s4),
                              sc * 6.0 * iw * (s2 + iw * s5)))


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def param_derivs(r, c, w):
    """Derivatives of f with respect to r and the trainable centre c and width w, written out
    independently of the pair-sum form above (the tests check both against finite differences).

    Returns (f, f_r, f_c, f_w, f_rc, f_rw), all zero outside the support. With y = (r - c)/w,
    t = 1 - y^2:
      f   = t^3 / c^2
      f_r = -6 y t^2 / (w c^2)
      f_c = 6 y t^2 / (w c^2) - 2 t^3 / c^3                  (y_c = -1/w and the 1/c^2 factor)
      f_w = 6 y^2 t^2 / (w c^2)                              (y_w = -y/w)
      f_rc = (6/(w^2 c^2)) (t^2 - 4 y^2 t) + 12 y t^2 / (w c^3)
      f_rw = (6 y / (w^2 c^2)) (2 t^2 - 4 y^2 t)
    """
    inv_w = 1.0 / w
    y, t = radial_support(r, c, inv_w)
    inv_c = 1.0 / c
    inv_c2 = inv_c * inv_c
    t2 = t * t
    f = t2 * t * inv_c2
    f_r = -6.0 * y * t2 * inv_w * inv_c2
    f_c = -f_r - 2.0 * f * inv_c
    f_w = -f_r * y
    k = 6.0 * inv_w * inv_w * inv_c2
    f_rc = k * (t2 - 4.0 * y * y * t) - 2.0 * f_r * inv_c
    f_rw = k * y * (2.0 * t2 - 4.0 * y * y * t)
    return f, f_r, f_c, f_w, f_rc, f_rw


class Polynomial(RadialFamily, functions=globals()):
    """Centre and width per (central species, body): `centres`, `widths` (S, B), Å."""
    name = "polynomial"
    gradient_names = ("centres", "widths")

    def parameter_shapes(self, n_species, n_bodies):
        return {"centres": (n_species, n_bodies), "widths": (n_species, n_bodies)}

    def initial_parameters(self, rng, n_species, n_bodies, cutoff, width=None):
        """Centres uniform in [w, cutoff - w], all widths w (default cutoff / 4)."""
        width = cutoff / 4 if width is None else float(width)
        if not MIN_WIDTH <= width <= cutoff / 2:
            raise ValueError(f"width must lie in [{MIN_WIDTH}, cutoff/2 = {cutoff / 2}] Å, "
                             f"got {width}")
        return {"centres": rng.uniform(width, cutoff - width, size=(n_species, n_bodies)),
                "widths": np.full((n_species, n_bodies), width)}

    def check(self, params, cutoff):
        c, w = params["centres"], params["widths"]
        if np.any(w <= 0) or np.any(c - w < -1e-9) or np.any(c + w > cutoff + 1e-9):
            raise ValueError("radial functions must satisfy 0 < w, w <= c and c + w <= cutoff")

    def support(self, params, cutoff):
        c, w = params["centres"], params["widths"]
        return c - w, c + w

    def kernel_constants(self, params, cutoff):
        c = np.ascontiguousarray(params["centres"], dtype=np.float64)
        inv_w = 1.0 / np.asarray(params["widths"], dtype=np.float64)
        inv_c2 = 1.0 / c ** 2
        return np.ascontiguousarray(np.stack([c, inv_w, inv_c2], axis=-1)), inv_c2

    def cuda_functions(self, real):
        """Device functions of the CUDA kernels: inside |y| < 1, g = t^3, dg/dr = -6 y t^2 / w,
        with constants (c, 1/w, 1/c^2) per (species, body)."""
        one, six = real(1.0), real(6.0)

        def inside(r, constants, s, b):
            y = (r - constants[s, b, 0]) * constants[s, b, 1]
            return y > -one and y < one

        def value(r, constants, s, b):
            y = (r - constants[s, b, 0]) * constants[s, b, 1]
            t = one - y * y
            return t * t * t

        def value_deriv(r, constants, s, b):
            inv_w = constants[s, b, 1]
            y = (r - constants[s, b, 0]) * inv_w
            t = one - y * y
            t2 = t * t
            return t2 * t, -six * inv_w * y * t2
        return {"inside": inside, "value": value, "value_deriv": value_deriv}

    # L-BFGS-B variables: (w, u) with c = w + u (r_cut - 2 w)
    def free_variables(self, params, cutoff):
        w = params["widths"]
        span = cutoff - 2 * w
        u = np.where(span > 1e-12, (params["centres"] - w) / np.where(span > 1e-12, span, 1.0), 0.5)
        return {"widths": w, "u": np.clip(u, 0, 1)}

    def free_bounds(self, name, cutoff):
        return {"widths": (MIN_WIDTH, cutoff / 2), "u": (0.0, 1.0)}[name]

    def from_free(self, free, cutoff):
        w, u = free["widths"], free["u"]
        return {"widths": w, "centres": w + u * (cutoff - 2 * w)}

    def free_gradient(self, free, grad, cutoff):
        w, u = free["widths"], free["u"]
        return {"widths": grad["widths"] + grad["centres"] * (1 - 2 * u),
                "u": grad["centres"] * (cutoff - 2 * w)}


POLYNOMIAL = Polynomial()
