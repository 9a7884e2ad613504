r"""Parameterisations of the eigenvalues: the stable exponential stays in the unit disk, its
floating-point edge, and the plain exponential and Re + Im leaving the disk (LRU paper
§3.3 and its ablations)."""

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import recurrax

from ._result import Check, CheckResult
from ._util import default_float, new_figure, require_x64


FAMILY = "parameterisation"
SOURCE_PARAM = "LRU paper §3.3 (stable exponential parameterisation)"
_SWEEP = 1200  # points of the margin-against-nu_log curves drawn in the figures
_NO_PHASE = -1e4  # theta_log giving theta = 0 exactly: cos and sin add no rounding


# -- parameterisations ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Parameterisation:
    r"""A way of writing a complex eigenvalue with two real parameters.

    - `to_eigenvalue(p, q) -> λ`: elementwise, complex in the dtype matching `p`.
    - `from_eigenvalue(λ) -> (p, q)`: the parameters of eigenvalues inside the unit disk.
    - `label`: a short name for figures (default: `name`).
    """

    name: str
    to_eigenvalue: Callable
    from_eigenvalue: Callable
    label: str = ""

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name)


def _stable_to(nu_log, theta_log):
    return jnp.exp(jax.lax.complex(-jnp.exp(nu_log), jnp.exp(theta_log)))


def _stable_from(lam):
    nu = -jnp.log(jnp.abs(lam))
    theta = jnp.angle(lam)
    theta = jnp.where(theta <= 0, theta + 2 * jnp.pi, theta)
    return jnp.log(nu), jnp.log(theta)


def _lru_to(nu_log, theta_log):
    """The eigenvalues an `recurrax.LRU` computes from these parameters (with its floor)."""
    nu_log, theta_log = jnp.asarray(nu_log), jnp.asarray(theta_log)
    shape = nu_log.shape
    size = max(int(np.prod(shape)), 1)
    lru = recurrax.LRU(1, size, dtype=nu_log.dtype, key=jax.random.key(0))
    lru = eqx.tree_at(
        lambda m: (m.nu_log, m.theta_log),
        lru,
        (nu_log.reshape(size), theta_log.reshape(size).astype(nu_log.dtype)),
    )
    return lru.eigenvalues().reshape(shape)


STABLE_EXPONENTIAL = Parameterisation(
    "stable exponential exp(-exp(nu_log) + i exp(theta_log)), computed naively",
    _stable_to,
    _stable_from,
    "exp(−e^ν_log + i e^θ_log), naive",
)
LRU_EIGENVALUES = Parameterisation(
    "recurrax.LRU.eigenvalues (stable exponential, nu floored at stability_floor)",
    _lru_to,
    _stable_from,
    "LRU.eigenvalues (floored)",
)
PLAIN_EXPONENTIAL = Parameterisation(
    "exponential exp(nu + i theta)",
    lambda nu, theta: jnp.exp(jax.lax.complex(nu, theta)),
    lambda lam: (jnp.log(jnp.abs(lam)), jnp.angle(lam)),
    "exp(ν + iθ)",
)
REAL_IMAGINARY = Parameterisation(
    "real and imaginary parts a + i b",
    jax.lax.complex,
    lambda lam: (jnp.real(lam), jnp.imag(lam)),
    "a + ib",
)


def _modulus(lam) -> np.ndarray:
    return np.abs(np.asarray(lam).astype(np.complex128))


def _check_dtype(owner, dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{owner}: `dtypes` must be float32 or float64, got {dtype}.")
    if dtype == np.dtype(np.float64):
        require_x64(owner)
    return dtype


def rounding_edge_prediction(dtype) -> float:
    r"""$\log(\varepsilon/4)$: below this $\nu_{\log}$, $e^{\nu_{\log}}$ is less than half the
    spacing of the floats just below 1 ($\varepsilon/2$), so $\exp(-e^{\nu_{\log}})$ rounds to 1."""
    return math.log(float(np.finfo(np.dtype(dtype)).eps) / 4)


# -- |λ| < 1 everywhere ---------------------------------------------------------------------

UNIT_DISK_CLAIM = (
    "The stable exponential parameterisation lambda = exp(-exp(nu_log) + i exp(theta_log)) "
    "gives |lambda| < 1 for every parameter value; recurrax's LRU keeps it true in floating "
    "point (float32 and float64), extreme parameters included."
)


def check_unit_disk(
    parameterisation: Parameterisation = LRU_EIGENVALUES,
    *,
    dtypes=("float32", "float64"),
    nu_log_range=(-200.0, 20.0),
    theta_log_range=(-30.0, 10.0),
    grid=(1001, 21),
    samples=10_000,
    seed=0,
    name="unit_disk",
    plot=True,
) -> CheckResult:
    r"""$|\lambda| < 1$ on a grid and random draws of $(\nu_{\log}, \theta_{\log})$, the ends
    of the ranges and the rounding edges included, in each dtype.

    **Statistic:** the smallest margin $1 - |\lambda|$ (computed in float64 from the dtype's
    $|\lambda|$); the claim holds if it is $> 0$. NaN or infinite eigenvalues fail.
    """
    owner = "check_unit_disk"
    rng = np.random.default_rng(seed)
    nu, theta = np.meshgrid(
        np.linspace(*nu_log_range, grid[0]), np.linspace(*theta_log_range, grid[1])
    )
    special = [
        rounding_edge_prediction(d) + s for d in (np.float32, np.float64) for s in (-1, 0, 1)
    ]
    sweep = np.linspace(max(nu_log_range[0], -60.0), min(nu_log_range[1], 3.0), _SWEEP)
    nu = np.concatenate([nu.ravel(), rng.uniform(*nu_log_range, samples), special, sweep])
    theta = np.concatenate(
        [theta.ravel(), rng.uniform(*theta_log_range, samples), np.zeros(len(special) + _SWEEP)]
    )
    per_dtype, margins, curves = {}, [], []
    to_eigenvalue = jax.jit(parameterisation.to_eigenvalue)
    for dtype in dtypes:
        dtype = _check_dtype(owner, dtype)
        lam = to_eigenvalue(jnp.asarray(nu, dtype), jnp.asarray(theta, dtype))
        margin = 1.0 - _modulus(lam)
        finite = bool(np.all(np.isfinite(margin)))
        worst = int(np.argmin(np.where(np.isfinite(margin), margin, -np.inf)))
        margins.append(float(margin[worst]) if finite else math.nan)
        per_dtype[str(dtype)] = {
            "min 1 - |lambda|": float(margin[worst]),
            "at nu_log": float(nu[worst]),
            "count |lambda| >= 1": int(np.sum(~(margin > 0))),
            "all finite": finite,
        }
        curves.append((parameterisation.label, dtype, margin[-_SWEEP:]))
        if parameterisation is not STABLE_EXPONENTIAL:
            naive = _stable_to(jnp.asarray(sweep, dtype), jnp.zeros(sweep.shape, dtype))
            curves.append((STABLE_EXPONENTIAL.label, dtype, 1.0 - _modulus(naive)))
    details = {
        "parameterisation": parameterisation.name,
        "points per dtype": int(nu.size),
        "nu_log range": list(nu_log_range),
        "theta_log range": list(theta_log_range),
        "per dtype": per_dtype,
    }
    figures = [_unit_disk_figure(sweep, curves)] if plot else []
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=UNIT_DISK_CLAIM,
        source=SOURCE_PARAM,
        statistic_name="min 1 - |lambda|",
        statistic=math.nan if any(map(math.isnan, margins)) else min(margins),
        threshold=0.0,
        comparison=">",
        details=details,
        figures=figures,
    )


def _unit_disk_figure(sweep, curves):
    figure, ax = new_figure(width=6.5)
    for param_label, dtype, margin in curves:
        style = ":" if param_label == STABLE_EXPONENTIAL.label else "-"
        label = f"{param_label}, {dtype}"
        ax.semilogy(sweep, np.maximum(margin, 1e-19), style, label=label)
    ax.axhline(1e-19, color="red", lw=0.8)
    ax.text(sweep[0], 2e-19, "margin <= 0: |λ| >= 1 (drawn at 1e-19)", color="red", fontsize=8)
    ax.set_xlabel("ν_log (θ = 1)")
    ax.set_ylabel("1 − |λ|")
    ax.set_title("Margin to the unit circle against ν_log")
    ax.legend(fontsize=7)
    return figure


# -- where floating point rounds |λ| to 1 ---------------------------------------------------

EDGE_SOURCE = "IEEE 754 rounding of exp(-exp(nu_log)) (floating-point edge)"
EDGE_CLAIM = (
    "In floating point exp(-exp(nu_log)) rounds to exactly 1 once nu_log falls below about "
    "-17 in float32 and -37.6 in float64 (the state would then never decay)."
)


def check_rounding_edge(
    parameterisation: Parameterisation = STABLE_EXPONENTIAL,
    *,
    stated=(("float32", -17.0), ("float64", -37.6)),
    tolerance=0.5,
    search=(-80.0, 0.0),
    name="rounding_edge",
    plot=True,
) -> CheckResult:
    r"""Bisect for the largest $\nu_{\log}$ at which the parameterisation's $|\lambda|$ is
    exactly 1, in each dtype, and compare with the stated edge.

    **Statistic:** $\max |\text{measured} - \text{stated}|$ over the dtypes, in units of
    $\nu_{\log}$ (infinite if $|\lambda|$ never rounds to 1 in the search range).
    """
    owner = "check_rounding_edge"
    per_dtype, gaps = {}, []
    to_eigenvalue = jax.jit(parameterisation.to_eigenvalue)
    for dtype_name, claimed in stated:
        dtype = _check_dtype(owner, dtype_name)

        def rounds_to_one(v, dtype=dtype):
            # theta_log = -1e4: theta = 0 exactly, so that cos and sin add no rounding.
            theta_log = jnp.full((1,), _NO_PHASE, dtype)
            lam = to_eigenvalue(jnp.full((1,), v, dtype), theta_log)
            return bool(_modulus(lam)[0] >= 1.0)

        lo, hi = search
        if not rounds_to_one(lo) or rounds_to_one(hi):
            edge = -math.inf
        else:
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if mid in (lo, hi):
                    break
                lo, hi = (mid, hi) if rounds_to_one(mid) else (lo, mid)
            edge = lo
        gap = abs(edge - claimed)
        gaps.append(gap)
        floor = recurrax.stability_floor(dtype)
        per_dtype[str(dtype)] = {
            "measured edge": edge,
            "stated edge": claimed,
            "half-ulp prediction log(eps/4)": rounding_edge_prediction(dtype),
            "|measured - stated|": gap,
            "LRU floor on nu (stability_floor)": floor,
            "LRU floor as nu_log": math.log(floor),
        }
    details = {"parameterisation": parameterisation.name, "per dtype": per_dtype}
    figures = [_edge_figure(parameterisation, per_dtype)] if plot else []
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=EDGE_CLAIM,
        source=EDGE_SOURCE,
        statistic_name="max |measured edge - stated edge| (nu_log)",
        statistic=max(gaps),
        threshold=tolerance,
        comparison="<=",
        details=details,
        figures=figures,
    )


def _edge_figure(parameterisation, per_dtype):
    figure, axes = new_figure(len(per_dtype), width=5.0)
    axes = np.atleast_1d(axes)
    for ax, (dtype_name, info) in zip(axes, per_dtype.items()):
        dtype = np.dtype(dtype_name)
        centre = info["stated edge"]
        nu = np.linspace(centre - 4.0, centre + 6.0, 800)
        for param, style in ((parameterisation, "-"), (LRU_EIGENVALUES, "--")):
            theta_log = jnp.full(nu.shape, _NO_PHASE, dtype)
            lam = jax.jit(param.to_eigenvalue)(jnp.asarray(nu, dtype), theta_log)
            margin = 1.0 - _modulus(lam)
            ax.semilogy(nu, np.maximum(margin, 1e-20), style, label=param.label)
        ax.axvline(centre, color="grey", ls=":", label=f"stated {centre}")
        if math.isfinite(info["measured edge"]):
            ax.axvline(info["measured edge"], color="red", lw=0.8, label="measured edge")
        ax.set_title(f"{dtype_name}: 1 − |λ| near the edge (θ = 0)")
        ax.set_xlabel("ν_log")
        ax.set_ylabel("1 − |λ| (1e-20 means |λ| = 1)")
        ax.legend(fontsize=7)
    return figure


# -- the other parameterisations leave the disk --------------------------------------------

LEAVES_SOURCE = "LRU paper §3.3 and its ablations (exponential, Re + Im)"
LEAVES_CLAIM = (
    "Unlike the stable exponential, the {what} parameterisation can leave the unit disk: "
    "one optimiser step from an in-disk ring initialisation, or a small perturbation of "
    "it, gives |lambda| >= 1."
)


def check_leaves_disk(
    parameterisation: Parameterisation,
    *,
    ring=(0.9, 0.999),
    state_size=256,
    learning_rate=0.01,
    perturbation=0.01,
    samples=64,
    seed=0,
    name="leaves_disk",
    plot=True,
) -> CheckResult:
    r"""Look for a counterexample to $|\lambda| < 1$: start from a ring initialisation inside
    the disk written in `parameterisation`'s coordinates, take one Adam step (optax,
    `learning_rate`) on $-\sum_j \log|\lambda_j|$ (a task asking for longer memory), and
    draw `samples` random perturbations of scale `perturbation`.

    **Statistic:** the largest $|\lambda|$ found; a counterexample exists if it is $\ge 1$.
    """
    dtype = default_float()
    k_ring, k_noise = jax.random.split(jax.random.key(seed))
    nu_log, theta_log = recurrax.ring_init(
        state_size, r_min=ring[0], r_max=ring[1], max_phase=2 * math.pi, dtype=dtype, key=k_ring
    )
    lam0 = _stable_to(nu_log, theta_log)
    params = tuple(jnp.asarray(p).astype(dtype) for p in parameterisation.from_eigenvalue(lam0))

    def loss(p):
        return -jnp.sum(jnp.log(jnp.abs(parameterisation.to_eigenvalue(*p))))

    optimiser = optax.adam(learning_rate)

    @jax.jit
    def adam_step(params):
        with jax.numpy_dtype_promotion("standard"):
            updates, _ = optimiser.update(jax.grad(loss)(params), optimiser.init(params), params)
            return optax.apply_updates(params, updates)

    stepped = adam_step(params)
    lam_step = _modulus(parameterisation.to_eigenvalue(*stepped))
    noise = jax.random.normal(k_noise, (2, samples, state_size), dtype) * perturbation
    lam_noise = _modulus(
        parameterisation.to_eigenvalue(params[0][None] + noise[0], params[1][None] + noise[1])
    )
    found = float(max(np.max(lam_step), np.max(lam_noise)))
    details = {
        "parameterisation": parameterisation.name,
        "initial ring": list(ring),
        "initial max |lambda|": float(np.max(_modulus(lam0))),
        "after one Adam step: max |lambda|": float(np.max(lam_step)),
        "after one Adam step: fraction outside": float(np.mean(lam_step >= 1)),
        "random perturbations: max |lambda|": float(np.max(lam_noise)),
        "random perturbations: fraction outside": float(np.mean(lam_noise >= 1)),
        "learning rate": learning_rate,
        "perturbation scale": perturbation,
    }
    figures = []
    if plot:
        figure, ax = new_figure(width=6.0, height=4.5)
        before = _modulus(lam0)
        ax.scatter(before, lam_step, s=8, label="one Adam step")
        shown = min(samples, 4)
        ax.scatter(
            np.tile(before, shown),
            lam_noise[:shown].ravel(),
            s=4,
            alpha=0.5,
            label=f"random perturbations (scale {perturbation})",
        )
        ax.axhline(1.0, color="red", lw=1.0, label="unit circle")
        ax.set_xlabel("|λ| at the ring initialisation")
        ax.set_ylabel("|λ| after")
        ax.set_title(f"{parameterisation.label}: |λ| after one update")
        ax.legend(fontsize=8)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=LEAVES_CLAIM.format(what=parameterisation.name),
        source=LEAVES_SOURCE,
        statistic_name="max |lambda| found",
        statistic=found,
        threshold=1.0,
        comparison=">=",
        details=details,
        figures=figures,
    )


# -- the command line's checks ---------------------------------------------------------------

CHECKS: tuple[Check, ...] = (
    Check(
        "unit_disk",
        FAMILY,
        UNIT_DISK_CLAIM,
        SOURCE_PARAM,
        lambda quick, seed: check_unit_disk(
            grid=(201, 11) if quick else (1001, 21), samples=2000 if quick else 20_000, seed=seed
        ),
    ),
    Check(
        "rounding_edge", FAMILY, EDGE_CLAIM, EDGE_SOURCE, lambda quick, seed: check_rounding_edge()
    ),
    Check(
        "leaves_disk_exponential",
        FAMILY,
        LEAVES_CLAIM.format(what=PLAIN_EXPONENTIAL.name),
        LEAVES_SOURCE,
        lambda quick, seed: check_leaves_disk(
            PLAIN_EXPONENTIAL, seed=seed, name="leaves_disk_exponential"
        ),
    ),
    Check(
        "leaves_disk_re_im",
        FAMILY,
        LEAVES_CLAIM.format(what=REAL_IMAGINARY.name),
        LEAVES_SOURCE,
        lambda quick, seed: check_leaves_disk(REAL_IMAGINARY, seed=seed, name="leaves_disk_re_im"),
    ),
)
