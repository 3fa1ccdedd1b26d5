"""Follow-up pilots: whether the landscape answer needs pilot regimes at and around its optimum, and where.

The law is trusted near the pilots, so an optimum on the edge of the search region (the pilots' hull or what the
pool can reach) or with a wide bootstrap interval is a guess about landscapes nobody trained on. A follow-up round
trains pilots on subsets built by distance-to-optimum selection (DOS) toward the optimum and toward points either
side of it along its least certain axis (5–25 % of its value away), and the law is refitted with them. Rounds stop when

- the landscape has no measurable effect (basis ``size law``): pilots around an optimum cannot change that;
- the optimum is inside the region and its interval narrow: nothing left to settle;
- the last round's pilots already sit at the optimum: another round at the same place would not move it;
- the configured number of rounds is reached (the answer says what was still unsettled).

A follow-up regime is named ``f<round>-<label>``, so the rounds already in a fit are read off its regime names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cpt.laws.ppl.optimum import PplOptimum

FOLLOWUP_NAME = re.compile(r"^f(\d+)-[a-z0-9+-]+$")
LABELS = ("opt", "lo", "hi")  # at the optimum; below and above it along the less certain axis


def followup_name(round_: int, label: str) -> str:
    return f"f{round_}-{label}"


def followup_round(regime: str) -> int | None:
    """The round of a follow-up regime's name (None: a regime of the landscape's grid)."""
    match = FOLLOWUP_NAME.match(regime)
    return int(match.group(1)) if match else None


def rounds_done(regimes: Sequence[str]) -> int:
    """The highest follow-up round among the regimes a fit used (0: none)."""
    return max((r for r in map(followup_round, regimes) if r is not None), default=0)


@dataclass(frozen=True)
class FollowupRules:
    max_rounds: int = 2
    max_relative_width: float = 0.25  # the optimum's μ or σ interval wider than this share of its value: "wide"
    min_step: float = 0.05  # the points around the optimum lie at least this share of its value away …
    max_step: float = 0.25  # … and at most this share (a huge interval must not send DOS to degenerate subsets)
    same_place: float = 0.02  # a pilot within this share of the optimum in both μ and σ sits "at" it

    def __post_init__(self) -> None:
        if self.max_rounds < 0 or not (self.max_relative_width > 0 and 0 < self.min_step <= self.max_step < 1):
            raise ValueError("max_rounds ≥ 0, a positive width and 0 < min_step ≤ max_step < 1 are required")
        if self.same_place <= 0:
            raise ValueError("same_place must be positive")


@dataclass(frozen=True)
class FollowupTarget:
    label: str
    mu: float  # in the fit's terms (raw or log PPL; σ as std or var)
    sigma: float

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "mu": self.mu, "sigma": self.sigma}


@dataclass(frozen=True)
class FollowupDecision:
    rounds_done: int
    needed: bool  # another round should run
    reason: str  # why it should, or why the rounds stopped
    targets: tuple[FollowupTarget, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "rounds_done": self.rounds_done,
            "needed": self.needed,
            "reason": self.reason,
            "targets": [t.to_json() for t in self.targets],
        }

    def summary(self) -> str:
        rounds = f"{self.rounds_done} follow-up round{'' if self.rounds_done == 1 else 's'}"
        return f"{rounds}; {'next round needed' if self.needed else 'stopped'}: {self.reason}"


def _relative_width(interval: tuple[float, float] | None, value: float) -> float:
    if interval is None or not all(map(math.isfinite, interval)) or value == 0:
        return math.nan
    return (interval[1] - interval[0]) / abs(value)


def _unsettled(optimum: PplOptimum, rules: FollowupRules) -> list[str]:
    """What about the optimum more pilots could settle (empty: nothing)."""
    why = []
    if optimum.on_boundary:
        why.append(f"the optimum lies on the search region's boundary ({', '.join(optimum.boundary_sides)})")
    widths = {
        "μ": _relative_width(optimum.mu_ci, optimum.mu),
        "σ": _relative_width(optimum.sigma_ci, optimum.sigma),
    }
    wide = [f"{k} ±{w / 2:.0%}" for k, w in widths.items() if w > rules.max_relative_width]
    if wide:
        why.append(f"its interval is wide ({', '.join(wide)}; limit ±{rules.max_relative_width / 2:.0%})")
    return why


def _targets(optimum: PplOptimum, rules: FollowupRules) -> tuple[FollowupTarget, ...]:
    """The optimum and one point either side of it along the axis whose interval is wider relative to its value."""
    mu_w = _relative_width(optimum.mu_ci, optimum.mu)
    sigma_w = _relative_width(optimum.sigma_ci, optimum.sigma)
    along_mu = (mu_w if math.isfinite(mu_w) else -1.0) >= (sigma_w if math.isfinite(sigma_w) else -1.0)
    value, interval = (optimum.mu, optimum.mu_ci) if along_mu else (optimum.sigma, optimum.sigma_ci)
    half = (interval[1] - interval[0]) / 2 if interval is not None and all(map(math.isfinite, interval)) else 0.0
    step = min(max(half, rules.min_step * abs(value)), rules.max_step * abs(value))
    out = [FollowupTarget("opt", optimum.mu, optimum.sigma)]
    for label, sign in (("lo", -1.0), ("hi", 1.0)):
        moved = max(value + sign * step, 1e-9 * abs(value) or 1e-9)
        mu, sigma = (moved, optimum.sigma) if along_mu else (optimum.mu, moved)
        out.append(FollowupTarget(label, mu, sigma))
    return tuple(out)


def _at_optimum(points: Sequence[tuple[str, float, float]], optimum: PplOptimum, share: float) -> str | None:
    """The follow-up pilot (regime, μ, σ) that sits at the optimum already, if any."""
    for regime, mu, sigma in points:
        if followup_round(regime) is None:
            continue
        if abs(mu - optimum.mu) <= share * abs(optimum.mu) and abs(sigma - optimum.sigma) <= share * abs(optimum.sigma):
            return f"{regime} (μ {mu:.4g}, σ {sigma:.4g})"
    return None


def decide_followup(
    optimum: PplOptimum, basis: str, points: Sequence[tuple[str, float, float]], rules: FollowupRules
) -> FollowupDecision:
    """Whether another round of follow-up pilots should run. ``points``: (regime, μ, σ) of every pilot the fit used,
    in the fit's terms."""
    done = rounds_done([p[0] for p in points])
    if basis == "size law":
        reason = "the landscape has no measurable effect (basis size law): pilots around an optimum cannot change that"
        return FollowupDecision(done, False, reason)
    unsettled = _unsettled(optimum, rules)
    if not unsettled:
        return FollowupDecision(done, False, "the optimum is inside the search region and its interval is narrow")
    still = "; ".join(unsettled)
    there = _at_optimum(points, optimum, rules.same_place)
    if there is not None:
        return FollowupDecision(done, False, f"a follow-up pilot already sits at the optimum ({there}); still: {still}")
    if done >= rules.max_rounds:
        return FollowupDecision(done, False, f"the round limit ({rules.max_rounds}) is reached; still: {still}")
    return FollowupDecision(done, True, still, _targets(optimum, rules))
