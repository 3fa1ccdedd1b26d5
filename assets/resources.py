"""Resources the assets use: where tables live, how Spark runs, where MLflow records, which sources exist.

They hold infrastructure and catalogue settings only; ``orchestration.profiles`` builds them per profile. Fields
that may hold credentials are marked secret (the UI masks a plain value) and are given ``dg.EnvVar("NAME")`` by the
profiles, so Dagster shows only the variable's name and resolves the value when a run starts; no method here puts a
secret in a log line or in metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
from pydantic import Field

from cpt.corpus.sources import LandingScan, SourceSpec, landing_sources
from cpt.delta_store import DeltaStore
from cpt.lineage.openlineage import OpenLineageEmitter
from spark_jobs.session import SparkSettings, build_session

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SECRET = {"dagster__is_secret": True}  # the Resources page and GraphQL show a mask instead of a plain value


def redact_uri(uri: str) -> str:
    """``http://user:pw@host/p?token=x`` → ``http://***@host/p``: a URI fit for a log line or metadata."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "***"
    netloc = f"***@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    if not netloc and "?" not in uri and ";" not in uri:
        return uri  # a local store (sqlite:////path): nothing to hide, and urlunsplit would drop its slashes
    return urlunsplit((parts.scheme, netloc, parts.path.split(";", 1)[0], "", ""))


class DeltaStoreResource(dg.ConfigurableResource):
    """Root of the Delta tables: a local folder or an object-store URI (``s3://bucket/prefix``)."""

    root_uri: str
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="delta-rs storage options that are not secret (shown in the UI)"
    )
    storage_options_json: str = Field(
        "{}",
        description="delta-rs storage options as a JSON object, e.g. credentials: pass "
        'dg.EnvVar("CPTDATA_DELTA_STORAGE_OPTIONS"), resolved when a run starts; merged over storage_options',
        json_schema_extra=SECRET,
    )

    openlineage_file: str | None = Field(
        None, description="where every commit's OpenLineage event is appended (JSON lines); None: no file"
    )
    openlineage_url: str | None = Field(None, description="an OpenLineage HTTP endpoint (Marquez) to send them to")
    openlineage_api_key: str | None = Field(
        None, description='its API key: dg.EnvVar("CPTDATA_OPENLINEAGE_API_KEY")', json_schema_extra=SECRET
    )
    openlineage_namespace: str = Field("cptdata", description="the OpenLineage job namespace")

    def store(self) -> DeltaStore:
        try:
            secret = json.loads(self.storage_options_json or "{}")
        except json.JSONDecodeError as exc:  # the message holds a position, never the value
            raise dg.Failure(f"the Delta storage options are not valid JSON ({exc.msg})") from None
        if not isinstance(secret, dict):
            raise dg.Failure("the Delta storage options must be a JSON object")
        emitter = None
        if self.openlineage_file or self.openlineage_url:
            emitter = OpenLineageEmitter(
                self.openlineage_namespace, self.openlineage_file, self.openlineage_url, self.openlineage_api_key
            )
        return DeltaStore(self.root_uri, {**self.storage_options, **secret}, on_commit=emitter)


class SparkResource(dg.ConfigurableResource):
    """How Spark runs: ``local[N]``, a cluster master URL, or a Spark Connect URL; GPU amounts for scoring."""

    master: str = "local[2]"
    # a Spark Connect URL may carry a token (sc://host:15002/;token=...): given as dg.EnvVar("CPTDATA_SPARK_CONNECT")
    connect_url: str | None = Field(None, json_schema_extra=SECRET)
    app_name: str = "cptdata"
    driver_memory: str = "2g"
    shuffle_partitions: int = 8
    executor_gpus: int = 0
    task_gpus: float = 0.0
    gpu_discovery_script: str | None = None
    extra_conf: dict[str, str] = Field(default_factory=dict)
    storage_options_json: str = Field(
        "{}",
        description="the Delta root's storage options (JSON, as for the delta resource: pass "
        'dg.EnvVar("CPTDATA_DELTA_STORAGE_OPTIONS")), turned into the executors\' S3A settings',
        json_schema_extra=SECRET,
    )

    def settings(self) -> SparkSettings:
        values = self.model_dump()
        try:
            options = json.loads(values.pop("storage_options_json") or "{}")
        except json.JSONDecodeError as exc:  # the message holds a position, never the value
            raise dg.Failure(f"the Delta storage options are not valid JSON ({exc.msg})") from None
        return SparkSettings(**values, storage_options=options)  # the rest keep SparkSettings' defaults

    def session(self) -> SparkSession:
        return build_session(self.settings())


class MlflowResource(dg.ConfigurableResource):
    """Where fits and pilot runs are recorded (a local SQLite store by default) and where its UI is served."""

    # may hold user:password@ or a token: given as dg.EnvVar("MLFLOW_TRACKING_URI"); redact_uri() it before showing
    tracking_uri: str = Field(json_schema_extra=SECRET)
    registry_uri: str | None = Field(None, json_schema_extra=SECRET)  # default: the tracking store
    experiment_prefix: str = "cptdata"  # experiments are "<prefix>/<stage>", e.g. cptdata/pilots
    ui_url: str | None = None  # CPTDATA_MLFLOW_UI (``make mlflow-ui`` sets it); run links point there
    dagster_ui_url: str | None = None  # CPTDATA_DAGSTER_UI: each MLflow run links back to its Dagster run there
    # where new experiments keep their artifacts (plots, fits, models); None: the tracking server's default. Set it
    # for a database store, whose default is ./mlruns under whatever directory the process runs in.
    artifact_root: str | None = None

    def client(self):
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri, self.registry_uri or self.tracking_uri)

    def experiment_id(self, stage: str) -> str:
        """The id of ``<prefix>/<stage>``, created on first use (safe when two runs create it at once)."""
        from mlflow.exceptions import MlflowException

        client, name = self.client(), f"{self.experiment_prefix}/{stage}"
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{name}" if self.artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            return client.get_experiment_by_name(name).experiment_id

    def run_link(self, experiment_id: str, run_id: str) -> dg.MetadataValue:
        if self.ui_url:
            return dg.MetadataValue.url(f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}")
        return dg.MetadataValue.text(f"runs:/{run_id} in {redact_uri(self.tracking_uri)}")

    def dagster_run_url(self, dagster_run_id: str) -> str | None:
        """Where the Dagster UI shows a run (tagged on its MLflow runs), when that UI's address is configured."""
        return f"{self.dagster_ui_url.rstrip('/')}/runs/{dagster_run_id}" if self.dagster_ui_url else None


class SourceConfig(dg.Config):
    """One declared corpus source (see ``cpt.corpus.sources.SourceSpec``)."""

    name: str
    path: str
    format: str
    role: str
    text_field: str = "text"
    group_field: str | None = None
    id_field: str | None = "id"
    split: str = "by_group"
    eval_fraction: float = 0.05
    allow_empty: bool = Field(
        False,
        description="a source that yields no document is an error unless this is true (then ingesting it really "
        "empties its partition)",
    )
    sample_fraction: float = Field(
        1.0,
        description="the share of the source's groups ingested, chosen by a stable hash of the group (the same "
        "groups on every run); the others are counted as sampled out. 1.0: every record",
    )

    def spec(self) -> SourceSpec:
        return SourceSpec(**self.model_dump())  # the same fields and defaults (pinned by tests/assets)


class CorpusCatalogResource(dg.ConfigurableResource):
    """The corpus sources: declared ones, plus one per file dropped in the landing folder."""

    sources: list[SourceConfig] = Field(default_factory=list)
    landing_dir: str
    max_reject_rate: float = 0.01

    def specs(self) -> dict[str, SourceSpec]:
        declared = {s.name: s.spec() for s in self.sources}
        return declared | {s.name: s for s in self.landing().sources}

    def landing(self) -> LandingScan:
        return landing_sources(Path(self.landing_dir), taken=frozenset(s.name for s in self.sources))

    def resolve(self, name: str) -> SourceSpec:
        specs = self.specs()
        if name not in specs:
            raise dg.Failure(
                description=f"unknown corpus source {name!r}: it is neither declared in the profile nor a file in "
                f"{self.landing_dir}/<domain|general>/. Known sources: {sorted(specs)}"
            )
        return specs[name]


class BaseModelResource(dg.ConfigurableResource):
    """Which base model every later stage uses (see ``cpt.models``)."""

    kind: str = "pretrain"  # pretrain | smollm2 | local | hub
    path: str | None = None  # local: a model folder
    hub_id: str | None = None  # hub: a repository id ...
    hub_revision: str | None = None  # ... at a pinned revision
    cache_dir: str  # converted and pretrained models live here
    # pretrain: the quick-start model trained on the general training documents (a token budget, not a time budget)
    pretrain_token_budget: int = 500_000
    pretrain_hidden_size: int = 128
    pretrain_intermediate_size: int = 384
    pretrain_layers: int = 3
    pretrain_vocab_size: int = 4096
    pretrain_seed: int = 0


class JsonManifestIOManager(dg.ConfigurableIOManager):
    """Stores small JSON-serialisable asset values (model manifests) as ``<root>/<asset key path>.json``."""

    root: str

    def _path(self, key: dg.AssetKey) -> Path:
        return Path(self.root, *key.path).with_suffix(".json")

    def handle_output(self, context: dg.OutputContext, obj: dict) -> None:
        path = self._path(context.asset_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
        tmp.replace(path)

    def load_input(self, context: dg.InputContext) -> dict:
        path = self._path(context.asset_key)
        if not path.exists():
            raise dg.Failure(f"{context.asset_key.to_user_string()} has not been materialized ({path} is missing)")
        return json.loads(path.read_text())
