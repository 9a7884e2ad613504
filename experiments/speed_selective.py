"""`python -m experiments speed selective`: where a training step of the selective SSM goes,
against the RG-LRU in the same Hawk-block model.

Both models are built exactly as the `input-dependent` campaign builds them on selective
copying (`experiments/campaigns.py`: the campaign's command line through the `run`
command's configuration, so the same preset, block, width, depth, convolution, batch and
optimiser); only the mixer differs. Timed, each jit-compiled and waited for
(`jax.block_until_ready`), medians after a warm-up with the two models timed in turn
within every repeat (so a load on the machine falls on both alike):

- the whole training step (forward, loss, backward, the run's AdamW update), as
  `recurrax.make_train_step` compiles it for the run;
- forward + loss + backward (the gradient with respect to every parameter), and forward +
  loss alone;
- the mixer alone on the batch of its inputs (`jax.vmap` over the examples), whole and in
  its three parts: the coefficients of the recurrence (for the selective SSM, the step
  Δ_t, the discretisation exp(Δ_t Λ) and B̄_t, and B̄_t u_t; for the RG-LRU its gates,
  a_t and the normalised input), the recurrence itself (the engine call on those
  coefficients) and the readout (Re(C x_t) + D u_t; the RG-LRU's is the identity). Each
  part forward, and forward + backward (the vector-Jacobian product with a fixed random
  cotangent, with respect to the part's parameters and inputs).
"""

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from . import train
from ._timing import emit_report, Machine, markdown_table, ms


TASK = "selective_copying"
CAMPAIGN = "input-dependent"
# (label, model name in the campaign); the first is the reference of the ratio column.
MODELS = (("RG-LRU", "rglru"), ("selective SSM", "selective-ssm"))
COMPONENTS = (
    "training step (forward, loss, backward, AdamW)",
    "forward + loss + backward",
    "forward + loss",
    "mixer: forward",
    "mixer: forward + backward",
    "coefficients (Δ_t, exp(Δ_t Λ), B̄_t u_t; RG-LRU: gates, a_t): forward",
    "coefficients: forward + backward",
    "recurrence (engine): forward",
    "recurrence (engine): forward + backward",
    "readout (Re(C x_t) + D u_t; RG-LRU: identity): forward",
    "readout: forward + backward",
)


def campaign_command(model: str) -> list[str]:
    """The `run` command line of the campaign's selective-copying run of `model`."""
    from .campaigns import CAMPAIGNS

    for command in CAMPAIGNS[CAMPAIGN]:
        if command[0] == TASK and command[command.index("--model") + 1] == model:
            if model != "lru" or "block=hawk" not in command:
                return list(command)
    raise KeyError(f"no {TASK} run of {model!r} in the {CAMPAIGN!r} campaign")


def configure(model: str, overrides: list[str], parse_run) -> train.RunConfig:
    """The run configuration of the campaign's run of `model`, with `overrides` (further
    `run` options, e.g. `--batch-size 4`) appended to its command line; `parse_run` turns a
    `run` command line into its configuration (the command line's own,
    `experiments.cli.run_config`, passed in so that this module does not import the CLI)."""
    return parse_run([*campaign_command(model), *overrides])


class Parts:
    """Everything one model needs timed: the compiled functions with their arguments."""

    def __init__(self, config: train.RunConfig):
        task, _, model, state = train.build(config)
        self.config, self.model = config, model
        loss_fn = train.make_loss(task.kind)
        optimizer = train._optimizer(config, model)
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        batch = train._batch_arrays(task.batch(config.seed, 0, config.batch_size))
        key = jax.random.key(0)
        step = recurrax.make_train_step(optimizer, loss_fn)
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(params, batch):
            return loss_fn(eqx.combine(params, static), state, batch, None)[0]

        grad = jax.jit(jax.value_and_grad(loss))
        forward = jax.jit(loss)
        self.calls = {
            COMPONENTS[0]: lambda: step(model, state, opt_state, batch, key)[3]["loss"],
            COMPONENTS[1]: lambda: grad(params, batch),
            COMPONENTS[2]: lambda: forward(params, batch),
        }
        mixer = model.blocks[0].mixer
        self.mixer = mixer
        length = self.length = int(batch[0].shape[1])
        shape = (config.batch_size, length, mixer.input_size)
        dtype = jnp.dtype(config.model_config["param_dtype"])
        x = jax.random.normal(jax.random.key(1), shape, dtype)
        self.calls.update(_mixer_calls(mixer, x))


def _cotangent(shapes, key):
    """A fixed random cotangent shaped like `shapes` (complex where they are)."""
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, s in zip(keys, leaves):
        if jnp.issubdtype(s.dtype, jnp.complexfloating):
            parts = jax.random.normal(k, (2, *s.shape), jnp.finfo(s.dtype).dtype)
            out.append(jax.lax.complex(parts[0], parts[1]))
        else:
            out.append(jax.random.normal(k, s.shape, s.dtype))
    return jax.tree.unflatten(tree, out)


def _pair(fn, *args, key):
    """`(forward, forward + backward)` calls of `fn(*args)`, both compiled; the backward is
    the vector-Jacobian product with a fixed random cotangent, with respect to every arg."""
    ct = _cotangent(jax.eval_shape(fn, *args), key)
    forward = jax.jit(fn)
    both = jax.jit(lambda args, ct: jax.vjp(fn, *args)[1](ct))
    return (lambda: forward(*args)), (lambda: both(args, ct))


def _mixer_calls(mixer, x) -> dict:
    """The mixer's parts on the batch `x` `(batch, length, input)`, as `COMPONENTS` names."""
    params, static = eqx.partition(mixer, eqx.is_inexact_array)
    h0 = mixer.init_state()

    def whole(params, x):
        return jax.vmap(eqx.combine(params, static))(x)

    def coefficients(params, x):
        return jax.vmap(eqx.combine(params, static).coefficients)(x)

    def recurrence(a, b):
        return jax.vmap(lambda a, b: mixer._solve(a, b, h0))(a, b)

    def readout(params, h, x):
        return jax.vmap(eqx.combine(params, static).readout)(h, x)

    a, b = jax.jit(coefficients)(params, x)
    h = jax.jit(recurrence)(a, b)
    keys = jax.random.split(jax.random.key(2), 4)
    calls = {}
    for (fwd_name, bwd_name), fn, args, key in zip(
        [(COMPONENTS[i], COMPONENTS[i + 1]) for i in (3, 5, 7, 9)],
        (whole, coefficients, recurrence, readout),
        ((params, x), (params, x), (a, b), (params, h, x)),
        keys,
    ):
        calls[fwd_name], calls[bwd_name] = _pair(fn, *args, key=key)
    return calls


def interleaved_medians(calls: list, repeats: int) -> list[float]:
    """Median wall time of each call in seconds, the calls timed in turn within every
    repeat after one warm-up call of each (which also compiles)."""
    for call in calls:
        jax.block_until_ready(call())
    times = [[] for _ in calls]
    for _ in range(repeats):
        for call, record in zip(calls, times):
            start = time.perf_counter()
            jax.block_until_ready(call())
            record.append(time.perf_counter() - start)
    return [float(np.median(record)) for record in times]


@dataclasses.dataclass
class Result:
    """Medians in seconds, `times[component] = [one per model]`, and the shapes."""

    times: dict[str, list[float]]
    batch: int
    length: int
    width: int
    depth: int
    state_size: int


def overrides(length=None, batch_size=None, d_model=None, depth=None) -> list[str]:
    """The `run` options that change the campaign's shape (none: the campaign's own)."""
    out = []
    if length is not None:
        out += ["--task-set", f"length={length}"]
    if batch_size is not None:
        out += ["--batch-size", str(batch_size)]
    if d_model is not None:
        out += ["--d-model", str(d_model)]
    if depth is not None:
        out += ["--depth", str(depth)]
    return out


def measure(parse_run, options: list[str] = (), repeats: int = 5, log=print) -> Result:
    """Build both models with the campaign's command plus `options` (`parse_run`: as for
    `configure`) and time every part."""
    parts = [Parts(configure(model, list(options), parse_run)) for _, model in MODELS]
    times = {}
    for component in COMPONENTS:
        times[component] = interleaved_medians([p.calls[component] for p in parts], repeats)
        first, second = times[component]
        log(
            f"  {component[:50]:50s} {MODELS[0][0]} {ms(first):>8s} ms   {MODELS[1][0]} "
            f"{ms(second):>8s} ms   ratio {second / first:.1f}"
        )
    config, ssm = parts[1].config, parts[1].mixer
    return Result(
        times,
        batch=config.batch_size,
        length=parts[1].length,
        width=ssm.input_size,
        depth=config.model_config["depth"],
        state_size=ssm.state_size,
    )


def report(result: Result, machine: Machine, command: str) -> str:
    h, n, b, length = result.width, result.state_size, result.batch, result.length
    rows = []
    for component in COMPONENTS:
        first, second = result.times[component]
        rows.append([component, ms(first), ms(second), f"{second / first:.1f}×"])
    mixers = [result.depth * result.times[COMPONENTS[4]][i] for i in range(2)]
    steps = result.times[COMPONENTS[0]]
    per_call = b * length
    out = [
        "# The selective SSM's training step against the RG-LRU's",
        "",
        f"Measured with `{command}` on {machine.line()}.",
        "",
        f"Both models as the `{CAMPAIGN}` campaign trains them on {TASK.replace('_', ' ')}: "
        f"the Hawk block, d_model {h}, {result.depth} blocks, a width-4 causal convolution "
        f"before the mixer, batch {b} of {length} steps, float32; only the mixer differs "
        f"(the RG-LRU, or `SelectiveSSM` with N = {n} complex states per feature, "
        "conjugate-symmetric, zero-order hold). Medians of the repeats after a warm-up, "
        "milliseconds, every function jit-compiled and waited for; the two models are timed "
        "in turn within each repeat. The mixer rows run one block's mixer alone on a batch "
        "of random inputs (vmapped over the examples); 'forward + backward' is the "
        "vector-Jacobian product with a fixed random cotangent, with respect to the part's "
        "parameters and inputs.",
        "",
        markdown_table(["component", f"{MODELS[0][0]} ms", f"{MODELS[1][0]} ms", "ratio"], rows),
        "",
        f"{result.depth} × the mixer's forward + backward: {ms(mixers[0])} ms for the "
        f"RG-LRU (its training step: {ms(steps[0])} ms), {ms(mixers[1])} ms for the selective "
        f"SSM (its training step: {ms(steps[1])} ms). Separately compiled parts, so only a "
        "guide to the share of the step: the rest of the model (projections, convolution, "
        "norms, head, AdamW) is the same in both.",
        "",
        "## The arithmetic",
        "",
        f"Per example and step, the RG-LRU's state is {h} real numbers (one per feature); "
        f"the selective SSM's is {h} × {n} = {h * n} complex numbers, {2 * h * n} reals: "
        f"{2 * n}× as many. Because Δ_t depends on the input, the transition exp(Δ_t Λ) is "
        "per step and per state, so each layer call materialises the coefficients a_t and "
        f"b_t as ({per_call} × {h * n}) complex arrays, "
        f"{2 * 8 * per_call * h * n / 2**20:.0f} MiB against the RG-LRU's "
        f"{2 * 4 * per_call * h / 2**20:.1f} MiB ({2 * n}× the bytes), and the states and "
        "the readout's input are as large. A complex multiply-add costs 4 multiplications "
        f"and 4 additions against 1 and 1, so the recurrence does about {8 * n}× the "
        "floating-point work of the RG-LRU's; the discretisation evaluates exp, expm1, sin "
        "and cos per state where the RG-LRU's gates evaluate their functions per feature.",
        "",
    ]
    return "\n".join(out)


def run(args, parse_run) -> int:
    machine = Machine.here()
    options = overrides(args.length, args.batch_size, args.d_model, args.depth)
    print(f"Selective SSM against RG-LRU, per part of a training step, on {machine.line()}")
    result = measure(parse_run, options, args.repeats)
    command = "python -m experiments speed selective" + "".join(
        f" --{flag} {value}"
        for flag, value in (
            ("length", args.length),
            ("batch-size", args.batch_size),
            ("d-model", args.d_model),
            ("depth", args.depth),
        )
        if value is not None
    )
    if args.repeats != 5:
        command += f" --repeats {args.repeats}"
    emit_report(report(result, machine, command), args.out)
    return 0
