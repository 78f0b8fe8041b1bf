"""Compactly supported piecewise-polynomial radial functions (design page, section 2).

    f(r; c, w) = t^3 / c^2,    t = max(0, 1 - y^2),    y = (r - c) / w

f is C^2 at r = c +- w, so no separate cutoff function is needed as long as c + w <= r_cut.
All functions are scalar Numba kernels built on `radial_support`, which the pair loops inline;
they take the reciprocals 1/w and 1/c^2 precomputed once per evaluation (`radial_reciprocals`).
Units: r, c, w in Å; f in 1/Å^2.
"""
import numpy as np
from numba import njit
from ._numba import FASTMATH


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def radial_support(r, c, inv_w):
    """y = (r - c) / w and t = max(0, 1 - y^2), the building block of every radial quantity.

    t = 0 outside the support, so f = t^3 / c^2 and all its derivatives below vanish there
    without a branch: the vectorised pair loops of the kernels use this directly."""
    y = (r - c) * inv_w
    return y, max(0.0, 1.0 - y * y)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def radial_value(r, c, inv_w, inv_c2):
    """f(r) (zero outside the support |r - c| < w)."""
    t = radial_support(r, c, inv_w)[1]
    return t * t * t * inv_c2


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def radial_value_deriv(r, c, inv_w, inv_c2):
    """(f, df/dr); both zero outside the support."""
    y, t = radial_support(r, c, inv_w)
    t2 = t * t
    return t2 * t * inv_c2, -6.0 * y * t2 * inv_w * inv_c2


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def radial_param_derivs(r, c, w):
    """Derivatives with respect to the trainable centre c and width w.

    Returns (f, f_r, f_c, f_w, f_rc, f_rw) where f_r = df/dr, f_c = df/dc, f_w = df/dw,
    f_rc = d2f/(dr dc), f_rw = d2f/(dr dw). All zero outside the support. The training kernel
    (`descriptor._radial_adjoint`) uses these formulas folded into per-body pair sums; the tests
    check them here against finite differences.

    With y = (r - c)/w, t = 1 - y^2, g(t) = t^3:
      f   = t^3 / c^2
      f_r = -6 y t^2 / (w c^2)
      f_c = 6 y t^2 / (w c^2) - 2 t^3 / c^3                  (y_c = -1/w and the 1/c^2 factor)
      f_w = 6 y^2 t^2 / (w c^2)                              (y_w = -y/w)
      f_rc = d/dc[-6 y t^2 / (w c^2)]
           = (6/(w^2 c^2)) (t^2 - 4 y^2 t) + 12 y t^2 / (w c^3)
      f_rw = d/dw[-6 y t^2 / (w c^2)] = (6 y / (w^2 c^2)) (2 t^2 - 4 y^2 t)
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


def radial_reciprocals(centres, widths):
    """1/w and 1/c^2 for arrays of centres and widths (any matching shapes)."""
    return 1.0 / np.asarray(widths, dtype=np.float64), 1.0 / np.asarray(centres, dtype=np.float64) ** 2


def support_bins(centres, widths, cutoff, bin_width=0.1, body_rank=None):
    """Which radial functions can be non-zero in each radial bin, per central species.

    Lets a pair loop visit only the bodies whose support [c - w, c + w] overlaps the pair's
    distance bin, so a radial function that is zero for a pair costs nothing for that pair.

    centres, widths: (S, B) arrays (central species, body), Å.
    body_rank (B,): if given, the candidates of each bin are listed by increasing rank, so the
    kernels' per-rank branch is predictable.
    Returns (bin_ptr (S, nbins + 1) int64, bin_bodies (K,) int64, inv_bin_width float): the
    candidate bodies for species s and distance r are
    bin_bodies[bin_ptr[s, k]:bin_ptr[s, k + 1]] with k = int(r * inv_bin_width).
    """
    centres = np.asarray(centres, dtype=np.float64)
    widths = np.asarray(widths, dtype=np.float64)
    n_species, n_bodies = centres.shape
    order = (np.arange(n_bodies) if body_rank is None
             else np.argsort(np.asarray(body_rank), kind="stable"))
    nbins = max(1, int(np.ceil(cutoff / bin_width)))
    lo = np.arange(nbins) * bin_width
    hi = lo + bin_width
    ptr = np.zeros((n_species, nbins + 1), dtype=np.int64)
    chunks = []
    total = 0
    for s in range(n_species):
        lo_b = (centres[s] - widths[s])[None, :]
        hi_b = (centres[s] + widths[s])[None, :]
        overlap = ((lo_b < hi[:, None]) & (hi_b > lo[:, None]))[:, order]  # (nbins, B)
        counts = overlap.sum(axis=1)
        ptr[s, 0] = total
        ptr[s, 1:] = total + np.cumsum(counts)
        total = ptr[s, -1]
        chunks.append(order[np.nonzero(overlap)[1]].astype(np.int64))  # row-major: bins in order
    bodies = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return ptr, bodies, 1.0 / bin_width
