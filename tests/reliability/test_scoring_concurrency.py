"""Two scoring runs on the same documents at once commit every chunk once; ``unique_chunk_scores`` would catch one
that did not."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from assets.scores import CHECK_UNIQUE, _unique_check
from cpt.delta_store import DataFile, DeltaStore
from spark_jobs.parquet_files import ParquetFileWriter
from spark_jobs.scoring import DOCUMENTS_TABLE, SCORE_KEY, SCORES_TABLE

KEY = ["chunk_id", "model_revision", "policy_hash"]
SCHEMA = pa.schema([*((c, pa.string()) for c in KEY), ("source", pa.string()), ("v", pa.int64())])


def scores(chunk_ids, source="s", v=0):
    n = len(chunk_ids)
    columns = {"chunk_id": chunk_ids, "model_revision": ["m"] * n, "policy_hash": ["p"] * n}
    return pa.table({**columns, "source": [source] * n, "v": [v] * n}, schema=SCHEMA)


def task_files(store, rows: pa.Table, write_id: str) -> list[DataFile]:
    """Files as the bridge's Spark tasks write them (one per call), reported as DataFiles."""
    writer = ParquetFileWriter(table_uri=store.table_uri("s"), partition_by=("source",), write_id=write_id)
    return [
        DataFile(r["path"], r["size"], r["num_records"], json.loads(r["partition_values"]), r["modification_time_ms"])
        for batch in writer(iter(rows.to_batches()))
        for r in batch.to_pylist()
    ]


def keys_of(store, key="s"):
    table = store.read(key, columns=KEY)
    return sorted(table["chunk_id"].to_pylist())


def test_the_writer_that_loses_the_commit_race_rechecks_and_drops_what_the_winner_added(store, commit, monkeypatch):
    store.ensure_table("s", SCHEMA, ["source"], commit)
    checked = store.version("s")  # both writers excluded what this version holds (nothing) before writing
    a = task_files(store, scores(["k1", "k2", "k3"]), "aaaaaaaaaaaa")
    b = [
        *task_files(store, scores(["k2", "k5"], v=1), "bbbbbbbbbbbb"),  # one row the winner also has: rewritten
        *task_files(store, scores(["k3"], v=1), "bbbbbbbbbbbb"),  # all of it: dropped
        *task_files(store, scores(["k6"], v=1), "bbbbbbbbbbbb"),  # none of it
    ]
    original = DeltaTable.create_write_transaction
    injected = []

    def winner_commits_first(self, *args, **kwargs):
        # B has built its commit on the version it checked; A commits in between (what a concurrent run does)
        if not injected:
            injected.append(None)
            injected[0] = store.commit_unique_files(
                "s", a, schema=SCHEMA, commit=commit, unique_on=KEY, partition_by=["source"], checked_version=checked
            )
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", winner_commits_first)
    result = store.commit_unique_files(
        "s", b, schema=SCHEMA, commit=commit, unique_on=KEY, partition_by=["source"], checked_version=checked
    )
    monkeypatch.undo()

    assert injected[0].committed and injected[0].rows == 3
    assert (result.committed, result.attempts, result.duplicates_dropped, result.rows) == (True, 2, 2, 2)
    assert keys_of(store) == ["k1", "k2", "k3", "k5", "k6"]  # each key once
    table = store.read("s")
    assert sorted(table.filter(pc.equal(table["v"], 1))["chunk_id"].to_pylist()) == ["k5", "k6"]
    root = Path(store.table_uri("s"))
    assert not (root / b[0].path).exists() and not (root / b[1].path).exists()  # superseded, never committed
    assert {str(Path(u).relative_to(root)) for u in store.snapshot("s").file_uris} >= {b[2].path}


def test_a_rerun_of_files_whose_keys_are_all_in_the_table_commits_nothing(store, commit):
    options = {"schema": SCHEMA, "commit": commit, "unique_on": KEY, "partition_by": ["source"]}
    first = store.commit_unique_files("s", task_files(store, scores(["k1", "k2"]), "aaaaaaaaaaaa"), **options)
    again = store.commit_unique_files("s", task_files(store, scores(["k2", "k1"]), "bbbbbbbbbbbb"), **options)
    assert (again.committed, again.duplicates_dropped, again.version) == (False, 2, first.version)
    assert keys_of(store) == ["k1", "k2"] and store.version("s") == first.version


def test_unique_chunk_scores_fails_on_a_table_holding_a_duplicate(store, commit):
    rows = scores(["c1", "c2"])
    store.append(SCORES_TABLE, rows, commit, partition_by=["source"])
    ok = _unique_check(store, store.version(SCORES_TABLE))
    assert ok.check_name == CHECK_UNIQUE and ok.passed and ok.metadata["rows"].value == 2
    store.append(SCORES_TABLE, rows.slice(1, 1), commit, partition_by=["source"])  # c2 again
    bad = _unique_check(store, store.version(SCORES_TABLE))
    assert not bad.passed
    assert (bad.metadata["duplicated_keys"].value, bad.metadata["extra_rows"].value) == (1, 1)
    assert bad.metadata["examples"].value[0]["chunk_id"] == "c2"
    other_policy = rows.slice(0, 1).set_column(2, "policy_hash", pa.array(["q"]))  # same chunk, another policy: fine
    store.append(SCORES_TABLE, other_policy, commit, partition_by=["source"])
    assert _unique_check(store, store.version(SCORES_TABLE)).metadata["duplicated_keys"].value == 1


@pytest.mark.spark
def test_two_concurrent_scoring_runs_on_the_same_documents_commit_each_chunk_once(
    spark, store, commit, tiny_model_dir, monkeypatch
):
    from cpt.models.base_model import load_tokenizer, resolve_local
    from cpt.scoring.windows import WindowPolicy, chunk_documents
    from spark_jobs.scoring import ScoringJobSpec, run_scoring_job

    manifest = resolve_local(tiny_model_dir)
    policy = WindowPolicy(length=16, min_tokens=4)
    texts = [" ".join(f"word{i} fever insulin cough" for i in range(k, k + 8)) for k in range(8)]
    version = put_documents(store, commit, "alpha", texts)
    docs = store.read(DOCUMENTS_TABLE, version)
    tokenizer = load_tokenizer(tiny_model_dir)
    chunks = chunk_documents(tokenizer, docs["doc_id"].to_pylist(), docs["text"].to_pylist(), policy, manifest.revision)
    expected = {c.chunk_id for c in chunks}

    # Both runs must have decided what to score (the anti-join) before either commits: hold each at its commit.
    both_written = threading.Barrier(2, timeout=300)
    original = DeltaStore.commit_unique_files

    def commit_after_the_other_has_written(self, *args, **kwargs):
        both_written.wait()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaStore, "commit_unique_files", commit_after_the_other_has_written)
    spec = ScoringJobSpec(
        documents_version=version,
        model_path=str(tiny_model_dir),
        model_revision=manifest.revision,
        run_id="a",
        policy=policy,
        num_partitions=1,
    )
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(run_scoring_job, spark, store, ScoringJobSpec(**{**vars(spec), "run_id": r})) for r in "ab"]
        runs = [job.result() for job in jobs]
    monkeypatch.undo()

    assert all(r.documents_to_score == len(texts) for r in runs)  # both found every document unscored
    table = store.read(SCORES_TABLE)
    keys = table.select(list(SCORE_KEY)).group_by(list(SCORE_KEY)).aggregate([])
    assert keys.num_rows == table.num_rows  # no duplicate chunk row
    assert set(table["chunk_id"].to_pylist()) == expected  # and none lost
    assert sum(r.chunks_scored for r in runs) == table.num_rows == len(expected)
    assert sorted(r.duplicates_dropped for r in runs) == [0, len(expected)]  # the second dropped all it scored
    assert _unique_check(store, store.version(SCORES_TABLE)).passed


def put_documents(store: DeltaStore, commit, source: str, texts: list[str]) -> int:
    n = len(texts)
    docs = pa.table(
        {
            "doc_id": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
            "source": [source] * n,
            "role": ["domain"] * n,
            "split": ["train"] * n,
            "text": texts,
        }
    )
    return store.overwrite(DOCUMENTS_TABLE, docs, commit, predicate=f"source = '{source}'", partition_by=["source"])
