"""Physical conventions, in one place: units, the stress unit, Voigt order, stress and virial signs.

Units are eV and Å throughout: energies eV, forces eV/Å, stress eV/Å^3, virial eV.
With D = dE/d(strain) (3, 3) eV, the strain derivative of the energy:
    virial W = -D (eV; = sum r (x) F for a finite system),
    stress   = sym(D) / V = -W / V (eV/Å^3, ASE's sign), for a cell of volume V > MIN_VOLUME,
stored as 6 numbers in ASE's Voigt order (xx, yy, zz, yz, xz, xy). LAMMPS orders the 6 virial
components (xx, yy, zz, xy, xz, yz) instead (`lammps_from_tensor`).
"""
import numpy as np

#: the units of every number lattenb reads or writes (also written into model files)
UNITS = {"energy": "eV", "length": "Angstrom", "force": "eV/Angstrom", "stress": "eV/Angstrom^3"}

#: stress eV/Å^3 -> GPa
EV_A3_TO_GPA = 160.21766208

#: a cell with |det| at or below this (Å^3) has no volume: no stress
MIN_VOLUME = 1e-12

#: the (row, column) of every Voigt component, in ASE's order xx, yy, zz, yz, xz, xy
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
_VOIGT_ROWS = [a for a, _ in VOIGT_PAIRS]
_VOIGT_COLS = [b for _, b in VOIGT_PAIRS]

#: the (row, column) of the 6 virial components LAMMPS takes: xx, yy, zz, xy, xz, yz
LAMMPS_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
_LAMMPS_ROWS = [a for a, _ in LAMMPS_PAIRS]
_LAMMPS_COLS = [b for _, b in LAMMPS_PAIRS]


def voigt_from_tensor(t):
    """(..., 6) Voigt components (xx, yy, zz, yz, xz, xy) of (..., 3, 3) tensors (upper triangle)."""
    return np.asarray(t)[..., _VOIGT_ROWS, _VOIGT_COLS]


def lammps_from_tensor(t):
    """(..., 6) components in LAMMPS's virial order (xx, yy, zz, xy, xz, yz) of (..., 3, 3) tensors."""
    return np.asarray(t)[..., _LAMMPS_ROWS, _LAMMPS_COLS]


def symmetrise(t):
    """0.5 (t + t^T) of (3, 3) or (..., 3, 3) tensors (a strain derivative, a virial)."""
    return 0.5 * (t + np.swapaxes(t, -1, -2))


def stress_from_virial(virial, volume):
    """Stress (..., 6) eV/Å^3, Voigt order and ASE sign, -W / V, from a symmetric virial W
    (..., 3, 3) eV and the volume V Å^3 (a positive number; see MIN_VOLUME)."""
    return voigt_from_tensor(-virial / volume)


def stress_from_strain_derivative(dstrain, volumes):
    """Stresses (F, 6) eV/Å^3, Voigt order and ASE sign, sym(D) / V, from per-frame strain
    derivatives D = dE/d(strain) (F, 3, 3) eV and volumes (F,) Å^3; nan for frames whose volume
    is at or below MIN_VOLUME."""
    dstrain = symmetrise(dstrain)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = dstrain / np.where(volumes > MIN_VOLUME, volumes, np.nan)[:, None, None]
    return voigt_from_tensor(s)


def strain_derivative_bar(stress_bar, volumes):
    """Chain rule through `stress_from_strain_derivative`: dL/dD (F, 3, 3) from dL/dstress (F, 6)
    (Voigt) and the volumes (F,). Frames without volume take V = 1 (their stress_bar must be 0).

    S = sym(D) / V, so dL/dD_aa = sbar_aa / V and dL/dD_ab = dL/dD_ba = sbar_ab / (2 V)."""
    vol = np.where(volumes > MIN_VOLUME, volumes, 1.0)
    strain_bar = np.zeros((len(stress_bar), 3, 3))
    for voigt, (a, b) in enumerate(VOIGT_PAIRS):
        scale = 1.0 if a == b else 0.5
        strain_bar[:, a, b] += scale * stress_bar[:, voigt] / vol
        if a != b:
            strain_bar[:, b, a] += scale * stress_bar[:, voigt] / vol
    return strain_bar


#: the floating-point types a backend may compute in (the CPU kernels: float64 only)
DTYPES = ("float64", "float32")


def dtype_name(dtype):
    """'float64' or 'float32' from a NumPy dtype, type or name (None means float64);
    ValueError otherwise."""
    if dtype is None:
        return "float64"
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")
    return name
