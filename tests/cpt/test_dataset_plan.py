"""The dataset's rules as pure functions: budgets, the interleave, the DOS target's terms, and the blocking checks."""

import math

import numpy as np
import pytest

from cpt.dataset import checks
from cpt.dataset.plan import (
    DatasetPlanError,
    MixtureBudget,
    check_pools,
    dos_target,
    interleave,
    landscape_of,
    mixture_rows,
    statistic,
    tokens_prefix,
)


@pytest.mark.parametrize("ratio", [0.0, 0.125, 1 / 3, 0.5, 0.9, 1.0])
def test_interleave_keeps_the_running_domain_share_within_one_chunk_of_the_ratio(ratio):
    rng = np.random.default_rng(7)
    domain = rng.integers(50, 256, int(ratio * 400)).tolist()
    general = rng.integers(50, 256, int((1 - ratio) * 400)).tolist()
    order = interleave(domain, general, ratio)
    assert sorted(i for r, i in order if r == "domain") == list(range(len(domain)))  # each chunk once, in order
    assert [i for r, i in order if r == "general"] == list(range(len(general)))
    dom = total = used_d = used_g = 0
    for role, i in order:
        if used_d < len(domain) and used_g < len(general):  # while both roles remain
            assert abs(dom - ratio * total) <= max(ratio, 1 - ratio) * 256
        dom += domain[i] if role == "domain" else 0
        total += domain[i] if role == "domain" else general[i]
        used_d, used_g = used_d + (role == "domain"), used_g + (role == "general")


def test_mixture_rows_record_why_each_chunk_is_there():
    domain = [
        {"step": s, "chunk_id": f"d{s}", "doc_id": "D", "source": "med", "n_tokens": 100, "ppl": 9.0} for s in range(2)
    ]
    general = [{"chunk_id": f"g{i}", "doc_id": "G", "source": "books", "n_tokens": 100, "ppl": 20.0} for i in range(2)]
    rows = mixture_rows(
        domain, general, 0.5, {"selection_version": 3}, domain_reason="dos {step}", general_reason="replay {draw}"
    )
    assert [r["chunk_id"] for r in rows] == ["d0", "g0", "d1", "g1"]
    assert [r["reason"] for r in rows] == ["dos 0", "replay 0", "dos 1", "replay 1"]
    assert [r["position"] for r in rows] == [0, 1, 2, 3] and {r["selection_version"] for r in rows} == {3}
    assert [r["dos_step"] for r in rows] == [0, None, 1, None] and [r["replay_draw"] for r in rows] == [
        None,
        0,
        None,
        1,
    ]


def test_a_pool_too_small_is_one_error_naming_every_shortfall():
    budget = MixtureBudget(10_000, 0.25)
    assert (budget.domain_tokens, budget.general_tokens) == (2_500, 7_500)
    check_pools(budget, 2_500, 7_500)  # exactly enough
    with pytest.raises(DatasetPlanError) as err:
        check_pools(budget, 2_000, 7_000)
    message = str(err.value)
    assert "2,500 domain tokens are needed, but the DOS selection holds 2,000" in message
    assert "7,500 general tokens are needed, but the general train pool" in message and "7,000" in message
    with pytest.raises(DatasetPlanError, match="mixture ratio must lie in"):
        MixtureBudget(100, 1.5)


def test_tokens_prefix_and_the_target_in_the_fits_terms():
    assert tokens_prefix([10, 10, 10], 15) == 2 and tokens_prefix([10, 10, 10], 20) == 2 and tokens_prefix([5], 0) == 0
    with pytest.raises(DatasetPlanError, match="hold 30 tokens, fewer than 31"):
        tokens_prefix([10, 10, 10], 31)
    assert dos_target(10.0, 3.0, "std").var == 9.0 and dos_target(10.0, 3.0, "var").var == 3.0
    values = statistic(np.array([np.e, np.e**3]), "log")
    assert landscape_of(values, "std") == pytest.approx((2.0, 1.0)) and landscape_of(values, "var") == pytest.approx(
        (2.0, 1.0)
    )
    assert landscape_of(statistic(np.array([1.0, 3.0]), "raw"), "var") == pytest.approx((2.0, 1.0))


def test_the_checks_fail_on_what_they_guard():
    tol = checks.Tolerances()
    budget = MixtureBudget(1000, 0.5)
    assert checks.budget_and_ratio([500, 505], ["domain", "general"], budget, tol).passed
    off = checks.budget_and_ratio([600, 450], ["domain", "general"], budget, tol)
    assert not off.passed and len(off.problems) == 2  # 5 % over budget, share 0.571

    group = {"a": "g1", "b": "g2", "c": "g3"}
    clean = checks.no_eval_leakage(["a0", "b0"], ["a", "b"], group, {"x0"}, {"x"}, {"gx"})
    assert clean.passed
    leaks = checks.no_eval_leakage(["x0", "b0", "c0"], ["a", "b", "c"], group | {"x": "gx"}, {"x0"}, {"b"}, {"g3"})
    assert not leaks.passed and leaks.values == {
        "eval_chunks": 1,
        "eval_documents": 1,
        "eval_groups": 1,
        "unknown_documents": 0,
    }

    assert checks.no_duplicate_chunk(["a", "b"]).passed and not checks.no_duplicate_chunk(["a", "b", "a"]).passed

    ppl = [8.0, 10.0, 12.0]  # μ 10, σ 1.633
    near = checks.landscape_reached(ppl, 10.0, 1.633, ppl_space="raw", sigma_kind="std", tol=tol)
    assert near.passed and near.values["mu_rel_gap"] == pytest.approx(0.0)
    far = checks.landscape_reached(ppl, 10.0, 3.0, ppl_space="raw", sigma_kind="std", tol=tol)
    assert not far.passed and "sigma" in far.problems[0]
    log = checks.landscape_reached(ppl, math.log(10.0), 0.2, ppl_space="log", sigma_kind="std", tol=tol)
    assert not log.passed  # log-space σ of these chunks is 0.165, 18 % off
    assert checks.landscape_reached([], 10.0, 1.0, ppl_space="raw", sigma_kind="std", tol=tol).passed  # R = 0
