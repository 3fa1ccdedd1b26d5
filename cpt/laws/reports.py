"""Everything one law fit produces, from the pilot table to the answer and its gate: the single set of numbers the
asset writes to MLflow, the fits table, the materialization metadata and the check.

The settings dataclasses are the one home of every default; the Dagster configs take theirs from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from cpt.laws.cmr.analysis import CmrAnalysis, CmrOptions, analyse_cmr
from cpt.laws.cmr.answer import CmrAnswer
from cpt.laws.cmr.heldout import HeldOutError, trajectory_heldout_error
from cpt.laws.errors import DegenerateData, LawFitError
from cpt.laws.gates import CmrGate, GateResult, PplGate, cmr_gate, landscape_answer_gate, ppl_law_gate
from cpt.laws.pilot_tables import EvalAggregate, EvalLoss, MixtureData, mixture_trajectories, regime_observations
from cpt.laws.ppl.answer import AnswerRules, LandscapeAnswer, NullComparison, compare_with_size_law, landscape_answer
from cpt.laws.ppl.followup import FollowupDecision, FollowupRules, decide_followup
from cpt.laws.ppl.law import PplLawFit, PplLawOptions, PplObservations, fit_ppl_law
from cpt.laws.ppl.optimum import PplOptimum, ppl_optimum
from cpt.laws.ppl.region import SearchRegion, TrustRegion, reachable_region
from cpt.laws.ppl.size_law import SizeLawFit, fit_size_law

# The default CMR budget is the pilots' T_max: with realistic checkpoint noise the fitted CMR law is within 0.06 of the
# true CMR there and drifts further beyond (tests/cpt/test_cmr_law.py); larger budgets are answered, flagged.
DEFAULT_TARGET_FACTOR = 1


@dataclass(frozen=True)
class PplSettings:
    sigma_kind: Literal["std", "var"] = "std"
    ppl_space: Literal["raw", "log"] = "raw"
    n_bootstrap: int = 200  # regime resamples for the intervals and the optimum's spread
    ci_level: float = 0.9
    seed: int = 0
    eval_aggregate: EvalAggregate = "mean"
    eval_trim: float = 0.1
    trust_margin: float = 0.1  # the trust region: the pilots' convex hull, widened by this share of their ranges
    selection_tokens: int | None = None  # the subset size the reachable region is for; None: the largest pilot D
    max_heldout_relative_error: float = 0.05
    min_gain: float = 0.0
    min_within_size_r2: float = 0.0
    followup_rounds: int = 2  # at most this many rounds of follow-up pilots around the optimum
    followup_max_relative_width: float = 0.25  # an optimum interval wider than this share of its value: follow up

    def __post_init__(self) -> None:  # every option checked before any work (ValueError names the bad one)
        self.law_options(), self.rules(), self.eval_loss(), self.followup_rules()
        if self.trust_margin < 0 or (self.selection_tokens is not None and self.selection_tokens <= 0):
            raise ValueError("trust_margin must be ≥ 0 and selection_tokens positive")

    def law_options(self) -> PplLawOptions:
        return PplLawOptions(
            sigma_kind=self.sigma_kind, ppl_space=self.ppl_space, n_bootstrap=self.n_bootstrap, ci_level=self.ci_level
        )

    def rules(self) -> AnswerRules:
        return AnswerRules(min_gain=self.min_gain, min_within_size_r2=self.min_within_size_r2, ci_level=self.ci_level)

    def gate(self) -> PplGate:
        return PplGate(self.max_heldout_relative_error, min_within_size_r2=self.min_within_size_r2)

    def eval_loss(self) -> EvalLoss:
        return EvalLoss(self.eval_aggregate, self.eval_trim)

    def followup_rules(self) -> FollowupRules:
        return FollowupRules(self.followup_rounds, self.followup_max_relative_width)


@dataclass(frozen=True)
class PplReport:
    settings: PplSettings
    observations: PplObservations
    fit: PplLawFit
    size_fit: SizeLawFit
    comparison: NullComparison
    region: SearchRegion
    optimum: PplOptimum
    answer: LandscapeAnswer
    gate: GateResult  # the law's: promotion of the registered model
    answer_gate: GateResult  # the answer's: what the selection may act on
    followup: FollowupDecision  # whether pilots at and around the optimum should follow, and why (not)

    def to_json(self) -> dict[str, object]:
        reachable = self.region.reachable
        return {
            "fit": self.fit.to_json(),
            "size_law": self.size_fit.to_json(),
            "comparison": self.comparison.to_json(),
            "optimum": self.optimum.to_json(),
            "answer": self.answer.to_json(),
            "gate": self.gate.to_json(),
            "region": {
                "trust": self.region.trust.to_json(),
                "reachable": None if reachable is None else reachable.to_json(),
            },
            "eval_loss": self.settings.eval_loss().__dict__,
            "runs": list(self.observations.run_ids),
            "regimes": list(self.observations.group_ids),
            "followup": self.followup.to_json(),
        }

    def caveats(self) -> tuple[str, ...]:
        """What the user should know before acting on the answer."""
        out = []
        margin = self.answer.best_pilot.loss - self.optimum.predicted_loss
        if self.answer.basis != "size law" and abs(margin) < self.comparison.ppl_heldout_rmse:
            out.append(
                f"the optimum and the best pilot regime differ by {abs(margin):.4f} in loss, less than the law's "
                f"held-out error ({self.comparison.ppl_heldout_rmse:.4f}): the data barely decide between them"
            )
        if self.optimum.boundary_share is not None and self.optimum.boundary_share > 0.5:
            out.append(
                f"{self.optimum.boundary_share:.0%} of the bootstrap optima lie on the search region's boundary: the "
                "best landscape may lie beyond what was piloted (place follow-up pilots there)"
            )
        return tuple(out)

    def answer_json(self) -> dict[str, object]:
        return self.answer.to_json() | {
            "caveats": list(self.caveats()),
            "supported": self.answer_gate.to_json(),
            "followup": self.followup.to_json(),
        }

    def summary(self) -> str:
        o, level = self.optimum, self.settings.ci_level
        spread = ""
        if self.answer.basis == "law optimum" and o.mu_ci is not None and o.sigma_ci is not None:
            spread = (
                f" ({level:.0%} bootstrap interval of the optimum: μ {o.mu_ci[0]:.4g}–{o.mu_ci[1]:.4g}, "
                f"σ {o.sigma_ci[0]:.4g}–{o.sigma_ci[1]:.4g})"
            )
        return "; ".join([self.answer.summary() + spread, *self.caveats(), self.followup.summary()])

    def quality(self) -> dict[str, float | int | bool | None]:
        return {
            "r2": self.fit.r2,
            "rmse": self.fit.rmse,
            "heldout_rmse": self.fit.heldout_rmse,
            "size_law_heldout_rmse": self.comparison.size_heldout_rmse,
            "gain_over_size_law": self.comparison.gain,
            "gain_ci_low": self.comparison.gain_ci[0],
            "gain_ci_high": self.comparison.gain_ci[1],
            "within_size_r2": self.comparison.mean_within_size_r2,
            "rank_correlation": self.comparison.mean_rank_correlation,
            "converged": self.fit.converged,
            "n_runs": len(self.observations),
            "n_regimes": self.fit.n_groups,
            "n_bootstrap_ok": self.fit.n_bootstrap_ok,
            "gate_passed": self.gate.passed,
        }


def ppl_report(
    regime_runs: pa.Table,
    table_name: str,
    pool_ppl: np.ndarray,
    pool_tokens: np.ndarray,
    settings: PplSettings,
    random_regime: str | None,
) -> PplReport:
    """Fit the landscape law and its null, search the optimum over what the pool can reach, decide the answer and
    the gate. ``pool_ppl``/``pool_tokens``: the domain train chunks the dataset will be selected from."""
    options = settings.law_options()
    obs = regime_observations(regime_runs, table_name, options, settings.eval_loss())
    rng = np.random.default_rng(settings.seed)
    fit = fit_ppl_law(obs, options, rng)
    size_fit = fit_size_law(obs, options)
    rules = settings.rules()
    comparison = compare_with_size_law(obs, fit, size_fit, rules, rng)
    region = SearchRegion(
        TrustRegion.around(obs.mu, obs.sigma, settings.trust_margin),
        _reachable(pool_ppl, pool_tokens, settings, float(obs.sizes.max())),
    )
    optimum = ppl_optimum(fit.params, region, float(obs.sizes.max()), fit.draws, settings.ci_level)
    answer = landscape_answer(obs, fit, comparison, optimum, rules, random_regime)
    gate = ppl_law_gate(fit, comparison, float(np.mean(obs.loss)), settings.gate())
    answer_gate = landscape_answer_gate(answer, gate)
    points = list(zip(obs.group_ids, obs.mu.tolist(), obs.sigma.tolist(), strict=True))
    followup = decide_followup(optimum, answer.basis, points, settings.followup_rules())
    return PplReport(settings, obs, fit, size_fit, comparison, region, optimum, answer, gate, answer_gate, followup)


def _reachable(pool_ppl: np.ndarray, pool_tokens: np.ndarray, settings: PplSettings, largest_pilot: float):
    if len(pool_ppl) == 0:
        raise DegenerateData("the domain pool holds no scored train chunks", "score the domain sources first")
    values = np.log(pool_ppl) if settings.ppl_space == "log" else np.asarray(pool_ppl, dtype=np.float64)
    tokens = settings.selection_tokens or largest_pilot
    count = round(tokens / float(np.mean(pool_tokens)))
    return reachable_region(values, min(max(count, 2), len(values)), squared=settings.sigma_kind == "var")


@dataclass(frozen=True)
class CmrSettings:
    lam: float = 1000.0
    eps: float = 0.05
    relative_eps: bool = False
    target_tokens: int | None = None  # None: the pilots' T_max (DEFAULT_TARGET_FACTOR)
    n_bootstrap: int = 200
    ci_level: float = 0.9
    seed: int = 0
    eval_aggregate: EvalAggregate = "mean"
    eval_trim: float = 0.1
    holdout_fraction: float = 0.25  # last share of each run's tokens held out to score the trajectory fits
    max_trajectory_rmse: float = 0.02  # well inside ε: a curve off by the tolerance itself cannot decide it
    max_heldout_rmse: float = 0.05
    max_cmr_law_residual: float = 0.1

    def __post_init__(self) -> None:  # every option checked before any work (ValueError names the bad one)
        self.options(), self.eval_loss_of(self.eval_aggregate)
        if self.target_tokens is not None and self.target_tokens <= 0:
            raise ValueError(f"target_tokens must be positive, got {self.target_tokens}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")

    def options(self, n_bootstrap: int | None = None) -> CmrOptions:
        return CmrOptions(
            lam=self.lam,
            eps=self.eps,
            relative_eps=self.relative_eps,
            n_bootstrap=self.n_bootstrap if n_bootstrap is None else n_bootstrap,
            ci_level=self.ci_level,
            max_law_residual=self.max_cmr_law_residual,
        )

    def gate(self) -> CmrGate:
        return CmrGate(self.max_trajectory_rmse, self.max_heldout_rmse)

    def eval_loss_of(self, aggregate: str) -> EvalLoss:
        return EvalLoss(aggregate, self.eval_trim)  # type: ignore[arg-type]

    def target(self, t_max: float) -> float:
        return float(self.target_tokens or DEFAULT_TARGET_FACTOR * t_max)


@dataclass(frozen=True)
class CmrReport:
    settings: CmrSettings
    data: MixtureData
    analysis: CmrAnalysis
    heldout: HeldOutError
    answer: CmrAnswer
    gate: GateResult
    eval_sensitivity: dict[str, dict[str, object]]  # eval aggregate → CMR and answer under it (no bootstrap)

    def to_json(self) -> dict[str, object]:
        return self.analysis.to_json() | {
            "heldout": self.heldout.to_json(),
            "gate": self.gate.to_json(),
            "settings": self.settings.__dict__ | {"target_tokens": self.analysis.target_tokens},
            "eval_sensitivity": self.eval_sensitivity,
        }

    def caveats(self) -> tuple[str, ...]:
        """Where the data cannot decide: the bootstrap splits the CMR, or a robust eval loss moves the answer."""
        out = []
        a = self.answer
        shares = sorted(((p, r) for r, p in self.analysis.cmr_distribution.items()), reverse=True, key=lambda x: x[0])
        if shares and shares[0][0] < 0.7:
            split = " or ".join(f"{'none' if r is None else f'{r:.3g}'} ({p:.0%})" for p, r in shares[:2])
            out.append(f"the pilots cannot decide the measured CMR: bootstrap replicates put it at {split}")
        if a.law_share is not None and (a.law_share < 0.5) == (a.basis == "law"):
            out.append(f"only {a.law_share:.0%} of the bootstrap replicates answer from a determined law")
        if a.no_answer_share:
            out.append(f"{a.no_answer_share:.0%} of the bootstrap replicates find no tolerable ratio at all")
        if a.ratio is not None and a.interval is not None and not a.interval[0] <= a.ratio <= a.interval[1]:
            out.append("the answer lies outside its own bootstrap interval: the pilots support it weakly")
        for aggregate, other in self.eval_sensitivity.items():
            moved = other.get("basis") != a.basis or (other.get("answer") is None) != (a.ratio is None)
            if not moved and a.ratio is not None:
                moved = abs(other["answer"] - a.ratio) > 0.02
            if "answer" in other and moved:
                value = "none" if other["answer"] is None else f"{other['answer']:.3g}"
                out.append(f"with the {aggregate} eval loss the answer would be {value} (basis {other['basis']})")
        return tuple(out)

    def answer_json(self) -> dict[str, object]:
        return self.answer.to_json() | {"caveats": list(self.caveats())}

    def summary(self) -> str:
        return "; ".join([self.answer.summary(), *self.caveats()])

    def quality(self) -> dict[str, float | int | bool | str | None]:
        return {
            "max_trajectory_rmse": max(max(f.dom_rmse, f.gen_rmse) for f in self.analysis.fits),
            "heldout_rmse": self.heldout.rmse,
            "cmr_law_residual": self.analysis.cmr_law_residual,
            "cmr_law_determined": self.analysis.answer_model.law_determined,
            "n_ratios": len(self.analysis.fits),
            "cmr": self.analysis.cmr,
            "answer": self.answer.ratio,
            "basis": self.answer.basis,
            "extrapolated": self.answer.extrapolated,
            "gate_passed": self.gate.passed,
        }


def cmr_report(mixture_runs: pa.Table, table_name: str, settings: CmrSettings) -> CmrReport:
    """The CMR analysis with its answer at the target budget, the held-out trajectory error, the gate, and how the
    answer moves when the eval loss is aggregated otherwise (robust aggregates against outlier chunks)."""
    data = mixture_trajectories(mixture_runs, table_name, settings.eval_loss_of(settings.eval_aggregate))
    target = settings.target(data.t_max)
    analysis = analyse_cmr(
        data.trajectories,
        data.L_dom0,
        data.L_gen0,
        data.t_max,
        settings.options(),
        target_tokens=target,
        rng=np.random.default_rng(settings.seed),
    )
    heldout = trajectory_heldout_error(data.trajectories, data.L_dom0, data.L_gen0, settings.holdout_fraction)
    answer = analysis.answer()
    sensitivity = {settings.eval_aggregate: {"cmr": analysis.cmr, "answer": answer.ratio, "basis": answer.basis}}
    for aggregate in ("mean", "trimmed", "median"):
        if aggregate != settings.eval_aggregate:
            sensitivity[aggregate] = _cmr_under(mixture_runs, table_name, settings, aggregate, target)
    gate = cmr_gate(analysis, heldout, answer, settings.gate())
    return CmrReport(settings, data, analysis, heldout, answer, gate, sensitivity)


def _cmr_under(table: pa.Table, name: str, settings: CmrSettings, aggregate: str, target: float) -> dict[str, object]:
    try:
        data = mixture_trajectories(table, name, settings.eval_loss_of(aggregate))
        alt = analyse_cmr(
            data.trajectories, data.L_dom0, data.L_gen0, data.t_max, settings.options(0), target_tokens=target
        )
    except LawFitError as exc:
        return {"error": str(exc)}
    a = alt.answer()
    return {"cmr": alt.cmr, "answer": a.ratio, "basis": a.basis}
