"""The scorer and the trainer on a CUDA GPU: agreement with the float32 CPU reference, out-of-memory halving, and
throughput against the bf16 matmul ceiling. Needs only torch, transformers and ``cpt`` (no Spark, Delta or Dagster),
so it runs on a bare GPU machine:

    python -m benchmarks.gpu_bench                      (models under $CPTDATA_HOME/models, texts in $CPTDATA_CORPORA)

Models: the quick-start model `make demo` pretrained (real weights: the agreement and trainer checks use it), and
SmolLM2-135M; a SmolLM2 folder holding only config.json and the tokenizer is instantiated with random weights, which
cost the same FLOPs per token, so throughput is unaffected (say so when you quote it). Every section prints its own
result and a failed one does not stop the others; ``--json PATH`` also writes them all.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.flops import forward_flops_per_token
from cpt.scoring import scorer as scoring
from cpt.scoring.scorer import ChunkScorer, reference_nll
from cpt.scoring.windows import Chunk, WindowPolicy, chunk_documents
from cpt.training.trainer import TrainConfig, continue_pretraining, mean_nll

POLICY = WindowPolicy(length=256, min_tokens=32)
# ``--smoke`` runs every section on the CPU at 1/64 of the sizes: a check of this script, not a measurement.
DEVICE, SCALE = "cuda", 1


def _n(count: int) -> int:
    return max(8, count // SCALE)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


HOME = Path(os.environ.get("CPTDATA_HOME", ".cptdata")).resolve()
CORPORA = Path(os.environ.get("CPTDATA_CORPORA", "../shared/corpora")).resolve()


def _model_folder(prefix: str) -> Path:
    found = sorted((HOME / "models").glob(f"{prefix}-*/config.json"))
    if not found:
        raise FileNotFoundError(f"no {prefix}-* model folder under {HOME / 'models'}")
    return found[0].parent


def _load(folder: Path) -> tuple[torch.nn.Module, object, bool]:
    """(model in float32 on the CPU, tokenizer, whether the weights are real)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), tokenizer, True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    return model.eval(), tokenizer, False


def _texts(file: str, limit: int) -> list[str]:
    with gzip.open(CORPORA / file, "rt", encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for _, line in zip(range(limit), lines, strict=False)]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _chunks(tokenizer, texts: list[str], tag: str) -> list[Chunk]:
    return chunk_documents(tokenizer, [f"{tag}{i}" for i in range(len(texts))], texts, POLICY, tag)


def _random_chunks(vocab: int, n: int, seed: int = 0) -> list[Chunk]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, POLICY.length), generator=g).tolist()
    return [Chunk(f"r{i}", f"d{i}", 0, tuple(row)) for i, row in enumerate(ids)]


def _sync_timed(fn: Callable[[], object]) -> tuple[float, object]:
    _sync()
    start = time.perf_counter()
    value = fn()
    _sync()
    return time.perf_counter() - start, value


def matmul_tflops(dtype: torch.dtype, n: int = 8192, seconds: float = 2.0) -> float:
    n = n // SCALE if SCALE > 1 else n
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync()
    products, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        _sync()
        products += 10
    return products * 2 * n**3 / (time.perf_counter() - start) / 1e12


def environment() -> dict:
    import shutil

    import transformers

    return {
        "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "none (smoke run on the CPU)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "java_on_path": shutil.which("java") is not None,
        "bf16_matmul_tflops": round(matmul_tflops(torch.bfloat16), 1),
    }


def _max_abs_diff(a: list, b: list) -> float:
    return max(abs(x.sum_nll - y.sum_nll) for x, y in zip(a, b, strict=True))


def agreement() -> dict:
    """Quick-start model, real text: GPU float32 and bfloat16 scores against the float32 CPU scorer."""
    model, tokenizer, real = _load(_model_folder("quickstart"))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chunks = _chunks(tokenizer, _texts("med_medquad.jsonl.gz", _n(400)), "a")[: _n(1000)]
    cpu, _ = ChunkScorer(model, pad_id=pad, device=torch.device("cpu"), dtype=torch.float32).score(chunks)
    gpu32, _ = ChunkScorer(model, pad_id=pad, device=torch.device(DEVICE), dtype=torch.float32).score(chunks)
    gpu_ref = [reference_nll(model, c) for c in chunks[:50]]  # HF's own loss, one chunk per forward, float32 GPU
    low = None if DEVICE == "cuda" else torch.bfloat16  # the GPU default is bfloat16
    bf16, _ = ChunkScorer(model, pad_id=pad, device=torch.device(DEVICE), dtype=low).score(chunks)

    def per_token(a, b):
        return max(abs(x.sum_nll - y.sum_nll) / x.n_tokens for x, y in zip(a, b, strict=True))

    return {
        "real_weights": real,
        "chunks": len(chunks),
        "gpu_fp32_vs_cpu_fp32_max_abs_sum_nll": _max_abs_diff(cpu, gpu32),
        "gpu_fp32_vs_hf_loss_max_abs_sum_nll": max(abs(a.sum_nll - r) for a, r in zip(gpu32, gpu_ref, strict=False)),
        "gpu_bf16_vs_cpu_fp32_max_abs_nll_per_token": per_token(cpu, bf16),
        "gpu_bf16_vs_cpu_fp32_max_rel_ppl": max(abs(b.ppl / a.ppl - 1) for a, b in zip(cpu, bf16, strict=True)),
        "gpu_bf16_vs_cpu_fp32_mean_nll_per_token": (sum(b.sum_nll for b in bf16) - sum(a.sum_nll for a in cpu))
        / sum(a.n_tokens for a in cpu),
    }


def oom_halving() -> dict:
    """SmolLM2-shaped bf16 model with a memory cap that the first 64k-token batch exceeds: the scorer halves and
    still returns the same scores as an uncapped run."""
    model, _, real = _load(_model_folder("smollm2-135m"))
    if DEVICE != "cuda":
        return {"skipped": "needs CUDA"}
    chunks = _random_chunks(model.config.vocab_size, 512)
    uncapped, _ = ChunkScorer(model, pad_id=0, device=torch.device("cuda"), max_batch_tokens=1 << 16).score(chunks)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = 1.5 * 2**30  # bf16 weights ~0.27 GiB; a 64k-token batch's activations need several GiB
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        scorer = ChunkScorer(model, pad_id=0, device=torch.device("cuda"), max_batch_tokens=1 << 16)
        capped, stats = scorer.score(chunks)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    return {
        "real_weights": real,
        "cap_gib": cap / 2**30,
        "max_batch_tokens_after": scorer.max_batch_tokens,
        "forward_passes": stats.forward_passes,
        "max_abs_sum_nll_vs_uncapped": _max_abs_diff(uncapped, capped),
    }


def throughput() -> dict:
    """SmolLM2-shaped and quick-start models on L = 256 windows: per-sample HF loss vs the scorer, tokens/s."""
    out: dict = {}
    peak = matmul_tflops(torch.bfloat16) * 1e12
    for name in ("smollm2-135m", "quickstart"):
        model, _, real = _load(_model_folder(name))
        chunks = _random_chunks(model.config.vocab_size, _n(4096))
        tokens = sum(c.n_predicted for c in chunks)
        bf16 = model.to(DEVICE, torch.bfloat16)
        loop = chunks[: _n(512)]
        with torch.inference_mode():
            reference_nll(bf16, loop[0])
            t_a, _ = _sync_timed(lambda: [reference_nll(bf16, c) for c in loop])  # noqa: B023
        ceiling = peak / forward_flops_per_token(model, POLICY.length)
        row = {"real_weights": real, "tokens": tokens, "ceiling_tok_s": ceiling}
        row["a_per_sample_tok_s"] = sum(c.n_predicted for c in loop) / t_a
        default = ChunkScorer(bf16, pad_id=0, device=torch.device(DEVICE))  # the defaults the scoring job uses
        default.score(chunks[:8])
        row["b_default_tok_s"] = tokens / _sync_timed(lambda: default.score(chunks))[0]  # noqa: B023
        default_tile = scoring.HEAD_TILE["cuda"]
        for budget in (4096, 65536, 262144):
            for rows in (4096, 16384, 32768):
                scoring.HEAD_TILE["cuda"] = (rows, 1 << 30)
                scorer = ChunkScorer(bf16, pad_id=0, device=torch.device(DEVICE), max_batch_tokens=budget)
                scorer.score(chunks[:8])
                t_b, _ = _sync_timed(lambda: scorer.score(chunks))  # noqa: B023
                row[f"b_budget{budget}_head_rows{rows}_tok_s"] = tokens / t_b
        scoring.HEAD_TILE["cuda"] = default_tile
        best = max(v for k, v in row.items() if k.startswith("b_"))
        row["best_b_over_a"] = best / row["a_per_sample_tok_s"]
        row["best_b_of_ceiling"] = best / row["ceiling_tok_s"]
        out[name] = row
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return out


def training() -> dict:
    """Quick-start model, a 128k-token CPT run at R = 1/2 on the GPU (bf16 autocast): the loss falls, and the T = 0
    evaluation equals the scorer's mean loss on the same chunks."""
    model, tokenizer, real = _load(_model_folder("quickstart"))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    domain = _chunks(tokenizer, _texts("med_medquad.jsonl.gz", _n(3000)), "d")
    general = _chunks(tokenizer, _texts("gen_austen.jsonl.gz", _n(400)), "g")
    domain_eval, domain_train = domain[: _n(200)], domain[_n(200) :]
    general_eval, general_train = general[: _n(100)], general[_n(100) :]
    model.to(DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
        t0_domain = mean_nll(model, domain_eval, pad, 8192)
    budget = _n(131_072)
    config = TrainConfig(token_budget=budget, mix_ratio=0.5, learning_rate=3e-4, eval_every_tokens=budget // 4)
    result = continue_pretraining(
        model,
        domain_train=domain_train,
        general_train=general_train,
        domain_eval=domain_eval,
        general_eval=general_eval,
        config=config,
        pad_id=pad,
        device=torch.device(DEVICE),
    )
    first, last = result.curve[0], result.curve[-1]
    return {
        "real_weights": real,
        "steps": result.steps,
        "tokens_per_second": result.tokens_per_second,
        "t0_eval_minus_scorer": first.domain_loss - t0_domain,
        "domain_loss": [first.domain_loss, last.domain_loss],
        "general_loss": [first.general_loss, last.general_loss],
        "train_loss_first_last": [result.curve[1].train_loss, last.train_loss],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--smoke", action="store_true", help="check the script on the CPU at 1/64 of the sizes")
    args = parser.parse_args()
    global DEVICE, SCALE
    if args.smoke:
        DEVICE, SCALE = "cpu", 64
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_bench needs a CUDA GPU (or --smoke); `make bench` measures the CPU paths")
    sections = {"environment": environment, "agreement": agreement, "oom_halving": oom_halving}
    sections |= {"throughput": throughput, "training": training}
    results: dict = {}
    for name, section in sections.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            results[name] = section()
        except Exception:  # report and go on: one broken section must not hide the others' numbers
            results[name] = {"error": traceback.format_exc()}
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"== {name}\n{json.dumps(results[name], indent=2, default=str)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
