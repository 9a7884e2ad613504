r"""Proofs on a trained model: every check that applies to a trained model's layers, run on
its trained parameters (`python -m proofs --run RUN_FOLDER`, or
[`proofs.check_trained_model`][] on a model in Python).

The checks reuse the library's checks ([`proofs.check_stability`][], [`proofs.check_bibo`][],
[`proofs.check_ring_init`][], [`proofs.check_ssm_to_lru`][]) and add what only a trained
model raises: how close the trained $\nu_{\log}$ come to the float edge, whether the trained
$\gamma$ still bounds the state variance for the trained $\lambda$, and the minGRU/minLSTM
transition values $a_t$ on real inputs."""

import dataclasses
import datetime
import json
import math
import pathlib
import time
from collections.abc import Callable, Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import recurrax

from ._result import CheckResult
from ._util import draw_unit_circle, ecdf, new_figure
from .discretisation import check_ssm_to_lru
from .eigenvalues import check_ring_init, lru_ring_eigenvalues
from .normalisation import _burn, state_moments
from .parameterisation import rounding_edge_prediction
from .stability import check_bibo, check_stability, recurrent_eigenvalues


FAMILY = "trained"
SOURCE = "LRU paper §3.3-§3.4, minRNN paper §2 (on the trained parameters)"
NAMES = (
    "trained_stability",
    "trained_float_edge",
    "trained_spectrum",
    "trained_normalisation",
    "trained_ssm_to_lru",
    "trained_gates",
    "trained_bibo",
)


# -- the result ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainedModelChecks:
    """What [`proofs.check_trained_model`][] found.

    **Fields:**

    - `results`: the [`proofs.CheckResult`][] of every check that applies to the model, in
      the order of `proofs.trained.NAMES`.
    - `not_applicable`: the other checks, each with the reason (e.g. "no LRU layer").
    - `quick`, `seed`: the settings they ran with.

    `passed` is true when every applicable check passed (and there is at least one).
    Iterating gives `results`.
    """

    results: list[CheckResult]
    not_applicable: dict[str, str]
    quick: bool = False
    seed: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def __getitem__(self, name: str) -> CheckResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(
            f"no applicable check named {name!r}; applicable: {[r.name for r in self.results]}."
        )


# -- layers ---------------------------------------------------------------------------------


def _layers(model, kinds) -> list[tuple[str, object]]:
    """`(path, layer)` for every layer of the given types inside `model`."""
    flat = jax.tree_util.tree_flatten_with_path(model, is_leaf=lambda x: isinstance(x, kinds))
    return [
        (jax.tree_util.keystr(path) or "(the model itself)", leaf)
        for path, leaf in flat[0]
        if isinstance(leaf, kinds)
    ]


def _renamed(result: CheckResult, name: str, **extra) -> CheckResult:
    return dataclasses.replace(result, name=name, details={**result.details, **extra})


# -- ν_log against the float edge ---------------------------------------------------------------

EDGE_CLAIM = (
    "The trained nu_log stay above the float edge log(eps/4) of the parameters' dtype, where "
    "exp(-exp(nu_log)) rounds to 1: no eigenvalue relies on the stability floor, and every "
    "|lambda| computed in that dtype is < 1."
)


def check_float_edge(model, *, name="trained_float_edge", plot=True) -> CheckResult:
    r"""How close the trained $\nu_{\log}$ of every LRU in `model` come to the rounding edge
    $\log(\varepsilon/4)$ of their dtype (float32: about $-17.3$), below which
    $\exp(-e^{\nu_{\log}})$ rounds to exactly 1 and only [`recurrax.stability_floor`][] keeps
    $|\lambda| < 1$ (with a zero gradient).

    **Statistic:** $\min \nu_{\log} - \log(\varepsilon/4)$ over the LRUs; must be $> 0$.

    **Raises:** `ValueError` if `model` holds no LRU.
    """
    lrus = _layers(model, recurrax.LRU)
    if not lrus:
        raise ValueError("check_float_edge: `model` contains no recurrax.LRU.")
    per_layer, gaps, histograms = {}, [], []
    for where, lru in lrus:
        dtype = np.dtype(lru.nu_log.dtype)
        nu_log = np.asarray(lru.nu_log).astype(np.float64)
        edge = rounding_edge_prediction(dtype)
        modulus = np.abs(np.asarray(lru.eigenvalues()))  # in the layer's own dtype
        floor = recurrax.stability_floor(dtype)
        gap = float(np.min(nu_log)) - edge
        gaps.append(gap)
        histograms.append((where, nu_log, edge, math.log(floor)))
        per_layer[where] = {
            "dtype": str(dtype),
            "min nu_log": float(np.min(nu_log)),
            "edge log(eps/4)": edge,
            "min nu_log - edge": gap,
            "below the edge": int(np.sum(nu_log <= edge)),
            "on the stability floor": int(np.sum(np.exp(nu_log) < floor)),
            "min 1 - |lambda| (in dtype)": float(1.0 - np.max(modulus)),
        }
    figures = []
    if plot:
        figure, ax = new_figure(width=6.5)
        for where, nu_log, edge, floor_log in histograms:
            ax.hist(nu_log, bins=40, histtype="step", label=where[:40])
        ax.axvline(histograms[0][2], color="red", ls="--", label="float edge log(ε/4)")
        ax.axvline(histograms[0][3], color="black", ls=":", label="log stability_floor")
        ax.set_xlabel("trained ν_log")
        ax.set_ylabel("count")
        ax.set_title("Trained ν_log against the float edge")
        ax.legend(fontsize=7)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=EDGE_CLAIM,
        source="LRU paper §3.3 (stable exponential), in floating point",
        statistic_name="min nu_log - log(eps/4)",
        statistic=min(gaps),
        threshold=0.0,
        comparison=">",
        details={"layers": per_layer},
        figures=figures,
    )


# -- the learnt spectrum against the initial ring ------------------------------------------------


def _ring_ks(lam, ring):
    r_min, r_max, max_phase = ring
    width = max(r_max**2 - r_min**2, 1e-300)
    modulus = stats.kstest(np.abs(lam) ** 2, stats.uniform(loc=r_min**2, scale=width).cdf)
    phase = stats.kstest(np.mod(np.angle(lam), 2 * np.pi), stats.uniform(0.0, max_phase).cdf)
    return float(modulus.statistic), float(phase.statistic)


SPECTRUM_CLAIM = (
    "The LRU started from its ring (Lemma 2: |lambda|^2 uniform on [r_min^2, r_max^2], phase "
    "uniform on [0, max_phase]); the details measure how far training moved the eigenvalues "
    "from it (KS distances, before and after)."
)


def check_learnt_spectrum(
    model, initial=None, *, p_threshold=1e-3, seed=0, name="trained_spectrum", plot=True
) -> CheckResult:
    r"""The learnt eigenvalues of every LRU in `model` against the ring it was initialised on.

    The initial eigenvalues (those of `initial`, the same model before training, or a fresh
    draw of each layer's ring when `None`) are tested against the ring by
    [`proofs.check_ring_init`][] (the reference is right); the details give the
    Kolmogorov-Smirnov distances of the trained $|\lambda|^2$ and phases from the ring, and
    the two-sample distance between initial and trained $|\lambda|$: how far training moved
    the spectrum. The figure shows both, before and after.

    **Statistic:** the smallest KS p-value of the initial eigenvalues against their ring.

    **Raises:** `ValueError` if `model` holds no LRU, or `initial` holds other LRUs.
    """
    lrus = _layers(model, recurrax.LRU)
    if not lrus:
        raise ValueError("check_learnt_spectrum: `model` contains no recurrax.LRU.")
    rings = [(lru.r_min, lru.r_max, lru.max_phase) for _, lru in lrus]
    if initial is None:
        sizes = iter([lru.state_size for _, lru in lrus])
        before = None

        def init(state_size, r_min, r_max, max_phase, key):
            return lru_ring_eigenvalues(next(sizes), r_min, r_max, max_phase, key)

    else:
        start = _layers(initial, recurrax.LRU)
        if [(w, lru.state_size) for w, lru in start] != [(w, x.state_size) for w, x in lrus]:
            raise ValueError(
                "check_learnt_spectrum: `initial` must be the same model before training (the "
                "same LRU layers), got other layers."
            )
        before = [np.asarray(lru.eigenvalues()).astype(np.complex128) for _, lru in start]
        queue = iter(before)

        def init(state_size, r_min, r_max, max_phase, key):
            return next(queue)

    result = check_ring_init(
        init,
        rings=rings,
        state_size=lrus[0][1].state_size,
        p_threshold=p_threshold,
        seed=seed,
        name=name,
        plot=False,
    )
    moved, curves = {}, []
    for i, (where, lru) in enumerate(lrus):
        after = np.asarray(lru.eigenvalues()).astype(np.complex128)
        d_modulus, d_phase = _ring_ks(after, rings[i])
        info = {
            "ring": list(rings[i]),
            "trained: KS distance of |lambda|^2 from the ring": d_modulus,
            "trained: KS distance of the phase from the ring": d_phase,
            "trained max |lambda|": float(np.max(np.abs(after))),
        }
        if before is not None:
            two = stats.ks_2samp(np.abs(before[i]), np.abs(after))
            info["initial -> trained: two-sample KS distance of |lambda|"] = float(two.statistic)
            info["initial -> trained: two-sample p-value"] = float(two.pvalue)
        moved[where] = info
        curves.append((where, None if before is None else before[i], after, rings[i]))
    figures = [_spectrum_figure(curves)] if plot else []
    details = {
        "initial eigenvalues": "the model before training"
        if before is not None
        else "fresh draws of each layer's ring",
        "initial against the ring": result.details["rings"],
        "learnt spectrum": moved,
    }
    return dataclasses.replace(result, claim=SPECTRUM_CLAIM, details=details, figures=figures)


def _spectrum_figure(curves):
    figure, (plane, radial) = new_figure(2, width=5.0)
    draw_unit_circle(plane)
    for where, before, after, (r_min, r_max, _) in curves:
        if before is not None:
            plane.scatter(
                before.real, before.imag, s=5, alpha=0.5, marker="x", label=f"initial {where[:25]}"
            )
            radial.plot(*ecdf(np.abs(before)), ls="--", label=f"initial {where[:25]}")
        plane.scatter(after.real, after.imag, s=6, label=f"trained {where[:25]}")
        radial.plot(*ecdf(np.abs(after)), label=f"trained {where[:25]}")
    r_min, r_max = curves[0][3][:2]
    r = np.linspace(r_min, r_max, 200)
    radial.plot(r, (r**2 - r_min**2) / max(r_max**2 - r_min**2, 1e-300), "k:", label="ring CDF")
    plane.set_title("Eigenvalues before and after training")
    plane.legend(fontsize=6)
    radial.set_xlabel("|λ|")
    radial.set_ylabel("empirical CDF")
    radial.set_title("|λ|: initial ring against trained")
    radial.legend(fontsize=6)
    return figure


# -- γ normalisation with the trained λ ---------------------------------------------------------

GAMMA_CLAIM = (
    "gamma normalisation still bounds the state: with the trained gamma and lambda, every "
    "state's stationary white-noise variance gamma_j^2 / (1 - |lambda_j|^2) E|(Bu)_j|^2 is "
    "within a factor 10 of the input's (Monte Carlo confirms the formula)."
)


def check_trained_normalisation(
    model,
    *,
    decades=1.0,
    max_burn=4096,
    window=2048,
    batch=8,
    seed=0,
    name="trained_normalisation",
    plot=True,
) -> CheckResult:
    r"""For every LRU of `model`, the stationary gain $g_j = \gamma_j^2 / (1 - |\lambda_j|^2)
    = \mathbb{E}|x_j|^2 / \mathbb{E}|(Bu)_j|^2$ under white noise, from the trained $\gamma$
    and $\lambda$ (the paper's normalisation makes it 1 at initialisation; training moves
    $\gamma$ and $\lambda$ separately). Monte Carlo ([`proofs.normalisation.state_moments`])
    confirms the formula on the states that reach stationarity within `max_burn` steps
    (averaged over at least `window` steps after the burn-in).

    **Statistic:** $\max_j \log_{10} g_j$, within `decades`.

    **Raises:** `ValueError` if `model` holds no LRU.
    """
    lrus = _layers(model, recurrax.LRU)
    if not lrus:
        raise ValueError("check_trained_normalisation: `model` contains no recurrax.LRU.")
    per_layer, worst, points = {}, [], []
    for i, (where, lru) in enumerate(lrus):
        modulus = np.abs(np.asarray(lru.eigenvalues()).astype(np.complex128))
        gamma = np.exp(np.asarray(lru.gamma_log, np.float64))
        gain = gamma**2 / (1.0 - modulus**2)
        worst.append(float(np.max(np.log10(gain))))
        burn = min(_burn(float(np.max(modulus))), max_burn)
        steps = max(burn, window)
        x2, bu2 = state_moments(lru, burn=burn, window=steps, batch=batch, seed=seed + i)
        settled = 4.0 / (1.0 - modulus) <= burn
        measured = x2 / bu2
        error = float(np.max(np.abs(measured[settled] / gain[settled] - 1), initial=0.0))
        per_layer[where] = {
            "max gain": float(np.max(gain)),
            "min gain": float(np.min(gain)),
            "at initialisation": "1 for every state",
            "Monte Carlo states (settled within the burn-in)": int(np.sum(settled)),
            "Monte Carlo max |measured / formula - 1|": error,
            "Monte Carlo |mean measured / mean formula - 1|": float(
                abs(np.mean(measured[settled]) / np.mean(gain[settled]) - 1)
            )
            if np.any(settled)
            else math.nan,
            "burn-in, window (steps)": [burn, steps],
        }
        points.append((where, modulus, gain, measured, settled))
    figures = []
    if plot:
        figure, ax = new_figure(width=6.5)
        for where, modulus, gain, measured, settled in points:
            ax.scatter(1 / (1 - modulus), gain, s=8, label=f"γ²/(1−|λ|²) {where[:25]}")
            ax.scatter(
                1 / (1 - modulus[settled]),
                measured[settled],
                s=14,
                marker="x",
                label=f"Monte Carlo {where[:25]}",
            )
        ax.axhline(1.0, color="black", lw=1, label="at initialisation")
        ax.axhline(10.0**decades, color="red", ls="--", lw=1, label="bound")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("1 / (1 − |λ_j|)")
        ax.set_ylabel("E|x_j|² / E|(Bu)_j|²")
        ax.set_title("Trained LRU: state variance per eigenvalue")
        ax.legend(fontsize=6)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=GAMMA_CLAIM,
        source="LRU paper §3.4 (normalisation)",
        statistic_name="max_j log10(gamma_j^2 / (1 - |lambda_j|^2))",
        statistic=max(worst),
        threshold=decades,
        comparison="<=",
        details={"layers": per_layer},
        figures=figures,
    )


# -- minGRU/minLSTM transition values -------------------------------------------------------------

GATES_CLAIM = (
    "minGRU/minLSTM transition values a_t = 1 - z_t (minGRU) or f'_t (minLSTM) lie strictly in "
    "(0, 1) on the given inputs, in the layer's dtype: the state neither freezes (a = 1) nor "
    "resets exactly (a = 0)."
)


class _Probe(recurrax.AbstractMixer):
    """A minGRU/minLSTM that reports its transition values `a_t` to `record` when called."""

    inner: recurrax.AbstractMixer
    index: int = eqx.field(static=True)
    record: Callable = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)
    bidirectional: bool = eqx.field(static=True)

    def __init__(self, inner, index, record):
        self.inner, self.index, self.record = inner, index, record
        self.input_size, self.output_size = inner.input_size, inner.output_size
        self.bidirectional = inner.bidirectional

    def init_state(self):
        return self.inner.init_state()

    def step(self, h, x_t):
        return self.inner.step(h, x_t)

    def scan(self, h, x, *, reverse=False, mask=None):
        return self.inner.scan(h, x, reverse=reverse, mask=mask)

    def __call__(self, x, *, mask=None, key=None):
        a = self.inner.coefficients(x)[0]
        valid = jnp.ones(x.shape[0], bool) if mask is None else mask
        jax.debug.callback(self.record, self.index, a, valid)
        return self.inner(x, mask=mask, key=key)


def model_inputs(model, *, batch=16, length=256, seed=0):
    """Random inputs for `model`: uniform tokens below its vocabulary, or standard normal
    features. `(batch, length)` or `(batch, length, input_size)`."""
    key = jax.random.key(seed)
    if getattr(model, "vocab_size", None) is not None:
        return np.asarray(jax.random.randint(key, (batch, length), 0, model.vocab_size))
    return np.asarray(jax.random.normal(key, (batch, length, model.input_size)))


def transition_values(model, inputs, state=None) -> list[tuple[str, object, np.ndarray]]:
    r"""`(path, layer, a)` for every minGRU/minLSTM inside `model` (a
    [`recurrax.SequenceModel`][], or such a layer itself), with `a` the transition values
    $a_t$ it computes on `inputs` (a batch), as float64 (exact: log-space layers give
    $\log a_t$, exponentiated in float64), flattened over the batch, the valid steps and the
    features."""
    layers = _layers(model, (recurrax.MinGRU, recurrax.MinLSTM))
    found = [[] for _ in layers]

    def record(index, a, valid):
        a, valid = np.asarray(a), np.asarray(valid, bool)
        found[int(index)].append(a.reshape(-1, *a.shape[-2:])[valid.reshape(-1, a.shape[-2])])

    counter = iter(range(len(layers)))
    probed = jax.tree.map(
        lambda x: (
            _Probe(x, next(counter), record)
            if isinstance(x, (recurrax.MinGRU, recurrax.MinLSTM))
            else x
        ),
        model,
        is_leaf=lambda x: isinstance(x, (recurrax.MinGRU, recurrax.MinLSTM)),
    )
    probed = eqx.nn.inference_mode(probed)

    @eqx.filter_jit
    def run(m, x):
        if state is None:
            return jax.vmap(m)(x)
        return jax.vmap(lambda x: m(x, state), axis_name="batch", out_axes=(0, None))(x)

    jax.block_until_ready(run(probed, jnp.asarray(inputs)))
    jax.effects_barrier()
    out = []
    for (where, layer), parts in zip(layers, found):
        a = np.concatenate([p.reshape(-1) for p in parts]).astype(np.float64)
        out.append((where, layer, np.exp(a) if layer.log_space else a))
    return out


def check_transition_values(
    model, inputs=None, state=None, *, seed=0, name="trained_gates", plot=True
) -> CheckResult:
    r"""The transition values $a_t$ of every minGRU/minLSTM of `model` on `inputs` (default:
    [`proofs.trained.model_inputs`], random) lie strictly in $(0, 1)$.

    **Statistic:** $\min_{t,j} \min(a_t, 1 - a_t)$ over every layer; must be $> 0$.

    **Raises:** `ValueError` if `model` holds no minGRU/minLSTM.
    """
    if not _layers(model, (recurrax.MinGRU, recurrax.MinLSTM)):
        raise ValueError("check_transition_values: `model` contains no MinGRU or MinLSTM.")
    inputs = model_inputs(model, seed=seed) if inputs is None else inputs
    found = transition_values(model, inputs, state)
    per_layer, margins = {}, []
    for where, layer, a in found:
        margin = float(np.min(np.minimum(a, 1.0 - a)))
        margins.append(margin)
        per_layer[where] = {
            "layer": type(layer).__name__ + (" (log space)" if layer.log_space else ""),
            "values": int(a.size),
            "min a": float(np.min(a)),
            "max a": float(np.max(a)),
            "mean a": float(np.mean(a)),
            "count a = 1": int(np.sum(a >= 1.0)),
            "count a = 0": int(np.sum(a <= 0.0)),
            "min(a, 1 - a)": margin,
        }
    figures = []
    if plot:
        figure, ax = new_figure(width=6.5)
        for where, _, a in found:
            ax.hist(a, bins=50, range=(0.0, 1.0), histtype="step", label=where[:40])
        ax.set_xlabel("transition value a_t")
        ax.set_ylabel("count")
        ax.set_yscale("log")
        ax.set_title("minGRU/minLSTM transition values on the inputs")
        ax.legend(fontsize=7)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=GATES_CLAIM,
        source="minRNN paper §2 (sigmoid gates)",
        statistic_name="min min(a_t, 1 - a_t)",
        statistic=min(margins),
        threshold=0.0,
        comparison=">",
        details={"inputs": list(np.shape(inputs)), "layers": per_layer},
        figures=figures,
    )


# -- everything -------------------------------------------------------------------------------


def _bibo(model, *, length, seed, name):
    layers = [
        (where, layer)
        for where, layer in _layers(model, (recurrax.LRU, recurrax.DiagonalSSM))
        if not layer.bidirectional
    ]
    if not layers:
        raise ValueError("no unidirectional LRU or DiagonalSSM")
    results = [
        check_bibo(layer, length=length, seed=seed, plot=(i == 0))
        for i, (_, layer) in enumerate(layers)
    ]
    worst = max(range(len(results)), key=lambda i: results[i].statistic)
    details = {where: r.details for (where, _), r in zip(layers, results)}
    return dataclasses.replace(
        results[worst],
        name=name,
        details={"worst layer": layers[worst][0], "layers": details},
        figures=results[0].figures,
    )


def check_trained_model(
    model,
    *,
    initial=None,
    inputs=None,
    state=None,
    quick: bool = False,
    seed: int = 0,
    plot: bool = True,
) -> TrainedModelChecks:
    r"""Run every check that applies to a trained model on `model`.

    **Arguments:**

    - `model`: a [`recurrax.SequenceModel`][] (any Equinox module holding recurrax layers
      works for the checks that need only the layers).
    - `initial`: the same model before training (for the learnt spectrum), or `None` to
      compare with fresh draws of each LRU's ring.
    - `inputs`: a batch of real inputs for the minGRU/minLSTM transition values (tokens
      `(batch, length)` or features `(batch, length, input_size)`); `None`: random.
    - `state`: the model's `equinox.nn.State` (BatchNorm's statistics), if it has one.
    - `quick`: shorter sequences for the BIBO and variance checks.

    **Returns:** a [`proofs.TrainedModelChecks`][]: the results of the applicable checks
    (named as in `proofs.trained.NAMES`) and the others with the reason they do not apply.
    A check that raises is reported as a failure with the error in its details.

    !!! example

        ```python
        import jax
        import proofs
        import recurrax

        model, _ = recurrax.ModelConfig(mixer="lru", input_size=1, d_model=8,
                                        state_size=8, depth=1).build(key=jax.random.key(0))
        checks = proofs.check_trained_model(model, quick=True, plot=False)
        assert checks.passed and "trained_gates" in checks.not_applicable
        ```
    """
    lrus = _layers(model, recurrax.LRU)
    ssms = [layer for _, layer in _layers(model, recurrax.DiagonalSSM)]
    gated = _layers(model, (recurrax.MinGRU, recurrax.MinLSTM))
    lti = recurrent_eigenvalues(model)
    unidirectional = [
        layer
        for _, layer in _layers(model, (recurrax.LRU, recurrax.DiagonalSSM))
        if not layer.bidirectional
    ]
    plan = {
        "trained_stability": (
            bool(lti),
            "no time-invariant recurrent layer (LRU, DiagonalSSM)",
            lambda name: check_stability(model, name=name, plot=plot),
        ),
        "trained_float_edge": (
            bool(lrus),
            "no LRU layer",
            lambda name: check_float_edge(model, name=name, plot=plot),
        ),
        "trained_spectrum": (
            bool(lrus),
            "no LRU layer",
            lambda name: check_learnt_spectrum(model, initial, seed=seed, name=name, plot=plot),
        ),
        "trained_normalisation": (
            bool(lrus),
            "no LRU layer",
            lambda name: check_trained_normalisation(
                model,
                max_burn=1024 if quick else 4096,
                window=512 if quick else 2048,
                seed=seed,
                name=name,
                plot=plot,
            ),
        ),
        "trained_ssm_to_lru": (
            bool(ssms),
            "no DiagonalSSM layer",
            lambda name: check_ssm_to_lru(ssms, seed=seed, name=name),
        ),
        "trained_gates": (
            bool(gated),
            "no MinGRU or MinLSTM layer",
            lambda name: check_transition_values(
                model, inputs, state, seed=seed, name=name, plot=plot
            ),
        ),
        "trained_bibo": (
            bool(unidirectional),
            "no unidirectional LRU or DiagonalSSM layer",
            lambda name: _bibo(model, length=400 if quick else 2000, seed=seed, name=name),
        ),
    }
    results, not_applicable = [], {}
    for name in NAMES:
        applies, reason, run = plan[name]
        if not applies:
            not_applicable[name] = reason
            continue
        started = time.perf_counter()
        try:
            result = _renamed(run(name), name)
        except Exception as error:  # a check that raises is a failed check, reported
            result = CheckResult(
                name=name,
                family=FAMILY,
                claim="(the check raised an error)",
                source=SOURCE,
                statistic_name="(the check raised an error)",
                statistic=math.nan,
                threshold=math.nan,
                comparison="<=",
                passed=False,
                details={"error": f"{type(error).__name__}: {error}"},
            )
        result = _renamed(result, name, seconds=time.perf_counter() - started)
        results.append(result)
    return TrainedModelChecks(results, not_applicable, quick=bool(quick), seed=int(seed))


# -- run folders ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained model read back from a run folder by [`proofs.load_run`][].

    **Fields:** `model` (the last checkpoint's parameters), `state` (its `equinox.nn.State`,
    BatchNorm's statistics), `initial` (the model before training, rebuilt from the run's seed;
    `None` for a run started from another run's checkpoint), `step` (the checkpoint's step),
    `config` (the run's `run.json`)."""

    model: recurrax.SequenceModel
    state: object
    initial: recurrax.SequenceModel | None
    step: int
    config: dict


def load_run(run) -> TrainedRun:
    """The trained model of a run folder written by `python -m experiments run` (its
    `run.json` and the last checkpoint in `checkpoints/`).

    The model is rebuilt from the run's `recurrax.ModelConfig` with the key the training
    command uses (`fold_in(key(seed), 0)`), which also gives the model before training.

    **Raises:** `ValueError` naming the folder if it holds no `run.json` or no checkpoint, or
    if the run trained an experiments-only model variant (`variant` set).
    """
    run = pathlib.Path(run)
    run_file = run / "run.json"
    if not run_file.exists():
        raise ValueError(f"load_run: no run.json in {run}: not a run folder (run={str(run)!r}).")
    config = json.loads(run_file.read_text())
    if config.get("variant"):
        raise ValueError(
            f"load_run: the run in {run} trained the experiments-only variant "
            f"{config['variant']!r}, which recurrax cannot rebuild; rebuild it with the "
            f"experiments package and call proofs.check_trained_model on the model."
        )
    # A user's mixer: the plugins the run recorded register it again.
    recurrax.load_plugins(config.get("plugins", []), option=f"{run_file}: plugins")
    model_config = recurrax.ModelConfig.from_dict(config["model_config"])
    key = jax.random.fold_in(jax.random.key(int(config.get("seed", 0))), 0)
    initial, state = model_config.build(key=key)
    checkpoint = recurrax.CheckpointManager(run / "checkpoints").restore(model=initial, state=state)
    if checkpoint is None:
        raise ValueError(f"load_run: no checkpoint in {run / 'checkpoints'} (run={str(run)!r}).")
    return TrainedRun(
        model=checkpoint.model,
        state=checkpoint.state,
        initial=None if config.get("init_from") else initial,
        step=checkpoint.step,
        config=config,
    )


def check_run(run, *, inputs=None, quick=False, seed=0, plot=True) -> TrainedModelChecks:
    """[`proofs.check_trained_model`][] on the trained model of a run folder (see
    [`proofs.load_run`][])."""
    trained = load_run(run)
    return check_trained_model(
        trained.model,
        initial=trained.initial,
        inputs=inputs,
        state=trained.state,
        quick=quick,
        seed=seed,
        plot=plot,
    )


def write_trained_report(
    checks: TrainedModelChecks,
    out,
    *,
    title: str = "the trained model",
    command=None,
    quick: bool = False,
    seed: int = 0,
) -> pathlib.Path:
    """Write `out/report.md` and its figures in `out/figures/`: the applicable checks
    (summary table and a section each) and the checks that do not apply, with the reason.
    Returns the path of `report.md`."""
    from . import report

    out = pathlib.Path(out)
    report._clear(out / "figures")
    results = report.save_figures(checks.results, out / "figures")
    seconds = sum(r.details.get("seconds", 0.0) for r in results)
    quick, seed = checks.quick, checks.seed
    header = [
        f"# recurrax proofs on {title}",
        "",
        f"Generated by `{command or 'proofs.write_trained_report'}` on "
        f"{datetime.date.today().isoformat()} with recurrax {recurrax.__version__}, jax "
        f"{jax.__version__} ({jax.default_backend()}), {'quick' if quick else 'full'} mode, "
        f"seed {seed}, in {seconds:.0f} s. The checks run on the model's own parameters and "
        f"dtype; references are computed in float64 NumPy.",
    ]
    if checks.not_applicable:
        header += ["", "Not applicable to this model's layers (not failed):", ""]
        header += [f"- `{name}`: {reason}" for name, reason in checks.not_applicable.items()]
    path = out / "report.md"
    path.write_text(report.render(results, image_prefix="figures/", header=header))
    return path
