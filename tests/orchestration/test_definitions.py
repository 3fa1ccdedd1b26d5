"""The code location: what it contains (a snapshot to review on change), profiles, sensor and schedule."""

import json
from datetime import UTC, datetime

import dagster as dg
import pytest

from assets.partitions import corpus_sources
from orchestration.definitions import build_definitions
from orchestration.profiles import load_profile
from orchestration.schedules import daily_corpus_build
from orchestration.sensors import corpus_landing_sensor
from orchestration.settings import ConfigError

GRAPH = {
    "corpus/documents": {"group": "corpus", "partitions": "corpus_sources", "deps": []},
    "corpus/rejects": {"group": "corpus", "partitions": "corpus_sources", "deps": []},
    "models/base_model": {"group": "models", "partitions": None, "deps": ["corpus/documents"]},
    "scores/chunk_perplexity": {
        "group": "scores",
        "partitions": "corpus_sources",
        "deps": ["corpus/documents", "models/base_model"],
    },
    "landscape/histograms": {"group": "landscape", "partitions": None, "deps": ["scores/chunk_perplexity"]},
    "landscape/regimes": {"group": "landscape", "partitions": None, "deps": ["landscape/histograms"]},
    "pilots/regime_runs": {
        "group": "pilots",
        "partitions": "regime(12) × size(2)",
        "deps": ["landscape/regimes", "models/base_model", "scores/chunk_perplexity"],
    },
    "pilots/mixture_runs": {
        "group": "pilots",
        "partitions": "0, 1/8, 1/4, 1/3, 1/2, 3/4, 1",
        "deps": ["dataset/domain_selection", "landscape/regimes", "models/base_model", "scores/chunk_perplexity"],
    },
    "laws/ppl_law": {"group": "laws", "partitions": None, "deps": ["landscape/regimes", "pilots/regime_runs"]},
    # PPL law → follow-up regimes → follow-up runs, which the next fit reads (undeclared: no cycles in the graph)
    "pilots/followup_regimes": {"group": "pilots", "partitions": None, "deps": ["landscape/regimes", "laws/ppl_law"]},
    "pilots/followup_runs": {
        "group": "pilots",
        "partitions": "followup_regimes",
        "deps": ["landscape/regimes", "models/base_model", "pilots/followup_regimes", "scores/chunk_perplexity"],
    },
    "laws/cmr": {"group": "laws", "partitions": None, "deps": ["pilots/mixture_runs"]},
    # regime pilots → PPL law → selection → mixture pilots → CMR → dataset
    "dataset/domain_selection": {"group": "dataset", "partitions": None, "deps": ["landscape/regimes", "laws/ppl_law"]},
    "dataset/cpt_mixture": {
        "group": "dataset",
        "partitions": None,
        "deps": ["dataset/domain_selection", "laws/cmr", "models/base_model"],
    },
    "validation/confirmations": {
        "group": "validation",
        "partitions": None,
        "deps": ["dataset/cpt_mixture", "models/base_model"],
    },
    "audit/lineage_report": {"group": "audit", "partitions": None, "deps": ["dataset/cpt_mixture"]},
}
CHECKS = {
    "scores/chunk_perplexity:every_train_chunk_scored",
    "scores/chunk_perplexity:finite_and_ppl_at_least_1",
    "scores/chunk_perplexity:unique_chunk_scores",
    "corpus/documents:non_empty_text",
    "corpus/documents:reject_rate_below_threshold",
    "corpus/documents:schema_matches_contract",
    "corpus/documents:unique_doc_ids",
    "landscape/histograms:histogram_mass_equals_chunk_count",
    "laws/ppl_law:ppl_law_fit_quality",
    "laws/ppl_law:landscape_answer_supported",
    "laws/cmr:cmr_fit_quality",
    "dataset/cpt_mixture:budget_and_ratio_met",
    "dataset/cpt_mixture:no_eval_leakage",
    "dataset/cpt_mixture:no_duplicate_chunk",
    "dataset/cpt_mixture:landscape_reached",
    "dataset/cpt_mixture:manifest_matches_files",
    "validation/confirmations:dos_beats_random",
    "validation/confirmations:dos_beats_lowest_ppl",
    "validation/confirmations:cmr_within_tolerance",
    "validation/confirmations:cmr_is_critical",
    "validation/confirmations:law_predicts_dos_loss",
}


def partitions_of(definition) -> str | None:
    if definition is None:
        return None
    if isinstance(definition, dg.MultiPartitionsDefinition):
        return " × ".join(f"{d.name}({len(d.partitions_def.get_partition_keys())})" for d in definition.partitions_defs)
    if isinstance(definition, dg.StaticPartitionsDefinition):
        return ", ".join(definition.get_partition_keys())
    return definition.name


def test_asset_graph_snapshot(tmp_path):
    defs = build_definitions({"CPTDATA_HOME": str(tmp_path)})
    graph = defs.resolve_asset_graph()
    snapshot = {
        key.to_user_string(): {
            "group": graph.get(key).group_name,
            "partitions": partitions_of(graph.get(key).partitions_def),
            "deps": sorted(p.to_user_string() for p in graph.get(key).parent_keys),
        }
        for key in graph.get_all_asset_keys()
    }
    assert snapshot == GRAPH
    checks = {f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys}
    assert checks == CHECKS
    # every check blocks, but the law's own quality (it governs the champion alias; the answer check blocks DOS) and
    # the confirmations (a claim that fails is reported, never fails the build)
    blocking = {
        f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys if graph.get_check_spec(k).blocking
    }
    confirmations = {c for c in CHECKS if c.startswith("validation/")}
    assert blocking == CHECKS - {"laws/ppl_law:ppl_law_fit_quality"} - confirmations
    assert {j.name for j in defs.jobs} >= {"ingest_corpus", "base_model", "score_corpus", "landscape", "regime_pilots"}
    assert {s.name for s in defs.sensors} == {"corpus_landing_sensor"}
    assert {s.name for s in defs.schedules} == {"daily_corpus_build"}


def test_profiles_are_chosen_by_one_variable(tmp_path):
    quick = load_profile({"CPTDATA_HOME": str(tmp_path)})
    assert quick.name == "quickstart"
    assert quick.delta.root_uri == str(tmp_path / "delta")
    assert quick.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert quick.spark.master == "local[2]"
    assert (quick.model.kind, quick.model.pretrain_token_budget) == ("pretrain", 500_000)
    assert load_profile({"CPTDATA_PROFILE": "smollm2"}).model.kind == "smollm2"
    hub = load_profile({"CPTDATA_BASE_MODEL": "org/model", "CPTDATA_BASE_MODEL_REVISION": "abc123"}).model
    assert (hub.kind, hub.hub_id, hub.hub_revision) == ("hub", "org/model", "abc123")
    assert {s.name for s in quick.catalog.sources} == {
        "med_medquad",
        "med_abstracts",
        "gen_sotu",
        "gen_austen",
        "gen_moby_dick",
    }
    cluster = load_profile(
        {
            "CPTDATA_BASE_MODEL": "/models/llama",
            "CPTDATA_PROFILE": "cluster",
            "CPTDATA_DELTA_ROOT": "s3://bucket/cpt",
            "CPTDATA_SPARK_CONNECT": "sc://spark:15002",
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        }
    )
    assert cluster.delta.root_uri == "s3://bucket/cpt"
    # the Connect URL (it may carry a token) and the tracking URI reach the resources as env var references only
    assert isinstance(cluster.spark.connect_url, dg.EnvVar)
    assert cluster.spark.connect_url.env_var_name == "CPTDATA_SPARK_CONNECT"
    assert cluster.mlflow.tracking_uri.env_var_name == "MLFLOW_TRACKING_URI"
    assert (cluster.model.kind, cluster.model.path) == ("local", "/models/llama")
    with pytest.raises(ValueError, match="CPTDATA_BASE_MODEL"):
        load_profile({"CPTDATA_PROFILE": "cluster", "CPTDATA_DELTA_ROOT": "s3://b/c"})
    with pytest.raises(ValueError, match="CPTDATA_DELTA_ROOT"):
        load_profile({"CPTDATA_PROFILE": "cluster"})
    with pytest.raises(ValueError, match="quickstart, smollm2, cluster"):
        load_profile({"CPTDATA_PROFILE": "laptop"})


def test_ui_links_come_from_configuration_never_a_fixed_port(tmp_path):
    quick = load_profile({"CPTDATA_HOME": str(tmp_path)}).mlflow
    assert quick.ui_url is None and quick.dagster_run_url("r1") is None  # nothing configured: no guessed address
    assert quick.run_link("7", "abc").value == f"runs:/abc in sqlite:///{tmp_path / 'mlflow.db'}"
    configured = load_profile(
        {
            "CPTDATA_HOME": str(tmp_path),
            "CPTDATA_MLFLOW_UI": "http://mlflow.example:8080",
            "CPTDATA_DAGSTER_UI": "https://dagster.example/",
        }
    ).mlflow
    assert configured.run_link("7", "abc").value == "http://mlflow.example:8080/#/experiments/7/runs/abc"
    assert configured.dagster_run_url("r1") == "https://dagster.example/runs/r1"
    server = load_profile({"CPTDATA_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://bob:pw@mlflow.internal:5001"})
    assert server.mlflow.ui_url == "http://mlflow.internal:5001"  # a tracking server serves its UI; no credentials
    with pytest.raises(ConfigError, match="CPTDATA_DAGSTER_UI"):
        load_profile({"CPTDATA_DAGSTER_UI": "dagster:3000"})


def test_landing_sensor_registers_new_files_and_requests_their_runs(tmp_path):
    landing = tmp_path / "landing"
    (landing / "domain").mkdir(parents=True)
    sources = tmp_path / "sources.json"
    sources.write_text("[]")
    defs = build_definitions({"CPTDATA_HOME": str(tmp_path), "CPTDATA_SOURCES": str(sources)})
    resources = {"catalog": defs.resources["catalog"], "delta": defs.resources["delta"]}
    with dg.DagsterInstance.ephemeral() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        assert isinstance(corpus_landing_sensor(ctx), dg.SkipReason)

        (landing / "domain" / "notes.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
        result = corpus_landing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert [r.partition_key for r in result.run_requests] == ["domain-notes"]
        assert result.dynamic_partitions_requests[0].partition_keys == ["domain-notes"]
        instance.add_dynamic_partitions(corpus_sources.name, ["domain-notes"])

        again = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=resources)
        assert isinstance(corpus_landing_sensor(again), dg.SkipReason)  # nothing new: no second run

        (landing / "domain" / "notes.jsonl").write_text(json.dumps({"text": "hello, changed"}) + "\n")
        changed = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=resources)
        assert [r.partition_key for r in corpus_landing_sensor(changed).run_requests] == ["domain-notes"]


def test_daily_schedule_rebuilds_every_registered_source():
    when = datetime(2026, 5, 1, 2, tzinfo=UTC)
    # the context is closed with the block: left open, the instance it re-opens from its ref stays the process's
    # current defs-state storage after being disposed, and later definitions fail to load ("undefined weakref")
    with dg.instance_for_test() as instance, dg.build_schedule_context(instance, when) as ctx:
        assert isinstance(daily_corpus_build(ctx), dg.SkipReason)
        instance.add_dynamic_partitions(corpus_sources.name, ["a", "b"])
        runs = daily_corpus_build(ctx)
        assert [(r.partition_key, r.run_key) for r in runs] == [
            ("a", "2026-05-01T02:00:a"),
            ("b", "2026-05-01T02:00:b"),
        ]


def test_the_corpus_build_schedule_is_set_from_the_environment(tmp_path):
    env = {"CPTDATA_HOME": str(tmp_path)}
    (default,) = build_definitions(env).schedules
    assert (default.cron_schedule, default.default_status) == ("0 2 * * *", dg.DefaultScheduleStatus.STOPPED)
    (hourly,) = build_definitions(
        env | {"CPTDATA_CORPUS_BUILD_CRON": "0 * * * *", "CPTDATA_CORPUS_BUILD_ON": "true"}
    ).schedules
    assert (hourly.cron_schedule, hourly.default_status) == ("0 * * * *", dg.DefaultScheduleStatus.RUNNING)
    with pytest.raises(ConfigError, match="CPTDATA_CORPUS_BUILD_CRON='every day': is not a cron string"):
        build_definitions(env | {"CPTDATA_CORPUS_BUILD_CRON": "every day"})


def test_pilot_partitions_read_every_scores_partition(tmp_path):
    """A backfill of all pilot partitions must not look for scores partitions named like the pilot partitions."""
    defs = build_definitions({"CPTDATA_HOME": str(tmp_path)})
    scores = dg.AssetKey(["scores", "chunk_perplexity"])
    with dg.instance_for_test():
        for pilot in (["pilots", "regime_runs"], ["pilots", "mixture_runs"]):
            mapping = defs.resolve_assets_def(dg.AssetKey(pilot)).get_partition_mapping(scores)
            assert isinstance(mapping, dg.AllPartitionMapping)
