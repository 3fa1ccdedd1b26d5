"""Stage ``scores``: every chunk's perplexity under the base model, computed by the Spark scoring job.

Each run first removes the orphaned Parquet files killed runs left in the scores table (older than
``orphan_min_age_seconds`` and of no live writer; see :mod:`spark_jobs.scoring`), and commits only chunks the table
does not hold yet, so concurrent runs add no duplicates; the blocking check ``unique_chunk_scores`` proves it on the
whole table. A run killed after its Delta commit but before Dagster records the materialization leaves its rows in
the table; the rerun scores nothing and records the materialization.

Test-only hook: ``CPTDATA_TEST_AFTER_SCORES_COMMIT=<file>`` makes the asset write the committed scores version to
``<file>`` right after the Delta commit and then wait up to 10 minutes before recording anything, so a test can kill
the run in that window (tests/reliability/test_scoring_kill_rerun.py). Unset in production.
"""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.corpus import DOCUMENTS, DOCUMENTS_TABLE
from assets.lineage import delta_metadata, governance, package_version
from assets.models import BASE_MODEL
from assets.partitions import corpus_sources
from assets.resources import DeltaStoreResource, SparkResource
from cpt.hashing import config_hash
from cpt.lineage.graph import model_record
from cpt.models.base_model import ModelManifest, load_tokenizer
from cpt.scoring.coverage import unscored_documents_with_chunks, value_problems
from cpt.scoring.schema import SCORES_SCHEMA
from cpt.scoring.scorer import default_device, resolved_precision
from cpt.scoring.windows import WindowPolicy
from spark_jobs.scoring import SCORE_KEY, SCORES_TABLE, ScoringJobResult, ScoringJobSpec, run_scoring_job

CHUNK_PERPLEXITY = dg.AssetKey(["scores", "chunk_perplexity"])
CHECK_COVERAGE = "every_train_chunk_scored"
CHECK_VALUES = "finite_and_ppl_at_least_1"
CHECK_UNIQUE = "unique_chunk_scores"
SCORING_POOL = "cpt_scoring"  # scoring runs hold the GPUs: a pool keeps a backfill from queuing two on one node
TEST_AFTER_COMMIT_ENV = "CPTDATA_TEST_AFTER_SCORES_COMMIT"


class ScoringConfig(dg.Config):
    """The window policy and batching of chunk scoring (recorded with every score)."""

    window_length: int = Field(256, description="tokens per chunk, BOS included")
    min_tokens: int = Field(32, description="a trailing chunk with fewer predicted tokens is dropped")
    add_bos: bool = Field(True, description="prepend BOS so every content token is predicted")
    max_batch_tokens: int | None = Field(
        None, description="padded tokens per forward pass (default 4096 on CPU, 65536 on GPU; halved on GPU OOM)"
    )
    num_partitions: int | None = Field(None, description="Spark partitions; default: 8 × the session's parallelism")
    precision: str = Field(
        "auto",
        description="matrix products: auto (bfloat16 where the hardware runs it natively: a GPU, a CPU with AMX or "
        "AVX512-BF16, where chunk PPL stays within 0.2 % of float32's; else float32), float32 or bfloat16",
    )
    ship_model: bool = Field(False, description="send the model folder to executors as a zip (SparkContext.addArchive)")
    orphan_min_age_seconds: float = Field(
        3600.0,
        ge=0,
        description="orphaned Parquet files of killed runs are removed once older than this (and of no live "
        "writer); 0 removes them all",
    )

    def policy(self) -> WindowPolicy:
        return WindowPolicy(length=self.window_length, min_tokens=self.min_tokens, add_bos=self.add_bos)


@dg.asset(
    key=CHUNK_PERPLEXITY,
    ins={"base_model": dg.AssetIn(BASE_MODEL)},
    deps=[DOCUMENTS],
    partitions_def=corpus_sources,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=SCORING_POOL,
    group_name="scores",
    kinds={"spark", "delta", "pytorch"},
    code_version="chunk-perplexity-v1",
    **governance("scores", SCORES_SCHEMA),
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_COVERAGE,
            asset=CHUNK_PERPLEXITY,
            blocking=True,
            description="Every train document of the pinned documents version that makes a chunk has "
            "its chunks scored under this model revision and window policy.",
        ),
        dg.AssetCheckSpec(
            CHECK_VALUES, asset=CHUNK_PERPLEXITY, blocking=True, description="sum_nll and PPL are finite and PPL ≥ 1."
        ),
        dg.AssetCheckSpec(
            CHECK_UNIQUE,
            asset=CHUNK_PERPLEXITY,
            blocking=True,
            description="No (chunk_id, model_revision, policy_hash) appears twice in the whole table.",
        ),
    ],
    description="One row per chunk (a window of at most L tokens of one document): summed NLL and perplexity under "
    "the frozen base model, with the model revision and window policy. Scored incrementally by a Spark job; a "
    "backfill of many sources is one run.",
)
def chunk_perplexity(
    context: dg.AssetExecutionContext,
    config: ScoringConfig,
    base_model: dict,
    delta: DeltaStoreResource,
    spark: SparkResource,
):
    manifest = ModelManifest.from_json(base_model)
    sources = tuple(context.partition_keys)
    store = delta.store()
    documents_version = store.version(DOCUMENTS_TABLE)
    if documents_version is None:
        raise dg.Failure("corpus/documents does not exist yet: ingest the sources first")
    policy = config.policy()
    spec = ScoringJobSpec(
        documents_version=documents_version,
        model_path=manifest.path,
        model_revision=manifest.revision,
        run_id=context.run.run_id,
        policy=policy,
        sources=sources,
        max_batch_tokens=config.max_batch_tokens,
        precision=config.precision,
        num_partitions=config.num_partitions,
        ship_model=config.ship_model,
        code_version=f"cptdata {package_version()} / chunk-perplexity-v1",
        config_hash=config_hash(
            {"scoring": config.model_dump(exclude={"orphan_min_age_seconds"}), "model": manifest.revision}
        ),
        orphan_min_age_s=config.orphan_min_age_seconds,
        model_record=model_record(base_model),
    )
    context.log.info(
        f"scoring sources {list(sources)} at corpus/documents v{documents_version} with "
        f"{manifest.source} model {manifest.revision}, policy {policy}, products {_precision(config.precision)}"
    )
    result = run_scoring_job(spark.session(), store, spec, on_progress=context.log.info)
    context.log.info(
        f"scored {result.chunks_scored} chunks, {result.tokens_scored} tokens in {result.seconds:.1f} s "
        f"({result.tokens_per_second:.0f} tokens/s); {result.documents_to_score} documents needed it"
    )
    _test_hook_after_commit(result)

    version = store.version(SCORES_TABLE)
    scores = _scores_of(store, version, sources, manifest.revision, policy)
    checks = [*_checks(store, documents_version, sources, scores, manifest, policy), _unique_check(store, version)]
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(SCORES_TABLE), version, SCORES_SCHEMA, scores.num_rows)
        | {
            "documents_version": documents_version,
            "documents_considered": result.documents_considered,
            "documents_scored_now": result.documents_to_score,
            "chunks_scored_now": result.chunks_scored,
            "tokens_scored_now": result.tokens_scored,
            "seconds": round(result.seconds, 2),
            "tokens_per_second": round(result.tokens_per_second, 1),
            "duplicate_chunks_dropped": result.duplicates_dropped,
            "orphan_files_removed": result.orphan_files_removed,
            "orphan_bytes_removed": result.orphan_bytes_removed,
            "orphan_files_kept": result.orphan_files_kept,
            "orphan_min_age_seconds": config.orphan_min_age_seconds,
            "model_source": manifest.source,
            "model_revision": manifest.revision,
            "precision": _precision(config.precision),
            "window_policy": dg.MetadataValue.json({**vars(policy), "policy_hash": policy.policy_hash}),
            "chunks_by_split": dg.MetadataValue.json(_count_by(scores, "split")),
            "median_ppl": float(pc.approximate_median(scores["ppl"]).as_py() or 0.0) if scores.num_rows else None,
        }
        | ({"orphan_cleanup_error": result.orphan_cleanup_error} if result.orphan_cleanup_error else {}),
        check_results=checks,
    )


def _test_hook_after_commit(result: ScoringJobResult) -> None:
    """Test-only (see the module docstring): mark the committed version, then wait to be killed."""
    marker = os.environ.get(TEST_AFTER_COMMIT_ENV)
    if not marker:
        return
    tmp = Path(f"{marker}.tmp")
    tmp.write_text(json.dumps({"scores_version": result.scores_version, "pid": os.getpid()}))
    tmp.replace(marker)  # whole or absent, for the test that waits for it
    time.sleep(600)


def _unique_check(store, version) -> dg.AssetCheckResult:
    """Every (chunk_id, model_revision, policy_hash) at most once in the whole table at ``version``."""
    if version is None:
        return dg.AssetCheckResult(check_name=CHECK_UNIQUE, passed=True, metadata={"rows": 0})
    keys = store.read(SCORES_TABLE, version, columns=list(SCORE_KEY))
    keys = keys.cast(pa.schema([pa.field(c, pa.large_string()) for c in SCORE_KEY]))
    counts = keys.group_by(list(SCORE_KEY)).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts["count_all"], 1))
    return dg.AssetCheckResult(
        check_name=CHECK_UNIQUE,
        passed=repeated.num_rows == 0,
        metadata={
            "rows": keys.num_rows,
            "duplicated_keys": repeated.num_rows,
            "extra_rows": keys.num_rows - counts.num_rows,
            "examples": dg.MetadataValue.json(repeated.slice(0, 10).to_pylist()),
            "scores_version": version,
        },
    )


def _scores_of(store, version, sources, revision, policy):
    if version is None:
        return SCORES_SCHEMA.empty_table()
    filters = [("model_revision", "=", revision), ("policy_hash", "=", policy.policy_hash)]
    table = store.read(SCORES_TABLE, version, filters=filters)
    return table.filter(pc.is_in(table["source"], value_set=pa.array(list(sources))))


def _count_by(table, column: str) -> dict:
    return {r[column]: r["count_all"] for r in table.group_by(column).aggregate([([], "count_all")]).to_pylist()}


def _checks(store, documents_version, sources, scores, manifest: ModelManifest, policy) -> list[dg.AssetCheckResult]:
    docs = store.read(DOCUMENTS_TABLE, documents_version, columns=["doc_id", "source", "split", "text"])
    docs = docs.filter(
        pc.and_(pc.equal(docs["split"], "train"), pc.is_in(docs["source"], value_set=pa.array(list(sources))))
    )
    tokenizer = load_tokenizer(manifest.path)
    missing = unscored_documents_with_chunks(
        tokenizer, docs, set(scores["doc_id"].to_pylist()), policy, manifest.revision
    )
    problems = value_problems(scores)
    return [
        dg.AssetCheckResult(
            check_name=CHECK_COVERAGE,
            passed=not missing,
            metadata={
                "train_documents": docs.num_rows,
                "unscored_with_chunks": len(missing),
                "examples": dg.MetadataValue.json(missing[:10]),
            },
        ),
        dg.AssetCheckResult(
            check_name=CHECK_VALUES, passed=not any(problems.values()), metadata={**problems, "chunks": scores.num_rows}
        ),
    ]


def _precision(precision: str) -> str:
    """The precision setting and what it resolves to on this host (a local Spark session's workers run here)."""
    resolved = resolved_precision(default_device(), precision)
    return precision if precision == resolved else f"{precision}: {resolved} on this host"
