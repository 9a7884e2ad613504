"""The `list`, `run` and `report` commands."""

import hashlib
import json
import pathlib
import sys

from . import presets, report as reporting, train, variants
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
    print("models: " + ", ".join(train.MODELS))
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
    if args.model not in train.MODELS:
        raise ValueError(f"--model must be one of {train.MODELS}, got {args.model!r}.")
    if args.variant is not None and args.variant not in variants.VARIANTS:
        raise ValueError(
            f"--variant must be one of {sorted(variants.VARIANTS)}, got {args.variant!r}."
        )
    settings = presets.run_settings(
        args.task,
        args.model,
        args.preset,
        task_options=_options(args.task_set, "--task-set"),
        model_options=model_options,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_factor=args.lr_factor,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        eval_size=args.eval_size,
        checkpoint_every=args.checkpoint_every,
        clip_norm=getattr(args, "clip_norm", None),
        warmup_fraction=getattr(args, "warmup_fraction", None),
    )
    config = train.RunConfig(
        variant=args.variant,
        seed=args.seed,
        init_from=args.init_from,
        packing=getattr(args, "packing", False),
        **settings,
    )
    config.check()
    _check_mixer_options(config.model_config)
    _check_eval_lengths(config, getattr(args, "eval_length", []))
    return config, pathlib.Path(args.out or run_folder(config, args.model_set))


def _mixer_class(model_config: dict):
    import recurrax

    return {
        "lru": recurrax.LRU, "ssm": recurrax.DiagonalSSM, "mingru": recurrax.MinGRU,
        "minlstm": recurrax.MinLSTM, "gru": recurrax.GRU, "lstm": recurrax.LSTM,
    }[model_config["mixer"]]


def _check_mixer_options(model_config: dict) -> None:
    """Refuse `mixer_options` keys that the mixer's constructor does not take (they would
    otherwise fail at build time with a bare TypeError)."""
    import inspect

    cls = _mixer_class(model_config)
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return
    # `dtype`, `bidirectional` and `key` are given by ModelConfig itself.
    allowed = sorted(
        p.name for p in parameters
        if p.kind == p.KEYWORD_ONLY and p.name not in ("key", "dtype", "bidirectional")
    )
    options = model_config.get("mixer_options") or {}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"--model-set mixer_options: {cls.__name__} (--model {model_config['mixer']}) "
            f"takes no option {unknown}; its options are {allowed}, got "
            f"mixer_options={options!r}."
        )


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
    import recurrax

    try:
        summary = json.loads((out / "summary.json").read_text())
        same = train.RunConfig.from_dict(summary["config"]) == config
    except (OSError, ValueError, TypeError, KeyError):
        return False
    manager = recurrax.CheckpointManager(out / "checkpoints")
    return same and manager.latest() == manager.path(config.steps)


def run(args, argv, *, skip_done: bool = False) -> int:
    """`python -m experiments run`: every option is checked (exit 2, one line naming it)
    before any training and before anything is written."""
    resume, overwrite = args.resume, getattr(args, "overwrite", False)
    try:
        config, out = configure(args)
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
    try:
        task, _, model_before, _ = train.build(config)
    except ValueError as error:  # e.g. --init-from a run of another model
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{config.task} ({task.kind}), model {config.model}"
        + (f" [{config.variant}]" if config.variant else "")
        + f", depth {config.model_config['depth']}, d_model {config.model_config['d_model']}, "
        f"{config.steps} steps of batch {config.batch_size}; run folder {out}"
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
    model_after = _trained_model(config, out)
    for length in args.eval_length:
        model, state = model_after
        loss_fn = train.make_loss(task.kind)
        extra = train.evaluate(model, state, task, config, loss_fn, length=length)
        final.update({f"test_{k}@{length}": v for k, v in extra.items()})
    path = reporting.write_run_report(
        out, config, task, model_before, model_after[0], final, command=argv
    )
    shown = {k: round(v, 4) for k, v in final.items() if k.startswith("test_")}
    print(f"final: {shown}")
    print(f"report: {path}")
    return 0


def _trained_model(config, out):
    """The model and state of the last checkpoint of a run."""
    import equinox as eqx

    import recurrax

    _, _, skeleton, state = train.build(config, initialise=False)
    manager = recurrax.CheckpointManager(pathlib.Path(out) / "checkpoints")
    optimizer = train._optimizer(config, skeleton)
    opt_state = optimizer.init(eqx.filter(skeleton, eqx.is_inexact_array))
    checkpoint = manager.restore(model=skeleton, opt_state=opt_state, state=state)
    return checkpoint.model, checkpoint.state


def campaign(args, argv) -> int:
    from .__main__ import _parser
    from .campaigns import CAMPAIGNS, EXTRAPOLATIONS

    names = list(CAMPAIGNS) if args.name == "all" else [args.name]
    for name in names:
        if name not in CAMPAIGNS:
            print(f"error: unknown campaign {name!r}; known: {sorted(CAMPAIGNS)}", file=sys.stderr)
            return 2
    status = 0
    for name in names:
        for command in CAMPAIGNS[name]:
            run_args = _parser().parse_args(["run", *command])
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
    from . import extrapolate
    from .__main__ import _parser

    command = ["extrapolate", str(out), *options]
    ex_args = _parser().parse_args(command)
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
