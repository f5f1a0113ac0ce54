"""Charts as inline SVG strings, so a report is one HTML file with nothing to fetch.

Figures are built with matplotlib's object API (no pyplot), inside an rc_context: no global figure
registry, no backend switch, no style change leaks to the caller.
"""
from __future__ import annotations

import io

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller files, selectable and searchable in the page
    "svg.hashsalt": "tuna",  # the same chart gives the same SVG
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
MARKERS_UP_TO = 30  # series this short get a marker on every point (a single point is otherwise invisible)


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
               logy: bool = False) -> str:
    """One line per named series of (x, y) points."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.0, 3.4))
        ax = fig.add_subplot()
        for name, points in series.items():
            xs, ys = zip(*points) if points else ((), ())
            ax.plot(xs, ys, label=name, linewidth=1.4, marker="o" if len(points) <= MARKERS_UP_TO else None,
                    markersize=3.5)
        if logy and all(y > 0 for points in series.values() for _, y in points):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 2 rather than 2x10^0 within a decade
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        _finish(ax, title, xlabel, ylabel, legend=len(series) > 1)
        return _svg(fig)


def histogram(values: list[float], *, title: str, xlabel: str, bins: int = 30) -> str:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.0, 3.0))
        ax = fig.add_subplot()
        ax.hist(values, bins=bins, color="C0")
        _finish(ax, title, xlabel, "records", legend=False)
        return _svg(fig)


def tradeoff_chart(points: list[dict], *, x: str, y: str, xlabel: str, ylabel: str, front: list[str]) -> str:
    """Named points, each labelled; the Pareto front (the names in `front`) highlighted and joined by a line.
    A point with `<x>_ci` or `<y>_ci` (low, high) gets error bars on that axis."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.0, 4.0))
        ax = fig.add_subplot()
        for p in points:
            bars = {f"{k}err": [[p[axis] - p[f"{axis}_ci"][0]], [p[f"{axis}_ci"][1] - p[axis]]]
                    for k, axis in (("x", x), ("y", y)) if f"{axis}_ci" in p}
            if bars:
                ax.errorbar([p[x]], [p[y]], **bars, fmt="none", ecolor="0.7", elinewidth=1, capsize=2, zorder=1,
                            gid=f"error-bars-{p['name']}")
        on_front = [p for p in points if p["name"] in front]
        others = [p for p in points if p["name"] not in front]
        ax.scatter([p[x] for p in others], [p[y] for p in others], color="0.6", s=22, zorder=2, label="dominated")
        line = sorted(on_front, key=lambda p: (p[x], p[y]))
        ax.plot([p[x] for p in line], [p[y] for p in line], color="C3", marker="o", markersize=6, linewidth=1.4,
                zorder=3, label="Pareto front", gid="pareto-front")
        for p in points:
            ax.annotate(str(p["name"]), (p[x], p[y]), xytext=(4, 4), textcoords="offset points", fontsize=8,
                        color="C3" if p["name"] in front else "0.3")
        ax.margins(0.1)  # room for the labels of the outermost points
        _finish(ax, "", xlabel, ylabel, legend=bool(others and on_front))
        return _svg(fig)


def _finish(ax, title: str, xlabel: str, ylabel: str, legend: bool) -> None:
    if title:
        ax.set_title(title, loc="left", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(frameon=False, fontsize=8)
    width, height = ax.figure.get_size_inches()  # fixed margins: tight_layout would double the drawing time
    ax.figure.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.3 / height)


def _svg(fig: Figure) -> str:
    """The figure as an <svg> element: the XML prolog and DOCTYPE cut so it can sit inside HTML."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]
