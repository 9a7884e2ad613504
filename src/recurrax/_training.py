r"""Training: optimiser parameter groups, the learning-rate schedule, train and eval steps,
and data-parallel training over a 1-D device mesh.

The optimiser follows the LRU paper (App. D.2) and the minRNN paper: the recurrent parameters of
an LRU or a diagonal SSM ($\nu$, $\theta$, $\gamma$, $B$, and $\Lambda$, $\Delta$) get the
learning rate base $\times$ `lr_factor` and no weight decay; the parameters of the minimal and
classic RNNs get the base learning rate and no weight decay; everything else gets AdamW with
weight decay.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PRNGKeyArray, PyTree, Scalar

from ._mixer import AbstractMixer
from ._registry import registered_mixers


# -- parameter groups -------------------------------------------------------------------------

RECURRENT = "recurrent"
NO_DECAY = "no_decay"
DECAY = "decay"


class _DeclaredRecurrentFields(Mapping):
    """`{layer type: recurrent_fields}` of the registered mixers that declare some, read when
    used (so it follows later registrations)."""

    def _table(self) -> dict[type, frozenset[str]]:
        layers = (spec.layer for spec in registered_mixers().values())
        return {cls: cls.recurrent_fields for cls in layers if cls.recurrent_fields}

    def __getitem__(self, cls):
        return self._table()[cls]

    def __iter__(self):
        return iter(self._table())

    def __len__(self):
        return len(self._table())

    def __repr__(self):
        names = {cls.__name__: sorted(f) for cls, f in self._table().items()}
        return f"RECURRENT_FIELDS({names})"


RECURRENT_FIELDS: Mapping[type, frozenset[str]] = _DeclaredRecurrentFields()
"""The recurrent fields that the registered mixers declare, `{layer type:
layer.recurrent_fields}` (read-only; e.g. [`recurrax.LRU`][]: `nu_log`, `theta_log`,
`gamma_log`, `B_re`, `B_im`). Layers declare their own (the class variable
`recurrent_fields` of [`recurrax.AbstractMixer`][]), and [`recurrax.param_labels`][] reads
the declarations; this table is kept for code written before, e.g.
`recurrent_fields={**RECURRENT_FIELDS, MyLayer: {"a_log"}}`, which still works."""

NO_DECAY_TYPES: tuple[type, ...] = (eqx.nn.GRUCell, eqx.nn.LSTMCell)
"""Equinox's own recurrent cells, all of whose parameters form the `"no_decay"` group (as the
recurrax mixers that declare `no_weight_decay`: minGRU, minLSTM, GRU, LSTM and every
[`recurrax.AbstractRecurrentLayer`][] without `recurrent_fields`). Extend it for other
layers that cannot declare `no_weight_decay` themselves."""


def _field_name(path: tuple) -> str | None:
    key = path[0] if len(path) == 1 else None
    return key.name if isinstance(key, jax.tree_util.GetAttrKey) else None


def _check_tables(recurrent_fields, no_decay_types) -> None:
    for cls, names in recurrent_fields.items():
        if not isinstance(cls, type):
            raise ValueError(
                f"param_labels: the keys of `recurrent_fields` must be layer types, got {cls!r}."
            )
        if isinstance(names, str):
            raise ValueError(
                f"param_labels: `recurrent_fields[{cls.__name__}]` must be a collection of "
                f"field names, got the single string {names!r}."
            )
        if dataclasses.is_dataclass(cls):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(
                    f"param_labels: `recurrent_fields[{cls.__name__}]` names {unknown}, which "
                    f"are not fields of {cls.__name__} (its fields: {sorted(known)})."
                )
    for cls in no_decay_types:
        if not isinstance(cls, type):
            raise ValueError(
                f"param_labels: `no_decay_types` must contain layer types, got {cls!r}."
            )


def _label(node, group: str, recurrent_fields, no_decay_types):
    """Labels for the array leaves of `node` (arrays or `None` after `eqx.filter`), `group`
    unless a layer below says otherwise (a table entry, else the layer's declarations)."""
    if node is None:
        return None
    if eqx.is_array(node):
        return group
    recurrent = next((f for t, f in recurrent_fields.items() if isinstance(node, t)), None)
    mixer = isinstance(node, AbstractMixer)
    if recurrent is None and mixer and type(node).recurrent_fields:
        recurrent = type(node).recurrent_fields
    if recurrent is None and (
        isinstance(node, no_decay_types) or (mixer and type(node).no_weight_decay)
    ):
        group = NO_DECAY
    # One level down: the node's children, with their attribute names where it has them.
    children, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(children) == 1 and children[0][1] is node:
        return None  # a leaf that is not an array (only `None` appears after `eqx.filter`)
    labels = []
    for path, child in children:
        child_group = group
        if recurrent is not None:
            child_group = RECURRENT if _field_name(path) in recurrent else DECAY
        labels.append(_label(child, child_group, recurrent_fields, no_decay_types))
    return jax.tree_util.tree_unflatten(treedef, labels)


def param_labels(
    model: PyTree,
    *,
    recurrent_fields: Mapping[type, Collection[str]] | None = None,
    no_decay_types: tuple[type, ...] = NO_DECAY_TYPES,
) -> PyTree[str | None]:
    r"""The optimiser group of every parameter: `"recurrent"`, `"no_decay"` or `"decay"`.

    The model is searched for layers at any depth (in tuples, lists, dicts, blocks, other
    modules). Each layer says its group through its class variables (see
    [`recurrax.AbstractMixer`][]): within a layer that declares `recurrent_fields`, those
    fields are `"recurrent"` and its other parameters `"decay"`; within a layer that declares
    `no_weight_decay` (or whose type is in `no_decay_types`) every parameter is `"no_decay"`;
    everything else (encoders, MLP/GLU linears, norms, heads) is `"decay"`. A layer nested
    inside another is labelled by its own declarations. The table `recurrent_fields`, when
    given, takes precedence over the declarations of the types it lists (the first that
    matches by `isinstance`).

    The declarations of the built-in layers:

    - [`recurrax.LRU`][]: `nu_log`, `theta_log`, `gamma_log`, `B_re`, `B_im` are
        `"recurrent"` (base × `lr_factor`, no decay); `C_re`, `C_im`, `D` are `"decay"`.
    - [`recurrax.DiagonalSSM`][]: `Lambda_re_log`, `Lambda_im`, `log_step`, `B_re`, `B_im`
        are `"recurrent"`; `C_re`, `C_im`, `D` are `"decay"`.
    - [`recurrax.RGLRU`][]: `a_param` is `"recurrent"`; the gates are `"decay"`.
    - [`recurrax.SelectiveSSM`][]: `Lambda_re_log`, `Lambda_im`, `step_proj`, `B_re`,
        `B_im`, `B_proj` are `"recurrent"`; `C_re`, `C_im`, `C_proj`, `D` are `"decay"`.
    - [`recurrax.MinGRU`][], [`recurrax.MinLSTM`][], [`recurrax.GRU`][],
        [`recurrax.LSTM`][], any other [`recurrax.AbstractRecurrentLayer`][], and
        `eqx.nn.GRUCell`, `eqx.nn.LSTMCell`: all `"no_decay"` (base, no decay).
    - Anything else: `"decay"` (AdamW with weight decay).

    **Arguments:**

    - `model`: any pytree, usually an `equinox.Module`.
    - `recurrent_fields`: `None`, or `{layer type: names of its recurrent fields}` for
        layers that do not declare theirs (or to override a declaration).
    - `no_decay_types`: more layer types whose parameters are all `"no_decay"`; default
        [`recurrax.NO_DECAY_TYPES`][]. Recurrent fields take precedence.

    **Returns:**

    A pytree with the structure of `eqx.filter(model, eqx.is_inexact_array)` whose array
    leaves are replaced by the group names (other leaves `None`): the `param_labels` of
    `optax.multi_transform`.

    **Raises:**

    `ValueError` if a key of `recurrent_fields` is not a type or lists a name that is not a
    field of it, or if `no_decay_types` holds something other than types.

    !!! example

        ```python
        import jax
        import recurrax

        labels = recurrax.param_labels(recurrax.LRU(2, 4, key=jax.random.key(0)))
        print(labels.nu_log, labels.C_re)                        # recurrent decay
        ```
    """
    no_decay_types = tuple(no_decay_types)
    recurrent_fields = {} if recurrent_fields is None else recurrent_fields
    _check_tables(recurrent_fields, no_decay_types)
    fields = {cls: frozenset(names) for cls, names in recurrent_fields.items()}
    params = eqx.filter(model, eqx.is_inexact_array)
    return _label(params, DECAY, fields, no_decay_types)


# -- argument checks --------------------------------------------------------------------------


def _real(value) -> float | None:
    """`value` as a float if it is a real number (not a bool), else `None`."""
    if isinstance(value, (bool, str, bytes)):  # float("1e-3") would accept a string
        return None
    try:
        return float(value) if np.ndim(value) == 0 and np.isrealobj(value) else None
    except (TypeError, ValueError):
        return None


def _check(owner: str, name: str, value, ok: Callable[[float], bool], requirement: str) -> float:
    real = _real(value)
    if real is None or math.isnan(real) or not ok(real):
        raise ValueError(f"{owner}: `{name}` must be {requirement}, got {name}={value!r}.")
    return real


def _positive(owner, name, value) -> float:
    return _check(owner, name, value, lambda v: 0 < v < math.inf, "a finite positive number")


def _check_learning_rate(owner: str, learning_rate) -> None:
    if not callable(learning_rate):
        _check(
            owner,
            "learning_rate",
            learning_rate,
            lambda v: 0 < v < math.inf,
            "a finite positive number or an optax schedule",
        )


# -- optimiser and schedule -------------------------------------------------------------------


def make_optimizer(
    model: PyTree,
    *,
    learning_rate: float | optax.Schedule,
    weight_decay: float = 0.05,
    lr_factor: float = 1.0,
    clip_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    recurrent_fields: Mapping[type, Collection[str]] | None = None,
    no_decay_types: tuple[type, ...] = NO_DECAY_TYPES,
) -> optax.GradientTransformation:
    r"""The optimiser of the LRU paper (App. D.2) with the groups of
    [`recurrax.param_labels`][]:

    1. clip the gradient of *all* parameters together to global norm `clip_norm`;
    2. `"decay"`: AdamW at `learning_rate` with decoupled weight decay `weight_decay`;
    3. `"recurrent"`: Adam at `lr_factor` × `learning_rate`, no weight decay;
    4. `"no_decay"`: Adam at `learning_rate`, no weight decay.

    Use it on `eqx.filter(model, eqx.is_inexact_array)`:
    `opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import recurrax

        model = recurrax.LRU(4, 8, key=jax.random.key(0))
        schedule = recurrax.warmup_cosine_schedule(1e-3, total_steps=1000)
        optimizer = recurrax.make_optimizer(model, learning_rate=schedule, lr_factor=0.5)
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        ```

    **Arguments:**

    - `model`: the model to be trained (its layers decide the groups).
    - `learning_rate`: the base learning rate, a positive float or an optax schedule
        (e.g. [`recurrax.warmup_cosine_schedule`][]). A schedule is scaled for the recurrent
        group: `lambda step: lr_factor * schedule(step)`.
    - `weight_decay`: the decoupled weight decay of the `"decay"` group, $\ge 0$ (0.05 in
        the paper's Table 9). Like `optax.adamw` it is multiplied by the learning rate.
    - `lr_factor`: the recurrent group's learning-rate factor, positive (the paper uses
        0.1 to 0.5, Table 9).
    - `clip_norm`: the global-norm clipping threshold, positive, or `None` for no clipping.
    - `b1`, `b2`, `eps`: Adam's moment decays (in $[0, 1)$) and denominator offset ($> 0$).
    - `recurrent_fields`, `no_decay_types`: the group tables, as in
        [`recurrax.param_labels`][].

    **Returns:**

    An `optax.GradientTransformation`.

    **Raises:**

    `ValueError` naming the argument and showing its value if it is out of range.
    """
    owner = "make_optimizer"
    _check_learning_rate(owner, learning_rate)
    _check(owner, "weight_decay", weight_decay, lambda v: 0 <= v < math.inf, "finite and >= 0")
    lr_factor = _positive(owner, "lr_factor", lr_factor)
    if clip_norm is not None:
        _check(owner, "clip_norm", clip_norm, lambda v: 0 < v < math.inf, "positive or None")
    for name, value in (("b1", b1), ("b2", b2)):
        _check(owner, name, value, lambda v: 0 <= v < 1, "in [0, 1)")
    _positive(owner, "eps", eps)
    labels = param_labels(model, recurrent_fields=recurrent_fields, no_decay_types=no_decay_types)

    if callable(learning_rate):
        schedule = learning_rate

        def recurrent_lr(step):
            return lr_factor * schedule(step)

    else:
        recurrent_lr = lr_factor * learning_rate
    adam = functools.partial(optax.adam, b1=b1, b2=b2, eps=eps)
    groups = optax.multi_transform(
        {
            DECAY: optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay),
            RECURRENT: adam(recurrent_lr),
            NO_DECAY: adam(learning_rate),
        },
        # A function, not the tree itself: optax calls its `param_labels` when it is
        # callable, and a labelled model (an `eqx.Module` with `__call__`) is.
        lambda params: labels,
    )
    if clip_norm is None:
        return groups
    return optax.chain(optax.clip_by_global_norm(clip_norm), groups)


def warmup_cosine_schedule(
    peak_value: float,
    total_steps: int,
    *,
    warmup_fraction: float = 0.1,
    floor: float = 1e-7,
) -> optax.Schedule:
    r"""The LRU paper's schedule (App. D.2): a linear warm-up from `floor` to
    `peak_value` over the first $W = \operatorname{round}(\text{warmup\_fraction} \cdot T)$
    steps, then a cosine decay to `floor` at step $T$ = `total_steps`, and `floor` after:

    $$\eta(t) = \begin{cases}
    \eta_0 + (\eta_{\max} - \eta_0)\, t / W & t < W,\\
    \eta_0 + \tfrac12 (\eta_{\max} - \eta_0)
    \bigl(1 + \cos(\pi \min(1, \tfrac{t - W}{T - W}))\bigr) & t \ge W,
    \end{cases}$$

    with $\eta_0$ = `floor`, $\eta_{\max}$ = `peak_value`.

    **Arguments:**

    - `peak_value`: the largest learning rate, positive.
    - `total_steps`: $T$, a positive integer.
    - `warmup_fraction`: $W / T$, in $[0, 1]$ (0: start at the peak).
    - `floor`: the first and last value, in $[0, \text{peak\_value}]$ (the paper: $10^{-7}$).

    **Returns:**

    An optax schedule: `step -> learning rate`, traceable under `jax.jit`.

    **Raises:**

    `ValueError` naming the argument and showing its value if it is out of range.

    !!! example

        ```python
        import recurrax

        schedule = recurrax.warmup_cosine_schedule(1e-3, 100, warmup_fraction=0.1)
        print(float(schedule(10)))                               # 0.001: the peak, after warm-up
        ```
    """
    owner = "warmup_cosine_schedule"
    peak = _positive(owner, "peak_value", peak_value)
    if not (isinstance(total_steps, (int, np.integer)) and not isinstance(total_steps, bool)):
        raise ValueError(
            f"{owner}: `total_steps` must be a positive integer, got total_steps={total_steps!r}."
        )
    _check(owner, "total_steps", total_steps, lambda v: v > 0, "a positive integer")
    fraction = _check(owner, "warmup_fraction", warmup_fraction, lambda v: 0 <= v <= 1, "in [0, 1]")
    low = _check(owner, "floor", floor, lambda v: 0 <= v <= peak, f"in [0, peak_value={peak!r}]")
    total = int(total_steps)
    warmup = int(round(fraction * total))
    # optax's schedule counts the warm-up inside `decay_steps`; a warm-up over every step
    # (no decay left) decays in one step, to `floor` at T + 1, as the formula above says.
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=low,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=low,
    )
    # The step as a float: optax mixes it with Python floats, which strict dtype promotion
    # refuses for an integer step count.
    return lambda step: schedule(jnp.asarray(step, dtype=jnp.result_type(float)))


# -- train and eval steps ---------------------------------------------------------------------

LossFn = Callable[..., tuple[Scalar, tuple[Any, dict[str, Any]]]]
"""`loss_fn(model, state, batch, key) -> (loss, (state, metrics))`."""


def _global_norm(tree: PyTree) -> Scalar:
    r"""$\sqrt{\sum \lVert x \rVert^2}$ over the array leaves of a (real) pytree."""
    leaves = [x for x in jax.tree.leaves(tree) if eqx.is_array(x)]
    if not leaves:
        return jnp.zeros(())
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def train_step(
    model: PyTree,
    state: eqx.nn.State | None,
    opt_state: PyTree,
    batch: PyTree,
    key: PRNGKeyArray | None,
    *,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
) -> tuple[PyTree, eqx.nn.State | None, PyTree, dict[str, Any]]:
    r"""One optimisation step: the loss and its gradient with respect to the model's
    floating-point arrays, then the optimiser's update.

    The loss convention: `loss_fn(model, state, batch, key) -> (loss, (state, metrics))`,
    with `state` an `eqx.nn.State` or `None` (models with BatchNorm thread one), `batch` the
    whole batch (vmap over its examples inside `loss_fn`), `key` a PRNG key or `None` (for
    dropout), `loss` a scalar and `metrics` a dict of scalars.

    Not compiled by itself: use [`recurrax.make_train_step`][], or `eqx.filter_jit` it.

    **Arguments:**

    - `model`: the model; its inexact arrays are the parameters.
    - `state`: the model state, or `None`.
    - `opt_state`: `optimizer.init(eqx.filter(model, eqx.is_inexact_array))`.
    - `batch`: any pytree, passed to `loss_fn`.
    - `key`: a PRNG key or `None`, passed to `loss_fn`.
    - `optimizer`: e.g. [`recurrax.make_optimizer`][].
    - `loss_fn`: as above.

    **Returns:**

    `(model, state, opt_state, metrics)`: the updated model, the state returned by
    `loss_fn`, the updated optimiser state, and `loss_fn`'s metrics with `"loss"` and
    `"grad_norm"` (the global norm of the gradient before clipping) added.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import recurrax


        def loss_fn(model, state, batch, key):   # batch: inputs and targets, (3, 5, 2) each
            x, y = batch
            return jnp.mean((jax.vmap(model)(x) - y) ** 2), (state, {})


        model = recurrax.LRU(2, 4, key=jax.random.key(0))
        batch = (jnp.ones((3, 5, 2)), jnp.zeros((3, 5, 2)))
        optimizer = recurrax.make_optimizer(model, learning_rate=1e-2)
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

        model, _, opt_state, metrics = recurrax.train_step(
            model, None, opt_state, batch, None, optimizer=optimizer, loss_fn=loss_fn
        )
        print(sorted(metrics))                                   # ['grad_norm', 'loss']
        ```
    """
    grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)
    (loss, (state, metrics)), grads = grad_fn(model, state, batch, key)
    params = eqx.filter(model, eqx.is_inexact_array)
    # optax mixes Python floats with its int32 step count (e.g. Adam's b1 ** count), which
    # strict dtype promotion rejects: the update runs under standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, opt_state, params)
    model = eqx.apply_updates(model, updates)
    metrics = dict(metrics, loss=loss, grad_norm=_global_norm(grads))
    return model, state, opt_state, metrics


def _donation(donate: bool) -> str:
    if not isinstance(donate, bool):
        raise ValueError(f"`donate` must be True or False, got donate={donate!r}.")
    # The first argument, (batch, key), is never donated: the caller may use it again.
    return "all-except-first" if donate else "none"


def make_train_step(
    optimizer: optax.GradientTransformation, loss_fn: LossFn, *, donate: bool = False
) -> Callable:
    r"""[`recurrax.train_step`][] compiled with `eqx.filter_jit`, for this optimiser and loss.

    **Arguments:**

    - `optimizer`: the optimiser.
    - `loss_fn`: `loss_fn(model, state, batch, key) -> (loss, (state, metrics))`.
    - `donate`: let XLA reuse the memory of the model, state and optimiser state for their
        updated values. The arrays passed in are then deleted (on back-ends that support
        donation): use only the returned ones, and do not share one array between the
        model and the state. The batch and the key are never donated.

    **Returns:**

    `step(model, state, opt_state, batch, key) -> (model, state, opt_state, metrics)`,
    compiled once per input structure and shapes.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import recurrax


        def loss_fn(model, state, batch, key):   # batch: inputs and targets, (3, 5, 2) each
            x, y = batch
            return jnp.mean((jax.vmap(model)(x) - y) ** 2), (state, {})


        model = recurrax.LRU(2, 4, key=jax.random.key(0))
        batch = (jnp.ones((3, 5, 2)), jnp.zeros((3, 5, 2)))
        optimizer = recurrax.make_optimizer(model, learning_rate=1e-2)
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

        step = recurrax.make_train_step(optimizer, loss_fn)
        for _ in range(3):
            model, _, opt_state, metrics = step(model, None, opt_state, batch, None)
        ```
    """
    donation = _donation(donate)

    @eqx.filter_jit(donate=donation)
    def compiled(inputs, model, state, opt_state):
        batch, key = inputs
        return train_step(model, state, opt_state, batch, key, optimizer=optimizer, loss_fn=loss_fn)

    def step(model, state, opt_state, batch, key):
        return compiled((batch, key), model, state, opt_state)

    return step


def eval_step(
    model: PyTree, state: eqx.nn.State | None, batch: PyTree, *, loss_fn: LossFn
) -> dict[str, Any]:
    r"""The loss and metrics in inference mode: `eqx.nn.inference_mode(model)` (dropout
    off, BatchNorm using its running statistics) and `key=None`; the state returned by
    `loss_fn` is discarded.

    **Returns:**

    `loss_fn`'s metrics with `"loss"` added.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import recurrax


        def loss_fn(model, state, batch, key):   # batch: inputs and targets, (3, 5, 2) each
            x, y = batch
            return jnp.mean((jax.vmap(model)(x) - y) ** 2), (state, {})


        model = recurrax.LRU(2, 4, key=jax.random.key(0))
        batch = (jnp.ones((3, 5, 2)), jnp.zeros((3, 5, 2)))

        metrics = recurrax.eval_step(model, None, batch, loss_fn=loss_fn)   # {'loss': ...}
        ```
    """
    model = eqx.nn.inference_mode(model)
    loss, (_, metrics) = loss_fn(model, state, batch, None)
    return dict(metrics, loss=loss)


def make_eval_step(loss_fn: LossFn, mesh: Mesh | None = None) -> Callable:
    """[`recurrax.eval_step`][] compiled with `eqx.filter_jit`:
    `step(model, state, batch) -> metrics`. On sharded inputs it runs data-parallel (the
    computation follows the data's sharding).

    With a `mesh` spanning several processes, each process passes its share of the batch
    and the same model, as for [`recurrax.make_data_parallel_train_step`][]; the inputs are
    made global arrays with [`recurrax.shard_batch`][] and [`recurrax.replicate`][].

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import recurrax


        def loss_fn(model, state, batch, key):   # batch: inputs and targets, (3, 5, 2) each
            x, y = batch
            return jnp.mean((jax.vmap(model)(x) - y) ** 2), (state, {})


        model = recurrax.LRU(2, 4, key=jax.random.key(0))
        batch = (jnp.ones((3, 5, 2)), jnp.zeros((3, 5, 2)))

        evaluate = recurrax.make_eval_step(loss_fn)
        print(float(evaluate(model, None, batch)["loss"]) >= 0.0)   # True
        ```
    """

    @eqx.filter_jit
    def compiled(model, state, batch):
        return eval_step(model, state, batch, loss_fn=loss_fn)

    def step(model, state, batch):
        if mesh is not None and _spans_processes(mesh):
            model, state = replicate((model, state), mesh)
            batch = shard_batch(batch, mesh)
        return compiled(model, state, batch)

    return step


# -- data parallel ----------------------------------------------------------------------------

DATA_AXIS = "data"
SEQ_AXIS = "seq"


def _batch_sharding(mesh: Mesh, x) -> NamedSharding:
    """`("data",)` for a batch array; `("data", "seq")` for a `(batch, time, ...)` array on a
    mesh with a `"seq"` axis that divides its second axis (sequence parallelism)."""
    shape = np.shape(x)
    if SEQ_AXIS in mesh.axis_names and len(shape) >= 2 and shape[1] % mesh.shape[SEQ_AXIS] == 0:
        return NamedSharding(mesh, PartitionSpec(DATA_AXIS, SEQ_AXIS))
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def make_data_mesh(devices: Collection[jax.Device] | None = None) -> Mesh:
    r"""A 1-D device mesh with the axis name `"data"`.

    **Arguments:**

    - `devices`: the devices, by default `jax.devices()` (every device of every process: in
        a single process, the local devices).

    **Returns:**

    A `jax.sharding.Mesh` of shape `{"data": len(devices)}`.

    **Raises:**

    `ValueError` if `devices` is empty.

    !!! example

        ```python
        import recurrax

        mesh = recurrax.make_data_mesh()                         # every device, axis "data"
        print(mesh.axis_names)                                   # ('data',)
        ```
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_data_mesh: `devices` must not be empty, got devices=[].")
    return Mesh(np.array(devices), (DATA_AXIS,))


def _data_size(owner: str, mesh: Mesh) -> int:
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"{owner}: the mesh needs an axis named {DATA_AXIS!r} (see make_data_mesh), got "
            f"axis names {tuple(mesh.axis_names)}."
        )
    return int(mesh.shape[DATA_AXIS])


def _check_batch(owner: str, batch, devices: int) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    for path, leaf in leaves:
        if not eqx.is_array(leaf):
            continue
        where = "batch" + jax.tree_util.keystr(path)
        if np.ndim(leaf) == 0:
            raise ValueError(
                f"{owner}: every array of the batch needs a leading batch axis, got a scalar "
                f"at {where}."
            )
        size = np.shape(leaf)[0]
        if size % devices:
            raise ValueError(
                f"{owner}: the batch size must be divisible by the number of devices on the "
                f"'data' axis ({devices}), got batch size {size} at {where} (shape "
                f"{tuple(np.shape(leaf))})."
            )


def _spans_processes(mesh: Mesh) -> bool:
    """Whether `mesh` holds devices of several processes (multi-host, after
    `jax.distributed.initialize`)."""
    here = jax.process_index()
    return any(d.process_index != here for d in mesh.devices.flat)


def _local_size(mesh: Mesh) -> int:
    """The devices of this process along the `"data"` axis (its share of the batch)."""
    axis = mesh.axis_names.index(DATA_AXIS)
    here = jax.process_index()
    rows = np.moveaxis(mesh.devices, axis, 0).reshape(mesh.devices.shape[axis], -1)
    return sum(any(d.process_index == here for d in row) for row in rows)


def _to_global(x, sharding: NamedSharding):
    """A global array with `sharding` from this process's part of it (the whole array when
    `sharding` replicates it). A global array already is kept."""
    if isinstance(x, jax.Array) and (x.sharding == sharding or not x.is_fully_addressable):
        return x
    if jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
        data = _to_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def _local(x) -> bool:
    return eqx.is_array(x) and not (isinstance(x, jax.Array) and not x.is_fully_addressable)


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    r"""Place a batch on the mesh, split along its leading (batch) axis over `"data"`:
    `NamedSharding(mesh, PartitionSpec("data"))` for every array leaf.

    When the mesh spans several processes (multi-host), each process passes its own share
    of the global batch (its rows; the shares are concatenated in process order) and gets
    the global arrays, built with `jax.make_array_from_process_local_data`.

    **Arguments:**

    - `batch`: a pytree of arrays whose leading axes are the batch, or this process's share
        of it (non-array leaves are kept as they are; global arrays too).
    - `mesh`: from [`recurrax.make_data_mesh`][], or a 2-D mesh with axes `"data"` and
        `"seq"`: arrays of two or more axes `(batch, time, ...)` are then split over both
        (the time axis over `"seq"`, for [`recurrax.SequenceParallelScan`][]) when `"seq"`
        divides their length.

    **Returns:**

    The batch as global `jax.Array`s, each device holding `batch_size / devices` examples.

    **Raises:**

    `ValueError` if an array has no leading axis or a batch size not divisible by the number
    of devices (of this process, on a mesh spanning several processes).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        mesh = recurrax.make_data_mesh()
        n = mesh.shape["data"]
        batch = recurrax.shard_batch((jnp.ones((2 * n, 5)), jnp.zeros(2 * n)), mesh)
        print(batch[0].sharding.spec)                            # P('data',)
        ```
    """
    owner = "shard_batch"
    devices = _data_size(owner, mesh)
    if _spans_processes(mesh):
        _check_batch(
            owner, jax.tree.map(lambda x: x if _local(x) else None, batch), _local_size(mesh)
        )
        place = _to_global
    else:
        _check_batch(owner, batch, devices)
        place = jax.device_put
    return jax.tree.map(
        lambda x: place(x, _batch_sharding(mesh, x)) if eqx.is_array(x) else x, batch
    )


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    r"""Copy every array of a pytree (a model, an optimiser state, a key) to every device of
    the mesh: `NamedSharding(mesh, PartitionSpec())`. Non-array leaves are kept.

    On a mesh spanning several processes every process must pass the same values (a model
    built from the same seed, or read from the same checkpoint); global arrays are kept.

    !!! example

        ```python
        import jax
        import recurrax

        mesh = recurrax.make_data_mesh()
        model = recurrax.replicate(recurrax.MinGRU(2, 4, key=jax.random.key(0)), mesh)
        assert model.linear_z.weight.sharding.is_fully_replicated
        ```
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if _spans_processes(mesh):
        return jax.tree.map(lambda x: _to_global(x, sharding) if eqx.is_array(x) else x, tree)
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


def _constrain(tree, sharding):
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, sharding) if eqx.is_array(x) else x, tree
    )


def make_data_parallel_train_step(
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    mesh: Mesh,
    *,
    donate: bool = False,
) -> Callable:
    r"""[`recurrax.train_step`][] compiled for data-parallel training on a mesh.

    Inside the compiled step the batch is constrained to `PartitionSpec("data")` (split
    along its leading axis) and the model, state, optimiser state and key to
    `PartitionSpec()` (replicated), and so are the outputs. `loss_fn` sees the whole global
    batch and should return its mean over the examples; XLA then computes each device's
    share and inserts the cross-device reductions of the loss and of the gradient, so every
    device applies the same update. No `pmap` or `shard_map` is involved, and the result is
    that of the single-device step up to the order of floating-point sums.

    Feed it the outputs of [`recurrax.shard_batch`][] and [`recurrax.replicate`][] to
    avoid copies at every step.

    **Arguments:**

    - `optimizer`, `loss_fn`, `donate`: as for [`recurrax.make_train_step`][].
    - `mesh`: a mesh with a `"data"` axis ([`recurrax.make_data_mesh`][]). With a second
        axis `"seq"`, `(batch, time, ...)` arrays of the batch are split over both, as by
        [`recurrax.shard_batch`][]: sequence parallelism, for a model whose mixers use
        [`recurrax.SequenceParallelScan`][] on that mesh.

    **Returns:**

    `step(model, state, opt_state, batch, key) -> (model, state, opt_state, metrics)`.

    **Raises:**

    `ValueError` if the mesh has no `"data"` axis; when called, if the batch size is not
    divisible by the number of devices on it.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import recurrax


        def loss_fn(model, state, batch, key):   # batch: inputs and targets, (3, 5, 2) each
            x, y = batch
            return jnp.mean((jax.vmap(model)(x) - y) ** 2), (state, {})


        model = recurrax.LRU(2, 4, key=jax.random.key(0))
        batch = (jnp.ones((3, 5, 2)), jnp.zeros((3, 5, 2)))
        optimizer = recurrax.make_optimizer(model, learning_rate=1e-2)
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

        mesh = recurrax.make_data_mesh()
        n = mesh.shape["data"]
        step = recurrax.make_data_parallel_train_step(optimizer, loss_fn, mesh)
        model, opt_state = recurrax.replicate((model, opt_state), mesh)
        batch = recurrax.shard_batch((jnp.ones((2 * n, 5, 2)), jnp.zeros((2 * n, 5, 2))), mesh)
        model, _, opt_state, metrics = step(model, None, opt_state, batch, None)
        ```
    """
    owner = "make_data_parallel_train_step"
    devices = _data_size(owner, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    donation = _donation(donate)

    @eqx.filter_jit(donate=donation)
    def compiled(inputs, model, state, opt_state):
        batch, key = inputs
        _check_batch("data-parallel train step", batch, devices)
        batch = jax.tree.map(
            lambda x: (
                jax.lax.with_sharding_constraint(x, _batch_sharding(mesh, x))
                if eqx.is_array(x)
                else x
            ),
            batch,
        )
        model, state, opt_state, key = _constrain((model, state, opt_state, key), replicated)
        out = train_step(model, state, opt_state, batch, key, optimizer=optimizer, loss_fn=loss_fn)
        return _constrain(out, replicated)

    def step(model, state, opt_state, batch, key):
        if _spans_processes(mesh):  # every input must be a global array
            model, state, opt_state, key = replicate((model, state, opt_state, key), mesh)
            batch = shard_batch(batch, mesh)
        return compiled((batch, key), model, state, opt_state)

    return step
