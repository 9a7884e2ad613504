r"""The two algebras a diagonal recurrence is solved in.

A recurrence $h_t = a_t \otimes h_{t-1} \oplus b_t$ only needs a semiring: the linear one
$(+, \times)$ for `linear_recurrence` and the log one $(\operatorname{logaddexp}, +)$ for
`log_linear_recurrence`. Every scan strategy is written once against this small interface.
"""

import abc
from typing import ClassVar

import equinox as eqx
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


LINEAR = LinearSemiring()
LOG = LogSemiring()
