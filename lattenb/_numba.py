"""Compiler settings shared by every Numba kernel.

FASTMATH lets LLVM fuse multiply-adds and reassociate sums (vectorised reductions) but keeps NaN and
infinity semantics, which the input checks rely on (no 'nnan'/'ninf')."""
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}
