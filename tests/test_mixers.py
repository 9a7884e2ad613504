"""The mixer interface, masks, the Bidirectional wrapper, the causal convolution, the norms
and the blocks, each against an independent float64 NumPy computation."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from hypothesis import given, strategies as st

import recurrax

from .helpers import relative_error


D = 4
HIDDEN = 6

# Every mixer, so that a new one is tested by adding it here.
MIXERS = {
    "lru": lambda k: recurrax.LRU(D, 5, key=k),
    "lru-bidirectional": lambda k: recurrax.LRU(D, 5, bidirectional=True, key=k),
    "ssm": lambda k: recurrax.DiagonalSSM(D, 5, key=k),
    "ssm-per-feature": lambda k: recurrax.DiagonalSSM(D, 3, delta="per_feature", key=k),
    "ssm-bidirectional": lambda k: recurrax.DiagonalSSM(D, 3, bidirectional=True, key=k),
    "mingru": lambda k: recurrax.MinGRU(D, HIDDEN, key=k),
    "mingru-log": lambda k: recurrax.MinGRU(D, HIDDEN, log_space=True, key=k),
    "minlstm": lambda k: recurrax.MinLSTM(D, HIDDEN, key=k),
    "minlstm-log": lambda k: recurrax.MinLSTM(D, HIDDEN, log_space=True, key=k),
    "gru": lambda k: recurrax.GRU(D, HIDDEN, key=k),
    "rglru": lambda k: recurrax.RGLRU(D, key=k),
    "selective-ssm": lambda k: recurrax.SelectiveSSM(D, 3, selective_bc=True, key=k),
    "lstm": lambda k: recurrax.LSTM(D, HIDDEN, key=k),
    "bidirectional-mingru": lambda k: recurrax.Bidirectional(
        recurrax.MinGRU(D, HIDDEN, key=k), recurrax.MinGRU(D, HIDDEN, key=jax.random.fold_in(k, 1))
    ),
    "bidirectional-lstm": lambda k: recurrax.Bidirectional(
        recurrax.LSTM(D, HIDDEN, key=k), recurrax.LSTM(D, HIDDEN, key=jax.random.fold_in(k, 1))
    ),
}
CAUSAL = [name for name in MIXERS if "bidirectional" not in name]
LENGTH = 12
MASKS = st.lists(st.booleans(), min_size=LENGTH, max_size=LENGTH)


# Compiled once per mixer and shape: hypothesis then draws masks without recompiling.
_call = eqx.filter_jit(lambda mixer, x, mask: mixer(x, mask=mask))
_scan = eqx.filter_jit(lambda mixer, h, x, mask: mixer.scan(h, x, mask=mask))


def _x(length=LENGTH, width=D, seed=1):
    return jax.random.normal(jax.random.key(seed), (length, width))


@pytest.mark.parametrize("name", MIXERS)
def test_every_layer_is_a_mixer(name, getkey):
    mixer = MIXERS[name](getkey())
    assert isinstance(mixer, recurrax.AbstractMixer)
    y = mixer(_x())
    assert y.shape == (LENGTH, mixer.output_size)
    assert mixer.input_size == D
    assert mixer.bidirectional == ("bidirectional" in name)


@pytest.mark.parametrize("name", MIXERS)
@given(mask=MASKS)
def test_masked_steps_are_absent(name, mask):
    """A masked step is skipped: the outputs at valid steps are those of the sequence with
    the masked steps removed (padding anywhere, reverse directions included), and masked
    outputs are zero."""
    mixer = MIXERS[name](jax.random.key(0))
    x = _x()
    mask = jnp.asarray(mask)
    y = _call(mixer, x, mask)
    assert np.all(np.asarray(y)[~np.asarray(mask)] == 0)
    if bool(jnp.any(mask)):
        expected = _call(mixer, x[np.asarray(mask)], None)
        assert relative_error(y[np.asarray(mask)], expected) < 1e-12


@pytest.mark.parametrize("name", CAUSAL)
@given(mask=MASKS, split=st.sampled_from([0, 3, 7, LENGTH]))
def test_masked_scan_in_pieces(name, mask, split):
    mixer = MIXERS[name](jax.random.key(0))
    x, mask = _x(), jnp.asarray(mask)
    h_full, y_full = _scan(mixer, mixer.init_state(), x, mask)
    h, y1 = _scan(mixer, mixer.init_state(), x[:split], mask[:split])
    h, y2 = _scan(mixer, h, x[split:], mask[split:])
    assert relative_error(jnp.concatenate([y1, y2]), y_full) < 1e-12
    for a, b in zip(jax.tree.leaves(h), jax.tree.leaves(h_full)):
        assert relative_error(a, b) < 1e-12


@pytest.mark.parametrize("name", CAUSAL)
def test_reverse_scan_starts_at_the_true_end(name, getkey):
    mixer = MIXERS[name](getkey())
    x = _x()
    mask = jnp.arange(LENGTH) < 8
    _, y = mixer.scan(mixer.init_state(), x, reverse=True, mask=mask)
    _, expected = mixer.scan(mixer.init_state(), x[:8], reverse=True)
    assert relative_error(y[:8], expected) < 1e-12


def test_bidirectional_wrapper_against_its_definition(getkey):
    forward, backward = (
        recurrax.MinLSTM(D, HIDDEN, key=getkey()),
        recurrax.GRU(D, HIDDEN, key=getkey()),
    )
    mixer = recurrax.Bidirectional(forward, backward)
    x = _x()
    expected = np.asarray(forward(x)) + np.asarray(backward(x[::-1]))[::-1]
    assert relative_error(mixer(x), expected) < 1e-12


def test_bidirectional_wrapper_errors(getkey):
    k = getkey()
    with pytest.raises(ValueError, match="same"):
        recurrax.Bidirectional(recurrax.MinGRU(D, 3, key=k), recurrax.MinGRU(D, 4, key=k))
    with pytest.raises(ValueError, match="`forward` must be a causal"):
        recurrax.Bidirectional(
            recurrax.LRU(D, 3, bidirectional=True, key=k), recurrax.LRU(D, 3, key=k)
        )
    mixer = MIXERS["bidirectional-mingru"](k)
    for call in (mixer.init_state, lambda: mixer.step(None, _x()[0])):
        with pytest.raises(ValueError, match="bidirectional"):
            call()


@pytest.mark.parametrize("name", MIXERS)
def test_mask_errors(name, getkey):
    mixer = MIXERS[name](getkey())
    for bad in (jnp.ones((LENGTH + 1,), bool), jnp.ones((LENGTH,), jnp.int32)):
        with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="mask"):
            mixer(_x(), mask=bad)


# -- the causal convolution ------------------------------------------------------------


def _conv_reference(weight, bias, x):
    weight, bias, x = (np.asarray(v, np.float64) for v in (weight, bias, x))
    k = weight.shape[0]
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        out[t] = bias + sum(weight[j] * x[t - j] for j in range(k) if t - j >= 0)
    return out


@given(kernel=st.sampled_from([1, 2, 4]), split=st.sampled_from([0, 1, 5, LENGTH]))
def test_causal_conv_against_a_loop_and_in_pieces(kernel, split):
    conv = recurrax.CausalDepthwiseConv(D, kernel, key=jax.random.key(2))
    x = _x()
    y = conv(x)
    assert relative_error(y, _conv_reference(conv.weight, conv.bias, x)) < 1e-12
    h, y1 = conv.scan(conv.init_state(), x[:split])
    h, y2 = conv.scan(h, x[split:])
    assert relative_error(jnp.concatenate([y1, y2]), y) < 1e-12
    h = conv.init_state()
    steps = []
    for t in range(LENGTH):
        h, y_t = conv.scan(h, x[t : t + 1])
        steps.append(y_t[0])
    assert relative_error(jnp.stack(steps), y) < 1e-12


@given(mask=MASKS)
def test_causal_conv_skips_masked_steps(mask):
    conv = recurrax.CausalDepthwiseConv(D, 4, key=jax.random.key(2))
    x, mask = _x(), np.asarray(mask)
    y = conv(x, mask=jnp.asarray(mask))
    assert np.all(np.asarray(y)[~mask] == 0)
    if mask.any():
        assert relative_error(y[mask], conv(x[mask])) < 1e-12


# -- normalisations --------------------------------------------------------------------


def test_layer_and_rms_norm_against_numpy(getkey):
    x = _x() * 3 + 1
    layer, rms = recurrax.LayerNorm(D), recurrax.RMSNorm(D)
    layer = eqx.tree_at(lambda n: (n.weight, n.bias), layer, (_x(1, D, 5)[0], _x(1, D, 6)[0]))
    rms = eqx.tree_at(lambda n: n.weight, rms, _x(1, D, 7)[0])
    xn = np.asarray(x)
    mean, var = xn.mean(-1, keepdims=True), xn.var(-1, keepdims=True)
    expected = (xn - mean) / np.sqrt(var + 1e-5) * np.asarray(layer.weight) + np.asarray(layer.bias)
    assert relative_error(layer(x, None)[0], expected) < 1e-12
    expected = xn / np.sqrt((xn**2).mean(-1, keepdims=True) + 1e-6) * np.asarray(rms.weight)
    assert relative_error(rms(x, None)[0], expected) < 1e-12


def _batchnorm(momentum=0.9):
    return eqx.nn.make_with_state(recurrax.BatchNorm)(D, momentum=momentum)


def test_batchnorm_statistics_over_batch_and_valid_time():
    norm, state = _batchnorm()
    x = jax.random.normal(jax.random.key(3), (3, LENGTH, D)) * 2 + 1
    mask = jnp.arange(LENGTH)[None] < jnp.array([[12], [5], [9]])
    y, new_state = jax.vmap(
        lambda x, m: norm(x, state, mask=m), axis_name="batch", out_axes=(0, None)
    )(x, mask)
    valid = np.asarray(x)[np.asarray(mask)]  # (number of valid steps, D)
    mean, var = valid.mean(0), valid.var(0)
    expected = (np.asarray(x) - mean) / np.sqrt(var + 1e-5)
    assert relative_error(np.asarray(y)[np.asarray(mask)], expected[np.asarray(mask)]) < 1e-12
    running_mean, running_var = (np.asarray(v) for v in new_state.get(norm.stats))
    assert relative_error(running_mean, 0.1 * mean) < 1e-12
    assert relative_error(running_var, 0.9 + 0.1 * var) < 1e-12
    # Inference mode normalises with the running averages and leaves them alone.
    y_inf, same = eqx.nn.inference_mode(norm)(x[0], new_state)
    expected = (np.asarray(x[0]) - running_mean) / np.sqrt(running_var + 1e-5)
    assert relative_error(y_inf, expected) < 1e-12
    assert relative_error(same.get(norm.stats)[0], running_mean) == 0


def test_batchnorm_errors():
    norm, state = _batchnorm()
    with pytest.raises(ValueError, match="state` is None"):
        norm(_x(), None)
    with pytest.raises(ValueError, match="axis_name='batch'"):
        norm(_x(), state)
    with pytest.raises(ValueError, match="momentum"):
        recurrax.BatchNorm(D, momentum=1.0)
    with pytest.raises(ValueError, match=r"shape \(length, 4\)"):
        eqx.nn.inference_mode(norm)(_x(width=3), state)


# -- blocks ----------------------------------------------------------------------------


def _gelu(z):
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _linear(layer, z):
    out = z @ np.asarray(layer.weight, np.float64).T
    return out if layer.bias is None else out + np.asarray(layer.bias)


def _layernorm(z):
    return (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)


@pytest.mark.parametrize("prenorm", [True, False])
def test_glu_block_against_its_equations(prenorm, getkey):
    mixer = recurrax.LRU(D, 5, key=getkey())
    block = recurrax.GLUBlock(mixer, norm="layer", prenorm=prenorm, key=getkey())
    x = _x()
    y, _ = block(x)
    xn = np.asarray(x)
    z = _layernorm(xn) if prenorm else xn
    z = _gelu(np.asarray(mixer(jnp.asarray(z))))
    z = _linear(block.glu_value, z) * _sigmoid(_linear(block.glu_gate, z))
    expected = xn + z if prenorm else _layernorm(xn + z)
    assert relative_error(y, expected) < 1e-12


@pytest.mark.parametrize("conv", [None, 4])
@pytest.mark.parametrize("mlp", [None, 2])
def test_mixer_mlp_block_against_its_equations(conv, mlp, getkey):
    mixer = recurrax.MinGRU(D, 3 * D, key=getkey())
    block = recurrax.MixerMLPBlock(
        D, mixer, norm="layer", conv_kernel=conv, mlp_expansion=mlp, key=getkey()
    )
    assert block.in_proj is None and block.out_proj is not None
    x = _x()
    y, _ = block(x)
    xn = np.asarray(x)
    z = _layernorm(xn)
    if conv is not None:
        z = _conv_reference(block.conv.weight, block.conv.bias, z)
    z = _linear(block.out_proj, np.asarray(mixer(jnp.asarray(z))))
    xn = xn + z
    if mlp is not None:
        xn = xn + _linear(block.mlp_out, _gelu(_linear(block.mlp_in, _layernorm(xn))))
    assert relative_error(y, xn) < 1e-12


def test_mixer_mlp_block_projects_an_lru_in_and_out(getkey):
    block = recurrax.MixerMLPBlock(D, recurrax.LRU(3 * D, 5, key=getkey()), key=getkey())
    assert block.in_proj.weight.shape == (3 * D, D) and block.out_proj.weight.shape == (D, 3 * D)
    assert block(_x())[0].shape == (LENGTH, D)


@pytest.mark.parametrize("name", CAUSAL)
def test_blocks_stream(name, getkey):
    mixer = MIXERS[name](getkey())
    blocks = [recurrax.MixerMLPBlock(D, mixer, conv_kernel=4, mlp_expansion=2, key=getkey())]
    if mixer.output_size == D:
        blocks.append(recurrax.GLUBlock(mixer, norm="rms", key=getkey()))
    x = _x()
    for block in blocks:
        y, _ = block(x)
        h = block.init_state()
        steps = []
        for t in range(LENGTH):
            h, y_t, _ = block.step(h, x[t])
            steps.append(y_t)
        assert relative_error(jnp.stack(steps), y) < 1e-12
        h, y1, _ = block.scan(block.init_state(), x[:5])
        _, y2, _ = block.scan(h, x[5:])
        assert relative_error(jnp.concatenate([y1, y2]), y) < 1e-12


def test_dropout_uses_the_key_and_inference_turns_it_off(getkey):
    block = recurrax.GLUBlock(
        recurrax.LRU(D, 5, key=getkey()), norm="layer", dropout=0.5, key=getkey()
    )
    x, k = _x(), getkey()
    y_a, _ = block(x, key=k)
    y_b, _ = block(x, key=k)
    y_c, _ = block(x, key=getkey())
    y_none, _ = block(x)
    y_inf, _ = eqx.nn.inference_mode(block)(x, key=k)
    assert relative_error(y_a, y_b) == 0 and relative_error(y_a, y_c) > 1e-3
    assert relative_error(y_inf, y_none) == 0


def test_block_errors(getkey):
    k = getkey()
    with pytest.raises(ValueError, match="d_model to d_model"):
        recurrax.GLUBlock(recurrax.MinGRU(D, D + 1, key=k), key=k)
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="mixer"):
        recurrax.GLUBlock(eqx.nn.Linear(D, D, key=k), key=k)
    with pytest.raises(ValueError, match="dropout"):
        recurrax.GLUBlock(recurrax.LRU(D, 3, key=k), dropout=1.0, key=k)
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="norm"):
        recurrax.GLUBlock(recurrax.LRU(D, 3, key=k), norm="group", key=k)
    with pytest.raises(ValueError, match="conv_kernel"):
        recurrax.MixerMLPBlock(D, recurrax.LRU(D, 3, key=k), conv_kernel=0, key=k)
    block = recurrax.GLUBlock(recurrax.LRU(D, 3, bidirectional=True, key=k), norm=None, key=k)
    with pytest.raises(ValueError, match=r"shape \(length, 4\)"):
        block(_x(width=D + 1))
    with pytest.raises(ValueError, match="bidirectional"):
        block.scan(None, _x())
