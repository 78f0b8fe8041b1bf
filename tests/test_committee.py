"""Committees (`lattenb.committee`): a merged model predicts the weighted average of its
members' energies, per-atom energies, forces and stress, on periodic and molecular structures,
after a round trip through its file and through `lattenb merge`; members of different blocks,
widths, species modes and cutoffs, with walls and coordination terms; clear errors for members that
cannot be merged."""
import numpy as np
import pytest

import lattenb
from lattenb import LatteModel, cli
from lattenb.committee import merge_models

CUTOFF = 3.8
RADII = np.tile([1.9, 2.5], (2, 2, 1))


def member(seed, blocks, hidden, wall, coordination=None, cutoff=CUTOFF, **kwargs):
    """A two-species model with random parameters and a core repulsion with a wall."""
    m = LatteModel(["Ni", "Mo"], cutoff=cutoff, blocks=blocks, hidden=hidden, activation="tanh",
                   radial="spline", seed=seed, repulsion="zbl", repulsion_radii=RADII,
                   repulsion_wall=wall, repulsion_coordination=coordination, **kwargs)
    rng = np.random.default_rng(seed)
    m.set_parameters(g_std=rng.uniform(1.0, 3.0, m.params["g_std"].shape),
                     g_mean=rng.normal(size=m.params["g_mean"].shape) * 0.1,
                     mlp=rng.normal(size=m.params["mlp"].shape) * 0.5,
                     e0=rng.normal(size=2))
    return m


def coordination(dense_alpha, sparse_b):
    """Coordination terms that act on the random structures below (their coordination numbers
    n lie between 0.08 and 1.9): dense above n = 0.9-1.3, the sparse wall below n = 2-2.2."""
    return {"cutoff": 3.5, "dense": np.array([[[1.0, dense_alpha], [1.3, 0.5]],
                                              [[0.9, dense_alpha], [1.2, 0.0]]]),
            "sparse_limit": np.array([2.0, 2.2]),
            "sparse_wall": np.tile([[2.4, sparse_b], [3.2, 1.0]], (2, 2, 1, 1))}


def members():
    wall_a = np.tile([[2.2, 3.0], [2.9, 5.0]], (2, 2, 1, 1))
    wall_b = np.tile([[2.6, 1.5]], (2, 2, 1, 1))
    a = member(1, "2,-:2,i,i:1,ij,ij:1,i,j,ij", (6, 4), wall_a, coordination(1.0, 0.5))
    # other blocks (shared channels, rank 3), widths, species mode, wall, coordination terms
    # and cutoff
    b = member(2, "2c,-:2c,i,i:1,ijk,ijk", (3, 5), wall_b, coordination(3.0, 2.0), cutoff=3.5,
               species_mode="embedding", embedding_dim=2)
    return a, b


def structures():
    from structures import random_atoms
    cell = [[5.0, 0, 0], [1.1, 4.7, 0], [0.4, 0.9, 5.2]]
    rng = np.random.default_rng(7)
    return [random_atoms(rng, 10, cell, True, dmin=1.5),
            random_atoms(rng, 8, np.eye(3) * 20.0, False, box=4.0, dmin=1.5)]


def assert_weighted_average(merged, models, weights):
    for atoms in structures():
        args = (atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        outs = [m.compute(*args) for m in models]
        got = merged.compute(*args)
        assert abs(outs[0]["energy"] - outs[1]["energy"]) > 1e-3     # the members differ
        for key in ("energy", "energies", "forces", "virial"):
            expected = sum(w * np.asarray(o[key]) for w, o in zip(weights, outs))
            np.testing.assert_allclose(got[key], expected, rtol=1e-10, atol=1e-10, err_msg=key)
        if atoms.pbc.any():
            expected = sum(w * o["stress"] for w, o in zip(weights, outs))
            np.testing.assert_allclose(got["stress"], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weights", [None, (0.3, 0.7)])
def test_merged_model_predicts_the_weighted_average_of_its_members(tmp_path, weights):
    a, b = members()
    a.fit_info = {"best_valid_loss": float("inf"), "adam": {"best": float("nan")}}
    merged = merge_models([a, b], weights)
    # every part of both members is in it: the repulsion terms too
    assert merged.layout.n_terms == a.layout.n_terms + b.layout.n_terms
    assert merged.cutoff == CUTOFF and b.cutoff < CUTOFF
    assert np.array(merged.repulsion_wall).shape[2] == 3
    assert np.array(merged.repulsion_coordination["dense"]).shape[1] == 4
    merged.save(tmp_path / "merged.npz")
    loaded = lattenb.load(tmp_path / "merged.npz")
    assert loaded.fit_info["committee"]["members"] == 2
    # the members' fit_info comes along, as strict JSON (no Infinity or NaN in the header)
    assert loaded.fit_info["committee"]["member_fit_info"][0] == {"best_valid_loss": None,
                                                                  "adam": {"best": None}}
    assert_weighted_average(loaded, [a, b], weights or (0.5, 0.5))


def test_cli_merge_writes_the_average(tmp_path, capsys):
    a, b = members()
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    out = tmp_path / "ab.npz"
    assert cli.main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "-o",
                     str(out), "--weights", "0.25,0.75"]) == 0
    assert "the average of 2 models" in capsys.readouterr().err
    assert_weighted_average(lattenb.load(out), [a, b], (0.25, 0.75))
    with pytest.raises(SystemExit, match="weights must be"):
        cli.main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "-o", str(out),
                  "--weights", "0.5,0.6"])
    with pytest.raises(SystemExit, match="takes 2 comma-separated numbers"):
        cli.main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "-o", str(out),
                  "--weights", "half,half"])


def test_members_that_cannot_be_merged_are_clear_errors():
    a, b = members()
    with pytest.raises(ValueError, match="at least two models"):
        merge_models([a])
    with pytest.raises(ValueError, match="weights must be 2 positive numbers"):
        merge_models([a, b], [1.0, 0.0])
    other = LatteModel(["Mo", "Ni"], cutoff=CUTOFF, blocks="2,-", radial="spline")
    with pytest.raises(ValueError, match="species"):
        merge_models([a, other])
    other = LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks="2,-", radial="polynomial")
    with pytest.raises(ValueError, match="radial family"):
        merge_models([a, other])
    with pytest.raises(ValueError, match="same depth"):
        merge_models([a, member(3, "2,-", (4,), None)])
    with pytest.raises(ValueError, match="repulsion radii"):
        merge_models([a, LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks="2,-", hidden=(6, 4),
                                    activation="tanh", radial="spline", repulsion="zbl",
                                    repulsion_radii=RADII * 0.9)])
    shifted = coordination(1.0, 0.5)
    shifted["sparse_limit"] = shifted["sparse_limit"] + 1.0
    with pytest.raises(ValueError, match="sparse limit"):
        merge_models([a, member(3, "2,-", (4, 4), None, shifted)])


def training_file(tmp_path, seed):
    """train.xyz of 20 random Ni-Mo structures with energies, forces and stress (plain fit
    holds out 2 of them for validation)."""
    from ase.io import write
    from test_training import random_frame
    rng = np.random.default_rng(seed)
    path = tmp_path / "train.xyz"
    write(path, [random_frame(rng, 4, 4.0 + 0.05 * k) for k in range(20)])
    return path


def test_cli_fit_committee_writes_its_members_and_their_average(tmp_path, capsys):
    """`lattenb fit --committee 2 --seed 5`: the members are the plain fits of seeds 5 and 6,
    written beside the output with their learning curves; the output is their average, with an
    active set for extrapolation grades."""
    train = training_file(tmp_path, 11)
    common = ["fit", str(train), "--blocks", "2,-:2,i,i", "--hidden", "4", "--cutoff", "3.5",
              "--max-iter", "3"]
    out = tmp_path / "c.npz"
    assert cli.main([*common, "-o", str(out), "--committee", "2", "--seed", "5"]) == 0
    text = capsys.readouterr().out
    assert "committee member 2 of 2 (seed 6)" in text and "committee: validation RMSE" in text
    assert cli.main([*common, "-o", str(tmp_path / "s6.npz"), "--seed", "6"]) == 0
    alone = lattenb.load(tmp_path / "s6.npz")
    m0, m1 = lattenb.load(tmp_path / "c.member0.npz"), lattenb.load(tmp_path / "c.member1.npz")
    for name in alone.params:
        np.testing.assert_array_equal(m1.params[name], alone.params[name], err_msg=name)
    assert (tmp_path / "c.member1.curve.csv").is_file()
    merged = lattenb.load(out)
    assert merged.fit_info["committee"]["members"] == 2
    assert_weighted_average(merged, [m0, m1], [0.5, 0.5])
    assert merged.active_set is not None
    assert cli.main(["eval", str(out), str(train), "--grade"]) == 0
    with pytest.raises(SystemExit, match="does not combine"):
        cli.main([*common, "-o", str(out), "--committee", "2", "--checkpoint",
                  str(tmp_path / "ck.npz")])
    with pytest.raises(SystemExit):
        cli.main([*common, "-o", str(out), "--committee", "0"])
    assert "whole number of fits" in capsys.readouterr().err


def test_cli_fit_committee_interrupted_keeps_what_it_has(tmp_path, monkeypatch):
    """Ctrl-C in a member (here: the fit reports it interrupted) stops the committee; the
    members so far are written, and OUTPUT is their average, or the first member alone."""
    from lattenb import training
    real_fit = training.fit
    calls = []

    def fit_interrupted_at(k):
        def fit(*args, **kwargs):
            model = real_fit(*args, **kwargs)
            calls.append(kwargs["seed"])
            model.interrupted = len(calls) == k
            return model
        return fit
    train = training_file(tmp_path, 12)
    common = ["fit", str(train), "--blocks", "2,-:2,i,i", "--hidden", "4", "--cutoff", "3.5",
              "--max-iter", "2", "--committee", "3"]
    for k, kept in ((1, 1), (2, 2)):
        calls.clear()
        monkeypatch.setattr(training, "fit", fit_interrupted_at(k))
        out = tmp_path / f"i{k}.npz"
        assert cli.main([*common, "-o", str(out)]) == 130
        assert calls == [0, 1][:k]
        written = [(tmp_path / f"i{k}.member{j}.npz").is_file() for j in range(3)]
        assert written == [j < kept for j in range(3)]
        model = lattenb.load(out)
        if kept == 1:
            first = lattenb.load(tmp_path / "i1.member0.npz")
            np.testing.assert_array_equal(model.params["mlp"], first.params["mlp"])
        else:
            assert model.fit_info["committee"]["members"] == 2
