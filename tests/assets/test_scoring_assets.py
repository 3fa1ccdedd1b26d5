"""Base model → chunk perplexity through Dagster: a tiny self-pretrained model, real Spark, real Delta."""

import json

import dagster as dg
import pyarrow.compute as pc
import pytest

from assets.scores import CHECK_COVERAGE, CHECK_UNIQUE, CHECK_VALUES
from cpt.delta_store import DeltaStore
from orchestration.cli import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from orchestration.definitions import build_definitions
from spark_jobs.scoring import SCORES_TABLE

pytestmark = pytest.mark.spark

SCORING = {"ops": {"scores__chunk_perplexity": {"config": {"window_length": 48, "min_tokens": 8}}}}


def write_source(path, prefix, n):
    lines = [
        json.dumps({"text": f"{prefix} document {i}: " + " ".join(f"{prefix}{j % 17} word" for j in range(60))})
        for i in range(n)
    ]
    path.write_text("\n".join(lines))


def run(defs, job, instance, **kwargs):
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, **kwargs)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def test_pretrained_base_model_then_incremental_single_run_scoring(tmp_path):
    write_source(tmp_path / "gen.jsonl", "general", 30)
    write_source(tmp_path / "dom.jsonl", "domain", 12)
    sources = tmp_path / "sources.json"
    entries = [
        {"name": "gen", "path": str(tmp_path / "gen.jsonl"), "format": "jsonl", "role": "general", "split": "train"},
        {"name": "dom", "path": str(tmp_path / "dom.jsonl"), "format": "jsonl", "role": "domain", "split": "train"},
    ]
    sources.write_text(json.dumps(entries))
    env = {"CPTDATA_HOME": str(tmp_path / "home"), "CPTDATA_SOURCES": str(sources), "CPTDATA_PRETRAIN_TOKENS": "8192"}
    defs = build_definitions(env)
    store = DeltaStore(str(tmp_path / "home" / "delta"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus_sources", ["gen", "dom"])
        for key in ("gen", "dom"):
            run(defs, "ingest_corpus", instance, partition_key=key)
        model = run(defs, "base_model", instance)
        manifest = model.output_for_node("models__base_model")
        assert manifest["source"] == "pretrain" and manifest["n_params"] > 0
        curve = manifest["details"]["loss_curve"]
        assert curve[-1][0] == 8192 and curve[-1][1] < curve[0][1] + 1e-6  # trained on the budget, loss did not rise
        again = run(defs, "base_model", instance).output_for_node("models__base_model")
        assert again["revision"] == manifest["revision"]  # same documents and config: reused, not retrained

        tags = {ASSET_PARTITION_RANGE_START_TAG: "gen", ASSET_PARTITION_RANGE_END_TAG: "dom"}
        first = run(defs, "score_corpus", instance, tags=tags, run_config=SCORING)
        assert {c.check_name: c.passed for c in first.get_asset_check_evaluations()} == {
            CHECK_COVERAGE: True,
            CHECK_VALUES: True,
            CHECK_UNIQUE: True,
        }
        scores = store.read(SCORES_TABLE)
        assert set(scores["source"].to_pylist()) == {"gen", "dom"} and scores.num_rows >= 42
        assert pc.min(scores["ppl"]).as_py() >= 1
        meta = first.asset_materializations_for_node("scores__chunk_perplexity")[0].metadata
        assert meta["chunks_scored_now"].value == scores.num_rows and meta["tokens_per_second"].value > 0
        version = store.version(SCORES_TABLE)

        rerun = run(defs, "score_corpus", instance, tags=tags, run_config=SCORING)
        meta = rerun.asset_materializations_for_node("scores__chunk_perplexity")[0].metadata
        assert meta["chunks_scored_now"].value == 0 and store.version(SCORES_TABLE) == version

        write_source(tmp_path / "dom.jsonl", "domain", 15)  # three more documents in one source
        run(defs, "ingest_corpus", instance, partition_key="dom")
        added = run(defs, "score_corpus", instance, partition_key="dom", run_config=SCORING)
        meta = added.asset_materializations_for_node("scores__chunk_perplexity")[0].metadata
        assert meta["documents_scored_now"].value == 3
        new = store.read(SCORES_TABLE).filter(pc.equal(store.read(SCORES_TABLE)["score_run_id"], added.run_id))
        assert set(new["source"].to_pylist()) == {"dom"} and new.num_rows == meta["chunks_scored_now"].value > 0
