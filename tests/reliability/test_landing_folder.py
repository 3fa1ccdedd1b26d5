"""The landing folder is untrusted (issue 12): only regular files and folders physically inside it become sources;
links, FIFOs and anything resolving outside are refused with a reason the sensor logs, and never read."""

from __future__ import annotations

import logging
import os

import dagster as dg
import pytest

from assets.corpus import DOCUMENTS_TABLE, REJECTS_TABLE
from cpt.corpus.sources import landing_sources
from orchestration.sensors import corpus_landing_sensor
from tests.reliability.test_ingest_helpers import failure_text, ingest, resources, store, texts, write_source

SECRET = "SECRET-LINE not for training"


@pytest.fixture
def landing(tmp_path):
    for role in ("domain", "general"):
        (tmp_path / "landing" / role).mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.jsonl").write_text(f"{SECRET}\nroot:x:0:0:root:/root:/bin/bash\n")  # like /etc/passwd
    (outside / "folder" / "private.txt").write_text(SECRET)
    write_source(tmp_path / "landing" / "domain" / "good.jsonl", texts("landed", 3))
    return tmp_path / "landing"


def refusals(scan) -> dict[str, str]:
    return {os.path.basename(path): reason for path, reason in scan.refused.items()}


def test_landing_symlink_to_a_system_file_is_refused_and_never_read(tmp_path, landing, caplog):
    (landing / "domain" / "passwd.jsonl").symlink_to(tmp_path / "outside" / "secret.jsonl")
    (landing / "domain" / "etc-passwd.jsonl").symlink_to("/etc/passwd")
    scan = landing_sources(landing)
    assert [s.name for s in scan.sources] == ["domain-good"]
    reasons = refusals(scan)
    assert set(reasons) == {"passwd.jsonl", "etc-passwd.jsonl"}
    assert all("symbolic link" in r and "copy the data in" in r for r in reasons.values())

    res = resources(tmp_path, [], landing=landing)
    with dg.DagsterInstance.ephemeral() as instance:
        assert ingest(res, instance, "domain-good").success
        refused = ingest(res, instance, "domain-passwd")  # asked for by name anyway (a stale partition, a CLI call)
        assert not refused.success and "unknown corpus source 'domain-passwd'" in failure_text(refused)
        context = dg.build_sensor_context(instance=instance, resources=res)
        context.log.addHandler(caplog.handler)  # the sensor's logger does not propagate to the root logger
        with caplog.at_level(logging.WARNING):
            corpus_landing_sensor(context)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "passwd.jsonl is not ingested" in logged and "symbolic link" in logged
    tables = store(tmp_path)
    raw = b"".join(r or b"" for r in tables.read(REJECTS_TABLE).column("raw").to_pylist())
    assert SECRET.encode() not in raw and b"root:x:0" not in raw  # the linked file never reached the rejects
    assert set(tables.read(DOCUMENTS_TABLE).column("source").to_pylist()) == {"domain-good"}


def test_landing_folder_linked_from_outside_is_refused(tmp_path, landing):
    (landing / "general" / "essays").symlink_to(tmp_path / "outside" / "folder", target_is_directory=True)
    (landing / "general" / "notes").mkdir()  # a real folder holding one linked file
    (landing / "general" / "notes" / "fine.txt").write_text("a real text file")
    (landing / "general" / "notes" / "linked.txt").symlink_to(tmp_path / "outside" / "folder" / "private.txt")
    (landing / "general" / "plain").mkdir()
    (landing / "general" / "plain" / "a.txt").write_text("a landed text")
    scan = landing_sources(landing)
    assert sorted(s.name for s in scan.sources) == ["domain-good", "general-plain"]
    reasons = refusals(scan)
    assert "symbolic link" in reasons["essays"]
    assert "'linked.txt' is a symbolic link" in reasons["notes"]

    res = resources(tmp_path, [], landing=landing)
    with dg.DagsterInstance.ephemeral() as instance:
        assert ingest(res, instance, "general-plain").success
        assert not ingest(res, instance, "general-essays").success
    assert store(tmp_path).read(DOCUMENTS_TABLE).column("text").to_pylist() == ["a landed text"]


def test_landing_role_folder_link_and_fifo_are_refused(tmp_path, landing):
    os.mkfifo(landing / "domain" / "pipe.jsonl")  # reading it would block forever
    (landing / "general").rmdir()
    (landing / "general").symlink_to(tmp_path / "outside", target_is_directory=True)
    scan = landing_sources(landing)
    assert [s.name for s in scan.sources] == ["domain-good"]
    reasons = refusals(scan)
    assert "not a regular file or folder" in reasons["pipe.jsonl"]
    assert "the role folder is a symbolic link" in reasons["general"]
