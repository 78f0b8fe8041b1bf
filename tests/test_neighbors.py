"""Tests for lattenb.neighbors against ase.neighborlist.neighbor_list."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from lattenb import neighbors as nbmod
from lattenb.neighbors import (NeighborCache, first_indices, neighbor_list,
                               pair_vectors)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _ours(positions, cell, pbc, cutoff):
    """Our list as a dict {(i, j, S0, S1, S2): vector} plus raw arrays."""
    offsets, second, shifts = neighbor_list(positions, cell, pbc, cutoff)
    vec = pair_vectors(np.asarray(positions, float), np.asarray(cell, float),
                       offsets, second, shifts)
    first = first_indices(offsets)
    keys = list(zip(first.tolist(), second.tolist(), *shifts.T.tolist()))
    assert len(set(keys)) == len(keys), "duplicate pairs"
    return dict(zip(keys, vec)), (offsets, second, shifts)


def _ase(positions, cell, pbc, cutoff):
    atoms = Atoms("H%d" % len(positions), positions=positions, cell=cell, pbc=pbc)
    i, j, S, D = ase_neighbor_list("ijSD", atoms, cutoff, self_interaction=False)
    keys = list(zip(i.tolist(), j.tolist(), *S.T.tolist()))
    return dict(zip(keys, D))


def _check_structure(arrays, n_atoms, pbc):
    offsets, second, shifts = arrays
    assert offsets.dtype == np.int64 and second.dtype == np.int64
    assert shifts.dtype == np.int64
    assert offsets.shape == (n_atoms + 1,)
    assert second.shape == (offsets[-1],)
    assert shifts.shape == (offsets[-1], 3)
    assert offsets[0] == 0 and np.all(np.diff(offsets) >= 0)
    if len(second):
        assert second.min() >= 0 and second.max() < n_atoms
    # no shifts along non-periodic directions
    for d in range(3):
        if not pbc[d]:
            assert np.all(shifts[:, d] == 0)


def _compare(positions, cell, pbc, cutoff):
    positions = np.asarray(positions, float)
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    ours, arrays = _ours(positions, cell, pbc, cutoff)
    ref = _ase(positions, cell, pbc, cutoff)
    _check_structure(arrays, len(positions), pbc)
    assert set(ours) == set(ref), (
        f"{len(set(ours) - set(ref))} extra, {len(set(ref) - set(ours))} missing")
    if ref:
        keys = list(ref)
        v_ours = np.array([ours[k] for k in keys])
        v_ref = np.array([ref[k] for k in keys])
        np.testing.assert_allclose(v_ours, v_ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(np.linalg.norm(v_ours, axis=1),
                                   np.linalg.norm(v_ref, axis=1), rtol=0, atol=1e-10)
        # full list: every i->j,S has j->i,-S
        for (i, j, s0, s1, s2) in keys:
            assert (j, i, -s0, -s1, -s2) in ours
    # all distances below the cutoff, self pair excluded
    for (i, j, s0, s1, s2), v in ours.items():
        assert np.linalg.norm(v) < cutoff
        assert not (i == j and s0 == s1 == s2 == 0)
    return ours, arrays


# ---------------------------------------------------------------------------
# random systems
# ---------------------------------------------------------------------------
KINDS = ["orthorhombic", "triclinic", "skewed", "one_atom", "cutoff_gt_cell",
         "mixed_TFT", "mixed_random", "cluster_zero_cell", "slab_zero_c",
         "wire_zero_bc"]
N_RANDOM = 40


def _random_system(seed):
    rng = np.random.default_rng(1000 + seed)
    kind = KINDS[seed % len(KINDS)]
    pbc = np.array([True, True, True])
    if kind == "orthorhombic":
        cell = np.diag(rng.uniform(4.0, 11.0, 3))
        n = int(rng.integers(1, 60))
        cutoff = rng.uniform(2.0, 6.0)
    elif kind == "triclinic":
        cell = np.diag(rng.uniform(4.0, 9.0, 3)) + rng.uniform(-2.5, 2.5, (3, 3))
        n = int(rng.integers(2, 50))
        cutoff = rng.uniform(2.0, 5.5)
    elif kind == "skewed":
        # strongly tilted: off-diagonal components larger than the diagonal
        la, lb, lc = rng.uniform(3.0, 6.0, 3)
        cell = np.array([[la, 0.0, 0.0],
                         [rng.uniform(1.5, 3.5) * la * rng.choice([-1, 1]), lb, 0.0],
                         [rng.uniform(1.0, 3.0) * la * rng.choice([-1, 1]),
                          rng.uniform(1.0, 2.5) * lb * rng.choice([-1, 1]), lc]])
        cell = cell @ _random_rotation(rng)
        n = int(rng.integers(1, 25))
        cutoff = rng.uniform(2.5, 6.0)
    elif kind == "one_atom":
        cell = np.diag(rng.uniform(1.8, 3.5, 3)) + rng.uniform(-0.6, 0.6, (3, 3))
        n = 1
        cutoff = rng.uniform(2.5, 7.0)
    elif kind == "cutoff_gt_cell":
        cell = np.diag(rng.uniform(2.5, 4.0, 3)) + rng.uniform(-1.0, 1.0, (3, 3))
        n = int(rng.integers(2, 6))
        cutoff = rng.uniform(1.5, 2.5) * np.abs(np.linalg.det(cell)) ** (1 / 3)
    elif kind == "mixed_TFT":
        cell = np.diag(rng.uniform(4.0, 9.0, 3)) + rng.uniform(-2.0, 2.0, (3, 3))
        pbc = np.array([True, False, True])
        n = int(rng.integers(2, 50))
        cutoff = rng.uniform(2.0, 6.0)
    elif kind == "mixed_random":
        cell = np.diag(rng.uniform(3.0, 8.0, 3)) + rng.uniform(-2.0, 2.0, (3, 3))
        pbc = rng.random(3) < 0.5
        if pbc.all() or not pbc.any():
            pbc = np.array([False, True, True])
        n = int(rng.integers(1, 40))
        cutoff = rng.uniform(2.0, 8.0)
    elif kind == "cluster_zero_cell":
        cell = np.zeros((3, 3))
        pbc = np.array([False, False, False])
        n = int(rng.integers(1, 60))
        cutoff = rng.uniform(1.5, 6.0)
        pos = rng.uniform(-6.0, 6.0, (n, 3)) * rng.uniform(0.2, 1.5, 3) + 10.0
        return kind, pos, cell, pbc, cutoff
    elif kind == "slab_zero_c":
        cell = np.diag(rng.uniform(3.0, 7.0, 3)) + rng.uniform(-1.5, 1.5, (3, 3))
        cell[2] = 0.0
        pbc = np.array([True, True, False])
        n = int(rng.integers(1, 40))
        cutoff = rng.uniform(2.0, 7.0)
        frac = rng.uniform(-0.5, 1.5, (n, 2))
        normal = _unit(np.cross(cell[0], cell[1]))
        pos = frac @ cell[:2] + np.outer(rng.uniform(-8.0, 8.0, n), normal)
        return kind, pos, cell, pbc, cutoff
    elif kind == "wire_zero_bc":
        a = rng.uniform(2.0, 5.0) * _unit(rng.normal(size=3))
        cell = np.zeros((3, 3))
        cell[0] = a
        pbc = np.array([True, False, False])
        n = int(rng.integers(1, 30))
        cutoff = rng.uniform(2.0, 8.0)
        pos = rng.uniform(-5.0, 5.0, (n, 3))
        return kind, pos, cell, pbc, cutoff
    else:  # pragma: no cover
        raise AssertionError(kind)
    # fractional coordinates partly outside [0, 1): shifts must refer to the
    # unwrapped positions
    frac = rng.uniform(-0.7, 1.7, (n, 3))
    pos = frac @ cell
    return kind, pos, cell, pbc, cutoff


def _unit(v):
    return v / np.linalg.norm(v)


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_random_systems_match_ase(seed):
    kind, pos, cell, pbc, cutoff = _random_system(seed)
    _compare(pos, cell, pbc, cutoff)


def test_random_kinds_cover_requirements():
    kinds = {_random_system(s)[0] for s in range(N_RANDOM)}
    assert kinds == set(KINDS)
    assert N_RANDOM >= 20


def test_fcc_copper_rattled():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 3))
    atoms.rattle(0.1, seed=3)
    ours, arrays = _compare(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    # ~42 neighbours per atom at 5 Å
    assert 38 <= len(ours) / len(atoms) <= 46


def test_fcc_primitive_one_atom_many_images():
    atoms = bulk("Cu", "fcc", a=3.61)  # primitive, 1 atom, strongly non-orthogonal
    _, arrays = _compare(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    offsets, second, shifts = arrays
    assert np.all(second == 0)  # only images of itself
    assert offsets[-1] == 42    # 12 + 6 + 24 neighbours below 5 Å


def test_simple_cubic_single_atom_shells():
    cell = np.eye(3) * 2.5
    pos = np.array([[0.3, -0.2, 7.1]])  # outside the cell on purpose
    for cutoff, expected in [(2.4, 0), (2.6, 6), (3.6, 18), (4.4, 26)]:
        offsets, second, shifts = neighbor_list(pos, cell, True, cutoff)
        assert offsets.tolist() == [0, expected]
        if expected:
            v = pair_vectors(pos, cell, offsets, second, shifts)
            assert np.all(np.linalg.norm(v, axis=1) < cutoff)


def test_huge_sparse_cell_caps_bins():
    # tiny cutoff in a huge cell: the bin grid must stay O(N)
    rng = np.random.default_rng(7)
    cell = np.diag([290.0, 310.0, 330.0])   # ~600**3 bins without the cap
    pos = rng.uniform(0, 1, (30, 3)) @ cell
    pos[1] = pos[0] + [0.3, 0.1, 0.0]
    pos[2] = pos[0] + [-0.2, 0.0, 0.2]
    pos[3] = [0.05, 0.05, 0.05]
    pos[4] = [289.9, 309.9, 329.9]      # neighbour of 3 across the corner
    ours, _ = _compare(pos, cell, [True, True, True], 0.5)
    assert (3, 4, -1, -1, -1) in ours
    nb = nbmod._prepare(*nbmod._validate(pos, cell, True, 0.5))[4]
    assert np.prod(nb) <= 1000


def test_output_growth_path_matches():
    rng = np.random.default_rng(11)
    # two dense clumps far apart: the density-based capacity estimate is low
    pos = np.concatenate([rng.normal(0, 0.8, (40, 3)),
                          rng.normal(0, 0.8, (40, 3)) + 30.0])
    cell = np.zeros((3, 3))
    pbc = np.array([False] * 3)
    p, c, b, rc = nbmod._validate(pos, cell, pbc, 3.0)
    rw, xb, osh, eff, nb, rr, cap0 = nbmod._prepare(p, c, b, rc)
    small = nbmod._cell_list_kernel(rw, xb, osh, eff, nb, rr, b, rc * rc, 1)
    normal = neighbor_list(pos, cell, pbc, 3.0)
    for x, y in zip(small, normal):
        np.testing.assert_array_equal(x, y)
    _compare(pos, cell, pbc, 3.0)


def test_deterministic_and_sorted():
    kind, pos, cell, pbc, cutoff = _random_system(1)
    a = neighbor_list(pos, cell, pbc, cutoff)
    b = neighbor_list(pos.copy(), cell.copy(), pbc.copy(), cutoff)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert np.all(np.diff(first_indices(a[0])) >= 0)


def test_first_indices():
    offsets = np.array([0, 2, 2, 5, 6], dtype=np.int64)
    np.testing.assert_array_equal(first_indices(offsets), [0, 0, 2, 2, 2, 3])


def test_duplicate_atoms_kept_like_ase():
    pos = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    _compare(pos, np.zeros((3, 3)), False, 1.5)


# ---------------------------------------------------------------------------
# edge cases and validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("pbc", [True, False, [True, False, True]])
def test_empty_system(pbc):
    cell = np.eye(3) * 5.0
    offsets, second, shifts = neighbor_list(np.zeros((0, 3)), cell, pbc, 3.0)
    assert offsets.tolist() == [0]
    assert second.shape == (0,) and shifts.shape == (0, 3)
    assert offsets.dtype == second.dtype == shifts.dtype == np.int64
    v = pair_vectors(np.zeros((0, 3)), cell, offsets, second, shifts)
    assert v.shape == (0, 3)


def test_nan_positions_raise():
    pos = np.array([[0.0, 0.0, 0.0], [np.nan, 1.0, 1.0]])
    with pytest.raises(ValueError, match="positions contain NaN or infinite values"):
        neighbor_list(pos, np.eye(3) * 5, True, 2.0)
    pos[1, 0] = np.inf
    with pytest.raises(ValueError, match="positions contain NaN or infinite values"):
        neighbor_list(pos, np.eye(3) * 5, True, 2.0)


def test_singular_periodic_cell_raises():
    cell = np.array([[3.0, 0, 0], [0, 3.0, 0], [3.0, 3.0, 0]])  # c = a + b
    pos = np.zeros((2, 3))
    with pytest.raises(ValueError, match="cell is singular along periodic directions"):
        neighbor_list(pos, cell, True, 2.0)
    # zero vector along a periodic direction
    with pytest.raises(ValueError, match="cell is singular along periodic directions"):
        neighbor_list(pos, np.diag([3.0, 3.0, 0.0]), [True, True, True], 2.0)
    # ... but fine when that direction is not periodic
    neighbor_list(pos, np.diag([3.0, 3.0, 0.0]), [True, True, False], 2.0)
    # and a fully zero cell is fine for a molecule
    neighbor_list(pos, np.zeros((3, 3)), False, 2.0)


def test_nearly_flat_cell_with_large_cutoff_raises():
    cell = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 1e-7]])
    with pytest.raises(ValueError, match="cutoff 5 Å is too large for this cell"):
        neighbor_list(np.zeros((1, 3)), cell, True, 5.0)


@pytest.mark.parametrize("cutoff", [-1.0, 0.0, np.nan, np.inf, "abc"])
def test_bad_cutoff_raises(cutoff):
    with pytest.raises(ValueError, match="cutoff must be a positive finite number"):
        neighbor_list(np.zeros((1, 3)), np.eye(3), True, cutoff)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 3\)"):
        neighbor_list(np.zeros((4, 2)), np.eye(3), True, 2.0)
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 3\)"):
        neighbor_list(np.zeros(3), np.eye(3), True, 2.0)
    with pytest.raises(ValueError, match=r"cell must have shape \(3, 3\)"):
        neighbor_list(np.zeros((4, 3)), np.eye(2), True, 2.0)
    with pytest.raises(ValueError, match="cell contains NaN or infinite values"):
        neighbor_list(np.zeros((4, 3)), np.full((3, 3), np.nan), True, 2.0)
    with pytest.raises(ValueError, match="pbc must be"):
        neighbor_list(np.zeros((4, 3)), np.eye(3), [True, False], 2.0)


# ---------------------------------------------------------------------------
# NeighborCache
# ---------------------------------------------------------------------------
def _within(positions, cell, offsets, second, shifts, cutoff):
    v = pair_vectors(positions, cell, offsets, second, shifts)
    d = np.linalg.norm(v, axis=1)
    first = first_indices(offsets)
    keep = d < cutoff
    keys = zip(first[keep].tolist(), second[keep].tolist(),
               *shifts[keep].T.tolist())
    return dict(zip(keys, d[keep]))


def _assert_cache_consistent(cache, pos, cell, pbc, res):
    offsets, second, shifts, _ = res
    got = _within(pos, cell, offsets, second, shifts, cache.cutoff)
    fresh = _ours(pos, cell, pbc, cache.cutoff)[0]
    assert set(got) == set(fresh)
    for k, d in got.items():
        assert abs(d - np.linalg.norm(fresh[k])) < 1e-10


def test_neighbor_cache_reuse_and_rebuild():
    rng = np.random.default_rng(5)
    cell = np.array([[8.0, 0.0, 0.0], [1.5, 7.5, 0.0], [-1.0, 0.8, 8.2]])
    pbc = np.array([True, True, True])
    pos0 = rng.uniform(0, 1, (60, 3)) @ cell
    cutoff, skin = 3.5, 0.6
    cache = NeighborCache(cutoff, skin=skin)

    res = cache.get(pos0, cell, pbc)
    assert res[3] is True and cache.n_builds == 1
    # the cached list is built with cutoff + skin
    assert set(_ours(pos0, cell, pbc, cutoff + skin)[0]) == set(
        _within(pos0, cell, *res[:3], np.inf))
    _assert_cache_consistent(cache, pos0, cell, pbc, res)

    # small moves (< skin/2 for every atom): reuse, still exact within cutoff
    def move(pos, max_disp, rng):
        d = rng.normal(size=pos.shape)
        d *= (max_disp * rng.uniform(0.5, 1.0, (len(pos), 1))
              / np.linalg.norm(d, axis=1, keepdims=True))
        return pos + d

    pos1 = move(pos0, 0.29, rng)
    res1 = cache.get(pos1, cell, pbc)
    assert res1[3] is False and cache.n_builds == 1
    assert res1[1] is res[1]
    _assert_cache_consistent(cache, pos1, cell, pbc, res1)

    # displacement is measured from the last build, not the last call
    pos2 = pos0.copy()
    pos2[7] += [0.0, 0.0, 0.28]
    assert cache.get(pos2, cell, pbc)[3] is False
    pos3 = pos0.copy()
    pos3[7] += [0.0, 0.0, 0.31]     # > skin / 2 = 0.3
    res3 = cache.get(pos3, cell, pbc)
    assert res3[3] is True and cache.n_builds == 2
    _assert_cache_consistent(cache, pos3, cell, pbc, res3)

    # larger random move -> rebuild
    pos4 = move(pos3, 0.5, rng)
    res4 = cache.get(pos4, cell, pbc)
    assert res4[3] is True
    _assert_cache_consistent(cache, pos4, cell, pbc, res4)

    # wrapping atoms back into the cell looks like a big move -> rebuild, correct
    frac = np.linalg.solve(cell.T, pos4.T).T
    pos5 = (frac % 1.0) @ cell
    res5 = cache.get(pos5, cell, pbc)
    assert res5[3] is True
    _assert_cache_consistent(cache, pos5, cell, pbc, res5)

    # cell, pbc or N changes -> rebuild
    cell6 = cell * 1.01
    res6 = cache.get(pos5, cell6, pbc)
    assert res6[3] is True
    _assert_cache_consistent(cache, pos5, cell6, pbc, res6)
    pbc7 = np.array([True, False, True])
    res7 = cache.get(pos5, cell6, pbc7)
    assert res7[3] is True
    _assert_cache_consistent(cache, pos5, cell6, pbc7, res7)
    res8 = cache.get(pos5[:-1], cell6, pbc7)
    assert res8[3] is True and res8[0].shape == (len(pos5),)
    _assert_cache_consistent(cache, pos5[:-1], cell6, pbc7, res8)
    assert cache.get(pos5[:-1], cell6, pbc7)[3] is False


def test_neighbor_cache_md_like_trajectory():
    """Many small steps: every returned list is exact within the cutoff."""
    rng = np.random.default_rng(9)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    pos = atoms.positions.copy()
    cell = atoms.cell.array
    pbc = atoms.pbc
    cache = NeighborCache(4.0, skin=0.5)
    n_rebuilt = 0
    for _ in range(25):
        pos = pos + rng.normal(0.0, 0.04, pos.shape)
        res = cache.get(pos, cell, pbc)
        n_rebuilt += res[3]
        _assert_cache_consistent(cache, pos, cell, pbc, res)
    assert 1 < n_rebuilt < 25


def test_neighbor_cache_validation():
    with pytest.raises(ValueError, match="cutoff must be a positive finite number"):
        NeighborCache(-1.0)
    with pytest.raises(ValueError, match="skin must be"):
        NeighborCache(3.0, skin=-0.1)
    cache = NeighborCache(3.0, skin=0.0)
    pos = np.zeros((2, 3))
    pos[1, 0] = 1.0
    assert cache.get(pos, np.zeros((3, 3)), False)[3] is True
    assert cache.get(pos, np.zeros((3, 3)), False)[3] is False
    pos[1, 0] += 1e-9
    assert cache.get(pos, np.zeros((3, 3)), False)[3] is True
    with pytest.raises(ValueError, match="positions contain NaN"):
        cache.get(np.full((2, 3), np.nan), np.zeros((3, 3)), False)
