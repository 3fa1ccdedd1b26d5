"""The corpus stage through Dagster: real runs of the ingestion job on a temporary instance and Delta root."""

import gzip
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
        # The default sample (CPTDATA_SAMPLE_FRACTION 0.15) of 15.8k MedQuAD answers and 560 general documents.
        assert 1_800 <= by_role["domain"] <= 3_000 and 50 <= by_role["general"] <= 120
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
        medquad = docs.filter(pc.equal(docs["source"], "med_medquad")).num_rows
        dropped = [documents_meta[k].value for k in ("duplicates_dropped", "cross_source_duplicates", "rejects")]
        assert documents_meta["sampled_out"].value + medquad + sum(dropped) == documents_meta["records_read"].value
        assert documents_meta["records_read"].value == 15_811 and documents_meta["sampled_out"].value > 10_000


def test_a_failing_gate_keeps_the_last_good_partition_and_a_rerun_replaces_it(tmp_path):
    landing = tmp_path / "data.jsonl.gz"
    sources = tmp_path / "sources.json"
    sources.write_text(
        json.dumps(
            [
                {
                    "name": "src",
                    "path": str(landing),
                    "format": "jsonl.gz",
                    "role": "domain",
                    "group_field": "group",
                    "split": "train",
                }
            ]
        )
    )
    store = DeltaStore(str(tmp_path / "home" / "delta"))
    strict = build_definitions(environment(tmp_path, CPTDATA_SOURCES=str(sources)))
    lenient = build_definitions(environment(tmp_path, CPTDATA_SOURCES=str(sources), CPTDATA_MAX_REJECT_RATE="1"))
    good = [{"group": "g", "text": f"good document {i}"} for i in range(3)]
    with dg.DagsterInstance.ephemeral() as instance:
        landing.write_bytes(gzip.compress("\n".join(json.dumps(g) for g in good).encode()))
        assert run_partitions(strict, instance, ["src"])["src"].success
        version = store.version(DOCUMENTS_TABLE)

        write_malformed_jsonl_gz(landing)
        failed = run_partitions(strict, instance, ["src"])["src"]
        assert not failed.success and checks(failed)[CHECK_REJECT_RATE] is False
        assert store.version(DOCUMENTS_TABLE) == version  # the documents table did not move
        assert sorted(store.read(DOCUMENTS_TABLE).column("text").to_pylist()) == [g["text"] for g in good]
        reasons = store.read(REJECTS_TABLE).column("reason").to_pylist()  # ... but the quarantine is recorded
        assert sorted(reasons) == sorted([r for _, r in BAD] + ["truncated_gzip"])

        accepted = run_partitions(lenient, instance, ["src"])["src"]  # bad records never abort the good ones
        assert accepted.success and checks(accepted) == dict.fromkeys(
            [CHECK_UNIQUE_IDS, CHECK_NON_EMPTY_TEXT, CHECK_SCHEMA, CHECK_REJECT_RATE], True
        )
        assert store.read(DOCUMENTS_TABLE).num_rows == len(GOOD)

        landing.write_bytes(gzip.compress("\n".join(json.dumps(g) for g in good[:2]).encode()))
        assert run_partitions(strict, instance, ["src"])["src"].success  # the partition is replaced exactly
        assert sorted(store.read(DOCUMENTS_TABLE).column("text").to_pylist()) == [g["text"] for g in good[:2]]
        assert store.read(REJECTS_TABLE).num_rows == 0


def test_every_text_lives_in_one_source_only(tmp_path):
    shared = {"text": "the same text in two sources"}
    (tmp_path / "a.jsonl").write_text(json.dumps(shared) + "\n" + json.dumps({"text": "only in a"}))
    (tmp_path / "b.jsonl").write_text(json.dumps(shared) + "\n" + json.dumps({"text": "only in b"}))
    sources = tmp_path / "sources.json"
    sources.write_text(
        json.dumps(
            [
                {"name": "a", "path": str(tmp_path / "a.jsonl"), "format": "jsonl", "role": "domain", "split": "eval"},
                {"name": "b", "path": str(tmp_path / "b.jsonl"), "format": "jsonl", "role": "domain", "split": "train"},
            ]
        )
    )
    defs = build_definitions(environment(tmp_path, CPTDATA_SOURCES=str(sources)))
    with dg.DagsterInstance.ephemeral() as instance:
        first = run_partitions(defs, instance, ["a", "b"])
        rerun = run_partitions(defs, instance, ["a"])  # the first source to hold a text keeps it on reruns
    assert all(r.success for r in [*first.values(), *rerun.values()])
    docs = DeltaStore(str(tmp_path / "home" / "delta")).read(DOCUMENTS_TABLE).to_pylist()
    assert sorted((d["source"], d["text"]) for d in docs) == [
        ("a", "only in a"),
        ("a", "the same text in two sources"),
        ("b", "only in b"),
    ]
    b_meta = first["b"].asset_materializations_for_node("corpus_documents")[0].metadata
    assert b_meta["cross_source_duplicates"].value == 1


def test_unreadable_source_fails_the_run_naming_it_and_leaves_tables_alone(tmp_path, corpora_dir):
    defs = build_definitions(environment(tmp_path, CPTDATA_CORPORA=str(tmp_path / "nowhere")))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_partitions(defs, instance, ["gen_austen"])["gen_austen"]
    assert not result.success
    failure = result.failure_data_for_node("corpus_documents")
    assert "gen_austen" in failure.error.message and "CPTDATA_CORPORA" in failure.error.message
    assert not DeltaStore(str(tmp_path / "home" / "delta")).exists(DOCUMENTS_TABLE)


def test_source_config_mirrors_source_spec():
    """The Dagster config of a source and the cpt record it becomes must not drift apart."""
    import dataclasses

    from assets.resources import SourceConfig
    from cpt.corpus.sources import SourceSpec

    spec_defaults = {
        f.name: (f.default.value if hasattr(f.default, "value") else f.default) for f in dataclasses.fields(SourceSpec)
    }
    config_defaults = {name: field.default for name, field in SourceConfig.model_fields.items()}
    assert config_defaults.keys() == spec_defaults.keys()
    required = {k for k, v in spec_defaults.items() if v is dataclasses.MISSING}
    assert {k: v for k, v in config_defaults.items() if k not in required} == {
        k: v for k, v in spec_defaults.items() if k not in required
    }
