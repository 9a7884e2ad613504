"""`python -m experiments speed packing`: ListOps training throughput, padded against packed.

The same examples (the first `--batches` batches of the training stream, batch 32 of the
preset) go through one compiled training step (forward, backward, optimiser update) either
as padded rows (each example alone in a row as wide as the longest allowed) or packed
(`experiments.packing`: whole examples fill the rows, resets at their starts, pooling per
example). Throughput counts the examples' own tokens only, so padding is not counted as
work done. A pass over all batches is timed `--repeats` times after a warm-up pass (which
also compiles every row count) and the median is kept, padded and packed in one process.
"""

import time

import equinox as eqx
import jax
import numpy as np

import recurrax

from . import packing, presets, train
from ._timing import emit_report, Machine, markdown_table


MODELS = ("lru", "mingru")


def _pass(step_fn, model, state, opt_state, batches, key):
    out = None
    for batch in batches:
        out = step_fn(model, state, opt_state, batch, key)
    jax.block_until_ready(out[3])


def _median_passes(runs, model, state, opt_state, key, repeats):
    """Median time of a pass over each run's batches, the runs timed in turn within every
    repeat (after a warm-up pass of each, which compiles every shape)."""
    for step_fn, batches in runs:
        _pass(step_fn, model, state, opt_state, batches, key)
    times = [[] for _ in runs]
    for _ in range(repeats):
        for (step_fn, batches), record in zip(runs, times):
            start = time.perf_counter()
            _pass(step_fn, model, state, opt_state, batches, key)
            record.append(time.perf_counter() - start)
    return [float(np.median(record)) for record in times]


def run(args) -> int:
    rows = []
    for model_name in args.models or MODELS:
        settings = presets.run_settings("listops", model_name, args.preset)
        config = train.RunConfig(**settings)
        task, _, model, state = train.build(config)
        optimizer = train._optimizer(config, model)
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        slots = packing.slots_per_row(task)
        raw = [task.batch(config.seed, s, config.batch_size) for s in range(args.batches)]
        padded = [train._batch_arrays(b) for b in raw]
        packed_batches = [packing.pack(b, slots) for b in raw]
        packed = [packing.packed_arrays(p) for p in packed_batches]
        tokens = int(sum(b.mask.sum() for b in raw))
        padded_slots = int(sum(b.mask.size for b in raw))
        packed_slots = int(sum(p.mask.size for p in packed_batches))
        key = jax.random.key(0)
        padded_step = recurrax.make_train_step(optimizer, train.make_loss(task.kind))
        packed_step = recurrax.make_train_step(optimizer, packing.make_packed_loss(slots))
        t_pad, t_pack = _median_passes(
            [(padded_step, padded), (packed_step, packed)],
            model,
            state,
            opt_state,
            key,
            args.repeats,
        )
        rows.append(
            [
                model_name,
                str(args.batches * config.batch_size),
                f"{tokens / padded_slots:.0%}",
                f"{tokens / packed_slots:.0%}",
                f"{sum(len(b.mask) for b in raw) / args.batches:.0f}",
                f"{sum(len(p.mask) for p in packed_batches) / args.batches:.1f}",
                f"{tokens / t_pad:,.0f}",
                f"{tokens / t_pack:,.0f}",
                f"{t_pad / t_pack:.2f}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    header = [
        "model",
        "examples",
        "tokens used, padded",
        "tokens used, packed",
        "rows per batch, padded",
        "rows per batch, packed",
        "tokens/s padded",
        "tokens/s packed",
        "speed-up",
    ]
    command = (
        f"python -m experiments speed packing --preset {args.preset} --batches {args.batches} "
        f"--repeats {args.repeats}"
    )
    text = "\n".join(
        [
            "# Packed sequences: ListOps training throughput",
            "",
            f"Written by `{command}`. One training step (forward, backward, AdamW update) "
            f"per batch of {config.batch_size} examples of the {args.preset} preset, the same "
            "examples padded (one per row) or packed (whole examples filling rows, resets at "
            "their starts, pooled per example; rows rounded up to a multiple of 4). "
            "Tokens/s counts the examples' own tokens; 'tokens used' is the share of the "
            "computed positions that hold one. Medians of "
            f"{args.repeats} passes over all batches after a warm-up pass, padded and packed "
            "timed in turn in one process.",
            "",
            Machine.here().line(),
            "",
            markdown_table(header, rows),
            "",
        ]
    )
    emit_report(text, args.out)
    return 0
