r"""Deep sequence models: encoder → residual blocks → pooling → head, streaming included."""

from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from ._block import AbstractBlock
from ._linear import dense
from ._mixer import AbstractMixer, check_mask, check_resets
from ._norm import AbstractNorm, BatchNorm
from ._segments import pool_segments
from ._validate import check_array, check_state


Pooling = Literal["mean", "last", "none"]
_POOLINGS = ("mean", "last", "none")
_sentinel: Any = object()


def _keeps_dtype(node) -> bool:
    """A mixer with parameters that `compute_dtype` leaves alone (`transition_fields`)."""
    return isinstance(node, AbstractMixer) and bool(type(node).transition_fields)


def _is_float(x) -> bool:
    return eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating)


class SequenceModel(eqx.Module):
    r"""A deep sequence model built functionally from Equinox modules:
    encoder (token embedding or linear) → blocks → optional final norm → pooling → head.

    Acts on one example (`jax.vmap` for batches; with BatchNorm, vmap with
    `axis_name="batch"` and thread the `equinox.nn.State`):

    - `model(x, *, mask=None, key=None) -> y`, or `model(x, state, ...) -> (y, state)` when
        a normalisation state is passed (models with BatchNorm need one);
    - streaming, as for the layers: `model.init_state()`,
        `model.step(h, x_t) -> (h, y_t)` and `model.scan(h, x) -> (h, y)` give the per-step
        outputs (the `pooling="none"` outputs) of the whole stack, the convolutions'
        histories included; feeding tokens one at a time, or a sequence in pieces with the
        carried `h`, gives the one-call outputs. Streaming is inference: dropout is off and
        BatchNorm must be in inference mode (`equinox.nn.inference_mode`; pass its state).

    `x` is `(length,)` integer tokens for an embedding encoder, `(length, input_size)`
    features for a linear one. `mask` (boolean `(length,)`) marks valid steps: padding never
    changes the outputs at valid positions, pooling uses valid positions only, and reverse
    scans of bidirectional mixers start at each sequence's true end.

    **Packed sequences.** `resets` (boolean `(length,)`, `True` at the first step of each
    segment; [`recurrax.segment_starts`][] makes it from segment ids) restarts every mixer
    and convolution at each segment, so a row of several examples gives each example's own
    per-step outputs (`pooling="none"`); with `"mean"`/`"last"` pooling pass `num_segments`
    to get one output per segment (see [`recurrax.pool_segments`][]).

    **Precision:** `compute_dtype` (e.g. `jnp.bfloat16`) casts the floating parameters to
    that dtype inside every call (float32 master parameters, low-precision activations); a
    model built with `bfloat16` parameters computes in bfloat16 throughout. Either way the
    recurrences are accumulated in float32. `compute_dtype` leaves the parameters of the
    recurrences' transitions (the LRU's `nu_log`, `theta_log`, `gamma_log`; the SSM's
    `Lambda_re_log`, `Lambda_im`, `log_step`) in their own dtype, so a bfloat16 model has
    the eigenvalues of its float32 parameters.

    **Fields:** `encoder`, `blocks` (a tuple of [`recurrax.AbstractBlock`][]), `final_norm`,
    `head` (`eqx.nn.Linear(d_model, output_size)`), `pooling`, `compute_dtype`.

    !!! example

        ```python
        import jax
        import recurrax

        model, state = recurrax.ModelConfig(
            mixer="mingru", d_model=8, depth=1, output_size=3, input_size=2, norm="layer"
        ).build(key=jax.random.key(0))
        assert isinstance(model, recurrax.SequenceModel)
        x = jax.random.normal(jax.random.key(1), (20, 2))        # (length, input)
        logits = model(x)                                        # (3,): mean pooling, then the head
        ```
    """

    encoder: eqx.nn.Embedding | eqx.nn.Linear
    blocks: tuple[AbstractBlock, ...]
    final_norm: AbstractNorm | None
    head: eqx.nn.Linear
    pooling: Pooling = eqx.field(static=True)
    compute_dtype: str | None = eqx.field(static=True)

    def __init__(
        self,
        encoder: eqx.nn.Embedding | eqx.nn.Linear,
        blocks: list[AbstractBlock] | tuple[AbstractBlock, ...],
        head: eqx.nn.Linear,
        *,
        final_norm: AbstractNorm | None = None,
        pooling: Pooling = "mean",
        compute_dtype=None,
    ):
        """**Arguments:**

        - `encoder`: `eqx.nn.Embedding(vocab_size, d_model)` for tokens or
            `eqx.nn.Linear(input_size, d_model)` for features.
        - `blocks`: residual blocks of width `d_model` ([`recurrax.GLUBlock`][],
            [`recurrax.MixerMLPBlock`][]).
        - `head`: `eqx.nn.Linear(d_model, output_size)`.
        - `final_norm`: a norm after the last block (usual with pre-norm blocks), or `None`.
        - `pooling`: `"mean"` or `"last"` over valid steps, or `"none"` (per-step outputs).
        - `compute_dtype`: cast floating parameters to this dtype when called, or `None`.

        **Raises:** `ValueError` if the widths of the parts do not chain or `pooling` is
        unknown.
        """
        if pooling not in _POOLINGS:
            raise ValueError(
                f"SequenceModel: `pooling` must be one of {_POOLINGS}, got pooling={pooling!r}."
            )
        if not isinstance(encoder, (eqx.nn.Embedding, eqx.nn.Linear)):
            raise ValueError(
                f"SequenceModel: `encoder` must be an eqx.nn.Embedding or eqx.nn.Linear, got "
                f"{type(encoder).__name__}."
            )
        blocks = tuple(blocks)
        width = _encoder_width(encoder)
        for i, block in enumerate(blocks):
            if not isinstance(block, AbstractBlock):
                raise ValueError(
                    f"SequenceModel: `blocks[{i}]` must be a recurrax block, got "
                    f"{type(block).__name__}."
                )
            if block.d_model != width:
                raise ValueError(
                    f"SequenceModel: `blocks[{i}]` has d_model={block.d_model} but the encoder "
                    f"gives width {width}."
                )
        if head.in_features != width:
            raise ValueError(
                f"SequenceModel: `head` takes {head.in_features} features but the blocks give "
                f"width {width}."
            )
        self.encoder, self.blocks, self.head = encoder, blocks, head
        self.final_norm = final_norm
        self.pooling = pooling
        self.compute_dtype = None if compute_dtype is None else str(np.dtype(compute_dtype))

    # -- properties ----------------------------------------------------------------------

    @property
    def d_model(self) -> int:
        return _encoder_width(self.encoder)

    @property
    def vocab_size(self) -> int | None:
        """The number of tokens for an embedding encoder, else `None`."""
        if isinstance(self.encoder, eqx.nn.Embedding):
            return self.encoder.num_embeddings
        return None

    @property
    def input_size(self) -> int | None:
        """The feature width for a linear encoder, else `None`."""
        if isinstance(self.encoder, eqx.nn.Linear):
            return self.encoder.in_features
        return None

    @property
    def output_size(self) -> int:
        return self.head.out_features

    @property
    def bidirectional(self) -> bool:
        return any(block.mixer.bidirectional for block in self.blocks)

    # -- internals -----------------------------------------------------------------------

    def _cast(self) -> "SequenceModel":
        r"""The model with its floating parameters in `compute_dtype`, except those that make
        a recurrence's transition (each mixer's `transition_fields`), which keep their dtype:
        rounding $\nu_{\log}$ to bfloat16 would move $|\lambda| = 0.9999$ by percents."""
        if self.compute_dtype is None:
            return self
        dtype = np.dtype(self.compute_dtype)

        def cast(p):
            return p.astype(dtype) if _is_float(p) else p

        def cast_node(node):
            if not _keeps_dtype(node):
                return cast(node)
            names = sorted(type(node).transition_fields)
            kept = [getattr(node, n) for n in names]
            return eqx.tree_at(
                lambda m: [getattr(m, n) for n in names], jax.tree.map(cast, node), kept
            )

        return jax.tree.map(cast_node, self, is_leaf=_keeps_dtype)

    def _encode(self, x, *, per_step: bool):
        owner = "SequenceModel"
        name = "x_t" if per_step else "x"
        check_array(owner, name, x)
        if isinstance(self.encoder, eqx.nn.Embedding):
            expected = "()" if per_step else "(length,)"
            if x.ndim != (0 if per_step else 1) or not jnp.issubdtype(x.dtype, jnp.integer):
                raise ValueError(
                    f"{owner}: `{name}` must be integer tokens of shape {expected} for an "
                    f"embedding encoder, got shape {tuple(x.shape)} and dtype {x.dtype}."
                )
            x = _check_tokens(x, self.encoder.num_embeddings, name)
            weight = self.encoder.weight
            return weight[x]
        features = self.encoder.in_features
        expected = f"({features},)" if per_step else f"(length, {features})"
        if x.ndim != (1 if per_step else 2) or x.shape[-1] != features:
            raise ValueError(
                f"{owner}: `{name}` must have shape {expected} for a linear encoder, got "
                f"shape {tuple(x.shape)}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{owner}: `{name}` must be floating features, got dtype {x.dtype}.")
        x = x.astype(self.encoder.weight.dtype)
        if per_step:
            x = x[None]
        z = dense(self.encoder, x)
        return z[0] if per_step else z

    def _body(self, z, state, h, mask, key, resets=None):
        n = len(self.blocks)
        keys = (None,) * n if key is None else jax.random.split(key, n)
        hs = []
        for i, block in enumerate(self.blocks):
            h_i = None if h is None else h[i]
            z, state, h_i = block.forward(z, state, h_i, mask=mask, resets=resets, key=keys[i])
            hs.append(h_i)
        if self.final_norm is not None:
            z, state = self.final_norm(z, state, mask=mask)
        return z, state, (None if h is None else tuple(hs))

    def _check_streaming(self, state):
        if self.bidirectional:
            raise ValueError(
                "SequenceModel: streaming (`scan`/`step`) is undefined for a bidirectional "
                "model (its reverse direction needs the whole sequence); call the model on "
                "the whole sequence."
            )
        norms = [
            leaf
            for leaf in jax.tree.leaves(self, is_leaf=lambda n: isinstance(n, BatchNorm))
            if isinstance(leaf, BatchNorm)
        ]
        if any(not norm.inference for norm in norms):
            raise ValueError(
                "SequenceModel: streaming uses BatchNorm's running statistics; switch the model "
                "to inference mode with equinox.nn.inference_mode(model) and pass its `state`."
            )
        if norms and state is None:
            raise ValueError(
                "SequenceModel: this model has BatchNorm; pass its `state` (running statistics)."
            )

    def _check_carried(self, h):
        check_state("SequenceModel", "h", h, jax.eval_shape(self.init_state))

    # -- the public calls ----------------------------------------------------------------

    def __call__(
        self,
        x: Int[Array, " length"] | Float[Array, "length input"],
        state: eqx.nn.State | None = _sentinel,
        *,
        resets: Bool[Array, " length"] | None = None,
        mask: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
        num_segments: int | None = None,
    ) -> (
        Float[Array, "*length_or_segments output"]
        | tuple[Float[Array, "*length_or_segments output"], eqx.nn.State]
    ):
        """**Arguments:**

        - `x`: tokens `(length,)` or features `(length, input_size)`.
        - `state`: the `equinox.nn.State` of the normalisations (needed with BatchNorm).
        - `resets`: boolean `(length,)`, `True` at the first step of each segment of a
            packed row: every segment is computed as if alone.
        - `mask`: boolean `(length,)`, `True` at valid steps.
        - `key`: for dropout (`None`: no dropout).
        - `num_segments`: with `resets` and mean/last pooling, the number of pooled outputs
            (one per segment; a missing segment pools to zeros, so its output is the head's
            bias; see [`recurrax.pool_segments`][]).

        **Returns:** `(output_size,)` for mean/last pooling, `(num_segments, output_size)`
        for mean/last pooling of a packed row, `(length, output_size)` for `"none"`; with
        `state` passed, the pair `(y, state)`.

        **Raises:** `ValueError` for inputs of the wrong shape or dtype, an empty sequence,
        tokens outside `[0, vocab_size)`, a bad mask or reset flags, mean/last pooling of a
        packed row without `num_segments`, or BatchNorm without a state.
        """
        model = self._cast()
        z = model._encode(x, per_step=False)
        check_mask("SequenceModel", mask, z.shape[0])
        if z.shape[0] == 0:
            raise ValueError(
                "SequenceModel: `x` is an empty sequence (length 0); a model call needs at "
                "least one step (pooling and normalisation over no steps are undefined). To "
                "carry a streaming state through an empty piece, use `scan`."
            )
        check_resets("SequenceModel", resets, z.shape[0])
        if self.pooling != "none" and (resets is None) != (num_segments is None):
            raise ValueError(
                f"SequenceModel: pooling a packed row needs both `resets` and `num_segments` "
                f"(one pooled output per segment), got resets "
                f"{'None' if resets is None else 'given'} and num_segments={num_segments!r}."
            )
        z, new_state, _ = model._body(
            z, None if state is _sentinel else state, None, mask, key, resets
        )
        if resets is not None and self.pooling != "none":
            y, _ = pool_segments(z, resets, num_segments, pooling=self.pooling, mask=mask)
        else:
            y = _pool(self.pooling, z, mask)
        y = dense(model.head, y[None])[0] if y.ndim == 1 else dense(model.head, y)
        return y if state is _sentinel else (y, new_state)

    def init_state(self) -> PyTree[Array]:
        """The streaming state of every block (recurrent states and convolution histories)."""
        return tuple(block.init_state() for block in self.blocks)

    def scan(
        self,
        h: PyTree[Array],
        x: Int[Array, " length"] | Float[Array, "length input"],
        *,
        state: eqx.nn.State | None = None,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
    ) -> tuple[PyTree[Array], Float[Array, "length output"]]:
        """Run `x` from the carried streaming state `h`: `(h_last, y)` with per-step outputs
        `(length, output_size)`. Pieces with carried state give the one-call outputs; at
        each segment start of `resets` every block restarts from its `init_state()`.

        **Raises:** `ValueError` for a bidirectional model, BatchNorm in training mode, a
        state `h` without the structure and shapes of `init_state()`, or bad inputs."""
        self._check_streaming(state)
        self._check_carried(h)
        model = self._cast()
        z = model._encode(x, per_step=False)
        check_mask("SequenceModel", mask, z.shape[0])
        check_resets("SequenceModel", resets, z.shape[0])
        z, _, h = model._body(z, state, h, mask, None, resets)
        return h, dense(model.head, z)

    def step(
        self,
        h: PyTree[Array],
        x_t: Int[Array, ""] | Float[Array, " input"],
        *,
        state: eqx.nn.State | None = None,
    ) -> tuple[PyTree[Array], Float[Array, " output"]]:
        """One token or feature vector: `(h, y_t)`, `y_t` of shape `(output_size,)`."""
        self._check_streaming(state)
        self._check_carried(h)
        model = self._cast()
        z = model._encode(x_t, per_step=True)
        z, _, h = model._body(z[None], state, h, None, None)
        return h, dense(model.head, z)[0]


def _encoder_width(encoder) -> int:
    if isinstance(encoder, eqx.nn.Embedding):
        return encoder.embedding_size
    return encoder.out_features


def _check_tokens(x, vocab_size: int, name: str):
    message = f"SequenceModel: `{name}` holds tokens outside [0, {vocab_size})"
    if isinstance(x, jax.core.Tracer):
        return eqx.error_if(x, jnp.any((x < 0) | (x >= vocab_size)), message + ".")
    bad = np.asarray(x)[(np.asarray(x) < 0) | (np.asarray(x) >= vocab_size)]
    if bad.size:
        raise ValueError(f"{message}, e.g. {int(bad[0])}.")
    return x


def _pool(pooling: str, z, mask):
    if pooling == "none":
        return z
    if mask is None:
        return jnp.mean(z, axis=0) if pooling == "mean" else z[-1]
    weights = mask.astype(z.dtype)
    count = jnp.sum(weights)
    if pooling == "mean":
        return jnp.sum(z * weights[:, None], axis=0) / jnp.maximum(count, jnp.ones((), z.dtype))
    # The last valid position, wherever the valid steps are (left padding, holes).
    last = jnp.max(jnp.where(mask, jnp.arange(mask.shape[0]), 0))
    return jnp.where(count > 0, z[last], jnp.zeros((), z.dtype))
