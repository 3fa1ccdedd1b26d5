"""The Delta storage adapter: the one module of the platform that imports ``deltalake``.

A table lives at ``root / asset key path`` (``corpus/documents`` → ``<root>/corpus/documents``); the root is a local
folder or an object-store URI. Every write is one Delta commit that carries the lineage metadata of a
:class:`CommitInfo` and returns the table version it created, found by a unique commit id in the table history (so a
concurrent writer cannot make us report its version as ours).

Files written by someone else (Spark tasks) enter a table through :meth:`DeltaStore.commit_files`, as one transaction,
idempotent when retried, or through :meth:`DeltaStore.commit_unique_files`, which drops rows whose key the table
already holds (checked against the very version the commit lands on: optimistic concurrency with retry). Tables stay
on basic Delta features (no deletion vectors, no column mapping), so the add actions of a snapshot are the whole truth
about which Parquet files hold its rows.

Files outside the log. A writer that dies between writing its files and committing them leaves *orphans*: data files
under the table folder that no Delta version references. :meth:`DeltaStore.remove_orphans` deletes them, under one
rule: a file is removed only when (1) no add or remove action of any commit still in ``_delta_log`` (nor the current
snapshot) names it, (2) it was last modified more than ``older_than_s`` ago (default 1 hour), and (3) it does not
belong to a write that still holds a live lease. A writer takes a lease (:meth:`DeltaStore.write_lease`) before its
first file and drops it after its commit: ``<table>/_cptdata_writes/<write_id>.json``, renewed every 30 s, covering
the files named ``part-<write_id>-…``. A lease is dead when it was not renewed for 10 minutes, or when its process
(same host, same PID namespace) no longer runs. So a concurrent job's not-yet-committed files are kept however long
it runs. ``older_than_s = 0`` is for tests, and for writers that take no lease (``write_deltalake`` itself) only the
age protects their in-flight files. delta-rs's own ``DeltaTable.vacuum(full=True)`` (deltalake 1.6) does delete
untracked files older than ``retention_hours``, but in whole hours, it applies the same age to tombstoned files that
older versions still read (unless every version is listed in ``keep_versions``), knows nothing of writers in flight
and commits two VACUUM versions; hence this helper (see tests/reliability/test_scoring_orphans.py).

Object stores: leases, listings, rewrites and deletes go through ``pyarrow.fs.FileSystem.from_uri`` of the table, as
the Spark tasks' own writes do, so credentials come from the environment there.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

from cpt.lineage import graph as lineage_graph
from cpt.lineage.code import code_record

COMMIT_ID_KEY = "cptdata.commit_id"
COMMIT_ATTEMPTS = 6
UNIQUE_GUARD_PREFIX = "cptdata.unique:"  # application transaction every commit_unique_files commit carries
LEASE_DIR = "_cptdata_writes"  # leases of writes in flight (hidden from Delta readers and vacuum: leading "_")
LEASE_HEARTBEAT_S = 30.0
LEASE_TIMEOUT_S = 600.0  # a lease not renewed for this long belongs to a dead (or hopelessly stuck) writer
DEFAULT_ORPHAN_AGE_S = 3600.0

_log = logging.getLogger(__name__)
# Every table keeps its whole log: time travel to any build and the lineage of every version read it (delta-rs would
# otherwise delete log entries older than 30 days at each checkpoint).
TABLE_CONFIGURATION = {"delta.enableExpiredLogCleanup": "false"}


class DeltaStoreError(RuntimeError):
    """A Delta operation could not be carried out as asked."""


@dataclass(frozen=True)
class CommitInfo:
    """Lineage stamped on every commit: who wrote it, from what, with which code and configuration."""

    run_id: str
    asset_key: str
    code_version: str
    config_hash: str
    partition: str | None = None
    input_versions: Mapping[str, int] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)  # more ``cptdata.*`` keys (e.g. a dataset's build record)
    # lineage beyond table versions (see cpt.lineage.graph): of the inputs, the partitions read where not the whole
    # table; the source files (cpt.lineage.graph.FILE_FIELDS) and base models (model_record) read
    input_parts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    files: Sequence[Mapping[str, Any]] = ()
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def custom_metadata(self, commit_id: str) -> dict[str, str]:
        return dict(self.extra) | {
            COMMIT_ID_KEY: commit_id,
            "cptdata.run_id": self.run_id,
            "cptdata.asset_key": self.asset_key,
            "cptdata.partition": self.partition or "",
            "cptdata.code_version": self.code_version,
            "cptdata.config_hash": self.config_hash,
            "cptdata.input_versions": json.dumps(dict(self.input_versions), sort_keys=True),
            "cptdata.input_parts": json.dumps({k: list(v) for k, v in self.input_parts.items()}, sort_keys=True),
            "cptdata.files": json.dumps(list(self.files), sort_keys=True, default=str),
            "cptdata.models": json.dumps(dict(self.models), sort_keys=True, default=str),
            "cptdata.code": json.dumps(code_record(), sort_keys=True),
        }


@dataclass(frozen=True)
class CommittedVersion:
    """A version some writer of this store has just committed: what an ``on_commit`` listener receives."""

    table: str
    table_uri: str
    version: int
    metadata: Mapping[str, str]  # the commit's custom metadata, lineage included
    schema: pa.Schema


@dataclass(frozen=True)
class DataFile:
    """A Parquet file inside a table's folder, written outside delta-rs, described for an add action."""

    path: str  # relative to the table root, '/'-separated
    size: int
    num_records: int
    partition_values: Mapping[str, str | None]
    modification_time_ms: int


@dataclass(frozen=True)
class Snapshot:
    """What a reader needs to scan one version of a table with another engine."""

    table_uri: str
    version: int
    schema: pa.Schema
    schema_json: str  # the Delta schema, which is also Spark's StructType JSON
    partition_columns: tuple[str, ...]
    file_uris: tuple[str, ...]


@dataclass(frozen=True)
class TableFile:
    """A file under a table's folder, as storage lists it."""

    path: str  # relative to the table root, '/'-separated, as named on storage
    size: int
    modified: datetime


@dataclass(frozen=True)
class OrphanScan:
    """Data files no Delta version references, sorted by what :meth:`DeltaStore.remove_orphans` does with them."""

    removable: tuple[TableFile, ...]
    young: tuple[TableFile, ...]  # kept: modified less than ``older_than_s`` ago
    in_flight: tuple[TableFile, ...]  # kept: their write still holds a live lease
    stale_leases: tuple[str, ...]  # lease files of dead writers


@dataclass(frozen=True)
class OrphanCleanup:
    removed: tuple[TableFile, ...]
    kept_young: int
    kept_in_flight: int

    @property
    def bytes_removed(self) -> int:
        return sum(f.size for f in self.removed)


@dataclass(frozen=True)
class UniqueCommit:
    """What :meth:`DeltaStore.commit_unique_files` did."""

    version: int | None  # the version holding the new rows; when nothing was left to add, the latest version
    committed: bool  # False: every row was already in the table (or this application transaction had landed)
    rows: int  # rows added
    duplicates_dropped: int  # rows not added because the table already held their key
    attempts: int  # commit attempts (> 1: a concurrent writer committed first and the rows were re-checked)


def sql_literal(value: str | int | float) -> str:
    """A value as a SQL literal for a delta-rs predicate (strings quoted, quotes doubled)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"unsupported predicate value {value!r}")
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def partition_predicate(values: Mapping[str, str | int | float]) -> str:
    """``{"source": "a"}`` → ``source = 'a'``: the predicate of a partition-scoped overwrite."""
    if not values:
        raise ValueError("a partition predicate needs at least one column")
    return " AND ".join(f"{col} = {sql_literal(val)}" for col, val in sorted(values.items()))


class DeltaStore:
    """Versioned tables under one root, addressed by asset-key paths."""

    def __init__(
        self,
        root_uri: str,
        storage_options: Mapping[str, str] | None = None,
        on_commit: Callable[[CommittedVersion], None] | None = None,
    ) -> None:
        """``on_commit`` hears of every version this store commits (e.g. to emit OpenLineage events); its failure
        is logged, never raised: the commit has landed."""
        if "://" not in root_uri:
            root_uri = str(Path(root_uri).expanduser().resolve())
        self.root_uri = root_uri.rstrip("/")
        self.storage_options = dict(storage_options or {}) or None
        self.on_commit = on_commit
        self._folds: dict[str, dict[int, lineage_graph.State]] = {}  # table → version → commits held (immutable)

    # ---- addressing and reading -------------------------------------------------------------------------------
    def table_uri(self, key: str | Sequence[str]) -> str:
        parts = key.split("/") if isinstance(key, str) else list(key)
        if not parts or any(not p or p in {".", ".."} or "/" in p for p in parts):
            raise ValueError(f"invalid table key {key!r}")
        return "/".join([self.root_uri, *parts])

    def exists(self, key: str | Sequence[str]) -> bool:
        return DeltaTable.is_deltatable(self.table_uri(key), storage_options=self.storage_options)

    def table(self, key: str | Sequence[str], version: int | None = None) -> DeltaTable:
        uri = self.table_uri(key)
        try:
            return DeltaTable(uri, version=version, storage_options=self.storage_options)
        except TableNotFoundError as exc:
            raise DeltaStoreError(f"no Delta table at {uri} (has its asset been materialized?)") from exc

    def version(self, key: str | Sequence[str]) -> int | None:
        """The latest version, or None when the table does not exist yet."""
        return self.table(key).version() if self.exists(key) else None

    def read(
        self,
        key: str | Sequence[str],
        version: int | None = None,
        columns: Sequence[str] | None = None,
        filters: Sequence[tuple[str, str, Any]] | None = None,
    ) -> pa.Table:
        """Rows of a table at a pinned version (latest if None), optionally filtered (``[("source", "=", "a")]``)."""
        dt = self.table(key, version)
        return dt.to_pyarrow_table(
            columns=list(columns) if columns else None, filters=list(filters) if filters else None
        )

    def app_version(self, key: str | Sequence[str], app_id: str) -> int | None:
        """The last version an application transaction ``app_id`` committed to the table (None if never)."""
        return self.table(key).transaction_version(app_id) if self.exists(key) else None

    def history(self, key: str | Sequence[str], limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first, each with its version, operation and custom metadata. The whole history (no
        ``limit``) is listed again if the table moved meanwhile: delta-rs numbers the entries down from the version it
        loaded, so a commit landing during the listing would shift every number."""
        if limit is not None:
            return self.table(key).history(limit)
        for _ in range(20):
            dt = self.table(key)
            entries = dt.history()
            if self.table(key).version() == dt.version():  # nothing landed while we listed
                return entries
        raise DeltaStoreError(f"the history of {key} could not be read (the table kept moving)")

    def restore(self, key: str | Sequence[str], version: int, commit: CommitInfo) -> int:
        """A new version whose content is that of ``version`` (a build that failed after its commit is undone);
        returns the new version."""
        commit_id = uuid.uuid4().hex
        # the restored version's lineage is the new version's (graph.fold_history): the restoring commit read nothing
        commit = replace(commit, input_versions={}, input_parts={}, files=(), models={})
        metadata = self._stamp(key, commit, commit_id, "restore", restored_version=version)
        self.table(key).restore(version, commit_properties=CommitProperties(custom_metadata=metadata))
        return self._landed(key, commit_id, metadata)

    def commit_metadata(self, key: str | Sequence[str], version: int) -> dict[str, Any]:
        """The commit entry (operation, custom metadata) that made ``version`` of the table."""
        # delta-rs lists the newest commits and numbers them down from the loaded snapshot's version (whatever
        # version was asked for): list from the latest snapshot, and only trust a listing the table did not move in
        for _ in range(20):
            dt = self.table(key)
            if not 0 <= version <= dt.version():
                raise DeltaStoreError(f"{key} has no version {version} (latest: {dt.version()})")
            entries = dt.history(dt.version() - version + 1)
            if len(entries) < dt.version() - version + 1:
                raise DeltaStoreError(f"the commit of {key} v{version} is no longer in the Delta log (log cleanup)")
            if self.table(key).version() == dt.version() and int(entries[0]["version"]) == dt.version():
                entry = entries[-1]
                if int(entry["version"]) == version:
                    return entry
        raise DeltaStoreError(f"the commit of {key} v{version} could not be read (the table kept moving)")

    def snapshot(self, key: str | Sequence[str], version: int | None = None) -> Snapshot:
        dt = self.table(key, version)
        return Snapshot(
            table_uri=dt.table_uri.rstrip("/"),
            version=dt.version(),
            schema=pa.schema(dt.schema().to_arrow()),
            schema_json=dt.schema().to_json(),
            partition_columns=tuple(dt.metadata().partition_columns),
            file_uris=tuple(dt.file_uris()),
        )

    # ---- writing ----------------------------------------------------------------------------------------------
    def append(
        self, key: str | Sequence[str], data: pa.Table, commit: CommitInfo, partition_by: Sequence[str] | None = None
    ) -> int:
        """Add rows in one commit; returns the new version."""
        return self._write(key, data, commit, mode="append", partition_by=partition_by)

    def overwrite(
        self,
        key: str | Sequence[str],
        data: pa.Table,
        commit: CommitInfo,
        *,
        predicate: str | None,
        partition_by: Sequence[str] | None = None,
        add_columns: bool = False,
    ) -> int:
        """Replace the rows matching ``predicate`` (the whole table when None) with ``data``, in one commit.

        Every row of ``data`` must match the predicate; delta-rs refuses the commit otherwise, which is what keeps a
        partition-scoped rewrite from touching anything outside its partition. ``add_columns``: columns of ``data``
        the table lacks are added to its schema (rows outside the predicate read them as null); without it a schema
        difference is refused.
        """
        if predicate is not None:
            self.ensure_table(key, data.schema, partition_by, commit)
        return self._write(
            key, data, commit, mode="overwrite", partition_by=partition_by, predicate=predicate, merge=add_columns
        )

    def ensure_table(
        self, key: str | Sequence[str], schema: pa.Schema, partition_by: Sequence[str] | None, commit: CommitInfo
    ) -> None:
        """Create the table empty if it does not exist; safe when several writers race to create it."""
        if self.exists(key):
            return
        try:
            DeltaTable.create(
                self.table_uri(key),
                _delta_schema(schema),
                mode="ignore",
                partition_by=list(partition_by) if partition_by else None,
                storage_options=self.storage_options,
                configuration=TABLE_CONFIGURATION,
                commit_properties=CommitProperties(
                    custom_metadata=self._stamp(key, commit, uuid.uuid4().hex, "create", own=False)
                ),
            )
        except Exception:
            if not self.exists(key):  # lost a race to a concurrent creator: fine; anything else is an error
                raise

    def merge(
        self,
        key: str | Sequence[str],
        data: pa.Table,
        commit: CommitInfo,
        *,
        on: Sequence[str],
        partition_by: Sequence[str] | None = None,
    ) -> int:
        """Upsert ``data`` on the key columns ``on`` in one commit: matching rows are updated, new rows inserted."""
        if not on:
            raise ValueError("merge needs at least one key column")
        _require_unique(data, on)
        if not self.exists(key):
            return self._write(key, data, commit, mode="append", partition_by=partition_by)
        commit_id = uuid.uuid4().hex
        predicate = " AND ".join(f"t.{c} = s.{c}" for c in on)
        dt = self.table(key)
        metadata = self._stamp(key, commit, commit_id, "append", commit.partition or "")
        (
            dt.merge(
                data,
                predicate,
                source_alias="s",
                target_alias="t",
                commit_properties=CommitProperties(custom_metadata=metadata),
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        return self._landed(key, commit_id, metadata)

    def already_committed(self, key: str | Sequence[str], app_id: str | None, app_version: int) -> bool:
        """Whether the application transaction (app_id, app_version) — or a later one — has landed in the table."""
        if app_id is None:
            return False
        landed = self.app_version(key, app_id)
        return landed is not None and landed >= app_version

    def commit_files(
        self,
        key: str | Sequence[str],
        files: Sequence[DataFile],
        *,
        schema: pa.Schema,
        commit: CommitInfo,
        partition_by: Sequence[str] = (),
        replace_partitions: Mapping[str, str] | None = None,
        replace_all: bool = False,
        app_id: str | None = None,
        app_version: int = 0,
    ) -> int:
        """Commit Parquet files already written inside the table folder as one transaction.

        ``replace_partitions`` turns the append into an overwrite of that partition (every file must belong to it);
        ``replace_all`` into an overwrite of the whole table (the new version holds exactly these files).
        Retrying is safe: with ``app_id``, a transaction whose (app_id, app_version) already landed is a no-op;
        without it, files the table already holds are not added twice, and a replace whose files are all in the
        table already has happened. Returns the table version that holds the files.
        """
        if replace_all and replace_partitions is not None:
            raise DeltaStoreError("replace_all and replace_partitions exclude each other")
        replacing = replace_all or replace_partitions is not None
        if replace_partitions is not None:
            strangers = [f.path for f in files if dict(f.partition_values) != dict(replace_partitions)]
            if strangers:
                raise DeltaStoreError(f"files outside the replaced partition {dict(replace_partitions)}: {strangers}")
        table_exists = self.exists(key)
        if table_exists:
            # one snapshot for the check and the commit: a token another writer advanced after a separate check
            # would not conflict with a commit built on a newer snapshot (delta-rs does not require it to increase)
            dt = self.table(key)
            landed = dt.transaction_version(app_id) if app_id is not None else None
            if landed is not None and landed >= app_version:
                return dt.version()
            present = {unquote(p) for p in dt.get_add_actions(flatten=True).column("path").to_pylist()}
            new_files = [f for f in files if unquote(f.path) not in present]
            if not replacing:
                files = new_files
                if not files:
                    return dt.version()
            elif files and not new_files:
                return dt.version()  # this replace has already landed
            elif len(new_files) != len(files):
                raise DeltaStoreError("some of the files of this replace are already in the table, some are not")
        commit_id = uuid.uuid4().hex
        if replace_all:
            write, part = "replace_all", ""
        elif replace_partitions is not None:
            write, part = "replace_partition", partition_predicate(replace_partitions)
        else:
            write, part = "append", commit.partition or ""
        metadata = self._stamp(key, commit, commit_id, write, part)
        properties = CommitProperties(
            custom_metadata=metadata,
            app_transactions=[Transaction(app_id, app_version)] if app_id is not None else None,
        )
        actions = [_add_action(f) for f in files]
        if not table_exists:
            create_table_with_add_actions(
                self.table_uri(key),
                _delta_schema(schema),
                actions,
                mode="append",
                partition_by=list(partition_by) or None,
                configuration=TABLE_CONFIGURATION,
                storage_options=self.storage_options,
                commit_properties=properties,
            )
        else:
            filters = [(c, "=", v) for c, v in sorted(replace_partitions.items())] if replace_partitions else None
            dt.create_write_transaction(
                actions,
                mode="overwrite" if replace_partitions or replace_all else "append",
                schema=_delta_schema(schema),
                partition_by=list(partition_by) or None,
                partition_filters=filters,
                commit_properties=properties,
            )
        return self._landed(key, commit_id, metadata)

    def commit_unique_files(
        self,
        key: str | Sequence[str],
        files: Sequence[DataFile],
        *,
        schema: pa.Schema,
        commit: CommitInfo,
        unique_on: Sequence[str],
        partition_by: Sequence[str] = (),
        checked_version: int | None = None,
        key_filters: Sequence[tuple[str, str, Any]] | None = None,
        app_id: str | None = None,
        app_version: int = 0,
    ) -> UniqueCommit:
        """Append Parquet files already written inside the table folder, leaving out rows whose ``unique_on`` key
        the table already holds; one transaction.

        Optimistic concurrency: the keys are checked against the version the commit is built on (skipped when that
        is ``checked_version``, a version the caller has already excluded the keys of), and every such commit
        carries the application transaction ``cptdata.unique:<columns>``. Two writers that checked the same version
        therefore conflict — delta-rs refuses the second commit instead of rebasing an append — and the loser
        re-checks against the new version and retries. The guarantee holds among writers that all commit to the
        table through this method. ``key_filters`` narrow the key read (``[("model_revision", "=", "abc")]``) when
        every incoming row satisfies them. A file that loses only some rows is rewritten beside itself (same name
        prefix, so the writer's lease still covers it); superseded files are deleted once the commit has landed.
        With ``app_id``, a transaction that already landed is a no-op. ``files`` must be new files written for this
        commit (a file the table already holds is left out, never rewritten or deleted).
        """
        if not unique_on:
            raise ValueError("commit_unique_files needs at least one key column")
        self.ensure_table(key, schema, partition_by, commit)  # the guarded commit needs a version to build on
        held = {unquote(p) for p in self.table(key).get_add_actions(flatten=True).column("path").to_pylist()}
        files, dropped, superseded, attempts = [f for f in files if unquote(f.path) not in held], 0, [], 0
        guard = UNIQUE_GUARD_PREFIX + ",".join(unique_on)
        commit_id = uuid.uuid4().hex
        metadata = self._stamp(key, commit, commit_id, "append", commit.partition or "")
        try:
            for attempt in range(COMMIT_ATTEMPTS):
                attempts = attempt + 1
                dt = self.table(key)
                landed = dt.transaction_version(app_id) if app_id is not None else None
                if landed is not None and landed >= app_version:
                    return UniqueCommit(dt.version(), False, 0, dropped, attempts)
                if files and (checked_version is None or dt.version() != checked_version):
                    present = self._present_keys(dt, files, unique_on, partition_by, key_filters)
                    files, gone, replaced = self._drop_present(key, files, unique_on, present)
                    dropped, superseded = dropped + gone, superseded + replaced
                    checked_version = dt.version()
                if not files:
                    return UniqueCommit(dt.version(), False, 0, dropped, attempts)
                guard_version = dt.transaction_version(guard)
                txns = [Transaction(guard, 0 if guard_version is None else guard_version + 1)]
                if app_id is not None:
                    txns.append(Transaction(app_id, app_version))
                try:
                    dt.create_write_transaction(
                        [_add_action(f) for f in files],
                        mode="append",
                        schema=_delta_schema(schema),
                        partition_by=list(partition_by) or None,
                        commit_properties=CommitProperties(custom_metadata=metadata, app_transactions=txns),
                    )
                except CommitFailedError:
                    # Another guarded commit landed after the version we checked: nothing of ours is in the table.
                    if attempt + 1 == COMMIT_ATTEMPTS:
                        raise
                    time.sleep(random.uniform(0.05, 0.2) * 2**attempt)
                    continue
                version = self._landed(key, commit_id, metadata)
                return UniqueCommit(version, True, sum(f.num_records for f in files), dropped, attempts)
            raise AssertionError("unreachable")  # the loop returns or raises
        finally:
            self._delete_quietly(key, [f.path for f in superseded])

    @contextmanager
    def write_lease(
        self, key: str | Sequence[str], write_id: str, *, run_id: str = "", heartbeat_s: float = LEASE_HEARTBEAT_S
    ) -> Iterator[str]:
        """Hold a lease on the files ``part-<write_id>-…`` while they are written and committed.

        :meth:`remove_orphans` never removes a file of a live lease. Take it before the first file is written and
        leave the block after the commit. Renewed every ``heartbeat_s`` by a daemon thread; removed on exit (a
        writer that is killed leaves it behind, and it is dead once its process is gone or it went unrenewed for
        ``LEASE_TIMEOUT_S``). Yields the lease's path relative to the table root.
        """
        if not write_id or "/" in write_id or write_id.startswith("."):
            raise ValueError(f"invalid write id {write_id!r}")
        fs, root = self._filesystem(key, create=True)
        rel = f"{LEASE_DIR}/{write_id}.json"
        body = json.dumps(
            {
                "write_id": write_id,
                "run_id": run_id,
                "host": _host_token(),
                "pid": os.getpid(),
                "started_at": datetime.now(UTC).isoformat(),
            }
        ).encode()
        fs.create_dir(f"{root}/{LEASE_DIR}", recursive=True)

        def renew() -> None:
            with fs.open_output_stream(f"{root}/{rel}") as fh:
                fh.write(body)

        renew()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(heartbeat_s):
                with suppress(OSError):  # a missed beat only ages the lease; the next one retries
                    renew()

        beater = threading.Thread(target=beat, name=f"lease-{write_id}", daemon=True)
        beater.start()
        try:
            yield rel
        finally:
            stop.set()
            beater.join()  # so no late renewal re-creates the lease after it is removed
            self._delete_quietly(key, [rel])

    def orphan_files(
        self,
        key: str | Sequence[str],
        older_than_s: float = DEFAULT_ORPHAN_AGE_S,
        *,
        lease_timeout_s: float = LEASE_TIMEOUT_S,
        now: datetime | None = None,
    ) -> OrphanScan:
        """Data files (``*.parquet`` outside ``_``/``.`` folders) under the table that no Delta version references.

        Storage is listed first, the leases read next and the log last: a write whose lease was gone when it was
        read had committed before (it drops its lease only after its commit), so the log read afterwards names its
        files. A table folder without a Delta log (a first write that never committed) references nothing.
        """
        if older_than_s < 0 or lease_timeout_s < 0:
            raise ValueError("older_than_s and lease_timeout_s must be ≥ 0")
        located = self._filesystem(key, create=False)
        if located is None:
            return OrphanScan((), (), (), ())
        fs, root = located
        now = now or datetime.now(UTC)
        listed = [f for f in self._listing(fs, root) if _is_data_file(f.path)]
        live, stale = self._leases(fs, root, now, lease_timeout_s)
        referenced = self._referenced_paths(key, fs, root)
        removable, young, in_flight = [], [], []
        for f in listed:
            if f.path in referenced:
                continue
            name = f.path.rsplit("/", 1)[-1]
            if any(name.startswith(f"part-{w}-") for w in live):
                in_flight.append(f)
            elif (now - f.modified).total_seconds() < older_than_s:
                young.append(f)
            else:
                removable.append(f)
        return OrphanScan(tuple(removable), tuple(young), tuple(in_flight), tuple(stale))

    def remove_orphans(
        self,
        key: str | Sequence[str],
        older_than_s: float = DEFAULT_ORPHAN_AGE_S,
        *,
        lease_timeout_s: float = LEASE_TIMEOUT_S,
    ) -> OrphanCleanup:
        """Delete the table's orphaned data files (see :meth:`orphan_files` for which) and dead writers' leases."""
        scan = self.orphan_files(key, older_than_s, lease_timeout_s=lease_timeout_s)
        deleted = set(self._delete_quietly(key, [f.path for f in scan.removable]))
        self._delete_quietly(key, list(scan.stale_leases))
        return OrphanCleanup(
            tuple(f for f in scan.removable if f.path in deleted), len(scan.young), len(scan.in_flight)
        )

    # ---- internals --------------------------------------------------------------------------------------------
    def _filesystem(self, key: str | Sequence[str], *, create: bool) -> tuple[pafs.FileSystem, str] | None:
        uri = self.table_uri(key)
        if "://" not in uri and not Path(uri).is_dir():
            if not create:
                return None
            Path(uri).mkdir(parents=True, exist_ok=True)
        fs, root = pafs.FileSystem.from_uri(uri)
        return fs, root.rstrip("/")

    def _listing(self, fs: pafs.FileSystem, root: str, sub: str = "") -> list[TableFile]:
        base = f"{root}/{sub}" if sub else root
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return [
            TableFile(
                path=i.path[len(root) + 1 :],
                size=int(i.size or 0),
                modified=i.mtime if i.mtime is not None else datetime.now(UTC),
            )
            for i in infos
            if i.type == pafs.FileType.File
        ]

    def _leases(self, fs: pafs.FileSystem, root: str, now: datetime, timeout_s: float) -> tuple[set[str], list[str]]:
        live, stale = set(), []
        for lease in self._listing(fs, root, LEASE_DIR):
            name = lease.path.rsplit("/", 1)[-1]
            if not name.endswith(".json"):
                continue
            try:
                with fs.open_input_stream(f"{root}/{lease.path}") as fh:
                    info = json.loads(fh.read())
            except FileNotFoundError:
                continue  # dropped while we looked: its write has committed (or given up)
            except (OSError, ValueError):
                info = {}  # being rewritten: judge it by its age alone
            if _lease_alive(info, lease.modified, now, timeout_s):
                live.add(name.removesuffix(".json"))
            else:
                stale.append(lease.path)
        return live, stale

    def _referenced_paths(self, key: str | Sequence[str], fs: pafs.FileSystem, root: str) -> set[str]:
        """Every data file named by an add or remove action of a commit still in the log, or by the snapshot."""
        uri = self.table_uri(key)
        paths: set[str] = set()
        for entry in self._listing(fs, root, "_delta_log"):
            name = entry.path.rsplit("/", 1)[-1]
            if entry.path.count("/") != 1 or not (name.endswith(".json") or name.endswith(".json.tmp")):
                continue
            try:
                with fs.open_input_stream(f"{root}/{entry.path}") as fh:
                    lines = fh.read().decode().splitlines()
            except FileNotFoundError:
                continue  # a temporary commit file renamed while we listed: its final name is read below
            for line in lines:
                try:
                    action = json.loads(line) if line.strip() else {}
                except ValueError:
                    continue  # a torn line of a commit being written: its files are leased or young
                for kind in ("add", "remove"):
                    if isinstance(action.get(kind), dict) and action[kind].get("path"):
                        rel = _relative_to(action[kind]["path"], uri, encoded=True)
                        if rel is not None:
                            paths.add(rel)
        if self.exists(key):
            dt = self.table(key)  # the checkpointed state, whose commits may have left the log
            paths |= {r for u in dt.file_uris() if (r := _relative_to(u, uri, encoded=False)) is not None}
        return paths

    def _present_keys(
        self,
        dt: DeltaTable,
        files: Sequence[DataFile],
        unique_on: Sequence[str],
        partition_by: Sequence[str],
        key_filters: Sequence[tuple[str, str, Any]] | None,
    ) -> pa.Table:
        filters = list(key_filters or [])
        for col in partition_by:
            values = {f.partition_values.get(col) for f in files}
            if files and None not in values:
                filters.append((col, "in", sorted(values)))
        keys = dt.to_pyarrow_table(columns=list(unique_on), filters=filters or None)
        return _plain_strings(keys).group_by(list(unique_on)).aggregate([])

    def _drop_present(
        self, key: str | Sequence[str], files: Sequence[DataFile], unique_on: Sequence[str], present: pa.Table
    ) -> tuple[list[DataFile], int, list[DataFile]]:
        """(files without the rows whose key is in ``present``, rows dropped, files superseded)."""
        if present.num_rows == 0 or not files:
            return list(files), 0, []
        fs, root = self._filesystem(key, create=True)
        kept, dropped, superseded = [], 0, []
        for f in files:
            stored = [c for c in unique_on if c not in f.partition_values]
            keys = _plain_strings(pq.read_table(f"{root}/{f.path}", filesystem=fs, columns=stored))
            for col in unique_on:
                if col in f.partition_values:
                    value = f.partition_values[col]
                    keys = keys.append_column(col, pa.array([value] * keys.num_rows, present.schema.field(col).type))
            keys = keys.append_column("__row", pa.array(range(keys.num_rows), pa.int64()))
            hits = keys.select([*unique_on, "__row"]).join(present, keys=list(unique_on), join_type="left semi")
            if hits.num_rows == 0:
                kept.append(f)
                continue
            dropped += hits.num_rows
            superseded.append(f)
            if hits.num_rows == keys.num_rows:
                continue
            mask = pa.array(np.isin(np.arange(keys.num_rows), hits["__row"].to_numpy(), invert=True))
            rows = pq.read_table(f"{root}/{f.path}", filesystem=fs).filter(mask)
            stem = f.path.removesuffix(".parquet").removesuffix(".snappy")
            path = f"{stem}-k{uuid.uuid4().hex[:8]}.snappy.parquet"
            pq.write_table(rows, f"{root}/{path}", filesystem=fs, compression="snappy")
            info = fs.get_file_info(f"{root}/{path}")
            kept.append(
                DataFile(
                    path=path,
                    size=int(info.size),
                    num_records=rows.num_rows,
                    partition_values=dict(f.partition_values),
                    modification_time_ms=int(info.mtime.timestamp() * 1000) if info.mtime else int(time.time() * 1e3),
                )
            )
        return kept, dropped, superseded

    def _delete_quietly(self, key: str | Sequence[str], paths: Sequence[str]) -> list[str]:
        """Delete files (relative to the table root); returns those deleted. Missing ones are someone else's win."""
        located = self._filesystem(key, create=False) if paths else None
        if located is None:
            return []
        fs, root = located
        deleted = []
        for rel in paths:
            try:
                fs.delete_file(f"{root}/{rel}")
                deleted.append(rel)
            except FileNotFoundError:
                continue
        return deleted

    def _write(
        self,
        key: str | Sequence[str],
        data: pa.Table,
        commit: CommitInfo,
        *,
        mode: Literal["append", "overwrite"],
        partition_by: Sequence[str] | None,
        predicate: str | None = None,
        merge: bool = False,
    ) -> int:
        commit_id = uuid.uuid4().hex
        if mode == "append":
            write, part = "append", commit.partition or ""
        else:
            write, part = ("replace_all", "") if predicate is None else ("replace_partition", predicate)
        metadata = self._stamp(key, commit, commit_id, write, part)
        creating = not self.exists(key)
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                write_deltalake(
                    self.table_uri(key),
                    data,
                    mode=mode,
                    predicate=predicate,
                    partition_by=list(partition_by) if partition_by else None,
                    schema_mode="merge" if merge else None,
                    configuration=TABLE_CONFIGURATION if creating else None,
                    storage_options=self.storage_options,
                    commit_properties=CommitProperties(custom_metadata=metadata),
                )
                break
            except CommitFailedError:
                # A concurrent writer won the race (delta-rs already retried what it could). Nothing of ours landed,
                # and an append or a partition-scoped overwrite means the same on a newer snapshot: try again.
                if attempt + 1 == COMMIT_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.05, 0.2) * 2**attempt)
        return self._landed(key, commit_id, metadata)

    # ---- lineage ------------------------------------------------------------------------------------------------
    def tables(self, depth: int = 2) -> list[str]:
        """The keys of the tables under the root (folders holding a ``_delta_log``, up to ``depth`` levels)."""
        fs, root = pafs.FileSystem.from_uri(self.root_uri)
        found, level = [], [""]
        for _ in range(depth):
            deeper = []
            for prefix in level:
                infos = fs.get_file_info(pafs.FileSelector(f"{root}/{prefix}".rstrip("/"), allow_not_found=True))
                for info in sorted(infos, key=lambda i: i.base_name):
                    if info.type != pafs.FileType.Directory or info.base_name.startswith(("_", ".")):
                        continue
                    key = f"{prefix}/{info.base_name}".lstrip("/")
                    is_table = fs.get_file_info(f"{info.path}/_delta_log").type == pafs.FileType.Directory
                    (found if is_table else deeper).append(key)
            level = deeper
        return sorted(found)

    def lineage(
        self, key: str | Sequence[str], version: int, parts: Sequence[str] | None = None
    ) -> lineage_graph.Lineage:
        """What version ``version`` of a table was built from (transitively): the folded lineage of the commits
        whose rows it holds, only those of partitions ``parts`` when given (see :mod:`cpt.lineage.graph`)."""
        name = key if isinstance(key, str) else "/".join(key)
        return lineage_graph.version_lineage(self.lineage_state(name, version), parts, name)

    def lineage_state(self, key: str | Sequence[str], version: int) -> lineage_graph.State:
        """Per partition, the commit entries whose rows version ``version`` of the table holds."""
        name = key if isinstance(key, str) else "/".join(key)
        states = self._folds.get(name, {})
        if version not in states:
            states = self.lineage_states(name)
        if version not in states:
            raise DeltaStoreError(f"{name} has no version {version} in its Delta log")
        return states[version]

    def lineage_states(self, key: str | Sequence[str]) -> dict[int, lineage_graph.State]:
        """:meth:`lineage_state` of every version, from one read of the log (which must still start at version 0:
        tables are created with expired-log cleanup off, see :data:`TABLE_CONFIGURATION`)."""
        name = key if isinstance(key, str) else "/".join(key)
        entries = self.history(name)
        if entries and min(int(e["version"]) for e in entries) != 0:
            raise DeltaStoreError(f"the Delta log of {name} no longer starts at version 0: its lineage is incomplete")
        self._folds[name] = lineage_graph.fold_history(entries)
        return self._folds[name]

    def _stamp(
        self,
        key: str | Sequence[str],
        commit: CommitInfo,
        commit_id: str,
        write: str,
        part: str = "",
        *,
        restored_version: int | None = None,
        own: bool = True,
    ) -> dict[str, str]:
        """A commit's custom metadata: its CommitInfo, how its rows enter the table, and its own lineage (the
        inputs it read with everything they were built from)."""
        metadata = commit.custom_metadata(commit_id) | {"cptdata.write": write, "cptdata.part": part}
        if restored_version is not None:
            metadata["cptdata.restored_version"] = str(restored_version)
        if own:
            name = key if isinstance(key, str) else "/".join(key)
            metadata["cptdata.lineage"] = json.dumps(self._own_lineage(name, commit), sort_keys=True, default=str)
        return metadata

    def _own_lineage(self, table_written: str, commit: CommitInfo) -> lineage_graph.Lineage:
        found = [{"files": list(commit.files), "models": dict(commit.models)}]
        read = {t: v for t, v in commit.input_versions.items() if t != table_written}  # see graph.direct_inputs
        for model in commit.models.values():  # a model pretrained here was built from these table versions
            read |= {t: v for t, v in (model.get("trained_on") or {}).items() if t not in read}
        for table, version in read.items():
            if not isinstance(version, int):
                continue
            found.append(lineage_graph.direct(table, version))
            parts = commit.input_parts.get(table)
            try:
                found.append(self.lineage(table, version, list(parts) if parts is not None else None))
            except Exception as exc:  # recorded as read, not expanded: a lineage problem never blocks a commit
                _log.warning(f"lineage of {table} v{version} could not be read: {exc}")
                found.append({"incomplete": [f"{table}@{version}"]})
        return lineage_graph.merge(*found)

    def _landed(self, key: str | Sequence[str], commit_id: str, metadata: Mapping[str, str]) -> int:
        """The version our commit created; the ``on_commit`` listener hears of it."""
        version = self._version_of(key, commit_id)
        if self.on_commit is not None:
            name = key if isinstance(key, str) else "/".join(key)
            try:
                schema = pa.schema(self.table(name, version).schema().to_arrow())
                self.on_commit(CommittedVersion(name, self.table_uri(name), version, dict(metadata), schema))
            except Exception as exc:  # the commit has landed; a listener's failure must not undo or hide that
                _log.warning(f"the on_commit listener failed for {name} v{version}: {exc}")
        return version

    def _version_of(self, key: str | Sequence[str], commit_id: str, search_depth: int = 100) -> int:
        # delta-rs numbers history entries down from the snapshot's version, so a commit landing while the history
        # is listed shifts the numbers: only trust a listing taken while the table did not move.
        for _ in range(20):
            dt = self.table(key)
            entries = dt.history(search_depth)
            if self.table(key).version() != dt.version() or entries[0]["version"] != dt.version():
                continue
            for entry in entries:
                if entry.get(COMMIT_ID_KEY) == commit_id:
                    return int(entry["version"])
            break
        raise DeltaStoreError(f"commit {commit_id} not found in the last {search_depth} versions of {key}")


def _is_data_file(rel: str) -> bool:
    parts = rel.split("/")
    return rel.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts)


def _relative_to(path: str, table_uri: str, *, encoded: bool) -> str | None:
    """A log path (URL-encoded when relative) or a file URI as the path relative to the table root on storage."""
    if "://" not in path and not path.startswith("/"):
        return unquote(path) if encoded else path
    plain = unquote(path) if encoded else path
    for prefix in (table_uri.rstrip("/") + "/", "file://" + table_uri.rstrip("/") + "/"):
        if plain.startswith(prefix):
            return plain[len(prefix) :]
    return None  # a file outside the table folder (a shallow clone's): not ours to judge


def _plain_strings(table: pa.Table) -> pa.Table:
    """String-like columns as ``large_string``, so keys read by delta-rs and by pyarrow compare and join."""
    fields = [
        pa.field(f.name, pa.large_string())
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_string_view(f.type)
        else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _host_token() -> str:
    """This machine and PID namespace: where a lease's PID can be checked."""
    parts = [socket.gethostname()]
    for probe in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(probe) if probe.endswith("/pid") else Path(probe).read_text().strip())
        except OSError:
            parts.append("?")
    return "|".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: it writes nothing any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _lease_alive(info: Mapping[str, Any], renewed: datetime, now: datetime, timeout_s: float) -> bool:
    if (now - renewed).total_seconds() > timeout_s:
        return False
    if info.get("host") == _host_token() and isinstance(info.get("pid"), int):
        return _pid_alive(info["pid"])
    return True  # another machine's writer, renewed recently enough


def _require_unique(data: pa.Table, on: Sequence[str]) -> None:
    keys = data.select(list(on)).group_by(list(on)).aggregate([]).num_rows
    if keys != data.num_rows:
        raise DeltaStoreError(f"merge source has {data.num_rows - keys} duplicate key rows on {list(on)}")


def _add_action(f: DataFile) -> AddAction:
    return AddAction(
        path=f.path,
        size=f.size,
        partition_values=dict(f.partition_values),
        modification_time=f.modification_time_ms,
        data_change=True,
        stats=json.dumps({"numRecords": f.num_records}),
    )


def _delta_schema(schema: pa.Schema):
    from deltalake import Schema

    return Schema.from_arrow(schema)
