"""Dtype helpers that do not rely on implicit promotion (tests run with strict promotion)."""

import jax.numpy as jnp
import numpy as np


def complex_dtype(dtype) -> np.dtype:
    """The complex dtype matching a real (or complex) dtype: float64 -> complex128, any other
    real dtype -> complex64."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return dtype
    return np.dtype(np.complex128) if dtype == np.dtype(np.float64) else np.dtype(np.complex64)


def default_float(dtype=None) -> np.dtype:
    """`dtype` as a NumPy dtype, or JAX's default floating dtype when `None`."""
    return np.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype


def working_dtype(dtype) -> np.dtype:
    """The dtype a recurrence is accumulated in: float16/bfloat16 -> float32, every other
    dtype (float32, float64, complex) unchanged."""
    dtype = np.dtype(dtype)
    if dtype in (np.dtype(jnp.float16), np.dtype(jnp.bfloat16)):
        return np.dtype(jnp.float32)
    return dtype


def as_working(x):
    """`x` in its working dtype (a float16/bfloat16 parameter used at float32 precision)."""
    return x.astype(working_dtype(x.dtype))
