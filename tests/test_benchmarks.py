"""Bookkeeping of the benchmark scripts (their timings and accuracies are measured, not tested)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mlearn():
    spec = importlib.util.spec_from_file_location("mlearn", ROOT / "benchmarks" / "mlearn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlearn_keeps_rows_only_from_a_run_with_the_same_setting(tmp_path):
    mlearn = _mlearn()
    setting = mlearn.SETTING
    limits = {"max_iter": 4000, "max_time_s": 840}
    rows = [{"element": "Ni", "energy_mae": 0.5}, {"element": "Cu", "energy_mae": 0.3}]
    path = tmp_path / "mlearn.json"
    assert mlearn.previous_rows(path, setting, limits, ["Ni"]) == []        # no earlier run
    # as written by main(): tuples became lists, and a float limit compares equal to an int one
    path.write_text(json.dumps({"setting": setting, "limits": {"max_iter": 4000, "max_time_s": 840.0},
                                "rows": rows}))
    assert mlearn.previous_rows(path, setting, limits, ["Ni"]) == [rows[1]]
    assert mlearn.previous_rows(path, setting, limits, ["Ni", "Cu"]) == []
    other = dict(setting, output_weights=(1000.0, 1.0, 0.001))
    assert mlearn.previous_rows(path, other, limits, ["Ni"]) == []
    assert mlearn.previous_rows(path, setting, dict(limits, max_time_s=300), ["Ni"]) == []
    path.write_text(json.dumps({"setting": setting, "rows": rows}))         # older file, no limits
    assert mlearn.previous_rows(path, setting, limits, ["Ni"]) == []


def test_nbmotaw_leave_out_names_a_binary_of_the_four_elements():
    import pytest
    from ase import Atoms
    spec = importlib.util.spec_from_file_location("nbmotaw", ROOT / "benchmarks" / "nbmotaw.py")
    nbmotaw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nbmotaw)
    assert nbmotaw.parse_pair("NbMo") == nbmotaw.parse_pair("MoNb") == frozenset({"Nb", "Mo"})
    for bad in ("NbNb", "NbCu", "Nb", "NbMoTa", "nbmo"):
        with pytest.raises(SystemExit, match="--leave-out takes two of"):
            nbmotaw.parse_pair(bad)
    # what the experiment drops: structures with exactly those two elements, not their unaries
    frames = [Atoms("NbMo"), Atoms("Nb2"), Atoms("MoTa"), Atoms("Mo3Nb")]
    kept = [a for a in frames if nbmotaw.elements_of(a) != nbmotaw.parse_pair("NbMo")]
    assert [a.get_chemical_formula() for a in kept] == ["Nb2", "MoTa"]
