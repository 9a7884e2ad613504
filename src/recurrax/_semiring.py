r"""The two algebras a diagonal recurrence is solved in.

A recurrence $h_t = a_t \otimes h_{t-1} \oplus b_t$ only needs a semiring: the linear one
$(+, \times)$ for `linear_recurrence` and the log one $(\operatorname{logaddexp}, +)$ for
`log_linear_recurrence`. Every scan strategy is written once against this small interface.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array


class AbstractSemiring(eqx.Module):
    r"""The operations a scan strategy needs: $a \otimes h \oplus b$, products of
    coefficients and the identity elements."""

    name: ClassVar[str]

    @abc.abstractmethod
    def combine(self, a: Array, h: Array, b: Array) -> Array:
        r"""Return $a \otimes h \oplus b$ (one step of the recurrence)."""

    @abc.abstractmethod
    def mul(self, a_later: Array, a_earlier: Array) -> Array:
        """Return the coefficient of two steps taken in turn."""

    @abc.abstractmethod
    def power(self, a: Array, n: int) -> Array:
        r"""Return $a$ multiplied with itself $n$ times (a time-invariant chunk product)."""

    @abc.abstractmethod
    def zero(self, shape: tuple[int, ...], dtype) -> Array:
        r"""The state of an empty sum ($h = 0$, or $\log h = -\infty$)."""

    @abc.abstractmethod
    def one(self, shape: tuple[int, ...], dtype) -> Array:
        """The coefficient that leaves a state unchanged."""


class LinearSemiring(AbstractSemiring):
    r"""$(+, \times)$ over real or complex numbers."""

    name: ClassVar[str] = "linear"

    def combine(self, a, h, b):
        return a * h + b

    def mul(self, a_later, a_earlier):
        return a_later * a_earlier

    def power(self, a, n):
        return a**n

    def zero(self, shape, dtype):
        return jnp.zeros(shape, dtype)

    def one(self, shape, dtype):
        return jnp.ones(shape, dtype)


class LogSemiring(AbstractSemiring):
    r"""$(\operatorname{logaddexp}, +)$ over $\mathbb{R} \cup \{-\infty\}$: the log of a
    positive linear recurrence."""

    name: ClassVar[str] = "log"

    def combine(self, a, h, b):
        return jnp.logaddexp(a + h, b)

    def mul(self, a_later, a_earlier):
        return a_later + a_earlier

    def power(self, a, n):
        return a * n

    def zero(self, shape, dtype):
        return jnp.full(shape, -jnp.inf, dtype)

    def one(self, shape, dtype):
        return jnp.zeros(shape, dtype)


class PlanarComplexSemiring(AbstractSemiring):
    r"""$(+, \times)$ over complex numbers stored as two real planes: an array of shape
    `(..., 2, n)` holds $n$ complex numbers, their real parts at index 0 of axis $-2$ and
    their imaginary parts at index 1.

    The product $(a_r + i a_i)(h_r + i h_i)$ is written $a_r h + s \odot \tilde h$ with
    $\tilde h$ the planes of $h$ swapped and $s = (-a_i, a_i)$: elementwise real arithmetic
    along contiguous planes, with no interleaved complex values. A complex time-invariant
    layer keeps its state in this form between its real input and output matrix products
    (see `planar_linear_recurrence`).
    """

    name: ClassVar[str] = "planar"

    def combine(self, a, h, b):
        return self.mul(a, h) + b

    def mul(self, a_later, a_earlier):
        real = a_later[..., 0:1, :]
        imag = a_later[..., 1:2, :]
        signed = jnp.concatenate([-imag, imag], axis=-2)
        return real * a_earlier + signed * a_earlier[..., ::-1, :]

    def power(self, a, n):
        z = lax.complex(a[..., 0, :], a[..., 1, :]) ** n
        return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-2).astype(a.dtype)

    def zero(self, shape, dtype):
        return jnp.zeros(shape, dtype)

    def one(self, shape, dtype):
        if len(shape) < 2 or shape[-2] != 2:
            raise ValueError(
                f"PlanarComplexSemiring: a planar complex array has shape (..., 2, n), got "
                f"shape {tuple(shape)}."
            )
        return jnp.zeros(shape, dtype).at[..., 0, :].set(1)


LINEAR = LinearSemiring()
LOG = LogSemiring()
PLANAR = PlanarComplexSemiring()
