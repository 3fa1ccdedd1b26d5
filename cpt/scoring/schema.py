"""The data contract of ``scores/chunk_perplexity`` (partitioned by ``source``)."""

from __future__ import annotations

import pyarrow as pa

SCORES_SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.string()),  # hash of (doc_id, chunk_index, policy, tokenizer)
        pa.field("doc_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("role", pa.string()),
        pa.field("split", pa.string()),
        pa.field("chunk_index", pa.int64()),
        pa.field("n_tokens", pa.int64()),  # predicted tokens
        pa.field("sum_nll", pa.float64()),  # nats
        pa.field("ppl", pa.float64()),  # exp(sum_nll / n_tokens)
        pa.field("model_revision", pa.string()),
        pa.field("policy_hash", pa.string()),
        pa.field("window_length", pa.int64()),
        pa.field("score_run_id", pa.string()),
        pa.field("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)
