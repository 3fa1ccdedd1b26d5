"""Where documents come from: declared sources and files dropped in a landing folder."""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class SourceUnreadableError(RuntimeError):
    """A source as a whole cannot be read (missing, not the declared format, unreadable); names the source."""


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

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"source name {self.name!r}: use letters, digits, '_', '.', '-' (it is a partition key)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"source {self.name!r}: eval_fraction must be in [0, 1), got {self.eval_fraction}")
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


def landing_sources(landing_dir: Path, taken: frozenset[str] = frozenset()) -> LandingScan:
    """Sources for the files dropped in ``landing_dir/<role>/``: one per file, named ``<role>-<file stem>``.

    The format comes from the suffix; a subfolder of .txt files is a text_dir source; anything else is ignored.
    Files whose names collide (``my notes.jsonl`` and ``my-notes.jsonl``), or that would take a name in ``taken``
    (declared sources), are reported as conflicts and ingested under no name, rather than one silently winning.
    """
    candidates: dict[str, list[SourceSpec]] = {}
    for role in CorpusRole:
        folder = landing_dir / role.value
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            fmt = _landing_format(entry)
            if fmt is None:
                continue
            stem = entry.name.removesuffix(".gz").rsplit(".", 1)[0] if entry.is_file() else entry.name
            spec = SourceSpec(name=f"{role.value}-{slug(stem)}", path=str(entry), format=fmt, role=role)
            candidates.setdefault(spec.name, []).append(spec)
    sources = tuple(specs[0] for name, specs in candidates.items() if len(specs) == 1 and name not in taken)
    conflicts = {
        name: tuple(s.path for s in specs) for name, specs in candidates.items() if len(specs) > 1 or name in taken
    }
    return LandingScan(sources, conflicts)


def _landing_format(entry: Path) -> SourceFormat | None:
    if entry.name.startswith("."):
        return None
    if entry.is_dir():
        return SourceFormat.TEXT_DIR
    if entry.name.endswith((".jsonl.gz", ".json.gz")):
        return SourceFormat.JSONL_GZ
    return SUFFIX_FORMATS.get(entry.suffix) if entry.suffix != ".gz" else None
