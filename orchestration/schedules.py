"""Schedules: the daily data build."""

import dagster as dg

from assets.partitions import corpus_sources
from orchestration.jobs import ingest_corpus_job


@dg.schedule(
    job=ingest_corpus_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Daily build: re-ingest every registered corpus source (each run replaces its own partition).",
)
def daily_corpus_build(context: dg.ScheduleEvaluationContext):
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    keys = context.instance.get_dynamic_partitions(corpus_sources.name)
    if not keys:
        return dg.SkipReason("no corpus source is registered yet (the landing sensor registers them)")
    return [dg.RunRequest(partition_key=k, run_key=f"{day}:{k}") for k in keys]
