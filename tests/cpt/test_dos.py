"""Distance-to-Optimum Selection: the O(K log N) greedy against the brute force, targets reached and not, prefixes,
the closed-form cubic, and the typed errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpt.selection.dos import (
    DosError,
    DosSelection,
    DosTarget,
    PoolTooSmall,
    _cubic_minima,
    select_dos,
    select_dos_brute_force,
)


def random_pool(seed: int):
    """A small pool of one of four kinds of values, three kinds of token counts and five kinds of tie keys."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 201))
    kind = seed % 4
    if kind == 0:  # continuous
        x = rng.lognormal(2.5, 0.6, n)
    elif kind == 1:  # integer-valued, many duplicates
        x = rng.integers(0, 6, n).astype(float)
    elif kind == 2:  # rounded: duplicates and near-duplicates
        x = np.round(rng.normal(3.0, 1.0, n), 1)
    else:  # four distinct values
        x = rng.choice(rng.lognormal(2.0, 1.0, 4), n)
    tokens = (np.ones(n, dtype=np.int64), rng.integers(1, 1000, n), rng.integers(200, 257, n))[seed % 3]
    ties = (
        None,
        rng.permutation(n),
        np.array([f"doc-{k:04d}" for k in rng.permutation(n)]),
        np.arange(n)[::-1].copy(),
        rng.integers(0, 3, n),  # ties among the tie keys too: the input index decides
    )[seed % 5]
    lo, hi = float(x.min()), float(x.max())
    spread = max(hi - lo, 1.0)
    if (seed // 4) % 3 == 2:  # outside the pool's range, below or above
        mean = lo - rng.uniform(0.1, 2.0) * spread if rng.random() < 0.5 else hi + rng.uniform(0.1, 2.0) * spread
    else:
        mean = rng.uniform(lo, hi)
    var = max(float(x.var()), 0.25) * 10 ** rng.uniform(-2.0, 1.0)
    target = DosTarget(mean if mean != 0.0 else 0.5, var)
    budget = int(rng.integers(1, int(tokens.sum()) + 1))
    return x, tokens, target, budget, ties


def assert_same(a: DosSelection, b: DosSelection) -> None:
    assert np.array_equal(a.order, b.order)
    assert np.array_equal(a.cumulative_tokens, b.cumulative_tokens)
    assert np.array_equal(a.objective, b.objective)  # bit for bit
    assert (a.mean, a.var, a.tokens) == (b.mean, b.var, b.tokens)


@pytest.mark.parametrize("seed", range(60))
def test_fast_equals_brute_force_on_small_pools(seed):
    x, tokens, target, budget, ties = random_pool(seed)
    fast = select_dos(x, tokens, target, budget, tie_keys=ties)
    brute = select_dos_brute_force(x, tokens, target, budget, tie_keys=ties)
    assert_same(fast, brute)
    assert fast.tokens >= budget and (fast.steps == 1 or fast.cumulative_tokens[-2] < budget)
    assert sorted(fast.order.tolist()) == sorted(set(fast.order.tolist()))  # no chunk twice


@pytest.mark.parametrize(
    "values",
    [
        lambda rng, n: rng.lognormal(3.0, 0.5, n),
        lambda rng, n: np.round(rng.lognormal(3.0, 0.5, n) * 4) / 4,
        lambda rng, n: rng.integers(1, 40, n).astype(float),
    ],
    ids=["continuous", "quarters", "integers"],
)
def test_fast_equals_brute_force_on_larger_pools(values):
    rng = np.random.default_rng(7)
    x, tokens = values(rng, 3000), rng.integers(200, 257, 3000)
    for target in (DosTarget(0.8 * x.mean(), 0.5 * x.var()), DosTarget(1.2 * x.mean(), 3.0 * x.var())):
        budget = int(0.2 * tokens.sum())
        assert_same(select_dos(x, tokens, target, budget), select_dos_brute_force(x, tokens, target, budget))


@pytest.mark.parametrize("w_mean", [1e6, 1e-6])
def test_fast_equals_brute_force_with_custom_weights(w_mean):
    rng = np.random.default_rng(8)
    x, tokens = np.round(rng.lognormal(2.0, 0.7, 400), 1), rng.integers(1, 50, 400)
    target = DosTarget(1.1 * x.mean(), 0.7 * x.var(), w_mean=w_mean / x.mean() ** 2, w_var=1.0 / x.var() ** 2)
    budget = int(0.3 * tokens.sum())
    assert_same(select_dos(x, tokens, target, budget), select_dos_brute_force(x, tokens, target, budget))


def test_an_overflowing_cubic_falls_back_to_scoring_every_chunk():
    rng = np.random.default_rng(9)
    x, tokens = rng.lognormal(2.0, 0.5, 300), rng.integers(1, 10, 300)
    target = DosTarget(0.9 * x.mean(), x.var(), w_mean=1e10, w_var=1e-300)  # w_μ / (2 w_σ) overflows to inf
    assert_same(select_dos(x, tokens, target, 500), select_dos_brute_force(x, tokens, target, 500))


def test_each_step_is_the_greedy_minimum_recomputed_from_scratch():
    """Independent of the shared arithmetic: J of S ∪ {x} from np.mean/np.var for every candidate, every step."""
    rng = np.random.default_rng(3)
    x = rng.lognormal(2.5, 0.6, 80)
    target = DosTarget(0.9 * x.mean(), 0.4 * x.var())
    selection = select_dos(x, np.ones(80, dtype=np.int64), target, 40)
    chosen: list[int] = []
    for step, pick in enumerate(selection.order.tolist()):
        rest = [i for i in range(80) if i not in chosen]
        scores = [target.objective(np.mean(x[[*chosen, i]]), np.var(x[[*chosen, i]])) for i in rest]
        assert target.objective(np.mean(x[[*chosen, pick]]), np.var(x[[*chosen, pick]])) <= min(scores) * (1 + 1e-9)
        assert selection.objective[step] == pytest.approx(min(scores), rel=1e-9, abs=1e-15)
        chosen.append(pick)


def test_equal_values_go_to_the_lowest_tie_key():
    x = np.array([2.0, 1.0, 2.0, 2.0, 1.0, 3.0])
    tokens = np.ones(6, dtype=np.int64)
    target = DosTarget(2.0, 0.5)
    default = select_dos(x, tokens, target, 1)
    assert default.order.tolist() == [0]  # x = 2 at indices 0, 2, 3: the lowest index
    reversed_keys = select_dos(x, tokens, target, 1, tie_keys=np.array([9, 0, 5, 1, 0, 0]))
    assert reversed_keys.order.tolist() == [3]  # tie keys 9, 5, 1: the lowest key
    named = select_dos(x, tokens, target, 1, tie_keys=np.array(["c", "a", "b", "z", "a", "a"]))
    assert named.order.tolist() == [2]


def test_equal_objectives_at_the_two_minima_go_to_the_lower_value():
    """After picking 2 (= μ̂), J is symmetric about the mean: 0 and 4 tie bit for bit, the lower sorted position wins."""
    x = np.array([4.0, 0.0, 2.0, 4.0, 0.0, 1.5, 2.5, 1.0, 3.0])  # 1.5 … 3.0 keep the two neighbourhoods apart
    tokens = np.ones(9, dtype=np.int64)
    target = DosTarget(2.0, 4.0)
    for select in (select_dos, select_dos_brute_force):
        assert select(x, tokens, target, 3).order.tolist() == [2, 1, 0]
        assert select(x, tokens, target, 3, tie_keys=np.array([0, 9, 5, 1, 8, 0, 0, 0, 0])).order.tolist() == [2, 4, 0]
        # n = 0: J is a parabola about μ̂ = 2.5, and 2 and 3 tie bit for bit
        assert select([3.0, 2.0, 3.0, 2.0], [1, 1, 1, 1], DosTarget(2.5, 1.0), 1).order.tolist() == [1]


def test_reaches_a_reachable_target():
    rng = np.random.default_rng(11)
    x = rng.lognormal(3.0, 0.7, 5000)
    tokens = rng.integers(200, 257, 5000)
    half = rng.permutation(5000)[:2500]
    target = DosTarget(float(x[half].mean()), float(x[half].var()))
    selection = select_dos(x, tokens, target, int(0.25 * tokens.sum()))
    assert selection.reached(0.02)
    gap = selection.gap()
    assert abs(gap["mean_rel"]) < 1e-3 and abs(gap["std_rel"]) < 1e-3
    assert gap["objective"] == selection.objective[-1]


def test_reports_the_gap_to_an_unreachable_target():
    rng = np.random.default_rng(12)
    x = rng.lognormal(3.0, 0.5, 2000)
    tokens = rng.integers(200, 257, 2000)
    budget = int(0.2 * tokens.sum())

    below = select_dos(x, tokens, DosTarget(0.5 * x.min(), x.var()), budget)
    assert not below.reached(0.02)
    assert below.gap()["mean_rel"] >= (x.min() - 0.5 * x.min()) / (0.5 * x.min())  # the mean cannot go below min

    widest = ((x.max() - x.min()) / 2) ** 2  # no subset's variance exceeds this (Popoviciu)
    too_wide = select_dos(x, tokens, DosTarget(float(x.mean()), 2.0 * widest), budget)
    assert not too_wide.reached(0.02)
    assert too_wide.gap()["std_rel"] <= 1 / math.sqrt(2) - 1 + 1e-12
    assert too_wide.gap()["objective"] > 0.1


def test_a_smaller_budget_is_a_prefix_of_a_larger_one():
    rng = np.random.default_rng(5)
    x = np.round(rng.lognormal(2.0, 0.8, 1500), 1)
    tokens = rng.integers(1, 500, 1500)
    target = DosTarget(0.7 * x.mean(), 1.5 * x.var())
    big = select_dos(x, tokens, target, int(0.6 * tokens.sum()))
    for budget in (1, int(tokens[big.order[0]]), int(0.01 * tokens.sum()), int(0.3 * tokens.sum()), big.tokens):
        small = select_dos(x, tokens, target, budget)
        steps = big.steps_for(budget)
        assert small.steps == steps
        assert np.array_equal(small.order, big.order[:steps])
        assert np.array_equal(small.objective, big.objective[:steps])
        assert big.cumulative_tokens[steps - 1] >= budget and (steps == 1 or big.cumulative_tokens[steps - 2] < budget)
        mean, var = big.prefix_stats(steps)
        chosen = x[big.order[:steps]]
        assert mean == pytest.approx(chosen.mean(), rel=1e-12) and var == pytest.approx(chosen.var(), rel=1e-9)
        assert (small.mean, small.var) == pytest.approx((mean, var), rel=1e-12)
        assert small.gap() == pytest.approx(big.gap(steps), rel=1e-9)
        assert big.objective[steps - 1] == pytest.approx(target.objective(mean, var), rel=1e-6, abs=1e-12)
    assert big.steps_for(big.tokens) == big.steps and big.prefix_stats(big.steps) == (big.mean, big.var)


def test_the_first_pick_is_the_chunk_nearest_the_target_mean():
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        x = rng.lognormal(2.5, 0.6, 300)
        mu = float(rng.uniform(x.min() - 5, x.max() + 5))
        target = DosTarget(mu, float(x.var()))
        selection = select_dos(x, rng.integers(200, 257, 300), target, 1)
        assert selection.steps == 1
        assert selection.order[0] == np.argmin(np.abs(x - mu))
        assert selection.objective[0] == pytest.approx(target.objective(x[selection.order[0]], 0.0), rel=1e-12)


def test_cubic_minima_match_numpy_roots():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        p, q = rng.normal(size=2) * 10 ** rng.uniform(-4, 4, 2)
        roots = np.roots([1.0, 0.0, p, q])
        real = np.sort(roots[np.abs(roots.imag) <= 1e-7 * max(1.0, np.abs(roots).max())].real)
        minima = _cubic_minima(float(p), float(q))
        expected = [real[0]] if len(minima) == 1 else [real[0], real[-1]]
        assert len(minima) in (1, 2)
        assert minima == pytest.approx(expected, rel=1e-6, abs=1e-6 * max(1.0, np.abs(real).max()))
    assert _cubic_minima(0.0, -8.0) == (2.0,)
    assert _cubic_minima(-3.0, 0.0) == pytest.approx((-math.sqrt(3), math.sqrt(3)))
    assert _cubic_minima(1e-320, -8.0) == _cubic_minima(-1e-320, -8.0) == (2.0,)  # p too small to divide by
    assert math.isnan(_cubic_minima(math.inf, 1.0)[0])  # overflowed inputs give a non-finite root, never an error


def test_pool_too_small_names_the_numbers():
    with pytest.raises(PoolTooSmall, match=r"the pool holds 30 tokens in 3 chunks; the budget is 31") as info:
        select_dos([1.0, 2.0, 3.0], [10, 10, 10], DosTarget(2.0, 1.0), 31)
    assert isinstance(info.value, DosError) and isinstance(info.value, ValueError)
    assert (info.value.pool_tokens, info.value.n_chunks, info.value.budget_tokens) == (30, 3, 31)
    with pytest.raises(PoolTooSmall, match=r"0 tokens in 0 chunks; the budget is 5"):
        select_dos_brute_force([], [], DosTarget(2.0, 1.0), 5)


@pytest.mark.parametrize(
    ("values", "tokens", "budget", "kwargs", "match"),
    [
        ([1.0, 2.0], [10], 5, {}, r"shape \(2,\).*shape \(1,\)"),
        ([1.0, math.nan, 3.0], [1, 1, 1], 1, {}, r"values\[1\] = nan"),
        ([1.0, 2.0, math.inf], [1, 1, 1], 1, {}, r"values\[2\] = inf"),
        ([1.0, 2.0, 3.0], [1, 0, 1], 1, {}, r"n_tokens\[1\] = 0"),
        ([1.0, 2.0, 3.0], [1, 2, -4], 1, {}, r"n_tokens\[2\] = -4"),
        ([1.0, 2.0, 3.0], [1.0, 2.5, 1.0], 1, {}, r"n_tokens\[1\] = 2.5"),
        ([1.0, 2.0, 3.0], [1, 1, 1], 0, {}, r"budget_tokens .* got 0"),
        ([1.0, 2.0, 3.0], [1, 1, 1], 1.5, {}, r"budget_tokens .* got 1.5"),
        ([1.0, 2.0, 3.0], [1, 1, 1], True, {}, r"budget_tokens .* got True"),
        ([1.0, 2.0, 3.0], [1, 1, 1], 1, {"tie_keys": [0.5, 1.5, 2.5]}, r"tie_keys must be integers or strings"),
        ([1.0, 2.0, 3.0], [1, 1, 1], 1, {"tie_keys": [1, 2]}, r"tie_keys \(shape \(2,\)\)"),
    ],
)
def test_bad_inputs_raise_dos_error(values, tokens, budget, kwargs, match):
    for select in (select_dos, select_dos_brute_force):
        with pytest.raises(DosError, match=match):
            select(values, tokens, DosTarget(2.0, 1.0), budget, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mean": 0.0, "var": 1.0}, "mean must be non-zero"),
        ({"mean": math.nan, "var": 1.0}, "mean must be finite, got nan"),
        ({"mean": 2.0, "var": 0.0}, r"variance must be > 0, got 0.0"),
        ({"mean": 2.0, "var": -1.0}, r"variance must be > 0, got -1.0"),
        ({"mean": 2.0, "var": math.inf}, "variance must be finite"),
        ({"mean": 2.0, "var": 1.0, "w_mean": -1.0}, r"w_mean must be > 0, got -1.0"),
        ({"mean": 2.0, "var": 1.0, "w_var": 0.0}, r"w_var must be > 0, got 0.0"),
        ({"mean": 2.0, "var": 1e300}, r"default w_var .* is 0.0"),
        ({"mean": "2", "var": 1.0}, r"must be a real number, got '2'"),
    ],
)
def test_bad_targets_raise_dos_error(kwargs, match):
    with pytest.raises(DosError, match=match):
        DosTarget(**kwargs)


def test_target_weights_and_selection_queries():
    target = DosTarget(4, 2)
    assert (target.mean, target.var, target.weights, target.std) == (4.0, 2.0, (1 / 16, 1 / 4), math.sqrt(2))
    assert DosTarget(4.0, 2.0, w_mean=3.0, w_var=5.0).objective(5.0, 4.0) == 3.0 + 20.0
    selection = select_dos([1.0, 4.0, 7.0, 3.0], [5, 5, 5, 5], target, 12)
    assert selection.steps == 3 and selection.tokens == 15 and selection.budget_tokens == 12
    assert selection.std == math.sqrt(selection.var)
    assert selection.steps_for(5) == 1 and selection.steps_for(6) == 2 and selection.steps_for(15) == 3
    with pytest.raises(DosError, match=r"holds 15 tokens in 3 steps; asked for 16"):
        selection.steps_for(16)
    with pytest.raises(DosError, match=r"tokens must be a positive integer, got 0"):
        selection.steps_for(0)
    with pytest.raises(DosError, match=r"steps must be an integer in \[1, 3\], got 0"):
        selection.prefix_stats(0)
    with pytest.raises(DosError, match=r"in \[1, 3\], got 4"):
        selection.gap(4)
    assert not selection.order.flags.writeable
    with pytest.raises(AttributeError):
        selection.mean = 0.0  # frozen
