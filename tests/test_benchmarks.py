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
