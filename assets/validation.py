"""Stage ``validation``: the papers' claims re-checked at the build's scale, after every dataset build.

``validation/confirmations`` trains, on the pilots' held-out sets and hyperparameters, with several seeds:

- the DOS subset (the selection's first D tokens) against a random and the lowest-PPL subset of the same leak-free
  pool, D tokens each (D: the largest regime-pilot size, where the law's optimum is stated);
- the answered CMR and CMR + 0.15, at the CMR answer's budget, on the selection's prefix plus general replay;

and judges each claim on a paired interval (:mod:`cpt.validation.claims`): confirmed, not confirmed or
inconclusive. The verdicts go to MLflow, the metadata and ``validation/confirmations`` (one row per claim); each
claim is a non-blocking check, so a claim that fails is reported on every surface and never fails the build.
"""

import json
import math
import time
from dataclasses import replace
from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets.dataset import CPT_MIXTURE
from assets.landscape import REGIMES_TABLE
from assets.law_publishing import FITS_TABLE, CurrentFit, current_fit
from assets.laws import domain_pool
from assets.lineage import commit_info, delta_metadata, governance, require_version
from assets.models import BASE_MODEL
from assets.pilots import TRAINING_POOL, PilotConfig, PilotInputs, as_failure, train_pilot
from assets.resources import DeltaStoreResource, MlflowResource
from assets.tracking import finish, lineage_tags, log_metrics, start_run
from cpt.laws.cmr.critical import general_loss_limit
from cpt.laws.ppl.law import PplLawParams
from cpt.lineage.graph import model_record
from cpt.models.base_model import ModelManifest
from cpt.training.pilot_inputs import RegimeRunSettings, draw_chunks, mixture_draws, selection_prefix
from cpt.validation.claims import (
    CONFIRMED,
    INCONCLUSIVE,
    ClaimResult,
    cmr_rise,
    dos_beats,
    law_predicts,
    unavailable,
)
from spark_jobs.dataset import DATASET_TABLE

CONFIRMATIONS = dg.AssetKey(["validation", "confirmations"])
CONFIRMATIONS_TABLE = "validation/confirmations"
SUBSET_ARMS = ("dos", "random", "lowest-ppl")
CMR_ARMS = ("at-cmr", "above-cmr")
CLAIM_ARMS = {  # the runs each claim is judged on
    "dos_beats_random": ("dos", "random"),
    "dos_beats_lowest_ppl": ("dos", "lowest-ppl"),
    "law_predicts_dos_loss": ("dos",),
    "cmr_within_tolerance": ("at-cmr",),
    "cmr_is_critical": ("above-cmr",),
}
CLAIMS = tuple(CLAIM_ARMS)

CONFIRMATIONS_SCHEMA = pa.schema(
    [
        pa.field("claim", pa.string()),
        pa.field("verdict", pa.string()),
        pa.field("statement", pa.string()),
        pa.field("measured", pa.string()),
        pa.field("estimate", pa.float64()),
        pa.field("interval_low", pa.float64()),
        pa.field("interval_high", pa.float64()),
        pa.field("n_seeds", pa.int64()),
        pa.field("runs", pa.string()),
        pa.field("dataset_version", pa.int64()),
        pa.field("selection_version", pa.int64()),
        pa.field("fit_key", pa.string()),
        pa.field("mlflow_run_id", pa.string()),
        pa.field("dagster_run_id", pa.string()),
        pa.field("checked_at", pa.timestamp("us", tz="UTC")),
    ]
)


class ConfirmationConfig(PilotConfig):
    """The confirmation runs: the pilots' hyperparameters and held-out sets, plus what is compared."""

    evals: int = Field(1, description="evaluations after T = 0 (the verdicts use the final one)")
    seeds: list[int] = Field(
        [1, 2, 3], description="one run per arm and seed (training order, random draw); the pilots used seed 0"
    )
    subset_tokens: int = Field(
        RegimeRunSettings().size_tokens["large"],
        description="D of the DOS / random / lowest-PPL comparison (default: the largest regime-pilot size)",
    )
    cmr_step: float = Field(0.15, description="the ratio above the CMR that should break the general-loss tolerance")
    ci_level: float = Field(0.9, description="level of the paired t-intervals")


def _claim_check(claim: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(claim, asset=CONFIRMATIONS, blocking=False, description=description)


@dg.asset(
    key=CONFIRMATIONS,
    ins={"base_model": dg.AssetIn(BASE_MODEL)},
    deps=[CPT_MIXTURE],
    pool=TRAINING_POOL,
    group_name="validation",
    kinds={"pytorch", "mlflow", "delta"},
    code_version="confirmations-v1",
    **governance("validation", CONFIRMATIONS_SCHEMA),
    check_specs=[
        _claim_check("dos_beats_random", "DOS subset: lower held-out domain loss than a random one of equal tokens."),
        _claim_check("dos_beats_lowest_ppl", "DOS subset: lower held-out domain loss than the lowest-PPL one."),
        _claim_check("cmr_within_tolerance", "At the answered CMR the general loss rises by at most ε."),
        _claim_check("cmr_is_critical", "At CMR + 0.15 the general loss rises by more than ε."),
        _claim_check("law_predicts_dos_loss", "The law's predicted loss of the DOS subset within its held-out error."),
    ],
    description="The papers' claims re-checked on this build, several seeds each: DOS vs a random and the lowest-PPL "
    "subset of equal tokens; CPT at the CMR vs at CMR + 0.15 (general loss within ε or not); the law's predicted "
    "loss vs the observed one for the DOS subset. One row per claim with its verdict (confirmed / not confirmed / "
    "inconclusive) and interval; never fails the build.",
)
def confirmations(
    context: dg.AssetExecutionContext,
    config: ConfirmationConfig,
    base_model: dict,
    delta: DeltaStoreResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    store = delta.store()
    ppl_fit, cmr_fit = current_fit(store, "ppl_law"), current_fit(store, "cmr")
    manifest = ModelManifest.from_json(base_model)
    with as_failure():
        settings = config.settings()  # its seed draws the held-out sets: the pilots' (0) by default
        inputs = PilotInputs.load(store, manifest, settings)
        selection_version, order = inputs.selection_order()
        arms = _subset_arms(store, inputs, order, config)
    versions = inputs.versions | {
        FITS_TABLE: ppl_fit.fits_version,
        DATASET_TABLE: require_version(store, DATASET_TABLE),
    }
    tags = lineage_tags(context, versions, mlflow, base_model_revision=manifest.revision)
    params = config.model_dump() | {"ppl_fit": ppl_fit.fit_key, "cmr_fit": cmr_fit.fit_key}
    tracked = start_run(mlflow, "validation", "confirmations", tags, params)
    runner = _Runner(context, inputs, settings, config, mlflow, tracked)
    try:
        claims = _subset_claims(runner, arms, ppl_fit, config) + _cmr_claims(runner, inputs, order, cmr_fit, config)
        rows = _rows(claims, runner.records, versions, selection_version, ppl_fit, cmr_fit, tracked.run_id, context)
        commit = commit_info(
            context,
            CONFIRMATIONS,
            params,
            versions,
            input_parts={FITS_TABLE: [ppl_fit.lineage_part, cmr_fit.lineage_part]},
            models=model_record(manifest.to_json()),
        )
        version = store.overwrite(CONFIRMATIONS_TABLE, rows, commit, predicate=None)
        client = mlflow.client()
        for claim in claims:
            client.set_tag(tracked.run_id, f"verdict.{claim.claim}", claim.verdict)
        client.log_text(tracked.run_id, json.dumps([c.to_json() for c in claims], indent=2), "verdicts.json")
    except BaseException:
        finish(mlflow, tracked, ok=False)
        raise
    finish(mlflow, tracked, ok=True)
    for claim in claims:
        context.log.info(claim.summary())
    verdicts = {c.claim: c.verdict for c in claims}
    checks = [
        dg.AssetCheckResult(
            check_name=claim.claim,
            passed=claim.verdict == CONFIRMED,
            severity=dg.AssetCheckSeverity.WARN if claim.verdict == INCONCLUSIVE else dg.AssetCheckSeverity.ERROR,
            metadata={
                "verdict": claim.verdict,
                "basis": claim.basis,
                "interval": dg.MetadataValue.json(claim.interval.to_json()),
            },
            description=claim.summary(),
        )
        for claim in claims
    ]
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(CONFIRMATIONS_TABLE), version, CONFIRMATIONS_SCHEMA, rows.num_rows)
        | {
            "summary": "; ".join(f"{c.claim} {c.verdict}" for c in claims),
            "verdicts": dg.MetadataValue.json(verdicts),
            "claims": dg.MetadataValue.md(_claims_markdown(claims)),
            "runs": len(runner.records),
            "seconds": round(runner.seconds, 1),
            "mlflow_run": mlflow.run_link(tracked.experiment_id, tracked.run_id),
            "input_versions": dg.MetadataValue.json(versions),
        },
        check_results=checks,
    )


class _Runner:
    """Trains the confirmation runs one after another, with progress, and keeps what each observed."""

    def __init__(self, context, inputs, settings, config: ConfirmationConfig, mlflow, tracked) -> None:
        self.context, self.inputs, self.settings, self.config = context, inputs, settings, config
        self.mlflow, self.tracked = mlflow, tracked
        self.records: list[dict] = []
        self.seconds = 0.0
        self.planned = len(config.seeds) * (len(SUBSET_ARMS) + len(CMR_ARMS))

    def train(self, arm: str, seed: int, ratio: float, budget: int, domain_ids, general_ids) -> dict:
        start = time.perf_counter()
        train_config = replace(self.settings.train_config(budget, ratio), seed=seed)
        label = f"confirmation {len(self.records) + 1}/{self.planned} {arm} seed {seed}"
        result, _ = train_pilot(self.context, self.inputs, train_config, domain_ids, general_ids, label)
        self.seconds += time.perf_counter() - start
        record = {
            "arm": arm,
            "seed": seed,
            "ratio": ratio,
            "tokens": result.tokens,
            "domain_loss_T0": result.initial.domain_loss,
            "domain_loss": result.final.domain_loss,
            "general_loss_T0": result.initial.general_loss,
            "general_loss": result.final.general_loss,
        }
        self.records.append(record)
        left = self.planned - len(self.records)
        self.context.log.info(
            f"{label}: done in {time.perf_counter() - start:.1f} s ({result.tokens_per_second:,.0f} tok/s); "
            f"{left} left, ETA {left * self.seconds / len(self.records):.0f} s"
        )
        metrics = {k: v for k, v in record.items() if k.endswith("loss") or k.endswith("T0")}
        log_metrics(self.mlflow, self.tracked, [{f"{arm}.{k}": v for k, v in metrics.items()} | {"seed": seed}], "seed")
        return record


def _subset_arms(store, inputs: PilotInputs, order: list[str], config: ConfirmationConfig) -> dict:
    """Per arm, the chunk ids of each seed's subset of ``subset_tokens`` tokens and its stats."""
    regimes_version = inputs.versions[REGIMES_TABLE]
    pool = domain_pool(store, {REGIMES_TABLE: regimes_version}, None, columns=("chunk_id", "ppl", "n_tokens"))
    pool = pool.sort_by([("ppl", "ascending"), ("chunk_id", "ascending")])
    pool_ids = pool["chunk_id"].to_pylist()
    budget = config.subset_tokens
    dos, lowest = selection_prefix(inputs.scores, order, budget), selection_prefix(inputs.scores, pool_ids, budget)
    return {
        "dos": {s: dos for s in config.seeds},
        "random": {s: draw_chunks(inputs.scores, pool_ids, budget, s) for s in config.seeds},
        "lowest-ppl": {s: lowest for s in config.seeds},
    }


def _subset_claims(runner: _Runner, arms: dict, fit: CurrentFit, config: ConfirmationConfig) -> list[ClaimResult]:
    losses: dict[str, list[float]] = {arm: [] for arm in SUBSET_ARMS}
    for seed in config.seeds:
        for arm in SUBSET_ARMS:
            draw = arms[arm][seed]
            record = runner.train(arm, seed, 1.0, config.subset_tokens, draw.chunk_ids, ())
            losses[arm].append(record["domain_loss"])
    level = config.ci_level
    claims = [
        dos_beats("random", losses["dos"], losses["random"], level),
        dos_beats("lowest-ppl", losses["dos"], losses["lowest-ppl"], level),
    ]
    stats = arms["dos"][config.seeds[0]].stats
    space, kind = fit.config.get("ppl_space", "raw"), fit.config.get("sigma_kind", "std")
    mu, sigma = (stats.log_mu, stats.log_sigma) if space == "log" else (stats.mu, stats.sigma)
    sigma = sigma**2 if kind == "var" else sigma
    law = fit.result.get("fit") or {}
    band = law.get("heldout_rmse")
    if not law.get("params") or band is None:
        claims.append(unavailable("law_predicts_dos_loss", "the law predicts the DOS subset's loss", "no law fit"))
    else:
        predicted = float(PplLawParams(**law["params"]).predict(mu, sigma, config.subset_tokens))
        claim = law_predicts(losses["dos"], predicted, float(band), level)
        if not fit.gate_passed:
            claim = replace(claim, basis=f"{claim.basis}; the law failed its own gate")
        claims.append(claim)
    return claims


def _cmr_claims(runner: _Runner, inputs, order, fit: CurrentFit, config: ConfirmationConfig) -> list[ClaimResult]:
    ratio, tokens = fit.answer.get("ratio"), fit.answer.get("tokens")
    eps, relative = float(fit.config.get("eps", 0.05)), bool(fit.config.get("relative_eps", False))
    if ratio is None or tokens is None:
        why = "the CMR analysis gave no tolerable ratio to confirm"
        return [
            unavailable("cmr_within_tolerance", "the CMR keeps the general loss within ε", why),
            unavailable("cmr_is_critical", "a ratio above the CMR breaks the tolerance", why),
        ]
    tokens = round(tokens)
    out = []
    for claim, arm, r, exceed in (
        ("cmr_within_tolerance", "at-cmr", float(ratio), False),
        ("cmr_is_critical", "above-cmr", float(ratio) + config.cmr_step, True),
    ):
        if r > 1 + 1e-9:
            why = f"the CMR is {ratio:.3f}: no ratio {config.cmr_step} above it exists"
            out.append(unavailable(claim, "a ratio above the CMR breaks the tolerance", why))
            continue
        rises = []
        for seed in config.seeds:
            with as_failure():
                draws = mixture_draws(inputs.scores, r, tokens, seed, domain_order=order)
            record = runner.train(
                arm,
                seed,
                r,
                tokens,
                draws.domain.chunk_ids if draws.domain else (),
                draws.general.chunk_ids if draws.general else (),
            )
            l0 = record["general_loss_T0"]
            rises.append(record["general_loss"] - l0)
        limit = general_loss_limit(l0, eps, relative) - l0
        out.append(cmr_rise(claim, r, rises, limit, config.ci_level, should_exceed=exceed))
    return out


def _rows(claims, records, versions, selection_version, ppl_fit, cmr_fit, mlflow_run_id, context) -> pa.Table:
    now = datetime.now(UTC)
    rows = []
    for c in claims:
        runs = [r for r in records if r["arm"] in CLAIM_ARMS[c.claim]]
        rows.append(
            {
                "claim": c.claim,
                "verdict": c.verdict,
                "statement": c.statement,
                "measured": c.basis,
                "estimate": _finite(c.interval.estimate),
                "interval_low": _finite(c.interval.low),
                "interval_high": _finite(c.interval.high),
                "n_seeds": c.interval.n,
                "runs": json.dumps(runs),
                "dataset_version": versions[DATASET_TABLE],
                "selection_version": selection_version,
                "fit_key": (ppl_fit if c.claim.startswith(("dos", "law")) else cmr_fit).fit_key,
                "mlflow_run_id": mlflow_run_id,
                "dagster_run_id": context.run.run_id,
                "checked_at": now,
            }
        )
    return pa.Table.from_pylist(rows, schema=CONFIRMATIONS_SCHEMA)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _claims_markdown(claims: list[ClaimResult]) -> str:
    lines = "".join(f"| {c.claim} | **{c.verdict}** | {c.statement} | {c.basis} |\n" for c in claims)
    return "| claim | verdict | statement | measured |\n|---|---|---|---|\n" + lines
