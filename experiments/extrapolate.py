"""Length extrapolation of a trained run, streamed in chunks:
`python -m experiments extrapolate RUN_FOLDER --length 64 --length 1048576`.

The trained model (the run's last checkpoint, inference mode) reads each test sequence in
chunks of `--chunk` steps through `SequenceModel.scan`, carrying the recurrent states (and the
convolution buffers) from chunk to chunk, so memory grows with the chunk, not with the
sequence: lengths up to $2^{20}$ and beyond run on a CPU. Chunked streaming gives the
one-call outputs (tested), so the accuracy is that of the whole sequence read at once.

Tasks read at the last position (`pooling="last"`: induction heads, state tracking) are
scored there; results go to `extrapolation.json` and `extrapolation.md` in the run folder.
"""

import json
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import train


@eqx.filter_jit
def _run_chunk(model, state, h, x):
    """`(h, x_chunk) -> (h, output at the chunk's last step)` for a batch; compiled once per
    model and chunk shape."""

    def one(h, x):
        h, y = model.scan(h, x, state=state)
        return h, y[-1]

    return jax.vmap(one)(h, x)


def streamed_last_outputs(model, state, inputs: np.ndarray, chunk: int) -> np.ndarray:
    """The output of `model` (in inference mode; `state`: its `eqx.nn.State`, e.g. BatchNorm's
    running statistics, or `None`) at the last position of each row of `inputs`
    (`(batch, length)` tokens or `(batch, length, features)`), reading `chunk` steps at a time.

    Every row must be unpadded (full length). Returns `(batch, output_size)` float32."""
    if chunk < 1:
        raise ValueError(f"`chunk` must be at least 1, got chunk={chunk!r}.")
    batch, length = inputs.shape[:2]
    h0 = model.init_state()
    h = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), h0)
    y = None
    for start in range(0, length, chunk):
        x = jnp.asarray(inputs[:, start : start + chunk])
        h, y = _run_chunk(model, state, h, x)
    return np.asarray(jnp.asarray(y, jnp.float32))


def extrapolate(out: pathlib.Path, lengths: list[int], *, examples: int, chunk: int,
                log=print) -> list[dict]:
    """Accuracy of the run in `out` at each length (on the task's test stream)."""
    out = pathlib.Path(out)
    run_file = out / "run.json"
    if not run_file.exists():
        raise ValueError(f"no run.json in {out}: not a run folder (RUN_FOLDER={str(out)!r}).")
    config = train.RunConfig.from_dict(json.loads(run_file.read_text()))
    task, _, _, _ = train.build(config, initialise=False)
    if task.pooling != "last" or task.kind != "classification":
        raise ValueError(
            f"extrapolate scores tasks read at the last position (pooling 'last', "
            f"classification); task {config.task!r} has pooling {task.pooling!r} and kind "
            f"{task.kind!r}."
        )
    model, state = train.trained_model(config, out)
    model = eqx.nn.inference_mode(model)
    rows = []
    for length in lengths:
        test = task.test_set(config.seed, examples, length=length)
        if not np.all(test.mask):
            raise ValueError(f"task {config.task!r} pads its test rows; extrapolate needs "
                             f"full-length rows (length={length}).")
        started = time.perf_counter()
        logits = streamed_last_outputs(model, state, test.inputs, min(chunk, length))
        seconds = time.perf_counter() - started
        predicted = np.argmax(logits, axis=-1)
        accuracy = float(np.mean(predicted == np.asarray(test.targets)))
        rows.append(dict(length=length, examples=examples, accuracy=accuracy,
                         seconds=seconds, tokens_per_second=examples * length / seconds))
        log(f"length {length:>9d}: accuracy {100 * accuracy:5.1f} % "
            f"({examples} examples, {seconds:.1f} s)")
    return rows


def write(out: pathlib.Path, rows: list[dict], command: list[str]) -> pathlib.Path:
    """`extrapolation.json` and `extrapolation.md` in the run folder (merged with earlier
    lengths)."""
    from .report import environment

    out = pathlib.Path(out)
    path = out / "extrapolation.json"
    earlier = json.loads(path.read_text()) if path.exists() else {"rows": [], "commands": []}
    known = {r["length"]: r for r in earlier["rows"]}
    known.update({r["length"]: r for r in rows})
    merged = [known[k] for k in sorted(known)]
    env = environment(command)
    commands = [c for c in earlier.get("commands", []) if c != env["command"]] + [env["command"]]
    data = {"rows": merged, "commands": commands, "environment": env}
    path.write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"# Length extrapolation of {out.name}",
        "",
        "Repeat with: " + "; ".join(f"`{c}`" for c in commands) + f" (device: {env['device']})",
        "",
        "| length | accuracy | examples | seconds |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['length']} | {100 * r['accuracy']:.1f} % | {r['examples']} | "
              f"{r['seconds']:.1f} |" for r in merged]
    md = out / "extrapolation.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def run(args, argv) -> int:
    lengths = args.length or [64, 256, 1024, 4096]
    try:
        for length in lengths:
            if length < 1:
                raise ValueError(f"--length must be positive, got --length {length}.")
        if args.examples < 1:
            raise ValueError(f"--examples must be positive, got --examples {args.examples}.")
        rows = extrapolate(pathlib.Path(args.run), lengths, examples=args.examples,
                           chunk=args.chunk)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {write(pathlib.Path(args.run), rows, argv)}")
    return 0
