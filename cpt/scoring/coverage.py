"""Checks on a scores table: coverage of the documents it should cover, and sane values."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from cpt.scoring.windows import WindowPolicy, chunk_documents


def unscored_documents_with_chunks(
    tokenizer, documents: pa.Table, scored_doc_ids: set[str], policy: WindowPolicy, tokenizer_hash: str
) -> list[str]:
    """Ids of ``documents`` (doc_id, text) that have no score but would have at least one chunk.

    A document without a score is fine only when it is too short to make a chunk; the few unscored ones are
    re-tokenized to tell which.
    """
    ids = documents["doc_id"].to_pylist()
    unscored = [i for i, doc_id in enumerate(ids) if doc_id not in scored_doc_ids]
    texts = documents["text"].to_pylist()
    chunks = chunk_documents(
        tokenizer, [ids[i] for i in unscored], [texts[i] for i in unscored], policy, tokenizer_hash
    )
    return sorted({c.doc_id for c in chunks})


def value_problems(scores: pa.Table, columns: Sequence[str] = ("sum_nll", "ppl")) -> dict[str, int]:
    """Counts of non-finite values per column and of perplexities below 1 (impossible for a normalised model)."""
    problems = {f"non_finite_{c}": len(scores) - int(pc.sum(pc.is_finite(scores[c])).as_py() or 0) for c in columns}
    problems["ppl_below_1"] = int(pc.sum(pc.less(scores["ppl"], 1.0)).as_py() or 0)
    return problems
