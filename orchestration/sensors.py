"""Sensors: register sources as partitions and ingest them when they appear or change.

What the table already holds decides, not only what this sensor saw: every ``corpus/documents`` commit records the
fingerprint (a content hash) of the source it ingested, so a source the CLI or a UI run ingested is not ingested
again by a sensor whose cursor is empty (a new instance, the UI opened after ``make demo``).
"""

import json

import dagster as dg

from assets.corpus import DOCUMENTS_TABLE
from assets.partitions import corpus_sources
from assets.resources import CorpusCatalogResource, DeltaStoreResource
from cpt.corpus.publish import committed_fingerprints
from cpt.corpus.sources import source_fingerprint
from orchestration.jobs import ingest_corpus_job


@dg.sensor(
    job=ingest_corpus_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers every declared source and every file dropped in the landing folder "
    "(<landing>/domain/, <landing>/general/) as a corpus_sources partition, and ingests a source whose content "
    "differs from what corpus/documents last committed for it (and from what this sensor already requested).",
)
def corpus_landing_sensor(
    context: dg.SensorEvaluationContext, catalog: CorpusCatalogResource, delta: DeltaStoreResource
):
    requested: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    specs = catalog.specs()
    scan = catalog.landing()
    for name, paths in scan.conflicts.items():
        context.log.warning(f"landing files {list(paths)} all map to source {name!r}: none is ingested; rename them")
    for path, reason in scan.refused.items():
        context.log.warning(f"landing entry {path} is not ingested: {reason}")
    registered = set(context.instance.get_dynamic_partitions(corpus_sources.name))
    new_partitions = sorted(set(specs) - registered)
    committed = committed_fingerprints(delta.store(), DOCUMENTS_TABLE)
    runs = []
    current: dict[str, str] = {}
    for name, spec in sorted(specs.items()):
        current[name] = source_fingerprint(spec)
        if current[name] not in (committed.get(name), requested.get(name)):
            # the key names what the table held too: a file reverted to an earlier content (A → B → A) gets a new
            # key, where the content alone would repeat one Dagster never launches twice
            key = f"{name}:{current[name]}:from:{committed.get(name, '-')}"
            runs.append(dg.RunRequest(partition_key=name, run_key=key))
    if not runs and not new_partitions:
        return dg.SkipReason(f"every one of the {len(specs)} sources is ingested as it is now")
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[corpus_sources.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(current, sort_keys=True),
    )
