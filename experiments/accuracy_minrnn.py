"""`python -m experiments accuracy minrnn`: float32 error of minGRU/minLSTM in log space and
in linear space at long length, against a float64 loop of the paper's sequential equations.

Each layer (width 64, input 16) is built in float32; the reference runs the same weights in
float64. Error = max|h_float32 - h_float64| / max|h_float64| over all steps. Two regimes:
the default initialisation with standard-normal inputs, and long memory (minGRU's update-gate
bias shifted by -6, minLSTM's forget-gate bias by +6: a_t close to 1, memory of hundreds of
steps), where rounding errors persist longest. For comparison, the common public log-space
form (A = cumsum(log a), log h = A + logcumsumexp(log b − A)) on the same coefficients.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import recurrax

from ._timing import emit_report, Machine, markdown_table
from .accuracy_engine import heinsen_form


INPUT, HIDDEN = 16, 64
STRATEGIES = {
    "default (AutoScan)": None,
    "SequentialScan": recurrax.SequentialScan(),
    "AssociativeScan": recurrax.AssociativeScan(),
}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference(layer, x) -> np.ndarray:
    """The paper's sequential equations in float64 over the layer's own weights."""
    x = np.asarray(x, np.float64)

    def affine(lin):
        return x @ np.asarray(lin.weight, np.float64).T + np.asarray(lin.bias, np.float64)

    pre = affine(layer.linear_h)
    cand = np.where(pre >= 0, pre + 0.5, _sigmoid(pre))
    if isinstance(layer, recurrax.MinGRU):
        z = _sigmoid(affine(layer.linear_z))
        keep, take = 1 - z, z
    else:
        f, i = _sigmoid(affine(layer.linear_f)), _sigmoid(affine(layer.linear_i))
        keep, take = f / (f + i), i / (f + i)
    drive = take * cand
    h = np.zeros(layer.hidden_size)
    out = np.empty_like(drive)
    for t in range(x.shape[0]):
        h = keep[t] * h + drive[t]
        out[t] = h
    return out


def _layers(regime: str, log_space: bool = False, method=None):
    key = jax.random.key(0)
    common = dict(log_space=log_space, method=method, dtype=jnp.float32, key=key)
    gru = recurrax.MinGRU(INPUT, HIDDEN, **common)
    lstm = recurrax.MinLSTM(INPUT, HIDDEN, **common)
    if regime == "long memory":
        gru = eqx.tree_at(lambda m: m.linear_z.bias, gru, gru.linear_z.bias - 6.0)
        lstm = eqx.tree_at(lambda m: m.linear_f.bias, lstm, lstm.linear_f.bias + 6.0)
    return {"minGRU": gru, "minLSTM": lstm}


def measure(length: int, log=print) -> list[tuple[str, str, str, str, float]]:
    rows = []
    x = jax.random.normal(jax.random.key(1), (length, INPUT), jnp.float32)
    for regime in ("default init", "long memory"):
        for name, layer in _layers(regime).items():
            ref = reference(layer, x)
            scale = np.max(np.abs(ref))
            for space in ("linear", "log"):
                for label, method in STRATEGIES.items():
                    variant = _layers(regime, space == "log", method)[name]
                    h = np.asarray(eqx.filter_jit(variant)(x), np.float64)
                    err = float(np.max(np.abs(h - ref)) / scale)
                    rows.append((regime, name, space, label, err))
                    log(f"  {regime:12s} {name:8s} {space:6s} {label:20s} {err:.2e}")
            # The public log-space form on the same coefficients, for comparison.
            log_layer = _layers(regime, True)[name]
            log_a, log_b = eqx.filter_jit(log_layer.coefficients)(x)
            h = np.asarray(jnp.exp(jax.jit(heinsen_form)(log_a, log_b)), np.float64)
            err = float(np.max(np.abs(h - ref)) / scale)
            rows.append((regime, name, "log", "public cumsum + logcumsumexp form", err))
            log(f"  {regime:12s} {name:8s} log    public cumsum form   {err:.2e}")
    return rows


def report(rows, length: int, machine: Machine, command: str) -> str:
    out = [
        "# minGRU and minLSTM: float32 accuracy in log and linear space",
        "",
        f"Measured with `{command}` on {machine.line()}.",
        f"L = {length}, input {INPUT}, hidden {HIDDEN}, float32 parameters and inputs; error "
        "= max|h_float32 − h_float64| / max|h_float64|, the reference being a float64 loop of "
        "the paper's sequential equations over the same weights.",
        "",
    ]
    table = [[r, n, s, m, f"{e:.1e}"] for r, n, s, m, e in rows]
    out.append(markdown_table(["regime", "layer", "space", "strategy", "relative error"], table))
    return "\n".join(out) + "\n"


def run(args) -> int:
    machine = Machine.here()
    print(f"minRNN float32 accuracy on {machine.line()}, L = {args.length}")
    rows = measure(args.length)
    command = "python -m experiments accuracy minrnn" + (
        f" --length {args.length}" if args.length != 65_536 else ""
    )
    emit_report(report(rows, args.length, machine, command), args.out)
    return 0
