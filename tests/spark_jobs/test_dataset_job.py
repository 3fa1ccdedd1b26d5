"""The dataset stage's Spark parts against plain-Python references on the same tables: the leak-free candidate pools
(eval documents and every group holding one are left out, across sources) and the dataset write that replaces the
table."""

import pyarrow as pa
import pytest

from cpt.corpus.schema import DOCUMENTS_SCHEMA
from cpt.scoring.schema import SCORES_SCHEMA
from spark_jobs.dataset import DATASET_TABLE, leak_free_train_chunks, write_dataset
from spark_jobs.scoring import DOCUMENTS_TABLE, SCORES_TABLE

pytestmark = pytest.mark.spark

# doc → (source, role, split, group); two sources share group g1 and g4, one of them on the eval side
DOCS = {
    "a": ("med", "domain", "train", "g1"),  # shares g1 with b, an eval document of another source: left out
    "b": ("med_test", "domain", "eval", "g1"),
    "c": ("med", "domain", "train", "g2"),
    "d": ("med", "domain", "eval", "g3"),
    "e": ("books", "general", "train", "g4"),
    "f": ("books", "general", "train", "g5"),
    "h": ("news", "general", "eval", "g4"),  # an eval general document: e (same group) is left out too
}


def tables():
    docs = [
        {f.name: None for f in DOCUMENTS_SCHEMA}
        | {"doc_id": d, "source": s, "role": r, "split": sp, "group_id": g, "text": d, "n_chars": 1, "n_bytes": 1}
        | {"n_words": 1, "n_lines": 1, "source_file": "x", "source_position": 0, "ingest_run_id": "r"}
        for d, (s, r, sp, g) in DOCS.items()
    ]
    scores = []
    for d, (s, r, sp, _) in DOCS.items():
        for i in range(3):
            scores.append(
                {f.name: None for f in SCORES_SCHEMA}
                | {"chunk_id": f"{d}{i}", "doc_id": d, "source": s, "role": r, "split": sp, "chunk_index": i}
                | {"n_tokens": 10 + i, "sum_nll": 1.0, "ppl": 2.0 + i, "model_revision": "m", "policy_hash": "p"}
            )
    scores.append(scores[0] | {"chunk_id": "other-model", "model_revision": "m2"})  # another scoring: not a candidate
    return docs, scores


def reference(docs, scores):
    """The same rule in plain Python."""
    eval_docs = {d["doc_id"] for d in docs if d["split"] == "eval"}
    eval_groups = {d["group_id"] for d in docs if d["split"] == "eval"}
    group = {d["doc_id"]: d["group_id"] for d in docs}
    return sorted(
        s["chunk_id"]
        for s in scores
        if s["split"] == "train"
        and s["model_revision"] == "m"
        and s["doc_id"] not in eval_docs
        and group[s["doc_id"]] not in eval_groups
    )


def test_leak_free_pools_equal_the_python_reference(spark, store, commit):
    docs, scores = tables()
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    docs_table = pa.Table.from_pylist([d | {"ingested_at": now} for d in docs], schema=DOCUMENTS_SCHEMA)
    store.overwrite(DOCUMENTS_TABLE, docs_table, commit, predicate=None)
    store.overwrite(SCORES_TABLE, pa.Table.from_pylist(scores, schema=SCORES_SCHEMA), commit, predicate=None)
    pools = leak_free_train_chunks(
        spark, store, scores_version=0, documents_version=0, model_revision="m", policy_hash="p"
    )
    assert pools.chunks["chunk_id"].to_pylist() == reference(docs, scores) == ["c0", "c1", "c2", "f0", "f1", "f2"]
    assert pools.left_out == {"domain": 3, "general": 3}  # a's and e's chunks
    assert set(pools.chunks.column_names) >= {"chunk_id", "doc_id", "source", "role", "n_tokens", "ppl", "group_id"}


def test_a_dataset_build_replaces_the_table_and_time_travel_keeps_the_old_build(spark, store, commit):
    schema = pa.schema([("position", pa.int64()), ("chunk_id", pa.string())])
    first = pa.table({"position": [0, 1, 2], "chunk_id": ["x", "y", "z"]}, schema=schema)
    second = pa.table({"position": [0, 1], "chunk_id": ["y", "w"]}, schema=schema)
    v0 = write_dataset(spark, store, first, commit)
    v1 = write_dataset(spark, store, second, commit)
    assert (v0, v1) == (0, 1)
    assert store.read(DATASET_TABLE).sort_by("position")["chunk_id"].to_pylist() == ["y", "w"]  # not appended
    assert store.read(DATASET_TABLE, 0).sort_by("position")["chunk_id"].to_pylist() == ["x", "y", "z"]
