"""Core repulsion: the ZBL screened nuclear repulsion at short range, added to the learned energy.

The learned energy has compactly supported radial functions and no data below the shortest
training distance, so nothing in it keeps two atoms apart; hot MD can fall into holes there.
The core repulsion has two parts. ZBL (as ACE's core repulsion and the ZBL term of MACE and
NequIP), a fixed pair energy switched off before the training data begin:

    E_rep = 1/2 sum_i sum_{j != i} phi(r_ij; Z_i, Z_j) s(r_ij),
    phi(r) = k_e Z_i Z_j / r  sum_m c_m exp(-d_m r / a),   a = 0.46850 / (Z_i^0.23 + Z_j^0.23) Å,

(Ziegler, Biersack and Littmark's universal screening, k_e = e^2 / (4 pi eps0) = 14.399645 eV Å),
and s the C2 switch: 1 for r <= r_in, 0 for r >= r_out, 1 - 10x^3 + 15x^4 - 6x^5 between
(x = (r - r_in) / (r_out - r_in)). The radii are per species pair, (S, S, 2) Å, saved with the
model; `radii_from_data` places them at fractions of the shortest distance d of each species pair
in the training data (the shortest of any pair where a pair never occurs): r_out = 0.9 d and
r_in = 0.6 d (RADIUS_FRACTIONS). Below d (r_out = d, tried first) the repulsion reached test frames
of the benchmarks: AcAc's 600 K set has H-O at 0.901 Å against 0.936 in train_300K.xyz, where ZBL
between bonded atoms is of the order of an eV; 0.9 d leaves every benchmark's test set alone
(shortest test distances: Ni 0.98 d, AcAc 0.95 d for H-C and H-H, 0.96 d for H-O).

The learned energy still falls below the data in places, between r_out and d and for crystals
squeezed until their neighbours come closer than d (issue 18 notes): it is extrapolation there.
The *wall* closes that band: a non-negative sum of C^2 polynomials per species pair

    w(r) = sum_k a_k (1 - r / rho_k)^3   (r < rho_k),   a_k >= 0 eV,

each falling monotonically to 0 at its reach rho_k, 0.8-1.15 d (`WALL_FRACTIONS`).
Its coefficients are solved at the end of a fit (`lattenb.short_range.close_short_range`): the
smallest wall, measured by the forces it adds to the training structures, under which every
probe curve (dimers, compressed crystals) rises below d. It reaches only the few training
structures with a pair just above d, with small forces (0.0006 eV/Å on average on mlearn Mo).
Saved with the model as wall (S, S, K, 2), (rho_k Å, a_k eV) per species pair; a model without
one has K = 0.

Two more terms close what the wall cannot without touching the data (`short_range` solves them
after the wall, only where probe curves still fall). Both are functions of each atom's
*coordination*

    n_i = sum_j (1 - r_ij^2 / r_c^2)^3   (r_ij < r_c, the model's cutoff),

and both vanish with their gradients on every training structure, because they act only outside
the range of n the training atoms of each species cover:

    E_i += sum_k alpha_k ((n_i - tau_k) / tau_k)^3   (n_i > tau_k >= the training maximum: dense)
         + G(n_i) 1/2 sum_j v(r_ij),  G(n) = ((n_lo - n) / n_lo)^3   (n_i < n_lo: sparse)

with v a second wall of the same form as w (reaches rho_k, coefficients b_k >= 0) and n_lo at or
below the training minimum. The dense term makes a crystal squeezed past the densest training
environments cost energy, where its neighbours are still no closer than d and a pair term would
reach the data; the gated sparse wall repels atoms with fewer neighbours than any training atom
(dimers, a molecule's atoms pulled apart), whose bonds just above d every training molecule has.
Saved as repulsion_coordination {"cutoff": r_c Å, "dense": (S, K, 2) (tau_k, alpha_k eV) per
central species, "sparse_limit": (S,) n_lo, "sparse_wall": (S, S, K, 2) (rho_k Å, b_k eV)}, or
None (no such terms: the kernel skips the coordination pass).

Per-pair outputs follow the energy kernel (`lattenb.kernels`): per-atom energies (N,) eV, dE/dv
(P, 3) eV/Å for the pair vectors v_q = r_j + shift - r_i of the neighbour list, per-atom
dE/d(strain) (N, 9) eV, so `gather_forces` and the stress conventions apply unchanged.
"""
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ._numba import FASTMATH
from .kernels import System, gather_forces
from .neighbors import neighbor_list
from .pairs import pair_vector

#: names of the repulsion kinds (saved with the model; "none": no repulsion)
NAMES = ("none", "zbl")
DEFAULT = "none"
#: e^2 / (4 pi eps0), eV Å
COULOMB = 14.399645
ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_D = (3.19980, 0.94229, 0.40290, 0.20162)
#: (r_in, r_out) as fractions of the shortest training distance in `radii_from_data`
RADIUS_FRACTIONS = (0.6, 0.9)
#: the wall's reaches rho_k as fractions of the shortest training distance d
WALL_FRACTIONS = (0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15)
#: the keys of repulsion_coordination (module docstring)
COORDINATION_KEYS = ("cutoff", "dense", "sparse_limit", "sparse_wall")


class RepulsionArrays(NamedTuple):
    """What `add_repulsion_kernel` reads of a model's repulsion, made once
    (`LatteModel.set_repulsion`)."""
    atomic_numbers: np.ndarray       # (S,) float64
    radii: np.ndarray                # (S, S, 2) Å, (r_in, r_out)
    wall: np.ndarray                 # (S, S, K, 2), (rho_k Å, a_k eV)
    reach: np.ndarray                # (S, S) Å, the larger of r_out and the wall's reaches
    coordination_cutoff: float       # r_c Å, 0 without coordination terms
    dense: np.ndarray                # (S, K, 2), (tau_k, alpha_k eV)
    sparse_limit: np.ndarray         # (S,), n_lo
    sparse_wall: np.ndarray          # (S, S, K, 2), (rho_k Å, b_k eV)

    @classmethod
    def build(cls, numbers, radii, wall, coordination):
        """From checked radii, wall (`check_radii`, `check_wall`) and coordination
        (`check_coordination`, None for none)."""
        S = len(numbers)
        reach = np.maximum(radii[..., 1], wall[..., 0].max(axis=-1, initial=0.0))
        if coordination is None:
            return cls(np.asarray(numbers, dtype=np.float64), radii, wall, reach, 0.0,
                       np.zeros((S, 0, 2)), np.zeros(S), np.zeros((S, S, 0, 2)))
        return cls(np.asarray(numbers, dtype=np.float64), radii, wall, reach,
                   coordination["cutoff"], coordination["dense"], coordination["sparse_limit"],
                   coordination["sparse_wall"])

    def max_reach(self):
        """Å: the longest distance from which a pair reaches the repulsion (the cutoff of a
        neighbour list for it)."""
        return float(max(self.reach.max(), self.coordination_cutoff))


def check_name(name):
    if name not in NAMES:
        raise ValueError(f"repulsion must be one of {list(NAMES)}, got {name!r}")
    return name


def check_radii(radii, n_species):
    """radii as a float64 (S, S, 2) array of (r_in, r_out) Å, symmetric, 0 < r_in < r_out;
    ValueError naming the problem."""
    radii = np.array(radii, dtype=np.float64)           # a copy: the caller's may change
    if radii.shape != (n_species, n_species, 2):
        raise ValueError(f"repulsion_radii must have shape ({n_species}, {n_species}, 2) "
                         f"(r_in, r_out per species pair), got {radii.shape}")
    if not np.all(np.isfinite(radii)) or np.any(radii[..., 0] <= 0) \
            or np.any(radii[..., 1] <= radii[..., 0]):
        raise ValueError("repulsion_radii need 0 < r_in < r_out (Å) for every species pair")
    if not np.array_equal(radii, radii.transpose(1, 0, 2)):
        raise ValueError("repulsion_radii must be symmetric in the two species")
    return radii


def check_wall(wall, n_species, cutoff):
    """wall as a float64 (S, S, K, 2) array of (rho_k Å, a_k eV), symmetric, 0 < rho_k <= cutoff,
    a_k >= 0 (None: no wall, K = 0); ValueError naming the problem."""
    if wall is None:
        return np.zeros((n_species, n_species, 0, 2))
    wall = np.array(wall, dtype=np.float64)
    if wall.ndim != 4 or wall.shape[:2] != (n_species, n_species) or wall.shape[3] != 2:
        raise ValueError(f"repulsion_wall must have shape ({n_species}, {n_species}, K, 2) "
                         f"(reach, coefficient per species pair), got {wall.shape}")
    if not np.all(np.isfinite(wall)) or np.any(wall[..., 0] <= 0) \
            or np.any(wall[..., 0] > cutoff) or np.any(wall[..., 1] < 0):
        raise ValueError(f"repulsion_wall needs reaches 0 < rho <= the cutoff ({cutoff} Å) and "
                         "coefficients >= 0 eV")
    if not np.array_equal(wall, wall.transpose(1, 0, 2, 3)):
        raise ValueError("repulsion_wall must be symmetric in the two species")
    return wall


def check_coordination(coordination, n_species, cutoff):
    """repulsion_coordination (module docstring) with its arrays as float64 NumPy arrays, or None;
    ValueError naming the problem. Keys: cutoff (0 < r_c <= the model's cutoff), dense (S, K, 2)
    with tau_k > 0 and alpha_k >= 0, sparse_limit (S,) >= 0, sparse_wall as `check_wall`."""
    if coordination is None:
        return None
    if not isinstance(coordination, dict) or set(coordination) != set(COORDINATION_KEYS):
        raise ValueError(f"repulsion_coordination must be a dict with the keys "
                         f"{list(COORDINATION_KEYS)} (or None)")
    r_c = float(coordination["cutoff"])
    if not 0.0 < r_c <= cutoff:
        raise ValueError(f"repulsion_coordination cutoff must be in (0, {cutoff}] Å, got {r_c}")
    dense = coordination["dense"]
    dense = np.zeros((n_species, 0, 2)) if dense is None or np.size(dense) == 0 else \
        np.array(dense, dtype=np.float64)
    if dense.ndim != 3 or dense.shape[2] != 2:
        dense = np.zeros((0, 0, 0))     # (the message below)
    if dense.shape[0] != n_species or not np.all(np.isfinite(dense)) \
            or np.any(dense[..., 0] <= 0) or np.any(dense[..., 1] < 0):
        raise ValueError(f"repulsion_coordination dense must be ({n_species}, K, 2) "
                         "(tau > 0, alpha >= 0 eV) per species")
    limit = np.array(coordination["sparse_limit"], dtype=np.float64)
    if limit.shape != (n_species,) or not np.all(np.isfinite(limit)) or np.any(limit < 0):
        raise ValueError(f"repulsion_coordination sparse_limit must be ({n_species},) >= 0")
    sparse = check_wall(coordination["sparse_wall"], n_species, cutoff)
    return {"cutoff": r_c, "dense": dense, "sparse_limit": limit, "sparse_wall": sparse}


def radii_from_data(closest, fractions=RADIUS_FRACTIONS):
    """(S, S, 2) radii (r_in, r_out) = fractions x the shortest distance of each species pair in
    the training data, closest (S, S) Å (inf where a pair never occurs within the cutoff: it
    takes the shortest distance of any pair)."""
    closest = np.array(closest, dtype=np.float64)
    if not np.isfinite(closest).any():
        raise ValueError("no pair of atoms within the cutoff in the training data: cannot place "
                         "the core repulsion")
    closest = np.minimum(closest, closest.T)
    closest[~np.isfinite(closest)] = closest[np.isfinite(closest)].min()
    return np.stack([fractions[0] * closest, fractions[1] * closest], axis=-1)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def zbl_switched(r, zz, inv_a, r_in, r_out):
    """(phi s, d(phi s)/dr) at distance r (eV, eV/Å) for zz = k_e Z_i Z_j, inv_a = 1/a."""
    inv_r = 1.0 / r
    screen = 0.0
    dscreen = 0.0
    for m in range(4):
        t = ZBL_C[m] * np.exp(-ZBL_D[m] * r * inv_a)
        screen += t
        dscreen -= ZBL_D[m] * inv_a * t
    phi = zz * inv_r * screen
    dphi = zz * inv_r * (dscreen - screen * inv_r)
    if r <= r_in:
        return phi, dphi
    inv_w = 1.0 / (r_out - r_in)
    x = (r - r_in) * inv_w
    x2 = x * x
    s = 1.0 + x2 * x * (-10.0 + x * (15.0 - 6.0 * x))
    ds = x2 * (-30.0 + x * (60.0 - 30.0 * x)) * inv_w
    return phi * s, dphi * s + phi * ds


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def wall_term(r, rho):
    """((1 - r/rho)^3, its derivative in r (1/Å)) for r < rho, else (0, 0): one wall term."""
    if r >= rho:
        return 0.0, 0.0
    x = 1.0 - r / rho
    return x * x * x, -3.0 * x * x / rho


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def wall_value(r, wall, a, b):
    """(w, dw/dr) at distance r (eV, eV/Å) of the wall of species pair (a, b), wall (S, S, K, 2)
    (rho_k, a_k); indexed in place (no per-pair array view)."""
    w = 0.0
    dw = 0.0
    for k in range(wall.shape[2]):
        t, dt = wall_term(r, wall[a, b, k, 0])
        w += wall[a, b, k, 1] * t
        dw += wall[a, b, k, 1] * dt
    return w, dw


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def coordination_term(x):
    """(x^3, d(x^3)/dx) for x > 0, else (0, 0): the onset of the dense and sparse terms."""
    if x <= 0.0:
        return 0.0, 0.0
    return x * x * x, 3.0 * x * x


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def atom_coordination(positions, cell, shifts, offsets, second, i, c2, inv_c2):
    """n_i = sum_j (1 - r_ij^2 / r_c^2)^3 over atom i's neighbours within r_c (c2 = r_c^2,
    inv_c2 = 1 / c2), from the squared distances alone."""
    n = 0.0
    for q in range(offsets[i], offsets[i + 1]):
        vx, vy, vz = pair_vector(positions, cell, shifts, i, second[q], q)
        r2 = vx * vx + vy * vy + vz * vz
        if r2 < c2:
            x = 1.0 - r2 * inv_c2
            n += x * x * x
    return n


@njit(cache=True, error_model="numpy", inline="always")
def sparse_gate(n, limit):
    """(G, dG/dn): the sparse wall's gate ((limit - n) / limit)^3 below limit (0 for limit 0)."""
    if limit <= 0.0:
        return 0.0, 0.0
    t, dt = coordination_term((limit - n) / limit)
    return t, -dt / limit


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def coordination_energy(n, dense, limit, s):
    """(H, dH/dn, G, dG/dn) at coordination n of an atom of species s: the dense term's energy
    (eV) and the sparse wall's gate (module docstring); dense (S, K, 2), limit (S,)."""
    h = 0.0
    dh = 0.0
    for k in range(dense.shape[1]):
        tau = dense[s, k, 0]
        t, dt = coordination_term((n - tau) / tau)
        h += dense[s, k, 1] * t
        dh += dense[s, k, 1] * dt / tau
    g, dg = sparse_gate(n, limit[s])
    return h, dh, g, dg


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
def add_repulsion_kernel(n_centres, positions, cells, frame_of_atom, offsets, second, shifts,
                         species, atomic_numbers, radii, wall, reach, coordination_cutoff, dense,
                         sparse_limit, sparse_wall, energies, pair_grad, strain):
    """Add the core repulsion of the atoms i < n_centres (the others only as neighbours) to
    per-atom energies (N,) eV, per-pair dE/dv (P, 3) eV/Å and per-atom dE/d(strain) (N, 9) eV,
    in place (each atom writes only its own rows and pairs). atomic_numbers (S,) float64, radii
    (S, S, 2) Å, wall (S, S, K, 2) and reach (S, S) Å (the larger of r_out and the wall's
    reaches) of the model's species; coordination_cutoff r_c Å (0: no coordination terms),
    dense (S, K, 2), sparse_limit (S,) and sparse_wall (S, S, K, 2) (module docstring)."""
    inv_c2 = 1.0 / (coordination_cutoff * coordination_cutoff) if coordination_cutoff > 0 else 0.0
    c2 = coordination_cutoff * coordination_cutoff
    for i in prange(n_centres):
        si = species[i]
        cell = cells[frame_of_atom[i]]
        # the coordination terms: dE_i/dn (slope) and the sparse gate, 0 inside the data's range
        slope = 0.0
        gate = 0.0
        if coordination_cutoff > 0.0:
            n = atom_coordination(positions, cell, shifts, offsets, second, i, c2, inv_c2)
            h, dh, gate, dgate = coordination_energy(n, dense, sparse_limit, si)
            sparse = 0.0
            if gate > 0.0:
                for q in range(offsets[i], offsets[i + 1]):
                    vx, vy, vz = pair_vector(positions, cell, shifts, i, second[q], q)
                    r = np.sqrt(vx * vx + vy * vy + vz * vz)
                    sparse += 0.5 * wall_value(r, sparse_wall, si, species[second[q]])[0]
            energies[i] += h + gate * sparse
            slope = dh + dgate * sparse
        for q in range(offsets[i], offsets[i + 1]):
            j = second[q]
            sj = species[j]
            vx, vy, vz = pair_vector(positions, cell, shifts, i, j, q)
            r2 = vx * vx + vy * vy + vz * vz
            g = 0.0                                 # dE_i/dr / r
            if slope != 0.0 and r2 < c2:            # dn/dr / r = -6 x^2 / r_c^2
                x = 1.0 - r2 * inv_c2
                g -= 6.0 * slope * x * x * inv_c2
            r_max = reach[si, sj]
            if r2 < r_max * r_max or gate > 0.0:
                r = np.sqrt(r2)
                e, de = wall_value(r, wall, si, sj)
                r_out = radii[si, sj, 1]
                if r < r_out:
                    zi = atomic_numbers[si]
                    zj = atomic_numbers[sj]
                    inv_a = (zi ** 0.23 + zj ** 0.23) / 0.46850
                    ez, dez = zbl_switched(r, COULOMB * zi * zj, inv_a, radii[si, sj, 0], r_out)
                    e += ez
                    de += dez
                if gate > 0.0:
                    de += gate * wall_value(r, sparse_wall, si, sj)[1]
                energies[i] += 0.5 * e              # each pair is in the list once per atom
                g += 0.5 * de / r
            if g == 0.0:
                continue
            gx = g * vx
            gy = g * vy
            gz = g * vz
            pair_grad[q, 0] += gx
            pair_grad[q, 1] += gy
            pair_grad[q, 2] += gz
            strain[i, 0] += gx * vx
            strain[i, 1] += gx * vy
            strain[i, 2] += gx * vz
            strain[i, 3] += gy * vx
            strain[i, 4] += gy * vy
            strain[i, 5] += gy * vz
            strain[i, 6] += gz * vx
            strain[i, 7] += gz * vy
            strain[i, 8] += gz * vz


@njit(cache=True, error_model="numpy", parallel=True)
def coordination_numbers(positions, cells, frame_of_atom, offsets, second, shifts, cutoff):
    """(N,) every atom's coordination n_i = sum_j (1 - r_ij^2 / r_c^2)^3 over its neighbours
    within r_c = cutoff Å (module docstring), from a neighbour list that reaches r_c."""
    n_atoms = positions.shape[0]
    out = np.zeros(n_atoms)
    c2 = cutoff * cutoff
    inv_c2 = 1.0 / c2
    for i in prange(n_atoms):
        out[i] = atom_coordination(positions, cells[frame_of_atom[i]], shifts, offsets, second,
                                   i, c2, inv_c2)
    return out


@njit(cache=True, error_model="numpy")
def coordination_basis(n, species, tau, limit):
    """Per atom with coordination n (N,) and species (N,): the dense terms of unit coefficient
    ((n - tau_k) / tau_k)^3 above tau_k, (N, K) for tau (S, K), and the sparse wall's gate (N,)
    below limit (S,): what `coordination_energy` weighs with the coefficients."""
    dense = np.zeros((n.shape[0], tau.shape[1]))
    gate = np.zeros(n.shape[0])
    for i in range(n.shape[0]):
        s = species[i]
        for k in range(tau.shape[1]):
            dense[i, k] = coordination_term((n[i] - tau[s, k]) / tau[s, k])[0]
        gate[i] = sparse_gate(n[i], limit[s])[0]
    return dense, gate


def zbl_pair_energy(r, z1, z2, r_in, r_out):
    """phi s (eV) of one pair at distances r (array, Å): the repulsion's dimer curve (plots, tests)."""
    r = np.atleast_1d(np.asarray(r, dtype=np.float64))
    inv_a = (z1 ** 0.23 + z2 ** 0.23) / 0.46850
    out = np.zeros_like(r)
    for k, rk in enumerate(r):
        if rk < r_out:
            out[k] = zbl_switched(rk, COULOMB * z1 * z2, inv_a, r_in, r_out)[0]
    return out


def add_repulsion(model, system, n_centres, energies, pair_grad, strain):
    """Add the model's core repulsion (if any) in place to the outputs of the energy kernel
    (`kernels.energy_forces_kernel`): energies (N,), pair_grad (P, 3), strain (N, 9), for the
    `kernels.System` system and its atoms i < n_centres."""
    arrays = model.repulsion_arrays()
    if arrays is None:
        return
    add_repulsion_kernel(n_centres, system.positions, system.cells, system.frame_of_atom,
                         system.offsets, system.second, system.shifts, system.species, *arrays,
                         energies, pair_grad, strain)


@njit(cache=True, error_model="numpy", parallel=True)
def closest_by_species(positions, cells, frame_of_atom, offsets, second, shifts, species,
                       n_species):
    """(S, S) Å: the shortest distance between atoms of each pair of species in a neighbour
    list (inf where none), e.g. of a training set (`Dataset.kernel_inputs`)."""
    n_atoms = positions.shape[0]
    per_atom = np.full((n_atoms, n_species), np.inf)
    for i in prange(n_atoms):
        cell = cells[frame_of_atom[i]]
        for q in range(offsets[i], offsets[i + 1]):
            vx, vy, vz = pair_vector(positions, cell, shifts, i, second[q], q)
            r = np.sqrt(vx * vx + vy * vy + vz * vz)
            sj = species[second[q]]
            if r < per_atom[i, sj]:
                per_atom[i, sj] = r
    closest = np.full((n_species, n_species), np.inf)
    for i in range(n_atoms):
        for sj in range(n_species):
            closest[species[i], sj] = min(closest[species[i], sj], per_atom[i, sj])
    return closest


def repulsion_results(model, positions, cell, pbc, species):
    """The model's core repulsion of one structure on the host, for backends that evaluate the
    learned part elsewhere (CUDA): (energies (N,) eV, forces (N, 3) eV/Å, atom_virial (N, 3, 3)
    eV, each atom's share of W = -dE/d(strain)), or None without a repulsion. positions (N, 3),
    cell (3, 3), pbc (3,) validated, species (N,) indices into the model's species. Builds its
    own neighbour list out to the repulsion's reach, so it costs little."""
    arrays = model.repulsion_arrays()
    if arrays is None:
        return None
    n = len(positions)
    offsets, second, shifts = neighbor_list(positions, cell, pbc, arrays.max_reach())
    system = System(positions, np.asarray(cell, dtype=np.float64)[None], np.zeros(n, np.int64),
                    offsets, second, shifts, np.asarray(species, dtype=np.int64))
    energies, pair_grad, strain = np.zeros(n), np.zeros((len(second), 3)), np.zeros((n, 9))
    add_repulsion(model, system, n, energies, pair_grad, strain)
    return energies, gather_forces(offsets, second, pair_grad, n), -strain.reshape(n, 3, 3)
