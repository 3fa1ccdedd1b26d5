"""The target landscape a user acts on, with its basis and the baselines it beat (docs/science.md §6).

Evidence, all out of sample (leave-one-regime-out):

- **the null**: the size-only law ``L = E + B/D^α`` on the same runs. The landscape law must predict held-out
  regimes better; the gain (size-law RMSE − landscape-law RMSE) gets a bootstrap interval over regimes;
- **within-size** R² and Spearman rank correlation of the held-out predictions at each pilot size — the part of the
  fit that data size cannot explain;
- the optimum's predicted loss against the **best observed pilot regime** and the **random subset** at the largest
  pilot size: the optimum must be predicted better than the best pilot regime was observed to be. (The lowest of
  many noisy observations is biased low, so a near-tie goes to the observed regime; the report says how near.)

Basis:

- ``"size law"``: the landscape law does not beat the size-only law — at this scale the landscape has no measurable
  effect; the target is the pool's own landscape (the random subset's μ, σ);
- ``"best pilot regime"``: the law beats the null but does not earn its optimum (not converged, within-size R² too
  low, or its optimum is not predicted to beat the best pilot); the target is the best pilot regime's (μ, σ);
- ``"law optimum"``: otherwise; the target is the optimum, with its spread and near-optimal set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.stats import spearmanr

from cpt.laws._common import json_map, json_number, percentile_interval
from cpt.laws.ppl.law import PplLawFit, PplObservations
from cpt.laws.ppl.optimum import PplOptimum
from cpt.laws.ppl.size_law import SizeLawFit

LandscapeBasis = Literal["law optimum", "best pilot regime", "size law"]


@dataclass(frozen=True)
class AnswerRules:
    min_gain: float = 0.0  # the lower end of the gain's interval (loss units) must exceed this to beat the null
    min_within_size_r2: float = 0.0  # mean within-size held-out R² the law must exceed to earn its optimum
    n_gain_bootstrap: int = 2000  # regime resamples for the gain's interval
    ci_level: float = 0.9

    def __post_init__(self) -> None:
        if self.n_gain_bootstrap < 100 or not 0 < self.ci_level < 1:
            raise ValueError("n_gain_bootstrap ≥ 100 and 0 < ci_level < 1 are required")


@dataclass(frozen=True)
class NullComparison:
    ppl_heldout_rmse: float
    size_heldout_rmse: float
    gain: float  # size − landscape held-out RMSE: > 0 when the landscape helps
    gain_ci: tuple[float, float]
    beats_size_law: bool
    within_size_r2: dict[float, float]  # pilot size (budget) → held-out R² of the landscape law among its runs
    size_law_within_size_r2: dict[float, float]
    rank_correlation: dict[float, float]  # D → Spearman ρ of held-out predictions vs observed losses
    n_regimes: int

    @property
    def mean_within_size_r2(self) -> float:
        return float(np.mean(list(self.within_size_r2.values()))) if self.within_size_r2 else math.nan

    @property
    def mean_rank_correlation(self) -> float:
        values = [v for v in self.rank_correlation.values() if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    def to_json(self) -> dict[str, object]:
        return {
            "ppl_heldout_rmse": self.ppl_heldout_rmse,
            "size_heldout_rmse": self.size_heldout_rmse,
            "gain": self.gain,
            "gain_ci": list(self.gain_ci),
            "beats_size_law": self.beats_size_law,
            "within_size_r2": json_map(self.within_size_r2, key=lambda d: f"{d:g}"),
            "size_law_within_size_r2": json_map(self.size_law_within_size_r2, key=lambda d: f"{d:g}"),
            "mean_within_size_r2": json_number(self.mean_within_size_r2),
            "rank_correlation": json_map(self.rank_correlation, key=lambda d: f"{d:g}"),
            "mean_rank_correlation": json_number(self.mean_rank_correlation),
            "n_regimes": self.n_regimes,
        }


def _within_size(obs: PplObservations, predicted: np.ndarray) -> tuple[dict[float, float], dict[float, float]]:
    r2, rho = {}, {}
    for d in np.unique(obs.sizes):
        rows = (d == obs.sizes) & np.isfinite(predicted)
        if rows.sum() < 3:
            continue
        loss, pred = obs.loss[rows], predicted[rows]
        ss_tot = float(np.sum((loss - loss.mean()) ** 2))
        r2[float(d)] = 1.0 - float(np.sum((loss - pred) ** 2)) / ss_tot if ss_tot > 0 else math.nan
        rho[float(d)] = float(spearmanr(pred, loss).statistic) if np.ptp(pred) > 0 else math.nan
    return r2, rho


def compare_with_size_law(
    obs: PplObservations, ppl: PplLawFit, size: SizeLawFit, rules: AnswerRules, rng: np.random.Generator
) -> NullComparison:
    """Held-out errors of both laws, the gain with its regime-bootstrap interval, within-size R² and rank ρ."""
    names, groups = obs.group_index()
    ok = np.isfinite(ppl.heldout_predicted) & np.isfinite(size.heldout_predicted)
    if not ok.any():  # no held-out refit (held_out off, or every refit failed): nothing to compare
        nan = math.nan
        return NullComparison(nan, nan, nan, (nan, nan), False, {}, {}, {}, len(names))
    sq_ppl = np.bincount(groups[ok], (ppl.heldout_predicted[ok] - obs.loss[ok]) ** 2, minlength=len(names))
    sq_size = np.bincount(groups[ok], (size.heldout_predicted[ok] - obs.loss[ok]) ** 2, minlength=len(names))
    rows = np.bincount(groups[ok], minlength=len(names)).astype(np.float64)

    def rmse(weights: np.ndarray, sq: np.ndarray) -> np.ndarray:
        return np.sqrt((weights @ sq) / np.maximum(weights @ rows, 1.0))

    g = len(names)
    counts = np.stack([np.bincount(rng.integers(0, g, g), minlength=g) for _ in range(rules.n_gain_bootstrap)])
    counts = counts.astype(np.float64)
    gains = rmse(counts, sq_size) - rmse(counts, sq_ppl)
    one = np.ones(len(names))
    gain = float(rmse(one, sq_size) - rmse(one, sq_ppl))
    gain_ci = percentile_interval(gains, rules.ci_level)
    r2, rho = _within_size(obs, ppl.heldout_predicted)
    size_r2, _ = _within_size(obs, size.heldout_predicted)
    return NullComparison(
        ppl_heldout_rmse=float(rmse(one, sq_ppl)),
        size_heldout_rmse=float(rmse(one, sq_size)),
        gain=gain,
        gain_ci=gain_ci,
        beats_size_law=bool(gain_ci[0] > rules.min_gain),
        within_size_r2=r2,
        size_law_within_size_r2=size_r2,
        rank_correlation=rho,
        n_regimes=len(names),
    )


@dataclass(frozen=True)
class PilotPoint:
    """One observed pilot run, in the fit's terms."""

    run: str
    regime: str
    mu: float
    sigma: float
    D: float
    loss: float


@dataclass(frozen=True)
class LandscapeAnswer:
    basis: LandscapeBasis
    mu: float  # the target landscape, in the fit's terms (raw/log PPL, σ as std/var: the fit's options)
    sigma: float
    reasons: tuple[str, ...]
    baselines: tuple[str, ...]  # what the answer beat (or did not), in words with numbers
    best_pilot: PilotPoint  # lowest observed loss at the largest pilot size
    random_pilot: PilotPoint | None  # the random subset at the largest pilot size (the papers' baseline)
    optimum_beats_best_pilot: bool  # predicted loss at the optimum < the best pilot's observed loss

    def to_json(self) -> dict[str, object]:
        return {
            "basis": self.basis,
            "mu": self.mu,
            "sigma": self.sigma,
            "reasons": list(self.reasons),
            "baselines": list(self.baselines),
            "best_pilot": asdict(self.best_pilot),
            "random_pilot": None if self.random_pilot is None else asdict(self.random_pilot),
            "optimum_beats_best_pilot": self.optimum_beats_best_pilot,
        }

    def summary(self) -> str:
        return f"target landscape μ {self.mu:.4g}, σ {self.sigma:.4g}; basis: {self.basis} — {'; '.join(self.reasons)}"


def _pilot(obs: PplObservations, regimes: tuple[str, ...], i: int) -> PilotPoint:
    return PilotPoint(
        obs.run_ids[i], regimes[i], float(obs.mu[i]), float(obs.sigma[i]), float(obs.D[i]), float(obs.loss[i])
    )


def landscape_answer(
    obs: PplObservations,
    fit: PplLawFit,
    comparison: NullComparison,
    optimum: PplOptimum,
    rules: AnswerRules,
    random_regime: str | None,
) -> LandscapeAnswer:
    """Decide the basis (module docstring). ``obs.group_ids`` are regime names; ``random_regime`` names the random
    subset among them (None when there is none)."""
    regimes = obs.group_ids
    largest = np.flatnonzero(obs.sizes.max() == obs.sizes)
    best = _pilot(obs, regimes, int(largest[np.argmin(obs.loss[largest])]))
    rand_rows = [int(i) for i in largest if regimes[i] == random_regime]
    random = _pilot(obs, regimes, rand_rows[0]) if rand_rows else None
    beats_best = optimum.predicted_loss < best.loss
    interval = f"[{comparison.gain_ci[0]:.4f}, {comparison.gain_ci[1]:.4f}]"
    baselines = [
        f"held-out RMSE {comparison.ppl_heldout_rmse:.4f} (landscape law) vs {comparison.size_heldout_rmse:.4f} "
        f"(size-only law): gain {comparison.gain:.4f}, {rules.ci_level:.0%} interval {interval}",
        f"optimum predicted {optimum.predicted_loss:.4f} at D = {optimum.D_ref:,.0f} vs best pilot regime "
        f"{best.regime} observed {best.loss:.4f}"
        + ("" if random is None else f" and the random subset {random.loss:.4f}"),
    ]
    if not comparison.beats_size_law:
        target = random or best
        finding = (
            f"the landscape has no measurable effect: the landscape law does not predict held-out regimes better "
            f"than the size-only law (gain interval {interval})"
            if math.isfinite(comparison.gain)
            else "the landscape law could not be compared with the size-only law out of sample (no held-out refit)"
        )
        reason = f"{finding}; no landscape is preferred, so the target is " + (
            "the pool's own (the random subset's μ, σ)" if random else "the best pilot regime's"
        )
        return LandscapeAnswer(
            "size law", target.mu, target.sigma, (reason,), tuple(baselines), best, random, beats_best
        )
    problems = []
    if not fit.converged:
        problems.append("the landscape law's fit did not converge")
    if not comparison.mean_within_size_r2 > rules.min_within_size_r2:
        problems.append(
            f"within a pilot size the law explains too little (held-out R² {comparison.mean_within_size_r2:.2f}, "
            f"needs > {rules.min_within_size_r2:g})"
        )
    if not beats_best:
        problems.append(
            f"its optimum is not predicted to beat the best pilot regime ({optimum.predicted_loss:.4f} predicted vs "
            f"{best.loss:.4f} observed for {best.regime})"
        )
    if problems:
        return LandscapeAnswer(
            "best pilot regime", best.mu, best.sigma, tuple(problems), tuple(baselines), best, random, beats_best
        )
    reasons = [
        "the landscape law beats the size-only law held out, and its optimum is predicted to beat the best pilot"
    ]
    if optimum.on_boundary:
        reasons.append(f"the optimum lies on the search region's boundary ({', '.join(optimum.boundary_sides)})")
    return LandscapeAnswer(
        "law optimum", optimum.mu, optimum.sigma, tuple(reasons), tuple(baselines), best, random, beats_best
    )
