"""The dataset stage through Dagster on a slice of the sample corpora (real ingestion, scoring, DOS selection, Spark
writes, tokenizer exports); the law fits it acts on are rows of known content (tests.assets.fits_rows).

The dataset holds the selection's prefix and a seeded general replay at the CMR answer, no eval leakage, exports that
match their manifest; nothing is built on a failed gate, a stale CMR or too small a pool; a corrupt or half-written
export is never served."""

import json
import os
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from assets.dataset import CHECKS, export_version, exports_root
from assets.followups import FOLLOWUP_REGIMES_TABLE, followup_partitions
from assets.law_publishing import FITS_TABLE
from assets.pilots import DOMAIN_SELECTION, FOLLOWUP_RUNS_TABLE
from assets.validation import CLAIMS, CONFIRMATIONS_TABLE
from cpt.dataset.exports import MANIFEST, TMP_PREFIX, manifest_problems
from cpt.dataset.plan import tokens_prefix
from cpt.delta_store import CommitInfo
from cpt.landscape.regimes import regime_tokens_prefix
from cpt.models.base_model import ModelManifest, load_tokenizer
from cpt.scoring.windows import WindowPolicy
from cpt.training.pilot_data import rebuild_chunks
from spark_jobs.dataset import DATASET_TABLE, SELECTION_TABLE, write_dataset
from spark_jobs.scoring import DOCUMENTS_TABLE, SCORES_TABLE
from tests.assets.fits_rows import write_cmr_fit, write_fit
from tests.assets.test_pilot_assets import PILOT as PILOT_CONFIG
from tests.assets.test_pilot_assets import WINDOW, graph, run  # noqa: F401 (the graph fixture: corpus → selection)

pytestmark = pytest.mark.spark

T_TARGET, CMR = 4800, 1 / 3  # R·T = 1,600 domain tokens: the whole selection of the fixture
DATASET = {"config": WINDOW | {"budget_tolerance": 0.03, "ratio_tolerance": 0.02, "shard_chunks": 32}}


def build(defs, instance, **config):
    job = defs.resolve_job_def("build_dataset")
    run_config = {"ops": {"dataset__cpt_mixture": {"config": DATASET["config"] | config}}}
    return job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)


def failure_message(result) -> str:
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.user_failure_data.description


def model_of(env) -> ModelManifest:
    path = f"{env['CPTDATA_HOME']}/manifests/models/base_model.json"
    with open(path) as f:
        return ModelManifest.from_json(json.load(f))


def test_the_dataset_is_the_selection_prefix_plus_replay_at_the_cmr_and_exports_what_it_holds(graph):  # noqa: F811
    defs, instance, store, env = graph
    selection_version = store.version(SELECTION_TABLE)
    write_cmr_fit(store, T_TARGET, CMR, selection_version)
    result = build(defs, instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == dict.fromkeys(CHECKS, True)

    version = store.version(DATASET_TABLE)
    rows = store.read(DATASET_TABLE, version).sort_by("position")
    assert rows["position"].to_pylist() == list(range(rows.num_rows))
    domain, general = (rows.filter(pc.equal(rows["role"], r)) for r in ("domain", "general"))
    selection = store.read(SELECTION_TABLE, selection_version).sort_by("step")
    steps = tokens_prefix(selection["n_tokens"].to_pylist(), round(CMR * T_TARGET))
    assert domain["chunk_id"].to_pylist() == selection["chunk_id"].to_pylist()[:steps]  # in greedy step order
    assert domain["dos_step"].to_pylist() == list(range(steps))
    assert all(r.startswith("DOS step ") for r in domain["reason"].to_pylist())

    # general replay: the seeded draw of the general train pool, eval documents and their groups left out
    scores = store.read(SCORES_TABLE)
    docs = store.read(DOCUMENTS_TABLE, columns=["doc_id", "group_id", "split"])
    eval_docs = {d for d, s in zip(docs["doc_id"].to_pylist(), docs["split"].to_pylist(), strict=True) if s == "eval"}
    group = dict(zip(docs["doc_id"].to_pylist(), docs["group_id"].to_pylist(), strict=True))
    eval_groups = {group[d] for d in eval_docs}
    pool = sorted(
        r["chunk_id"]
        for r in scores.to_pylist()
        if (r["role"], r["split"]) == ("general", "train")
        and r["doc_id"] not in eval_docs
        and group[r["doc_id"]] not in eval_groups
    )
    n_tok = dict(zip(scores["chunk_id"].to_pylist(), scores["n_tokens"].to_pylist(), strict=True))
    ppl = dict(zip(scores["chunk_id"].to_pylist(), scores["ppl"].to_pylist(), strict=True))
    draw = regime_tokens_prefix(pool, n_tok, ppl, T_TARGET - round(CMR * T_TARGET), 0)
    assert general["chunk_id"].to_pylist() == list(draw.chunk_ids)
    assert not set(rows["doc_id"].to_pylist()) & eval_docs
    share = sum(domain["n_tokens"].to_pylist()) / sum(rows["n_tokens"].to_pylist())
    assert share == pytest.approx(CMR, abs=0.02)

    # the exports hold exactly the rows' chunks, token for token, and match their manifest
    fs, root = pafs.FileSystem.from_uri(exports_root(store))
    folder = f"{root}/v{version}"
    assert manifest_problems(fs, folder) == []
    manifest = json.loads(Path(folder, MANIFEST).read_text())
    assert manifest["dataset"]["version"] == version and manifest["counts"]["chunks"] == rows.num_rows
    assert manifest["ratio"]["target"] == pytest.approx(CMR) and manifest["answers"]["cmr"]["basis"] == "measured"
    assert manifest["inputs"]["selection_version"] == selection_version
    shards = sorted(f["path"] for f in manifest["files"] if f["kind"] == "tokens")
    assert len(shards) == -(-rows.num_rows // 32)
    exported = pq.read_table([f"{folder}/{s}" for s in shards]).sort_by("position")
    assert exported["chunk_id"].to_pylist() == rows["chunk_id"].to_pylist()
    model = model_of(env)
    texts = store.read(DOCUMENTS_TABLE, columns=["doc_id", "text"])
    text_of = dict(zip(texts["doc_id"].to_pylist(), texts["text"].to_pylist(), strict=True))
    wanted = rows["chunk_id"].to_pylist()[:5]
    doc_of = dict(zip(rows["chunk_id"].to_pylist(), rows["doc_id"].to_pylist(), strict=True))
    rebuilt = rebuild_chunks(load_tokenizer(model.path), wanted, doc_of, text_of, WindowPolicy(64, 8), model.revision)
    assert [list(c.input_ids) for c in rebuilt] == exported["input_ids"].to_pylist()[:5]
    text_files = [Path(folder, f["path"]) for f in manifest["files"] if f["kind"] == "text"]
    lines = sum(len(f.read_text().splitlines()) for f in text_files)
    assert lines == rows.num_rows

    # a rebuild on the same inputs is a new version with the same rows, not more rows
    assert build(defs, instance).success
    again = store.read(DATASET_TABLE).sort_by("position")
    assert store.version(DATASET_TABLE) == version + 1 and again["chunk_id"] == rows["chunk_id"]


def test_a_corrupt_or_half_written_export_is_never_served(graph, monkeypatch):  # noqa: F811
    defs, instance, store, env = graph
    if not store.exists(DATASET_TABLE):
        write_cmr_fit(store, T_TARGET, CMR, store.version(SELECTION_TABLE))
        assert build(defs, instance).success
    version, model = store.version(DATASET_TABLE), model_of(env)
    fs, root = pafs.FileSystem.from_uri(exports_root(store))
    folder = f"{root}/v{version}"
    manifest = json.loads(Path(folder, MANIFEST).read_text())
    shard = f"{folder}/{manifest['files'][0]['path']}"
    data = bytearray(Path(shard).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(shard).write_bytes(bytes(data))
    first = manifest["files"][0]["path"]
    assert manifest_problems(fs, folder) == [f"{first} does not match its SHA-256 in the manifest"]

    spark = defs.resources["spark"].session()

    def killed(fs_, tmp, final):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr("assets.dataset.publish_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        export_version(spark, store, version, model, 32)
    temporaries = [i.path for i in fs.get_file_info(pafs.FileSelector(root)) if i.base_name.startswith(TMP_PREFIX)]
    assert temporaries and manifest_problems(fs, folder)  # the half-written export is not served in its place
    monkeypatch.undo()

    for tmp in temporaries:  # a killed export's folder, nothing in it written for an hour: the next export removes it
        for path in [Path(tmp), *Path(tmp).rglob("*")]:
            os.utime(path, (0, 0))
    _, problems, _ = export_version(spark, store, version, model, 32)  # re-exported: checked, rewritten, verified
    assert problems == [] and manifest_problems(fs, folder) == []
    assert not [i for i in fs.get_file_info(pafs.FileSelector(root)) if i.base_name.startswith(TMP_PREFIX)]


def test_nothing_is_built_on_a_failed_gate_a_stale_cmr_a_too_small_pool_or_failed_checks(graph):  # noqa: F811
    defs, instance, store, env = graph
    selection_version = store.version(SELECTION_TABLE)
    before = store.version(DATASET_TABLE)

    write_cmr_fit(store, T_TARGET, CMR, selection_version, passed=False)
    failed = build(defs, instance)
    assert not failed.success and "failed its blocking gate: synthetic failure" in failure_message(failed)

    write_cmr_fit(store, T_TARGET, CMR, None)  # measured on mixture pilots of random domain data
    failed = build(defs, instance)
    assert "drawn from random domain data, not from the selection" in failure_message(failed)

    write_cmr_fit(store, T_TARGET, CMR, selection_version)
    failed = build(defs, instance, target_tokens=100_000)
    message = failure_message(failed)
    assert "33,333 domain tokens are needed, but the DOS selection holds" in message and "budget_tokens" in message
    assert store.version(DATASET_TABLE) == before  # nothing written

    failed = build(defs, instance, landscape_tolerance=0.0)  # a landscape check that cannot pass: nothing written
    message = failure_message(failed)
    assert "the planned rows fail the blocking checks landscape_reached" in message
    assert f"stays at {'nothing' if before is None else f'v{before}'}" in message
    assert store.version(DATASET_TABLE) == before

    # a version that breaks its checks (a duplicated chunk, written past the asset) is refused by the export
    assert build(defs, instance).success
    good = store.version(DATASET_TABLE)
    rows = store.read(DATASET_TABLE, good)
    record = store.commit_metadata(DATASET_TABLE, good)["cptdata.build"]
    commit = CommitInfo("test", DATASET_TABLE, "test", "", extra={"cptdata.build": record})
    spark = defs.resources["spark"].session()
    bad = write_dataset(spark, store, pa.concat_tables([rows, rows.slice(0, 1)]), commit)
    # (the duplicated row may also push the total past the budget's tolerance: then both checks are named)
    with pytest.raises(dg.Failure, match=r"fails its blocking checks, so it is not exported: .*no_duplicate_chunk"):
        export_version(spark, store, bad, model_of(env), 32)
    fs, root = pafs.FileSystem.from_uri(exports_root(store))
    assert fs.get_file_info(f"{root}/v{bad}").type == pafs.FileType.NotFound


def test_a_build_that_fails_after_its_commit_is_undone(graph, monkeypatch):  # noqa: F811
    defs, instance, store, _ = graph
    write_cmr_fit(store, T_TARGET, CMR, store.version(SELECTION_TABLE))
    assert build(defs, instance).success
    good = store.version(DATASET_TABLE)
    rows = store.read(DATASET_TABLE, good).sort_by("position")

    def export_fails(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("assets.dataset.export_version", export_fails)
    failed = build(defs, instance, seed=1)  # another replay draw, then the export fails
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert not failed.success and "disk full" in str(failure.step_failure_data.error)
    assert store.version(DATASET_TABLE) == good + 2  # the failed build, then the restore of the last good one
    restored = store.read(DATASET_TABLE).sort_by("position")
    assert restored["chunk_id"] == rows["chunk_id"]
    record = store.commit_metadata(DATASET_TABLE, good + 2)["cptdata.build"]
    assert record == store.commit_metadata(DATASET_TABLE, good)["cptdata.build"]  # exports as the good one did


def test_confirmations_judge_each_claim_on_paired_seeds_and_never_fail_the_build(graph):  # noqa: F811
    defs, instance, store, _ = graph
    # A law that predicts a loss of 100 nats (E = 100): its claim must come out "not confirmed", reported, not fatal.
    law = {"E": 100.0, "D_c": 1e-9, "alpha0": 0.0, "alpha1": 0.0, "beta0": 0.0, "beta1": 0.0, "alpha_D": 0.0}
    current = store.read(FITS_TABLE, filters=[("law", "=", "ppl_law")]).sort_by([("fitted_at", "descending")])
    answer = json.loads(current["answer"][0].as_py())
    write_fit(
        store,
        "ppl_law",
        answer=answer,
        result={"fit": {"params": law, "heldout_rmse": 0.05}},
        inputs=json.loads(current["input_versions"][0].as_py()),
        config={"ppl_space": "raw", "sigma_kind": "std"},
    )
    run(defs, "select_domain_data", instance, asset_selection=[DOMAIN_SELECTION])  # the selection follows the fit
    write_cmr_fit(store, 3200, CMR, store.version(SELECTION_TABLE))  # CMR + 0.15 still fits in the 1,600 selected
    assert build(defs, instance).success
    config = PILOT_CONFIG | {"seeds": [1, 2], "subset_tokens": 900}
    job = defs.resolve_job_def("confirm_claims")
    result = job.execute_in_process(
        instance=instance, raise_on_error=False, run_config={"ops": {"validation__confirmations": {"config": config}}}
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    rows = {r["claim"]: r for r in store.read(CONFIRMATIONS_TABLE).to_pylist()}
    assert sorted(rows) == sorted(CLAIMS)
    assert rows["law_predicts_dos_loss"]["verdict"] == "not confirmed"
    assert rows["law_predicts_dos_loss"]["interval_high"] < -0.05  # observed ≈ 5 nats, far below 100 − its error
    for claim in rows.values():
        assert claim["verdict"] in ("confirmed", "not confirmed", "inconclusive") and claim["n_seeds"] == 2
        assert claim["interval_low"] <= claim["estimate"] <= claim["interval_high"]
    runs = json.loads(rows["dos_beats_random"]["runs"])  # each claim keeps the runs it was judged on
    assert sorted((r["arm"], r["seed"]) for r in runs) == [(a, s) for a in ("dos", "random") for s in (1, 2)]
    assert all(r["tokens"] >= 900 and r["domain_loss"] < r["domain_loss_T0"] for r in runs)  # trained, and learned
    dos = [r["domain_loss"] for r in runs if r["arm"] == "dos"]
    assert rows["law_predicts_dos_loss"]["estimate"] == pytest.approx(sum(dos) / 2 - 100.0, abs=1e-6)
    assert [r["ratio"] for r in json.loads(rows["cmr_within_tolerance"]["runs"])] == pytest.approx([CMR] * 2)
    assert [r["ratio"] for r in json.loads(rows["cmr_is_critical"]["runs"])] == pytest.approx([CMR + 0.15] * 2)

    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == set(CLAIMS)
    for name, check in checks.items():
        assert check.passed == (rows[name]["verdict"] == "confirmed")
    assert checks["law_predicts_dos_loss"].severity == dg.AssetCheckSeverity.ERROR
    mat = result.get_asset_materialization_events()[0].event_specific_data.materialization
    assert "law_predicts_dos_loss not confirmed" in mat.metadata["summary"].value
    run_id = rows["dos_beats_random"]["mlflow_run_id"]
    tags = defs.resources["mlflow"].client().get_run(run_id).data.tags
    assert tags["verdict.law_predicts_dos_loss"] == "not confirmed"


def test_a_followup_round_trains_on_its_dos_regimes(graph):  # noqa: F811
    defs, instance, store, _ = graph
    current = store.read(FITS_TABLE, filters=[("law", "=", "ppl_law")]).sort_by([("fitted_at", "descending")])
    answer = json.loads(current["answer"][0].as_py())
    mu, sigma = answer["mu"], answer["sigma"]
    targets = [{"label": "opt", "mu": mu, "sigma": sigma}, {"label": "lo", "mu": 0.8 * mu, "sigma": sigma}]
    answer["followup"] = {"needed": True, "rounds_done": 0, "reason": "synthetic: on the boundary", "targets": targets}
    write_fit(
        store,
        "ppl_law",
        answer=answer,
        result={},
        inputs=json.loads(current["input_versions"][0].as_py()),
        config={"ppl_space": "raw", "sigma_kind": "std"},
    )
    plan = defs.resolve_job_def("plan_followups").execute_in_process(
        instance=instance, run_config={"ops": {"pilots__followup_regimes": {"config": {"size_tokens": 900}}}}
    )
    mat = plan.get_asset_materialization_events()[0].event_specific_data.materialization
    assert mat.metadata["new_regimes"].value == ["f1-opt", "f1-lo"]
    assert {"f1-opt", "f1-lo"} <= set(instance.get_dynamic_partitions(followup_partitions.name))
    regimes = {r["name"]: r for r in store.read(FOLLOWUP_REGIMES_TABLE).to_pylist()}
    assert regimes["f1-lo"]["mu"] < regimes["f1-opt"]["mu"]  # DOS went where it was sent

    trained = defs.resolve_job_def("followup_pilots").execute_in_process(
        instance=instance,
        partition_key="f1-lo",
        run_config={"ops": {"pilots__followup_runs": {"config": PILOT_CONFIG}}},
        raise_on_error=False,
    )
    assert trained.success, [e.message for e in trained.all_events if e.is_failure]
    rows = store.read(FOLLOWUP_RUNS_TABLE).sort_by("tokens").to_pylist()
    assert {r["partition"] for r in rows} == {"f1-lo"} and rows[-1]["is_final"] and rows[0]["tokens"] == 0
    assert rows[-1]["size_tokens"] == 900 and rows[-1]["tokens"] >= 900
    assert rows[-1]["domain_loss"] < rows[0]["domain_loss"]
    assert rows[-1]["mu"] == pytest.approx(regimes["f1-lo"]["mu"], rel=0.25)  # a 900-token prefix of the DOS order
