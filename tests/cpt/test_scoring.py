"""The scorer against a hand-computed NLL and against one-chunk-per-forward Hugging Face losses, on a tiny model."""

import math

import pytest
import torch

from cpt.scoring import scorer as scorer_module
from cpt.scoring.scorer import ChunkScorer, batch_nll, head_nll, logsumexp_f32, plan_batches, reference_nll
from cpt.scoring.windows import WindowPolicy, split_windows


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


SMALL_WINDOWS = WindowPolicy(length=16, min_tokens=4)


def chunks_of(lengths, policy=SMALL_WINDOWS):
    gen = torch.Generator().manual_seed(1)
    out = []
    for d, n in enumerate(lengths):
        ids = torch.randint(3, 97, (n,), generator=gen).tolist()
        out += split_windows(f"doc{d}", ids, policy, bos_id=1, tokenizer_hash="t")
    return out


def test_windows_cut_documents_into_non_overlapping_chunks():
    policy = WindowPolicy(length=5, min_tokens=2, add_bos=True)
    chunks = split_windows("d", list(range(10, 21)), policy, bos_id=1, tokenizer_hash="t")  # 11 tokens
    assert [c.input_ids for c in chunks] == [(1, 10, 11, 12, 13), (1, 14, 15, 16, 17), (1, 18, 19, 20)]
    assert [c.n_predicted for c in chunks] == [4, 4, 3]
    short = split_windows("d", list(range(10, 19)), policy, bos_id=1, tokenizer_hash="t")  # trailing 1 < min 2
    assert [c.n_predicted for c in short] == [4, 4]
    no_bos = split_windows("d", list(range(10, 20)), WindowPolicy(5, 2, add_bos=False), bos_id=None, tokenizer_hash="t")
    assert [c.input_ids for c in no_bos] == [tuple(range(10, 15)), tuple(range(15, 20))]
    assert len({c.chunk_id for c in chunks}) == 3
    other_policy = split_windows("d", list(range(10, 21)), WindowPolicy(5, 1), bos_id=1, tokenizer_hash="t")
    assert chunks[0].chunk_id != other_policy[0].chunk_id  # the id depends on the policy


def test_batches_respect_the_token_budget_longest_first():
    lengths = [5, 17, 3, 17, 9, 1]
    batches = plan_batches(lengths, max_batch_tokens=34)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 34 for b in batches)
    assert batches[0] == [1, 3]  # the two longest share a batch


def test_scorer_equals_a_hand_computed_nll(tiny_model):
    chunk = chunks_of([12])[0]
    ids = torch.tensor([chunk.input_ids])
    with torch.no_grad():
        logits = tiny_model(ids).logits[0].double()
    by_hand = 0.0
    for t in range(1, len(chunk.input_ids)):
        row = logits[t - 1]
        by_hand += math.log(sum(math.exp(v) for v in row.tolist())) - row[chunk.input_ids[t]].item()
    [score], stats = ChunkScorer(tiny_model, pad_id=0, device=torch.device("cpu"), precision="float32").score([chunk])
    assert score.n_tokens == 12 == stats.tokens  # BOS + 12 tokens: every token predicted
    assert score.sum_nll == pytest.approx(by_hand, abs=1e-4)
    assert score.ppl == pytest.approx(math.exp(by_hand / 12), rel=1e-4)


def test_bfloat16_scores_agree_with_float32_to_bfloat16_rounding(tiny_model):
    chunks = chunks_of([40, 7, 33, 16, 5, 60, 15])
    exact, _ = ChunkScorer(tiny_model, pad_id=0, device=torch.device("cpu"), precision="float32").score(chunks)
    scorer = ChunkScorer(tiny_model, pad_id=0, device=torch.device("cpu"), precision="bfloat16")
    fast, _ = scorer.score(chunks)
    assert scorer.precision == "bfloat16" and scorer.autocast
    assert next(tiny_model.parameters()).dtype == torch.float32  # autocast: the weights stay float32
    rel = [abs(f.sum_nll - e.sum_nll) / e.sum_nll for f, e in zip(fast, exact, strict=True)]
    assert max(rel) < 1e-2  # bfloat16 keeps 8 bits of mantissa: per-chunk NLL within 1 %
    assert any(f.sum_nll != e.sum_nll for f, e in zip(fast, exact, strict=True))  # the products did run in bf16
    with pytest.raises(ValueError, match="precision"):
        ChunkScorer(tiny_model, pad_id=0, device=torch.device("cpu"), precision="fp8")


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "native"), [(True, False, True), (False, True, True), (False, False, False)]
)
def test_auto_precision_is_bfloat16_only_where_a_cpu_computes_it_natively(monkeypatch, amx, avx512_bf16, native):
    """AMX (Intel) and AVX512-BF16 (Zen 4) CPUs run bfloat16 products natively; elsewhere they are emulated, slower
    than float32, so ``auto`` stays float32 there; float32 and bfloat16 are what they say on any CPU."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    cpu = torch.device("cpu")
    assert scorer_module.native_bf16(cpu) is native
    assert scorer_module.uses_bf16(cpu, "auto") is native
    assert scorer_module.uses_bf16(cpu, "bfloat16") and not scorer_module.uses_bf16(cpu, "float32")
    assert scorer_module.native_bf16(torch.device("cuda"))


def test_batched_scores_equal_one_chunk_per_forward(tiny_model):
    chunks = chunks_of([40, 7, 33, 16, 5, 60, 15])
    scorer = ChunkScorer(tiny_model, pad_id=0, max_batch_tokens=64, device=torch.device("cpu"), precision="float32")
    scores, stats = scorer.score(chunks)
    assert [s.chunk_id for s in scores] == [c.chunk_id for c in chunks]
    assert len({len(c.input_ids) for c in chunks}) > 1  # padding is exercised
    assert stats.forward_passes < len(chunks)
    deltas = [abs(s.sum_nll - reference_nll(tiny_model, c)) for s, c in zip(scores, chunks, strict=True)]
    assert max(deltas) <= 1e-4
    assert all(s.ppl >= 1 for s in scores)


def test_blockwise_logsumexp_equals_the_plain_one_in_float32_and_from_bfloat16():
    logits = torch.randn(3, 50, 97, generator=torch.Generator().manual_seed(2)) * 4
    assert torch.allclose(logsumexp_f32(logits, rows_per_block=7), torch.logsumexp(logits, -1), atol=1e-6)
    low = logits.to(torch.bfloat16)
    result = logsumexp_f32(low, rows_per_block=16)
    assert result.dtype == torch.float32
    assert torch.allclose(result, torch.logsumexp(low.float(), -1), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_tiled_head_nll_equals_logsumexp_minus_target_logit(monkeypatch, dtype, bias):
    """Tiles of 5 positions × 7 vocabulary entries over a 50-entry vocabulary: uneven last tiles, targets in each."""
    monkeypatch.setitem(scorer_module.HEAD_TILE, "cpu", (5, 7))
    g = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(16, 50, bias=bias).to(dtype)
    hidden = (torch.randn(23, 16, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 50, (23,), generator=g)
    targets[:2] = torch.tensor([0, 49])
    with torch.inference_mode():
        logits = head(hidden).float()
        expected = torch.logsumexp(logits, -1) - logits.gather(-1, targets[:, None]).squeeze(-1)
        result = head_nll(hidden, targets, head)
    assert result.dtype == torch.float32
    assert torch.allclose(result, expected, atol=1e-5)


def test_out_of_memory_halves_the_batch_once_per_level_and_replans_the_rest(tiny_model, monkeypatch):
    """A simulated device that fits at most 40 padded tokens per forward: the scorer splits the failing batch, settles
    on the largest budget below the failure, plans the remaining batches to it, and its scores equal a plain run's."""
    chunks = chunks_of([9] * 24)  # 10 ids each, with BOS
    plain, _ = ChunkScorer(tiny_model, pad_id=0, device=torch.device("cpu")).score(chunks)
    real_batch_nll = scorer_module.batch_nll
    attempts: list[int] = []

    def capped(model, ids, mask, **kwargs):
        attempts.append(ids.numel())
        if ids.numel() > 40:
            raise torch.OutOfMemoryError("simulated")
        return real_batch_nll(model, ids, mask, **kwargs)

    monkeypatch.setattr(scorer_module, "batch_nll", capped)
    scorer = ChunkScorer(tiny_model, pad_id=0, max_batch_tokens=216, device=torch.device("cpu"))
    scores, stats = scorer.score(chunks)
    assert [s.sum_nll for s in scores] == pytest.approx([s.sum_nll for s in plain], abs=1e-5)
    # 24 chunks of 10 ids: 21 rows (210) fail → 105 → 10 rows (100) fail → 50 → 5 rows (50) fail → 25, which fits.
    assert attempts[:3] == [210, 100, 50]
    assert all(n <= 25 for n in attempts[3:])  # everything left, at every level, was re-planned to the new budget
    assert scorer.max_batch_tokens == 25
    # 3 failures; then 24 chunks in batches of at most 2 rows: 14, as each level's leftovers are planned separately
    assert stats.forward_passes == len(attempts) == 3 + 14


def test_blockwise_head_equals_the_full_logits_path(tiny_model):
    chunks = chunks_of([40, 9, 25])
    longest = max(len(c.input_ids) for c in chunks)
    ids = torch.zeros((len(chunks), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, c in enumerate(chunks):
        ids[row, : len(c.input_ids)] = torch.tensor(c.input_ids)
        mask[row, : len(c.input_ids)] = 1
    with torch.inference_mode():
        fast = batch_nll(tiny_model, ids, mask)
        full = batch_nll(tiny_model, ids, mask, blockwise=False)
    assert torch.allclose(fast, full, atol=1e-5)
