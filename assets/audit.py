"""Stage ``audit``: the lineage report of every dataset version, for data governance.

``audit/lineage_report`` holds one row per reported table version (the dataset's, by default every version not yet
reported and the latest): the report as JSON and Markdown (:mod:`cpt.lineage.report`) — every upstream table
version with its commits, the source files with their SHA-256, the base model and its file hashes, each fit's MLflow
run, registered model version and gate, the Dagster runs and the code (git commit, packages). A report is made from
the immutable Delta log, so the report of a version never changes; rerunning replaces its row with the same content.
``cptdata audit`` prints the same report for any table version, and the reverse query (what was built from a file
or a table version).
"""

import hashlib
import json
from typing import Any

import dagster as dg
import pyarrow as pa

from assets.dataset import CPT_MIXTURE
from assets.law_publishing import FITS_TABLE, fit_partition
from assets.lineage import commit_info, delta_metadata, governance
from assets.resources import DeltaStoreResource, MlflowResource
from cpt.delta_store import DeltaStore, partition_predicate
from cpt.lineage.report import build_report, to_markdown
from spark_jobs.dataset import DATASET_TABLE

LINEAGE_REPORT = dg.AssetKey(["audit", "lineage_report"])
REPORTS_TABLE = "audit/lineage_report"
REPORTS_SCHEMA = pa.schema(
    [
        pa.field("subject_table", pa.string(), metadata={"description": "the table the report is about"}),
        pa.field("subject_version", pa.int64(), metadata={"description": "the version of that table"}),
        pa.field("report_sha256", pa.string(), metadata={"description": "SHA-256 of report_json"}),
        pa.field("report_json", pa.string(), metadata={"description": "the report (cptdata-lineage-report/1)"}),
        pa.field("report_markdown", pa.string(), metadata={"description": "the report for people"}),
        pa.field("upstream_tables", pa.int64(), metadata={"description": "table versions it was built from"}),
        pa.field("source_files", pa.int64(), metadata={"description": "source files it was built from"}),
        pa.field("fits", pa.int64(), metadata={"description": "law fits it was built on"}),
        pa.field("dagster_runs", pa.int64(), metadata={"description": "Dagster runs that wrote its lineage"}),
    ]
)


def fit_describer(store: DeltaStore):
    """``(laws/fits version, partitions) → [fit]``: each fit's answer basis, gate, MLflow run and registered model
    version, as its row of ``laws/fits`` recorded them."""

    def describe(version: int, parts: list[str]) -> list[dict[str, Any]]:
        rows = store.read(FITS_TABLE, version).to_pylist()
        chosen = [r for r in rows if not parts or fit_partition(r["law"], r["fit_key"]) in parts]
        return [_fit(r) for r in sorted(chosen, key=lambda r: (r["law"], r["fit_key"]))]

    return describe


def _fit(row: dict) -> dict[str, Any]:
    gate = json.loads(row.get("gate") or "{}")
    answer = json.loads(row.get("answer") or "{}")
    fit = {
        "law": row["law"],
        "fit_key": row["fit_key"],
        "basis": answer.get("basis"),
        "gate_passed": bool(gate.get("passed")),
        "gate_problems": gate.get("problems") or [],
        "promoted": bool(row.get("promoted")),
        "mlflow_run_id": row["mlflow_run_id"],
        "registered_model": f"models:/{row['registered_model']}/{row['model_version']}",
        "dagster_run_id": row["dagster_run_id"],
        "fitted_at": row["fitted_at"].isoformat() if row.get("fitted_at") else None,
        "inputs": json.loads(row.get("input_versions") or "{}"),
    }
    return fit


def _registry(mlflow: MlflowResource, fit: dict) -> dict[str, Any]:
    """What MLflow holds of a fit now: its run's status and the gate tag of its registered version."""
    try:
        client = mlflow.client()
        status = client.get_run(fit["mlflow_run_id"]).info.status
    except Exception:  # a run that is gone, or a server that is down: said, not hidden
        return {"mlflow_status": "not found"}
    try:
        name, version = fit["registered_model"].removeprefix("models:/").rsplit("/", 1)
        tags = client.get_model_version(name, version).tags
        return {"mlflow_status": status, "registry_gate": tags.get("cptdata.gate")}
    except Exception:
        return {"mlflow_status": status, "registry_gate": "not registered"}


def report_for(store: DeltaStore, mlflow: MlflowResource | None, table: str, version: int) -> dict[str, Any]:
    """The lineage report of ``table@version`` (made from the Delta log: the same whenever it is made) and, under
    ``registry``, what MLflow says of its fits now (not recorded: it may change)."""
    report = build_report(store, table, version, fit_describer(store), fits_table=FITS_TABLE)
    if mlflow is not None:
        report["registry"] = {f["fit_key"]: _registry(mlflow, f) for f in report["fits"]}
    return report


def _row(report: dict[str, Any]) -> dict[str, Any]:
    """The stored report: what the log says, without the registry's live status (which may change)."""
    report = {k: v for k, v in report.items() if k != "registry"}
    text = json.dumps(report, sort_keys=True, default=str)
    return {
        "subject_table": report["subject"]["table"],
        "subject_version": report["subject"]["version"],
        "report_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "report_json": text,
        "report_markdown": to_markdown(report),
        "upstream_tables": sum(len(v) for v in report["lineage"]["tables"].values()),
        "source_files": len(report["lineage"]["files"]),
        "fits": len(report["fits"]),
        "dagster_runs": len(report["dagster_runs"]),
    }


def _reported(store: DeltaStore, table: str) -> set[int]:
    if not store.exists(REPORTS_TABLE):
        return set()
    rows = store.read(REPORTS_TABLE, columns=["subject_version"], filters=[("subject_table", "=", table)])
    return set(rows["subject_version"].to_pylist())


@dg.asset(
    key=LINEAGE_REPORT,
    deps=[CPT_MIXTURE],
    group_name="audit",
    kinds={"delta", "python"},
    code_version="lineage-report-v1",
    **governance("audit", REPORTS_SCHEMA),
    description="One lineage report per dataset version: every upstream table version and its commits, the "
    "source files (SHA-256, size, mtime), the base model and its file hashes, each fit's MLflow run, registered "
    "model version and gate, the Dagster runs and the code — as JSON and Markdown. `cptdata audit` prints it.",
)
def lineage_report(
    context: dg.AssetExecutionContext, delta: DeltaStoreResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    store = delta.store()
    latest = store.version(DATASET_TABLE)
    if latest is None:
        raise dg.Failure(f"{DATASET_TABLE} does not exist yet: build the dataset first")
    built = [int(h["version"]) for h in store.history(DATASET_TABLE) if h.get("cptdata.build")]
    todo = sorted((set(built) - _reported(store, DATASET_TABLE)) | {latest})
    rows, version = [], None
    for subject in todo:
        row = _row(report_for(store, mlflow, DATASET_TABLE, subject))
        commit = commit_info(context, LINEAGE_REPORT, {"subject": subject}, {DATASET_TABLE: subject})
        predicate = partition_predicate({"subject_table": DATASET_TABLE, "subject_version": subject})
        version = store.overwrite(
            REPORTS_TABLE, pa.Table.from_pylist([row], schema=REPORTS_SCHEMA), commit, predicate=predicate
        )
        rows.append(row)
        context.log.info(
            f"lineage of {DATASET_TABLE} v{subject}: {row['upstream_tables']} upstream table versions, "
            f"{row['source_files']} source files, {row['fits']} fits, {row['dagster_runs']} Dagster runs"
        )
    last = rows[-1]
    assert version is not None
    return dg.MaterializeResult(
        metadata=delta_metadata(
            store.table_uri(REPORTS_TABLE), version, REPORTS_SCHEMA, store.read(REPORTS_TABLE, version).num_rows
        )
        | {
            "reported_versions": dg.MetadataValue.json(todo),
            "latest_report": dg.MetadataValue.md(last["report_markdown"][:60_000]),
            "report_sha256": last["report_sha256"],
            "upstream_tables": last["upstream_tables"],
            "source_files": last["source_files"],
        }
    )
