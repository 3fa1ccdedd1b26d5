"""The Spark scoring job equals in-process scoring, and is incremental."""

import json
import os
from datetime import UTC, datetime

import pyarrow.compute as pc
import pytest
import torch

from cpt.corpus.ingest import ingest_source
from cpt.corpus.sources import SourceSpec
from cpt.models.base_model import load_model, resolve_local
from cpt.scoring.scorer import ChunkScorer
from cpt.scoring.windows import WindowPolicy, chunk_documents
from spark_jobs.scoring import DOCUMENTS_TABLE, SCORES_TABLE, ScoringJobSpec, run_scoring_job
from spark_jobs.session import is_connect

pytestmark = pytest.mark.spark

POLICY = WindowPolicy(length=16, min_tokens=4)


def add_source(store, commit, tmp_path, name, texts):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    docs = ingest_source(
        SourceSpec(name, str(path), "jsonl", "domain", split="train"), run_id="r", ingested_at=datetime.now(UTC)
    ).documents
    return store.overwrite(DOCUMENTS_TABLE, docs, commit, predicate=f"source = '{name}'", partition_by=["source"])


def in_process_scores(model_dir, manifest, texts_by_id):
    model, tokenizer = load_model(model_dir)
    chunks = chunk_documents(tokenizer, list(texts_by_id), list(texts_by_id.values()), POLICY, manifest.revision)
    scorer = ChunkScorer(model, pad_id=tokenizer.pad_token_id, device=torch.device("cpu"), precision="float32")
    scores, _ = scorer.score(chunks)
    return {s.chunk_id: s for s in scores}


def test_spark_scores_equal_in_process_scores_and_reruns_are_incremental(
    spark, store, commit, tmp_path, tiny_model_dir
):
    manifest = resolve_local(tiny_model_dir)
    long_texts = [" ".join(f"word{i} patient glucose fever" for i in range(k, k + 9)) for k in range(12)]
    v1 = add_source(store, commit, tmp_path, "alpha", [*long_texts, "x"])
    spec = ScoringJobSpec(
        documents_version=v1,
        model_path=str(tiny_model_dir),
        model_revision=manifest.revision,
        run_id="run-a",
        policy=POLICY,
        max_batch_tokens=64,
        num_partitions=2,
        precision="float32",  # equal to the in-process reference (bfloat16 rounds differently with batch shapes)
    )
    first = run_scoring_job(spark, store, spec)
    assert (first.documents_considered, first.documents_to_score) == (13, 13)
    scores = store.read(SCORES_TABLE, first.scores_version)
    assert first.chunks_scored == scores.num_rows > 12 and first.tokens_scored == pc.sum(scores["n_tokens"]).as_py()

    docs = store.read(DOCUMENTS_TABLE, v1)
    reference = in_process_scores(
        tiny_model_dir, manifest, dict(zip(docs["doc_id"].to_pylist(), docs["text"].to_pylist(), strict=True))
    )
    assert set(reference) == set(scores["chunk_id"].to_pylist())
    for row in scores.to_pylist():
        assert row["sum_nll"] == pytest.approx(reference[row["chunk_id"]].sum_nll, abs=1e-4)
        assert row["n_tokens"] == reference[row["chunk_id"]].n_tokens
        assert (row["model_revision"], row["policy_hash"], row["source"]) == (
            manifest.revision,
            POLICY.policy_hash,
            "alpha",
        )

    rerun = run_scoring_job(spark, store, ScoringJobSpec(**{**vars(spec), "run_id": "run-b"}))
    assert (rerun.documents_to_score, rerun.chunks_scored) == (1, 0)  # only "x", which has no chunk: no forward pass
    assert store.version(SCORES_TABLE) == first.scores_version  # and no commit

    v2 = add_source(store, commit, tmp_path, "beta", ["beta " + t for t in long_texts[:3]])
    shipped = not is_connect(spark)  # a Spark Connect session has no SparkContext to ship files with
    added = run_scoring_job(
        spark,
        store,
        ScoringJobSpec(**{**vars(spec), "run_id": "run-c", "documents_version": v2, "ship_model": shipped}),
    )
    assert added.documents_to_score == 3 + 1 and added.scores_version == first.scores_version + 1
    new_rows = store.read(SCORES_TABLE).filter(pc.equal(store.read(SCORES_TABLE)["score_run_id"], "run-c"))
    assert set(new_rows["source"].to_pylist()) == {"beta"} and new_rows.num_rows == added.chunks_scored


def test_spark_submit_entry_point_takes_a_json_spec(spark, store, commit, tmp_path, tiny_model_dir, capsys):
    from spark_jobs.scoring import main

    manifest = resolve_local(tiny_model_dir)
    version = add_source(store, commit, tmp_path, "gamma", [" ".join(["alpha beta gamma delta"] * 12)] * 2)
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "delta_root": store.root_uri,
                "spark": {"connect_url": remote}
                if (remote := os.environ.get("CPTDATA_TEST_SPARK_CONNECT"))
                else {"master": "local[2]"},
                "job": {
                    "documents_version": version,
                    "model_path": str(tiny_model_dir),
                    "model_revision": manifest.revision,
                    "run_id": "submitted",
                    "policy": {"length": 16, "min_tokens": 4},
                },
            }
        )
    )
    assert main([str(job)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["documents_to_score"] == 1 and printed["chunks_scored"] > 0  # the two texts are one document
    assert printed["scores_version"] == store.version(SCORES_TABLE)
