"""`python -m experiments speed nonlinear`: a nonlinear GRU evaluated in parallel over time by
Newton's method (DEER, quasi-DEER) against the sequential GRU and the linear recurrences
(minGRU, LRU), on this machine.

1. Training comparison on sequential digits (length 64, one pixel per step): the same
   classifier (linear encoder → one recurrent layer → mean pooling → linear head) with a GRU
   evaluated sequentially, the same GRU evaluated by quasi-DEER, and a minGRU; test accuracy
   and wall time side by side.
2. Speed: forward + mean-squared loss + backward with respect to every parameter of one
   layer, batch 16, width 128 (DEER: width 16, dense Jacobians), against the length, for an
   untrained GRU on Gaussian inputs and for the GRU trained in step 1 on its own encoder's
   features of concatenated test digits; with the Newton iteration counts of the forward
   solve and the float32 distance to the sequential states.
"""

import dataclasses
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import recurrax

from ._timing import emit_report, Machine, markdown_table, median_time, ms
from .tasks import make_task


BATCH, WIDTH, DEER_WIDTH = 16, 128, 16
LENGTHS = (256, 1024, 4096, 16384)
# The trained GRU's quasi-DEER solve needs 50-100 iterations, and more memory per iteration
# as L grows: one forward+backward took 47 s at L = 4096 on a 2-core CPU, and a measurement at
# 16384 had not ended after 75 minutes. By default it is timed up to this length.
TRAINED_MAX_LENGTH = 4096
F32 = jnp.float32


class _Classifier(eqx.Module):
    encoder: eqx.nn.Linear
    mixer: eqx.Module
    head: eqx.nn.Linear

    def features(self, pixels):
        return jax.vmap(self.encoder)(pixels)

    def __call__(self, pixels):
        y = self.mixer(self.features(pixels))
        return self.head(jnp.mean(y, axis=0))


def _classifier(kind: str, key) -> _Classifier:
    k1, k2, k3 = jax.random.split(key, 3)
    mixers = {
        "GRU, sequential": lambda: recurrax.GRU(WIDTH, WIDTH, dtype=F32, key=k2),
        "GRU, quasi-DEER": lambda: recurrax.GRU(
            WIDTH, WIDTH, solver=recurrax.QuasiDEER(), dtype=F32, key=k2
        ),
        "minGRU": lambda: recurrax.MinGRU(WIDTH, WIDTH, dtype=F32, key=k2),
    }
    return _Classifier(
        eqx.nn.Linear(1, WIDTH, dtype=F32, key=k1),
        mixers[kind](),
        eqx.nn.Linear(WIDTH, 10, dtype=F32, key=k3),
    )


@dataclasses.dataclass
class TrainRow:
    name: str
    steps: int
    accuracy: float
    wall: float
    step_time: float
    iterations: str


def train(kind: str, steps: int, log=print) -> tuple[TrainRow, _Classifier]:
    """Train the classifier of `kind` on digits (under JAX's standard dtype promotion, as a
    user runs it: optax's bias correction mixes a float with the integer step count)."""
    with jax.numpy_dtype_promotion("standard"):
        return _train(kind, steps, log)


def _train(kind: str, steps: int, log=print) -> tuple[TrainRow, _Classifier]:
    task = make_task("digits")
    model = _classifier(kind, jax.random.key(0))
    schedule = recurrax.warmup_cosine_schedule(3e-3, steps, warmup_fraction=0.1, floor=0.0)
    optim = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = optim.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, inputs, targets):
        def loss(model):
            logits = jax.vmap(model)(inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    times = []
    start = time.perf_counter()
    for i in range(steps):
        batch = task.batch(0, i, 32)
        t0 = time.perf_counter()
        model, opt_state, value = step(model, opt_state, batch.inputs, batch.targets)
        jax.block_until_ready(value)
        times.append(time.perf_counter() - t0)
        if (i + 1) % max(steps // 5, 1) == 0:
            log(f"  {kind:16s} step {i + 1:5d}  loss {float(value):.3f}")
    wall = time.perf_counter() - start
    test = task.test_set(0, 300)
    logits = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(model, test.inputs)
    accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == test.targets))
    iterations = ""
    if isinstance(model.mixer, recurrax.GRU) and not isinstance(
        model.mixer.solver, recurrax.Sequential
    ):
        feats = jax.vmap(model.features)(jnp.asarray(test.inputs))
        stats = eqx.filter_jit(lambda m, x: jax.vmap(m.solver_stats)(x))(model.mixer, feats)
        its = np.asarray(stats["iterations"])
        iterations = f"{its.mean():.1f} (max {its.max()})"
    row = TrainRow(kind, steps, accuracy, wall, float(np.median(times[1:])), iterations)
    log(
        f"  {kind:16s} accuracy {accuracy:.3f}  wall {wall:.1f} s  step {ms(row.step_time)} ms"
        + (f"  iterations {iterations}" if iterations else "")
    )
    return row, model


@dataclasses.dataclass
class SpeedRow:
    name: str
    length: int
    step: float
    iterations: str = ""
    error: str = ""


def _step_fn(layer):
    params, static = eqx.partition(layer, eqx.is_array)

    def loss(params, x, target):
        y = jax.vmap(eqx.combine(params, static))(x)
        return jnp.mean((y - target) ** 2)

    return jax.jit(jax.value_and_grad(loss)), params


def _trained_inputs(trained: _Classifier, length: int) -> jax.Array:
    """The trained encoder's features of test digits concatenated to `length` pixels."""
    test = make_task("digits").test_set(0, 300).inputs  # (300, 64, 1)
    rng = np.random.default_rng(length)
    picks = rng.integers(0, test.shape[0], (BATCH, -(-length // 64)))
    pixels = test[picks].reshape(BATCH, -1, 1)[:, :length]
    return jax.vmap(trained.features)(jnp.asarray(pixels))


def _with_solver(gru: recurrax.GRU, solver) -> recurrax.GRU:
    """The same GRU (same arrays) evaluated by another solver."""
    fresh = recurrax.GRU(
        gru.input_size, gru.hidden_size, solver=solver, dtype=F32, key=jax.random.key(0)
    )
    arrays = lambda m: (m.weight_ih, m.weight_hh, m.bias, m.bias_n)  # noqa: E731
    return eqx.tree_at(arrays, fresh, arrays(gru))


def _layers(key, trained: _Classifier | None):
    quasi = recurrax.QuasiDEER()
    gru = recurrax.GRU(WIDTH, WIDTH, dtype=F32, key=key)
    small = recurrax.GRU(DEER_WIDTH, DEER_WIDTH, dtype=F32, key=key)
    out = {
        "GRU, sequential": (gru, None),
        "GRU, quasi-DEER": (_with_solver(gru, quasi), gru),
        f"GRU N={DEER_WIDTH}, sequential": (small, None),
        f"GRU N={DEER_WIDTH}, DEER": (
            _with_solver(small, recurrax.DEER()),
            small,
        ),
        "minGRU": (recurrax.MinGRU(WIDTH, WIDTH, dtype=F32, key=key), None),
        f"LRU (N = {WIDTH})": (recurrax.LRU(WIDTH, WIDTH, dtype=F32, key=key), None),
    }
    if trained is not None:
        out["trained GRU, quasi-DEER"] = (
            _with_solver(trained.mixer, quasi),
            trained.mixer,
        )
    return out


def measure(
    lengths, repeats, trained, names=None, log=print, trained_max_length=TRAINED_MAX_LENGTH
) -> list[SpeedRow]:
    rows = []
    layers = _layers(jax.random.key(1), trained)
    if names is not None:
        layers = {k: v for k, v in layers.items() if k in names}
    for length in lengths:
        kx, kt = jax.random.split(jax.random.key(length))
        x_wide = jax.random.normal(kx, (BATCH, length, WIDTH), F32)
        x_small = x_wide[..., :DEER_WIDTH]
        x_trained = None if trained is None else _trained_inputs(trained, length)
        for name, (layer, reference) in layers.items():
            x = x_small if f"N={DEER_WIDTH}" in name else x_wide
            if name.startswith("trained"):
                if length > trained_max_length:
                    continue
                x = x_trained
            width = x.shape[-1]
            target = jax.random.normal(kt, (BATCH, length, width), F32)
            step, params = _step_fn(layer)
            t = median_time(lambda: step(params, x, target), repeats)
            row = SpeedRow(name, length, t)
            if reference is not None:
                stats = jax.jit(jax.vmap(layer.solver_stats))(x)
                its = np.asarray(stats["iterations"])
                if not bool(np.all(stats["converged"])):  # pragma: no cover - would raise first
                    raise RuntimeError(f"{name} did not converge at L={length}")
                row.iterations = f"{its.mean():.1f} (max {its.max()})"
                y = jax.jit(jax.vmap(layer))(x)
                y_ref = jax.jit(jax.vmap(reference))(x)
                row.error = f"{float(jnp.max(jnp.abs(y - y_ref))):.1e}"
            rows.append(row)
            log(
                f"  L={length:5d}  {name:28s} step {ms(t):>9s} ms  iterations "
                f"{row.iterations:>14s}  max|Δh| {row.error}"
            )
    return rows


def plot(rows: list[SpeedRow], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in dict.fromkeys(r.name for r in rows):
        pts = sorted((r.length, r.step * 1e3) for r in rows if r.name == name)
        style = "--" if "sequential" in name else "-"
        ax.plot(*zip(*pts), style, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward + backward (ms)")
    ax.set_title(f"One recurrent layer, batch {BATCH} ({jax.default_backend()})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def report(train_rows, rows, machine, command, png) -> str:
    by = {(r.name, r.length): r for r in rows}
    names = list(dict.fromkeys(r.name for r in rows))
    lengths = sorted({r.length for r in rows})
    out = [
        "# Nonlinear GRU in parallel over time: speed and training",
        "",
        f"Measured with `{command}` on {machine.line()}.",
        "",
    ]
    if train_rows:
        out += [
            "## Training on sequential digits",
            "",
            f"Linear encoder → one recurrent layer (width {WIDTH}) → mean pooling → linear "
            f"head; {train_rows[0].steps} AdamW steps of batch 32 (peak learning rate 3e-3, "
            "warm-up and cosine decay, gradient clipping 1), float32, seed 0; accuracy on the "
            "300 test images. Wall time is the whole training loop including compilation; "
            "the step time is the median step after the first. Iterations: quasi-DEER's "
            "forward Newton iterations on the test set after training.",
            "",
            markdown_table(
                ["layer", "test accuracy", "wall time (s)", "step (ms)", "iterations"],
                [
                    [
                        r.name,
                        f"{100 * r.accuracy:.1f} %",
                        f"{r.wall:.1f}",
                        ms(r.step_time) if np.isfinite(r.step_time) else "—",
                        r.iterations or "—",
                    ]
                    for r in train_rows
                ],
            ),
            "",
        ]
    out += [
        "## Forward + backward against length",
        "",
        f"One layer, batch {BATCH}, width {WIDTH} (the DEER rows and their sequential "
        f"reference: width {DEER_WIDTH}), float32; forward + mean-squared loss + backward with "
        "respect to every parameter, jit-compiled; medians after warm-up, milliseconds. "
        "Untrained layers read Gaussian inputs; the trained GRU reads its trained encoder's "
        "features of test digits concatenated to length L. Solvers at their defaults "
        "(tolerance 1e-5 in float32, `max_steps` = L). The trained GRU is timed up to "
        f"L = {max((r.length for r in rows if r.name.startswith('trained')), default=0)} "
        "(`--trained-max-length`; longer solves take over an hour each on this CPU).",
        "",
    ]
    if png:
        out += [f"![forward and backward time against length]({pathlib.Path(png).name})", ""]
    header = ["layer"] + [f"L = {L}" for L in lengths]
    out.append(
        markdown_table(
            header,
            [[n] + [ms(by[n, L].step) if (n, L) in by else "" for L in lengths] for n in names],
        )
    )
    newton = [n for n in names if any(by.get((n, L)) and by[n, L].iterations for L in lengths)]
    if newton:
        out += [
            "",
            "Newton iterations of the forward solve (mean over the batch, and the maximum, "
            "which a batched solve runs for), and the largest float32 difference from the "
            "sequential states of the same layer:",
            "",
            markdown_table(
                header,
                [
                    [n]
                    + [
                        f"{by[n, L].iterations}; {by[n, L].error}" if (n, L) in by else ""
                        for L in lengths
                    ]
                    for n in newton
                ],
            ),
        ]
        ratio = []
        pairs = [
            ("GRU, quasi-DEER", "GRU, sequential"),
            ("trained GRU, quasi-DEER", "GRU, sequential"),
            (f"GRU N={DEER_WIDTH}, DEER", f"GRU N={DEER_WIDTH}, sequential"),
            ("minGRU", "GRU, sequential"),
        ]
        for fast, slow in pairs:
            if all((fast, L) in by and (slow, L) in by for L in lengths):
                ratio.append(
                    [f"{fast} / {slow}"]
                    + [f"{by[fast, L].step / by[slow, L].step:.2f}" for L in lengths]
                )
        if ratio:
            out += [
                "",
                "Time relative to the sequential GRU (below 1: faster):",
                "",
                markdown_table(["ratio"] + header[1:], ratio),
            ]
    return "\n".join(out) + "\n"


def run(args) -> int:
    lengths = tuple(args.lengths) if args.lengths else LENGTHS
    machine = Machine.here()
    print(f"Nonlinear GRU speed on {machine.line()}")
    train_rows, trained = [], None
    if args.train_steps > 0:
        print(f"training on sequential digits for {args.train_steps} steps")
        for kind in ("GRU, sequential", "GRU, quasi-DEER", "minGRU"):
            row, model = train(kind, args.train_steps)
            train_rows.append(row)
            if kind == "GRU, sequential":
                trained = model
    print(f"batch {BATCH}, width {WIDTH}, lengths {list(lengths)}, {args.repeats} repeats")
    rows = measure(lengths, args.repeats, trained, trained_max_length=args.trained_max_length)
    png = None
    if args.out:
        png = str(pathlib.Path(args.out).with_suffix(".png"))
        plot(rows, pathlib.Path(png))
        print(f"Wrote {png}")
    command = (
        "python -m experiments speed nonlinear"
        + (f" --lengths {' '.join(map(str, lengths))}" if args.lengths else "")
        + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
        + (f" --train-steps {args.train_steps}" if args.train_steps != 600 else "")
        + (
            f" --trained-max-length {args.trained_max_length}"
            if args.trained_max_length != TRAINED_MAX_LENGTH
            else ""
        )
    )
    emit_report(report(train_rows, rows, machine, command, png), args.out)
    return 0
