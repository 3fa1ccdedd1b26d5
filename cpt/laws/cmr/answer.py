"""The CMR answer: one function, used by the ``laws/cmr`` asset, the CLI and the served model.

The answer to "what share of domain data at a budget of T tokens?" is

- ``basis="law"``: the CMR law's value ``R_CMR(T)`` — when the law is **determined**: fitted on at least 4 critical
  points (3 coefficients and one to check them), its exponent not on a search bound, its residual at its points
  within the limit, consistent with the CMR measured at the pilots' budget, and within [−0.05, 1.05] at the asked
  budget (a value further out means the law does not reach that budget);
- ``basis="measured"``: otherwise, the CMR measured at the pilots' budget ``T_max`` (the largest feasible pilot
  ratio), with the reasons the law was not used.

Either way the ratio is clipped to [0, 1] and into the **tolerance interval** (the ratios whose general loss at the
pilots' budget, on the fitted loss-against-ratio law, stays within ε): no answer breaks the general-loss limit, and
none is given when no ratio keeps it. ``extrapolated`` is set where the answer's evidence does not reach: for the
law, budgets beyond ``T_max`` or below its smallest critical point; for the measured CMR, any budget but ``T_max``
(the CMR usually grows with the budget: at a smaller one the measured ratio may be too high). The interval is the
percentile interval of the same answer over the bootstrap replicates of the whole analysis; replicates without a
tolerable ratio are counted apart (``no_answer_share``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from cpt.laws._common import json_number, percentile_interval
from cpt.laws.cmr.fits import cmr_law_at_bound, cmr_law_residual
from cpt.laws.cmr.forms import CmrLaw

Basis = Literal["law", "measured"]
RANGE_SLACK = 0.05  # a law value this far outside [0, 1] is clipped; farther, the law is not used at that budget
MIN_LAW_POINTS = 4  # critical points a CMR law must be fitted on to count as determined


@dataclass(frozen=True)
class CmrAnswerModel:
    """What an answer is computed from. One per fit and one per bootstrap replicate; round-trips through JSON, so
    the served model answers exactly as the asset did."""

    t_max: float  # the pilots' budget
    measured_cmr: float | None  # the largest feasible pilot ratio at t_max
    tolerance: tuple[float, float] | None  # the tolerable ratios at t_max (general-loss ratio law); None: none
    law: CmrLaw | None
    law_problems: tuple[str, ...]  # why the law cannot be used; empty when it is determined
    law_t_min: float | None = None  # the smallest critical point the law was fitted on

    @property
    def law_determined(self) -> bool:
        return self.law is not None and not self.law_problems

    def to_json(self) -> dict[str, object]:
        return {
            "t_max": self.t_max,
            "measured_cmr": self.measured_cmr,
            "tolerance": None if self.tolerance is None else list(self.tolerance),
            "law": None if self.law is None else asdict(self.law),
            "law_problems": list(self.law_problems),
            "law_t_min": self.law_t_min,
        }

    @classmethod
    def from_json(cls, d: dict) -> CmrAnswerModel:
        return cls(
            t_max=float(d["t_max"]),
            measured_cmr=None if d["measured_cmr"] is None else float(d["measured_cmr"]),
            tolerance=None if d["tolerance"] is None else (float(d["tolerance"][0]), float(d["tolerance"][1])),
            law=None if d["law"] is None else CmrLaw(**d["law"]),
            law_problems=tuple(d["law_problems"]),
            law_t_min=d.get("law_t_min"),
        )


@dataclass(frozen=True)
class CmrAnswer:
    tokens: float  # the CPT budget asked about
    ratio: float | None  # the domain share to use; None when no ratio keeps the general loss within tolerance
    basis: Basis
    extrapolated: bool  # tokens beyond the pilots' budget
    law_value: float | None  # R_CMR(tokens) before clipping (None without a law)
    interval: tuple[float, float] | None  # bootstrap percentile interval of ``ratio`` (None: no replicates)
    law_share: float | None  # share of bootstrap replicates whose answer had basis "law"
    reasons: tuple[str, ...]
    level: float | None = None  # the interval's level
    no_answer_share: float | None = None  # share of bootstrap replicates with no tolerable ratio (not in the interval)

    def to_json(self) -> dict[str, object]:
        return {
            "tokens": self.tokens,
            "ratio": json_number(self.ratio),
            "basis": self.basis,
            "extrapolated": self.extrapolated,
            "law_value": json_number(self.law_value),
            "interval": None if self.interval is None else [json_number(v) for v in self.interval],
            "law_share": json_number(self.law_share),
            "reasons": list(self.reasons),
            "level": self.level,
            "no_answer_share": json_number(self.no_answer_share),
        }

    def summary(self) -> str:
        """One line a user can act on."""
        ratio = "none tolerable" if self.ratio is None else f"{self.ratio:.3f}"
        interval = ""
        if self.interval is not None:
            interval = f" ({self.level or 0:.0%} interval {self.interval[0]:.3f}–{self.interval[1]:.3f})"
        flag = ", extrapolated beyond what the pilots measured" if self.extrapolated else ""
        why = f" — {'; '.join(self.reasons)}" if self.reasons else ""
        return f"CMR {ratio} at {self.tokens:,.0f} tokens{interval}; basis: {self.basis}{flag}{why}"


def law_problems(
    law: CmrLaw | None,
    points: tuple[tuple[float, float], ...],
    *,
    t_max: float,
    measured_cmr: float | None,
    next_infeasible: float | None,
    max_residual: float,
) -> tuple[str, ...]:
    """Why a fitted CMR law is not determined by its data (empty when it is).

    ``next_infeasible``: the smallest pilot ratio above the measured CMR whose ``F`` is still rising at ``T_max``;
    the law's value at ``T_max`` must not exceed it, nor fall below the measured CMR (by more than RANGE_SLACK).
    """
    if law is None or len(points) < MIN_LAW_POINTS:
        return (
            f"{len(points)} pilot ratios have a critical point T0 inside the budget; the CMR law needs at least "
            f"{MIN_LAW_POINTS} (3 coefficients and one to check them)",
        )
    problems = []
    if cmr_law_at_bound(law):
        problems.append(f"the CMR law's exponent s4 = {law.s4:.3g} sits on its search bound (not determined)")
    residual = cmr_law_residual(law, points)
    if residual is not None and residual > max_residual:
        problems.append(f"the CMR law misses its (T0, R) points by {residual:.3f} in R (limit {max_residual:g})")
    at_tmax = float(law.predict(t_max))
    if measured_cmr is not None and at_tmax < measured_cmr - RANGE_SLACK:
        problems.append(
            f"the law gives {at_tmax:.3f} at the pilots' budget, below the CMR {measured_cmr:.3f} measured there"
        )
    if next_infeasible is not None and at_tmax > next_infeasible + RANGE_SLACK:
        problems.append(
            f"the law gives {at_tmax:.3f} at the pilots' budget, above the ratio {next_infeasible:.3f} measured "
            "infeasible there"
        )
    return tuple(problems)


def answer_cmr(model: CmrAnswerModel, tokens: float) -> CmrAnswer:
    """The answer at ``tokens`` from one model (no interval; see :func:`answer_with_interval`)."""
    if not (math.isfinite(tokens) and tokens > 0):
        raise ValueError(f"the CPT budget must be a positive number of tokens, got {tokens}")
    reasons: list[str] = []
    law_value = None if model.law is None else float(model.law.predict(tokens))
    if model.law_determined and law_value is not None and math.isfinite(law_value):
        if -RANGE_SLACK <= law_value <= 1 + RANGE_SLACK:
            below = model.law_t_min is not None and tokens < model.law_t_min * (1 - 1e-9)
            extrapolated = tokens > model.t_max * (1 + 1e-9) or below
            ratio = _within_tolerance(law_value, model.tolerance, reasons)
            return CmrAnswer(float(tokens), ratio, "law", extrapolated, law_value, None, None, tuple(reasons))
        reasons.append(f"the CMR law gives {law_value:.3g} at {tokens:,.0f} tokens, outside [0, 1]: not used there")
    reasons.extend(model.law_problems)
    at_budget = math.isclose(tokens, model.t_max, rel_tol=1e-9)
    if model.measured_cmr is None:
        reasons.append("no pilot ratio is feasible at the pilots' budget")
        return CmrAnswer(float(tokens), None, "measured", not at_budget, law_value, None, None, tuple(reasons))
    reasons.append(f"the CMR measured at the pilots' budget of {model.t_max:,.0f} tokens is the answer")
    if not at_budget:
        reasons.append(f"it was measured at {model.t_max:,.0f} tokens, not at {tokens:,.0f}")
    ratio = _within_tolerance(model.measured_cmr, model.tolerance, reasons)
    return CmrAnswer(float(tokens), ratio, "measured", not at_budget, law_value, None, None, tuple(reasons))


def _within_tolerance(ratio: float, tolerance: tuple[float, float] | None, reasons: list[str]) -> float | None:
    if tolerance is None:
        reasons.append("no ratio keeps the general loss within tolerance at the pilots' budget")
        return None
    lo, hi = tolerance
    clipped = min(max(ratio, lo, 0.0), hi, 1.0)
    if abs(clipped - ratio) > 1e-12:
        reasons.append(
            f"{ratio:.3f} lies outside the tolerable ratios {lo:.3f}–{hi:.3f} at the pilots' budget; "
            f"moved to {clipped:.3f}"
        )
    return clipped


def answer_with_interval(
    model: CmrAnswerModel, draws: Sequence[CmrAnswerModel], tokens: float, level: float
) -> CmrAnswer:
    """The answer at ``tokens`` with the percentile interval of the same answer over the bootstrap replicates."""
    point = answer_cmr(model, tokens)
    if not draws:
        return point
    answers = [answer_cmr(d, tokens) for d in draws]
    ratios = np.array([np.nan if a.ratio is None else a.ratio for a in answers])
    interval = percentile_interval(ratios, level) if np.isfinite(ratios).any() else None
    return replace(
        point,
        interval=interval,
        law_share=sum(a.basis == "law" for a in answers) / len(answers),
        level=level,
        no_answer_share=float(np.isnan(ratios).mean()),
    )
