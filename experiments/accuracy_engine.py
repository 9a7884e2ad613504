"""`python -m experiments accuracy engine`: float32 error of every strategy at long length.

Error metric: max|h_float32 − h_float64| / max|h_float64|, against a plain
float64 NumPy loop written from the equation h_t = a_t h_{t-1} + b_t. Two regimes:

- *near unit circle*: time-invariant complex λ with |λ| ∈ [0.999, 0.9999] (long memory);
- *strong decay*: input-dependent real a_t ∈ [0.5, 0.9] (minGRU-like gates).

The log-space solver gets the positive versions (b_t > 0; real |λ| in the first regime) and
is compared with the common public log-space form, cumsum(log a) + logcumsumexp.
"""

import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from ._timing import emit_report, Machine, markdown_table


LENGTH = 65_536
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


def run(args) -> int:
    machine = Machine.here()
    print(f"Engine float32 accuracy at L = {args.length} on {machine.line()}")
    rows = measure(args.length)
    command = "python -m experiments accuracy engine" + (
        f" --length {args.length}" if args.length != LENGTH else ""
    )
    text = (
        "\n".join(
            [
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
        )
        + "\n"
    )
    emit_report(text, args.out)
    return 0
