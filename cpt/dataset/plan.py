"""What the dataset holds, as pure functions: the token budget of each role, the DOS target in the statistic's terms,
which chunks, and in which order.

- :class:`MixtureBudget`: ``R·T_target`` domain tokens and ``(1 − R)·T_target`` general tokens;
- :func:`check_pools`: one error naming every shortfall, before any work;
- :func:`dos_target` / :func:`landscape_of`: the landscape answer's (μ, σ) — in the fit's terms (raw or log PPL; σ as
  standard deviation or variance) — as DOS's target mean and variance, and back;
- :func:`tokens_prefix`: how many leading chunks of an ordered list hold a budget;
- :func:`interleave` / :func:`mixture_rows`: the rows of ``DATASET_SCHEMA``, domain and general chunks interleaved by
  the trainer's rule (:func:`cpt.training.trainer.mixed_stream`), each chunk once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cpt.selection.dos import DosTarget

DOMAIN, GENERAL = "domain", "general"


class DatasetPlanError(ValueError):
    """The dataset cannot be built from these inputs; the message names the numbers and what to change."""


@dataclass(frozen=True)
class MixtureBudget:
    target_tokens: int  # T_target: all tokens of the dataset
    ratio: float  # R: the domain share

    def __post_init__(self) -> None:
        if self.target_tokens <= 0:
            raise DatasetPlanError(f"the dataset's token budget must be positive, got {self.target_tokens}")
        if not (math.isfinite(self.ratio) and 0 <= self.ratio <= 1):
            raise DatasetPlanError(f"the mixture ratio must lie in [0, 1], got {self.ratio}")

    @property
    def domain_tokens(self) -> int:
        return round(self.ratio * self.target_tokens)

    @property
    def general_tokens(self) -> int:
        return self.target_tokens - self.domain_tokens


def check_pools(budget: MixtureBudget, selection_tokens: int, general_pool_tokens: int) -> None:
    """Both roles can supply their share of the budget, or one error naming every shortfall."""
    problems = []
    if budget.domain_tokens > selection_tokens:
        problems.append(
            f"R·T_target = {budget.ratio:.3f} × {budget.target_tokens:,} = {budget.domain_tokens:,} domain tokens are "
            f"needed, but the DOS selection holds {selection_tokens:,}: raise dataset/domain_selection's "
            f"budget_tokens to at least {budget.domain_tokens:,} (a new selection means rerunning the mixture pilots "
            "and laws/cmr) or lower target_tokens"
        )
    if budget.general_tokens > general_pool_tokens:
        problems.append(
            f"(1 − R)·T_target = {budget.general_tokens:,} general tokens are needed, but the general train pool "
            f"(eval documents and their groups left out) holds {general_pool_tokens:,}: lower target_tokens or add "
            "general data"
        )
    if problems:
        raise DatasetPlanError("; ".join(problems))


def statistic(ppl: np.ndarray, ppl_space: str) -> np.ndarray:
    """The per-chunk value μ and σ are moments of: the PPL itself (raw) or its log."""
    ppl = np.asarray(ppl, dtype=np.float64)
    if ppl_space == "raw":
        return ppl
    if ppl_space == "log":
        return np.log(ppl)
    raise DatasetPlanError(f"ppl_space must be raw or log, got {ppl_space!r}")


def dos_target(mu: float, sigma: float, sigma_kind: str) -> DosTarget:
    """The landscape answer (in the fit's terms) as DOS's target mean and variance of the statistic."""
    if sigma_kind not in ("std", "var"):
        raise DatasetPlanError(f"sigma_kind must be std or var, got {sigma_kind!r}")
    return DosTarget(mean=float(mu), var=float(sigma) ** 2 if sigma_kind == "std" else float(sigma))


def landscape_of(values: np.ndarray, sigma_kind: str) -> tuple[float, float]:
    """(μ, σ) of a set of statistic values, in the fit's terms (population moments, each chunk once)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    var = float(values.var())
    return float(values.mean()), math.sqrt(var) if sigma_kind == "std" else var


def tokens_prefix(n_tokens: Sequence[int], budget: int) -> int:
    """The number of leading chunks whose tokens first reach ``budget`` (0 for a budget of 0)."""
    if budget <= 0:
        return 0
    reached = np.flatnonzero(np.cumsum(np.asarray(n_tokens, dtype=np.int64)) >= budget)
    if reached.size == 0:
        raise DatasetPlanError(f"the chunks hold {int(np.sum(n_tokens)):,} tokens, fewer than {budget:,}")
    return int(reached[0]) + 1


def interleave(domain_tokens: Sequence[int], general_tokens: Sequence[int], ratio: float) -> list[tuple[str, int]]:
    """The reading order as (role, index in that role's list): the next chunk is a domain chunk while domain tokens so
    far are at most ``ratio`` of all tokens so far (the trainer's rule), each chunk once; when one role runs out, the
    rest of the other follows."""
    order: list[tuple[str, int]] = []
    d = g = dom = total = 0
    while d < len(domain_tokens) or g < len(general_tokens):
        take_domain = d < len(domain_tokens) and (g >= len(general_tokens) or ratio == 1 or dom <= ratio * total)
        if take_domain:
            order.append((DOMAIN, d))
            dom += int(domain_tokens[d])
            total += int(domain_tokens[d])
            d += 1
        else:
            order.append((GENERAL, g))
            total += int(general_tokens[g])
            g += 1
    return order


def mixture_rows(
    domain: Sequence[Mapping[str, object]],
    general: Sequence[Mapping[str, object]],
    ratio: float,
    versions: Mapping[str, object],
    *,
    domain_reason: str,
    general_reason: str,
) -> list[dict[str, object]]:
    """The rows of ``DATASET_SCHEMA``. ``domain``: selection rows in step order (``step``, ids, ``n_tokens``, ``ppl``);
    ``general``: the replay draw in draw order. ``versions``: the version columns every row carries. The reasons are
    formats given ``step`` (domain) or ``draw`` (general)."""
    order = interleave([r["n_tokens"] for r in domain], [r["n_tokens"] for r in general], ratio)
    rows = []
    for position, (role, i) in enumerate(order):
        source = domain[i] if role == DOMAIN else general[i]
        is_domain = role == DOMAIN
        rows.append(
            {
                "position": position,
                "chunk_id": source["chunk_id"],
                "doc_id": source["doc_id"],
                "source": source["source"],
                "role": role,
                "n_tokens": int(source["n_tokens"]),
                "ppl": float(source["ppl"]),
                "reason": domain_reason.format(step=source["step"]) if is_domain else general_reason.format(draw=i),
                "dos_step": int(source["step"]) if is_domain else None,
                "replay_draw": None if is_domain else i,
            }
            | dict(versions)
        )
    return rows
