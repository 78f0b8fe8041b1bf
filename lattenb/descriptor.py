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
of the loads, branches and read-modify-writes of a pair-major loop. The training gradient (section
5) reuses this layout: `pair_tangents` adds per-pair tangent rows, `atom_tangent_moments` and
`atom_parameter_gradients` are the body-major tangent and parameter-reverse passes.

Parameter arrays use species-first layouts: sigma_c2 (S, S, B) [central, neighbour, body] is
sigma / c^2 (so sigma f = sigma_c2 t^3), centres and inv_w (S, B) [central, body] in Å and 1/Å.
"""
import numpy as np
from numba import njit, prange
from ._numba import FASTMATH
from .radial import radial_support

# Number of entries (3^p) of a body tensor of rank p = 0..3.
RANK_SIZE = (1, 3, 9, 27)

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
                    t = radial_support(P[P_R, k], c, iw)[1]
                    a0 += t * t * t
                A[off] += sc * a0
            elif p == 1:
                ax = ay = az = 0.0
                for k in range(lo, hi):
                    t = radial_support(P[P_R, k], c, iw)[1]
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
                    t = radial_support(P[P_R, k], c, iw)[1]
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
                    t = radial_support(P[P_R, k], c, iw)[1]
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
def contract_tangent(A, Adot, term_body_start, index_start, index, G, Gdot):
    """G = C(A) as in `contract` and its tangent Gdot = sum_rows sum_k Adot_k prod_{l != k} A_l
    (A, Adot (M,); G, Gdot (T,)). One to three bodies get loops of fixed width."""
    for t in range(G.shape[0]):
        nb = term_body_start[t + 1] - term_body_start[t]
        total = 0.0
        total_dot = 0.0
        if nb == 1:
            for e in range(index_start[t], index_start[t + 1]):
                total += A[index[e]]
                total_dot += Adot[index[e]]
        elif nb == 2:
            for e in range(index_start[t], index_start[t + 1], 2):
                i0 = index[e]
                i1 = index[e + 1]
                a0 = A[i0]
                a1 = A[i1]
                total += a0 * a1
                total_dot += Adot[i0] * a1 + a0 * Adot[i1]
        elif nb == 3:
            for e in range(index_start[t], index_start[t + 1], 3):
                i0 = index[e]
                i1 = index[e + 1]
                i2 = index[e + 2]
                a0 = A[i0]
                a1 = A[i1]
                a2 = A[i2]
                total += a0 * a1 * a2
                total_dot += Adot[i0] * a1 * a2 + a0 * (Adot[i1] * a2 + a1 * Adot[i2])
        else:
            for e in range(index_start[t], index_start[t + 1], nb):
                prod = 1.0
                for k in range(nb):
                    prod *= A[index[e + k]]
                total += prod
                for k in range(nb):
                    others = Adot[index[e + k]]
                    for l in range(nb):
                        if l != k:
                            others *= A[index[e + l]]
                    total_dot += others
        G[t] = total
        Gdot[t] = total_dot


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def contract_tangent_adjoint(A, Adot, Gbar, Gdotbar, term_body_start, index_start, index, Abar,
                             Adotbar):
    """Reverse of `contract_tangent` for J = Gbar . G + Gdotbar . Gdot (Abar, Adotbar (M,)):

    Abar[idx_l] += Gbar prod_{m != l} A_m + Gdotbar sum_{k != l} Adot_k prod_{m != k, l} A_m
    Adotbar[idx_l] += Gdotbar prod_{m != l} A_m
    """
    Abar[:] = 0.0
    Adotbar[:] = 0.0
    for t in range(Gbar.shape[0]):
        gb = Gbar[t]
        gdb = Gdotbar[t]
        nb = term_body_start[t + 1] - term_body_start[t]
        if nb == 1:
            for e in range(index_start[t], index_start[t + 1]):
                Abar[index[e]] += gb
                Adotbar[index[e]] += gdb
        elif nb == 2:
            for e in range(index_start[t], index_start[t + 1], 2):
                i0 = index[e]
                i1 = index[e + 1]
                a0 = A[i0]
                a1 = A[i1]
                Abar[i0] += gb * a1 + gdb * Adot[i1]
                Abar[i1] += gb * a0 + gdb * Adot[i0]
                Adotbar[i0] += gdb * a1
                Adotbar[i1] += gdb * a0
        elif nb == 3:
            for e in range(index_start[t], index_start[t + 1], 3):
                i0 = index[e]
                i1 = index[e + 1]
                i2 = index[e + 2]
                a0 = A[i0]
                a1 = A[i1]
                a2 = A[i2]
                d0 = Adot[i0]
                d1 = Adot[i1]
                d2 = Adot[i2]
                r0 = a1 * a2
                r1 = a0 * a2
                r2 = a0 * a1
                Abar[i0] += gb * r0 + gdb * (d1 * a2 + a1 * d2)
                Abar[i1] += gb * r1 + gdb * (d0 * a2 + a0 * d2)
                Abar[i2] += gb * r2 + gdb * (d0 * a1 + a0 * d1)
                Adotbar[i0] += gdb * r0
                Adotbar[i1] += gdb * r1
                Adotbar[i2] += gdb * r2
        else:
            for e in range(index_start[t], index_start[t + 1], nb):
                for l in range(nb):
                    rest = 1.0
                    for m in range(nb):
                        if m != l:
                            rest *= A[index[e + m]]
                    cross = 0.0
                    for k in range(nb):
                        if k == l:
                            continue
                        term = Adot[index[e + k]]
                        for m in range(nb):
                            if m != k and m != l:
                                term *= A[index[e + m]]
                        cross += term
                    Abar[index[e + l]] += gb * rest + gdb * cross
                    Adotbar[index[e + l]] += gdb * rest


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
                    y, t = radial_support(P[P_R, k], c, iw)
                    Q[Q_D, k] += kd * y * t * t
            elif p == 1:
                kd = -6.0 * iw
                hx = sc * Abar[off]
                hy = sc * Abar[off + 1]
                hz = sc * Abar[off + 2]
                for k in range(lo, hi):
                    y, t = radial_support(P[P_R, k], c, iw)
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
                    y, t = radial_support(P[P_R, k], c, iw)
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
                    y, t = radial_support(P[P_R, k], c, iw)
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


# ----------------------------------------------------------------------------- training
# The training gradient (lattenb.training) needs, per atom, the moments A and their tangents Adot
# along a pair tangent field vtilde (design page, section 5), then the parameter adjoint of
# J = Abar . A + Adotbar . Adot. Both run body-major over the pairs sorted by `gather_pairs`,
# as the energy kernel does, reading per-pair tangent rows that `pair_tangents` fills once per
# atom: each pair meets tens of bodies, so its r-hat monomials and their tangents are computed
# once rather than per (pair, body).

# Rows of the per-pair tangent scratch T (TANGENT_ROWS, n): rdot = rhat . vtilde, d rhat =
# (vtilde - rhat rdot) / r (the rank-1 tangent; rank 1's monomials are P's rhat rows), the unique
# monomials of rhat^(x)2 (xx, xy, xz, yy, yz, zz) and rhat^(x)3 (xxx, xxy, xxz, xyy, xyz, xzz,
# yyy, yyz, yzz, zzz) and their tangents. Tangent rows carry the units of vtilde (per Å for d).
T_RDOT, T_D, T_R2, T_D2, T_R3, T_D3 = 0, 1, 4, 10, 16, 26
TANGENT_ROWS = 36


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
    if max_rank >= 3:
        # each cubic monomial is u_a times a quadratic one, its tangent d_a m + u_a dm
        for k in range(n_kept):
            ux = P[P_UX, k]
            uy = P[P_UY, k]
            uz = P[P_UZ, k]
            dx = T[T_D, k]
            dy = T[T_D + 1, k]
            dz = T[T_D + 2, k]
            for e in range(6):                      # xxx, xxy, xxz, xyy, xyz, xzz = x * (xx .. zz)
                T[T_R3 + e, k] = ux * T[T_R2 + e, k]
                T[T_D3 + e, k] = dx * T[T_R2 + e, k] + ux * T[T_D2 + e, k]
            for e in range(3):                      # yyy, yyz, yzz = y * (yy, yz, zz)
                T[T_R3 + 6 + e, k] = uy * T[T_R2 + 3 + e, k]
                T[T_D3 + 6 + e, k] = dy * T[T_R2 + 3 + e, k] + uy * T[T_D2 + 3 + e, k]
            T[T_R3 + 9, k] = uz * T[T_R2 + 5, k]    # zzz
            T[T_D3 + 9, k] = dz * T[T_R2 + 5, k] + uz * T[T_D2 + 5, k]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_tangent_moments(si, P, T, key_start, n_bins, body_rank, body_offset, body_bins, sigma_c2,
                         centres, inv_w, A, Adot):
    """Body tensors A (M,) and their tangents Adot (M,) of an atom of species si, from its pairs
    sorted by `gather_pairs` (P, key_start) and their tangent rows T (`pair_tangents`).

    Adot_b = sigma_b sum_k (f'(r_k) rdot_k R_k + f(r_k) Rdot_k), R_k the r-hat powers: with
    f = t^3 / c^2 and f' = -6 y t^2 / (w c^2), each pair of the body's support runs adds
    t^3 R_k to A's and g R_k + t^3 Rdot_k (g = -6 y t^2 rdot / w) to Adot's unique-component
    accumulators, which are then scaled by sigma / c^2 and mirrored as in `atom_moments`."""
    A[:] = 0.0
    Adot[:] = 0.0
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
            kd = -6.0 * iw
            p = body_rank[b]
            off = body_offset[b]
            sc = sigma_c2[si, sj, b]
            if p == 0:
                a0 = d0 = 0.0
                for k in range(lo, hi):
                    y, t = radial_support(P[P_R, k], c, iw)
                    t2 = t * t
                    a0 += t2 * t
                    d0 += y * t2 * T[T_RDOT, k]
                A[off] += sc * a0
                Adot[off] += sc * kd * d0
            elif p == 1:
                ax = ay = az = dx = dy = dz = 0.0
                for k in range(lo, hi):
                    y, t = radial_support(P[P_R, k], c, iw)
                    t2 = t * t
                    f = t2 * t
                    g = kd * y * t2 * T[T_RDOT, k]
                    ux = P[P_UX, k]
                    uy = P[P_UY, k]
                    uz = P[P_UZ, k]
                    ax += f * ux
                    ay += f * uy
                    az += f * uz
                    dx += g * ux + f * T[T_D, k]
                    dy += g * uy + f * T[T_D + 1, k]
                    dz += g * uz + f * T[T_D + 2, k]
                A[off] += sc * ax
                A[off + 1] += sc * ay
                A[off + 2] += sc * az
                Adot[off] += sc * dx
                Adot[off + 1] += sc * dy
                Adot[off + 2] += sc * dz
            elif p == 2:
                a0 = a1 = a2 = a3 = a4 = a5 = 0.0
                d0 = d1 = d2 = d3 = d4 = d5 = 0.0
                for k in range(lo, hi):
                    y, t = radial_support(P[P_R, k], c, iw)
                    t2 = t * t
                    f = t2 * t
                    g = kd * y * t2 * T[T_RDOT, k]
                    m0 = T[T_R2, k]
                    m1 = T[T_R2 + 1, k]
                    m2 = T[T_R2 + 2, k]
                    m3 = T[T_R2 + 3, k]
                    m4 = T[T_R2 + 4, k]
                    m5 = T[T_R2 + 5, k]
                    a0 += f * m0
                    a1 += f * m1
                    a2 += f * m2
                    a3 += f * m3
                    a4 += f * m4
                    a5 += f * m5
                    d0 += g * m0 + f * T[T_D2, k]
                    d1 += g * m1 + f * T[T_D2 + 1, k]
                    d2 += g * m2 + f * T[T_D2 + 2, k]
                    d3 += g * m3 + f * T[T_D2 + 3, k]
                    d4 += g * m4 + f * T[T_D2 + 4, k]
                    d5 += g * m5 + f * T[T_D2 + 5, k]
                A[off] += sc * a0
                A[off + 1] += sc * a1
                A[off + 2] += sc * a2
                A[off + 4] += sc * a3
                A[off + 5] += sc * a4
                A[off + 8] += sc * a5
                Adot[off] += sc * d0
                Adot[off + 1] += sc * d1
                Adot[off + 2] += sc * d2
                Adot[off + 4] += sc * d3
                Adot[off + 5] += sc * d4
                Adot[off + 8] += sc * d5
            else:
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = 0.0
                d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = d8 = d9 = 0.0
                for k in range(lo, hi):
                    y, t = radial_support(P[P_R, k], c, iw)
                    t2 = t * t
                    f = t2 * t
                    g = kd * y * t2 * T[T_RDOT, k]
                    m0 = T[T_R3, k]
                    m1 = T[T_R3 + 1, k]
                    m2 = T[T_R3 + 2, k]
                    m3 = T[T_R3 + 3, k]
                    m4 = T[T_R3 + 4, k]
                    m5 = T[T_R3 + 5, k]
                    m6 = T[T_R3 + 6, k]
                    m7 = T[T_R3 + 7, k]
                    m8 = T[T_R3 + 8, k]
                    m9 = T[T_R3 + 9, k]
                    a0 += f * m0
                    a1 += f * m1
                    a2 += f * m2
                    a3 += f * m3
                    a4 += f * m4
                    a5 += f * m5
                    a6 += f * m6
                    a7 += f * m7
                    a8 += f * m8
                    a9 += f * m9
                    d0 += g * m0 + f * T[T_D3, k]
                    d1 += g * m1 + f * T[T_D3 + 1, k]
                    d2 += g * m2 + f * T[T_D3 + 2, k]
                    d3 += g * m3 + f * T[T_D3 + 3, k]
                    d4 += g * m4 + f * T[T_D3 + 4, k]
                    d5 += g * m5 + f * T[T_D3 + 5, k]
                    d6 += g * m6 + f * T[T_D3 + 6, k]
                    d7 += g * m7 + f * T[T_D3 + 7, k]
                    d8 += g * m8 + f * T[T_D3 + 8, k]
                    d9 += g * m9 + f * T[T_D3 + 9, k]
                A[off] += sc * a0
                A[off + 1] += sc * a1
                A[off + 2] += sc * a2
                A[off + 4] += sc * a3
                A[off + 5] += sc * a4
                A[off + 8] += sc * a5
                A[off + 13] += sc * a6
                A[off + 14] += sc * a7
                A[off + 17] += sc * a8
                A[off + 26] += sc * a9
                Adot[off] += sc * d0
                Adot[off + 1] += sc * d1
                Adot[off + 2] += sc * d2
                Adot[off + 4] += sc * d3
                Adot[off + 5] += sc * d4
                Adot[off + 8] += sc * d5
                Adot[off + 13] += sc * d6
                Adot[off + 14] += sc * d7
                Adot[off + 17] += sc * d8
                Adot[off + 26] += sc * d9
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
def _radial_adjoint(s0, s1, s2, s3, s4, s5, sc, inv_c2, inv_c, iw):
    """(dJ/dsigma, dJ/dc, dJ/dw) of one body and one neighbour species from the pair sums s0..s5
    of `atom_parameter_gradients`; sc = sigma / c^2, inv_c2 = 1 / c^2, inv_c = 1 / c,
    iw = 1 / w. The radial derivatives used (as in `radial.radial_param_derivs`):
      f = t^3 / c^2,                          f_r = -6 y t^2 / (w c^2),
      f_c = (6 y t^2 / w - 2 t^3 / c) / c^2,  f_w = 6 y^2 t^2 / (w c^2),
      f_rc = (6 (t^2 - 4 y^2 t) / w^2 + 12 y t^2 / (w c)) / c^2,
      f_rw = 6 y (2 t^2 - 4 y^2 t) / (w^2 c^2)."""
    kd = -6.0 * iw
    radial = s0 + kd * s3                       # sum_k (t^3 p_k - 6 y t^2 q_k / w)
    return (inv_c2 * radial, sc * (-kd * s1 - 2.0 * inv_c * radial + 6.0 * iw * iw * s4),
            sc * 6.0 * iw * (s2 + iw * s5))


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_parameter_gradients(si, P, T, key_start, n_bins, body_rank, body_offset, body_bins,
                             sigma_c2, centres, inv_w, inv_c2, Abar, Adotbar, g_sigma, g_c, g_w):
    """Add the parameter gradient of J = Abar . A + Adotbar . Adot (Abar, Adotbar (M,)) for an
    atom of species si (pairs and tangent rows as in `atom_tangent_moments`) to g_sigma (S, S, B),
    g_c (S, B) and g_w (S, B) (the rows of species si).

    With p_k = Abar_b . R_k + Adotbar_b . Rdot_k and q_k = rdot_k (Adotbar_b . R_k) for the pairs
    k of neighbour species sj in body b's support, f' = df/dr and f'_theta = d2f/(dr dtheta):

        dJ/dsigma_b(si, sj) = sum_k (f p_k + f' q_k)
        dJ/dtheta_b = sum_sj sigma_b(si, sj) sum_k (f_theta p_k + f'_theta q_k),  theta = c, w.

    These f derivatives combine, with constants of the body, six pair weights: t^3, y t^2,
    y^2 t^2 (times p_k) and y t^2, t^2 - 4 y^2 t, y (2 t^2 - 4 y^2 t) (times q_k). One pass over
    the body's pairs sums them (s0..s5) and `_radial_adjoint` combines the sums. Only the
    symmetric parts of Abar_b and Adotbar_b meet the symmetric R_k and Rdot_k, so ranks 2 and 3
    dot their class sums (`_class_sums2`, `_class_sums3`) with the unique-monomial rows of T."""
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
            s0 = s1 = s2 = s3 = s4 = s5 = 0.0
            if p == 0:
                # p_k = Abar_b and q_k = rdot_k Adotbar_b: sum the weights, scale afterwards
                for k in range(lo, hi):
                    y, t = radial_support(P[P_R, k], c, iw)
                    t2 = t * t
                    yt2 = y * t2
                    h = t2 - 4.0 * y * y * t
                    rdot = T[T_RDOT, k]
                    s0 += t2 * t
                    s1 += yt2
                    s2 += y * yt2
                    s3 += yt2 * rdot
                    s4 += h * rdot
                    s5 += y * (t2 + h) * rdot
                wa = Abar[off]
                wd = Adotbar[off]
                s0 *= wa
                s1 *= wa
                s2 *= wa
                s3 *= wd
                s4 *= wd
                s5 *= wd
            elif p == 1:
                ax = Abar[off]
                ay = Abar[off + 1]
                az = Abar[off + 2]
                dx = Adotbar[off]
                dy = Adotbar[off + 1]
                dz = Adotbar[off + 2]
                for k in range(lo, hi):
                    y, t = radial_support(P[P_R, k], c, iw)
                    ux = P[P_UX, k]
                    uy = P[P_UY, k]
                    uz = P[P_UZ, k]
                    pk = (ax * ux + ay * uy + az * uz + dx * T[T_D, k] + dy * T[T_D + 1, k]
                          + dz * T[T_D + 2, k])
                    qk = T[T_RDOT, k] * (dx * ux + dy * uy + dz * uz)
                    t2 = t * t
                    yt2 = y * t2
                    h = t2 - 4.0 * y * y * t
                    s0 += t2 * t * pk
                    s1 += yt2 * pk
                    s2 += y * yt2 * pk
                    s3 += yt2 * qk
                    s4 += h * qk
                    s5 += y * (t2 + h) * qk
            elif p == 2:
                a0, a1, a2, a3, a4, a5 = _class_sums2(Abar, off)
                d0, d1, d2, d3, d4, d5 = _class_sums2(Adotbar, off)
                for k in range(lo, hi):
                    y, t = radial_support(P[P_R, k], c, iw)
                    m0 = T[T_R2, k]
                    m1 = T[T_R2 + 1, k]
                    m2 = T[T_R2 + 2, k]
                    m3 = T[T_R2 + 3, k]
                    m4 = T[T_R2 + 4, k]
                    m5 = T[T_R2 + 5, k]
                    pk = (a0 * m0 + a1 * m1 + a2 * m2 + a3 * m3 + a4 * m4 + a5 * m5
                          + d0 * T[T_D2, k] + d1 * T[T_D2 + 1, k] + d2 * T[T_D2 + 2, k]
                          + d3 * T[T_D2 + 3, k] + d4 * T[T_D2 + 4, k] + d5 * T[T_D2 + 5, k])
                    qk = T[T_RDOT, k] * (d0 * m0 + d1 * m1 + d2 * m2 + d3 * m3 + d4 * m4
                                         + d5 * m5)
                    t2 = t * t
                    yt2 = y * t2
                    h = t2 - 4.0 * y * y * t
                    s0 += t2 * t * pk
                    s1 += yt2 * pk
                    s2 += y * yt2 * pk
                    s3 += yt2 * qk
                    s4 += h * qk
                    s5 += y * (t2 + h) * qk
            else:
                a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = _class_sums3(Abar, off)
                d0, d1, d2, d3, d4, d5, d6, d7, d8, d9 = _class_sums3(Adotbar, off)
                for k in range(lo, hi):
                    y, t = radial_support(P[P_R, k], c, iw)
                    m0 = T[T_R3, k]
                    m1 = T[T_R3 + 1, k]
                    m2 = T[T_R3 + 2, k]
                    m3 = T[T_R3 + 3, k]
                    m4 = T[T_R3 + 4, k]
                    m5 = T[T_R3 + 5, k]
                    m6 = T[T_R3 + 6, k]
                    m7 = T[T_R3 + 7, k]
                    m8 = T[T_R3 + 8, k]
                    m9 = T[T_R3 + 9, k]
                    pk = (a0 * m0 + a1 * m1 + a2 * m2 + a3 * m3 + a4 * m4 + a5 * m5 + a6 * m6
                          + a7 * m7 + a8 * m8 + a9 * m9
                          + d0 * T[T_D3, k] + d1 * T[T_D3 + 1, k] + d2 * T[T_D3 + 2, k]
                          + d3 * T[T_D3 + 3, k] + d4 * T[T_D3 + 4, k] + d5 * T[T_D3 + 5, k]
                          + d6 * T[T_D3 + 6, k] + d7 * T[T_D3 + 7, k] + d8 * T[T_D3 + 8, k]
                          + d9 * T[T_D3 + 9, k])
                    qk = T[T_RDOT, k] * (d0 * m0 + d1 * m1 + d2 * m2 + d3 * m3 + d4 * m4
                                         + d5 * m5 + d6 * m6 + d7 * m7 + d8 * m8 + d9 * m9)
                    t2 = t * t
                    yt2 = y * t2
                    h = t2 - 4.0 * y * y * t
                    s0 += t2 * t * pk
                    s1 += yt2 * pk
                    s2 += y * yt2 * pk
                    s3 += yt2 * qk
                    s4 += h * qk
                    s5 += y * (t2 + h) * qk
            gs, gc, gw = _radial_adjoint(s0, s1, s2, s3, s4, s5, sigma_c2[si, sj, b],
                                         inv_c2[si, b], 1.0 / c, iw)
            g_sigma[si, sj, b] += gs
            g_c[si, b] += gc
            g_w[si, b] += gw


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
