"""Where documents come from: declared sources and files dropped in a landing folder.

Landing files are untrusted input: only regular files and folders of regular ``.txt`` files that physically live
inside ``<landing>/<role>/`` become sources. A symbolic link (to a system file, or to a folder elsewhere), a FIFO or a
device is refused with a reason the landing sensor logs, and is never opened.

A source's *fingerprint* (:func:`source_fingerprint`) is a content hash of its files and its settings; it is recorded
with every ``corpus/documents`` commit, so whoever looks at the table knows which content each partition holds.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from cpt.hashing import config_hash

# A source name is a Dagster partition key, the Delta partition folder ``source=<name>`` (one path component: file
# systems and object stores cap a component at 255 bytes) and a prefix of the paths of every file beneath it, of
# rejects and of scores. 100 characters keeps all of them well inside their limits, with room for the ``source=``
# prefix and the ``<role>-`` of landing names.
MAX_NAME_LENGTH = 100


class SourceUnreadableError(RuntimeError):
    """A source as a whole cannot be read (missing, not the declared format, unreadable); names the source."""


class EmptySourceError(SourceUnreadableError):
    """A source holds no document to ingest (an empty file, a gzip of nothing, blank lines only, or only texts other
    sources hold): replacing its partition with nothing needs the source's explicit ``allow_empty``."""


class SourceFormat(StrEnum):
    JSONL = "jsonl"
    JSONL_GZ = "jsonl.gz"
    PARQUET = "parquet"
    TEXT_DIR = "text_dir"  # a folder of .txt files, one document each


class CorpusRole(StrEnum):
    DOMAIN = "domain"
    GENERAL = "general"


class SplitPolicy(StrEnum):
    BY_GROUP = "by_group"  # eval if hash(group) < eval_fraction
    TRAIN = "train"  # the whole source is training data
    EVAL = "eval"  # the whole source is held out


SUFFIX_FORMATS = {
    ".jsonl": SourceFormat.JSONL,
    ".json": SourceFormat.JSONL,
    ".gz": SourceFormat.JSONL_GZ,
    ".parquet": SourceFormat.PARQUET,
}


@dataclass(frozen=True)
class SourceSpec:
    """One declared source; its ``name`` is its partition key and the value of the ``source`` column."""

    name: str
    path: str  # a file, a glob, or (text_dir) a folder
    format: SourceFormat
    role: CorpusRole
    text_field: str = "text"
    group_field: str | None = None  # records sharing a group land in the same split; None: each record alone
    id_field: str | None = "id"  # the source's own record id, kept for lineage (optional in records)
    split: SplitPolicy = SplitPolicy.BY_GROUP
    eval_fraction: float = 0.05
    allow_empty: bool = False  # True: a source without documents really empties its partition (else it fails)
    # The share of the source's groups ingested: a group is kept when a stable hash of it falls below this, so the
    # same groups are kept on every run and machine (independently of the split). 1.0: every record.
    sample_fraction: float = 1.0

    def __post_init__(self) -> None:
        if len(self.name) > MAX_NAME_LENGTH:
            raise ValueError(
                f"source name {self.name[:40]!r}... is {len(self.name)} characters long; the limit is "
                f"{MAX_NAME_LENGTH} (the name is a partition key, a Delta partition folder and part of file paths)"
            )
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"source name {self.name!r}: use letters, digits, '_', '.', '-' (it is a partition key)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"source {self.name!r}: eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ValueError(f"source {self.name!r}: sample_fraction must be in (0, 1], got {self.sample_fraction}")
        object.__setattr__(self, "format", SourceFormat(self.format))
        object.__setattr__(self, "role", CorpusRole(self.role))
        object.__setattr__(self, "split", SplitPolicy(self.split))


def source_files(spec: SourceSpec) -> list[Path]:
    """The files a source reads, sorted; raises :class:`SourceUnreadableError` when there are none."""
    if spec.format is SourceFormat.TEXT_DIR:
        folder = Path(spec.path)
        if not folder.is_dir():
            raise SourceUnreadableError(f"source {spec.name!r}: {spec.path} is not a folder of .txt files")
        files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    else:
        files = sorted(Path(p) for p in glob.glob(spec.path, recursive=True) if Path(p).is_file())
    if not files:
        raise SourceUnreadableError(
            f"source {spec.name!r}: no {spec.format.value} file matches {spec.path!r}. Point the source at existing "
            "data (for the quick-start corpora set CPTDATA_CORPORA to the folder that holds them)."
        )
    return files


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "source"


@dataclass(frozen=True)
class LandingScan:
    sources: tuple[SourceSpec, ...]
    conflicts: dict[str, tuple[str, ...]]  # source name → the files that would all map to it (none is ingested)
    refused: dict[str, str] = field(default_factory=dict)  # landing entry → why it is not a source (never opened)


def landing_sources(landing_dir: Path, taken: frozenset[str] = frozenset()) -> LandingScan:
    """Sources for the files dropped in ``landing_dir/<role>/``: one per file, named ``<role>-<file stem>``.

    The format comes from the suffix; a subfolder of .txt files is a text_dir source; anything else is ignored.
    Files whose names collide (``my notes.jsonl`` and ``my-notes.jsonl``), or that would take a name in ``taken``
    (declared sources), are reported as conflicts and ingested under no name, rather than one silently winning.
    Symbolic links, anything that is not a regular file or folder, anything resolving outside ``landing_dir``, and
    names a source cannot take are reported in ``refused`` (entry → reason) and never read.
    """
    candidates: dict[str, list[SourceSpec]] = {}
    refused: dict[str, str] = {}
    root = landing_dir.resolve()
    for role in CorpusRole:
        folder = landing_dir / role.value
        if folder.is_symlink():
            refused[str(folder)] = _LINK_REASON.format(kind="the role folder", target=_link_target(folder))
            continue
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            problem = _landing_problem(entry, root)
            if problem is not None:
                refused[str(entry)] = problem
                continue
            fmt = _landing_format(entry)
            if fmt is None:
                continue
            stem = entry.name.removesuffix(".gz").rsplit(".", 1)[0] if fmt is not SourceFormat.TEXT_DIR else entry.name
            try:
                spec = SourceSpec(name=f"{role.value}-{slug(stem)}", path=str(entry), format=fmt, role=role)
            except ValueError as exc:
                refused[str(entry)] = str(exc)
                continue
            candidates.setdefault(spec.name, []).append(spec)
    sources = tuple(specs[0] for name, specs in candidates.items() if len(specs) == 1 and name not in taken)
    conflicts = {
        name: tuple(s.path for s in specs) for name, specs in candidates.items() if len(specs) > 1 or name in taken
    }
    return LandingScan(sources, conflicts, refused)


_LINK_REASON = (
    "{kind} is a symbolic link (to {target}); landing files must be regular files or folders inside the landing "
    "folder: copy the data in instead of linking it"
)


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _landing_problem(entry: Path, root: Path) -> str | None:
    """Why a landing entry must not be read (None: it may be). Looks at the entry itself (``lstat``), never through
    a link; a folder is walked without following links and refused if anything inside it is not a regular file or
    folder."""
    try:
        mode = entry.lstat().st_mode
    except OSError as exc:
        return f"cannot inspect it: {exc}"
    if stat.S_ISLNK(mode):
        return _LINK_REASON.format(kind="it", target=_link_target(entry))
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "it is not a regular file or folder (a FIFO, socket or device is never read)"
    if not entry.resolve().is_relative_to(root):
        return f"it resolves to {entry.resolve()}, outside the landing folder {root}"
    if stat.S_ISDIR(mode):
        try:
            for folder, dirs, files in os.walk(entry, followlinks=False):
                for name in sorted(dirs + files):
                    inner = Path(folder) / name
                    inner_mode = inner.lstat().st_mode
                    relative = inner.relative_to(entry).as_posix()
                    if stat.S_ISLNK(inner_mode):
                        return _LINK_REASON.format(kind=f"its entry {relative!r}", target=_link_target(inner))
                    if not (stat.S_ISREG(inner_mode) or stat.S_ISDIR(inner_mode)):
                        return f"its entry {relative!r} is not a regular file or folder"
        except OSError as exc:
            return f"cannot inspect it: {exc}"
    return None


def _landing_format(entry: Path) -> SourceFormat | None:
    if entry.is_dir():
        return SourceFormat.TEXT_DIR
    if entry.name.endswith((".jsonl.gz", ".json.gz")):
        return SourceFormat.JSONL_GZ
    return SUFFIX_FORMATS.get(entry.suffix) if entry.suffix != ".gz" else None


# ---- fingerprints ----------------------------------------------------------------------------------------------
UNREADABLE = "unreadable"


def source_fingerprint(spec: SourceSpec) -> str:
    """A content hash of what ingesting ``spec`` reads: its settings and, per file, the path, size and SHA-256 of the
    bytes. Equal fingerprints mean an ingest would read the same input (a ``touch`` changes nothing); ``unreadable``
    when the files cannot be listed or read (the ingest will fail and say why).

    File hashes are cached by (path, device, inode, size, modification time), so a sensor that fingerprints every
    source each minute reads a file again only after it changed.
    """
    try:
        files = source_files(spec)
        digest = hashlib.sha256(f"cptdata-source-v1\n{config_hash(spec)}\n".encode())
        for path in files:
            st = path.stat()
            content = _file_sha256(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            digest.update(f"{path}\0{st.st_size}\0{content}\n".encode())
    except (SourceUnreadableError, OSError):
        return UNREADABLE
    return "sha256:" + digest.hexdigest()


def file_records(spec: SourceSpec) -> list[dict[str, object]]:
    """What lineage records of each file a source reads: source, absolute path, SHA-256, size and modification time
    (UTC, ISO 8601). Raises :class:`SourceUnreadableError` (or ``OSError``) when the files cannot be read."""
    records = []
    for path in source_files(spec):
        st = path.stat()
        records.append(
            {
                "source": spec.name,
                "path": str(path.resolve()),
                "sha256": _file_sha256(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
                "bytes": st.st_size,
                "mtime": datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC).isoformat(),
            }
        )
    return records


@lru_cache(maxsize=4096)
def _file_sha256(path: str, device: int, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
