"""The CUDA kernels against the CPU kernels, on the Numba CUDA simulator when there is no GPU.

This module selects the simulator (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is first imported,
so it works alone and inside the full suite (nothing on the CPU path imports numba.cuda). Set
NUMBA_ENABLE_CUDASIM=0 in the environment to run the same tests on a real GPU.

The simulator runs every CUDA thread as a Python thread: systems are a few dozen atoms and the
model is small (but has every body rank 0..3 and the 3- and 4-body patterns).
"""
import copy
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
if "numba.cuda" not in sys.modules:
    from numba.core import config as _numba_config
    _numba_config.ENABLE_CUDASIM = int(os.environ["NUMBA_ENABLE_CUDASIM"].strip() not in ("", "0"))

import inspect  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402

import lattenb  # noqa: E402
from lattenb import LatteModel  # noqa: E402
from lattenb.cuda import CudaEvaluator, DeviceNeighborList, probe  # noqa: E402
from lattenb.neighbor_protocol import NeighborList  # noqa: E402
from lattenb.neighbors import NeighborCache, neighbor_list, pair_vectors  # noqa: E402

try:
    probe.check_cuda()
    NO_CUDA = None
except RuntimeError as exc:          # e.g. NUMBA_ENABLE_CUDASIM=0 on a machine without a GPU
    NO_CUDA = str(exc)
needs_cuda = pytest.mark.skipif(NO_CUDA is not None, reason=f"no CUDA target: {NO_CUDA}")

BLOCKS = "2,-:1,i,i:1,ij,ij:1,i,j,ij:1,ijk,ijk:1,ij,jk,ki"
CUTOFF = 3.8
TOL = 1e-10
KEYS = ("energy", "energies", "forces", "virial", "atom_virial", "stress")


# ----------------------------------------------------------------------------- structures
def periodic_triclinic():
    """16 atoms, two species, a triclinic cell whose third height (~3.6 Å) is below the cutoff
    (several images of an atom are neighbours), one atom outside the cell."""
    rng = np.random.default_rng(1)
    a = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 1)
    a.set_cell(a.cell.array + rng.normal(scale=0.2, size=(3, 3)), scale_atoms=True)
    a.numbers[[1, 4, 6, 11, 13]] = 28
    a.rattle(0.08, seed=3)
    a.positions[0] += a.cell[2]
    return a


def cluster():
    """19 atoms, no periodicity, no cell."""
    a = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    keep = np.argsort(np.linalg.norm(a.positions - a.positions.mean(0), axis=1))[:19]
    a = Atoms(a.numbers[keep], a.positions[keep])
    a.numbers[::4] = 28
    a.rattle(0.08, seed=4)
    return a


def slab():
    """16 atoms periodic along a and c only (zero b vector)."""
    a = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 1)
    a.numbers[::3] = 28
    a.rattle(0.08, seed=5)
    a.pbc = (True, False, True)
    a.cell[1] = 0.0
    return a


def tiny():
    """8 atoms, periodic: for the cheap wiring tests."""
    a = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    a.numbers[::3] = 28
    a.rattle(0.1, seed=6)
    return a


def make_model(activation="gaussian", blocks=BLOCKS, **kwargs):
    """Random parameters with the descriptor standardised on the periodic structure, so the MLP
    inputs are O(1) and forces are O(1) eV/Å."""
    m = LatteModel(["Cu", "Ni"], cutoff=CUTOFF, blocks=blocks, hidden=(6, 4), seed=3,
                   activation=activation, **kwargs)
    if "coefficients" in m.params:      # spline: not the initial bump, which is symmetric
        rng = np.random.default_rng(8)
        m.set_parameters(coefficients=m.params["coefficients"]
                         + rng.normal(0, 0.3, m.params["coefficients"].shape))
    ref = periodic_triclinic()
    G = m.descriptors(ref.positions, ref.cell.array, ref.pbc, ref.numbers)
    m.set_parameters(g_mean=np.stack([G.mean(0)] * 2), g_std=np.stack([G.std(0) + 1e-3] * 2),
                     e0=np.array([-3.5, -4.2]))
    return m


@pytest.fixture(scope="module")
def model():
    return make_model()


def cpu_result(model, atoms):
    return model.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)


def assert_same(out, ref, tol, keys=KEYS):
    for key in keys:
        if ref[key] is None:
            assert out[key] is None, key
            continue
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(ref[key]), rtol=0, atol=tol,
                                   err_msg=key)


# ----------------------------------------------------------------------------- float64 = CPU
@needs_cuda
@pytest.mark.parametrize("make, team_size", [(periodic_triclinic, 32), (cluster, 32), (slab, 8)],
                         ids=["periodic-triclinic", "cluster", "slab-team8"])
def test_float64_matches_cpu(model, make, team_size):
    atoms = make()
    ref = cpu_result(model, atoms)
    assert np.abs(ref["forces"]).max() > 0.3          # a meaningful comparison
    ev = CudaEvaluator(model, team_size=team_size)
    out = ev.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert set(out) == set(ref)
    assert isinstance(out["energy"], float)
    assert_same(out, ref, TOL)


@needs_cuda
@pytest.mark.parametrize("make", [periodic_triclinic, cluster], ids=["periodic-triclinic", "cluster"])
def test_traceless_bodies_match_cpu(make):
    """Capital-letter bodies: the projection of the moments and of their adjoint on the GPU."""
    m = make_model(blocks="2,-:1,IJ,IJ:1,IJK,IJK:1,I,IJ,J:1,IJ,JKL,IKL:1,i,IJ,j")
    assert m.layout.body_projection.any()
    atoms = make()
    ref = cpu_result(m, atoms)
    assert np.abs(ref["forces"]).max() > 0.3
    out = CudaEvaluator(m).compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert_same(out, ref, TOL)


@needs_cuda
def test_rank4_bodies_match_cpu():
    """Rank-4 bodies: their moments, their traceless projection and the reverse pass to the
    pairs on the GPU."""
    m = make_model(blocks="2,-:1,ijkl,ijkl:1,i,jkl,ijkl:1,ij,ijkl,kl:1,IJKL,IJKL")
    atoms = periodic_triclinic()
    ref = cpu_result(m, atoms)
    assert np.abs(ref["forces"]).max() > 0.3
    out = CudaEvaluator(m).compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert_same(out, ref, TOL)


@needs_cuda
@pytest.mark.parametrize("radial, shared, make",
                         [("spline", False, periodic_triclinic), ("spline-5", True, cluster),
                          ("polynomial", True, slab)],
                         ids=["spline-periodic", "spline5-shared-cluster", "polynomial-shared-slab"])
def test_radial_families_match_cpu(radial, shared, make):
    """The radial seam on the GPU: each family's `cuda_functions` compiled into the kernel, and
    radial functions shared by the central species."""
    m = make_model(radial=radial, shared_radial=shared)
    atoms = make()
    ref = cpu_result(m, atoms)
    assert np.abs(ref["forces"]).max() > 0.3
    out = CudaEvaluator(m, team_size=8).compute(atoms.positions, atoms.cell.array, atoms.pbc,
                                                atoms.numbers)
    assert_same(out, ref, TOL)


@needs_cuda
def test_species_embedding_matches_cpu():
    """Species weights from embeddings (`species_mode="embedding"`): the kernel gets the table
    they make, as the CPU does."""
    m = make_model(species_mode="embedding", embedding_dim=3)
    atoms = periodic_triclinic()
    ref = cpu_result(m, atoms)
    # smaller forces than the other models here (Cu and Ni start with similar embeddings), still
    # eight orders of magnitude above TOL
    assert np.abs(ref["forces"]).max() > 0.03 and len(set(atoms.numbers)) == 2
    out = CudaEvaluator(m, team_size=8).compute(atoms.positions, atoms.cell.array, atoms.pbc,
                                                atoms.numbers)
    assert_same(out, ref, TOL)


@needs_cuda
def test_core_repulsion_matches_cpu():
    """A model with the ZBL core repulsion reaching the structure's closest pairs and a wall
    reaching further: the GPU evaluator adds them on the host, as the CPU adds them;
    compute_device refuses it."""
    from ase.neighborlist import neighbor_list
    atoms = periodic_triclinic()
    r_out = np.sort(neighbor_list("d", atoms, CUTOFF))[len(atoms)] + 0.05
    m = make_model(repulsion="zbl", repulsion_radii=np.tile([0.8 * r_out, r_out], (2, 2, 1)),
                   repulsion_wall=np.tile([[1.2 * r_out, 0.5]], (2, 2, 1, 1)))
    ref = cpu_result(m, atoms)
    plain = copy.deepcopy(m)
    plain.set_repulsion("none")
    assert abs(ref["energy"] - cpu_result(plain, atoms)["energy"]) > 1e-3   # the repulsion acts
    gpu = CudaEvaluator(m, team_size=8)
    assert_same(gpu.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers), ref, TOL)
    with pytest.raises(ValueError, match="compute_device does not add the core repulsion"):
        gpu.compute_device(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    # the coordination terms: the host's neighbour list reaches their cutoff, not the wall's
    from test_repulsion import coordination_terms
    m.set_repulsion(m.repulsion, m.repulsion_radii, m.repulsion_wall,
                    coordination_terms(atoms, CUTOFF))
    ref_coordination = cpu_result(m, atoms)
    assert abs(ref_coordination["energy"] - ref["energy"]) > 1e-3          # they act
    assert_same(CudaEvaluator(m, team_size=8).compute(atoms.positions, atoms.cell.array,
                                                      atoms.pbc, atoms.numbers),
                ref_coordination, TOL)


@needs_cuda
def test_extrapolation_grades_match_cpu():
    """The CUDA backend's grades (from a descriptor pass on the host) equal the CPU kernel's."""
    from lattenb.extrapolation import build_active_set
    m = make_model()
    m.set_active_set(build_active_set(m, [periodic_triclinic(), cluster(), slab()]))
    atoms = tiny()
    ref = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers, grades=True)
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers, grades=True,
                    device="cuda")
    np.testing.assert_allclose(out["extrapolation_grades"], ref["extrapolation_grades"],
                               rtol=1e-12, atol=1e-12)
    assert out["extrapolation_grade"] == pytest.approx(ref["extrapolation_grade"], rel=1e-12)
    assert_same(out, ref, TOL)


@needs_cuda
def test_spline_float32_close_to_cpu():
    m = make_model(radial="spline")
    atoms = periodic_triclinic()
    ref = cpu_result(m, atoms)
    out = CudaEvaluator(m, dtype="float32", team_size=8).compute(
        atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    scale = np.abs(ref["forces"]).max()
    assert np.abs(out["forces"] - ref["forces"]).max() < 1e-4 * scale
    assert abs(out["energy"] - ref["energy"]) < 1e-4 * abs(ref["energy"])


@needs_cuda
def test_family_without_cuda_functions_is_a_clear_error():
    import toy_radial  # noqa: F401  (registers "toy-gaussian", a CPU-only family)
    m = make_model(radial="toy-gaussian")
    with pytest.raises(ValueError, match="no CUDA functions.*device='cpu'"):
        CudaEvaluator(m)


@needs_cuda
def test_pair_radial_is_a_clear_error():
    """Radial functions per species pair run on the CPU only so far: the GPU kernels read one row
    per central species."""
    m = make_model(radial="spline-5", pair_radial=True)
    with pytest.raises(ValueError, match="per species pair.*device='cpu'"):
        CudaEvaluator(m)


@needs_cuda
def test_shared_channels_are_a_clear_error():
    """Blocks with shared channels run on the CPU only so far: the GPU kernels give every term
    bodies of its own."""
    m = make_model(blocks="2,-:2c,i,i")
    with pytest.raises(ValueError, match="shared channels.*device='cpu'"):
        CudaEvaluator(m)


@needs_cuda
@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_other_activations(activation):
    m = make_model(activation)
    atoms = slab()
    out = CudaEvaluator(m, team_size=8).compute(atoms.positions, atoms.cell.array,
                                                    atoms.pbc, atoms.numbers)
    assert_same(out, cpu_result(m, atoms), TOL)


@needs_cuda
def test_float32_close_to_cpu(model):
    atoms = periodic_triclinic()
    ref = cpu_result(model, atoms)
    out = CudaEvaluator(model, dtype="float32").compute(
        atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    fmax = np.abs(ref["forces"]).max()
    assert abs(out["energy"] - ref["energy"]) < 1e-5 * abs(ref["energy"])
    np.testing.assert_allclose(out["forces"], ref["forces"], rtol=0, atol=1e-4 * fmax)
    np.testing.assert_allclose(out["stress"], ref["stress"], rtol=0,
                               atol=1e-4 * np.abs(ref["stress"]).max())
    assert out["forces"].dtype == np.float64


# ----------------------------------------------------------------------------- device arrays
@needs_cuda
def test_compute_device_md_steps(model):
    """Device arrays in and out, the GPU list reused within the skin and rebuilt beyond it,
    every step equal to the CPU; results are bitwise reproducible."""
    from numba import cuda
    atoms = periodic_triclinic()
    ev = CudaEvaluator(model, skin=0.4)
    rng = np.random.default_rng(7)
    d_pos = cuda.to_device(atoms.positions)
    forces = None
    for step, move in enumerate([0.0, 0.05, 0.3]):
        atoms.positions += move * rng.uniform(-1, 1, size=atoms.positions.shape) / np.sqrt(3)
        d_pos.copy_to_device(atoms.positions)
        res = ev.compute_device(d_pos, atoms.cell.array, atoms.pbc,
                                atoms.numbers if step == 0 else None)
        ref = cpu_result(model, atoms)
        assert ev.neighbors.n_builds == [1, 1, 2][step]
        out = {key: (None if res[key] is None else res[key].copy_to_host())
               for key in KEYS + ("min_distance",)}
        out["energy"] = out["energy"][0]
        assert_same(out, ref, TOL)
        offsets, second, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc,
                                                CUTOFF)
        v = pair_vectors(atoms.positions, atoms.cell.array, offsets, second, shifts)
        assert abs(out["min_distance"][0] - np.linalg.norm(v, axis=1).min()) < TOL
        if step == 2:
            forces = out["forces"]
    res = ev.compute_device(d_pos, atoms.cell.array, atoms.pbc, rebuild=True)
    assert np.array_equal(res["forces"].copy_to_host(), forces)


# ----------------------------------------------------------------------------- neighbour list
def _pair_set(offsets, second, shifts):
    first = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return set(zip(first.tolist(), second.tolist(), map(tuple, shifts.tolist())))


@needs_cuda
@pytest.mark.parametrize("case", ["one-atom-small-cell", "two-atoms-triclinic", "mixed-pbc",
                                  "cluster", "unwrapped"])
def test_gpu_neighbor_list_matches_cpu(case):
    rng = np.random.default_rng(11)
    cell = np.array([[2.5, 0.0, 0.0], [0.8, 2.3, 0.0], [0.3, 0.4, 2.1]])
    pbc = np.array([True, True, True])
    if case == "one-atom-small-cell":
        pos = np.array([[0.3, 0.2, 0.1]])            # cutoff >> cell: many images of itself
    elif case == "two-atoms-triclinic":
        pos = rng.uniform(0, 2, size=(2, 3))
    elif case == "mixed-pbc":
        pos = rng.uniform(-1, 6, size=(12, 3))
        cell = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.5]])
        pbc = np.array([True, False, True])
    elif case == "cluster":
        pos = rng.uniform(0, 9, size=(30, 3))
        cell = np.zeros((3, 3))
        pbc = np.array([False, False, False])
    else:
        pos = rng.uniform(-8, 8, size=(10, 3))       # far outside the cell
    nl = DeviceNeighborList(CUTOFF, skin=0.0)
    cuda = nl.cuda
    nl.update(cuda.to_device(pos), cell, pbc)
    got = nl.to_host()
    want = neighbor_list(pos, cell, pbc, nl.radius)
    assert _pair_set(*got) == _pair_set(*want)
    # every pair's reverse is found
    rev = nl.rev.copy_to_host()
    count = nl.count.copy_to_host()
    assert all((rev[i, :count[i]] >= 0).all() for i in range(len(pos)))


def test_neighbor_lists_declare_the_shared_interface():
    """CPU NeighborCache and GPU DeviceNeighborList have the members of NeighborList, with the
    same signatures (checked on the classes: needs no CUDA target)."""
    assert isinstance(NeighborCache(CUTOFF, skin=0.3), NeighborList)
    for name in ("update", "reset", "to_host"):
        want = list(inspect.signature(getattr(NeighborList, name)).parameters)
        for cls in (NeighborCache, DeviceNeighborList):
            assert list(inspect.signature(getattr(cls, name)).parameters) == want, (cls, name)


@needs_cuda
def test_neighbor_lists_share_interface_and_pairs():
    """The same calls on both lists: same rebuild decisions, counters and pairs."""
    from numba import cuda
    atoms = periodic_triclinic()
    pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
    lists = {"cpu": NeighborCache(CUTOFF, skin=0.3), "gpu": DeviceNeighborList(CUTOFF, skin=0.3)}
    for name, nl in lists.items():
        assert isinstance(nl, NeighborList), name
        assert (nl.cutoff, nl.skin) == (CUTOFF, 0.3)
        assert nl.radius == pytest.approx(CUTOFF + 0.3, rel=1e-7)
        with pytest.raises(RuntimeError, match="no neighbour list yet"):
            nl.to_host()
        assert nl.update(pos, cell, pbc) is True and nl.n_builds == 1
        assert nl.update(pos + 0.05, cell, pbc) is False and nl.n_builds == 1
        assert nl.update(pos + 0.05, cell, pbc, force=True) is True and nl.n_builds == 2
        assert nl.update(pos + 0.2, cell, pbc) is True and nl.n_builds == 3      # beyond skin/2
        nl.reset()
        assert nl.update(pos, cell, pbc) is True and nl.n_builds == 4
    assert _pair_set(*lists["cpu"].to_host()) == _pair_set(*lists["gpu"].to_host())
    offsets, second, shifts = lists["gpu"].to_host()
    assert offsets.dtype == second.dtype == shifts.dtype == np.int64
    # the GPU list also takes device arrays (what CudaEvaluator passes)
    assert lists["gpu"].update(cuda.to_device(pos + 0.01), cell, pbc) is False


# ----------------------------------------------------------------------------- errors
@needs_cuda
def test_overlapping_atoms_raise(model):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0.05, 0, 0]])
    with pytest.raises(ValueError, match="overlapping atoms"):
        CudaEvaluator(model, team_size=8).compute(atoms.positions, None, False,
                                                      atoms.numbers)


@needs_cuda
def test_model_too_large_for_shared_memory():
    m = LatteModel(["Cu"], cutoff=4.0, blocks="60,ijk,ijk", hidden=(4,))
    with pytest.raises(ValueError, match="too large for the GPU kernels"):
        CudaEvaluator(m)


def test_check_cuda_names_missing_numba_cuda(monkeypatch):
    monkeypatch.setattr(probe, "_usable", None)
    monkeypatch.setattr(probe, "_simulator_requested", lambda: False)
    monkeypatch.setattr(probe, "_numba_cuda_installed", lambda: False)
    with pytest.raises(RuntimeError) as info:
        probe.check_cuda()
    assert str(info.value) == "numba-cuda is not installed (pip install lattenb[cuda])"


def test_check_cuda_names_missing_gpu(monkeypatch):
    monkeypatch.setattr(probe, "_usable", None)
    monkeypatch.setattr(probe, "_simulator_requested", lambda: False)
    monkeypatch.setattr(probe, "_numba_cuda_installed", lambda: True)
    monkeypatch.setattr(probe, "_is_simulator", lambda cuda: False)
    monkeypatch.setattr(probe, "_gpu_problem", lambda cuda: "CUDA driver library cannot be found.")
    with pytest.raises(RuntimeError) as info:
        probe.check_cuda()
    assert str(info.value) == ("no usable NVIDIA GPU/driver found: "
                               "CUDA driver library cannot be found.")


def _run_python(code, **env):
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=environ, timeout=300)


def test_check_cuda_without_simulator():
    """Without the simulator: a GPU with numba-cuda, or one of the two clear messages."""
    proc = _run_python("""
        from lattenb.cuda import check_cuda
        try:
            print("OK", check_cuda())
        except RuntimeError as exc:
            print("ERR", exc)
        """)
    out = proc.stdout.strip()
    assert proc.returncode == 0, proc.stderr
    assert (out.startswith("OK CUDA device")
            or out == "ERR numba-cuda is not installed (pip install lattenb[cuda])"
            or out.startswith("ERR no usable NVIDIA GPU/driver found: ")), out


def test_cpu_path_never_imports_cuda():
    proc = _run_python("""
        import sys
        import numpy as np
        import lattenb
        from ase.build import bulk
        atoms = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
        model = lattenb.LatteModel.preset("fast", ["Cu"])
        model.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        atoms.calc = model.calculator()
        atoms.get_forces()
        bad = [m for m in ("lattenb.cuda", "lattenb.cuda.kernels", "numba.cuda", "numba_cuda")
               if m in sys.modules]
        print(bad)
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_importing_lattenb_cuda_does_not_import_numba_cuda():
    """The package, its probe, neighbour list and evaluator modules import without numba.cuda;
    only check_cuda and creating a DeviceNeighborList or CudaEvaluator import it."""
    proc = _run_python("""
        import sys
        import lattenb, lattenb.cuda
        from lattenb.cuda import (MISSING_NUMBA_CUDA, NO_GPU, CudaEvaluator, DeviceNeighborList,
                                  check_cuda, dtype_name, evaluator, neighbors,
                                  probe)
        assert dtype_name("float32") == "float32"
        print([m for m in ("numba.cuda", "numba_cuda", "lattenb.cuda.kernels") if m in sys.modules])
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- device="cuda"
wired = "device" in inspect.signature(LatteModel.compute).parameters
needs_wiring = pytest.mark.skipif(not wired, reason="device= not wired into LatteModel yet")


@needs_cuda
@needs_wiring
def test_device_switch_on_model_calculator_and_load(tmp_path):
    m = make_model()
    atoms = tiny()
    ref = cpu_result(m, atoms)
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers, device="cuda")
    assert_same(out, ref, TOL)
    # new parameters are picked up by the cached GPU evaluator
    m.set_parameters(e0=np.array([-1.0, -2.0]))
    ref = cpu_result(m, atoms)
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers, device="cuda")
    assert_same(out, ref, TOL)

    path = tmp_path / "model.npz"
    m.save(path)
    loaded = lattenb.load(path, device="cuda")
    atoms.calc = loaded.calculator()          # the model's device is the calculator's default
    assert abs(atoms.get_potential_energy() - ref["energy"]) < TOL
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"], rtol=0, atol=TOL)
    np.testing.assert_allclose(atoms.get_stress(), ref["stress"], rtol=0, atol=TOL)
    atoms.calc = m.calculator(device="cuda")
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"], rtol=0, atol=TOL)


@needs_wiring
def test_device_switch_rejects_unknown_device():
    m = make_model()
    atoms = tiny()
    with pytest.raises(ValueError, match="device"):
        m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers, device="tpu")


@needs_wiring
def test_device_cuda_error_when_unusable(monkeypatch):
    monkeypatch.setattr(probe, "_usable", None)
    monkeypatch.setattr(probe, "_simulator_requested", lambda: False)
    monkeypatch.setattr(probe, "_numba_cuda_installed", lambda: False)
    m = make_model()
    with pytest.raises(RuntimeError, match=r"numba-cuda is not installed \(pip install "
                                           r"lattenb\[cuda\]\)"):
        m.calculator(device="cuda")
