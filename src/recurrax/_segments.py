r"""Packed sequences: segment starts from segment ids, and pooling per segment.

A packed row holds several examples (segments) one after another; a boolean `resets`
`(length,)`, `True` at the first step of each segment, makes every layer restart there
(a segment start is the pair $(0, a_t h_0 + b_t)$ of the recurrence's algebra).
"""

from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._mixer import check_mask, check_resets


def segment_starts(
    segment_ids: Int[Array, " length"],
) -> Bool[Array, " length"]:
    r"""The reset flags of a packed row from its segment ids: `True` at the first step and
    wherever the id changes, $\rho_t = [t = 0 \lor s_t \ne s_{t-1}]$.

    **Arguments:**

    - `segment_ids`: integer `(length,)`, equal within a segment (e.g. `[0, 0, 0, 1, 1, 2]`).
        Consecutive segments need different ids; padding may carry its own id (and a mask).

    **Returns:**

    Boolean `(length,)`, the `resets` argument of every layer, block and model.

    **Raises:**

    `ValueError` if `segment_ids` is not an integer vector.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        resets = recurrax.segment_starts(jnp.array([0, 0, 0, 1, 1, 2]))
        assert resets.tolist() == [True, False, False, True, False, True]
        ```
    """
    ids = jnp.asarray(segment_ids)
    if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(
            f"segment_starts: `segment_ids` must be an integer vector (length,), got shape "
            f"{tuple(ids.shape)} and dtype {ids.dtype}."
        )
    if ids.shape[0] == 0:
        return jnp.zeros((0,), jnp.bool_)
    return jnp.concatenate([jnp.ones((1,), jnp.bool_), ids[1:] != ids[:-1]])


def segment_index(resets: Bool[Array, " length"]) -> Int[Array, " length"]:
    """The segment of every step, `0, 1, ...` in order; steps before the first reset belong
    to segment 0."""
    if resets.shape[0] == 0:
        return jnp.zeros((0,), jnp.int32)
    return jnp.cumsum(resets.at[0].set(True).astype(jnp.int32), dtype=jnp.int32) - 1


def pool_segments(
    y: Float[Array, "length features"],
    resets: Bool[Array, " length"],
    num_segments: int,
    *,
    pooling: Literal["mean", "last"] = "mean",
    mask: Bool[Array, " length"] | None = None,
) -> tuple[Float[Array, "segments features"], Bool[Array, " segments"]]:
    r"""One pooled vector per segment of a packed row: the mean, or the last, of its valid
    steps; the classification head of packed examples.

    Segment $k$ is the $k$-th run that `resets` starts (the first step always starts one).
    For every segment this is what the padded-batch pooling of a [`recurrax.SequenceModel`][]
    computes for that example alone (up to the rounding of the sums).

    **Arguments:**

    - `y`: per-step features `(length, features)` (e.g. a model's `pooling="none"`
        outputs or its last block's activations).
    - `resets`: boolean `(length,)`, `True` at each segment start.
    - `num_segments`: the number $S$ of pooled vectors returned (static): segments beyond
        it are dropped, missing ones are zeros.
    - `pooling`: `"mean"` or `"last"`.
    - `mask`: optional boolean `(length,)`; only valid steps are pooled (padding at the end
        of a row, or anywhere).

    **Returns:**

    `(pooled, present)`: `pooled` `(num_segments, features)` and `present` boolean
    `(num_segments,)`, `True` for segments with at least one valid step (use it to mask
    the loss of empty slots).

    **Raises:**

    `ValueError` for inputs of the wrong shape, a non-positive `num_segments` or an unknown
    `pooling`.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        y = jnp.array([[1.0], [3.0], [10.0], [20.0], [0.0]])
        resets = jnp.array([True, False, True, False, False])
        mask = jnp.array([True, True, True, True, False])   # the last step is padding
        pooled, present = recurrax.pool_segments(y, resets, 3, mask=mask)
        assert pooled[:, 0].tolist() == [2.0, 15.0, 0.0]
        assert present.tolist() == [True, True, False]
        ```
    """
    owner = "pool_segments"
    if y.ndim != 2:
        raise ValueError(
            f"{owner}: `y` must have shape (length, features), got shape {tuple(y.shape)}."
        )
    length = y.shape[0]
    check_resets(owner, resets, length)
    check_mask(owner, mask, length)
    if not isinstance(num_segments, int) or isinstance(num_segments, bool) or num_segments < 1:
        raise ValueError(
            f"{owner}: `num_segments` must be a positive int, got num_segments={num_segments!r}."
        )
    if pooling not in ("mean", "last"):
        raise ValueError(f"{owner}: `pooling` must be 'mean' or 'last', got pooling={pooling!r}.")
    if length == 0:
        return jnp.zeros((num_segments, y.shape[1]), y.dtype), jnp.zeros((num_segments,), bool)
    index = segment_index(resets)
    valid = jnp.ones((length,), jnp.bool_) if mask is None else mask
    # Invalid steps go to an extra segment that is dropped.
    index = jnp.where(valid, index, num_segments)
    count = jax.ops.segment_sum(
        valid.astype(jnp.int32), index, num_segments + 1, indices_are_sorted=False
    )[:num_segments]
    present = count > 0
    if pooling == "mean":
        total = jax.ops.segment_sum(y, index, num_segments + 1)[:num_segments]
        denominator = jnp.maximum(count, 1).astype(y.dtype)[:, None]
        return total / denominator, present
    steps = jnp.where(valid, jnp.arange(length), -1)
    last = jax.ops.segment_max(steps, index, num_segments + 1)[:num_segments]
    pooled = y[jnp.clip(last, 0, length - 1)]
    return jnp.where(present[:, None], pooled, jnp.zeros((), y.dtype)), present
