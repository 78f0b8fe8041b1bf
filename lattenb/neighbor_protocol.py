"""The neighbour-list interface shared by the CPU and the GPU neighbour lists.

Two classes implement it:

* `lattenb.neighbors.NeighborCache`: CPU, a Verlet-skin cache around
  `lattenb.neighbors.neighbor_list` (host arrays; its older `get` also returns the arrays);
* `lattenb.cuda.neighbors.DeviceNeighborList`: GPU, built and kept on the device (padded rows;
  see `lattenb.cuda.kernels_neighbors`).

Both follow the same rules: the list is *full* (i->j and j->i), pairs carry integer image shifts
S so that ``v_ij = positions[j] + S @ cell - positions[i]`` with S referring to the positions of
the last build; it is built with radius ``cutoff + skin`` and reused until an atom has moved by
more than ``skin / 2`` since that build, or the number of atoms, the cell or pbc changed
(``skin = 0`` rebuilds on every update). Consumers must ignore pairs with ``|v_ij| >= cutoff``.

`NeighborList` below is a `typing.Protocol` (structural: neither class inherits from it;
``isinstance(obj, NeighborList)`` checks that the members exist). Members:

cutoff : float
    Å, the model cutoff the list serves.
skin : float
    Å, the Verlet skin (>= 0).
radius : float
    Å, the radius the list is built with: ``cutoff + skin`` (the GPU list adds a relative 1e-8 so
    that no pair on the boundary is lost to rounding).
n_builds : int
    Number of builds so far (rebuilds counted, reuses not).
update(positions, cell, pbc, force=False) -> bool
    Bring the list up to date for these positions (N, 3) Å, cell (3, 3) Å (rows are lattice
    vectors) and pbc (bool or 3 bools); rebuild when needed, or always with ``force=True``.
    Returns True when the list was rebuilt. NeighborCache takes host arrays; DeviceNeighborList
    takes a device array (or anything with ``__cuda_array_interface__``, or a host array, which
    it uploads) and host cell and pbc.
reset()
    Forget the list: the next `update` rebuilds.
to_host() -> (offsets, second, shifts)
    The current list on the host in the CSR form of `lattenb.neighbors.neighbor_list`: int64
    offsets (N+1,), second (P,), shifts (P, 3), pairs sorted by i (the order within a row may
    differ between the two implementations). NeighborCache returns its cached arrays (do not
    modify them); DeviceNeighborList copies from the device (for tests and inspection, not for
    every MD step). RuntimeError before the first `update`.
"""
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["NeighborList"]


@runtime_checkable
class NeighborList(Protocol):
    """A Verlet-skin full neighbour list; see the module docstring for the contract."""

    cutoff: float
    skin: float
    n_builds: int

    @property
    def radius(self) -> float:
        """Å, the radius the list is built with (cutoff + skin)."""
        ...

    def update(self, positions, cell, pbc, force: bool = False) -> bool:
        """Rebuild if needed (always with force); True when the list was rebuilt."""
        ...

    def reset(self) -> None:
        """Forget the list: the next `update` rebuilds."""
        ...

    def to_host(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offsets, second, shifts) of the current list, in CSR form on the host."""
        ...
