"""Short range below the training data: probe curves that must rise as atoms are pushed together,
and the wall (`lattenb.repulsion`) that makes them rise.

The core repulsion (ZBL) is switched off by r_out = 0.9 d, d the shortest training distance of
each species pair, so that it leaves the data alone. Between r_out and d, and for a crystal
squeezed until its nearest neighbours are closer than d, the learned energy is on its own and
extrapolates: its radial functions fade out below the data, so the squeezed neighbours count
less and less, and on plain 6-minute mlearn fits the energy of bcc Mo fell by 0.40 eV/atom
within 0.014 Å below d and the Ni dimer by 0.47 eV between d and 0.88 d (issue 18 notes).

The probes: the dimer of every species pair and, for each composition with periodic structures
in the training data, its lowest-energy one (reduced to its smallest repeat) and, for each
element with crystals of its own there, its ASE reference crystal, compressed uniformly from the
shortest training distance d down to `LOWEST` d in `N_STEPS` steps (`probe_distances`: finest
at d). Every step must raise the energy per atom by at least `MIN_SLOPE` times its length (a
sampled curve can still dip between its samples where it is only flat on average; a least slope
leaves room for the learned part's curvature between them).

`close_short_range` solves the wall that makes them: the coefficients a >= 0 of the wall terms
(1 - r/rho_k)^3, rho_k = `repulsion.WALL_FRACTIONS` x d per species pair, that minimise what the
wall adds to the training forces (a bound on their mean absolute component) subject to the
rises, a linear program (SciPy's HiGHS). The terms reaching above d are what can lift a curve
that already falls at d; they touch only the training structures with a pair between d and
their reach. Measured on a 6-minute mlearn Mo fit, the wall placed afterwards: minimising the
energy it adds chose a term reaching 1.1 d and moved the test force MAE from 0.1193 to 0.1200
eV/Å; minimising the forces chose 1.05 d and left it at 0.1193 (energy MAE 3.032 both).

Where even that wall would move the training forces by more than `FORCE_TOLERANCE` of the fit's
own force MAE (molecules, whose bonds sit just above d in every structure; NbMoTaW), or nothing
measures it (no reference forces), only the terms reaching up to ZBL's r_out = 0.9 d are used,
with the steps allowed to fall short (least total shortfall): the curves may then fall between
0.9 d and d, and the data are untouched.

What the wall cannot reach without touching the data, the coordination terms close
(`lattenb.repulsion`: a dense term above the largest coordination n of each species' training
atoms, a wall gated on n below the smallest; both exactly zero, with their forces, on every
training and validation structure). They are solved afresh after the wall, by a second linear
program on the same probes plus the *band* probes: each probe crystal compressed from its own
nearest-neighbour distance down to d (N_BAND steps), where every pair is still at a trained
distance but the crystal is denser than any training environment; a band step must rise once the
crystal's coordination exceeds the training range by DENSE_GAP. The program makes the total
shortfall least, then what the terms add along the probes. Before them, mlearn's compressed
crystals dipped in that band by up to 0.41 eV/atom (Mo, at 0.72 of the equilibrium distance),
and AcAc's H-H and H-O and four NbMoTaW dimers fell between 0.9 d and d.

`fit` solves the wall last, after its L-BFGS run and exact output solve. Also tried, on mlearn
Cu and Mo: training on with the wall in place for the last 20 % of the budget, so that the learned
part could absorb it: test force MAE 0.0153 and 0.1212 eV/Å against 0.0148 and 0.1193 with the
wall simply added at the end (0.0150 and 0.1193 without a wall), so the fit does not.

Tried before this (issue 18 notes): a wall vanishing at d (a C^2 wall cannot lift a curve that
falls at d: 3,000-27,000 eV at 0.6 d for Li, Ni and Mo), and a training penalty on the same
probe curves (made three of four curves rise but bent the MLP: Cu's test force MAE went from
0.0155 to 0.0343 eV/Å).
"""
import time

import numpy as np
from ase import Atoms
from numba import njit, prange

from .evaluation import force_mae
from .pairs import pair_vector
from .repulsion import (RADIUS_FRACTIONS, WALL_FRACTIONS, coordination_basis,
                        coordination_numbers, wall_term)

#: steps per probe curve, from d down to LOWEST x d, spaced quadratically: the first is
#: (1 - LOWEST) d / N_STEPS^2 (4e-5 Å for d = 2 Å), so its least rise asks for an outward force
#: right at d (with even steps a fit's dimer still fell in the first 0.005 Å below d, where
#: the learned part falls and a wall term reaching exactly d has no slope yet)
N_STEPS = 160
LOWEST = 0.5

#: the least rise of the energy per atom per Å of a probe step (eV/Å per atom): the least
#: outward force below the data. With 1e-5 eV per step a 10-iteration Cu fit still dipped by
#: 1.6e-4 eV between two probe samples.
MIN_SLOPE = 0.1
#: weight of the wall's height at LOWEST x d in the program's objective (per eV), next to the
#: forces it adds to the training structures (eV/Å): it only breaks ties between terms that
#: reach no training pair
HEIGHT_WEIGHT = 1e-6
#: the most force the wall may add to the training structures (mean absolute component), as a
#: fraction of the fit's own training force MAE; beyond it only terms reaching no further than
#: 0.9 d are used. On AcAc (bonds just above d in every molecule) a wall with terms up to 1.15 d
#: added up to 12 % (the triangle bound) and raised the test force RMSE at 300 K from 58.7 to
#: 71.8 meV/Å (terms up to d: to 296, its test set reaches 0.95 d); on mlearn the walls added
#: 0.2-0.5 % and moved the test force MAEs by at most 1 %.
FORCE_TOLERANCE = 0.01


#: the dense term's onsets tau_k as multiples of the largest coordination n of a species' atoms in
#: the training data (`lattenb.repulsion`: zero on every training structure)
DENSE_ONSETS = (1.0, 1.05, 1.1, 1.2, 1.4)
#: the sparse wall's gate opens below this fraction of the smallest training coordination of a
#: species (dimers at d: n = 0.3-0.9 with r_c = 5 Å, training atoms 1.4-3.4 at least)
SPARSE_FRACTION = 0.75
#: band probes: each probe crystal compressed from its own nearest-neighbour distance down to d
#: in N_BAND even steps. A step must rise once the crystal's coordination exceeds the training
#: range by DENSE_GAP (relative): before that the crystal is inside the data's range of
#: environments, and at the dense term's onset its slope is still zero. With 80 steps a
#: 10-iteration Cu fit still dipped by 5e-5 eV between two samples (checked on a grid 5x finer)
N_BAND = 320
DENSE_GAP = 0.02


def probe_distances(d):
    """(N_STEPS + 1,) Å: the shortest distances of a probe curve, d down to LOWEST d."""
    return d - (1.0 - LOWEST) * d * (np.arange(N_STEPS + 1) / N_STEPS) ** 2


def _dimer_curves(numbers, closest):
    """(d, curve) per species pair: two atoms from d down to LOWEST d."""
    curves = []
    for a in range(len(numbers)):
        for b in range(a, len(numbers)):
            d = closest[a, b]
            curves.append((d, [Atoms(numbers=[numbers[a], numbers[b]],
                                     positions=[[0, 0, 0], [r, 0, 0]])
                               for r in probe_distances(d)]))
    return curves


def shortest_distance(atoms, cutoff):
    """The shortest distance (Å) between two atoms of a structure within `cutoff`, or None."""
    from .neighbors import neighbor_list
    from .repulsion import closest_by_species
    n = len(atoms)
    positions = np.asarray(atoms.positions, dtype=np.float64)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    closest = closest_by_species(positions, cell[None], np.zeros(n, np.int64),
                                 *neighbor_list(positions, cell, atoms.pbc, cutoff),
                                 np.zeros(n, np.int64), 1)[0, 0]
    return float(closest) if np.isfinite(closest) else None


#: a crystal probe is the smallest periodic structure of its composition within this much of the
#: lowest energy per atom (eV/atom): compressed cells have many pairs, so small ones keep it cheap
CRYSTAL_WINDOW = 0.010


def crystal_candidates(frames, comm=None):
    """{composition: (energy per atom, Atoms)}: for each composition (sorted atomic numbers and
    reduced counts) among `frames`, the smallest periodic structure with an energy within
    CRYSTAL_WINDOW of the lowest energy per atom of that composition. comm: `frames` is this
    rank's shard (`lattenb.distributed`); every rank gets the choice among all ranks' frames."""
    from .dataset import read_targets
    if comm is not None and comm.size > 1:      # each rank's candidates, then the one choice
        mine = [atoms for _, atoms in crystal_candidates(frames).values()]
        return crystal_candidates([a for part in comm.allgather(mine) for a in part])
    found = {}
    for atoms in frames:
        if not atoms.pbc.all():
            continue
        energy = read_targets(atoms)[0]
        if energy is None:
            continue
        numbers, counts = np.unique(atoms.numbers, return_counts=True)
        key = tuple(zip(numbers.tolist(), (counts // np.gcd.reduce(counts)).tolist()))
        found.setdefault(key, []).append((energy / len(atoms), atoms))
    best = {}
    for key, items in found.items():
        lowest = min(e for e, _ in items)
        near = [(len(a), e, k) for k, (e, a) in enumerate(items) if e <= lowest + CRYSTAL_WINDOW]
        _, _, k = min(near)
        best[key] = items[k]
    return best


def _is_period(frac, numbers, axis, n, tol=1e-4):
    """Whether translating by 1/n of lattice vector `axis` maps the structure onto itself."""
    shifted = frac.copy()
    shifted[:, axis] += 1.0 / n
    shifted %= 1.0
    key = {(z, *np.round(p / tol).astype(np.int64) % int(round(1 / tol))) for z, p in
           zip(numbers, frac % 1.0)}
    return all((z, *np.round(p / tol).astype(np.int64) % int(round(1 / tol))) in key
               for z, p in zip(numbers, shifted))


def reduce_supercell(atoms):
    """The smallest cell of which `atoms` is an integer repeat along its lattice vectors (e.g. the
    4-atom cubic fcc cell of a 3x3x3 supercell); `atoms` itself when it is no repeat. Perfect
    crystals only (the probes compress equilibrium structures, whose atoms sit on a lattice)."""
    frac = atoms.get_scaled_positions(wrap=True)
    numbers = atoms.numbers
    cell = atoms.cell.array.copy()
    for axis in range(3):
        for n in range(min(len(frac), 12), 1, -1):
            if len(frac) % n == 0 and _is_period(frac, numbers, axis, n):
                keep = frac[:, axis] < 1.0 / n - 1e-6
                frac, numbers = frac[keep], numbers[keep]
                frac[:, axis] *= n
                cell[axis] /= n
                break
    return Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=True)


def reference_crystal(number):
    """The ASE reference crystal (`ase.build.bulk`) of an element, or None where ASE has none
    (molecular elements such as H and O)."""
    from ase.build import bulk
    from ase.data import chemical_symbols
    try:
        return bulk(chemical_symbols[number])
    except (ValueError, KeyError, RuntimeError, TypeError):
        return None


def probe_crystals(crystals):
    """The periodic structures whose compression is probed: the lowest-energy structure of each
    composition (`crystal_candidates`), reduced to its smallest repeat, and the reference crystal
    of every element that has periodic structures of its own among them."""
    out = [reduce_supercell(atoms) for _, atoms in sorted(crystals.values(),
                                                            key=lambda item: item[0])]
    for key in sorted(crystals):
        if len(key) == 1:
            atoms = reference_crystal(key[0][0])
            if atoms is not None:
                out.append(atoms)
    return out


def _crystal_curves(crystals, closest, cutoff):
    """The compression curves of the probe crystals, (below, band), each a list of (d, shortest
    distances (steps + 1,) Å, structures): below, each crystal compressed uniformly from d (the
    shortest training distance among its species pairs) down to LOWEST d; band, from its own
    shortest distance d0 down to d in N_BAND even steps (none where d0 <= d)."""
    below, band = [], []
    for atoms in crystals:
        d0 = shortest_distance(atoms, cutoff)
        if d0 is None:
            continue
        present = np.unique(atoms.numbers)
        d = min(closest[a, b] for a in present for b in present)
        below.append((d, probe_distances(d), _compressed(atoms, d0, probe_distances(d))))
        if d0 > d:
            distances = np.linspace(d0, d, N_BAND + 1)
            band.append((d, distances, _compressed(atoms, d0, distances)))
    return below, band


def _compressed(atoms, d0, distances):
    """Copies of the crystal `atoms` (shortest distance d0 Å) scaled uniformly to each of the
    shortest distances `distances` (Å)."""
    curve = []
    for r in distances:
        x = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                  pbc=atoms.pbc)
        x.set_cell(atoms.cell.array * (r / d0), scale_atoms=True)
        curve.append(x)
    return curve


def dataset_coordination(model, data):
    """(N,) the coordination n of every atom of a `Dataset` (`repulsion.coordination_numbers`,
    r_c = the model's cutoff)."""
    system = data.kernel_inputs(model.kernel_arrays())[0]
    return coordination_numbers(system.positions, system.cells, system.frame_of_atom,
                                system.offsets, system.second, system.shifts, model.cutoff)


def training_coordination(model, datasets):
    """((S,), (S,)): the smallest and largest coordination of each species' atoms over the
    `Dataset`s (shards on each rank of their comm; a species without atoms gets (inf, 0)).
    Atoms without neighbours (isolated-atom frames) do not count: no pair term reaches them."""
    S = model.n_species
    low, high = np.full(S, np.inf), np.zeros(S)
    for data in datasets:
        n = dataset_coordination(model, data)
        for s in range(S):
            mine = n[(data.species == s) & (n > 0)]
            if len(mine):
                low[s], high[s] = min(low[s], mine.min()), max(high[s], mine.max())
        low, high = data.comm.min(low), data.comm.max(high)
    return low, high


class ProbeCurves:
    """The probe curves of a model, prepared once: `data` a `Dataset` of every configuration
    (curves one after the other), `first`, `second` the frame indices of each step (second more
    compressed), `step` its length (Å of the shortest distance), `reached` the shortest distance
    it reaches over d, `below_d` (steps,) bool (False: a band step, between a crystal's own
    nearest-neighbour distance and d), `n_curves` below d and `n_band_curves`; `rho` (S, S, K)
    the wall's reaches and `lift` (steps, U K) what each wall term of unit coefficient adds to
    each step's rise."""

    def __init__(self, model, crystals):
        """model: with a core repulsion (its radii give d = r_out / 0.9 per species pair);
        crystals: `crystal_candidates` of the training data."""
        from .dataset import prepare_dataset
        self.closest = np.array(model.repulsion_radii)[..., 1] / RADIUS_FRACTIONS[1]
        index = {z: k for k, z in enumerate(model.numbers)}
        by_number = np.full((max(model.numbers) + 1,) * 2, np.inf)
        for a, za in enumerate(model.numbers):
            for b, zb in enumerate(model.numbers):
                by_number[za, zb] = self.closest[a, b]
        known = [c for c in probe_crystals(crystals) if all(z in index for z in c.numbers)]
        crystal_below, band = _crystal_curves(known, by_number, model.cutoff)
        below = [(d, probe_distances(d), c) for d, c in
                 _dimer_curves(model.numbers, self.closest)] + crystal_below
        self.data = prepare_dataset([a for _, _, c in below + band for a in c], model,
                                    require_energy=False)
        first, start, step, reached, in_band = [], 0, [], [], []
        for k, (d, distances, c) in enumerate(below + band):
            first.extend(range(start, start + len(c) - 1))
            step.extend(-np.diff(distances))
            reached.extend(distances[1:] / d)
            in_band.extend([k >= len(below)] * (len(c) - 1))
            start += len(c)
        self.first = np.array(first, dtype=np.int64)
        self.step = np.array(step)
        self.reached = np.array(reached)
        self.second = self.first + 1
        #: the steps below d (dimers, crystals) that the wall closes; the others are band steps
        #: between a crystal's own nearest-neighbour distance and d (the coordination terms')
        self.below_d = ~np.array(in_band, dtype=bool)
        self.n_curves = len(below)
        self.n_band_curves = len(band)
        # what each wall term at unit coefficient adds to each step's rise (eV/atom), (steps, U K):
        # the program's matrix, fixed by the probes alone
        self.rho = wall_reaches(self.closest)
        per_atom = wall_energies(model, self.data, self.rho).reshape(
            self.data.n_frames, -1) / self.data.n_atoms_per_frame[:, None]
        self.lift = per_atom[self.second] - per_atom[self.first]
        self._coordination = None

    def rises(self, model):
        """E_(k+1) - E_k (eV/atom) of every step (negative: the curve falls there)."""
        from .predict import predict
        energy = predict(model, self.data)[0] / self.data.n_atoms_per_frame
        return energy[self.second] - energy[self.first]

    def coordination(self, model):
        """(atoms,) the coordination of every atom of the probes (computed once)."""
        if self._coordination is None:
            self._coordination = dataset_coordination(model, self.data)
        return self._coordination

    def coordination_basis(self, model, limit, tau):
        """What the coordination terms of unit coefficients (`lattenb.repulsion`) add, sparse gate
        below limit (S,) and dense onsets tau (S, Kd): (lift (steps, S Kd + U K) to each step's
        rise, energy (frames, S Kd + U K) per atom of each probe structure), dense columns first,
        then the sparse wall's (unordered species pair, reach rho_k)."""
        data = self.data
        n = self.coordination(model)
        S = model.n_species
        per_atom, gate = coordination_basis(n, data.species, np.asarray(tau, dtype=np.float64),
                                            np.asarray(limit, dtype=np.float64))
        dense = np.zeros((data.n_frames, S, tau.shape[1]))
        np.add.at(dense, (data.frame_of_atom, data.species), per_atom)
        sparse = wall_energies(model, data, self.rho, gate)
        energy = np.concatenate([dense.reshape(data.n_frames, -1),
                                 sparse.reshape(data.n_frames, -1)], axis=1) \
            / data.n_atoms_per_frame[:, None]
        return energy[self.second] - energy[self.first], energy

    def constrained(self, model, high):
        """(steps,) bool: the steps that must rise: every step below d, and the band steps whose
        less compressed structure has an atom DENSE_GAP beyond its species' largest training
        coordination high (S,)."""
        n = self.coordination(model)
        beyond = np.zeros(self.data.n_frames)
        np.maximum.at(beyond, self.data.frame_of_atom, n / high[self.data.species])
        return self.below_d | (beyond[self.first] >= 1.0 + DENSE_GAP)


def wall_reaches(closest):
    """(S, S, K) Å: the wall's reaches, WALL_FRACTIONS x the shortest training distance d."""
    return np.asarray(closest)[..., None] * np.asarray(WALL_FRACTIONS)


@njit(cache=True, error_model="numpy", parallel=True)
def wall_energy_basis(positions, cells, frame_of_atom, offsets, second, shifts, species, rho):
    """(N, S, K): for every atom i, half the sum over its neighbours j of species s of the wall
    term (1 - r_ij / rho[s_i, s, k])^3, the energy a wall of unit coefficients gives atom i."""
    n_atoms = positions.shape[0]
    out = np.zeros((n_atoms, rho.shape[1], rho.shape[2]))
    for i in prange(n_atoms):
        si = species[i]
        cell = cells[frame_of_atom[i]]
        for q in range(offsets[i], offsets[i + 1]):
            sj = species[second[q]]
            vx, vy, vz = pair_vector(positions, cell, shifts, i, second[q], q)
            r = np.sqrt(vx * vx + vy * vy + vz * vz)
            for k in range(rho.shape[2]):
                out[i, sj, k] += 0.5 * wall_term(r, rho[si, sj, k])[0]
    return out


@njit(cache=True, error_model="numpy")
def wall_force_basis(positions, cells, frame_of_atom, offsets, second, shifts, species, rho,
                     pair_index, n_pairs):
    """The forces (eV/Å) a wall of unit coefficients exerts, on the atoms it reaches only:
    (atoms (M,) their indices, forces (M, n_pairs, K, 3) per unordered species pair
    pair_index[s_i, s_j] and term k). Serial: the pairs scatter to both atoms."""
    n_atoms = positions.shape[0]
    reach = np.zeros(rho.shape[:2])
    for a in range(rho.shape[0]):
        for b in range(rho.shape[1]):
            reach[a, b] = rho[a, b].max()
    row = np.full(n_atoms, -1)
    n_rows = 0
    for stage in range(2):          # 0: find the atoms the wall reaches, 1: their forces
        if stage == 1:
            out = np.zeros((n_rows, n_pairs, rho.shape[2], 3))
        for i in range(n_atoms):
            si = species[i]
            cell = cells[frame_of_atom[i]]
            for q in range(offsets[i], offsets[i + 1]):
                j = second[q]
                sj = species[j]
                vx, vy, vz = pair_vector(positions, cell, shifts, i, j, q)
                r = np.sqrt(vx * vx + vy * vy + vz * vz)
                if r >= reach[si, sj]:
                    continue
                if stage == 0:
                    for m in (i, j):
                        if row[m] < 0:
                            row[m] = n_rows
                            n_rows += 1
                    continue
                p = pair_index[si, sj]
                for k in range(rho.shape[2]):
                    g = 0.5 * wall_term(r, rho[si, sj, k])[1] / r     # each pair is listed twice
                    out[row[i], p, k, 0] += g * vx
                    out[row[i], p, k, 1] += g * vy
                    out[row[i], p, k, 2] += g * vz
                    out[row[j], p, k, 0] -= g * vx
                    out[row[j], p, k, 1] -= g * vy
                    out[row[j], p, k, 2] -= g * vz
    atoms = np.empty(n_rows, np.int64)
    for m in range(n_atoms):
        if row[m] >= 0:
            atoms[row[m]] = m
    return atoms, out


def _pair_index(n_species):
    """(S, S) int64: the index of each unordered species pair among the upper triangle."""
    upper = np.triu_indices(n_species)
    index = np.zeros((n_species, n_species), np.int64)
    index[upper] = index[upper[::-1]] = np.arange(len(upper[0]))
    return index


def wall_energies(model, data, rho, gate=None):
    """(F, U, K) eV: per frame of a `Dataset`, the energy each wall term of unit coefficient gives,
    U = S (S + 1) / 2 unordered species pairs (in `numpy.triu_indices` order); gate (N,): each
    atom's share multiplied by it (the sparse wall's gate)."""
    system = data.kernel_inputs(model.kernel_arrays())[0]
    per_atom = wall_energy_basis(system.positions, system.cells, system.frame_of_atom,
                                 system.offsets, system.second, system.shifts, system.species,
                                 rho)
    if gate is not None:
        per_atom *= gate[:, None, None]
    S, K = rho.shape[0], rho.shape[2]
    index = _pair_index(S)
    out = np.zeros((data.n_frames, index.max() + 1, K))
    np.add.at(out, (data.frame_of_atom[:, None], index[data.species]), per_atom)
    return out


class TrainingForces:
    """The forces the wall terms (unit coefficients) exert on the atoms with reference forces of
    a training `Dataset` (its shard on each rank of `data.comm`), for the program's objective
    and the accuracy check."""

    def __init__(self, model, data, rho):
        system = data.kernel_inputs(model.kernel_arrays())[0]
        index = _pair_index(rho.shape[0])
        atoms, forces = wall_force_basis(system.positions, system.cells, system.frame_of_atom,
                                         system.offsets, system.second, system.shifts,
                                         system.species, rho, index, index.max() + 1)
        with_forces = data.has_forces[data.frame_of_atom]
        self.forces = forces[with_forces[atoms]]           # (M, U, K, 3)
        self.comm = data.comm
        self.count = float(self.comm.sum(3.0 * with_forces.sum()))    # force components

    def impact(self):
        """(U, K) eV/Å: the mean absolute force component of each term at unit coefficient; a
        wall's mean absolute force is at most impact . a (the triangle inequality)."""
        return self.comm.sum(np.abs(self.forces).sum(axis=(0, 3))) / max(self.count, 1.0)

    def mean_abs(self, coefficients):
        """eV/Å: the mean absolute force component a wall of (U, K) coefficients adds (the most
        it can change the training force MAE by)."""
        f = np.einsum("mukc,uk->mc", self.forces, coefficients)
        return float(self.comm.sum(np.sum(np.abs(f))) / max(self.count, 1.0))


def solve_wall(probes, rise, impact, within_data=True):
    """The coefficients (S, S, K) eV (symmetric) to add to the model's wall, or None when the
    probe curves rise already below d (`probes.below_d`). rise: `probes.rises(model)`.
    within_data: every probe step below d must rise by MIN_SLOPE x its length, minimising
    impact . a (impact (U, K) per unordered species pair and term, `TrainingForces.impact`);
    RuntimeError when no wall does it. Otherwise only the terms that reach no further than ZBL's
    r_out = 0.9 d (where test sets still go, as ZBL's radii say), and the steps fall short as
    little as possible in total."""
    from scipy import sparse
    from scipy.optimize import linprog
    rows = probes.below_d             # (the band steps are the coordination terms')
    least = MIN_SLOPE * probes.step[rows]
    rise = rise[rows]
    if np.all(rise >= 0.99 * least):        # (the program's own tolerance is 1e-7)
        return None
    rho = probes.rho
    S, K = rho.shape[0], rho.shape[2]
    upper = np.triu_indices(S)
    # rise_k + lift_k . a >= least_k  <=>  -lift_k . a <= rise_k - least_k
    A = -probes.lift[rows]
    height = np.clip(1.0 - LOWEST * probes.closest[..., None] / rho, 0.0, None) ** 3
    if within_data:
        cost = (impact + HEIGHT_WEIGHT * height[upper]).ravel()
        bounds = [(0, None)] * len(cost)
    else:       # slack s_k >= 0 per step: A a - s <= rise - least, minimise sum s
        inside = (rho <= RADIUS_FRACTIONS[1] * probes.closest[..., None] * (1 + 1e-12))[
            upper].ravel()
        cost = np.concatenate([HEIGHT_WEIGHT * height[upper].ravel(), np.ones(len(A))])
        bounds = [(0, None) if ok else (0, 0) for ok in inside] + [(0, None)] * len(A)
        A = sparse.hstack([sparse.csr_matrix(A), -sparse.identity(len(A), format="csr")],
                          format="csr")
    result = linprog(cost, A_ub=A, b_ub=rise - least, bounds=bounds, method="highs")
    if result.status != 0:
        raise RuntimeError(f"no wall makes the probe curves rise ({result.message})")
    add = np.zeros((S, S, K))
    add[upper] = add[upper[::-1]] = result.x[:len(upper[0]) * K].reshape(-1, K)
    return add


def solve_coordination(probes, rise, rows, lift, energy):
    """The coordination terms' coefficients (S Kd + U K,) eV (columns of
    `ProbeCurves.coordination_basis`), or None when every step of `rows` (bool (steps,)) rises
    already: the steps fall short of MIN_SLOPE x their length as little as possible in total,
    and among such terms, what they add along the probes (mean energy per atom) is least. They
    are zero on every training structure, so nothing measures them against data."""
    from scipy import sparse
    from scipy.optimize import linprog
    least = MIN_SLOPE * probes.step[rows]
    if np.all(rise[rows] >= 0.99 * least):
        return None
    m, n = int(rows.sum()), lift.shape[1]
    A = sparse.hstack([sparse.csr_matrix(-lift[rows]), -sparse.identity(m, format="csr")],
                      format="csr")
    bounds = [(0, None)] * (n + m)
    # first the least total shortfall, then, keeping it, the least energy along the probes
    # (weighing the two in one objective let the deep probes' large energies buy shortfall)
    shortfall = np.concatenate([np.zeros(n), np.ones(m)])
    result = linprog(shortfall, A_ub=A, b_ub=rise[rows] - least, bounds=bounds, method="highs")
    if result.status == 0:
        keep = sparse.vstack([A, sparse.csr_matrix(shortfall)], format="csr")
        limit = np.append(rise[rows] - least, result.fun * (1 + 1e-6) + 1e-9)
        result = linprog(np.concatenate([energy.mean(axis=0), np.zeros(m)]), A_ub=keep,
                         b_ub=limit, bounds=bounds, method="highs")
    if result.status != 0:
        raise RuntimeError(f"the coordination terms' program failed ({result.message})")
    return result.x[:n]


def coordination_terms(model, coefficients, limit, tau, rho):
    """The repulsion_coordination dict (`lattenb.repulsion`) of the coefficients
    `solve_coordination` returned."""
    S, Kd = tau.shape
    upper = np.triu_indices(S)
    sparse = np.zeros(rho.shape)
    sparse[upper] = sparse[upper[::-1]] = coefficients[S * Kd:].reshape(-1, rho.shape[2])
    return {"cutoff": model.cutoff,
            "dense": np.stack([tau, coefficients[:S * Kd].reshape(S, Kd)], axis=-1),
            "sparse_limit": np.asarray(limit, dtype=np.float64),
            "sparse_wall": np.stack([rho, sparse], axis=-1)}


def close_short_range(model, data, crystals, log=None, valid=None):
    """Give `model` (with a core repulsion) the wall that makes every probe curve rise below the
    training data (module docstring), in place, added to the wall it has (a refit of a fitted
    model keeps the wall it was fitted with), then the coordination terms that close what the
    wall leaves, solved afresh. data: the training `Dataset` (a shard of it on each rank of
    `data.comm`), valid: the validation `Dataset` or None (the coordination range covers both);
    crystals: `crystal_candidates` of all the training data (the same on every rank:
    `crystal_candidates(frames, comm)`). Returns a summary dict (what `fit` records in
    `fit_info["short_range"]`)."""
    comm = data.comm
    t0 = time.perf_counter()
    model.set_repulsion(model.repulsion, model.repulsion_radii, model.repulsion_wall)
    probes = ProbeCurves(model, crystals)
    rho = probes.rho
    training = TrainingForces(model, data, rho)
    rise = probes.rises(model)
    falls = int(np.sum(rise[probes.below_d] <= 0.0))
    wall = np.zeros_like(rho)
    if model.repulsion_wall is not None and np.shape(model.repulsion_wall)[:3] == rho.shape \
            and np.allclose(np.array(model.repulsion_wall)[..., 0], rho):
        wall = np.array(model.repulsion_wall)[..., 1]        # a refit: the wall only grows
    upper = np.triu_indices(len(rho))
    mae = force_mae(model, data)
    impact = training.impact()          # (reductions: every rank, before rank 0 solves)
    add, problem, within_data = None, None, True
    if comm.rank == 0:
        try:
            add = solve_wall(probes, rise, impact)
        except RuntimeError as exc:     # keep the fitted model: say so, do not fail the fit
            problem = str(exc)
    add, problem = comm.bcast((add, problem))
    # without reference forces nothing measures what the wall does to the data: keep off it
    if add is not None and (training.count == 0 or training.mean_abs((wall + add)[upper])
                            > FORCE_TOLERANCE * mae):
        within_data = False         # e.g. molecules: their bonds sit just above d
        add = comm.bcast(solve_wall(probes, rise, None, within_data=False)
                         if comm.rank == 0 else None)
    if add is not None:
        wall += add
        model.set_repulsion(model.repulsion, model.repulsion_radii,
                            np.stack([rho, wall], axis=-1))
    # the coordination terms, where steps still fall (below d, or in the band past the data)
    rise = probes.rises(model)
    low, high = training_coordination(model, [data] + ([valid] if valid is not None else []))
    present = np.isfinite(low)
    if present.any():                   # species without atoms: the others' range
        low[~present], high[~present] = low[present].min(), high[present].max()
    else:                               # no atom has a neighbour: nothing to measure against
        low[:], high[:] = 0.0, np.inf
    rows = probes.constrained(model, high)
    falls_band = int(np.sum(rise[rows & ~probes.below_d] <= 0.0))
    limit, tau = SPARSE_FRACTION * low, high[:, None] * np.asarray(DENSE_ONSETS)
    coefficients = None
    if comm.rank == 0 and present.any():
        lift, energy = probes.coordination_basis(model, limit, tau)
        try:
            coefficients = solve_coordination(probes, rise, rows, lift, energy)
        except RuntimeError as exc:
            problem = str(exc)
    coefficients, problem = comm.bcast((coefficients, problem))
    if coefficients is not None and not np.any(coefficients > 0):
        coefficients = None             # nothing helps: keep MD free of the coordination pass
    if coefficients is not None:
        model.set_repulsion(model.repulsion, model.repulsion_radii, model.repulsion_wall,
                            coordination_terms(model, coefficients, limit, tau, rho))
    rise = probes.rises(model)
    left = int(np.sum(rise[probes.below_d] <= 0.0))
    left_band = int(np.sum(rise[rows & ~probes.below_d] <= 0.0))
    at_d = np.sum(wall * np.clip(1.0 - probes.closest[..., None] / rho, 0.0, None) ** 3, axis=-1)
    summary = {"curves": probes.n_curves, "steps_falling_before": falls,
               "steps_falling_after": left, "problem": problem,
               "reaches_training_pairs": within_data,
               "training_forces_eV_per_A": training.mean_abs(wall[upper]),
               "training_force_mae_eV_per_A": mae if np.isfinite(mae) else None,
               "largest_wall_at_d_eV": float(at_d.max()),
               "band_curves": probes.n_band_curves,
               "band_steps_checked": int(np.sum(rows & ~probes.below_d)),
               "band_steps": int(np.sum(~probes.below_d)),
               "band_steps_falling_before": falls_band, "band_steps_falling_after": left_band,
               "coordination_range": np.stack([low, high], axis=-1).tolist(),
               "coordination_terms": coefficients is not None,
               "seconds": time.perf_counter() - t0}
    if log is not None:
        log(f"short range: {probes.n_curves} probe curves (dimers, compressed crystals) below "
            f"the training data, {falls} of {int(probes.below_d.sum())} steps falling; wall: "
            f"{summary['largest_wall_at_d_eV']:.3g} eV at d at most, "
            f"{summary['training_forces_eV_per_A']:.2g} eV/Å added to the training forces "
            f"(mean absolute component; the fit's MAE {mae:.3g}), {left} steps falling after "
            f"({summary['seconds']:.1f} s)")
        if not within_data:
            log("short range: a wall reaching past the shortest training distances d would have "
                f"added more than {FORCE_TOLERANCE:.0%} of the fit's force MAE to the training "
                "forces: only terms reaching up to 0.9 d (as ZBL) are used below d, the rest is "
                "left to the coordination terms")
        if probes.n_band_curves:
            log(f"short range: {probes.n_band_curves} crystals compressed from their own "
                f"nearest-neighbour distance to d, {summary['band_steps_checked']} of "
                f"{summary['band_steps']} steps past the training data's coordination; "
                f"{falls_band} falling before the coordination terms, {left_band} after")
        if coefficients is not None:
            log("short range: coordination terms (zero on every training structure: "
                "coordination " + ", ".join(f"{sp} {a:.2f}-{b:.2f}" for sp, a, b in
                                             zip(model.species, low, high))
                + f" there) added; {left} steps below d falling after them")
        if problem is not None:
            log(f"WARNING: short range: {problem}; the curves may still fall below the data")
    return summary
