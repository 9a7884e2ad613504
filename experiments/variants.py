r"""Model variants for the ablations and controls of the experiments (not library layers).

- `LRUVariant`: the LRU's ablation ladder (LRU paper, Table "ablations"): the eigenvalue
  parameterisation (`"stable"`: $\exp(-e^{\nu_{\log}} + i e^{\theta_{\log}})$, the LRU's;
  `"exp"`: $\exp(\nu + i\theta)$ with $\nu$ trained directly, which can leave the unit disk;
  `"real-imag"`: $\lambda = a + i b$ trained directly) and γ normalisation on or off.
- `SignedMinGRU`: minGRU with transition values $a_t = 1 - 2 z_t \in (-1, 1)$ and
  $b_t = z_t \tilde h_t$: a sign flip on $z_t \to 1$ makes parity exactly representable
  ($h_t = (-1)^{u_t} h_{t-1}$), the positive control of the state-tracking experiment
  (Grazzi et al., negative eigenvalues for state tracking).

`apply(name, model, key=...)` swaps every block's mixer of a `recurrax.SequenceModel` for the
variant of the same sizes.
"""

import math
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.nn as jnn
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float, PRNGKeyArray

import recurrax
from recurrax import complex_projection, mimo_kernel, real_readout


class LRUVariant(recurrax.AbstractLTILayer):
    """An LRU with another eigenvalue parameterisation and/or without γ normalisation."""

    # As the LRU's: the eigenvalue parameters and B train at lr × lr_factor, no decay.
    recurrent_fields: ClassVar[frozenset[str]] = frozenset({"p1", "p2", "B_re", "B_im"})

    p1: Float[Array, " state"]
    p2: Float[Array, " state"]
    B_re: Float[Array, "state input"]
    B_im: Float[Array, "state input"]
    C_re: Float[Array, "input state"]
    C_im: Float[Array, "input state"]
    D: Float[Array, " input"]
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    parameterisation: Literal["stable", "exp", "real-imag"] = eqx.field(static=True)
    normalise: bool = eqx.field(static=True)
    method: recurrax.AbstractScan | None = None

    def __init__(
        self,
        input_size: int,
        state_size: int,
        *,
        parameterisation: Literal["stable", "exp", "real-imag"] = "stable",
        normalise: bool = True,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        dtype=None,
        key: PRNGKeyArray,
    ):
        if parameterisation not in ("stable", "exp", "real-imag"):
            raise ValueError(f"unknown parameterisation {parameterisation!r}")
        k_ring, k_b, k_c, k_d = jax.random.split(key, 4)
        nu_log, theta_log = recurrax.ring_init(
            state_size, r_min=r_min, r_max=r_max, max_phase=max_phase, dtype=dtype, key=k_ring
        )
        nu, theta = jnp.exp(nu_log), jnp.exp(theta_log)
        if parameterisation == "stable":
            self.p1, self.p2 = nu_log, theta_log
        elif parameterisation == "exp":
            self.p1, self.p2 = -nu, theta  # lambda = exp(p1 + i p2)
        else:
            radius = jnp.exp(-nu)
            self.p1, self.p2 = radius * jnp.cos(theta), radius * jnp.sin(theta)
        dtype = nu_log.dtype
        h, n = input_size, state_size
        b = jax.random.normal(k_b, (2, n, h), dtype) / math.sqrt(2 * h)
        c = jax.random.normal(k_c, (2, h, n), dtype) / math.sqrt(n)
        self.B_re, self.B_im, self.C_re, self.C_im = b[0], b[1], c[0], c[1]
        self.D = jax.random.normal(k_d, (h,), dtype)
        self.input_size, self.state_size = input_size, state_size
        self.parameterisation, self.normalise = parameterisation, normalise
        self.method = None

    @property
    def bidirectional(self) -> bool:
        return False

    def eigenvalues(self) -> Complex[Array, " state"]:
        if self.parameterisation == "stable":
            return jnp.exp(jax.lax.complex(-jnp.exp(self.p1), jnp.exp(self.p2)))
        if self.parameterisation == "exp":
            return jnp.exp(jax.lax.complex(self.p1, self.p2))
        return jax.lax.complex(self.p1, self.p2)

    def _weights(self):
        if not self.normalise:
            return self.B_re, self.B_im
        lam = self.eigenvalues()
        modulus_sq = jnp.real(lam) ** 2 + jnp.imag(lam) ** 2
        # sqrt(1 - |lambda|^2), kept real (0) where the variant left the disk.
        gamma = jnp.sqrt(jnp.maximum(1 - modulus_sq, 0.0))[:, None]
        return gamma * self.B_re, gamma * self.B_im

    def init_state(self) -> Complex[Array, " state"]:
        return jnp.zeros((self.state_size,), jax.lax.complex(self.p1, self.p1).dtype)

    def coefficients(self, x):
        return self.eigenvalues(), complex_projection(*self._weights(), x)

    def readout(self, h, x):
        return real_readout(self.C_re, self.C_im, h) + self.D[None] * x

    def kernel(self, length: int, *, reverse: bool = False):
        w = jax.lax.complex(*self._weights())
        return mimo_kernel(self.eigenvalues(), w, jax.lax.complex(self.C_re, self.C_im), length)


class SignedMinGRU(recurrax.AbstractRecurrentLayer):
    r"""minGRU with signed transitions: $a_t = 1 - 2 z_t \in (-1, 1)$, $b_t = z_t \tilde h_t$."""

    linear_z: eqx.nn.Linear
    linear_h: eqx.nn.Linear
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    method: recurrax.AbstractScan | None = None

    def __init__(self, input_size: int, hidden_size: int, *, dtype=None, key: PRNGKeyArray):
        kz, kh = jax.random.split(key)
        self.linear_z = eqx.nn.Linear(input_size, hidden_size, dtype=dtype, key=kz)
        self.linear_h = eqx.nn.Linear(input_size, hidden_size, dtype=dtype, key=kh)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.method = None

    @property
    def bidirectional(self) -> bool:
        return False

    @property
    def log_space(self) -> bool:
        return False

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def init_state(self) -> Float[Array, " hidden"]:
        return jnp.zeros((self.hidden_size,), self.linear_h.weight.dtype)

    def coefficients(self, x):
        k = x @ self.linear_z.weight.T + self.linear_z.bias[None]
        candidate = x @ self.linear_h.weight.T + self.linear_h.bias[None]
        z = jnn.sigmoid(k)
        return 1 - 2 * z, z * candidate

    def readout(self, h, x):
        return h


VARIANTS = {
    "lru-no-gamma": "the LRU without γ normalisation (γ = 1)",
    "lru-exp": "λ = exp(ν + iθ), ν trained directly (can leave the unit disk), with γ",
    "lru-exp-no-gamma": "λ = exp(ν + iθ) without γ normalisation",
    "lru-real-imag": "λ = a + ib trained directly, without γ normalisation",
    "signed-mingru": "minGRU with transitions a_t = 1 - 2 z_t in (-1, 1)",
}


def _variant_mixer(name: str, mixer, key):
    if name.startswith("lru-"):
        if not isinstance(mixer, recurrax.LRU):
            raise ValueError(f"variant {name!r} needs an LRU model, got {type(mixer).__name__}")
        parameterisation = {"lru-no-gamma": "stable", "lru-exp": "exp"}.get(name)
        parameterisation = parameterisation or ("exp" if "exp" in name else "real-imag")
        return LRUVariant(
            mixer.input_size,
            mixer.state_size,
            parameterisation=parameterisation,
            normalise=name == "lru-exp",
            r_min=mixer.r_min,
            r_max=mixer.r_max,
            max_phase=mixer.max_phase,
            dtype=mixer.nu_log.dtype,
            key=key,
        )
    if name == "signed-mingru":
        if not isinstance(mixer, recurrax.MinGRU):
            raise ValueError(f"variant {name!r} needs a minGRU model, got {type(mixer).__name__}")
        return SignedMinGRU(
            mixer.input_size, mixer.hidden_size, dtype=mixer.linear_h.weight.dtype, key=key
        )
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")


def apply(name: str, model: recurrax.SequenceModel, *, key: PRNGKeyArray):
    """`model` with every block's mixer replaced by the variant `name`."""
    keys = jax.random.split(key, len(model.blocks))
    mixers = tuple(_variant_mixer(name, b.mixer, k) for b, k in zip(model.blocks, keys))
    return eqx.tree_at(lambda m: tuple(b.mixer for b in m.blocks), model, mixers)
