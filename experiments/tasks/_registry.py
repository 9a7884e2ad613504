"""The registry of tasks by name, and `make_task`."""

import dataclasses
from typing import Any

from ._adding import Adding
from ._base import AbstractTask
from ._copy_memory import CopyMemory
from ._digits import Digits
from ._induction_heads import InductionHeads
from ._listops import ListOps
from ._mnist1d import MNIST1D, ShuffledMNIST1D
from ._mqar import MQAR
from ._selective_copying import SelectiveCopying
from ._state_tracking import CycleNavigation, ModularArithmetic, Parity


TASKS: dict[str, type[AbstractTask]] = {
    cls.name: cls
    for cls in (
        SelectiveCopying,
        InductionHeads,
        MQAR,
        ListOps,
        Adding,
        CopyMemory,
        Parity,
        CycleNavigation,
        ModularArithmetic,
        Digits,
        MNIST1D,
        ShuffledMNIST1D,
    )
}

PRESETS = ("small", "paper")


def make_task(name: str, *, preset: str = "small", **overrides: Any) -> AbstractTask:
    """The task `name` (a key of `TASKS`) with the `"small"` (CPU) or `"paper"` settings,
    then `overrides` of its fields.

    **Raises:** `ValueError` for an unknown name, preset or field, or a bad value (naming the
    argument).
    """
    if name not in TASKS:
        raise ValueError(f"make_task: unknown task name={name!r}; known: {sorted(TASKS)}.")
    if preset not in PRESETS:
        raise ValueError(f"make_task: `preset` must be one of {PRESETS}, got preset={preset!r}.")
    cls = TASKS[name]
    fields = [field.name for field in dataclasses.fields(cls)]
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(
                f"make_task: task {name!r} has no argument {key!r} (got {key}={value!r}); "
                f"its arguments are {fields}."
            )
    return cls.paper(**overrides) if preset == "paper" else cls(**overrides)
