"""Settings chosen from the training data (`lattenb.auto`), isolated-atom reference energies,
the convergence stop, the learning curve and parity plot of the CLI."""
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from test_training import random_frame, small_model

import lattenb
from lattenb import auto, cli, training
from lattenb.radial import names as radial_names
from lattenb.dataset import prepare_dataset
from lattenb.loss import LossWeights, loss_and_gradient
from lattenb.steps import OUTPUT_ENERGY_FACTORS, solve_output_layer


def isolated(symbol, energy, ctype="IsolatedAtom"):
    atoms = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
    atoms.info["config_type"] = ctype
    atoms.calc = SinglePointCalculator(atoms, energy=energy)
    return atoms


def test_isolated_atom_frames_give_e0_and_leave_the_training_set():
    rng = np.random.default_rng(1)
    frames = [random_frame(rng, 4, 4.0), isolated("Ni", -1.5), random_frame(rng, 5, 4.2),
              isolated("Mo", -2.25, "isolated_atom")]
    e0, rest = auto.isolated_atom_energies(frames)
    assert e0 == {"Ni": -1.5, "Mo": -2.25}
    assert len(rest) == 2 and all(len(a) > 1 for a in rest)
    # a one-atom frame without the marker is a training structure like any other
    plain = isolated("Ni", -1.0, ctype="bulk")
    assert auto.isolated_atom_energies([plain])[1] == [plain]
    with pytest.raises(ValueError, match="two isolated-atom energies for Ni"):
        auto.isolated_atom_energies([isolated("Ni", -1.5), isolated("Ni", -1.7)])


def test_read_e0_json_and_xyz(tmp_path):
    path = tmp_path / "e0.json"
    path.write_text(json.dumps({"H": -13.6, "8": -2041.5}))
    assert auto.read_e0(path) == {"H": -13.6, "O": -2041.5}
    xyz = tmp_path / "e0.xyz"
    write(xyz, [isolated("C", -1030.0), isolated("H", -13.5)])
    assert auto.read_e0(xyz) == {"C": -1030.0, "H": -13.5}
    path.write_text('{"Xx": 1.0}')
    with pytest.raises(ValueError, match="unknown element"):
        auto.read_e0(path)
    path.write_text('{"H": 1.0,')
    with pytest.raises(ValueError, match="not valid JSON"):
        auto.read_e0(path)
    with pytest.raises(ValueError, match="not found"):
        auto.read_e0(tmp_path / "missing.json")


def test_fit_keeps_isolated_atom_e0_fixed_and_its_output_solve_is_exact():
    rng = np.random.default_rng(2)
    frames = [random_frame(rng, n, 4.0 + 0.1 * n, stress=False) for n in (3, 4, 5, 4, 6)]
    e0 = {"Ni": -0.7, "Mo": 0.4}
    model = lattenb.fit(frames + [isolated("Ni", e0["Ni"]), isolated("Mo", e0["Mo"])],
                        cutoff=3.5, blocks="2,-:2,i,i", hidden=(4,), max_iter=5, log=None)
    assert np.array_equal(model.params["e0"], [e0[s] for s in model.species])
    assert model.fit_info["e0_isolated_atoms"] == e0
    # the final solve is the exact minimiser over the output weights and biases with e0 fixed,
    # at the energy weight its cross-validation chose
    data = prepare_dataset(frames, model)
    energy = model.fit_info["output_energy_weight"]
    assert energy in [10.0 * f for f in OUTPUT_ENERGY_FACTORS]
    w = LossWeights(energy, 1.0, 0.001, l2=1e-6)
    K = int(model.layer_sizes[-2])
    _, _, g = loss_and_gradient(model, data, w)
    scale = np.abs(g["mlp"]).max()
    assert np.abs(g["mlp"][:, -(K + 1):]).max() < 1e-7 * scale
    with pytest.raises(ValueError, match="no isolated-atom energy for Mo"):
        lattenb.fit(frames, e0={"Ni": -0.7}, cutoff=3.5, blocks="2,-:2,i,i", hidden=(4,),
                    max_iter=1, log=None)


def test_solve_with_fixed_e0_moves_the_bias_not_e0():
    rng = np.random.default_rng(3)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 4, 4.5), random_frame(rng, 3, 3.5)]
    model = small_model(seed=4)
    data = prepare_dataset(frames, model)
    w = LossWeights(30.0, 1.0, 0.5, l2=1e-3)
    e0 = model.params["e0"].copy()
    before = loss_and_gradient(model, data, w)[0]
    solve_output_layer(model, data, w, fixed_e0=True)
    after, _, g = loss_and_gradient(model, data, w)
    assert np.array_equal(model.params["e0"], e0) and after < before
    K = int(model.layer_sizes[-2])
    assert np.abs(g["mlp"][:, -(K + 1):]).max() < 1e-9 * np.abs(g["mlp"]).max()


def test_split_validation_and_has_stress():
    frames = [bulk("Cu", "fcc", a=3.6 + 0.01 * k) for k in range(25)]
    train, valid = auto.split_validation(frames)
    assert [f.cell[0, 1] for f in valid] == [frames[9].cell[0, 1], frames[19].cell[0, 1]]
    assert len(train) == 23 and not any(f is v for f in train for v in valid)
    assert auto.split_validation(frames[:19]) == (frames[:19], None)
    assert not auto.has_stress(frames)
    frames[3].calc = SinglePointCalculator(frames[3], energy=0.0, stress=np.zeros(6))
    assert auto.has_stress(frames)


def test_choose_cutoff_from_neighbour_shells():
    # fcc Cu at a = 3.61 Å: nearest neighbours at a / sqrt(2) = 2.553 Å, so 2 d1 = 5.1 Å
    rng = np.random.default_rng(5)
    frames = []
    for _ in range(4):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.positions += rng.normal(0, 0.005, atoms.positions.shape)
        frames.append(atoms)
    cutoff, why = auto.choose_cutoff(frames)
    assert cutoff == pytest.approx(5.1) and "nearest-neighbour" in why
    assert auto.choose_cutoff([molecule("CH3CH2OH")])[0] == auto.MOLECULE_CUTOFF


def test_choose_radial_splines_for_molecules_and_materials():
    mol = molecule("CH3CH2OH")
    family, why = auto.choose_radial([mol, mol.copy()])
    assert family == auto.MOLECULE_RADIAL == "spline" and "molecules" in why
    # one periodic structure makes it material data, with its own reason
    family, why = auto.choose_radial([mol, bulk("Cu")])
    assert family == auto.MATERIAL_RADIAL == "spline" and "materials" in why
    assert family in radial_names()


def plain_fit_settings(tmp_path, frames, *flags):
    """The settings `lattenb fit t.xyz -o m.npz FLAGS` chooses for `frames` (`cli.fit_settings`)."""
    args = cli.build_parser().parse_args(["fit", "t.xyz", "-o", str(tmp_path / "m.npz"), *flags])
    return cli.fit_settings(args, frames, log=lambda line: None)[2]


def labelled(atoms):
    """`atoms` with a reference energy of -1 eV and zero forces, as a training frame."""
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
    return atoms


def test_plain_fit_chooses_the_minibatch_phase_by_data_kind(tmp_path):
    """The fit's own rule (half of a time budget) for materials, no mini-batch phase for
    molecules; a given --adam-time is the user's."""
    mol, cu = labelled(molecule("CH3CH2OH")), labelled(bulk("Cu", cubic=True))
    assert plain_fit_settings(tmp_path, [cu] * 4)["adam_time"] is None
    assert plain_fit_settings(tmp_path, [mol] * 4)["adam_time"] == 0
    assert plain_fit_settings(tmp_path, [mol] * 4, "--adam-time", "2m")["adam_time"] == 120
    assert plain_fit_settings(tmp_path, [cu] * 4, "--adam-time", "0")["adam_time"] == 0


def test_plain_fit_chooses_hidden_layers_by_data_kind(tmp_path):
    """32:256 for periodic data, 32:16 for molecules; --hidden and --preset are the user's."""
    mol, cu = labelled(molecule("CH3CH2OH")), labelled(bulk("Cu", cubic=True))
    assert plain_fit_settings(tmp_path, [cu] * 4)["hidden"] == (32, 256)
    assert plain_fit_settings(tmp_path, [mol] * 4)["hidden"] == (32, 16)
    assert plain_fit_settings(tmp_path, [cu] * 4, "--hidden", "16,8")["hidden"] == "16,8"
    assert plain_fit_settings(tmp_path, [cu] * 4, "--preset", "fast")["hidden"] is None


def test_plain_fit_chooses_blocks_by_data_kind(tmp_path):
    mol = labelled(molecule("CH3CH2OH"))
    assert auto.choose_blocks([mol])[0] == auto.MOLECULE_BLOCKS
    assert auto.choose_blocks([mol, bulk("Cu")])[0] == auto.MATERIAL_BLOCKS   # one periodic

    def chosen(*flags):
        return plain_fit_settings(tmp_path, [mol] * 4, *flags)["blocks"]
    assert chosen() == auto.MOLECULE_BLOCKS
    cu = labelled(bulk("Cu", cubic=True))
    assert plain_fit_settings(tmp_path, [cu] * 4)["blocks"] == auto.MATERIAL_BLOCKS
    # a named preset, explicit blocks or a source of radial functions keep the choice the user's
    assert chosen("--preset", "fast") is None
    assert chosen("--blocks", "2,-:2,i,i") == "2,-:2,i,i"
    assert chosen("--radial-from", "src.npz") is None
    # a valid descriptor, with more terms than bodies (one per channel assignment)
    model = lattenb.LatteModel(["H", "C", "O"], blocks=auto.MOLECULE_BLOCKS, radial="spline")
    assert model.layout.n_terms > model.layout.n_bodies
    # the materials' blocks: the fast preset's plus rank-3 bodies
    ranks = lattenb.LatteModel(["Cu"], blocks=auto.MATERIAL_BLOCKS).layout.body_rank
    assert ranks.max() == 3


def test_plain_fit_chooses_the_weight_penalty_by_data_kind(tmp_path):
    mol = labelled(molecule("CH3CH2OH"))
    cu = labelled(bulk("Cu", cubic=True))
    assert auto.MOLECULE_L2 > auto.MATERIAL_L2 > 0

    def chosen(frames, *flags):
        return plain_fit_settings(tmp_path, frames, *flags)["l2"]
    assert chosen([mol] * 4) == auto.MOLECULE_L2
    assert chosen([mol, cu, mol, cu]) == auto.MATERIAL_L2     # one periodic structure: material
    assert chosen([mol] * 4, "--l2", "3e-7") == 3e-7
    # the choice reaches the fit (its default, lattenb.fit's, is the materials' value)
    rng = np.random.default_rng(3)
    frames = []
    for k in range(10):
        m = mol.copy()
        m.positions += rng.normal(0.0, 0.03, m.positions.shape)
        m.calc = SinglePointCalculator(m, energy=-1.0 + 0.01 * k, forces=rng.normal(0, 0.1, (len(m), 3)))
        frames.append(m)
    write(tmp_path / "mol.xyz", frames)
    assert cli.main(["fit", str(tmp_path / "mol.xyz"), "-o", str(tmp_path / "mol.npz"), "--blocks",
                     "2,-:2,i,i", "--hidden", "4", "--max-iter", "2", "--repulsion", "none"]) == 0
    assert lattenb.load(tmp_path / "mol.npz").fit_info["l2"] == auto.MOLECULE_L2


def test_fit_help_states_the_defaults_auto_chooses(capsys, monkeypatch):
    """`lattenb fit --help` gives each by-kind default from lattenb.auto's constants: it said
    polynomial radial functions for materials long after plain fit had chosen splines."""
    monkeypatch.setenv("COLUMNS", "2000")           # one line per option: no wrapped words
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    helps = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
             if line.strip().startswith("--")}
    assert f"(default: {auto.MATERIAL_HUBER:g} for periodic data with the mini-batch phase, " \
           f"else {auto.MOLECULE_HUBER:g})" in helps["--huber"]
    assert f"(default: {auto.MATERIAL_L2:g} for periodic data, else {auto.MOLECULE_L2:g})" \
        in helps["--l2"]
    hidden = [",".join(map(str, h)) for h in (auto.MATERIAL_HIDDEN, auto.MOLECULE_HIDDEN)]
    assert f"(default: {hidden[0]} for periodic data, else {hidden[1]};" in helps["--hidden"]
    assert auto.MOLECULE_RADIAL == auto.MATERIAL_RADIAL      # else: "... for periodic data, else"
    assert helps["--radial"].rstrip().endswith(f"(default {auto.MATERIAL_RADIAL})")
    assert cli._default_by_kind("spline", "polynomial") == "polynomial for periodic data, else spline"


def test_plain_fit_chooses_the_force_loss_by_data_kind(tmp_path):
    """A Huber force loss of width MATERIAL_HUBER for periodic data with the mini-batch phase,
    squared forces for molecules and for fits without the phase; --huber is the user's."""
    mol, cu = labelled(molecule("CH3CH2OH")), labelled(bulk("Cu", cubic=True))
    assert auto.MATERIAL_HUBER > 0 and auto.MOLECULE_HUBER == 0
    assert plain_fit_settings(tmp_path, [cu] * 4)["huber"] == auto.MATERIAL_HUBER
    assert plain_fit_settings(tmp_path, [mol, cu, mol])["huber"] == auto.MATERIAL_HUBER
    assert plain_fit_settings(tmp_path, [mol] * 4)["huber"] == auto.MOLECULE_HUBER
    assert plain_fit_settings(tmp_path, [cu] * 4, "--huber", "0")["huber"] == 0
    # with an iteration limit or --adam-time 0 there is no mini-batch phase, and squared forces
    assert plain_fit_settings(tmp_path, [cu] * 4, "--max-iter", "100")["huber"] == 0
    assert plain_fit_settings(tmp_path, [cu] * 4, "--adam-time", "0")["huber"] == 0
    assert plain_fit_settings(tmp_path, [cu] * 4, "--adam-time", "5m")["huber"] == 0.05
    # the phase's own rule decides (`training.minibatch_limits`): passes given with an
    # iteration limit run a phase, zero passes on a time budget do not
    assert plain_fit_settings(tmp_path, [cu] * 4, "--max-iter", "9", "--adam-epochs", "3")[
        "huber"] == 0.05
    assert plain_fit_settings(tmp_path, [cu] * 4, "--adam-epochs", "0")["huber"] == 0
    assert plain_fit_settings(tmp_path, [cu] * 4, "--max-iter", "9", "--huber", "0.1")["huber"] == 0.1
    assert plain_fit_settings(tmp_path, [mol] * 4, "--huber", "0.2")["huber"] == 0.2


def test_lbfgs_runs_with_one_blas_thread_and_restores_the_limit(monkeypatch):
    """L-BFGS-B's vector operations would wake BLAS threads that spin and take the cores from
    the Numba kernels: `fit` holds BLAS to one thread while it runs, and gives the limit back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from lattenb import steps

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    seen = []
    call = steps._Objective.__call__

    def recording(self, x):
        seen.append(blas_threads())
        return call(self, x)
    monkeypatch.setattr(steps._Objective, "__call__", recording)
    rng = np.random.default_rng(6)
    frames = [random_frame(rng, 4, 4.0, stress=False) for _ in range(3)]
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        lattenb.fit(frames, cutoff=3.5, blocks="2,-:2,i,i", hidden=(4,), max_iter=3, log=None)
        after = blas_threads()
    assert before and all(n == 2 for n in before)       # a BLAS library is loaded (NumPy's)
    assert seen and all(n == 1 for during in seen for n in during)
    assert after[:len(before)] == before and all(n == 2 for n in after)


def test_fit_stops_on_convergence(monkeypatch):
    monkeypatch.setattr(training, "CONVERGENCE_WINDOW", 5)
    monkeypatch.setattr(training, "CONVERGENCE_TOL", 0.5)   # "converged" once progress slows
    rng = np.random.default_rng(6)
    frames = [random_frame(rng, 4, 4.0, stress=False) for _ in range(3)]
    lines = []
    model = lattenb.fit(frames, cutoff=3.5, blocks="2,-:2,i,i", hidden=(4,), max_iter=1000,
                        log=lines.append, log_every=1000)
    assert model.fit_info["iterations"] < 1000
    assert model.fit_info["stopped"].startswith("converged")
    assert any("stopping at iteration" in line for line in lines)
    assert model.fit_curve and model.fit_curve[-1]["iteration"] == model.fit_info["iterations"]


def test_parse_duration():
    assert cli.parse_duration("90") == 90.0
    assert cli.parse_duration("30m") == 1800.0
    assert cli.parse_duration("1.5h") == 5400.0
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(ValueError):
            cli.parse_duration(bad)


def test_cli_fit_defaults_split_e0_curve_and_parity_plot(tmp_path, capsys):
    rng = np.random.default_rng(7)
    frames = [random_frame(rng, 4, 4.0 + 0.05 * k) for k in range(20)]
    train = tmp_path / "train.xyz"
    write(train, frames + [isolated("Ni", -0.5), isolated("Mo", 0.25)])
    out = tmp_path / "m.npz"
    assert cli.main(["fit", str(train), "-o", str(out), "--blocks", "2,-:2,i,i", "--hidden", "4",
                     "--max-iter", "4", "--log-every", "1"]) == 0
    text = capsys.readouterr().out
    assert "validation: every 10th training structure (2 of 20)" in text
    assert "isolated-atom energies from the training files" in text
    assert "cutoff" in text and "fitting stresses up to an isotropic offset" in text
    assert "radial family spline (periodic structures" in text
    model = lattenb.load(out)
    assert model.radial == "spline"
    assert model.fit_info["e0_isolated_atoms"] == {"Ni": -0.5, "Mo": 0.25}
    assert model.fit_info["stopped"] == "iteration limit"
    curve = (tmp_path / "m.curve.csv").read_text().splitlines()
    assert curve[0].startswith("iteration,time_s,loss") and len(curve) == 1 + 4
    assert (tmp_path / "m.curve.png").stat().st_size > 1000
    png = tmp_path / "parity.png"
    assert cli.main(["eval", str(out), str(train), "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "valid_forces_eV_per_A" in curve[0]
    with pytest.raises(SystemExit, match="not a duration"):
        cli.main(["fit", str(train), "-o", str(out), "--time", "soon"])


def test_cli_resume_with_the_automatic_split_reaches_the_same_model(tmp_path):
    """The automatic validation split is deterministic, so the same command with --resume sees
    the same data and reaches the model of an uninterrupted run."""
    rng = np.random.default_rng(8)
    train = tmp_path / "train.xyz"
    write(train, [random_frame(rng, 4, 4.0 + 0.05 * k) for k in range(20)])
    common = ["fit", str(train), "--blocks", "2,-:2,i,i", "--hidden", "4", "--cutoff", "3.5"]
    full, ck, resumed = tmp_path / "full.npz", tmp_path / "ck.npz", tmp_path / "resumed.npz"
    assert cli.main([*common, "-o", str(full), "--max-iter", "10"]) == 0
    assert cli.main([*common, "-o", str(tmp_path / "part.npz"), "--max-iter", "5",
                     "--checkpoint", str(ck), "--checkpoint-every", "5"]) == 0
    assert cli.main([*common, "-o", str(resumed), "--max-iter", "10", "--resume", str(ck)]) == 0
    a, b = lattenb.load(full), lattenb.load(resumed)
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name


def test_fit_without_matplotlib_still_writes_the_model_and_the_csv(tmp_path, capsys, monkeypatch):
    from lattenb import plots

    def no_matplotlib():
        raise ImportError("plots need matplotlib: pip install 'lattenb[plot]'")
    monkeypatch.setattr(plots, "_pyplot", no_matplotlib)
    rng = np.random.default_rng(9)
    train = tmp_path / "train.xyz"
    write(train, [random_frame(rng, 4, 4.0) for _ in range(3)])
    out = tmp_path / "m.npz"
    assert cli.main(["fit", str(train), "-o", str(out), "--blocks", "2,-:2,i,i", "--hidden", "4",
                     "--max-iter", "2", "--log-every", "1"]) == 0
    assert "install matplotlib" in capsys.readouterr().out
    assert out.is_file() and (tmp_path / "m.curve.csv").is_file()
    assert not (tmp_path / "m.curve.png").exists()
    with pytest.raises(SystemExit, match="matplotlib"):
        cli.main(["eval", str(out), str(train), "--plot", str(tmp_path / "p.png")])
