"""The perplexity-aware data scaling law and its fit.

    L(μ, σ, D) = E + D_c / ( μ^(α0 + α1·σ) · σ^(β0 + β1·μ) · D^αD )

``μ`` and ``σ`` are the mean and spread of chunk perplexity in a CPT subset, ``D`` its training tokens, ``L`` the
domain test loss after CPT. Constraints: ``D_c > 0``, ``αD > 0``, ``0 < E < min L``. Fitted by the log-linear core
(``loglinear``) with features ``[1, −log μ, −σ·log μ, −log σ, −μ·log σ, −log D]``; the held-out error leaves out
one regime at a time (every size of it), and the bootstrap resamples regimes.

The σ statistic (standard deviation or variance) and the PPL space (raw or log) are the caller's choice of what
it passes in; the options record them with the fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from cpt.laws._common import captured_warnings, json_map, json_number, percentile_interval, single_threaded_blas
from cpt.laws.errors import DegenerateData, TooFewPoints
from cpt.laws.ppl.loglinear import FitSettings, LogLinearFit, Problem, check_rank, fit_loglinear, group_bootstrap

SigmaKind = Literal["std", "var"]
PplSpace = Literal["raw", "log"]

PARAM_NAMES = ("E", "D_c", "alpha0", "alpha1", "beta0", "beta1", "alpha_D")


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

    @classmethod
    def from_vector(cls, v: np.ndarray) -> PplLawParams:
        """From ``[E, log D_c, α0, α1, β0, β1, αD]`` (the log-linear core's ``[E, c…]``)."""
        return cls(float(v[0]), float(np.exp(v[1])), *(float(x) for x in v[2:]))


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
    n_bootstrap: int = 200  # resamples of regimes; 0 skips the intervals
    ci_level: float = 0.9
    min_points: int = 9  # seven parameters plus a margin
    held_out: bool = True  # leave-one-regime-out refits
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

    @property
    def settings(self) -> FitSettings:
        return FitSettings(
            self.huber_delta, self.e_grid_size, self.n_polish, self.n_bootstrap, self.held_out, self.max_iter
        )


@dataclass(frozen=True)
class PplObservations:
    """One row per pilot run: subset statistics ``mu``, ``sigma``, CPT tokens ``D`` and test ``loss``.

    ``group_ids`` name what must be left out and resampled together: the regime (every size of a regime trains on
    nested draws of the same chunks and shares their noise). Default: each run its own group. ``sizes`` name the
    pilot size a run belongs to (its token budget; ``D`` is what it really trained on, which may overshoot the budget
    by a step), for the within-size comparisons. Default: ``D``.
    """

    mu: np.ndarray
    sigma: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    run_ids: tuple[str, ...]
    group_ids: tuple[str, ...] = ()
    sizes: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("mu", "sigma", "D", "loss"):
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.ndim != 1:
                raise DegenerateData(f"{name} must be one-dimensional, got shape {a.shape}", "pass flat arrays")
            arrays[name] = a
            object.__setattr__(self, name, a)
        object.__setattr__(self, "run_ids", tuple(str(r) for r in self.run_ids))
        groups = tuple(str(r) for r in (self.group_ids or self.run_ids))
        object.__setattr__(self, "group_ids", groups)
        sizes = arrays["D"] if self.sizes is None else np.asarray(self.sizes, dtype=np.float64)
        object.__setattr__(self, "sizes", sizes)
        lengths = {k: len(v) for k, v in arrays.items()} | {
            "run_ids": len(self.run_ids),
            "group_ids": len(groups),
            "sizes": len(sizes),
        }
        if len(set(lengths.values())) != 1:
            raise DegenerateData(f"observation arrays differ in length: {lengths}", "pass one value per row")

    def __len__(self) -> int:
        return len(self.loss)

    def group_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(group names, each row's group as 0..G−1)."""
        return np.unique(np.asarray(self.group_ids), return_inverse=True)

    def features(self) -> np.ndarray:
        lmu, lsig = np.log(self.mu), np.log(self.sigma)
        return np.column_stack([np.ones(len(self)), -lmu, -self.sigma * lmu, -lsig, -self.mu * lsig, -np.log(self.D)])


@dataclass(frozen=True)
class PplLawFit:
    params: PplLawParams
    options: PplLawOptions
    n_points: int
    n_groups: int
    objective: float  # Σ Huber(log residual) / δ² at the optimum
    r2: float  # on the loss scale
    rmse: float  # loss units
    residuals: np.ndarray  # log L̂ − log L per row
    predicted: np.ndarray  # L̂ per row, by the fit on all runs
    heldout_predicted: np.ndarray  # L̂ per row by the fit without that row's regime (NaN where that refit failed)
    heldout_rmse: float | None  # leave-one-regime-out prediction error, loss units
    heldout_errors: dict[str, float]  # regime → RMSE of its rows when predicted by a fit without it
    draws: tuple[PplLawParams, ...]  # bootstrap refits over resampled regimes that succeeded
    ci: dict[str, tuple[float, float]]  # parameter → bootstrap percentile interval at options.ci_level
    converged: bool
    warnings: tuple[str, ...]

    @property
    def n_bootstrap_ok(self) -> int:
        return len(self.draws)

    def to_json(self) -> dict[str, object]:
        return {
            "params": self.params.as_dict(),
            "options": asdict(self.options),
            "n_points": self.n_points,
            "n_groups": self.n_groups,
            "objective": json_number(self.objective),
            "r2": json_number(self.r2),
            "rmse": json_number(self.rmse),
            "residuals": [json_number(r) for r in self.residuals],
            "predicted": [json_number(r) for r in self.predicted],
            "heldout_predicted": [json_number(r) for r in self.heldout_predicted],
            "heldout_rmse": json_number(self.heldout_rmse),
            "heldout_errors": json_map(self.heldout_errors),
            "ci": json_map(self.ci),
            "n_bootstrap_ok": self.n_bootstrap_ok,
            "converged": self.converged,
            "warnings": list(self.warnings),
        }


def validate(obs: PplObservations, options: PplLawOptions) -> None:
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
    if len(set(obs.group_ids)) < 2:
        raise DegenerateData("all rows belong to one regime", "give each regime its own group id")


def fit_quality(loss: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(R², RMSE) of predictions on the loss scale (R² NaN when the losses do not vary)."""
    resid = predicted - loss
    ss_tot = float(np.sum((loss - loss.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else math.nan
    return r2, float(np.sqrt(np.mean(resid**2)))


def heldout_summary(
    loss: np.ndarray, heldout: np.ndarray, groups: np.ndarray, names: np.ndarray
) -> tuple[float | None, dict[str, float]]:
    """Overall held-out RMSE and per-group RMSE (groups whose refit failed are skipped)."""
    per_group = {}
    for k, name in enumerate(names):
        rows = (groups == k) & np.isfinite(heldout)
        if rows.any():
            per_group[str(name)] = float(np.sqrt(np.mean((heldout[rows] - loss[rows]) ** 2)))
    ok = np.isfinite(heldout)
    return (float(np.sqrt(np.mean((heldout[ok] - loss[ok]) ** 2))) if ok.any() else None), per_group


def fit_ppl_law(obs: PplObservations, options: PplLawOptions, rng: np.random.Generator) -> PplLawFit:
    """Fit the perplexity-aware law; report fit quality, leave-one-regime-out error and bootstrap intervals."""
    validate(obs, options)
    X = obs.features()
    check_rank(X, "the (μ, σ) regimes are too few or collinear: add pilot subsets at other (μ, σ) combinations")
    names, groups = obs.group_index()
    core = fit_loglinear(X, obs.loss, groups, options.settings, rng, "perplexity-aware law")
    params = PplLawParams.from_vector(np.array([core.E, *core.coef]))
    return _as_fit(obs, options, core, params, names, groups)


def _as_fit(obs, options, core: LogLinearFit, params, names, groups) -> PplLawFit:
    r2, rmse = fit_quality(obs.loss, core.predicted)
    heldout_rmse, per_group = heldout_summary(obs.loss, core.heldout_predicted, groups, names)
    ok = core.draws[np.isfinite(core.draws[:, 0])] if core.draws.size else core.draws
    draws = tuple(PplLawParams.from_vector(v) for v in ok)
    vectors = np.array([list(d.as_dict().values()) for d in draws]) if draws else np.empty((0, 7))
    ci = (
        {name: percentile_interval(vectors[:, j], options.ci_level) for j, name in enumerate(PARAM_NAMES)}
        if draws
        else {}
    )
    return PplLawFit(
        params=params,
        options=options,
        n_points=len(obs),
        n_groups=len(names),
        objective=core.objective,
        r2=r2,
        rmse=rmse,
        residuals=np.log(core.predicted) - np.log(obs.loss),
        predicted=core.predicted,
        heldout_predicted=core.heldout_predicted,
        heldout_rmse=heldout_rmse,
        heldout_errors=per_group,
        draws=draws,
        ci=ci,
        converged=core.converged,
        warnings=core.warnings,
    )


def bootstrap_ppl_law(
    obs: PplObservations, params: PplLawParams, options: PplLawOptions, rng: np.random.Generator
) -> np.ndarray:
    """(n_bootstrap, 7) parameter draws in PARAM_NAMES order from refits on resampled regimes, warm-started from
    ``params`` (NaN rows: refits that failed from every start) — the intervals of a fit already made, on their own."""
    validate(obs, options)
    problem = Problem.build(obs.features(), obs.loss, options.huber_delta)
    _, groups = obs.group_index()
    theta = problem.to_theta(params.E, np.array([math.log(params.D_c), *list(params.as_dict().values())[2:]]))
    with single_threaded_blas(), captured_warnings():
        raw = group_bootstrap(problem, theta, groups, options.settings, rng)
    out = raw.copy()
    out[:, 1] = np.exp(raw[:, 1])
    return out


def sample_observations(
    params: PplLawParams,
    mu: np.ndarray,
    sigma: np.ndarray,
    D: np.ndarray,
    noise_sd: float,
    rng: np.random.Generator,
    run_ids: Sequence[str] | None = None,
    group_ids: Sequence[str] | None = None,
) -> PplObservations:
    """Observations from the law with multiplicative log-normal noise: ``L = L_true · exp(noise_sd · N(0, 1))``.

    Noise on ``L`` itself (not on ``L − E``) in log space, the scale the fit's residuals live on. One run per row
    unless ``run_ids`` says otherwise.
    """
    mu, sigma, D = (np.asarray(a, dtype=np.float64) for a in (mu, sigma, D))
    loss = params.predict(mu, sigma, D) * np.exp(noise_sd * rng.standard_normal(mu.shape))
    ids = tuple(run_ids) if run_ids is not None else tuple(f"run-{i}" for i in range(len(mu)))
    return PplObservations(mu, sigma, D, loss, ids, tuple(group_ids or ()))
