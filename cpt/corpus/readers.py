"""Readers: the files of a source → records, or rejects that say what was wrong and keep the bytes.

A reader never raises for a bad record; it raises :class:`SourceUnreadableError` only when a file cannot be read at
all (missing, not gzip, not Parquet, no text column).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cpt.corpus.schema import RAW_LIMIT
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
    """Lines of a (possibly multi-member, zero-padded) gzip file; a line counts only once its member is verified.

    Every member's CRC-32 and length trailer is checked against what was decoded before any of its lines is
    yielded: a member that fails the check, or whose deflate data is invalid, turns every line it touches into a
    ``corrupt_gzip`` reject that keeps the decoded bytes (a bit flip can decode to plausible, altered text, so no
    line of such a member is trusted), and decoding resumes at the next member header, so intact members are kept.
    Bytes between members that are not gzip become one ``corrupt_gzip`` reject. A stream that ends inside a member
    (a cut download) keeps the complete lines decoded before the cut, and its partial last line becomes one
    ``truncated_gzip`` reject with its bytes.

    The members are parsed here (header, raw deflate, trailer) rather than by ``gzip.open``, which loses what a
    damaged stream still holds inside an exception and cannot resume after a bad member.
    """
    file = str(path)
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return  # an empty file holds no record (the ingest decides whether an empty source may replace data)
        if fh.read(2) != GZIP_MAGIC:
            raise SourceUnreadableError(f"{path} is not gzip data (declared format jsonl.gz)")
        fh.seek(0)
        pending = b""  # bytes after the last newline: a line still in progress
        chunks: list[bytes] = []
        position = 0
        for event in _gzip_members(_ByteWindow(fh)):
            if isinstance(event, bytes):
                chunks.append(event)
                continue
            data = pending + b"".join(chunks)
            chunks = []
            *lines, pending = data.split(b"\n")
            if event.reason is RejectReason.CORRUPT_GZIP:
                # Every line the member touches is rejected, its unfinished last line too: the next member starts a
                # fresh line (a line that really went on there leaves a fragment that fails to parse on its own).
                rejected = 0
                for line in [*lines, pending]:
                    position += 1
                    if line.strip():
                        rejected += 1
                        yield position, Reject(file, position, event.reason, event.detail, line)
                pending = b""
                if event.raw is not None or not rejected:  # bytes that are no member, or a member without a line
                    raw = event.raw if event.raw is not None else (data or None)
                    yield position + 1, Reject(file, position + 1, event.reason, event.detail, raw)
                continue
            for line in lines:  # a verified member, or the complete lines decoded before a cut
                position += 1
                if position == 1:
                    line = line.removeprefix(b"\xef\xbb\xbf")
                if line.strip():
                    yield position, line.rstrip(b"\r")
            if event.reason is RejectReason.TRUNCATED_GZIP:
                detail = f"{event.detail} (after {position} complete lines)"
                yield position + 1, Reject(file, position + 1, event.reason, detail, pending or None)
                return
        if pending.strip():
            yield position + 1, pending.rstrip(b"\r")


@dataclass(frozen=True)
class _MemberEnd:
    """The end of a gzip member: verified (``reason`` None), corrupt, or cut off (the end of the stream)."""

    reason: RejectReason | None
    detail: str = ""
    raw: bytes | None = None  # bytes that are no member, or a member that decoded to nothing: (the first
    # RAW_LIMIT + 1 of) those bytes, compressed as they are in the file


_MEMBER_START = GZIP_MAGIC + b"\x08"  # magic, then compression method 8 (deflate): how every member begins
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT, _FRESERVED = 0x02, 0x04, 0x08, 0x10, 0xE0
_MAX_HEADER = 1 << 20  # a longer file name or comment is not a header


class _ByteWindow:
    """A forward-only window over a file: what the member parser needs (peek, take, search), read in blocks."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.buf = b""
        self.offset = 0  # file offset of buf[0]

    def fill(self, n: int) -> bool:
        """Hold at least ``n`` bytes; False when the file ends first."""
        while len(self.buf) < n:
            block = self.fh.read(max(READ_BLOCK, n - len(self.buf)))
            if not block:
                return False
            self.buf += block
        return True

    def take(self, n: int) -> bytes:
        self.fill(n)
        out, self.buf = self.buf[:n], self.buf[n:]
        self.offset += len(out)
        return out

    def take_some(self) -> bytes:
        if not self.buf:
            self.fill(1)
        return self.take(len(self.buf))

    def give_back(self, data: bytes) -> None:
        self.buf = data + self.buf
        self.offset -= len(data)


def _gzip_members(src: _ByteWindow) -> Iterator[bytes | _MemberEnd]:
    """Decoded bytes of each member, each followed by its :class:`_MemberEnd`; a cut-off member ends the stream."""
    index = 0
    while True:
        while True:  # zero padding between or after members (tape blocks, preallocated files) is no data
            if not src.fill(1):
                return
            stripped = src.buf.lstrip(b"\0")
            src.offset += len(src.buf) - len(stripped)
            src.buf = stripped
            if stripped:
                break
        start = src.offset
        header = _header_length(src)
        if header == "truncated":
            yield _MemberEnd(RejectReason.TRUNCATED_GZIP, f"stream ends inside the header of a member at byte {start}")
            return
        if header is None:
            raw = _skip_to_next_member(src)
            detail = f"{src.offset - start} bytes at byte {start} are not gzip data"
            yield _MemberEnd(RejectReason.CORRUPT_GZIP, detail, raw)
            continue
        index += 1
        compressed = src.take(header)  # the member's own bytes, kept (up to RAW_LIMIT + 1) for a reject that has
        decomp = zlib.decompressobj(-zlib.MAX_WBITS)  # no decoded line to show
        crc = size = 0
        damaged = False
        while not decomp.eof:
            data = src.take_some()
            if not data:
                yield _MemberEnd(RejectReason.TRUNCATED_GZIP, "stream ends without its gzip trailer")
                return
            if len(compressed) <= RAW_LIMIT:
                compressed += data[: RAW_LIMIT + 1 - len(compressed)]
            before = decomp.copy()
            try:
                out = decomp.decompress(data)
            except zlib.error as exc:
                salvaged = b"".join(_salvage(before, data))
                if salvaged:
                    yield salvaged
                detail = f"gzip member {index} (at byte {start}): corrupt deflate data ({exc}); all its lines rejected"
                yield _MemberEnd(RejectReason.CORRUPT_GZIP, detail, None if salvaged or size else compressed)
                src.give_back(data)
                _skip_to_next_member(src)
                damaged = True
                break
            crc, size = zlib.crc32(out, crc), size + len(out)
            if out:
                yield out
            if decomp.eof:
                src.give_back(decomp.unused_data)
        if damaged:
            continue
        trailer = src.take(8)
        if len(trailer) < 8:
            yield _MemberEnd(RejectReason.TRUNCATED_GZIP, "stream ends inside the gzip trailer")
            return
        stored_crc, stored_size = struct.unpack("<II", trailer)
        if stored_crc != crc or stored_size != size & 0xFFFFFFFF:
            check = "CRC-32" if stored_crc != crc else "length"
            detail = f"gzip member {index} (at byte {start}) fails its {check} check; all its lines rejected"
            yield _MemberEnd(RejectReason.CORRUPT_GZIP, detail)
        else:
            yield _MemberEnd(None)


def _header_length(src: _ByteWindow) -> int | str | None:
    """The length of the member header at the window's start; None if no member starts there, ``"truncated"`` if
    the file ends inside one."""
    src.fill(10)
    head = src.buf[:10]
    if not _MEMBER_START.startswith(head[:3]) or (len(head) > 3 and head[3] & _FRESERVED):
        return None
    if len(head) < 10:
        return "truncated"
    flags, length = head[3], 10
    if flags & _FEXTRA:
        if not src.fill(length + 2):
            return "truncated"
        length += 2 + int.from_bytes(src.buf[length : length + 2], "little")
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            while (end := src.buf.find(b"\0", length)) < 0:
                if len(src.buf) > _MAX_HEADER:
                    return None
                if not src.fill(len(src.buf) + 1):
                    return "truncated"
            length = end + 1
    if flags & _FHCRC:
        length += 2
    return length if src.fill(length) else "truncated"


def _skip_to_next_member(src: _ByteWindow) -> bytes:
    """Advance past at least one byte, to the next place a member header could start (or the end of the file);
    returns the first RAW_LIMIT + 1 bytes skipped."""
    kept = b""
    begin = 1
    while True:
        more = src.fill(begin + READ_BLOCK)
        found = src.buf.find(_MEMBER_START, begin)
        if found >= 0:
            skip = found
        elif not more:
            skip = len(src.buf)  # the file ends without another member
        else:
            skip = len(src.buf) - 2  # keep two bytes: a member start may straddle the next block
        skipped = src.take(skip)
        kept += skipped[: max(0, RAW_LIMIT + 1 - len(kept))]
        if found >= 0 or not src.buf:
            return kept
        begin = 0


def _salvage(decomp, data: bytes, step: int = 32) -> Iterator[bytes]:
    """What a decompressor yields from ``data`` before the error it raised on the whole block (fed in pieces)."""
    for start in range(0, len(data), step):
        try:
            yield decomp.decompress(data[start : start + step])
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
