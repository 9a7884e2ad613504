"""The result of a check, and the registry entry that runs one from the command line."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any


COMPARISONS = ("<", "<=", ">", ">=")


def compare(statistic: float, threshold: float, comparison: str) -> bool:
    """Whether `statistic <comparison> threshold` holds; a NaN statistic never passes.

    **Raises:** `ValueError` if `comparison` is not one of `<`, `<=`, `>`, `>=`.
    """
    if comparison not in COMPARISONS:
        raise ValueError(
            f"compare: `comparison` must be one of {COMPARISONS}, got comparison={comparison!r}."
        )
    statistic, threshold = float(statistic), float(threshold)
    if math.isnan(statistic) or math.isnan(threshold):
        return False
    return {
        "<": statistic < threshold,
        "<=": statistic <= threshold,
        ">": statistic > threshold,
        ">=": statistic >= threshold,
    }[comparison]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What a check measured, and whether the claim held.

    **Fields:**

    - `name`: the check's name (as listed by `python -m proofs --list`).
    - `family`: the proofs module that declares the check (`"parameterisation"`,
      `"stability"`, `"eigenvalues"`, `"normalisation"`, `"discretisation"` or
      `"equivalences"`).
    - `claim`: the mathematical claim, in words.
    - `source`: where it is stated (paper and section).
    - `statistic_name`, `statistic`: what was measured and its value.
    - `threshold`, `comparison`: the claim holds when `statistic <comparison> threshold`.
    - `passed`: whether it held.
    - `details`: further measurements (JSON-like: numbers, strings, lists, dicts).
    - `figures`: matplotlib figures, or paths to PNG files once a report has saved them.
    """

    name: str
    family: str
    claim: str
    source: str
    statistic_name: str
    statistic: float
    threshold: float
    comparison: str
    passed: bool
    details: dict = dataclasses.field(default_factory=dict)
    figures: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.comparison not in COMPARISONS:
            raise ValueError(
                f"CheckResult: `comparison` must be one of {COMPARISONS}, got "
                f"comparison={self.comparison!r}."
            )

    @property
    def verdict(self) -> str:
        """`"PASS"` or `"FAIL"`."""
        return "PASS" if self.passed else "FAIL"

    @classmethod
    def measured(
        cls,
        *,
        name: str,
        family: str,
        claim: str,
        source: str,
        statistic_name: str,
        statistic: float,
        threshold: float,
        comparison: str,
        details: dict | None = None,
        figures: list | None = None,
    ) -> "CheckResult":
        """A result whose `passed` is computed from the statistic and the threshold."""
        statistic = float(statistic)
        return cls(
            name=name,
            family=family,
            claim=claim,
            source=source,
            statistic_name=statistic_name,
            statistic=statistic,
            threshold=float(threshold),
            comparison=comparison,
            passed=compare(statistic, threshold, comparison),
            details={} if details is None else dict(details),
            figures=[] if figures is None else list(figures),
        )


@dataclasses.dataclass(frozen=True)
class Check:
    """A registry entry: a named check with its family, claim and source, and
    `run(quick, seed) -> CheckResult` that calls the check function with the command line's
    default arguments (`quick=True`: smaller sizes)."""

    name: str
    family: str
    claim: str
    source: str
    run: Callable[[bool, int], Any]
