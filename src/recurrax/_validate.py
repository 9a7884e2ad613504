"""Argument checks shared by the public entry points: layers, blocks, models and the engine.

Every check runs at trace time on shapes, dtypes and Python values, so it costs nothing in
compiled code, and raises a `ValueError` whose message names the argument and shows the bad
value.
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def check_real_floating(owner: str, name: str, x) -> None:
    """A `ValueError` naming `name` and its dtype unless `x` is a real floating array.

    Integer, boolean or complex features would otherwise flow through the layers and come
    out cast to their dtype (an integer input gave integer outputs)."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{owner}: `{name}` must have a real floating dtype (float16, bfloat16, float32 or "
            f"float64), got dtype {dtype}; convert it first, e.g. `{name}.astype(jnp.float32)`."
        )


def check_bool(owner: str, name: str, value) -> None:
    """A `ValueError` naming `name` unless `value` is a Python or NumPy bool (a string such
    as `"no"` is truthy and would silently mean `True`)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: `{name}` must be a bool, got {name}={value!r:.80}.")


def check_real(owner: str, name: str, value) -> float:
    """`value` as a float; a `ValueError` naming `name` unless it is a real number (not a
    bool, not a string such as `"0.9"`)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: `{name}` must be a real number, got {name}={value!r:.80}.")
    return float(value)


def _describe(tree) -> str:
    def leaf(x):
        try:
            return f"{jnp.result_type(x)}{list(np.shape(x))}"
        except TypeError:
            return type(x).__name__

    return str(jax.tree.map(leaf, tree)).replace("'", "")


def check_state(owner: str, name: str, h, expected) -> None:
    """A `ValueError` naming the state `name` unless `h` has the pytree structure and the leaf
    shapes of `expected` (a pytree of `jax.ShapeDtypeStruct`, e.g. from
    `jax.eval_shape(layer.init_state)`) and floating or complex leaves."""
    want = f"the structure and shapes of init_state(), {_describe(expected)}"
    if jax.tree.structure(h) != jax.tree.structure(expected):
        raise ValueError(f"{owner}: the state `{name}` must have {want}; got {_describe(h)}.")
    for got, ref in zip(jax.tree.leaves(h), jax.tree.leaves(expected)):
        try:
            shape, dtype = tuple(np.shape(got)), jnp.result_type(got)
        except TypeError:
            raise ValueError(
                f"{owner}: the state `{name}` must hold arrays, got a {type(got).__name__}."
            ) from None
        if shape != tuple(ref.shape) or not jnp.issubdtype(dtype, jnp.inexact):
            raise ValueError(
                f"{owner}: the state `{name}` must have {want} (floating), got {_describe(h)}."
            )


def check_array(owner: str, name: str, x) -> None:
    """A `ValueError` naming `name` unless `x` is a JAX or NumPy array (a list or a scalar
    has no time axis to read)."""
    if not isinstance(x, (jax.Array, np.ndarray)):
        raise ValueError(
            f"{owner}: `{name}` must be a JAX or NumPy array, got a {type(x).__name__}."
        )
