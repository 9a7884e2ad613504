"""Small helpers shared by the checks: float64, tolerances, errors, layers, figures."""

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from ._result import CheckResult


def require_x64(owner: str) -> None:
    """Raise unless JAX's float64 is enabled (the check computes in float64)."""
    if not jax.config.jax_enable_x64:
        raise ValueError(
            f"{owner}: this check computes in float64; enable it first with "
            f"jax.config.update('jax_enable_x64', True) (python -m proofs does)."
        )


def default_float():
    """JAX's default floating dtype (float64 when x64 is enabled)."""
    return jnp.zeros(()).dtype


def tolerance_for(dtype) -> float:
    """The default relative tolerance of an equivalence: 1e-9 in float64, 1e-4 otherwise."""
    real = np.finfo(np.dtype(dtype)).dtype
    return 1e-9 if real == np.dtype(np.float64) else 1e-4


def relative_error(x, ref) -> float:
    """max|x - ref| / max|ref| in float64: NaN if either is not finite, infinite if the shapes
    differ."""
    x = np.asarray(x).astype(np.result_type(np.asarray(x).dtype, np.float64))
    ref = np.asarray(ref).astype(np.result_type(np.asarray(ref).dtype, np.float64))
    if x.shape != ref.shape:
        return math.inf  # different shapes are never equal
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(ref))):
        return math.nan
    scale = max(float(np.max(np.abs(ref), initial=0.0)), 1e-300)
    return float(np.max(np.abs(x - ref), initial=0.0)) / scale


def as_sequence(items) -> list:
    """One object or a sequence of them, as a list."""
    if isinstance(items, Sequence) and not isinstance(items, (str, eqx.Module)):
        return list(items)
    return [items]


def label(layer) -> str:
    """A short readable name for a layer or model, e.g. `DiagonalSSM(per_feature, Bilinear)`."""
    name = type(layer).__name__
    parts = []
    if isinstance(layer, recurrax.DiagonalSSM):
        parts += [layer.delta, type(layer.discretisation).__name__]
        if not layer.conjugate_symmetric:
            parts.append("full")
    if isinstance(layer, (recurrax.MinGRU, recurrax.MinLSTM)):
        parts += [
            "log space" if layer.log_space else "linear space",
            f"candidate {layer.candidate}",
        ]
    if getattr(layer, "bidirectional", False) and not isinstance(layer, recurrax.SequenceModel):
        parts.append("bidirectional")
    if isinstance(layer, recurrax.SequenceModel):
        mixers = sorted({type(block.mixer).__name__ for block in layer.blocks})
        parts += ["+".join(mixers), f"depth {len(layer.blocks)}"]
    leaves = [x for x in jax.tree.leaves(layer) if eqx.is_inexact_array(x)]
    if leaves:
        parts.append(str(np.finfo(leaves[0].dtype).dtype))
    return f"{name}({', '.join(parts)})" if parts else name


def layer_dtype(layer):
    """The real dtype of a layer's (first) floating parameter."""
    for leaf in jax.tree.leaves(layer):
        if eqx.is_inexact_array(leaf):
            return np.finfo(leaf.dtype).dtype
    return np.dtype(default_float())


def with_method(layer, method):
    """`layer` with its scan strategy replaced by `method`."""
    return eqx.tree_at(lambda m: m.method, layer, method, is_leaf=lambda x: x is None)


def random_state(layer, key):
    """A random state shaped like `layer.init_state()`: complex normal for complex states,
    uniform in (0.1, 2) for real ones (positive, as a log-space layer needs)."""
    like = layer.init_state()
    if jnp.iscomplexobj(like):
        real = np.finfo(like.dtype).dtype
        parts = jax.random.normal(key, (2, *like.shape), real)
        return jax.lax.complex(parts[0], parts[1])
    return jax.random.uniform(key, like.shape, like.dtype, minval=0.1, maxval=2.0)


def new_figure(ncols: int = 1, *, width: float = 5.0, height: float = 4.0):
    """A matplotlib figure (no pyplot, no GUI backend) and its axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = figure.subplots(1, ncols)
    return figure, axes


def draw_unit_circle(ax) -> None:
    """The unit circle and the axes, equal aspect."""
    t = np.linspace(0.0, 2 * np.pi, 721)
    ax.plot(np.cos(t), np.sin(t), color="black", lw=1.0, label="unit circle")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.axvline(0.0, color="grey", lw=0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")


def ecdf(values):
    """Sorted values and their empirical CDF."""
    values = np.sort(np.asarray(values, np.float64))
    return values, np.arange(1, values.size + 1) / values.size


def worst_case(
    *,
    name,
    family,
    claim,
    source,
    errors,
    tolerances,
    details,
    figures=None,
    statistic_name="max relative error",
) -> CheckResult:
    """A result from per-case relative errors and tolerances. With one tolerance the
    statistic is the largest error; with several (mixed dtypes) it is the largest
    error/tolerance ratio, against 1. A NaN error fails."""
    errors = [float(e) for e in errors]
    details = {**details, statistic_name: max(errors, default=math.nan)}
    if any(math.isnan(e) for e in errors):
        statistic = math.nan
    elif len(set(tolerances)) == 1:
        statistic = max(errors)
    else:
        statistic = max(e / t for e, t in zip(errors, tolerances))
    single = len(set(tolerances)) == 1
    return CheckResult.measured(
        name=name,
        family=family,
        claim=claim,
        source=source,
        statistic_name=statistic_name if single else f"{statistic_name} / tolerance",
        statistic=statistic,
        threshold=tolerances[0] if single else 1.0,
        comparison="<=",
        details=details,
        figures=figures,
    )
