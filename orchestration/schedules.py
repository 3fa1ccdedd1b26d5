"""Schedules: the corpus build (daily at 02:00 UTC by default; ``CPTDATA_CORPUS_BUILD_CRON`` and
``CPTDATA_CORPUS_BUILD_ON`` change when, and whether it runs from the start)."""

import dagster as dg

from assets.partitions import corpus_sources
from orchestration.jobs import ingest_corpus_job

DAILY = "0 2 * * *"


def corpus_build_schedule(cron: str = DAILY, running: bool = False) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="daily_corpus_build",
        job=ingest_corpus_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        description=f"The corpus build ({cron} UTC): re-ingest every registered corpus source (each run replaces "
        "its own partition).",
    )
    def daily_corpus_build(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M")
        keys = context.instance.get_dynamic_partitions(corpus_sources.name)
        if not keys:
            return dg.SkipReason("no corpus source is registered yet (the landing sensor registers them)")
        return [dg.RunRequest(partition_key=k, run_key=f"{tick}:{k}") for k in keys]

    return daily_corpus_build


daily_corpus_build = corpus_build_schedule()  # the default, as the code location has it without settings
