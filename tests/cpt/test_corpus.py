import gzip
import json
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cpt.corpus import readers
from cpt.corpus.ingest import assign_split, in_sample, ingest_source, normalise_text
from cpt.corpus.quality import duplicate_count, empty_text_count, schema_differences
from cpt.corpus.schema import DOCUMENTS_SCHEMA
from cpt.corpus.sources import EmptySourceError, SourceSpec, SourceUnreadableError, landing_sources
from cpt.hashing import content_id
from tests.conftest import BAD, GOOD, TRUNCATED_LINE, write_malformed_jsonl_gz

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ingest(spec):
    return ingest_source(spec, run_id="r", ingested_at=NOW)


def spec(path, fmt="jsonl.gz", **kw):
    kw.setdefault("group_field", "group")
    return SourceSpec(name="src", path=str(path), format=fmt, role="domain", **kw)


def test_malformed_file_keeps_good_lines_and_quarantines_each_bad_one(tmp_path):
    result = ingest(spec(write_malformed_jsonl_gz(tmp_path / "bad.jsonl.gz"), split="train"))
    texts = sorted(result.documents.column("text").to_pylist())
    assert texts == sorted(normalise_text(g["text"]) for g in GOOD)
    rejects = result.rejects.to_pylist()
    assert [r["reason"] for r in rejects] == [reason for _, reason in BAD] + ["truncated_gzip"]
    assert [r["raw"] for r in rejects[: len(BAD)]] == [line for line, _ in BAD]
    truncated = rejects[-1]
    assert truncated["raw"] and TRUNCATED_LINE.startswith(truncated["raw"])  # the partial line is kept, not lost
    assert all(r["detail"] for r in rejects)
    stats = result.stats
    assert (stats.documents, stats.duplicates_dropped, stats.rejects) == (len(GOOD), 1, len(BAD) + 1)
    assert stats.records_read == len(GOOD) + 1 + len(BAD) + 1
    assert result.documents.schema == DOCUMENTS_SCHEMA


def test_documents_are_normalised_hashed_and_counted(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(g) for g in GOOD) + "\n\n")
    docs = {d["source_record_id"]: d for d in ingest(spec(path, "jsonl")).documents.to_pylist()}
    assert docs["g1"]["text"] == "First good document.\nSecond line."
    assert docs["g3"]["text"] == "Café au lait" and len(docs["g3"]["text"]) == 12  # NFC: é is one code point
    assert docs["4"]["text"] == "Third good one, integer id and group." and docs["4"]["group_id"] == "7"
    assert docs["g1"]["doc_id"] == content_id("First good document.\nSecond line.")
    assert (docs["g1"]["n_lines"], docs["g1"]["n_words"]) == (2, 5)
    assert docs["g3"]["n_bytes"] == len("Café au lait".encode())


def test_split_is_drawn_per_group_and_stable(tmp_path):
    records = [{"group": f"g{i % 40}", "text": f"document {i}"} for i in range(400)]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    docs = ingest(spec(path, "jsonl", eval_fraction=0.3)).documents.to_pylist()
    split_of_group: dict[str, set[str]] = {}
    for d in docs:
        split_of_group.setdefault(d["group_id"], set()).add(d["split"])
    assert all(len(s) == 1 for s in split_of_group.values())  # a group never straddles the split
    eval_groups = sum(s == {"eval"} for s in split_of_group.values())
    assert 4 <= eval_groups <= 20  # ~30 % of 40 groups
    again = ingest(spec(path, "jsonl", eval_fraction=0.3)).documents.to_pylist()
    assert [d["split"] for d in again] == [d["split"] for d in docs]
    s = spec(path, "jsonl")
    assert assign_split("any", SourceSpec(**{**vars(s), "split": "eval"})) == "eval"


def test_a_sample_keeps_whole_groups_stably_counts_the_rest_and_keeps_the_split(tmp_path):
    records = [{"group": f"g{i % 200}", "text": f"document {i}"} for i in range(2000)]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n{not json\n")
    full = ingest(spec(path, "jsonl", eval_fraction=0.3))
    sample = ingest(spec(path, "jsonl", eval_fraction=0.3, sample_fraction=0.25))
    kept = sample.documents.to_pylist()
    groups = {d["group_id"] for d in kept}
    assert 30 <= len(groups) <= 70  # ~25 % of 200 groups
    assert len(kept) == 10 * len(groups)  # every document of a kept group, none of the others
    assert sample.stats.sampled_out == 2000 - len(kept)
    assert sample.stats.records_read == full.stats.records_read == 2001
    assert sample.stats.rejects == full.stats.rejects == 1  # malformed records are quarantined either way
    split_in_full = {d["doc_id"]: d["split"] for d in full.documents.to_pylist()}
    assert all(split_in_full[d["doc_id"]] == d["split"] for d in kept)  # sampling never moves a document's split
    again = ingest(spec(path, "jsonl", eval_fraction=0.3, sample_fraction=0.25)).documents
    assert again["doc_id"].to_pylist() == sample.documents["doc_id"].to_pylist()
    wider = {d["group_id"] for d in ingest(spec(path, "jsonl", sample_fraction=0.5)).documents.to_pylist()}
    assert groups < wider  # a larger sample holds the smaller one


def test_a_sample_that_keeps_nothing_is_an_error_naming_the_fraction(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"group": "g", "text": "alone"}) + "\n")
    fraction = next(f for f in (0.01, 0.02, 0.05) if not in_sample("g", spec(path, "jsonl", sample_fraction=f)))
    with pytest.raises(EmptySourceError, match=f"sample_fraction {fraction} keeps none of its 1 valid"):
        ingest(spec(path, "jsonl", sample_fraction=fraction))
    with pytest.raises(ValueError, match="sample_fraction must be in"):
        spec(path, "jsonl", sample_fraction=0.0)


def test_parquet_and_text_folder_sources(tmp_path):
    pq.write_table(pa.table({"body": ["one doc", None, "two doc"], "group": ["a", "b", "c"]}), tmp_path / "p.parquet")
    result = ingest(spec(tmp_path / "*.parquet", "parquet", text_field="body", id_field=None))
    assert sorted(result.documents.column("text").to_pylist()) == ["one doc", "two doc"]
    assert result.rejects.column("reason").to_pylist() == ["missing_text"]

    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    (folder / "bad.txt").write_bytes(b"\xff\xfe broken")
    (folder / "ignored.md").write_text("not a txt")
    result = ingest(SourceSpec(name="t", path=str(folder), format="text_dir", role="general"))
    docs = {d["source_record_id"]: d["text"] for d in result.documents.to_pylist()}
    assert docs == {"a.txt": "alpha", "sub/b.txt": "beta"}
    assert result.rejects.column("reason").to_pylist() == ["invalid_utf8"]


def test_an_unreadable_source_fails_with_its_name(tmp_path):
    with pytest.raises(SourceUnreadableError, match=r"'src'.*CPTDATA_CORPORA"):
        ingest(spec(tmp_path / "missing.jsonl.gz"))
    (tmp_path / "plain.jsonl.gz").write_text('{"text": "not compressed"}')
    with pytest.raises(SourceUnreadableError, match="not gzip"):
        ingest(spec(tmp_path / "plain.jsonl.gz"))
    pq.write_table(pa.table({"other": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(SourceUnreadableError, match="no column 'text'"):
        ingest(spec(tmp_path / "p.parquet", "parquet"))


def test_multi_member_gzip_is_read_whole(tmp_path):
    path = tmp_path / "multi.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "one"}\n') + gzip.compress(b'{"text": "two"}'))
    result = ingest(spec(path, group_field=None))
    assert sorted(result.documents.column("text").to_pylist()) == ["one", "two"]
    assert result.rejects.num_rows == 0


def gz_lines(count, start=0):
    return gzip.compress(
        b"".join(json.dumps({"text": f"line {i}"}).encode() + b"\n" for i in range(start, start + count))
    )


@pytest.mark.parametrize("block", [7, 1 << 16])
def test_zero_padding_after_the_last_member_is_the_end_of_the_file(tmp_path, monkeypatch, block):
    monkeypatch.setattr(readers, "READ_BLOCK", block)
    path = tmp_path / "padded.jsonl.gz"
    path.write_bytes(gz_lines(1000) + gz_lines(5, 1000) + b"\0" * 100)
    result = ingest(spec(path, group_field=None))
    assert (result.stats.documents, result.rejects.num_rows) == (1005, 0)


def test_trailing_garbage_keeps_every_line_before_it(tmp_path):
    path = tmp_path / "garbage.jsonl.gz"
    path.write_bytes(gz_lines(1000) + b"this is not gzip at all")
    result = ingest(spec(path, group_field=None))
    assert result.stats.documents == 1000
    assert result.rejects.column("reason").to_pylist() == ["corrupt_gzip"]


def test_corruption_mid_member_rejects_every_line_of_that_member_and_keeps_the_next(tmp_path):
    data = bytearray(gz_lines(5000))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # damage the middle of the deflate stream
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(bytes(data) + gz_lines(3, 5000))
    result = ingest(spec(path, group_field=None))
    # no line of the damaged member is trusted (deflate may emit garbled bytes before it notices); the intact member
    # after it is read whole
    assert result.documents.column("text").to_pylist() == ["line 5000", "line 5001", "line 5002"]
    rejects = result.rejects.to_pylist()
    assert {r["reason"] for r in rejects} == {"corrupt_gzip"}
    # what was decoded before the damage is kept, byte for byte, in the rejects
    assert [r["raw"] for r in rejects[:2400]] == [json.dumps({"text": f"line {i}"}).encode() for i in range(2400)]


def test_landing_folder_becomes_sources(tmp_path):
    (tmp_path / "domain").mkdir()
    (tmp_path / "general" / "essays").mkdir(parents=True)
    (tmp_path / "domain" / "New Notes.jsonl.gz").write_bytes(b"")
    (tmp_path / "domain" / "table.parquet").write_bytes(b"")
    (tmp_path / "domain" / ".hidden.jsonl").write_bytes(b"")
    (tmp_path / "domain" / "New-Notes.jsonl").write_bytes(b"")
    (tmp_path / "domain" / "declared.jsonl").write_bytes(b"")
    scan = landing_sources(tmp_path, taken=frozenset({"domain-declared"}))
    specs = {s.name: (s.format.value, s.role.value) for s in scan.sources}
    assert specs == {"domain-table": ("parquet", "domain"), "general-essays": ("text_dir", "general")}
    assert {name: len(paths) for name, paths in scan.conflicts.items()} == {"domain-New-Notes": 2, "domain-declared": 1}


def test_quality_measures():
    assert duplicate_count(pa.array(["a", "b", "a", "a"])) == 2
    assert empty_text_count(pa.array(["x", " \n", None, ""])) == 3
    wrong = pa.schema([("doc_id", pa.int64()), ("extra", pa.string())])
    problems = schema_differences(wrong, pa.schema([("doc_id", pa.string()), ("text", pa.large_string())]))
    assert problems == ["doc_id: int64 instead of string", "missing column text", "unexpected column extra"]
    assert schema_differences(pa.schema([("t", pa.large_string())]), pa.schema([("t", pa.string())])) == []
