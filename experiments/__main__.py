"""Command line: `python -m experiments list`, `run TASK --model MODEL`, `campaign NAME`,
`extrapolate RUN_FOLDER`, `report`,
`speed {engine,lru,minrnn,nonlinear,resets,packing}`, `accuracy {engine,minrnn}`."""

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments", description="recurrax experiments."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="tasks, models, variants and presets")
    run = commands.add_parser("run", help="train a model on a task and write a report")
    run.add_argument("task", help="a task name (see `list`)")
    run.add_argument(
        "--model",
        required=True,
        help="lru, ssm, mingru, minlstm, gru, lstm, rglru or selective-ssm",
    )
    run.add_argument("--preset", default="small", choices=["small", "paper"])
    run.add_argument("--variant", help="an ablation or control variant (see `list`)")
    run.add_argument("--steps", type=int)
    run.add_argument("--batch-size", type=int)
    run.add_argument("--lr", type=float, dest="learning_rate")
    run.add_argument("--lr-factor", type=float)
    run.add_argument("--weight-decay", type=float)
    run.add_argument("--eval-every", type=int)
    run.add_argument("--eval-size", type=int)
    run.add_argument("--checkpoint-every", type=int)
    run.add_argument("--clip-norm", type=float, help="global-norm gradient clipping threshold")
    run.add_argument("--warmup-fraction", type=float, help="fraction of the steps warming up")
    run.add_argument("--seed", type=int, default=0)
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
    run.add_argument(
        "--init-from", metavar="RUN_FOLDER",
        help="start from the last checkpoint of another run of the same model (e.g. at a "
        "shorter length); the optimiser and schedule start afresh",
    )
    run.add_argument(
        "--packing", action="store_true",
        help="variable-length classification (listops): fill rows with whole examples, "
        "restarting every layer at each (resets), instead of padding each example",
    )
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
    lru.add_argument("--out", default="docs/results/speed-lru.md", help="markdown file")
    minrnn = which.add_parser(
        "minrnn", help="training step of GRU, LSTM, minGRU, minLSTM and LRU against length"
    )
    minrnn.add_argument("--lengths", type=int, nargs="+", help="sequence lengths to time")
    minrnn.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    minrnn.add_argument(
        "--out", default="docs/results/speed-minrnn.md", help="markdown file (PNG beside it)"
    )
    nonlinear = which.add_parser(
        "nonlinear",
        help="a GRU evaluated in parallel by (quasi-)DEER against the sequential GRU, minGRU "
        "and the LRU; training on digits, then forward+backward time against length",
    )
    nonlinear.add_argument("--lengths", type=int, nargs="+", help="sequence lengths to time")
    nonlinear.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
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
    accuracy = commands.add_parser("accuracy", help="float32 accuracy measurements")
    which_acc = accuracy.add_subparsers(dest="which", required=True)
    acc = which_acc.add_parser("engine", help="every strategy against a float64 loop")
    acc.add_argument("--length", type=int, default=65_536, help="sequence length")
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
    args = _parser().parse_args(argv)
    if args.command == "extrapolate":
        from . import extrapolate

        return extrapolate.run(args, argv)
    if args.command in ("list", "run", "report", "campaign"):
        from . import cli

        command = {"list": cli.list_command, "run": cli.run, "report": cli.report}
        command["campaign"] = cli.campaign
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
    if args.command == "speed" and args.which == "nonlinear":
        from . import speed_nonlinear

        return speed_nonlinear.run(args)
    if args.command == "speed" and args.which == "resets":
        from . import speed_resets

        return speed_resets.run(args)
    if args.command == "speed" and args.which == "packing":
        from . import speed_packing

        return speed_packing.run(args)
    if args.command == "accuracy" and args.which == "minrnn":
        from . import accuracy_minrnn

        return accuracy_minrnn.run(args)
    if args.command == "accuracy" and args.which == "engine":
        from . import accuracy_engine

        return accuracy_engine.run(args)
    raise AssertionError("unreachable")  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
