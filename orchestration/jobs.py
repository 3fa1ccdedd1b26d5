"""Jobs: the per-source ingestion job (what the sensor and schedule launch) and the whole graph."""

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

ALL_JOBS = [
    ingest_corpus_job,
    base_model_job,
    score_corpus_job,
    landscape_job,
    regime_pilots_job,
    mixture_pilots_job,
    fit_laws_job,
]
