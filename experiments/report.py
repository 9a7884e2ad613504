"""Run reports (`report.md`, learning curves, eigenvalues before and after training, the
environment) and the comparison table over runs (`python -m experiments report`)."""

import json
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys

import equinox as eqx
import jax
import matplotlib
import numpy as np

import recurrax

from . import variants
from ._figures import image, line_panels
from ._timing import Machine
from .tasks import make_task
from .train import read_metrics


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


# Published numbers to put beside ours (the papers' tables): (task, model) -> text.
PAPER_NUMBERS = {
    ("selective_copying", "mingru"): "37.0 / 96.8 / 99.5 % (1 / 2 / 3 layers; L 4096)",
    ("selective_copying", "minlstm"): "37.6 / 85.7 / 96.0 % (1 / 2 / 3 layers)",
    ("listops", "lru"): "60.2 % (LRA, L 500-2000, depth 6, 80k steps)",
    ("listops", "ssm"): "S4D 60.2 %, S5 58.5-62.2 % (LRA)",
    ("adding", "lru"): "solved = MSE << 0.167",
    ("induction_heads", "lru"): "4.8 % (third-party LRU runs; Mamba: 100 % to 2^20)",
}
# MNIST-1D's README (Greydanus & Kobak): test accuracy of its reference models, the same
# for every model of ours.
MNIST1D_NUMBERS = {
    "mnist1d": "logistic regression 32 %, MLP 68 %, CNN 94 %, GRU 91 %, human 96 %",
    "mnist1d-shuffled": "logistic regression 32 %, MLP 68 %, CNN 56 %, GRU 57 % (shuffled)",
}
PAPER_NUMBERS.update(
    {(task, model): text for task, text in MNIST1D_NUMBERS.items()
     for model in recurrax.registered_mixers()}
)


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
        "device": Machine.here().line()
        + (f"; {jax.process_count()} processes" if jax.process_count() > 1 else ""),
        "git_commit": commit,
        # Quoted as a shell needs it, so that the command can be pasted back as it is.
        "command": "python -m experiments " + shlex.join(command if command else sys.argv[1:]),
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


def summary_row(run: pathlib.Path, summary: dict) -> dict:
    """One run's row of the results page: what its `summary.json` says, flattened."""
    metric = "test_mse" if "test_mse" in summary["final"] else "test_accuracy"
    options = ", ".join(f"{k}={v}" for k, v in sorted(summary["config"]["task_options"].items()))
    if summary["config"].get("init_from"):
        origin = pathlib.Path(summary["config"]["init_from"]).name
        options += (", " if options else "") + "from " + origin
    metrics_file = pathlib.Path(run) / "metrics.jsonl"
    curve = [
        [m["step"], m[metric]]
        for m in (read_metrics(metrics_file) if metrics_file.exists() else [])
        if "event" not in m and m.get(metric) is not None
    ]
    # A mixer trained in another block than its own (e.g. the LRU in Hawk's block) says so.
    model, mixers = summary["model"], recurrax.registered_mixers()
    block = summary["config"].get("model_config", {}).get("block")
    if model.split(" ")[0] in mixers and block not in (None, mixers[model.split(" ")[0]].block):
        model += f" in the {block} block"
    return {
        "run": pathlib.Path(run).name,
        "task": summary["task"],
        "options": options,
        "model": model,
        "depth": summary["depth"],
        "steps": summary["steps"],
        "seed": summary["config"].get("seed", 0),
        "metric": metric,
        "value": summary["final"].get(metric),
        "curve": curve,
        # `--eval-length L`: the same metric on test sequences of length exactly L.
        "lengths": {
            key.rpartition("@")[2]: value
            for key, value in summary["final"].items()
            if key.startswith(metric + "@") and value is not None
        },
        "baseline": summary["baseline"],
        "paper": summary["paper"],
        "command": summary["environment"]["command"],
    }


def extrapolation_row(run: pathlib.Path) -> dict | None:
    """Accuracy against test length of a run with an `extrapolation.json` (else `None`)."""
    path = pathlib.Path(run) / "extrapolation.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    summary = json.loads((pathlib.Path(run) / "summary.json").read_text())
    config = summary["config"]
    task = make_task(config["task"], preset=config["preset"], **config["task_options"])
    return {
        "run": pathlib.Path(run).name,
        "task": summary["task"],
        "model": summary["model"],
        "trained_at": getattr(task, "length", None),
        "results": {
            str(r["length"]): {"accuracy": r["accuracy"], "examples": r["examples"]}
            for r in data["rows"]
        },
        "commands": data.get("commands", [data["environment"]["command"]]),
    }


def results_data(runs: list[pathlib.Path], previous: dict | None = None) -> dict:
    """The rows of the results page: those of `previous` (the committed
    `docs/results/experiments.json`, so that results measured elsewhere are kept), replaced
    or extended by the run folders in `runs` (matched by folder name)."""
    rows = {r["run"]: r for r in (previous or {}).get("runs", [])}
    extrapolation = {r["run"]: r for r in (previous or {}).get("extrapolation", [])}
    for run in runs:
        summary_file = pathlib.Path(run) / "summary.json"
        if not summary_file.exists():
            continue
        row = summary_row(pathlib.Path(run), json.loads(summary_file.read_text()))
        rows[row["run"]] = row
        extra = extrapolation_row(pathlib.Path(run))
        if extra is not None:
            extrapolation[extra["run"]] = extra

    def order(row):
        return (row["task"], row["model"], row["depth"], row["options"], row["steps"],
                row.get("seed", 0))

    return {
        "runs": sorted(rows.values(), key=order),
        "extrapolation": sorted(extrapolation.values(), key=lambda r: (r["task"], r["model"])),
    }


def _shown(value, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if metric == "test_mse" else f"{100 * value:.1f} %"


def _baseline(base: dict) -> str:
    if base["metric"] == "accuracy":
        return f"{100 * base['value']:.1f} %"
    return f"{base['value']:.3g}"


def _model(model: str) -> str:
    """"lru (lru-no-gamma)" -> "lru-no-gamma": a variant's name already names its model."""
    return model.split(" (")[1].rstrip(")") if " (" in model else model


def _options(row: dict, number: dict[str, int]) -> str:
    """The task options; a run started from another run of the table names it by its #."""
    options = row["options"]
    if ", from " in options or options.startswith("from "):
        head, _, origin = options.rpartition("from ")
        if origin in number:
            options = f"{head}from #{number[origin]}"
    return options or "–"


def _commands(title: str, commands: list[str]) -> list[str]:
    """A collapsed, numbered list of commands (the rows' `#` refer to it)."""
    lines = ["", f'??? note "{title}"', ""]
    lines += [f"    {i}. `{command}`" for i, command in enumerate(commands, 1)]
    return lines + [""]


def _without_seed(command: str) -> tuple[str, ...]:
    """The command's words without `--seed N` and `--out FOLDER` (and their `=` forms)."""
    words, kept, skip = shlex.split(command), [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("--seed", "--out"):
            skip = True
        elif not word.startswith(("--seed=", "--out=")):
            kept.append(word)
    return tuple(kept)


def _groups(rows: list[dict]) -> list[list[dict]]:
    """Rows whose commands differ only in their seed (and run folder), together, in order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["options"], r["model"], r["depth"], r["steps"], _without_seed(r["command"]))
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def _shown_group(group: list[dict]) -> str:
    """One run's value, or the mean ± standard deviation over seeds (sample, n − 1)."""
    metric = group[0]["metric"]
    values = [r["value"] for r in group if r["value"] is not None]
    if len(group) == 1 or not values:
        return _shown(group[0]["value"], metric)
    scale, unit = (1, "") if metric == "test_mse" else (100, " %")
    mean = scale * float(np.mean(values))
    spread = scale * float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{mean:.4g} ± {spread:.2g}{unit} ({len(values)} seeds)"


def _numbers(first: int, count: int) -> str:
    return str(first) if count == 1 else f"{first}–{first + count - 1}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _label(group: list[dict]) -> str:
    r = group[0]
    label = f"{_model(r['model'])}, depth {r['depth']}"
    if r["options"]:
        label += f", {r['options']}"
    return label


def plot_task_curves(rows: list[dict], path: pathlib.Path) -> pathlib.Path | None:
    """Test metric against step of every row with a recorded curve, all models on one axes
    (the mean over seeds at each evaluated step). A run started from another run of the
    table (`--init-from`, a curriculum stage) continues that run's steps: its curve is drawn
    after the origin's last step. `None` when no row has a curve."""
    by_run = {r["run"]: r for r in rows}

    def offset(row: dict) -> int:
        """The steps of the runs this one continues (0 for a run from scratch)."""
        _, sep, origin = row["options"].rpartition("from ")
        if not sep or origin not in by_run or origin == row["run"]:
            return 0
        return by_run[origin]["steps"] + offset(by_run[origin])

    series = {}
    groups = _groups(rows)
    # Runs of one model and options with different budgets (e.g. 1000 and 4000 steps) are
    # told apart by their steps, not drawn under one label.
    budgets: dict[str, set] = {}
    for group in groups:
        budgets.setdefault(_label(group), set()).add(group[0]["steps"])
    for group in groups:
        curves = [dict((int(s), v) for s, v in r.get("curve") or []) for r in group]
        curves = [c for c in curves if c]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        start = offset(group[0])
        label = _label(group)
        if len(budgets[label]) > 1:
            label += f", {group[0]['steps']} steps"
        if start:
            _, _, origin = group[0]["options"].rpartition("from ")
            before = by_run[origin]["options"].split("from ")[0].rstrip(", ")
            label = label.replace(
                f"from {origin}", f"after {start} steps" + (f" at {before}" if before else ""))
        series[label] = [(start + s, float(np.mean([c[s] for c in curves]))) for s in steps]
    if not series:
        return None
    mse = rows[0]["metric"] == "test_mse"
    return line_panels(
        [(rows[0]["task"], series)],
        path,
        xlabel="training step",
        ylabel="test MSE" if mse else "test accuracy",
        xlog=False,
        ylog=mse,
        percent=not mse,
    )


def plot_extrapolation(rows: list[dict], path: pathlib.Path) -> pathlib.Path:
    """Test accuracy against sequence length (log scale), one line per model."""
    series = {
        f"{r['model']}" + ("" if r["trained_at"] is None else f" (trained at {r['trained_at']})"):
        [(int(n), v["accuracy"]) for n, v in r["results"].items()]
        for r in rows
    }
    return line_panels(
        [(f"{rows[0]['task']}: length extrapolation", series)],
        path,
        xlabel="test sequence length",
        ylabel="test accuracy",
        ylog=False,
        percent=True,
    )


def _length_lines(groups: list[list[dict]], figures: pathlib.Path | None, task: str,
                  name: str) -> list[str]:
    """The rows evaluated at other lengths (`--eval-length`): a table, one row per length
    and one column per row of the task's table, and the same as a figure."""
    groups = [g for g in groups if g[0].get("lengths")]
    if not groups:
        return []
    lengths = sorted({int(n) for g in groups for r in g for n in r["lengths"]})
    columns = {_label(g): {int(n): float(np.mean([r["lengths"][n] for r in g
                                                  if n in r["lengths"]]))
                           for n in {n for r in g for n in r["lengths"]}}
               for g in groups}
    metric = groups[0][0]["metric"]
    lines = ["", f"At other lengths (`--eval-length`; {name} on test sequences of exactly "
                 "that length):", ""]
    if figures is not None:
        png = figures.with_name(f"{figures.stem}-{_slug(task)}-lengths.png")
        line_panels([(f"{task}: {name} against test length", {
            label: sorted(values.items()) for label, values in columns.items()})],
            png, xlabel="test sequence length", ylabel=name, ylog=False,
            percent=metric != "test_mse")
        lines += [image(png, f"{task}: {name} against test sequence length for each model"),
                  ""]
    lines += ["| length | " + " | ".join(columns) + " |", "|---:|" + "---:|" * len(columns)]
    for n in lengths:
        lines.append(f"| {n:,} | " + " | ".join(_shown(values.get(n), metric)
                                                  for values in columns.values()) + " |")
    return lines


def render(data: dict, figures: pathlib.Path | None = None) -> str:
    """The results page (markdown) from `results_data`: one small table per task, the
    command of every row in a numbered list beside it, the published numbers once per task.
    Runs that differ only in their seed share a row (mean ± standard deviation). With
    `figures` (the path of the page), each task's learning curves and each extrapolation's
    accuracy against length are drawn beside it (`<page>-<task>.png`) and embedded."""
    lines = [
        "# Results of the experiment runs",
        "",
        "Made by `python -m experiments report --out docs/results/experiments.md` from the runs'",
        "`summary.json` (and the rows already in `docs/results/experiments.json`, beside this",
        "page). Small presets on a 2-core CPU unless a command says otherwise; the `#` of a row",
        "is its command's number in the list under the table; runs that differ only in their",
        "seed share a row (mean ± standard deviation over seeds). Commentary:",
        "[Experiments](../experiments.md).",
    ]
    tasks = list(dict.fromkeys(r["task"] for r in data["runs"]))
    for task in tasks:
        rows = [r for r in data["runs"] if r["task"] == task]
        groups = _groups(rows)
        number, first = {}, 1
        for group in groups:
            for r in group:
                number[r["run"]] = first
            first += len(group)
        metric = rows[0]["metric"]
        name = "test MSE" if metric == "test_mse" else "test accuracy"
        baselines = list(dict.fromkeys(_baseline(r["baseline"]) for r in rows))
        lines += ["", f"## {task}", ""]
        lines += [f"Metric: {name}; a model that ignores its input scores "
                  + " or ".join(baselines) + "."]
        lines += ["", "| # | options | model | depth | steps | ours |",
                  "|---:|---|---|---:|---:|---:|"]
        first = 1
        for group in groups:
            r = group[0]
            lines.append(
                f"| {_numbers(first, len(group))} | {_options(r, number)} | "
                f"{_model(r['model'])} | {r['depth']} | {r['steps']} | {_shown_group(group)} |"
            )
            first += len(group)
        papers = dict.fromkeys((r["model"].split(" ")[0], r["paper"]) for r in rows if r["paper"])
        if len({p for _, p in papers}) == 1 and len(papers) > 1:
            lines += ["", f"Published: {next(iter(papers))[1]}."]
        elif papers:
            lines += ["", "Published: " + "; ".join(f"{m}: {p}" for m, p in papers) + "."]
        if figures is not None:
            png = figures.with_name(f"{figures.stem}-{_slug(task)}.png")
            if plot_task_curves(rows, png) is not None:
                lines += ["", image(png, f"{task}: {name} against training step for each "
                                         "model of the table (mean over seeds)")]
        lines += _length_lines(groups, figures, task, name)
        lines += _commands(f"Commands ({task})", [r["command"] for g in groups for r in g])
    if data["extrapolation"]:
        lines += [
            "",
            "## Length extrapolation",
            "",
            "Made by `python -m experiments extrapolate RUN_FOLDER` (each sequence read in chunks",
            "with the state carried); test accuracy against sequence length, with the number of",
            "test sequences per length.",
        ]
        for task in dict.fromkeys(r["task"] for r in data["extrapolation"]):
            rows = [r for r in data["extrapolation"] if r["task"] == task]
            lengths = sorted({int(n) for r in rows for n in r["results"]})
            commands, headers = [], []
            for r in rows:
                first = len(commands) + 1
                commands += r["commands"]
                numbers = ", ".join(f"#{i}" for i in range(first, len(commands) + 1))
                trained = "" if r["trained_at"] is None else f", trained at {r['trained_at']}"
                headers.append(f"{r['model']} ({numbers}{trained})")
            # One row per length, one column per model: long length lists stay narrow.
            lines += ["", f"### {task}", ""]
            if figures is not None:
                png = figures.with_name(f"{figures.stem}-{_slug(task)}-extrapolation.png")
                plot_extrapolation(rows, png)
                lines += [image(png, f"{task}: test accuracy against sequence length for "
                                     "each model"), ""]
            lines += ["| length | " + " | ".join(headers) + " | test sequences |",
                      "|---:|" + "---:|" * len(rows) + "---:|"]
            for n in lengths:
                cells = [
                    f"{100 * r['results'][str(n)]['accuracy']:.1f} %"
                    if str(n) in r["results"] else "–"
                    for r in rows
                ]
                examples = sorted({r["results"][str(n)]["examples"] for r in rows
                                   if str(n) in r["results"]})
                lines.append(f"| {n:,} | " + " | ".join(cells)
                             + f" | {' / '.join(map(str, examples))} |")
            lines += _commands(f"Commands ({task}, extrapolation)", commands)
    return "\n".join(lines).rstrip("\n") + "\n"


def gather(runs: list[pathlib.Path], previous: dict | None = None) -> str:
    """The results page over run folders (their `summary.json`), on top of `previous` rows."""
    return render(results_data(runs, previous))


# Runs whose `eigenvalues.png` (initial and trained eigenvalues, drawn by the run itself) the
# documentation shows: `write_results` copies it beside the page as
# `<page>-eigenvalues-<run>.png` whenever the run is among those gathered.
SPECTRA = ("mnist1d-lru-d2-s0",)


def write_results(runs: list[pathlib.Path], out: pathlib.Path | None) -> str:
    """The results page over `runs`; with `out`, keep the rows of the JSON file beside it
    (`out` with the suffix `.json`), then write both the page and the updated JSON, and copy
    the eigenvalue figures of the runs named in `SPECTRA` beside the page."""
    if out is None:
        return gather(runs)
    out = pathlib.Path(out)
    rows_file = out.with_suffix(".json")
    previous = json.loads(rows_file.read_text()) if rows_file.exists() else None
    data = results_data(runs, previous)
    page = render(data, figures=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_file.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    out.write_text(page)
    for run in runs:
        name, figure = pathlib.Path(run).name, pathlib.Path(run) / "eigenvalues.png"
        if name in SPECTRA and figure.exists():
            shutil.copyfile(figure, out.with_name(f"{out.stem}-eigenvalues-{name}.png"))
    return page
