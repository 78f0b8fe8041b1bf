"""Run a `LatteModel` on an NVIDIA GPU with Numba CUDA (the optional extra ``lattenb[cuda]``).

    from lattenb.gpu import CudaEvaluator
    gpu = CudaEvaluator(model)                              # float64; dtype="float32" for speed
    out = gpu.compute(positions, cell, pbc, numbers)        # same dict as LatteModel.compute

    # MD without a host round trip per step: device arrays in and out
    d_pos = numba.cuda.to_device(positions)                 # or any __cuda_array_interface__ array
    res = gpu.compute_device(d_pos, cell, pbc, numbers)     # numbers only needed on the first call
    res["forces"]                                           # (N, 3) float64 device array

Nothing here is imported when lattenb runs on the CPU (device="cpu", the default); this module
imports ``numba.cuda`` only inside `check_cuda` and `CudaEvaluator`.

What runs on the GPU: the neighbour list (a cell list, rebuilt on the GPU and reused with a
Verlet skin), the radial basis, body tensors, contractions, standardisation, the MLP and its input
gradient, the contraction adjoint, per-pair dE/dv, the per-atom virial, the force gather and the
reductions to energy, virial and stress. See `lattenb.cuda_kernels` for the kernels.

Testing without a GPU: set NUMBA_ENABLE_CUDASIM=1 before numba.cuda is first imported; the Numba
CUDA simulator then counts as a usable device (slow: keep systems small).
"""
import importlib.util
import math
import os

import numpy as np

from .energy import check_overlap, structure_results

MISSING_NUMBA_CUDA = "numba-cuda is not installed (pip install lattenb[cuda])"
NO_GPU = "no usable NVIDIA GPU/driver found"
DTYPES = ("float64", "float32")

_usable = None          # description of the usable CUDA target, once found


# ============================================================================ availability
def _numba_cuda_installed():
    return importlib.util.find_spec("numba_cuda") is not None


def _simulator_requested():
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def _import_cuda():
    from numba import cuda
    return cuda


def _is_simulator(cuda):
    return "simulator" in getattr(cuda.to_device, "__module__", "")


def _gpu_problem(cuda):
    """None if a GPU is usable (driver found, a trivial kernel compiles and runs), else why not."""
    try:
        if not cuda.is_available():
            err = cuda.cuda_error()
            text = " ".join(str(err).split()) if err is not None else ""
            return text or "the CUDA driver reports no device"
        device = cuda.get_current_device()
        import numpy as _np

        @cuda.jit
        def probe(a):
            i = cuda.grid(1)
            if i < a.shape[0]:
                a[i] = 2.0 * a[i]

        a = cuda.to_device(_np.ones(4))
        probe[1, 32](a)
        if not _np.array_equal(a.copy_to_host(), 2.0 * _np.ones(4)):
            return f"a test kernel gave wrong results on {device.name}"
    except Exception as exc:                      # driver, NVVM/toolkit or launch failures
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


def check_cuda():
    """Make sure a CUDA target is usable; returns a short description of it.

    Raises RuntimeError with one clear message naming what is missing:
    ``numba-cuda is not installed (pip install lattenb[cuda])`` or
    ``no usable NVIDIA GPU/driver found: <reason>``. The Numba CUDA simulator
    (NUMBA_ENABLE_CUDASIM=1) counts as usable.
    """
    global _usable
    if _usable is not None:
        return _usable
    if not _simulator_requested() and not _numba_cuda_installed():
        raise RuntimeError(MISSING_NUMBA_CUDA)
    try:
        cuda = _import_cuda()
    except ImportError as exc:
        raise RuntimeError(f"{MISSING_NUMBA_CUDA}: cannot import numba.cuda ({exc})") from None
    if _is_simulator(cuda):
        _usable = "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
        return _usable
    if not _numba_cuda_installed():
        # numba's deprecated built-in CUDA target without the numba-cuda package: not supported
        raise RuntimeError(MISSING_NUMBA_CUDA)
    problem = _gpu_problem(cuda)
    if problem:
        raise RuntimeError(f"{NO_GPU}: {problem}")
    _usable = f"CUDA device {cuda.get_current_device().name}"
    return _usable


def dtype_name(dtype):
    """'float64' or 'float32' from a NumPy dtype, type or name (None means float64)."""
    if dtype is None:
        return "float64"
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")
    return name


def get_evaluator(model, dtype=None, skin=0.5):
    """The `CudaEvaluator` of `model` for this dtype, created on first use and kept on the model
    (parameters are re-uploaded automatically when they change)."""
    cache = model.__dict__.setdefault("_cuda_evaluators", {})
    key = (dtype_name(dtype), float(skin))
    if key not in cache:
        cache[key] = CudaEvaluator(model, dtype=key[0], skin=key[1])
    return cache[key]


def _host_inputs(positions, cell, pbc, cutoff):
    from .neighbors import _validate
    cell = np.zeros((3, 3)) if cell is None else cell
    return _validate(positions, cell, pbc, cutoff)


# ============================================================================ neighbour list
class DeviceNeighborList:
    """Full neighbour list built and kept on the GPU (padded rows, see `lattenb.cuda_kernels`).

    Built with radius (cutoff + skin) and reused until an atom has moved more than skin / 2 since
    the build (checked on the GPU; one 8-byte copy to the host per step), or the number of atoms,
    the cell or pbc changed. skin = 0 rebuilds on every call. Any cutoff works, also one larger
    than half the cell or than the cell (then the list holds several images of an atom).

    Device arrays after `update`: nbr (N, cap) int32, shifts (N, cap, 3) int32, count (N,) int32,
    rev (N, cap) flat index of the reverse pair (or -1). Shifts refer to the positions of the
    last build, as with `lattenb.neighbors`.
    """

    def __init__(self, cutoff, skin=0.0):
        from . import cuda_kernels
        self.ck = cuda_kernels
        self.cuda = cuda_kernels.cuda
        cutoff = float(cutoff)
        skin = float(skin)
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
        if not (math.isfinite(skin) and skin >= 0):
            raise ValueError(f"skin must be a non-negative finite number, got {skin!r}")
        self.cutoff = cutoff
        self.skin = skin
        self.radius = (cutoff + skin) * (1.0 + 1e-8)   # > cutoff: boundary pairs are never lost
        self.n_builds = 0
        self.n_atoms = -1
        self.cap = 0
        self.bin_cap = 0
        self._cell = None
        self._pbc = None
        self._flags_zero = np.zeros(2, np.int32)
        self._disp = None

    def reset(self):
        self.n_atoms = -1

    def update(self, d_pos, cell, pbc, force=False):
        """Rebuild if needed; returns True when the list was rebuilt. cell (3, 3) and pbc (3,)
        are host arrays (already validated), d_pos an (N, 3) device array."""
        n = d_pos.shape[0]
        rebuild = (force or self.skin == 0.0 or n != self.n_atoms
                   or not np.array_equal(cell, self._cell) or not np.array_equal(pbc, self._pbc))
        if not rebuild:
            ck = self.ck
            self._disp.copy_to_device(np.zeros(1))
            ck.max_displacement_kernel[ck.blocks_for(n, ck.RED_BLOCK), ck.RED_BLOCK](
                d_pos, self.ref, self._disp)
            rebuild = self._disp.copy_to_host()[0] > (0.5 * self.skin) ** 2
        if rebuild:
            self._build(d_pos, cell, pbc)
        return rebuild

    def _alloc_atoms(self, n):
        cuda = self.cuda
        self.frac = cuda.device_array((n, 3), np.float64)
        self.rw = cuda.device_array((n, 3), np.float64)
        self.osh = cuda.device_array((n, 3), np.int32)
        self.bins3 = cuda.device_array((n, 3), np.int32)
        self.count = cuda.device_array(n, np.int32)
        self.ref = cuda.device_array((n, 3), np.float64)
        self._disp = cuda.device_array(1, np.float64)
        self._flags = cuda.device_array(2, np.int32)
        self.cap = 0
        self.n_atoms = n

    def _alloc_pairs(self, n, cap):
        cuda = self.cuda
        self.cap = int(cap)
        self.nbr = cuda.device_array((n, self.cap), np.int32)
        self.shifts = cuda.device_array((n, self.cap, 3), np.int32)
        self.rev = cuda.device_array((n, self.cap), np.int32 if n * self.cap < 2 ** 31 - 1
                                     else np.int64)

    def _build(self, d_pos, cell, pbc):
        from .neighbors import _effective_cell
        cuda, ck = self.cuda, self.ck
        n = d_pos.shape[0]
        eff = _effective_cell(cell, pbc)        # ValueError for a singular periodic cell
        inv = np.linalg.inv(eff)
        if n != self.n_atoms:
            self._alloc_atoms(n)
        self._cell = cell.copy()
        self._pbc = pbc.copy()
        pbc_t = tuple(int(p) for p in pbc)
        height = 1.0 / np.sqrt(np.sum(inv * inv, axis=0))
        rc = self.radius
        rcs = rc * (1.0 + 1e-8)

        bbox = cuda.to_device(np.array([np.inf] * 3 + [-np.inf] * 3))
        d_eff = cuda.to_device(eff)
        ck.nl_wrap_kernel[ck.blocks_for(n, ck.RED_BLOCK), ck.RED_BLOCK](
            d_pos, cuda.to_device(inv), d_eff, pbc_t, self.frac, self.osh, self.rw, bbox)
        lo = np.zeros(3)
        extent = np.zeros(3)
        if not pbc.all():
            b = bbox.copy_to_host()
            lo = np.where(pbc, 0.0, b[:3])
            extent = np.where(pbc, 0.0, b[3:] - b[:3])
        nb = np.ones(3, np.int64)
        for d in range(3):
            if pbc[d]:
                extent[d] = height[d]
            nb[d] = max(1, int(extent[d] / rcs))
        limit = max(1000, 8 * n)              # O(N) bins, as on the CPU
        while int(np.prod(nb)) > limit:
            d = int(np.argmax(nb))
            nb[d] = max(1, nb[d] // 2)
        nsearch = np.ones(3, np.int64)
        scale = np.zeros(3)
        for d in range(3):
            if pbc[d]:
                if nb[d] == 1:
                    nsearch[d] = max(1, int(math.ceil(rcs / height[d])))
            elif nb[d] > 1:
                scale[d] = nb[d] / extent[d]
        n_bins = int(np.prod(nb))
        nb_t = tuple(int(x) for x in nb)
        ns_t = tuple(int(x) for x in nsearch)
        lo_t = tuple(float(x) for x in lo)
        scale_t = tuple(float(x) for x in scale)

        if self.cap == 0:
            vol = 1.0
            for d in range(3):
                vol *= height[d] if pbc[d] else max(extent[d], rc)
            density = n / max(vol, 1e-300)
            est = 1.3 * density * 4.0 / 3.0 * math.pi * rc ** 3 + 8
            self._alloc_pairs(n, int(min(max(est, 8), n * np.prod(2 * nsearch + 1))))
        if getattr(self, "n_bins", -1) != n_bins or self.bin_cap == 0:
            self.bin_cap = max(self.bin_cap, 2 * (n // n_bins) + 8)
            self._alloc_bins(n_bins)
        while True:
            self._flags.copy_to_device(self._flags_zero)
            ck.fill_i32_kernel[ck.blocks_for(n_bins), ck.BLOCK](self.bin_count, 0)
            ck.nl_bin_kernel[ck.blocks_for(n), ck.BLOCK](
                self.frac, pbc_t, nb_t, lo_t, scale_t, self.bins3, self.bin_count,
                self.bin_atoms, self._flags)
            ck.nl_sort_bins_kernel[ck.blocks_for(n_bins), ck.BLOCK](self.bin_count, self.bin_atoms)
            ck.nl_pairs_kernel[ck.blocks_for(n), ck.BLOCK](
                self.rw, self.osh, self.bins3, d_eff, pbc_t, nb_t, ns_t, rc * rc,
                self.bin_count, self.bin_atoms, self.nbr, self.shifts, self.count, self._flags)
            flags = self._flags.copy_to_host()
            if flags[0] > self.bin_cap:
                self.bin_cap = int(flags[0]) + 4
                self._alloc_bins(n_bins)
                continue
            if flags[1] > self.cap:
                self._alloc_pairs(n, int(flags[1]) + 4)
                continue
            break
        ck.nl_reverse_kernel[ck.blocks_for(n), ck.BLOCK](self.nbr, self.shifts, self.count,
                                                          self.rev)
        ck.copy_positions_kernel[ck.blocks_for(n), ck.BLOCK](d_pos, self.ref)
        self.n_builds += 1

    def _alloc_bins(self, n_bins):
        cuda = self.cuda
        self.n_bins = n_bins
        self.bin_count = cuda.device_array(n_bins, np.int32)
        self.bin_atoms = cuda.device_array((n_bins, self.bin_cap), np.int32)

    def to_host(self):
        """(offsets, second, shifts) in the CSR form of `lattenb.neighbors` (for tests)."""
        count = self.count.copy_to_host().astype(np.int64)
        nbr = self.nbr.copy_to_host()
        shifts = self.shifts.copy_to_host()
        offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
        mask = np.arange(self.cap)[None, :] < count[:, None]
        return offsets, nbr[mask].astype(np.int64), shifts[mask].astype(np.int64)


# ============================================================================ evaluator
class CudaEvaluator:
    """Energy, forces, virial and stress of `model` on the GPU.

    model: a `LatteModel`; its parameters are uploaded once and again only when they change.
    dtype: "float64" (default) or "float32" (parameters and per-pair math in float32; pair
    vectors from float64 positions, energies, forces and virial accumulated in float64).
    skin: Å, Verlet skin of the GPU neighbour list (0 rebuilds it on every call).
    team_size: threads per atom in the energy kernel (a warp, 32, by default).

    Raises RuntimeError (see `check_cuda`) when no CUDA target is usable.
    """

    def __init__(self, model, dtype="float64", skin=0.5, team_size=32):
        self.device = check_cuda()
        from . import cuda_kernels
        self.ck = cuda_kernels
        self.cuda = cuda_kernels.cuda
        self.model = model
        self.dtype = dtype_name(dtype)
        self.team_size = int(team_size)
        if self.team_size < 1:
            raise ValueError(f"team_size must be positive, got {team_size}")
        self.neighbors = DeviceNeighborList(model.cutoff, skin)
        self._params_of = None
        self._species_host = None
        self._d_species = None
        self._cell_host = None
        self._n_buffers = -1
        self._cap_buffers = -1
        self._ensure_parameters()

    # ------------------------------------------------------------------ set-up
    def _ensure_parameters(self):
        ka = self.model.kernel_arrays()
        if ka is self._params_of:
            return
        cuda = self.cuda
        fdt = np.float32 if self.dtype == "float32" else np.float64
        body_rank, body_offset, term_body_start, term_pattern, p_rows, p_start, tables = ka.layout
        M = int(body_offset[-1] + 3 ** body_rank[-1])
        T = int(term_pattern.shape[0])
        sizes = np.asarray(ka.layer_sizes, np.int64)
        n_act = int(sizes.sum())
        widest = int(sizes.max())
        itemsize = np.dtype(fdt).itemsize
        need = self.ck.shared_bytes(M, T, n_act, widest, self.team_size, itemsize)
        if need > self.ck.SHARED_LIMIT:
            raise ValueError(
                f"model too large for the GPU kernels: one atom needs {need} bytes of shared "
                f"memory (moment size {M}, {T} terms, layers {sizes.tolist()}, {self.dtype}); "
                f"the limit is {self.ck.SHARED_LIMIT}. Use a smaller descriptor, float32, "
                f"or the CPU")
        i32 = lambda a: cuda.to_device(np.ascontiguousarray(a, dtype=np.int32))   # noqa: E731
        f = lambda a: cuda.to_device(np.ascontiguousarray(a, dtype=fdt))          # noqa: E731
        self._layout = tuple(i32(a) for a in ka.layout)
        self._body_order = i32(np.argsort(-np.asarray(body_rank), kind="stable"))
        self._sigma = f(ka.sigma)
        self._centres = f(ka.centres)
        self._inv_w = f(ka.inv_w)
        self._inv_c2 = f(ka.inv_c2)
        self._g_mean = f(ka.g_mean)
        self._g_inv_std = f(ka.g_inv_std)
        self._mlp = f(ka.mlp_params)
        self._layer_sizes = i32(sizes)
        self._e0 = cuda.to_device(np.ascontiguousarray(ka.e0, dtype=np.float64))
        self._cutoff2 = float(ka.cutoff) ** 2
        self.kernel = self.ck.energy_kernel(M, T, n_act, widest, self.team_size,
                                            int(ka.activation), self.dtype)
        self._params_of = ka

    def set_numbers(self, numbers):
        """Atomic numbers (N,) of the atoms for `compute_device` (uploaded once)."""
        species = self.model.species_indices(np.asarray(numbers))
        if self._species_host is None or not np.array_equal(species, self._species_host):
            self._species_host = species.copy()
            self._d_species = self.cuda.to_device(species.astype(np.int32))

    def _ensure_buffers(self, n, cap):
        cuda = self.cuda
        if n != self._n_buffers:
            self.energies = cuda.device_array(n, np.float64)
            self.atom_virial = cuda.device_array((n, 9), np.float64)
            self.closest = cuda.device_array(n, np.float64)
            self.forces = cuda.device_array((n, 3), np.float64)
            n_red = min(self.ck.blocks_for(n, self.ck.RED_BLOCK), 1024)
            self._partial = cuda.device_array((n_red, 11), np.float64)
            self.energy = cuda.device_array(1, np.float64)
            self.virial = cuda.device_array((3, 3), np.float64)
            self.stress = cuda.device_array(6, np.float64)
            self.min_distance = cuda.device_array(1, np.float64)
            self._n_buffers = n
            self._cap_buffers = -1
        if cap != self._cap_buffers:
            fdt = np.float32 if self.dtype == "float32" else np.float64
            self.pair_grad = cuda.device_array((n, cap, 3), fdt)
            self._cap_buffers = cap

    def _device_cell(self, cell):
        if self._cell_host is None or not np.array_equal(cell, self._cell_host):
            self._cell_host = cell.copy()
            self._d_cell = self.cuda.to_device(cell)
        return self._d_cell

    def _run(self, d_pos, cell, pbc, rebuild=False):
        """Neighbour list update, energy kernel and force gather on the device."""
        self._ensure_parameters()
        nl = self.neighbors
        n = d_pos.shape[0]
        nl.update(d_pos, cell, pbc, force=rebuild)
        self._ensure_buffers(n, nl.cap)
        ck = self.ck
        self.kernel[n, self.team_size](
            d_pos, self._device_cell(cell), nl.nbr, nl.shifts, nl.count, self._d_species,
            self._cutoff2, self._body_order, *self._layout, self._sigma, self._centres,
            self._inv_w, self._inv_c2,
            self._g_mean, self._g_inv_std, self._mlp, self._layer_sizes, self._e0,
            self.energies, self.atom_virial, self.closest, self.pair_grad)
        ck.gather_forces_kernel[ck.blocks_for(n), ck.BLOCK](nl.count, self.pair_grad, nl.rev,
                                                             self.forces)

    # ------------------------------------------------------------------ entry points
    def compute(self, positions, cell=None, pbc=False, numbers=None):
        """Energy, per-atom energies, forces, virial, stress and per-atom virial from host
        arrays: the same dict (keys, units, signs) as `LatteModel.compute`.

        Raises ValueError for bad input, unknown species or overlapping atoms, like the CPU."""
        if numbers is None:
            raise ValueError("numbers (atomic numbers of the atoms) are required")
        positions, cell, pbc, _ = _host_inputs(positions, cell, pbc, self.model.cutoff)
        species = self.model.species_indices(np.asarray(numbers))
        if species.shape[0] != positions.shape[0]:
            raise ValueError(f"{positions.shape[0]} positions but {species.shape[0]} "
                             f"atomic numbers")
        n = positions.shape[0]
        volume = abs(np.linalg.det(cell))
        volume = volume if volume > 1e-12 else None
        if n == 0:
            from .neighbors import _effective_cell
            _effective_cell(cell, pbc)
            return structure_results(np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3, 3)), volume)
        self.set_numbers(np.asarray(numbers))
        d_pos = self._upload_positions(positions)
        self._run(d_pos, cell, pbc)
        energies = self.energies.copy_to_host()
        forces = self.forces.copy_to_host()
        atom_virial = self.atom_virial.copy_to_host()
        check_overlap(self.closest.copy_to_host())
        return structure_results(energies, forces, atom_virial.reshape(n, 3, 3), volume)

    def _upload_positions(self, positions):
        n = positions.shape[0]
        if getattr(self, "_d_pos_host", None) is None or self._d_pos_host.shape[0] != n:
            self._d_pos_host = self.cuda.device_array((n, 3), np.float64)
        self._d_pos_host.copy_to_device(positions)
        return self._d_pos_host

    def compute_device(self, positions, cell=None, pbc=False, numbers=None, rebuild=False):
        """Energy, forces, virial and stress with device arrays in and out (for MD).

        positions: (N, 3) device array (numba, or anything with __cuda_array_interface__, e.g.
        CuPy) in Å, float64 recommended; a host array is uploaded. cell (3, 3) and pbc: host
        values, as for `compute`. numbers: atomic numbers (N,), needed on the first call and
        whenever they change (or use `set_numbers`). rebuild: force a neighbour-list rebuild.

        Returns a dict of device arrays, valid until the next call (copy them to keep them):
        energy (1,) eV, energies (N,) eV, forces (N, 3) eV/Å, virial (3, 3) eV, stress (6,)
        eV/Å^3 (ASE Voigt order; None when the cell has no volume), atom_virial (N, 3, 3) eV,
        min_distance (1,) Å: the closest pair (check it against MIN_DISTANCE when convenient;
        this call does not copy anything back to check it). Only the neighbour-list skin check
        (8 bytes) and, on a rebuild, a few capacity flags come back to the host.
        """
        cuda = self.cuda
        if getattr(positions, "__cuda_ndarray__", False):          # numba device array
            d_pos = positions
        elif hasattr(positions, "__cuda_array_interface__"):       # CuPy, PyTorch, ...
            d_pos = cuda.as_cuda_array(positions)
        else:
            d_pos = self._upload_positions(np.ascontiguousarray(positions, dtype=np.float64))
        if d_pos.ndim != 2 or d_pos.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3), got {d_pos.shape}")
        n = d_pos.shape[0]
        cell = np.zeros((3, 3)) if cell is None else np.ascontiguousarray(cell, dtype=np.float64)
        if cell.shape != (3, 3) or not np.all(np.isfinite(cell)):
            raise ValueError(f"cell must be a finite (3, 3) array, got shape {cell.shape}")
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        if numbers is not None:
            self.set_numbers(numbers)
        if self._species_host is None:
            raise ValueError("numbers (atomic numbers of the atoms) are required on the first call")
        if self._species_host.shape[0] != n:
            raise ValueError(f"{n} positions but {self._species_host.shape[0]} atomic numbers")
        if n == 0:
            raise ValueError("compute_device needs at least one atom")
        self._run(d_pos, cell, pbc, rebuild=rebuild)
        volume = abs(np.linalg.det(cell))
        inv_volume = 1.0 / volume if volume > 1e-12 else 0.0
        ck = self.ck
        n_red = self._partial.shape[0]
        ck.reduce_atoms_kernel[n_red, ck.RED_BLOCK](self.energies, self.atom_virial, self.closest,
                                                    self._partial)
        ck.reduce_final_kernel[1, ck.RED_BLOCK](self._partial, inv_volume, self.energy,
                                                self.virial, self.stress, self.min_distance)
        return {"energy": self.energy, "energies": self.energies, "forces": self.forces,
                "virial": self.virial, "stress": self.stress if inv_volume else None,
                "atom_virial": self.atom_virial.reshape(n, 3, 3),
                "min_distance": self.min_distance}
