"""Proofs on a trained model: `proofs.check_trained_model`, `proofs.load_run` and
`python -m proofs --run`, on tiny runs the test trains with the experiments' training loop
(LRU, diagonal SSM, minGRU), and wrong variants that fail (a trained nu_log pushed past the
float32 edge, gamma inflated, a saturated minGRU gate)."""

import io
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proofs
import recurrax
from experiments import cli, train
from experiments.cli import parser as _parser
from proofs import trained


SIZES = [
    "--steps",
    "4",
    "--batch-size",
    "8",
    "--eval-size",
    "16",
    "--eval-every",
    "4",
    "--depth",
    "1",
    "--d-model",
    "8",
]


@pytest.fixture(autouse=True, scope="module")
def _fast_compilation():
    """Tiny models: compiling dominates; compile without most XLA optimisations here."""
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def _train(folder: pathlib.Path, model: str, *extra: str) -> pathlib.Path:
    """A few steps of `python -m experiments run digits --model MODEL ...`, in process."""
    args = _parser().parse_args(
        ["run", "digits", "--model", model, *SIZES, *extra, "--out", str(folder)]
    )
    config, out = cli.configure(args)
    train.train(config, out, log=lambda *a: None, progress_stream=io.StringIO())
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "lru": _train(root / "lru", "lru", "--model-set", "state_size=8"),
        "ssm": _train(root / "ssm", "ssm", "--model-set", "state_size=8"),
        "mingru": _train(root / "mingru", "mingru"),
    }


def _leaves_equal(a, b):
    la = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_load_run_rebuilds_the_trained_and_the_initial_model(runs):
    run = proofs.load_run(runs["lru"])
    config = train.RunConfig.from_dict(run.config)
    model, state = train.trained_model(config, runs["lru"])
    assert run.step == 4 and _leaves_equal(run.model, model) and _leaves_equal(run.state, state)
    # The model before training is the one the training command starts from.
    assert _leaves_equal(run.initial, train.build(config)[2])
    assert not _leaves_equal(run.initial, run.model)  # training moved it


def test_load_run_errors(tmp_path, runs):
    with pytest.raises(ValueError, match="no run.json"):
        proofs.load_run(tmp_path)
    (tmp_path / "run.json").write_text((runs["lru"] / "run.json").read_text())
    with pytest.raises(ValueError, match="no checkpoint"):
        proofs.load_run(tmp_path)


def test_trained_lru(runs):
    checks = proofs.check_run(runs["lru"], quick=True, plot=False)
    names = [r.name for r in checks]
    assert names == [
        "trained_stability",
        "trained_float_edge",
        "trained_spectrum",
        "trained_normalisation",
        "trained_bibo",
    ]
    assert set(checks.not_applicable) == {"trained_ssm_to_lru", "trained_gates"}
    assert checks.passed, [(r.name, r.statistic, r.details) for r in checks if not r.passed]
    spectrum = checks["trained_spectrum"].details
    assert spectrum["initial eigenvalues"] == "the model before training"
    moved = next(iter(spectrum["learnt spectrum"].values()))
    assert 0 < moved["initial -> trained: two-sample KS distance of |lambda|"] <= 1
    normalisation = next(iter(checks["trained_normalisation"].details["layers"].values()))
    assert normalisation["Monte Carlo max |measured / formula - 1|"] < 0.2


def test_trained_ssm(runs):
    checks = proofs.check_run(runs["ssm"], quick=True, plot=False)
    assert [r.name for r in checks] == ["trained_stability", "trained_ssm_to_lru", "trained_bibo"]
    assert checks.passed
    assert checks["trained_ssm_to_lru"].statistic <= 1e-4


def test_trained_mingru_on_real_inputs(runs):
    from experiments.tasks import make_task

    inputs = make_task("digits").test_set(0, 8).inputs
    checks = proofs.check_run(runs["mingru"], inputs=inputs, quick=True)
    assert [r.name for r in checks] == ["trained_gates"]
    assert len(checks.not_applicable) == 6 and checks.passed
    (layer,) = checks["trained_gates"].details["layers"].values()
    assert layer["values"] == 8 * 64 * 16  # batch x length x hidden (expansion 2)
    assert 0 < layer["min a"] <= layer["mean a"] <= layer["max a"] < 1
    assert checks["trained_gates"].figures  # the histogram


def _first_lru(model):
    return [
        x
        for x in jax.tree.leaves(model, is_leaf=lambda x: isinstance(x, recurrax.LRU))
        if isinstance(x, recurrax.LRU)
    ][0]


def _pushed_past_edge(model):
    """The trained model with one nu_log moved past the float32 edge log(eps/4)."""
    lru = _first_lru(model)
    edge = np.log(np.finfo(np.float32).eps / 4)
    nu_log = lru.nu_log.at[0].set(edge - 1.0)
    return eqx.tree_at(lambda m: _first_lru(m).nu_log, model, nu_log)


def test_wrong_variants_fail(runs):
    run = proofs.load_run(runs["lru"])
    pushed = _pushed_past_edge(run.model)
    # Stability alone cannot see it: the floor keeps |lambda| < 1 ...
    assert proofs.check_stability(pushed, plot=False).passed
    # ... the float edge check does.
    edge = proofs.check_float_edge(pushed, plot=False)
    assert not edge.passed and edge.statistic < 0
    (layer,) = edge.details["layers"].values()
    assert layer["below the edge"] == 1 and layer["on the stability floor"] == 1
    # gamma inflated: the state variance is no longer bounded.
    lru = _first_lru(run.model)
    inflated = eqx.tree_at(lambda m: _first_lru(m).gamma_log, run.model, lru.gamma_log + 3.0)
    result = proofs.check_trained_normalisation(inflated, max_burn=256, plot=False)
    assert not result.passed and result.statistic > 2
    # A minGRU gate saturated to a = 1 in float32 (sigmoid(100) rounds to 1).
    gru = proofs.load_run(runs["mingru"]).model
    layer = [
        x
        for x in jax.tree.leaves(gru, is_leaf=lambda x: isinstance(x, recurrax.MinGRU))
        if isinstance(x, recurrax.MinGRU)
    ][0]
    frozen = eqx.tree_at(
        lambda m: (
            [
                x
                for x in jax.tree.leaves(m, is_leaf=lambda x: isinstance(x, recurrax.MinGRU))
                if isinstance(x, recurrax.MinGRU)
            ][0].linear_z.bias
        ),
        gru,
        jnp.full_like(layer.linear_z.bias, -100.0),
    )
    gates = proofs.check_transition_values(frozen, plot=False)
    assert not gates.passed and gates.statistic == 0
    assert next(iter(gates.details["layers"].values()))["count a = 1"] > 0


def test_command_line_writes_the_report_and_fails_a_wrong_run(runs, tmp_path, capsys):
    from proofs.__main__ import main

    assert main(["--run", str(runs["ssm"]), "--quick"]) == 0
    report = (runs["ssm"] / "proofs" / "report.md").read_text()
    assert "Not applicable to this model's layers (not failed)" in report
    assert "`trained_gates`: no MinGRU or MinLSTM layer" in report
    assert (runs["ssm"] / "proofs" / "figures" / "trained_stability.png").exists()
    # A run whose last checkpoint holds a nu_log past the float32 edge: exit code 1.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "run.json").write_text((runs["lru"] / "run.json").read_text())
    run = proofs.load_run(runs["lru"])
    recurrax.CheckpointManager(wrong / "checkpoints").save(
        run.step, model=_pushed_past_edge(run.model), state=run.state
    )
    out = tmp_path / "report"
    assert main(["--run", str(wrong), "--quick", "--out", str(out)]) == 1
    text = (out / "report.md").read_text()
    assert "### trained_float_edge" in text and "**FAIL.**" in text
    capsys.readouterr()
    assert main(["--run", str(tmp_path / "nothing")]) == 2
    assert "no run.json" in capsys.readouterr().err
    assert main(["--inputs", "x.npy"]) == 2


def test_not_applicable_is_not_failed():
    # A bare layer is a model too: only the check of its gates applies.
    checks = proofs.check_trained_model(recurrax.MinLSTM(3, 4, key=jax.random.key(0)))
    assert [r.name for r in checks] == ["trained_gates"] and checks.passed
    assert len(checks.not_applicable) == 6
    # Nothing to check is not a pass.
    checks = proofs.check_trained_model(eqx.nn.Linear(2, 2, key=jax.random.key(0)))
    assert checks.results == [] and not checks.passed and len(checks.not_applicable) == 7
    with pytest.raises(KeyError, match="no applicable check"):
        checks["trained_gates"]


def test_names_are_the_documented_ones():
    assert trained.NAMES[0] == "trained_stability" and len(set(trained.NAMES)) == 7
