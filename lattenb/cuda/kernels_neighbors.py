"""CUDA kernels of the GPU neighbour list (used by `lattenb.cuda.neighbors.DeviceNeighborList`).

Importing this module imports ``numba.cuda`` (see `lattenb.cuda.kernels`).

Neighbour list (ELL layout, built on the GPU)
---------------------------------------------
The list is full (i->j and j->i) with integer image shifts S, exactly as `lattenb.neighbors`:
v_ij = r_j + S.cell - r_i, shifts relative to the positions as passed. It is stored padded, one
row of ``cap`` slots per atom: ``nbr (N, cap)`` int32 neighbour index, ``shifts (N, cap, 3)``
int32, ``count (N,)`` int32 pairs in use. The build is the same cell-list algorithm as the CPU
code (fractional coordinates of an effective cell, bins of plane spacing >= cutoff, periodic in
any subset of directions, triclinic, and as many periodic images as the cutoff needs when it is
larger than half the cell or than the cell), in kernels:

  nl_wrap       fractional coordinates, wrap along periodic directions, bounding box along
                the others
  nl_bin        bin index per atom, bins filled with atomic slot counters (fixed capacity per bin)
  nl_sort_bins  each bin's atoms sorted by index, so that everything after is deterministic
  nl_pairs      one thread per atom scans the neighbouring bins and writes its row
  nl_reverse    rev[i, k] = flat slot (j * cap + m) of the reverse pair j -> i (shift -S), or -1

Capacity overflows (bin or row) are reported through a flag; the host grows the capacity and runs
the kernel again. No CPU fallback is needed for large cutoffs: the GPU build handles any cutoff.
"""
import math

from numba import float64

from .kernels import BLOCK, RED_BLOCK, blocks_for, cuda  # noqa: F401  (launch configuration)


# ============================================================================ small utilities
@cuda.jit
def fill_i32_kernel(a, value):
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = value


@cuda.jit
def max_displacement_kernel(pos, ref, out):
    """out[0] = max(out[0], max_i |pos_i - ref_i|^2): block-level tree, one atomic per block."""
    sh = cuda.shared.array(RED_BLOCK, float64)
    tid = cuda.threadIdx.x
    i = cuda.blockIdx.x * RED_BLOCK + tid
    d2 = 0.0
    if i < pos.shape[0]:
        dx = float64(pos[i, 0]) - ref[i, 0]
        dy = float64(pos[i, 1]) - ref[i, 1]
        dz = float64(pos[i, 2]) - ref[i, 2]
        d2 = dx * dx + dy * dy + dz * dz
    sh[tid] = d2
    cuda.syncthreads()
    s = RED_BLOCK // 2
    while s > 0:
        if tid < s:
            sh[tid] = max(sh[tid], sh[tid + s])
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        cuda.atomic.max(out, 0, sh[0])


@cuda.jit
def copy_positions_kernel(src, dst):
    i = cuda.grid(1)
    if i < src.shape[0]:
        dst[i, 0] = src[i, 0]
        dst[i, 1] = src[i, 1]
        dst[i, 2] = src[i, 2]


# ============================================================================ neighbour list
@cuda.jit
def nl_wrap_kernel(pos, inv, eff, pbc, frac, osh, rw, bbox):
    """Fractional coordinates; wrap into [0, 1) along periodic directions (osh = integer wrap),
    rw = pos - osh.eff; bbox[0:3] / bbox[3:6] = min / max fractional coordinate along the
    non-periodic directions (block tree, then one atomic per block)."""
    sh = cuda.shared.array((RED_BLOCK, 6), float64)
    tid = cuda.threadIdx.x
    i = cuda.blockIdx.x * RED_BLOCK + tid
    for d in range(3):
        sh[tid, d] = math.inf
        sh[tid, 3 + d] = -math.inf
    if i < pos.shape[0]:
        x = float64(pos[i, 0])
        y = float64(pos[i, 1])
        z = float64(pos[i, 2])
        for d in range(3):
            f = x * inv[0, d] + y * inv[1, d] + z * inv[2, d]
            if pbc[d] != 0:
                o = math.floor(f)
                f -= o
                osh[i, d] = o
            else:
                osh[i, d] = 0
                sh[tid, d] = f
                sh[tid, 3 + d] = f
            frac[i, d] = f
        o0 = osh[i, 0]
        o1 = osh[i, 1]
        o2 = osh[i, 2]
        for d in range(3):
            rw[i, d] = float64(pos[i, d]) - (o0 * eff[0, d] + o1 * eff[1, d] + o2 * eff[2, d])
    cuda.syncthreads()
    s = RED_BLOCK // 2
    while s > 0:
        if tid < s:
            for d in range(3):
                sh[tid, d] = min(sh[tid, d], sh[tid + s, d])
                sh[tid, 3 + d] = max(sh[tid, 3 + d], sh[tid + s, 3 + d])
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        for d in range(3):
            if pbc[d] == 0:
                cuda.atomic.min(bbox, d, sh[0, d])
                cuda.atomic.max(bbox, 3 + d, sh[0, 3 + d])


@cuda.jit
def nl_bin_kernel(frac, pbc, nb, lo, scale, bins3, bin_count, bin_atoms, flags):
    """Bin of every atom; bin_atoms[b, slot] = atom for slot < capacity. On overflow,
    flags[0] = max(flags[0], atoms in the fullest bin seen)."""
    i = cuda.grid(1)
    if i >= frac.shape[0]:
        return
    for d in range(3):
        if pbc[d] != 0:
            x = frac[i, d] * nb[d]
        else:
            x = (frac[i, d] - lo[d]) * scale[d]
        k = int(math.floor(x))
        if k < 0:
            k = 0
        if k > nb[d] - 1:
            k = nb[d] - 1
        bins3[i, d] = k
    lin = (bins3[i, 0] * nb[1] + bins3[i, 1]) * nb[2] + bins3[i, 2]
    slot = cuda.atomic.add(bin_count, lin, 1)
    if slot < bin_atoms.shape[1]:
        bin_atoms[lin, slot] = i
    else:
        cuda.atomic.max(flags, 0, slot + 1)


@cuda.jit
def nl_sort_bins_kernel(bin_count, bin_atoms):
    """Insertion sort of each bin's atoms by index (the atomic fill order is arbitrary)."""
    b = cuda.grid(1)
    if b >= bin_count.shape[0]:
        return
    n = min(bin_count[b], bin_atoms.shape[1])
    for a in range(1, n):
        v = bin_atoms[b, a]
        k = a - 1
        while k >= 0 and bin_atoms[b, k] > v:
            bin_atoms[b, k + 1] = bin_atoms[b, k]
            k -= 1
        bin_atoms[b, k + 1] = v


@cuda.jit(device=True, inline=True)
def wrap_bin(g, n_bins, periodic):
    """(image shift, bin in [0, n_bins)) of global bin index g along one direction; along a
    non-periodic direction a g outside the grid has no bin and gives (0, -1)."""
    if periodic != 0:
        shift = g // n_bins
        return shift, g - shift * n_bins
    if g < 0 or g >= n_bins:
        return 0, -1
    return 0, g


@cuda.jit
def nl_pairs_kernel(rw, osh, bins3, eff, pbc, nb, nsearch, rc2, bin_count, bin_atoms,
                    nbr, shifts, count, flags):
    """Row i of the list: every (j, S) with |rw_j - (rw_i - S'.eff)|^2 < rc2 except j == i at
    S' = 0, scanning bins in a fixed order. Shifts are relative to the unwrapped positions:
    S = S' + osh_i - osh_j. On overflow flags[1] = max(flags[1], pairs of the longest row)."""
    i = cuda.grid(1)
    if i >= rw.shape[0]:
        return
    cap = nbr.shape[1]
    bcap = bin_atoms.shape[1]
    nbx = nb[0]
    nby = nb[1]
    nbz = nb[2]
    xi = rw[i, 0]
    yi = rw[i, 1]
    zi = rw[i, 2]
    oix = osh[i, 0]
    oiy = osh[i, 1]
    oiz = osh[i, 2]
    n = 0
    for kx in range(-nsearch[0], nsearch[0] + 1):
        sx, lx = wrap_bin(bins3[i, 0] + kx, nbx, pbc[0])
        if lx < 0:
            continue
        for ky in range(-nsearch[1], nsearch[1] + 1):
            sy, ly = wrap_bin(bins3[i, 1] + ky, nby, pbc[1])
            if ly < 0:
                continue
            for kz in range(-nsearch[2], nsearch[2] + 1):
                sz, lz = wrap_bin(bins3[i, 2] + kz, nbz, pbc[2])
                if lz < 0:
                    continue
                b = (lx * nby + ly) * nbz + lz
                m_end = min(bin_count[b], bcap)
                if m_end == 0:
                    continue
                cx = xi - (sx * eff[0, 0] + sy * eff[1, 0] + sz * eff[2, 0])
                cy = yi - (sx * eff[0, 1] + sy * eff[1, 1] + sz * eff[2, 1])
                cz = zi - (sx * eff[0, 2] + sy * eff[1, 2] + sz * eff[2, 2])
                home = sx == 0 and sy == 0 and sz == 0
                for m in range(m_end):
                    j = bin_atoms[b, m]
                    dx = rw[j, 0] - cx
                    dy = rw[j, 1] - cy
                    dz = rw[j, 2] - cz
                    if dx * dx + dy * dy + dz * dz < rc2:
                        if home and j == i:
                            continue
                        if n < cap:
                            nbr[i, n] = j
                            shifts[i, n, 0] = sx + oix - osh[j, 0]
                            shifts[i, n, 1] = sy + oiy - osh[j, 1]
                            shifts[i, n, 2] = sz + oiz - osh[j, 2]
                        n += 1
    count[i] = n
    if n > cap:
        cuda.atomic.max(flags, 1, n)


@cuda.jit
def nl_reverse_kernel(nbr, shifts, count, rev):
    """rev[i, k] = j * cap + m with (nbr[j, m], shifts[j, m]) == (i, -shifts[i, k]), else -1.

    A pair is missing its reverse only if rounding put |v| on different sides of the list
    radius for the two directions; the list radius exceeds the model cutoff, so such a pair
    has zero gradient and -1 (skip) is exact."""
    i = cuda.grid(1)
    if i >= count.shape[0]:
        return
    cap = nbr.shape[1]
    for k in range(count[i]):
        j = nbr[i, k]
        s0 = shifts[i, k, 0]
        s1 = shifts[i, k, 1]
        s2 = shifts[i, k, 2]
        found = -1
        for m in range(count[j]):
            if (nbr[j, m] == i and shifts[j, m, 0] == -s0 and shifts[j, m, 1] == -s1
                    and shifts[j, m, 2] == -s2):
                found = j * cap + m
                break
        rev[i, k] = found
