"""recurrax: linear recurrent sequence models (LRU, diagonal SSMs, minGRU, minLSTM) on one
linear-recurrence engine, in JAX and Equinox."""

import importlib.metadata

from ._bidirectional import Bidirectional as Bidirectional
from ._block import (
    AbstractBlock as AbstractBlock,
    GLUBlock as GLUBlock,
    HawkBlock as HawkBlock,
    MixerMLPBlock as MixerMLPBlock,
)
from ._checkpoint import (
    Checkpoint as Checkpoint,
    CheckpointError as CheckpointError,
    load_checkpoint as load_checkpoint,
    read_checkpoint_header as read_checkpoint_header,
    save_checkpoint as save_checkpoint,
)
from ._checkpoint_manager import CheckpointManager as CheckpointManager
from ._config import ModelConfig as ModelConfig
from ._conv import CausalDepthwiseConv as CausalDepthwiseConv
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
from ._layer import (
    AbstractRecurrentLayer as AbstractRecurrentLayer,
    complex_projection as complex_projection,
    real_readout as real_readout,
)
from ._lru import LRU as LRU, stability_floor as stability_floor
from ._lti import AbstractLTILayer as AbstractLTILayer, mimo_kernel as mimo_kernel
from ._minrnn import g as g, log_g as log_g, MinGRU as MinGRU, MinLSTM as MinLSTM
from ._mixer import AbstractMixer as AbstractMixer
from ._model import SequenceModel as SequenceModel
from ._nonlinear import (
    AbstractNewtonSolver as AbstractNewtonSolver,
    AbstractNonlinearSolver as AbstractNonlinearSolver,
    DampedQuasiDEER as DampedQuasiDEER,
    DEER as DEER,
    nonlinear_recurrence as nonlinear_recurrence,
    QuasiDEER as QuasiDEER,
    Sequential as Sequential,
)
from ._norm import (
    AbstractNorm as AbstractNorm,
    BatchNorm as BatchNorm,
    LayerNorm as LayerNorm,
    RMSNorm as RMSNorm,
)
from ._optimizer import (
    make_optimizer as make_optimizer,
    warmup_cosine_schedule as warmup_cosine_schedule,
)
from ._param_groups import (
    NO_DECAY_TYPES as NO_DECAY_TYPES,
    param_labels as param_labels,
    RECURRENT_FIELDS as RECURRENT_FIELDS,
)
from ._recurrence import (
    linear_recurrence as linear_recurrence,
    log_linear_recurrence as log_linear_recurrence,
)
from ._registry import (
    load_plugins as load_plugins,
    mixer_spec as mixer_spec,
    MixerSpec as MixerSpec,
    register_mixer as register_mixer,
    registered_mixers as registered_mixers,
)
from ._rglru import RGLRU as RGLRU, sqrt_bounded_derivative as sqrt_bounded_derivative
from ._rnn import GRU as GRU, LSTM as LSTM
from ._scan import (
    AbstractScan as AbstractScan,
    AssociativeScan as AssociativeScan,
    AutoScan as AutoScan,
    ChunkedScan as ChunkedScan,
    default_chunk_size as default_chunk_size,
    SequentialScan as SequentialScan,
)
from ._segments import pool_segments as pool_segments, segment_starts as segment_starts
from ._selective_ssm import SelectiveSSM as SelectiveSSM
from ._sequence_parallel import SequenceParallelScan as SequenceParallelScan
from ._sharding import (
    make_data_mesh as make_data_mesh,
    replicate as replicate,
    shard_batch as shard_batch,
)
from ._ssm import DiagonalSSM as DiagonalSSM
from ._steps import (
    eval_step as eval_step,
    make_data_parallel_train_step as make_data_parallel_train_step,
    make_eval_step as make_eval_step,
    make_train_step as make_train_step,
    train_step as train_step,
)
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
