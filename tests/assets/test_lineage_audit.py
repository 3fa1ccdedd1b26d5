"""The lineage audit through Dagster on a slice of the sample corpora: a dataset build's report names every source
file (SHA-256), the base model, each upstream table version, the fits and the Dagster runs; a second build after one
corpus file changed shows the change while the first version's report and rows stay exactly as they were; the
OpenLineage events the runs emitted rebuild the same lineage; the reverse query finds what was built from a file."""

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from assets.audit import REPORTS_TABLE, report_for
from assets.lineage import OWNERS
from cpt.lineage.openlineage import read_events
from cpt.lineage.report import uses
from orchestration.cli import main
from spark_jobs.dataset import DATASET_TABLE, SELECTION_TABLE
from spark_jobs.scoring import DOCUMENTS_TABLE
from tests.assets.fits_rows import write_cmr_fit
from tests.assets.test_dataset_assets import CMR, T_TARGET, build
from tests.assets.test_pilot_assets import graph, run, select_toward_the_pool_median  # noqa: F401
from tests.cpt.test_lineage import as_sets, lineage_from_events, validate_events

pytestmark = pytest.mark.spark


def cli_audit(env, tmp_path, monkeypatch, capsys, *args) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    assert main(["audit", *args]) == 0
    return capsys.readouterr().out


def test_a_dataset_versions_lineage_is_complete_and_unchanged_by_a_later_build(graph, tmp_path, monkeypatch, capsys):  # noqa: F811
    defs, instance, store, env = graph
    events_file = Path(env["CPTDATA_HOME"]) / "openlineage" / "events.jsonl"
    write_cmr_fit(store, T_TARGET, CMR, store.version(SELECTION_TABLE))
    result = build(defs, instance)  # the dataset and its lineage report
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    v0 = store.version(DATASET_TABLE)
    rows_v0 = store.read(DATASET_TABLE, v0)

    mlflow = defs.resources["mlflow"]
    report = report_for(store, mlflow, DATASET_TABLE, v0)
    sources = json.loads(Path(env["CPTDATA_SOURCES"]).read_text())
    files = {f["path"]: f for f in report["lineage"]["files"]}
    assert set(files) == {str(Path(s["path"]).resolve()) for s in sources}  # every source file, with its bytes
    gen_file = str(Path(next(s["path"] for s in sources if s["name"] == "gen")).resolve())
    assert files[gen_file]["sha256"] == _sha256(gen_file) and files[gen_file]["bytes"] == Path(gen_file).stat().st_size
    assert set(report["lineage"]["tables"]) >= {
        DOCUMENTS_TABLE,
        "scores/chunk_perplexity",
        "landscape/regimes",
        SELECTION_TABLE,
        "laws/fits",
    }
    (model,) = report["lineage"]["models"].values()
    assert model["source"] == "pretrain" and model["file_hashes"] and list(model["trained_on"]) == [DOCUMENTS_TABLE]
    assert sorted(f["law"] for f in report["fits"]) == ["cmr", "ppl_law"]  # only the two fits the build used
    assert all(f["gate_passed"] for f in report["fits"])
    assert {k: v["mlflow_status"] for k, v in report["registry"].items()} == {  # now, from MLflow: not recorded
        f["fit_key"]: "not found"
        for f in report["fits"]  # the rows of tests.fits_rows name no real MLflow run
    }
    runs = {r["dagster_run_id"] for r in report["dagster_runs"]}
    assert result.run_id in runs and len(runs) >= 5  # ingests, scoring, landscape, selection, build
    assert report["code"][0]["git_commit"] and "torch" in report["code"][0]["packages"]

    # the CLI prints the same report; the asset stored it
    printed = cli_audit(env, tmp_path, monkeypatch, capsys, "--json")
    assert json.loads(printed) == json.loads(json.dumps(report, default=str))
    markdown = cli_audit(env, tmp_path, monkeypatch, capsys)
    assert f"# Lineage of {DATASET_TABLE} v{v0}" in markdown and files[gen_file]["sha256"] in markdown
    stored = store.read(REPORTS_TABLE).to_pylist()
    assert [(r["subject_table"], r["subject_version"]) for r in stored] == [(DATASET_TABLE, v0)]
    recorded = {k: v for k, v in report.items() if k != "registry"}
    assert json.loads(stored[0]["report_json"]) == json.loads(json.dumps(recorded, default=str))

    # the OpenLineage events of every commit validate and rebuild the report's lineage
    events = read_events(events_file)
    validate_events(events)
    assert lineage_from_events(events, DATASET_TABLE, v0) == as_sets(report["lineage"])

    # one corpus file changes: re-ingest, rescore, landscape, select, CMR, build → v1
    _change_first_record(gen_file)
    run(defs, "ingest_corpus", instance, partition_key="gen")
    run(defs, "score_corpus", instance, partition_key="gen")
    run(defs, "landscape", instance)
    select_toward_the_pool_median(defs, instance, store)
    write_cmr_fit(store, T_TARGET, CMR, store.version(SELECTION_TABLE))
    assert build(defs, instance).success
    v1 = store.version(DATASET_TABLE)
    new = report_for(store, mlflow, DATASET_TABLE, v1)
    old_sha, new_sha = files[gen_file]["sha256"], _sha256(gen_file)
    new_files = {(f["path"], f["sha256"]): f["read_by"] for f in new["lineage"]["files"]}
    # the change shows: the new bytes, read by the new documents version …
    assert new_sha != old_sha and (gen_file, new_sha) in new_files
    assert new_files[(gen_file, new_sha)] == [f"{DOCUMENTS_TABLE}@{store.version(DOCUMENTS_TABLE)}"]
    # … and the old bytes stay in the lineage only through scores computed on the old documents version (the
    # unchanged records' chunks were scored then and are not rescored): true at table granularity, and said so
    assert set(new_files) - {(gen_file, new_sha)} == {(f["path"], f["sha256"]) for f in files.values()}
    assert report_for(store, mlflow, DATASET_TABLE, v0) == report  # the old version's report is unchanged
    assert store.read(DATASET_TABLE, v0).equals(rows_v0)  # and so are its rows (time travel)
    reported = store.read(REPORTS_TABLE).sort_by("subject_version")
    assert reported["subject_version"].to_pylist() == [v0, v1]
    old_row = reported.filter(pc.equal(reported["subject_version"], v0))
    assert old_row["report_json"][0].as_py() == stored[0]["report_json"]
    assert lineage_from_events(read_events(events_file), DATASET_TABLE, v1) == as_sets(new["lineage"])

    # the reverse query: which datasets used the old and the new bytes of the file
    built = lambda ref: {u["table"]: u["versions"] for u in uses(store, store.tables(), ref)}  # noqa: E731
    assert built(f"sha256:{old_sha}")[DATASET_TABLE] == [v0, v1]  # v1 through the scores of unchanged records
    assert built(f"sha256:{new_sha}")[DATASET_TABLE] == [v1]
    assert built(f"sha256:{new_sha}")[DOCUMENTS_TABLE] == [store.version(DOCUMENTS_TABLE)]
    printed = cli_audit(env, tmp_path, monkeypatch, capsys, "--uses", gen_file, "--json")
    assert {u["table"]: u["versions"] for u in json.loads(printed)}[DATASET_TABLE] == [v0, v1]


def test_every_asset_has_owners_tags_and_described_columns(graph):  # noqa: F811
    defs = graph[0]
    for key, spec in ((s.key, s) for s in defs.resolve_all_asset_specs()):
        assert spec.owners and set(spec.owners) <= {o for owners in OWNERS.values() for o in owners}, key
        assert spec.tags.get("stage") == key.path[0] and spec.tags.get("tier"), key
        schema = spec.metadata.get("dagster/column_schema")
        if key.path[0] != "models":  # every Delta table
            assert schema is not None and all(c.description for c in schema.columns), key


def _sha256(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _change_first_record(path: str) -> None:
    lines = Path(path).read_text().splitlines()
    first = json.loads(lines[0])
    first["text"] = "A changed opening line. " + first["text"]
    Path(path).write_text("\n".join([json.dumps(first), *lines[1:]]))
