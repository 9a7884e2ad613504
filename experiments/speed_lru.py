"""`python -m experiments speed lru`: the LRU layer against the common public form, and the
scan against the convolution evaluation of time-invariant layers.

Setting (issue 3): H = 128, N = 256, L = 2048, batch 8, float32 parameters and inputs (complex64
state). Every implementation is a per-example function `jax.vmap`-ed over the batch.

- `recurrax.LRU` with its default strategy (and the other scan strategies);
- `recurrax.LRU.convolve`: the FFT convolution with the kernel K_k = Re(C diag(λ^k) B̄);
- the common public form, written here from the paper's equations: complex B̄ = γ ⊙ B applied
  to the (promoted-to-complex) input per time step, `jax.lax.associative_scan` over
  (λ broadcast to (L, N), B̄u), then Re(C x) + D ⊙ u per time step;

Forward+backward is `jax.grad` of the mean squared output with respect to every parameter.
Outputs are compared with the common form (max abs difference). A second table measures the
strategy choice of the convolution form: scan against FFT convolution for the LRU (a dense
H × H kernel per tap) and for an S4D-style `DiagonalSSM(delta="per_feature")` (one kernel
per feature, a depthwise convolution).
"""

import dataclasses
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp

import recurrax

from ._figures import bars, image
from ._timing import (
    compiled_peak_bytes,
    emit_report,
    freed_memory_kept,
    KEEP_FREED_MEMORY,
    Machine,
    markdown_table,
    median_times_in_rounds,
    mib,
    ms,
    rerun_keeping_freed_memory,
)


BATCH, INPUT, STATE, LENGTH = 8, 128, 256, 2048
CHOICE_LENGTHS = (256, 2048)
BANK_STATE = 64


def common_form(lru: recurrax.LRU, u):
    """The per-example form of public LRU code, from the paper's equations."""
    # Written with explicit casts (the test suite runs with strict dtype promotion); the
    # computation is the public one: complex B̄ and C, the real input promoted to complex.
    cdtype = jnp.complex64 if lru.nu_log.dtype == jnp.float32 else jnp.complex128
    lam = jnp.exp(jax.lax.complex(-jnp.exp(lru.nu_log), jnp.exp(lru.theta_log)))
    b_norm = jax.lax.complex(lru.B_re, lru.B_im) * jnp.exp(lru.gamma_log).astype(cdtype)[:, None]
    c = jax.lax.complex(lru.C_re, lru.C_im)
    u_complex = u.astype(cdtype)
    lam_t = jnp.repeat(lam[None], u.shape[0], axis=0)
    bu = jax.vmap(lambda u_t: b_norm @ u_t)(u_complex)

    def compose(earlier, later):
        return later[0] * earlier[0], later[0] * earlier[1] + later[1]

    _, x = jax.lax.associative_scan(compose, (lam_t, bu))
    return jax.vmap(lambda x_t, u_t: (c @ x_t).real + lru.D * u_t)(x, u)


def _with_method(method):
    def fn(lru, u):
        return eqx.tree_at(lambda m: m.method, lru, method, is_leaf=lambda v: v is None)(u)

    return fn


def implementations() -> dict[str, object]:
    return {
        "recurrax.LRU (default)": lambda lru, u: lru(u),
        "recurrax.LRU, ChunkedScan": _with_method(recurrax.ChunkedScan()),
        "recurrax.LRU, SequentialScan": _with_method(recurrax.SequentialScan()),
        "recurrax.LRU, AssociativeScan": _with_method(recurrax.AssociativeScan()),
        "recurrax.LRU.convolve (FFT)": lambda lru, u: lru.convolve(u),
        "common form": common_form,
    }


def _lru():
    return recurrax.LRU(
        INPUT, STATE, r_min=0.9, r_max=0.999, dtype=jnp.float32, key=jax.random.key(0)
    )


def _inputs(length: int, batch: int = BATCH):
    return jax.random.normal(jax.random.key(1), (batch, length, INPUT), jnp.float32)


@dataclasses.dataclass
class Row:
    name: str
    length: int
    forward: float
    backward: float
    peak_bytes: int | None
    max_diff: float


def _programs(fn, model, u):
    """The compiled forward and forward+backward of `fn` vmapped over the batch, as
    argument-free calls, with the outputs and the backward's peak memory."""
    batched = jax.vmap(fn, in_axes=(None, 0))
    fwd = eqx.filter_jit(batched)

    def loss(model, u):
        return jnp.mean(batched(model, u) ** 2)

    bwd = eqx.filter_jit(eqx.filter_grad(loss))
    params, static = eqx.partition(model, eqx.is_array)
    peak = compiled_peak_bytes(
        jax.jit(lambda p, u: jax.grad(lambda p: loss(eqx.combine(p, static), u))(p)), params, u
    )
    return (lambda: fwd(model, u)), (lambda: bwd(model, u)), fwd(model, u), peak


def _time(fn, model, u, repeats):
    forward, backward, y, peak = _programs(fn, model, u)
    t = median_times_in_rounds({"f": forward, "b": backward}, repeats)
    return y, t["f"], t["b"], peak


def measure(length=LENGTH, repeats: int = 5, names=None, log=print) -> list[Row]:
    """Time every LRU implementation at one length, all of them in rounds of one call each
    (so that a drifting machine slows them alike); outputs compared with the common form."""
    lru, u = _lru(), _inputs(length)
    impls = implementations()
    if names is not None:
        impls = {k: v for k, v in impls.items() if k in names}
    reference = jax.jit(jax.vmap(common_form, in_axes=(None, 0)))(lru, u)
    programs = {name: _programs(fn, lru, u) for name, fn in impls.items()}
    calls = {}
    for name, (forward, backward, _, _) in programs.items():
        calls[name, "forward"], calls[name, "backward"] = forward, backward
    times = median_times_in_rounds(calls, repeats)
    rows = []
    for name, (_, _, y, peak) in programs.items():
        t_f, t_b = times[name, "forward"], times[name, "backward"]
        diff = float(jnp.max(jnp.abs(y - reference)))
        rows.append(Row(name, length, t_f, t_b, peak, diff))
        log(
            f"  {name:32s} forward {ms(t_f):>8s} ms   forward+backward {ms(t_b):>8s} ms   "
            f"peak {mib(peak):>6s} MiB   max|Δy| {diff:.1e}"
        )
    return rows


SCAN, CONVOLUTION = "recurrax.LRU (default)", "recurrax.LRU.convolve (FFT)"


def measure_choice(
    lengths=CHOICE_LENGTHS, repeats: int = 5, log=print, measured: list[Row] = ()
) -> list[tuple]:
    """Scan against convolution for a multi-input LRU and a per-feature (S4D-style) bank.

    `measured`: rows of `measure`; where they hold the LRU's default and FFT calls at one of
    `lengths`, those timings are used rather than timed again (one number per measurement)."""
    reuse = {}
    for length in lengths:
        by = {r.name: r for r in measured if r.length == length}
        if SCAN in by and CONVOLUTION in by:
            reuse[length] = {
                mode: (by[name].forward, by[name].backward)
                for mode, name in (("scan", SCAN), ("convolution", CONVOLUTION))
            }
    layers = {
        f"LRU (H = {INPUT}, N = {STATE}, dense kernel)": _lru(),
        f"DiagonalSSM per feature (H = {INPUT}, N = {BANK_STATE}, depthwise kernel)": (
            recurrax.DiagonalSSM(
                INPUT,
                BANK_STATE,
                init=recurrax.S4DLin(),
                delta="per_feature",
                dtype=jnp.float32,
                key=jax.random.key(2),
            )
        ),
    }
    rows = []
    for label, layer in layers.items():
        for length in lengths:
            if label.startswith("LRU") and length in reuse:
                times = reuse[length]
                rows.append((label, length, times["scan"], times["convolution"]))
                continue
            u = _inputs(length)
            times = {}
            for mode, fn in (
                ("scan", lambda m, u: m(u)),
                ("convolution", lambda m, u: m.convolve(u)),
            ):
                _, t_f, t_b, _ = _time(fn, layer, u, repeats)
                times[mode] = (t_f, t_b)
            rows.append((label, length, times["scan"], times["convolution"]))
            log(
                f"  {label[:40]:40s} L={length:5d}  scan {ms(times['scan'][1]):>8s} ms  "
                f"convolution {ms(times['convolution'][1]):>8s} ms (forward+backward)"
            )
    return rows


def plot(rows, path: pathlib.Path) -> pathlib.Path:
    """Forward and forward+backward time of every implementation, as bars."""
    return bars(
        {r.name: {"forward": 1e3 * r.forward, "forward + backward": 1e3 * r.backward}
         for r in rows},
        path,
        xlabel="milliseconds (median after warm-up)",
        title=f"LRU layer: H = {INPUT}, N = {STATE}, L = {rows[0].length}, batch {BATCH}",
    )


def report(
    rows, choice, machine: Machine, command: str, png: str | None = None, *, kept: bool = False
) -> str:
    by = {r.name: r for r in rows}
    length = rows[0].length
    out = [
        "# LRU speed",
        "",
        f"Measured with `{command}` on {machine.line()}.",
        f"H = {INPUT}, N = {STATE}, L = {length}, batch {BATCH}, float32 parameters and inputs "
        "(complex64 state); per-example layers vmapped over the batch. Forward+backward is the "
        "gradient of the mean squared output with respect to every parameter. Medians after "
        "warm-up, milliseconds, every implementation's forward and forward+backward timed in "
        "rounds of one call each in a random order, so that a machine whose speed drifts "
        "slows them alike; peak memory is XLA's compiled figure for forward+backward. "
        + (
            "glibc's allocator kept freed memory (`GLIBC_TUNABLES="
            + ":".join(KEEP_FREED_MEMORY)
            + "`, set by the command for itself), so that no call faults its temporaries in "
            "afresh (see [memory on CPU](../performance.md#memory-on-cpu))."
            if kept
            else "The allocator as it is (`--allocator default`): a call whose temporaries "
            "are large maps and faults them in afresh (see "
            "[memory on CPU](../performance.md#memory-on-cpu))."
        ),
        "",
    ]
    if png:
        out += [image(png, "forward and forward+backward time of each LRU implementation, "
                           "as horizontal bars"), ""]
    table = []
    for r in rows:
        table.append(
            [r.name, ms(r.forward), ms(r.backward), mib(r.peak_bytes), f"{r.max_diff:.1e}"]
        )
    out.append(
        markdown_table(
            ["implementation", "forward", "forward + backward", "peak MiB", "max |Δy| vs common"],
            table,
        )
    )
    if "recurrax.LRU (default)" in by and "common form" in by:
        d, c = by["recurrax.LRU (default)"], by["common form"]
        out += [
            "",
            f"Default against the common form: **{c.forward / d.forward:.2f}× faster forward, "
            f"{c.backward / d.backward:.2f}× faster forward+backward**.",
        ]
    if choice:
        out += [
            "",
            "## Scan or convolution?",
            "",
            "Forward+backward (forward in brackets), milliseconds, batch "
            f"{BATCH}. The convolution costs $O(L \\log L)$ per input-output pair of the "
            "kernel: H² pairs for the LRU's dense kernel, H for a per-feature bank.",
        ]
        if any(label.startswith("LRU") and n == length for label, n, _, _ in choice):
            out[-1] += (
                f" The LRU at L = {length} is the same layer and input as the table above: "
                "its scan and convolution are that table's default and FFT rows, not timed "
                "twice."
            )
        out.append("")
        choice_rows = []
        for label, length, scan, conv in choice:
            faster = "scan" if scan[1] <= conv[1] else "convolution"
            choice_rows.append(
                [
                    label,
                    str(length),
                    f"{ms(scan[1])} ({ms(scan[0])})",
                    f"{ms(conv[1])} ({ms(conv[0])})",
                    faster,
                ]
            )
        out.append(markdown_table(["layer", "L", "scan", "convolution", "faster"], choice_rows))
    return "\n".join(out) + "\n"


def _forwarded(args) -> list[str]:
    """The command-line arguments that reproduce `args`."""
    argv = ["speed", "lru", "--length", str(args.length), "--repeats", str(args.repeats)]
    argv += ["--no-choice"] if args.no_choice else []
    return argv + ["--allocator", args.allocator, "--out", args.out or ""]


def run(args) -> int:
    if args.allocator == "keep":
        code = rerun_keeping_freed_memory("speed lru", _forwarded(args))
        if code is not None:
            return code
    kept = freed_memory_kept()
    machine = Machine.here()
    print(f"LRU speed on {machine.line()}")
    print("Allocator: " + ("freed memory kept (GLIBC_TUNABLES)" if kept else "default"))
    print(f"H = {INPUT}, N = {STATE}, L = {args.length}, batch {BATCH}, {args.repeats} repeats")
    rows = measure(args.length, args.repeats)
    choice = [] if args.no_choice else measure_choice(repeats=args.repeats, measured=rows)
    command = (
        "python -m experiments speed lru"
        + (f" --length {args.length}" if args.length != LENGTH else "")
        + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
        + (" --no-choice" if args.no_choice else "")
        + (" --allocator default" if args.allocator == "default" else "")
    )
    png = None
    if args.out:
        png = str(pathlib.Path(args.out).with_suffix(".png"))
        plot(rows, pathlib.Path(png))
        print(f"Wrote {png}")
    emit_report(report(rows, choice, machine, command, png, kept=kept), args.out)
    return 0
