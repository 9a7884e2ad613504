r"""Discretisations of a continuous diagonal system $\dot x = \Lambda x + B u$.

Every method maps $(\Lambda, \Delta)$ to a discrete eigenvalue $\bar\lambda$ and a per-state
input factor $s$ with $\bar B = \operatorname{diag}(s) B$, so a discretised system
is again a diagonal recurrence $x_k = \bar\lambda \odot x_{k-1} + s \odot (B u_k)$.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Complex, Inexact

from ._dtypes import complex_dtype


class AbstractDiscretisation(eqx.Module):
    r"""Abstract base class for the ways of turning a continuous diagonal system into a
    discrete one.

    A discretisation is a value passed as `discretisation=` (to
    [`recurrax.DiagonalSSM`][], [`recurrax.ContinuousDiagonalSystem.discretise`][], ...).
    Subclass and implement `__call__` to add one.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        # the bilinear map written another way, as a user-defined discretisation
        class Midpoint(recurrax.AbstractDiscretisation):

            def __call__(self, lam, step):
                z = jnp.asarray(step) * lam
                return (2 + z) / (2 - z), 2 * jnp.asarray(step) / (2 - z)

        lam_bar, scale = Midpoint()(jnp.array([-1.0 + 0j]), 0.1)
        print(lam_bar)  # [0.9047619+0.j], as recurrax.Bilinear gives
        ```
    """

    @abc.abstractmethod
    def __call__(
        self, lam: Complex[ArrayLike, "*shape"], step: Inexact[ArrayLike, "*shape"]
    ) -> tuple[Complex[Array, "*shape"], Complex[Array, "*shape"]]:
        r"""Discretise eigenvalues $\Lambda$ with steps $\Delta$ (broadcast together).

        **Arguments:**

        - `lam`: continuous-time eigenvalues $\Lambda$, complex, any shape.
        - `step`: positive steps $\Delta$, real, broadcastable with `lam` (one per state,
            one per feature, or one per time step and state for irregular sampling).

        **Returns:**

        `(lam_bar, scale)`: the discrete eigenvalues $\bar\lambda$ and the input factor $s$
        with $\bar B = \operatorname{diag}(s) B$, both complex and of the broadcast shape.
        """


def _inputs(lam, step):
    """Λ as complex, Δ as the same complex dtype (explicitly, for strict promotion), ΔΛ."""
    lam = jnp.asarray(lam)
    if not jnp.issubdtype(lam.dtype, jnp.complexfloating):
        lam = lam.astype(complex_dtype(lam.dtype))
    step = jnp.asarray(step).astype(lam.dtype)
    return lam, step, step * lam


class ZeroOrderHold(AbstractDiscretisation):
    r"""Zero-order hold: $\bar\lambda = e^{\Delta\Lambda}$,
    $\bar B = (\bar\lambda - 1)\Lambda^{-1} B$.

    Exact for an input held constant over each step. The input factor is evaluated as
    $\operatorname{expm1}(\Delta\Lambda) / \Lambda$, which stays accurate for
    $|\Delta\Lambda| \ll 1$ and equals $\Delta$ at $\Lambda = 0$; for a real step (the usual
    case) both outputs are computed in real arithmetic from $\Delta\Lambda = x + iy$
    ($e^x$, $\operatorname{expm1}(x)$, $\sin(y/2)$, $\cos(y/2)$), cheaper than complex
    exponentials and divisions.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        lam_bar, scale = recurrax.ZeroOrderHold()(jnp.array([-1.0 + 0j]), 0.1)
        print(lam_bar, scale)  # [0.9048374+0.j] [0.09516256+0.j]
        ```
    """

    def __call__(self, lam, step):
        if jnp.issubdtype(jnp.result_type(step), jnp.complexfloating):
            lam, step, z = _inputs(lam, step)
            small = jnp.abs(z) < 1e-30
            safe_z = jnp.where(small, jnp.ones_like(z), z)
            phi = jnp.where(small, jnp.ones_like(z), jnp.expm1(safe_z) / safe_z)
            return jnp.exp(z), step * phi
        return _zero_order_hold_real(*_inputs(lam, step)[:1], step)


def _zero_order_hold_real(lam, step):
    r"""Zero-order hold for a real step, in real arithmetic: with $\Delta\Lambda = x + iy$,
    $e^{\Delta\Lambda} = e^x(\cos y + i \sin y)$ and
    $\operatorname{expm1}(\Delta\Lambda) = \operatorname{expm1}(x)\cos y - 2\sin^2(y/2)
    + i\, e^x \sin y$ (no cancellation for small steps), then
    $s = \operatorname{expm1}(\Delta\Lambda) / \Lambda$ by one reciprocal of $\Lambda$ (on
    its own shape, not per step). The same values as the complex formula to rounding, at
    about half its cost forward and backward (complex exp, expm1 and division are costly on
    CPU); $s = \Delta$ where $|\Delta\Lambda|$ or $|\Lambda|$ is below 1e-30."""
    step = jnp.asarray(step).astype(jnp.real(lam).dtype)
    lam_re, lam_im = jnp.real(lam), jnp.imag(lam)
    x, y = step * lam_re, step * lam_im
    half_sin, half_cos = jnp.sin(y / 2), jnp.cos(y / 2)
    growth = jnp.exp(x)
    cos_y = 1 - 2 * half_sin * half_sin
    sin_y = 2 * half_sin * half_cos
    lam_bar = jax.lax.complex(growth * cos_y, growth * sin_y)
    expm1_z = jax.lax.complex(jnp.expm1(x) * cos_y - 2 * half_sin * half_sin, growth * sin_y)
    tiny = jnp.abs(lam_re) + jnp.abs(lam_im) < 1e-30
    inverse = 1 / jnp.where(tiny, jnp.ones_like(lam), lam)
    small = tiny | (jnp.abs(x) + jnp.abs(y) < 1e-30)
    complex_step = jnp.broadcast_to(step, small.shape).astype(lam.dtype)
    return lam_bar, jnp.where(small, complex_step, expm1_z * inverse)


class Bilinear(AbstractDiscretisation):
    r"""Bilinear (Tustin): $\bar\lambda = (1 + \Delta\Lambda/2)/(1 - \Delta\Lambda/2)$,
    $\bar B = \Delta/(1 - \Delta\Lambda/2)\,B$.

    Second order against the held-input solution; maps the open left half-plane into the
    open unit disk, so a stable $\Lambda$ always gives $|\bar\lambda| < 1$.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        lam_bar, scale = recurrax.Bilinear()(jnp.array([-1.0 + 0j]), 0.1)
        print(lam_bar, scale)  # [0.9047619+0.j] [0.0952381+0.j]
        ```
    """

    def __call__(self, lam, step):
        lam, step, z = _inputs(lam, step)
        denominator = 1 - z / 2
        return (1 + z / 2) / denominator, step / denominator


class ForwardEuler(AbstractDiscretisation):
    r"""Forward Euler: $\bar\lambda = 1 + \Delta\Lambda$, $\bar B = \Delta B$.

    First order; stable only where $|1 + \Delta\lambda| < 1$, so a large step can leave the
    unit disk (then the system has no LRU form, see [`recurrax.LRU.from_discrete_system`][]).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        lam_bar, scale = recurrax.ForwardEuler()(jnp.array([-1.0 + 0j]), 0.1)
        print(lam_bar, scale)  # [0.9+0.j] [0.1+0.j]
        ```
    """

    def __call__(self, lam, step):
        lam, step, z = _inputs(lam, step)
        return 1 + z, jnp.broadcast_to(step, z.shape)


class BackwardEuler(AbstractDiscretisation):
    r"""Backward Euler: $\bar\lambda = 1/(1 - \Delta\Lambda)$,
    $\bar B = \Delta/(1 - \Delta\Lambda)\,B$.

    First order and A-stable: a stable $\Lambda$ gives $|\bar\lambda| < 1$ for every step.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        lam_bar, scale = recurrax.BackwardEuler()(jnp.array([-1.0 + 0j]), 0.1)
        print(lam_bar, scale)  # [0.9090909+0.j] [0.09090909+0.j]
        ```
    """

    def __call__(self, lam, step):
        lam, step, z = _inputs(lam, step)
        lam_bar = 1 / (1 - z)
        return lam_bar, step * lam_bar


# The discretisations by name, as configurations (`ModelConfig.mixer_options`) give them.
DISCRETISATION_NAMES = {
    "zoh": ZeroOrderHold,
    "bilinear": Bilinear,
    "forward-euler": ForwardEuler,
    "backward-euler": BackwardEuler,
}
