"""What every asset stamps on its Delta commits and shows in its Dagster metadata."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import dagster as dg
import pyarrow as pa

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
) -> CommitInfo:
    code_version = context.assets_def.code_versions_by_key.get(asset_key) or "unversioned"
    return CommitInfo(
        run_id=context.run.run_id,
        asset_key=asset_key.to_user_string(),
        code_version=f"cptdata {package_version()} / {code_version}",
        config_hash=config_hash(config),
        partition=context.partition_key if context.has_partition_key else None,
        input_versions=dict(input_versions or {}),
    )


def require_version(store: DeltaStore, table: str) -> int:
    """The table's current version, to pin and read; a clear failure when it was never written."""
    version = store.version(table)
    if version is None:
        raise dg.Failure(f"{table} does not exist yet: materialize the asset that writes it (and its partitions) first")
    return version


def table_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in schema])


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
