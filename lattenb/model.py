"""`LatteModel`: the parameters of a LATTE potential and its plain-array entry points.

    model = LatteModel(species=["Ni", "Mo"], cutoff=5.0, blocks="8,-:8,i,i:8,ij,ij:8,i,j,ij",
                       hidden=(32, 16), seed=0)
    out = model.compute(positions, cell, pbc, numbers)   # energy, energies, forces, virial, stress
    atoms.calc = model.calculator()                      # ASE
    model.save("model.npz"); same = lattenb.load("model.npz")

Parameters (S species, B bodies, T terms), species-first so kernels read contiguous memory:
    the radial family's arrays     e.g. centres, widths (S, B) Å of the "polynomial" family: the
                                    radial function of every body, per central species; (1, B)
                                    with shared_radial=True (one set for every central species),
                                    (S^2, B) with pair_radial=True (row s S + s' for central s,
                                    neighbour s')
    the species mode's arrays       sigma (S, S, B), the species weight per (central, neighbour)
                                    species and body, in the "pair" mode; its rank-d factors
                                    (S, d), (S, d), (B, d) in the "embedding" mode
                                    (`lattenb.species_modes`)
    mlp (S, n_parameters)           flat MLP parameters per species (see `lattenb.mlp`)
    e0 (S,) eV                      per-species reference energy
    g_mean, g_std (S, T)            descriptor standardisation, fixed at initialisation/fit
"""
import numpy as np
from ase.data import chemical_symbols

from . import radial as radial_families
from . import repulsion as repulsion_terms
from . import species_modes
from .blocks import descriptor_layout, format_blocks, parse_blocks
from .conventions import UNITS
from . import backends
from .extrapolation import DEFAULT_FEATURES, ActiveSet, check_features, n_features
from .io import read_model_file, write_model_file
from .kernels import KernelArrays
from .mlp import activation_code, init_parameters, n_parameters
from .radial import support_bins
from .species import parse_species, species_indices
from .validate import check_inputs

#: Allen et al.'s 13 functionally independent invariants of the irreducible tensors S, v, Q, T of
#: one channel (arXiv:2503.23515), as traceless patterns; the first 6 use ranks <= 2 only
HOP_PATTERNS = ("-", "I,I", "IJ,IJ", "I,IJ,J", "IJ,JK,KI", "I,IJ,JK,K", "IJK,IJK", "IJ,JKL,IKL",
                "I,J,K,IJK", "I,IJK,JKL,L", "IJ,JK,ILM,KLM", "IJ,IJK,KLM,LM", "IJK,IJL,MNK,MNL")

#: Documented presets. "fast" is the speed benchmark's model (issue 2, benchmarks/bench_md.py).
#: "hop": 2 terms of each of the 13 invariants; "hop-r2": 6 of each of the 6 of ranks <= 2.
PRESETS = {
    "fast": {"blocks": "8,-:8,i,i:8,ij,ij:8,i,j,ij", "cutoff": 5.0, "hidden": (32, 16)},
    "accurate": {"blocks": "12,-:12,i,i:12,ij,ij:12,i,j,ij:6,ijk,ijk:6,ij,jk,ki",
                 "cutoff": 5.5, "hidden": (64, 32)},
    "hop": {"blocks": ":".join(f"2,{p}" for p in HOP_PATTERNS), "cutoff": 5.0,
            "hidden": (32, 16)},
    "hop-r2": {"blocks": ":".join(f"6,{p}" for p in HOP_PATTERNS[:6]), "cutoff": 5.0,
               "hidden": (32, 16)},
}

#: the preset when none is named (`lattenb.fit`, `lattenb fit`)
DEFAULT_PRESET = "fast"

MIN_CUTOFF = 0.6         # Å: twice the polynomial family's smallest width (`radial.polynomial`)


def parse_hidden(text):
    """Hidden layer sizes from a command-line string, "32,16" -> (32, 16)."""
    try:
        return tuple(int(h) for h in text.split(","))
    except ValueError:
        raise ValueError(f"hidden layer sizes must be comma-separated positive integers, "
                         f"got {text!r}") from None


class LatteModel:
    """A LATTE potential: descriptor settings, parameters, and evaluation.

    species: chemical symbols (or atomic numbers) the model knows, in a fixed order.
    cutoff: Å. blocks: block string (see `lattenb.blocks`). hidden: hidden layer sizes, a tuple
    or a comma-separated string ("32,16").
    activation: "gaussian" (exp(-x^2), default), "tanh" or "silu". radial: the radial family's
    name (`lattenb.radial.names()`, default "polynomial"), saved with the model. shared_radial:
    one set of radial functions for every central species (s-NNP's shared filters; the species
    weights sigma stay per species pair), saved with the model. pair_radial: one set of radial
    functions per (central species, neighbour species) pair, as MTP and ACE resolve their radial
    bases (S^2 rows instead of S; the same pair work per MD step), saved with the model.
    species_mode: how the species weights sigma are parametrised, "pair" (default: one per
    species pair and body) or "embedding" (a rank-`embedding_dim` factorisation through
    per-species embedding vectors, parameters linear in the number of species;
    `lattenb.species_modes`), saved with the model.
    repulsion: "none" (default) or "zbl", a core repulsion added to the learned energy
    (`lattenb.repulsion`), with repulsion_radii (S, S, 2) Å, (r_in, r_out) per species pair
    (`lattenb.repulsion.radii_from_data` places them below the training data) and repulsion_wall
    (S, S, K, 2), (reach Å, coefficient eV) per species pair, or None (`fit` solves it:
    `lattenb.short_range`), and repulsion_coordination, the terms acting outside the training
    data's range of coordination (a dict, `lattenb.repulsion`; None: none); saved with the
    model. grade_features: what the extrapolation grades are computed on, "descriptors"
    (default) or "last_hidden" (`lattenb.extrapolation`), saved with the model. width: initial
    radial width in Å (default cutoff / 4). seed: for the random initialisation.
    """

    def __init__(self, species, cutoff=5.0, blocks=PRESETS["fast"]["blocks"], hidden=(32, 16),
                 activation="gaussian", width=None, seed=0, radial=radial_families.DEFAULT,
                 shared_radial=False, pair_radial=False, species_mode=species_modes.DEFAULT,
                 embedding_dim=species_modes.DEFAULT_EMBEDDING_DIM,
                 repulsion=repulsion_terms.DEFAULT, repulsion_radii=None, repulsion_wall=None,
                 repulsion_coordination=None, grade_features=DEFAULT_FEATURES):
        self.numbers = parse_species(species)
        self.species = tuple(chemical_symbols[z] for z in self.numbers)
        cutoff = float(cutoff)
        if not np.isfinite(cutoff) or cutoff <= MIN_CUTOFF:
            raise ValueError(f"cutoff must be a finite length above {MIN_CUTOFF} Å, got {cutoff}")
        self.radial_family = radial_families.get(radial)
        self.radial = self.radial_family.name
        if not isinstance(shared_radial, (bool, np.bool_)):
            raise ValueError(f"shared_radial must be True or False, got {shared_radial!r}")
        self.shared_radial = bool(shared_radial)
        if not isinstance(pair_radial, (bool, np.bool_)):
            raise ValueError(f"pair_radial must be True or False, got {pair_radial!r}")
        self.pair_radial = bool(pair_radial)
        if self.shared_radial and self.pair_radial:
            raise ValueError("shared_radial and pair_radial exclude each other: radial functions "
                             "are shared by every species, or one set per species pair")
        self.species_mode_impl = species_modes.get(species_mode)
        self.species_mode = self.species_mode_impl.name
        self.embedding_dim = species_modes.check_embedding_dim(embedding_dim)
        self.cutoff = cutoff
        self.set_repulsion(repulsion, repulsion_radii, repulsion_wall, repulsion_coordination)
        self.grade_features = check_features(grade_features)
        self.blocks = format_blocks(parse_blocks(blocks))
        self.layout = descriptor_layout(self.blocks)
        if isinstance(hidden, str):   # "32,16", as on the command line
            hidden = parse_hidden(hidden)
        if isinstance(hidden, (int, np.integer)):
            hidden = (hidden,)
        if any(isinstance(h, bool) or not float(h).is_integer() or h <= 0 for h in hidden):
            raise ValueError(f"hidden layer sizes must be positive integers, got {tuple(hidden)}")
        hidden = tuple(int(h) for h in hidden)
        self.hidden = hidden
        activation_code(activation)
        self.activation = activation
        self.seed = int(seed)
        self.params = self._initial_parameters(width, np.random.default_rng(self.seed))
        self._kernel_arrays = None
        self.device, self.dtype = "cpu", "float64"
        #: summary of the fit that produced the parameters (iterations, wall time, fitted reference
        #: stress offset, ...); written to and read from the model file
        self.fit_info = {}
        #: the `extrapolation.ActiveSet` of the training environments (None: no grades); set at
        #: the end of `lattenb.fit`, cleared whenever the parameters change
        self.active_set = None

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
    def n_radial_species(self):
        """Rows of the radial family's arrays: 1 when the radial functions are shared by every
        central species (`shared_radial`, s-NNP's shared filters), S^2 with one set per species
        pair (`pair_radial`, row s S + s'), else the number of species S."""
        if self.shared_radial:
            return 1
        return self.n_species ** 2 if self.pair_radial else self.n_species

    def radial_row(self):
        """(S, S) int64: the row of the radial arrays that central species s and neighbour
        species s' use (see `n_radial_species`)."""
        S = self.n_species
        central, neighbour = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
        if self.shared_radial:
            return np.zeros((S, S), np.int64)
        return (central * S + neighbour if self.pair_radial else central).astype(np.int64)

    @property
    def layer_sizes(self):
        return np.array((self.layout.n_terms,) + self.hidden + (1,), dtype=np.int64)

    def _initial_parameters(self, width, rng):
        S, B, T = self.n_species, self.layout.n_bodies, self.layout.n_terms
        return {
            **self.radial_family.initial_parameters(rng, self.n_radial_species, B, self.cutoff,
                                                    width),
            **self.species_mode_impl.initial_parameters(rng, self.numbers, B, self.embedding_dim),
            "mlp": np.stack([init_parameters(self.layer_sizes, rng) for _ in range(S)]),
            "e0": np.zeros(S),
            "g_mean": np.zeros((S, T)),
            "g_std": np.ones((S, T)),
        }

    def parameter_shapes(self):
        S, B, T = self.n_species, self.layout.n_bodies, self.layout.n_terms
        return {**self.radial_family.parameter_shapes(self.n_radial_species, B),
                **self.species_mode_impl.parameter_shapes(S, B, self.embedding_dim),
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
        self.radial_family.check(new, self.cutoff)
        if np.any(new["g_std"] <= 0):
            raise ValueError("g_std must be positive")
        self.params = new
        self._kernel_arrays = None
        self.active_set = None           # it described the old parameters

    @property
    def parameter_names(self):
        """Names of the parameter arrays: the radial family's, then the species mode's (sigma),
        mlp, e0, g_mean, g_std."""
        return tuple(self.parameter_shapes())

    def kernel_arrays(self):
        """The parameters as the `kernels.KernelArrays` the Numba kernels take (cached until they
        change)."""
        if self._kernel_arrays is None:
            p = self.params
            sigma = self.species_weights()
            family = self.radial_family
            constants, scale = family.kernel_constants(p, self.cutoff)
            lo, hi = family.support(p, self.cutoff)
            row = self.radial_row()
            bin_ptr, bin_bodies, inv_bin = support_bins(lo, hi, self.cutoff,
                                                        body_rank=self.layout.body_rank)
            self._kernel_arrays = KernelArrays(
                cutoff=self.cutoff, layout=self.layout.kernel_tuple(), radial_family=family,
                radial=constants, n_radial_slots=len(family.gradient_names),
                # (S,) unless per species pair: see `moments.radial_row_of`
                radial_row=row if self.pair_radial else np.ascontiguousarray(row[:, 0]),
                sigma=np.ascontiguousarray(sigma),
                sigma_scaled=np.ascontiguousarray(sigma * scale[row]),
                bin_ptr=bin_ptr, bin_bodies=bin_bodies, inv_bin=inv_bin,
                g_mean=np.ascontiguousarray(p["g_mean"]), g_inv_std=1.0 / p["g_std"],
                mlp_params=np.ascontiguousarray(p["mlp"]), layer_sizes=self.layer_sizes,
                activation=activation_code(self.activation), e0=np.ascontiguousarray(p["e0"]))
        return self._kernel_arrays

    def set_repulsion(self, repulsion, radii=None, wall=None, coordination=None):
        """Set the core repulsion: "none", or "zbl" with radii (S, S, 2) Å, (r_in, r_out) per
        species pair, r_out within the cutoff, and optionally a wall (S, S, K, 2), (reach Å,
        coefficient eV) per species pair and the coordination terms (a dict,
        `lattenb.repulsion.check_coordination`). ValueError for bad input."""
        name = repulsion_terms.check_name(repulsion)
        if name == "none":
            if radii is not None or wall is not None or coordination is not None:
                raise ValueError('repulsion_radii, repulsion_wall or repulsion_coordination '
                                 'given with repulsion="none"')
            self.repulsion, self.repulsion_radii, self._repulsion_arrays = name, None, None
            self.repulsion_wall = self.repulsion_coordination = None
            return
        if radii is None:
            raise ValueError(f"repulsion={name!r} needs repulsion_radii (S, S, 2) Å "
                             "(lattenb.repulsion.radii_from_data)")
        radii = repulsion_terms.check_radii(radii, len(self.numbers))
        if radii.max() > self.cutoff:
            raise ValueError(f"repulsion_radii reach {radii.max():.3f} Å, beyond the cutoff "
                             f"{self.cutoff} Å")
        wall_array = repulsion_terms.check_wall(wall, len(self.numbers), self.cutoff)
        coordination = repulsion_terms.check_coordination(coordination, len(self.numbers),
                                                          self.cutoff)
        self.repulsion = name
        self.repulsion_radii = radii.tolist()     # JSON-ready nested lists, as saved
        self.repulsion_wall = wall_array.tolist() if wall_array.shape[2] else None
        self.repulsion_coordination = None if coordination is None else {
            k: (None if isinstance(v, np.ndarray) and v.size == 0 else
                v.tolist() if isinstance(v, np.ndarray) else v) for k, v in coordination.items()}
        # what the kernel reads, made once rather than on every MD step
        self._repulsion_arrays = repulsion_terms.RepulsionArrays.build(
            self.numbers, radii, wall_array, coordination)

    def repulsion_arrays(self):
        """`repulsion.RepulsionArrays` for `repulsion.add_repulsion_kernel`, or None without a
        repulsion."""
        return self._repulsion_arrays

    def take_radial(self, source):
        """Use the radial functions of `source` (a `LatteModel` with the same radial family and
        number of bodies; cutoffs may differ if its windows fit inside this one's), e.g. filters
        learned on another system as the start of a fit (`fit(..., radial_from=source)`).
        Rows are matched by species (central, and neighbour for `pair_radial`); a source with one
        row (shared radial functions or a single species) gives it to every row. ValueError when
        they do not fit."""
        if source.radial != self.radial or source.layout.n_bodies != self.layout.n_bodies:
            raise ValueError(f"radial functions come from a model with the same radial family and "
                             f"number of bodies: this one has {self.radial!r} with "
                             f"{self.layout.n_bodies} bodies, the source {source.radial!r} with "
                             f"{source.layout.n_bodies}")
        names = self.radial_family.parameter_names()
        if source.n_radial_species == 1:
            rows = [0] * self.n_radial_species
        elif self.shared_radial:
            raise ValueError("shared radial functions come from a model with shared radial "
                             "functions or one species; the source has one set per species "
                             f"{list(source.species)}")
        else:
            missing = [s for s in self.species if s not in source.species]
            if missing:
                raise ValueError(f"the source model has no radial functions for "
                                 f"{', '.join(missing)} (it has {', '.join(source.species)})")
            index = [source.species.index(s) for s in self.species]
            source_row = source.radial_row()
            rows = np.zeros(self.n_radial_species, np.int64)
            for (s, t), row in np.ndenumerate(self.radial_row()):
                rows[row] = source_row[index[s], index[t]]
        self.set_parameters(**{n: np.asarray(source.params[n])[rows] for n in names})

    def set_active_set(self, active_set):
        """Use `active_set` (an `extrapolation.ActiveSet` of this model's features, or None) for
        extrapolation grades; ValueError for the wrong shapes."""
        if active_set is not None:
            active_set = ActiveSet.from_arrays(active_set.arrays(), self.n_species,
                                               n_features(self), "active set")
        self.active_set = active_set

    def require_active_set(self):
        """The `extrapolation.ActiveSet` (its `grades(phi, species)`); ValueError when the model
        has none."""
        if self.active_set is None:
            raise ValueError("this model has no active set, so no extrapolation grades: a fit "
                             "stores one; for a model without it run "
                             "`lattenb activeset MODEL TRAIN... -o MODEL`")
        return self.active_set

    def species_weights(self):
        """sigma (S, S, B): the weight of a neighbour of species s' in body b of an atom of
        species s, from the species mode's parameters."""
        return self.species_mode_impl.weights(self.params)

    def species_gradients(self, g_sigma):
        """{species mode parameter name: dL/dparameter} from dL/dsigma (S, S, B)."""
        return self.species_mode_impl.gradients(self.params, g_sigma)

    @property
    def species_parameter_names(self):
        """Names of the species mode's parameter arrays ("sigma" in the "pair" mode)."""
        return self.species_mode_impl.parameter_names

    def radial_gradients(self, slots):
        """{radial parameter name: dL/dparameter} from the kernels' gradient slots
        (n_radial_species, B, n_slots), one row per radial row."""
        return self.radial_family.gradients(slots)

    # ----------------------------------------------------------------- backends
    def to(self, device="cpu", dtype=None):
        """Where `compute` and `calculator` run by default: a backend name ("cpu", or "cuda" for
        an NVIDIA GPU with the extra lattenb[cuda]; see `lattenb.backends`) and dtype "float64"
        (default) or "float32" (CUDA only). Returns self. RuntimeError naming what is missing
        when the backend cannot run here."""
        backend = self.backend(device, dtype)
        self.device, self.dtype = backend.name, backend.dtype
        return self

    def backend(self, device=None, dtype=None):
        """The `lattenb.backends.Backend` for `device` and `dtype` (default: the model's, see
        `to`), created once per model; the CUDA code is imported only for "cuda"."""
        if device is None:
            device = self.device
            dtype = self.dtype if dtype is None else dtype
        return backends.get(device, self, dtype)

    # ----------------------------------------------------------------- evaluation
    def species_indices(self, numbers):
        """Map atomic numbers (N,) to indices into `self.species`; ValueError for unknown ones."""
        return species_indices(self.numbers, numbers)

    def prepare_inputs(self, positions, cell, pbc, numbers):
        """Validated float64 positions (N, 3), cell (3, 3), pbc (3,) and species indices (N,)
        (`lattenb.validate.check_inputs`); ValueError naming the problem."""
        if numbers is None:
            raise ValueError("numbers (atomic numbers of the atoms) are required")
        return check_inputs(positions, cell, pbc, numbers, self.numbers)

    def compute(self, positions, cell=None, pbc=False, numbers=None, neighbors=None,
                n_centres=None, device=None, dtype=None, grades=False):
        """Energy, per-atom energies, forces, virial and stress from plain arrays.

        positions (N, 3) Å; cell (3, 3) Å (rows are lattice vectors; None for a cluster);
        pbc bool or (3,) bools; numbers (N,) atomic numbers. neighbors: optional neighbour list
        (offsets, second, shifts) or the backend's neighbour list object
        (`backend().neighbor_list(skin)`, e.g. a `NeighborCache`) to reuse between MD steps.
        n_centres: if given, only atoms i < n_centres carry energy; the others act as
        neighbours only (ghost atoms of a spatial domain).
        Returns a dict: energy (eV), energies (N,) eV, forces (N, 3) eV/Å, virial (3, 3) eV
        (W = -dE/d(strain)), stress (6,) eV/Å^3 in ASE Voigt order, or None when the cell has
        no volume, atom_virial (N, 3, 3) eV (each atom's share of W).
        device: a backend name, "cpu" or "cuda" (default: the model's, see `to`); dtype
        "float64" or "float32" (CUDA only). On "cuda" the GPU builds its own neighbour list
        (n_centres is not supported); see `lattenb.cuda.CudaEvaluator.compute_device` for
        device arrays. grades: also extrapolation_grades (N,) and extrapolation_grade, the
        structure's maximum (`lattenb.extrapolation`; needs the model's active set).
        """
        return self.backend(device, dtype).compute(positions, cell, pbc, numbers,
                                                   neighbors=neighbors, n_centres=n_centres,
                                                   grades=grades)

    def descriptors(self, positions, cell=None, pbc=False, numbers=None, neighbors=None):
        """Raw (unstandardised) descriptors G (N, T) from plain arrays (CPU)."""
        return self.backend("cpu").descriptors(positions, cell, pbc, numbers, neighbors)

    def calculator(self, device=None, dtype=None, **kwargs):
        """An ASE calculator for this model (see `lattenb.calculator.LatteCalculator`);
        device "cpu" or "cuda" (default: the model's, see `to`), dtype as for `compute`."""
        from .calculator import LatteCalculator
        return LatteCalculator(self, device=device, dtype=dtype, **kwargs)

    def save(self, path, params=None, extra_arrays=None, extra_header=None):
        """Write one .npz file (no pickle) with a JSON header (`file_header`); see `lattenb.io`.

        params: parameter arrays to write instead of self.params; extra_arrays / extra_header:
        additional arrays and header fields (training checkpoints use them; readers ignore them)."""
        arrays = {**(params if params is not None else self.params), **(extra_arrays or {})}
        if self.active_set is not None and params is None:
            arrays.update(self.active_set.arrays())
        write_model_file(path, self.file_header(extra_header), arrays)

    def __deepcopy__(self, memo):
        """A copy with its own parameters; the radial family and the species mode are shared
        (they are stateless), the kernel arrays and backends (which may hold GPU buffers) are made anew on first use."""
        import copy
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            if name == "_backends":
                continue
            shared = name in ("radial_family", "species_mode_impl")
            setattr(new, name, value if shared else copy.deepcopy(value, memo))
        new._kernel_arrays = None
        return new

    def __repr__(self):
        return (f"LatteModel(species={list(self.species)}, cutoff={self.cutoff}, "
                f"blocks={self.blocks!r}, hidden={self.hidden}, activation={self.activation!r}, "
                f"radial={self.radial!r}"
                + (", shared_radial=True" if self.shared_radial else "")
                + (", pair_radial=True" if self.pair_radial else "")
                + (f", species_mode={self.species_mode!r}, embedding_dim={self.embedding_dim}"
                   if self.species_mode != "pair" else "")
                + (f", repulsion={self.repulsion!r}" if self.repulsion != "none" else "") + ")")

    # ----------------------------------------------------------------- model files
    #: the constructor arguments a model file's header holds: header field (= keyword argument
    #: and attribute name) -> value for files that lack it (REQUIRED: such a file is invalid)
    REQUIRED = object()
    FILE_FIELDS = {"species": REQUIRED, "cutoff": REQUIRED, "blocks": REQUIRED,
                   "hidden": REQUIRED, "activation": REQUIRED, "seed": 0,
                   "radial": radial_families.DEFAULT, "shared_radial": False,
                   "pair_radial": False,
                   "species_mode": species_modes.DEFAULT,
                   "embedding_dim": species_modes.DEFAULT_EMBEDDING_DIM,
                   "repulsion": repulsion_terms.DEFAULT, "repulsion_radii": None,
                   "repulsion_wall": None, "repulsion_coordination": None,
                   "grade_features": DEFAULT_FEATURES}

    def file_header(self, extra=None):
        """The JSON header of this model's file (see `lattenb.io`): the constructor arguments
        (FILE_FIELDS), units, the `extra` fields, and fit_info (`lattenb.io.write_model_file`
        writes a non-finite number, e.g. an infinite validation loss, as null: strict JSON)."""
        header = {name: list(value) if isinstance(value, tuple) else value
                  for name, value in ((name, getattr(self, name)) for name in self.FILE_FIELDS)}
        header.update(units=UNITS, **(extra or {}))
        if self.fit_info:
            header["fit_info"] = dict(self.fit_info)
        return header

    @classmethod
    def constructor_arguments(cls, header):
        """The keyword arguments of `LatteModel` a file header holds (KeyError for a missing
        required field)."""
        return {name: header[name] if default is cls.REQUIRED else header.get(name, default)
                for name, default in cls.FILE_FIELDS.items()}

    @classmethod
    def from_file_data(cls, header, arrays, path):
        """The model a file holds, from its header and arrays (`lattenb.io.read_model_file`);
        ValueError naming `path` and the problem (missing field or array, wrong shape, ...)."""
        try:
            model = cls(**cls.constructor_arguments(header))
        except KeyError as exc:
            raise ValueError(f"{path}: model header lacks the field {exc}") from None
        shapes = model.parameter_shapes()
        missing = [n for n in shapes if n not in arrays]
        if missing:
            raise ValueError(f"{path}: model file lacks arrays {missing}")
        for name in shapes:
            if arrays[name].shape != shapes[name]:
                raise ValueError(f"{path}: array {name!r} has shape {arrays[name].shape}, expected "
                                 f"{shapes[name]} for this header")
        model.set_parameters(**{n: arrays[n] for n in shapes})
        model.set_active_set(ActiveSet.from_arrays(arrays, model.n_species, n_features(model),
                                                   path))
        if isinstance(header.get("fit_info"), dict):
            model.fit_info = dict(header["fit_info"])
        return model


def read_model(path):
    """(model, header dict, extra arrays dict) from a model or checkpoint file; ValueError naming
    the problem if the file is bad. The extra arrays are those that are not parameters."""
    header, arrays = read_model_file(path)
    model = LatteModel.from_file_data(header, arrays, path)
    known = set(model.parameter_shapes()) | set(ActiveSet.ARRAYS)
    return model, header, {n: v for n, v in arrays.items() if n not in known}


def load_model(path, device="cpu", dtype=None):
    """Read a model written by `LatteModel.save`; ValueError naming the problem if the file is bad.

    device "cpu" or "cuda", dtype "float64" or "float32" (CUDA only): the model's defaults for
    `compute` and `calculator` (see `LatteModel.to`)."""
    return read_model(path)[0].to(device, dtype)
