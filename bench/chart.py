"""One chart of the benchmark ratios, for bench/README.md.

bench/report.py calls :func:`draw` with the ratios of its runs; nothing else
needs to.  With matplotlib installed the chart is a PNG drawn by it; without
(it is not a dependency of pumpguard, nor of its tests), an SVG is written
by the small hand-rolled code below.  Either way it shows, one row per
ratio, the median over runs of the ratio of medians (a dot), the range over
runs (a line), and the target if there is one (a bar), on a logarithmic
axis with 1x marked; a dot is green where it meets its target, red where it
misses it, grey where there is no target.

Only the standard library is imported at module level.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Final

#: Colours: met, missed, no target, target marks, grid.
MET: Final = "#1a7f37"
MISSED: Final = "#cf222e"
NO_TARGET: Final = "#6e7781"
TARGET: Final = "#0550ae"
GRID: Final = "#d0d7de"


@dataclass(frozen=True)
class ChartRow:
    label: str
    #: Median over runs of the ratio of medians, and the lowest and highest run.
    value: float
    low: float
    high: float
    target: float | None

    @property
    def colour(self) -> str:
        if self.target is None:
            return NO_TARGET
        return MET if self.value <= self.target else MISSED


def _axis(rows: Sequence[ChartRow]) -> tuple[float, float]:
    """Powers of ten enclosing every value and target."""
    points = [v for row in rows for v in (row.low, row.high, row.value)]
    points += [row.target for row in rows if row.target is not None]
    lowest = min([*points, 1.0])
    highest = max([*points, 1.0])
    return 10.0 ** math.floor(math.log10(lowest)), 10.0 ** math.ceil(math.log10(highest))


def _tick_label(value: float) -> str:
    return f"{value:g}x"


def svg(rows: Sequence[ChartRow], title: str) -> str:
    """The chart as an SVG document (no dependency)."""
    # ~6.6 px per character of 12 px sans-serif: room for the longest label.
    label_width = max(200, int(6.6 * max(len(row.label) for row in rows)) + 24)
    plot_width, row_height, top, bottom = 440, 20, 46, 52
    width = label_width + plot_width + 30
    height = top + row_height * len(rows) + bottom
    low, high = _axis(rows)
    span = math.log10(high) - math.log10(low)

    def x(value: float) -> float:
        return label_width + (math.log10(value) - math.log10(low)) / span * plot_width

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" font-size="14" '
        f'font-weight="bold">{escape(title)}</text>',
    ]
    plot_bottom = top + row_height * len(rows)
    decade = low
    while decade <= high * 1.0001:
        for step in range(1, 10):
            tick = decade * step
            if tick > high * 1.0001:
                break
            gx = x(tick)
            major = step == 1
            out.append(
                f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{plot_bottom}" '
                f'stroke="{GRID}" stroke-width="{1.2 if major else 0.5}"/>'
            )
            if major:
                out.append(
                    f'<text x="{gx:.1f}" y="{plot_bottom + 16}" text-anchor="middle">'
                    f"{_tick_label(tick)}</text>"
                )
        decade *= 10
    one = x(1.0)
    out.append(
        f'<line x1="{one:.1f}" y1="{top - 8}" x2="{one:.1f}" y2="{plot_bottom}" '
        'stroke="black" stroke-width="1"/>'
    )
    for index, row in enumerate(rows):
        cy = top + row_height * index + row_height / 2
        if index % 2:
            out.append(
                f'<rect x="0" y="{cy - row_height / 2:.1f}" width="{width}" '
                f'height="{row_height}" fill="#f6f8fa" fill-opacity="0.6"/>'
            )
        out.append(
            f'<text x="{label_width - 8}" y="{cy + 4:.1f}" text-anchor="end">'
            f"{escape(row.label)}</text>"
        )
        if row.target is not None:
            tx = x(row.target)
            out.append(
                f'<line x1="{tx:.1f}" y1="{cy - 7:.1f}" x2="{tx:.1f}" y2="{cy + 7:.1f}" '
                f'stroke="{TARGET}" stroke-width="3"/>'
            )
        out.append(
            f'<line x1="{x(row.low):.1f}" y1="{cy:.1f}" x2="{x(row.high):.1f}" y2="{cy:.1f}" '
            f'stroke="{row.colour}" stroke-width="2"/>'
        )
        out.append(
            f'<circle cx="{x(row.value):.1f}" cy="{cy:.1f}" r="4.5" fill="{row.colour}">'
            f"<title>{escape(row.label)}: {row.value:.2f}x</title></circle>"
        )
    legend_y = plot_bottom + 38
    legend = [
        (MET, "meets its target"),
        (MISSED, "misses its target"),
        (NO_TARGET, "no target (a comparison)"),
    ]
    lx = 20
    for colour, text in legend:
        out.append(f'<circle cx="{lx}" cy="{legend_y - 4}" r="4.5" fill="{colour}"/>')
        out.append(f'<text x="{lx + 9}" y="{legend_y}">{text}</text>')
        lx += int(6.6 * len(text)) + 40
    out.append(
        f'<line x1="{lx}" y1="{legend_y - 11}" x2="{lx}" y2="{legend_y + 3}" '
        f'stroke="{TARGET}" stroke-width="3"/>'
    )
    out.append(f'<text x="{lx + 8}" y="{legend_y}">target; line: range over runs; log scale</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _png(rows: Sequence[ChartRow], title: str, path: Path) -> bool:
    """Draw with matplotlib if it is installed; False if it is not."""
    try:
        # Imported by name: an optional package, and without stubs for mypy.
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
        ticker = importlib.import_module("matplotlib.ticker")
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(11, 0.28 * len(rows) + 1.6))
    ys = list(range(len(rows)))[::-1]
    for y, row in zip(ys, rows, strict=True):
        axes.plot([row.low, row.high], [y, y], color=row.colour, linewidth=2)
        axes.plot([row.value], [y], "o", color=row.colour)
        if row.target is not None:
            axes.plot([row.target], [y], "|", color=TARGET, markersize=12, markeredgewidth=3)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: _tick_label(value)))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_yticks(ys)
    axes.set_yticklabels([row.label for row in rows], fontsize=8)
    axes.set_xlabel("ratio (log scale); dot: median over runs, line: range, blue bar: target")
    axes.set_title(title)
    axes.grid(axis="x", which="both", color=GRID, linewidth=0.5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def draw(rows: Sequence[ChartRow], directory: Path, *, title: str, stem: str = "ratios") -> Path:
    """Write the chart into ``directory``; return its path.

    A PNG if matplotlib can be imported, else an SVG; the other format's
    file from an earlier run is removed, so there is one chart.
    """
    if not rows:
        raise ValueError("no ratio to chart")
    png, svg_path = directory / f"{stem}.png", directory / f"{stem}.svg"
    if _png(rows, title, png):
        svg_path.unlink(missing_ok=True)
        return png
    svg_path.write_text(svg(rows, title), encoding="utf-8")
    png.unlink(missing_ok=True)
    return svg_path
