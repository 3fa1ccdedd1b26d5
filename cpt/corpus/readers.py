"""Readers: the files of a source → records, or rejects that say what was wrong and keep the bytes.

A reader never raises for a bad record; it raises :class:`SourceUnreadableError` only when a file cannot be read at
all (missing, not gzip, not Parquet, no text column).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cpt.corpus.sources import SourceFormat, SourceSpec, SourceUnreadableError, source_files

GZIP_MAGIC = b"\x1f\x8b"
READ_BLOCK = 1 << 16


class RejectReason(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_TEXT = "missing_text"
    EMPTY_TEXT = "empty_text"
    WRONG_TYPE = "wrong_type"
    MISSING_GROUP = "missing_group"
    TRUNCATED_GZIP = "truncated_gzip"
    CORRUPT_GZIP = "corrupt_gzip"


@dataclass(frozen=True)
class Record:
    file: str
    position: int  # 1-based line for JSON Lines, 0-based row for Parquet, 0-based file index for text folders
    fields: dict[str, Any]
    raw: bytes


@dataclass(frozen=True)
class Reject:
    file: str
    position: int
    reason: RejectReason
    detail: str
    raw: bytes | None


def read_source(spec: SourceSpec) -> Iterator[Record | Reject]:
    """Every record of every file of ``spec``, in file order then position order."""
    files = source_files(spec)
    if spec.format is SourceFormat.TEXT_DIR:
        yield from _read_text_dir(spec, files)
        return
    for path in files:
        try:
            if spec.format is SourceFormat.PARQUET:
                yield from _read_parquet(spec, path)
            else:
                yield from _read_jsonl(path, gz=spec.format is SourceFormat.JSONL_GZ)
        except OSError as exc:
            raise SourceUnreadableError(f"source {spec.name!r}: cannot read {path}: {exc}") from exc


# ---- JSON Lines ------------------------------------------------------------------------------------------------
def _read_jsonl(path: Path, *, gz: bool) -> Iterator[Record | Reject]:
    lines = _gzip_lines(path) if gz else _plain_lines(path)
    for position, line in lines:
        if isinstance(line, Reject):
            yield line
            continue
        yield _parse_json_line(str(path), position, line)


def _parse_json_line(file: str, position: int, line: bytes) -> Record | Reject:
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(file, position, RejectReason.INVALID_UTF8, str(exc), line)
    try:
        value = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return Reject(file, position, RejectReason.INVALID_JSON, str(exc), line)
    if not isinstance(value, dict):
        return Reject(file, position, RejectReason.NOT_AN_OBJECT, f"a JSON {type(value).__name__}", line)
    return Record(file, position, value, line)


def _plain_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for position, line in enumerate(fh, start=1):
            if position == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if line.strip():
                yield position, line.rstrip(b"\r\n")


def _gzip_lines(path: Path) -> Iterator[tuple[int, bytes | Reject]]:
    """Lines of a (possibly multi-member, zero-padded) gzip file; a truncated or corrupt tail becomes one reject that
    keeps the bytes of the partial line, while every line decoded before the damage is still yielded.

    Decompressing by hand rather than with ``gzip.open`` keeps what a damaged stream still holds, instead of losing
    it inside an ``EOFError``.
    """
    with path.open("rb") as fh:
        if fh.read(2) != GZIP_MAGIC:
            raise SourceUnreadableError(f"{path} is not gzip data (declared format jsonl.gz)")
        fh.seek(0)
        stream = _GzipStream()
        pending = b""
        position = 0
        for data in stream.decompress(fh):
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                position += 1
                if position == 1:
                    line = line.removeprefix(b"\xef\xbb\xbf")
                if line.strip():
                    yield position, line.rstrip(b"\r")
        if stream.damage is not None:
            reason, detail = stream.damage
            detail = f"{detail} (after {position} complete lines)"
            yield position + 1, Reject(str(path), position + 1, reason, detail, pending or None)
        elif pending.strip():
            yield position + 1, pending.rstrip(b"\r")


class _GzipStream:
    """Decompresses consecutive gzip members; afterwards ``damage`` says why the stream ended early, if it did."""

    SALVAGE_STEP = 256  # after an error, re-feed the block in small pieces to recover what precedes the damage

    def __init__(self) -> None:
        self.damage: tuple[RejectReason, str] | None = None

    def decompress(self, fh) -> Iterator[bytes]:
        decomp = zlib.decompressobj(wbits=31)
        buf = b""
        while True:
            if not buf:
                buf = fh.read(READ_BLOCK)
                if not buf:
                    break
            if decomp.eof:  # the previous member is complete: what follows is padding or the next member
                buf = buf.lstrip(b"\0")
                if not buf:
                    continue
                decomp = zlib.decompressobj(wbits=31)
            before = decomp.copy()
            try:
                yield decomp.decompress(buf)
            except zlib.error as exc:
                yield from self._salvage(before, buf)
                self.damage = (RejectReason.CORRUPT_GZIP, f"corrupt gzip data: {exc}")
                return
            buf = decomp.unused_data if decomp.eof else b""
        if not decomp.eof:
            self.damage = (RejectReason.TRUNCATED_GZIP, "stream ends without its gzip trailer")

    def _salvage(self, decomp, buf: bytes) -> Iterator[bytes]:
        for start in range(0, len(buf), self.SALVAGE_STEP):
            try:
                yield decomp.decompress(buf[start : start + self.SALVAGE_STEP])
            except zlib.error:
                return


# ---- Parquet ---------------------------------------------------------------------------------------------------
def _read_parquet(spec: SourceSpec, path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid for a file that is not Parquet
        raise SourceUnreadableError(f"source {spec.name!r}: {path} is not a readable Parquet file: {exc}") from exc
    if spec.text_field not in pf.schema_arrow.names:
        raise SourceUnreadableError(
            f"source {spec.name!r}: {path} has no column {spec.text_field!r} (columns: {pf.schema_arrow.names}); "
            "set the source's text_field"
        )
    position = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield Record(str(path), position, row, json.dumps(row, default=str, ensure_ascii=False).encode())
            position += 1


# ---- a folder of text files ------------------------------------------------------------------------------------
def _read_text_dir(spec: SourceSpec, files: list[Path]) -> Iterator[Record | Reject]:
    root = Path(spec.path)
    id_field = spec.id_field or "id"
    for position, path in enumerate(files):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SourceUnreadableError(f"source {spec.name!r}: cannot read {path}: {exc}") from exc
        try:
            text = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            yield Reject(str(path), position, RejectReason.INVALID_UTF8, str(exc), data)
            continue
        relative = path.relative_to(root).as_posix()
        yield Record(str(path), position, {spec.text_field: text, id_field: relative}, data)
