"""Stage ``landscape``: the perplexity landscape of the scored chunks, and the candidate regimes the pilots train on."""

import base64
import json
import math

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pydantic import Field

from assets.lineage import commit_info, counts_markdown, delta_metadata, governance, require_version
from assets.resources import DeltaStoreResource, SparkResource
from assets.scores import CHUNK_PERPLEXITY
from cpt.delta_store import CommitInfo, DeltaStore
from cpt.hashing import config_hash
from cpt.landscape.histogram import ALL, QUANTILE_LEVELS, BinEdges, LandscapePartial, bin_edges
from cpt.landscape.regimes import ChunkPool, Regime, RegimeConfig, build_regimes
from cpt.landscape.schema import (
    HISTOGRAMS_SCHEMA,
    QUANTILE_COLUMNS,
    REGIMES_SCHEMA,
    histogram_table,
    partials_from_table,
    regimes_table,
)
from spark_jobs.landscape import run_landscape_job
from spark_jobs.scoring import SCORES_TABLE

HISTOGRAMS = dg.AssetKey(["landscape", "histograms"])
REGIMES = dg.AssetKey(["landscape", "regimes"])
HISTOGRAMS_TABLE = "landscape/histograms"
REGIMES_TABLE = "landscape/regimes"
CHECK_MASS = "histogram_mass_equals_chunk_count"
LARGEST_PILOT_TOKENS = 24_000  # the largest regime-run size (assets.pilots): every regime must hold this many tokens
POOL_ROLE, POOL_SPLIT = "domain", "train"
_DEFAULT_REGIMES = RegimeConfig()  # one home for the defaults: the pilot partitions are named after these regimes


class LandscapeConfig(dg.Config):
    """Which bins, and which scoring (model revision + window policy) the landscape describes."""

    edges_version: str = Field("log10-v1", description="versioned log-PPL bin edges (log10-v1: PPL 1 … 1e6, 20/decade)")
    model_revision: str | None = Field(None, description="scores of this model revision; default: the only one")
    policy_hash: str | None = Field(None, description="scores of this window policy; default: the only one")


@dg.asset(
    key=HISTOGRAMS,
    deps=[CHUNK_PERPLEXITY],
    group_name="landscape",
    kinds={"spark", "delta"},
    code_version="landscape-histograms-v1",
    **governance("landscape", HISTOGRAMS_SCHEMA),
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_MASS,
            asset=HISTOGRAMS,
            blocking=True,
            description="Per (role, source, split), the histogram holds exactly the chunks of the pinned scores "
            "version under its scoring, and each role's all-sources rows are the sums of its sources.",
        )
    ],
    description="One row per (role, source, split) × PPL bin: chunk and token counts on fixed, versioned log-PPL "
    "edges, with the group's exact moments and quantiles; source '*' rows are each role over all sources. Computed "
    "by Spark from a pinned version of scores/chunk_perplexity; the landscape plot is in the metadata.",
)
def landscape_histograms(
    context: dg.AssetExecutionContext, config: LandscapeConfig, delta: DeltaStoreResource, spark: SparkResource
) -> dg.MaterializeResult:
    store = delta.store()
    scores_version = require_version(store, SCORES_TABLE)
    edges = _edges(config.edges_version)
    commit = commit_info(context, HISTOGRAMS, config.model_dump(), {SCORES_TABLE: scores_version})
    version = _landed_version(store, HISTOGRAMS_TABLE, commit)
    reused, seconds = version is not None, 0.0
    if reused:
        context.log.info(f"{HISTOGRAMS_TABLE} v{version} already holds this landscape of scores v{scores_version}")
        table = store.read(HISTOGRAMS_TABLE, version)
        revision, policy = table["model_revision"][0].as_py(), table["policy_hash"][0].as_py()
    else:
        try:
            result = run_landscape_job(
                spark.session(),
                store,
                scores_version,
                edges,
                model_revision=config.model_revision,
                policy_hash=config.policy_hash,
            )
        except ValueError as exc:
            raise dg.Failure(description=str(exc), metadata={"scores_version": scores_version}) from exc
        revision, policy, seconds = result.model_revision, result.policy_hash, result.seconds
        table = histogram_table(
            result.partials, edges, scores_version=scores_version, model_revision=revision, policy_hash=policy
        )
        version = store.overwrite(HISTOGRAMS_TABLE, table, commit, predicate=None)
        context.log.info(f"landscape of scores v{scores_version} in {seconds:.1f} s → {HISTOGRAMS_TABLE} v{version}")
    partials = partials_from_table(table)

    from cpt.landscape.plot import landscape_png  # matplotlib: loaded when a landscape is drawn, not with the defs

    png = landscape_png(
        _plotted(partials), edges, title=f"Perplexity landscape of train chunks, scores v{scores_version}"
    )
    plot_path = f"{store.table_uri(HISTOGRAMS_TABLE)}/_plots/landscape-v{scores_version}.png"
    _write_bytes(plot_path, png)
    image = base64.b64encode(png).decode("ascii")
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(HISTOGRAMS_TABLE), version, HISTOGRAMS_SCHEMA, table.num_rows)
        | {
            "scores_version": scores_version,
            "edges_version": edges.version,
            "model_revision": revision,
            "policy_hash": policy,
            "reused": reused,
            "seconds": round(seconds, 2),
            "landscape": dg.MetadataValue.md(f"![landscape](data:image/png;base64,{image})"),
            "landscape_plot": dg.MetadataValue.path(plot_path),
            "by_role": _summary([p for p in partials if p.group.source == ALL]),
            "by_source": _summary([p for p in partials if p.group.source != ALL]),
        },
        check_results=[_mass_check(store, scores_version, revision, policy, table)],
    )


class RegimesConfig(dg.Config):
    """The candidate regimes of the pilot runs (science.md §2): windows of the PPL-sorted domain train pool at each
    centre × width, a seeded random subset and the lowest-PPL subset, each holding at least ``min_tokens``."""

    centres: list[float] = Field(list(_DEFAULT_REGIMES.centres), description="window centres, as pool quantiles")
    widths: list[float] = Field(list(_DEFAULT_REGIMES.widths), description="window widths, as fractions of the pool")
    random_fraction: float = Field(_DEFAULT_REGIMES.random_fraction, description="random subset's share of chunks")
    low_ppl_fraction: float = Field(_DEFAULT_REGIMES.low_ppl_fraction, description="low-PPL subset's share of chunks")
    seed: int = Field(_DEFAULT_REGIMES.seed, description="seed of the random subset")
    min_tokens: int = Field(
        LARGEST_PILOT_TOKENS, description="tokens every regime must hold: at least the largest pilot size"
    )

    def regime_config(self) -> RegimeConfig:
        return RegimeConfig(
            centres=tuple(self.centres),
            widths=tuple(self.widths),
            random_fraction=self.random_fraction,
            low_ppl_fraction=self.low_ppl_fraction,
            seed=self.seed,
            min_tokens=self.min_tokens,
        )


@dg.asset(
    key=REGIMES,
    deps=[HISTOGRAMS],
    group_name="landscape",
    kinds={"delta", "python"},
    code_version="landscape-regimes-v1",
    **governance("landscape", REGIMES_SCHEMA),
    description="One row per candidate regime for the pilot runs: a window of the PPL-sorted domain train chunks "
    "(centre × width), a seeded random subset or the lowest-PPL subset, with its definition, chunk ids, tokens and "
    "landscape (μ, σ of PPL and of ln PPL). Built from the scores version and scoring the histograms pinned.",
)
def landscape_regimes(
    context: dg.AssetExecutionContext, config: RegimesConfig, delta: DeltaStoreResource
) -> dg.MaterializeResult:
    store = delta.store()
    histograms_version = require_version(store, HISTOGRAMS_TABLE)
    pins = (
        store.read(HISTOGRAMS_TABLE, histograms_version, columns=["scores_version", "model_revision", "policy_hash"])
        .group_by(["scores_version", "model_revision", "policy_hash"])
        .aggregate([])
        .to_pylist()
    )
    if len(pins) != 1:
        raise dg.Failure(f"{HISTOGRAMS_TABLE} v{histograms_version} does not pin one scores version/scoring: {pins}")
    pin = pins[0]
    try:
        regime_config = config.regime_config()
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from exc
    filters = [
        ("role", "=", POOL_ROLE),
        ("split", "=", POOL_SPLIT),
        ("model_revision", "=", pin["model_revision"]),
        ("policy_hash", "=", pin["policy_hash"]),
    ]
    chunks = store.read(SCORES_TABLE, pin["scores_version"], columns=["chunk_id", "ppl", "n_tokens"], filters=filters)
    try:
        pool = ChunkPool.from_arrays(
            chunks["chunk_id"].to_pylist(), chunks["ppl"].to_numpy(), chunks["n_tokens"].to_numpy()
        )
        regimes = build_regimes(pool, regime_config)
    except ValueError as exc:
        raise dg.Failure(description=str(exc), metadata={"scores_version": pin["scores_version"]}) from exc
    table = regimes_table(
        regimes,
        min_tokens=regime_config.min_tokens,
        scores_version=pin["scores_version"],
        model_revision=pin["model_revision"],
        policy_hash=pin["policy_hash"],
    )
    inputs = {SCORES_TABLE: pin["scores_version"], HISTOGRAMS_TABLE: histograms_version}
    commit = commit_info(context, REGIMES, config.model_dump(), inputs)
    version = _landed_version(store, REGIMES_TABLE, commit)
    reused = version is not None
    if version is None:
        version = store.overwrite(REGIMES_TABLE, table, commit, predicate=None)
    context.log.info(f"{len(regimes)} regimes from {len(pool)} domain train chunks → {REGIMES_TABLE} v{version}")
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(REGIMES_TABLE), version, REGIMES_SCHEMA, table.num_rows)
        | {
            "scores_version": pin["scores_version"],
            "histograms_version": histograms_version,
            "model_revision": pin["model_revision"],
            "policy_hash": pin["policy_hash"],
            "pool_chunks": len(pool),
            "pool_tokens": pool.tokens,
            "min_tokens": regime_config.min_tokens,
            "reused": reused,
            "regimes_fingerprint": config_hash([(r.name, r.chunk_ids) for r in regimes]),
            "regimes": _regimes_markdown(regimes),
        }
    )


# ---- helpers ----------------------------------------------------------------------------------------------------
def _edges(version: str) -> BinEdges:
    try:
        return bin_edges(version)
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from exc


def _landed_version(store: DeltaStore, key: str, commit: CommitInfo) -> int | None:
    """The latest version of ``key`` when its last commit was made from the same inputs, config and code (so it
    already holds what this run would write), else None."""
    if not store.exists(key):
        return None
    last = store.history(key, 1)[0]
    same = (
        last.get("cptdata.input_versions") == json.dumps(dict(commit.input_versions), sort_keys=True)
        and last.get("cptdata.config_hash") == commit.config_hash
        and last.get("cptdata.code_version") == commit.code_version
    )
    return int(last["version"]) if same else None


def _plotted(partials: list[LandscapePartial]) -> list[LandscapePartial]:
    """Each role over all sources: its train chunks where it has any, else all its chunks."""
    overall = [p for p in partials if p.group.source == ALL]
    train = [p for p in overall if p.group.split == POOL_SPLIT]
    return train + [p for p in overall if p.group.role not in {t.group.role for t in train}]


def _write_bytes(uri: str, data: bytes) -> None:
    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _summary(partials: list[LandscapePartial]) -> dg.MetadataValue:
    rows = []
    for p in partials:
        q = p.quantile_map()
        rows.append(
            {
                "role": p.group.role,
                "source": p.group.source,
                "split": p.group.split,
                "chunks": p.count,
                "tokens": p.tokens,
                "mean": _fmt(p.mean),
                "std": _fmt(p.std),
                "log_mean": _fmt(p.log_mean),
                "log_std": _fmt(p.log_std),
                **{c: _fmt(q.get(level)) for c, level in zip(QUANTILE_COLUMNS, QUANTILE_LEVELS, strict=True)},
            }
        )
    columns = ["role", "source", "split", "chunks", "tokens", "mean", "std", "log_mean", "log_std", *QUANTILE_COLUMNS]
    return counts_markdown(rows, columns)


def _regimes_markdown(regimes: tuple[Regime, ...]) -> dg.MetadataValue:
    rows = [
        {
            "name": r.name,
            "count": r.count,
            "tokens": r.tokens,
            "μ": _fmt(r.stats.mu),
            "σ": _fmt(r.stats.sigma),
            "log μ": _fmt(r.stats.log_mu),
            "log σ": _fmt(r.stats.log_sigma),
            "PPL range": f"{_fmt(r.stats.ppl_min)} … {_fmt(r.stats.ppl_max)}",
        }
        for r in regimes
    ]
    return counts_markdown(rows, ["name", "count", "tokens", "μ", "σ", "log μ", "log σ", "PPL range"])


def _chunks_by_group(table: pa.Table) -> dict[tuple[str, str, str], int]:
    counts = table.group_by(["role", "source", "split"]).aggregate([([], "count_all")]).to_pylist()
    return {(r["role"], r["source"], r["split"]): r["count_all"] for r in counts}


def _mass_check(
    store: DeltaStore, scores_version: int, revision: str, policy: str, table: pa.Table
) -> dg.AssetCheckResult:
    scores = store.read(
        SCORES_TABLE,
        scores_version,
        columns=["role", "source", "split"],
        filters=[("model_revision", "=", revision), ("policy_hash", "=", policy)],
    )
    expected = _chunks_by_group(scores)
    per_source = table.filter(pc.not_equal(table["source"], ALL))
    held = {
        (r["role"], r["source"], r["split"]): r["chunk_count_sum"]
        for r in per_source.group_by(["role", "source", "split"]).aggregate([("chunk_count", "sum")]).to_pylist()
    }
    problems = [
        {"group": list(g), "scores": expected.get(g, 0), "histogram": held.get(g, 0)}
        for g in sorted(set(expected) | set(held))
        if expected.get(g, 0) != held.get(g, 0)
    ]
    overall = table.filter(pc.equal(table["source"], ALL))
    role_totals: dict[tuple[str, str], int] = {}
    for (role, _, split), n in expected.items():
        role_totals[(role, split)] = role_totals.get((role, split), 0) + n
    held_overall = {
        (r["role"], r["split"]): r["chunk_count_sum"]
        for r in overall.group_by(["role", "split"]).aggregate([("chunk_count", "sum")]).to_pylist()
    }
    problems += [
        {
            "group": [role, ALL, split],
            "scores": role_totals.get((role, split), 0),
            "histogram": held_overall.get((role, split), 0),
        }
        for role, split in sorted(set(role_totals) | set(held_overall))
        if role_totals.get((role, split), 0) != held_overall.get((role, split), 0)
    ]
    return dg.AssetCheckResult(
        check_name=CHECK_MASS,
        passed=not problems,
        metadata={
            "scores_version": scores_version,
            "scores_chunks": scores.num_rows,
            "histogram_chunks": int(sum(held.values())),
            "mismatches": dg.MetadataValue.json(problems[:20]),
        },
    )
