"""Fault injection on the training command: a run killed with SIGKILL at random moments and
resumed each time ends bit-identical to an uninterrupted run, never exposes an incomplete
checkpoint, never loses a complete one and leaves no temporary file; a divergence injected
mid-run (a stretch at a learning rate that overflows) is recovered by following the advice
the run prints."""

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import numpy as np
import pytest

import recurrax
from experiments import train
from experiments.cli import main


ROOT = pathlib.Path(__file__).resolve().parent.parent
# A tiny run with dropout (so the keys matter) and a checkpoint every 2 steps.
ARGS = [
    "run", "parity", "--model", "mingru", "--depth", "1", "--d-model", "8", "--steps", "40",
    "--batch-size", "4", "--eval-size", "8", "--eval-every", "20", "--checkpoint-every", "2",
    "--model-set", "dropout=0.1",
]  # fmt: skip
# Ten kills; six under CI (without RECURRAX_FULL=1): each costs a process start, ~8 s on two cores.
KILLS = 6 if os.environ.get("CI") and not os.environ.get("RECURRAX_FULL") else 10


def _environment(cache: pathlib.Path) -> dict:
    """The processes share a persistent compilation cache: each starts in seconds, and all
    run the same compiled programs."""
    return dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def _skeletons(out: pathlib.Path):
    config = train.RunConfig.from_dict(json.loads((out / "run.json").read_text()))
    _, _, model, state = train.build(config, initialise=False)
    opt_state = train._optimizer(config, model).init(eqx.filter(model, eqx.is_inexact_array))
    return model, opt_state, state


def _complete_checkpoints(out: pathlib.Path, skeletons) -> dict[int, list]:
    """Every checkpoint file of the run, loaded in full (header and payload checked): a
    file under a checkpoint's name is always complete. `{step: leaves}`."""
    model, opt_state, state = skeletons
    manager = recurrax.CheckpointManager(out / "checkpoints")
    found = {}
    for step in manager.all_steps():
        try:
            loaded = recurrax.load_checkpoint(
                manager.path(step), model=model, opt_state=opt_state, state=state
            )
        except FileNotFoundError:  # rotated away between the listing and the read
            continue
        found[step] = [
            np.asarray(x) for x in jax.tree.leaves((loaded.model, loaded.opt_state, loaded.state))
        ]
    return found


def _lines(path: pathlib.Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_killed_repeatedly_and_resumed_equals_an_uninterrupted_run(tmp_path):
    env = _environment(tmp_path / "compilation-cache")
    whole = tmp_path / "whole"
    done = subprocess.run(
        [sys.executable, "-m", "experiments", *ARGS, "--out", str(whole)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    skeletons = _skeletons(whole)

    killed = tmp_path / "killed"
    metrics = killed / "metrics.jsonl"
    chooser = random.Random(14)
    # Where each process is killed: after a random number of newly logged steps (0: while it
    # starts) and a random delay of up to 40 ms (a checkpoint every 2 steps: some kills land
    # in the middle of a write).
    newest = 0
    for kill in range(KILLS):
        process = subprocess.Popen(
            [sys.executable, "-m", "experiments", *ARGS, "--out", str(killed), "--resume"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if kill % 3 == 0:
            time.sleep(chooser.uniform(0.0, 3.0))  # anywhere in the start-up
        else:
            target = _lines(metrics) + chooser.randint(1, 5)
            deadline = time.time() + 300
            while _lines(metrics) < target and process.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(chooser.uniform(0.0, 0.04))
        process.send_signal(signal.SIGKILL)
        process.wait()
        complete = _complete_checkpoints(killed, skeletons)
        # Never loses a complete checkpoint: the newest step only moves forward.
        assert max(complete, default=0) >= newest, (kill, sorted(complete), newest)
        newest = max(complete, default=0)
    assert newest > 0, f"no checkpoint was completed in {KILLS} runs"

    resumed = subprocess.run(
        [sys.executable, "-m", "experiments", *ARGS, "--out", str(killed), "--resume"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout

    # Bit-identical: the final checkpoint's every array, and the loss of every step.
    final_whole = _complete_checkpoints(whole, skeletons)[40]
    final_killed = _complete_checkpoints(killed, skeletons)[40]
    assert len(final_whole) == len(final_killed)
    for a, b in zip(final_whole, final_killed):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    records = [r for r in train.read_metrics(metrics) if "event" not in r]
    assert [r["step"] for r in records] == list(range(1, 41))
    reference = train.read_metrics(whole / "metrics.jsonl")
    assert [r["loss"] for r in records] == [r["loss"] for r in reference]
    assert records[-1]["test_loss"] == reference[-1]["test_loss"]
    # No temporary file left anywhere in the run folder.
    leftovers = [p.name for p in killed.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_injected_divergence_is_recovered_by_the_printed_advice(tmp_path, capsys):
    """Ten good steps, then a stretch at a learning rate that overflows float32 (a changed
    optimisation setting on --resume): the run stops at the first non-finite step with every
    checkpoint finite, and the command it advises completes the run."""
    out = tmp_path / "run"
    base = ["run", "parity", "--model", "mingru", "--depth", "1", "--d-model", "8",
            "--batch-size", "4", "--eval-size", "8", "--eval-every", "10",
            "--checkpoint-every", "5", "--out", str(out)]  # fmt: skip
    assert main([*base, "--steps", "10"]) == 0
    capsys.readouterr()
    assert main([*base, "--steps", "30", "--resume", "--lr", "1e39"]) == 3
    err = capsys.readouterr().err
    assert re.search(r"became (nan|inf|-inf) at step 1[12]\b", err), err
    advice = re.search(r"rerun the same command with (--resume --lr (\S+))", err)
    assert advice, err
    skeletons = _skeletons(out)
    complete = _complete_checkpoints(out, skeletons)
    assert sorted(complete) == [5, 10]
    for leaves in complete.values():
        assert all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind in "fc")

    assert main([*base, "--steps", "30", *advice.group(1).split()]) == 0
    assert float(advice.group(2)) == pytest.approx(2e-3)  # the rate before the stretch
    run = json.loads((out / "run.json").read_text())
    assert [c["step"] for c in run["changes"]] == [10, 10]
    assert run["changes"][0]["changed"]["learning_rate"] == [2e-3, 1e39]
    assert run["changes"][1]["changed"]["learning_rate"] == [1e39, pytest.approx(2e-3)]
    records = [r for r in train.read_metrics(out / "metrics.jsonl") if "event" not in r]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert all(np.isfinite(r["loss"]) for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert np.isfinite(summary["final"]["loss"]) and summary["steps"] == 30
