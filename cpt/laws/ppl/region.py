"""Which landscapes (μ, σ) a subset of the domain pool can have: the region the optimum is searched in.

For a subset of ``K`` chunks of a pool sorted by PPL, with mean ``μ``:

- the smallest spread is (nearly) that of a contiguous window of the sorted pool with that mean;
- the largest spread is that of the ``k`` lowest plus the ``K − k`` highest chunks with that mean;

and every spread in between is reachable by swapping chunks one at a time (the spread moves in small steps). Both
boundaries come from prefix sums in O(N), at every window start and every split ``k``, and are interpolated on a
grid of μ. The contiguous window is the exact minimum for a window's own mean up to the granularity of one chunk;
elsewhere the region is an approximation that distance-to-optimum selection, not this module, has the last word on.

The region is searched together with a trust region around the pilot points (the law is not trusted far from where
it was fitted): ``SearchRegion`` is their intersection and says which of them bounds the optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cpt.laws.errors import DegenerateData


@dataclass(frozen=True, eq=False)
class ReachableRegion:
    """(μ, σ) of subsets of ``count`` chunks of the pool, in the fit's terms (raw or log PPL; σ as std or var)."""

    count: int
    mu: np.ndarray  # ascending grid from the mean of the lowest to the mean of the highest ``count`` chunks
    sigma_lo: np.ndarray  # smallest reachable σ at each μ
    sigma_hi: np.ndarray  # largest reachable σ at each μ

    def contains(self, mu: np.ndarray | float, sigma: np.ndarray | float, rtol: float = 1e-9) -> np.ndarray:
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        lo = np.interp(mu, self.mu, self.sigma_lo)
        hi = np.interp(mu, self.mu, self.sigma_hi)
        span = self.mu[-1] - self.mu[0]
        inside_mu = (mu >= self.mu[0] - rtol * span) & (mu <= self.mu[-1] + rtol * span)
        return inside_mu & (sigma >= lo * (1 - rtol)) & (sigma <= hi * (1 + rtol))

    def to_json(self, points: int = 41) -> dict[str, object]:
        """A thinned copy of the boundary (``points`` values of μ), enough to draw the region."""
        idx = np.unique(np.linspace(0, len(self.mu) - 1, points).round().astype(int))
        return {
            "count": self.count,
            "mu": self.mu[idx].tolist(),
            "sigma_lo": self.sigma_lo[idx].tolist(),
            "sigma_hi": self.sigma_hi[idx].tolist(),
        }


def reachable_region(values: np.ndarray, count: int, squared: bool = False, grid_size: int = 400) -> ReachableRegion:
    """The region for subsets of ``count`` chunks of a pool with per-chunk statistic ``values`` (PPL or log PPL);
    ``squared``: σ is reported as the variance."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = v.size
    if not np.isfinite(v).all():
        raise DegenerateData("the pool has non-finite PPL values", "repair the scores")
    if not 2 <= count <= n:
        raise DegenerateData(
            f"a subset of {count} chunks from a pool of {n}", "the selection budget must fit in the domain pool"
        )
    s1 = np.concatenate([[0.0], np.cumsum(v)])
    s2 = np.concatenate([[0.0], np.cumsum(v * v)])
    start = np.arange(n - count + 1)
    win_mean, win_var = _moments(s1[start + count] - s1[start], s2[start + count] - s2[start], count)
    k = np.arange(count + 1)  # k lowest + (count − k) highest
    ext_mean, ext_var = _moments(s1[k] + s1[n] - s1[n - (count - k)], s2[k] + s2[n] - s2[n - (count - k)], count)
    mu = np.linspace(win_mean[0], win_mean[-1], grid_size)
    lo = np.interp(mu, win_mean, win_var)
    hi = np.interp(mu, ext_mean[::-1], ext_var[::-1])
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    if not squared:
        lo, hi = np.sqrt(lo), np.sqrt(hi)
    return ReachableRegion(count, mu, lo, hi)


def _moments(total: np.ndarray, total_sq: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    mean = total / count
    return mean, np.maximum(total_sq / count - mean * mean, 0.0)


@dataclass(frozen=True, eq=False)
class TrustRegion:
    """Where the law is trusted: the convex hull of the pilot points, widened by ``margin`` of the pilots' ranges
    around its centroid (never below half the smallest pilot value). Beyond it — in particular in the empty corners
    of the pilots' bounding box — the law extrapolates."""

    vertices: np.ndarray  # (V, 2) polygon in (μ, σ), counter-clockwise

    @classmethod
    def around(cls, mu: np.ndarray, sigma: np.ndarray, margin: float) -> TrustRegion:
        from scipy.spatial import ConvexHull, QhullError

        pts = np.column_stack([np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)])
        scale = np.ptp(pts, axis=0)
        if (scale <= 0).any():
            raise DegenerateData("the pilots' μ or σ do not vary", "add pilot regimes at other (μ, σ)")
        unit = (pts - pts.min(axis=0)) / scale
        try:
            hull = unit[ConvexHull(unit).vertices]
        except QhullError as exc:
            raise DegenerateData("the pilot points lie on a line", "add pilot regimes off that line") from exc
        centre = hull.mean(axis=0)
        grown = (centre + (1 + margin) * (hull - centre)) * scale + pts.min(axis=0)
        return cls(np.maximum(grown, pts.min(axis=0) / 2))

    @classmethod
    def box(cls, mu_min: float, mu_max: float, sigma_min: float, sigma_max: float) -> TrustRegion:
        return cls(np.array([[mu_min, sigma_min], [mu_max, sigma_min], [mu_max, sigma_max], [mu_min, sigma_max]]))

    @property
    def mu_range(self) -> tuple[float, float]:
        return float(self.vertices[:, 0].min()), float(self.vertices[:, 0].max())

    @property
    def sigma_range(self) -> tuple[float, float]:
        return float(self.vertices[:, 1].min()), float(self.vertices[:, 1].max())

    def sigma_interval(self, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per μ, the σ interval inside the polygon (NaN outside its μ range): the vertical line meets a convex
        polygon in one segment, whose ends lie on its edges."""
        mu = np.asarray(mu, dtype=np.float64)[:, None]
        a, b = self.vertices, np.roll(self.vertices, -1, axis=0)
        lo_mu, hi_mu = np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 0], b[:, 0])
        span = np.where(b[:, 0] != a[:, 0], b[:, 0] - a[:, 0], 1.0)
        t = np.clip((mu - a[:, 0]) / span, 0.0, 1.0)
        sigma = a[:, 1] + t * (b[:, 1] - a[:, 1])
        vertical = b[:, 0] == a[:, 0]
        on = (mu >= lo_mu - 1e-12 * np.abs(hi_mu)) & (mu <= hi_mu + 1e-12 * np.abs(hi_mu))
        lo = np.where(on, np.where(vertical, np.minimum(a[:, 1], b[:, 1]), sigma), np.inf).min(axis=1)
        hi = np.where(on, np.where(vertical, np.maximum(a[:, 1], b[:, 1]), sigma), -np.inf).max(axis=1)
        inside = np.isfinite(lo) & np.isfinite(hi)
        return np.where(inside, lo, np.nan), np.where(inside, hi, np.nan)

    def to_json(self) -> dict[str, object]:
        return {"vertices": self.vertices.tolist()}


@dataclass(frozen=True, eq=False)
class SearchRegion:
    """Where the optimum is searched: reachable by the pool and inside the trust region (``reachable`` None: the
    trust region alone, when no pool is given)."""

    trust: TrustRegion
    reachable: ReachableRegion | None = None

    def mu_range(self) -> tuple[float, float, str, str]:
        lo, hi = self.trust.mu_range
        lo_side, hi_side = "mu_min (pilot hull)", "mu_max (pilot hull)"
        if self.reachable is not None:
            if self.reachable.mu[0] > lo:
                lo, lo_side = float(self.reachable.mu[0]), "mu_min (reachable)"
            if self.reachable.mu[-1] < hi:
                hi, hi_side = float(self.reachable.mu[-1]), "mu_max (reachable)"
        if lo >= hi:
            raise DegenerateData(
                f"the pool's reachable μ range and the pilots' range {self.trust.mu_range} do not overlap",
                "the regime pilots were drawn from another pool: rebuild the landscape and rerun the pilots",
            )
        return lo, hi, lo_side, hi_side

    def sigma_bounds(self, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per μ: (lower σ, upper σ, lower is the reachable bound, upper is the reachable bound)."""
        lo, hi = self.trust.sigma_interval(mu)
        lo_reach = np.zeros(mu.shape, dtype=bool)
        hi_reach = np.zeros(mu.shape, dtype=bool)
        if self.reachable is not None:
            r_lo = np.interp(mu, self.reachable.mu, self.reachable.sigma_lo)
            r_hi = np.interp(mu, self.reachable.mu, self.reachable.sigma_hi)
            lo_reach, hi_reach = r_lo > lo, r_hi < hi
            lo, hi = np.fmax(lo, r_lo), np.fmin(hi, r_hi)
        return lo, hi, lo_reach, hi_reach
