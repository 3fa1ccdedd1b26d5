"""Paper B: critical mixture ratio (CMR) — loss trajectories, critical token counts, feasible ratios, the CMR law.

Gu et al., arXiv 2407.17467 (docs/science.md §3). ``R`` is the domain share of the CPT data, ``T`` CPT tokens
(always tokens here; fits scale ``T`` by ``T_max`` internally and return token-unit coefficients).

Sign convention. The Lagrangian is ``F(T) = L_dom(T) + λ·(L_gen(T) − L_gen0 − ε)``, so
``∂F/∂T = dΔL_dom/dT + λ·dΔL_gen/dT``. CPT pays while ``F`` falls. A ratio is **feasible** when ``∂F/∂T ≤ 0`` for
some ``T ≤ T_max``. The critical token count ``T0`` is the first ``T`` in ``[t_min, T_max]`` where ``∂F/∂T ≤ 0``:

- ``kind="root"``: ``∂F/∂T`` is positive (general loss rising faster than the domain gain is worth) and crosses to
  ``≤ 0`` at ``T0`` — found by brentq on a log-T grid; these ``(T0, R)`` pairs feed the CMR law;
- ``kind="at_start"``: ``∂F/∂T ≤ 0`` already at ``t_min`` (feasible; ``T0 = t_min`` carries no law information);
- ``kind="none"``: ``∂F/∂T > 0`` up to ``T_max``: ``T0 = T_max``, critical, not feasible.

``λ = inf`` drops the domain term: ``T0`` is where ``dΔL_gen/dT`` turns ``≤ 0``.

Judgment calls (recorded in every result's notes):

- ``T = 0`` checkpoints are not fitted: ``ΔL(0) = 0`` by definition, but the power-law forms with a free intercept
  describe the loss after the first steps of CPT (warm-up and the distribution shift are not a power law), and
  anchoring them at 0 would bias the intercept and exponent.
- The loss at ``T_max`` (tolerance set, ratio laws) is the trajectory fit's value at ``T_max``, not the last noisy
  checkpoint.
- The predicted CMR at a target budget is ``clip(R_CMR(T_target), 0, 1)`` intersected with the tolerance set of the
  general-loss ratio law at ``T_max``: ``A = {R ∈ [0, 1] : L_gen(R) ≤ L_gen0 + ε}``; the prediction is kept when it
  lies in ``A``, else it becomes the largest ``R ∈ A`` below it (None when there is none).
- Intervals come from a residual bootstrap of every trajectory (fixed design, independent equal-variance eval
  noise), each replicate pushed through the whole decision: ``T0``, tolerance set, CMR, CMR law, prediction. They
  cover the noise of the pilot curves, not a misspecified law.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
from scipy.optimize import brentq

from cpt.laws._common import (
    captured_warnings,
    json_map,
    json_number,
    percentile_interval,
    single_threaded_blas,
    unique_messages,
)
from cpt.laws.errors import DegenerateData, NoFeasibleRatio, TooFewPoints
from cpt.laws.power_fit import PowerSumFit, fit_power_sum, residual_bootstrap

PAPER_TOKEN_UNIT = 200_000_000  # the paper's T unit: 0.2B tokens (T = 100 ≡ 20B tokens)

# Exponent bounds, T scaled to (0, 1] by T_max. The general-loss pair is kept apart by MIN_EXPONENT_GAP and its
# smallest exponent within GEN_EXPONENTS: closer or wilder terms fit eval noise with huge cancelling amplitudes
# (s → 0 with α → ±∞ imitates log T), which moved T0 by factors of several on synthetic pilots.
DOM_EXPONENTS = (-2.0, 2.0)
GEN_EXPONENTS = (-1.0, 1.5)
MIN_EXPONENT_GAP = 0.25
RATIO_EXPONENTS = (0.05, 5.0)  # s > 0, so R = 0 is allowed (0^s = 0)
CMR_EXPONENTS = (-3.0, 3.0)


# --- the curve forms -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLaw:
    """``L(R) = α·R^s + β`` (loss against mixture ratio at ``T_max``)."""

    alpha: float
    s: float
    beta: float

    def __call__(self, R: np.ndarray | float) -> np.ndarray:
        R = np.asarray(R, dtype=np.float64)
        return self.alpha * np.where(R > 0, np.abs(R) ** self.s, 0.0) + self.beta


@dataclass(frozen=True)
class DomTrajectory:
    """``ΔL_dom(T) = α1·T^s1 + β1``, ``T`` in tokens."""

    alpha1: float
    s1: float
    beta1: float

    def value(self, T: np.ndarray | float) -> np.ndarray:
        return self.alpha1 * np.asarray(T, dtype=np.float64) ** self.s1 + self.beta1

    def derivative(self, T: np.ndarray | float) -> np.ndarray:
        return self.alpha1 * self.s1 * np.asarray(T, dtype=np.float64) ** (self.s1 - 1.0)


@dataclass(frozen=True)
class GenTrajectory:
    """``ΔL_gen(T) = α2·T^s2 + α3·T^s3 + β2`` (``s2 < s3``), ``T`` in tokens; lets general loss rise then fall."""

    alpha2: float
    s2: float
    alpha3: float
    s3: float
    beta2: float

    def value(self, T: np.ndarray | float) -> np.ndarray:
        T = np.asarray(T, dtype=np.float64)
        return self.alpha2 * T**self.s2 + self.alpha3 * T**self.s3 + self.beta2

    def derivative(self, T: np.ndarray | float) -> np.ndarray:
        T = np.asarray(T, dtype=np.float64)
        return self.alpha2 * self.s2 * T ** (self.s2 - 1.0) + self.alpha3 * self.s3 * T ** (self.s3 - 1.0)


@dataclass(frozen=True)
class CmrLaw:
    """``R_CMR(T) = α4·(T / token_unit)^s4 + β3``; ``predict`` takes tokens."""

    alpha4: float
    s4: float
    beta3: float
    token_unit: float = 1.0

    def predict(self, T: np.ndarray | float) -> np.ndarray:
        return self.alpha4 * (np.asarray(T, dtype=np.float64) / self.token_unit) ** self.s4 + self.beta3


# Published (α4, s4, β3) per model size, T in the paper's 0.2B-token unit: R_CMR(20B tokens) = 29.8 %, 34.9 %,
# 41.4 %, 47.8 % (a regression test of the unit handling).
PAPER_CMR_LAWS: Mapping[str, CmrLaw] = MappingProxyType(
    {
        "460M": CmrLaw(0.22524761, 0.26944345, -0.48139982, PAPER_TOKEN_UNIT),
        "940M": CmrLaw(0.7520627, 0.13720245, -1.06581937, PAPER_TOKEN_UNIT),
        "1.6B": CmrLaw(-2.36384831, -0.15125569, 1.59223649, PAPER_TOKEN_UNIT),
        "3.1B": CmrLaw(-2.5368197, -0.42071423, 0.84375368, PAPER_TOKEN_UNIT),
    }
)


# --- fits ------------------------------------------------------------------------------------------------------


def _clean_xy(x: np.ndarray, y: np.ndarray, what: str, need: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise DegenerateData(f"{what}: {x.size} abscissae but {y.size} values", "pass one value per point")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DegenerateData(f"{what}: non-finite values", "drop or repair the NaN/inf checkpoints")
    if x.size < need:
        raise TooFewPoints(what, int(x.size), need)
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        raise DegenerateData(f"{what}: the curve is flat ({y[0]:g} everywhere)", "check the eval losses")
    if np.unique(x).size < 3:
        raise DegenerateData(f"{what}: fewer than 3 distinct abscissae", "spread the points")
    return x, y


def fit_ratio_law(R: np.ndarray, L: np.ndarray) -> PowerLaw:
    """``L(R) = α·R^s + β`` with ``s ∈ [0.05, 5]`` (closed-form α, β for each s; s by grid, then Brent)."""
    R, L = _clean_xy(R, L, "loss-against-ratio law", 4)
    if (R < 0).any() or (R > 1).any():
        raise DegenerateData(f"mixture ratios outside [0, 1]: {R[(R < 0) | (R > 1)].tolist()}", "pass R in [0, 1]")
    fit = fit_power_sum(R, L, 1, RATIO_EXPONENTS)
    return PowerLaw(fit.amplitudes[0], fit.exponents[0], fit.intercept)


def _positive_t(T: np.ndarray, dL: np.ndarray, what: str, need: int) -> tuple[np.ndarray, np.ndarray]:
    T = np.asarray(T, dtype=np.float64).ravel()
    dL = np.asarray(dL, dtype=np.float64).ravel()
    if T.shape != dL.shape:
        raise DegenerateData(f"{what}: {T.size} token counts but {dL.size} losses", "pass one loss per checkpoint")
    if not np.isfinite(T).all() or (T < 0).any():
        raise DegenerateData(f"{what}: token counts must be finite and ≥ 0", "repair the checkpoint token counts")
    keep = T > 0  # T = 0 is ΔL = 0 by definition and not fitted (module docstring)
    return _clean_xy(T[keep], dL[keep], what, need)


def _dom_from_fit(fit: PowerSumFit, t_scale: float) -> DomTrajectory:
    (a,), (s,) = fit.amplitudes, fit.exponents
    return DomTrajectory(a * t_scale**-s, s, fit.intercept)


def _gen_from_fit(fit: PowerSumFit, t_scale: float) -> GenTrajectory:
    (a2, a3), (s2, s3) = fit.amplitudes, fit.exponents
    return GenTrajectory(a2 * t_scale**-s2, s2, a3 * t_scale**-s3, s3, fit.intercept)


def fit_dom_trajectory(T: np.ndarray, dL: np.ndarray, t_scale: float | None = None) -> DomTrajectory:
    """``ΔL_dom(T) = α1·T^s1 + β1`` on the ``T > 0`` checkpoints, ``s1 ∈ [−2, 2]`` (``t_scale``: default max T)."""
    T, dL = _positive_t(T, dL, "domain-loss trajectory", 4)
    scale = float(t_scale or T.max())
    return _dom_from_fit(fit_power_sum(T / scale, dL, 1, DOM_EXPONENTS), scale)


def fit_gen_trajectory(T: np.ndarray, dL: np.ndarray, t_scale: float | None = None) -> GenTrajectory:
    """``ΔL_gen(T) = α2·T^s2 + α3·T^s3 + β2`` on the ``T > 0`` checkpoints: ``s2 ∈ [−1, 1.5]``, ``s3 − s2 ∈
    [0.25, 2.5]``; several starts from a grid over ``(s2, s3)``."""
    T, dL = _positive_t(T, dL, "general-loss trajectory", 6)
    scale = float(t_scale or T.max())
    fit = fit_power_sum(T / scale, dL, 2, GEN_EXPONENTS, min_gap=MIN_EXPONENT_GAP)
    return _gen_from_fit(fit, scale)


def bootstrap_dom_trajectory(
    T: np.ndarray,
    dL: np.ndarray,
    fit: DomTrajectory,
    n_bootstrap: int,
    rng: np.random.Generator,
    t_scale: float | None = None,
) -> list[DomTrajectory | None]:
    """Residual-bootstrap refits of a domain trajectory (None where a refit was not finite)."""
    T, dL = _positive_t(T, dL, "domain-loss trajectory", 4)
    scale = float(t_scale or T.max())
    base = _power_fit_of(np.array([fit.alpha1 * scale**fit.s1]), np.array([fit.s1]), fit.beta1)
    draws, _ = residual_bootstrap(T / scale, dL, base, DOM_EXPONENTS, n_bootstrap, rng)
    return [
        None if not np.isfinite(d).all() else DomTrajectory(d[0] * scale ** -d[1], float(d[1]), float(d[2]))
        for d in draws
    ]


def bootstrap_gen_trajectory(
    T: np.ndarray,
    dL: np.ndarray,
    fit: GenTrajectory,
    n_bootstrap: int,
    rng: np.random.Generator,
    t_scale: float | None = None,
) -> list[GenTrajectory | None]:
    """Residual-bootstrap refits of a general-loss trajectory (None where a refit was not finite)."""
    T, dL = _positive_t(T, dL, "general-loss trajectory", 6)
    scale = float(t_scale or T.max())
    base = _power_fit_of(
        np.array([fit.alpha2 * scale**fit.s2, fit.alpha3 * scale**fit.s3]), np.array([fit.s2, fit.s3]), fit.beta2
    )
    draws, _ = residual_bootstrap(T / scale, dL, base, GEN_EXPONENTS, n_bootstrap, rng, MIN_EXPONENT_GAP)
    return [
        None
        if not np.isfinite(d).all()
        else GenTrajectory(d[0] * scale ** -d[2], float(d[2]), d[1] * scale ** -d[3], float(d[3]), float(d[4]))
        for d in draws
    ]


def _power_fit_of(amplitudes: np.ndarray, exponents: np.ndarray, intercept: float) -> PowerSumFit:
    return PowerSumFit(tuple(map(float, amplitudes)), tuple(map(float, exponents)), float(intercept), 0.0, 1, True, "")


def fit_cmr_law(T0s: np.ndarray, Rs: np.ndarray, token_unit: float = PAPER_TOKEN_UNIT) -> CmrLaw:
    """``R_CMR(T) = α4·(T/token_unit)^s4 + β3`` through the ``(T0(R), R)`` pairs, ``s4 ∈ [−3, 3]``.

    Fitted with ``T`` scaled by its median, then expressed in ``token_unit`` (the paper's 0.2B by default, so the
    coefficients compare with the published ones). Three points determine the three coefficients exactly.
    """
    T0s, Rs = np.asarray(T0s, dtype=np.float64).ravel(), np.asarray(Rs, dtype=np.float64).ravel()
    if T0s.size and (not np.isfinite(T0s).all() or (T0s <= 0).any()):
        raise DegenerateData("critical token counts must be finite and positive", "pass the roots T0(R) > 0")
    T0s, Rs = _clean_xy(T0s, Rs, "CMR law", 3)
    scale = float(np.median(T0s))
    fit = fit_power_sum(T0s / scale, Rs, 1, CMR_EXPONENTS)
    (a,), (s,) = fit.amplitudes, fit.exponents
    return CmrLaw(a * (token_unit / scale) ** s, s, fit.intercept, float(token_unit))


# --- critical tokens, tolerance, feasibility -------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalPoint:
    t0: float
    kind: Literal["root", "at_start", "none"]

    @property
    def feasible(self) -> bool:
        return self.kind != "none"


def _scaled_dfdt(dom: DomTrajectory, gen: GenTrajectory, lam: float, T: np.ndarray) -> np.ndarray:
    """``T·∂F/∂T`` (same sign as ∂F/∂T for T > 0, scale-free): ``α1s1T^s1 + λ(α2s2T^s2 + α3s3T^s3)``."""
    gen_part = gen.alpha2 * gen.s2 * T**gen.s2 + gen.alpha3 * gen.s3 * T**gen.s3
    if math.isinf(lam):
        return gen_part
    return dom.alpha1 * dom.s1 * T**dom.s1 + lam * gen_part


def critical_point(
    dom: DomTrajectory,
    gen: GenTrajectory,
    lam: float,
    t_max: float,
    t_min: float | None = None,
    grid_size: int = 512,
) -> CriticalPoint:
    """The first ``T ∈ [t_min, t_max]`` with ``∂F/∂T ≤ 0`` and how it was reached (module docstring).

    ``∂F/∂T`` is sampled on a log-spaced grid (``t_min`` defaults to ``1e-4·t_max``); the first sign change from
    positive to non-positive is refined by brentq in ``log T``. A dip narrower than the grid spacing can be missed.
    """
    if not (t_max > 0 and math.isfinite(t_max)):
        raise DegenerateData(f"t_max must be positive and finite, got {t_max}", "pass the token budget")
    if lam < 0 or math.isnan(lam):
        raise DegenerateData(f"λ must be ≥ 0, got {lam}", "λ weighs the general-loss constraint")
    lo = float(t_min) if t_min is not None else 1e-4 * t_max
    if not 0 < lo < t_max:
        raise DegenerateData(f"t_min={lo} must lie in (0, t_max={t_max})", "pass a smaller t_min")
    u = np.linspace(math.log(lo), math.log(t_max), grid_size)
    h = _scaled_dfdt(dom, gen, lam, np.exp(u))
    nonpos = np.flatnonzero(h <= 0)
    if nonpos.size == 0:
        return CriticalPoint(float(t_max), "none")
    i = int(nonpos[0])
    if i == 0:
        return CriticalPoint(lo, "at_start")
    if h[i] == 0:
        return CriticalPoint(float(math.exp(u[i])), "root")
    root = brentq(
        lambda v: float(_scaled_dfdt(dom, gen, lam, np.exp(np.array(v)))), u[i - 1], u[i], xtol=1e-14, rtol=1e-15
    )
    return CriticalPoint(float(math.exp(root)), "root")


def critical_tokens(
    dom: DomTrajectory, gen: GenTrajectory, lam: float, t_max: float, t_min: float | None = None
) -> float:
    """``T0``: the root of ``dΔL_dom/dT + λ·dΔL_gen/dT = 0`` on ``(0, t_max]`` where ``∂F/∂T`` turns ``≤ 0``;
    ``t_max`` when it stays positive (critical); ``t_min`` when it is ``≤ 0`` from the start."""
    return critical_point(dom, gen, lam, t_max, t_min).t0


def _threshold(L_gen0: float, eps: float, relative: bool) -> float:
    return L_gen0 + (eps * abs(L_gen0) if relative else eps)


def tolerance_set(
    gen_at_tmax: Mapping[float, float], L_gen0: float, eps: float, relative: bool = False
) -> tuple[float, ...]:
    """``A = {R : L_gen(R, T_max) ≤ L_gen0 + ε}`` (``ε·|L_gen0|`` when ``relative``), ratios ascending."""
    limit = _threshold(L_gen0, eps, relative)
    return tuple(sorted(float(r) for r, loss in gen_at_tmax.items() if loss <= limit))


def feasible_set(critical: Mapping[float, CriticalPoint], tolerance: Iterable[float]) -> tuple[float, ...]:
    """``F = {R ∈ A : ∂F/∂T ≤ 0 for some T ≤ T_max}``, ratios ascending."""
    allowed = set(tolerance)
    return tuple(sorted(r for r, cp in critical.items() if cp.feasible and r in allowed))


# --- the analysis ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CmrOptions:
    lam: float = 1000.0  # λ; the paper used 100–7000
    eps: float = 0.05  # general-loss tolerance (absolute, or a fraction of L_gen0 when relative_eps)
    relative_eps: bool = False
    sensitivity_lams: tuple[float, ...] = (100.0, 1000.0, 7000.0, math.inf)  # inf: only the general term counts
    sensitivity_eps: tuple[float, ...] = (0.02, 0.05, 0.1)
    min_ratios: int = 4  # the loss-against-ratio law has three coefficients
    min_trajectory_points: int = 8  # T > 0 checkpoints per ratio; the general trajectory has five coefficients
    n_bootstrap: int = 200  # residual-bootstrap replicates of every trajectory; 0 skips the intervals
    ci_level: float = 0.9
    root_grid_size: int = 512  # log-T grid on which ∂F/∂T is scanned for its first sign change

    def __post_init__(self) -> None:
        if self.lam < 0 or math.isnan(self.lam) or self.eps < 0 or not math.isfinite(self.eps):
            raise ValueError(f"λ must be ≥ 0 and ε finite and ≥ 0, got λ={self.lam}, ε={self.eps}")
        if self.min_ratios < 4 or self.min_trajectory_points < 6:
            raise ValueError("min_ratios ≥ 4 and min_trajectory_points ≥ 6 are required by the fits")
        if self.n_bootstrap < 0 or not 0 < self.ci_level < 1:
            raise ValueError("n_bootstrap ≥ 0 and 0 < ci_level < 1 are required")


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
    t0_kind: Literal["root", "at_start", "none"]
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
    predicted_cmr: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "lam": json_number(self.lam),
            "eps": self.eps,
            "tolerance_set": list(self.tolerance_set),
            "feasible_set": list(self.feasible_set),
            "cmr": self.cmr,
            "predicted_cmr": json_number(self.predicted_cmr),
        }


@dataclass(frozen=True)
class CmrAnalysis:
    options: CmrOptions
    t_max: float
    L_dom0: float
    L_gen0: float
    target_tokens: float | None
    dom_ratio_law: PowerLaw  # L_dom(R) at T_max
    gen_ratio_law: PowerLaw  # L_gen(R) at T_max
    fits: tuple[RatioFit, ...]  # ascending ratio
    tolerance_set: tuple[float, ...]
    feasible_set: tuple[float, ...]
    cmr: float  # the largest feasible pilot ratio
    tolerance_bound: float | None  # sup {R ∈ [0, 1] : gen ratio law ≤ L_gen0 + ε}
    cmr_law: CmrLaw | None  # None when fewer than 3 ratios have a root T0 (see notes)
    cmr_law_points: tuple[tuple[float, float], ...]  # (T0, R)
    predicted_cmr: float | None  # at target_tokens: clipped to [0, 1], intersected with the tolerance set
    predicted_cmr_unclipped: float | None
    sensitivity: tuple[SensitivityCell, ...]  # every λ × ε of the options
    cmr_law_ci: dict[str, tuple[float, float]]
    predicted_cmr_ci: tuple[float, float] | None
    cmr_distribution: dict[float | None, float]  # bootstrap share of replicates per CMR (None: none feasible)
    notes: tuple[str, ...]
    warnings: tuple[str, ...]

    def fit_for(self, ratio: float) -> RatioFit:
        return next(f for f in self.fits if f.ratio == ratio)

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
            "tolerance_bound": json_number(self.tolerance_bound),
            "cmr_law": None if self.cmr_law is None else asdict(self.cmr_law),
            "cmr_law_points": [list(p) for p in self.cmr_law_points],
            "predicted_cmr": json_number(self.predicted_cmr),
            "predicted_cmr_unclipped": json_number(self.predicted_cmr_unclipped),
            "sensitivity": [c.to_json() for c in self.sensitivity],
            "cmr_law_ci": json_map(self.cmr_law_ci),
            "predicted_cmr_ci": None
            if self.predicted_cmr_ci is None
            else list(map(json_number, self.predicted_cmr_ci)),
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
    tolerance_bound: float | None
    predicted_raw: float | None
    predicted: float | None
    notes: tuple[str, ...]


_R_GRID = np.linspace(0.0, 1.0, 10001)


def _decide(
    curves: _Curves,
    gen_law: PowerLaw,
    lam: float,
    eps: float,
    relative: bool,
    L_gen0: float,
    t_max: float,
    target_tokens: float | None,
    options: CmrOptions,
) -> _Decision:
    notes: list[str] = []
    critical = {
        r: critical_point(
            curves.dom[r], curves.gen[r], lam, t_max, min(curves.t_lo[r], t_max / 2), options.root_grid_size
        )
        for r in curves.dom
    }
    tol = tolerance_set(curves.gen_at_tmax, L_gen0, eps, relative)
    feas = feasible_set(critical, tol)
    cmr = max(feas) if feas else None

    points = tuple(sorted((cp.t0, r) for r, cp in critical.items() if cp.kind == "root" and r > 0))
    law = None
    if len(points) >= 3 and len({p[0] for p in points}) >= 3 and len({p[1] for p in points}) >= 2:
        law = fit_cmr_law(np.array([p[0] for p in points]), np.array([p[1] for p in points]))
    else:
        notes.append(
            f"CMR law not fitted: {len(points)} ratios have a root T0 < T_max (R = 0 and ratios feasible from the "
            "start carry no T0); at least 3 are needed"
        )

    in_a = gen_law(_R_GRID) <= _threshold(L_gen0, eps, relative)
    bound = float(_R_GRID[in_a].max()) if in_a.any() else None
    predicted_raw = predicted = None
    if target_tokens is not None and law is not None:
        predicted_raw = float(law.predict(target_tokens))
        clipped = min(max(predicted_raw, 0.0), 1.0)
        if gen_law(clipped) <= _threshold(L_gen0, eps, relative):
            predicted = clipped
        else:
            below = _R_GRID[in_a & (clipped >= _R_GRID)]
            predicted = float(below.max()) if below.size else None
            notes.append(
                f"predicted CMR {clipped:.4f} violates the general-loss tolerance at T_max; "
                + (f"lowered to {predicted:.4f}" if predicted is not None else "no ratio below it is tolerable")
            )
    return _Decision(critical, tol, feas, cmr, law, points, bound, predicted_raw, predicted, tuple(notes))


def _validate_inputs(
    trajectories: Mapping[float, tuple[np.ndarray, np.ndarray, np.ndarray]],
    L_dom0: float,
    L_gen0: float,
    t_max: float,
    options: CmrOptions,
    target_tokens: float | None,
) -> dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if len(trajectories) < options.min_ratios:
        raise TooFewPoints("CMR analysis (pilot ratios)", len(trajectories), options.min_ratios, "add pilot ratios")
    for name, v in (("L_dom0", L_dom0), ("L_gen0", L_gen0), ("t_max", t_max)):
        if not math.isfinite(v):
            raise DegenerateData(f"{name} is not finite ({v})", "pass the losses before CPT and the token budget")
    if t_max <= 0:
        raise DegenerateData(f"t_max must be positive, got {t_max}", "pass the token budget in tokens")
    if target_tokens is not None and not (math.isfinite(target_tokens) and target_tokens > 0):
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

    Raises ``NoFeasibleRatio`` when no ratio is feasible at the main (λ, ε); ``TooFewPoints``/``DegenerateData`` for
    too few ratios or checkpoints, non-finite values and flat curves. ``rng`` is required when
    ``options.n_bootstrap > 0``.
    """
    options = options or CmrOptions()
    if options.n_bootstrap and rng is None:
        raise ValueError("analyse_cmr needs an rng for its bootstrap (or options.n_bootstrap=0)")
    data = _validate_inputs(trajectories, L_dom0, L_gen0, t_max, options, target_tokens)
    ratios = sorted(data)
    notes = [
        "T = 0 checkpoints are not fitted (ΔL(0) = 0 by definition; the forms describe T > 0)",
        "losses at T_max are the trajectory fits' values at T_max",
    ]
    with single_threaded_blas(), captured_warnings() as messages:
        dom_fits, gen_fits, xs = {}, {}, {}
        for r in ratios:
            T, ld, lg = data[r]
            keep = T > 0
            x = T[keep] / t_max
            xs[r] = (x, ld[keep] - L_dom0, lg[keep] - L_gen0)
            _, yd, yg = xs[r]
            _clean_xy(x, yd, f"domain-loss trajectory at R={r}", options.min_trajectory_points)
            _clean_xy(x, yg, f"general-loss trajectory at R={r}", options.min_trajectory_points)
            dom_fits[r] = fit_power_sum(x, yd, 1, DOM_EXPONENTS)
            gen_fits[r] = fit_power_sum(x, yg, 2, GEN_EXPONENTS, min_gap=MIN_EXPONENT_GAP)
            if T.max() < t_max:
                notes.append(f"R={r}: trajectory ends at T={T.max():.4g} < T_max; its loss at T_max is extrapolated")
        dom = {r: _dom_from_fit(dom_fits[r], t_max) for r in ratios}
        gen = {r: _gen_from_fit(gen_fits[r], t_max) for r in ratios}
        curves = _Curves(
            dom,
            gen,
            {r: L_gen0 + float(gen[r].value(t_max)) for r in ratios},
            {r: float(data[r][0][data[r][0] > 0].min()) for r in ratios},
        )
        dom_at = {r: L_dom0 + float(dom[r].value(t_max)) for r in ratios}
        dom_law = fit_ratio_law(np.array(ratios), np.array([dom_at[r] for r in ratios]))
        gen_law = fit_ratio_law(np.array(ratios), np.array([curves.gen_at_tmax[r] for r in ratios]))

        main = _decide(
            curves, gen_law, options.lam, options.eps, options.relative_eps, L_gen0, t_max, target_tokens, options
        )
        if main.cmr is None:
            detail = ", ".join(
                f"R={r}: L_gen(T_max)={curves.gen_at_tmax[r]:.4f}"
                f"{'' if r in main.tolerance else ' (over tolerance)'}, T0 {main.critical[r].kind}"
                for r in ratios
            )
            raise NoFeasibleRatio(
                f"λ={options.lam}, ε={options.eps}, limit L_gen ≤ "
                f"{_threshold(L_gen0, options.eps, options.relative_eps):.4f}: {detail}"
            )
        if target_tokens is not None and target_tokens > t_max:
            notes.append("target budget beyond T_max: the CMR law extrapolates, the tolerance is the one at T_max")
        notes.extend(main.notes)

        cells = []
        for lam in options.sensitivity_lams:
            for eps in options.sensitivity_eps:
                d = _decide(curves, gen_law, lam, eps, options.relative_eps, L_gen0, t_max, target_tokens, options)
                cells.append(SensitivityCell(float(lam), float(eps), d.tolerance, d.feasible, d.cmr, d.predicted))

        boot = (
            _bootstrap(xs, dom_fits, gen_fits, ratios, L_gen0, t_max, target_tokens, curves, options, rng, messages)
            if options.n_bootstrap
            else None
        )

        fits = []
        for r in ratios:
            cp = main.critical[r]
            extra = boot["per_ratio"][r] if boot else {}
            fits.append(
                RatioFit(
                    ratio=r,
                    n_points=len(xs[r][0]),
                    dom=dom[r],
                    gen=gen[r],
                    dom_rmse=dom_fits[r].rmse,
                    gen_rmse=gen_fits[r].rmse,
                    dom_at_tmax=dom_at[r],
                    gen_at_tmax=curves.gen_at_tmax[r],
                    t0=cp.t0,
                    t0_kind=cp.kind,
                    in_tolerance=r in main.tolerance,
                    feasible=r in main.feasible,
                    **extra,
                )
            )
    return CmrAnalysis(
        options=options,
        t_max=float(t_max),
        L_dom0=float(L_dom0),
        L_gen0=float(L_gen0),
        target_tokens=None if target_tokens is None else float(target_tokens),
        dom_ratio_law=dom_law,
        gen_ratio_law=gen_law,
        fits=tuple(fits),
        tolerance_set=main.tolerance,
        feasible_set=main.feasible,
        cmr=float(main.cmr),
        tolerance_bound=main.tolerance_bound,
        cmr_law=main.law,
        cmr_law_points=main.law_points,
        predicted_cmr=main.predicted,
        predicted_cmr_unclipped=main.predicted_raw,
        sensitivity=tuple(cells),
        cmr_law_ci=boot["cmr_law_ci"] if boot else {},
        predicted_cmr_ci=boot["predicted_ci"] if boot else None,
        cmr_distribution=boot["cmr_distribution"] if boot else {},
        notes=tuple(notes),
        warnings=unique_messages(messages),
    )


def _bootstrap(
    xs: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]],
    dom_fits: dict[float, PowerSumFit],
    gen_fits: dict[float, PowerSumFit],
    ratios: list[float],
    L_gen0: float,
    t_max: float,
    target_tokens: float | None,
    curves: _Curves,
    options: CmrOptions,
    rng: np.random.Generator,
    messages: list[str],
) -> dict[str, object]:
    """Residual bootstrap of every trajectory, each replicate pushed through the whole decision at the main λ, ε.

    Trajectories are resampled independently (eval noise of different runs and eval sets is independent); the
    ratio law at T_max is refitted per replicate, so the tolerance bound varies with it.
    """
    B = options.n_bootstrap
    dom_draws, gen_draws, slow = {}, {}, 0
    for r in ratios:
        dom_draws[r], n1 = residual_bootstrap(xs[r][0], xs[r][1], dom_fits[r], DOM_EXPONENTS, B, rng)
        gen_draws[r], n2 = residual_bootstrap(xs[r][0], xs[r][2], gen_fits[r], GEN_EXPONENTS, B, rng, MIN_EXPONENT_GAP)
        slow += n1 + n2
    if slow:
        messages.append(f"{slow} trajectory refits stopped at the LM iteration limit (kept: no worse than their start)")
    t0 = {r: np.full(B, np.nan) for r in ratios}
    at_tmax = {r: np.full(B, np.nan) for r in ratios}
    feasible = {r: np.zeros(B, dtype=bool) for r in ratios}
    law_draws = np.full((B, 3), np.nan)
    predicted = np.full(B, np.nan)
    cmrs: list[float | None] = []
    failed = 0
    for b in range(B):
        if not all(np.isfinite(dom_draws[r][b]).all() and np.isfinite(gen_draws[r][b]).all() for r in ratios):
            failed += 1
            continue
        dom = {
            r: _dom_from_fit(_power_fit_of(dom_draws[r][b][:1], dom_draws[r][b][1:2], dom_draws[r][b][2]), t_max)
            for r in ratios
        }
        gen = {
            r: _gen_from_fit(_power_fit_of(gen_draws[r][b][:2], gen_draws[r][b][2:4], gen_draws[r][b][4]), t_max)
            for r in ratios
        }
        gen_at = {r: L_gen0 + float(gen[r].value(t_max)) for r in ratios}
        rep = _Curves(dom, gen, gen_at, curves.t_lo)
        try:
            gen_law = fit_ratio_law(np.array(ratios), np.array([gen_at[r] for r in ratios]))
        except DegenerateData:
            failed += 1
            continue
        d = _decide(rep, gen_law, options.lam, options.eps, options.relative_eps, L_gen0, t_max, target_tokens, options)
        for r in ratios:
            t0[r][b] = d.critical[r].t0
            at_tmax[r][b] = gen_at[r]
            feasible[r][b] = d.critical[r].feasible
        cmrs.append(d.cmr)
        if d.law is not None:
            law_draws[b] = (d.law.alpha4, d.law.s4, d.law.beta3)
        if d.predicted is not None:
            predicted[b] = d.predicted
    if failed:
        messages.append(f"{failed} of {B} bootstrap replicates dropped (a non-finite trajectory refit)")
    level = options.ci_level
    ok = B - failed
    per_ratio = {}
    for r in ratios:
        per_ratio[r] = {
            "dom_ci": {
                n: percentile_interval(_dom_draws_in_tokens(dom_draws[r], t_max)[:, j], level)
                for j, n in enumerate(("alpha1", "s1", "beta1"))
            },
            "gen_ci": {
                n: percentile_interval(_gen_draws_in_tokens(gen_draws[r], t_max)[:, j], level)
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
    return {
        "per_ratio": per_ratio,
        "cmr_law_ci": law_ci,
        "predicted_ci": percentile_interval(predicted, level) if np.isfinite(predicted).any() else None,
        "cmr_distribution": distribution,
    }


def _dom_draws_in_tokens(draws: np.ndarray, t_scale: float) -> np.ndarray:
    """Domain-trajectory draws ``[a, s, b]`` in ``T/t_scale`` units → token-unit ``[α1, s1, β1]``."""
    out = draws.copy()
    out[:, 0] = draws[:, 0] * t_scale ** -draws[:, 1]
    return out


def _gen_draws_in_tokens(draws: np.ndarray, t_scale: float) -> np.ndarray:
    """General-trajectory draws ``[a2, a3, s2, s3, b]`` (scaled) → token-unit ``[α2, s2, α3, s3, β2]``."""
    return np.column_stack(
        [
            draws[:, 0] * t_scale ** -draws[:, 2],
            draws[:, 2],
            draws[:, 1] * t_scale ** -draws[:, 3],
            draws[:, 3],
            draws[:, 4],
        ]
    )


# --- held-out error -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutError:
    """How well the trajectory forms extrapolate: fitted on the early checkpoints, scored on the last ones."""

    holdout_fraction: float
    per_ratio: dict[float, tuple[float, float]]  # R → (domain RMSE, general RMSE) on the held-out checkpoints
    rmse: float  # over every held-out checkpoint of every ratio, both losses

    def to_json(self) -> dict[str, object]:
        return {
            "holdout_fraction": self.holdout_fraction,
            "per_ratio": {str(r): [json_number(d), json_number(g)] for r, (d, g) in self.per_ratio.items()},
            "rmse": json_number(self.rmse),
        }


def trajectory_heldout_error(
    trajectories: Mapping[float, tuple[np.ndarray, np.ndarray, np.ndarray]],
    L_dom0: float,
    L_gen0: float,
    holdout_fraction: float = 0.25,
) -> HeldOutError:
    """Refit each ratio's trajectories on the checkpoints with ``T ≤ (1 − holdout_fraction)·T_last`` and measure the
    error of their predictions at the later checkpoints: the extrapolation the CMR analysis relies on."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must lie in (0, 1), got {holdout_fraction}")
    per_ratio, squares = {}, []
    with single_threaded_blas(), captured_warnings():
        for r, (T, dom, gen) in sorted(trajectories.items()):
            T, dom, gen = (np.asarray(a, dtype=np.float64) for a in (T, dom, gen))
            cutoff = (1 - holdout_fraction) * T.max()
            early = cutoff >= T
            late = ~early
            if late.sum() == 0:
                raise TooFewPoints(f"held-out checkpoints at R={r}", 0, 1, "evaluate more often")
            dom_fit = fit_dom_trajectory(T[early], dom[early] - L_dom0)
            gen_fit = fit_gen_trajectory(T[early], gen[early] - L_gen0)
            err_dom = dom_fit.value(T[late]) - (dom[late] - L_dom0)
            err_gen = gen_fit.value(T[late]) - (gen[late] - L_gen0)
            per_ratio[float(r)] = (float(np.sqrt(np.mean(err_dom**2))), float(np.sqrt(np.mean(err_gen**2))))
            squares.extend((err_dom**2).tolist() + (err_gen**2).tolist())
    return HeldOutError(holdout_fraction, per_ratio, float(np.sqrt(np.mean(squares))))


def cmr_law_residual(analysis: CmrAnalysis) -> float | None:
    """RMSE (in R) of the fitted CMR law at its own (T0, R) points; None without a law."""
    if analysis.cmr_law is None or not analysis.cmr_law_points:
        return None
    t0, r = np.array(analysis.cmr_law_points, dtype=np.float64).T
    return float(np.sqrt(np.mean((analysis.cmr_law.predict(t0) - r) ** 2)))


def cmr_law_at_bound(law: CmrLaw | None, rtol: float = 1e-3) -> bool:
    """Whether the fitted exponent sits on its search bound (the data did not determine it)."""
    if law is None:
        return False
    lo, hi = CMR_EXPONENTS
    return bool(abs(law.s4 - lo) <= rtol * (hi - lo) or abs(law.s4 - hi) <= rtol * (hi - lo))
