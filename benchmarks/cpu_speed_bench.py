"""What the demo's CPU time rests on, each against its baseline measured in the same run, on the quick-start shape
(1.2 M parameters, vocabulary 4,096) and MedQuAD chunks (L = 256):

1. scoring: float32 products (the baseline) vs bfloat16 autocast (the default where the CPU has AMX or AVX512-BF16),
   tokens/s and how far each chunk's PPL moves (relative error, Spearman over chunks);
2. training a pilot-sized run (32k tokens, 5 evaluations): float32 (the baseline) vs bfloat16 autocast.

The model is the quick-start architecture with a BPE tokenizer trained on the first 2 M characters of the general
corpus, pretrained for 200k tokens (enough for a PPL landscape that is not flat; throughput does not depend on it).

    make bench
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from cpt.models.base_model import load_model
from cpt.models.pretrain import PretrainConfig, pretrain_base_model
from cpt.scoring.scorer import ChunkScorer, native_bf16
from cpt.scoring.windows import WindowPolicy, chunk_documents
from cpt.training.trainer import TrainConfig, continue_pretraining

CORPORA = Path(os.environ.get("CPTDATA_CORPORA", "../shared/corpora")).resolve()
RUN_TOKENS = 32_000


def _texts(name: str, docs: int) -> list[str]:
    with gzip.open(CORPORA / name, "rt") as fh:
        return [json.loads(line)["text"] for line, _ in zip(fh, range(docs), strict=False)]


def _scoring(path: Path, chunks) -> None:
    """Both precisions alternated three times (this machine's speed drifts), medians compared."""
    model, tokenizer = load_model(path)
    cpu = torch.device("cpu")
    scorers = {
        p: ChunkScorer(model, pad_id=tokenizer.pad_token_id, device=cpu, precision=p) for p in ("float32", "bfloat16")
    }
    rates: dict[str, list[float]] = {p: [] for p in scorers}
    ppl: dict[str, np.ndarray] = {}
    for scorer in scorers.values():
        scorer.score(chunks[:64])  # warm-up
    for _ in range(3):
        for precision, scorer in scorers.items():
            scores, stats = scorer.score(chunks)
            rates[precision].append(stats.tokens_per_second)
            ppl[precision] = np.array([s.ppl for s in scores])
    base, rate = float(np.median(rates["float32"])), float(np.median(rates["bfloat16"]))
    exact, fast = ppl["float32"], ppl["bfloat16"]
    rel = np.abs(fast - exact) / exact
    print(f"\nscoring {len(chunks):,} chunks in process, torch threads {torch.get_num_threads()}, medians of 3:")
    print(f"  float32 products (baseline)   {base:>9,.0f} tok/s")
    print(f"  bfloat16 autocast             {rate:>9,.0f} tok/s  ({rate / base:.2f}x)")
    print(
        f"  chunk PPL, bf16 vs f32: mean relative change {np.mean((fast - exact) / exact):+.5f}, "
        f"|max| {rel.max():.5f}, p99 {np.quantile(rel, 0.99):.5f}; Spearman {spearmanr(exact, fast).statistic:.6f}"
    )


def _training(path: Path, chunks, pad_id: int) -> None:
    """Pilot-sized runs in float32 and in bfloat16, alternated (this machine's speed drifts), medians compared."""
    train, held_out = chunks[:-40], chunks[-40:]
    results: dict[str, list] = {"float32": [], "bfloat16": []}
    for _ in range(3):
        for precision in results:
            model, _ = load_model(path)
            config = TrainConfig(
                token_budget=RUN_TOKENS, learning_rate=3e-4, eval_every_tokens=RUN_TOKENS // 4, precision=precision
            )
            results[precision].append(
                continue_pretraining(
                    model,
                    domain_train=train,
                    general_train=[],
                    domain_eval=held_out[:20],
                    general_eval=held_out[20:],
                    config=config,
                    pad_id=pad_id,
                )
            )
    print(f"\ntraining {RUN_TOKENS:,} tokens (micro-batch 8 × 256, 5 evaluations of 40 chunks), 3 runs each:")
    base = float(np.median([r.tokens_per_second for r in results["float32"]]))
    for precision, runs in results.items():
        rate = float(np.median([r.tokens_per_second for r in runs]))
        print(
            f"  {precision + (' (baseline)' if precision == 'float32' else ' autocast'):<22} {rate:>7,.0f} tok/s "
            f"({rate / base:.2f}x)  final domain loss {runs[0].final.domain_loss:.4f}"
        )


def main() -> None:
    print(f"CPU with native bfloat16 products (AMX or AVX512-BF16): {native_bf16(torch.device('cpu'))}")
    with tempfile.TemporaryDirectory() as tmp:
        general = _texts("gen_austen.jsonl.gz", 60)
        config = PretrainConfig(token_budget=200_000, tokenizer_train_chars=2_000_000)
        path = pretrain_base_model(general, config, Path(tmp) / "model").path
        _, tokenizer = load_model(path)
        docs = _texts("med_medquad.jsonl.gz", 600)
        chunks = chunk_documents(tokenizer, [str(i) for i in range(len(docs))], docs, WindowPolicy(), "bench")
        _scoring(path, chunks)
        _training(path, chunks[:400], tokenizer.pad_token_id)


if __name__ == "__main__":
    main()
