"""What the abstract recurrent layer promises, for every time-invariant layer: step = scan =
call, carried state, reverse direction, convolution, bidirectional, jit/vmap/grad, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

import recurrax

from .helpers import tree_allclose


H, N = 3, 4


def _layers():
    """Every kind of time-invariant layer (float64 parameters under the test config)."""
    return {
        "LRU": lambda key: recurrax.LRU(H, N, r_min=0.5, r_max=0.99, key=key),
        "LRU-associative": lambda key: recurrax.LRU(
            H, N, method=recurrax.AssociativeScan(), key=key
        ),
        "LRU-sequential": lambda key: recurrax.LRU(H, N, method=recurrax.SequentialScan(), key=key),
        "SSM-zoh-hippo": lambda key: recurrax.DiagonalSSM(H, N, key=key),
        "SSM-bilinear-s4dlin-full": lambda key: recurrax.DiagonalSSM(
            H,
            N,
            init=recurrax.S4DLin(),
            discretisation=recurrax.Bilinear(),
            conjugate_symmetric=False,
            key=key,
        ),
        "SSM-per-feature-backward-euler": lambda key: recurrax.DiagonalSSM(
            H,
            N,
            init=recurrax.S4DInv(),
            discretisation=recurrax.BackwardEuler(),
            delta="per_feature",
            key=key,
        ),
        "SSM-per-feature-forward-euler": lambda key: recurrax.DiagonalSSM(
            H,
            N,
            init=recurrax.S4DLin(),
            discretisation=recurrax.ForwardEuler(),
            delta="per_feature",
            step_max=0.01,
            key=key,
        ),
        "DiscreteDiagonalSystem": lambda key: recurrax.LRU(H, N, key=key).discrete_system(),
    }


def _bidirectional():
    return {
        "LRU": lambda key: recurrax.LRU(H, N, bidirectional=True, key=key),
        "SSM-per-state": lambda key: recurrax.DiagonalSSM(H, N, bidirectional=True, key=key),
        "SSM-per-feature": lambda key: recurrax.DiagonalSSM(
            H, N, delta="per_feature", bidirectional=True, key=key
        ),
    }


LAYERS = _layers()
BIDIRECTIONAL = _bidirectional()
TOL = dict(rtol=1e-10, atol=1e-10)


def _inputs(length, seed=0, batch=()):
    return jax.random.normal(jax.random.key(seed), batch + (length, H))


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("length", [1, 2, 17, 300])
def test_step_scan_call_agree(name, length, getkey):
    layer = LAYERS[name](getkey())
    x = _inputs(length)
    h0 = layer.init_state()
    y = layer(x)
    assert y.shape == (length, H) and y.dtype == x.dtype
    h_last, y_scan = layer.scan(h0, x)
    h_ref, y_ref = jax.lax.scan(lambda h, x_t: layer.step(h, x_t), h0, x)
    assert tree_allclose(y, y_scan, **TOL)
    assert tree_allclose((h_last, y_scan), (h_ref, y_ref), **TOL)
    h_rev, y_rev = layer.scan(h0, x, reverse=True)
    h_rev_ref, y_rev_ref = jax.lax.scan(lambda h, x_t: layer.step(h, x_t), h0, x, reverse=True)
    assert tree_allclose((h_rev, y_rev), (h_rev_ref, y_rev_ref), **TOL)


@pytest.mark.parametrize("name", LAYERS)
# Split points from a small set, so that JAX compiles a handful of shapes, not one per example.
@given(split=st.sampled_from([0, 1, 13, 39, 40]), reverse=st.booleans(), seed=st.integers(0, 99))
def test_split_in_two(name, split, reverse, seed):
    layer = LAYERS[name](jax.random.key(seed))
    x = _inputs(40, seed)
    h0 = jax.random.normal(jax.random.key(seed + 1), layer.init_state().shape).astype(
        layer.init_state().dtype
    )
    h_one, y_one = layer.scan(h0, x, reverse=reverse)
    if reverse:
        h_mid, y_second = layer.scan(h0, x[split:], reverse=True)
        h_two, y_first = layer.scan(h_mid, x[:split], reverse=True)
    else:
        h_mid, y_first = layer.scan(h0, x[:split])
        h_two, y_second = layer.scan(h_mid, x[split:])
    assert tree_allclose(h_one, h_two, **TOL)
    assert tree_allclose(y_one, jnp.concatenate([y_first, y_second]), **TOL)


@pytest.mark.parametrize("name", list(LAYERS) + [f"bi-{n}" for n in BIDIRECTIONAL])
@pytest.mark.parametrize("length", [1, 5, 64])
def test_convolution_equals_scan(name, length, getkey):
    make = BIDIRECTIONAL[name[3:]] if name.startswith("bi-") else LAYERS[name]
    layer = make(getkey())
    x = _inputs(length)
    assert tree_allclose(layer.convolve(x), layer(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_bidirectional_is_two_explicit_scans(name, getkey):
    layer = BIDIRECTIONAL[name](getkey())
    x = _inputs(23)
    forward, backward = layer.discrete_system(), layer.discrete_system(reverse=True)
    h0 = forward.init_state()
    _, y_f = forward.scan(h0, x)
    _, y_b = backward.scan(h0, x, reverse=True)
    assert tree_allclose(layer(x), y_f + y_b, **TOL)
    for call in (
        lambda: layer.step(layer.init_state(), x[0]),
        lambda: layer.scan(layer.init_state(), x),
    ):
        with pytest.raises(ValueError, match="bidirectional"):
            call()


@pytest.mark.parametrize("name", LAYERS)
def test_vmap_carried_state_per_example(name, getkey):
    """A batch of carried states stays one per example (a public LRU broadcast them into
    batch² rows, a public mistake)."""
    layer = LAYERS[name](getkey())
    batch = 3
    x = _inputs(11, batch=(batch,))
    shape, dtype = layer.init_state().shape, layer.init_state().dtype
    h0 = jax.random.normal(getkey(), (batch,) + shape).astype(dtype)
    h_last, y = jax.vmap(layer.scan)(h0, x)
    assert h_last.shape == (batch,) + shape and y.shape == (batch, 11, H)
    for i in range(batch):
        h_i, y_i = layer.scan(h0[i], x[i])
        assert tree_allclose((h_last[i], y[i]), (h_i, y_i), **TOL)


@pytest.mark.parametrize("name", LAYERS)
def test_jit_does_not_retrace(name, getkey):
    layer = LAYERS[name](getkey())

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(model, x):
        return jax.vmap(model)(x)

    x = _inputs(9, batch=(2,))
    y1 = run(layer, x)
    y2 = run(eqx.tree_at(lambda m: m.D, layer, layer.D + 1), x)
    assert tree_allclose(y1, jax.vmap(layer)(x), **TOL)
    assert tree_allclose(y2 - y1, x, **TOL)


@pytest.mark.parametrize("name", list(LAYERS) + [f"bi-{n}" for n in BIDIRECTIONAL])
def test_gradients_against_finite_differences(name, getkey):
    make = BIDIRECTIONAL[name[3:]] if name.startswith("bi-") else LAYERS[name]
    layer = make(getkey())
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    x = _inputs(7)

    @jax.jit
    def loss(p, x):
        y = eqx.combine(p, static)(x)
        return jnp.sum(jnp.sin(y))

    check_grads(loss, (params, x), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)
    check_grads(
        lambda p: loss(p, x), (params,), order=1, modes=("fwd",), eps=1e-6, atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("name", LAYERS)
def test_shape_errors_name_the_argument(name, getkey):
    layer = LAYERS[name](getkey())
    h0 = layer.init_state()
    with pytest.raises(ValueError, match=r"`x` must have shape \(length, input_size\)"):
        layer(jnp.zeros((5, H + 1)))
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="x_t"):
        layer.step(h0, jnp.zeros((2, H)))
    with pytest.raises(ValueError, match="state `h`"):
        layer.scan(jnp.zeros((N + 1,), h0.dtype), jnp.zeros((5, H)))


@pytest.mark.parametrize("name", LAYERS)
def test_empty_sequence(name, getkey):
    layer = LAYERS[name](getkey())
    h0 = layer.init_state()
    h, y = layer.scan(h0, jnp.zeros((0, H)))
    assert y.shape == (0, H)
    assert tree_allclose(h, h0)


def test_float32_layers_match_float64(getkey):
    """float32 parameters and inputs: the recurrence stays within float32 rounding of the
    float64 result. Rounding errors of size eps = 6e-8 persist for about 1 / (1 - |λ|) = 1000
    steps at |λ| = 0.999, so the bound is 2e-4 relative."""

    def to32(tree):
        return jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, tree
        )

    for layer64 in (
        recurrax.LRU(H, N, r_min=0.9, r_max=0.999, key=getkey()),
        recurrax.DiagonalSSM(H, N, key=getkey()),
    ):
        x64 = jax.random.normal(getkey(), (1000, H))
        y64 = layer64(x64)
        y32 = to32(layer64)(to32(x64))
        assert y32.dtype == jnp.float32
        err = np.max(np.abs(np.asarray(y32, np.float64) - np.asarray(y64)))
        assert err / np.max(np.abs(np.asarray(y64))) < 2e-4
