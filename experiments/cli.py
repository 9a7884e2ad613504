"""The command line, `python -m experiments`: `list`, `run TASK --model MODEL`,
`campaign NAME`, `extrapolate RUN_FOLDER`, `report`,
`speed {engine,lru,minrnn,model,nonlinear,resets,packing,selective}`, `accuracy {engine,minrnn}`."""

import argparse
import hashlib
import json
import pathlib
import sys

import jax

import recurrax

from . import extrapolate, presets, processes as processes_, report as reporting, train, variants
from .campaigns import CAMPAIGNS, EXTRAPOLATIONS
from .tasks import make_task, TASKS


def _options(pairs: list[str], flag: str) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag} expects NAME=VALUE, got {pair!r}.")
        name, value = pair.split("=", 1)
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            options[name] = value  # a bare string
    return options


def list_command(args, argv) -> int:
    try:
        recurrax.load_plugins(getattr(args, "plugin", []), option="--plugin")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("tasks (kind, inputs, pooling, baseline of the small preset):")
    for name in sorted(TASKS):
        task = make_task(name)
        try:
            base = task.baseline()
        except ImportError as error:  # an optional data package (the `experiments` extra)
            print(f"  {name:18s} unavailable: {error}")
            continue
        print(
            f"  {name:18s} {task.kind:14s} {task.input_kind:8s} {task.pooling:5s} "
            f"{base.metric} {base.value:.3g} ({base.description})"
        )
    print("models (the registered mixers; --plugin FILE adds the user's):")
    for name, spec in recurrax.registered_mixers().items():
        print(f"  {name:18s} {spec.block:5s} {spec.summary}")
    print("variants:")
    for name, text in variants.VARIANTS.items():
        print(f"  {name:18s} {text}")
    print("presets: small (minutes on a 2-core CPU), paper (the papers' settings; a GPU)")
    return 0


def run_folder(config: train.RunConfig, model_set: list[str]) -> pathlib.Path:
    """The default run folder: runs/TASK-MODEL[-VARIANT][-OPTIONvalue...][-mDIGEST]-dDEPTH-sSEED
    (`model_set`: the raw --model-set pairs, named by a short digest)."""
    name = f"{config.task}-{config.model}" + (f"-{config.variant}" if config.variant else "")
    name += "".join(f"-{k}{json.dumps(v)}" for k, v in sorted(config.task_options.items()))
    if model_set:  # model options: a short digest keeps the folder name readable
        digest = hashlib.sha1(json.dumps(sorted(model_set)).encode()).hexdigest()[:6]
        name += f"-m{digest}"
    if config.init_from:
        name += "-from-" + pathlib.Path(config.init_from).name[:40]
    if config.packing:
        name += "-packed"
    name += f"-d{config.model_config['depth']}-s{config.seed}"
    return pathlib.Path("runs") / name


def configure(args) -> tuple[train.RunConfig, pathlib.Path]:
    """The run configuration and run folder of parsed `run` arguments.

    **Raises:** `ValueError` naming the bad option."""
    model_options = _options(args.model_set, "--model-set")
    if args.depth is not None:
        model_options["depth"] = args.depth
    if args.d_model is not None:
        model_options["d_model"] = args.d_model
    by_preset, others = train.run_options(args)
    others["plugins"] = [_plugin_entry(p) for p in others.get("plugins", [])]
    recurrax.load_plugins(others["plugins"], option="--plugin")
    train.check_model(args.model)
    if others.get("variant") is not None and others["variant"] not in variants.VARIANTS:
        raise ValueError(
            f"--variant must be one of {sorted(variants.VARIANTS)}, got {others['variant']!r}."
        )
    settings = presets.run_settings(
        args.task,
        args.model,
        args.preset,
        task_options=_options(args.task_set, "--task-set"),
        model_options=model_options,
        **by_preset,
    )
    config = train.RunConfig(**settings, **others)
    config.check()
    _check_eval_lengths(config, getattr(args, "eval_length", []))
    return config, pathlib.Path(args.out or run_folder(config, args.model_set))


def run_config(argv: list[str]) -> train.RunConfig:
    """The run configuration of a `run` command line (`argv`: the words after `run`)."""
    return configure(parser().parse_args(["run", *argv]))[0]


def _plugin_entry(plugin: str) -> str:
    """A `--plugin` as recorded in `run.json`: a file by its absolute path (a resumed or
    loaded run finds it from any folder), a module by its name."""
    if plugin.endswith(".py") or "/" in plugin:
        return str(pathlib.Path(plugin).resolve())
    return plugin


def _check_eval_lengths(config: train.RunConfig, lengths: list) -> None:
    """Refuse an `--eval-length` the task cannot generate (before any training)."""
    if not lengths:
        return
    task = make_task(config.task, preset=config.preset, **config.task_options)
    for length in lengths:
        if length < 1:
            raise ValueError(f"--eval-length must be a positive integer, got {length}.")
        try:
            task.batch(config.seed, 0, 1, split="test", length=length)
        except ValueError as error:
            raise ValueError(
                f"--eval-length {length}: the task {config.task!r} cannot be evaluated at "
                f"this length ({error})."
            ) from None


def is_done(config: train.RunConfig, out: pathlib.Path) -> bool:
    """Whether the run folder holds this run, finished: a `summary.json` of this
    configuration and a readable checkpoint of its last step (a stale summary of another
    or an unfinished run does not count)."""
    try:
        summary = json.loads((out / "summary.json").read_text())
        same = train.RunConfig.from_dict(summary["config"]) == config
    except (OSError, ValueError, TypeError, KeyError):
        return False
    manager = recurrax.CheckpointManager(out / "checkpoints")
    return same and manager.latest() == manager.path(config.steps)


def run(args, argv, *, skip_done: bool = False) -> int:
    """`python -m experiments run`: every option is checked (exit 2, one line naming it)
    before any training and before anything is written. With `--processes N` (N > 1) the
    checked command runs as N processes (`experiments.processes`); with `--distributed` or
    `--coordinator`, this process is one of several: all train, process 0 writes and
    prints."""
    resume, overwrite = args.resume, getattr(args, "overwrite", False)
    try:
        config, out = configure(args)
        processes_.check(args, config.batch_size)
        if resume and overwrite:
            raise ValueError("--resume and --overwrite contradict each other; give one of them.")
        train.check_out(out, "--out" if args.out else "the run folder")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if skip_done and is_done(config, out):
        print(f"already done: {out} (use --force to rerun)")
        return 0
    found = train.existing_run(out)
    if found and not (resume or overwrite):
        print(
            f"error: --out: {out} already holds a run ({', '.join(found)}); rerun with --resume "
            f"to continue it, or with --overwrite to delete it and start again.",
            file=sys.stderr,
        )
        return 2
    if args.processes > 1:
        return processes_.launch(argv, args.processes)
    leader = True
    if processes_.joins(args):
        try:
            processes_.join(args)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        leader = jax.process_index() == 0
    say = print if leader else (lambda *_, **__: None)
    try:
        task, _, model_before, _ = train.build(config)
    except ValueError as error:  # e.g. --init-from a run of another model
        print(f"error: {error}", file=sys.stderr)
        return 2
    count = jax.process_count() if processes_.joins(args) else 1
    say(
        f"{config.task} ({task.kind}), model {config.model}"
        + (f" [{config.variant}]" if config.variant else "")
        + f", depth {config.model_config['depth']}, d_model {config.model_config['d_model']}, "
        f"{config.steps} steps of batch {config.batch_size}"
        + (f" over {count} processes" if count > 1 else "")
        + f"; run folder {out}"
    )
    try:
        final = train.train(config, out, resume=resume, overwrite=overwrite)
    except train.NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    final = {k: v for k, v in final.items() if k.startswith("test_") or k == "loss"}
    model_after = train.trained_model(config, out)
    for length in args.eval_length:  # every process: the evaluation is split over them
        model, state = model_after
        loss_fn = train.make_loss(task.kind)
        extra = train.evaluate(model, state, task, config, loss_fn, length=length)
        final.update({f"test_{k}@{length}": v for k, v in extra.items()})
    if not leader:
        return 0
    path = reporting.write_run_report(
        out, config, task, model_before, model_after[0], final,
        command=processes_.strip_launch(argv),
    )
    shown = {k: round(v, 4) for k, v in final.items() if k.startswith("test_")}
    print(f"final: {shown}")
    print(f"report: {path}")
    return 0


def campaign(args, argv) -> int:
    names = list(CAMPAIGNS) if args.name == "all" else [args.name]
    for name in names:
        if name not in CAMPAIGNS:
            print(f"error: unknown campaign {name!r}; known: {sorted(CAMPAIGNS)}", file=sys.stderr)
            return 2
    status = 0
    for name in names:
        for command in CAMPAIGNS[name]:
            run_args = parser().parse_args(["run", *command])
            # Finished runs are skipped, unfinished ones resumed; --force starts them again.
            run_args.resume, run_args.overwrite = not args.force, args.force
            print(f"== python -m experiments run {' '.join(command)}", flush=True)
            code = run(run_args, ["run", *command], skip_done=not args.force)
            status = status or code
            for options in EXTRAPOLATIONS.get(name, []) if code == 0 else []:
                code = _extrapolate_run(configure(run_args)[1], options, force=args.force)
                status = status or code
    runs = sorted(p for p in pathlib.Path("runs").glob("*") if (p / "summary.json").exists())
    print(reporting.write_results(runs, args.out))
    return status


def _extrapolate_run(out: pathlib.Path, options: list[str], *, force: bool) -> int:
    """`python -m experiments extrapolate OUT OPTIONS...`, unless already done."""
    command = ["extrapolate", str(out), *options]
    ex_args = parser().parse_args(command)
    done = out / "extrapolation.json"
    if done.exists() and not force:
        known = {r["length"] for r in json.loads(done.read_text())["rows"]}
        if set(ex_args.length) <= known:
            print(f"already done: {done} (use --force to rerun)")
            return 0
    print(f"== python -m experiments {' '.join(command)}", flush=True)
    return extrapolate.run(ex_args, command)


def report(args, argv) -> int:
    runs = [pathlib.Path(r) for r in args.runs] or sorted(
        p for p in pathlib.Path("runs").glob("*") if (p / "summary.json").exists()
    )
    if not runs:
        print("error: no run folders with a summary.json (run `python -m experiments run` first)",
              file=sys.stderr)
        return 2
    print(reporting.write_results(runs, args.out))
    return 0


def _allocator_option(parser) -> None:
    parser.add_argument(
        "--allocator", choices=("keep", "default"), default="keep",
        help="keep: run with glibc's allocator keeping freed memory, so that every call "
        "reuses its pages (the command restarts itself with GLIBC_TUNABLES set); default: "
        "the allocator as it is, each call faulting its large temporaries in afresh",
    )


def parser() -> argparse.ArgumentParser:
    """The command line's parser: every command and option of `python -m experiments`."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments", description="recurrax experiments."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="tasks, models, variants and presets")
    listing.add_argument(
        "--plugin", action="append", default=[], help="a file or module that registers mixers"
    )
    run = commands.add_parser("run", help="train a model on a task and write a report")
    run.add_argument("task", help="a task name (see `list`)")
    run.add_argument(
        "--model",
        required=True,
        help="a registered mixer: " + ", ".join(recurrax.registered_mixers())
        + " (or one a --plugin registers; see `list`)",
    )
    run.add_argument("--preset", default="small", choices=["small", "paper"])
    train.add_run_options(run)  # every option that is a RunConfig field
    run.add_argument("--depth", type=int, help="number of blocks")
    run.add_argument("--d-model", type=int, help="model width")
    run.add_argument(
        "--task-set", action="append", default=[], metavar="NAME=VALUE",
        help="a task option, e.g. --task-set length=256 (JSON values)",
    )
    run.add_argument(
        "--model-set", action="append", default=[], metavar="NAME=VALUE",
        help="a ModelConfig option, e.g. --model-set norm=\"layer\" (JSON values)",
    )
    run.add_argument(
        "--eval-length", type=int, action="append", default=[],
        help="also evaluate at this sequence length after training (length generalisation)",
    )
    run.add_argument("--out", help="run folder (default runs/TASK-MODEL[-VARIANT]-dDEPTH-sSEED)")
    run.add_argument(
        "--resume", action="store_true",
        help="continue the run in the folder from its last checkpoint; optimisation settings "
        "(--lr, --steps, --clip-norm, ...) may change, the model and the task may not",
    )
    run.add_argument(
        "--overwrite", action="store_true",
        help="delete the run already in the folder and start again (without it, a folder "
        "holding a run is refused unless --resume is given)",
    )
    processes_.add_options(run)
    campaign = commands.add_parser("campaign", help="run a named set of runs (see campaigns.py)")
    campaign.add_argument("name", help="a campaign name, or 'all'")
    campaign.add_argument(
        "--force", action="store_true",
        help="rerun every run from step 0 (--overwrite); without it, finished runs are skipped "
        "and unfinished ones resumed",
    )
    campaign.add_argument("--out", help="markdown file for the table of all runs")
    extrapolate = commands.add_parser(
        "extrapolate", help="accuracy of a trained run at other lengths, streamed in chunks"
    )
    extrapolate.add_argument("run", help="a run folder (with run.json and checkpoints/)")
    extrapolate.add_argument(
        "--length", type=int, action="append", default=[],
        help="a test length (repeatable; default 64, 256, 1024, 4096)",
    )
    extrapolate.add_argument("--examples", type=int, default=64, help="test sequences per length")
    extrapolate.add_argument(
        "--chunk", type=int, default=8192, help="steps read per call (memory ~ chunk)"
    )
    report = commands.add_parser("report", help="gather run summaries into one table")
    report.add_argument("runs", nargs="*", help="run folders (default: every folder in runs/)")
    report.add_argument("--out", help="markdown file for the table")
    speed = commands.add_parser("speed", help="speed measurements")
    which = speed.add_subparsers(dest="which", required=True)
    engine = which.add_parser(
        "engine", help="linear-recurrence strategies against the common associative-scan form"
    )
    engine.add_argument("--lengths", type=int, nargs="+", help="sequence lengths to time")
    engine.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    engine.add_argument(
        "--out", default="docs/results/speed-engine.md", help="markdown file for the tables"
    )
    lru = which.add_parser(
        "lru", help="the LRU layer against the common associative-scan form; scan or convolution"
    )
    lru.add_argument("--length", type=int, default=2048, help="sequence length")
    lru.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    lru.add_argument("--no-choice", action="store_true", help="skip the scan-or-convolution table")
    _allocator_option(lru)
    lru.add_argument("--out", default="docs/results/speed-lru.md", help="markdown file")
    minrnn = which.add_parser(
        "minrnn", help="training step of GRU, LSTM, minGRU, minLSTM and LRU against length"
    )
    minrnn.add_argument("--lengths", type=int, nargs="+", help="sequence lengths to time")
    minrnn.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    minrnn.add_argument(
        "--out", default="docs/results/speed-minrnn.md", help="markdown file (PNG beside it)"
    )
    whole = which.add_parser(
        "model",
        help="a whole training step of the LRU paper's model and a minGRU selective-copying "
        "model against direct JAX implementations of the same models",
    )
    whole.add_argument(
        "--lengths", type=int, nargs="+", help="LRU model lengths (default 1024 4096)"
    )
    whole.add_argument(
        "--copy-lengths", type=int, nargs="+",
        help="minGRU selective-copying lengths L (default 1024; the paper's is 4096)",
    )
    whole.add_argument("--lru-depth", type=int, default=6, help="LRU model blocks")
    whole.add_argument("--copy-depth", type=int, default=3, help="minGRU model blocks")
    whole.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    _allocator_option(whole)
    whole.add_argument(
        "--out", default="docs/results/speed-model.md", help="markdown file (PNG beside it)"
    )
    nonlinear = which.add_parser(
        "nonlinear",
        help="a GRU evaluated in parallel by (quasi-)DEER against the sequential GRU, minGRU "
        "and the LRU; training on digits, then forward+backward time against length",
    )
    nonlinear.add_argument("--lengths", type=int, nargs="+", help="sequence lengths to time")
    nonlinear.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    nonlinear.add_argument(
        "--trained-max-length", type=int, default=4096,
        help="time the trained GRU's quasi-DEER solve up to this length (default 4096)",
    )
    nonlinear.add_argument(
        "--train-steps", type=int, default=600,
        help="training steps of the digits comparison (0: skip it and the trained GRU)",
    )
    nonlinear.add_argument(
        "--out", default="docs/results/speed-nonlinear.md", help="markdown file (PNG beside it)"
    )
    resets = which.add_parser(
        "resets", help="the engine with and without segment resets (packed sequences)"
    )
    resets.add_argument("--lengths", type=int, nargs="+", help="sequence lengths to time")
    resets.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    resets.add_argument("--out", default="docs/results/speed-resets.md", help="markdown file")
    packed = which.add_parser(
        "packing", help="ListOps training throughput, padded against packed (same examples)"
    )
    packed.add_argument("--preset", default="small", choices=["small", "paper"])
    packed.add_argument("--models", nargs="+", help="models to time (default lru mingru)")
    packed.add_argument("--batches", type=int, default=8, help="batches of examples per pass")
    packed.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    packed.add_argument("--out", default="docs/results/speed-packing.md", help="markdown file")
    selective = which.add_parser(
        "selective",
        help="the selective SSM's training step against the RG-LRU's, part by part, at the "
        "input-dependent campaign's selective-copying shape",
    )
    selective.add_argument("--length", type=int, help="task length L (default: the campaign's)")
    selective.add_argument("--batch-size", type=int, help="batch (default: the campaign's)")
    selective.add_argument("--d-model", type=int, help="model width (default: the campaign's)")
    selective.add_argument("--depth", type=int, help="blocks (default: the campaign's)")
    selective.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    selective.add_argument(
        "--out", default="docs/results/speed-selective.md", help="markdown file"
    )
    accuracy = commands.add_parser("accuracy", help="float32 accuracy measurements")
    which_acc = accuracy.add_subparsers(dest="which", required=True)
    acc = which_acc.add_parser("engine", help="every strategy against a float64 loop")
    acc.add_argument("--length", type=int, default=65_536, help="sequence length")
    acc.add_argument(
        "--no-curve", action="store_true",
        help="only --length (no error-against-length figure at 1024, 4096, 16384)",
    )
    acc.add_argument(
        "--out", default="docs/results/accuracy-engine.md", help="markdown file for the table"
    )
    acc.set_defaults(repeats=1)
    acc_min = which_acc.add_parser("minrnn", help="minGRU/minLSTM in log and linear space")
    acc_min.add_argument("--length", type=int, default=65_536, help="sequence length")
    acc_min.add_argument(
        "--out", default="docs/results/accuracy-minrnn.md", help="markdown file for the table"
    )
    acc_min.set_defaults(repeats=1)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    if args.command == "extrapolate":
        return extrapolate.run(args, argv)
    if args.command in ("list", "run", "report", "campaign"):
        command = {"list": list_command, "run": run, "report": report, "campaign": campaign}
        return command[args.command](args, argv)
    if args.repeats < 1:
        print("--repeats must be at least 1", file=sys.stderr)
        return 2
    if args.command == "speed" and args.which == "engine":
        from . import speed_engine

        return speed_engine.run(args)
    if args.command == "speed" and args.which == "lru":
        from . import speed_lru

        return speed_lru.run(args)
    if args.command == "speed" and args.which == "minrnn":
        from . import speed_minrnn

        return speed_minrnn.run(args)
    if args.command == "speed" and args.which == "model":
        from . import speed_model

        return speed_model.run(args)
    if args.command == "speed" and args.which == "nonlinear":
        from . import speed_nonlinear

        return speed_nonlinear.run(args)
    if args.command == "speed" and args.which == "resets":
        from . import speed_resets

        return speed_resets.run(args)
    if args.command == "speed" and args.which == "packing":
        from . import speed_packing

        return speed_packing.run(args)
    if args.command == "speed" and args.which == "selective":
        from . import speed_selective

        return speed_selective.run(args, run_config)
    if args.command == "accuracy" and args.which == "minrnn":
        from . import accuracy_minrnn

        return accuracy_minrnn.run(args)
    if args.command == "accuracy" and args.which == "engine":
        from . import accuracy_engine

        return accuracy_engine.run(args)
    raise AssertionError("unreachable")  # pragma: no cover
