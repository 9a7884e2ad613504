r"""State tracking: parity, cycle navigation and modular arithmetic, with length generalisation.

All three read one token per step, label the state reached after the last valid token
(classification, pooling `"last"` over `mask`) and draw each example's length uniformly in
`[min_length, max_length]`, right-padded to `max_length` with the identity token 0 and
`mask` marking the valid steps. `batch(..., length=L)` makes every example exactly `L` long.

Protocol (Chomsky-hierarchy benchmark, minRNN v3): train on lengths 1-40 (the defaults, which
are also `PAPER`), test on 40-256 (`TEST_LENGTHS`), either with a second task
`Parity(min_length=40, max_length=256)` or per length with `test_set(seed, n, length=L)`.
"""

import dataclasses
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Baseline, Batch, check_int, measured_majority, Stream


def _check_lengths(owner: str, min_length: int, max_length: int) -> None:
    check_int(owner, "min_length", min_length, minimum=1)
    check_int(owner, "max_length", max_length, minimum=1)
    if min_length > max_length:
        raise ValueError(
            f"{owner}: `min_length` must not exceed `max_length`, got min_length={min_length} "
            f"and max_length={max_length}."
        )


def _input_length(owner: str, max_length: int, length: int | None) -> int:
    if length is None:
        return max_length
    check_int(owner, "length", length, minimum=1)
    return length


def _tokens(task, stream: Stream, batch_size: int, length: int | None, num_tokens: int):
    """Random tokens `(batch, width)` with 0 (the identity) after each example's length, and
    the mask."""
    rng = stream.rng()
    width = task.input_length(length)
    if length is None:
        lengths = rng.integers(task.min_length, task.max_length + 1, size=batch_size)
    else:
        lengths = np.full(batch_size, length)
    tokens = rng.integers(0, num_tokens, size=(batch_size, width), dtype=np.int32)
    mask = np.arange(width)[None, :] < lengths[:, None]
    return np.where(mask, tokens, np.int32(0)), mask


@dataclasses.dataclass(frozen=True)
class Parity(AbstractTask):
    """The parity of a bit string: tokens {0, 1}, label `sum % 2`. Baseline: chance 1/2."""

    min_length: int = 1
    max_length: int = 40

    name: ClassVar[str] = "parity"
    kind: ClassVar[str] = "classification"
    input_kind: ClassVar[str] = "tokens"
    pooling: ClassVar[str] = "last"
    PAPER: ClassVar[dict] = {"min_length": 1, "max_length": 40}
    TEST_LENGTHS: ClassVar[tuple[int, int]] = (40, 256)

    def __post_init__(self):
        _check_lengths("Parity", self.min_length, self.max_length)

    @property
    def vocab_size(self) -> int:
        return 2

    @property
    def input_size(self) -> None:
        return None

    @property
    def num_classes(self) -> int:
        return 2

    def input_length(self, length: int | None = None) -> int:
        return _input_length("Parity", self.max_length, length)

    def baseline(self) -> Baseline:
        return Baseline("accuracy", 0.5, "chance")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        tokens, mask = _tokens(self, stream, batch_size, length, 2)
        targets = (tokens.sum(axis=1) % 2).astype(np.int32)
        return Batch(tokens, targets, mask)


@dataclasses.dataclass(frozen=True)
class CycleNavigation(AbstractTask):
    """Moves on a cycle of five positions from position 0: token 0 stays, 1 moves +1, 2 moves
    −1; the label is the final position `sum(moves) % 5`. Baseline: the majority class,
    measured (short lengths are not uniform over positions)."""

    min_length: int = 1
    max_length: int = 40

    name: ClassVar[str] = "cycle_navigation"
    kind: ClassVar[str] = "classification"
    input_kind: ClassVar[str] = "tokens"
    pooling: ClassVar[str] = "last"
    PAPER: ClassVar[dict] = {"min_length": 1, "max_length": 40}
    TEST_LENGTHS: ClassVar[tuple[int, int]] = (40, 256)
    MOVES: ClassVar[tuple[int, ...]] = (0, 1, -1)

    def __post_init__(self):
        _check_lengths("CycleNavigation", self.min_length, self.max_length)

    @property
    def vocab_size(self) -> int:
        return 3

    @property
    def input_size(self) -> None:
        return None

    @property
    def num_classes(self) -> int:
        return 5

    def input_length(self, length: int | None = None) -> int:
        return _input_length("CycleNavigation", self.max_length, length)

    def baseline(self) -> Baseline:
        return Baseline("accuracy", measured_majority(self), "majority class, measured")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        tokens, mask = _tokens(self, stream, batch_size, length, 3)
        moves = np.asarray(self.MOVES)[tokens]
        targets = (moves.sum(axis=1) % 5).astype(np.int32)
        return Batch(tokens, targets, mask)


@dataclasses.dataclass(frozen=True)
class ModularArithmetic(AbstractTask):
    r"""A left-to-right chain of operations modulo 5 from $x = 0$: token $5o + d$
    ($o \in \{0, 1, 2\}$, $d \in \{0 … 4\}$) applies $x \leftarrow x + d$, $x - d$ or
    $x \cdot d$ (mod 5), written `+d`, `-d`, `*d` (`TOKENS`). The label is the final $x$.
    The maps form a non-commutative monoid (the affine maps of $\mathbb{Z}_5$; `*0` resets),
    a harder state-tracking problem than the cyclic groups of parity and cycle navigation.
    Baseline: the majority class, measured."""

    min_length: int = 1
    max_length: int = 40

    name: ClassVar[str] = "modular_arithmetic"
    kind: ClassVar[str] = "classification"
    input_kind: ClassVar[str] = "tokens"
    pooling: ClassVar[str] = "last"
    PAPER: ClassVar[dict] = {"min_length": 1, "max_length": 40}
    TEST_LENGTHS: ClassVar[tuple[int, int]] = (40, 256)
    TOKENS: ClassVar[tuple[str, ...]] = tuple(f"{op}{d}" for op in "+-*" for d in range(5))

    def __post_init__(self):
        _check_lengths("ModularArithmetic", self.min_length, self.max_length)

    @property
    def vocab_size(self) -> int:
        return 15

    @property
    def input_size(self) -> None:
        return None

    @property
    def num_classes(self) -> int:
        return 5

    def input_length(self, length: int | None = None) -> int:
        return _input_length("ModularArithmetic", self.max_length, length)

    def baseline(self) -> Baseline:
        return Baseline("accuracy", measured_majority(self), "majority class, measured")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        tokens, mask = _tokens(self, stream, batch_size, length, 15)
        op, d = tokens // 5, tokens % 5
        # Each token is the affine map x -> a x + b (mod 5); padding (token 0, "+0") is the
        # identity. Compose them by pairwise halving: O(log length) vectorised steps.
        a = np.where(op == 2, d, 1)
        b = np.where(op == 0, d, np.where(op == 1, (5 - d) % 5, 0))
        while a.shape[1] > 1:
            if a.shape[1] % 2:
                a = np.concatenate([a, np.ones_like(a[:, :1])], axis=1)
                b = np.concatenate([b, np.zeros_like(b[:, :1])], axis=1)
            a_first, b_first, a_then, b_then = a[:, ::2], b[:, ::2], a[:, 1::2], b[:, 1::2]
            a, b = (a_then * a_first) % 5, (a_then * b_first + b_then) % 5
        targets = b[:, 0].astype(np.int32)  # the composed map applied to x = 0
        return Batch(tokens, targets, mask)
