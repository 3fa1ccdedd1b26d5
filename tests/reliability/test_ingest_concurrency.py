"""Concurrent ingests (issue 12): two sources holding the same texts, ingested at the same moment in two processes,
commit every text once; the loser re-checks against the winner's version and counts the texts as the winner's."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest

from assets.corpus import CHECK_UNIQUE_IDS, DOCUMENTS_TABLE
from cpt.corpus.ingest import ingest_source
from cpt.corpus.publish import PublishConflictError, publish_documents
from cpt.corpus.sources import SourceSpec
from cpt.delta_store import CommitInfo
from tests.reliability.test_ingest_helpers import (
    duplicate_ids,
    partition_texts,
    sigkill,
    source,
    spawn_ingest,
    store,
    texts,
    wait_for,
    write_source,
)


def test_ingest_of_two_sources_with_the_same_texts_at_once_commits_each_text_once(tmp_path):
    shared = texts("shared", 40)
    sources = [
        source("a", write_source(tmp_path / "a.jsonl", [*shared, "only in a"]), role="domain"),
        source("b", write_source(tmp_path / "b.jsonl", [*shared, "only in b"]), role="general"),
    ]
    go = tmp_path / "go"
    children = [spawn_ingest(tmp_path, tmp_path, sources, "a", pause_at="documents_files_written", release=go)]
    children.append(spawn_ingest(tmp_path, tmp_path, sources, "b", pause_at="documents_files_written", release=go))
    try:
        for proc, marker, _ in children:  # both have checked the same version and written their files ...
            wait_for(marker, proc)
        go.touch()  # ... and now race to commit
        for proc, _, _ in children:
            proc.wait(timeout=120)
    finally:
        for proc, _, _ in children:
            sigkill(proc)
    outcomes = {name: json.loads(result.read_text()) for name, (_, _, result) in zip("ab", children, strict=True)}

    assert all(o["success"] and o["checks"][CHECK_UNIQUE_IDS] for o in outcomes.values()), outcomes
    assert duplicate_ids(tmp_path) == 0
    table = store(tmp_path).read(DOCUMENTS_TABLE)
    assert sorted(table.column("text").to_pylist()) == sorted([*shared, "only in a", "only in b"])  # none lost
    by_dupes = sorted(outcomes, key=lambda n: outcomes[n]["metadata"]["cross_source_duplicates"])
    winner, loser = by_dupes
    assert outcomes[winner]["metadata"]["cross_source_duplicates"] == 0
    assert outcomes[loser]["metadata"]["cross_source_duplicates"] == len(shared)  # counted, not committed
    assert (outcomes[winner]["metadata"]["publish_attempts"], outcomes[loser]["metadata"]["publish_attempts"]) == (1, 2)
    assert partition_texts(tmp_path, loser) == [f"only in {loser}"]


def test_ingest_that_loses_every_race_fails_clearly_and_leaves_nothing(tmp_path):
    """A rival commit lands between each check and commit of ``b``: ``b`` re-checks, retries, then gives up with a
    clear error; none of its attempts landed or left a file behind."""
    spec_a = SourceSpec(
        name="a",
        path=str(write_source(tmp_path / "a.jsonl", texts("a", 3))),
        format="jsonl",
        role="domain",
        split="train",
    )
    spec_b = SourceSpec(
        name="b",
        path=str(write_source(tmp_path / "b.jsonl", texts("b", 3))),
        format="jsonl",
        role="domain",
        split="train",
    )
    tables = store(tmp_path)
    now = datetime.now(UTC)

    def commit(spec):
        return CommitInfo(
            run_id="r", asset_key="corpus/documents", code_version="t", config_hash="c", partition=spec.name
        )

    def publish(spec, **kw):
        result = ingest_source(spec, run_id="r", ingested_at=now)
        return publish_documents(tables, DOCUMENTS_TABLE, spec, result, commit(spec), fingerprint="f", **kw)

    rivals = []

    def rival_commits(point):
        rivals.append(publish(spec_a).version)  # lands while b's file waits for its commit

    with pytest.raises(PublishConflictError, match=r"source 'b': .* each of 3 attempts .* nothing of it landed"):
        publish(spec_b, attempts=3, checkpoint=rival_commits)
    assert len(rivals) == 3
    assert partition_texts(tmp_path, "b") == [] and tables.version(DOCUMENTS_TABLE) == rivals[-1]
    folder = tmp_path / "delta" / "corpus" / "documents" / "source=b"
    assert not folder.exists() or not list(folder.iterdir())  # the lost attempts removed their files

    once = []
    published = publish(spec_b, checkpoint=lambda point: once or once.append(publish(spec_a).version))
    assert published.attempts == 2 and published.checked_against == once[0]  # re-checked against the rival's version
    assert partition_texts(tmp_path, "b") == sorted(texts("b", 3))


@pytest.mark.parametrize("at_call", range(1, 9))
def test_an_ingest_landing_at_any_snapshot_of_another_never_duplicates_a_text(tmp_path, monkeypatch, at_call):
    """Source ``a`` publishes at the ``at_call``-th table snapshot source ``b``'s publish takes (between its check and
    its commit, or between its token read and its commit snapshot): every text still lands once."""
    from cpt.corpus.sources import EmptySourceError
    from cpt.delta_store import DeltaStore

    shared = texts("shared", 20)
    specs = {n: SourceSpec(**source(n, write_source(tmp_path / f"{n}.jsonl", shared), role="general")) for n in "ab"}
    delta = store(tmp_path)

    def publish(name: str):
        result = ingest_source(specs[name], run_id=name, ingested_at=datetime.now(UTC))
        return publish_documents(
            delta, DOCUMENTS_TABLE, specs[name], result, CommitInfo(name, DOCUMENTS_TABLE, "v", "h"), fingerprint="f"
        )

    original, calls = DeltaStore.table, []

    def table(self, key, version=None):
        snapshot = original(self, key, version)
        calls.append(key)
        if len(calls) == at_call:
            publish("a")  # the other ingest lands right after this snapshot
        return snapshot

    monkeypatch.setattr(DeltaStore, "table", table)
    with contextlib.suppress(EmptySourceError):  # b re-checked against a's version, found every text taken: right
        publish("b")
    monkeypatch.setattr(DeltaStore, "table", original)
    held = delta.read(DOCUMENTS_TABLE, columns=["doc_id"])["doc_id"].to_pylist()
    assert sorted(held) == sorted(set(held)) and len(held) == 20
