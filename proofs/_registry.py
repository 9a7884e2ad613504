"""The registry: the checks every proofs module declares (its `CHECKS`, each with the default
arguments the command line uses; `quick=True`: smaller sizes, seconds), and `run_all`.

A new check is a function in the module it belongs to plus one `Check` entry in that module's
`CHECKS`; a new module is one more name in `_MODULES`."""

import dataclasses
import math
import time
import traceback
from collections.abc import Callable, Sequence

from . import (
    discretisation,
    eigenvalues,
    equivalences,
    normalisation,
    parameterisation,
    stability,
)
from ._result import Check, CheckResult


# -- the checks: each module declares its own, and its module is its family ------------------

_MODULES = (parameterisation, stability, eigenvalues, normalisation, discretisation, equivalences)
FAMILIES: tuple[str, ...] = tuple(module.FAMILY for module in _MODULES)
REGISTRY: tuple[Check, ...] = tuple(check for module in _MODULES for check in module.CHECKS)


def select(
    checks: Sequence[Check] | None = None,
    *,
    only: Sequence[str] | None = None,
    family: Sequence[str] | None = None,
) -> list[Check]:
    """The checks named in `only` and/or of the families in `family` (all if neither).

    **Raises:** `ValueError` naming unknown check names or families."""
    checks = list(REGISTRY if checks is None else checks)
    names = [c.name for c in checks]
    families = sorted({c.family for c in checks})
    unknown = [n for n in (only or ()) if n not in names]
    if unknown:
        raise ValueError(f"`only` names unknown checks {unknown}; the checks are {names}.")
    bad = [f for f in (family or ()) if f not in families]
    if bad:
        raise ValueError(f"`family` names unknown families {bad}; the families are {families}.")
    return [
        c for c in checks if (not only or c.name in only) and (not family or c.family in family)
    ]


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _failure(check: Check, error: BaseException) -> CheckResult:
    return CheckResult(
        name=check.name,
        family=check.family,
        claim=check.claim,
        source=check.source,
        statistic_name="(the check raised an error)",
        statistic=math.nan,
        threshold=math.nan,
        comparison="<=",
        passed=False,
        details={
            "error": f"{type(error).__name__}: {error}",
            "raised at": _where(error),
        },
    )


def run_all(
    checks: Sequence[Check] | None = None,
    *,
    only: Sequence[str] | None = None,
    family: Sequence[str] | None = None,
    quick: bool = False,
    seed: int = 0,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run the selected checks (default: the whole registry) and return their results, in
    order. A check that raises is reported as a failure with the error in its details; each
    result's details get its running time in `"seconds"`. `on_result` is called with each
    result as soon as it is ready (the command line prints progress with it). Results are
    named by their registry entry."""
    results = []
    for check in select(checks, only=only, family=family):
        start = time.perf_counter()
        try:
            result = check.run(quick, seed)
            if not isinstance(result, CheckResult):
                raise TypeError(f"the check returned {type(result).__name__}, not a CheckResult")
        except Exception as error:  # a broken check is a failed check, reported
            result = _failure(check, error)
        seconds = time.perf_counter() - start
        # The registry's name is the one `--only` selects and the report files are named by.
        details = {**result.details, "seconds": seconds}
        result = dataclasses.replace(result, name=check.name, details=details)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 if there are results and every one passed, else 1."""
    return 0 if results and all(r.passed for r in results) else 1
