"""Secrets (Delta storage credentials, an MLflow tracking URI with a password, a Spark Connect token) reach the
resources only as ``dg.EnvVar``: the UI and GraphQL show the variable's name, never the value, and runs still get it."""

from __future__ import annotations

import json
import os

import dagster as dg
import pytest
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster_graphql.test.utils import execute_dagster_graphql, infer_job_selector, infer_repository_selector

from assets.resources import DeltaStoreResource, MlflowResource
from orchestration.cli import EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, main
from orchestration.definitions import build_definitions
from orchestration.settings import ConfigError, load_settings
from tests.reliability.test_cli_exit_codes import cli_env_fixture  # noqa: F401 (the cli_env fixture)

SECRETS = ["AKIAEXAMPLEKEYID42", "wJalrXUtnFEMI-s3cr3t", "pa55w0rd-x9", "sparkTok3n-77", "olApiK3y-5150"]
STORAGE_OPTIONS = {"AWS_ACCESS_KEY_ID": SECRETS[0], "AWS_SECRET_ACCESS_KEY": SECRETS[1], "AWS_REGION": "eu-west-1"}
TRACKING_URI = f"http://alice:{SECRETS[2]}@mlflow.internal:5000"
CONNECT_URL = f"sc://spark.internal:15002/;token={SECRETS[3]}"


@pytest.fixture
def cluster_env(tmp_path, monkeypatch) -> dict[str, str]:
    env = {
        "CPTDATA_PROFILE": "cluster",
        "CPTDATA_HOME": str(tmp_path / "home"),
        "CPTDATA_DELTA_ROOT": "s3://bucket/cptdata",
        "CPTDATA_DELTA_STORAGE_OPTIONS": json.dumps(STORAGE_OPTIONS),
        "MLFLOW_TRACKING_URI": TRACKING_URI,
        "CPTDATA_SPARK_CONNECT": CONNECT_URL,
        "CPTDATA_BASE_MODEL": "/models/base",
        "CPTDATA_OPENLINEAGE_URL": "http://marquez.internal:5000",
        "CPTDATA_OPENLINEAGE_API_KEY": SECRETS[4],
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


RESOURCES_QUERY = """
query Resources($repo: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $repo) {
    __typename
    ... on ResourceDetailsList {
      results {
        name
        configuredValues { key value type }
        configFields { name defaultValueAsJson }
        nestedResources { name type }
      }
    }
    ... on PythonError { message }
  }
  repositoryOrError(repositorySelector: $repo) {
    ... on Repository { name displayMetadata { key value } }
  }
}
"""
RUN_CONFIG_QUERY = """
query RunConfig($job: PipelineSelector!) {
  runConfigSchemaOrError(selector: $job) {
    __typename
    ... on RunConfigSchema {
      rootDefaultYaml
      allConfigTypes { key ... on CompositeConfigType { fields { name defaultValueAsJson } } }
    }
  }
}
"""


def test_graphql_shows_env_var_names_and_never_a_secret(cluster_env):
    """What the UI's Resources page and launchpad read: no secret substring anywhere in the responses."""
    origin = LoadableTargetOrigin(module_name="orchestration.definitions", working_directory=os.getcwd())
    with dg.instance_for_test() as instance, in_process_test_workspace(instance, origin) as context:
        repo = infer_repository_selector(context)
        resources = execute_dagster_graphql(context, RESOURCES_QUERY, {"repo": repo})
        assert not resources.errors
        jobs = [
            execute_dagster_graphql(context, RUN_CONFIG_QUERY, {"job": infer_job_selector(context, job)})
            for job in ("ingest_corpus", "score_corpus", "fit_laws")
        ]
    dumped = json.dumps([resources.data, *(j.data for j in jobs)])
    leaked = [s for s in SECRETS if s in dumped]
    assert not leaked, f"secrets shown by GraphQL: {leaked}"

    results = resources.data["allTopLevelResourceDetailsOrError"]["results"]
    configured = {(r["name"], v["key"]): (v["type"], v["value"]) for r in results for v in r["configuredValues"]}
    assert configured[("delta", "storage_options_json")] == ("ENV_VAR", "CPTDATA_DELTA_STORAGE_OPTIONS")
    assert configured[("mlflow", "tracking_uri")] == ("ENV_VAR", "MLFLOW_TRACKING_URI")
    assert configured[("spark", "connect_url")] == ("ENV_VAR", "CPTDATA_SPARK_CONNECT")
    assert configured[("spark", "storage_options_json")] == ("ENV_VAR", "CPTDATA_DELTA_STORAGE_OPTIONS")
    assert configured[("delta", "openlineage_api_key")] == ("ENV_VAR", "CPTDATA_OPENLINEAGE_API_KEY")
    assert all(j.data["runConfigSchemaOrError"]["__typename"] == "RunConfigSchema" for j in jobs)


def test_runs_resolve_the_real_secret_values(cluster_env):
    defs = build_definitions(os.environ)
    resources = {k: defs.resources[k] for k in ("delta", "mlflow", "spark")}
    with dg.build_resources(resources) as live:
        assert live.delta.store().storage_options == STORAGE_OPTIONS  # what delta-rs is given
        assert live.mlflow.tracking_uri == TRACKING_URI
        assert live.spark.settings().connect_url == CONNECT_URL
        assert live.spark.settings().storage_options == STORAGE_OPTIONS  # the executors' S3A credentials
        assert not any(secret in repr(live.spark.settings()) for secret in SECRETS)
        emitter = live.delta.store().on_commit  # OpenLineage events go to the endpoint with the real key
        assert emitter.url == "http://marquez.internal:5000" and emitter._api_key == SECRETS[4]


def test_secret_settings_are_validated_without_echoing_them(cluster_env, monkeypatch, capsys):
    cases = {
        "CPTDATA_DELTA_STORAGE_OPTIONS": '{"AWS_SECRET_ACCESS_KEY": "' + SECRETS[1] + '"',  # truncated JSON
        "MLFLOW_TRACKING_URI": " ",
        "CPTDATA_SPARK_CONNECT": f"http://{SECRETS[3]}@spark",
    }
    for name, bad in cases.items():
        with pytest.raises(ConfigError) as err:
            load_settings({**cluster_env, name: bad})
        assert str(err.value).startswith(f"{name} (value hidden): ")
        assert not [s for s in SECRETS if s in str(err.value)]
    with pytest.raises(ConfigError, match="'AWS_ACCESS_KEY_ID' must be strings") as err:
        load_settings({**cluster_env, "CPTDATA_DELTA_STORAGE_OPTIONS": json.dumps({"AWS_ACCESS_KEY_ID": 123456789})})
    assert "123456789" not in str(err.value)

    monkeypatch.setenv("CPTDATA_DELTA_STORAGE_OPTIONS", cases["CPTDATA_DELTA_STORAGE_OPTIONS"])
    assert main(["register"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "CPTDATA_DELTA_STORAGE_OPTIONS (value hidden)" in err and SECRETS[1] not in err


def test_run_links_and_cli_runs_never_record_a_secret(cli_env, monkeypatch, capsys):
    link = MlflowResource(tracking_uri=TRACKING_URI).run_link("7", "abc123")  # no UI URL: the text fallback
    assert SECRETS[2] not in link.value and "mlflow.internal:5000" in link.value

    # An ingest with a secret-bearing MLflow URI in the environment: nothing the instance stores holds it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", TRACKING_URI)
    assert main(["ingest", "notes"]) == EXIT_OK
    assert SECRETS[2] not in capsys.readouterr().out
    with dg.DagsterInstance.from_config(str(cli_env["dagster"])) as instance:
        [run] = instance.get_runs()
        stored = json.dumps([run.run_config, run.tags]) + "".join(repr(e) for e in instance.all_logs(run.run_id))
        assert stored and SECRETS[2] not in stored


def test_cli_error_lines_hide_secret_values(cli_env, monkeypatch, capsys):
    """An error that quotes a secret (a client library printing the URI it failed to reach) is printed redacted in
    the CLI's own lines. (Dagster's console log and event log keep a step's error message as raised.)"""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", TRACKING_URI)
    monkeypatch.setenv("CPTDATA_DELTA_STORAGE_OPTIONS", json.dumps(STORAGE_OPTIONS))  # ignored by quickstart

    def unreachable(self):
        raise dg.Failure(f"cannot reach {TRACKING_URI} with key {SECRETS[0]}")

    monkeypatch.setattr(DeltaStoreResource, "store", unreachable)
    assert main(["ingest", "notes"]) == EXIT_RUN_FAILED
    out = capsys.readouterr()
    cli_lines = [line for line in (out.out + out.err).splitlines() if line.startswith(("[cptdata]", "cptdata:"))]
    failed = [line for line in cli_lines if "FAILED" in line]
    assert failed and "cannot reach ***" in failed[0]
    assert not [s for s in SECRETS if s in "\n".join(cli_lines)]

    def broken(defs, instance):
        raise RuntimeError(f"registry at {TRACKING_URI} refused")

    monkeypatch.setattr("orchestration.cli.register", broken)
    assert main(["register"]) == EXIT_RUN_FAILED
    err = capsys.readouterr().err
    assert "RuntimeError: registry at *** refused" in err and SECRETS[2] not in err
