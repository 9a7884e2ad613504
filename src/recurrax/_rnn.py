r"""Classic GRU and LSTM over time: the nonlinear baselines of the minRNN comparison."""

import math

import equinox as eqx
import jax
import jax.lax as lax
import jax.nn as jnn
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._checks import check_positive_int
from ._dtypes import as_working, default_float, working_dtype
from ._mixer import AbstractMixer, check_mask, check_resets
from ._recurrence import segment_cuts


def _check_sizes(owner, input_size, hidden_size):
    check_positive_int(owner, "input_size", input_size)
    check_positive_int(owner, "hidden_size", hidden_size)


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def _run(owner, cell, weight_hh, state, x, gi, reverse, mask, output, resets=None, initial=None):
    """The sequential loop shared by GRU and LSTM: masked steps keep the state and output
    zeros; at a segment start (`resets`) the carry is replaced by `initial` (in reverse, at
    each segment's last step); the recurrence runs in the working dtype, the outputs in the
    dtype of `x`."""
    check_mask(owner, mask, x.shape[0])
    check_resets(owner, resets, x.shape[0])
    gi = as_working(gi)
    w_hh = as_working(weight_hh)
    if mask is None:
        mask = jnp.ones((x.shape[0],), jnp.bool_)
    if resets is None:
        cuts = jnp.zeros((x.shape[0],), jnp.bool_)
    else:
        cuts = segment_cuts(resets, reverse)

    def body(state, inputs):
        gi_t, m_t, cut_t = inputs
        if initial is not None:
            state = jax.tree.map(lambda i, s: jnp.where(cut_t, i, s), initial, state)
        new = cell(w_hh, state, gi_t)
        y = output(new)
        state = jax.tree.map(lambda n, o: jnp.where(m_t, n, o), new, state)
        return state, jnp.where(m_t, y, jnp.zeros((), y.dtype)).astype(x.dtype)

    return lax.scan(body, state, (gi, mask, cuts), reverse=reverse)


def _check_input(owner, x, input_size, per_step):
    ndim, expected = (1, "(input_size,)") if per_step else (2, "(length, input_size)")
    name = "x_t" if per_step else "x"
    if x.ndim != ndim or x.shape[-1] != input_size:
        raise ValueError(
            f"{owner}: `{name}` must have shape {expected} with input_size={input_size}, got "
            f"shape {tuple(x.shape)}."
        )


class GRU(AbstractMixer):
    r"""A classic GRU run over time (the layout and equations of `equinox.nn.GRUCell`):

    $$r = \sigma(W_{ir} x + b_r + W_{hr} h),\ z = \sigma(W_{iz} x + b_z + W_{hz} h),\
    n = \tanh(W_{in} x + b_n + r \odot (W_{hn} h + b_{hn})),\ h' = n + z \odot (h - n).$$

    The input projections of all time steps are computed at once before the sequential
    loop (only $W_h h$ is inside it). Same call convention as every recurrax layer
    (`step`, `scan`, `__call__`, `init_state`); $y_t = h_t$.

    **Fields:** `weight_ih` `(3 hidden, input)`, `weight_hh` `(3 hidden, hidden)`, `bias`
    `(3 hidden,)`, `bias_n` `(hidden,)`: $3 d_h (d_x + d_h) + 4 d_h$ parameters.
    """

    weight_ih: Float[Array, "gates input"]
    weight_hh: Float[Array, "gates hidden"]
    bias: Float[Array, " gates"]
    bias_n: Float[Array, " hidden"]
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, hidden_size: int, *, dtype=None, key: PRNGKeyArray):
        """Uniform $(-1/\\sqrt{d_h}, 1/\\sqrt{d_h})$ initialisation (as PyTorch and Equinox).

        **Raises:** `ValueError` naming a non-positive size."""
        _check_sizes("GRU", input_size, hidden_size)
        dtype = default_float(dtype)
        bound = 1 / math.sqrt(hidden_size)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        h = hidden_size
        self.weight_ih = _uniform(k1, (3 * h, input_size), bound, dtype)
        self.weight_hh = _uniform(k2, (3 * h, h), bound, dtype)
        self.bias = _uniform(k3, (3 * h,), bound, dtype)
        self.bias_n = _uniform(k4, (h,), bound, dtype)
        self.input_size, self.hidden_size = input_size, hidden_size

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def bidirectional(self) -> bool:
        return False

    def init_state(self) -> Float[Array, " hidden"]:
        """Zeros, `(hidden_size,)`, in the working dtype (float32 for a 16-bit layer)."""
        return jnp.zeros((self.hidden_size,), working_dtype(self.weight_hh.dtype))

    def _cell(self, w_hh, h, gi):
        gh = w_hh @ h
        i_r, i_z, i_n = jnp.split(gi, 3)
        h_r, h_z, h_n = jnp.split(gh, 3)
        r = jnn.sigmoid(i_r + h_r)
        z = jnn.sigmoid(i_z + h_z)
        n = jnn.tanh(i_n + r * (h_n + as_working(self.bias_n)))
        return n + z * (h - n)

    def step(
        self, h: Float[Array, " hidden"], x_t: Float[Array, " input"]
    ) -> tuple[Float[Array, " hidden"], Float[Array, " hidden"]]:
        """One step: `(h, x_t) -> (h', h')`."""
        _check_input("GRU", x_t, self.input_size, per_step=True)
        h, y = self.scan(h, x_t[None])
        return h, y[0]

    def scan(
        self,
        h: Float[Array, " hidden"],
        x: Float[Array, "length input"],
        *,
        reverse: bool = False,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
    ) -> tuple[Float[Array, " hidden"], Float[Array, "length hidden"]]:
        """`jax.lax.scan(lambda h, x_t: self.step(h, x_t), h, x, reverse=reverse)`, with the
        input projections hoisted out of the loop; masked steps keep the state and output
        zeros; at each segment start of `resets` the state is reset to `init_state()`."""
        _check_input("GRU", x, self.input_size, per_step=False)
        h = as_working(h)
        gi = x @ self.weight_ih.T + self.bias[None]
        initial = None if resets is None else self.init_state()
        return _run(
            "GRU", self._cell, self.weight_hh, h, x, gi, reverse, mask, lambda h: h, resets, initial
        )

    def __call__(
        self,
        x: Float[Array, "length input"],
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "length hidden"]:
        """All hidden states from zeros, `(length, hidden_size)`; each segment of `resets`
        starts from zeros again."""
        return self.scan(self.init_state(), x, mask=mask, resets=resets)[1]


class LSTM(AbstractMixer):
    r"""A classic LSTM run over time (the layout and equations of `equinox.nn.LSTMCell`):

    $$[i, f, g, o] = W_i x + W_h h + b,\quad c' = \sigma(f) \odot c + \sigma(i) \odot \tanh(g),\quad
    h' = \sigma(o) \odot \tanh(c').$$

    The state is the pair `(h, c)`; $y_t = h_t$. Input projections are hoisted out of the
    sequential loop. Same call convention as every recurrax layer.

    **Fields:** `weight_ih` `(4 hidden, input)`, `weight_hh` `(4 hidden, hidden)`, `bias`
    `(4 hidden,)`: $4 d_h (d_x + d_h) + 4 d_h$ parameters.
    """

    weight_ih: Float[Array, "gates input"]
    weight_hh: Float[Array, "gates hidden"]
    bias: Float[Array, " gates"]
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, hidden_size: int, *, dtype=None, key: PRNGKeyArray):
        """Uniform $(-1/\\sqrt{d_h}, 1/\\sqrt{d_h})$ initialisation (as PyTorch and Equinox).

        **Raises:** `ValueError` naming a non-positive size."""
        _check_sizes("LSTM", input_size, hidden_size)
        dtype = default_float(dtype)
        bound = 1 / math.sqrt(hidden_size)
        k1, k2, k3 = jax.random.split(key, 3)
        h = hidden_size
        self.weight_ih = _uniform(k1, (4 * h, input_size), bound, dtype)
        self.weight_hh = _uniform(k2, (4 * h, h), bound, dtype)
        self.bias = _uniform(k3, (4 * h,), bound, dtype)
        self.input_size, self.hidden_size = input_size, hidden_size

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def bidirectional(self) -> bool:
        return False

    def init_state(self) -> tuple[Float[Array, " hidden"], Float[Array, " hidden"]]:
        """`(h, c)`, zeros, each `(hidden_size,)`, in the working dtype."""
        zeros = jnp.zeros((self.hidden_size,), working_dtype(self.weight_hh.dtype))
        return zeros, zeros

    def _cell(self, w_hh, state, gi):
        h, c = state
        i, f, g, o = jnp.split(gi + w_hh @ h, 4)
        c = jnn.sigmoid(f) * c + jnn.sigmoid(i) * jnn.tanh(g)
        h = jnn.sigmoid(o) * jnn.tanh(c)
        return h, c

    def step(
        self,
        state: tuple[Float[Array, " hidden"], Float[Array, " hidden"]],
        x_t: Float[Array, " input"],
    ) -> tuple[tuple[Float[Array, " hidden"], Float[Array, " hidden"]], Float[Array, " hidden"]]:
        """One step: `((h, c), x_t) -> ((h', c'), h')`."""
        _check_input("LSTM", x_t, self.input_size, per_step=True)
        state, y = self.scan(state, x_t[None])
        return state, y[0]

    def scan(
        self,
        state: tuple[Float[Array, " hidden"], Float[Array, " hidden"]],
        x: Float[Array, "length input"],
        *,
        reverse: bool = False,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
    ) -> tuple[
        tuple[Float[Array, " hidden"], Float[Array, " hidden"]], Float[Array, "length hidden"]
    ]:
        """`jax.lax.scan(lambda s, x_t: self.step(s, x_t), state, x, reverse=reverse)`, with
        the input projections hoisted out of the loop; masked steps keep the state and output
        zeros; at each segment start of `resets` the state is reset to `init_state()`."""
        _check_input("LSTM", x, self.input_size, per_step=False)
        state = (as_working(state[0]), as_working(state[1]))
        gi = x @ self.weight_ih.T + self.bias[None]
        initial = None if resets is None else self.init_state()
        return _run(
            "LSTM",
            self._cell,
            self.weight_hh,
            state,
            x,
            gi,
            reverse,
            mask,
            lambda s: s[0],
            resets,
            initial,
        )

    def __call__(
        self,
        x: Float[Array, "length input"],
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "length hidden"]:
        """All hidden states from zeros, `(length, hidden_size)`; each segment of `resets`
        starts from zeros again."""
        return self.scan(self.init_state(), x, mask=mask, resets=resets)[1]
