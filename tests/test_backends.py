"""Backends: the registry by name, lazy import, one instance per model, the same results through
every entry point (model, ASE calculator, training's batched prediction), and CLI choices that
come from the registries."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ase.build import bulk

from lattenb import LatteModel, backends, cli, radial


def test_registry_names_and_unknown_device():
    assert backends.names() == ["cpu", "cuda"]
    m = LatteModel(["Cu"], cutoff=4.0, blocks="2,-:2,i,i", hidden=(4,))
    with pytest.raises(ValueError, match="device must be one of"):
        m.backend("tpu")
    assert m.backend("cpu") is m.backend("cpu", "float64") is m.backend()
    with pytest.raises(ValueError, match="float32"):
        m.backend("cpu", "float32")


def test_cpu_work_imports_no_cuda_code():
    code = textwrap.dedent("""
        import sys
        import lattenb
        from ase.build import bulk
        m = lattenb.LatteModel(["Cu"], cutoff=4.0, blocks="2,-:2,i,i", hidden=(4,))
        a = bulk("Cu", "fcc", a=3.6)
        a.calc = m.calculator()
        a.get_forces()
        print([n for n in sys.modules if n.startswith(("lattenb.cuda", "lattenb.backends.cuda",
                                                       "numba.cuda"))])
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_entry_point_goes_through_the_backend():
    from lattenb.dataset import prepare_dataset
    from lattenb.predict import predict
    from ase.calculators.singlepoint import SinglePointCalculator
    m = LatteModel(["Cu"], cutoff=4.0, blocks="2,-:2,i,i:1,ij,ij", hidden=(4,))
    a = bulk("Cu", "fcc", a=3.6).repeat(2)
    a.rattle(0.05, seed=1)
    direct = m.backend("cpu").compute(a.positions, a.cell.array, a.pbc, a.numbers)
    via_model = m.compute(a.positions, a.cell.array, a.pbc, a.numbers)
    a.calc = m.calculator()
    forces = a.get_forces()
    b = a.copy()
    b.calc = SinglePointCalculator(b, energy=0.0)
    E, F, S, _ = predict(m, prepare_dataset([b], m))
    for other in (via_model["forces"], forces, F):
        np.testing.assert_allclose(other, direct["forces"], rtol=0, atol=1e-12)
    assert abs(E[0] - direct["energy"]) < 1e-10
    np.testing.assert_allclose(S[0], direct["stress"], rtol=0, atol=1e-14)


def test_cli_choices_come_from_the_registries():
    """--radial takes every registered family (checked against the registry when parsed, so
    names made on demand such as "spline-12" work too) and lists them in its help."""
    import toy_radial  # noqa: F401  (registers "toy-gaussian")
    parser = cli.build_parser()
    fit = next(a for a in parser._subparsers._group_actions[0].choices["fit"]._actions
               if a.dest == "radial")
    assert set(radial.names()) >= {"polynomial", "spline", "toy-gaussian"}
    for name in radial.names():
        assert name in fit.help
        assert parser.parse_args(["fit", "t.xyz", "-o", "m.npz", "--radial", name]).radial == name
