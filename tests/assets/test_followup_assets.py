"""Follow-up rounds through Dagster: the law asks for a round, pilots/followup_regimes builds DOS regimes at and
around its optimum and registers them as partitions, their runs join the refit, and the refit's answer says how many
rounds it took and why they stopped. The pilot runs themselves are written from the known law (training is
exercised by the pilot and confirmation tests)."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from assets.followups import FOLLOWUP_REGIMES_TABLE, followup_partitions, followup_regimes
from assets.laws import ppl_law
from assets.pilots import FOLLOWUP_RUNS_TABLE, REGIME_RUNS_TABLE
from cpt.delta_store import partition_predicate
from cpt.training.schema import PILOT_POINTS_SCHEMA
from tests.assets.test_law_assets import COMMIT, meta, point, regime_rows
from tests.assets.test_law_assets import setup as law_setup  # noqa: F401  (the fixture)
from tests.cpt.test_ppl_law import TRUE

# "wide" at any interval: the first fit asks for a round whatever its optimum; one round at most.
PPL_CONFIG = {"n_bootstrap": 40, "followup_rounds": 1, "followup_max_relative_width": 1e-9}


def _followup_rows(regimes: list[dict]) -> pa.Table:
    """Each follow-up regime's pilot as the known law says it ends (no noise)."""
    rows = []
    for r in regimes:
        d = int(r["size_tokens"])
        common = {"regime": r["name"], "mu": r["mu"], "sigma": r["sigma"], "size_tokens": d, "mix_ratio": 1.0}
        loss = float(TRUE.predict(r["mu"], r["sigma"], d))
        rows.append(point(r["name"], **common, tokens=0, domain_loss=5.0, is_final=False, step=0))
        rows.append(point(r["name"], **common, tokens=d, domain_loss=loss, is_final=True, step=10))
    return pa.Table.from_pylist(rows, schema=PILOT_POINTS_SCHEMA)


def test_a_round_is_planned_run_and_counted_then_the_rounds_stop(law_setup):  # noqa: F811
    store, resources, _ = law_setup
    instance = dg.DagsterInstance.ephemeral()
    fit_config = {"ops": {"laws__ppl_law": {"config": PPL_CONFIG}}}
    plan_config = {"ops": {"pilots__followup_regimes": {"config": {"size_tokens": 300_000_000}}}}

    first = meta(
        dg.materialize([ppl_law], resources=resources, run_config=fit_config, instance=instance), "laws__ppl_law"
    )
    decision = first["answer_detail"]["followup"]
    assert decision["needed"] and decision["rounds_done"] == 0 and "wide" in decision["reason"]
    assert "next round needed" in first["answer"]

    planned = dg.materialize([followup_regimes], resources=resources, run_config=plan_config, instance=instance)
    plan = meta(planned, "pilots__followup_regimes")
    assert plan["round"] == 1 and plan["new_regimes"] == ["f1-opt", "f1-lo", "f1-hi"]
    assert sorted(instance.get_dynamic_partitions(followup_partitions.name)) == ["f1-hi", "f1-lo", "f1-opt"]
    regimes = store.read(FOLLOWUP_REGIMES_TABLE).to_pylist()
    by_label = {r["label"]: r for r in regimes}
    # DOS reached each target (the synthetic pool is dense in PPL) and held at least D tokens for its pilot
    for r in regimes:
        assert r["mu"] == pytest.approx(r["target_mu"], rel=0.05) and r["tokens"] >= r["size_tokens"] == 300_000_000
    axis = "target_mu" if by_label["lo"]["target_mu"] != by_label["opt"]["target_mu"] else "target_sigma"
    assert by_label["lo"][axis] < by_label["opt"][axis] < by_label["hi"][axis]  # either side, along one axis
    assert by_label["opt"]["target_mu"] == pytest.approx(first["answer_detail"]["mu"])

    for r in regimes:  # what backfilling the new followup_runs partitions records
        store.overwrite(
            FOLLOWUP_RUNS_TABLE, _followup_rows([r]), COMMIT, predicate=partition_predicate({"partition": r["name"]})
        )
    refit = meta(
        dg.materialize([ppl_law], resources=resources, run_config=fit_config, instance=instance), "laws__ppl_law"
    )
    after = refit["answer_detail"]["followup"]
    assert after["rounds_done"] == 1 and not after["needed"]
    assert "round limit (1)" in after["reason"] or "already sits at the optimum" in after["reason"]
    assert "1 follow-up round; stopped" in refit["answer"]
    assert refit["quality"]["n_runs"] == store.read(REGIME_RUNS_TABLE).num_rows // 2 + 3  # the follow-ups joined
    assert refit["input_versions"][FOLLOWUP_RUNS_TABLE] == store.version(FOLLOWUP_RUNS_TABLE)

    again = meta(
        dg.materialize([followup_regimes], resources=resources, run_config=plan_config, instance=instance),
        "pilots__followup_regimes",
    )
    assert again["needed"] is False and again["new_regimes"] == [] and again["reason"] == after["reason"]
    assert store.read(FOLLOWUP_REGIMES_TABLE).num_rows == 3  # nothing planned: the table did not move


def test_followups_of_older_scores_are_left_out_of_the_fit(law_setup):  # noqa: F811
    store, resources, _ = law_setup
    stale = _followup_rows([{"name": "f1-opt", "mu": 20.0, "sigma": 10.0, "size_tokens": 300_000_000}])
    stale = stale.set_column(
        stale.schema.get_field_index("scores_version"), "scores_version", pa.array([7] * stale.num_rows, pa.int64())
    )
    store.overwrite(FOLLOWUP_RUNS_TABLE, stale, COMMIT, predicate=None)
    fit_config = {"ops": {"laws__ppl_law": {"config": {"n_bootstrap": 40}}}}
    fitted = meta(dg.materialize([ppl_law], resources=resources, run_config=fit_config), "laws__ppl_law")
    assert fitted["quality"]["n_runs"] == regime_rows(1).num_rows // 2
    assert FOLLOWUP_RUNS_TABLE not in fitted["input_versions"]
    assert np.isfinite(fitted["answer_detail"]["mu"])
