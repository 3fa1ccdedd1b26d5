"""What a pilot run trains and evaluates on: chunk ids chosen from the scores table, turned back into token ids.

Scores hold no token ids, only chunk ids; a chunk is rebuilt by re-tokenizing its document under the window policy
it was scored with. The chunk id hashes (document, index, policy, tokenizer), so a rebuilt chunk either has the id
that was chosen or the policy/tokenizer differ, and that is an error, never a silent substitution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cpt.scoring.windows import Chunk, WindowPolicy, chunk_documents


def rebuild_chunks(
    tokenizer,
    wanted: Sequence[str],
    doc_of: Mapping[str, str],
    text_of: Mapping[str, str],
    policy: WindowPolicy,
    tokenizer_hash: str,
) -> list[Chunk]:
    """The chunks with ids ``wanted`` (in that order), re-cut from their documents' text."""
    doc_ids = sorted({doc_of[c] for c in wanted})
    missing_docs = [d for d in doc_ids if d not in text_of]
    if missing_docs:
        raise ValueError(
            f"{len(missing_docs)} documents of chosen chunks are not in corpus/documents: {missing_docs[:3]}"
        )
    by_id = {
        c.chunk_id: c
        for c in chunk_documents(tokenizer, doc_ids, [text_of[d] for d in doc_ids], policy, tokenizer_hash)
    }
    missing = [c for c in wanted if c not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} chosen chunks do not come out of re-chunking their documents under {policy} "
            f"(e.g. {missing[:3]}): the window policy or tokenizer differs from the one they were scored with"
        )
    return [by_id[c] for c in wanted]
