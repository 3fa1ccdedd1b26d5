"""Shared fixtures: a Delta store in a temporary folder, one local Spark session, the sample corpora, bad input."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

from cpt.delta_store import CommitInfo, DeltaStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> DeltaStore:
    return DeltaStore(str(tmp_path / "delta"))


@pytest.fixture
def commit() -> CommitInfo:
    return CommitInfo(
        run_id="run-1",
        asset_key="test/table",
        code_version="v1",
        config_hash="abc",
        partition="p",
        input_versions={"corpus/documents": 7},
    )


@pytest.fixture(scope="session")
def spark():
    from spark_jobs.session import SparkSettings, build_session

    # the same tests against a Spark standalone master or through a Spark Connect server (tests/cluster starts them)
    remote = os.environ.get("CPTDATA_TEST_SPARK_CONNECT")
    master = os.environ.get("CPTDATA_TEST_SPARK_MASTER", "local[2]")
    on_loopback = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    executors = {"spark.pyspark.python": sys.executable, "spark.executor.memory": "1g"}  # this venv on the workers
    extra = on_loopback | executors if master.startswith("spark://") else {}
    session = build_session(
        SparkSettings(
            master=master, connect_url=remote, shuffle_partitions=2, app_name="cptdata-tests", extra_conf=extra
        )
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    path = Path(os.environ.get("CPTDATA_CORPORA", REPO.parent / "shared" / "corpora")).resolve()
    if not (path / "med_medquad.jsonl.gz").exists():
        pytest.fail(f"sample corpora not found at {path}; set CPTDATA_CORPORA")
    return path


GOOD = [
    {"id": "g1", "group": "A", "text": "First good document.\r\nSecond line."},
    {"id": "g2", "group": "A", "text": "Second good document."},
    {"id": "g3", "group": "B", "text": "Cafe\u0301 au lait"},  # NFD: normalised to NFC
    {"id": 4, "group": 7, "text": "  Third good one, integer id and group.  "},
]
# Each bad line, with the reason it must be quarantined under.
BAD = [
    (b'{"id": "b1", "group": "A", "text": "unterminated', "invalid_json"),
    (b'{"id": "b2", "group": "A", "text": "caf\xe9 latin-1"}', "invalid_utf8"),
    (b'{"id": "b3", "group": "A"}', "missing_text"),
    (b'{"id": "b4", "group": "A", "text": "   \\n  "}', "empty_text"),
    (b'{"id": "b5", "group": "A", "text": 42}', "wrong_type"),
    (b'["a", "list"]', "not_an_object"),
    (b'{"id": "b7", "group": "A", "text": "lone \\ud800 surrogate"}', "invalid_utf8"),
    (b'{"id": "b8", "text": "no group field"}', "missing_group"),
    (b'{"id": "b9", "group": ["x"], "text": "group is a list"}', "wrong_type"),
]
TRUNCATED_LINE = json.dumps({"id": "t1", "group": "C", "text": "x" * 4000}).encode()


def write_malformed_jsonl_gz(path: Path) -> Path:
    """Good lines, every kind of bad line, a duplicate, then a second gzip member cut off mid-stream."""
    lines = [json.dumps(g).encode() for g in GOOD[:2]]
    lines += [b for b, _ in BAD]
    lines += [json.dumps(GOOD[0]).encode()]  # exact duplicate of the first document
    lines += [json.dumps(g).encode() for g in GOOD[2:]]
    complete = gzip.compress(b"\n".join(lines) + b"\n", mtime=0)
    tail = gzip.compress(TRUNCATED_LINE + b"\n", mtime=0)
    path.write_bytes(complete + tail[: len(tail) - 12])  # no trailer, last block cut
    return path


TINY_TEXTS = [
    "The patient presented with fever and a persistent cough for three days.",
    "Insulin lowers blood glucose; metformin reduces hepatic glucose production.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea.",
    "Hypertension is treated with diuretics, beta blockers or ACE inhibitors.",
] * 8


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama model with its own byte-level BPE tokenizer, saved like any Hugging Face model folder."""
    from cpt.models.pretrain import PretrainConfig, build_model, train_tokenizer

    folder = tmp_path_factory.mktemp("tiny-model")
    config = PretrainConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, seq_len=64)
    tokenizer = train_tokenizer(TINY_TEXTS, config.vocab_size)
    build_model(config, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
