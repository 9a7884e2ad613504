"""Shared test helpers: the float64 reference, the tolerance helper, strategy lists."""

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import recurrax


# Every strategy, so that a new one is tested by adding it here.
STRATEGIES = [
    recurrax.SequentialScan(),
    recurrax.SequentialScan(unroll=3),
    recurrax.AssociativeScan(),
    recurrax.ChunkedScan(),
    recurrax.ChunkedScan(chunk_size=1),
    recurrax.ChunkedScan(chunk_size=3),
    recurrax.ChunkedScan(chunk_size=16),
    recurrax.AutoScan(),
]
STRATEGY_IDS = [repr(s) for s in STRATEGIES]

# Under CI (without RECURRAX_FULL=1) the long parameter grids run in a covering form.
FULL_GRIDS = bool(os.environ.get("RECURRAX_FULL")) or not os.environ.get("CI")


def grid(*axes):
    """The parameter combinations of a test: every one, or under CI a covering subset in
    which every value of every axis still appears (the axes cycled together, as many cases
    as the longest axis). Each combination compiles anew, so this is what bounds CI time."""
    axes = [list(axis) for axis in axes]
    if FULL_GRIDS:
        return list(itertools.product(*axes))
    return [tuple(axis[i % len(axis)] for axis in axes) for i in range(max(map(len, axes)))]


def every_other(values):
    """`values`, or under CI every other one (the first kept)."""
    return list(values) if FULL_GRIDS else list(values)[::2]


# Small sets so that JAX compiles once per shape, not once per hypothesis example.
LENGTHS = st.sampled_from([1, 2, 3, 7, 16, 33, 300])
STATE_SHAPES = st.sampled_from([(), (1,), (4,), (2, 3)])


def reference_recurrence(a, b, h0=None, reverse=False):
    """h_t = a_t h_{t-1} + b_t as a plain float64 (or complex128) NumPy loop."""
    a = np.asarray(a)
    b = np.asarray(b)
    dtype = np.result_type(a, b, np.float64)
    state = b.shape[1:]
    h = np.zeros(state, dtype) if h0 is None else np.array(h0, dtype)
    out = np.empty(b.shape, dtype)
    steps = range(b.shape[0] - 1, -1, -1) if reverse else range(b.shape[0])
    per_step = a.ndim == b.ndim
    for t in steps:
        h = (a[t] if per_step else a) * h + b[t]
        out[t] = h
    return out


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8):
    """All leaves equal within tolerance (NumPy semantics)."""
    xs, ys = jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)
    if len(xs) != len(ys):
        return False
    return all(
        np.shape(u) == np.shape(v)
        and np.allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)
        for u, v in zip(xs, ys)
    )


def relative_error(x, ref) -> float:
    """max|x - ref| / max(max|ref|, 1e-30)."""
    x = np.asarray(x, np.result_type(np.asarray(x).dtype, np.float64))
    ref = np.asarray(ref)
    return float(
        np.max(np.abs(x - ref), initial=0.0) / max(np.max(np.abs(ref), initial=0.0), 1e-30)
    )


def random_system(rng, length, state, *, complex_, invariant, dtype=np.float64, decay=(0.3, 1.0)):
    """A stable random system: |a| in `decay`, b normal; h0 normal."""
    a_shape = state if invariant else (length, *state)
    radius = rng.uniform(*decay, a_shape)
    if complex_:
        a = radius * np.exp(1j * rng.uniform(0, 2 * np.pi, a_shape))
        b = rng.normal(size=(length, *state)) + 1j * rng.normal(size=(length, *state))
        h0 = rng.normal(size=state) + 1j * rng.normal(size=state)
        cdtype = np.complex64 if dtype == np.float32 else np.complex128
        return a.astype(cdtype), b.astype(cdtype), h0.astype(cdtype)
    a = radius * rng.choice([-1.0, 1.0], a_shape)
    b = rng.normal(size=(length, *state))
    h0 = rng.normal(size=state)
    return a.astype(dtype), b.astype(dtype), h0.astype(dtype)


def to_jax(*xs):
    return tuple(None if x is None else jnp.asarray(x) for x in xs)
