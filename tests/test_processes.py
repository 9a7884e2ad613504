"""The training command line over several processes: `python -m experiments run ...
--processes N` on this machine (one CPU device per process, `jax.distributed` through
127.0.0.1, gloo collectives).

The same run on two processes ends with the metrics of one process on the same global
batch, at every step; a two-process run resumed with more steps continues from its
checkpoint as a one-process run does; bad launch options are refused before any work; a
failing process stops the others.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from experiments import cli, processes, train
from experiments.cli import main


ROOT = pathlib.Path(__file__).resolve().parent.parent

# A tiny run with dropout (the per-example keys of the global batch to split), resumed with
# more steps and an evaluation set of 15 examples (14 split over the processes, 1 evaluated
# by each process on its own).
TINY = [
    "run", "parity", "--model", "mingru", "--depth", "1", "--d-model", "8",
    "--model-set", "dropout=0.1", "--task-set", "max_length=16", "--batch-size", "8",
    "--steps", "4", "--eval-every", "2", "--eval-size", "16", "--checkpoint-every", "2",
]  # fmt: skip
MORE = ["--resume", "--steps", "6", "--eval-size", "15"]
COMPARED = ("loss", "grad_norm", "accuracy", "test_loss", "test_accuracy")

# One process: the run, then (in the same interpreter) a copy of it resumed with more steps.
REFERENCE = """
import json, shutil, sys
from experiments.cli import main
first, resumed, command, more = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:])
assert main([*command, "--out", first]) == 0
shutil.copytree(first, resumed)
assert main([*command, *more, "--out", resumed]) == 0
"""


def _environment() -> dict:
    env = dict(os.environ)
    # The programs are tiny and compiling them is most of the time: the backend's cheapest
    # optimisation level (the same for one process and for two) halves it.
    flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=flags, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")])
    )
    return env


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> str:
    """The standard output of a process that must succeed within 300 s."""
    try:
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:  # a hung run must not outlive the test
            process.kill()
            process.wait()
    assert process.returncode == 0, out[-2000:] + err[-4000:]
    return out


def _records(out: pathlib.Path) -> list[dict]:
    return [r for r in train.read_metrics(out / "metrics.jsonl") if "event" not in r]


def _assert_same_metrics(multi: pathlib.Path, single: pathlib.Path) -> None:
    """The same records, step by step, and the same final metrics: the same global batch
    split over two processes gives one process's numbers up to the order of float32 sums
    (about 1e-7 relative), bounded at 1e-5."""
    ours, theirs = _records(multi), _records(single)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert set(a) == set(b), (a, b)
        for name in COMPARED:
            if name in b:
                assert abs(a[name] - b[name]) <= 1e-5 * max(1.0, abs(b[name])), (name, a, b)
    final = json.loads((multi / "summary.json").read_text())["final"]
    expected = json.loads((single / "summary.json").read_text())["final"]
    assert set(final) == set(expected)
    for name, value in expected.items():
        assert abs(final[name] - value) <= 1e-5 * max(1.0, abs(value)), (name, final, expected)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-process and two-process runs of `TINY`, each also resumed with `MORE` (the
    one-process runs alongside the two-process ones: the machine's cores are shared)."""
    folder = tmp_path_factory.mktemp("processes")
    single, single_more = folder / "single", folder / "single-more"
    multi, multi_more = folder / "multi", folder / "multi-more"
    reference = _start(
        "-c", REFERENCE, str(single), str(single_more), json.dumps(TINY), json.dumps(MORE)
    )
    try:
        first = _finish(_start("-m", "experiments", *TINY, "--out", str(multi), "--processes", "2"))
        shutil.copytree(multi, multi_more)
        resumed = _finish(
            _start("-m", "experiments", *TINY, *MORE, "--out", str(multi_more), "--processes", "2")
        )
    finally:
        _finish(reference)
    return dict(
        single=single,
        single_more=single_more,
        multi=multi,
        multi_more=multi_more,
        first=first,
        resumed=resumed,
    )


def test_two_processes_end_with_the_metrics_of_one(runs):
    _assert_same_metrics(runs["multi"], runs["single"])
    out = runs["first"]
    assert "over 2 processes" in out and "final: {" in out
    # Process 0 alone reports: one header, one final line.
    assert out.count("final: {") == 1 and out.count("steps of batch 8") == 1
    summary = json.loads((runs["multi"] / "summary.json").read_text())
    # The command recorded is the one given (what the launched processes got is not).
    assert summary["environment"]["command"].endswith("--processes 2")
    assert "2 processes" in summary["environment"]["device"]
    files = sorted(p.name for p in (runs["multi"] / "checkpoints").iterdir())
    assert files == ["checkpoint-00000002.rcx", "checkpoint-00000004.rcx"]
    assert (runs["multi"] / "report.md").exists()


def test_two_process_run_resumes_with_more_steps(runs):
    before = (runs["multi"] / "metrics.jsonl").read_text().splitlines()
    after = (runs["multi_more"] / "metrics.jsonl").read_text().splitlines()
    assert after[: len(before)] == before  # steps 1-4 kept as written
    event = json.loads(after[len(before)])
    assert event["event"] == "resume"
    assert event["changed"] == {"steps": [4, 6], "eval_size": [16, 15]}
    assert [r["step"] for r in _records(runs["multi_more"])] == [1, 2, 3, 4, 5, 6]
    assert "resumed from step 4" in runs["resumed"]
    assert json.loads((runs["multi_more"] / "run.json").read_text())["steps"] == 6
    # Steps 5 and 6 and the final metrics are those of one process resuming the same run.
    _assert_same_metrics(runs["multi_more"], runs["single_more"])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


BAD = [
    (["--processes", "3"], ["--batch-size 8", "--processes 3"]),
    (["--processes", "0"], ["--processes", "got 0"]),
    (["--processes", "-2"], ["--processes", "got -2"]),
    (["--processes", "2", "--distributed"], ["--processes 2", "--distributed"]),
    (["--processes", "2", "--coordinator", "127.0.0.1:1234"], ["--processes 2", "--coordinator"]),
    (["--coordinator", "localhost"], ["--coordinator", "'localhost'"]),
    (["--coordinator", "h:99999"], ["--coordinator", "'h:99999'"]),
    (["--num-processes", "0"], ["--num-processes", "got 0"]),
    (["--num-processes", "3", "--process-id", "0"], ["--batch-size 8", "--num-processes 3"]),
    (["--num-processes", "2", "--process-id", "2"], ["--process-id", "below", "got 2"]),
    (["--process-id", "-1"], ["--process-id", "got -1"]),
]


@pytest.mark.parametrize("options, words", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_launch_options_are_refused_before_any_work(
    options, words, tmp_path, capsys, monkeypatch
):
    def forbidden(*args, **kwargs):
        raise AssertionError("processes were started or joined before the options were checked")

    monkeypatch.setattr(processes, "launch", forbidden)
    monkeypatch.setattr(processes, "join", forbidden)
    monkeypatch.setattr(train, "train", forbidden)
    out = tmp_path / "run"
    assert main([*TINY, *options, "--out", str(out)]) == 2
    line = _error_line(capsys)
    for word in words:
        assert word in line, line
    assert not out.exists()


def test_a_folder_holding_a_run_is_refused_before_starting_processes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(processes, "launch", lambda *a, **k: pytest.fail("processes started"))
    (tmp_path / "metrics.jsonl").write_text("")
    assert main([*TINY, "--processes", "2", "--out", str(tmp_path)]) == 2
    assert "--resume" in _error_line(capsys)


# A stand-in for `python -m experiments`: process 1 fails at once, process 0 would wait for
# it for ever (as in a collective).
FAILING = """
import sys, time
if sys.argv[sys.argv.index("--process-id") + 1] == "1":
    print("process 1 gives up", file=sys.stderr)
    sys.exit(7)
time.sleep(600)
"""


def test_a_failing_process_stops_the_others(capfd):
    start = time.monotonic()
    code = processes.launch(
        ["run"], 2, program=[sys.executable, "-c", FAILING], grace=0.5, poll=0.05
    )
    assert code == 7
    assert time.monotonic() - start < 30  # not the 600 s process 0 would wait
    err = capfd.readouterr().err
    assert "[process 1] process 1 gives up" in err
    assert "process 1 of 2 failed (exit status 7)" in err


def test_the_launched_command_is_the_given_one_with_the_launch_options():
    argv = [*TINY, "--processes", "2"]
    args = cli.parser().parse_args(
        [
            *argv,
            processes.SPAWNED,
            "1",
            "--processes",
            "1",
            "--coordinator",
            "127.0.0.1:5",
            "--num-processes",
            "2",
            "--process-id",
            "1",
        ]
    )
    assert (args.processes, args.num_processes, args.process_id) == (1, 2, 1)
    assert processes.joins(args) and args.spawned_by == 1
    assert processes.strip_launch([*argv, processes.SPAWNED, "1", "--processes", "1"]) == argv


def test_the_checkpoint_of_two_processes_is_that_of_one(runs):
    """What process 0 saved is an ordinary checkpoint (one process can resume it) holding the
    parameters one process trains."""
    import equinox as eqx
    import jax
    import numpy as np

    import recurrax

    config = train.RunConfig.from_dict(json.loads((runs["multi"] / "run.json").read_text()))
    _, _, skeleton, state = train.build(config, initialise=False)
    models = [
        recurrax.CheckpointManager(runs[name] / "checkpoints").restore(model=skeleton).model
        for name in ("multi", "single")
    ]
    leaves = [jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array)) for m in models]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# A stand-in for the launched processes: each writes its process id, watches its launcher
# as `processes.join` does, and waits.
WAITING = """
import os, pathlib, sys, time
from experiments import processes
folder = pathlib.Path(os.environ["WAITING_FOLDER"])
processes._watch_parent(int(sys.argv[sys.argv.index(processes.SPAWNED) + 1]))
(folder / str(os.getpid())).write_text("")
time.sleep(600)
"""

LAUNCHER = """
import sys
from experiments import processes
processes.launch(["run"], 2, program=[sys.executable, "-c", sys.argv[1]])
"""


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (nobody collected it yet)


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_processes_do_not_outlive_the_command(how, tmp_path):
    """Terminated, the command stops its processes; killed outright, its processes notice
    (within a second or so) and exit."""
    import signal

    env = dict(_environment(), WAITING_FOLDER=str(tmp_path))
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, WAITING], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.iterdir())) < 2:
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.1)
        children = [int(p.name) for p in tmp_path.iterdir()]
        assert all(_alive(pid) for pid in children)
        launcher.send_signal(getattr(signal, how))
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in children)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


KILLED = [
    "run", "parity", "--model", "mingru", "--depth", "1", "--d-model", "8",
    "--model-set", "dropout=0.1", "--task-set", "max_length=16", "--batch-size", "8",
    "--steps", "200", "--eval-every", "100", "--eval-size", "16", "--checkpoint-every", "10",
]  # fmt: skip


def _child(launcher: int, process_id: int) -> int | None:
    """The pid of the launched process `process_id` of the command `launcher`, from /proc."""
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "--spawned-by" in argv and argv[argv.index("--spawned-by") + 1] == str(launcher):
            if argv[argv.index("--process-id") + 1] == str(process_id):
                return int(entry.name)
    return None


def _checkpoint_steps(out: pathlib.Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*.rcx"))


@pytest.mark.skipif(not pathlib.Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_one_process_killed_mid_run_then_resumed_loses_nothing(tmp_path):
    """SIGKILL one of the two processes in the middle of a run: the command stops (non-zero),
    the checkpoints written so far stay complete, and `--resume` ends with the metrics, every
    step, of the same run never interrupted."""
    import signal

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = _start("-m", "experiments", *KILLED, "--out", str(whole), "--processes", "2")
    try:
        launcher = _start("-m", "experiments", *KILLED, "--out", str(killed), "--processes", "2")
        try:
            deadline = time.monotonic() + 300
            while not (killed / "checkpoints").is_dir() or max(
                _checkpoint_steps(killed), default=0
            ) < 40:
                assert launcher.poll() is None, launcher.communicate()[1][-4000:]
                assert time.monotonic() < deadline, "no checkpoint past step 40 in 300 s"
                time.sleep(0.02)
            victim = _child(launcher.pid, 1)
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            launcher.communicate(timeout=120)
            assert launcher.returncode != 0
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
        steps = _checkpoint_steps(killed)
        assert steps and max(steps) < 200, steps  # killed before the end
        assert _child(launcher.pid, 0) is None and _child(launcher.pid, 1) is None
        _finish(
            _start("-m", "experiments", *KILLED, "--out", str(killed), "--processes", "2",
                   "--resume")
        )
    finally:
        _finish(reference)
    ours, theirs = _records(killed), _records(whole)
    assert [r["step"] for r in ours] == list(range(1, 201)) == [r["step"] for r in theirs]
    for a, b in zip(ours, theirs):
        for name in COMPARED:
            if name in b:
                assert abs(a[name] - b[name]) <= 1e-6 * max(1.0, abs(b[name])), (name, a, b)
