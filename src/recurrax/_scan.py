r"""Scan strategies: *how* a diagonal recurrence is evaluated, never *what* it computes.

Each strategy solves $h_t = a_t \otimes h_{t-1} \oplus b_t$ for all $t$ from a given initial
state, in either direction, over a semiring (`_semiring.py`). The coefficient `a` is either
per time step, shaped like `b` as `(length, *state)`, or time-invariant, shaped `(*state)`.
"""

import abc
import math

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._semiring import AbstractSemiring


def _time_invariant(a: Array, b: Array) -> bool:
    return a.ndim == b.ndim - 1


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def arrays_platform(*arrays) -> str | None:
    """The platform (`"cpu"`, `"gpu"`, `"tpu"`, ...) the given concrete arrays live on, or
    `None` under tracing or when they span several platforms (`None` entries are skipped)."""
    platforms = set()
    for x in arrays:
        if x is None:
            continue
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
            return None
        platforms.update(device.platform for device in x.devices())
    return platforms.pop() if len(platforms) == 1 else None


class AbstractScan(eqx.Module):
    r"""Abstract base class for the evaluation strategies of a diagonal linear recurrence.

    A strategy is passed as `method=` to [`recurrax.linear_recurrence`][] and
    [`recurrax.log_linear_recurrence`][] (and to every layer); all strategies compute the
    same states and differ only in speed, memory and rounding order. Subclass and implement
    `solve` to add one.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        a, b = jnp.full((6, 2), 0.5), jnp.ones((6, 2))            # (length, state)
        strategies = (recurrax.SequentialScan(), recurrax.AssociativeScan(), recurrax.AutoScan())
        for method in strategies:
            assert isinstance(method, recurrax.AbstractScan)
            assert jnp.allclose(recurrax.linear_recurrence(a, b, method=method)[-1], 2 - 0.5**5)
        ```
    """

    @abc.abstractmethod
    def solve(
        self,
        semiring: AbstractSemiring,
        a: Array,
        b: Array,
        h0: Array,
        *,
        reverse: bool,
    ) -> Array:
        r"""Solve $h_t = a_t \otimes h_{t-1} \oplus b_t$ for every $t$.

        **Arguments:**

        - `semiring`: the algebra (linear or log).
        - `a`: coefficients, `(length, *state)` or time-invariant `(*state)`.
        - `b`: inputs, `(length, *state)`.
        - `h0`: the state before the first step, `(*state)`.
        - `reverse`: run from the last time step to the first (then $h_{t+1}$ takes the
            place of $h_{t-1}$).

        **Returns:**

        All states, `(length, *state)`, same dtype as `b`.
        """


class SequentialScan(AbstractScan):
    r"""One step after another with `jax.lax.scan`: $O(L)$ work and $O(L)$ depth.

    The most accurate strategy (the rounding order of a plain loop) and the cheapest in
    memory; on CPU its cost is dominated by a fixed overhead per time step.

    **Arguments:**

    - `unroll`: passed to `jax.lax.scan`.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        h = recurrax.linear_recurrence(
            jnp.asarray(0.5), jnp.ones((4, 1)), method=recurrax.SequentialScan(unroll=2)
        )
        print(h[:, 0])                                          # [1.    1.5   1.75  1.875]
        ```
    """

    unroll: int = eqx.field(default=1, static=True)

    def __check_init__(self):
        if not _is_int(self.unroll) or self.unroll < 1:
            raise ValueError(
                f"SequentialScan: `unroll` must be an integer >= 1, got unroll={self.unroll!r}."
            )

    def solve(self, semiring, a, b, h0, *, reverse):
        if _time_invariant(a, b):

            def step(h, b_t):
                h = semiring.combine(a, h, b_t)
                return h, h

            xs = b
        else:

            def step(h, ab_t):
                h = semiring.combine(ab_t[0], h, ab_t[1])
                return h, h

            xs = (a, b)
        _, hs = lax.scan(step, h0, xs, reverse=reverse, unroll=self.unroll)
        return hs


class AssociativeScan(AbstractScan):
    r"""A parallel prefix scan with `jax.lax.associative_scan`: $O(L)$ work, $O(\log L)$ depth.

    Pairs compose as $(a_i, b_i) \bullet (a_j, b_j) = (a_j a_i,\ a_j b_i + b_j)$ (see
    [the engine](../concepts/engine.md)).
    The strategy of choice on accelerators; on CPU its strided passes over memory make it
    slower than [`recurrax.ChunkedScan`][].

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        h = recurrax.linear_recurrence(
            jnp.asarray(0.5), jnp.ones((4, 1)), method=recurrax.AssociativeScan()
        )
        print(h[:, 0])                                          # [1.    1.5   1.75  1.875]
        ```
    """

    def solve(self, semiring, a, b, h0, *, reverse):
        length = b.shape[0]
        if _time_invariant(a, b):
            a = jnp.broadcast_to(a, b.shape)
        # The initial state enters through the first step processed.
        first = length - 1 if reverse else 0
        b = b.at[first].set(semiring.combine(a[first], h0, b[first]))

        def compose(earlier, later):
            a_e, b_e = earlier
            a_l, b_l = later
            return semiring.mul(a_l, a_e), semiring.combine(a_l, b_e, b_l)

        _, hs = lax.associative_scan(compose, (a, b), reverse=reverse, axis=0)
        return hs


def default_chunk_size(length: int) -> int:
    r"""The chunk size [`recurrax.ChunkedScan`][] uses when none is given: the power of two
    nearest $\sqrt{L}$, between 8 and 512.

    The three passes of the chunked scan take $C + L/C + C$ loop iterations, which this
    keeps near their minimum while each iteration still works on $L/C$ time steps at once.

    !!! example

        ```python
        import recurrax

        print([recurrax.default_chunk_size(n) for n in (10, 1000, 10**6)])   # [8, 32, 512]
        ```
    """
    if length <= 1:
        return 1
    c = 2 ** round(math.log2(math.sqrt(length)))
    return int(min(max(c, 8), 512))


class ChunkedScan(AbstractScan):
    r"""Sequential inside chunks, combined across chunks: exact, in three passes.

    Time is cut into $M$ chunks of $C$ consecutive steps. (1) All chunks are run at once,
    step by step from a zero state, keeping only their final states and the chunk products
    $\prod a$; (2) a sequential scan over the $M$ chunks carries the true state into each
    chunk; (3) all chunks are run again at once from their true initial states, writing
    every state. Each of the $2C + M$ loop iterations touches $M$ (or $C$) time steps
    together, so the fixed cost per iteration that dominates `lax.scan` on CPU is paid
    $O(\sqrt{L})$ times instead of $L$ times, and the memory traffic is two reads of `b` and
    one write of `h`.

    **Arguments:**

    - `chunk_size`: $C$; `None` picks the power of two nearest $\sqrt{L}$ (see
        [`recurrax.default_chunk_size`][]). A length that is not a multiple of $C$ is padded.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        a = jax.random.uniform(jax.random.key(0), (1000, 8), minval=0.9, maxval=0.99)
        b = jax.random.normal(jax.random.key(1), (1000, 8))
        h = recurrax.linear_recurrence(a, b, method=recurrax.ChunkedScan(chunk_size=32))
        reference = recurrax.linear_recurrence(a, b, method=recurrax.SequentialScan())
        assert jnp.allclose(h, reference, atol=1e-4)            # exact up to rounding
        ```
    """

    chunk_size: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.chunk_size is not None and not (_is_int(self.chunk_size) and self.chunk_size >= 1):
            raise ValueError(
                f"ChunkedScan: `chunk_size` must be a positive integer or None, got "
                f"chunk_size={self.chunk_size!r}."
            )

    def solve(self, semiring, a, b, h0, *, reverse):
        length = b.shape[0]
        state_shape = b.shape[1:]
        invariant = _time_invariant(a, b)
        size = self.chunk_size if self.chunk_size is not None else default_chunk_size(length)
        size = min(size, length)
        num = -(-length // size)
        pad = num * size - length
        if pad:
            # Padding is processed after every real step, so it changes no real state.
            where = ((pad, 0) if reverse else (0, pad),) + ((0, 0),) * len(state_shape)
            zero = semiring.zero((), b.dtype)
            b = jnp.pad(b, where, constant_values=zero)
            if not invariant:
                a = jnp.pad(a, where, constant_values=semiring.one((), a.dtype))
        blocks = b.reshape(num, size, *state_shape)
        if invariant:
            a_blocks = None
            chunk_a = jnp.broadcast_to(semiring.power(a, size), (num,) + state_shape)
        else:
            a_blocks = a.reshape(num, size, *state_shape)
        order = (lambda i: size - 1 - i) if reverse else (lambda i: i)
        # A time-invariant coefficient, shaped to act on all chunks at once.
        a_all = a[None] if invariant else None

        def coeff(c):
            if invariant:
                return a_all
            return lax.dynamic_index_in_dim(a_blocks, c, axis=1, keepdims=False)

        def column(c):
            return lax.dynamic_index_in_dim(blocks, c, axis=1, keepdims=False)

        # Pass 1: final state of every chunk from a zero state (and the chunk products).
        zeros = semiring.zero((num,) + state_shape, b.dtype)
        if invariant:

            def local(i, h):
                return semiring.combine(a_all, h, column(order(i)))

            ends = lax.fori_loop(0, size, local, zeros)
        else:

            def local_with_product(i, carry):
                h, p = carry
                c = order(i)
                a_c = coeff(c)
                return semiring.combine(a_c, h, column(c)), semiring.mul(a_c, p)

            ones = semiring.one((num,) + state_shape, a.dtype)
            ends, chunk_a = lax.fori_loop(0, size, local_with_product, (zeros, ones))

        # Pass 2: the true state entering each chunk.
        def across(h, pe):
            p, e = pe
            return semiring.combine(p, h, e), h

        _, starts = lax.scan(across, h0, (chunk_a, ends), reverse=reverse)

        # Pass 3: every state, from the true starts, written over the inputs in place.
        def full(i, carry):
            h, out = carry
            c = order(i)
            b_c = lax.dynamic_index_in_dim(out, c, axis=1, keepdims=False)
            h = semiring.combine(coeff(c), h, b_c)
            return h, lax.dynamic_update_index_in_dim(out, h, c, axis=1)

        _, out = lax.fori_loop(0, size, full, (starts, blocks))
        out = out.reshape(num * size, *state_shape)
        if pad:
            out = out[pad:] if reverse else out[:length]
        return out


class AutoScan(AbstractScan):
    r"""The default strategy: chooses by the platform the computation runs on, and by shape,
    from measurements.

    - CPU: [`recurrax.SequentialScan`][] for $L \le$ `sequential_below` (256), otherwise
        [`recurrax.ChunkedScan`][] with the default chunk size (measured by
        `python -m experiments speed engine`; see the performance page).
    - GPU and TPU: [`recurrax.AssociativeScan`][], the usual choice on accelerators.

    The platform is that of the arrays, not JAX's default backend: concrete arrays are
    solved where they live, and under `jax.jit` the choice is made when the computation is
    lowered for its device (`jax.lax.platform_dependent`), so CPU arrays on a GPU machine
    get the CPU strategy.

    !!! example

        ```python
        import recurrax

        auto = recurrax.AutoScan()                              # what method=None uses
        print(auto.choose(100), auto.choose(5000))  # on a CPU: SequentialScan() ChunkedScan()
        ```
    """

    sequential_below: int = eqx.field(default=256, static=True)

    def __check_init__(self):
        if not _is_int(self.sequential_below) or self.sequential_below < 0:
            raise ValueError(
                f"AutoScan: `sequential_below` must be a non-negative integer, got "
                f"sequential_below={self.sequential_below!r}."
            )

    def choose(self, length: int, platform: str | None = None) -> AbstractScan:
        """The strategy used for a sequence of `length` steps on `platform` (`"cpu"`,
        `"gpu"`, `"tpu"`, ...; `None`: JAX's default backend)."""
        if platform is None:
            platform = jax.default_backend()
        if platform == "cpu":
            if length <= self.sequential_below:
                return SequentialScan()
            return ChunkedScan()
        return AssociativeScan()

    def solve(self, semiring, a, b, h0, *, reverse):
        length = b.shape[0]
        platform = arrays_platform(a, b, h0)
        if platform is not None:
            return self.choose(length, platform).solve(semiring, a, b, h0, reverse=reverse)

        def by(method):
            return lambda a, b, h0: method.solve(semiring, a, b, h0, reverse=reverse)

        cpu, accelerator = self.choose(length, "cpu"), self.choose(length, "gpu")
        return lax.platform_dependent(a, b, h0, cpu=by(cpu), default=by(accelerator))
