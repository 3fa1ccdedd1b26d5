"""The dataset's exports: shards a trainer can stream, and a manifest that says what they hold.

Layout of one export (a folder ``v<dataset version>`` beside the table)::

    tokens/shard-00000.parquet   position, chunk_id, role, input_ids (int32, BOS first when the window policy adds it)
    text/shard-00000.jsonl       {"position", "chunk_id", "role", "text"} per line, the chunk's text
    manifest.json                counts, tokens, ratio and landscape achieved vs target, the answers with their
                                 basis, input versions, model, fits, and every file with its size and SHA-256

Written atomically: every file goes into a hidden temporary folder, the manifest (listing only files already written
and hashed) last; the folder is verified against its manifest, then renamed to ``v<N>`` (on an object store, copied
with the manifest last: ``v<N>`` counts as complete only with its manifest). A build killed on the way leaves only a
temporary folder, which no reader looks at and a later export removes once nothing in it has moved for an hour.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "cptdata-dataset/1"
TMP_PREFIX = ".tmp-"
TOKENS_SCHEMA = pa.schema(
    [
        pa.field("position", pa.int64(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
    ]
)


@dataclass(frozen=True)
class ExportedChunk:
    position: int
    chunk_id: str
    role: str
    input_ids: tuple[int, ...]
    text: str


def shard_name(shard: int) -> tuple[str, str]:
    return f"tokens/shard-{shard:05d}.parquet", f"text/shard-{shard:05d}.jsonl"


def sha256_of(fs: pafs.FileSystem, path: str, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(fs: pafs.FileSystem, folder: str, shard: int, chunks: Sequence[ExportedChunk]) -> list[dict]:
    """One shard's two files (chunks in position order), each reported with rows, tokens, bytes and SHA-256."""
    chunks = sorted(chunks, key=lambda c: c.position)
    tokens_path, text_path = shard_name(shard)
    table = pa.Table.from_pylist(
        [
            {"position": c.position, "chunk_id": c.chunk_id, "role": c.role, "input_ids": list(c.input_ids)}
            for c in chunks
        ],
        schema=TOKENS_SCHEMA,
    )
    for rel in (tokens_path, text_path):
        fs.create_dir(f"{folder}/{rel.rsplit('/', 1)[0]}", recursive=True)
    pq.write_table(table, f"{folder}/{tokens_path}", filesystem=fs, compression="zstd")
    lines = "".join(
        json.dumps({"position": c.position, "chunk_id": c.chunk_id, "role": c.role, "text": c.text}, ensure_ascii=False)
        + "\n"
        for c in chunks
    )
    with fs.open_output_stream(f"{folder}/{text_path}") as out:
        out.write(lines.encode("utf-8"))
    n_tokens = sum(len(c.input_ids) for c in chunks)
    return [
        {
            "path": rel,
            "kind": kind,
            "shard": shard,
            "rows": len(chunks),
            "tokens": n_tokens,
            "bytes": fs.get_file_info(f"{folder}/{rel}").size,
            "sha256": sha256_of(fs, f"{folder}/{rel}"),
        }
        for rel, kind in ((tokens_path, "tokens"), (text_path, "text"))
    ]


def manifest_problems(fs: pafs.FileSystem, folder: str) -> list[str]:
    """What does not match between an export's manifest and its files (empty: every file is as listed)."""
    try:
        with fs.open_input_stream(f"{folder}/{MANIFEST}") as fh:
            manifest = json.loads(fh.read())
    except (FileNotFoundError, OSError, ValueError) as exc:
        return [f"no readable {MANIFEST} in {folder}: {exc}"]
    problems = []
    for entry in manifest.get("files", []):
        path = f"{folder}/{entry['path']}"
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            problems.append(f"{entry['path']} is listed but missing")
        elif info.size != entry["bytes"]:
            problems.append(f"{entry['path']} holds {info.size} bytes, the manifest says {entry['bytes']}")
        elif sha256_of(fs, path) != entry["sha256"]:
            problems.append(f"{entry['path']} does not match its SHA-256 in the manifest")
    if not manifest.get("files"):
        problems.append("the manifest lists no files")
    return problems


def write_manifest(fs: pafs.FileSystem, folder: str, manifest: Mapping[str, object]) -> None:
    with fs.open_output_stream(f"{folder}/{MANIFEST}") as out:
        out.write(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode("utf-8"))


def publish_folder(fs: pafs.FileSystem, tmp: str, final: str) -> None:
    """Make the complete, verified temporary folder the export ``final`` (replacing an incomplete or corrupt one).

    On a local file system: one rename. Object stores cannot rename a folder: the files are copied, the manifest last
    (an old manifest is removed first), so ``final`` counts as complete only once its manifest is there."""
    if isinstance(fs, pafs.LocalFileSystem):
        if fs.get_file_info(final).type != pafs.FileType.NotFound:
            fs.delete_dir(final)
        fs.move(tmp, final)
        return
    if fs.get_file_info(f"{final}/{MANIFEST}").type == pafs.FileType.File:
        fs.delete_file(f"{final}/{MANIFEST}")
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(tmp, recursive=True)) if i.type == pafs.FileType.File]
    for path in sorted(files, key=lambda f: f.endswith(f"/{MANIFEST}")):  # the manifest last
        target = f"{final}/{path[len(tmp) + 1 :]}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        fs.copy_file(path, target)
    fs.delete_dir(tmp)


def stale_temporaries(fs: pafs.FileSystem, root: str, older_than_s: float) -> list[str]:
    """Temporary folders of exports that never finished (a killed build): no file inside written for
    ``older_than_s`` seconds, so an export still writing is left alone (as is anything that cannot be dated)."""
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    now, stale = time.time(), []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith(TMP_PREFIX):
            continue
        inside = [info, *fs.get_file_info(pafs.FileSelector(info.path, recursive=True))]
        times = [i.mtime for i in inside if i.type != pafs.FileType.NotFound]
        if times and all(t is not None for t in times) and now - max(t.timestamp() for t in times) > older_than_s:
            stale.append(info.path)
    return stale
