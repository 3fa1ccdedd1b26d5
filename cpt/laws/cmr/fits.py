"""Least-squares fits of Paper B's forms, each with bounded exponents and several starts (``power_fit``).

Exponents are fitted with ``T`` scaled to order one (by ``T_max``, or the median ``T0`` for the CMR law) and the
coefficients are returned in token units.
"""

from __future__ import annotations

import numpy as np

from cpt.laws.cmr.forms import PAPER_TOKEN_UNIT, CmrLaw, DomTrajectory, GenTrajectory, PowerLaw
from cpt.laws.errors import DegenerateData, TooFewPoints
from cpt.laws.power_fit import PowerSumFit, fit_power_sum

# Exponent bounds, T scaled to (0, 1] by T_max. The general-loss pair is kept apart by MIN_EXPONENT_GAP and its
# smallest exponent within GEN_EXPONENTS: closer or wilder terms fit eval noise with huge cancelling amplitudes
# (s → 0 with α → ±∞ imitates log T), which moved T0 by factors of several on synthetic pilots.
DOM_EXPONENTS = (-2.0, 2.0)
GEN_EXPONENTS = (-1.0, 1.5)
MIN_EXPONENT_GAP = 0.25
RATIO_EXPONENTS = (0.05, 5.0)  # s > 0, so R = 0 is allowed (0^s = 0)
CMR_EXPONENTS = (-3.0, 3.0)


def clean_xy(x: np.ndarray, y: np.ndarray, what: str, need: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat float arrays of equal length, finite, with ``need`` points, a non-flat ``y`` and 3 distinct ``x``."""
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
    R, L = clean_xy(R, L, "loss-against-ratio law", 4)
    if (R < 0).any() or (R > 1).any():
        raise DegenerateData(f"mixture ratios outside [0, 1]: {R[(R < 0) | (R > 1)].tolist()}", "pass R in [0, 1]")
    fit = fit_power_sum(R, L, 1, RATIO_EXPONENTS)
    return PowerLaw(fit.amplitudes[0], fit.exponents[0], fit.intercept)


def positive_t(T: np.ndarray, dL: np.ndarray, what: str, need: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``T > 0`` checkpoints: ``ΔL(0) = 0`` by definition and is not fitted (``analysis`` module docstring)."""
    T = np.asarray(T, dtype=np.float64).ravel()
    dL = np.asarray(dL, dtype=np.float64).ravel()
    if T.shape != dL.shape:
        raise DegenerateData(f"{what}: {T.size} token counts but {dL.size} losses", "pass one loss per checkpoint")
    if not np.isfinite(T).all() or (T < 0).any():
        raise DegenerateData(f"{what}: token counts must be finite and ≥ 0", "repair the checkpoint token counts")
    keep = T > 0
    return clean_xy(T[keep], dL[keep], what, need)


def fit_dom_scaled(x: np.ndarray, y: np.ndarray) -> PowerSumFit:
    """The domain form on ``x = T / t_scale``."""
    return fit_power_sum(x, y, 1, DOM_EXPONENTS)


def fit_gen_scaled(x: np.ndarray, y: np.ndarray) -> PowerSumFit:
    """The general form on ``x = T / t_scale``."""
    return fit_power_sum(x, y, 2, GEN_EXPONENTS, min_gap=MIN_EXPONENT_GAP)


def dom_from_theta(theta: np.ndarray, t_scale: float) -> DomTrajectory:
    """Scaled parameters ``[a, s, b]`` → the token-unit trajectory."""
    a, s, b = (float(v) for v in theta)
    return DomTrajectory(a * t_scale**-s, s, b)


def gen_from_theta(theta: np.ndarray, t_scale: float) -> GenTrajectory:
    """Scaled parameters ``[a2, a3, s2, s3, b]`` → the token-unit trajectory."""
    a2, a3, s2, s3, b = (float(v) for v in theta)
    return GenTrajectory(a2 * t_scale**-s2, s2, a3 * t_scale**-s3, s3, b)


def fit_dom_trajectory(T: np.ndarray, dL: np.ndarray, t_scale: float | None = None) -> DomTrajectory:
    """``ΔL_dom(T) = α1·T^s1 + β1`` on the ``T > 0`` checkpoints, ``s1 ∈ [−2, 2]`` (``t_scale``: default max T)."""
    T, dL = positive_t(T, dL, "domain-loss trajectory", 4)
    scale = float(t_scale or T.max())
    return dom_from_theta(fit_dom_scaled(T / scale, dL).theta, scale)


def fit_gen_trajectory(T: np.ndarray, dL: np.ndarray, t_scale: float | None = None) -> GenTrajectory:
    """``ΔL_gen(T) = α2·T^s2 + α3·T^s3 + β2`` on the ``T > 0`` checkpoints: ``s2 ∈ [−1, 1.5]``, ``s3 − s2 ∈
    [0.25, 2.5]``; several starts from a grid over ``(s2, s3)``."""
    T, dL = positive_t(T, dL, "general-loss trajectory", 6)
    scale = float(t_scale or T.max())
    return gen_from_theta(fit_gen_scaled(T / scale, dL).theta, scale)


def fit_cmr_law(T0s: np.ndarray, Rs: np.ndarray, token_unit: float = PAPER_TOKEN_UNIT) -> CmrLaw:
    """``R_CMR(T) = α4·(T/token_unit)^s4 + β3`` through the ``(T0(R), R)`` pairs, ``s4 ∈ [−3, 3]``.

    Fitted with ``T`` scaled by its median, then expressed in ``token_unit`` (the paper's 0.2B by default, so the
    coefficients compare with the published ones). Three points determine the three coefficients exactly.
    """
    T0s, Rs = np.asarray(T0s, dtype=np.float64).ravel(), np.asarray(Rs, dtype=np.float64).ravel()
    if T0s.size and (not np.isfinite(T0s).all() or (T0s <= 0).any()):
        raise DegenerateData("critical token counts must be finite and positive", "pass the roots T0(R) > 0")
    T0s, Rs = clean_xy(T0s, Rs, "CMR law", 3)
    scale = float(np.median(T0s))
    fit = fit_power_sum(T0s / scale, Rs, 1, CMR_EXPONENTS)
    (a,), (s,) = fit.amplitudes, fit.exponents
    return CmrLaw(a * (token_unit / scale) ** s, s, fit.intercept, float(token_unit))


def cmr_law_at_bound(law: CmrLaw | None, rtol: float = 1e-3) -> bool:
    """Whether the fitted exponent sits on its search bound (the data did not determine it)."""
    if law is None:
        return False
    lo, hi = CMR_EXPONENTS
    return bool(abs(law.s4 - lo) <= rtol * (hi - lo) or abs(law.s4 - hi) <= rtol * (hi - lo))


def cmr_law_residual(law: CmrLaw | None, points: tuple[tuple[float, float], ...]) -> float | None:
    """RMSE (in R) of a CMR law at its own (T0, R) points; None without a law."""
    if law is None or not points:
        return None
    t0, r = np.array(points, dtype=np.float64).T
    return float(np.sqrt(np.mean((law.predict(t0) - r) ** 2)))
