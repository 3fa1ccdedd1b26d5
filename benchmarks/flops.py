"""Forward FLOPs per token of a causal LM, the denominator of both scoring benchmarks' FLOP-bound ceilings."""

from __future__ import annotations


def forward_flops_per_token(model, window: int) -> float:
    """2 × matmul parameters (LM head included) plus attention over a window, at mean context ``window / 2``."""
    cfg = model.config
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    lm_head = cfg.vocab_size * cfg.hidden_size  # tied to the embedding, still a matmul per token
    attention = 2 * 2 * cfg.num_hidden_layers * (window / 2) * cfg.hidden_size  # QKᵀ and AV
    return 2 * (matmul_params + lm_head) + attention
