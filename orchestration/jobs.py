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
