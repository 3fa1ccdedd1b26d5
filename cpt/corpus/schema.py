"""The data contracts of the corpus tables (Arrow schemas, partitioned by ``source``)."""

from __future__ import annotations

import pyarrow as pa

PARTITION_COLUMN = "source"

DOCUMENTS_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),  # SHA-256 of the normalised text
        pa.field("source", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),  # domain | general
        pa.field("split", pa.string(), nullable=False),  # train | eval
        pa.field("group_id", pa.string(), nullable=False),  # the unit the split is drawn on
        pa.field("text", pa.string(), nullable=False),  # NFC-normalised, newlines \n, stripped
        pa.field("n_chars", pa.int64(), nullable=False),
        pa.field("n_bytes", pa.int64(), nullable=False),
        pa.field("n_words", pa.int64(), nullable=False),
        pa.field("n_lines", pa.int64(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_position", pa.int64(), nullable=False),  # line (JSONL), row (Parquet) or file index
        pa.field("source_record_id", pa.string(), nullable=True),  # the source's own id, when it has one
        pa.field("ingest_run_id", pa.string(), nullable=False),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_position", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("raw", pa.binary(), nullable=True),  # the offending bytes (first RAW_LIMIT of them)
        pa.field("raw_truncated", pa.bool_(), nullable=False),
        pa.field("ingest_run_id", pa.string(), nullable=False),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

RAW_LIMIT = 64 * 1024
