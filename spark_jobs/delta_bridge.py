"""Spark ↔ Delta without the Delta jars.

Reading: a pinned snapshot's Parquet files, with the table root as ``basePath`` so Hive partition columns come back,
and the Delta schema applied (it is Spark's own StructType JSON). Writing: tasks write Parquet files into the table
folder (:mod:`spark_jobs.parquet_files`), and the driver commits them with delta-rs as one transaction. The driver
holds a write lease (:meth:`cpt.delta_store.DeltaStore.write_lease`) from before the first task writes until the
commit, so another job's orphan cleanup never removes files still on their way in; a driver killed in between leaves
the files as orphans, which the next cleanup removes. :func:`write_unique_to_delta` also leaves out rows whose key
the table already holds, re-checked against the version the commit lands on (concurrent jobs add no duplicates).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cpt.delta_store import CommitInfo, DataFile, DeltaStore, Snapshot, UniqueCommit
from spark_jobs.parquet_files import FILE_REPORT_DDL, ParquetFileWriter

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _spark_path(uri: str) -> str:
    """A delta-rs file URI as Hadoop's file systems name it (local paths, and s3:// served by s3a)."""
    if uri.startswith("/"):
        return f"file://{uri}"
    return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri


def read_snapshot(spark: SparkSession, store: DeltaStore, key: str, version: int | None) -> tuple[DataFrame, Snapshot]:
    """The rows of ``key`` at ``version`` (latest when None) as a DataFrame, and the snapshot that was read."""
    from pyspark.sql.types import StructType

    snap = store.snapshot(key, version)
    schema = StructType.fromJson(json.loads(snap.schema_json))
    if not snap.file_uris:
        return spark.createDataFrame([], schema), snap
    df = (
        spark.read.schema(schema)
        .option("basePath", _spark_path(snap.table_uri))
        .parquet(*[_spark_path(u) for u in snap.file_uris])
    )
    return df.select(*schema.fieldNames()), snap


def new_write_id() -> str:
    """Names one write's files (``part-<write_id>-…``) and its lease."""
    return uuid.uuid4().hex[:12]


def write_parquet_files(
    df: DataFrame, table_uri: str, partition_by: Sequence[str] = (), write_id: str | None = None
) -> list[DataFile]:
    """Have the tasks write ``df`` as Parquet files inside ``table_uri``; returns the files, not yet committed."""
    missing = [c for c in partition_by if c not in df.columns]
    if missing:
        raise ValueError(f"partition columns {missing} are not in the DataFrame ({df.columns})")
    writer = ParquetFileWriter(
        table_uri=table_uri, partition_by=tuple(partition_by), write_id=write_id or new_write_id()
    )
    return [
        DataFile(
            path=r["path"],
            size=r["size"],
            num_records=r["num_records"],
            partition_values=json.loads(r["partition_values"]),
            modification_time_ms=r["modification_time_ms"],
        )
        for r in df.mapInArrow(writer, FILE_REPORT_DDL).collect()
    ]


def write_to_delta(
    df: DataFrame,
    store: DeltaStore,
    key: str,
    *,
    commit: CommitInfo,
    partition_by: Sequence[str] = (),
    replace_partitions: Mapping[str, str] | None = None,
    replace_all: bool = False,
    app_id: str | None = None,
    app_version: int = 0,
) -> int:
    """Write ``df`` into the Delta table ``key`` as one commit (``replace_all``: the new version holds only these
    rows); returns the version that holds it."""
    from pyspark.sql.pandas.types import to_arrow_schema

    if store.already_committed(key, app_id, app_version):
        return store.version(key)  # this write already landed: do not write its files again
    write_id = new_write_id()
    with store.write_lease(key, write_id, run_id=commit.run_id):
        files = write_parquet_files(df, store.table_uri(key), partition_by, write_id)
        return store.commit_files(
            key,
            files,
            schema=to_arrow_schema(df.schema, timezone="UTC"),  # sessions run in UTC (see session.py)
            commit=commit,
            partition_by=partition_by,
            replace_partitions=replace_partitions,
            replace_all=replace_all,
            app_id=app_id,
            app_version=app_version,
        )


def write_unique_to_delta(
    df: DataFrame,
    store: DeltaStore,
    key: str,
    *,
    commit: CommitInfo,
    unique_on: Sequence[str],
    partition_by: Sequence[str] = (),
    checked_version: int | None = None,
    key_filters: Sequence[tuple[str, str, object]] | None = None,
    app_id: str | None = None,
    app_version: int = 0,
) -> UniqueCommit:
    """Append ``df`` as one commit, without the rows whose ``unique_on`` key the table already holds.

    ``checked_version``: the table version ``df`` was already computed against (e.g. an anti-join), so the keys are
    only re-read when the table has moved since. See :meth:`cpt.delta_store.DeltaStore.commit_unique_files`.
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    if store.already_committed(key, app_id, app_version):
        return UniqueCommit(store.version(key), False, 0, 0, 0)  # this write already landed
    write_id = new_write_id()
    with store.write_lease(key, write_id, run_id=commit.run_id):
        files = write_parquet_files(df, store.table_uri(key), partition_by, write_id)
        return store.commit_unique_files(
            key,
            files,
            schema=to_arrow_schema(df.schema, timezone="UTC"),
            commit=commit,
            unique_on=unique_on,
            partition_by=partition_by,
            checked_version=checked_version,
            key_filters=key_filters,
            app_id=app_id,
            app_version=app_version,
        )
