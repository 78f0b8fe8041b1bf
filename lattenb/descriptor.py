"""Body tensors (moments) and their full contractions: the LATTE descriptor (design page, section 3).

Per atom i and body b of rank p (b runs over all bodies of all terms):

    A_b[beta] = sum_j sigma_b(s_i, s_j) f(r_ij; c_b(s_i), w_b(s_i)) prod_{e<p} rhat_ij[beta_e]

stored flat (C order, 3^p values) at `body_offset[b]` of one per-atom vector of length M.
Term t contracts its bodies with its pattern's index table:
G_t = sum_rows prod_k A_{b_k}[table[row, k]].

The functions here are per-atom Numba kernels, composed by `descriptors` below and by the
energy/force and training kernels. Parameter arrays use species-first layouts so the inner loop over
bodies reads contiguous memory: sigma (S, S, B) [central, neighbour, body], centres, inv_w,
inv_c2 (S, B) [central, body].
"""
import numpy as np
from numba import njit, prange
from ._numba import FASTMATH

from .radial import radial_value, radial_value_deriv

# Offsets and sizes of ranks 0..3 in a packed buffer of r-hat powers (1 + 3 + 9 + 27 = 40 values).
RANK_OFFSET = (0, 1, 4, 13)
RANK_SIZE = (1, 3, 9, 27)
POWER_SIZE = 40


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
def add_scaled(A, off, R, p, coef):
    """A[off:off + 3^p] += coef * (rank-p block of R), with the trip count fixed per rank so the
    compiler unrolls it (a variable-length loop here costs more than the arithmetic)."""
    if p == 0:
        A[off] += coef
    elif p == 1:
        A[off] += coef * R[1]
        A[off + 1] += coef * R[2]
        A[off + 2] += coef * R[3]
    elif p == 2:
        for e in range(9):
            A[off + e] += coef * R[4 + e]
    else:
        for e in range(27):
            A[off + e] += coef * R[13 + e]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def add_scaled_pair(W, Wd, Abar, off, p, a, ad):
    """W[rank-p block] += a * Abar[off:off + 3^p] and Wd[...] += ad * Abar[...]."""
    if p == 0:
        W[0] += a * Abar[off]
        Wd[0] += ad * Abar[off]
    elif p == 1:
        for e in range(3):
            W[1 + e] += a * Abar[off + e]
            Wd[1 + e] += ad * Abar[off + e]
    elif p == 2:
        for e in range(9):
            W[4 + e] += a * Abar[off + e]
            Wd[4 + e] += ad * Abar[off + e]
    else:
        for e in range(27):
            W[13 + e] += a * Abar[off + e]
            Wd[13 + e] += ad * Abar[off + e]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_moments(i, positions, cell, offsets, second, shifts, species, cutoff,
                 body_rank, body_offset, max_rank, sigma, centres, inv_w, inv_c2,
                 bin_ptr, bin_bodies, inv_bin, A, R):
    """Body tensors of atom i into A (M,); R (40,) is scratch. Pairs at r >= cutoff are skipped.

    Returns the distance to the closest neighbour (inf if none), for the overlap check."""
    A[:] = 0.0
    si = species[i]
    cutoff2 = cutoff * cutoff
    closest2 = np.inf
    for q in range(offsets[i], offsets[i + 1]):
        j = second[q]
        vx, vy, vz = pair_vector(positions, cell, shifts, i, j, q)
        r2 = vx * vx + vy * vy + vz * vz
        if r2 >= cutoff2:
            continue
        closest2 = min(closest2, r2)
        r = np.sqrt(r2)
        inv_r = 1.0 / r
        unit_powers(vx * inv_r, vy * inv_r, vz * inv_r, max_rank, R)
        sj = species[j]
        k = int(r * inv_bin)
        for m in range(bin_ptr[si, k], bin_ptr[si, k + 1]):
            b = bin_bodies[m]
            f = radial_value(r, centres[si, b], inv_w[si, b], inv_c2[si, b])
            if f == 0.0:
                continue
            add_scaled(A, body_offset[b], R, body_rank[b], sigma[si, sj, b] * f)
    return np.sqrt(closest2)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def contract(A, body_offset, term_body_start, term_pattern, pattern_rows, pattern_table_start,
             tables, G):
    """G_t = sum_rows prod_k A[body_offset[b_k] + table[row, k]] for every term t."""
    for t in range(term_pattern.shape[0]):
        pat = term_pattern[t]
        b0 = term_body_start[t]
        nb = term_body_start[t + 1] - b0
        ts = pattern_table_start[pat]
        total = 0.0
        for row in range(pattern_rows[pat]):
            prod = 1.0
            base = ts + row * nb
            for k in range(nb):
                prod *= A[body_offset[b0 + k] + tables[base + k]]
            total += prod
        G[t] = total


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def contract_adjoint(A, Gbar, body_offset, term_body_start, term_pattern, pattern_rows,
                     pattern_table_start, tables, Abar):
    """Abar = dG/dA^T Gbar: Abar[idx_k] += Gbar_t prod_{l != k} A[idx_l] over every row."""
    Abar[:] = 0.0
    for t in range(term_pattern.shape[0]):
        gb = Gbar[t]
        if gb == 0.0:
            continue
        pat = term_pattern[t]
        b0 = term_body_start[t]
        nb = term_body_start[t + 1] - b0
        ts = pattern_table_start[pat]
        for row in range(pattern_rows[pat]):
            base = ts + row * nb
            for k in range(nb):
                prod = gb
                for l in range(nb):
                    if l != k:
                        prod *= A[body_offset[b0 + l] + tables[base + l]]
                Abar[body_offset[b0 + k] + tables[base + k]] += prod


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


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def _h_component(W, R, max_rank, g):
    """h_g = sum_p sum_e sum_{beta: beta_e = g} W_p[beta] prod_{e' != e} rhat[beta_e']."""
    h = W[1 + g]
    if max_rank >= 2:
        for b in range(3):
            h += (W[4 + 3 * g + b] + W[4 + 3 * b + g]) * R[1 + b]
    if max_rank >= 3:
        for b in range(3):
            for c in range(3):
                h += (W[13 + 9 * g + 3 * b + c] + W[13 + 9 * b + 3 * g + c]
                      + W[13 + 9 * b + 3 * c + g]) * R[4 + 3 * b + c]
    return h


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def weighted_unit_gradient(W, Wd, R, max_rank, ux, uy, uz, inv_r):
    """dE/dv for one pair from the rank-summed weights of its bodies.

    With W_p = sum_b sigma f Abar_b and Wd_p = sum_b sigma f' Abar_b (per rank p, packed like R),
    the design page's per-body formula sums to

        dE/dv = (Wd . R) rhat + (h - (h . rhat) rhat) / r,

    because h . rhat = sum_p p W_p . R_p (see `_h_component`). Returns three scalars (eV/Å).
    """
    dd = 0.0
    for e in range(RANK_OFFSET[max_rank] + RANK_SIZE[max_rank]):
        dd += Wd[e] * R[e]
    hx = _h_component(W, R, max_rank, 0)
    hy = _h_component(W, R, max_rank, 1)
    hz = _h_component(W, R, max_rank, 2)
    hr = hx * ux + hy * uy + hz * uz
    return (dd * ux + (hx - hr * ux) * inv_r,
            dd * uy + (hy - hr * uy) * inv_r,
            dd * uz + (hz - hr * uz) * inv_r)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def atom_pair_gradients(i, positions, cell, offsets, second, shifts, species, cutoff,
                        body_rank, body_offset, max_rank, sigma, centres, inv_w, inv_c2,
                        bin_ptr, bin_bodies, inv_bin, Abar, R, W, Wd, pair_grad):
    """dE/dv_ij for every pair of atom i into pair_grad[q] (3,), given Abar = dE/dA_i.

    Returns the atom's contribution to dE/d(strain) as 9 scalars sum_q g_a v_b (row-major ab)."""
    si = species[i]
    cutoff2 = cutoff * cutoff
    n_w = RANK_OFFSET[max_rank] + RANK_SIZE[max_rank] if max_rank >= 1 else 4
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = 0.0
    for q in range(offsets[i], offsets[i + 1]):
        j = second[q]
        vx, vy, vz = pair_vector(positions, cell, shifts, i, j, q)
        r2 = vx * vx + vy * vy + vz * vz
        if r2 >= cutoff2:
            pair_grad[q, 0] = 0.0
            pair_grad[q, 1] = 0.0
            pair_grad[q, 2] = 0.0
            continue
        r = np.sqrt(r2)
        inv_r = 1.0 / r
        ux = vx * inv_r
        uy = vy * inv_r
        uz = vz * inv_r
        unit_powers(ux, uy, uz, max_rank, R)
        for e in range(n_w):
            W[e] = 0.0
            Wd[e] = 0.0
        sj = species[j]
        k = int(r * inv_bin)
        for m in range(bin_ptr[si, k], bin_ptr[si, k + 1]):
            b = bin_bodies[m]
            f, fr = radial_value_deriv(r, centres[si, b], inv_w[si, b], inv_c2[si, b])
            if f == 0.0 and fr == 0.0:
                continue
            sg = sigma[si, sj, b]
            add_scaled_pair(W, Wd, Abar, body_offset[b], body_rank[b], sg * f, sg * fr)
        gx, gy, gz = weighted_unit_gradient(W, Wd, R, max_rank, ux, uy, uz, inv_r)
        pair_grad[q, 0] = gx
        pair_grad[q, 1] = gy
        pair_grad[q, 2] = gz
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


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
def descriptors_kernel(positions, cells, frame_of_atom, offsets, second, shifts, species, cutoff,
                       layout, sigma, centres, inv_w, inv_c2, bin_ptr, bin_bodies, inv_bin):
    """G (N, T) for every atom (no gradients) and each atom's closest-neighbour distance (N,);
    atom i's pairs use cells[frame_of_atom[i]]."""
    body_rank, body_offset, term_body_start, term_pattern, p_rows, p_start, tables = layout
    n_atoms = positions.shape[0]
    n_terms = term_pattern.shape[0]
    m = body_offset[-1] + RANK_SIZE[body_rank[-1]]
    max_rank = 0
    for b in range(body_rank.shape[0]):
        max_rank = max(max_rank, body_rank[b])
    G = np.empty((n_atoms, n_terms))
    closest = np.empty(n_atoms)
    for i in prange(n_atoms):
        A = np.empty(m)
        R = np.empty(POWER_SIZE)
        closest[i] = atom_moments(i, positions, cells[frame_of_atom[i]], offsets, second, shifts, species,
                     cutoff, body_rank, body_offset, max_rank, sigma, centres, inv_w, inv_c2,
                     bin_ptr, bin_bodies, inv_bin, A, R)
        contract(A, body_offset, term_body_start, term_pattern, p_rows, p_start, tables, G[i])
    return G, closest
