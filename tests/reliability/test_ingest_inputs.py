"""Bad input to ingestion (issue 12): empty sources, corrupt gzip members, over-long source names."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime

import dagster as dg
import pytest

from assets.corpus import DOCUMENTS_TABLE, REJECTS_TABLE
from cpt.corpus.ingest import ingest_source
from cpt.corpus.sources import MAX_NAME_LENGTH, SourceSpec, landing_sources
from tests.reliability.test_ingest_helpers import (
    failure_message,
    failure_text,
    ingest,
    partition_texts,
    resources,
    source,
    store,
    texts,
    write_source,
)

EMPTY_INPUTS = {
    "zero_bytes.jsonl": b"",
    "blank_lines.jsonl": b"\n  \n\r\n\t\n",
    "zero_bytes.jsonl.gz": b"",
    "gzip_of_nothing.jsonl.gz": gzip.compress(b""),
    "gzip_of_blank_lines.jsonl.gz": gzip.compress(b"\n \n\n"),
}


# ---- 1. an empty source never wipes its partition ----------------------------------------------------------------
@pytest.mark.parametrize("file_name", sorted(EMPTY_INPUTS))
def test_ingest_of_an_empty_source_fails_and_keeps_its_partition(tmp_path, file_name):
    path = write_source(tmp_path / file_name, texts("good", 200))
    with dg.DagsterInstance.ephemeral() as instance:
        assert ingest(resources(tmp_path, [source("src", path)]), instance, "src").success
        documents_version = store(tmp_path).version(DOCUMENTS_TABLE)
        rejects_version = store(tmp_path).version(REJECTS_TABLE)

        path.write_bytes(EMPTY_INPUTS[file_name])
        failed = ingest(resources(tmp_path, [source("src", path)]), instance, "src")
        assert not failed.success
        message = failure_message(failed)
        assert "\n" not in message.strip() and "'src'" in message and "allow_empty" in message
        assert store(tmp_path).version(DOCUMENTS_TABLE) == documents_version  # nothing was committed at all
        assert store(tmp_path).version(REJECTS_TABLE) == rejects_version
        assert partition_texts(tmp_path, "src") == sorted(texts("good", 200))

        emptied = ingest(resources(tmp_path, [source("src", path, allow_empty=True)]), instance, "src")
        assert emptied.success  # the explicit opt-in really empties it
        assert partition_texts(tmp_path, "src") == []


def test_ingest_of_a_source_whose_texts_all_belong_to_other_sources_fails(tmp_path):
    a = write_source(tmp_path / "a.jsonl", texts("shared", 20))
    b = write_source(tmp_path / "b.jsonl", texts("shared", 20))
    res = resources(tmp_path, [source("a", a), source("b", b)])
    with dg.DagsterInstance.ephemeral() as instance:
        assert ingest(res, instance, "a").success
        failed = ingest(res, instance, "b")
    assert not failed.success
    assert "'b'" in failure_message(failed) and "already held by other sources" in failure_message(failed)
    assert partition_texts(tmp_path, "b") == [] and len(partition_texts(tmp_path, "a")) == 20


# ---- 3. a corrupt gzip member rejects every line of it -----------------------------------------------------------
def member_lines(start: int, n: int = 200) -> list[bytes]:
    return [
        json.dumps({"text": f"record {i} of the corpus, with some words"}).encode() for i in range(start, start + n)
    ]


def find_bit_flip(member: bytes, *, want_crc_failure: bool) -> tuple[int, bytes]:
    """The first single-bit flip in the deflate data of ``member`` (a gzip member without a file name) that either
    still inflates, to different bytes (only the CRC can tell), or makes the deflate data invalid."""
    original = zlib.decompress(member, wbits=31)
    for byte in range(10 + len(member) // 3, len(member) - 8):  # inside the deflate data: header 10, trailer 8 bytes
        for bit in range(8):
            flipped = bytearray(member)
            flipped[byte] ^= 1 << bit
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                out = inflater.decompress(bytes(flipped[10:-8]))
            except zlib.error:
                if not want_crc_failure:
                    return byte, bytes(flipped)
                continue
            inflated_whole = inflater.eof and not inflater.unused_data
            # altered bytes of the original length: the trailer's length still matches, only the CRC-32 can tell
            if want_crc_failure and inflated_whole and out != original and len(out) == len(original):
                return byte, bytes(flipped)
    raise AssertionError("no suitable bit flip found")


@pytest.mark.parametrize("crc_failure", [True, False], ids=["altered-text-crc-mismatch", "invalid-deflate"])
def test_ingest_rejects_every_line_of_a_gzip_member_with_a_bit_flip_and_keeps_the_others(tmp_path, crc_failure):
    first, second, third = member_lines(0), member_lines(1000), member_lines(2000)
    members = [gzip.compress(b"\n".join(lines) + b"\n", mtime=0) for lines in (first, second, third)]
    _, members[1] = find_bit_flip(members[1], want_crc_failure=crc_failure)
    path = tmp_path / "flipped.jsonl.gz"
    path.write_bytes(b"".join(members))

    spec = SourceSpec(name="src", path=str(path), format="jsonl.gz", role="domain", split="train")
    result = ingest_source(spec, run_id="r", ingested_at=datetime.now(UTC))

    kept = sorted(result.documents.column("text").to_pylist())
    assert kept == sorted(json.loads(line)["text"] for line in first + third)  # intact members whole, nothing else
    rejects = result.rejects.to_pylist()
    assert rejects and {r["reason"] for r in rejects} == {"corrupt_gzip"}
    assert all(r["raw"] for r in rejects) and all("member 2" in r["detail"] for r in rejects)
    if crc_failure:  # the member inflated whole: every one of its (altered) lines is quarantined with its bytes
        decoded = zlib.decompressobj(-zlib.MAX_WBITS).decompress(members[1][10:-8])
        assert [r["raw"] for r in rejects] == [line for line in decoded.split(b"\n") if line.strip()]
        assert len(rejects) >= 150  # (a flip may merge or split a few lines)


def test_ingest_of_a_truncated_gzip_still_keeps_the_lines_before_the_cut(tmp_path):
    whole = gzip.compress(b"\n".join(member_lines(0)) + b"\n", mtime=0)
    cut = gzip.compress(b"\n".join(member_lines(1000, 50)) + b"\n", mtime=0)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole + cut[: len(cut) * 2 // 3])
    spec = SourceSpec(name="src", path=str(path), format="jsonl.gz", role="domain", split="train")
    result = ingest_source(spec, run_id="r", ingested_at=datetime.now(UTC))
    assert result.stats.documents > 200  # all of the first member and the complete lines of the cut one
    assert result.rejects.column("reason").to_pylist() == ["truncated_gzip"]


# ---- 5. over-long source names fail before any work --------------------------------------------------------------
def test_ingest_refuses_a_source_name_over_the_limit_before_writing_anything(tmp_path):
    SourceSpec(name="n" * MAX_NAME_LENGTH, path="x", format="jsonl", role="domain")  # the limit itself is fine
    with pytest.raises(ValueError, match=f"250 characters long; the limit is {MAX_NAME_LENGTH}"):
        SourceSpec(name="n" * 250, path="x", format="jsonl", role="domain")

    path = write_source(tmp_path / "a.jsonl", texts("good", 5), bad=1)  # one bad line: a rejects row to write
    try:  # refused when the configuration is built (if it validates names itself), or when the run resolves it
        res = resources(tmp_path, [source("n" * 250, path)])
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        assert "100" in str(exc)
    else:
        with dg.DagsterInstance.ephemeral() as instance:
            result = ingest(res, instance, "n" * 250)
        assert not result.success and "the limit is 100" in failure_text(result)
    assert not store(tmp_path).exists(REJECTS_TABLE) and not store(tmp_path).exists(DOCUMENTS_TABLE)

    (tmp_path / "landing" / "domain").mkdir(parents=True)
    write_source(tmp_path / "landing" / "domain" / f"{'x' * 200}.jsonl", texts("landed", 3))
    scan = landing_sources(tmp_path / "landing")  # a landed file with a long name is refused, not a crash
    assert scan.sources == () and "the limit is 100" in next(iter(scan.refused.values()))


# ---- 5. the bytes lineage records are the bytes ingested ----------------------------------------------------------
def test_a_source_file_changed_while_it_is_read_is_not_committed_and_lineage_holds_what_was_read(tmp_path, monkeypatch):
    import hashlib

    import assets.corpus

    path = write_source(tmp_path / "src.jsonl", texts("good", 50))
    with dg.DagsterInstance.ephemeral() as instance:
        assert ingest(resources(tmp_path, [source("src", path)]), instance, "src").success
        version = store(tmp_path).version(DOCUMENTS_TABLE)
        (recorded,) = store(tmp_path).lineage(DOCUMENTS_TABLE, version)["files"]
        assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (recorded["path"], recorded["bytes"]) == (str(path.resolve()), path.stat().st_size)

        real_ingest = assets.corpus.ingest_source

        def read_then_change(*args, **kwargs):  # another writer appends to the file while the ingest reads it
            result = real_ingest(*args, **kwargs)
            path.write_bytes(path.read_bytes() + b'{"text": "appended meanwhile"}\n')
            return result

        monkeypatch.setattr(assets.corpus, "ingest_source", read_then_change)
        path.write_bytes(path.read_bytes().replace(b"good", b"new!"))
        failed = ingest(resources(tmp_path, [source("src", path)]), instance, "src")
        assert not failed.success and "changed while they were read" in failure_message(failed)
        assert store(tmp_path).version(DOCUMENTS_TABLE) == version  # nothing committed
        assert partition_texts(tmp_path, "src") == sorted(texts("good", 50))
