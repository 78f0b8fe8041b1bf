"""`LatteModel`: the parameters of a LATTE potential and its plain-array entry points.

    model = LatteModel(species=["Ni", "Mo"], cutoff=5.0, blocks="8,-:8,i,i:8,ij,ij:8,i,j,ij",
                       hidden=(32, 16), seed=0)
    out = model.compute(positions, cell, pbc, numbers)   # energy, energies, forces, virial, stress
    atoms.calc = model.calculator()                      # ASE
    model.save("model.npz"); same = lattenb.load("model.npz")

Parameters (S species, B bodies, T terms), species-first so kernels read contiguous memory:
    centres, widths (S, B) Å       radial centre and width of every body, per central species
    sigma (S, S, B)                 species weight per (central, neighbour) species and body
    mlp (S, n_parameters)           flat MLP parameters per species (see `lattenb.mlp`)
    e0 (S,) eV                      per-species reference energy
    g_mean, g_std (S, T)            descriptor standardisation, fixed at initialisation/fit
"""
import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from .blocks import descriptor_layout, format_blocks, parse_blocks
from .descriptor import descriptors_kernel
from .energy import KernelArrays, check_overlap, default_chunks, evaluate
from .mlp import activation_code, init_parameters, n_parameters
from .neighbors import neighbor_list
from .radial import radial_reciprocals, support_bins

#: Documented presets. "fast" is the speed benchmark's model (issue 2, benchmarks/bench_md.py).
PRESETS = {
    "fast": {"blocks": "8,-:8,i,i:8,ij,ij:8,i,j,ij", "cutoff": 5.0, "hidden": (32, 16)},
    "accurate": {"blocks": "12,-:12,i,i:12,ij,ij:12,i,j,ij:6,ijk,ijk:6,ij,jk,ki",
                 "cutoff": 5.5, "hidden": (64, 32)},
}

MIN_WIDTH = 0.3          # Å: smallest radial width the fit may reach
PARAMETER_NAMES = ("centres", "widths", "sigma", "mlp", "e0", "g_mean", "g_std")


def _species_numbers(species):
    if isinstance(species, str) or not len(species):
        raise ValueError(f"species must be a non-empty list of chemical symbols, got {species!r}")
    numbers = []
    for s in species:
        if isinstance(s, (int, np.integer)):
            if not 0 < int(s) < len(chemical_symbols):
                raise ValueError(f"unknown atomic number {s}")
            numbers.append(int(s))
        elif s in atomic_numbers and s != "X":
            numbers.append(atomic_numbers[s])
        else:
            raise ValueError(f"unknown chemical symbol {s!r}")
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"species contains duplicates: {species!r}")
    return np.array(numbers, dtype=np.int64)


class LatteModel:
    """A LATTE potential: descriptor settings, parameters, and evaluation.

    species: chemical symbols (or atomic numbers) the model knows, in a fixed order.
    cutoff: Å. blocks: block string (see `lattenb.blocks`). hidden: hidden layer sizes, a tuple
    or a comma-separated string ("32,16").
    activation: "gaussian" (exp(-x^2), default), "tanh" or "silu". width: initial radial width
    in Å (default cutoff / 4). seed: for the random initialisation.
    """

    def __init__(self, species, cutoff=5.0, blocks=PRESETS["fast"]["blocks"], hidden=(32, 16),
                 activation="gaussian", width=None, seed=0):
        self.numbers = _species_numbers(species)
        self.species = tuple(chemical_symbols[z] for z in self.numbers)
        cutoff = float(cutoff)
        if not np.isfinite(cutoff) or cutoff <= 2 * MIN_WIDTH:
            raise ValueError(f"cutoff must be a finite length above {2 * MIN_WIDTH} Å, got {cutoff}")
        self.cutoff = cutoff
        self.blocks = format_blocks(parse_blocks(blocks))
        self.layout = descriptor_layout(self.blocks)
        if isinstance(hidden, str):   # "32,16", as on the command line
            try:
                hidden = tuple(int(h) for h in hidden.split(","))
            except ValueError:
                raise ValueError(f"hidden layer sizes must be comma-separated positive integers, "
                                 f"got {hidden!r}") from None
        if isinstance(hidden, (int, np.integer)):
            hidden = (hidden,)
        if any(isinstance(h, bool) or not float(h).is_integer() or h <= 0 for h in hidden):
            raise ValueError(f"hidden layer sizes must be positive integers, got {tuple(hidden)}")
        hidden = tuple(int(h) for h in hidden)
        self.hidden = hidden
        activation_code(activation)
        self.activation = activation
        self.seed = int(seed)
        width = cutoff / 4 if width is None else float(width)
        if not MIN_WIDTH <= width <= cutoff / 2:
            raise ValueError(f"width must lie in [{MIN_WIDTH}, cutoff/2 = {cutoff / 2}] Å, got {width}")
        self.params = self._initial_parameters(width, np.random.default_rng(self.seed))
        self._kernel_arrays = None
        self.device, self.dtype = "cpu", "float64"
        #: summary of the fit that produced the parameters (iterations, wall time, fitted reference
        #: stress offset, ...); written to and read from the model file
        self.fit_info = {}

    @classmethod
    def preset(cls, name, species, **overrides):
        """A model from a named preset ("fast" or "accurate"); keyword arguments override it."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(species, **{**PRESETS[name], **overrides})

    # ----------------------------------------------------------------- parameters
    @property
    def n_species(self):
        return len(self.numbers)

    @property
    def layer_sizes(self):
        return np.array((self.layout.n_terms,) + self.hidden + (1,), dtype=np.int64)

    def _initial_parameters(self, width, rng):
        S, B, T = self.n_species, self.layout.n_bodies, self.layout.n_terms
        return {
            "centres": rng.uniform(width, self.cutoff - width, size=(S, B)),
            "widths": np.full((S, B), width),
            "sigma": rng.normal(0.0, 1.0, size=(S, S, B)),
            "mlp": np.stack([init_parameters(self.layer_sizes, rng) for _ in range(S)]),
            "e0": np.zeros(S),
            "g_mean": np.zeros((S, T)),
            "g_std": np.ones((S, T)),
        }

    def parameter_shapes(self):
        S, B, T = self.n_species, self.layout.n_bodies, self.layout.n_terms
        return {"centres": (S, B), "widths": (S, B), "sigma": (S, S, B),
                "mlp": (S, n_parameters(self.layer_sizes)), "e0": (S,),
                "g_mean": (S, T), "g_std": (S, T)}

    def set_parameters(self, **arrays):
        """Replace parameter arrays (validated for shape, finiteness and radial validity)."""
        shapes = self.parameter_shapes()
        new = dict(self.params)
        for name, value in arrays.items():
            if name not in shapes:
                raise ValueError(f"unknown parameter {name!r}; known: {sorted(shapes)}")
            value = np.array(value, dtype=np.float64)
            if value.shape != shapes[name]:
                raise ValueError(f"parameter {name!r} has shape {value.shape}, expected {shapes[name]}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"parameter {name!r} contains NaN or infinite values")
            new[name] = value
        c, w = new["centres"], new["widths"]
        if np.any(w <= 0) or np.any(c - w < -1e-9) or np.any(c + w > self.cutoff + 1e-9):
            raise ValueError("radial functions must satisfy 0 < w, w <= c and c + w <= cutoff")
        if np.any(new["g_std"] <= 0):
            raise ValueError("g_std must be positive")
        self.params = new
        self._kernel_arrays = None

    def kernel_arrays(self):
        """The parameters as the plain arrays the Numba kernels take (cached until they change)."""
        if self._kernel_arrays is None:
            p = self.params
            inv_w, inv_c2 = radial_reciprocals(p["centres"], p["widths"])
            bin_ptr, bin_bodies, inv_bin = support_bins(p["centres"], p["widths"], self.cutoff,
                                                        body_rank=self.layout.body_rank)
            self._kernel_arrays = KernelArrays(
                cutoff=self.cutoff, layout=self.layout.kernel_tuple(),
                sigma=np.ascontiguousarray(p["sigma"]),
                sigma_c2=np.ascontiguousarray(p["sigma"] * inv_c2[:, None, :]),
                centres=np.ascontiguousarray(p["centres"]),
                inv_w=inv_w, inv_c2=inv_c2, bin_ptr=bin_ptr, bin_bodies=bin_bodies,
                inv_bin=inv_bin, g_mean=np.ascontiguousarray(p["g_mean"]),
                g_inv_std=1.0 / p["g_std"], mlp_params=np.ascontiguousarray(p["mlp"]),
                layer_sizes=self.layer_sizes, activation=activation_code(self.activation),
                e0=np.ascontiguousarray(p["e0"]))
        return self._kernel_arrays

    # ----------------------------------------------------------------- device
    def to(self, device="cpu", dtype=None):
        """Where `compute` and `calculator` run by default: "cpu" or "cuda" (an NVIDIA GPU,
        needs the extra lattenb[cuda]); dtype "float64" (default) or "float32" (CUDA only).
        Returns self. RuntimeError naming what is missing when CUDA is not usable."""
        self.device, self.dtype = self._device(device, dtype)
        return self

    def _device(self, device=None, dtype=None):
        """Validated (device, dtype), defaults from `to`; imports the CUDA code only for "cuda"."""
        if device is None:
            device = self.device
            dtype = self.dtype if dtype is None else dtype
        if device == "cuda":
            from .gpu import check_cuda, dtype_name
            check_cuda()
            return "cuda", dtype_name(dtype)
        if device != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if dtype not in (None, "float64", np.float64):
            raise ValueError(f"dtype {dtype!r} needs device='cuda'; the CPU kernels are float64")
        return "cpu", "float64"

    # ----------------------------------------------------------------- evaluation
    def species_indices(self, numbers):
        """Map atomic numbers (N,) to indices into `self.species`; ValueError for unknown ones."""
        numbers = np.asarray(numbers)
        if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
            raise ValueError(f"numbers must be a 1-d integer array, got shape {numbers.shape} "
                             f"and dtype {numbers.dtype}")
        lookup = np.full(max(int(numbers.max(initial=0)), int(self.numbers.max())) + 1, -1, np.int64)
        lookup[self.numbers] = np.arange(self.n_species)
        if numbers.size and numbers.min() < 0:
            raise ValueError("atomic numbers must be non-negative")
        index = lookup[numbers]
        if np.any(index < 0):
            unknown = sorted({chemical_symbols[z] if z < len(chemical_symbols) else str(z)
                              for z in numbers[index < 0]})
            raise ValueError(f"species {unknown} not known to this model (it knows "
                             f"{list(self.species)})")
        return index

    def _prepare(self, positions, cell, pbc, numbers, neighbors):
        positions = np.ascontiguousarray(positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
        if not np.all(np.isfinite(positions)):
            raise ValueError("positions contain NaN or infinite values")
        cell = np.zeros((3, 3)) if cell is None else np.ascontiguousarray(cell, dtype=np.float64)
        if cell.shape != (3, 3):
            raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        species = self.species_indices(numbers)
        if species.shape[0] != positions.shape[0]:
            raise ValueError(f"{positions.shape[0]} positions but {species.shape[0]} atomic numbers")
        if neighbors is None:
            offsets, second, shifts = neighbor_list(positions, cell, pbc, self.cutoff)
        elif hasattr(neighbors, "get"):
            offsets, second, shifts = neighbors.get(positions, cell, pbc)[:3]
        else:
            offsets, second, shifts = neighbors
        return positions, cell, pbc, species, offsets, second, shifts

    def compute(self, positions, cell=None, pbc=False, numbers=None, neighbors=None,
                n_centres=None, device=None, dtype=None):
        """Energy, per-atom energies, forces, virial and stress from plain arrays.

        positions (N, 3) Å; cell (3, 3) Å (rows are lattice vectors; None for a cluster);
        pbc bool or (3,) bools; numbers (N,) atomic numbers. neighbors: optional neighbour list
        (offsets, second, shifts) or a `NeighborCache` to reuse between MD steps.
        n_centres: if given, only atoms i < n_centres carry energy; the others act as
        neighbours only (ghost atoms of a spatial domain).
        Returns a dict: energy (eV), energies (N,) eV, forces (N, 3) eV/Å, virial (3, 3) eV
        (W = -dE/d(strain)), stress (6,) eV/Å^3 in ASE Voigt order, or None when the cell has
        no volume, atom_virial (N, 3, 3) eV (each atom's share of W).
        device: "cpu" or "cuda" (default: the model's, see `to`); dtype "float64" or "float32"
        (CUDA only). On "cuda" the GPU builds its own neighbour list (neighbors and n_centres
        are not supported); see `lattenb.gpu.CudaEvaluator.compute_device` for device arrays.
        """
        if numbers is None:
            raise ValueError("numbers (atomic numbers of the atoms) are required")
        device, dtype = self._device(device, dtype)
        if device == "cuda":
            if neighbors is not None or n_centres is not None:
                raise ValueError("neighbors and n_centres are not supported with device='cuda' "
                                 "(the GPU builds and keeps its own neighbour list)")
            from .gpu import get_evaluator
            return get_evaluator(self, dtype).compute(positions, cell, pbc, numbers)
        positions, cell, pbc, species, offsets, second, shifts = self._prepare(
            positions, cell, pbc, numbers, neighbors)
        volume = abs(np.linalg.det(cell))
        return evaluate(self.kernel_arrays(), positions, cell, species, offsets, second, shifts,
                        volume=volume if volume > 1e-12 else None, n_centres=n_centres)

    def descriptors(self, positions, cell=None, pbc=False, numbers=None, neighbors=None):
        """Raw (unstandardised) descriptors G (N, T) from plain arrays."""
        positions, cell, pbc, species, offsets, second, shifts = self._prepare(
            positions, cell, pbc, numbers, neighbors)
        k = self.kernel_arrays()
        G, closest = descriptors_kernel(positions, cell[None], np.zeros(len(positions), np.int64),
                                        offsets, second, shifts, species, k.cutoff, k.layout,
                                        k.sigma_c2, k.centres, k.inv_w, k.bin_ptr,
                                        k.bin_bodies, k.inv_bin, default_chunks(len(positions)))
        check_overlap(closest)
        return G

    def calculator(self, device=None, dtype=None, **kwargs):
        """An ASE calculator for this model (see `lattenb.calculator.LatteCalculator`);
        device "cpu" or "cuda" (default: the model's, see `to`), dtype as for `compute`."""
        from .calculator import LatteCalculator
        return LatteCalculator(self, device=device, dtype=dtype, **kwargs)

    def save(self, path):
        """Write one .npz file (no pickle) with a JSON header; see `lattenb.io`."""
        from .io import save_model
        save_model(self, path)

    def __repr__(self):
        return (f"LatteModel(species={list(self.species)}, cutoff={self.cutoff}, "
                f"blocks={self.blocks!r}, hidden={self.hidden}, activation={self.activation!r})")
