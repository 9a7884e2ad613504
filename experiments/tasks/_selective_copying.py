"""Selective copying (Mamba §4.1.1; minRNN §4)."""

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Baseline, Batch, check_int, Stream


@dataclasses.dataclass(frozen=True)
class SelectiveCopying(AbstractTask):
    r"""Copy the data tokens scattered in a blank sequence, in order, after the markers.

    `num_tokens` ($K$) data tokens, uniform over the data tokens, sit at sorted random positions
    of a blank sequence of `length` ($L$); then $K$ markers follow. Inputs have length $L + K$;
    the targets are the $K$ data tokens in order at the $K$ marker positions (a token task:
    `target_mask` is True at the last $K$ positions only).

    Tokens: data `0 … vocab_size - 3`, blank `vocab_size - 2`, marker `vocab_size - 1`, so the
    vocabulary counts everything (14 data tokens at `vocab_size = 16`) and the targets are
    token ids below `num_classes = vocab_size - 2`.

    Small preset: $L = 128$, $K = 8$, $V = 16$. Paper (Mamba, minRNN): $L = 4096$, $K = 16$,
    $V = 16$. `length` overrides $L$. Pooling `"none"`; baseline: chance token accuracy
    $1 / (V - 2)$.
    """

    length: int = 128
    num_tokens: int = 8
    vocab_size: int = 16

    name: ClassVar[str] = "selective_copying"
    kind: ClassVar[str] = "token"
    input_kind: ClassVar[str] = "tokens"
    pooling: ClassVar[str] = "none"
    PAPER: ClassVar[dict] = {"length": 4096, "num_tokens": 16, "vocab_size": 16}

    def __post_init__(self):
        check_int("SelectiveCopying", "vocab_size", self.vocab_size, minimum=3)
        check_int("SelectiveCopying", "num_tokens", self.num_tokens, minimum=1)
        check_int("SelectiveCopying", "length", self.length, minimum=1)
        self._check_fits(self.length)

    def _check_fits(self, length: int) -> None:
        if self.num_tokens > length:
            raise ValueError(
                f"SelectiveCopying: `num_tokens` data tokens do not fit in `length` positions; "
                f"num_tokens must be at most length, got num_tokens={self.num_tokens} and "
                f"length={length}."
            )

    @property
    def blank_token(self) -> int:
        return self.vocab_size - 2

    @property
    def marker_token(self) -> int:
        return self.vocab_size - 1

    @property
    def input_size(self) -> None:
        return None

    @property
    def num_classes(self) -> int:
        return self.vocab_size - 2

    def input_length(self, length: int | None = None) -> int:
        if length is not None:
            check_int("SelectiveCopying", "length", length, minimum=1)
            self._check_fits(length)
        return (self.length if length is None else length) + self.num_tokens

    def baseline(self) -> Baseline:
        return Baseline("accuracy", 1.0 / self.num_classes, "chance over the data tokens")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        rng = stream.rng()
        L = self.length if length is None else length
        K = self.num_tokens
        data = rng.integers(0, self.num_classes, size=(batch_size, K), dtype=np.int32)
        # K distinct positions per row: the K smallest of L uniform keys, then sorted.
        keys = rng.random((batch_size, L))
        positions = np.sort(np.argpartition(keys, K - 1, axis=1)[:, :K], axis=1)
        inputs = np.full((batch_size, L + K), self.blank_token, np.int32)
        np.put_along_axis(inputs, positions, data, axis=1)
        inputs[:, L:] = self.marker_token
        targets = np.zeros((batch_size, L + K), np.int32)
        targets[:, L:] = data
        target_mask = np.zeros((batch_size, L + K), bool)
        target_mask[:, L:] = True
        mask = np.ones((batch_size, L + K), bool)
        return Batch(inputs, targets, mask, target_mask)
