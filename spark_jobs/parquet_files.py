"""Task side of the Spark → Delta bridge: Spark tasks write their rows as Hive-partitioned Parquet files inside the
table folder and report each file, so the driver can commit them all in one Delta transaction.

Deliberately free of ``deltalake``: this module is unpickled in every Python worker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"

# One row per written file; what the driver needs for a Delta add action.
FILE_REPORT_DDL = "path string, size long, num_records long, partition_values string, modification_time_ms long"


def partition_dir(values: Mapping[str, str | None]) -> str:
    """Hive-style folder of a partition: ``source=a%2Fb/lang=en``.

    Non-ASCII values are refused: Spark decodes ``%XX`` escapes byte by byte, so they would not read back intact.
    """
    for col, val in values.items():
        if val is not None and not val.isascii():
            raise ValueError(f"partition value {val!r} of {col!r} is not ASCII; Spark would not read it back intact")
    return "/".join(f"{col}={HIVE_NULL if val is None else quote(val, safe='')}" for col, val in values.items())


@dataclass(frozen=True)
class ParquetFileWriter:
    """A ``mapInArrow`` function: writes the task's rows, yields one report row per file written."""

    table_uri: str
    partition_by: Sequence[str]
    write_id: str

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = list(batches)
        if not batches or sum(b.num_rows for b in batches) == 0:
            return
        table = pa.Table.from_batches(batches)
        fs, root = pafs.FileSystem.from_uri(self.table_uri)
        reports = [self._write_group(fs, root, values, rows) for values, rows in _split_by(table, self.partition_by)]
        yield pa.RecordBatch.from_pylist(reports)

    def _write_group(self, fs: pafs.FileSystem, root: str, values: dict[str, str | None], rows: pa.Table) -> dict:
        folder = partition_dir(values)
        name = f"part-{self.write_id}-{uuid.uuid4().hex}.snappy.parquet"
        rel_path = f"{folder}/{name}" if folder else name
        full = f"{root}/{rel_path}"
        fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
        pq.write_table(rows.drop_columns(list(self.partition_by)), full, filesystem=fs, compression="snappy")
        info = fs.get_file_info(full)
        return {
            "path": rel_path,
            "size": info.size,
            "num_records": rows.num_rows,
            "partition_values": json.dumps(values),
            "modification_time_ms": int(info.mtime.timestamp() * 1000) if info.mtime else int(time.time() * 1000),
        }


def _split_by(table: pa.Table, columns: Sequence[str]) -> Iterator[tuple[dict[str, str | None], pa.Table]]:
    if not columns:
        yield {}, table
        return
    keys = table.select(list(columns)).group_by(list(columns)).aggregate([]).to_pylist()
    for key in keys:
        mask = None
        for col, val in key.items():
            if val is None:
                cond = pc.is_null(table[col])
            elif isinstance(val, float) and val != val:  # NaN equals nothing, itself included
                cond = pc.is_nan(table[col])
            else:
                cond = pc.equal(table[col], val)
            mask = cond if mask is None else pc.and_(mask, cond)
        values = {col: None if key[col] is None else str(key[col]) for col in columns}
        yield values, table.filter(mask)
