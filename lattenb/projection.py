"""Projections: fixed linear maps applied to body tensors between the moments and the contraction
(design page, §3). Each body has a code (`blocks.DescriptorLayout.body_projection`):

    0 "none"       the raw tensor A = sum_j f(r_ij) r̂^(x)p
    1 "traceless"  its symmetric traceless (irreducible) part, Allen et al.'s Q (rank 2) and
                   T (rank 3); written with capital letters in a block string (`lattenb.blocks`)

The kernel drivers (`lattenb.kernels`, `lattenb.cuda.kernels_energy`) call `project` on A (and on
its tangent Adot in training) right after the moments, and its adjoint on Abar (and Adotbar) right
before the reverse passes to the pairs, so a new projection is one more code here: its forward
map and its transpose, both in place on the body's slice A[off:off + 3^p].

The traceless map is the orthogonal projection (in the Frobenius inner product) of R^(3^p) onto
the symmetric traceless tensors, P = Pi_traceless . sym. It is self-adjoint, so its adjoint pass
is the same map; symmetrising first makes it so for any input (A itself is symmetric, Abar in
general is not). For a symmetric rank-3 S with traces a_k = S_mmk,
    T_ijk = S_ijk - (delta_ij a_k + delta_ik a_j + delta_jk a_i) / 5,
and for rank 2, Q_ij = S_ij - delta_ij S_mm / 3.
The scalar helpers are plain Python so that the CUDA kernels compile the same source as device
functions.
"""
from numba import njit

from ._numba import FASTMATH

#: projection codes: name -> code
PROJECTIONS = {"none": 0, "traceless": 1}


def traceless2_py(A, off):
    """A[off:off + 9] (a 3x3 tensor, row-major) <- its symmetric traceless part, in place."""
    a01 = 0.5 * (A[off + 1] + A[off + 3])
    a02 = 0.5 * (A[off + 2] + A[off + 6])
    a12 = 0.5 * (A[off + 5] + A[off + 7])
    third = (A[off] + A[off + 4] + A[off + 8]) * (1.0 / 3.0)
    A[off] -= third
    A[off + 4] -= third
    A[off + 8] -= third
    A[off + 1] = a01
    A[off + 3] = a01
    A[off + 2] = a02
    A[off + 6] = a02
    A[off + 5] = a12
    A[off + 7] = a12


def traceless3_py(A, off):
    """A[off:off + 27] (a 3x3x3 tensor, row-major) <- its symmetric traceless part, in place."""
    # symmetrise: every index triple gets the mean over its 6 permutations
    for i in range(3):
        for j in range(i, 3):
            for k in range(j, 3):
                e_ijk = off + 9 * i + 3 * j + k
                e_ikj = off + 9 * i + 3 * k + j
                e_jik = off + 9 * j + 3 * i + k
                e_jki = off + 9 * j + 3 * k + i
                e_kij = off + 9 * k + 3 * i + j
                e_kji = off + 9 * k + 3 * j + i
                s = (A[e_ijk] + A[e_ikj] + A[e_jik] + A[e_jki] + A[e_kij] + A[e_kji]) * (1.0 / 6.0)
                A[e_ijk] = s
                A[e_ikj] = s
                A[e_jik] = s
                A[e_jki] = s
                A[e_kij] = s
                A[e_kji] = s
    # traces a_k = S_mmk, then remove sym(delta (x) a) * 3/5
    t0 = (A[off] + A[off + 12] + A[off + 24]) * 0.2
    t1 = (A[off + 1] + A[off + 13] + A[off + 25]) * 0.2
    t2 = (A[off + 2] + A[off + 14] + A[off + 26]) * 0.2
    for i in range(3):
        for j in range(3):
            for k in range(3):
                d = 0.0
                if i == j:
                    d += t0 if k == 0 else (t1 if k == 1 else t2)
                if i == k:
                    d += t0 if j == 0 else (t1 if j == 1 else t2)
                if j == k:
                    d += t0 if i == 0 else (t1 if i == 1 else t2)
                A[off + 9 * i + 3 * j + k] -= d


_traceless2 = njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")(
    traceless2_py)
_traceless3 = njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")(
    traceless3_py)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def has_projection(body_projection):
    """Whether any body is projected (the drivers skip both passes otherwise)."""
    for b in range(body_projection.shape[0]):
        if body_projection[b] != 0:
            return True
    return False


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def project(A, body_rank, body_offset, body_projection, adjoint):
    """A_b <- P_b A_b (adjoint False) or P_b^T A_b (adjoint True) in place for every projected
    body (A (M,), a per-atom moment vector or its adjoint). The traceless map is self-adjoint,
    so `adjoint` does not change it. Codes are validated where the layout is built
    (`blocks.descriptor_layout`): a raise in this loop made it twice as slow."""
    for b in range(body_projection.shape[0]):
        if body_projection[b] == 1:
            if body_rank[b] == 2:
                _traceless2(A, body_offset[b])
            else:
                _traceless3(A, body_offset[b])
