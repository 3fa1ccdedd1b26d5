"""Kill-and-rerun of scoring: scoring runs in subprocesses are SIGKILLed (a) while their Spark tasks write Parquet
files (a standalone ``python -m spark_jobs.scoring`` run), (b) after the Delta commit but before Dagster records the
materialization (a ``score_corpus`` run). Each rerun leaves every chunk scored exactly once — none duplicated, none
lost — and the orphans of (a) removed. The two runs to kill work in two separate homes at the same time (their JVM
starts dominate the time), and each test reruns one of them.

Test-only hooks (read by the code under test): ``CPTDATA_TEST_SCORING_TASK_SLEEP`` (spark_jobs/scoring_worker.py)
slows every task down so the kill lands while tasks write; ``CPTDATA_TEST_AFTER_SCORES_COMMIT`` (assets/scores.py)
marks the commit and waits in the window before the materialization is recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from assets.scores import CHECK_UNIQUE, CHUNK_PERPLEXITY, TEST_AFTER_COMMIT_ENV
from cpt.delta_store import CommitInfo, DeltaStore
from spark_jobs.scoring import DOCUMENTS_TABLE, SCORE_KEY, SCORES_TABLE
from spark_jobs.scoring_worker import TEST_TASK_SLEEP_ENV

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
SOURCE = "dom"
CHILD = r"""
import json, sys
import dagster as dg
from orchestration.definitions import build_definitions
cfg = json.loads(sys.argv[1])
defs = build_definitions(cfg["env"])
instance = dg.DagsterInstance.local_temp(tempdir=cfg["instance_dir"])
result = defs.resolve_job_def("score_corpus").execute_in_process(
    instance=instance, partition_key=cfg["partition"], run_config=cfg["run_config"], raise_on_error=False
)
print("child run finished, success:", result.success, flush=True)
"""


def scoring_config(**extra) -> dict:
    config = {"window_length": 32, "min_tokens": 4, "num_partitions": 4, **extra}
    return {"ops": {"scores__chunk_perplexity": {"config": config}}}


class Home:
    """A fresh platform home: one source's documents, the tiny model as base model, a persistent Dagster instance."""

    def __init__(self, tmp_path: Path, model_dir: Path):
        from cpt.models.base_model import load_tokenizer, resolve_local
        from cpt.scoring.windows import WindowPolicy, chunk_documents
        from orchestration.definitions import build_definitions

        self.tmp, self.model_dir = tmp_path, model_dir
        texts = [
            f"note {k}: " + " ".join(f"fever{i} insulin cough glucose" for i in range(k, k + 12)) for k in range(8)
        ]
        corpus = tmp_path / "dom.jsonl"
        corpus.write_text("\n".join(json.dumps({"text": t}) for t in texts))
        sources = tmp_path / "sources.json"
        entry = {"name": SOURCE, "path": str(corpus), "format": "jsonl", "role": "domain", "split": "train"}
        sources.write_text(json.dumps([entry]))
        self.env = {
            "CPTDATA_HOME": str(tmp_path / "home"),
            "CPTDATA_SOURCES": str(sources),
            "CPTDATA_BASE_MODEL": str(model_dir),
        }
        self.store = DeltaStore(str(tmp_path / "home" / "delta"))
        commit = CommitInfo(run_id="setup", asset_key=DOCUMENTS_TABLE, code_version="t", config_hash="t")
        docs = pa.table(
            {
                "doc_id": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
                "source": [SOURCE] * len(texts),
                "role": ["domain"] * len(texts),
                "split": ["train"] * len(texts),
                "text": texts,
            }
        )
        self.store.overwrite(DOCUMENTS_TABLE, docs, commit, predicate=f"source = '{SOURCE}'", partition_by=["source"])
        self.instance_dir = tmp_path / "dagster"
        self.instance_dir.mkdir()
        self.instance = dg.DagsterInstance.local_temp(tempdir=str(self.instance_dir))
        self.instance.add_dynamic_partitions("corpus_sources", [SOURCE])
        self.defs = build_definitions(self.env)
        manifest = self.defs.resolve_job_def("base_model").execute_in_process(instance=self.instance)
        revision = self.revision = manifest.output_for_node("models__base_model")["revision"]
        assert revision == resolve_local(model_dir).revision
        policy = WindowPolicy(length=32, min_tokens=4)
        self.expected = {
            c.chunk_id
            for c in chunk_documents(load_tokenizer(model_dir), docs["doc_id"].to_pylist(), texts, policy, revision)
        }
        assert len(self.expected) > len(texts)  # several chunks per document

    def score(self, run_config: dict):
        job = self.defs.resolve_job_def("score_corpus")
        return job.execute_in_process(
            instance=self.instance, partition_key=SOURCE, run_config=run_config, raise_on_error=False
        )

    def start_dagster_run(self, hooks: dict[str, str], run_config: dict) -> subprocess.Popen:
        """``score_corpus`` for the source, as ``cptdata score`` launches it."""
        cfg = {"env": self.env, "instance_dir": str(self.instance_dir), "partition": SOURCE, "run_config": run_config}
        return self._start([sys.executable, "-c", CHILD, json.dumps(cfg)], hooks)

    def start_standalone_job(self, hooks: dict[str, str], master: str = "local[2]") -> subprocess.Popen:
        """``python -m spark_jobs.scoring job.json``: the Spark job without Dagster (quicker to start)."""
        job = self.tmp / "job.json"
        job.write_text(
            json.dumps(
                {
                    "delta_root": self.store.root_uri,
                    "spark": {"master": master},
                    "job": {
                        "documents_version": self.store.version(DOCUMENTS_TABLE),
                        "model_path": str(self.model_dir),
                        "model_revision": self.revision,
                        "run_id": "standalone",
                        "policy": {"length": 32, "min_tokens": 4},
                        "num_partitions": 4,
                    },
                }
            )
        )
        return self._start([sys.executable, "-m", "spark_jobs.scoring", str(job)], hooks)

    def _start(self, command: list[str], hooks: dict[str, str]) -> subprocess.Popen:
        env = {**os.environ, **self.env, **hooks, "SPARK_LOCAL_IP": "127.0.0.1"}
        with open(self.tmp / "child.log", "ab") as log:
            return subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the JVM goes with it
            )

    def wait_for(self, condition, proc: subprocess.Popen, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            if proc.poll() is not None:
                pytest.fail(f"the scoring run ended before the kill point:\n{self.child_log()}")
            time.sleep(0.05)
        pytest.fail(f"the kill point was not reached in {timeout} s:\n{self.child_log()}")

    def child_log(self) -> str:
        return (self.tmp / "child.log").read_text(errors="replace")[-4000:]

    def data_files(self) -> dict[str, int]:
        root = Path(self.store.table_uri(SCORES_TABLE))
        return {
            str(p.relative_to(root)): p.stat().st_size
            for p in root.rglob("*.parquet")
            if not str(p.relative_to(root)).startswith("_")
        }

    def tracked_files(self) -> set[str]:
        root = self.store.table_uri(SCORES_TABLE)
        versions = range(self.store.version(SCORES_TABLE) + 1)
        return {
            str(Path(u).relative_to(root)) for v in versions for u in self.store.snapshot(SCORES_TABLE, v).file_uris
        }

    def assert_each_chunk_scored_once(self) -> pa.Table:
        table = self.store.read(SCORES_TABLE)
        keys = table.select(list(SCORE_KEY)).group_by(list(SCORE_KEY)).aggregate([])
        assert keys.num_rows == table.num_rows, "duplicate chunk rows"
        assert set(table["chunk_id"].to_pylist()) == self.expected, "chunks lost (or foreign ones)"
        return table


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run, its JVM and its Python workers (each by PID; the workers have their own process group), and
    wait until none of them runs any more."""
    if proc.returncode is not None:
        return  # already reaped: its PID may belong to someone else by now
    pids = [proc.pid, *descendants(proc.pid)]
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group the run leads (start_new_session)
    for pid in reversed(pids):
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def checks_of(result) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def metadata_of(result) -> dict:
    event = result.asset_materializations_for_node("scores__chunk_perplexity")[0]
    return {k: v.value for k, v in event.metadata.items()}


def kill_at(home: Home, proc: subprocess.Popen, kill_point):
    """Wait for ``kill_point`` (a condition), SIGKILL the run there; always kill and reap it."""
    try:
        return home.wait_for(kill_point, proc)
    finally:
        kill_tree(proc)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_model_dir):
    """(a) a run killed while its tasks write, (b) a run killed between its commit and its materialization."""
    a = Home(tmp_path_factory.mktemp("killed-writing"), tiny_model_dir)
    b = Home(tmp_path_factory.mktemp("killed-after-commit"), tiny_model_dir)
    marker = b.tmp / "committed.json"
    # (a): one core, four tasks pausing 4 s each, so the first file lands while three tasks have yet to write
    writing = a.start_standalone_job({TEST_TASK_SLEEP_ENV: "4"}, master="local[1]")
    try:
        committing = b.start_dagster_run({TEST_AFTER_COMMIT_ENV: str(marker)}, scoring_config(num_partitions=1))
        try:
            kill_at(a, writing, a.data_files)
            kill_at(b, committing, marker.exists)
        finally:
            kill_tree(committing)
    finally:
        kill_tree(writing)
    return a, b, json.loads(marker.read_text())["scores_version"]


def test_scoring_killed_while_its_tasks_write_reruns_to_each_chunk_once_and_removes_the_orphans(spark, killed):
    home = killed[0]
    assert not home.store.exists(SCORES_TABLE), "the kill came after the commit"
    orphans = home.data_files()
    assert orphans and all(name.startswith(f"source={SOURCE}/part-") for name in orphans)

    rerun = home.score(scoring_config(orphan_min_age_seconds=0))
    checks = checks_of(rerun)
    assert rerun.success and CHECK_UNIQUE in checks and all(checks.values()), checks
    meta = metadata_of(rerun)
    assert (meta["orphan_files_removed"], meta["orphan_bytes_removed"]) == (len(orphans), sum(orphans.values()))
    assert not set(orphans) & set(home.data_files())
    assert set(home.data_files()) == home.tracked_files()  # nothing left outside the log
    home.assert_each_chunk_scored_once()
    assert meta["chunks_scored_now"] == len(home.expected)


def test_scoring_killed_between_its_commit_and_its_materialization_reruns_to_each_chunk_once(spark, killed):
    home, version = killed[1], killed[2]
    assert home.store.version(SCORES_TABLE) == version  # the commit landed ...
    assert home.instance.get_latest_materialization_event(CHUNK_PERPLEXITY) is None  # ... Dagster never heard of it
    committed = home.assert_each_chunk_scored_once()
    killed_run = set(committed["score_run_id"].to_pylist())
    assert len(killed_run) == 1
    assert set(home.data_files()) == home.tracked_files()

    stray = _write_like_a_killed_task(home, committed.slice(0, 2))  # and an orphan, to see it reported
    rerun = home.score(scoring_config(orphan_min_age_seconds=0))
    checks = checks_of(rerun)
    assert rerun.success and CHECK_UNIQUE in checks and all(checks.values()), checks
    meta = metadata_of(rerun)
    assert (meta["chunks_scored_now"], meta["orphan_files_removed"], meta["orphan_bytes_removed"]) == (0, 1, stray)
    assert home.store.version(SCORES_TABLE) == version  # no new commit
    table = home.assert_each_chunk_scored_once()
    assert set(table["score_run_id"].to_pylist()) == killed_run  # the killed run's rows, kept, not redone
    assert home.instance.get_latest_materialization_event(CHUNK_PERPLEXITY) is not None

    # and the blocking check stops a run on a table holding a duplicate chunk row
    commit = CommitInfo(run_id="intruder", asset_key=SCORES_TABLE, code_version="t", config_hash="t")
    home.store.append(SCORES_TABLE, table.slice(0, 1), commit, partition_by=["source"])
    blocked = home.score(scoring_config())
    assert not blocked.success and checks_of(blocked)[CHECK_UNIQUE] is False


def _write_like_a_killed_task(home: Home, rows: pa.Table) -> int:
    """A Parquet file as a scoring task writes it, never committed; returns its size."""
    from spark_jobs.parquet_files import ParquetFileWriter

    writer = ParquetFileWriter(
        table_uri=home.store.table_uri(SCORES_TABLE), partition_by=("source",), write_id="0badc0ffee00"
    )
    reports = [r for batch in writer(iter(rows.to_batches())) for r in batch.to_pylist()]
    assert len(reports) == 1
    return reports[0]["size"]
