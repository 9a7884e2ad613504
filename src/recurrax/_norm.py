r"""Normalisations over a sequence `(length, features)`: LayerNorm, RMSNorm, BatchNorm.

All three share one call convention so that a block can hold any of them:
`norm(x, state, *, mask=None) -> (y, state)`, where `state` is an `equinox.nn.State` (or
`None` for models without BatchNorm) that only [`recurrax.BatchNorm`][] reads and writes.
Statistics are computed in float32 (or wider) whatever the activation dtype.
"""

import abc

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._checks import check_positive_int
from ._dtypes import as_working, default_float
from ._mixer import check_mask
from ._validate import check_array, check_real_floating


class AbstractNorm(eqx.Module):
    r"""Abstract base class of a sequence normalisation:
    `norm(x, state, *, mask=None) -> (y, state)` for `x` of shape `(length, features)`.

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        norm = recurrax.RMSNorm(4)
        assert isinstance(norm, recurrax.AbstractNorm)
        y, state = norm(jnp.arange(8.0).reshape(2, 4), None)     # (2, 4); the state stays None
        ```
    """

    features: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(
        self,
        x: Float[Array, "length features"],
        state: eqx.nn.State | None,
        *,
        mask: Bool[Array, " length"] | None = None,
    ) -> tuple[Float[Array, "length features"], eqx.nn.State | None]:
        """Normalise `x`; `mask` marks the valid steps (only BatchNorm's statistics use it)."""


def _check_features(owner: str, x, features: int, mask) -> None:
    check_array(owner, "x", x)
    if x.ndim != 2 or x.shape[-1] != features:
        raise ValueError(
            f"{owner}: `x` must have shape (length, {features}), got shape {tuple(x.shape)}."
        )
    check_real_floating(owner, "x", x)
    check_mask(owner, mask, x.shape[0])


def _check_eps(owner: str, eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"{owner}: `eps` must be positive, got eps={eps!r}.")


class LayerNorm(AbstractNorm):
    r"""Layer normalisation at each position:
    $y_t = \frac{x_t - \mu_t}{\sqrt{\sigma_t^2 + \epsilon}} \odot w + b$ with the mean and
    variance over the features of $x_t$.

    **Fields:** `weight`, `bias`: `(features,)` (ones and zeros at first).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        norm = recurrax.LayerNorm(4)
        y, _ = norm(jnp.array([[1.0, 2.0, 3.0, 4.0]]), None)     # (1, 4)
        assert jnp.allclose(y.mean(), 0.0, atol=1e-6)
        ```
    """

    weight: Float[Array, " features"]
    bias: Float[Array, " features"]
    features: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, features: int, *, eps: float = 1e-5, dtype=None):
        """**Raises:** `ValueError` for a non-positive `features` or `eps`."""
        check_positive_int("LayerNorm", "features", features)
        _check_eps("LayerNorm", eps)
        dtype = default_float(dtype)
        self.weight = jnp.ones((features,), dtype)
        self.bias = jnp.zeros((features,), dtype)
        self.features, self.eps = int(features), float(eps)

    def __call__(
        self,
        x: Float[Array, "length features"],
        state: eqx.nn.State | None,
        *,
        mask: Bool[Array, " length"] | None = None,
    ) -> tuple[Float[Array, "length features"], eqx.nn.State | None]:
        """`(y, state)`, `y` of the shape and dtype of `x`; `state` passes through."""
        _check_features("LayerNorm", x, self.features, mask)
        z = as_working(x)
        mean = jnp.mean(z, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(z - mean), axis=-1, keepdims=True)
        y = (z - mean) * lax.rsqrt(var + self.eps)
        y = y * as_working(self.weight)[None] + as_working(self.bias)[None]
        return y.astype(x.dtype), state


class RMSNorm(AbstractNorm):
    r"""Root-mean-square normalisation at each position:
    $y_t = x_t / \sqrt{\tfrac1d \|x_t\|^2 + \epsilon} \odot w$.

    **Fields:** `weight`: `(features,)` (ones at first).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        norm = recurrax.RMSNorm(4)
        y, _ = norm(jnp.full((3, 4), 2.0), None)                 # (3, 4)
        assert jnp.allclose(y, 1.0, atol=1e-5)
        ```
    """

    weight: Float[Array, " features"]
    features: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, features: int, *, eps: float = 1e-6, dtype=None):
        """**Raises:** `ValueError` for a non-positive `features` or `eps`."""
        check_positive_int("RMSNorm", "features", features)
        _check_eps("RMSNorm", eps)
        self.weight = jnp.ones((features,), default_float(dtype))
        self.features, self.eps = int(features), float(eps)

    def __call__(
        self,
        x: Float[Array, "length features"],
        state: eqx.nn.State | None,
        *,
        mask: Bool[Array, " length"] | None = None,
    ) -> tuple[Float[Array, "length features"], eqx.nn.State | None]:
        """`(y, state)`, `y` of the shape and dtype of `x`; `state` passes through."""
        _check_features("RMSNorm", x, self.features, mask)
        z = as_working(x)
        y = z * lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + self.eps)
        return (y * as_working(self.weight)[None]).astype(x.dtype), state


class BatchNorm(AbstractNorm):
    r"""Batch normalisation with statistics over the batch and time (the LRU paper's norm).

    In training mode the mean and variance of each feature are taken over every valid
    step of every sequence of the batch: sums over time inside the example, then
    `jax.lax.psum` over the vmapped batch axis `axis_name`. So call the model under
    `jax.vmap(..., axis_name="batch", in_axes=(0, None), out_axes=(0, None))` (the state is
    shared by the batch). Running averages are kept in an `equinox.nn.State`
    ($m \leftarrow \rho m + (1-\rho)\mu$, the same for the biased variance) and used in
    inference mode (`equinox.nn.inference_mode`), which also serves streaming.

    **Fields:** `weight`, `bias`: `(features,)`; `momentum` $\rho$; `inference`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import recurrax

        norm, state = eqx.nn.make_with_state(recurrax.BatchNorm)(4)
        x = jax.random.normal(jax.random.key(0), (8, 10, 4))     # (batch, length, features)
        batched = jax.vmap(norm, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        y, state = batched(x, state)                             # statistics over batch and time
        y_eval, _ = eqx.nn.inference_mode(norm)(x[0], state)     # the running statistics
        ```
    """

    weight: Float[Array, " features"]
    bias: Float[Array, " features"]
    stats: eqx.nn.StateIndex
    features: int = eqx.field(static=True)
    axis_name: str = eqx.field(static=True)
    momentum: float = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        features: int,
        *,
        axis_name: str = "batch",
        momentum: float = 0.9,
        eps: float = 1e-5,
        inference: bool = False,
        dtype=None,
    ):
        """**Arguments:**

        - `features`: the number of channels.
        - `axis_name`: the name of the vmapped batch axis.
        - `momentum`: $\\rho \\in [0, 1)$ of the running averages.
        - `eps`: added to the variance.
        - `inference`: use the running averages (toggled by `equinox.nn.inference_mode`).
        - `dtype`: of `weight` and `bias`; the statistics are float32 or wider.

        Build models containing it with `equinox.nn.make_with_state`.

        **Raises:** `ValueError` naming a bad `features`, `momentum` or `eps`.
        """
        check_positive_int("BatchNorm", "features", features)
        _check_eps("BatchNorm", eps)
        if not 0 <= momentum < 1:
            raise ValueError(f"BatchNorm: `momentum` must be in [0, 1), got momentum={momentum!r}.")
        dtype = default_float(dtype)
        self.weight = jnp.ones((features,), dtype)
        self.bias = jnp.zeros((features,), dtype)
        stat_dtype = as_working(self.weight).dtype
        self.stats = eqx.nn.StateIndex(
            (jnp.zeros((features,), stat_dtype), jnp.ones((features,), stat_dtype))
        )
        self.features, self.axis_name = int(features), axis_name
        self.momentum, self.eps = float(momentum), float(eps)
        self.inference = bool(inference)

    def _psum(self, value):
        try:
            return lax.psum(value, self.axis_name)
        except NameError:
            raise ValueError(
                f"BatchNorm: the batch axis {self.axis_name!r} is not bound; in training mode "
                f"call the model under jax.vmap(..., axis_name={self.axis_name!r}, "
                f"in_axes=(0, None), out_axes=(0, None)), or switch to inference mode with "
                f"equinox.nn.inference_mode."
            ) from None

    def __call__(
        self,
        x: Float[Array, "length features"],
        state: eqx.nn.State | None,
        *,
        mask: Bool[Array, " length"] | None = None,
    ) -> tuple[Float[Array, "length features"], eqx.nn.State | None]:
        """`(y, state)`: `y` of the shape and dtype of `x`, `state` with updated running
        averages in training mode.

        **Raises:** `ValueError` if `state` is `None` (build the model with
        `equinox.nn.make_with_state` and pass its state) or the batch axis is unbound.
        """
        _check_features("BatchNorm", x, self.features, mask)
        if state is None:
            raise ValueError(
                "BatchNorm: `state` is None; build the model with equinox.nn.make_with_state "
                "(or recurrax.ModelConfig.build) and pass its state."
            )
        z = as_working(x)
        if self.inference:
            mean, var = state.get(self.stats)
        else:
            weights = (
                jnp.ones((x.shape[0], 1), z.dtype)
                if mask is None
                else mask.astype(z.dtype)[:, None]
            )
            count = self._psum(jnp.sum(weights))
            count = jnp.maximum(count, jnp.ones((), z.dtype))
            mean = self._psum(jnp.sum(weights * z, axis=0)) / count
            var = self._psum(jnp.sum(weights * jnp.square(z - mean[None]), axis=0)) / count
            old_mean, old_var = state.get(self.stats)
            rho = self.momentum
            state = state.set(
                self.stats,
                (
                    jax.lax.stop_gradient(rho * old_mean + (1 - rho) * mean),
                    jax.lax.stop_gradient(rho * old_var + (1 - rho) * var),
                ),
            )
        y = (z - mean[None]) * lax.rsqrt(var[None] + self.eps)
        y = y * as_working(self.weight)[None] + as_working(self.bias)[None]
        return y.astype(x.dtype), state
