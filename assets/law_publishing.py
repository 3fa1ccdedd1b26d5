"""Where a law fit goes: one MLflow run (params, metrics, result JSON, plots, the pyfunc model), the model registry
(every fit registered with its gate status as tags; the ``champion`` alias moves only on a passing fit), and one row
of the Delta table ``laws/fits`` that a rerun on the same inputs and config replaces."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from assets.lineage import commit_info
from assets.resources import MlflowResource
from assets.tracking import TrackedRun, finish, lineage_tags, log_metrics, start_run
from cpt.delta_store import DeltaStore, partition_predicate
from cpt.hashing import config_hash
from cpt.laws.gates import GateResult

FITS_TABLE = "laws/fits"
CHAMPION = "champion"  # the alias served models and the README load: models:/<name>@champion

FITS_SCHEMA = pa.schema(
    [
        pa.field("law", pa.string()),  # ppl_law | cmr
        pa.field("fit_key", pa.string()),  # hash of (inputs, config): a rerun on the same inputs replaces its row
        pa.field("params", pa.string()),  # JSON: the fitted coefficients
        pa.field("quality", pa.string()),  # JSON: R², RMSE, held-out errors, null comparison, convergence
        pa.field("result", pa.string()),  # JSON: the full typed result
        pa.field("config", pa.string()),  # JSON: the fit options
        pa.field("input_versions", pa.string()),  # JSON: Delta versions of the tables read
        pa.field("mlflow_run_id", pa.string()),
        pa.field("registered_model", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("dagster_run_id", pa.string()),
        pa.field("answer", pa.string()),  # JSON: the answer a user acts on, with its basis
        pa.field("gate", pa.string()),  # JSON: the blocking gate: passed, problems, values
        pa.field("promoted", pa.bool_()),  # the registered version became the champion
        pa.field("fitted_at", pa.timestamp("us", tz="UTC")),  # when: the newest row of a law is its current fit
    ]
)


@dataclass(frozen=True)
class FitOutput:
    """What one fit publishes (``kind``: ppl | cmr picks the pyfunc model)."""

    law: str
    kind: str
    params: dict
    quality: dict
    result: dict
    answer: dict
    summary: str  # the answer in one line
    gate: GateResult
    plots: dict[str, bytes]


@dataclass(frozen=True)
class Published:
    run: TrackedRun
    model_version: str
    promoted: bool
    delta_version: int


def publish(
    context: dg.AssetExecutionContext,
    store: DeltaStore,
    mlflow: MlflowResource,
    out: FitOutput,
    config: dg.Config,
    registered_model: str,
    inputs: dict[str, int],
) -> Published:
    fit_key = config_hash({"law": out.law, "inputs": inputs, "config": config.model_dump()})
    result = json.dumps(out.result, default=str)
    earlier = _registered_version(store, fit_key, result)
    run, version = _track(context, mlflow, out, config, inputs, None if earlier else registered_model)
    version = earlier or version
    promoted = _promote(mlflow, registered_model, version, out.gate, str(out.answer.get("basis", "")))
    row = {
        "law": out.law,
        "fit_key": fit_key,
        "params": json.dumps(out.params, default=str),
        "quality": json.dumps(out.quality, default=str),
        "result": result,
        "config": json.dumps(config.model_dump()),
        "input_versions": json.dumps(inputs),
        "mlflow_run_id": run.run_id,
        "registered_model": registered_model,
        "model_version": version,
        "dagster_run_id": context.run.run_id,
        "answer": json.dumps(out.answer, default=str),
        "gate": json.dumps(out.gate.to_json(), default=str),
        "promoted": promoted,
        "fitted_at": datetime.now(UTC),
    }
    commit = commit_info(context, context.asset_key, config.model_dump(), inputs)
    predicate = fit_partition(out.law, fit_key)
    table = pa.Table.from_pylist([row], schema=FITS_SCHEMA)
    delta_version = store.overwrite(FITS_TABLE, table, commit, predicate=predicate, add_columns=True)
    return Published(run, version, promoted, delta_version)


def fit_partition(law: str, fit_key: str) -> str:
    """The predicate that scopes one fit's row of ``laws/fits``: its partition key in the table's lineage."""
    return partition_predicate({"law": law, "fit_key": fit_key})


def _track(context, mlflow: MlflowResource, out: FitOutput, config, inputs, register_as: str | None):
    """One MLflow run holding the fit; registers its pyfunc model under ``register_as`` (None: an identical fit is
    registered already). The run is finished FAILED if anything here fails."""
    import mlflow as mlflow_lib

    import cpt
    from cpt.laws.serving import CmrLawModel, PplLawModel

    params = {"options": config.model_dump(), "inputs": inputs}
    tags = lineage_tags(context, inputs, mlflow) | {"cptdata.gate": "passed" if out.gate.passed else "failed"}
    run = start_run(mlflow, "laws", out.law, tags, params)
    metrics = {k: float(v) for k, v in out.quality.items() if isinstance(v, int | float) and v is not None}
    ok, version = False, ""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fit_path = Path(tmp, "fit.json")
            fit_path.write_text(json.dumps(out.result, indent=2, default=str))
            for name, png in out.plots.items():
                Path(tmp, name).write_bytes(png)
            mlflow.client().log_artifacts(run.run_id, tmp)
            log_metrics(mlflow, run, [metrics | {"step": 0}], step_key="step")
            if register_as:
                mlflow_lib.set_tracking_uri(mlflow.tracking_uri)
                mlflow_lib.set_registry_uri(mlflow.registry_uri or mlflow.tracking_uri)
                with mlflow_lib.start_run(run_id=run.run_id):
                    info = mlflow_lib.pyfunc.log_model(
                        name=f"{out.kind}_law",
                        python_model=PplLawModel() if out.kind == "ppl" else CmrLawModel(),
                        artifacts={"fit": str(fit_path)},
                        code_paths=[str(Path(cpt.__file__).parent)],
                        signature=False,  # the model checks its columns itself and takes ints or floats
                        pip_requirements=_pip_requirements(),
                        registered_model_name=register_as,
                    )
                version = str(info.registered_model_version)
        ok = True
    finally:
        finish(mlflow, run, ok)
    return run, version


def _promote(mlflow: MlflowResource, name: str, version: str, gate: GateResult, basis: str) -> bool:
    """Tag the version with its gate status; point ``champion`` at it only when the gate passed."""
    client = mlflow.client()
    client.set_model_version_tag(name, version, "cptdata.gate", "passed" if gate.passed else "failed")
    client.set_model_version_tag(name, version, "cptdata.gate_problems", "; ".join(gate.problems)[:4000] or "none")
    client.set_model_version_tag(name, version, "cptdata.basis", basis)
    if gate.passed:
        client.set_registered_model_alias(name, CHAMPION, version)
    return gate.passed


def _pip_requirements() -> list[str]:
    """What the served model imports (``cpt`` itself travels in ``code_paths``), at the versions running now."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "numpy", "pandas", "scipy", "threadpoolctl")]


def _registered_version(store: DeltaStore, fit_key: str, result: str) -> str:
    """The model version registered by an earlier fit of the same inputs and config with the same result ("" if
    none): a rerun of an identical (seeded, deterministic) fit records a new MLflow run but does not register a
    duplicate model; a fit whose result differs (new code) registers a new version."""
    if not store.exists(FITS_TABLE):
        return ""
    rows = store.read(FITS_TABLE, filters=[("fit_key", "=", fit_key)], columns=["model_version", "result"])
    same = [r["model_version"] for r in rows.to_pylist() if r["result"] == result and r["model_version"]]
    return same[0] if same else ""


@dataclass(frozen=True)
class CurrentFit:
    """The newest row of one law in ``laws/fits``, its JSON columns parsed: what downstream stages act on."""

    law: str
    fits_version: int
    fit_key: str  # hash of (inputs, config): the same for an identical refit
    answer: dict
    result: dict
    gate: dict
    input_versions: dict[str, int]
    config: dict
    mlflow_run_id: str
    registered_model: str
    model_version: str
    dagster_run_id: str

    @property
    def lineage_part(self) -> str:
        """The partition of ``laws/fits`` this fit's row is: what a commit that read it names in ``input_parts``."""
        return fit_partition(self.law, self.fit_key)

    @property
    def gate_passed(self) -> bool:
        return bool(self.gate.get("passed"))

    def require_passed(self) -> CurrentFit:
        """This fit, or a failure saying that its blocking gate failed (nothing is built on a failed fit)."""
        if not self.gate_passed:
            problems = "; ".join(self.gate.get("problems") or []) or "no reason recorded"
            raise dg.Failure(
                f"the current {self.law} fit (MLflow run {self.mlflow_run_id}) failed its blocking gate: {problems}; "
                "nothing is built on it"
            )
        return self

    def require_supported_answer(self) -> CurrentFit:
        """This fit, or a failure saying that its answer is not supported by its basis (the landscape answer's
        blocking check: a law optimum needs the law's gate; a best-pilot-regime answer rests on the pilots)."""
        supported = self.answer.get("supported")
        if supported is None:  # a fit from before the answer check: its law gate decides
            return self.require_passed()
        if not supported.get("passed"):
            raise dg.Failure(
                f"the current {self.law} answer (MLflow run {self.mlflow_run_id}) is not supported by its basis: "
                f"{'; '.join(supported.get('problems') or [])}; nothing is built on it"
            )
        return self

    def provenance(self) -> dict[str, object]:
        return {
            "law": self.law,
            "fits_version": self.fits_version,
            "mlflow_run_id": self.mlflow_run_id,
            "registered_model": f"models:/{self.registered_model}/{self.model_version}",
            "gate_passed": self.gate_passed,  # the law's own gate: whether its model was promoted
            "answer_supported": (self.answer.get("supported") or {}).get("passed", self.gate_passed),
            "dagster_run_id": self.dagster_run_id,
        }


def current_fit(store: DeltaStore, law: str) -> CurrentFit:
    """The newest fit of ``law`` (ppl_law | cmr); a clear failure when there is none."""
    version = store.version(FITS_TABLE)
    if version is None:
        raise dg.Failure(f"{FITS_TABLE} does not exist yet: fit the laws first")
    rows = store.read(FITS_TABLE, version, filters=[("law", "=", law)])
    if rows.num_rows == 0:
        raise dg.Failure(f"{FITS_TABLE} v{version} holds no {law} fit: materialize laws/{law} first")
    dated = rows.filter(pc.is_valid(rows["fitted_at"])) if "fitted_at" in rows.column_names else rows.slice(0, 0)
    if dated.num_rows == 0:
        raise dg.Failure(f"the {law} fits in {FITS_TABLE} v{version} predate fitted_at: refit laws/{law}")
    row = dated.sort_by([("fitted_at", "descending")]).slice(0, 1).to_pylist()[0]
    parsed = {k: json.loads(row[k]) for k in ("answer", "result", "gate", "input_versions", "config")}
    return CurrentFit(
        law=law,
        fits_version=version,
        fit_key=row["fit_key"],
        mlflow_run_id=row["mlflow_run_id"],
        registered_model=row["registered_model"],
        model_version=row["model_version"],
        dagster_run_id=row["dagster_run_id"],
        **parsed,
    )
