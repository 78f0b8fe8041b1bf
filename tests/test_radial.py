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
# "spline-3": a spline family made on demand from its name (3 coefficients, 6 knot intervals)
FAMILIES = sorted(set(radial.names()) | {"toy-gaussian", "spline-3"})


def family_parameters(family, rng, S=2, B=3):
    return family.initial_parameters(rng, S, B, CUTOFF)


def body_constants(family, params, s, b):
    constants, scale = family.kernel_constants(params, CUTOFF)
    return family.load(constants, s, b), scale[s, b]


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
                # the same arithmetic; fastmath may fuse it into FMAs differently in the two
                # functions (seen on a CPU with FMA), so equal to a few ulps, not bitwise
                assert abs(g - family.value(r, kb)) <= 1e-15 * max(1.0, abs(g)), r
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
    # the slots mapped to parameter arrays as the training passes map them (`gradients`)
    slots = np.zeros(params[family.parameter_names()[0]].shape[:2] + (len(g_theta),))
    slots[s, b] = g_theta
    grads = family.gradients(slots)
    assert set(grads) == set(family.parameter_names())
    h = 1e-6
    checked = 0
    for pname in family.parameter_names():
        assert grads[pname].shape == params[pname].shape
        for index in np.ndindex(params[pname][s, b].shape):     # () or the coefficients' (N,)
            where = (s, b) + index

            def J_at(value, pname=pname, where=where):
                prm = {k: v.copy() for k, v in params.items()}
                prm[pname][where] = value
                return J(prm)
            x = params[pname][where]
            # fourth-order central difference
            fd = (8 * (J_at(x + h) - J_at(x - h)) - (J_at(x + 2 * h) - J_at(x - 2 * h))) / (12 * h)
            got = grads[pname][where]
            if index == ():         # one number per body: its derivative must not vanish
                assert abs(fd) > 1e-6, f"{pname}: derivative too small for a meaningful check"
            assert abs(got - fd) <= 1e-7 * max(1.0, abs(fd)), (pname, index, got, fd)
            checked += abs(fd) > 1e-6
    assert checked >= len(family.gradient_names) // 2 + 1


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


# ----------------------------------------------------------------------------- spline family
def scipy_spline(family, c, w, coefficients):
    """The reference: SciPy's clamped cubic B-spline on the family's K uniform intervals of
    [c - w, c + w], with the first three and last three of its K + 3 coefficients zero."""
    from scipy.interpolate import BSpline
    K = family.n_intervals
    knots = np.concatenate([[c - w] * 3, np.linspace(c - w, c + w, K + 1), [c + w] * 3])
    return BSpline(knots, np.concatenate([[0.0] * 3, coefficients, [0.0] * 3]), 3,
                   extrapolate=False)


@pytest.mark.parametrize("name", ["spline", "spline-1", "spline-3", "spline-12"])
def test_spline_is_scipys_clamped_bspline(name):
    family = radial.get(name)
    n = family.n_coefficients
    rng = np.random.default_rng(11)
    params = family.initial_parameters(rng, 2, 3, CUTOFF)
    params["coefficients"] = rng.normal(size=params["coefficients"].shape)
    for s, b in ((0, 0), (1, 2)):
        kb, scale = body_constants(family, params, s, b)
        assert scale == 1.0
        c, w = params["centres"][s, b], params["widths"][s, b]
        ref = scipy_spline(family, c, w, params["coefficients"][s, b])
        r = np.concatenate([rng.uniform(c - w, c + w, 40), np.linspace(c - w, c + w, 2 * n + 7)])
        got = np.array([family.value_deriv(x, kb) for x in r])
        assert np.allclose(got[:, 0], ref(r), rtol=0, atol=1e-13)
        assert np.allclose(got[:, 1], ref.derivative()(r), rtol=0, atol=1e-11)
        # zero outside the window, with the derivative
        for x in (c - w - 0.3, c - w - 1e-9, c + w + 1e-9, c + w + 0.3):
            assert family.value_deriv(x, kb) == (0.0, 0.0)


@pytest.mark.parametrize("name", ["spline", "spline-3"])
def test_spline_is_c2_at_window_ends(name):
    """f ~ d^3, f' ~ d^2, f'' ~ d at distance d inside either end (as the polynomial bump)."""
    family = radial.get(name)
    rng = np.random.default_rng(2)
    params = family.initial_parameters(rng, 1, 1, CUTOFF)
    params["coefficients"] = rng.uniform(0.5, 1.5, size=params["coefficients"].shape)
    kb, _ = body_constants(family, params, 0, 0)
    c, w = params["centres"][0, 0], params["widths"][0, 0]
    for edge, inward in ((c + w, -1.0), (c - w, 1.0)):
        scaled = []
        for d in (1e-2, 1e-3, 1e-4):
            r = edge + inward * d
            f, f_r = family.value_deriv(r, kb)
            hh = d / 10
            f_rr = (family.value_deriv(r + hh, kb)[1] - family.value_deriv(r - hh, kb)[1]) / (2 * hh)
            scaled.append((abs(f) / d ** 3, abs(f_r) / d ** 2, abs(f_rr) / d))
        scaled = np.array(scaled)
        assert np.all(scaled[-1] > 0)
        assert np.all(np.abs(scaled[-1] - scaled[-2]) <= 0.05 * scaled[-1]), scaled


def test_spline_starts_close_to_the_polynomial_bump():
    family = radial.get("spline")
    params = family.initial_parameters(np.random.default_rng(0), 1, 2, CUTOFF)
    kb, _ = body_constants(family, params, 0, 1)
    c, w = params["centres"][0, 1], params["widths"][0, 1]
    r = np.linspace(c - w, c + w, 101)
    bump = np.maximum(0.0, 1 - ((r - c) / w) ** 2) ** 3
    assert np.max(np.abs([family.value(x, kb) for x in r] - bump)) < 0.02


def test_spline_names():
    assert radial.get("spline").n_coefficients == 8
    assert radial.get("spline-8") is radial.get("spline")
    family = radial.get("spline-5")
    assert family.name == "spline-5" and family.n_coefficients == 5
    assert radial.get("spline-5") is family and "spline-5" in radial.names()
    assert len(family.gradient_names) == 2 + 5
    for bad in ("spline-0", "spline-65", "spline-x", "spline-05", "spline-"):
        with pytest.raises(ValueError, match="spline-N takes an integer N"):
            radial.get(bad)
    with pytest.raises(ValueError, match="'polynomial' has no variants"):
        radial.get("polynomial-3")


# ----------------------------------------------------------------------------- the seam
# The toy family of tests/toy_radial.py, registered there and edited into nothing else, and the
# spline family go through the same checks as the polynomial family: forces and stress against
# finite differences of the energy, every training gradient against finite differences of the
# loss, model files. "spline-5" is made on demand from its name.
SEAM_FAMILIES = ["toy-gaussian", "spline", "spline-5"]
SEAM_PARAMETERS = {"toy-gaussian": {"mu", "alpha"},
                   "spline": {"centres", "widths", "coefficients"},
                   "spline-5": {"centres", "widths", "coefficients"}}


def toy_model(seed=0, name="toy-gaussian", shared_radial=False, pair_radial=False):
    from lattenb import LatteModel
    m = LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks="2,-:2,i,i:1,ij,ij:1,ijk,ijk:1,i,j,ij",
                   hidden=(6, 4), activation="tanh", seed=seed, radial=name,
                   shared_radial=shared_radial, pair_radial=pair_radial)
    rng = np.random.default_rng(seed)
    m.set_parameters(g_std=rng.uniform(1.0, 3.0, m.params["g_std"].shape),
                     g_mean=rng.normal(size=m.params["g_mean"].shape) * 0.1, e0=rng.normal(size=2))
    if "coefficients" in m.params:      # spline: not the initial bump, which is symmetric
        shape = m.params["coefficients"].shape
        m.set_parameters(coefficients=m.params["coefficients"] + rng.normal(0, 0.3, shape))
    return m


@pytest.mark.parametrize("name", SEAM_FAMILIES)
def test_family_forces_and_stress_match_finite_differences(name):
    from test_model import finite_difference_errors
    from structures import random_atoms
    m = toy_model(name=name)
    assert m.radial == name and set(m.params) >= SEAM_PARAMETERS[name]
    rng = np.random.default_rng(7)
    atoms = random_atoms(rng, 8, [[5.0, 0, 0], [1.1, 4.7, 0], [0.4, 0.9, 5.2]], True)
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    errors = finite_difference_errors(m, atoms, out)
    print(f"\n{name}: relative errors against finite differences", errors)
    assert np.abs(out["forces"]).max() > 0
    assert max(errors.values()) < 1e-8, errors


@pytest.mark.parametrize("name", SEAM_FAMILIES)
def test_family_training_gradients_match_finite_differences(name):
    from test_training import fd_check, random_frame
    from lattenb.dataset import prepare_dataset
    from lattenb.loss import LossWeights
    rng = np.random.default_rng(0)
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 8, 5.0, stress=False),
              random_frame(rng, 3, 3.2)]
    m = toy_model(seed=2, name=name)
    worst = fd_check(m, prepare_dataset(frames, m), LossWeights(1.0, 2.0, 0.5, l2=1e-3), rng,
                     per_group=12)
    print(f"\n{name}: largest relative gradient errors", worst)
    assert SEAM_PARAMETERS[name] | {"sigma", "mlp", "e0"} <= set(worst)
    assert max(worst.values()) < 1e-6, worst


@pytest.mark.parametrize("name", SEAM_FAMILIES)
def test_family_fits_and_round_trips_through_a_model_file(tmp_path, name):
    import lattenb
    from lattenb.radial.polynomial import MIN_WIDTH
    from test_training import assert_round_trip, random_frame
    rng = np.random.default_rng(4)
    frames = [random_frame(rng, 4, 4.0) for _ in range(4)]
    start = toy_model(seed=3, name=name)
    fitted = lattenb.fit(frames, model=start, max_iter=3, log=None)
    if name == "toy-gaussian":
        assert np.all(fitted.params["alpha"] >= 0.1)      # the family's bounds held
    else:                                                 # the windows' bounds held, and moved
        c, w = fitted.params["centres"], fitted.params["widths"]
        assert np.all(w >= MIN_WIDTH) and np.all(c - w >= -1e-12) and np.all(c + w <= CUTOFF + 1e-12)
        assert not np.array_equal(fitted.params["coefficients"], start.params["coefficients"])
    loaded = assert_round_trip(fitted, tmp_path / "toy.npz", frames[0])
    assert loaded.radial == name


# ----------------------------------------------------------------------------- shared filters
# shared_radial=True: one set of radial functions for every central species (s-NNP's shared
# filters). Reference: the same model with one set per species, every set a copy of the shared one.
def unshared_copy(m):
    from lattenb import LatteModel
    u = LatteModel(list(m.species), cutoff=m.cutoff, blocks=m.blocks, hidden=m.hidden,
                   activation=m.activation, radial=m.radial)
    u.set_parameters(**{k: np.repeat(v, m.n_species, axis=0) if k in
                        m.radial_family.parameter_names() else v for k, v in m.params.items()})
    return u


@pytest.mark.parametrize("name", ["polynomial", "spline-5"])
def test_shared_radial_equals_copied_per_species_functions(name):
    from structures import random_atoms
    m = toy_model(seed=5, name=name, shared_radial=True)
    assert m.params["centres"].shape == (1, m.layout.n_bodies)
    u = unshared_copy(m)
    assert u.params["centres"].shape == (2, m.layout.n_bodies)
    atoms = random_atoms(np.random.default_rng(3), 9, [[5.0, 0, 0], [1.1, 4.7, 0], [0.4, 0.9, 5.2]],
                         True)
    a = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    b = u.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert len(set(atoms.numbers)) == 2 and abs(a["energy"]) > 0
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12)


def radial_rows_gradient_errors(m, rng, label):
    """Largest relative errors of every training gradient of m against finite differences of the
    loss, on two random frames (one without stress) drawn from rng."""
    from test_training import fd_check, random_frame
    from lattenb.dataset import prepare_dataset
    from lattenb.loss import LossWeights
    frames = [random_frame(rng, 5, 4.0), random_frame(rng, 8, 5.0, stress=False)]
    worst = fd_check(m, prepare_dataset(frames, m), LossWeights(1.0, 2.0, 0.5, l2=1e-3), rng,
                     per_group=12)
    print(f"\n{label}: largest relative gradient errors", worst)
    return worst


@pytest.mark.parametrize("name", ["polynomial", "spline-5"])
def test_shared_radial_training_gradients_match_finite_differences(name):
    worst = radial_rows_gradient_errors(toy_model(seed=4, name=name, shared_radial=True),
                                        np.random.default_rng(1), f"shared {name}")
    assert {"centres", "widths", "sigma", "mlp"} <= set(worst)
    assert max(worst.values()) < 1e-6, worst


def test_shared_radial_round_trips_and_old_files_stay_per_species(tmp_path):
    import json
    import lattenb
    m = toy_model(seed=6, name="spline-5", shared_radial=True)
    m.save(tmp_path / "shared.npz")
    loaded = lattenb.load(tmp_path / "shared.npz")
    assert loaded.shared_radial and "shared_radial=True" in repr(loaded)
    from lattenb.plots import radial_functions
    radial_functions(loaded, tmp_path / "shared.png")      # one set drawn for every species pair
    assert (tmp_path / "shared.png").stat().st_size > 1000
    for key, value in m.params.items():
        assert np.array_equal(loaded.params[key], value), key
    # a file written before the field existed: per-species radial functions, as then
    u = toy_model(seed=6, name="spline-5")
    header = u.file_header()
    del header["shared_radial"]
    from lattenb.io import write_model_file
    write_model_file(tmp_path / "old.npz", header, u.params)
    old = lattenb.load(tmp_path / "old.npz")
    assert not old.shared_radial and old.params["centres"].shape == (2, u.layout.n_bodies)
    assert json.loads(json.dumps(header))["radial"] == "spline-5"


def test_take_radial_and_fixed_transfer_fit():
    import lattenb
    from test_training import random_frame
    rng = np.random.default_rng(8)
    frames = [random_frame(rng, 4, 4.0) for _ in range(3)]
    source = toy_model(seed=7, name="spline-5", shared_radial=True)
    # a per-species target takes the one shared set for each species
    target = toy_model(seed=9, name="spline-5")
    target.take_radial(source)
    for key in ("centres", "widths", "coefficients"):
        assert np.array_equal(target.params[key], np.repeat(source.params[key], 2, axis=0))
    # a fit that starts from them and keeps them fixed ends with them unchanged, the rest trained
    fitted = lattenb.fit(frames, preset="fast", cutoff=CUTOFF, blocks=source.blocks,
                         hidden=(6, 4), radial="spline-5", shared_radial=True,
                         radial_from=source, train_radial=False, max_iter=3, log=None)
    for key in ("centres", "widths", "coefficients"):
        assert np.array_equal(fitted.params[key], source.params[key]), key
    assert not np.allclose(fitted.params["sigma"], source.params["sigma"])
    # filters that do not fit are a clear error
    with pytest.raises(ValueError, match="same radial family"):
        toy_model(name="polynomial").take_radial(source)
    with pytest.raises(ValueError, match="one set per species"):
        toy_model(name="spline-5", shared_radial=True).take_radial(target)
    with pytest.raises(ValueError, match="shared_radial must be"):
        lattenb.LatteModel(["Ni"], shared_radial="yes")


# ----------------------------------------------------------------------------- per species pair
# pair_radial=True: one set of radial functions per (central, neighbour) species pair, row s S + s'
# (MTP's and ACE's species-pair radial bases). References: finite differences, the per-central
# model whose rows it copies, and (test_descriptor) the einsum descriptor.
def randomised_pair_rows(m, seed):
    """Give every pair row its own window (and spline coefficients), so that a kernel reading the
    wrong row cannot pass."""
    rng = np.random.default_rng(seed)
    R, B = m.params["widths"].shape
    widths = rng.uniform(0.8, 1.6, size=(R, B))
    arrays = dict(widths=widths, centres=rng.uniform(widths, CUTOFF - widths))
    if "coefficients" in m.params:
        arrays["coefficients"] = m.params["coefficients"] + rng.normal(
            0, 0.3, m.params["coefficients"].shape)
    m.set_parameters(**arrays)
    return m


@pytest.mark.parametrize("name", ["polynomial", "spline-5"])
def test_pair_radial_forces_stress_and_training_gradients_match_finite_differences(name):
    from structures import random_atoms
    from test_model import finite_difference_errors
    m = randomised_pair_rows(toy_model(seed=5, name=name, pair_radial=True), 1)
    assert m.params["centres"].shape == (4, m.layout.n_bodies) and m.n_radial_species == 4
    atoms = random_atoms(np.random.default_rng(3), 9, [[5.0, 0, 0], [1.1, 4.7, 0],
                                                       [0.4, 0.9, 5.2]], True)
    assert len(set(atoms.numbers)) == 2
    out = m.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    errors = finite_difference_errors(m, atoms, out)
    print(f"\npair {name}: relative errors against finite differences", errors)
    assert np.abs(out["forces"]).max() > 0 and max(errors.values()) < 1e-8, errors
    worst = radial_rows_gradient_errors(m, np.random.default_rng(2), f"pair {name}")
    assert {"centres", "widths", "sigma", "mlp"} <= set(worst)
    assert max(worst.values()) < 1e-6, worst


def test_pair_radial_copied_from_central_rows_equals_the_central_model(tmp_path):
    """A pair-radial model that takes the radial functions of a per-central-species model (row
    (s, s') = the source's row s) is that model; it saves, loads and keeps its rows."""
    import lattenb
    from structures import random_atoms
    central = randomised_pair_rows(toy_model(seed=5, name="spline-5"), 2)
    pair = toy_model(seed=5, name="spline-5", pair_radial=True)
    pair.set_parameters(**{k: v for k, v in central.params.items()
                           if k not in central.radial_family.parameter_names()})
    pair.take_radial(central)
    for key in ("centres", "widths", "coefficients"):
        assert np.array_equal(pair.params[key], central.params[key][[0, 0, 1, 1]]), key
    atoms = random_atoms(np.random.default_rng(4), 9, [[5.0, 0, 0], [1.1, 4.7, 0],
                                                       [0.4, 0.9, 5.2]], True)
    a = pair.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    b = central.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert abs(b["energy"]) > 0
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12)
    # rows of its own give another model; files keep them, and the header says pair_radial
    randomised_pair_rows(pair, 3)
    pair.save(tmp_path / "pair.npz")
    loaded = lattenb.load(tmp_path / "pair.npz")
    assert loaded.pair_radial and "pair_radial=True" in repr(loaded)
    for key, value in pair.params.items():
        assert np.array_equal(loaded.params[key], value), key
    c = loaded.compute(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
    assert c["energy"] == pair.compute(atoms.positions, atoms.cell.array, atoms.pbc,
                                       atoms.numbers)["energy"]
    assert abs(c["energy"] - a["energy"]) > 1e-6
    from lattenb.plots import radial_functions
    radial_functions(loaded, tmp_path / "pair.png")
    assert (tmp_path / "pair.png").stat().st_size > 1000
    # a pair-radial source gives its rows to a pair-radial target with the species reordered
    swapped = lattenb.LatteModel(["Mo", "Ni"], cutoff=CUTOFF, blocks=pair.blocks,
                                 hidden=pair.hidden, radial="spline-5", pair_radial=True)
    swapped.take_radial(pair)
    assert np.array_equal(swapped.params["centres"], pair.params["centres"][[3, 2, 1, 0]])
    with pytest.raises(ValueError, match="exclude each other"):
        toy_model(name="spline-5", shared_radial=True, pair_radial=True)
    with pytest.raises(ValueError, match="pair_radial must be"):
        lattenb.LatteModel(["Ni"], pair_radial="yes")


def test_cli_fit_with_shared_and_transferred_radial_functions(tmp_path, capsys):
    import lattenb
    from ase.io import write
    from lattenb.cli import main
    from test_training import random_frame
    rng = np.random.default_rng(10)
    write(tmp_path / "a.xyz", [random_frame(rng, 4, 4.0) for _ in range(6)])
    common = ["--radial", "spline-5", "--blocks", "2,-:2,i,i", "--hidden", "4", "--cutoff", "3.8",
              "--max-iter", "2"]
    assert main(["fit", str(tmp_path / "a.xyz"), "-o", str(tmp_path / "src.npz"),
                 "--shared-radial"] + common) == 0
    src = lattenb.load(tmp_path / "src.npz")
    assert src.shared_radial
    assert main(["fit", str(tmp_path / "a.xyz"), "-o", str(tmp_path / "dst.npz"),
                 "--radial-from", str(tmp_path / "src.npz"), "--freeze-radial"] + common) == 0
    dst = lattenb.load(tmp_path / "dst.npz")
    assert not dst.shared_radial
    assert np.array_equal(dst.params["coefficients"],
                          np.repeat(src.params["coefficients"], dst.n_species, axis=0))
    # without --radial the source's family is taken; another family is a clear error
    assert main(["fit", str(tmp_path / "a.xyz"), "-o", str(tmp_path / "same.npz"),
                 "--radial-from", str(tmp_path / "src.npz")] + common[2:]) == 0
    assert lattenb.load(tmp_path / "same.npz").radial == "spline-5"
    with pytest.raises(SystemExit, match="same radial family"):
        main(["fit", str(tmp_path / "a.xyz"), "-o", str(tmp_path / "bad.npz"),
              "--radial-from", str(tmp_path / "src.npz"), "--radial", "polynomial"] + common[2:])


# ----------------------------------------------------------------------------- names and pictures
def test_radial_values_go_through_the_family_functions():
    """`radial.values` (the kernels' generic dispatch) against the family's own functions."""
    for name in ("polynomial", "spline-5", "toy-gaussian"):
        family = radial.get(name)
        params = family_parameters(family, np.random.default_rng(1))
        r = np.linspace(0.0, CUTOFF, 37)
        f = radial.values(name, params, CUTOFF, r)
        assert f.shape == (2, 3, 37) and np.abs(f).max() > 0
        for s, b in ((0, 1), (1, 2)):
            kb, scale = body_constants(family, params, s, b)
            # to rounding: LLVM may vectorise the loop of `values` (FASTMATH reassociates)
            assert np.allclose(f[s, b], [scale * family.value(x, kb) for x in r],
                               rtol=1e-13, atol=1e-15)


def test_cli_accepts_spline_names():
    from lattenb import cli
    parser = cli.build_parser()
    for name in ("polynomial", "spline", "spline-12"):
        args = parser.parse_args(["fit", "train.xyz", "-o", "m.npz", "--radial", name])
        assert args.radial == name
    assert parser.parse_args(["fit", "t.xyz", "-o", "m.npz", "--radial", "spline-8"]).radial == "spline"
    for bad in ("spline-0", "nope"):
        with pytest.raises(SystemExit):
            parser.parse_args(["fit", "train.xyz", "-o", "m.npz", "--radial", bad])


def small_model(name):
    from lattenb import LatteModel
    return LatteModel(["Ni", "Mo"], cutoff=CUTOFF, blocks="2,-:2,i,i:1,i,j,ij", hidden=(4,),
                      seed=1, radial=name)


@pytest.mark.parametrize("name", ["polynomial", "spline"])
def test_cli_plot_radial_writes_a_png(tmp_path, name, capsys):
    from lattenb import cli
    path, png = tmp_path / "m.npz", tmp_path / "radial.png"
    small_model(name).save(path)
    assert cli.main(["plot-radial", str(path), "-o", str(png), "--points", "50"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    assert "wrote" in capsys.readouterr().err


def test_cli_plot_radial_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from lattenb import cli
    path = tmp_path / "m.npz"
    small_model("polynomial").save(path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib fails
    with pytest.raises(SystemExit, match=r"matplotlib: pip install 'lattenb\[plot\]'"):
        cli.main(["plot-radial", str(path), "-o", str(tmp_path / "r.png")])
    assert not (tmp_path / "r.png").exists()
