"""The Spark landscape equals the numpy reference on the same scores, and per-source partials merge to the whole."""

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cpt.landscape.histogram import ALL, QUANTILE_LEVELS, Group, LandscapePartial, bin_edges, merge_all
from cpt.scoring.schema import SCORES_SCHEMA
from spark_jobs.delta_bridge import read_snapshot
from spark_jobs.landscape import landscape_partials, run_landscape_job
from spark_jobs.scoring import SCORES_TABLE

pytestmark = pytest.mark.spark

EDGES = bin_edges("log10-v1")
# source → (role, log-PPL centre, chunks)
SOURCES = {"dom_a": ("domain", 2.0, 180), "dom_b": ("domain", 3.0, 120), "gen_x": ("general", 3.5, 150)}


def synthetic_scores(
    sources=SOURCES, *, seed=0, revision="rev-1", policy="pol-1", eval_every=5, edge_values=True
) -> pa.Table:
    """Rows of ``scores/chunk_perplexity``: log-normal PPLs per source, every ``eval_every``-th chunk in eval, and
    (with ``edge_values``) PPLs exactly on bin edges, in the overflow bin, at 1 and repeated (ties)."""
    rng = np.random.default_rng(seed)
    specials = [1.0, EDGES.edges[1], 10.0, EDGES.edges[37], 1e6, 3e6, 42.0, 42.0, 42.0] if edge_values else []
    rows = []
    for source, (role, centre, n) in sorted(sources.items()):
        ppl = np.exp(np.abs(rng.normal(centre, 1.0, n)))
        ppl[: len(specials)] = specials[:n]
        tokens = rng.integers(16, 257, n)
        for i in range(n):
            rows.append(
                {
                    "chunk_id": f"{source}-{revision}-{i:05d}",
                    "doc_id": f"{source}-doc-{i // 3}",
                    "source": source,
                    "role": role,
                    "split": "eval" if i % eval_every == 0 else "train",
                    "chunk_index": i % 3,
                    "n_tokens": int(tokens[i]),
                    "sum_nll": float(np.log(ppl[i]) * tokens[i]),
                    "ppl": float(ppl[i]),
                    "model_revision": revision,
                    "policy_hash": policy,
                    "window_length": 256,
                    "score_run_id": "synthetic",
                    "scored_at": datetime(2026, 1, 1, tzinfo=UTC),
                }
            )
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)


def write_scores(store, commit, table) -> int:
    return store.append(SCORES_TABLE, table, commit, partition_by=["source"])


def reference(table: pa.Table, group_by=("role", "source", "split")) -> dict[Group, LandscapePartial]:
    out = {}
    keys = table.select(list(group_by)).group_by(list(group_by)).aggregate([]).to_pylist()
    for key in keys:
        mask = None
        for col, val in key.items():
            cond = pc.equal(table[col], val)
            mask = cond if mask is None else pc.and_(mask, cond)
        rows = table.filter(mask)
        group = Group(*(key.get(c, ALL) for c in ("role", "source", "split")))
        out[group] = LandscapePartial.from_values(rows["ppl"].to_numpy(), rows["n_tokens"].to_numpy(), EDGES, group)
    return out


def assert_matches(spark_partial: LandscapePartial, ref: LandscapePartial, rel=1e-9) -> None:
    assert spark_partial.group == ref.group
    assert spark_partial.chunk_counts == ref.chunk_counts and spark_partial.token_counts == ref.token_counts
    assert (spark_partial.count, spark_partial.tokens) == (ref.count, ref.tokens)
    assert (spark_partial.min_ppl, spark_partial.max_ppl) == (ref.min_ppl, ref.max_ppl)
    for name in ("sum_ppl", "sum_ppl_sq", "sum_log_ppl", "sum_log_ppl_sq", "std", "log_std"):
        assert getattr(spark_partial, name) == pytest.approx(getattr(ref, name), rel=rel, abs=0), name
    assert [q for q, _ in spark_partial.quantiles] == list(QUANTILE_LEVELS)
    for (_, got), (_, want) in zip(spark_partial.quantiles, ref.quantiles, strict=True):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_spark_partials_equal_the_numpy_reference_and_merge_to_the_role(spark, store, commit):
    table = synthetic_scores()
    version = write_scores(store, commit, table)
    df, _ = read_snapshot(spark, store, SCORES_TABLE, version)

    partials = landscape_partials(df, EDGES)
    expected = reference(table)
    assert [p.group for p in partials] == sorted(expected) and len(partials) == 3 * 2
    for p in partials:
        assert_matches(p, expected[p.group])
    assert sum(p.count for p in partials) == table.num_rows
    # the special values landed where numpy puts them: the edges themselves, and the overflow bin
    assert sum(p.chunk_counts[EDGES.overflow] for p in partials) == 2 * len(SOURCES)

    per_role = landscape_partials(df, EDGES, group_by=("role", "split"))
    role_reference = reference(table, ("role", "split"))
    for whole in per_role:
        assert whole.group.source == ALL
        assert_matches(whole, role_reference[whole.group])
        merged = merge_all(
            [p for p in partials if (p.group.role, p.group.split) == (whole.group.role, whole.group.split)]
        )
        assert merged.group.source == (ALL if whole.group.role == "domain" else "gen_x")  # two sources, one
        assert merged.chunk_counts == whole.chunk_counts
        assert merged.token_counts == whole.token_counts
        assert merged.sum_ppl == pytest.approx(whole.sum_ppl, rel=1e-12)
        assert merged.log_std == pytest.approx(whole.log_std, rel=1e-12)


def test_invalid_ppl_is_refused(spark):
    rows = synthetic_scores({"s": ("domain", 2.0, 4)}, edge_values=False).to_pylist()
    rows[1]["ppl"] = 0.5
    rows[2]["ppl"] = float("nan")
    df = spark.createDataFrame(pa.Table.from_pylist(rows, schema=SCORES_SCHEMA).to_pandas())
    with pytest.raises(ValueError, match="2 score rows have a PPL"):
        landscape_partials(df, EDGES)


def test_the_job_describes_one_scoring_per_source_and_per_role(spark, store, commit):
    write_scores(store, commit, synthetic_scores(revision="rev-1"))
    other = synthetic_scores({"dom_a": ("domain", 5.0, 40)}, revision="rev-2", edge_values=False)
    version = write_scores(store, commit, other)
    with pytest.raises(ValueError, match="2 scorings"):
        run_landscape_job(spark, store, version, EDGES)

    result = run_landscape_job(spark, store, version, EDGES, model_revision="rev-2")
    assert (result.scores_version, result.model_revision, result.policy_hash) == (version, "rev-2", "pol-1")
    groups = [p.group for p in result.partials]
    assert groups == [
        Group("domain", "dom_a", "eval"),
        Group("domain", "dom_a", "train"),
        Group("domain", ALL, "eval"),
        Group("domain", ALL, "train"),
    ]
    reference_all = reference(other, ("role", "split"))
    for p in result.partials[2:]:
        assert_matches(p, reference_all[p.group])
