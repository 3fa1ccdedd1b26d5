"""Scores → landscape histograms → regimes through Dagster: real Spark, real Delta, synthetic scores."""

from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest

from assets.landscape import (
    CHECK_MASS,
    HISTOGRAMS_TABLE,
    REGIMES_TABLE,
    _mass_check,
    landscape_histograms,
    landscape_regimes,
)
from assets.resources import DeltaStoreResource, SparkResource
from cpt.delta_store import CommitInfo, DeltaStore
from cpt.hashing import config_hash
from cpt.landscape.histogram import ALL, bin_edges
from cpt.landscape.schema import regimes_from_table
from spark_jobs.scoring import SCORES_TABLE
from tests.spark_jobs.test_landscape_job import synthetic_scores

pytestmark = pytest.mark.spark

N_BINS = bin_edges("log10-v1").n_bins
REGIMES_CONFIG = {"ops": {"landscape__regimes": {"config": {"min_tokens": 3000, "seed": 3}}}}
COMMIT = CommitInfo(run_id="seed", asset_key=SCORES_TABLE, code_version="test", config_hash="")


def materialize(root: Path, run_config=REGIMES_CONFIG, raise_on_error=True):
    resources = {
        "delta": DeltaStoreResource(root_uri=str(root)),
        "spark": SparkResource(master="local[2]", shuffle_partitions=2),
    }
    return dg.materialize(
        [landscape_histograms, landscape_regimes],
        resources=resources,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def meta(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_histograms_and_regimes_pin_the_scores_and_rerun_idempotently(tmp_path):
    root = tmp_path / "delta"
    store = DeltaStore(str(root))
    scores = synthetic_scores()
    scores_version = store.append(SCORES_TABLE, scores, COMMIT, partition_by=["source"])

    first = materialize(root)
    assert {c.check_name: c.passed for c in first.get_asset_check_evaluations()} == {CHECK_MASS: True}
    hist_meta = meta(first, "landscape__histograms")
    assert (hist_meta["scores_version"], hist_meta["edges_version"], hist_meta["reused"]) == (
        scores_version,
        "log10-v1",
        False,
    )
    table = store.read(HISTOGRAMS_TABLE)
    # 3 sources × 2 splits, plus 2 roles × 2 splits over all sources; every bin present
    assert table.num_rows == (3 * 2 + 2 * 2) * N_BINS == hist_meta["dagster/row_count"]
    per_source = table.filter(pc.not_equal(table["source"], ALL))
    assert pc.sum(per_source["chunk_count"]).as_py() == scores.num_rows
    assert pc.sum(per_source["token_count"]).as_py() == pc.sum(scores["n_tokens"]).as_py()
    assert set(table["scores_version"].to_pylist()) == {scores_version}
    assert "data:image/png;base64," in hist_meta["landscape"] and "| domain | * | train |" in hist_meta["by_role"]
    plot = Path(hist_meta["landscape_plot"])
    assert plot.name == f"landscape-v{scores_version}.png" and plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    regimes = regimes_from_table(store.read(REGIMES_TABLE))
    reg_meta = meta(first, "landscape__regimes")
    assert [r.name for r in regimes][-2:] == ["random", "low-ppl"] and len(regimes) == 12
    assert all(r.tokens >= 3000 for r in regimes) and reg_meta["scores_version"] == scores_version
    pool_ids = set(
        scores.filter(pc.and_(pc.equal(scores["role"], "domain"), pc.equal(scores["split"], "train")))[
            "chunk_id"
        ].to_pylist()
    )
    assert reg_meta["pool_chunks"] == len(pool_ids) and all(set(r.chunk_ids) <= pool_ids for r in regimes)
    narrow = [r.mu for r in regimes if r.name.startswith("window-") and r.name.endswith("-w0.20")]
    assert narrow == sorted(narrow) and len(set(narrow)) == 5  # the windows span different μ
    fingerprint = config_hash([(r.name, r.chunk_ids) for r in regimes])
    assert reg_meta["regimes_fingerprint"] == fingerprint

    versions = (store.version(HISTOGRAMS_TABLE), store.version(REGIMES_TABLE))
    again = materialize(root)
    assert meta(again, "landscape__histograms")["reused"] and meta(again, "landscape__regimes")["reused"]
    assert (store.version(HISTOGRAMS_TABLE), store.version(REGIMES_TABLE)) == versions  # no new commit
    assert store.read(HISTOGRAMS_TABLE).num_rows == table.num_rows
    assert meta(again, "landscape__regimes")["regimes_fingerprint"] == fingerprint  # recomputed: the same regimes
    assert {c.check_name: c.passed for c in again.get_asset_check_evaluations()} == {CHECK_MASS: True}

    # new scores: a new landscape of the new version, the table replaced (not appended to)
    more = synthetic_scores({"gen_y": ("general", 4.0, 30)}, edge_values=False)
    new_version = store.append(SCORES_TABLE, more, COMMIT, partition_by=["source"])
    third = materialize(root)
    assert meta(third, "landscape__histograms")["scores_version"] == new_version
    table = store.read(HISTOGRAMS_TABLE)
    assert set(table["scores_version"].to_pylist()) == {new_version} and table.num_rows == (4 * 2 + 2 * 2) * N_BINS
    assert all(c.passed for c in third.get_asset_check_evaluations())
    assert meta(third, "landscape__regimes")["regimes_fingerprint"] == fingerprint  # the domain pool did not change
    assert set(store.read(REGIMES_TABLE)["scores_version"].to_pylist()) == {new_version}

    # the mass check fails on a histogram that lost a chunk
    tampered = table.set_column(
        table.schema.get_field_index("chunk_count"),
        "chunk_count",
        pc.subtract(table["chunk_count"], pc.cast(pc.equal(table["bin"], 30), "int64")),
    )
    check = _mass_check(store, new_version, "rev-1", "pol-1", tampered)
    assert not check.passed and check.metadata["mismatches"].value

    # regimes that cannot hold min_tokens fail the run with the reason
    failed = materialize(root, {"ops": {"landscape__regimes": {"config": {"min_tokens": 10**9}}}}, raise_on_error=False)
    assert not failed.success
    messages = " ".join(str(e.event_specific_data.error.message) for e in failed.all_events if e.is_step_failure)
    assert "min_tokens=1000000000" in messages
