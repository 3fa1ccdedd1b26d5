"""Publishing one source's documents: a partition replace of ``corpus/documents`` whose cross-source check was made
against the very table version the commit lands on (optimistic concurrency).

Every text lives in one source only (the first source to ingest it keeps it). Checking that at the start of an
ingest and committing at its end let two concurrent ingests of sources holding the same texts both commit them. So
every documents commit now advances one Delta application transaction, ``cptdata.corpus.documents`` (the table's
*writer token*): an attempt reads the token (``k``), then the latest version and the ids other sources hold in it,
drops those texts, writes its Parquet file and commits it as version ``k + 1`` of the token. Delta refuses a commit
whose application transaction another commit advanced since its snapshot (delta-rs raises a concurrent-transaction
conflict), and :meth:`cpt.delta_store.DeltaStore.commit_files` skips a token version that already landed; either way
the attempt did not land, removes its file, and starts over against the newer version. A commit therefore lands only
if no other documents commit landed between its check and itself; after ``PUBLISH_ATTEMPTS`` lost races the ingest
fails with a message that says so (nothing of it landed).

Why this and not a Dagster concurrency pool (``pool=`` on the asset, limit 1): a pool serialises only runs that go
through the run queue of one Dagster instance. ``cptdata ingest`` executes in process (the quick-start pools are
run-granular and do not apply there), tests use ephemeral instances, and a cluster may have several instances or
writers that never share a queue; the Delta log is the one thing every writer shares, so the guarantee lives there.
It also keeps ingests of unrelated sources parallel (a lost race costs one re-check), where a pool would make every
ingest wait for every other. The cost: a loser re-reads the other sources' ids once per lost race.

Each commit also records the source's fingerprint (:func:`cpt.corpus.sources.source_fingerprint`) and the content
version of the partition it wrote, so the landing sensor can tell what the table already holds
(:func:`committed_fingerprints`), whoever ingested it.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from urllib.parse import quote

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cpt.corpus.ingest import IngestResult, documents_data_version, require_documents, without_texts_held_elsewhere
from cpt.corpus.schema import DOCUMENTS_SCHEMA, PARTITION_COLUMN
from cpt.corpus.sources import SourceSpec
from cpt.delta_store import CommitInfo, DataFile, DeltaStore, DeltaStoreError

DOCUMENTS_WRITER = "cptdata.corpus.documents"  # the application transaction every documents commit advances
PUBLISH_ATTEMPTS = 5
FINGERPRINT_KEY = "cptdata.source_fingerprint"
DATA_VERSION_KEY = "cptdata.data_version"
ATTEMPT_KEY = "cptdata.publish_attempt"


class PublishConflictError(RuntimeError):
    """Other ingests committed between every check and commit of a source; nothing of it landed."""


@dataclass(frozen=True)
class SourceCommitInfo(CommitInfo):
    """The lineage of a documents commit, plus what the source held, the partition's content version and the id of
    the attempt (to tell our commit from a concurrent one)."""

    source_fingerprint: str = ""
    data_version: str = ""
    attempt_id: str = ""

    def custom_metadata(self, commit_id: str) -> dict[str, str]:
        return super().custom_metadata(commit_id) | {
            FINGERPRINT_KEY: self.source_fingerprint,
            DATA_VERSION_KEY: self.data_version,
            ATTEMPT_KEY: self.attempt_id,
        }


@dataclass(frozen=True)
class Published:
    version: int  # the table version holding the partition
    checked_against: int  # the version whose other sources' texts were dropped (the commit's parent)
    result: IngestResult  # what was committed, its stats counting the texts other sources hold
    data_version: str  # content version of the partition (documents_data_version)
    attempts: int


def _no_checkpoint(point: str) -> None:
    return None


def publish_documents(
    store: DeltaStore,
    table: str,
    spec: SourceSpec,
    result: IngestResult,
    commit: CommitInfo,
    *,
    fingerprint: str,
    attempts: int = PUBLISH_ATTEMPTS,
    checkpoint: Callable[[str], None] = _no_checkpoint,
) -> Published:
    """Replace ``spec``'s partition of ``table`` with ``result.documents`` less the texts other sources hold in the
    version the commit lands on. Raises :class:`cpt.corpus.sources.EmptySourceError` when nothing would be left
    (unless the source allows empty) and :class:`PublishConflictError` after ``attempts`` lost races.

    ``checkpoint("documents_files_written")`` is called once the attempt's file is written, before its commit.
    """
    store.ensure_table(table, DOCUMENTS_SCHEMA, [PARTITION_COLUMN], commit)
    for attempt in range(1, attempts + 1):
        token = store.app_version(table, DOCUMENTS_WRITER) or 0  # read before the version: see the module docstring
        base = store.version(table)
        candidate = without_texts_held_elsewhere(result, ids_held_elsewhere(store, table, base, spec.name))
        require_documents(spec, candidate.stats)
        data_version = documents_data_version(candidate.documents)
        attempt_id = uuid.uuid4().hex
        lineage = {f.name: getattr(commit, f.name) for f in fields(CommitInfo)}
        lineage["input_versions"] = {**commit.input_versions, table: base}  # what the cross-source check read
        info = SourceCommitInfo(
            **lineage, source_fingerprint=fingerprint, data_version=data_version, attempt_id=attempt_id
        )
        files = _write_partition_file(store, table, spec.name, candidate)
        checkpoint("documents_files_written")
        error: Exception | None = None
        try:
            store.commit_files(
                table,
                files,
                schema=DOCUMENTS_SCHEMA,
                commit=info,
                partition_by=[PARTITION_COLUMN],
                replace_partitions={PARTITION_COLUMN: spec.name},
                app_id=DOCUMENTS_WRITER,
                app_version=token + 1,
            )
        except Exception as exc:  # a lost race raises delta-rs's conflict error; anything else is re-raised below
            error = exc
        version = _landed_version(store, table, attempt_id, since=base)
        if version is not None:
            return Published(version, base, candidate, data_version, attempt)
        _delete_files(store, table, files)
        if (store.app_version(table, DOCUMENTS_WRITER) or 0) == token:  # nobody else committed: a real failure
            if error is not None:
                raise error
            raise DeltaStoreError(f"source {spec.name!r}: the documents commit neither landed nor met a conflict")
        time.sleep(random.uniform(0.02, 0.1) * attempt)  # another ingest committed since `base`: check again
    raise PublishConflictError(
        f"source {spec.name!r}: {table} changed under each of {attempts} attempts to publish it (other ingests kept "
        "committing); nothing of it landed: run it again"
    )


def ids_held_elsewhere(store: DeltaStore, table: str, version: int | None, source: str) -> frozenset[str]:
    """The document ids sources other than ``source`` hold at ``version``."""
    if version is None:
        return frozenset()
    ids = store.read(table, version, columns=["doc_id"], filters=[(PARTITION_COLUMN, "!=", source)])
    return frozenset(ids.column("doc_id").to_pylist())


def committed_fingerprints(store: DeltaStore, table: str) -> dict[str, str | None]:
    """Per partition, the source fingerprint its latest commit recorded (None: that commit recorded none, e.g. one
    made before fingerprints existed). Empty when the table does not exist. Read from the table history, so it is
    the same whichever process (CLI, UI run, sensor run) ingested the source."""
    if not store.exists(table):
        return {}
    latest: dict[str, str | None] = {}
    for entry in store.history(table):  # newest first
        partition = entry.get("cptdata.partition")
        if partition and partition not in latest and entry.get("operation") != "CREATE TABLE":
            latest[partition] = entry.get(FINGERPRINT_KEY) or None
    return latest


def _write_partition_file(store: DeltaStore, table: str, source: str, result: IngestResult) -> list[DataFile]:
    """The partition's rows as one Parquet file inside the table folder (``source=<name>/``), not yet committed."""
    documents = result.documents
    if documents.num_rows == 0:
        return []
    fs, root = pafs.FileSystem.from_uri(store.table_uri(table))
    write_id = uuid.uuid4().hex[:12]  # part-<write id>-…: the table's one file naming (as the scoring writers')
    relative = f"{PARTITION_COLUMN}={quote(source, safe='')}/part-{write_id}-{uuid.uuid4().hex}.snappy.parquet"
    full = f"{root}/{relative}"
    fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
    pq.write_table(documents.drop_columns([PARTITION_COLUMN]), full, filesystem=fs, compression="snappy")
    info = fs.get_file_info(full)
    return [
        DataFile(
            path=relative,
            size=info.size,
            num_records=documents.num_rows,
            partition_values={PARTITION_COLUMN: source},
            modification_time_ms=int(info.mtime.timestamp() * 1000) if info.mtime else int(time.time() * 1000),
        )
    ]


def _delete_files(store: DeltaStore, table: str, files: list[DataFile]) -> None:
    """Remove the files of an attempt that did not land (best effort: an orphan file is invisible to readers)."""
    if not files:
        return
    fs, root = pafs.FileSystem.from_uri(store.table_uri(table))
    for f in files:
        with contextlib.suppress(OSError):
            fs.delete_file(f"{root}/{f.path}")


def _landed_version(store: DeltaStore, table: str, attempt_id: str, since: int) -> int | None:
    """The version our attempt committed, or None if it did not land: every commit after ``since`` is looked at, in
    a history listing taken while the table did not move (delta-rs numbers entries down from the snapshot)."""
    for _ in range(20):
        latest = store.version(table)
        entries = store.history(table, limit=max(latest - since + 1, 1))
        if store.version(table) != latest or not entries or entries[0]["version"] != latest:
            continue
        for entry in entries:
            if entry.get(ATTEMPT_KEY) == attempt_id:
                return int(entry["version"])
        return None
    raise DeltaStoreError(f"{table} kept moving while its history was read; cannot tell whether {attempt_id} landed")
