"""A toy radial family, defined and registered here only, to show that a family is one module
plus its registration (the kernels, the model, training and model files are not edited):

    g(r; mu, alpha) = exp(-alpha (r - mu)^2) u^2,    u = max(0, 1 - r^2 / r_cut^2)

a Gaussian of centre mu and sharpness alpha times a window that is C^1 at the cutoff; its support
is the whole range [0, r_cut], unlike the polynomial bumps. Parameters per (central species, body):
"mu" (Å) and "alpha" (1/Å^2); scale 1 (f = g).
"""
import numpy as np
from numba import njit

from lattenb import radial

JIT = dict(cache=True, inline="always")


@njit(**JIT)
def load(constants, s, b):
    return constants[s, b, 0], constants[s, b, 1], constants[s, b, 2]


@njit(**JIT)
def _parts(r, kb):
    """(d = r - mu, e = exp(-alpha d^2), u = window, du/dr inside the window; every use of du
    is multiplied by u, so it needs no branch at the cutoff)."""
    d = r - kb[0]
    u = max(0.0, 1.0 - r * r * kb[2])
    du = -2.0 * r * kb[2]
    return d, np.exp(-kb[1] * d * d), u, du


@njit(**JIT)
def value(r, kb):
    d, e, u, du = _parts(r, kb)
    return e * u * u


@njit(**JIT)
def value_deriv(r, kb):
    d, e, u, du = _parts(r, kb)
    return e * u * u, e * u * (-2.0 * kb[1] * d * u + 2.0 * du)


@njit(**JIT)
def adjoint_init():
    return (0.0, 0.0, 0.0)


@njit(**JIT)
def adjoint_pair(acc, r, kb, p, q):
    """sum (g p + g' q), sum (g_mu p + g'_mu q), sum (g_alpha p + g'_alpha q)."""
    alpha = kb[1]
    d, e, u, du = _parts(r, kb)
    g = e * u * u
    gp = e * u * (-2.0 * alpha * d * u + 2.0 * du)
    g_mu = 2.0 * alpha * d * g
    gp_mu = 2.0 * alpha * d * gp + 2.0 * alpha * e * u * u
    g_alpha = -d * d * g
    gp_alpha = -d * d * gp - 2.0 * d * e * u * u
    return (acc[0] + g * p + gp * q, acc[1] + g_mu * p + gp_mu * q,
            acc[2] + g_alpha * p + gp_alpha * q)


@njit(**JIT)
def adjoint_finish(acc, kb, sc):
    return acc[0], (sc * acc[1], sc * acc[2])


class ToyGaussian(radial.RadialFamily, functions=globals()):
    name = "toy-gaussian"
    gradient_names = ("mu", "alpha")

    def parameter_shapes(self, n_species, n_bodies):
        return {"mu": (n_species, n_bodies), "alpha": (n_species, n_bodies)}

    def initial_parameters(self, rng, n_species, n_bodies, cutoff, width=None):
        return {"mu": rng.uniform(1.0, cutoff, size=(n_species, n_bodies)),
                "alpha": rng.uniform(0.5, 3.0, size=(n_species, n_bodies))}

    def check(self, params, cutoff):
        if np.any(params["alpha"] <= 0):
            raise ValueError("alpha must be positive")

    def support(self, params, cutoff):
        return np.zeros_like(params["mu"]), np.full_like(params["mu"], cutoff)

    def kernel_constants(self, params, cutoff):
        mu = params["mu"]
        rc2 = np.full_like(mu, 1.0 / cutoff ** 2)
        return np.ascontiguousarray(np.stack([mu, params["alpha"], rc2], axis=-1)), np.ones_like(mu)

    def free_bounds(self, name, cutoff):
        return {"mu": (None, None), "alpha": (0.1, 20.0)}[name]


TOY = ToyGaussian()
radial.register(TOY)
