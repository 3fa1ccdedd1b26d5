"""The deployment files at the configuration level: every UI on loopback only, credentials only from the environment
or a secret, the production instance with its queue, pools and run retries."""

import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SECRET_KEYS = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|STORAGE_OPTIONS|TRACKING_URI$", re.IGNORECASE)


def test_compose_publishes_only_on_loopback_and_takes_credentials_from_the_environment():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "mlflow", "code-location", "webserver", "daemon", "spark-master", "spark-connect"} <= set(
        services
    )
    assert sum(name.startswith("spark-worker") for name in services) == 2
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEYS.search(key) and key != "MLFLOW_TRACKING_URI":
                assert "${" in str(value), f"{name}: {key} is written in the file, not taken from the environment"
    assert "${POSTGRES_PASSWORD:?" in (DEPLOY / "compose.yaml").read_text()  # no default password


def test_helm_values_keep_the_webserver_internal_and_credentials_in_a_secret():
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    assert values["dagsterDaemon"]["runRetries"] == {"enabled": True, "maxRetries": 1}
    assert values["global"]["postgresqlSecretName"] == "cptdata-secrets"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["envSecrets"] == [{"name": "cptdata-secrets"}]
    assert not any(SECRET_KEYS.search(e["name"]) for e in deployment["env"])  # secrets only through envSecrets
    assert "postgresqlPassword" not in values["postgresql"]


def test_the_production_instance_queues_runs_retries_them_and_limits_pools():
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert instance["run_retries"] == {"enabled": True, "max_retries": 1}
    assert instance["concurrency"]["pools"]["default_limit"] >= 1
    db = instance["storage"]["postgres"]["postgres_db"]
    assert all(isinstance(v, dict) and set(v) == {"env"} for v in db.values())  # every connection setting from env
