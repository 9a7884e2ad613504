"""Training runs: `python -m experiments run TASK --model MODEL`.

A run is fully described by a `RunConfig` (plain JSON values, stored in every checkpoint).
Batches are drawn from (seed, split, step), and the dropout key of step `s` is
`fold_in(key, s)`, so a run resumed from a checkpoint sees exactly the data and randomness
of an uninterrupted one. Metrics go to `metrics.jsonl` (strict JSON: a value that is not a
finite number is written as the string "NaN", "Infinity" or "-Infinity"); checkpoints to
`checkpoints/` (atomic, the last few kept, each written only from finite parameters, optimiser
state and model state). A non-finite loss or gradient norm stops the run at once, without
touching the last good checkpoint; `--resume` may then change the optimisation settings
(`OPTIMISATION_FIELDS`), never the model or the task.
"""

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

import recurrax

from . import packing as packing_, variants
from .tasks import make_task


def _cli(default, help: str, *, flag: str | None = None, preset: bool = False, metavar=None):
    """A `RunConfig` field that is also a command-line option (`default` may be a factory)."""
    metadata = dict(help=help, flag=flag, preset=preset, metavar=metavar)
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run.

    `init_from`: a run folder whose last checkpoint gives the starting parameters (and
    BatchNorm statistics) of the model, e.g. a run of the same model at a shorter length (a
    length curriculum); the optimiser, schedule and step count start afresh.

    `packing`: train on packed rows (whole examples one after another, restarting at each)
    instead of padded ones; variable-length classification tasks only (`experiments.packing`).

    `plugins`: Python files or modules that register the user's mixers
    (`recurrax.register_mixer`), imported before the model is built (`--plugin`).
    """

    task: str
    model: str
    preset: str = "small"
    task_options: dict = dataclasses.field(default_factory=dict)
    model_config: dict = dataclasses.field(default_factory=dict)
    # The fields below are the command line's options too (`run_options`): one edit here
    # adds an option. `preset=True`: when not given, the task's preset decides.
    variant: str | None = _cli(None, "an ablation or control variant (see `list`)")
    steps: int = _cli(1000, "training steps", preset=True)
    batch_size: int = _cli(32, "examples per step", preset=True)
    learning_rate: float = _cli(1e-3, "peak learning rate", flag="--lr", preset=True)
    lr_factor: float = _cli(
        1.0, "learning-rate factor of the recurrent parameters (LRU: 0.5)", preset=True
    )
    weight_decay: float = _cli(0.05, "AdamW weight decay of the ordinary weights", preset=True)
    warmup_fraction: float = _cli(0.1, "fraction of the steps warming up", preset=True)
    clip_norm: float | None = _cli(1.0, "global-norm gradient clipping threshold", preset=True)
    eval_every: int = _cli(100, "steps between evaluations", preset=True)
    eval_size: int = _cli(512, "test examples per evaluation", preset=True)
    checkpoint_every: int = _cli(100, "steps between checkpoints", preset=True)
    seed: int = _cli(0, "the run's seed (model initialisation and data)")
    init_from: str | None = _cli(
        None,
        "start from the last checkpoint of another run of the same model (e.g. at a shorter "
        "length); the optimiser and schedule start afresh",
        metavar="RUN_FOLDER",
    )
    packing: bool = _cli(
        False,
        "variable-length classification (listops): fill rows with whole examples, restarting "
        "every layer at each (resets), instead of padding each example",
    )
    plugins: list = _cli(
        list,
        "a Python file or module that registers mixers (recurrax.register_mixer); "
        "repeatable, recorded in run.json",
        flag="--plugin",
        metavar="FILE_OR_MODULE",
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """The configuration of `to_dict()`'s output or of a `run.json` (whose `"changes"`,
        the settings changed on resume, are not part of it)."""
        data = {k: v for k, v in data.items() if k != "changes"}
        # Runs made before `init_from`, `packing` and `plugins` existed.
        return cls(**{"init_from": None, "packing": False, "plugins": [], **data})

    def check(self) -> None:
        """Refuse values that cannot run, before any work.

        **Raises:** `ValueError` naming the field (and its command-line option) and the value.
        """
        recurrax.load_plugins(self.plugins, option="--plugin")
        check_model(self.model)
        positive_integers = ("steps", "batch_size", "eval_every", "eval_size", "checkpoint_every")
        for name in positive_integers:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"{_option(name)} must be a positive integer, got {name}={value!r}."
                )
        for name, low, text in (
            ("learning_rate", 0.0, "a positive finite number"),
            ("lr_factor", 0.0, "a positive finite number"),
            ("weight_decay", None, "a finite number >= 0"),
        ):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and math.isfinite(value)
            ok = ok and (value >= 0 if low is None else value > low)
            if not ok:
                raise ValueError(f"{_option(name)} must be {text}, got {name}={value!r}.")
        if not (isinstance(self.warmup_fraction, (int, float)) and 0 <= self.warmup_fraction < 1):
            raise ValueError(
                f"{_option('warmup_fraction')} must be in [0, 1), got "
                f"warmup_fraction={self.warmup_fraction!r}."
            )
        clip = self.clip_norm
        if clip is not None and not (
            isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0
        ):
            raise ValueError(
                f"{_option('clip_norm')} must be a positive finite number (or None for no "
                f"clipping), got clip_norm={clip!r}."
            )


# The settings that `--resume` may change: they shape the optimisation (the schedule, the
# clipping, the batches) and the bookkeeping, not the model, its parameters or the task.
# Turning clipping on or off is refused (it changes the optimiser state's structure).
OPTIMISATION_FIELDS = (
    "steps",
    "batch_size",
    "learning_rate",
    "lr_factor",
    "weight_decay",
    "warmup_fraction",
    "clip_norm",
    "eval_every",
    "eval_size",
    "checkpoint_every",
)


def check_model(model: str) -> None:
    """Refuse a `--model` that no mixer is registered as."""
    if model not in recurrax.registered_mixers():
        raise ValueError(
            f"--model must be one of the registered mixers {tuple(recurrax.registered_mixers())} "
            f"(or one that a --plugin registers), got {model!r}."
        )


def _option(name: str) -> str:
    """The command-line option of a `RunConfig` field."""
    field = {f.name: f for f in dataclasses.fields(RunConfig)}.get(name)
    flag = field.metadata.get("flag") if field is not None else None
    return flag or "--" + name.replace("_", "-")


def _option_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(RunConfig) if "help" in f.metadata]


def add_run_options(parser) -> None:
    """Add an option to an `argparse` parser for every `RunConfig` field that declares one:
    the command line is derived from the dataclass, which stays the one source."""
    for field in _option_fields():
        meta = field.metadata
        text = meta["help"] + (" (default: the preset's)" if meta["preset"] else "")
        kwargs = dict(dest=field.name, help=text)
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if field.type is bool:
            parser.add_argument(_option(field.name), action="store_true", **kwargs)
        elif field.type is list:
            parser.add_argument(_option(field.name), action="append", default=[], **kwargs)
        else:
            kind = next(
                t for t in getattr(field.type, "__args__", (field.type,)) if t is not type(None)
            )
            parser.add_argument(_option(field.name), type=kind, default=None, **kwargs)


def run_options(args) -> tuple[dict, dict]:
    """The `RunConfig` options given on the command line (`add_run_options`), split into
    those that override the task's preset and the others."""
    given = {}
    for field in _option_fields():
        value = getattr(args, field.name, None)
        if value is not None and value != [] and value is not False:
            given[field.name] = value
    by_preset = {f.name for f in _option_fields() if f.metadata["preset"]}
    return (
        {k: v for k, v in given.items() if k in by_preset},
        {k: v for k, v in given.items() if k not in by_preset},
    )


def _silent(*args, **kwargs) -> None:
    """The log of the processes other than process 0 (they train, process 0 reports)."""


class _Discard:
    """The metrics file and progress stream of the processes other than process 0."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class NonFiniteLoss(RuntimeError):
    """Training diverged: the loss or the gradient norm became NaN or infinite, or the
    parameters, optimiser state or model state to be saved are not finite."""


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (it holds a run, or its files are damaged);
    the message names the files and the options that resolve it."""


# -- losses ------------------------------------------------------------------------------


def _forward(model, state, inputs, mask, key):
    """Batched model call with BatchNorm's batch axis; returns (outputs, state)."""
    batch = inputs.shape[0]
    keys = (None,) * batch if key is None else jax.random.split(key, batch)
    if key is None:
        return jax.vmap(
            lambda x, m: model(x, state, mask=m), axis_name="batch", out_axes=(0, None)
        )(inputs, mask)
    return jax.vmap(
        lambda x, m, k: model(x, state, mask=m, key=k), axis_name="batch", out_axes=(0, None)
    )(inputs, mask, keys)


def make_loss(kind: str):
    """The loss of a task kind: cross-entropy for classification and token tasks (over the
    scored positions), mean squared error for regression. Metrics: accuracy (token accuracy
    and whole-sequence accuracy for token tasks) or MSE."""

    def loss_fn(model, state, batch, key):
        inputs, targets, mask, target_mask = batch
        out, state = _forward(model, state, inputs, mask, key)
        out = out.astype(jnp.float32)
        if kind == "regression":
            error = out[:, 0] - targets
            mse = jnp.mean(jnp.square(error))
            return mse, (state, {"mse": mse})
        log_p = jax.nn.log_softmax(out, axis=-1)
        picked = jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
        predicted = jnp.argmax(out, axis=-1).astype(targets.dtype)
        correct = (predicted == targets).astype(jnp.float32)
        if kind == "classification":
            return -jnp.mean(picked), (state, {"accuracy": jnp.mean(correct)})
        weights = target_mask.astype(jnp.float32)
        count = jnp.maximum(jnp.sum(weights), 1.0)
        loss = -jnp.sum(picked * weights) / count
        accuracy = jnp.sum(correct * weights) / count
        exact = jnp.mean(jnp.all((correct > 0) | ~target_mask, axis=-1).astype(jnp.float32))
        return loss, (state, {"accuracy": accuracy, "sequence_accuracy": exact})

    return loss_fn


# -- building ------------------------------------------------------------------------------


def build(config: RunConfig, *, initialise: bool = True):
    """`(task, model_config, model, state)` for a run configuration: the initial model (from
    `config.init_from` when set), or with `initialise=False` a fresh model of the same
    structure (a skeleton to load a checkpoint into)."""
    task = make_task(config.task, preset=config.preset, **config.task_options)
    if config.packing:
        packing_.check_packable(task)
    recurrax.load_plugins(config.plugins, option="--plugin")
    model_config = recurrax.ModelConfig.from_dict(config.model_config)
    key = jax.random.fold_in(jax.random.key(config.seed), 0)
    model, state = model_config.build(key=key)
    if config.variant is not None:
        model = variants.apply(config.variant, model, key=jax.random.fold_in(key, 1))
    if initialise and config.init_from is not None:
        model, state = _initial_model(config, model, state)
    return task, model_config, model, state


def _initial_model(config: RunConfig, model, state):
    """The model and state of the last checkpoint of the run folder `config.init_from`, which
    must hold the same model (configuration and variant)."""
    source = pathlib.Path(config.init_from)
    run_file = source / "run.json"
    if not run_file.exists():
        raise ValueError(f"init_from: no run.json in {source} (init_from={config.init_from!r}).")
    other = RunConfig.from_dict(json.loads(run_file.read_text()))
    if (other.model_config, other.variant) != (config.model_config, config.variant):
        raise ValueError(
            f"init_from: the run in {source} has another model (configuration or variant); "
            f"init_from={config.init_from!r} needs the same model."
        )
    checkpoint = recurrax.CheckpointManager(source / "checkpoints").restore(
        model=model, state=state
    )
    if checkpoint is None:
        raise ValueError(f"init_from: no checkpoint in {source / 'checkpoints'}.")
    return checkpoint.model, checkpoint.state


def _batch_arrays(batch) -> tuple:
    target_mask = batch.target_mask
    if target_mask is None:
        target_mask = np.ones(np.shape(batch.targets), bool)
    return (
        jnp.asarray(batch.inputs),
        jnp.asarray(batch.targets),
        jnp.asarray(batch.mask),
        jnp.asarray(target_mask),
    )


def _optimizer(config: RunConfig, model):
    schedule = recurrax.warmup_cosine_schedule(
        config.learning_rate, config.steps, warmup_fraction=config.warmup_fraction
    )
    return recurrax.make_optimizer(
        model,
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        lr_factor=config.lr_factor,
        clip_norm=config.clip_norm,
    )


# -- the loop ------------------------------------------------------------------------------


class _Progress:
    """One status line, rewritten in place on a terminal, printed every so often otherwise."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_print = 0.0

    def update(self, step: int, text: str, *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and not self.tty and now - self.last_print < 10:
            return
        self.last_print = now
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"[{bar}] {step}/{self.total} {text}"
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
            if force:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _summary(metrics: dict) -> str:
    parts = []
    for name, value in metrics.items():
        if name in ("step",):
            continue
        if isinstance(value, float):
            parts.append(f"{name} {value:.4g}")
    return " ".join(parts)


def evaluate(model, state, task, config: RunConfig, loss_fn, *, length=None, step=None) -> dict:
    """Metrics on the fixed held-out test set (inference mode), averaged over batches.

    `step`: the compiled evaluation step (`_eval_step(loss_fn)`); a run builds it once and
    passes it to every evaluation (built here when not given). On several processes every
    process calls this alike; each evaluates its share of every chunk."""
    size = min(config.eval_size, getattr(task, "test_size", config.eval_size))  # bundled data
    test = task.test_set(config.seed, size, length=length)
    arrays = _batch_arrays(test)
    step = _eval_step(loss_fn) if step is None else step
    totals: dict[str, float] = {}
    size = arrays[0].shape[0]
    chunk = min(size, max(config.batch_size, 64))
    devices = jax.device_count() if jax.process_count() > 1 else 1
    chunk = max(chunk - chunk % devices, min(size, devices))  # whole shares, but the last
    for start in range(0, size, chunk):
        part = tuple(a[start : start + chunk] for a in arrays)
        metrics = step(model, state, part)
        n = part[0].shape[0]
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) * n
    return {name: value / size for name, value in totals.items()}


RUN_FILES = ("run.json", "metrics.jsonl", "checkpoints", "summary.json", "report.md")


def existing_run(out: pathlib.Path) -> list[str]:
    """The files of a run that the folder `out` already holds (empty for a new folder)."""
    out = pathlib.Path(out)
    return [name for name in RUN_FILES if (out / name).exists()]


def check_out(out: pathlib.Path, option: str = "--out") -> None:
    """Refuse a run folder that cannot be written: a file, or a folder (or the nearest
    existing parent of a folder to create) that this process cannot write.

    **Raises:** `ValueError` naming `option` and the folder."""
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option}: {str(out)!r} is a file, not a folder; give a folder.")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"{option}: cannot create {str(out)!r}: {str(existing)!r} is a file, not a folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{option}: {str(out)!r} cannot be written ({str(existing)!r} is not writable by "
            f"this user)."
        )


def overwrite_run(out: pathlib.Path) -> None:
    """Delete the run of `out`: its run files (`RUN_FILES`, the plots, the checkpoint files
    and their temporary files), nothing else: what `--overwrite` asks for."""
    out = pathlib.Path(out)
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        manager = recurrax.CheckpointManager(checkpoints)
        for step in manager.all_steps():
            manager.path(step).unlink()
        for child in checkpoints.glob(".checkpoint-*.rcx.tmp-*"):
            child.unlink()
        if not any(checkpoints.iterdir()):
            checkpoints.rmdir()
    for name in (*RUN_FILES, "curves.png", "eigenvalues.png"):
        path = out / name
        if name != "checkpoints" and (path.is_file() or path.is_symlink()):
            path.unlink()


def _saved_config(out: pathlib.Path, header_config: Any) -> tuple[dict, list]:
    """The configuration the run in `out` was last trained with and its recorded changes:
    from `run.json`, else from the checkpoint's header."""
    run_file = out / "run.json"
    if run_file.exists():
        try:
            data = json.loads(run_file.read_text())
            return RunConfig.from_dict(data).to_dict(), list(data.get("changes", []))
        except (ValueError, TypeError) as error:
            raise RunFolderError(
                f"--resume: {run_file} is damaged ({error}); the configuration of the run "
                f"cannot be read."
            ) from None
    return RunConfig.from_dict(header_config).to_dict(), []


def _resume_changes(out: pathlib.Path, saved: dict, config: RunConfig, step: int) -> dict:
    """The optimisation settings that differ between the saved run and `config`, as
    `{name: [old, new]}`; any other difference is refused."""
    new = config.to_dict()
    differing = sorted(k for k in set(saved) | set(new) if saved.get(k) != new.get(k))
    # `plugins` name where the mixers' code is, which may move; the model is checked anyway.
    differing = [k for k in differing if k != "plugins"]
    fixed = [k for k in differing if k not in OPTIMISATION_FIELDS]
    if fixed:
        raise RunFolderError(
            f"--resume: the run in {out} was started with a different configuration "
            f"(differs in {fixed}: the model, the task or their seed); use another --out, the "
            f"same options, or --overwrite to start this run again. --resume may change only "
            f"the optimisation settings {list(OPTIMISATION_FIELDS)}."
        )
    if "clip_norm" in differing and None in (saved["clip_norm"], new["clip_norm"]):
        raise RunFolderError(
            f"--resume: clip_norm {saved['clip_norm']!r} -> {new['clip_norm']!r} turns "
            f"clipping on or off, which changes the optimiser state; only its value can change."
        )
    if config.steps < step:
        raise RunFolderError(
            f"--resume: --steps {config.steps} is below the step {step} already trained in "
            f"{out}; give --steps >= {step}."
        )
    return {k: [saved[k], new[k]] for k in differing}


def _replace_text(path: pathlib.Path, text: str) -> None:
    """Write `path` atomically (a temporary file renamed onto it): a kill leaves the old
    content or the new one, and at most the temporary file, which the next run removes."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _write_run_file(out: pathlib.Path, config: RunConfig, changes: list) -> None:
    data = config.to_dict()
    if changes:
        data["changes"] = changes
    _replace_text(out / "run.json", json.dumps(data, indent=2) + "\n")


@eqx.filter_jit
def _finite(trees) -> jax.Array:
    leaves = jax.tree.leaves(eqx.filter(trees, eqx.is_inexact_array))
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _advice(config: RunConfig, manager, step: int, changes: list) -> str:
    """What to do after a divergence: a lower learning rate from the last good checkpoint
    (the rate used before the last change, if it was lower, else a tenth of it)."""
    latest = manager.latest()
    earlier = [
        c["changed"]["learning_rate"][0]
        for c in changes
        if "learning_rate" in c.get("changed", {})
        and c["changed"]["learning_rate"][0] < config.learning_rate
    ]
    lower = f"{earlier[-1] if earlier else config.learning_rate / 10:.3g}"
    if latest is None:
        return (
            f"No checkpoint was written before step {step}: rerun with --overwrite and a lower "
            f"learning rate (e.g. --lr {lower}), or check the model."
        )
    return (
        f"The last good checkpoint ({latest}) is kept: to continue from it with a lower "
        f"learning rate, rerun the same command with --resume --lr {lower} (--resume accepts "
        f"changed optimisation settings: {', '.join(_option(f) for f in OPTIMISATION_FIELDS)}"
        f"); to start again instead, use --overwrite."
    )


_COMPILED: dict[str, tuple] = {}


def _compiled_steps(config: RunConfig, kind: str, optimizer, loss_fn, train_loss=None) -> tuple:
    """The compiled training and evaluation steps of a run, built once per run (and shared
    by the runs of one process with the same model, task and optimisation, e.g. a run and
    its resumption): `(step(model, state, opt_state, batch, key), _eval_step(loss_fn))`,
    both taking the global batch; `train_loss` defaults to `loss_fn` (packed runs train on
    another loss and evaluate padded). On several processes (`jax.distributed`) they are
    data parallel over every device of every process (`_data_parallel_steps`)."""
    bookkeeping = ("eval_every", "eval_size", "checkpoint_every", "init_from")
    settings = {k: v for k, v in config.to_dict().items() if k not in bookkeeping}
    name = json.dumps([kind, settings, jax.process_count(), jax.device_count()], sort_keys=True)
    if name not in _COMPILED:
        if len(_COMPILED) >= 4:  # a few runs' compiled programs at most
            _COMPILED.pop(next(iter(_COMPILED)))
        train_loss = loss_fn if train_loss is None else train_loss
        if jax.process_count() > 1:
            _COMPILED[name] = _data_parallel_steps(optimizer, train_loss, loss_fn)
        else:
            _COMPILED[name] = (
                recurrax.make_train_step(optimizer, train_loss),
                recurrax.make_eval_step(loss_fn),
            )
    return _COMPILED[name]


def _eval_step(loss_fn):
    """`recurrax.make_eval_step(loss_fn)`, data parallel on several processes."""
    if jax.process_count() > 1:
        return _data_parallel_steps(None, None, loss_fn)[1]
    return recurrax.make_eval_step(loss_fn)


# -- several processes ---------------------------------------------------------------------


def _my_rows(batch, rows: int):
    """This process's share of the first `rows` rows of a global batch (a tuple of arrays):
    the shares of the processes, in process order, make up those rows."""
    share, here = rows // jax.process_count(), jax.process_index()
    return tuple(np.asarray(a)[:rows][here * share : (here + 1) * share] for a in batch)


def _one_copy(tree):
    """This process's copy of the replicated global arrays of `tree` (others unchanged)."""
    return jax.tree.map(
        lambda x: x.addressable_data(0)
        if isinstance(x, jax.Array) and not x.is_fully_addressable
        else x,
        tree,
    )


def _data_parallel_steps(optimizer, train_loss, loss_fn) -> tuple:
    """The training and evaluation steps of a run on several processes, taking the global
    batch as every process generates it: each process passes its rows to the data-parallel
    steps of `recurrax` on a mesh of every device (`make_data_mesh`), which replicate the
    model and return the single-process result. The evaluation takes chunks of any size:
    the rows beyond a multiple of the device count are evaluated by every process on its
    own device."""
    mesh = recurrax.make_data_mesh()
    devices = mesh.size
    on_mesh = recurrax.make_eval_step(loss_fn, mesh)
    alone = recurrax.make_eval_step(loss_fn)
    train_step = (
        None if optimizer is None
        else recurrax.make_data_parallel_train_step(optimizer, train_loss, mesh)
    )

    def step(model, state, opt_state, batch, key):
        return train_step(model, state, opt_state, _my_rows(batch, len(batch[0])), key)

    def evaluate(model, state, batch):
        rows = len(batch[0])
        whole = rows - rows % devices
        parts = []
        if whole:
            parts.append((whole, on_mesh(model, state, _my_rows(batch, whole))))
        if rows > whole:
            rest = tuple(a[whole:] for a in batch)
            parts.append((rows - whole, alone(*_one_copy((model, state)), rest)))
        return {k: sum(float(m[k]) * n for n, m in parts) / rows for k in parts[0][1]}

    return step, evaluate


def check_devices(config: RunConfig) -> None:
    """Refuse a batch that the devices of several processes cannot share equally.

    **Raises:** `ValueError` naming `--batch-size` and the process count."""
    devices, processes = jax.device_count(), jax.process_count()
    if processes > 1 and config.batch_size % devices:
        where = (
            f"the number of processes ({processes})"
            if devices == processes
            else f"the number of devices of the {processes} processes ({devices})"
        )
        raise ValueError(
            f"--batch-size {config.batch_size} must be divisible by {where}: each process "
            f"trains on an equal share of every batch."
        )


def train(
    config: RunConfig,
    out: pathlib.Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
    progress_stream=None,
    keep: int = 3,
) -> dict:
    """Train (or resume) the run in `out`; returns the final metrics (the last training
    record with its evaluation, `"loss"` and the `"test_*"` metrics).

    Writes `run.json` (the configuration, with `"changes"`: the optimisation settings
    changed on resume), `metrics.jsonl` and `checkpoints/`. Every option is checked before
    anything is written.

    - `resume`: continue from the last readable checkpoint (from step 0 if there is none);
        the optimisation settings (`OPTIMISATION_FIELDS`) may differ from the saved run's.
    - `overwrite`: delete the run already in `out` (its run files only) and start again.

    On several processes (after `jax.distributed.initialize`), every process calls this
    alike and trains data parallel on its share of every batch (`config.batch_size` must
    be divisible by the number of devices); every process reads the run folder (and the
    checkpoint on resume), process 0 alone writes it and logs.

    **Raises:**

    - `NonFiniteLoss` at the first non-finite loss or gradient norm, or when the state to be
        saved is not finite (the checkpoints on disk are all finite and are kept);
    - `RunFolderError` (a `ValueError`) when `out` holds a run and neither `resume` nor
        `overwrite` is given, when resuming a run of another model or task, or when every
        checkpoint file is damaged (they are named and left in place);
    - `ValueError` for a configuration value that cannot run.
    """
    out = pathlib.Path(out)
    config.check()
    check_out(out)
    check_devices(config)
    leader = jax.process_index() == 0
    if not leader:
        log = _silent
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; give one of them.")
    found = existing_run(out)
    if found and not (resume or overwrite):
        raise RunFolderError(
            f"--out: {out} already holds a run ({', '.join(found)}); rerun with --resume to "
            f"continue it, or with --overwrite to delete it and start again."
        )
    task, model_config, model, state = build(config)
    loss_fn = make_loss(task.kind)
    optimizer = _optimizer(config, model)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    manager = recurrax.CheckpointManager(out / "checkpoints", keep=keep)
    start, changes, changed, checkpoint, kept = 0, [], {}, None, None
    if resume and manager.all_steps():
        latest = manager.latest()
        if latest is None:
            files = [str(manager.path(s)) for s in manager.all_steps()]
            raise RunFolderError(
                f"--resume: every checkpoint in {out / 'checkpoints'} is damaged ({files}); "
                f"they are left in place. Restore them from a copy, or rerun with --overwrite "
                f"to start again."
            )
        header = recurrax.read_checkpoint_header(latest)
        if not isinstance(header.get("config"), dict):
            raise RunFolderError(
                f"--resume: {latest} holds no run configuration: it was not written by "
                f"`python -m experiments run`."
            )
        saved, changes = _saved_config(out, header["config"])
        changed = _resume_changes(out, saved, config, header["step"])
        old = RunConfig.from_dict(header["config"])  # the optimiser the state was saved from
        old_optimizer = _optimizer(old, model)
        old_opt_state = old_optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        try:
            checkpoint = manager.restore(model=model, opt_state=old_opt_state, state=state)
        except recurrax.CheckpointError as error:
            raise RunFolderError(f"--resume: {error} The files are left in place.") from None
        _resume_changes(out, checkpoint.config, config, checkpoint.step)
        model, opt_state, state = checkpoint.model, checkpoint.opt_state, checkpoint.state
        start = checkpoint.step
        if changed:
            changes.append({"step": start, "changed": changed})
        log(f"resumed from step {start} ({checkpoint.path.name})")
        if changed:
            shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            log(f"--resume: changed from step {start} on: {shown}")
        kept = _kept_metrics(out / "metrics.jsonl", start)
    else:
        if resume and not found:
            log("--resume: no run in this folder yet, starting from step 0")
        elif resume:
            log("--resume: no checkpoint yet, starting from step 0")
        if overwrite and found:
            log(f"--overwrite: deleting the run in {out} ({', '.join(found)})")
    if jax.process_count() > 1:  # every process has read the folder before process 0 writes
        multihost_utils.sync_global_devices(f"experiments.train: read {out}")
    if leader:
        for name in ("run.json", "metrics.jsonl"):  # what a kill during their rewrite left
            (out / f".{name}.tmp").unlink(missing_ok=True)
        if checkpoint is not None:
            _replace_text(out / "metrics.jsonl", kept)
        else:
            if overwrite and found:
                overwrite_run(out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.jsonl").write_text("")
        for stale in ("summary.json", "report.md"):  # rewritten when this run ends
            (out / stale).unlink(missing_ok=True)
    # Process 0 writes the metrics; the others' records (the same) are dropped.
    metrics_file = (out / "metrics.jsonl").open("a") if leader else _Discard()
    if changed:  # an event line: readers of the curves skip records with an "event"
        metrics_file.write(metrics_line({"step": start, "event": "resume", "changed": changed}))
        metrics_file.flush()
    if leader:
        _write_run_file(out, config, changes)

    slots = packing_.slots_per_row(task) if config.packing else 0
    # Packed rows come in multiples of 4 (few shapes to compile), and of the device count
    # on several processes (each process takes an equal share of the rows).
    row_multiple = math.lcm(4, jax.device_count()) if jax.process_count() > 1 else 4
    train_loss = packing_.make_packed_loss(slots) if config.packing else loss_fn
    step_fn, eval_fn = _compiled_steps(config, task.kind, optimizer, loss_fn, train_loss)
    progress = _Progress(config.steps, progress_stream if leader else _Discard())
    window_start, window_steps = time.perf_counter(), 0
    last: dict[str, Any] = {}
    try:
        for step in range(start, config.steps):
            batch = task.batch(config.seed, step, config.batch_size)
            if config.packing:  # the same examples in fewer rows; evaluation stays padded
                packed = packing_.pack(batch, slots, row_multiple=row_multiple)
                batch = packing_.packed_arrays(packed)
            else:
                batch = _batch_arrays(batch)
            tokens_per_batch = int(batch[0].shape[0] * batch[0].shape[1])
            new = step_fn(model, state, opt_state, batch, jax.random.fold_in(key, step))
            loss, grad_norm = float(new[3]["loss"]), float(new[3]["grad_norm"])
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                what = "loss" if not math.isfinite(loss) else "gradient norm"
                value = loss if what == "loss" else grad_norm
                record = {"step": step + 1, **{k: float(v) for k, v in new[3].items()}}
                metrics_file.write(metrics_line({**record, "event": "diverged"}))
                raise NonFiniteLoss(
                    f"the training {what} became {value} at step {step + 1} (loss {loss}, "
                    f"gradient norm {grad_norm}); stopping before the update. "
                    + _advice(config, manager, step + 1, changes)
                )
            model, state, opt_state = new[0], new[1], new[2]
            window_steps += 1
            record = {"step": step + 1, **{k: float(v) for k, v in new[3].items()}}
            elapsed = time.perf_counter() - window_start
            record["seconds_per_step"] = elapsed / window_steps
            record["tokens_per_second"] = tokens_per_batch * window_steps / max(elapsed, 1e-9)
            done = step + 1 == config.steps
            if (step + 1) % config.eval_every == 0 or done:
                evaluation = evaluate(model, state, task, config, loss_fn, step=eval_fn)
                record.update({f"test_{k}": v for k, v in evaluation.items()})
            if (step + 1) % config.checkpoint_every == 0 or done:
                if not bool(_finite((model, opt_state, state))):
                    raise NonFiniteLoss(
                        f"the parameters, optimiser state or model state became non-finite at "
                        f"step {step + 1} (with a finite loss {loss}); not saving them, "
                        f"stopping. " + _advice(config, manager, step + 1, changes)
                    )
            metrics_file.write(metrics_line(record))
            metrics_file.flush()
            last = record
            progress.update(step + 1, _summary(record), force=done or "test_loss" in record)
            if (step + 1) % config.checkpoint_every == 0 or done:
                manager.save(
                    step + 1,
                    model=model,
                    opt_state=opt_state,
                    state=state,
                    config=config.to_dict(),
                    key=key,
                    metadata={"loss": loss},
                )
            if window_steps >= 50 or "test_loss" in record:  # evaluation is not a train step
                window_start, window_steps = time.perf_counter(), 0
    finally:
        metrics_file.close()
    if not last:  # resumed a finished run: its last record holds the final metrics
        records = [r for r in read_metrics(out / "metrics.jsonl") if "event" not in r]
        if records and records[-1]["step"] == start and "test_loss" in records[-1]:
            last = records[-1]
        else:
            last = {
                f"test_{k}": v
                for k, v in evaluate(model, state, task, config, loss_fn, step=eval_fn).items()
            }
            if checkpoint is not None and "loss" in checkpoint.metadata:
                last["loss"] = checkpoint.metadata["loss"]
    return last


# -- metrics.jsonl ---------------------------------------------------------------------------

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _json_value(value: Any) -> Any:
    """`value` for strict JSON: a float that is not finite becomes "NaN", "Infinity" or
    "-Infinity" (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def metrics_line(record: dict) -> str:
    """One line of `metrics.jsonl`: strict JSON (see `_json_value`), newline-terminated."""
    return json.dumps(_json_value(record), allow_nan=False) + "\n"


def _parse_lines(path: pathlib.Path) -> list[tuple[str, dict]]:
    """The lines of `metrics.jsonl` with their records. A last line that is not valid JSON
    (a kill during its write) is dropped with a warning naming the file; any other bad line
    is an error naming the file and the line."""
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    parsed = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer step")
        except ValueError as error:
            if number == len(lines):
                warnings.warn(
                    f"{path}: dropping its last line, which is incomplete (the run was "
                    f"interrupted while writing it): {line[:60]!r}",
                    stacklevel=3,
                )
                continue
            raise RunFolderError(
                f"{path}: line {number} is not a metrics record ({error}); the file is damaged "
                f"(fix or remove that line, or rerun with --overwrite to start again)."
            ) from None
        parsed.append((line, record))
    return parsed


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a `metrics.jsonl`, with "NaN", "Infinity" and "-Infinity" read back as
    floats; an incomplete last line is dropped with a warning."""
    records = [record for _, record in _parse_lines(pathlib.Path(path))]
    return [
        {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in r.items()}
        for r in records
    ]


def _kept_metrics(path: pathlib.Path, step: int) -> str:
    """The text of `metrics.jsonl` with the records of steps up to `step` only (a killed run
    may have logged a few steps past its last checkpoint, or an incomplete line)."""
    kept = [line for line, record in _parse_lines(path) if record["step"] <= step]
    return "".join(line + "\n" for line in kept)


def trained_model(config: RunConfig, out: pathlib.Path) -> tuple:
    """`(model, state)` of the last checkpoint of the run in `out` (made with `config`)."""
    _, _, skeleton, state = build(config, initialise=False)
    manager = recurrax.CheckpointManager(pathlib.Path(out) / "checkpoints")
    optimizer = _optimizer(config, skeleton)
    opt_state = optimizer.init(eqx.filter(skeleton, eqx.is_inexact_array))
    checkpoint = manager.restore(model=skeleton, opt_state=opt_state, state=state)
    return checkpoint.model, checkpoint.state
