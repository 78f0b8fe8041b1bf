"""Body tensors (moments) and their full contractions: the LATTE descriptor (design page, section 3).

Per atom i and body b of rank p (b runs over all bodies of all terms):

    A_b[beta] = sum_j sigma_b(s_i, s_j) f(r_ij; c_b(s_i), w_b(s_i)) prod_{e<p} rhat_ij[beta_e]

stored flat (C order, 3^p values) at `body_offset[b]` of one per-atom vector of length M.
Term t contracts its bodies with its pattern's index table:
G_t = sum_rows prod_k A_{b_k}[table[row, k]] (`contraction_indices` resolves the tables to places
in A once per call).

The per-atom kernels are body-major. `gather_pairs` sorts an atom's pairs (r < cutoff) by neighbour
species, then by distance bin (the bins of `radial.support_bins`), into structure-of-arrays scratch.
A body's radial support [c - w, c + w] then covers one contiguous run of pairs per neighbour
species, along which sigma is constant: `atom_moments` sums the body's unique tensor components
over the run in local accumulators, and `atom_pair_gradients` adds each body's share to per-pair
weights. Both inner loops are branch-free (t = max(0, 1 - y^2) makes a pair outside the support
contribute exactly 0), so they vectorise; per (pair, body) they cost a few multiply-adds instead
of the loads, branches and read-modify-writes of a pair-major loop.

Parameter arrays use species-first layouts: sigma_c2 (S, S, B) [central, neighbour, body] is
sigma / c^2 (so sigma f = sigma_c2 t^3), centres and inv_w (S, B) [central, body] in Å and 1/Å.
"""
import numpy as np
from numba import njit, prange
from ._numba import FASTMATH

# Offsets and sizes of ranks 0..3 in a packed buffer of r-hat powers (1 + 3 + 9 + 27 = 40 values).
RANK_OFFSET = (0, 1, 4, 13)
RANK_SIZE = (1, 3, 9, 27)
POWER_SIZE = 40

# Rows of the sorted pair scratch P (PAIR_ROWS, n): distance r (Å), unit vector rhat, 1/r (1/Å).
P_R, P_UX, P_UY, P_UZ, P_INV_R = 0, 1, 2, 3, 4
PAIR_ROWS = 5
# Rows of the per-pair reverse weights Q (4, n): D (eV) and H (eV, a vector), see
# `atom_pair_gradients`.
Q_D, Q_HX, Q_HY, Q_HZ = 0, 1, 2, 3


def _canonical_index(rank):
    """(3^rank,) int64: for every flat (C-order) index of a rank-`rank` tensor, the flat index of
    its sorted index tuple. A symmetric tensor is fixed by its entries at these canonical places."""
    shape = (3,) * rank
    return np.array([np.ravel_multi_index(tuple(sorted(idx)), shape) for idx in np.ndindex(*shape)],
                    dtype=np.int64)


# Moments of rank 2 and 3 are symmetric: the kernels sum only their unique components (at the
# canonical places xx, xy, xz, yy, yz, zz = 0, 1, 2, 4, 5, 8 and xxx, xxy, xxz, xyy, xyz, xzz,
# yyy, yyz, yzz, zzz = 0, 1, 2, 4, 5, 8, 13, 14, 17, 26) and then mirror them.
CANONICAL2 = _canonical_index(2)
CANONICAL3 = _canonical_index(3)


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


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def unit_powers(ux, uy, uz, max_rank, R):
    """Pack 1, rhat, rhat(x)rhat, rhat(x)rhat(x)rhat into R (40,) up to max_rank."""
    R[0] = 1.0
    R[1] = ux
    R[2] = uy
    R[3] = uz
    if max_rank >= 2:
        for a in range(3):
            ra = R[1 + a]
            R[4 + 3 * a] = ra * ux
            R[5 + 3 * a] = ra * uy
            R[6 + 3 * a] = ra * uz
    if max_rank >= 3:
        for a in range(3):
            ra = R[1 + a]
            for bc in range(9):
                R[13 + 9 * a + bc] = ra * R[4 + bc]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def unit_power_tangents(ux, uy, uz, dx, dy, dz, max_rank, R, Rdot):
    """Tangents of the packed r-hat powers along d(rhat) = (dx, dy, dz); R from `unit_powers`."""
    Rdot[0] = 0.0
    Rdot[1] = dx
    Rdot[2] = dy
    Rdot[3] = dz
    if max_rank >= 2:
        for a in range(3):
            for b in range(3):
                Rdot[4 + 3 * a + b] = Rdot[1 + a] * R[1 + b] + R[1 + a] * Rdot[1 + b]
    if max_rank >= 3:
        for a in range(3):
            for bc in range(9):
                Rdot[13 + 9 * a + bc] = Rdot[1 + a] * R[4 + bc] + R[1 + a] * Rdot[4 + bc]


@njit(cache=True, error_model="numpy")
def support_bin_ranges(bin_ptr, bin_bodies, n_bodies):
    """Distance bins [k0, k1) spanned by each body's support, (S, B, 2) int64 per central species,
    read off the per-bin candidate lists of `radial.support_bins` (bin_ptr (S, nbins + 1),
    bin_bodies) so that both describe the same supports. k0 = k1 = 0 for a body no bin lists."""
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


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _support(r, c, inv_w):
    """y = (r - c) / w and t = max(0, 1 - y^2). t = 0 outside the support, so f = t^3 / c^2 and
    df/dr = -6 y t^2 / (w c^2) vanish there without a branch."""
    y = (r - c) * inv_w
    return y, max(0.0, 1.0 - y * y)


# ----------------------------------------------------------------------------- forward
# Notes on the pair loops here and in `atom_pair_gradients`, all measured:
# - they run over np.uint64 bounds: a provably non-negative index spares Numba's negative-index
#   wraparound, which would otherwise keep LLVM from vectorising them;
# - they are written out per rank inside the body loop rather than in helpers taking P: calling
#   (or Numba-inlining) such a helper costs a call or atomic reference-count updates per
#   (neighbour species, body), as much as a short loop itself;
# - the neighbour species is the outer loop, so species absent around the atom cost nothing.
@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_moments(si, P, key_start, n_bins, body_rank, body_offset, body_bins, sigma_c2, centres,
                 inv_w, A):
    """Body tensors A (M,) of an atom of species si from its pairs sorted by `gather_pairs`.

    body_bins (S, B, 2): the support bins of every body (`support_bin_ranges`). For each body
    and neighbour species, the unique components of sum_k t_k^3 rhat_k^(x)p over the pairs of
    its support bins are summed in local accumulators, then scaled by sigma / c^2."""
    A[:] = 0.0
    for sj in range(sigma_c2.shape[1]):
        first = sj * n_bins
        if key_start[first] == key_start[first + n_bins]:
            continue                            # no neighbours of species sj
        for b in range(body_rank.shape[0]):
            lo = np.uint64(key_start[first + body_bins[si, b, 0]])
            hi = np.uint64(key_start[first + body_bins[si, b, 1]])
            if lo == hi:
                continue
            c = centres[si, b]
            iw = inv_w[si, b]
            p = body_rank[b]
            off = body_offset[b]
            sc = sigma_c2[si, sj, b]
            if p == 0:
                a0 = 0.0
                for k in range(lo, hi):
                    t = _support(P[P_R, k], c, iw)[1]
                    a0 += t * t * t
                A[off] += sc * a0
            elif p == 1:
                ax = ay = az = 0.0
                for k in range(lo, hi):
                    t = _support(P[P_R, k], c, iw)[1]
                    f = t * t * t
                    ax += f * P[P_UX, k]
                    ay += f * P[P_UY, k]
                    az += f * P[P_UZ, k]
                A[off] += sc * ax
                A[off + 1] += sc * ay
                A[off + 2] += sc * az
            elif p == 2:
                axx = axy = axz = ayy = ayz = azz = 0.0
                for k in range(lo, hi):
                    t = _support(P[P_R, k], c, iw)[1]
                    f = t * t * t
                    ux = P[P_UX, k]
                    uy = P[P_UY, k]
                    uz = P[P_UZ, k]
                    fx = f * ux
                    fy = f * uy
                    axx += fx * ux
                    axy += fx * uy
                    axz += fx * uz
                    ayy += fy * uy
                    ayz += fy * uz
                    azz += f * uz * uz
                A[off] += sc * axx
                A[off + 1] += sc * axy
                A[off + 2] += sc * axz
                A[off + 4] += sc * ayy
                A[off + 5] += sc * ayz
                A[off + 8] += sc * azz
            else:
                axxx = axxy = axxz = axyy = axyz = axzz = ayyy = ayyz = ayzz = azzz = 0.0
                for k in range(lo, hi):
                    t = _support(P[P_R, k], c, iw)[1]
                    f = t * t * t
                    ux = P[P_UX, k]
                    uy = P[P_UY, k]
                    uz = P[P_UZ, k]
                    fxx = f * ux * ux
                    fxy = f * ux * uy
                    fxz = f * ux * uz
                    fyy = f * uy * uy
                    fyz = f * uy * uz
                    axxx += fxx * ux
                    axxy += fxx * uy
                    axxz += fxx * uz
                    axyy += fxy * uy
                    axyz += fxy * uz
                    axzz += fxz * uz
                    ayyy += fyy * uy
                    ayyz += fyy * uz
                    ayzz += fyz * uz
                    azzz += f * uz * uz * uz
                A[off] += sc * axxx
                A[off + 1] += sc * axxy
                A[off + 2] += sc * axxz
                A[off + 4] += sc * axyy
                A[off + 5] += sc * axyz
                A[off + 8] += sc * axzz
                A[off + 13] += sc * ayyy
                A[off + 14] += sc * ayyz
                A[off + 17] += sc * ayzz
                A[off + 26] += sc * azzz
    for b in range(body_rank.shape[0]):            # mirror the unique components
        off = body_offset[b]
        if body_rank[b] == 2:
            for e in range(9):
                A[off + e] = A[off + CANONICAL2[e]]
        elif body_rank[b] == 3:
            for e in range(27):
                A[off + e] = A[off + CANONICAL3[e]]


@njit(cache=True, error_model="numpy")
def contraction_indices(layout):
    """Every term's index table resolved to places in the per-atom moment vector, so that a
    contraction loads each factor directly: term t (nb_t bodies) has rows
    index[start[t] + row * nb_t : start[t] + (row + 1) * nb_t]. Returns (start (T + 1,), index)."""
    body_offset, term_body_start, term_pattern, p_rows, p_start, tables = layout[1:]
    n_terms = term_pattern.shape[0]
    start = np.zeros(n_terms + 1, np.int64)
    for t in range(n_terms):
        start[t + 1] = start[t] + p_rows[term_pattern[t]] * (term_body_start[t + 1]
                                                             - term_body_start[t])
    index = np.empty(start[n_terms], np.int64)
    for t in range(n_terms):
        b0 = term_body_start[t]
        nb = term_body_start[t + 1] - b0
        ts = p_start[term_pattern[t]]
        for e in range(start[t + 1] - start[t]):
            index[start[t] + e] = body_offset[b0 + e % nb] + tables[ts + e]
    return start, index


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def contract(A, term_body_start, index_start, index, G):
    """G_t = sum_rows prod_k A[row's k-th index] for every term t (`contraction_indices`).
    Two and three bodies, the common cases, get loops of fixed width."""
    for t in range(G.shape[0]):
        nb = term_body_start[t + 1] - term_body_start[t]
        total = 0.0
        if nb == 2:
            for e in range(index_start[t], index_start[t + 1], 2):
                total += A[index[e]] * A[index[e + 1]]
        elif nb == 3:
            for e in range(index_start[t], index_start[t + 1], 3):
                total += A[index[e]] * A[index[e + 1]] * A[index[e + 2]]
        else:
            for e in range(index_start[t], index_start[t + 1], nb):
                prod = 1.0
                for k in range(nb):
                    prod *= A[index[e + k]]
                total += prod
        G[t] = total


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def contract_adjoint(A, Gbar, term_body_start, index_start, index, Abar):
    """Abar = dG/dA^T Gbar: each row adds Gbar_t prod_{l != k} A[index_l] to Abar[index_k]."""
    Abar[:] = 0.0
    for t in range(Gbar.shape[0]):
        gb = Gbar[t]
        if gb == 0.0:
            continue
        nb = term_body_start[t + 1] - term_body_start[t]
        if nb == 2:
            for e in range(index_start[t], index_start[t + 1], 2):
                i0 = index[e]
                i1 = index[e + 1]
                Abar[i0] += gb * A[i1]
                Abar[i1] += gb * A[i0]
        elif nb == 3:
            for e in range(index_start[t], index_start[t + 1], 3):
                i0 = index[e]
                i1 = index[e + 1]
                i2 = index[e + 2]
                a0 = gb * A[i0]
                a1 = A[i1]
                a2 = A[i2]
                Abar[i0] += gb * a1 * a2
                Abar[i1] += a0 * a2
                Abar[i2] += a0 * a1
        else:
            for e in range(index_start[t], index_start[t + 1], nb):
                for k in range(nb):
                    prod = gb
                    for l in range(nb):
                        if l != k:
                            prod *= A[index[e + l]]
                    Abar[index[e + k]] += prod


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def contract_tangent(A, Adot, body_offset, term_body_start, term_pattern, pattern_rows,
                     pattern_table_start, tables, G, Gdot):
    """G = C(A) and its tangent Gdot = sum_rows sum_k Adot_k prod_{l != k} A_l."""
    for t in range(term_pattern.shape[0]):
        pat = term_pattern[t]
        b0 = term_body_start[t]
        nb = term_body_start[t + 1] - b0
        ts = pattern_table_start[pat]
        total = 0.0
        total_dot = 0.0
        for row in range(pattern_rows[pat]):
            base = ts + row * nb
            prod = 1.0
            for k in range(nb):
                prod *= A[body_offset[b0 + k] + tables[base + k]]
            total += prod
            for k in range(nb):
                others = Adot[body_offset[b0 + k] + tables[base + k]]
                for l in range(nb):
                    if l != k:
                        others *= A[body_offset[b0 + l] + tables[base + l]]
                total_dot += others
        G[t] = total
        Gdot[t] = total_dot


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def contract_tangent_adjoint(A, Adot, Gbar, Gdotbar, body_offset, term_body_start, term_pattern,
                             pattern_rows, pattern_table_start, tables, Abar, Adotbar):
    """Reverse of `contract_tangent` for J = Gbar . G + Gdotbar . Gdot.

    Abar[idx_l] += Gbar prod_{m != l} A_m + Gdotbar sum_{k != l} Adot_k prod_{m != k, l} A_m
    Adotbar[idx_l] += Gdotbar prod_{m != l} A_m
    """
    Abar[:] = 0.0
    Adotbar[:] = 0.0
    for t in range(term_pattern.shape[0]):
        gb = Gbar[t]
        gdb = Gdotbar[t]
        pat = term_pattern[t]
        b0 = term_body_start[t]
        nb = term_body_start[t + 1] - b0
        ts = pattern_table_start[pat]
        for row in range(pattern_rows[pat]):
            base = ts + row * nb
            for l in range(nb):
                rest = 1.0
                for m in range(nb):
                    if m != l:
                        rest *= A[body_offset[b0 + m] + tables[base + m]]
                cross = 0.0
                for k in range(nb):
                    if k == l:
                        continue
                    term = Adot[body_offset[b0 + k] + tables[base + k]]
                    for m in range(nb):
                        if m != k and m != l:
                            term *= A[body_offset[b0 + m] + tables[base + m]]
                    cross += term
                idx = body_offset[b0 + l] + tables[base + l]
                Abar[idx] += gb * rest + gdb * cross
                Adotbar[idx] += gdb * rest


# ----------------------------------------------------------------------------- reverse
@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _sym2_weights(a, s):
    """The unique components of 2 s sym(a) for a (9,) (xx, xy, xz, yy, yz, zz)."""
    return (2.0 * s * a[0], s * (a[1] + a[3]), s * (a[2] + a[6]), 2.0 * s * a[4],
            s * (a[5] + a[7]), 2.0 * s * a[8])


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _sym3_weights(a, s):
    """The unique components of 3 s sym(a) for a (27,) (xxx, xxy, ..., zzz): 3 s times the mean
    of the entries sharing a component (1, 3 or 6 of them)."""
    return (3.0 * s * a[0], s * (a[1] + a[3] + a[9]), s * (a[2] + a[6] + a[18]),
            s * (a[4] + a[10] + a[12]), 0.5 * s * (a[5] + a[7] + a[11] + a[15] + a[19] + a[21]),
            s * (a[8] + a[20] + a[24]), 3.0 * s * a[13], s * (a[14] + a[16] + a[22]),
            s * (a[17] + a[23] + a[25]), 3.0 * s * a[26])


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


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_pair_gradients(si, n_kept, P, pair_q, key_start, n_bins, body_rank, body_offset,
                        body_bins, sigma_c2, centres, inv_w, Abar, Q, pair_grad):
    """dE/dv (eV/Å) for the n_kept sorted pairs of an atom of species si into
    pair_grad[pair_q[k]], given Abar = dE/dA (M,); Q (4, n_max) scratch.

    With R_k the r-hat powers of pair k, the design page's per-body formula sums to

        dE/dv_k = D_k rhat_k + (H_k - (H_k . rhat_k) rhat_k) / r_k,
        D_k = sum_b sigma_b f'_b(r_k) (Abar_b . R_k),   H_k = sum_b sigma_b f_b(r_k) h_b(rhat_k),

    h_b,g = sum_e sum_{beta: beta_e = g} Abar_b[beta] prod_{e' != e} rhat[beta_e'], and
    h_b . rhat = p_b (Abar_b . R). Only the symmetric part of Abar_b meets the symmetric r-hat
    powers, so ranks 2 and 3 use its unique components.

    Returns the atom's contribution to dE/d(strain) as 9 scalars sum_k g_a v_b (row-major ab)."""
    for k in range(n_kept):
        Q[Q_D, k] = 0.0
        Q[Q_HX, k] = 0.0
        Q[Q_HY, k] = 0.0
        Q[Q_HZ, k] = 0.0
    for sj in range(sigma_c2.shape[1]):
        first = sj * n_bins
        if key_start[first] == key_start[first + n_bins]:
            continue                            # no neighbours of species sj
        for b in range(body_rank.shape[0]):
            lo = np.uint64(key_start[first + body_bins[si, b, 0]])
            hi = np.uint64(key_start[first + body_bins[si, b, 1]])
            if lo == hi:
                continue
            c = centres[si, b]
            iw = inv_w[si, b]
            p = body_rank[b]
            off = body_offset[b]
            sc = sigma_c2[si, sj, b]
            # D_k += kd y t^2 (h . rhat) with kd = -6 / (p w) (rank 0: kd also carries sigma Abar)
            # and H_k += t^3 h, h = p (sigma / c^2) sym(Abar_b) . rhat^(x)(p-1) (see above)
            if p == 0:
                kd = -6.0 * iw * sc * Abar[off]
                for k in range(lo, hi):
                    y, t = _support(P[P_R, k], c, iw)
                    Q[Q_D, k] += kd * y * t * t
            elif p == 1:
                kd = -6.0 * iw
                hx = sc * Abar[off]
                hy = sc * Abar[off + 1]
                hz = sc * Abar[off + 2]
                for k in range(lo, hi):
                    y, t = _support(P[P_R, k], c, iw)
                    t2 = t * t
                    hu = hx * P[P_UX, k] + hy * P[P_UY, k] + hz * P[P_UZ, k]
                    Q[Q_D, k] += kd * y * t2 * hu
                    f = t2 * t
                    Q[Q_HX, k] += f * hx
                    Q[Q_HY, k] += f * hy
                    Q[Q_HZ, k] += f * hz
            elif p == 2:
                kd = -3.0 * iw
                m2 = _sym2_weights(Abar[off:off + 9], sc)
                for k in range(lo, hi):
                    y, t = _support(P[P_R, k], c, iw)
                    ux = P[P_UX, k]
                    uy = P[P_UY, k]
                    uz = P[P_UZ, k]
                    hx, hy, hz = _h2(m2, ux, uy, uz)
                    t2 = t * t
                    Q[Q_D, k] += kd * y * t2 * (hx * ux + hy * uy + hz * uz)
                    f = t2 * t
                    Q[Q_HX, k] += f * hx
                    Q[Q_HY, k] += f * hy
                    Q[Q_HZ, k] += f * hz
            else:
                kd = -2.0 * iw
                m3 = _sym3_weights(Abar[off:off + 27], sc)
                for k in range(lo, hi):
                    y, t = _support(P[P_R, k], c, iw)
                    ux = P[P_UX, k]
                    uy = P[P_UY, k]
                    uz = P[P_UZ, k]
                    hx, hy, hz = _h3(m3, ux, uy, uz)
                    t2 = t * t
                    Q[Q_D, k] += kd * y * t2 * (hx * ux + hy * uy + hz * uz)
                    f = t2 * t
                    Q[Q_HX, k] += f * hx
                    Q[Q_HY, k] += f * hy
                    Q[Q_HZ, k] += f * hz
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


@njit(cache=True, error_model="numpy")
def max_neighbours(offsets):
    """Largest neighbour count of any atom (sizes the per-chunk pair scratch)."""
    n = 0
    for i in range(offsets.shape[0] - 1):
        n = max(n, offsets[i + 1] - offsets[i])
    return n


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
def descriptors_kernel(positions, cells, frame_of_atom, offsets, second, shifts, species, cutoff,
                       layout, sigma_c2, centres, inv_w, bin_ptr, bin_bodies, inv_bin, n_chunks):
    """G (N, T) for every atom (no gradients) and each atom's closest-neighbour distance (N,);
    atom i's pairs use cells[frame_of_atom[i]]."""
    body_rank, body_offset, term_body_start, term_pattern = layout[:4]
    n_atoms = positions.shape[0]
    n_terms = term_pattern.shape[0]
    m = body_offset[-1] + RANK_SIZE[body_rank[-1]]
    G = np.empty((n_atoms, n_terms))
    closest = np.empty(n_atoms)
    n_max = max_neighbours(offsets)
    n_bins = bin_ptr.shape[1] - 1
    body_bins = support_bin_ranges(bin_ptr, bin_bodies, body_rank.shape[0])
    index_start, index = contraction_indices(layout)
    for chunk in prange(n_chunks):
        A = np.empty(m)
        P, pair_q, key_start, work = pair_scratch(n_max, sigma_c2.shape[1] * n_bins)
        for i in range(chunk * n_atoms // n_chunks, (chunk + 1) * n_atoms // n_chunks):
            closest[i] = gather_pairs(i, positions, cells[frame_of_atom[i]], offsets, second,
                                      shifts, species, cutoff, inv_bin, n_bins, P, pair_q,
                                      key_start, work)[0]
            atom_moments(species[i], P, key_start, n_bins, body_rank, body_offset, body_bins,
                         sigma_c2, centres, inv_w, A)
            contract(A, term_body_start, index_start, index, G[i])
    return G, closest
