"""Orphaned Parquet files of killed scoring attempts are removed by the next run, safely.

A killed attempt is simulated as the job's tasks leave it: Parquet files written by ``ParquetFileWriter`` under the
table folder, never committed, and (for the writer's lease) a driver that died inside its lease.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cpt.delta_store import LEASE_DIR, DeltaStore
from spark_jobs.parquet_files import ParquetFileWriter

REPO = Path(__file__).resolve().parents[2]
HOURS_AGO_2 = time.time() - 2 * 3600


def rows(keys, source="x"):
    return pa.table({"k": pa.array(keys, pa.string()), "source": [source] * len(keys), "v": list(range(len(keys)))})


def write_like_a_task(store: DeltaStore, key: str, table: pa.Table, write_id: str) -> list[str]:
    """What a Spark task of the bridge does: Parquet files inside the table folder, reported, not committed."""
    writer = ParquetFileWriter(table_uri=store.table_uri(key), partition_by=("source",), write_id=write_id)
    return [r["path"] for batch in writer(iter(table.to_batches())) for r in batch.to_pylist()]


def put_documents(store: DeltaStore, commit, source: str, texts: list[str]) -> int:
    """A corpus/documents partition with the columns scoring reads."""
    from spark_jobs.scoring import DOCUMENTS_TABLE

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


def backdate(store: DeltaStore, key: str, paths, when=HOURS_AGO_2) -> None:
    for p in paths:
        os.utime(Path(store.table_uri(key)) / p, (when, when))


def referenced_everywhere(store: DeltaStore, key: str) -> set[str]:
    """Every data file some version of the table reads."""
    return {u for v in range(store.version(key) + 1) for u in store.snapshot(key, v).file_uris}


DEAD_WRITER = """
import os, sys
import pyarrow as pa
from cpt.delta_store import DeltaStore
from spark_jobs.parquet_files import ParquetFileWriter
store = DeltaStore(sys.argv[1])
with store.write_lease("t", "dead00000001", run_id="killed"):
    w = ParquetFileWriter(table_uri=store.table_uri("t"), partition_by=("source",), write_id="dead00000001")
    list(w(iter(pa.table({"k": ["d1", "d2"], "source": ["x", "y"], "v": [1, 2]}).to_batches())))
    os._exit(0)  # dies inside its lease, before any commit: what SIGKILL leaves behind
"""


def test_orphans_of_dead_writers_go_committed_tombstoned_young_and_in_flight_files_stay(store, commit):
    store.append("t", pa.concat_tables([rows(["a"]), rows(["b"], "y")]), commit, partition_by=["source"])
    store.overwrite("t", rows(["c"]), commit, predicate="source = 'x'", partition_by=["source"])  # v0's x: tombstone
    before = referenced_everywhere(store, "t")
    assert len(before) == 3

    # a killed driver: its lease stays behind, its process is gone
    subprocess.run([sys.executable, "-c", DEAD_WRITER, store.root_uri], cwd=REPO, check=True, timeout=120)
    leases = list((Path(store.table_uri("t")) / LEASE_DIR).iterdir())
    assert [p.name for p in leases] == ["dead00000001.json"]
    dead = [p for p in _data_files(store) if "dead00000001" in p]
    killed = write_like_a_task(store, "t", rows(["e", "f"], "y"), "feed00000002")  # an attempt without a lease
    backdate(store, "t", dead + killed)
    young = write_like_a_task(store, "t", rows(["g"]), "beef00000003")  # a fresh one: could be in flight

    with store.write_lease("t", "cafe00000004"):  # a live writer, slow enough for its files to be old
        in_flight = write_like_a_task(store, "t", rows(["h"]), "cafe00000004")
        backdate(store, "t", in_flight)
        done = store.remove_orphans("t", older_than_s=3600)
        assert sorted(f.path for f in done.removed) == sorted(dead + killed)
        assert done.bytes_removed == sum(f.size for f in done.removed) > 0
        assert (done.kept_young, done.kept_in_flight) == (1, 1)
        assert set(_data_files(store)) == {_rel(store, u) for u in before} | set(young) | set(in_flight)
        assert not (Path(store.table_uri("t")) / LEASE_DIR / "dead00000001.json").exists()  # the dead lease too

        everything = store.remove_orphans("t", older_than_s=0)  # no age protection: only the live lease protects
        assert [f.path for f in everything.removed] == young and everything.kept_in_flight == 1
        assert set(_data_files(store)) == {_rel(store, u) for u in before} | set(in_flight)
    assert not (Path(store.table_uri("t")) / LEASE_DIR / "cafe00000004.json").exists()  # dropped on exit
    assert [f.path for f in store.remove_orphans("t", older_than_s=0).removed] == in_flight

    assert referenced_everywhere(store, "t") == before and all(Path(u).exists() for u in before)
    assert sorted(store.read("t", 0)["k"].to_pylist()) == ["a", "b"]  # time travel still reads the tombstoned file
    assert sorted(store.read("t")["k"].to_pylist()) == ["b", "c"]


def test_a_table_that_never_committed_has_only_orphans(store):
    files = write_like_a_task(store, "never", rows(["a"]), "0123456789ab")
    backdate(store, "never", files)
    assert [f.path for f in store.orphan_files("never", older_than_s=60).removable] == files
    assert store.orphan_files("missing").removable == ()  # no folder at all: nothing to do


@pytest.mark.spark
def test_the_next_scoring_run_removes_a_killed_attempts_files_and_reports_them(
    spark, store, commit, tmp_path, tiny_model_dir
):
    from cpt.models.base_model import resolve_local
    from cpt.scoring.windows import WindowPolicy
    from spark_jobs.scoring import SCORES_TABLE, ScoringJobSpec, run_scoring_job

    manifest = resolve_local(tiny_model_dir)
    texts = [" ".join(f"word{i} patient glucose fever" for i in range(k, k + 9)) for k in range(6)]
    version = put_documents(store, commit, "alpha", texts)
    spec = ScoringJobSpec(
        documents_version=version,
        model_path=str(tiny_model_dir),
        model_revision=manifest.revision,
        run_id="first",
        policy=WindowPolicy(length=16, min_tokens=4),
        num_partitions=2,
        orphan_min_age_s=3600,
    )
    first = run_scoring_job(spark, store, spec)
    committed = store.read(SCORES_TABLE)
    assert first.chunks_scored == committed.num_rows > 6 and first.orphan_files_removed == 0

    # a killed attempt: its tasks wrote the same scores again, the driver never committed them
    killed = write_like_a_task(store, SCORES_TABLE, committed, "dead0000beef")
    sizes = sum((Path(store.table_uri(SCORES_TABLE)) / p).stat().st_size for p in killed)
    backdate(store, SCORES_TABLE, killed)
    young = write_like_a_task(store, SCORES_TABLE, committed.slice(0, 1), "5eed0000beef")
    tracked = referenced_everywhere(store, SCORES_TABLE)

    again = run_scoring_job(spark, store, ScoringJobSpec(**{**vars(spec), "run_id": "second"}))
    assert (again.orphan_files_removed, again.orphan_bytes_removed, again.orphan_files_kept) == (len(killed), sizes, 1)
    assert not any((Path(store.table_uri(SCORES_TABLE)) / p).exists() for p in killed)
    assert (Path(store.table_uri(SCORES_TABLE)) / young[0]).exists()  # younger than the threshold: kept
    assert all(Path(u).exists() for u in tracked) and referenced_everywhere(store, SCORES_TABLE) == tracked
    after = store.read(SCORES_TABLE)
    assert after.num_rows == committed.num_rows and pc.count_distinct(after["chunk_id"]).as_py() == after.num_rows


def _data_files(store: DeltaStore) -> list[str]:
    root = Path(store.table_uri("t"))
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*.parquet") if not str(p.relative_to(root)).startswith("_")
    )


def _rel(store: DeltaStore, uri: str) -> str:
    return str(Path(uri).relative_to(store.table_uri("t")))


def test_lease_files_are_json_naming_their_writer(store):
    with store.write_lease("t", "abcdef012345", run_id="r-1") as rel:
        info = json.loads((Path(store.table_uri("t")) / rel).read_text())
        assert (info["write_id"], info["run_id"], info["pid"]) == ("abcdef012345", "r-1", os.getpid())
    assert not (Path(store.table_uri("t")) / rel).exists()
