"""The CMR law (Paper B): published coefficients, T0 root finding, fits, the whole analysis, typed errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cpt.laws._common import percentile_interval
from cpt.laws.cmr.analysis import DOM_FORM, GEN_FORM, CmrOptions, analyse_cmr
from cpt.laws.cmr.answer import CmrAnswerModel, answer_cmr, answer_with_interval
from cpt.laws.cmr.critical import (
    CriticalPoint,
    critical_point,
    critical_tokens,
    feasible_set,
    tolerance_set,
)
from cpt.laws.cmr.fits import (
    fit_cmr_law,
    fit_dom_scaled,
    fit_dom_trajectory,
    fit_gen_scaled,
    fit_gen_trajectory,
    fit_ratio_law,
    gen_from_theta,
)
from cpt.laws.cmr.forms import PAPER_CMR_LAWS, PAPER_TOKEN_UNIT, CmrLaw, DomTrajectory, GenTrajectory
from cpt.laws.errors import DegenerateData, NoFeasibleRatio, TooFewPoints
from cpt.laws.power_fit import fit_power_sum, model, refit_rows
from cpt.laws.serial_noise import Ar1Noise, SeriesFit, ar1_bootstrap, ar1_noise, calibrate_ar1

RATIOS = (0.0, 1 / 8, 1 / 4, 1 / 3, 1 / 2, 3 / 4, 1.0)
UNIT = 1e9  # the generating model is written in billions of tokens
T_MAX = 2e9
L_DOM0, L_GEN0 = 3.0, 2.5
TOKENS = np.linspace(0.0, T_MAX, 41)  # a checkpoint every 50M tokens, from T = 0


def true_curves(r: float) -> tuple[DomTrajectory, GenTrajectory]:
    """Domain loss falls faster with more domain data; general loss rises with R (s2 = 0.35) and falls with replay
    (s3 = 0.9), so dΔL_gen/dT crosses zero at u* = (2.58·R)^(1/0.55) billion tokens: inside T_max up to R = 1/2."""
    dom = DomTrajectory(-(0.03 + 0.5 * r) * UNIT**-0.3, 0.3, 0.0)
    gen = GenTrajectory(0.21 * r * UNIT**-0.35, 0.35, -0.0316 * UNIT**-0.9, 0.9, 0.0)
    return dom, gen


def simulate(seed: int, noise: float = 0.002, ratios=RATIOS, tokens=TOKENS):
    rng = np.random.default_rng(seed)
    out = {}
    for r in ratios:
        dom, gen = true_curves(r)
        positive = np.maximum(tokens, 1.0)
        ld = L_DOM0 + np.where(tokens > 0, dom.value(positive), 0.0) + noise * rng.standard_normal(tokens.size)
        lg = L_GEN0 + np.where(tokens > 0, gen.value(positive), 0.0) + noise * rng.standard_normal(tokens.size)
        out[r] = (tokens, ld, lg)
    return out


# --- the published coefficients ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_size", "expected"), [("460M", 0.298), ("940M", 0.349), ("1.6B", 0.414), ("3.1B", 0.478)]
)
def test_published_cmr_laws_reproduce_the_papers_predictions(model_size, expected):
    law = PAPER_CMR_LAWS[model_size]
    assert law.token_unit == PAPER_TOKEN_UNIT == 200_000_000
    assert float(law.predict(20e9)) == pytest.approx(expected, abs=0.0005)  # T = 100 paper units = 20B tokens
    assert float(law.alpha4 * 100**law.s4 + law.beta3) == pytest.approx(float(law.predict(20e9)), rel=1e-12)


def test_fit_cmr_law_recovers_coefficients_in_paper_units():
    law = PAPER_CMR_LAWS["1.6B"]
    t0s = PAPER_TOKEN_UNIT * np.array([10.0, 30.0, 60.0, 100.0, 200.0])
    fitted = fit_cmr_law(t0s, law.predict(t0s))
    assert fitted.token_unit == PAPER_TOKEN_UNIT
    assert (fitted.alpha4, fitted.s4, fitted.beta3) == pytest.approx((law.alpha4, law.s4, law.beta3), rel=1e-5)
    in_tokens = fit_cmr_law(t0s, law.predict(t0s), token_unit=1.0)
    assert float(in_tokens.predict(3e10)) == pytest.approx(float(law.predict(3e10)), rel=1e-8)


# --- critical tokens ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [100.0, 1000.0, 7000.0])
@pytest.mark.parametrize("r", [1 / 8, 1 / 3, 1 / 2])
def test_root_agrees_with_the_papers_implicit_closed_form(lam, r):
    dom, gen = true_curves(r)
    t0 = critical_tokens(dom, gen, lam, T_MAX)
    assert 0 < t0 < T_MAX
    gen_slope = gen.alpha2 * gen.s2 * t0 ** (gen.s2 - 1) + gen.alpha3 * gen.s3 * t0 ** (gen.s3 - 1)
    closed = (-lam * gen_slope / (dom.alpha1 * dom.s1)) ** (1 / (dom.s1 - 1))
    assert closed == pytest.approx(t0, rel=1e-6)
    # F stops rising at T0: ∂F/∂T > 0 just before, ≤ 0 just after
    dfdt = lambda t: float(dom.derivative(t) + lam * gen.derivative(t))  # noqa: E731
    assert dfdt(t0 * 0.99) > 0 > dfdt(t0 * 1.01)


def test_infinite_lambda_keeps_only_the_general_term():
    dom, gen = true_curves(1 / 4)
    t0 = critical_tokens(dom, gen, math.inf, T_MAX)
    analytic = (gen.alpha2 * gen.s2 / (-gen.alpha3 * gen.s3)) ** (1 / (gen.s3 - gen.s2))
    assert t0 == pytest.approx(analytic, rel=1e-9)
    assert critical_tokens(dom, gen, 1000.0, T_MAX) < t0  # the falling domain loss pulls T0 earlier
    assert critical_tokens(dom, gen, 1e9, T_MAX) == pytest.approx(t0, rel=1e-5)


def test_sign_convention_start_and_critical_cases():
    dom, gen = true_curves(1 / 4)
    # λ = 0: only the (falling) domain loss counts, ∂F/∂T < 0 from the start
    start = critical_point(dom, gen, 0.0, T_MAX, t_min=5e7)
    assert start == CriticalPoint(5e7, "at_start") and start.feasible
    # general loss that only rises: ∂F/∂T > 0 up to T_max, critical
    rising = GenTrajectory(gen.alpha2, gen.s2, 0.0, 0.9, 0.0)
    none = critical_point(dom, rising, 1000.0, T_MAX)
    assert none == CriticalPoint(T_MAX, "none") and not none.feasible
    assert critical_tokens(dom, rising, 1000.0, T_MAX) == T_MAX


def test_tolerance_and_feasible_sets():
    at_tmax = {0.0: 2.49, 0.25: 2.54, 0.5: 2.56, 1.0: 2.70}
    assert tolerance_set(at_tmax, 2.5, 0.05) == (0.0, 0.25)
    assert tolerance_set(at_tmax, 2.5, 0.025, relative=True) == (0.0, 0.25, 0.5)  # 2.5 · 1.025 = 2.5625
    critical = {
        0.0: CriticalPoint(1.0, "at_start"),
        0.25: CriticalPoint(5.0, "root"),
        0.5: CriticalPoint(9.0, "root"),
        1.0: CriticalPoint(10.0, "none"),
    }
    assert feasible_set(critical, (0.0, 0.25)) == (0.0, 0.25)
    assert feasible_set(critical, (0.0, 0.25, 0.5, 1.0)) == (0.0, 0.25, 0.5)


# --- curve fits --------------------------------------------------------------------------------------------------


def test_dom_trajectory_fit_recovers_noiseless_curve_and_ignores_t0():
    dom, _ = true_curves(1 / 3)
    dl = np.where(TOKENS > 0, dom.value(np.maximum(TOKENS, 1)), 0.0)
    dl[0] = 0.3  # T = 0 is not fitted: a nonsense value there changes nothing
    fit = fit_dom_trajectory(TOKENS, dl)
    assert (fit.alpha1, fit.s1) == pytest.approx((dom.alpha1, dom.s1), rel=1e-6)
    assert fit.beta1 == pytest.approx(0.0, abs=1e-9)


def test_gen_trajectory_fit_recovers_noiseless_curve():
    dom, gen = true_curves(1 / 3)
    dl = np.where(TOKENS > 0, gen.value(np.maximum(TOKENS, 1)), 0.0)
    fit = fit_gen_trajectory(TOKENS, dl)
    assert fit.s2 < fit.s3
    t = TOKENS[1:]
    assert np.max(np.abs(fit.value(t) - gen.value(t))) < 1e-5
    assert critical_tokens(dom, fit, 1000.0, T_MAX) == pytest.approx(critical_tokens(dom, gen, 1000.0, T_MAX), rel=1e-2)


def test_ratio_law_allows_r_zero():
    r = np.array(RATIOS)
    fit = fit_ratio_law(r, 0.3 * r**1.5 + 2.5)
    assert (fit.alpha, fit.s, fit.beta) == pytest.approx((0.3, 1.5, 2.5), rel=1e-6)
    assert float(fit(0.0)) == pytest.approx(2.5)


def test_batched_refits_match_the_single_fit():
    x = TOKENS[1:] / T_MAX
    rng = np.random.default_rng(5)
    Y = model(np.array([-0.2, 0.3, 0.01]), x, 1) + 0.002 * rng.standard_normal((6, x.size))
    start = fit_power_sum(x, Y[0], 1, (-2.0, 2.0)).theta
    theta, sse, converged = refit_rows(x, Y, start, 1, (-2.0, 2.0))
    assert converged.all()
    for row in range(6):
        single = fit_power_sum(x, Y[row], 1, (-2.0, 2.0))
        assert sse[row] == pytest.approx(single.sse, rel=1e-7)
        assert theta[row] == pytest.approx(single.theta, rel=1e-3, abs=1e-6)


# --- the whole analysis ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analysis():
    return analyse_cmr(simulate(0), L_DOM0, L_GEN0, T_MAX, CmrOptions(n_bootstrap=0), target_tokens=4e9)


def _truth(lam: float, eps: float):
    curves = {r: true_curves(r) for r in RATIOS}
    critical = {r: critical_point(d, g, lam, T_MAX, t_min=5e7) for r, (d, g) in curves.items()}
    tol = tolerance_set({r: L_GEN0 + float(g.value(T_MAX)) for r, (_, g) in curves.items()}, L_GEN0, eps)
    return critical, tol, feasible_set(critical, tol)


def test_analysis_matches_the_generating_model(analysis):
    critical, tol, feas = _truth(1000.0, 0.05)
    assert analysis.tolerance_set == tol == (0.0, 1 / 8, 1 / 4, 1 / 3)
    assert analysis.feasible_set == feas == tol
    assert analysis.cmr == 1 / 3
    kinds = {f.ratio: f.t0_kind for f in analysis.fits}
    assert kinds == {r: cp.kind for r, cp in critical.items()}
    assert kinds == {
        0.0: "at_start",
        1 / 8: "root",
        1 / 4: "root",
        1 / 3: "root",
        1 / 2: "root",
        3 / 4: "none",
        1.0: "none",
    }
    for r in (1 / 4, 1 / 3, 1 / 2):
        assert analysis.fit_for(r).t0 == pytest.approx(critical[r].t0, rel=0.2)
    for f in analysis.fits:
        assert f.gen_at_tmax == pytest.approx(L_GEN0 + float(true_curves(f.ratio)[1].value(T_MAX)), abs=0.003)
        assert f.gen_rmse == pytest.approx(0.002, rel=0.35) and f.n_points == 40


def test_sensitivity_table_covers_every_lambda_and_eps(analysis):
    cells = {(c.lam, c.eps): c for c in analysis.sensitivity}
    assert set(cells) == {(lam, eps) for lam in (100.0, 1000.0, 7000.0, math.inf) for eps in (0.02, 0.05, 0.1)}
    for (lam, eps), cell in cells.items():
        _, tol, feas = _truth(lam, eps)
        assert cell.tolerance_set == tol and cell.feasible_set == feas
        assert cell.cmr == {0.02: 1 / 4, 0.05: 1 / 3, 0.1: 1 / 2}[eps]
    assert cells[(1000.0, 0.05)].cmr == analysis.cmr


def test_cmr_law_and_prediction(analysis):
    assert analysis.cmr_law is not None and analysis.cmr_law.token_unit == PAPER_TOKEN_UNIT
    assert [r for _, r in analysis.cmr_law_points] == [1 / 8, 1 / 4, 1 / 3, 1 / 2]
    assert analysis.answer_model.law_determined, analysis.answer_model.law_problems
    # the law through the true T0s, and the fitted one, agree inside the pilot budgets
    critical, *_ = _truth(1000.0, 0.05)
    points = [(critical[r].t0, r) for r in (1 / 8, 1 / 4, 1 / 3, 1 / 2)]
    reference = fit_cmr_law(np.array([p[0] for p in points]), np.array([p[1] for p in points]))
    for t in (3e8, 6e8, 1.2e9):
        assert float(analysis.cmr_law.predict(t)) == pytest.approx(float(reference.predict(t)), abs=0.03)
    # at 4B tokens the law asks for more than the tolerance allows: the answer is cut to the tolerance bound, where
    # the true general loss at T_max reaches L_gen0 + ε: 0.21·R·2^0.35 − 0.0316·2^0.9 = 0.05
    bound = (0.05 + 0.0316 * 2**0.9) / (0.21 * 2**0.35)
    answer = analysis.answer(4e9)
    assert answer.basis == "law" and answer.extrapolated
    assert answer.law_value > analysis.tolerance[1] == pytest.approx(bound, abs=0.01)
    assert answer.ratio == analysis.tolerance[1]
    assert any("outside the tolerable ratios" in r for r in answer.reasons)


def test_answer_inside_the_tolerance_is_the_law_and_within_the_budget_is_not_extrapolated():
    result = analyse_cmr(simulate(0), L_DOM0, L_GEN0, T_MAX, CmrOptions(n_bootstrap=0), target_tokens=6e8)
    answer = result.answer()
    assert answer.tokens == 6e8 and not answer.extrapolated and answer.basis == "law"
    assert answer.ratio == pytest.approx(float(result.cmr_law.predict(6e8))) and 1 / 4 < answer.ratio < 1 / 3
    assert answer.interval is None  # no bootstrap, no interval


def test_lambda_zero_leaves_no_root_and_the_answer_falls_back_to_the_measured_cmr():
    result = analyse_cmr(simulate(0), L_DOM0, L_GEN0, T_MAX, CmrOptions(lam=0.0, n_bootstrap=0), target_tokens=4e9)
    assert all(f.t0_kind == "at_start" for f in result.fits)
    assert result.cmr == 1 / 3  # every ratio is feasible; the tolerance decides
    assert result.cmr_law is None
    answer = result.answer()
    assert answer.basis == "measured" and answer.ratio == 1 / 3 and answer.extrapolated
    assert any("needs at least 4" in r for r in answer.reasons)


def test_to_json_is_plain(analysis):
    out = json.loads(json.dumps(analysis.to_json(), allow_nan=False))
    assert out["cmr"] == pytest.approx(1 / 3)
    assert {c["lam"] for c in out["sensitivity"]} == {100.0, 1000.0, 7000.0, "inf"}
    assert out["options"]["sensitivity_lams"][-1] == "inf"
    assert len(out["fits"]) == 7 and out["fits"][0]["t0_kind"] == "at_start"
    assert CmrAnswerModel.from_json(out["answer_model"]) == analysis.answer_model  # what the served model reads


def test_bootstrap_intervals_in_the_analysis():
    with pytest.raises(ValueError, match="rng"):
        analyse_cmr(simulate(0), L_DOM0, L_GEN0, T_MAX, CmrOptions(n_bootstrap=10))
    result = analyse_cmr(
        simulate(0),
        L_DOM0,
        L_GEN0,
        T_MAX,
        CmrOptions(n_bootstrap=30),
        target_tokens=6e8,
        rng=np.random.default_rng(0),
    )
    f = result.fit_for(1 / 3)
    assert f.t0_ci[0] <= f.t0 <= f.t0_ci[1]
    assert f.gen_at_tmax_ci[0] <= f.gen_at_tmax <= f.gen_at_tmax_ci[1]
    assert set(f.dom_ci) == {"alpha1", "s1", "beta1"} and set(f.gen_ci) == {"alpha2", "s2", "alpha3", "s3", "beta2"}
    assert result.fit_for(1.0).feasible_frequency < 0.5 < result.fit_for(1 / 8).feasible_frequency
    assert sum(result.cmr_distribution.values()) == pytest.approx(1.0)
    answer = result.answer()
    assert answer.interval[0] <= answer.ratio <= answer.interval[1] and answer.law_share > 0.5
    assert set(result.cmr_law_ci) == {"alpha4", "s4", "beta3"} and len(result.answer_draws) == 30
    assert result.noise["gen"].rho < 0.5  # the simulated checkpoint noise is independent
    json.dumps(result.to_json(), allow_nan=False)


# --- T0 is the last +→− crossing ---------------------------------------------------------------------------------


def test_t0_is_the_last_crossing_of_a_dip_then_turn_trajectory():
    # T·∂F/∂T = −0.1·u^0.1 + 0.5·u^0.5 − 0.6·u (u = T/T_max, λ = 1): negative at first (a dip), positive in the middle,
    # negative again from its last root on. The first crossing would call it feasible from the start.
    dom = DomTrajectory(-1.0 * T_MAX**-0.1, 0.1, 0.0)
    gen = GenTrajectory(1.0 * T_MAX**-0.5, 0.5, -0.6 * T_MAX**-1.0, 1.0, 0.0)
    h = lambda t: float(dom.derivative(t) + gen.derivative(t))  # noqa: E731
    cp = critical_point(dom, gen, 1.0, T_MAX)
    assert cp.kind == "root" and cp.feasible
    assert h(cp.t0 * 0.99) > 0 > h(cp.t0 * 1.01)
    assert 0.1 * T_MAX < cp.t0 < T_MAX
    grid = np.geomspace(1e-4 * T_MAX, cp.t0 * 0.99, 400)
    signs = np.sign([h(t) for t in grid])
    assert signs[0] < 0 and (signs > 0).any()  # it did dip first, then rise: the earlier − → + change is not T0


def test_f_rising_again_at_the_budget_is_not_feasible():
    # + → − → +: the general loss turns up again before T_max (exponents 0.1 < 0.5 < 1 with signs +, −, +)
    dom = DomTrajectory(1.0 * T_MAX**-0.1, 0.1, 0.0)
    gen = GenTrajectory(-1.0 * T_MAX**-0.5, 0.5, 0.6 * T_MAX**-1.0, 1.0, 0.0)
    assert critical_point(dom, gen, 1.0, T_MAX) == CriticalPoint(T_MAX, "none")


# --- the answer: one function, with its basis ------------------------------------------------------------------


LAW = CmrLaw(alpha4=0.2, s4=0.3, beta3=0.0, token_unit=1e9)  # R(T) = 0.2·(T/1e9)^0.3


def _model(**changes) -> CmrAnswerModel:
    base = {
        "t_max": 1e9,
        "measured_cmr": 0.2,
        "tolerance": (0.0, 0.3),
        "law": LAW,
        "law_problems": (),
        "law_t_min": 2e8,
    }
    return CmrAnswerModel(**base | changes)


def test_answer_follows_a_determined_law_and_flags_extrapolation():
    inside = answer_cmr(_model(), 1e9)
    assert inside.basis == "law" and inside.ratio == pytest.approx(0.2) and not inside.extrapolated
    assert not answer_cmr(_model(), 5e8).extrapolated  # between the law's smallest T0 and T_max
    beyond = answer_cmr(_model(), 2e9)
    assert beyond.extrapolated and beyond.ratio == pytest.approx(0.2 * 2**0.3)
    assert answer_cmr(_model(), 1e8).extrapolated  # below the smallest critical point the law was fitted on
    far = answer_cmr(_model(), 1e11)  # the law would give 0.8: outside the tolerance interval
    assert far.law_value == pytest.approx(0.2 * 100**0.3) and far.ratio == 0.3 and far.basis == "law"


@pytest.mark.parametrize(
    "problem", ["the CMR law's exponent s4 = 3 sits on its search bound", "3 pilot ratios have a critical point"]
)
def test_an_undetermined_law_falls_back_to_the_measured_cmr(problem):
    answer = answer_cmr(_model(law_problems=(problem,)), 4e9)
    assert answer.basis == "measured" and answer.ratio == 0.2 and answer.extrapolated
    assert problem in answer.reasons and any("measured at the pilots' budget" in r for r in answer.reasons)


def test_the_measured_answer_holds_only_at_the_pilots_budget_and_within_the_tolerance():
    undetermined = _model(law_problems=("no law",), measured_cmr=0.5)
    at_budget = answer_cmr(undetermined, 1e9)
    assert at_budget.ratio == 0.3 and not at_budget.extrapolated  # 0.5 breaks the fitted tolerance: moved to 0.3
    assert any("outside the tolerable ratios" in r for r in at_budget.reasons)
    smaller = answer_cmr(undetermined, 2e8)
    assert smaller.extrapolated and any("not at 200,000,000" in r for r in smaller.reasons)
    assert answer_cmr(_model(law_problems=("no law",), tolerance=None), 1e9).ratio is None


def test_a_law_far_outside_the_unit_interval_is_not_used_at_that_budget():
    wild = CmrLaw(alpha4=-50.0, s4=1.0, beta3=0.25, token_unit=1e9)  # −50 at 1B tokens: the other-domain failure
    answer = answer_cmr(_model(law=wild), 1e9)
    assert answer.basis == "measured" and answer.ratio == 0.2 and answer.law_value < -40
    assert any("outside [0, 1]" in r for r in answer.reasons)


def test_no_tolerable_ratio_gives_no_answer():
    assert answer_cmr(_model(tolerance=None), 1e9).ratio is None
    assert answer_cmr(_model(law=None, law_problems=("no law",), measured_cmr=None), 1e9).ratio is None


def test_answer_interval_comes_from_the_same_function_on_every_replicate():
    draws = [_model(law=CmrLaw(0.2 * k, 0.3, 0.0, 1e9)) for k in np.linspace(0.9, 1.1, 21)]
    draws.append(_model(law=None, law_problems=("no law",), measured_cmr=0.125))
    draws.append(_model(tolerance=None))  # a replicate in which no ratio is tolerable: counted, not in the interval
    answer = answer_with_interval(_model(), draws, 1e9, 0.9)
    assert answer.ratio == pytest.approx(0.2) and answer.law_share == pytest.approx(22 / 23)
    assert answer.interval[0] < 0.2 < answer.interval[1] <= 0.22
    assert answer.no_answer_share == pytest.approx(1 / 23) and answer.level == 0.9


def test_law_inconsistent_with_the_measured_cmr_is_not_determined():
    result = analyse_cmr(simulate(0), L_DOM0, L_GEN0, T_MAX, CmrOptions(n_bootstrap=0), target_tokens=T_MAX)
    m = result.answer_model
    assert m.law_determined
    # the same law, but suppose the pilots had measured 3/4 feasible at T_max: the law's ~0.4 there contradicts it
    from cpt.laws.cmr.answer import law_problems

    problems = law_problems(
        m.law, result.cmr_law_points, t_max=T_MAX, measured_cmr=0.75, next_infeasible=None, max_residual=0.1
    )
    assert any("below the CMR 0.750 measured there" in p for p in problems)


def test_the_default_budget_lies_where_the_fitted_law_holds():
    """The CMR law's form extrapolates the generating curves' true CMR (the largest ratio whose T0 fits the budget)
    to 2 × T_max when the pilots are noiseless; with eval noise of 0.002 on the checkpoints the fitted law is within
    0.06 of the truth at T_max, but its error at 2 × T_max grows past that. So the default target budget
    (cpt.laws.reports.DEFAULT_TARGET_FACTOR) is the pilots' own budget; beyond it answers are flagged extrapolated."""
    from cpt.laws.reports import DEFAULT_TARGET_FACTOR

    fine = np.linspace(0.02, 0.98, 241)
    true_t0 = np.array([critical_tokens(*true_curves(r), 1000.0, 100 * T_MAX, t_min=5e7) for r in fine])

    def error(seed: int, noise: float, k: float) -> float:
        result = analyse_cmr(simulate(seed, noise), L_DOM0, L_GEN0, T_MAX, CmrOptions(n_bootstrap=0))
        return abs(float(result.cmr_law.predict(k * T_MAX)) - float(fine[true_t0 <= k * T_MAX].max()))

    assert error(0, 0.0, 2.0) <= 0.01  # the form is right
    at_budget = [error(seed, 0.002, 1.0) for seed in range(4)]
    doubled = [error(seed, 0.002, 2.0) for seed in range(4)]
    assert max(at_budget) <= 0.06 < max(doubled), (at_budget, doubled)
    assert DEFAULT_TARGET_FACTOR == 1


# --- typed errors ------------------------------------------------------------------------------------------------


QUICK = CmrOptions(n_bootstrap=0)


def test_too_few_ratios():
    data = simulate(0, ratios=(0.0, 0.25, 0.5))
    with pytest.raises(TooFewPoints, match="got 3 usable points, need at least 4"):
        analyse_cmr(data, L_DOM0, L_GEN0, T_MAX, QUICK)


def test_too_few_checkpoints():
    with pytest.raises(TooFewPoints, match=r"trajectory at R=0\.0"):
        analyse_cmr(simulate(0, tokens=np.linspace(0, T_MAX, 6)), L_DOM0, L_GEN0, T_MAX, QUICK)


def test_nan_loss():
    data = simulate(0)
    t, ld, lg = data[0.25]
    data[0.25] = (t, ld, np.where(np.arange(t.size) == 7, np.nan, lg))
    with pytest.raises(DegenerateData, match="non-finite"):
        analyse_cmr(data, L_DOM0, L_GEN0, T_MAX, QUICK)


def test_flat_curve():
    data = simulate(0)
    t, ld, _ = data[0.5]
    data[0.5] = (t, ld, np.full(t.size, L_GEN0 + 0.01))
    with pytest.raises(DegenerateData, match="flat"):
        analyse_cmr(data, L_DOM0, L_GEN0, T_MAX, QUICK)


def test_ratio_outside_unit_interval():
    data = simulate(0)
    data[1.5] = data.pop(1.0)
    with pytest.raises(DegenerateData, match="outside"):
        analyse_cmr(data, L_DOM0, L_GEN0, T_MAX, QUICK)


def test_no_feasible_ratio_over_tolerance():
    # every ratio ends above L_gen0 + ε when the reference loss is 0.2 lower
    with pytest.raises(NoFeasibleRatio, match="over tolerance"):
        analyse_cmr(simulate(0), L_DOM0, L_GEN0 - 0.2, T_MAX, QUICK)


def test_no_feasible_ratio_when_general_loss_keeps_rising():
    data = simulate(0, ratios=(0.6, 0.75, 0.9, 1.0))
    with pytest.raises(NoFeasibleRatio, match="T0 none"):
        analyse_cmr(data, L_DOM0, L_GEN0, T_MAX, CmrOptions(eps=1.0, n_bootstrap=0))


def test_cmr_law_needs_three_points():
    with pytest.raises(TooFewPoints):
        fit_cmr_law(np.array([1e8, 2e8]), np.array([0.1, 0.2]))
    with pytest.raises(DegenerateData):
        fit_cmr_law(np.array([1e8, 2e8, -1.0]), np.array([0.1, 0.2, 0.3]))


# --- coverage ------------------------------------------------------------------------------------------------------


def _interval_coverage(rho: float, seeds: int, calibrate: bool = True, n_bootstrap: int = 120) -> dict[str, float]:
    """Share of simulated runs (R = 1/3, 20 checkpoints, AR(1) eval noise of marginal SD 0.002) whose 90 % bootstrap
    intervals hold the true T0 and the true ΔL_gen(T_max). ``calibrate=False`` treats the noise as independent
    (ρ = 0, residual variance only): the old residual bootstrap."""
    dom_true, gen_true = true_curves(1 / 3)
    t0_true = critical_tokens(dom_true, gen_true, 1000.0, T_MAX, t_min=5e7)
    gen_true_at = float(gen_true.value(T_MAX))
    tokens = np.linspace(0.0, T_MAX, 21)[1:]
    x = tokens / T_MAX
    hits = {"t0": 0, "gen_at_tmax": 0}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        noise = ar1_noise(rng, rho, 0.002, (2, x.size))
        dom = SeriesFit(x, dom_true.value(tokens) + noise[0], fit_dom_scaled(x, dom_true.value(tokens) + noise[0]))
        gen = SeriesFit(x, gen_true.value(tokens) + noise[1], fit_gen_scaled(x, gen_true.value(tokens) + noise[1]))
        noises = []
        for series, form in ((dom, DOM_FORM), (gen, GEN_FORM)):
            calibrated = calibrate_ar1([series], form, rng, n_sim=24)
            noises.append(calibrated if calibrate else Ar1Noise.independent([float(np.std(series.residuals))]))
        (dom_draws,), _ = ar1_bootstrap([dom], DOM_FORM, noises[0], n_bootstrap, rng)
        (gen_draws,), _ = ar1_bootstrap([gen], GEN_FORM, noises[1], n_bootstrap, rng)
        t0s, gens = [], []
        for d, g_ in zip(dom_draws, gen_draws, strict=True):
            gd = gen_from_theta(g_, T_MAX)
            t0s.append(critical_point(DomTrajectory(d[0] * T_MAX ** -d[1], d[1], d[2]), gd, 1000.0, T_MAX, 5e7).t0)
            gens.append(float(gd.value(T_MAX)))
        lo, hi = percentile_interval(np.array(t0s), 0.9)
        hits["t0"] += lo <= t0_true <= hi
        lo, hi = percentile_interval(np.array(gens), 0.9)
        hits["gen_at_tmax"] += lo <= gen_true_at <= hi
    return {k: v / seeds for k, v in hits.items()}


@pytest.mark.slow
def test_intervals_hold_the_truth_under_autocorrelated_checkpoint_noise():
    """AR(1) ρ = 0.9 between checkpoints (one run's eval noise is correlated): the calibrated bootstrap's 90 %
    intervals for T0 and ΔL_gen(T_max) cover ≥ 85 %; resampling the noise as independent covers far less."""
    calibrated = _interval_coverage(0.9, seeds=40)
    assert min(calibrated.values()) >= 0.85, calibrated
    independent = _interval_coverage(0.9, seeds=12, calibrate=False)
    assert max(independent.values()) <= 0.6, independent


@pytest.mark.slow
def test_intervals_still_cover_under_independent_noise():
    """With independent noise the uncertainty about ρ that one short run leaves widens the intervals: they are
    conservative (pooling several runs, as the analysis does, sharpens ρ)."""
    coverage = _interval_coverage(0.0, seeds=16)
    assert min(coverage.values()) >= 0.85, coverage


def test_too_few_checkpoints_before_the_held_out_share_names_the_evals_to_raise():
    from cpt.laws.cmr.heldout import trajectory_heldout_error

    tokens = np.array([0.0, *(32_000 * k / 8 + 100 for k in range(1, 9))])  # 8 evaluations, each a little late
    trajectories = {r: (tokens, ld, lg) for r, (_, ld, lg) in simulate(0, tokens=tokens).items()}
    with pytest.raises(
        TooFewPoints,
        match=r"held-out check at R=.*up to 75% of T_max: got 5 .* need at least 6; "
        r"evaluate the mixture pilots more often \(evals\)",
    ):
        trajectory_heldout_error(trajectories, L_DOM0, L_GEN0, 0.25)
    ten = np.array([0.0, *(32_000 * k / 10 + 100 for k in range(1, 11))])  # the default: 7 checkpoints before
    checked = trajectory_heldout_error({r: (ten, *v[1:]) for r, v in simulate(0, tokens=ten).items()}, L_DOM0, L_GEN0)
    assert set(checked.per_ratio) == set(RATIOS) and np.isfinite(checked.rmse)
