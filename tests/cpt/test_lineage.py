"""Lineage recorded at every commit and folded per table version (cpt.lineage.graph), the reverse query
(cpt.lineage.report.uses) and the OpenLineage events (cpt.lineage.openlineage), on real Delta tables."""

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import jsonschema
import pyarrow as pa
import pytest

from cpt.delta_store import CommitInfo, DeltaStore, partition_predicate
from cpt.lineage import graph
from cpt.lineage.code import code_record
from cpt.lineage.openlineage import OpenLineageEmitter, read_events
from cpt.lineage.report import build_report, to_markdown, uses


def commit(**kw) -> CommitInfo:
    return CommitInfo(run_id=str(uuid.uuid4()), asset_key=kw.pop("asset", "a"), code_version="t", config_hash="h", **kw)


def file(name: str, sha: str) -> dict:
    return {
        "source": name,
        "path": f"/data/{name}.jsonl",
        "sha256": sha,
        "bytes": 10,
        "mtime": "2026-01-01T00:00:00+00:00",
    }


def rows(part: str, x: int = 0) -> pa.Table:
    return pa.table({"source": [part], "x": [x]})


def ingest(store: DeltaStore, source: str, sha: str, x: int = 0) -> int:
    """A documents-like table: one partition per source, replaced by each ingest of it."""
    info = commit(asset="corpus/documents", partition=source, files=[file(source, sha)])
    predicate = partition_predicate({"source": source})
    return store.overwrite("corpus/documents", rows(source, x), info, predicate=predicate, partition_by=["source"])


@pytest.fixture
def events_file(tmp_path):
    return tmp_path / "ol" / "events.jsonl"


@pytest.fixture
def store(tmp_path, events_file):
    return DeltaStore(str(tmp_path / "delta"), on_commit=OpenLineageEmitter("cptdata", str(events_file)))


def test_a_replaced_partition_leaves_the_lineage_of_newer_versions_and_stays_in_the_older_ones(store):
    d1 = ingest(store, "a", "sha-a1")
    d2 = ingest(store, "b", "sha-b1")
    d3 = ingest(store, "a", "sha-a2")  # a changed file: partition a replaced
    files = lambda v: {f["sha256"] for f in store.lineage("corpus/documents", v)["files"]}  # noqa: E731
    assert store.table("corpus/documents").metadata().configuration["delta.enableExpiredLogCleanup"] == "false"
    assert files(d1) == {"sha-a1"}
    assert files(d2) == {"sha-a1", "sha-b1"}
    assert files(d3) == {"sha-a2", "sha-b1"}  # the replaced file's lineage is gone from the new version …
    assert files(d2) == {"sha-a1", "sha-b1"}  # … and the older version's is unchanged


def test_appends_accumulate_a_full_replace_resets_and_a_restore_returns_to_the_restored_lineage(store):
    d = ingest(store, "a", "sha-a1")
    s1 = store.append("scores", rows("a"), commit(input_versions={"corpus/documents": d}))
    d2 = ingest(store, "b", "sha-b1")
    s2 = store.append("scores", rows("b"), commit(input_versions={"corpus/documents": d2}))
    assert store.lineage("scores", s2)["tables"] == {"corpus/documents": [d, d2]}  # both appends' rows are held
    assert store.lineage("scores", s1)["tables"] == {"corpus/documents": [d]}
    r = store.overwrite("regimes", rows("a"), commit(input_versions={"scores": s2}), predicate=None)
    r2 = store.overwrite("regimes", rows("a"), commit(input_versions={"scores": s1}), predicate=None)
    assert store.lineage("regimes", r2)["tables"] == {"corpus/documents": [d], "scores": [s1]}  # only the new rows
    back = store.restore("regimes", r, commit())
    assert store.lineage("regimes", back) == store.lineage("regimes", r)
    assert {f["sha256"] for f in store.lineage("regimes", back)["files"]} == {"sha-a1", "sha-b1"}  # transitive


def test_a_commit_that_read_some_partitions_carries_only_their_lineage_and_a_pretrained_model_its_corpus(store):
    d = ingest(store, "a", "sha-a1")
    s = store.append("scores", rows("a"), commit(input_versions={"corpus/documents": d}))
    fit = lambda law: partition_predicate({"law": law, "fit_key": "k"})  # noqa: E731
    for law, table, version in (("ppl", "scores", s), ("cmr", "corpus/documents", d)):
        store.overwrite(
            "laws/fits",
            pa.table({"law": [law], "fit_key": ["k"]}),
            commit(input_versions={table: version}),
            predicate=fit(law),
        )
    fits = store.version("laws/fits")
    model = graph.model_record({"revision": "rev1", "source": "pretrain", "details": {"documents_version": d}})
    out = store.overwrite(
        "dataset",
        rows("a"),
        commit(input_versions={"laws/fits": fits}, input_parts={"laws/fits": [fit("cmr")]}, models=model),
        predicate=None,
    )
    lineage = store.lineage("dataset", out)
    assert lineage["tables"] == {"corpus/documents": [d], "laws/fits": [fits]}  # not the ppl fit's scores input
    assert list(lineage["models"]) == ["rev1"]
    assert store.lineage("laws/fits", fits)["tables"] == {"corpus/documents": [d], "scores": [s]}  # both fits


def test_the_reverse_query_finds_what_was_built_from_a_file_or_a_table_version(store):
    d1 = ingest(store, "a", "sha-a1")
    s1 = store.overwrite("scores", rows("a"), commit(input_versions={"corpus/documents": d1}), predicate=None)
    d2 = ingest(store, "a", "sha-a2")
    s2 = store.overwrite("scores", rows("a"), commit(input_versions={"corpus/documents": d2}), predicate=None)
    tables = store.tables()
    assert tables == ["corpus/documents", "scores"]
    assert uses(store, tables, "sha256:sha-a1") == [
        {"table": "corpus/documents", "versions": [d1]},
        {"table": "scores", "versions": [s1]},
    ]
    assert uses(store, tables, "/data/a.jsonl") == [
        {"table": "corpus/documents", "versions": [d1, d2]},
        {"table": "scores", "versions": [s1, s2]},
    ]
    assert uses(store, tables, f"corpus/documents@{d2}") == [{"table": "scores", "versions": [s2]}]


def test_every_commit_records_the_code_and_the_report_is_the_same_after_newer_commits(store):
    d1 = ingest(store, "a", "sha-a1")
    before = build_report(store, "corpus/documents", d1)
    ingest(store, "a", "sha-a2")
    assert build_report(store, "corpus/documents", d1) == before
    code = json.loads(store.commit_metadata("corpus/documents", d1)["cptdata.code"])
    assert code == code_record() and len(code["git_commit"]) == 40  # this checkout's commit
    assert set(code["packages"]) >= {"torch", "transformers", "pyspark", "deltalake"}
    assert "sha-a1" in to_markdown(before) and before["dagster_runs"][0]["wrote"] == [f"corpus/documents@{d1}"]


# ---- OpenLineage ---------------------------------------------------------------------------------------------
# What the OpenLineage spec (2-0-2) requires of a run event, written down here to validate what we emit.
RUN_EVENT = {
    "type": "object",
    "required": ["eventType", "eventTime", "run", "job", "producer", "schemaURL"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"},
        "producer": {"type": "string", "pattern": "^https?://"},
        "schemaURL": {"type": "string", "pattern": "^https://openlineage.io/spec/"},
        "run": {
            "type": "object",
            "required": ["runId"],
            "properties": {
                "runId": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
                },
                "facets": {"type": "object", "additionalProperties": {"$ref": "#/$defs/facet"}},
            },
        },
        "job": {"type": "object", "required": ["namespace", "name"]},
        "inputs": {"type": "array", "items": {"$ref": "#/$defs/dataset"}},
        "outputs": {"type": "array", "items": {"$ref": "#/$defs/dataset"}},
    },
    "$defs": {
        "facet": {"type": "object", "required": ["_producer", "_schemaURL"]},
        "dataset": {
            "type": "object",
            "required": ["namespace", "name"],
            "properties": {"facets": {"type": "object", "additionalProperties": {"$ref": "#/$defs/facet"}}},
        },
    },
}


def validate_events(events: list[dict]) -> None:
    from openlineage.client.event_v2 import RunEvent

    for event in events:
        jsonschema.validate(event, RUN_EVENT)
        RunEvent(**{k: event[k] for k in ("eventType", "eventTime", "run", "job")}, producer=event["producer"])


def lineage_from_events(events: list[dict], table: str, version: int, parts=None) -> dict:
    """The lineage of ``table@version`` rebuilt from OpenLineage events alone (a consumer's reading of them)."""
    by_table: dict[str, list[dict]] = {}
    for event in events:
        (out,) = event["outputs"]
        facet = event["run"]["facets"]["cptdata"]
        inputs, files, models = [], [], []
        for ds in event["inputs"]:
            v = ds["facets"]["version"]["datasetVersion"]
            if ds["namespace"] == "file":
                files.append((ds["name"], v))
            elif ds["namespace"] == "model":
                models.append(v)
            elif not (ds["name"] == out["name"] and int(v) == facet["version"] - 1):  # not the previous version
                read = (ds.get("inputFacets") or {}).get("cptdata_partitions", {}).get("partitions")
                inputs.append((ds["name"], int(v), read))
        entry = {"version": facet["version"], "write": facet["write"], "part": facet["part"]}
        entry |= {"inputs": inputs, "files": files, "models": models, "restored": facet.get("restored_version")}
        by_table.setdefault(out["name"], []).append(entry)

    def closure(name: str, at: int, read) -> tuple[set, set, set]:
        held: dict[str, list[dict]] = {}
        states: dict[int, dict] = {}
        for e in sorted(by_table[name], key=lambda e: e["version"]):
            if e["write"] == "replace_all":
                held = {e["part"]: [e]}
            elif e["write"] == "replace_partition":
                held = held | {e["part"]: [e]}
            elif e["write"] == "append":
                held = held | {e["part"]: [*held.get(e["part"], []), e]}
            elif e["write"] == "restore":
                held = dict(states[e["restored"]])
            states[e["version"]] = held
        tables, files, models = set(), set(), set()
        for part, entries in states[at].items():
            if read is not None and part not in read:
                continue
            for e in entries:
                files |= set(e["files"])
                models |= set(e["models"])
                for t, v, p in e["inputs"]:
                    tables.add((t, v))
                    sub = closure(t, v, p)
                    tables, files, models = tables | sub[0], files | sub[1], models | sub[2]
        return tables, files, models

    return dict(zip(("tables", "files", "models"), closure(table, version, parts), strict=True))


def as_sets(lineage: dict) -> dict:
    return {
        "tables": {(t, v) for t, vs in lineage["tables"].items() for v in vs},
        "files": {(f["path"], f["sha256"]) for f in lineage["files"]},
        "models": set(lineage["models"]),
    }


def test_the_emitted_events_validate_and_rebuild_the_same_lineage_as_the_store(store, events_file):
    d = ingest(store, "a", "sha-a1")
    ingest(store, "b", "sha-b1")
    d3 = ingest(store, "a", "sha-a2")
    s = store.append("scores", rows("a"), commit(input_versions={"corpus/documents": d}))
    s = store.append("scores", rows("b"), commit(input_versions={"corpus/documents": d3}))
    model = graph.model_record({"revision": "rev1", "source": "pretrain", "path": "/m", "details": {}})
    out = store.overwrite("dataset", rows("a"), commit(input_versions={"scores": s}, models=model), predicate=None)
    store.overwrite("dataset", rows("b"), commit(input_versions={"corpus/documents": d}), predicate=None)
    store.restore("dataset", out, commit())
    events = read_events(events_file)
    restore_inputs = [(i["name"], i["facets"]["version"]["datasetVersion"]) for i in events[-1]["inputs"]]
    assert restore_inputs == [("dataset", str(out))]  # a restore read nothing but the version it restored
    commits = [(t, e) for t in store.tables() for e in store.history(t) if graph.write_of(e)[0] != "create"]
    assert len(events) == len(commits) == 3 + 2 + 3  # one event per commit that holds rows
    validate_events(events)
    fields = events[0]["outputs"][0]["facets"]["schema"]["fields"]
    assert {f["name"]: f.get("description") for f in fields}["source"].startswith("the row's corpus source")
    for table in ("corpus/documents", "scores", "dataset"):
        for v in range(store.version(table) + 1):
            if graph.write_of(store.commit_metadata(table, v))[0] == "create":
                continue
            assert lineage_from_events(events, table, v) == as_sets(store.lineage(table, v)), (table, v)


def test_events_reach_an_http_endpoint_with_the_api_key_and_an_unreachable_one_loses_nothing(tmp_path):
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        emitter = OpenLineageEmitter("cptdata", str(tmp_path / "ev.jsonl"), url, api_key="s3cret-key")
        store = DeltaStore(str(tmp_path / "delta"), on_commit=emitter)
        v = ingest(store, "a", "sha-a1")
    finally:
        server.shutdown()
        server.server_close()
    ((path, auth, event),) = received
    assert path == "/api/v1/lineage" and auth == "Bearer s3cret-key"
    assert event["outputs"][0]["facets"]["version"]["datasetVersion"] == str(v)
    assert read_events(tmp_path / "ev.jsonl") == [event]
    # the endpoint is gone now: the commit still lands and the file still gets its event
    v2 = ingest(store, "a", "sha-a2")
    assert store.version("corpus/documents") == v2
    assert [e["outputs"][0]["facets"]["version"]["datasetVersion"] for e in read_events(tmp_path / "ev.jsonl")] == [
        str(v),
        str(v2),
    ]
