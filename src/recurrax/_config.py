r"""`ModelConfig`: every hyper-parameter of a `SequenceModel` as JSON-able values, and the
model it builds (mixers from the registry)."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ._bidirectional import Bidirectional
from ._block import GLUBlock, HawkBlock, make_norm, MixerMLPBlock
from ._checks import check_positive_int
from ._mixer import AbstractMixer
from ._model import _POOLINGS, SequenceModel
from ._registry import mixer_spec
from ._scan import AbstractScan
from ._validate import check_bool, check_real


_BLOCKS = ("glu", "mlp", "hawk")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    r"""Every hyper-parameter of a [`recurrax.SequenceModel`][] as plain JSON-able values: what
    checkpoints store and experiments vary. `build(key=...)` makes the model.

    **Fields:**

    - `mixer`: a registered mixer ([`recurrax.registered_mixers`][]): the built-in
        `"lru"`, `"ssm"`, `"mingru"`, `"minlstm"`, `"gru"`, `"lstm"`, `"rglru"`
        ([`recurrax.RGLRU`][]) and `"selective-ssm"` ([`recurrax.SelectiveSSM`][]), or one
        of the user's ([`recurrax.register_mixer`][]).
    - `d_model`, `depth`, `output_size`.
    - `vocab_size` (token inputs) or `input_size` (feature inputs): exactly one.
    - `block`: `"glu"` (the LRU paper's, [`recurrax.GLUBlock`][]), `"mlp"` (the minRNN
        paper's, [`recurrax.MixerMLPBlock`][]) or `"hawk"` (Hawk's, [`recurrax.HawkBlock`][],
        with `conv_kernel` and `mlp_expansion` as given: 4 and 3 in Hawk).
    - `state_size`: $N$ of the LRU/SSM/selective SSM.
    - `expansion`: the mixer's width over `d_model` in an `"mlp"` or `"hawk"` block (6 in
        the minRNN paper's selective copying); 1 in a `"glu"` block.
    - `norm` (`"batch"`, `"layer"`, `"rms"` or `None`), `prenorm`, `final_norm`.
    - `dropout`, `conv_kernel` (`None` or e.g. 4), `mlp_expansion` (`None` or e.g. 4).
    - `pooling`: `"mean"`, `"last"` or `"none"`.
    - `bidirectional`: LRU/SSM with their own reverse direction, other mixers through
        [`recurrax.Bidirectional`][].
    - `mixer_options`: keyword arguments of the mixer's constructor (`r_min`, `r_max`,
        `max_phase`; `log_space`, `forget_bias`; for the SSM `init` in
        `"hippo"`/`"s4d-lin"`/`"s4d-inv"`, `discretisation` in
        `"zoh"`/`"bilinear"`/`"forward-euler"`/`"backward-euler"`, `delta`; for the GRU
        and LSTM `solver` in `"sequential"`/`"deer"`/`"quasi-deer"`/`"damped-quasi-deer"`,
        or `{"name": "deer", "max_steps": 50, ...}` with the solver's arguments).
        Options the mixer does not take are refused.
    - `param_dtype` (`"float32"`, `"bfloat16"`, ...), `compute_dtype` (or `None`).

    !!! example

        ```python
        import jax
        import recurrax

        config = recurrax.ModelConfig(mixer="lru", d_model=8, depth=2, state_size=8,
                                      output_size=5, vocab_size=11)
        assert recurrax.ModelConfig.from_dict(config.to_dict()) == config   # JSON-able
        model, state = config.build(key=jax.random.key(0))       # state: BatchNorm's statistics
        ```
    """

    mixer: str = "lru"
    d_model: int = 64
    depth: int = 2
    output_size: int = 10
    vocab_size: int | None = None
    input_size: int | None = None
    block: str = "glu"
    state_size: int = 64
    expansion: int = 1
    norm: str | None = "batch"
    prenorm: bool = True
    final_norm: bool = False
    dropout: float = 0.0
    conv_kernel: int | None = None
    mlp_expansion: int | None = None
    pooling: str = "mean"
    bidirectional: bool = False
    mixer_options: dict = dataclasses.field(default_factory=dict)
    param_dtype: str = "float32"
    compute_dtype: str | None = None

    def __post_init__(self):
        owner = "ModelConfig"
        spec = mixer_spec(self.mixer, owner=owner)
        for name, options in (("block", _BLOCKS), ("pooling", _POOLINGS)):
            if getattr(self, name) not in options:
                raise ValueError(
                    f"{owner}: `{name}` must be one of {options}, got "
                    f"{name}={getattr(self, name)!r}."
                )
        if self.norm not in ("batch", "layer", "rms", None):
            raise ValueError(
                f"{owner}: `norm` must be 'batch', 'layer', 'rms' or None, got norm={self.norm!r}."
            )
        for name in ("d_model", "depth", "output_size", "state_size", "expansion"):
            check_positive_int(owner, name, getattr(self, name))
        if (self.vocab_size is None) == (self.input_size is None):
            raise ValueError(
                f"{owner}: give exactly one of `vocab_size` (token inputs) and `input_size` "
                f"(feature inputs), got vocab_size={self.vocab_size!r}, "
                f"input_size={self.input_size!r}."
            )
        for name in ("vocab_size", "input_size", "conv_kernel", "mlp_expansion"):
            if getattr(self, name) is not None:
                check_positive_int(owner, name, getattr(self, name))
        if self.block == "glu" and (
            self.expansion != 1 or self.conv_kernel is not None or self.mlp_expansion is not None
        ):
            raise ValueError(
                f"{owner}: the 'glu' block has no expansion, convolution or MLP; got "
                f"expansion={self.expansion}, conv_kernel={self.conv_kernel}, "
                f"mlp_expansion={self.mlp_expansion} (use block='mlp')."
            )
        for name in ("prenorm", "final_norm", "bidirectional"):
            check_bool(owner, name, getattr(self, name))
        if not isinstance(self.mixer_options, dict):
            raise ValueError(
                f"{owner}: `mixer_options` must be a dict of the mixer's keyword arguments, got "
                f"mixer_options={self.mixer_options!r:.80}."
            )
        if not 0 <= check_real(owner, "dropout", self.dropout) < 1:
            raise ValueError(f"{owner}: `dropout` must be in [0, 1), got dropout={self.dropout!r}.")
        for name in ("param_dtype", "compute_dtype"):
            value = getattr(self, name)
            if value is None and name == "compute_dtype":
                continue
            try:
                ok = jnp.issubdtype(np.dtype(value), jnp.floating)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"{owner}: `{name}` must name a floating dtype, got {value!r}.")
        try:
            json.dumps(self.mixer_options)
        except TypeError as error:
            raise ValueError(
                f"{owner}: `mixer_options` must be JSON-serialisable ({error})."
            ) from None
        spec.check_options(self.mixer_options, owner=owner)

    def to_dict(self) -> dict:
        """The configuration as a JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """The configuration from `to_dict()`'s output.

        **Raises:** `ValueError` naming unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown keys {unknown}.")
        return cls(**data)

    def make_mixer(
        self, width: int, *, key: PRNGKeyArray, method: AbstractScan | None = None
    ) -> AbstractMixer:
        """The configured mixer for blocks of `width` features, built by its registered
        [`recurrax.MixerSpec`][]: minGRU/minLSTM/GRU/LSTM map `width -> expansion * width`;
        the LRU, the SSMs and the RG-LRU work at `expansion * width` (the block projects in
        and out). `method`: the scan strategy of the linear mixers (not part of the
        configuration: it changes how, not what, they compute).

        **Raises:** `ValueError` when `method` is given to a mixer that takes none."""
        spec = mixer_spec(self.mixer)
        options = spec.resolve_options(self.mixer_options)
        if method is not None:
            if not spec.scan_strategy:
                raise ValueError(
                    f"ModelConfig: the {self.mixer!r} mixer takes no scan strategy (a nonlinear "
                    f"recurrence takes a `solver` in mixer_options), got method={method!r}."
                )
            options["method"] = method
        dtype = np.dtype(self.param_dtype)

        def make(k, **extra):
            return spec.build(
                width,
                width * self.expansion,
                self.state_size,
                dtype=dtype,
                key=k,
                **options,
                **extra,
            )

        if not self.bidirectional:
            return make(key)
        if spec.bidirectional:
            return make(key, bidirectional=True)
        k1, k2 = jax.random.split(key)
        return Bidirectional(make(k1), make(k2))

    def build(
        self, *, key: PRNGKeyArray, method: AbstractScan | None = None
    ) -> tuple[SequenceModel, eqx.nn.State]:
        """`(model, state)`: the model and its normalisation state (empty without
        BatchNorm), as `equinox.nn.make_with_state` gives them. `method`: the scan strategy
        of every linear mixer (e.g. [`recurrax.SequenceParallelScan`][]); `None` for the
        default."""
        return eqx.nn.make_with_state(_build)(self, key, method)


def _build(config: ModelConfig, key, method=None) -> SequenceModel:
    dtype = np.dtype(config.param_dtype)
    d = config.d_model
    k_enc, k_head, k_blocks = jax.random.split(key, 3)
    if config.vocab_size is not None:
        encoder = eqx.nn.Embedding(config.vocab_size, d, dtype=dtype, key=k_enc)
    else:
        encoder = eqx.nn.Linear(config.input_size, d, dtype=dtype, key=k_enc)
    blocks = []
    for k in jax.random.split(k_blocks, config.depth):
        k_mixer, k_block = jax.random.split(k)
        common = dict(norm=config.norm, prenorm=config.prenorm, dropout=config.dropout, dtype=dtype)
        if config.block == "glu":
            mixer = config.make_mixer(d, key=k_mixer, method=method)
            blocks.append(GLUBlock(mixer, key=k_block, **common))
        elif config.block == "hawk":
            mixer = config.make_mixer(d, key=k_mixer, method=method)
            sizes = dict(conv_kernel=config.conv_kernel, mlp_expansion=config.mlp_expansion)
            blocks.append(HawkBlock(d, mixer, key=k_block, **sizes, **common))
        else:
            mixer = config.make_mixer(d, key=k_mixer, method=method)
            blocks.append(
                MixerMLPBlock(
                    d,
                    mixer,
                    conv_kernel=config.conv_kernel,
                    mlp_expansion=config.mlp_expansion,
                    key=k_block,
                    **common,
                )
            )
    final_norm = make_norm(config.norm, d, dtype=dtype) if config.final_norm else None
    head = eqx.nn.Linear(d, config.output_size, dtype=dtype, key=k_head)
    return SequenceModel(
        encoder,
        blocks,
        head,
        final_norm=final_norm,
        pooling=config.pooling,
        compute_dtype=config.compute_dtype,
    )
