"""The Delta storage adapter: the one module of the platform that imports ``deltalake``.

A table lives at ``root / asset key path`` (``corpus/documents`` → ``<root>/corpus/documents``); the root is a local
folder or an object-store URI. Every write is one Delta commit that carries the lineage metadata of a
:class:`CommitInfo` and returns the table version it created, found by a unique commit id in the table history (so a
concurrent writer cannot make us report its version as ours).

Files written by someone else (Spark tasks) enter a table through :meth:`DeltaStore.commit_files`, as one transaction,
idempotent when retried. Tables stay on basic Delta features (no deletion vectors, no column mapping), so the add
actions of a snapshot are the whole truth about which Parquet files hold its rows.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

COMMIT_ID_KEY = "cptdata.commit_id"
COMMIT_ATTEMPTS = 6


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

    def custom_metadata(self, commit_id: str) -> dict[str, str]:
        return {
            COMMIT_ID_KEY: commit_id,
            "cptdata.run_id": self.run_id,
            "cptdata.asset_key": self.asset_key,
            "cptdata.partition": self.partition or "",
            "cptdata.code_version": self.code_version,
            "cptdata.config_hash": self.config_hash,
            "cptdata.input_versions": json.dumps(dict(self.input_versions), sort_keys=True),
        }


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

    def __init__(self, root_uri: str, storage_options: Mapping[str, str] | None = None) -> None:
        if "://" not in root_uri:
            root_uri = str(Path(root_uri).expanduser().resolve())
        self.root_uri = root_uri.rstrip("/")
        self.storage_options = dict(storage_options or {}) or None

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
        """Commits, newest first, each with its version, operation and custom metadata."""
        return self.table(key).history(limit)

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
                commit_properties=CommitProperties(custom_metadata=commit.custom_metadata(uuid.uuid4().hex)),
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
        (
            dt.merge(
                data,
                predicate,
                source_alias="s",
                target_alias="t",
                commit_properties=CommitProperties(custom_metadata=commit.custom_metadata(commit_id)),
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        return self._version_of(key, commit_id)

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
        app_id: str | None = None,
        app_version: int = 0,
    ) -> int:
        """Commit Parquet files already written inside the table folder as one transaction.

        ``replace_partitions`` turns the append into an overwrite of that partition (every file must belong to it).
        Retrying is safe: with ``app_id``, a transaction whose (app_id, app_version) already landed is a no-op;
        without it, files the table already holds are not added twice, and a replace whose files are all in the
        table already has happened. Returns the table version that holds the files.
        """
        if replace_partitions is not None:
            strangers = [f.path for f in files if dict(f.partition_values) != dict(replace_partitions)]
            if strangers:
                raise DeltaStoreError(f"files outside the replaced partition {dict(replace_partitions)}: {strangers}")
        table_exists = self.exists(key)
        if table_exists:
            if self.already_committed(key, app_id, app_version):
                return self.table(key).version()
            dt = self.table(key)
            present = {unquote(p) for p in dt.get_add_actions(flatten=True).column("path").to_pylist()}
            new_files = [f for f in files if unquote(f.path) not in present]
            if replace_partitions is None:
                files = new_files
                if not files:
                    return dt.version()
            elif files and not new_files:
                return dt.version()  # this replace has already landed
            elif len(new_files) != len(files):
                raise DeltaStoreError("some of the files of this replace are already in the table, some are not")
        commit_id = uuid.uuid4().hex
        properties = CommitProperties(
            custom_metadata=commit.custom_metadata(commit_id),
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
                storage_options=self.storage_options,
                commit_properties=properties,
            )
        else:
            filters = [(c, "=", v) for c, v in sorted(replace_partitions.items())] if replace_partitions else None
            dt.create_write_transaction(
                actions,
                mode="overwrite" if replace_partitions else "append",
                schema=_delta_schema(schema),
                partition_by=list(partition_by) or None,
                partition_filters=filters,
                commit_properties=properties,
            )
        return self._version_of(key, commit_id)

    # ---- internals --------------------------------------------------------------------------------------------
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
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                write_deltalake(
                    self.table_uri(key),
                    data,
                    mode=mode,
                    predicate=predicate,
                    partition_by=list(partition_by) if partition_by else None,
                    schema_mode="merge" if merge else None,
                    storage_options=self.storage_options,
                    commit_properties=CommitProperties(custom_metadata=commit.custom_metadata(commit_id)),
                )
                break
            except CommitFailedError:
                # A concurrent writer won the race (delta-rs already retried what it could). Nothing of ours landed,
                # and an append or a partition-scoped overwrite means the same on a newer snapshot: try again.
                if attempt + 1 == COMMIT_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.05, 0.2) * 2**attempt)
        return self._version_of(key, commit_id)

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
