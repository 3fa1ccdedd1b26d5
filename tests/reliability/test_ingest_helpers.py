"""Helpers shared by the ingestion reliability tests (no tests here): small inline sources, the corpus asset run
through Dagster on a temporary Delta root, and what a run recorded."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc

from assets.corpus import DOCUMENTS, DOCUMENTS_TABLE, corpus_documents
from assets.partitions import corpus_sources
from assets.resources import CorpusCatalogResource, DeltaStoreResource, SourceConfig
from cpt.delta_store import DeltaStore

REPO = Path(__file__).resolve().parents[2]


def texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} document number {i}: a sentence long enough to be a text." for i in range(n)]


def jsonl_bytes(items: Iterable[str], *, bad: int = 0) -> bytes:
    lines = [json.dumps({"text": t}) for t in items] + ['{"text": "unterminated'] * bad
    return ("\n".join(lines) + "\n").encode()


def write_source(path: Path, items: Iterable[str], *, bad: int = 0) -> Path:
    data = jsonl_bytes(items, bad=bad)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def source(name: str, path: Path, role: str = "domain", **kw) -> dict:
    fmt = "jsonl.gz" if path.name.endswith(".gz") else "jsonl"
    return {"name": name, "path": str(path), "format": fmt, "role": role, "split": "train", **kw}


def resources(root: Path, sources: list[dict], *, landing: Path | None = None, max_reject_rate: float = 0.2):
    return {
        "delta": DeltaStoreResource(root_uri=str(root / "delta")),
        "catalog": CorpusCatalogResource(
            sources=[SourceConfig(**s) for s in sources],
            landing_dir=str(landing or root / "landing"),
            max_reject_rate=max_reject_rate,
        ),
    }


def ingest(res: dict, instance: dg.DagsterInstance, name: str) -> dg.ExecuteInProcessResult:
    """One run of the corpus asset for one source, as the ingest job runs it."""
    if not instance.has_dynamic_partition(corpus_sources.name, name):
        instance.add_dynamic_partitions(corpus_sources.name, [name])
    return dg.materialize(
        [corpus_documents], partition_key=name, instance=instance, resources=res, raise_on_error=False
    )


def store(root: Path) -> DeltaStore:
    return DeltaStore(str(root / "delta"))


def partition_texts(root: Path, name: str) -> list[str]:
    docs = store(root).read(DOCUMENTS_TABLE, filters=[("source", "=", name)], columns=["text"])
    return sorted(docs.column("text").to_pylist())


def duplicate_ids(root: Path) -> int:
    ids = store(root).read(DOCUMENTS_TABLE, columns=["doc_id"])["doc_id"]
    return len(ids) - pc.count_distinct(ids).as_py()


def checks(result) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def documents_materialization(result) -> dg.AssetMaterialization | None:
    mats = [m for m in result.asset_materializations_for_node("corpus_documents") if m.asset_key == DOCUMENTS]
    return mats[0] if mats else None


def data_version(result) -> str:
    return documents_materialization(result).tags["dagster/data_version"]


def failure_message(result) -> str:
    """The message of the step's failure (a ``dg.Failure`` description is one line)."""
    return result.failure_data_for_node("corpus_documents").error.message


def failure_text(result) -> str:
    """The step's failure with every error it was caused by."""
    error, parts = result.failure_data_for_node("corpus_documents").error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


# ---- an ingest in another process, paused at a named point (to be released or killed there) -----------------------
def spawn_ingest(
    tmp: Path, root: Path, sources: list[dict], name: str, *, pause_at: str, release: Path | None = None
) -> tuple[subprocess.Popen, Path, Path]:
    """Start ``python -m tests.reliability.test_ingest_helpers`` ingesting ``name`` (a new interpreter: nothing is
    forked after deltalake is imported). At ``pause_at`` it writes the returned marker file and then waits for
    ``release`` to exist (or forever). Returns the process, the marker and the file its result lands in."""
    marker, result = tmp / f"{name}.{pause_at}.reached", tmp / f"{name}.result.json"
    args = {
        "root": str(root),
        "instance_dir": None if release else str(root / "dagster"),  # a killed run shares the test's instance
        "sources": sources,
        "name": name,
        "pause_at": pause_at,
        "marker": str(marker),
        "release": str(release) if release else None,
        "result": str(result),
    }
    log = (tmp / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.test_ingest_helpers", json.dumps(args)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return proc, marker, result


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the ingest process exited ({proc.returncode}) before {path.name}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} not reached in {timeout} s")
        time.sleep(0.05)


def sigkill(proc: subprocess.Popen) -> None:
    """Stop a child for good (it may ignore SIGINT/SIGTERM), by its PID."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _child(args: dict) -> None:
    import assets.corpus as corpus

    paused = []

    def checkpoint(point: str) -> None:
        if point != args["pause_at"] or paused:
            return
        paused.append(point)
        Path(args["marker"]).write_text(str(os.getpid()))
        while args["release"] is None or not Path(args["release"]).exists():
            time.sleep(0.02)

    corpus.ingest_checkpoint = checkpoint
    if args["instance_dir"]:
        Path(args["instance_dir"]).mkdir(parents=True, exist_ok=True)
    instance = dg.DagsterInstance.local_temp(args["instance_dir"]) if args["instance_dir"] else None
    with instance or dg.DagsterInstance.ephemeral() as instance:
        result = ingest(resources(Path(args["root"]), args["sources"]), instance, args["name"])
        mat = documents_materialization(result)
        meta = {k: v.value for k, v in mat.metadata.items() if isinstance(v.value, (int, str))} if mat else {}
        outcome = {"success": result.success, "checks": checks(result), "metadata": meta}
        if not result.success:
            outcome["error"] = failure_text(result)
    Path(args["result"]).write_text(json.dumps(outcome))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
