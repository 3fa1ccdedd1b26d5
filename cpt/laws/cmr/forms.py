"""The curve forms of Paper B; ``T`` is always in tokens (the CMR law also carries the paper's token unit)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

PAPER_TOKEN_UNIT = 200_000_000  # the paper's T unit: 0.2B tokens (T = 100 ≡ 20B tokens)


@dataclass(frozen=True)
class PowerLaw:
    """``L(R) = α·R^s + β`` (loss against mixture ratio at ``T_max``)."""

    alpha: float
    s: float
    beta: float

    def __call__(self, R: np.ndarray | float) -> np.ndarray:
        R = np.asarray(R, dtype=np.float64)
        return self.alpha * np.where(R > 0, np.abs(R) ** self.s, 0.0) + self.beta


@dataclass(frozen=True)
class DomTrajectory:
    """``ΔL_dom(T) = α1·T^s1 + β1``, ``T`` in tokens."""

    alpha1: float
    s1: float
    beta1: float

    def value(self, T: np.ndarray | float) -> np.ndarray:
        return self.alpha1 * np.asarray(T, dtype=np.float64) ** self.s1 + self.beta1

    def derivative(self, T: np.ndarray | float) -> np.ndarray:
        return self.alpha1 * self.s1 * np.asarray(T, dtype=np.float64) ** (self.s1 - 1.0)


@dataclass(frozen=True)
class GenTrajectory:
    """``ΔL_gen(T) = α2·T^s2 + α3·T^s3 + β2`` (``s2 < s3``), ``T`` in tokens; lets general loss rise then fall."""

    alpha2: float
    s2: float
    alpha3: float
    s3: float
    beta2: float

    def value(self, T: np.ndarray | float) -> np.ndarray:
        T = np.asarray(T, dtype=np.float64)
        return self.alpha2 * T**self.s2 + self.alpha3 * T**self.s3 + self.beta2

    def derivative(self, T: np.ndarray | float) -> np.ndarray:
        T = np.asarray(T, dtype=np.float64)
        return self.alpha2 * self.s2 * T ** (self.s2 - 1.0) + self.alpha3 * self.s3 * T ** (self.s3 - 1.0)


@dataclass(frozen=True)
class CmrLaw:
    """``R_CMR(T) = α4·(T / token_unit)^s4 + β3``; ``predict`` takes tokens."""

    alpha4: float
    s4: float
    beta3: float
    token_unit: float = 1.0

    def predict(self, T: np.ndarray | float) -> np.ndarray:
        return self.alpha4 * (np.asarray(T, dtype=np.float64) / self.token_unit) ** self.s4 + self.beta3


# Published (α4, s4, β3) per model size, T in the paper's 0.2B-token unit: R_CMR(20B tokens) = 29.8 %, 34.9 %,
# 41.4 %, 47.8 % (a regression test of the unit handling).
PAPER_CMR_LAWS: Mapping[str, CmrLaw] = MappingProxyType(
    {
        "460M": CmrLaw(0.22524761, 0.26944345, -0.48139982, PAPER_TOKEN_UNIT),
        "940M": CmrLaw(0.7520627, 0.13720245, -1.06581937, PAPER_TOKEN_UNIT),
        "1.6B": CmrLaw(-2.36384831, -0.15125569, 1.59223649, PAPER_TOKEN_UNIT),
        "3.1B": CmrLaw(-2.5368197, -0.42071423, 0.84375368, PAPER_TOKEN_UNIT),
    }
)
