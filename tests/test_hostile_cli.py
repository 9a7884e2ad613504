"""Hostile input to the training command line and to its run folders: wrong option values,
damaged files, folders in the way. Each case asserts a clear error (exit 2, one line naming
the option or the file, nothing written, nothing deleted) or the right result.

docs/reliability.md counts the cases of each kind."""

import hashlib
import json
import os
import pathlib
import shutil
import warnings

import pytest

import recurrax
from experiments import cli, train
from experiments.cli import main


# A tiny run: one block of width 8, four steps of batch 4.
TINY = [
    "--model", "mingru", "--depth", "1", "--d-model", "8", "--steps", "4", "--batch-size", "4",
    "--eval-size", "8", "--eval-every", "2", "--checkpoint-every", "2",
]  # fmt: skip
PARITY = ["run", "parity", *TINY]
CHANGED = ["--lr", "1e-4", "--steps", "6"]  # the optimisation settings a resume changes


def _snapshot(folder: pathlib.Path) -> dict:
    """Every file under `folder` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# -- option values: refused up front ---------------------------------------------------------

# (arguments after `run`, words the one-line error must contain)
BAD_OPTIONS = [
    (["parity", *TINY, "--eval-every", "0"], ["--eval-every", "eval_every=0"]),
    (["parity", *TINY, "--eval-every", "-2"], ["--eval-every", "eval_every=-2"]),
    (["parity", *TINY, "--checkpoint-every", "0"], ["--checkpoint-every", "checkpoint_every=0"]),
    (["parity", *TINY, "--checkpoint-every", "-1"], ["--checkpoint-every", "=-1"]),
    (["parity", *TINY, "--steps", "0"], ["--steps", "steps=0"]),
    (["parity", *TINY, "--batch-size", "0"], ["--batch-size", "batch_size=0"]),
    (["parity", *TINY, "--eval-size", "-8"], ["--eval-size", "eval_size=-8"]),
    (["parity", *TINY, "--lr", "0"], ["--lr", "learning_rate=0.0"]),
    (["parity", *TINY, "--lr=-1e-3"], ["--lr", "learning_rate=-0.001"]),
    (["parity", *TINY, "--lr", "nan"], ["--lr", "learning_rate=nan"]),
    (["parity", *TINY, "--lr", "inf"], ["--lr", "learning_rate=inf"]),
    (["parity", *TINY, "--lr-factor", "0"], ["--lr-factor", "lr_factor=0.0"]),
    (["parity", *TINY, "--weight-decay", "-0.1"], ["--weight-decay", "weight_decay=-0.1"]),
    (["parity", *TINY, "--weight-decay", "nan"], ["--weight-decay", "weight_decay=nan"]),
    (["parity", *TINY, "--clip-norm", "0"], ["--clip-norm", "clip_norm=0.0"]),
    (["parity", *TINY, "--clip-norm", "inf"], ["--clip-norm", "clip_norm=inf"]),
    (["parity", *TINY, "--warmup-fraction", "1"], ["--warmup-fraction", "warmup_fraction=1.0"]),
    (["parity", *TINY, "--warmup-fraction", "-0.5"], ["--warmup-fraction", "=-0.5"]),
    (["digits", *TINY, "--eval-length", "64"], ["--eval-length 64", "digits"]),
    (["listops", *TINY, "--eval-length", "100"], ["--eval-length 100", "listops"]),
    (["parity", *TINY, "--eval-length", "0"], ["--eval-length", "got 0"]),
    (
        ["parity", *TINY, "--model-set", 'mixer_options={"r_min": 0.5}'],
        ["--model-set mixer_options", "'r_min'", "MinGRU"],
    ),
    (
        ["adding", *TINY, "--model", "lru", "--model-set", 'mixer_options={"rmax": 0.9}'],
        ["--model-set mixer_options", "'rmax'", "r_max"],
    ),
    (
        ["adding", *TINY, "--model", "ssm", "--model-set", 'mixer_options={"dt": 0.1}'],
        ["--model-set mixer_options", "'dt'", "DiagonalSSM"],
    ),
    (["parity", *TINY, "--model", "transformer"], ["--model", "'transformer'"]),
    (["parity", *TINY, "--variant", "lru-magic"], ["--variant", "'lru-magic'"]),
    (["parity", *TINY, "--task-set", "max_length"], ["--task-set", "'max_length'"]),
    (["parity", *TINY, "--task-set", "max_length=0"], ["max_length"]),
    (["parity", *TINY, "--resume", "--overwrite"], ["--resume", "--overwrite"]),
]


@pytest.mark.parametrize("arguments, words", BAD_OPTIONS, ids=[" ".join(a[-2:]) for a, _ in
                                                               BAD_OPTIONS])
def test_bad_option_is_refused_before_any_work(arguments, words, tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("training or building started before the options were checked")

    monkeypatch.setattr(train, "train", forbidden)
    monkeypatch.setattr(train, "build", forbidden)
    out = tmp_path / "run"
    assert main(["run", *arguments, "--out", str(out)]) == 2
    line = _error_line(capsys)
    for word in words:
        assert word in line, line
    assert not out.exists()  # nothing written


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    assert main([*PARITY, "--out", str(file)]) == 2
    assert "--out" in (line := _error_line(capsys)) and "notes.txt" in line and "file" in line
    assert file.read_text() == "mine"
    assert main([*PARITY, "--out", str(file / "run")]) == 2
    assert "--out" in (line := _error_line(capsys)) and "notes.txt" in line
    assert file.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_out_in_an_unwritable_folder_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main([*PARITY, "--out", str(locked / "run")]) == 2
        assert "--out" in (line := _error_line(capsys)) and "not writable" in line
    finally:
        locked.chmod(0o700)


def test_unwritable_folder_is_refused_by_the_check(tmp_path, monkeypatch):
    """The same check where the tests run as root: the folder reported unwritable."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path)
                        else real_access(path, mode))
    with pytest.raises(ValueError, match="--out.*cannot be written"):
        train.check_out(tmp_path / "run")


# -- run folders: an existing finished run, then hostile changes to it ------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (steps 2 and 4 checkpointed)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*PARITY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _damage_header(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[0:8] = b"garbage!"
    path.write_bytes(bytes(data))


def _damage_payload(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def test_rerun_without_resume_refuses_and_keeps_the_run(run_copy, capsys):
    before = _snapshot(run_copy)
    assert main([*PARITY, "--out", str(run_copy)]) == 2
    line = _error_line(capsys)
    assert "--resume" in line and "--overwrite" in line and str(run_copy) in line
    assert _snapshot(run_copy) == before


def test_rerun_with_a_bad_option_refuses_and_keeps_the_run(run_copy, capsys):
    before = _snapshot(run_copy)
    assert main([*PARITY, "--out", str(run_copy), "--overwrite", "--eval-every", "0"]) == 2
    assert "--eval-every" in _error_line(capsys)
    assert _snapshot(run_copy) == before


def test_overwrite_starts_again_and_keeps_other_files(run_copy, capsys):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "checkpoints" / "mine.txt").write_text("mine too")
    assert main([*PARITY, "--out", str(run_copy), "--overwrite", *CHANGED]) == 0
    assert (run_copy / "notes.txt").read_text() == "mine"
    assert (run_copy / "checkpoints" / "mine.txt").read_text() == "mine too"
    assert recurrax.CheckpointManager(run_copy / "checkpoints").all_steps() == [2, 4, 6]
    assert json.loads((run_copy / "summary.json").read_text())["steps"] == 6
    assert "changes" not in json.loads((run_copy / "run.json").read_text())


def test_resume_of_a_finished_run_keeps_the_loss(run_copy, capsys):
    """Item 5 of the issue: `final` keeps the training loss of the last step."""
    before = json.loads((run_copy / "summary.json").read_text())["final"]
    assert main([*PARITY, "--out", str(run_copy), "--resume"]) == 0
    after = json.loads((run_copy / "summary.json").read_text())["final"]
    assert "loss" in after and after == before


def test_resume_accepts_a_changed_learning_rate_and_records_it(run_copy, capsys):
    args = [*PARITY, "--out", str(run_copy), "--resume", *CHANGED]
    assert main(args) == 0
    assert "resumed from step 4" in capsys.readouterr().out
    data = json.loads((run_copy / "run.json").read_text())
    assert data["learning_rate"] == 1e-4 and data["steps"] == 6
    (change,) = data["changes"]
    assert change["step"] == 4 and change["changed"]["learning_rate"][1] == 1e-4
    assert change["changed"]["steps"] == [4, 6]
    records = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if r.get("event") == "resume"]
    assert len(events) == 1 and events[0]["changed"] == change["changed"]
    assert [r["step"] for r in records if "event" not in r] == list(range(1, 7))
    assert recurrax.CheckpointManager(run_copy / "checkpoints").all_steps()[-1] == 6


# (options that change the model or the task on --resume, the field named in the refusal)
CHANGED_MODEL = [
    (["--depth", "2"], "model_config"),
    (["--d-model", "16"], "model_config"),
    (["--model-set", "dropout=0.1"], "model_config"),
    (["--task-set", "max_length=20"], "task_options"),
    (["--seed", "1"], "seed"),
]


@pytest.mark.parametrize("options, field", CHANGED_MODEL, ids=[c[1] + c[0][0] for c in
                                                              CHANGED_MODEL])
def test_resume_refuses_a_changed_model_or_task(options, field, run_copy, capsys):
    before = _snapshot(run_copy)
    assert main([*PARITY, "--out", str(run_copy), "--resume", *options]) == 2
    line = _error_line(capsys)
    assert "--resume" in line and field in line and "--overwrite" in line
    assert _snapshot(run_copy) == before


def test_truncated_last_metrics_line_is_dropped_with_a_warning(run_copy, capsys):
    metrics = run_copy / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:3]) + "\n" + lines[3][:17])  # killed mid-write
    for path in recurrax.CheckpointManager(run_copy / "checkpoints").all_steps()[1:]:
        os.unlink(recurrax.CheckpointManager(run_copy / "checkpoints").path(path))
    with pytest.warns(UserWarning, match="metrics.jsonl.*dropping its last line"):
        assert main([*PARITY, "--out", str(run_copy), "--resume"]) == 0
    steps = [r["step"] for r in train.read_metrics(metrics)]
    assert steps == [1, 2, 3, 4]


def test_damaged_metrics_line_in_the_middle_is_refused_by_name(run_copy, capsys):
    metrics = run_copy / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1] = lines[1][:10]
    metrics.write_text("\n".join(lines) + "\n")
    before = _snapshot(run_copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*PARITY, "--out", str(run_copy), "--resume"]) == 2
    line = _error_line(capsys)
    assert "metrics.jsonl" in line and "line 2" in line
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("damage", [_damage_header, _damage_payload],
                         ids=["headers", "payloads"])
def test_every_checkpoint_damaged_refuses_and_keeps_them(damage, run_copy, capsys):
    manager = recurrax.CheckpointManager(run_copy / "checkpoints")
    for step in manager.all_steps():
        damage(manager.path(step))
    before = _snapshot(run_copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*PARITY, "--out", str(run_copy), "--resume"]) == 2
    line = _error_line(capsys)
    assert "checkpoint-00000004.rcx" in line or "steps [4, 2]" in line, line
    assert "left in place" in line
    assert _snapshot(run_copy) == before  # not deleted, not restarted from 0


def test_newest_checkpoint_damaged_resumes_from_the_one_before(run_copy, capsys):
    manager = recurrax.CheckpointManager(run_copy / "checkpoints")
    _damage_header(manager.path(4))
    with pytest.warns(UserWarning, match="skipping step 4"):
        assert main([*PARITY, "--out", str(run_copy), "--resume"]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    assert manager.latest() == manager.path(4)  # rewritten by the resumed run


def test_directory_named_like_a_checkpoint_is_ignored(run_copy, capsys):
    manager = recurrax.CheckpointManager(run_copy / "checkpoints")
    folder = manager.path(99)
    folder.mkdir()
    (folder / "inside.txt").write_text("mine")
    assert main([*PARITY, "--out", str(run_copy), "--resume", *CHANGED]) == 0
    assert "resumed from step 4" in capsys.readouterr().out
    assert manager.all_steps() == [2, 4, 6]
    assert (folder / "inside.txt").read_text() == "mine"


def test_stale_temporary_files_are_removed_when_a_run_resumes(run_copy, capsys):
    stale = run_copy / "checkpoints" / ".checkpoint-00000006.rcx.tmp-999999999-deadbeef"
    stale.write_bytes(b"\0" * 1024)
    assert main([*PARITY, "--out", str(run_copy), "--resume"]) == 0
    assert not stale.exists()


def test_damaged_run_json_is_refused_by_name(run_copy, capsys):
    (run_copy / "run.json").write_text('{"task": "parity", "mod')
    assert main([*PARITY, "--out", str(run_copy), "--resume"]) == 2
    assert "run.json" in _error_line(capsys)


def test_stale_summary_does_not_make_a_run_done(run_copy):
    """The campaign's skip test: a summary of this configuration and a checkpoint of its
    last step; a summary left by an unfinished or another run does not count."""
    from experiments.cli import parser as _parser

    config, _ = cli.configure(_parser().parse_args([*PARITY, "--out", str(run_copy)]))
    assert cli.is_done(config, run_copy)
    other, _ = cli.configure(_parser().parse_args([*PARITY, "--steps", "8"]))
    assert not cli.is_done(other, run_copy)
    manager = recurrax.CheckpointManager(run_copy / "checkpoints")
    os.unlink(manager.path(4))
    assert not cli.is_done(config, run_copy)  # the summary of a run since cut short


def test_metrics_are_strict_json_after_a_divergence(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*PARITY, "--out", str(out), "--lr", "1e30", "--steps", "6"]) == 3
    text = (out / "metrics.jsonl").read_text()

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    records = [json.loads(line, parse_constant=refuse) for line in text.splitlines()]
    assert records[-1]["event"] == "diverged"
    assert any(v in ("NaN", "Infinity", "-Infinity") for v in records[-1].values())
    assert all(map(lambda r: r is not None, train.read_metrics(out / "metrics.jsonl")))

