"""Run reports (`report.md`, learning curves, eigenvalues before and after training, the
environment) and the comparison table over runs (`python -m experiments report`)."""

import json
import pathlib
import platform
import subprocess
import sys

import equinox as eqx
import jax
import matplotlib
import numpy as np

import recurrax

from . import variants
from ._timing import Machine
from .tasks import make_task
from .train import read_metrics


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


# Published numbers to put beside ours (THEORY.md, TASKS.md): (task, model) -> text.
PAPER_NUMBERS = {
    ("selective_copying", "mingru"): "37.0 / 96.8 / 99.5 % (1 / 2 / 3 layers; L 4096)",
    ("selective_copying", "minlstm"): "37.6 / 85.7 / 96.0 % (1 / 2 / 3 layers)",
    ("listops", "lru"): "60.2 % (LRA, L 500-2000, depth 6, 80k steps)",
    ("listops", "ssm"): "S4D 60.2 %, S5 58.5-62.2 % (LRA)",
    ("adding", "lru"): "solved = MSE << 0.167",
    ("induction_heads", "lru"): "4.8 % (third-party LRU runs; Mamba: 100 % to 2^20)",
}


def environment(command: list[str] | None = None) -> dict:
    """Versions, device, git commit and command line of this process."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        commit = (commit + ("+changes" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "equinox": eqx.__version__,
        "recurrax": recurrax.__version__,
        "device": Machine.here().line(),
        "git_commit": commit,
        "command": "python -m experiments " + " ".join(command if command else sys.argv[1:]),
    }


def recurrent_spectra(model) -> list[np.ndarray]:
    """The eigenvalues of every time-invariant recurrent layer (LRU, SSM, LRU variants), or
    for input-dependent layers (minGRU, minLSTM) nothing: see `transition_values`."""
    spectra = []
    for block in getattr(model, "blocks", ()):
        mixer = block.mixer
        if isinstance(mixer, (recurrax.LRU, variants.LRUVariant)):
            spectra.append(np.asarray(mixer.eigenvalues()))
        elif isinstance(mixer, recurrax.DiagonalSSM):
            spectra.append(np.asarray(mixer.discrete_system().lam))
    return spectra


def plot_curves(metrics: list[dict], path: pathlib.Path, kind: str) -> None:
    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(steps, [m["loss"] for m in metrics], lw=0.8, label="train")
    evals = [m for m in metrics if "test_loss" in m]
    axes[0].plot([m["step"] for m in evals], [m["test_loss"] for m in evals], "o-", label="test")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("MSE" if kind == "regression" else "cross-entropy")
    axes[0].set_yscale("log")
    axes[0].legend()
    name = "mse" if kind == "regression" else "accuracy"
    axes[1].plot(steps, [m.get(name, np.nan) for m in metrics], lw=0.8, label="train")
    axes[1].plot(
        [m["step"] for m in evals], [m.get(f"test_{name}", np.nan) for m in evals], "o-",
        label="test",
    )
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(name)
    if kind == "regression":
        axes[1].set_yscale("log")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_spectra(before: list, after: list, path: pathlib.Path) -> bool:
    if not before:
        return False
    fig, axes = plt.subplots(1, len(before), figsize=(3.6 * len(before), 3.6), squeeze=False)
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 400))
    for i, (b, a) in enumerate(zip(before, after)):
        ax = axes[0, i]
        ax.plot(circle.real, circle.imag, "k-", lw=0.6)
        ax.scatter(b.real, b.imag, s=6, alpha=0.5, label="initial")
        ax.scatter(a.real, a.imag, s=6, alpha=0.7, label="trained")
        ax.set_aspect("equal")
        ax.set_title(f"block {i}: max |λ| {np.max(np.abs(a)):.4f}")
        ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_run_report(out: pathlib.Path, config, task, model_before, model_after, final: dict,
                     command: list[str] | None = None) -> pathlib.Path:
    """`report.md`, `curves.png`, `eigenvalues.png` and `summary.json` in the run folder."""
    out = pathlib.Path(out)
    metrics = [m for m in read_metrics(out / "metrics.jsonl") if "event" not in m]
    plot_curves(metrics, out / "curves.png", task.kind)
    spectra = plot_spectra(
        recurrent_spectra(model_before), recurrent_spectra(model_after), out / "eigenvalues.png"
    )
    baseline = task.baseline()
    env = environment(command)
    seconds = [m["seconds_per_step"] for m in metrics if "seconds_per_step" in m]
    summary = {
        "task": config.task,
        "model": config.model + (f" ({config.variant})" if config.variant else ""),
        "depth": config.model_config["depth"],
        "d_model": config.model_config["d_model"],
        "steps": config.steps,
        "preset": config.preset,
        "final": final,
        "baseline": {"metric": baseline.metric, "value": baseline.value,
                     "description": baseline.description},
        "paper": PAPER_NUMBERS.get((config.task, config.model)),
        "seconds_per_step": float(np.median(seconds)) if seconds else None,
        "environment": env,
        "config": config.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# {config.task} with {summary['model']}",
        "",
        f"Repeat with: `{env['command']}`",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name, value in final.items():
        lines.append(f"| {name} | {value:.4g} |")
    lines += [
        f"| baseline ({baseline.metric}) | {baseline.value:.4g} ({baseline.description}) |",
        f"| paper | {summary['paper'] or '–'} |",
        f"| median seconds per step | {summary['seconds_per_step'] or float('nan'):.3g} |",
        "",
        "![learning curves](curves.png)",
        "",
    ]
    if spectra:
        lines += ["Eigenvalues of the recurrent layers before and after training:", "",
                  "![eigenvalues](eigenvalues.png)", ""]
    else:
        lines += ["The recurrence of this model is input-dependent (its transition values "
                  "a_t change with every input), so it has no fixed eigenvalues to plot.", ""]
    lines += ["## Configuration", "", "```json", json.dumps(config.to_dict(), indent=2), "```",
              "", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def gather(runs: list[pathlib.Path]) -> str:
    """A comparison table over run folders (their `summary.json`)."""
    rows = []
    for run in runs:
        summary_file = pathlib.Path(run) / "summary.json"
        if summary_file.exists():
            rows.append((pathlib.Path(run), json.loads(summary_file.read_text())))
    rows.sort(key=lambda r: (r[1]["task"], r[1]["model"], r[1]["depth"],
                             json.dumps(r[1]["config"]["task_options"], sort_keys=True)))
    lines = [
        "# Results of the experiment runs",
        "",
        "Made by `python -m experiments report` from the runs' `summary.json`; each row's last",
        "column is the command that produced it (small presets on a 2-core CPU unless the",
        "command says otherwise). Commentary: [Experiments](../experiments.md).",
        "",
        "| task | options | model | depth | steps | test metric | ours | baseline | paper "
        "| command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, s in rows:
        metric = "test_mse" if "test_mse" in s["final"] else "test_accuracy"
        value = s["final"].get(metric, float("nan"))
        shown = f"{value:.4g}" if metric == "test_mse" else f"{100 * value:.1f} %"
        base = s["baseline"]
        base_shown = (f"{100 * base['value']:.1f} %" if base["metric"] == "accuracy"
                      else f"{base['value']:.3g}")
        options = ", ".join(f"{k}={v}" for k, v in sorted(s["config"]["task_options"].items()))
        if s["config"].get("init_from"):
            options += (", " if options else "") + "from " + pathlib.Path(
                s["config"]["init_from"]).name
        lines.append(
            f"| {s['task']} | {options or '–'} | {s['model']} | {s['depth']} | {s['steps']} | "
            f"{metric} | {shown} | "
            f"{base_shown} | {s['paper'] or '–'} | `{s['environment']['command']}` |"
        )
    lines += _extrapolation_table([run for run, _ in rows])
    return "\n".join(lines) + "\n"


def _extrapolation_table(runs: list[pathlib.Path]) -> list[str]:
    """Accuracy against test length for the runs with an `extrapolation.json`."""
    found = []
    for run in runs:
        path = pathlib.Path(run) / "extrapolation.json"
        if path.exists():
            data = json.loads(path.read_text())
            summary = json.loads((pathlib.Path(run) / "summary.json").read_text())
            commands = data.get("commands", [data["environment"]["command"]])
            found.append((summary, {r["length"]: r for r in data["rows"]}, commands))
    if not found:
        return []
    lengths = sorted({length for _, rows, _ in found for length in rows})
    lines = [
        "",
        "## Length extrapolation",
        "",
        "Made by `python -m experiments extrapolate RUN_FOLDER` (each sequence read in chunks",
        "with the state carried); test accuracy against sequence length, with the number of",
        "test sequences per length.",
        "",
        "| task | model | trained at | " + " | ".join(f"{n:,}" for n in lengths)
        + " | examples | command |",
        "|---|---|---|" + "---:|" * len(lengths) + "---|---|",
    ]
    for summary, rows, commands in found:
        config = summary["config"]
        task = make_task(config["task"], preset=config["preset"], **config["task_options"])
        trained = getattr(task, "length", "–")
        cells = [f"{100 * rows[n]['accuracy']:.1f} %" if n in rows else "–" for n in lengths]
        examples = sorted({r["examples"] for r in rows.values()})
        lines.append(
            f"| {summary['task']} | {summary['model']} | {trained} | " + " | ".join(cells)
            + f" | {', '.join(map(str, examples))} | "
            + "; ".join(f"`{c}`" for c in commands) + " |"
        )
    return lines
