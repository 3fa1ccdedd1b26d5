"""Continual pre-training of a base model on chosen chunks, optionally mixed with general replay chunks.

Reads like a small training script; every choice sits in :class:`TrainConfig` and is recorded with the run:

1. the token stream: domain chunks (seeded order) interleaved with general chunks so that domain tokens make a
   fraction ``R`` of the tokens trained on (deterministic, see :func:`mixed_stream`);
2. AdamW; linear warmup then a constant learning rate (the CMR paper's schedule) or cosine decay; gradient
   accumulation; gradient clipping;
3. domain and general loss on fixed held-out chunks at ``T = 0`` and every ``eval_every_tokens`` trained tokens, and at
   the end, computed as the scorer computes chunk NLL (in float32 the ``T = 0`` point is exactly the scorer's loss of
   the base model; where products run in bfloat16 (a GPU, a CPU with AMX or AVX512-BF16) the weights stay float32
   under autocast, so it agrees to bfloat16 rounding), and
   each held-out chunk's own loss (mean NLL per predicted token), from the same per-chunk sums in one pass;
4. metrics leave through a callback; the result is a frozen :class:`TrainResult` holding the curve.

Training and evaluation sets are disjoint by chunk id; an overlap is a bug upstream and raises.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cpt.scoring.scorer import (
    autocast_bf16,
    batch_nll,
    default_device,
    pad_batch,
    plan_batches,
    resolved_precision,
    uses_bf16,
)
from cpt.scoring.windows import Chunk


@dataclass(frozen=True)
class TrainConfig:
    token_budget: int  # predicted tokens to train on (T_max)
    mix_ratio: float = 1.0  # R: domain tokens / all tokens trained on
    micro_batch_size: int = 8  # sequences per forward pass
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-3
    schedule: str = "constant"  # constant (after warmup) | cosine
    warmup_steps: int = 5
    min_lr_ratio: float = 0.1  # cosine floor, a fraction of the peak
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    eval_every_tokens: int = 16_384  # also evaluated at T = 0 and at the end
    eval_batch_tokens: int = 4096  # the scorer's CPU default: faster than larger batches there (on a GPU, raise it)
    precision: str = "auto"  # bfloat16 products where native (GPU, AMX, AVX512-BF16): cpt.scoring.scorer.PRECISIONS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.token_budget <= 0:
            raise ValueError(f"token_budget must be positive, got {self.token_budget}")
        if not 0.0 <= self.mix_ratio <= 1.0:
            raise ValueError(f"mix_ratio must lie in [0, 1], got {self.mix_ratio}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        uses_bf16(torch.device("cpu"), self.precision)  # raises on an unknown precision
        if self.micro_batch_size < 1 or self.grad_accum < 1 or self.eval_every_tokens < 1:
            raise ValueError("micro_batch_size, grad_accum and eval_every_tokens must be at least 1")


@dataclass(frozen=True)
class EvalPoint:
    step: int  # optimizer steps taken
    tokens: int  # T: predicted tokens trained on so far
    domain_tokens: int
    general_tokens: int
    domain_loss: float  # mean NLL per predicted token on the held-out domain chunks (nats)
    general_loss: float  # ... on the held-out general chunks (nan when there are none)
    train_loss: float  # mean training loss since the previous point (nan at T = 0)
    learning_rate: float
    # Each held-out chunk's mean NLL per predicted token, in the order the eval chunks were given (empty when there
    # are none): ``domain_loss`` is their mean weighted by the chunks' predicted tokens.
    domain_chunk_losses: tuple[float, ...]
    general_chunk_losses: tuple[float, ...]


@dataclass(frozen=True)
class TrainResult:
    curve: tuple[EvalPoint, ...]
    steps: int
    tokens: int
    domain_tokens: int
    general_tokens: int
    domain_epochs: float  # passes over the domain pool (> 1 means chunks repeat)
    general_epochs: float
    seconds: float
    tokens_per_second: float
    n_params: int
    device: str
    precision: str = "float32"  # of the products: bfloat16 (autocast) or float32

    @property
    def initial(self) -> EvalPoint:
        return self.curve[0]

    @property
    def final(self) -> EvalPoint:
        return self.curve[-1]


EvalCallback = Callable[[EvalPoint], None]


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warmup to the peak, then constant or cosine decay to ``min_lr_ratio`` of it."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.learning_rate
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    return config.learning_rate * (
        config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def _cycled(chunks: Sequence[Chunk], rng: np.random.Generator) -> Iterator[Chunk]:
    """Seeded shuffled passes over ``chunks``, as many as asked for."""
    while True:
        for i in rng.permutation(len(chunks)):
            yield chunks[i]


def mixed_stream(
    domain: Sequence[Chunk], general: Sequence[Chunk], ratio: float, seed: int
) -> Iterator[tuple[Chunk, bool]]:
    """Chunks to train on, each flagged ``True`` when it is a domain chunk.

    Deterministic interleaving: the next chunk is a domain chunk while domain tokens so far are at most ``ratio`` of all
    tokens so far, so the running domain share stays within one chunk of ``ratio``.
    """
    if ratio > 0 and not domain:
        raise ValueError(f"mix ratio {ratio} needs domain chunks, and none were given")
    if ratio < 1 and not general:
        raise ValueError(f"mix ratio {ratio} needs general chunks, and none were given")
    rng = np.random.default_rng(seed)
    domain_it = _cycled(domain, rng) if ratio > 0 else iter(())
    general_it = _cycled(general, np.random.default_rng(rng.integers(2**63))) if ratio < 1 else iter(())
    domain_tokens = total = 0
    while True:
        take_domain = ratio > 0 and (ratio == 1 or domain_tokens <= ratio * total)
        chunk = next(domain_it) if take_domain else next(general_it)
        total += chunk.n_predicted
        domain_tokens += chunk.n_predicted if take_domain else 0
        yield chunk, take_domain


def chunk_nll_sums(model: torch.nn.Module, chunks: Sequence[Chunk], pad_id: int, max_batch_tokens: int) -> np.ndarray:
    """Summed NLL (float64, nats) of each chunk's predicted tokens, in the order of ``chunks``, as the scorer does."""
    sums = np.zeros(len(chunks), dtype=np.float64)
    if not chunks:
        return sums
    device = next(model.parameters()).device
    for batch in plan_batches([len(c.input_ids) for c in chunks], max_batch_tokens):
        ids, mask = pad_batch([chunks[i] for i in batch], pad_id)
        with torch.inference_mode():
            sums[batch] = batch_nll(model, ids.to(device), mask.to(device)).double().cpu().numpy()
    return sums


@dataclass(frozen=True)
class HeldOutLoss:
    loss: float  # Σ sum_nll / Σ predicted tokens (nan when there are no chunks)
    chunk_losses: tuple[float, ...]  # sum_nll / predicted tokens of each chunk, in input order


def held_out_loss(model: torch.nn.Module, chunks: Sequence[Chunk], pad_id: int, max_batch_tokens: int) -> HeldOutLoss:
    """The loss of a held-out set and of each of its chunks, from one pass of per-chunk NLL sums."""
    if not chunks:
        return HeldOutLoss(float("nan"), ())
    sums = chunk_nll_sums(model, chunks, pad_id, max_batch_tokens)
    tokens = np.array([c.n_predicted for c in chunks], dtype=np.int64)
    return HeldOutLoss(float(sums.sum() / tokens.sum()), tuple(float(x) for x in sums / tokens))


def mean_nll(model: torch.nn.Module, chunks: Sequence[Chunk], pad_id: int, max_batch_tokens: int) -> float:
    """Mean NLL per predicted token over ``chunks``, as the scorer computes it (float64 sums)."""
    return held_out_loss(model, chunks, pad_id, max_batch_tokens).loss


def _check_disjoint(train: Sequence[Chunk], held_out: Sequence[Chunk]) -> None:
    overlap = {c.chunk_id for c in train} & {c.chunk_id for c in held_out}
    if overlap:
        raise ValueError(f"{len(overlap)} evaluation chunks are also training chunks, e.g. {sorted(overlap)[:3]}")


def continue_pretraining(
    model: torch.nn.Module,
    *,
    domain_train: Sequence[Chunk],
    general_train: Sequence[Chunk],
    domain_eval: Sequence[Chunk],
    general_eval: Sequence[Chunk],
    config: TrainConfig,
    pad_id: int,
    on_eval: EvalCallback | None = None,
    device: torch.device | None = None,
    initial: EvalPoint | None = None,
) -> TrainResult:
    """Continue training ``model`` (in place) for ``config.token_budget`` tokens; returns the evaluation curve.

    ``initial``: the T = 0 evaluation of this very model on these held-out sets, when already known (it depends on
    nothing else): it is used instead of evaluating again."""
    for held_out in (domain_eval, general_eval):
        _check_disjoint([*domain_train, *general_train], held_out)
    device = device or default_device()
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.95)
    )
    seq_tokens = max(c.n_predicted for c in [*domain_train, *general_train])
    total_steps = max(1, math.ceil(config.token_budget / (seq_tokens * config.micro_batch_size * config.grad_accum)))
    stream = mixed_stream(domain_train, general_train, config.mix_ratio, config.seed)
    curve: list[EvalPoint] = []
    state = {"step": 0, "tokens": 0, "domain": 0, "general": 0, "losses": [], "lr": 0.0}

    def evaluate() -> None:
        model.eval()
        with autocast_bf16(device, config.precision):
            dom = held_out_loss(model, domain_eval, pad_id, config.eval_batch_tokens)
            gen = held_out_loss(model, general_eval, pad_id, config.eval_batch_tokens)
        model.train()
        losses = state["losses"]
        point = EvalPoint(
            step=state["step"],
            tokens=state["tokens"],
            domain_tokens=state["domain"],
            general_tokens=state["general"],
            domain_loss=dom.loss,
            general_loss=gen.loss,
            train_loss=float(np.mean(losses)) if losses else float("nan"),
            learning_rate=state["lr"],
            domain_chunk_losses=dom.chunk_losses,
            general_chunk_losses=gen.chunk_losses,
        )
        state["losses"] = []
        curve.append(point)
        if on_eval:
            on_eval(point)

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        if initial is None:
            evaluate()  # T = 0: the base model
        else:
            curve.append(initial)
            if on_eval:
                on_eval(initial)
        model.train()
        next_eval = config.eval_every_tokens
        while state["tokens"] < config.token_budget:
            state["lr"] = lr_at(state["step"], total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = state["lr"]
            optimizer.zero_grad(set_to_none=True)
            for _ in range(config.grad_accum):
                chunks, flags = zip(*(next(stream) for _ in range(config.micro_batch_size)), strict=True)
                ids, mask = pad_batch(chunks, pad_id)
                labels = ids.masked_fill(mask == 0, -100)
                with autocast_bf16(device, config.precision):
                    loss = model(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        labels=labels.to(device),
                        use_cache=False,
                    ).loss
                (loss / config.grad_accum).backward()
                state["losses"].append(loss.item())
                for chunk, is_domain in zip(chunks, flags, strict=True):
                    state["domain" if is_domain else "general"] += chunk.n_predicted
                    state["tokens"] += chunk.n_predicted
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            state["step"] += 1
            if state["tokens"] >= next_eval and state["tokens"] < config.token_budget:
                evaluate()
                next_eval = (state["tokens"] // config.eval_every_tokens + 1) * config.eval_every_tokens
        evaluate()
    model.eval()
    seconds = time.perf_counter() - start
    return TrainResult(
        curve=tuple(curve),
        steps=state["step"],
        tokens=state["tokens"],
        domain_tokens=state["domain"],
        general_tokens=state["general"],
        domain_epochs=state["domain"] / max(1, sum(c.n_predicted for c in domain_train)),
        general_epochs=state["general"] / max(1, sum(c.n_predicted for c in general_train)),
        seconds=seconds,
        tokens_per_second=state["tokens"] / seconds if seconds > 0 else float("nan"),
        n_params=sum(p.numel() for p in model.parameters()),
        device=str(device),
        precision=resolved_precision(device, config.precision),
    )
