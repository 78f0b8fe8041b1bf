"""Bad input gives a clear ValueError: never a crash (SystemError, ZeroDivisionError, ...) and
never a silently wrong number."""
import numpy as np
import pytest
from ase import Atoms

from lattenb import LatteModel

BLOCKS = "2,-:2,i,i:1,ij,ij:1,i,j,ij"
POSITIONS = np.array([[0.0, 0.0, 0.0], [1.9, 1.2, 0.3], [0.4, 2.1, 1.5], [2.2, 0.1, 2.0]])
NUMBERS = np.array([28, 42, 28, 42])
CELL = np.array([[4.5, 0.0, 0.0], [0.8, 4.4, 0.0], [0.3, 0.5, 4.6]])


@pytest.fixture(scope="module")
def model():
    return LatteModel(species=["Ni", "Mo"], cutoff=4.0, blocks=BLOCKS, hidden=(4,), seed=0)


def test_reference_inputs_work(model):
    """The inputs the other tests spoil are fine as they are."""
    for cell, pbc in ((CELL, True), (None, False)):
        out = model.compute(POSITIONS, cell, pbc, NUMBERS)
        assert np.isfinite(out["energy"]) and np.all(np.isfinite(out["forces"]))


# ----------------------------------------------------------------------------- species
def test_unknown_species_is_named(model):
    numbers = NUMBERS.copy()
    numbers[2] = 29
    for cell, pbc in ((CELL, True), (None, False)):
        with pytest.raises(ValueError, match=r"Cu"):
            model.compute(POSITIONS, cell, pbc, numbers)
        with pytest.raises(ValueError, match=r"Cu"):
            model.descriptors(POSITIONS, cell, pbc, numbers)


def test_unknown_species_through_ase_calculator(model):
    atoms = Atoms(numbers=[28, 29, 42, 28], positions=POSITIONS, cell=CELL, pbc=True)
    atoms.calc = model.calculator()
    with pytest.raises(ValueError, match=r"Cu"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match=r"Cu"):
        atoms.get_forces()


def test_bad_atomic_numbers(model):
    with pytest.raises(ValueError, match=r"non-negative"):
        model.compute(POSITIONS, CELL, True, np.array([28, -1, 42, 28]))
    with pytest.raises(ValueError, match=r"500"):
        model.compute(POSITIONS, CELL, True, np.array([28, 500, 42, 28]))
    with pytest.raises(ValueError, match=r"integer"):
        model.compute(POSITIONS, CELL, True, NUMBERS.astype(float))
    with pytest.raises(ValueError, match=r"required"):
        model.compute(POSITIONS, CELL, True)


# ----------------------------------------------------------------------------- positions
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_positions(model, bad):
    positions = POSITIONS.copy()
    positions[1, 2] = bad
    for cell, pbc in ((CELL, True), (None, False)):
        with pytest.raises(ValueError, match=r"NaN or infinite"):
            model.compute(positions, cell, pbc, NUMBERS)
        with pytest.raises(ValueError, match=r"NaN or infinite"):
            model.descriptors(positions, cell, pbc, NUMBERS)


def overlapping(which):
    positions = POSITIONS.copy()
    if which == "same":
        positions[2] = positions[1]
    elif which == "image":            # atom 2 on a periodic image of atom 1
        positions[2] = positions[1] + CELL[0] - CELL[2]
    else:                             # closer than any physical distance, but not zero
        positions[2] = positions[1] + np.array([0.03, 0.0, 0.02])
    return positions


@pytest.mark.parametrize("which, periodic", [
    ("same", True), ("same", False), ("image", True), ("nearly", True), ("nearly", False)])
def test_overlapping_atoms(model, which, periodic):
    positions = overlapping(which)
    cell, pbc = (CELL, True) if periodic else (None, False)
    with pytest.raises(ValueError, match=r"overlapping"):
        model.compute(positions, cell, pbc, NUMBERS)


@pytest.mark.parametrize("which", ["same", "image"])
def test_overlapping_atoms_through_ase_calculator(model, which):
    atoms = Atoms(numbers=NUMBERS, positions=overlapping(which), cell=CELL, pbc=True)
    atoms.calc = model.calculator()
    with pytest.raises(ValueError, match=r"overlapping"):
        atoms.get_potential_energy()


def test_overlapping_atoms_descriptors(model):
    """The descriptor entry point must not return numbers for two atoms on one spot either."""
    with pytest.raises(ValueError, match=r"overlapping"):
        model.descriptors(overlapping("same"), None, False, NUMBERS)


def test_shape_mismatches(model):
    with pytest.raises(ValueError, match=r"4 positions but 3 atomic numbers"):
        model.compute(POSITIONS, CELL, True, NUMBERS[:3])
    with pytest.raises(ValueError, match=r"3 positions but 4 atomic numbers"):
        model.compute(POSITIONS[:3], CELL, True, NUMBERS)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        model.compute(POSITIONS[:, :2], CELL, True, NUMBERS)
    with pytest.raises(ValueError, match=r"numbers"):
        model.compute(POSITIONS, CELL, True, NUMBERS[None, :])
    with pytest.raises(ValueError, match=r"cell must have shape"):
        model.compute(POSITIONS, np.eye(2), True, NUMBERS)
    with pytest.raises(ValueError):
        model.compute(POSITIONS, CELL, [True, False], NUMBERS)


# ----------------------------------------------------------------------------- cell
@pytest.mark.parametrize("cell", [
    np.zeros((3, 3)),
    np.array([[4.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 0.0, 4.0]]),          # a parallel to b
    np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [4.0, 4.0, 0.0]]),          # c = a + b
    np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]]),          # c missing
])
def test_singular_periodic_cell(model, cell):
    with pytest.raises(ValueError, match=r"singular"):
        model.compute(POSITIONS, cell, True, NUMBERS)
    atoms = Atoms(numbers=NUMBERS, positions=POSITIONS, cell=cell, pbc=True)
    atoms.calc = model.calculator()
    with pytest.raises(ValueError, match=r"singular"):
        atoms.get_potential_energy()


def test_singular_cell_is_fine_where_not_periodic(model):
    cell = np.array([[4.5, 0.0, 0.0], [0.8, 4.4, 0.0], [0.0, 0.0, 0.0]])
    out = model.compute(POSITIONS, cell, (True, True, False), NUMBERS)
    assert np.isfinite(out["energy"])
    assert out["stress"] is None          # no volume: no stress rather than a division by zero


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_cell(model, bad):
    cell = CELL.copy()
    cell[1, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        model.compute(POSITIONS, cell, True, NUMBERS)


# ----------------------------------------------------------------------------- model settings
@pytest.mark.parametrize("cutoff", [0.0, -1.0, -5.0, np.nan, np.inf, 0.5])
def test_bad_cutoff(cutoff):
    with pytest.raises(ValueError, match=r"cutoff"):
        LatteModel(species=["Ni"], cutoff=cutoff, blocks=BLOCKS, hidden=(4,))


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"unknown activation 'relu'.*gaussian"):
        LatteModel(species=["Ni"], cutoff=4.0, blocks=BLOCKS, hidden=(4,), activation="relu")


@pytest.mark.parametrize("hidden", [(0,), (-3,), (8, 0), (8, -1)])
def test_bad_hidden_sizes(hidden):
    with pytest.raises(ValueError, match=r"hidden"):
        LatteModel(species=["Ni"], cutoff=4.0, blocks=BLOCKS, hidden=hidden)


@pytest.mark.parametrize("hidden", ["32,a", "8,,4", "", "0", "8,-1", "2.5"])
def test_bad_hidden_strings(hidden):
    with pytest.raises(ValueError, match=r"hidden"):
        LatteModel(species=["Ni"], cutoff=4.0, blocks=BLOCKS, hidden=hidden)


def test_hidden_string_is_the_tuple():
    model = LatteModel(species=["Ni"], cutoff=4.0, blocks=BLOCKS, hidden=" 8, 3")
    assert model.hidden == (8, 3)
    assert list(model.layer_sizes[1:]) == [8, 3, 1]


@pytest.mark.parametrize("hidden", [(2.5,), (8, 3.7)])
def test_fractional_hidden_sizes_are_rejected(hidden):
    """A layer of 2.5 units is a mistake; it must not silently become 2 units."""
    with pytest.raises(ValueError, match=r"hidden"):
        LatteModel(species=["Ni"], cutoff=4.0, blocks=BLOCKS, hidden=hidden)


@pytest.mark.parametrize("blocks, message", [
    ("8,i,j", r"exactly twice"),
    ("2,ijklm,ijklm", r"rank"),
    ("x,i,i", r"positive integer"),
    ("8,i,i:", r"block ''"),
    ("2,ii,jj", r"repeats"),
    ("", r"non-empty"),
])
def test_malformed_block_string(blocks, message):
    with pytest.raises(ValueError, match=message):
        LatteModel(species=["Ni"], cutoff=4.0, blocks=blocks, hidden=(4,))


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*fast"):
        LatteModel.preset("huge", ["Ni"])
    assert LatteModel.preset("fast", ["Ni"]).cutoff > 0      # the documented ones exist


@pytest.mark.parametrize("species, message", [
    (["Xx"], r"Xx"), (["Ni", "Ni"], r"duplicates"), ("Ni", r"list"), ([], r"non-empty"),
])
def test_bad_species_list(species, message):
    with pytest.raises(ValueError, match=message):
        LatteModel(species=species, cutoff=4.0, blocks=BLOCKS, hidden=(4,))


def test_bad_width():
    with pytest.raises(ValueError, match=r"width"):
        LatteModel(species=["Ni"], cutoff=4.0, blocks=BLOCKS, hidden=(4,), width=0.1)
    with pytest.raises(ValueError, match=r"width"):
        LatteModel(species=["Ni"], cutoff=4.0, blocks=BLOCKS, hidden=(4,), width=3.0)


def test_bad_parameters(model):
    S, B = model.params["centres"].shape
    with pytest.raises(ValueError, match=r"unknown parameter 'foo'"):
        model.set_parameters(foo=np.zeros(2))
    with pytest.raises(ValueError, match=r"'e0' has shape"):
        model.set_parameters(e0=np.zeros(3))
    with pytest.raises(ValueError, match=r"'sigma' contains NaN"):
        sigma = model.params["sigma"].copy()
        sigma[0, 1, 0] = np.nan
        model.set_parameters(sigma=sigma)
    with pytest.raises(ValueError, match=r"c \+ w <= cutoff"):
        model.set_parameters(widths=np.full((S, B), 3.0))
    with pytest.raises(ValueError, match=r"g_std"):
        model.set_parameters(g_std=np.zeros_like(model.params["g_std"]))
    # nothing of the failed calls was kept
    out = model.compute(POSITIONS, CELL, True, NUMBERS)
    assert np.isfinite(out["energy"])
    assert np.all(np.isfinite(model.params["sigma"]))
