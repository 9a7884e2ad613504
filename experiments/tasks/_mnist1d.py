"""MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", 2024), generated
offline by the optional `mnist1d` package (the `experiments` extra)."""

import dataclasses
import functools
import random
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Baseline, Batch, check_int, no_length, Stream


LENGTH = 40
NUM_CLASSES = 10
MISSING = (
    "The mnist1d tasks need the `mnist1d` package, an optional dependency of the experiments: "
    "install it with `pip install -e '.[experiments]'` (or `pip install mnist1d`). Its data "
    "are generated procedurally; nothing is downloaded."
)


def _make_dataset():
    """The package's `make_dataset` and `get_dataset_args`, or an ImportError naming the
    extra."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError(MISSING) from error
    return make_dataset, get_dataset_args


@functools.cache
def load_mnist1d(
    shuffled: bool = False, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The MNIST-1D data set of the package's default arguments (`seed` 42 is the published
    one): `(x_train, y_train, x_test, y_test)`, 4,000 and 1,000 sequences of length 40 as
    float32 and int32 labels. `shuffled=True`: the package's fixed permutation of time
    (`shuffle_seq`, drawn from the same seed). Generated once per process and arguments by
    `mnist1d.data.make_dataset` (never `get_dataset`, which downloads), offline; read-only
    arrays. The package seeds NumPy's and Python's global generators: their states are
    restored afterwards.

    **Raises:** `ImportError` naming the `experiments` extra when `mnist1d` is missing."""
    make_dataset, get_dataset_args = _make_dataset()
    args = get_dataset_args()
    args.shuffle_seq = bool(shuffled)
    args.seed = int(seed)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    arrays = (
        np.asarray(data["x"], np.float32),
        np.asarray(data["y"], np.int32),
        np.asarray(data["x_test"], np.float32),
        np.asarray(data["y_test"], np.int32),
    )
    for array in arrays:
        array.flags.writeable = False
    return arrays


@dataclasses.dataclass(frozen=True)
class MNIST1D(AbstractTask):
    r"""Classify an MNIST-1D sequence (length 40, one feature, ten classes): a digit template
    padded, translated, scaled, sheared and noised (Greydanus & Kobak 2024). The data set is
    the package's default (4,000 training and 1,000 test sequences, seed 42), so the results
    compare with its published table (`data_seed` 42; another seed generates another data set
    of the same kind). `batch` walks the training split in epochs (per-epoch
    shuffles seeded by `(seed, split, epoch)`); `test_set(seed, 1000)` is the whole test
    split. Pooling `"mean"`; no `length` override; no paper setting (`PAPER` is empty).
    Baseline: the majority class of the test split.

    Needs the optional `mnist1d` package (`pip install -e '.[experiments]'`).
    """

    data_seed: int = 42

    test_size: ClassVar[int] = 1000
    shuffled: ClassVar[bool] = False

    name: ClassVar[str] = "mnist1d"
    kind: ClassVar[str] = "classification"
    input_kind: ClassVar[str] = "features"
    pooling: ClassVar[str] = "mean"
    PAPER: ClassVar[dict] = {}

    def __post_init__(self):
        check_int(type(self).__name__, "data_seed", self.data_seed, minimum=0)

    @property
    def vocab_size(self) -> None:
        return None

    @property
    def input_size(self) -> int:
        return 1

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """`(inputs (n, 40), labels (n,))` of `split` (`"train"` or `"test"`)."""
        x_train, y_train, x_test, y_test = load_mnist1d(self.shuffled, int(self.data_seed))
        if split == "train":
            return x_train, y_train
        if split == "test":
            return x_test, y_test
        raise ValueError(
            f"{type(self).__name__}: `split` must be 'train' or 'test', got split={split!r}."
        )

    def input_length(self, length: int | None = None) -> int:
        no_length(self, length)
        return LENGTH

    def baseline(self) -> Baseline:
        labels = self.arrays("test")[1]
        value = float(np.bincount(labels, minlength=NUM_CLASSES).max() / labels.size)
        return Baseline("accuracy", value, "majority class of the test split")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        inputs, labels = self.arrays(stream.split)
        n = labels.size
        flat = stream.step * batch_size + np.arange(batch_size)
        epochs, where = flat // n, flat % n
        chosen = np.empty(batch_size, np.int64)
        for epoch in np.unique(epochs):  # one or a few epochs per batch
            order = Stream(stream.seed, stream.split, int(epoch)).rng(1).permutation(n)
            sel = epochs == epoch
            chosen[sel] = order[where[sel]]
        return Batch(
            inputs[chosen][:, :, None].copy(),
            labels[chosen].copy(),
            np.ones((batch_size, LENGTH), bool),
        )


@dataclasses.dataclass(frozen=True)
class ShuffledMNIST1D(MNIST1D):
    """MNIST-1D with the package's fixed permutation of time (`shuffle_seq=True`): the same
    digits, read in a scrambled order that destroys the spatial inductive bias (the paper's
    "shuffled" column)."""

    shuffled: ClassVar[bool] = True
    name: ClassVar[str] = "mnist1d-shuffled"
