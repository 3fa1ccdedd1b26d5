"""The dataset stage on Spark: the leak-free candidate pools, the dataset table's write, and the export shards.

- :func:`leak_free_train_chunks`: the train chunks of both roles under one scoring, minus every chunk of an eval
  document, of a document whose group holds an eval document, or of a document the snapshot does not hold (groups
  are compared across sources: a benchmark's test split shipped as another source with the same group ids must not
  leak). A join of the pinned scores and documents snapshots; the driver gets the (small) candidate columns back.
- :func:`write_dataset`: the planned rows as one Delta commit that replaces the table (version N = build N).
- :func:`export_dataset`: the rows of a dataset version joined with their documents' text, re-chunked on the
  workers (a chunk id fixes its document, index, window policy and tokenizer, so a rebuilt chunk is the one chosen or
  an error), written as token-id and text shards into a temporary folder; one report row per file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from cpt.corpus.ingest import EVAL, TRAIN
from cpt.dataset.exports import ExportedChunk, write_shard
from cpt.delta_store import CommitInfo, DeltaStore
from cpt.scoring.windows import WindowPolicy
from spark_jobs.delta_bridge import read_snapshot, write_to_delta
from spark_jobs.scoring import DOCUMENTS_TABLE, SCORES_TABLE

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SELECTION_TABLE = "dataset/domain_selection"
DATASET_TABLE = "dataset/cpt_mixture"
CANDIDATE_COLUMNS = ("chunk_id", "doc_id", "source", "role", "n_tokens", "ppl")
EXPORT_REPORT_DDL = "path string, kind string, shard long, rows long, tokens long, bytes long, sha256 string"


@dataclass(frozen=True)
class CandidatePools:
    chunks: pa.Table  # CANDIDATE_COLUMNS + group_id, sorted by chunk_id
    left_out: dict[str, int]  # role → train chunks left out: their document or its group is in eval (or unknown)


def leak_free_train_chunks(
    spark: SparkSession,
    store: DeltaStore,
    *,
    scores_version: int,
    documents_version: int,
    model_revision: str,
    policy_hash: str,
) -> CandidatePools:
    from pyspark.sql import functions as F

    scores, _ = read_snapshot(spark, store, SCORES_TABLE, scores_version)
    docs, _ = read_snapshot(spark, store, DOCUMENTS_TABLE, documents_version)
    docs = docs.select("doc_id", "group_id", "split")
    eval_docs = docs.filter(F.col("split") == EVAL)
    train = scores.filter(
        (F.col("split") == TRAIN) & (F.col("model_revision") == model_revision) & (F.col("policy_hash") == policy_hash)
    ).select(*CANDIDATE_COLUMNS)
    train = train.join(docs.select("doc_id", "group_id"), "doc_id", "left")
    # a score whose document is not in the pinned documents cannot be checked for leakage: left out, and counted
    kept = (
        train.filter(F.col("group_id").isNotNull())
        .join(eval_docs.select("doc_id"), "doc_id", "left_anti")
        .join(eval_docs.select("group_id").distinct(), "group_id", "left_anti")
    )
    counts = {r["role"]: r["count"] for r in train.groupBy("role").count().collect()}
    table = kept.select(*CANDIDATE_COLUMNS, "group_id").toArrow().sort_by("chunk_id")
    kept_counts = {role: 0 for role in counts} | _count_by(table, "role")
    return CandidatePools(table, {role: counts[role] - kept_counts[role] for role in counts})


def _count_by(table: pa.Table, column: str) -> dict[str, int]:
    values = table[column].to_pylist()
    return {v: values.count(v) for v in set(values)}


def write_dataset(spark: SparkSession, store: DeltaStore, rows: pa.Table, commit: CommitInfo) -> int:
    """The rows as the new version of the dataset table, replacing what it held; returns that version."""
    df = spark.createDataFrame(rows).repartition(max(1, math.ceil(rows.num_rows / 500_000)))
    return write_to_delta(df, store, DATASET_TABLE, commit=commit, replace_all=True)


@dataclass(frozen=True)
class ExportChunks:
    """A ``mapInArrow`` function: rows (position, chunk_id, doc_id, role, text, shard), every row of a shard in one
    task → the shard's files written into ``folder``, one report row per file."""

    model_path: str
    model_revision: str
    policy: WindowPolicy
    folder: str  # URI of the export's temporary folder

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.fs as pafs

        from cpt.models.base_model import load_tokenizer
        from cpt.scoring.windows import chunk_documents

        tokenizer = load_tokenizer(self.model_path)
        fs, root = pafs.FileSystem.from_uri(self.folder)
        by_doc: dict[str, dict] = {}
        shards: dict[int, list[ExportedChunk]] = {}
        for batch in batches:
            for row in batch.to_pylist():
                doc = row["doc_id"]
                if doc not in by_doc:
                    chunks = chunk_documents(tokenizer, [doc], [row["text"]], self.policy, self.model_revision)
                    by_doc[doc] = {c.chunk_id: c for c in chunks}
                chunk = by_doc[doc].get(row["chunk_id"])
                if chunk is None:
                    raise ValueError(
                        f"chunk {row['chunk_id']} does not come out of re-chunking document {doc} under "
                        f"{self.policy} with tokenizer {self.model_revision}"
                    )
                content = chunk.input_ids[1:] if self.policy.add_bos else chunk.input_ids
                shards.setdefault(row["shard"], []).append(
                    ExportedChunk(
                        row["position"], chunk.chunk_id, row["role"], chunk.input_ids, tokenizer.decode(content)
                    )
                )
        for shard, chunks in sorted(shards.items()):
            yield pa.RecordBatch.from_pylist(write_shard(fs, root, shard, chunks))


def export_dataset(
    spark: SparkSession,
    store: DeltaStore,
    *,
    dataset_version: int,
    documents_version: int,
    model_path: str,
    model_revision: str,
    policy: WindowPolicy,
    folder: str,
    shard_chunks: int,
) -> list[dict]:
    """Write the shards of one dataset version into ``folder``; the file reports, sorted by path. Every row must come
    out in exactly one shard, or this raises."""
    from pyspark.sql import functions as F

    if shard_chunks <= 0:
        raise ValueError(f"shard_chunks must be positive, got {shard_chunks}")
    rows, _ = read_snapshot(spark, store, DATASET_TABLE, dataset_version)
    docs, _ = read_snapshot(spark, store, DOCUMENTS_TABLE, documents_version)
    rows = rows.select("position", "chunk_id", "doc_id", "role")
    n_rows = rows.count()
    joined = rows.join(docs.select("doc_id", "text"), "doc_id", "left").withColumn(
        "shard", F.floor(F.col("position") / F.lit(shard_chunks)).cast("long")
    )
    missing = joined.filter(F.col("text").isNull()).count()
    if missing:
        raise ValueError(f"{missing} dataset rows have no document in corpus/documents v{documents_version}")
    n_shards = max(1, math.ceil(n_rows / shard_chunks))
    writer = ExportChunks(model_path, model_revision, policy, folder)
    reports = [
        r.asDict() for r in joined.repartition(n_shards, "shard").mapInArrow(writer, EXPORT_REPORT_DDL).collect()
    ]
    exported = sum(r["rows"] for r in reports if r["kind"] == "tokens")
    if exported != n_rows:
        raise ValueError(f"{exported} chunks were exported of the {n_rows} rows of dataset v{dataset_version}")
    return sorted(reports, key=lambda r: r["path"])
