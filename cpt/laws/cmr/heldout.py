"""How well the trajectory forms extrapolate: fitted on each run's early checkpoints, scored on its later ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cpt.laws._common import captured_warnings, json_number, single_threaded_blas
from cpt.laws.cmr.fits import fit_dom_trajectory, fit_gen_trajectory
from cpt.laws.errors import TooFewPoints


@dataclass(frozen=True)
class HeldOutError:
    holdout_fraction: float
    per_ratio: dict[float, tuple[float, float]]  # R → (domain RMSE, general RMSE) on the held-out checkpoints
    rmse: float  # over every held-out checkpoint of every ratio, both losses

    def to_json(self) -> dict[str, object]:
        return {
            "holdout_fraction": self.holdout_fraction,
            "per_ratio": {str(r): [json_number(d), json_number(g)] for r, (d, g) in self.per_ratio.items()},
            "rmse": json_number(self.rmse),
        }


def trajectory_heldout_error(
    trajectories: Mapping[float, tuple[np.ndarray, np.ndarray, np.ndarray]],
    L_dom0: float,
    L_gen0: float,
    holdout_fraction: float = 0.25,
) -> HeldOutError:
    """Refit each ratio's trajectories on the checkpoints with ``T ≤ (1 − holdout_fraction)·T_last`` and measure the
    error of their predictions at the later checkpoints: the extrapolation the CMR analysis relies on."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must lie in (0, 1), got {holdout_fraction}")
    per_ratio, squares = {}, []
    with single_threaded_blas(), captured_warnings():
        for r, (T, dom, gen) in sorted(trajectories.items()):
            T, dom, gen = (np.asarray(a, dtype=np.float64) for a in (T, dom, gen))
            early = (1 - holdout_fraction) * T.max() >= T
            late = ~early
            if late.sum() == 0:
                raise TooFewPoints(f"held-out checkpoints at R={r}", 0, 1, "evaluate more often")
            try:
                dom_fit = fit_dom_trajectory(T[early], dom[early] - L_dom0)
                gen_fit = fit_gen_trajectory(T[early], gen[early] - L_gen0)
            except TooFewPoints as exc:
                raise TooFewPoints(
                    f"held-out check at R={r}: the refit on the checkpoints up to {1 - holdout_fraction:.0%} of T_max",
                    exc.got,
                    exc.need,
                    "evaluate the mixture pilots more often (evals) or hold out a smaller share (holdout_fraction)",
                ) from exc
            err_dom = dom_fit.value(T[late]) - (dom[late] - L_dom0)
            err_gen = gen_fit.value(T[late]) - (gen[late] - L_gen0)
            per_ratio[float(r)] = (float(np.sqrt(np.mean(err_dom**2))), float(np.sqrt(np.mean(err_gen**2))))
            squares.extend((err_dom**2).tolist() + (err_gen**2).tolist())
    return HeldOutError(holdout_fraction, per_ratio, float(np.sqrt(np.mean(squares))))
