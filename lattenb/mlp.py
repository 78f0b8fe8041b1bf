"""Small per-species multilayer perceptron: descriptor (T,) -> atomic energy (eV).

Parameters of one species are one flat float64 vector; for layer l with n_in inputs and n_out
outputs it holds W_l (n_in, n_out, row-major) followed by b_l (n_out,). The last layer is linear,
hidden layers use one activation: Gaussian exp(-x^2) (default, as in PANNA), tanh or SiLU.
The per-atom functions are Numba kernels so the fused energy/force kernel can call them without
leaving compiled code; `layer_sizes` is (T, h1, ..., 1).
"""
import numpy as np
from numba import njit
from ._numba import FASTMATH

ACTIVATIONS = {"gaussian": 0, "tanh": 1, "silu": 2}


def activation_code(name):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def n_parameters(layer_sizes):
    return int(sum(a * b + b for a, b in zip(layer_sizes[:-1], layer_sizes[1:])))


def init_parameters(layer_sizes, rng):
    """Glorot-normal weights, zero biases; (n_parameters,) float64."""
    parts = []
    for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
        parts.append(rng.normal(0.0, np.sqrt(2.0 / (n_in + n_out)), size=n_in * n_out))
        parts.append(np.zeros(n_out))
    return np.concatenate(parts)


@njit(cache=True, error_model="numpy", fastmath=FASTMATH, inline="always")
def activate(z, act):
    """(phi, phi', phi'') at z."""
    if act == 0:
        e = np.exp(-z * z)
        return e, -2.0 * z * e, (4.0 * z * z - 2.0) * e
    elif act == 1:
        t = np.tanh(z)
        d = 1.0 - t * t
        return t, d, -2.0 * t * d
    else:
        s = 1.0 / (1.0 + np.exp(-z))
        ds = s * (1.0 - s)
        return z * s, s + z * ds, ds * (2.0 + z * (1.0 - 2.0 * s))


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def mlp_forward(params, sizes, act, x, a, z):
    """Forward pass for one atom.

    params (n_parameters,), sizes (L + 1,) int64, x (sizes[0],) input.
    a: scratch (sum(sizes),) receives the layer inputs (a[:sizes[0]] = x) and outputs;
    z: scratch (sum(sizes[1:]),) receives pre-activations. Returns the scalar output.
    Offsets and loop bounds are np.uint64 so that Numba drops its negative-index wraparound,
    which would otherwise keep LLVM from vectorising the loops over a layer's outputs."""
    n_layers = sizes.shape[0] - 1
    for k in range(sizes[0]):
        a[k] = x[k]
    p = np.uint64(0)
    a_in = np.uint64(0)
    z_off = np.uint64(0)
    for layer in range(n_layers):
        n_in = np.uint64(sizes[layer])
        n_out = np.uint64(sizes[layer + 1])
        a_out = a_in + n_in
        b_off = p + n_in * n_out
        for o in range(n_out):
            z[z_off + o] = params[b_off + o]
        for k in range(n_in):
            ak = a[a_in + k]
            row = p + k * n_out
            for o in range(n_out):
                z[z_off + o] += ak * params[row + o]
        last = layer == n_layers - 1
        for o in range(n_out):
            if last:
                a[a_out + o] = z[z_off + o]
            else:
                a[a_out + o] = activate(z[z_off + o], act)[0]
        p = b_off + n_out
        a_in = a_out
        z_off += n_out
    return a[a_in]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def mlp_input_gradient(params, sizes, act, a, z, buf_out, buf_in, xbar):
    """d(output)/d(input) for one atom after `mlp_forward`; written to xbar (sizes[0],).

    buf_out, buf_in: scratch of length max(sizes). np.uint64 offsets as in `mlp_forward`."""
    n_layers = sizes.shape[0] - 1
    # parameter offsets of each layer, walked backwards
    p_end = np.uint64(0)
    for layer in range(n_layers):
        p_end += np.uint64(sizes[layer] * sizes[layer + 1] + sizes[layer + 1])
    z_end = np.uint64(0)
    for layer in range(1, n_layers + 1):
        z_end += np.uint64(sizes[layer])
    buf_out[0] = 1.0
    for layer in range(n_layers - 1, -1, -1):
        n_in = np.uint64(sizes[layer])
        n_out = np.uint64(sizes[layer + 1])
        p = p_end - (n_in * n_out + n_out)
        z_off = z_end - n_out
        if layer != n_layers - 1:
            for o in range(n_out):
                buf_out[o] *= activate(z[z_off + o], act)[1]
        for k in range(n_in):
            row = p + k * n_out
            s = 0.0
            for o in range(n_out):
                s += params[row + o] * buf_out[o]
            buf_in[k] = s
        for k in range(n_in):
            buf_out[k] = buf_in[k]
        p_end = p
        z_end = z_off
    for k in range(sizes[0]):
        xbar[k] = buf_out[k]


def layer_arrays(params, sizes):
    """[(W (n_in, n_out), b (n_out,)), ...]: views of one species' flat parameters per layer."""
    layers, p = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers.append((params[p:p + n_in * n_out].reshape(n_in, n_out),
                       params[p + n_in * n_out:p + n_in * n_out + n_out]))
        p += n_in * n_out + n_out
    return layers


def mlp_reference(params, sizes, act_name, x, hidden_only=False):
    """Plain NumPy batched forward pass, (n, sizes[0]) -> (n,): an independent check of the
    kernels. hidden_only: stop after the last hidden layer, (n, sizes[-2]) (the features of
    `extrapolation.last_hidden_features`)."""
    funcs = {"gaussian": lambda z: np.exp(-z * z), "tanh": np.tanh, "silu": lambda z: z / (1 + np.exp(-z))}
    h = np.asarray(x, dtype=np.float64)
    n_layers = len(sizes) - 1
    for layer, (w, b) in enumerate(layer_arrays(np.asarray(params), sizes)):
        if hidden_only and layer == n_layers - 1:
            return h
        h = h @ w + b
        if layer != n_layers - 1:
            h = funcs[act_name](h)
    return h[:, 0]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def mlp_tangent_forward(params, sizes, act, x, xdot, a, adot, z, zdot):
    """Forward pass with a tangent (dual numbers): returns (y, ydot) with ydot = grad y . xdot.

    Scratch as in `mlp_forward`; adot and zdot mirror a and z for the tangent. Offsets and
    loop bounds are np.uint64 so that Numba drops its negative-index wraparound, which would
    otherwise keep LLVM from vectorising the loops over a layer's outputs."""
    n_layers = sizes.shape[0] - 1
    for k in range(sizes[0]):
        a[k] = x[k]
        adot[k] = xdot[k]
    p = np.uint64(0)
    a_in = np.uint64(0)
    z_off = np.uint64(0)
    for layer in range(n_layers):
        n_in = np.uint64(sizes[layer])
        n_out = np.uint64(sizes[layer + 1])
        a_out = a_in + n_in
        b_off = p + n_in * n_out
        for o in range(n_out):
            z[z_off + o] = params[b_off + o]
            zdot[z_off + o] = 0.0
        for k in range(n_in):
            ak = a[a_in + k]
            akd = adot[a_in + k]
            row = p + k * n_out
            for o in range(n_out):
                wko = params[row + o]
                z[z_off + o] += ak * wko
                zdot[z_off + o] += akd * wko
        last = layer == n_layers - 1
        for o in range(n_out):
            if last:
                a[a_out + o] = z[z_off + o]
                adot[a_out + o] = zdot[z_off + o]
            else:
                phi, dphi, _ = activate(z[z_off + o], act)
                a[a_out + o] = phi
                adot[a_out + o] = dphi * zdot[z_off + o]
        p = b_off + n_out
        a_in = a_out
        z_off += n_out
    return a[a_in], adot[a_in]


@njit(cache=True, error_model="numpy", fastmath=FASTMATH)
def mlp_tangent_reverse(params, sizes, act, a, adot, z, zdot, ybar, ydotbar, grad,
                        zbar, zdotbar, buf, bufdot, xbar, xdotbar):
    """Reverse pass of J = ybar * y + ydotbar * ydot after `mlp_tangent_forward`.

    Adds dJ/dparams to grad (n_parameters,) and writes dJ/dx to xbar and dJ/dxdot to xdotbar.
    For ydotbar = 1 the parameter gradient of ydot is the derivative of a Jacobian-vector
    product, and xbar carries the Hessian-vector product H xdot (design page, §5).
    zbar, zdotbar, buf, bufdot: scratch of length max(sizes). Offsets and loop bounds are
    np.uint64 as in `mlp_tangent_forward`.
    """
    n_layers = sizes.shape[0] - 1
    p_end = np.uint64(0)
    for layer in range(n_layers):
        p_end += np.uint64(sizes[layer] * sizes[layer + 1] + sizes[layer + 1])
    z_end = np.uint64(0)
    for layer in range(1, n_layers + 1):
        z_end += np.uint64(sizes[layer])
    a_end = z_end + np.uint64(sizes[0])  # a: sizes[0] inputs, then every layer's output
    buf[0] = ybar                        # adjoint of the layer output a_l
    bufdot[0] = ydotbar                  # adjoint of its tangent adot_l
    for layer in range(n_layers - 1, -1, -1):
        n_in = np.uint64(sizes[layer])
        n_out = np.uint64(sizes[layer + 1])
        p = p_end - (n_in * n_out + n_out)
        z_off = z_end - n_out
        a_in = a_end - n_out - n_in
        if layer == n_layers - 1:
            for o in range(n_out):
                zbar[o] = buf[o]
                zdotbar[o] = bufdot[o]
        else:
            for o in range(n_out):
                zo = z[z_off + o]
                _, d1, d2 = activate(zo, act)
                zbar[o] = buf[o] * d1 + bufdot[o] * d2 * zdot[z_off + o]
                zdotbar[o] = bufdot[o] * d1
        b_off = p + n_in * n_out
        for o in range(n_out):
            grad[b_off + o] += zbar[o]
        for k in range(n_in):
            ak = a[a_in + k]
            akd = adot[a_in + k]
            row = p + k * n_out
            s = 0.0
            sd = 0.0
            for o in range(n_out):
                w = params[row + o]
                grad[row + o] += ak * zbar[o] + akd * zdotbar[o]
                s += w * zbar[o]
                sd += w * zdotbar[o]
            buf[k] = s
            bufdot[k] = sd
        p_end = p
        z_end = z_off
        a_end = a_in + n_in
    for k in range(sizes[0]):
        xbar[k] = buf[k]
        xdotbar[k] = bufdot[k]
