"""ListOps (Long Range Arena), with the closing bracket kept."""

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Baseline, Batch, check_int, measured_majority, no_length, Stream


OPERATORS: tuple[str, ...] = ("MIN", "MAX", "MED", "SM")
# Token ids: digits 0-9 are themselves, then the operators (opening bracket included), the
# closing bracket and the padding.
TOKENS: tuple[str, ...] = (
    tuple(str(d) for d in range(10)) + tuple("[" + op for op in OPERATORS) + ("]", "<pad>")
)
CLOSE = TOKENS.index("]")
PAD = TOKENS.index("<pad>")
_FIRST_OPERATOR = 10
_MAX_REJECTIONS = 1_000_000


def apply_operator(operator: str, values: Sequence[int]) -> int:
    """`MIN`, `MAX`, `MED` (`int(median)`: an even count truncates the mean of the two middle
    values) or `SM` (sum modulo 10) of digits."""
    if operator == "MIN":
        return min(values)
    if operator == "MAX":
        return max(values)
    if operator == "SM":
        return sum(values) % 10
    if operator == "MED":
        ordered = sorted(values)
        n = len(ordered)
        if n % 2:
            return ordered[n // 2]
        return (ordered[n // 2 - 1] + ordered[n // 2]) // 2
    raise ValueError(f"apply_operator: unknown `operator`={operator!r}; one of {OPERATORS}.")


def _sample_tree(uniform, max_depth: int, max_args: int, op_prob: float, max_length: int):
    """One prefix expression as `(tokens, value)`, or `None` as soon as it is longer than
    `max_length` (it would be filtered out anyway). The root has depth 1; a node at depth
    below `max_depth` is an operator with probability `op_prob`, with 2 … `max_args` children;
    at `max_depth` it is a digit."""
    tokens: list[int] = []
    stack: list[tuple[str, int, list[int]]] = []  # (operator, arity, values so far)
    while True:
        if len(stack) + 1 < max_depth and uniform() < op_prob:
            op = int(uniform() * len(OPERATORS))
            arity = 2 + int(uniform() * (max_args - 1))
            tokens.append(_FIRST_OPERATOR + op)
            stack.append((OPERATORS[op], arity, []))
        else:
            value = int(uniform() * 10)
            tokens.append(value)
            while stack:
                operator, arity, values = stack[-1]
                values.append(value)
                if len(values) < arity:
                    break
                stack.pop()
                tokens.append(CLOSE)
                value = apply_operator(operator, values)
            else:
                return (tokens, value) if len(tokens) <= max_length else None
        if len(tokens) > max_length:
            return None


class _Uniforms:
    """Uniform draws from a generator, taken in blocks (one NumPy call per 4096 draws)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.block: list[float] = []
        self.i = 0

    def __call__(self) -> float:
        if self.i == len(self.block):
            self.block = self.rng.random(4096).tolist()
            self.i = 0
        self.i += 1
        return self.block[self.i - 1]


@dataclasses.dataclass(frozen=True)
class ListOps(AbstractTask):
    r"""Evaluate a prefix expression of `[MIN`, `[MAX`, `[MED`, `[SM` (sum mod 10) over digits.

    Trees are sampled as in LRA: the root has depth 1; at depth `< max_depth` a node is a digit
    with probability `leaf_prob` (0.75), else an operator (uniform over the four) with a
    uniform number of children in `2 … max_args`; at `max_depth` always a digit. Only trees
    whose length in tokens (operators, digits and closing brackets) lies in
    `[min_length, max_length]` are kept (rejection sampling; LRA's $500 < len < 2000$ is
    `min_length=501, max_length=1999`). `MED` is `int(median)` (`[MED 2 3 ]` = 2).

    Tokens (`TOKENS`): digits `0 … 9` are ids 0-9, `[MIN [MAX [MED [SM` are 10-13, `]` is 14
    (kept: dropping it makes the task nearly impossible) and the padding is 15
    (`vocab_size = 16`). Batches are right-padded to `max_length` with `mask` marking the
    tokens. Ten classes; pooling `"mean"` (LRA convention, with bidirectional models; a causal
    model may prefer `"last"`, which also respects the mask). No `length` override.

    Small preset: `max_depth=8`, `max_args=6`, lengths 50-250 (mean ≈ 99 tokens, classes 0
    and 9 ≈ 13 % and 12 %). Paper (LRA): `max_depth=10`, `max_args=10`, lengths 501-1999
    (≈ 8.5 % of trees pass, mean ≈ 1030 tokens, class 0 ≈ 17 %). Sampling is a Python loop
    per example (kept lean: trees growing beyond `max_length` are abandoned early; about
    25 ms per 256 small examples, 150 ms per 256 paper examples). Baseline: the majority
    class, measured on 1000 samples.
    """

    max_depth: int = 8
    max_args: int = 6
    min_length: int = 50
    max_length: int = 250
    leaf_prob: float = 0.75

    name: ClassVar[str] = "listops"
    kind: ClassVar[str] = "classification"
    input_kind: ClassVar[str] = "tokens"
    pooling: ClassVar[str] = "mean"
    PAPER: ClassVar[dict] = {"max_depth": 10, "max_args": 10, "min_length": 501, "max_length": 1999}
    TOKENS: ClassVar[tuple[str, ...]] = TOKENS

    def __post_init__(self):
        check_int("ListOps", "max_depth", self.max_depth, minimum=1)
        check_int("ListOps", "max_args", self.max_args, minimum=2)
        check_int("ListOps", "min_length", self.min_length, minimum=1)
        check_int("ListOps", "max_length", self.max_length, minimum=1)
        if self.min_length > self.max_length:
            raise ValueError(
                f"ListOps: `min_length` must not exceed `max_length`, got "
                f"min_length={self.min_length} and max_length={self.max_length}."
            )
        if not (isinstance(self.leaf_prob, (int, float)) and 0 <= self.leaf_prob < 1):
            raise ValueError(
                f"ListOps: `leaf_prob` must lie in [0, 1), got leaf_prob={self.leaf_prob!r}."
            )
        longest = 1
        for _ in range(self.max_depth - 1):
            longest = 2 + self.max_args * longest
        if self.min_length > longest:
            raise ValueError(
                f"ListOps: `min_length` exceeds the longest tree ({longest} tokens) that "
                f"`max_depth` and `max_args` allow; got min_length={self.min_length}, "
                f"max_depth={self.max_depth} and max_args={self.max_args}."
            )

    @property
    def vocab_size(self) -> int:
        return len(TOKENS)

    @property
    def input_size(self) -> None:
        return None

    @property
    def num_classes(self) -> int:
        return 10

    def input_length(self, length: int | None = None) -> int:
        no_length(self, length)
        return self.max_length

    def baseline(self) -> Baseline:
        value = measured_majority(self, 1000)
        return Baseline("accuracy", value, "majority class, measured on 1000 samples")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        uniform = _Uniforms(stream.rng())
        inputs = np.full((batch_size, self.max_length), PAD, np.int32)
        mask = np.zeros((batch_size, self.max_length), bool)
        targets = np.empty(batch_size, np.int32)
        op_prob = 1.0 - self.leaf_prob
        i = rejected = 0
        while i < batch_size:
            tree = _sample_tree(uniform, self.max_depth, self.max_args, op_prob, self.max_length)
            if tree is None or not self.min_length <= len(tree[0]) <= self.max_length:
                rejected += 1
                if rejected > _MAX_REJECTIONS:
                    raise RuntimeError(
                        f"ListOps: {_MAX_REJECTIONS} trees in a row fell outside the lengths "
                        f"[{self.min_length}, {self.max_length}]; widen the window."
                    )
                continue
            rejected = 0
            tokens, value = tree
            inputs[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = True
            targets[i] = value
            i += 1
        return Batch(inputs, targets, mask)
