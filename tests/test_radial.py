"""Radial families: every registered family's Numba functions against finite differences (value,
d/dr, the parameter adjoint), the polynomial family's own derivatives and smoothness, and the
seam itself: a toy family defined only in `tests/toy_radial.py` runs through the model, the
kernels, training and model files."""
import numpy as np
import pytest

from lattenb import radial
from lattenb.radial.polynomial import param_derivs as radial_param_derivs
from lattenb.radial.polynomial import value as poly_value
from lattenb.radial.polynomial import value_deriv as poly_value_deriv
import toy_radial  # noqa: F401  (registers "toy-gaussian")

CUTOFF = 3.8
FAMILIES = sorted(set(radial.names()) | {"toy-gaussian"})


def family_parameters(family, rng, S=2, B=3):
    return family.initial_parameters(rng, S, B, CUTOFF)


def body_constants(family, params, s, b):
    constants, scale = family.kernel_constants(params, CUTOFF)
    return tuple(constants[s, b]), scale[s, b]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_value_deriv_matches_finite_differences(name):
    family = radial.get(name)
    rng = np.random.default_rng(3)
    params = family_parameters(family, rng)
    lo, hi = family.support(params, CUTOFF)
    h = 1e-6
    checked = 0
    for s in range(2):
        for b in range(3):
            kb, _ = body_constants(family, params, s, b)
            for r in rng.uniform(max(lo[s, b], 0.3), min(hi[s, b], CUTOFF), size=5):
                g, gp = family.value_deriv(r, kb)
                assert g == family.value(r, kb)
                fd = (family.value(r + h, kb) - family.value(r - h, kb)) / (2 * h)
                assert abs(gp - fd) <= 1e-7 * max(1.0, abs(fd)), (r, gp, fd)
                checked += g != 0.0
    assert checked > 10, "too few points inside the supports: the check would be vacuous"


@pytest.mark.parametrize("name", FAMILIES)
def test_family_parameter_adjoint_matches_finite_differences(name):
    """J = sigma scale sum_k (g(r_k) p_k + g'(r_k) q_k) for one body: `adjoint_finish` gives
    dJ/dsigma and dJ/dtheta for the family's gradient slots (its parameters)."""
    family = radial.get(name)
    rng = np.random.default_rng(5)
    params = family_parameters(family, rng)
    s, b, sigma = 1, 2, 0.7
    lo, hi = family.support(params, CUTOFF)
    r = rng.uniform(max(lo[s, b], 0.3), min(hi[s, b], CUTOFF), size=12)
    p = rng.normal(size=12)
    q = rng.normal(size=12)

    def J(prm):
        kb, scale = body_constants(family, prm, s, b)
        total = 0.0
        for k in range(12):
            g, gp = family.value_deriv(r[k], kb)
            total += g * p[k] + gp * q[k]
        return sigma * scale * total

    kb, scale = body_constants(family, params, s, b)
    acc = family.adjoint_init()
    for k in range(12):
        acc = family.adjoint_pair(acc, r[k], kb, p[k], q[k])
    g_sigma, g_theta = family.adjoint_finish(acc, kb, sigma * scale)
    assert len(g_theta) == len(family.gradient_names)
    assert abs(g_sigma - J(params) / sigma) <= 1e-12 * max(1.0, abs(g_sigma))
    h = 1e-6
    for m, pname in enumerate(family.gradient_names):
        def J_at(value):
            prm = {k: v.copy() for k, v in params.items()}
            prm[pname][s, b] = value
            return J(prm)
        x = params[pname][s, b]
        fd = (J_at(x + h) - J_at(x - h)) / (2 * h)
        assert abs(fd) > 1e-6, f"{pname}: derivative too small for a meaningful check"
        assert abs(g_theta[m] - fd) <= 1e-6 * max(1.0, abs(fd)), (pname, g_theta[m], fd)


def test_unknown_family_is_a_clear_error():
    from lattenb import LatteModel
    with pytest.raises(ValueError, match="unknown radial family 'nope'"):
        LatteModel(["Cu"], radial="nope")


# ----------------------------------------------------------------------------- polynomial family
RADIAL_POINTS = [(2.0, 1.0, r) for r in (1.05, 1.4, 1.9, 2.0, 2.3, 2.95)] + \
                [(1.0, 0.8, r) for r in (0.3, 0.9, 1.7)] + \
                [(3.1, 0.9, r) for r in (2.25, 3.0, 3.95)]


def ref_f(r, c, w):
    t = max(0.0, 1.0 - ((r - c) / w) ** 2)
    return t ** 3 / c ** 2


@pytest.mark.parametrize("c, w, r", RADIAL_POINTS)
def test_radial_param_derivs_finite_differences(c, w, r):
    f, f_r, f_c, f_w, f_rc, f_rw = radial_param_derivs(r, c, w)
    h = 1e-6
    assert abs(f - ref_f(r, c, w)) <= 1e-14 * max(1.0, abs(f))
    kb = (c, 1 / w, 1 / c ** 2)      # the kernels' constants; f = g / c^2
    assert abs(f - poly_value(r, kb) / c ** 2) <= 1e-14 * max(1.0, abs(f))
    assert np.allclose(np.array(poly_value_deriv(r, kb)) / c ** 2, (f, f_r), rtol=1e-13, atol=1e-15)
    fd_r = (ref_f(r + h, c, w) - ref_f(r - h, c, w)) / (2 * h)
    fd_c = (ref_f(r, c + h, w) - ref_f(r, c - h, w)) / (2 * h)
    fd_w = (ref_f(r, c, w + h) - ref_f(r, c, w - h)) / (2 * h)
    fd_rc = (radial_param_derivs(r, c + h, w)[1] - radial_param_derivs(r, c - h, w)[1]) / (2 * h)
    fd_rw = (radial_param_derivs(r, c, w + h)[1] - radial_param_derivs(r, c, w - h)[1]) / (2 * h)
    for name, got, fd in [("f_r", f_r, fd_r), ("f_c", f_c, fd_c), ("f_w", f_w, fd_w),
                          ("f_rc", f_rc, fd_rc), ("f_rw", f_rw, fd_rw)]:
        assert abs(got - fd) <= 1e-7 * max(1.0, abs(fd)), (name, got, fd)
    # the cross derivatives are consistent with differentiating f_c, f_w in r
    fd_cr = (radial_param_derivs(r + h, c, w)[2] - radial_param_derivs(r - h, c, w)[2]) / (2 * h)
    fd_wr = (radial_param_derivs(r + h, c, w)[3] - radial_param_derivs(r - h, c, w)[3]) / (2 * h)
    assert abs(f_rc - fd_cr) <= 1e-7 * max(1.0, abs(fd_cr))
    assert abs(f_rw - fd_wr) <= 1e-7 * max(1.0, abs(fd_wr))


@pytest.mark.parametrize("c, w", [(2.0, 1.0), (1.0, 0.8), (3.1, 0.9)])
def test_radial_is_c2_at_support_edges(c, w):
    for edge, inward in ((c + w, -1.0), (c - w, 1.0)):
        # exactly at the edge and outside: everything vanishes
        for r in (edge, edge - inward * 1e-3, edge - inward * 0.5):
            assert radial_param_derivs(r, c, w) == (0.0,) * 6
        # approaching from inside: f ~ d^3, f' ~ d^2, f'' ~ d (so all three tend to 0)
        scaled = []
        for d in (1e-2, 1e-3, 1e-4):
            r = edge + inward * d
            f, f_r = radial_param_derivs(r, c, w)[:2]
            hh = d / 10
            f_rr = (radial_param_derivs(r + hh, c, w)[1] - radial_param_derivs(r - hh, c, w)[1]) / (2 * hh)
            assert f > 0
            scaled.append((f / d ** 3, abs(f_r) / d ** 2, abs(f_rr) / d))
        scaled = np.array(scaled)
        assert np.all(scaled[-1] > 0)
        assert np.all(np.abs(scaled[-1] - scaled[-2]) <= 0.05 * scaled[-1]), scaled


# ----------------------------------------------------------------------------- the seam
# The toy family of tests/toy_radial.py, registered there and edited into nothing else, goes
# through the same checks as the polynomial family: forces and stress against finite differences
# of the energy, every training gradient against finite differences of the loss, model files.
def toy_model(seed=0):
    from lattenb import LatteModel
    m = LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks="2,-:2,i,i:1,ij,ij:1,ijk,ijk:1,i,j,ij",
                   hidden=(6, 4), activation="tanh", seed=seed, radial="toy-gaussian")
    rng = np.random.default_rng(seed)
    m.set_parameters(g_std=rng.uniform(1.0, 3.0, m.params["g_std"].shape),
                     g_mean=rng.normal(size=m.params["g_mean"].shape) * 0.1, e0=rng.normal(size=2))
    return m


def test_toy_family_forces_and_stress_match_finite_differences():
    from test_model import forces_fd, rel_err, strain_derivative_fd
    from structures import random_atoms
    m = toy_model()
    assert m.radial == "toy-gaussian" and set(m.params) >= {"mu", "alpha"}
    rng = np.random.default_rng(7)
    atoms = random_atoms(rng, 8, [[5.0, 0, 0], [1.1, 4.7, 0], [0.4, 0.9, 5.2]], True)
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert rel_err(out["forces"], forces_fd(m, atoms)) < 1e-8
    D = strain_derivative_fd(m, atoms)
    volume = abs(np.linalg.det(atoms.cell.array))
    assert rel_err(-out["virial"], D) < 1e-8
    assert rel_err(out["stress"], D[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] / volume) < 1e-8


def test_toy_family_training_gradients_match_finite_differences():
    from test_training import fd_check, random_frame
    from lattenb.dataset import prepare_dataset
    from lattenb.loss import LossWeights
    rng = np.random.default_rng(0)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 8, 5.0, stress=False),
              random_frame(rng, 3, 3.2)]
    m = toy_model(seed=2)
    worst = fd_check(m, prepare_dataset(frames, m), LossWeights(1.0, 2.0, 0.5, l2=1e-3), rng)
    assert {"mu", "alpha", "sigma", "mlp", "e0"} <= set(worst)
    assert max(worst.values()) < 1e-6, worst


def test_toy_family_fits_and_round_trips_through_a_model_file(tmp_path):
    import lattenb
    from test_training import random_frame
    rng = np.random.default_rng(4)
    frames = [random_frame(rng, 4, 4.0) for _ in range(4)]
    fitted = lattenb.fit(frames, model=toy_model(seed=3), max_iter=3, log=None)
    assert np.all(fitted.params["alpha"] >= 0.1)      # the family's bounds held
    fitted.save(tmp_path / "toy.npz")
    loaded = lattenb.load(tmp_path / "toy.npz")
    assert loaded.radial == "toy-gaussian"
    atoms = frames[0]
    a = fitted.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    b = loaded.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    for key in ("energy", "forces", "stress"):
        assert np.array_equal(a[key], b[key])
