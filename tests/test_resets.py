"""Resets (packed sequences): the engine against a float64 loop with restarts, gradients,
and every layer, block and model against running each segment alone."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

import recurrax

from .helpers import (
    every_other,
    grid,
    random_system,
    relative_error,
    STRATEGIES,
    STRATEGY_IDS,
    to_jax,
)


TOL = {np.float64: 1e-10, np.float32: 1e-4}
# Reset patterns with their edges: random, all True, only the first, none, only the last.
PATTERNS = st.sampled_from(["random", "all", "first", "none", "last", "random"])


def _pattern(kind, length, rng):
    if kind == "all":
        return np.ones(length, bool)
    flags = np.zeros(length, bool)
    if kind == "first":
        flags[0] = True
    elif kind == "last":
        flags[-1] = True
    elif kind == "random":
        flags = rng.random(length) < 0.3
    return flags


def reference_with_resets(a, b, h0=None, resets=None, reverse=False):
    r"""$h_t = a_t h_{t-1} + b_t$ as a float64 loop that restarts from `h0` (zeros if None) at
    each segment start (reverse: at each segment's last step)."""
    a, b = np.asarray(a), np.asarray(b)
    dtype = np.result_type(a, b, np.float64)
    start = np.zeros(b.shape[1:], dtype) if h0 is None else np.array(h0, dtype)
    length = b.shape[0]
    resets = np.zeros(length, bool) if resets is None else np.asarray(resets)
    out = np.empty(b.shape, dtype)
    h = start.copy()
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for t in steps:
        cut = (t + 1 < length and resets[t + 1]) if reverse else resets[t]
        if cut:
            h = start.copy()
        h = (a[t] if a.ndim == b.ndim else a) * h + b[t]
        out[t] = h
    return out


def _segments(resets):
    """[(start, stop)] of the segments a reset vector marks (the first step always starts)."""
    starts = [0] + [t for t in range(1, len(resets)) if resets[t]]
    return list(zip(starts, starts[1:] + [len(resets)]))


# -- the engine ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", STRATEGIES, ids=STRATEGY_IDS)
@given(
    length=st.sampled_from([1, 7, 33]),
    complex_=st.booleans(),
    invariant=st.booleans(),
    reverse=st.booleans(),
    with_h0=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    pattern=PATTERNS,
    seed=st.integers(0, 2**16),
)
def test_linear_against_float64_loop(
    method, length, complex_, invariant, reverse, with_h0, dtype, pattern, seed
):
    rng = np.random.default_rng(seed)
    a, b, h0 = random_system(rng, length, (3,), complex_=complex_, invariant=invariant, dtype=dtype)
    h0 = h0 if with_h0 else None
    resets = _pattern(pattern, length, rng)
    out = recurrax.linear_recurrence(
        *to_jax(a, b, h0), reverse=reverse, method=method, resets=jnp.asarray(resets)
    )
    assert out.shape == b.shape and out.dtype == b.dtype
    ref = reference_with_resets(a, b, h0, resets, reverse)
    assert relative_error(out, ref) < TOL[dtype]


@pytest.mark.parametrize("method", every_other(STRATEGIES), ids=repr)
@given(
    length=st.sampled_from([1, 7, 33]),
    invariant=st.booleans(),
    reverse=st.booleans(),
    h0=st.sampled_from(["none", "positive", "with-zero"]),
    pattern=PATTERNS,
    seed=st.integers(0, 2**16),
)
def test_log_against_float64_loop(method, length, invariant, reverse, h0, pattern, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.2, 1.0, (3,) if invariant else (length, 3))
    b = rng.uniform(0.1, 2.0, (length, 3))
    b[rng.random((length, 3)) < 0.2] = 0.0  # log b = -inf entries
    start = {"none": None, "positive": rng.uniform(0.5, 2, 3), "with-zero": np.array([0.0, 1, 2])}
    start = start[h0]
    resets = jnp.asarray(_pattern(pattern, length, rng))
    with np.errstate(divide="ignore"):
        log_h0 = None if start is None else jnp.asarray(np.log(start))
        log_a, log_b = jnp.asarray(np.log(a)), jnp.asarray(np.log(b))
    log_h = recurrax.log_linear_recurrence(
        log_a, log_b, log_h0, reverse=reverse, method=method, resets=resets
    )
    assert not np.any(np.isnan(np.asarray(log_h)))
    ref = reference_with_resets(a, b, start, np.asarray(resets), reverse)
    assert relative_error(jnp.exp(log_h), ref) < 1e-10

    def loss(log_a, log_b, log_h0):
        return jnp.sum(
            jnp.exp(
                recurrax.log_linear_recurrence(
                    log_a, log_b, log_h0, reverse=reverse, method=method, resets=resets
                )
            )
        )

    argnums = (0, 1) if log_h0 is None else (0, 1, 2)
    grads = jax.grad(loss, argnums=argnums)(log_a, log_b, log_h0)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


@pytest.mark.parametrize(
    "method, reverse, invariant", grid(STRATEGIES[:4], [False, True], [False, True]), ids=repr
)
def test_linear_gradients_against_finite_differences(method, reverse, invariant):
    rng = np.random.default_rng(0)
    a, b, h0 = random_system(rng, 9, (2,), complex_=True, invariant=invariant)
    resets = jnp.array([False, True, False, False, True, True, False, False, True])

    def f(a, b, h0):
        return recurrax.linear_recurrence(a, b, h0, reverse=reverse, method=method, resets=resets)

    check_grads(f, to_jax(a, b, h0), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("method, reverse", grid(STRATEGIES[:4], [False, True]), ids=repr)
def test_log_gradients_against_finite_differences(method, reverse):
    rng = np.random.default_rng(1)
    log_a = jnp.asarray(np.log(rng.uniform(0.2, 0.9, (9, 2))))
    log_b = jnp.asarray(rng.normal(size=(9, 2)))
    log_h0 = jnp.asarray(rng.normal(size=2))
    resets = jnp.array([True, False, True, False, False, True, False, False, True])

    def f(log_a, log_b, log_h0):
        return recurrax.log_linear_recurrence(
            log_a, log_b, log_h0, reverse=reverse, method=method, resets=resets
        )

    check_grads(f, (log_a, log_b, log_h0), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("log_space, reverse", grid([False, True], [False, True]))
def test_gradients_equal_segments_run_alone(log_space, reverse):
    """The adjoint cuts at the same boundaries: the gradient of a packed loss is that of the
    segments' losses each computed alone (h0 entering every segment)."""
    rng = np.random.default_rng(2)
    length = 11
    resets_np = np.zeros(length, bool)
    resets_np[[0, 3, 4, 8]] = True
    resets = jnp.asarray(resets_np)
    a = jnp.asarray(rng.uniform(0.2, 0.9, (length, 2)))
    b = jnp.asarray(rng.uniform(0.2, 2.0, (length, 2)))
    h0 = jnp.asarray(rng.uniform(0.2, 2.0, 2))
    if log_space:
        a, b, h0 = jnp.log(a), jnp.log(b), jnp.log(h0)
        solve = recurrax.log_linear_recurrence
    else:
        solve = recurrax.linear_recurrence
    weights = jnp.asarray(rng.normal(size=(length, 2)))

    def packed(a, b, h0):
        return jnp.sum(weights * jnp.sin(solve(a, b, h0, reverse=reverse, resets=resets)))

    def alone(a, b, h0):
        total = 0.0
        for start, stop in _segments(resets_np):
            h = solve(a[start:stop], b[start:stop], h0, reverse=reverse)
            total = total + jnp.sum(weights[start:stop] * jnp.sin(h))
        return total

    assert abs(float(packed(a, b, h0) - alone(a, b, h0))) < 1e-12
    g_packed = jax.grad(packed, argnums=(0, 1, 2))(a, b, h0)
    g_alone = jax.grad(alone, argnums=(0, 1, 2))(a, b, h0)
    for u, v in zip(g_packed, g_alone):
        assert relative_error(u, v) < 1e-12


def test_log_restart_from_zero_has_zero_gradient_and_no_nan():
    """log h0 = -inf (h0 = 0) at a restart contributes nothing: no NaN, zero derivative."""
    log_a = jnp.log(jnp.full((4, 1), 0.5))
    log_b = jnp.zeros((4, 1))
    resets = jnp.array([False, True, False, True])

    def f(log_a, log_b, log_h0):
        return jnp.sum(recurrax.log_linear_recurrence(log_a, log_b, log_h0, resets=resets))

    g = jax.grad(f, argnums=(0, 1, 2))(log_a, log_b, jnp.array([-jnp.inf]))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)
    assert float(g[2][0]) == 0.0
    # The coefficients of segment starts do not matter once the state entering is zero.
    assert float(g[0][1, 0]) == 0.0 and float(g[0][3, 0]) == 0.0


def test_jit_vmap_and_jvp():
    rng = np.random.default_rng(3)
    a, b, _ = random_system(rng, 8, (2,), complex_=False, invariant=True)
    resets = jnp.asarray(rng.random((3, 8)) < 0.4)
    bs = jnp.stack([jnp.asarray(b)] * 3)
    f = jax.jit(jax.vmap(lambda b, r: recurrax.linear_recurrence(jnp.asarray(a), b, resets=r)))
    out = f(bs, resets)
    for i in range(3):
        ref = reference_with_resets(a, b, None, np.asarray(resets[i]))
        assert relative_error(out[i], ref) < 1e-12
    # A linear function: its JVP in b is itself.
    _, tangent = jax.jvp(lambda b: f(b, resets), (bs,), (bs,))
    assert relative_error(tangent, out) < 1e-12


def test_resets_errors():
    from recurrax._recurrence import _check_resets

    b = jnp.ones((5, 2))
    for bad in (jnp.ones((4,), bool), jnp.ones((5,), jnp.int32), jnp.ones((5, 1), bool)):
        # recurrax's own check (what users see without runtime type checking) ...
        with pytest.raises(ValueError, match="`resets` must be a boolean array of shape"):
            _check_resets("linear_recurrence", bad, 5)
        # ... and the public functions, where the annotation may catch it first.
        for solve in (recurrax.linear_recurrence, recurrax.log_linear_recurrence):
            with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="resets"):
                solve(0.5, b, resets=bad)


def test_empty_sequence_with_resets():
    out = recurrax.linear_recurrence(0.5, jnp.ones((0, 2)), resets=jnp.zeros((0,), bool))
    assert out.shape == (0, 2)


# -- segment helpers -----------------------------------------------------------------------


def test_segment_starts():
    ids = jnp.array([3, 3, 1, 1, 1, 3, 7])
    assert recurrax.segment_starts(ids).tolist() == [True, False, True, False, False, True, True]
    assert recurrax.segment_starts(jnp.zeros((0,), jnp.int32)).shape == (0,)
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="segment_ids"):
        recurrax.segment_starts(jnp.zeros((3,)))


@given(
    resets=st.lists(st.booleans(), min_size=10, max_size=10),
    mask=st.lists(st.booleans(), min_size=10, max_size=10),
    pooling=st.sampled_from(["mean", "last"]),
)
def test_pool_segments_against_a_loop(resets, mask, pooling):
    y = np.arange(20.0).reshape(10, 2) ** 1.5
    pooled, present = recurrax.pool_segments(
        jnp.asarray(y), jnp.asarray(resets), 4, pooling=pooling, mask=jnp.asarray(mask)
    )
    expected = np.zeros((4, 2))
    seen = np.zeros(4, bool)
    for k, (start, stop) in enumerate(_segments(resets)[:4]):
        rows = [t for t in range(start, stop) if mask[t]]
        if rows:
            seen[k] = True
            expected[k] = y[rows].mean(0) if pooling == "mean" else y[rows[-1]]
    assert present.tolist() == seen.tolist()
    assert relative_error(pooled, expected) < 1e-14


def test_pool_segments_errors():
    y, r = jnp.ones((4, 2)), jnp.ones((4,), bool)
    with pytest.raises(ValueError, match="num_segments"):
        recurrax.pool_segments(y, r, 0)
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="pooling"):
        recurrax.pool_segments(y, r, 2, pooling="max")
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="resets"):
        recurrax.pool_segments(y, r[:3], 2)


# -- layers and blocks ---------------------------------------------------------------------

D, HIDDEN, LENGTH = 4, 5, 13
RESETS = np.zeros(LENGTH, bool)
RESETS[[0, 4, 5, 9]] = True  # segments of 4, 1, 4, 4 steps
MASK = np.arange(LENGTH) < 11  # the last segment is partly padding


def _with_initial_state(layer):
    state = jnp.linspace(0.5, 1.5, layer.hidden_size)
    return eqx.tree_at(lambda m: m.initial_state, layer, state)


MIXERS = {
    "lru": lambda k: recurrax.LRU(D, 3, key=k),
    "lru-bidirectional": lambda k: recurrax.LRU(D, 3, bidirectional=True, key=k),
    "ssm": lambda k: recurrax.DiagonalSSM(D, 3, key=k),
    "ssm-bidirectional": lambda k: recurrax.DiagonalSSM(D, 3, bidirectional=True, key=k),
    "mingru": lambda k: recurrax.MinGRU(D, HIDDEN, key=k),
    "mingru-log": lambda k: recurrax.MinGRU(D, HIDDEN, log_space=True, key=k),
    "mingru-initial": lambda k: _with_initial_state(
        recurrax.MinGRU(D, HIDDEN, learn_initial_state=True, key=k)
    ),
    "minlstm": lambda k: recurrax.MinLSTM(D, HIDDEN, key=k),
    "minlstm-log": lambda k: recurrax.MinLSTM(D, HIDDEN, log_space=True, key=k),
    "minlstm-initial": lambda k: _with_initial_state(
        recurrax.MinLSTM(D, HIDDEN, learn_initial_state=True, key=k)
    ),
    "gru": lambda k: recurrax.GRU(D, HIDDEN, key=k),
    "lstm": lambda k: recurrax.LSTM(D, HIDDEN, key=k),
    "bidirectional-mingru": lambda k: recurrax.Bidirectional(
        recurrax.MinGRU(D, HIDDEN, key=k), recurrax.MinGRU(D, HIDDEN, key=jax.random.fold_in(k, 1))
    ),
    "bidirectional-gru": lambda k: recurrax.Bidirectional(
        recurrax.GRU(D, HIDDEN, key=k), recurrax.GRU(D, HIDDEN, key=jax.random.fold_in(k, 1))
    ),
}
CAUSAL = [name for name in MIXERS if "bidirectional" not in name]


def _x(length=LENGTH, width=D, seed=1):
    return jax.random.normal(jax.random.key(seed), (length, width), jnp.float64)


def _alone(fn, x, resets, mask=None):
    """`fn(segment, mask)` on each segment alone, concatenated."""
    outs = []
    for start, stop in _segments(np.asarray(resets)):
        m = None if mask is None else jnp.asarray(mask[start:stop])
        outs.append(fn(x[start:stop], m))
    return jnp.concatenate(outs)


def _float64(mixer):
    return jax.tree.map(lambda p: p.astype(jnp.float64) if eqx.is_inexact_array(p) else p, mixer)


@pytest.mark.parametrize("name, with_mask", grid(MIXERS, [False, True]))
def test_layer_equals_segments_alone(name, with_mask):
    mixer = _float64(MIXERS[name](jax.random.key(0)))
    x = _x()
    mask = jnp.asarray(MASK) if with_mask else None
    y = mixer(x, mask=mask, resets=jnp.asarray(RESETS))
    expected = _alone(lambda s, m: mixer(s, mask=m), x, RESETS, None if mask is None else MASK)
    assert relative_error(y, expected) < 1e-12


@pytest.mark.parametrize("name, reverse", grid(CAUSAL, [False, True]))
def test_scan_with_resets_equals_stepping_with_restarts(name, reverse):
    """scan from a carried state with resets = a loop of steps whose state is replaced by
    init_state() at each segment start (reverse: at each segment's last step)."""
    mixer = _float64(MIXERS[name](jax.random.key(0)))
    x = _x()
    carried, _ = mixer.scan(mixer.init_state(), _x(5, seed=2))
    h_last, y = mixer.scan(carried, x, reverse=reverse, resets=jnp.asarray(RESETS))
    h = carried
    ys = [None] * LENGTH
    steps = range(LENGTH - 1, -1, -1) if reverse else range(LENGTH)
    for t in steps:
        cut = (t + 1 < LENGTH and RESETS[t + 1]) if reverse else RESETS[t]
        if cut:
            h = mixer.init_state()
        h, ys[t] = mixer.step(h, x[t])
    assert relative_error(y, jnp.stack(ys)) < 1e-12
    assert all(
        relative_error(u, v) < 1e-12 for u, v in zip(jax.tree.leaves(h_last), jax.tree.leaves(h))
    )


@pytest.mark.parametrize("name", ["lru", "mingru-log", "minlstm-initial", "lstm"])
def test_layer_gradients_equal_segments_alone(name):
    mixer = _float64(MIXERS[name](jax.random.key(0)))
    x = _x()
    resets = jnp.asarray(RESETS)

    def packed(mixer):
        return jnp.sum(jnp.sin(mixer(x, resets=resets)))

    def alone(mixer):
        return jnp.sum(jnp.sin(_alone(lambda s, m: mixer(s), x, RESETS)))

    g1 = eqx.filter_grad(packed)(mixer)
    g2 = eqx.filter_grad(alone)(mixer)
    assert all(
        relative_error(u, v) < 1e-10 for u, v in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))
    )


@pytest.mark.parametrize("kernel, with_mask", grid([1, 3], [False, True]))
def test_causal_conv_restarts_its_history(kernel, with_mask):
    conv = _float64(recurrax.CausalDepthwiseConv(D, kernel, key=jax.random.key(0)))
    x = _x()
    mask = jnp.asarray(MASK) if with_mask else None
    resets = jnp.asarray(RESETS)
    y = conv(x, mask=mask, resets=resets)
    expected = _alone(lambda s, m: conv(s, mask=m), x, RESETS, None if mask is None else MASK)
    assert relative_error(y, expected) < 1e-14
    # In pieces with a carried history (which keeps only the current segment's inputs).
    for split in (3, 6, 10):
        h, y1 = conv.scan(conv.init_state(), x[:split], resets=resets[:split])
        h, y2 = conv.scan(h, x[split:], resets=resets[split:])
        assert relative_error(jnp.concatenate([y1, y2]), conv(x, resets=resets)) < 1e-14


def _block(kind, key):
    k1, k2 = jax.random.split(key)
    if kind == "glu":
        return recurrax.GLUBlock(recurrax.LRU(D, 3, key=k1), norm="layer", key=k2)
    if kind == "glu-bidirectional":
        return recurrax.GLUBlock(recurrax.LRU(D, 3, bidirectional=True, key=k1), norm="rms", key=k2)
    return recurrax.MixerMLPBlock(
        D, recurrax.MinGRU(D, 2 * D, key=k1), norm="layer", conv_kernel=3, mlp_expansion=2, key=k2
    )


@pytest.mark.parametrize(
    "kind, with_mask", grid(["glu", "glu-bidirectional", "mlp"], [False, True])
)
def test_blocks_equal_segments_alone(kind, with_mask):
    block = _float64(_block(kind, jax.random.key(0)))
    x = _x()
    mask = jnp.asarray(MASK) if with_mask else None
    y, _ = block(x, mask=mask, resets=jnp.asarray(RESETS))
    expected = _alone(lambda s, m: block(s, mask=m)[0], x, RESETS, None if mask is None else MASK)
    if mask is not None:  # padded outputs are not defined by the segments: compare valid ones
        y, expected = y[MASK], expected[MASK]
    assert relative_error(y, expected) < 1e-12
    if kind != "glu-bidirectional":
        carried, _, _ = block.scan(block.init_state(), _x(5, seed=2))
        h, y1, _ = block.scan(carried, x[:7], resets=jnp.asarray(RESETS[:7]).at[0].set(True))
        h, y2, _ = block.scan(h, x[7:], resets=jnp.asarray(RESETS[7:]))
        assert (
            relative_error(jnp.concatenate([y1, y2]), block(x, resets=jnp.asarray(RESETS))[0])
            < 1e-12
        )


def test_batchnorm_statistics_of_packed_rows_equal_padded_rows():
    """BatchNorm's statistics run over valid tokens only, so packing the same tokens into
    other rows leaves them, and the normalised tokens, unchanged."""
    norm, state = eqx.nn.make_with_state(recurrax.BatchNorm)(D)
    lengths = [5, 3, 4, 2]
    tokens = [_x(n, seed=i) for i, n in enumerate(lengths)]
    padded = jnp.stack([jnp.concatenate([t, jnp.full((5 - len(t), D), 7.0)]) for t in tokens])
    mask = jnp.arange(5)[None] < jnp.array(lengths)[:, None]
    packed = jnp.stack(
        [jnp.concatenate(tokens[:2]), jnp.concatenate(tokens[2:] + [jnp.full((2, D), -9.0)])]
    )
    packed_mask = jnp.arange(8)[None] < jnp.array([[8], [6]])

    def run(x, mask):
        fresh = jax.tree.unflatten(*reversed(jax.tree.flatten(state)))  # a clone of the state
        return jax.vmap(lambda x, m: norm(x, fresh, mask=m), axis_name="batch", out_axes=(0, None))(
            x, mask
        )

    y_pad, s_pad = run(padded, mask)
    y_pack, s_pack = run(packed, packed_mask)
    for u, v in zip(s_pad.get(norm.stats), s_pack.get(norm.stats)):
        assert relative_error(u, v) < 1e-12
    pairs = [((0, 0, 5), (0, 5)), ((0, 5, 8), (1, 3)), ((1, 0, 4), (2, 4)), ((1, 4, 6), (3, 2))]
    for (row, start, stop), (example, n) in pairs:
        assert relative_error(y_pack[row, start:stop], y_pad[example, :n]) < 1e-12


# -- the model -----------------------------------------------------------------------------

VOCAB, OUT = 11, 3


def _model(mixer, block, pooling, **overrides):
    config = dict(mixer=mixer, block=block, d_model=D, depth=2, vocab_size=VOCAB, output_size=OUT)
    config.update(state_size=3, norm="layer", pooling=pooling, param_dtype="float64")
    if block == "mlp":
        config.update(expansion=2, conv_kernel=3, mlp_expansion=2, final_norm=True)
    config.update(overrides)
    model, _ = recurrax.ModelConfig(**config).build(key=jax.random.key(0))
    return model


TOKENS = jax.random.randint(jax.random.key(5), (LENGTH,), 0, VOCAB)


@pytest.mark.parametrize(
    "mixer, block, bidirectional",
    [("lru", "glu", False), ("lru", "glu", True), ("mingru", "mlp", False), ("lstm", "mlp", True)],
)
def test_model_per_token_outputs_equal_segments_alone(mixer, block, bidirectional):
    model = _model(mixer, block, "none", bidirectional=bidirectional)
    resets = jnp.asarray(RESETS)
    y = model(TOKENS, resets=resets, mask=jnp.asarray(MASK))
    expected = _alone(lambda s, m: model(s, mask=m), TOKENS, RESETS, MASK)
    assert relative_error(y[MASK], expected[MASK]) < 1e-12
    if not bidirectional:
        h, y1 = model.scan(model.init_state(), TOKENS[:6], resets=resets[:6])
        h, y2 = model.scan(h, TOKENS[6:], resets=resets[6:])
        assert relative_error(jnp.concatenate([y1, y2]), model(TOKENS, resets=resets)) < 1e-12


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_model_pools_per_segment(pooling):
    model = _model("lru", "glu", pooling)
    y = model(TOKENS, resets=jnp.asarray(RESETS), mask=jnp.asarray(MASK), num_segments=5)
    assert y.shape == (5, OUT)
    segments = _segments(RESETS)
    for k, (start, stop) in enumerate(segments):
        alone = model(TOKENS[start:stop], mask=jnp.asarray(MASK[start:stop]))
        assert relative_error(y[k], alone) < 1e-12
    # A missing segment pools to zeros: the head's bias.
    assert relative_error(y[len(segments) :], jnp.broadcast_to(model.head.bias, (1, OUT))) == 0
    with pytest.raises(ValueError, match="num_segments"):
        model(TOKENS, resets=jnp.asarray(RESETS))
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="resets"):
        model(TOKENS, resets=jnp.asarray(RESETS[:5]), num_segments=2)
