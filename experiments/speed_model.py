"""`python -m experiments speed model`: one whole training step of a recurrax model against
the same model written directly in plain JAX, the way public LRU and minGRU code is written.

A training step is forward, loss, backward and the optimiser's update (`optax.adamw`, the
same on both sides), compiled with `jax.jit`; the parameters, normalisation state and
optimiser state returned by one step are fed to the next, as in a training loop. Two models:

1. **The LRU paper's model at an LRA-like shape** (App. D of Orvieto et al. 2023): token
   embedding, 6 GLU blocks (pre-norm BatchNorm in training mode, LRU with H = 128,
   N = 256, GELU, GLU, skip), mean pooling over time, a 10-class head; batch 16,
   L ∈ {1024, 4096}, cross-entropy on the class.
2. **A 3-layer minGRU model at the minRNN paper's selective-copying shape** (Feng et al.
   2024 §4): vocabulary 16, d_model 64, minGRU of width 6 × 64 projected back, pre-norm
   LayerNorm, no convolution and no MLP, a final LayerNorm, a per-token head over the 14
   data tokens and cross-entropy at the K = 16 marker positions only; batch 64 (the
   paper's).

The recurrax side is `recurrax.ModelConfig(...).build(...)` trained by `recurrax.train_step`
(the function `recurrax.make_train_step` compiles), here compiled once ahead of time like the
direct side, so that the program timed is the program whose peak memory is reported. The
direct side is a parameter pytree and functions with no recurrax in its code path: for the
LRU, per example, complex B̄ = diag(γ) B applied to the input promoted to complex at every
step, `jax.lax.associative_scan` over (λ broadcast to (L, N), B̄u), then Re(C x) + D ⊙ u,
all `jax.vmap`-ed over the batch (BatchNorm's statistics taken over the whole batch and
time); for minGRU, per example, one projection to the candidate and the gate, then the
log-space evaluation of the public minGRU code (cumsum of log(1 − z) and
`jax.lax.cumlogsumexp`), and as a second direct form the same recurrence by
`jax.lax.associative_scan` in linear space. The recurrax model's parameters are copied into
the direct pytree, and the command asserts that both compute the same loss on
the same batch before timing.

Every implementation is timed in a Python process of its own (`measure_model`): one heap
per program, so that keeping freed memory (see `_timing.KEEP_FREED_MEMORY`) never fragments
one program's memory with another's, and the processes take turns one step at a time, so
that a machine whose speed drifts slows every implementation alike.
"""

import dataclasses
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import recurrax

from ._figures import bars, image
from ._timing import (
    emit_report,
    freed_memory_kept,
    KEEP_FREED_MEMORY,
    Machine,
    markdown_table,
    mib,
    ms,
    page_faults,
    peak_bytes,
    rerun_keeping_freed_memory,
)


# The LRU paper's model at an LRA-like shape.
LRU_LENGTHS = (1024, 4096)
LRU_BATCH, LRU_DEPTH, LRU_WIDTH, LRU_STATE, LRU_CLASSES, LRU_VOCAB = 16, 6, 128, 256, 10, 16
# The minRNN paper's selective copying: V = 16, K = 16, 3 layers, d_model 64, expansion 6,
# batch 64. The paper's L is 4096; the default is L = 1024, a quarter of the work per step
# (every implementation is O(L)), so that a CPU run's repeats fit in minutes.
COPY_LENGTHS = (1024,)
COPY_BATCH, COPY_DEPTH, COPY_WIDTH, COPY_EXPANSION, COPY_VOCAB, COPY_TOKENS = 64, 3, 64, 6, 16, 16
LEARNING_RATE, WEIGHT_DECAY = 1e-3, 0.05
# Untimed steps of every side before timing: the allocator settles within three (a side's
# first steps may still grow the heap; see `_timing.KEEP_FREED_MEMORY`).
WARMUP = 3
# |Δloss| allowed between the two sides in float32, relative to max(1, |loss|): the same
# function evaluated in two orders (the report states it in float32 ulps).
LOSS_TOLERANCE = 1e-5

RECURRAX = "recurrax"
DIRECT_LRU = "direct (associative_scan, complex projections)"
DIRECT_LOG = "direct (log space: cumsum + cumlogsumexp)"
DIRECT_ASSOC = "direct (associative_scan)"
FLOOR = "floor: the model without its recurrence"
LRU_NAMES = (RECURRAX, DIRECT_LRU, FLOOR)
COPY_NAMES = (RECURRAX, DIRECT_LOG, DIRECT_ASSOC)


def optimizer() -> optax.GradientTransformation:
    """The optimiser of both sides: AdamW on every parameter."""
    return optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)


# -- the recurrax models ----------------------------------------------------------------------


def lru_config(
    depth: int = LRU_DEPTH,
    d_model: int = LRU_WIDTH,
    state_size: int = LRU_STATE,
    param_dtype: str = "float32",
) -> recurrax.ModelConfig:
    """The LRU paper's LRA model (the `paper` preset of the `glu` family)."""
    return recurrax.ModelConfig(
        mixer="lru",
        d_model=d_model,
        depth=depth,
        state_size=state_size,
        output_size=LRU_CLASSES,
        vocab_size=LRU_VOCAB,
        block="glu",
        norm="batch",
        prenorm=True,
        dropout=0.0,
        pooling="mean",
        mixer_options={"r_min": 0.0, "r_max": 0.99, "max_phase": 2 * math.pi},
        param_dtype=param_dtype,
    )


def copy_config(
    depth: int = COPY_DEPTH,
    d_model: int = COPY_WIDTH,
    expansion: int = COPY_EXPANSION,
    param_dtype: str = "float32",
) -> recurrax.ModelConfig:
    """The minRNN paper's selective-copying model: no convolution, no MLP."""
    return recurrax.ModelConfig(
        mixer="mingru",
        d_model=d_model,
        depth=depth,
        expansion=expansion,
        output_size=COPY_VOCAB - 2,
        vocab_size=COPY_VOCAB,
        block="mlp",
        norm="layer",
        prenorm=True,
        final_norm=True,
        conv_kernel=None,
        mlp_expansion=None,
        dropout=0.0,
        pooling="none",
        param_dtype=param_dtype,
    )


def classification_loss(model, state, batch, key):
    """Cross-entropy of one class per sequence (BatchNorm over the vmapped batch axis)."""
    x, labels = batch
    logits, state = jax.vmap(lambda x: model(x, state), axis_name="batch", out_axes=(0, None))(x)
    return _cross_entropy(logits, labels), (state, {})


def copy_loss(model, state, batch, key):
    """Cross-entropy at the marker positions of selective copying."""
    x, targets, scored = batch
    logits, state = jax.vmap(lambda x: model(x, state), axis_name="batch", out_axes=(0, None))(x)
    return _masked_cross_entropy(logits, targets, scored), (state, {})


def _cross_entropy(logits, labels):
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[..., None], axis=-1))


def _masked_cross_entropy(logits, targets, scored):
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    weights = scored.astype(picked.dtype)
    return -jnp.sum(picked * weights) / jnp.sum(weights)


# -- the batches --------------------------------------------------------------------------------


def lru_batch(length: int, batch: int = LRU_BATCH, seed: int = 0):
    """Uniform random tokens and labels: `(tokens (batch, length), labels (batch,))`."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, LRU_VOCAB, (batch, length), dtype=np.int32)
    labels = rng.integers(0, LRU_CLASSES, (batch,), dtype=np.int32)
    return jnp.asarray(tokens), jnp.asarray(labels)


def copy_batch(length: int, batch: int = COPY_BATCH, seed: int = 0):
    """A selective-copying batch (L blanks with K data tokens, then K markers):
    `(tokens, targets, scored)`, each `(batch, length + K)`."""
    from .tasks import make_task

    task = make_task(
        "selective_copying", length=length, num_tokens=COPY_TOKENS, vocab_size=COPY_VOCAB
    )
    b = task.batch(seed, 0, batch)
    return jnp.asarray(b.inputs), jnp.asarray(b.targets), jnp.asarray(b.target_mask)


# -- the direct LRU model (plain JAX, no recurrax) ----------------------------------------------


def lru_direct_params(model) -> dict:
    """The recurrax LRU model's parameters as the direct implementation's pytree."""
    blocks = []
    for block in model.blocks:
        m = block.mixer
        blocks.append(
            dict(
                bn_scale=block.norm.weight,
                bn_shift=block.norm.bias,
                nu_log=m.nu_log,
                theta_log=m.theta_log,
                gamma_log=m.gamma_log,
                B_re=m.B_re,
                B_im=m.B_im,
                C_re=m.C_re,
                C_im=m.C_im,
                D=m.D,
                W_value=block.glu_value.weight,
                b_value=block.glu_value.bias,
                W_gate=block.glu_gate.weight,
                b_gate=block.glu_gate.bias,
            )
        )
    return dict(
        embedding=model.encoder.weight,
        blocks=blocks,
        W_head=model.head.weight,
        b_head=model.head.bias,
    )


def lru_direct_state(model, state) -> list:
    """BatchNorm's running statistics, one `(mean, var)` per block."""
    return [tuple(state.get(block.norm.stats)) for block in model.blocks]


def _lru_layer(p, u):
    """One example: u `(L, H)` real -> y `(L, H)` real."""
    lam = jnp.exp(jax.lax.complex(-jnp.exp(p["nu_log"]), jnp.exp(p["theta_log"])))
    B = jax.lax.complex(p["B_re"], p["B_im"])
    B_norm = B * jnp.exp(p["gamma_log"]).astype(B.dtype)[:, None]
    C = jax.lax.complex(p["C_re"], p["C_im"])
    Bu = jax.vmap(lambda u_t: B_norm @ u_t.astype(B.dtype))(u)
    Lambda = jnp.repeat(lam[None], u.shape[0], axis=0)

    def binary(earlier, later):
        a_i, b_i = earlier
        a_j, b_j = later
        return a_j * a_i, a_j * b_i + b_j

    _, x = jax.lax.associative_scan(binary, (Lambda, Bu))
    return jax.vmap(lambda x_t, u_t: (C @ x_t).real + p["D"] * u_t)(x, u)


def _batch_norm(p, stats, x, eps=1e-5, momentum=0.9):
    """Training-mode BatchNorm over batch and time; `x` `(batch, L, H)`."""
    mean = jnp.mean(x, axis=(0, 1))
    var = jnp.mean(jnp.square(x - mean[None, None]), axis=(0, 1))
    y = (x - mean[None, None]) * jax.lax.rsqrt(var + eps)[None, None]
    y = y * p["bn_scale"][None, None] + p["bn_shift"][None, None]
    old_mean, old_var = stats
    new = (
        jax.lax.stop_gradient(momentum * old_mean + (1 - momentum) * mean),
        jax.lax.stop_gradient(momentum * old_var + (1 - momentum) * var),
    )
    return y, new


def _floor_layer(p, u):
    """The LRU layer with its recurrence removed (x_t = B̄u_t, as with λ = 0), in real
    arithmetic: Re(C B̄ u_t) + D ⊙ u_t. Not an implementation of the model: what its matmuls,
    norms, GLU and optimiser cost when the recurrence costs nothing."""
    gamma = jnp.exp(p["gamma_log"])[:, None]
    x = u @ jnp.concatenate([gamma * p["B_re"], gamma * p["B_im"]], axis=0).T
    return x @ jnp.concatenate([p["C_re"], -p["C_im"]], axis=1).T + p["D"][None] * u


def lru_direct_forward(params, stats, tokens, layer=_lru_layer):
    """Logits `(batch, classes)` and the new running statistics."""
    x = params["embedding"][tokens]
    new_stats = []
    for p, s in zip(params["blocks"], stats):
        z, s = _batch_norm(p, s, x)
        new_stats.append(s)
        z = jax.vmap(layer, in_axes=(None, 0))(p, z)
        z = jax.nn.gelu(z)
        value = z @ p["W_value"].T + p["b_value"][None, None]
        z = value * jax.nn.sigmoid(z @ p["W_gate"].T + p["b_gate"][None, None])
        x = x + z
    pooled = jnp.mean(x, axis=1)
    return pooled @ params["W_head"].T + params["b_head"][None], new_stats


def lru_direct_loss(params, stats, batch, layer=_lru_layer):
    tokens, labels = batch
    logits, stats = lru_direct_forward(params, stats, tokens, layer)
    return _cross_entropy(logits, labels), stats


def lru_floor_loss(params, stats, batch):
    """The loss of the model with `_floor_layer` in place of the LRU (a timing floor)."""
    return lru_direct_loss(params, stats, batch, _floor_layer)


# -- the direct minGRU model (plain JAX, no recurrax) -------------------------------------------


def copy_direct_params(model) -> dict:
    """The recurrax minGRU model's parameters as the direct implementation's pytree (the
    candidate and gate projections packed into one matrix, candidate first)."""
    blocks = []
    for block in model.blocks:
        m = block.mixer
        blocks.append(
            dict(
                ln_scale=block.norm.weight,
                ln_shift=block.norm.bias,
                W_hg=jnp.concatenate([m.linear_h.weight, m.linear_z.weight], axis=0),
                b_hg=jnp.concatenate([m.linear_h.bias, m.linear_z.bias], axis=0),
                W_out=block.out_proj.weight,
            )
        )
    return dict(
        embedding=model.encoder.weight,
        blocks=blocks,
        ln_scale=model.final_norm.weight,
        ln_shift=model.final_norm.bias,
        W_head=model.head.weight,
        b_head=model.head.bias,
    )


def _layer_norm(x, scale, shift, eps=1e-5):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale[None] + shift[None]


def _log_g(x):
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


def _g(x):
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def _min_gru_log(p, x):
    """One example in log space (h_0 = 0): log h_t = a*_t + logcumsumexp(log b − a*)_t."""
    hidden, gate = jnp.split(x @ p["W_hg"].T + p["b_hg"][None], 2, axis=-1)
    log_coeffs = -jax.nn.softplus(gate)  # log(1 − z)
    log_values = -jax.nn.softplus(-gate) + _log_g(hidden)  # log z + log h̃
    a_star = jnp.cumsum(log_coeffs, axis=0)
    return jnp.exp(a_star + jax.lax.cumlogsumexp(log_values - a_star, axis=0))


def _min_gru_assoc(p, x):
    """One example in linear space: h_t = (1 − z_t) h_{t−1} + z_t h̃_t by associative scan."""
    hidden, gate = jnp.split(x @ p["W_hg"].T + p["b_hg"][None], 2, axis=-1)
    z = jax.nn.sigmoid(gate)

    def binary(earlier, later):
        return later[0] * earlier[0], later[0] * earlier[1] + later[1]

    return jax.lax.associative_scan(binary, (1 - z, z * _g(hidden)))[1]


def copy_direct_forward(params, tokens, cell=_min_gru_log):
    """Logits `(batch, L + K, classes)` of one batch."""

    def example(tokens):
        x = params["embedding"][tokens]
        for p in params["blocks"]:
            z = _layer_norm(x, p["ln_scale"], p["ln_shift"])
            x = x + cell(p, z) @ p["W_out"].T
        x = _layer_norm(x, params["ln_scale"], params["ln_shift"])
        return x @ params["W_head"].T + params["b_head"][None]

    return jax.vmap(example)(tokens)


def copy_direct_loss(params, stats, batch, cell=_min_gru_log):
    tokens, targets, scored = batch
    return _masked_cross_entropy(copy_direct_forward(params, tokens, cell), targets, scored), stats


# -- the steps ----------------------------------------------------------------------------------


def direct_train_step(loss: Callable, opt: optax.GradientTransformation) -> Callable:
    """`step(params, stats, opt_state, batch) -> (params, stats, opt_state, loss)`."""

    def step(params, stats, opt_state, batch):
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params, stats, batch)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32
            updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, value

    return step


class Side:
    """One implementation ready to step: `side()` runs one training step from the values the
    previous one returned and gives `(params, state, opt_state, loss)`. The step is compiled
    once, ahead of time, and `peak_bytes` is that compiled program's XLA memory figure."""

    def __init__(self, name: str, step: Callable, carry: list, batch: tuple, checked=True):
        self.name, self.carry, self.batch, self.checked = name, list(carry), batch, checked
        self.compiled = jax.jit(step).lower(*self.carry, batch).compile()

    @property
    def peak_bytes(self) -> int | None:
        return peak_bytes(self.compiled)

    def __call__(self):
        out = self.compiled(*self.carry, self.batch)
        self.carry[:] = out[:3]
        return out


def _recurrax_side(model, state, loss_fn, batch) -> Side:
    """`recurrax.train_step` (what `recurrax.make_train_step` compiles) on the model's arrays."""
    opt = optimizer()
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    params, static = eqx.partition(model, eqx.is_array)

    def step(params, state, opt_state, batch):
        model, state, opt_state, metrics = recurrax.train_step(
            eqx.combine(params, static),
            state,
            opt_state,
            batch,
            None,
            optimizer=opt,
            loss_fn=loss_fn,
        )
        return eqx.filter(model, eqx.is_array), state, opt_state, metrics["loss"]

    return Side(RECURRAX, step, [params, state, opt_state], batch)


def _direct_side(name, params, stats, loss, batch, checked=True) -> Side:
    opt = optimizer()
    carry = [params, stats, opt.init(params)]
    return Side(name, direct_train_step(loss, opt), carry, batch, checked)


def lru_sides(
    length: int,
    *,
    depth: int = LRU_DEPTH,
    batch: int = LRU_BATCH,
    d_model: int = LRU_WIDTH,
    state_size: int = LRU_STATE,
    param_dtype: str = "float32",
    floor: bool = False,
    names: tuple[str, ...] | None = None,
) -> list[Side]:
    """The recurrax LRU model and its direct twin, with the same parameters and batch; with
    `floor`, also the model without its recurrence (`_floor_layer`), not loss-checked.
    `names` (of `LRU_NAMES`) builds only those sides, in that order (each side compiles its
    step when built)."""
    model, state = lru_config(depth, d_model, state_size, param_dtype).build(key=jax.random.key(0))
    data = lru_batch(length, batch)
    builders = {
        RECURRAX: lambda: _recurrax_side(model, state, classification_loss, data),
        DIRECT_LRU: lambda: _direct_side(
            DIRECT_LRU,
            lru_direct_params(model),
            lru_direct_state(model, state),
            lru_direct_loss,
            data,
        ),
        FLOOR: lambda: _direct_side(
            FLOOR,
            lru_direct_params(model),
            lru_direct_state(model, state),
            lru_floor_loss,
            data,
            checked=False,
        ),
    }
    if names is None:
        names = LRU_NAMES if floor else LRU_NAMES[:2]
    return [builders[_known(name, builders)]() for name in names]


def copy_sides(
    length: int,
    *,
    depth: int = COPY_DEPTH,
    batch: int = COPY_BATCH,
    d_model: int = COPY_WIDTH,
    expansion: int = COPY_EXPANSION,
    param_dtype: str = "float32",
    names: tuple[str, ...] | None = None,
) -> list[Side]:
    """The recurrax minGRU model and its two direct twins, same parameters and batch;
    `names` (of `COPY_NAMES`) builds only those, in that order."""
    model, state = copy_config(depth, d_model, expansion, param_dtype).build(key=jax.random.key(0))
    data = copy_batch(length, batch)
    params = copy_direct_params(model)
    builders = {
        RECURRAX: lambda: _recurrax_side(model, state, copy_loss, data),
        DIRECT_LOG: lambda: _direct_side(DIRECT_LOG, params, (), copy_direct_loss, data),
        DIRECT_ASSOC: lambda: _direct_side(
            DIRECT_ASSOC,
            params,
            (),
            lambda p, s, b: copy_direct_loss(p, s, b, _min_gru_assoc),
            data,
        ),
    }
    return [builders[_known(name, builders)]() for name in (names or COPY_NAMES)]


def _known(name: str, builders: dict) -> str:
    if name not in builders:
        raise ValueError(f"`names` may hold {sorted(builders)}, got {name!r}.")
    return name


# -- measuring ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    model: str
    name: str
    length: int
    step: float
    peak_bytes: int | None
    loss: float
    loss_diff: float  # |loss − recurrax's loss| at step 0
    faulted: float = math.nan  # bytes of memory faulted in per step (median; 4 KiB pages)
    times: tuple[float, ...] = ()  # every timed step, seconds, in order
    interleaved: bool = False  # timed in rounds, one step of every side per round


def _serve(spec: str, answers_fd: int) -> None:
    """A timing process's body (`python -m experiments.speed_model SPEC FD`): build (and
    compile) the side that the JSON `spec` names, answer `["ready", peak bytes]` on the file
    descriptor `answers_fd`, then run one training step per `step` line of standard input,
    answering `["step", seconds, bytes faulted in, loss]`, until `stop` or the end of input.
    A failure is answered `["error", message]`."""
    with os.fdopen(answers_fd, "w", buffering=1) as answers:

        def answer(*values):
            answers.write(json.dumps(values) + "\n")

        try:
            spec = json.loads(spec)
            build = lru_sides if spec["model"] == "LRU" else copy_sides
            [side] = build(spec["length"], names=(spec["name"],), **spec["options"])
            answer("ready", side.peak_bytes)
            for line in sys.stdin:
                if line.strip() != "step":
                    break
                before = page_faults()
                start = time.perf_counter()
                out = jax.block_until_ready(side())
                elapsed = time.perf_counter() - start
                answer("step", elapsed, 4096 * (page_faults() - before), float(out[3]))
        except Exception as error:  # the parent raises it with its context
            answer("error", f"{type(error).__name__}: {error}")


class _Worker:
    """One side in its own Python process, with its own heap and XLA runtime."""

    def __init__(self, model: str, length: int, name: str, options: dict):
        self.model, self.length, self.name = model, length, name
        spec = json.dumps(dict(model=model, length=length, name=name, options=options))
        read, write = os.pipe()
        env = dict(os.environ)
        root = str(pathlib.Path(__file__).resolve().parents[1])  # where `experiments` is
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "experiments.speed_model", spec, str(write)],
            stdin=subprocess.PIPE,
            pass_fds=(write,),
            env=env,
            text=True,
        )
        os.close(write)
        self.answers = os.fdopen(read)
        self.losses, self.times, self.faults = [], [], []
        try:
            self.peak_bytes = self._answer("ready")[0]
        except BaseException:
            self.stop()
            raise

    def _answer(self, kind: str) -> list:
        line = self.answers.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(
                f"{self.model}, L = {self.length}: the process timing {self.name!r} ended "
                f"without answering (exit code {code}; -9 is a kill, often for lack of "
                "memory)."
            )
        answer = json.loads(line)
        if answer[0] == "error":
            raise RuntimeError(f"{self.model}, L = {self.length}, {self.name!r}: {answer[1]}")
        assert answer[0] == kind, answer
        return answer[1:]

    def step(self, timed: bool) -> None:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        elapsed, faulted, loss = self._answer("step")
        self.losses.append(loss)
        if timed:
            self.times.append(elapsed)
            self.faults.append(faulted)

    def stop(self) -> None:
        """End the process (again: nothing)."""
        if self.answers.closed:
            return
        try:
            self.process.stdin.close()  # the end of input ends it
        except OSError:  # it has gone already
            pass
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in a step
            self.process.kill()
            self.process.wait()
        self.answers.close()


def _print(line: str) -> None:
    print(line, flush=True)


def available_memory() -> int | None:
    """The memory the kernel can give without swapping (`MemAvailable`), bytes; `None` where
    unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return 1024 * int(line.split()[1])
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass
    return None


# Interleaved timing holds every side's temporaries at once: allowed when their compiled
# peaks, with this margin and `PROCESS_OVERHEAD` per process, fit in the available memory.
MEMORY_MARGIN = 1.25
PROCESS_OVERHEAD = 2**30


def fits_together(peaks: list[int | None], available: int | None) -> bool:
    """Whether processes with these compiled peaks can all keep their memory at once."""
    if available is None or any(p is None for p in peaks):
        return False
    return sum(MEMORY_MARGIN * p + PROCESS_OVERHEAD for p in peaks) <= available


def measure_model(
    model: str,
    length: int,
    names: tuple[str, ...],
    repeats: int,
    *,
    options: dict | None = None,
    interleave: bool | None = None,
    log=None,
) -> list[Row]:
    """Time the sides `names` of `model` ("LRU" or "minGRU", built by `lru_sides` /
    `copy_sides` with `options`), each in its own Python process, the first (recurrax) being
    the reference of the loss check.

    Every process compiles its step (one after another). Step 0 of every side must give
    recurrax's loss within `LOSS_TOLERANCE`; then `WARMUP` untimed steps and `repeats` timed
    ones. Interleaved (`interleave=True`, or `None` when `fits_together`): in rounds of one
    step per side, the order rotating each round, so that a machine whose speed drifts from
    minute to minute slows every side alike; each process keeps its own memory, so no side's
    heap fragments another's. Otherwise in turn, each process ended after its steps (one
    side's memory at a time). Rows give the median time, the median memory faulted in per
    step and the compiled peak memory."""
    log = log or _print
    options = options or {}
    workers: list[_Worker] = []
    try:
        for name in names:
            log(f"  {model} L={length}: compiling {name}")
            workers.append(_Worker(model, length, name, options))
        chosen = interleave is None
        if chosen:
            interleave = fits_together([w.peak_bytes for w in workers], available_memory())
        if interleave:
            log(f"  {model} L={length}: timing in rounds, one step of each side per round")
        else:
            log(
                f"  {model} L={length}: timing one side after another"
                + (" (their memory together would not fit)" if chosen else "")
            )
        if interleave:
            for w in workers:
                w.step(timed=False)
            _check_losses(model, length, workers)
            for r in range(WARMUP + repeats):
                order = workers[r % len(workers) :] + workers[: r % len(workers)]
                for w in order:
                    w.step(timed=r >= WARMUP)
                if r >= WARMUP:
                    _log_round(model, length, workers, r - WARMUP, repeats, log)
        else:
            for i, w in enumerate(workers):
                for r in range(1 + WARMUP + repeats):
                    w.step(timed=r > WARMUP)
                    if r == 0:
                        _check_losses(model, length, workers[: i + 1])
                log(f"  {model} L={length}: {w.name}: {ms(statistics.median(w.times))} ms")
                w.stop()
    finally:
        for w in workers:
            w.stop()
    reference = workers[0].losses[0]
    rows = []
    for w in workers:
        diff = abs(w.losses[0] - reference) if w.name != FLOOR else math.nan
        rows.append(
            Row(
                model,
                w.name,
                length,
                statistics.median(w.times),
                w.peak_bytes,
                w.losses[0],
                diff,
                statistics.median(w.faults),
                tuple(w.times),
                interleave,
            )
        )
    for r in rows:
        log(
            f"  {model:6s} L={length:5d}  {r.name:48s} step {ms(r.step):>9s} ms   "
            f"peak {mib(r.peak_bytes):>6s} MiB   faulted {mib(r.faulted):>6s} MiB/step   "
            f"loss {r.loss:.6f} "
            + (f"(|Δ| {r.loss_diff:.1e})" if r.name != FLOOR else "(not the same model)")
        )
    return rows


def _check_losses(model: str, length: int, workers: list[_Worker]) -> None:
    reference = workers[0].losses[0]
    for w in workers[1:]:
        value = w.losses[0]
        diff = abs(value - reference)
        if w.name != FLOOR and not diff <= LOSS_TOLERANCE * max(1.0, abs(reference)):
            raise AssertionError(
                f"{model}, L = {length}: {w.name} computes loss {value!r} at step 0 but "
                f"recurrax computes {reference!r} (|Δ| = {diff:.2e} > "
                f"{LOSS_TOLERANCE:g} × max(1, |loss|)): the two models differ."
            )


def _log_round(model, length, workers, r, repeats, log) -> None:
    ours = workers[0].times[-1]
    parts = []
    for w in workers:
        t = w.times[-1]
        ratio = "" if w is workers[0] or w.name == FLOOR else f" ({t / ours:.2f}×)"
        parts.append(f"{w.name.split(' ')[0].rstrip(':')} {ms(t)} ms{ratio}")
    log(f"  {model} L={length} round {r + 1}/{repeats}: " + ", ".join(parts))


def round_ratios(rows: list[Row], name: str, length: int) -> list[float]:
    """Per round of an interleaved run, `name`'s step time over recurrax's (empty when the
    sides were timed one after another)."""
    by = {r.name: r for r in rows if r.length == length}
    ours, other = by.get(RECURRAX), by.get(name)
    if ours is None or other is None or not (ours.interleaved and other.interleaved):
        return []
    return [b / a for a, b in zip(ours.times, other.times)]


def measure(
    lru_lengths=LRU_LENGTHS,
    copy_lengths=COPY_LENGTHS,
    repeats: int = 3,
    *,
    lru_depth: int = LRU_DEPTH,
    copy_depth: int = COPY_DEPTH,
    interleave: bool | None = None,
    log=None,
) -> list[Row]:
    """`measure_model` for the LRU model at each of `lru_lengths` (with the floor) and the
    minGRU model at each of `copy_lengths`."""
    kw = dict(interleave=interleave, log=log)
    rows = []
    for length in lru_lengths:
        options = dict(depth=lru_depth)
        rows += measure_model("LRU", length, LRU_NAMES, repeats, options=options, **kw)
    for length in copy_lengths:
        options = dict(depth=copy_depth)
        rows += measure_model("minGRU", length, COPY_NAMES, repeats, options=options, **kw)
    return rows


# -- the report -------------------------------------------------------------------------------


def plot(rows: list[Row], path: pathlib.Path) -> pathlib.Path:
    """Step time of every implementation and length, as bars."""
    groups = {}
    for r in rows:
        groups.setdefault(f"{r.model}: {r.name}", {})[f"L = {r.length}"] = 1e3 * r.step
    return bars(
        groups,
        path,
        xlabel="milliseconds per training step (median after warm-up)",
        title="Whole training step: recurrax against direct JAX implementations",
    )


def _table(rows: list[Row]) -> str:
    ours = {r.length: r for r in rows if r.name == RECURRAX}
    table = []
    for r in rows:
        direct = r.name not in (RECURRAX, FLOOR)
        ratio = f"{r.step / ours[r.length].step:.2f}×" if direct else ""
        spread = round_ratios(rows, r.name, r.length) if direct else []
        if spread:
            ratio += f" ({min(spread):.2f}–{max(spread):.2f})"
        table.append(
            [
                r.name,
                str(r.length),
                ms(r.step),
                mib(r.peak_bytes),
                "n/a" if math.isnan(r.faulted) else mib(r.faulted),
                ratio,
                "" if r.name == FLOOR else f"{r.loss:.6f}",
                f"{r.loss_diff:.1e}" if direct else "",
            ]
        )
    return markdown_table(
        [
            "implementation",
            "L",
            "step (ms)",
            "peak MiB",
            "faulted MiB / step",
            "direct / recurrax",
            "loss at step 0",
            "Δloss vs recurrax",
        ],
        table,
    )


def _floor_lines(rows: list[Row]) -> list[str]:
    """What the floor row says: the recurrence's share of the recurrax step, and the most a
    faster recurrence could give against the direct implementation."""
    by = {(r.name, r.length): r for r in rows}
    lines = []
    for length in sorted({r.length for r in rows}):
        ours, direct, floor = (by.get((n, length)) for n in (RECURRAX, DIRECT_LRU, FLOOR))
        if ours is None or direct is None or floor is None:
            continue
        share = max(ours.step - floor.step, 0.0)
        lines.append(
            f"- L = {length}: the recurrence (scan, its backward, the gradient of λ, the "
            f"complex state) costs recurrax {ms(share)} ms of its {ms(ours.step)} ms step "
            f"({100 * share / ours.step:.0f} %); a recurrence costing nothing would make the "
            f"step about {direct.step / floor.step:.2f}× faster than the direct one "
            f"(now {direct.step / ours.step:.2f}×)."
        )
    if not lines:
        return []
    return [
        "The floor row is the same model with the LRU's recurrence removed (x_t = B̄u_t, as if "
        "λ = 0, in real arithmetic): its matmuls, norms, GLU and optimiser alone. It is not an "
        "implementation of the model (its loss is not checked); it bounds what any faster "
        "recurrence can give.",
        "",
        *lines,
        "",
    ]


def _schedule_sentence(rows: list[Row]) -> str:
    """How the sides were timed against each other."""
    in_turn = sorted({(r.model, r.length) for r in rows if not r.interleaved})
    text = (
        "Every implementation runs in a Python process of its own (its own heap and XLA "
        "runtime), where its step is compiled ahead of time"
    )
    if len(in_turn) < len({(r.model, r.length) for r in rows}):
        text += (
            "; the processes take turns in rounds of one step each, the order rotating from "
            f"round to round, after {WARMUP + 1} untimed rounds (the first checks the "
            "losses), so that a machine whose speed drifts from minute to minute slows every "
            "implementation alike. The ratio column "
            "is the ratio of the medians and, in brackets, the lowest and the highest ratio "
            "within one round."
        )
        if not in_turn:
            return text
        text += " Except for "
    else:
        text += ". "
    if in_turn:
        which = ", ".join(f"the {m} model at L = {n}" for m, n in in_turn)
        text += (
            ("" if text.endswith("Except for ") else "For ")
            + f"{which}: the implementations were timed one after another ({WARMUP + 1} untimed "
            "steps, then the timed ones), each process ended before the next began, because "
            "their memory together would not fit; a drift of the machine's speed between "
            "them shifts those ratios."
        )
    return text


def _memory_paragraph(kept: bool) -> str:
    common = (
        "XLA:CPU allocates a compiled step's temporaries (the peak column, less the "
        "outputs) as one block at every call; the faulted column is the memory the process "
        "touched for the first time during a step (minor page faults × 4 KiB, median), "
        "pages the kernel had to supply and zero. "
    )
    if kept:
        return common + (
            "Measured with glibc's allocator keeping freed memory (`GLIBC_TUNABLES="
            + ":".join(KEEP_FREED_MEMORY)
            + "`, which the command sets for itself): each step reuses the pages of the "
            "one before, so the times are those of the computation. With the default "
            "allocator (`--allocator default`) every step of every side maps its block "
            "afresh and faults all of it in again; on a virtual machine that returns freed "
            "memory to its host, as this project's CPU machine does, that costs up to "
            "seconds per GiB and dominates, and varies with, the times (see the "
            "[performance page](../performance.md#memory-on-cpu))."
        )
    return common + (
        "Measured with the default allocator (`--allocator default`): every step maps its "
        "block of temporaries afresh, so each side's time includes faulting its whole peak "
        "memory in again, which on a virtual machine that returns freed memory to its host "
        "can cost more than the computation (see the "
        "[performance page](../performance.md#memory-on-cpu))."
    )


def report(
    rows: list[Row],
    machine: Machine,
    command: str,
    png: str | None = None,
    *,
    lru_depth: int = LRU_DEPTH,
    copy_depth: int = COPY_DEPTH,
    kept: bool = False,
) -> str:
    out = [
        "# Whole training step: recurrax against direct JAX models",
        "",
        f"Measured with `{command}` on {machine.line()}.",
        "",
        "One training step is forward, loss, backward and the optimiser's update "
        f"(`optax.adamw({LEARNING_RATE:g}, weight_decay={WEIGHT_DECAY:g})` on both sides), "
        "compiled with `jax.jit`, each step fed the parameters and states the previous one "
        "returned; medians after warm-up, milliseconds. "
        + _schedule_sentence(rows)
        + " Peak memory is XLA's compiled "
        "figure for the step (temporaries and outputs). float32 parameters, dropout 0, "
        "normalisation in training mode. The recurrax side is a `recurrax.ModelConfig` model "
        "trained by `recurrax.train_step` (what `recurrax.make_train_step` compiles); the "
        "direct side is written in plain JAX as "
        "public LRU and minGRU code is (a parameter pytree, per-example functions vmapped "
        "over the batch), with the recurrax model's parameters copied in. Before timing, "
        "the command checks that every implementation's loss at step 0 on the same batch "
        f"is recurrax's within {LOSS_TOLERANCE:g} × max(1, |loss|) (84 to 126 float32 ulps "
        "for a loss between 2 and 3): the same function evaluated in another order in float32 "
        "(scan tree, summation orders); the tables give each difference. The copying of the "
        "parameters itself is tested in float64 to 1e-12, at step 0 and after one update.",
        "",
        _memory_paragraph(kept),
        "",
    ]
    if png:
        out += [
            image(
                png,
                "training step time of recurrax and the direct implementations "
                "for each model and length, as horizontal bars",
            ),
            "",
        ]
    lru = [r for r in rows if r.model == "LRU"]
    if lru:
        out += [
            "## The LRU paper's model (LRA-like shape)",
            "",
            f"Token embedding (vocabulary {LRU_VOCAB}), {lru_depth} GLU blocks (pre-norm "
            f"BatchNorm, LRU with H = {LRU_WIDTH}, N = {LRU_STATE}, r ∈ [0, 0.99], GELU, "
            f"GLU, skip), mean pooling, a {LRU_CLASSES}-class head; batch {LRU_BATCH}, "
            "cross-entropy on random labels. Direct: complex B̄ = diag(γ) B per time step on "
            "the input promoted to complex, `jax.lax.associative_scan` over (λ broadcast to "
            "(L, N), B̄u), Re(C x) + D ⊙ u per time step, vmapped over the batch.",
            "",
            _table(lru),
            "",
        ]
        out += _floor_lines(lru)
    copy = [r for r in rows if r.model == "minGRU"]
    if copy:
        out += [
            "## minGRU at the minRNN paper's selective-copying shape",
            "",
            f"Vocabulary {COPY_VOCAB}, K = {COPY_TOKENS} tokens to copy (the inputs have "
            f"L + {COPY_TOKENS} steps), {copy_depth} blocks (pre-norm LayerNorm, minGRU "
            f"{COPY_WIDTH} → {COPY_EXPANSION * COPY_WIDTH}, projected back to {COPY_WIDTH}, "
            "skip; no convolution, no MLP), a final LayerNorm, a per-token head over the "
            f"{COPY_VOCAB - 2} data tokens, cross-entropy at the marker positions; batch "
            f"{COPY_BATCH}. The paper's L is 4096; the default here is "
            f"L = {COPY_LENGTHS[0]}, a quarter of the work per step, so that the repeats of "
            "a CPU run fit in minutes (every implementation here costs O(L) work per step; "
            "`--copy-lengths 4096` runs the paper's length). "
            "Direct: one projection to (candidate, gate) per example, then either the "
            "log-space form of the public minGRU code (h_0 = 0: log h = a* + "
            "cumlogsumexp(log z + log g(h̃) − a*), a* = cumsum(−softplus(k))) or "
            "`jax.lax.associative_scan` over (1 − z, z ⊙ g(h̃)), vmapped over the batch. "
            "recurrax's minGRU is its default, linear space.",
            "",
            _table(copy),
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def _forwarded(args) -> list[str]:
    """The command-line arguments that reproduce `args`."""
    argv = ["speed", "model"]
    if args.lengths:
        argv += ["--lengths", *map(str, args.lengths)]
    if args.copy_lengths:
        argv += ["--copy-lengths", *map(str, args.copy_lengths)]
    argv += ["--lru-depth", str(args.lru_depth), "--copy-depth", str(args.copy_depth)]
    argv += ["--repeats", str(args.repeats), "--allocator", args.allocator]
    return argv + ["--out", args.out or ""]  # "" (no file) stays "", not the default


def run(args) -> int:
    if args.allocator == "keep":
        code = rerun_keeping_freed_memory("speed model", _forwarded(args))
        if code is not None:
            return code
    kept = freed_memory_kept()
    lru_lengths = tuple(args.lengths) if args.lengths else LRU_LENGTHS
    copy_lengths = tuple(args.copy_lengths) if args.copy_lengths else COPY_LENGTHS
    machine = Machine.here()
    print(f"Whole-model training step on {machine.line()}")
    print("Allocator: " + ("freed memory kept (GLIBC_TUNABLES)" if kept else "default"))
    print(
        f"LRU model at L {list(lru_lengths)}, minGRU model at L {list(copy_lengths)}, "
        f"{args.repeats} repeats"
    )
    rows = measure(
        lru_lengths,
        copy_lengths,
        args.repeats,
        lru_depth=args.lru_depth,
        copy_depth=args.copy_depth,
    )
    command = (
        "python -m experiments speed model"
        + (f" --lengths {' '.join(map(str, lru_lengths))}" if args.lengths else "")
        + (f" --copy-lengths {' '.join(map(str, copy_lengths))}" if args.copy_lengths else "")
        + (f" --lru-depth {args.lru_depth}" if args.lru_depth != LRU_DEPTH else "")
        + (f" --copy-depth {args.copy_depth}" if args.copy_depth != COPY_DEPTH else "")
        + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
        + (" --allocator default" if args.allocator == "default" else "")
    )
    png = None
    if args.out:
        png = str(pathlib.Path(args.out).with_suffix(".png"))
        plot(rows, pathlib.Path(png))
        print(f"Wrote {png}")
    emit_report(
        report(
            rows,
            machine,
            command,
            png,
            lru_depth=args.lru_depth,
            copy_depth=args.copy_depth,
            kept=kept,
        ),
        args.out,
    )
    return 0


if __name__ == "__main__":  # a timing process of `measure_model`
    _serve(sys.argv[1], int(sys.argv[2]))
