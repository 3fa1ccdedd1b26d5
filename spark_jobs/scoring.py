"""The Spark scoring job: documents at a pinned Delta version → ``scores/chunk_perplexity``, incrementally.

Only documents with no chunk scored yet under the same model revision and window policy are read into the job, so
a rerun with nothing new performs no forward pass and commits nothing. The scores land as one Delta transaction,
idempotent under retries of the same run.

Reliability:

- No duplicate chunk rows, even from concurrent runs: the commit leaves out every row whose (chunk_id,
  model_revision, policy_hash) the table already holds, re-checked against the version the commit lands on
  (:meth:`cpt.delta_store.DeltaStore.commit_unique_files`: optimistic concurrency, the loser of a race re-checks and
  retries). Two runs on the same source at once both score, one commits, the other drops what the first added.
- Orphans of killed runs: a run killed after its tasks wrote Parquet files but before the commit leaves files no Delta
  version references. Every run first removes its table's orphans older than ``orphan_min_age_s`` (default 1 hour;
  0 removes them all) whose writer holds no live lease (:meth:`cpt.delta_store.DeltaStore.remove_orphans`), so a
  concurrent run's files in flight are never touched.
- Killed after the commit: the rows are in the table; a rerun finds their documents scored and scores nothing.

Test-only hook: ``CPTDATA_TEST_SCORING_TASK_SLEEP`` (seconds) makes every scoring task sleep that long after
scoring each batch, so a test can kill a run while its tasks are writing (see
tests/reliability/test_scoring_kill_rerun.py). Unset in production.

From an asset: :func:`run_scoring_job`. Standalone: ``spark-submit spark_jobs/scoring.py job.json`` (or
``python -m spark_jobs.scoring job.json``) with a JSON :class:`ScoringJobSpec` (see :func:`main`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc

from cpt.delta_store import DEFAULT_ORPHAN_AGE_S, CommitInfo, DeltaStore, partition_predicate
from cpt.scoring.schema import SCORES_SCHEMA
from cpt.scoring.windows import WindowPolicy
from spark_jobs.delta_bridge import read_snapshot, write_unique_to_delta
from spark_jobs.scoring_worker import ScoreDocuments
from spark_jobs.session import SparkSettings, default_parallelism, is_connect, job_session

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DOCUMENTS_TABLE = "corpus/documents"
SCORES_TABLE = "scores/chunk_perplexity"
SCORE_KEY = ("chunk_id", "model_revision", "policy_hash")  # one row per key in the whole table


@dataclass(frozen=True)
class ScoringJobSpec:
    documents_version: int
    model_path: str
    model_revision: str
    run_id: str
    policy: WindowPolicy = field(default_factory=WindowPolicy)
    sources: tuple[str, ...] = ()  # empty: every source
    max_batch_tokens: int | None = None  # None: the scorer's default for the device
    precision: str = "auto"  # matrix products (cpt.scoring.scorer.PRECISIONS), resolved on each worker's hardware
    num_partitions: int | None = None  # default: 8 × the session parallelism
    torch_threads: int | None = None  # per task; default: cores / parallelism
    ship_model: bool = False  # send the model folder as an archive (addArchive) instead of assuming a shared path
    code_version: str = "scoring-v1"
    config_hash: str = ""
    model_record: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # lineage: cpt.lineage.graph
    # orphaned files (of killed runs) younger than this are kept; 0: remove every orphan whose writer is gone
    orphan_min_age_s: float = DEFAULT_ORPHAN_AGE_S


def _sources_read(sources: Sequence[str]) -> dict[str, list[str]]:
    """Only these sources' documents were read: their partitions (so the lineage holds their files, not every
    source's); every source when none is named."""
    return {DOCUMENTS_TABLE: [partition_predicate({"source": s}) for s in sources]} if sources else {}


@dataclass(frozen=True)
class ScoringJobResult:
    documents_version: int
    documents_considered: int  # documents of the selected sources at that version
    documents_to_score: int  # of those, not yet scored under this model and policy
    chunks_scored: int
    tokens_scored: int
    seconds: float
    scores_version: int | None  # the table version holding this run's scores (None: nothing written)
    duplicates_dropped: int = 0  # rows another run committed first (same key), left out of this run's commit
    orphan_files_removed: int = 0
    orphan_bytes_removed: int = 0
    orphan_files_kept: int = 0  # orphans younger than orphan_min_age_s, or of a write still in flight
    orphan_cleanup_error: str | None = None  # cleanup is housekeeping: its failure is reported, scoring goes on

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_scored / self.seconds if self.seconds > 0 else 0.0


def run_scoring_job(
    spark: SparkSession, store: DeltaStore, spec: ScoringJobSpec, on_progress: Callable[[str], None] | None = None
) -> ScoringJobResult:
    """Score what is new; ``on_progress`` receives a line about the running Spark stages every few seconds."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    start = time.perf_counter()
    cleanup = _clean_orphans(store, spec, on_progress)
    docs, _ = read_snapshot(spark, store, DOCUMENTS_TABLE, spec.documents_version)
    docs = docs.select("doc_id", "source", "role", "split", "text")
    if spec.sources:
        docs = docs.filter(F.col("source").isin(list(spec.sources)))
    considered = docs.count()
    checked_version = None  # the scores version the anti-join excluded (the commit re-checks if the table moves)
    if store.exists(SCORES_TABLE):
        scores, snap = read_snapshot(spark, store, SCORES_TABLE, None)
        checked_version = snap.version
        done = (
            scores.filter(
                (F.col("model_revision") == spec.model_revision) & (F.col("policy_hash") == spec.policy.policy_hash)
            )
            .select("doc_id")
            .distinct()
        )
        docs = docs.join(done, "doc_id", "left_anti")
    to_score = docs.count()
    if to_score == 0:
        return ScoringJobResult(
            spec.documents_version, considered, 0, 0, 0, time.perf_counter() - start, None, **cleanup
        )

    parallelism = default_parallelism(spark)
    partitions = spec.num_partitions or 8 * parallelism  # several tasks per core: a short tail, visible progress
    model_path = spec.model_path
    if spec.ship_model:
        if is_connect(spark):
            raise ValueError(
                "ship_model needs a SparkContext, which a Spark Connect session does not have: put the model folder "
                "on a path every executor reads (a shared file system) and score with ship_model off"
            )
        model_path = _ship_folder(spark, spec.model_path, spec.model_revision)
    scorer = ScoreDocuments(
        model_path=model_path,
        model_revision=spec.model_revision,
        policy=spec.policy,
        run_id=spec.run_id,
        max_batch_tokens=spec.max_batch_tokens,
        precision=spec.precision,
        shipped=spec.ship_model,
        torch_threads=spec.torch_threads or max(1, (os.cpu_count() or 1) // parallelism),
        progress=None if is_connect(spark) else spark.sparkContext.accumulator(0),
    )
    scored = docs.repartition(partitions).mapInArrow(scorer, from_arrow_schema(SCORES_SCHEMA))
    commit = CommitInfo(
        run_id=spec.run_id,
        asset_key=SCORES_TABLE,
        code_version=spec.code_version,
        config_hash=spec.config_hash,
        partition=",".join(spec.sources) or None,
        input_versions={DOCUMENTS_TABLE: spec.documents_version},
        # only these sources' documents were read (lineage: their files, not every source's)
        input_parts={DOCUMENTS_TABLE: [partition_predicate({"source": s}) for s in spec.sources]}
        if spec.sources
        else {},
        models=spec.model_record,
    )
    with _StageProgress(spark, on_progress, f"scoring {to_score} documents", tokens=scorer.progress):
        written = write_unique_to_delta(
            scored,
            store,
            SCORES_TABLE,
            commit=commit,
            unique_on=SCORE_KEY,
            partition_by=["source"],
            checked_version=checked_version,
            key_filters=[("model_revision", "=", spec.model_revision), ("policy_hash", "=", spec.policy.policy_hash)],
            app_id=f"score:{spec.run_id}",
        )
    if written.duplicates_dropped and on_progress is not None:
        on_progress(f"{written.duplicates_dropped} chunks were committed meanwhile by another run: left out")
    version = written.version
    mine = store.read(SCORES_TABLE, version, columns=["n_tokens", "score_run_id"])
    mine = mine.filter(pc.equal(mine["score_run_id"], spec.run_id))
    tokens = int(pc.sum(mine["n_tokens"]).as_py() or 0)
    return ScoringJobResult(
        spec.documents_version,
        considered,
        to_score,
        mine.num_rows,
        tokens,
        time.perf_counter() - start,
        version if mine.num_rows else None,
        duplicates_dropped=written.duplicates_dropped,
        **cleanup,
    )


def _ship_folder(spark: SparkSession, folder: str, revision: str) -> str:
    """Send a model folder to every executor as a zip archive (Spark unpacks it beside each executor; a cluster
    cannot take a local folder with ``addFile``); returns the name ``SparkFiles.get`` resolves to the unpacked
    folder."""
    import shutil
    import tempfile

    name = f"cptdata-model-{revision}"
    staging = Path(tempfile.mkdtemp(prefix="cptdata-ship-"))
    archive = shutil.make_archive(str(staging / name), "zip", root_dir=folder)
    spark.sparkContext.addArchive(archive)
    return os.path.basename(archive)


def _clean_orphans(store: DeltaStore, spec: ScoringJobSpec, report: Callable[[str], None] | None) -> dict:
    """Remove the scores table's orphaned files (see the module docstring); the counts for the result."""
    try:
        done = store.remove_orphans(SCORES_TABLE, spec.orphan_min_age_s)
    except Exception as exc:  # housekeeping must not fail a scoring run; the error is reported with the result
        if report is not None:
            report(f"orphan cleanup of {SCORES_TABLE} failed: {exc!r}")
        return {"orphan_cleanup_error": repr(exc)}
    if done.removed and report is not None:
        report(f"removed {len(done.removed)} orphaned files ({done.bytes_removed} bytes) of killed scoring runs")
    return {
        "orphan_files_removed": len(done.removed),
        "orphan_bytes_removed": done.bytes_removed,
        "orphan_files_kept": done.kept_young + done.kept_in_flight,
    }


class _StageProgress:
    """Reports the running Spark stages' task counts from a background thread while a job runs."""

    def __init__(
        self,
        spark: SparkSession,
        report: Callable[[str], None] | None,
        label: str,
        every: float = 15.0,
        tokens: Any = None,
    ):
        self.spark, self.report, self.label, self.every = spark, report, label, every
        self.tokens = tokens  # an accumulator of tokens done (tasks add theirs when they finish), or None
        self.done = threading.Event()

    def __enter__(self) -> _StageProgress:
        if self.report is not None:
            threading.Thread(target=self._poll, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()

    def _poll(self) -> None:
        if is_connect(self.spark):  # no status tracker on this side: say that the job runs, and how long
            start = time.perf_counter()
            while not self.done.wait(self.every):
                self.report(f"{self.label}: {time.perf_counter() - start:.0f} s (through Spark Connect)")
            return
        tracker = self.spark.sparkContext.statusTracker()
        start = time.perf_counter()
        while not self.done.wait(self.every):
            stages = [s for s in map(tracker.getStageInfo, tracker.getActiveStageIds()) if s]
            tasks = ", ".join(f"stage {s.stageId}: {s.numCompletedTasks}/{s.numTasks} tasks" for s in stages)
            elapsed = time.perf_counter() - start
            self.report(f"{self.label}: {elapsed:.0f} s, {tasks or 'between stages'}{self._rate(stages, elapsed)}")

    def _rate(self, stages, elapsed: float) -> str:
        """Tokens done, tokens/s and an ETA from the share of the largest stage's tasks done (tasks are of a size)."""
        if self.tokens is None or not stages:
            return ""
        stage = max(stages, key=lambda s: s.numTasks)
        done, tokens = stage.numCompletedTasks, int(self.tokens.value)
        if not done or not tokens:
            return ""
        eta = elapsed * (stage.numTasks - done) / done
        return f"; {tokens:,} tokens, {tokens / elapsed:,.0f} tok/s, ETA {eta:.0f} s"


def spec_from_json(data: dict) -> ScoringJobSpec:
    data = dict(data)
    data["policy"] = WindowPolicy(**data.get("policy", {}))
    data["sources"] = tuple(data.get("sources", ()))
    return ScoringJobSpec(**data)


def main(argv: Sequence[str] | None = None) -> int:
    """``scoring.py job.json``: {"delta_root": ..., "storage_options": {...}, "spark": {SparkSettings fields},
    "job": {ScoringJobSpec fields, "policy": {WindowPolicy fields}}}. Prints the result as JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    with open(args[0]) as fh:
        config = json.load(fh)
    store = DeltaStore(config["delta_root"], config.get("storage_options"))
    with job_session(SparkSettings(**config.get("spark", {}))) as spark:
        result = run_scoring_job(spark, store, spec_from_json(config["job"]))
    print(json.dumps(asdict(result) | {"tokens_per_second": result.tokens_per_second}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
