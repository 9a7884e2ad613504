"""Data-parallel training over a 1-D device mesh.

The multi-device check runs in a subprocess: `XLA_FLAGS=--xla_force_host_platform_device_count=4`
only takes effect if it is set before JAX initialises its CPU backend, which this pytest
process has already done.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

import recurrax
from recurrax import (
    make_data_mesh,
    make_data_parallel_train_step,
    make_optimizer,
    make_train_step,
    replicate,
    shard_batch,
)

from .helpers import tree_allclose


ROOT = pathlib.Path(__file__).resolve().parent.parent


class Tiny(eqx.Module):
    encoder: eqx.nn.Linear
    lru: recurrax.LRU
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.encoder = eqx.nn.Linear(2, 3, key=k1)
        self.lru = recurrax.LRU(3, 4, key=k2)
        self.head = eqx.nn.Linear(3, "scalar", key=k3)

    def __call__(self, x):
        return jnp.mean(jax.vmap(self.head)(self.lru(jax.vmap(self.encoder)(x))))


def tiny_loss(model, state, batch, key):
    x, y = batch
    return jnp.mean((jax.vmap(model)(x) - y) ** 2), (state, {})


def test_single_device_mesh_matches_the_plain_step():
    mesh = make_data_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == len(jax.devices())
    model = Tiny(jax.random.key(0))
    batch = (jax.random.normal(jax.random.key(1), (4, 5, 2)), jnp.arange(4.0))
    optimizer = make_optimizer(model, learning_rate=1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    plain = make_train_step(optimizer, tiny_loss)(model, None, opt_state, batch, None)
    step = make_data_parallel_train_step(optimizer, tiny_loss, mesh)
    sharded = shard_batch(batch, mesh)
    parallel = step(replicate(model, mesh), None, replicate(opt_state, mesh), sharded, None)
    assert tree_allclose(parallel, plain, rtol=1e-12, atol=1e-14)


def test_mesh_and_batch_errors():
    with pytest.raises(ValueError, match="`devices` must not be empty"):
        make_data_mesh([])
    mesh = make_data_mesh()
    with pytest.raises(ValueError, match="leading batch axis"):
        shard_batch({"x": jnp.ones(()), "y": jnp.ones((4,))}, mesh)
    other = Mesh(np.array(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match="axis named 'data'"):
        shard_batch(jnp.ones((4,)), other)
    optimizer = make_optimizer(eqx.nn.Linear(2, 2, key=jax.random.key(0)), learning_rate=1e-3)
    with pytest.raises(ValueError, match="axis named 'data'"):
        make_data_parallel_train_step(optimizer, tiny_loss, other)
    # Non-array leaves are left alone; arrays get the data sharding.
    batch = shard_batch({"x": np.ones((2, 3)), "note": "text"}, mesh)
    assert batch["note"] == "text"
    assert batch["x"].sharding.spec == PartitionSpec("data")


# The subprocess: 4 CPU devices, float32 (x64 off, as users run by default), strict dtype
# promotion and rank promotion "raise" as in conftest.py, and the jaxtyping + beartype
# runtime checks on recurrax as in pyproject.toml's pytest options.
SCRIPT = textwrap.dedent(
    """
    import json

    import jax

    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")

    from jaxtyping import install_import_hook

    with install_import_hook("recurrax", "beartype.beartype"):
        import recurrax
        from recurrax import (
            make_data_mesh, make_data_parallel_train_step, make_optimizer, make_train_step,
            replicate, shard_batch,
        )

    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np


    class Model(eqx.Module):
        encoder: eqx.nn.Linear
        lru: recurrax.LRU
        mingru: recurrax.MinGRU
        head: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3, k4 = jax.random.split(key, 4)
            self.encoder = eqx.nn.Linear(3, 8, key=k1)
            self.lru = recurrax.LRU(8, 16, r_min=0.5, r_max=0.99, key=k2)
            self.mingru = recurrax.MinGRU(8, 8, key=k3)
            self.head = eqx.nn.Linear(8, "scalar", key=k4)

        def __call__(self, x, key):
            u = jax.vmap(self.encoder)(x)
            h = self.mingru(jax.nn.gelu(self.lru(u)))
            h = eqx.nn.Dropout(0.1)(h, key=key)
            return jnp.mean(jax.vmap(self.head)(h))


    def loss_fn(model, state, batch, key):
        x, y = batch
        keys = jax.random.split(key, x.shape[0])
        pred = jax.vmap(model)(x, keys)
        return jnp.mean((pred - y) ** 2), (state, {"pred_mean": jnp.mean(pred)})


    devices = jax.devices()
    mesh = make_data_mesh()
    model = Model(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 20, 3))
    y = jnp.sin(jnp.arange(8.0))
    key = jax.random.key(2)
    optimizer = make_optimizer(model, learning_rate=1e-2, lr_factor=0.5, weight_decay=0.05)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    single = make_train_step(optimizer, loss_fn)(model, None, opt_state, (x, y), key)

    batch = shard_batch((x, y), mesh)
    step = make_data_parallel_train_step(optimizer, loss_fn, mesh)
    parallel = step(replicate(model, mesh), None, replicate(opt_state, mesh), batch, key)
    again = step(*parallel[:3], batch, key)  # the outputs feed the next step directly

    # What XLA made of it: each device computes on its 2 examples, and the loss and the
    # gradient are summed across devices (all-reduce), not gathered onto one device.
    replicated_inputs = (replicate(model, mesh), None, replicate(opt_state, mesh), batch, key)
    hlo = eqx.filter_jit(step).lower(*replicated_inputs).compile().compiled.as_text()

    def leaves(tree):
        return [np.asarray(v) for v in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]

    old = leaves(model)
    new_single, new_parallel = leaves(single[0]), leaves(parallel[0])
    moved = [np.max(np.abs(a - b)) for a, b in zip(new_single, old)]
    diff = [np.max(np.abs(a - b)) for a, b in zip(new_single, new_parallel)]
    try:
        shard_batch((x[:6], y[:6]), mesh)
        not_divisible = None
    except ValueError as error:
        not_divisible = str(error)
    try:
        step(parallel[0], None, parallel[2], (x[:6], y[:6]), key)
        step_not_divisible = None
    except ValueError as error:
        step_not_divisible = str(error)

    # A SequenceModel with BatchNorm (statistics over the whole global batch through the
    # vmap axis name) and dropout: the state is threaded through the step.
    config = recurrax.ModelConfig(
        mixer="lru", d_model=8, depth=2, input_size=3, output_size=1, state_size=8,
        norm="batch", dropout=0.1,
    )
    seq_model, seq_state = config.build(key=jax.random.key(3))

    def seq_loss(model, state, batch, key):
        x, y = batch
        keys = jax.random.split(key, x.shape[0])
        pred, state = jax.vmap(
            lambda x, k: model(x, state, key=k), axis_name="batch", out_axes=(0, None)
        )(x, keys)
        return jnp.mean((pred[:, 0] - y) ** 2), (state, {})

    seq_opt = make_optimizer(seq_model, learning_rate=1e-2)
    seq_opt_state = seq_opt.init(eqx.filter(seq_model, eqx.is_inexact_array))
    seq_single = make_train_step(seq_opt, seq_loss)(
        seq_model, seq_state, seq_opt_state, (x, y), key
    )
    seq_parallel = make_data_parallel_train_step(seq_opt, seq_loss, mesh)(
        replicate(seq_model, mesh), replicate(seq_state, mesh), replicate(seq_opt_state, mesh),
        batch, key,
    )
    seq_diff = [
        float(np.max(np.abs(a - b)))
        for a, b in zip(leaves(seq_single[:2]), leaves(seq_parallel[:2]))
    ]

    print(json.dumps({
        "seq_loss_single": float(seq_single[3]["loss"]),
        "seq_loss_parallel": float(seq_parallel[3]["loss"]),
        "seq_max_diff": max(seq_diff),
        "recurrax_file": recurrax.__file__,
        "x64": bool(jax.config.jax_enable_x64),
        "devices": len(devices),
        "batch_devices": len(batch[0].sharding.device_set),
        "shard_shapes": sorted({tuple(s.data.shape) for s in batch[0].addressable_shards}),
        "param_devices": sorted({len(v.sharding.device_set) for v in jax.tree.leaves(
            eqx.filter(parallel[0], eqx.is_array))}),
        "param_replicated": all(v.sharding.is_fully_replicated for v in jax.tree.leaves(
            eqx.filter(parallel[0], eqx.is_array))),
        "dtype": str(new_parallel[0].dtype),
        "loss_single": float(single[3]["loss"]),
        "loss_parallel": float(parallel[3]["loss"]),
        "loss_again": float(again[3]["loss"]),
        "grad_norm_single": float(single[3]["grad_norm"]),
        "grad_norm_parallel": float(parallel[3]["grad_norm"]),
        "pred_mean_single": float(single[3]["pred_mean"]),
        "pred_mean_parallel": float(parallel[3]["pred_mean"]),
        "max_param_diff": float(max(diff)),
        "min_param_move": float(min(moved)),
        "all_reduces": hlo.count("all-reduce("),
        "all_gathers": hlo.count("all-gather("),
        "local_batch_in_hlo": "f32[2,20,3]" in hlo,
        "not_divisible": not_divisible,
        "step_not_divisible": step_not_divisible,
    }))
    """
)


def test_data_parallel_step_on_four_cpu_devices():
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=(env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip(),
        JAX_PLATFORMS="cpu",
        JAX_ENABLE_X64="0",
        # The source tree first, whether or not the package is installed in editable mode.
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])),
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert pathlib.Path(out["recurrax_file"]).resolve() == ROOT / "src" / "recurrax" / "__init__.py"
    assert out["x64"] is False and out["dtype"] == "float32"
    assert out["devices"] == 4
    # The batch really is split: each device holds 2 of the 8 examples.
    assert out["batch_devices"] == 4 and out["shard_shapes"] == [[2, 20, 3]]
    assert out["param_devices"] == [4] and out["param_replicated"]
    assert out["all_reduces"] > 0 and out["local_batch_in_hlo"], out
    # Same step up to the order of the float32 sums (the per-device partial sums of the loss
    # and of the gradient are added across devices): about 1e-7 relative, bounded at 1e-5.
    for name in ("loss", "grad_norm", "pred_mean"):
        single, parallel = out[f"{name}_single"], out[f"{name}_parallel"]
        assert abs(single - parallel) <= 1e-5 * abs(single), (name, single, parallel)
    # Adam's first step moves every parameter by about lr = 1e-2 (x lr_factor 0.5 for the
    # recurrent ones): the two updated models agree far below that.
    assert out["min_param_move"] > 1e-3
    assert out["max_param_diff"] <= 1e-5, out["max_param_diff"]
    assert np.isfinite(out["loss_again"])
    # The same for a SequenceModel with BatchNorm: parameters and running statistics.
    single, parallel = out["seq_loss_single"], out["seq_loss_parallel"]
    assert abs(single - parallel) <= 1e-5 * abs(single), (single, parallel)
    assert out["seq_max_diff"] <= 1e-5, out["seq_max_diff"]
    for message in (out["not_divisible"], out["step_not_divisible"]):
        assert message is not None and "divisible by the number of devices" in message
        assert "batch size 6" in message
