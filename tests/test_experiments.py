"""The experiments package: the speed and accuracy commands run and report what they claim."""

import numpy as np
import pytest

from experiments import accuracy_engine, speed_engine
from experiments.__main__ import main
from experiments._timing import Machine


def test_speed_engine_command_writes_its_tables(tmp_path, capsys):
    out = tmp_path / "speed.md"
    assert main(["speed", "engine", "--lengths", "32", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    for name in speed_engine.implementations():
        assert f"| {name} |" in text
    assert "memory floor" in text and "speed-up, forward+backward" in text
    assert "python -m experiments speed engine --lengths 32 --repeats 1" in text


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
    assert "| strong decay | log_linear_recurrence | ChunkedScan |" in out.read_text()


def test_speed_lru_command_writes_its_tables(tmp_path):
    from experiments import speed_lru

    out = tmp_path / "lru.md"
    args = ["speed", "lru", "--length", "32", "--repeats", "1", "--no-choice", "--out", str(out)]
    assert main(args) == 0
    text = out.read_text()
    for name in speed_lru.implementations():
        assert f"| {name} |" in text
    assert "Default against the common form" in text
    choice = speed_lru.measure_choice(lengths=(16,), repeats=1, log=lambda *_: None)
    rows = speed_lru.measure(16, 1, log=lambda *_: None)
    table = speed_lru.report(rows, choice, Machine.here(), "x")
    assert "## Scan or convolution?" in table and "depthwise kernel" in table


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
