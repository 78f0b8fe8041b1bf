"""Extrapolation grades (lattenb.extrapolation): MaxVol against brute force, the fitted active set
(training structures grade <= 1, out-of-domain ones above), the features against independent
computations, storage, the ASE calculator, selection and the command line."""
import itertools
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.io import read

import lattenb
from lattenb import extrapolation as ex
from lattenb.cli import main
from lattenb.cli import DATA_DIR

TRAIN = str(DATA_DIR / "Cu_train_subset.xyz")
TEST = str(DATA_DIR / "Cu_test_subset.xyz")
SMALL = {"blocks": "4,-:4,i,i:4,ij,ij", "hidden": (8,), "cutoff": 4.5}
#: MaxVol's guarantee on the training rows, with room for round-off
TRAINING_BOUND = 1.0 + 1e-6


def test_maxvol_is_locally_maximal():
    """No single row swap increases |det| of the chosen rows (checked by brute force), so every
    row's coefficients are at most 1."""
    rng = np.random.default_rng(0)
    psi = rng.normal(size=(40, 4)) * [1.0, 3.0, 0.2, 1.0]
    rows = ex.maxvol(psi)
    best = abs(np.linalg.det(psi[rows]))
    for j, i in itertools.product(range(4), range(40)):
        trial = rows.copy()
        trial[j] = i
        assert abs(np.linalg.det(psi[trial])) <= best * (1 + 1e-9)
    assert np.abs(psi @ np.linalg.inv(psi[rows])).max() <= ex.MAXVOL_TOL
    # a small case against the global maximum of |det| over all row subsets
    small = rng.normal(size=(9, 3))
    top = max(abs(np.linalg.det(small[list(c)])) for c in itertools.combinations(range(9), 3))
    assert abs(np.linalg.det(small[ex.maxvol(small)])) >= 0.5 * top


def test_rank_deficient_features_and_missing_species():
    """A direction the training features never take is left out of the active set, and leaving
    it grades far above 1; a species without training atoms grades inf."""
    rng = np.random.default_rng(1)
    phi = np.hstack([rng.normal(size=(30, 3)), np.zeros((30, 1)), np.ones((30, 1))])
    active = ex.active_set_from_features(phi, np.zeros(30, np.int64), 2)
    assert list(active.rank) == [4, 0] and np.isinf(active.null_scale[1])
    g = active.grades(phi, np.zeros(30, np.int64))
    assert g.max() <= TRAINING_BOUND and g.max() > 0.999
    unseen = phi[:1].copy()
    unseen[0, 3] = 1e-3                        # a small step along the direction never seen
    assert active.grades(unseen, np.zeros(1, np.int64))[0] > 1e3
    assert np.isinf(active.grades(phi[:2], np.ones(2, np.int64))).all()
    full = ex.active_set_from_features(phi[:, [0, 1, 2, 4]], np.zeros(30, np.int64), 1)
    assert full.rank[0] == 4 and np.isinf(full.null_scale[0])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small Cu model fitted on the bundled subset's bulk structures (no surfaces), saved."""
    frames = [a for a in read(TRAIN, ":") if a.info.get("config_type") != "Surface"]
    model = lattenb.fit(frames, max_iter=8, log=None, **SMALL)
    path = tmp_path_factory.mktemp("grade") / "cu.npz"
    model.save(path)
    return model, frames, str(path)


def grade_of(model, atoms):
    atoms = atoms.copy()
    atoms.calc = model.calculator()
    atoms.get_potential_energy()
    return atoms.calc.results


def test_training_structures_grade_at_most_one(fitted):
    model, frames, _ = fitted
    assert model.active_set is not None and model.grade_features == "descriptors"
    grades = [grade_of(model, a)["extrapolation_grade"] for a in frames]
    assert max(grades) <= TRAINING_BOUND
    assert max(grades) > 0.999          # the active set's own environments grade exactly 1


def test_out_of_domain_structures_grade_above_one(fitted):
    model = fitted[0]
    a0 = 3.62
    compressed = bulk("Cu", "fcc", a=0.8 * a0, cubic=True).repeat(2)
    other_phase = bulk("Cu", "diamond", a=5.9)       # fcc's nearest distance, 4 neighbours
    surface = fcc111("Cu", (3, 3, 5), vacuum=8.0)        # trained on bulk only
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.2]])
    for name, atoms in (("compressed", compressed), ("diamond", other_phase), ("surface", surface),
                        ("dimer", dimer)):
        results = grade_of(model, atoms)
        assert results["extrapolation_grade"] > 1.2, name
        assert results["extrapolation_grades"].shape == (len(atoms),)
        assert results["extrapolation_grade"] == results["extrapolation_grades"].max()


def test_kernel_features_match_numpy_and_last_hidden_is_linear(fitted):
    """The MD kernel's descriptors give the NumPy path's grades; the last hidden layer's
    features reproduce each atomic energy through the output layer (E_i - e0 = phi . (w, b))."""
    model = fitted[0]
    atoms = read(TEST, "0")
    species = model.species_indices(atoms.numbers)
    G = model.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    reference = model.active_set.grades(ex.features_from_descriptors(model, G, species),
                                        species)
    out = model.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers, grades=True)
    np.testing.assert_allclose(out["extrapolation_grades"], reference, rtol=1e-12, atol=1e-12)
    phi = ex.last_hidden_features(model, G, species)
    n = phi.shape[1]
    output_layer = model.params["mlp"][0, -n:]            # weights of the last hidden layer, bias
    learned = out["energies"] - model.params["e0"][species]
    np.testing.assert_allclose(phi @ output_layer, learned, rtol=1e-10, atol=1e-10)


def test_active_set_saved_cleared_and_required(fitted, tmp_path):
    model, _, path = fitted
    loaded = lattenb.load(path)
    for name, value in model.active_set.arrays().items():
        np.testing.assert_array_equal(loaded.active_set.arrays()[name], value)
    changed = lattenb.load(path)
    changed.set_parameters(e0=changed.params["e0"] + 1.0)
    assert changed.active_set is None                     # it described the old parameters
    atoms = bulk("Cu", "fcc", a=3.62)
    with pytest.raises(ValueError, match="no active set"):
        changed.compute(atoms.positions, atoms.cell.array, True, atoms.numbers, grades=True)
    assert "extrapolation_grade" not in grade_of(changed, atoms)     # calculator: off without
    changed.save(tmp_path / "plain.npz")
    assert lattenb.load(tmp_path / "plain.npz").active_set is None
    # files from before null_scale was stored: three arrays, full rank assumed
    arrays = {k: v for k, v in model.active_set.arrays().items() if k != "active_set_null_scale"}
    model.save(tmp_path / "three.npz", params=model.params, extra_arrays=arrays)
    older = lattenb.load(tmp_path / "three.npz")
    assert np.isinf(older.active_set.null_scale).all()
    np.testing.assert_array_equal(older.active_set.active, model.active_set.active)


def test_select_takes_high_grades_and_learns_from_them(fitted):
    """Greedy D-optimal selection: the first pick is the highest-graded structure (a compressed
    crystal); of two surfaces (the test set's and a (111) slab, both above 1 before) one is
    picked and the other then grades <= 1; the picked structures grade <= 1 against the grown
    active set."""
    from lattenb.dataset import prepare_dataset
    model = fitted[0]
    pool = read(TEST, ":") + [fcc111("Cu", (3, 3, 5), vacuum=8.0),
                              bulk("Cu", "fcc", a=3.3, cubic=True).repeat(2)]
    surfaces = [k for k, a in enumerate(pool[:-2]) if a.info["config_type"] == "Surface"]
    surfaces.append(len(pool) - 2)
    data = prepare_dataset(pool, model, require_energy=False)
    chosen, taken, before, grown = ex.select_structures(model, data, len(pool))
    assert chosen[0] == len(pool) - 1 == np.argmax(before) and taken[0] == before.max()
    assert before[surfaces].min() > 1 and len(set(chosen) & set(surfaces)) == 1
    assert np.all(np.diff(taken) <= 0) and taken[-1] > 1 and len(chosen) < len(pool)
    after = ex.structure_grades(grown.grades(ex.dataset_features(model, data), data.species),
                                data.frame_of_atom, data.n_frames)
    assert after.max() <= TRAINING_BOUND


def test_command_line_grade_select_activeset(fitted, tmp_path, capsys):
    model, _, path = fitted
    assert main(["eval", path, TEST, "--grade", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[TEST]["extrapolation"]
    assert report["structures"] == 10 and len(report["grades"]) == 10
    assert report["max"] == max(report["grades"])
    pool = tmp_path / "pool.xyz"
    frames = read(TEST, ":") + [bulk("Cu", "fcc", a=3.3, cubic=True).repeat(2)]
    from ase.io import write
    write(pool, frames)
    assert main(["select", path, str(pool), "-n", "1", "-o", str(tmp_path / "picked.xyz")]) == 0
    picked = read(tmp_path / "picked.xyz", ":")
    assert len(picked) == 1 and picked[0].info["pool_index"] == len(frames) - 1
    assert picked[0].info["extrapolation_grade"] > 1
    # activeset: another feature kind for the same parameters
    out = tmp_path / "hidden.npz"
    assert main(["activeset", path, TRAIN, "-o", str(out), "--features", "last_hidden"]) == 0
    other = lattenb.load(out)
    assert other.grade_features == "last_hidden"
    assert other.active_set.basis.shape[1] == SMALL["hidden"][-1] + 1
    np.testing.assert_array_equal(other.params["mlp"], model.params["mlp"])
    with pytest.raises(SystemExit, match="no active set"):
        plain = lattenb.load(path)
        plain.set_active_set(None)
        plain.save(tmp_path / "none.npz")
        main(["eval", str(tmp_path / "none.npz"), TEST, "--grade"])
