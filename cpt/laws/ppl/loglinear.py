"""The fitting core of every law ``L = E + exp(X·c)`` with ``0 < E < min L`` and a positive last coefficient.

Both the perplexity-aware law (``X = [1, −log μ, −σ·log μ, −log σ, −μ·log σ, −log D]``) and the size-only law
(``X = [1, −log D]``) have this shape (Chinchilla "approach 3" practice, with variable projection):

1. For fixed ``E``, ``log(L − E)`` is linear in ``c``: one ``lstsq`` call solves every point of a grid over
   ``E ∈ (0, min L)`` at once. Grid points whose last coefficient (the data exponent) is ≤ 0 are rejected.
2. The best few grid points start L-BFGS-B on the Huber loss (δ = 1e-3) of log residuals ``log L̂ − log L`` under
   the bounds. Features are standardised inside the optimizer so the coordinates have comparable scales.
3. Held-out error and bootstrap refits use row weights: a left-out **group** has weight 0, a group drawn k times in a
   bootstrap resample has weight k. Groups are what must be left out together — for pilot runs, a regime (every
   size of one regime shares its data and its noise), so leave-one-group-out is the honest out-of-sample error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeResult, minimize

from cpt.laws._common import captured_warnings, single_threaded_blas, unique_messages
from cpt.laws.errors import DegenerateData, NoConvergence


@dataclass(frozen=True)
class FitSettings:
    huber_delta: float = 1e-3  # on log residuals, as in the Chinchilla replication
    e_grid_size: int = 64  # E values tried in (0, min L) by variable projection
    n_polish: int = 4  # best grid points polished by L-BFGS-B
    n_bootstrap: int = 200  # group resamples; 0 skips the intervals
    held_out: bool = True  # leave-one-group-out refits
    max_iter: int = 2000  # L-BFGS-B iterations per start


@dataclass(frozen=True)
class Problem:
    """Standardised design: ``u = Z @ c̃`` with ``Z = [1, (X_j − m_j)/s_j]``; ``θ = [E, c̃0..c̃p]``."""

    Z: np.ndarray  # (n, p)
    m: np.ndarray  # (p,), m[0] = 0
    s: np.ndarray  # (p,), s[0] = 1
    log_loss: np.ndarray
    loss: np.ndarray
    delta: float

    @staticmethod
    def build(X: np.ndarray, loss: np.ndarray, delta: float) -> Problem:
        m = X.mean(axis=0)
        s = X.std(axis=0)
        m[0], s[0] = 0.0, 1.0
        s[s == 0] = 1.0  # a constant feature stays a zero column; the rank check reports it
        return Problem((X - m) / s, m, s, np.log(loss), loss, delta)

    @property
    def min_rows(self) -> int:
        """Distinct rows a refit needs: one more than the parameters (E and the coefficients)."""
        return self.Z.shape[1] + 2

    def to_coef(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``θ`` → (E, c) in the original features."""
        c = theta[1:] / self.s
        c[0] = theta[1] - float(np.dot(self.m[1:], c[1:]))
        return float(theta[0]), c

    def to_theta(self, E: float, c: np.ndarray) -> np.ndarray:
        ct = np.asarray(c, dtype=np.float64) * self.s
        ct[0] = c[0] + float(np.dot(self.m[1:], c[1:]))
        return np.concatenate([[E], ct])

    def bounds(self, w: np.ndarray) -> list[tuple[float | None, float | None]]:
        min_loss = float(self.loss[w > 0].min())
        p = self.Z.shape[1]
        return [(1e-6 * min_loss, min_loss * (1 - 1e-6)), *[(None, None)] * (p - 1), (1e-8 * self.s[-1], None)]

    def objective(self, theta: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
        """Σ w·Huber_δ(log L̂ − log L)/δ² and its gradient in θ."""
        E, ct = theta[0], theta[1:]
        eu = np.exp(self.Z @ ct)
        pred = E + eu
        r = np.log(pred) - self.log_loss
        a = np.abs(r)
        d = self.delta
        h = np.where(a <= d, 0.5 * r * r, d * (a - 0.5 * d))
        psi = w * np.clip(r, -d, d) / (d * d) / pred
        grad = np.empty(theta.size)
        grad[0] = psi.sum()
        grad[1:] = self.Z.T @ (psi * eu)
        return float(np.dot(w, h)) / (d * d), grad

    def grid_starts(self, w: np.ndarray, grid_size: int, n_best: int) -> list[np.ndarray]:
        """Variable projection over E: all grid values solved in one weighted lstsq, best ``n_best`` returned."""
        keep = w > 0
        min_loss = float(self.loss[keep].min())
        e_grid = min_loss * np.linspace(0.0, 1.0, grid_size + 2)[1:-1]
        sw = np.sqrt(w[keep])[:, None]
        Y = np.log(self.loss[keep][:, None] - e_grid[None, :])
        C, *_ = np.linalg.lstsq(self.Z[keep] * sw, Y * sw, rcond=None)  # (p, grid)
        ok = C[-1] > 0  # the data exponent is positive (s > 0 keeps the sign)
        if not ok.any():
            return []
        thetas = np.vstack([e_grid[ok], C[:, ok]]).T
        values = np.array([self.objective(t, w)[0] for t in thetas])
        return [thetas[i] for i in np.argsort(values)[:n_best]]

    def polish(self, theta0: np.ndarray, w: np.ndarray, max_iter: int) -> OptimizeResult:
        """L-BFGS-B from ``theta0``; a run that hits the iteration limit is restarted once from where it stopped.

        Where ``E`` is barely identified (two pilot sizes: only D's jitter around each size pins it) the optimum is a
        long flat valley, and L-BFGS-B's curvature memory zigzags along it until the limit, at the minimum already:
        a restart with fresh memory converges in a few steps (seen: 4, objective unchanged to 1e-8 relative)."""
        bounds = self.bounds(w)
        x0 = np.array(
            [
                np.clip(v, lo if lo is not None else -np.inf, hi if hi is not None else np.inf)
                for v, (lo, hi) in zip(theta0, bounds, strict=True)
            ]
        )
        res = self._minimize(x0, w, bounds, max_iter)
        if res.status == 1 and np.all(np.isfinite(res.x)):
            res = self._minimize(res.x, w, bounds, max_iter)
        return res

    def _minimize(self, x0: np.ndarray, w: np.ndarray, bounds, max_iter: int) -> OptimizeResult:
        return minimize(
            self.objective,
            x0,
            args=(w,),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": max_iter, "ftol": 1e-12, "gtol": 1e-9},
        )


def _ok(res: OptimizeResult) -> bool:
    # status 0: converged; 2: line search stalled, which on the near-L1 Huber objective happens at the optimum once
    # the step can no longer reduce it in float64 — accepted when the objective is finite. 1 (iteration limit) fails.
    return bool(np.isfinite(res.fun) and np.all(np.isfinite(res.x)) and res.status in (0, 2))


def _best_refit(problem: Problem, w: np.ndarray, starts: Sequence[np.ndarray], max_iter: int) -> OptimizeResult | None:
    """The best successful polish among ``starts`` under weights ``w`` (None when every start fails)."""
    best = None
    for start in starts:
        res = problem.polish(start, w, max_iter)
        if _ok(res) and (best is None or res.fun < best.fun):
            best = res
    return best


def refit(
    problem: Problem, w: np.ndarray, theta: np.ndarray, settings: FitSettings, warm_only: bool = False
) -> OptimizeResult | None:
    """Refit under row weights ``w`` from the full fit ``theta`` and from the best grid point of the reweighted data.

    ``warm_only`` (the bootstrap): the grid start is tried only when the warm start fails — on resamples the
    warm-started optimum matched the best of four grid starts to ~1e-12 relative, at a quarter of the cost.
    """
    if warm_only:
        res = _best_refit(problem, w, [theta], settings.max_iter)
        if res is not None:
            return res
        return _best_refit(problem, w, problem.grid_starts(w, settings.e_grid_size, 1), settings.max_iter)
    return _best_refit(problem, w, [theta, *problem.grid_starts(w, settings.e_grid_size, 1)], settings.max_iter)


@dataclass(frozen=True)
class LogLinearFit:
    E: float
    coef: np.ndarray  # c in the original features
    objective: float  # Σ Huber(log residual) / δ² at the optimum
    converged: bool
    predicted: np.ndarray  # L̂ per row by the fit on every group
    heldout_predicted: np.ndarray  # L̂ per row by the fit without that row's group (NaN where that refit failed)
    draws: np.ndarray  # (n_bootstrap, 1 + p): [E, c…] per group resample; NaN rows: refits that failed
    warnings: tuple[str, ...]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.E + np.exp(X @ self.coef)


def group_bootstrap(
    problem: Problem, theta: np.ndarray, group_index: np.ndarray, settings: FitSettings, rng: np.random.Generator
) -> np.ndarray:
    """(n_bootstrap, 1 + p) draws ``[E, c…]`` from refits on groups resampled with replacement (NaN rows: failed)."""
    n_groups = int(group_index.max()) + 1
    draws = np.full((settings.n_bootstrap, problem.Z.shape[1] + 1), np.nan)
    for b in range(settings.n_bootstrap):
        counts = np.bincount(rng.integers(0, n_groups, size=n_groups), minlength=n_groups)
        if int((counts[group_index] > 0).sum()) < problem.min_rows:  # too few distinct rows to identify the law
            continue
        res = refit(problem, counts[group_index].astype(np.float64), theta, settings, warm_only=True)
        if res is not None:
            E_b, c_b = problem.to_coef(res.x)
            draws[b] = [E_b, *c_b]
    return draws


def check_rank(X: np.ndarray, hint: str) -> None:
    """Refuse a design whose standardised columns are (nearly) collinear."""
    Z = Problem.build(X, np.ones(len(X)), 1.0).Z
    sv = np.linalg.svd(Z, compute_uv=False)
    if sv[-1] <= 1e-10 * sv[0]:
        raise DegenerateData("the law's design matrix is rank-deficient", hint)


def fit_loglinear(
    X: np.ndarray,
    loss: np.ndarray,
    group_index: np.ndarray,
    settings: FitSettings,
    rng: np.random.Generator | None,
    what: str,
) -> LogLinearFit:
    """Fit ``L = E + exp(X·c)``; leave-one-group-out predictions; bootstrap draws over groups (``group_index``:
    each row's group as 0..G−1)."""
    problem = Problem.build(X, loss, settings.huber_delta)
    n_groups = int(group_index.max()) + 1
    ones = np.ones(len(loss))
    with single_threaded_blas(), captured_warnings() as messages:
        starts = problem.grid_starts(ones, settings.e_grid_size, settings.n_polish)
        if not starts:
            raise NoConvergence(what, "no grid value of E gave a positive data exponent (loss does not fall with D)")
        results = [problem.polish(s, ones, settings.max_iter) for s in starts]
        good = [r for r in results if _ok(r)]
        if not good:
            raise NoConvergence(what, "; ".join(sorted({str(r.message) for r in results})))
        best = min(good, key=lambda r: r.fun)
        converged = best.status == 0
        if not converged:  # a stalled line search: accept it if a restart from there finds nothing better
            again = problem.polish(best.x, ones, settings.max_iter)
            converged = _ok(again) and again.fun >= best.fun * (1 - 1e-9)
            if _ok(again) and again.fun < best.fun:
                best = again
            if not converged:
                messages.append(f"L-BFGS-B stopped early: {best.message}")
        theta = best.x
        E, coef = problem.to_coef(theta)

        heldout = np.full(len(loss), np.nan)
        if settings.held_out:
            for k in range(n_groups):
                rows = group_index == k
                if int((~rows).sum()) < problem.min_rows:
                    messages.append(f"without group {k} too few rows remain to refit")
                    continue
                res = refit(problem, (~rows).astype(np.float64), theta, settings)
                if res is None:
                    messages.append(f"the refit without group {k} failed")
                    continue
                E_k, c_k = problem.to_coef(res.x)
                heldout[rows] = E_k + np.exp(X[rows] @ c_k)

        if settings.n_bootstrap and rng is None:
            raise ValueError(f"{what}: the bootstrap needs an rng (or n_bootstrap=0)")
        draws = np.empty((0, 0))
        if settings.n_bootstrap:
            draws = group_bootstrap(problem, theta, group_index, settings, rng)
        failed = int((~np.isfinite(draws[:, 0])).sum()) if draws.size else 0
        if failed:
            messages.append(f"{failed} of {settings.n_bootstrap} bootstrap resamples failed or held too few regimes")
    return LogLinearFit(
        E=E,
        coef=coef,
        objective=float(best.fun),
        converged=converged,
        predicted=E + np.exp(X @ coef),
        heldout_predicted=heldout,
        draws=draws,
        warnings=unique_messages(messages),
    )
