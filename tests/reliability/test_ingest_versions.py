"""Data versions of corpus/documents follow its content (issue 12): a changed corpus file gives a new Dagster data
version (what marks downstream stale), an unchanged re-ingest the same one."""

from __future__ import annotations

import dagster as dg

from assets.corpus import DOCUMENTS, DOCUMENTS_TABLE
from cpt.corpus.ingest import documents_data_version
from tests.reliability.test_ingest_helpers import data_version, ingest, resources, source, store, texts, write_source


def test_ingest_data_version_changes_with_the_content_and_only_with_it(tmp_path):
    path = write_source(tmp_path / "a.jsonl", texts("alpha", 30))
    res = resources(tmp_path, [source("a", path), source("b", write_source(tmp_path / "b.jsonl", texts("beta", 5)))])
    with dg.DagsterInstance.ephemeral() as instance:
        first = ingest(res, instance, "a")
        again = ingest(res, instance, "a")  # a new Delta version holding the same documents
        assert data_version(again) == data_version(first)
        assert store(tmp_path).version(DOCUMENTS_TABLE) == 2  # created, then two commits: the rerun did commit

        write_source(path, [*texts("alpha", 29), "a changed last document"])
        changed = ingest(res, instance, "a")
        assert data_version(changed) != data_version(first)
        other = ingest(res, instance, "b")  # each partition has its own
        assert data_version(other) not in (data_version(first), data_version(changed))

        write_source(path, texts("alpha", 30))  # back to the first content: back to the first version
        assert data_version(ingest(res, instance, "a")) == data_version(first)

        recorded = instance.get_latest_data_version_record(DOCUMENTS, partition_key="a")
        partition = store(tmp_path).read(DOCUMENTS_TABLE, filters=[("source", "=", "a")])
    assert recorded.asset_materialization.tags["dagster/data_version"] == data_version(first)  # what staleness compares
    assert data_version(first) == documents_data_version(partition)  # and it is the table's content
