"""The GPU neighbour list of the CUDA backend: `DeviceNeighborList`.

It implements `lattenb.neighbor_protocol.NeighborList`, the interface it shares with the CPU
`lattenb.neighbors.NeighborCache` (cutoff, skin, radius, n_builds, update, reset, to_host), and
keeps the list on the device in the padded (ELL) layout the energy kernels read (see
`lattenb.cuda.kernels_neighbors`). Importing this module does not import ``numba.cuda``; creating
a `DeviceNeighborList` does (after `lattenb.cuda.probe.check_cuda`).
"""
import math

import numpy as np

from ..neighbors import _effective_cell
from .probe import check_cuda

__all__ = ["DeviceNeighborList"]


class DeviceNeighborList:
    """Full neighbour list built and kept on the GPU (padded rows, see
    `lattenb.cuda.kernels_neighbors`); implements `lattenb.neighbor_protocol.NeighborList`, the
    interface it shares with the CPU `lattenb.neighbors.NeighborCache`.

    Built with radius (cutoff + skin) and reused until an atom has moved more than skin / 2 since
    the build (checked on the GPU; one 8-byte copy to the host per step), or the number of atoms,
    the cell or pbc changed. skin = 0 rebuilds on every call. Any cutoff works, also one larger
    than half the cell or than the cell (then the list holds several images of an atom).

    Device arrays after `update`: nbr (N, cap) int32, shifts (N, cap, 3) int32, count (N,) int32,
    rev (N, cap) flat index of the reverse pair (or -1). Shifts refer to the positions of the
    last build, as with `lattenb.neighbors`.

    Raises RuntimeError (see `lattenb.cuda.probe.check_cuda`) when no CUDA target is usable.
    """

    def __init__(self, cutoff, skin=0.0):
        check_cuda()
        from . import kernels_neighbors
        self.ck = kernels_neighbors
        self.cuda = kernels_neighbors.cuda
        cutoff = float(cutoff)
        skin = float(skin)
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
        if not (math.isfinite(skin) and skin >= 0):
            raise ValueError(f"skin must be a non-negative finite number, got {skin!r}")
        self.cutoff = cutoff
        self.skin = skin
        self.radius = (cutoff + skin) * (1.0 + 1e-8)   # > cutoff: boundary pairs are never lost
        self.n_builds = 0
        self.n_atoms = -1
        self.cap = 0
        self.bin_cap = 0
        self._cell = None
        self._pbc = None
        self._flags_zero = np.zeros(2, np.int32)
        self._disp = None
        self._d_upload = None

    def reset(self):
        """Forget the list: the next `update` rebuilds (and reallocates)."""
        self.n_atoms = -1

    def update(self, positions, cell, pbc, force=False):
        """Rebuild if needed (always with force); returns True when the list was rebuilt.

        positions: (N, 3) device array (numba, or anything with __cuda_array_interface__) in Å,
        float64 recommended; a host array is uploaded. cell (3, 3) Å (None: no cell) and pbc
        (bool or 3 bools) are host values."""
        d_pos = self._device_positions(positions)
        cell = (np.zeros((3, 3)) if cell is None
                else np.ascontiguousarray(cell, dtype=np.float64))
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        n = d_pos.shape[0]
        rebuild = (force or self.skin == 0.0 or n != self.n_atoms
                   or not np.array_equal(cell, self._cell) or not np.array_equal(pbc, self._pbc))
        if not rebuild:
            ck = self.ck
            self._disp.copy_to_device(np.zeros(1))
            ck.max_displacement_kernel[ck.blocks_for(n, ck.RED_BLOCK), ck.RED_BLOCK](
                d_pos, self.ref, self._disp)
            rebuild = self._disp.copy_to_host()[0] > (0.5 * self.skin) ** 2
        if rebuild:
            self._build(d_pos, cell, pbc)
        return bool(rebuild)

    def _device_positions(self, positions):
        """positions as an (N, 3) device array (host arrays are uploaded to a kept buffer)."""
        if getattr(positions, "__cuda_ndarray__", False):          # numba device array
            return positions
        if hasattr(positions, "__cuda_array_interface__"):         # CuPy, PyTorch, ...
            return self.cuda.as_cuda_array(positions)
        host = np.ascontiguousarray(positions, dtype=np.float64)
        if host.ndim != 2 or host.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3), got {host.shape}")
        if self._d_upload is None or self._d_upload.shape != host.shape:
            self._d_upload = self.cuda.device_array(host.shape, np.float64)
        self._d_upload.copy_to_device(host)
        return self._d_upload

    def _alloc_atoms(self, n):
        cuda = self.cuda
        self.frac = cuda.device_array((n, 3), np.float64)
        self.rw = cuda.device_array((n, 3), np.float64)
        self.osh = cuda.device_array((n, 3), np.int32)
        self.bins3 = cuda.device_array((n, 3), np.int32)
        self.count = cuda.device_array(n, np.int32)
        self.ref = cuda.device_array((n, 3), np.float64)
        self._disp = cuda.device_array(1, np.float64)
        self._flags = cuda.device_array(2, np.int32)
        self.cap = 0
        self.n_atoms = n

    def _alloc_pairs(self, n, cap):
        cuda = self.cuda
        self.cap = int(cap)
        self.nbr = cuda.device_array((n, self.cap), np.int32)
        self.shifts = cuda.device_array((n, self.cap, 3), np.int32)
        self.rev = cuda.device_array((n, self.cap), np.int32 if n * self.cap < 2 ** 31 - 1
                                     else np.int64)

    def _build(self, d_pos, cell, pbc):
        cuda, ck = self.cuda, self.ck
        n = d_pos.shape[0]
        eff = _effective_cell(cell, pbc)        # ValueError for a singular periodic cell
        inv = np.linalg.inv(eff)
        if n != self.n_atoms:
            self._alloc_atoms(n)
        self._cell = cell.copy()
        self._pbc = pbc.copy()
        pbc_t = tuple(int(p) for p in pbc)
        height = 1.0 / np.sqrt(np.sum(inv * inv, axis=0))
        rc = self.radius
        rcs = rc * (1.0 + 1e-8)

        bbox = cuda.to_device(np.array([np.inf] * 3 + [-np.inf] * 3))
        d_eff = cuda.to_device(eff)
        ck.nl_wrap_kernel[ck.blocks_for(n, ck.RED_BLOCK), ck.RED_BLOCK](
            d_pos, cuda.to_device(inv), d_eff, pbc_t, self.frac, self.osh, self.rw, bbox)
        lo = np.zeros(3)
        extent = np.zeros(3)
        if not pbc.all():
            b = bbox.copy_to_host()
            lo = np.where(pbc, 0.0, b[:3])
            extent = np.where(pbc, 0.0, b[3:] - b[:3])
        nb = np.ones(3, np.int64)
        for d in range(3):
            if pbc[d]:
                extent[d] = height[d]
            nb[d] = max(1, int(extent[d] / rcs))
        limit = max(1000, 8 * n)              # O(N) bins, as on the CPU
        while int(np.prod(nb)) > limit:
            d = int(np.argmax(nb))
            nb[d] = max(1, nb[d] // 2)
        nsearch = np.ones(3, np.int64)
        scale = np.zeros(3)
        for d in range(3):
            if pbc[d]:
                if nb[d] == 1:
                    nsearch[d] = max(1, int(math.ceil(rcs / height[d])))
            elif nb[d] > 1:
                scale[d] = nb[d] / extent[d]
        n_bins = int(np.prod(nb))
        nb_t = tuple(int(x) for x in nb)
        ns_t = tuple(int(x) for x in nsearch)
        lo_t = tuple(float(x) for x in lo)
        scale_t = tuple(float(x) for x in scale)

        if self.cap == 0:
            vol = 1.0
            for d in range(3):
                vol *= height[d] if pbc[d] else max(extent[d], rc)
            density = n / max(vol, 1e-300)
            est = 1.3 * density * 4.0 / 3.0 * math.pi * rc ** 3 + 8
            self._alloc_pairs(n, int(min(max(est, 8), n * np.prod(2 * nsearch + 1))))
        if getattr(self, "n_bins", -1) != n_bins or self.bin_cap == 0:
            self.bin_cap = max(self.bin_cap, 2 * (n // n_bins) + 8)
            self._alloc_bins(n_bins)
        while True:
            self._flags.copy_to_device(self._flags_zero)
            ck.fill_i32_kernel[ck.blocks_for(n_bins), ck.BLOCK](self.bin_count, 0)
            ck.nl_bin_kernel[ck.blocks_for(n), ck.BLOCK](
                self.frac, pbc_t, nb_t, lo_t, scale_t, self.bins3, self.bin_count,
                self.bin_atoms, self._flags)
            ck.nl_sort_bins_kernel[ck.blocks_for(n_bins), ck.BLOCK](self.bin_count, self.bin_atoms)
            ck.nl_pairs_kernel[ck.blocks_for(n), ck.BLOCK](
                self.rw, self.osh, self.bins3, d_eff, pbc_t, nb_t, ns_t, rc * rc,
                self.bin_count, self.bin_atoms, self.nbr, self.shifts, self.count, self._flags)
            flags = self._flags.copy_to_host()
            if flags[0] > self.bin_cap:
                self.bin_cap = int(flags[0]) + 4
                self._alloc_bins(n_bins)
                continue
            if flags[1] > self.cap:
                self._alloc_pairs(n, int(flags[1]) + 4)
                continue
            break
        ck.nl_reverse_kernel[ck.blocks_for(n), ck.BLOCK](self.nbr, self.shifts, self.count,
                                                          self.rev)
        ck.copy_positions_kernel[ck.blocks_for(n), ck.BLOCK](d_pos, self.ref)
        self.n_builds += 1

    def _alloc_bins(self, n_bins):
        cuda = self.cuda
        self.n_bins = n_bins
        self.bin_count = cuda.device_array(n_bins, np.int32)
        self.bin_atoms = cuda.device_array((n_bins, self.bin_cap), np.int32)

    def to_host(self):
        """(offsets, second, shifts) in the CSR form of `lattenb.neighbors` (int64; for tests and
        inspection: it copies the list from the device). RuntimeError before the first update."""
        if self.n_atoms < 0:
            raise RuntimeError("no neighbour list yet: call update first")
        count = self.count.copy_to_host().astype(np.int64)
        nbr = self.nbr.copy_to_host()
        shifts = self.shifts.copy_to_host()
        offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
        mask = np.arange(self.cap)[None, :] < count[:, None]
        return offsets, nbr[mask].astype(np.int64), shifts[mask].astype(np.int64)
