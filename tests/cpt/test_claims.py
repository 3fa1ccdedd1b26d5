"""The confirmation verdicts: each claim can come out confirmed, not confirmed or inconclusive, on its interval."""

import math

import pytest

from cpt.validation.claims import (
    CONFIRMED,
    INCONCLUSIVE,
    NOT_CONFIRMED,
    cmr_rise,
    dos_beats,
    law_predicts,
    mean_interval,
)


def test_mean_interval_matches_the_t_formula():
    # mean 2, sd 1, n 3: half-width t(0.95, 2) · 1/√3 = 2.919986 / 1.732051
    interval = mean_interval([1.0, 2.0, 3.0], level=0.9)
    assert interval.estimate == pytest.approx(2.0)
    assert interval.high - 2.0 == pytest.approx(2.919986 / math.sqrt(3), rel=1e-5)
    assert interval.low == pytest.approx(4.0 - interval.high)


def test_one_seed_gives_no_interval_and_no_verdict():
    assert not math.isfinite(mean_interval([0.3]).low)
    assert dos_beats("random", [3.0], [3.5], 0.9).verdict == INCONCLUSIVE


@pytest.mark.parametrize(
    ("baseline", "verdict"),
    [
        ([3.10, 3.11, 3.12], CONFIRMED),  # the baseline is worse on every seed, by a steady margin
        ([2.90, 2.91, 2.89], NOT_CONFIRMED),  # DOS is worse
        ([3.10, 2.90, 3.02], INCONCLUSIVE),  # the paired differences straddle zero
        ([3.00, 3.01, 3.02], INCONCLUSIVE),  # tied on one seed: the interval reaches zero
    ],
)
def test_dos_beats_a_baseline_on_the_paired_interval(baseline, verdict):
    result = dos_beats("random", [3.0, 3.01, 3.02], baseline, 0.9)
    assert result.verdict == verdict
    assert result.claim == "dos_beats_random"
    assert "3 paired seeds" in result.basis


def test_dos_beats_needs_pairs():
    with pytest.raises(ValueError, match="pair up"):
        dos_beats("random", [3.0, 3.1], [3.0], 0.9)


@pytest.mark.parametrize(
    ("rises", "exceed", "verdict"),
    [
        ([0.010, 0.012, 0.011], False, CONFIRMED),  # well within ε = 0.05
        ([0.080, 0.082, 0.081], False, NOT_CONFIRMED),  # beyond it on every seed
        ([0.030, 0.070, 0.050], False, INCONCLUSIVE),
        ([0.080, 0.082, 0.081], True, CONFIRMED),  # 0.15 above the CMR breaks the tolerance: the CMR is critical
        ([0.010, 0.012, 0.011], True, NOT_CONFIRMED),  # it does not: the CMR left domain data on the table
    ],
)
def test_cmr_rise_against_the_tolerance(rises, exceed, verdict):
    assert cmr_rise("c", 0.4, rises, 0.05, 0.9, should_exceed=exceed).verdict == verdict


def test_law_prediction_within_its_heldout_error():
    observed = [3.00, 3.01, 3.02]
    assert law_predicts(observed, 3.005, band=0.05, level=0.9).verdict == CONFIRMED
    assert law_predicts(observed, 3.20, band=0.05, level=0.9).verdict == NOT_CONFIRMED
    assert law_predicts(observed, 3.06, band=0.05, level=0.9).verdict == INCONCLUSIVE
