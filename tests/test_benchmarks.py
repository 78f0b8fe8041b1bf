"""Bookkeeping of the benchmark scripts (their timings and accuracies are measured, not tested)."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name):
    """The module of benchmarks/<name>.py (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlearn_keeps_rows_only_from_a_run_with_the_same_setting(tmp_path):
    mlearn = _benchmark("mlearn")
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


def test_mlearn_cutoff_option_parses_and_names_bad_items():
    mlearn = _benchmark("mlearn")
    assert mlearn.parse_cutoffs("Ni=4.5, Cu=4.6") == {"Ni": 4.5, "Cu": 4.6}
    for text, message in [("Xx=4.5", "one of Ni, Cu, Li, Mo"), ("Ni=abc", "not a number"),
                          ("Ni", "not a number"), ("Ni=40", "outside 1-12")]:
        with pytest.raises(ValueError, match=message):
            mlearn.parse_cutoffs(text)


def test_mlearn_plain_mode_fits_what_plain_lattenb_fit_fits(tmp_path):
    """--plain: the model is the one `lattenb fit TRAIN -o M` writes for the same file and
    budget, with the flags given passed on (here --huber and a cutoff)."""
    import numpy as np
    from ase.io import read, write

    import lattenb
    from lattenb import cli
    mlearn = _benchmark("mlearn")
    frames = read(ROOT / "lattenb" / "data" / "Cu_train_subset.xyz", ":")[:20]
    setting = {"plain": True, "flags": {"huber": 0.05, "hidden": "4"}, "cutoffs": {"Cu": 4.2}}
    model, train = mlearn.fit_plain("Cu", frames, 2, None, setting, log=lambda line: None)
    write(tmp_path / "train.xyz", frames)
    out = tmp_path / "m.npz"
    assert cli.main(["fit", str(tmp_path / "train.xyz"), "-o", str(out), "--max-iter", "2",
                     "--huber", "0.05", "--hidden", "4", "--cutoff", "4.2"]) == 0
    reference = lattenb.load(out)
    assert len(train) == 18                                        # plain fit's own split
    assert model.fit_info["huber"] == 0.05 and model.cutoff == 4.2 and model.hidden == (4,)
    for name, value in reference.params.items():
        np.testing.assert_allclose(model.params[name], value, rtol=1e-12, atol=1e-14,
                                   err_msg=name)


def test_nbmotaw_leave_out_names_a_binary_of_the_four_elements():
    from ase import Atoms
    nbmotaw = _benchmark("nbmotaw")
    assert nbmotaw.parse_pair("NbMo") == nbmotaw.parse_pair("MoNb") == frozenset({"Nb", "Mo"})
    for bad in ("NbNb", "NbCu", "Nb", "NbMoTa", "nbmo"):
        with pytest.raises(SystemExit, match="--leave-out takes two of"):
            nbmotaw.parse_pair(bad)
    # what the experiment drops: structures with exactly those two elements, not their unaries
    frames = [Atoms("NbMo"), Atoms("Nb2"), Atoms("MoTa"), Atoms("Mo3Nb")]
    kept = [a for a in frames if nbmotaw.elements_of(a) != nbmotaw.parse_pair("NbMo")]
    assert [a.get_chemical_formula() for a in kept] == ["Nb2", "MoTa"]


def test_pareto_times_saved_models_and_says_where_a_cost_comes_from(tmp_path, monkeypatch):
    pareto = _benchmark("pareto")
    from lattenb.model import LatteModel
    monkeypatch.setattr(pareto, "model_path", lambda tag, element: tmp_path / f"{tag}_{element}.npz")
    setting = {"preset": "fast", "blocks": "4,-:4,i,i:2,ijk,ijk", "radial": None,
               "cutoffs": {"Ni": 4.5, "Cu": 4.0}, "hidden": [8, 16]}
    saved = LatteModel(["Ni"], cutoff=3.0, blocks="2,-", hidden=(4,))
    saved.save(tmp_path / "fast_Ni.npz")
    timed = []
    assert pareto.lattenb_cost("fast", "Ni", setting, lambda m: timed.append(m) or 9.5) == (9.5, "this run")
    assert (timed[0].cutoff, timed[0].blocks, timed[0].hidden) == (3.0, "2,-", (4,))    # the file's
    cost, source = pareto.lattenb_cost("fast", "Cu", setting, lambda m: timed.append(m) or 13.0)
    assert (cost, source) == (13.0, "this run, untrained model of the same shape")
    stand_in = timed[1]        # no model file: an untrained model with the setting's shape
    assert stand_in.species == ("Cu",) and stand_in.cutoff == 4.0 and tuple(stand_in.hidden) == (8, 16)
    assert stand_in.blocks == saved.__class__(["Cu"], blocks="4,-:4,i,i:2,ijk,ijk").blocks
    rows = [{"element": "Ni", "model": "lattenb fast", "energy_mae": 0.4, "force_mae": 0.02,
             "cost_us_per_atom_step": 9.5, "cost_source": "this run"},
            {"element": "Ni", "model": "lattenb mlearn", "energy_mae": 0.3, "force_mae": 0.018,
             "cost_us_per_atom_step": 20.0, "cost_source": "this run, untrained model of the same shape"},
            {"element": "Ni", "model": "qSNAP", "energy_mae": 0.78, "force_mae": 0.031,
             "cost_us_per_atom_step": 83.0, "cost_source": "this run (LAMMPS, 1 thread)"},
            {"element": "Ni", "model": pareto.mtp_label("/x/untrained_mtps/16.mtp"), "energy_mae": 0.48,
             "force_mae": 0.01, "cost_us_per_atom_step": 90.0,
             "cost_source": "this run (motep C engine, 1 thread, cutoff 4.5 Å); published MTP error"},
            {"element": "Ni", "model": "MTP", "energy_mae": 0.48, "force_mae": 0.01,
             "cost_us_per_atom_step": None, "cost_source": "no model here"}]
    table = pareto.markdown(rows).splitlines()
    assert table[3] == ("| Ni | lattenb mlearn | 0.30 | 0.018 | 20.0 | this run, untrained model of "
                        "the same shape |")
    assert table[5] == ("| Ni | MTP 16.mtp | 0.48 | 0.010 | 90.0 | this run (motep C engine, 1 thread, "
                        "cutoff 4.5 Å); published MTP error |")
    assert table[6] == "| Ni | MTP | 0.48 | 0.010 | - | no model here |"
    pareto.plot(rows, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mtp_reference_is_left_out_without_motep(monkeypatch, capsys):
    """MTP is timed through the optional motep package; without it the row says "not timed"."""
    import sys

    from ase.build import bulk
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_md
    monkeypatch.setitem(sys.modules, "motep", None)          # import motep raises ImportError
    monkeypatch.setitem(sys.modules, "motep.calculator", None)
    assert bench_md.time_motep_mtp(bulk("Ni"), "16.mtp", 5.0, 2, 1) is None
    assert "pip install motep" in capsys.readouterr().out


def test_committee_validates_on_the_split_its_members_were_fitted_with():
    """benchmarks/committee.py: plain fit holds out structures 9, 19, ... and mlearn.py's
    benchmark setting 0, 10, 20, ...; a committee's validation rows must use the members' own."""
    committee = _benchmark("committee")
    frames = list(range(25))
    assert committee.validation(frames, "plain") == [9, 19]
    assert committee.validation(frames, "setting") == [0, 10, 20]


def test_gauss_newton_residuals_give_the_loss_its_gradient_and_adjoint_products():
    """benchmarks/gauss_newton.py: r.r + l2 |M x|^2 is the training loss, 2 (J^T r + l2 M x) its
    gradient (the tangent-reverse pass, checked against finite differences in
    test_training), and the finite-difference J v is the adjoint of J^T u: u.(J v) = (J^T u).v."""
    import numpy as np
    from test_training import random_frame, small_model

    from lattenb.dataset import prepare_dataset
    from lattenb.loss import LossWeights, loss_and_gradient
    from lattenb.steps import ParameterVector
    gauss_newton = _benchmark("gauss_newton")
    rng = np.random.default_rng(3)
    frames = [random_frame(rng, 5, 5.0, stress=False) for _ in range(4)]
    model = small_model()
    data = prepare_dataset(frames, model, keep_pairs=True)
    weights = LossWeights(10.0, 1.0, 0.0, l2=1e-3)
    vector = ParameterVector(model)
    x = vector.get()
    maps = gauss_newton.ResidualMap(vector, data, weights)
    r = maps.residuals(x)
    loss, _, grad = loss_and_gradient(model, data, weights)
    assert maps.loss(x, r) == pytest.approx(loss, rel=1e-12)
    expected = vector.gradient(grad)
    got = 2.0 * (maps.vjp(r) + weights.l2 * maps.mask * x)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
    v = rng.normal(size=x.size) * ~vector.frozen
    u = rng.normal(size=r.size)
    Jv = maps.jvp(x, r, v)
    vector.set(x)
    assert u @ Jv == pytest.approx(maps.vjp(u) @ v, rel=1e-4)
    with pytest.raises(ValueError, match="squared energy and force"):
        gauss_newton.ResidualMap(vector, data, LossWeights(huber=0.05))
