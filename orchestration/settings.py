"""Every setting of a deployment, validated in one place before any work starts.

:func:`load_settings` reads the environment (``CPTDATA_*`` and ``MLFLOW_TRACKING_URI``) and the sources file named by
``CPTDATA_SOURCES``, checks every value with pydantic (types, ranges, finiteness, the profile's required settings,
the sources' keys, formats, roles, splits and unique names), and returns :class:`Settings`. A bad setting raises
:class:`ConfigError`, whose message is one line naming the setting (the variable, or the source and its key) and the
bad value; the value of a secret (:data:`SECRET_SETTINGS`) is never shown. ``orchestration.profiles`` turns the
settings into resources; apart from two test-only hooks (``CPTDATA_TEST_*``, documented where they are read),
nothing else reads the environment.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cpt.corpus.sources import CorpusRole, SourceFormat, SourceSpec, SplitPolicy

PROFILES = ("quickstart", "smollm2", "cluster")
# Settings whose values may hold credentials: they reach resources only as ``dg.EnvVar`` (resolved when a run
# starts) and are never echoed in an error, a log line or metadata.
SECRET_SETTINGS = frozenset(
    {"CPTDATA_DELTA_STORAGE_OPTIONS", "MLFLOW_TRACKING_URI", "CPTDATA_SPARK_CONNECT", "CPTDATA_OPENLINEAGE_API_KEY"}
)
# Settings only the cluster profile reads: set under another profile they are ignored, with a warning.
CLUSTER_ONLY = (
    "CPTDATA_DELTA_ROOT",
    "CPTDATA_DELTA_STORAGE_OPTIONS",
    "CPTDATA_SPARK_CONNECT",
    "CPTDATA_SPARK_DRIVER_MEMORY",
    "CPTDATA_SPARK_SHUFFLE_PARTITIONS",
    "CPTDATA_SPARK_EXECUTOR_GPUS",
    "CPTDATA_SPARK_TASK_GPUS",
    "CPTDATA_SPARK_GPU_DISCOVERY",
)
HIDDEN = "(value hidden)"
SPARK_MASTER = r"local(\[([1-9]\d*|\*)(,[1-9]\d*)?\])?|local-cluster\[.+\]|yarn|(spark|k8s|mesos)://\S+"


class ConfigError(ValueError):
    """A setting is wrong. The message is one line: the setting, the bad value (never a secret's) and the fix."""


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; unset it to use the default")
    return value


def _folder(value: str) -> str:
    _non_empty(value)
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError("is a file; it must be a folder (or not exist yet)")
    return value


class EnvSettings(BaseModel):
    """The environment variables, each under its own name (the alias), so an error names the variable."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    profile: str = Field("quickstart", alias="CPTDATA_PROFILE", description=f"one of {', '.join(PROFILES)}")
    home: str = Field(".cptdata", alias="CPTDATA_HOME", description="a folder")
    corpora: str = Field("../shared/corpora", alias="CPTDATA_CORPORA", description="a folder")
    sources_file: str | None = Field(None, alias="CPTDATA_SOURCES", description="a JSON file listing the sources")
    landing: str | None = Field(None, alias="CPTDATA_LANDING", description="a folder")
    sample_fraction: float = Field(
        0.15,
        alias="CPTDATA_SAMPLE_FRACTION",
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="a share of each sample source's groups in (0, 1], e.g. 0.15 (1: the whole sample corpora)",
    )
    max_reject_rate: float = Field(
        0.01,
        alias="CPTDATA_MAX_REJECT_RATE",
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="a finite share of records in [0, 1], e.g. 0.01",
    )
    mlflow_tracking_uri: str | None = Field(None, alias="MLFLOW_TRACKING_URI", description="an MLflow tracking URI")
    mlflow_ui: str | None = Field(None, alias="CPTDATA_MLFLOW_UI", description="an http(s) URL")
    dagster_ui: str | None = Field(None, alias="CPTDATA_DAGSTER_UI", description="an http(s) URL")
    openlineage_url: str | None = Field(
        None, alias="CPTDATA_OPENLINEAGE_URL", description="an http(s) URL of an OpenLineage (Marquez) endpoint"
    )
    openlineage_api_key: str | None = Field(None, alias="CPTDATA_OPENLINEAGE_API_KEY", description="an API key")
    openlineage_file: str | None = Field(
        None, alias="CPTDATA_OPENLINEAGE_FILE", description="a file for OpenLineage events (JSON lines), or off"
    )
    delta_root: str | None = Field(None, alias="CPTDATA_DELTA_ROOT", description="a folder or an object-store URI")
    delta_storage_options: str | None = Field(
        None, alias="CPTDATA_DELTA_STORAGE_OPTIONS", description='a JSON object of strings, e.g. {"AWS_REGION": "…"}'
    )
    spark_master: str | None = Field(
        None, alias="CPTDATA_SPARK_MASTER", description="local[N], local[*], spark://…, yarn or k8s://…"
    )
    spark_connect: str | None = Field(None, alias="CPTDATA_SPARK_CONNECT", description="an sc://host:port URL")
    spark_driver_memory: str = Field(
        "8g", alias="CPTDATA_SPARK_DRIVER_MEMORY", pattern=r"^[1-9]\d*[kKmMgGtT]?[bB]?$", description="e.g. 8g"
    )
    spark_shuffle_partitions: int = Field(
        200, alias="CPTDATA_SPARK_SHUFFLE_PARTITIONS", ge=1, description="a whole number ≥ 1"
    )
    spark_executor_gpus: int = Field(0, alias="CPTDATA_SPARK_EXECUTOR_GPUS", ge=0, description="a whole number ≥ 0")
    spark_task_gpus: float = Field(
        0.0, alias="CPTDATA_SPARK_TASK_GPUS", ge=0.0, allow_inf_nan=False, description="a finite number ≥ 0"
    )
    spark_gpu_discovery: str | None = Field(None, alias="CPTDATA_SPARK_GPU_DISCOVERY", description="a script path")
    base_model: str | None = Field(None, alias="CPTDATA_BASE_MODEL", description="a model folder or a hub id")
    base_model_revision: str | None = Field(
        None, alias="CPTDATA_BASE_MODEL_REVISION", description="a hub revision (commit, tag or branch)"
    )
    model_cache: str | None = Field(None, alias="CPTDATA_MODEL_CACHE", description="a folder")
    pretrain_tokens: int = Field(500_000, alias="CPTDATA_PRETRAIN_TOKENS", ge=1, description="a whole number ≥ 1")
    corpus_build_cron: str = Field(
        "0 2 * * *", alias="CPTDATA_CORPUS_BUILD_CRON", description="a cron string (UTC), e.g. 0 2 * * *"
    )
    corpus_build_on: bool = Field(False, alias="CPTDATA_CORPUS_BUILD_ON", description="true or false")

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"is not a profile; choose one of {', '.join(PROFILES)}")
        return value

    _folders = field_validator("home", "corpora", "landing", "model_cache")(_folder)
    _strings = field_validator(
        "mlflow_tracking_uri", "delta_root", "spark_gpu_discovery", "base_model", "base_model_revision"
    )(_non_empty)

    @field_validator("corpus_build_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from dagster._utils.schedules import is_valid_cron_string

        if not is_valid_cron_string(value):
            raise ValueError("is not a cron string")
        return value

    @field_validator("sources_file")
    @classmethod
    def _sources_file(cls, value: str) -> str:
        _non_empty(value)
        if not Path(value).expanduser().is_file():
            raise ValueError("is not a file; it must name a JSON list of sources")
        return value

    @field_validator("mlflow_ui", "dagster_ui", "openlineage_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://\S+", value):
            raise ValueError("is not an http(s) URL")
        return value

    @field_validator("openlineage_url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        parts = urlsplit(value)
        if "@" in parts.netloc or parts.query:
            raise ValueError("carries credentials or a query; give the key as CPTDATA_OPENLINEAGE_API_KEY")
        return value

    @field_validator("spark_master")
    @classmethod
    def _master(cls, value: str) -> str:
        if not re.fullmatch(SPARK_MASTER, value):
            raise ValueError("is not a Spark master URL")
        return value

    @field_validator("spark_connect")
    @classmethod
    def _connect(cls, value: str) -> str:
        if not re.fullmatch(r"sc://\S+", value):
            raise ValueError("is not a Spark Connect URL (sc://host:port)")
        return value

    @field_validator("delta_storage_options")
    @classmethod
    def _storage_options(cls, value: str) -> str:
        storage_options(value)  # only its shape is checked here; the value reaches delta-rs when a run starts
        return value

    @model_validator(mode="after")
    def _together(self) -> EnvSettings:
        problems = []
        if self.profile == "cluster" and self.delta_root is None:
            problems.append("the cluster profile needs CPTDATA_DELTA_ROOT (e.g. s3://bucket/cptdata)")
        if self.profile == "cluster" and self.base_model is None:
            problems.append("the cluster profile needs CPTDATA_BASE_MODEL (a model folder or a hub id)")
        if self.base_model_revision is not None and self.base_model is None:
            problems.append("CPTDATA_BASE_MODEL_REVISION is set but CPTDATA_BASE_MODEL (the hub id) is not")
        if self.profile == "cluster":  # the GPU settings are only read there (elsewhere: a warning)
            problems.extend(self._gpu_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _gpu_problems(self) -> list[str]:
        executor, task = self.spark_executor_gpus, self.spark_task_gpus
        if executor > 0 and not 0 < task <= executor:
            return [
                f"CPTDATA_SPARK_TASK_GPUS={task:g} must be above 0 and at most CPTDATA_SPARK_EXECUTOR_GPUS={executor} "
                "(e.g. 1: one GPU per scoring task)"
            ]
        if executor == 0 and task > 0:
            return [f"CPTDATA_SPARK_TASK_GPUS={task:g} needs CPTDATA_SPARK_EXECUTOR_GPUS above 0"]
        return []


class SourceEntry(BaseModel):
    """One entry of the sources file: exactly the keys of ``assets.resources.SourceConfig``, nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)  # its pattern and length: SourceSpec's rules, checked with the entry
    path: str = Field(min_length=1)
    format: SourceFormat
    role: CorpusRole
    text_field: str = Field("text", min_length=1)
    group_field: str | None = Field(None, min_length=1)
    id_field: str | None = Field("id", min_length=1)
    split: SplitPolicy = SplitPolicy.BY_GROUP
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0, allow_inf_nan=False)
    allow_empty: bool = False
    sample_fraction: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)

    def config(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Settings(BaseModel):
    """The validated configuration: the environment's settings, the declared sources (None: the sample corpora)
    and warnings about settings that are set but not used."""

    model_config = ConfigDict(frozen=True)

    env: EnvSettings
    sources: tuple[SourceEntry, ...] | None
    warnings: tuple[str, ...] = ()


def storage_options(text: str) -> dict[str, str]:
    """The JSON object of ``CPTDATA_DELTA_STORAGE_OPTIONS``; a ValueError never contains a value, only key names."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object of strings, not a JSON {type(value).__name__}")
    bad = sorted(k for k, v in value.items() if not isinstance(v, str))
    if bad:
        raise ValueError(f"the values of {', '.join(map(repr, bad))} must be strings")
    return value


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The secret strings in ``env`` (whole values, the storage options' values, URI passwords), longest first: what
    :func:`redact` hides from any text the CLI prints."""
    found: set[str] = set()
    for name in SECRET_SETTINGS & set(env):
        value = env[name]
        found.add(value)
        with suppress(ValueError, AttributeError):  # not a JSON object: the whole value is enough
            found.update(v for v in json.loads(value).values() if isinstance(v, str))
        found.update(re.findall(r"://[^/@\s]*:([^/@\s]+)@", value))  # user:password@
        found.update(re.findall(r"token=([^;&\s]+)", value))
    return sorted((v for v in found if len(v) >= 4), key=len, reverse=True)


def redact(text: str, env: Mapping[str, str]) -> str:
    for value in secret_values(env):
        text = text.replace(value, "***")
    return text


def load_settings(env: Mapping[str, str]) -> Settings:
    """Validate the whole configuration; raise :class:`ConfigError` (one line) on the first bad setting(s)."""
    try:
        settings = EnvSettings.model_validate({k: v for k, v in env.items() if k in _ALIASES})
    except ValidationError as exc:
        raise ConfigError(_env_errors(exc, env)) from None
    sources = _load_sources(Path(settings.sources_file).expanduser()) if settings.sources_file else None
    return Settings(env=settings, sources=sources, warnings=_warnings(settings, env))


_ALIASES = {field.alias: name for name, field in EnvSettings.model_fields.items()}


def _shown(name: str, value: Any) -> str:
    return f"{name} {HIDDEN}" if name in SECRET_SETTINGS else f"{name}={value!r}"


def _message(error: Mapping[str, Any]) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:] if msg[1:2].islower() else msg  # "Input should …", not "CPTDATA_…"


def _env_errors(exc: ValidationError, env: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"]:  # a rule across settings: its message names them
            lines.append(_message(error))
            continue
        name = str(error["loc"][0])
        field = EnvSettings.model_fields[_ALIASES[name]]
        expected = f"; expected {field.description}" if field.description and error["type"] != "value_error" else ""
        lines.append(f"{_shown(name, env.get(name))}: {_message(error)}{expected}")
    return _one_line(lines)


def _one_line(problems: list[str], limit: int = 4) -> str:
    shown = problems[:limit]
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(shown) + more


def _load_sources(path: Path) -> tuple[SourceEntry, ...]:
    where = f"CPTDATA_SOURCES={str(path)!r}"
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(items, list):
        raise ConfigError(f"{where}: must be a JSON list of source objects, not a JSON {type(items).__name__}")
    problems: list[str] = []
    entries: list[SourceEntry] = []
    first_entry: dict[str, int] = {}
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            problems.append(f"entry {i} must be an object, not {json.dumps(item)[:60]}")
            continue
        name = item.get("name")
        shown = f"{name[:40]!r}…" if isinstance(name, str) and len(name) > 60 else repr(name)
        label = f"source {shown} (entry {i})" if isinstance(name, str) else f"entry {i}"
        if isinstance(name, str) and name in first_entry:
            problems.append(f"source name {name!r} is declared twice (entries {first_entry[name]} and {i})")
            continue
        if isinstance(name, str):
            first_entry[name] = i
        try:
            entry = SourceEntry.model_validate(item)
            SourceSpec(**entry.model_dump())  # the cpt record's own rules (name pattern and length), as ingestion
        except ValidationError as exc:
            problems.extend(f"{label}: {_source_error(error)}" for error in exc.errors())
            continue
        except (TypeError, ValueError) as exc:
            problems.append(f"{label}: {exc}")
            continue
        entries.append(entry)
    if problems:
        raise ConfigError(f"{where}: {_one_line(problems)}")
    return tuple(entries)


def _source_error(error: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(SourceEntry.model_fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key {key!r} ({hint}keys: {', '.join(SourceEntry.model_fields)})"
    if error["type"] == "missing":
        return f"{key} is missing"
    value = error.get("input")
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)
    return f"{key}={value!r}: {_message(error)}"


def _warnings(settings: EnvSettings, env: Mapping[str, str]) -> tuple[str, ...]:
    out = []
    known = set(_ALIASES)
    for name in sorted(k for k in env if k.startswith("CPTDATA_") and k not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        out.append(f"{name} is not a setting and is ignored" + (f" (did you mean {close[0]}?)" if close else ""))
    if settings.profile != "cluster":
        out.extend(
            f"{name} is only read by the cluster profile and is ignored by {settings.profile}"
            for name in CLUSTER_ONLY
            if name in env
        )
    if settings.sources_file is not None and "CPTDATA_SAMPLE_FRACTION" in env:
        out.append(
            "CPTDATA_SAMPLE_FRACTION is only read for the sample corpora; set sample_fraction per source in "
            "CPTDATA_SOURCES instead"
        )
    return tuple(out)
