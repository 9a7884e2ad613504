"""`python -m experiments accuracy engine`: float32 error of every strategy at long length.

Error metric: max|h_float32 − h_float64| / max|h_float64|, against a plain
float64 NumPy loop written from the equation h_t = a_t h_{t-1} + b_t. Two regimes:

- *near unit circle*: time-invariant complex λ with |λ| ∈ [0.999, 0.9999] (long memory);
- *strong decay*: input-dependent real a_t ∈ [0.5, 0.9] (minGRU-like gates).

The log-space solver gets the positive versions (b_t > 0; real |λ| in the first regime) and
is compared with the common public log-space form, cumsum(log a) + logcumsumexp.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from ._figures import image, line_panels
from ._timing import emit_report, Machine, markdown_table


LENGTH = 65_536
# The shorter lengths of the error-against-length figure and table (the main table is at
# `--length`).
CURVE_LENGTHS = (1024, 4096, 16384)
STATE = 64


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The float64 loop, straight from the equation."""
    h = np.zeros(b.shape[1:], np.result_type(a, b, np.float64))
    out = np.empty(b.shape, h.dtype)
    per_step = a.ndim == b.ndim
    for t in range(b.shape[0]):
        h = (a[t] if per_step else a) * h + b[t]
        out[t] = h
    return out


def _problems(length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    radius = rng.uniform(0.999, 0.9999, STATE)
    phase = rng.uniform(0, 2 * np.pi, STATE)
    near = {
        "linear": (radius * np.exp(1j * phase), rng.normal(size=(length, STATE)) * (1 + 0j)),
        "log": (radius, rng.uniform(0.0, 1.0, (length, STATE))),
    }
    gates = rng.uniform(0.5, 0.9, (length, STATE))
    decay = {
        "linear": (gates, rng.normal(size=(length, STATE))),
        "log": (gates, rng.uniform(0.0, 1.0, (length, STATE))),
    }
    return {"near unit circle": near, "strong decay": decay}


def _rel_error(h32, h64) -> float:
    h32 = np.asarray(h32, np.complex128 if np.iscomplexobj(h64) else np.float64)
    return float(np.max(np.abs(h32 - h64)) / np.max(np.abs(h64)))


def heinsen_form(log_a, log_b):
    """The common public log-space form: A = cumsum(log a), log h = A + logcumsumexp(log b − A)."""
    cum = jnp.cumsum(jnp.broadcast_to(log_a, log_b.shape), axis=0)
    return cum + jax.lax.cumlogsumexp(log_b - cum, axis=0)


def measure(length: int = LENGTH, log=print) -> list[list[str]]:
    strategies = {
        "SequentialScan": recurrax.SequentialScan(),
        "ChunkedScan": recurrax.ChunkedScan(),
        "AssociativeScan": recurrax.AssociativeScan(),
        "default (AutoScan)": None,
    }
    rows = []
    for regime, problem in _problems(length).items():
        a, b = problem["linear"]
        h64 = reference(a, b)
        dtype = jnp.complex64 if np.iscomplexobj(b) else jnp.float32
        a32 = jnp.asarray(a, jnp.complex64 if np.iscomplexobj(a) else jnp.float32)
        b32 = jnp.asarray(b, dtype)
        for name, method in strategies.items():
            h = jax.jit(lambda a, b, m=method: recurrax.linear_recurrence(a, b, method=m))(a32, b32)
            rows.append([regime, "linear_recurrence", name, f"{_rel_error(h, h64):.1e}"])
            log("  " + " | ".join(rows[-1]))
        a, b = problem["log"]
        h64 = reference(a, b)
        la, lb = jnp.log(jnp.asarray(a, jnp.float32)), jnp.log(jnp.asarray(b, jnp.float32))
        for name, method in strategies.items():
            lh = jax.jit(lambda a, b, m=method: recurrax.log_linear_recurrence(a, b, method=m))(
                la, lb
            )
            rows.append(
                [regime, "log_linear_recurrence", name, f"{_rel_error(jnp.exp(lh), h64):.1e}"]
            )
            log("  " + " | ".join(rows[-1]))
        lh = jax.jit(heinsen_form)(la, lb)
        rows.append(
            [
                regime,
                "common log-space form",
                "cumsum + logcumsumexp",
                f"{_rel_error(jnp.exp(lh), h64):.1e}",
            ]
        )
        log("  " + " | ".join(rows[-1]))
    return rows


def plot(by_length: dict[int, list[list[str]]], path: pathlib.Path) -> pathlib.Path:
    """Relative error against L (log-log), one panel per regime, a line per solver and
    strategy."""
    panels = []
    for regime in dict.fromkeys(r[0] for rows in by_length.values() for r in rows):
        series: dict[str, list] = {}
        for length, rows in by_length.items():
            for r in rows:
                if r[0] == regime:
                    label = f"{r[1]}: {r[2]}"
                    series.setdefault(label, []).append((length, float(r[3])))
        panels.append((regime, series))
    return line_panels(
        panels,
        path,
        xlabel="sequence length L",
        ylabel="max |h32 − h64| / max |h64|",
        dashed=[label for _, series in panels for label in series if "common" in label],
    )


def length_table(by_length: dict[int, list[list[str]]]) -> str:
    """One row per regime, solver and strategy; one column per length."""
    lengths = sorted(by_length)
    keys = list(dict.fromkeys(tuple(r[:3]) for rows in by_length.values() for r in rows))
    values = {(L, tuple(r[:3])): r[3] for L, rows in by_length.items() for r in rows}
    return markdown_table(
        ["regime", "solver", "strategy"] + [f"L = {L}" for L in lengths],
        [list(k) + [values.get((L, k), "") for L in lengths] for k in keys],
    )


def run(args) -> int:
    machine = Machine.here()
    lengths = sorted({*(L for L in CURVE_LENGTHS if L < args.length), args.length})
    if args.no_curve:
        lengths = [args.length]
    print(f"Engine float32 accuracy at L = {lengths} on {machine.line()}")
    by_length = {}
    for length in lengths:
        print(f"L = {length}")
        by_length[length] = measure(length)
    rows = by_length[args.length]
    command = "python -m experiments accuracy engine" + (
        f" --length {args.length}" if args.length != LENGTH else ""
    ) + (" --no-curve" if args.no_curve else "")
    png = None
    if args.out and len(lengths) > 1:
        png = str(pathlib.Path(args.out).with_suffix(".png"))
        plot(by_length, pathlib.Path(png))
        print(f"Wrote {png}")
    lines = [
        "# Engine accuracy (float32 against a float64 loop)",
        "",
        f"Measured with `{command}` on {machine.line()}.",
        f"L = {args.length}, {STATE} states; error = max|h32 − h64| / max|h64| against a "
        "float64 NumPy loop of h_t = a_t h_{t-1} + b_t. *Near unit circle*: constant λ "
        "with |λ| ∈ [0.999, 0.9999] (complex, or its modulus for log space); *strong "
        "decay*: per-step a_t ∈ [0.5, 0.9]. Log-space rows use b_t > 0.",
        "",
        markdown_table(["regime", "solver", "strategy", "relative error"], rows),
    ]
    if len(lengths) > 1:
        lines += ["", "## Error against length", "",
                  "The same two problems drawn afresh (seed 0) at each length.", ""]
        if png:
            lines += [image(png, "float32 relative error against sequence length, log-log, "
                                 "per regime, for each solver and strategy"), ""]
        lines.append(length_table(by_length))
    emit_report("\n".join(lines) + "\n", args.out)
    return 0
