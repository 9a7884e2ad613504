"""Packed ListOps batches (`--packing`): the same examples, fewer rows, and the loss and
accuracy of every example equal to those of the padded batch."""

import json

import equinox as eqx
import jax
import numpy as np
import pytest

from experiments import packing, presets, train
from experiments.cli import main

from .helpers import relative_error


def _clone(state):
    """A fresh copy of an `eqx.nn.State` (each may be used once)."""
    leaves, treedef = jax.tree.flatten(state)
    return jax.tree.unflatten(treedef, leaves)


def _setup(model="lru"):
    settings = presets.run_settings(
        "listops",
        model,
        model_options=dict(d_model=8, depth=2, state_size=4, param_dtype="float64"),
        batch_size=12,
    )
    config = train.RunConfig(**settings)
    task, _, net, state = train.build(config)
    return config, task, net, state


def test_pack_keeps_every_example_once():
    _, task, _, _ = _setup()
    batch = task.batch(0, 0, 24)
    slots = packing.slots_per_row(task)
    packed = packing.pack(batch, slots)
    rows, width = packed.inputs.shape
    assert width == batch.inputs.shape[1] and rows <= 24 and rows % 4 == 0
    placed = packed.example[packed.example >= 0]
    assert sorted(placed.tolist()) == list(range(24))
    assert packed.target_mask.sum() == 24 and packed.mask.sum() == batch.mask.sum()
    for r in range(rows):
        start = 0
        for k in range(slots):
            i = packed.example[r, k]
            if i < 0:
                continue
            n = int(batch.mask[i].sum())
            assert packed.resets[r, start]
            assert np.array_equal(packed.inputs[r, start : start + n], batch.inputs[i, :n])
            assert packed.targets[r, k] == batch.targets[i]
            start += n
        assert not packed.mask[r, start:].any()
        assert packed.resets[r, start + 1 :].sum() == 0


@pytest.mark.parametrize("model", ["lru", "mingru"])
def test_loss_and_accuracy_per_example_equal_padded(model):
    config, task, net, state = _setup(model)
    batch = task.batch(0, 0, config.batch_size)
    slots = packing.slots_per_row(task)
    packed = packing.pack(batch, slots)
    padded_arrays = train._batch_arrays(batch)
    packed_arrays = packing.packed_arrays(packed)
    # Per example: the logits of the padded row and of its slot in a packed row.
    out_padded, _ = train._forward(net, _clone(state), padded_arrays[0], padded_arrays[2], None)
    out_packed, _ = packing.packed_outputs(
        net, _clone(state), packed_arrays[0], packed_arrays[2], packed_arrays[3], slots
    )
    filled = packed.example >= 0
    per_example = np.zeros_like(np.asarray(out_padded))
    per_example[packed.example[filled]] = np.asarray(out_packed)[filled]
    assert relative_error(per_example, out_padded) < 1e-10
    # The batch's loss and accuracy (and the loss's gradient).
    padded_loss = train.make_loss(task.kind)
    packed_loss = packing.make_packed_loss(slots)
    (l1, (_, m1)), g1 = eqx.filter_value_and_grad(padded_loss, has_aux=True)(
        net, _clone(state), padded_arrays, None
    )
    (l2, (_, m2)), g2 = eqx.filter_value_and_grad(packed_loss, has_aux=True)(
        net, _clone(state), packed_arrays, None
    )
    assert abs(float(l1) - float(l2)) < 1e-5 * abs(float(l1))
    assert float(m1["accuracy"]) == float(m2["accuracy"])
    leaves1, leaves2 = jax.tree.leaves(g1), jax.tree.leaves(g2)
    assert len(leaves1) == len(leaves2)
    assert all(relative_error(u, v) < 1e-4 for u, v in zip(leaves1, leaves2))


def test_pack_errors():
    _, task, _, _ = _setup()
    batch = task.batch(0, 0, 4)
    with pytest.raises(ValueError, match="right-padded"):
        packing.pack(batch._replace(mask=batch.mask[:, ::-1]), 3)
    with pytest.raises(ValueError, match="classification"):
        packing.pack(batch._replace(targets=np.zeros((4, 3), np.int32)), 3)


def test_cli_trains_packed_and_refuses_other_tasks(tmp_path, capsys):
    common = ["--steps", "2", "--batch-size", "8", "--eval-size", "8", "--d-model", "8"]
    common += ["--depth", "1", "--eval-every", "2", "--checkpoint-every", "2"]
    out = tmp_path / "packed"
    argv = ["run", "listops", "--model", "mingru", "--packing", *common, "--out", str(out)]
    assert main(argv) == 0
    assert train.RunConfig.from_dict(json.loads((out / "run.json").read_text())).packing
    assert main(["run", "adding", "--model", "lru", "--packing", *common]) == 2
    assert "--packing needs a variable-length classification task" in capsys.readouterr().err
    # Run folders of packed runs are named apart from padded ones.
    from experiments.cli import configure, parser as _parser

    _, folder = configure(_parser().parse_args(["run", "listops", "--model", "lru", "--packing"]))
    assert folder.name == "listops-lru-packed-d2-s0"
