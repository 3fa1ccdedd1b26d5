"""What lineage costs: a commit that records its transitive lineage vs the same commit without it (the baseline, same
run), and the time to build a report and to answer the reverse query, on tables shaped like the demo's (5 sources,
an appended scores table, 31 pilot partitions, a dataset reading them).

    python -m benchmarks.lineage_bench [--pilots 31] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid

import pyarrow as pa

from cpt.delta_store import CommitInfo, DeltaStore, partition_predicate
from cpt.lineage.report import build_report, uses


def commit(**kw) -> CommitInfo:
    return CommitInfo(run_id=str(uuid.uuid4()), asset_key="bench", code_version="b", config_hash="h", **kw)


def rows(part: str) -> pa.Table:
    return pa.table({"part": [part], "x": [1.0]})


class NoLineageStore(DeltaStore):
    """The baseline: the same commits, without the lineage record (what a commit cost before it)."""

    def _own_lineage(self, table_written, commit):
        return {}


def build(store: DeltaStore, pilots: int) -> dict[str, int]:
    docs = 0
    for i in range(5):
        src = f"s{i}"
        file = {"source": src, "path": f"/data/{src}.jsonl", "sha256": f"{i:064x}", "bytes": 1, "mtime": "t"}
        docs = store.overwrite(
            "corpus/documents", rows(src), commit(files=[file]), predicate=partition_predicate({"part": src})
        )
    scores = 0
    for i in range(5):
        parts = {"corpus/documents": [partition_predicate({"part": f"s{i}"})]}
        scores = store.append(
            "scores/chunks", rows(f"s{i}"), commit(input_versions={"corpus/documents": docs}, input_parts=parts)
        )
    regimes = store.overwrite(
        "landscape/regimes", rows("r"), commit(input_versions={"scores/chunks": scores}), predicate=None
    )
    pilot = 0
    for p in range(pilots):
        pilot = store.overwrite(
            "pilots/runs",
            rows(f"p{p}"),
            commit(input_versions={"landscape/regimes": regimes, "scores/chunks": scores, "corpus/documents": docs}),
            predicate=partition_predicate({"part": f"p{p}"}),
        )
    return {"corpus/documents": docs, "scores/chunks": scores, "landscape/regimes": regimes, "pilots/runs": pilot}


def timed_commits(store: DeltaStore, inputs: dict[str, int], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        fresh = type(store)(store.root_uri)  # a new store per asset run: no lineage cached
        start = time.perf_counter()
        fresh.overwrite("dataset/mixture", rows("d"), commit(input_versions=inputs), predicate=None)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pilots", type=int, default=31)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        store, baseline = DeltaStore(a), NoLineageStore(b)
        inputs, _ = build(store, args.pilots), build(baseline, args.pilots)
        with_lineage = statistics.median(timed_commits(store, inputs, args.repeats))
        without = statistics.median(timed_commits(baseline, inputs, args.repeats))
        start = time.perf_counter()
        report = build_report(DeltaStore(a), "dataset/mixture", store.version("dataset/mixture"))
        report_s = time.perf_counter() - start
        start = time.perf_counter()
        found = uses(DeltaStore(a), DeltaStore(a).tables(), "/data/s3.jsonl")
        uses_s = time.perf_counter() - start
    versions = sum(len(f["versions"]) for f in found)
    print(f"lineage bench ({args.pilots} pilot partitions, {args.repeats} dataset commits each, medians)")
    print(f"  commit with lineage    {with_lineage * 1000:7.1f} ms")
    print(
        f"  commit without (base) {without * 1000:7.1f} ms   overhead {with_lineage / without:.2f}x "
        f"(+{(with_lineage - without) * 1000:.1f} ms)"
    )
    upstream = sum(len(v) for v in report["lineage"]["tables"].values())
    print(
        f"  report of the dataset  {report_s * 1000:7.1f} ms   ({upstream} upstream table versions, "
        f"{len(report['lineage']['files'])} files)"
    )
    print(f"  reverse query (a file) {uses_s * 1000:7.1f} ms   ({versions} table versions built from it)")


if __name__ == "__main__":
    main()
