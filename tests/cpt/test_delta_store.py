import json
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest
from deltalake.exceptions import DeltaError

from cpt.delta_store import DeltaStoreError, partition_predicate, sql_literal


def rows(*triples):
    k, s, v = zip(*triples, strict=True) if triples else ((), (), ())
    return pa.table({"k": pa.array(k, pa.string()), "source": pa.array(s, pa.string()), "v": pa.array(v, pa.int64())})


def contents(store, key, version=None):
    return sorted((r["k"], r["source"], r["v"]) for r in store.read(key, version).to_pylist())


def test_table_uri_follows_the_asset_key(store):
    assert store.table_uri("corpus/documents").endswith("/delta/corpus/documents")
    assert store.table_uri(["scores", "chunk_perplexity"]).endswith("/delta/scores/chunk_perplexity")
    with pytest.raises(ValueError):
        store.table_uri("corpus/../etc")


def test_each_write_returns_its_version_and_reads_pin_versions(store, commit):
    assert store.version("t") is None
    assert store.append("t", rows(("a", "x", 1)), commit, partition_by=["source"]) == 0
    assert store.append("t", rows(("b", "y", 2)), commit, partition_by=["source"]) == 1
    assert contents(store, "t", 0) == [("a", "x", 1)]
    assert contents(store, "t") == [("a", "x", 1), ("b", "y", 2)]


def test_partition_overwrite_touches_only_its_partition(store, commit):
    store.append("t", rows(("a", "x", 1), ("b", "y", 2)), commit, partition_by=["source"])
    version = store.overwrite(
        "t", rows(("c", "x", 3)), commit, predicate=partition_predicate({"source": "x"}), partition_by=["source"]
    )
    assert version == 1
    assert contents(store, "t") == [("b", "y", 2), ("c", "x", 3)]
    with pytest.raises(DeltaError, match="failed validation"):  # a row outside the predicate: refused, no commit
        store.overwrite("t", rows(("d", "z", 4)), commit, predicate="source = 'x'", partition_by=["source"])
    assert store.version("t") == 1


def test_partition_overwrite_adds_new_columns_only_when_asked(store, commit):
    store.append("t", rows(("a", "x", 1), ("b", "y", 2)), commit, partition_by=["source"])
    wider = rows(("c", "x", 3)).append_column("note", pa.array(["new"]))
    with pytest.raises(DeltaError, match=r"(?i)schema"):
        store.overwrite("t", wider, commit, predicate="source = 'x'", partition_by=["source"])
    store.overwrite("t", wider, commit, predicate="source = 'x'", partition_by=["source"], add_columns=True)
    table = store.read("t").sort_by("k")
    assert table["note"].to_pylist() == [None, "new"] and table["k"].to_pylist() == ["b", "c"]


def test_partition_overwrite_creates_a_missing_table(store, commit):
    assert store.overwrite("new", rows(("a", "x", 1)), commit, predicate="source = 'x'", partition_by=["source"]) == 1
    assert contents(store, "new") == [("a", "x", 1)]
    created = store.history("new")[-1]
    assert created["operation"] == "CREATE TABLE" and created["cptdata.run_id"] == "run-1"


def test_concurrent_first_writers_of_different_partitions_both_land(store, commit):
    def write(source):
        return store.overwrite(
            "race",
            rows((source, source, 1)),
            commit,
            predicate=partition_predicate({"source": source}),
            partition_by=["source"],
        )

    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(write, ["a", "b", "c", "d"]))
    assert len(set(versions)) == 4
    assert [r[0] for r in contents(store, "race")] == ["a", "b", "c", "d"]


def test_merge_upserts_on_the_key(store, commit):
    store.append("t", rows(("a", "x", 1), ("b", "x", 2)), commit)
    assert store.merge("t", rows(("b", "x", 20), ("c", "x", 3)), commit, on=["k"]) == 1
    assert contents(store, "t") == [("a", "x", 1), ("b", "x", 20), ("c", "x", 3)]
    with pytest.raises(DeltaStoreError, match="duplicate key"):
        store.merge("t", rows(("a", "x", 1), ("a", "x", 2)), commit, on=["k"])


def test_every_commit_carries_lineage_metadata(store, commit):
    store.append("t", rows(("a", "x", 1)), commit)
    store.merge("t", rows(("a", "x", 2)), commit, on=["k"])
    history = store.history("t")
    assert [h["version"] for h in history] == [1, 0]
    for entry in history:
        assert entry["cptdata.run_id"] == "run-1"
        assert entry["cptdata.asset_key"] == "test/table"
        assert entry["cptdata.partition"] == "p"
        assert entry["cptdata.code_version"] == "v1"
        assert entry["cptdata.config_hash"] == "abc"
        assert json.loads(entry["cptdata.input_versions"]) == {"corpus/documents": 7}


def test_snapshot_lists_the_files_of_that_version(store, commit):
    store.append("t", rows(("a", "x", 1)), commit, partition_by=["source"])
    store.append("t", rows(("b", "y", 2)), commit, partition_by=["source"])
    snap0, snap1 = store.snapshot("t", 0), store.snapshot("t", 1)
    assert (snap0.version, len(snap0.file_uris), len(snap1.file_uris)) == (0, 1, 2)
    assert snap1.partition_columns == ("source",)
    assert snap1.schema.names == ["k", "source", "v"]


def test_reading_a_missing_table_says_so(store):
    with pytest.raises(DeltaStoreError, match="no Delta table"):
        store.read("never/written")


def test_sql_literals_are_quoted():
    assert sql_literal("o'brien") == "'o''brien'"
    assert partition_predicate({"source": "a", "lang": "en"}) == "lang = 'en' AND source = 'a'"
    with pytest.raises(TypeError):
        sql_literal(None)
