"""The corpus stage through Dagster: real runs of the ingestion job on a temporary instance and Delta root."""

import json
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest

from assets.corpus import (
    CHECK_NON_EMPTY_TEXT,
    CHECK_REJECT_RATE,
    CHECK_SCHEMA,
    CHECK_UNIQUE_IDS,
    DOCUMENTS_TABLE,
    REJECTS_TABLE,
)
from assets.partitions import corpus_sources
from cpt.delta_store import DeltaStore
from orchestration.definitions import build_definitions
from tests.conftest import BAD, GOOD, write_malformed_jsonl_gz


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"CPTDATA_HOME": str(tmp_path / "home"), **extra}


def run_partitions(defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[str]):
    instance.add_dynamic_partitions(
        corpus_sources.name, [k for k in keys if not instance.has_dynamic_partition(corpus_sources.name, k)]
    )
    job = defs.resolve_job_def("ingest_corpus")
    return {k: job.execute_in_process(partition_key=k, instance=instance, raise_on_error=False) for k in keys}


def checks(result) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


@pytest.mark.slow
def test_sample_corpora_ingest_and_rerun_idempotently(tmp_path, corpora_dir):
    env = environment(tmp_path, CPTDATA_CORPORA=str(corpora_dir))
    defs = build_definitions(env)
    store = DeltaStore(str(tmp_path / "home" / "delta"))
    keys = sorted(defs.resources["catalog"].specs())
    with dg.DagsterInstance.ephemeral() as instance:
        first = run_partitions(defs, instance, keys)
        assert all(r.success for r in first.values())
        assert all(all(checks(r).values()) and len(checks(r)) == 4 for r in first.values())
        v_first = store.version(DOCUMENTS_TABLE)
        docs = store.read(DOCUMENTS_TABLE)

        train = docs.filter(pc.equal(docs["split"], "train"))
        by_role = {r["role"]: r["count_all"] for r in train.group_by("role").aggregate([([], "count_all")]).to_pylist()}
        assert by_role["domain"] >= 15_000 and by_role["general"] >= 500
        assert pc.count_distinct(docs["doc_id"]).as_py() == docs.num_rows
        train_groups = {(r["source"], r["group_id"]) for r in train.select(["source", "group_id"]).to_pylist()}
        evals = docs.filter(pc.equal(docs["split"], "eval")).select(["source", "group_id"]).to_pylist()
        assert evals and not train_groups & {(r["source"], r["group_id"]) for r in evals}
        assert set(docs.filter(pc.equal(docs["source"], "med_abstracts"))["split"].to_pylist()) == {"eval"}

        second = run_partitions(defs, instance, keys)
        assert all(r.success for r in second.values())
        assert store.read(DOCUMENTS_TABLE).num_rows == docs.num_rows
        assert store.version(DOCUMENTS_TABLE) == v_first + len(keys)  # one version per partition rerun
        mat = second["med_medquad"].asset_materializations_for_node("corpus_documents")
        documents_meta = next(m for m in mat if m.asset_key.path == ["corpus", "documents"]).metadata
        assert documents_meta["delta_version"].value == store.version(DOCUMENTS_TABLE)
        assert documents_meta["table_rows_total"].value == docs.num_rows
        assert "| domain | train |" in documents_meta["documents_by_role_and_split"].value


def test_malformed_source_lands_in_rejects_and_fails_the_reject_rate_check(tmp_path):
    bad = write_malformed_jsonl_gz(tmp_path / "bad.jsonl.gz")
    sources = tmp_path / "sources.json"
    sources.write_text(
        json.dumps(
            [
                {
                    "name": "bad",
                    "path": str(bad),
                    "format": "jsonl.gz",
                    "role": "domain",
                    "group_field": "group",
                    "split": "train",
                }
            ]
        )
    )
    defs = build_definitions(environment(tmp_path, CPTDATA_SOURCES=str(sources)))
    store = DeltaStore(str(tmp_path / "home" / "delta"))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_partitions(defs, instance, ["bad"])["bad"]
    # bad records never abort the good ones: both tables are written; the blocking check then fails the step
    assert store.read(DOCUMENTS_TABLE).num_rows == len(GOOD)
    assert {m.asset_key.path[1] for m in result.asset_materializations_for_node("corpus_documents")} == {
        "documents",
        "rejects",
    }
    assert not result.success
    reasons = store.read(REJECTS_TABLE).column("reason").to_pylist()
    assert sorted(reasons) == sorted([r for _, r in BAD] + ["truncated_gzip"])
    outcome = checks(result)
    assert outcome == {CHECK_UNIQUE_IDS: True, CHECK_NON_EMPTY_TEXT: True, CHECK_SCHEMA: True, CHECK_REJECT_RATE: False}


def test_unreadable_source_fails_the_run_naming_it_and_leaves_tables_alone(tmp_path, corpora_dir):
    defs = build_definitions(environment(tmp_path, CPTDATA_CORPORA=str(tmp_path / "nowhere")))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_partitions(defs, instance, ["gen_austen"])["gen_austen"]
    assert not result.success
    failure = result.failure_data_for_node("corpus_documents")
    assert "gen_austen" in failure.error.message and "CPTDATA_CORPORA" in failure.error.message
    assert not DeltaStore(str(tmp_path / "home" / "delta")).exists(DOCUMENTS_TABLE)
