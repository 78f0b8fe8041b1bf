"""The short-range wall (lattenb.short_range): the probe curves it is solved on, its basis against
ASE's neighbour list, the supercell reduction, and `fit` ending with dimers and compressed
crystals that rise below the training data (checked on fine grids of its own, not the probes)."""
import copy

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read
from ase.neighborlist import neighbor_list as ase_neighbor_list

import lattenb
from lattenb.cli import DATA_DIR
from lattenb.dataset import prepare_dataset
from lattenb.predict import predict
from lattenb.repulsion import WALL_FRACTIONS
from lattenb.short_range import (DENSE_GAP, LOWEST, MIN_SLOPE, N_BAND, N_STEPS, ProbeCurves,
                                 crystal_candidates, reduce_supercell, solve_wall,
                                 wall_energies, wall_force_basis, wall_reaches)

TRAIN = str(DATA_DIR / "Cu_train_subset.xyz")
SMALL = {"blocks": "4,-:4,i,i:4,ij,ij", "hidden": (8,), "cutoff": 4.5}


@pytest.fixture(scope="module")
def fitted():
    """A briefly fitted small Cu model (its fit ends by solving the wall) and its frames."""
    frames = read(TRAIN, ":")
    model = lattenb.fit(frames, max_iter=10, log=None, repulsion="zbl", **SMALL)
    return model, frames


def without_wall(model):
    plain = copy.deepcopy(model)
    plain.set_repulsion(plain.repulsion, plain.repulsion_radii)
    return plain


def test_reduce_supercell():
    fcc = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert len(reduce_supercell(fcc.repeat((3, 2, 1)))) == 4
    reduced = reduce_supercell(bulk("Mo", "bcc", a=3.15, cubic=True).repeat(2))
    assert len(reduced) == 2 and np.allclose(reduced.cell.lengths(), 3.15)
    rattled = fcc.repeat(2)
    rattled.rattle(0.01, seed=1)
    assert len(reduce_supercell(rattled)) == len(rattled)       # not a repeat: unchanged


def test_probe_curves(fitted):
    model, frames = fitted
    crystals = crystal_candidates(frames)
    assert len(crystals) == 1                                    # one composition: Cu
    probes = ProbeCurves(model, crystals)
    # the Cu dimer, the lowest-energy training crystal, ASE's fcc reference crystal
    assert probes.n_curves == 3
    # and the two crystals again from their own nearest-neighbour distance down to d (the band)
    assert probes.n_band_curves == 2
    assert probes.data.n_frames == 3 * (N_STEPS + 1) + 2 * (N_BAND + 1)
    assert len(probes.first) == 3 * N_STEPS + 2 * N_BAND
    assert np.all(probes.below_d == (np.arange(len(probes.first)) < 3 * N_STEPS))
    assert np.all(probes.second == probes.first + 1)
    start = np.concatenate([[0], np.cumsum(probes.data.n_atoms_per_frame)])
    nearest = []
    for f in range(3 * (N_STEPS + 1), probes.data.n_frames):
        atoms = Atoms(model.numbers[probes.data.species[start[f]:start[f + 1]]],
                      positions=probes.data.positions[start[f]:start[f + 1]],
                      cell=probes.data.cells[f], pbc=True)
        nearest.append(ase_neighbor_list("d", atoms, 4.0).min())
    band = np.array(nearest).reshape(2, N_BAND + 1)
    d = np.array(model.repulsion_radii)[0, 0, 1] / 0.9
    np.testing.assert_allclose(band[:, -1], d, rtol=1e-9)                  # down to d
    np.testing.assert_allclose(band[1, 0], ase_neighbor_list("d", bulk("Cu"), 4.0).min(),
                               rtol=1e-9)           # from ASE's fcc Cu as it is
    np.testing.assert_allclose(probes.step[~probes.below_d], -np.diff(band, axis=1).ravel(),
                               rtol=1e-9)
    sizes = probes.data.n_atoms_per_frame
    assert sizes[0] == 2 and sizes[-1] == 1                      # a dimer; the primitive fcc cell
    d = np.array(model.repulsion_radii)[0, 0, 1] / 0.9
    dimer = probes.data.positions[:2 * (N_STEPS + 1)].reshape(-1, 2, 3)
    r = np.linalg.norm(dimer[:, 1] - dimer[:, 0], axis=1)
    np.testing.assert_allclose(r[[0, -1]], [d, LOWEST * d], rtol=1e-12)
    np.testing.assert_allclose(probes.step[:N_STEPS], -np.diff(r), rtol=1e-9)
    assert np.all(np.diff(probes.step[:N_STEPS]) > 0)          # finest at d


def test_wall_basis_against_ase_neighbours_and_the_model_forces(fitted):
    model, frames = fitted
    frames = frames[:3]
    rho = wall_reaches(np.full((1, 1), 2.15))         # reaching some of the atoms, not all
    data = prepare_dataset(frames, model)
    basis = wall_energies(model, data, rho)
    for k, atoms in enumerate(frames):
        d = ase_neighbor_list("d", atoms, float(rho.max()))
        assert len(d) > 0
        expected = [0.5 * np.sum(np.clip(1 - d / r, 0, None) ** 3) for r in rho[0, 0]]
        np.testing.assert_allclose(basis[k, 0], expected, rtol=1e-12)
    # the forces of each term: the model's with a wall of that one term at unit coefficient
    # minus the model's without a wall (its repulsion kernel is checked against finite
    # differences in test_repulsion.py)
    system = data.kernel_inputs(model.kernel_arrays())[0]
    atoms_reached, forces = wall_force_basis(system.positions, system.cells,
                                             system.frame_of_atom, system.offsets, system.second,
                                             system.shifts, system.species, rho,
                                             np.zeros((1, 1), np.int64), 1)
    assert 0 < len(atoms_reached) < len(data.positions)
    plain = without_wall(model)
    start = np.concatenate([[0], np.cumsum(data.n_atoms_per_frame)])
    for k in (WALL_FRACTIONS.index(1.1), WALL_FRACTIONS.index(1.15)):   # reaching past 2.22 Å
        unit = np.zeros((1, 1, len(WALL_FRACTIONS), 2))
        unit[..., 0] = rho
        unit[0, 0, k, 1] = 1.0
        walled = copy.deepcopy(plain)
        walled.set_repulsion("zbl", plain.repulsion_radii, unit)
        expected = np.zeros((len(data.positions), 3))
        for f, atoms in enumerate(frames):
            args = (atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
            expected[start[f]:start[f + 1]] = (walled.compute(*args)["forces"]
                                               - plain.compute(*args)["forces"])
        got = np.zeros_like(expected)
        got[atoms_reached] = forces[:, 0, k]
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(got, expected, atol=1e-10)


def test_fit_ends_with_curves_that_rise_below_the_data(fitted):
    model, frames = fitted
    summary = model.fit_info["short_range"]
    assert summary["curves"] == 3 and summary["steps_falling_after"] == 0
    assert summary["reaches_training_pairs"]
    assert 0 < summary["training_forces_eV_per_A"] <= 0.01 * summary["training_force_mae_eV_per_A"]
    assert summary["coordination_terms"] and summary["band_steps_falling_after"] == 0
    probes = ProbeCurves(model, crystal_candidates(frames))
    low, high = np.array(summary["coordination_range"]).T
    rows = probes.constrained(model, high)
    assert rows.sum() > probes.below_d.sum()            # band steps past the data's coordination
    assert np.all(probes.rises(model)[rows] >= 0.99 * MIN_SLOPE * probes.step[rows])
    assert np.any(probes.rises(without_wall(model))[rows] < 0)      # the wall is what does it
    # the coordination range is the training data's (ASE's neighbour list), and the terms leave
    # every training structure alone: energies and forces as without them
    n = np.concatenate([np.bincount(i, (1 - d**2 / model.cutoff**2) ** 3, len(atoms)) for atoms
                        in frames for i, d in [ase_neighbor_list("id", atoms, model.cutoff)]])
    np.testing.assert_allclose([low[0], high[0]], [n.min(), n.max()], rtol=1e-10)
    no_terms = copy.deepcopy(model)
    no_terms.set_repulsion(model.repulsion, model.repulsion_radii, model.repulsion_wall)
    for atoms in frames:
        args = (atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        a, b = model.compute(*args), no_terms.compute(*args)
        assert a["energy"] == b["energy"] and np.array_equal(a["forces"], b["forces"])
    # the program's basis weighted with the solved coefficients is what the terms add to the
    # probes' energies in the model's kernel
    terms = model.repulsion_coordination
    dense, wall = np.array(terms["dense"]), np.array(terms["sparse_wall"])
    _, energy = probes.coordination_basis(model, np.array(terms["sparse_limit"]), dense[..., 0])
    coefficients = np.concatenate([dense[..., 1].ravel(), wall[0, 0, :, 1]])
    added = (predict(model, probes.data)[0] - predict(no_terms, probes.data)[0]) \
        / probes.data.n_atoms_per_frame
    assert np.abs(added).max() > 1.0
    np.testing.assert_allclose(energy @ coefficients, added, rtol=1e-9, atol=1e-9)
    # nothing left to add
    assert solve_wall(probes, probes.rises(model), np.ones((1, len(WALL_FRACTIONS)))) is None
    # on grids of their own, d down to 0.4 Å: the dimer and ASE's cubic fcc cell compressed
    d = np.array(model.repulsion_radii)[0, 0, 1] / 0.9
    r = np.concatenate([np.linspace(0.4, 0.9 * d, 150, endpoint=False),
                        np.linspace(0.9 * d, d, 250)])            # fine just below the data
    dimer = [model.compute(np.array([[0, 0, 0], [x, 0, 0]]), None, False, [29, 29])["energy"]
             for x in r]
    assert np.all(np.diff(dimer) < 0)
    cubic = bulk("Cu", cubic=True)
    d0 = cubic.get_distance(0, 1)
    compressed = []
    for x in r:
        atoms = cubic.copy()
        atoms.set_cell(cubic.cell * (x / d0), scale_atoms=True)
        compressed.append(model.compute(atoms.positions, atoms.cell.array, atoms.pbc,
                                        atoms.numbers)["energy"] / len(atoms))
    assert np.all(np.diff(compressed) < 0)
    # and from where its coordination leaves the data's range by DENSE_GAP down to d
    fcc = bulk("Cu")
    d0 = ase_neighbor_list("d", fcc, 4.0).min()
    band, coordination = [], []
    for x in np.linspace(d0, d, 400):
        atoms = fcc.copy()
        atoms.set_cell(fcc.cell * (x / d0), scale_atoms=True)
        i, dist = ase_neighbor_list("id", atoms, model.cutoff)
        coordination.append(np.sum((1 - dist**2 / model.cutoff**2) ** 3))
        band.append(model.compute(atoms.positions, atoms.cell.array, atoms.pbc,
                                  atoms.numbers)["energy"])
    past = np.array(coordination) >= (1 + DENSE_GAP) * high[0]
    assert 0 < past.sum() < len(past) - 50
    assert np.all(np.diff(np.array(band)[past]) > 0)


def test_refit_keeps_the_wall_and_a_dimer_only_model_needs_one(fitted, tmp_path):
    model, frames = fitted
    again = lattenb.fit(frames, model=model, max_iter=5, log=None)
    wall, before = np.array(again.repulsion_wall), np.array(model.repulsion_wall)
    np.testing.assert_array_equal(wall[..., 0], before[..., 0])
    assert np.all(wall[..., 1] >= before[..., 1])               # the wall only grows
    path = tmp_path / "m.npz"
    again.save(path)
    assert lattenb.load(path).repulsion_wall == again.repulsion_wall
    # non-periodic training data (a molecule-like set): dimers only
    molecules = [Atoms("Cu3", positions=a.positions[:3], pbc=False) for a in frames[:6]]
    for mol, atoms in zip(molecules, frames):
        mol.info["energy"] = atoms.get_potential_energy() / len(atoms) * 3
    m = lattenb.fit(molecules, max_iter=5, log=None, repulsion="zbl", **SMALL)
    assert m.fit_info["short_range"]["curves"] == 1


def test_a_wall_that_would_cost_accuracy_stays_below_the_data(fitted, monkeypatch):
    """Where the terms reaching past d would move the training forces by more than
    FORCE_TOLERANCE of the fit's MAE (here: any), only those up to ZBL's r_out = 0.9 d are used,
    and the gated wall of the coordination terms closes 0.9 d to d: the training structures are
    untouched, and the curves rise all the way below d."""
    import lattenb.short_range as short_range
    model, frames = fitted
    plain = without_wall(model)
    monkeypatch.setattr(short_range, "FORCE_TOLERANCE", 0.0)
    data = prepare_dataset(frames, plain, keep_pairs=True)
    summary = short_range.close_short_range(plain, data, crystal_candidates(frames))
    assert not summary["reaches_training_pairs"] and summary["training_forces_eV_per_A"] == 0
    wall = np.array(plain.repulsion_wall)
    d = np.array(plain.repulsion_radii)[0, 0, 1] / 0.9
    assert np.all(wall[wall[..., 0] > 0.9 * d + 1e-9][:, 1] == 0)
    probes = ProbeCurves(plain, crystal_candidates(frames))
    below, rise = probes.below_d, probes.rises(plain)
    assert np.all(rise[below] >= 0.99 * MIN_SLOPE * probes.step[below])
    coordination = plain.repulsion_coordination
    assert summary["coordination_terms"]
    assert np.any(np.array(coordination["sparse_wall"])[..., 1] > 0)
    no_terms = copy.deepcopy(plain)
    no_terms.set_repulsion(plain.repulsion, plain.repulsion_radii, plain.repulsion_wall)
    near = below & (probes.reached > 0.9)
    assert np.any(probes.rises(no_terms)[near] < 0)         # the gated wall is what does it
    for atoms in frames[:5]:                                     # the data are untouched
        args = (atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        assert plain.compute(*args)["energy"] == without_wall(plain).compute(*args)["energy"]


def test_without_reference_forces_the_wall_stays_below_the_data(fitted, tmp_path):
    """Nothing measures what a wall reaching past d would do to energy-only data: only the terms
    up to 0.9 d are used (and the summary, without a force MAE, is still a valid model file)."""
    model, frames = fitted
    energy_only = []
    for atoms in frames:
        a = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        a.info["energy"] = atoms.get_potential_energy()
        energy_only.append(a)
    m = lattenb.fit(energy_only, max_iter=5, log=None, repulsion="zbl", **SMALL)
    assert not m.fit_info["short_range"]["reaches_training_pairs"]
    assert m.fit_info["short_range"]["training_force_mae_eV_per_A"] is None
    m.save(tmp_path / "energy_only.npz")
    assert lattenb.load(tmp_path / "energy_only.npz").repulsion_wall == m.repulsion_wall
