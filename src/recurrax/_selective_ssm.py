r"""A selective (input-dependent) diagonal state-space layer, S6-style, on the same engine."""

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.nn as jnn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from ._checks import check_positive_int
from ._discretisation import AbstractDiscretisation, DISCRETISATION_NAMES, ZeroOrderHold
from ._dtypes import as_working, complex_dtype, default_float
from ._init import AbstractSSMInit, S4DLin, SSM_INITS
from ._layer import AbstractRecurrentLayer
from ._registry import register_mixer
from ._scan import AbstractScan
from ._ssm import DiagonalSSM


def _inverse_softplus(y):
    """$x$ with $\\operatorname{softplus}(x) = y > 0$: $\\log(\\operatorname{expm1}(y))$."""
    return jnp.log(jnp.expm1(y))


def _dense(linear: eqx.nn.Linear, x):
    return as_working(x @ linear.weight.T + linear.bias[None])


class SelectiveSSM(AbstractRecurrentLayer):
    r"""A selective diagonal state-space layer (the S6 layer of Mamba, with the complex
    diagonal $\Lambda$ of [`recurrax.DiagonalSSM`][]): the step $\Delta$ of the
    discretisation is computed from the input at every step, so the discrete transition
    depends on the input:

    $$\Delta_t = \operatorname{softplus}(W_\Delta x_t + b_\Delta),\qquad
    \bar\lambda_t = e^{\Delta_t \Lambda},$$

    $$\bar B_t = (\bar\lambda_t - 1)\Lambda^{-1} B_t \quad\text{(zero-order hold)},$$

    $$x_t = \bar\lambda_t \odot x_{t-1} + \bar B_t\, u_t,\qquad
    y_t = \operatorname{Re}(C_t x_t) + D \odot u_t.$$

    The layout is that of `DiagonalSSM(delta="per_feature")` (S4D, Mamba): a bank of $H$
    single-input systems of $N$ states each, so $\Delta_t$ has one entry per feature and the
    state is `(input, state)`. $B$ and $C$ are fixed (`B_re`, `B_im`, `C_re`, `C_im`,
    `(input, state)`) or, with `selective_bc=True`, also computed from the input, shared
    by the features as in S6: $B_t = W_B x_t$, $C_t = W_C x_t$ (complex, `(state,)` each,
    from `eqx.nn.Linear(input, 2 * state)` maps `B_proj`, `C_proj`, real parts first).

    A constant step recovers the time-invariant layer: with $W_\Delta = 0$ the outputs are
    those of the `DiagonalSSM(delta="per_feature")` with the same $\Lambda, B, C, D$ and
    $\Delta = \operatorname{softplus}(b_\Delta)$ ([`recurrax.SelectiveSSM.from_diagonal_ssm`][]
    builds it).

    **Fields:** `Lambda_re_log`, `Lambda_im` `(input, state)` (as in `DiagonalSSM`,
    $\operatorname{Re}\Lambda = -e^{\text{Lambda\_re\_log}}$), `step_proj`
    (`eqx.nn.Linear(input, input)`: $W_\Delta$, $b_\Delta$), `B_re`, `B_im`, `C_re`, `C_im`
    (or `None`), `B_proj`, `C_proj` (or `None`), `D` `(input,)`, `discretisation`,
    `conjugate_symmetric`, `method`.

    !!! example

        ```python
        import jax
        import recurrax

        ssm = recurrax.SelectiveSSM(8, 16, key=jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (100, 8))
        y = ssm(x)                              # (100, 8)
        steps = ssm.step_sizes(x)               # Δ_t, (100, 8): one per step and feature
        ```
    """

    recurrent_fields: ClassVar[frozenset[str]] = frozenset(
        {"Lambda_re_log", "Lambda_im", "step_proj", "B_re", "B_im", "B_proj"}
    )
    transition_fields: ClassVar[frozenset[str]] = frozenset({"Lambda_re_log", "Lambda_im"})

    Lambda_re_log: Float[Array, "input state"]
    Lambda_im: Float[Array, "input state"]
    step_proj: eqx.nn.Linear
    B_re: Float[Array, "input state"] | None
    B_im: Float[Array, "input state"] | None
    C_re: Float[Array, "input state"] | None
    C_im: Float[Array, "input state"] | None
    B_proj: eqx.nn.Linear | None
    C_proj: eqx.nn.Linear | None
    D: Float[Array, " input"]
    discretisation: AbstractDiscretisation
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    selective_bc: bool = eqx.field(static=True)
    conjugate_symmetric: bool = eqx.field(static=True)
    method: AbstractScan | None

    def __init__(
        self,
        input_size: int,
        state_size: int,
        *,
        init: AbstractSSMInit = S4DLin(),
        discretisation: AbstractDiscretisation = ZeroOrderHold(),
        selective_bc: bool = False,
        step_min: float = 1e-3,
        step_max: float = 1e-1,
        conjugate_symmetric: bool = True,
        method: AbstractScan | None = None,
        dtype=None,
        key: PRNGKeyArray,
    ):
        r"""**Arguments:**

        - `input_size`: $H$.
        - `state_size`: $N$, complex states per feature.
        - `init`: the eigenvalue initialisation ([`recurrax.S4DLin`][] by default,
            [`recurrax.S4DInv`][], [`recurrax.HiPPOLegS`][]).
        - `discretisation`: zero-order hold by default; any other discretisation of
            [`recurrax.DiagonalSSM`][] works the same way per step.
        - `selective_bc`: compute $B_t$ and $C_t$ from the input too (S6).
        - `step_min`, `step_max`: $\Delta_t$ at zero input, $\operatorname{softplus}(b_\Delta)$,
            starts log-uniform in this range (Mamba's initialisation).
        - `conjugate_symmetric`: keep one state of each conjugate pair, doubling the real
            part of the output.
        - `method`: the scan strategy.
        - `dtype`: the real parameter dtype.
        - `key`: a PRNG key.

        Other parameters: $W_\Delta$ as `eqx.nn.Linear`'s default (uniform
        $\pm 1/\sqrt{H}$); fixed $B = 1$ and $C_{re}, C_{im} \sim N(0, 1/N)$ (halved when
        conjugate-symmetric), as `DiagonalSSM(delta="per_feature")`; `B_proj`, `C_proj` as
        `eqx.nn.Linear`'s default; $D \sim N(0, 1)$.

        **Raises:** `ValueError` naming the argument for non-positive sizes, steps outside
        $0 < \Delta_{\min} \le \Delta_{\max}$, or an `init`/`discretisation` of the wrong kind.
        """
        owner = "SelectiveSSM"
        check_positive_int(owner, "input_size", input_size)
        check_positive_int(owner, "state_size", state_size)
        if not (0 < step_min <= step_max < np.inf):
            raise ValueError(
                f"{owner}: the step range needs 0 < step_min <= step_max < inf, got "
                f"step_min={step_min!r}, step_max={step_max!r}."
            )
        if not isinstance(init, AbstractSSMInit):
            raise ValueError(
                f"{owner}: `init` must be an initialisation such as recurrax.S4DLin(), got "
                f"init={init!r}."
            )
        if not isinstance(discretisation, AbstractDiscretisation):
            raise ValueError(
                f"{owner}: `discretisation` must be a discretisation such as "
                f"recurrax.ZeroOrderHold(), got discretisation={discretisation!r}."
            )
        dtype = default_float(dtype)
        h, n = int(input_size), int(state_size)
        k_step, k_bias, k_c, k_d, k_bp, k_cp = jax.random.split(key, 6)
        lam = np.asarray(init.eigenvalues(n, conjugate_symmetric))
        self.Lambda_re_log = jnp.broadcast_to(jnp.asarray(np.log(-lam.real), dtype), (h, n))
        self.Lambda_im = jnp.broadcast_to(jnp.asarray(lam.imag, dtype), (h, n))
        step = jnp.exp(
            jax.random.uniform(k_bias, (h,), minval=math.log(step_min), maxval=math.log(step_max))
        )
        step_proj = eqx.nn.Linear(h, h, dtype=dtype, key=k_step)
        self.step_proj = eqx.tree_at(
            lambda m: m.bias, step_proj, _inverse_softplus(step).astype(dtype)
        )
        if selective_bc:
            self.B_re = self.B_im = self.C_re = self.C_im = None
            self.B_proj = eqx.nn.Linear(h, 2 * n, dtype=dtype, key=k_bp)
            self.C_proj = eqx.nn.Linear(h, 2 * n, dtype=dtype, key=k_cp)
        else:
            self.B_re, self.B_im = jnp.ones((h, n), dtype), jnp.zeros((h, n), dtype)
            c_scale = (0.5 if conjugate_symmetric else 1.0) / math.sqrt(n)
            c_parts = jax.random.normal(k_c, (2, h, n), dtype) * c_scale
            self.C_re, self.C_im = c_parts[0], c_parts[1]
            self.B_proj = self.C_proj = None
        self.D = jax.random.normal(k_d, (h,), dtype)
        self.discretisation = discretisation
        self.input_size, self.state_size = h, n
        self.selective_bc = bool(selective_bc)
        self.conjugate_symmetric = bool(conjugate_symmetric)
        self.method = method

    @classmethod
    def from_diagonal_ssm(cls, ssm: DiagonalSSM, *, key: PRNGKeyArray) -> "SelectiveSSM":
        r"""The selective layer with a constant step that has the outputs of a
        `DiagonalSSM(delta="per_feature")`: the same $\Lambda, B, C, D$ and discretisation,
        $W_\Delta = 0$ and $b_\Delta = \operatorname{softplus}^{-1}(\Delta)$. Training then
        makes the step input-dependent.

        **Arguments:** `ssm`, a unidirectional per-feature [`recurrax.DiagonalSSM`][];
        `key` for the constructor (the parameters are all replaced).

        **Raises:** `ValueError` for a per-state or bidirectional `ssm`.
        """
        if not isinstance(ssm, DiagonalSSM) or ssm.delta != "per_feature" or ssm.bidirectional:
            raise ValueError(
                "SelectiveSSM.from_diagonal_ssm: `ssm` must be a unidirectional "
                "DiagonalSSM(delta='per_feature')."
            )
        dtype = ssm.D.dtype
        layer = cls(
            ssm.input_size,
            ssm.state_size,
            discretisation=ssm.discretisation,
            conjugate_symmetric=ssm.conjugate_symmetric,
            method=ssm.method,
            dtype=dtype,
            key=key,
        )
        bias = _inverse_softplus(ssm.step_sizes()).astype(dtype)
        fields = ("Lambda_re_log", "Lambda_im", "B_re", "B_im", "C_re", "C_im", "D")
        return eqx.tree_at(
            lambda m: [getattr(m, f) for f in fields] + [m.step_proj.weight, m.step_proj.bias],
            layer,
            [getattr(ssm, f) for f in fields] + [jnp.zeros_like(layer.step_proj.weight), bias],
        )

    @property
    def output_size(self) -> int:
        return self.input_size

    @property
    def bidirectional(self) -> bool:
        return False

    @property
    def log_space(self) -> bool:
        return False

    def continuous_eigenvalues(self) -> Complex[Array, "input state"]:
        r"""$\Lambda = -e^{\text{Lambda\_re\_log}} + i\,\text{Lambda\_im}$ (real part < 0)."""
        return jax.lax.complex(-jnp.exp(as_working(self.Lambda_re_log)), as_working(self.Lambda_im))

    def step_sizes(self, x: Float[Array, "length input"]) -> Float[Array, "length input"]:
        r"""$\Delta_t = \operatorname{softplus}(W_\Delta x_t + b_\Delta)$, one per step and
        feature."""
        return jnn.softplus(_dense(self.step_proj, x))

    def _input_matrix(self, x):
        """B as `(1, input, state)` or B_t as `(length, 1, state)`, complex."""
        if self.selective_bc:
            parts = _dense(self.B_proj, x)
            n = self.state_size
            return jax.lax.complex(parts[:, :n], parts[:, n:])[:, None, :]
        return jax.lax.complex(as_working(self.B_re), as_working(self.B_im))[None]

    def _output_matrix(self, x):
        if self.selective_bc:
            parts = _dense(self.C_proj, x)
            n = self.state_size
            return parts[:, None, :n], parts[:, None, n:]
        return as_working(self.C_re)[None], as_working(self.C_im)[None]

    def init_state(self) -> Complex[Array, "input state"]:
        """Zeros, `(input, state)`, complex."""
        dtype = complex_dtype(self.Lambda_im.dtype)
        return jnp.zeros((self.input_size, self.state_size), dtype)

    def coefficients(self, x):
        step = self.step_sizes(x)[:, :, None]
        lam_bar, scale = self.discretisation(self.continuous_eigenvalues()[None], step)
        weight = scale * self._input_matrix(x)
        u = as_working(x)[:, :, None]
        return lam_bar, jax.lax.complex(u * jnp.real(weight), u * jnp.imag(weight))

    def readout(self, h, x):
        factor = 2 if self.conjugate_symmetric else 1
        c_re, c_im = self._output_matrix(x)
        mixed = jnp.real(h) * c_re - jnp.imag(h) * c_im
        return (factor * jnp.sum(mixed, axis=-1)).astype(x.dtype) + self.D[None] * x


register_mixer(
    "selective-ssm",
    SelectiveSSM,
    lambda width, hidden, state_size, *, dtype, key, **options: SelectiveSSM(
        hidden, state_size, dtype=dtype, key=key, **options
    ),
    block="hawk",
    summary="a diagonal SSM with an input-dependent step Δ and input matrix (Mamba-style)",
    choices={"init": SSM_INITS, "discretisation": DISCRETISATION_NAMES},
)
