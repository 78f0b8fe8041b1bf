"""Training: the exact loss gradient (finite differences per parameter group), the loss bookkeeping,
the L-BFGS fit (determinism, validation, checkpoints, exact resume, Ctrl-C) and the CLI."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

import lattenb
from lattenb import cli
from lattenb.conventions import EV_A3_TO_GPA
from lattenb.dataset import prepare_dataset
from lattenb.loss import LossWeights, loss_and_gradient, stress_residuals
from lattenb.model import LatteModel
from lattenb.predict import predict
from lattenb.steps import OUTPUT_ENERGY_FACTORS, solve_output_layer

DATA = Path(lattenb.__file__).parent / "data"
BLOCKS = ("2,-:2,i,i:1,ij,ij:1,ijk,ijk:1,i,j,ij:1,ij,jk,ki:1,i,ij,jk,k:1,i,j,k,ijk"
          ":1,ijkl,ijkl:1,ij,ijkl,kl")


def random_frame(rng, n, size, pbc=True, forces=True, stress=True, min_dist=1.6):
    for _ in range(1000):
        cell = np.diag([size] * 3) + rng.normal(0.0, 0.3, (3, 3))
        pos = rng.uniform(0, 1, (n, 3)) @ cell
        atoms = Atoms(numbers=rng.choice([28, 42], n), positions=pos, cell=cell, pbc=pbc)
        if n == 1 or min(atoms.get_all_distances(mic=pbc)[np.triu_indices(n, 1)]) > min_dist:
            break
    results = {"energy": float(rng.normal() * n)}
    if forces:
        results["forces"] = rng.normal(size=(n, 3))
    if stress:
        results["stress"] = rng.normal(size=6) * 0.01
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def assert_round_trip(model, path, atoms):
    """Save model to path, load it back, and check every parameter and the energy, forces and
    stress of atoms are bit-identical. Returns the loaded model."""
    model.save(path)
    loaded = lattenb.load(path)
    for key, value in model.params.items():
        assert np.array_equal(loaded.params[key], value), key
    a = model.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    b = loaded.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    for key in ("energy", "forces", "stress"):
        assert np.array_equal(a[key], b[key]), key
    return loaded


def small_model(seed=1, activation="gaussian", blocks=BLOCKS):
    rng = np.random.default_rng(seed)
    m = LatteModel(["Ni", "Mo"], cutoff=3.8, blocks=blocks, hidden=(6, 4), activation=activation,
                   seed=seed)
    m.set_parameters(g_std=rng.uniform(1.0, 3.0, m.params["g_std"].shape),
                     g_mean=rng.normal(size=m.params["g_mean"].shape) * 0.1,
                     e0=rng.normal(size=2))
    return m


def fd_check(model, data, weights, rng, per_group=10, h=1e-5, zero_groups=()):
    """Largest relative error (per group: max |fd - analytic| / max |analytic|) of dL/dparams.

    zero_groups: groups whose gradient must vanish (e.g. e0 when the energy weight is 0)."""
    _, _, grad = loss_and_gradient(model, data, weights)
    worst = {}
    for name in (n for n in model.parameter_names if n not in ("g_mean", "g_std")):
        p0 = model.params[name].copy()
        flat = p0.ravel()
        picks = rng.choice(flat.size, min(per_group, flat.size), replace=False)
        errors, scale = [], np.max(np.abs(grad[name]))
        for k in picks:
            def loss_at(value):
                p = flat.copy()
                p[k] = value
                model.set_parameters(**{name: p.reshape(p0.shape)})
                return loss_and_gradient(model, data, weights, with_gradient=False)[0]
            x = flat[k]
            # fourth-order central difference: truncation error far below the 1e-6 tolerance
            fd = (8 * (loss_at(x + h) - loss_at(x - h)) - (loss_at(x + 2 * h) - loss_at(x - 2 * h))) / (12 * h)
            errors.append(abs(fd - grad[name].ravel()[k]))
        model.set_parameters(**{name: p0})
        if name in zero_groups:
            assert scale == 0 and max(errors) < 1e-9, (name, scale, max(errors))
            continue
        assert scale > 0, f"gradient of {name} is identically zero: the check would be vacuous"
        worst[name] = max(errors) / scale
    return worst


@pytest.mark.parametrize("activation", ["gaussian", "tanh", "silu"])
def test_gradient_matches_finite_differences(activation):
    rng = np.random.default_rng(0)
    # periodic two-species frames of different sizes, with and without stress and forces
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 8, 5.0, stress=False),
              random_frame(rng, 3, 3.2), random_frame(rng, 4, 4.5, forces=False)]
    model = small_model(activation=activation)
    data = prepare_dataset(frames, model)
    worst = fd_check(model, data, LossWeights(1.0, 2.0, 0.5, l2=1e-3), rng)
    print(f"\nlargest relative gradient error ({activation}):", worst)
    assert max(worst.values()) < 1e-6, worst


def test_gradient_with_traceless_bodies():
    """Capital-letter bodies: the projection of A and Adot and the adjoint of both."""
    rng = np.random.default_rng(21)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 6, 4.6, stress=False),
              random_frame(rng, 3, 3.2)]
    model = small_model(seed=5, blocks="2,-:1,IJ,IJ:1,IJK,IJK:1,I,IJ,J:1,IJ,JK,KI:1,IJ,JKL,IKL:"
                                       "1,I,J,K,IJK:1,i,IJ,j:1,IJKL,IJKL")
    data = prepare_dataset(frames, model)
    worst = fd_check(model, data, LossWeights(1.0, 2.0, 0.5, l2=1e-3), rng, per_group=6)
    print("\nlargest relative gradient error (traceless):", worst)
    assert max(worst.values()) < 1e-6, worst


def test_gradient_with_shared_channels():
    """"nc" blocks: a body's adjoint collects from every term that contracts it."""
    rng = np.random.default_rng(23)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 6, 4.6, stress=False),
              random_frame(rng, 3, 3.2)]
    model = small_model(seed=6, blocks="2c,-:2c,i,i:2c,I,IJ,J:2c,ij,jk,ki")
    assert model.layout.n_terms == 2 + 3 + 6 + 4 and model.layout.n_bodies == 2 + 2 + 4 + 2
    data = prepare_dataset(frames, model)
    worst = fd_check(model, data, LossWeights(1.0, 2.0, 0.5, l2=1e-3), rng, per_group=6)
    print("\nlargest relative gradient error (shared channels):", worst)
    assert max(worst.values()) < 1e-6, worst


def test_gradient_force_only_and_stress_only():
    rng = np.random.default_rng(3)
    frames = [random_frame(rng, 6, 4.2), random_frame(rng, 2, 3.0)]
    model = small_model(seed=4)
    data = prepare_dataset(frames, model)
    for weights in (LossWeights(0.0, 1.0, 0.0), LossWeights(0.0, 0.0, 1.0)):
        worst = fd_check(model, data, weights, rng, per_group=6, zero_groups=("e0",))
        assert max(worst.values()) < 1e-6, (weights, worst)


@pytest.mark.parametrize("weights", [LossWeights(1.0, 1.0, 2.0, stress_offset=True),
                                     LossWeights(1.0, 1.0, 0.5, huber=0.7)])
def test_gradient_with_fitted_stress_offset_or_huber_forces(weights):
    """The fitted stress offset's and the Huber force penalty's gradients (the latter with
    residuals on both sides of its width)."""
    rng = np.random.default_rng(11)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 6, 4.4, stress=False),
              random_frame(rng, 3, 3.2)]
    model = small_model(seed=12)
    data = prepare_dataset(frames, model)
    if weights.huber:
        res = np.abs(predict(model, data)[1] - data.forces)
        assert (res < 0.6).sum() >= 5 and (res > 0.8).sum() >= 5     # both branches checked
    worst = fd_check(model, data, weights, rng, per_group=6)
    assert max(worst.values()) < 1e-6, worst


def test_stress_offset_removes_a_constant_isotropic_shift():
    """Shifting every reference stress by p*I leaves the offset-fitted loss unchanged, moves the
    fitted offset by exactly -p, and changes the plain loss."""
    rng = np.random.default_rng(13)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 4, 4.0), random_frame(rng, 6, 4.4)]
    model = small_model(seed=14)
    p = 1.7 / EV_A3_TO_GPA                      # 1.7 GPa in eV/Å^3
    shifted = []
    for atoms in frames:
        a = atoms.copy()
        results = dict(atoms.calc.results)
        results["stress"] = results["stress"] + p * np.array([1, 1, 1, 0, 0, 0])
        a.calc = SinglePointCalculator(a, **results)
        shifted.append(a)
    with_offset = LossWeights(0.0, 0.0, 1.0, stress_offset=True)
    d0, d1 = prepare_dataset(frames, model), prepare_dataset(shifted, model)
    l0, _, g0 = loss_and_gradient(model, d0, with_offset)
    l1, _, g1 = loss_and_gradient(model, d1, with_offset)
    assert l1 == pytest.approx(l0, rel=1e-10)
    np.testing.assert_allclose(g1["mlp"], g0["mlp"], rtol=1e-8, atol=1e-14)
    S = predict(model, d0)[2]
    o0, o1 = stress_residuals(S, d0, True)[1], stress_residuals(S, d1, True)[1]
    assert o1 - o0 == pytest.approx(-1.7, abs=1e-10)
    # without the offset, the shift costs about 1.7^2 / 2 GPa^2 (3 of 6 components)
    plain = LossWeights(0.0, 0.0, 1.0)
    plain0, plain1 = (loss_and_gradient(model, d, plain, False)[0] for d in (d0, d1))
    assert plain1 > plain0 + 0.5 and l0 <= plain0


@pytest.mark.parametrize("repulsion", [False, True])
@pytest.mark.parametrize("weights", [LossWeights(30.0, 1.0, 0.5, l2=1e-3, stress_offset=True),
                                     LossWeights(1.0, 0.0, 0.0), LossWeights(1.0, 2.0, 1.0)])
def test_output_layer_solve_is_the_exact_minimiser(weights, repulsion):
    """After the solve the loss gradient with respect to the output weights and e0 (computed by
    the independent tangent/reverse kernel) vanishes, and the loss has not increased; also with
    a core repulsion that reaches the training pairs (it is no part of the solve's columns)."""
    rng = np.random.default_rng(21)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 8, 5.0, stress=False),
              random_frame(rng, 3, 3.2), random_frame(rng, 4, 4.5, forces=False)]
    model = small_model(seed=22)
    if repulsion:
        model.set_repulsion("zbl", np.tile([2.0, 2.6], (2, 2, 1)))
    data = prepare_dataset(frames, model)
    K = int(model.layer_sizes[-2])
    before, _, g0 = loss_and_gradient(model, data, weights)
    bias = model.params["mlp"][:, -1].copy()
    solve_output_layer(model, data, weights)
    after, _, g1 = loss_and_gradient(model, data, weights)
    assert after < before
    scale = max(np.abs(g0["mlp"][:, -(K + 1):-1]).max(), np.abs(g0["e0"]).max())
    assert np.abs(g1["mlp"][:, -(K + 1):-1]).max() < 1e-9 * scale
    assert np.abs(g1["e0"]).max() < 1e-9 * scale
    assert np.array_equal(model.params["mlp"][:, -1], bias)   # the bias duplicates e0: kept


def test_output_layer_solve_with_huber_forces_descends_to_its_minimiser():
    """With a Huber force penalty the solve is one reweighted least-squares step: each solve
    lowers the Huber loss, and repeated solves reach the output layer where the loss gradient
    (from the tangent/reverse kernel) vanishes."""
    rng = np.random.default_rng(25)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 8, 5.0, stress=False),
              random_frame(rng, 6, 4.2), random_frame(rng, 4, 4.5)]
    model = small_model(seed=22)
    data = prepare_dataset(frames, model)
    weights = LossWeights(1.0, 1.0, 0.5, l2=1e-4, huber=0.5)
    K = int(model.layer_sizes[-2])
    losses = [loss_and_gradient(model, data, weights, False)[0]]
    for _ in range(60):
        solve_output_layer(model, data, weights)
        losses.append(loss_and_gradient(model, data, weights, False)[0])
    assert all(b <= a * (1 + 1e-12) for a, b in zip(losses, losses[1:]))
    _, _, g = loss_and_gradient(model, data, weights)
    res = np.abs(predict(model, data)[1] - data.forces)
    assert (res > 0.5).sum() >= 5                                 # the linear branch is used
    plain = small_model(seed=22)
    solve_output_layer(plain, data, replace(weights, huber=0.0))
    g_plain = loss_and_gradient(plain, data, weights)[2]          # not the Huber minimiser
    scale = np.abs(g_plain["mlp"][:, -(K + 1):-1]).max()
    assert np.abs(g["mlp"][:, -(K + 1):-1]).max() < 1e-5 * scale
    assert np.abs(g["e0"]).max() < 1e-5 * scale


def test_output_layer_solve_leaves_absent_species_alone():
    rng = np.random.default_rng(23)
    frames = [random_frame(rng, 4, 4.0) for _ in range(3)]
    for atoms in frames:
        atoms.numbers[:] = 28                                  # Ni only; the model knows Mo too
    model = small_model(seed=24)
    mo = model.species.index("Mo")
    mlp_mo, e0_mo = model.params["mlp"][mo].copy(), model.params["e0"][mo]
    solve_output_layer(model, prepare_dataset(frames, model), LossWeights(10.0, 1.0, 0.1))
    assert np.array_equal(model.params["mlp"][mo], mlp_mo) and model.params["e0"][mo] == e0_mo


def test_output_layer_energy_weight_by_cross_validation():
    """choose_output_layer: every candidate's cross-validated MAE is that of the held-out
    structures predicted (by predict, an independent path) by models solved by
    solve_output_layer on the other structures, one structure per fold; the rows come best
    score first (each error relative to the lowest); the model ends at the full solve at the
    best row's energy weight."""
    from lattenb.steps import choose_output_layer
    rng = np.random.default_rng(26)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 6, 4.4, stress=False),
              random_frame(rng, 4, 3.8), random_frame(rng, 5, 4.1, forces=False),
              random_frame(rng, 4, 3.9)]
    weights = LossWeights(10.0, 1.0, 0.01, l2=1e-6, stress_offset=True)
    energies = [1.0, 30.0, 1000.0]

    def held_out_mae(energy):
        sums = np.zeros(4)
        for k, atoms in enumerate(frames):
            m = small_model(seed=27)
            solve_output_layer(m, prepare_dataset(frames[:k] + frames[k + 1:], m),
                               replace(weights, energy=energy))
            E, F, _, _ = predict(m, prepare_dataset([atoms], m))
            sums[:2] += abs(E[0] - atoms.get_potential_energy()) / len(atoms), 1
            if "forces" in atoms.calc.results:
                sums[2:] += np.abs(F - atoms.get_forces()).sum(), F.size
        return 1000.0 * sums[0] / sums[1], sums[2] / sums[3]

    model = small_model(seed=27)
    data = prepare_dataset(frames, model)
    rows = choose_output_layer(model, data, weights, energies, n_folds=len(frames))
    errors = {energy: held_out_mae(energy) for energy in energies}
    lowest = [min(e[k] for e in errors.values()) for k in (0, 1)]
    expected = sorted(((w, *e, (e[0] / lowest[0] + e[1] / lowest[1]) / 2)
                       for w, e in errors.items()), key=lambda r: r[3])
    np.testing.assert_allclose(np.array(rows), np.array(expected), rtol=1e-8)
    solved = small_model(seed=27)
    solve_output_layer(solved, data, replace(weights, energy=rows[0][0]))
    np.testing.assert_allclose(model.params["mlp"], solved.params["mlp"], rtol=1e-10)
    np.testing.assert_allclose(model.params["e0"], solved.params["e0"], rtol=1e-10)
    # energies only: no force MAE, and the score is the energy MAE relative to the lowest
    energy_only = [random_frame(rng, 4, 4.0 + 0.1 * k, forces=False) for k in range(4)]
    model = small_model(seed=28)
    rows = choose_output_layer(model, prepare_dataset(energy_only, model), weights, energies)
    assert all(np.isnan(r[2]) for r in rows)
    np.testing.assert_allclose([r[3] for r in rows], [r[1] / rows[0][1] for r in rows])


def test_gradient_non_periodic_cluster():
    rng = np.random.default_rng(5)
    frames = [random_frame(rng, 7, 4.5, pbc=False, stress=False)]
    model = small_model(seed=6)
    data = prepare_dataset(frames, model)
    worst = fd_check(model, data, LossWeights(1.0, 1.0, 0.0), rng, per_group=6)
    assert max(worst.values()) < 1e-6, worst


def test_loss_parts_equal_direct_definition():
    """The loss equals the design page's formula computed from ASE calculator results."""
    rng = np.random.default_rng(7)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 6, 4.4, stress=False),
              random_frame(rng, 4, 4.0, forces=False)]
    model = small_model(seed=8)
    w = LossWeights(0.7, 1.3, 0.4, l2=1e-3)
    loss, parts, _ = loss_and_gradient(model, prepare_dataset(frames, model), w,
                                       with_gradient=False)
    e_terms, f_terms, s_terms = [], [], []
    calc = model.calculator()
    for atoms in frames:
        ref = atoms.calc.results
        a = atoms.copy()
        a.calc = calc
        e_terms.append(((a.get_potential_energy() - ref["energy"]) / len(a)) ** 2)
        if "forces" in ref:
            f_terms.append((a.get_forces() - ref["forces"]) ** 2)
        if "stress" in ref:
            s_terms.append(((a.get_stress() - ref["stress"]) * EV_A3_TO_GPA) ** 2)
    assert parts["energy"] == pytest.approx(w.energy * np.mean(e_terms), rel=1e-10)
    assert parts["forces"] == pytest.approx(w.forces * np.mean(np.concatenate(f_terms)), rel=1e-10)
    assert parts["stress"] == pytest.approx(w.stress * np.mean(s_terms), rel=1e-10)
    assert loss == pytest.approx(sum(parts.values()), rel=1e-12)
    # the Huber penalty: squares within its width, 2 d |r| - d^2 beyond
    d = 0.9
    r = np.abs(np.concatenate(f_terms)) ** 0.5
    huber = np.where(r <= d, r ** 2, 2 * d * r - d ** 2)
    assert (r > d).any() and (r <= d).any()
    parts = loss_and_gradient(model, prepare_dataset(frames, model),
                              LossWeights(0.7, 1.3, 0.4, l2=1e-3, huber=d), False)[1]
    assert parts["forces"] == pytest.approx(w.forces * np.mean(huber), rel=1e-10)


def test_dataset_errors():
    rng = np.random.default_rng(9)
    model = small_model()
    bare = random_frame(rng, 3, 4.0)
    bare.calc = None
    with pytest.raises(ValueError, match="energ"):
        prepare_dataset([bare], model)
    cu = random_frame(rng, 3, 4.0)
    cu.numbers[:] = 29
    with pytest.raises(ValueError, match="Cu"):
        prepare_dataset([cu], model)
    with pytest.raises(ValueError, match="no structures"):
        prepare_dataset([], model)


def test_cu_train_subset_has_no_stress_and_still_trains():
    frames = read(DATA / "Cu_train_subset.xyz", ":")
    model = LatteModel(["Cu"], cutoff=4.0, blocks="3,-:2,i,i", hidden=(4,), seed=0)
    data = prepare_dataset(frames, model)
    assert not data.has_stress.any() and data.has_forces.all() and data.has_energy.all()
    loss, parts, grad = loss_and_gradient(model, data, LossWeights(1, 1, 1))
    assert parts["stress"] == 0.0 and np.isfinite(loss)


def tiny_fit(tmp_path, **kw):
    frames = read(DATA / "Cu_train_subset.xyz", "::6")
    valid = read(DATA / "Cu_test_subset.xyz", "::3")
    args = dict(valid=valid, cutoff=4.0, blocks="3,-:3,i,i:2,ij,ij", hidden=(6,), max_iter=12,
                log=None, seed=3)
    args.update(kw)
    return lattenb.fit(frames, **args)


def test_fit_improves_is_deterministic_and_keeps_best_on_validation(tmp_path):
    frames = read(DATA / "Cu_train_subset.xyz", "::6")
    m1 = tiny_fit(tmp_path)
    m2 = tiny_fit(tmp_path)
    for name in m1.params:
        assert np.array_equal(m1.params[name], m2.params[name]), name
    # without a validation set the fit returns its last iterate, which lowers the training loss
    # well below that of the initial model (0 iterations)
    m0 = tiny_fit(tmp_path, max_iter=0, valid=None, solve_output=False)
    m3 = tiny_fit(tmp_path, max_iter=30, valid=None, solve_output=False)
    d = prepare_dataset(frames, m1)
    w = LossWeights(10.0, 1.0, 0.001)                    # the default weights of `fit`
    assert loss_and_gradient(m3, d, w, False)[0] < 0.7 * loss_and_gradient(m0, d, w, False)[0]
    # with one, the parameters kept are those best on it: no worse than the last iterate's
    v = prepare_dataset(read(DATA / "Cu_test_subset.xyz", "::3"), m1)
    m_best = tiny_fit(tmp_path, solve_output=False)
    m_last = tiny_fit(tmp_path, valid=None, solve_output=False)
    assert loss_and_gradient(m_best, v, w, False)[0] <= loss_and_gradient(m_last, v, w, False)[0] + 1e-12
    # radial functions stay valid
    c, wd = m1.params["centres"], m1.params["widths"]
    assert np.all(c - wd >= -1e-9) and np.all(c + wd <= m1.cutoff + 1e-9) and np.all(wd >= 0.3 - 1e-12)
    assert m1.fit_info["iterations"] >= 1


def test_checkpoint_resume_reaches_the_same_model(tmp_path):
    # both runs end with the output-layer solve (at other weights); the checkpoint of the
    # 6-iteration run holds the state before its solve, so the resumed run continues from there
    full = tiny_fit(tmp_path, max_iter=12, output_weights=(30.0, 1.0, 1.0))
    ck = tmp_path / "ck.npz"
    tiny_fit(tmp_path, max_iter=6, checkpoint=str(ck), checkpoint_every=3,
             output_weights=(30.0, 1.0, 1.0))
    assert lattenb.load(ck).species == ("Cu",)          # a checkpoint is a loadable model
    frames = read(DATA / "Cu_train_subset.xyz", "::6")
    valid = read(DATA / "Cu_test_subset.xyz", "::3")
    resumed = lattenb.fit(frames, valid=valid, resume=str(ck), max_iter=12, log=None)
    for name in full.params:
        assert np.array_equal(full.params[name], resumed.params[name]), name


def test_scaled_parameter_vector_round_trips_and_its_gradient_is_the_loss_slope():
    """With a scale per entry, x = parameters / scale: set(get()) keeps the model, the bounds
    are the parameters' divided by the scale, and the packed gradient is dL/dx (a central
    difference of the loss along a random direction of x)."""
    from lattenb.steps import ParameterVector
    rng = np.random.default_rng(4)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 4, 4.5)]
    model = small_model()
    data = prepare_dataset(frames, model)
    weights = LossWeights(1.0, 2.0, 0.5, l2=1e-3)
    vector = ParameterVector(model)
    plain_bounds = vector.bounds
    vector.scale = np.exp(rng.uniform(-2.0, 2.0, vector.scale.size))
    before = {n: v.copy() for n, v in model.params.items()}
    x = vector.get()
    vector.set(x)
    for name in before:
        assert np.allclose(model.params[name], before[name], rtol=1e-12, atol=1e-14), name
    for (lo, hi), (slo, shi), c in zip(plain_bounds, vector.bounds, vector.scale):
        assert (lo is None) == (slo is None) and (hi is None) == (shi is None)
        assert lo is None or np.isclose(slo * c, lo)
        assert hi is None or np.isclose(shi * c, hi)
    _, _, grad = loss_and_gradient(model, data, weights)
    g = vector.gradient(grad)
    d = rng.normal(size=x.size)
    h = 1e-6

    def loss_at(t):
        vector.set(x + t * d)
        return loss_and_gradient(model, data, weights, with_gradient=False)[0]
    slope = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert np.isclose(slope, g @ d, rtol=1e-5), (slope, g @ d)


def test_group_scales_follow_the_exact_gauss_newton_diagonal():
    """`steps.group_scales` (random-sign probes through the reverse pass) against the
    Gauss-Newton diagonal from the residuals' Jacobian by central differences: energies per
    atom, force and stress components, each times the square root of its loss weight over its
    count, as the loss takes them."""
    from lattenb.steps import ParameterVector, group_scales
    rng = np.random.default_rng(5)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 4, 4.5, stress=False),
              random_frame(rng, 3, 3.4)]
    model = small_model()
    data = prepare_dataset(frames, model)
    weights = LossWeights(1.0, 2.0, 0.5, l2=1e-3)
    vector = ParameterVector(model)
    n = data.n_atoms_per_frame
    ne, nf, ns = data.has_energy.sum(), 3 * len(data.positions), 6 * data.has_stress.sum()

    def residuals(x):
        vector.set(x)
        E, F, S, _ = predict(model, data)
        return np.concatenate([np.sqrt(weights.energy / ne) * E / n,
                               np.sqrt(weights.forces / nf) * F.ravel(),
                               np.sqrt(weights.stress / ns) * EV_A3_TO_GPA
                               * S[data.has_stress].ravel()])
    x0 = vector.get()
    h = 1e-6
    J = np.empty((len(residuals(x0)), x0.size))
    for k in range(x0.size):
        step = np.zeros_like(x0)
        step[k] = h
        J[:, k] = (residuals(x0 + step) - residuals(x0 - step)) / (2 * h)
    vector.set(x0)
    diagonal = 2 * np.sum(J * J, axis=0) + 2 * weights.l2 * vector.weight_mask()
    exact = np.array([1.0 / np.sqrt(np.median(diagonal[part])) for _, part in vector.groups()])
    estimated = group_scales(vector, data, weights, n_probes=400)
    assert not np.allclose(exact, exact[0], rtol=0.5)        # the groups do differ
    ratio = np.array([estimated[part][0] for _, part in vector.groups()]) / exact
    for _, part in vector.groups():                           # one scale per array
        assert np.all(estimated[part] == estimated[part][0])
    # a common factor (the normalisation) aside, each group within 10 %
    assert np.allclose(ratio / np.exp(np.mean(np.log(ratio))), 1.0, atol=0.1), ratio
    # the finer groups: each layer's weights and biases of each species' MLP row
    layers = vector.layer_groups()
    assert np.array_equal(np.concatenate([np.arange(x0.size)[part] for _, part in layers]),
                          np.arange(x0.size))                 # in order, every entry once
    sizes = model.layer_sizes
    assert [name for name, _ in layers[:2 * (len(sizes) - 1)]] == [
        f"mlp[0].{kind}{layer}" for layer in range(1, len(sizes)) for kind in "Wb"]
    exact = np.array([1.0 / np.sqrt(np.median(diagonal[part])) for _, part in layers])
    estimated_layers = group_scales(vector, data, weights, n_probes=400, groups=layers)
    ratio = np.array([estimated_layers[part][0] for _, part in layers]) / exact
    assert np.allclose(ratio / np.exp(np.mean(np.log(ratio))), 1.0, atol=0.1), ratio
    # the same bits on one thread: a resumed fit replays the scales whatever its thread count
    import numba
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = group_scales(vector, data, weights, n_probes=400)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(one_thread, estimated)


@pytest.mark.parametrize("every, kind", [(None, "array"), (3, "layer")])
def test_fit_restarts_on_group_scaled_parameters_and_resumes_through_it(tmp_path, monkeypatch,
                                                                        every, kind):
    """After GROUP_SCALES_AFTER iterations (and then every GROUP_SCALES_EVERY) the fit restarts
    L-BFGS-B on the scaled parameters (logged, recorded with the model); a checkpoint from
    before or after a restart resumes to the model of the uninterrupted run, and a checkpoint
    that predates the scales resumes without them."""
    from lattenb import training
    monkeypatch.setattr(training, "GROUP_SCALES_AFTER", 4)
    monkeypatch.setattr(training, "GROUP_SCALES_EVERY", every)
    monkeypatch.setattr(training, "SCALE_GROUPS", kind)
    lines = []
    full = tiny_fit(tmp_path, max_iter=12, log=lines.append, solve_output=False)
    assert full.fit_info["group_scales_after"] == 4 and full.fit_info["iterations"] == 12
    assert full.fit_info["group_scales_every"] == every and full.fit_info["scale_groups"] == kind
    restarts = [it for it in range(1, 13) for line in lines
                if line.startswith(f"iteration {it}: L-BFGS-B restarts on the parameters "
                                   f"divided by one scale per {kind} (")]
    assert restarts == ([4] if every is None else [4, 7, 10])
    if kind == "layer":        # the hidden and output layers get scales of their own
        assert "mlp[0].W2" in next(line for line in lines if "restarts" in line)
    frames = read(DATA / "Cu_train_subset.xyz", "::6")
    valid = read(DATA / "Cu_test_subset.xyz", "::3")
    for stop in (3, 7) if every is None else (5, 8):
        ck = tmp_path / f"ck{stop}.npz"
        tiny_fit(tmp_path, max_iter=stop, checkpoint=str(ck), checkpoint_every=100,
                 solve_output=False)
        resumed = lattenb.fit(frames, valid=valid, resume=str(ck), max_iter=12, log=None)
        for name in full.params:
            assert np.array_equal(full.params[name], resumed.params[name]), (stop, name)
    # without the scales, the same run is another one (and an old checkpoint's)
    monkeypatch.setattr(training, "GROUP_SCALES_AFTER", None)
    plain = tiny_fit(tmp_path, max_iter=12, solve_output=False)
    assert plain.fit_info["group_scales_after"] is None
    assert not np.array_equal(plain.params["mlp"], full.params["mlp"])


def test_adam_first_step_and_bounded_minimum():
    """Adam's first step moves every coordinate by lr against its gradient's sign (m_hat /
    sqrt(v_hat) = g / |g|); with a decaying rate it reaches a quadratic's minimiser projected
    onto the box bounds."""
    from lattenb.steps import Adam
    centre, curvature = np.array([1.0, -2.0, 0.5]), np.array([1.0, 10.0, 0.1])
    opt = Adam(np.zeros(3), [(None, None), (-1.0, None), (0.0, 0.2)])
    g = 2.0 * curvature * (opt.x - centre)
    np.testing.assert_allclose(opt.step(g, 0.01), -0.01 * np.sign(g), rtol=1e-6)
    for k in range(6000):
        opt.step(2.0 * curvature * (opt.x - centre), 0.05 * 0.998 ** k)
    np.testing.assert_allclose(opt.x, [1.0, -1.0, 0.2], atol=1e-4)


def test_adam_weight_decay_is_decoupled_and_masked():
    """AdamW: with a zero gradient a step shrinks exactly the masked entries by (1 - lr * wd)
    and leaves the others; with a gradient the decay adds to Adam's step instead of entering
    its running RMS (so a large gradient does not scale it away)."""
    from lattenb.steps import Adam
    x0, mask = np.array([2.0, -3.0, 0.5]), np.array([True, False, True])
    opt = Adam(x0, [(None, None)] * 3, weight_decay=0.1, decay_mask=mask)
    np.testing.assert_allclose(opt.step(np.zeros(3), 0.01), [2.0 * 0.999, -3.0, 0.5 * 0.999],
                               rtol=1e-15)
    g = np.array([1e3, 1e3, -1e-3])
    plain, decayed = Adam(x0, [(None, None)] * 3), Adam(x0, [(None, None)] * 3, weight_decay=0.1,
                                                        decay_mask=mask)
    np.testing.assert_allclose(decayed.step(g, 0.01) - plain.step(g, 0.01),
                               [-0.01 * 0.1 * 2.0, 0.0, -0.01 * 0.1 * 0.5], rtol=1e-12, atol=1e-17)


def test_adam_keeps_the_moving_average_of_its_iterates():
    """x_average is the iterates' exponential moving average with the decay d_t = min(d, (1 + t)
    / (10 + t)) at step t: sum_j w_j x_j with w_j = (1 - d_j) prod_{k > j} d_k (x_0's weight
    prod_k d_k), written out as that sum over the returned iterates."""
    from lattenb.steps import Adam
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=4)
    opt = Adam(x0, [(None, None)] * 4, average=0.9)
    iterates = [x0] + [opt.step(rng.normal(size=4), 0.1).copy() for _ in range(100)]
    d = [None] + [min(0.9, (1 + t) / (10 + t)) for t in range(1, 101)]
    weight = [np.prod(d[1:])] + [(1 - d[j]) * np.prod(d[j + 1:]) for j in range(1, 101)]
    assert abs(sum(weight) - 1.0) < 1e-12 and d[100] == 0.9 and d[5] < 0.5
    np.testing.assert_allclose(opt.x_average, sum(w * x for w, x in zip(weight, iterates)),
                               rtol=1e-12)


def test_weight_mask_is_where_the_l2_penalty_acts():
    """ParameterVector.weight_mask marks the entries whose squares the loss's L2 term sums: the
    penalty equals l2 * |x[mask]|^2 of the packed vector, for one MLP per species."""
    from lattenb.steps import ParameterVector
    frames = read(DATA / "Cu_train_subset.xyz", "::12")
    model = LatteModel(["Cu", "Ni"], cutoff=4.0, blocks="2,-:2,i,i", hidden=(5, 3), seed=2)
    vector = ParameterVector(model)
    x, mask = vector.get(), vector.weight_mask()
    assert mask.sum() == 2 * (4 * 5 + 5 * 3 + 3 * 1)        # two species, weights only
    parts = loss_and_gradient(model, prepare_dataset(frames, model), LossWeights(1.0, 1.0, 0.0, l2=0.5),
                              False)[1]
    np.testing.assert_allclose(parts["l2"], 0.5 * np.sum(x[mask] ** 2), rtol=1e-12)


def test_minibatches_cover_every_structure_once():
    from lattenb.training import minibatches
    frames = read(DATA / "Cu_train_subset.xyz", ":")
    model = LatteModel(["Cu"], cutoff=4.0, blocks="2,-", hidden=(4,))
    batches = minibatches(frames, model, batch_atoms=400, seed=5)      # 3554 atoms in 36
    assert len(batches) == 9 and {b.n_frames for b in batches} == {4}
    assert len(minibatches(frames, model, batch_atoms=10)) == len(frames)   # one structure each
    assert len(minibatches(frames, model, batch_atoms=10 ** 6)) == 1
    energies = np.sort(np.concatenate([b.energies for b in batches]))
    np.testing.assert_array_equal(energies, np.sort([a.get_potential_energy() for a in frames]))


def test_minibatch_phase_lowers_the_loss_is_deterministic_and_hands_over(tmp_path):
    """adam_epochs=N: N passes over seeded batches of structures lower the training loss from
    the starting point; two runs are bit-identical; fit_info and the learning curve record the
    passes; the L-BFGS run after it starts where it ended (the checkpoint's x0). A time limit
    that does not bind changes nothing."""
    frames = read(DATA / "Cu_train_subset.xyz", "::6")
    start = tiny_fit(tmp_path, max_iter=0, solve_output=False)
    lines = []
    ck = tmp_path / "ck.npz"
    a = tiny_fit(tmp_path, max_iter=0, solve_output=False, adam_epochs=30, log=lines.append,
                 log_every=10, checkpoint=str(ck))
    b = tiny_fit(tmp_path, max_iter=0, solve_output=False, adam_epochs=30)
    # a time limit that does not bind leaves the steps alone (the clock set the first rate)
    c = tiny_fit(tmp_path, max_iter=0, solve_output=False, adam_epochs=30, adam_time=3600)
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
        assert np.array_equal(a.params[name], c.params[name]), name
    w = LossWeights(10.0, 1.0, 0.001, l2=1e-6)
    d = prepare_dataset(frames, start)
    before, after = (loss_and_gradient(m, d, w, False)[0] for m in (start, a))
    assert after < 0.75 * before
    info = a.fit_info["adam"]
    assert info["epochs"] == 30 and info["batches"] == 3          # 655 atoms, 200 a batch
    assert info["steps"] == 30 * info["batches"]
    assert a.fit_info["iterations"] == 0 and start.fit_info["adam"] is None
    assert [r["epoch"] for r in a.fit_curve] == [1, 10, 20, 30]
    assert any(line.startswith("mini-batch phase: Adam on") for line in lines)
    assert sum(line.startswith("pass ") for line in lines) == 4
    from lattenb.steps import ParameterVector
    np.testing.assert_allclose(np.load(ck)["fit_x0"], ParameterVector(a).get(), rtol=1e-12)


def test_minibatch_phase_hands_over_its_pass_best_on_validation(tmp_path, monkeypatch):
    """With a validation set the phase validates the averaged iterate after every pass and
    hands the best one to L-BFGS, which keeps it unless it beats it: with no L-BFGS iteration
    the model holds exactly that pass's parameters, and its validation loss, computed here on
    a freshly prepared set, is the lowest of the passes'."""
    import lattenb.training as training
    from lattenb.steps import ParameterVector
    seen = []
    real = training._validation_loss

    def recording(model, vdata, weights):
        val = real(model, vdata, weights)
        seen.append((val, ParameterVector(model).get()))
        return val

    monkeypatch.setattr(training, "_validation_loss", recording)
    frames = read(DATA / "Cu_train_subset.xyz", "::30")     # 2 structures: overfits
    m = lattenb.fit(frames, valid=read(DATA / "Cu_test_subset.xyz", "::3"), cutoff=4.0,
                    blocks="3,-:3,i,i:2,ij,ij", hidden=(6,), max_iter=0, log=None, seed=3,
                    solve_output=False, adam_epochs=60)
    assert len(seen) == 60
    losses = [v for v, _ in seen]
    k = int(np.argmin(losses))
    assert 0 < k < 59 and losses[-1] > 1.5 * losses[k]      # overfits within the phase
    assert m.fit_info["adam"]["best_epoch"] == k + 1
    np.testing.assert_array_equal(ParameterVector(m).get(), seen[k][1])
    v = prepare_dataset(read(DATA / "Cu_test_subset.xyz", "::3"), m)
    w = LossWeights(10.0, 1.0, 0.001)                    # the default weights of `fit`
    assert loss_and_gradient(m, v, w, False)[0] == pytest.approx(losses[k], rel=1e-12)


def test_minibatch_phase_by_default_only_on_a_time_budget(tmp_path):
    """A new model fitted on a time budget alone starts with the mini-batch phase, at most
    ADAM_TIME_FRACTION of the budget; an iteration limit, adam_time=0 or a fitted model
    start L-BFGS directly."""
    from lattenb.training import ADAM_TIME_FRACTION
    timed = tiny_fit(tmp_path, max_iter=None, max_time=6.0, solve_output=False)
    info = timed.fit_info["adam"]
    assert info is not None and info["epochs"] >= 1
    assert info["time_s"] <= ADAM_TIME_FRACTION * 6.0 + 1.0     # one step of slack
    assert tiny_fit(tmp_path, max_iter=3, max_time=6.0).fit_info["adam"] is None
    assert tiny_fit(tmp_path, max_iter=None, max_time=1.0, adam_time=0).fit_info["adam"] is None
    frames = read(DATA / "Cu_train_subset.xyz", "::6")
    refined = lattenb.fit(frames, model=timed, max_iter=None, max_time=1.0, log=None)
    assert refined.fit_info["adam"] is None


def interrupt_at_call(monkeypatch, n, *modules):
    """Ctrl-C (KeyboardInterrupt) at the n-th loss evaluation, counted over every module in
    `modules` that calls `loss_and_gradient`."""
    import lattenb.training as training
    real = training.loss_and_gradient
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    for module in modules:
        monkeypatch.setattr(module, "loss_and_gradient", interrupting)


def test_ctrl_c_in_the_minibatch_phase_keeps_its_model(tmp_path, monkeypatch):
    import lattenb.training as training
    interrupt_at_call(monkeypatch, 25, training)
    model = tiny_fit(tmp_path, adam_epochs=50)
    assert model.interrupted and model.fit_info["stopped"] == "interrupted"
    # 3 batches a pass, each pass then validated: the 25th loss evaluation is pass 7's first step
    assert model.fit_info["iterations"] == 0 and model.fit_info["adam"]["steps"] == 18
    assert np.all(np.isfinite(model.params["mlp"]))


def test_lbfgs_restarts_when_it_stops_on_its_own(tmp_path, monkeypatch):
    """When L-BFGS-B ends by itself (a failed line search, simulated), the fit restarts it from
    its last point; a restart that makes no progress ends the fit with SciPy's message."""
    import scipy.optimize
    from scipy.optimize import OptimizeResult
    real = scipy.optimize.minimize
    calls = []

    def ends_early(fun, x0, **kw):
        calls.append(kw["options"]["maxiter"])
        if len(calls) == 1:
            result = real(fun, x0, **dict(kw, options=dict(kw["options"], maxiter=3)))
            result.message = "ABNORMAL (simulated)"
            return result
        if len(calls) == 2:
            return real(fun, x0, **kw)
        return OptimizeResult(x=x0, message="ABNORMAL again (simulated)")
    monkeypatch.setattr(scipy.optimize, "minimize", ends_early)
    lines = []
    model = tiny_fit(tmp_path, max_iter=12, log=lines.append, solve_output=False)
    assert calls == [12, 9] and model.fit_info["iterations"] == 12
    assert any("L-BFGS-B stopped at iteration 3 (ABNORMAL (simulated)); restarting" in line
               for line in lines)
    assert model.fit_info["stopped"] == "iteration limit"
    calls[:] = [None, None]     # the next call is the third: no progress
    model = tiny_fit(tmp_path, max_iter=12, solve_output=False)
    assert model.fit_info["stopped"] == "L-BFGS-B: ABNORMAL again (simulated)"
    assert model.fit_info["iterations"] == 0


def test_fit_continues_from_a_fitted_model(tmp_path):
    """A fitted model passed to `fit` is refined, not re-initialised, and is not modified."""
    frames = read(DATA / "Cu_train_subset.xyz", "::6")
    first = tiny_fit(tmp_path, valid=None, max_iter=10, solve_output=False)
    params = {n: v.copy() for n, v in first.params.items()}
    w = LossWeights(100.0, 1.0, 0.0, l2=1e-6)
    refined = lattenb.fit(frames, model=first, weights=(100.0, 1.0, 0.0),
                          output_weights=(100.0, 1.0, 0.0), max_iter=0, log=None)
    for name in params:
        assert np.array_equal(first.params[name], params[name]), name
    for name in ("g_mean", "g_std", "centres", "widths", "sigma"):
        assert np.array_equal(refined.params[name], params[name]), name
    d = prepare_dataset(frames, first)
    # zero iterations leave only the final output-layer solve, the exact minimiser over it
    assert loss_and_gradient(refined, d, w, False)[0] < loss_and_gradient(first, d, w, False)[0]


def test_ctrl_c_keeps_best_model(tmp_path, monkeypatch):
    import lattenb.steps as steps
    import lattenb.training as training
    # the L-BFGS objective (steps) and the validation loss (training) share one call count
    interrupt_at_call(monkeypatch, 8, steps, training)
    model = tiny_fit(tmp_path, max_iter=50)
    assert model.interrupted
    assert np.all(np.isfinite(model.params["mlp"]))


def test_cli_minibatch_phase_flags(tmp_path, capsys):
    """--adam-epochs N runs N passes before L-BFGS; on a time budget alone the phase is on by
    default, and --adam-time 0 turns it off."""
    train = tmp_path / "train.xyz"
    write(train, read(DATA / "Cu_train_subset.xyz", "::6"))
    out = tmp_path / "m.npz"
    common = ["fit", str(train), "-o", str(out), "--cutoff", "4.0", "--blocks", "3,-:3,i,i",
              "--hidden", "4", "--log-every", "1"]
    assert cli.main(common + ["--max-iter", "2", "--adam-epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "mini-batch phase: Adam on" in printed and "(2 Adam passes, 2 iterations" in printed
    assert lattenb.load(out).fit_info["adam"]["epochs"] == 2
    assert cli.main(common + ["--time", "3s", "--adam-time", "0"]) == 0
    assert lattenb.load(out).fit_info["adam"] is None
    assert cli.main(common + ["--time", "3s"]) == 0
    assert lattenb.load(out).fit_info["adam"]["epochs"] >= 1
    assert [cli.parse_duration(t, allow_zero=True) for t in ("0", "0m", ".0s", "90", "2m")] \
        == [0, 0, 0, 90, 120]
    with pytest.raises(ValueError, match="duration"):
        cli.parse_duration("-1", allow_zero=True)


def test_cli_fit_and_eval(tmp_path, capsys):
    train = tmp_path / "train.xyz"
    write(train, read(DATA / "Cu_train_subset.xyz", "::6"))
    test = DATA / "Cu_test_subset.xyz"
    out = tmp_path / "m.npz"
    code = cli.main(["fit", str(train), "--valid", str(test), "-o", str(out), "--cutoff", "4.0",
                     "--blocks", "3,-:3,i,i", "--hidden", "4", "--max-iter", "3", "--log-every", "1"])
    assert code == 0 and out.exists()
    printed = capsys.readouterr().out
    assert "iter     1" in printed and "valid E" in printed
    cli.main(["eval", str(out), str(test), "--json"])
    table = json.loads(capsys.readouterr().out)[str(test)]
    # the JSON numbers equal a direct evaluation with the ASE calculator
    model = lattenb.load(out)
    frames = read(test, ":")
    e_err = [abs(a.get_potential_energy() - model.compute(a.positions, a.cell.array, a.pbc,
                                                          a.numbers)["energy"]) / len(a) * 1000
             for a in frames]
    assert table["all"]["energy_meV_per_atom"]["mae"] == pytest.approx(np.mean(e_err), rel=1e-9)
    assert set(table) >= {"all", "Elastic", "AIMD-NVT"}
    assert table["all"]["stress_GPa"] is not None


def test_cli_fit_with_stress_offset(tmp_path, capsys):
    """--stress-offset reaches fit(): the fitted offset is printed and equals the mean diagonal
    stress residual of the written model on the training data."""
    rng = np.random.default_rng(21)
    frames = [random_frame(rng, 4, 4.0), random_frame(rng, 5, 4.2), random_frame(rng, 3, 3.6)]
    train = tmp_path / "train.xyz"
    write(train, frames)
    out = tmp_path / "m.npz"
    code = cli.main(["fit", str(train), "-o", str(out), "--cutoff", "3.5", "--blocks", "2,-:2,i,i",
                     "--hidden", "3", "--max-iter", "3", "--stress-offset"])
    assert code == 0
    printed = capsys.readouterr().out
    line = [ln for ln in printed.splitlines() if "stress offset" in ln]
    assert len(line) == 1
    printed_offset = float(line[0].split(":")[1].split()[0])
    model = lattenb.load(out)
    residual = [(model.calculator().get_stress(a) - a.get_stress())[:3] * EV_A3_TO_GPA
                for a in read(train, ":")]
    assert printed_offset == pytest.approx(np.mean(residual), abs=1e-3)
    # the offset is kept in the model file and `eval` says so
    assert model.fit_info["stress_offset_GPa"] == pytest.approx(printed_offset, abs=1e-3)
    cli.main(["eval", str(out), str(train)])
    assert "isotropic offset of" in capsys.readouterr().out


def test_cli_output_weights(tmp_path, capsys):
    """--output-weights reaches the final solve (whose result is the exact minimiser at those
    weights); --no-output-solve skips it; both are recorded in the model file."""
    rng = np.random.default_rng(25)
    frames = [random_frame(rng, 4, 4.0), random_frame(rng, 5, 4.2), random_frame(rng, 3, 3.6)]
    train = tmp_path / "train.xyz"
    write(train, frames)
    common = [str(train), "--cutoff", "3.5", "--blocks", "2,-:2,i,i", "--hidden", "3",
              "--max-iter", "3", "--no-stress-offset", "--repulsion", "none", "--huber", "0"]
    solved, plain = tmp_path / "solved.npz", tmp_path / "plain.npz"
    assert cli.main(["fit", *common, "-o", str(solved), "--output-weights", "50,1,0.01"]) == 0
    assert "solving the output layer exactly at weights E,F,S = 50,1,0.01" in capsys.readouterr().out
    assert cli.main(["fit", *common, "-o", str(plain), "--no-output-solve"]) == 0
    assert "solving the output layer" not in capsys.readouterr().out
    m_solved, m_plain = lattenb.load(solved), lattenb.load(plain)
    assert m_solved.fit_info["output_weights"] == [50.0, 1.0, 0.01]
    assert m_plain.fit_info["output_weights"] is None
    K = int(m_solved.layer_sizes[-2])
    data = prepare_dataset(read(train, ":"), m_solved)
    w = LossWeights(50.0, 1.0, 0.01, l2=1e-6)
    _, _, g_solved = loss_and_gradient(m_solved, data, w)
    _, _, g_plain = loss_and_gradient(m_plain, data, w)
    assert (np.abs(g_solved["mlp"][:, -(K + 1):-1]).max()
            < 1e-8 * np.abs(g_plain["mlp"][:, -(K + 1):-1]).max())
    # an "auto" energy weight is chosen among the fit's x OUTPUT_ENERGY_FACTORS
    chosen = tmp_path / "chosen.npz"
    assert cli.main(["fit", *common, "-o", str(chosen), "--output-weights", "auto,1,0.01"]) == 0
    out = capsys.readouterr().out
    assert "exactly at weights E,F,S = chosen by cross-validation,1,0.01" in out
    candidates = [10.0 * f for f in OUTPUT_ENERGY_FACTORS]
    table = [line.split() for line in out.splitlines() if " E " in line and "score" in line
             and "cross-validated" not in line]
    assert sorted(float(row[0]) for row in table) == candidates
    info = lattenb.load(chosen).fit_info
    assert info["output_weights"] == [None, 1.0, 0.01]
    assert info["output_energy_weight"] == float(table[0][0])
    with pytest.raises(SystemExit, match="output-weights"):
        cli.main(["fit", *common, "-o", str(plain), "--output-weights", "1,2"])
    with pytest.raises(SystemExit, match="output-weights"):
        cli.main(["fit", *common, "-o", str(plain), "--output-weights", "auto,1"])
    with pytest.raises(ValueError, match="output_weights must be three"):
        lattenb.fit(read(train, ":"), output_weights=(1.0, 2.0), max_iter=1, log=None)
    with pytest.raises(SystemExit, match="output_weights must be three"):
        cli.main(["fit", *common, "-o", str(plain), "--output-weights", "1,-1,0"])


def test_cli_huber_reaches_the_loss_and_is_recorded(tmp_path, capsys):
    """--huber sets the force penalty's width: recorded in the model file (0: squared), kept
    by a resumed fit, and the fit's best validation loss is the Huber loss; a negative width
    is an error."""
    rng = np.random.default_rng(27)
    frames = [random_frame(rng, 4, 4.0), random_frame(rng, 5, 4.2), random_frame(rng, 3, 3.6)]
    train, valid = tmp_path / "train.xyz", tmp_path / "valid.xyz"
    write(train, frames)
    write(valid, [random_frame(rng, 4, 4.1)])
    common = [str(train), "--valid", str(valid), "--cutoff", "3.5", "--blocks", "2,-:2,i,i",
              "--hidden", "3", "--max-iter", "3", "--no-stress-offset", "--repulsion", "none",
              "--no-output-solve"]
    huber, plain = tmp_path / "huber.npz", tmp_path / "plain.npz"
    assert cli.main(["fit", *common, "-o", str(huber), "--huber", "0.3",
                     "--checkpoint", str(tmp_path / "ck.npz")]) == 0
    assert cli.main(["fit", *common, "-o", str(plain), "--huber", "0"]) == 0
    m_huber, m_plain = lattenb.load(huber), lattenb.load(plain)
    assert m_huber.fit_info["huber"] == 0.3 and m_plain.fit_info["huber"] == 0.0
    vdata = prepare_dataset(read(valid, ":"), m_huber)
    w = LossWeights(10.0, 1.0, 0.001)
    assert m_huber.fit_info["best_valid_loss"] == pytest.approx(
        loss_and_gradient(m_huber, vdata, replace(w, huber=0.3), False)[0], rel=1e-10)
    assert m_plain.fit_info["best_valid_loss"] == pytest.approx(
        loss_and_gradient(m_plain, vdata, w, False)[0], rel=1e-10)
    resumed = tmp_path / "resumed.npz"
    assert cli.main(["fit", *common, "-o", str(resumed), "--resume",
                     str(tmp_path / "ck.npz")]) == 0
    assert lattenb.load(resumed).fit_info["huber"] == 0.3
    capsys.readouterr()
    with pytest.raises(SystemExit, match="huber must be a finite width"):
        cli.main(["fit", *common, "-o", str(plain), "--huber", "-1"])
    for bad in (float("nan"), "wide"):          # the loss weights check it, however made
        with pytest.raises(ValueError, match="huber must be a finite width"):
            LossWeights(huber=bad)
    assert LossWeights(huber="0.2").huber == 0.2


def test_cli_example_runs_with_the_fit_defaults(tmp_path, capsys):
    out = tmp_path / "example.npz"
    assert cli.main(["example", "--max-iter", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Cu_test_subset.xyz" in printed and "Surface" in printed
    defaults = cli.build_parser().parse_args(["fit", "x.xyz", "-o", "y.npz"])
    model = lattenb.load(out)
    assert model.fit_info["iterations"] == 2
    weights = [float(v) for v in defaults.weights.split(",")]
    assert model.fit_info["output_weights"] == [None] + weights[1:]     # E by cross-validation
    assert model.fit_info["output_energy_weight"] in [weights[0] * f for f in OUTPUT_ENERGY_FACTORS]


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        cli.main(["fit", str(tmp_path / "missing.xyz"), "-o", str(tmp_path / "m.npz")])
    with pytest.raises(SystemExit, match="No such file"):
        cli.main(["eval", str(tmp_path / "missing.npz"), str(DATA / "Cu_test_subset.xyz")])
    model_path = tmp_path / "m.npz"
    LatteModel(["Cu"], cutoff=4.0, blocks="2,-", hidden=(2,)).save(model_path)
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nnot an extxyz comment\nCu 0 0\n")
    with pytest.raises(SystemExit, match="cannot read"):
        cli.main(["eval", str(model_path), str(bad)])
    with pytest.raises(SystemExit, match="weights"):
        cli.main(["fit", str(DATA / "Cu_test_subset.xyz"), "-o", str(tmp_path / "m.npz"),
                  "--weights", "1,2"])
    with pytest.raises(SystemExit, match="hidden layer sizes must be comma-separated"):
        cli.main(["fit", str(DATA / "Cu_test_subset.xyz"), "-o", str(tmp_path / "m.npz"),
                  "--hidden", "32,a"])
    nolabels = tmp_path / "nolabels.xyz"
    a = read(DATA / "Cu_test_subset.xyz", "0")
    a.calc = None
    write(nolabels, a)
    with pytest.raises(SystemExit, match="energ"):
        cli.main(["fit", str(nolabels), "-o", str(tmp_path / "m.npz")])


def test_predict_matches_calculator_on_dataset():
    frames = read(DATA / "Cu_test_subset.xyz", "::4")
    model = LatteModel(["Cu"], cutoff=4.0, blocks="3,-:2,i,i:2,i,j,ij", hidden=(5,), seed=2)
    data = prepare_dataset(frames, model)
    E, F, S, _ = predict(model, data)
    for f, atoms in enumerate(frames):
        out = model.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        lo, hi = data.atom_start[f], data.atom_start[f + 1]
        assert E[f] == pytest.approx(out["energy"], rel=1e-12)
        assert np.allclose(F[lo:hi], out["forces"], rtol=0, atol=1e-12)
        assert np.allclose(S[f], out["stress"], rtol=0, atol=1e-14)


def test_pairs_sorted_once_give_the_same_loss_gradient_and_predictions():
    """A training set keeps every atom's sorted pairs (keep_pairs=True); the kernels then copy
    them instead of sorting again. Everything must equal the sort-as-you-go path to the bit."""
    rng = np.random.default_rng(21)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 7, 4.6, stress=False),
              random_frame(rng, 3, 3.2)]
    model = small_model(seed=22)
    fresh, kept = prepare_dataset(frames, model), prepare_dataset(frames, model, keep_pairs=True)
    weights = LossWeights(1.0, 2.0, 0.5, l2=1e-3)
    l0, _, g0 = loss_and_gradient(model, fresh, weights)
    l1, _, g1 = loss_and_gradient(model, kept, weights)
    assert kept._sorted[1] is not None and fresh._sorted[1] is None
    assert l1 == l0
    for name in g0:
        assert np.array_equal(g1[name], g0[name]), name
    for a, b in zip(predict(model, fresh), predict(model, kept)):
        assert np.array_equal(a, b, equal_nan=True)
