"""Projections: fixed linear maps applied to body tensors between the moments and the contraction
(design page, §3). Each body has a code (`blocks.DescriptorLayout.body_projection`):

    0 "none"       the raw tensor A = sum_j f(r_ij) r̂^(x)p
    1 "traceless"  its symmetric traceless (irreducible) part, Allen et al.'s Q (rank 2) and
                   T (rank 3), and its rank-4 analogue; written with capital letters in a block
                   string (`lattenb.blocks`)

The kernel drivers (`lattenb.kernels`, `lattenb.cuda.kernels_energy`) call `project` on A (and on
its tangent Adot in training) right after the moments, and its adjoint on Abar (and Adotbar) right
before the reverse passes to the pairs, so a new projection is one more code here: its forward
map and its transpose, both in place on the body's slice A[off:off + 3^p].

The traceless map is the orthogonal projection (in the Frobenius inner product) of R^(3^p) onto
the symmetric traceless tensors, P = Pi_traceless . sym. It is self-adjoint, so its adjoint pass
is the same map; symmetrising first makes it so for any input (A itself is symmetric, Abar in
general is not). For a symmetric rank-3 S with traces a_k = S_mmk,
    T_ijk = S_ijk - (delta_ij a_k + delta_ik a_j + delta_jk a_i) / 5,
for rank 2, Q_ij = S_ij - delta_ij S_mm / 3, and for rank 4, with traces b_kl = S_mmkl and c = b_mm,
    T_ijkl = S_ijkl - (delta_ij b_kl + 5 more pairings) / 7
             + c (delta_ij delta_kl + delta_ik delta_jl + delta_il delta_jk) / 35.
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


def traceless4_py(A, off):
    """A[off:off + 81] (a 3x3x3x3 tensor, row-major) <- its symmetric traceless part, in place.
    Written out over the 15 unique components (the kernels compile the same source for the CPU
    and the GPU, so no scratch arrays and no run-time indexing of tuples)."""
    # the symmetrised unique components: the mean over each one's entries
    s_xxxx = A[off + 0]
    s_xxxy = (A[off + 1] + A[off + 3] + A[off + 9] + A[off + 27]) * 0.25
    s_xxxz = (A[off + 2] + A[off + 6] + A[off + 18] + A[off + 54]) * 0.25
    s_xxyy = (A[off + 4] + A[off + 10] + A[off + 12] + A[off + 28] + A[off + 30]
              + A[off + 36]) * (1.0 / 6.0)
    s_xxyz = (A[off + 5] + A[off + 7] + A[off + 11] + A[off + 15] + A[off + 19] + A[off + 21]
              + A[off + 29] + A[off + 33] + A[off + 45] + A[off + 55] + A[off + 57]
              + A[off + 63]) * (1.0 / 12.0)
    s_xxzz = (A[off + 8] + A[off + 20] + A[off + 24] + A[off + 56] + A[off + 60]
              + A[off + 72]) * (1.0 / 6.0)
    s_xyyy = (A[off + 13] + A[off + 31] + A[off + 37] + A[off + 39]) * 0.25
    s_xyyz = (A[off + 14] + A[off + 16] + A[off + 22] + A[off + 32] + A[off + 34] + A[off + 38]
              + A[off + 42] + A[off + 46] + A[off + 48] + A[off + 58] + A[off + 64]
              + A[off + 66]) * (1.0 / 12.0)
    s_xyzz = (A[off + 17] + A[off + 23] + A[off + 25] + A[off + 35] + A[off + 47] + A[off + 51]
              + A[off + 59] + A[off + 61] + A[off + 65] + A[off + 69] + A[off + 73]
              + A[off + 75]) * (1.0 / 12.0)
    s_xzzz = (A[off + 26] + A[off + 62] + A[off + 74] + A[off + 78]) * 0.25
    s_yyyy = A[off + 40]
    s_yyyz = (A[off + 41] + A[off + 43] + A[off + 49] + A[off + 67]) * 0.25
    s_yyzz = (A[off + 44] + A[off + 50] + A[off + 52] + A[off + 68] + A[off + 70]
              + A[off + 76]) * (1.0 / 6.0)
    s_yzzz = (A[off + 53] + A[off + 71] + A[off + 77] + A[off + 79]) * 0.25
    s_zzzz = A[off + 80]
    # traces b_kl = S_mmkl and c = b_mm
    b_xx = s_xxxx + s_xxyy + s_xxzz
    b_xy = s_xxxy + s_xyyy + s_xyzz
    b_xz = s_xxxz + s_xyyz + s_xzzz
    b_yy = s_xxyy + s_yyyy + s_yyzz
    b_yz = s_xxyz + s_yyyz + s_yzzz
    b_zz = s_xxzz + s_yyzz + s_zzzz
    c = b_xx + b_yy + b_zz
    # T = S - (sum of the 6 delta (x) b) / 7 + c (sum of the 3 delta (x) delta) / 35
    t_xxxx = s_xxxx - (6.0 * b_xx) * (1.0 / 7.0) + 3.0 * c * (1.0 / 35.0)
    t_xxxy = s_xxxy - (3.0 * b_xy) * (1.0 / 7.0)
    t_xxxz = s_xxxz - (3.0 * b_xz) * (1.0 / 7.0)
    t_xxyy = s_xxyy - (b_yy + b_xx) * (1.0 / 7.0) + c * (1.0 / 35.0)
    t_xxyz = s_xxyz - (b_yz) * (1.0 / 7.0)
    t_xxzz = s_xxzz - (b_zz + b_xx) * (1.0 / 7.0) + c * (1.0 / 35.0)
    t_xyyy = s_xyyy - (3.0 * b_xy) * (1.0 / 7.0)
    t_xyyz = s_xyyz - (b_xz) * (1.0 / 7.0)
    t_xyzz = s_xyzz - (b_xy) * (1.0 / 7.0)
    t_xzzz = s_xzzz - (3.0 * b_xz) * (1.0 / 7.0)
    t_yyyy = s_yyyy - (6.0 * b_yy) * (1.0 / 7.0) + 3.0 * c * (1.0 / 35.0)
    t_yyyz = s_yyyz - (3.0 * b_yz) * (1.0 / 7.0)
    t_yyzz = s_yyzz - (b_zz + b_yy) * (1.0 / 7.0) + c * (1.0 / 35.0)
    t_yzzz = s_yzzz - (3.0 * b_yz) * (1.0 / 7.0)
    t_zzzz = s_zzzz - (6.0 * b_zz) * (1.0 / 7.0) + 3.0 * c * (1.0 / 35.0)
    # every entry of a class gets its component
    A[off + 0] = t_xxxx
    A[off + 1] = A[off + 3] = A[off + 9] = A[off + 27] = t_xxxy
    A[off + 2] = A[off + 6] = A[off + 18] = A[off + 54] = t_xxxz
    A[off + 4] = A[off + 10] = A[off + 12] = A[off + 28] = A[off + 30] = A[off + 36] = t_xxyy
    A[off + 5] = A[off + 7] = A[off + 11] = A[off + 15] = A[off + 19] = A[off + 21] = \
        A[off + 29] = \
        A[off + 33] = A[off + 45] = A[off + 55] = A[off + 57] = A[off + 63] = t_xxyz
    A[off + 8] = A[off + 20] = A[off + 24] = A[off + 56] = A[off + 60] = A[off + 72] = t_xxzz
    A[off + 13] = A[off + 31] = A[off + 37] = A[off + 39] = t_xyyy
    A[off + 14] = A[off + 16] = A[off + 22] = A[off + 32] = A[off + 34] = A[off + 38] = \
        A[off + 42] = A[off + 46] = A[off + 48] = A[off + 58] = A[off + 64] = A[off + 66] = \
        t_xyyz
    A[off + 17] = A[off + 23] = A[off + 25] = A[off + 35] = A[off + 47] = A[off + 51] = \
        A[off + 59] = A[off + 61] = A[off + 65] = A[off + 69] = A[off + 73] = A[off + 75] = \
        t_xyzz
    A[off + 26] = A[off + 62] = A[off + 74] = A[off + 78] = t_xzzz
    A[off + 40] = t_yyyy
    A[off + 41] = A[off + 43] = A[off + 49] = A[off + 67] = t_yyyz
    A[off + 44] = A[off + 50] = A[off + 52] = A[off + 68] = A[off + 70] = A[off + 76] = t_yyzz
    A[off + 53] = A[off + 71] = A[off + 77] = A[off + 79] = t_yzzz
    A[off + 80] = t_zzzz


_traceless2 = njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")(
    traceless2_py)
_traceless3 = njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")(
    traceless3_py)
_traceless4 = njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")(
    traceless4_py)


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
            elif body_rank[b] == 3:
                _traceless3(A, body_offset[b])
            else:
                _traceless4(A, body_offset[b])
