"""SequenceModel and ModelConfig: streaming through the whole stack, masks and padding,
jit/vmap/grad, dropout, the precision policy and bad input."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from hypothesis import given, strategies as st

import recurrax

from .helpers import relative_error


VOCAB, LENGTH, OUT = 11, 13, 3
# Every registered mixer, so that a new one is tested by registering it.
MIXERS = list(recurrax.registered_mixers())


def _config(mixer, block, **overrides):
    base = dict(mixer=mixer, block=block, d_model=8, depth=2, vocab_size=VOCAB, output_size=OUT)
    base.update(state_size=6, param_dtype="float64")  # exact comparisons in float64
    if block == "mlp":
        base.update(norm="layer", expansion=2, conv_kernel=4, mlp_expansion=2, final_norm=True)
    elif block == "hawk":
        base.update(norm="rms", expansion=2, conv_kernel=4, mlp_expansion=2, final_norm=True)
    else:
        base.update(norm="batch")
    base.update(overrides)
    return recurrax.ModelConfig(**base)


def _batched(model, state):
    return jax.vmap(lambda x, m: model(x, state, mask=m), axis_name="batch", out_axes=(0, None))


def _tokens(shape=(2, LENGTH), seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, VOCAB)


@pytest.mark.parametrize("block", ["glu", "mlp"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_streaming_equals_the_full_call(mixer, block):
    """Tokens one at a time, and the sequence in pieces with carried state, give the
    one-call outputs of the whole stack (BatchNorm in inference mode)."""
    model, state = _config(mixer, block, pooling="none").build(key=jax.random.key(0))
    model = eqx.nn.inference_mode(model)
    x = _tokens()[0]
    y, _ = model(x, state)
    step = eqx.filter_jit(lambda model, h, x_t: model.step(h, x_t, state=state))
    scan = eqx.filter_jit(lambda model, h, x: model.scan(h, x, state=state))
    h = model.init_state()
    steps = []
    for t in range(LENGTH):
        h, y_t = step(model, h, x[t])
        steps.append(y_t)
    assert relative_error(jnp.stack(steps), y) < 1e-12
    for split in (0, 6, LENGTH):  # empty first piece, a cut, empty last piece
        h, y1 = scan(model, model.init_state(), x[:split])
        h, y2 = scan(model, h, x[split:])
        assert relative_error(jnp.concatenate([y1, y2]), y) < 1e-12


@pytest.mark.parametrize("mixer", ["rglru", "selective-ssm", "lru"])
def test_hawk_block_streams(mixer):
    """The Hawk block (gated recurrent branch with its convolution, gated MLP), in pieces
    with carried state, gives the one-call outputs of the whole stack."""
    model, _ = _config(mixer, "hawk", pooling="none").build(key=jax.random.key(0))
    assert all(isinstance(block, recurrax.HawkBlock) for block in model.blocks)
    x = _tokens()[0]
    y = model(x)
    scan = eqx.filter_jit(lambda model, h, x: model.scan(h, x))
    for split in (1, 6):
        h, y1 = scan(model, model.init_state(), x[:split])
        h, y2 = scan(model, h, x[split:])
        assert relative_error(jnp.concatenate([y1, y2]), y) < 1e-12


def _pad(x, pad, value):
    return jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], value, x.dtype)])


@pytest.mark.parametrize("pooling", ["mean", "last", "none"])
@pytest.mark.parametrize(
    "mixer, bidirectional", [("lru", False), ("lru", True), ("minlstm", True), ("gru", False)]
)
def test_padding_never_changes_valid_outputs(mixer, bidirectional, pooling, getkey):
    config = _config(mixer, "mlp", pooling=pooling, bidirectional=bidirectional, conv_kernel=None)
    model, _ = config.build(key=getkey())
    x = _tokens()[0][:9]
    expected = model(x)
    for pad_token in (0, VOCAB - 1):
        padded = _pad(x, 4, pad_token)
        mask = jnp.arange(13) < 9
        y = model(padded, mask=mask)
        if pooling == "none":
            assert relative_error(y[:9], expected) < 1e-12
            assert np.all(np.isfinite(np.asarray(y)))
        else:
            assert relative_error(y, expected) < 1e-12


def test_batchnorm_padding_does_not_leak(getkey):
    """Training-mode statistics use valid steps only: whatever fills the padding, the
    outputs at valid positions and the running statistics are the same."""
    model, state = _config("lru", "glu", pooling="none").build(key=getkey())
    x = _tokens((2, LENGTH))
    mask = jnp.arange(LENGTH)[None] < jnp.array([[13], [7]])
    outs = []
    for fill in (0, 5):
        filled = jnp.where(mask, x, fill)
        leaves, treedef = jax.tree_util.tree_flatten(state)  # a fresh copy per use
        fresh = jax.tree_util.tree_unflatten(treedef, leaves)
        y, new_state = _batched(model, fresh)(filled, mask)
        outs.append((np.asarray(y)[np.asarray(mask)], new_state))
    assert relative_error(outs[0][0], outs[1][0]) < 1e-12
    stats = [jax.tree.leaves(s) for _, s in outs]
    for a, b in zip(*stats):
        assert relative_error(a, b) < 1e-12


@pytest.mark.parametrize("mixer", ["lru", "minlstm"])
def test_jit_vmap_grad(mixer, getkey):
    model, state = _config(mixer, "glu", dropout=0.1).build(key=getkey())
    x = _tokens((4, LENGTH))
    labels = jnp.array([0, 1, 2, 1])
    mask = jnp.ones((4, LENGTH), bool)

    @eqx.filter_jit
    def loss(model, state, key):
        keys = jax.random.split(key, 4)
        logits, state = jax.vmap(
            lambda x, m, k: model(x, state, mask=m, key=k),
            axis_name="batch",
            out_axes=(0, None),
        )(x, mask, keys)
        log_p = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1)), state

    (value, new_state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(
        model, state, getkey()
    )
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert sum(float(jnp.any(g != 0)) for g in leaves) >= 0.9 * len(leaves)
    # Batched call = per-example calls (inference mode: BatchNorm uses running statistics).
    frozen = eqx.nn.inference_mode(model)
    batched = jax.vmap(lambda x: frozen(x, new_state)[0])(x)
    single = frozen(x[2], new_state)[0]
    assert relative_error(batched[2], single) < 1e-12


def test_streaming_is_jit_compiled_once(getkey):
    model, _ = _config("mingru", "mlp", pooling="none").build(key=getkey())

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(model, h, x_t):
        return model.step(h, x_t)

    h = model.init_state()
    for token in _tokens()[0]:
        h, _ = step(model, h, token)


def test_linear_encoder_features(getkey):
    config = recurrax.ModelConfig(
        mixer="lru", d_model=8, depth=1, input_size=5, output_size=2, norm="layer"
    )
    model, _ = config.build(key=getkey())
    x = jax.random.normal(getkey(), (LENGTH, 5))
    assert model(x).shape == (2,)
    assert model.input_size == 5 and model.vocab_size is None and model.output_size == 2
    with pytest.raises(ValueError, match=r"`x` must have shape \(length, 5\)"):
        model(x[:, :4])
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="floating|x"):
        model(jnp.ones((LENGTH, 5), jnp.int32))


def test_token_errors(getkey):
    model, _ = _config("lru", "mlp").build(key=getkey())
    x = _tokens()[0]
    with pytest.raises(ValueError, match=r"outside \[0, 11\), e.g. 11"):
        model(x.at[3].set(VOCAB))
    with pytest.raises(ValueError, match="outside"):
        model(x.at[3].set(-1))
    with pytest.raises(Exception, match="outside"):
        jax.block_until_ready(eqx.filter_jit(model)(x.at[3].set(VOCAB)))
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="integer tokens|x"):
        model(x.astype(jnp.float32))
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="mask"):
        model(x, mask=jnp.ones((LENGTH - 1,), bool))
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="x_t"):
        model.step(model.init_state(), x[:2])


def test_model_state_errors(getkey):
    model, state = _config("lru", "glu").build(key=getkey())
    with pytest.raises(ValueError, match="state` is None|make_with_state"):
        model(_tokens()[0])
    with pytest.raises(ValueError, match="inference mode"):
        model.step(model.init_state(), _tokens()[0][0], state=state)
    frozen = eqx.nn.inference_mode(model)
    with pytest.raises(ValueError, match="pass its `state`"):
        frozen.step(frozen.init_state(), _tokens()[0][0])
    bidirectional, _ = _config("mingru", "mlp", bidirectional=True).build(key=getkey())
    with pytest.raises(ValueError, match="bidirectional"):
        bidirectional.scan(None, _tokens()[0])


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(mixer="transformer"), "`mixer`"),
        (dict(block="mlp2"), "`block`"),
        (dict(pooling="max"), "`pooling`"),
        (dict(norm="group"), "`norm`"),
        (dict(depth=0), "depth"),
        (dict(input_size=4), "exactly one"),
        (dict(vocab_size=None), "exactly one"),
        (dict(expansion=2), "'glu' block"),
        (dict(dropout=1.5), "dropout"),
        (dict(param_dtype="int32"), "param_dtype"),
        (dict(mixer_options={"r_max": object()}), "JSON"),
    ],
)
def test_config_errors(overrides, words):
    base = dict(mixer="lru", d_model=8, depth=1, vocab_size=VOCAB, output_size=OUT)
    base.update(overrides)
    with pytest.raises(ValueError, match=words):
        recurrax.ModelConfig(**base)


def test_config_round_trip_and_mixer_options(getkey):
    config = _config(
        "ssm",
        "glu",
        mixer_options={"init": "s4d-lin", "discretisation": "bilinear", "delta": "per_feature"},
    )
    again = recurrax.ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    model, _ = again.build(key=getkey())
    mixer = model.blocks[0].mixer
    assert isinstance(mixer.discretisation, recurrax.Bilinear) and mixer.delta == "per_feature"
    with pytest.raises(ValueError, match="unknown keys"):
        recurrax.ModelConfig.from_dict({**config.to_dict(), "width": 3})
    with pytest.raises(ValueError, match="discretisation"):
        _config("ssm", "glu", mixer_options={"discretisation": "rk4"}).build(key=getkey())


def test_composition_errors(getkey):
    k = getkey()
    block = recurrax.GLUBlock(recurrax.LRU(8, 4, key=k), norm="layer", key=k)
    with pytest.raises(ValueError, match=r"blocks\[0\]` has d_model=8"):
        recurrax.SequenceModel(
            eqx.nn.Embedding(VOCAB, 6, key=k), [block], eqx.nn.Linear(8, 2, key=k)
        )
    with pytest.raises(ValueError, match="`head` takes 6"):
        recurrax.SequenceModel(
            eqx.nn.Embedding(VOCAB, 8, key=k), [block], eqx.nn.Linear(6, 2, key=k)
        )
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="pooling"):
        recurrax.SequenceModel(
            eqx.nn.Embedding(VOCAB, 8, key=k), [block], eqx.nn.Linear(8, 2, key=k), pooling="max"
        )


# -- precision ---------------------------------------------------------------------------


def _cast(tree, dtype):
    return jax.tree.map(
        lambda p: p.astype(dtype) if eqx.is_inexact_array(p) and p.dtype != jnp.complex64 else p,
        tree,
    )


def test_bfloat16_recurrence_is_accumulated_in_float32():
    """A slowly decaying recurrence (a = 0.999, 4096 steps) with bfloat16 inputs: the engine
    accumulates in float32 (error at float32 rounding of the bf16-exact inputs), while the
    same recurrence accumulated in bfloat16 is off by percents."""
    length = 4096
    a = jnp.full((length, 8), 0.999, jnp.bfloat16)
    b = jax.random.uniform(jax.random.key(0), (length, 8)).astype(jnp.bfloat16)
    h = recurrax.linear_recurrence(a, b)
    assert h.dtype == jnp.float32
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ref = np.empty_like(b64)
    state = np.zeros(8)
    for t in range(length):
        state = a64[t] * state + b64[t]
        ref[t] = state
    assert relative_error(h, ref) < 1e-5

    def body(s, ab):
        s = ab[0] * s + ab[1]
        return s, s

    _, h_bf16 = jax.lax.scan(body, jnp.zeros((8,), jnp.bfloat16), (a, b))
    assert relative_error(h_bf16.astype(jnp.float32), ref) > 1e-2


@pytest.mark.parametrize("name", ["lru", "mingru", "minlstm", "gru"])
def test_bfloat16_layers_do_not_drift_with_length(name):
    """bfloat16 parameters and activations against float32 with the same (rounded)
    parameters: the error is that of bfloat16 activations (2^-8 = 0.4 % per rounding) and
    does not grow from 64 to 4096 steps, because the state is carried in float32."""
    make = {
        "lru": lambda k: recurrax.LRU(16, 32, r_min=0.99, r_max=0.999, key=k),
        "mingru": lambda k: recurrax.MinGRU(16, 16, key=k),
        "minlstm": lambda k: recurrax.MinLSTM(16, 16, key=k),
        "gru": lambda k: recurrax.GRU(16, 16, key=k),
    }[name]
    layer32 = _cast(make(jax.random.key(0)), jnp.float32)
    layer16 = _cast(layer32, jnp.bfloat16)
    layer32 = _cast(layer16, jnp.float32)
    errors = []
    for length in (64, 4096):
        x = jax.random.normal(jax.random.key(1), (length, 16)).astype(jnp.bfloat16)
        y16 = layer16(x)
        assert y16.dtype == jnp.bfloat16
        state_dtype = jax.tree.leaves(layer16.init_state())[0].dtype
        assert state_dtype in (jnp.float32, jnp.complex64)
        errors.append(relative_error(y16.astype(jnp.float32), layer32(x.astype(jnp.float32))))
    assert max(errors) < 2e-2
    assert errors[1] < 3 * errors[0] + 1e-3


@pytest.mark.parametrize("mixer, block", [("lru", "glu"), ("mingru", "mlp")])
def test_bfloat16_model_against_float32(mixer, block):
    """A 4-layer model computed in bfloat16 (float32 master parameters, `compute_dtype`)
    and one built with bfloat16 parameters, against the float32 model: RMS drift below 3 %
    (a few bfloat16 roundings per layer)."""
    overrides = dict(depth=4, d_model=32, pooling="none", norm="layer", param_dtype="float32")
    if block == "mlp":
        overrides["norm"] = "rms"
    model32, _ = _config(mixer, block, **overrides).build(key=jax.random.key(0))
    model_c, _ = _config(mixer, block, compute_dtype="bfloat16", **overrides).build(
        key=jax.random.key(0)
    )
    model16 = _cast(model32, jnp.bfloat16)
    x = _tokens((1024,))
    y32 = np.asarray(model32(x), np.float64)
    for model in (model_c, model16):
        y = model(x)
        assert y.dtype == jnp.bfloat16
        drift = np.sqrt(np.mean((np.asarray(y, np.float64) - y32) ** 2) / np.mean(y32**2))
        assert drift < 3e-2


@given(
    lengths=st.lists(st.sampled_from([1, 4, 9, LENGTH]), min_size=3, max_size=3),
    pooling=st.sampled_from(["mean", "last"]),
)
def test_padded_batch_equals_each_sequence_alone(lengths, pooling):
    """A padded batch with masks under vmap gives, for each sequence, the output of that
    sequence alone (causal convolution, minGRU and bidirectional LRU blocks)."""
    blocks = {
        "mingru": _config("mingru", "mlp", pooling=pooling),
        "lru": _config("lru", "glu", pooling=pooling, norm="rms", bidirectional=True),
    }
    x = _tokens((3, LENGTH), seed=4)
    mask = jnp.arange(LENGTH)[None] < jnp.asarray(lengths)[:, None]
    for config in blocks.values():
        model, _ = config.build(key=jax.random.key(0))
        batched = eqx.filter_jit(jax.vmap(lambda x, m: model(x, mask=m)))(x, mask)
        alone = eqx.filter_jit(lambda x: model(x))  # compiled once per length
        for i, n in enumerate(lengths):
            assert relative_error(batched[i], alone(x[i, :n])) < 1e-12
