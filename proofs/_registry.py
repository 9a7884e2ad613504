"""The registry: every check with its family and the default arguments the command line uses
(`quick=True`: smaller sizes, seconds), and `run_all`."""

import dataclasses
import math
import time
import traceback
from collections.abc import Callable, Sequence

import recurrax

from . import (
    _subjects,
    discretisation,
    eigenvalues,
    equivalences,
    normalisation,
    parameterisation,
    stability,
)
from ._result import Check, CheckResult


FAMILIES = ("stability", "eigenvalues", "normalisation", "equivalences")


# -- entries ---------------------------------------------------------------------------------


def _model_trained(quick, seed):
    model = _subjects.lru_model(seed)
    steps = 10 if quick else 100
    model, details = stability.train_briefly(
        model, steps=steps, length=64 if quick else 256, seed=seed
    )
    result = stability.check_stability(model, name="model_stability_trained")
    return dataclasses.replace(result, details={**details, **result.details})


def _order(name, discretisation_, order):
    def run(quick, seed):
        counts = (40, 80, 160) if quick else (40, 80, 160, 320, 640)
        return discretisation.check_convergence_order(
            discretisation_, order, counts=counts, seed=seed, name=name
        )

    return Check(
        name,
        "equivalences",
        discretisation.ORDER_CLAIM.format(what=type(discretisation_).__name__, order=order),
        discretisation.ORDER_SOURCE,
        run,
    )


def _ssm_init(name, init, formula):
    def run(quick, seed):
        sizes = (1, 8, 32) if quick else (1, 8, 64, 256)
        claim = eigenvalues.INIT_CLAIMS[name]
        return eigenvalues.check_ssm_init(init, formula, claim=claim, sizes=sizes, name=name)

    return Check(name, "eigenvalues", eigenvalues.INIT_CLAIMS[name], eigenvalues.INIT_SOURCE, run)


P = parameterisation
REGISTRY: tuple[Check, ...] = (
    # stability
    Check(
        "unit_disk",
        "stability",
        P.UNIT_DISK_CLAIM,
        P.SOURCE_PARAM,
        lambda quick, seed: P.check_unit_disk(
            grid=(201, 11) if quick else (1001, 21), samples=2000 if quick else 20_000, seed=seed
        ),
    ),
    Check(
        "rounding_edge",
        "stability",
        P.EDGE_CLAIM,
        P.EDGE_SOURCE,
        lambda quick, seed: P.check_rounding_edge(),
    ),
    Check(
        "leaves_disk_exponential",
        "stability",
        P.LEAVES_CLAIM.format(what=P.PLAIN_EXPONENTIAL.name),
        P.LEAVES_SOURCE,
        lambda quick, seed: P.check_leaves_disk(
            P.PLAIN_EXPONENTIAL, seed=seed, name="leaves_disk_exponential"
        ),
    ),
    Check(
        "leaves_disk_re_im",
        "stability",
        P.LEAVES_CLAIM.format(what=P.REAL_IMAGINARY.name),
        P.LEAVES_SOURCE,
        lambda quick, seed: P.check_leaves_disk(
            P.REAL_IMAGINARY, seed=seed, name="leaves_disk_re_im"
        ),
    ),
    Check(
        "bibo_bound",
        "stability",
        stability.BIBO_CLAIM,
        stability.SOURCE_BIBO,
        lambda quick, seed: stability.check_bibo(length=400 if quick else 4000, seed=seed),
    ),
    Check(
        "rglru_bound",
        "stability",
        stability.RGLRU_CLAIM,
        stability.SOURCE_RGLRU,
        lambda quick, seed: stability.check_rglru_bound(
            length=256 if quick else 2048, ascent_steps=20 if quick else 60, seed=seed
        ),
    ),
    Check(
        "model_stability_init",
        "stability",
        stability.MODEL_CLAIM,
        stability.MODEL_SOURCE,
        lambda quick, seed: stability.check_stability(
            (_subjects.lru_model(seed), _subjects.ssm_model(seed)), name="model_stability_init"
        ),
    ),
    Check(
        "model_stability_trained",
        "stability",
        stability.MODEL_CLAIM,
        stability.MODEL_SOURCE,
        _model_trained,
    ),
    # eigenvalues
    Check(
        "ring_init",
        "eigenvalues",
        eigenvalues.RING_CLAIM,
        eigenvalues.RING_SOURCE,
        lambda quick, seed: eigenvalues.check_ring_init(
            state_size=1024 if quick else 4096, seed=seed
        ),
    ),
    Check(
        "circular_law",
        "eigenvalues",
        eigenvalues.CIRCULAR_CLAIM,
        eigenvalues.CIRCULAR_SOURCE,
        lambda quick, seed: eigenvalues.check_circular_law(
            sizes=(16, 32, 64, 128) if quick else (16, 64, 256, 1024),
            eigenvalues_per_size=1024 if quick else 2048,
            seed=seed,
        ),
    ),
    _ssm_init("s4d_lin", recurrax.S4DLin(), eigenvalues.s4d_lin_formula),
    _ssm_init("s4d_inv", recurrax.S4DInv(), eigenvalues.s4d_inv_formula),
    _ssm_init("hippo_legs", recurrax.HiPPOLegS(), eigenvalues.hippo_legs_spectrum),
    # normalisation
    Check(
        "prop3_state_norm",
        "normalisation",
        normalisation.PROP3_CLAIM,
        normalisation.SOURCE,
        lambda quick, seed: normalisation.check_prop3(
            rings=((0.0, 0.9), (0.0, 0.99)) if quick else ((0.0, 0.9), (0.0, 0.99), (0.9, 0.999)),
            batch=2 if quick else 4,
            seed=seed,
        ),
    ),
    Check(
        "normalised_state_variance",
        "normalisation",
        normalisation.VARIANCE_CLAIM,
        normalisation.SOURCE,
        lambda quick, seed: normalisation.check_normalised_variance(
            state_size=128 if quick else 256, batch=16, seed=seed
        ),
    ),
    Check(
        "deep_stack_variance",
        "normalisation",
        normalisation.STACK_CLAIM,
        normalisation.SOURCE,
        lambda quick, seed: normalisation.check_deep_stack_variance(
            depth=6 if quick else 16, length=512 if quick else 2048, seed=seed
        ),
    ),
    # equivalences
    Check(
        "zoh_exact",
        "equivalences",
        discretisation.ZOH_CLAIM,
        discretisation.ZOH_SOURCE,
        lambda quick, seed: discretisation.check_held_input_exact(seed=seed),
    ),
    _order("order_bilinear", recurrax.Bilinear(), 2),
    _order("order_forward_euler", recurrax.ForwardEuler(), 1),
    _order("order_backward_euler", recurrax.BackwardEuler(), 1),
    Check(
        "scan_equals_convolution",
        "equivalences",
        equivalences.CONV_CLAIM,
        equivalences.CONV_SOURCE,
        lambda quick, seed: equivalences.check_scan_equals_convolution(
            _subjects.lrus(seed)[1:] + _subjects.ssms(seed, True)[1:]
            if quick
            else _subjects.lrus(seed) + _subjects.ssms(seed, False),
            seed=seed,
        ),
    ),
    Check(
        "ssm_to_lru",
        "equivalences",
        discretisation.SSM_LRU_CLAIM,
        discretisation.SSM_LRU_SOURCE,
        lambda quick, seed: discretisation.check_ssm_to_lru(_subjects.ssms(seed, quick), seed=seed),
    ),
    Check(
        "dense_to_diagonal",
        "equivalences",
        discretisation.DENSE_CLAIM,
        discretisation.DENSE_SOURCE,
        lambda quick, seed: discretisation.check_dense_diagonalisation(seed=seed),
    ),
    Check(
        "parallel_sequential_step",
        "equivalences",
        equivalences.PARALLEL_CLAIM,
        equivalences.PARALLEL_SOURCE,
        lambda quick, seed: equivalences.check_parallel_sequential_step(
            _subjects.recurrent_layers(seed, quick),
            methods=equivalences.DEFAULT_METHODS[:2] if quick else equivalences.DEFAULT_METHODS,
            seed=seed,
        ),
    ),
    Check(
        "log_space_equals_linear",
        "equivalences",
        equivalences.LOG_CLAIM,
        equivalences.LOG_SOURCE,
        lambda quick, seed: equivalences.check_log_space(
            [
                recurrax.MinGRU(3, 6, key=_subjects.key(seed, 40)),
                recurrax.MinLSTM(3, 6, key=_subjects.key(seed, 41)),
            ],
            length=200 if quick else 2000,
            seed=seed,
        ),
    ),
    Check(
        "minlstm_normalisation",
        "equivalences",
        equivalences.MINLSTM_CLAIM,
        equivalences.MINLSTM_SOURCE,
        lambda quick, seed: equivalences.check_minlstm_normalisation(
            length=1000 if quick else 10_000, seed=seed
        ),
    ),
    Check(
        "streaming",
        "equivalences",
        equivalences.STREAM_CLAIM,
        equivalences.STREAM_SOURCE,
        lambda quick, seed: equivalences.check_streaming(
            [
                recurrax.MinLSTM(3, 6, log_space=True, key=_subjects.key(seed, 50)),
                _subjects.lru_model(seed, dtype="float64"),
            ]
            + (
                []
                if quick
                else [
                    recurrax.DiagonalSSM(3, 8, delta="per_feature", key=_subjects.key(seed, 51)),
                    _subjects.minlstm_model(seed),
                ]
            ),
            pieces=(16,) if quick else (1, 7, 16),
            length=32 if quick else 64,
            seed=seed,
        ),
    ),
)


def select(
    checks: Sequence[Check] | None = None,
    *,
    only: Sequence[str] | None = None,
    family: Sequence[str] | None = None,
) -> list[Check]:
    """The checks named in `only` and/or of the families in `family` (all if neither).

    **Raises:** `ValueError` naming unknown check names or families."""
    checks = list(REGISTRY if checks is None else checks)
    names = [c.name for c in checks]
    families = sorted({c.family for c in checks})
    unknown = [n for n in (only or ()) if n not in names]
    if unknown:
        raise ValueError(f"`only` names unknown checks {unknown}; the checks are {names}.")
    bad = [f for f in (family or ()) if f not in families]
    if bad:
        raise ValueError(f"`family` names unknown families {bad}; the families are {families}.")
    return [
        c for c in checks if (not only or c.name in only) and (not family or c.family in family)
    ]


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _failure(check: Check, error: BaseException) -> CheckResult:
    return CheckResult(
        name=check.name,
        family=check.family,
        claim=check.claim,
        source=check.source,
        statistic_name="(the check raised an error)",
        statistic=math.nan,
        threshold=math.nan,
        comparison="<=",
        passed=False,
        details={
            "error": f"{type(error).__name__}: {error}",
            "raised at": _where(error),
        },
    )


def run_all(
    checks: Sequence[Check] | None = None,
    *,
    only: Sequence[str] | None = None,
    family: Sequence[str] | None = None,
    quick: bool = False,
    seed: int = 0,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run the selected checks (default: the whole registry) and return their results, in
    order. A check that raises is reported as a failure with the error in its details; each
    result's details get its running time in `"seconds"`. `on_result` is called with each
    result as soon as it is ready (the command line prints progress with it). Results are
    named by their registry entry."""
    results = []
    for check in select(checks, only=only, family=family):
        start = time.perf_counter()
        try:
            result = check.run(quick, seed)
            if not isinstance(result, CheckResult):
                raise TypeError(f"the check returned {type(result).__name__}, not a CheckResult")
        except Exception as error:  # a broken check is a failed check, reported
            result = _failure(check, error)
        seconds = time.perf_counter() - start
        # The registry's name is the one `--only` selects and the report files are named by.
        details = {**result.details, "seconds": seconds}
        result = dataclasses.replace(result, name=check.name, details=details)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 if there are results and every one passed, else 1."""
    return 0 if results and all(r.passed for r in results) else 1
