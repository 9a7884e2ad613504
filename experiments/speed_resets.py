"""`python -m experiments speed resets`: what segment resets cost the engine.

A reset turns the step at a segment start into the pair (0, a h0 + b), so a time-invariant
coefficient (an LRU's λ) becomes per step wherever resets are given, and a per-step one
(minGRU's 1 - z) only gets a select. This measures `linear_recurrence` with and without
`resets=` for both kinds of coefficient, every strategy, forward and forward+backward
(`jax.grad` of `sum(|h|^2)` with respect to the coefficient and b), batch 8, state 256,
complex64 for the time-invariant case and float32 for the per-step one. Times are medians
of `--repeats` calls after a warm-up, with and without resets timed in turn in one process,
so the ratio compares like with like.
"""

import statistics
import time

import jax
import jax.numpy as jnp

import recurrax

from ._timing import emit_report, Machine, markdown_table, ms


BATCH = 8
STATE = 256
LENGTHS = (1024, 4096)
STRATEGIES = {
    "default (AutoScan)": None,
    "ChunkedScan": recurrax.ChunkedScan(),
    "SequentialScan": recurrax.SequentialScan(),
    "AssociativeScan": recurrax.AssociativeScan(),
}


def _inputs(length: int, invariant: bool):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    if invariant:
        radius = jax.random.uniform(k1, (STATE,), minval=0.5, maxval=0.99)
        phase = jax.random.uniform(k2, (STATE,), maxval=6.28)
        a = (radius * jnp.exp(1j * phase)).astype(jnp.complex64)
        b = jax.random.normal(k3, (BATCH, length, STATE), jnp.complex64)
    else:
        a = jax.random.uniform(k1, (BATCH, length, STATE), minval=0.5, maxval=0.99)
        b = jax.random.normal(k3, (BATCH, length, STATE))
    # About one segment start per 100 steps (their number does not change the work).
    resets = jax.random.uniform(k4, (BATCH, length)) < 0.01
    return a, b, resets


def _functions(method, invariant: bool, with_resets: bool):
    in_a = None if invariant else 0

    def solve(a, b, r):
        return recurrax.linear_recurrence(a, b, method=method, resets=r if with_resets else None)

    forward = jax.jit(jax.vmap(solve, in_axes=(in_a, 0, 0)))

    def loss(a, b, r):
        return jnp.sum(jnp.abs(forward(a, b, r)) ** 2)

    return forward, jax.jit(jax.grad(loss, argnums=(0, 1)))


def _paired_medians(calls, repeats: int) -> list[float]:
    """Median wall time of each call, timed in turn within every repeat (after a warm-up
    call of each), so that a change in the machine's load affects all of them alike."""
    for call in calls:
        jax.block_until_ready(call())
    times = [[] for _ in calls]
    for _ in range(repeats):
        for call, record in zip(calls, times):
            start = time.perf_counter()
            jax.block_until_ready(call())
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def run(args) -> int:
    lengths = tuple(args.lengths or LENGTHS)
    rows = []
    for invariant in (True, False):
        kind = "time-invariant λ (complex64)" if invariant else "per-step a (float32)"
        for length in lengths:
            a, b, resets = _inputs(length, invariant)
            for name, method in STRATEGIES.items():
                fns = [_functions(method, invariant, flag) for flag in (False, True)]
                fwd = _paired_medians([lambda f=f: f[0](a, b, resets) for f in fns], args.repeats)
                bwd = _paired_medians([lambda f=f: f[1](a, b, resets) for f in fns], args.repeats)
                plain, reset = (fwd[0], bwd[0]), (fwd[1], bwd[1])
                rows.append(
                    [
                        kind,
                        str(length),
                        name,
                        ms(plain[0]),
                        ms(reset[0]),
                        f"{reset[0] / plain[0]:.2f}",
                        ms(plain[1]),
                        ms(reset[1]),
                        f"{reset[1] / plain[1]:.2f}",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    header = [
        "coefficient",
        "L",
        "strategy",
        "fwd ms",
        "fwd ms, resets",
        "ratio",
        "fwd+bwd ms",
        "fwd+bwd ms, resets",
        "ratio",
    ]
    text = "\n".join(
        [
            "# The cost of resets in the engine",
            "",
            "Written by `python -m experiments speed resets"
            + (f" --lengths {' '.join(map(str, lengths))}" if args.lengths else "")
            + f" --repeats {args.repeats}`. Batch {BATCH}, state {STATE}; medians of "
            f"{args.repeats} calls after a warm-up; the ratio is resets over no resets in "
            "the same run.",
            "",
            Machine.here().line(),
            "",
            markdown_table(header, rows),
            "",
        ]
    )
    emit_report(text, args.out)
    return 0
