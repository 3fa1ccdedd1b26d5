"""Landscape partials merge exactly, bins are versioned, quantile estimates are sane, regimes are deterministic."""

import dataclasses
import hashlib
import itertools
import math

import numpy as np
import pyarrow as pa
import pytest

from cpt.landscape.histogram import (
    ALL,
    QUANTILE_LEVELS,
    BinEdges,
    Group,
    LandscapePartial,
    bin_edges,
    exact_quantiles,
    histogram_quantiles,
    merge,
    merge_all,
)
from cpt.landscape.plot import landscape_png
from cpt.landscape.regimes import (
    ChunkPool,
    RegimeConfig,
    build_regimes,
    draw_order,
    regime_tokens_prefix,
    window_ranks,
)
from cpt.landscape.schema import (
    HISTOGRAMS_SCHEMA,
    REGIMES_SCHEMA,
    histogram_table,
    partials_from_table,
    regimes_from_table,
    regimes_table,
    select_scoring,
)

EDGES = bin_edges("log10-v1")
DOMAIN = Group("domain", "a", "train")


def sample(n, seed=0, loc=3.0):
    rng = np.random.default_rng(seed)
    ppl = np.exp(np.abs(rng.normal(loc, 1.2, n)))  # ≥ 1
    tokens = rng.integers(8, 257, n)
    return ppl, tokens


def assert_same_moments(a: LandscapePartial, b: LandscapePartial, rel: float) -> None:
    assert (a.count, a.tokens, a.min_ppl, a.max_ppl) == (b.count, b.tokens, b.min_ppl, b.max_ppl)
    for name in ("sum_ppl", "sum_ppl_sq", "sum_log_ppl", "sum_log_ppl_sq", "mean", "std", "log_mean", "log_std"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=rel, abs=0), name


def test_bin_edges_are_fixed_and_versioned():
    edges = bin_edges()
    assert edges.version == "log10-v1" and edges.n_regular == 120 and edges.n_bins == 121
    assert edges.edges[0] == 1.0 and edges.edges[20] == 10.0 and edges.edges[-1] == 1e6
    assert edges.edges[1] == 1.1220184543  # 10^(1/20), 12 significant digits: the same on every platform
    # a published version never changes: any change to these 121 numbers must be a new version
    assert hashlib.sha256(repr(edges.edges).encode()).hexdigest()[:16] == "44db12df99192123"
    assert all(b > a for a, b in zip(edges.edges, edges.edges[1:], strict=False))
    assert edges == BinEdges("log10-v1", 0, 6, 20)
    with pytest.raises(ValueError, match="unknown bin edges version"):
        bin_edges("log10-v0")


def test_bin_of_edges_overflow_and_invalid_values():
    e = EDGES
    values = [1.0, 1.05, e.edges[1], np.nextafter(e.edges[1], 0), 10.0, 999_999.0, 1e6, 1e9]
    assert e.bin_of(values).tolist() == [0, 0, 1, 0, 20, 119, 120, 120]
    assert e.bin_of(3.0).item() == 9  # log10(3) · 20 = 9.54
    assert e.upper[-1] == math.inf and e.lower[-1] == 1e6
    for bad in (0.999, math.nan, math.inf):
        with pytest.raises(ValueError, match="not finite or below"):
            e.bin_of([2.0, bad])


def test_merged_partials_equal_the_partial_of_the_whole():
    ppl, tokens = sample(5000)
    ppl[:3] = [1.0, 2e6, 1e6]  # the first edge and the overflow bin take part
    whole = LandscapePartial.from_values(ppl, tokens, EDGES, DOMAIN)
    cuts = [0, 7, 1300, 1301, 4000, 5000]  # uneven parts, one of a single chunk
    parts = [LandscapePartial.from_values(ppl[a:b], tokens[a:b], EDGES, DOMAIN) for a, b in itertools.pairwise(cuts)]
    merged = merge_all(parts)
    assert merged.chunk_counts == whole.chunk_counts and merged.token_counts == whole.token_counts
    assert merged.chunk_counts[-1] == 2 and merged.chunk_counts[0] >= 1
    assert_same_moments(merged, whole, rel=1e-12)
    assert merged.quantiles == () and len(whole.quantiles) == len(QUANTILE_LEVELS)  # exact quantiles do not merge
    assert merge(parts[0], LandscapePartial.empty(EDGES, DOMAIN)).chunk_counts == parts[0].chunk_counts
    assert (parts[0] + parts[1]).count == 1300

    # moments are the textbook population ones
    assert whole.mean == pytest.approx(ppl.mean(), rel=1e-12) and whole.std == pytest.approx(ppl.std(), rel=1e-9)
    assert whole.log_std == pytest.approx(np.log(ppl).std(), rel=1e-9)
    assert sum(whole.token_counts) == whole.tokens == int(tokens.sum())


def test_merging_groups_and_edge_versions():
    a = LandscapePartial.from_values([2.0], [10], EDGES, Group("domain", "a", "train"))
    b = LandscapePartial.from_values([3.0], [10], EDGES, Group("domain", "b", "train"))
    assert (a + b).group == Group("domain", ALL, "train")
    other = dataclasses.replace(b, edges_version="log10-v2")
    with pytest.raises(ValueError, match="different bin edges"):
        merge(a, other)
    with pytest.raises(ValueError, match="do not add up"):
        dataclasses.replace(a, count=2)


def test_exact_quantiles_are_numpys_linear_ones_and_histogram_estimates_stay_within_a_bin():
    ppl, tokens = sample(20_000, seed=3)
    partial = LandscapePartial.from_values(ppl, tokens, EDGES, DOMAIN)
    exact = exact_quantiles(ppl)
    assert exact == tuple(np.quantile(ppl, QUANTILE_LEVELS))
    assert exact_quantiles([1.0, 2.0, 4.0], [0.25, 0.5]) == (1.5, 2.0)
    approx = histogram_quantiles(partial, EDGES)
    step = EDGES.edges[1]  # one bin is a factor 10^(1/20)
    for e, a in zip(exact, approx, strict=True):
        assert e / step <= a <= e * step
    assert list(approx) == sorted(approx)
    assert histogram_quantiles(partial, EDGES, (0.0, 1.0)) == (partial.min_ppl, partial.max_ppl)
    one_bin = LandscapePartial.from_values([5.01, 5.02, 5.03], [1, 1, 1], EDGES, DOMAIN)
    assert all(5.01 <= v <= 5.03 for v in histogram_quantiles(one_bin, EDGES))
    assert all(math.isnan(v) for v in histogram_quantiles(LandscapePartial.empty(EDGES, DOMAIN), EDGES))


def test_histogram_table_round_trips_and_is_dense():
    ppl, tokens = sample(300, seed=5)
    partials = [
        LandscapePartial.from_values(ppl[:200], tokens[:200], EDGES, Group("general", "g", "train")),
        LandscapePartial.from_values(ppl[200:], tokens[200:], EDGES, DOMAIN),
    ]
    table = histogram_table(partials, EDGES, scores_version=4, model_revision="rev", policy_hash="pol")
    assert table.schema == HISTOGRAMS_SCHEMA and table.num_rows == 2 * EDGES.n_bins
    assert table["role"][0].as_py() == "domain"  # sorted by group
    assert sum(table["chunk_count"].to_pylist()) == 300
    assert partials_from_table(table) == sorted(partials, key=lambda p: p.group)
    assert partials_from_table(table.slice(0, EDGES.n_bins))[0].quantile_map()[0.5] == pytest.approx(
        float(np.median(ppl[200:]))
    )
    with pytest.raises(ValueError, match="every bin"):
        partials_from_table(table.slice(1))


def test_scoring_selection_refuses_to_mix_revisions():
    assert select_scoring({("r1", "p"): 5}) == ("r1", "p")
    both = {("r1", "p"): 5, ("r2", "p"): 7}
    with pytest.raises(ValueError, match="2 scorings"):
        select_scoring(both)
    assert select_scoring(both, model_revision="r2") == ("r2", "p")
    with pytest.raises(ValueError, match="no scores for"):
        select_scoring(both, model_revision="r3")


def test_landscape_png_is_deterministic():
    ppl, tokens = sample(2000, seed=1)
    partials = [
        LandscapePartial.from_values(ppl, tokens, EDGES, DOMAIN),
        LandscapePartial.from_values(ppl * 4, tokens, EDGES, Group("general", "g", "train")),
        LandscapePartial.from_values(ppl * 5, tokens, EDGES, Group("general", "h", "train")),
    ]
    png = landscape_png(partials, EDGES)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert landscape_png(partials, EDGES) == png
    assert landscape_png(partials, EDGES, {"domain": {0.1: 2.0, 0.5: 3.0, 0.9: 9.0}}) != png


def pool(n=1000, seed=0):
    ppl, tokens = sample(n, seed=seed)
    ids = [f"chunk-{i:05d}" for i in range(n)]
    return (
        ChunkPool.from_arrays(ids, ppl, tokens),
        dict(zip(ids, tokens.tolist(), strict=True)),
        dict(zip(ids, ppl.tolist(), strict=True)),
    )


def test_regimes_are_deterministic_and_windows_order_by_centre():
    chunks, _, _ = pool()
    config = RegimeConfig(seed=7, min_tokens=1000)
    regimes = build_regimes(chunks, config)
    assert build_regimes(chunks, config) == regimes
    shuffled = ChunkPool.from_arrays(list(reversed(chunks.chunk_ids)), chunks.ppl[::-1], chunks.n_tokens[::-1])
    assert build_regimes(shuffled, config) == regimes  # the input order does not matter
    names = [r.name for r in regimes]
    assert names[:5] == [f"window-c{c:.2f}-w0.20" for c in config.centres] and names[-2:] == ["random", "low-ppl"]
    assert len(set(names)) == len(names) == 12
    for width in config.widths:
        windows = [r for r in regimes if r.kind == "window" and r.definition["width"] == width]
        mus = [r.mu for r in windows]
        assert mus == sorted(mus) and len(set(mus)) == len(mus)
        assert all(r.count == round(width * len(chunks)) for r in windows)
    by_name = {r.name: r for r in regimes}
    assert by_name["low-ppl"].mu < by_name["window-c0.15-w0.20"].mu
    assert by_name["window-c0.50-w0.50"].sigma > by_name["window-c0.50-w0.20"].sigma
    assert by_name["window-c0.85-w0.50"].definition["stop_rank"] == len(chunks)  # shifted inwards, size kept
    low = by_name["low-ppl"]
    assert max(chunks.ppl[: low.count]) == low.stats.ppl_max and list(low.chunk_ids) == sorted(low.chunk_ids)
    random = by_name["random"]
    assert random.count == 200 and build_regimes(chunks, dataclasses.replace(config, seed=8))[-2] != random
    assert random.stats.ppl_min < by_name["window-c0.15-w0.20"].stats.ppl_max  # spans the whole pool
    assert random.stats.ppl_max > by_name["window-c0.85-w0.20"].stats.ppl_min


def test_min_tokens_is_enforced_with_a_clear_error():
    chunks, _, _ = pool(200)
    enough = int(min(r.tokens for r in build_regimes(chunks, RegimeConfig())))
    build_regimes(chunks, RegimeConfig(min_tokens=enough))
    with pytest.raises(
        ValueError, match=r"fewer than min_tokens=.*window-c0\.15-w0\.20 \(\d+ tokens\).*lower min_tokens"
    ):
        build_regimes(chunks, RegimeConfig(min_tokens=chunks.tokens // 3))
    with pytest.raises(ValueError, match="empty"):
        build_regimes(ChunkPool.from_arrays([], [], []), RegimeConfig())
    with pytest.raises(ValueError, match="centres"):
        RegimeConfig(centres=(0.0, 0.5))
    with pytest.raises(ValueError, match="duplicate"):
        ChunkPool.from_arrays(["a", "a"], [2.0, 3.0], [1, 1])


def test_window_ranks_keep_their_size_at_the_ends():
    assert window_ranks(100, 0.5, 0.2) == (40, 60)
    assert window_ranks(100, 0.05, 0.2) == (0, 20)
    assert window_ranks(100, 0.99, 0.5) == (50, 100)
    assert window_ranks(3, 0.5, 0.01) == (1, 2)  # at least one chunk


def test_size_draws_are_seeded_nested_prefixes_with_their_own_statistics():
    chunks, n_tokens, ppl = pool()
    regime = build_regimes(chunks, RegimeConfig())[7]  # window-c0.50-w0.50
    small = regime_tokens_prefix(regime.chunk_ids, n_tokens, ppl, 5_000, seed=1)
    large = regime_tokens_prefix(regime.chunk_ids, n_tokens, ppl, 20_000, seed=1)
    assert large.chunk_ids[: len(small.chunk_ids)] == small.chunk_ids
    assert small.stats.tokens >= 5_000 > small.stats.tokens - n_tokens[small.chunk_ids[-1]]
    assert small.stats.mu == pytest.approx(np.mean([ppl[c] for c in small.chunk_ids]))
    assert small.stats.sigma == pytest.approx(np.std([ppl[c] for c in small.chunk_ids]))
    assert regime_tokens_prefix(regime.chunk_ids, n_tokens, ppl, 5_000, seed=1) == small
    assert regime_tokens_prefix(regime.chunk_ids, n_tokens, ppl, 5_000, seed=2).chunk_ids != small.chunk_ids
    assert set(draw_order(regime.chunk_ids, 1)) == set(regime.chunk_ids)
    with pytest.raises(ValueError, match="fewer than the budget"):
        regime_tokens_prefix(regime.chunk_ids, n_tokens, ppl, regime.tokens + 1, seed=1)


def test_regimes_table_round_trips():
    chunks, _, _ = pool(300)
    regimes = build_regimes(chunks, RegimeConfig())
    table = regimes_table(regimes, min_tokens=0, scores_version=3, model_revision="rev", policy_hash="pol")
    assert table.schema == REGIMES_SCHEMA and table.num_rows == len(regimes)
    assert regimes_from_table(table) == regimes
    assert table.column("chunk_ids").type == pa.list_(pa.string())
