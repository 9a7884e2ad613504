r"""Nonlinear recurrences $h_t = f(h_{t-1}, x_t)$ evaluated in parallel over time by Newton's
method, each Newton step being a linear recurrence solved by the engine (DEER, quasi-DEER).

Stack the states $H = (h_1, \dots, h_L)$. Given an iterate $H^{(k)}$ and Jacobians
$J_t = \partial f/\partial h\,(h^{(k)}_{t-1}, x_t)$ (or an approximation of them), the next
iterate solves the *linear* recurrence

$$h^{(k+1)}_t = J_t\, h^{(k+1)}_{t-1} + \big(f(h^{(k)}_{t-1}, x_t) - J_t\, h^{(k)}_{t-1}\big).$$

Whatever $J_t$ is, $h^{(k+1)}_1 = f(h_0, x_1)$ and by induction the first $k$ states are exact
after $k$ iterations, so at most $L$ iterations are ever needed. Derivatives are taken at the
solution by the implicit function theorem: the adjoint
$\bar h_t = \partial\ell/\partial h_t + J_{t+1}^\top \bar h_{t+1}$ is a linear recurrence in
reverse, solved by the same machinery as the forward pass.
"""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._recurrence import linear_recurrence
from ._scan import AbstractScan


def default_tol(dtype) -> float:
    """The default tolerance of the Newton solvers: 1e-10 for float64, 1e-5 otherwise."""
    return 1e-10 if np.dtype(dtype) == np.dtype(np.float64) else 1e-5


class AbstractNonlinearSolver(eqx.Module):
    r"""Abstract base class of the ways to evaluate $h_t = f(h_{t-1}, x_t)$ for all $t$.

    A solver is a value passed as `solver=` to [`recurrax.nonlinear_recurrence`][],
    [`recurrax.GRU`][] and [`recurrax.LSTM`][]. Every solver computes the same states (up to
    its tolerance) and the same gradients; they differ in speed, memory and convergence.
    The concrete solvers are [`recurrax.Sequential`][], [`recurrax.DEER`][],
    [`recurrax.QuasiDEER`][] and [`recurrax.DampedQuasiDEER`][].

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        x = jax.random.normal(jax.random.key(1), (50, 3))
        y = []
        for solver in (recurrax.Sequential(), recurrax.QuasiDEER()):
            assert isinstance(solver, recurrax.AbstractNonlinearSolver)
            y.append(recurrax.GRU(3, 4, solver=solver, key=jax.random.key(0))(x))
        assert jnp.allclose(y[0], y[1], atol=1e-4)              # the same states
        ```
    """


class Sequential(AbstractNonlinearSolver):
    r"""One step after another with `jax.lax.scan`: the reference, $O(L)$ depth.

    Gradients are ordinary backpropagation through the scan. It always reports one
    iteration (one pass over the sequence) and convergence.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        h, stats = recurrax.nonlinear_recurrence(
            lambda h, x_t: jnp.tanh(0.5 * h + x_t), jnp.ones((4, 2)), jnp.zeros(2),
            solver=recurrax.Sequential(),
        )
        assert h.shape == (4, 2) and int(stats["iterations"]) == 1
        ```
    """


class AbstractNewtonSolver(AbstractNonlinearSolver):
    r"""Abstract base class of the Newton solvers: iterate the linearised recurrence until
    the update falls under the tolerance.

    Subclasses choose the Jacobian used in each step (`_linearise`) and how the linear
    recurrence it defines is solved forwards (`_solve`) and, for the adjoint, in reverse
    (`_adjoint`).

    **Stopping rule.** Iteration $k$ is accepted as converged when
    $\max_{t,i} |h^{(k)}_{t,i} - h^{(k-1)}_{t,i}| / (1 + |h^{(k)}_{t,i}|) \le$ `tol`, or when
    $k \ge L$ (then the states are exact by construction). If neither holds after
    `max_steps` iterations, or an iterate is not finite, the solve has failed: with
    `throw=True` (the default) this raises a runtime error (through `equinox.error_if`,
    also under `jax.jit`), and with `throw=False` the last iterate is returned with
    `stats["converged"]` false.

    !!! example

        ```python
        import jax
        import recurrax

        solver = recurrax.DEER(tol=1e-6)                        # a Newton solver
        assert isinstance(solver, recurrax.AbstractNewtonSolver)
        gru = recurrax.GRU(3, 4, solver=solver, key=jax.random.key(0))
        y = gru(jax.random.normal(jax.random.key(1), (30, 3)))  # (30, 4), parallel over time
        ```
    """

    max_steps: eqx.AbstractVar[int | None]
    tol: eqx.AbstractVar[float | None]
    throw: eqx.AbstractVar[bool]

    def _check(self, owner):
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise ValueError(
                f"{owner}: `max_steps` must be a positive integer or None, got "
                f"max_steps={self.max_steps!r}."
            )
        if self.tol is not None and not (self.tol > 0):
            raise ValueError(f"{owner}: `tol` must be positive or None, got tol={self.tol!r}.")

    def _limits(self, length, dtype):
        steps = length if self.max_steps is None else self.max_steps
        tol = default_tol(dtype) if self.tol is None else self.tol
        return steps, tol

    @abc.abstractmethod
    def _linearise(self, f, diagonal, prev, x):
        """`(f(prev_t, x_t), J_t)` for all t."""

    @abc.abstractmethod
    def _solve(self, jac, b, h0):
        """Solve h_t = J_t h_{t-1} + b_t forwards."""

    @abc.abstractmethod
    def _adjoint(self, f, diagonal, prev, x, g, vjp_prev):
        """Solve lam_t = g_t + J_{t+1}^T lam_{t+1}, returning (lam, converged)."""

    def _forward(self, f, diagonal, x, h0):
        length = jax.tree.leaves(x)[0].shape[0]
        max_steps, tol = self._limits(length, h0.dtype)
        tol = jnp.asarray(tol, h0.dtype)

        def newton(states):
            prev = _previous(h0, states)
            value, jac = self._linearise(f, diagonal, prev, x)
            return self._solve(jac, value - _apply(jac, prev), h0)

        def cond(carry):
            k, _, delta = carry
            return (k < max_steps) & (k < length) & (delta > tol)

        def body(carry):
            k, states, _ = carry
            new = newton(states)
            delta = jnp.max(jnp.abs(new - states) / (1 + jnp.abs(new)))
            return k + 1, new, delta

        init = (
            jnp.asarray(0, jnp.int32),
            jnp.broadcast_to(h0, (length,) + h0.shape),
            jnp.asarray(jnp.inf, h0.dtype),
        )
        k, states, delta = lax.while_loop(cond, body, init)
        converged = jnp.all(jnp.isfinite(states)) & ((delta <= tol) | (k >= length))
        return states, k, converged


def _previous(h0, states):
    return jnp.concatenate([h0[None], states[:-1]], axis=0)


def _apply(jac, h):
    if jac.ndim == h.ndim:  # diagonal
        return jac * h
    return jnp.einsum("tij,tj->ti", jac, h)


def _values_and_diagonals(f, diagonal, prev, x):
    value = jax.vmap(f)(prev, x)
    if diagonal is None:
        dense = jax.vmap(jax.jacfwd(f))(prev, x)
        diag = jnp.diagonal(dense, axis1=1, axis2=2)
    else:
        diag = jax.vmap(diagonal)(prev, x)
    return value, diag


def _quasi_adjoint(solver, diag, g, vjp_prev):
    """Solve lam_t = g_t + J_{t+1}^T lam_{t+1} by the quasi-Newton iteration with the
    diagonal `diag` (of J_t, at the solution): each step one reverse `linear_recurrence`
    and one batched vector-Jacobian product, exact after at most L steps."""
    length = g.shape[0]
    max_steps, tol = solver._limits(length, g.dtype)
    tol = jnp.asarray(tol, g.dtype)
    a = jnp.concatenate([diag[1:], jnp.zeros_like(diag[:1])], axis=0)  # diag of J_{t+1}
    tiny = jnp.asarray(np.finfo(g.dtype).tiny, g.dtype)

    def next_term(lam):  # J_{t+1}^T lam_{t+1}, zero at t = L
        back = vjp_prev(lam)
        return jnp.concatenate([back[1:], jnp.zeros_like(back[:1])], axis=0)

    def cond(carry):
        k, _, delta = carry
        return (k < max_steps) & (k < length) & (delta > tol)

    def body(carry):
        k, lam, _ = carry
        nxt = jnp.concatenate([lam[1:], jnp.zeros_like(lam[:1])], axis=0)
        b = g + next_term(lam) - a * nxt
        new = linear_recurrence(a, b, reverse=True, method=solver.method)
        scale = jnp.maximum(jnp.max(jnp.abs(new)), tiny)
        delta = jnp.max(jnp.abs(new - lam)) / scale
        return k + 1, new, delta

    init = (jnp.asarray(0, jnp.int32), g, jnp.asarray(jnp.inf, g.dtype))
    k, lam, delta = lax.while_loop(cond, body, init)
    converged = jnp.all(jnp.isfinite(lam)) & ((delta <= tol) | (k >= length))
    return lam, converged


def _dense_solve(jac, b, h0):
    r"""$h_t = A_t h_{t-1} + b_t$ with matrices $A_t$: an associative scan over the pairs
    $(A_t, b_t)$, composed as $(A_2 A_1, A_2 b_1 + b_2)$; $O(L N^3)$ work, $O(\log L)$
    depth."""
    b = b.at[0].add(jac[0] @ h0)

    def compose(first, second):
        a1, b1 = first
        a2, b2 = second
        return a2 @ a1, jnp.einsum("...ij,...j->...i", a2, b1) + b2

    _, states = lax.associative_scan(compose, (jac, b), axis=0)
    return states


class DEER(AbstractNewtonSolver):
    r"""Newton's method with the full Jacobian (Lim et al., 2024).

    Each iteration forms the dense $N \times N$ Jacobians $J_t$ (by `jax.jacfwd`, $N$
    Jacobian-vector products per step) and solves the dense linear recurrence
    $h_t = J_t h_{t-1} + b_t$ with an associative scan over matrices: $O(L N^3)$ work and
    $O(L N^2)$ memory, $O(\log L)$ depth. Quadratic convergence near the solution; only
    sensible for small state sizes. The adjoint is solved exactly by the same matrix scan in
    reverse with the transposed Jacobians.

    **Arguments:**

    - `max_steps`: the most Newton iterations; `None` means the length $L$, which always
        suffices in exact arithmetic.
    - `tol`: the stopping tolerance on the update (see [`recurrax.AbstractNonlinearSolver`][]
        and the stopping rule below); `None` means 1e-10 in float64 and 1e-5 otherwise.
    - `throw`: raise when the solve fails (default), else report it in the statistics.

    **Stopping rule.** Stop when $\max |h^{(k)} - h^{(k-1)}| / (1 + |h^{(k)}|) \le$ `tol`
    or after $L$ iterations; failing that within `max_steps` raises (with `throw=True`).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        f = lambda h, x_t: jnp.tanh(jnp.array([[0.5, 0.2], [-0.3, 0.4]]) @ h + x_t)
        x = jnp.ones((8, 2))
        h, stats = recurrax.nonlinear_recurrence(f, x, jnp.zeros(2), solver=recurrax.DEER())
        ref, _ = recurrax.nonlinear_recurrence(f, x, jnp.zeros(2))
        assert jnp.allclose(h, ref, atol=1e-5) and int(stats["iterations"]) <= 8
        ```
    """

    max_steps: int | None = None
    tol: float | None = None
    throw: bool = True

    def __check_init__(self):
        self._check("DEER")

    def _linearise(self, f, diagonal, prev, x):
        value = jax.vmap(f)(prev, x)
        jac = jax.vmap(jax.jacfwd(f))(prev, x)
        return value, jac

    def _solve(self, jac, b, h0):
        return _dense_solve(jac, b, h0)

    def _adjoint(self, f, diagonal, prev, x, g, vjp_prev):
        jac = jax.vmap(jax.jacfwd(f))(prev, x)
        # lam_t = J_{t+1}^T lam_{t+1} + g_t: time-reversed, it is a forward dense recurrence.
        a = jnp.swapaxes(jac[1:], 1, 2)
        a = jnp.concatenate([a, jnp.zeros_like(a[:1])], axis=0)
        lam = _dense_solve(a[::-1], g[::-1], jnp.zeros_like(g[0]))[::-1]
        return lam, jnp.all(jnp.isfinite(lam))


class QuasiDEER(AbstractNewtonSolver):
    r"""Newton's method with the Jacobian's diagonal (quasi-DEER, Gonzalez et al., 2024):
    each iteration is one call of [`recurrax.linear_recurrence`][].

    The diagonal of $\partial f / \partial h$ comes from `diagonal=` when given (the GRU and
    LSTM give it in closed form), else from `jax.jacfwd` ($N$ Jacobian-vector products).
    Work $O(L N)$ per iteration beyond evaluating $f$, memory $O(L N)$, depth $O(\log L)$ per
    iteration with a parallel strategy. Convergence is linear rather than quadratic and
    slows as the off-diagonal part of the Jacobian grows. Gradients are exact: the adjoint
    recurrence is solved by the same quasi-Newton iteration (one reverse
    `linear_recurrence` and one batched vector-Jacobian product per iteration, with the same
    `max_steps` and `tol`, the latter relative to the largest adjoint entry).

    **Arguments:**

    - `max_steps`: the most iterations; `None` means the length $L$ (always enough in exact
        arithmetic).
    - `tol`: stopping tolerance on the update; `None` means 1e-10 in float64, 1e-5
        otherwise.
    - `throw`: raise when the solve fails (default), else report it in the statistics.
    - `method`: the scan strategy of the linear recurrences (default
        [`recurrax.AutoScan`][]).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        f = lambda h, x_t: jnp.tanh(0.5 * h + x_t)
        x = jnp.linspace(-1, 1, 16).reshape(8, 2)
        diag = lambda h, x_t: 0.5 * (1 - f(h, x_t) ** 2)    # d f_i / d h_i
        solver = recurrax.QuasiDEER()
        h, stats = recurrax.nonlinear_recurrence(f, x, jnp.zeros(2), solver=solver, diagonal=diag)
        ref, _ = recurrax.nonlinear_recurrence(f, x, jnp.zeros(2))
        assert jnp.allclose(h, ref, atol=1e-5) and bool(stats["converged"])
        ```
    """

    max_steps: int | None = None
    tol: float | None = None
    throw: bool = True
    method: AbstractScan | None = None

    def __check_init__(self):
        self._check("QuasiDEER")

    def _linearise(self, f, diagonal, prev, x):
        return _values_and_diagonals(f, diagonal, prev, x)

    def _solve(self, jac, b, h0):
        return linear_recurrence(jac, b, h0, method=self.method)

    def _adjoint(self, f, diagonal, prev, x, g, vjp_prev):
        _, diag = _values_and_diagonals(f, diagonal, prev, x)
        return _quasi_adjoint(self, diag, g, vjp_prev)


class DampedQuasiDEER(AbstractNewtonSolver):
    r"""Quasi-DEER with its linearisation damped into a trust region: the Jacobian's
    diagonal $d_t$ is clipped to $[-\rho, \rho]$ with $\rho$ = `max_gain` (default 1).

    Plain quasi-DEER solves $h_t = d_t h_{t-1} + b_t$ each iteration; where $|d_t| > 1$ over
    a stretch of time the products $\prod d_t$ grow geometrically, and so do the errors of
    an iterate far from the solution (iterates can overflow before they converge). Clipping
    keeps every linear recurrence non-expansive, so an iterate's error can grow at most
    linearly in $L$; the method stays exact after at most $L$ iterations (that holds for any
    choice of $J_t$), at the price of slower convergence where the true gains exceed
    $\rho$. This is a simpler alternative to the Levenberg–Marquardt damping of ELK
    (Gonzalez et al., 2024), which needs a Kalman smoother per iteration. The adjoint
    iteration uses the same clipped diagonal.

    **Arguments:** as [`recurrax.QuasiDEER`][], plus `max_gain` ($\rho > 0$).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        f = lambda h, x_t: jnp.tanh(3.0 * h + x_t)    # gains up to 3: expansive
        x = jnp.linspace(-1, 1, 32).reshape(16, 2)
        h, _ = recurrax.nonlinear_recurrence(f, x, jnp.zeros(2), solver=recurrax.DampedQuasiDEER())
        ref, _ = recurrax.nonlinear_recurrence(f, x, jnp.zeros(2))
        assert jnp.allclose(h, ref, atol=1e-4)
        ```
    """

    max_steps: int | None = None
    tol: float | None = None
    throw: bool = True
    method: AbstractScan | None = None
    max_gain: float = 1.0

    def __check_init__(self):
        self._check("DampedQuasiDEER")
        if not (self.max_gain > 0):
            raise ValueError(
                f"DampedQuasiDEER: `max_gain` must be positive, got max_gain={self.max_gain!r}."
            )

    def _clip(self, diag):
        return jnp.clip(diag, -self.max_gain, self.max_gain)

    def _linearise(self, f, diagonal, prev, x):
        value, diag = _values_and_diagonals(f, diagonal, prev, x)
        return value, self._clip(diag)

    def _solve(self, jac, b, h0):
        return linear_recurrence(jac, b, h0, method=self.method)

    def _adjoint(self, f, diagonal, prev, x, g, vjp_prev):
        _, diag = _values_and_diagonals(f, diagonal, prev, x)
        return _quasi_adjoint(self, self._clip(diag), g, vjp_prev)


def _stats(iterations, converged):
    return {"iterations": iterations, "converged": converged}


def _check_inputs(f, x, h0, solver, diagonal):
    fn = "nonlinear_recurrence"
    if not callable(f):
        raise ValueError(f"{fn}: `f` must be callable as f(h, x_t), got f={f!r}.")
    if diagonal is not None and not callable(diagonal):
        raise ValueError(
            f"{fn}: `diagonal` must be None or callable as diagonal(h, x_t), got "
            f"diagonal={diagonal!r}."
        )
    if not isinstance(solver, AbstractNonlinearSolver):
        raise ValueError(
            f"{fn}: `solver` must be a nonlinear solver such as recurrax.QuasiDEER(), got "
            f"solver={solver!r}."
        )
    h0 = jnp.asarray(h0)
    if h0.ndim != 1 or not jnp.issubdtype(h0.dtype, jnp.floating):
        raise ValueError(
            f"{fn}: `h0` must be a one-axis real floating array (the state), got shape "
            f"{tuple(h0.shape)} and dtype {h0.dtype}."
        )
    leaves = jax.tree.leaves(x)
    if not leaves or any(jnp.ndim(leaf) < 1 for leaf in leaves):
        raise ValueError(
            f"{fn}: `x` must be an array (or a pytree of arrays) with a leading time axis, "
            f"got {x!r}."
        )
    lengths = {jnp.shape(leaf)[0] for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(
            f"{fn}: every leaf of `x` must have the same length (leading axis), got lengths "
            f"{sorted(lengths)}."
        )
    return h0, lengths.pop()


def nonlinear_recurrence(
    f: Callable[[Float[Array, " state"], Any], Float[Array, " state"]],
    x: PyTree,
    h0: Float[Array, " state"],
    *,
    solver: AbstractNonlinearSolver | None = None,
    diagonal: Callable[[Float[Array, " state"], Any], Float[Array, " state"]] | None = None,
) -> tuple[Float[Array, "length state"], dict[str, Array]]:
    r"""All states of the nonlinear recurrence $h_t = f(h_{t-1}, x_t)$, $t = 1, \dots, L$.

    **Arguments:**

    - `f`: the step function, `f(h, x_t) -> h'` with `h` of shape `(state,)`. It may close
        over parameters (a closure, a bound method or an `equinox.Module`): gradients reach
        them.
    - `x`: the inputs, an array or a pytree of arrays, each with leading time axis `L`;
        `f` receives one time step of it.
    - `h0`: the state before the first step, `(state,)`, real floating; its dtype is the
        working dtype.
    - `solver`: how to evaluate: [`recurrax.Sequential`][] (default), [`recurrax.DEER`][],
        [`recurrax.QuasiDEER`][] or [`recurrax.DampedQuasiDEER`][].
    - `diagonal`: optional `diagonal(h, x_t) -> (state,)`, the diagonal of
        $\partial f / \partial h$ in closed form, used by the quasi-DEER solvers (otherwise
        computed with `jax.jacfwd`). It only steers the iteration: an inexact diagonal slows
        convergence but does not change the result.

    **Returns:**

    `(states, stats)`: the states $h_1 \dots h_L$, `(length, state)`, and a dict with
    `"iterations"` (int32: Newton iterations used; 1 for `Sequential`) and `"converged"`
    (bool). Under `jax.vmap` both are per example.

    **Raises:**

    `ValueError` naming the argument when `f`, `x`, `h0`, `solver` or `diagonal` do not fit.
    At run time a Newton solver with `throw=True` raises when it has not converged within
    `max_steps` iterations (see [`recurrax.AbstractNewtonSolver`][]).

    Gradients (reverse mode) with respect to `x`, `h0` and everything `f` closes over are
    taken at the solution by the implicit function theorem, never through the iterations:
    the adjoint $\bar h_t = \partial\ell/\partial h_t + J_{t+1}^\top \bar h_{t+1}$ is solved
    by the solver's own machinery (matrix scan for `DEER`, quasi-Newton iteration for the
    quasi-DEER solvers). They equal backpropagation through the sequential loop. Forward mode
    (`jax.jvp`) is supported for `Sequential` only.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        w = jnp.array([0.5, -0.3])
        f = lambda h, x_t: jnp.tanh(w * h + x_t)
        x = jnp.linspace(-1, 1, 20).reshape(10, 2)
        h, stats = recurrax.nonlinear_recurrence(f, x, jnp.zeros(2), solver=recurrax.QuasiDEER())
        ref, _ = recurrax.nonlinear_recurrence(f, x, jnp.zeros(2))
        assert jnp.allclose(h, ref, atol=1e-5) and int(stats["iterations"]) <= 10

        def loss(x):
            h, _ = recurrax.nonlinear_recurrence(f, x, jnp.zeros(2), solver=recurrax.QuasiDEER())
            return h.sum()

        grad = jax.grad(loss)(x)
        ```
    """
    solver = Sequential() if solver is None else solver
    h0, length = _check_inputs(f, x, h0, solver, diagonal)
    if length == 0:
        return jnp.zeros((0,) + h0.shape, h0.dtype), _stats(
            jnp.asarray(0, jnp.int32), jnp.asarray(True)
        )
    if isinstance(solver, Sequential):

        def body(h, x_t):
            h = f(h, x_t)
            return h, h

        return lax.scan(body, h0, x)[1], _stats(jnp.asarray(1, jnp.int32), jnp.asarray(True))
    if not isinstance(solver, AbstractNewtonSolver):
        raise ValueError(
            f"nonlinear_recurrence: unknown solver {solver!r}; subclass "
            "recurrax.AbstractNewtonSolver to add one."
        )

    x0 = jax.tree.map(lambda v: v[0], x)
    f_conv = eqx.filter_closure_convert(f, h0, x0)
    f_dyn, f_static = eqx.partition(f_conv, eqx.is_array)
    if diagonal is None:
        d_dyn, d_static = None, None
    else:
        d_conv = eqx.filter_closure_convert(diagonal, h0, x0)
        d_dyn, d_static = eqx.partition(d_conv, eqx.is_array)

    def rebuild(f_dyn, d_dyn):
        fn = eqx.combine(f_dyn, f_static)
        dg = None if d_static is None else eqx.combine(d_dyn, d_static)
        return fn, dg

    stop = lax.stop_gradient
    fn, dg = rebuild(stop(f_dyn), stop(d_dyn))
    states, iterations, converged = solver._forward(fn, dg, stop(x), stop(h0))
    if solver.throw:
        states = eqx.error_if(
            states,
            jnp.logical_not(converged),
            f"nonlinear_recurrence: {type(solver).__name__} did not converge within "
            "max_steps iterations (or an iterate was not finite); raise max_steps (None "
            "means the length, always enough in exact arithmetic), use a damped solver, or "
            "pass throw=False and read stats['converged'].",
        )
    states = _implicit(solver, rebuild, f_dyn, d_dyn, x, h0, states)
    return states, _stats(iterations, converged)


def _implicit(solver, rebuild, f_dyn, d_dyn, x, h0, states):
    """`states`, with cotangents for `f_dyn`, `x` and `h0` by the implicit function theorem."""

    @jax.custom_vjp
    def identity(f_dyn, d_dyn, x, h0, states):
        return states

    def fwd(f_dyn, d_dyn, x, h0, states):
        return states, (f_dyn, d_dyn, x, h0, states)

    def bwd(residuals, g):
        f_dyn, d_dyn, x, h0, states = residuals
        fn, dg = rebuild(f_dyn, d_dyn)
        prev = _previous(h0, states)

        def stepped(f_dyn, prev, x):
            fn_, _ = rebuild(f_dyn, d_dyn)
            return jax.vmap(fn_)(prev, x)

        _, vjp = jax.vjp(stepped, f_dyn, prev, x)
        lam, ok = solver._adjoint(fn, dg, prev, x, g, lambda lam: vjp(lam)[1])
        if solver.throw:
            lam = eqx.error_if(
                lam,
                jnp.logical_not(ok),
                f"nonlinear_recurrence: the adjoint of {type(solver).__name__} did not "
                "converge within max_steps iterations; raise max_steps.",
            )
        f_bar, prev_bar, x_bar = vjp(lam)
        d_bar = jax.tree.map(jnp.zeros_like, d_dyn)
        return f_bar, d_bar, x_bar, prev_bar[0], jnp.zeros_like(states)

    identity.defvjp(fwd, bwd)
    return identity(f_dyn, d_dyn, x, h0, states)


# The solvers by name, as configurations (`ModelConfig.mixer_options`) give them.
SOLVERS = {
    "sequential": Sequential,
    "deer": DEER,
    "quasi-deer": QuasiDEER,
    "damped-quasi-deer": DampedQuasiDEER,
}
