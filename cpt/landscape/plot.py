"""The landscape picture: chunk-PPL densities of each role on a log axis, with quantile markers.

Uses matplotlib's object API on the Agg canvas (no pyplot, no global state); the PNG carries no software or time
stamp, so the same partials give the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cpt.landscape.histogram import BinEdges, LandscapePartial, histogram_quantiles, merge_all

ROLE_COLOURS = {"domain": "#c0392b", "general": "#2471a3"}
OTHER_COLOURS = ("#239b56", "#7d3c98", "#b9770e", "#566573")
MARKERS = {0.1: ":", 0.5: "-", 0.9: "--"}  # quantile level → line style


def landscape_png(
    partials: Sequence[LandscapePartial],
    edges: BinEdges,
    quantiles: Mapping[str, Mapping[float, float]] | None = None,
    *,
    title: str = "",
) -> bytes:
    """A PNG of the density of chunks per log10-PPL unit, one curve per role (partials of one role are merged).

    Markers at p10, p50 and p90: from ``quantiles[role]`` when given, else the partial's exact quantiles, else the
    histogram estimate.
    """
    if not partials:
        raise ValueError("nothing to plot")
    by_role: dict[str, list[LandscapePartial]] = {}
    for p in partials:
        by_role.setdefault(p.group.role, []).append(p)
    step = edges.edges[1] / edges.edges[0]
    lower = edges.lower
    upper = np.append(edges.array[1:], edges.edges[-1] * step)  # the overflow bin drawn one bin wide
    widths = np.log10(upper) - np.log10(lower)

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    used = np.zeros(edges.n_bins, dtype=bool)
    for i, role in enumerate(sorted(by_role, key=lambda r: (r not in ROLE_COLOURS, r))):
        merged = merge_all(by_role[role])
        if merged.count == 0:
            continue
        colour = ROLE_COLOURS.get(role, OTHER_COLOURS[i % len(OTHER_COLOURS)])
        counts = np.asarray(merged.chunk_counts, dtype=np.float64)
        used |= counts > 0
        density = counts / (merged.count * widths)
        levels = _markers(merged, edges, (quantiles or {}).get(role))
        ax.stairs(density, np.append(lower, upper[-1]), color=colour, linewidth=1.6, label=_label(role, merged, levels))
        top = float(density.max())
        for level, style in MARKERS.items():
            value = levels.get(level)
            if value is not None and math.isfinite(value):
                ax.vlines(value, 0, top * 1.05, colors=colour, linestyles=style, linewidth=1.0)
    if used.any():
        first, last = int(np.argmax(used)), int(len(used) - 1 - np.argmax(used[::-1]))
        ax.set_xlim(lower[first], upper[last])
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("chunk perplexity (log scale)")
    ax.set_ylabel("density of chunks per log10 PPL")
    ax.set_title(title or f"Perplexity landscape (bins {edges.version}; lines: p10 dotted, p50, p90 dashed)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _markers(
    partial: LandscapePartial, edges: BinEdges, given: Mapping[float, float] | None
) -> dict[float, float | None]:
    if given is not None:
        return {level: given.get(level) for level in MARKERS}
    exact = partial.quantile_map()
    if all(level in exact for level in MARKERS):
        return {level: exact[level] for level in MARKERS}
    return dict(zip(MARKERS, histogram_quantiles(partial, edges, tuple(MARKERS)), strict=True))


def _label(role: str, p: LandscapePartial, levels: Mapping[float, float | None]) -> str:
    median = levels.get(0.5)
    median_text = f", median {median:.3g}" if median is not None else ""
    return f"{role}: {p.count} chunks, mean {p.mean:.3g}, sd {p.std:.3g}{median_text}"
