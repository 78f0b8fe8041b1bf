"""CUDA kernels of the energy, forces and virial (used by `lattenb.cuda.evaluator.CudaEvaluator`).

Importing this module imports ``numba.cuda`` (see `lattenb.cuda.kernels`). The neighbour list the
kernels read is the padded (ELL) list of `lattenb.cuda.kernels_neighbors`: ``nbr (N, cap)``,
``shifts (N, cap, 3)``, ``count (N,)`` and ``rev (N, cap)``.

Energy, forces and virial
-------------------------
`energy_kernel` returns a kernel specialised (closure constants, cached per model shape) to the
descriptor's moment size M, term count T, the MLP's sizes, the activation, the team size and the
floating-point type. One block of TS threads (a "team", one warp by default) handles one atom,
with the atom's moments in shared memory:

  1. pair geometry of up to TS pairs at a time is staged in shared memory; lane l accumulates the
     moments of bodies l, l + TS, ... over the staged pairs (compact support: a body whose radial
     function vanishes at r costs one comparison), so every moment has one owner, no atomics;
  2. contraction G_t (lanes over terms), standardisation;
  3. MLP forward and input gradient (lanes over the units of each layer);
  4. contraction adjoint dE/dA (lanes over terms: a body belongs to exactly one term);
  5. per-pair dE/dv (lanes over pairs): written to pair_grad[i, k], with the atom's strain
     derivative sum_k g_k (x) v_k reduced over the team in a fixed order.

`gather_forces_kernel` then forms F_i = sum_k (g[i, k] - g[rev[i, k]]) per atom, in float64, in a
fixed order: no atomics, results are bitwise reproducible run to run.

float32: parameters, moments, MLP and per-pair gradients in float32; pair vectors are formed in the
positions' precision (float64) before rounding, and energies, forces and the virial are
accumulated in float64.
"""
import math
from functools import lru_cache

import numpy as np
from numba import float32, float64, int32

from .. import radial
from ..projection import traceless2_py, traceless3_py, traceless4_py
from .kernels import BLOCK, RED_BLOCK, blocks_for, cuda  # noqa: F401  (launch configuration)

#: static shared memory available to one block (bytes)
SHARED_LIMIT = 48 * 1024


# ============================================================================ forces, reductions
@cuda.jit
def gather_forces_kernel(count, pair_grad, rev, forces):
    """F_i = sum_k g[i, k] - sum_k g[rev[i, k]] in float64, fixed order (eV/Å)."""
    i = cuda.grid(1)
    if i >= count.shape[0]:
        return
    cap = pair_grad.shape[1]
    fx = 0.0
    fy = 0.0
    fz = 0.0
    for k in range(count[i]):
        fx += pair_grad[i, k, 0]
        fy += pair_grad[i, k, 1]
        fz += pair_grad[i, k, 2]
        q = rev[i, k]
        if q >= 0:
            j = q // cap
            m = q - j * cap
            fx -= pair_grad[j, m, 0]
            fy -= pair_grad[j, m, 1]
            fz -= pair_grad[j, m, 2]
    forces[i, 0] = fx
    forces[i, 1] = fy
    forces[i, 2] = fz


@cuda.jit(device=True, inline=True)
def pair_vector(pos, cell, shifts, i, k, j, pix, piy, piz):
    """Vector (Å) from atom i at (pix, piy, piz) to its k-th neighbour j, image shift included:
    the same arithmetic in both stages (moments and pair gradients), inlined into each."""
    s0 = shifts[i, k, 0]
    s1 = shifts[i, k, 1]
    s2 = shifts[i, k, 2]
    return (pos[j, 0] - pix + (s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0]),
            pos[j, 1] - piy + (s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1]),
            pos[j, 2] - piz + (s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2]))


#: the projections of `lattenb.projection`, compiled from the same source as device functions
traceless2 = cuda.jit(device=True, inline=True)(traceless2_py)
traceless3 = cuda.jit(device=True, inline=True)(traceless3_py)
traceless4 = cuda.jit(device=True, inline=True)(traceless4_py)


@cuda.jit(device=True, inline=True)
def project_bodies(sA, body_rank, body_offset, body_projection, ln, TS):
    """Every projected body of sA (shared, one atom) in place, lanes over bodies. The traceless
    map is self-adjoint, so the same call serves the moments and their adjoint."""
    for b in range(ln, body_rank.shape[0], TS):
        if body_projection[b] == 1:
            if body_rank[b] == 2:
                traceless2(sA, body_offset[b])
            elif body_rank[b] == 3:
                traceless3(sA, body_offset[b])
            elif body_rank[b] == 4:
                traceless4(sA, body_offset[b])


@cuda.jit(device=True)
def reduce_block_rows(sh, tid):
    """Tree-reduce the RED_BLOCK rows of shared sh (RED_BLOCK, 11) into row 0 in a fixed order:
    columns 0-9 summed, column 10 minimised. Every thread of the block must call it."""
    cuda.syncthreads()
    s = RED_BLOCK // 2
    while s > 0:
        if tid < s:
            for c in range(10):
                sh[tid, c] += sh[tid + s, c]
            sh[tid, 10] = min(sh[tid, 10], sh[tid + s, 10])
        cuda.syncthreads()
        s //= 2


@cuda.jit
def reduce_atoms_kernel(energies, atom_virial, closest, partial):
    """partial[block] = (sum e, sum W (9), min closest) over a grid-stride set of atoms, fixed
    order (grid-stride loop, then a tree in shared memory)."""
    sh = cuda.shared.array((RED_BLOCK, 11), float64)
    tid = cuda.threadIdx.x
    n = energies.shape[0]
    for c in range(10):
        sh[tid, c] = 0.0
    sh[tid, 10] = math.inf
    stride = cuda.gridDim.x * RED_BLOCK
    for i in range(cuda.blockIdx.x * RED_BLOCK + tid, n, stride):
        sh[tid, 0] += energies[i]
        for c in range(9):
            sh[tid, 1 + c] += atom_virial[i, c]
        sh[tid, 10] = min(sh[tid, 10], closest[i])
    reduce_block_rows(sh, tid)
    if tid == 0:
        for c in range(11):
            partial[cuda.blockIdx.x, c] = sh[0, c]


@cuda.jit
def reduce_final_kernel(partial, inv_volume, energy, virial, stress, min_distance):
    """One block: sums the partials in a fixed order; virial = sym(sum W) (eV),
    stress = -virial / V in ASE Voigt order (eV/Å^3; zeros if inv_volume == 0),
    min_distance = closest pair distance (Å)."""
    sh = cuda.shared.array((RED_BLOCK, 11), float64)
    tid = cuda.threadIdx.x
    for c in range(10):
        sh[tid, c] = 0.0
    sh[tid, 10] = math.inf
    for b in range(tid, partial.shape[0], RED_BLOCK):
        for c in range(10):
            sh[tid, c] += partial[b, c]
        sh[tid, 10] = min(sh[tid, 10], partial[b, 10])
    reduce_block_rows(sh, tid)
    if tid == 0:
        energy[0] = sh[0, 0]
        for a in range(3):
            for b in range(3):
                virial[a, b] = 0.5 * (sh[0, 1 + 3 * a + b] + sh[0, 1 + 3 * b + a])
        stress[0] = -virial[0, 0] * inv_volume
        stress[1] = -virial[1, 1] * inv_volume
        stress[2] = -virial[2, 2] * inv_volume
        stress[3] = -virial[1, 2] * inv_volume
        stress[4] = -virial[0, 2] * inv_volume
        stress[5] = -virial[0, 1] * inv_volume
        min_distance[0] = sh[0, 10]


# ============================================================================ energy kernel
def shared_bytes(M, T, n_act, widest, team_size, itemsize):
    """Static shared memory of one block of `energy_kernel` (bytes)."""
    return (itemsize * (2 * M + 4 * team_size + 2 * n_act + 2 * widest)
            + 4 * team_size + 8 * 10 * team_size)


@lru_cache(maxsize=None)
def energy_kernel(M, T, n_act, widest, team_size, activation, dtype_name, projected=False,
                  radial_name="polynomial"):
    """The fused energy/gradient kernel for one model shape, launched as
    ``kernel[n_atoms, team_size](...)`` (one block per atom).

    M: moment size, T: descriptor length, n_act: sum of the MLP layer sizes, widest: largest
    layer size, activation: 0 gaussian, 1 tanh, 2 silu, dtype_name: "float64" or "float32",
    projected: whether any body is projected (`lattenb.projection`; otherwise the two projection
    passes and their barriers are compiled out). radial_name: the radial family, whose
    `cuda_functions` become the kernel's device functions (`lattenb.radial`).
    """
    F = float32 if dtype_name == "float32" else float64
    NF = np.float32 if dtype_name == "float32" else np.float64
    ZERO = NF(0.0)
    ONE = NF(1.0)
    TWO = NF(2.0)
    TS = int(team_size)
    M = int(M)
    T = int(T)
    NACT = int(n_act)
    WIDEST = int(widest)
    ACT = int(activation)
    PROJECTED = bool(projected)
    family_functions = radial.get(radial_name).cuda_functions(NF)
    radial_inside = cuda.jit(device=True, inline=True)(family_functions["inside"])
    radial_value = cuda.jit(device=True, inline=True)(family_functions["value"])
    radial_value_deriv = cuda.jit(device=True, inline=True)(family_functions["value_deriv"])

    @cuda.jit
    def kernel(pos, cell, nbr, shifts, count, species, cutoff2, body_order,
               body_rank, body_offset, term_body_start, term_pattern, p_rows, p_start, tables,
               body_projection, sigma, radial_constants, g_mean, g_inv_std, mlp, layer_sizes, e0,
               energies, atom_virial, closest, pair_grad):
        """One block per atom i. Outputs: energies[i] (eV, float64), atom_virial[i] (9,) =
        -sum_k g_k (x) v_k (row-major, eV), closest[i] (Å), pair_grad[i, k] = dE/dv_ik.

        body_order: the bodies sorted by rank; lane l owns bodies body_order[l + TS m] in the
        moment pass, so the lanes of one round mostly share a rank (less branch divergence).
        sigma (S, S, B): the species weights with the radial family's scale folded in
        (`KernelArrays.sigma_scaled`); radial_constants (S, B, K): `KernelArrays.radial`."""
        sA = cuda.shared.array(M, F)              # moments A_i
        sAb = cuda.shared.array(M, F)             # dE/dA_i
        sr = cuda.shared.array(TS, F)             # staged pairs: r (or -1 beyond the cutoff)
        su = cuda.shared.array((TS, 3), F)        # staged pairs: unit vector
        ssj = cuda.shared.array(TS, int32)        # staged pairs: neighbour species
        sx = cuda.shared.array(NACT, F)           # MLP activations (inputs first)
        sz = cuda.shared.array(NACT, F)           # MLP pre-activations
        sbo = cuda.shared.array(WIDEST, F)        # MLP backward buffers
        sbi = cuda.shared.array(WIDEST, F)
        sred = cuda.shared.array((TS, 10), float64)   # team reductions

        i = cuda.blockIdx.x
        ln = cuda.threadIdx.x
        if i >= count.shape[0]:
            return                                 # the whole block leaves together
        si = species[i]
        nn = count[i]
        n_bodies = body_rank.shape[0]
        pix = pos[i, 0]
        piy = pos[i, 1]
        piz = pos[i, 2]

        # ---- 1. moments: lanes own bodies, pairs staged TS at a time
        for e in range(ln, M, TS):
            sA[e] = ZERO
        closest2 = math.inf
        cuda.syncthreads()
        for c0 in range(0, nn, TS):
            k = c0 + ln
            if k < nn:
                j = nbr[i, k]
                vx, vy, vz = pair_vector(pos, cell, shifts, i, k, j, pix, piy, piz)
                r2 = vx * vx + vy * vy + vz * vz
                if r2 < cutoff2:
                    closest2 = min(closest2, r2)
                    r = math.sqrt(r2)
                    inv_r = 1.0 / r
                    sr[ln] = F(r)
                    su[ln, 0] = F(vx * inv_r)
                    su[ln, 1] = F(vy * inv_r)
                    su[ln, 2] = F(vz * inv_r)
                    ssj[ln] = species[j]
                else:
                    sr[ln] = -ONE
            cuda.syncthreads()
            n_staged = min(TS, nn - c0)
            for bi in range(ln, n_bodies, TS):
                b = body_order[bi]
                p = body_rank[b]
                off = body_offset[b]
                a0 = ZERO
                a1 = ZERO
                a2 = ZERO
                a3 = ZERO
                a4 = ZERO
                a5 = ZERO
                a6 = ZERO
                a7 = ZERO
                a8 = ZERO
                for q in range(n_staged):
                    r = sr[q]
                    if r < ZERO:
                        continue
                    if not radial_inside(r, radial_constants, si, b):
                        continue
                    coef = sigma[si, ssj[q], b] * radial_value(r, radial_constants, si, b)
                    if p == 0:
                        a0 += coef
                    else:
                        ux = su[q, 0]
                        uy = su[q, 1]
                        uz = su[q, 2]
                        if p == 1:
                            a0 += coef * ux
                            a1 += coef * uy
                            a2 += coef * uz
                        elif p == 2:
                            cx = coef * ux
                            cy = coef * uy
                            cz = coef * uz
                            a0 += cx * ux
                            a1 += cx * uy
                            a2 += cx * uz
                            a3 += cy * ux
                            a4 += cy * uy
                            a5 += cy * uz
                            a6 += cz * ux
                            a7 += cz * uy
                            a8 += cz * uz
                        else:
                            # ranks 3 and 4: per flat prefix of the first p - 1 indices
                            # (9 or 27), coef times its r-hat product, then the last index
                            for pre in range(9 if p == 3 else 27):
                                cp = coef
                                rest = pre
                                for _ in range(p - 1):
                                    cp *= su[q, rest % 3]
                                    rest //= 3
                                base = off + 3 * pre
                                sA[base] += cp * ux
                                sA[base + 1] += cp * uy
                                sA[base + 2] += cp * uz
                if p == 0:
                    sA[off] += a0
                elif p == 1:
                    sA[off] += a0
                    sA[off + 1] += a1
                    sA[off + 2] += a2
                elif p == 2:
                    sA[off] += a0
                    sA[off + 1] += a1
                    sA[off + 2] += a2
                    sA[off + 3] += a3
                    sA[off + 4] += a4
                    sA[off + 5] += a5
                    sA[off + 6] += a6
                    sA[off + 7] += a7
                    sA[off + 8] += a8
            cuda.syncthreads()
        if PROJECTED:
            project_bodies(sA, body_rank, body_offset, body_projection, ln, TS)
            cuda.syncthreads()

        # ---- 2. contraction and standardisation: lanes own terms
        for t in range(ln, T, TS):
            pat = term_pattern[t]
            b0 = term_body_start[t]
            nbt = term_body_start[t + 1] - b0
            ts = p_start[pat]
            total = ZERO
            for row in range(p_rows[pat]):
                prod = ONE
                base = ts + row * nbt
                for kk in range(nbt):
                    prod *= sA[body_offset[b0 + kk] + tables[base + kk]]
                total += prod
            sx[t] = (total - g_mean[si, t]) * g_inv_std[si, t]
        cuda.syncthreads()

        # ---- 3. MLP forward: lanes own the units of a layer
        n_layers = layer_sizes.shape[0] - 1
        pp = 0
        a_in = 0
        z_off = 0
        for layer in range(n_layers):
            n_in = layer_sizes[layer]
            n_out = layer_sizes[layer + 1]
            a_out = a_in + n_in
            b_off = pp + n_in * n_out
            for o in range(ln, n_out, TS):
                zz = mlp[si, b_off + o]
                for kk in range(n_in):
                    zz += sx[a_in + kk] * mlp[si, pp + kk * n_out + o]
                sz[z_off + o] = zz
                if layer == n_layers - 1:
                    sx[a_out + o] = zz
                elif ACT == 0:                      # gaussian exp(-z^2)
                    sx[a_out + o] = math.exp(-zz * zz)
                elif ACT == 1:                      # tanh
                    sx[a_out + o] = math.tanh(zz)
                else:                               # silu z / (1 + exp(-z))
                    sx[a_out + o] = zz / (ONE + math.exp(-zz))
            cuda.syncthreads()
            pp = b_off + n_out
            a_in = a_out
            z_off += n_out
        if ln == 0:
            energies[i] = float64(sx[a_in]) + e0[si]

        # ---- MLP input gradient: lanes own the inputs of a layer
        if ln == 0:
            sbo[0] = ONE
        cuda.syncthreads()
        p_end = pp
        z_end = z_off
        for layer in range(n_layers - 1, -1, -1):
            n_in = layer_sizes[layer]
            n_out = layer_sizes[layer + 1]
            pl = p_end - (n_in * n_out + n_out)
            zl = z_end - n_out
            if layer != n_layers - 1:
                for o in range(ln, n_out, TS):
                    zz = sz[zl + o]
                    if ACT == 0:
                        dphi = -TWO * zz * math.exp(-zz * zz)
                    elif ACT == 1:
                        th = math.tanh(zz)
                        dphi = ONE - th * th
                    else:
                        sg = ONE / (ONE + math.exp(-zz))
                        dphi = sg + zz * sg * (ONE - sg)
                    sbo[o] *= dphi
                cuda.syncthreads()
            for kk in range(ln, n_in, TS):
                s = ZERO
                row = pl + kk * n_out
                for o in range(n_out):
                    s += mlp[si, row + o] * sbo[o]
                sbi[kk] = s
            cuda.syncthreads()
            for kk in range(ln, n_in, TS):
                sbo[kk] = sbi[kk]
            cuda.syncthreads()
            p_end = pl
            z_end = zl

        # ---- 4. contraction adjoint: lanes own terms (and so their bodies)
        for t in range(ln, T, TS):
            gb = sbo[t] * g_inv_std[si, t]
            pat = term_pattern[t]
            b0 = term_body_start[t]
            nbt = term_body_start[t + 1] - b0
            ts = p_start[pat]
            for kk in range(nbt):
                off = body_offset[b0 + kk]
                size = 1
                for _ in range(body_rank[b0 + kk]):
                    size *= 3
                for e in range(size):
                    sAb[off + e] = ZERO
            if gb != ZERO:
                for row in range(p_rows[pat]):
                    base = ts + row * nbt
                    for kk in range(nbt):
                        prod = gb
                        for ll in range(nbt):
                            if ll != kk:
                                prod *= sA[body_offset[b0 + ll] + tables[base + ll]]
                        sAb[body_offset[b0 + kk] + tables[base + kk]] += prod
        cuda.syncthreads()
        if PROJECTED:
            project_bodies(sAb, body_rank, body_offset, body_projection, ln, TS)
            cuda.syncthreads()

        # ---- 5. per-pair gradients: lanes own pairs
        s00 = 0.0
        s01 = 0.0
        s02 = 0.0
        s10 = 0.0
        s11 = 0.0
        s12 = 0.0
        s20 = 0.0
        s21 = 0.0
        s22 = 0.0
        u3 = cuda.local.array(3, F)
        h3 = cuda.local.array(3, F)
        for k in range(ln, nn, TS):
            j = nbr[i, k]
            vx, vy, vz = pair_vector(pos, cell, shifts, i, k, j, pix, piy, piz)
            r2 = vx * vx + vy * vy + vz * vz
            if r2 >= cutoff2:
                pair_grad[i, k, 0] = ZERO
                pair_grad[i, k, 1] = ZERO
                pair_grad[i, k, 2] = ZERO
                continue
            rd = math.sqrt(r2)
            inv_rd = 1.0 / rd
            r = F(rd)
            inv_r = F(inv_rd)
            ux = F(vx * inv_rd)
            uy = F(vy * inv_rd)
            uz = F(vz * inv_rd)
            u3[0] = ux
            u3[1] = uy
            u3[2] = uz
            h3[0] = ZERO
            h3[1] = ZERO
            h3[2] = ZERO
            dd = ZERO
            sj = species[j]
            for b in range(n_bodies):
                if not radial_inside(r, radial_constants, si, b):
                    continue
                g, dg = radial_value_deriv(r, radial_constants, si, b)
                sg = sigma[si, sj, b]
                a = sg * g                              # sigma f
                ad = sg * dg                            # sigma df/dr
                p = body_rank[b]
                off = body_offset[b]
                if p == 0:
                    dd += ad * sAb[off]
                elif p == 1:
                    m0 = sAb[off]
                    m1 = sAb[off + 1]
                    m2 = sAb[off + 2]
                    dd += ad * (m0 * ux + m1 * uy + m2 * uz)
                    h3[0] += a * m0
                    h3[1] += a * m1
                    h3[2] += a * m2
                elif p == 2:
                    m00 = sAb[off]
                    m01 = sAb[off + 1]
                    m02 = sAb[off + 2]
                    m10 = sAb[off + 3]
                    m11 = sAb[off + 4]
                    m12 = sAb[off + 5]
                    m20 = sAb[off + 6]
                    m21 = sAb[off + 7]
                    m22 = sAb[off + 8]
                    row0 = m00 * ux + m01 * uy + m02 * uz
                    row1 = m10 * ux + m11 * uy + m12 * uz
                    row2 = m20 * ux + m21 * uy + m22 * uz
                    col0 = m00 * ux + m10 * uy + m20 * uz
                    col1 = m01 * ux + m11 * uy + m21 * uz
                    col2 = m02 * ux + m12 * uy + m22 * uz
                    dd += ad * (row0 * ux + row1 * uy + row2 * uz)
                    h3[0] += a * (row0 + col0)
                    h3[1] += a * (row1 + col1)
                    h3[2] += a * (row2 + col2)
                else:
                    # ranks 3 and 4, as the moment loop: every entry (flat index fl, its base-3
                    # digits c0..c3 the indices), its r-hat product, and per index the product
                    # of the others; a rank-3 entry has no fourth index (its factor is one)
                    for fl in range(27 if p == 3 else 81):
                        c0 = fl % 3
                        c1 = (fl // 3) % 3
                        c2 = (fl // 9) % 3
                        c3 = fl // 27
                        u0 = u3[c0]
                        u1 = u3[c1]
                        u2 = u3[c2]
                        u4 = u3[c3] if p == 4 else ONE
                        tv = sAb[off + fl]
                        at = a * tv
                        u01 = u0 * u1
                        u24 = u2 * u4
                        dd += ad * tv * u01 * u24
                        h3[c0] += at * u1 * u24
                        h3[c1] += at * u0 * u24
                        h3[c2] += at * u01 * u4
                        if p == 4:
                            h3[c3] += at * u01 * u2
            hx = h3[0]
            hy = h3[1]
            hz = h3[2]
            hr = hx * ux + hy * uy + hz * uz
            gx = dd * ux + (hx - hr * ux) * inv_r
            gy = dd * uy + (hy - hr * uy) * inv_r
            gz = dd * uz + (hz - hr * uz) * inv_r
            pair_grad[i, k, 0] = gx
            pair_grad[i, k, 1] = gy
            pair_grad[i, k, 2] = gz
            gxd = float64(gx)
            gyd = float64(gy)
            gzd = float64(gz)
            s00 += gxd * vx
            s01 += gxd * vy
            s02 += gxd * vz
            s10 += gyd * vx
            s11 += gyd * vy
            s12 += gyd * vz
            s20 += gzd * vx
            s21 += gzd * vy
            s22 += gzd * vz

        # ---- team reductions in a fixed order
        sred[ln, 0] = s00
        sred[ln, 1] = s01
        sred[ln, 2] = s02
        sred[ln, 3] = s10
        sred[ln, 4] = s11
        sred[ln, 5] = s12
        sred[ln, 6] = s20
        sred[ln, 7] = s21
        sred[ln, 8] = s22
        sred[ln, 9] = closest2
        cuda.syncthreads()
        for c in range(ln, 10, TS):
            if c < 9:
                tot = 0.0
                for ll in range(TS):
                    tot += sred[ll, c]
                atom_virial[i, c] = -tot
            else:
                m = math.inf
                for ll in range(TS):
                    m = min(m, sred[ll, 9])
                closest[i] = math.sqrt(m)

    return kernel
