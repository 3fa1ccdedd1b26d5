"""The quick-start base model: a byte-level BPE tokenizer and a small Llama-style model pretrained on general text.

This mirrors the CMR paper's setup (a base model pretrained on general data, then continually pretrained on a
domain). The budget is a number of *tokens*, not seconds, so the same texts and config give the same model on any
machine with the same precision (up to floating-point reduction order; ``precision`` auto resolves per machine,
and the resolved one is saved beside the model). Randomness comes from the config's seed only; the caller's global
torch RNG state is left as it was.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cpt.hashing import config_hash
from cpt.scoring.scorer import autocast_bf16, resolved_precision

BOS = "<|endoftext|>"
LOSS_CURVE_FILE = "loss_curve.json"

ProgressFn = Callable[[int, int, float], None]  # (step, total steps, train loss)


@dataclass(frozen=True)
class PretrainConfig:
    vocab_size: int = 4096
    hidden_size: int = 128  # 1.2 M parameters: scores ~20k tokens/s on 2 CPU cores
    intermediate_size: int = 384
    num_layers: int = 3
    num_heads: int = 4
    seq_len: int = 256  # BOS + 255 tokens per training sequence, like the default scoring window
    token_budget: int = 500_000  # training tokens; cycles over the data when it is smaller
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decay to this fraction of the peak
    weight_decay: float = 0.01
    log_every: int = 10
    tokenizer_train_chars: int = 4_000_000  # BPE merges learned on the first texts up to this many characters
    # Matrix products: auto is bfloat16 under autocast (float32 weights, optimizer and reductions) where the hardware
    # runs it natively (a GPU, a CPU with AMX or AVX512-BF16: the demo's pretraining took 122 s against 229 s in
    # float32 on 2 cores with AMX, with the same final loss), else float32. See cpt.scoring.scorer.PRECISIONS.
    precision: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class PretrainResult:
    path: Path
    steps: int
    tokens: int
    seconds: float
    n_params: int
    loss_curve: tuple[tuple[int, float], ...]  # (tokens seen, mean train loss over the last log_every steps)


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, wrapped as a transformers fast tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[BOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=BOS, eos_token=BOS, pad_token=BOS)


def build_model(config: PretrainConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.seq_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return LlamaForCausalLM(model_config)


def training_sequences(texts: Sequence[str], tokenizer, seq_len: int) -> torch.Tensor:
    """Texts tokenized, joined with BOS separators, cut into rows of ``BOS + seq_len − 1`` tokens."""
    bos = tokenizer.bos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(bos)
    body = seq_len - 1
    rows = len(stream) // body
    if rows == 0:
        raise ValueError(f"{len(stream)} tokens cannot fill one training sequence of {seq_len}")
    data = torch.tensor(stream[: rows * body], dtype=torch.long).view(rows, body)
    return torch.cat([torch.full((rows, 1), bos, dtype=torch.long), data], dim=1)


def lr_at(step: int, total: int, config: PretrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def pretrain_base_model(
    texts: Sequence[str], config: PretrainConfig, out_dir: Path, on_progress: ProgressFn | None = None
) -> PretrainResult:
    """Train tokenizer and model on ``texts`` for ``config.token_budget`` tokens; save both to ``out_dir``."""
    start = time.perf_counter()
    tokenizer = train_tokenizer(_prefix(texts, config.tokenizer_train_chars), config.vocab_size)
    data = training_sequences(texts, tokenizer, config.seq_len)
    model = build_model(config, tokenizer)
    tokens_per_step = config.batch_size * config.seq_len
    total_steps = max(1, config.token_budget // tokens_per_step)
    order = _order(len(data), total_steps * config.batch_size, config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.95)
    )
    curve: list[tuple[int, float]] = []
    window: list[float] = []
    model.train()
    for step in range(total_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, config)
        batch = data[order[step * config.batch_size : (step + 1) * config.batch_size]]
        with autocast_bf16(torch.device("cpu"), config.precision):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window.append(loss.item())
        if (step + 1) % config.log_every == 0 or step + 1 == total_steps:
            curve.append(((step + 1) * tokens_per_step, float(np.mean(window))))
            window = []
            if on_progress:
                on_progress(step + 1, total_steps, curve[-1][1])
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    used = resolved_precision(torch.device("cpu"), config.precision)
    (out_dir / "pretrain_config.json").write_text(json.dumps(asdict(config) | {"precision_used": used}, indent=2))
    (out_dir / LOSS_CURVE_FILE).write_text(json.dumps(curve))
    return PretrainResult(
        path=out_dir,
        steps=total_steps,
        tokens=total_steps * tokens_per_step,
        seconds=time.perf_counter() - start,
        n_params=sum(p.numel() for p in model.parameters()),
        loss_curve=tuple(curve),
    )


def pretrained_once(
    texts: Sequence[str],
    doc_ids: Sequence[str],
    config: PretrainConfig,
    cache: Path,
    on_progress: ProgressFn | None = None,
) -> tuple[Path, list[list[float]], bool]:
    """The model pretrained with ``config`` on these documents, trained only if the cache does not hold it yet.

    The folder is named after the config and the (sorted) document ids, so the same inputs always land in, and are
    served from, the same folder. Returns (folder, loss curve, whether it was trained now).
    """
    folder = cache / f"quickstart-{config_hash({'config': config, 'documents': sorted(doc_ids)})}"
    if (folder / "config.json").exists():
        return folder, saved_loss_curve(folder) or [], False
    order = sorted(range(len(doc_ids)), key=doc_ids.__getitem__)  # a stable order: same documents, same model
    result = pretrain_base_model([texts[i] for i in order], config, folder, on_progress)
    return folder, [list(point) for point in result.loss_curve], True


def saved_loss_curve(folder: Path) -> list[list[float]] | None:
    """The loss curve saved beside a model this module pretrained, if any."""
    path = folder / LOSS_CURVE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _prefix(texts: Sequence[str], chars: int) -> list[str]:
    out, total = [], 0
    for text in texts:
        if total >= chars:
            break
        out.append(text)
        total += len(text)
    return out


def _order(rows: int, needed: int, seed: int) -> np.ndarray:
    """Row indices for training: whole shuffled epochs, as many as the budget needs."""
    rng = np.random.default_rng(seed)
    epochs = -(-needed // rows)
    return np.concatenate([rng.permutation(rows) for _ in range(epochs)])[:needed]
