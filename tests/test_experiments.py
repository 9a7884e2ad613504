"""The experiments package: the speed and accuracy commands run and report what they claim."""

import dataclasses
import re
import statistics

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import accuracy_engine, speed_engine
from experiments._timing import Machine
from experiments.cli import main


def test_speed_engine_command_writes_its_tables(tmp_path, capsys):
    out = tmp_path / "speed.md"
    assert main(["speed", "engine", "--lengths", "32", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    for name in speed_engine.implementations():
        assert f"| {name} |" in text
    assert "memory floor" in text and "speed-up, forward+backward" in text
    assert "python -m experiments speed engine --lengths 32 --repeats 1" in text
    assert "![forward and forward+backward time" in text and "(speed.png)" in text
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_common_form_computes_the_same_states():
    import jax
    import jax.numpy as jnp

    import recurrax

    lam, b = speed_engine._inputs(64)
    ours = jax.vmap(lambda b: recurrax.linear_recurrence(lam, b))(b)
    theirs = jax.vmap(lambda b: speed_engine.common_form(lam, b))(b)
    assert jnp.max(jnp.abs(ours - theirs)) / jnp.max(jnp.abs(theirs)) < 1e-5


def test_reference_loop_matches_closed_form():
    a = np.full(3, 0.5)
    b = np.ones((4, 3))
    assert np.allclose(accuracy_engine.reference(a, b)[-1], (1 - 0.5**4) / 0.5)


@pytest.mark.slow
def test_float32_accuracy_at_long_length(long_length):
    """The accuracy claims of docs/results/accuracy-engine.md, at a bounded length in CI."""
    rows = accuracy_engine.measure(long_length, log=lambda *_: None)
    err = {(r[0], r[1], r[2]): float(r[3]) for r in rows}
    for strategy in ("SequentialScan", "ChunkedScan", "AssociativeScan", "default (AutoScan)"):
        assert err["near unit circle", "linear_recurrence", strategy] < 5e-4
        assert err["strong decay", "linear_recurrence", strategy] < 1e-6
        assert err["strong decay", "log_linear_recurrence", strategy] < 1e-6
        assert err["near unit circle", "log_linear_recurrence", strategy] < 1e-2
    # Combining in log space beats the cumulative-sum form under strong decay.
    assert (
        err["strong decay", "common log-space form", "cumsum + logcumsumexp"]
        > 100 * err["strong decay", "log_linear_recurrence", "default (AutoScan)"]
    )


def test_accuracy_command_writes_its_table(tmp_path):
    out = tmp_path / "acc.md"
    assert main(["accuracy", "engine", "--length", "256", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| strong decay | log_linear_recurrence | ChunkedScan |" in text
    # Below the figure's lengths there is one length: no figure, no length table.
    assert "Error against length" not in text and not out.with_suffix(".png").exists()


def test_accuracy_command_draws_error_against_length(tmp_path, monkeypatch):
    monkeypatch.setattr(accuracy_engine, "CURVE_LENGTHS", (64, 128))
    out = tmp_path / "acc.md"
    assert main(["accuracy", "engine", "--length", "256", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Error against length" in text and "(acc.png)" in text
    assert "| regime | solver | strategy | L = 64 | L = 128 | L = 256 |" in text
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_median_times_in_rounds_interleaves_the_functions():
    """Each function runs `warmup + repeats` times, the calls of different functions mixed
    within every round (in a seeded random order), and each median is of its own calls."""
    from experiments import _timing

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = _timing.median_times_in_rounds(fns, repeats=6, warmup=2)
    assert set(times) == set("abc") and all(t >= 0 for t in times.values())
    assert calls[:6] == list("abcabc")  # the warm-up rounds, in order
    rounds = [calls[6 + 3 * r: 9 + 3 * r] for r in range(6)]
    assert all(sorted(r) == list("abc") for r in rounds)  # one call of each per round
    assert len({tuple(r) for r in rounds}) > 1  # the order changes
    calls.clear()
    _timing.median_times_in_rounds(fns, repeats=6, warmup=2)
    assert [calls[6 + 3 * r: 9 + 3 * r] for r in range(6)] == rounds  # seeded


def test_speed_lru_command_writes_its_tables(tmp_path, monkeypatch):
    from experiments import speed_lru

    measured = []  # the command's own rows, reused below rather than timed again
    measure = speed_lru.measure

    def recorded(*args, **kwargs):
        measured.append(measure(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(speed_lru, "measure", recorded)
    out = tmp_path / "lru.md"
    args = ["speed", "lru", "--length", "16", "--repeats", "1", "--no-choice",
            "--allocator", "default", "--out", str(out)]
    assert main(args) == 0
    text = out.read_text()
    for name in speed_lru.implementations():
        assert f"| {name} |" in text
    assert "Default against the common form" in text
    assert "in a random order" in text and "The allocator as it is" in text
    (rows,) = measured
    choice = speed_lru.measure_choice(lengths=(16,), repeats=1, log=lambda *_: None,
                                      measured=rows)
    table = speed_lru.report(rows, choice, Machine.here(), "x")
    assert "## Scan or convolution?" in table and "depthwise kernel" in table
    # The LRU's scan and convolution at the table's length are the table's own timings.
    by = {r.name: r for r in rows}
    (lru,) = [row for row in choice if row[0].startswith("LRU")]
    assert lru[2] == (by[speed_lru.SCAN].forward, by[speed_lru.SCAN].backward)
    assert lru[3] == (by[speed_lru.CONVOLUTION].forward, by[speed_lru.CONVOLUTION].backward)
    assert "not timed twice" in table


def test_lru_common_form_is_the_same_layer():
    import jax
    import jax.numpy as jnp

    from experiments import speed_lru

    lru, u = speed_lru._lru(), speed_lru._inputs(64, batch=2)
    ours = jax.vmap(lru)(u)
    theirs = jax.vmap(lambda u: speed_lru.common_form(lru, u))(u)
    assert jnp.max(jnp.abs(ours - theirs)) / jnp.max(jnp.abs(theirs)) < 1e-5


def test_speed_minrnn_command_writes_table_and_plot(tmp_path):
    from experiments import speed_minrnn

    out = tmp_path / "minrnn.md"
    args = ["speed", "minrnn", "--lengths", "16", "32", "--repeats", "1", "--out", str(out)]
    assert main(args) == 0
    text = out.read_text()
    for name in speed_minrnn.models():
        assert f"| {name} |" in text
    assert "minGRU vs GRU" in text and "Peak memory" in text
    png = out.with_suffix(".png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_speed_model_command_writes_its_tables(tmp_path):
    from experiments import speed_model

    out = tmp_path / "model.md"
    args = ["speed", "model", "--lengths", "16", "--copy-lengths", "16", "--lru-depth", "1",
            "--copy-depth", "1", "--repeats", "2", "--allocator", "default", "--out", str(out)]
    assert main(args) == 0
    text = out.read_text()
    assert "## The LRU paper's model (LRA-like shape)" in text
    assert "## minGRU at the minRNN paper's selective-copying shape" in text
    for name in (speed_model.RECURRAX, speed_model.DIRECT_LRU, speed_model.DIRECT_LOG,
                 speed_model.DIRECT_ASSOC):
        assert f"| {name} | 16 |" in text
    assert text.count("| recurrax | 16 |") == 2
    assert "| faulted MiB / step |" in text and "Measured with the default allocator" in text
    assert f"| {speed_model.FLOOR} | 16 |" in text and "- L = 16: the recurrence" in text
    # the sides were timed in rounds (tiny models fit together): each ratio gives its range
    assert re.search(r"\| [0-9.]+× \([0-9.]+–[0-9.]+\) \|", text), text
    assert "in rounds" in text
    command = ("python -m experiments speed model --lengths 16 --copy-lengths 16 "
               "--lru-depth 1 --copy-depth 1 --repeats 2 --allocator default")
    assert f"`{command}`" in text
    png = out.with_suffix(".png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_speed_model_keeps_freed_memory_in_a_new_process(tmp_path, monkeypatch):
    """`--allocator keep` (the default) reruns the same command in a process whose
    GLIBC_TUNABLES keep freed memory, the user's own tunables kept beside them; a process
    that already has them measures in place and says so in its report."""
    from experiments import _timing, speed_model

    if not _timing.uses_glibc():
        pytest.skip("GLIBC_TUNABLES is read by glibc only")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=4")
    calls = []
    monkeypatch.setattr(speed_model.subprocess, "call",
                        lambda argv, env: calls.append((argv, env)) or 0)
    out = tmp_path / "model.md"
    args = ["speed", "model", "--lengths", "16", "--copy-lengths", "16", "--lru-depth", "1",
            "--copy-depth", "1", "--repeats", "1", "--out", str(out)]
    assert main(args) == 0
    [(argv, env)] = calls
    assert argv[1:3] == ["-m", "experiments"]
    assert argv[3:] == ["speed", "model", "--lengths", "16", "--copy-lengths", "16",
                        "--lru-depth", "1", "--copy-depth", "1", "--repeats", "1",
                        "--allocator", "keep", "--out", str(out)]
    tunables = env["GLIBC_TUNABLES"].split(":")
    assert "glibc.malloc.tcache_count=0" in tunables and "glibc.malloc.arena_max=4" not in tunables
    assert set(_timing.KEEP_FREED_MEMORY) <= set(tunables)
    assert _timing.freed_memory_kept(env) and not _timing.freed_memory_kept()
    assert not out.exists()  # the new process writes the report, not this one

    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])
    rows = [speed_model.Row("LRU", name, 16, 0.01, 2**20, 2.3, 0.0, 0.0)
            for name in (speed_model.RECURRAX, speed_model.DIRECT_LRU)]
    monkeypatch.setattr(speed_model, "measure", lambda *a, **k: rows)
    assert main(args) == 0 and len(calls) == 1
    text = out.read_text()
    assert "Measured with glibc's allocator keeping freed memory" in text
    assert "GLIBC_TUNABLES=" + ":".join(_timing.KEEP_FREED_MEMORY) in text
    assert "--allocator" not in text.split("`")[1]  # the default is not spelt out


def test_speed_model_times_each_side_in_its_own_process():
    """Every side runs in a process of its own: timed in rounds, or one after another when
    asked (or when their memory together would not fit); the rows carry every timed step,
    and a failure inside a timing process comes back with the side's name."""
    from experiments import speed_model

    names = (speed_model.RECURRAX, speed_model.DIRECT_LRU)
    options = dict(depth=1, batch=2, d_model=4, state_size=3)
    lines = []
    for interleave in (True, False):
        rows = speed_model.measure_model("LRU", 8, names, 2, options=options,
                                         interleave=interleave, log=lines.append)
        assert [r.name for r in rows] == list(names)
        assert all(len(r.times) == 2 and r.interleaved is interleave for r in rows)
        assert rows[1].loss_diff <= speed_model.LOSS_TOLERANCE * max(1.0, abs(rows[0].loss))
        assert all(r.step == statistics.median(r.times) and r.peak_bytes > 0 for r in rows)
        ratios = speed_model.round_ratios(rows, speed_model.DIRECT_LRU, 8)
        if interleave:
            assert ratios == [b / a for a, b in zip(rows[0].times, rows[1].times)]
        else:
            assert ratios == []  # no rounds: no per-round ratio
    assert any("round 2/2" in line for line in lines)
    assert any("one side after another" in line for line in lines)
    with pytest.raises(RuntimeError, match="'no such side'.*ValueError: `names` may hold"):
        speed_model.measure_model("LRU", 8, ("no such side",), 1, options=options, log=print)


def test_speed_model_memory_rule_and_loss_check():
    from experiments import speed_model

    gib = 2**30
    assert speed_model.fits_together([gib, 2 * gib], 10 * gib)
    assert not speed_model.fits_together([4 * gib, 4 * gib], 10 * gib)  # 2 × 5 + 2 × 1 > 10
    assert not speed_model.fits_together([gib, None], 10 * gib)  # a peak unknown
    assert not speed_model.fits_together([gib], None)  # the available memory unknown
    available = speed_model.available_memory()
    assert available is None or available > 0

    class Done:  # what `_check_losses` reads of a timing process
        def __init__(self, name, loss):
            self.name, self.losses = name, [loss]

    ours = Done(speed_model.RECURRAX, 2.5)
    speed_model._check_losses("LRU", 8, [ours, Done(speed_model.DIRECT_LRU, 2.5 + 2e-5)])
    speed_model._check_losses("LRU", 8, [ours, Done(speed_model.FLOOR, 9.0)])  # not checked
    with pytest.raises(AssertionError, match="direct .* computes loss 2.5001 at step 0"):
        speed_model._check_losses("LRU", 8, [ours, Done(speed_model.DIRECT_LRU, 2.5001)])


def test_speed_selective_command_writes_its_table(tmp_path):
    """The campaign's two models at a tiny shape: every component timed for both, ratios
    and the arithmetic written, and the models are the campaign's (Hawk block, the mixers)."""
    from experiments import speed_selective

    out = tmp_path / "selective.md"
    args = ["speed", "selective", "--length", "8", "--batch-size", "2", "--d-model", "4",
            "--depth", "1", "--repeats", "1", "--out", str(out)]
    assert main(args) == 0
    text = out.read_text()
    assert "| component | RG-LRU ms | selective SSM ms | ratio |" in text
    for component in speed_selective.COMPONENTS:
        assert re.search(rf"^\| {re.escape(component)} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+× \|$",
                         text, re.M), component
    command = ("python -m experiments speed selective --length 8 --batch-size 2 --d-model 4 "
               "--depth 1 --repeats 1")
    assert f"`{command}`" in text and "## The arithmetic" in text
    from experiments.cli import run_config

    config = speed_selective.configure("selective-ssm", ["--d-model", "4"], run_config)
    assert config.model_config["block"] == "hawk" and config.model_config["conv_kernel"] == 4
    assert config.batch_size == 32 and config.task == "selective_copying"


@pytest.mark.parametrize("model", ["lru", "mingru"])
def test_speed_model_direct_models_compute_recurrax_loss(model):
    """The direct JAX models with the recurrax model's parameters: the same loss at step 0
    and, after one AdamW update of each side's own gradient, at step 1 (float64, so any
    mis-mapped parameter, norm or gradient shows far above rounding)."""
    from experiments import speed_model

    small = dict(depth=1, batch=4, d_model=8, param_dtype="float64")
    if model == "lru":
        sides = speed_model.lru_sides(24, state_size=6, **small)
    else:
        sides = speed_model.copy_sides(24, expansion=3, **small)
    by_step = []
    for step in range(2):
        losses = [float(side()[3]) for side in sides]
        assert all(np.isfinite(losses)), losses
        for side, value in zip(sides[1:], losses[1:]):
            assert abs(value - losses[0]) < 1e-12 * max(1.0, abs(losses[0])), (
                step, side.name, value, losses[0])
        by_step.append(losses[0])
    assert abs(by_step[1] - by_step[0]) > 1e-6  # the update moved the model
    if model == "lru":  # BatchNorm's running statistics follow the same updates
        ours = speed_model.lru_direct_state(*sides[0].carry[:2])
        for (m1, v1), (m2, v2) in zip(ours, sides[1].carry[1]):
            assert jnp.allclose(m1, m2, rtol=1e-12, atol=1e-12)
            assert jnp.allclose(v1, v2, rtol=1e-12, atol=1e-12)


def test_accuracy_minrnn_reference_and_command(tmp_path):
    import jax

    import recurrax
    from experiments import accuracy_minrnn

    layer = recurrax.MinLSTM(3, 4, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (20, 3))
    assert np.allclose(accuracy_minrnn.reference(layer, x), layer(x), rtol=1e-10)
    out = tmp_path / "acc.md"
    assert main(["accuracy", "minrnn", "--length", "64", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| long memory | minLSTM | log | SequentialScan |" in text


# -- training runs -----------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from experiments import presets, train  # noqa: E402


ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run_command(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_list_command(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("selective_copying", "listops", "parity", "digits", "lru-no-gamma"):
        assert name in out


def test_run_writes_a_report_and_report_gathers(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "digits", "--model", "mingru", "--steps", "12", "--eval-every", "6"]
    assert main(args + ["--batch-size", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "final:" in printed and f"report: {out / 'report.md'}" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert "test_accuracy" in records[5] and "test_accuracy" in records[11]
    assert all(np.isfinite(r["loss"]) and r["seconds_per_step"] > 0 for r in records)
    report = (out / "report.md").read_text()
    assert "Repeat with: `python -m experiments run digits --model mingru" in report
    assert "git_commit" in report and "jax" in report and (out / "curves.png").stat().st_size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["test_accuracy"] == records[-1]["test_accuracy"]
    assert main(["report", str(out), "--out", str(tmp_path / "table.md")]) == 0
    page = (tmp_path / "table.md").read_text()
    assert "## digits" in page and "| 1 | – | mingru | 2 | 12 |" in page
    assert "    1. `python -m experiments run digits --model mingru --steps 12" in page
    rows = json.loads((tmp_path / "table.json").read_text())["runs"]
    assert [(r["run"], r["task"], r["steps"]) for r in rows] == [("run", "digits", 12)]
    # Rows already on the page are kept: another run joins them, the same run replaces itself.
    other = dict(rows[0], run="elsewhere", model="lru", command="python -m experiments x")
    (tmp_path / "table.json").write_text(json.dumps({"runs": [other, dict(rows[0], steps=1)]}))
    assert main(["report", str(out), "--out", str(tmp_path / "table.md")]) == 0
    rows = json.loads((tmp_path / "table.json").read_text())["runs"]
    assert sorted((r["run"], r["steps"]) for r in rows) == [("elsewhere", 12), ("run", 12)]
    page = (tmp_path / "table.md").read_text()
    assert "| 1 | – | lru | 2 | 12 |" in page and "| 2 | – | mingru | 2 | 12 |" in page
    # The run's test accuracy at each evaluation is kept, and drawn beside its task's table.
    assert [step for step, _ in rows[1]["curve"]] == [6, 12]
    assert "(table-digits.png)" in page and (tmp_path / "table-digits.png").stat().st_size


def _row(run, model, seed, value, curve=()):
    return {"run": run, "task": "mnist1d", "options": "", "model": model, "depth": 2,
            "steps": 10, "seed": seed, "metric": "test_accuracy", "value": value,
            "baseline": {"metric": "accuracy", "value": 0.1}, "paper": "GRU 91 %",
            "command": f"python -m experiments run mnist1d --model {model} --seed {seed}",
            "curve": [list(point) for point in curve]}


def test_results_page_gathers_seeds_and_draws_curves_and_extrapolation(tmp_path):
    from experiments import report

    data = {
        "runs": [_row("a0", "lru", 0, 0.90, [(5, 0.5), (10, 0.9)]),
                 _row("a1", "lru", 1, 0.80, [(5, 0.4), (10, 0.8)]),
                 _row("b0", "mingru", 0, 0.70)],
        "extrapolation": [{"run": "a0", "task": "induction_heads", "model": "lru",
                           "trained_at": 64, "commands": ["python -m experiments extrapolate a0"],
                           "results": {"64": {"accuracy": 1.0, "examples": 8},
                                       "256": {"accuracy": 0.5, "examples": 8}}}],
    }
    page = report.render(data, figures=tmp_path / "results.md")
    # Two seeds of one model share a row: the mean and the sample standard deviation.
    assert "| 1–2 | – | lru | 2 | 10 | 85 ± 7.1 % (2 seeds) |" in page
    assert "| 3 | – | mingru | 2 | 10 | 70.0 % |" in page
    # Runs whose commands differ in more than the seed keep their own rows.
    other = dict(data["runs"][1], command=data["runs"][1]["command"] + " --lr 1e-3")
    apart = report.render(dict(data, runs=[data["runs"][0], other, data["runs"][2]]))
    assert "| 1 | – | lru | 2 | 10 | 90.0 % |" in apart
    assert "| 2 | – | lru | 2 | 10 | 80.0 % |" in apart
    assert page.count("Published: GRU 91 %.") == 1
    assert "    3. `python -m experiments run mnist1d --model mingru --seed 0`" in page
    assert "(results-mnist1d.png)" in page and (tmp_path / "results-mnist1d.png").exists()
    assert "(results-induction-heads-extrapolation.png)" in page
    assert (tmp_path / "results-induction-heads-extrapolation.png").exists()
    # Without a figures path nothing is drawn.
    assert ".png" not in report.render(data)


def test_learning_curves_continue_a_curriculum(tmp_path, monkeypatch):
    from experiments import report

    drawn = {}
    monkeypatch.setattr(report, "line_panels", lambda panels, path, **kw: drawn.update(panels))
    short = dict(_row("short", "lru", 0, 0.5, [(2, 0.2), (4, 0.5)]), options="length=200",
                 steps=4)
    long = dict(_row("long", "lru", 0, 0.9, [(3, 0.7), (6, 0.9)]),
                options="length=1000, from short", steps=6,
                command="python -m experiments run mnist1d --init-from runs/short")
    report.plot_task_curves([short, long], tmp_path / "curves.png")
    # The second stage's evaluations are drawn after the first stage's 4 steps.
    assert drawn["mnist1d"] == {
        "lru, depth 2, length=200": [(2, 0.2), (4, 0.5)],
        "lru, depth 2, length=1000, after 4 steps at length=200": [(7, 0.7), (10, 0.9)],
    }


def test_learning_curves_of_two_budgets_are_both_drawn(tmp_path, monkeypatch):
    from experiments import report

    drawn = {}
    monkeypatch.setattr(report, "line_panels", lambda panels, path, **kw: drawn.update(panels))
    short = dict(_row("short", "mingru", 0, 0.6, [(2, 0.3), (4, 0.6)]), steps=4)
    long = dict(_row("long", "mingru", 0, 0.9, [(5, 0.7), (10, 0.9)]), steps=10,
                command="python -m experiments run mnist1d --model mingru --steps 10")  # fmt: skip
    other = dict(_row("other", "lru", 0, 0.8, [(2, 0.8)]), steps=4)
    report.plot_task_curves([short, long, other], tmp_path / "curves.png")
    assert drawn["mnist1d"] == {
        "mingru, depth 2, 4 steps": [(2, 0.3), (4, 0.6)],
        "mingru, depth 2, 10 steps": [(5, 0.7), (10, 0.9)],
        "lru, depth 2": [(2, 0.8)],
    }


def test_line_figures_give_up_to_twenty_lines_distinct_styles(tmp_path, monkeypatch):
    from experiments import _figures

    styles = []
    real_plot = _figures.plt.Axes.plot

    def plot(ax, *args, **kwargs):
        styles.append((str(kwargs["color"]), kwargs["marker"]))
        return real_plot(ax, *args, **kwargs)

    monkeypatch.setattr(_figures.plt.Axes, "plot", plot)
    series = {f"model {i}": [(1, 0.1 * i), (2, 0.1 * i + 0.05)] for i in range(20)}
    _figures.line_panels([("task", series)], tmp_path / "f.png", xlabel="x", ylabel="y",
                         xlog=False, ylog=False)  # fmt: skip
    assert len(styles) == 20 and len(set(styles)) == 20
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_results_page_shows_accuracy_at_other_lengths(tmp_path):
    from experiments import report

    rows = [dict(_row("p0", "lru", 0, 0.9), lengths={"64": 0.8, "128": 0.6}),
            dict(_row("p1", "lru", 1, 0.8), lengths={"64": 0.6, "128": 0.4}),
            _row("q0", "mingru", 0, 0.7)]
    page = report.render({"runs": rows, "extrapolation": []}, figures=tmp_path / "results.md")
    # One column per row of the task's table that was evaluated at other lengths (the mean
    # over seeds), one line per length; the figure beside it.
    assert "| length | lru, depth 2 |" in page
    assert "| 64 | 70.0 % |" in page and "| 128 | 50.0 % |" in page
    assert "(results-mnist1d-lengths.png)" in page
    assert (tmp_path / "results-mnist1d-lengths.png").stat().st_size
    # A run that was not evaluated at other lengths adds no such table.
    assert "| length |" not in report.render({"runs": rows[2:], "extrapolation": []})


def test_summary_row_keeps_the_metric_at_other_lengths(tmp_path):
    from experiments import report

    summary = {"task": "parity", "model": "lru", "depth": 2, "steps": 10, "paper": None,
               "final": {"test_accuracy": 0.9, "test_loss": 0.2, "test_accuracy@64": 0.7,
                         "test_loss@64": 0.5, "test_accuracy@128": None},
               "config": {"task_options": {}, "seed": 0},
               "baseline": {"metric": "accuracy", "value": 0.5},
               "environment": {"command": "python -m experiments run parity --eval-length 64"}}
    row = report.summary_row(tmp_path, summary)
    assert row["value"] == 0.9 and row["lengths"] == {"64": 0.7}
    assert row["model"] == "lru"
    # A mixer trained in another block than its own is named with it.
    summary["config"]["model_config"] = {"block": "hawk"}
    assert report.summary_row(tmp_path, summary)["model"] == "lru in the hawk block"
    summary["config"]["model_config"] = {"block": "glu"}
    assert report.summary_row(tmp_path, summary)["model"] == "lru"


def test_lru_report_plots_eigenvalues(tmp_path, monkeypatch):
    """The run draws its eigenvalues; `report` copies the figure of a run named in
    `report.SPECTRA` beside the page (the docs show one), and no other run's."""
    from experiments import report

    out = tmp_path / "run"
    args = ["run", "adding", "--model", "lru", "--steps", "4", "--eval-every", "4"]
    assert main(args + ["--task-set", "length=32", "--eval-size", "16", "--out", str(out)]) == 0
    assert (out / "eigenvalues.png").stat().st_size > 0
    assert "eigenvalues.png" in (out / "report.md").read_text()
    assert main(["report", str(out), "--out", str(tmp_path / "page.md")]) == 0
    assert not list(tmp_path.glob("page-eigenvalues-*"))
    monkeypatch.setattr(report, "SPECTRA", ("run",))
    assert main(["report", str(out), "--out", str(tmp_path / "page.md")]) == 0
    copied = tmp_path / "page-eigenvalues-run.png"
    assert copied.read_bytes() == (out / "eigenvalues.png").read_bytes()


def test_bad_run_options(capsys):
    assert main(["run", "digits", "--model", "transformer"]) == 2
    assert "--model must be one of" in capsys.readouterr().err
    assert main(["run", "digits", "--model", "lru", "--task-set", "length"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["run", "parity", "--model", "lru", "--task-set", "max_length=0"]) == 2
    assert "max_length" in capsys.readouterr().err
    assert main(["run", "digits", "--model", "lru", "--variant", "lru-magic"]) == 2


def _final_params(out):
    config = train.RunConfig.from_dict(json.loads((out / "run.json").read_text()))
    import equinox as eqx

    import recurrax

    _, _, skeleton, state = train.build(config)
    checkpoint = recurrax.CheckpointManager(out / "checkpoints").restore(model=skeleton)
    assert checkpoint.step == config.steps
    return [np.asarray(x) for x in jax_leaves(eqx.filter(checkpoint.model, eqx.is_array))]


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
    """A run killed with SIGKILL and resumed ends where an uninterrupted run ends (the same
    batches and dropout keys from (seed, step)), up to floating-point reduction order."""
    args = ["run", "parity", "--model", "mingru", "--steps", "40", "--checkpoint-every", "10",
            "--eval-every", "40", "--batch-size", "16", "--eval-size", "64",
            "--model-set", "dropout=0.1"]
    whole = tmp_path / "whole"
    done = _run_command(*args, "--out", str(whole))
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments", *args, "--out", str(killed)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list((killed / "checkpoints").glob("*00000020.rcx")):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert list((killed / "checkpoints").glob("*00000020.rcx")), "no checkpoint before the kill"
    resumed = _run_command(*args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout + resumed.stderr
    for a, b in zip(_final_params(whole), _final_params(killed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_make_task = train.make_task

    class Poisoned:
        """The digits task whose batches from step 15 on contain a NaN."""

        def __init__(self, task):
            self.task = task

        def __getattr__(self, name):
            return getattr(self.task, name)

        def batch(self, seed, step, batch_size, **kwargs):
            batch = self.task.batch(seed, step, batch_size, **kwargs)
            if step >= 15:
                inputs = batch.inputs.copy()
                inputs[0, 0, 0] = np.nan
                batch = batch._replace(inputs=inputs)
            return batch

    monkeypatch.setattr(train, "make_task", lambda *a, **k: Poisoned(real_make_task(*a, **k)))
    settings = presets.run_settings("digits", "lru", steps=30, checkpoint_every=10,
                                    eval_every=100, batch_size=8)
    config = train.RunConfig(**settings)
    with pytest.raises(train.NonFiniteLoss, match="step 16"):
        train.train(config, tmp_path, log=lambda *_: None)
    steps = recurrax_steps(tmp_path)
    assert steps == [10]


def recurrax_steps(out):
    import recurrax

    return recurrax.CheckpointManager(out / "checkpoints").all_steps()


def test_resume_refuses_a_different_configuration(tmp_path):
    """--resume may change the optimisation (see test_hostile_cli.py), not the model."""
    settings = presets.run_settings("parity", "mingru", steps=4, checkpoint_every=2,
                                    eval_every=4, batch_size=4, eval_size=8)
    train.train(train.RunConfig(**settings), tmp_path, log=lambda *_: None)
    model_config = {**settings["model_config"], "dropout": 0.5}
    other = train.RunConfig(**{**settings, "model_config": model_config})
    with pytest.raises(ValueError, match="different configuration.*model_config"):
        train.train(other, tmp_path, resume=True, log=lambda *_: None)
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        train.train(train.RunConfig(**settings), tmp_path, log=lambda *_: None)


def _tiny_settings(**overrides):
    settings = dict(steps=6, checkpoint_every=1, eval_every=2, batch_size=4, eval_size=8,
                    model_options={"depth": 1, "d_model": 8})
    settings.update(overrides)
    return presets.run_settings("parity", "mingru", **settings)


def test_evaluation_step_is_compiled_once_per_run(tmp_path, monkeypatch):
    """Three evaluations in a run, one trace of the evaluation step (it used to be a new
    `eqx.filter_jit` closure, compiled again, at every evaluation)."""
    traces = []
    real_make_loss = train.make_loss

    def counting_make_loss(kind):
        loss_fn = real_make_loss(kind)

        def counted(model, state, batch, key):
            if key is None:  # evaluation (training passes a dropout key)
                traces.append(1)
            return loss_fn(model, state, batch, key)

        return counted

    monkeypatch.setattr(train, "make_loss", counting_make_loss)
    monkeypatch.setattr(train, "_COMPILED", {}, raising=False)
    train.train(train.RunConfig(**_tiny_settings()), tmp_path, log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum("test_loss" in r for r in records) == 3
    assert len(traces) == 1


def _finite_checkpoints(out):
    """Every checkpoint file of the run, loaded in full: all its arrays are finite."""
    import equinox as eqx
    import jax

    import recurrax

    config = train.RunConfig.from_dict(json.loads((out / "run.json").read_text()))
    _, _, skeleton, state = train.build(config, initialise=False)
    opt_state = train._optimizer(config, skeleton).init(eqx.filter(skeleton, eqx.is_inexact_array))
    manager = recurrax.CheckpointManager(out / "checkpoints")
    steps = manager.all_steps()
    for step in steps:
        loaded = recurrax.load_checkpoint(
            manager.path(step), model=skeleton, opt_state=opt_state, state=state
        )
        for leaf in jax.tree.leaves(eqx.filter((loaded.model, loaded.opt_state, loaded.state),
                                               eqx.is_inexact_array)):
            assert np.all(np.isfinite(np.asarray(leaf))), f"non-finite values in step {step}"
    return steps


def test_parameters_that_overflow_are_never_checkpointed(tmp_path):
    """A learning rate that overflows float32 makes the parameters infinite after the first
    update while that step's loss and gradient are finite: the checkpoint of what is saved
    is refused (it used to be written, NaN, as the last good one)."""
    config = train.RunConfig(**_tiny_settings(learning_rate=1e39, warmup_fraction=0.0))
    with pytest.raises(train.NonFiniteLoss, match="non-finite at step 1.*not saving"):
        train.train(config, tmp_path, log=lambda *_: None)
    assert _finite_checkpoints(tmp_path) == []


def test_divergence_stops_at_the_first_non_finite_gradient_norm(tmp_path):
    """Stopped at the first step whose loss or gradient norm is not finite, before its
    update; every checkpoint on disk is finite and the advice names --resume and --lr."""
    config = train.RunConfig(**_tiny_settings(learning_rate=1e30, warmup_fraction=0.0))
    with pytest.raises(train.NonFiniteLoss) as raised:
        train.train(config, tmp_path, log=lambda *_: None)
    records = train.read_metrics(tmp_path / "metrics.jsonl")
    last = records[-1]
    assert last["event"] == "diverged"
    assert not (np.isfinite(last["loss"]) and np.isfinite(last["grad_norm"]))
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in records[:-1])
    assert f"at step {last['step']}" in str(raised.value)
    assert "--resume --lr 1e+29" in str(raised.value)
    assert _finite_checkpoints(tmp_path) == list(range(max(1, last["step"] - 3), last["step"]))


def test_every_campaign_command_is_valid():
    """The command lines behind the documented results parse and configure (no training),
    and no two of them share a run folder."""
    from experiments.campaigns import CAMPAIGNS
    from experiments.cli import configure, parser as _parser

    folders = []
    for commands in CAMPAIGNS.values():
        earlier = set()
        for command in commands:
            config, out = configure(_parser().parse_args(["run", *command]))
            assert config.task == command[0] and out.parent.name == "runs"
            # A curriculum starts from a run of the same campaign, named as `run` names it.
            assert config.init_from is None or config.init_from in earlier, config.init_from
            earlier.add(str(out))
            folders.append(out)
    assert len(set(folders)) == len(folders)


def test_every_extrapolation_parses():
    from experiments.campaigns import CAMPAIGNS, EXTRAPOLATIONS
    from experiments.cli import parser as _parser

    for name, option_lists in EXTRAPOLATIONS.items():
        assert name in CAMPAIGNS
        for options in option_lists:
            args = _parser().parse_args(["extrapolate", "runs/x", *options])
            assert args.length and args.examples > 0


@pytest.mark.parametrize("mixer", ["mingru", "lru"])  # LayerNorm; BatchNorm with its state
def test_extrapolate_streams_chunks_to_the_one_call_accuracy(mixer, tmp_path, capsys):
    """`extrapolate` reads each sequence in chunks with carried state; its accuracy equals
    the one-call evaluation at the same lengths, and its last-step logits equal the model's."""
    from experiments import extrapolate

    out = tmp_path / "run"
    args = ["run", "induction_heads", "--model", mixer, "--steps", "3", "--eval-every", "3"]
    assert main(args + ["--eval-size", "8", "--out", str(out)]) == 0
    argv = ["extrapolate", str(out), "--length", "16", "--length", "37", "--examples", "12",
            "--chunk", "5"]
    assert main(argv) == 0
    assert "report:" in capsys.readouterr().out
    rows = json.loads((out / "extrapolation.json").read_text())["rows"]
    assert [r["length"] for r in rows] == [16, 37]
    assert "| 37 |" in (out / "extrapolation.md").read_text()
    more = ["extrapolate", str(out), "--length", "9", "--examples", "4"]  # rows merge
    assert main(more) == 0
    merged = json.loads((out / "extrapolation.json").read_text())
    assert [r["length"] for r in merged["rows"]] == [9, 16, 37]
    assert len(merged["commands"]) == 2 and "--length 9" in merged["commands"][1]
    rows = [r for r in merged["rows"] if r["length"] != 9]
    assert main(["report", str(out), "--out", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "## Length extrapolation" in table and "### induction_heads" in table
    assert f"| length | {mixer} (#1, #2, trained at 64) | test sequences |" in table
    assert "| 37 | " in table and "| 9 | " in table


    config = train.RunConfig.from_dict(json.loads((out / "run.json").read_text()))
    task, _, _, _ = train.build(config)
    model, state = train.trained_model(config, out)
    frozen = eqx.nn.inference_mode(model)
    for row in rows:
        test = task.test_set(config.seed, 12, length=row["length"])
        streamed = extrapolate.streamed_last_outputs(frozen, state, test.inputs, 5)
        whole = np.stack([np.asarray(frozen(jnp.asarray(x), state)[0]) for x in test.inputs])
        np.testing.assert_allclose(streamed, whole, rtol=1e-4, atol=1e-5)
        once = train.evaluate(model, state, task, dataclasses.replace(config, eval_size=12),
                              train.make_loss(task.kind), length=row["length"])
        assert row["accuracy"] == pytest.approx(once["accuracy"])


def test_extrapolate_refuses_other_tasks_and_bad_options(tmp_path, capsys):
    assert main(["extrapolate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    out = tmp_path / "run"
    args = ["run", "adding", "--model", "lru", "--steps", "1", "--task-set", "length=8"]
    assert main(args + ["--eval-size", "4", "--out", str(out)]) == 0
    assert main(["extrapolate", str(out)]) == 2
    assert "pooling" in capsys.readouterr().err
    assert main(["extrapolate", str(out), "--length", "0"]) == 2
    assert "--length" in capsys.readouterr().err


def test_init_from_starts_where_another_run_ended(tmp_path, capsys):
    """`--init-from` (a length curriculum): the new run's initial model is the other run's
    last checkpoint; another model or a folder without a run is refused by name."""
    first = tmp_path / "short"
    base = ["run", "adding", "--model", "lru", "--eval-size", "4", "--batch-size", "4"]
    assert main(base + ["--steps", "2", "--task-set", "length=8", "--out", str(first)]) == 0
    second = tmp_path / "long"
    args = base + ["--steps", "1", "--task-set", "length=16", "--init-from", str(first)]
    assert main(args + ["--out", str(second)]) == 0
    config = train.RunConfig.from_dict(json.loads((second / "run.json").read_text()))
    assert config.init_from == str(first)
    _, _, initial, _ = train.build(config)
    assert all(np.array_equal(a, b) for a, b in zip(
        [np.asarray(x) for x in jax_leaves(eqx.filter(initial, eqx.is_array))],
        _final_params(first),
    ))
    capsys.readouterr()
    other = base + ["--steps", "1", "--depth", "1", "--init-from", str(first)]
    assert main(other + ["--out", str(tmp_path / "x")]) == 2
    assert "init_from" in capsys.readouterr().err
    assert main(base + ["--init-from", str(tmp_path / "nothing")]) == 2
    assert "init_from" in capsys.readouterr().err


@pytest.mark.slow
def test_speed_nonlinear_command_writes_its_tables(tmp_path):
    out = tmp_path / "nonlinear.md"
    args = ["speed", "nonlinear", "--lengths", "16", "--repeats", "1", "--train-steps", "2"]
    assert main(args + ["--out", str(out)]) == 0
    text = out.read_text()
    assert "Training on sequential digits" in text and (tmp_path / "nonlinear.png").exists()
    for name in ("GRU, quasi-DEER", "GRU N=16, DEER", "minGRU", "trained GRU, quasi-DEER"):
        assert f"| {name} |" in text
    assert "python -m experiments speed nonlinear --lengths 16 --repeats 1 --train-steps 2" in text


@pytest.mark.parametrize("model", ["rglru", "selective-ssm"])
def test_input_dependent_models_on_every_task(model):
    """The RG-LRU and the selective SSM configure (Hawk's block) and give a finite loss on a
    batch of every task, through the presets of `python -m experiments run TASK --model`."""
    from experiments import presets, train
    from experiments.tasks import TASKS

    for name in TASKS:
        settings = presets.run_settings(name, model, model_options=dict(d_model=8, depth=1))
        config = train.RunConfig(**settings)
        assert config.model_config["block"] == "hawk"
        task, _, built, state = train.build(config)
        batch = train._batch_arrays(task.batch(0, 0, 2))
        # Compiled as training compiles it (one program, not op by op: a third of the time).
        loss, _ = eqx.filter_jit(train.make_loss(task.kind))(built, state, batch, None)
        assert np.isfinite(float(loss)), name
