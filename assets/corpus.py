"""Stage ``corpus``: declared sources → the ``corpus/documents`` Delta table; malformed records → ``corpus/rejects``."""

from datetime import UTC, datetime

import dagster as dg

from assets.lineage import commit_info, counts_markdown, delta_metadata
from assets.partitions import corpus_sources
from assets.resources import CorpusCatalogResource, DeltaStoreResource
from cpt.corpus.ingest import IngestResult, ingest_source
from cpt.corpus.quality import duplicate_count, empty_text_count, schema_differences
from cpt.corpus.schema import DOCUMENTS_SCHEMA, PARTITION_COLUMN
from cpt.corpus.sources import SourceSpec, SourceUnreadableError
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
            skippable=True,  # not materialized when the candidate fails its checks
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
    store = delta.store()
    base_version = store.version(DOCUMENTS_TABLE)
    try:
        result = ingest_source(
            source,
            run_id=context.run.run_id,
            ingested_at=datetime.now(UTC),
            other_sources_ids=_ids_of_other_sources(store, base_version, source.name),
        )
    except SourceUnreadableError as exc:
        raise dg.Failure(description=str(exc), metadata={"source": source.name, "path": source.path}) from exc
    stats = result.stats
    context.log.info(
        f"{source.name}: {stats.records_read} records → {stats.documents} documents, {stats.duplicates_dropped} "
        f"duplicates and {stats.cross_source_duplicates} texts of other sources dropped, {stats.rejects} rejected "
        f"{dict(stats.rejects_by_reason)}"
    )
    predicate = partition_predicate({PARTITION_COLUMN: source.name})
    # The quarantine is always recorded; the documents partition is replaced only when the candidate passes the
    # checks, so a failed gate leaves it at its last good version (and the blocking check stops downstream work).
    rejects_version = store.overwrite(
        REJECTS_TABLE,
        result.rejects,
        commit_info(context, REJECTS, source),
        predicate=predicate,
        partition_by=[PARTITION_COLUMN],
    )
    gate = _gate_checks(store, base_version, result, catalog.max_reject_rate)
    if all(c.passed for c in gate):
        documents_version = store.overwrite(
            DOCUMENTS_TABLE,
            result.documents,
            commit_info(context, DOCUMENTS, source),
            predicate=predicate,
            partition_by=[PARTITION_COLUMN],
        )
        yield dg.MaterializeResult(
            asset_key=DOCUMENTS,
            metadata=_documents_metadata(store, documents_version, result, source),
            check_results=[*gate, _unique_ids_check(store, documents_version)],
        )
    else:
        failed = [c.check_name for c in gate if not c.passed]
        context.log.error(f"{source.name}: checks {failed} failed; corpus/documents left at version {base_version}")
        yield from gate
        yield dg.AssetCheckResult(
            check_name=CHECK_UNIQUE_IDS,
            asset_key=DOCUMENTS,
            passed=True,
            metadata={"note": "not re-evaluated: nothing was written"},
        )
    yield dg.MaterializeResult(
        asset_key=REJECTS,
        metadata=delta_metadata(
            store.table_uri(REJECTS_TABLE), rejects_version, result.rejects.schema, result.rejects.num_rows
        )
        | {"rejects_by_reason": dict(stats.rejects_by_reason)},
    )


def _ids_of_other_sources(store: DeltaStore, version: int | None, source: str) -> frozenset[str]:
    if version is None:
        return frozenset()
    ids = store.read(DOCUMENTS_TABLE, version, columns=["doc_id"], filters=[(PARTITION_COLUMN, "!=", source)])
    return frozenset(ids.column("doc_id").to_pylist())


def _documents_metadata(store: DeltaStore, version: int, result: IngestResult, source: SourceSpec) -> dict:
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
        "cross_source_duplicates": stats.cross_source_duplicates,
        "rejects": stats.rejects,
        "reject_rate": stats.reject_rate,
        "source_files": dg.MetadataValue.json(list(stats.files)),
        "source_spec": dg.MetadataValue.json({k: str(v) for k, v in vars(source).items()}),
    }


def _gate_checks(
    store: DeltaStore, base_version: int | None, result: IngestResult, max_reject_rate: float
) -> list[dg.AssetCheckResult]:
    """The checks a candidate partition must pass before it replaces the committed one."""
    empty = empty_text_count(result.documents["text"])
    table_schema = store.snapshot(DOCUMENTS_TABLE, base_version).schema if base_version is not None else None
    differences = schema_differences(table_schema or result.documents.schema, DOCUMENTS_SCHEMA)
    stats = result.stats
    no_documents = stats.documents == 0 and stats.rejects > 0
    return [
        dg.AssetCheckResult(
            check_name=CHECK_NON_EMPTY_TEXT,
            asset_key=DOCUMENTS,
            passed=empty == 0,
            metadata={"empty_texts": empty, "partition_rows": result.documents.num_rows},
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
            passed=stats.reject_rate <= max_reject_rate and not no_documents,
            description="every record was rejected: is text_field right?" if no_documents else None,
            metadata={
                "reject_rate": stats.reject_rate,
                "max_reject_rate": max_reject_rate,
                "rejects_by_reason": dict(stats.rejects_by_reason),
            },
        ),
    ]


def _unique_ids_check(store: DeltaStore, version: int) -> dg.AssetCheckResult:
    ids = store.read(DOCUMENTS_TABLE, version, columns=["doc_id"])["doc_id"]
    dupes = duplicate_count(ids)
    return dg.AssetCheckResult(
        check_name=CHECK_UNIQUE_IDS,
        asset_key=DOCUMENTS,
        passed=dupes == 0,
        metadata={"duplicate_ids": dupes, "rows": len(ids), "delta_version": version},
    )
