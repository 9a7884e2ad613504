r"""A trainable continuous-time diagonal state-space layer (S5 / S4D style)."""

import math
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from ._checks import check_positive_int
from ._discretisation import AbstractDiscretisation, DISCRETISATION_NAMES, ZeroOrderHold
from ._dtypes import as_working, complex_dtype, default_float
from ._init import AbstractSSMInit, HiPPOLegS, SSM_INITS
from ._layer import complex_projection, real_readout
from ._lru import LRU
from ._lti import AbstractLTILayer, depthwise_kernel, mimo_kernel
from ._registry import register_mixer
from ._scan import AbstractScan
from ._system import ContinuousDiagonalSystem, DiscreteDiagonalSystem
from ._validate import check_bool, check_real


_DELTAS = ("per_state", "per_feature")


class DiagonalSSM(AbstractLTILayer):
    r"""A continuous diagonal state-space layer, discretised on the fly (see
    [from continuous SSMs to the LRU](../concepts/ssm-to-lru.md)):

    $$\dot x = \Lambda x + B u,\quad y = \operatorname{Re}(C x) + D \odot u
    \quad\longrightarrow\quad x_k = \bar\lambda \odot x_{k-1} + \bar B u_k,$$

    with $\operatorname{Re}\Lambda = -e^{\text{Lambda\_re\_log}} < 0$ by construction, complex
    $B$ and $C$, a learnable step $\Delta = e^{\text{log\_step}}$, and the discretisation
    ([`recurrax.ZeroOrderHold`][], [`recurrax.Bilinear`][], ...) as an argument.

    Two layouts:

    - `delta="per_state"` (S5-style, multi-input): $N$ states driven by all $H$ inputs,
        one $\Delta$ per state. Fields `Lambda_re_log`, `Lambda_im`, `log_step` `(state,)`;
        `B_re`, `B_im` `(state, input)`; `C_re`, `C_im` `(input, state)`.
    - `delta="per_feature"` (S4D-style): a bank of $H$ single-input systems of $N$ states,
        one $\Delta$ per feature. Fields `Lambda_re_log`, `Lambda_im`, `B_re`, `B_im`,
        `C_re`, `C_im` `(input, state)`; `log_step` `(input,)`. The state is `(input, state)`.

    With `conjugate_symmetric=True` the $N$ states stand for $2N$ in conjugate pairs and
    the readout is $2\operatorname{Re}(Cx)$. Bidirectional: a reverse-time recurrence shares
    $\Lambda$, $\Delta$ and $B$; `C_re`, `C_im` get twice as many columns.
    [`recurrax.DiagonalSSM.to_lru`][] gives the [`recurrax.LRU`][] with the same outputs.

    !!! example

        ```python
        import jax
        import recurrax

        ssm = recurrax.DiagonalSSM(
            8, 32, init=recurrax.S4DLin(), discretisation=recurrax.Bilinear(),
            key=jax.random.key(0),
        )
        x = jax.random.normal(jax.random.key(1), (100, 8))
        y = ssm(x)                                  # (100, 8)
        y_lru = ssm.to_lru()(x)                     # the same outputs, as an LRU
        ```
    """

    recurrent_fields: ClassVar[frozenset[str]] = frozenset(
        {"Lambda_re_log", "Lambda_im", "log_step", "B_re", "B_im"}
    )
    transition_fields: ClassVar[frozenset[str]] = frozenset(
        {"Lambda_re_log", "Lambda_im", "log_step"}
    )

    Lambda_re_log: Float[Array, "*bank state"]
    Lambda_im: Float[Array, "*bank state"]
    log_step: Float[Array, " steps"]
    B_re: Float[Array, "rows columns"]
    B_im: Float[Array, "rows columns"]
    C_re: Float[Array, "input readout"]
    C_im: Float[Array, "input readout"]
    D: Float[Array, " input"]
    discretisation: AbstractDiscretisation
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    delta: Literal["per_state", "per_feature"] = eqx.field(static=True)
    conjugate_symmetric: bool = eqx.field(static=True)
    bidirectional: bool = eqx.field(static=True)
    method: AbstractScan | None

    def __init__(
        self,
        input_size: int,
        state_size: int,
        *,
        init: AbstractSSMInit = HiPPOLegS(),
        discretisation: AbstractDiscretisation = ZeroOrderHold(),
        delta: Literal["per_state", "per_feature"] = "per_state",
        step_min: float = 1e-3,
        step_max: float = 1e-1,
        conjugate_symmetric: bool = True,
        bidirectional: bool = False,
        method: AbstractScan | None = None,
        dtype=None,
        key: PRNGKeyArray,
    ):
        r"""**Arguments:**

        - `input_size`: $H$.
        - `state_size`: $N$, complex states (per feature for `delta="per_feature"`).
        - `init`: the eigenvalue initialisation: [`recurrax.HiPPOLegS`][] (S5, default),
            [`recurrax.S4DLin`][], [`recurrax.S4DInv`][].
        - `discretisation`: how $(\Lambda, \Delta)$ become $(\bar\lambda, \bar B)$.
        - `delta`: `"per_state"` (S5) or `"per_feature"` (S4D), see above.
        - `step_min`, `step_max`: $\Delta$ is initialised log-uniformly in this range
            ($10^{-3}$, $10^{-1}$ as in S4D/S5).
        - `conjugate_symmetric`: keep one state of each conjugate pair, doubling the real
            part of the output.
        - `bidirectional`: add the reverse-time recurrence.
        - `method`: the scan strategy.
        - `dtype`: the real parameter dtype.
        - `key`: a PRNG key.

        Other parameters: per state, $B_{re}, B_{im} \sim N(0, 1/(2H))$; per feature,
        $B = 1$ (S4D); $C_{re}, C_{im} \sim N(0, 1/N)$, halved when conjugate-symmetric;
        $D \sim N(0, 1)$.

        **Raises:**

        `ValueError` naming the argument for non-positive sizes, an unknown `delta`, or
        steps outside $0 < \Delta_{\min} \le \Delta_{\max}$.
        """
        check_positive_int("DiagonalSSM", "input_size", input_size)
        check_positive_int("DiagonalSSM", "state_size", state_size)
        if delta not in _DELTAS:
            raise ValueError(f"DiagonalSSM: `delta` must be one of {_DELTAS}, got delta={delta!r}.")
        for name, flag in (
            ("bidirectional", bidirectional),
            ("conjugate_symmetric", conjugate_symmetric),
        ):
            check_bool("DiagonalSSM", name, flag)
        step_min = check_real("DiagonalSSM", "step_min", step_min)
        step_max = check_real("DiagonalSSM", "step_max", step_max)
        if not (0 < step_min <= step_max < np.inf):
            raise ValueError(
                f"DiagonalSSM: the step range needs 0 < step_min <= step_max < inf, got "
                f"step_min={step_min!r}, step_max={step_max!r}."
            )
        if not isinstance(init, AbstractSSMInit):
            raise ValueError(
                f"DiagonalSSM: `init` must be an initialisation such as recurrax.S4DLin(), "
                f"got init={init!r}."
            )
        if not isinstance(discretisation, AbstractDiscretisation):
            raise ValueError(
                f"DiagonalSSM: `discretisation` must be a discretisation such as "
                f"recurrax.ZeroOrderHold(), got discretisation={discretisation!r}."
            )
        dtype = default_float(dtype)
        h, n = int(input_size), int(state_size)
        k_step, k_b, k_c, k_d = jax.random.split(key, 4)
        lam = np.asarray(init.eigenvalues(n, conjugate_symmetric))
        bank = (h,) if delta == "per_feature" else ()
        self.Lambda_re_log = jnp.broadcast_to(jnp.asarray(np.log(-lam.real), dtype), bank + (n,))
        self.Lambda_im = jnp.broadcast_to(jnp.asarray(lam.imag, dtype), bank + (n,))
        steps = h if delta == "per_feature" else n
        self.log_step = jax.random.uniform(
            k_step, (steps,), dtype, minval=math.log(step_min), maxval=math.log(step_max)
        )
        if delta == "per_feature":
            self.B_re, self.B_im = jnp.ones((h, n), dtype), jnp.zeros((h, n), dtype)
        else:
            b_parts = jax.random.normal(k_b, (2, n, h), dtype) / math.sqrt(2 * h)
            self.B_re, self.B_im = b_parts[0], b_parts[1]
        readout = 2 * n if bidirectional else n
        c_scale = (0.5 if conjugate_symmetric else 1.0) / math.sqrt(n)
        c_parts = jax.random.normal(k_c, (2, h, readout), dtype) * c_scale
        self.C_re, self.C_im = c_parts[0], c_parts[1]
        self.D = jax.random.normal(k_d, (h,), dtype)
        self.discretisation = discretisation
        self.input_size, self.state_size = h, n
        self.delta = delta
        self.conjugate_symmetric = bool(conjugate_symmetric)
        self.bidirectional = bool(bidirectional)
        self.method = method

    # -- the continuous parameters -------------------------------------------------------

    def continuous_eigenvalues(self) -> Complex[Array, "*bank state"]:
        r"""$\Lambda = -e^{\text{Lambda\_re\_log}} + i\,\text{Lambda\_im}$ (real part < 0)."""
        return jax.lax.complex(-jnp.exp(as_working(self.Lambda_re_log)), as_working(self.Lambda_im))

    def step_sizes(self) -> Float[Array, " steps"]:
        r"""$\Delta = e^{\text{log\_step}}$: `(state,)` per state, `(input,)` per feature."""
        return jnp.exp(as_working(self.log_step))

    def _discrete(self) -> tuple[Array, Array]:
        """(λ̄, B̄) in the layer's own layout."""
        step = self.step_sizes()
        if self.delta == "per_feature":
            step = step[:, None]
        lam_bar, scale = self.discretisation(self.continuous_eigenvalues(), step)
        b = jax.lax.complex(as_working(self.B_re), as_working(self.B_im))
        weight = scale * b if self.delta == "per_feature" else scale[:, None] * b
        return lam_bar, weight

    def _output_matrix(self, reverse: bool) -> Complex[Array, "input state"]:
        n = self.state_size
        cols = slice(n, 2 * n) if reverse else slice(0, n)
        c = jax.lax.complex(as_working(self.C_re[:, cols]), as_working(self.C_im[:, cols]))
        return 2 * c if self.conjugate_symmetric else c

    # -- the recurrent layer -------------------------------------------------------------

    def init_state(self) -> Complex[Array, "*bank state"]:
        """Zeros: `(state,)` per state, `(input, state)` per feature; complex."""
        shape = (self.input_size,) if self.delta == "per_feature" else ()
        dtype = complex_dtype(self.Lambda_im.dtype)
        return jnp.zeros(shape + (self.state_size,), dtype)

    def coefficients(self, x):
        lam_bar, weight = self._discrete()
        if self.delta == "per_feature":
            u, w = as_working(x)[:, :, None], weight[None]
            return lam_bar, jax.lax.complex(u * jnp.real(w), u * jnp.imag(w))
        return lam_bar, complex_projection(jnp.real(weight), jnp.imag(weight), x)

    def readout(self, h, x):
        factor = 2 if self.conjugate_symmetric else 1
        if self.delta == "per_feature":
            c_re, c_im = as_working(self.C_re), as_working(self.C_im)
            mixed = jnp.real(h) * c_re[None] - jnp.imag(h) * c_im[None]
            return (factor * jnp.sum(mixed, axis=-1)).astype(x.dtype) + self.D[None] * x
        return factor * real_readout(self.C_re, self.C_im, h) + self.D[None] * x

    def kernel(self, length: int, *, reverse: bool = False) -> Float[Array, "length ..."]:
        if reverse and not self.bidirectional:
            raise ValueError("DiagonalSSM.kernel: `reverse=True` needs a bidirectional layer.")
        lam_bar, weight = self._discrete()
        c = self._output_matrix(reverse)
        if self.delta == "per_feature":
            return depthwise_kernel(lam_bar, weight, c, length)
        return mimo_kernel(lam_bar, weight, c, length)

    # -- conversions ---------------------------------------------------------------------

    def _flat(self, reverse: bool):
        """(Λ, B, C, Δ) as one multi-input system; a per-feature bank becomes H·N states with
        a block-structured B and C."""
        lam = self.continuous_eigenvalues()
        b = jax.lax.complex(as_working(self.B_re), as_working(self.B_im))
        c = self._output_matrix(reverse)
        step = self.step_sizes()
        if self.delta == "per_state":
            return lam, b, c, step
        h, n = self.input_size, self.state_size
        eye = jnp.eye(h, dtype=b.dtype)
        b_flat = (b[:, :, None] * eye[:, None, :]).reshape(h * n, h)
        c_flat = (eye[:, :, None] * c[None, :, :]).reshape(h, h * n)
        return lam.reshape(h * n), b_flat, c_flat, jnp.repeat(step, n)

    def continuous_system(self, *, reverse: bool = False) -> ContinuousDiagonalSystem:
        r"""The layer's continuous system $(\Lambda, B, C, D)$ as a plain value, flattened to one
        multi-input system (a per-feature bank gives $HN$ states with block-structured $B$,
        $C$); its steps are `flat_step_sizes()`. The output matrix already includes the
        factor 2 of a conjugate-symmetric layer. `reverse=True`: the reverse direction of a
        bidirectional layer (its own $C$, and $D = 0$).
        """
        if reverse and not self.bidirectional:
            raise ValueError(
                "DiagonalSSM.continuous_system: `reverse=True` needs a bidirectional layer."
            )
        lam, b, c, _ = self._flat(reverse)
        d = jnp.zeros_like(self.D) if reverse else self.D
        return ContinuousDiagonalSystem(lam, b, c, d)

    def flat_step_sizes(self) -> Float[Array, " flat_state"]:
        r"""$\Delta$ for each state of `continuous_system()`."""
        return self._flat(False)[3]

    def discrete_system(self, *, reverse: bool = False) -> DiscreteDiagonalSystem:
        """The discretised layer as a plain [`recurrax.DiscreteDiagonalSystem`][] with the same
        outputs (flattened as in `continuous_system`)."""
        system = self.continuous_system(reverse=reverse)
        return system.discretise(self.flat_step_sizes(), self.discretisation, method=self.method)

    def to_lru(self, *, gamma_log: Float[Array, " flat_state"] | None = None) -> LRU:
        r"""The [`recurrax.LRU`][] with the same outputs: $\nu = -\log|\bar\lambda|$,
        $\theta = \arg\bar\lambda \in (0, 2\pi]$, $B = \operatorname{diag}(\gamma)^{-1}\bar B$,
        the same $C$ (doubled if conjugate-symmetric) and $D$. A per-feature bank becomes an
        LRU with $HN$ states.

        **Raises:**

        `ValueError` if the discretisation gives some $|\bar\lambda| \ge 1$ (forward Euler
        with a large step): such a system has no LRU form, and nothing is clamped.
        """
        forward = self.discrete_system()
        reverse_c = self.discrete_system(reverse=True).C if self.bidirectional else None
        return LRU.from_discrete_system(
            forward, reverse_C=reverse_c, gamma_log=gamma_log, method=self.method
        )


register_mixer(
    "ssm",
    DiagonalSSM,
    lambda width, hidden, state_size, *, dtype, key, **options: DiagonalSSM(
        hidden, state_size, dtype=dtype, key=key, **options
    ),
    block="glu",
    summary="a continuous diagonal SSM, discretised (S4D/S5-style; ZOH, bilinear, Euler)",
    bidirectional=True,
    choices={"init": SSM_INITS, "discretisation": DISCRETISATION_NAMES},
)
