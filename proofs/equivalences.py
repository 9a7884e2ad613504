r"""Equivalences of evaluations: scan = convolution, parallel = sequential = step, log space =
linear space, minLSTM's normalised gates, and streaming in pieces = one call (LRU paper §3,
minRNN paper §2-§3)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from . import _subjects
from ._result import Check, CheckResult
from ._util import (
    as_sequence,
    label,
    layer_dtype,
    new_figure,
    random_state,
    relative_error,
    tolerance_for,
    with_method,
    worst_case,
)


FAMILY = "equivalences"
DEFAULT_METHODS = (
    recurrax.SequentialScan(),
    recurrax.AssociativeScan(),
    recurrax.ChunkedScan(chunk_size=16),
)


@eqx.filter_jit
def _call(layer, x):
    return layer(x)


@eqx.filter_jit
def _scan(layer, h, x):
    return layer.scan(h, x)


@eqx.filter_jit
def _convolve(layer, x):
    return layer.convolve(x)


def _inputs(subject, length, key):
    """Random inputs for a layer or model: tokens for an embedding encoder, else features."""
    dtype = layer_dtype(subject)
    vocab = getattr(subject, "vocab_size", None)
    if isinstance(subject, recurrax.SequenceModel) and vocab is not None:
        return jax.random.randint(key, (length,), 0, vocab)
    return 2 * jax.random.normal(key, (length, subject.input_size), dtype)


def _tolerances(subjects, tolerance):
    return [tolerance_for(layer_dtype(s)) if tolerance is None else tolerance for s in subjects]


# -- scan = convolution -----------------------------------------------------------------------

CONV_SOURCE = "LRU paper §3 (linear recurrence as convolution)"
CONV_CLAIM = (
    "A time-invariant layer from a zero state is the causal convolution y_k = sum_j K_j "
    "u_{k-j} + D u_k with K_j = Re(C diag(lambda^j) B_bar): the scan equals the FFT "
    "convolution (also bidirectional, per-state and per-feature)."
)


def check_scan_equals_convolution(
    layers,
    *,
    convolve: Callable | None = None,
    length=300,
    tolerance=None,
    seed=0,
    name="scan_equals_convolution",
) -> CheckResult:
    """`layer(x)` (the recurrence) against `convolve(layer, x)` (default `layer.convolve(x)`).

    **Statistic:** the largest relative error."""
    convolve = _convolve if convolve is None else convolve
    layers = as_sequence(layers)
    errors, per_layer = [], {}
    for i, layer in enumerate(layers):
        x = _inputs(layer, length, jax.random.key(seed + i))
        error = relative_error(convolve(layer, x), _call(layer, x))
        errors.append(error)
        per_layer[f"{i}: {label(layer)}"] = error
    return worst_case(
        name=name,
        family=FAMILY,
        claim=CONV_CLAIM,
        source=CONV_SOURCE,
        errors=errors,
        tolerances=_tolerances(layers, tolerance),
        details={"length": length, "relative error per layer": per_layer},
    )


# -- parallel = sequential = step --------------------------------------------------------------

PARALLEL_SOURCE = "Blelloch (associative scan), minRNN paper §3 (parallel and sequential modes)"
PARALLEL_CLAIM = (
    "All evaluation modes agree: a python loop of layer.step, the sequential scan, the "
    "associative (parallel) scan and the chunked scan give the same states and outputs, "
    "from a nonzero carried state."
)


@eqx.filter_jit
def _step(layer, h, x_t):
    return layer.step(h, x_t)


def step_loop(step: Callable, layer, h, x):
    """`(h_last, y)` from a python loop of `step(layer, h, x_t)`."""
    ys = []
    for t in range(x.shape[0]):
        h, y_t = step(layer, h, x[t])
        ys.append(y_t)
    return h, jnp.stack(ys)


def check_parallel_sequential_step(
    layers,
    *,
    step: Callable | None = None,
    methods=DEFAULT_METHODS,
    length=64,
    tolerance=None,
    seed=0,
    name="parallel_sequential_step",
) -> CheckResult:
    """For each layer and scan strategy, `layer.scan(h0, x)` with that strategy against a
    python loop of `step(layer, h, x_t)` (default `layer.step`), from a random state.

    **Statistic:** the largest relative error of the final state and the outputs."""
    step = _step if step is None else step
    layers = as_sequence(layers)
    errors, tolerances, per_layer = [], [], {}
    for i, layer in enumerate(layers):
        k_h, k_x = jax.random.split(jax.random.key(seed + i))
        h0, x = random_state(layer, k_h), _inputs(layer, length, k_x)
        h_ref, y_ref = step_loop(step, layer, h0, x)
        found = {}
        for method in methods:
            h, y = _scan(with_method(layer, method), h0, x)
            found[type(method).__name__] = max(relative_error(h, h_ref), relative_error(y, y_ref))
        errors.append(max(found.values()))
        tolerances += _tolerances([layer], tolerance)
        per_layer[f"{i}: {label(layer)}"] = found
    return worst_case(
        name=name,
        family=FAMILY,
        claim=PARALLEL_CLAIM,
        source=PARALLEL_SOURCE,
        errors=errors,
        tolerances=tolerances,
        details={"length": length, "relative error against the step loop": per_layer},
    )


# -- log space = linear space --------------------------------------------------------------

LOG_SOURCE = "minRNN paper §3 (log-space implementation)"
LOG_CLAIM = (
    "minGRU/minLSTM in log space (log-space scan of log a, log b with log g) compute the same "
    "h as in linear space with the same parameters, from a zero and a positive state."
)


def twin(layer, log_space: bool):
    """The same minGRU/minLSTM (same parameters) evaluated in log or linear space."""
    if not isinstance(layer, (recurrax.MinGRU, recurrax.MinLSTM)):
        raise ValueError(
            f"twin: `layer` must be a recurrax.MinGRU or MinLSTM, got {type(layer).__name__}."
        )
    if layer.candidate != "g" or layer.initial_state is not None:
        raise ValueError(
            "twin: `layer` must use the positive candidate g and no learned initial state "
            f"(log space needs both), got candidate={layer.candidate!r} and "
            f"learn_initial_state={layer.initial_state is not None}."
        )
    options = {"forget_bias": layer.forget_bias} if isinstance(layer, recurrax.MinLSTM) else {}
    skeleton = type(layer)(
        layer.input_size,
        layer.hidden_size,
        log_space=log_space,
        method=layer.method,
        dtype=layer_dtype(layer),
        key=jax.random.key(0),
        **options,
    )
    return jax.tree.unflatten(jax.tree.structure(skeleton), jax.tree.leaves(layer))


def check_log_space(
    layers,
    *,
    evaluate_log: Callable | None = None,
    length=500,
    tolerance=None,
    seed=0,
    name="log_space_equals_linear",
) -> CheckResult:
    """`twin(layer, False).scan(h0, x)` against `evaluate_log(twin(layer, True), h0, x)`
    (default: its `scan`), for `h0` zero and positive.

    **Statistic:** the largest relative error of the final state and the outputs."""
    evaluate_log = _scan if evaluate_log is None else evaluate_log
    layers = as_sequence(layers)
    errors, per_layer = [], {}
    for i, layer in enumerate(layers):
        linear, log = twin(layer, False), twin(layer, True)
        k_h, k_x = jax.random.split(jax.random.key(seed + i))
        x = 3 * _inputs(layer, length, k_x)
        found = []
        for h0 in (linear.init_state(), random_state(linear, k_h)):
            h_lin, y_lin = _scan(linear, h0, x)
            h_log, y_log = evaluate_log(log, h0, x)
            found.append(max(relative_error(h_log, h_lin), relative_error(y_log, y_lin)))
        errors.append(max(found))
        per_layer[f"{i}: {type(layer).__name__}"] = {"zero h0": found[0], "positive h0": found[1]}
    return worst_case(
        name=name,
        family=FAMILY,
        claim=LOG_CLAIM,
        source=LOG_SOURCE,
        errors=errors,
        tolerances=_tolerances(layers, tolerance),
        details={"length": length, "relative error": per_layer},
    )


# -- minLSTM normalisation ---------------------------------------------------------------------

MINLSTM_SOURCE = "minRNN paper §2.2 (minLSTM, time-independent scale)"
MINLSTM_CLAIM = (
    "minLSTM normalises its gates, f' + i' = 1, so h_t is a convex combination of h_0 and the "
    "candidates: it stays within their range whatever the length (time-independent output "
    "scale)."
)


def _candidate(layer, x):
    pre = np.asarray(x, np.float64) @ np.asarray(layer.linear_h.weight, np.float64).T
    pre = pre + np.asarray(layer.linear_h.bias, np.float64)
    return np.asarray(recurrax.g(jnp.asarray(pre))) if layer.candidate == "g" else pre


def _hull_violation(h, h0, candidate):
    """How far the states leave the running range of [h0, c_1..c_t], relative to its size."""
    lo = np.minimum.accumulate(np.concatenate([h0[None], candidate]), axis=0)[1:]
    hi = np.maximum.accumulate(np.concatenate([h0[None], candidate]), axis=0)[1:]
    scale = max(float(np.max(np.abs(candidate))), float(np.max(np.abs(h0))), 1e-300)
    excess = np.maximum(np.maximum(h - hi, lo - h), 0.0)
    return float(np.max(excess)) / scale if np.all(np.isfinite(h)) else np.inf


def check_minlstm_normalisation(
    layers=None,
    *,
    gates: Callable | None = None,
    length=10_000,
    tolerance=None,
    seed=0,
    name="minlstm_normalisation",
    plot=True,
) -> CheckResult:
    r"""$|f' + i' - 1|$ from `gates(layer, x)` (default `layer.gates(x)`), and the states both
    of `layer.scan` and of $h_t = f'_t h_{t-1} + i'_t \tilde h_t$ built from `gates`, against
    the running range of $h_0$ and the candidates, for random inputs and for a constant
    input, over `length` steps.

    **Statistic:** the larger of $\max|f' + i' - 1|$ and the relative range violation."""
    if layers is None:
        keys = jax.random.split(jax.random.key(seed), 2)
        layers = [
            recurrax.MinLSTM(4, 16, candidate=c, key=k) for c, k in zip(("g", "linear"), keys)
        ]
    gates = (lambda layer, x: layer.gates(x)) if gates is None else gates
    layers = as_sequence(layers)
    errors, per_layer, curves = [], {}, []
    for i, layer in enumerate(layers):
        k_h, k_x, k_c = jax.random.split(jax.random.key(seed + 1 + i), 3)
        h0 = random_state(layer, k_h)
        x_random = 3 * _inputs(layer, length, k_x)
        x_const = jnp.broadcast_to(_inputs(layer, 1, k_c), x_random.shape)
        found = {}
        for kind, x in (("random input", x_random), ("constant input", x_const)):
            f, i_gate = (np.asarray(g, np.float64) for g in gates(layer, x))
            candidate = _candidate(layer, x)
            h_gates = np.empty_like(candidate)
            h = np.asarray(h0, np.float64)
            for t in range(length):
                h = f[t] * h + i_gate[t] * candidate[t]
                h_gates[t] = h
            _, y = _scan(layer, h0, x)
            found[kind] = {
                "max |f' + i' - 1|": float(np.max(np.abs(f + i_gate - 1))),
                "range violation of layer.scan": _hull_violation(
                    np.asarray(y, np.float64), np.asarray(h0, np.float64), candidate
                ),
                "range violation of the gate recurrence": _hull_violation(
                    h_gates, np.asarray(h0, np.float64), candidate
                ),
            }
            if kind == "constant input":
                curves.append((label(layer), h_gates, candidate, x, layer, h0))
        errors.append(max(v for d in found.values() for v in d.values()))
        per_layer[f"{i}: {label(layer)}"] = found
    return worst_case(
        name=name,
        family=FAMILY,
        claim=MINLSTM_CLAIM,
        source=MINLSTM_SOURCE,
        errors=errors,
        tolerances=_tolerances(layers, tolerance),
        details={"length": length, "layers": per_layer},
        figures=[_minlstm_figure(curves)] if plot else [],
        statistic_name="max(|f' + i' - 1|, relative range violation)",
    )


def _minlstm_figure(curves):
    figure, ax = new_figure(width=6.0)
    for name, h, candidate, x, layer, h0 in curves:
        steps = np.arange(1, h.shape[0] + 1)
        scale = max(np.max(np.abs(candidate)), np.max(np.abs(np.asarray(h0))))
        ax.plot(steps, np.max(np.abs(h), axis=1) / scale, label=f"{name}: f', i'")
        x = np.asarray(x, np.float64)
        f, i = (
            1 / (1 + np.exp(-(x @ np.asarray(lin.weight, np.float64).T + np.asarray(lin.bias))))
            for lin in (layer.linear_f, layer.linear_i)
        )
        raw, state = np.empty_like(h), np.asarray(h0, np.float64)
        for t in range(h.shape[0]):
            state = f[t] * state + i[t] * candidate[t]
            raw[t] = state
        ax.plot(steps, np.max(np.abs(raw), axis=1) / scale, "--", label=f"{name}: raw f, i")
    ax.axhline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step t (constant input)")
    ax.set_ylabel("max |h_t| / max(|h_0|, |candidate|)")
    ax.set_title("Output scale: normalised gates against unnormalised")
    ax.legend(fontsize=7)
    return figure


# -- streaming ---------------------------------------------------------------------------------

STREAM_SOURCE = "chunked evaluation of a linear recurrence (carried state)"
STREAM_CLAIM = (
    "Streaming is exact: running a sequence in pieces with the carried state, or one step "
    "at a time, gives the one-call outputs (layers and whole models, convolution histories "
    "included)."
)


def _pieces(length, sizes):
    cuts, position = [], 0
    for size in sizes:
        if position + size >= length:
            break
        position += size
        cuts.append(position)
    return cuts


@eqx.filter_jit
def _model_step(model, h, x_t):
    return model.step(h, x_t)


def check_streaming(
    subjects,
    *,
    scan: Callable | None = None,
    pieces=(1, 7, 16),
    length=64,
    tolerance=None,
    seed=0,
    name="streaming",
) -> CheckResult:
    """For each layer or [`recurrax.SequenceModel`][]: the one-call outputs
    (`subject.scan(init_state(), x)`, and `subject(x)` for layers and `pooling="none"`
    models) against `scan(subject, h, piece)` (default `subject.scan`) over pieces of sizes
    `pieces` (the rest last) with the carried state, and against one `step` at a time.

    **Statistic:** the largest relative error of the outputs."""
    scan = _scan if scan is None else scan
    subjects = as_sequence(subjects)
    errors, per_subject = [], {}
    for i, subject in enumerate(subjects):
        x = _inputs(subject, length, jax.random.key(seed + i))
        h0 = subject.init_state()
        _, y_one = _scan(subject, h0, x)
        found = {}
        is_model = isinstance(subject, recurrax.SequenceModel)
        if not is_model or subject.pooling == "none":
            found["call"] = relative_error(_call(subject, x), y_one)
        h, ys = h0, []
        for piece in jnp.split(x, _pieces(length, pieces)):
            h, y = scan(subject, h, piece)
            ys.append(y)
        found["pieces"] = relative_error(jnp.concatenate(ys), y_one)
        stepper = _model_step if is_model else _step
        found["steps"] = relative_error(step_loop(stepper, subject, h0, x)[1], y_one)
        errors.append(max(found.values()))
        per_subject[f"{i}: {label(subject)}"] = found
    return worst_case(
        name=name,
        family=FAMILY,
        claim=STREAM_CLAIM,
        source=STREAM_SOURCE,
        errors=errors,
        tolerances=_tolerances(subjects, tolerance),
        details={"length": length, "pieces": list(pieces), "relative error": per_subject},
    )


# -- the command line's checks ---------------------------------------------------------------

CHECKS: tuple[Check, ...] = (
    Check(
        "scan_equals_convolution",
        FAMILY,
        CONV_CLAIM,
        CONV_SOURCE,
        lambda quick, seed: check_scan_equals_convolution(
            _subjects.lrus(seed)[1:] + _subjects.ssms(seed, True)[1:]
            if quick
            else _subjects.lrus(seed) + _subjects.ssms(seed, False),
            seed=seed,
        ),
    ),
    Check(
        "parallel_sequential_step",
        FAMILY,
        PARALLEL_CLAIM,
        PARALLEL_SOURCE,
        lambda quick, seed: check_parallel_sequential_step(
            _subjects.recurrent_layers(seed, quick),
            methods=DEFAULT_METHODS[:2] if quick else DEFAULT_METHODS,
            seed=seed,
        ),
    ),
    Check(
        "log_space_equals_linear",
        FAMILY,
        LOG_CLAIM,
        LOG_SOURCE,
        lambda quick, seed: check_log_space(
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
        FAMILY,
        MINLSTM_CLAIM,
        MINLSTM_SOURCE,
        lambda quick, seed: check_minlstm_normalisation(
            length=1000 if quick else 10_000, seed=seed
        ),
    ),
    Check(
        "streaming",
        FAMILY,
        STREAM_CLAIM,
        STREAM_SOURCE,
        lambda quick, seed: check_streaming(
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
