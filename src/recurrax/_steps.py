r"""Train and eval steps for a loss the user writes, on one device or data-parallel."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PRNGKeyArray, PyTree, Scalar

from ._sharding import (
    _batch_sharding,
    _check_batch,
    _data_size,
    _spans_processes,
    replicate,
    shard_batch,
)


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
