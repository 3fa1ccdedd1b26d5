"""The CPT trainer: it learns, its T = 0 evaluation is the scorer's loss, it never trains on an eval chunk."""

from __future__ import annotations

import pytest
import torch

from cpt.models.base_model import load_model, load_tokenizer
from cpt.scoring.scorer import ChunkScorer
from cpt.scoring.windows import WindowPolicy, chunk_documents
from cpt.training.trainer import TrainConfig, continue_pretraining, held_out_loss, lr_at, mixed_stream
from tests.conftest import TINY_TEXTS

POLICY = WindowPolicy(length=16, min_tokens=4)


@pytest.fixture
def tiny(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    chunks = chunk_documents(
        tokenizer, [f"d{i}" for i in range(len(TINY_TEXTS))], TINY_TEXTS, POLICY, tokenizer_hash="tiny"
    )
    return load_model(tiny_model_dir)[0], tokenizer, chunks


def train_on_cpu(model, tokenizer, train, domain_eval, general_eval, config: TrainConfig, **kwargs):
    """Domain-only CPT of ``model`` on ``train``, evaluated on both held-out sets, on the CPU."""
    return continue_pretraining(
        model,
        domain_train=train,
        general_train=[],
        domain_eval=domain_eval,
        general_eval=general_eval,
        config=config,
        pad_id=tokenizer.pad_token_id,
        device=torch.device("cpu"),
        **kwargs,
    )


def test_three_steps_lower_the_training_loss_and_t0_equals_the_scorer(tiny):
    model, tokenizer, chunks = tiny
    train, domain_eval, general_eval = chunks[:8], chunks[-6:-3], chunks[-3:]
    scored, _ = ChunkScorer(load_model(model.name_or_path)[0], pad_id=tokenizer.pad_token_id).score(domain_eval)
    scorer_loss = sum(s.sum_nll for s in scored) / sum(s.n_tokens for s in scored)
    pool_tokens = sum(c.n_predicted for c in train)  # one step of 8 sequences = one pass over the 8 train chunks
    config = TrainConfig(token_budget=3 * pool_tokens, micro_batch_size=8, learning_rate=1e-2, warmup_steps=1, seed=0)
    seen = []

    result = train_on_cpu(model, tokenizer, train, domain_eval, general_eval, config, on_eval=seen.append)

    assert result.steps == 3 and result.tokens == 3 * pool_tokens
    assert result.initial.tokens == 0 and result.initial.domain_loss == pytest.approx(scorer_loss, abs=1e-5)
    after = ChunkScorer(model, pad_id=tokenizer.pad_token_id).score(train)[0]
    before = ChunkScorer(load_model(model.name_or_path)[0], pad_id=tokenizer.pad_token_id).score(train)[0]
    assert sum(s.sum_nll for s in after) < 0.95 * sum(s.sum_nll for s in before)  # training loss went down
    assert result.final.domain_loss < result.initial.domain_loss
    assert list(result.curve) == seen  # every point left through the callback


def test_bfloat16_training_keeps_float32_weights_and_agrees_with_float32_to_its_rounding(tiny):
    model, tokenizer, chunks = tiny
    train, domain_eval, general_eval = chunks[:8], chunks[-6:-3], chunks[-3:]
    pool_tokens = sum(c.n_predicted for c in train)
    results = {}
    for precision in ("float32", "bfloat16"):
        config = TrainConfig(
            token_budget=3 * pool_tokens, micro_batch_size=8, learning_rate=1e-2, warmup_steps=1, precision=precision
        )
        fresh = load_model(model.name_or_path)[0]
        results[precision] = train_on_cpu(fresh, tokenizer, train, domain_eval, general_eval, config)
        assert results[precision].precision == precision
        assert all(p.dtype == torch.float32 for p in fresh.parameters())  # autocast: the weights stay float32
    exact, fast = results["float32"], results["bfloat16"]
    assert fast.initial.domain_loss != exact.initial.domain_loss  # the products did run in bfloat16
    assert fast.initial.domain_loss == pytest.approx(exact.initial.domain_loss, rel=1e-2)
    assert fast.final.domain_loss == pytest.approx(exact.final.domain_loss, rel=2e-2)
    assert fast.final.domain_loss < fast.initial.domain_loss


def test_per_chunk_eval_losses_are_the_scorers_at_t0_and_average_to_the_set_loss(tiny):
    model, tokenizer, chunks = tiny
    train = chunks[:8]
    # Shortest first, so the length-sorted batches (several, at 40 tokens each) reorder them: the per-chunk losses
    # must still come back in the order the chunks were given.
    domain_eval = sorted(chunks[-12:-5], key=lambda c: len(c.input_ids))
    general_eval = chunks[-5:]
    assert len({len(c.input_ids) for c in domain_eval}) > 1
    fresh = load_model(model.name_or_path)[0]
    # float32: exactly the scorer's (bfloat16 products round differently with the batch shapes)
    scored, _ = ChunkScorer(fresh, pad_id=tokenizer.pad_token_id, precision="float32").score(
        [*domain_eval, *general_eval]
    )
    pool_tokens = sum(c.n_predicted for c in train)
    config = TrainConfig(
        token_budget=2 * pool_tokens,
        micro_batch_size=8,
        learning_rate=1e-2,
        warmup_steps=1,
        eval_every_tokens=pool_tokens,
        eval_batch_tokens=40,
        precision="float32",
    )

    result = train_on_cpu(model, tokenizer, train, domain_eval, general_eval, config)

    assert len(result.curve) == 3
    for point in result.curve:
        for losses, held_out, loss in (
            (point.domain_chunk_losses, domain_eval, point.domain_loss),
            (point.general_chunk_losses, general_eval, point.general_loss),
        ):
            assert len(losses) == len(held_out)
            tokens = [c.n_predicted for c in held_out]
            weighted = sum(x * n for x, n in zip(losses, tokens, strict=True)) / sum(tokens)
            assert weighted == pytest.approx(loss, rel=0, abs=1e-9)
    t0 = [*result.initial.domain_chunk_losses, *result.initial.general_chunk_losses]
    assert t0 == pytest.approx([s.sum_nll / s.n_tokens for s in scored], rel=0, abs=1e-5)
    assert max(t0) - min(t0) > 1e-3  # the chunks differ, so a wrong order could not pass the line above
    assert result.final.domain_chunk_losses != result.initial.domain_chunk_losses  # evaluated again after training


def test_an_empty_held_out_set_has_no_chunk_losses(tiny):
    model, tokenizer, chunks = tiny
    empty = held_out_loss(model, [], tokenizer.pad_token_id, 64)
    assert empty.chunk_losses == () and empty.loss != empty.loss  # nan
    one = held_out_loss(model, chunks[:1], tokenizer.pad_token_id, 64)
    assert len(one.chunk_losses) == 1 and one.chunk_losses[0] == pytest.approx(one.loss, abs=1e-12)


def test_training_on_an_eval_chunk_is_refused(tiny):
    model, tokenizer, chunks = tiny
    with pytest.raises(ValueError, match="evaluation chunks are also training chunks"):
        continue_pretraining(
            model,
            domain_train=chunks[:5],
            general_train=[],
            domain_eval=chunks[4:6],
            general_eval=[],
            config=TrainConfig(token_budget=10),
            pad_id=tokenizer.pad_token_id,
        )


@pytest.mark.parametrize("ratio", [0.0, 1 / 8, 1 / 3, 0.5, 1.0])
def test_mixed_stream_holds_the_ratio_deterministically(tiny, ratio):
    _, _, chunks = tiny
    domain, general = chunks[::2], chunks[1::2]
    first = [next(s) for s in [mixed_stream(domain, general, ratio, seed=3)] for _ in range(400)]
    again = [next(s) for s in [mixed_stream(domain, general, ratio, seed=3)] for _ in range(400)]
    assert [c.chunk_id for c, _ in first] == [c.chunk_id for c, _ in again]
    domain_tokens = sum(c.n_predicted for c, is_domain in first if is_domain)
    assert domain_tokens / sum(c.n_predicted for c, _ in first) == pytest.approx(ratio, abs=0.01)
    assert all((c in domain) == is_domain for c, is_domain in first)


def test_schedules_warm_up_then_hold_or_decay():
    constant = TrainConfig(token_budget=1, learning_rate=1.0, warmup_steps=4, schedule="constant")
    cosine = TrainConfig(token_budget=1, learning_rate=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(s, 20, constant) for s in (0, 3, 10, 19)] == [0.25, 1.0, 1.0, 1.0]
    assert lr_at(3, 20, cosine) == 1.0 and lr_at(20, 20, cosine) == pytest.approx(0.1)
    assert 0.1 < lr_at(12, 20, cosine) < 1.0
