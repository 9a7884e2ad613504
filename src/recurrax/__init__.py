"""recurrax: linear recurrent sequence models (LRU, diagonal SSMs, minGRU, minLSTM) on one
linear-recurrence engine, in JAX and Equinox."""

import importlib.metadata

from ._discretisation import (
    AbstractDiscretisation as AbstractDiscretisation,
    BackwardEuler as BackwardEuler,
    Bilinear as Bilinear,
    ForwardEuler as ForwardEuler,
    ZeroOrderHold as ZeroOrderHold,
)
from ._init import (
    AbstractSSMInit as AbstractSSMInit,
    hippo_legs_matrix as hippo_legs_matrix,
    HiPPOLegS as HiPPOLegS,
    ring_init as ring_init,
    S4DInv as S4DInv,
    S4DLin as S4DLin,
)
from ._layer import AbstractRecurrentLayer as AbstractRecurrentLayer
from ._lru import LRU as LRU, stability_floor as stability_floor
from ._lti import AbstractLTILayer as AbstractLTILayer
from ._minrnn import g as g, log_g as log_g, MinGRU as MinGRU, MinLSTM as MinLSTM
from ._recurrence import (
    linear_recurrence as linear_recurrence,
    log_linear_recurrence as log_linear_recurrence,
)
from ._rnn import GRU as GRU, LSTM as LSTM
from ._scan import (
    AbstractScan as AbstractScan,
    AssociativeScan as AssociativeScan,
    AutoScan as AutoScan,
    ChunkedScan as ChunkedScan,
    default_chunk_size as default_chunk_size,
    SequentialScan as SequentialScan,
)
from ._ssm import DiagonalSSM as DiagonalSSM
from ._system import (
    ContinuousDiagonalSystem as ContinuousDiagonalSystem,
    DenseLinearSystem as DenseLinearSystem,
    DiscreteDiagonalSystem as DiscreteDiagonalSystem,
    glorot_dense_system as glorot_dense_system,
)


try:
    __version__ = importlib.metadata.version("recurrax")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
    __version__ = "0+unknown"
