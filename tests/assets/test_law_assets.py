"""Pilot tables → both law fits through Dagster: answers with their basis, MLflow runs, registered pyfunc models
that serve those answers, a ``champion`` alias that moves only on a passing gate, ``laws/fits`` rows that a rerun
replaces, and blocking quality checks.

The pilot tables are written from known laws (plus noise), so the fits have a right answer."""

from dataclasses import fields

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assets.landscape import REGIMES_TABLE
from assets.law_publishing import CHAMPION
from assets.laws import (
    CHECK_CMR_QUALITY,
    CHECK_PPL_ANSWER,
    CHECK_PPL_QUALITY,
    FITS_TABLE,
    CmrConfig,
    PplLawConfig,
    cmr,
    ppl_law,
)
from assets.pilots import MIXTURE_RUNS_TABLE, REGIME_RUNS_TABLE
from assets.resources import DeltaStoreResource, MlflowResource
from cpt.delta_store import CommitInfo, DeltaStore
from cpt.laws.ppl.law import g
from cpt.laws.reports import CmrSettings, PplSettings
from cpt.training.schema import PILOT_POINTS_SCHEMA
from spark_jobs.scoring import DOCUMENTS_TABLE, SCORES_TABLE
from tests.cpt.test_cmr_law import RATIOS, TOKENS, true_curves
from tests.cpt.test_ppl_law import MU, SIGMA, TRUE, D

COMMIT = CommitInfo(run_id="seed", asset_key="pilots", code_version="test", config_hash="")
L_DOM0, L_GEN0 = 2.6, 2.4
PIN = {"scores_version": 0, "model_revision": "m", "policy_hash": "p"}


def point(partition, **values):
    base = {f.name: None for f in PILOT_POINTS_SCHEMA}
    return base | PIN | {"partition": partition, "mlflow_run_id": "", "dagster_run_id": "", "eval_set": "e"} | values


def regime_rows(seed: int, landscape_matters: bool = True) -> pa.Table:
    rng = np.random.default_rng(seed)
    truth = TRUE.predict(MU, SIGMA, D) if landscape_matters else 2.0 + 400.0 * D**-0.3
    loss = truth * np.exp(0.0005 * rng.standard_normal(len(MU)))  # the best pilot is 0.06 % from the optimum
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
            values = {
                "tokens": int(t),
                "size_tokens": int(TOKENS[-1]),
                "mix_ratio": r,
                "domain_loss": L_DOM0 + (float(dom.value(t)) if t > 0 else 0.0) + noise[0],
                "general_loss": L_GEN0 + (float(gen.value(t)) if t > 0 else 0.0) + noise[1],
                "is_final": bool(t == TOKENS[-1]),
            }
            rows.append(point(names[r], regime="mixture", **values))
    return pa.Table.from_pylist(rows, schema=PILOT_POINTS_SCHEMA)


def landscape_tables(store: DeltaStore) -> None:
    """The regimes' pins and the domain pool the reachable region is computed from (PPL spread over 2 … 60)."""
    store.overwrite(REGIMES_TABLE, pa.Table.from_pylist([PIN | {"name": "r0"}]), COMMIT, predicate=None)
    ppl = np.geomspace(2.0, 60.0, 3000)
    pool = {"ppl": ppl, "n_tokens": np.full(ppl.size, 1_000_000, dtype=np.int64)}
    labels = {"role": "domain", "split": "train", "model_revision": "m", "policy_hash": "p"}
    doc_ids = [f"d{i}" for i in range(ppl.size)]
    chunk_ids = [f"c{i}" for i in range(ppl.size)]
    table = pa.table(pool | {"doc_id": doc_ids, "chunk_id": chunk_ids} | {k: [v] * ppl.size for k, v in labels.items()})
    store.overwrite(SCORES_TABLE, table, COMMIT, predicate=None)
    docs = {"doc_id": doc_ids, "group_id": doc_ids, "split": ["train"] * ppl.size}
    store.overwrite(DOCUMENTS_TABLE, pa.table(docs), COMMIT, predicate=None)


@pytest.fixture
def setup(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    landscape_tables(store)
    store.overwrite(REGIME_RUNS_TABLE, regime_rows(1), COMMIT, predicate=None)
    store.overwrite(MIXTURE_RUNS_TABLE, mixture_rows(2), COMMIT, predicate=None)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {
        "delta": DeltaStoreResource(root_uri=str(store.root_uri)),
        "mlflow": MlflowResource(tracking_uri=tracking, artifact_root=(tmp_path / "artifacts").as_uri()),
    }
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    return store, resources, tracking


PPL_CONFIG = {"n_bootstrap": 40}
CMR_CONFIG = {"n_bootstrap": 20, "target_tokens": 4_000_000_000, "max_trajectory_rmse": 0.01}


def meta(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_both_laws_answer_register_promote_and_serve(setup):
    store, resources, tracking = setup
    config = {"ops": {"laws__ppl_law": {"config": PPL_CONFIG}, "laws__cmr": {"config": CMR_CONFIG}}}

    result = dg.materialize([ppl_law, cmr], resources=resources, run_config=config)

    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {CHECK_PPL_QUALITY: True, CHECK_PPL_ANSWER: True, CHECK_CMR_QUALITY: True}
    ppl_meta = meta(result, "laws__ppl_law")
    assert ppl_meta["basis"] == "law optimum" and ppl_meta["promoted"] is True
    target = ppl_meta["answer_detail"]
    regret = float(g(TRUE, 20.0, 10.0) - g(TRUE, target["mu"], target["sigma"]))  # the known optimum is (20, 10)
    assert 0 <= regret < 0.02, target  # in log reducible loss: the answer is as good as the true optimum
    assert ppl_meta["quality"]["gain_over_size_law"] > 0 and ppl_meta["quality"]["within_size_r2"] > 0.9
    assert "data:image/png;base64," in ppl_meta["plot_loss_surface"]
    cmr_meta = meta(result, "laws__cmr")
    assert cmr_meta["basis"] == "law" and "extrapolated beyond what the pilots measured" in cmr_meta["answer"]
    assert cmr_meta["quality"]["heldout_rmse"] < 0.01  # the forms extrapolate their own data

    law = mlflow.pyfunc.load_model(f"models:/cptdata-ppl-law@{CHAMPION}")
    asked = pd.DataFrame({"mu": MU[:3], "sigma": SIGMA[:3], "D": D[:3].astype(int)})  # tokens as ints, too
    assert law.predict(asked)["loss"].to_numpy() == pytest.approx(TRUE.predict(MU[:3], SIGMA[:3], D[:3]), rel=0.01)

    served = mlflow.pyfunc.load_model(f"models:/cptdata-cmr-law@{CHAMPION}")
    budgets = np.geomspace(1e6, 1e13, 40)
    answers = served.predict(pd.DataFrame({"tokens": budgets}))
    fits = store.read(FITS_TABLE)
    row = fits.filter(pc.equal(fits["law"], "cmr")).to_pylist()[0]
    lo, hi = pd.read_json(pd.io.common.StringIO(row["result"]), typ="series")["tolerance"]
    assert ((answers["cmr"] >= lo - 1e-12) & (answers["cmr"] <= hi + 1e-12)).all()  # never outside the tolerance
    t_min = pd.read_json(pd.io.common.StringIO(row["result"]), typ="series")["answer_model"]["law_t_min"]
    supported = (budgets >= t_min) & (budgets <= TOKENS[-1])  # between the law's smallest T0 and the pilots' budget
    assert answers["extrapolated"].to_numpy().tolist() == (~supported).tolist() and supported.any()
    at_target = served.predict(pd.DataFrame({"tokens": [4e9]})).iloc[0]
    assert at_target["cmr"] == pytest.approx(cmr_meta["answer_detail"]["ratio"])  # the asset's answer, served
    assert at_target["cmr_low"] <= at_target["cmr"] <= at_target["cmr_high"]

    assert sorted(fits["law"].to_pylist()) == ["cmr", "ppl_law"] and all(fits["promoted"].to_pylist())
    client = mlflow.MlflowClient(tracking)
    run = client.get_run(fits.filter(pc.equal(fits["law"], "ppl_law"))["mlflow_run_id"][0].as_py())
    assert run.data.tags["dagster.run_id"] == result.run_id and run.data.metrics["r2"] > 0.99
    assert client.get_model_version("cptdata-ppl-law", "1").tags["cptdata.gate"] == "passed"

    dg.materialize(
        [ppl_law], resources=resources, run_config={"ops": {"laws__ppl_law": config["ops"]["laws__ppl_law"]}}
    )
    assert store.read(FITS_TABLE).num_rows == 2  # same inputs and config: the fit's row is replaced, not added
    versions = client.search_model_versions("name='cptdata-ppl-law'")
    assert [str(v.version) for v in versions] == ["1"]  # and the identical fit is not registered again


def test_a_failed_gate_is_registered_but_leaves_the_champion_where_it_was(setup):
    store, resources, tracking = setup
    run_config = {"ops": {"laws__ppl_law": {"config": PPL_CONFIG}}}
    dg.materialize([ppl_law], resources=resources, run_config=run_config)
    # new regime pilots in which the landscape has no effect: the law cannot beat the size-only law
    store.overwrite(REGIME_RUNS_TABLE, regime_rows(3, landscape_matters=False), COMMIT, predicate=None)

    result = dg.materialize([ppl_law], resources=resources, run_config=run_config, raise_on_error=False)

    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    check = checks[CHECK_PPL_QUALITY]
    assert not check.passed and "does not beat the size-only law" in check.description
    assert checks[CHECK_PPL_ANSWER].passed  # the answer (the pool's own landscape) rests on the pilots, not the law
    answer = meta(result, "laws__ppl_law")
    assert answer["basis"] == "size law" and answer["promoted"] is False
    assert "no measurable effect" in answer["answer"]
    client = mlflow.MlflowClient(tracking)
    assert client.get_model_version("cptdata-ppl-law", "2").tags["cptdata.gate"] == "failed"
    assert str(client.get_model_version_by_alias("cptdata-ppl-law", CHAMPION).version) == "1"


def test_pilot_runs_that_are_not_comparable_are_refused(setup):
    store, resources, _ = setup
    rows = regime_rows(1)
    stale = pa.array(["old-eval-set" if i < 2 else "eval-set" for i in range(rows.num_rows)])
    rows = rows.set_column(rows.schema.get_field_index("eval_set"), "eval_set", stale)
    store.overwrite(REGIME_RUNS_TABLE, rows, COMMIT, predicate=None)
    result = dg.materialize([ppl_law], resources=resources, raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "mixes pilot runs with different eval_set" in str(failure.event_specific_data.error)


def test_a_law_that_cannot_be_fitted_fails_clearly(setup):
    store, resources, _ = setup
    store.overwrite(REGIME_RUNS_TABLE, regime_rows(1).slice(0, 8), COMMIT, predicate=None)  # four runs only
    result = dg.materialize([ppl_law], resources=resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "cannot be fitted" in str(failure.event_specific_data.error) and "need at least 9" in str(
        failure.event_specific_data.error
    )
    assert not store.exists(FITS_TABLE)


def test_invalid_run_config_is_one_clear_failure(setup):
    _, resources, _ = setup
    config = {"ops": {"laws__cmr": {"config": {"eval_aggregate": "mode"}}}}
    result = dg.materialize([cmr], resources=resources, run_config=config, raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "invalid run config" in str(failure.event_specific_data.error) and "mode" in str(
        failure.event_specific_data.error
    )


@pytest.mark.parametrize(("config", "settings"), [(PplLawConfig, PplSettings), (CmrConfig, CmrSettings)])
def test_config_defaults_come_from_the_cpt_settings(config, settings):
    defaults = settings()
    shared = [f.name for f in fields(settings)]
    assert set(shared) <= set(config.model_fields)  # every setting is run config
    for name in shared:
        assert config.model_fields[name].default == getattr(defaults, name), name
    assert config().settings() == defaults
