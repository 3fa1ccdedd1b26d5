"""Ingestion of one source: records → normalised documents with content-hash ids, exact duplicates dropped and
counted, a train/eval split drawn by a stable hash of the group; malformed records → rejects with a reason. A source
with ``sample_fraction`` below 1 keeps the groups a second stable hash selects; the others are counted as sampled out.

A source that yields no document and no reject (an empty file, a gzip of nothing, blank lines only) raises
:class:`EmptySourceError` unless its spec sets ``allow_empty``: an empty input is far more often a failed export or
copy than an intent to delete a partition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from cpt.corpus.readers import Record, Reject, RejectReason, read_source
from cpt.corpus.schema import DOCUMENTS_SCHEMA, RAW_LIMIT, REJECTS_SCHEMA
from cpt.corpus.sources import EmptySourceError, SourceSpec, SplitPolicy
from cpt.hashing import content_id, unit_interval

SPLIT_SALT = "cptdata-split-v1"  # changing it reshuffles every split: bump only with a new split policy version
SAMPLE_SALT = "cptdata-sample-v1"  # independent of the split's, so a sample keeps the source's split proportions
TRAIN, EVAL = "train", "eval"


def normalise_text(text: str) -> str:
    """NFC normalisation, ``\\r\\n``/``\\r`` → ``\\n``, surrounding whitespace stripped."""
    return unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").strip()


def assign_split(group: str, spec: SourceSpec) -> str:
    """The split of every record of ``group``: fixed by the source's policy, or drawn by a stable hash."""
    if spec.split is SplitPolicy.TRAIN:
        return TRAIN
    if spec.split is SplitPolicy.EVAL:
        return EVAL
    return EVAL if unit_interval(group, SPLIT_SALT) < spec.eval_fraction else TRAIN


def in_sample(group: str, spec: SourceSpec) -> bool:
    """Whether the records of ``group`` are ingested under the source's ``sample_fraction``."""
    return spec.sample_fraction >= 1.0 or unit_interval(group, SAMPLE_SALT) < spec.sample_fraction


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    group_id: str
    split: str
    source_file: str
    source_position: int
    source_record_id: str | None


def to_document(record: Record, spec: SourceSpec) -> Document | Reject:
    """Validate and normalise one record; a reject names the field and what was wrong with it."""

    def reject(reason: RejectReason, detail: str) -> Reject:
        return Reject(record.file, record.position, reason, detail, record.raw)

    if spec.text_field not in record.fields or record.fields[spec.text_field] is None:
        return reject(RejectReason.MISSING_TEXT, f"no {spec.text_field!r} field")
    raw_text = record.fields[spec.text_field]
    if not isinstance(raw_text, str):
        return reject(RejectReason.WRONG_TYPE, f"{spec.text_field!r} is a {type(raw_text).__name__}, not a string")
    text = normalise_text(raw_text)
    if not text:
        return reject(RejectReason.EMPTY_TEXT, f"{spec.text_field!r} is empty after normalisation")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON can escape lone surrogates that UTF-8 cannot hold
        return reject(RejectReason.INVALID_UTF8, f"{spec.text_field!r}: {exc}")
    record_id = _scalar_field(record.fields, spec.id_field)
    if isinstance(record_id, Reject):
        return reject(RejectReason.WRONG_TYPE, f"{spec.id_field!r} must be a string or integer")
    doc_id = content_id(text)
    if spec.group_field is None:
        group = record_id if record_id is not None else doc_id
    else:
        group = _scalar_field(record.fields, spec.group_field)
        if group is None:
            return reject(RejectReason.MISSING_GROUP, f"no {spec.group_field!r} field")
        if isinstance(group, Reject):
            return reject(RejectReason.WRONG_TYPE, f"{spec.group_field!r} must be a string or integer")
    return Document(doc_id, text, group, assign_split(group, spec), record.file, record.position, record_id)


def _scalar_field(fields: Mapping[str, object], name: str | None) -> str | None | Reject:
    value = fields.get(name) if name else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return Reject("", 0, RejectReason.WRONG_TYPE, "", None)
    return str(value)


@dataclass(frozen=True)
class IngestStats:
    files: tuple[str, ...]
    records_read: int  # every record seen: documents + both kinds of duplicates + rejects + sampled out
    documents: int
    duplicates_dropped: int  # exact duplicates of an earlier record of this source
    cross_source_duplicates: int  # texts another source already holds (each text lives in one source only)
    rejects_by_reason: Mapping[str, int]
    documents_by_split: Mapping[str, int]
    sampled_out: int = 0  # valid records of groups outside the source's sample_fraction

    @property
    def rejects(self) -> int:
        return sum(self.rejects_by_reason.values())

    @property
    def reject_rate(self) -> float:
        return self.rejects / self.records_read if self.records_read else 0.0


@dataclass(frozen=True)
class IngestResult:
    documents: pa.Table  # DOCUMENTS_SCHEMA
    rejects: pa.Table  # REJECTS_SCHEMA
    stats: IngestStats


def ingest_source(
    spec: SourceSpec, *, run_id: str, ingested_at: datetime, other_sources_ids: AbstractSet[str] = frozenset()
) -> IngestResult:
    """Read, validate, normalise, deduplicate and split every record of one source.

    ``other_sources_ids`` are the document ids other sources already hold: such texts are dropped and counted, so a
    document id is unique in the whole table and one text can never be training data in one source and evaluation
    data in another.
    """
    docs: dict[str, Document] = {}
    rejects: list[Reject] = []
    files: set[str] = set()
    seen = duplicates = elsewhere = sampled_out = 0
    for item in read_source(spec):
        seen += 1
        files.add(item.file)
        result = to_document(item, spec) if isinstance(item, Record) else item
        if isinstance(result, Reject):
            rejects.append(result)  # quarantined whether or not its group is in the sample
        elif not in_sample(result.group_id, spec):
            sampled_out += 1
        elif result.doc_id in docs:
            duplicates += 1  # an exact duplicate of an earlier record: the first occurrence is kept
        elif result.doc_id in other_sources_ids:
            elsewhere += 1
        else:
            docs[result.doc_id] = result
    stats = IngestStats(
        files=tuple(sorted(files)),
        records_read=seen,
        documents=len(docs),
        duplicates_dropped=duplicates,
        cross_source_duplicates=elsewhere,
        rejects_by_reason=dict(sorted(Counter(r.reason.value for r in rejects).items())),
        documents_by_split=dict(sorted(Counter(d.split for d in docs.values()).items())),
        sampled_out=sampled_out,
    )
    if not docs and not rejects:
        require_documents(spec, stats)
    return IngestResult(
        documents=_documents_table(docs.values(), spec, run_id, ingested_at),
        rejects=_rejects_table(rejects, spec, run_id, ingested_at),
        stats=stats,
    )


def require_documents(spec: SourceSpec, stats: IngestStats) -> None:
    """Raise :class:`EmptySourceError` (one line, naming the source) when ``stats`` holds no document and the source
    does not allow being empty."""
    if stats.documents or spec.allow_empty:
        return
    if stats.records_read == 0:
        what = f"no records in {spec.path} (an empty file, a gzip of nothing or blank lines only)"
    elif stats.cross_source_duplicates:
        what = f"all {stats.cross_source_duplicates} of its texts are already held by other sources"
        what += f" ({stats.rejects} other records were rejected)" if stats.rejects else ""
    elif stats.sampled_out:
        what = f"its sample_fraction {spec.sample_fraction} keeps none of its {stats.sampled_out} valid records' groups"
        what += " (raise it)"
    else:
        return  # every record was rejected: the reject-rate gate fails it, and its rejects are recorded
    raise EmptySourceError(
        f"source {spec.name!r}: {what}; its partition keeps its last good version. To really empty it, set "
        "allow_empty: true on the source"
    )


def without_texts_held_elsewhere(result: IngestResult, held_elsewhere: AbstractSet[str]) -> IngestResult:
    """``result`` less the documents whose ids other sources hold, with the stats counting them as cross-source
    duplicates: what the partition may hold against a given version of the table."""
    if not held_elsewhere or result.documents.num_rows == 0:
        return result
    taken = pc.is_in(result.documents["doc_id"], value_set=pa.array(sorted(held_elsewhere), pa.string()))
    dropped = int(pc.sum(taken).as_py() or 0)
    if dropped == 0:
        return result
    documents = result.documents.filter(pc.invert(taken))
    splits = Counter(documents["split"].to_pylist())
    stats = dataclasses.replace(
        result.stats,
        documents=documents.num_rows,
        cross_source_duplicates=result.stats.cross_source_duplicates + dropped,
        documents_by_split=dict(sorted(splits.items())),
    )
    return IngestResult(documents=documents, rejects=result.rejects, stats=stats)


DATA_VERSION_COLUMNS = ("doc_id", "role", "split", "group_id")


def documents_data_version(documents: pa.Table) -> str:
    """A content version of a documents partition: a hash of its sorted (doc_id, role, split, group_id) rows, i.e. of
    the texts and how they are used, independent of run ids, times and row order. Equal partitions → equal versions."""
    return _table_digest(documents, DATA_VERSION_COLUMNS, sort_by="doc_id")


def rejects_data_version(rejects: pa.Table) -> str:
    """A content version of a rejects partition (file, position, reason, raw bytes), independent of run ids and
    times."""
    return _table_digest(rejects, ("source_file", "source_position", "reason", "raw"), sort_by=None)


def _table_digest(table: pa.Table, columns: Iterable[str], sort_by: str | None) -> str:
    columns = list(columns)
    rows = table.select(columns)
    if sort_by is not None and rows.num_rows:
        rows = rows.sort_by(sort_by)
    digest = hashlib.sha256(f"cptdata-data-v1\n{','.join(columns)}\n".encode())
    for row in zip(*(rows[c].to_pylist() for c in columns), strict=True):
        for value in row:
            if value is None:
                digest.update(b"\xff" * 8)
                continue
            value = value if isinstance(value, bytes) else str(value).encode()
            digest.update(len(value).to_bytes(8, "little") + value)
    return digest.hexdigest()[:32]


def _documents_table(docs: Iterable[Document], spec: SourceSpec, run_id: str, at: datetime) -> pa.Table:
    """Built column by column, with the counts computed by Arrow kernels (a dict per row is ~4x slower)."""
    docs = list(docs)
    text = pa.array([d.text for d in docs], pa.string())
    n = len(docs)
    columns = {
        "doc_id": pa.array([d.doc_id for d in docs], pa.string()),
        "source": pa.array([spec.name] * n, pa.string()),
        "role": pa.array([spec.role.value] * n, pa.string()),
        "split": pa.array([d.split for d in docs], pa.string()),
        "group_id": pa.array([d.group_id for d in docs], pa.string()),
        "text": text,
        "n_chars": pc.utf8_length(text),
        "n_bytes": pc.binary_length(text),
        "n_words": pc.list_value_length(pc.utf8_split_whitespace(text)),
        "n_lines": pc.add(pc.count_substring(text, "\n"), 1),
        "source_file": pa.array([d.source_file for d in docs], pa.string()),
        "source_position": pa.array([d.source_position for d in docs], pa.int64()),
        "source_record_id": pa.array([d.source_record_id for d in docs], pa.string()),
        "ingest_run_id": pa.array([run_id] * n, pa.string()),
        "ingested_at": pa.array([at] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in DOCUMENTS_SCHEMA], schema=DOCUMENTS_SCHEMA)


def _rejects_table(rejects: Iterable[Reject], spec: SourceSpec, run_id: str, at: datetime) -> pa.Table:
    rows = [
        {
            "source": spec.name,
            "source_file": r.file,
            "source_position": r.position,
            "reason": r.reason.value,
            "detail": r.detail,
            "raw": r.raw[:RAW_LIMIT] if r.raw is not None else None,
            "raw_truncated": r.raw is not None and len(r.raw) > RAW_LIMIT,
            "ingest_run_id": run_id,
            "ingested_at": at,
        }
        for r in rejects
    ]
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)
