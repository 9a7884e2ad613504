"""Command line: `python -m proofs [--quick] [--only NAME[,NAME]] [--family FAMILY] [--list]
[--seed N] [--out DIR] [--docs]`, and `python -m proofs --run RUN_FOLDER [--inputs FILE.npy]
[--quick] [--seed N] [--out DIR]` for the checks on a trained model."""

import argparse
import pathlib
import sys
import time


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proofs",
        description="Run the papers' mathematical claims as measured checks; write a report.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds per check")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these checks")
    parser.add_argument("--family", metavar="FAMILY[,FAMILY]", help="run only these families")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument(
        "--out", default=None, help="folder for report.md and figures (default: runs/proofs)"
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="also write docs/proofs.md and its figures in docs/proofs/",
    )
    parser.add_argument("--docs-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--run",
        metavar="RUN_FOLDER",
        help="check the trained model of a `python -m experiments run` folder instead; the "
        "report goes to RUN_FOLDER/proofs unless --out is given",
    )
    parser.add_argument(
        "--inputs",
        metavar="FILE.npy",
        help="with --run: a batch of real inputs (tokens or features) for the minGRU/minLSTM "
        "transition values (default: random inputs)",
    )
    return parser


def main(argv=None, *, checks=None) -> int:
    """Run the command line; returns the exit code (0 if every selected check passes).
    `checks` replaces the registry (used by the tests)."""
    args = _parser().parse_args(argv)
    # Before any array exists: float64 available for the references, figures off-screen.
    import jax

    jax.config.update("jax_enable_x64", True)
    optimisations = jax.config.values["jax_disable_most_optimizations"]
    if args.quick:
        # Quick sizes make compilation, not computation, the cost: compile without most of
        # XLA's optimisations (the full run keeps them).
        jax.config.update("jax_disable_most_optimizations", True)
    try:
        return _run(args, checks, sys.argv[1:] if argv is None else list(argv))
    finally:
        jax.config.update("jax_disable_most_optimizations", optimisations)


def _run(args, checks, argv) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from . import _registry, report

    if args.run is not None:
        return _run_trained(args, argv)
    if args.inputs is not None:
        print("python -m proofs: --inputs needs --run RUN_FOLDER.", file=sys.stderr)
        return 2
    args.out = "runs/proofs" if args.out is None else args.out
    try:
        selected = _registry.select(checks, only=_names(args.only), family=_names(args.family))
    except ValueError as error:
        print(f"python -m proofs: {error}", file=sys.stderr)
        return 2
    if args.list:
        for check in selected:
            print(f"{check.name:28s} {check.family:14s} {check.claim} ({check.source})")
        return 0

    def progress(result):
        print(
            f"{result.verdict}  {result.name:28s} {result.statistic_name} = "
            f"{report.fmt(result.statistic)} (needs {result.comparison} "
            f"{report.fmt(result.threshold)})  [{result.details.get('seconds', 0):.1f} s]",
            flush=True,
        )

    start = time.perf_counter()
    results = _registry.run_all(selected, quick=args.quick, seed=args.seed, on_result=progress)
    print()
    print(report.format_table(results))
    command = "python -m proofs " + " ".join(argv)
    saved = report.write_report(
        results, args.out, quick=args.quick, seed=args.seed, command=command.strip()
    )
    print(f"Report: {pathlib.Path(args.out) / 'report.md'} ({time.perf_counter() - start:.0f} s)")
    if args.docs:
        docs = report.ROOT / "docs" if args.docs_dir is None else pathlib.Path(args.docs_dir)
        report.write_docs(saved, docs=docs, quick=args.quick, seed=args.seed)
        print(f"Docs: {docs / 'proofs.md'}")
    return _registry.exit_code(results)


def _run_trained(args, argv) -> int:
    import numpy as np

    from . import report, trained

    if args.only or args.family or args.list or args.docs:
        print(
            "python -m proofs: --run checks a trained model with every applicable check; it "
            "does not combine with --only, --family, --list or --docs.",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    try:
        run = trained.load_run(args.run)
        inputs = None if args.inputs is None else np.load(args.inputs)
    except (ValueError, OSError) as error:
        print(f"python -m proofs: {error}", file=sys.stderr)
        return 2
    checks = trained.check_trained_model(
        run.model,
        initial=run.initial,
        inputs=inputs,
        state=run.state,
        quick=args.quick,
        seed=args.seed,
    )
    print(report.format_table(checks.results))
    for name, reason in checks.not_applicable.items():
        print(f"not applicable: {name} ({reason})")
    out = pathlib.Path(args.run) / "proofs" if args.out is None else pathlib.Path(args.out)
    title = f"the trained model of {pathlib.Path(args.run).name} (step {run.step})"
    command = ("python -m proofs " + " ".join(argv)).strip()
    path = trained.write_trained_report(checks, out, title=title, command=command)
    print(f"Report: {path} ({time.perf_counter() - start:.0f} s)")
    return 0 if checks.passed else 1


if __name__ == "__main__":
    sys.exit(main())
