"""What every asset stamps on its Delta commits and shows in its Dagster metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import dagster as dg
import pyarrow as pa

from cpt.columns import COLUMN_DESCRIPTIONS
from cpt.delta_store import CommitInfo, DeltaStore
from cpt.hashing import config_hash


def package_version() -> str:
    try:
        return version("cptdata")
    except PackageNotFoundError:
        return "0+unknown"


def commit_info(
    context: dg.AssetExecutionContext,
    asset_key: dg.AssetKey,
    config: Any,
    input_versions: Mapping[str, int] | None = None,
    *,
    input_parts: Mapping[str, Sequence[str]] | None = None,
    files: Sequence[Mapping[str, Any]] = (),
    models: Mapping[str, Mapping[str, Any]] | None = None,
) -> CommitInfo:
    """The lineage of a commit: run, asset, partition, code and config, the table versions read (``input_parts``:
    the partitions read of those not read whole), the source files and base models read (cpt.lineage.graph)."""
    code_version = context.assets_def.code_versions_by_key.get(asset_key) or "unversioned"
    return CommitInfo(
        run_id=context.run.run_id,
        asset_key=asset_key.to_user_string(),
        code_version=f"cptdata {package_version()} / {code_version}",
        config_hash=config_hash(config),
        partition=context.partition_key if context.has_partition_key else None,
        input_versions=dict(input_versions or {}),
        input_parts=dict(input_parts or {}),
        files=tuple(files),
        models=dict(models or {}),
    )


def require_version(store: DeltaStore, table: str) -> int:
    """The table's current version, to pin and read; a clear failure when it was never written."""
    version = store.version(table)
    if version is None:
        raise dg.Failure(f"{table} does not exist yet: materialize the asset that writes it (and its partitions) first")
    return version


# Who answers for each stage's assets, and what a catalogue filters them by (tags: stage, tier).
OWNERS = {
    "corpus": ["team:data-platform"],
    "models": ["team:ml-platform"],
    "scores": ["team:data-platform"],
    "landscape": ["team:science"],
    "pilots": ["team:science"],
    "laws": ["team:science"],
    "dataset": ["team:data-platform", "team:science"],
    "validation": ["team:science"],
    "audit": ["team:data-governance"],
}
TIERS = {
    "corpus": "raw",
    "models": "model",
    "scores": "derived",
    "landscape": "derived",
    "pilots": "experiment",
    "laws": "answer",
    "dataset": "product",
    "validation": "experiment",
    "audit": "governance",
}


def governance(stage: str, schema: pa.Schema | None = None) -> dict[str, Any]:
    """An asset definition's owners, tags and (for a Delta table) column schema with every column described."""
    spec: dict[str, Any] = {"owners": OWNERS[stage], "tags": {"stage": stage, "tier": TIERS[stage]}}
    if schema is not None:
        spec["metadata"] = {"dagster/column_schema": table_schema(schema)}
    return spec


def table_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=f.name, type=str(f.type), description=COLUMN_DESCRIPTIONS.get(f.name)) for f in schema
        ]
    )


def delta_metadata(uri: str, version: int, schema: pa.Schema, rows: int) -> dict[str, Any]:
    return {
        "dagster/uri": uri,
        "dagster/row_count": rows,
        "dagster/column_schema": table_schema(schema),
        "delta_version": version,
    }


def counts_markdown(rows: list[dict[str, Any]], columns: list[str]) -> dg.MetadataValue:
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(str(r[c]) for c in columns) + " |\n" for r in rows)
    return dg.MetadataValue.md(header + body)
