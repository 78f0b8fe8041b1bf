"""Pairs: the stage between the neighbour list and the moments (design page, §1 and §4).

Per centre atom i, `gather_pairs` computes its pair vectors v_ij = r_j + S_ij . cell - r_i, keeps
those with r < cutoff and counting-sorts them by (neighbour species, distance bin) into
structure-of-arrays scratch P (PAIR_ROWS, n). A body's radial support then covers one contiguous run
of pairs per neighbour species (`support_bin_ranges` gives the bins), which is what lets the moment
kernels skip every radial function whose support excludes a pair. None of this depends on the
parameters, so training sorts every atom's pairs of a dataset once (`sort_dataset_pairs`) and the
kernels copy them back per atom (`load_sorted_pairs`) instead of recomputing them.
`pair_tangents` fills the per-pair rows of the training tangent pass (design page, §5).
"""
from collections import namedtuple

import numpy as np
from numba import njit, prange

from ._numba import FASTMATH

# Rows of the sorted pair scratch P (PAIR_ROWS, n): distance r (Å), unit vector rhat, 1/r (1/Å).
P_R, P_UX, P_UY, P_UZ, P_INV_R = 0, 1, 2, 3, 4
PAIR_ROWS = 5


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def pair_vector(positions, cell, shifts, i, j, q):
    """v_ij = r_j + S_q . cell - r_i as three scalars (Å)."""
    s0 = shifts[q, 0]
    s1 = shifts[q, 1]
    s2 = shifts[q, 2]
    vx = positions[j, 0] - positions[i, 0] + s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0]
    vy = positions[j, 1] - positions[i, 1] + s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1]
    vz = positions[j, 2] - positions[i, 2] + s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2]
    return vx, vy, vz


@njit(cache=True, error_model="numpy")
def support_bin_ranges(bin_ptr, bin_bodies, n_bodies):
    """Distance bins [k0, k1) spanned by each body's support, (R, B, 2) int64 per radial row
    (central species, or species pair: `moments.radial_row_of`), read off the per-bin candidate
    lists of `radial.support_bins` (bin_ptr (R, nbins + 1), bin_bodies) so that both describe
    the same supports. k0 = k1 = 0 for a body no bin lists."""
    ranges = np.zeros((bin_ptr.shape[0], n_bodies, 2), np.int64)
    for s in range(bin_ptr.shape[0]):
        for k in range(bin_ptr.shape[1] - 1):
            for m in range(bin_ptr[s, k], bin_ptr[s, k + 1]):
                b = bin_bodies[m]
                if ranges[s, b, 1] == 0:
                    ranges[s, b, 0] = k
                ranges[s, b, 1] = k + 1
    return ranges


@njit(cache=True, error_model="numpy")
def pair_scratch(n_max, n_keys):
    """Per-chunk scratch of `gather_pairs` for atoms with at most n_max neighbours and n_keys =
    S * nbins sort keys: (P (PAIR_ROWS, n_max), pair_q (n_max,), key_start (n_keys + 1,), work),
    work being its private buffers."""
    work = (np.empty((PAIR_ROWS, n_max)), np.empty(n_max, np.int64), np.empty(n_max, np.int64),
            np.empty(n_keys, np.int64))
    return (np.empty((PAIR_ROWS, n_max)), np.empty(n_max, np.int64),
            np.empty(n_keys + 1, np.int64), work)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def gather_pairs(i, positions, cell, offsets, second, shifts, species, cutoff, inv_bin, n_bins,
                 P, pair_q, key_start, work):
    """Atom i's pairs with r < cutoff, counting-sorted by the key (neighbour species s, distance
    bin k = int(r * inv_bin)) into P (PAIR_ROWS, n_max) columns; pair_q[k] is the sorted pair's
    index in the neighbour list. key_start (S * n_bins + 1,): the pairs of neighbour species s in
    bins [k0, k1) are P[:, key_start[s * n_bins + k0]:key_start[s * n_bins + k1]].
    P, pair_q, key_start, work come from `pair_scratch`.

    Returns (distance to the closest neighbour or inf, number of kept pairs)."""
    raw, raw_key, raw_q, cursor = work
    key_start[:] = 0
    cutoff2 = cutoff * cutoff
    closest2 = np.inf
    n = 0
    for q in range(offsets[i], offsets[i + 1]):
        j = second[q]
        vx, vy, vz = pair_vector(positions, cell, shifts, i, j, q)
        r2 = vx * vx + vy * vy + vz * vz
        if r2 >= cutoff2:
            continue
        closest2 = min(closest2, r2)
        r = np.sqrt(r2)
        inv_r = 1.0 / r
        raw[P_R, n] = r
        raw[P_UX, n] = vx * inv_r
        raw[P_UY, n] = vy * inv_r
        raw[P_UZ, n] = vz * inv_r
        raw[P_INV_R, n] = inv_r
        # the clamp keeps a pair whose r * inv_bin rounds up to n_bins in the last bin
        key = species[j] * n_bins + min(int(r * inv_bin), n_bins - 1)
        raw_key[n] = key
        raw_q[n] = q
        key_start[key + 1] += 1                 # counts, turned into starts by the prefix sum
        n += 1
    for key in range(cursor.shape[0]):
        key_start[key + 1] += key_start[key]
        cursor[key] = key_start[key]
    for k in range(n):
        dest = cursor[raw_key[k]]
        cursor[raw_key[k]] = dest + 1
        for row in range(PAIR_ROWS):
            P[row, dest] = raw[row, k]
        pair_q[dest] = raw_q[k]
    return np.sqrt(closest2), n



@njit(cache=True, error_model="numpy")
def max_neighbours(offsets):
    """Largest neighbour count of any atom (sizes the per-chunk pair scratch)."""
    n = 0
    for i in range(offsets.shape[0] - 1):
        n = max(n, offsets[i + 1] - offsets[i])
    return n



# ----------------------------------------------------------------------------- training
# The training gradient (lattenb.training) needs, per atom, the moments A and their tangents Adot
# along a pair tangent field vtilde (design page, §5), then the parameter adjoint of
# J = Abar . A + Adotbar . Adot. Both run body-major over the pairs sorted by `gather_pairs`,
# as the energy kernel does, reading per-pair tangent rows that `pair_tangents` fills once per
# atom: each pair meets tens of bodies, so its r-hat monomials and their tangents are computed
# once rather than per (pair, body).

# Rows of the per-pair tangent scratch T (TANGENT_ROWS, n): rdot = rhat . vtilde, d rhat =
# (vtilde - rhat rdot) / r (the rank-1 tangent; rank 1's monomials are P's rhat rows), the unique
# monomials of rhat^(x)2 (xx, xy, xz, yy, yz, zz), rhat^(x)3 (xxx, xxy, xxz, xyy, xyz, xzz,
# yyy, yyz, yzz, zzz) and rhat^(x)4 (xxxx, xxxy, ..., zzzz: the 15 sorted index quadruples in
# lexicographic order) and their tangents. Tangent rows carry the units of vtilde (per Å for d).
T_RDOT, T_D, T_R2, T_D2, T_R3, T_D3, T_R4, T_D4 = 0, 1, 4, 10, 16, 26, 36, 51
TANGENT_ROWS = 66


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def pair_tangents(i, n_kept, P, pair_q, second, delta, strain_bar, max_rank, T):
    """Fill T (TANGENT_ROWS, n_max) for atom i's n_kept pairs sorted by `gather_pairs` (P,
    pair_q), along vtilde_ij = delta_i - delta_j + strain_bar . v_ij (delta (N, 3), strain_bar
    (3, 3) of i's frame). Rows of ranks above max_rank are left unset."""
    for k in range(n_kept):
        j = second[pair_q[k]]
        r = P[P_R, k]
        ux = P[P_UX, k]
        uy = P[P_UY, k]
        uz = P[P_UZ, k]
        vx = r * ux
        vy = r * uy
        vz = r * uz
        tx = (delta[i, 0] - delta[j, 0] + strain_bar[0, 0] * vx + strain_bar[0, 1] * vy
              + strain_bar[0, 2] * vz)
        ty = (delta[i, 1] - delta[j, 1] + strain_bar[1, 0] * vx + strain_bar[1, 1] * vy
              + strain_bar[1, 2] * vz)
        tz = (delta[i, 2] - delta[j, 2] + strain_bar[2, 0] * vx + strain_bar[2, 1] * vy
              + strain_bar[2, 2] * vz)
        rdot = ux * tx + uy * ty + uz * tz
        inv_r = P[P_INV_R, k]
        T[T_RDOT, k] = rdot
        T[T_D, k] = (tx - ux * rdot) * inv_r
        T[T_D + 1, k] = (ty - uy * rdot) * inv_r
        T[T_D + 2, k] = (tz - uz * rdot) * inv_r
    if max_rank >= 2:
        for k in range(n_kept):
            ux = P[P_UX, k]
            uy = P[P_UY, k]
            uz = P[P_UZ, k]
            dx = T[T_D, k]
            dy = T[T_D + 1, k]
            dz = T[T_D + 2, k]
            T[T_R2, k] = ux * ux
            T[T_R2 + 1, k] = ux * uy
            T[T_R2 + 2, k] = ux * uz
            T[T_R2 + 3, k] = uy * uy
            T[T_R2 + 4, k] = uy * uz
            T[T_R2 + 5, k] = uz * uz
            T[T_D2, k] = 2.0 * dx * ux
            T[T_D2 + 1, k] = dx * uy + ux * dy
            T[T_D2 + 2, k] = dx * uz + ux * dz
            T[T_D2 + 3, k] = 2.0 * dy * uy
            T[T_D2 + 4, k] = dy * uz + uy * dz
            T[T_D2 + 5, k] = 2.0 * dz * uz
            if max_rank < 3:
                continue
            # each cubic monomial is u_a times a quadratic one, its tangent d_a m + u_a dm
            for e in range(6):                      # xxx, xxy, xxz, xyy, xyz, xzz = x * (xx .. zz)
                T[T_R3 + e, k] = ux * T[T_R2 + e, k]
                T[T_D3 + e, k] = dx * T[T_R2 + e, k] + ux * T[T_D2 + e, k]
            for e in range(3):                      # yyy, yyz, yzz = y * (yy, yz, zz)
                T[T_R3 + 6 + e, k] = uy * T[T_R2 + 3 + e, k]
                T[T_D3 + 6 + e, k] = dy * T[T_R2 + 3 + e, k] + uy * T[T_D2 + 3 + e, k]
            T[T_R3 + 9, k] = uz * T[T_R2 + 5, k]    # zzz
            T[T_D3 + 9, k] = dz * T[T_R2 + 5, k] + uz * T[T_D2 + 5, k]
            if max_rank < 4:
                continue
            # the quartic ones likewise from the cubic ones
            for e in range(10):                     # xxxx .. xzzz = x * (xxx .. zzz)
                T[T_R4 + e, k] = ux * T[T_R3 + e, k]
                T[T_D4 + e, k] = dx * T[T_R3 + e, k] + ux * T[T_D3 + e, k]
            for e in range(4):                      # yyyy, yyyz, yyzz, yzzz = y * (yyy .. zzz)
                T[T_R4 + 10 + e, k] = uy * T[T_R3 + 6 + e, k]
                T[T_D4 + 10 + e, k] = dy * T[T_R3 + 6 + e, k] + uy * T[T_D3 + 6 + e, k]
            T[T_R4 + 14, k] = uz * T[T_R3 + 9, k]   # zzzz
            T[T_D4 + 14, k] = dz * T[T_R3 + 9, k] + uz * T[T_D3 + 9, k]


# ----------------------------------------------------------------------------- sorted once
#: Every atom's pairs of a dataset sorted once (`sort_dataset_pairs`): rows (PAIR_ROWS, P) and
#: pair_q (P,) as `gather_pairs` leaves them in its scratch, atom i's run starting at start[i]
#: (its neighbour-list offset) with count[i] kept pairs; key_start (N, S * n_bins + 1) int32
#: relative to that run; closest (N,) Å. Empty arrays (count of length 0) mean "sort on the fly".
SortedPairs = namedtuple("SortedPairs", ["rows", "pair_q", "start", "count", "key_start",
                                         "closest"])


_NO_SORTED_PAIRS = SortedPairs(np.zeros((PAIR_ROWS, 0)), np.zeros(0, np.int64),
                               np.zeros(1, np.int64), np.zeros(0, np.int64),
                               np.zeros((0, 1), np.int32), np.zeros(0))


def no_sorted_pairs():
    """The empty `SortedPairs` (one shared instance; the kernels only read its sizes): the kernels
    then sort every atom's pairs as they go (MD, one-off predictions)."""
    return _NO_SORTED_PAIRS


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
def _sort_kernel(positions, cells, frame_of_atom, offsets, second, shifts, species, cutoff,
                 inv_bin, n_bins, n_species, n_chunks):
    n_atoms = positions.shape[0]
    n_keys = n_species * n_bins
    # atom i's kept pairs go where its listed pairs are: offsets[i] + k, k < count[i]
    rows = np.empty((PAIR_ROWS, second.shape[0]))
    pair_q = np.empty(second.shape[0], np.int64)
    count = np.empty(n_atoms, np.int64)
    key_start = np.empty((n_atoms, n_keys + 1), np.int32)
    closest = np.empty(n_atoms)
    n_max = max_neighbours(offsets)
    for chunk in prange(n_chunks):
        P, q_scratch, k_scratch, work = pair_scratch(n_max, n_keys)
        for i in range(chunk * n_atoms // n_chunks, (chunk + 1) * n_atoms // n_chunks):
            closest[i], n = gather_pairs(i, positions, cells[frame_of_atom[i]], offsets, second,
                                         shifts, species, cutoff, inv_bin, n_bins, P, q_scratch,
                                         k_scratch, work)
            count[i] = n
            a = offsets[i]
            for row in range(PAIR_ROWS):
                for k in range(n):
                    rows[row, a + k] = P[row, k]
            for k in range(n):
                pair_q[a + k] = q_scratch[k]
            for key in range(n_keys + 1):
                key_start[i, key] = k_scratch[key]
    return SortedPairs(rows, pair_q, offsets.copy(), count, key_start, closest)


def sort_dataset_pairs(system, cutoff, inv_bin, n_bins, n_species, n_chunks):
    """`SortedPairs` of every atom of a `kernels.System` (a training set): the parameter-free pair
    work done once, so that the training kernels only copy each atom's run back. Memory: 48 bytes
    per listed pair, plus 4 (S n_bins + 1) + 16 bytes per atom."""
    return _sort_kernel(system.positions, system.cells, system.frame_of_atom, system.offsets,
                        system.second, system.shifts, system.species, cutoff, inv_bin, n_bins,
                        n_species, n_chunks)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def copy_sorted_pairs(i, rows, q, start, count, keys, closest, P, pair_q, key_start):
    """Atom i's pairs from the fields of a `SortedPairs` into the scratch of `pair_scratch`, as
    `gather_pairs` would have left them. Returns (distance to the closest neighbour, number of
    kept pairs)."""
    a = start[i]
    n = count[i]
    for row in range(PAIR_ROWS):
        for k in range(n):
            P[row, k] = rows[row, a + k]
    for k in range(n):
        pair_q[k] = q[a + k]
    for key in range(key_start.shape[0]):
        key_start[key] = keys[i, key]
    return closest[i], n
