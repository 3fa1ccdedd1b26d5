"""The perplexity landscape of a set of chunks, as mergeable partials (science.md §1).

A :class:`LandscapePartial` holds, for one group of chunks (role × source × split), the chunk counts and token counts
per bin of fixed, versioned log-spaced PPL edges and the exact moments (count, Σp, Σp², Σ ln p, Σ (ln p)², tokens,
min, max). Partials of disjoint sets merge by addition, so shards computed anywhere (Spark tasks, sources) add up to
the histogram of the whole. Quantiles come two ways: exact ones from the values (:func:`exact_quantiles`, numpy's
default linear interpolation, which Spark's ``percentile`` also uses) — those are what the ``landscape/histograms``
table stores, per group — and an approximate, mergeable estimate from a histogram alone (:func:`histogram_quantiles`,
log-linear interpolation within a bin), for partials that were merged after the fact.

Log statistics use the natural log: ln PPL is the chunk's mean NLL per token, in nats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ALL = "*"  # a group component merged over (e.g. source = "*": all sources of the role)
QUANTILE_LEVELS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)

# version → (first decade, last decade, bins per decade): log10-v1 spans PPL 1 … 1e6 in 120 bins, plus overflow.
_EDGE_VERSIONS: dict[str, tuple[int, int, int]] = {"log10-v1": (0, 6, 20)}


@dataclass(frozen=True, order=True)
class Group:
    """Which chunks a partial describes; a component equal to :data:`ALL` was merged over."""

    role: str
    source: str
    split: str

    def combine(self, other: Group) -> Group:
        """The group of the union: components that differ become :data:`ALL`."""
        return Group(*(a if a == b else ALL for a, b in zip(self.key, other.key, strict=True)))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.role, self.source, self.split)


@dataclass(frozen=True)
class BinEdges:
    """Fixed log10-spaced PPL bin edges, identified by ``version``.

    Bin ``i < n_regular`` holds ``edges[i] ≤ PPL < edges[i + 1]``; the last bin (index ``n_regular``, the overflow
    bin) holds ``PPL ≥ edges[-1]``. There is no underflow bin: PPL ≥ 1 by construction (NLL ≥ 0) and ``edges[0]`` is
    1, so a PPL below 1, NaN or infinite is an error, not a bin. Edge values are ``10 ** (k / per_decade)`` rounded
    to 12 significant digits, so they are the same numbers on every platform.
    """

    version: str
    first_decade: int
    last_decade: int
    per_decade: int
    edges: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.per_decade < 1 or self.last_decade <= self.first_decade:
            raise ValueError(f"invalid bin edges {self.first_decade}..{self.last_decade} × {self.per_decade}")
        steps = range(self.first_decade * self.per_decade, self.last_decade * self.per_decade + 1)
        edges = tuple(float(f"{10 ** (k / self.per_decade):.12g}") for k in steps)
        if edges[0] > 1.0:
            raise ValueError("the first edge must be at most PPL 1, since every PPL is at least 1")
        object.__setattr__(self, "edges", edges)

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.edges, dtype=np.float64)

    @property
    def n_regular(self) -> int:
        return len(self.edges) - 1

    @property
    def overflow(self) -> int:
        """The index of the overflow bin (PPL ≥ the last edge)."""
        return self.n_regular

    @property
    def n_bins(self) -> int:
        """Regular bins plus the overflow bin."""
        return self.n_regular + 1

    @property
    def lower(self) -> np.ndarray:
        """Lower edge of every bin (overflow included)."""
        return self.array

    @property
    def upper(self) -> np.ndarray:
        """Upper edge of every bin; ``inf`` for the overflow bin."""
        return np.append(self.array[1:], np.inf)

    def bin_of(self, ppl: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """The bin index of each PPL (vectorised): the largest ``i`` with ``edges[i] ≤ ppl``, or the overflow bin."""
        values = np.asarray(ppl, dtype=np.float64)
        bad = ~np.isfinite(values) | (values < self.edges[0])
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} PPL values are not finite or below {self.edges[0]} (e.g. {values[bad][:5].tolist()})"
            )
        return np.searchsorted(self.array, values, side="right").astype(np.int64) - 1


def bin_edges(version: str = "log10-v1") -> BinEdges:
    """The bin edges of a named version (a version, once published, never changes its edges)."""
    if version not in _EDGE_VERSIONS:
        raise ValueError(f"unknown bin edges version {version!r}; known: {sorted(_EDGE_VERSIONS)}")
    return BinEdges(version, *_EDGE_VERSIONS[version])


@dataclass(frozen=True)
class LandscapePartial:
    """Histogram and exact moments of one group of chunks; partials of disjoint sets merge by ``+``.

    ``quantiles`` holds the exact quantiles ``((level, value), ...)`` of this group's own values when they were
    computed from them; exact quantiles do not merge, so a merged partial has none (use :func:`histogram_quantiles`).
    """

    group: Group
    edges_version: str
    chunk_counts: tuple[int, ...]
    token_counts: tuple[int, ...]
    count: int
    tokens: int
    sum_ppl: float
    sum_ppl_sq: float
    sum_log_ppl: float
    sum_log_ppl_sq: float
    min_ppl: float  # inf when empty
    max_ppl: float  # -inf when empty
    quantiles: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if len(self.chunk_counts) != len(self.token_counts):
            raise ValueError("chunk_counts and token_counts differ in length")
        if sum(self.chunk_counts) != self.count or sum(self.token_counts) != self.tokens:
            raise ValueError(
                f"{self.group}: bin counts ({sum(self.chunk_counts)} chunks, {sum(self.token_counts)} tokens) do not "
                f"add up to the totals ({self.count}, {self.tokens})"
            )

    @classmethod
    def empty(cls, edges: BinEdges, group: Group) -> LandscapePartial:
        zeros = (0,) * edges.n_bins
        return cls(group, edges.version, zeros, zeros, 0, 0, 0.0, 0.0, 0.0, 0.0, math.inf, -math.inf)

    @classmethod
    def from_values(
        cls,
        ppl: np.ndarray | Sequence[float],
        n_tokens: np.ndarray | Sequence[int],
        edges: BinEdges,
        group: Group,
        quantile_levels: Sequence[float] = QUANTILE_LEVELS,
    ) -> LandscapePartial:
        """The reference computation on one machine: bins, correctly rounded sums (``math.fsum``), exact quantiles."""
        p = np.asarray(ppl, dtype=np.float64)
        n = np.asarray(n_tokens, dtype=np.int64)
        if p.shape != n.shape or p.ndim != 1:
            raise ValueError(f"ppl and n_tokens must be 1-d arrays of one length, got {p.shape} and {n.shape}")
        if (n <= 0).any():
            raise ValueError(f"{int((n <= 0).sum())} chunks have no predicted tokens")
        if p.size == 0:
            return cls.empty(edges, group)
        bins = edges.bin_of(p)
        log_p = np.log(p)
        return cls(
            group=group,
            edges_version=edges.version,
            chunk_counts=tuple(int(c) for c in np.bincount(bins, minlength=edges.n_bins)),
            token_counts=tuple(int(t) for t in np.bincount(bins, weights=n, minlength=edges.n_bins).astype(np.int64)),
            count=int(p.size),
            tokens=int(n.sum()),
            sum_ppl=math.fsum(p),
            sum_ppl_sq=math.fsum(p * p),
            sum_log_ppl=math.fsum(log_p),
            sum_log_ppl_sq=math.fsum(log_p * log_p),
            min_ppl=float(p.min()),
            max_ppl=float(p.max()),
            quantiles=tuple(zip(quantile_levels, exact_quantiles(p, quantile_levels), strict=True)),
        )

    def __add__(self, other: LandscapePartial) -> LandscapePartial:
        return merge(self, other)

    # ---- statistics (chunk weighted; population moments) ----------------------------------------------------------
    @property
    def mean(self) -> float:
        return self.sum_ppl / self.count if self.count else math.nan

    @property
    def var(self) -> float:
        return _variance(self.count, self.sum_ppl, self.sum_ppl_sq)

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    @property
    def log_mean(self) -> float:
        return self.sum_log_ppl / self.count if self.count else math.nan

    @property
    def log_var(self) -> float:
        return _variance(self.count, self.sum_log_ppl, self.sum_log_ppl_sq)

    @property
    def log_std(self) -> float:
        return math.sqrt(self.log_var)

    def quantile_map(self) -> dict[float, float]:
        return dict(self.quantiles)


def merge(a: LandscapePartial, b: LandscapePartial) -> LandscapePartial:
    """The partial of the union of two disjoint sets of chunks (bins and sums add; min/max combine)."""
    if a.edges_version != b.edges_version or len(a.chunk_counts) != len(b.chunk_counts):
        raise ValueError(f"cannot merge histograms on different bin edges ({a.edges_version} vs {b.edges_version})")
    return LandscapePartial(
        group=a.group.combine(b.group),
        edges_version=a.edges_version,
        chunk_counts=tuple(x + y for x, y in zip(a.chunk_counts, b.chunk_counts, strict=True)),
        token_counts=tuple(x + y for x, y in zip(a.token_counts, b.token_counts, strict=True)),
        count=a.count + b.count,
        tokens=a.tokens + b.tokens,
        sum_ppl=a.sum_ppl + b.sum_ppl,
        sum_ppl_sq=a.sum_ppl_sq + b.sum_ppl_sq,
        sum_log_ppl=a.sum_log_ppl + b.sum_log_ppl,
        sum_log_ppl_sq=a.sum_log_ppl_sq + b.sum_log_ppl_sq,
        min_ppl=min(a.min_ppl, b.min_ppl),
        max_ppl=max(a.max_ppl, b.max_ppl),
    )


def merge_all(partials: Sequence[LandscapePartial]) -> LandscapePartial:
    """Several partials merged, in the order given (at least one; a single partial comes back as it is)."""
    if not partials:
        raise ValueError("nothing to merge")
    total = partials[0]
    for p in partials[1:]:
        total = merge(total, p)
    return total


def _variance(n: int, s1: float, s2: float) -> float:
    if n == 0:
        return math.nan
    mean = s1 / n
    return max(s2 / n - mean * mean, 0.0)  # population variance; clamp the rounding of a zero spread


def exact_quantiles(
    values: np.ndarray | Sequence[float], levels: Sequence[float] = QUANTILE_LEVELS
) -> tuple[float, ...]:
    """Exact quantiles with linear interpolation between order statistics (numpy's default, Spark's ``percentile``);
    NaN for an empty set."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return tuple(math.nan for _ in levels)
    return tuple(float(q) for q in np.quantile(v, np.asarray(levels, dtype=np.float64), method="linear"))


def histogram_quantiles(
    partial: LandscapePartial, edges: BinEdges, levels: Sequence[float] = QUANTILE_LEVELS
) -> tuple[float, ...]:
    """Approximate quantiles from the histogram alone, for partials that were merged (exact ones do not merge).

    The chunks of a bin are taken as spread uniformly in log PPL over the bin, narrowed to [min, max] of the partial
    (which bounds the overflow bin too); the quantile at level q is where the cumulative count reaches q·n. The
    error is at most one bin width (a factor 10^(1/per_decade)) and vanishes at q = 0 and q = 1.
    """
    if partial.edges_version != edges.version:
        raise ValueError(f"partial on edges {partial.edges_version}, edges given {edges.version}")
    if partial.count == 0:
        return tuple(math.nan for _ in levels)
    counts = np.asarray(partial.chunk_counts, dtype=np.float64)
    cum = np.cumsum(counts)
    lo = np.log(np.clip(edges.lower, partial.min_ppl, partial.max_ppl))
    hi = np.log(np.clip(edges.upper, partial.min_ppl, partial.max_ppl))
    out = []
    for q in levels:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile level {q} outside [0, 1]")
        rank = q * partial.count
        b = int(np.searchsorted(cum, rank, side="left"))  # first bin whose cumulative count reaches the rank
        b = min(b, len(counts) - 1)
        while counts[b] == 0 and b + 1 < len(counts):  # rank 0 lands before the first non-empty bin
            b += 1
        before = cum[b] - counts[b]
        frac = min(max((rank - before) / counts[b], 0.0), 1.0)
        out.append(float(math.exp(lo[b] + frac * (hi[b] - lo[b]))))
    return tuple(min(max(v, partial.min_ppl), partial.max_ppl) for v in out)
