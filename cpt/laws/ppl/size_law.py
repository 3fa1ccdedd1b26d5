"""The null baseline of the perplexity-aware law: the size-only data law ``L = E + B / D^α``.

If the landscape of a subset matters, the perplexity-aware law must predict held-out regimes better than this law,
which knows only how many tokens a pilot trained on. Fitted by the same core on the same runs, with the same
leave-one-regime-out (docs/science.md §6). With two pilot sizes ``E`` is not identified, but predictions at those
sizes are: for a held-out regime the size law predicts the other regimes' loss at its size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cpt.laws.errors import DegenerateData
from cpt.laws.ppl.law import PplLawOptions, PplObservations, fit_quality, heldout_summary
from cpt.laws.ppl.loglinear import fit_loglinear


@dataclass(frozen=True)
class SizeLawFit:
    E: float
    B: float
    alpha: float
    r2: float
    rmse: float
    predicted: np.ndarray
    heldout_predicted: np.ndarray  # by the fit without that row's regime
    heldout_rmse: float | None
    heldout_errors: dict[str, float]
    converged: bool
    warnings: tuple[str, ...]

    def predict(self, D: np.ndarray | float) -> np.ndarray:
        return self.E + self.B * np.asarray(D, dtype=np.float64) ** -self.alpha

    def to_json(self) -> dict[str, object]:
        return {
            "params": {"E": self.E, "B": self.B, "alpha": self.alpha},
            "r2": self.r2,
            "rmse": self.rmse,
            "heldout_rmse": self.heldout_rmse,
            "converged": self.converged,
            "warnings": list(self.warnings),
        }


def fit_size_law(obs: PplObservations, options: PplLawOptions) -> SizeLawFit:
    """Fit ``L = E + B/D^α`` on the same runs with leave-one-regime-out held-out predictions (no bootstrap)."""
    if np.unique(obs.D).size < 2:
        raise DegenerateData("every pilot run has the same D", "the size law needs at least two pilot sizes")
    if len(set(obs.group_ids)) < 2:
        raise DegenerateData("all rows belong to one regime", "the held-out comparison needs several regimes")
    X = np.column_stack([np.ones(len(obs)), -np.log(obs.D)])
    names, groups = obs.group_index()
    core = fit_loglinear(X, obs.loss, groups, replace(options.settings, n_bootstrap=0), None, "size-only law")
    r2, rmse = fit_quality(obs.loss, core.predicted)
    heldout_rmse, per_group = heldout_summary(obs.loss, core.heldout_predicted, groups, names)
    return SizeLawFit(
        E=core.E,
        B=float(np.exp(core.coef[0])),
        alpha=float(core.coef[1]),
        r2=r2,
        rmse=rmse,
        predicted=core.predicted,
        heldout_predicted=core.heldout_predicted,
        heldout_rmse=heldout_rmse,
        heldout_errors=per_group,
        converged=core.converged,
        warnings=core.warnings,
    )
