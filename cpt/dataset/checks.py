"""The blocking checks of a dataset build, as pure functions over what was written (read back, not the plan).

Each returns a :class:`CheckOutcome`: passed, the problems in words, and the numbers. Tolerances are config
(:class:`Tolerances`) and recorded with the build.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cpt.dataset.plan import DOMAIN, MixtureBudget, landscape_of, statistic


@dataclass(frozen=True)
class Tolerances:
    budget_rel: float = 0.02  # |tokens − T_target| / T_target (a build overshoots by less than one chunk per role)
    ratio_abs: float = 0.01  # |achieved R − R|
    landscape_rel: float = 0.05  # |μ − μ̂| / μ̂ and |σ − σ̂| / σ̂ of the domain rows, in the fit's terms

    def __post_init__(self) -> None:
        if min(self.budget_rel, self.ratio_abs, self.landscape_rel) < 0:
            raise ValueError("tolerances must be ≥ 0")


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    problems: tuple[str, ...] = ()
    values: Mapping[str, object] = field(default_factory=dict)


def budget_and_ratio(
    n_tokens: Sequence[int], roles: Sequence[str], budget: MixtureBudget, tol: Tolerances
) -> CheckOutcome:
    tokens = np.asarray(n_tokens, dtype=np.int64)
    domain = int(tokens[np.asarray(roles) == DOMAIN].sum()) if tokens.size else 0
    total = int(tokens.sum())
    ratio = domain / total if total else math.nan
    problems = []
    budget_error = abs(total - budget.target_tokens) / budget.target_tokens
    if not budget_error <= tol.budget_rel:
        problems.append(
            f"{total:,} tokens for a budget of {budget.target_tokens:,} ({budget_error:.2%} off, tolerance "
            f"{tol.budget_rel:.2%})"
        )
    if not abs(ratio - budget.ratio) <= tol.ratio_abs:
        problems.append(f"domain share {ratio:.4f} for a ratio of {budget.ratio:.4f} (tolerance {tol.ratio_abs:g})")
    values = {"tokens": total, "domain_tokens": domain, "achieved_ratio": ratio, "target_ratio": budget.ratio}
    return CheckOutcome(
        "budget_and_ratio_met", not problems, tuple(problems), values | {"budget": budget.target_tokens}
    )


def no_eval_leakage(
    chunk_ids: Sequence[str],
    doc_ids: Sequence[str],
    group_of_doc: Mapping[str, str],
    eval_chunk_ids: set[str],
    eval_doc_ids: set[str],
    eval_groups: set[str],
) -> CheckOutcome:
    """No row is an eval chunk, a chunk of an eval document, or of a document that shares a group with one."""
    by_chunk = sorted(set(chunk_ids) & eval_chunk_ids)
    by_doc = sorted(set(doc_ids) & eval_doc_ids)
    unknown = sorted({d for d in doc_ids if d not in group_of_doc})
    by_group = sorted({group_of_doc[d] for d in doc_ids if d in group_of_doc} & eval_groups)
    problems = []
    for what, found in (
        ("eval chunks", by_chunk),
        ("eval documents", by_doc),
        ("groups with eval documents", by_group),
    ):
        if found:
            problems.append(f"{len(found)} {what} in the dataset (e.g. {found[:3]})")
    if unknown:
        problems.append(f"{len(unknown)} documents of the dataset are not in corpus/documents (e.g. {unknown[:3]})")
    values = {"eval_chunks": len(by_chunk), "eval_documents": len(by_doc), "eval_groups": len(by_group)}
    return CheckOutcome("no_eval_leakage", not problems, tuple(problems), values | {"unknown_documents": len(unknown)})


def no_duplicate_chunk(chunk_ids: Sequence[str]) -> CheckOutcome:
    ids, counts = np.unique(np.asarray(chunk_ids, dtype=object), return_counts=True)
    twice = ids[counts > 1].tolist()
    problems = (f"{len(twice)} chunks appear more than once (e.g. {twice[:3]})",) if twice else ()
    return CheckOutcome("no_duplicate_chunk", not twice, problems, {"chunks": len(chunk_ids), "duplicated": len(twice)})


def landscape_reached(
    domain_ppl: Sequence[float],
    target_mu: float,
    target_sigma: float,
    *,
    ppl_space: str,
    sigma_kind: str,
    tol: Tolerances,
) -> CheckOutcome:
    """The domain rows' (μ, σ) — in the fit's terms — lie within ``landscape_rel`` of the target. No domain rows
    (R = 0) pass: there is no landscape to reach."""
    if len(domain_ppl) == 0:
        return CheckOutcome("landscape_reached", True, (), {"domain_chunks": 0})
    mu, sigma = landscape_of(statistic(np.asarray(domain_ppl), ppl_space), sigma_kind)
    gaps = {"mu": (mu - target_mu) / target_mu, "sigma": (sigma - target_sigma) / target_sigma}
    problems = tuple(
        f"{name} {value:.4g} is {gaps[name]:+.2%} off the target {target:.4g} (tolerance {tol.landscape_rel:.0%})"
        for name, value, target in (("mu", mu, target_mu), ("sigma", sigma, target_sigma))
        if not abs(gaps[name]) <= tol.landscape_rel
    )
    values = {
        "mu": mu,
        "sigma": sigma,
        "target_mu": target_mu,
        "target_sigma": target_sigma,
        "mu_rel_gap": gaps["mu"],
        "sigma_rel_gap": gaps["sigma"],
        "domain_chunks": len(domain_ppl),
    }
    return CheckOutcome("landscape_reached", not problems, problems, values)
