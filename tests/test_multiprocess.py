"""Multi-host data parallelism: several processes on this machine with `jax.distributed`.

Each worker is a separate Python process with one CPU device, joined through a coordinator
on 127.0.0.1 (gloo CPU collectives). Every process passes its own rows of the global batch
to `shard_batch` and the same model to `replicate`; the losses and the trained parameters
must be those of one process training on the whole batch. The checkpoint manager writes from
process 0 only and every process reads the result back.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import pytest

from .helpers import FULL_GRIDS


ROOT = pathlib.Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import json
    import pathlib
    import sys

    import jax

    process_id, processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=processes,
            process_id=process_id,
            initialization_timeout=60,
        )

    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    import recurrax

    assert jax.process_count() == processes and len(jax.devices()) == processes

    config = recurrax.ModelConfig(
        mixer="lru", d_model=8, depth=2, input_size=3, output_size=1, state_size=8,
        norm="layer", dropout=0.1,
    )
    model, state = config.build(key=jax.random.key(0))


    def loss_fn(model, state, batch, key):
        x, y = batch
        keys = jax.random.split(key, x.shape[0]) if key is not None else [None] * x.shape[0]
        if key is None:
            pred = jax.vmap(lambda x: model(x, state, key=None)[0])(x)
        else:
            pred = jax.vmap(lambda x, k: model(x, state, key=k)[0])(x, keys)
        return jnp.mean((pred[:, 0] - y) ** 2), (state, {})


    mesh = recurrax.make_data_mesh()
    optimizer = recurrax.make_optimizer(model, learning_rate=1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    step = recurrax.make_data_parallel_train_step(optimizer, loss_fn, mesh)
    evaluate = recurrax.make_eval_step(loss_fn, mesh)
    model, state, opt_state = recurrax.replicate((model, state, opt_state), mesh)

    rng = np.random.default_rng(1)
    rows = 8 // processes  # the global batch is 8 examples; this process's share
    mine = slice(process_id * rows, (process_id + 1) * rows)
    losses = []
    for i in range(4):
        x = rng.normal(size=(8, 12, 3)).astype(np.float32)
        y = np.sin(x.sum(axis=(1, 2))).astype(np.float32)
        batch = recurrax.shard_batch((x[mine], y[mine]), mesh)
        model, state, opt_state, metrics = step(model, state, opt_state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    evaluation = float(evaluate(model, state, (x[mine], y[mine]))["loss"])

    manager = recurrax.CheckpointManager(pathlib.Path(out) / "checkpoints")
    written = manager.save(4, model=model, opt_state=opt_state, config=config.to_dict())
    files = sorted(p.name for p in manager.directory.iterdir())
    restored = manager.restore(model=model, opt_state=opt_state)
    local = lambda t: [np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x
                       for x in jax.tree.leaves(eqx.filter(t, eqx.is_array))]
    same = all(np.array_equal(a, b) for a, b in zip(local(restored.model), local(model)))
    params = [a.tolist() for a in local(model)][:3]
    print(json.dumps({
        "process": jax.process_index(), "losses": losses, "eval": evaluation,
        "written": written.name, "files": files, "restored_same": bool(same),
        "restored_step": restored.step, "params": params,
    }))
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(processes: int, out: pathlib.Path) -> list[dict]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])),
    )
    port = str(_free_port())
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), str(processes), port, str(out)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = []
    try:
        for child in children:
            stdout, stderr = child.communicate(timeout=240)
            assert child.returncode == 0, stderr[-4000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for child in children:  # a failed or hung worker must not outlive the test
            if child.poll() is None:
                child.kill()
                child.wait()
    return results


# Four processes too with RECURRAX_FULL=1 (or outside CI): about a minute more on two cores.
@pytest.mark.parametrize("processes", [2, 4] if FULL_GRIDS else [2])
def test_data_parallel_over_processes_matches_one_process(tmp_path, processes):
    (single,) = _run(1, tmp_path / "single")
    workers = _run(processes, tmp_path / "multi")
    assert [w["process"] for w in workers] == list(range(processes))
    for worker in workers:
        # The same global batch, split over processes instead of held by one: the same
        # losses up to the order of float32 sums (about 1e-7 relative), bounded at 1e-5.
        for a, b in zip(worker["losses"], single["losses"]):
            assert abs(a - b) <= 1e-5 * abs(b), (worker["losses"], single["losses"])
        assert abs(worker["eval"] - single["eval"]) <= 1e-5 * abs(single["eval"])
        for a, b in zip(worker["params"], single["params"]):
            assert max(abs(u - v) for u, v in zip(_flat(a), _flat(b))) <= 1e-5
        # One file (written by process 0), read back by every process.
        assert worker["files"] == ["checkpoint-00000004.rcx"], worker["files"]
        assert worker["restored_same"] and worker["restored_step"] == 4
    assert single["losses"][-1] != single["losses"][0]


def _flat(x):
    if isinstance(x, list):
        return [v for item in x for v in _flat(item)]
    return [x]
