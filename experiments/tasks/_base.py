"""The common interface of every task: `AbstractTask`, `Batch`, `Baseline`, `Stream`."""

import abc
import functools
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np


Kind = Literal["classification", "token", "regression"]
InputKind = Literal["tokens", "features"]
Pooling = Literal["mean", "last", "none"]
Split = Literal["train", "test"]

SPLITS: tuple[str, ...] = ("train", "test")


class Batch(NamedTuple):
    """One batch of NumPy arrays (a NamedTuple, so also a JAX pytree).

    - `inputs`: `(batch, length)` int32 tokens or `(batch, length, input_size)` float32 features.
    - `targets`: `(batch,)` int32 for classification, `(batch, length)` int32 for token tasks
        (0 where `target_mask` is False), `(batch,)` float32 for regression.
    - `mask`: `(batch, length)` bool, True at valid input positions. Padding is always on the
        right, so the valid positions of a row are a prefix and "last" pooling reads position
        `mask.sum() - 1`.
    - `target_mask`: `(batch, length)` bool for token tasks (the scored positions), else `None`.
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    target_mask: np.ndarray | None = None


class Baseline(NamedTuple):
    """A chance or trivial baseline to print beside results.

    `metric` is `"accuracy"` (higher is better; token accuracy on the scored positions for
    token tasks), `"mse"` or `"cross_entropy"` (nats per scored position; lower is better).
    """

    metric: str
    value: float
    description: str


class Stream(NamedTuple):
    """Where a batch sits in a data stream: `(seed, split, step)`."""

    seed: int
    split: str
    step: int

    def rng(self, *salt: int) -> np.random.Generator:
        """A generator that depends on `(seed, split, step, *salt)` only."""
        return np.random.default_rng([self.seed, SPLITS.index(self.split), self.step, *salt])


def check_int(owner: str, name: str, value: Any, *, minimum: int) -> None:
    """`value` must be an integer (not a bool) no smaller than `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{owner}: `{name}` must be an integer, got {name}={value!r}.")
    if value < minimum:
        raise ValueError(f"{owner}: `{name}` must be at least {minimum}, got {name}={value!r}.")


def no_length(task: "AbstractTask", length: int | None) -> None:
    """For tasks whose sequence length cannot be overridden."""
    if length is not None:
        raise ValueError(
            f"{type(task).__name__}: this task has no length override; `length` must be None, "
            f"got length={length!r}."
        )


class AbstractTask(abc.ABC):
    r"""A synthetic (or bundled-data) sequence task that makes batches on the fly.

    Concrete tasks are frozen dataclasses whose fields are the hyper-parameters, with defaults
    sized for a small CPU run; `PAPER` holds the papers' settings and `paper()` builds them.

    **Class attributes:**

    - `name`: the registry name, e.g. `"selective_copying"`.
    - `kind`: `"classification"` (one label per sequence), `"token"` (a label per position,
        scored where `Batch.target_mask`) or `"regression"` (one real target).
    - `input_kind`: `"tokens"` (int32 inputs below `vocab_size`) or `"features"` (float32 inputs
        of width `input_size`).
    - `pooling`: what a [`recurrax.SequenceModel`][] needs: `"last"`, `"mean"` (both over
        `Batch.mask`) or `"none"` (per-position outputs, for token tasks).
    - `PAPER`: the papers' hyper-parameters (a dict of field overrides).

    **Streams:** `batch(seed, step, ...)` depends on `(seed, split, step)` only (and the batch
    size), so a resumed run sees the same data. The `"test"` split is a different random
    stream (bundled data: a fixed partition) and never the training stream.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    input_kind: ClassVar[InputKind]
    pooling: ClassVar[Pooling]
    PAPER: ClassVar[dict[str, Any]]

    # -- sizes ---------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int | None:
        """Token vocabulary size (inputs lie in `[0, vocab_size)`); `None` for features."""

    @property
    @abc.abstractmethod
    def input_size(self) -> int | None:
        """Feature width for feature inputs; `None` for tokens."""

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """The model's output size (1 for regression)."""

    @abc.abstractmethod
    def input_length(self, length: int | None = None) -> int:
        """The width of `Batch.inputs` (padded width for variable lengths) for a `length`
        override (`None`: the task's own). Raises `ValueError` for a bad override."""

    @abc.abstractmethod
    def baseline(self) -> Baseline:
        """The chance or trivial baseline of the task as configured."""

    @abc.abstractmethod
    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        """The batch at `stream` (arguments already checked)."""

    # -- public calls --------------------------------------------------------------------

    @classmethod
    def paper(cls, **overrides: Any):
        """The task with the papers' settings (`PAPER`), then `overrides`."""
        return cls(**{**cls.PAPER, **overrides})

    def batch(
        self,
        seed: int,
        step: int,
        batch_size: int,
        *,
        split: str = "train",
        length: int | None = None,
    ) -> Batch:
        """The batch number `step` of the `split` stream of `seed`.

        **Arguments:**

        - `seed`, `step`: non-negative integers; the batch depends on them, `split` and
            `batch_size` only.
        - `batch_size`: at least 1.
        - `split`: `"train"` or `"test"`.
        - `length`: overrides the task's sequence length where it has one (see the task).

        **Returns:** a [`Batch`][].

        **Raises:** `ValueError` for a bad argument, naming it.
        """
        owner = f"{type(self).__name__}.batch"
        check_int(owner, "seed", seed, minimum=0)
        check_int(owner, "step", step, minimum=0)
        check_int(owner, "batch_size", batch_size, minimum=1)
        if split not in SPLITS:
            raise ValueError(f"{owner}: `split` must be one of {SPLITS}, got split={split!r}.")
        width = self.input_length(length)
        out = self._generate(Stream(int(seed), split, int(step)), int(batch_size), length)
        assert out.inputs.shape[:2] == (batch_size, width), (out.inputs.shape, width)
        return out

    def test_set(self, seed: int, size: int, *, length: int | None = None) -> Batch:
        """A fixed held-out set: the first batch (of `size`) of the test stream."""
        return self.batch(seed, 0, size, split="test", length=length)


@functools.lru_cache(maxsize=64)
def measured_majority(task: AbstractTask, samples: int = 2000) -> float:
    """Frequency of the most common label in a fixed sample of the training stream (the
    accuracy of always predicting the majority class)."""
    targets = task.batch(2**31 - 1, 0, samples).targets
    return float(np.bincount(targets, minlength=task.num_classes).max() / samples)
