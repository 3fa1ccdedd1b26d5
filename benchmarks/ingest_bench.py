"""Ingestion throughput on the sample corpora, against a baseline measured in the same run.

(a) baseline: gzip + json.loads per line, nothing else — the floor any JSON Lines reader pays;
(b) cpt ingestion: validation, normalisation, content hashing, dedup, split, Arrow table;
(c) Delta write of (b)'s documents through the adapter, and a pinned read back.

    make bench        (CPTDATA_CORPORA points at the corpora; default ../shared/corpora)
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cpt.corpus.ingest import ingest_source
from cpt.corpus.sources import SourceSpec
from cpt.delta_store import CommitInfo, DeltaStore


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    corpora = Path(os.environ.get("CPTDATA_CORPORA", "../shared/corpora")).resolve()
    path = corpora / "med_medquad.jsonl.gz"
    spec = SourceSpec("med_medquad", str(path), "jsonl.gz", "domain", group_field="group", eval_fraction=0.02)

    def baseline() -> int:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return sum(1 for line in fh if json.loads(line)["text"])

    t_a, n = best_of(baseline)
    t_b, result = best_of(lambda: ingest_source(spec, run_id="bench", ingested_at=datetime.now(UTC)))
    mb = result.documents.column("n_bytes").to_numpy().sum() / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        store = DeltaStore(tmp)
        commit = CommitInfo(run_id="bench", asset_key="corpus/documents", code_version="bench", config_hash="-")
        t_c, _ = best_of(
            lambda: store.overwrite("docs", result.documents, commit, predicate=None, partition_by=["source"]),
            repeats=1,
        )
        t_d, table = best_of(lambda: store.read("docs", 0))
    print(f"records: {n:,}  text: {mb:.1f} MB  (file {path.name})")
    print(f"(a) baseline gzip+json.loads   {n / t_a:>10,.0f} records/s   {t_a:6.2f} s")
    print(f"(b) cpt ingest_source          {n / t_b:>10,.0f} records/s   {t_b:6.2f} s   b/a = {t_a / t_b:.2f}")
    print(f"(c) Delta write (adapter)      {result.documents.num_rows / t_c:>10,.0f} rows/s      {t_c:6.2f} s")
    print(f"(d) Delta pinned read          {table.num_rows / t_d:>10,.0f} rows/s      {t_d:6.2f} s")


if __name__ == "__main__":
    main()
