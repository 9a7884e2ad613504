"""Synthetic long-range tasks, generated on the fly from a seed (NumPy, deterministic).

`make_task(name, preset="small" | "paper", **overrides)` builds a task from `TASKS`;
`task.batch(seed, step, batch_size, split=..., length=...)` gives a `Batch`;
`task.test_set(seed, size)` a held-out set; `task.baseline()` the chance/trivial baseline.
See `AbstractTask` for the interface.

| name                 | kind           | inputs           | pooling | `length` overrides      |
| -------------------- | -------------- | ---------------- | ------- | ----------------------- |
| `selective_copying`  | token          | tokens           | none    | L (inputs L + K)        |
| `induction_heads`    | classification | tokens           | last    | L                       |
| `mqar`               | token          | tokens           | none    | L                       |
| `listops`            | classification | tokens (padded)  | mean    | —                       |
| `adding`             | regression     | features (2)     | last    | T                       |
| `copy_memory`        | token          | tokens           | none    | T (inputs T + 20)       |
| `parity`             | classification | tokens (padded)  | last    | exact length            |
| `cycle_navigation`   | classification | tokens (padded)  | last    | exact length            |
| `modular_arithmetic` | classification | tokens (padded)  | last    | exact length            |
| `digits`             | classification | features (1)     | mean    | —                       |
| `mnist1d`            | classification | features (1)     | mean    | —                       |
| `mnist1d-shuffled`   | classification | features (1)     | mean    | —                       |

The `mnist1d` tasks need the optional `mnist1d` package (`pip install -e '.[experiments]'`).
"""

from ._adding import Adding as Adding
from ._base import (
    AbstractTask as AbstractTask,
    Baseline as Baseline,
    Batch as Batch,
    Stream as Stream,
)
from ._copy_memory import CopyMemory as CopyMemory
from ._digits import Digits as Digits
from ._induction_heads import InductionHeads as InductionHeads
from ._listops import ListOps as ListOps
from ._mnist1d import (
    load_mnist1d as load_mnist1d,
    MNIST1D as MNIST1D,
    ShuffledMNIST1D as ShuffledMNIST1D,
)
from ._mqar import MQAR as MQAR
from ._registry import make_task as make_task, PRESETS as PRESETS, TASKS as TASKS
from ._selective_copying import SelectiveCopying as SelectiveCopying
from ._state_tracking import (
    CycleNavigation as CycleNavigation,
    ModularArithmetic as ModularArithmetic,
    Parity as Parity,
)


# The brief's name for the abstract base.
Task = AbstractTask
