"""Parameter groups, the optimiser, the schedule, and the train/eval steps."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxtyping import Array, Float

import recurrax
from recurrax import (
    eval_step,
    make_eval_step,
    make_optimizer,
    make_train_step,
    NO_DECAY_TYPES,
    param_labels,
    RECURRENT_FIELDS,
    train_step,
    warmup_cosine_schedule,
)

from .helpers import tree_allclose


LRU_GROUPS = {
    **dict.fromkeys(["nu_log", "theta_log", "gamma_log", "B_re", "B_im"], "recurrent"),
    **dict.fromkeys(["C_re", "C_im", "D"], "decay"),
}
SSM_GROUPS = {
    **dict.fromkeys(["Lambda_re_log", "Lambda_im", "log_step", "B_re", "B_im"], "recurrent"),
    **dict.fromkeys(["C_re", "C_im", "D"], "decay"),
}


class Decay(recurrax.AbstractRecurrentLayer):
    """A user-defined recurrent layer: h_t = sigmoid(a) h_{t-1} + W x_t."""

    a_logit: Float[Array, " hidden"]
    weight: Float[Array, "hidden input"]
    input_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)
    bidirectional: bool = eqx.field(static=True)
    log_space: bool = eqx.field(static=True)
    method: recurrax.AbstractScan | None

    def __init__(self, input_size, hidden_size, *, key):
        self.a_logit = jnp.zeros((hidden_size,))
        self.weight = jax.random.normal(key, (hidden_size, input_size))
        self.input_size, self.output_size = input_size, hidden_size
        self.bidirectional = False
        self.log_space = False
        self.method = None

    def init_state(self):
        return jnp.zeros(self.a_logit.shape, self.a_logit.dtype)

    def coefficients(self, x):
        return jax.nn.sigmoid(self.a_logit), x @ self.weight.T

    def readout(self, h, x):
        return h


def _key(i):
    return jax.random.key(i)


# (id, constructor, {field: group} for every field holding parameters)
LAYERS = [
    ("LRU", lambda: recurrax.LRU(3, 4, key=_key(0)), LRU_GROUPS),
    ("LRU-bidirectional", lambda: recurrax.LRU(3, 4, bidirectional=True, key=_key(0)), LRU_GROUPS),
    ("SSM-per_state", lambda: recurrax.DiagonalSSM(3, 4, key=_key(0)), SSM_GROUPS),
    (
        "SSM-per_feature",
        lambda: recurrax.DiagonalSSM(3, 4, delta="per_feature", key=_key(0)),
        SSM_GROUPS,
    ),
    (
        "MinGRU",
        lambda: recurrax.MinGRU(3, 4, key=_key(0)),
        dict.fromkeys(["linear_z", "linear_h"], "no_decay"),
    ),
    (
        "MinGRU-learned-h0",
        lambda: recurrax.MinGRU(3, 4, learn_initial_state=True, key=_key(0)),
        dict.fromkeys(["linear_z", "linear_h", "initial_state"], "no_decay"),
    ),
    (
        "MinLSTM",
        lambda: recurrax.MinLSTM(3, 4, key=_key(0)),
        dict.fromkeys(["linear_f", "linear_i", "linear_h"], "no_decay"),
    ),
    (
        "MinLSTM-learned-h0",
        lambda: recurrax.MinLSTM(3, 4, learn_initial_state=True, key=_key(0)),
        dict.fromkeys(["linear_f", "linear_i", "linear_h", "initial_state"], "no_decay"),
    ),
    (
        "GRU",
        lambda: recurrax.GRU(3, 4, key=_key(0)),
        dict.fromkeys(["weight_ih", "weight_hh", "bias", "bias_n"], "no_decay"),
    ),
    (
        "LSTM",
        lambda: recurrax.LSTM(3, 4, key=_key(0)),
        dict.fromkeys(["weight_ih", "weight_hh", "bias"], "no_decay"),
    ),
    (
        "eqx.nn.GRUCell",
        lambda: eqx.nn.GRUCell(3, 4, key=_key(0)),
        dict.fromkeys(["weight_ih", "weight_hh", "bias", "bias_n"], "no_decay"),
    ),
    (
        "user-layer",
        lambda: Decay(3, 4, key=_key(0)),
        dict.fromkeys(["a_logit", "weight"], "no_decay"),
    ),
    (
        "RGLRU",
        lambda: recurrax.RGLRU(4, key=_key(0)),
        {"a_param": "recurrent", "input_gate": "decay", "recurrence_gate": "decay"},
    ),
    (
        "RGLRU-heads",
        lambda: recurrax.RGLRU(4, num_heads=2, key=_key(0)),
        {"a_param": "recurrent", "input_gate": "decay", "recurrence_gate": "decay"},
    ),
    (
        "SelectiveSSM",
        lambda: recurrax.SelectiveSSM(3, 4, key=_key(0)),
        {
            **dict.fromkeys(
                ["Lambda_re_log", "Lambda_im", "step_proj", "B_re", "B_im"], "recurrent"
            ),
            **dict.fromkeys(["C_re", "C_im", "D"], "decay"),
        },
    ),
    (
        "SelectiveSSM-bc",
        lambda: recurrax.SelectiveSSM(3, 4, selective_bc=True, key=_key(0)),
        {
            **dict.fromkeys(["Lambda_re_log", "Lambda_im", "step_proj", "B_proj"], "recurrent"),
            **dict.fromkeys(["C_proj", "D"], "decay"),
        },
    ),
    (
        "Linear",
        lambda: eqx.nn.Linear(3, 4, key=_key(0)),
        dict.fromkeys(["weight", "bias"], "decay"),
    ),
    ("LayerNorm", lambda: eqx.nn.LayerNorm(4), dict.fromkeys(["weight", "bias"], "decay")),
]


def _groups_by_field(labels) -> dict[str, set[str]]:
    """{top-level field: the set of labels of the array leaves below it}."""
    out: dict[str, set[str]] = {}
    for path, label in jax.tree_util.tree_leaves_with_path(labels):
        out.setdefault(path[0].name, set()).add(label)
    return out


def _check_structure(model, labels):
    params = eqx.filter(model, eqx.is_inexact_array)
    assert jax.tree.structure(labels) == jax.tree.structure(params)
    assert all(label in ("recurrent", "no_decay", "decay") for label in jax.tree.leaves(labels))


@pytest.mark.parametrize("make, expected", [p[1:] for p in LAYERS], ids=[p[0] for p in LAYERS])
def test_labels_cover_exactly_the_intended_fields(make, expected):
    layer = make()
    labels = param_labels(layer)
    _check_structure(layer, labels)
    assert _groups_by_field(labels) == {field: {group} for field, group in expected.items()}


class Block(eqx.Module):
    norm: eqx.nn.LayerNorm
    mixer: Any
    mlp: eqx.nn.MLP


class Model(eqx.Module):
    encoder: eqx.nn.Linear
    blocks: tuple
    extra: list
    head: eqx.nn.Linear


def _nested_model():
    keys = jax.random.split(_key(1), 8)

    def block(mixer, key):
        return Block(eqx.nn.LayerNorm(3), mixer, eqx.nn.MLP(3, 3, 6, 1, key=key))

    return Model(
        encoder=eqx.nn.Linear(2, 3, key=keys[0]),
        blocks=(
            block(recurrax.LRU(3, 4, key=keys[1]), keys[2]),
            block(recurrax.DiagonalSSM(3, 4, delta="per_feature", key=keys[3]), keys[4]),
        ),
        extra=[recurrax.MinGRU(3, 3, key=keys[5]), {"lstm": recurrax.LSTM(3, 3, key=keys[6])}],
        head=eqx.nn.Linear(3, 1, key=keys[7]),
    )


def _same_labels(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and jax.tree.leaves(a) == jax.tree.leaves(
        b
    )


def test_labels_of_nested_layers():
    model = _nested_model()
    labels = param_labels(model)
    _check_structure(model, labels)
    for block, block_labels in zip(model.blocks, labels.blocks):
        assert _same_labels(block_labels.mixer, param_labels(block.mixer))
        assert set(jax.tree.leaves((block_labels.norm, block_labels.mlp))) == {"decay"}
    assert set(jax.tree.leaves(labels.extra)) == {"no_decay"}
    assert set(jax.tree.leaves((labels.encoder, labels.head))) == {"decay"}
    counts = {g: jax.tree.leaves(labels).count(g) for g in ("recurrent", "no_decay", "decay")}
    # LRU and SSM: 5 recurrent each; MinGRU 4 + LSTM 3 no_decay; the rest decay.
    assert counts["recurrent"] == 10
    assert counts["no_decay"] == 7
    n_params = len(jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    assert counts["decay"] == n_params - 17


def test_custom_tables_and_precedence():
    model = _nested_model()
    # A whole block "no_decay": its LRU keeps its own groups (the more specific entry).
    labels = param_labels(model, no_decay_types=(*NO_DECAY_TYPES, Block))
    lru_block = labels.blocks[0]
    assert _same_labels(lru_block.mixer, param_labels(model.blocks[0].mixer))
    assert set(jax.tree.leaves((lru_block.norm, lru_block.mlp))) == {"no_decay"}
    assert set(jax.tree.leaves((labels.encoder, labels.head))) == {"decay"}
    # A user layer given a recurrent group.
    layer = Decay(3, 4, key=_key(0))
    labels = param_labels(layer, recurrent_fields={**RECURRENT_FIELDS, Decay: {"a_logit"}})
    assert _groups_by_field(labels) == {"a_logit": {"recurrent"}, "weight": {"decay"}}
    # Empty tables: the layers' own declarations still decide.
    labels = param_labels(model, recurrent_fields={}, no_decay_types=())
    assert _same_labels(labels, param_labels(model))
    # A table entry overrides a declaration: an LRU with no recurrent fields decays whole.
    lru = model.blocks[0].mixer
    labels = param_labels(lru, recurrent_fields={recurrax.LRU: ()})
    assert set(jax.tree.leaves(labels)) == {"decay"}


def test_label_table_errors():
    lru = recurrax.LRU(3, 4, key=_key(0))
    with pytest.raises(ValueError, match="nu_lgo"):
        param_labels(lru, recurrent_fields={recurrax.LRU: {"nu_lgo"}})
    with pytest.raises(ValueError, match="single string"):
        param_labels(lru, recurrent_fields={recurrax.LRU: "nu_log"})


# -- the optimiser ----------------------------------------------------------------------------


def _params(model):
    return eqx.filter(model, eqx.is_inexact_array)


def _global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))


def _small_model():
    """One layer of each group, nested in containers."""
    keys = jax.random.split(_key(2), 3)
    return (
        eqx.nn.Linear(2, 3, key=keys[0]),
        [recurrax.LRU(3, 4, key=keys[1]), {"rnn": recurrax.MinGRU(3, 3, key=keys[2])}],
    )


@eqx.filter_jit
def _update(optimizer, grads, state, params):
    with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
        updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _one_update(optimizer, model, grads, steps=1):
    params = _params(model)
    state = optimizer.init(params)
    for _ in range(steps):
        params, state = _update(optimizer, grads, state, params)
    return params, state


def test_weight_decay_only_on_the_decay_group():
    model = _small_model()
    labels = param_labels(model)
    lr, wd = 0.1, 0.5
    zero = jax.tree.map(jnp.zeros_like, _params(model))
    for clip_norm in (None, 1.0):
        optimizer = make_optimizer(model, learning_rate=lr, weight_decay=wd, clip_norm=clip_norm)
        new, _ = _one_update(optimizer, model, zero)
        for label, p, q in zip(
            jax.tree.leaves(labels), jax.tree.leaves(_params(model)), jax.tree.leaves(new)
        ):
            if label == "decay":  # decoupled decay: p <- p - lr * wd * p
                np.testing.assert_allclose(q, (1 - lr * wd) * p, rtol=1e-12)
            else:
                np.testing.assert_array_equal(q, p)


def _unit_grads(model, key):
    """Gradients with |g| >= 1, so that Adam's first step is lr * sign(g) to ~1e-8."""
    leaves, treedef = jax.tree.flatten(_params(model))
    keys = jax.random.split(key, len(leaves))
    grads = [
        (1 + jnp.abs(jax.random.normal(k, p.shape, p.dtype)))
        * jnp.where(jax.random.bernoulli(k, 0.5, p.shape), 1.0, -1.0).astype(p.dtype)
        for k, p in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, grads)


def test_recurrent_group_moves_by_lr_factor(getkey):
    lr_factor = 0.25
    model = _small_model()
    labels = jax.tree.leaves(param_labels(model))
    grads = _unit_grads(model, getkey())
    lr = 0.01
    scale = {"recurrent": lr_factor, "no_decay": 1.0, "decay": 1.0}
    constant = make_optimizer(
        model, learning_rate=lr, weight_decay=0.0, lr_factor=lr_factor, clip_norm=None
    )

    def schedule(step):
        return lr * (step + 1)

    scheduled = make_optimizer(
        model, learning_rate=schedule, weight_decay=0.0, lr_factor=lr_factor, clip_norm=None
    )
    # Adam's bias-corrected moments of constant gradients are g and |g| at every step, so
    # step k moves each parameter by lr_k * sign(g) (times lr_factor for "recurrent").
    for optimizer, steps, total_lr in ((constant, 1, lr), (scheduled, 2, lr + 2 * lr)):
        new, _ = _one_update(optimizer, model, grads, steps)
        for label, p, q, g in zip(
            labels,
            jax.tree.leaves(_params(model)),
            jax.tree.leaves(new),
            jax.tree.leaves(grads),
        ):
            expected = p - scale[label] * total_lr * jnp.sign(g)
            # Adam's first step is lr g / (|g| + eps): within lr eps of lr sign(g) for |g| >= 1.
            np.testing.assert_allclose(q, expected, rtol=0, atol=2e-8 * total_lr)


def _adam_first_moments(opt_state):
    states = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
    return [s.mu for s in states if isinstance(s, optax.ScaleByAdamState)]


@pytest.mark.parametrize("clip_norm", [None, 1.0, 1e3])
def test_gradient_clipping_by_global_norm_over_all_groups(clip_norm):
    model = _small_model()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), _params(model))
    norm = _global_norm(grads)
    b1 = 0.9
    optimizer = make_optimizer(model, learning_rate=1e-3, clip_norm=clip_norm, b1=b1)
    _, opt_state = _one_update(optimizer, model, grads)
    # After one step each group's Adam first moment is (1 - b1) * (clipped gradient).
    moments = _adam_first_moments(opt_state)
    assert len(moments) == 3  # one Adam per group
    clipped = [jax.tree.map(lambda m: m / (1 - b1), mu) for mu in moments]
    clipped_norm = _global_norm(clipped)
    expected = norm if clip_norm is None else min(norm, clip_norm)
    assert norm > 1.0
    assert math.isclose(clipped_norm, expected, rel_tol=1e-9)
    # The direction is kept: every entry is scaled by the same factor.
    assert set(np.round(np.concatenate([np.ravel(x) for x in jax.tree.leaves(clipped)]), 9)) == {
        round(3.0 * expected / norm, 9)
    }


# -- the schedule -----------------------------------------------------------------------------


def test_warmup_cosine_schedule_values():
    peak, floor = 1e-3, 1e-7
    schedule = warmup_cosine_schedule(peak, 1000)  # warm-up: 100 steps
    expected = {
        0: floor,
        50: floor + 0.5 * (peak - floor),
        100: peak,
        550: floor + 0.5 * (peak - floor),  # the middle of the cosine
        1000: floor,
        5000: floor,
    }
    for step, value in expected.items():
        assert math.isclose(float(schedule(step)), value, rel_tol=1e-12), step
    jitted = jax.jit(schedule)
    steps = jnp.arange(0, 1001, 7)
    values = jax.vmap(jitted)(steps)
    np.testing.assert_allclose(values, [float(schedule(int(s))) for s in steps], rtol=1e-12)
    # An independent implementation of the same curve (optax's decay_steps counts warm-up).
    reference = optax.warmup_cosine_decay_schedule(floor, peak, 100, 1000, end_value=floor)
    with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
        expected_values = jax.vmap(reference)(steps)
    np.testing.assert_allclose(values, expected_values, rtol=1e-6)


def test_warmup_cosine_schedule_edges():
    no_warmup = warmup_cosine_schedule(1.0, 10, warmup_fraction=0.0, floor=0.0)
    assert float(no_warmup(0)) == 1.0 and float(no_warmup(10)) == 0.0
    assert math.isclose(float(no_warmup(5)), 0.5, rel_tol=1e-12)
    all_warmup = warmup_cosine_schedule(1.0, 10, warmup_fraction=1.0, floor=0.0)
    assert float(all_warmup(0)) == 0.0 and float(all_warmup(5)) == 0.5
    assert float(all_warmup(10)) == 1.0
    # int32 step counts, as optax passes them.
    assert math.isclose(float(no_warmup(jnp.asarray(5, jnp.int32))), 0.5, rel_tol=1e-12)


# -- argument validation ----------------------------------------------------------------------

BAD_OPTIMIZER_ARGUMENTS = [
    ({"learning_rate": 0.0}, "learning_rate=0.0"),
    ({"learning_rate": -1e-3}, "learning_rate=-0.001"),
    ({"learning_rate": float("nan")}, "learning_rate=nan"),
    ({"learning_rate": 1e-3, "weight_decay": -0.1}, "weight_decay=-0.1"),
    ({"learning_rate": 1e-3, "lr_factor": 0.0}, "lr_factor=0.0"),
    ({"learning_rate": 1e-3, "lr_factor": -0.5}, "lr_factor=-0.5"),
    ({"learning_rate": 1e-3, "clip_norm": 0.0}, "clip_norm=0.0"),
    ({"learning_rate": 1e-3, "clip_norm": float("inf")}, "clip_norm=inf"),
    ({"learning_rate": 1e-3, "b1": 1.0}, "b1=1.0"),
    ({"learning_rate": 1e-3, "b2": -0.1}, "b2=-0.1"),
    ({"learning_rate": 1e-3, "eps": 0.0}, "eps=0.0"),
]


@pytest.mark.parametrize("kwargs, message", BAD_OPTIMIZER_ARGUMENTS)
def test_make_optimizer_argument_errors(kwargs, message):
    model = eqx.nn.Linear(2, 2, key=_key(0))
    with pytest.raises(ValueError, match="make_optimizer: `" + message.split("=")[0]) as info:
        make_optimizer(model, **kwargs)
    assert message in str(info.value)


BAD_SCHEDULE_ARGUMENTS = [
    ((0.0, 10), {}, "peak_value=0.0"),
    ((1e-3, 0), {}, "total_steps=0"),
    ((1e-3, 10), {"warmup_fraction": 1.5}, "warmup_fraction=1.5"),
    ((1e-3, 10), {"warmup_fraction": -0.1}, "warmup_fraction=-0.1"),
    ((1e-3, 10), {"floor": -1e-7}, "floor=-1e-07"),
    ((1e-3, 10), {"floor": 1.0}, "floor=1.0"),
]


@pytest.mark.parametrize("args, kwargs, message", BAD_SCHEDULE_ARGUMENTS)
def test_schedule_argument_errors(args, kwargs, message):
    with pytest.raises(ValueError, match="warmup_cosine_schedule: `") as info:
        warmup_cosine_schedule(*args, **kwargs)
    assert message in str(info.value)


# -- train and eval steps ---------------------------------------------------------------------


class Regressor(eqx.Module):
    encoder: eqx.nn.Linear
    lru: recurrax.LRU
    readout: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.encoder = eqx.nn.Linear(2, 4, key=k1)
        self.lru = recurrax.LRU(4, 8, r_min=0.5, r_max=0.95, key=k2)
        self.readout = eqx.nn.Linear(4, "scalar", key=k3)

    def __call__(self, x):
        return jax.vmap(self.readout)(self.lru(jax.vmap(self.encoder)(x)))


def _regression_batch(key, batch=8, length=16):
    """Targets from a linear filter: y_t = 0.8 y_{t-1} + x_t[0] - 0.5 x_t[1]."""
    x = jax.random.normal(key, (batch, length, 2))
    u = x[..., 0] - 0.5 * x[..., 1]
    y = recurrax.linear_recurrence(jnp.asarray(0.8, u.dtype), u.T).T
    return x, y


def mse_loss(model, state, batch, key):
    x, y = batch
    pred = jax.vmap(model)(x)
    loss = jnp.mean((pred - y) ** 2)
    return loss, (state, {"max_error": jnp.max(jnp.abs(pred - y))})


def test_train_step_decreases_the_loss():
    model = Regressor(_key(0))
    batch = _regression_batch(_key(1))
    optimizer = make_optimizer(model, learning_rate=1e-2, lr_factor=0.5, weight_decay=0.01)
    opt_state = optimizer.init(_params(model))
    step = make_train_step(optimizer, eqx.debug.assert_max_traces(mse_loss, max_traces=1))
    losses = []
    for _ in range(30):
        model, state, opt_state, metrics = step(model, None, opt_state, batch, None)
        assert state is None
        assert set(metrics) == {"loss", "grad_norm", "max_error"}
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0], losses
    final = eval_step(model, None, batch, loss_fn=mse_loss)
    assert float(final["loss"]) < losses[-2]


def test_train_step_donation():
    model = Regressor(_key(0))
    batch = _regression_batch(_key(1))
    optimizer = make_optimizer(model, learning_rate=1e-2)
    opt_state = optimizer.init(_params(model))
    plain = make_train_step(optimizer, mse_loss)(model, None, opt_state, batch, None)
    # Without donation the caller's model, optimiser state and batch stay usable.
    assert not any(x.is_deleted() for x in jax.tree.leaves((_params(model), opt_state, batch)))
    # With donation the model and optimiser state may be consumed, the batch never.
    model_copy, opt_state_copy = jax.tree.map(jnp.copy, (model, opt_state))
    step = make_train_step(optimizer, mse_loss, donate=True)
    donated = step(model_copy, None, opt_state_copy, batch, None)
    assert tree_allclose(donated, plain, rtol=1e-12, atol=1e-14)
    assert not any(x.is_deleted() for x in jax.tree.leaves(batch))
    np.testing.assert_array_equal(np.asarray(batch[0]), np.asarray(_regression_batch(_key(1))[0]))
    # The returned values feed the next donated step.
    again = step(donated[0], None, donated[2], batch, None)
    assert float(again[3]["loss"]) < float(donated[3]["loss"])


class Counter(eqx.Module):
    """A linear map whose state counts the calls (stands in for BatchNorm statistics)."""

    linear: eqx.nn.Linear
    calls: eqx.nn.StateIndex

    def __init__(self, key):
        self.linear = eqx.nn.Linear(2, 1, key=key)
        self.calls = eqx.nn.StateIndex(jnp.zeros((), jnp.int32))

    def __call__(self, x, state):
        return jax.vmap(self.linear)(x), state.set(self.calls, state.get(self.calls) + 1)


def counting_loss(model, state, batch, key):
    pred, state = model(batch, state)
    return jnp.mean(pred**2), (state, {})


def test_train_step_threads_the_state():
    model, state = eqx.nn.make_with_state(Counter)(_key(0))
    optimizer = make_optimizer(model, learning_rate=1e-2)
    opt_state = optimizer.init(_params(model))
    step = make_train_step(optimizer, counting_loss)
    batch = jnp.ones((4, 2))
    for _ in range(3):
        model, state, opt_state, _ = step(model, state, opt_state, batch, None)
    assert int(state.get(model.calls)) == 3
    metrics = eval_step(model, state, batch, loss_fn=counting_loss)
    assert set(metrics) == {"loss"}


class Noisy(eqx.Module):
    dropout: eqx.nn.Dropout
    scale: Float[Array, ""]

    def __call__(self, x, *, key):
        return self.scale * self.dropout(x, key=key)


def dropout_loss(model, state, batch, key):
    return jnp.sum(model(batch, key=key)), (state, {"mean": jnp.mean(batch)})


def test_eval_step_runs_in_inference_mode():
    model = Noisy(eqx.nn.Dropout(0.5), jnp.asarray(2.0))
    batch = jnp.arange(1.0, 9.0)
    # Training mode: dropout is active and needs a key.
    optimizer = make_optimizer(model, learning_rate=1e-2)
    opt_state = optimizer.init(_params(model))
    _, _, _, train_metrics = train_step(
        model, None, opt_state, batch, _key(0), optimizer=optimizer, loss_fn=dropout_loss
    )
    assert float(train_metrics["loss"]) != 2 * float(jnp.sum(batch))  # (for this key)
    # Inference mode: dropout off, no key needed, deterministic.
    for evaluate in (eval_step, make_eval_step(dropout_loss)):
        kwargs = {"loss_fn": dropout_loss} if evaluate is eval_step else {}
        metrics = evaluate(model, None, batch, **kwargs)
        assert float(metrics["loss"]) == 2 * float(jnp.sum(batch))
        assert float(metrics["mean"]) == 4.5
    assert model.dropout.inference is False  # the caller's model is unchanged


@pytest.mark.parametrize("mixer, block", [("lru", "glu"), ("ssm", "mlp"), ("minlstm", "mlp")])
def test_labels_of_a_sequence_model(mixer, block):
    """In a whole model, the mixers' fields follow their layer's recipe and every other
    parameter (encoder, norms, GLU/MLP, projections, convolution, head) is decayed."""
    extra = {"expansion": 2, "conv_kernel": 4, "mlp_expansion": 2} if block == "mlp" else {}
    config = recurrax.ModelConfig(
        mixer=mixer, block=block, d_model=8, depth=2, vocab_size=5, norm="layer", **extra
    )
    model, _ = config.build(key=jax.random.key(0))
    labels = param_labels(model)
    for block_labels, block_model in zip(labels.blocks, model.blocks):
        mixer_labels = jax.tree.leaves(block_labels.mixer)
        if mixer == "lru":
            assert block_labels.mixer.nu_log == "recurrent" and block_labels.mixer.D == "decay"
            assert sorted(mixer_labels).count("recurrent") == 5
        elif mixer == "ssm":
            assert block_labels.mixer.log_step == "recurrent"
            assert block_labels.mixer.C_re == "decay"
            assert sorted(mixer_labels).count("recurrent") == 5
        else:
            assert set(mixer_labels) == {"no_decay"}
        rest = eqx.tree_at(lambda b: b.mixer, block_labels, None)
        assert set(jax.tree.leaves(rest)) == {"decay"}
        assert len(jax.tree.leaves(block_labels)) == len(
            jax.tree.leaves(eqx.filter(block_model, eqx.is_inexact_array))
        )
    outside = eqx.tree_at(lambda m: m.blocks, labels, ())
    assert set(jax.tree.leaves(outside)) == {"decay"}
