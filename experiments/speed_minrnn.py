"""`python -m experiments speed minrnn`: the minRNN paper's training-cost comparison on this
machine.

One training step (forward + mean-squared loss + backward with respect to every parameter) of
a single recurrent layer, batch 16, input width = hidden width = 128, against the sequence
length L ∈ {64, 128, ..., 4096}, for GRU, LSTM, minGRU, minLSTM and the LRU (N = 128), each a
per-example layer `jax.vmap`-ed over the batch and compiled with `jax.jit`. Also timed: the
GRU written the common way, `eqx.nn.GRUCell` under `jax.lax.scan` with the input projection
inside the loop, and minGRU/minLSTM evaluated in log space.

The paper's figures (T4 GPU, batch 64) are speed-ups of 175× (minGRU/GRU) and 235×
(minLSTM/LSTM) at L = 512, and 1324× / 1361× at L = 4096. On a CPU the sequential baselines
are not starved of parallel hardware, so the ratios are far smaller; the target here is
minGRU at least 2× faster than the GRU baseline at L = 4096.
"""

import dataclasses
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp

import recurrax

from ._timing import compiled_peak_bytes, emit_report, Machine, markdown_table, median_time, mib, ms


BATCH, WIDTH, LRU_STATE = 16, 128, 128
LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)
PAPER = {512: (175, 235), 4096: (1324, 1361)}


class _EqxGRU(eqx.Module):
    """The common JAX GRU: `eqx.nn.GRUCell` stepped by `lax.scan` (projection inside)."""

    cell: eqx.nn.GRUCell

    def __call__(self, x):
        def body(h, x_t):
            h = self.cell(x_t, h)
            return h, h

        return jax.lax.scan(body, jnp.zeros(self.cell.hidden_size, x.dtype), x)[1]


def models() -> dict[str, object]:
    key = jax.random.key(0)
    f32 = jnp.float32
    return {
        "GRU": recurrax.GRU(WIDTH, WIDTH, dtype=f32, key=key),
        "GRU (eqx.nn.GRUCell + lax.scan)": _EqxGRU(
            eqx.nn.GRUCell(WIDTH, WIDTH, dtype=f32, key=key)
        ),
        "LSTM": recurrax.LSTM(WIDTH, WIDTH, dtype=f32, key=key),
        "minGRU": recurrax.MinGRU(WIDTH, WIDTH, dtype=f32, key=key),
        "minGRU (log space)": recurrax.MinGRU(WIDTH, WIDTH, log_space=True, dtype=f32, key=key),
        "minLSTM": recurrax.MinLSTM(WIDTH, WIDTH, dtype=f32, key=key),
        "minLSTM (log space)": recurrax.MinLSTM(WIDTH, WIDTH, log_space=True, dtype=f32, key=key),
        f"LRU (N = {LRU_STATE})": recurrax.LRU(WIDTH, LRU_STATE, dtype=f32, key=key),
    }


@dataclasses.dataclass
class Row:
    name: str
    length: int
    step: float
    peak_bytes: int | None


def _step_fn(model):
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, x, target):
        y = jax.vmap(eqx.combine(params, static))(x)
        return jnp.mean((y - target) ** 2)

    return jax.jit(jax.value_and_grad(loss)), params


def measure(lengths=LENGTHS, repeats: int = 3, names=None, log=print) -> list[Row]:
    rows = []
    chosen = models()
    if names is not None:
        chosen = {k: v for k, v in chosen.items() if k in names}
    for length in lengths:
        kx, kt = jax.random.split(jax.random.key(length))
        x = jax.random.normal(kx, (BATCH, length, WIDTH), jnp.float32)
        target = jax.random.normal(kt, (BATCH, length, WIDTH), jnp.float32)
        for name, model in chosen.items():
            step, params = _step_fn(model)
            t = median_time(lambda: step(params, x, target), repeats)
            peak = compiled_peak_bytes(step, params, x, target)
            rows.append(Row(name, length, t, peak))
            log(f"  L={length:5d}  {name:34s} step {ms(t):>9s} ms   peak {mib(peak):>6s} MiB")
    return rows


def plot(rows: list[Row], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in dict.fromkeys(r.name for r in rows):
        pts = sorted((r.length, r.step * 1e3) for r in rows if r.name == name)
        style = "--" if "min" not in name and "LRU" not in name else "-"
        ax.plot(*zip(*pts), style, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("training step (ms): forward + loss + backward")
    ax.set_title(f"One recurrent layer, batch {BATCH}, width {WIDTH} ({jax.default_backend()})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def report(rows: list[Row], machine: Machine, command: str, png: str | None) -> str:
    by = {(r.name, r.length): r for r in rows}
    names = list(dict.fromkeys(r.name for r in rows))
    lengths = sorted({r.length for r in rows})
    out = [
        "# minGRU and minLSTM training speed",
        "",
        f"Measured with `{command}` on {machine.line()}.",
        f"One layer, batch {BATCH}, input and hidden width {WIDTH}, float32; a training step is "
        "forward + mean-squared loss + backward with respect to every parameter, jit-compiled. "
        "Medians after warm-up, milliseconds.",
        "",
    ]
    if png:
        out += [f"![training step time against length]({pathlib.Path(png).name})", ""]
    header = ["model"] + [f"L = {L}" for L in lengths]
    out.append(markdown_table(header, [[n] + [ms(by[n, L].step) for L in lengths] for n in names]))
    pairs = [("minGRU", "GRU", 0), ("minLSTM", "LSTM", 1)]
    if all((a, lengths[0]) in by and (b, lengths[0]) in by for a, b, _ in pairs):
        out += ["", "## Speed-up over the sequential baselines", ""]
        ratio_rows = []
        for L in lengths:
            row = [str(L)]
            for fast, slow, idx in pairs:
                row.append(f"{by[slow, L].step / by[fast, L].step:.2f}×")
            paper = PAPER.get(L)
            row.append(f"{paper[0]}× / {paper[1]}×" if paper else "")
            ratio_rows.append(row)
        out.append(
            markdown_table(
                ["L", "minGRU vs GRU", "minLSTM vs LSTM", "paper (T4 GPU): minGRU / minLSTM"],
                ratio_rows,
            )
        )
        eqx_name = "GRU (eqx.nn.GRUCell + lax.scan)"
        if (eqx_name, lengths[-1]) in by:
            L = lengths[-1]
            out += [
                "",
                f"At L = {L}, minGRU is {by[eqx_name, L].step / by['minGRU', L].step:.2f}× "
                f"faster than the common `eqx.nn.GRUCell` + `lax.scan` GRU.",
            ]
    out += ["", "## Peak memory of a training step (MiB, XLA's compiled figure)", ""]
    out.append(
        markdown_table(header, [[n] + [mib(by[n, L].peak_bytes) for L in lengths] for n in names])
    )
    return "\n".join(out) + "\n"


def run(args) -> int:
    lengths = tuple(args.lengths) if args.lengths else LENGTHS
    machine = Machine.here()
    print(f"minRNN training speed on {machine.line()}")
    print(f"batch {BATCH}, width {WIDTH}, lengths {list(lengths)}, {args.repeats} repeats")
    rows = measure(lengths, args.repeats)
    png = None
    if args.out:
        png = str(pathlib.Path(args.out).with_suffix(".png"))
        plot(rows, pathlib.Path(png))
        print(f"Wrote {png}")
    command = (
        "python -m experiments speed minrnn"
        + (f" --lengths {' '.join(map(str, lengths))}" if args.lengths else "")
        + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    )
    emit_report(report(rows, machine, command, png), args.out)
    return 0
