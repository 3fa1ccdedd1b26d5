"""Kill-and-rerun of ingestion (issue 12): an ingest SIGKILLed at any point — after the rejects commit, with its
documents file written but not committed, or after the documents commit but before Dagster recorded the
materialization — leaves a table a rerun brings to exactly the source's documents, once."""

from __future__ import annotations

import shutil
import signal

import dagster as dg
import pytest

from assets.corpus import DOCUMENTS, DOCUMENTS_TABLE, REJECTS_TABLE
from cpt.corpus.ingest import documents_data_version
from tests.reliability.test_ingest_helpers import (
    checks,
    data_version,
    duplicate_ids,
    ingest,
    partition_texts,
    resources,
    sigkill,
    source,
    spawn_ingest,
    store,
    texts,
    wait_for,
    write_source,
)

POINTS = ["rejects_committed", "documents_files_written", "documents_committed"]


@pytest.fixture(scope="module")
def empty_instance_dir(tmp_path_factory):
    """A persistent (SQLite) Dagster instance folder, created once: creating one takes seconds, copying it does not."""
    folder = tmp_path_factory.mktemp("dagster-template")
    dg.DagsterInstance.local_temp(str(folder)).dispose()
    return folder


def referenced_files(root) -> set[str]:
    return {p.rsplit("/", 1)[-1] for p in store(root).snapshot(DOCUMENTS_TABLE).file_uris}


@pytest.mark.parametrize("point", POINTS)
def test_ingest_killed_then_rerun_holds_the_source_exactly_once(tmp_path, point, empty_instance_dir):
    old, new = texts("kept", 10) + texts("old", 10), texts("kept", 10) + texts("new", 15)
    path = write_source(tmp_path / "src.jsonl", old)
    sources = [source("src", path), source("other", write_source(tmp_path / "other.jsonl", texts("other", 5)))]
    res = resources(tmp_path, sources)
    shutil.copytree(empty_instance_dir, tmp_path / "dagster")  # shared by this test and the process it kills
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        assert ingest(res, instance, "other").success and ingest(res, instance, "src").success
        recorded_before = instance.get_latest_materialization_event(DOCUMENTS).asset_materialization
    version_before = store(tmp_path).version(DOCUMENTS_TABLE)

    write_source(path, new, bad=1)  # the new content, with one malformed line to quarantine
    proc, marker, _ = spawn_ingest(tmp_path, tmp_path, sources, "src", pause_at=point)
    try:
        wait_for(marker, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        sigkill(proc)
    assert proc.returncode == -signal.SIGKILL

    # what the kill left behind
    files = {p.name for p in (tmp_path / "delta" / "corpus" / "documents" / "source=src").iterdir()}
    if point == "documents_committed":  # the commit landed; Dagster never heard of it
        assert store(tmp_path).version(DOCUMENTS_TABLE) == version_before + 1
        assert partition_texts(tmp_path, "src") == sorted(new)
        with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
            latest = instance.get_latest_materialization_event(DOCUMENTS).asset_materialization
        assert latest.metadata["delta_version"] == recorded_before.metadata["delta_version"]
    else:
        assert store(tmp_path).version(DOCUMENTS_TABLE) == version_before
        assert partition_texts(tmp_path, "src") == sorted(old)
        if point == "documents_files_written":  # an uncommitted file that no version references: never read
            assert files - referenced_files(tmp_path)

    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        rerun = ingest(res, instance, "src")
    assert rerun.success and all(checks(rerun).values())
    assert partition_texts(tmp_path, "src") == sorted(new)  # every document, once
    assert duplicate_ids(tmp_path) == 0
    assert partition_texts(tmp_path, "other") == sorted(texts("other", 5))
    rejects = store(tmp_path).read(REJECTS_TABLE, filters=[("source", "=", "src")])
    assert rejects.column("reason").to_pylist() == ["invalid_json"]  # quarantined once, not once per attempt
    partition = store(tmp_path).read(DOCUMENTS_TABLE, filters=[("source", "=", "src")])
    assert data_version(rerun) == documents_data_version(partition)
