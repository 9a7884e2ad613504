r"""The linear-recurrence engine: $h_t = a_t \odot h_{t-1} + b_t$, in linear and log space."""

import functools as ft

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType
from jaxtyping import Array, ArrayLike, Bool, Float, Inexact

from ._dtypes import working_dtype
from ._scan import (
    AbstractScan,
    arrays_platform,
    AssociativeScan,
    AutoScan,
    ChunkedScan,
    SequentialScan,
)
from ._semiring import LINEAR, LOG, PLANAR
from ._validate import check_bool


def _describe(name: str, x) -> str:
    return f"`{name}` of shape {tuple(np.shape(x))} and dtype {jnp.result_type(x)}"


def _fits(dtype, working) -> bool:
    """`dtype` may join a recurrence computed in `working`: the same dtype, or a real dtype
    of the same precision driving a complex state."""
    dtype = working_dtype(dtype)
    if dtype == working:
        return True
    return (
        jnp.issubdtype(working, jnp.complexfloating)
        and jnp.issubdtype(dtype, jnp.floating)
        and dtype.itemsize * 2 == working.itemsize
    )


def _prepare(fn: str, a, b, h0, *, complex_ok: bool, a_name="a", b_name="b", h0_name="h0"):
    """Check shapes and dtypes at trace time; return arrays in one working dtype."""
    b = jnp.asarray(b)
    a = jnp.asarray(a)
    if b.ndim < 1:
        raise ValueError(
            f"{fn}: {_describe(b_name, b)} must have a leading time axis, shape (length, *state)."
        )
    allowed = "real or complex floating" if complex_ok else "real floating"
    for name, x in ((a_name, a), (b_name, b)):
        kind = jnp.issubdtype(x.dtype, jnp.floating) or (
            complex_ok and jnp.issubdtype(x.dtype, jnp.complexfloating)
        )
        if not kind:
            raise ValueError(f"{fn}: {_describe(name, x)} must have a {allowed} dtype.")
    dtype = working_dtype(b.dtype)
    if not _fits(a.dtype, dtype):
        raise ValueError(
            f"{fn}: {_describe(a_name, a)} and {_describe(b_name, b)} have mismatched "
            f"dtypes; use the same dtype (a real `{a_name}` may drive a complex "
            f"`{b_name}` of the same precision)."
        )
    state_shape = b.shape[1:]
    length = b.shape[0]
    if a.ndim == b.ndim:
        if a.shape[0] != length or np.broadcast_shapes(a.shape, b.shape) != b.shape:
            raise ValueError(
                f"{fn}: {_describe(a_name, a)} has as many axes as {_describe(b_name, b)}, "
                f"so it is read per time step and must broadcast to {tuple(b.shape)} with "
                f"the same length {length}."
            )
        a = jnp.broadcast_to(a, b.shape)
    else:
        try:
            ok = np.broadcast_shapes(a.shape, state_shape) == state_shape
        except ValueError:
            ok = False
        if not ok or a.ndim > b.ndim:
            raise ValueError(
                f"{fn}: {_describe(a_name, a)} does not fit {_describe(b_name, b)}: a "
                f"time-invariant `{a_name}` must broadcast to the state shape "
                f"{tuple(state_shape)}, and a per-step `{a_name}` must have shape "
                f"{tuple(b.shape)}."
            )
        a = jnp.broadcast_to(a, state_shape)
    if h0 is not None:
        h0 = jnp.asarray(h0)
        if not _fits(h0.dtype, dtype):
            raise ValueError(
                f"{fn}: {_describe(h0_name, h0)} must have the dtype of {_describe(b_name, b)}."
            )
        try:
            ok = np.broadcast_shapes(h0.shape, state_shape) == state_shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{fn}: {_describe(h0_name, h0)} must have the state shape "
                f"{tuple(state_shape)} (that of `{b_name}` without its time axis)."
            )
        h0 = jnp.broadcast_to(h0.astype(dtype), state_shape)
    return a.astype(dtype), b.astype(dtype), h0


def _check_method(fn, method):
    if method is None:
        return AutoScan()
    if not isinstance(method, AbstractScan):
        raise ValueError(
            f"{fn}: `method` must be a scan strategy such as recurrax.ChunkedScan(), got "
            f"method={method!r}."
        )
    return method


def _resolve(method: AbstractScan, *arrays) -> AbstractScan:
    """An `AutoScan` given concrete arrays becomes the strategy for the platform they live on
    (under tracing it stays automatic and picks when the computation is lowered)."""
    if isinstance(method, AutoScan):
        platform = arrays_platform(*arrays)
        if platform is not None:
            return method.choose(arrays[1].shape[0], platform=platform)
    return method


def _shift(a: Array, reverse: bool) -> Array:
    """`a` one step along time, zero at the edge: a_{t+1} forward, a_{t-1} reverse (the
    coefficient of the transposed system). A pad, not a concatenation: over a sharded time
    axis it moves one row between neighbouring devices instead of gathering the axis."""
    low, high = (1, -1) if reverse else (-1, 1)
    return lax.pad(a, jnp.zeros((), a.dtype), [(low, high, 0)] + [(0, 0, 0)] * (a.ndim - 1))


def _explicit_axes(x: Array) -> tuple[str, ...]:
    """The mesh axes of explicit sharding type (`jax.make_mesh`'s default) in `x`'s type."""
    mesh = jax.typeof(x).sharding.mesh
    return tuple(n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit)


def _sharding_agnostic(solve, *args: Array | None) -> Array:
    """`solve(*args)` with every explicit mesh axis turned automatic around it.

    The engine shifts and scatters along time, which explicit sharding refuses on a sharded
    time axis; automatic axes let the compiler partition the strategy (or
    `SequenceParallelScan` partition it by hand). The result keeps the sharding of the last
    argument's type.
    """
    axes = _explicit_axes(args[1])
    if not axes:
        return solve(*args)
    out_sharding = jax.typeof(args[1]).sharding
    return jax.sharding.auto_axes(solve, axes=axes, out_sharding=out_sharding)(*args)


_SAME = object()


def _check_resets(fn: str, resets, length: int):
    """`resets` must be a boolean `(length,)` array (trace-time check)."""
    if resets is None:
        return None
    shape = tuple(np.shape(resets))
    dtype = jnp.result_type(resets)
    if shape != (length,) or dtype != jnp.bool_:
        raise ValueError(
            f"{fn}: `resets` must be a boolean array of shape ({length},), True at the first "
            f"step of each segment, got shape {shape} and dtype {dtype}."
        )
    return jnp.asarray(resets)


def segment_cuts(resets, reverse: bool):
    """The steps entered from the initial state: the segment starts, or, in reverse, each
    segment's last step (the step before a start)."""
    if not reverse or resets.shape[0] == 0:
        return resets
    return jnp.concatenate([resets[1:], jnp.zeros((1,), jnp.bool_)])


def _log_add(x: Array, y: Array) -> Array:
    """logaddexp whose value and derivatives stay exact where an argument is -inf (jnp's
    derivative treats -inf as 0 there), and -inf, not NaN, where both are."""
    top = jnp.maximum(x, y)
    dead = jnp.isneginf(top)
    top = jnp.where(dead, 0.0, top)
    total = jnp.exp(x - top) + jnp.exp(y - top)
    return jnp.where(dead, -jnp.inf, top + jnp.log(jnp.where(dead, 1.0, total)))


def _apply_resets(log_space: bool, a, b, restart, cuts):
    r"""Fold segment starts into the coefficients: at a cut the step is the pair
    $(0, a_t h_0 + b_t)$ of the recurrence's algebra ($(-\infty,
    \operatorname{logaddexp}(\log b_t, \log a_t + \log h_0))$ in log space), so every
    strategy, the tangent and the adjoint cut at the same places. A time-invariant `a`
    becomes per step here (and only here)."""
    c = cuts.reshape(cuts.shape + (1,) * (b.ndim - 1))
    a_t = a[None] if a.ndim == b.ndim - 1 else a
    if log_space:
        if restart is not None:
            b = jnp.where(c, _log_add(b, a_t + restart[None]), b)
        a = jnp.where(c, jnp.full((), -jnp.inf, a.dtype), a_t)
    else:
        if restart is not None:
            b = b + jnp.where(c, a_t * restart[None], jnp.zeros((), b.dtype))
        a = jnp.where(c, jnp.zeros((), a.dtype), a_t)
    return jnp.broadcast_to(a, b.shape), b


def _solve_linear(
    method: AbstractScan, a: Array, b: Array, h0: Array | None, reverse: bool
) -> Array:
    r"""Solve the bidiagonal system $h_t - a_t h_{t\mp1} = b_t$ with `lax.custom_linear_solve`.

    The initial state enters as $a_1 h_0$ added to the first input. JAX then differentiates
    forward by solving the same system for the tangent, and backward by the transposed
    system: the same recurrence run in the other direction, with the coefficients shifted by
    one step (the plain transpose; `jax.grad` supplies the conjugation for complex inputs).
    """
    invariant = a.ndim == b.ndim - 1
    first = b.shape[0] - 1 if reverse else 0
    if h0 is not None:
        b = b.at[first].add((a if invariant else a[first]) * h0)
    a_full = a[None] if invariant else a  # explicit broadcast over time

    def matvec(h):
        return h - a_full * _shift(h, not reverse)

    def solve(_, rhs):
        zero = jnp.zeros(rhs.shape[1:], rhs.dtype)
        return method.solve(LINEAR, a, rhs, zero, reverse=reverse)

    def transpose_solve(_, rhs):
        shifted = a if invariant else _shift(a, reverse)
        zero = jnp.zeros(rhs.shape[1:], rhs.dtype)
        return method.solve(LINEAR, shifted, rhs, zero, reverse=not reverse)

    return lax.custom_linear_solve(matvec, b, solve, transpose_solve)


def linear_recurrence(
    a: Inexact[ArrayLike, "..."],
    b: Inexact[ArrayLike, "length *state"],
    h0: Inexact[ArrayLike, "..."] | None = None,
    *,
    reverse: bool = False,
    method: AbstractScan | None = None,
    resets: Bool[ArrayLike, " length"] | None = None,
) -> Inexact[Array, "length *state"]:
    r"""Solve the diagonal linear recurrence $h_t = a_t \odot h_{t-1} + b_t$ for all $t$.

    **Arguments:**

    - `a`: the coefficients. With as many axes as `b`, read per time step
        (input-dependent, e.g. minGRU's $1 - z_t$): shape `(length, *state)` or
        broadcastable to it with the full length. With fewer axes, constant in time
        (time-invariant, e.g. an LRU's $\lambda$): broadcastable to `(*state)`.
    - `b`: the inputs, `(length, *state)`.
    - `h0`: the state before the first step, `(*state)`; `None` means zeros. With
        `reverse=True` it is the state after the last step.
    - `reverse`: run from the end, $h_t = a_t \odot h_{t+1} + b_t$.
    - `method`: a scan strategy ([`recurrax.SequentialScan`][],
        [`recurrax.AssociativeScan`][], [`recurrax.ChunkedScan`][]); the default
        [`recurrax.AutoScan`][] chooses by platform and length.
    - `resets`: optional boolean `(length,)`, `True` at the first step of each segment of a
        packed sequence: the state entering such a step is `h0` (zeros when `None`), not the
        previous segment's, so each segment is solved as if alone. With `reverse=True` the
        flags still mark segment starts, and the reverse recurrence restarts from `h0` at
        each segment's last step. Gradients cut at the same boundaries.

    **Returns:**

    All states $h_1, \dots, h_L$, shaped like `b`. Real or complex, float32 or float64; a
    real `a` may drive a complex `b`. float16/bfloat16 inputs are accumulated and returned in
    float32.

    **Raises:**

    `ValueError` naming the argument, its shape and dtype, when shapes or dtypes do not fit.

    Carrying state is exact: `linear_recurrence(a, b[k:], linear_recurrence(a, b[:k])[-1])`
    equals `linear_recurrence(a, b)[k:]` (with a time-invariant `a`). Derivatives reuse the
    engine: the tangent of a linear recurrence is the same recurrence, and its adjoint the
    reverse one, so `jax.grad`, `jax.jvp`/`jax.jacfwd` and `jax.vmap` compose with every
    strategy.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        lam = jnp.array([0.9, 0.5])              # time-invariant, state shape (2,)
        b = jnp.ones((4, 2))                     # length 4
        h = recurrax.linear_recurrence(lam, b)   # shape (4, 2)
        assert jnp.allclose(h[-1], (1 - lam**4) / (1 - lam))
        ```
    """
    return recurrence("linear_recurrence", a, b, h0, reverse=reverse, method=method, resets=resets)


def recurrence(
    fn: str,
    a,
    b,
    h0,
    *,
    reverse: bool,
    method,
    resets=None,
    restart=_SAME,
    log_space: bool = False,
):
    """The checked engine behind both public functions. `restart` is the state entering each
    segment start (`None` for zeros; by default `h0`): a layer restarts from its
    `init_state()` whatever state it carries in. In log space all states are logarithms."""
    method = _check_method(fn, method)
    check_bool(fn, "reverse", reverse)
    names = ("log_a", "log_b", "log_h0") if log_space else ("a", "b", "h0")
    a, b, h0 = _prepare(
        fn,
        a,
        b,
        h0,
        complex_ok=not log_space,
        a_name=names[0],
        b_name=names[1],
        h0_name=names[2],
    )
    method = _resolve(method, a, b, h0)
    resets = _check_resets(fn, resets, b.shape[0])
    if restart is _SAME:
        restart = h0
    elif restart is not None and resets is not None:
        restart = _prepare(fn, a, b, restart, complex_ok=not log_space, h0_name="restart")[2]
    reverse = bool(reverse)
    if log_space and h0 is None:
        h0 = jnp.full(b.shape[1:], -jnp.inf, b.dtype)
    if b.shape[0] == 0:
        return b
    if resets is None:
        restart = cuts = None
    else:
        cuts = segment_cuts(resets, reverse)
    return _compiled_solve(method, a, b, h0, restart, cuts, reverse=reverse, log_space=log_space)


@ft.partial(jax.jit, static_argnames=("method", "reverse", "log_space"))
def _compiled_solve(method, a, b, h0, restart, cuts, *, reverse: bool, log_space: bool):
    """The solve as one compiled program. Inside a user's `jax.jit` it is inlined; called
    eagerly (a layer or model applied outside `jax.jit`), it runs as one cached program per
    shape instead of evaluating the strategy's operations one at a time."""
    solve = _solve_log if log_space else _solve_linear
    if cuts is None:
        return _sharding_agnostic(lambda a, b, h0: solve(method, a, b, h0, reverse), a, b, h0)

    def solve_with_resets(a, b, h0, restart, cuts):
        a, b = _apply_resets(log_space, a, b, restart, cuts)
        return solve(method, a, b, h0, reverse)

    return _sharding_agnostic(solve_with_resets, a, b, h0, restart, cuts)


# The strategies whose `solve` is written against the semiring interface alone, so that they
# evaluate the planar form as they do every other (a user's strategy may assume complex
# values; `SequenceParallelScan` is left to the complex form, whose sharding it is written
# for).
_PLANAR_STRATEGIES = (AutoScan, SequentialScan, AssociativeScan, ChunkedScan)


def supports_planar(method: AbstractScan | None) -> bool:
    """Whether `planar_linear_recurrence` may evaluate with `method` (`None`: the default)."""
    return method is None or type(method) in _PLANAR_STRATEGIES


def _conjugate_planes(a: Array) -> Array:
    return a * jnp.asarray([[1], [-1]], a.dtype)


def _solve_planar(method: AbstractScan, a: Array, b: Array, reverse: bool) -> Array:
    r"""$h_t = a \odot h_{t\mp1} + b_t$ from $h_0 = 0$ in planar complex form (`a` `(2, n)`,
    `b` `(length, 2, n)`), as a linear system like `_solve_linear`: the transpose of the
    multiplication by $a$ on the planes is the multiplication by $\bar a$, so the backward
    pass is the reverse recurrence with $\bar a$, and JAX differentiates `matvec` for the
    gradient of $a$."""

    # The multiplication by `a` as one real 2 x 2 matrix per state, product[p, q] (p the plane
    # written, q the plane read): [[a_r, -a_i], [a_i, a_r]]. Written as a broadcast product
    # summed over q and then shifted by one step, the derivative with respect to `a` needs
    # the states `h` alone from the forward pass, and in the backward it is one product of
    # the shifted cotangent with `h` reduced over time: a single fused pass (per-plane slices,
    # a swapped copy or a pad per plane would each be materialised first: see the engine
    # page of the docs for what it saves).
    product = jnp.stack([jnp.stack([a[0], -a[1]]), jnp.stack([a[1], a[0]])])

    def matvec(h):
        return h - _shift(jnp.sum(product[None] * h[:, None], axis=-2), not reverse)

    def solve(_, rhs):
        zero = jnp.zeros(rhs.shape[1:], rhs.dtype)
        return method.solve(PLANAR, a, rhs, zero, reverse=reverse)

    def transpose_solve(_, rhs):
        zero = jnp.zeros(rhs.shape[1:], rhs.dtype)
        return method.solve(PLANAR, _conjugate_planes(a), rhs, zero, reverse=not reverse)

    return lax.custom_linear_solve(matvec, b, solve, transpose_solve)


@ft.partial(jax.jit, static_argnames=("method", "reverse"))
def _compiled_planar_solve(method, a, b, *, reverse: bool):
    return _sharding_agnostic(lambda a, b: _solve_planar(method, a, b, reverse), a, b)


def planar_linear_recurrence(
    a: Float[Array, "2 state"],
    b: Float[Array, "length 2 state"],
    *,
    reverse: bool = False,
    method: AbstractScan | None = None,
) -> Float[Array, "length 2 state"]:
    r"""`linear_recurrence(lam, b)` from a zero state for a complex time-invariant `lam`, with
    every complex array stored as real planes (`PlanarComplexSemiring`): `a` is
    `stack([lam.real, lam.imag])`, `(2, state)`, and `b` and the result `(length, 2, state)`.

    A complex layer whose input and output maps are real matrix products (`[W_re; W_im] u`
    and `[C_re, -C_im] [h_re; h_im]`) keeps its state in this form from one product to the
    other: no complex array is formed, and the backward pass gets its cotangents as planes
    that the transposed products read directly. Derivatives in both modes, as for
    `linear_recurrence`. `method` must satisfy `supports_planar` (the caller checks).
    """
    method = _check_method("planar_linear_recurrence", method)
    if b.shape[0] == 0:
        return b
    method = _resolve(method, a, b)
    return _compiled_planar_solve(method, a, b, reverse=bool(reverse))


def _safe_exp_ratio(num: Array, den: Array) -> Array:
    """exp(num - den), with 0 where den is -inf (an identically zero state)."""
    dead = jnp.isneginf(den)
    safe_den = jnp.where(dead, 0.0, den)
    return jnp.where(dead, 0.0, jnp.exp(jnp.minimum(num - safe_den, 0.0)))


@ft.partial(jax.custom_jvp, nondiff_argnums=(0, 4))
def _solve_log(method, log_a, log_b, log_h0, reverse):
    return method.solve(LOG, log_a, log_b, log_h0, reverse=reverse)


@_solve_log.defjvp
def _solve_log_jvp(method, reverse, primals, tangents):
    r"""Tangent of $\log h$ as a *linear* recurrence with coefficients in $[0, 1]$.

    With $\tau_t = \mathrm{d}h_t / h_t$:
    $\tau_t = r_t \tau_{t-1} + r_t\,\mathrm{d}\log a_t + s_t\,\mathrm{d}\log b_t$, where
    $r_t = a_t h_{t-1}/h_t$ and $s_t = b_t/h_t$ lie in $[0, 1]$ and $r_t + s_t = 1$; both come
    from the primal output, so nothing overflows and $h = 0$ gives zeros, not NaN.
    """
    log_a, log_b, log_h0 = primals
    d_a, d_b, d_h0 = tangents
    log_h = _solve_log(method, log_a, log_b, log_h0, reverse)
    first = log_h.shape[0] - 1 if reverse else 0
    previous = _shift(log_h, not reverse).at[first].set(log_h0)
    if log_a.ndim == log_b.ndim - 1:  # time-invariant: broadcast over time explicitly
        log_a, d_a = log_a[None], d_a[None]
    r = _safe_exp_ratio(log_a + previous, log_h)
    s = _safe_exp_ratio(log_b, log_h)
    drive = r * d_a + s * d_b
    d_log_h = _solve_linear(method, r, drive, d_h0, reverse)
    return log_h, d_log_h


def log_linear_recurrence(
    log_a: Float[ArrayLike, "..."],
    log_b: Float[ArrayLike, "length *state"],
    log_h0: Float[ArrayLike, "..."] | None = None,
    *,
    reverse: bool = False,
    method: AbstractScan | None = None,
    resets: Bool[ArrayLike, " length"] | None = None,
) -> Float[Array, "length *state"]:
    r"""Solve a positive recurrence $h_t = a_t h_{t-1} + b_t$ in log space: return $\log h$.

    Computes $\log h_t = \operatorname{logaddexp}(\log a_t + \log h_{t-1},\ \log b_t)$, the
    form minGRU and minLSTM train in. Every strategy combines in log space
    directly, so (unlike the cumulative-sum form $A_t + \operatorname{logcumsumexp}(\log b - A)$)
    no large partial sums cancel and the float32 error stays that of a plain loop.

    **Arguments:**

    - `log_a`: $\log a$, `(length, *state)` per step or broadcastable to `(*state)` constant
        in time (same rule as [`recurrax.linear_recurrence`][]).
    - `log_b`: $\log b$, `(length, *state)`; `-inf` entries mean $b = 0$.
    - `log_h0`: $\log h_0$, `(*state)`; `None` (or `-inf`) means $h_0 = 0$.
    - `reverse`: run from the end.
    - `method`: a scan strategy, as for [`recurrax.linear_recurrence`][].
    - `resets`: optional boolean `(length,)`, `True` at the first step of each segment; the
        state entering it is $h_0$ (in log space the restart contributes $\log h_0$, nothing
        when `log_h0` is `None`), as for [`recurrax.linear_recurrence`][].

    **Returns:**

    $\log h_1, \dots, \log h_L$, shaped like `log_b`, real floating.

    Derivatives are exact and finite even for $h_0 = 0$ (`log_h0 = -inf`) and saturated
    gates: the tangent is itself a linear recurrence whose coefficients
    $a_t h_{t-1}/h_t \in [0, 1]$ come from the output, solved by the linear engine.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        log_a = jnp.log(jnp.full((3, 2), 0.5))
        log_b = jnp.log(jnp.ones((3, 2)))
        log_h = recurrax.log_linear_recurrence(log_a, log_b)
        assert jnp.allclose(jnp.exp(log_h[-1]), 1.75)   # 1 -> 1.5 -> 1.75
        ```
    """
    return recurrence(
        "log_linear_recurrence",
        log_a,
        log_b,
        log_h0,
        reverse=reverse,
        method=method,
        resets=resets,
        log_space=True,
    )
