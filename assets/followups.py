"""Follow-up pilots: regimes built by DOS at and around the law's optimum when it is unsettled, and their runs.

- ``pilots/followup_regimes``: reads the current ``laws/ppl_law`` fit's follow-up decision
  (:mod:`cpt.laws.ppl.followup`). When another round is needed it selects, by distance-to-optimum selection from the
  leak-free domain pool, one subset of ``size_tokens`` tokens per target (the optimum and a point either side of it),
  records them as rows of round k and registers them as partitions of ``followup_regimes``. When not, it writes
  nothing and says why the rounds stopped.
- ``pilots/followup_runs``: one partition per follow-up regime, a pilot run exactly like a regime run's (same
  hyperparameters, held-out sets and scores); ``laws/ppl_law`` fits these points with the grid's.

``cptdata demo`` alternates the two with the law fit until the decision says stop; from the UI: materialize
``followup_regimes``, backfill the new ``followup_runs`` partitions, refit ``laws/ppl_law``, repeat.
"""

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from assets.landscape import REGIMES, REGIMES_TABLE
from assets.law_publishing import FITS_TABLE, current_fit
from assets.laws import PPL_LAW, domain_pool
from assets.lineage import commit_info, delta_metadata, governance, require_version
from assets.models import BASE_MODEL
from assets.pilots import (
    ALL_SCORES,
    FOLLOWUP_RUNS,
    FOLLOWUP_RUNS_TABLE,
    TRAINING_POOL,
    PilotInputs,
    RegimeRunConfig,
    as_failure,
    run_pilot,
)
from assets.resources import DeltaStoreResource, MlflowResource
from cpt.dataset.plan import DatasetPlanError, dos_target, landscape_of, statistic
from cpt.delta_store import partition_predicate
from cpt.laws.ppl.followup import followup_name
from cpt.models.base_model import ModelManifest
from cpt.selection.dos import DosError, select_dos
from cpt.training.pilot_inputs import PilotInputError, RegimeRunSettings, selection_prefix
from cpt.training.schema import FOLLOWUP_REGIMES_SCHEMA, PILOT_POINTS_SCHEMA
from spark_jobs.scoring import SCORES_TABLE

FOLLOWUP_REGIMES = dg.AssetKey(["pilots", "followup_regimes"])
FOLLOWUP_REGIMES_TABLE = "pilots/followup_regimes"
followup_partitions = dg.DynamicPartitionsDefinition(name="followup_regimes")

_LARGE = RegimeRunSettings().size_tokens["large"]


class FollowupRegimesConfig(dg.Config):
    size_tokens: int = Field(
        _LARGE,
        description="D of each follow-up regime (default: the largest regime-pilot size, where the optimum's "
        "loss is stated)",
    )


@dg.asset(
    key=FOLLOWUP_REGIMES,
    deps=[PPL_LAW, REGIMES],
    group_name="pilots",
    kinds={"delta"},
    code_version="followup-regimes-v1",
    **governance("pilots", FOLLOWUP_REGIMES_SCHEMA),
    description="When the current PPL-law fit says its optimum is unsettled (on the search region's boundary, or "
    "a wide interval) and rounds remain: subsets built by DOS toward the optimum and points either side of it, as "
    "new followup_regimes partitions of round k. Otherwise nothing is written and the metadata says why.",
)
def followup_regimes(
    context: dg.AssetExecutionContext, config: FollowupRegimesConfig, delta: DeltaStoreResource
) -> dg.MaterializeResult:
    store = delta.store()
    fit = current_fit(store, "ppl_law")
    decision = fit.answer.get("followup") or {"needed": False, "rounds_done": 0, "reason": "the fit predates rounds"}
    meta = {"needed": bool(decision["needed"]), "rounds_done": decision["rounds_done"], "reason": decision["reason"]}
    if not decision["needed"]:
        context.log.info(f"no follow-up round: {decision['reason']}")
        return dg.MaterializeResult(metadata=meta | {"new_regimes": dg.MetadataValue.json([])})
    inputs = {REGIMES_TABLE: require_version(store, REGIMES_TABLE), FITS_TABLE: fit.fits_version}
    pool = domain_pool(store, inputs, None, columns=("chunk_id", "ppl", "n_tokens"))
    pin = store.read(REGIMES_TABLE, inputs[REGIMES_TABLE], columns=["model_revision", "policy_hash"]).to_pylist()[0]
    round_ = int(decision["rounds_done"]) + 1
    ppl_space, sigma_kind = fit.config.get("ppl_space", "raw"), fit.config.get("sigma_kind", "std")
    values = statistic(pool["ppl"].to_numpy(), ppl_space)
    n_tokens = pool["n_tokens"].to_numpy().astype(np.int64)
    ids = np.asarray(pool["chunk_id"].to_pylist(), dtype=str)
    rows = []
    for target in decision["targets"]:
        try:
            chosen = select_dos(
                values,
                n_tokens,
                dos_target(target["mu"], target["sigma"], sigma_kind),
                config.size_tokens,
                tie_keys=ids,
            ).order
        except (DosError, DatasetPlanError) as exc:
            raise dg.Failure(f"no follow-up regime toward {target}: {exc}") from exc
        mu, sigma = landscape_of(values[chosen], sigma_kind)
        rows.append(
            {
                "name": followup_name(round_, target["label"]),
                "round": round_,
                "label": target["label"],
                "target_mu": float(target["mu"]),
                "target_sigma": float(target["sigma"]),
                "ppl_space": ppl_space,
                "sigma_kind": sigma_kind,
                "mu": mu,
                "sigma": sigma,
                "size_tokens": config.size_tokens,
                "tokens": int(n_tokens[chosen].sum()),
                "chunk_ids": ids[chosen].tolist(),
                "reason": decision["reason"],
                "fit_key": fit.fit_key,
                "fit_mlflow_run_id": fit.mlflow_run_id,
                "scores_version": inputs[SCORES_TABLE],
                "model_revision": pin["model_revision"],
                "policy_hash": pin["policy_hash"],
            }
        )
        context.log.info(
            f"follow-up regime {rows[-1]['name']}: DOS toward μ {target['mu']:.4g}, σ {target['sigma']:.4g} reached "
            f"μ {mu:.4g}, σ {sigma:.4g} with {rows[-1]['tokens']:,} tokens"
        )
    table = pa.Table.from_pylist(rows, schema=FOLLOWUP_REGIMES_SCHEMA)
    names = [r["name"] for r in rows]
    commit = commit_info(
        context,
        FOLLOWUP_REGIMES,
        config.model_dump() | {"round": round_},
        inputs,
        input_parts={FITS_TABLE: [fit.lineage_part]},
    )
    # Replaces the round's rows, whatever they were (the same round planned again after a refit).
    version = store.overwrite(FOLLOWUP_REGIMES_TABLE, table, commit, predicate=partition_predicate({"round": round_}))
    context.instance.add_dynamic_partitions(followup_partitions.name, names)
    context.log.info(f"follow-up round {round_}: {', '.join(names)} ({decision['reason']})")
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(FOLLOWUP_REGIMES_TABLE), version, FOLLOWUP_REGIMES_SCHEMA, len(rows))
        | meta
        | {
            "round": round_,
            "new_regimes": dg.MetadataValue.json(names),
            "input_versions": dg.MetadataValue.json(inputs),
        }
    )


class FollowupRunConfig(RegimeRunConfig):
    """A regime run's config (its size_tokens unused: D is the follow-up regime's)."""


@dg.asset(
    key=FOLLOWUP_RUNS,
    ins={"base_model": dg.AssetIn(BASE_MODEL)},
    deps=[FOLLOWUP_REGIMES, REGIMES, ALL_SCORES],
    partitions_def=followup_partitions,
    pool=TRAINING_POOL,
    group_name="pilots",
    kinds={"pytorch", "mlflow", "delta"},
    code_version="followup-runs-v1",
    **governance("pilots", PILOT_POINTS_SCHEMA),
    description="One pilot CPT run per follow-up regime (a DOS subset at or around the law's optimum), with the "
    "regime pilots' hyperparameters, held-out sets and scores; laws/ppl_law fits these points with the grid's.",
)
def followup_runs(
    context: dg.AssetExecutionContext,
    config: FollowupRunConfig,
    base_model: dict,
    delta: DeltaStoreResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    name = context.partition_key
    store = delta.store()
    version = require_version(store, FOLLOWUP_REGIMES_TABLE)
    found = store.read(FOLLOWUP_REGIMES_TABLE, version, filters=[("name", "=", name)]).to_pylist()
    if len(found) != 1:
        raise dg.Failure(f"{FOLLOWUP_REGIMES_TABLE} v{version} has no regime {name!r}: materialize it first")
    regime = found[0]
    with as_failure():
        settings = config.settings()
        inputs = PilotInputs.load(store, ModelManifest.from_json(base_model), settings)
        if regime["scores_version"] != inputs.versions[SCORES_TABLE]:
            raise PilotInputError(
                f"follow-up regime {name} was cut from scores v{regime['scores_version']}, the landscape now pins "
                f"v{inputs.versions[SCORES_TABLE]}: refit laws/ppl_law and plan the follow-ups again"
            )
        inputs.versions[FOLLOWUP_REGIMES_TABLE] = version
        draw = selection_prefix(inputs.scores, regime["chunk_ids"], int(regime["size_tokens"]))
        train_config = settings.train_config(draw.budget, 1.0)
    return run_pilot(
        context,
        store,
        mlflow,
        inputs,
        table=FOLLOWUP_RUNS_TABLE,
        regime=name,
        ratio=1.0,
        train_config=train_config,
        domain_ids=draw.chunk_ids,
        general_ids=(),
        stats=draw.stats,
        params={"pilot": config.model_dump(), "regime": name, "round": regime["round"], "size_tokens": draw.budget},
    )
