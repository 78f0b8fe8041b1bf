"""The core repulsion (`lattenb.repulsion`): the ZBL formula and its C2 switch, the repulsion of
a model against a sum over ASE's neighbour list, forces and stress against finite differences,
the dataset path, radii placed below the training data by `fit`, dimer curves that rise, model
files, the CLI, and clear errors."""
import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

import lattenb
from lattenb import LatteModel, cli
from lattenb.repulsion import COULOMB, WALL_FRACTIONS, radii_from_data, zbl_pair_energy

BLOCKS = "2,-:2,i,i:1,ij,ij:1,i,j,ij"
CUTOFF = 3.8
RADII = np.tile([1.9, 2.5], (2, 2, 1))      # (r_in, r_out) Å for Ni-Ni, Ni-Mo, Mo-Ni, Mo-Mo
#: a wall (reach Å, coefficient eV) per species pair, two terms, one reaching past r_out
WALL = np.tile([[2.2, 3.0], [2.9, 5.0]], (2, 2, 1, 1))
WALL[0, 1, :, 1] = WALL[1, 0, :, 1] = [1.0, 2.0]


def wall_reference(r, a, b):
    """The wall of species pair (a, b) written out: sum_k c_k (1 - r/rho_k)^3 below rho_k."""
    return sum(c * max(0.0, 1.0 - r / rho) ** 3 for rho, c in WALL[a, b])


def zbl_reference(r, z1, z2):
    """The ZBL universal screened Coulomb energy (eV), written out from the published form
    (screening length 0.46850 Å / (Z1^0.23 + Z2^0.23), as LAMMPS' pair_style zbl uses)."""
    a = 0.46850 / (z1 ** 0.23 + z2 ** 0.23)
    x = r / a
    screen = (0.18175 * np.exp(-3.1998 * x) + 0.50986 * np.exp(-0.94229 * x)
              + 0.28022 * np.exp(-0.4029 * x) + 0.02817 * np.exp(-0.20162 * x))
    return 14.399645 * z1 * z2 / r * screen


def repulsion_model(seed=0, radii=RADII, wall=WALL):
    m = LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks=BLOCKS, hidden=(6, 4), activation="tanh",
                   seed=seed, repulsion="zbl", repulsion_radii=radii, repulsion_wall=wall)
    rng = np.random.default_rng(seed)
    m.set_parameters(g_std=rng.uniform(1.0, 3.0, m.params["g_std"].shape),
                     g_mean=rng.normal(size=m.params["g_mean"].shape) * 0.1)
    return m


def without_repulsion(m):
    import copy
    plain = copy.deepcopy(m)
    plain.set_repulsion("none")
    return plain


def test_zbl_against_the_formula_and_the_switch_is_c2():
    r_in, r_out = 1.2, 2.0
    r = np.linspace(0.2, r_in, 9)
    assert COULOMB == 14.399645
    # below r_in: the published ZBL form
    np.testing.assert_allclose(zbl_pair_energy(r, 28, 42, r_in, r_out), zbl_reference(r, 28, 42),
                               rtol=1e-12)
    # between: times 1 - 10x^3 + 15x^4 - 6x^5; beyond: zero
    r = np.array([1.3, 1.6, 1.9])
    x = (r - r_in) / (r_out - r_in)
    np.testing.assert_allclose(zbl_pair_energy(r, 28, 42, r_in, r_out),
                               zbl_reference(r, 28, 42) * (1 - 10 * x**3 + 15 * x**4 - 6 * x**5),
                               rtol=1e-12)
    assert np.all(zbl_pair_energy([2.0, 2.5, 4.0], 28, 42, r_in, r_out) == 0.0)
    # value, first and second derivative continuous at both ends of the switch
    h = 1e-4
    for r0 in (r_in, r_out):
        e = zbl_pair_energy(r0 + h * np.arange(-3, 4), 28, 42, r_in, r_out)
        d_left, d_right = (e[3] - e[2]) / h, (e[4] - e[3]) / h
        dd_left, dd_right = (e[3] - 2 * e[2] + e[1]) / h**2, (e[5] - 2 * e[4] + e[3]) / h**2
        scale = abs(zbl_reference(r0, 28, 42))
        assert abs(d_left - d_right) < 1e-2 * scale
        assert abs(dd_left - dd_right) < 1e-1 * scale


@pytest.mark.parametrize("pbc", [True, False])
def test_model_repulsion_is_the_pair_sum_over_ase_neighbours(pbc):
    from structures import random_atoms
    m = repulsion_model()
    cell = [[5.0, 0, 0], [1.1, 4.7, 0], [0.4, 0.9, 5.2]]
    atoms = random_atoms(np.random.default_rng(3), 10, cell, pbc, dmin=1.5)
    with_rep = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    plain = without_repulsion(m).compute(atoms.positions, atoms.cell.array, atoms.pbc,
                                         atoms.numbers)
    i, j, d = ase_neighbor_list("ijd", atoms, 2.9)
    assert (d < 2.5).sum() > 0 and (d < 1.9).sum() > 0       # pairs in every region
    assert ((d > 2.5) & (d < 2.9)).sum() > 0                  # the wall alone
    species = (atoms.numbers == 42).astype(int)

    def pair(ik, jk, dk):
        zbl = zbl_pair_energy(dk, atoms.numbers[ik], atoms.numbers[jk], 1.9, 2.5)[0]
        return 0.5 * (zbl + wall_reference(dk, species[ik], species[jk]))
    expected = sum(pair(ik, jk, dk) for ik, jk, dk in zip(i, j, d))
    assert expected > 1.0
    np.testing.assert_allclose(with_rep["energy"] - plain["energy"], expected, rtol=1e-12)
    per_atom = np.zeros(len(atoms))
    for ik, jk, dk in zip(i, j, d):
        per_atom[ik] += pair(ik, jk, dk)
    np.testing.assert_allclose(with_rep["energies"] - plain["energies"], per_atom, rtol=1e-12,
                               atol=1e-12)


def test_repulsion_forces_and_stress_match_finite_differences():
    from structures import random_atoms
    from test_model import finite_difference_errors
    m = repulsion_model(seed=1)
    atoms = random_atoms(np.random.default_rng(7), 8, [[5.0, 0, 0], [1.1, 4.7, 0],
                                                        [0.4, 0.9, 5.2]], True, dmin=1.6)
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    plain = without_repulsion(m).compute(atoms.positions, atoms.cell.array, atoms.pbc,
                                         atoms.numbers)
    assert np.abs(out["forces"] - plain["forces"]).max() > 1.0     # the repulsion acts
    errors = finite_difference_errors(m, atoms, out)
    print("\nrepulsion: relative errors against finite differences", errors)
    assert max(errors.values()) < 1e-8, errors


def coordination_reference(atoms, coordination):
    """Per-atom energies (N,) eV of the coordination terms written out from the module docstring
    over ASE's neighbour list: n_i, the dense term above tau_k, the gated sparse wall."""
    r_c = coordination["cutoff"]
    i, j, d = ase_neighbor_list("ijd", atoms, r_c)
    species = (atoms.numbers == 42).astype(int)
    n = np.zeros(len(atoms))
    np.add.at(n, i, (1 - d**2 / r_c**2) ** 3)
    out = np.zeros(len(atoms))
    for a in range(len(atoms)):
        s = species[a]
        for tau, alpha in coordination["dense"][s]:
            out[a] += alpha * max(0.0, (n[a] - tau) / tau) ** 3
        limit = coordination["sparse_limit"][s]
        gate = max(0.0, (limit - n[a]) / limit) ** 3
        out[a] += gate * 0.5 * sum(b * max(0.0, 1 - dk / rho) ** 3
                                   for jk, dk in zip(j[i == a], d[i == a])
                                   for rho, b in coordination["sparse_wall"][s, species[jk]])
    return out, n


def coordination_terms(atoms, cutoff=CUTOFF):
    """Coordination terms (`lattenb.repulsion`) of a two-species model that act on some atoms of
    `atoms` and not on others: dense above the 70th percentile of its coordination, sparse below
    the 30th, the sparse wall reaching 2.4 and 3.2 Å."""
    i, d = ase_neighbor_list("id", atoms, cutoff)
    n = np.bincount(i, (1 - d**2 / cutoff**2) ** 3, len(atoms))
    hi, lo = np.percentile(n, [70, 30])
    sparse = np.tile([[2.4, 1.5], [3.2, 4.0]], (2, 2, 1, 1))
    return {"cutoff": cutoff, "dense": np.array([[[hi, 300.0], [1.1 * hi, 700.0]],
                                                 [[0.95 * hi, 200.0], [hi, 0.0]]]),
            "sparse_limit": np.array([lo, 1.05 * lo]), "sparse_wall": sparse}


@pytest.mark.parametrize("pbc", [True, False])
def test_coordination_terms_against_the_written_out_sum(pbc):
    from structures import random_atoms
    cell = [[5.0, 0, 0], [1.1, 4.7, 0], [0.4, 0.9, 5.2]]
    atoms = random_atoms(np.random.default_rng(4), 10, cell, pbc, dmin=1.5)
    coordination = coordination_terms(atoms)
    m = repulsion_model()
    walled = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    m.set_repulsion("zbl", RADII, WALL, coordination)
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    expected, n = coordination_reference(atoms, coordination)
    assert (expected > 1e-4).sum() >= 5 and (expected == 0).sum() >= 1    # acts on some atoms
    np.testing.assert_allclose(out["energies"] - walled["energies"], expected, rtol=1e-10,
                               atol=1e-12)
    # an atom inside the training range of n (limit <= n <= tau) feels nothing of it
    assert np.all(expected[(n > 1.05 * coordination["sparse_limit"].max())
                           & (n < 0.95 * coordination["dense"][..., 0].min())] == 0)


def test_coordination_forces_and_stress_match_finite_differences(tmp_path):
    from structures import random_atoms
    from test_model import finite_difference_errors
    from test_training import assert_round_trip
    m = repulsion_model(seed=1)
    atoms = random_atoms(np.random.default_rng(7), 8, [[5.0, 0, 0], [1.1, 4.7, 0],
                                                        [0.4, 0.9, 5.2]], True, dmin=1.6)
    walled = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    m.set_repulsion("zbl", RADII, WALL, coordination_terms(atoms))
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert np.abs(out["forces"] - walled["forces"]).max() > 0.1     # the terms act
    errors = finite_difference_errors(m, atoms, out)
    print("\ncoordination terms: relative errors against finite differences", errors)
    assert max(errors.values()) < 1e-8, errors
    loaded = assert_round_trip(m, tmp_path / "coordination.npz", atoms)
    assert loaded.repulsion_coordination == m.repulsion_coordination


def test_dataset_prediction_includes_the_repulsion():
    from test_training import random_frame
    from lattenb.dataset import prepare_dataset
    from lattenb.predict import predict
    rng = np.random.default_rng(5)
    frames = [random_frame(rng, 6, 4.0), random_frame(rng, 4, 3.6)]
    m = repulsion_model(seed=2)
    E, F, S, _ = predict(m, prepare_dataset(frames, m, keep_pairs=True))
    E0 = predict(m, prepare_dataset(frames, m), repulsion=False)[0]
    start = 0
    for k, atoms in enumerate(frames):
        out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        plain = without_repulsion(m).compute(atoms.positions, atoms.cell.array, atoms.pbc,
                                             atoms.numbers)
        np.testing.assert_allclose(E[k], out["energy"], rtol=1e-12)
        np.testing.assert_allclose(E0[k], plain["energy"], rtol=1e-12)
        np.testing.assert_allclose(F[start:start + len(atoms)], out["forces"], atol=1e-10)
        np.testing.assert_allclose(S[k], out["stress"], atol=1e-12)
        start += len(atoms)


def test_fit_places_the_repulsion_below_the_data_and_dimers_rise(tmp_path):
    from test_training import assert_round_trip, random_frame
    rng = np.random.default_rng(11)
    frames = [random_frame(rng, 5, 4.2, min_dist=2.0) for _ in range(5)]
    m = lattenb.fit(frames, cutoff=CUTOFF, blocks=BLOCKS, hidden=(6, 4), max_iter=15, log=None,
                    repulsion="zbl")
    # r_in, r_out = 0.6 and 0.9 x the shortest distance of each species pair in the training
    # data (ASE's list)
    closest = np.full((2, 2), np.inf)
    for atoms in frames:
        i, j, d = ase_neighbor_list("ijd", atoms, CUTOFF)
        for ik, jk, dk in zip(i, j, d):
            a, b = (0 if atoms.numbers[x] == 28 else 1 for x in (ik, jk))
            closest[a, b] = min(closest[a, b], dk)
    radii = np.array(m.repulsion_radii)
    np.testing.assert_allclose(radii, np.stack([0.6 * closest, 0.9 * closest], -1), rtol=1e-12)
    np.testing.assert_allclose(radii, radii_from_data(closest), rtol=1e-12)
    # ZBL is off on the training data; the wall's reaches are fractions of d
    wall = np.array(m.repulsion_wall)
    assert wall.shape == (2, 2, len(WALL_FRACTIONS), 2)
    np.testing.assert_allclose(wall[..., 0], closest[..., None] * WALL_FRACTIONS, rtol=1e-12)
    assert np.all(wall[..., 1] >= 0)
    plain = without_repulsion(m)
    for atoms in frames:
        a = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        b = plain.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        i, j, d = ase_neighbor_list("ijd", atoms, CUTOFF)
        sp = (atoms.numbers == 42).astype(int)
        added = 0.5 * sum(c * max(0.0, 1 - dk / rho) ** 3
                          for ik, jk, dk in zip(i, j, d) for rho, c in wall[sp[ik], sp[jk]])
        np.testing.assert_allclose(a["energy"] - b["energy"], added, rtol=1e-10, atol=1e-12)
    # dimers rise monotonically below 0.85 d (ZBL and the wall). On these random structures
    # every pair sits just above d, so a wall reaching past d would move the training forces:
    # the fit keeps to terms reaching 0.9 d (`short_range.FORCE_TOLERANCE`, tested there)
    assert not m.fit_info["short_range"]["reaches_training_pairs"]
    for pair, (a, b) in {"NiNi": (0, 0), "NiMo": (0, 1), "MoMo": (1, 1)}.items():
        r = np.linspace(0.3, 0.85 * closest[a, b], 200)
        dimer = [Atoms(pair, positions=[[0, 0, 0], [rk, 0, 0]]) for rk in r]
        energy = np.array([m.compute(x.positions, None, False, x.numbers)["energy"]
                           for x in dimer])
        assert np.all(np.diff(energy) < 0), pair
    loaded = assert_round_trip(m, tmp_path / "rep.npz", frames[0])
    assert loaded.repulsion == "zbl" and loaded.repulsion_radii == m.repulsion_radii
    assert loaded.repulsion_wall == m.repulsion_wall
    assert "repulsion='zbl'" in repr(loaded)
    # refitting with repulsion="none" removes it; a file without the field has none
    assert lattenb.fit(frames, model=m, max_iter=1, log=None, repulsion="none").repulsion == "none"
    old = LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks=BLOCKS, hidden=(6, 4))
    header = old.file_header()
    del header["repulsion"], header["repulsion_radii"], header["repulsion_wall"]
    del header["repulsion_coordination"]
    from lattenb.io import write_model_file
    write_model_file(tmp_path / "old.npz", header, old.params)
    assert lattenb.load(tmp_path / "old.npz").repulsion == "none"


def test_bad_repulsion_arguments_are_clear_errors():
    def make(**kw):
        return LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks=BLOCKS, hidden=(4,), **kw)
    with pytest.raises(ValueError, match="repulsion must be one of"):
        make(repulsion="lj")
    with pytest.raises(ValueError, match="needs repulsion_radii"):
        make(repulsion="zbl")
    with pytest.raises(ValueError, match='given with repulsion="none"'):
        make(repulsion_radii=RADII)
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2\)"):
        make(repulsion="zbl", repulsion_radii=RADII[0])
    with pytest.raises(ValueError, match="0 < r_in < r_out"):
        make(repulsion="zbl", repulsion_radii=RADII[..., ::-1])
    asymmetric = RADII.copy()
    asymmetric[0, 1] = [1.0, 2.0]
    with pytest.raises(ValueError, match="symmetric"):
        make(repulsion="zbl", repulsion_radii=asymmetric)
    with pytest.raises(ValueError, match="beyond the cutoff"):
        make(repulsion="zbl", repulsion_radii=RADII * 2)
    with pytest.raises(ValueError, match=r"shape \(2, 2, K, 2\)"):
        make(repulsion="zbl", repulsion_radii=RADII, repulsion_wall=WALL[0])
    for bad in (-WALL, WALL * [2.0, 1.0]):        # a negative coefficient; beyond the cutoff
        with pytest.raises(ValueError, match="coefficients >= 0"):
            make(repulsion="zbl", repulsion_radii=RADII, repulsion_wall=bad)
    asymmetric = WALL.copy()
    asymmetric[0, 1, 0, 1] = 9.0
    with pytest.raises(ValueError, match="symmetric"):
        make(repulsion="zbl", repulsion_radii=RADII, repulsion_wall=asymmetric)
    with pytest.raises(ValueError, match='given with repulsion="none"'):
        make(repulsion_wall=WALL)
    good = {"cutoff": 3.0, "dense": [[[4.0, 1.0]], [[5.0, 0.0]]], "sparse_limit": [1.0, 2.0],
            "sparse_wall": None}
    make(repulsion="zbl", repulsion_radii=RADII, repulsion_coordination=good)
    for key, bad, message in (("cutoff", 9.0, "cutoff must be in"),
                              ("dense", [[[-4.0, 1.0]], [[5.0, 0.0]]], "tau > 0, alpha >= 0"),
                              ("dense", [[4.0, 1.0]], r"dense must be \(2, K, 2\)"),
                              ("sparse_limit", [1.0], r"sparse_limit must be \(2,\)"),
                              ("sparse_wall", -WALL, "coefficients >= 0")):
        with pytest.raises(ValueError, match=message):
            make(repulsion="zbl", repulsion_radii=RADII,
                 repulsion_coordination={**good, key: bad})
    with pytest.raises(ValueError, match="must be a dict with the keys"):
        make(repulsion="zbl", repulsion_radii=RADII, repulsion_coordination={"cutoff": 3.0})
    with pytest.raises(ValueError, match='given with repulsion="none"'):
        make(repulsion_coordination=good)


def test_cli_fit_with_repulsion(tmp_path, capsys):
    from ase.io import write
    from test_training import random_frame
    rng = np.random.default_rng(9)
    write(tmp_path / "train.xyz", [random_frame(rng, 4, 4.0) for _ in range(6)])
    for flags, expected in (([], "zbl"), (["--repulsion", "none"], "none"),
                            (["--repulsion", "zbl"], "zbl")):     # on by default
        assert cli.main(["fit", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "m.npz"),
                         "--blocks", "2,-:1,i,i", "--hidden", "4", "--cutoff", "3.5",
                         "--max-iter", "2", *flags]) == 0
        assert ("core repulsion zbl:" in capsys.readouterr().out) == (expected == "zbl")
        assert lattenb.load(tmp_path / "m.npz").repulsion == expected
    with pytest.raises(SystemExit):
        cli.main(["fit", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "m.npz"),
                  "--repulsion", "lj"])
    assert "invalid choice: 'lj'" in capsys.readouterr().err
