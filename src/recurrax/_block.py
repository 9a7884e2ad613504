r"""Residual blocks around a mixer: the LRU paper's GLU block, the minRNN paper's block and
Hawk's block.

A block maps `(length, d_model)` to `(length, d_model)`. It has the streaming convention of
the mixers, with the normalisation state (`equinox.nn.State`, for BatchNorm) threaded
alongside:

- `block(x, state, *, mask=None, resets=None, key=None) -> (y, state)`: a whole sequence;
- `block.init_state()`;
    `block.scan(h, x, state, *, mask=None, resets=None, key=None) -> (h, y, state)`;
    `block.step(h, x_t, state) -> (h, y_t, state)`.

`resets` (segment starts of a packed sequence) pass through to the mixer and the
convolution, so every segment gets the outputs it has alone.

Dropout is active only when a `key` is given and the block is not in inference mode.
"""

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.nn as jnn
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from ._checks import check_positive_int
from ._conv import CausalDepthwiseConv
from ._dtypes import default_float
from ._linear import dense
from ._mixer import AbstractMixer, check_mask, check_resets
from ._norm import AbstractNorm, BatchNorm, LayerNorm, RMSNorm
from ._validate import check_array, check_real, check_real_floating, check_state


NormName = Literal["layer", "rms", "batch"]


def make_norm(kind: NormName | None, features: int, *, dtype=None) -> AbstractNorm | None:
    """The normalisation called `kind` ("layer", "rms", "batch" or `None`)."""
    if kind is None:
        return None
    if kind == "layer":
        return LayerNorm(features, dtype=dtype)
    if kind == "rms":
        return RMSNorm(features, dtype=dtype)
    if kind == "batch":
        return BatchNorm(features, dtype=dtype)
    raise ValueError(f"`norm` must be one of 'layer', 'rms', 'batch' or None, got norm={kind!r}.")


def _apply_norm(norm, x, state, mask):
    if norm is None:
        return x, state
    return norm(x, state, mask=mask)


def _dropout(rate: float, x: Array, key, inference: bool) -> Array:
    if key is None or inference or rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1 - rate, x.dtype), jnp.zeros((), x.dtype))


def _split(key, n):
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


class AbstractBlock(eqx.Module):
    r"""Abstract base class of a residual block around a mixer (see the module docs for the
    call convention). A subclass provides `init_state` and `forward`, the block's body written
    once for the full call and for streaming; `__call__`, `scan` and `step` check their
    inputs and call it. A new block is a final subclass with those two methods.

    !!! example

        ```python
        import jax
        import recurrax

        block = recurrax.GLUBlock(recurrax.LRU(4, 8, key=jax.random.key(0)), norm="layer",
                                  key=jax.random.key(1))
        assert isinstance(block, recurrax.AbstractBlock)
        x = jax.random.normal(jax.random.key(2), (10, 4))
        y, _ = block(x)                                          # (10, 4); `_`: the norm state
        h, y_stream, _ = block.scan(block.init_state(), x)       # streaming: the same outputs
        ```
    """

    d_model: eqx.AbstractVar[int]
    mixer: eqx.AbstractVar[AbstractMixer]

    @abc.abstractmethod
    def init_state(self) -> PyTree[Array]:
        """The streaming state before the first step."""

    @abc.abstractmethod
    def forward(
        self,
        x: Float[Array, "length d_model"],
        state: eqx.nn.State | None,
        h: PyTree[Array] | None,
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "length d_model"], eqx.nn.State | None, PyTree[Array] | None]:
        r"""The block's body, unchecked: `(y, state, h)`.

        **Arguments:**

        - `x`: `(length, d_model)`.
        - `state`: the normalisation state (`equinox.nn.State`, `None` without BatchNorm).
        - `h`: `None` for a whole sequence (either direction of a bidirectional mixer), or
            the carried streaming state (`init_state()`'s structure) to continue from.
        - `mask`, `resets`: boolean `(length,)`, as for [`recurrax.AbstractMixer`][].
        - `key`: for dropout (`None`: off).

        **Returns:** the outputs `(length, d_model)`, the new normalisation state, and the
        streaming state after the last step (`None` when `h` was `None`).

        This is what [`recurrax.SequenceModel`][] calls for each block (the model checks the
        inputs once); call `__call__` or `scan` to have them checked.

        !!! example

            ```python
            import jax
            import jax.numpy as jnp
            import recurrax

            block = recurrax.GLUBlock(recurrax.LRU(4, 8, key=jax.random.key(0)), norm="layer",
                                      key=jax.random.key(1))
            x = jnp.ones((6, 4))
            y, _, h = block.forward(x, None, block.init_state())
            assert y.shape == (6, 4) and jnp.allclose(y, block(x)[0], atol=1e-5)
            ```
        """

    def _check(self, x, mask, resets=None):
        check_array(type(self).__name__, "x", x)
        if x.ndim != 2 or x.shape[1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__}: `x` must have shape (length, {self.d_model}), got "
                f"shape {tuple(x.shape)}."
            )
        check_real_floating(type(self).__name__, "x", x)
        check_mask(type(self).__name__, mask, x.shape[0])
        check_resets(type(self).__name__, resets, x.shape[0])

    def _check_streaming(self):
        if self.mixer.bidirectional:
            raise ValueError(
                f"{type(self).__name__}: streaming (`scan`/`step`) is undefined for a "
                f"bidirectional mixer; call the block on the whole sequence."
            )

    def __call__(
        self,
        x: Float[Array, "length d_model"],
        state: eqx.nn.State | None = None,
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "length d_model"], eqx.nn.State | None]:
        """**Arguments:** `x` `(length, d_model)`; `state` the normalisation state (`None`
        without BatchNorm); `mask` boolean `(length,)`; `resets` boolean `(length,)`, `True`
        at each segment start of a packed sequence; `key` for dropout (none: off).

        **Returns:** `(y, state)`, `y` of shape `(length, d_model)`."""
        self._check(x, mask, resets)
        y, state, _ = self.forward(x, state, None, mask=mask, resets=resets, key=key)
        return y, state

    def scan(
        self,
        h: PyTree[Array],
        x: Float[Array, "length d_model"],
        state: eqx.nn.State | None = None,
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> tuple[PyTree[Array], Float[Array, "length d_model"], eqx.nn.State | None]:
        """`(h_last, y, state)` from the carried streaming state `h`; in pieces equal to one
        call; at each segment start of `resets` the streaming state restarts from
        `init_state()`. **Raises:** `ValueError` for a bidirectional mixer."""
        self._check_streaming()
        self._check(x, mask, resets)
        check_state(type(self).__name__, "h", h, jax.eval_shape(self.init_state))
        y, state, h = self.forward(x, state, h, mask=mask, resets=resets, key=key)
        return h, y, state

    def step(
        self,
        h: PyTree[Array],
        x_t: Float[Array, " d_model"],
        state: eqx.nn.State | None = None,
    ) -> tuple[PyTree[Array], Float[Array, " d_model"], eqx.nn.State | None]:
        """One step, `(h, y_t, state)`; dropout off."""
        h, y, state = self.scan(h, x_t[None], state)
        return h, y[0], state


def _mix(mixer: AbstractMixer, z, h, mask, resets=None):
    """The mixer on `z`: a full call when `h is None`, else a scan from `h`."""
    kwargs = {} if resets is None else {"resets": resets}
    if h is None:
        return mixer(z, mask=mask, **kwargs), None
    h, y = mixer.scan(h, z, mask=mask, **kwargs)
    return y, h


class GLUBlock(AbstractBlock):
    r"""The LRU paper's block (App. D):
    $y = x + \operatorname{drop}(\operatorname{GLU}(\operatorname{drop}(\operatorname{GELU}(
    \operatorname{mixer}(\operatorname{norm}(x))))))$
    with $\mathrm{GLU}(z) = W_1 z \odot \sigma(W_2 z)$; with `prenorm=False` the norm is
    applied after the skip instead.

    **Fields:** `norm` (or `None`), `mixer` (input and output width `d_model`), `glu_value`
    and `glu_gate` (`eqx.nn.Linear(d_model, d_model)`), `dropout` rate, `prenorm`,
    `inference`.

    !!! example

        ```python
        import jax
        import recurrax

        block = recurrax.GLUBlock(recurrax.LRU(4, 8, key=jax.random.key(0)), norm="rms",
                                  dropout=0.1, key=jax.random.key(1))
        x = jax.random.normal(jax.random.key(2), (10, 4))
        y, _ = block(x, key=jax.random.key(3))                   # (10, 4); the key drives dropout
        ```
    """

    norm: AbstractNorm | None
    mixer: AbstractMixer
    glu_value: eqx.nn.Linear
    glu_gate: eqx.nn.Linear
    d_model: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    prenorm: bool = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        mixer: AbstractMixer,
        *,
        norm: NormName | None = "batch",
        prenorm: bool = True,
        dropout: float = 0.0,
        inference: bool = False,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `mixer`: any [`recurrax.AbstractMixer`][] with `input_size == output_size`.
        - `norm`: `"batch"` (the paper's), `"layer"`, `"rms"` or `None`.
        - `prenorm`: normalise the block's input (`True`) or its output.
        - `dropout`: the rate, in $[0, 1)$.
        - `inference`: dropout off (toggled by `equinox.nn.inference_mode`).
        - `dtype`: of the norm and GLU parameters.
        - `key`: a PRNG key.

        **Raises:** `ValueError` naming a mixer whose widths differ, a bad norm or rate.
        """
        _check_mixer("GLUBlock", mixer)
        if mixer.output_size != mixer.input_size:
            raise ValueError(
                f"GLUBlock: the mixer must map d_model to d_model, got input_size="
                f"{mixer.input_size} and output_size={mixer.output_size}."
            )
        _check_rate("GLUBlock", dropout)
        d = mixer.input_size
        k1, k2 = jax.random.split(key)
        dtype = default_float(dtype)
        self.norm = make_norm(norm, d, dtype=dtype)
        self.mixer = mixer
        self.glu_value = eqx.nn.Linear(d, d, dtype=dtype, key=k1)
        self.glu_gate = eqx.nn.Linear(d, d, dtype=dtype, key=k2)
        self.d_model, self.dropout, self.prenorm = d, float(dropout), bool(prenorm)
        self.inference = bool(inference)

    def init_state(self) -> PyTree[Array]:
        """The mixer's state."""
        return self.mixer.init_state()

    def forward(self, x, state, h, *, mask=None, resets=None, key=None):
        k1, k2 = _split(key, 2)
        z = x
        if self.prenorm:
            z, state = _apply_norm(self.norm, z, state, mask)
        z, h = _mix(self.mixer, z, h, mask, resets)
        z = _dropout(self.dropout, jnn.gelu(z), k1, self.inference)
        z = dense(self.glu_value, z) * jnn.sigmoid(dense(self.glu_gate, z))
        y = x + _dropout(self.dropout, z, k2, self.inference)
        if not self.prenorm:
            y, state = _apply_norm(self.norm, y, state, mask)
        return y, state, h


class MixerMLPBlock(AbstractBlock):
    r"""The minRNN paper's block (Feng et al. 2024; see
    [minGRU and minLSTM](../concepts/minrnn.md)):
    $x \leftarrow x + \operatorname{drop}(P_{out}\,\operatorname{mixer}(P_{in}\,
    \operatorname{conv}(\operatorname{norm}(x))))$,
    then $x \leftarrow x + \mathrm{drop}(\mathrm{MLP}(\mathrm{norm}_2(x)))$ with
    $\mathrm{MLP}(z) = W_2\,\mathrm{GELU}(W_1 z)$.

    The mixer may work at an expanded width: $P_{in}$ (`d_model -> mixer.input_size`) and
    $P_{out}$ (`mixer.output_size -> d_model`) exist only where the widths differ (a minGRU
    `MinGRU(d, e d)` needs only $P_{out}$). The convolution (kernel 4 in the paper) and the
    MLP are optional; selective copying uses neither. With `prenorm=False` each norm moves
    after its skip.

    **Fields:** `norm`, `conv`, `in_proj`, `mixer`, `out_proj`, `mlp_norm`, `mlp_in`,
    `mlp_out` (each possibly `None`), `dropout`, `prenorm`, `inference`.

    !!! example

        ```python
        import jax
        import recurrax

        mixer = recurrax.MinGRU(4, 8, key=jax.random.key(0))     # 4 -> 8: only P_out is needed
        block = recurrax.MixerMLPBlock(4, mixer, key=jax.random.key(1))
        y, _ = block(jax.random.normal(jax.random.key(2), (10, 4)))   # (10, 4)
        ```
    """

    norm: AbstractNorm | None
    conv: CausalDepthwiseConv | None
    in_proj: eqx.nn.Linear | None
    mixer: AbstractMixer
    out_proj: eqx.nn.Linear | None
    mlp_norm: AbstractNorm | None
    mlp_in: eqx.nn.Linear | None
    mlp_out: eqx.nn.Linear | None
    d_model: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    prenorm: bool = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        d_model: int,
        mixer: AbstractMixer,
        *,
        norm: NormName | None = "layer",
        prenorm: bool = True,
        conv_kernel: int | None = 4,
        mlp_expansion: int | None = 4,
        dropout: float = 0.0,
        inference: bool = False,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `d_model`: the block's width.
        - `mixer`: any [`recurrax.AbstractMixer`][] (e.g. `MinGRU(d_model, 6 * d_model)`).
        - `norm`: `"layer"`, `"rms"`, `"batch"` or `None`.
        - `prenorm`: normalise each sub-block's input (`True`) or its output.
        - `conv_kernel`: the causal depthwise convolution's size, or `None` for none.
        - `mlp_expansion`: the MLP's hidden width over `d_model`, or `None` for no MLP.
        - `dropout`: the rate, in $[0, 1)$.
        - `inference`, `dtype`, `key`: as for [`recurrax.GLUBlock`][].

        **Raises:** `ValueError` naming a bad size, norm or rate.
        """
        check_positive_int("MixerMLPBlock", "d_model", d_model)
        _check_mixer("MixerMLPBlock", mixer)
        _check_rate("MixerMLPBlock", dropout)
        if conv_kernel is not None:
            check_positive_int("MixerMLPBlock", "conv_kernel", conv_kernel)
        if mlp_expansion is not None:
            check_positive_int("MixerMLPBlock", "mlp_expansion", mlp_expansion)
        dtype = default_float(dtype)
        keys = jax.random.split(key, 5)
        d = int(d_model)
        self.norm = make_norm(norm, d, dtype=dtype)
        self.conv = (
            None
            if conv_kernel is None
            else CausalDepthwiseConv(d, conv_kernel, dtype=dtype, key=keys[0])
        )
        self.in_proj = (
            None
            if mixer.input_size == d
            else eqx.nn.Linear(d, mixer.input_size, use_bias=False, dtype=dtype, key=keys[1])
        )
        self.mixer = mixer
        self.out_proj = (
            None
            if mixer.output_size == d
            else eqx.nn.Linear(mixer.output_size, d, use_bias=False, dtype=dtype, key=keys[2])
        )
        if mlp_expansion is None:
            self.mlp_norm = self.mlp_in = self.mlp_out = None
        else:
            self.mlp_norm = make_norm(norm, d, dtype=dtype)
            self.mlp_in = eqx.nn.Linear(d, mlp_expansion * d, dtype=dtype, key=keys[3])
            self.mlp_out = eqx.nn.Linear(mlp_expansion * d, d, dtype=dtype, key=keys[4])
        self.d_model, self.dropout, self.prenorm = d, float(dropout), bool(prenorm)
        self.inference = bool(inference)

    def init_state(self) -> PyTree[Array]:
        """`(conv history or None, mixer state)`."""
        conv = None if self.conv is None else self.conv.init_state()
        return conv, self.mixer.init_state()

    def forward(self, x, state, h, *, mask=None, resets=None, key=None):
        k1, k2 = _split(key, 2)
        h_conv, h_mixer = (None, None) if h is None else h
        z = x
        if self.prenorm:
            z, state = _apply_norm(self.norm, z, state, mask)
        if self.conv is not None:
            if h is None:
                z = self.conv(z, mask=mask, resets=resets)
            else:
                h_conv, z = self.conv.scan(h_conv, z, mask=mask, resets=resets)
        if self.in_proj is not None:
            z = dense(self.in_proj, z)
        z, h_mixer = _mix(self.mixer, z, h_mixer, mask, resets)
        if self.out_proj is not None:
            z = dense(self.out_proj, z)
        x = x + _dropout(self.dropout, z, k1, self.inference)
        if not self.prenorm:
            x, state = _apply_norm(self.norm, x, state, mask)
        if self.mlp_in is not None:
            z = x
            if self.prenorm:
                z, state = _apply_norm(self.mlp_norm, z, state, mask)
            z = dense(self.mlp_out, jnn.gelu(dense(self.mlp_in, z)))
            x = x + _dropout(self.dropout, z, k2, self.inference)
            if not self.prenorm:
                x, state = _apply_norm(self.mlp_norm, x, state, mask)
        new_h = None if h is None else (h_conv, h_mixer)
        return x, state, new_h


class HawkBlock(AbstractBlock):
    r"""The residual block of Hawk (Griffin without attention): a gated recurrent block, then
    a gated MLP block, each with a pre-norm (RMSNorm in Hawk) and a skip:

    $$x \leftarrow x + \operatorname{drop}\big(W_{out}\,[\operatorname{GELU}(W_{gate} z)
    \odot \operatorname{mixer}(\operatorname{conv}(W_{in} z))]\big),$$

    with $z = \operatorname{norm}(x)$, then

    $$x \leftarrow x + \operatorname{drop}\big(W_{down}\,[\operatorname{GELU}(W_{up,1} z)
    \odot W_{up,2} z]\big),$$

    with $z = \operatorname{norm}_2(x)$.

    The mixer is Hawk's [`recurrax.RGLRU`][] (any [`recurrax.AbstractMixer`][] works: its
    input width is that of $W_{in}$ and the convolution, its output width that of
    $W_{gate}$ and $W_{out}$). The convolution is the causal depthwise one of width 4; the
    MLP's hidden width is `mlp_expansion` × `d_model` (3 in Griffin). With `prenorm=False`
    each norm moves after its skip.

    **Fields:** `norm`, `gate_proj`, `in_proj`, `conv` (or `None`), `mixer`, `out_proj`,
    `mlp_norm`, `mlp_gate`, `mlp_value`, `mlp_out` (the MLP's, or `None`), `dropout`,
    `prenorm`, `inference`.

    !!! example

        ```python
        import jax
        import recurrax

        block = recurrax.HawkBlock(16, recurrax.RGLRU(24, key=jax.random.key(0)),
                                   key=jax.random.key(1))
        x = jax.random.normal(jax.random.key(2), (50, 16))
        y, _ = block(x)                                   # (50, 16)
        h, y_stream, _ = block.scan(block.init_state(), x)  # streaming: the same outputs
        ```
    """

    norm: AbstractNorm | None
    gate_proj: eqx.nn.Linear
    in_proj: eqx.nn.Linear
    conv: CausalDepthwiseConv | None
    mixer: AbstractMixer
    out_proj: eqx.nn.Linear
    mlp_norm: AbstractNorm | None
    mlp_gate: eqx.nn.Linear | None
    mlp_value: eqx.nn.Linear | None
    mlp_out: eqx.nn.Linear | None
    d_model: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    prenorm: bool = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        d_model: int,
        mixer: AbstractMixer,
        *,
        norm: NormName | None = "rms",
        prenorm: bool = True,
        conv_kernel: int | None = 4,
        mlp_expansion: int | None = 3,
        dropout: float = 0.0,
        inference: bool = False,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `d_model`: the block's width.
        - `mixer`: any [`recurrax.AbstractMixer`][], e.g. `RGLRU(width)`.
        - `norm`: `"rms"` (Hawk's), `"layer"`, `"batch"` or `None`.
        - `prenorm`: normalise each sub-block's input (`True`) or its output.
        - `conv_kernel`: the causal depthwise convolution's size (4), or `None` for none.
        - `mlp_expansion`: the gated MLP's hidden width over `d_model` (3), or `None` for
            no MLP block.
        - `dropout`: the rate, in $[0, 1)$.
        - `inference`, `dtype`, `key`: as for [`recurrax.GLUBlock`][].

        **Raises:** `ValueError` naming a bad size, norm or rate.
        """
        check_positive_int("HawkBlock", "d_model", d_model)
        _check_mixer("HawkBlock", mixer)
        _check_rate("HawkBlock", dropout)
        if conv_kernel is not None:
            check_positive_int("HawkBlock", "conv_kernel", conv_kernel)
        if mlp_expansion is not None:
            check_positive_int("HawkBlock", "mlp_expansion", mlp_expansion)
        dtype = default_float(dtype)
        keys = jax.random.split(key, 7)
        d, w_in, w_out = int(d_model), mixer.input_size, mixer.output_size
        self.norm = make_norm(norm, d, dtype=dtype)
        self.gate_proj = eqx.nn.Linear(d, w_out, dtype=dtype, key=keys[0])
        self.in_proj = eqx.nn.Linear(d, w_in, dtype=dtype, key=keys[1])
        self.conv = (
            None
            if conv_kernel is None
            else CausalDepthwiseConv(w_in, conv_kernel, dtype=dtype, key=keys[2])
        )
        self.mixer = mixer
        self.out_proj = eqx.nn.Linear(w_out, d, dtype=dtype, key=keys[3])
        if mlp_expansion is None:
            self.mlp_norm = self.mlp_gate = self.mlp_value = self.mlp_out = None
        else:
            hidden = mlp_expansion * d
            self.mlp_norm = make_norm(norm, d, dtype=dtype)
            self.mlp_gate = eqx.nn.Linear(d, hidden, dtype=dtype, key=keys[4])
            self.mlp_value = eqx.nn.Linear(d, hidden, dtype=dtype, key=keys[5])
            self.mlp_out = eqx.nn.Linear(hidden, d, dtype=dtype, key=keys[6])
        self.d_model, self.dropout, self.prenorm = d, float(dropout), bool(prenorm)
        self.inference = bool(inference)

    def init_state(self) -> PyTree[Array]:
        """`(conv history or None, mixer state)`."""
        conv = None if self.conv is None else self.conv.init_state()
        return conv, self.mixer.init_state()

    def forward(self, x, state, h, *, mask=None, resets=None, key=None):
        k1, k2 = _split(key, 2)
        h_conv, h_mixer = (None, None) if h is None else h
        z = x
        if self.prenorm:
            z, state = _apply_norm(self.norm, z, state, mask)
        gate = jnn.gelu(dense(self.gate_proj, z))
        u = dense(self.in_proj, z)
        if self.conv is not None:
            if h is None:
                u = self.conv(u, mask=mask, resets=resets)
            else:
                h_conv, u = self.conv.scan(h_conv, u, mask=mask, resets=resets)
        u, h_mixer = _mix(self.mixer, u, h_mixer, mask, resets)
        z = dense(self.out_proj, gate * u)
        x = x + _dropout(self.dropout, z, k1, self.inference)
        if not self.prenorm:
            x, state = _apply_norm(self.norm, x, state, mask)
        if self.mlp_out is not None:
            z = x
            if self.prenorm:
                z, state = _apply_norm(self.mlp_norm, z, state, mask)
            z = jnn.gelu(dense(self.mlp_gate, z)) * dense(self.mlp_value, z)
            x = x + _dropout(self.dropout, dense(self.mlp_out, z), k2, self.inference)
            if not self.prenorm:
                x, state = _apply_norm(self.mlp_norm, x, state, mask)
        new_h = None if h is None else (h_conv, h_mixer)
        return x, state, new_h


def _check_mixer(owner: str, mixer) -> None:
    if not isinstance(mixer, AbstractMixer):
        raise ValueError(
            f"{owner}: `mixer` must be a recurrax mixer (LRU, DiagonalSSM, MinGRU, MinLSTM, "
            f"GRU, LSTM, Bidirectional, or another AbstractMixer), got {type(mixer).__name__}."
        )


def _check_rate(owner: str, rate: float) -> None:
    if not 0 <= check_real(owner, "dropout", rate) < 1:
        raise ValueError(f"{owner}: `dropout` must be in [0, 1), got dropout={rate!r}.")
