"""The production Dagster instance as it runs: ``dagster-daemon`` and ``dagster-webserver`` on loopback against
PostgreSQL (``deploy/dagster.yaml`` and ``deploy/workspace.yaml``), each started here and stopped by PID.

The landing sensor ticks and ingests the declared sources through the run queue; the corpus build schedule (set to
every minute) ticks and requests its runs; a run that fails is retried once by the daemon; a partition backfill of
``corpus/documents`` launched through GraphQL completes.
Run when ``CPTDATA_CLUSTER_TESTS=1`` (CI sets it) and PostgreSQL answers on 127.0.0.1:5432.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from deploy.backfill_pilots import DONE, LAUNCH, STATUS, graphql
from tests.cluster.test_spark_cluster import free_port, port_open, stop_group, wait_until
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


@contextlib.contextmanager
def production_instance(tmp_path, database, monkeypatch, sources: list[dict], extra_env: dict):
    """deploy/dagster.yaml on PostgreSQL database ``database``, with the daemon and webserver running on it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    (tmp_path / "sources.json").write_text(json.dumps(sources))
    # not the MLflow a previous test pointed this process at (mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI)
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        | {
            "DAGSTER_HOME": str(home),
            "CPTDATA_HOME": str(tmp_path / "data"),
            "CPTDATA_SOURCES": str(tmp_path / "sources.json"),
            "DAGSTER_PG_HOST": PG["host"],
            "DAGSTER_PG_PORT": str(PG["port"]),
            "DAGSTER_PG_USER": PG["user"],
            "DAGSTER_PG_PASSWORD": "x",
            "DAGSTER_PG_DB": database,
            "SPARK_LOCAL_IP": "127.0.0.1",
        }
        | extra_env
    )
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
            yield instance, f"http://127.0.0.1:{port}", env
    finally:
        for proc in procs:
            stop_group(proc)


@pytest.fixture
def production(tmp_path, postgres_database, monkeypatch):  # noqa: F811
    sources = []
    for name, n in (("notes", 20), ("memos", 12)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps({"id": i, "text": f"{name} {i}: some words"}) for i in range(n)))
        sources.append({"name": name, "path": str(path), "format": "jsonl", "role": "general"})
    sources.append({"name": "gone", "path": str(tmp_path / "gone.jsonl"), "format": "jsonl", "role": "general"})
    every_minute = {"CPTDATA_CORPUS_BUILD_CRON": "* * * * *", "CPTDATA_CORPUS_BUILD_ON": "true"}
    with production_instance(tmp_path, postgres_database, monkeypatch, sources, every_minute) as (instance, url, _):
        yield instance, url, tmp_path


def finished_backfill(url: str, backfill_id: str, timeout: float) -> dict:
    """The backfill's status once it has ended (or when ``timeout`` seconds have passed)."""
    deadline = time.monotonic() + timeout
    while True:
        status = graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if status["status"] in DONE or time.monotonic() > deadline:
            return status
        time.sleep(3)


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
    status = finished_backfill(url, launched["backfillId"], timeout=300)
    assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status
    assert {r["status"] for r in status["runs"]} == {"SUCCESS"} and len(status["runs"]) == 2
    events = instance.fetch_materializations(DOCUMENTS, limit=20).records
    assert {e.partition_key for e in events} >= {"notes", "memos"} and len(events) >= 4  # sensor + backfill


def _origin(instance, name: str) -> tuple[str, str]:
    states = [s for s in instance.all_instigator_state() if s.name == name]
    assert states, f"{name} never ran"
    return states[0].instigator_origin_id, states[0].selector_id


def test_a_pilot_backfill_runs_through_the_queue_one_at_a_time_in_the_training_pool(
    tmp_path,
    postgres_database,  # noqa: F811 (the fixture)
    monkeypatch,
    corpora_dir,
):
    from orchestration.cli import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
    from orchestration.definitions import build_definitions
    from tests.assets.test_pilot_assets import PILOT, run, slice_of

    slices = [
        ("dom", "med_medquad.jsonl.gz", "domain", "by_group", 120),
        ("dom_eval", "med_abstracts_tc_test.jsonl.gz", "domain", "eval", 12),
        ("gen", "gen_austen.jsonl.gz", "general", "train", 60),
        ("gen_eval", "gen_sotu.jsonl.gz", "general", "eval", 6),
    ]
    sources = [
        {"name": n, "path": slice_of(corpora_dir, f, tmp_path / f"{n}.jsonl", k), "format": "jsonl", "role": r}
        | {"split": s}
        | ({"eval_fraction": 0.15} if s == "by_group" else {})
        for n, f, r, s, k in slices
    ]
    small = {"CPTDATA_PRETRAIN_TOKENS": "8192"}
    with production_instance(tmp_path, postgres_database, monkeypatch, sources, small) as (instance, url, env):
        names = [n for n, *_ in slices]
        sensor = "dagster/sensor_name"
        wait_until(lambda: all(finished(instance, n, 1, sensor) for n in names), "the sensor's ingestion", [], 300)
        defs = build_definitions(env)  # the upstream of the pilots, on the same instance and tables
        run(defs, "base_model", instance)
        tags = {ASSET_PARTITION_RANGE_START_TAG: names[0], ASSET_PARTITION_RANGE_END_TAG: names[-1]}
        run(defs, "score_corpus", instance, tags=tags)
        run(defs, "landscape", instance)
        instance.event_log_storage.set_concurrency_slots("cpt_training", 1)  # one training step at a time

        keys = ["window-c0.35-w0.20|small", "window-c0.50-w0.20|small"]
        config = {"ops": {"pilots__regime_runs": {"config": PILOT | {"size_tokens": {"small": 300, "large": 900}}}}}
        params = {"assetSelection": [{"path": ["pilots", "regime_runs"]}], "partitionNames": keys}
        launched = graphql(url, LAUNCH, {"params": params | {"runConfigData": config}})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        status = finished_backfill(url, launched["backfillId"], timeout=400)
        assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status
        assert {r["status"] for r in status["runs"]} == {"SUCCESS"} and len(status["runs"]) == 2
        steps = sorted(
            (s.start_time, s.end_time) for r in status["runs"] for s in instance.get_run_step_stats(r["runId"])
        )
        assert len(steps) == 2 and steps[0][1] <= steps[1][0]  # the pool let one training step run at a time
