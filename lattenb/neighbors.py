"""Cell-list neighbour list (Numba), O(N), full list with integer image shifts.

Conventions
-----------
* Lengths are in Å.
* ``cell`` is a (3, 3) array whose **rows** are the lattice vectors.
* The list is *full*: every pair appears twice, as i->j and as j->i
  (with opposite shifts).
* The list is stored in CSR form: the pairs of atom ``i`` are
  ``offsets[i]:offsets[i+1]`` of ``second`` (neighbour index ``j``) and
  ``shifts`` (integer image shift ``S``), so that the pair vector is::

      v_ij = positions[j] + S @ cell - positions[i]

  Shifts refer to the positions exactly as passed by the caller (they need not
  be wrapped into the cell); they are always 0 along non-periodic directions.
* Inclusion rule (same as ``ase.neighborlist.neighbor_list`` with
  ``self_interaction=False``): every (i, j, S) with ``|v_ij| < cutoff``
  (strict) except ``i == j`` with ``S == 0``.  Periodic images of an atom
  itself (``i == j``, ``S != 0``) are included when closer than the cutoff.
  Two *distinct* atoms sitting on top of each other (|v_ij| == 0) are kept,
  as in ASE.

Algorithm
---------
Positions are converted to fractional coordinates of an internal
"effective cell" whose periodic rows are the caller's lattice vectors and
whose non-periodic rows are unit vectors orthogonal to the periodic ones
(so the caller's non-periodic vectors may be zero or arbitrary).  Along
periodic directions the atoms are wrapped into [0, 1); along non-periodic
directions the bounding box of the atoms is used.  Atoms are counting-sorted
into a grid of bins whose plane spacing is >= cutoff (at least one bin per
direction; the bin count is capped at O(N) for sparse systems).  Each atom
scans the bins (and periodic images of bins) whose planes lie within the
cutoff of it along each lattice direction -- at most 3 per direction, or as
many images as needed when the cutoff exceeds the cell height.  Bins along
the third direction are contiguous in memory, so each (x, y, image) column is
scanned as one run.  The cost is O(N) for a fixed density and cutoff; pairs
are written in a single pass into buffers that grow geometrically.
"""

import math

import numpy as np
from numba import njit

from .validate import check_cutoff, check_structure

__all__ = ["neighbor_list", "pair_vectors", "first_indices", "NeighborCache"]

# Relative safety margin used for the bin size and the image search range, so
# that rounding in fractional coordinates can never lose a pair.
_SAFETY = 1e-8
# Relative tolerance on singular values of the periodic lattice vectors.
_SINGULAR_RTOL = 1e-10
# Refuse absurd cutoff / cell-height ratios instead of looping for ever.
_MAX_BINS_PER_ATOM = 1e8


# --------------------------------------------------------------------------
# Numba kernels
# --------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _scan_run(j0, j1, i, home, cx, cy, cz, tx, ty, tz, rc2, spos, sidx, osh,
              second, shifts, p, scratch):
    """Test the bin-sorted atoms j0:j1 against centre (cx, cy, cz) and append
    accepted pairs at position p.  Returns the new fill position.

    First a tight, branch-free loop stores candidate indices that pass the
    distance test (compaction), then a short loop converts them to
    (j, S) records; this avoids branch mispredictions in the hot loop."""
    q = 0
    for k in range(j0, j1):
        dx = spos[k, 0] - cx
        dy = spos[k, 1] - cy
        dz = spos[k, 2] - cz
        scratch[q] = k
        q += dx * dx + dy * dy + dz * dz < rc2
    w = p
    for t in range(q):
        j = sidx[scratch[t]]
        if home and j == i:
            continue
        second[w] = j
        shifts[w, 0] = tx - osh[j, 0]
        shifts[w, 1] = ty - osh[j, 1]
        shifts[w, 2] = tz - osh[j, 2]
        w += 1
    return w


@njit(cache=True)
def _search_atom(i, xb, rw, osh, cell, nb, rr, periodic, start, spos, sidx,
                 rc2, second, shifts, p, cap, scratch):
    """Append all neighbours of atom i at position p.

    Returns the new fill position, or -1 if the output arrays (capacity cap)
    might overflow; the caller then grows them and repeats atom i."""
    nbx = nb[0]
    nby = nb[1]
    nbz = nb[2]
    xi = rw[i, 0]
    yi = rw[i, 1]
    zi = rw[i, 2]
    # Global bin range per direction: every atom within the cutoff lies in a
    # bin whose index differs by at most rr (bin units) along each direction.
    lox = int(math.floor(xb[i, 0] - rr[0]))
    hix = int(math.floor(xb[i, 0] + rr[0]))
    loy = int(math.floor(xb[i, 1] - rr[1]))
    hiy = int(math.floor(xb[i, 1] + rr[1]))
    loz = int(math.floor(xb[i, 2] - rr[2]))
    hiz = int(math.floor(xb[i, 2] + rr[2]))
    if not periodic[0]:
        lox = max(lox, 0)
        hix = min(hix, nbx - 1)
    if not periodic[1]:
        loy = max(loy, 0)
        hiy = min(hiy, nby - 1)
    if periodic[2]:
        sz0 = loz // nbz
        sz1 = hiz // nbz
    else:
        loz = max(loz, 0)
        hiz = min(hiz, nbz - 1)
        sz0 = 0
        sz1 = 0
    for gx in range(lox, hix + 1):
        sx = gx // nbx              # image shift (floor division)
        lx = gx - sx * nbx          # bin inside the cell
        for gy in range(loy, hiy + 1):
            sy = gy // nby
            ly = gy - sy * nby
            base = (lx * nby + ly) * nbz
            ax = xi - (sx * cell[0, 0] + sy * cell[1, 0])
            ay = yi - (sx * cell[0, 1] + sy * cell[1, 1])
            az = zi - (sx * cell[0, 2] + sy * cell[1, 2])
            # bins along z are contiguous in memory: one run per z image
            for sz in range(sz0, sz1 + 1):
                za = max(loz - sz * nbz, 0)
                zb = min(hiz - sz * nbz, nbz - 1)
                j0 = start[base + za]
                j1 = start[base + zb + 1]
                if j0 >= j1:
                    continue
                if p + (j1 - j0) > cap:
                    return -1
                # v = r_j + S'@cell - r_i = spos_j - (r_i - S'@cell)
                p = _scan_run(j0, j1, i, sx == 0 and sy == 0 and sz == 0,
                              ax - sz * cell[2, 0], ay - sz * cell[2, 1],
                              az - sz * cell[2, 2],
                              sx + osh[i, 0], sy + osh[i, 1], sz + osh[i, 2],
                              rc2, spos, sidx, osh, second, shifts, p,
                              scratch)
    return p


@njit(cache=True)
def _cell_list_kernel(rw, xb, osh, cell, nb, rr, periodic, rc2, cap0):
    """Core O(N) cell-list search.

    rw       (N, 3) float64  wrapped Cartesian positions (Å)
    xb       (N, 3) float64  continuous bin coordinates (bin units, in [0, nb])
    osh      (N, 3) int64    integer wrap shift o_i, rw_i = r_i - o_i @ cell
    cell     (3, 3) float64  effective cell (rows); periodic rows = lattice vectors
    nb       (3,)   int64    bins per direction
    rr       (3,)   float64  cutoff in bin units per direction (with margin)
    periodic (3,)   bool
    rc2      float           cutoff squared (Å^2)
    cap0     int             initial capacity of the pair arrays

    Returns offsets (N+1,), second (P,), shifts (P, 3) with shifts relative to
    the unwrapped positions: S = S' + o_i - o_j.
    """
    n_atoms = rw.shape[0]
    nbx = nb[0]
    nby = nb[1]
    nbz = nb[2]
    nbins = nbx * nby * nbz

    # --- counting sort of atoms into bins (z fastest) ------------------------
    lin = np.empty(n_atoms, np.int64)
    start = np.zeros(nbins + 1, np.int64)
    for i in range(n_atoms):
        bx = min(max(int(math.floor(xb[i, 0])), 0), nbx - 1)
        by = min(max(int(math.floor(xb[i, 1])), 0), nby - 1)
        bz = min(max(int(math.floor(xb[i, 2])), 0), nbz - 1)
        b = (bx * nby + by) * nbz + bz
        lin[i] = b
        start[b + 1] += 1
    for b in range(nbins):
        start[b + 1] += start[b]
    fill = start[:nbins].copy()
    spos = np.empty((n_atoms, 3), np.float64)
    sidx = np.empty(n_atoms, np.int64)
    for i in range(n_atoms):
        b = lin[i]
        k = fill[b]
        fill[b] = k + 1
        spos[k, 0] = rw[i, 0]
        spos[k, 1] = rw[i, 1]
        spos[k, 2] = rw[i, 2]
        sidx[k] = i

    # --- pair search: one pass, output grows geometrically when needed -------
    cap = max(cap0, 16)
    second = np.empty(cap, np.int64)
    shifts = np.empty((cap, 3), np.int64)
    offsets = np.zeros(n_atoms + 1, np.int64)
    scratch = np.empty(n_atoms, np.int64)   # candidate indices of one run
    p = 0
    i = 0
    while i < n_atoms:
        q = _search_atom(i, xb, rw, osh, cell, nb, rr, periodic, start, spos,
                         sidx, rc2, second, shifts, p, cap, scratch)
        if q < 0:  # capacity exceeded: grow and redo atom i
            newcap = 2 * cap
            s2 = np.empty(newcap, np.int64)
            h2 = np.empty((newcap, 3), np.int64)
            s2[:p] = second[:p]
            h2[:p] = shifts[:p]
            second = s2
            shifts = h2
            cap = newcap
            continue
        p = q
        offsets[i + 1] = p
        i += 1
    if 2 * p < cap:
        # large over-estimate: return compact copies
        return offsets, second[:p].copy(), shifts[:p].copy()
    # otherwise return views: the untouched tail of the buffers is never
    # written (so costs no physical memory when freshly mapped), and we save
    # a copy plus the page faults of fresh output arrays
    return offsets, second[:p], shifts[:p]


@njit(cache=True)
def pair_vectors(positions, cell, offsets, second, shifts):
    """Pair vectors of a CSR neighbour list.

    Parameters
    ----------
    positions : (N, 3) float64, Å (the same positions passed to ``neighbor_list``)
    cell      : (3, 3) float64, Å, rows are lattice vectors
    offsets   : (N+1,) int64 CSR row pointers
    second    : (P,) int64 neighbour index j
    shifts    : (P, 3) int64 image shifts S

    Returns
    -------
    (P, 3) float64 array, Å: ``v_ij = r_j + S_ij @ cell - r_i``.
    """
    n_atoms = offsets.shape[0] - 1
    npairs = second.shape[0]
    out = np.empty((npairs, 3), np.float64)
    for i in range(n_atoms):
        xi = positions[i, 0]
        yi = positions[i, 1]
        zi = positions[i, 2]
        for p in range(offsets[i], offsets[i + 1]):
            j = second[p]
            s0 = shifts[p, 0]
            s1 = shifts[p, 1]
            s2 = shifts[p, 2]
            for d in range(3):
                out[p, d] = (positions[j, d] + s0 * cell[0, d] + s1 * cell[1, d]
                             + s2 * cell[2, d])
            out[p, 0] -= xi
            out[p, 1] -= yi
            out[p, 2] -= zi
    return out


@njit(cache=True)
def first_indices(offsets):
    """Expand CSR row pointers to the first index of every pair.

    offsets : (N+1,) int64 CSR row pointers.
    Returns (P,) int64 array ``i`` with ``i[p]`` the central atom of pair p
    (P = offsets[-1]); equivalent to ``np.repeat(arange(N), diff(offsets))``.
    """
    n_atoms = offsets.shape[0] - 1
    out = np.empty(offsets[n_atoms], np.int64)
    for i in range(n_atoms):
        for p in range(offsets[i], offsets[i + 1]):
            out[p] = i
    return out


# --------------------------------------------------------------------------
# Python front end (validation + O(N) vectorised set-up)
# --------------------------------------------------------------------------
def _validate(positions, cell, pbc, cutoff):
    """(positions, cell, pbc, cutoff) checked and converted (see `lattenb.validate`)."""
    positions, cell, pbc = check_structure(positions, cell, pbc)
    return positions, cell, pbc, check_cutoff(cutoff)


def _effective_cell(cell, pbc):
    """Effective cell: periodic rows copied, non-periodic rows replaced by unit
    vectors orthonormal to the periodic ones (and to each other)."""
    per = np.flatnonzero(pbc)
    nper = len(per)
    if nper > 0:
        pvec = cell[per]
        sv = np.linalg.svd(pvec, compute_uv=False)
        if sv[0] == 0.0 or sv[-1] <= _SINGULAR_RTOL * sv[0]:
            names = "".join("abc"[d] for d in per)
            raise ValueError(
                f"cell is singular along periodic directions {per.tolist()} "
                f"(vectors {names}): the periodic lattice vectors are zero or "
                f"linearly dependent (singular values {sv.tolist()})")
    eff = np.empty((3, 3), np.float64)
    if nper == 3:
        eff[:] = cell
        return eff
    if nper == 0:
        comp = np.eye(3)
    else:
        _, _, vt = np.linalg.svd(cell[per], full_matrices=True)
        comp = vt[nper:]
    eff[per] = cell[per]
    eff[np.flatnonzero(~pbc)] = comp
    return eff


def _prepare(positions, cell, pbc, cutoff):
    """Vectorised O(N) set-up of the kernel inputs."""
    n_atoms = positions.shape[0]
    eff = _effective_cell(cell, pbc)
    inv = np.linalg.inv(eff)
    frac = positions @ inv                      # (N, 3)
    osh = np.zeros((n_atoms, 3), np.int64)
    rcs = cutoff * (1.0 + _SAFETY)
    # plane spacing of the effective cell = 1 / column norms of inv(eff)
    height = 1.0 / np.sqrt(np.sum(inv * inv, axis=0))
    nb = np.ones(3, np.int64)
    extent = np.zeros(3)
    lo = np.zeros(3)
    for d in range(3):
        if pbc[d]:
            o = np.floor(frac[:, d])
            osh[:, d] = o.astype(np.int64)
            frac[:, d] -= o                     # wrapped into [0, 1]
            extent[d] = height[d]
        else:
            # non-periodic rows are orthonormal: frac is a length in Å
            lo[d] = frac[:, d].min()
            extent[d] = frac[:, d].max() - lo[d]
        # bin spacing >= cutoff (float min() avoids int64 overflow)
        nb[d] = max(1, int(min(extent[d] / rcs, 1e9)))
    # Keep the number of bins O(N) (sparse systems, huge cells); larger bins
    # stay correct because the search range is derived from the final size.
    limit = max(1000, 8 * n_atoms)
    while math.prod(int(x) for x in nb) > limit:
        d = int(np.argmax(nb))
        nb[d] = max(1, nb[d] // 2)
    xb = np.empty((n_atoms, 3), np.float64)
    rr = np.zeros(3, np.float64)
    for d in range(3):
        if pbc[d]:
            xb[:, d] = frac[:, d] * nb[d]
            rr[d] = rcs * nb[d] / height[d]
        elif nb[d] > 1:
            xb[:, d] = (frac[:, d] - lo[d]) * (nb[d] / extent[d])
            rr[d] = rcs * nb[d] / extent[d]
        else:
            xb[:, d] = 0.0                      # one bin, nothing to search
    n_visit = math.prod(2.0 * rr[d] + 2.0 for d in range(3) if pbc[d])
    if n_visit > _MAX_BINS_PER_ATOM:
        raise ValueError(
            f"cutoff {cutoff:g} Å is too large for this cell (perpendicular "
            f"heights {[float(f'{h:.3g}') for h in height[pbc]]} Å along the periodic "
            f"directions): about {n_visit:.3g} bin images would be searched "
            f"per atom")
    rw = positions - osh @ eff if np.any(osh) else positions
    # initial capacity: mean density times sphere volume (grows if needed)
    vol = 1.0
    for d in range(3):
        vol *= height[d] if pbc[d] else max(extent[d], cutoff)
    est = 1.15 * n_atoms * (n_atoms / vol) * (4.0 / 3.0) * math.pi * cutoff ** 3
    cap0 = int(min(est + n_atoms + 16, 2.0 ** 22))
    return rw, xb, osh, eff, nb, rr, cap0


def neighbor_list(positions, cell, pbc, cutoff):
    """Full neighbour list with a cell list (O(N)).

    Parameters
    ----------
    positions : (N, 3) array_like of float, Å.  Need not lie inside the cell.
    cell      : (3, 3) array_like of float, Å; rows are the lattice vectors.
                Rows along non-periodic directions are ignored (they may be
                zero, e.g. ``cell = zeros((3, 3))`` for a molecule).
    pbc       : (3,) array_like of bool (a single bool is broadcast).
    cutoff    : float, Å, > 0.

    Returns
    -------
    offsets : (N+1,) int64 CSR row pointers; pairs of atom i are
              ``offsets[i]:offsets[i+1]``.
    second  : (P,) int64 neighbour index j.
    shifts  : (P, 3) int64 integer image shift S so that the pair vector is
              ``v_ij = positions[j] + S @ cell - positions[i]`` (zero along
              non-periodic directions).

    All pairs with ``|v_ij| < cutoff`` (strict, like ASE) are included; only
    ``i == j`` with ``S == 0`` is excluded.  Pairs are sorted by i and the
    order is deterministic.

    Raises
    ------
    ValueError for malformed shapes, non-finite positions or cell, a cell
    that is singular along the periodic directions, a cutoff that is not
    positive and finite, or a cutoff so much larger than a (nearly flat)
    periodic cell that more than ~1e8 bin images per atom would be needed.
    """
    positions, cell, pbc, cutoff = _validate(positions, cell, pbc, cutoff)
    n_atoms = positions.shape[0]
    if n_atoms == 0:
        # still validate the periodic cell for consistency
        _effective_cell(cell, pbc)
        return (np.zeros(1, np.int64), np.zeros(0, np.int64),
                np.zeros((0, 3), np.int64))
    rw, xb, osh, eff, nb, rr, cap0 = _prepare(positions, cell, pbc, cutoff)
    return _cell_list_kernel(rw, xb, osh, eff, nb, rr, pbc, cutoff * cutoff, cap0)


class NeighborCache:
    """Verlet-skin cache around :func:`neighbor_list`.

    The list is built with radius ``cutoff + skin`` and reused until any atom
    has moved by more than ``skin / 2`` (Å) since the last build, or the number
    of atoms, the cell or pbc changed.  This guarantees that every pair closer
    than ``cutoff`` at the current positions is in the cached list.

    Notes
    -----
    * The returned list may contain pairs with distance up to
      ``cutoff + skin``; consumers must ignore pairs with ``|v_ij| >= cutoff``
      (compute the vectors with :func:`pair_vectors` on the *current*
      positions).
    * Shifts refer to the unwrapped positions passed at build time; if the
      caller wraps atoms back into the cell, the displacement looks large and
      the list is rebuilt automatically, so results stay correct.
    * The returned arrays are shared between calls; do not modify them.

    Parameters
    ----------
    cutoff : float, Å, > 0
    skin   : float, Å, >= 0 (default 0.5)
    """

    def __init__(self, cutoff, skin=0.5):
        cutoff = float(cutoff)
        skin = float(skin)
        if not (math.isfinite(cutoff) and cutoff > 0.0):
            raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
        if not (math.isfinite(skin) and skin >= 0.0):
            raise ValueError(f"skin must be a non-negative finite number, got {skin!r}")
        self.cutoff = cutoff
        self.skin = skin
        self.n_builds = 0
        self.reset()

    def reset(self):
        """Forget the cached list (the next :meth:`get` rebuilds)."""
        self._ref_positions = None
        self._cell = None
        self._pbc = None
        self._result = None

    def _needs_rebuild(self, positions, cell, pbc):
        if self._result is None:
            return True
        if positions.shape != self._ref_positions.shape:
            return True
        if not np.array_equal(cell, self._cell) or not np.array_equal(pbc, self._pbc):
            return True
        disp = positions - self._ref_positions
        max_d2 = float(np.max(np.einsum("ij,ij->i", disp, disp))) if len(disp) else 0.0
        return max_d2 > (0.5 * self.skin) ** 2

    def get(self, positions, cell, pbc):
        """Return ``(offsets, second, shifts, rebuilt)``.

        positions (N, 3) Å, cell (3, 3) Å (rows), pbc (3,) bool.  ``rebuilt``
        is True when a new list was built with radius ``cutoff + skin``.
        """
        positions, cell, pbc, _ = _validate(positions, cell, pbc, self.cutoff)
        if not self._needs_rebuild(positions, cell, pbc):
            return (*self._result, False)
        result = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
        self._ref_positions = positions.copy()
        self._cell = cell.copy()
        self._pbc = pbc.copy()
        self._result = result
        self.n_builds += 1
        return (*result, True)

    # -- lattenb.neighbor_protocol.NeighborList, shared with the GPU DeviceNeighborList
    @property
    def radius(self):
        """Radius the list is built with (Å): ``cutoff + skin``."""
        return self.cutoff + self.skin

    def update(self, positions, cell, pbc, force=False):
        """Rebuild the list if needed (always if ``force``); True when it was rebuilt.
        Same as ``get(positions, cell, pbc)[3]``."""
        if force:
            self.reset()
        return self.get(positions, cell, pbc)[3]

    def to_host(self):
        """``(offsets, second, shifts)`` of the current list (shared arrays: do not modify)."""
        if self._result is None:
            raise RuntimeError("no neighbour list yet: call update (or get) first")
        return self._result
