r"""Normalisation and signal propagation: Prop. 3's expected state norm, the γ-normalised state
variance, and the forward variance through a deep stack (LRU paper §3.4)."""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from ._result import Check, CheckResult
from ._util import default_float, new_figure


FAMILY = "normalisation"
SOURCE = "LRU paper §3.4 (normalisation, Prop. 3)"


def normalised_lru(input_size: int, state_size: int) -> Callable:
    """A factory `(r_min, r_max, key) -> recurrax.LRU` (γ-normalised, as initialised)."""

    def make(r_min, r_max, key):
        return recurrax.LRU(
            input_size, state_size, r_min=r_min, r_max=r_max, dtype=default_float(), key=key
        )

    return make


def unnormalised(layer: recurrax.LRU) -> recurrax.LRU:
    r"""The same LRU with $\gamma = 1$ (`gamma_log` set to 0)."""
    return eqx.tree_at(lambda m: m.gamma_log, layer, jnp.zeros_like(layer.gamma_log))


def unnormalised_lru(input_size: int, state_size: int) -> Callable:
    """A factory `(r_min, r_max, key) -> recurrax.LRU` with γ = 1."""
    make = normalised_lru(input_size, state_size)
    return lambda r_min, r_max, key: unnormalised(make(r_min, r_max, key))


def prop3_gain(r_min: float, r_max: float) -> float:
    r"""Prop. 3: $\mathbb{E}\|x_\infty\|^2 / \mathbb{E}\|Bu\|^2 =
    \log\frac{1 - r_{\min}^2}{1 - r_{\max}^2} / (r_{\max}^2 - r_{\min}^2)$ for white noise and
    ring initialisation."""
    return math.log((1 - r_min**2) / (1 - r_max**2)) / (r_max**2 - r_min**2)


@eqx.filter_jit
def _chunk(layer, h, key, length):
    """A chunk of white-noise inputs from the carried states `h` (batch, state): the new
    states, and the sums over time of |x_j|^2 and |(Bu)_j|^2 per sequence."""
    batch = h.shape[0]
    dtype = layer.B_re.dtype
    u = jax.random.normal(key, (batch, length, layer.input_size), dtype)

    def one(h0, u_seq):
        a, b = layer.coefficients(u_seq)
        xs = recurrax.linear_recurrence(a, b, h0)
        bu = jax.lax.complex(u_seq @ layer.B_re.T, u_seq @ layer.B_im.T)
        return xs[-1], jnp.sum(jnp.abs(xs) ** 2, axis=0), jnp.sum(jnp.abs(bu) ** 2, axis=0)

    return jax.vmap(one)(h, u)


def _canonical(layer):
    """An LRU with the initialisation-only hyper-parameters (ring, phase) reset, so that
    layers made for different rings share one compilation."""
    if not isinstance(layer, recurrax.LRU):
        return layer
    skeleton = recurrax.LRU(
        layer.input_size,
        layer.state_size,
        bidirectional=layer.bidirectional,
        method=layer.method,
        dtype=layer.nu_log.dtype,
        key=jax.random.key(0),
    )
    return jax.tree.unflatten(jax.tree.structure(skeleton), jax.tree.leaves(layer))


def state_moments(layer: recurrax.LRU, *, burn, window, batch, seed, chunk=None):
    r"""Monte Carlo per-state second moments under white-noise input $u \sim N(0, I)$:
    $\mathbb{E}|x_j|^2$ (states computed by the layer's `coefficients` and
    [`recurrax.linear_recurrence`][], from zero, after `burn` steps, averaged over `window`
    steps and `batch` sequences) and $\mathbb{E}|(Bu)_j|^2$ over the same inputs, with the
    paper's $B$ (without $\gamma$). Returns two float64 arrays `(state,)`."""
    n = layer.state_size
    layer = _canonical(layer)
    if chunk is None:
        chunk = int(np.clip(2**21 // (batch * n), 32, 2048))
    h = jnp.zeros((batch, n), layer.init_state().dtype)
    sum_x, sum_bu, counted, step = np.zeros(n), np.zeros(n), 0, 0
    key = jax.random.key(seed)
    while step < burn + window:
        h, sx, sbu = _chunk(layer, h, jax.random.fold_in(key, step), chunk)
        step += chunk
        if step > burn:
            sum_x += np.asarray(sx, np.float64).sum(axis=0)
            sum_bu += np.asarray(sbu, np.float64).sum(axis=0)
            counted += chunk * batch
    return sum_x / counted, sum_bu / counted


def _burn(r_max: float) -> int:
    """Steps until a state with |λ| = r_max has forgotten its start to e^-8."""
    return int(math.ceil(4.0 / (1.0 - r_max)))


# -- Prop. 3 ----------------------------------------------------------------------------------

PROP3_CLAIM = (
    "Prop. 3: for white-noise input and ring initialisation, an unnormalised LRU has "
    "E||x_inf||^2 = log((1 - r_min^2)/(1 - r_max^2)) / (r_max^2 - r_min^2) * E||Bu||^2."
)


def check_prop3(
    make_layer: Callable | None = None,
    *,
    rings=((0.0, 0.9), (0.0, 0.99), (0.9, 0.999)),
    state_size=16384,
    input_size=16,
    batch=2,
    window=None,
    tolerance=0.1,
    seed=0,
    name="prop3_state_norm",
    plot=True,
) -> CheckResult:
    r"""Monte Carlo $\mathbb{E}\|x_\infty\|^2 / \mathbb{E}\|Bu\|^2$ of the layer against
    Prop. 3's gain, for each ring.

    **Arguments:** `make_layer(r_min, r_max, key) -> LRU` (default: unnormalised, $\gamma = 1$);
    `window`: measured steps after the burn-in (default: as long as the burn-in, at least
    1024).

    **Statistic:** the largest relative error $|\text{MC}/\text{Prop. 3} - 1|$ over the rings.
    """
    make_layer = unnormalised_lru(input_size, state_size) if make_layer is None else make_layer
    per_ring, errors, points = {}, [], []
    for i, (r_min, r_max) in enumerate(rings):
        layer = make_layer(r_min, r_max, jax.random.fold_in(jax.random.key(seed), i))
        burn = _burn(r_max)
        steps = max(burn, 1024) if window is None else window
        x2, bu2 = state_moments(layer, burn=burn, window=steps, batch=batch, seed=seed + 1 + i)
        measured = float(np.sum(x2) / np.sum(bu2))
        predicted = prop3_gain(r_min, r_max)
        modulus_sq = np.abs(np.asarray(layer.eigenvalues()).astype(np.complex128)) ** 2
        sampled = float(np.sum(bu2 / (1 - modulus_sq)) / np.sum(bu2))
        error = abs(measured / predicted - 1)
        errors.append(error)
        weighted = bu2 / (1 - modulus_sq)
        sampling = float(np.std(weighted) / np.mean(bu2) / np.sqrt(weighted.size) / predicted)
        points.append((r_min, r_max, measured))
        per_ring[f"[{r_min}, {r_max}]"] = {
            "Monte Carlo E||x||^2 / E||Bu||^2": measured,
            "Prop. 3": predicted,
            "relative error": error,
            "per-eigenvalue formula for these draws": sampled,
            "relative standard error from drawing the eigenvalues": sampling,
            "burn-in, window (steps)": [burn, steps],
        }
    details = {"states": state_size, "inputs": input_size, "sequences": batch, "rings": per_ring}
    figures = [_prop3_figure(points)] if plot else []
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=PROP3_CLAIM,
        source=SOURCE,
        statistic_name="max |MC / Prop. 3 - 1|",
        statistic=max(errors),
        threshold=tolerance,
        comparison="<=",
        details=details,
        figures=figures,
    )


def _prop3_figure(points):
    figure, ax = new_figure(width=6.0)
    for r_min in sorted({p[0] for p in points}):
        r = np.linspace(r_min + 1e-3, 0.9999, 400)
        gain = [prop3_gain(r_min, x) for x in r]
        ax.plot(1 / (1 - r**2), gain, label=f"Prop. 3, r_min = {r_min}")
    for r_min, r_max, measured in points:
        ax.scatter(1 / (1 - r_max**2), measured, color="red", zorder=3)
    ax.scatter([], [], color="red", label="Monte Carlo")
    ax.set_xscale("log")
    ax.set_xlabel("1 / (1 − r_max²)")
    ax.set_ylabel("E‖x‖² / E‖Bu‖²")
    ax.set_title("Unnormalised LRU: state norm against Prop. 3")
    ax.legend(fontsize=8)
    return figure


# -- γ-normalised state variance ------------------------------------------------------------

VARIANCE_CLAIM = (
    "With gamma = sqrt(1 - |lambda|^2) the state variance equals the input's for white noise: "
    "E|x_j|^2 / E|(Bu)_j|^2 = 1 for every eigenvalue, at every r_max < 1."
)


def check_normalised_variance(
    make_layer: Callable | None = None,
    *,
    r_maxes=(0.5, 0.9, 0.99, 0.999),
    state_size=256,
    input_size=4,
    batch=16,
    window=None,
    tolerance=0.05,
    seed=0,
    name="normalised_state_variance",
    plot=True,
) -> CheckResult:
    r"""Per-eigenvalue Monte Carlo ratio $\mathbb{E}|x_j|^2 / \mathbb{E}|(Bu)_j|^2$ for rings
    $[1 - 2(1 - r_{\max}), r_{\max}]$ (eigenvalues near $r_{\max}$), run for many time
    constants ($4/(1 - r_{\max})$ steps of burn-in, then a window at least as long).

    **Arguments:** `make_layer(r_min, r_max, key) -> LRU` (default: the LRU as initialised).

    **Statistic:** the largest $|\text{mean}_j\,\text{ratio}_j - 1|$ over the rings.
    """
    make_layer = normalised_lru(input_size, state_size) if make_layer is None else make_layer
    per_ring, errors, curves = {}, [], []
    for i, r_max in enumerate(r_maxes):
        r_min = max(0.0, 1.0 - 2.0 * (1.0 - r_max))
        layer = make_layer(r_min, r_max, jax.random.fold_in(jax.random.key(seed), i))
        burn = _burn(r_max)
        steps = max(burn, 2048) if window is None else window
        x2, bu2 = state_moments(layer, burn=burn, window=steps, batch=batch, seed=seed + 1 + i)
        ratio = x2 / bu2
        modulus = np.abs(np.asarray(layer.eigenvalues()).astype(np.complex128))
        error = abs(float(np.mean(ratio)) - 1)
        errors.append(error)
        curves.append((r_max, modulus, ratio))
        per_ring[f"r_max = {r_max}"] = {
            "ring": [r_min, r_max],
            "mean ratio": float(np.mean(ratio)),
            "min, max ratio": [float(np.min(ratio)), float(np.max(ratio))],
            "unnormalised mean gain 1/(1 - |lambda|^2)": float(np.mean(1 / (1 - modulus**2))),
            "burn-in, window (steps)": [burn, steps],
        }
    details = {"states": state_size, "inputs": input_size, "sequences": batch, "rings": per_ring}
    figures = []
    if plot:
        figure, ax = new_figure(width=6.5)
        for r_max, modulus, ratio in curves:
            ax.scatter(1 / (1 - modulus), ratio, s=5, label=f"r_max = {r_max}")
        grid = np.geomspace(1.0, max(1 / (1 - c[1]).max() for c in curves), 200)
        r = 1 - 1 / grid
        ax.plot(grid, 1 / (1 - r**2), "k--", lw=1, label="unnormalised: 1/(1 − |λ|²)")
        ax.axhline(1.0, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("1 / (1 − |λ_j|)")
        ax.set_ylabel("E|x_j|² / E|(Bu)_j|²")
        ax.set_title("γ-normalised LRU: state variance per eigenvalue")
        ax.legend(fontsize=8)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=VARIANCE_CLAIM,
        source=SOURCE,
        statistic_name="max |mean_j E|x_j|^2/E|(Bu)_j|^2 - 1|",
        statistic=max(errors),
        threshold=tolerance,
        comparison="<=",
        details=details,
        figures=figures,
    )


# -- deep stack -------------------------------------------------------------------------------

STACK_CLAIM = (
    "At initialisation, a deep stack of gamma-normalised LRU recurrent paths (y = Re(Cx), "
    "D = 0, no skips or norms) keeps the output variance O(1): within a factor 10 of the "
    "input's at every depth; unnormalised it grows like (Prop. 3 gain)^depth."
)


def stack_layer(width: int, state_size: int, ring=(0.9, 0.999), *, normalise=True) -> Callable:
    """A factory `key -> LRU` for the deep-stack check: the recurrent path only (`D = 0`),
    γ-normalised or not."""

    def make(key):
        layer = recurrax.LRU(
            width, state_size, r_min=ring[0], r_max=ring[1], dtype=default_float(), key=key
        )
        layer = eqx.tree_at(lambda m: m.D, layer, jnp.zeros_like(layer.D))
        return layer if normalise else unnormalised(layer)

    return make


@eqx.filter_jit
def _apply(layer, x):
    return jax.vmap(layer)(x)


def _stack_variances(make_layer, depth, x, key):
    variances, z = [], x
    for k in jax.random.split(key, depth):
        z = _apply(make_layer(k), z)
        variances.append(float(jnp.mean(z[:, z.shape[1] // 2 :] ** 2)))
    return variances


def check_deep_stack_variance(
    make_layer: Callable | None = None,
    *,
    depth=16,
    width=32,
    state_size=64,
    length=2048,
    batch=4,
    decades=1.0,
    contrast=True,
    seed=0,
    name="deep_stack_variance",
    plot=True,
) -> CheckResult:
    r"""Propagate white noise through `depth` freshly initialised layers and record the
    output variance after each (over the second half of the sequence).

    **Arguments:** `make_layer(key) -> layer` mapping `width` features to `width` (default:
    γ-normalised LRU paths with the sCIFAR ring [0.9, 0.999]); `contrast`: also run the
    unnormalised stack for the figure and the details.

    **Statistic:** $\max_d |\log_{10}(\mathrm{Var}_d / \mathrm{Var}_0)|$, within `decades`.
    """
    make_layer = stack_layer(width, state_size) if make_layer is None else make_layer
    k_x, k_layers = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k_x, (batch, length, width), default_float())
    base = float(jnp.mean(x**2))
    variances = _stack_variances(make_layer, depth, x, k_layers)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log10(np.asarray(variances) / base)
    statistic = float(np.max(np.abs(log_ratio))) if np.all(np.isfinite(log_ratio)) else math.inf
    details = {
        "depth": depth,
        "width, states": [width, state_size],
        "log10 variance ratio per depth": [float(v) for v in log_ratio],
    }
    reference = None
    if contrast:
        unnormalised_stack = stack_layer(width, state_size, normalise=False)
        reference = np.log10(np.asarray(_stack_variances(unnormalised_stack, depth, x, k_layers)))
        details["unnormalised: log10 variance ratio per depth"] = [float(v) for v in reference]
    figures = []
    if plot:
        figure, ax = new_figure(width=6.0)
        depths = np.arange(1, depth + 1)
        ax.plot(depths, log_ratio, "o-", label="checked stack")
        if reference is not None:
            ax.plot(depths, reference, "s--", label="unnormalised LRU stack (γ = 1)")
        ax.axhspan(-decades, decades, color="green", alpha=0.1, label="claimed band")
        ax.set_xlabel("depth")
        ax.set_ylabel("log10(output variance / input variance)")
        ax.set_title("Forward variance through a deep stack at initialisation")
        ax.legend(fontsize=8)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=STACK_CLAIM,
        source=SOURCE,
        statistic_name="max_d |log10(Var_d / Var_0)|",
        statistic=statistic,
        threshold=decades,
        comparison="<=",
        details=details,
        figures=figures,
    )


# -- the command line's checks ---------------------------------------------------------------

CHECKS: tuple[Check, ...] = (
    Check(
        "prop3_state_norm",
        FAMILY,
        PROP3_CLAIM,
        SOURCE,
        lambda quick, seed: check_prop3(
            rings=((0.0, 0.9), (0.0, 0.99)) if quick else ((0.0, 0.9), (0.0, 0.99), (0.9, 0.999)),
            batch=2 if quick else 4,
            seed=seed,
        ),
    ),
    Check(
        "normalised_state_variance",
        FAMILY,
        VARIANCE_CLAIM,
        SOURCE,
        lambda quick, seed: check_normalised_variance(
            state_size=128 if quick else 256, batch=16, seed=seed
        ),
    ),
    Check(
        "deep_stack_variance",
        FAMILY,
        STACK_CLAIM,
        SOURCE,
        lambda quick, seed: check_deep_stack_variance(
            depth=6 if quick else 16, length=512 if quick else 2048, seed=seed
        ),
    ),
)
