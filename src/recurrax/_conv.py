r"""A causal depthwise convolution over time with the streaming convention of the mixers: the
short convolution in front of the mixer of the minRNN and Hawk blocks."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._checks import check_positive_int
from ._dtypes import default_float
from ._mixer import check_mask, check_resets, zero_masked
from ._validate import check_array, check_real_floating, check_state


class CausalDepthwiseConv(eqx.Module):
    r"""A causal depthwise convolution over time,
    $y_t = b + \sum_{j=0}^{k-1} w_j \odot x_{t-j}$ (each feature its own filter; $x_{t<0} = 0$).

    Streaming keeps the last $k - 1$ inputs as state, so `scan` in pieces and `step` give
    the one-call result. Masked steps are skipped (as if absent): the filter sees the
    previous valid inputs. With `resets` (segment starts of a packed sequence) the history
    restarts at each segment: inputs of earlier segments count as zeros.

    **Fields:** `weight` `(kernel_size, features)` ($w_j$ is row $j$), `bias` `(features,)`.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        conv = recurrax.CausalDepthwiseConv(4, kernel_size=3, key=jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (10, 4))
        y = conv(x)                                              # (10, 4)
        h, first = conv.scan(conv.init_state(), x[:6])           # the last 2 inputs as state ...
        _, rest = conv.scan(h, x[6:])                            # ... carried into the next piece
        assert jnp.allclose(jnp.concatenate([first, rest]), y, atol=1e-6)
        ```
    """

    weight: Float[Array, "kernel features"]
    bias: Float[Array, " features"]
    features: int = eqx.field(static=True)
    kernel_size: int = eqx.field(static=True)

    def __init__(self, features: int, kernel_size: int = 4, *, dtype=None, key: PRNGKeyArray):
        """Uniform $\\pm 1/\\sqrt{k}$ initialisation (PyTorch's for a depthwise conv).

        **Raises:** `ValueError` for non-positive sizes."""
        check_positive_int("CausalDepthwiseConv", "features", features)
        check_positive_int("CausalDepthwiseConv", "kernel_size", kernel_size)
        dtype = default_float(dtype)
        bound = 1 / math.sqrt(kernel_size)
        kw, kb = jax.random.split(key)
        self.weight = jax.random.uniform(kw, (kernel_size, features), dtype, -bound, bound)
        self.bias = jax.random.uniform(kb, (features,), dtype, -bound, bound)
        self.features, self.kernel_size = int(features), int(kernel_size)

    def init_state(self) -> Float[Array, "history features"]:
        """The last $k - 1$ inputs, zeros: `(kernel_size - 1, features)`."""
        return jnp.zeros((self.kernel_size - 1, self.features), self.weight.dtype)

    def scan(
        self,
        h: Float[Array, "history features"],
        x: Float[Array, "length features"],
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
    ) -> tuple[Float[Array, "history features"], Float[Array, "length features"]]:
        """`(h_last, y)` from the carried history `h` (oldest first); masked steps are
        skipped and output zeros; at each segment start of `resets` the history is zeros
        (and `h_last` keeps only the last segment's inputs)."""
        check_array("CausalDepthwiseConv", "x", x)
        length = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(
                f"CausalDepthwiseConv: `x` must have shape (length, {self.features}), got "
                f"shape {tuple(x.shape)}."
            )
        check_real_floating("CausalDepthwiseConv", "x", x)
        check_state("CausalDepthwiseConv", "h", h, jax.eval_shape(self.init_state))
        check_mask("CausalDepthwiseConv", mask, length)
        check_resets("CausalDepthwiseConv", resets, length)
        h = h.astype(x.dtype)
        if resets is not None:
            # The segment of every step: the carried history is segment 0.
            segment = jnp.cumsum(resets.astype(jnp.int32), dtype=jnp.int32)
        if mask is not None:
            # Valid steps first, in order: the filter runs over the valid inputs only.
            order = jnp.argsort(jnp.logical_not(mask), stable=True)
            x = x[order]
            if resets is not None:
                segment = segment[order]
        k = self.kernel_size
        full = jnp.concatenate([h, x], axis=0)
        if resets is None:
            taps = [full[k - 1 - j : k - 1 - j + length] for j in range(k)]
        else:
            seg_full = jnp.concatenate([jnp.zeros((k - 1,), jnp.int32), segment])
            same = [seg_full[k - 1 - j : k - 1 - j + length] == segment for j in range(k)]
            taps = [
                jnp.where(same[j][:, None], full[k - 1 - j : k - 1 - j + length], 0)
                for j in range(k)
            ]
        y = self.bias[None] + sum(self.weight[j][None] * taps[j] for j in range(k))
        if mask is None:
            h_last = full[length:]
            if resets is not None:
                h_seg = seg_full[length:]
        else:
            valid = jnp.sum(mask.astype(jnp.int32))
            h_last = jax.lax.dynamic_slice_in_dim(full, valid, k - 1, axis=0)
            if resets is not None:
                h_seg = jax.lax.dynamic_slice_in_dim(seg_full, valid, k - 1, axis=0)
            rank = jnp.cumsum(mask.astype(jnp.int32)) - 1
            y = zero_masked(y[jnp.maximum(rank, 0)], mask)
        if resets is not None:
            # Only the current (last) segment's inputs are history for the next call.
            current = jnp.sum(resets.astype(jnp.int32), dtype=jnp.int32)
            h_last = jnp.where((h_seg == current)[:, None], h_last, 0)
        return h_last, y

    def __call__(
        self,
        x: Float[Array, "length features"],
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
    ) -> Float[Array, "length features"]:
        """The outputs from a zero history, `(length, features)`; with `resets`, from a zero
        history at every segment start."""
        return self.scan(self.init_state(), x, mask=mask, resets=resets)[1]
