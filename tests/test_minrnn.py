"""minGRU, minLSTM, GRU and LSTM against float64 loops of the papers' sequential equations
(Feng et al. 2024), in every mode; carried state; saturated gates; parameter counts."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from hypothesis import given, strategies as st

import recurrax

from .helpers import relative_error, STRATEGIES, STRATEGY_IDS, tree_allclose


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _g(x):
    return np.where(x >= 0, x + 0.5, _sigmoid(x))


def _affine(linear, x):
    return x @ np.asarray(linear.weight, np.float64).T + np.asarray(linear.bias, np.float64)


def min_reference(layer, x, h0=None):
    """The paper's sequential equations, as a float64 loop over the layer's own weights."""
    x = np.asarray(x, np.float64)
    h = np.zeros(layer.hidden_size) if h0 is None else np.array(h0, np.float64)
    candidate = _affine(layer.linear_h, x)
    if layer.candidate == "g":
        candidate = _g(candidate)
    if isinstance(layer, recurrax.MinGRU):
        z = _sigmoid(_affine(layer.linear_z, x))
        keep, take = 1 - z, z
    else:
        f = _sigmoid(_affine(layer.linear_f, x))
        i = _sigmoid(_affine(layer.linear_i, x))
        keep, take = f / (f + i), i / (f + i)
    out = np.empty((x.shape[0], layer.hidden_size))
    for t in range(x.shape[0]):
        h = keep[t] * h + take[t] * candidate[t]
        out[t] = h
    return out


KEY = jax.random.key(0)
MODES = [("g", False), ("g", True), ("linear", False)]
CLASSES = [recurrax.MinGRU, recurrax.MinLSTM]


@pytest.mark.parametrize("cls", CLASSES, ids=["MinGRU", "MinLSTM"])
@pytest.mark.parametrize("mode", MODES, ids=["g-linear-space", "g-log-space", "linear-candidate"])
@given(
    length=st.sampled_from([1, 5, 100]),
    hidden=st.sampled_from([1, 6]),
    h0_kind=st.sampled_from(["none", "zero", "positive"]),
    seed=st.integers(0, 2**16),
)
def test_against_sequential_equations(cls, mode, length, hidden, h0_kind, seed):
    candidate, log_space = mode
    key, xkey, hkey = jax.random.split(jax.random.key(seed), 3)
    layer = cls(3, hidden, candidate=candidate, log_space=log_space, key=key)
    x = 2 * jax.random.normal(xkey, (length, 3))
    if h0_kind == "none":
        y = layer(x)
        ref = min_reference(layer, x)
    else:
        h0 = jnp.zeros(hidden)
        if h0_kind == "positive":
            h0 = jax.random.uniform(hkey, (hidden,), minval=0.1, maxval=2.0)
        h_last, y = layer.scan(h0, x)
        ref = min_reference(layer, x, h0)
        assert relative_error(h_last, ref[-1]) < 1e-11
    assert relative_error(y, ref) < 1e-11


@pytest.mark.parametrize("cls", CLASSES, ids=["MinGRU", "MinLSTM"])
@pytest.mark.parametrize("method", STRATEGIES, ids=STRATEGY_IDS)
@pytest.mark.parametrize("log_space", [False, True])
def test_every_strategy_in_both_spaces(cls, method, log_space, getkey):
    layer = cls(3, 4, log_space=log_space, method=method, key=getkey())
    x = jax.random.normal(getkey(), (37, 3))
    assert relative_error(layer(x), min_reference(layer, x)) < 1e-11


@pytest.mark.parametrize("cls", CLASSES, ids=["MinGRU", "MinLSTM"])
@pytest.mark.parametrize("mode", MODES, ids=["g-linear-space", "g-log-space", "linear-candidate"])
def test_parallel_sequential_step_and_split_agree(cls, mode, getkey):
    candidate, log_space = mode
    layer = cls(3, 5, candidate=candidate, log_space=log_space, key=getkey())
    x = jax.random.normal(getkey(), (40, 3))
    h0 = layer.init_state()
    h_par, y_par = layer.scan(h0, x)
    h_seq, y_seq = jax.lax.scan(lambda h, x_t: layer.step(h, x_t), h0, x)
    assert tree_allclose((h_par, y_par), (h_seq, y_seq), rtol=1e-10, atol=1e-12)
    for split in (1, 17, 39):
        h_mid, y1 = layer.scan(h0, x[:split])
        h_end, y2 = layer.scan(h_mid, x[split:])
        assert tree_allclose((h_end, jnp.concatenate([y1, y2])), (h_par, y_par), rtol=1e-10)
    h_rev, y_rev = layer.scan(h0, x, reverse=True)
    h_rev_seq, y_rev_seq = jax.lax.scan(lambda h, x_t: layer.step(h, x_t), h0, x, reverse=True)
    assert tree_allclose((h_rev, y_rev), (h_rev_seq, y_rev_seq), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", CLASSES, ids=["MinGRU", "MinLSTM"])
def test_log_space_equals_linear_space(cls, getkey):
    key = getkey()
    linear = cls(4, 8, log_space=False, key=key)
    log = cls(4, 8, log_space=True, key=key)
    x = 3 * jax.random.normal(getkey(), (500, 4))
    assert tree_allclose(linear(x), log(x), rtol=1e-10, atol=1e-12)


def test_log_g_applied_to_the_carried_state_breaks_chunking(getkey):
    """The public minLSTM mistake (docs/concepts/known-mistakes.md): with a carried state,
    log h_prev must be log(h_prev), not log_g(h_prev). Ours splits exactly; the mistaken form
    does not."""
    layer = recurrax.MinLSTM(3, 6, log_space=True, key=getkey())
    x = jax.random.normal(getkey(), (64, 3))
    h_one = layer(x)
    h_mid, y1 = layer.scan(layer.init_state(), x[:32])
    _, y2 = layer.scan(h_mid, x[32:])
    assert tree_allclose(jnp.concatenate([y1, y2]), h_one, rtol=1e-10)
    log_a, log_b = layer.coefficients(x[32:])
    wrong = jnp.exp(recurrax.log_linear_recurrence(log_a, log_b, recurrax.log_g(h_mid)))
    assert float(jnp.max(jnp.abs(wrong - h_one[32:]))) > 1e-2


@pytest.mark.parametrize("cls", CLASSES, ids=["MinGRU", "MinLSTM"])
@pytest.mark.parametrize("log_space", [False, True])
def test_finite_gradients_with_saturated_gates_and_zero_state(cls, log_space, getkey):
    """Gate pre-activations of ±60 (σ saturates to 0 or 1 in float64) and h0 = 0 (log h0 =
    -inf in log space): values and gradients stay finite, with parameters and inputs."""
    layer = cls(3, 4, log_space=log_space, key=getkey())
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    x = 60 * jnp.sign(jax.random.normal(getkey(), (50, 3)))

    def loss(p, x):
        return jnp.sum(eqx.combine(p, static)(x) ** 2)

    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(params, x)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(grads))


def test_log_g_has_no_nan_gradient():
    x = jnp.asarray([-1e4, -30.0, -1e-9, 0.0, 1e-9, 30.0, 1e4])
    grads = jax.vmap(jax.grad(recurrax.log_g))(x)
    assert np.isfinite(np.asarray(grads)).all()
    np.testing.assert_allclose(np.exp(np.asarray(recurrax.log_g(x))), np.asarray(recurrax.g(x)))


@pytest.mark.parametrize("cls", CLASSES, ids=["MinGRU", "MinLSTM"])
def test_negative_state_in_log_space_is_an_error(cls, getkey):
    layer = cls(2, 3, log_space=True, key=getkey())
    x = jnp.ones((4, 2))
    h0 = jnp.asarray([0.5, -0.1, 0.0])
    with pytest.raises(ValueError, match="must be >= 0"):
        layer.scan(h0, x)
    with pytest.raises(Exception, match="must be >= 0"):
        jax.block_until_ready(eqx.filter_jit(lambda m, h: m.scan(h, x))(layer, h0))
    with pytest.raises(ValueError, match="must be >= 0"):
        layer.step(h0, x[0])
    with pytest.raises(Exception, match="must be >= 0"):
        jax.block_until_ready(eqx.filter_jit(lambda m, h: m.step(h, x[0]))(layer, h0))
    signed = cls(2, 3, log_space=False, key=getkey())
    assert np.isfinite(np.asarray(signed.scan(h0, x)[1])).all()


def test_minlstm_gates_are_normalised(getkey):
    layer = recurrax.MinLSTM(3, 5, key=getkey())
    f, i = layer.gates(5 * jax.random.normal(getkey(), (100, 3)))
    assert tree_allclose(f + i, jnp.ones_like(f), rtol=1e-14)
    assert float(jnp.min(f)) >= 0 and float(jnp.min(i)) >= 0


def test_forget_bias_shifts_the_initial_bias(getkey):
    key = getkey()
    plain = recurrax.MinLSTM(3, 5, forget_bias=0.0, key=key)
    shifted = recurrax.MinLSTM(3, 5, forget_bias=3.0, key=key)
    assert tree_allclose(shifted.linear_f.bias, plain.linear_f.bias + 3.0)
    assert tree_allclose(shifted.linear_i.bias, plain.linear_i.bias)


def _count(module):
    return sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(module, eqx.is_array)))


@pytest.mark.parametrize("d_x, d_h", [(1, 1), (16, 64), (64, 16)])
def test_parameter_counts(d_x, d_h):
    """Parameter counts: minGRU 2 d_h (d_x + 1), minLSTM 3 d_h (d_x + 1); GRU and LSTM in Equinox's
    layout (one bias per gate plus GRU's b_hn): 3 d_h (d_x + d_h) + 4 d_h, 4 d_h (d_x + d_h) +
    4 d_h, i.e. the PyTorch counts minus 2 d_h and 4 d_h."""
    key = jax.random.key(0)
    assert _count(recurrax.MinGRU(d_x, d_h, key=key)) == 2 * d_h * (d_x + 1)
    assert _count(recurrax.MinLSTM(d_x, d_h, key=key)) == 3 * d_h * (d_x + 1)
    gru, lstm = recurrax.GRU(d_x, d_h, key=key), recurrax.LSTM(d_x, d_h, key=key)
    assert _count(gru) == 3 * d_h * (d_x + d_h) + 4 * d_h
    assert _count(lstm) == 4 * d_h * (d_x + d_h) + 4 * d_h
    assert _count(gru) == 3 * d_h * (d_x + d_h) + 6 * d_h - 2 * d_h
    assert _count(eqx.nn.GRUCell(d_x, d_h, key=key)) == _count(gru)
    assert _count(eqx.nn.LSTMCell(d_x, d_h, key=key)) == _count(lstm)


def test_gru_and_lstm_match_equinox_cells(getkey):
    """The baselines compute what `eqx.nn.GRUCell`/`LSTMCell` compute, step by step, given the
    same weights (an independent implementation of the same equations)."""
    x = jax.random.normal(getkey(), (30, 3))
    gru = recurrax.GRU(3, 4, key=getkey())
    cell = eqx.nn.GRUCell(3, 4, key=getkey())
    cell = eqx.tree_at(
        lambda c: (c.weight_ih, c.weight_hh, c.bias, c.bias_n),
        cell,
        (gru.weight_ih, gru.weight_hh, gru.bias, gru.bias_n),
    )
    _, ref = jax.lax.scan(lambda h, x_t: (cell(x_t, h),) * 2, gru.init_state(), x)
    assert tree_allclose(gru(x), ref, rtol=1e-12)
    lstm = recurrax.LSTM(3, 4, key=getkey())
    lcell = eqx.nn.LSTMCell(3, 4, key=getkey())
    lcell = eqx.tree_at(
        lambda c: (c.weight_ih, c.weight_hh, c.bias),
        lcell,
        (lstm.weight_ih, lstm.weight_hh, lstm.bias),
    )

    def body(state, x_t):
        state = lcell(x_t, state)
        return state, state[0]

    _, ref = jax.lax.scan(body, lstm.init_state(), x)
    assert tree_allclose(lstm(x), ref, rtol=1e-12)


@pytest.mark.parametrize("cls", [recurrax.GRU, recurrax.LSTM], ids=["GRU", "LSTM"])
def test_baselines_step_scan_split(cls, getkey):
    layer = cls(3, 4, key=getkey())
    x = jax.random.normal(getkey(), (25, 3))
    state = layer.init_state()
    s_all, y_all = layer.scan(state, x)
    s_seq, y_seq = jax.lax.scan(lambda s, x_t: layer.step(s, x_t), state, x)
    assert tree_allclose((s_all, y_all), (s_seq, y_seq), rtol=1e-12)
    s_mid, y1 = layer.scan(state, x[:10])
    s_end, y2 = layer.scan(s_mid, x[10:])
    assert tree_allclose((s_end, jnp.concatenate([y1, y2])), (s_all, y_all), rtol=1e-12)
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="x"):
        layer(jnp.ones((5, 4)))


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda: recurrax.MinGRU(2, 3, candidate="linear", log_space=True, key=KEY), "log_space"),
        (lambda: recurrax.MinLSTM(2, 3, candidate="relu", key=KEY), "candidate"),
        (lambda: recurrax.MinGRU(0, 3, key=KEY), "input_size"),
        (lambda: recurrax.MinLSTM(2, 3, forget_bias=float("nan"), key=KEY), "forget_bias"),
        (lambda: recurrax.GRU(2, -3, key=KEY), "hidden_size"),
    ],
)  # fmt: skip
def test_invalid_settings(make, word):
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match=word):
        make()


@pytest.mark.parametrize("cls", CLASSES + [recurrax.GRU], ids=["MinGRU", "MinLSTM", "GRU"])
def test_batched_carried_states_stay_per_example(cls, getkey):
    layer = cls(3, 4, key=getkey())
    x = jax.random.normal(getkey(), (3, 12, 3))
    h0 = jax.random.uniform(getkey(), (3, 4))
    h_last, y = jax.vmap(layer.scan)(h0, x)
    for i in range(3):
        assert tree_allclose((h_last[i], y[i]), layer.scan(h0[i], x[i]), rtol=1e-12)


@pytest.mark.parametrize("cls", CLASSES, ids=["MinGRU", "MinLSTM"])
def test_learned_initial_state(cls, getkey):
    key = getkey()
    layer = cls(3, 4, learn_initial_state=True, key=key)
    assert tree_allclose(layer.init_state(), jnp.zeros(4))
    assert _count(layer) == _count(cls(3, 4, key=key)) + 4
    h0 = jax.random.normal(getkey(), (4,))
    layer = eqx.tree_at(lambda m: m.initial_state, layer, h0)
    x = jax.random.normal(getkey(), (20, 3))
    assert tree_allclose(layer(x), min_reference(layer, x, h0), rtol=1e-11)
    grad = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(layer).initial_state
    eps = 1e-6
    bumped = eqx.tree_at(lambda m: m.initial_state, layer, h0.at[0].add(eps))
    fd = (jnp.sum(bumped(x) ** 2) - jnp.sum(layer(x) ** 2)) / eps
    assert abs(float(grad[0]) - float(fd)) < 1e-4 * max(1.0, abs(float(fd)))
    with pytest.raises(ValueError, match="learn_initial_state"):
        cls(3, 4, learn_initial_state=True, log_space=True, key=key)
