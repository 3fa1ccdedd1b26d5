"""Task side of the scoring job: documents → chunk scores inside ``mapInArrow``, one model per Python worker.

Free of ``deltalake`` (unpickled in every worker). The model is loaded once per worker process and cached across
tasks (Spark reuses Python workers); a task that owns a GPU scores on it.

Test-only: ``CPTDATA_TEST_SCORING_TASK_SLEEP`` (seconds, read in the worker) pauses a task after each scored batch,
so that a test can kill a run while its tasks are writing files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from cpt.scoring.schema import SCORES_SCHEMA
from cpt.scoring.windows import WindowPolicy, chunk_documents

# (path, revision, device, precision) → (scorer, tokenizer)
_SCORERS: dict[tuple[str, str, str, str], tuple[object, object]] = {}
TEST_TASK_SLEEP_ENV = "CPTDATA_TEST_SCORING_TASK_SLEEP"


def _test_pause() -> float:
    """The test hook's pause in seconds; unset or not a number is no pause (a stray value never fails a task)."""
    try:
        return max(float(os.environ.get(TEST_TASK_SLEEP_ENV) or 0), 0.0)
    except ValueError:
        return 0.0


def _task_device() -> str:
    import torch
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ScoreDocuments:
    """A ``mapInArrow`` function: rows (doc_id, source, role, split, text) → rows of ``SCORES_SCHEMA``."""

    model_path: str  # a folder on every worker, or (shipped=True) the name of a zip added with SparkContext.addArchive
    model_revision: str
    policy: WindowPolicy
    run_id: str
    max_batch_tokens: int | None = None  # None: the scorer's default for the device
    precision: str = "auto"
    shipped: bool = False
    torch_threads: int | None = None
    progress: Any = None  # a Spark accumulator of tokens scored (the driver's progress line), or None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        scorer, tokenizer = self._scorer()
        for batch in batches:
            docs = batch.to_pydict()
            meta = {
                d: (s, r, sp)
                for d, s, r, sp in zip(docs["doc_id"], docs["source"], docs["role"], docs["split"], strict=True)
            }
            chunks = chunk_documents(tokenizer, docs["doc_id"], docs["text"], self.policy, self.model_revision)
            if not chunks:
                continue  # nothing long enough to score: no forward pass
            scores, _ = scorer.score(chunks)
            now = datetime.now(UTC)
            rows = {
                "chunk_id": [s.chunk_id for s in scores],
                "doc_id": [s.doc_id for s in scores],
                "source": [meta[s.doc_id][0] for s in scores],
                "role": [meta[s.doc_id][1] for s in scores],
                "split": [meta[s.doc_id][2] for s in scores],
                "chunk_index": [s.chunk_index for s in scores],
                "n_tokens": [s.n_tokens for s in scores],
                "sum_nll": [s.sum_nll for s in scores],
                "ppl": [s.ppl for s in scores],
                "model_revision": [self.model_revision] * len(scores),
                "policy_hash": [self.policy.policy_hash] * len(scores),
                "window_length": [self.policy.length] * len(scores),
                "score_run_id": [self.run_id] * len(scores),
                "scored_at": [now] * len(scores),
            }
            if self.progress is not None:
                self.progress.add(sum(s.n_tokens for s in scores))
            if pause := _test_pause():
                time.sleep(pause)
            yield pa.RecordBatch.from_pydict(rows, schema=SCORES_SCHEMA)

    def _scorer(self):
        import torch

        from cpt.models.base_model import load_model
        from cpt.scoring.scorer import ChunkScorer

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        path = self.model_path
        if self.shipped:
            from pyspark import SparkFiles

            path = SparkFiles.get(self.model_path)
        device = _task_device()
        key = (path, self.model_revision, device, self.precision)
        if key not in _SCORERS:
            model, tokenizer = load_model(path)
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            scorer = ChunkScorer(
                model,
                pad_id=pad_id,
                max_batch_tokens=self.max_batch_tokens,
                device=torch.device(device),
                precision=self.precision,
            )
            _SCORERS[key] = (scorer, tokenizer)
        return _SCORERS[key]
