"""The experimental short-range penalty (lattenb.short_range): its gradient against finite
differences, the probe curves it builds, the supercell reduction, and its path through `fit`."""
import copy

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

import lattenb
from lattenb.cli import DATA_DIR
from lattenb.short_range import N_STEPS, MonotonePenalty, crystal_candidates, reduce_supercell

TRAIN = str(DATA_DIR / "Cu_train_subset.xyz")
SMALL = {"blocks": "4,-:4,i,i:4,ij,ij", "hidden": (8,), "cutoff": 4.5}


@pytest.fixture(scope="module")
def crude():
    """A briefly fitted small Cu model with the core repulsion: its probe curves still fall."""
    frames = read(TRAIN, ":")
    model = lattenb.fit(frames, max_iter=5, log=None, repulsion="zbl", **SMALL)
    return model, frames


def test_reduce_supercell():
    fcc = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert len(reduce_supercell(fcc.repeat((3, 2, 1)))) == 4
    reduced = reduce_supercell(bulk("Mo", "bcc", a=3.15, cubic=True).repeat(2))
    assert len(reduced) == 2 and np.allclose(reduced.cell.lengths(), 3.15)
    rattled = fcc.repeat(2)
    rattled.rattle(0.01, seed=1)
    assert len(reduce_supercell(rattled)) == len(rattled)       # not a repeat: unchanged


def test_probe_curves(crude):
    model, frames = crude
    crystals = crystal_candidates(frames)
    assert len(crystals) == 1                                    # one composition: Cu
    penalty = MonotonePenalty.build(model, crystals, 10.0)
    assert penalty.n_curves == 2                                 # the Cu dimer, fcc compressed
    assert penalty.data.n_frames == 2 * (N_STEPS + 1)
    assert len(penalty.first) == 2 * N_STEPS and np.all(penalty.second == penalty.first + 1)
    sizes = penalty.data.n_atoms_per_frame
    assert sizes[0] == 2 and sizes[-1] == 4                      # a dimer; the 4-atom fcc cell
    rise, _ = penalty.drops(model)
    h = np.maximum(-rise, 0.0)
    assert h.any()                                               # this crude model still falls
    assert penalty.value_and_gradient(model, False)[0] == pytest.approx(10.0 * np.sum(h * h))


def test_penalty_gradient_matches_finite_differences(crude):
    model, frames = crude
    penalty = MonotonePenalty.build(model, crystal_candidates(frames), 10.0)
    value, grad = penalty.value_and_gradient(model)
    assert value > 0
    for name in ("mlp", "sigma", "centres", "widths"):
        index = np.unravel_index(np.argmax(np.abs(grad[name])), grad[name].shape)
        step = 1e-6 * max(1.0, abs(model.params[name][index]))
        values = []
        for sign in (1, -1):
            other = copy.deepcopy(model)
            p = other.params[name].copy()
            p[index] += sign * step
            other.set_parameters(**{name: p})
            values.append(penalty.value_and_gradient(other, False)[0])
        fd = (values[0] - values[1]) / (2 * step)
        assert grad[name][index] == pytest.approx(fd, rel=1e-5, abs=1e-8), name


def test_fit_with_the_penalty_lowers_it_and_records_it(crude, tmp_path):
    """The same short fit with and without the penalty: with it the probe curves fall less, and
    the checkpoint records the weight (so --resume uses it)."""
    _, frames = crude
    plain = lattenb.fit(frames, max_iter=30, log=None, repulsion="zbl", solve_output=False,
                        **SMALL)
    pushed = lattenb.fit(frames, max_iter=30, log=None, repulsion="zbl", solve_output=False,
                         monotone=10.0, checkpoint=str(tmp_path / "ck.npz"),
                         checkpoint_every=10, **SMALL)
    penalty = MonotonePenalty.build(plain, crystal_candidates(frames), 10.0)
    assert penalty.value_and_gradient(pushed, False)[0] < penalty.value_and_gradient(plain,
                                                                                   False)[0]
    from lattenb.model import read_model
    assert read_model(tmp_path / "ck.npz")[1]["fit"]["monotone"] == 10.0
    with pytest.raises(ValueError, match="core repulsion"):
        lattenb.fit(frames, max_iter=1, log=None, monotone=1.0, **SMALL)
