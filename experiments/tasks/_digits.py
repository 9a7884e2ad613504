"""Sequential and permuted digits from scikit-learn's bundled `load_digits` (no download)."""

import dataclasses
import functools
from typing import ClassVar

import numpy as np

from ._base import AbstractTask, Baseline, Batch, check_int, no_length, Stream


NUM_IMAGES = 1797


@functools.cache
def load_pixels() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 images as `(1797, 64)` float32 pixels scaled to [0, 1] (row-major) and the
    `(1797,)` int32 labels. Read-only arrays, loaded once."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The digits task needs scikit-learn (`pip install scikit-learn`); its data ship "
            "inside the package, nothing is downloaded."
        ) from error
    data = load_digits()
    pixels = (np.asarray(data.data, np.float64) / 16.0).astype(np.float32)
    labels = np.asarray(data.target, np.int32)
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


@dataclasses.dataclass(frozen=True)
class Digits(AbstractTask):
    r"""Classify an 8 × 8 digit read pixel by pixel (length 64, one feature in [0, 1]).

    `permuted=True` reads the pixels in a fixed random order (`permutation`, from
    `permutation_seed`). The 1797 images are split once, by `split_seed` and independently of
    the training seed, into `test_size` test images (300) and the rest for training (1497), so
    no seed ever trains on a test image. `batch` walks the split in epochs: batch `step` holds
    the examples `step * batch_size … (step + 1) * batch_size - 1` of the concatenation of
    per-epoch shuffles seeded by `(seed, split, epoch)`; `test_set(seed, 300)` is the whole
    test split. Ten classes; pooling `"mean"`; no `length` override. Baseline: the majority
    class of the test split. There is no paper setting (`PAPER` is empty).
    """

    permuted: bool = False
    test_size: int = 300
    split_seed: int = 0
    permutation_seed: int = 0

    name: ClassVar[str] = "digits"
    kind: ClassVar[str] = "classification"
    input_kind: ClassVar[str] = "features"
    pooling: ClassVar[str] = "mean"
    PAPER: ClassVar[dict] = {}

    def __post_init__(self):
        if not isinstance(self.permuted, (bool, np.bool_)):
            raise ValueError(f"Digits: `permuted` must be a bool, got permuted={self.permuted!r}.")
        check_int("Digits", "test_size", self.test_size, minimum=1)
        if self.test_size >= NUM_IMAGES:
            raise ValueError(
                f"Digits: `test_size` must leave training images (below {NUM_IMAGES}), got "
                f"test_size={self.test_size}."
            )
        check_int("Digits", "split_seed", self.split_seed, minimum=0)
        check_int("Digits", "permutation_seed", self.permutation_seed, minimum=0)

    @property
    def vocab_size(self) -> None:
        return None

    @property
    def input_size(self) -> int:
        return 1

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def permutation(self) -> np.ndarray:
        """The pixel order: position `t` of a sequence reads pixel `permutation[t]` (the
        identity unless `permuted`)."""
        if not self.permuted:
            return np.arange(64)
        return np.random.default_rng(self.permutation_seed).permutation(64)

    def split_indices(self, split: str) -> np.ndarray:
        """Indices into `load_digits()` of the images of `split` (`"train"` or `"test"`)."""
        order = np.random.default_rng(self.split_seed).permutation(NUM_IMAGES)
        if split == "test":
            return order[: self.test_size]
        if split == "train":
            return order[self.test_size :]
        raise ValueError(f"Digits: `split` must be 'train' or 'test', got split={split!r}.")

    def input_length(self, length: int | None = None) -> int:
        no_length(self, length)
        return 64

    def baseline(self) -> Baseline:
        labels = load_pixels()[1][self.split_indices("test")]
        value = float(np.bincount(labels, minlength=10).max() / labels.size)
        return Baseline("accuracy", value, "majority class of the test split")

    def _generate(self, stream: Stream, batch_size: int, length: int | None) -> Batch:
        pixels, labels = load_pixels()
        pool = self.split_indices(stream.split)
        n = pool.size
        flat = stream.step * batch_size + np.arange(batch_size)
        epochs, where = flat // n, flat % n
        chosen = np.empty(batch_size, np.int64)
        for epoch in np.unique(epochs):  # one or a few epochs per batch
            order = Stream(stream.seed, stream.split, int(epoch)).rng(1).permutation(n)
            sel = epochs == epoch
            chosen[sel] = pool[order[where[sel]]]
        inputs = pixels[chosen][:, self.permutation, None]
        return Batch(inputs, labels[chosen].copy(), np.ones((batch_size, 64), bool))
