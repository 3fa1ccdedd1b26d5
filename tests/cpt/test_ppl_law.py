"""The perplexity-aware data law (Paper A): fit recovery, intervals, leave-one-run-out, optimum, typed errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cpt.laws.errors import DegenerateData, LawFitError, NoConvergence, TooFewPoints
from cpt.laws.ppl_law import (
    PARAM_NAMES,
    PplLawOptions,
    PplLawParams,
    PplObservations,
    SupportRegion,
    fit_ppl_law,
    g,
    ppl_optimum,
    sample_observations,
)

# A bowl with its maximum of g at (μ, σ) ≈ (20, 10): α0 + α1σ = β0 + β1μ = 0.4 there, the interaction exponents
# chosen so that the gradient of g vanishes. Losses span about 2.5–4.3.
TRUE = PplLawParams(E=2.0, D_c=2100.0, alpha0=0.5335, alpha1=-0.01335, beta0=0.5737, beta1=-0.00869, alpha_D=0.3)
REGIMES = [(6, 2), (8, 5), (10, 3), (12, 8), (15, 5), (18, 12), (22, 6), (26, 15), (32, 9), (40, 18)]
SIZES = [1e8, 3e8, 1e9]
MU = np.array([m for m, _ in REGIMES for _ in SIZES], dtype=float)
SIGMA = np.array([s for _, s in REGIMES for _ in SIZES], dtype=float)
D = np.array([d for _ in REGIMES for d in SIZES])
PILOT_BOX = SupportRegion(6, 40, 2, 18)


def synthetic(seed: int, noise_sd: float = 0.005) -> PplObservations:
    return sample_observations(TRUE, MU, SIGMA, D, noise_sd, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def fitted():
    obs = synthetic(0)
    return obs, fit_ppl_law(obs, PplLawOptions(n_bootstrap=100), np.random.default_rng(1))


def test_predict_is_the_law_and_vectorised():
    mu, sigma, d = 12.0, 4.0, 5e8
    exponent = (TRUE.alpha0 + TRUE.alpha1 * sigma) * math.log(mu) + (TRUE.beta0 + TRUE.beta1 * mu) * math.log(sigma)
    expected = TRUE.E + TRUE.D_c / (math.exp(exponent) * d**TRUE.alpha_D)
    assert TRUE.predict(mu, sigma, d) == pytest.approx(expected, rel=1e-12)
    assert float(g(TRUE, mu, sigma)) == pytest.approx(exponent, rel=1e-12)
    grid = TRUE.predict(MU[:, None], SIGMA[:, None], np.array([1e8, 1e9])[None, :])
    assert grid.shape == (len(MU), 2)
    assert (grid[:, 1] < grid[:, 0]).all()  # more tokens, lower loss
    assert TRUE.as_dict() == {n: getattr(TRUE, n) for n in PARAM_NAMES}


def test_sample_observations_noise_is_lognormal_on_the_loss():
    rng = np.random.default_rng(3)
    mu, sigma, d = np.full(20000, 15.0), np.full(20000, 5.0), np.full(20000, 3e8)
    obs = sample_observations(TRUE, mu, sigma, d, 0.02, rng)
    log_ratio = np.log(obs.loss / TRUE.predict(mu, sigma, d))
    assert abs(log_ratio.mean()) < 1e-3
    assert log_ratio.std() == pytest.approx(0.02, rel=0.03)
    assert len(set(obs.run_ids)) == 20000


def test_fit_recovers_the_law(fitted):
    obs, fit = fitted
    assert fit.converged
    assert fit.n_points == 30 and fit.n_runs == 30
    assert fit.r2 > 0.995
    assert fit.rmse < 0.03
    truth = TRUE.predict(MU, SIGMA, D)
    assert np.max(np.abs(fit.params.predict(MU, SIGMA, D) / truth - 1)) < 0.01
    # extrapolation to a 3× larger budget stays accurate too
    assert np.max(np.abs(fit.params.predict(MU, SIGMA, 3e9) / TRUE.predict(MU, SIGMA, 3e9) - 1)) < 0.02
    assert fit.params.D_c > 0 and fit.params.alpha_D > 0 and 0 < fit.params.E < obs.loss.min()
    assert fit.residuals.shape == (30,)


def test_true_parameters_inside_bootstrap_intervals(fitted):
    _, fit = fitted
    assert fit.n_bootstrap_ok == 100
    assert set(fit.ci) == set(PARAM_NAMES)
    for name, (lo, hi) in fit.ci.items():
        assert lo < getattr(fit.params, name) < hi, name  # the point estimate sits inside
        assert lo <= getattr(TRUE, name) <= hi, (name, lo, hi, getattr(TRUE, name))


def test_leave_one_run_out_error_is_small(fitted):
    _, fit = fitted
    assert set(fit.loo_errors) == {f"run-{i}" for i in range(30)}
    assert fit.loo_rmse is not None
    assert fit.rmse <= fit.loo_rmse < 0.04  # held-out error exceeds the in-sample error, and stays small
    assert max(fit.loo_errors.values()) < 0.1


def test_leave_one_run_out_drops_whole_runs():
    """Rows of one run are held out together: with each regime's three sizes as one run there are 10 errors."""
    base = synthetic(0)
    runs = tuple(f"regime-{i // 3}" for i in range(30))
    obs = PplObservations(base.mu, base.sigma, base.D, base.loss, runs)
    fit = fit_ppl_law(obs, PplLawOptions(n_bootstrap=5), np.random.default_rng(0))
    assert set(fit.loo_errors) == {f"regime-{i}" for i in range(10)}
    assert fit.n_runs == 10 and fit.n_bootstrap_ok == 5


def test_to_json_is_plain(fitted):
    _, fit = fitted
    out = json.loads(json.dumps(fit.to_json(), allow_nan=False))
    assert out["params"]["E"] == pytest.approx(fit.params.E)
    assert out["options"]["sigma_kind"] == "std" and out["options"]["ppl_space"] == "raw"
    assert out["ci"]["alpha_D"] == list(fit.ci["alpha_D"])
    assert isinstance(out["warnings"], list)


def test_options_are_recorded_not_applied():
    obs = synthetic(0)
    var = PplObservations(obs.mu, obs.sigma**2, obs.D, obs.loss, obs.run_ids)
    options = PplLawOptions(sigma_kind="var", ppl_space="log", n_bootstrap=0, leave_one_run_out=False)
    fit = fit_ppl_law(var, options, np.random.default_rng(0))
    assert fit.options.sigma_kind == "var" and fit.to_json()["options"]["ppl_space"] == "log"
    assert fit.ci == {} and fit.loo_rmse is None
    with pytest.raises(ValueError, match="sigma_kind"):
        PplLawOptions(sigma_kind="iqr")  # type: ignore[arg-type]


def test_optimum_interior_for_the_true_law():
    opt = ppl_optimum(TRUE, PILOT_BOX, reference=(40.0, 18.0))
    assert not opt.on_boundary and opt.boundary_sides == ()
    assert opt.mu == pytest.approx(20.0, rel=2e-3) and opt.sigma == pytest.approx(10.0, rel=2e-3)
    h = 1e-5  # a stationary point of g
    assert abs(float(g(TRUE, opt.mu + h, opt.sigma) - g(TRUE, opt.mu - h, opt.sigma)) / (2 * h)) < 1e-6
    assert abs(float(g(TRUE, opt.mu, opt.sigma + h) - g(TRUE, opt.mu, opt.sigma - h)) / (2 * h)) < 1e-6
    dense = g(TRUE, np.linspace(6, 40, 400)[:, None], np.linspace(2, 18, 400)[None, :])
    assert opt.g >= dense.max() - 1e-12
    expected_gain = 1 - math.exp(-(opt.g - float(g(TRUE, 40.0, 18.0))))
    assert opt.predicted_gain == pytest.approx(expected_gain) and opt.predicted_gain > 0


def test_optimum_on_the_boundary():
    low_mu = ppl_optimum(TRUE, SupportRegion(6, 15, 2, 18))
    assert low_mu.on_boundary and low_mu.boundary_sides == ("mu_max",)
    assert low_mu.mu == pytest.approx(15.0) and 2 < low_mu.sigma < 18
    corner = ppl_optimum(TRUE, SupportRegion(25, 40, 12, 18))
    assert set(corner.boundary_sides) == {"mu_min", "sigma_min"}
    dense = g(TRUE, np.linspace(25, 40, 300)[:, None], np.linspace(12, 18, 300)[None, :])
    assert corner.g >= dense.max() - 1e-12
    assert corner.predicted_gain is None


def test_fitted_optimum_is_nearly_as_good_as_the_true_one(fitted):
    _, fit = fitted
    opt = ppl_optimum(fit.params, PILOT_BOX)
    best = ppl_optimum(TRUE, PILOT_BOX)
    regret = best.g - float(g(TRUE, opt.mu, opt.sigma))  # in log reducible loss
    assert not opt.on_boundary
    assert 0 <= regret < 0.02
    assert json.dumps(opt.to_json())


def test_support_region_around_pilot_points():
    region = SupportRegion.around(MU, SIGMA, margin=0.1)
    assert region.mu_max == pytest.approx(40 + 3.4) and region.sigma_max == pytest.approx(18 + 1.6)
    # the low sides are widened too, but never below half the smallest pilot value
    assert region.mu_min == pytest.approx(max(6 - 3.4, 3.0)) and region.sigma_min == pytest.approx(max(2 - 1.6, 1.0))
    assert SupportRegion.around(MU, SIGMA, margin=0.01).mu_min == pytest.approx(6 - 0.34)
    with pytest.raises(DegenerateData):
        SupportRegion(10, 5, 1, 2)


# --- typed errors ------------------------------------------------------------------------------------------------


def _with(obs: PplObservations, **changes) -> PplObservations:
    fields = {"mu": obs.mu, "sigma": obs.sigma, "D": obs.D, "loss": obs.loss, "run_ids": obs.run_ids}
    fields.update(changes)
    return PplObservations(**fields)


QUICK = PplLawOptions(n_bootstrap=0, leave_one_run_out=False)


def test_too_few_points():
    obs = synthetic(0)
    few = PplObservations(obs.mu[:8], obs.sigma[:8], obs.D[:8], obs.loss[:8], obs.run_ids[:8])
    with pytest.raises(TooFewPoints, match="need at least 9"):
        fit_ppl_law(few, QUICK, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mu": np.full(30, 12.0)}, "all μ are equal"),
        ({"sigma": np.full(30, 4.0)}, "all σ are equal"),
        ({"D": np.full(30, 1e8)}, "all D are equal"),
        ({"loss": np.where(np.arange(30) == 4, np.nan, 3.0)}, "loss has 1 non-finite"),
        ({"D": np.where(np.arange(30) == 2, -1.0, 1e8 + np.arange(30))}, "D has 1 non-finite or non-positive"),
        ({"run_ids": tuple("same" for _ in range(30))}, "one run"),
    ],
)
def test_degenerate_inputs(change, match):
    with pytest.raises(DegenerateData, match=match):
        fit_ppl_law(_with(synthetic(0), **change), QUICK, np.random.default_rng(0))


def test_collinear_regimes_are_rank_deficient():
    # Only two (μ, σ) regimes: the five μ/σ features cannot be separated.
    mu = np.tile([10.0, 20.0], 6)
    sigma = np.tile([3.0, 8.0], 6)
    d = np.repeat([1e8, 2e8, 4e8, 8e8, 1.6e9, 3.2e9], 2)
    obs = sample_observations(TRUE, mu, sigma, d, 0.0, np.random.default_rng(0))
    with pytest.raises(DegenerateData, match="rank-deficient"):
        fit_ppl_law(obs, QUICK, np.random.default_rng(0))


def test_mismatched_lengths():
    obs = synthetic(0)
    with pytest.raises(DegenerateData, match="differ in length"):
        _with(obs, loss=obs.loss[:-1])


def test_no_convergence_when_the_optimizer_cannot_finish():
    with pytest.raises(NoConvergence, match="every start"):
        fit_ppl_law(
            synthetic(0), PplLawOptions(n_bootstrap=0, leave_one_run_out=False, max_iter=1), np.random.default_rng(0)
        )


def test_errors_are_value_errors_with_advice():
    with pytest.raises(LawFitError) as info:
        fit_ppl_law(_with(synthetic(0), mu=np.full(30, 12.0)), QUICK, np.random.default_rng(0))
    assert isinstance(info.value, ValueError)
    assert "add pilot runs" in str(info.value)


# --- coverage ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bootstrap_interval_coverage():
    """Over 50 noisy data sets the nominal-95 % run-bootstrap intervals hold the true value ≥ 90 % of the time."""
    options = PplLawOptions(n_bootstrap=100, ci_level=0.95, leave_one_run_out=False)
    hits, total = 0, 0
    per_param = dict.fromkeys(PARAM_NAMES, 0)
    for seed in range(50):
        rng = np.random.default_rng(1000 + seed)
        obs = sample_observations(TRUE, MU, SIGMA, D, 0.01, rng)
        fit = fit_ppl_law(obs, options, rng)
        for name, (lo, hi) in fit.ci.items():
            inside = lo <= getattr(TRUE, name) <= hi
            hits += inside
            per_param[name] += inside
            total += 1
    assert total == 50 * 7
    assert hits / total >= 0.90, per_param
    assert min(per_param.values()) >= 40, per_param  # no single parameter badly under-covered
