"""`python -m experiments speed engine`: the linear-recurrence engine against the common form.

Setting (issue 2): batch 8, state N = 256, complex64, time-invariant λ (an LRU's), lengths
L ∈ {256, 1024, 4096, 16384}. Every implementation is written per example and `jax.vmap`-ed
over batch-major data `(batch, length, state)`, as a user would call it.

- each strategy of `recurrax.linear_recurrence`, and the default (`AutoScan`);
- the common public form: a per-example `jax.lax.associative_scan` over (λ broadcast to
  `(L, N)`, b), vmapped over the batch, differentiated by JAX's own autodiff;
- a bandwidth floor: one elementwise pass reading `b` and writing an array of the same size.

Forward+backward is `jax.grad` of `sum(|h|^2)` with respect to λ and b. Times are medians
over repeats after a warm-up, all in one process; the peak memory of forward+backward is
XLA's compiled figure (temporaries plus outputs).
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp

import recurrax

from ._figures import image, line_panels
from ._timing import compiled_peak_bytes, emit_report, Machine, markdown_table, median_time, mib, ms


BATCH = 8
STATE = 256
LENGTHS = (256, 1024, 4096, 16384)


def common_form(lam, b):
    """The form found in public LRU code: `associative_scan` over (λ broadcast, b)."""

    def compose(earlier, later):
        return later[0] * earlier[0], later[0] * earlier[1] + later[1]

    lam_t = jnp.broadcast_to(lam, b.shape)
    return jax.lax.associative_scan(compose, (lam_t, b))[1]


def _engine(method):
    def fn(lam, b):
        return recurrax.linear_recurrence(lam, b, method=method)

    return fn


def implementations() -> dict[str, object]:
    return {
        "default (AutoScan)": _engine(None),
        "ChunkedScan": _engine(recurrax.ChunkedScan()),
        "SequentialScan": _engine(recurrax.SequentialScan()),
        "AssociativeScan": _engine(recurrax.AssociativeScan()),
        "common form": common_form,
    }


def _inputs(length: int):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    radius = jax.random.uniform(k1, (STATE,), jnp.float32, minval=0.9, maxval=0.999)
    phase = jax.random.uniform(k2, (STATE,), jnp.float32, maxval=2 * jnp.pi)
    lam = jax.lax.complex(radius * jnp.cos(phase), radius * jnp.sin(phase))
    parts = jax.random.normal(k3, (2, BATCH, length, STATE), jnp.float32)
    b = jax.lax.complex(parts[0], parts[1])
    return lam, b


@dataclasses.dataclass
class Row:
    name: str
    length: int
    forward: float
    backward: float
    peak_bytes: int | None


def measure(lengths=LENGTHS, repeats: int = 5, names=None, log=print) -> tuple[list[Row], dict]:
    """Time every implementation at every length; return the rows and the floors."""
    rows, floors = [], {}
    impls = implementations()
    if names is not None:
        impls = {k: v for k, v in impls.items() if k in names}
    for length in lengths:
        lam, b = _inputs(length)
        floor = jax.jit(lambda x: x * jnp.complex64(1.0001))
        floors[length] = median_time(lambda: floor(b), repeats)
        for name, fn in impls.items():
            batched = jax.vmap(fn, in_axes=(None, 0))
            fwd = jax.jit(batched)

            def loss(lam, b, batched=batched):
                h = batched(lam, b)
                return jnp.sum(h.real**2 + h.imag**2)

            bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
            t_f = median_time(lambda: fwd(lam, b), repeats)
            t_b = median_time(lambda: bwd(lam, b), repeats)
            peak = compiled_peak_bytes(bwd, lam, b)
            rows.append(Row(name, length, t_f, t_b, peak))
            log(
                f"  L={length:6d}  {name:20s} forward {ms(t_f):>8s} ms   "
                f"forward+backward {ms(t_b):>8s} ms   peak {mib(peak):>6s} MiB"
            )
    return rows, floors


def plot(rows: list[Row], floors: dict, path: pathlib.Path) -> pathlib.Path:
    """Forward and forward+backward time against L (log-log): every implementation, and the
    one-pass memory floor on the forward panel."""
    names = list(dict.fromkeys(r.name for r in rows))
    forward = {n: [(r.length, 1e3 * r.forward) for r in rows if r.name == n] for n in names}
    forward["memory floor (one pass)"] = [(L, 1e3 * t) for L, t in floors.items()]
    backward = {n: [(r.length, 1e3 * r.backward) for r in rows if r.name == n] for n in names}
    return line_panels(
        [("forward", forward), ("forward + backward", backward)],
        path,
        xlabel="sequence length L",
        ylabel="milliseconds",
        dashed=("common form", "memory floor (one pass)"),
    )


def report(
    rows: list[Row], floors: dict, machine: Machine, command: str, png: str | None = None
) -> str:
    by = {(r.name, r.length): r for r in rows}
    names = list(dict.fromkeys(r.name for r in rows))
    lengths = sorted({r.length for r in rows})
    out = [
        "# Engine speed",
        "",
        f"Measured with `{command}` on {machine.line()}.",
        f"Batch {BATCH}, N = {STATE}, complex64, time-invariant λ; per-example functions "
        "vmapped over batch-major data. Medians after warm-up, milliseconds.",
        "",
    ]
    if png:
        out += [
            image(png, "forward and forward+backward time against sequence length, log-log, "
                  "for each strategy, the common form and the memory floor"),
            "",
        ]
    out += [
        "## Forward",
        "",
    ]
    header = ["implementation"] + [f"L = {n}" for n in lengths]
    out.append(
        markdown_table(
            header,
            [[n] + [ms(by[n, L].forward) for L in lengths] for n in names]
            + [["memory floor (one pass)"] + [ms(floors[L]) for L in lengths]],
        )
    )
    out += ["", "## Forward + backward", ""]
    out.append(
        markdown_table(header, [[n] + [ms(by[n, L].backward) for L in lengths] for n in names])
    )
    if ("common form", lengths[0]) in by and ("default (AutoScan)", lengths[0]) in by:
        out += ["", "## Default against the common form and the floor", ""]
        ratio_rows = []
        for L in lengths:
            d, c = by["default (AutoScan)", L], by["common form", L]
            ratio_rows.append(
                [
                    f"{L}",
                    f"{c.forward / d.forward:.2f}×",
                    f"{c.backward / d.backward:.2f}×",
                    f"{d.forward / floors[L]:.1f}×",
                ]
            )
        out.append(
            markdown_table(
                [
                    "L",
                    "speed-up, forward",
                    "speed-up, forward+backward",
                    "default forward / memory floor",
                ],
                ratio_rows,
            )
        )
    out += ["", "## Peak memory of forward + backward (MiB, XLA's compiled figure)", ""]
    out.append(
        markdown_table(header, [[n] + [mib(by[n, L].peak_bytes) for L in lengths] for n in names])
    )
    return "\n".join(out) + "\n"


def run(args) -> int:
    lengths = tuple(args.lengths) if args.lengths else LENGTHS
    machine = Machine.here()
    print(f"Engine speed on {machine.line()}")
    print(f"batch {BATCH}, N = {STATE}, complex64, lengths {list(lengths)}, {args.repeats} repeats")
    rows, floors = measure(lengths, args.repeats)
    command = (
        "python -m experiments speed engine"
        + (f" --lengths {' '.join(map(str, lengths))}" if args.lengths else "")
        + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
    )
    png = None
    if args.out:
        png = str(pathlib.Path(args.out).with_suffix(".png"))
        plot(rows, floors, pathlib.Path(png))
        print(f"Wrote {png}")
    text = report(rows, floors, machine, command, png)
    emit_report(text, args.out)
    return 0
