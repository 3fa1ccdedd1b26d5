"""The data contracts of ``landscape/histograms`` and ``landscape/regimes``, and conversions to and from them.

``landscape/histograms``: one row per (role, source, split, bin), every bin of the edges present (zeros included),
so a group's rows are its whole histogram. ``source = "*"`` rows are the role's landscape over all sources (their
bins and moments are the sums of the per-source rows; their quantiles are exact over the role's chunks), so sum
``chunk_count`` over ``source != '*'`` to count chunks. The group's moments, derived statistics and exact quantiles
are repeated on each of its rows (``WHERE bin = 0`` gives one row per group).

``landscape/regimes``: one row per candidate regime, with its definition, landscape statistics and chunk ids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import pyarrow as pa

from cpt.landscape.histogram import QUANTILE_LEVELS, BinEdges, Group, LandscapePartial
from cpt.landscape.regimes import Regime, SubsetStats


def quantile_column(level: float) -> str:
    """``0.05`` → ``q05``, ``0.5`` → ``q50``."""
    return f"q{round(level * 100):02d}"


QUANTILE_COLUMNS = tuple(quantile_column(q) for q in QUANTILE_LEVELS)

HISTOGRAMS_SCHEMA = pa.schema(
    [
        pa.field("role", pa.string()),
        pa.field("source", pa.string()),  # "*": all sources of the role
        pa.field("split", pa.string()),
        pa.field("edges_version", pa.string()),
        pa.field("bin", pa.int32()),  # 0 … n_bins - 1; the last is the overflow bin
        pa.field("ppl_lower", pa.float64()),
        pa.field("ppl_upper", pa.float64()),  # inf for the overflow bin
        pa.field("chunk_count", pa.int64()),
        pa.field("token_count", pa.int64()),
        # the group's exact moments (mergeable: sums), repeated on each of its rows
        pa.field("group_count", pa.int64()),
        pa.field("group_tokens", pa.int64()),
        pa.field("sum_ppl", pa.float64()),
        pa.field("sum_ppl_sq", pa.float64()),
        pa.field("sum_log_ppl", pa.float64()),  # natural log
        pa.field("sum_log_ppl_sq", pa.float64()),
        pa.field("min_ppl", pa.float64()),
        pa.field("max_ppl", pa.float64()),
        # derived, chunk weighted, population σ
        pa.field("mean_ppl", pa.float64()),
        pa.field("std_ppl", pa.float64()),
        pa.field("log_mean", pa.float64()),
        pa.field("log_std", pa.float64()),
        # exact quantiles of the group's PPL (linear interpolation); null when not computed
        *[pa.field(c, pa.float64()) for c in QUANTILE_COLUMNS],
        pa.field("scores_version", pa.int64()),
        pa.field("model_revision", pa.string()),
        pa.field("policy_hash", pa.string()),
    ]
)

REGIMES_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string()),
        pa.field("kind", pa.string()),  # window | random | low-ppl
        pa.field("definition", pa.string()),  # JSON of the regime's parameters (centre, width, ranks, fraction)
        pa.field("seed", pa.int64()),
        pa.field("count", pa.int64()),
        pa.field("tokens", pa.int64()),
        pa.field("mu", pa.float64()),
        pa.field("sigma", pa.float64()),
        pa.field("log_mu", pa.float64()),
        pa.field("log_sigma", pa.float64()),
        pa.field("ppl_min", pa.float64()),
        pa.field("ppl_max", pa.float64()),
        pa.field("min_tokens", pa.int64()),  # the guarantee every regime was built to: the largest pilot size
        pa.field("chunk_ids", pa.list_(pa.string())),  # sorted
        pa.field("scores_version", pa.int64()),
        pa.field("model_revision", pa.string()),
        pa.field("policy_hash", pa.string()),
    ]
)


def histogram_table(
    partials: Sequence[LandscapePartial],
    edges: BinEdges,
    *,
    scores_version: int,
    model_revision: str,
    policy_hash: str,
) -> pa.Table:
    """Rows of ``landscape/histograms`` for these partials, sorted by (role, source, split, bin)."""
    rows = []
    for p in sorted(partials, key=lambda p: p.group):
        if p.edges_version != edges.version or len(p.chunk_counts) != edges.n_bins:
            raise ValueError(f"{p.group} is on edges {p.edges_version}, the table on {edges.version}")
        q = p.quantile_map()
        group = {
            "role": p.group.role,
            "source": p.group.source,
            "split": p.group.split,
            "edges_version": edges.version,
            "group_count": p.count,
            "group_tokens": p.tokens,
            "sum_ppl": p.sum_ppl,
            "sum_ppl_sq": p.sum_ppl_sq,
            "sum_log_ppl": p.sum_log_ppl,
            "sum_log_ppl_sq": p.sum_log_ppl_sq,
            "min_ppl": p.min_ppl,
            "max_ppl": p.max_ppl,
            "mean_ppl": p.mean,
            "std_ppl": p.std,
            "log_mean": p.log_mean,
            "log_std": p.log_std,
            **{c: q.get(level) for c, level in zip(QUANTILE_COLUMNS, QUANTILE_LEVELS, strict=True)},
            "scores_version": scores_version,
            "model_revision": model_revision,
            "policy_hash": policy_hash,
        }
        for b, (lo, hi) in enumerate(zip(edges.lower.tolist(), edges.upper.tolist(), strict=True)):
            rows.append(
                group
                | {
                    "bin": b,
                    "ppl_lower": lo,
                    "ppl_upper": hi,
                    "chunk_count": p.chunk_counts[b],
                    "token_count": p.token_counts[b],
                }
            )
    return pa.Table.from_pylist(rows, schema=HISTOGRAMS_SCHEMA)


def partials_from_table(table: pa.Table) -> list[LandscapePartial]:
    """The partials a ``landscape/histograms`` table holds (the inverse of :func:`histogram_table`)."""
    groups: dict[Group, list[dict]] = {}
    for row in table.to_pylist():
        groups.setdefault(Group(row["role"], row["source"], row["split"]), []).append(row)
    partials = []
    for group, rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["bin"])
        if [r["bin"] for r in rows] != list(range(len(rows))):
            raise ValueError(f"{group}: the table does not hold every bin exactly once")
        first = rows[0]
        quantiles = tuple(
            (level, first[c])
            for c, level in zip(QUANTILE_COLUMNS, QUANTILE_LEVELS, strict=True)
            if first[c] is not None
        )
        partials.append(
            LandscapePartial(
                group=group,
                edges_version=first["edges_version"],
                chunk_counts=tuple(r["chunk_count"] for r in rows),
                token_counts=tuple(r["token_count"] for r in rows),
                count=first["group_count"],
                tokens=first["group_tokens"],
                sum_ppl=first["sum_ppl"],
                sum_ppl_sq=first["sum_ppl_sq"],
                sum_log_ppl=first["sum_log_ppl"],
                sum_log_ppl_sq=first["sum_log_ppl_sq"],
                min_ppl=first["min_ppl"],
                max_ppl=first["max_ppl"],
                quantiles=quantiles,
            )
        )
    return partials


def regimes_table(
    regimes: Sequence[Regime],
    *,
    min_tokens: int,
    scores_version: int,
    model_revision: str,
    policy_hash: str,
) -> pa.Table:
    """Rows of ``landscape/regimes``, in the order given."""
    rows = [
        {
            "name": r.name,
            "kind": r.kind,
            "definition": json.dumps(r.definition, sort_keys=True),
            "seed": r.seed,
            "count": r.stats.count,
            "tokens": r.stats.tokens,
            "mu": r.stats.mu,
            "sigma": r.stats.sigma,
            "log_mu": r.stats.log_mu,
            "log_sigma": r.stats.log_sigma,
            "ppl_min": r.stats.ppl_min,
            "ppl_max": r.stats.ppl_max,
            "min_tokens": min_tokens,
            "chunk_ids": list(r.chunk_ids),
            "scores_version": scores_version,
            "model_revision": model_revision,
            "policy_hash": policy_hash,
        }
        for r in regimes
    ]
    return pa.Table.from_pylist(rows, schema=REGIMES_SCHEMA)


def regimes_from_table(table: pa.Table) -> tuple[Regime, ...]:
    """The regimes a ``landscape/regimes`` table holds, in table order."""
    regimes = []
    for row in table.to_pylist():
        stats = SubsetStats(
            count=row["count"],
            tokens=row["tokens"],
            mu=row["mu"],
            sigma=row["sigma"],
            log_mu=row["log_mu"],
            log_sigma=row["log_sigma"],
            ppl_min=_float(row["ppl_min"]),
            ppl_max=_float(row["ppl_max"]),
        )
        params = tuple(json.loads(row["definition"]).items())
        regimes.append(Regime(row["name"], row["kind"], params, row["seed"], tuple(row["chunk_ids"]), stats))
    return tuple(regimes)


def _float(value: float | None) -> float:
    return math.nan if value is None else value


def select_scoring(
    present: Mapping[tuple[str, str], int], model_revision: str | None = None, policy_hash: str | None = None
) -> tuple[str, str]:
    """The one (model_revision, policy_hash) whose scores a landscape describes, out of those ``present`` (with their
    chunk counts): the named one, or the only one there is. Landscapes of different scorings never mix."""
    candidates = [
        key
        for key in present
        if (model_revision is None or key[0] == model_revision) and (policy_hash is None or key[1] == policy_hash)
    ]
    if len(candidates) == 1:
        return candidates[0]
    listed = ", ".join(f"{rev} / {pol} ({n} chunks)" for (rev, pol), n in sorted(present.items())) or "none"
    if not candidates:
        raise ValueError(
            f"no scores for model_revision={model_revision!r}, policy_hash={policy_hash!r}; present: {listed}"
        )
    raise ValueError(
        f"the scores hold {len(candidates)} scorings (model revision / window policy): {listed}. "
        "Name the model_revision and policy_hash to use."
    )
