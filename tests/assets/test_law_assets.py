"""Pilot tables → both law fits through Dagster: MLflow runs, registered pyfunc models that serve predictions,
``laws/fits`` rows that a rerun replaces, and blocking quality checks.

The pilot tables are written from known laws (plus noise), so the fits have a right answer."""

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from assets.laws import CHECK_CMR_QUALITY, CHECK_PPL_QUALITY, FITS_TABLE, cmr, ppl_law
from assets.pilots import MIXTURE_RUNS_TABLE, REGIME_RUNS_TABLE
from assets.resources import DeltaStoreResource, MlflowResource
from cpt.delta_store import CommitInfo, DeltaStore
from cpt.training.schema import PILOT_POINTS_SCHEMA
from tests.cpt.test_cmr_law import RATIOS, TOKENS, true_curves
from tests.cpt.test_ppl_law import MU, SIGMA, TRUE, D

COMMIT = CommitInfo(run_id="seed", asset_key="pilots", code_version="test", config_hash="")
L_DOM0, L_GEN0 = 2.6, 2.4


def point(partition, **values):
    base = {f.name: None for f in PILOT_POINTS_SCHEMA}
    return base | {"partition": partition, "model_revision": "m", "mlflow_run_id": "", "dagster_run_id": ""} | values


def regime_rows(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    loss = TRUE.predict(MU, SIGMA, D) * np.exp(0.003 * rng.standard_normal(len(MU)))
    rows = []
    for i, (mu, sigma, d, final) in enumerate(zip(MU, SIGMA, D, loss, strict=True)):
        common = {"regime": f"r{i // 3}", "mu": mu, "sigma": sigma, "size_tokens": int(d), "mix_ratio": 1.0}
        rows.append(point(f"r{i}", **common, tokens=0, domain_loss=5.0, is_final=False, step=0))
        rows.append(point(f"r{i}", **common, tokens=int(d), domain_loss=float(final), is_final=True, step=10))
    return pa.Table.from_pylist(rows, schema=PILOT_POINTS_SCHEMA)


def mixture_rows(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    names = {0.0: "0", 1 / 8: "1/8", 1 / 4: "1/4", 1 / 3: "1/3", 1 / 2: "1/2", 3 / 4: "3/4", 1.0: "1"}
    rows = []
    for r in RATIOS:
        dom, gen = true_curves(r)
        for t in TOKENS:
            noise = 0.002 * rng.standard_normal(2) if t > 0 else np.zeros(2)
            d_dom = float(dom.value(t)) if t > 0 else 0.0
            d_gen = float(gen.value(t)) if t > 0 else 0.0
            values = {
                "tokens": int(t),
                "size_tokens": int(TOKENS[-1]),
                "mix_ratio": r,
                "domain_loss": L_DOM0 + d_dom + noise[0],
                "general_loss": L_GEN0 + d_gen + noise[1],
                "is_final": bool(t == TOKENS[-1]),
            }
            rows.append(point(names[r], regime="mixture", **values))
    return pa.Table.from_pylist(rows, schema=PILOT_POINTS_SCHEMA)


def test_both_laws_fit_register_and_serve(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    store.overwrite(REGIME_RUNS_TABLE, regime_rows(1), COMMIT, predicate=None)
    store.overwrite(MIXTURE_RUNS_TABLE, mixture_rows(2), COMMIT, predicate=None)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {
        "delta": DeltaStoreResource(root_uri=str(store.root_uri)),
        "mlflow": MlflowResource(tracking_uri=tracking, artifact_root=(tmp_path / "artifacts").as_uri()),
    }
    config = {
        "ops": {
            "laws__ppl_law": {"config": {"n_bootstrap": 50}},
            "laws__cmr": {"config": {"n_bootstrap": 20, "target_tokens": 4_000_000_000, "max_trajectory_rmse": 0.01}},
        }
    }

    result = dg.materialize([ppl_law, cmr], resources=resources, run_config=config)

    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {CHECK_PPL_QUALITY: True, CHECK_CMR_QUALITY: True}
    ppl_meta = {k: v.value for k, v in result.asset_materializations_for_node("laws__ppl_law")[0].metadata.items()}
    assert ppl_meta["r2"] > 0.99 and ppl_meta["loo_relative_error"] < 0.01
    assert "data:image/png;base64," in ppl_meta["plot_observed_vs_predicted"]
    cmr_meta = {k: v.value for k, v in result.asset_materializations_for_node("laws__cmr")[0].metadata.items()}
    assert 0.0 < cmr_meta["cmr"] <= 1.0 and cmr_meta["heldout_rmse"] < 0.01  # the forms extrapolate their own data

    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    law = mlflow.pyfunc.load_model("models:/cptdata-ppl-law/1")
    asked = pd.DataFrame({"mu": MU[:3], "sigma": SIGMA[:3], "D": D[:3].astype(int)})  # tokens as ints, too
    served = law.predict(asked)["loss"].to_numpy()
    assert served == pytest.approx(TRUE.predict(MU[:3], SIGMA[:3], D[:3]), rel=0.01)  # the known law, recovered
    cmr_law = mlflow.pyfunc.load_model("models:/cptdata-cmr-law/1")
    answer = cmr_law.predict(pd.DataFrame({"tokens": [4e9]}))["cmr"].iloc[0]
    assert 0.0 <= answer <= 1.0

    fits = store.read(FITS_TABLE)
    assert sorted(fits["law"].to_pylist()) == ["cmr", "ppl_law"]
    run = mlflow.MlflowClient(tracking).get_run(
        fits.filter(pa.compute.equal(fits["law"], "ppl_law"))["mlflow_run_id"][0].as_py()
    )
    assert run.data.tags["dagster.run_id"] == result.run_id and run.data.metrics["r2"] > 0.99

    dg.materialize(
        [ppl_law], resources=resources, run_config={"ops": {"laws__ppl_law": config["ops"]["laws__ppl_law"]}}
    )
    assert store.read(FITS_TABLE).num_rows == 2  # same inputs and config: the fit's row is replaced, not added
    versions = mlflow.MlflowClient(tracking).search_model_versions("name='cptdata-ppl-law'")
    assert [str(v.version) for v in versions] == ["1"]  # and the identical fit is not registered again


def test_pilot_runs_that_are_not_comparable_are_refused(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    rows = regime_rows(1)
    stale = pa.array(["old-eval-set" if i < 2 else "eval-set" for i in range(rows.num_rows)])
    rows = rows.set_column(rows.schema.get_field_index("eval_set"), "eval_set", stale)
    store.overwrite(REGIME_RUNS_TABLE, rows, COMMIT, predicate=None)
    resources = {
        "delta": DeltaStoreResource(root_uri=str(store.root_uri)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path.as_uri()),
    }
    result = dg.materialize([ppl_law], resources=resources, raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "mixes pilot runs with different eval_set" in str(failure.event_specific_data.error)


def test_a_law_that_cannot_be_fitted_fails_clearly(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    store.overwrite(REGIME_RUNS_TABLE, regime_rows(1).slice(0, 8), COMMIT, predicate=None)  # four runs only
    resources = {
        "delta": DeltaStoreResource(root_uri=str(store.root_uri)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path.as_uri()),
    }
    result = dg.materialize([ppl_law], resources=resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "cannot be fitted on 4 pilot runs" in str(failure.event_specific_data.error)
    assert not store.exists(FITS_TABLE)
