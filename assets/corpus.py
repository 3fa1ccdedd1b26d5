"""Stage ``corpus``: declared sources → the ``corpus/documents`` Delta table; malformed records → ``corpus/rejects``.

One run ingests one source (a partition): the rejects partition is replaced, the candidate documents pass the gate
checks, then :func:`cpt.corpus.publish.publish_documents` replaces the documents partition against the very version
it checked cross-source uniqueness on (optimistic concurrency; its docstring says why that and not a concurrency
pool). A source without documents fails unless it allows being empty. Each documents materialization carries a
data version of the partition's content, so a changed corpus marks what depends on it stale and an unchanged
re-ingest does not; each commit records the source fingerprint the landing sensor compares with.
"""

from datetime import UTC, datetime

import dagster as dg

from assets.lineage import commit_info, counts_markdown, delta_metadata, governance
from assets.partitions import corpus_sources
from assets.resources import CorpusCatalogResource, DeltaStoreResource
from cpt.corpus.ingest import IngestResult, ingest_source, rejects_data_version
from cpt.corpus.publish import PublishConflictError, Published, publish_documents
from cpt.corpus.quality import duplicate_count, empty_text_count, schema_differences
from cpt.corpus.schema import DOCUMENTS_SCHEMA, PARTITION_COLUMN, REJECTS_SCHEMA
from cpt.corpus.sources import (
    EmptySourceError,
    SourceSpec,
    SourceUnreadableError,
    file_records,
    source_fingerprint,
)
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
            code_version="corpus-documents-v2",
            **governance("corpus", DOCUMENTS_SCHEMA),
            skippable=True,  # not materialized when the candidate fails its checks
        ),
        dg.AssetSpec(
            REJECTS,
            description="One row per malformed source record (bad JSON, invalid UTF-8, missing/empty text, wrong "
            "types, truncated or corrupt gzip), with the reason and the raw bytes. Partitioned by source.",
            group_name="corpus",
            kinds={"delta", "python"},
            code_version="corpus-documents-v2",
            **governance("corpus", REJECTS_SCHEMA),
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
    fingerprint = source_fingerprint(source)  # before reading: a change made meanwhile is ingested on the next tick
    files = _file_records(source)  # recorded on both commits: the lineage of every row goes back to these bytes
    store = delta.store()
    base_version = store.version(DOCUMENTS_TABLE)
    try:
        result = ingest_source(source, run_id=context.run.run_id, ingested_at=datetime.now(UTC))
    except SourceUnreadableError as exc:  # also an empty source: nothing is written, the partition keeps its data
        raise dg.Failure(description=str(exc), metadata={"source": source.name, "path": source.path}) from exc
    if _content(_file_records(source)) != _content(files):  # what was hashed is what was read (a touch is fine)
        raise dg.Failure(
            description=f"source {source.name!r}: its files changed while they were read; nothing was committed, "
            "rerun the ingest",
            metadata={"source": source.name, "path": source.path},
        )
    stats = result.stats
    context.log.info(
        f"{source.name}: {stats.records_read} records → {stats.documents} documents, {stats.duplicates_dropped} "
        f"duplicates dropped, {stats.rejects} rejected {dict(stats.rejects_by_reason)}"
        + (f", {stats.sampled_out} outside the {source.sample_fraction:g} sample" if stats.sampled_out else "")
    )
    predicate = partition_predicate({PARTITION_COLUMN: source.name})
    # The quarantine is always recorded; the documents partition is replaced only when the candidate passes the
    # checks, so a failed gate leaves it at its last good version (and the blocking check stops downstream work).
    rejects_version = store.overwrite(
        REJECTS_TABLE,
        result.rejects,
        commit_info(context, REJECTS, source, files=files),
        predicate=predicate,
        partition_by=[PARTITION_COLUMN],
    )
    ingest_checkpoint("rejects_committed")
    rejects_materialization = dg.MaterializeResult(
        asset_key=REJECTS,
        metadata=delta_metadata(
            store.table_uri(REJECTS_TABLE), rejects_version, result.rejects.schema, result.rejects.num_rows
        )
        | {"rejects_by_reason": dict(stats.rejects_by_reason)},
        data_version=dg.DataVersion(rejects_data_version(result.rejects)),
    )
    gate = _gate_checks(store, base_version, result, catalog.max_reject_rate)
    if not all(c.passed for c in gate):
        failed = [c.check_name for c in gate if not c.passed]
        context.log.error(f"{source.name}: checks {failed} failed; corpus/documents left at version {base_version}")
        yield from gate
        yield dg.AssetCheckResult(
            check_name=CHECK_UNIQUE_IDS,
            asset_key=DOCUMENTS,
            passed=True,
            metadata={"note": "not re-evaluated: nothing was written"},
        )
        yield rejects_materialization
        return
    try:
        published = publish_documents(
            store,
            DOCUMENTS_TABLE,
            source,
            result,
            commit_info(context, DOCUMENTS, source, files=files),
            fingerprint=fingerprint,
            checkpoint=lambda point: ingest_checkpoint(point),
        )
    except (EmptySourceError, PublishConflictError) as exc:
        yield rejects_materialization  # the quarantine was recorded; the documents partition did not move
        raise dg.Failure(description=str(exc), metadata={"source": source.name, "path": source.path}) from exc
    ingest_checkpoint("documents_committed")
    final = published.result.stats
    context.log.info(
        f"{source.name}: {final.documents} documents committed at corpus/documents v{published.version} "
        f"({final.cross_source_duplicates} texts other sources hold dropped, checked against "
        f"v{published.checked_against}, attempt {published.attempts})"
    )
    yield dg.MaterializeResult(
        asset_key=DOCUMENTS,
        metadata=_documents_metadata(store, published, source, fingerprint, files),
        check_results=[*gate, _unique_ids_check(store, published.version)],
        data_version=dg.DataVersion(published.data_version),
    )
    yield rejects_materialization


def _file_records(source: SourceSpec) -> list[dict]:
    try:
        return file_records(source)
    except (SourceUnreadableError, OSError):
        return []  # the ingest itself fails on this and says why


def _content(records: list[dict]) -> list[tuple]:
    return [(r["path"], r["sha256"], r["bytes"]) for r in records]


def ingest_checkpoint(point: str) -> None:
    """A named point of an ingest: ``rejects_committed``, ``documents_files_written`` (before the documents commit),
    ``documents_committed`` (before Dagster records the materialization). Does nothing; the reliability tests
    replace it to pause or kill an ingest exactly there."""
    return None


def _documents_metadata(
    store: DeltaStore, published: Published, source: SourceSpec, fingerprint: str, files: list[dict]
) -> dict:
    stats = published.result.stats
    whole = store.read(DOCUMENTS_TABLE, published.version, columns=["role", "split"])
    by_role_split = (
        whole.group_by(["role", "split"])
        .aggregate([([], "count_all")])
        .sort_by([("role", "ascending"), ("split", "ascending")])
        .to_pylist()
    )
    uri = store.table_uri(DOCUMENTS_TABLE)
    return delta_metadata(uri, published.version, DOCUMENTS_SCHEMA, published.result.documents.num_rows) | {
        "table_rows_total": whole.num_rows,
        "documents_by_role_and_split": counts_markdown(by_role_split, ["role", "split", "count_all"]),
        "partition_documents_by_split": dict(stats.documents_by_split),
        "records_read": stats.records_read,
        "duplicates_dropped": stats.duplicates_dropped,
        "sampled_out": stats.sampled_out,
        "cross_source_duplicates": stats.cross_source_duplicates,
        "cross_source_checked_at_version": published.checked_against,
        "publish_attempts": published.attempts,
        "rejects": stats.rejects,
        "reject_rate": stats.reject_rate,
        "source_files": dg.MetadataValue.json(files or list(stats.files)),  # path, SHA-256, size, mtime
        "source_fingerprint": fingerprint,
        "data_version": published.data_version,
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
