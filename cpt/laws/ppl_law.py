"""Paper A: the perplexity-aware data scaling law, its fit, and the optimal perplexity landscape.

    L(μ, σ, D) = E + D_c / ( μ^(α0 + α1·σ) · σ^(β0 + β1·μ) · D^αD )

``μ`` and ``σ`` are the mean and spread of chunk perplexity in a CPT subset, ``D`` its training tokens, ``L`` the
domain test loss after CPT (Liu et al., arXiv 2512.21515; see docs/science.md §2). Constraints: ``D_c > 0``,
``αD > 0``, ``0 < E < min L``.

The fit (Chinchilla "approach 3" practice, with variable projection):

1. For fixed ``E``, ``log(L − E)`` is linear in ``(log D_c, α0, α1, β0, β1, αD)`` with features
   ``[1, −log μ, −σ·log μ, −log σ, −μ·log σ, −log D]``: one ``lstsq`` call solves every point of a grid over
   ``E ∈ (0, min L)`` at once (the grid values are the right-hand sides). Grid points with ``αD ≤ 0`` are rejected.
2. The best few grid points (by the Huber objective below) start L-BFGS-B on the Huber loss (δ = 1e-3) of log
   residuals ``log L̂ − log L`` under the bounds ``0 < E < min L``, ``αD > 0`` (``D_c = exp(·) > 0`` by construction).
   The features are standardised inside the optimizer so the seven coordinates have comparable scales.
3. Leave-one-run-out error and bootstrap intervals refit with run weights (a dropped run has weight 0, a run drawn
   k times in a bootstrap resample has weight k), warm-started from the full fit, plus the best grid point of the
   reweighted data as a second start.

The σ statistic (standard deviation or variance) and the PPL space (raw or log) are the caller's choice of what
it passes in; the options record them with the fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import OptimizeResult, minimize

from cpt.laws._common import (
    captured_warnings,
    json_map,
    json_number,
    percentile_interval,
    single_threaded_blas,
    unique_messages,
)
from cpt.laws.errors import DegenerateData, NoConvergence, TooFewPoints

SigmaKind = Literal["std", "var"]
PplSpace = Literal["raw", "log"]

PARAM_NAMES = ("E", "D_c", "alpha0", "alpha1", "beta0", "beta1", "alpha_D")
BOUNDARY_SIDES = ("mu_min", "mu_max", "sigma_min", "sigma_max")


@dataclass(frozen=True)
class PplLawParams:
    """The seven parameters of the law (``σ`` in whatever kind the fit's options record)."""

    E: float
    D_c: float
    alpha0: float
    alpha1: float
    beta0: float
    beta1: float
    alpha_D: float

    def predict(self, mu: np.ndarray | float, sigma: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        """Predicted loss, broadcast over the arguments."""
        log_d = np.log(np.asarray(D, dtype=np.float64))
        return self.E + self.D_c * np.exp(-g(self, mu, sigma) - self.alpha_D * log_d)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def g(params: PplLawParams, mu: np.ndarray | float, sigma: np.ndarray | float) -> np.ndarray:
    """``g(μ, σ) = (α0 + α1σ)·log μ + (β0 + β1μ)·log σ``; with ``D_c > 0`` a larger ``g`` means a lower loss."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    return (params.alpha0 + params.alpha1 * sigma) * np.log(mu) + (params.beta0 + params.beta1 * mu) * np.log(sigma)


@dataclass(frozen=True)
class PplLawOptions:
    sigma_kind: SigmaKind = "std"  # "var": the σ values passed in are variances (recorded; the law is the same)
    ppl_space: PplSpace = "raw"  # "log": μ, σ are statistics of log-PPL (recorded; the caller computes them)
    huber_delta: float = 1e-3  # on log residuals, as in the Chinchilla replication
    e_grid_size: int = 64  # E values tried in (0, min L) by variable projection
    n_polish: int = 4  # best grid points polished by L-BFGS-B
    n_bootstrap: int = 200  # resamples of runs; 0 skips the intervals
    ci_level: float = 0.9
    min_points: int = 9  # seven parameters plus a margin
    leave_one_run_out: bool = True
    max_iter: int = 2000  # L-BFGS-B iterations per start

    def __post_init__(self) -> None:
        if self.sigma_kind not in ("std", "var"):
            raise ValueError(f"sigma_kind must be 'std' or 'var', got {self.sigma_kind!r}")
        if self.ppl_space not in ("raw", "log"):
            raise ValueError(f"ppl_space must be 'raw' or 'log', got {self.ppl_space!r}")
        if not self.huber_delta > 0:
            raise ValueError(f"huber_delta must be positive, got {self.huber_delta}")
        if self.e_grid_size < 2 or self.n_polish < 1 or self.n_bootstrap < 0 or self.max_iter < 1:
            raise ValueError("e_grid_size ≥ 2, n_polish ≥ 1, n_bootstrap ≥ 0 and max_iter ≥ 1 are required")
        if not 0 < self.ci_level < 1:
            raise ValueError(f"ci_level must lie in (0, 1), got {self.ci_level}")
        if self.min_points < 8:
            raise ValueError(f"min_points must be at least 8 (seven parameters plus one), got {self.min_points}")


@dataclass(frozen=True)
class PplObservations:
    """One row per (pilot run, evaluation): subset statistics ``mu``, ``sigma``, CPT tokens ``D`` and test ``loss``.

    A run is one pilot CPT run; the bootstrap and the leave-one-out error resample and drop whole runs.
    """

    mu: np.ndarray
    sigma: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    run_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("mu", "sigma", "D", "loss"):
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.ndim != 1:
                raise DegenerateData(f"{name} must be one-dimensional, got shape {a.shape}", "pass flat arrays")
            arrays[name] = a
            object.__setattr__(self, name, a)
        object.__setattr__(self, "run_ids", tuple(str(r) for r in self.run_ids))
        lengths = {k: len(v) for k, v in arrays.items()} | {"run_ids": len(self.run_ids)}
        if len(set(lengths.values())) != 1:
            raise DegenerateData(f"observation arrays differ in length: {lengths}", "pass one value per row")

    def __len__(self) -> int:
        return len(self.loss)


@dataclass(frozen=True)
class PplLawFit:
    params: PplLawParams
    options: PplLawOptions
    n_points: int
    n_runs: int
    objective: float  # Σ Huber(log residual) / δ² at the optimum
    r2: float  # on the loss scale
    rmse: float  # loss units
    residuals: np.ndarray  # log L̂ − log L per row
    predicted: np.ndarray  # L̂ per row, by the fit on all runs
    loo_predicted: np.ndarray  # L̂ per row, by the fit without that row's run (NaN where that refit failed or was off)
    loo_rmse: float | None  # leave-one-run-out prediction error, loss units
    loo_errors: dict[str, float]  # run id → RMSE of that run's rows when predicted by a fit without it
    ci: dict[str, tuple[float, float]]  # parameter → bootstrap percentile interval at options.ci_level
    n_bootstrap_ok: int  # resamples whose refit converged (the intervals use these)
    converged: bool
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "params": self.params.as_dict(),
            "options": asdict(self.options),
            "n_points": self.n_points,
            "n_runs": self.n_runs,
            "objective": json_number(self.objective),
            "r2": json_number(self.r2),
            "rmse": json_number(self.rmse),
            "residuals": [json_number(r) for r in self.residuals],
            "predicted": [json_number(r) for r in self.predicted],
            "loo_predicted": [json_number(r) for r in self.loo_predicted],
            "loo_rmse": json_number(self.loo_rmse),
            "loo_errors": json_map(self.loo_errors),
            "ci": json_map(self.ci),
            "n_bootstrap_ok": self.n_bootstrap_ok,
            "converged": self.converged,
            "warnings": list(self.warnings),
        }


# --- the fit core ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    """Standardised design: ``u = Z @ c̃`` with ``Z = [1, (X_j − m_j)/s_j]``; ``θ = [E, c̃0..c̃5]``."""

    Z: np.ndarray  # (n, 6)
    m: np.ndarray  # (6,), m[0] = 0
    s: np.ndarray  # (6,), s[0] = 1
    log_loss: np.ndarray
    loss: np.ndarray
    delta: float

    @staticmethod
    def build(obs: PplObservations, delta: float) -> _Problem:
        lmu, lsig = np.log(obs.mu), np.log(obs.sigma)
        X = np.column_stack([np.ones(len(obs)), -lmu, -obs.sigma * lmu, -lsig, -obs.mu * lsig, -np.log(obs.D)])
        m = X.mean(axis=0)
        s = X.std(axis=0)
        m[0], s[0] = 0.0, 1.0
        s[s == 0] = 1.0  # a constant feature stays a zero column; the rank check reports it
        return _Problem((X - m) / s, m, s, np.log(obs.loss), obs.loss, delta)

    def to_params(self, theta: np.ndarray) -> PplLawParams:
        c = theta[1:] / self.s
        c[0] = theta[1] - float(np.dot(self.m[1:], c[1:]))
        return PplLawParams(float(theta[0]), float(np.exp(c[0])), *(float(x) for x in c[1:]))

    def to_theta(self, p: PplLawParams) -> np.ndarray:
        c = np.array([math.log(p.D_c), p.alpha0, p.alpha1, p.beta0, p.beta1, p.alpha_D])
        ct = c * self.s
        ct[0] = c[0] + float(np.dot(self.m[1:], c[1:]))
        return np.concatenate([[p.E], ct])

    def bounds(self, w: np.ndarray) -> list[tuple[float | None, float | None]]:
        min_loss = float(self.loss[w > 0].min())
        return [(1e-6 * min_loss, min_loss * (1 - 1e-6)), *[(None, None)] * 5, (1e-8 * self.s[5], None)]

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
        grad = np.empty(7)
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
        C, *_ = np.linalg.lstsq(self.Z[keep] * sw, Y * sw, rcond=None)  # (6, grid)
        ok = C[5] > 0  # αD > 0 (s > 0 keeps the sign)
        if not ok.any():
            return []
        thetas = np.vstack([e_grid[ok], C[:, ok]]).T
        values = np.array([self.objective(t, w)[0] for t in thetas])
        order = np.argsort(values)[:n_best]
        return [thetas[i] for i in order]

    def polish(self, theta0: np.ndarray, w: np.ndarray, max_iter: int) -> OptimizeResult:
        bounds = self.bounds(w)
        x0 = np.array(
            [
                np.clip(v, lo if lo is not None else -np.inf, hi if hi is not None else np.inf)
                for v, (lo, hi) in zip(theta0, bounds, strict=True)
            ]
        )
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


def _best_refit(problem: _Problem, w: np.ndarray, starts: Sequence[np.ndarray], max_iter: int) -> OptimizeResult | None:
    """The best successful polish among ``starts`` under weights ``w`` (None when every start fails)."""
    best = None
    for start in starts:
        res = problem.polish(start, w, max_iter)
        if _ok(res) and (best is None or res.fun < best.fun):
            best = res
    return best


def _validate(obs: PplObservations, options: PplLawOptions) -> None:
    n = len(obs)
    if n < options.min_points:
        raise TooFewPoints("perplexity-aware law (7 parameters)", n, options.min_points)
    for name in ("mu", "sigma", "D", "loss"):
        a = getattr(obs, name)
        bad = ~np.isfinite(a) | (a <= 0)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise DegenerateData(
                f"{name} has {int(bad.sum())} non-finite or non-positive values (rows {rows})",
                "the law takes logarithms of μ, σ, D and L: drop or repair those runs",
            )
    for name, label in (("mu", "μ"), ("sigma", "σ"), ("D", "D")):
        a = getattr(obs, name)
        if np.ptp(a) <= 1e-12 * np.abs(a).max():
            raise DegenerateData(
                f"all {label} are equal ({a[0]:g})",
                f"the law cannot separate the {label} exponents from the scale: add pilot runs at other {label}",
            )
    if len(set(obs.run_ids)) < 2:
        raise DegenerateData("all rows belong to one run", "give each pilot run its own id")


def fit_ppl_law(obs: PplObservations, options: PplLawOptions, rng: np.random.Generator) -> PplLawFit:
    """Fit the perplexity-aware law; report fit quality, leave-one-run-out error and bootstrap intervals."""
    _validate(obs, options)
    problem = _Problem.build(obs, options.huber_delta)
    sv = np.linalg.svd(problem.Z, compute_uv=False)
    if sv[-1] <= 1e-10 * sv[0]:
        raise DegenerateData(
            "the design [1, −log μ, −σ·log μ, −log σ, −μ·log σ, −log D] is rank-deficient",
            "the (μ, σ) regimes are too few or collinear: add pilot subsets at other (μ, σ) combinations",
        )
    run_names, run_index = np.unique(np.asarray(obs.run_ids), return_inverse=True)
    n_runs = len(run_names)
    ones = np.ones(len(obs))

    with single_threaded_blas(), captured_warnings() as messages:
        starts = problem.grid_starts(ones, options.e_grid_size, options.n_polish)
        if not starts:
            raise NoConvergence("perplexity-aware law", "no grid value of E gave αD > 0 (loss does not fall with D)")
        results = [problem.polish(s, ones, options.max_iter) for s in starts]
        good = [r for r in results if _ok(r)]
        if not good:
            detail = "; ".join(sorted({str(r.message) for r in results}))
            raise NoConvergence("perplexity-aware law", detail)
        best = min(good, key=lambda r: r.fun)
        converged = best.status == 0
        if not converged:  # a stalled line search: accept it if a restart from there finds nothing better
            again = problem.polish(best.x, ones, options.max_iter)
            converged = _ok(again) and again.fun >= best.fun * (1 - 1e-9)
            if _ok(again) and again.fun < best.fun:
                best = again
            if not converged:
                messages.append(f"L-BFGS-B stopped early: {best.message}")
        theta = best.x
        params = problem.to_params(theta)

        pred = params.predict(obs.mu, obs.sigma, obs.D)
        resid_loss = pred - obs.loss
        ss_tot = float(np.sum((obs.loss - obs.loss.mean()) ** 2))
        r2 = 1.0 - float(np.sum(resid_loss**2)) / ss_tot if ss_tot > 0 else math.nan
        rmse = float(np.sqrt(np.mean(resid_loss**2)))

        loo_errors: dict[str, float] = {}
        loo_rmse = None
        loo_pred = np.full(len(obs), np.nan)
        if options.leave_one_run_out:
            sq = np.full(len(obs), np.nan)
            for k, name in enumerate(run_names):
                w = (run_index != k).astype(np.float64)
                res = _refit(problem, w, theta, options)
                if res is None:
                    messages.append(f"leave-one-run-out refit without run {name!r} failed")
                    continue
                rows = run_index == k
                p = problem.to_params(res.x)
                loo_pred[rows] = p.predict(obs.mu[rows], obs.sigma[rows], obs.D[rows])
                err = loo_pred[rows] - obs.loss[rows]
                sq[rows] = err**2
                loo_errors[str(name)] = float(np.sqrt(np.mean(err**2)))
            if np.isfinite(sq).any():
                loo_rmse = float(np.sqrt(np.nanmean(sq)))

        samples = _bootstrap_params(problem, theta, run_index, n_runs, options, rng)
        n_ok = int(np.isfinite(samples[:, 0]).sum()) if len(samples) else 0
        if options.n_bootstrap and n_ok < options.n_bootstrap:
            messages.append(f"{options.n_bootstrap - n_ok} of {options.n_bootstrap} bootstrap refits failed")
        ci = (
            {name: percentile_interval(samples[:, j], options.ci_level) for j, name in enumerate(PARAM_NAMES)}
            if n_ok
            else {}
        )

    return PplLawFit(
        params=params,
        options=options,
        n_points=len(obs),
        n_runs=n_runs,
        objective=float(best.fun),
        r2=r2,
        rmse=rmse,
        residuals=np.log(pred) - np.log(obs.loss),
        predicted=pred,
        loo_predicted=loo_pred,
        loo_rmse=loo_rmse,
        loo_errors=loo_errors,
        ci=ci,
        n_bootstrap_ok=n_ok,
        converged=converged,
        warnings=unique_messages(messages),
    )


def _refit(
    problem: _Problem, w: np.ndarray, theta: np.ndarray, options: PplLawOptions, warm_only: bool = False
) -> OptimizeResult | None:
    """Refit under run weights ``w`` from the full fit ``theta`` and from the best grid point of the reweighted data.

    ``warm_only`` (the bootstrap): the grid start is tried only when the warm start fails — on resamples the
    warm-started optimum matched the best of four grid starts to ~1e-12 relative, at a quarter of the cost.
    """
    if warm_only:
        res = _best_refit(problem, w, [theta], options.max_iter)
        if res is not None:
            return res
        return _best_refit(problem, w, problem.grid_starts(w, options.e_grid_size, 1), options.max_iter)
    starts = [theta, *problem.grid_starts(w, options.e_grid_size, 1)]
    return _best_refit(problem, w, starts, options.max_iter)


@dataclass(frozen=True)
class PplBootstrap:
    draws: np.ndarray  # (n_bootstrap, 7) in PARAM_NAMES order; NaN rows: refits that failed from every start
    n_ok: int
    warnings: tuple[str, ...]


def bootstrap_ppl_law(
    obs: PplObservations, params: PplLawParams, options: PplLawOptions, rng: np.random.Generator
) -> PplBootstrap:
    """Refits on runs resampled with replacement (``options.n_bootstrap`` of them), warm-started from ``params`` —
    the intervals of ``fit_ppl_law`` on their own, for a fit already made (and for the benchmark)."""
    _validate(obs, options)
    problem = _Problem.build(obs, options.huber_delta)
    _, run_index = np.unique(np.asarray(obs.run_ids), return_inverse=True)
    with single_threaded_blas(), captured_warnings() as messages:
        draws = _bootstrap_params(problem, problem.to_theta(params), run_index, int(run_index.max()) + 1, options, rng)
    return PplBootstrap(draws, int(np.isfinite(draws[:, 0]).sum()), unique_messages(messages))


def _bootstrap_params(
    problem: _Problem,
    theta: np.ndarray,
    run_index: np.ndarray,
    n_runs: int,
    options: PplLawOptions,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n_bootstrap, 7) parameter draws from refits on runs resampled with replacement (NaN rows: failed refits)."""
    out = np.full((options.n_bootstrap, 7), np.nan)
    for b in range(options.n_bootstrap):
        counts = np.bincount(rng.integers(0, n_runs, size=n_runs), minlength=n_runs)
        w = counts[run_index].astype(np.float64)
        res = _refit(problem, w, theta, options, warm_only=True)
        if res is not None:
            out[b] = list(problem.to_params(res.x).as_dict().values())
    return out


# --- synthetic data --------------------------------------------------------------------------------------------


def sample_observations(
    params: PplLawParams,
    mu: np.ndarray,
    sigma: np.ndarray,
    D: np.ndarray,
    noise_sd: float,
    rng: np.random.Generator,
    run_ids: Sequence[str] | None = None,
) -> PplObservations:
    """Observations from the law with multiplicative log-normal noise: ``L = L_true · exp(noise_sd · N(0, 1))``.

    Noise on ``L`` itself (not on ``L − E``) in log space, the scale the fit's residuals live on. One run per row
    unless ``run_ids`` says otherwise.
    """
    mu, sigma, D = (np.asarray(a, dtype=np.float64) for a in (mu, sigma, D))
    loss = params.predict(mu, sigma, D) * np.exp(noise_sd * rng.standard_normal(mu.shape))
    ids = tuple(run_ids) if run_ids is not None else tuple(f"run-{i}" for i in range(len(mu)))
    return PplObservations(mu, sigma, D, loss, ids)


# --- the optimal landscape -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupportRegion:
    """The (μ, σ) box the optimum is searched in: by default the bounding box of the pilot runs (no extrapolation
    beyond what was tried). Not every corner of it need be reachable by a subset of the corpus; the selection stage
    reports how close it gets."""

    mu_min: float
    mu_max: float
    sigma_min: float
    sigma_max: float

    def __post_init__(self) -> None:
        vals = (self.mu_min, self.mu_max, self.sigma_min, self.sigma_max)
        if not all(math.isfinite(v) and v > 0 for v in vals) or self.mu_min >= self.mu_max:
            raise DegenerateData(f"support region {vals} is not a box of positive values", "pass min < max, > 0")
        if self.sigma_min >= self.sigma_max:
            raise DegenerateData(f"support region σ range {vals[2:]} is empty", "pass sigma_min < sigma_max")

    @classmethod
    def around(cls, mu: np.ndarray, sigma: np.ndarray, margin: float = 0.0) -> SupportRegion:
        """The bounding box of the pilot points, widened by ``margin`` of its size on each side; the low sides never
        go below half the smallest pilot value (the law is not trusted far outside its pilots)."""
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        dm, ds = margin * np.ptp(mu), margin * np.ptp(sigma)
        return cls(
            max(float(mu.min() - dm), float(mu.min()) / 2),
            float(mu.max() + dm),
            max(float(sigma.min() - ds), float(sigma.min()) / 2),
            float(sigma.max() + ds),
        )


@dataclass(frozen=True)
class PplOptimum:
    mu: float
    sigma: float
    g: float
    g_reference: float | None  # g at the reference (μ, σ), when one was given
    predicted_gain: float | None  # 1 − exp(−(g − g_reference)): fraction of the reducible loss L − E removed, any D
    on_boundary: bool
    boundary_sides: tuple[str, ...]  # which of mu_min, mu_max, sigma_min, sigma_max the optimum sits on
    region: SupportRegion = field(repr=False)

    def to_json(self) -> dict[str, object]:
        return {
            "mu": self.mu,
            "sigma": self.sigma,
            "g": self.g,
            "g_reference": json_number(self.g_reference),
            "predicted_gain": json_number(self.predicted_gain),
            "on_boundary": self.on_boundary,
            "boundary_sides": list(self.boundary_sides),
            "region": asdict(self.region),
        }


def ppl_optimum(
    params: PplLawParams,
    region: SupportRegion,
    reference: tuple[float, float] | None = None,
    grid_size: int = 201,
    boundary_rtol: float = 1e-3,
) -> PplOptimum:
    """Maximise ``g`` over the region: a dense grid, then a bounded L-BFGS-B polish of the best grid point.

    ``on_boundary`` when the optimum lies within ``boundary_rtol`` of the box's width from a side: then the law
    wants landscapes the corpus (or the pilot coverage) does not supply, and the answer is the best supported one.
    """
    mus = np.linspace(region.mu_min, region.mu_max, grid_size)
    sigmas = np.linspace(region.sigma_min, region.sigma_max, grid_size)
    grid = g(params, mus[:, None], sigmas[None, :])
    i, j = np.unravel_index(int(np.argmax(grid)), grid.shape)
    x0 = np.array([mus[i], sigmas[j]])
    scale = np.array([region.mu_max - region.mu_min, region.sigma_max - region.sigma_min])

    def neg_g(z: np.ndarray) -> tuple[float, np.ndarray]:
        mu, sigma = z * scale
        val = float(g(params, mu, sigma))
        d_mu = (params.alpha0 + params.alpha1 * sigma) / mu + params.beta1 * math.log(sigma)
        d_sigma = params.alpha1 * math.log(mu) + (params.beta0 + params.beta1 * mu) / sigma
        return -val, -np.array([d_mu, d_sigma]) * scale

    with single_threaded_blas(), captured_warnings():
        res = minimize(
            neg_g,
            x0 / scale,
            jac=True,
            method="L-BFGS-B",
            bounds=[
                (region.mu_min / scale[0], region.mu_max / scale[0]),
                (region.sigma_min / scale[1], region.sigma_max / scale[1]),
            ],
            options={"ftol": 1e-15, "gtol": 1e-12},  # g is flat near its maximum: stop on the gradient, not on g
        )
    best = res.x * scale if np.isfinite(res.fun) and -res.fun >= grid[i, j] else x0
    mu_opt = float(np.clip(best[0], region.mu_min, region.mu_max))
    sigma_opt = float(np.clip(best[1], region.sigma_min, region.sigma_max))
    g_opt = float(g(params, mu_opt, sigma_opt))

    sides = []
    for name, value, side, width in (
        ("mu_min", mu_opt, region.mu_min, scale[0]),
        ("mu_max", mu_opt, region.mu_max, scale[0]),
        ("sigma_min", sigma_opt, region.sigma_min, scale[1]),
        ("sigma_max", sigma_opt, region.sigma_max, scale[1]),
    ):
        if abs(value - side) <= boundary_rtol * width:
            sides.append(name)
    g_ref = float(g(params, *reference)) if reference is not None else None
    gain = 1.0 - math.exp(-(g_opt - g_ref)) if g_ref is not None else None
    return PplOptimum(mu_opt, sigma_opt, g_opt, g_ref, gain, bool(sides), tuple(sides), region)
