r"""The Linear Recurrent Unit (Orvieto et al., 2023) as a discretised diagonal linear system."""

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from ._checks import check_positive_int
from ._dtypes import as_working, complex_dtype, default_float
from ._init import check_ring_arguments, ring_init
from ._layer import complex_projection, planar_projection, planar_readout, real_readout
from ._lti import AbstractLTILayer, mimo_kernel
from ._recurrence import planar_linear_recurrence, supports_planar
from ._registry import register_mixer
from ._scan import AbstractScan
from ._system import DiscreteDiagonalSystem
from ._validate import check_bool


def stability_floor(dtype) -> float:
    r"""The smallest $\nu = -\log|\lambda|$ an [`recurrax.LRU`][] uses in `dtype`:
    $8\,\varepsilon$ (about $9.5 \times 10^{-7}$ in float32, $1.8 \times 10^{-15}$ in float64).

    In exact arithmetic $|\lambda| = \exp(-e^{\nu_{\log}}) < 1$ for every $\nu_{\log}$, but in
    floating point $\exp(-e^{\nu_{\log}})$ rounds to exactly 1.0 once $e^{\nu_{\log}}$ drops
    below half an ulp of 1 ($\nu_{\log} \lesssim -17$ in float32): the state would then never
    decay. Flooring $\nu$ at a few ulps keeps every computed $|\lambda|$ strictly below 1
    (the rounding of $\cos$ and $\sin$ included); below the floor the gradient with respect to
    $\nu_{\log}$ is zero, where it was already below $10^{-5}$ relative.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        print(recurrax.stability_floor(jnp.float32))            # 9.5367431640625e-07: 8 eps
        ```
    """
    return 8.0 * float(jnp.finfo(dtype).eps)


def _check_inside_unit_disk(lam: Array, what: str) -> Array:
    """|λ| < 1, as a ValueError for concrete values, an `eqx.error_if` under tracing."""
    modulus = jnp.abs(lam)
    message = (
        f"{what}: an LRU needs every |lambda| < 1 (nu = -log|lambda| > 0); a discrete system "
        f"with |lambda| >= 1 (e.g. forward Euler with a large step) has no LRU form."
    )
    if isinstance(lam, jax.core.Tracer):
        return eqx.error_if(lam, jnp.any(~(modulus < 1)), message)
    bad = ~(np.asarray(modulus) < 1)
    if bad.any():
        raise ValueError(
            f"{message} Found {int(bad.sum())} of {bad.size} with max |lambda| = "
            f"{float(np.max(np.asarray(modulus))):.9g}."
        )
    return lam


class LRU(AbstractLTILayer):
    r"""The Linear Recurrent Unit (Orvieto et al. 2023; see
    [diagonal linear systems](../concepts/diagonal-systems.md)):

    $$x_k = \lambda \odot x_{k-1} + \gamma \odot (B u_k),\qquad
    y_k = \operatorname{Re}(C x_k) + D \odot u_k,$$

    $u_k, y_k \in \mathbb{R}^H$, $x_k \in \mathbb{C}^N$, with the stable exponential
    parameterisation $\lambda = \exp(-e^{\nu_{\log}} + i e^{\theta_{\log}})$ and the
    normalisation $\gamma = e^{\gamma_{\log}}$. It is a [`recurrax.DiscreteDiagonalSystem`][]
    with $\bar B = \operatorname{diag}(\gamma) B$ (see `discrete_system`).

    Bidirectional (as in the paper's Pathfinder/PathX models): a second recurrence in
    reverse time shares $\lambda$ and $B$ and has its own output matrix,
    $y = \operatorname{Re}(C_f x^f + C_b x^b) + D \odot u$, stored as `C_re`, `C_im` of shape
    `(input, 2 * state)` (forward columns first).

    **Fields** (named as in the paper's public implementations):

    - `nu_log`, `theta_log`, `gamma_log`: `(state,)`.
    - `B_re`, `B_im`: `(state, input)`.
    - `C_re`, `C_im`: `(input, state)`, or `(input, 2 * state)` if bidirectional.
    - `D`: `(input,)`, applied elementwise.

    !!! example

        ```python
        import jax
        import recurrax

        lru = recurrax.LRU(16, 64, r_min=0.9, r_max=0.999, key=jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (1000, 16))   # (length, input)
        y = lru(x)                                              # (1000, 16)
        h, y_first = lru.scan(lru.init_state(), x[:500])        # carry the state ...
        h, y_rest = lru.scan(h, x[500:])                        # ... into the next piece
        ```

    ??? cite

        ```bibtex
        @inproceedings{orvieto2023resurrecting,
          title={Resurrecting Recurrent Neural Networks for Long Sequences},
          author={Orvieto, Antonio and Smith, Samuel L. and Gu, Albert and Fernando, Anushan
                  and Gulcehre, Caglar and Pascanu, Razvan and De, Soham},
          booktitle={International Conference on Machine Learning},
          year={2023}
        }
        ```
    """

    recurrent_fields: ClassVar[frozenset[str]] = frozenset(
        {"nu_log", "theta_log", "gamma_log", "B_re", "B_im"}
    )
    transition_fields: ClassVar[frozenset[str]] = frozenset({"nu_log", "theta_log", "gamma_log"})

    nu_log: Float[Array, " state"]
    theta_log: Float[Array, " state"]
    gamma_log: Float[Array, " state"]
    B_re: Float[Array, "state input"]
    B_im: Float[Array, "state input"]
    C_re: Float[Array, "input readout"]
    C_im: Float[Array, "input readout"]
    D: Float[Array, " input"]
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    r_min: float = eqx.field(static=True)
    r_max: float = eqx.field(static=True)
    max_phase: float = eqx.field(static=True)
    bidirectional: bool = eqx.field(static=True)
    method: AbstractScan | None

    def __init__(
        self,
        input_size: int,
        state_size: int,
        *,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        bidirectional: bool = False,
        method: AbstractScan | None = None,
        dtype=None,
        key: PRNGKeyArray,
    ):
        r"""**Arguments:**

        - `input_size`: $H$, the width of $u$ and $y$.
        - `state_size`: $N$, the number of complex states.
        - `r_min`, `r_max`: the ring of the initial $|\lambda|$,
            $0 \le r_{\min} < r_{\max} \le 1$ (Table 9 of the paper lists them per task;
            the defaults are those of the public reference implementation).
        - `max_phase`: the largest initial phase, positive ($2\pi$; $\pi/10$ for PathX).
        - `bidirectional`: add the reverse-time recurrence.
        - `method`: the scan strategy (`None`: [`recurrax.AutoScan`][]).
        - `dtype`: the real parameter dtype (default floating dtype if `None`); the state
            is the matching complex dtype.
        - `key`: a PRNG key.

        Initialisation (the paper's): ring for $(\nu_{\log}, \theta_{\log})$ (draws on open
        intervals), $\gamma_{\log} = \log\sqrt{1 - |\lambda|^2}$, $B_{re}, B_{im} \sim
        N(0, 1/(2H))$, $C_{re}, C_{im} \sim N(0, 1/N)$ (each direction), $D \sim N(0, 1)$.

        **Raises:**

        `ValueError` naming the argument for non-positive sizes, radii outside
        $0 \le r_{\min} < r_{\max} \le 1$, or a phase that is not positive.
        """
        check_positive_int("LRU", "input_size", input_size)
        check_positive_int("LRU", "state_size", state_size)
        check_bool("LRU", "bidirectional", bidirectional)
        try:
            check_ring_arguments(r_min, r_max, max_phase)
        except ValueError as error:
            raise ValueError(f"LRU: {error}") from None
        dtype = default_float(dtype)
        k_ring, k_b, k_c, k_d = jax.random.split(key, 4)
        self.nu_log, self.theta_log = ring_init(
            state_size, r_min=r_min, r_max=r_max, max_phase=max_phase, dtype=dtype, key=k_ring
        )
        self.gamma_log = _normalisation(self.nu_log, dtype)
        h, n = input_size, state_size
        b_parts = jax.random.normal(k_b, (2, n, h), dtype) / math.sqrt(2 * h)
        self.B_re, self.B_im = b_parts[0], b_parts[1]
        readout = 2 * n if bidirectional else n
        c_parts = jax.random.normal(k_c, (2, h, readout), dtype) / math.sqrt(n)
        self.C_re, self.C_im = c_parts[0], c_parts[1]
        self.D = jax.random.normal(k_d, (h,), dtype)
        self.input_size, self.state_size = int(input_size), int(state_size)
        self.r_min, self.r_max, self.max_phase = float(r_min), float(r_max), float(max_phase)
        self.bidirectional = bool(bidirectional)
        self.method = method

    def eigenvalues(self) -> Complex[Array, " state"]:
        r"""$\lambda = \exp(-\nu + i\theta)$ with $\nu = \max(e^{\nu_{\log}}, \text{floor})$,
        `(state,)` complex. Every $|\lambda| < 1$ (see [`recurrax.stability_floor`][])."""
        nu_log, theta_log = as_working(self.nu_log), as_working(self.theta_log)
        nu = jnp.maximum(jnp.exp(nu_log), stability_floor(nu_log.dtype))
        return jnp.exp(jax.lax.complex(-nu, jnp.exp(theta_log)))

    def _input_weights(self) -> tuple[Array, Array]:
        # gamma_log may be float32 with a bfloat16 B (SequenceModel's compute_dtype keeps the
        # transition's parameters): the product in B's dtype, from gamma at full precision.
        gamma = jnp.exp(as_working(self.gamma_log))[:, None]
        return (gamma * as_working(self.B_re)).astype(self.B_re.dtype), (
            gamma * as_working(self.B_im)
        ).astype(self.B_im.dtype)

    def _output_matrix(self, reverse: bool) -> Complex[Array, "input state"]:
        n = self.state_size
        cols = slice(n, 2 * n) if reverse else slice(0, n)
        return jax.lax.complex(as_working(self.C_re[:, cols]), as_working(self.C_im[:, cols]))

    def init_state(self) -> Complex[Array, " state"]:
        """Zeros, `(state,)` complex."""
        return jnp.zeros((self.state_size,), complex_dtype(self.nu_log.dtype))

    def coefficients(self, x):
        w_re, w_im = self._input_weights()
        return self.eigenvalues(), complex_projection(w_re, w_im, x)

    def readout(self, h, x):
        return real_readout(self.C_re, self.C_im, h) + self.D[None] * x

    def _planar_call(self, x):
        # The same computation as coefficients -> solve -> readout with the state kept as
        # real planes: the input product's output is the recurrence's input as it is, and the
        # states are the output product's input (no complex array is formed, nor in the
        # backward pass converted back to real and transposed for the weight gradients).
        # Only where the generic path would compute exactly this: LRU's own coefficients and
        # readout, a strategy written against the semiring interface, a non-empty sequence.
        own = type(self).coefficients is LRU.coefficients and type(self).readout is LRU.readout
        if not own or not supports_planar(self.method) or x.shape[0] == 0:
            return None
        lam = self.eigenvalues()
        b = planar_projection(*self._input_weights(), x)
        a = jnp.stack([jnp.real(lam), jnp.imag(lam)])
        if a.dtype != b.dtype:
            return None  # mixed dtypes: the generic path checks them and says what is wrong
        h = planar_linear_recurrence(a, b, method=self.method)
        if self.bidirectional:
            h_reverse = planar_linear_recurrence(a, b, reverse=True, method=self.method)
            h = jnp.concatenate([h, h_reverse], axis=-1)
        y = planar_readout(self.C_re, self.C_im, h) + self.D[None] * x
        return y.astype(x.dtype)

    def kernel(self, length: int, *, reverse: bool = False) -> Float[Array, "length input input"]:
        if reverse and not self.bidirectional:
            raise ValueError("LRU.kernel: `reverse=True` needs a bidirectional layer.")
        w_re, w_im = self._input_weights()
        weight = jax.lax.complex(as_working(w_re), as_working(w_im))
        return mimo_kernel(self.eigenvalues(), weight, self._output_matrix(reverse), length)

    def discrete_system(self, *, reverse: bool = False) -> DiscreteDiagonalSystem:
        r"""The LRU as a plain discrete system $(\lambda, \operatorname{diag}(\gamma) B, C, D)$
        with identical outputs.

        For a bidirectional layer, `reverse=True` gives the reverse direction's system (its
        $C_b$, and $D = 0$ so that the two outputs add up to the layer's): the layer's output
        is `fwd(u) + reverse_scan(bwd, u)`.
        """
        if reverse and not self.bidirectional:
            raise ValueError("LRU.discrete_system: `reverse=True` needs a bidirectional layer.")
        w_re, w_im = self._input_weights()
        d = jnp.zeros_like(self.D) if reverse else self.D
        return DiscreteDiagonalSystem(
            self.eigenvalues(),
            jax.lax.complex(as_working(w_re), as_working(w_im)),
            self._output_matrix(reverse),
            d,
            method=self.method,
        )

    @staticmethod
    def from_discrete_system(
        system: DiscreteDiagonalSystem,
        *,
        reverse_C: Complex[Array, "input state"] | None = None,
        gamma_log: Float[Array, " state"] | None = None,
        method: AbstractScan | None = None,
    ) -> "LRU":
        r"""The LRU with the same outputs as a discrete diagonal system (see
        [from continuous SSMs to the LRU](../concepts/ssm-to-lru.md)).

        $\nu = -\log|\bar\lambda|$, $\theta = \arg\bar\lambda$ reduced to $(0, 2\pi]$,
        $B = \operatorname{diag}(\gamma)^{-1}\bar B$, same $C$ and $D$.

        **Arguments:**

        - `system`: a [`recurrax.DiscreteDiagonalSystem`][] with every $|\bar\lambda| < 1$.
        - `reverse_C`: the reverse direction's output matrix `(input, state)`; gives a
            bidirectional LRU.
        - `gamma_log`: the normalisation to store; `None` uses
            $\log\sqrt{1 - |\bar\lambda|^2}$ (the LRU's initial value). Any choice gives the
            same outputs.
        - `method`: the scan strategy of the result.

        **Raises:**

        `ValueError` if some $|\bar\lambda| \ge 1$ (never a silent clamp); under `jax.jit`
        the same check raises through `equinox.error_if`.
        """
        lam = _check_inside_unit_disk(system.lam, "LRU.from_discrete_system")
        real_dtype = jnp.real(lam).dtype
        modulus_sq = jnp.real(lam) ** 2 + jnp.imag(lam) ** 2
        nu = -0.5 * jnp.log(modulus_sq)
        theta = jnp.angle(lam)
        theta = jnp.where(theta <= 0, theta + 2 * jnp.pi, theta)
        if gamma_log is None:
            gamma_log = 0.5 * jnp.log1p(-modulus_sq)
        gamma_log = jnp.asarray(gamma_log).astype(real_dtype)
        b = system.B / jnp.exp(gamma_log).astype(lam.dtype)[:, None]
        c = system.C if reverse_C is None else jnp.concatenate([system.C, reverse_C], axis=1)
        skeleton = LRU(
            system.input_size,
            system.state_size,
            bidirectional=reverse_C is not None,
            method=method,
            dtype=real_dtype,
            key=jax.random.key(0),
        )
        return eqx.tree_at(
            lambda m: (m.nu_log, m.theta_log, m.gamma_log, m.B_re, m.B_im, m.C_re, m.C_im, m.D),
            skeleton,
            (
                jnp.log(nu),
                jnp.log(theta),
                gamma_log,
                jnp.real(b),
                jnp.imag(b),
                jnp.real(c).astype(real_dtype),
                jnp.imag(c).astype(real_dtype),
                system.D.astype(real_dtype),
            ),
        )


def _normalisation(nu_log: Array, dtype) -> Array:
    r"""$\gamma_{\log} = \log\sqrt{1 - |\lambda|^2} = \tfrac12\log(-\operatorname{expm1}(-2\nu))$,
    accurate also for $|\lambda|$ close to 1."""
    nu = jnp.maximum(jnp.exp(nu_log), stability_floor(dtype))
    return 0.5 * jnp.log(-jnp.expm1(-2 * nu))


register_mixer(
    "lru",
    LRU,
    lambda width, hidden, state_size, *, dtype, key, **options: LRU(
        hidden, state_size, dtype=dtype, key=key, **options
    ),
    block="glu",
    summary="the Linear Recurrent Unit (exponential ring parameterisation, γ normalisation)",
    bidirectional=True,
)
