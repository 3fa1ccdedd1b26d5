"""Follow-up pilots: when a round is asked for, where its regimes go, and every reason the rounds stop."""

import pytest

from cpt.laws.ppl.followup import FollowupRules, decide_followup, followup_name, followup_round, rounds_done
from cpt.laws.ppl.optimum import PplOptimum


def _optimum(mu=20.0, sigma=8.0, sides=(), mu_ci=(19.5, 20.5), sigma_ci=(7.8, 8.2)) -> PplOptimum:
    return PplOptimum(mu, sigma, 1.0, 48_000.0, 3.0, bool(sides), tuple(sides), mu_ci, sigma_ci, None, None, None)


GRID = [("window-c0.15-w0.20", 12.0, 4.0), ("window-c0.85-w0.20", 40.0, 12.0), ("random", 25.0, 15.0)]


def test_names_carry_their_round():
    assert followup_name(2, "opt") == "f2-opt"
    assert followup_round("f2-opt") == 2 and followup_round("f11-lo") == 11
    assert followup_round("window-c0.15-w0.20") is None and followup_round("random") is None
    assert rounds_done(["random", "f1-opt", "f2-hi"]) == 2 and rounds_done(["random"]) == 0


def test_an_interior_narrow_optimum_needs_no_round():
    decision = decide_followup(_optimum(), "law optimum", GRID, FollowupRules())
    assert not decision.needed and "narrow" in decision.reason and decision.rounds_done == 0


def test_a_boundary_optimum_asks_for_the_optimum_and_either_side_of_it():
    decision = decide_followup(_optimum(sides=("sigma_max (pilot hull)",)), "law optimum", GRID, FollowupRules())
    assert decision.needed and "boundary" in decision.reason
    targets = {t.label: t for t in decision.targets}
    assert set(targets) == {"opt", "lo", "hi"}
    assert (targets["opt"].mu, targets["opt"].sigma) == (20.0, 8.0)
    # μ's interval (±2.5 %) is narrower than the 5 % minimum step: the points lie 5 % away, along the wider axis
    assert targets["lo"].mu == pytest.approx(19.0) and targets["hi"].mu == pytest.approx(21.0)
    assert targets["lo"].sigma == targets["hi"].sigma == 8.0


def test_a_wide_interval_asks_for_a_round_along_its_axis():
    decision = decide_followup(_optimum(sigma_ci=(4.0, 12.0)), "law optimum", GRID, FollowupRules())
    assert decision.needed and "wide" in decision.reason and "σ ±50%" in decision.reason
    targets = {t.label: t for t in decision.targets}
    # half the interval (4) is 50 % of σ̂: the step stops at 25 %, so DOS is never sent to a degenerate subset
    assert targets["lo"].sigma == pytest.approx(6.0) and targets["hi"].sigma == pytest.approx(10.0)
    assert targets["lo"].mu == targets["hi"].mu == 20.0


def test_rounds_stop_at_the_limit_and_say_what_is_still_unsettled():
    points = [*GRID, ("f1-lo", 15.0, 8.0), ("f2-hi", 30.0, 8.0)]
    decision = decide_followup(_optimum(sides=("mu_max (reachable)",)), "law optimum", points, FollowupRules(2))
    assert not decision.needed and decision.rounds_done == 2
    assert "round limit (2)" in decision.reason and "mu_max (reachable)" in decision.reason


def test_rounds_stop_when_a_followup_already_sits_at_the_optimum():
    points = [*GRID, ("f1-opt", 20.1, 8.05)]
    decision = decide_followup(_optimum(sides=("mu_max (reachable)",)), "law optimum", points, FollowupRules(5))
    assert not decision.needed and "already sits at the optimum" in decision.reason and "f1-opt" in decision.reason


def test_no_round_without_a_landscape_effect():
    decision = decide_followup(_optimum(sides=("mu_min (pilot hull)",)), "size law", GRID, FollowupRules())
    assert not decision.needed and "size law" in decision.reason


def test_zero_rounds_configured_means_none():
    decision = decide_followup(_optimum(sides=("mu_min (pilot hull)",)), "law optimum", GRID, FollowupRules(0))
    assert not decision.needed and "round limit (0)" in decision.reason
