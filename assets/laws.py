"""Stage ``laws``: both scaling laws fitted on the pilot runs, turned into answers, recorded and registered.

- ``laws/ppl_law``: the perplexity-aware data law ``L(μ, σ, D)`` against its null (the size-only law), the optimal
  landscape over what the domain pool can reach, and the target landscape with its basis;
- ``laws/cmr``: the CMR analysis of the mixture runs and the CMR answer at the target budget, with its basis.

The science and the rules live in ``cpt.laws`` (``reports`` computes one set of numbers for MLflow, the fits table,
the metadata and the check); ``assets.law_publishing`` records them. A fit whose blocking gate fails is recorded and
registered with its gate status but not promoted: the ``champion`` alias stays where it was.
"""

from collections.abc import Callable
from dataclasses import fields

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.corpus import DOCUMENTS_TABLE
from assets.landscape import REGIMES, REGIMES_TABLE
from assets.law_publishing import FITS_SCHEMA, FITS_TABLE, FitOutput, Published, publish
from assets.lineage import delta_metadata, governance, require_version
from assets.pilots import (
    FOLLOWUP_RUNS_TABLE,
    MIXTURE_RUNS,
    MIXTURE_RUNS_TABLE,
    REGIME_RUNS,
    REGIME_RUNS_TABLE,
)
from assets.resources import DeltaStoreResource, MlflowResource
from cpt.landscape.regimes import RANDOM
from cpt.laws.errors import LawFitError
from cpt.laws.gates import GateResult
from cpt.laws.reports import CmrSettings, PplSettings, cmr_report, ppl_report
from cpt.training.pilot_inputs import selection_version
from spark_jobs.dataset import SELECTION_TABLE
from spark_jobs.scoring import SCORES_TABLE

PPL_LAW = dg.AssetKey(["laws", "ppl_law"])
CMR = dg.AssetKey(["laws", "cmr"])
CHECK_PPL_QUALITY = "ppl_law_fit_quality"
CHECK_PPL_ANSWER = "landscape_answer_supported"
CHECK_CMR_QUALITY = "cmr_fit_quality"
__all__ = [
    "CHECK_CMR_QUALITY",
    "CHECK_PPL_ANSWER",
    "CHECK_PPL_QUALITY",
    "CMR",
    "FITS_SCHEMA",
    "FITS_TABLE",
    "PPL_LAW",
    "cmr",
    "ppl_law",
]

_PPL, _CMR = PplSettings(), CmrSettings()  # the defaults' one home


class PplLawConfig(dg.Config):
    """Options of the perplexity-aware law, its answer and its gate (recorded with the fit). Defaults:
    :class:`cpt.laws.reports.PplSettings`."""

    sigma_kind: str = Field(_PPL.sigma_kind, description="σ as standard deviation (std) or variance (var)")
    ppl_space: str = Field(_PPL.ppl_space, description="statistics of raw PPL (raw) or of log-PPL (log)")
    n_bootstrap: int = Field(_PPL.n_bootstrap, description="bootstrap refits over resampled regimes")
    ci_level: float = Field(_PPL.ci_level, description="level of every interval")
    seed: int = Field(_PPL.seed, description="seed of the bootstraps")
    eval_aggregate: str = Field(
        _PPL.eval_aggregate, description="held-out loss of a run: mean (per token), trimmed, or median (per chunk)"
    )
    eval_trim: float = Field(_PPL.eval_trim, description="share of chunks cut at each end by 'trimmed'")
    trust_margin: float = Field(
        _PPL.trust_margin, description="the optimum is searched within the pilots' (μ, σ) hull widened by this share"
    )
    selection_tokens: int | None = Field(
        _PPL.selection_tokens, description="size of the subset the reachable region is for (default: largest pilot D)"
    )
    max_heldout_relative_error: float = Field(
        _PPL.max_heldout_relative_error, description="gate: leave-one-regime-out RMSE / mean loss"
    )
    min_gain: float = Field(
        _PPL.min_gain, description="gate: the gain over the size-only law must exceed this at its interval's low end"
    )
    min_within_size_r2: float = Field(
        _PPL.min_within_size_r2, description="gate and answer: mean held-out R² within a pilot size must exceed this"
    )
    followup_rounds: int = Field(
        _PPL.followup_rounds,
        description="at most this many rounds of follow-up pilots at and around the optimum (0: none)",
    )
    followup_max_relative_width: float = Field(
        _PPL.followup_max_relative_width,
        description="follow up when the optimum's μ or σ interval is wider than this share of its value",
    )
    registered_model: str = Field("cptdata-ppl-law", description="MLflow registered model name")

    def settings(self) -> PplSettings:
        return PplSettings(**{f.name: getattr(self, f.name) for f in fields(PplSettings)})


class CmrConfig(dg.Config):
    """Options of the CMR analysis, its answer and its gate (recorded with the fit). Defaults:
    :class:`cpt.laws.reports.CmrSettings`."""

    lam: float = Field(_CMR.lam, description="λ: weight of general against domain loss (the paper used 100–7000)")
    eps: float = Field(_CMR.eps, description="general-loss tolerance ε")
    relative_eps: bool = Field(_CMR.relative_eps, description="ε as a fraction of L_gen0 instead of absolute")
    target_tokens: int | None = Field(
        _CMR.target_tokens,
        description="the CPT budget to answer for; default: the pilots' T_max (beyond it: flagged extrapolated)",
    )
    n_bootstrap: int = Field(_CMR.n_bootstrap, description="bootstrap replicates of every trajectory")
    ci_level: float = Field(_CMR.ci_level, description="level of every interval")
    seed: int = Field(_CMR.seed, description="seed of the bootstrap")
    eval_aggregate: str = Field(
        _CMR.eval_aggregate, description="held-out loss of a checkpoint: mean (per token), trimmed, or median"
    )
    eval_trim: float = Field(_CMR.eval_trim, description="share of chunks cut at each end by 'trimmed'")
    holdout_fraction: float = Field(
        _CMR.holdout_fraction, description="last share of each run's tokens held out to score the trajectory fits"
    )
    max_trajectory_rmse: float = Field(_CMR.max_trajectory_rmse, description="gate: largest trajectory-fit RMSE")
    max_heldout_rmse: float = Field(_CMR.max_heldout_rmse, description="gate: RMSE at held-out later checkpoints")
    max_cmr_law_residual: float = Field(
        _CMR.max_cmr_law_residual, description="the CMR law is used only within this RMSE (in R) of its points"
    )
    registered_model: str = Field("cptdata-cmr-law", description="MLflow registered model name")

    def settings(self) -> CmrSettings:
        return CmrSettings(**{f.name: getattr(self, f.name) for f in fields(CmrSettings)})


@dg.asset(
    key=PPL_LAW,
    # pilots/followup_runs is read too, but not declared: the follow-ups are planned from this fit, and an asset
    # graph has no cycles. Each fit's Delta commit records the follow-up runs version it read (its lineage).
    deps=[REGIME_RUNS, REGIMES],
    group_name="laws",
    kinds={"scipy", "mlflow", "delta"},
    code_version="ppl-law-v2",
    **governance("laws", FITS_SCHEMA),
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_PPL_QUALITY,
            asset=PPL_LAW,
            description="The law converged, predicts held-out regimes better than the size-only law (the gain's "
            "interval above zero), explains part of the spread within a pilot size, and its held-out error is "
            "within bound. A failure leaves the registered champion where it was; it blocks the selection only "
            "through the answer check, when the answer rests on the law.",
        ),
        dg.AssetCheckSpec(
            CHECK_PPL_ANSWER,
            asset=PPL_LAW,
            blocking=True,
            description="The target landscape is supported by its basis: a law optimum needs the law's gate to pass; "
            "a best-pilot-regime or size-law answer rests on the observed pilots. Blocks the DOS selection.",
        ),
    ],
    description="The perplexity-aware data law L(μ, σ, D) on the regime (and follow-up) pilots, tested against the "
    "size-only law "
    "held out by regime; the optimal landscape over what the domain pool can reach, with its bootstrap spread and "
    "near-optimal set; and the target landscape a user acts on, with its basis (law optimum | best pilot regime | "
    "size law). One row of laws/fits.",
)
def ppl_law(
    context: dg.AssetExecutionContext, config: PplLawConfig, delta: DeltaStoreResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    store = delta.store()
    inputs = {REGIME_RUNS_TABLE: require_version(store, REGIME_RUNS_TABLE)}
    inputs[REGIMES_TABLE] = require_version(store, REGIMES_TABLE)
    runs = store.read(REGIME_RUNS_TABLE, inputs[REGIME_RUNS_TABLE])
    pool = domain_pool(store, inputs, runs)
    runs = _with_followups(context, store, inputs, runs)
    settings = _settings(config)
    report = _fitted(
        "the perplexity-aware law",
        lambda: ppl_report(
            runs, REGIME_RUNS_TABLE, pool["ppl"].to_numpy(), pool["n_tokens"].to_numpy(), settings, RANDOM
        ),
    )
    from cpt.laws.plots import ppl_fit_png, ppl_surface_png  # matplotlib: loaded when a fit is drawn

    out = FitOutput(
        "ppl_law",
        "ppl",
        report.fit.params.as_dict(),
        report.quality(),
        report.to_json(),
        report.answer_json(),
        report.summary(),
        report.gate,
        {"observed_vs_predicted.png": ppl_fit_png(report), "loss_surface.png": ppl_surface_png(report)},
    )
    published = publish(context, store, mlflow, out, config, config.registered_model, inputs)
    context.log.info(out.summary)
    result = _result(store, mlflow, published, config.registered_model, out, CHECK_PPL_QUALITY, inputs)
    answer_check = _check(CHECK_PPL_ANSWER, report.answer_gate)
    return dg.MaterializeResult(metadata=result.metadata, check_results=[*result.check_results, answer_check])


@dg.asset(
    key=CMR,
    deps=[MIXTURE_RUNS],
    group_name="laws",
    kinds={"scipy", "mlflow", "delta"},
    code_version="cmr-v2",
    **governance("laws", FITS_SCHEMA),
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_CMR_QUALITY,
            asset=CMR,
            blocking=True,
            description="Trajectory fits within their RMSE bound, in sample and at held-out later checkpoints, and "
            "a ratio within the general-loss tolerance to answer with. A failure leaves the champion where it was.",
        )
    ],
    description="The critical-mixture-ratio analysis of the mixture pilots: trajectories per ratio, T0 (the last "
    "+→− crossing of ∂F/∂T), tolerance and feasible sets, the CMR law, and the CMR answer at the target budget "
    "(basis law | measured, with its bootstrap interval and an extrapolated flag), a λ × ε sensitivity table and "
    "the answer under robust eval losses. One row of laws/fits.",
)
def cmr(
    context: dg.AssetExecutionContext, config: CmrConfig, delta: DeltaStoreResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    store = delta.store()
    inputs = {MIXTURE_RUNS_TABLE: require_version(store, MIXTURE_RUNS_TABLE)}
    runs = store.read(MIXTURE_RUNS_TABLE, inputs[MIXTURE_RUNS_TABLE])
    drawn_from = {selection_version(r) for r in runs["regime"].to_pylist()} - {None}
    if len(drawn_from) == 1:  # the DOS selection the pilots trained on: the dataset must hold the same data
        inputs[SELECTION_TABLE] = drawn_from.pop()
    settings = _settings(config)
    report = _fitted("the CMR analysis", lambda: cmr_report(runs, MIXTURE_RUNS_TABLE, settings))
    from cpt.laws.plots import cmr_law_png, cmr_trajectories_png  # matplotlib: loaded when a fit is drawn

    analysis = report.analysis
    out = FitOutput(
        "cmr",
        "cmr",
        {"answer_model": analysis.answer_model.to_json(), "cmr": analysis.cmr},
        report.quality(),
        report.to_json(),
        report.answer_json(),
        report.summary(),
        report.gate,
        {
            "trajectories.png": cmr_trajectories_png(analysis, report.data.trajectories),
            "cmr_law.png": cmr_law_png(analysis, report.answer),
        },
    )
    published = publish(context, store, mlflow, out, config, config.registered_model, inputs)
    context.log.info(out.summary)
    extra = {
        "sensitivity": _sensitivity_markdown(analysis),
        "eval_sensitivity": dg.MetadataValue.json(report.eval_sensitivity),
        "t0_by_ratio": dg.MetadataValue.json({str(f.ratio): [f.t0, f.t0_kind, f.t0_ci] for f in analysis.fits}),
    }
    return _result(store, mlflow, published, config.registered_model, out, CHECK_CMR_QUALITY, inputs, extra)


def _settings(config: PplLawConfig | CmrConfig) -> PplSettings | CmrSettings:
    try:
        return config.settings()  # validates every option before any work
    except ValueError as exc:
        raise dg.Failure(f"invalid run config: {exc}") from exc


def _fitted(what: str, fit: Callable):
    """Run a fit; a law that cannot be fitted fails the asset with its typed reason (never numbers that look fine)."""
    try:
        return fit()
    except LawFitError as exc:
        raise dg.Failure(f"{what} cannot be fitted: {exc}") from exc


def _with_followups(context, store, inputs: dict[str, int], runs: pa.Table) -> pa.Table:
    """The regime runs and the follow-up pilots trained on the same scores (those of an older landscape are left
    out: their regimes were cut from other scores)."""
    version = store.version(FOLLOWUP_RUNS_TABLE)
    if version is None:
        return runs
    followups = store.read(FOLLOWUP_RUNS_TABLE, version)
    same = followups.filter(pc.equal(followups["scores_version"], inputs[SCORES_TABLE]))
    if same.num_rows < followups.num_rows:
        context.log.info(f"{followups.num_rows - same.num_rows} follow-up pilot rows of older scores left out")
    if same.num_rows == 0:
        return runs
    inputs[FOLLOWUP_RUNS_TABLE] = version
    return pa.concat_tables([runs, same.select(runs.column_names).cast(runs.schema)])


def domain_pool(
    store, inputs: dict[str, int], runs: pa.Table | None, columns: tuple[str, ...] = ("doc_id", "ppl", "n_tokens")
) -> pa.Table:
    """PPL and token counts of the domain train chunks the dataset is selected from (no eval document, no document
    sharing a group with one: the selection's leak-free pool), at the scores version, model and window policy the
    landscape pinned — which the pilots (``runs``; None: no pilots to check) must have trained on. The scores and
    documents versions read join ``inputs``."""
    regimes_version = inputs[REGIMES_TABLE]
    pins = store.read(REGIMES_TABLE, regimes_version, columns=["scores_version", "model_revision", "policy_hash"])
    if pins.num_rows == 0:
        raise dg.Failure(f"{REGIMES_TABLE} v{regimes_version} is empty: rebuild the landscape")
    pin = pins.slice(0, 1).to_pylist()[0]
    used = {pin["scores_version"]} if runs is None else set(runs["scores_version"].to_pylist())
    if used != {pin["scores_version"]}:
        raise dg.Failure(
            f"the regime pilots trained on scores v{sorted(used)} but the landscape now pins v{pin['scores_version']}: "
            "rerun the pilots (a backfill of pilots/regime_runs)"
        )
    filters = [
        ("role", "=", "domain"),
        ("split", "=", "train"),
        ("model_revision", "=", pin["model_revision"]),
        ("policy_hash", "=", pin["policy_hash"]),
    ]
    scores = store.read(SCORES_TABLE, pin["scores_version"], columns=sorted({"doc_id", *columns}), filters=filters)
    inputs[SCORES_TABLE] = pin["scores_version"]
    inputs[DOCUMENTS_TABLE] = require_version(store, DOCUMENTS_TABLE)  # pinned: what the pool was cut from
    # the pool DOS will select from: no chunk of an eval document or of a document sharing a group with one
    docs = store.read(DOCUMENTS_TABLE, inputs[DOCUMENTS_TABLE], columns=["doc_id", "group_id", "split"])
    eval_docs = docs.filter(pc.equal(docs["split"], "eval"))
    leaking = pc.is_in(docs["group_id"], eval_docs["group_id"])
    excluded = pa.concat_arrays([eval_docs["doc_id"].combine_chunks(), docs.filter(leaking)["doc_id"].combine_chunks()])
    return scores.filter(pc.invert(pc.is_in(scores["doc_id"], excluded)))


def _result(store, mlflow, published: Published, name, out: FitOutput, check, inputs, extra=None):
    link = mlflow.run_link(published.run.experiment_id, published.run.run_id)
    metadata = delta_metadata(store.table_uri(FITS_TABLE), published.delta_version, FITS_SCHEMA, 1) | {
        "answer": out.summary,
        "basis": str(out.answer["basis"]),
        "answer_detail": dg.MetadataValue.json(out.answer),
        "quality": dg.MetadataValue.json({k: v for k, v in out.quality.items()}),
        "gate": dg.MetadataValue.json(out.gate.to_json()),
        "mlflow_run": link,
        "registered_model": f"models:/{name}/{published.model_version}",
        "promoted": published.promoted,
        "input_versions": dg.MetadataValue.json(inputs),
        **{f"plot_{k[:-4]}": _image(png) for k, png in out.plots.items()},
        **(extra or {}),
    }
    return dg.MaterializeResult(metadata=metadata, check_results=[_check(check, out.gate)])


def _check(name: str, gate: GateResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        passed=gate.passed,
        metadata={"problems": dg.MetadataValue.json(list(gate.problems)), **{k: v for k, v in gate.values.items()}},
        description="; ".join(gate.problems) or None,
    )


def _sensitivity_markdown(analysis) -> dg.MetadataValue:
    lines = "".join(
        f"| {c.lam:g} | {c.eps:g} | {list(c.feasible_set)} | {c.cmr} | "
        f"{'—' if c.answer is None else f'{c.answer:.3f}'} ({c.basis}) |\n"
        for c in analysis.sensitivity
    )
    return dg.MetadataValue.md("| λ | ε | feasible ratios | CMR | answer |\n|---|---|---|---|---|\n" + lines)


def _image(png: bytes) -> dg.MetadataValue:
    import base64

    return dg.MetadataValue.md(f"![plot](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")
