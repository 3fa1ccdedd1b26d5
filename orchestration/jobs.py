"""Jobs: the per-source ingestion job (what the sensor and schedule launch) and one job per stage of the graph, in
the order the main job runs them: … regime pilots → PPL law → selection → mixture pilots → CMR → dataset."""

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
    select_domain_data_job,
    fit_cmr_job,
    build_dataset_job,
    audit_lineage_job,
]
