"""Induction heads (Mamba §4.1.2)."""

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Baseline, Batch, check_int, Stream


@dataclasses.dataclass(frozen=True)
class InductionHeads(AbstractTask):
    r"""Recall the token that followed the trigger when the trigger comes again at the end.

    A sequence of `length` ($L$) tokens uniform over the ordinary tokens `0 … vocab_size - 2`;
    the trigger `vocab_size - 1` appears once at a uniform position $p \in [0, L - 3]$, followed
    by a token $v$; the last position holds the trigger again. The label is $v$
    (classification, read at the last position: pooling `"last"`; `num_classes = vocab_size -
    1`).

    Small preset: $L = 64$, $V = 16$. Paper (Mamba): train at $L = 256$, $V = 16$, test at
    `TEST_LENGTHS` ($2^6 … 2^{20}$) through the `length` override. Baseline: chance
    $1 / (V - 1)$.
    """

    length: int = 64
    vocab_size: int = 16

    name: ClassVar[str] = "induction_heads"
    kind: ClassVar[str] = "classification"
    input_kind: ClassVar[str] = "tokens"
    pooling: ClassVar[str] = "last"
    PAPER: ClassVar[dict] = {"length": 256, "vocab_size": 16}
    TEST_LENGTHS: ClassVar[tuple[int, ...]] = tuple(2**k for k in range(6, 21))

    def __post_init__(self):
        check_int("InductionHeads", "vocab_size", self.vocab_size, minimum=3)
        check_int("InductionHeads", "length", self.length, minimum=3)

    @property
    def trigger_token(self) -> int:
        return self.vocab_size - 1

    @property
    def input_size(self) -> None:
        return None

    @property
    def num_classes(self) -> int:
        return self.vocab_size - 1

    def input_length(self, length: int | None = None) -> int:
        if length is not None:
            check_int("InductionHeads", "length", length, minimum=3)
        return self.length if length is None else length

    def baseline(self) -> Baseline:
        return Baseline("accuracy", 1.0 / self.num_classes, "chance over the ordinary tokens")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        rng = stream.rng()
        L = self.input_length(length)
        inputs = rng.integers(0, self.num_classes, size=(batch_size, L), dtype=np.int32)
        where = rng.integers(0, L - 2, size=batch_size)
        rows = np.arange(batch_size)
        inputs[rows, where] = self.trigger_token
        inputs[:, -1] = self.trigger_token
        targets = inputs[rows, where + 1].copy()
        return Batch(inputs, targets, np.ones((batch_size, L), bool))
