"""`python -m experiments`: the command line, defined in `experiments.cli`."""

from .cli import main


if __name__ == "__main__":
    raise SystemExit(main())
