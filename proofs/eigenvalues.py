r"""Eigenvalue distributions: the LRU's ring initialisation (Lemma 2), the circular law of
Glorot-initialised dense matrices, and the S4D-Lin, S4D-Inv and HiPPO-LegS sets (LRU paper
§3.2-§3.3)."""

import functools
import math
from collections.abc import Callable

import jax
import numpy as np
from scipy import stats

import recurrax

from ._result import Check, CheckResult
from ._util import default_float, draw_unit_circle, ecdf, new_figure


FAMILY = "eigenvalues"
DEFAULT_RINGS = ((0.0, 1.0, 2 * math.pi), (0.9, 0.999, 2 * math.pi), (0.999, 0.9999, math.pi / 10))


# -- ring initialisation ----------------------------------------------------------------------

RING_SOURCE = "LRU paper §3.3 (ring initialisation, Lemma 2)"
RING_CLAIM = (
    "Ring initialisation (Lemma 2): |lambda|^2 is uniform on [r_min^2, r_max^2] (uniform over "
    "the annulus' area) and the phase is uniform on [0, max_phase]."
)


def lru_ring_eigenvalues(state_size: int, r_min, r_max, max_phase, key) -> np.ndarray:
    """The eigenvalues of a freshly initialised [`recurrax.LRU`][] (`eigenvalues()`)."""
    lru = recurrax.LRU(
        1,
        state_size,
        r_min=r_min,
        r_max=r_max,
        max_phase=max_phase,
        dtype=default_float(),
        key=key,
    )
    return np.asarray(lru.eigenvalues()).astype(np.complex128)


def check_ring_init(
    init: Callable = lru_ring_eigenvalues,
    *,
    rings=DEFAULT_RINGS,
    state_size=4096,
    p_threshold=1e-3,
    seed=0,
    name="ring_init",
    plot=True,
) -> CheckResult:
    r"""Kolmogorov-Smirnov tests of $|\lambda|^2 \sim U[r_{\min}^2, r_{\max}^2]$ and
    $\arg\lambda \sim U[0, \text{max\_phase}]$ for each ring.

    **Arguments:** `init(state_size, r_min, r_max, max_phase, key) -> eigenvalues` (default:
    a fresh LRU's `eigenvalues()`); `rings`: `(r_min, r_max, max_phase)` triples.

    **Statistic:** the smallest KS p-value; the claim holds (is not rejected) above
    `p_threshold`.
    """
    per_ring, p_values, samples = {}, [], []
    for i, (r_min, r_max, max_phase) in enumerate(rings):
        key = jax.random.fold_in(jax.random.key(seed), i)
        lam = np.asarray(init(state_size, r_min, r_max, max_phase, key)).astype(np.complex128)
        modulus_sq = np.abs(lam) ** 2
        phase = np.mod(np.angle(lam), 2 * np.pi)
        width = r_max**2 - r_min**2
        ks_modulus = stats.kstest(modulus_sq, stats.uniform(loc=r_min**2, scale=width).cdf)
        ks_phase = stats.kstest(phase, stats.uniform(loc=0.0, scale=max_phase).cdf)
        p_values += [ks_modulus.pvalue, ks_phase.pvalue]
        per_ring[f"[{r_min}, {r_max}], max phase {max_phase:.4g}"] = {
            "KS |lambda|^2: statistic": float(ks_modulus.statistic),
            "KS |lambda|^2: p-value": float(ks_modulus.pvalue),
            "KS phase: statistic": float(ks_phase.statistic),
            "KS phase: p-value": float(ks_phase.pvalue),
        }
        samples.append(((r_min, r_max, max_phase), lam, (modulus_sq - r_min**2) / width))
    figures = [_ring_figure(samples)] if plot else []
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=RING_CLAIM,
        source=RING_SOURCE,
        statistic_name="min KS p-value",
        statistic=min(p_values),
        threshold=p_threshold,
        comparison=">",
        details={"eigenvalues per ring": state_size, "rings": per_ring},
        figures=figures,
    )


def _ring_figure(samples):
    figure, (plane, radial, angular) = new_figure(3, width=4.3, height=4.0)
    draw_unit_circle(plane)
    for (r_min, r_max, max_phase), lam, u in samples:
        label = f"[{r_min}, {r_max}]"
        shown = lam[:1024]
        plane.scatter(shown.real, shown.imag, s=3, label=label)
        radial.plot(*ecdf(u), label=label)
        angular.plot(*ecdf(np.mod(np.angle(lam), 2 * np.pi) / max_phase), label=label)
    for ax, what in ((radial, "(|λ|² − r_min²)/(r_max² − r_min²)"), (angular, "phase / max_phase")):
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="uniform CDF")
        ax.set_xlabel(what)
        ax.set_ylabel("empirical CDF")
        ax.legend(fontsize=7)
    plane.set_title("Ring initialisation")
    plane.legend(fontsize=7)
    radial.set_title("|λ|² against uniform")
    angular.set_title("Phase against uniform")
    return figure


# -- the circular law -------------------------------------------------------------------------

CIRCULAR_SOURCE = "LRU paper §3.2 (Glorot initialisation, circular law)"
CIRCULAR_CLAIM = (
    "Glorot-initialised dense matrices (A_ij ~ N(0, 1/N)) have eigenvalues approaching the "
    "uniform distribution on the unit disk as N grows (strong circular law): the KS distance "
    "of |lambda|^2 from U[0, 1] shrinks with N."
)


def glorot_matrix(size: int, key) -> np.ndarray:
    """The state matrix of [`recurrax.glorot_dense_system`][]."""
    return np.asarray(_glorot(size, key))


@functools.partial(jax.jit, static_argnums=0)
def _glorot(size, key):
    return recurrax.glorot_dense_system(size, 1, dtype=default_float(), key=key).A


def check_circular_law(
    matrix: Callable = glorot_matrix,
    *,
    sizes=(16, 64, 256, 1024),
    eigenvalues_per_size=2048,
    slope_threshold=-0.2,
    seed=0,
    name="circular_law",
    plot=True,
) -> CheckResult:
    r"""KS distance $D_N$ of $|\lambda|^2$ from $U[0, 1]$ for each size $N$, pooling
    eigenvalues of several independent matrices until `eigenvalues_per_size` are reached,
    and the slope of $\log D_N$ against $\log N$ (least squares).

    **Arguments:** `matrix(N, key) -> (N, N) array` (default: `glorot_dense_system`'s `A`).

    **Statistic:** the fitted slope; the distance shrinks if it is below `slope_threshold`.
    """
    if len(sizes) < 2:
        raise ValueError(f"check_circular_law: `sizes` needs at least two sizes, got {sizes!r}.")
    distances, phases, largest = [], [], None
    for i, n in enumerate(sizes):
        repeats = max(1, math.ceil(eigenvalues_per_size / n))
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), i), repeats)
        lam = np.concatenate(
            [np.linalg.eigvals(np.asarray(matrix(n, k), np.float64)) for k in keys]
        )
        distances.append(float(stats.kstest(np.abs(lam) ** 2, "uniform").statistic))
        phase = np.mod(np.angle(lam), 2 * np.pi) / (2 * np.pi)
        phases.append(float(stats.kstest(phase, "uniform").statistic))
        largest = lam[: sizes[-1]]
    slope, intercept = np.polyfit(np.log(sizes), np.log(distances), 1)
    details = {
        "sizes N": list(sizes),
        "KS distance of |lambda|^2 from U[0,1]": distances,
        "KS distance of phase from U[0, 2pi)": phases,
        "monotone decrease": bool(np.all(np.diff(distances) < 0)),
        "fitted slope": float(slope),
    }
    figures = []
    if plot:
        figure, (plane, fit) = new_figure(2, width=4.8, height=4.3)
        draw_unit_circle(plane)
        plane.scatter(largest.real, largest.imag, s=3)
        plane.set_title(f"Eigenvalues, N = {sizes[-1]}")
        n = np.asarray(sizes, np.float64)
        fit.loglog(n, distances, "o-", label="KS distance D_N")
        fit.loglog(n, np.exp(intercept) * n**slope, "--", label=f"fit: slope {slope:.2f}")
        fit.set_xlabel("N")
        fit.set_ylabel("D_N")
        fit.set_title("Distance from the circular law")
        fit.legend(fontsize=8)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=CIRCULAR_CLAIM,
        source=CIRCULAR_SOURCE,
        statistic_name="slope of log D_N against log N",
        statistic=float(slope),
        threshold=slope_threshold,
        comparison="<",
        details=details,
        figures=figures,
    )


# -- S4D-Lin, S4D-Inv, HiPPO-LegS ---------------------------------------------------------------


def s4d_lin_formula(state_size: int, conjugate_symmetric: bool) -> np.ndarray:
    r"""$\lambda_n = -\tfrac12 + i\pi n$, $n = 0, \dots, N - 1$."""
    n = np.arange(state_size)
    return -0.5 + 1j * np.pi * n


def s4d_inv_formula(state_size: int, conjugate_symmetric: bool) -> np.ndarray:
    r"""$\lambda_n = -\tfrac12 + i\,\tfrac{N}{\pi}(\tfrac{N}{2n+1} - 1)$ with $N$ the size of
    the real system (twice the states kept when conjugate-symmetric)."""
    big = 2 * state_size if conjugate_symmetric else state_size
    n = np.arange(state_size)
    return -0.5 + 1j * big / np.pi * (big / (2 * n + 1) - 1)


def hippo_legs_spectrum(state_size: int, conjugate_symmetric: bool) -> np.ndarray:
    r"""The eigenvalues of the normal part $A + PP^\top$ of HiPPO-LegS, from its definition
    ($A_{nk} = -\sqrt{(2n+1)(2k+1)}$ below the diagonal, $-(n+1)$ on it; $P_n = \sqrt{n+1/2}$)
    by a general eigensolver; when conjugate-symmetric, those with positive imaginary part of
    the matrix of twice the size."""
    size = 2 * state_size if conjugate_symmetric else state_size
    i = np.arange(size, dtype=np.float64)
    root = np.sqrt(2 * i + 1)
    a = np.where(i[:, None] > i[None, :], -np.outer(root, root), 0.0) - np.diag(i + 1)
    p = np.sqrt(i + 0.5)
    lam = np.linalg.eigvals(a + np.outer(p, p))
    return lam[lam.imag > 0] if conjugate_symmetric else lam


INIT_SOURCE = "S4D and S5 papers (initialisations)"
INIT_CLAIMS = {
    "s4d_lin": "S4D-Lin eigenvalues are -1/2 + i pi n.",
    "s4d_inv": "S4D-Inv eigenvalues are -1/2 + i (N/pi) (N/(2n+1) - 1).",
    "hippo_legs": (
        "The HiPPO-LegS (S5) eigenvalues are those of the normal part of the HiPPO-LegS "
        "matrix: real parts -1/2."
    ),
}


def _sorted(lam):
    lam = np.asarray(lam).astype(np.complex128).ravel()
    return lam[np.lexsort((lam.real, lam.imag))]


def check_ssm_init(
    init: recurrax.AbstractSSMInit,
    expected: Callable,
    *,
    claim: str,
    sizes=(1, 8, 64),
    tolerance=1e-8,
    name="ssm_init",
    plot=True,
) -> CheckResult:
    r"""`init.eigenvalues(N, conjugate_symmetric)` against the defining formula
    `expected(N, conjugate_symmetric)` (both sorted by imaginary part), for each size, with
    and without conjugate symmetry.

    **Statistic:** the largest error $|\lambda - \lambda_{\text{ref}}| / \max(1,
    |\lambda_{\text{ref}}|)$; the set matches if it is at most `tolerance`.
    """
    errors, per_case, shown = [], {}, None
    for n in sizes:
        for symmetric in (False, True):
            lam = _sorted(init.eigenvalues(n, symmetric))
            ref = _sorted(expected(n, symmetric))
            if lam.shape != ref.shape:
                error = math.inf
            else:
                error = float(np.max(np.abs(lam - ref) / np.maximum(1.0, np.abs(ref))))
            errors.append(error)
            per_case[f"N = {n}, conjugate_symmetric = {symmetric}"] = {
                "max relative error": error,
                "max |Re lambda + 1/2|": float(np.max(np.abs(lam.real + 0.5))),
                "max Re lambda": float(np.max(lam.real)),
            }
            if shown is None or (n <= 16 and not symmetric):
                shown = (n, symmetric, lam, ref)
    figures = []
    if plot:
        n, symmetric, lam, ref = shown
        figure, ax = new_figure(width=5.5)
        ax.scatter(lam.real, lam.imag, s=14, label=f"{type(init).__name__}.eigenvalues")
        ax.scatter(ref.real, ref.imag, s=40, facecolors="none", edgecolors="red", label="formula")
        ax.axvline(0.0, color="black", lw=1.0, label="imaginary axis")
        ax.set_xlim(-1.5, 0.5)
        ax.set_yscale("symlog", linthresh=10.0)
        ax.set_xlabel("Re λ")
        ax.set_ylabel("Im λ (symmetric log scale)")
        half = ", one of each pair" if symmetric else ""
        ax.set_title(f"{type(init).__name__}, N = {n}{half}")
        ax.legend(fontsize=7)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=claim,
        source=INIT_SOURCE,
        statistic_name="max relative eigenvalue error",
        statistic=max(errors),
        threshold=tolerance,
        comparison="<=",
        details={"initialisation": type(init).__name__, "cases": per_case},
        figures=figures,
    )


# -- the command line's checks ---------------------------------------------------------------


def _ssm_init(name, init, formula):
    def run(quick, seed):
        sizes = (1, 8, 32) if quick else (1, 8, 64, 256)
        return check_ssm_init(init, formula, claim=INIT_CLAIMS[name], sizes=sizes, name=name)

    return Check(name, FAMILY, INIT_CLAIMS[name], INIT_SOURCE, run)


CHECKS: tuple[Check, ...] = (
    Check(
        "ring_init",
        FAMILY,
        RING_CLAIM,
        RING_SOURCE,
        lambda quick, seed: check_ring_init(state_size=1024 if quick else 4096, seed=seed),
    ),
    Check(
        "circular_law",
        FAMILY,
        CIRCULAR_CLAIM,
        CIRCULAR_SOURCE,
        lambda quick, seed: check_circular_law(
            sizes=(16, 32, 64, 128) if quick else (16, 64, 256, 1024),
            eigenvalues_per_size=1024 if quick else 2048,
            seed=seed,
        ),
    ),
    _ssm_init("s4d_lin", recurrax.S4DLin(), s4d_lin_formula),
    _ssm_init("s4d_inv", recurrax.S4DInv(), s4d_inv_formula),
    _ssm_init("hippo_legs", recurrax.HiPPOLegS(), hippo_legs_spectrum),
)
