"""Figures of the measurement commands: line plots against sequence length or step.

Every figure of the results and performance pages is drawn here by the command that
measures its numbers (never by hand); each page embeds it beside its table with an alt text.
"""

import pathlib
from collections.abc import Mapping, Sequence

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


Series = Mapping[str, Sequence[tuple[float, float]]]


def _save(fig, path) -> pathlib.Path:
    """Lay out, write the PNG (creating its folder) and free the figure."""
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def line_panels(
    panels: Sequence[tuple[str, Series]],
    path: pathlib.Path,
    *,
    xlabel: str,
    ylabel: str,
    xlog: bool = True,
    ylog: bool = True,
    dashed: Sequence[str] = (),
    percent: bool = False,
) -> pathlib.Path:
    """Draw one axes per `(title, {label: [(x, y), ...]})` panel side by side, the same label
    in the same colour on every panel; labels in `dashed` are drawn dashed (references and
    floors). `percent` shows y (a fraction) in per cent. Writes a PNG at `path`."""
    labels = list(dict.fromkeys(label for _, series in panels for label in series))
    # Ten distinct colours, then the other ten shades of tab20 with square markers: no two
    # lines of up to twenty look alike.
    colours = {
        label: f"C{i}" if i < 10 else plt.get_cmap("tab20")((2 * (i - 10) + 1) % 20)
        for i, label in enumerate(labels)
    }
    markers = {label: "o" if i < 10 else "s" for i, label in enumerate(labels)}
    width = 5.2 * len(panels) + 1.2
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.2), dpi=110, squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for label, points in series.items():
            points = sorted((x, y) for x, y in points if y is not None and y == y)
            if not points:
                continue
            xs, ys = zip(*points)
            if percent:
                ys = [100 * y for y in ys]
            ax.plot(xs, ys, "--" if label in dashed else "-", marker=markers[label],
                    markersize=3.5, color=colours[label], label=label)
        if xlog:
            ax.set_xscale("log", base=2)
        if ylog:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel + (" (%)" if percent else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def bars(
    groups: Mapping[str, Mapping[str, float]],
    path: pathlib.Path,
    *,
    xlabel: str,
    title: str,
) -> pathlib.Path:
    """Horizontal bars: for each row label, one bar per measure (`{row: {measure: value}}`).
    Writes a PNG at `path`."""
    rows = list(groups)
    measures = list(dict.fromkeys(m for values in groups.values() for m in values))
    height = 0.8 / max(len(measures), 1)
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) * max(len(measures), 1) + 1.4), dpi=110)
    for j, measure in enumerate(measures):
        ys = [i + j * height for i in range(len(rows))]
        ax.barh(ys, [groups[r].get(measure, 0.0) for r in rows], height=height, label=measure)
    ax.set_yticks([i + height * (len(measures) - 1) / 2 for i in range(len(rows))])
    ax.set_yticklabels(rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def image(path: pathlib.Path | str, alt: str) -> str:
    """The markdown that embeds a figure written beside the page, with its alt text."""
    return f"![{alt}]({pathlib.Path(path).name})"
