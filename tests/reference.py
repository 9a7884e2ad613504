"""Independent float64 references written from the equations of the LRU and SSM papers.

Each takes a layer's own parameters (read as NumPy float64 arrays) and runs a plain loop; no
recurrax code is used except to read the fields.
"""

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def lru_reference(lru, x, h0=None, reverse=False):
    """The LRU of the paper as a loop: x_k = λ x_{k-1} + γ ⊙ (B u_k), y = Re(C x) + D ⊙ u.

    Returns (states, outputs); for a bidirectional layer the outputs combine a forward loop
    and a reverse loop read out by the two halves of C.
    """
    x = _f64(x)
    lam = np.exp(-np.exp(_f64(lru.nu_log)) + 1j * np.exp(_f64(lru.theta_log)))
    gamma = np.exp(_f64(lru.gamma_log))
    b = _f64(lru.B_re) + 1j * _f64(lru.B_im)
    c = _f64(lru.C_re) + 1j * _f64(lru.C_im)
    d = _f64(lru.D)
    n = lam.shape[0]

    def run(direction_reverse, start):
        h = np.zeros(n, np.complex128) if start is None else np.array(start, np.complex128)
        states = np.empty((x.shape[0], n), np.complex128)
        steps = range(x.shape[0] - 1, -1, -1) if direction_reverse else range(x.shape[0])
        for t in steps:
            h = lam * h + gamma * (b @ x[t])
            states[t] = h
        return states

    if lru.bidirectional:
        forward, backward = run(False, None), run(True, None)
        y = (forward @ c[:, :n].T + backward @ c[:, n:].T).real + d * x
        return np.concatenate([forward, backward], axis=-1), y
    states = run(reverse, h0)
    return states, (states @ c.T).real + d * x


def discretise_reference(method, lam, step):
    """The discretisation table, written out: returns (lam_bar, input factor s) with B̄ = s B."""
    z = step * lam
    if method == "ZeroOrderHold":
        lam_bar = np.exp(z)
        return lam_bar, (lam_bar - 1) / lam
    if method == "Bilinear":
        return (1 + z / 2) / (1 - z / 2), step / (1 - z / 2)
    if method == "ForwardEuler":
        return 1 + z, step * np.ones_like(z)
    if method == "BackwardEuler":
        return 1 / (1 - z), step / (1 - z)
    raise AssertionError(method)


def ssm_reference(ssm, x):
    """A DiagonalSSM as a loop over its own continuous parameters, discretised by the table."""
    x = _f64(x)
    lam = -np.exp(_f64(ssm.Lambda_re_log)) + 1j * _f64(ssm.Lambda_im)
    step = np.exp(_f64(ssm.log_step))
    b = _f64(ssm.B_re) + 1j * _f64(ssm.B_im)
    c = _f64(ssm.C_re) + 1j * _f64(ssm.C_im)
    d = _f64(ssm.D)
    factor = 2.0 if ssm.conjugate_symmetric else 1.0
    name = type(ssm.discretisation).__name__
    per_feature = ssm.delta == "per_feature"
    lam_bar, s = discretise_reference(name, lam, step[:, None] if per_feature else step)
    b_bar = s * b if per_feature else s[:, None] * b
    n = ssm.state_size

    def run(direction_reverse):
        h = np.zeros(lam.shape, np.complex128)
        states = np.empty((x.shape[0],) + lam.shape, np.complex128)
        steps = range(x.shape[0] - 1, -1, -1) if direction_reverse else range(x.shape[0])
        for t in steps:
            drive = b_bar * x[t][:, None] if per_feature else b_bar @ x[t]
            h = lam_bar * h + drive
            states[t] = h
        return states

    def read(states, cols):
        if per_feature:
            return np.sum(c[None, :, cols] * states, axis=-1).real
        return (states @ c[:, cols].T).real

    y = factor * read(run(False), slice(0, n)) + d * x
    if ssm.bidirectional:
        y = y + factor * read(run(True), slice(n, 2 * n))
    return y


def linear_system_loop(lam_bar, b_bar, c, d, u, h0=None):
    """x_k = λ̄_k x_{k-1} + B̄_k u_k, y = Re(C x) + D u with per-step (or constant) λ̄, B̄."""
    u = _f64(u)
    lam_bar = np.asarray(lam_bar, np.complex128)
    b_bar = np.asarray(b_bar, np.complex128)
    per_step = lam_bar.ndim == 2
    n = lam_bar.shape[-1]
    h = np.zeros(n, np.complex128) if h0 is None else np.array(h0, np.complex128)
    ys = np.empty(u.shape)
    for t in range(u.shape[0]):
        lam_t = lam_bar[t] if per_step else lam_bar
        b_t = b_bar[t] if b_bar.ndim == 3 else b_bar
        h = lam_t * h + b_t @ u[t]
        ys[t] = (np.asarray(c, np.complex128) @ h).real + _f64(d) * u[t]
    return h, ys
