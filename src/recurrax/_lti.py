r"""Time-invariant layers and their convolution form.

A time-invariant diagonal layer $x_k = \bar\lambda \odot x_{k-1} + \bar B u_k$,
$y_k = \operatorname{Re}(C x_k) + D \odot u_k$ from $x_0 = 0$ is the causal convolution
$y_k = \sum_{j=0}^{k} K_j u_{k-j} + D \odot u_k$ with the kernel
$K_j = \operatorname{Re}(C \operatorname{diag}(\bar\lambda^j) \bar B)$, which an FFT evaluates in
$O(L \log L)$ per input-output pair.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Inexact, Shaped

from ._layer import AbstractRecurrentLayer
from ._recurrence import linear_recurrence
from ._scan import AbstractScan


class AbstractLTILayer(AbstractRecurrentLayer):
    r"""Abstract base class of the time-invariant layers ([`recurrax.LRU`][],
    [`recurrax.DiagonalSSM`][], [`recurrax.DiscreteDiagonalSystem`][]).

    Besides the recurrent evaluation (`step`, `scan`, `__call__`) they have a convolution
    form: `kernel(length)` and `convolve(x)`, which equals `layer(x)` up to rounding.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        lru = recurrax.LRU(3, 4, key=jax.random.key(0))
        assert isinstance(lru, recurrax.AbstractLTILayer)
        x = jax.random.normal(jax.random.key(1), (20, 3))
        assert jnp.allclose(lru.convolve(x), lru(x), atol=1e-5)  # convolution = recurrence
        ```
    """

    D: eqx.AbstractVar[Float[Array, " input"]]

    @property
    def output_size(self) -> int:
        r"""The outputs have the width of the inputs ($D \odot u$ is elementwise)."""
        return self.input_size

    @property
    def log_space(self) -> bool:
        """Time-invariant layers are complex: always evaluated in linear space."""
        return False

    @abc.abstractmethod
    def kernel(self, length: int, *, reverse: bool = False) -> Float[Array, "length ..."]:
        r"""The convolution kernel $K_j = \operatorname{Re}(C\operatorname{diag}(\bar\lambda^j)
        \bar B)$ for $j = 0, \dots, \text{length} - 1$.

        **Arguments:**

        - `length`: the number of taps.
        - `reverse`: the kernel of the reverse direction of a bidirectional layer (its own
            output matrix).

        **Returns:**

        `(length, output, input)` for a multi-input layer, or `(length, input)` for a bank of
        single-input systems (one per feature, a depthwise convolution).
        """

    def convolve(self, x: Float[Array, "length input"]) -> Float[Array, "length output"]:
        r"""The layer's outputs from a zero state evaluated as an FFT convolution.

        Equal to `layer(x)` up to rounding (see `kernel`); a bidirectional layer adds the
        anti-causal convolution with its reverse kernel. Which of the two evaluations is
        faster depends on the shapes: `python -m experiments speed lru` measures both.

        **Arguments:**

        - `x`: the inputs, `(length, input_size)`.

        **Returns:**

        The outputs, `(length, output_size)`.
        """
        self._check_input(x, "x", per_step=False)
        length = x.shape[0]
        y = causal_convolution(self.kernel(length), x)
        if self.bidirectional:
            y = y + causal_convolution(self.kernel(length, reverse=True), x[::-1])[::-1]
        return y + self.D[None] * x


def powers(
    lam: Inexact[Array, "*state"], length: int, method: AbstractScan | None = None
) -> Inexact[Array, "length *state"]:
    r"""$\lambda^j$ for $j = 0, \dots, \text{length}-1$: the impulse response of the recurrence,
    computed by the engine (exact repeated multiplication, no complex logarithms)."""
    impulse = jnp.zeros((length,) + lam.shape, lam.dtype).at[0].set(1)
    return linear_recurrence(lam, impulse, method=method)


def mimo_kernel(
    lam: Shaped[Array, " state"],
    weight: Shaped[Array, "state input"],
    c: Shaped[Array, "output state"],
    length: int,
) -> Float[Array, "length output input"]:
    r"""The convolution kernel of a time-invariant diagonal system,
    $K_j = \operatorname{Re}(C \operatorname{diag}(\lambda^j) W)$ for $j = 0, \dots, L - 1$.

    A time-invariant layer's `kernel` (see [`recurrax.AbstractLTILayer`][]) can return it:
    the outputs from a zero state are then $y_k = \sum_{j \le k} K_j u_{k-j}$ (plus the
    skip term).

    **Arguments:**

    - `lam`: the eigenvalues $\lambda$, `(state,)`.
    - `weight`: the input matrix $W$ (e.g. $\operatorname{diag}(\gamma) B$), `(state, input)`.
    - `c`: the output matrix $C$, `(output, state)`.
    - `length`: $L$, the number of kernel taps.

    **Returns:**

    The kernel, `(length, output, input)`.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        lam = jnp.array([0.5 + 0.0j])
        k = recurrax.mimo_kernel(lam, jnp.ones((1, 1), complex), jnp.ones((1, 1), complex), 3)
        print(k[:, 0, 0])  # [1.   0.5  0.25]
        ```
    """
    p = powers(lam, length)
    g = c[None] * p[:, None, :]  # (length, output, state)
    g_parts = jnp.concatenate([jnp.real(g), jnp.imag(g)], axis=-1)
    w_parts = jnp.concatenate([jnp.real(weight), -jnp.imag(weight)], axis=0)
    return g_parts @ w_parts


def depthwise_kernel(
    lam: Shaped[Array, "input state"],
    weight: Shaped[Array, "input state"],
    c: Shaped[Array, "input state"],
    length: int,
) -> Float[Array, "length input"]:
    r"""$K_{j,h} = \operatorname{Re}\sum_n C_{hn} \lambda_{hn}^j W_{hn}$ for a bank of
    single-input systems, `(length, input)`."""
    p = powers(lam, length)
    cw = c * weight
    cw = cw[None]
    return jnp.sum(jnp.real(p) * jnp.real(cw) - jnp.imag(p) * jnp.imag(cw), axis=-1)


def causal_convolution(
    kernel: Float[Array, "length ..."], u: Float[Array, "length input"]
) -> Float[Array, "length output"]:
    r"""$y_k = \sum_{j \le k} K_j u_{k-j}$ by FFT (zero-padded to a power of two $\ge 2L$).

    `kernel` is `(length, output, input)` (a full matrix per tap) or `(length, input)`
    (depthwise).
    """
    length = u.shape[0]
    n = 1 << max(1, (2 * length - 1).bit_length())
    u_f = jnp.fft.rfft(u, n=n, axis=0)
    k_f = jnp.fft.rfft(kernel, n=n, axis=0)
    if kernel.ndim == 3:
        y_f = jnp.einsum("fhm,fm->fh", k_f, u_f)
    else:
        y_f = k_f * u_f
    return jnp.fft.irfft(y_f, n=n, axis=0)[:length].astype(u.dtype)
