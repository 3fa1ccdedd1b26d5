"""The scorer's LM-head tile on CPU: positions/s of ``head_nll`` at the chosen tile against the previous 512 × 4,096
tile (the baseline), measured in the same run, for the quick-start model's head and SmolLM2-135M's.

Both tiles give the same NLL (checked); only the cache traffic differs.
"""

from __future__ import annotations

import time

import torch

from cpt.scoring import scorer

BASELINE = (512, 4096)
SHAPES = {"quick-start (128 × 4,096)": (128, 4096, 4096, 20), "SmolLM2-135M (576 × 49,152)": (576, 49152, 1024, 3)}


def positions_per_second(head: torch.nn.Linear, x: torch.Tensor, targets: torch.Tensor, tile, reps: int) -> float:
    scorer.HEAD_TILE["cpu"] = tile
    scorer.head_nll(x, targets, head)  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        scorer.head_nll(x, targets, head)
    return x.shape[0] * reps / (time.perf_counter() - start)


def main() -> None:
    chosen = scorer.HEAD_TILE["cpu"]
    print(f"\nLM-head tile (positions × vocabulary), torch threads {torch.get_num_threads()}: {chosen} vs {BASELINE}")
    torch.manual_seed(0)
    try:
        with torch.inference_mode():
            for name, (hidden, vocab, positions, reps) in SHAPES.items():
                head = torch.nn.Linear(hidden, vocab, bias=False)
                x, targets = torch.randn(positions, hidden), torch.randint(0, vocab, (positions,))
                scorer.HEAD_TILE["cpu"] = BASELINE
                reference = scorer.head_nll(x, targets, head)
                scorer.HEAD_TILE["cpu"] = chosen
                assert torch.allclose(scorer.head_nll(x, targets, head), reference, atol=1e-4)
                rates = {
                    t: max(positions_per_second(head, x, targets, t, reps) for _ in range(3))
                    for t in (BASELINE, chosen)
                }
                print(
                    f"  {name:30s} {rates[chosen]:10,.0f} positions/s vs {rates[BASELINE]:10,.0f} "
                    f"({rates[chosen] / rates[BASELINE]:.2f}×)"
                )
    finally:
        scorer.HEAD_TILE["cpu"] = chosen


if __name__ == "__main__":
    main()
