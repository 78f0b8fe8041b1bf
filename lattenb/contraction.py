"""Contractions: descriptor terms from the body tensors, and their adjoints (design page, §3-5).

Term t contracts its operands row by row, G_t = sum_rows prod_k A[index[row, k]], with the rows of
`blocks.DescriptorLayout` (index_start, index: places in the per-atom moment vector A). An
operand is a body, or an intermediate X = sum A_a A_b of two bodies formed first by `pair` from
the layout's pair_rows and stored after the real moments (`blocks.pattern_path`: the 4-body
patterns cost 3^6 rows x 3 products directly, under a tenth of that this way).
`pair` and `contract` serve the descriptor, with `contract_adjoint` and `pair_adjoint` the
forces; the `_tangent` variants the training gradient. Two and three operands, the common
cases, get loops of fixed width.
"""
from numba import njit

from ._numba import FASTMATH


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def contract(A, operand_start, index_start, index, G):
    """G_t = sum_rows prod_k A[row's k-th index] for every term t (rows: index_start, index of
    `blocks.DescriptorLayout`). Two and three operands, the common cases, get loops of fixed
    width."""
    for t in range(G.shape[0]):
        nb = operand_start[t + 1] - operand_start[t]
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
def contract_adjoint(A, Gbar, operand_start, index_start, index, Abar):
    """Abar = dG/dA^T Gbar: each row adds Gbar_t prod_{l != k} A[index_l] to Abar[index_k]."""
    Abar[:] = 0.0
    for t in range(Gbar.shape[0]):
        gb = Gbar[t]
        if gb == 0.0:
            continue
        nb = operand_start[t + 1] - operand_start[t]
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
def contract_tangent(A, Adot, operand_start, index_start, index, G, Gdot):
    """G = C(A) as in `contract` and its tangent Gdot = sum_rows sum_k Adot_k prod_{l != k} A_l
    (A, Adot (M,); G, Gdot (T,)). One to three operands get loops of fixed width."""
    for t in range(G.shape[0]):
        nb = operand_start[t + 1] - operand_start[t]
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
def contract_tangent_adjoint(A, Adot, Gbar, Gdotbar, operand_start, index_start, index, Abar,
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
        nb = operand_start[t + 1] - operand_start[t]
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


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def pair(A, pair_rows, moment_sizes):
    """The intermediates X (A[M:M_ext], `blocks.contraction_plan`): X[r0] = sum A[r1] A[r2]."""
    for e in range(moment_sizes[0], moment_sizes[1]):
        A[e] = 0.0
    for r in range(pair_rows.shape[0]):
        A[pair_rows[r, 0]] += A[pair_rows[r, 1]] * A[pair_rows[r, 2]]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def pair_adjoint(A, Abar, pair_rows):
    """Abar of the bodies += the adjoint of `pair` applied to the intermediates' Abar."""
    for r in range(pair_rows.shape[0]):
        xb = Abar[pair_rows[r, 0]]
        a = pair_rows[r, 1]
        b = pair_rows[r, 2]
        Abar[a] += xb * A[b]
        Abar[b] += xb * A[a]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def pair_tangent(A, Adot, pair_rows, moment_sizes):
    """`pair` and its tangent Xdot = sum Adot_a A_b + A_a Adot_b."""
    for e in range(moment_sizes[0], moment_sizes[1]):
        A[e] = 0.0
        Adot[e] = 0.0
    for r in range(pair_rows.shape[0]):
        x = pair_rows[r, 0]
        a = pair_rows[r, 1]
        b = pair_rows[r, 2]
        A[x] += A[a] * A[b]
        Adot[x] += Adot[a] * A[b] + A[a] * Adot[b]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def pair_tangent_adjoint(A, Adot, Abar, Adotbar, pair_rows):
    """Reverse of `pair_tangent`: Abar_a += Xbar A_b + Xdotbar Adot_b, Adotbar_a += Xdotbar A_b
    (and the same with a and b exchanged)."""
    for r in range(pair_rows.shape[0]):
        x = pair_rows[r, 0]
        a = pair_rows[r, 1]
        b = pair_rows[r, 2]
        xb = Abar[x]
        xdb = Adotbar[x]
        Abar[a] += xb * A[b] + xdb * Adot[b]
        Abar[b] += xb * A[a] + xdb * Adot[a]
        Adotbar[a] += xdb * A[b]
        Adotbar[b] += xdb * A[a]
