"""Jobs: the per-source ingestion job (what the sensor and schedule launch) and the whole graph."""

import dagster as dg

ingest_corpus_job = dg.define_asset_job(
    "ingest_corpus",
    selection=dg.AssetSelection.groups("corpus"),
    description="Ingest one corpus source (a partition) into corpus/documents and corpus/rejects.",
)
