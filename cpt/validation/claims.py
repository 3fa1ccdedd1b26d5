"""The papers' claims, re-checked on the build's own data: a verdict per claim from paired confirmation runs.

Each claim is judged on an interval, never on a point:

- **DOS beats the baselines** (paper A): CPT on the DOS subset against a random subset and against the lowest-PPL
  subset of equal tokens, one run of each per seed. The paired differences (baseline − DOS held-out domain loss)
  get a Student-t interval; above zero: confirmed, below: not confirmed, straddling zero: inconclusive.
- **the CMR keeps the general loss within tolerance** (paper B): CPT at the answered CMR, several seeds; the rise of
  the general loss (final − before CPT) gets an interval; all of it within ε: confirmed, all beyond: not confirmed.
- **the CMR is critical**: the same at CMR + 0.15 must exceed ε (else the answer left domain data on the table).
- **the law predicts the DOS subset's loss**: the observed loss minus the law's prediction, as an interval over
  seeds, against ± the law's own held-out error: inside: confirmed, outside: not confirmed, across: inconclusive.

With one seed no interval exists and every claim is inconclusive; the verdict never fails a build.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Verdict = Literal["confirmed", "not confirmed", "inconclusive"]
CONFIRMED, NOT_CONFIRMED, INCONCLUSIVE = "confirmed", "not confirmed", "inconclusive"


@dataclass(frozen=True)
class Interval:
    estimate: float  # the mean
    low: float
    high: float
    n: int
    level: float

    def to_json(self) -> dict[str, object]:
        return {"estimate": _num(self.estimate), "low": _num(self.low), "high": _num(self.high), "n": self.n}

    def text(self, digits: int = 4) -> str:
        if not math.isfinite(self.low):
            return f"{self.estimate:+.{digits}f} (n = {self.n}: no interval)"
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def mean_interval(values: Sequence[float], level: float = 0.9) -> Interval:
    """Student-t interval of the mean (the paired differences of a claim); none with fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"an interval needs finite values, got {list(values)}")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, -math.inf, math.inf, int(x.size), level)
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size), level)


@dataclass(frozen=True)
class ClaimResult:
    claim: str  # a short id: dos_beats_random, dos_beats_lowest_ppl, cmr_within_tolerance, ...
    statement: str  # the claim in words
    verdict: Verdict
    interval: Interval  # of the quantity the verdict is taken on
    threshold: tuple[float, float]  # the verdict's bounds: confirmed when the interval lies within them
    basis: str  # what was measured, in words with numbers

    def to_json(self) -> dict[str, object]:
        return {
            "claim": self.claim,
            "statement": self.statement,
            "verdict": self.verdict,
            "interval": self.interval.to_json(),
            "threshold": [_num(t) for t in self.threshold],
            "basis": self.basis,
        }

    def summary(self) -> str:
        return f"{self.claim}: {self.verdict.upper()} — {self.statement}; {self.basis}"


def _within(interval: Interval, low: float, high: float) -> Verdict:
    """Confirmed when the interval lies within [low, high], not confirmed when wholly outside, else inconclusive."""
    if not math.isfinite(interval.low):
        return INCONCLUSIVE
    if interval.low >= low and interval.high <= high:
        return CONFIRMED
    if interval.high < low or interval.low > high:
        return NOT_CONFIRMED
    return INCONCLUSIVE


def _better(interval: Interval) -> Verdict:
    """Confirmed when the whole interval of (baseline − DOS) is above zero, not confirmed when below."""
    if not math.isfinite(interval.low):
        return INCONCLUSIVE
    return CONFIRMED if interval.low > 0 else NOT_CONFIRMED if interval.high < 0 else INCONCLUSIVE


def dos_beats(
    baseline: str, dos_losses: Sequence[float], baseline_losses: Sequence[float], level: float
) -> ClaimResult:
    """DOS against a baseline subset of equal tokens: paired by seed, on held-out domain loss."""
    if len(dos_losses) != len(baseline_losses):
        raise ValueError("the DOS and baseline runs must pair up by seed")
    diffs = np.asarray(baseline_losses, dtype=np.float64) - np.asarray(dos_losses, dtype=np.float64)
    interval = mean_interval(diffs, level)
    return ClaimResult(
        f"dos_beats_{baseline.replace('-', '_')}",
        f"CPT on the DOS subset reaches a lower held-out domain loss than on the {baseline} subset of equal tokens",
        _better(interval),
        interval,
        (0.0, math.inf),
        f"{baseline} − DOS domain loss over {interval.n} paired seeds: {interval.text()} "
        f"({level:.0%} t-interval; DOS mean {np.mean(dos_losses):.4f}, {baseline} mean {np.mean(baseline_losses):.4f})",
    )


def cmr_rise(
    claim: str, ratio: float, rises: Sequence[float], eps: float, level: float, *, should_exceed: bool
) -> ClaimResult:
    """The general-loss rise at a ratio against the tolerance ε: within it (``should_exceed`` False: the CMR keeps
    the general loss) or beyond it (True: a ratio 0.15 above the CMR breaks it, so the CMR is critical)."""
    interval = mean_interval(rises, level)
    inside = _within(interval, -math.inf, eps)
    if should_exceed:
        verdict = {CONFIRMED: NOT_CONFIRMED, NOT_CONFIRMED: CONFIRMED}.get(inside, INCONCLUSIVE)
        statement = f"at R = {ratio:.3f} (CMR + 0.15) the general loss rises by more than ε = {eps:g}"
        bounds = (eps, math.inf)
    else:
        verdict = inside
        statement = f"at the CMR R = {ratio:.3f} the general loss rises by at most ε = {eps:g}"
        bounds = (-math.inf, eps)
    basis = (
        f"general-loss rise (final − before CPT) over {interval.n} seeds: {interval.text()} ({level:.0%} t-interval)"
    )
    return ClaimResult(claim, statement, verdict, interval, bounds, basis)


def law_predicts(observed: Sequence[float], predicted: float, band: float, level: float) -> ClaimResult:
    """The law's prediction for the DOS subset against the observed losses, within ± ``band`` (its held-out error)."""
    interval = mean_interval(np.asarray(observed, dtype=np.float64) - predicted, level)
    return ClaimResult(
        "law_predicts_dos_loss",
        f"the perplexity-aware law predicts the DOS subset's held-out domain loss within ±{band:.4f} (its held-out "
        "error)",
        _within(interval, -band, band) if math.isfinite(band) else INCONCLUSIVE,
        interval,
        (-band, band),
        f"observed − predicted ({predicted:.4f}) over {interval.n} seeds: {interval.text()} ({level:.0%} t-interval)",
    )


def unavailable(claim: str, statement: str, why: str) -> ClaimResult:
    """A claim the build cannot test (e.g. no ratio above a CMR of 1): inconclusive, with the reason."""
    nan = math.nan
    return ClaimResult(claim, statement, INCONCLUSIVE, Interval(nan, nan, nan, 0, nan), (nan, nan), why)
