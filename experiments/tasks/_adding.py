"""The adding problem (Hochreiter & Schmidhuber; uRNN)."""

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Baseline, Batch, check_int, Stream


@dataclasses.dataclass(frozen=True)
class Adding(AbstractTask):
    r"""Add the two marked values of a long sequence.

    Features `(length, 2)`: channel 0 holds values $U(0, 1)$, channel 1 a mask with exactly
    two ones, one uniform in the first half `[0, T // 2)` and one in the second
    `[T // 2, T)`. The target is the sum of the two marked values (regression, MSE;
    `num_classes = 1`, pooling `"last"`). Always predicting 1 gives MSE $1/6 \approx 0.167$
    (the variance of the sum); "solved" means MSE ≪ 0.167.

    Small preset: $T = 100$. Paper: $T = 750$, the longest of the uRNN sweep
    `PAPER_SWEEP` $= (100, 200, 400, 750)$. `length` overrides $T$.
    """

    length: int = 100

    name: ClassVar[str] = "adding"
    kind: ClassVar[str] = "regression"
    input_kind: ClassVar[str] = "features"
    pooling: ClassVar[str] = "last"
    PAPER: ClassVar[dict] = {"length": 750}
    PAPER_SWEEP: ClassVar[tuple[int, ...]] = (100, 200, 400, 750)

    def __post_init__(self):
        check_int("Adding", "length", self.length, minimum=2)

    @property
    def vocab_size(self) -> None:
        return None

    @property
    def input_size(self) -> int:
        return 2

    @property
    def num_classes(self) -> int:
        return 1

    def input_length(self, length: int | None = None) -> int:
        if length is not None:
            check_int("Adding", "length", length, minimum=2)
        return self.length if length is None else length

    def baseline(self) -> Baseline:
        return Baseline("mse", 1.0 / 6.0, "always predict 1")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        rng = stream.rng()
        T = self.input_length(length)
        half = T // 2
        values = rng.random((batch_size, T))
        first = rng.integers(0, half, size=batch_size)
        second = rng.integers(half, T, size=batch_size)
        rows = np.arange(batch_size)
        marks = np.zeros((batch_size, T))
        marks[rows, first] = 1.0
        marks[rows, second] = 1.0
        inputs = np.stack([values, marks], axis=-1).astype(np.float32)
        targets = (inputs[rows, first, 0] + inputs[rows, second, 0]).astype(np.float32)
        return Batch(inputs, targets, np.ones((batch_size, T), bool))
