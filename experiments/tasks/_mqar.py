"""Multi-query associative recall, MQAR (Zoology)."""

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Baseline, Batch, check_int, Stream


@dataclasses.dataclass(frozen=True)
class MQAR(AbstractTask):
    r"""Recall the value bound to each key when the key is queried later.

    Keys are drawn from the first half of the vocabulary (`0 … vocab_size // 2 - 1`) and values
    from the second, both without replacement within an example. The context is
    `k1 v1 … kK vK` (positions $0 … 2K - 1$); each key is then queried exactly once in the
    remaining $S = L - 2K$ positions, at a gap $i \in \{1 … S\}$ after the context (position
    $2K + i - 1$), the $K$ gaps distinct and drawn without replacement with
    $p(i) \propto i^{a - 1}$ (`alpha` $= a = 0.01$ favours short gaps). The other positions after
    the context hold random value-half tokens (noise that is never a key). Token task: the
    label (the value) sits at the query position, `target_mask` is True there only; targets
    are token ids (`num_classes = vocab_size`).

    Small preset: $V = 64$, $L = 64$, $K = 8$. Paper (Zoology): $V = 8192$ and
    $(L, K) \in$ `PAPER_SWEEP` $= \{(64, 4), (128, 8), (256, 16)\}$; `PAPER` is the largest.
    `length` overrides $L$ (at least $3K$). Pooling `"none"`; baseline: chance over the values.
    """

    length: int = 64
    num_pairs: int = 8
    vocab_size: int = 64
    alpha: float = 0.01

    name: ClassVar[str] = "mqar"
    kind: ClassVar[str] = "token"
    input_kind: ClassVar[str] = "tokens"
    pooling: ClassVar[str] = "none"
    PAPER: ClassVar[dict] = {"length": 256, "num_pairs": 16, "vocab_size": 8192}
    PAPER_SWEEP: ClassVar[tuple[tuple[int, int], ...]] = ((64, 4), (128, 8), (256, 16))

    def __post_init__(self):
        check_int("MQAR", "num_pairs", self.num_pairs, minimum=1)
        check_int("MQAR", "vocab_size", self.vocab_size, minimum=2)
        if self.num_pairs > self.vocab_size // 2:
            raise ValueError(
                f"MQAR: `vocab_size` must give at least `num_pairs` keys (half the vocabulary), "
                f"so at least {2 * self.num_pairs}; got vocab_size={self.vocab_size} and "
                f"num_pairs={self.num_pairs}."
            )
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha <= 1):
            raise ValueError(f"MQAR: `alpha` must lie in (0, 1], got alpha={self.alpha!r}.")
        self.input_length(self.length)

    @property
    def input_size(self) -> None:
        return None

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    def input_length(self, length: int | None = None) -> int:
        if length is None:
            return self.length
        check_int("MQAR", "length", length, minimum=1)
        if length < 3 * self.num_pairs:
            raise ValueError(
                f"MQAR: `length` must hold the pairs and their queries, at least 3 * num_pairs "
                f"= {3 * self.num_pairs}; got length={length} and num_pairs={self.num_pairs}."
            )
        return length

    def baseline(self) -> Baseline:
        values = self.vocab_size - self.vocab_size // 2
        return Baseline("accuracy", 1.0 / values, "chance over the value tokens")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        rng = stream.rng()
        L = self.input_length(length)
        K = self.num_pairs
        half = self.vocab_size // 2
        num_values = self.vocab_size - half
        # Distinct keys and values per row: the first K of a random permutation.
        keys = np.argsort(rng.random((batch_size, half)), axis=1)[:, :K].astype(np.int32)
        values = np.argsort(rng.random((batch_size, num_values)), axis=1)[:, :K]
        values = (values + half).astype(np.int32)
        # K distinct gaps without replacement, p(i) ∝ i^(a-1): the K smallest of E_i / w_i
        # with E_i ~ Exp(1) (sequential weighted sampling without replacement).
        slots = L - 2 * K
        weights = np.arange(1, slots + 1, dtype=np.float64) ** (self.alpha - 1.0)
        race = rng.exponential(size=(batch_size, slots)) / weights
        gaps = np.argpartition(race, K - 1, axis=1)[:, :K] + 1
        query_positions = 2 * K + gaps - 1

        inputs = np.empty((batch_size, L), np.int32)
        inputs[:, 0 : 2 * K : 2] = keys
        inputs[:, 1 : 2 * K : 2] = values
        inputs[:, 2 * K :] = rng.integers(half, self.vocab_size, size=(batch_size, slots))
        np.put_along_axis(inputs, query_positions, keys, axis=1)
        targets = np.zeros((batch_size, L), np.int32)
        np.put_along_axis(targets, query_positions, values, axis=1)
        target_mask = np.zeros((batch_size, L), bool)
        np.put_along_axis(target_mask, query_positions, True, axis=1)
        return Batch(inputs, targets, np.ones((batch_size, L), bool), target_mask)
