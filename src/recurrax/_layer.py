r"""The abstract recurrent layer: everything a diagonal linear recurrence layer does, once.

A concrete layer says how it makes the coefficients $(a_t, b_t)$ of
$h_t = a_t \odot h_{t-1} + b_t$ from its input and how it reads $y_t$ out of $h_t$; the full
call, the carried state, one-step streaming, the reverse direction and bidirectional
evaluation are written here and agree by construction.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Inexact, PRNGKeyArray, Shaped

from ._dtypes import working_dtype
from ._mixer import AbstractMixer, check_mask, check_resets, zero_masked
from ._recurrence import recurrence
from ._scan import AbstractScan
from ._validate import check_array, check_bool, check_real_floating, check_state


class AbstractRecurrentLayer(AbstractMixer):
    r"""Abstract base class of every layer built on a diagonal linear recurrence.

    Call convention, that of `jax.lax.scan`, for one example (`jax.vmap` for batches):

    - `layer.step(h, x_t) -> (h, y_t)` advances one time step;
    - `layer.scan(h, x) -> (h_last, y)` equals
        `jax.lax.scan(lambda h, x_t: layer.step(h, x_t), h, x)` (also with `reverse=True`) but
        is evaluated in parallel by the engine (pass a lambda: Equinox's bound methods are
        not hashable, which `lax.scan` needs);
    - `layer(x) -> y` runs the whole sequence from `layer.init_state()`, in both directions
        for a bidirectional layer.

    A subclass provides `input_size`, `bidirectional`, `log_space`, `method` (a scan
    strategy or `None` for the default), `init_state`, `coefficients` and `readout`. With
    `log_space=True` the coefficients are $(\log a_t, \log b_t)$ of a positive system and the
    parallel evaluation goes through [`recurrax.log_linear_recurrence`][]; the state itself is
    always kept in linear space.

    !!! example

        ```python
        import jax
        import recurrax

        for layer in (recurrax.LRU(3, 4, key=jax.random.key(0)),
                      recurrax.MinGRU(3, 4, key=jax.random.key(1))):
            assert isinstance(layer, recurrax.AbstractRecurrentLayer)
            a, b = layer.coefficients(jax.numpy.ones((5, 3)))    # the engine's (a_t, b_t)
        ```
    """

    no_weight_decay: ClassVar[bool] = True

    input_size: eqx.AbstractVar[int]
    output_size: eqx.AbstractVar[int]
    bidirectional: eqx.AbstractVar[bool]
    log_space: eqx.AbstractVar[bool]
    method: eqx.AbstractVar[AbstractScan | None]

    @abc.abstractmethod
    def init_state(self) -> Inexact[Array, "*state"]:
        """The state before the first step (zeros unless the layer learns one)."""

    @abc.abstractmethod
    def coefficients(
        self, x: Float[Array, "length input"]
    ) -> tuple[Inexact[Array, "..."], Inexact[Array, "length *state"]]:
        r"""The recurrence coefficients for an input sequence.

        **Arguments:**

        - `x`: the inputs, `(length, input_size)`.

        **Returns:**

        `(a, b)`: `a` either constant in time, shaped like the state, or per step,
        `(length, *state)`; `b` of shape `(length, *state)`.
        """

    @abc.abstractmethod
    def readout(
        self, h: Inexact[Array, "length *state"], x: Float[Array, "length input"]
    ) -> Float[Array, "length output"]:
        r"""The outputs $y_t$ from the states $h_t$ and the inputs $x_t$.

        For a bidirectional layer `h` is the forward and the reverse states concatenated on
        the last axis.
        """

    # -- written once ------------------------------------------------------------------------

    def _check_input(self, x, name: str, *, per_step: bool) -> None:
        expected = "(input_size,)" if per_step else "(length, input_size)"
        ndim = 1 if per_step else 2
        check_array(type(self).__name__, name, x)
        if x.ndim != ndim or x.shape[-1] != self.input_size:
            raise ValueError(
                f"{type(self).__name__}: `{name}` must have shape {expected} with "
                f"input_size={self.input_size}, got shape {tuple(x.shape)}."
            )
        check_real_floating(type(self).__name__, name, x)

    def _check_state(self, h) -> None:
        check_state(type(self).__name__, "h", h, jax.eval_shape(self.init_state))

    def _check_unidirectional(self, what: str) -> None:
        if self.bidirectional:
            raise ValueError(
                f"{type(self).__name__}: `{what}` is undefined for a bidirectional layer (its "
                f"reverse direction needs the whole sequence); call the layer on the full "
                f"sequence instead, or build it with bidirectional=False to stream."
            )

    def _nonnegative(self, h: Array) -> Array:
        """`h`, checked to be >= 0 (the state of a log-space layer): a ValueError for concrete
        values, `equinox.error_if` (whose result is used) under tracing."""
        message = (
            f"{type(self).__name__}: in log space the state `h` must be >= 0 (log h0 = -inf "
            f"for h0 = 0); got a negative entry. Use log_space=False for signed states."
        )
        if isinstance(h, jax.core.Tracer):
            return eqx.error_if(h, jnp.any(h < 0), message)
        if bool(jnp.any(h < 0)):
            raise ValueError(f"{message[:-1]}: min h = {float(jnp.min(h)):.6g}.")
        return h

    def _log_state(self, h: Array) -> Array:
        """log h of a non-negative state; log 0 = -inf, with a zero derivative there."""
        h = self._nonnegative(h)
        positive = h > 0
        return jnp.where(positive, jnp.log(jnp.where(positive, h, 1)), -jnp.inf)

    def _masked(self, a, b, mask):
        """Coefficients with masked steps turned into the identity step (a = 1, b = 0; in log
        space log a = 0, log b = -inf), so that they leave the state unchanged."""
        if mask is None:
            return a, b
        m = mask.reshape(mask.shape + (1,) * (b.ndim - 1))
        if a.ndim == b.ndim - 1:  # time-invariant: one coefficient per step from here on
            a = jnp.broadcast_to(a[None], b.shape)
        if self.log_space:
            identity_a, identity_b = jnp.zeros((), a.dtype), jnp.full((), -jnp.inf, b.dtype)
        else:
            identity_a, identity_b = jnp.ones((), a.dtype), jnp.zeros((), b.dtype)
        return jnp.where(m, a, identity_a), jnp.where(m, b, identity_b)

    def _state_dtype(self):
        return jax.eval_shape(self.init_state).dtype

    def _solve(self, a, b, h0, *, reverse: bool = False, mask=None, resets=None):
        """All states from `h0` (in linear space, in the working dtype: float16/bfloat16
        coefficients are accumulated in float32), by the engine of the layer's space; each
        segment of `resets` restarts from `init_state()`."""
        a, b = self._masked(a, b, mask)
        h0 = h0.astype(working_dtype(h0.dtype))
        restart = None
        if resets is not None:
            restart = self.init_state()
            restart = restart.astype(working_dtype(restart.dtype))
        fn = type(self).__name__
        if self.log_space:
            log_h = recurrence(
                fn,
                a,
                b,
                self._log_state(h0),
                reverse=reverse,
                method=self.method,
                resets=resets,
                restart=None if restart is None else self._log_state(restart),
                log_space=True,
            )
            return jnp.exp(log_h)
        return recurrence(
            fn, a, b, h0, reverse=reverse, method=self.method, resets=resets, restart=restart
        )

    def _planar_call(self, x) -> Array | None:
        """`self(x)` (no mask, no resets) by an equivalent evaluation with the complex state
        kept as real planes, or `None` where the layer has none for `x` (the general path
        then runs). A layer whose `coefficients` and `readout` are real matrix products
        around a complex time-invariant recurrence can provide it (see `LRU`)."""
        return None

    def _output(self, hs, x, mask):
        """Read out, in the activations' dtype (that of `x`), zero at masked steps."""
        return zero_masked(self.readout(hs, x).astype(x.dtype), mask)

    def scan(
        self,
        h: Inexact[Array, "*state"],
        x: Float[Array, "length input"],
        *,
        reverse: bool = False,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
    ) -> tuple[Inexact[Array, "*state"], Float[Array, "length output"]]:
        r"""Run the sequence `x` from the state `h`, as `jax.lax.scan` would with `step`, in
        parallel.

        **Arguments:**

        - `h`: the carried state, shaped like `init_state()`.
        - `x`: the inputs, `(length, input_size)`.
        - `reverse`: run from the last step to the first, as `jax.lax.scan(..., reverse=True)`.
        - `mask`: optional boolean `(length,)`; masked steps leave the state unchanged and
            output zeros (padding).
        - `resets`: optional boolean `(length,)`, `True` at the first step of each segment of
            a packed sequence: the state entering it is `init_state()` instead of the
            carried one (with `reverse=True`, at each segment's last step).

        **Returns:**

        `(h_last, y)`: the state after the last step processed and the outputs
        `(length, output_size)`. Splitting a sequence and carrying `h_last` into the second
        call gives the one-call result.

        **Raises:**

        `ValueError` for a bidirectional layer, shapes that do not fit, a state not shaped
        like `init_state()`, a non-floating input or a non-bool `reverse`.
        """
        self._check_unidirectional("scan")
        check_bool(type(self).__name__, "reverse", reverse)
        self._check_input(x, "x", per_step=False)
        check_mask(type(self).__name__, mask, x.shape[0])
        check_resets(type(self).__name__, resets, x.shape[0])
        self._check_state(h)
        a, b = self.coefficients(x)
        hs = self._solve(a, b, h, reverse=reverse, mask=mask, resets=resets)
        if x.shape[0] == 0:
            h_last = h.astype(hs.dtype)
        else:
            h_last = hs[0] if reverse else hs[-1]
        return h_last, self._output(hs, x, mask)

    def step(
        self, h: Inexact[Array, "*state"], x_t: Float[Array, " input"]
    ) -> tuple[Inexact[Array, "*state"], Float[Array, " output"]]:
        r"""Advance one time step: $h \leftarrow a \odot h + b$, then read $y_t$ out.

        **Arguments:**

        - `h`: the state, shaped like `init_state()`.
        - `x_t`: one input, `(input_size,)`.

        **Returns:**

        `(h, y_t)`: the new state (in the working dtype: float32 for float16/bfloat16
        layers) and the output `(output_size,)` in the dtype of `x_t`.

        **Raises:**

        `ValueError` for a bidirectional layer, shapes that do not fit, a state not shaped
        like `init_state()`, a non-floating input or a non-bool `reverse`.
        """
        self._check_unidirectional("step")
        self._check_input(x_t, "x_t", per_step=True)
        self._check_state(h)
        a, b = self.coefficients(x_t[None])
        dtype = working_dtype(b.dtype)
        a_t = (a if a.ndim == b.ndim - 1 else a[0]).astype(working_dtype(a.dtype))
        b_t = b[0].astype(dtype)
        if self.log_space:
            # One step needs no log-space accumulation: a h + b directly, whose derivative is
            # finite at h = 0.
            h = self._nonnegative(h)
            a_t, b_t = jnp.exp(a_t), jnp.exp(b_t)
        h = a_t * h.astype(dtype) + b_t
        return h, self._output(h[None], x_t[None], None)[0]

    def __call__(
        self,
        x: Float[Array, "length input"],
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "length output"]:
        r"""The outputs for a whole sequence from `init_state()`.

        **Arguments:**

        - `x`: the inputs, `(length, input_size)`.
        - `mask`: optional boolean `(length,)`; masked steps (padding) leave the state
            unchanged and output zeros; the reverse recurrence of a bidirectional layer then
            starts at the last valid step.
        - `resets`: optional boolean `(length,)`, `True` at the first step of each segment
            of a packed sequence: every segment starts from `init_state()` (in both
            directions for a bidirectional layer), so its outputs are those it has alone.
        - `key`: unused; accepted so that the layer composes like other Equinox layers.

        **Returns:**

        The outputs `(length, output_size)`, in the dtype of `x`. For a bidirectional layer,
        the forward and the reverse recurrences (both from `init_state()`) are read out
        together.

        **Raises:**

        `ValueError` naming `x` for a shape that does not fit or a non-floating dtype (an
        integer input is refused rather than computed in, or cast back to, integers).
        """
        del key
        self._check_input(x, "x", per_step=False)
        check_mask(type(self).__name__, mask, x.shape[0])
        check_resets(type(self).__name__, resets, x.shape[0])
        if mask is None and resets is None:
            y = self._planar_call(x)
            if y is not None:
                return y
        a, b = self.coefficients(x)
        h0 = self.init_state()
        hs = self._solve(a, b, h0, mask=mask, resets=resets)
        if self.bidirectional:
            hs_reverse = self._solve(a, b, h0, reverse=True, mask=mask, resets=resets)
            hs = jnp.concatenate([hs, hs_reverse], axis=-1)
        return self._output(hs, x, mask)


def _low_precision(u: Array, v: Array) -> np.dtype:
    """The dtype in which to multiply `u` and `v`: their common dtype, or the 16-bit one when
    one is float16/bfloat16 and the other its float32 working dtype (mixed precision)."""
    if u.dtype == v.dtype:
        return u.dtype
    for low, high in ((u.dtype, v.dtype), (v.dtype, u.dtype)):
        if np.dtype(low).itemsize == 2 and working_dtype(low) == high:
            return low
    return u.dtype  # mismatched otherwise: let the product raise its own error


def complex_projection(
    weight_re: Float[Array, "state input"],
    weight_im: Float[Array, "state input"],
    x: Float[Array, "length input"],
) -> Shaped[Array, "length state"]:
    r"""$W x_t$ for a complex $W = W_{re} + i W_{im}$ and a real $x$, as one real matmul
    $[W_{re}; W_{im}]\, x_t$ (half the work of promoting $x$ to complex).

    The input projection of a complex diagonal layer: a new layer's `coefficients` can build
    its $b_t$ with it (as [`recurrax.LRU`][] and [`recurrax.DiagonalSSM`][] do).

    **Arguments:**

    - `weight_re`, `weight_im`: the real and imaginary parts of $W$, `(state, input)`.
    - `x`: the real inputs, `(length, input)`.

    **Returns:**

    The complex products $W x_t$, `(length, state)`. A float16/bfloat16 product is returned in
    the float32-based complex dtype (the recurrence is accumulated in float32).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        w_re, w_im = jnp.eye(2), jnp.ones((2, 2))
        x = jnp.array([[1.0, 2.0]])
        print(recurrax.complex_projection(w_re, w_im, x))  # [[1.+3.j 2.+3.j]]
        ```
    """
    planes = planar_projection(weight_re, weight_im, x)
    return jax.lax.complex(planes[:, 0], planes[:, 1])


def real_readout(
    c_re: Float[Array, "output state"],
    c_im: Float[Array, "output state"],
    h: Shaped[Array, "length state"],
) -> Float[Array, "length output"]:
    r"""The real part of a complex readout,
    $\operatorname{Re}(C h_t) = C_{re} \operatorname{Re} h_t - C_{im} \operatorname{Im} h_t$,
    as one real matmul.

    The output map of a complex diagonal layer: a new layer's `readout` can use it.

    **Arguments:**

    - `c_re`, `c_im`: the real and imaginary parts of $C$, `(output, state)`.
    - `h`: the complex states, `(length, state)`.

    **Returns:**

    $\operatorname{Re}(C h_t)$, `(length, output)`, in the 16-bit dtype of $C$ for a float32
    state and a 16-bit $C$ (mixed precision), else in the dtype of $C$.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        h = jnp.array([[1.0 + 2.0j, 3.0 - 1.0j]])
        c_re, c_im = jnp.ones((1, 2)), jnp.ones((1, 2))
        print(recurrax.real_readout(c_re, c_im, h))  # [[3.]]: (1 + 3) - (2 - 1)
        ```
    """
    return planar_readout(c_re, c_im, jnp.stack([jnp.real(h), jnp.imag(h)], axis=-2))


def planar_projection(
    weight_re: Array, weight_im: Array, x: Array
) -> Float[Array, "length 2 state"]:
    """`complex_projection(weight_re, weight_im, x)` as real planes `(length, 2, state)`:
    the one real product `x [W_re; W_im]^T`, reshaped (no copy), in the working dtype."""
    n = weight_re.shape[0]
    stacked = jnp.concatenate([weight_re, weight_im], axis=0)
    dtype = _low_precision(stacked, x)
    out = x.astype(dtype) @ stacked.astype(dtype).T
    return out.astype(working_dtype(out.dtype)).reshape(x.shape[0], 2, n)


def planar_readout(
    c_re: Array, c_im: Array, planes: Float[Array, "length 2 state"]
) -> Float[Array, "length output"]:
    """`real_readout(c_re, c_im, h)` from the states as real planes `(length, 2, state)`
    (the state axis of `c_re`/`c_im` matching `state`), as one real product."""
    stacked = jnp.concatenate([c_re, -c_im], axis=1)
    parts = planes.reshape(planes.shape[:-2] + (2 * planes.shape[-1],))
    dtype = _low_precision(stacked, parts)
    return parts.astype(dtype) @ stacked.astype(dtype).T
