r"""Eigenvalue initialisations: the LRU's ring, and S4D-Lin, S4D-Inv and HiPPO-LegS for
continuous diagonal state-space layers."""

import abc
import math
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from ._dtypes import default_float


def check_ring_arguments(r_min, r_max, max_phase):
    for name, value in (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ValueError(f"`{name}` must be a real number, got {name}={value!r:.80}.")
    if not (0.0 <= r_min < r_max <= 1.0):
        raise ValueError(
            f"the ring needs 0 <= r_min < r_max <= 1, got r_min={r_min!r}, r_max={r_max!r}."
        )
    if not (max_phase > 0.0 and math.isfinite(max_phase)):
        raise ValueError(f"`max_phase` must be positive and finite, got max_phase={max_phase!r}.")


def _open_uniform(key, shape, dtype):
    """Uniform on the open interval (0, 1): never 0 (which would give log 0)."""
    tiny = jnp.finfo(dtype).tiny
    return jax.random.uniform(key, shape, dtype, minval=tiny, maxval=1.0)


def ring_init(
    state_size: int,
    *,
    r_min: float,
    r_max: float,
    max_phase: float,
    dtype=None,
    key: PRNGKeyArray,
) -> tuple[Float[Array, " state"], Float[Array, " state"]]:
    r"""The LRU's ring initialisation (Lemma 2 of the LRU paper), as $(\nu_{\log}, \theta_{\log})$.

    With $u_1, u_2 \sim U(0, 1)$ on the open interval,
    $\nu = -\tfrac12\log(u_1 (r_{\max}^2 - r_{\min}^2) + r_{\min}^2)$ and
    $\theta = \text{max\_phase}\cdot u_2$, so that $\lambda = e^{-\nu + i\theta}$ has
    $|\lambda|^2 \sim U[r_{\min}^2, r_{\max}^2]$ (uniform over the area of the annulus) and
    phase uniform on $[0, \text{max\_phase}]$.

    **Arguments:**

    - `state_size`: $N$.
    - `r_min`, `r_max`: the annulus radii, $0 \le r_{\min} < r_{\max} \le 1$.
    - `max_phase`: the largest phase, positive.
    - `dtype`: real floating dtype of the result; the default floating dtype if `None`.
    - `key`: a PRNG key.

    **Returns:**

    `(nu_log, theta_log)`, each of shape `(state_size,)`, finite.

    **Raises:**

    `ValueError` naming the argument for invalid radii, phase or size.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        nu_log, theta_log = recurrax.ring_init(
            256, r_min=0.9, r_max=0.999, max_phase=2 * jnp.pi, key=jax.random.key(0)
        )
        radius = jnp.exp(-jnp.exp(nu_log))  # |lambda|
        print(bool(jnp.all((radius >= 0.9) & (radius <= 0.999))))  # True
        ```
    """
    if not (
        isinstance(state_size, (int, np.integer))
        and not isinstance(state_size, bool)
        and state_size > 0
    ):
        raise ValueError(f"`state_size` must be a positive integer, got state_size={state_size!r}.")
    check_ring_arguments(r_min, r_max, max_phase)
    dtype = default_float(dtype)
    k1, k2 = jax.random.split(key)
    u1 = _open_uniform(k1, (state_size,), dtype)
    u2 = _open_uniform(k2, (state_size,), dtype)
    # nu = -log(r^2) / 2 with r^2 = u1 (r_max^2 - r_min^2) + r_min^2. Near r = 1, r^2 rounds
    # to 1 (nu = 0, nu_log = -inf) in float32 for r_min > 1 - 3e-8: there log1p(-(1 - r^2))
    # with 1 - r^2 = (1 - r_max^2) + (1 - u1)(r_max^2 - r_min^2), a sum of non-negative
    # terms (the second positive as u1 < 1) computed without cancellation.
    width = float(r_max) ** 2 - float(r_min) ** 2
    radius_sq = u1 * width + float(r_min) ** 2
    one_minus = (1.0 - float(r_max) ** 2) + (1.0 - u1) * width
    near_one = radius_sq > 0.5
    nu = -0.5 * jnp.where(
        near_one,
        jnp.log1p(-jnp.where(near_one, one_minus, 0.5)),
        jnp.log(jnp.where(near_one, 0.5, radius_sq)),
    )
    theta = max_phase * u2
    return jnp.log(nu), jnp.log(theta)


def hippo_legs_matrix(size: int) -> np.ndarray:
    r"""The HiPPO-LegS state matrix $A$, `(size, size)`, float64 (NumPy).

    $A_{nk} = -\sqrt{2n+1}\sqrt{2k+1}$ for $n > k$, $-(n+1)$ for $n = k$, $0$ for $n < k$.
    Adding $P P^\top$ with $P_n = \sqrt{n + 1/2}$ gives its normal part
    $-\tfrac12 I + S$ with $S$ skew-symmetric, whose eigenvalues have real part $-\tfrac12$.

    !!! example

        ```python
        import recurrax

        print(recurrax.hippo_legs_matrix(2))  # [[-1. 0.] [-1.73205081 -2.]]
        ```
    """
    n = np.arange(size)
    root = np.sqrt(2 * n + 1.0)
    a = -np.outer(root, root)
    a = np.tril(a, -1) - np.diag(n + 1.0)
    return a


def _hippo_legs_normal_eigenvalues(size: int) -> np.ndarray:
    a = hippo_legs_matrix(size)
    p = np.sqrt(np.arange(size) + 0.5)
    normal = a + np.outer(p, p)
    skew = normal + 0.5 * np.eye(size)
    # iS is Hermitian for skew-symmetric S, so its eigenvalues are real and S's are -i times them.
    imag = -np.linalg.eigvalsh(1j * skew)
    real = np.diag(normal).mean()
    return real + 1j * np.sort(imag)


class AbstractSSMInit(eqx.Module):
    r"""Abstract base class for the continuous-time eigenvalue initialisations of
    [`recurrax.DiagonalSSM`][].

    Subclass and implement `eigenvalues` to add one.

    !!! example

        ```python
        import numpy as np
        import recurrax

        # real eigenvalues -1, -2, ..., -N: a user-defined initialisation
        class Real(recurrax.AbstractSSMInit):

            def eigenvalues(self, state_size, conjugate_symmetric):
                return -np.arange(1, state_size + 1).astype(np.complex128)

        print(Real().eigenvalues(3, conjugate_symmetric=False))  # [-1.+0.j -2.+0.j -3.+0.j]
        ```
    """

    @abc.abstractmethod
    def eigenvalues(
        self, state_size: int, conjugate_symmetric: bool
    ) -> Complex[np.ndarray, " state"]:
        r"""The initial continuous-time eigenvalues $\Lambda$: a NumPy complex128 array of shape
        `(state_size,)`, cast by the layer.

        With `conjugate_symmetric=True` these are the `state_size` kept members of the
        conjugate pairs of a real system of twice the size (non-negative imaginary parts).
        """


class S4DLin(AbstractSSMInit):
    r"""S4D-Lin: $\lambda_n = -\tfrac12 + i\pi n$, $n = 0, \dots, N-1$.

    !!! example

        ```python
        import recurrax

        lam = recurrax.S4DLin().eigenvalues(4, conjugate_symmetric=True)
        print(lam.real)  # [-0.5 -0.5 -0.5 -0.5]
        ```
    """

    def eigenvalues(self, state_size, conjugate_symmetric):
        n = np.arange(state_size)
        return -0.5 + 1j * np.pi * n


class S4DInv(AbstractSSMInit):
    r"""S4D-Inv: $\lambda_n = -\tfrac12 + i\,\tfrac{N}{\pi}\left(\tfrac{N}{2n+1} - 1\right)$,
    $n = 0, \dots, N-1$ ($N$ the number of states of the real system: twice the number kept
    when conjugate-symmetric).

    !!! example

        ```python
        import recurrax

        lam = recurrax.S4DInv().eigenvalues(4, conjugate_symmetric=True)
        print(lam.real)  # [-0.5 -0.5 -0.5 -0.5]
        ```
    """

    def eigenvalues(self, state_size, conjugate_symmetric):
        big = 2 * state_size if conjugate_symmetric else state_size
        n = np.arange(state_size)
        return -0.5 + 1j * big / np.pi * (big / (2 * n + 1) - 1)


class HiPPOLegS(AbstractSSMInit):
    r"""The eigenvalues of the normal part of the HiPPO-LegS matrix (the S5 initialisation),
    computed numerically from [`recurrax.hippo_legs_matrix`][]: real parts $-\tfrac12$.

    Conjugate-symmetric: the $N$ eigenvalues with positive imaginary part of the matrix of
    size $2N$ (one of each conjugate pair). Otherwise all $N$ eigenvalues of the matrix of
    size $N$.

    !!! example

        ```python
        import recurrax

        lam = recurrax.HiPPOLegS().eigenvalues(4, conjugate_symmetric=True)
        print(lam.real)  # [-0.5 -0.5 -0.5 -0.5]
        ```
    """

    def eigenvalues(self, state_size, conjugate_symmetric):
        if conjugate_symmetric:
            lam = _hippo_legs_normal_eigenvalues(2 * state_size)
            lam = lam[lam.imag > 0]
            lam = lam[np.argsort(lam.imag)]
        else:
            lam = _hippo_legs_normal_eigenvalues(state_size)
        return lam


# The SSM initialisations by name, as configurations (`ModelConfig.mixer_options`) give them.
SSM_INITS = {"hippo": HiPPOLegS, "s4d-lin": S4DLin, "s4d-inv": S4DInv}
