"""Documents → chunks: consecutive, non-overlapping windows of at most ``length`` tokens, each scored on its own."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cpt.hashing import config_hash


@dataclass(frozen=True)
class WindowPolicy:
    """How a document is cut into chunks. Recorded with every score: it changes the numbers."""

    length: int = 256  # tokens per window, the BOS token included when add_bos
    min_tokens: int = 32  # a trailing window with fewer predicted tokens is dropped
    add_bos: bool = True  # prepend BOS so that every content token is predicted (from BOS for the first one)

    def __post_init__(self) -> None:
        if self.length < 2 or not 1 <= self.min_tokens <= self.length:
            raise ValueError(f"invalid window policy {self}")

    @property
    def content_tokens(self) -> int:
        return self.length - 1 if self.add_bos else self.length

    @property
    def policy_hash(self) -> str:
        return config_hash(self)


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    chunk_index: int
    input_ids: tuple[int, ...]  # what the model sees (BOS first when the policy adds it)

    @property
    def n_predicted(self) -> int:
        return len(self.input_ids) - 1


def chunk_id(doc_id: str, chunk_index: int, policy_hash: str, tokenizer_hash: str) -> str:
    key = f"{doc_id}\x00{chunk_index}\x00{policy_hash}\x00{tokenizer_hash}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def split_windows(
    doc_id: str, token_ids: Sequence[int], policy: WindowPolicy, *, bos_id: int | None, tokenizer_hash: str
) -> list[Chunk]:
    """The chunks of one tokenized document (without special tokens), in order."""
    if policy.add_bos and bos_id is None:
        raise ValueError("the window policy adds BOS but the tokenizer has no BOS token")
    step = policy.content_tokens
    prefix = (bos_id,) if policy.add_bos else ()
    chunks = []
    for index, start in enumerate(range(0, len(token_ids), step)):
        ids = prefix + tuple(token_ids[start : start + step])
        if len(ids) - 1 < policy.min_tokens:
            break  # only the trailing window can be short
        chunks.append(Chunk(chunk_id(doc_id, index, policy.policy_hash, tokenizer_hash), doc_id, index, ids))
    return chunks


def chunk_documents(
    tokenizer, doc_ids: Sequence[str], texts: Sequence[str], policy: WindowPolicy, tokenizer_hash: str
) -> list[Chunk]:
    """Tokenize documents (no special tokens; BOS per the policy) and cut each into windows."""
    if not texts:
        return []
    token_ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    chunks: list[Chunk] = []
    for doc_id, ids in zip(doc_ids, token_ids, strict=True):
        chunks.extend(split_windows(doc_id, ids, policy, bos_id=tokenizer.bos_token_id, tokenizer_hash=tokenizer_hash))
    return chunks
