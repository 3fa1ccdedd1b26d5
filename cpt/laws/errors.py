"""Typed failures of the law fits: each says what was wrong with the input and what to do about it."""

from __future__ import annotations


class LawFitError(ValueError):
    """A scaling-law fit could not produce a trustworthy answer from the data it was given."""


class TooFewPoints(LawFitError):
    """Fewer observations than the law has parameters (plus a margin for validation)."""

    def __init__(self, what: str, got: int, need: int, hint: str = "add pilot runs") -> None:
        super().__init__(f"{what}: got {got} usable points, need at least {need}; {hint}.")
        self.got = got
        self.need = need


class DegenerateData(LawFitError):
    """Values that cannot be fitted: non-finite, out of range, constant where the law needs variation."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(f"{problem}; {hint}.")


class NoConvergence(LawFitError):
    """The optimizer failed from every start."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(
            f"{what}: the optimizer failed from every start ({detail}); check the data for outliers or a law that "
            "does not describe it, or raise the iteration limit."
        )


class NoFeasibleRatio(LawFitError):
    """No mixture ratio keeps the general loss within tolerance and reaches ∂F/∂T ≤ 0 within the budget."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"no feasible mixture ratio ({detail}); add pilot runs at lower ratios, relax the tolerance ε, "
            "lower λ, or raise the token budget T_max."
        )
