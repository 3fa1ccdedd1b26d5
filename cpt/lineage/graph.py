"""What a version of a table was built from.

Every commit (:mod:`cpt.delta_store`) records in its custom metadata:

- ``cptdata.input_versions``: the table versions it read, ``{table: version}``; ``cptdata.input_parts``: of those,
  the partitions it read where it did not read the whole table (a dataset build reads two fits of ``laws/fits``);
- ``cptdata.lineage``: its *own* lineage, a :data:`Lineage`: those inputs with everything they were built from
  (transitive), the source files (path, SHA-256, size, mtime) and the base models it read;
- ``cptdata.write`` and ``cptdata.part``: how its rows enter the table — ``replace_all`` (the version holds only
  them), ``replace_partition`` (they replace partition ``part``), ``append`` (added to partition ``part``),
  ``restore`` (the table is back at ``cptdata.restored_version``) or ``create`` (an empty table);
- ``cptdata.code``: the git commit and package versions (:mod:`cpt.lineage.code`).

The lineage of a table *version* folds the commits whose rows that version still holds: the last ``replace_all``,
then per partition the last replace and the appends since (:func:`fold_history`). It is computed from the immutable
Delta log, so the lineage of a version never changes once the version exists. Commits written before this record
existed contribute their direct ``cptdata.input_versions``, their write mode read from Delta's own operation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# {"tables": {table: [version, ...]}, "files": [file record, ...], "models": {revision: model record}}
Lineage = dict[str, Any]

WRITES = ("replace_all", "replace_partition", "append", "restore", "create")
FILE_FIELDS = ("source", "path", "sha256", "bytes", "mtime")  # a source file as lineage records it
MODEL_FIELDS = ("revision", "source", "path", "file_hashes", "n_params", "details")


def empty() -> Lineage:
    return {"tables": {}, "files": [], "models": {}}


def merge(*items: Lineage | None) -> Lineage:
    """The union of several lineages (versions sorted, files and models once each)."""
    tables: dict[str, set[int]] = {}
    files: dict[tuple[str, str], dict] = {}
    models: dict[str, dict] = {}
    incomplete: set[str] = set()  # inputs whose own lineage could not be read when a commit was made
    for item in items:
        if not item:
            continue
        incomplete.update(item.get("incomplete", []))
        for table, versions in item.get("tables", {}).items():
            tables.setdefault(table, set()).update(int(v) for v in versions)
        for record in item.get("files", []):
            files[(record["path"], record["sha256"])] = dict(record)
        models.update(item.get("models", {}))
    merged = {
        "tables": {t: sorted(v) for t, v in sorted(tables.items())},
        "files": [files[k] for k in sorted(files)],
        "models": dict(sorted(models.items())),
    }
    return merged | ({"incomplete": sorted(incomplete)} if incomplete else {})


def direct(table: str, version: int) -> Lineage:
    return {"tables": {table: [int(version)]}, "files": [], "models": {}}


def model_record(manifest: Mapping[str, Any]) -> dict[str, dict]:
    """``{revision: record}`` of a base-model manifest (its loss curve left out: it is not provenance)."""
    record = {k: manifest.get(k) for k in MODEL_FIELDS}
    record["details"] = {k: v for k, v in (record["details"] or {}).items() if k != "loss_curve"}
    if isinstance(record["details"].get("documents_version"), int):  # the quick-start model, pretrained on these
        record["trained_on"] = {"corpus/documents": record["details"]["documents_version"]}
    return {str(manifest["revision"]): record}


def contains(lineage: Lineage, table: str | None = None, version: int | None = None, file: str | None = None) -> bool:
    """Whether ``lineage`` holds ``table@version`` (any version when None), or a source file given by its path or
    its SHA-256 (``sha256:<hex>`` or the bare hex)."""
    if table is not None:
        versions = lineage.get("tables", {}).get(table, [])
        return bool(versions) if version is None else int(version) in versions
    if file is not None:
        digest = file.removeprefix("sha256:")
        return any(f["path"] == file or f["sha256"] == digest for f in lineage.get("files", []))
    raise ValueError("contains needs a table or a file")


# ---- one commit ----------------------------------------------------------------------------------------------
def write_of(entry: Mapping[str, Any]) -> tuple[str | None, str, int | None]:
    """(write mode, partition key, restored version) of a commit entry of the Delta history; the mode is None for
    commits that change no rows (vacuum, optimize, property changes)."""
    if entry.get("cptdata.write") in WRITES:
        restored = entry.get("cptdata.restored_version")
        return entry["cptdata.write"], entry.get("cptdata.part") or "", int(restored) if restored else None
    operation = str(entry.get("operation", "")).upper()
    params = entry.get("operationParameters") or {}
    if operation == "RESTORE":
        return "restore", "", int(params.get("version") or params.get("versionAsOf") or 0)
    if operation.startswith("CREATE"):
        return ("replace_all" if operation.endswith("AS SELECT") else "create"), "", None
    if operation in ("WRITE", "MERGE", "DELETE", "UPDATE"):
        mode, predicate = str(params.get("mode", "")).lower(), params.get("predicate")
        if operation == "WRITE" and mode == "overwrite":
            return ("replace_partition", str(predicate), None) if predicate else ("replace_all", "", None)
        return "append", entry.get("cptdata.partition") or "", None
    return None, "", None


def own_lineage(entry: Mapping[str, Any], table: str | None = None) -> Lineage:
    """What one commit recorded as read (its transitive lineage), or its direct inputs for an older commit."""
    recorded = entry.get("cptdata.lineage")
    if recorded:
        return merge(json.loads(recorded))
    return merge(*(direct(t, v) for t, v, _ in direct_inputs(entry, table)))


def direct_inputs(entry: Mapping[str, Any], table: str | None = None) -> list[tuple[str, int, tuple[str, ...] | None]]:
    """The (table, version, partitions read or None for all) a commit of ``table`` read directly — other tables
    only: a commit that read its own table's previous version (a documents ingest checks what other sources hold)
    adds to or replaces part of it, which the fold already accounts for."""
    inputs = json.loads(entry.get("cptdata.input_versions") or "{}")
    parts = json.loads(entry.get("cptdata.input_parts") or "{}")
    return [
        (t, int(v), tuple(parts[t]) if t in parts else None)
        for t, v in sorted(inputs.items())
        if isinstance(v, int) and t != table
    ]


# ---- the versions of one table -------------------------------------------------------------------------------
State = dict[str, list[Mapping[str, Any]]]  # partition key → the commit entries whose rows a version holds


def fold_history(entries: Iterable[Mapping[str, Any]]) -> dict[int, State]:
    """For every version of a table (history entries in any order): per partition, the commits whose rows that
    version holds."""
    states: dict[int, State] = {}
    state: State = {}
    for entry in sorted(entries, key=lambda e: int(e["version"])):
        write, part, restored = write_of(entry)
        if write == "replace_all":
            state = {part: [entry]}
        elif write == "replace_partition":
            state = state | {part: [entry]}
        elif write == "append":
            state = state | {part: [*state.get(part, []), entry]}
        elif write == "restore":
            state = dict(states.get(restored if restored is not None else -1, {}))
        elif write == "create":
            state = {}
        states[int(entry["version"])] = state
    return states


def commits_held(state: State, parts: Sequence[str] | None = None) -> list[Mapping[str, Any]]:
    """The commits whose rows a version holds (only those of ``parts`` when given), oldest first."""
    chosen = [entries for key, entries in state.items() if parts is None or key in parts]
    return sorted((e for entries in chosen for e in entries), key=lambda e: int(e["version"]))


def version_lineage(state: State, parts: Sequence[str] | None = None, table: str | None = None) -> Lineage:
    """The lineage of a version of ``table``: the union of the commits it holds."""
    return merge(*(own_lineage(e, table) for e in commits_held(state, parts)))
