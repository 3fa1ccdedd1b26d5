"""Stage ``corpus``: declared sources → the ``corpus/documents`` Delta table; malformed records → ``corpus/rejects``."""

import json
from datetime import UTC, datetime

import dagster as dg
import pyarrow.compute as pc

from assets.lineage import commit_info, counts_markdown, delta_metadata
from assets.partitions import corpus_sources
from assets.resources import CorpusCatalogResource, DeltaStoreResource
from cpt.corpus.ingest import IngestResult, ingest_source
from cpt.corpus.quality import duplicate_count, empty_text_count, schema_differences
from cpt.corpus.schema import DOCUMENTS_SCHEMA, PARTITION_COLUMN
from cpt.corpus.sources import SourceUnreadableError
from cpt.delta_store import DeltaStore, partition_predicate

DOCUMENTS = dg.AssetKey(["corpus", "documents"])
REJECTS = dg.AssetKey(["corpus", "rejects"])
DOCUMENTS_TABLE = "corpus/documents"
REJECTS_TABLE = "corpus/rejects"

CHECK_UNIQUE_IDS = "unique_doc_ids"
CHECK_NON_EMPTY_TEXT = "non_empty_text"
CHECK_SCHEMA = "schema_matches_contract"
CHECK_REJECT_RATE = "reject_rate_below_threshold"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            DOCUMENTS,
            description="One row per unique document (content-hash id) of every corpus source: role, train/eval "
            "split drawn by group, normalised text and counts. Partitioned by source.",
            group_name="corpus",
            kinds={"delta", "python"},
            code_version="corpus-documents-v1",
        ),
        dg.AssetSpec(
            REJECTS,
            description="One row per malformed source record (bad JSON, invalid UTF-8, missing/empty text, wrong "
            "types, truncated gzip), with the reason and the raw bytes. Partitioned by source.",
            group_name="corpus",
            kinds={"delta", "python"},
            code_version="corpus-documents-v1",
        ),
    ],
    partitions_def=corpus_sources,
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_UNIQUE_IDS, asset=DOCUMENTS, blocking=True, description="No doc_id appears twice in the whole table."
        ),
        dg.AssetCheckSpec(
            CHECK_NON_EMPTY_TEXT,
            asset=DOCUMENTS,
            blocking=True,
            description="Every document of the partition has non-blank text.",
        ),
        dg.AssetCheckSpec(
            CHECK_SCHEMA,
            asset=DOCUMENTS,
            blocking=True,
            description="The table has the documents contract's columns and types.",
        ),
        dg.AssetCheckSpec(
            CHECK_REJECT_RATE,
            asset=DOCUMENTS,
            blocking=True,
            description="The share of malformed records is at most the catalogue's max_reject_rate.",
        ),
    ],
    can_subset=False,
)
def corpus_documents(context: dg.AssetExecutionContext, delta: DeltaStoreResource, catalog: CorpusCatalogResource):
    source = catalog.resolve(context.partition_key)
    context.log.info(f"ingesting {source.name!r} ({source.format.value}, {source.role.value}) from {source.path}")
    try:
        result = ingest_source(source, run_id=context.run.run_id, ingested_at=datetime.now(UTC))
    except SourceUnreadableError as exc:
        raise dg.Failure(description=str(exc), metadata={"source": source.name, "path": source.path}) from exc
    stats = result.stats
    context.log.info(
        f"{source.name}: {stats.records_read} records → {stats.documents} documents, "
        f"{stats.duplicates_dropped} duplicates dropped, {stats.rejects} rejected {dict(stats.rejects_by_reason)}"
    )
    store = delta.store()
    predicate = partition_predicate({PARTITION_COLUMN: source.name})
    rejects_version = store.overwrite(
        REJECTS_TABLE,
        result.rejects,
        commit_info(context, REJECTS, source),
        predicate=predicate,
        partition_by=[PARTITION_COLUMN],
    )
    documents_version = store.overwrite(
        DOCUMENTS_TABLE,
        result.documents,
        commit_info(context, DOCUMENTS, source),
        predicate=predicate,
        partition_by=[PARTITION_COLUMN],
    )
    yield dg.MaterializeResult(
        asset_key=DOCUMENTS,
        metadata=_documents_metadata(store, documents_version, result)
        | {"source_spec": json.dumps({k: str(v) for k, v in vars(source).items()})},
        check_results=_documents_checks(store, documents_version, source.name, result, catalog.max_reject_rate),
    )
    yield dg.MaterializeResult(
        asset_key=REJECTS,
        metadata=delta_metadata(
            store.table_uri(REJECTS_TABLE), rejects_version, result.rejects.schema, result.rejects.num_rows
        )
        | {"rejects_by_reason": dict(stats.rejects_by_reason)},
    )


def _documents_metadata(store: DeltaStore, version: int, result: IngestResult) -> dict:
    stats = result.stats
    whole = store.read(DOCUMENTS_TABLE, version, columns=["role", "split"])
    by_role_split = (
        whole.group_by(["role", "split"])
        .aggregate([([], "count_all")])
        .sort_by([("role", "ascending"), ("split", "ascending")])
        .to_pylist()
    )
    return delta_metadata(store.table_uri(DOCUMENTS_TABLE), version, DOCUMENTS_SCHEMA, result.documents.num_rows) | {
        "table_rows_total": whole.num_rows,
        "documents_by_role_and_split": counts_markdown(by_role_split, ["role", "split", "count_all"]),
        "partition_documents_by_split": dict(stats.documents_by_split),
        "records_read": stats.records_read,
        "duplicates_dropped": stats.duplicates_dropped,
        "rejects": stats.rejects,
        "reject_rate": stats.reject_rate,
        "source_files": dg.MetadataValue.json(list(stats.files)),
    }


def _documents_checks(
    store: DeltaStore, version: int, source: str, result: IngestResult, max_reject_rate: float
) -> list[dg.AssetCheckResult]:
    table = store.read(DOCUMENTS_TABLE, version, columns=["doc_id", "source", "text"])
    dupes = duplicate_count(table["doc_id"])
    mine = table.filter(pc.equal(table["source"], source))
    empty = empty_text_count(mine["text"])
    differences = schema_differences(store.snapshot(DOCUMENTS_TABLE, version).schema, DOCUMENTS_SCHEMA)
    rate = result.stats.reject_rate
    return [
        dg.AssetCheckResult(
            check_name=CHECK_UNIQUE_IDS,
            asset_key=DOCUMENTS,
            passed=dupes == 0,
            metadata={"duplicate_ids": dupes, "rows": table.num_rows, "delta_version": version},
        ),
        dg.AssetCheckResult(
            check_name=CHECK_NON_EMPTY_TEXT,
            asset_key=DOCUMENTS,
            passed=empty == 0,
            metadata={"empty_texts": empty, "partition_rows": mine.num_rows},
        ),
        dg.AssetCheckResult(
            check_name=CHECK_SCHEMA,
            asset_key=DOCUMENTS,
            passed=not differences,
            metadata={"differences": dg.MetadataValue.json(differences)},
        ),
        dg.AssetCheckResult(
            check_name=CHECK_REJECT_RATE,
            asset_key=DOCUMENTS,
            passed=rate <= max_reject_rate,
            metadata={
                "reject_rate": rate,
                "max_reject_rate": max_reject_rate,
                "rejects_by_reason": dict(result.stats.rejects_by_reason),
            },
        ),
    ]
