"""The mixer registry: built-in declarations, a user's mixer end to end (ModelConfig, the
parameter groups, compute_dtype, checkpoints, the command line with --plugin, resume and
proofs.load_run), and the registry's refusals."""

import dataclasses
import json
import pathlib
import re
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from experiments import campaigns, cli

from .test_mixers import MIXERS as MIXER_CASES


ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "howto" / "custom-mixer.md"


def _user_file(tmp_path) -> pathlib.Path:
    """The page's `my_mixer.py` (its first Python block), written where a user keeps it."""
    code = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)[0]
    path = tmp_path / "my_mixer.py"
    path.write_text(code)
    return path


def test_builtin_mixers_are_registered_and_declare_real_fields():
    specs = recurrax.registered_mixers()
    builtin = {"lru", "ssm", "mingru", "minlstm", "gru", "lstm", "rglru", "selective-ssm"}
    assert builtin <= set(specs)
    for name, spec in specs.items():
        fields = {f.name for f in dataclasses.fields(spec.layer)}
        assert spec.layer.recurrent_fields <= fields, name
        assert spec.layer.transition_fields <= spec.layer.recurrent_fields | fields, name
        assert spec.block in ("glu", "mlp", "hawk") and spec.summary, name
    # Every built-in mixer class is among the mixer test cases (tests/test_mixers.py).
    tested = {type(make(jax.random.key(0))) for make in MIXER_CASES.values()}
    assert {spec.layer for spec in specs.values()} <= tested
    assert set(campaigns.MODELS) == builtin


def test_recurrent_fields_table_follows_the_declarations():
    assert recurrax.RECURRENT_FIELDS[recurrax.LRU] == recurrax.LRU.recurrent_fields
    assert recurrax.RGLRU in recurrax.RECURRENT_FIELDS
    assert recurrax.MinGRU not in recurrax.RECURRENT_FIELDS  # all no-decay instead
    # Code written against the table keeps working.
    layer = recurrax.LRU(2, 3, key=jax.random.key(0))
    labels = recurrax.param_labels(layer, recurrent_fields={**recurrax.RECURRENT_FIELDS})
    assert labels.nu_log == "recurrent" and labels.C_re == "decay"
    # A table entry overrides a declaration.
    labels = recurrax.param_labels(layer, recurrent_fields={recurrax.LRU: {"nu_log"}})
    assert labels.nu_log == "recurrent" and labels.B_re == "decay"


def test_user_mixer_through_the_library(tmp_path):
    recurrax.load_plugins([str(_user_file(tmp_path))])
    assert "ema" in recurrax.registered_mixers()
    config = recurrax.ModelConfig(
        mixer="ema", input_size=2, output_size=3, d_model=4, depth=2, norm="layer",
        bidirectional=True, compute_dtype="bfloat16",
    )
    model, state = config.build(key=jax.random.key(0))
    mixer = model.blocks[0].mixer
    assert isinstance(mixer, recurrax.Bidirectional)  # two of them, no native reverse
    labels = recurrax.param_labels(model)
    assert labels.blocks[1].mixer.forward.alpha == "recurrent"
    assert labels.blocks[1].mixer.backward.proj.weight == "decay"
    cast = model._cast()
    assert cast.blocks[0].mixer.forward.alpha.dtype == jnp.float32  # transition kept
    assert cast.blocks[0].mixer.forward.proj.weight.dtype == jnp.bfloat16
    y = model(jnp.ones((7, 2), jnp.float32))
    assert y.shape == (3,) and bool(jnp.all(jnp.isfinite(y)))
    # Checkpoints store the configuration and restore the user's model.
    manager = recurrax.CheckpointManager(tmp_path / "checkpoints")
    manager.save(3, model=model, state=state, config=config.to_dict())
    restored = manager.restore(model=config.build(key=jax.random.key(1))[0], state=state)
    assert bool(eqx.tree_equal(restored.model, model))


def test_load_plugins_imports_a_file_once_and_names_failures(tmp_path):
    path = _user_file(tmp_path)
    recurrax.load_plugins([str(path)])
    first = recurrax.registered_mixers()["ema"]
    recurrax.load_plugins([str(path), str(path)])
    assert recurrax.registered_mixers()["ema"] is first  # not imported again
    with pytest.raises(ValueError, match=r"--plugin: no Python file .*missing\.py"):
        recurrax.load_plugins([str(tmp_path / "missing.py")], option="--plugin")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match=r"importing .*broken\.py.* RuntimeError: boom"):
        recurrax.load_plugins([str(broken)])
    with pytest.raises(ValueError, match="single string"):
        recurrax.load_plugins(str(path))


def _build(width, hidden, state_size, *, dtype, key, **options):
    return recurrax.MinGRU(width, hidden, dtype=dtype, key=key, **options)


def test_register_mixer_refusals():
    with pytest.raises(ValueError, match="registered already"):
        recurrax.register_mixer("lru", recurrax.MinGRU, _build)
    with pytest.raises(ValueError, match="`layer` must be a subclass"):
        recurrax.register_mixer("x", eqx.nn.Linear, _build)
    with pytest.raises(ValueError, match="`block` must be one of"):
        recurrax.register_mixer("x", recurrax.MinGRU, _build, block="transformer")
    with pytest.raises(ValueError, match="`name` must be a non-empty string"):
        recurrax.register_mixer(" ", recurrax.MinGRU, _build)

    class Wrong(recurrax.MinGRU.__mro__[1]):  # the minRNN base, declaring a field it lacks
        recurrent_fields = frozenset({"nonexistent"})

    with pytest.raises(ValueError, match=r"recurrent_fields names \['nonexistent'\]"):
        recurrax.register_mixer("x", Wrong, _build)
    # `replace=True` is the explicit way to take a name.
    spec = recurrax.register_mixer("lru", recurrax.MinGRU, _build, replace=True)
    assert recurrax.mixer_spec("lru") is spec


def test_model_config_refuses_unknown_mixers_and_options():
    with pytest.raises(ValueError, match=r"`mixer` must be one of the registered mixers .*'lrux'"):
        recurrax.ModelConfig(mixer="lrux", input_size=1)
    with pytest.raises(ValueError, match=r"takes no mixer_options \['rmin'\].*'r_min'"):
        recurrax.ModelConfig(mixer="lru", input_size=1, mixer_options={"rmin": 0.5})
    with pytest.raises(ValueError, match=r"mixer_options\['init'\] must be one of"):
        recurrax.ModelConfig(mixer="ssm", input_size=1, mixer_options={"init": "hipo"})
    with pytest.raises(ValueError, match="takes no scan strategy"):
        recurrax.ModelConfig(mixer="gru", input_size=1).make_mixer(
            2, key=jax.random.key(0), method=recurrax.SequentialScan()
        )


@pytest.mark.parametrize(
    "solver, cls",
    [("deer", recurrax.DEER), ({"name": "quasi-deer", "max_steps": 7}, recurrax.QuasiDEER)],
)
def test_named_choices_become_objects(solver, cls):
    config = recurrax.ModelConfig(mixer="gru", input_size=1, mixer_options={"solver": solver})
    model, _ = config.build(key=jax.random.key(0))
    assert type(model.blocks[0].mixer.solver) is cls
    if isinstance(solver, dict):
        assert model.blocks[0].mixer.solver.max_steps == 7


def test_user_mixer_through_the_command_line(tmp_path, capsys):
    path = _user_file(tmp_path)
    assert cli.main(["list", "--plugin", str(path)]) == 0
    assert re.search(r"^\s+ema\s+glu\s+an exponential moving average", capsys.readouterr().out,
                     re.M)
    out = tmp_path / "run"
    common = ["run", "digits", "--model", "ema", "--plugin", str(path), "--depth", "1",
              "--d-model", "8", "--eval-every", "5", "--eval-size", "32", "--batch-size", "8",
              "--checkpoint-every", "5", "--out", str(out)]
    assert cli.main(common + ["--steps", "5"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["plugins"] == [str(path.resolve())] and run["model"] == "ema"
    assert run["model_config"]["block"] == "glu"  # the block the mixer registered
    assert cli.main(common + ["--steps", "10", "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 10
    # Without the plugin the mixer is unknown: refused before anything runs (exit 2).
    assert cli.main(["run", "digits", "--model", "unregistered", "--out", str(tmp_path / "x")]) == 2
    assert "registered mixers" in capsys.readouterr().err


def test_a_fresh_process_loads_the_users_run(tmp_path):
    """`proofs.load_run` in a new interpreter finds the mixer through the recorded plugin."""
    path = _user_file(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["run", "digits", "--model", "ema", "--plugin", str(path), "--depth", "1",
                     "--d-model", "8", "--steps", "3", "--eval-every", "3", "--eval-size", "16",
                     "--batch-size", "8", "--checkpoint-every", "3", "--out", str(out)]) == 0
    code = (
        "import proofs, recurrax\n"
        f"run = proofs.load_run({str(out)!r})\n"
        "assert run.step == 3 and 'ema' in recurrax.registered_mixers()\n"
        "print(type(run.model.blocks[0].mixer).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "EMAMixer"


def test_docs_page_numbers_match_the_reference():
    """The page's reference check is a real one: a wrong decay breaks it."""
    ns = {}
    code = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    exec(compile(code[0], "my_mixer.py", "exec"), ns)
    layer = ns["EMAMixer"](3, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (20, 3))
    a = (1 / (1 + np.exp(-np.asarray(layer.alpha, np.float64)))) ** 0.5  # a wrong decay
    h = np.zeros(3)
    W, c = np.asarray(layer.proj.weight, np.float64), np.asarray(layer.proj.bias, np.float64)
    for x_t in np.asarray(x, np.float64):
        h = a * h + (1 - a) * (W @ x_t + c)
    assert not np.allclose(layer(x)[-1], h, atol=1e-5)
