"""The production Dagster instance as it runs: ``dagster-daemon`` and ``dagster-webserver`` on loopback against
PostgreSQL (``deploy/dagster.yaml`` and ``deploy/workspace.yaml``), each started here and stopped by PID.

The landing sensor ticks and ingests the declared sources through the run queue; the corpus build schedule (set to
every minute) ticks and requests its runs; a run that fails is retried once by the daemon; a partition backfill of
``corpus/documents`` launched through GraphQL completes.
Run when ``CPTDATA_CLUSTER_TESTS=1`` (CI sets it) and PostgreSQL answers on 127.0.0.1:5432.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from deploy.backfill_pilots import LAUNCH, STATUS, graphql
from tests.cluster.test_spark_cluster import free_port, port_open, wait_until
from tests.orchestration.test_production_instance import PG, postgres_database  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("CPTDATA_CLUSTER_TESTS") != "1",
        reason="starts dagster-daemon and dagster-webserver on PostgreSQL; set CPTDATA_CLUSTER_TESTS=1",
    ),
]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCUMENTS = dg.AssetKey(["corpus", "documents"])


def server_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def production(tmp_path, postgres_database, monkeypatch):  # noqa: F811
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    sources = []
    for name, n in (("notes", 20), ("memos", 12)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps({"id": i, "text": f"{name} {i}: some words"}) for i in range(n)))
        sources.append({"name": name, "path": str(path), "format": "jsonl", "role": "general"})
    sources.append({"name": "gone", "path": str(tmp_path / "gone.jsonl"), "format": "jsonl", "role": "general"})
    (tmp_path / "sources.json").write_text(json.dumps(sources))
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "CPTDATA_HOME": str(tmp_path / "data"),
        "CPTDATA_SOURCES": str(tmp_path / "sources.json"),
        "DAGSTER_PG_HOST": PG["host"],
        "DAGSTER_PG_PORT": str(PG["port"]),
        "DAGSTER_PG_USER": PG["user"],
        "DAGSTER_PG_PASSWORD": "x",
        "DAGSTER_PG_DB": postgres_database,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "CPTDATA_CORPUS_BUILD_CRON": "* * * * *",  # the corpus build every minute, running from the start
        "CPTDATA_CORPUS_BUILD_ON": "true",
    }
    for key in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(key, env[key])  # this process reads the same instance
    port = free_port()
    workspace = str(REPO / "deploy" / "workspace.yaml")
    procs = []
    for name, args in (
        ("daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace]),
        ("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", workspace]),
    ):
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append(
            subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
    try:
        wait_until(lambda: port_open(port) and server_up(port), "the webserver", procs, timeout=180)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance, f"http://127.0.0.1:{port}", tmp_path
    finally:
        for proc in procs:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is None:
                    os.killpg(proc.pid, sig)
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        continue


def runs_of(instance, partition: str, by: str | None = None) -> list[dg.DagsterRun]:
    """The runs of a partition (``by``: only those a sensor or schedule of that tag name requested)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
    return [r for r in runs if by is None or by in r.tags]


def finished(instance, partition: str, count: int, by: str | None = None) -> bool:
    runs = runs_of(instance, partition, by)
    return len(runs) >= count and all(r.is_finished for r in runs)


def test_the_daemon_ingests_through_the_queue_schedules_backfills_and_retries(production):
    instance, url, tmp_path = production
    log = tmp_path / "daemon.log"
    sensor = "dagster/sensor_name"
    # the landing sensor ticks (RUNNING by default): every declared source becomes a partition and is ingested
    wait_until(
        lambda: finished(instance, "notes", 1, sensor) and finished(instance, "memos", 1, sensor), "sensor", [], 300
    )
    sensed = runs_of(instance, "notes", sensor) + runs_of(instance, "memos", sensor)
    assert {r.status for r in sensed} == {dg.DagsterRunStatus.SUCCESS}
    sensor_ticks = [
        t for t in instance.get_ticks(*_origin(instance, "corpus_landing_sensor")) if t.status.value == "SUCCESS"
    ]
    assert sensor_ticks, log.read_text()[-3000:]

    # the source whose file is gone fails, and the daemon retries it once (a new run, dagster/retry_number 1)
    def retried() -> list[dg.DagsterRun]:
        return [r for r in runs_of(instance, "gone") if r.tags.get("dagster/retry_number") == "1" and r.is_finished]

    wait_until(lambda: bool(retried()), "the retry of the failed run", [], 300)
    retry = retried()[0]
    parent = instance.get_run_by_id(retry.parent_run_id)
    assert parent.status == retry.status == dg.DagsterRunStatus.FAILURE and "dagster/retry_number" not in parent.tags

    # the corpus build schedule (every minute here) ticks and requests a run per registered source
    schedule = "dagster/schedule_name"
    wait_until(lambda: finished(instance, "memos", 1, schedule), "a scheduled run", [], 180)
    ticks = instance.get_ticks(*_origin(instance, "daily_corpus_build"))
    assert any(t.status.value == "SUCCESS" and t.run_ids for t in ticks), log.read_text()[-3000:]
    assert runs_of(instance, "memos", schedule)[0].status == dg.DagsterRunStatus.SUCCESS

    # a partition backfill through GraphQL, as the UI launches it: the daemon queues one run per partition
    corpus = [{"path": ["corpus", "documents"]}, {"path": ["corpus", "rejects"]}]  # one multi-asset
    params = {"assetSelection": corpus, "partitionNames": ["notes", "memos"]}
    launched = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = graphql(url, STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]
        if status["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"):
            break
        time.sleep(3)
    assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status
    assert {r["status"] for r in status["runs"]} == {"SUCCESS"} and len(status["runs"]) == 2
    events = instance.fetch_materializations(DOCUMENTS, limit=20).records
    assert {e.partition_key for e in events} >= {"notes", "memos"} and len(events) >= 4  # sensor + backfill


def _origin(instance, name: str) -> tuple[str, str]:
    states = [s for s in instance.all_instigator_state() if s.name == name]
    assert states, f"{name} never ran"
    return states[0].instigator_origin_id, states[0].selector_id
