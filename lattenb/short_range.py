"""Short range below the training data: probe curves that must rise as atoms are pushed together,
and the training penalty that makes them rise.

EXPERIMENTAL, off by default (`fit(..., monotone=W)`, `lattenb fit --monotone W`). Measured on
plain 6-minute fits of mlearn Cu and Mo (1 thread each, side by side): with W = 10 and 64 steps the
dimers of both and Cu's compression curve rise all the way up to d, Mo's compression curve still
has a 0.02 eV/atom blip at 1.77 Å and a 0.51 eV/atom step just above d (the probes start at d);
but the test force MAE rose from 0.0155 to 0.0343 eV/Å (Cu) and 0.119 to 0.136 (Mo), partly
because an iteration costs about 1.5 x (412 against 640 iterations in 6 minutes for Cu): the MLP
that fits the data is the one bent here. W = 1 with 16 steps left the curves falling between
probes (Cu 0.0237, Mo 0.136 eV/Å).

The core repulsion (`lattenb.repulsion`) is switched off by r_out = 0.9 d, d the shortest
training distance of each species pair, so that it leaves the data alone. Between r_out and d,
and for a crystal squeezed until its nearest neighbours are closer than d, the learned energy
is on its own and extrapolates: on plain 6-minute mlearn fits the energy of bcc Mo fell by
0.40 eV/atom within 0.014 Å below d, the Mo dimer by 0.016 eV (issue 18 notes). A fixed repulsion
cannot fix that smoothly, since the learned curve already falls at d (a C^2 wall vanishing at d
would need 7,000-27,000 eV at r_in for Ni and Mo). So the fit itself is asked for it:

    P = weight * sum over probe curves and steps k of relu(E_k - E_(k+1))^2   (eV/atom)^2,

E_k the energy per atom (learned part plus repulsion) of the k-th configuration of a curve, each
more compressed than the one before: the dimer of every species pair and, for each composition in
the training data, its lowest-energy periodic structure compressed uniformly, from the shortest
distance d (of that pair, or of the structure) down to the repulsion's inner radius in
`N_STEPS` steps. P is zero on curves that already rise, and it touches no training structure.
Its gradient is an energy-only adjoint on the probe configurations (`backend.parameter_gradients`
with e_bar on their atoms), the same pass as the energy term of the loss.
"""
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from .repulsion import RADIUS_FRACTIONS

#: configurations per probe curve below d (the first at d itself)
N_STEPS = 64
#: a weight that made the dimers and Cu's compression rise (module docstring); per (eV/atom)^2 of
#: a drop, where the energy weight of a plain fit is 10 per (eV/atom)^2 of mean squared error
SUGGESTED_WEIGHT = 10.0


def _dimer_curves(numbers, closest, r_in):
    """One curve per species pair: two atoms from d down to r_in."""
    curves = []
    for a in range(len(numbers)):
        for b in range(a, len(numbers)):
            d, lo = closest[a, b], r_in[a, b]
            curves.append([Atoms(numbers=[numbers[a], numbers[b]], positions=[[0, 0, 0], [r, 0, 0]])
                           for r in np.linspace(d, lo, N_STEPS + 1)])
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


def crystal_candidates(frames):
    """{composition: (energy per atom, Atoms)}: for each composition (sorted atomic numbers and
    reduced counts) among `frames`, the smallest periodic structure with an energy within
    CRYSTAL_WINDOW of the lowest energy per atom of that composition."""
    from .dataset import read_targets
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


def _compression_curves(crystals, closest_d, r_in_min, cutoff):
    curves = []
    for _, atoms in sorted(crystals.values(), key=lambda item: item[0]):
        atoms = reduce_supercell(atoms)
        d0 = shortest_distance(atoms, cutoff)
        if d0 is None:
            continue
        start = min(d0, closest_d)
        curve = []
        for r in np.linspace(start, r_in_min, N_STEPS + 1):
            x = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                      pbc=atoms.pbc)
            x.set_cell(atoms.cell.array * (r / d0), scale_atoms=True)
            curve.append(x)
        curves.append(curve)
    return curves


@dataclass
class MonotonePenalty:
    """The penalty P over probe curves (see the module docstring), prepared once for a model.

    data: a `Dataset` of every probe configuration (curves one after the other); first, second:
    the frame indices of each step (second more compressed); weight."""
    data: object
    first: np.ndarray
    second: np.ndarray
    weight: float
    n_curves: int

    @classmethod
    def build(cls, model, crystals, weight=SUGGESTED_WEIGHT):
        """Probe curves for `model` (with a core repulsion): dimers of every species pair and
        the compression of each structure in `crystals` (`crystal_candidates`)."""
        from .dataset import prepare_dataset
        radii = np.array(model.repulsion_radii)
        closest = radii[..., 1] / RADIUS_FRACTIONS[1]     # d, where `fit` placed r_out
        curves = _dimer_curves(model.numbers, closest, radii[..., 0])
        curves += _compression_curves(crystals, float(closest.min()), float(radii[..., 0].min()),
                                      model.cutoff)
        frames = [a for c in curves for a in c]
        data = prepare_dataset(frames, model, require_energy=False, keep_pairs=True)
        first, start = [], 0
        for c in curves:
            first.extend(range(start, start + len(c) - 1))
            start += len(c)
        first = np.array(first, dtype=np.int64)
        return cls(data, first, first + 1, float(weight), len(curves))

    def drops(self, model):
        """The rise E_(k+1) - E_k (eV/atom) of every step (negative: the curve falls)."""
        from .predict import predict
        energy = predict(model, self.data)[0] / self.data.n_atoms_per_frame
        return energy[self.second] - energy[self.first], energy

    def value_and_gradient(self, model, with_gradient=True):
        """(P, dP/dparams as in `loss.loss_and_gradient`, or None)."""
        rise, _ = self.drops(model)
        h = np.maximum(-rise, 0.0)
        value = self.weight * float(np.sum(h * h))
        if not with_gradient or not value:      # every curve rises: nothing to push
            return value, None
        data = self.data
        e_bar_frame = np.zeros(data.n_frames)
        np.add.at(e_bar_frame, self.first, 2.0 * self.weight * h)
        np.add.at(e_bar_frame, self.second, -2.0 * self.weight * h)
        e_bar = (e_bar_frame / data.n_atoms_per_frame)[data.frame_of_atom]
        n = len(data.positions)
        grad = model.backend("cpu").parameter_gradients(
            data, e_bar, np.zeros((n, 3)), np.zeros((data.n_frames, 3, 3)))
        grad["e0"] = np.bincount(data.species, weights=e_bar, minlength=model.n_species)
        return value, grad
