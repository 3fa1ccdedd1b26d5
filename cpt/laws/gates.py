"""The quality gates of the two laws, as pure rules: what must hold before a fit is promoted, and before its answer is
acted on.

A gate that cannot fail is no gate. The perplexity-aware law's gate is the null comparison: the law must predict
held-out regimes better than the size-only law and explain something within a pilot size; a bound on its held-out
error alone passes whenever the regimes' losses are close together (they span ~3 % on the quick-start pilots). The
CMR gate asks for trajectory fits that describe and extrapolate their runs, and for an answer at the target budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cpt.laws._common import json_number
from cpt.laws.cmr.analysis import CmrAnalysis
from cpt.laws.cmr.answer import CmrAnswer
from cpt.laws.cmr.heldout import HeldOutError
from cpt.laws.ppl.answer import LandscapeAnswer, NullComparison
from cpt.laws.ppl.law import PplLawFit


@dataclass(frozen=True)
class GateResult:
    passed: bool
    problems: tuple[str, ...]
    values: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "problems": list(self.problems),
            "values": {k: json_number(v) if isinstance(v, float) else v for k, v in self.values.items()},
        }


@dataclass(frozen=True)
class PplGate:
    max_heldout_relative_error: float = 0.05  # leave-one-regime-out RMSE / mean loss
    require_beating_size_law: bool = True
    min_within_size_r2: float = 0.0


def ppl_law_gate(fit: PplLawFit, comparison: NullComparison, mean_loss: float, gate: PplGate) -> GateResult:
    relative = (fit.heldout_rmse if fit.heldout_rmse is not None else math.nan) / mean_loss
    problems = []
    if not fit.converged:
        problems.append("the fit did not converge")
    if not relative <= gate.max_heldout_relative_error:
        problems.append(
            f"leave-one-regime-out error {relative:.2%} of the mean loss exceeds {gate.max_heldout_relative_error:.0%}"
        )
    if gate.require_beating_size_law and not comparison.beats_size_law:
        problems.append(
            f"it does not beat the size-only law held out (gain {comparison.gain:.4f}, interval "
            f"{comparison.gain_ci[0]:.4f}…{comparison.gain_ci[1]:.4f})"
        )
    if not comparison.mean_within_size_r2 > gate.min_within_size_r2:
        problems.append(
            f"within-size held-out R² {comparison.mean_within_size_r2:.2f} is not above {gate.min_within_size_r2:g}"
        )
    values = {
        "heldout_relative_error": relative,
        "gain_over_size_law": comparison.gain,
        "gain_ci_low": comparison.gain_ci[0],
        "within_size_r2": comparison.mean_within_size_r2,
        "rank_correlation": comparison.mean_rank_correlation,
        "converged": fit.converged,
    }
    return GateResult(not problems, tuple(problems), values)


def landscape_answer_gate(answer: LandscapeAnswer, law_gate: GateResult) -> GateResult:
    """Whether the target landscape a selection would act on is supported by the evidence of its basis.

    The law's own gate decides whether the law is promoted and served; the answer needs it only when it rests on the
    law (``law optimum``). A ``best pilot regime`` or ``size law`` answer rests on observed pilots — the law is not
    trusted to rank landscapes, and the answer says so — and must still be a usable (μ, σ)."""
    problems = []
    if not (math.isfinite(answer.mu) and math.isfinite(answer.sigma) and answer.mu > 0 and answer.sigma > 0):
        problems.append(f"the target landscape (μ {answer.mu}, σ {answer.sigma}) is not a positive finite point")
    if answer.basis == "law optimum" and not law_gate.passed:
        problems.append(f"it rests on the law, whose gate failed: {'; '.join(law_gate.problems)}")
    return GateResult(not problems, tuple(problems), {"basis": answer.basis, "law_gate_passed": law_gate.passed})


@dataclass(frozen=True)
class CmrGate:
    max_trajectory_rmse: float = 0.02  # largest in-sample RMSE of a trajectory fit (loss units)
    max_heldout_rmse: float = 0.05  # RMSE of the trajectories at held-out later checkpoints


def cmr_gate(analysis: CmrAnalysis, heldout: HeldOutError, answer: CmrAnswer, gate: CmrGate) -> GateResult:
    worst = max(max(f.dom_rmse, f.gen_rmse) for f in analysis.fits)
    problems = []
    if worst > gate.max_trajectory_rmse:
        problems.append(f"a trajectory fit has RMSE {worst:.4f} (limit {gate.max_trajectory_rmse:g})")
    if heldout.rmse > gate.max_heldout_rmse:
        problems.append(f"held-out trajectory RMSE {heldout.rmse:.4f} (limit {gate.max_heldout_rmse:g})")
    if answer.ratio is None:
        problems.append("no ratio keeps the general loss within tolerance: there is no answer to serve")
    values = {
        "max_trajectory_rmse": worst,
        "heldout_rmse": heldout.rmse,
        "basis": answer.basis,
        "cmr_law_determined": analysis.answer_model.law_determined,
    }
    return GateResult(not problems, tuple(problems), values)
