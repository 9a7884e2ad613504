"""Training runs: `python -m experiments run TASK --model MODEL`.

A run is fully described by a `RunConfig` (plain JSON values, stored in every checkpoint).
Batches are drawn from (seed, split, step), and the dropout key of step `s` is
`fold_in(key, s)`, so a run resumed from a checkpoint sees exactly the data and randomness
of an uninterrupted one. Metrics go to `metrics.jsonl`; checkpoints to `checkpoints/`
(atomic, the last few kept); a non-finite loss stops the run without overwriting the last
good checkpoint.
"""

import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from . import packing as packing_, variants
from .tasks import make_task


MODELS = ("lru", "ssm", "mingru", "minlstm", "gru", "lstm")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run.

    `init_from`: a run folder whose last checkpoint gives the starting parameters (and
    BatchNorm statistics) of the model, e.g. a run of the same model at a shorter length (a
    length curriculum); the optimiser, schedule and step count start afresh.

    `packing`: train on packed rows (whole examples one after another, restarting at each)
    instead of padded ones; variable-length classification tasks only (`experiments.packing`).
    """

    task: str
    model: str
    preset: str = "small"
    task_options: dict = dataclasses.field(default_factory=dict)
    model_config: dict = dataclasses.field(default_factory=dict)
    variant: str | None = None
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_factor: float = 1.0
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    clip_norm: float | None = 1.0
    eval_every: int = 100
    eval_size: int = 512
    checkpoint_every: int = 100
    seed: int = 0
    init_from: str | None = None
    packing: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        # Runs made before `init_from` and `packing` existed.
        return cls(**{"init_from": None, "packing": False, **data})


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""


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
        recurrent_fields=variants.RECURRENT_FIELDS,
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


def evaluate(model, state, task, config: RunConfig, loss_fn, *, length=None) -> dict:
    """Metrics on the fixed held-out test set (inference mode), averaged over batches."""
    frozen = eqx.nn.inference_mode(model)
    size = min(config.eval_size, getattr(task, "test_size", config.eval_size))  # bundled data
    test = task.test_set(config.seed, size, length=length)
    arrays = _batch_arrays(test)
    step = _eval_step(loss_fn)
    totals: dict[str, float] = {}
    size = arrays[0].shape[0]
    chunk = min(size, max(config.batch_size, 64))
    for start in range(0, size, chunk):
        part = tuple(a[start : start + chunk] for a in arrays)
        metrics = step(frozen, state, part)
        n = part[0].shape[0]
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) * n
    return {name: value / size for name, value in totals.items()}


def _eval_step(loss_fn):
    @eqx.filter_jit
    def step(model, state, batch):
        loss, (_, metrics) = loss_fn(model, state, batch, None)
        return {"loss": loss, **metrics}

    return step


def train(
    config: RunConfig,
    out: pathlib.Path,
    *,
    resume: bool = False,
    log=print,
    progress_stream=None,
    keep: int = 3,
) -> dict:
    """Train (or resume) the run in `out`; returns the final evaluation metrics.

    Writes `run.json` (the configuration), `metrics.jsonl` and `checkpoints/`.
    Raises `NonFiniteLoss` when the loss stops being finite (the last good checkpoint is
    kept) and `ValueError` when resuming a run whose configuration differs.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    manager = recurrax.CheckpointManager(out / "checkpoints", keep=keep)
    task, model_config, model, state = build(config)
    loss_fn = make_loss(task.kind)
    optimizer = _optimizer(config, model)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    start = 0
    if resume and manager.latest() is not None:
        saved = json.loads(run_file.read_text()) if run_file.exists() else None
        saved = None if saved is None else RunConfig.from_dict(saved).to_dict()
        if saved is not None and saved != config.to_dict():
            differing = sorted(k for k in saved if saved.get(k) != config.to_dict().get(k))
            raise ValueError(
                f"--resume: the run in {out} was started with a different configuration "
                f"(differs in {differing}); use another --out or the same options."
            )
        checkpoint = manager.restore(
            model=model, opt_state=opt_state, state=state, config=config.to_dict()
        )
        model, opt_state, state = checkpoint.model, checkpoint.opt_state, checkpoint.state
        start = checkpoint.step
        log(f"resumed from step {start} ({checkpoint.path.name})")
    else:
        if resume:
            log("--resume: no checkpoint yet, starting from step 0")
        manager_files = list((out / "checkpoints").glob("*.rcx"))
        for stale in manager_files:  # a fresh run replaces an old one in the same folder
            stale.unlink()
        (out / "metrics.jsonl").write_text("")
        run_file.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    # Keep only the metrics of steps up to the resumed step (a killed run may have logged
    # a few steps past its last checkpoint).
    if start:
        _truncate_metrics(out / "metrics.jsonl", start)
    metrics_file = (out / "metrics.jsonl").open("a")

    slots = packing_.slots_per_row(task) if config.packing else 0
    train_loss = packing_.make_packed_loss(slots) if config.packing else loss_fn
    step_fn = recurrax.make_train_step(optimizer, train_loss)
    progress = _Progress(config.steps, progress_stream)
    window_start, window_steps = time.perf_counter(), 0
    last: dict[str, Any] = {}
    for step in range(start, config.steps):
        batch = task.batch(config.seed, step, config.batch_size)
        if config.packing:  # the same examples in fewer rows; evaluation stays padded
            batch = packing_.packed_arrays(packing_.pack(batch, slots))
        else:
            batch = _batch_arrays(batch)
        tokens_per_batch = int(batch[0].shape[0] * batch[0].shape[1])
        new = step_fn(model, state, opt_state, batch, jax.random.fold_in(key, step))
        loss = float(new[3]["loss"])
        if not math.isfinite(loss):
            metrics_file.close()
            raise NonFiniteLoss(
                f"the training loss became {loss} at step {step + 1}; stopping. The last good "
                f"checkpoint ({manager.latest()}) is kept; lower the learning rate or check "
                f"the model, then rerun with --resume."
            )
        model, state, opt_state = new[0], new[1], new[2]
        window_steps += 1
        record = {"step": step + 1, **{k: float(v) for k, v in new[3].items()}}
        elapsed = time.perf_counter() - window_start
        record["seconds_per_step"] = elapsed / window_steps
        record["tokens_per_second"] = tokens_per_batch * window_steps / max(elapsed, 1e-9)
        done = step + 1 == config.steps
        if (step + 1) % config.eval_every == 0 or done:
            evaluation = evaluate(model, state, task, config, loss_fn)
            record.update({f"test_{k}": v for k, v in evaluation.items()})
        metrics_file.write(json.dumps(record) + "\n")
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
    metrics_file.close()
    if not last:  # resumed a finished run
        last = evaluate(model, state, task, config, loss_fn)
        last = {f"test_{k}": v for k, v in last.items()}
    return last


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
