"""The CMR law (Paper B): published coefficients, T0 root finding, fits, the whole analysis, typed errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cpt.laws._common import percentile_interval
from cpt.laws.cmr import (
    PAPER_CMR_LAWS,
    PAPER_TOKEN_UNIT,
    CmrOptions,
    CriticalPoint,
    DomTrajectory,
    GenTrajectory,
    analyse_cmr,
    bootstrap_dom_trajectory,
    bootstrap_gen_trajectory,
    critical_point,
    critical_tokens,
    feasible_set,
    fit_cmr_law,
    fit_dom_trajectory,
    fit_gen_trajectory,
    fit_ratio_law,
    tolerance_set,
)
from cpt.laws.errors import DegenerateData, NoFeasibleRatio, TooFewPoints
from cpt.laws.power_fit import fit_power_sum, model, refit_rows

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
    # the law through the true T0s, and the fitted one, agree inside the pilot budgets
    critical, *_ = _truth(1000.0, 0.05)
    points = [(critical[r].t0, r) for r in (1 / 8, 1 / 4, 1 / 3, 1 / 2)]
    reference = fit_cmr_law(np.array([p[0] for p in points]), np.array([p[1] for p in points]))
    for t in (3e8, 6e8, 1.2e9):
        assert float(analysis.cmr_law.predict(t)) == pytest.approx(float(reference.predict(t)), abs=0.03)
    # at 4B tokens the law asks for more than the tolerance allows: the prediction is cut to the tolerance bound,
    # where the true general loss at T_max reaches L_gen0 + ε: 0.21·R·2^0.35 − 0.0316·2^0.9 = 0.05
    bound = (0.05 + 0.0316 * 2**0.9) / (0.21 * 2**0.35)
    assert analysis.predicted_cmr_unclipped > analysis.tolerance_bound
    assert analysis.predicted_cmr == analysis.tolerance_bound == pytest.approx(bound, abs=0.01)
    assert any("violates the general-loss tolerance" in n for n in analysis.notes)
    assert any("beyond T_max" in n for n in analysis.notes)


def test_prediction_inside_the_tolerance_set_is_kept():
    result = analyse_cmr(simulate(0), L_DOM0, L_GEN0, T_MAX, CmrOptions(n_bootstrap=0), target_tokens=6e8)
    raw = float(result.cmr_law.predict(6e8))
    assert result.predicted_cmr == pytest.approx(raw) and 1 / 4 < raw < 1 / 3


def test_lambda_zero_leaves_no_root_for_the_law():
    result = analyse_cmr(simulate(0), L_DOM0, L_GEN0, T_MAX, CmrOptions(lam=0.0, n_bootstrap=0), target_tokens=4e9)
    assert all(f.t0_kind == "at_start" for f in result.fits)
    assert result.cmr == 1 / 3  # every ratio is feasible; the tolerance decides
    assert result.cmr_law is None and result.predicted_cmr is None
    assert any("CMR law not fitted" in n for n in result.notes)


def test_to_json_is_plain(analysis):
    out = json.loads(json.dumps(analysis.to_json(), allow_nan=False))
    assert out["cmr"] == pytest.approx(1 / 3)
    assert {c["lam"] for c in out["sensitivity"]} == {100.0, 1000.0, 7000.0, "inf"}
    assert out["options"]["sensitivity_lams"][-1] == "inf"
    assert len(out["fits"]) == 7 and out["fits"][0]["t0_kind"] == "at_start"


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
    assert result.predicted_cmr_ci is not None and set(result.cmr_law_ci) == {"alpha4", "s4", "beta3"}
    json.dumps(result.to_json(), allow_nan=False)


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


@pytest.mark.slow
def test_trajectory_bootstrap_coverage():
    """Residual-bootstrap intervals (nominal 95 %) of the trajectory parameters, T0 and ΔL_gen(T_max) hold the
    generating values in ≥ 90 % of (seed, quantity) pairs over 50 simulated pilot runs at R = 1/3."""
    dom_true, gen_true = true_curves(1 / 3)
    truth = {
        "alpha1": dom_true.alpha1,
        "s1": dom_true.s1,
        "beta1": dom_true.beta1,
        "alpha2": gen_true.alpha2,
        "s2": gen_true.s2,
        "alpha3": gen_true.alpha3,
        "s3": gen_true.s3,
        "beta2": gen_true.beta2,
        "t0": critical_tokens(dom_true, gen_true, 1000.0, T_MAX, t_min=5e7),
        "gen_at_tmax": float(gen_true.value(T_MAX)),
    }
    hits = dict.fromkeys(truth, 0)
    for seed in range(50):
        rng = np.random.default_rng(2000 + seed)
        t, ld, lg = simulate(seed + 100, ratios=(1 / 3,))[1 / 3]
        dom = fit_dom_trajectory(t, ld - L_DOM0, T_MAX)
        gen = fit_gen_trajectory(t, lg - L_GEN0, T_MAX)
        doms = bootstrap_dom_trajectory(t, ld - L_DOM0, dom, 200, rng, T_MAX)
        gens = bootstrap_gen_trajectory(t, lg - L_GEN0, gen, 200, rng, T_MAX)
        draws: dict[str, list[float]] = {k: [] for k in truth}
        for d, g in zip(doms, gens, strict=True):
            if d is None or g is None:
                continue
            for k in ("alpha1", "s1", "beta1"):
                draws[k].append(getattr(d, k))
            for k in ("alpha2", "s2", "alpha3", "s3", "beta2"):
                draws[k].append(getattr(g, k))
            draws["t0"].append(critical_tokens(d, g, 1000.0, T_MAX, t_min=5e7))
            draws["gen_at_tmax"].append(float(g.value(T_MAX)))
        for k, value in truth.items():
            assert len(draws[k]) >= 190
            lo, hi = percentile_interval(np.array(draws[k]), 0.95)
            hits[k] += lo <= value <= hi
    assert sum(hits.values()) / (50 * len(truth)) >= 0.90, hits
    assert min(hits.values()) >= 42, hits  # each quantity, including T0, near its nominal coverage
