"""The RG-LRU against a float64 loop of Griffin's equations, streaming, the bounded
square-root derivative at a_t -> 1, the initial distribution, gradients, and the Hawk block."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads

import recurrax
from recurrax._rglru import gate_matrix

from .helpers import relative_error, tree_allclose


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _gate(gate, x):
    weight = np.asarray(gate_matrix(gate), np.float64)
    return x @ weight.T + np.asarray(gate.bias, np.float64)


def rglru_reference(layer, x, h0=None):
    """Griffin's equations as a float64 loop over the layer's own parameters, written in the
    plain form: a_t = sigmoid(Λ)^(c r_t), h_t = a_t h + sqrt(1 - a_t^2) (i_t x_t)."""
    x = np.asarray(x, np.float64)
    h = np.zeros(layer.size) if h0 is None else np.array(h0, np.float64)
    a = _sigmoid(np.asarray(layer.a_param, np.float64))
    r = _sigmoid(_gate(layer.recurrence_gate, x))
    i = _sigmoid(_gate(layer.input_gate, x))
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        a_t = a ** (layer.c * r[t])
        h = a_t * h + np.sqrt(1 - a_t**2) * (i[t] * x[t])
        out[t] = h
    return out


@pytest.mark.parametrize(
    "length, heads, c, carried",
    [(1, 1, 8.0, False), (64, 1, 8.0, True), (33, 4, 1.0, False), (7, 2, 8.0, True)],
)
@settings(max_examples=2)
@given(seed=st.integers(0, 2**16))
def test_against_griffin_equations(length, heads, c, carried, seed):
    key, xkey, hkey = jax.random.split(jax.random.key(seed), 3)
    layer = recurrax.RGLRU(8, c=c, num_heads=heads, key=key)
    x = 3 * jax.random.normal(xkey, (length, 8))
    if carried:
        h0 = jax.random.normal(hkey, (8,))
        h_last, y = layer.scan(h0, x)
        ref = rglru_reference(layer, x, h0)
        assert relative_error(h_last, ref[-1]) < 1e-12
    else:
        y, ref = layer(x), rglru_reference(layer, x)
    assert relative_error(y, ref) < 1e-12


def test_block_diagonal_gates_are_block_diagonal(getkey):
    layer = recurrax.RGLRU(6, num_heads=3, key=getkey())
    for gate in (layer.input_gate, layer.recurrence_gate):
        dense = np.asarray(gate_matrix(gate))
        mask = np.kron(np.eye(3), np.ones((2, 2))).astype(bool)
        assert np.all(dense[~mask] == 0) and np.all(dense[mask] != 0)
    # Parameters: 2 s^2 / n_h + 3 s.
    count = sum(p.size for p in jax.tree.leaves(eqx.filter(layer, eqx.is_inexact_array)))
    assert count == 2 * 36 // 3 + 3 * 6


# The engine is tested on every strategy elsewhere; here, one of each kind.
@pytest.mark.parametrize(
    "method",
    [recurrax.SequentialScan(), recurrax.AssociativeScan(), recurrax.ChunkedScan(chunk_size=4)],
    ids=repr,
)
def test_every_strategy(method, getkey):
    layer = recurrax.RGLRU(4, method=method, key=getkey())
    x = jax.random.normal(getkey(), (37, 4))
    assert relative_error(layer(x), rglru_reference(layer, x)) < 1e-12


def test_step_scan_call_and_split_agree(getkey):
    layer = recurrax.RGLRU(5, num_heads=5, key=getkey())
    x = jax.random.normal(getkey(), (40, 5))
    h0 = layer.init_state()
    h_par, y_par = layer.scan(h0, x)
    h_seq, y_seq = jax.lax.scan(lambda h, x_t: layer.step(h, x_t), h0, x)
    assert tree_allclose((h_par, y_par), (h_seq, y_seq), rtol=1e-12, atol=1e-14)
    assert tree_allclose(layer(x), y_par, rtol=1e-12, atol=1e-14)
    for split in (1, 17):
        h_mid, y1 = layer.scan(h0, x[:split])
        h_end, y2 = layer.scan(h_mid, x[split:])
        assert tree_allclose((h_end, jnp.concatenate([y1, y2])), (h_par, y_par), rtol=1e-12)


def test_initial_ring_is_area_uniform():
    """a = sigmoid(Λ) area-uniform on [0.9, 0.999]: a^2 ~ U[0.81, 0.998] (KS test, a fixed
    key: deterministic)."""
    layer = recurrax.RGLRU(16384, key=jax.random.key(3))
    a = _sigmoid(np.asarray(layer.a_param, np.float64))
    assert 0.9 <= a.min() and a.max() <= 0.999
    result = scipy.stats.kstest(a**2, scipy.stats.uniform(0.81, 0.998 - 0.81).cdf)
    assert result.pvalue > 1e-3
    # ... while a itself is not uniform on [0.9, 0.999]: the test tells the two apart.
    assert scipy.stats.kstest(a, scipy.stats.uniform(0.9, 0.099).cdf).pvalue < 1e-3


def test_sqrt_bounded_derivative():
    x = jnp.asarray([0.0, 1e-12, 2.5e-7, 1e-3, 0.5, 1.0])
    value = recurrax.sqrt_bounded_derivative(x)
    assert np.array_equal(value, jnp.sqrt(x))
    slope = jax.vmap(jax.grad(recurrax.sqrt_bounded_derivative))(x)
    expected = np.minimum(1 / (2 * np.sqrt(np.asarray(x))), 1000.0)
    np.testing.assert_allclose(slope, expected, rtol=1e-12)


def _saturated(dtype):
    """A layer whose a_t rounds to 1 exactly: softplus(-Λ) underflows to 0 in float32."""
    layer = recurrax.RGLRU(4, dtype=dtype, key=jax.random.key(0))
    return eqx.tree_at(lambda m: m.a_param, layer, jnp.full((4,), 200.0, dtype))


def _naive_loss(layer, x):
    """The same layer with an unbounded square root (what the safeguard protects from)."""
    r, i = layer.gates(x)
    log_a = -layer.c * r * jax.nn.softplus(-layer.a_param.astype(jnp.float32))[None]
    b = jnp.sqrt(-jnp.expm1(2 * log_a)) * i * x.astype(jnp.float32)
    return jnp.sum(recurrax.linear_recurrence(jnp.exp(log_a), b, layer.init_state()))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_gradients_stay_finite_when_a_rounds_to_one(dtype):
    layer = _saturated(dtype)
    x = jax.random.normal(jax.random.key(1), (16, 4)).astype(dtype)
    assert np.all(np.asarray(layer.log_transition(x)) == 0)  # a_t == 1 exactly
    loss = lambda m: jnp.sum(m(x).astype(jnp.float32))  # noqa: E731
    grads = eqx.filter_grad(loss)(layer)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in leaves)
    # Without the bound the same gradients are not finite: the check can fail.
    naive = jax.tree.leaves(eqx.filter_grad(_naive_loss)(layer, x))
    assert not all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in naive)


def test_gradients_match_finite_differences(getkey):
    layer = recurrax.RGLRU(3, num_heads=3, c=2.0, key=getkey())
    x = jax.random.normal(getkey(), (5, 3))
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def loss(p, x):  # check_grads perturbs with NumPy arrays
        p, x = jax.tree.map(jnp.asarray, (p, x))
        return jnp.sum(jnp.sin(eqx.combine(p, static)(x)))

    check_grads(jax.jit(loss), (params, x), order=1, modes=["rev"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=0), "size"),
        (dict(size=6, num_heads=4), "num_heads"),
        (dict(size=4, c=0.0), "`c`"),
        (dict(size=4, a_min=0.5, a_max=1.0), "a_max"),
    ],
)
def test_bad_arguments(kwargs, match):
    size = kwargs.pop("size")
    with pytest.raises(ValueError, match=match):
        recurrax.RGLRU(size, key=jax.random.key(0), **kwargs)


def test_hawk_block_streaming_and_structure(getkey):
    block = recurrax.HawkBlock(6, recurrax.RGLRU(8, num_heads=2, key=getkey()), key=getkey())
    x = jax.random.normal(getkey(), (11, 6))
    y, _ = block(x)
    h, y1, _ = block.scan(block.init_state(), x[:4])
    h, y2, _ = block.scan(h, x[4:])
    assert relative_error(jnp.concatenate([y1, y2]), y) < 1e-12
    # The recurrent branch by hand: GeLU(W_gate z) * RG-LRU(conv(W_in z)), then W_out.
    z, _ = block.norm(x, None)
    dense = lambda lin, v: v @ lin.weight.T + lin.bias[None]  # noqa: E731
    u = block.mixer(block.conv(dense(block.in_proj, z)))
    x1 = x + dense(block.out_proj, jax.nn.gelu(dense(block.gate_proj, z)) * u)
    z1, _ = block.mlp_norm(x1, None)
    mlp = jax.nn.gelu(dense(block.mlp_gate, z1)) * dense(block.mlp_value, z1)
    assert relative_error(y, x1 + dense(block.mlp_out, mlp)) < 1e-12
