"""Rows of ``laws/fits`` as the law assets write them, for tests of what is built on a fit (selection, dataset)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa

from assets.law_publishing import FITS_SCHEMA, FITS_TABLE, fit_partition
from cpt.delta_store import CommitInfo, DeltaStore
from cpt.laws.cmr.answer import CmrAnswerModel, answer_cmr

COMMIT = CommitInfo(run_id="seed", asset_key="laws", code_version="test", config_hash="")


def write_fit(store: DeltaStore, law: str, *, answer: dict, result: dict, inputs: dict, config: dict, passed=True):
    row = {
        "law": law,
        "fit_key": f"{law}-{datetime.now(UTC).timestamp()}",
        "params": "{}",
        "quality": "{}",
        "result": json.dumps(result),
        "config": json.dumps(config),
        "input_versions": json.dumps(inputs),
        "mlflow_run_id": f"run-{law}-{datetime.now(UTC).timestamp()}",
        "registered_model": f"cptdata-{law}",
        "model_version": "1",
        "dagster_run_id": "seed",
        "answer": json.dumps(answer),
        "gate": json.dumps({"passed": passed, "problems": [] if passed else ["synthetic failure"], "values": {}}),
        "promoted": passed,
        "fitted_at": datetime.now(UTC),
    }
    table = pa.Table.from_pylist([row], schema=FITS_SCHEMA)
    predicate = fit_partition(law, row["fit_key"])
    return store.overwrite(FITS_TABLE, table, COMMIT, predicate=predicate, add_columns=True)


def write_ppl_fit(store: DeltaStore, mu: float, sigma: float, regimes_version: int, passed: bool = True) -> int:
    answer = {"basis": "law optimum", "mu": mu, "sigma": sigma, "reasons": ["synthetic"]}
    return write_fit(
        store,
        "ppl_law",
        answer=answer,
        result={},
        inputs={"landscape/regimes": regimes_version},
        config={"ppl_space": "raw", "sigma_kind": "std"},
        passed=passed,
    )


def write_cmr_fit(store: DeltaStore, t_max: float, cmr: float, selection_version: int | None, passed=True) -> int:
    model = CmrAnswerModel(t_max, cmr, (0.0, 0.5), None, ("synthetic: no law",))
    answer = answer_cmr(model, t_max).to_json()
    inputs = {} if selection_version is None else {"dataset/domain_selection": selection_version}
    result = {"answer_model": model.to_json(), "answer_draws": [], "options": {"ci_level": 0.9}}
    return write_fit(store, "cmr", answer=answer, result=result, inputs=inputs, config={}, passed=passed)
