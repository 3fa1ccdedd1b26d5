"""Candidate regimes for the pilot runs of the perplexity-aware data law (science.md §2, "Pilot runs").

A regime is a pool of domain train chunks with its own landscape (μ, σ): a window of the PPL-sorted pool at a centre
and width (both fractions of the pool), a uniformly random subset, or the lowest-PPL subset (the papers' baseline).
Sizes are a separate pilot dimension: a pilot at token budget D trains on the first chunks of the regime in a seeded
order until D tokens are reached (:func:`regime_tokens_prefix`), and records the statistics of exactly those chunks.
Every regime holds at least ``min_tokens`` tokens, so the largest pilot size can draw from any of them.

Moments are chunk weighted, σ is the population standard deviation, and the log statistics use ln PPL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cpt.hashing import unit_interval

WINDOW, RANDOM, LOW_PPL = "window", "random", "low-ppl"


@dataclass(frozen=True)
class RegimeConfig:
    """Which regimes to build: windows at every (centre, width), plus a random and a low-PPL subset."""

    centres: tuple[float, ...] = (0.15, 0.35, 0.5, 0.65, 0.85)  # positions in the PPL-sorted pool, as quantiles
    widths: tuple[float, ...] = (0.2, 0.5)  # fractions of the pool's chunks
    random_fraction: float = 0.2  # of the pool's chunks, drawn uniformly (seeded)
    low_ppl_fraction: float = 0.2  # the lowest-PPL chunks
    seed: int = 0  # the random subset's draw
    min_tokens: int = 0  # every regime must hold at least this many tokens (the largest pilot size)

    def __post_init__(self) -> None:
        if not all(0.0 < c < 1.0 for c in self.centres):
            raise ValueError(f"window centres must lie in (0, 1), got {self.centres}")
        for name, values in (("widths", self.widths), ("fractions", (self.random_fraction, self.low_ppl_fraction))):
            if not all(0.0 < w <= 1.0 for w in values):
                raise ValueError(f"{name} must lie in (0, 1], got {values}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be ≥ 0, got {self.min_tokens}")
        names = [window_name(c, w) for w in self.widths for c in self.centres]
        if len(set(names)) != len(names):
            raise ValueError(f"centres/widths give duplicate regime names (two digits are kept): {sorted(names)}")


@dataclass(frozen=True)
class SubsetStats:
    """The landscape statistics of a set of chunks (chunk weighted, population σ)."""

    count: int
    tokens: int
    mu: float
    sigma: float
    log_mu: float
    log_sigma: float
    ppl_min: float
    ppl_max: float


def subset_stats(ppl: np.ndarray | Sequence[float], n_tokens: np.ndarray | Sequence[int]) -> SubsetStats:
    p = np.asarray(ppl, dtype=np.float64)
    if p.size == 0:
        return SubsetStats(0, 0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    log_p = np.log(p)
    return SubsetStats(
        count=int(p.size),
        tokens=int(np.asarray(n_tokens, dtype=np.int64).sum()),
        mu=float(p.mean()),
        sigma=float(p.std()),
        log_mu=float(log_p.mean()),
        log_sigma=float(log_p.std()),
        ppl_min=float(p.min()),
        ppl_max=float(p.max()),
    )


@dataclass(frozen=True, eq=False)
class ChunkPool:
    """The chunks regimes are drawn from, sorted by (PPL, chunk id): rank i is the i-th lowest PPL."""

    chunk_ids: tuple[str, ...]
    ppl: np.ndarray = field(repr=False)
    n_tokens: np.ndarray = field(repr=False)

    @classmethod
    def from_arrays(
        cls,
        chunk_ids: Sequence[str],
        ppl: np.ndarray | Sequence[float],
        n_tokens: np.ndarray | Sequence[int],
    ) -> ChunkPool:
        ids = [str(c) for c in chunk_ids]
        p = np.asarray(ppl, dtype=np.float64)
        n = np.asarray(n_tokens, dtype=np.int64)
        if not len(ids) == p.size == n.size:
            raise ValueError(f"chunk_ids, ppl and n_tokens differ in length ({len(ids)}, {p.size}, {n.size})")
        if len(set(ids)) != len(ids):
            raise ValueError(f"the pool has {len(ids) - len(set(ids))} duplicate chunk ids")
        if p.size and (~np.isfinite(p) | (p < 1.0)).any():
            raise ValueError("every PPL in the pool must be finite and at least 1")
        if (n <= 0).any():
            raise ValueError(f"{int((n <= 0).sum())} chunks of the pool have no tokens")
        order = sorted(range(len(ids)), key=lambda i: (p[i], ids[i]))
        return cls(tuple(ids[i] for i in order), p[order], n[order])

    def __len__(self) -> int:
        return len(self.chunk_ids)

    @property
    def tokens(self) -> int:
        return int(self.n_tokens.sum())

    def stats(self, ranks: np.ndarray | None = None) -> SubsetStats:
        if ranks is None:
            return subset_stats(self.ppl, self.n_tokens)
        return subset_stats(self.ppl[ranks], self.n_tokens[ranks])


@dataclass(frozen=True)
class Regime:
    """One candidate subset: its stable name, how it was defined, its chunks (sorted by id) and its landscape."""

    name: str  # "window-c0.50-w0.20", "random", "low-ppl"
    kind: str  # window | random | low-ppl
    params: tuple[tuple[str, float | int], ...]  # the definition, sorted by key: (("centre", 0.5), ...)
    seed: int
    chunk_ids: tuple[str, ...]
    stats: SubsetStats

    @property
    def definition(self) -> dict[str, float | int]:
        return dict(self.params)

    @property
    def count(self) -> int:
        return self.stats.count

    @property
    def tokens(self) -> int:
        return self.stats.tokens

    @property
    def mu(self) -> float:
        return self.stats.mu

    @property
    def sigma(self) -> float:
        return self.stats.sigma


def window_name(centre: float, width: float) -> str:
    return f"window-c{centre:.2f}-w{width:.2f}"


def window_ranks(n: int, centre: float, width: float) -> tuple[int, int]:
    """[start, stop) ranks of a window of ``round(width·n)`` chunks (at least 1) centred at quantile ``centre``,
    shifted inwards (keeping its size) where it would run past either end of the pool."""
    size = min(n, max(1, round(width * n)))
    start = round(centre * n - size / 2)
    start = min(max(start, 0), n - size)
    return start, start + size


def build_regimes(pool: ChunkPool, config: RegimeConfig) -> tuple[Regime, ...]:
    """Windows (by width, then centre), then ``random`` and ``low-ppl``; raises ValueError naming every regime that
    holds fewer than ``config.min_tokens`` tokens."""
    n = len(pool)
    if n == 0:
        raise ValueError("the chunk pool is empty: no domain train chunks were scored")
    regimes = []
    for width in config.widths:
        for centre in config.centres:
            start, stop = window_ranks(n, centre, width)
            params = (
                ("centre", centre),
                ("width", width),
                ("start_rank", start),
                ("stop_rank", stop),
                ("lo_quantile", start / n),
                ("hi_quantile", stop / n),
            )
            regimes.append(
                _regime(pool, window_name(centre, width), WINDOW, params, config.seed, np.arange(start, stop))
            )
    k = min(n, max(1, round(config.random_fraction * n)))
    salt = f"regime-random:{config.seed}"
    by_hash = sorted(range(n), key=lambda i: (unit_interval(pool.chunk_ids[i], salt), pool.chunk_ids[i]))
    regimes.append(
        _regime(pool, RANDOM, RANDOM, (("fraction", config.random_fraction),), config.seed, np.sort(by_hash[:k]))
    )
    k = min(n, max(1, round(config.low_ppl_fraction * n)))
    params = (("fraction", config.low_ppl_fraction), ("start_rank", 0), ("stop_rank", k))
    regimes.append(_regime(pool, LOW_PPL, LOW_PPL, params, config.seed, np.arange(k)))

    small = [r for r in regimes if r.tokens < config.min_tokens]
    if small:
        listed = ", ".join(f"{r.name} ({r.tokens} tokens)" for r in small)
        raise ValueError(
            f"{len(small)} regimes hold fewer than min_tokens={config.min_tokens} tokens: {listed}. The pool has "
            f"{pool.tokens} tokens in {n} chunks; lower min_tokens (the largest pilot size) or use wider regimes."
        )
    return tuple(regimes)


def _regime(
    pool: ChunkPool, name: str, kind: str, params: tuple[tuple[str, float | int], ...], seed: int, ranks: np.ndarray
) -> Regime:
    return Regime(
        name=name,
        kind=kind,
        params=tuple(sorted(params)),
        seed=seed,
        chunk_ids=tuple(sorted(pool.chunk_ids[i] for i in ranks)),
        stats=pool.stats(ranks),
    )


@dataclass(frozen=True)
class RegimeDraw:
    """What a pilot of token budget ``budget`` trains on: chunks in draw order, and their statistics."""

    budget: int
    seed: int
    chunk_ids: tuple[str, ...]
    stats: SubsetStats  # tokens ≥ budget: the last chunk may overshoot (a trainer truncating it records that)


def draw_order(chunk_ids: Sequence[str], seed: int) -> list[str]:
    """A seeded order of chunk ids, fixed per id: a chunk's place does not depend on which other chunks are there."""
    salt = f"regime-draw:{seed}"
    return sorted(chunk_ids, key=lambda c: (unit_interval(c, salt), c))


def regime_tokens_prefix(
    regime_chunk_ids: Sequence[str],
    n_tokens_by_chunk: Mapping[str, int],
    ppl_by_chunk: Mapping[str, float],
    budget: int,
    seed: int,
) -> RegimeDraw:
    """The first chunks of the regime, in the seeded :func:`draw_order`, until ``budget`` tokens are reached.

    Draws of one regime and seed are nested: a smaller budget takes a prefix of a larger one's chunks.
    """
    if budget <= 0:
        raise ValueError(f"the token budget must be positive, got {budget}")
    missing = [c for c in regime_chunk_ids if c not in n_tokens_by_chunk or c not in ppl_by_chunk]
    if missing:
        raise ValueError(f"{len(missing)} chunks of the regime have no token count or PPL (e.g. {missing[:3]})")
    chosen, tokens = [], 0
    for chunk_id in draw_order(regime_chunk_ids, seed):
        if tokens >= budget:
            break
        chosen.append(chunk_id)
        tokens += int(n_tokens_by_chunk[chunk_id])
    if tokens < budget:
        raise ValueError(f"the regime holds {tokens} tokens, fewer than the budget {budget}")
    stats = subset_stats([ppl_by_chunk[c] for c in chosen], [n_tokens_by_chunk[c] for c in chosen])
    return RegimeDraw(budget=budget, seed=seed, chunk_ids=tuple(chosen), stats=stats)
