"""The landing sensor decides from the table (issue 12): a source the CLI (or any run) ingested is not ingested again
by a sensor whose cursor is empty; a changed source is."""

from __future__ import annotations

import json
import os

import dagster as dg

from assets.partitions import corpus_sources
from cpt.corpus.sources import SourceSpec, source_fingerprint
from orchestration.definitions import build_definitions
from orchestration.sensors import corpus_landing_sensor
from tests.reliability.test_ingest_helpers import source, texts, write_source


def evaluate(instance, defs, cursor=None):
    resources = {"catalog": defs.resources["catalog"], "delta": defs.resources["delta"]}
    result = corpus_landing_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
    return [] if isinstance(result, dg.SkipReason) else [r.partition_key for r in result.run_requests]


def test_landing_sensor_with_an_empty_cursor_skips_what_the_table_holds(tmp_path):
    declared = [
        write_source(tmp_path / "a.jsonl.gz", texts("alpha", 10)),
        write_source(tmp_path / "b.jsonl", texts("beta", 10)),
    ]
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([source("a", declared[0]), source("b", declared[1])]))
    (tmp_path / "home" / "landing" / "general").mkdir(parents=True)
    landed = write_source(tmp_path / "home" / "landing" / "general" / "notes.jsonl", texts("gamma", 10))
    defs = build_definitions({"CPTDATA_HOME": str(tmp_path / "home"), "CPTDATA_SOURCES": str(sources)})
    names = ["a", "b", "general-notes"]
    job = defs.resolve_job_def("ingest_corpus")
    with dg.DagsterInstance.ephemeral() as cli_instance:  # what `cptdata ingest` / `make demo` does
        cli_instance.add_dynamic_partitions(corpus_sources.name, names)
        assert all(job.execute_in_process(partition_key=n, instance=cli_instance).success for n in names)

    with dg.DagsterInstance.ephemeral() as ui_instance:  # the UI's daemon: a sensor that never ran, nothing registered
        assert evaluate(ui_instance, defs) == []  # nothing is ingested again...
        resources = {"catalog": defs.resources["catalog"], "delta": defs.resources["delta"]}
        first = corpus_landing_sensor(dg.build_sensor_context(instance=ui_instance, resources=resources))
        assert first.dynamic_partitions_requests[0].partition_keys == names  # ... though every source is registered
        ui_instance.add_dynamic_partitions(corpus_sources.name, names)

        stat = landed.stat()
        os.utime(landed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same content: nothing to do
        assert evaluate(ui_instance, defs) == []

        write_source(declared[1], [*texts("beta", 10), "one more beta text"])  # changed content: one run, for it
        assert evaluate(ui_instance, defs) == ["b"]
        assert evaluate(ui_instance, defs, cursor=first.cursor) == ["b"]  # with a cursor too

        assert job.execute_in_process(partition_key="b", instance=ui_instance).success
        assert evaluate(ui_instance, defs) == []  # ingested: the table holds its new fingerprint

        # reverted to the first content, which the table no longer holds: a run again, under a key naming what the
        # table held (Dagster launches a run key once per sensor: a key of the content alone, used before, is dropped)
        held = source_fingerprint(SourceSpec(**source("b", declared[1])))
        write_source(declared[1], texts("beta", 10))
        result = corpus_landing_sensor(dg.build_sensor_context(instance=ui_instance, resources=resources))
        (request,) = result.run_requests
        reverted = source_fingerprint(SourceSpec(**source("b", declared[1])))
        assert request.partition_key == "b" and request.run_key == f"b:{reverted}:from:{held}"
