"""Jobs: the per-source ingestion job (what the sensor and schedule launch) and one job per stage of the graph, in
the order the main job runs them: … regime pilots → PPL law ⇄ follow-up pilots → selection → mixture pilots → CMR
→ dataset → confirmations."""

import dagster as dg

ingest_corpus_job = dg.define_asset_job(
    "ingest_corpus",
    selection=dg.AssetSelection.groups("corpus"),
    description="Ingest one corpus source (a partition) into corpus/documents and corpus/rejects.",
)

base_model_job = dg.define_asset_job(
    "base_model",
    selection=dg.AssetSelection.groups("models"),
    description="Resolve (or pretrain) the base model.",
)

score_corpus_job = dg.define_asset_job(
    "score_corpus",
    selection=dg.AssetSelection.groups("scores"),
    description="Score the chunks of one or a range of corpus sources (a range is one Spark job).",
)

landscape_job = dg.define_asset_job(
    "landscape",
    selection=dg.AssetSelection.groups("landscape"),
    description="Histogram the pinned chunk scores (Spark) and build the candidate regimes for the pilot runs.",
)

regime_pilots_job = dg.define_asset_job(
    "regime_pilots",
    selection=dg.AssetSelection.assets(["pilots", "regime_runs"]),
    description="One pilot CPT run per (regime, size) partition; backfill it to run the whole grid.",
)

mixture_pilots_job = dg.define_asset_job(
    "mixture_pilots",
    selection=dg.AssetSelection.assets(["pilots", "mixture_runs"]),
    description="One pilot CPT run per mixture-ratio partition; backfill it to run every ratio.",
)

fit_laws_job = dg.define_asset_job(
    "fit_laws",
    selection=dg.AssetSelection.groups("laws"),
    description="Fit both scaling laws on the pilot tables; record and register them in MLflow.",
)

fit_ppl_law_job = dg.define_asset_job(
    "fit_ppl_law",
    selection=dg.AssetSelection.assets(["laws", "ppl_law"]),
    description="Fit the perplexity-aware law on the regime and follow-up pilots; its answer says whether a round of "
    "follow-up pilots is needed.",
)

plan_followups_job = dg.define_asset_job(
    "plan_followups",
    selection=dg.AssetSelection.assets(["pilots", "followup_regimes"]),
    description="When the current PPL-law fit asks for it: DOS-built regimes at and around its optimum, registered "
    "as new followup_runs partitions (one round).",
)

followup_pilots_job = dg.define_asset_job(
    "followup_pilots",
    selection=dg.AssetSelection.assets(["pilots", "followup_runs"]),
    description="One pilot CPT run per follow-up regime partition; backfill the new partitions, then refit the law.",
)

domain_selection_job = dg.define_asset_job(
    "domain_selection",
    selection=dg.AssetSelection.assets(["dataset", "domain_selection"]),
    description="Select domain chunks by DOS toward the current PPL-law answer (refused when it is not supported).",
)

select_domain_data_job = dg.define_asset_job(
    "select_domain_data",
    selection=dg.AssetSelection.assets(["laws", "ppl_law"], ["dataset", "domain_selection"]),
    description="Fit the perplexity-aware law on the regime pilots, then select domain chunks toward its target "
    "landscape by DOS (the law's blocking gate stops the selection).",
)

fit_cmr_job = dg.define_asset_job(
    "fit_cmr",
    selection=dg.AssetSelection.assets(["laws", "cmr"]),
    description="Fit the CMR analysis on the mixture pilots (trained on the DOS selection).",
)

build_dataset_job = dg.define_asset_job(
    "build_dataset",
    selection=dg.AssetSelection.assets(["dataset", "cpt_mixture"], ["audit", "lineage_report"]),
    description="Build the CPT dataset at the CMR answer: DOS domain chunks + general replay, checked and exported; "
    "then report its lineage.",
)

confirm_claims_job = dg.define_asset_job(
    "confirm_claims",
    selection=dg.AssetSelection.assets(["validation", "confirmations"]),
    description="Re-check the papers' claims at this build's scale (DOS vs baselines, the CMR, the law's "
    "prediction), several seeds each; a claim that fails is reported, never fails the build.",
)

audit_lineage_job = dg.define_asset_job(
    "audit_lineage",
    selection=dg.AssetSelection.groups("audit"),
    description="Report the lineage of every dataset version not yet reported, and of the latest.",
)

ALL_JOBS = [
    ingest_corpus_job,
    base_model_job,
    score_corpus_job,
    landscape_job,
    regime_pilots_job,
    mixture_pilots_job,
    fit_laws_job,
    fit_ppl_law_job,
    plan_followups_job,
    followup_pilots_job,
    domain_selection_job,
    select_domain_data_job,
    fit_cmr_job,
    build_dataset_job,
    confirm_claims_job,
    audit_lineage_job,
]
