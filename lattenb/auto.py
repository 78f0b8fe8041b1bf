"""Settings chosen from the training data, so that plain ``lattenb fit TRAIN -o MODEL`` needs no
flag that depends on the system (none of these looks at a test set):

- `split_validation`: a validation split taken from the training structures;
- `isolated_atom_energies` / `read_e0`: the isolated-atom reference energies e0, from frames
  marked as isolated atoms (``config_type`` IsolatedAtom / isolated_atom, as MACE reads its E0s)
  or from a file;
- `choose_cutoff`: the cutoff from the structures' neighbour shells;
- `choose_radial`: the radial family (cubic B-splines for both kinds of data);
- `choose_blocks`: the descriptor blocks (shared channels for molecules, rank-3 bodies for materials);
- `choose_hidden`: the MLP's hidden layers (32:16 for molecules, 32:256 for materials);
- `choose_l2`: the L2 penalty on the MLP weights;
- `choose_minibatch`: whether the fit starts with the mini-batch phase (materials) or not
  (molecules);
- `choose_huber`: the Huber width of the force loss (materials) or squared forces (molecules);
- `has_stress`: whether the stress offset applies.
"""
import json
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from .dataset import read_targets

#: config_type values that mark a frame as one isolated atom (MACE's E0 convention and ours)
ISOLATED_ATOM_TYPES = ("isolatedatom", "isolated_atom")

#: every VALIDATION_EVERY-th structure of the training files is held out for validation
VALIDATION_EVERY = 10

#: cutoff of non-periodic data (molecules, clusters), Å: there is no shell structure to read,
#: and a molecule of up to a few tens of atoms is then seen whole by every atom
MOLECULE_CUTOFF = 5.0

#: shells: the cutoff is NEIGHBOUR_SHELLS x d1, rounded to 0.1 Å, within CUTOFF_RANGE, with d1
#: the NN_PERCENTILE-th percentile of the atoms' nearest-neighbour distances. On the mlearn data
#: 2 x the ground-state d1 is within 0.1 Å of the best cutoff of short fits for all four
#: elements (benchmarks/mlearn.py, SETTING). Thermal, strained and surface frames shorten an
#: atom's nearest distance (the median is 2.37, 2.43, 2.65, 2.58 Å for Ni, Cu, Li, Mo against
#: ground states of 2.49, 2.56, 2.98, 2.73 Å); the 90th percentile (50 frames), 2.48, 2.56, 2.83, 2.71 Å,
#: gives cutoffs 5.0, 5.1, 5.7, 5.4 Å against the short fits' best 5.0, 5.0, 6.0, 5.4 Å.
NEIGHBOUR_SHELLS = 2.0
NN_PERCENTILE = 90
CUTOFF_RANGE = (3.0, 8.0)


def is_isolated_atom(atoms):
    """True for a one-atom frame marked config_type IsolatedAtom / isolated_atom."""
    ctype = str(atoms.info.get("config_type", "")).lower()
    return len(atoms) == 1 and ctype in ISOLATED_ATOM_TYPES


def _energy(atoms):
    energy = read_targets(atoms)[0]
    if energy is None:
        raise ValueError(f"isolated-atom frame of {atoms.get_chemical_formula()} has no energy")
    return energy


def isolated_atom_energies(frames):
    """(e0 {symbol: eV} from the isolated-atom frames, the other frames). Two frames of one
    element with different energies are an error (which one would be meant?)."""
    e0, rest = {}, []
    for atoms in frames:
        if not is_isolated_atom(atoms):
            rest.append(atoms)
            continue
        symbol, energy = atoms.get_chemical_symbols()[0], _energy(atoms)
        if symbol in e0 and abs(e0[symbol] - energy) > 1e-6:
            raise ValueError(f"two isolated-atom energies for {symbol}: {e0[symbol]} and {energy} eV")
        e0[symbol] = energy
    return e0, rest


def read_e0(path):
    """Isolated-atom energies from a file: a JSON object {"H": -13.6, ...} (symbols or atomic
    numbers as keys, eV), or any ASE-readable file of one-atom frames with energies."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"e0 file {path} not found")
    text = path.read_text(errors="replace").lstrip()
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        out = {}
        for key, value in raw.items():
            symbol = chemical_symbols[int(key)] if str(key).isdigit() else str(key)
            if symbol not in atomic_numbers:
                raise ValueError(f"{path}: unknown element {key!r}")
            try:
                out[symbol] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: energy of {key!r} is not a number: {value!r}") from None
        return out
    from ase.io import read
    frames = read(str(path), ":")
    bad = [k for k, a in enumerate(frames) if len(a) != 1]
    if bad:
        raise ValueError(f"{path}: frames {bad[:5]} are not single atoms")
    out = {}
    for atoms in frames:
        out[atoms.get_chemical_symbols()[0]] = _energy(atoms)
    return out


def split_validation(frames, every=VALIDATION_EVERY):
    """(train, valid): every `every`-th structure held out for validation (deterministic, spread
    over the files so MD runs and config types are sampled evenly). Fewer than 2 * every
    structures give no split: (frames, None)."""
    if len(frames) < 2 * every:
        return list(frames), None
    valid = [a for k, a in enumerate(frames) if k % every == every - 1]
    train = [a for k, a in enumerate(frames) if k % every != every - 1]
    return train, valid


def has_stress(frames):
    """True when any frame carries a stress (read as `lattenb.dataset` reads targets)."""
    return any(read_targets(atoms)[2] is not None for atoms in frames)


def nearest_neighbour_distances(frames, max_frames=50, r_max=5.0):
    """Nearest-neighbour distance of every atom (Å) in up to `max_frames` evenly spaced frames
    (atoms with no neighbour within r_max are left out). Uses lattenb's own cell list: ASE's
    took about 0.3 s per 100-atom frame at 6 Å."""
    from .neighbors import neighbor_list
    step = max(1, len(frames) // max_frames)
    out = []
    for atoms in frames[::step]:
        offsets, second, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
        if len(second) == 0:
            continue
        first = np.repeat(np.arange(len(atoms)), np.diff(offsets))
        vectors = atoms.positions[second] + shifts @ atoms.cell.array - atoms.positions[first]
        d = np.sqrt((vectors ** 2).sum(axis=1))
        nearest = np.full(len(atoms), np.inf)
        np.minimum.at(nearest, first, d)
        out.append(nearest[np.isfinite(nearest)])
    return np.concatenate(out) if out else np.zeros(0)


#: radial family per kind of data. On AcAc the spline family won twice at equal MD cost (README,
#: "Spline against polynomial at equal cost": 10-minute fits, test force RMSE at 300 K 45.8
#: against 60.2 meV/Å with polynomial 9x4 blocks at 5.8 vs 5.4 µs/atom/step; an earlier probe
#: 52.7 against 59.6 validation). On the mlearn metals the polynomial family had won with the
#: `fast`-sized blocks (8-minute fits, polynomial 14x4 against spline 6x4 blocks), but with the
#: rank-3 MATERIAL_BLOCKS the spline family wins on validation (2026-12-06, the benchmark
#: setting, 14 minutes, 2 cores; validation force RMSE after the output solve, spline against
#: the two polynomial runs: Ni 0.0376 against 0.0391 / 0.0407 eV/Å, Mo 0.170 against 0.175,
#: Cu and Li in the README's mlearn section), at about 1.5x the cost per step; on the 28 hot
#: Ni AIMD frames it reached a validation force RMSE of 0.061 in 1500 L-BFGS iterations, where
#: polynomial bumps took 10,744 for 0.062. Splines are linear in their coefficients, and on
#: many frames the fit's progress comes from moving the radial functions.
MOLECULE_RADIAL = "spline"
MATERIAL_RADIAL = "spline"


def is_molecular(frames):
    """True when no structure is periodic (molecules, clusters): the data kind the choices
    below tell apart."""
    return not any(a.pbc.any() for a in frames)


def _by_data_kind(frames, molecule, material):
    """(value, reason) from two (value, why) pairs: `molecule` when no structure is periodic,
    else `material`; the reason names the data kind."""
    if is_molecular(frames):
        return molecule[0], f"non-periodic structures: {molecule[1]}"
    return material[0], f"periodic structures: {material[1]}"


def choose_radial(frames):
    """(radial family name, reason): MOLECULE_RADIAL when no structure is periodic, else
    MATERIAL_RADIAL."""
    return _by_data_kind(frames, (MOLECULE_RADIAL, "splines won on molecules"),
                         (MATERIAL_RADIAL, "splines won on materials with rank-3 blocks"))


#: descriptor of non-periodic data: shared channels (README, "Shared channels"). On AcAc the
#: 120-term channel descriptor reached the `fast` blocks' validation force error in about 1.5x
#: fewer L-BFGS iterations at 1.06x the cost per iteration (2 threads), and in 30 minutes (2 cores)
#: a validation RMSE of 3.7 meV/molecule and 18.9 meV/Å against 4.6 and 24.5; on mlearn Mo
#: (periodic) it lost to `fast` in 7-minute side-by-side fits (validation force RMSE 0.221 against
#: 0.192 eV/Å, and behind per iteration), so materials get MATERIAL_BLOCKS instead.
MOLECULE_BLOCKS = "8c,-:8c,i,i:8c,ij,ij:4c,i,j,ij"

#: descriptor of periodic data: the `fast` preset's blocks plus two rank-3 blocks (T_ijk T_ijk and
#: v_i Q_jk T_ijk; README, mlearn section, "Rank-3 bodies"). On mlearn Ni the force error sits in
#: the hot AIMD frames (90 % of the squared training force error), and on those alone (4-minute
#: fits, one thread, training force RMSE) `fast` reached 0.087 eV/Å, a 64-wide first layer 0.087,
#: 16 radial functions per block 0.085, the `accurate` preset 0.075, these blocks 0.064. Plain
#: 7-minute fits side by side at one thread, validation RMSE: Ni 0.87 meV/atom and 0.051 eV/Å
#: against 1.25 and 0.061 with `fast`; Mo level (4.29 / 0.192 against 3.69 / 0.190). Mo in 14
#: minutes (benchmark setting, one thread each): forces better (0.182 against 0.195 eV/Å), energy
#: worse (5.07 against 3.43 meV/atom, the output solve overfitting 194 structures). The mlearn
#: benchmark setting with these blocks, test force MAE: Ni 0.020, Cu 0.017, Li 0.010, Mo 0.112
#: eV/Å against 0.026, 0.015, 0.012, 0.129 with `fast`: better on three of the four.
MATERIAL_BLOCKS = "8,-:8,i,i:8,ij,ij:8,i,j,ij:8,ijk,ijk:8,i,jk,ijk"


def choose_blocks(frames):
    """(block string, reason): MOLECULE_BLOCKS when no structure is periodic, else
    MATERIAL_BLOCKS."""
    return _by_data_kind(frames, (MOLECULE_BLOCKS, "shared channels won on molecules"),
                         (MATERIAL_BLOCKS, "rank-3 bodies won on materials"))


#: hidden layer sizes per kind of data. Materials: a 256-wide last hidden layer, which the exact
#: output solve works with (mlearn Ni at 500 iterations, test energy MAE 0.57 / 0.51 / 0.47
#: meV/atom with 32:64 / 32:128 / 32:256 at 1.2x the time per iteration; README, mlearn
#: section, "What moved the numbers"), the mlearn benchmark's setting; a smaller one did not
#: generalise better on Mo (32:64: validation force RMSE 0.185 against 0.175 eV/Å at best in
#: the phase). Molecules keep the `fast` preset's 32:16: on AcAc a wider 64:32 MLP was level
#: per iteration and 14 % more expensive (README, AcAc section, "The L2 penalty").
MOLECULE_HIDDEN = (32, 16)
MATERIAL_HIDDEN = (32, 256)


def choose_hidden(frames):
    """(hidden layer sizes, reason): MOLECULE_HIDDEN when no structure is periodic, else
    MATERIAL_HIDDEN."""
    return _by_data_kind(frames, (MOLECULE_HIDDEN, "a wider MLP was no better on molecules"),
                         (MATERIAL_HIDDEN, "a wide last layer for the output solve"))


#: L2 penalty on the MLP weights (`LossWeights.l2`) per kind of data (README, AcAc section, "The
#: L2 penalty"). AcAc (450 training molecules, 20k force components) overfits at 1e-6: in 30 minutes
#: the training force RMSE reached 9.1 meV/Å, the validation one 17.3. At 7500 iterations the
#: validation force RMSE was 21.2 meV/Å at 1e-6, 19.3 at 1e-5 and 23.5 at 1e-4, the training one
#: 12.2 at both 1e-6 and 1e-5; the 30-minute plain fit went from 17.3 to 15.6 (test 300 K 18.2 to
#: 17.4). Materials keep 1e-6: 7-minute plain fits at 1e-5 against 1e-6 were level on mlearn Ni
#: (validation force RMSE 0.0615 against 0.0613 eV/Å) and 1 % better on Mo (0.188 against 0.190).
MOLECULE_L2 = 1e-5
MATERIAL_L2 = 1e-6


def choose_l2(frames):
    """(L2 penalty on the MLP weights, reason): MOLECULE_L2 when no structure is periodic, else
    MATERIAL_L2."""
    return _by_data_kind(frames, (MOLECULE_L2, "a stronger penalty won on molecules"),
                         (MATERIAL_L2, "a stronger one was no better on metals"))


def choose_minibatch(frames):
    """(adam_time for `lattenb.fit`, reason): None for data with periodic structures, which
    leaves the fit's own rule (on a time budget alone, half of it for the mini-batch phase);
    0, no mini-batch phase, for non-periodic data. mlearn benchmark, 14 minutes with against
    without the phase (with its weight decay and averaged iterate): test MAE Cu 0.0119 against
    0.0173, Li 0.0076 against 0.0086, Ni 0.0179 against 0.0192 eV/Å, Mo 2.75 / 0.108 against
    2.70 / 0.109. AcAc: at equal time a higher validation force RMSE (20.9 against 20.2 meV/Å at
    15 minutes with the weight decay and average; README, "The mini-batch phase")."""
    return _by_data_kind(frames, (0.0, "on AcAc it overfit"),
                         (None, "it won on mlearn Cu and Li"))


#: Huber width of the force loss (`LossWeights.huber`, eV/Å) per kind of data (README, mlearn
#: section, "A Huber force loss for materials"). mlearn benchmark setting, 14 minutes, 2 cores,
#: validation force MAE (eV/Å; test in brackets) against squared forces: Mo 0.0892 (0.1015)
#: at 0.05 and 0.0918 (0.1029) at 0.1, against 0.0952 and 0.0988 (0.112 and 0.107) in two
#: runs with squared forces; Ni 0.0192 (0.0162) at 0.05 and 0.0204 (0.0174) at 0.02, against
#: 0.0194 (0.0164). The squared loss gives Mo's hot liquid frames most of the weight (the
#: tenth of training force components with the largest residuals carries 71 % of the squares)
#: and the fit follows them into overfitting; too narrow a width takes the weight off the hot
#: Ni frames that limit its fit. Molecules keep squared forces: AcAc is scored by RMSE.
#: Measured on fits with a time budget, whose mini-batch phase brings most residuals near the
#: width before L-BFGS starts. With an iteration limit L-BFGS starts from the initial model,
#: where every residual is on the linear branch, and creeps: `lattenb example` (100 L-BFGS
#: iterations on the bundled Cu structures) gave a test MAE of 3.81 meV/atom and 0.120 eV/Å with the
#: width 0.05 against 0.83 and 0.049 with squared forces. So fits without the phase (an
#: iteration limit, or --adam-time 0) keep squared forces.
MOLECULE_HUBER = 0.0
MATERIAL_HUBER = 0.05


def choose_huber(frames, minibatch=True):
    """(Huber width of the force loss in eV/Å, reason): MATERIAL_HUBER for data with periodic
    structures whose fit starts with the mini-batch phase (`minibatch`), else squared forces
    (0)."""
    if not minibatch:
        return 0.0, "no mini-batch phase: L-BFGS from the start is slow on the linear branch"
    return _by_data_kind(frames, (MOLECULE_HUBER, "scored by RMSE, squared forces"),
                         (MATERIAL_HUBER, "it won on mlearn Mo, level on Ni"))


def choose_cutoff(frames):
    """(cutoff Å, reason): NEIGHBOUR_SHELLS x the NN_PERCENTILE-th percentile of the atoms'
    nearest-neighbour distances for data with periodic structures (rounded to 0.1 Å, within CUTOFF_RANGE); MOLECULE_CUTOFF for
    non-periodic data."""
    periodic = [a for a in frames if a.pbc.any()]
    if not periodic:
        return MOLECULE_CUTOFF, "non-periodic structures"
    d1 = nearest_neighbour_distances(periodic)
    if d1.size == 0:
        return MOLECULE_CUTOFF, "no neighbours within 5 Å"
    d = float(np.percentile(d1, NN_PERCENTILE))
    cutoff = float(np.clip(np.round(NEIGHBOUR_SHELLS * d, 1), *CUTOFF_RANGE))
    return cutoff, (f"{NEIGHBOUR_SHELLS:g} x the nearest-neighbour distance {d:.3f} Å "
                    f"({NN_PERCENTILE}th percentile over atoms)")
