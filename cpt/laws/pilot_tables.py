"""From the pilot tables (``cpt.training.schema.PILOT_POINTS_SCHEMA``) to the inputs of the law fits.

- which pilot runs may be fitted together (same base model, scores version and held-out set; one T_max);
- the evaluation loss of a checkpoint, aggregated over the held-out chunks as configured: the token mean (the
  scorer's loss; the papers' definition), a trimmed mean, or the per-chunk median — so a few outlier chunks (a
  table, box drawing) cannot decide an answer unnoticed;
- regime runs → ``PplObservations`` (one per finished run, grouped by regime); mixture runs → trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cpt.laws.errors import LawFitError
from cpt.laws.ppl.law import PplLawOptions, PplObservations

EvalAggregate = Literal["mean", "trimmed", "median"]


class PilotTableError(LawFitError):
    """The pilot table cannot feed a fit: empty, unfinished, not comparable, or missing what the options need."""


@dataclass(frozen=True)
class EvalLoss:
    """How a checkpoint's held-out chunks make one loss."""

    aggregate: EvalAggregate = "mean"  # token mean | trimmed (token mean of the middle chunks) | median (per chunk)
    trim: float = 0.1  # share of chunks cut at each end by "trimmed"

    def __post_init__(self) -> None:
        if self.aggregate not in ("mean", "trimmed", "median"):
            raise ValueError(f"eval aggregate must be mean, trimmed or median, got {self.aggregate!r}")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"trim must lie in [0, 0.5), got {self.trim}")

    def of(self, losses: np.ndarray, tokens: np.ndarray) -> float:
        """The aggregate of per-chunk losses (mean NLL per token) weighted by their token counts where it applies."""
        losses, tokens = np.asarray(losses, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
        if self.aggregate == "median":
            return float(np.median(losses))
        if self.aggregate == "trimmed":
            order = np.argsort(losses, kind="stable")
            cut = int(self.trim * len(losses))
            keep = order[cut : len(losses) - cut]
            losses, tokens = losses[keep], tokens[keep]
        return float(np.dot(losses, tokens) / tokens.sum())


def check_comparable(table: pa.Table, name: str) -> pa.Table:
    """The pilot rows, refused unless every run used the same base model, scores version and held-out set."""
    if table.num_rows == 0:
        raise PilotTableError(f"{name} is empty: backfill its partitions first")
    for column in ("model_revision", "scores_version", "eval_set"):
        values = set(table[column].to_pylist())
        if len(values) != 1:
            raise PilotTableError(
                f"{name} mixes pilot runs with different {column} ({sorted(map(str, values))}): they are not "
                "comparable; rerun the stale partitions (a backfill of all partitions) before fitting"
            )
    return table


def eval_losses(table: pa.Table, role: str, eval_loss: EvalLoss) -> np.ndarray:
    """One loss per row for ``role`` (domain | general), aggregated as ``eval_loss`` says. Rows written before
    per-chunk losses were recorded serve the token mean only."""
    recorded = table[f"{role}_loss"].to_numpy(zero_copy_only=False).astype(np.float64)
    chunks = table[f"{role}_chunk_losses"].to_pylist()
    tokens = table[f"{role}_chunk_tokens"].to_pylist()
    if any(c is None or not c for c in chunks):
        if eval_loss.aggregate == "mean":
            return recorded
        raise PilotTableError(
            f"{eval_loss.aggregate} {role} loss needs per-chunk losses, which some pilot rows lack: rerun the pilots"
        )
    return np.array([eval_loss.of(np.array(c), np.array(t)) for c, t in zip(chunks, tokens, strict=True)])


def regime_observations(table: pa.Table, name: str, options: PplLawOptions, eval_loss: EvalLoss) -> PplObservations:
    """One observation per finished regime run: (μ, σ) of what it trained on (in the options' terms), D the tokens
    it trained on, its domain loss; grouped by regime."""
    table = check_comparable(table, name)
    final = table.filter(table["is_final"])
    if final.num_rows == 0:
        raise PilotTableError(f"{name} holds no finished pilot run: backfill it first")
    log = options.ppl_space == "log"
    mu = final["log_mu" if log else "mu"].to_numpy(zero_copy_only=False).astype(np.float64)
    sigma = final["log_sigma" if log else "sigma"].to_numpy(zero_copy_only=False).astype(np.float64)
    return PplObservations(
        mu=mu,
        sigma=sigma**2 if options.sigma_kind == "var" else sigma,
        D=final["tokens"].to_numpy(zero_copy_only=False).astype(np.float64),
        loss=eval_losses(final, "domain", eval_loss),
        run_ids=tuple(final["partition"].to_pylist()),
        group_ids=tuple(final["regime"].to_pylist()),
        sizes=final["size_tokens"].to_numpy(zero_copy_only=False).astype(np.float64),
    )


@dataclass(frozen=True)
class MixtureData:
    trajectories: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]]  # R → (T incl. 0, L_dom, L_gen)
    L_dom0: float  # the losses before CPT (T = 0 of every run, the same base model), averaged
    L_gen0: float
    t_max: float


def mixture_trajectories(table: pa.Table, name: str, eval_loss: EvalLoss) -> MixtureData:
    """``{R: (T, L_dom, L_gen)}`` per mixture run, the losses before CPT and ``T_max``."""
    table = check_comparable(table, name)
    domain_data = set(table["regime"].to_pylist())
    if len(domain_data) != 1:
        raise PilotTableError(
            f"{name} mixes runs trained on different domain data ({sorted(map(str, domain_data))}): rerun all ratios"
        )
    budgets = set(table["size_tokens"].to_pylist())
    if len(budgets) != 1:
        raise PilotTableError(f"{name} mixes runs to different T_max {sorted(budgets)}: rerun all ratios")
    out = {}
    for key in sorted(set(table["partition"].to_pylist()), key=Fraction):
        rows = table.filter(pc.equal(table["partition"], key)).sort_by("tokens")
        out[float(Fraction(key))] = (
            rows["tokens"].to_numpy(zero_copy_only=False).astype(np.float64),
            eval_losses(rows, "domain", eval_loss),
            eval_losses(rows, "general", eval_loss),
        )
    start = table.filter(pc.equal(table["tokens"], 0))
    if start.num_rows == 0:
        raise PilotTableError(f"{name} has no T = 0 evaluation: the losses before CPT are unknown")
    return MixtureData(
        out,
        float(np.mean(eval_losses(start, "domain", eval_loss))),
        float(np.mean(eval_losses(start, "general", eval_loss))),
        float(budgets.pop()),
    )
