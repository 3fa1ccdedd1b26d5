"""The lineage report of one table version, and the reverse query (what was built from a file or table version).

The report answers, from the Delta log alone (plus what ``describe_fits`` adds): which source files (SHA-256, size,
mtime), which base model (source, file hashes), which upstream table versions, which fits (MLflow run, registered
model version, gate) and which code (git commit, packages) produced the version, and which Dagster runs wrote each
part. Nothing in it depends on when it is made: the report of a version is the same after newer builds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from cpt.lineage import graph

REPORT_FORMAT = "cptdata-lineage-report/1"
FitDescriber = Callable[[int, Sequence[str]], list[dict[str, Any]]]  # (laws/fits version, partitions) → fits


def build_report(
    store, table: str, version: int, describe_fits: FitDescriber | None = None, fits_table: str = "laws/fits"
) -> dict[str, Any]:
    """The report of ``table@version`` as a JSON-able dict (``store``: a :class:`cpt.delta_store.DeltaStore`)."""
    expanded: dict[str, dict] = {}
    fits: dict[str, dict] = {}

    def node(name: str, at: int, parts: Sequence[str] | None) -> dict[str, Any]:
        key = f"{name}@{at}" + (f"#{','.join(sorted(parts))}" if parts else "")
        if key in expanded:
            return {"table": name, "version": at, "see": key}
        state = store.lineage_state(name, at)
        commits = graph.commits_held(state, parts)
        out: dict[str, Any] = {"table": name, "version": at, "key": key}
        if parts is not None:
            out["partitions"] = sorted(parts)
        out["commits"] = [_commit(c) for c in commits]
        expanded[key] = out
        if name == fits_table and describe_fits is not None:
            described = describe_fits(at, list(parts) if parts is not None else [])
            fits.update((f["fit_key"], f) for f in described)
            out["fits"] = sorted(f["fit_key"] for f in described)
        children: dict[str, tuple[str, int, tuple[str, ...] | None]] = {}
        for entry in commits:
            for t, v, p in graph.direct_inputs(entry, name):
                children.setdefault(f"{t}@{v}#{p}", (t, v, p))
            for model in json.loads(entry.get("cptdata.models") or "{}").values():
                for t, v in (model.get("trained_on") or {}).items():
                    children.setdefault(f"{t}@{v}#None", (t, int(v), None))
        out["inputs"] = [node(t, v, p) for t, v, p in sorted(children.values(), key=lambda c: (c[0], c[1]))]
        return out

    tree = node(table, version, None)
    lineage = store.lineage(table, version)
    runs = _runs(expanded.values())
    read_by: dict[tuple[str, str], set[str]] = {}
    for name, commit in _all_commits(expanded.values()):
        for f in commit["files"]:
            read_by.setdefault((f["path"], f["sha256"]), set()).add(f"{name}@{commit['version']}")
    files = [f | {"read_by": sorted(read_by.get((f["path"], f["sha256"]), ()))} for f in lineage["files"]]
    return {
        "format": REPORT_FORMAT,
        "subject": {"table": table, "version": version},
        "lineage": lineage | {"files": files},
        "fits": [fits[k] for k in sorted(fits)],
        "dagster_runs": runs,
        "code": _codes(expanded.values()),
        "tree": tree,
    }


def _commit(entry: dict) -> dict[str, Any]:
    code = json.loads(entry.get("cptdata.code") or "{}")
    return {
        "version": int(entry["version"]),
        "committed_at": datetime.fromtimestamp(int(entry["timestamp"]) / 1000, UTC).isoformat(),
        "write": graph.write_of(entry)[0],
        "part": entry.get("cptdata.part", ""),
        "dagster_run_id": entry.get("cptdata.run_id", ""),
        "asset_key": entry.get("cptdata.asset_key", ""),
        "partition": entry.get("cptdata.partition", ""),
        "config_hash": entry.get("cptdata.config_hash", ""),
        "code_version": entry.get("cptdata.code_version", ""),
        "git_commit": code.get("git_commit"),
        "git_dirty": code.get("git_dirty"),
        "packages": code.get("packages", {}),
        "files": json.loads(entry.get("cptdata.files") or "[]"),
        "models": sorted(json.loads(entry.get("cptdata.models") or "{}")),
    }


def _all_commits(nodes: Iterable[dict]) -> list[tuple[str, dict]]:
    return [(n["table"], c) for n in nodes for c in n["commits"]]


def _runs(nodes: Iterable[dict]) -> list[dict[str, Any]]:
    wrote: dict[str, set[str]] = {}
    for table, commit in _all_commits(nodes):
        wrote.setdefault(commit["dagster_run_id"], set()).add(f"{table}@{commit['version']}")
    return [{"dagster_run_id": run, "wrote": sorted(w)} for run, w in sorted(wrote.items())]


def _codes(nodes: Iterable[dict]) -> list[dict[str, Any]]:
    used: dict[str, dict] = {}
    for table, commit in _all_commits(nodes):
        key = json.dumps([commit["git_commit"], commit["git_dirty"], commit["packages"]], sort_keys=True)
        item = used.setdefault(
            key,
            {"git_commit": commit["git_commit"], "git_dirty": commit["git_dirty"], "packages": commit["packages"]}
            | {"wrote": set()},
        )
        item["wrote"].add(f"{table}@{commit['version']}")
    return [item | {"wrote": sorted(item["wrote"])} for item in sorted(used.values(), key=lambda i: i["wrote"])]


# ---- Markdown ------------------------------------------------------------------------------------------------
def to_markdown(report: dict[str, Any]) -> str:
    subject, lineage = report["subject"], report["lineage"]
    head = report["tree"]["commits"][-1] if report["tree"]["commits"] else {}
    lines = [
        f"# Lineage of {subject['table']} v{subject['version']}",
        "",
        f"Committed {head.get('committed_at', '?')} by Dagster run "
        f"`{head.get('dagster_run_id', '?')}` ({head.get('asset_key', '?')}), code {_git(head)}.",
        "",
        "## Built from",
        "",
        "| table | versions |",
        "|---|---|",
        *(f"| {t} | {', '.join(f'v{v}' for v in vs)} |" for t, vs in lineage["tables"].items()),
        "",
        "## Source files",
        "",
        "| source | path | sha256 | bytes | modified | read by (commit) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {f.get('source', '')} | `{f['path']}` | `{f['sha256']}` | {f.get('bytes', '')} | {f.get('mtime', '')} "
            f"| {', '.join(f.get('read_by', []))} |"
            for f in lineage["files"]
        ),
        "",
        "## Base model",
        "",
        "| revision | source | path | parameters | file hashes (sha256) |",
        "|---|---|---|---|---|",
        *(
            f"| `{rev}` | {m.get('source')} | `{m.get('path')}` | {m.get('n_params')} | "
            + "<br>".join(f"{name}: `{h[:16]}…`" for name, h in sorted((m.get("file_hashes") or {}).items()))
            + " |"
            for rev, m in lineage["models"].items()
        ),
        "",
        "## Fits",
        "",
        "| law | answer basis | gate | promoted | MLflow run | registered model | Dagster run |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {f.get('law')} | {f.get('basis', '')} | {'passed' if f.get('gate_passed') else 'FAILED'} | "
            f"{f.get('promoted')} | `{f.get('mlflow_run_id')}` {_live(report, f, 'mlflow_status')} | "
            f"{f.get('registered_model', '')} {_live(report, f, 'registry_gate')} | `{f.get('dagster_run_id')}` |"
            for f in report["fits"]
        ),
        "",
        "## Upstream versions (tree)",
        "",
        *_tree_lines(report["tree"], 0),
        "",
        "## Dagster runs",
        "",
        "| run id | wrote |",
        "|---|---|",
        *(f"| `{r['dagster_run_id']}` | {', '.join(r['wrote'])} |" for r in report["dagster_runs"]),
        "",
        "## Code",
        "",
        "| git commit | packages | wrote |",
        "|---|---|---|",
        *(
            f"| {_git(c)} | {', '.join(f'{k} {v}' for k, v in sorted(c['packages'].items()) if v)} | "
            f"{', '.join(c['wrote'])} |"
            for c in report["code"]
        ),
        "",
    ]
    return "\n".join(lines)


def _live(report: dict, fit: dict, key: str) -> str:
    """What the MLflow store says of a fit now (``report["registry"]``, not part of the recorded report)."""
    value = report.get("registry", {}).get(fit["fit_key"], {}).get(key)
    return f"({key.replace('_', ' ')}: {value})" if value else ""


def _git(item: dict) -> str:
    commit = item.get("git_commit") or "unknown"
    return f"`{commit[:12]}`" + (" (uncommitted changes)" if item.get("git_dirty") else "")


def _tree_lines(node: dict, depth: int) -> list[str]:
    pad = "  " * depth
    parts = f" [{'; '.join(node['partitions'])}]" if node.get("partitions") else ""
    if "see" in node:
        return [f"{pad}- {node['table']} v{node['version']}{parts} (above)"]
    commits = node["commits"]
    runs = sorted({c["dagster_run_id"] for c in commits})
    files = [f for c in commits for f in c["files"]]
    text = (
        f"{pad}- **{node['table']} v{node['version']}**{parts}: {len(commits)} commit"
        f"{'s' if len(commits) != 1 else ''} ({', '.join(sorted({c['write'] or '?' for c in commits}))}), "
        f"Dagster run{'s' if len(runs) != 1 else ''} {', '.join(f'`{r}`' for r in runs)}"
    )
    if files:
        text += "; files " + ", ".join(f"`{f['path'].rsplit('/', 1)[-1]}` ({f['sha256'][:12]}…)" for f in files)
    if node.get("fits"):
        text += "; fits " + ", ".join(f"`{k}`" for k in node["fits"])
    return [text, *(line for child in node["inputs"] for line in _tree_lines(child, depth + 1))]


# ---- the reverse query ---------------------------------------------------------------------------------------
def parse_ref(ref: str) -> dict[str, Any]:
    """``corpus/documents@3`` → a table version; ``sha256:<hex>``, a path → a source file."""
    if "@" in ref and not ref.startswith(("/", ".", "sha256:")):
        table, _, version = ref.rpartition("@")
        if not version.isdigit():
            raise ValueError(f"{ref!r}: a table reference is TABLE@VERSION, e.g. corpus/documents@3")
        return {"table": table, "version": int(version)}
    return {"file": ref}


def uses(store, tables: Iterable[str], ref: str) -> list[dict[str, Any]]:
    """Every version of every table in ``tables`` whose lineage holds ``ref`` (a table version or a source file):
    ``[{"table", "versions"}]``, tables in the order given."""
    target = parse_ref(ref)
    found = []
    for table in tables:
        states = store.lineage_states(table)
        hits = [
            v
            for v, state in sorted(states.items())
            if graph.contains(graph.version_lineage(state, None, table), **target)
        ]
        if hits:
            found.append({"table": table, "versions": hits})
    return found


def uses_markdown(ref: str, found: list[dict[str, Any]]) -> str:
    if not found:
        return f"Nothing recorded was built from {ref}."
    lines = [f"# Built from {ref}", "", "| table | versions |", "|---|---|"]
    lines += [f"| {f['table']} | {', '.join(f'v{v}' for v in f['versions'])} |" for f in found]
    return "\n".join(lines) + "\n"
