r"""minGRU and minLSTM (Feng et al., 2024): input-dependent diagonal linear recurrences."""

import functools
import math
from typing import Literal

import equinox as eqx
import jax
import jax.nn as jnn
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_positive_int
from ._dtypes import as_working, default_float, working_dtype
from ._layer import AbstractRecurrentLayer
from ._registry import register_mixer
from ._scan import AbstractScan
from ._validate import check_bool, check_real


_CANDIDATES = ("g", "linear")


def g(x: Float[Array, "..."]) -> Float[Array, "..."]:
    r"""The minRNN paper's positive activation: $g(x) = x + \tfrac12$ for $x \ge 0$,
    $\sigma(x)$ otherwise (continuous, strictly positive).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        print(recurrax.g(jnp.array([-1.0, 0.0, 2.0])))          # [0.26894143 0.5        2.5       ]
        ```
    """
    return jnp.where(x >= 0, jnn.relu(x) + 0.5, jnn.sigmoid(x))


def log_g(x: Float[Array, "..."]) -> Float[Array, "..."]:
    r"""$\log g(x)$: $\log(\max(x, 0) + \tfrac12)$ for $x \ge 0$, $-\operatorname{softplus}(-x)$
    otherwise. Both branches are finite everywhere (the `relu` inside the logarithm), so the
    branch `where` does not discard is never NaN and neither are the gradients.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        x = jnp.array([-30.0, 0.0, 2.0])
        assert jnp.allclose(recurrax.log_g(x), jnp.log(recurrax.g(x)), atol=1e-6)
        assert jnp.all(jnp.isfinite(jax.grad(lambda x: recurrax.log_g(x).sum())(x)))
        ```
    """
    return jnp.where(x >= 0, jnp.log(jnn.relu(x) + 0.5), -jnn.softplus(-x))


def _check_common(owner, input_size, hidden_size, candidate, log_space):
    check_positive_int(owner, "input_size", input_size)
    check_positive_int(owner, "hidden_size", hidden_size)
    check_bool(owner, "log_space", log_space)
    if candidate not in _CANDIDATES:
        raise ValueError(
            f"{owner}: `candidate` must be one of {_CANDIDATES}, got candidate={candidate!r}."
        )
    if log_space and candidate != "g":
        raise ValueError(
            f"{owner}: log_space=True needs the positive candidate g (candidate='g'): a "
            f"linear candidate can be negative and has no logarithm; got candidate={candidate!r}."
        )


def _gate_logit(k_f: Array, k_i: Array) -> Array:
    r"""$d = \log(i/f) = \operatorname{softplus}(-k_f) - \operatorname{softplus}(-k_i)$, so that
    $f' = f/(f+i) = \sigma(-d)$ and $i' = \sigma(d)$ without forming the ratio."""
    return jnn.softplus(-k_f) - jnn.softplus(-k_i)


def _check_initial(owner, learn_initial_state, log_space):
    check_bool(owner, "learn_initial_state", learn_initial_state)
    if learn_initial_state and log_space:
        raise ValueError(
            f"{owner}: learn_initial_state=True needs log_space=False: a trained initial state "
            f"can turn negative, which log space cannot represent."
        )


def _linear(in_size, out_size, dtype, key, bias_shift=0.0):
    layer = eqx.nn.Linear(in_size, out_size, dtype=dtype, key=key)
    if bias_shift:
        layer = eqx.tree_at(lambda m: m.bias, layer, layer.bias + bias_shift)
    return layer


def _project(x, *linears):
    """All projections of the inputs at once: one matmul `(length, k * hidden)`, split."""
    weight = jnp.concatenate([lin.weight for lin in linears], axis=0)
    bias = jnp.concatenate([lin.bias for lin in linears], axis=0)
    out = as_working(x @ weight.T + bias[None])  # gates in float32 for 16-bit layers
    return jnp.split(out, len(linears), axis=-1)


class _AbstractMinRNN(AbstractRecurrentLayer):
    """What minGRU and minLSTM share: causal, `hidden_size` outputs, the initial state."""

    hidden_size: eqx.AbstractVar[int]
    initial_state: eqx.AbstractVar[Float[Array, " hidden"] | None]
    linear_h: eqx.AbstractVar[eqx.nn.Linear]

    @property
    def bidirectional(self) -> bool:
        return False

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def init_state(self) -> Float[Array, " hidden"]:
        """Zeros (or the learned `initial_state`), `(hidden_size,)`."""
        if self.initial_state is not None:
            return as_working(self.initial_state)
        return jnp.zeros((self.hidden_size,), working_dtype(self.linear_h.weight.dtype))


class MinGRU(_AbstractMinRNN):
    r"""minGRU (Feng et al. 2024): gates and candidate depend on the input only, so the
    recurrence is a diagonal linear one, $a_t = 1 - z_t$, $b_t = z_t \odot \tilde h_t$:

    $$z_t = \sigma(\mathrm{Linear}_z(x_t)),\quad \tilde h_t = c(\mathrm{Linear}_h(x_t)),$$

    $$h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t,\quad y_t = h_t,$$

    with the candidate $c = g$ (the paper's positive, log-trainable form; `candidate="g"`) or
    the identity (`candidate="linear"`).

    What is computed and how are separate: `log_space=True` evaluates the same $h$ through
    [`recurrax.log_linear_recurrence`][] with $\log(1 - z) = -\operatorname{softplus}(k)$,
    $\log z = -\operatorname{softplus}(-k)$ and `log_g` (the paper's parallel mode);
    `log_space=False` through [`recurrax.linear_recurrence`][] with $1 - z = \sigma(-k)$.
    Both accept every scan strategy as `method`. The default is the linear space: in float32
    it is as accurate as the log space here and faster ([accuracy](../results/accuracy-minrnn.md),
    [speed](../results/speed-minrnn.md)).

    **Fields:** `linear_z`, `linear_h`: `eqx.nn.Linear(input_size, hidden_size)`. Parameters:
    $2 d_h (d_x + 1)$.

    !!! example

        ```python
        import jax
        import recurrax

        cell = recurrax.MinGRU(8, 32, key=jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (500, 8))
        h = cell(x)                                   # (500, 32): y_t = h_t
        h_last, _ = cell.scan(cell.init_state(), x)   # carry the state
        ```
    """

    linear_z: eqx.nn.Linear
    linear_h: eqx.nn.Linear
    initial_state: Float[Array, " hidden"] | None
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    candidate: Literal["g", "linear"] = eqx.field(static=True)
    log_space: bool = eqx.field(static=True)
    method: AbstractScan | None

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        candidate: Literal["g", "linear"] = "g",
        log_space: bool = False,
        learn_initial_state: bool = False,
        method: AbstractScan | None = None,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `input_size`, `hidden_size`: $d_x$, $d_h$.
        - `candidate`: `"g"` (positive, the paper's) or `"linear"`.
        - `log_space`: evaluate through the log-space engine (only with `candidate="g"`).
        - `learn_initial_state`: make $h_0$ a trainable parameter `initial_state` (zeros at
            first) returned by `init_state()`; linear space only, since a trained $h_0$ may
            turn negative.
        - `method`: the scan strategy.
        - `dtype`: parameter dtype.
        - `key`: a PRNG key.

        **Raises:** `ValueError` naming the argument for non-positive sizes, an unknown
        candidate, or `log_space=True` with a linear candidate.
        """
        _check_common("MinGRU", input_size, hidden_size, candidate, log_space)
        _check_initial("MinGRU", learn_initial_state, log_space)
        dtype = default_float(dtype)
        kz, kh = jax.random.split(key)
        self.linear_z = _linear(input_size, hidden_size, dtype, kz)
        self.linear_h = _linear(input_size, hidden_size, dtype, kh)
        self.initial_state = jnp.zeros((hidden_size,), dtype) if learn_initial_state else None
        self.input_size, self.hidden_size = input_size, hidden_size
        self.candidate, self.log_space = candidate, bool(log_space)
        self.method = method

    def coefficients(self, x):
        k, pre = _project(x, self.linear_z, self.linear_h)
        if self.log_space:
            return -jnn.softplus(k), -jnn.softplus(-k) + log_g(pre)
        candidate = g(pre) if self.candidate == "g" else pre
        return jnn.sigmoid(-k), jnn.sigmoid(k) * candidate

    def readout(self, h, x):
        return h


class MinLSTM(_AbstractMinRNN):
    r"""minLSTM (Feng et al. 2024):
    $h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t$, $y_t = h_t$, with

    $$f_t = \sigma(\mathrm{Linear}_f(x_t)),\quad i_t = \sigma(\mathrm{Linear}_i(x_t)),\quad
    \tilde h_t = c(\mathrm{Linear}_h(x_t)),$$

    $$f'_t = \frac{f_t}{f_t + i_t},\quad i'_t = \frac{i_t}{f_t + i_t}.$$

    The normalisation $f' + i' = 1$ makes the output scale independent of time. Computed
    stably as $f' = \sigma(-d)$, $i' = \sigma(d)$ with
    $d = \operatorname{softplus}(-k_f) - \operatorname{softplus}(-k_i)$ (in log space
    $\log f' = -\operatorname{softplus}(d)$, $\log i' = -\operatorname{softplus}(-d)$).
    `candidate` and `log_space` as for [`recurrax.MinGRU`][].

    **Fields:** `linear_f`, `linear_i`, `linear_h`: `eqx.nn.Linear(input_size, hidden_size)`;
    the forget-gate bias starts shifted by `forget_bias`. Parameters: $3 d_h (d_x + 1)$.

    !!! example

        ```python
        import jax
        import recurrax

        cell = recurrax.MinLSTM(8, 32, key=jax.random.key(0))
        h = cell(jax.random.normal(jax.random.key(1), (500, 8)))   # (500, 32)
        ```
    """

    linear_f: eqx.nn.Linear
    linear_i: eqx.nn.Linear
    linear_h: eqx.nn.Linear
    initial_state: Float[Array, " hidden"] | None
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    candidate: Literal["g", "linear"] = eqx.field(static=True)
    log_space: bool = eqx.field(static=True)
    forget_bias: float = eqx.field(static=True)
    method: AbstractScan | None

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        candidate: Literal["g", "linear"] = "g",
        log_space: bool = False,
        forget_bias: float = 3.0,
        learn_initial_state: bool = False,
        method: AbstractScan | None = None,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `input_size`, `hidden_size`: $d_x$, $d_h$.
        - `candidate`: `"g"` (positive, the paper's) or `"linear"`.
        - `log_space`: evaluate through the log-space engine (only with `candidate="g"`).
        - `learn_initial_state`: make $h_0$ a trainable parameter (linear space only), as
            for [`recurrax.MinGRU`][].
        - `forget_bias`: added to the initial forget-gate bias (the official code's +3,
            reported to converge faster and more stably: at zero input $f'$ starts at
            0.66 instead of 0.5); training moves it like any bias.
        - `method`: the scan strategy.
        - `dtype`: parameter dtype.
        - `key`: a PRNG key.

        **Raises:** `ValueError` naming the argument for non-positive sizes, an unknown
        candidate, `log_space=True` with a linear candidate, or a non-finite `forget_bias`.
        """
        _check_common("MinLSTM", input_size, hidden_size, candidate, log_space)
        _check_initial("MinLSTM", learn_initial_state, log_space)
        if not math.isfinite(check_real("MinLSTM", "forget_bias", forget_bias)):
            raise ValueError(f"MinLSTM: `forget_bias` must be finite, got {forget_bias!r}.")
        dtype = default_float(dtype)
        kf, ki, kh = jax.random.split(key, 3)
        self.linear_f = _linear(input_size, hidden_size, dtype, kf, bias_shift=forget_bias)
        self.linear_i = _linear(input_size, hidden_size, dtype, ki)
        self.linear_h = _linear(input_size, hidden_size, dtype, kh)
        self.initial_state = jnp.zeros((hidden_size,), dtype) if learn_initial_state else None
        self.input_size, self.hidden_size = input_size, hidden_size
        self.candidate, self.log_space = candidate, bool(log_space)
        self.forget_bias = float(forget_bias)
        self.method = method

    def gates(self, x: Float[Array, "length input"]) -> tuple[Array, Array]:
        r"""The normalised gates $(f'_t, i'_t)$, `(length, hidden)` each; $f' + i' = 1$."""
        d = _gate_logit(*_project(x, self.linear_f, self.linear_i))
        return jnn.sigmoid(-d), jnn.sigmoid(d)

    def coefficients(self, x):
        k_f, k_i, pre = _project(x, self.linear_f, self.linear_i, self.linear_h)
        d = _gate_logit(k_f, k_i)
        if self.log_space:
            return -jnn.softplus(d), -jnn.softplus(-d) + log_g(pre)
        candidate = g(pre) if self.candidate == "g" else pre
        return jnn.sigmoid(-d), jnn.sigmoid(d) * candidate

    def readout(self, h, x):
        return h


def _build(cls, width, hidden, state_size, *, dtype, key, **options):
    """A minGRU or minLSTM block mixer: `width -> hidden`."""
    return cls(width, hidden, dtype=dtype, key=key, **options)


for _name, _cls, _label in (("mingru", MinGRU, "minGRU"), ("minlstm", MinLSTM, "minLSTM")):
    register_mixer(
        _name,
        _cls,
        functools.partial(_build, _cls),
        summary=f"{_label} (parallel, sequential or log space)",
    )
