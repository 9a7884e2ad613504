r"""Diagonal linear systems as plain values: discrete $(\bar\lambda, \bar B, C, D)$, continuous
$(\Lambda, B, C, D)$, and a dense linear RNN with its diagonalisation."""

import math

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float, Inexact

from ._discretisation import AbstractDiscretisation, ZeroOrderHold
from ._dtypes import complex_dtype, default_float
from ._lti import AbstractLTILayer, mimo_kernel
from ._recurrence import linear_recurrence
from ._scan import AbstractScan


def _widest(*arrays) -> np.dtype:
    """The dtype all of `arrays` fit in (NumPy's rule, independent of JAX's promotion mode)."""
    return np.result_type(*(jnp.asarray(x).dtype for x in arrays))


def _diagonal_arrays(owner: str, name: str, lam, B, C, D) -> tuple[Array, Array, Array, Array]:
    """(λ, B, C, D) of a diagonal system: λ, B, C cast to one complex dtype, D to the matching
    real one, and shapes checked against λ `(state,)` and B `(state, input)`."""
    dtype = complex_dtype(_widest(lam, B, C))
    lam, B, C = (jnp.asarray(m).astype(dtype) for m in (lam, B, C))
    D = jnp.asarray(D).astype(jnp.real(lam).dtype)
    if lam.ndim != 1:
        raise ValueError(
            f"{owner}: `{name}` must have shape (state,), got shape {tuple(lam.shape)}."
        )
    n = lam.shape[0]
    h = B.shape[1] if B.ndim == 2 else -1
    expected = {"B": (n, h), "C": (h, n), "D": (h,)}
    for key, x in (("B", B), ("C", C), ("D", D)):
        if x.shape != expected[key]:
            raise ValueError(
                f"{owner}: `{key}` must have shape {expected[key]} (state_size={n}, "
                f"input_size={h}), got shape {tuple(x.shape)}."
            )
    return lam, B, C, D


def _real_part(x: Array) -> Array:
    return jnp.real(x) if jnp.iscomplexobj(x) else x


class DiscreteDiagonalSystem(AbstractLTILayer):
    r"""A discrete diagonal linear system, the form every time-invariant layer reduces to:

    $$x_k = \bar\lambda \odot x_{k-1} + \bar B u_k,\qquad
    y_k = \operatorname{Re}(C x_k) + D \odot u_k,$$

    with $x_k \in \mathbb{C}^N$ and $u_k, y_k \in \mathbb{R}^H$. A plain value: no
    parameterisation, no normalisation. It is a layer too (`step`, `scan`, `__call__`,
    `kernel`, `convolve`).

    **Fields:**

    - `lam`: $\bar\lambda$, `(state,)` complex.
    - `B`: $\bar B$, `(state, input)` complex.
    - `C`: `(input, state)` complex.
    - `D`: `(input,)` real, applied elementwise.
    - `method`: the scan strategy (`None`: the default).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        # one state with eigenvalue 0.5 fed a constant input: 1, 1.5, 1.75, ...
        system = recurrax.DiscreteDiagonalSystem(
            lam=jnp.array([0.5 + 0j]), B=jnp.ones((1, 1)), C=jnp.ones((1, 1)), D=jnp.zeros(1)
        )
        print(system(jnp.ones((3, 1)))[:, 0])  # [1.   1.5  1.75]
        ```
    """

    lam: Complex[Array, " state"]
    B: Complex[Array, "state input"]
    C: Complex[Array, "input state"]
    D: Float[Array, " input"]
    method: AbstractScan | None = None

    def __init__(
        self,
        lam: Inexact[ArrayLike, " state"],
        B: Inexact[ArrayLike, "state input"],
        C: Inexact[ArrayLike, "input state"],
        D: Float[ArrayLike, " input"],
        *,
        method: AbstractScan | None = None,
    ):
        r"""**Arguments:**

        - `lam`, `B`, `C`: cast to one complex dtype (that of the widest).
        - `D`: real, cast to the matching real dtype.
        - `method`: the scan strategy used by `scan` and `__call__`.

        **Raises:**

        `ValueError` naming the array whose shape does not fit the others.
        """
        self.lam, self.B, self.C, self.D = _diagonal_arrays(
            "DiscreteDiagonalSystem", "lam", lam, B, C, D
        )
        self.method = method

    @property
    def input_size(self) -> int:
        return self.B.shape[1]

    @property
    def state_size(self) -> int:
        return self.lam.shape[0]

    @property
    def bidirectional(self) -> bool:
        return False

    def init_state(self) -> Complex[Array, " state"]:
        return jnp.zeros(self.lam.shape, self.lam.dtype)

    def coefficients(self, x):
        b = x.astype(self.B.dtype) @ self.B.T
        return self.lam, b

    def readout(self, h, x):
        return jnp.real(h @ self.C.T) + self.D[None] * x

    def kernel(self, length: int, *, reverse: bool = False) -> Float[Array, "length input input"]:
        if reverse:
            raise ValueError(
                "DiscreteDiagonalSystem.kernel: `reverse=True` needs a bidirectional layer."
            )
        return mimo_kernel(self.lam, self.B, self.C, length)


class ContinuousDiagonalSystem(eqx.Module):
    r"""A continuous-time diagonal linear system

    $$\dot x(t) = \Lambda x(t) + B u(t),\qquad y(t) = \operatorname{Re}(C x(t)) + D \odot u(t),$$

    $x \in \mathbb{C}^N$, $u, y \in \mathbb{R}^H$; with `conjugate_symmetric=True` the $N$
    states stand for $2N$ states in conjugate pairs of a real system and
    $y = 2\operatorname{Re}(C x) + D \odot u$.

    **Fields:**

    - `Lambda`: `(state,)` complex.
    - `B`: `(state, input)` complex.
    - `C`: `(input, state)` complex.
    - `D`: `(input,)` real.
    - `conjugate_symmetric`: whether the readout doubles the real part.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        system = recurrax.ContinuousDiagonalSystem(
            Lambda=jnp.array([-1.0 + 0j]), B=jnp.ones((1, 1)), C=jnp.ones((1, 1)), D=jnp.zeros(1)
        )
        discrete = system.discretise(0.1)  # zero-order hold by default
        print(discrete.lam)  # [0.9048374+0.j] = exp(-0.1)
        h_last, y = system.solve(jnp.ones((3, 1)), 0.1)
        print(y[:, 0])  # [0.09516256 0.18126921 0.25918174] = 1 - exp(-0.1 k)
        ```
    """

    Lambda: Complex[Array, " state"]
    B: Complex[Array, "state input"]
    C: Complex[Array, "input state"]
    D: Float[Array, " input"]
    conjugate_symmetric: bool = eqx.field(static=True)

    def __init__(
        self,
        Lambda: Inexact[ArrayLike, " state"],
        B: Inexact[ArrayLike, "state input"],
        C: Inexact[ArrayLike, "input state"],
        D: Float[ArrayLike, " input"],
        *,
        conjugate_symmetric: bool = False,
    ):
        """**Arguments:** the fields above (cast to one complex dtype, `D` to the real one).

        **Raises:** `ValueError` naming the array whose shape does not fit the others.
        """
        self.Lambda, self.B, self.C, self.D = _diagonal_arrays(
            "ContinuousDiagonalSystem", "Lambda", Lambda, B, C, D
        )
        self.conjugate_symmetric = bool(conjugate_symmetric)

    def _output_matrix(self) -> Array:
        return 2 * self.C if self.conjugate_symmetric else self.C

    def discretise(
        self,
        step: Float[ArrayLike, "*step"],
        discretisation: AbstractDiscretisation = ZeroOrderHold(),
        *,
        method: AbstractScan | None = None,
    ) -> DiscreteDiagonalSystem:
        r"""The discrete system for a fixed step $\Delta$.

        **Arguments:**

        - `step`: $\Delta > 0$, a scalar or one per state `(state,)`.
        - `discretisation`: [`recurrax.ZeroOrderHold`][] (default), [`recurrax.Bilinear`][],
            [`recurrax.ForwardEuler`][] or [`recurrax.BackwardEuler`][].
        - `method`: the scan strategy stored in the result.

        **Returns:**

        A [`recurrax.DiscreteDiagonalSystem`][] with the same outputs; for a
        conjugate-symmetric system its `C` is doubled so that $\operatorname{Re}(C x)$ is the
        real output.
        """
        step = jnp.asarray(step)
        if step.ndim > 1 or (step.ndim == 1 and step.shape != self.Lambda.shape):
            raise ValueError(
                f"ContinuousDiagonalSystem.discretise: `step` must be a scalar or have shape "
                f"{tuple(self.Lambda.shape)} (one per state), got shape {tuple(step.shape)}."
            )
        lam_bar, scale = discretisation(self.Lambda, step)
        return DiscreteDiagonalSystem(
            lam_bar, scale[:, None] * self.B, self._output_matrix(), self.D, method=method
        )

    def solve(
        self,
        u: Float[ArrayLike, "length input"],
        step: Float[ArrayLike, "*step"],
        discretisation: AbstractDiscretisation = ZeroOrderHold(),
        *,
        h0: Complex[ArrayLike, " state"] | None = None,
        method: AbstractScan | None = None,
    ) -> tuple[Complex[Array, " state"], Float[Array, "length input"]]:
        r"""Run the discretised system over samples `u`, possibly irregularly spaced.

        With one step per time step (irregular sampling) the discrete system is
        input-dependent, $\bar\lambda_k = f(\Delta_k \Lambda)$ and $\bar B_k = s(\Delta_k) B$,
        and is still solved by the engine.

        **Arguments:**

        - `u`: samples `(length, input)`; $u_k$ is held over the step that ends at sample $k$.
        - `step`: a scalar, one per state `(state,)`, one per time step `(length, 1)`, or
            one per time step and state `(length, state)`.
        - `discretisation`: as in `discretise`.
        - `h0`: the state before the first step (zeros if `None`).
        - `method`: the scan strategy.

        **Returns:**

        `(h_last, y)`: the final state and the outputs `(length, input)`.
        """
        u = jnp.asarray(u)
        step = jnp.asarray(step)
        length, n = u.shape[0], self.Lambda.shape[0]
        allowed = [(), (n,), (length, 1), (length, n)]
        if step.shape not in allowed:
            raise ValueError(
                f"ContinuousDiagonalSystem.solve: `step` must have one of the shapes {allowed} "
                f"(scalar, per state, per time step, per time step and state), got shape "
                f"{tuple(step.shape)}."
            )
        lam = self.Lambda[None] if step.ndim == 2 else self.Lambda
        lam_bar, scale = discretisation(lam, step)
        bu = u.astype(self.B.dtype) @ self.B.T
        b = (scale[None] if scale.ndim == 1 else scale) * bu
        if h0 is None:
            h0 = jnp.zeros((n,), self.Lambda.dtype)
        hs = linear_recurrence(lam_bar, b, jnp.asarray(h0), method=method)
        y = jnp.real(hs @ self._output_matrix().T) + self.D[None] * u
        return (hs[-1] if length else jnp.asarray(h0)), y


class DenseLinearSystem(eqx.Module):
    r"""A dense linear RNN $x_k = A x_{k-1} + B u_k$, $y_k = \operatorname{Re}(C x_k) + D \odot u_k$
    (real or complex matrices), evaluated step by step with `jax.lax.scan`.

    [`recurrax.DenseLinearSystem.diagonalise`][] gives the equivalent complex diagonal system
    (LRU paper §3.2).

    **Fields:** `A` `(state, state)`, `B` `(state, input)`, `C` `(input, state)`, `D` `(input,)`.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        dense = recurrax.glorot_dense_system(4, 2, key=jax.random.key(0))
        diagonal = dense.diagonalise()  # complex eigenvalues, same outputs
        u = jax.random.normal(jax.random.key(1), (16, 2))
        assert jnp.allclose(dense(u), diagonal(u), atol=1e-5)
        ```
    """

    A: Inexact[Array, "state state"]
    B: Inexact[Array, "state input"]
    C: Inexact[Array, "input state"]
    D: Float[Array, " input"]

    def __init__(self, A, B, C, D):
        """**Raises:** `ValueError` naming the array whose shape does not fit the others."""
        dtype = _widest(A, B, C)
        self.A, self.B, self.C = (jnp.asarray(m).astype(dtype) for m in (A, B, C))
        self.D = jnp.asarray(D).astype(jnp.real(jnp.zeros((), dtype)).dtype)
        n = self.A.shape[0] if self.A.ndim == 2 else -1
        if self.A.shape != (n, n):
            raise ValueError(
                f"DenseLinearSystem: `A` must be square, got shape {tuple(self.A.shape)}."
            )
        h = self.B.shape[1] if self.B.ndim == 2 else -1
        for name, x, shape in (("B", self.B, (n, h)), ("C", self.C, (h, n)), ("D", self.D, (h,))):
            if x.shape != shape:
                raise ValueError(
                    f"DenseLinearSystem: `{name}` must have shape {shape}, got shape "
                    f"{tuple(x.shape)}."
                )

    def init_state(self) -> Inexact[Array, " state"]:
        """Zeros, `(state,)`."""
        return jnp.zeros(self.A.shape[:1], self.A.dtype)

    def step(
        self, h: Inexact[Array, " state"], u_t: Float[Array, " input"]
    ) -> tuple[Inexact[Array, " state"], Float[Array, " input"]]:
        """One step: `(h, u_t) -> (A h + B u_t, y_t)`."""
        h = self.A @ h + self.B @ u_t.astype(self.B.dtype)
        return h, _real_part(self.C @ h) + self.D * u_t

    def scan(
        self, h: Inexact[Array, " state"], u: Float[Array, "length input"]
    ) -> tuple[Inexact[Array, " state"], Float[Array, "length input"]]:
        """`jax.lax.scan(self.step, h, u)`."""
        # A lambda, not the bound method: Equinox's bound methods are not hashable.
        return lax.scan(lambda h, u_t: self.step(h, u_t), h, u)

    def __call__(self, u: Float[Array, "length input"]) -> Float[Array, "length input"]:
        """The outputs from a zero state, `(length, input)`."""
        return self.scan(self.init_state(), u)[1]

    def diagonalise(self, *, method: AbstractScan | None = None) -> DiscreteDiagonalSystem:
        r"""The equivalent complex diagonal system: with $A = V\operatorname{diag}(\lambda)V^{-1}$,
        $\tilde x = V^{-1} x$ evolves by $\lambda$, $\tilde B = V^{-1} B$, $\tilde C = C V$.

        Computed on the host in float64 (complex128) NumPy from concrete values, then cast
        to the complex dtype matching `A`. A real $A$ gives conjugate pairs and the outputs
        stay real.

        **Raises:**

        `ValueError` if $A$ is numerically not diagonalisable (condition number of $V$
        above $10^{12}$).
        """
        a = np.asarray(self.A, dtype=np.complex128)
        lam, v = np.linalg.eig(a)
        cond = np.linalg.cond(v)
        if not np.isfinite(cond) or cond > 1e12:
            raise ValueError(
                f"DenseLinearSystem.diagonalise: `A` is not (numerically) diagonalisable: its "
                f"eigenvector matrix has condition number {cond:.3g}."
            )
        b = np.linalg.solve(v, np.asarray(self.B, np.complex128))
        c = np.asarray(self.C, np.complex128) @ v
        dtype = complex_dtype(self.A.dtype)
        return DiscreteDiagonalSystem(
            jnp.asarray(lam.astype(dtype)),
            jnp.asarray(b.astype(dtype)),
            jnp.asarray(c.astype(dtype)),
            self.D,
            method=method,
        )


def glorot_dense_system(state_size: int, input_size: int, *, dtype=None, key) -> DenseLinearSystem:
    r"""A dense linear RNN with Glorot-style initialisation: $A_{ij} \sim N(0, 1/N)$ (whose
    eigenvalues approach the uniform distribution on the unit disk as $N \to \infty$, the
    circular law), $B \sim N(0, 1/H)$, $C \sim N(0, 1/N)$, $D \sim N(0, 1)$.

    !!! example

        ```python
        import jax
        import numpy as np
        import recurrax

        dense = recurrax.glorot_dense_system(256, 1, key=jax.random.key(0))
        radii = np.abs(np.linalg.eigvals(np.asarray(dense.A)))
        print(radii.max() < 1.2)  # True: the eigenvalues fill (about) the unit disk
        ```
    """
    dtype = default_float(dtype)
    ka, kb, kc, kd = jax.random.split(key, 4)
    n, h = state_size, input_size
    return DenseLinearSystem(
        jax.random.normal(ka, (n, n), dtype) / math.sqrt(n),
        jax.random.normal(kb, (n, h), dtype) / math.sqrt(h),
        jax.random.normal(kc, (h, n), dtype) / math.sqrt(n),
        jax.random.normal(kd, (h,), dtype),
    )
