"""``cptdata``: run the graph from a terminal against a persistent Dagster instance (the one ``dagster dev`` shows).

cptdata demo                 register every source, then materialize the whole graph, partition by partition
cptdata register             register declared and landed sources as corpus_sources partitions
cptdata ingest SOURCE ...    (re)ingest some sources
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import dagster as dg

from assets.partitions import corpus_sources
from orchestration.definitions import build_definitions
from orchestration.jobs import ingest_corpus_job
from orchestration.profiles import load_profile


def _instance() -> dg.DagsterInstance:
    """The instance under $DAGSTER_HOME, defaulting to ``<CPTDATA_HOME>/dagster`` so the UI sees the same runs."""
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(load_profile(os.environ).home / "dagster")
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()  # an empty file: the default SQLite storage in this folder
    return dg.DagsterInstance.get()


def register(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    names = sorted(defs.resources["catalog"].specs())
    missing = [n for n in names if not instance.has_dynamic_partition(corpus_sources.name, n)]
    if missing:
        instance.add_dynamic_partitions(corpus_sources.name, missing)
    return names


def ingest(defs: dg.Definitions, instance: dg.DagsterInstance, names: list[str]) -> bool:
    job = defs.resolve_job_def(ingest_corpus_job.name)
    ok = True
    for name in names:
        print(f"[cptdata] ingest {name} ...", flush=True)
        result = job.execute_in_process(partition_key=name, instance=instance, raise_on_error=False)
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            meta = {
                k: v.value
                for k, v in mat.metadata.items()
                if k in ("dagster/row_count", "delta_version", "duplicates_dropped", "rejects")
            }
            print(f"[cptdata]   {mat.asset_key.to_user_string()}: {meta}", flush=True)
        for check in result.get_asset_check_evaluations():
            if not check.passed:
                print(f"[cptdata]   check FAILED: {check.check_name} {check.metadata}", flush=True)
        ok = ok and result.success
        if not result.success:
            print(f"[cptdata]   run {result.run_id} FAILED", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cptdata", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="register sources and materialize the whole graph")
    sub.add_parser("register", help="register sources as partitions")
    p_ingest = sub.add_parser("ingest", help="ingest the named sources")
    p_ingest.add_argument("sources", nargs="+")
    args = parser.parse_args(argv)

    defs = build_definitions(os.environ)
    instance = _instance()
    names = register(defs, instance)
    print(
        f"[cptdata] profile {load_profile(os.environ).name}; DAGSTER_HOME={os.environ['DAGSTER_HOME']}; "
        f"sources: {', '.join(names)}",
        flush=True,
    )
    if args.command == "register":
        return 0
    ok = ingest(defs, instance, names if args.command == "demo" else args.sources)
    print(f"[cptdata] {'done' if ok else 'finished with failures'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
