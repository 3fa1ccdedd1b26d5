"""deploy/dagster.yaml is a working production instance: PostgreSQL storage holds the runs of a real ingestion."""

import json
import os
import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest

from assets.partitions import corpus_sources
from orchestration.definitions import build_definitions

REPO = Path(__file__).resolve().parents[2]
PG = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("PGUSER", "postgres"), "dbname": "test"}


@pytest.fixture
def postgres_database():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(**PG, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI") or os.environ.get("CPTDATA_CLUSTER_TESTS") == "1":  # required there, not skipped
            raise
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({exc})")
    admin.autocommit = True
    name = f"cptdata_test_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_ingestion_runs_on_the_postgres_instance(tmp_path, monkeypatch, postgres_database):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for key, value in {
        "HOST": PG["host"],
        "PORT": str(PG["port"]),
        "USER": PG["user"],
        "PASSWORD": "x",
        "DB": postgres_database,
    }.items():
        monkeypatch.setenv(f"DAGSTER_PG_{key}", value)
    source = tmp_path / "notes.jsonl"
    source.write_text("\n".join(json.dumps({"id": i, "text": f"note {i}"}) for i in range(20)))
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([{"name": "notes", "path": str(source), "format": "jsonl", "role": "general"}]))
    defs = build_definitions({"CPTDATA_HOME": str(tmp_path / "data"), "CPTDATA_SOURCES": str(sources)})

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions(corpus_sources.name, ["notes"])
        result = defs.resolve_job_def("ingest_corpus").execute_in_process(partition_key="notes", instance=instance)
        assert result.success
        [run] = instance.get_runs()
        assert run.run_id == result.run_id and run.tags["dagster/partition"] == "notes"
        record = instance.get_latest_materialization_event(dg.AssetKey(["corpus", "documents"]))
        assert record.asset_materialization.metadata["dagster/row_count"].value == 20
