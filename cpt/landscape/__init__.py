"""Perplexity landscapes: mergeable histograms of chunk PPL on versioned log bins, and the candidate regimes (subsets
of the domain pool spanning different (μ, σ)) that the pilot runs of the perplexity-aware data law train on.

``plot`` (matplotlib) is imported on demand: ``from cpt.landscape.plot import landscape_png``.
"""

from cpt.landscape.histogram import (
    ALL,
    QUANTILE_LEVELS,
    BinEdges,
    Group,
    LandscapePartial,
    bin_edges,
    exact_quantiles,
    histogram_quantiles,
)
from cpt.landscape.regimes import ChunkPool, Regime, RegimeConfig, RegimeDraw, build_regimes, regime_tokens_prefix

__all__ = [
    "ALL",
    "QUANTILE_LEVELS",
    "BinEdges",
    "ChunkPool",
    "Group",
    "LandscapePartial",
    "Regime",
    "RegimeConfig",
    "RegimeDraw",
    "bin_edges",
    "build_regimes",
    "exact_quantiles",
    "histogram_quantiles",
    "regime_tokens_prefix",
]
