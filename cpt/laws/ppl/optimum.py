"""The optimal landscape: the (μ, σ) that minimises the fitted loss over the search region, as a usable answer.

With ``D_c > 0`` minimising ``L`` means maximising ``g(μ, σ)``, and ``D`` is a separate factor, so the optimum does
not depend on the budget. It is searched on a grid laid over the search region (reachable by the pool, inside the
pilots' hull) and reported with

- the sides of the region it sits on (then the law wants landscapes the pool or the pilots do not supply);
- the bootstrap spread of (μ̂, σ̂): the optimum of every bootstrap refit of the law over the same region;
- the interval of its predicted loss at a reference budget (the law refits evaluated at the optimum), and the
  **near-optimal set**: every point of the region whose predicted loss lies within that interval — landscapes the
  data cannot tell apart from the optimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cpt.laws._common import json_number, percentile_interval
from cpt.laws.errors import DegenerateData
from cpt.laws.ppl.law import PplLawParams, g
from cpt.laws.ppl.region import SearchRegion


@dataclass(frozen=True, eq=False)
class RegionGrid:
    mu: np.ndarray  # (M,)
    sigma: np.ndarray  # (M, S): σ values at each μ, spanning that μ's σ range; NaN where the region has a gap
    sides: tuple[str, str, np.ndarray, np.ndarray]  # μ low/high side names; per-μ σ low/high side names

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.sigma)

    def boundary_sides(self, i: int, j: int) -> tuple[str, ...]:
        sides = []
        gap = ~self.valid[:, 0]
        if i == 0:
            sides.append(self.sides[0])
        elif gap[i - 1]:
            sides.append("mu (edge of a gap in the region)")
        if i == len(self.mu) - 1:
            sides.append(self.sides[1])
        elif gap[i + 1]:
            sides.append("mu (edge of a gap in the region)")
        if j == 0:
            sides.append(str(self.sides[2][i]))
        if j == self.sigma.shape[1] - 1:
            sides.append(str(self.sides[3][i]))
        return tuple(sides)


def region_grid(region: SearchRegion, n_mu: int = 241, n_sigma: int = 121) -> RegionGrid:
    mu_lo, mu_hi, lo_side, hi_side = region.mu_range()
    mu = np.linspace(mu_lo, mu_hi, n_mu)
    s_lo, s_hi, lo_reach, hi_reach = region.sigma_bounds(mu)
    keep = np.isfinite(s_lo) & np.isfinite(s_hi) & (s_hi > s_lo)
    if not keep.any():
        raise DegenerateData(
            "no (μ, σ) is both reachable by the pool and near the pilots",
            "the pilots' spreads lie outside what subsets of this size can have: check the selection budget",
        )
    first, last = np.flatnonzero(keep)[[0, -1]]
    if first > 0:
        lo_side = "mu_min (reachable)"
    if last < n_mu - 1:
        hi_side = "mu_max (reachable)"
    cols = slice(first, last + 1)
    mu, s_lo, s_hi, keep = mu[cols], s_lo[cols], s_hi[cols], keep[cols]
    lo_reach, hi_reach = lo_reach[cols], hi_reach[cols]
    frac = np.linspace(0.0, 1.0, n_sigma)
    sigma = s_lo[:, None] + (s_hi - s_lo)[:, None] * frac[None, :]
    sigma[~keep] = np.nan  # a μ where the reachable band and the trust region do not overlap: not searched
    lo_names = np.where(lo_reach, "sigma_min (reachable)", "sigma_min (pilot hull)")
    hi_names = np.where(hi_reach, "sigma_max (reachable)", "sigma_max (pilot hull)")
    return RegionGrid(mu, sigma, (lo_side, hi_side, lo_names, hi_names))


@dataclass(frozen=True)
class NearOptimalSet:
    share: float  # of the region's grid points
    mu_range: tuple[float, float]
    sigma_range: tuple[float, float]

    def to_json(self) -> dict[str, object]:
        return {"share": self.share, "mu_range": list(self.mu_range), "sigma_range": list(self.sigma_range)}


@dataclass(frozen=True)
class PplOptimum:
    mu: float
    sigma: float
    g: float
    D_ref: float  # the budget the predicted losses are stated at
    predicted_loss: float  # at D_ref
    on_boundary: bool
    boundary_sides: tuple[str, ...]  # e.g. "sigma_max (reachable)", "mu_min (pilot hull)"
    mu_ci: tuple[float, float] | None  # bootstrap spread of the optimum
    sigma_ci: tuple[float, float] | None
    loss_ci: tuple[float, float] | None  # predicted loss at (μ̂, σ̂) over the bootstrap refits, at D_ref
    boundary_share: float | None  # share of bootstrap optima on the region's boundary
    near_optimal: NearOptimalSet | None

    def to_json(self) -> dict[str, object]:
        def pair(p):
            return None if p is None else [json_number(v) for v in p]

        return {
            "mu": self.mu,
            "sigma": self.sigma,
            "g": self.g,
            "D_ref": self.D_ref,
            "predicted_loss": self.predicted_loss,
            "on_boundary": self.on_boundary,
            "boundary_sides": list(self.boundary_sides),
            "mu_ci": pair(self.mu_ci),
            "sigma_ci": pair(self.sigma_ci),
            "loss_ci": pair(self.loss_ci),
            "boundary_share": json_number(self.boundary_share),
            "near_optimal": None if self.near_optimal is None else self.near_optimal.to_json(),
        }


def _argmax(params: PplLawParams, grid: RegionGrid) -> tuple[int, int]:
    values = g(params, grid.mu[:, None], grid.sigma)
    i, j = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(values), values, -np.inf))), values.shape)
    return int(i), int(j)


def ppl_optimum(
    params: PplLawParams,
    region: SearchRegion,
    D_ref: float,
    draws: Sequence[PplLawParams] = (),
    ci_level: float = 0.9,
) -> PplOptimum:
    """The optimum of ``params`` over ``region``, with the bootstrap spread and near-optimal set from ``draws``."""
    grid = region_grid(region)
    i, j = _argmax(params, grid)
    mu, sigma = float(grid.mu[i]), float(grid.sigma[i, j])
    sides = grid.boundary_sides(i, j)
    predicted = float(params.predict(mu, sigma, D_ref))
    mu_ci = sigma_ci = loss_ci = boundary_share = near = None
    if draws:
        optima = [_argmax(d, grid) for d in draws]
        mus = np.array([grid.mu[a] for a, _ in optima])
        sigmas = np.array([grid.sigma[a, b] for a, b in optima])
        mu_ci, sigma_ci = percentile_interval(mus, ci_level), percentile_interval(sigmas, ci_level)
        boundary_share = float(np.mean([bool(grid.boundary_sides(a, b)) for a, b in optima]))
        losses = np.array([float(d.predict(mu, sigma, D_ref)) for d in draws])
        loss_ci = percentile_interval(losses, ci_level)
        surface = params.predict(grid.mu[:, None], grid.sigma, D_ref)
        inside = surface <= loss_ci[1]
        inside[i, j] = True  # the optimum is in its own near-optimal set, whatever the interval
        rows, cols = np.nonzero(inside)
        near = NearOptimalSet(
            float(inside.sum() / grid.valid.sum()),
            (float(grid.mu[rows].min()), float(grid.mu[rows].max())),
            (float(grid.sigma[rows, cols].min()), float(grid.sigma[rows, cols].max())),
        )
    return PplOptimum(
        mu=mu,
        sigma=sigma,
        g=float(g(params, mu, sigma)),
        D_ref=float(D_ref),
        predicted_loss=predicted,
        on_boundary=bool(sides),
        boundary_sides=sides,
        mu_ci=mu_ci,
        sigma_ci=sigma_ci,
        loss_ci=loss_ci,
        boundary_share=boundary_share,
        near_optimal=near,
    )
