"""Critical token counts, the tolerance set and the feasible set (docs/science.md §3, §6).

Sign convention. The Lagrangian is ``F(T) = L_dom(T) + λ·(L_gen(T) − L_gen0 − ε)``, so
``∂F/∂T = dΔL_dom/dT + λ·dΔL_gen/dT``; CPT pays while ``F`` falls. A ratio is **feasible** when ``F`` is falling at
the budget, i.e. ``∂F/∂T ≤ 0`` on ``[T0, T_max]``, and ``T0`` is the **last** crossing of ``∂F/∂T`` from positive to
non-positive: the turning point after which more CPT keeps paying. (The first crossing is wrong for a trajectory
that dips, rises and turns again: it would be called feasible from the start and its turning point lost.)

- ``kind="root"``: ``∂F/∂T`` crosses + → ≤ 0 at ``T0`` and stays ≤ 0 up to ``T_max``; these ``(T0, R)`` pairs
  feed the CMR law;
- ``kind="at_start"``: ``∂F/∂T ≤ 0`` on the whole scanned range (feasible; ``T0 = t_min`` carries no law
  information);
- ``kind="none"``: ``∂F/∂T > 0`` at ``T_max`` (``F`` still rising at the budget): ``T0 = T_max``, not feasible.

docs/science.md §3 words feasibility as "∂F/∂T ≤ 0 for some T ≤ T_max"; with T0 the last crossing (§6) that reads
"on [T0, T_max]": a ratio whose F fell early and is rising again at the budget is not feasible — more CPT at that
ratio no longer pays.

For the forms of Paper B, ``T·∂F/∂T`` is a sum of three power terms, so it changes sign at most twice (Descartes'
rule for generalised polynomials): + → −, − → + → −, + → − → + and − → + are all the shapes there are.

``λ = inf`` drops the domain term: ``T0`` is where ``dΔL_gen/dT`` last turns ``≤ 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import brentq

from cpt.laws.cmr.forms import DomTrajectory, GenTrajectory, PowerLaw
from cpt.laws.errors import DegenerateData

CriticalKind = Literal["root", "at_start", "none"]


@dataclass(frozen=True)
class CriticalPoint:
    t0: float
    kind: CriticalKind

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
    """``T0`` in ``[t_min, t_max]`` and how it was reached (module docstring).

    ``∂F/∂T`` is sampled on a log-spaced grid (``t_min`` defaults to ``1e-4·t_max``); the last sign change from
    positive to non-positive is refined by brentq in ``log T``. A wiggle narrower than the grid spacing can be missed.
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
    if not np.isfinite(h).all():
        raise DegenerateData("∂F/∂T is not finite on the scanned range", "check the trajectory fits for overflow")
    if h[-1] > 0:
        return CriticalPoint(float(t_max), "none")
    crossings = np.flatnonzero((h[:-1] > 0) & (h[1:] <= 0))
    if crossings.size == 0:
        return CriticalPoint(lo, "at_start")
    i = int(crossings[-1]) + 1
    if h[i] == 0:
        return CriticalPoint(float(math.exp(u[i])), "root")
    root = brentq(
        lambda v: float(_scaled_dfdt(dom, gen, lam, np.exp(np.array(v)))), u[i - 1], u[i], xtol=1e-14, rtol=1e-15
    )
    return CriticalPoint(float(math.exp(root)), "root")


def critical_tokens(
    dom: DomTrajectory, gen: GenTrajectory, lam: float, t_max: float, t_min: float | None = None
) -> float:
    """``T0``: the last root of ``dΔL_dom/dT + λ·dΔL_gen/dT = 0`` on ``(0, t_max]`` where ``∂F/∂T`` turns ``≤ 0``;
    ``t_max`` when ``F`` is still rising at ``t_max`` (critical); ``t_min`` when it falls throughout."""
    return critical_point(dom, gen, lam, t_max, t_min).t0


def general_loss_limit(L_gen0: float, eps: float, relative: bool) -> float:
    """``L_gen0 + ε`` (``L_gen0 + ε·|L_gen0|`` when ``relative``): the most general loss the tolerance allows."""
    return L_gen0 + (eps * abs(L_gen0) if relative else eps)


def tolerance_set(
    gen_at_tmax: Mapping[float, float], L_gen0: float, eps: float, relative: bool = False
) -> tuple[float, ...]:
    """``A = {R : L_gen(R, T_max) ≤ L_gen0 + ε}`` over the pilot ratios, ascending."""
    limit = general_loss_limit(L_gen0, eps, relative)
    return tuple(sorted(float(r) for r, loss in gen_at_tmax.items() if loss <= limit))


_R_GRID = np.linspace(0.0, 1.0, 10001)


def tolerance_interval(
    gen_law: PowerLaw, L_gen0: float, eps: float, relative: bool = False
) -> tuple[float, float] | None:
    """The ratios ``R ∈ [0, 1]`` whose general loss at ``T_max`` (the ratio law ``α·R^s + β``) stays within the
    tolerance, as an interval ``(lo, hi)``: the law is monotone in ``R``, so the tolerable ratios are contiguous.
    None when no ratio is tolerable. Resolution 1e-4."""
    ok = np.flatnonzero(gen_law(_R_GRID) <= general_loss_limit(L_gen0, eps, relative))
    if ok.size == 0:
        return None
    return float(_R_GRID[ok[0]]), float(_R_GRID[ok[-1]])


def feasible_set(critical: Mapping[float, CriticalPoint], tolerance: Iterable[float]) -> tuple[float, ...]:
    """``F = {R ∈ A : ∂F/∂T ≤ 0 on [T0, T_max]}``, ratios ascending."""
    allowed = set(tolerance)
    return tuple(sorted(r for r, cp in critical.items() if cp.feasible and r in allowed))
