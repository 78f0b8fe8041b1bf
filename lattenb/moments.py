"""Moments: the body tensors of every atom, their reverse pass to per-pair forces, and the
training passes (design page, §3-5).

Per atom i and body b of rank p (b runs over all bodies of all terms):

    A_b[beta] = sum_j sigma_b(s_i, s_j) f_b(r_ij) prod_{e<p} rhat_ij[beta_e]

stored flat (C order, 3^p values) at `body_offset[b]` of one per-atom vector of length M. The radial
functions f_b come from a radial family (`lattenb.radial`): the kernels take the family token and
call its value / value_deriv / adjoint functions, with f_sb = scale_sb g_sb and sigma * scale folded
into `sigma_scaled` (S, S, B) [central, neighbour, body].

The kernels are body-major over the pairs sorted by `pairs.gather_pairs`: a body's radial support
covers one contiguous run of pairs per neighbour species, along which sigma is constant.
`atom_moments` sums the body's unique tensor components over the run in local accumulators, and
`atom_pair_gradients` adds each body's share to per-pair weights. Both inner loops are branch-free
(a family's functions vanish outside the support without a branch), so they vectorise.
`atom_tangent_moments` and `atom_parameter_gradients` are the tangent and parameter-reverse passes
of training (they read the per-pair tangent rows of `pairs.pair_tangents`).
"""
import numpy as np
from numba import njit
from numba.core.extending import overload

from ._numba import FASTMATH
from .pairs import (P_INV_R, P_R, P_UX, P_UY, P_UZ, T_D, T_D2, T_D3, T_D4, T_R2, T_R3, T_R4,
                    T_RDOT)
from .radial import (radial_adjoint_finish, radial_adjoint_init, radial_adjoint_pair, radial_load,
                     radial_value, radial_value_deriv)

# Number of entries (3^p) of a body tensor of rank p = 0..4.
RANK_SIZE = (1, 3, 9, 27, 81)
# Rows of the per-pair reverse weights Q (4, n): D (eV) and H (eV, a vector), see
# `atom_pair_gradients`.
Q_D, Q_HX, Q_HY, Q_HZ = 0, 1, 2, 3
ONE_THIRD = 1.0 / 3.0


def _canonical_index(rank):
    """(3^rank,) int64: for every flat (C-order) index of a rank-`rank` tensor, the flat index of
    its sorted index tuple. A symmetric tensor is fixed by its entries at these canonical places."""
    shape = (3,) * rank
    return np.array([np.ravel_multi_index(tuple(sorted(idx)), shape) for idx in np.ndindex(*shape)],
                    dtype=np.int64)


# Moments of rank 2 to 4 are symmetric: the kernels sum only their unique components (at the
# canonical places xx, xy, xz, yy, yz, zz = 0, 1, 2, 4, 5, 8 and xxx, xxy, xxz, xyy, xyz, xzz,
# yyy, yyz, yzz, zzz = 0, 1, 2, 4, 5, 8, 13, 14, 17, 26, and likewise the 15 of rank 4) and then
# mirror them.
CANONICAL2 = _canonical_index(2)
CANONICAL3 = _canonical_index(3)
CANONICAL4 = _canonical_index(4)


# The unique components of r-hat powers: their flat places in a 3^p tensor (xx, xy, xz, yy, yz,
# zz and xxx, xxy, xxz, xyy, xyz, xzz, yyy, yyz, yzz, zzz), and scalar helpers that add
# f rhat^(x)p to register accumulators (tuples) and store them, shared by `atom_moments`' rank
# branches (and, with `_add_tangent3` / `_add_tangent6` / `_add_tangent10`, by
# `atom_tangent_moments`': -0.5 % instructions per training gradient for ranks 2-3, rank 1 the
# same as written out, callgrind with NUMBA_CPU_NAME=generic). Same arithmetic as written out
# (bit-identical moments); 0.2 % more instructions per MD step (callgrind, fast preset, Cu 864).
UNIQUE1 = (0, 1, 2)
UNIQUE2 = (0, 1, 2, 4, 5, 8)
UNIQUE3 = (0, 1, 2, 4, 5, 8, 13, 14, 17, 26)
# xxxx, xxxy, xxxz, xxyy, xxyz, xxzz, xyyy, xyyz, xyzz, xzzz, yyyy, yyyz, yyzz, yzzz, zzzz
UNIQUE4 = (0, 1, 2, 4, 5, 8, 13, 14, 17, 26, 40, 41, 44, 53, 80)
ZERO3 = (0.0,) * 3
ZERO6 = (0.0,) * 6
ZERO10 = (0.0,) * 10
ZERO15 = (0.0,) * 15
_INLINE = dict(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")


@njit(**_INLINE)
def _add_unique1(acc, f, ux, uy, uz):
    return (acc[0] + f * ux, acc[1] + f * uy, acc[2] + f * uz)


@njit(**_INLINE)
def _add_unique2(acc, f, ux, uy, uz):
    fx = f * ux
    fy = f * uy
    return (acc[0] + fx * ux, acc[1] + fx * uy, acc[2] + fx * uz, acc[3] + fy * uy,
            acc[4] + fy * uz, acc[5] + f * uz * uz)


@njit(**_INLINE)
def _add_unique3(acc, f, ux, uy, uz):
    fxx = f * ux * ux
    fxy = f * ux * uy
    fxz = f * ux * uz
    fyy = f * uy * uy
    fyz = f * uy * uz
    return (acc[0] + fxx * ux, acc[1] + fxx * uy, acc[2] + fxx * uz, acc[3] + fxy * uy,
            acc[4] + fxy * uz, acc[5] + fxz * uz, acc[6] + fyy * uy, acc[7] + fyy * uz,
            acc[8] + fyz * uz, acc[9] + f * uz * uz * uz)


@njit(**_INLINE)
def _add_unique4(acc, f, ux, uy, uz):
    # each quartic monomial is u_a times a cubic one (the order of `pairs.pair_tangents`' rows)
    c = _add_unique3(ZERO10, f, ux, uy, uz)
    return (acc[0] + c[0] * ux, acc[1] + c[1] * ux, acc[2] + c[2] * ux, acc[3] + c[3] * ux,
            acc[4] + c[4] * ux, acc[5] + c[5] * ux, acc[6] + c[6] * ux, acc[7] + c[7] * ux,
            acc[8] + c[8] * ux, acc[9] + c[9] * ux, acc[10] + c[6] * uy, acc[11] + c[7] * uy,
            acc[12] + c[8] * uy, acc[13] + c[9] * uy, acc[14] + c[9] * uz)


@njit(**_INLINE)
def _store_unique(A, off, sc, acc, places):
    """A[off + places[e]] += sc acc[e]: a body's accumulated unique components."""
    for e in range(len(acc)):
        A[off + places[e]] += sc * acc[e]


@njit(**_INLINE)
def _pair_weights(wa, wd, rdot, m, dm):
    """(p_k, q_k) of `atom_parameter_gradients` for one pair: p = wa . m + wd . dm and
    q = rdot (wd . m), with wa, wd the class sums of Abar_b, Adotbar_b and m, dm the pair's
    unique r-hat monomials and their tangents (tuples of equal length)."""
    p = 0.0
    q = 0.0
    for e in range(len(m)):
        p += wa[e] * m[e] + wd[e] * dm[e]
        q += wd[e] * m[e]
    return p, rdot * q


@njit(**_INLINE)
def _add_tangent3(acc_a, acc_d, f, g, m, dm):
    """acc_a += f m and acc_d += g m + f dm over the 3 components of a rank-1 body (m = rhat,
    dm its tangent)."""
    return ((acc_a[0] + f * m[0], acc_a[1] + f * m[1], acc_a[2] + f * m[2]),
            (acc_d[0] + g * m[0] + f * dm[0], acc_d[1] + g * m[1] + f * dm[1],
             acc_d[2] + g * m[2] + f * dm[2]))


@njit(**_INLINE)
def _add_tangent6(acc_a, acc_d, f, g, m, dm):
    """As `_add_tangent3` over the 6 unique rank-2 components."""
    return ((acc_a[0] + f * m[0], acc_a[1] + f * m[1], acc_a[2] + f * m[2], acc_a[3] + f * m[3],
             acc_a[4] + f * m[4], acc_a[5] + f * m[5]),
            (acc_d[0] + g * m[0] + f * dm[0], acc_d[1] + g * m[1] + f * dm[1],
             acc_d[2] + g * m[2] + f * dm[2], acc_d[3] + g * m[3] + f * dm[3],
             acc_d[4] + g * m[4] + f * dm[4], acc_d[5] + g * m[5] + f * dm[5]))


@njit(**_INLINE)
def _add_tangent10(acc_a, acc_d, f, g, m, dm):
    """As `_add_tangent6` over the 10 unique rank-3 components."""
    return ((acc_a[0] + f * m[0], acc_a[1] + f * m[1], acc_a[2] + f * m[2], acc_a[3] + f * m[3],
             acc_a[4] + f * m[4], acc_a[5] + f * m[5], acc_a[6] + f * m[6], acc_a[7] + f * m[7],
             acc_a[8] + f * m[8], acc_a[9] + f * m[9]),
            (acc_d[0] + g * m[0] + f * dm[0], acc_d[1] + g * m[1] + f * dm[1],
             acc_d[2] + g * m[2] + f * dm[2], acc_d[3] + g * m[3] + f * dm[3],
             acc_d[4] + g * m[4] + f * dm[4], acc_d[5] + g * m[5] + f * dm[5],
             acc_d[6] + g * m[6] + f * dm[6], acc_d[7] + g * m[7] + f * dm[7],
             acc_d[8] + g * m[8] + f * dm[8], acc_d[9] + g * m[9] + f * dm[9]))


@njit(**_INLINE)
def _add_tangent15(acc_a, acc_d, f, g, m, dm):
    """As `_add_tangent6` over the 15 unique rank-4 components."""
    return ((acc_a[0] + f * m[0], acc_a[1] + f * m[1], acc_a[2] + f * m[2], acc_a[3] + f * m[3],
             acc_a[4] + f * m[4], acc_a[5] + f * m[5], acc_a[6] + f * m[6], acc_a[7] + f * m[7],
             acc_a[8] + f * m[8], acc_a[9] + f * m[9], acc_a[10] + f * m[10],
             acc_a[11] + f * m[11], acc_a[12] + f * m[12], acc_a[13] + f * m[13],
             acc_a[14] + f * m[14]),
            (acc_d[0] + g * m[0] + f * dm[0], acc_d[1] + g * m[1] + f * dm[1],
             acc_d[2] + g * m[2] + f * dm[2], acc_d[3] + g * m[3] + f * dm[3],
             acc_d[4] + g * m[4] + f * dm[4], acc_d[5] + g * m[5] + f * dm[5],
             acc_d[6] + g * m[6] + f * dm[6], acc_d[7] + g * m[7] + f * dm[7],
             acc_d[8] + g * m[8] + f * dm[8], acc_d[9] + g * m[9] + f * dm[9],
             acc_d[10] + g * m[10] + f * dm[10], acc_d[11] + g * m[11] + f * dm[11],
             acc_d[12] + g * m[12] + f * dm[12], acc_d[13] + g * m[13] + f * dm[13],
             acc_d[14] + g * m[14] + f * dm[14]))


@njit(**_INLINE)
def _rows6(T, row, k):
    """(T[row, k], ..., T[row + 5, k]): pair k's six unique rank-2 monomials (or tangents)."""
    return (T[row, k], T[row + 1, k], T[row + 2, k], T[row + 3, k], T[row + 4, k],
            T[row + 5, k])


@njit(**_INLINE)
def _rows10(T, row, k):
    """As `_rows6` for the ten of rank 3."""
    return (T[row, k], T[row + 1, k], T[row + 2, k], T[row + 3, k], T[row + 4, k],
            T[row + 5, k], T[row + 6, k], T[row + 7, k], T[row + 8, k], T[row + 9, k])


@njit(**_INLINE)
def _rows15(T, row, k):
    """As `_rows6` for the fifteen of rank 4."""
    return (T[row, k], T[row + 1, k], T[row + 2, k], T[row + 3, k], T[row + 4, k],
            T[row + 5, k], T[row + 6, k], T[row + 7, k], T[row + 8, k], T[row + 9, k],
            T[row + 10, k], T[row + 11, k], T[row + 12, k], T[row + 13, k], T[row + 14, k])


# Radial rows (`KernelArrays.radial_row`): a (S,) map, one row per central species (or row 0 for
# all, shared), or an (S, S) map, one row per (central, neighbour) species pair. The helpers below
# are resolved by Numba from the map's dimension, so the two shapes compile to two kernels: with
# the (S,) map the body-major forward loops read the body's radial constants and support bins
# once per body, exactly as before pair rows existed (reading them per neighbour-species run
# from an (S, S) map cost 4 % of an MD step on a 4-species bcc alloy, callgrind), and only the
# (S, S) map reads them per run.
def radial_row_of(radial_row, si, sj):
    """The row of the radial arrays for central species si and neighbour species sj."""
    raise NotImplementedError("only callable from Numba kernels")


def run_bins(body_bins, radial_row, si, sj, b, bin0, bin1):
    """The support bins of body b for the run of neighbour species sj: (bin0, bin1), the body's
    own, unless the radial functions are per species pair."""
    raise NotImplementedError("only callable from Numba kernels")


def run_constants(family, radial, radial_row, si, sj, b, kb):
    """The radial constants of body b for the run of neighbour species sj: kb, the body's own,
    unless the radial functions are per species pair."""
    raise NotImplementedError("only callable from Numba kernels")


@overload(radial_row_of, inline="always")
def _radial_row_of(radial_row, si, sj):
    if radial_row.ndim == 1:
        return lambda radial_row, si, sj: radial_row[si]
    return lambda radial_row, si, sj: radial_row[si, sj]


@overload(run_bins, inline="always")
def _run_bins(body_bins, radial_row, si, sj, b, bin0, bin1):
    if radial_row.ndim == 1:
        return lambda body_bins, radial_row, si, sj, b, bin0, bin1: (bin0, bin1)

    def per_pair(body_bins, radial_row, si, sj, b, bin0, bin1):
        row = radial_row[si, sj]
        return body_bins[row, b, 0], body_bins[row, b, 1]
    return per_pair


@overload(run_constants, inline="always")
def _run_constants(family, radial, radial_row, si, sj, b, kb):
    if radial_row.ndim == 1:
        return lambda family, radial, radial_row, si, sj, b, kb: kb
    return lambda family, radial, radial_row, si, sj, b, kb: radial_load(
        family, radial, radial_row[si, sj], b)


# ----------------------------------------------------------------------------- forward
# Notes on the pair loops here and in `atom_pair_gradients`, all measured:
# - they run over np.uint64 bounds: a provably non-negative index spares Numba's negative-index
#   wraparound, which would otherwise keep LLVM from vectorising them;
# - the per-rank loops stay inside the body loop rather than in helpers taking P: calling (or
#   Numba-inlining) such a helper costs a call or atomic reference-count updates per (neighbour
#   species, body), as much as a short loop itself; helpers that take and return only scalars
#   and tuples (`_add_unique2`, ...) cost nothing of the kind, nor does `_add_q`, called per pair
#   with Q (callgrind: the same instructions as its lines written out in each rank branch);
# - the body is the outer loop and the neighbour species the inner one, each body summing over
#   all neighbour species in one accumulator with sigma_scaled per pair, so a (neighbour species,
#   body) run costs only its bounds: against the species-outer order (before 2026-12-02, which
#   paid the radial constants, the store and the reverse weights per run) MD steps on random bcc
#   alloys took 14.4 -> 13.6 µs/atom with 4 species and 20.6 -> 19.3 with 16, the same with 1
#   (fast preset, one thread, two rounds side by side). Most of the cost of many species present
#   remains: the runs of one neighbour species are a few pairs long, too short to vectorise
#   (descriptors with the neighbour list: 13.0 µs/atom on a 16-species alloy, 4.2 on one
#   species, same model).
#   Sorting the pairs by distance bin only, with a per-pair species weight, would remove it.
#   The species loop is written out in each rank branch on purpose: one species loop above the
#   rank branch keeps all four ranks' accumulators live across it and cost 6 % per MD step
#   (1 and 16 species, medians of four side-by-side rounds, 2026-12-02).
@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_moments(family, si, P, key_start, n_bins, body_rank, body_offset, body_bins, sigma_scaled,
                 radial, radial_row, A):
    """Body tensors A (M,) of an atom of species si from its pairs sorted by `gather_pairs`.

    family: a radial family token (`lattenb.radial`) and radial (R, B, K) its kernel constants
    in R radial rows, radial_row the species -> row map (`radial_row_of`); body_bins (R, B, 2):
    the support bins of every body per row (`pairs.support_bin_ranges`). For each
    body, the unique components of sum_k sigma_scaled(si, s_k) g(r_k) rhat_k^(x)p over the pairs
    of its support bins (one run per neighbour species) are summed in local accumulators."""
    A[:] = 0.0
    n_species = sigma_scaled.shape[1]
    row = radial_row_of(radial_row, si, 0)      # the row of every body (pair rows: per run)
    for b in range(body_rank.shape[0]):
        kb_body = radial_load(family, radial, row, b)
        bin0 = body_bins[row, b, 0]
        bin1 = body_bins[row, b, 1]
        p = body_rank[b]
        off = body_offset[b]
        # one accumulator per body over all neighbour species, each pair weighted by its
        # sigma_scaled: a block of one neighbour species costs only its bounds (see the notes above)
        if p == 0:
            a0 = 0.0
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                sc = sigma_scaled[si, sj, b]
                for k in range(lo, hi):
                    a0 += sc * radial_value(family, P[P_R, k], kb)
            A[off] += a0
        elif p == 1:
            acc1 = ZERO3
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                sc = sigma_scaled[si, sj, b]
                for k in range(lo, hi):
                    acc1 = _add_unique1(acc1, sc * radial_value(family, P[P_R, k], kb),
                                        P[P_UX, k], P[P_UY, k], P[P_UZ, k])
            _store_unique(A, off, 1.0, acc1, UNIQUE1)
        elif p == 2:
            acc2 = ZERO6
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                sc = sigma_scaled[si, sj, b]
                for k in range(lo, hi):
                    acc2 = _add_unique2(acc2, sc * radial_value(family, P[P_R, k], kb),
                                        P[P_UX, k], P[P_UY, k], P[P_UZ, k])
            _store_unique(A, off, 1.0, acc2, UNIQUE2)
        elif p == 3:
            acc3 = ZERO10
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                sc = sigma_scaled[si, sj, b]
                for k in range(lo, hi):
                    acc3 = _add_unique3(acc3, sc * radial_value(family, P[P_R, k], kb),
                                        P[P_UX, k], P[P_UY, k], P[P_UZ, k])
            _store_unique(A, off, 1.0, acc3, UNIQUE3)
        else:
            acc4 = ZERO15
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                sc = sigma_scaled[si, sj, b]
                for k in range(lo, hi):
                    acc4 = _add_unique4(acc4, sc * radial_value(family, P[P_R, k], kb),
                                        P[P_UX, k], P[P_UY, k], P[P_UZ, k])
            _store_unique(A, off, 1.0, acc4, UNIQUE4)
    for b in range(body_rank.shape[0]):            # mirror the unique components
        off = body_offset[b]
        if body_rank[b] == 2:
            for e in range(9):
                A[off + e] = A[off + CANONICAL2[e]]
        elif body_rank[b] == 3:
            for e in range(27):
                A[off + e] = A[off + CANONICAL3[e]]
        elif body_rank[b] == 4:
            for e in range(81):
                A[off + e] = A[off + CANONICAL4[e]]



# ----------------------------------------------------------------------------- reverse
@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _class_sums2(a, off):
    """Sums of a rank-2 tensor a[off:off + 9] over the entries of each unique component (xx,
    xy, xz, yy, yz, zz): a . rhat^(x)2 = sum over components of these sums times the monomials."""
    return (a[off], a[off + 1] + a[off + 3], a[off + 2] + a[off + 6], a[off + 4],
            a[off + 5] + a[off + 7], a[off + 8])


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _class_sums3(a, off):
    """As `_class_sums2` for a rank-3 tensor a[off:off + 27] (xxx, xxy, ..., zzz)."""
    return (a[off], a[off + 1] + a[off + 3] + a[off + 9], a[off + 2] + a[off + 6] + a[off + 18],
            a[off + 4] + a[off + 10] + a[off + 12],
            a[off + 5] + a[off + 7] + a[off + 11] + a[off + 15] + a[off + 19] + a[off + 21],
            a[off + 8] + a[off + 20] + a[off + 24], a[off + 13],
            a[off + 14] + a[off + 16] + a[off + 22], a[off + 17] + a[off + 23] + a[off + 25],
            a[off + 26])


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _class_sums4(a, off):
    """As `_class_sums2` for a rank-4 tensor a[off:off + 81] (`UNIQUE4` order)."""
    return (a[off], a[off + 1] + a[off + 3] + a[off + 9] + a[off + 27],
            a[off + 2] + a[off + 6] + a[off + 18] + a[off + 54],
            a[off + 4] + a[off + 10] + a[off + 12] + a[off + 28] + a[off + 30] + a[off + 36],
            a[off + 5] + a[off + 7] + a[off + 11] + a[off + 15] + a[off + 19] + a[off + 21]
            + a[off + 29] + a[off + 33] + a[off + 45] + a[off + 55] + a[off + 57] + a[off + 63],
            a[off + 8] + a[off + 20] + a[off + 24] + a[off + 56] + a[off + 60] + a[off + 72],
            a[off + 13] + a[off + 31] + a[off + 37] + a[off + 39],
            a[off + 14] + a[off + 16] + a[off + 22] + a[off + 32] + a[off + 34] + a[off + 38]
            + a[off + 42] + a[off + 46] + a[off + 48] + a[off + 58] + a[off + 64] + a[off + 66],
            a[off + 17] + a[off + 23] + a[off + 25] + a[off + 35] + a[off + 47] + a[off + 51]
            + a[off + 59] + a[off + 61] + a[off + 65] + a[off + 69] + a[off + 73] + a[off + 75],
            a[off + 26] + a[off + 62] + a[off + 74] + a[off + 78], a[off + 40],
            a[off + 41] + a[off + 43] + a[off + 49] + a[off + 67],
            a[off + 44] + a[off + 50] + a[off + 52] + a[off + 68] + a[off + 70] + a[off + 76],
            a[off + 53] + a[off + 71] + a[off + 77] + a[off + 79], a[off + 80])


# p sym(a) has at each unique component p times the mean of the entries that share it: the
# class sum times p / (the class's size)
@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _sym2_weights(a, off):
    """The unique components of 2 sym(a) for a rank-2 tensor a[off:off + 9] (xx, xy, ..., zz)."""
    c = _class_sums2(a, off)
    return (2.0 * c[0], c[1], c[2], 2.0 * c[3], c[4], 2.0 * c[5])


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _sym3_weights(a, off):
    """The unique components of 3 sym(a) for a rank-3 tensor a[off:off + 27] (xxx, ..., zzz);
    classes of 1, 3 or 6 entries."""
    c = _class_sums3(a, off)
    return (3.0 * c[0], c[1], c[2], c[3], 0.5 * c[4], c[5], 3.0 * c[6], c[7], c[8], 3.0 * c[9])


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _sym4_weights(a, off):
    """The unique components of 4 sym(a) for a rank-4 tensor a[off:off + 81] (`UNIQUE4` order);
    classes of 1, 4, 6 or 12 entries."""
    c = _class_sums4(a, off)
    third = 1.0 / 3.0
    two_thirds = 2.0 / 3.0
    return (4.0 * c[0], c[1], c[2], two_thirds * c[3], third * c[4], two_thirds * c[5], c[6],
            third * c[7], third * c[8], c[9], 4.0 * c[10], c[11], two_thirds * c[12], c[13],
            4.0 * c[14])


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _h2(m, ux, uy, uz):
    """h = M rhat for the symmetric M with unique components m (xx, xy, xz, yy, yz, zz)."""
    mxx, mxy, mxz, myy, myz, mzz = m
    return (mxx * ux + mxy * uy + mxz * uz,
            mxy * ux + myy * uy + myz * uz,
            mxz * ux + myz * uy + mzz * uz)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _h3(m, ux, uy, uz):
    """h_g = sum_bc M_gbc rhat_b rhat_c for the symmetric M with unique components m
    (xxx, xxy, xxz, xyy, xyz, xzz, yyy, yyz, yzz, zzz)."""
    mxxx, mxxy, mxxz, mxyy, mxyz, mxzz, myyy, myyz, myzz, mzzz = m
    xx = ux * ux
    yy = uy * uy
    zz = uz * uz
    xy2 = 2.0 * ux * uy
    xz2 = 2.0 * ux * uz
    yz2 = 2.0 * uy * uz
    return (mxxx * xx + mxyy * yy + mxzz * zz + mxxy * xy2 + mxxz * xz2 + mxyz * yz2,
            mxxy * xx + myyy * yy + myzz * zz + mxyy * xy2 + mxyz * xz2 + myyz * yz2,
            mxxz * xx + myyz * yy + mzzz * zz + mxyz * xy2 + mxzz * xz2 + myzz * yz2)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _h4(m, ux, uy, uz):
    """h_g = sum_bcd M_gbcd rhat_b rhat_c rhat_d for the symmetric M with unique components m
    (`UNIQUE4` order): each unique cubic monomial with its multiplicity, times the component
    of M that prepending g makes."""
    xxx = ux * ux * ux
    xxy = 3.0 * ux * ux * uy
    xxz = 3.0 * ux * ux * uz
    xyy = 3.0 * ux * uy * uy
    xyz = 6.0 * ux * uy * uz
    xzz = 3.0 * ux * uz * uz
    yyy = uy * uy * uy
    yyz = 3.0 * uy * uy * uz
    yzz = 3.0 * uy * uz * uz
    zzz = uz * uz * uz
    return (m[0] * xxx + m[1] * xxy + m[2] * xxz + m[3] * xyy + m[4] * xyz + m[5] * xzz
            + m[6] * yyy + m[7] * yyz + m[8] * yzz + m[9] * zzz,
            m[1] * xxx + m[3] * xxy + m[4] * xxz + m[6] * xyy + m[7] * xyz + m[8] * xzz
            + m[10] * yyy + m[11] * yyz + m[12] * yzz + m[13] * zzz,
            m[2] * xxx + m[4] * xxy + m[5] * xxz + m[7] * xyy + m[8] * xyz + m[9] * xzz
            + m[11] * yyy + m[12] * yyz + m[13] * yzz + m[14] * zzz)


@njit(**_INLINE)
def _add_q(Q, k, c, f, fp, hx, hy, hz, ux, uy, uz):
    """Q[:, k] += (c fp (h . rhat), f h): one body's share of pair k's D and H, with c = 1/p
    (h . rhat = p sigma_scaled (Abar_b . R_k) for a rank-p body)."""
    Q[Q_D, k] += (c * fp) * (hx * ux + hy * uy + hz * uz)
    Q[Q_HX, k] += f * hx
    Q[Q_HY, k] += f * hy
    Q[Q_HZ, k] += f * hz


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_pair_gradients(family, si, n_kept, P, pair_q, key_start, n_bins, body_rank, body_offset,
                        body_bins, sigma_scaled, radial, radial_row, Abar, Q, pair_grad):
    """dE/dv (eV/Å) for the n_kept sorted pairs of an atom of species si into
    pair_grad[pair_q[k]], given Abar = dE/dA (M,); Q (4, n_max) scratch.

    With R_k the r-hat powers of pair k, the design page's per-body formula sums to

        dE/dv_k = D_k rhat_k + (H_k - (H_k . rhat_k) rhat_k) / r_k,
        D_k = sum_b sigma_b f'_b(r_k) (Abar_b . R_k),   H_k = sum_b sigma_b f_b(r_k) h_b(rhat_k),

    h_b,g = sum_e sum_{beta: beta_e = g} Abar_b[beta] prod_{e' != e} rhat[beta_e'], and
    h_b . rhat = p_b (Abar_b . R). Only the symmetric part of Abar_b meets the symmetric r-hat
    powers, so ranks 2 to 4 use its unique components.

    Returns the atom's contribution to dE/d(strain) as 9 scalars sum_k g_a v_b (row-major ab)."""
    for k in range(n_kept):
        Q[Q_D, k] = 0.0
        Q[Q_HX, k] = 0.0
        Q[Q_HY, k] = 0.0
        Q[Q_HZ, k] = 0.0
    n_species = sigma_scaled.shape[1]
    row = radial_row_of(radial_row, si, 0)      # the row of every body (pair rows: per run)
    for b in range(body_rank.shape[0]):
        kb_body = radial_load(family, radial, row, b)
        bin0 = body_bins[row, b, 0]
        bin1 = body_bins[row, b, 1]
        p = body_rank[b]
        off = body_offset[b]
        # D_k += g' (h . rhat) / p and H_k += g h with h = p sigma_scaled sym(Abar_b) .
        # rhat^(x)(p-1) (see above; g, g' the family's value and d/dr; rank 0 has no h); the body's
        # weights are built once, sigma_scaled enters per pair (as in `atom_moments`)
        if p == 0:
            w0 = Abar[off]
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                w = sigma_scaled[si, sj, b] * w0
                for k in range(lo, hi):
                    Q[Q_D, k] += w * radial_value_deriv(family, P[P_R, k], kb)[1]
        elif p == 1:
            hx = Abar[off]
            hy = Abar[off + 1]
            hz = Abar[off + 2]
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                sc = sigma_scaled[si, sj, b]
                for k in range(lo, hi):
                    f, fp = radial_value_deriv(family, P[P_R, k], kb)
                    _add_q(Q, k, 1.0, sc * f, sc * fp, hx, hy, hz, P[P_UX, k], P[P_UY, k],
                           P[P_UZ, k])
        elif p == 2:
            m2 = _sym2_weights(Abar, off)
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                sc = sigma_scaled[si, sj, b]
                for k in range(lo, hi):
                    f, fp = radial_value_deriv(family, P[P_R, k], kb)
                    ux = P[P_UX, k]
                    uy = P[P_UY, k]
                    uz = P[P_UZ, k]
                    hx, hy, hz = _h2(m2, ux, uy, uz)
                    _add_q(Q, k, 0.5, sc * f, sc * fp, hx, hy, hz, ux, uy, uz)
        elif p == 3:
            m3 = _sym3_weights(Abar, off)
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                sc = sigma_scaled[si, sj, b]
                for k in range(lo, hi):
                    f, fp = radial_value_deriv(family, P[P_R, k], kb)
                    ux = P[P_UX, k]
                    uy = P[P_UY, k]
                    uz = P[P_UZ, k]
                    hx, hy, hz = _h3(m3, ux, uy, uz)
                    _add_q(Q, k, ONE_THIRD, sc * f, sc * fp, hx, hy, hz, ux, uy, uz)
        else:
            m4 = _sym4_weights(Abar, off)
            for sj in range(n_species):
                k0, k1 = run_bins(body_bins, radial_row, si, sj, b, bin0, bin1)
                lo = np.uint64(key_start[sj * n_bins + k0])
                hi = np.uint64(key_start[sj * n_bins + k1])
                if lo == hi:
                    continue
                kb = run_constants(family, radial, radial_row, si, sj, b, kb_body)
                sc = sigma_scaled[si, sj, b]
                for k in range(lo, hi):
                    f, fp = radial_value_deriv(family, P[P_R, k], kb)
                    ux = P[P_UX, k]
                    uy = P[P_UY, k]
                    uz = P[P_UZ, k]
                    hx, hy, hz = _h4(m4, ux, uy, uz)
                    _add_q(Q, k, 0.25, sc * f, sc * fp, hx, hy, hz, ux, uy, uz)
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = 0.0
    for k in range(n_kept):
        r = P[P_R, k]
        ux = P[P_UX, k]
        uy = P[P_UY, k]
        uz = P[P_UZ, k]
        inv_r = P[P_INV_R, k]
        d = Q[Q_D, k]
        hx = Q[Q_HX, k]
        hy = Q[Q_HY, k]
        hz = Q[Q_HZ, k]
        hr = hx * ux + hy * uy + hz * uz
        gx = d * ux + (hx - hr * ux) * inv_r
        gy = d * uy + (hy - hr * uy) * inv_r
        gz = d * uz + (hz - hr * uz) * inv_r
        q = pair_q[k]
        pair_grad[q, 0] = gx
        pair_grad[q, 1] = gy
        pair_grad[q, 2] = gz
        vx = r * ux
        vy = r * uy
        vz = r * uz
        s00 += gx * vx
        s01 += gx * vy
        s02 += gx * vz
        s10 += gy * vx
        s11 += gy * vy
        s12 += gy * vz
        s20 += gz * vx
        s21 += gz * vy
        s22 += gz * vz
    return s00, s01, s02, s10, s11, s12, s20, s21, s22



@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_tangent_moments(family, si, P, T, key_start, n_bins, body_rank, body_offset, body_bins,
                         sigma_scaled, radial, radial_row, A, Adot):
    """Body tensors A (M,) and their tangents Adot (M,) of an atom of species si, from its pairs
    sorted by `gather_pairs` (P, key_start) and their tangent rows T (`pair_tangents`).

    Adot_b = sigma_b sum_k (f'(r_k) rdot_k R_k + f(r_k) Rdot_k), R_k the r-hat powers: with the
    family's g and g' = dg/dr (f = scale g), each pair of the body's support runs adds g R_k to
    A's and g' rdot R_k + g Rdot_k to Adot's unique-component accumulators, which are then scaled
    by sigma_scaled and mirrored as in `atom_moments`."""
    A[:] = 0.0
    Adot[:] = 0.0
    for sj in range(sigma_scaled.shape[1]):
        first = sj * n_bins
        if key_start[first] == key_start[first + n_bins]:
            continue                            # no neighbours of species sj
        row = radial_row_of(radial_row, si, sj)
        for b in range(body_rank.shape[0]):
            lo = np.uint64(key_start[first + body_bins[row, b, 0]])
            hi = np.uint64(key_start[first + body_bins[row, b, 1]])
            if lo == hi:
                continue
            kb = radial_load(family, radial, row, b)
            p = body_rank[b]
            off = body_offset[b]
            sc = sigma_scaled[si, sj, b]
            if p == 0:
                a0 = d0 = 0.0
                for k in range(lo, hi):
                    f, fp = radial_value_deriv(family, P[P_R, k], kb)
                    a0 += f
                    d0 += fp * T[T_RDOT, k]
                A[off] += sc * a0
                Adot[off] += sc * d0
            elif p == 1:
                acc_a = acc_d = ZERO3
                for k in range(lo, hi):
                    f, fp = radial_value_deriv(family, P[P_R, k], kb)
                    acc_a, acc_d = _add_tangent3(
                        acc_a, acc_d, f, fp * T[T_RDOT, k], (P[P_UX, k], P[P_UY, k], P[P_UZ, k]),
                        (T[T_D, k], T[T_D + 1, k], T[T_D + 2, k]))
                _store_unique(A, off, sc, acc_a, UNIQUE1)
                _store_unique(Adot, off, sc, acc_d, UNIQUE1)
            elif p == 2:
                acc_a = acc_d = ZERO6
                for k in range(lo, hi):
                    f, fp = radial_value_deriv(family, P[P_R, k], kb)
                    acc_a, acc_d = _add_tangent6(
                        acc_a, acc_d, f, fp * T[T_RDOT, k],
                        _rows6(T, T_R2, k), _rows6(T, T_D2, k))
                _store_unique(A, off, sc, acc_a, UNIQUE2)
                _store_unique(Adot, off, sc, acc_d, UNIQUE2)
            elif p == 3:
                acc_a = acc_d = ZERO10
                for k in range(lo, hi):
                    f, fp = radial_value_deriv(family, P[P_R, k], kb)
                    acc_a, acc_d = _add_tangent10(
                        acc_a, acc_d, f, fp * T[T_RDOT, k],
                        _rows10(T, T_R3, k), _rows10(T, T_D3, k))
                _store_unique(A, off, sc, acc_a, UNIQUE3)
                _store_unique(Adot, off, sc, acc_d, UNIQUE3)
            else:
                acc_a = acc_d = ZERO15
                for k in range(lo, hi):
                    f, fp = radial_value_deriv(family, P[P_R, k], kb)
                    acc_a, acc_d = _add_tangent15(
                        acc_a, acc_d, f, fp * T[T_RDOT, k],
                        _rows15(T, T_R4, k), _rows15(T, T_D4, k))
                _store_unique(A, off, sc, acc_a, UNIQUE4)
                _store_unique(Adot, off, sc, acc_d, UNIQUE4)
    for b in range(body_rank.shape[0]):            # mirror the unique components
        off = body_offset[b]
        if body_rank[b] == 2:
            for e in range(9):
                A[off + e] = A[off + CANONICAL2[e]]
                Adot[off + e] = Adot[off + CANONICAL2[e]]
        elif body_rank[b] == 3:
            for e in range(27):
                A[off + e] = A[off + CANONICAL3[e]]
                Adot[off + e] = Adot[off + CANONICAL3[e]]
        elif body_rank[b] == 4:
            for e in range(81):
                A[off + e] = A[off + CANONICAL4[e]]
                Adot[off + e] = Adot[off + CANONICAL4[e]]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_parameter_gradients(family, si, P, T, key_start, n_bins, body_rank, body_offset,
                             body_bins, sigma_scaled, radial, radial_row, Abar, Adotbar, g_sigma,
                             g_radial, W):
    """Add the parameter gradient of J = Abar . A + Adotbar . Adot (Abar, Adotbar (M,)) for an
    atom of species si (pairs and tangent rows as in `atom_tangent_moments`) to g_sigma (S, S, B)
    and the radial family's gradient slots g_radial (R, B, n_slots) (the radial rows of species
    si, `radial_row_of`).

    With p_k = Abar_b . R_k + Adotbar_b . Rdot_k and q_k = rdot_k (Adotbar_b . R_k) for the pairs
    k of neighbour species sj in body b's support, f' = df/dr and f'_theta = d2f/(dr dtheta):

        dJ/dsigma_b(si, sj) = sum_k (f p_k + f' q_k)
        dJ/dtheta_b = sum_sj sigma_b(si, sj) sum_k (f_theta p_k + f'_theta q_k).

    One pass over the body's pairs hands (r_k, p_k, q_k) to the family's accumulators
    (`radial_adjoint_pair`), and `radial_adjoint_finish` turns them into dJ/dsigma and dJ/dtheta.
    Only the symmetric parts of Abar_b and Adotbar_b meet the symmetric R_k and Rdot_k, so ranks
    2 to 4 dot their class sums (`_class_sums2`, ...) with the unique-monomial rows of
    T, and rank 1 dots Abar_b, Adotbar_b with rhat_k and its tangent rows, all through
    `_pair_weights` (-0.2 % and -0.1 % instructions per training gradient against writing ranks
    2-3 and rank 1 out).

    Two loops per body and run: the first writes (p_k, q_k) to the scratch W (2, n_max), the
    second hands them to the family. The first then vectorises (its only outputs are per-pair
    stores); in one loop the family's run-time-indexed accumulators (the spline's coefficients)
    kept all of it scalar. The training gradient's tangent pass on mlearn Ni's plain-fit model
    (rank-3 bodies, splines) took 51-57 µs/atom in one loop against 48-49 in two (one thread,
    three alternating rounds, 2026-12-07); on AcAc's (shared channels, ranks up to 2) it is
    level, 15.6-16.3 against 15.2-16.4."""
    for sj in range(sigma_scaled.shape[1]):
        first = sj * n_bins
        if key_start[first] == key_start[first + n_bins]:
            continue                            # no neighbours of species sj
        row = radial_row_of(radial_row, si, sj)
        for b in range(body_rank.shape[0]):
            lo = np.uint64(key_start[first + body_bins[row, b, 0]])
            hi = np.uint64(key_start[first + body_bins[row, b, 1]])
            if lo == hi:
                continue
            kb = radial_load(family, radial, row, b)
            p = body_rank[b]
            off = body_offset[b]
            acc = radial_adjoint_init(family)
            if p == 0:
                wa = Abar[off]
                wd = Adotbar[off]
                for k in range(lo, hi):
                    acc = radial_adjoint_pair(family, acc, P[P_R, k], kb, wa, wd * T[T_RDOT, k])
            else:
                if p == 1:
                    wa = (Abar[off], Abar[off + 1], Abar[off + 2])
                    wd = (Adotbar[off], Adotbar[off + 1], Adotbar[off + 2])
                    for k in range(lo, hi):
                        W[0, k], W[1, k] = _pair_weights(wa, wd, T[T_RDOT, k],
                                                         (P[P_UX, k], P[P_UY, k], P[P_UZ, k]),
                                                         (T[T_D, k], T[T_D + 1, k], T[T_D + 2, k]))
                elif p == 2:
                    wa = _class_sums2(Abar, off)
                    wd = _class_sums2(Adotbar, off)
                    for k in range(lo, hi):
                        W[0, k], W[1, k] = _pair_weights(
                            wa, wd, T[T_RDOT, k], _rows6(T, T_R2, k), _rows6(T, T_D2, k))
                elif p == 3:
                    wa = _class_sums3(Abar, off)
                    wd = _class_sums3(Adotbar, off)
                    for k in range(lo, hi):
                        W[0, k], W[1, k] = _pair_weights(
                            wa, wd, T[T_RDOT, k], _rows10(T, T_R3, k), _rows10(T, T_D3, k))
                else:
                    wa = _class_sums4(Abar, off)
                    wd = _class_sums4(Adotbar, off)
                    for k in range(lo, hi):
                        W[0, k], W[1, k] = _pair_weights(
                            wa, wd, T[T_RDOT, k], _rows15(T, T_R4, k), _rows15(T, T_D4, k))
                # the family's adjoint, in a loop of its own (see the docstring)
                for k in range(lo, hi):
                    acc = radial_adjoint_pair(family, acc, P[P_R, k], kb, W[0, k], W[1, k])
            gs, gt = radial_adjoint_finish(family, acc, kb, sigma_scaled[si, sj, b])
            g_sigma[si, sj, b] += gs
            for m in range(len(gt)):
                g_radial[row, b, m] += gt[m]
