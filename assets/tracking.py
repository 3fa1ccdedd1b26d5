"""MLflow bookkeeping shared by the pilot and law assets: one MLflow run per Dagster partition, tagged for lineage."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from assets.resources import MlflowResource
from cpt.lineage.code import code_record

PARAM_LIMIT = 6000  # MLflow's limit on a parameter value's length


@dataclass(frozen=True)
class TrackedRun:
    experiment_id: str
    run_id: str


def lineage_tags(
    context: dg.AssetExecutionContext,
    input_versions: Mapping[str, int | None],
    mlflow: MlflowResource | None = None,
    **extra: str,
) -> dict:
    """Tags that tie an MLflow run back to Dagster: run id (and its URL in the Dagster UI, where configured), asset,
    partition, input Delta versions, the code version."""
    tags = {
        "dagster.run_id": context.run.run_id,
        "dagster.asset_key": context.asset_key.to_user_string(),
        "dagster.partition": context.partition_key if context.has_partition_key else "",
        "dagster.job": context.run.job_name,
    }
    tags |= {f"delta.{name}.version": str(v) for name, v in input_versions.items()}
    code = code_record()
    tags |= {"cptdata.git_commit": str(code["git_commit"]), "cptdata.git_dirty": str(code["git_dirty"])}
    url = mlflow.dagster_run_url(context.run.run_id) if mlflow is not None else None
    if url:
        tags["dagster.run_url"] = url
    return tags | {k: str(v) for k, v in extra.items()}


def start_run(mlflow: MlflowResource, stage: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]):
    """A new MLflow run in ``<prefix>/<stage>`` with its tags and (flattened) params logged."""
    from mlflow.entities import Param

    client = mlflow.client()
    experiment_id = mlflow.experiment_id(stage)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    flat = [Param(k, str(v)[:PARAM_LIMIT]) for k, v in sorted(_flatten(params).items())]
    try:
        for i in range(0, len(flat), 100):  # MLflow accepts at most 100 params per batch
            client.log_batch(run.info.run_id, params=flat[i : i + 100])
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return TrackedRun(experiment_id, run.info.run_id)


def log_metrics(mlflow: MlflowResource, run: TrackedRun, rows: Iterable[Mapping[str, float]], step_key: str) -> None:
    """Each row is one step: every other numeric field becomes the metric of that name at ``row[step_key]``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, int(row[step_key]))
        for row in rows
        for key, value in row.items()
        if key != step_key and isinstance(value, (int, float)) and value == value  # NaN is not logged
    ]
    client = mlflow.client()
    for i in range(0, len(metrics), 1000):
        client.log_batch(run.run_id, metrics=metrics[i : i + 1000])


def finish(mlflow: MlflowResource, run: TrackedRun, ok: bool) -> None:
    mlflow.client().set_terminated(run.run_id, "FINISHED" if ok else "FAILED")


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= _flatten(value, f"{name}.")
        else:
            out[name] = value
    return out
