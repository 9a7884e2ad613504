r"""The Real-Gated Linear Recurrent Unit of Griffin and Hawk: an input-dependent, real LRU."""

import math
from typing import ClassVar

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


MAX_SQRT_GRADIENT = 1000.0
"""The bound on the derivative of the square root in $\\sqrt{1 - a_t^2}$."""


@jax.custom_jvp
def sqrt_bounded_derivative(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    r"""$\sqrt{x}$ for $x \ge 0$, whose derivative $1/(2\sqrt{x})$ is replaced by
    $1/\sqrt{\max(4x,\ 1/M^2)} \le M$ with $M$ = `MAX_SQRT_GRADIENT` (1000).

    The value is the exact square root; only the derivative is bounded, and only where
    $x < 1/(4M^2) = 2.5\times10^{-7}$. Without the bound the derivative is infinite at
    $x = 0$, which is what $1 - a_t^2$ becomes once $a_t$ rounds to 1 (an RG-LRU gate
    closed in bfloat16): one infinite entry then makes every gradient NaN.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        x = jnp.asarray([0.25, 1e-4, 0.0])
        recurrax.sqrt_bounded_derivative(x)                   # [0.5, 0.01, 0.0]
        slope = jax.vmap(jax.grad(recurrax.sqrt_bounded_derivative))(x)
        # [1.0, 50.0, 1000.0]: 1 / (2 sqrt(x)), capped at 1000 instead of inf
        ```
    """
    return jnp.sqrt(x)


@sqrt_bounded_derivative.defjvp
def _sqrt_bounded_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    floor = jnp.asarray(1 / MAX_SQRT_GRADIENT**2, x.dtype)
    return jnp.sqrt(x), dx / jnp.sqrt(jnp.maximum(4 * x, floor))


class _BlockDiagonalLinear(eqx.Module):
    r"""$y = W x + b$ with $W$ block-diagonal: `num_heads` independent `(block, block)` maps.

    **Fields:** `weight` `(num_heads, block, block)` (row-major: `weight[k] @ x_k`), `bias`
    `(num_heads * block,)`.
    """

    weight: Float[Array, "heads block block"]
    bias: Float[Array, " size"]

    def __init__(self, size: int, num_heads: int, *, dtype, key: PRNGKeyArray):
        block = size // num_heads
        bound = 1 / math.sqrt(block)
        kw, kb = jax.random.split(key)
        self.weight = jax.random.uniform(kw, (num_heads, block, block), dtype, -bound, bound)
        self.bias = jax.random.uniform(kb, (size,), dtype, -bound, bound)

    def dense(self) -> Float[Array, "size size"]:
        """The full `(size, size)` matrix (zeros off the diagonal blocks)."""
        return jax.scipy.linalg.block_diag(*self.weight)

    def apply(self, x: Float[Array, "length size"]) -> Float[Array, "length size"]:
        heads, block, _ = self.weight.shape
        parts = x.reshape(x.shape[0], heads, block)
        y = jnp.einsum("lhj,hij->lhi", parts, self.weight).reshape(x.shape)
        return y + self.bias[None]


Gate = eqx.nn.Linear | _BlockDiagonalLinear


def _apply(gate: Gate, x):
    if isinstance(gate, _BlockDiagonalLinear):
        return gate.apply(x)
    return x @ gate.weight.T + gate.bias[None]


def gate_matrix(gate: Gate) -> Float[Array, "size size"]:
    """The gate's weight as a full matrix (block-diagonal gates included)."""
    return gate.dense() if isinstance(gate, _BlockDiagonalLinear) else gate.weight


class RGLRU(AbstractRecurrentLayer):
    r"""The Real-Gated Linear Recurrent Unit (RG-LRU) of Griffin and Hawk: the LRU with a real
    transition that depends on the input through two gates,

    $$r_t = \sigma(W_a x_t + b_a),\quad i_t = \sigma(W_x x_t + b_x),\quad
    a_t = \sigma(\Lambda)^{c\, r_t},$$

    $$h_t = a_t \odot h_{t-1} + \sqrt{1 - a_t^2} \odot (i_t \odot x_t),\qquad y_t = h_t.$$

    The recurrence gate $r_t$ chooses, per step and channel, how much of the slowest
    allowed decay $a = \sigma(\Lambda)$ to apply: $r_t \to 0$ keeps the state ($a_t \to 1$),
    $r_t = 1$ gives $a_t = a^c$. The factor $\sqrt{1 - a_t^2}$ keeps the state's variance
    equal to the input's for white-noise inputs (the LRU's $\gamma$ normalisation, here per
    step).

    How it is computed: $\log a_t = -c\, r_t \operatorname{softplus}(-\Lambda)$ (which is
    $c\, r_t \log\sigma(\Lambda)$ without forming $\sigma$), $1 - a_t^2 =
    -\operatorname{expm1}(2 \log a_t)$ (no cancellation when $a_t$ is close to 1), and the
    square root through [`recurrax.sqrt_bounded_derivative`][], whose derivative is at most
    1000, so that a gate that rounds $a_t$ to 1 (in bfloat16) gives finite gradients. The
    recurrence is solved by [`recurrax.linear_recurrence`][] in float32 or wider.

    **Fields:** `a_param` ($\Lambda$, `(size,)`), `input_gate` ($W_x, b_x$) and
    `recurrence_gate` ($W_a, b_a$): `eqx.nn.Linear(size, size)`, or block-diagonal maps with
    `num_heads` blocks (weight `(num_heads, size/num_heads, size/num_heads)`, as in Griffin);
    `c`, `num_heads`, `method`. Parameters: $2 s^2/n_h + 3 s$.

    !!! example

        ```python
        import jax
        import recurrax

        rglru = recurrax.RGLRU(16, key=jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (100, 16))
        y = rglru(x)                                      # (100, 16): y_t = h_t
        h, y_first = rglru.scan(rglru.init_state(), x[:60])
        h, y_rest = rglru.scan(h, x[60:])                 # the same outputs, in two pieces
        ```
    """

    recurrent_fields: ClassVar[frozenset[str]] = frozenset({"a_param"})
    transition_fields: ClassVar[frozenset[str]] = frozenset({"a_param"})

    a_param: Float[Array, " size"]
    input_gate: Gate
    recurrence_gate: Gate
    size: int = eqx.field(static=True)
    c: float = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)
    method: AbstractScan | None

    def __init__(
        self,
        size: int,
        *,
        c: float = 8.0,
        num_heads: int = 1,
        a_min: float = 0.9,
        a_max: float = 0.999,
        method: AbstractScan | None = None,
        dtype=None,
        key: PRNGKeyArray,
    ):
        r"""**Arguments:**

        - `size`: the width $s$ (inputs, state and outputs).
        - `c`: the exponent scale $c$ (8 in Griffin), positive.
        - `num_heads`: the number of diagonal blocks of the gates, dividing `size`; 1 gives
            dense `eqx.nn.Linear` gates.
        - `a_min`, `a_max`: $a = \sigma(\Lambda)$ starts area-uniform on the ring
            $[a_{\min}, a_{\max}]$, i.e. $a^2 \sim U[a_{\min}^2, a_{\max}^2]$, as in the
            public Griffin code ($[0.9, 0.999]$; the paper's text says this range is that of
            $a^c$, which the code does not do).
        - `method`: the scan strategy.
        - `dtype`: parameter dtype.
        - `key`: a PRNG key.

        The gates start as `eqx.nn.Linear`'s default (uniform $\pm 1/\sqrt{s}$, per block
        for `num_heads > 1`).

        **Raises:** `ValueError` naming the argument for a non-positive `size` or `c`, a
        `num_heads` that does not divide `size`, or a ring outside $0 < a_{\min} \le
        a_{\max} < 1$.
        """
        check_positive_int("RGLRU", "size", size)
        check_positive_int("RGLRU", "num_heads", num_heads)
        if size % num_heads:
            raise ValueError(
                f"RGLRU: `num_heads` must divide `size`, got num_heads={num_heads} and size={size}."
            )
        if not (isinstance(c, (int, float)) and 0 < c < math.inf):
            raise ValueError(f"RGLRU: `c` must be a finite positive number, got c={c!r}.")
        if not (0 < a_min <= a_max < 1):
            raise ValueError(
                f"RGLRU: the ring needs 0 < a_min <= a_max < 1, got a_min={a_min!r}, "
                f"a_max={a_max!r}."
            )
        dtype = default_float(dtype)
        k_a, k_x, k_r = jax.random.split(key, 3)
        u = jax.random.uniform(k_a, (size,), working_dtype(dtype))
        log_a = 0.5 * jnp.log(u * (a_max**2 - a_min**2) + a_min**2)
        # Λ = logit(a) = log a - log(1 - a).
        self.a_param = (log_a - jnp.log(-jnp.expm1(log_a))).astype(dtype)
        if num_heads == 1:
            self.input_gate = eqx.nn.Linear(size, size, dtype=dtype, key=k_x)
            self.recurrence_gate = eqx.nn.Linear(size, size, dtype=dtype, key=k_r)
        else:
            self.input_gate = _BlockDiagonalLinear(size, num_heads, dtype=dtype, key=k_x)
            self.recurrence_gate = _BlockDiagonalLinear(size, num_heads, dtype=dtype, key=k_r)
        self.size, self.c, self.num_heads = int(size), float(c), int(num_heads)
        self.method = method

    @property
    def input_size(self) -> int:
        return self.size

    @property
    def output_size(self) -> int:
        return self.size

    @property
    def bidirectional(self) -> bool:
        return False

    @property
    def log_space(self) -> bool:
        return False

    def init_state(self) -> Float[Array, " size"]:
        """Zeros, `(size,)`, in the working dtype (float32 for 16-bit parameters)."""
        return jnp.zeros((self.size,), working_dtype(self.a_param.dtype))

    def gates(
        self, x: Float[Array, "length size"]
    ) -> tuple[Float[Array, "length size"], Float[Array, "length size"]]:
        r"""The recurrence and input gates $(r_t, i_t)$, in the working dtype."""
        r = jnn.sigmoid(as_working(_apply(self.recurrence_gate, x)))
        i = jnn.sigmoid(as_working(_apply(self.input_gate, x)))
        return r, i

    def log_transition(self, x: Float[Array, "length size"]) -> Float[Array, "length size"]:
        r"""$\log a_t = -c\, r_t \operatorname{softplus}(-\Lambda)$, `(length, size)`."""
        r, _ = self.gates(x)
        return self._log_a(r)

    def _log_a(self, r):
        return -self.c * r * jnn.softplus(-as_working(self.a_param))[None]

    def coefficients(self, x):
        r, i = self.gates(x)
        log_a = self._log_a(r)
        normaliser = sqrt_bounded_derivative(-jnp.expm1(2 * log_a))
        return jnp.exp(log_a), normaliser * (i * as_working(x))

    def readout(self, h, x):
        return h


register_mixer(
    "rglru",
    RGLRU,
    lambda width, hidden, state_size, *, dtype, key, **options: RGLRU(
        hidden, dtype=dtype, key=key, **options
    ),
    block="hawk",
    summary="the Real-Gated LRU of Griffin/Hawk",
)
