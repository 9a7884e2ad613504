"""Copy memory (Hochreiter & Schmidhuber; uRNN)."""

import dataclasses
import math
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Baseline, Batch, check_int, Stream


@dataclasses.dataclass(frozen=True)
class CopyMemory(AbstractTask):
    r"""Reproduce ten digits after a delay of $T$ steps.

    Inputs of length $T + 20$ over tokens `0 … 9`: ten digits uniform in `1 … 8`, then
    $T - 1$ zeros, then eleven 9s (the first is the delimiter). Targets: 0 everywhere except
    the last ten positions, which hold the ten digits. Token task with every position scored
    (`target_mask` all True), so the memoryless baseline cross-entropy (0 for sure, then a
    uniform guess over 8 digits) is $10 \ln 8 / (T + 20)$ nats per position;
    `num_classes = 10`, pooling `"none"`.

    Small preset: $T = 100$. Paper (uRNN): $T = 1000$. `length` overrides $T$ (the delay,
    not the input length $T + 20$).
    """

    length: int = 100

    name: ClassVar[str] = "copy_memory"
    kind: ClassVar[str] = "token"
    input_kind: ClassVar[str] = "tokens"
    pooling: ClassVar[str] = "none"
    PAPER: ClassVar[dict] = {"length": 1000}

    def __post_init__(self):
        check_int("CopyMemory", "length", self.length, minimum=1)

    @property
    def vocab_size(self) -> int:
        return 10

    @property
    def input_size(self) -> None:
        return None

    @property
    def num_classes(self) -> int:
        return 10

    def input_length(self, length: int | None = None) -> int:
        if length is not None:
            check_int("CopyMemory", "length", length, minimum=1)
        return (self.length if length is None else length) + 20

    def baseline(self) -> Baseline:
        width = self.input_length()
        return Baseline("cross_entropy", 10 * math.log(8) / width, "memoryless: 10 ln 8 / (T + 20)")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        rng = stream.rng()
        width = self.input_length(length)
        digits = rng.integers(1, 9, size=(batch_size, 10), dtype=np.int32)
        inputs = np.zeros((batch_size, width), np.int32)
        inputs[:, :10] = digits
        inputs[:, -11:] = 9
        targets = np.zeros((batch_size, width), np.int32)
        targets[:, -10:] = digits
        ones = np.ones((batch_size, width), bool)
        return Batch(inputs, targets, ones, ones.copy())
