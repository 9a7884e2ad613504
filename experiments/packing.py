"""Packed batches for variable-length classification (`python -m experiments run ... --packing`).

A padded batch spends compute on padding: a ListOps row is as wide as the longest example
allowed. Packing fills each row with whole examples one after another, marks every example's
first token in `resets` (so each mixer and convolution restarts there: the examples do not
see each other) and pools the model's outputs per example
(`SequenceModel(..., resets=..., num_segments=...)`). The loss and accuracy of every example
are those of the padded batch, up to rounding; the rows are fewer.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .tasks._base import Batch


class PackedBatch(NamedTuple):
    """The examples of a padded `Batch` packed into fewer rows.

    - `inputs`, `mask`, `resets`: `(rows, width)`; `resets` is `True` at each example's
        first token, `mask` at every token of an example.
    - `targets`, `target_mask`: `(rows, slots)`; slot `k` of a row is the `k`-th example in
        it, `target_mask` says which slots hold one.
    - `example`: `(rows, slots)`, the example's index in the padded batch (`-1`: empty).
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    resets: np.ndarray
    target_mask: np.ndarray
    example: np.ndarray


def slots_per_row(task) -> int:
    """How many examples a row can hold at most: its width over the shortest example."""
    width = task.input_length()
    return max(1, width // max(1, getattr(task, "min_length", 1)))


def pack(batch: Batch, slots: int, *, row_multiple: int = 4) -> PackedBatch:
    """Pack the examples of a right-padded classification batch into rows of the same width.

    First fit by decreasing length: each example goes into the first row with room for it
    (and a free slot), else into a new row. The number of rows is rounded up to a multiple
    of `row_multiple` (fewer distinct shapes to compile), but never above the batch size.

    **Raises:** `ValueError` for a batch that is not a classification batch with
    right-padded rows.
    """
    mask = np.asarray(batch.mask, bool)
    targets = np.asarray(batch.targets)
    if batch.target_mask is not None or targets.ndim != 1:
        raise ValueError("pack: packing needs a classification batch (one label per example).")
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None] < lengths[:, None]):
        raise ValueError("pack: the rows of the batch must be right-padded (a valid prefix).")
    size, width = mask.shape
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(size), key=lambda i: -int(lengths[i])):
        for r, free in enumerate(room):
            if free >= lengths[i] and len(rows[r]) < slots:
                rows[r].append(i)
                room[r] -= int(lengths[i])
                break
        else:
            rows.append([i])
            room.append(width - int(lengths[i]))
    count = min(size, math.ceil(len(rows) / row_multiple) * row_multiple)
    count = max(count, len(rows))
    inputs = np.zeros((count, width), np.asarray(batch.inputs).dtype)
    packed_mask = np.zeros((count, width), bool)
    resets = np.zeros((count, width), bool)
    packed_targets = np.zeros((count, slots), targets.dtype)
    target_mask = np.zeros((count, slots), bool)
    example = np.full((count, slots), -1, np.int32)
    resets[:, 0] = True
    for r, members in enumerate(rows):
        start = 0
        for k, i in enumerate(members):
            n = int(lengths[i])
            inputs[r, start : start + n] = np.asarray(batch.inputs)[i, :n]
            packed_mask[r, start : start + n] = True
            resets[r, start] = True
            packed_targets[r, k] = targets[i]
            target_mask[r, k] = True
            example[r, k] = i
            start += n
    return PackedBatch(inputs, packed_targets, packed_mask, resets, target_mask, example)


def packed_arrays(packed: PackedBatch) -> tuple:
    """The device arrays a packed loss takes: `(inputs, targets, mask, resets, target_mask)`."""
    return tuple(jnp.asarray(x) for x in packed[:5])


def packed_outputs(model, state, inputs, mask, resets, slots: int, key=None):
    """The model on packed rows: `(outputs (rows, slots, classes), state)`, one output per
    example (BatchNorm's batch axis is the rows)."""
    rows = inputs.shape[0]
    if key is None:
        return jax.vmap(
            lambda x, m, r: model(x, state, mask=m, resets=r, num_segments=slots),
            axis_name="batch",
            out_axes=(0, None),
        )(inputs, mask, resets)
    keys = jax.random.split(key, rows)
    return jax.vmap(
        lambda x, m, r, k: model(x, state, mask=m, resets=r, num_segments=slots, key=k),
        axis_name="batch",
        out_axes=(0, None),
    )(inputs, mask, resets, keys)


def make_packed_loss(slots: int):
    """Cross-entropy and accuracy of a classification task over the examples of packed rows:
    the mean over the filled slots, which equals the padded batch's mean over examples."""

    def loss_fn(model, state, batch, key):
        inputs, targets, mask, resets, target_mask = batch
        out, state = packed_outputs(model, state, inputs, mask, resets, slots, key)
        out = out.astype(jnp.float32)
        log_p = jax.nn.log_softmax(out, axis=-1)
        picked = jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(out, axis=-1).astype(targets.dtype) == targets).astype(jnp.float32)
        weights = target_mask.astype(jnp.float32)
        count = jnp.maximum(jnp.sum(weights), 1.0)
        loss = -jnp.sum(picked * weights) / count
        return loss, (state, {"accuracy": jnp.sum(correct * weights) / count})

    return loss_fn


def check_packable(task) -> None:
    """`--packing` needs a classification task with variable lengths (a mask of padding).

    **Raises:** `ValueError` naming the task otherwise."""
    if task.kind != "classification" or task.pooling == "none" or not hasattr(task, "min_length"):
        raise ValueError(
            f"--packing needs a variable-length classification task such as listops; "
            f"{task.name} is a {task.kind} task."
        )
