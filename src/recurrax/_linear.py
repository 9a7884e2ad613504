"""An `eqx.nn.Linear` on a whole sequence."""

import equinox as eqx
from jaxtyping import Array


def dense(linear: eqx.nn.Linear, x: Array) -> Array:
    """An `eqx.nn.Linear` applied to every step of `(length, in)` as one matmul."""
    y = x @ linear.weight.T
    return y if linear.bias is None else y + linear.bias[None]
