"""The selective diagonal SSM against a float64 loop of the S6 equations with zero-order hold
(with the constant-step conversion to DiagonalSSM, streaming and gradients)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import recurrax

from .helpers import relative_error, tree_allclose


def _affine(linear, x):
    return x @ np.asarray(linear.weight, np.float64).T + np.asarray(linear.bias, np.float64)


def s6_reference(layer, u, h0=None):
    """Δ_t = softplus(W_Δ u_t + b_Δ), λ̄ = exp(Δ_t Λ), B̄ = (λ̄ - 1)/Λ B_t (zero-order hold),
    x_t = λ̄ x_{t-1} + B̄ u_t, y_t = Re(C_t x_t) (doubled if conjugate-symmetric) + D u_t,
    as a complex128 loop over the layer's own parameters."""
    u = np.asarray(u, np.float64)
    n = layer.state_size
    lam = -np.exp(np.asarray(layer.Lambda_re_log, np.float64)) + 1j * np.asarray(layer.Lambda_im)
    pre = _affine(layer.step_proj, u)
    step = np.log1p(np.exp(-np.abs(pre))) + np.maximum(pre, 0)  # softplus
    d = np.asarray(layer.D, np.float64)
    factor = 2 if layer.conjugate_symmetric else 1
    h = np.zeros(lam.shape, complex) if h0 is None else np.array(h0, complex)
    out = np.empty(u.shape)
    for t in range(u.shape[0]):
        if layer.selective_bc:
            bp, cp = _affine(layer.B_proj, u[t]), _affine(layer.C_proj, u[t])
            b = np.broadcast_to(bp[:n] + 1j * bp[n:], lam.shape)
            c = np.broadcast_to(cp[:n] + 1j * cp[n:], lam.shape)
        else:
            b = np.asarray(layer.B_re) + 1j * np.asarray(layer.B_im)
            c = np.asarray(layer.C_re) + 1j * np.asarray(layer.C_im)
        lam_bar = np.exp(step[t][:, None] * lam)
        h = lam_bar * h + (lam_bar - 1) / lam * b * u[t][:, None]
        out[t] = factor * np.sum((c * h).real, axis=-1) + d * u[t]
    return out, h


@pytest.mark.parametrize(
    "selective_bc, conjugate_symmetric, length, carried",
    [
        (False, True, 1, False),
        (False, False, 40, True),
        (True, True, 40, False),
        (True, False, 9, True),
    ],
)
def test_against_s6_equations(selective_bc, conjugate_symmetric, length, carried, getkey):
    layer = recurrax.SelectiveSSM(
        4, 3, selective_bc=selective_bc, conjugate_symmetric=conjugate_symmetric, key=getkey()
    )
    x = 2 * jax.random.normal(getkey(), (length, 4))
    if carried:
        h0 = jax.lax.complex(*jax.random.normal(getkey(), (2, 4, 3)))
        h_last, y = layer.scan(h0, x)
        ref, h_ref = s6_reference(layer, x, h0)
        assert relative_error(h_last, h_ref) < 1e-12
    else:
        y, (ref, _) = layer(x), s6_reference(layer, x)
    assert relative_error(y, ref) < 1e-12


def test_steps_depend_on_the_input(getkey):
    layer = recurrax.SelectiveSSM(4, 2, key=getkey())
    steps = layer.step_sizes(jax.random.normal(getkey(), (10, 4)))
    assert steps.shape == (10, 4) and np.all(steps > 0)
    assert np.ptp(np.asarray(steps), axis=0).min() > 0  # varies along time for every feature


@pytest.mark.parametrize(
    "discretisation, init",
    [
        (recurrax.ZeroOrderHold(), recurrax.S4DLin()),
        (recurrax.Bilinear(), recurrax.HiPPOLegS()),
        (recurrax.BackwardEuler(), recurrax.S4DInv()),
    ],
    ids=repr,
)
def test_constant_step_equals_the_time_invariant_layer(discretisation, init, getkey):
    ssm = recurrax.DiagonalSSM(
        3, 4, delta="per_feature", init=init, discretisation=discretisation, key=getkey()
    )
    selective = recurrax.SelectiveSSM.from_diagonal_ssm(ssm, key=getkey())
    x = jax.random.normal(getkey(), (50, 3))
    assert relative_error(selective(x), ssm(x)) < 1e-12
    np.testing.assert_allclose(
        selective.step_sizes(x), np.broadcast_to(ssm.step_sizes(), (50, 3)), rtol=1e-13
    )
    # A non-zero W_Δ makes it differ: the comparison can fail.
    moved = eqx.tree_at(lambda m: m.step_proj.weight, selective, jnp.eye(3))
    assert relative_error(moved(x), ssm(x)) > 1e-3


def test_from_diagonal_ssm_rejects_other_layouts(getkey):
    for ssm in (
        recurrax.DiagonalSSM(3, 4, key=getkey()),
        recurrax.DiagonalSSM(3, 4, delta="per_feature", bidirectional=True, key=getkey()),
    ):
        with pytest.raises(ValueError, match="per_feature"):
            recurrax.SelectiveSSM.from_diagonal_ssm(ssm, key=getkey())


@pytest.mark.parametrize("selective_bc", [False, True])
def test_step_scan_call_and_split_agree(selective_bc, getkey):
    layer = recurrax.SelectiveSSM(3, 2, selective_bc=selective_bc, key=getkey())
    x = jax.random.normal(getkey(), (30, 3))
    h0 = layer.init_state()
    h_par, y_par = layer.scan(h0, x)
    h_seq, y_seq = jax.lax.scan(lambda h, x_t: layer.step(h, x_t), h0, x)
    assert tree_allclose((h_par, y_par), (h_seq, y_seq), rtol=1e-12, atol=1e-14)
    assert tree_allclose(layer(x), y_par, rtol=1e-12, atol=1e-14)
    h_mid, y1 = layer.scan(h0, x[:11])
    h_end, y2 = layer.scan(h_mid, x[11:])
    assert tree_allclose((h_end, jnp.concatenate([y1, y2])), (h_par, y_par), rtol=1e-12)


def test_gradients_match_finite_differences(getkey):
    layer = recurrax.SelectiveSSM(2, 2, selective_bc=True, key=getkey())
    x = jax.random.normal(getkey(), (5, 2))
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def loss(p, x):  # check_grads perturbs with NumPy arrays
        p, x = jax.tree.map(jnp.asarray, (p, x))
        return jnp.sum(jnp.sin(eqx.combine(p, static)(x)))

    check_grads(jax.jit(loss), (params, x), order=1, modes=["rev"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_size=0), "input_size"),
        (dict(state_size=0), "state_size"),
        (dict(step_min=0.0), "step_min"),
        (dict(step_min=0.2, step_max=0.1), "step_max"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(input_size=3, state_size=2)
    args.update(kwargs)
    h, n = args.pop("input_size"), args.pop("state_size")
    with pytest.raises(ValueError, match=match):
        recurrax.SelectiveSSM(h, n, key=jax.random.key(0), **args)
