"""Sensors: register sources as partitions and ingest them when they appear or change."""

import json

import dagster as dg

from assets.partitions import corpus_sources
from assets.resources import CorpusCatalogResource
from cpt.corpus.sources import SourceSpec, SourceUnreadableError, source_files
from orchestration.jobs import ingest_corpus_job


def _fingerprint(spec: SourceSpec) -> str:
    """Names, sizes and modification times of a source's files: a change means it must be ingested again."""
    try:
        files = source_files(spec)
    except SourceUnreadableError:
        return "unreadable"  # its run will fail with the reason; a later fix changes the fingerprint
    return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


@dg.sensor(
    job=ingest_corpus_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers every declared source and every file dropped in the landing folder "
    "(<landing>/domain/, <landing>/general/) as a corpus_sources partition, and ingests new or changed ones.",
)
def corpus_landing_sensor(context: dg.SensorEvaluationContext, catalog: CorpusCatalogResource):
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    specs = catalog.specs()
    for name, paths in catalog.landing().conflicts.items():
        context.log.warning(f"landing files {list(paths)} all map to source {name!r}: none is ingested; rename them")
    registered = set(context.instance.get_dynamic_partitions(corpus_sources.name))
    new_partitions = sorted(set(specs) - registered)
    runs = []
    current: dict[str, str] = {}
    for name, spec in sorted(specs.items()):
        current[name] = _fingerprint(spec)
        if name in new_partitions or seen.get(name) != current[name]:
            runs.append(dg.RunRequest(partition_key=name, run_key=f"{name}:{current[name]}"))
    if not runs and not new_partitions:
        return dg.SkipReason(f"no new or changed sources among {len(specs)}")
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[corpus_sources.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(current, sort_keys=True),
    )
