"""The whole Paper B analysis from pilot trajectories: fits, ``T0``, the sets, the CMR law, the answer, intervals.

``R`` is the domain share of the CPT data, ``T`` CPT tokens (fits scale ``T`` by ``T_max`` internally and return
token-unit coefficients). ``T0``, feasibility and the answer are defined in ``critical`` and ``answer``.

Judgment calls (recorded in every result's notes):

- ``T = 0`` checkpoints are not fitted: ``ΔL(0) = 0`` by definition, but the power-law forms with a free intercept
  describe the loss after the first steps of CPT (warm-up and the distribution shift are not a power law), and
  anchoring them at 0 would bias the intercept and exponent.
- The loss at ``T_max`` (tolerance set, ratio laws) is the trajectory fit's value at ``T_max``, not the last noisy
  checkpoint.
- Intervals come from a parametric bootstrap with serially correlated (AR(1)) checkpoint noise calibrated on the
  residuals (``serial_noise``); each replicate is pushed through the whole decision: ``T0``, tolerance, CMR, CMR
  law, answer. They cover the noise of the pilot curves, not a misspecified law.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from cpt.laws._common import (
    captured_warnings,
    json_map,
    json_number,
    percentile_interval,
    single_threaded_blas,
    unique_messages,
)
from cpt.laws.cmr.answer import CmrAnswer, CmrAnswerModel, answer_with_interval, law_problems
from cpt.laws.cmr.critical import (
    CriticalKind,
    CriticalPoint,
    critical_point,
    feasible_set,
    general_loss_limit,
    tolerance_interval,
    tolerance_set,
)
from cpt.laws.cmr.fits import (
    DOM_EXPONENTS,
    GEN_EXPONENTS,
    MIN_EXPONENT_GAP,
    clean_xy,
    cmr_law_residual,
    dom_from_theta,
    fit_cmr_law,
    fit_dom_scaled,
    fit_gen_scaled,
    fit_ratio_law,
    gen_from_theta,
)
from cpt.laws.cmr.forms import CmrLaw, DomTrajectory, GenTrajectory, PowerLaw
from cpt.laws.errors import DegenerateData, NoFeasibleRatio, TooFewPoints
from cpt.laws.serial_noise import Ar1Noise, CurveForm, SeriesFit, ar1_bootstrap, calibrate_ar1

DOM_FORM = CurveForm(1, DOM_EXPONENTS)
GEN_FORM = CurveForm(2, GEN_EXPONENTS, MIN_EXPONENT_GAP)


@dataclass(frozen=True)
class CmrOptions:
    lam: float = 1000.0  # λ; the paper used 100–7000
    eps: float = 0.05  # general-loss tolerance (absolute, or a fraction of L_gen0 when relative_eps)
    relative_eps: bool = False
    sensitivity_lams: tuple[float, ...] = (100.0, 1000.0, 7000.0, math.inf)  # inf: only the general term counts
    sensitivity_eps: tuple[float, ...] = (0.02, 0.05, 0.1)
    min_ratios: int = 4  # the loss-against-ratio law has three coefficients
    min_trajectory_points: int = 8  # T > 0 checkpoints per ratio; the general trajectory has five coefficients
    n_bootstrap: int = 200  # bootstrap replicates of every trajectory; 0 skips the intervals
    ci_level: float = 0.9
    root_grid_size: int = 512  # log-T grid on which ∂F/∂T is scanned for its sign changes
    max_law_residual: float = 0.1  # RMSE (in R) of the CMR law at its (T0, R) points beyond which it is not used
    noise_simulations: int = 32  # simulated series per ρ when calibrating the AR(1) checkpoint noise

    def __post_init__(self) -> None:
        if self.lam < 0 or math.isnan(self.lam) or self.eps < 0 or not math.isfinite(self.eps):
            raise ValueError(f"λ must be ≥ 0 and ε finite and ≥ 0, got λ={self.lam}, ε={self.eps}")
        if self.min_ratios < 4 or self.min_trajectory_points < 6:
            raise ValueError("min_ratios ≥ 4 and min_trajectory_points ≥ 6 are required by the fits")
        if self.n_bootstrap < 0 or not 0 < self.ci_level < 1 or self.noise_simulations < 4:
            raise ValueError("n_bootstrap ≥ 0, 0 < ci_level < 1 and noise_simulations ≥ 4 are required")
        if not self.max_law_residual > 0:
            raise ValueError(f"max_law_residual must be positive, got {self.max_law_residual}")


@dataclass(frozen=True)
class RatioFit:
    """One pilot ratio: its trajectory fits, ``T0``, and where it stands (at the main λ, ε)."""

    ratio: float
    n_points: int  # T > 0 checkpoints fitted
    dom: DomTrajectory
    gen: GenTrajectory
    dom_rmse: float
    gen_rmse: float
    dom_at_tmax: float  # L_dom0 + ΔL̂_dom(T_max)
    gen_at_tmax: float  # L_gen0 + ΔL̂_gen(T_max)
    t0: float
    t0_kind: CriticalKind
    in_tolerance: bool
    feasible: bool
    dom_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    gen_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    t0_ci: tuple[float, float] | None = None
    gen_at_tmax_ci: tuple[float, float] | None = None
    feasible_frequency: float | None = None  # share of bootstrap replicates in which the ratio is feasible

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            k: json_number(v) if isinstance(v, float) else v
            for k, v in asdict(self).items()
            if k not in ("dom", "gen", "dom_ci", "gen_ci", "t0_ci", "gen_at_tmax_ci")
        }
        out["dom"] = asdict(self.dom)
        out["gen"] = asdict(self.gen)
        out["dom_ci"] = json_map(self.dom_ci)
        out["gen_ci"] = json_map(self.gen_ci)
        out["t0_ci"] = None if self.t0_ci is None else [json_number(v) for v in self.t0_ci]
        out["gen_at_tmax_ci"] = None if self.gen_at_tmax_ci is None else [json_number(v) for v in self.gen_at_tmax_ci]
        return out


@dataclass(frozen=True)
class SensitivityCell:
    lam: float
    eps: float
    tolerance_set: tuple[float, ...]
    feasible_set: tuple[float, ...]
    cmr: float | None  # None: nothing feasible at this (λ, ε)
    answer: float | None  # the answer's ratio at the target budget
    basis: str

    def to_json(self) -> dict[str, object]:
        return {
            "lam": json_number(self.lam),
            "eps": self.eps,
            "tolerance_set": list(self.tolerance_set),
            "feasible_set": list(self.feasible_set),
            "cmr": self.cmr,
            "answer": json_number(self.answer),
            "basis": self.basis,
        }


@dataclass(frozen=True)
class CmrAnalysis:
    options: CmrOptions
    t_max: float
    L_dom0: float
    L_gen0: float
    target_tokens: float
    dom_ratio_law: PowerLaw  # L_dom(R) at T_max
    gen_ratio_law: PowerLaw  # L_gen(R) at T_max
    fits: tuple[RatioFit, ...]  # ascending ratio
    tolerance_set: tuple[float, ...]  # pilot ratios within tolerance at T_max
    feasible_set: tuple[float, ...]
    cmr: float  # the largest feasible pilot ratio (measured at T_max)
    tolerance: tuple[float, float] | None  # the tolerable ratio interval on the general-loss ratio law
    cmr_law: CmrLaw | None  # None when fewer than 3 ratios have a root T0 (see answer_model.law_problems)
    cmr_law_points: tuple[tuple[float, float], ...]  # (T0, R)
    cmr_law_residual: float | None
    answer_model: CmrAnswerModel
    answer_draws: tuple[CmrAnswerModel, ...]  # one per bootstrap replicate that completed
    noise: dict[str, Ar1Noise]  # "dom", "gen": the calibrated checkpoint noise (empty without bootstrap)
    sensitivity: tuple[SensitivityCell, ...]  # every λ × ε of the options
    cmr_law_ci: dict[str, tuple[float, float]]
    cmr_distribution: dict[float | None, float]  # bootstrap share of replicates per CMR (None: none feasible)
    notes: tuple[str, ...]
    warnings: tuple[str, ...]

    def fit_for(self, ratio: float) -> RatioFit:
        return next(f for f in self.fits if f.ratio == ratio)

    def answer(self, tokens: float | None = None) -> CmrAnswer:
        """The CMR answer at ``tokens`` (default: the target budget), with its bootstrap interval."""
        return answer_with_interval(
            self.answer_model, self.answer_draws, tokens or self.target_tokens, self.options.ci_level
        )

    def to_json(self) -> dict[str, object]:
        return {
            "options": {
                k: (
                    list(map(json_number, v)) if isinstance(v, tuple) else json_number(v) if isinstance(v, float) else v
                )
                for k, v in asdict(self.options).items()
            },
            "t_max": self.t_max,
            "L_dom0": self.L_dom0,
            "L_gen0": self.L_gen0,
            "target_tokens": self.target_tokens,
            "dom_ratio_law": asdict(self.dom_ratio_law),
            "gen_ratio_law": asdict(self.gen_ratio_law),
            "fits": [f.to_json() for f in self.fits],
            "tolerance_set": list(self.tolerance_set),
            "feasible_set": list(self.feasible_set),
            "cmr": self.cmr,
            "tolerance": None if self.tolerance is None else list(self.tolerance),
            "cmr_law": None if self.cmr_law is None else asdict(self.cmr_law),
            "cmr_law_points": [list(p) for p in self.cmr_law_points],
            "cmr_law_residual": json_number(self.cmr_law_residual),
            "answer": self.answer().to_json(),
            "answer_model": self.answer_model.to_json(),
            "answer_draws": [d.to_json() for d in self.answer_draws],
            "noise": {k: v.to_json() for k, v in self.noise.items()},
            "sensitivity": [c.to_json() for c in self.sensitivity],
            "cmr_law_ci": json_map(self.cmr_law_ci),
            "cmr_distribution": json_map(self.cmr_distribution, key=lambda r: "none" if r is None else str(r)),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class _Curves:
    """What one decision needs per ratio: trajectories, loss at T_max, the root-search floor."""

    dom: dict[float, DomTrajectory]
    gen: dict[float, GenTrajectory]
    gen_at_tmax: dict[float, float]
    t_lo: dict[float, float]


@dataclass(frozen=True)
class _Decision:
    critical: dict[float, CriticalPoint]
    tolerance: tuple[float, ...]
    feasible: tuple[float, ...]
    cmr: float | None
    law: CmrLaw | None
    law_points: tuple[tuple[float, float], ...]
    answer_model: CmrAnswerModel


def _decide(
    curves: _Curves, gen_law: PowerLaw, lam: float, eps: float, L_gen0: float, t_max: float, options: CmrOptions
) -> _Decision:
    critical = {
        r: critical_point(
            curves.dom[r], curves.gen[r], lam, t_max, min(curves.t_lo[r], t_max / 2), options.root_grid_size
        )
        for r in curves.dom
    }
    tol = tolerance_set(curves.gen_at_tmax, L_gen0, eps, options.relative_eps)
    feas = feasible_set(critical, tol)
    cmr = max(feas) if feas else None
    points = tuple(sorted((cp.t0, r) for r, cp in critical.items() if cp.kind == "root" and r > 0))
    law = None
    if len(points) >= 3 and len({p[0] for p in points}) >= 3 and len({p[1] for p in points}) >= 2:
        law = fit_cmr_law(np.array([p[0] for p in points]), np.array([p[1] for p in points]))
    above = [r for r, cp in sorted(critical.items()) if cp.kind == "none" and (cmr is None or r > cmr)]
    problems = law_problems(
        law,
        points,
        t_max=t_max,
        measured_cmr=cmr,
        next_infeasible=above[0] if above else None,
        max_residual=options.max_law_residual,
    )
    tolerable = tolerance_interval(gen_law, L_gen0, eps, options.relative_eps)
    model = CmrAnswerModel(float(t_max), cmr, tolerable, law, problems, points[0][0] if points else None)
    return _Decision(critical, tol, feas, cmr, law, points, model)


def _validate_inputs(
    trajectories: Mapping[float, tuple[np.ndarray, np.ndarray, np.ndarray]],
    L_dom0: float,
    L_gen0: float,
    t_max: float,
    options: CmrOptions,
    target_tokens: float,
) -> dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if len(trajectories) < options.min_ratios:
        raise TooFewPoints("CMR analysis (pilot ratios)", len(trajectories), options.min_ratios, "add pilot ratios")
    for name, v in (("L_dom0", L_dom0), ("L_gen0", L_gen0), ("t_max", t_max)):
        if not math.isfinite(v):
            raise DegenerateData(f"{name} is not finite ({v})", "pass the losses before CPT and the token budget")
    if t_max <= 0:
        raise DegenerateData(f"t_max must be positive, got {t_max}", "pass the token budget in tokens")
    if not (math.isfinite(target_tokens) and target_tokens > 0):
        raise DegenerateData(f"target_tokens must be positive, got {target_tokens}", "pass a budget in tokens")
    out = {}
    for r, (T, ld, lg) in trajectories.items():
        r = float(r)
        if not (math.isfinite(r) and 0 <= r <= 1):
            raise DegenerateData(f"mixture ratio {r} outside [0, 1]", "R = domain tokens / all CPT tokens")
        T, ld, lg = (np.asarray(a, dtype=np.float64).ravel() for a in (T, ld, lg))
        if not (T.size == ld.size == lg.size):
            raise DegenerateData(
                f"R={r}: {T.size} token counts, {ld.size} domain, {lg.size} general losses",
                "pass one loss of each kind per checkpoint",
            )
        if not (np.isfinite(T).all() and np.isfinite(ld).all() and np.isfinite(lg).all()):
            raise DegenerateData(f"R={r}: non-finite token counts or losses", "drop or repair those checkpoints")
        n_pos = int((T > 0).sum())
        if n_pos < options.min_trajectory_points:
            raise TooFewPoints(
                f"trajectory at R={r}", n_pos, options.min_trajectory_points, "evaluate more checkpoints"
            )
        out[r] = (T, ld, lg)
    return out


def analyse_cmr(
    trajectories: Mapping[float, tuple[np.ndarray, np.ndarray, np.ndarray]],
    L_dom0: float,
    L_gen0: float,
    t_max: float,
    options: CmrOptions | None = None,
    target_tokens: float | None = None,
    rng: np.random.Generator | None = None,
) -> CmrAnalysis:
    """The whole Paper B analysis from pilot trajectories ``{R: (T tokens incl. 0, L_dom, L_gen)}``.

    ``target_tokens`` (default ``T_max``) is the budget the sensitivity table and ``answer()`` default to.
    Raises ``NoFeasibleRatio`` when no ratio is feasible at the main (λ, ε); ``TooFewPoints``/``DegenerateData`` for
    too few ratios or checkpoints, non-finite values and flat curves. ``rng`` is required when
    ``options.n_bootstrap > 0``.
    """
    options = options or CmrOptions()
    target = float(target_tokens) if target_tokens is not None else float(t_max)
    if options.n_bootstrap and rng is None:
        raise ValueError("analyse_cmr needs an rng for its bootstrap (or options.n_bootstrap=0)")
    data = _validate_inputs(trajectories, L_dom0, L_gen0, t_max, options, target)
    ratios = sorted(data)
    notes = [
        "T = 0 checkpoints are not fitted (ΔL(0) = 0 by definition; the forms describe T > 0)",
        "losses at T_max are the trajectory fits' values at T_max",
        "T0 is the last +→− crossing of ∂F/∂T; a ratio is feasible when F is falling at T_max",
    ]
    with single_threaded_blas(), captured_warnings() as messages:
        dom_series, gen_series = {}, {}
        for r in ratios:
            T, ld, lg = data[r]
            keep = T > 0
            x = T[keep] / t_max
            yd, yg = ld[keep] - L_dom0, lg[keep] - L_gen0
            clean_xy(x, yd, f"domain-loss trajectory at R={r}", options.min_trajectory_points)
            clean_xy(x, yg, f"general-loss trajectory at R={r}", options.min_trajectory_points)
            dom_series[r] = SeriesFit(x, yd, fit_dom_scaled(x, yd))
            gen_series[r] = SeriesFit(x, yg, fit_gen_scaled(x, yg))
            if T.max() < t_max:
                notes.append(f"R={r}: trajectory ends at T={T.max():.4g} < T_max; its loss at T_max is extrapolated")
        dom = {r: dom_from_theta(dom_series[r].fit.theta, t_max) for r in ratios}
        gen = {r: gen_from_theta(gen_series[r].fit.theta, t_max) for r in ratios}
        t_lo = {r: float(data[r][0][data[r][0] > 0].min()) for r in ratios}
        curves = _Curves(dom, gen, {r: L_gen0 + float(gen[r].value(t_max)) for r in ratios}, t_lo)
        dom_at = {r: L_dom0 + float(dom[r].value(t_max)) for r in ratios}
        dom_law = fit_ratio_law(np.array(ratios), np.array([dom_at[r] for r in ratios]))
        gen_law = fit_ratio_law(np.array(ratios), np.array([curves.gen_at_tmax[r] for r in ratios]))

        main = _decide(curves, gen_law, options.lam, options.eps, L_gen0, t_max, options)
        if main.cmr is None:
            detail = ", ".join(
                f"R={r}: L_gen(T_max)={curves.gen_at_tmax[r]:.4f}"
                f"{'' if r in main.tolerance else ' (over tolerance)'}, T0 {main.critical[r].kind}"
                for r in ratios
            )
            raise NoFeasibleRatio(
                f"λ={options.lam}, ε={options.eps}, limit L_gen ≤ "
                f"{general_loss_limit(L_gen0, options.eps, options.relative_eps):.4f}: {detail}"
            )
        cells = []
        for lam in options.sensitivity_lams:
            for eps in options.sensitivity_eps:
                d = _decide(curves, gen_law, lam, eps, L_gen0, t_max, options)
                a = answer_with_interval(d.answer_model, (), target, options.ci_level)
                cells.append(SensitivityCell(float(lam), float(eps), d.tolerance, d.feasible, d.cmr, a.ratio, a.basis))
        boot = (
            _bootstrap(dom_series, gen_series, ratios, L_gen0, t_max, curves, options, rng, messages)
            if options.n_bootstrap
            else None
        )
        fits = [
            RatioFit(
                ratio=r,
                n_points=len(dom_series[r].x),
                dom=dom[r],
                gen=gen[r],
                dom_rmse=dom_series[r].fit.rmse,
                gen_rmse=gen_series[r].fit.rmse,
                dom_at_tmax=dom_at[r],
                gen_at_tmax=curves.gen_at_tmax[r],
                t0=main.critical[r].t0,
                t0_kind=main.critical[r].kind,
                in_tolerance=r in main.tolerance,
                feasible=r in main.feasible,
                **(boot.per_ratio[r] if boot else {}),
            )
            for r in ratios
        ]
    return CmrAnalysis(
        options=options,
        t_max=float(t_max),
        L_dom0=float(L_dom0),
        L_gen0=float(L_gen0),
        target_tokens=target,
        dom_ratio_law=dom_law,
        gen_ratio_law=gen_law,
        fits=tuple(fits),
        tolerance_set=main.tolerance,
        feasible_set=main.feasible,
        cmr=float(main.cmr),
        tolerance=main.answer_model.tolerance,
        cmr_law=main.law,
        cmr_law_points=main.law_points,
        cmr_law_residual=cmr_law_residual(main.law, main.law_points),
        answer_model=main.answer_model,
        answer_draws=boot.answer_models if boot else (),
        noise=boot.noise if boot else {},
        sensitivity=tuple(cells),
        cmr_law_ci=boot.law_ci if boot else {},
        cmr_distribution=boot.cmr_distribution if boot else {},
        notes=tuple(notes),
        warnings=unique_messages(messages),
    )


@dataclass(frozen=True)
class _Bootstrap:
    per_ratio: dict[float, dict[str, object]]
    answer_models: tuple[CmrAnswerModel, ...]
    noise: dict[str, Ar1Noise]
    law_ci: dict[str, tuple[float, float]]
    cmr_distribution: dict[float | None, float]


def _bootstrap(
    dom_series: dict[float, SeriesFit],
    gen_series: dict[float, SeriesFit],
    ratios: list[float],
    L_gen0: float,
    t_max: float,
    curves: _Curves,
    options: CmrOptions,
    rng: np.random.Generator,
    messages: list[str],
) -> _Bootstrap:
    """Every trajectory redrawn with calibrated AR(1) checkpoint noise and refitted; each replicate pushed through the
    whole decision at the main λ, ε (the ratio law at T_max is refitted per replicate, so the tolerance moves too)."""
    B = options.n_bootstrap
    noise = {
        "dom": calibrate_ar1([dom_series[r] for r in ratios], DOM_FORM, rng, options.noise_simulations),
        "gen": calibrate_ar1([gen_series[r] for r in ratios], GEN_FORM, rng, options.noise_simulations),
    }
    dom_draws, slow_dom = ar1_bootstrap([dom_series[r] for r in ratios], DOM_FORM, noise["dom"], B, rng)
    gen_draws, slow_gen = ar1_bootstrap([gen_series[r] for r in ratios], GEN_FORM, noise["gen"], B, rng)
    if slow_dom + slow_gen:
        messages.append(f"{slow_dom + slow_gen} trajectory refits stopped at the LM iteration limit (kept)")
    t0 = {r: np.full(B, np.nan) for r in ratios}
    at_tmax = {r: np.full(B, np.nan) for r in ratios}
    feasible = {r: np.zeros(B, dtype=bool) for r in ratios}
    law_draws = np.full((B, 3), np.nan)
    cmrs: list[float | None] = []
    models: list[CmrAnswerModel] = []
    for b in range(B):
        dom_b = {r: dom_draws[i][b] for i, r in enumerate(ratios)}
        gen_b = {r: gen_draws[i][b] for i, r in enumerate(ratios)}
        if not all(np.isfinite(dom_b[r]).all() and np.isfinite(gen_b[r]).all() for r in ratios):
            continue
        dom = {r: dom_from_theta(dom_b[r], t_max) for r in ratios}
        gen = {r: gen_from_theta(gen_b[r], t_max) for r in ratios}
        gen_at = {r: L_gen0 + float(gen[r].value(t_max)) for r in ratios}
        try:
            gen_law = fit_ratio_law(np.array(ratios), np.array([gen_at[r] for r in ratios]))
            d = _decide(
                _Curves(dom, gen, gen_at, curves.t_lo), gen_law, options.lam, options.eps, L_gen0, t_max, options
            )
        except DegenerateData:
            continue
        for r in ratios:
            t0[r][b] = d.critical[r].t0
            at_tmax[r][b] = gen_at[r]
            feasible[r][b] = d.critical[r].feasible
        cmrs.append(d.cmr)
        models.append(d.answer_model)
        if d.law is not None:
            law_draws[b] = (d.law.alpha4, d.law.s4, d.law.beta3)
    if len(models) < B:
        messages.append(f"{B - len(models)} of {B} bootstrap replicates dropped (a non-finite refit)")
    level, ok = options.ci_level, len(models)
    per_ratio = {}
    for i, r in enumerate(ratios):
        doms = np.array([list(asdict(dom_from_theta(t, t_max)).values()) for t in dom_draws[i]])
        gens = np.array([list(asdict(gen_from_theta(t, t_max)).values()) for t in gen_draws[i]])
        per_ratio[r] = {
            "dom_ci": {n: percentile_interval(doms[:, j], level) for j, n in enumerate(("alpha1", "s1", "beta1"))},
            "gen_ci": {
                n: percentile_interval(gens[:, j], level)
                for j, n in enumerate(("alpha2", "s2", "alpha3", "s3", "beta2"))
            },
            "t0_ci": percentile_interval(t0[r], level),
            "gen_at_tmax_ci": percentile_interval(at_tmax[r], level),
            "feasible_frequency": float(feasible[r].sum() / ok) if ok else None,
        }
    distribution: dict[float | None, float] = {}
    for c in cmrs:
        distribution[c] = distribution.get(c, 0.0) + 1.0 / len(cmrs)
    law_ci = (
        {n: percentile_interval(law_draws[:, j], level) for j, n in enumerate(("alpha4", "s4", "beta3"))}
        if np.isfinite(law_draws[:, 0]).any()
        else {}
    )
    return _Bootstrap(per_ratio, tuple(models), noise, law_ci, distribution)
