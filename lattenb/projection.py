"""Projections: fixed linear maps applied to body tensors between the moments and the contraction
(design page, §3), e.g. the symmetric traceless part of a body (Allen et al.'s irreducible
tensors). Each body has a code (`blocks.DescriptorLayout.body_projection`); code 0 is the raw
tensor, the only one so far.

The kernel drivers (`lattenb.kernels`) call `project` on A (and on its tangent Adot in training)
right after the moments, and its adjoint on Abar (and Adotbar) right before the reverse passes to
the pairs, so a new projection is one more code here: its forward map and its transpose, both in
place on the body's slice A[off:off + 3^p]. The reverse passes read only the
symmetric part of Abar, so a projection's adjoint need not symmetrise.
"""
from numba import njit

from ._numba import FASTMATH

#: projection codes: name -> code
PROJECTIONS = {"none": 0}


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
    body (A (M,), a per-atom moment vector or its adjoint)."""
    for b in range(body_projection.shape[0]):
        code = body_projection[b]
        if code == 0:
            continue
        raise ValueError("unknown body projection code")
