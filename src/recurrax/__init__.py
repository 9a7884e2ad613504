"""recurrax: linear recurrent sequence models (LRU, diagonal SSMs, minGRU, minLSTM) on one
linear-recurrence engine, in JAX and Equinox."""

import importlib.metadata

from ._recurrence import (
    linear_recurrence as linear_recurrence,
    log_linear_recurrence as log_linear_recurrence,
)
from ._scan import (
    AbstractScan as AbstractScan,
    AssociativeScan as AssociativeScan,
    AutoScan as AutoScan,
    ChunkedScan as ChunkedScan,
    default_chunk_size as default_chunk_size,
    SequentialScan as SequentialScan,
)


try:
    __version__ = importlib.metadata.version("recurrax")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
    __version__ = "0+unknown"
