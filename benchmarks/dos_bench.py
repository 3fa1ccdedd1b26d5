"""Distance-to-Optimum Selection: the O(K log N) greedy at pool scale, and against the O(K·N) brute force.

A synthetic pool of 10 M chunks (PPL lognormal around 20, token counts uniform in 200–256, seed 0); the statistic is
raw PPL and the target a regime with 0.85× the pool's mean PPL and 0.6× its standard deviation, which a tenth of the
pool can reach. The budget is 10 % of the pool's tokens (K ≈ 1 M chosen). It prints the seconds of validation and the
sort, of the greedy loop, the steps/s and the gap reached, then replays the run and checks, at 10 steps spread over
it, that the fast choice is the brute-force one: the (J, position) minimum over every available chunk of the pool.
Then the brute force and the fast greedy on the first 20,000 chunks (K ≈ 2,000): both times, the ratio, and that the
two orders are identical.

    .venv/bin/python -m benchmarks.dos_bench
    DOS_BENCH_CHUNKS=1000000 .venv/bin/python -m benchmarks.dos_bench   (a quicker look)
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np

from cpt.selection.dos import (
    DosSelection,
    DosTarget,
    _objective,
    _Pool,
    _prepare,
    _push,
    _step_terms,
    select_dos,
    select_dos_brute_force,
)

N_CHUNKS = int(os.environ.get("DOS_BENCH_CHUNKS", "10000000"))
N_SMALL = min(20_000, N_CHUNKS)
BUDGET_FRACTION = 0.10
N_SPOT_CHECKS = 10


def synthetic_pool(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ppl = rng.lognormal(mean=np.log(20.0), sigma=0.5, size=n)
    tokens = rng.integers(200, 257, size=n)
    return ppl, tokens


def regime_target(ppl: np.ndarray) -> DosTarget:
    return DosTarget(mean=0.85 * float(ppl.mean()), var=(0.6 * float(ppl.std())) ** 2)


def fmt_gap(gap: dict[str, float]) -> str:
    return f"mean {gap['mean_rel']:+.2e}, std {gap['std_rel']:+.2e} (relative), J = {gap['objective']:.2e}"


def spot_check(pool: _Pool, selection: DosSelection, target: DosTarget) -> int:
    """Replay the greedy state; at N_SPOT_CHECKS steps, score every available chunk. Returns how many agreed."""
    inverse = np.empty_like(pool.perm)
    inverse[pool.perm] = np.arange(pool.perm.size)
    positions = inverse[selection.order]
    checks = set(np.linspace(0, selection.steps - 1, N_SPOT_CHECKS).astype(int).tolist())
    available = np.ones(pool.perm.size, dtype=bool)
    w_mean, w_var = target.weights
    n, m, m2, agreed = 0, 0.0, 0.0, 0
    for step, (position, x) in enumerate(zip(positions.tolist(), pool.x[positions].tolist(), strict=True)):
        if step in checks:
            d0, e0, k, n1 = _step_terms(n, m, m2, target.mean, target.var)
            candidates = np.flatnonzero(available)
            scores = _objective(pool.x[candidates], m, d0, e0, k, n1, w_mean, w_var)
            best = int(np.argmin(scores))
            agreed += int(candidates[best]) == position and float(scores[best]) == selection.objective[step]
        available[position] = False
        n, m, m2 = _push(n, m, m2, x)
    return agreed


def main() -> None:
    ppl, tokens = synthetic_pool(N_CHUNKS)
    target = regime_target(ppl)
    budget = int(BUDGET_FRACTION * int(tokens.sum()))
    print(
        f"pool: {N_CHUNKS:,} chunks, {int(tokens.sum()):,} tokens; target μ̂ = {target.mean:.3f}, σ̂ = {target.std:.3f} "
        f"(pool μ = {ppl.mean():.3f}, σ = {ppl.std():.3f}); budget {budget:,} tokens"
    )

    start = time.perf_counter()
    pool = _prepare(ppl, tokens, target, budget, None)
    prepare_s = time.perf_counter() - start
    start = time.perf_counter()
    selection = select_dos(ppl, tokens, target, budget)
    total_s = time.perf_counter() - start
    loop_s = total_s - prepare_s
    print(
        f"fast DOS: {selection.steps:,} steps in {total_s:.2f} s (validation and sort {prepare_s:.2f} s, greedy loop "
        f"{loop_s:.2f} s = {selection.steps / loop_s:,.0f} steps/s); peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )
    print(f"  reached: {fmt_gap(selection.gap())}; within 2 %: {selection.reached(0.02)}")
    for fraction in (0.01, 0.05):
        steps = selection.steps_for(int(fraction * int(tokens.sum())))
        print(f"  prefix at {fraction:.0%} of the pool ({steps:,} steps): {fmt_gap(selection.gap(steps))}")
    start = time.perf_counter()
    agreed = spot_check(pool, selection, target)
    print(
        f"  full-scan spot checks: the fast choice is the minimum over every available chunk at {agreed} of "
        f"{N_SPOT_CHECKS} steps spread over the run ({time.perf_counter() - start:.1f} s)"
    )
    assert agreed == N_SPOT_CHECKS, "the fast greedy missed the full-scan minimum"
    del pool

    small_ppl, small_tokens = ppl[:N_SMALL], tokens[:N_SMALL]
    small_target = regime_target(small_ppl)
    small_budget = int(BUDGET_FRACTION * int(small_tokens.sum()))
    start = time.perf_counter()
    fast = select_dos(small_ppl, small_tokens, small_target, small_budget)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    brute = select_dos_brute_force(small_ppl, small_tokens, small_target, small_budget)
    brute_s = time.perf_counter() - start
    assert np.array_equal(fast.order, brute.order), "the fast and the brute-force orders differ"
    assert np.array_equal(fast.objective, brute.objective), "the fast and the brute-force objectives differ"
    print(
        f"subsample {N_SMALL:,} chunks, {fast.steps:,} steps: brute force {brute_s:.2f} s, fast {fast_s:.3f} s "
        f"({brute_s / fast_s:.0f}× faster); orders and objectives identical"
    )


if __name__ == "__main__":
    main()
