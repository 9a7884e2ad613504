"""Sequence parallelism: `SequenceParallelScan` with the time axis split over devices.

The multi-device checks run in one subprocess with 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8` only takes effect before JAX starts its
CPU backend, which this pytest process has already done), in float64 so that the sharded and
unsharded results can be compared to round-off.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import recurrax


ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_one_device_mesh_matches_the_default_strategy():
    mesh = jax.make_mesh((1,), ("seq",), devices=jax.devices()[:1])
    method = recurrax.SequenceParallelScan(mesh, "seq")
    rng = np.random.default_rng(0)
    a = rng.uniform(0.3, 1.0, (12, 3))
    b = rng.normal(size=(12, 3))
    h0 = rng.normal(size=3)
    for reverse in (False, True):
        got = jax.jit(
            lambda a, b, h0: recurrax.linear_recurrence(a, b, h0, reverse=reverse, method=method)
        )(a, b, h0)
        want = recurrax.linear_recurrence(a, b, h0, reverse=reverse)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_errors():
    mesh = jax.make_mesh((1,), ("seq",), devices=jax.devices()[:1])
    with pytest.raises(ValueError, match=r"`axis_name` must be an axis of the mesh \('seq',\)"):
        recurrax.SequenceParallelScan(mesh, "time")
    with pytest.raises(ValueError, match="`inner` must be a single-device scan strategy"):
        recurrax.SequenceParallelScan(mesh, "seq", inner=recurrax.SequenceParallelScan(mesh))
    # (The runtime type checks of the test suite reject it before the constructor does.)
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="mesh"):
        recurrax.SequenceParallelScan("seq")
    method = recurrax.SequenceParallelScan(mesh, "seq", inner=recurrax.ChunkedScan(4))
    assert method.devices == 1
    # A model configuration passes it to every linear mixer; the nonlinear ones refuse it.
    config = recurrax.ModelConfig(
        mixer="lru", d_model=4, depth=2, input_size=2, output_size=1, state_size=4, norm=None
    )
    model, _ = config.build(key=jax.random.key(0), method=method)
    assert all(block.mixer.method == method for block in model.blocks)
    gru = recurrax.ModelConfig(mixer="gru", d_model=4, depth=1, input_size=2, output_size=1)
    with pytest.raises(ValueError, match="'gru' mixer takes no scan strategy"):
        gru.build(key=jax.random.key(0), method=method)
    # Usable wherever a strategy is: a layer keeps it as its `method`.
    lru = recurrax.LRU(2, 4, method=method, key=jax.random.key(0))
    x = jnp.ones((6, 2))
    np.testing.assert_allclose(
        jax.jit(lambda x: lru(x))(x),
        recurrax.LRU(2, 4, key=jax.random.key(0))(x),
        rtol=1e-5,
        atol=1e-6,
    )


# The subprocess: 8 CPU devices, float64, strict dtype and rank promotion as in conftest.py,
# and the jaxtyping + beartype runtime checks on recurrax.
SCRIPT = textwrap.dedent(
    """
    import json
    import re

    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")

    from jaxtyping import install_import_hook

    with install_import_hook("recurrax", "beartype.beartype"):
        import recurrax

    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = jax.devices()
    rng = np.random.default_rng(0)
    L, N = 96, 3
    results = {"devices": len(devices), "cases": [], "collectives": []}


    def loop(a, b, h0, reverse, log):
        # Independent float64 reference: the recurrence one step at a time.
        a = np.broadcast_to(a, b.shape)
        h, out = h0, np.empty_like(b)
        order = range(len(b) - 1, -1, -1) if reverse else range(len(b))
        for t in order:
            h = np.logaddexp(a[t] + h, b[t]) if log else a[t] * h + b[t]
            out[t] = h
        return out


    def collectives(hlo):
        # Every collective of the compiled program (HLO text) with its result shapes.
        found = []
        kinds = "all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter"
        pattern = r"= (\\(?[^=]*?\\)?) (" + kinds + r")(-start)?\\("
        for match in re.finditer(pattern, hlo):
            dims = [int(d) for shape in re.findall(r"\\[([0-9,]*)\\]", match.group(1))
                    for d in shape.split(",") if d]
            found.append((match.group(2), max(dims, default=1), match.group(1)))
        return found


    meshes = {
        "explicit8": jax.make_mesh((8,), ("seq",)),
        "classic4": Mesh(np.array(devices[:4]), ("seq",)),
    }
    cases = [
        # mesh, log, time-invariant a, reverse, h0, complex, inner
        ("explicit8", False, False, False, True, False, None),
        ("explicit8", False, True, True, True, True, recurrax.SequentialScan()),
        ("explicit8", True, False, True, True, False, recurrax.ChunkedScan(4)),
        ("classic4", False, False, True, False, False, recurrax.AssociativeScan()),
        ("classic4", True, True, False, True, False, None),
    ]
    for mesh_name, log, invariant, reverse, with_h0, complex_, inner in cases:
        mesh = meshes[mesh_name]
        time = NamedSharding(mesh, P("seq"))
        method = recurrax.SequenceParallelScan(mesh, "seq", inner=inner)
        shape = (N,) if invariant else (L, N)
        if log:
            a = np.log(rng.uniform(0.5, 1.0, shape))
            b = rng.normal(size=(L, N))
            b[L // 2 :: 7] = -np.inf  # b = 0 at some steps
            h0 = rng.normal(size=N) if with_h0 else None
            fn = recurrax.log_linear_recurrence
        else:
            a = rng.uniform(0.5, 1.0, shape)
            b = rng.normal(size=(L, N))
            if complex_:
                a = a * np.exp(1j * rng.uniform(0, np.pi, shape))
                b = b + 1j * rng.normal(size=(L, N))
            h0 = rng.normal(size=N) + (1j * rng.normal(size=N) if complex_ else 0)
            h0 = h0 if with_h0 else None
            fn = recurrax.linear_recurrence
        start = np.full(N, -np.inf if log else 0.0, b.dtype) if h0 is None else h0
        want = loop(a, b, start, reverse, log)

        def run(a, b, h0, method):
            return fn(a, b, h0, reverse=reverse, method=method)

        def loss(a, b, h0, method):
            states = run(a, b, h0, method)
            h = jnp.exp(states) if log else states
            weight = jnp.cos(jnp.arange(L, dtype=jnp.float64))[:, None]
            return jnp.sum(jnp.abs(h) ** 2 * weight), states

        args_sharded = (a if invariant else jax.device_put(a, time), jax.device_put(b, time), h0)
        argnums = (0, 1, 2) if with_h0 else (0, 1)
        grad = jax.jit(
            jax.grad(lambda a, b, h0: loss(a, b, h0, method), argnums=argnums, has_aux=True)
        )
        compiled = grad.lower(*args_sharded).compile()
        grad_sharded, got = compiled(*args_sharded)
        plain = recurrax.SequentialScan()
        grad_plain, _ = jax.grad(
            lambda a, b, h0: loss(a, b, h0, plain), argnums=argnums, has_aux=True
        )(a, b, h0)
        finite = np.isfinite(want)
        diff = np.abs(np.asarray(got)[finite] - want[finite])
        state_err = float(np.max(diff / (1 + np.abs(want[finite]))))
        grad_err = max(
            float(np.max(np.abs(np.asarray(g) - np.asarray(w)) / (1 + np.max(np.abs(w)))))
            for g, w in zip(grad_sharded, grad_plain)
        )
        results["cases"].append({
            "case": [mesh_name, log, invariant, reverse, with_h0, complex_, repr(inner)],
            "state_err": state_err,
            "grad_err": grad_err,
            "same_infinities": bool(np.array_equal(np.isfinite(np.asarray(got)), finite)),
            "out_spec": str(got.sharding.spec),
            "grad_finite": all(bool(np.all(np.isfinite(np.asarray(g)))) for g in grad_sharded),
        })
        results["collectives"] += collectives(compiled.as_text())

    # A train step on a 2-D mesh: the batch over "data", time over "seq", with every LRU of a
    # ModelConfig model on SequenceParallelScan. (A classic mesh: with explicit axes, the
    # weight gradients contract over sharded axes, which JAX asks the caller to resolve;
    # the engine itself is checked with explicit axes above.)
    mesh2 = Mesh(np.array(devices).reshape(2, 4), ("data", "seq"))
    config = recurrax.ModelConfig(
        mixer="lru", d_model=4, depth=2, input_size=2, output_size=1, state_size=4,
        norm="layer", pooling="mean", param_dtype="float64",
    )
    plain, nstate = config.build(key=jax.random.key(1))
    split, _ = config.build(
        key=jax.random.key(1), method=recurrax.SequenceParallelScan(mesh2, "seq")
    )

    def seq_loss(model, state, batch, key):
        x, y = batch
        pred = jax.vmap(lambda x: model(x, state)[0])(x)
        return jnp.mean((pred[:, 0] - y) ** 2), (state, {})

    x, y = rng.normal(size=(4, L, 2)), rng.normal(size=4)
    optimizer = recurrax.make_optimizer(plain, learning_rate=1e-2)
    opt_state = optimizer.init(eqx.filter(plain, eqx.is_inexact_array))
    single = recurrax.make_train_step(optimizer, seq_loss)(plain, nstate, opt_state, (x, y), None)
    # (The strategy is part of the model's pytree structure: the optimiser of the split
    # model is built from it.)
    optimizer = recurrax.make_optimizer(split, learning_rate=1e-2)
    opt_state = optimizer.init(eqx.filter(split, eqx.is_inexact_array))
    step2 = recurrax.make_data_parallel_train_step(optimizer, seq_loss, mesh2)
    batch2 = recurrax.shard_batch((x, y), mesh2)
    parallel = step2(
        recurrax.replicate(split, mesh2), recurrax.replicate(nstate, mesh2),
        recurrax.replicate(opt_state, mesh2), batch2, None,
    )
    leaves = lambda t: [np.asarray(v) for v in jax.tree.leaves(eqx.filter(t, eqx.is_array))]
    results["train2d_err"] = max(
        [abs(float(single[3]["loss"]) - float(parallel[3]["loss"])) / float(single[3]["loss"])]
        + [float(np.max(np.abs(p - s))) for p, s in zip(leaves(single[0]), leaves(parallel[0]))]
    )
    results["train2d_batch_spec"] = [str(v.sharding.spec) for v in batch2]
    hlo2 = eqx.filter_jit(lambda *args: step2(*args)).lower(
        recurrax.replicate(split, mesh2), recurrax.replicate(nstate, mesh2),
        recurrax.replicate(opt_state, mesh2), batch2, None,
    ).compile().compiled.as_text()
    results["collectives"] += collectives(hlo2)

    # The default strategy on a time-sharded input under explicit mesh axes (it used to
    # raise ShardingTypeError in the engine): partitioned by the compiler, same states.
    mesh = meshes["explicit8"]
    a = rng.uniform(0.5, 1.0, (L, N)); b = rng.normal(size=(L, N)); h0 = rng.normal(size=N)
    time = NamedSharding(mesh, P("seq"))
    auto = jax.jit(lambda a, b, h0: recurrax.linear_recurrence(a, b, h0))(
        jax.device_put(a, time), jax.device_put(b, time), h0
    )
    diff = np.abs(np.asarray(auto) - loop(a, b, h0, False, False))
    results["auto_explicit_err"] = float(np.max(diff))
    split = recurrax.SequenceParallelScan(mesh)
    try:
        jax.jit(lambda b: recurrax.linear_recurrence(0.5, b, method=split))(jnp.ones((12, 2)))
        results["not_divisible"] = None
    except ValueError as error:
        results["not_divisible"] = str(error)
    results["L"] = L
    print(json.dumps(results))
    """
)


def test_sequence_parallel_on_simulated_devices():
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=(env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip(),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])),
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    for case in out["cases"]:
        # States against a float64 loop, gradients against the unsharded engine: both to
        # float64 round-off (a few hundred operations of 1e-16 relative error each).
        assert case["state_err"] < 1e-12, case
        assert case["grad_err"] < 1e-12, case
        assert case["same_infinities"] and case["grad_finite"], case
        assert "('seq'" in case["out_spec"], case
    # The 2-D train step (data x seq) against the plain single-device step.
    assert out["train2d_batch_spec"] == ["P('data', 'seq')", "P('data',)"]
    assert out["train2d_err"] < 1e-12, out["train2d_err"]
    assert out["auto_explicit_err"] < 1e-12
    assert "length 12 must be divisible by the 8 devices" in out["not_divisible"]
    # Only block summaries cross devices: no collective result has an axis as long as a
    # device's block of L / 8 = 12 steps (let alone the whole time axis of L = 96). The
    # summaries are (devices, [batch,] state) and the one-step halos (1, state).
    assert out["collectives"], "no collective found: the check would be vacuous"
    kinds = {kind for kind, _, _ in out["collectives"]}
    assert "all-gather" in kinds, kinds
    longest = max(size for _, size, _ in out["collectives"])
    assert longest < out["L"] // 8, out["collectives"]
