"""The perplexity landscape of ``scores/chunk_perplexity`` on Spark: mergeable partials per (role, source, split).

One aggregation over the chunks, grouped by (group, bin), yields every mergeable quantity — chunk and token counts
per bin and the moment sums — as a small table of per-bin partials that the driver adds up in bin order (the same
:class:`~cpt.landscape.histogram.LandscapePartial` addition that merges shards anywhere else). Exact quantiles are
not mergeable, so they take a second aggregation over the raw PPLs: Spark's ``percentile`` is exact, with linear
interpolation between order statistics, as numpy's default ``np.quantile``.

The bin of a PPL is the one :meth:`BinEdges.bin_of` gives: a first guess from ``floor(log10(ppl) · per_decade)``,
corrected against the literal edge values, so Spark and numpy agree exactly even where ``log10`` rounds differently.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cpt.delta_store import DeltaStore, Snapshot
from cpt.landscape.histogram import ALL, QUANTILE_LEVELS, BinEdges, Group, LandscapePartial, merge_all
from cpt.landscape.schema import select_scoring
from spark_jobs.delta_bridge import read_snapshot
from spark_jobs.scoring import SCORES_TABLE

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

GROUP_COLUMNS = ("role", "source", "split")
INVALID_BIN = -1


def bin_column(edges: BinEdges, ppl: str = "ppl", n_tokens: str = "n_tokens") -> Column:
    """The bin index of each row's PPL, as :meth:`BinEdges.bin_of`; ``-1`` for a row that has no valid bin (PPL
    null, NaN, infinite or below the first edge, or no tokens)."""
    from pyspark.sql import functions as F

    p = F.col(ppl)
    literal_edges = F.array(*[F.lit(float(e)) for e in edges.edges])
    guess = F.floor(F.log10(p) * edges.per_decade) - edges.first_decade * edges.per_decade
    guess = F.least(F.greatest(guess, F.lit(0)), F.lit(edges.n_regular - 1)).cast("int")
    lower = F.element_at(literal_edges, guess + 1)
    upper = F.element_at(literal_edges, guess + 2)
    index = guess - (p < lower).cast("int") + (p >= upper).cast("int")
    valid = (
        p.isNotNull()
        & ~F.isnan(p)
        & (p >= F.lit(edges.edges[0]))
        & (p < F.lit(math.inf))
        & F.col(n_tokens).isNotNull()
        & (F.col(n_tokens) > 0)
    )
    return F.when(valid, index).otherwise(F.lit(INVALID_BIN))


def landscape_partials(
    scores: DataFrame,
    edges: BinEdges,
    *,
    group_by: Sequence[str] = GROUP_COLUMNS,
    quantile_levels: Sequence[float] = QUANTILE_LEVELS,
) -> list[LandscapePartial]:
    """One partial per group of ``group_by`` (a subset of role, source, split; the others are :data:`ALL`), with
    histogram, moments and exact quantiles, sorted by group. Raises ValueError on rows without a valid PPL."""
    from pyspark.sql import functions as F

    cols = list(group_by)
    unknown = [c for c in cols if c not in GROUP_COLUMNS]
    if unknown:
        raise ValueError(f"group_by must be a subset of {GROUP_COLUMNS}, got {unknown}")
    p, log_p = F.col("ppl"), F.log(F.col("ppl"))
    per_bin = (
        scores.select(*cols, "ppl", "n_tokens", bin_column(edges).alias("bin"))
        .groupBy(*cols, "bin")
        .agg(
            F.count(F.lit(1)).alias("count"),
            F.sum("n_tokens").alias("tokens"),
            F.sum(p).alias("s1"),
            F.sum(p * p).alias("s2"),
            F.sum(log_p).alias("l1"),
            F.sum(log_p * log_p).alias("l2"),
            F.min(p).alias("lo"),
            F.max(p).alias("hi"),
        )
        .collect()
    )
    invalid = sum(r["count"] for r in per_bin if r["bin"] == INVALID_BIN)
    if invalid:
        raise ValueError(f"{invalid} score rows have a PPL that is null, NaN, infinite or below 1, or no tokens")
    bins_of: dict[Group, list] = {}
    for r in per_bin:
        bins_of.setdefault(_group(r, cols), []).append(r)
    quantiles = group_quantiles(scores, group_by=cols, levels=quantile_levels)
    return [_partial(group, rows, edges, quantiles[group]) for group, rows in sorted(bins_of.items())]


def group_quantiles(
    scores: DataFrame, *, group_by: Sequence[str] = GROUP_COLUMNS, levels: Sequence[float] = QUANTILE_LEVELS
) -> dict[Group, tuple[tuple[float, float], ...]]:
    """Exact PPL quantiles ``((level, value), ...)`` per group (Spark ``percentile``: linear interpolation)."""
    from pyspark.sql import functions as F

    cols = list(group_by)
    rows = scores.groupBy(*cols).agg(F.percentile("ppl", [float(q) for q in levels]).alias("q")).collect()
    return {_group(r, cols): tuple(zip(levels, (float(v) for v in r["q"]), strict=True)) for r in rows}


def _group(row, cols: Sequence[str]) -> Group:
    values = {c: row[c] for c in cols}
    if any(v is None for v in values.values()):
        raise ValueError(f"score rows with a null {[c for c, v in values.items() if v is None]}")
    return Group(*(values.get(c, ALL) for c in GROUP_COLUMNS))


def _partial(group: Group, rows: list, edges: BinEdges, quantiles: tuple[tuple[float, float], ...]) -> LandscapePartial:
    rows = sorted(rows, key=lambda r: r["bin"])  # a fixed order of addition: the same sums on every run
    chunks, tokens = [0] * edges.n_bins, [0] * edges.n_bins
    for r in rows:
        chunks[r["bin"]], tokens[r["bin"]] = int(r["count"]), int(r["tokens"])
    return LandscapePartial(
        group=group,
        edges_version=edges.version,
        chunk_counts=tuple(chunks),
        token_counts=tuple(tokens),
        count=sum(chunks),
        tokens=sum(tokens),
        sum_ppl=math.fsum(r["s1"] for r in rows),
        sum_ppl_sq=math.fsum(r["s2"] for r in rows),
        sum_log_ppl=math.fsum(r["l1"] for r in rows),
        sum_log_ppl_sq=math.fsum(r["l2"] for r in rows),
        min_ppl=float(min(r["lo"] for r in rows)),
        max_ppl=float(max(r["hi"] for r in rows)),
        quantiles=quantiles,
    )


def scoring_revisions(scores: DataFrame) -> dict[tuple[str, str], int]:
    """Chunks per (model_revision, policy_hash) present in the scores."""
    rows = scores.groupBy("model_revision", "policy_hash").count().collect()
    return {(r["model_revision"], r["policy_hash"]): int(r["count"]) for r in rows}


@dataclass(frozen=True)
class LandscapeJobResult:
    snapshot: Snapshot  # the scores version that was read
    model_revision: str
    policy_hash: str
    partials: tuple[LandscapePartial, ...]  # per (role, source, split), then per (role, "*", split)
    seconds: float

    @property
    def scores_version(self) -> int:
        return self.snapshot.version


def run_landscape_job(
    spark: SparkSession,
    store: DeltaStore,
    scores_version: int,
    edges: BinEdges,
    *,
    model_revision: str | None = None,
    policy_hash: str | None = None,
) -> LandscapeJobResult:
    """The landscape of the scores at ``scores_version`` under one scoring (model revision + window policy: the only
    one present unless named), per source and per role over all sources."""
    from pyspark.sql import functions as F

    start = time.perf_counter()
    scores, snapshot = read_snapshot(spark, store, SCORES_TABLE, scores_version)
    scores = scores.select(*GROUP_COLUMNS, "ppl", "n_tokens", "model_revision", "policy_hash")
    revision, policy = select_scoring(scoring_revisions(scores), model_revision, policy_hash)
    scores = scores.filter((F.col("model_revision") == revision) & (F.col("policy_hash") == policy))
    per_source = landscape_partials(scores, edges)
    role_quantiles = group_quantiles(scores, group_by=("role", "split"))
    per_role: dict[Group, list[LandscapePartial]] = {}
    for p in per_source:
        per_role.setdefault(Group(p.group.role, ALL, p.group.split), []).append(p)
    overall = [
        dataclasses.replace(merge_all(parts), group=group, quantiles=role_quantiles[group])
        for group, parts in sorted(per_role.items())
    ]
    return LandscapeJobResult(snapshot, revision, policy, (*per_source, *overall), time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    """``landscape.py job.json`` (for ``spark-submit``): {"delta_root": ..., "storage_options": {...}, "spark":
    {SparkSettings fields}, "job": {"scores_version": N, "edges_version": "log10-v1", "model_revision": null,
    "policy_hash": null}}. Prints the result as JSON: the snapshot read and every partial."""
    import json
    import sys

    from cpt.landscape.histogram import bin_edges
    from spark_jobs.session import SparkSettings, job_session

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    with open(args[0]) as fh:
        config = json.load(fh)
    job = config["job"]
    store = DeltaStore(config["delta_root"], config.get("storage_options"))
    with job_session(SparkSettings(**config.get("spark", {}))) as spark:
        result = run_landscape_job(
            spark,
            store,
            job["scores_version"],
            bin_edges(job.get("edges_version", "log10-v1")),
            model_revision=job.get("model_revision"),
            policy_hash=job.get("policy_hash"),
        )
    partials = [dataclasses.asdict(p) | {"group": dataclasses.asdict(p.group)} for p in result.partials]
    summary = {
        "scores_version": result.scores_version,
        "model_revision": result.model_revision,
        "policy_hash": result.policy_hash,
        "seconds": result.seconds,
        "partials": partials,
    }
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
