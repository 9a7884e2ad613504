r"""Stability of whole layers and models: the BIBO bound, and the spectral radius
and stability margin of every recurrent layer inside any model (LRU paper §3.3)."""

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from . import _subjects
from ._result import Check, CheckResult
from ._util import default_float, draw_unit_circle, new_figure, random_state
from .parameterisation import rounding_edge_prediction


FAMILY = "stability"
SOURCE_BIBO = "triangle inequality on the LRU recurrence (BIBO bound)"


# -- BIBO bound -----------------------------------------------------------------------------


def _states(step, h0, u_seq):
    """All states of `step` from `h0` over `u_seq`."""

    def body(carry, u_t):
        new = step(carry, u_t)[0]
        return new, new

    return jax.lax.scan(body, h0, u_seq)[1]


@eqx.filter_jit
def _layer_states(layer, h0, u):
    return jax.vmap(lambda u_seq: _states(lambda h, u_t: layer.step(h, u_t), h0, u_seq))(u)


BIBO_CLAIM = (
    "BIBO: with |u| <= M, |x_kj| <= |lambda_j|^k |x_0j| + gamma_j ||B_j||_1 M "
    "(1 - |lambda_j|^k) / (1 - |lambda_j|) for every step k and state j."
)


def check_bibo(
    layer=None,
    *,
    step: Callable | None = None,
    bound=1.0,
    length=2000,
    batch=6,
    seed=0,
    name="bibo_bound",
    plot=True,
) -> CheckResult:
    r"""Run `layer` (by `step`, default `layer.step`) from a random state on bounded inputs:
    uniform in $[-M, M]$, random signs $\pm M$, and the worst case for the slowest
    eigenvalue ($u_{k,h} = M\,\mathrm{sign}\operatorname{Re}(\lambda^{L-k}\bar B_{jh})$), and
    compare every $|x_{k,j}|$ with the bound computed from the layer's discrete system
    $(\lambda, \bar B = \operatorname{diag}(\gamma) B)$.

    **Arguments:** `layer`: an LRU, DiagonalSSM or DiscreteDiagonalSystem (default: an LRU
    with ring [0.9, 0.999]); `step`: `(h, u_t) -> (h, y_t)` to check instead of
    `layer.step`.

    **Statistic:** $\max_{k,j} |x_{k,j}| / \text{bound}_{k,j}$, which must not exceed
    $1 + 10^3\varepsilon$.
    """
    key_layer, key_h, key_u = jax.random.split(jax.random.key(seed), 3)
    if layer is None:
        layer = recurrax.LRU(4, 32, r_min=0.9, r_max=0.999, dtype=default_float(), key=key_layer)
    if isinstance(layer, recurrax.DiscreteDiagonalSystem):
        system = layer
    elif hasattr(layer, "discrete_system"):
        system = layer.discrete_system()
    else:
        raise ValueError(
            f"check_bibo: `layer` must be an LRU, a DiagonalSSM or a DiscreteDiagonalSystem, "
            f"got {type(layer).__name__}."
        )
    lam = np.asarray(system.lam).astype(np.complex128)
    b_bar = np.asarray(system.B).astype(np.complex128)
    real = np.finfo(system.B.dtype).dtype
    n, h = b_bar.shape
    # Inputs: uniform, random signs, and the worst case for the slowest eigenvalue.
    k_uni, k_sign = jax.random.split(key_u)
    uniform = np.asarray(jax.random.uniform(k_uni, (batch, length, h), real, -bound, bound))
    signs = bound * np.sign(np.asarray(jax.random.normal(k_sign, (batch, length, h), real)))
    slow = int(np.argmax(np.abs(lam)))
    powers = lam[slow] ** np.arange(length - 1, -1, -1)
    worst = bound * np.sign(np.real(powers[:, None] * b_bar[slow][None, :]))
    u = np.concatenate([uniform, signs, worst[None]]).astype(real)
    h0 = np.asarray(random_state(layer, key_h)).astype(np.complex128).reshape(n) * 0.5
    h0_layer = jnp.asarray(h0.reshape(np.shape(layer.init_state()))).astype(
        layer.init_state().dtype
    )

    if step is None:
        xs = _layer_states(layer, h0_layer, jnp.asarray(u))
    else:
        xs = jax.jit(jax.vmap(lambda u_seq: _states(step, h0_layer, u_seq)))(jnp.asarray(u))
    xs = np.asarray(xs).reshape(u.shape[0], length, n)
    modulus = np.abs(xs.astype(np.complex128))
    r = np.abs(lam)
    rk = r[None, :] ** np.arange(1, length + 1)[:, None]
    bound_kj = rk * np.abs(h0)[None] + np.sum(np.abs(b_bar), axis=1)[None] * bound * (1 - rk) / (
        1 - r[None]
    )
    ratio = modulus / bound_kj[None]
    finite = bool(np.all(np.isfinite(ratio)))
    worst_at = np.unravel_index(
        int(np.argmax(np.where(np.isfinite(ratio), ratio, np.inf))), ratio.shape
    )
    eps = float(np.finfo(real).eps)
    details = {
        "layer": type(layer).__name__,
        "states": n,
        "max |lambda|": float(np.max(r)),
        "input bound M": bound,
        "sequences (uniform, signs, worst case)": [batch, batch, 1],
        "length": length,
        "max ratio, random inputs": float(np.max(ratio[:-1])),
        "max ratio, worst-case input": float(np.max(ratio[-1])),
        "worst-case input, slowest state, last step": float(ratio[-1, -1, slow]),
        "worst at (sequence, step, state)": [int(i) for i in worst_at],
    }
    figures = []
    if plot:
        figure, ax = new_figure(width=6.0)
        steps = np.arange(1, length + 1)
        ax.plot(steps, modulus[-1, :, slow], label="|x_k|, worst-case input")
        ax.plot(steps, modulus[0, :, slow], label="|x_k|, uniform input")
        ax.plot(steps, bound_kj[:, slow], "--", color="black", label="BIBO bound")
        ax.set_xscale("log")
        ax.set_xlabel("step k")
        ax.set_title(f"Slowest state (|λ| = {np.abs(lam[slow]):.4f}) against the BIBO bound")
        ax.legend(fontsize=8)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=BIBO_CLAIM,
        source=SOURCE_BIBO,
        statistic_name="max |x_kj| / bound_kj",
        statistic=float(np.max(ratio)) if finite else math.nan,
        threshold=1.0 + 1e3 * eps,
        comparison="<=",
        details=details,
        figures=figures,
    )


# -- spectral radius of any model -----------------------------------------------------------

_LAYERS = (
    recurrax.LRU,
    recurrax.DiagonalSSM,
    recurrax.DiscreteDiagonalSystem,
    recurrax.DenseLinearSystem,
)

MODEL_SOURCE = "LRU paper §3.3 (stable exponential parameterisation)"
MODEL_CLAIM = (
    "Every time-invariant recurrent layer of the model is stable: spectral radius "
    "max |lambda| < 1 (for the LRU also in floating point, at initialisation and after "
    "training)."
)


def recurrent_eigenvalues(model) -> list[tuple[str, object, np.ndarray]]:
    """`(path, layer, eigenvalues)` for every LRU, DiagonalSSM, DiscreteDiagonalSystem and
    DenseLinearSystem inside `model` (any pytree; the model may be such a layer itself). The
    eigenvalues are those of the discrete recurrence, as complex128 NumPy arrays."""
    found = []
    flat = jax.tree_util.tree_flatten_with_path(model, is_leaf=lambda x: isinstance(x, _LAYERS))
    for path, leaf in flat[0]:
        if not isinstance(leaf, _LAYERS):
            continue
        if isinstance(leaf, recurrax.LRU):
            lam = leaf.eigenvalues()
        elif isinstance(leaf, recurrax.DiagonalSSM):
            lam = leaf.discrete_system().lam
        elif isinstance(leaf, recurrax.DiscreteDiagonalSystem):
            lam = leaf.lam
        else:
            lam = np.linalg.eigvals(np.asarray(leaf.A).astype(np.complex128))
        where = jax.tree_util.keystr(path) or "(the model itself)"
        found.append((where, leaf, np.asarray(lam).astype(np.complex128).ravel()))
    return found


def check_stability(model, *, name="model_stability", plot=True) -> CheckResult:
    r"""The spectral radius and stability margin of every recurrent layer of `model`.

    Walks any pytree or Equinox module (a [`recurrax.SequenceModel`][], a block, a bare layer)
    and reads the eigenvalues of each LRU (`eigenvalues()`), DiagonalSSM
    (`discrete_system().lam`), DiscreteDiagonalSystem (`lam`) and DenseLinearSystem
    (eigenvalues of `A`). For an LRU it also reports how close $\nu_{\log}$ comes to the
    floating-point edge $\log(\varepsilon/4)$ below which $\exp(-e^{\nu_{\log}})$ rounds to 1,
    and how many eigenvalues sit on the floor of [`recurrax.stability_floor`][].

    **Statistic:** the largest spectral radius over the layers; stable if $< 1$.

    **Raises:** `ValueError` if `model` holds no such layer.
    """
    layers = recurrent_eigenvalues(model)
    if not layers:
        raise ValueError(
            "check_stability: `model` contains no time-invariant recurrent layer (LRU, "
            "DiagonalSSM, DiscreteDiagonalSystem or DenseLinearSystem); minGRU/minLSTM gates "
            "lie in (0, 1) by construction and have nothing to check here."
        )
    per_layer = {}
    for where, layer, lam in layers:
        radius = float(np.max(np.abs(lam)))
        info = {
            "layer": type(layer).__name__,
            "eigenvalues": int(lam.size),
            "spectral radius": radius,
            "margin 1 - radius": 1.0 - radius,
            "min nu = -log|lambda|": -math.log(radius) if 0 < radius else math.inf,
        }
        if isinstance(layer, recurrax.LRU):
            dtype = np.dtype(layer.nu_log.dtype)
            nu_log = np.asarray(layer.nu_log).astype(np.float64)
            edge = rounding_edge_prediction(dtype)
            info["min nu_log"] = float(np.min(nu_log))
            info["float edge log(eps/4)"] = edge
            info["min nu_log - edge"] = float(np.min(nu_log)) - edge
            info["on the stability floor"] = int(
                np.sum(np.exp(nu_log) < recurrax.stability_floor(dtype))
            )
        per_layer[where] = info
    statistic = max(info["spectral radius"] for info in per_layer.values())
    figures = [_spectrum_figure(layers)] if plot else []
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=MODEL_CLAIM,
        source=MODEL_SOURCE,
        statistic_name="max spectral radius",
        statistic=statistic,
        threshold=1.0,
        comparison="<",
        details={"layers": per_layer},
        figures=figures,
    )


def _spectrum_figure(layers):
    figure, (ax, hist) = new_figure(2, width=5.0)
    draw_unit_circle(ax)
    for where, _, lam in layers:
        ax.scatter(lam.real, lam.imag, s=6, label=where[:30])
        margin = np.maximum(1.0 - np.abs(lam), 1e-18)
        hist.hist(np.log10(margin), bins=30, histtype="step", label=where[:30])
    ax.set_title("Eigenvalues of the recurrent layers")
    ax.legend(fontsize=6)
    hist.set_xlabel("log10(1 − |λ|)")
    hist.set_ylabel("count")
    hist.set_title("Stability margins")
    return figure


def train_briefly(model, *, steps=30, length=128, batch=8, learning_rate=1e-2, seed=0):
    r"""A few optimiser steps of a [`recurrax.SequenceModel`][] with feature inputs and no
    BatchNorm on random data, with a long-memory target (the running sum of the first input
    channel, divided by $\sqrt{t}$), which pushes the eigenvalues towards the unit circle.
    Uses [`recurrax.make_optimizer`][] (no weight decay, `lr_factor` 1) and
    [`recurrax.make_train_step`][].

    **Returns:** `(model, details)` with the losses before and after.
    """
    if not isinstance(model, recurrax.SequenceModel) or model.input_size is None:
        raise ValueError(
            "train_briefly: `model` must be a recurrax.SequenceModel with feature inputs "
            f"(input_size set), got {type(model).__name__}."
        )
    dtype = model.encoder.weight.dtype
    k_x, k_train = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k_x, (batch, length, model.input_size), dtype)
    scale = jnp.sqrt(jnp.arange(1, length + 1, dtype=dtype))
    running = jnp.cumsum(x[..., 0], axis=1) / scale[None, :]
    out_shape = jax.eval_shape(model, x[0]).shape
    target = running if len(out_shape) == 2 else running[:, -1]
    target = jnp.broadcast_to(target[..., None], (batch, *out_shape))

    def loss_fn(model, state, batch_data, key):
        inputs, targets = batch_data
        y = jax.vmap(model)(inputs)
        loss = jnp.mean((y - targets) ** 2)
        return loss, (state, {})

    optimizer = recurrax.make_optimizer(model, learning_rate=learning_rate, weight_decay=0.0)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    train = recurrax.make_train_step(optimizer, loss_fn)
    losses = []
    for i in range(steps):
        model, _, opt_state, metrics = train(
            model, None, opt_state, (x, target), jax.random.fold_in(k_train, i)
        )
        losses.append(float(metrics["loss"]))
    details = {
        "training steps": steps,
        "learning rate": learning_rate,
        "loss at the first step": losses[0] if losses else math.nan,
        "loss at the last step": losses[-1] if losses else math.nan,
    }
    return model, details


# -- the RG-LRU's bounded state -------------------------------------------------------------

SOURCE_RGLRU = "Griffin (De et al., 2024): the RG-LRU's input normalisation sqrt(1 - a_t^2)"
RGLRU_CLAIM = (
    "RG-LRU from h_0 = 0 with |x| <= M: |h_t| <= M min(sqrt(t), sqrt((1 + a_max) / (1 - a_max))) "
    "per channel, a_max = max_k a_k (h_t^2 <= h_{t-1}^2 + (i_t x_t)^2 by Cauchy-Schwarz); "
    "|h_t| <= M itself does not hold."
)


@eqx.filter_jit
def _adversarial_inputs(layer, z, bound, steps):
    """Projected sign-gradient ascent of sum_c h_{L,c} over inputs x = M tanh(z)."""

    def objective(z):
        return jnp.sum(layer(bound * jnp.tanh(z))[-1])

    def body(z, _):
        return z + 0.25 * jnp.sign(jax.grad(objective)(z)), None

    z, _ = jax.lax.scan(body, z, None, length=steps)
    return bound * jnp.tanh(z)


def check_rglru_bound(
    layer=None,
    *,
    step: Callable | None = None,
    bound=1.0,
    length=512,
    batch=3,
    ascent_steps=40,
    seed=0,
    name="rglru_bound",
    plot=True,
) -> CheckResult:
    r"""Run an RG-LRU (by `step`, default `layer.step`) from $h_0 = 0$ on inputs with
    $|x| \le M$ (uniform, random signs, constant $\pm M$, and inputs found by gradient ascent
    on $\sum_c h_{L,c}$) and compare every $|h_{t,c}|$ with
    $M \min(\sqrt t, \sqrt{(1 + \bar a_c)/(1 - \bar a_c)})$, $\bar a_c = \max_t a_{t,c}$ of
    that sequence.

    Why this bound and not $|h_t| \le M$: with $a_t = \cos\phi_t$ the step is
    $h_t = \cos\phi_t\, h_{t-1} + \sin\phi_t\, u_t$, so $h_t^2 \le h_{t-1}^2 + u_t^2$
    (Cauchy–Schwarz) and $|h_t| \le \sqrt t\, M$; and $S \mapsto \bar a S + \sqrt{1-\bar a^2}$
    has the fixed point $\sqrt{(1+\bar a)/(1-\bar a)}$, which bounds the gain when every
    $a_t \le \bar a$. A constant input exceeds $M$ (gain $\sqrt{(1+a)/(1-a)} > 1$): the
    normalisation preserves the variance of white noise, not the largest value.

    **Arguments:** `layer`: a [`recurrax.RGLRU`][] (default: width 8, Griffin's ring);
    `step`: `(h, x_t) -> (h, y_t)` to check instead of `layer.step` (its gates are still
    read from `layer`).

    **Statistic:** $\max_{t,c} |h_{t,c}| / \text{bound}_{t,c}$, which must not exceed
    $1 + 10^3\varepsilon$.
    """
    key_layer, key_u, key_z = jax.random.split(jax.random.key(seed), 3)
    if layer is None:
        layer = recurrax.RGLRU(8, dtype=default_float(), key=key_layer)
    if not isinstance(layer, recurrax.RGLRU):
        raise ValueError(
            f"check_rglru_bound: `layer` must be an RGLRU, got {type(layer).__name__}."
        )
    real = np.dtype(layer.a_param.dtype)
    h = layer.size
    k_uni, k_sign = jax.random.split(key_u)
    uniform = jax.random.uniform(k_uni, (batch, length, h), real, -bound, bound)
    signs = bound * jnp.sign(jax.random.normal(k_sign, (batch, length, h), real))
    constant = bound * jnp.stack([jnp.ones((length, h), real), -jnp.ones((length, h), real)])
    z0 = jax.random.normal(key_z, (length, h), real)
    ascent = _adversarial_inputs(layer, z0, jnp.asarray(bound, real), ascent_steps)[None]
    u = jnp.concatenate([uniform, signs, constant, ascent])
    h0 = layer.init_state()
    if step is None:
        hs = _layer_states(layer, h0, u)
    else:
        hs = jax.jit(jax.vmap(lambda u_seq: _states(step, h0, u_seq)))(u)
    modulus = np.abs(np.asarray(hs, np.float64))
    a = np.exp(np.asarray(jax.vmap(layer.log_transition)(u), np.float64))
    a_max = np.max(a, axis=1, keepdims=True)  # per sequence and channel
    t = np.arange(1, length + 1)[None, :, None]
    gain = np.minimum(np.sqrt(t), np.sqrt((1 + a_max) / (1 - a_max)))
    bound_tc = bound * gain
    ratio = modulus / bound_tc
    finite = bool(np.all(np.isfinite(ratio)))
    worst_at = np.unravel_index(
        int(np.argmax(np.where(np.isfinite(ratio), ratio, np.inf))), ratio.shape
    )
    eps = float(np.finfo(real).eps)
    kinds = ["uniform"] * batch + ["signs"] * batch + ["constant +M", "constant -M", "ascent"]
    details = {
        "layer": f"RGLRU(size={h}, c={layer.c}, num_heads={layer.num_heads})",
        "input bound M": bound,
        "length": length,
        "sequences (uniform, signs, constant, ascent)": [batch, batch, 2, 1],
        "max |h| / M (the convex-combination bound |h| <= M would need <= 1)": float(
            np.max(modulus) / bound
        ),
        "max ratio to the bound, per input kind": {
            kind: float(np.max(ratio[[i for i, k in enumerate(kinds) if k == kind]]))
            for kind in dict.fromkeys(kinds)
        },
        "worst at (sequence, step, channel)": [int(i) for i in worst_at],
    }
    figures = []
    if plot:
        figure, ax = new_figure(width=6.0)
        seq, _, channel = (int(i) for i in worst_at)
        steps = np.arange(1, length + 1)
        ax.plot(steps, modulus[seq, :, channel], label=f"|h_t|, {kinds[seq]} input")
        ax.plot(steps, bound_tc[seq, :, channel], "--", color="black", label="bound")
        ax.axhline(bound, color="grey", linestyle=":", label="M = max |x|")
        ax.set_xscale("log")
        ax.set_xlabel("step t")
        ax.set_title("RG-LRU state against M min(sqrt(t), sqrt((1 + a)/(1 - a)))")
        ax.legend(fontsize=8)
        figures.append(figure)
    return CheckResult.measured(
        name=name,
        family=FAMILY,
        claim=RGLRU_CLAIM,
        source=SOURCE_RGLRU,
        statistic_name="max |h_tc| / bound_tc",
        statistic=float(np.max(ratio)) if finite else math.nan,
        threshold=1.0 + 1e3 * eps,
        comparison="<=",
        details=details,
        figures=figures,
    )


# -- the command line's checks ---------------------------------------------------------------


def _model_trained(quick, seed):
    model = _subjects.lru_model(seed)
    steps = 10 if quick else 100
    model, details = train_briefly(model, steps=steps, length=64 if quick else 256, seed=seed)
    result = check_stability(model, name="model_stability_trained")
    return dataclasses.replace(result, details={**details, **result.details})


CHECKS: tuple[Check, ...] = (
    Check(
        "bibo_bound",
        FAMILY,
        BIBO_CLAIM,
        SOURCE_BIBO,
        lambda quick, seed: check_bibo(length=400 if quick else 4000, seed=seed),
    ),
    Check(
        "model_stability_init",
        FAMILY,
        MODEL_CLAIM,
        MODEL_SOURCE,
        lambda quick, seed: check_stability(
            (_subjects.lru_model(seed), _subjects.ssm_model(seed)), name="model_stability_init"
        ),
    ),
    Check("model_stability_trained", FAMILY, MODEL_CLAIM, MODEL_SOURCE, _model_trained),
    Check(
        "rglru_bound",
        FAMILY,
        RGLRU_CLAIM,
        SOURCE_RGLRU,
        lambda quick, seed: check_rglru_bound(
            length=256 if quick else 2048, ascent_steps=20 if quick else 60, seed=seed
        ),
    ),
)
