r"""The optimiser of the LRU paper over the parameter groups, and its learning-rate schedule."""

import functools
import math
from collections.abc import Callable, Collection, Mapping

import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PyTree

from ._param_groups import DECAY, NO_DECAY, NO_DECAY_TYPES, param_labels, RECURRENT


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
