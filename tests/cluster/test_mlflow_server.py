"""The MLflow server of ``deploy/mlflow-server.sh`` (PostgreSQL backend store, a folder as artifact root) on loopback,
started here and stopped by PID: the CMR fit is logged and registered through it, and its champion is served from it.
Run when ``CPTDATA_CLUSTER_TESTS=1`` (CI sets it) and PostgreSQL answers on 127.0.0.1:5432.
"""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest

from assets.law_publishing import CHAMPION
from assets.laws import cmr
from assets.pilots import MIXTURE_RUNS_TABLE
from assets.resources import DeltaStoreResource, MlflowResource
from cpt.delta_store import DeltaStore
from tests.assets.test_law_assets import CMR_CONFIG, COMMIT, mixture_rows
from tests.cluster.test_spark_cluster import free_port, port_open, stop_group, wait_until
from tests.orchestration.test_production_instance import PG, postgres_database  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("CPTDATA_CLUSTER_TESTS") != "1",
        reason="starts an MLflow server on PostgreSQL; set CPTDATA_CLUSTER_TESTS=1",
    ),
]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def mlflow_server(tmp_path, postgres_database):  # noqa: F811
    port = free_port()
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{postgres_database}",
        "MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"),
        "MLFLOW_PORT": str(port),
    }
    log = open(tmp_path / "mlflow.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        ["bash", str(REPO / "deploy" / "mlflow-server.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: port_open(port), "the MLflow server", [proc], timeout=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


def test_a_fit_is_logged_registered_and_served_through_the_server(tmp_path, mlflow_server, monkeypatch):
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set_tracking_uri below sets them: undone after
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    store = DeltaStore(str(tmp_path / "delta"))
    store.overwrite(MIXTURE_RUNS_TABLE, mixture_rows(2), COMMIT, predicate=None)
    resources = {
        "delta": DeltaStoreResource(root_uri=str(store.root_uri)),
        "mlflow": MlflowResource(tracking_uri=mlflow_server, ui_url=mlflow_server),
    }
    result = dg.materialize([cmr], resources=resources, run_config={"ops": {"laws__cmr": {"config": CMR_CONFIG}}})
    assert result.success
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("cptdata-cmr-law", CHAMPION)
    assert version.tags["cptdata.gate"] == "passed"
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dagster.run_id"] == result.run_id
    served = mlflow.pyfunc.load_model(f"models:/cptdata-cmr-law@{CHAMPION}")  # artifacts through the server
    answer = served.predict(pd.DataFrame({"tokens": [4e9]})).iloc[0]
    meta = result.asset_materializations_for_node("laws__cmr")[0].metadata
    assert answer["cmr"] == pytest.approx(meta["answer_detail"].value["ratio"])
    assert meta["mlflow_run"].value.startswith(f"{mlflow_server}/#/experiments/")  # a link into the server's UI
