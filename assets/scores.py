"""Stage ``scores``: every chunk's perplexity under the base model, computed by the Spark scoring job."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.corpus import DOCUMENTS, DOCUMENTS_TABLE
from assets.lineage import delta_metadata, package_version
from assets.models import BASE_MODEL
from assets.partitions import corpus_sources
from assets.resources import DeltaStoreResource, SparkResource
from cpt.hashing import config_hash
from cpt.models.base_model import ModelManifest, load_tokenizer
from cpt.scoring.coverage import unscored_documents_with_chunks, value_problems
from cpt.scoring.schema import SCORES_SCHEMA
from cpt.scoring.windows import WindowPolicy
from spark_jobs.scoring import SCORES_TABLE, ScoringJobSpec, run_scoring_job

CHUNK_PERPLEXITY = dg.AssetKey(["scores", "chunk_perplexity"])
CHECK_COVERAGE = "every_train_chunk_scored"
CHECK_VALUES = "finite_and_ppl_at_least_1"


class ScoringConfig(dg.Config):
    """The window policy and batching of chunk scoring (recorded with every score)."""

    window_length: int = Field(256, description="tokens per chunk, BOS included")
    min_tokens: int = Field(32, description="a trailing chunk with fewer predicted tokens is dropped")
    add_bos: bool = Field(True, description="prepend BOS so every content token is predicted")
    max_batch_tokens: int | None = Field(
        None, description="padded tokens per forward pass (default 4096 on CPU, 65536 on GPU; halved on GPU OOM)"
    )
    num_partitions: int | None = Field(None, description="Spark partitions; default: 8 × the session's parallelism")
    ship_model: bool = Field(False, description="send the model folder to executors with SparkContext.addFile")

    def policy(self) -> WindowPolicy:
        return WindowPolicy(length=self.window_length, min_tokens=self.min_tokens, add_bos=self.add_bos)


@dg.asset(
    key=CHUNK_PERPLEXITY,
    ins={"base_model": dg.AssetIn(BASE_MODEL)},
    deps=[DOCUMENTS],
    partitions_def=corpus_sources,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="scores",
    kinds={"spark", "delta", "pytorch"},
    code_version="chunk-perplexity-v1",
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
        num_partitions=config.num_partitions,
        ship_model=config.ship_model,
        code_version=f"cptdata {package_version()} / chunk-perplexity-v1",
        config_hash=config_hash({"scoring": config.model_dump(), "model": manifest.revision}),
    )
    context.log.info(
        f"scoring sources {list(sources)} at corpus/documents v{documents_version} with "
        f"{manifest.source} model {manifest.revision}, policy {policy}"
    )
    result = run_scoring_job(spark.session(), store, spec, on_progress=context.log.info)
    context.log.info(
        f"scored {result.chunks_scored} chunks, {result.tokens_scored} tokens in {result.seconds:.1f} s "
        f"({result.tokens_per_second:.0f} tokens/s); {result.documents_to_score} documents needed it"
    )

    version = store.version(SCORES_TABLE)
    scores = _scores_of(store, version, sources, manifest.revision, policy)
    checks = _checks(store, documents_version, sources, scores, manifest, policy)
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
            "model_source": manifest.source,
            "model_revision": manifest.revision,
            "window_policy": dg.MetadataValue.json({**vars(policy), "policy_hash": policy.policy_hash}),
            "chunks_by_split": dg.MetadataValue.json(_count_by(scores, "split")),
            "median_ppl": float(pc.approximate_median(scores["ppl"]).as_py() or 0.0) if scores.num_rows else None,
        },
        check_results=checks,
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
