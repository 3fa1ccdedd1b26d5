"""OpenLineage run events for every committed table version, so a governance catalogue (Marquez, DataHub, …) can
ingest the platform's graph.

One event per commit (:class:`cpt.delta_store.CommittedVersion`): a COMPLETE run event whose job is the asset that
wrote it and whose run id is fixed by the table version (re-emitting a version repeats the same run), the Dagster
run as the parent run. Inputs: the table versions the commit read (a ``version`` facet; a ``cptdata_partitions``
facet where it read only some partitions), the source files it read (namespace ``file``, version = SHA-256) and
the base models (namespace ``model``, version = revision), plus — where the commit adds to or replaces part of the
table — the table's previous version, whose other rows the new version keeps. Output: the table version with its
``schema`` (column descriptions included) and ``version`` facets. The run facet ``cptdata`` carries how the rows
entered the table (``write``, ``part``, see :mod:`cpt.lineage.graph`) and the code version, so a consumer can fold
versions exactly as :func:`cpt.lineage.graph.fold_history` does.

Transports: a JSON-lines file (the default; each event one locked append) and, when configured, HTTP to an
OpenLineage endpoint (``/api/v1/lineage``, Bearer API key; one retry, 5 s timeout, in the writer's thread). The file
is written first, so an unreachable endpoint loses nothing. A restore's input is the restored version.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attr
import pyarrow as pa

from cpt.columns import COLUMN_DESCRIPTIONS
from cpt.lineage.graph import direct_inputs

PRODUCER = "https://github.com/cptdata/cptdata"
FACETS_SCHEMA = f"{PRODUCER}/blob/main/docs/openlineage-facets.json"  # this repository's docs/
FILE_NAMESPACE, MODEL_NAMESPACE = "file", "model"
_RUN_NAMESPACE = uuid.UUID("6f1c8a52-3c1e-4f4a-9a57-6b1f3f2a9c11")  # uuid5 namespace of cptdata run ids

_log = logging.getLogger(__name__)


def run_id_of(table_uri: str, version: int) -> str:
    """The OpenLineage run id of the commit that made ``version`` of a table: the same whenever it is emitted."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{table_uri}@{version}"))


@functools.cache  # the classes are made once per process, not per event
def _facet_classes():
    from openlineage.client.generated.base import InputDatasetFacet, RunFacet

    @attr.define
    class CptdataCommitRunFacet(RunFacet):
        """How a commit's rows entered its table, and what wrote them."""

        write: str
        part: str
        table: str
        version: int
        dagster_run_id: str
        asset_key: str
        partition: str
        code: dict
        restored_version: int | None = None

        @staticmethod
        def _get_schema() -> str:
            return f"{FACETS_SCHEMA}#/$defs/CptdataCommitRunFacet"

    @attr.define
    class CptdataPartitionsInputFacet(InputDatasetFacet):
        """The partitions of the input table version that were read (not the whole table)."""

        partitions: list

        @staticmethod
        def _get_schema() -> str:
            return f"{FACETS_SCHEMA}#/$defs/CptdataPartitionsInputFacet"

    return CptdataCommitRunFacet, CptdataPartitionsInputFacet


def build_event(committed, namespace: str, event_time: datetime | None = None):
    """The OpenLineage RunEvent of one committed version (a :class:`cpt.delta_store.CommittedVersion`)."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import dataset_version_dataset, parent_run, schema_dataset

    commit_facet, parts_facet = _facet_classes()
    meta: Mapping[str, str] = committed.metadata
    root = committed.table_uri[: -len(committed.table)].rstrip("/")
    write = meta.get("cptdata.write", "")

    def version_facet(value) -> dict:
        return {"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(value))}

    inputs = []
    for table, version, parts in direct_inputs(meta, committed.table):
        input_facets = {"cptdata_partitions": parts_facet(partitions=list(parts))} if parts is not None else {}
        inputs.append(InputDataset(root, table, facets=version_facet(version), inputFacets=input_facets))
    if write in ("append", "replace_partition") and committed.version > 0:
        inputs.append(InputDataset(root, committed.table, facets=version_facet(committed.version - 1)))
    if write == "restore" and meta.get("cptdata.restored_version"):
        inputs.append(InputDataset(root, committed.table, facets=version_facet(meta["cptdata.restored_version"])))
    for record in json.loads(meta.get("cptdata.files") or "[]"):
        inputs.append(InputDataset(FILE_NAMESPACE, record["path"], facets=version_facet(record["sha256"])))
    for revision, record in json.loads(meta.get("cptdata.models") or "{}").items():
        inputs.append(
            InputDataset(MODEL_NAMESPACE, str(record.get("path") or revision), facets=version_facet(revision))
        )
    output = OutputDataset(
        root,
        committed.table,
        facets={"schema": _schema_facet(schema_dataset, committed.schema)} | version_facet(committed.version),
    )
    dagster_run = meta.get("cptdata.run_id", "")
    run_facets: dict[str, Any] = {
        "cptdata": commit_facet(
            write=write,
            part=meta.get("cptdata.part", ""),
            table=committed.table,
            version=committed.version,
            dagster_run_id=dagster_run,
            asset_key=meta.get("cptdata.asset_key", ""),
            partition=meta.get("cptdata.partition", ""),
            code=json.loads(meta.get("cptdata.code") or "{}"),
            restored_version=int(meta["cptdata.restored_version"]) if meta.get("cptdata.restored_version") else None,
        )
    }
    if _is_uuid(dagster_run):
        run_facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=dagster_run), job=parent_run.Job(namespace="dagster", name=f"{namespace}.run")
        )
    return RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=(event_time or datetime.now(UTC)).isoformat(),
        run=Run(runId=run_id_of(committed.table_uri, committed.version), facets=run_facets),
        job=Job(namespace=namespace, name=meta.get("cptdata.asset_key") or committed.table),
        inputs=inputs,
        outputs=[output],
        producer=PRODUCER,
    )


def _schema_facet(module, schema: pa.Schema):
    fields = [
        module.SchemaDatasetFacetFields(
            name=f.name,
            type=str(f.type),
            description=(f.metadata or {}).get(b"description", b"").decode() or COLUMN_DESCRIPTIONS.get(f.name),
        )
        for f in schema
    ]
    return module.SchemaDatasetFacet(fields=fields)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class OpenLineageEmitter:
    """An ``on_commit`` listener of :class:`cpt.delta_store.DeltaStore`: one event per committed version, to a
    JSON-lines file and, when ``url`` is set, to an OpenLineage HTTP endpoint."""

    def __init__(
        self,
        namespace: str,
        file: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.namespace, self.file, self.url = namespace, file, url
        self._api_key, self._timeout_s, self._http = api_key, timeout_s, None

    def __call__(self, committed) -> None:
        from openlineage.client.serde import Serde

        event = build_event(committed, self.namespace)
        line = Serde.to_json(event)
        if self.file:
            append_line(Path(self.file), line)
        if self.url:
            try:
                self._transport().emit(event)
            except Exception as exc:  # the file holds it; say that the catalogue did not get it (never the key)
                where = f"; it is in {self.file}" if self.file else ""
                _log.warning(
                    f"OpenLineage event for {committed.table} v{committed.version} not delivered: "
                    f"{type(exc).__name__}{where}"
                )

    def _transport(self):
        if self._http is None:
            from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport, TokenProvider

            auth = ApiKeyTokenProvider({"apiKey": self._api_key}) if self._api_key else TokenProvider({})
            retry = {"total": 1, "backoff_factor": 0.2, "status_forcelist": [500, 502, 503, 504]}  # a writer waits
            self._http = HttpTransport(HttpConfig(url=self.url, timeout=self._timeout_s, auth=auth, retry=retry))
        return self._http


def append_line(path: Path, line: str) -> None:
    """Append one line under an exclusive lock: concurrent writers never interleave their events."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)  # releases the lock


def read_events(path: str | Path) -> list[dict]:
    """The events of a JSON-lines file, oldest first."""
    text = Path(path).read_text() if Path(path).exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
