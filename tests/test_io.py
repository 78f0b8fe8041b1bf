"""Model files: exact round trip, a plain no-pickle .npz with a JSON header, clear errors for bad
files."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from lattenb import LatteModel, load

ALL_PATTERNS = ("3,-:2,i,i:2,ij,ij:2,ijk,ijk:2,i,j,ij:2,ij,jk,ki:1,i,ij,jk,k:1,i,j,k,ijk"
                ":1,IJ,IJ:1,IJK,IJL,MNK,MNL:1,i,IJ,j")   # capitals: traceless bodies


@pytest.fixture(scope="module")
def model():
    m = LatteModel(species=["Ni", "Mo"], cutoff=4.0, blocks=ALL_PATTERNS, hidden=(8, 4),
                   activation="tanh", seed=4)
    rng = np.random.default_rng(0)
    S, T = m.params["g_mean"].shape
    # non-default values everywhere, with full float64 precision
    m.set_parameters(e0=rng.normal(size=S), g_mean=rng.normal(size=(S, T)),
                     g_std=rng.uniform(0.5, 2.0, size=(S, T)),
                     sigma=rng.normal(size=m.params["sigma"].shape),
                     mlp=rng.normal(size=m.params["mlp"].shape),
                     widths=m.params["widths"] * rng.uniform(0.8, 1.0, size=m.params["widths"].shape))
    return m


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("io") / "model.npz"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def atoms():
    rng = np.random.default_rng(1)
    a = Atoms("Ni4Mo4", cell=[[5.0, 0, 0], [1.0, 4.8, 0], [0.5, 0.7, 5.2]], pbc=True)
    base = np.array([[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]] * 2, dtype=float)
    base[4:] += 0.25
    a.set_scaled_positions(base + rng.uniform(-0.03, 0.03, size=base.shape))
    return a


def read_arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def write_arrays(path, arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def header_of(arrays):
    return json.loads(arrays["header"].tobytes().decode("utf-8"))


def with_header(arrays, header):
    out = dict(arrays)
    out["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    return out


def test_round_trip_is_bit_identical(model, saved, atoms):
    loaded = load(saved)
    assert loaded.species == model.species
    assert loaded.cutoff == model.cutoff
    assert loaded.blocks == model.blocks
    assert loaded.hidden == model.hidden
    assert loaded.activation == model.activation
    assert set(loaded.params) == set(model.params)
    for name, value in model.params.items():
        assert loaded.params[name].dtype == value.dtype == np.float64
        assert np.array_equal(loaded.params[name], value), name
    a = model.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    b = loaded.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert a["energy"] == b["energy"]
    assert np.array_equal(a["energies"], b["energies"])
    assert np.array_equal(a["forces"], b["forces"])
    assert np.array_equal(a["stress"], b["stress"])
    assert np.abs(a["forces"]).max() > 0


def test_fit_info_is_kept_as_strict_json(model, tmp_path):
    path = tmp_path / "fitted.npz"
    model.fit_info = {"iterations": 12, "stress_offset_GPa": -2.5, "best_valid_loss": float("inf")}
    try:
        model.save(path)
    finally:
        model.fit_info = {}
    text = read_arrays(path)["header"].tobytes().decode("utf-8")
    assert "Infinity" not in text                 # json.loads would accept it; strict readers not
    assert load(path).fit_info == {"iterations": 12, "stress_offset_GPa": -2.5,
                                   "best_valid_loss": None}


def test_saving_twice_gives_the_same_arrays(model, saved, tmp_path):
    again = tmp_path / "again.npz"
    load(saved).save(again)
    first, second = read_arrays(saved), read_arrays(again)
    assert set(first) == set(second)
    for name in first:
        assert np.array_equal(first[name], second[name]), name


def test_file_is_plain_npz_with_json_header(model, saved):
    arrays = read_arrays(saved)          # allow_pickle=False: nothing pickled inside
    assert arrays["header"].dtype == np.uint8
    header = header_of(arrays)
    for key in ("format_version", "species", "cutoff", "blocks", "activation", "units"):
        assert key in header, key
    assert header["format_version"] == 1
    assert header["species"] == ["Ni", "Mo"]
    assert header["cutoff"] == model.cutoff
    assert header["blocks"] == model.blocks
    assert header["activation"] == "tanh"
    assert header["hidden"] == [8, 4]
    assert header["units"]["energy"] == "eV"
    assert header["units"]["length"] in ("Angstrom", "Å", "A")
    for name, value in model.params.items():
        assert np.array_equal(arrays[name], value)
    assert zipfile.is_zipfile(saved)


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated|corrupt|cannot read"):
        load(bad)


def test_array_with_wrong_shape(saved, tmp_path):
    arrays = read_arrays(saved)
    arrays["centres"] = arrays["centres"].reshape(-1)
    bad = tmp_path / "shape.npz"
    write_arrays(bad, arrays)
    with pytest.raises(ValueError, match=r"centres.*shape"):
        load(bad)
    arrays = read_arrays(saved)
    arrays["mlp"] = arrays["mlp"][:, :-1]
    write_arrays(bad, arrays)
    with pytest.raises(ValueError, match=r"mlp.*shape"):
        load(bad)


def test_missing_array(saved, tmp_path):
    arrays = read_arrays(saved)
    del arrays["sigma"]
    bad = tmp_path / "missing.npz"
    write_arrays(bad, arrays)
    with pytest.raises(ValueError, match=r"sigma"):
        load(bad)


def test_non_finite_parameter(saved, tmp_path):
    arrays = read_arrays(saved)
    arrays["mlp"] = arrays["mlp"].copy()
    arrays["mlp"][1, 3] = np.nan
    bad = tmp_path / "nan.npz"
    write_arrays(bad, arrays)
    with pytest.raises(ValueError, match=r"mlp.*NaN"):
        load(bad)


def test_newer_format_version(saved, tmp_path):
    arrays = read_arrays(saved)
    header = header_of(arrays)
    header["format_version"] = 99
    bad = tmp_path / "v99.npz"
    write_arrays(bad, with_header(arrays, header))
    with pytest.raises(ValueError, match=r"version 99.*newer"):
        load(bad)


def test_header_not_json(saved, tmp_path):
    arrays = read_arrays(saved)
    arrays["header"] = np.frombuffer(b"{not json", dtype=np.uint8)
    bad = tmp_path / "badheader.npz"
    write_arrays(bad, arrays)
    with pytest.raises(ValueError, match=r"header"):
        load(bad)


def test_header_json_not_an_object(saved, tmp_path):
    arrays = read_arrays(saved)
    arrays["header"] = np.frombuffer(b"[1, 2, 3]", dtype=np.uint8)
    bad = tmp_path / "listheader.npz"
    write_arrays(bad, arrays)
    with pytest.raises(ValueError, match=r"header|not a lattenb model"):
        load(bad)


def test_header_missing_field(saved, tmp_path):
    arrays = read_arrays(saved)
    header = header_of(arrays)
    del header["blocks"]
    bad = tmp_path / "noblocks.npz"
    write_arrays(bad, with_header(arrays, header))
    with pytest.raises(ValueError, match=r"blocks"):
        load(bad)


def test_non_model_npz(tmp_path):
    bad = tmp_path / "other.npz"
    write_arrays(bad, {"a": np.arange(3.0), "b": np.eye(2)})
    with pytest.raises(ValueError, match=r"not a lattenb model"):
        load(bad)


def test_npz_with_foreign_header(saved, tmp_path):
    arrays = read_arrays(saved)
    header = header_of(arrays)
    header["format"] = "something-else"
    bad = tmp_path / "foreign.npz"
    write_arrays(bad, with_header(arrays, header))
    with pytest.raises(ValueError, match=r"not a lattenb model"):
        load(bad)


def test_random_garbage(tmp_path):
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(np.random.default_rng(2).bytes(4096))
    with pytest.raises(ValueError, match=r"cannot read"):
        load(bad)


def test_plain_npy_file(tmp_path):
    """A .npy (one array, not an archive) is not a model file either."""
    bad = tmp_path / "array.npy"
    np.save(bad, np.arange(10.0))
    with pytest.raises(ValueError, match=r"not a lattenb model|cannot read"):
        load(bad)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "does-not-exist.npz")


# ----------------------------------------------------------------------------- old files
FIXTURES = Path(__file__).parent / "data"


def test_model_file_from_before_the_stage_layout_gives_bit_identical_results():
    """tests/data/model_cfef4d2.npz and its outputs were written by commit cfef4d2, before the
    code was reorganised by stage (and before model files named their radial family): the file
    loads as the polynomial family and gives the same energies, forces, stress and descriptors
    (to rounding: the last bits depend on the CPU's fused multiply-adds, and the terms whose
    pattern now contracts through intermediates, `blocks.pattern_path`, sum in another order)."""
    model = load(FIXTURES / "model_cfef4d2.npz")
    assert model.radial == "polynomial"
    with np.load(FIXTURES / "model_cfef4d2_outputs.npz", allow_pickle=False) as ref:
        ref = {name: ref[name] for name in ref.files}
    args = (ref["positions"], ref["cell"], ref["pbc"], ref["numbers"])
    out = model.compute(*args)
    for name in ("energy", "energies", "forces", "stress", "virial"):
        # to rounding, not bitwise: Numba's fastmath fuses multiply-adds per CPU (a machine with
        # FMA gave forces that differ in the last bits from those this file was written with)
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(out[name], ref[name], rtol=0, atol=1e-13 * scale, err_msg=name)
    G = model.descriptors(*args)
    from lattenb.blocks import pattern_path
    paired = np.array([pattern_path([b.lower() for b in block.bodies]) is not None
                       for block in model.layout.blocks for _ in range(block.n)])
    assert paired.any()
    scale = np.abs(ref["descriptors"]).max(axis=0)
    assert np.all(np.abs(G - ref["descriptors"]) <= 1e-13 * scale)
