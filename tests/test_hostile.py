"""Hostile input to the public API: wrong shapes, dtypes, ranges, option values and damaged
files. Each case must end in a clear error (a `ValueError` or `CheckpointError` whose
message names the argument, and mostly shows the bad value) or in the correct result.

The tests run as users run the library: without jaxtyping's runtime checks (which would
catch some of these first, naming the parameter too) and with JAX's standard dtype
promotion (under which an integer input used to come out as integer outputs). The cases
are tabulated in docs/reliability-library.md; `test_case_count` keeps the count honest.
"""

import functools
import json
import math

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import recurrax


@pytest.fixture(autouse=True)
def as_users():
    """No runtime type checks, standard promotion: what a user of the library gets."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        with jax.numpy_dtype_promotion("standard"):
            yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


def expect(call, *words, error=ValueError):
    """`call()` raises `error` with every word of `words` in its message."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    return message


KEY = jax.random.key(0)
F32 = jnp.float32
X = jnp.linspace(-1.0, 1.0, 12, dtype=F32).reshape(4, 3)  # (length 4, features 3)
X_INT = jnp.array([[-1, 0, 2], [2, 3, -4], [0, 1, 1], [5, -2, 0]], jnp.int32)


@functools.cache
def layers() -> dict:
    """One small instance of every mixer, input width 3."""
    k = jax.random.split(KEY, 8)
    return {
        "LRU": recurrax.LRU(3, 4, dtype=F32, key=k[0]),
        "DiagonalSSM": recurrax.DiagonalSSM(3, 4, dtype=F32, key=k[1]),
        "MinGRU": recurrax.MinGRU(3, 5, dtype=F32, key=k[2]),
        "MinLSTM": recurrax.MinLSTM(3, 5, dtype=F32, key=k[3]),
        "MinGRU-log": recurrax.MinGRU(3, 5, log_space=True, dtype=F32, key=k[4]),
        "GRU": recurrax.GRU(3, 5, dtype=F32, key=k[5]),
        "LSTM": recurrax.LSTM(3, 5, dtype=F32, key=k[6]),
        "DiscreteDiagonalSystem": recurrax.LRU(3, 2, dtype=F32, key=k[7]).discrete_system(),
    }


@functools.cache
def blocks() -> dict:
    k = jax.random.split(KEY, 2)
    return {
        "GLUBlock": recurrax.GLUBlock(
            recurrax.LRU(3, 4, dtype=F32, key=k[0]), norm="layer", key=k[1]
        ),
        "MixerMLPBlock": recurrax.MixerMLPBlock(
            3, recurrax.MinGRU(3, 3, dtype=F32, key=k[0]), conv_kernel=2, norm="rms", key=k[1]
        ),
    }


def _config(**changes) -> recurrax.ModelConfig:
    options = dict(
        mixer="lru", d_model=4, depth=1, state_size=2, input_size=3, output_size=2, norm="layer"
    )
    options.update(changes)
    return recurrax.ModelConfig(**options)


@functools.cache
def model(pooling="mean", tokens=False) -> recurrax.SequenceModel:
    extra = dict(vocab_size=7, input_size=None) if tokens else {}
    return _config(pooling=pooling, **extra).build(key=KEY)[0]


# -- the engine -------------------------------------------------------------------------------

STRATEGIES = {
    "auto": None,
    "sequential": recurrax.SequentialScan(),
    "associative": recurrax.AssociativeScan(),
    "chunked": recurrax.ChunkedScan(),
    "chunked-3": recurrax.ChunkedScan(chunk_size=3),
}
A = jnp.full((3,), 0.5, F32)
B = jnp.ones((5, 3), F32)

ENGINE_ERRORS = {
    "reverse='no'": (dict(reverse="no"), ["`reverse`", "'no'"]),
    "reverse=1": (dict(reverse=1), ["`reverse`", "reverse=1"]),
    "int b": (dict(b=B.astype(jnp.int32)), ["`b`", "int32"]),
    "bool a": (dict(a=A > 0), ["`a`", "bool"]),
    "a of another length": (dict(a=jnp.ones((4, 3), F32)), ["`a`", "(4, 3)", "(5, 3)"]),
    "h0 of another width": (dict(h0=jnp.ones(4, F32)), ["`h0`", "(4,)"]),
    "scalar b": (dict(b=jnp.ones((), F32)), ["`b`", "time axis"]),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", ENGINE_ERRORS)
def test_engine_errors(strategy, case):
    changes, words = ENGINE_ERRORS[case]
    arguments = dict(a=A, b=B, h0=None) | changes
    a, b, h0 = arguments.pop("a"), arguments.pop("b"), arguments.pop("h0")
    method = STRATEGIES[strategy]
    expect(lambda: recurrax.linear_recurrence(a, b, h0, method=method, **arguments), *words)
    log_words = [w.replace("`a`", "`log_a`").replace("`b`", "`log_b`") for w in words]
    log_words = [w.replace("`h0`", "`log_h0`") for w in log_words]
    expect(lambda: recurrax.log_linear_recurrence(a, b, h0, method=method, **arguments), *log_words)


@pytest.mark.parametrize(
    "method, words",
    [
        ("chunked", ["`method`", "'chunked'"]),
        (recurrax.ChunkedScan, ["`method`"]),
        (8, ["`method`", "method=8"]),
    ],
)
def test_engine_method_errors(method, words):
    expect(lambda: recurrax.linear_recurrence(A, B, method=method), *words)
    expect(lambda: recurrax.log_linear_recurrence(A, B, method=method), *words)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: recurrax.ChunkedScan(chunk_size=2.5), ["`chunk_size`", "2.5"]),
        (lambda: recurrax.ChunkedScan(chunk_size=0), ["`chunk_size`", "chunk_size=0"]),
        (lambda: recurrax.ChunkedScan(chunk_size=-4), ["`chunk_size`", "-4"]),
        (lambda: recurrax.ChunkedScan(chunk_size="4"), ["`chunk_size`", "'4'"]),
        (lambda: recurrax.ChunkedScan(chunk_size=True), ["`chunk_size`", "True"]),
        (lambda: recurrax.SequentialScan(unroll=0), ["`unroll`", "unroll=0"]),
        (lambda: recurrax.SequentialScan(unroll=1.5), ["`unroll`", "1.5"]),
        (lambda: recurrax.AutoScan(sequential_below=-1), ["`sequential_below`", "-1"]),
        (lambda: recurrax.AutoScan(sequential_below=2.5), ["`sequential_below`", "2.5"]),
    ],
)
def test_strategy_option_errors(make, words):
    expect(make, *words)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("length", [0, 1, 7])
def test_engine_edge_lengths_are_exact(strategy, length):
    """Empty, single-step and odd lengths (padding the chunked scan), both directions, with
    a NumPy-bool `reverse`: the float64 loop's answer."""
    rng = np.random.default_rng(length)
    a = rng.uniform(0.2, 0.9, (length, 2))
    b = rng.normal(size=(length, 2))
    for reverse in (np.bool_(False), np.bool_(True)):
        h = np.zeros(2)
        expected = np.zeros((length, 2))
        for t in reversed(range(length)) if reverse else range(length):
            h = a[t] * h + b[t]
            expected[t] = h
        got = recurrax.linear_recurrence(
            jnp.asarray(a), jnp.asarray(b), reverse=reverse, method=STRATEGIES[strategy]
        )
        assert got.shape == (length, 2)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-12)


def test_log_engine_zero_everywhere_is_minus_infinity_not_nan():
    log_b = jnp.full((6, 2), -jnp.inf, F32)
    out = recurrax.log_linear_recurrence(jnp.zeros(2, F32), log_b)
    assert bool(jnp.all(jnp.isneginf(out)))


def test_autoscan_picks_by_where_the_arrays_live(monkeypatch):
    """CPU arrays get the CPU strategy even if JAX's default backend were an accelerator;
    under jit the choice is made when lowering for a platform."""
    auto = recurrax.AutoScan()
    assert isinstance(auto.choose(100, "gpu"), recurrax.AssociativeScan)
    assert isinstance(auto.choose(100, "cpu"), recurrax.SequentialScan)
    assert isinstance(auto.choose(1000, "cpu"), recurrax.ChunkedScan)
    seen = []
    solve = recurrax.SequentialScan.solve

    def spy(self, *args, **kwargs):
        seen.append(type(self).__name__)
        return solve(self, *args, **kwargs)

    monkeypatch.setattr(recurrax.SequentialScan, "solve", spy)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    b = jax.device_put(B, jax.devices("cpu")[0])
    recurrax.linear_recurrence(A, b)
    assert seen and set(seen) == {"SequentialScan"}, seen
    f = jax.jit(lambda a, b: recurrax.linear_recurrence(a, b))
    for platform, loops in (("cpu", True), ("cuda", False), ("tpu", False)):
        text = jax.export.export(f, platforms=[platform])(A, B).mlir_module()
        # The sequential scan is a while loop; the associative scan has none.
        assert ("stablehlo.while" in text) == loops, platform


# -- systems, initialisations, discretisations --------------------------------------------------


@pytest.mark.parametrize(
    "make, words",
    [
        (
            lambda: recurrax.DiscreteDiagonalSystem(
                jnp.ones((2, 2)), jnp.ones((2, 3)), jnp.ones((3, 2)), jnp.ones(3)
            ),
            ["`lam`", "(2, 2)"],
        ),
        (
            lambda: recurrax.DiscreteDiagonalSystem(
                jnp.ones(2), jnp.ones((3, 3)), jnp.ones((3, 2)), jnp.ones(3)
            ),
            ["`B`", "(3, 3)"],
        ),
        (
            lambda: recurrax.DiscreteDiagonalSystem(
                jnp.ones(2), jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones(3)
            ),
            ["`C`", "(2, 3)"],
        ),
        (
            lambda: recurrax.DiscreteDiagonalSystem(
                jnp.ones(2), jnp.ones((2, 3)), jnp.ones((3, 2)), jnp.ones(2)
            ),
            ["`D`", "(2,)"],
        ),
        (
            lambda: recurrax.ContinuousDiagonalSystem(
                -jnp.ones(2), jnp.ones((2, 3)), jnp.ones((3, 2)), jnp.ones(4)
            ),
            ["`D`", "(4,)"],
        ),
        (
            lambda: recurrax.ContinuousDiagonalSystem(
                -jnp.ones((1, 2)), jnp.ones((2, 3)), jnp.ones((3, 2)), jnp.ones(3)
            ),
            ["`Lambda`", "(1, 2)"],
        ),
    ],
)
def test_system_errors(make, words):
    expect(make, *words)


RING = dict(r_min=0.5, r_max=0.9, max_phase=1.0)


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(r_max="0.9"), ["`r_max`", "'0.9'"]),
        (dict(r_min=None), ["`r_min`", "None"]),
        (dict(max_phase="pi"), ["`max_phase`", "'pi'"]),
        (dict(r_max=True), ["`r_max`", "True"]),
        (dict(r_min=-0.1), ["r_min=-0.1"]),
        (dict(r_min=0.9), ["r_min=0.9", "r_max=0.9"]),
        (dict(r_max=1.5), ["r_max=1.5"]),
        (dict(r_max=math.nan), ["r_max=nan"]),
        (dict(max_phase=0.0), ["`max_phase`", "0.0"]),
        (dict(max_phase=math.inf), ["`max_phase`", "inf"]),
        (dict(state_size=0), ["`state_size`", "state_size=0"]),
        (dict(state_size=2.5), ["`state_size`", "2.5"]),
        (dict(state_size="4"), ["`state_size`", "'4'"]),
    ],
)
def test_ring_init_errors(changes, words):
    arguments = dict(RING, state_size=4) | changes
    size = arguments.pop("state_size")
    expect(lambda: recurrax.ring_init(size, key=KEY, **arguments), *words)
    if "state_size" not in changes:  # the LRU passes its radii through the same check
        lru = {k: v for k, v in arguments.items()}
        expect(lambda: recurrax.LRU(3, 4, key=KEY, **lru), "LRU", *words)


@hypothesis.given(
    gap=st.floats(1e-12, 1e-5), seed=st.integers(0, 2**31 - 1), phase=st.floats(1e-3, 7.0)
)
def test_ring_init_finite_next_to_the_unit_circle(gap, seed, phase):
    """r_max = 1 and r_min = 1 - gap: every nu_log finite (r^2 rounds to 1 in float32 for
    gaps below 3e-8, which gave nu_log = -inf), every |lambda| in [r_min, 1)."""
    nu_log, theta_log = recurrax.ring_init(
        256, r_min=1 - gap, r_max=1.0, max_phase=phase, dtype=F32, key=jax.random.key(seed)
    )
    assert bool(jnp.all(jnp.isfinite(nu_log)) and jnp.all(jnp.isfinite(theta_log)))
    nu = np.exp(np.asarray(nu_log, np.float64))
    assert np.all(nu > 0) and np.all(np.exp(-nu) >= (1 - gap) * (1 - 1e-7))


def test_ring_init_distribution_unchanged_away_from_one():
    """|lambda|^2 uniform on [r_min^2, r_max^2]: its mean, within 5 standard errors."""
    for r_min, r_max in ((0.0, 1.0), (0.4, 0.8), (0.999, 1.0)):
        nu_log, _ = recurrax.ring_init(
            8192, r_min=r_min, r_max=r_max, max_phase=1.0, dtype=F32, key=KEY
        )
        r2 = np.exp(-2 * np.exp(np.asarray(nu_log, np.float64)))
        low, high = r_min**2, r_max**2
        sd = (high - low) / math.sqrt(12 * 8192)
        assert abs(r2.mean() - (low + high) / 2) < 5 * sd
        assert r2.min() >= low * (1 - 1e-6) and r2.max() <= high


@pytest.mark.parametrize(
    "discretisation",
    [
        recurrax.ZeroOrderHold(),
        recurrax.Bilinear(),
        recurrax.ForwardEuler(),
        recurrax.BackwardEuler(),
    ],
)
def test_discretisations_accept_real_or_integer_eigenvalues(discretisation):
    """A real (even integer) Lambda is read as complex: the same result as the complex one."""
    lam_bar, scale = discretisation(jnp.array([-1, -2]), jnp.array([0.5, 0.5]))
    ref_bar, ref_scale = discretisation(jnp.array([-1.0 + 0j, -2.0 + 0j]), jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(np.asarray(lam_bar), np.asarray(ref_bar), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(scale), np.asarray(ref_scale), rtol=1e-6)


# -- layers ------------------------------------------------------------------------------------


def _state_of(layer):
    return layer.init_state()


LAYER_ERRORS = {
    "integer x": (lambda m: m(X_INT), ["`x`", "int32"]),
    "boolean x": (lambda m: m(X > 0), ["`x`", "bool"]),
    "wrong width": (lambda m: m(jnp.ones((4, 2), F32)), ["`x`", "(4, 2)"]),
    "no time axis": (lambda m: m(jnp.ones(3, F32)), ["`x`", "(3,)"]),
    "a batch axis": (lambda m: m(jnp.ones((2, 4, 3), F32)), ["`x`", "(2, 4, 3)"]),
    "a list": (lambda m: m([[1.0, 2.0, 3.0]]), ["`x`", "list"]),
    "integer mask": (lambda m: m(X, mask=jnp.ones(4, jnp.int32)), ["`mask`", "int32"]),
    "short mask": (lambda m: m(X, mask=jnp.ones(3, bool)), ["`mask`", "(3,)"]),
    "integer x_t": (lambda m: m.step(_state_of(m), X_INT[0]), ["`x_t`", "int32"]),
    "state as a list": (lambda m: m.step([_state_of(m)], X[0]), ["state", "init_state"]),
    "state too wide": (
        lambda m: m.scan(jax.tree.map(lambda s: jnp.zeros(s.shape + (1,)), _state_of(m)), X),
        ["state", "init_state"],
    ),
    "integer state": (
        lambda m: m.scan(jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.int32), _state_of(m)), X),
        ["state", "int32"],
    ),
    "reverse='no'": (lambda m: m.scan(_state_of(m), X, reverse="no"), ["`reverse`", "'no'"]),
}


@pytest.mark.parametrize("name", list(layers()))
@pytest.mark.parametrize("case", LAYER_ERRORS)
def test_layer_errors(name, case):
    call, words = LAYER_ERRORS[case]
    layer = layers()[name]
    expect(lambda: call(layer), name.split("-")[0], *words)


def test_bidirectional_errors():
    k1, k2 = jax.random.split(KEY)
    bi = recurrax.Bidirectional(recurrax.MinGRU(3, 5, key=k1), recurrax.MinGRU(3, 5, key=k2))
    expect(lambda: bi(X_INT), "`x`", "int32")
    expect(lambda: bi(X, mask=jnp.ones(5, bool)), "`mask`", "(5,)")
    expect(lambda: bi.scan(None, X), "`scan`", "bidirectional")
    expect(lambda: recurrax.Bidirectional(bi, bi), "`forward`")
    expect(
        lambda: recurrax.Bidirectional(
            recurrax.MinGRU(3, 5, key=k1), recurrax.MinGRU(3, 4, key=k2)
        ),
        "(3, 5)",
        "(3, 4)",
    )


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: recurrax.LRU(3, 4, bidirectional="no", key=KEY), ["`bidirectional`", "'no'"]),
        (lambda: recurrax.LRU(0, 4, key=KEY), ["`input_size`", "input_size=0"]),
        (lambda: recurrax.LRU(3, 4.0, key=KEY), ["`state_size`", "4.0"]),
        (lambda: recurrax.DiagonalSSM(3, 4, step_min="0.01", key=KEY), ["`step_min`", "'0.01'"]),
        (lambda: recurrax.DiagonalSSM(3, 4, step_min=0.5, step_max=0.1, key=KEY), ["step_min=0.5"]),
        (
            lambda: recurrax.DiagonalSSM(3, 4, delta="per_input", key=KEY),
            ["`delta`", "'per_input'"],
        ),
        (lambda: recurrax.DiagonalSSM(3, 4, init="hippo", key=KEY), ["`init`", "'hippo'"]),
        (
            lambda: recurrax.DiagonalSSM(3, 4, discretisation="zoh", key=KEY),
            ["`discretisation`", "'zoh'"],
        ),
        (
            lambda: recurrax.DiagonalSSM(3, 4, conjugate_symmetric="yes", key=KEY),
            ["`conjugate_symmetric`", "'yes'"],
        ),
        (lambda: recurrax.MinGRU(3, 5, log_space="no", key=KEY), ["`log_space`", "'no'"]),
        (lambda: recurrax.MinGRU(3, 5, candidate="tanh", key=KEY), ["`candidate`", "'tanh'"]),
        (
            lambda: recurrax.MinGRU(3, 5, candidate="linear", log_space=True, key=KEY),
            ["log_space", "candidate='linear'"],
        ),
        (
            lambda: recurrax.MinLSTM(3, 5, learn_initial_state=1, key=KEY),
            ["`learn_initial_state`", "1"],
        ),
        (lambda: recurrax.MinLSTM(3, 5, forget_bias="3", key=KEY), ["`forget_bias`", "'3'"]),
        (lambda: recurrax.MinLSTM(3, 5, forget_bias=math.inf, key=KEY), ["`forget_bias`", "inf"]),
        (lambda: recurrax.GRU(3, -1, key=KEY), ["`hidden_size`", "-1"]),
        (lambda: recurrax.LSTM(None, 5, key=KEY), ["`input_size`", "None"]),
    ],
)
def test_layer_option_errors(make, words):
    expect(make, *words)


@pytest.mark.parametrize("name", ["LRU", "MinGRU", "GRU"])
def test_layer_length_zero_is_empty_and_keeps_the_state(name):
    layer = layers()[name]
    h = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), layer.init_state())
    h_last, y = layer.scan(h, jnp.zeros((0, 3), F32))
    assert y.shape == (0, layer.output_size)
    jax.tree.map(
        lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), h_last, h
    )
    assert layer(jnp.zeros((0, 3), F32)).shape == (0, layer.output_size)


# -- blocks and norms ---------------------------------------------------------------------------

BLOCK_ERRORS = {
    "integer x": (lambda b: b(X_INT), ["`x`", "int32"]),
    "wrong width": (lambda b: b(jnp.ones((4, 5), F32)), ["`x`", "(4, 5)"]),
    "a list": (lambda b: b([[0.0, 1.0, 2.0]]), ["`x`", "list"]),
    "state as a list": (lambda b: b.scan([b.init_state()], X), ["`h`", "init_state"]),
    "state too wide": (
        lambda b: b.scan(jax.tree.map(lambda s: jnp.zeros(s.shape + (2,)), b.init_state()), X),
        ["`h`", "init_state"],
    ),
}


@pytest.mark.parametrize("name", list(blocks()))
@pytest.mark.parametrize("case", BLOCK_ERRORS)
def test_block_errors(name, case):
    call, words = BLOCK_ERRORS[case]
    expect(lambda: call(blocks()[name]), name, *words)


@pytest.mark.parametrize(
    "make, words",
    [
        (
            lambda: recurrax.GLUBlock(layers()["LRU"], dropout="0.1", key=KEY),
            ["`dropout`", "'0.1'"],
        ),
        (
            lambda: recurrax.GLUBlock(layers()["LRU"], dropout=1.0, key=KEY),
            ["`dropout`", "1.0"],
        ),
        (
            lambda: recurrax.GLUBlock(layers()["LRU"], norm="group", key=KEY),
            ["`norm`", "'group'"],
        ),
        (lambda: recurrax.GLUBlock(eqx.nn.Linear(3, 3, key=KEY), key=KEY), ["`mixer`", "Linear"]),
        (
            lambda: recurrax.GLUBlock(layers()["MinGRU"], key=KEY),
            ["input_size=3", "output_size=5"],
        ),
        (lambda: recurrax.CausalDepthwiseConv(3, kernel_size=0, key=KEY), ["`kernel_size`", "0"]),
        (lambda: recurrax.LayerNorm(0), ["`features`", "0"]),
        (lambda: recurrax.RMSNorm(3, eps=-1.0), ["`eps`", "-1.0"]),
        (lambda: recurrax.BatchNorm(3, momentum=1.0), ["`momentum`", "1.0"]),
        (lambda: recurrax.LayerNorm(3)(jnp.ones((4, 2), F32), None), ["(4, 2)"]),
        (
            lambda: recurrax.RMSNorm(3)(jnp.ones((4, 3), F32), None, mask=jnp.ones(2, bool)),
            ["`mask`", "(2,)"],
        ),
    ],
)
def test_block_and_norm_option_errors(make, words):
    expect(make, *words)


def test_conv_wrong_history():
    conv = recurrax.CausalDepthwiseConv(3, kernel_size=3, key=KEY)
    expect(lambda: conv.scan(jnp.zeros((1, 3), F32), X), "CausalDepthwiseConv", "`h`", "[2, 3]")


# -- SequenceModel and ModelConfig --------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "last", "none"])
@pytest.mark.parametrize("tokens", [False, True])
def test_model_empty_sequence(pooling, tokens):
    m = model(pooling, tokens)
    x = jnp.zeros((0,), jnp.int32) if tokens else jnp.zeros((0, 3), F32)
    expect(lambda: m(x), "SequenceModel", "`x`", "length 0")


MODEL_ERRORS = {
    "integer features": (lambda: model()(X_INT), ["`x`", "int32"]),
    "float tokens": (lambda: model(tokens=True)(jnp.ones(4, F32)), ["`x`", "float32"]),
    "tokens out of range": (lambda: model(tokens=True)(jnp.array([0, 7])), ["`x`", "[0, 7)", "7"]),
    "negative token": (lambda: model(tokens=True)(jnp.array([-1, 2])), ["`x`", "-1"]),
    "features of another width": (lambda: model()(jnp.ones((4, 5), F32)), ["`x`", "(4, 5)"]),
    "a list": (lambda: model()([[1.0, 2.0, 3.0]]), ["`x`", "list"]),
    "short mask": (lambda: model()(X, mask=jnp.ones(2, bool)), ["`mask`", "(2,)"]),
    "state of another model": (
        lambda: model().scan(model(tokens=True).init_state() + ((),), X),
        ["`h`", "init_state"],
    ),
    "state leaf of another shape": (
        lambda: model().step(
            jax.tree.map(lambda s: jnp.zeros(s.shape + (1,), s.dtype), model().init_state()), X[0]
        ),
        ["`h`", "init_state"],
    ),
    "state as an array": (lambda: model().step(jnp.zeros(2), X[0]), ["`h`", "init_state"]),
    "integer x_t": (lambda: model().step(model().init_state(), X_INT[0]), ["`x_t`", "int32"]),
}


@pytest.mark.parametrize("case", MODEL_ERRORS)
def test_model_errors(case):
    call, words = MODEL_ERRORS[case]
    expect(call, "SequenceModel", *words)


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(mixer="transformer"), ["`mixer`", "'transformer'"]),
        (dict(block="resnet"), ["`block`", "'resnet'"]),
        (dict(pooling="max"), ["`pooling`", "'max'"]),
        (dict(norm="group"), ["`norm`", "'group'"]),
        (dict(d_model=0), ["`d_model`", "0"]),
        (dict(depth=1.5), ["`depth`", "1.5"]),
        (dict(vocab_size=10), ["`vocab_size`", "`input_size`"]),
        (dict(input_size=None), ["`vocab_size`", "`input_size`"]),
        (dict(dropout="0.1"), ["`dropout`", "'0.1'"]),
        (dict(dropout=1.0), ["`dropout`", "1.0"]),
        (dict(prenorm="no"), ["`prenorm`", "'no'"]),
        (dict(bidirectional=1), ["`bidirectional`", "1"]),
        (dict(param_dtype="int32"), ["`param_dtype`", "'int32'"]),
        (dict(compute_dtype="half-float"), ["`compute_dtype`", "'half-float'"]),
        (dict(mixer_options=[("r_min", 0.5)]), ["`mixer_options`"]),
        (dict(mixer_options={"r_min": object()}), ["`mixer_options`", "JSON"]),
        (dict(expansion=2), ["'glu'", "expansion=2"]),
    ],
)
def test_model_config_errors(changes, words):
    expect(lambda: _config(**changes), "ModelConfig", *words)


def test_model_config_from_dict_unknown_key():
    expect(lambda: recurrax.ModelConfig.from_dict({"mixer": "lru", "widht": 3}), "widht")


def test_model_config_unknown_ssm_init():
    # Refused when the configuration is made, before any build.
    expect(lambda: _config(mixer="ssm", mixer_options={"init": "legs"}), "init", "'legs'")


def _last_valid_reference(z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    valid = np.flatnonzero(mask)
    return z[valid[-1]] if valid.size else np.zeros(z.shape[1])


@functools.cache
def _pooled():
    """The "last" and the per-step ("none") outputs of one model, compiled once."""
    last, per_step = model("last"), model("none")
    return (
        jax.jit(lambda x, m: (last(x, mask=m), per_step(x, mask=m))),
        jax.random.normal(jax.random.key(1), (6, 3), F32),
    )


@hypothesis.given(
    mask=st.lists(st.booleans(), min_size=6, max_size=6).filter(any),
    left=st.integers(0, 5),
)
@hypothesis.example(mask=[True] * 6, left=3)  # left padding: the last step is valid
@hypothesis.example(mask=[True, True, False, True, False, False], left=0)  # holes
def test_last_pooling_reads_the_last_valid_step(mask, left):
    """`pooling="last"` equals the per-step outputs (`pooling="none"`) at the last valid
    position, for any mask: left padding (`left` masked steps first) and holes."""
    mask = np.array(mask)
    mask[:left] = False
    if not mask.any():
        mask[-1] = True
    pooled, x = _pooled()
    y_last, y_steps = pooled(x, jnp.asarray(mask))
    expected = _last_valid_reference(np.asarray(y_steps), mask)
    np.testing.assert_allclose(np.asarray(y_last), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mixer", ["lru", "ssm"])
def test_bfloat16_compute_keeps_the_eigenvalues(mixer):
    """`compute_dtype="bfloat16"` leaves the transition's parameters in float32: the cast
    model's eigenvalues equal the float32 model's bit for bit (|lambda| = 0.9999 moved by
    up to 3 % when nu_log itself was rounded to bfloat16)."""
    options = {"r_min": 0.999, "r_max": 0.9999} if mixer == "lru" else {}
    m, _ = _config(mixer=mixer, compute_dtype="bfloat16", mixer_options=options).build(key=KEY)
    cast = m._cast()
    layer, cast_layer = m.blocks[0].mixer, cast.blocks[0].mixer
    assert cast.blocks[0].glu_value.weight.dtype == jnp.bfloat16  # the rest is cast
    if mixer == "lru":
        reference, got = layer.eigenvalues(), cast_layer.eigenvalues()
    else:
        reference, got = layer.discrete_system().lam, cast_layer.discrete_system().lam
    np.testing.assert_array_equal(np.asarray(got), np.asarray(reference))
    y = m(X)
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y.astype(F32))))



@pytest.mark.parametrize("mixer, fields", [("rglru", ("a_param",)),
                                           ("selective-ssm", ("Lambda_re_log", "Lambda_im"))])
def test_bfloat16_compute_keeps_input_dependent_transitions(mixer, fields):
    """The same for the RG-LRU's a = sigmoid(Lambda) and the selective SSM's eigenvalues: the
    cast model keeps them bit for bit in float32, and computes in bfloat16."""
    options = dict(block="hawk", norm="rms", conv_kernel=4)
    m, _ = _config(mixer=mixer, compute_dtype="bfloat16", **options).build(key=KEY)
    cast = m._cast()
    layer, cast_layer = m.blocks[0].mixer, cast.blocks[0].mixer
    for name in fields:
        assert getattr(cast_layer, name).dtype == F32
        np.testing.assert_array_equal(getattr(cast_layer, name), getattr(layer, name))
    y = m(X)
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y.astype(F32))))

# -- training utilities -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(learning_rate=-1e-3), ["`learning_rate`", "-0.001"]),
        (dict(learning_rate="1e-3"), ["`learning_rate`", "'1e-3'"]),
        (dict(learning_rate=math.nan), ["`learning_rate`", "nan"]),
        (dict(weight_decay=-0.1), ["`weight_decay`", "-0.1"]),
        (dict(lr_factor=0.0), ["`lr_factor`", "0.0"]),
        (dict(clip_norm=0.0), ["`clip_norm`", "0.0"]),
        (dict(b1=1.0), ["`b1`", "1.0"]),
        (dict(b2=-0.5), ["`b2`", "-0.5"]),
        (dict(eps=0.0), ["`eps`", "0.0"]),
        (dict(recurrent_fields={"LRU": {"nu_log"}}), ["`recurrent_fields`", "'LRU'"]),
    ],
)
def test_make_optimizer_errors(changes, words):
    arguments = dict(learning_rate=1e-3) | changes
    expect(lambda: recurrax.make_optimizer(model(), **arguments), *words)


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(peak_value=-1.0), ["`peak_value`", "-1.0"]),
        (dict(total_steps=0), ["`total_steps`", "0"]),
        (dict(total_steps=10.5), ["`total_steps`", "10.5"]),
        (dict(warmup_fraction=1.5), ["`warmup_fraction`", "1.5"]),
        (dict(floor=-1e-7), ["`floor`", "-1e-07"]),
    ],
)
def test_schedule_errors(changes, words):
    arguments = dict(peak_value=1e-3, total_steps=100) | changes
    expect(lambda: recurrax.warmup_cosine_schedule(**arguments), *words)


# -- checkpoints --------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.ckpt"
    recurrax.save_checkpoint(path, model=layers()["LRU"], step=3, config={"size": 4})
    return path


def test_checkpoint_save_errors(tmp_path):
    lru = layers()["LRU"]
    expect(lambda: recurrax.save_checkpoint(tmp_path / "a", model=lru, step=-1), "`step`", "-1")
    expect(lambda: recurrax.save_checkpoint(tmp_path / "a", model=lru, step=1.5), "`step`", "1.5")
    expect(
        lambda: recurrax.save_checkpoint(tmp_path / "a", model=lru, step=1, config={"f": object()}),
        "`config`",
    )
    expect(
        lambda: recurrax.save_checkpoint(tmp_path / "a", model=lru, step=1, metadata=[1]),
        "`metadata`",
    )
    expect(
        lambda: recurrax.save_checkpoint(tmp_path / "missing" / "a", model=lru, step=1),
        "missing",
        error=(OSError, ValueError),
    )


def skeleton(cls, *args, **kwargs):
    """Shapes and dtypes only: nothing computed."""
    return eqx.filter_eval_shape(cls, *args, key=KEY, **kwargs)


def _rewrite_header(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


@pytest.mark.parametrize(
    "old, new, words",
    [
        (b'"format_version":1', b'"format_version":7', ["corrupted", "format_version=7"]),
        (b'"format_version":1', b'"format_version":"1"', ["corrupted", "format_version='1'"]),
        (b'"format_version":1', b'"format_versiom":1', ["corrupted", "format_version=None"]),
        (b'"format_version":1', b'"format_version":1.0', ["corrupted", "SHA-256"]),
        (b'"step":3', b'"step":4', ["corrupted", "SHA-256"]),
    ],
)
def test_checkpoint_damaged_header(saved, old, new, words):
    _rewrite_header(saved, old, new)
    skeleton = layers()["LRU"]
    for call in (
        lambda: recurrax.read_checkpoint_header(saved),
        lambda: recurrax.load_checkpoint(saved, model=skeleton),
    ):
        message = expect(call, str(saved), *words, error=recurrax.CheckpointError)
        assert "needs a matching recurrax" not in message


def test_checkpoint_from_a_newer_format_is_named_as_such(saved):
    """A header whose digest matches but names another version: an unsupported format."""
    from recurrax._checkpoint import _header_digest

    line, rest = saved.read_bytes().split(b"\n", 1)
    header = json.loads(line)
    header.pop("header_sha256")
    header["format_version"] = 2
    header["header_sha256"] = _header_digest(header)
    saved.write_bytes(json.dumps(header, separators=(",", ":")).encode() + b"\n" + rest)
    expect(
        lambda: recurrax.read_checkpoint_header(saved),
        "format version 2",
        "matching recurrax",
        error=recurrax.CheckpointError,
    )


@pytest.mark.parametrize(
    "skeleton, words",
    [
        (lambda: skeleton(recurrax.LRU, 3, 5, dtype=F32), ["nu_log", "(5,)", "(4,)"]),
        (lambda: skeleton(recurrax.LRU, 3, 4, dtype=jnp.float64), ["float64", "float32"]),
        (lambda: skeleton(recurrax.MinGRU, 3, 4), ["linear_z"]),
    ],
)
def test_checkpoint_load_into_the_wrong_skeleton(saved, skeleton, words):
    expect(
        lambda: recurrax.load_checkpoint(saved, model=skeleton()),
        str(saved),
        *words,
        error=recurrax.CheckpointError,
    )


def test_checkpoint_load_errors(saved, tmp_path):
    lru = layers()["LRU"]
    expect(
        lambda: recurrax.load_checkpoint(saved, model=lru, config={"size": 5}),
        "size",
        error=recurrax.CheckpointError,
    )
    expect(
        lambda: recurrax.load_checkpoint(tmp_path / "absent.ckpt", model=lru),
        "absent.ckpt",
        error=FileNotFoundError,
    )
    (tmp_path / "empty.ckpt").write_bytes(b"")
    expect(
        lambda: recurrax.load_checkpoint(tmp_path / "empty.ckpt", model=lru),
        "empty.ckpt",
        "empty",
        error=recurrax.CheckpointError,
    )
    expect(
        lambda: recurrax.load_checkpoint(saved, model=lru, require_key=True),
        "key",
        error=recurrax.CheckpointError,
    )
    expect(lambda: recurrax.CheckpointManager(tmp_path, keep=0), "`keep`", "0")
