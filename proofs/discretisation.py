r"""Equivalences of systems: zero-order hold is exact for held inputs (against a diffrax ODE
solve), the orders of bilinear and Euler, SSM → LRU, and dense → complex diagonal (LRU paper
§3.2, §4)."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from . import _subjects
from ._result import Check, CheckResult
from ._util import (
    as_sequence,
    default_float,
    label,
    layer_dtype,
    new_figure,
    relative_error,
    require_x64,
    tolerance_for,
    worst_case,
)


FAMILY = "discretisation"


@eqx.filter_jit
def _call(layer, x):
    return layer(x)


def random_continuous_system(state_size=4, input_size=2, *, seed=0):
    r"""A stable continuous diagonal system (float64): $\operatorname{Re}\Lambda \in [-2, -0.1]$,
    $\operatorname{Im}\Lambda \in [-4, 4]$, complex normal $B$, $C$, normal $D$."""
    rng = np.random.default_rng(seed)
    n, h = state_size, input_size
    lam = -rng.uniform(0.1, 2.0, n) + 1j * rng.uniform(-4.0, 4.0, n)
    b = rng.normal(size=(n, h)) + 1j * rng.normal(size=(n, h))
    c = rng.normal(size=(h, n)) + 1j * rng.normal(size=(h, n))
    d = rng.normal(size=h)
    return recurrax.ContinuousDiagonalSystem(
        jnp.asarray(lam), jnp.asarray(b), jnp.asarray(c), jnp.asarray(d)
    )


def discretised_states(discretisation: Callable, system, u, step):
    r"""States of $x_k = \bar\lambda x_{k-1} + s \odot (B u_k)$ from zero, where
    `discretisation(Λ, Δ) -> (λ̄, s)` (a [`recurrax.AbstractDiscretisation`][] or any function
    of that form), solved by [`recurrax.linear_recurrence`][]."""
    lam_bar, scale = discretisation(system.Lambda, jnp.asarray(step, jnp.real(system.B).dtype))
    u = jnp.asarray(u).astype(system.B.dtype)
    b = (u @ system.B.T) * scale.astype(system.B.dtype)[None, :]
    return recurrax.linear_recurrence(lam_bar.astype(system.B.dtype), b)


def held_input_solution(system, u, step):
    r"""$x(t_k)$ of $\dot x = \Lambda x + B u_k$ with the input held on each step, by diffrax
    (Dopri8, rtol = atol = 1e-12), one solve per step, on the real and imaginary parts."""
    lam, b = system.Lambda, system.B
    n = lam.shape[0]

    def field(t, y, u_k):
        x = jax.lax.complex(y[:n], y[n:])
        dx = lam * x + b @ u_k.astype(b.dtype)
        return jnp.concatenate([jnp.real(dx), jnp.imag(dx)])

    term = diffrax.ODETerm(field)
    controller = diffrax.PIDController(rtol=1e-12, atol=1e-12)

    @jax.jit
    def run(u):
        def one_step(y, u_k):
            solution = diffrax.diffeqsolve(
                term,
                diffrax.Dopri8(),
                t0=0.0,
                t1=step,
                dt0=step / 8,
                y0=y,
                args=u_k,
                stepsize_controller=controller,
                max_steps=4096,
            )
            return solution.ys[-1], solution.ys[-1]

        _, ys = jax.lax.scan(one_step, jnp.zeros(2 * n, jnp.real(lam).dtype), u)
        return jax.lax.complex(ys[:, :n], ys[:, n:])

    return run(jnp.asarray(u))


def exact_held_states(system, u, step) -> np.ndarray:
    r"""The closed-form held-input solution in NumPy float64:
    $x_k = e^{\Delta\Lambda} x_{k-1} + \operatorname{expm1}(\Delta\Lambda)/\Lambda\, B u_k$."""
    lam = np.asarray(system.Lambda).astype(np.complex128)
    b = np.asarray(system.B).astype(np.complex128)
    decay = np.exp(step * lam)
    gain = np.expm1(step * lam) / lam
    x = np.zeros(lam.shape, np.complex128)
    out = np.empty((len(u), lam.size), np.complex128)
    for k, u_k in enumerate(np.asarray(u, np.float64)):
        x = decay * x + gain * (b @ u_k)
        out[k] = x
    return out


# -- zero-order hold is exact --------------------------------------------------------------

ZOH_SOURCE = "LRU paper §4 (S4/S5 discretisation)"
ZOH_CLAIM = (
    "Zero-order hold is exact for an input held constant on each step: its states equal an "
    "ODE solve of dx/dt = Lambda x + B u_k over each step."
)


def check_held_input_exact(
    discretisation: Callable = recurrax.ZeroOrderHold(),
    *,
    system=None,
    step=0.25,
    length=16,
    tolerance=1e-8,
    seed=0,
    name="zoh_exact",
    plot=True,
) -> CheckResult:
    r"""States of the discretised system against diffrax's solve of the held-input ODE (Dopri8,
    tolerances 1e-12), in float64; with an AbstractDiscretisation also the outputs of
    `ContinuousDiagonalSystem.solve`.

    **Statistic:** the relative error of the states, at most `tolerance`.
    """
    require_x64("check_held_input_exact")
    system = random_continuous_system(seed=seed) if system is None else system
    u = jax.random.normal(jax.random.key(seed), (length, system.B.shape[1]), jnp.float64)
    reference = np.asarray(held_input_solution(system, u, step))
    states = np.asarray(discretised_states(discretisation, system, u, step))
    error = relative_error(states, reference)
    details = {
        "discretisation": getattr(discretisation, "__name__", type(discretisation).__name__),
        "step": step,
        "length": length,
        "closed form against diffrax (relative)": relative_error(
            exact_held_states(system, u, step), reference
        ),
    }
    if isinstance(discretisation, recurrax.AbstractDiscretisation):
        _, y = system.solve(u, step, discretisation)
        factor = 2.0 if system.conjugate_symmetric else 1.0
        c = np.asarray(system.C).astype(np.complex128)
        y_ref = factor * np.real(reference @ c.T) + np.asarray(system.D) * np.asarray(u)
        details["outputs of ContinuousDiagonalSystem.solve (relative)"] = relative_error(y, y_ref)
    figures = []
    if plot:
        figure, ax = new_figure(width=6.0)
        t = step * np.arange(1, length + 1)
        scale = np.max(np.abs(reference))
        curves = [(details["discretisation"], states)]
        for other in (recurrax.Bilinear(), recurrax.ForwardEuler()):
            if type(other) is not type(discretisation):
                curves.append((type(other).__name__, discretised_states(other, system, u, step)))
        for what, xs in curves:
            per_step = np.max(np.abs(np.asarray(xs) - reference), axis=1) / scale
            ax.semilogy(t, np.maximum(per_step, 1e-17), "o-", ms=3, label=what)
        ax.axhline(tolerance, color="black", ls=":", label=f"tolerance {tolerance:g}")
        ax.set_xlabel("t")
        ax.set_ylabel("max_j |x_j − x_j(ODE)| / max |x(ODE)|")
        ax.set_title(f"Held-input ODE (diffrax) against the recurrence, Δ = {step}")
        ax.legend(fontsize=8)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=ZOH_CLAIM,
        source=ZOH_SOURCE,
        statistic_name="relative error of the states",
        statistic=error,
        threshold=tolerance,
        comparison="<=",
        details=details,
        figures=figures,
    )


# -- orders of convergence ------------------------------------------------------------------

ORDER_SOURCE = "numerical analysis of one-step methods (S4/S5 discretisations)"
ORDER_CLAIM = (
    "{what} converges with order {order} to the exact solution for inputs held on each step "
    "(the ZOH reference): the error of the final state scales like step^{order}."
)


def check_convergence_order(
    discretisation: Callable,
    order: float,
    *,
    system=None,
    counts=(40, 80, 160, 320, 640),
    horizon=1.0,
    tolerance=0.1,
    seed=0,
    name="convergence_order",
    plot=True,
) -> CheckResult:
    r"""Error of the final state at $t = $ `horizon` against the closed-form held-input
    solution, for steps $\Delta = $ horizon / count and the smooth input
    $u(t) = (\sin 2t, \cos 3t)$ sampled at the end of each step; the order is the slope of
    $\log(\text{error})$ against $\log\Delta$ (least squares).

    **Statistic:** $|\text{slope} - \text{order}|$, at most `tolerance`.
    """
    require_x64("check_convergence_order")
    system = random_continuous_system(input_size=2, seed=seed) if system is None else system
    steps, errors = [], []
    for count in counts:
        step = horizon / count
        t = step * np.arange(1, count + 1)
        u = np.stack([np.sin(2 * t), np.cos(3 * t)], axis=-1)[:, : system.B.shape[1]]
        exact = exact_held_states(system, u, step)[-1]
        states = np.asarray(discretised_states(discretisation, system, u, step))[-1]
        steps.append(step)
        errors.append(float(np.max(np.abs(states - exact)) / np.max(np.abs(exact))))
    with np.errstate(divide="ignore", invalid="ignore"):
        slope, intercept = np.polyfit(np.log(steps), np.log(errors), 1)
    what = getattr(discretisation, "__name__", type(discretisation).__name__)
    figures = []
    if plot:
        figure, ax = new_figure(width=5.5)
        steps_arr = np.asarray(steps)
        ax.loglog(steps_arr, errors, "o", label="relative error of x(T)")
        ax.loglog(steps_arr, np.exp(intercept) * steps_arr**slope, "-", label=f"fit: {slope:.3f}")
        anchor = errors[-1] * (steps_arr / steps_arr[-1]) ** order
        ax.loglog(steps_arr, anchor, "k:", label=f"slope {order}")
        ax.set_xlabel("step Δ")
        ax.set_ylabel("error")
        ax.set_title(f"{what}: order of convergence")
        ax.legend(fontsize=8)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=ORDER_CLAIM.format(what=what, order=order),
        source=ORDER_SOURCE,
        statistic_name=f"|fitted slope - {order}|",
        statistic=abs(float(slope) - order),
        threshold=tolerance,
        comparison="<=",
        details={"steps": steps, "errors": errors, "fitted slope": float(slope)},
        figures=figures,
    )


# -- SSM → LRU ------------------------------------------------------------------------------

SSM_LRU_SOURCE = "LRU paper §4 (SSM -> LRU)"
SSM_LRU_CLAIM = (
    "A discretised diagonal SSM is an LRU: nu = -log|lambda_bar|, theta = arg lambda_bar, "
    "B = diag(gamma)^-1 B_bar, same C and D, give identical outputs (per-state steps, or a "
    "per-feature bank as an LRU with H*N states)."
)


def check_ssm_to_lru(
    ssms,
    *,
    convert: Callable | None = None,
    length=200,
    tolerance=None,
    seed=0,
    name="ssm_to_lru",
) -> CheckResult:
    """`ssm(x)` against `convert(ssm)(x)` (default `ssm.to_lru()`) for each layer.

    **Statistic:** the largest relative error of the outputs."""
    convert = (lambda s: s.to_lru()) if convert is None else convert
    per_layer, errors, tolerances = {}, [], []
    for i, ssm in enumerate(as_sequence(ssms)):
        x = jax.random.normal(jax.random.key(seed + i), (length, ssm.input_size), layer_dtype(ssm))
        lru = convert(ssm)
        error = relative_error(_call(lru, x), _call(ssm, x))
        errors.append(error)
        tolerances.append(tolerance_for(layer_dtype(ssm)) if tolerance is None else tolerance)
        per_layer[f"{i}: {label(ssm)}"] = {"relative error": error, "LRU states": lru.state_size}
    return worst_case(
        name=name,
        family=FAMILY,
        claim=SSM_LRU_CLAIM,
        source=SSM_LRU_SOURCE,
        errors=errors,
        tolerances=tolerances,
        details={"layers": per_layer},
    )


# -- dense → diagonal -------------------------------------------------------------------------

DENSE_SOURCE = "LRU paper §3.2 (diagonalisation)"
DENSE_CLAIM = (
    "A dense linear RNN x_k = A x_{k-1} + B u_k, y = Cx + Du with A = V diag(lambda) V^-1 is "
    "exactly the complex diagonal recurrence with B~ = V^-1 B, C~ = C V; for a real A the "
    "eigenvalues come in conjugate pairs and y stays real."
)


def check_dense_diagonalisation(
    system=None,
    *,
    diagonalise: Callable | None = None,
    length=100,
    tolerance=None,
    seed=0,
    name="dense_to_diagonal",
) -> CheckResult:
    """`system(u)` (dense, step by step) against `diagonalise(system)(u)` (default
    `system.diagonalise()`), and the imaginary part of the diagonal readout.

    **Statistic:** the larger of the output error and max|Im(C~ x~)| / max|Re(C~ x~)|."""
    if system is None:
        system = recurrax.glorot_dense_system(
            32, 4, dtype=default_float(), key=jax.random.key(seed)
        )
    diagonalise = (lambda s: s.diagonalise()) if diagonalise is None else diagonalise
    real = np.finfo(system.A.dtype).dtype
    u = jax.random.normal(jax.random.key(seed + 1), (length, system.B.shape[1]), real)
    diagonal = diagonalise(system)
    error = relative_error(_call(diagonal, u), _call(system, u))
    b = u.astype(diagonal.B.dtype) @ diagonal.B.T
    readout = np.asarray(recurrax.linear_recurrence(diagonal.lam, b) @ diagonal.C.T)
    imaginary = float(np.max(np.abs(readout.imag)) / np.max(np.abs(readout.real)))
    lam = np.asarray(diagonal.lam).astype(np.complex128)
    pairs = float(np.max(np.min(np.abs(lam[:, None] - lam.conj()[None, :]), axis=1)))
    tol = tolerance_for(real) if tolerance is None else tolerance
    details = {
        "states, inputs": list(system.B.shape),
        "output relative error": error,
        "max |Im(C~x~)| / max |Re(C~x~)|": imaginary,
        "conjugate pairing of eigenvalues (max gap)": pairs,
        "spectral radius": float(np.max(np.abs(lam))),
    }
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=DENSE_CLAIM,
        source=DENSE_SOURCE,
        statistic_name="max(output error, relative imaginary part)",
        statistic=max(error, imaginary),
        threshold=tol,
        comparison="<=",
        details=details,
    )


# -- the command line's checks ---------------------------------------------------------------


def _order(name, discretisation, order):
    def run(quick, seed):
        counts = (40, 80, 160) if quick else (40, 80, 160, 320, 640)
        return check_convergence_order(discretisation, order, counts=counts, seed=seed, name=name)

    claim = ORDER_CLAIM.format(what=type(discretisation).__name__, order=order)
    return Check(name, FAMILY, claim, ORDER_SOURCE, run)


CHECKS: tuple[Check, ...] = (
    Check(
        "zoh_exact",
        FAMILY,
        ZOH_CLAIM,
        ZOH_SOURCE,
        lambda quick, seed: check_held_input_exact(seed=seed),
    ),
    _order("order_bilinear", recurrax.Bilinear(), 2),
    _order("order_forward_euler", recurrax.ForwardEuler(), 1),
    _order("order_backward_euler", recurrax.BackwardEuler(), 1),
    Check(
        "ssm_to_lru",
        FAMILY,
        SSM_LRU_CLAIM,
        SSM_LRU_SOURCE,
        lambda quick, seed: check_ssm_to_lru(_subjects.ssms(seed, quick), seed=seed),
    ),
    Check(
        "dense_to_diagonal",
        FAMILY,
        DENSE_CLAIM,
        DENSE_SOURCE,
        lambda quick, seed: check_dense_diagonalisation(seed=seed),
    ),
)
