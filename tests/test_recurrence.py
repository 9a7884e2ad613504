"""The linear-recurrence engine against a float64 NumPy loop, for every strategy."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

import recurrax

from .helpers import (
    LENGTHS,
    random_system,
    reference_recurrence,
    relative_error,
    STATE_SHAPES,
    STRATEGIES,
    STRATEGY_IDS,
    to_jax,
)


# float64: a few ulps times the length; float32: the same for eps = 6e-8 and L <= 300.
TOL = {np.float64: 1e-10, np.float32: 1e-4}


@pytest.mark.parametrize("method", STRATEGIES, ids=STRATEGY_IDS)
@given(
    length=LENGTHS,
    state=STATE_SHAPES,
    complex_=st.booleans(),
    invariant=st.booleans(),
    reverse=st.booleans(),
    with_h0=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_against_float64_loop(
    method, length, state, complex_, invariant, reverse, with_h0, dtype, seed
):
    rng = np.random.default_rng(seed)
    a, b, h0 = random_system(
        rng, length, state, complex_=complex_, invariant=invariant, dtype=dtype
    )
    if not with_h0:
        h0 = None
    out = recurrax.linear_recurrence(*to_jax(a, b, h0), reverse=reverse, method=method)
    assert out.shape == b.shape
    assert out.dtype == b.dtype
    ref = reference_recurrence(a, b, h0, reverse=reverse)
    assert relative_error(out, ref) < TOL[dtype]


@pytest.mark.parametrize("method", STRATEGIES, ids=STRATEGY_IDS)
@given(
    length=LENGTHS,
    state=STATE_SHAPES,
    invariant=st.booleans(),
    reverse=st.booleans(),
    with_h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_log_space_against_float64_loop(method, length, state, invariant, reverse, with_h0, seed):
    rng = np.random.default_rng(seed)
    a, b, h0 = random_system(rng, length, state, complex_=False, invariant=invariant)
    a, b, h0 = np.abs(a), np.abs(b) + 1e-3, np.abs(h0) + 1e-3
    log_h0 = np.log(h0) if with_h0 else None
    out = recurrax.log_linear_recurrence(
        *to_jax(np.log(a), np.log(b), log_h0), reverse=reverse, method=method
    )
    ref = reference_recurrence(a, b, h0 if with_h0 else None, reverse=reverse)
    assert out.shape == b.shape
    assert np.max(np.abs(np.asarray(out) - np.log(ref))) < 1e-10
    # And the same numbers as the linear engine.
    lin = recurrax.linear_recurrence(*to_jax(a, b, h0 if with_h0 else None), reverse=reverse)
    assert relative_error(jnp.exp(out), lin) < 1e-10


@pytest.mark.parametrize("method", STRATEGIES, ids=STRATEGY_IDS)
@pytest.mark.parametrize("invariant", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("split", [1, 5, 16])
def test_split_in_two_equals_one_call(method, invariant, reverse, split, rng):
    a, b, h0 = random_system(rng, 17, (3,), complex_=True, invariant=invariant)
    a, b, h0 = to_jax(a, b, h0)
    whole = recurrax.linear_recurrence(a, b, h0, reverse=reverse, method=method)

    def part(sl, start):
        return recurrax.linear_recurrence(
            a if invariant else a[sl], b[sl], start, reverse=reverse, method=method
        )

    first, second = slice(None, split), slice(split, None)
    if reverse:  # run the end first and carry its last state (at index 0) backwards
        tail = part(second, h0)
        head = part(first, tail[0])
    else:
        head = part(first, h0)
        tail = part(second, head[-1])
    assert relative_error(jnp.concatenate([head, tail]), whole) < 1e-12


@pytest.mark.parametrize("method", STRATEGIES, ids=STRATEGY_IDS)
@pytest.mark.parametrize("invariant", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("complex_", [False, True])
def test_gradients_against_finite_differences(method, invariant, reverse, complex_, rng):
    a, b, h0 = to_jax(*random_system(rng, 6, (2,), complex_=complex_, invariant=invariant))

    @jax.jit
    def f(a, b, h0):
        return recurrax.linear_recurrence(a, b, h0, reverse=reverse, method=method)

    # Central differences with eps=1e-6 in float64: truncation ~ eps^2 and rounding
    # ~ 1e-16/eps, both far below check_grads' 1e-5 tolerance. Second derivatives on the
    # complex systems (the real ones run the same code, and order 2 costs several times
    # the compilation of order 1).
    check_grads(f, (a, b, h0), order=2 if complex_ else 1, modes=("fwd", "rev"), eps=1e-6)


@pytest.mark.parametrize("method", STRATEGIES, ids=STRATEGY_IDS)
@pytest.mark.parametrize("invariant", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_log_gradients_against_finite_differences(method, invariant, reverse, rng):
    a, b, h0 = random_system(rng, 6, (2,), complex_=False, invariant=invariant)
    args = to_jax(np.log(np.abs(a)), np.log(np.abs(b)), np.log(np.abs(h0)))

    @jax.jit
    def f(log_a, log_b, log_h0):
        return recurrax.log_linear_recurrence(log_a, log_b, log_h0, reverse=reverse, method=method)

    check_grads(f, args, order=1, modes=("fwd", "rev"), eps=1e-6)


@pytest.mark.parametrize("method", STRATEGIES, ids=STRATEGY_IDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_log_space_zero_state_and_saturated_gates(method, reverse):
    # minGRU-style gates pushed to saturation both ways, h0 = 0 (log h0 = -inf).
    k = jnp.array([[-80.0, 0.0, 80.0], [80.0, -80.0, 3.0], [-80.0, 80.0, -3.0]] * 3)
    log_a = -jax.nn.softplus(k)
    log_b = -jax.nn.softplus(-k) + jnp.log(0.5)
    log_h0 = jnp.full((3,), -jnp.inf)

    def loss(log_a, log_b, log_h0):
        out = recurrax.log_linear_recurrence(log_a, log_b, log_h0, reverse=reverse, method=method)
        return jnp.sum(jnp.exp(out)), out

    (value, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        log_a, log_b, log_h0
    )
    assert np.isfinite(np.asarray(out)).all()
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
    # No path leads back to h0 = 0.
    assert np.all(np.asarray(grads[2]) == 0.0)
    ref = reference_recurrence(np.exp(log_a), np.exp(log_b), None, reverse=reverse)
    assert relative_error(jnp.exp(out), ref) < 1e-12
    # Forward mode too.
    _, tangent = jax.jvp(lambda la: loss(la, log_b, log_h0)[0], (log_a,), (jnp.ones_like(log_a),))
    assert np.isfinite(float(tangent))


def test_log_space_all_zero_inputs_stay_zero():
    log_b = jnp.full((5, 2), -jnp.inf)
    log_a = jnp.log(jnp.full((2,), 0.5))
    out, vjp = jax.vjp(lambda la, lb: recurrax.log_linear_recurrence(la, lb), log_a, log_b)
    assert np.all(np.isneginf(np.asarray(out)))
    grads = vjp(jnp.ones_like(out))
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("method", STRATEGIES, ids=STRATEGY_IDS)
def test_transformations_compose(method, rng):
    a, b, h0 = to_jax(*random_system(rng, 9, (3,), complex_=False, invariant=False))
    batch_b = jnp.stack([b, 2 * b, -b])

    def loss(a, b, h0):
        return jnp.sum(recurrax.linear_recurrence(a, b, h0, method=method) ** 2)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    vmap_of_grad = jax.vmap(grad, in_axes=(None, 0, None))(a, batch_b, h0)
    grad_of_vmap = jax.grad(
        lambda a, bb, h0: jnp.sum(jax.vmap(loss, in_axes=(None, 0, None))(a, bb, h0)),
        argnums=(0, 1, 2),
    )(a, batch_b, h0)
    assert np.allclose(np.sum(np.asarray(vmap_of_grad[0]), 0), grad_of_vmap[0])
    assert np.allclose(vmap_of_grad[1], grad_of_vmap[1])
    for i in range(3):
        single = grad(a, batch_b[i], h0)
        assert np.allclose(vmap_of_grad[1][i], single[1])

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def jac(a, b, h0):
        return jax.jacfwd(lambda b: recurrax.linear_recurrence(a, b, h0, method=method))(
            b
        ), jax.jacrev(lambda b: recurrax.linear_recurrence(a, b, h0, method=method))(b)

    fwd, rev = jac(a, b, h0)
    jac(a, 2 * b, h0)  # no retrace
    assert np.allclose(fwd, rev)
    # dh_t/db_s = prod_{s<k<=t} a_k for s <= t, else 0.
    a_np = np.asarray(a)
    for t, s in [(0, 0), (4, 2), (8, 0), (2, 5)]:
        expected = np.prod(a_np[s + 1 : t + 1], axis=0) if s <= t else np.zeros(3)
        assert np.allclose(fwd[t, :, s, :], np.diag(expected))


def test_real_coefficient_drives_complex_state(rng):
    a = jnp.asarray(rng.uniform(0, 1, (4,)))
    b = jnp.asarray(rng.normal(size=(5, 4)) + 1j * rng.normal(size=(5, 4)))
    out = recurrax.linear_recurrence(a, b)
    assert out.dtype == jnp.complex128
    assert relative_error(out, reference_recurrence(a, b)) < 1e-12


def test_half_precision_accumulates_in_float32(rng):
    a = jnp.asarray(rng.uniform(0.9, 0.99, (8,)), jnp.bfloat16)
    b = jnp.asarray(rng.normal(size=(512, 8)), jnp.bfloat16)
    out = recurrax.linear_recurrence(a, b)
    assert out.dtype == jnp.float32
    ref = reference_recurrence(np.asarray(a, np.float64), np.asarray(b, np.float64))
    # Inputs are exactly representable; only float32 rounding remains.
    assert relative_error(out, ref) < 1e-5


def test_broadcast_coefficients(rng):
    b = jnp.asarray(rng.normal(size=(6, 2, 3)))
    scalar = recurrax.linear_recurrence(jnp.asarray(0.5), b)
    per_col = recurrax.linear_recurrence(jnp.full((3,), 0.5), b)
    per_step = recurrax.linear_recurrence(jnp.full((6, 1, 1), 0.5), b)
    assert np.allclose(scalar, per_col) and np.allclose(scalar, per_step)
    assert relative_error(scalar, reference_recurrence(np.full((2, 3), 0.5), b)) < 1e-12


def test_empty_sequence():
    b = jnp.zeros((0, 3))
    assert recurrax.linear_recurrence(jnp.ones(3), b).shape == (0, 3)
    assert recurrax.log_linear_recurrence(jnp.zeros(3), b).shape == (0, 3)


def test_eager_calls_run_one_cached_program():
    """Outside `jax.jit` the solve is one compiled program per shape and strategy, reused
    by later calls with new values (not the strategy's operations dispatched one by one)."""
    from recurrax._recurrence import _compiled_solve

    lam, b = jnp.array([0.9, 0.5]), jnp.ones((7, 2))
    recurrax.linear_recurrence(lam, b, method=recurrax.ChunkedScan(3))
    size = _compiled_solve._cache_size()
    h = recurrax.linear_recurrence(0.5 * lam, 2 * b, method=recurrax.ChunkedScan(3))
    assert _compiled_solve._cache_size() == size
    np.testing.assert_allclose(h, reference_recurrence(np.asarray(0.5 * lam), 2 * np.ones((7, 2))),
                               rtol=1e-6)  # fmt: skip
    recurrax.linear_recurrence(lam, b, method=recurrax.ChunkedScan(2))  # another strategy
    assert _compiled_solve._cache_size() == size + 1


def test_auto_scan_rule():
    auto = recurrax.AutoScan()
    if jax.default_backend() == "cpu":
        assert isinstance(auto.choose(1), recurrax.SequentialScan)
        assert isinstance(auto.choose(256), recurrax.SequentialScan)
        assert isinstance(auto.choose(257), recurrax.ChunkedScan)
    else:  # pragma: no cover - accelerators
        assert isinstance(auto.choose(4096), recurrax.AssociativeScan)


def test_default_chunk_size():
    assert recurrax.default_chunk_size(1) == 1
    assert recurrax.default_chunk_size(16) == 8
    assert recurrax.default_chunk_size(4096) == 64
    assert recurrax.default_chunk_size(2**20) == 512
