"""The terminal table, the markdown report with its PNG figures, and the docs page."""

import dataclasses
import datetime
import math
import pathlib
import platform
import re
import shutil
import textwrap
from collections.abc import Sequence

import jax
import numpy as np

import recurrax

from ._result import CheckResult


ROOT = pathlib.Path(__file__).resolve().parent.parent
FAMILY_TITLES = {
    "parameterisation": "Parameterisation: the unit disk and its floating-point edge",
    "stability": "Stability of layers and models",
    "eigenvalues": "Eigenvalue distributions",
    "normalisation": "Normalisation and signal propagation",
    "discretisation": "Discretisations and conversions",
    "equivalences": "Equivalences of evaluation modes",
    "trained": "Checks only a trained model raises",
}


def fmt(value) -> str:
    """A number, short: integers as they are, floats with four significant digits."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def _requirement(result: CheckResult) -> str:
    return f"{result.comparison} {fmt(result.threshold)}"


def _seconds(result: CheckResult) -> str:
    seconds = result.details.get("seconds")
    return "" if seconds is None else f"{seconds:.1f}"


# -- terminal ---------------------------------------------------------------------------------


def format_table(results: Sequence[CheckResult], *, claim_width: int = 46) -> str:
    """A plain-text table: check, claim and source (wrapped), statistic, threshold, verdict,
    seconds."""
    headers = ["check", "claim (source)", "statistic", "threshold", "verdict", "s"]
    rows = []
    for r in results:
        claim = textwrap.wrap(f"{r.claim} ({r.source})", claim_width) or [""]
        statistic = textwrap.wrap(f"{r.statistic_name} = {fmt(r.statistic)}", 30) or [""]
        cells = [[r.name], claim, statistic, [_requirement(r)], [r.verdict], [_seconds(r)]]
        rows.append(cells)
    widths = [len(h) for h in headers]
    for cells in rows:
        widths = [max(w, *(len(line) for line in cell)) for w, cell in zip(widths, cells)]
    rule = "+".join("-" * (w + 2) for w in widths)
    lines = [" | ".join(h.ljust(w) for h, w in zip(headers, widths)), rule]
    for cells in rows:
        height = max(len(cell) for cell in cells)
        for i in range(height):
            lines.append(
                " | ".join(
                    (cell[i] if i < len(cell) else "").ljust(w) for cell, w in zip(cells, widths)
                ).rstrip()
            )
        lines.append(rule)
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} of {len(results)} checks pass.")
    return "\n".join(lines)


# -- figures ------------------------------------------------------------------------------------


def save_figures(results: Sequence[CheckResult], folder) -> list[CheckResult]:
    """Save every figure as `folder/<check>.png` (`<check>-2.png`, ... for more than one)
    and return the results with their `figures` replaced by those paths. Figures given as
    paths are copied."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for r in results:
        paths = []
        for i, figure in enumerate(r.figures):
            path = folder / (f"{r.name}.png" if i == 0 else f"{r.name}-{i + 1}.png")
            if isinstance(figure, (str, pathlib.Path)):
                if pathlib.Path(figure).resolve() != path.resolve():
                    shutil.copyfile(figure, path)
            else:
                figure.savefig(path, dpi=100)
            paths.append(path)
        saved.append(dataclasses.replace(r, figures=paths))
    return saved


# -- markdown ---------------------------------------------------------------------------------


def _cell(value) -> str:
    """Text for a markdown table cell: pipes escaped."""
    return (value if isinstance(value, str) else fmt(value)).replace("|", "\\|")


def _details(details: dict, indent: str = "") -> list[str]:
    lines = []
    for key, value in details.items():
        if key == "seconds":
            continue
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(k for v in value.values() for k in v))
            table = {row: {c: cells.get(c, "") for c in columns} for row, cells in value.items()}
            if len(columns) > 4 and len(columns) > len(table):
                # Few subjects measured many ways: one column per subject keeps it narrow.
                table = {c: {row: cells[c] for row, cells in table.items()} for c in columns}
                columns = list(value)
            lines.append(f"{indent}- {key}:")
            lines.append("")
            lines.append(f"{indent}  | | " + " | ".join(_cell(c) for c in columns) + " |")
            lines.append(f"{indent}  |---|" + "---|" * len(columns))
            for row, cells in table.items():
                lines.append(
                    f"{indent}  | {_cell(row)} | "
                    + " | ".join(_cell(fmt(cells.get(c, ""))) for c in columns)
                    + " |"
                )
            lines.append("")
        elif isinstance(value, dict):
            lines.append(f"{indent}- {key}:")
            lines += _details(value, indent + "  ")
        else:
            lines.append(f"{indent}- {key}: {fmt(value)}")
    return lines


def summary_table(results: Sequence[CheckResult]) -> list[str]:
    lines = [
        "| check | family | statistic | threshold | verdict | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        # The claim and its source are in the check's own section (the link).
        cells = [
            f"[{r.name}](#{r.name})",
            r.family,
            _cell(f"{r.statistic_name} = {fmt(r.statistic)}"),
            _cell(_requirement(r)),
            f"**{r.verdict}**",
            _seconds(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(results: Sequence[CheckResult], *, image_prefix: str, header: Sequence[str]) -> str:
    """The markdown of a report: `header` lines, the summary table, then a section per family
    with each check's claim, statistic, details and figures (linked as
    `image_prefix + file name`)."""
    passed = sum(r.passed for r in results)
    lines = list(header) + ["", f"**{passed} of {len(results)} checks pass.**", ""]
    lines += summary_table(results)
    families = list(dict.fromkeys(r.family for r in results))
    for family in families:
        lines += ["", f"## {FAMILY_TITLES.get(family, family)}", ""]
        for r in (r for r in results if r.family == family):
            lines += [
                f"### {r.name}",
                "",
                f"**{r.verdict}.** *Claim:* {r.claim} *Source:* {r.source}",
                "",
                f"Measured `{r.statistic_name}` = **{fmt(r.statistic)}**; the claim needs "
                f"{_requirement(r)}.",
                "",
            ]
            lines += _details(r.details)
            for path in r.figures:
                name = pathlib.Path(path).name
                alt = re.sub(r"[\[\]]", "", f"{r.name}: {r.claim}")
                lines += ["", f"![{alt}]({image_prefix}{name})"]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def environment(*, quick: bool, seed: int) -> str:
    return (
        f"Run on {datetime.date.today().isoformat()} with recurrax {recurrax.__version__}, "
        f"jax {jax.__version__} ({jax.default_backend()}, {platform.machine()}), "
        f"{'quick' if quick else 'full'} mode, seed {seed}. Float64 is enabled "
        f"(`jax_enable_x64`) so that checks can compute references in float64; layers and "
        f"models a check builds are float64 unless it says float32 (the model-stability checks "
        f"use float32 models, the floating-point edge is measured in both)."
        + (" Quick mode compiles without most XLA optimisations." if quick else "")
    )


def _clear(folder, keep=()):
    """Remove the PNG files in `folder`, except those in `keep`."""
    keep = {pathlib.Path(p).resolve() for p in keep if isinstance(p, (str, pathlib.Path))}
    if folder.exists():
        for old in folder.glob("*.png"):
            if old.resolve() not in keep:
                old.unlink()


def write_report(results: Sequence[CheckResult], out, *, quick=False, seed=0, command=None):
    """Write `out/report.md` and `out/figures/*.png` (old PNGs there are removed first).
    Returns the results with figure paths."""
    out = pathlib.Path(out)
    _clear(out / "figures")
    results = save_figures(results, out / "figures")
    header = [
        "# recurrax proofs: the papers' claims, measured",
        "",
        f"Generated by `{command or 'python -m proofs'}`. " + environment(quick=quick, seed=seed),
    ]
    (out / "report.md").write_text(render(results, image_prefix="figures/", header=header))
    return results


DOCS_INTRO = """\
# Proofs: the papers' claims as measured checks

This page is generated from a full run: regenerate it (and its figures in `docs/proofs/`) with

```bash
python -m proofs --docs
```

`python -m proofs` turns the mathematical claims of the two source papers (the LRU paper,
Orvieto et al. 2023, and the minRNN paper, Feng et al. 2024) into
measured checks. Each check computes a statistic, compares it with a threshold and says PASS
or FAIL; the command prints a table, writes a report with figures (`--out`, default
`runs/proofs`) and exits non-zero if any check fails.

```bash
python -m proofs --quick                 # every check at small sizes, well under a minute
python -m proofs --list                  # the checks, their families and claims
python -m proofs --family stability      # one family; --only NAME[,NAME] for single checks
python -m proofs --seed 1 --out runs/p1  # another draw of every random quantity
python -m proofs --run RUN_FOLDER        # the checks that apply to a trained model
```

Every check is a plain function that takes the thing it checks as an argument and returns a
`proofs.CheckResult` (name, claim, source, statistic, threshold, verdict, details, figures),
so the checks can be pointed at your own layers and models:

```python
import jax
import proofs
import recurrax

model, _ = recurrax.ModelConfig(mixer="lru", input_size=3, norm="layer").build(
    key=jax.random.key(0)
)
result = proofs.check_stability(model)   # spectral radius of every recurrent layer
print(result.verdict, result.statistic_name, result.statistic)
```

Each check also has a test in `tests/test_proofs.py` showing that a deliberately wrong
variant fails it (a sign-flipped bilinear discretisation, an unnormalised LRU, `log_g`
applied to a carried minLSTM state, an off-by-one convolution kernel, ...), and hypothesis
tests run the checks over random parameters and shapes.

The six families, one per module of the `proofs` package (each module declares its own
checks):

- **Parameterisation** (`proofs.parameterisation`). The stable exponential parameterisation
  keeps every eigenvalue strictly inside the unit disk for every parameter value, where the
  plain exponential and the real-and-imaginary parameterisation leave it after one optimiser
  step. Floating point adds an edge below which $\\exp(-e^{\\nu_{\\log}})$ rounds to exactly
  1 (measured here in float32 and float64), which the LRU's floor
  (`recurrax.stability_floor`) removes.
- **Stability** (`proofs.stability`). The bounded-input bounded-state (BIBO) bound holds, and
  a model's recurrent layers are stable at initialisation and after training.
- **Eigenvalue distributions** (`proofs.eigenvalues`). The ring initialisation is
  area-uniform on its annulus with uniform phase (Kolmogorov-Smirnov tests), Glorot matrices
  approach the circular law as they grow, and the S4D-Lin, S4D-Inv and HiPPO-LegS sets follow
  their defining formulas.
- **Normalisation and signal propagation** (`proofs.normalisation`). Prop. 3's expected state
  norm matches Monte Carlo for the unnormalised LRU; the $\\gamma$-normalised state has the
  input's variance at every $r_{\\max}$, and a deep stack of normalised layers keeps the
  forward variance $O(1)$ where the unnormalised one explodes: this is why the LRU normalises.
- **Discretisations and conversions** (`proofs.discretisation`). Zero-order hold against a
  diffrax ODE solve, the orders of the bilinear and Euler discretisations, an SSM against its
  LRU form, and a dense RNN against its complex diagonalisation.
- **Equivalences of evaluation modes** (`proofs.equivalences`). The scan against the FFT
  convolution, parallel against sequential against step-by-step evaluation, log space
  against linear space, minLSTM's normalised gates, and streaming in pieces against one call.
"""


def write_docs(results: Sequence[CheckResult], *, docs=ROOT / "docs", quick=False, seed=0):
    """Write `docs/proofs.md` from the results and their figures into `docs/proofs/`
    (old PNGs there are removed first), linked relatively from the page."""
    docs = pathlib.Path(docs)
    figures = docs / "proofs"
    _clear(figures, keep=[p for r in results for p in r.figures])
    results = save_figures(results, figures)
    header = [DOCS_INTRO, "## Results", "", environment(quick=quick, seed=seed)]
    text = render(results, image_prefix="proofs/", header=header)
    (docs / "proofs.md").write_text(text)
    return results
