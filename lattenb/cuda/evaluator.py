"""Run a `LatteModel` on an NVIDIA GPU with Numba CUDA (the optional extra ``lattenb[cuda]``).

    from lattenb.cuda import CudaEvaluator
    gpu = CudaEvaluator(model)                              # float64; dtype="float32" for speed
    out = gpu.compute(positions, cell, pbc, numbers)        # same dict as LatteModel.compute

    # MD without a host round trip per step: device arrays in and out
    d_pos = numba.cuda.to_device(positions)                 # or any __cuda_array_interface__ array
    res = gpu.compute_device(d_pos, cell, pbc, numbers)     # numbers only needed on the first call
    res["forces"]                                           # (N, 3) float64 device array

Nothing here is imported when lattenb runs on the CPU (device="cpu", the default). Importing this
module does not import ``numba.cuda``; creating a `CudaEvaluator` does (after
`lattenb.cuda.probe.check_cuda`).

What runs on the GPU: the neighbour list (`lattenb.cuda.neighbors.DeviceNeighborList`, a cell
list rebuilt on the GPU and reused with a Verlet skin), the radial basis, body tensors,
contractions, standardisation, the MLP and its input gradient, the contraction adjoint, per-pair
dE/dv, the per-atom virial, the force gather and the reductions to energy, virial and stress. See
`lattenb.cuda.kernels_energy` for the kernels.

Testing without a GPU: set NUMBA_ENABLE_CUDASIM=1 before numba.cuda is first imported; the Numba
CUDA simulator then counts as a usable device (slow: keep systems small).
"""
import numpy as np

from ..backends import structure_results
from ..repulsion import repulsion_results
from ..validate import check_overlap
from ..neighbors import _effective_cell, _validate
from .neighbors import DeviceNeighborList
from .probe import check_cuda, dtype_name

__all__ = ["CudaEvaluator"]



def _host_inputs(positions, cell, pbc, cutoff):
    cell = np.zeros((3, 3)) if cell is None else cell
    return _validate(positions, cell, pbc, cutoff)


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
        from . import kernels_energy
        self.ck = kernels_energy
        self.cuda = kernels_energy.cuda
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
        """Upload the model's parameters (`LatteModel.kernel_arrays`) when they changed, and pick
        the energy kernel for the model's shape. The one place that reads kernel_arrays()."""
        ka = self.model.kernel_arrays()
        if ka is self._params_of:
            return
        cuda = self.cuda
        fdt = np.float32 if self.dtype == "float32" else np.float64
        try:
            ka.radial_family.cuda_functions(fdt)
        except NotImplementedError:
            raise ValueError(f"the radial family {ka.radial_family.name!r} has no CUDA functions "
                             f"(`RadialFamily.cuda_functions`); use device='cpu' for this "
                             f"model") from None
        if self.model.pair_radial:
            raise ValueError("radial functions per species pair (pair_radial) run on the CPU "
                             "only so far; use device='cpu' for this model")
        if self.model.layout.shared:
            raise ValueError("blocks with shared channels ('nc,...') run on the CPU only so far "
                             "(the CUDA kernels give every term bodies of its own); use "
                             "device='cpu' for this model")
        body_rank, body_offset, term_body_start, term_pattern, p_rows, p_start, tables = ka.layout[:7]
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
        self._layout = tuple(i32(a) for a in ka.layout[:8])
        self._body_order = i32(np.argsort(-np.asarray(body_rank), kind="stable"))
        self._sigma = f(ka.sigma_scaled)      # the family's scale folded in
        self._radial = f(ka.radial[ka.radial_row])     # one row per central species
        self._g_mean = f(ka.g_mean)
        self._g_inv_std = f(ka.g_inv_std)
        self._mlp = f(ka.mlp_params)
        self._layer_sizes = i32(sizes)
        self._e0 = cuda.to_device(np.ascontiguousarray(ka.e0, dtype=np.float64))
        self._cutoff2 = float(ka.cutoff) ** 2
        self.kernel = self.ck.energy_kernel(M, T, n_act, widest, self.team_size,
                                            int(ka.activation), self.dtype,
                                            bool(np.any(ka.layout[7] != 0)),
                                            ka.radial_family.name)
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
            self._cutoff2, self._body_order, *self._layout, self._sigma, self._radial,
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
            _effective_cell(cell, pbc)
            return structure_results(np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3, 3)), volume)
        self.set_numbers(np.asarray(numbers))
        d_pos = self._upload_positions(positions)
        self._run(d_pos, cell, pbc)
        energies = self.energies.copy_to_host()
        forces = self.forces.copy_to_host()
        atom_virial = self.atom_virial.copy_to_host().reshape(n, 3, 3)
        check_overlap(self.closest.copy_to_host())
        # the core repulsion (a few pairs at most) is added on the host, in float64
        repulsion = repulsion_results(self.model, positions, cell, pbc, species)
        if repulsion is not None:
            energies, forces, atom_virial = (a + b for a, b in zip((energies, forces, atom_virial),
                                                                    repulsion))
        return structure_results(energies, forces, atom_virial, volume)

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
        if self.model.repulsion != "none":
            raise ValueError(f"compute_device does not add the core repulsion "
                             f"({self.model.repulsion!r}) yet: use compute, which adds it on the "
                             f"host")
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
