"""The landscape answer: the size-only null, the reachable region, the optimum as a usable answer, the basis."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from cpt.laws.errors import DegenerateData
from cpt.laws.ppl.answer import AnswerRules, compare_with_size_law, landscape_answer
from cpt.laws.ppl.law import PplLawOptions, PplObservations, fit_ppl_law, g
from cpt.laws.ppl.optimum import PplOptimum, ppl_optimum, region_grid
from cpt.laws.ppl.region import SearchRegion, TrustRegion, reachable_region
from cpt.laws.ppl.size_law import fit_size_law
from tests.cpt.test_ppl_law import MU, SIGMA, TRUE, D, synthetic

REGIMES = tuple(f"r{i // 3}" for i in range(30))
RULES = AnswerRules(n_gain_bootstrap=500)
BOX = TrustRegion.box(6, 40, 2, 18)


def grouped(obs: PplObservations) -> PplObservations:
    return PplObservations(obs.mu, obs.sigma, obs.D, obs.loss, obs.run_ids, REGIMES)


@pytest.fixture(scope="module")
def landscape_matters():
    obs = grouped(synthetic(0, noise_sd=0.003))
    fit = fit_ppl_law(obs, PplLawOptions(n_bootstrap=60), np.random.default_rng(1))
    return obs, fit, fit_size_law(obs, PplLawOptions())


@pytest.fixture(scope="module")
def landscape_does_not_matter():
    """Loss depends on D only (a size law plus noise); μ, σ are those of the pilots, uninformative."""
    rng = np.random.default_rng(3)
    loss = (2.0 + 400.0 * D**-0.3) * np.exp(0.01 * rng.standard_normal(30))
    obs = PplObservations(MU, SIGMA, D, loss, tuple(f"run-{i}" for i in range(30)), REGIMES)
    fit = fit_ppl_law(obs, PplLawOptions(n_bootstrap=40), np.random.default_rng(1))
    return obs, fit, fit_size_law(obs, PplLawOptions())


def test_size_law_recovers_a_pure_size_law(landscape_does_not_matter):
    _, _, size = landscape_does_not_matter
    truth = 2.0 + 400.0 * D**-0.3
    assert np.max(np.abs(size.predict(D) / truth - 1)) < 0.01
    assert size.alpha > 0 and size.heldout_rmse is not None and size.converged
    assert json.dumps(size.to_json())


def test_the_landscape_law_beats_the_size_law_when_the_landscape_matters(landscape_matters):
    obs, fit, size = landscape_matters
    c = compare_with_size_law(obs, fit, size, RULES, np.random.default_rng(0))
    assert c.beats_size_law and c.gain_ci[0] > 0 and c.gain > 0
    assert c.ppl_heldout_rmse < 0.5 * c.size_heldout_rmse
    assert set(c.within_size_r2) == {1e8, 3e8, 1e9} and c.mean_within_size_r2 > 0.9
    assert c.mean_rank_correlation > 0.9
    assert max(c.size_law_within_size_r2.values()) <= 0.0  # the null explains nothing within a size


def test_no_landscape_effect_is_reported_as_such(landscape_does_not_matter):
    """The platform says so instead of reporting an optimum: basis 'size law', target = the random subset's."""
    obs, fit, size = landscape_does_not_matter
    c = compare_with_size_law(obs, fit, size, RULES, np.random.default_rng(0))
    assert not c.beats_size_law and c.gain_ci[0] <= 0
    assert c.mean_within_size_r2 < 0.5
    optimum = ppl_optimum(fit.params, SearchRegion(BOX), float(D.max()), fit.draws)
    answer = landscape_answer(obs, fit, c, optimum, RULES, random_regime="r4")
    assert answer.basis == "size law"
    assert (answer.mu, answer.sigma) == (obs.mu[14], obs.sigma[14])  # r4 at the largest size
    assert "no measurable effect" in answer.reasons[0] and "size-only law" in answer.baselines[0]


def test_law_optimum_when_the_law_earns_it(landscape_matters):
    obs, fit, size = landscape_matters
    c = compare_with_size_law(obs, fit, size, RULES, np.random.default_rng(0))
    optimum = ppl_optimum(fit.params, SearchRegion(BOX), float(D.max()), fit.draws)
    answer = landscape_answer(obs, fit, c, optimum, RULES, random_regime="r9")
    assert answer.basis == "law optimum" and answer.optimum_beats_best_pilot
    assert (answer.mu, answer.sigma) == (optimum.mu, optimum.sigma)
    assert optimum.predicted_loss < answer.best_pilot.loss
    assert answer.random_pilot is not None and answer.random_pilot.regime == "r9"
    assert json.dumps(answer.to_json())


def test_best_pilot_regime_when_the_optimum_does_not_beat_it(landscape_matters):
    obs, fit, size = landscape_matters
    c = compare_with_size_law(obs, fit, size, RULES, np.random.default_rng(0))
    far = ppl_optimum(fit.params, SearchRegion(TrustRegion.box(36, 40, 2, 3)), float(D.max()))  # a poor corner
    answer = landscape_answer(obs, fit, c, far, RULES, random_regime=None)
    assert answer.basis == "best pilot regime" and not answer.optimum_beats_best_pilot
    best = int(np.argmin(np.where(D.max() == D, obs.loss, np.inf)))
    assert (answer.mu, answer.sigma) == (obs.mu[best], obs.sigma[best])
    assert any("not predicted to beat the best pilot regime" in r for r in answer.reasons)


# --- the reachable region ------------------------------------------------------------------------------------------


def test_reachable_region_holds_every_subset_and_its_boundaries_are_reached():
    rng = np.random.default_rng(0)
    pool = rng.lognormal(5.5, 0.4, 14)
    region = reachable_region(pool, 4, grid_size=2000)
    stats = [(pool[list(c)].mean(), pool[list(c)].std()) for c in itertools.combinations(range(14), 4)]
    mus, sds = np.array(stats).T
    assert region.contains(mus, sds, rtol=0.02).mean() > 0.97  # brute force: every subset's (μ, σ) lies within
    # the extremes are exact: the lowest and highest four chunks, and the widest spread at the pool's middle
    ordered = np.sort(pool)
    assert region.mu[0] == pytest.approx(ordered[:4].mean()) and region.mu[-1] == pytest.approx(ordered[-4:].mean())
    assert region.sigma_hi.max() == pytest.approx(sds.max(), rel=0.02)
    assert region.sigma_lo.min() == pytest.approx(sds.min(), rel=0.05)
    assert not region.contains(ordered.mean(), 10 * sds.max())


def test_reachable_region_in_variance_and_errors():
    pool = np.linspace(100, 1000, 50)
    std, var = reachable_region(pool, 10), reachable_region(pool, 10, squared=True)
    assert var.sigma_hi == pytest.approx(std.sigma_hi**2)
    with pytest.raises(DegenerateData, match="must fit in the domain pool"):
        reachable_region(pool, 51)
    assert json.dumps(std.to_json())


# --- the optimum ---------------------------------------------------------------------------------------------------


def test_optimum_interior_for_the_true_law():
    opt = ppl_optimum(TRUE, SearchRegion(BOX), 1e9)
    assert not opt.on_boundary and opt.boundary_sides == ()
    assert opt.mu == pytest.approx(20.0, rel=0.01) and opt.sigma == pytest.approx(10.0, rel=0.01)
    dense = g(TRUE, np.linspace(6, 40, 400)[:, None], np.linspace(2, 18, 400)[None, :])
    assert opt.g >= dense.max() - 1e-4
    assert opt.predicted_loss == pytest.approx(float(TRUE.predict(opt.mu, opt.sigma, 1e9)))


def test_optimum_on_the_boundary_says_which_side():
    low_mu = ppl_optimum(TRUE, SearchRegion(TrustRegion.box(6, 15, 2, 18)), 1e9)
    assert low_mu.boundary_sides == ("mu_max (pilot hull)",) and low_mu.mu == pytest.approx(15.0)
    # a pool of PPL 14…26, whose subsets cannot spread beyond σ ≈ 6: the optimum sits on the reachable σ boundary
    narrow = ppl_optimum(TRUE, SearchRegion(BOX, reachable_region(np.linspace(14, 26, 200), 20)), 1e9)
    assert "sigma_max (reachable)" in narrow.boundary_sides and narrow.sigma <= 6.0


def test_optimum_spread_and_near_optimal_set(landscape_matters):
    _, fit, _ = landscape_matters
    opt = ppl_optimum(fit.params, SearchRegion(BOX), 1e9, fit.draws)
    assert opt.mu_ci[0] <= 20.0 <= opt.mu_ci[1] and opt.sigma_ci[0] <= 10.0 <= opt.sigma_ci[1]
    assert opt.loss_ci[0] <= opt.predicted_loss <= opt.loss_ci[1]
    near = opt.near_optimal
    assert 0 < near.share < 0.5
    assert near.mu_range[0] <= opt.mu <= near.mu_range[1] and near.sigma_range[0] <= opt.sigma <= near.sigma_range[1]
    assert 0.0 <= opt.boundary_share < 0.2
    assert json.dumps(opt.to_json(), allow_nan=False)


def test_a_gap_in_the_search_region_is_not_searched():
    from cpt.laws.ppl.region import ReachableRegion

    mu = np.linspace(6, 40, 200)
    hi = np.where((mu > 17) & (mu < 23), 1.5, 18.0)  # around μ 20 the pool cannot spread beyond σ 1.5
    gap = ReachableRegion(50, mu, np.full(mu.size, 1.0), hi)
    region = SearchRegion(TrustRegion.box(6, 40, 2, 18), gap)
    grid = region_grid(region)
    assert not grid.valid[(grid.mu > 17.5) & (grid.mu < 22.5)].any()
    assert grid.valid[(grid.mu < 16.5) | (grid.mu > 23.5)].all()
    opt = ppl_optimum(TRUE, region, 1e9)  # the true optimum (20, 10) is in the gap: the answer lies at its edge
    assert not 17.5 < opt.mu < 22.5 and "mu (edge of a gap in the region)" in opt.boundary_sides


def test_search_region_refuses_a_pool_that_misses_the_pilots():
    pool = np.linspace(500, 600, 100)
    with pytest.raises(DegenerateData, match="do not overlap"):
        region_grid(SearchRegion(BOX, reachable_region(pool, 10)))


def test_the_optimum_dataclass_is_what_the_answer_uses():
    assert {"near_optimal", "mu_ci", "boundary_sides"} <= set(PplOptimum.__dataclass_fields__)


def test_trust_region_is_the_pilots_hull_not_their_bounding_box():
    # pilots along a band from (10, 2) to (40, 18): the bounding box's corner (40, 2) is far from every pilot
    mu = np.array([10.0, 20.0, 30.0, 40.0, 25.0])
    sigma = np.array([2.0, 8.0, 12.0, 18.0, 12.0])
    trust = TrustRegion.around(mu, sigma, margin=0.0)
    lo, hi = trust.sigma_interval(np.array([10.0, 25.0, 40.0, 45.0]))
    assert lo[0] == pytest.approx(2.0) and hi[2] == pytest.approx(18.0) and np.isnan(lo[3])
    assert lo[1] > 8.0  # at μ = 25 the hull starts well above the box's σ_min of 2
    # the true law's optimum (20, 10) is outside this thin hull: the answer stays inside it, on its edge
    opt = ppl_optimum(TRUE, SearchRegion(trust), 1e9)
    inside_lo, inside_hi = trust.sigma_interval(np.array([opt.mu]))
    assert inside_lo[0] - 1e-9 <= opt.sigma <= inside_hi[0] + 1e-9 and opt.on_boundary
    wider = TrustRegion.around(mu, sigma, margin=0.5)
    assert wider.mu_range[1] > 40.0 and wider.mu_range[0] >= 5.0  # widened, never below half the smallest pilot


def test_the_answer_check_fails_a_law_optimum_whose_law_failed_its_gate_but_not_an_observed_answer():
    from cpt.laws.gates import GateResult, landscape_answer_gate
    from cpt.laws.ppl.answer import LandscapeAnswer, PilotPoint

    best = PilotPoint("r1", "window", 500.0, 60.0, 48_000.0, 5.9)
    failed_law = GateResult(False, ("within-size held-out R² -0.17 is not above 0",))

    def answer(basis, mu=500.0, sigma=60.0):
        return LandscapeAnswer(basis, mu, sigma, (), (), best, None, False)

    refused = landscape_answer_gate(answer("law optimum"), failed_law)
    assert not refused.passed and "rests on the law, whose gate failed: within-size" in refused.problems[0]
    assert landscape_answer_gate(answer("law optimum"), GateResult(True, ())).passed
    assert landscape_answer_gate(answer("best pilot regime"), failed_law).passed
    assert landscape_answer_gate(answer("size law"), failed_law).passed
    assert not landscape_answer_gate(answer("best pilot regime", sigma=float("nan")), failed_law).passed
