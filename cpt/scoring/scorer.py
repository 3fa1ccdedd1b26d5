"""Batched chunk scoring: per-chunk summed negative log-likelihood under a causal LM.

Chunks are sorted by length and packed into batches up to a token budget, so padding is rare (fixed-length windows
make most batches pad-free). The NLL comes from the logits by ``logsumexp − gather``, reduced in float32 (float64 for
the per-chunk sums) whatever the model's dtype; no log-softmax tensor is materialised. On GPU an out-of-memory batch
halves the token budget and what is left is re-planned to it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cpt.scoring.windows import Chunk

ProgressFn = Callable[[int, int, int], None]  # (chunks done, chunks total, tokens done)


@dataclass(frozen=True)
class ChunkScore:
    chunk_id: str
    doc_id: str
    chunk_index: int
    n_tokens: int  # predicted tokens
    sum_nll: float  # nats, float64

    @property
    def ppl(self) -> float:
        return math.exp(self.sum_nll / self.n_tokens)


@dataclass(frozen=True)
class ScoringStats:
    chunks: int
    tokens: int
    forward_passes: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# How matrix products are computed. ``auto``: in bfloat16 where the hardware runs them natively (a GPU, or a CPU with
# AMX tiles or AVX512-BF16 dot products, both of which oneDNN uses), else float32 (elsewhere bfloat16 is emulated and
# slower than float32). On a CPU bfloat16 means autocast: float32 weights, bfloat16 products, float32 reductions; on
# the quick-start model it scores 1.46–1.6× the tokens/s of float32 on 2 cores (AMX and AVX512-BF16 alike), with chunk
# PPL within 0.2 % of float32's (0.12 % at the 99th percentile, Spearman 0.999996 over 1,583 MedQuAD chunks).
PRECISIONS = ("auto", "float32", "bfloat16")


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on ``device``: a CUDA GPU, or a CPU with AMX tiles (Intel
    Sapphire Rapids on) or AVX512-BF16 (Intel Cooper Lake, AMD Zen 4 on)."""
    if device.type == "cuda":
        return True
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return device.type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bfloat16" or (precision == "auto" and native_bf16(device))


def resolved_precision(device: torch.device, precision: str = "auto") -> str:
    """What ``precision`` means on ``device``: ``"bfloat16"`` or ``"float32"``."""
    return "bfloat16" if uses_bf16(device, precision) else "float32"


def autocast_bf16(device: torch.device, precision: str = "auto"):
    """bfloat16 autocast (float32 weights and reductions) when ``precision`` resolves to bfloat16 here."""
    if uses_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int = 1024) -> list[list[int]]:
    """Indices grouped into batches, longest first; a batch's padded size (rows × longest) stays within budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * longest > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def logsumexp_f32(logits: torch.Tensor, rows_per_block: int | None = None) -> torch.Tensor:
    """``logsumexp`` over the last (vocabulary) axis in float32, a block of positions at a time.

    Blocks keep the working set in cache on CPU (about 3x faster than one call over the whole tensor), and upcast a
    low-precision input piece by piece, so no float32 copy of the whole logits tensor ever exists.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)  # a view: logits come contiguous from the LM head
    rows = rows_per_block or (256 if logits.device.type == "cpu" else 8192)
    parts = [torch.logsumexp(flat[i : i + rows].float(), dim=-1) for i in range(0, flat.shape[0], rows)]
    return torch.cat(parts).view(logits.shape[:-1])


# Causal LMs whose logits are exactly ``lm_head(decoder(...).last_hidden_state)``: for them the LM head and the NLL
# are computed a tile of (positions × vocabulary) at a time, so the (tokens × vocabulary) logits tensor never exists
# whole — the largest tensor of the forward pass for a 49k vocabulary, and most of its memory traffic.
BLOCKWISE_HEAD_MODELS = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GPT2LMHeadModel"}
)
# (positions, vocabulary entries) per tile. On CPU a 512 × 1024 float32 tile (2 MiB) stays in L2 while it is
# reduced: against 512 × 4096 it scores 1.06–1.52× the positions/s through the quick-start model's head (128 × 4,096)
# and 1.05–1.09× through SmolLM2's (576 × 49,152) on 2 cores (benchmarks/head_tile_bench.py). A GPU wants large
# tiles and few kernel launches.
HEAD_TILE = {"cpu": (512, 1024), "cuda": (16384, 1 << 30)}
# Padded tokens per forward pass by device. Measured (benchmarks/gpu_bench.py, SmolLM2-135M shape, L = 256, H200):
# 131k tokens/s at 4096, 452k at 65536; the CPU is no faster beyond 4096 and wants the working set in cache.
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    config = getattr(model, "config", None)
    if type(model).__name__ not in BLOCKWISE_HEAD_MODELS or getattr(config, "final_logit_softcapping", None):
        return None
    decoder = getattr(model, "model", None) or getattr(model, "transformer", None)
    head = model.get_output_embeddings()
    return (decoder, head) if decoder is not None and isinstance(head, torch.nn.Linear) else None


def head_nll(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Linear) -> torch.Tensor:
    """NLL (float32) of ``targets`` [n] under ``head(hidden)`` [n, vocab], one tile of the logits at a time.

    Within a row block the vocabulary is swept in slices with an online logsumexp (running max and rescaled sum);
    each slice's logits are reduced in place in float32, and the target's logit is picked from the slice holding it,
    so it carries the same rounding as the logits the normaliser sums.
    """
    rows, vocab_slice = HEAD_TILE["cuda" if hidden.device.type == "cuda" else "cpu"]
    vocab = head.weight.shape[0]
    pieces = []
    for i in range(0, hidden.shape[0], rows):
        x, target = hidden[i : i + rows], targets[i : i + rows].unsqueeze(-1)
        running_max = running_sum = target_logit = None
        for j in range(0, vocab, vocab_slice):
            bias = None if head.bias is None else head.bias[j : j + vocab_slice]
            logits = torch.nn.functional.linear(x, head.weight[j : j + vocab_slice], bias).float()
            in_slice = (target >= j) & (target < j + logits.shape[-1])
            picked = logits.gather(-1, (target - j).clamp(0, logits.shape[-1] - 1))
            target_logit = picked if target_logit is None else torch.where(in_slice, picked, target_logit)
            slice_max = logits.amax(-1, keepdim=True)
            slice_sum = logits.sub_(slice_max).exp_().sum(-1, keepdim=True)
            if running_max is None:
                running_max, running_sum = slice_max, slice_sum
            else:
                new_max = torch.maximum(running_max, slice_max)
                running_sum = running_sum * (running_max - new_max).exp() + slice_sum * (slice_max - new_max).exp()
                running_max = new_max
        pieces.append((running_sum.log() + running_max - target_logit).squeeze(-1))
    return torch.cat(pieces)


def batch_nll(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, blockwise: bool = True
) -> torch.Tensor:
    """Summed NLL per row (float64) of every predicted token (positions 1.. that are not padding)."""
    targets = input_ids[:, 1:]
    # A pad-free batch (the common case: fixed-length windows) goes without a mask, so attention takes its causal
    # fast path instead of building and applying a 4-D mask.
    model_mask = None if bool(attention_mask.all()) else attention_mask
    parts = _decoder_and_head(model) if blockwise else None
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=model_mask, use_cache=False).logits
        lse = logsumexp_f32(logits)[:, :-1]  # position t predicts token t + 1; the last position predicts nothing
        nll = lse - logits[:, :-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    else:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=model_mask, use_cache=False).last_hidden_state
        flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        nll = head_nll(flat, targets.reshape(-1), head).view(targets.shape)
    return (nll.double() * attention_mask[:, 1:].double()).sum(dim=1)


def pad_batch(chunks: Sequence[Chunk], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and the attention mask of a batch of chunks."""
    longest = max(len(c.input_ids) for c in chunks)
    ids = torch.full((len(chunks), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunks), longest), dtype=torch.long)
    for row, c in enumerate(chunks):
        ids[row, : len(c.input_ids)] = torch.tensor(c.input_ids)
        mask[row, : len(c.input_ids)] = 1
    return ids, mask


class ChunkScorer:
    """Scores chunks with a loaded model; ``score`` returns one :class:`ChunkScore` per chunk, in input order."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        pad_id: int,
        max_batch_tokens: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        precision: str = "auto",
    ) -> None:
        self.device = device or default_device()
        on_gpu, bf16 = self.device.type == "cuda", uses_bf16(self.device, precision)
        # A GPU holds bfloat16 weights; a CPU keeps float32 weights and computes its products under autocast.
        self.dtype = dtype or (torch.bfloat16 if on_gpu and bf16 else torch.float32)
        self.autocast = not on_gpu and bf16 and self.dtype == torch.float32
        self.precision = "bfloat16" if bf16 or self.dtype == torch.bfloat16 else "float32"
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.pad_id = pad_id
        self.max_batch_tokens = max_batch_tokens or DEFAULT_BATCH_TOKENS["cuda" if on_gpu else "cpu"]
        self.forward_passes = 0

    def score(
        self, chunks: Sequence[Chunk], on_progress: ProgressFn | None = None
    ) -> tuple[list[ChunkScore], ScoringStats]:
        start = time.perf_counter()
        passes_before = self.forward_passes
        progress = {"done": 0, "tokens": 0}

        def batch_done(batch: list[int]) -> None:
            progress["done"] += len(batch)
            progress["tokens"] += sum(chunks[i].n_predicted for i in batch)
            if on_progress:
                on_progress(progress["done"], len(chunks), progress["tokens"])

        sums = self._score_all(chunks, batch_done)
        scores = [
            ChunkScore(c.chunk_id, c.doc_id, c.chunk_index, c.n_predicted, s) for c, s in zip(chunks, sums, strict=True)
        ]
        seconds = time.perf_counter() - start
        stats = ScoringStats(len(chunks), progress["tokens"], self.forward_passes - passes_before, seconds)
        return scores, stats

    def _score_all(self, chunks: Sequence[Chunk], on_batch: Callable[[list[int]], None] | None = None) -> list[float]:
        """Summed NLL per chunk, in batches planned to the token budget; when a batch runs out of memory the budget
        shrinks and whatever is left is re-planned to it, so no batch size fails twice."""
        sums = [0.0] * len(chunks)
        lengths = [len(c.input_ids) for c in chunks]
        pending = plan_batches(lengths, self.max_batch_tokens)
        while pending:
            batch, budget = pending.pop(0), self.max_batch_tokens
            for i, value in zip(batch, self._score_batch([chunks[i] for i in batch]), strict=True):
                sums[i] = value
            if on_batch:
                on_batch(batch)
            if self.max_batch_tokens < budget:
                rest = [i for b in pending for i in b]
                replanned = plan_batches([lengths[i] for i in rest], self.max_batch_tokens)
                pending = [[rest[j] for j in b] for b in replanned]
        return sums

    def _score_batch(self, chunks: Sequence[Chunk]) -> list[float]:
        ids, mask = pad_batch(chunks, self.pad_id)
        try:
            with torch.inference_mode(), autocast_bf16(self.device, "bfloat16" if self.autocast else "float32"):
                self.forward_passes += 1
                return batch_nll(self.model, ids.to(self.device), mask.to(self.device)).tolist()
        except torch.OutOfMemoryError:
            if len(chunks) == 1:
                raise
            torch.cuda.empty_cache()
            # Half of the batch that failed, never below one row of it; then this batch is re-planned to that.
            self.max_batch_tokens = max(ids.shape[1], min(self.max_batch_tokens, ids.numel() // 2))
            return self._score_all(chunks)


def reference_nll(model: torch.nn.Module, chunk: Chunk) -> float:
    """One chunk per forward through Hugging Face's own loss (mean over predicted tokens) × count."""
    ids = torch.tensor([chunk.input_ids], device=next(model.parameters()).device)
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    return float(loss) * chunk.n_predicted
