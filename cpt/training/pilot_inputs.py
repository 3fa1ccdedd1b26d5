"""The rules of a pilot run's inputs, as pure functions: what it trains on, what it is evaluated on, what it records.

The pilot assets (``assets/pilots.py``) only read and write; everything they decide is here:

- :class:`PilotSettings` (and :class:`RegimeRunSettings`, :class:`MixtureSettings`): the pilot hyperparameter
  defaults, the one place the Dagster run config takes them from;
- :func:`check_landscape_pins` / :func:`pinned_scores`: every pilot reads the scores version, model revision and
  window policy that ``landscape/regimes`` was built on, or fails with a :class:`PilotInputError`;
- :func:`select_pool`, :func:`draw_chunks`, :func:`selection_prefix`, :func:`mixture_draws`: the training chunks of
  a token budget;
- :func:`resolve_eval_sources`, :func:`draw_held_out`: which sources the held-out set of a role comes from, and the
  seeded draw of ``eval_tokens`` tokens from them;
- :func:`eval_spread`: how spread out the held-out chunks' losses are (a few outlier chunks can move a mean);
- :func:`curve_rows`: the rows of ``PILOT_POINTS_SCHEMA`` of one pilot curve.

Every error is a :class:`ValueError` (mostly :class:`PilotInputError`) with a one-line message meant for the user.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cpt.corpus.ingest import EVAL, TRAIN
from cpt.landscape.regimes import RegimeDraw, SubsetStats, regime_tokens_prefix, subset_stats
from cpt.scoring.windows import WindowPolicy
from cpt.training.schema import PILOT_POINTS_SCHEMA
from cpt.training.trainer import EvalPoint, TrainConfig, TrainResult

ROLES = ("domain", "general")
HELD_OUT_SEED_OFFSET = 1  # the held-out draw uses seed + 1, so it never coincides with a training draw's order
OUTLIER_ROBUST_SDS = 3.0  # a chunk is an outlier when its loss is this many robust SDs (1.4826·MAD) off the median
EvalBasis = Literal["configured", "eval-only sources", "every source's eval split"]


class PilotInputError(ValueError):
    """A pilot cannot run on these inputs; the message says why and what to do."""


class LandscapePinError(PilotInputError):
    """``landscape/regimes`` was built from other scores than the pilot would use (model revision, window policy)."""


class EvalSourcesError(PilotInputError):
    """The held-out set of a role cannot be drawn from the configured (or any) sources."""


# --- settings ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PilotSettings:
    """Hyperparameters and held-out sets of a pilot run, with the pilot defaults.

    ``learning_rate`` is 3e-4, not :class:`TrainConfig`'s generic 1e-3: near the quick-start model's final pretraining
    rate (2e-4); 1e-3 re-warms the model and raises general loss even at R = 0.
    """

    learning_rate: float = 3e-4
    schedule: str = "constant"  # constant (after warmup; the CMR paper's) or cosine
    warmup_steps: int = 5
    micro_batch_size: int = 4  # sequences per forward pass (the 8k-token pilots take 8 optimizer steps)
    grad_accum: int = 1  # micro-batches per optimizer step
    weight_decay: float = 0.1
    evals: int = 4  # evaluations after T = 0, evenly spaced up to the budget
    eval_tokens: int = 8_000  # tokens in each held-out set (domain, general), fixed by the seed
    domain_eval_sources: tuple[str, ...] = ()  # empty: automatic (see resolve_eval_sources)
    general_eval_sources: tuple[str, ...] = ()
    seed: int = 0
    window_length: int = 256  # must equal the scoring window policy the chunks were scored with
    min_tokens: int = 32
    add_bos: bool = True
    precision: str = "auto"  # of the products: see cpt.scoring.scorer.PRECISIONS

    def __post_init__(self) -> None:
        if self.evals < 1 or self.eval_tokens < 1:
            raise PilotInputError(f"evals and eval_tokens must be at least 1, got {self.evals}, {self.eval_tokens}")

    def policy(self) -> WindowPolicy:
        return WindowPolicy(length=self.window_length, min_tokens=self.min_tokens, add_bos=self.add_bos)

    def eval_sources(self, role: str) -> tuple[str, ...]:
        return {"domain": self.domain_eval_sources, "general": self.general_eval_sources}[role]

    def train_config(self, budget: int, ratio: float) -> TrainConfig:
        return TrainConfig(
            token_budget=budget,
            mix_ratio=ratio,
            micro_batch_size=self.micro_batch_size,
            grad_accum=self.grad_accum,
            learning_rate=self.learning_rate,
            schedule=self.schedule,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            eval_every_tokens=max(1, budget // self.evals),
            precision=self.precision,
            seed=self.seed,
        )


def _default_sizes() -> dict[str, int]:
    # "large" is the landscape's minimum regime size (assets.landscape.LARGEST_PILOT_TOKENS; a test ties them).
    return {"small": 8_000, "large": 24_000}


@dataclass(frozen=True)
class RegimeRunSettings(PilotSettings):
    evals: int = 1  # the law takes each run's final loss; T = 0 is the base model's, the same for every run
    size_tokens: Mapping[str, int] = field(default_factory=_default_sizes)  # D per size partition (quick-start scale)


@dataclass(frozen=True)
class MixtureSettings(PilotSettings):
    # The trajectory fits need 6 points after T = 0, and their held-out check refits on the first three quarters of
    # T: 10 evaluations leave it 7 (8 left it 5, one of them just past the line, and the CMR could not be fitted).
    evals: int = 10
    t_max_tokens: int = 32_000  # T_max: tokens per mixture run, domain and general together


def size_budget(size_tokens: Mapping[str, int], size: str) -> int:
    """D of a regime run's size partition."""
    if size not in size_tokens:
        raise PilotInputError(f"size {size!r} has no token count in size_tokens {dict(size_tokens)}")
    return int(size_tokens[size])


# --- pinned inputs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandscapePins:
    """The scoring ``landscape/regimes`` was built from: every pilot draws from exactly these scores."""

    scores_version: int
    model_revision: str
    policy_hash: str


def check_landscape_pins(
    pins: Sequence[Mapping[str, object]], regimes_version: int, model_revision: str, policy: WindowPolicy
) -> LandscapePins:
    """The pins of ``landscape/regimes`` (its rows' scores_version, model_revision, policy_hash), checked against the
    base model and the pilot's window policy."""
    if not pins:
        raise LandscapePinError(f"landscape/regimes v{regimes_version} is empty: rebuild the landscape")
    pin = pins[0]
    if pin["model_revision"] != model_revision or pin["policy_hash"] != policy.policy_hash:
        raise LandscapePinError(
            f"landscape/regimes was built from scores of model {pin['model_revision']} under window policy "
            f"{pin['policy_hash']}, but the base model is {model_revision} and the pilot's policy {policy} "
            f"({policy.policy_hash}): rebuild the landscape for this model, or set the pilot's window policy"
        )
    return LandscapePins(int(pin["scores_version"]), str(pin["model_revision"]), str(pin["policy_hash"]))


@dataclass(frozen=True)
class PinnedScores:
    """The scored chunks a pilot may draw from (one model revision × window policy), column by column."""

    chunk_id: tuple[str, ...]
    doc_id: tuple[str, ...]
    source: tuple[str, ...]
    role: tuple[str, ...]
    split: tuple[str, ...]
    n_tokens: tuple[int, ...]  # predicted tokens
    ppl: tuple[float, ...]
    index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        columns = (self.doc_id, self.source, self.role, self.split, self.n_tokens, self.ppl)
        if any(len(c) != len(self.chunk_id) for c in columns):
            raise ValueError("the score columns differ in length")
        index = {c: i for i, c in enumerate(self.chunk_id)}
        if len(index) != len(self.chunk_id):
            raise ValueError(f"{len(self.chunk_id) - len(index)} chunk ids appear twice in the pinned scores")
        object.__setattr__(self, "index", index)

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence]) -> PinnedScores:
        names = ("chunk_id", "doc_id", "source", "role", "split", "n_tokens", "ppl")
        return cls(**{n: tuple(columns[n]) for n in names})

    def __len__(self) -> int:
        return len(self.chunk_id)


def pinned_scores(
    columns: Mapping[str, Sequence], *, scores_version: int, model_revision: str, policy: WindowPolicy
) -> PinnedScores:
    """The scores of the pinned version under the pilot's scoring; none at all is an error."""
    scores = PinnedScores.from_columns(columns)
    if not len(scores):
        raise PilotInputError(
            f"scores/chunk_perplexity v{scores_version} holds no chunks scored by model {model_revision} under "
            f"{policy}: score the corpus with this model and window policy first"
        )
    return scores


# --- training draws ------------------------------------------------------------------------------------------------


def select_pool(scores: PinnedScores, role: str, split: str, sources: Sequence[str] | None = None) -> tuple[str, ...]:
    """Chunk ids of a role and split (and, when given, of those sources only), in the scores' order."""
    wanted = None if sources is None else set(sources)
    return tuple(
        c
        for c, r, s, src in zip(scores.chunk_id, scores.role, scores.split, scores.source, strict=True)
        if r == role and s == split and (wanted is None or src in wanted)
    )


def draw_chunks(scores: PinnedScores, chunk_ids: Sequence[str], budget: int, seed: int) -> RegimeDraw:
    """The seeded prefix of ``chunk_ids`` holding ``budget`` tokens (:func:`regime_tokens_prefix`)."""
    missing = [c for c in chunk_ids if c not in scores.index]
    if missing:
        raise PilotInputError(
            f"{len(missing)} chunks are not in the pinned scores (e.g. {missing[:3]}): rebuild the regimes"
        )
    rows = [scores.index[c] for c in chunk_ids]
    n_tokens = {c: scores.n_tokens[i] for c, i in zip(chunk_ids, rows, strict=True)}
    ppl = {c: scores.ppl[i] for c, i in zip(chunk_ids, rows, strict=True)}
    try:
        return regime_tokens_prefix(chunk_ids, n_tokens, ppl, budget, seed)
    except ValueError as exc:
        raise PilotInputError(f"cannot draw {budget:,} tokens: {exc}") from exc


@dataclass(frozen=True)
class MixtureDraws:
    domain: RegimeDraw | None  # None at R = 0
    general: RegimeDraw | None  # None at R = 1


SELECTION_REGIME_PREFIX = "dos-selection@v"  # the regime column of a mixture run trained on a DOS selection


def selection_regime(version: int) -> str:
    """The ``regime`` a mixture run records when its domain tokens come from selection ``version``."""
    return f"{SELECTION_REGIME_PREFIX}{version}"


def selection_version(regime: str) -> int | None:
    """The selection version a mixture run's ``regime`` names (None: a random draw of the domain pool)."""
    return int(regime.removeprefix(SELECTION_REGIME_PREFIX)) if regime.startswith(SELECTION_REGIME_PREFIX) else None


def selection_prefix(scores: PinnedScores, ordered_ids: Sequence[str], budget: int) -> RegimeDraw:
    """The first chunks of a distance-to-optimum selection (in greedy step order) that hold ``budget`` tokens: the
    selection at that budget (a prefix of the greedy order is the greedy choice at a smaller budget)."""
    missing = [c for c in ordered_ids if c not in scores.index]
    if missing:
        raise PilotInputError(
            f"{len(missing)} selected chunks are not in the pinned scores (e.g. {missing[:3]}): rerun the selection"
        )
    chosen, tokens = [], 0
    for chunk_id in ordered_ids:
        if tokens >= budget:
            break
        chosen.append(chunk_id)
        tokens += int(scores.n_tokens[scores.index[chunk_id]])
    if tokens < budget:
        raise PilotInputError(
            f"the domain selection holds {tokens:,} tokens, fewer than the {budget:,} this run needs: raise "
            "dataset/domain_selection's budget_tokens"
        )
    rows = [scores.index[c] for c in chosen]
    stats = subset_stats([scores.ppl[i] for i in rows], [scores.n_tokens[i] for i in rows])
    return RegimeDraw(budget=budget, seed=0, chunk_ids=tuple(chosen), stats=stats)


def mixture_draws(
    scores: PinnedScores, ratio: float, t_max: int, seed: int, domain_order: Sequence[str] | None = None
) -> MixtureDraws:
    """Domain and general train chunks of a mixture run: R·T_max and (1 − R)·T_max tokens. The domain tokens are
    the prefix of ``domain_order`` (the DOS selection: the CMR is then measured on the data the dataset will hold),
    or, without one, a seeded draw of the domain train pool."""
    domain = None
    if ratio > 0:
        budget = round(ratio * t_max)
        domain = (
            selection_prefix(scores, domain_order, budget)
            if domain_order is not None
            else draw_chunks(scores, select_pool(scores, "domain", TRAIN), budget, seed)
        )
    general = (
        draw_chunks(scores, select_pool(scores, "general", TRAIN), round((1 - ratio) * t_max), seed)
        if ratio < 1
        else None
    )
    return MixtureDraws(domain, general)


# --- held-out sets -------------------------------------------------------------------------------------------------


def chunks_by_source(scores: PinnedScores, role: str) -> dict[str, tuple[int, int]]:
    """Source → (train chunks, eval chunks) of a role, sources sorted."""
    counts: dict[str, list[int]] = {}
    for r, s, src in zip(scores.role, scores.split, scores.source, strict=True):
        if r == role:
            pair = counts.setdefault(src, [0, 0])
            pair[1 if s == EVAL else 0] += 1
    return {src: (train, ev) for src, (train, ev) in sorted(counts.items())}


@dataclass(frozen=True)
class EvalSources:
    sources: tuple[str, ...]  # sorted
    basis: EvalBasis
    warnings: tuple[str, ...] = ()


def resolve_eval_sources(
    role: str, chunks_by_source: Mapping[str, tuple[int, int]], configured: Sequence[str]
) -> EvalSources:
    """The sources a role's held-out chunks are drawn from.

    - configured (``{role}_eval_sources``): exactly those; a name with no eval chunks of the role is an error;
    - automatic: the sources that are all eval (eval chunks, no train chunks: declared ``split: eval``), if any;
    - otherwise every source's eval split, with a warning when that mixes several sources.
    """
    with_eval = sorted(s for s, (_, n_eval) in chunks_by_source.items() if n_eval > 0)
    if not with_eval:
        raise EvalSourcesError(
            f"no {role} eval chunks are scored: a pilot needs held-out {role} data (declare a {role} source with "
            "split: eval, or give one an eval_fraction)"
        )
    if configured:
        unknown = sorted({s for s in configured if s not in with_eval})
        if unknown:
            raise EvalSourcesError(
                f"{role}_eval_sources names {', '.join(map(repr, unknown))}, which "
                f"{'has' if len(unknown) == 1 else 'have'} no {role} eval chunks in the pinned scores; sources with "
                f"{role} eval chunks: {', '.join(with_eval)}"
            )
        return EvalSources(tuple(sorted(set(configured))), "configured")
    eval_only = [s for s in with_eval if chunks_by_source[s][0] == 0]
    if eval_only:
        return EvalSources(tuple(eval_only), "eval-only sources")
    warnings = ()
    if len(with_eval) > 1:
        warnings = (
            f"the {role} eval set mixes the held-out splits of sources {', '.join(with_eval)} (no {role} source is "
            f"eval-only): set {role}_eval_sources in the pilot config to the sources to evaluate on, or declare an "
            f"eval-only {role} source (split: eval)",
        )
    return EvalSources(tuple(with_eval), "every source's eval split", warnings)


@dataclass(frozen=True)
class HeldOut:
    """The fixed evaluation chunks of a role, in the order the trainer evaluates them."""

    role: str
    sources: EvalSources
    chunk_ids: tuple[str, ...]
    n_tokens: tuple[int, ...]  # each chunk's predicted tokens, same order


def draw_held_out(scores: PinnedScores, role: str, configured: Sequence[str], eval_tokens: int, seed: int) -> HeldOut:
    """A seeded draw (seed + 1) of ``eval_tokens`` tokens (all, if fewer) of the resolved sources' eval chunks."""
    sources = resolve_eval_sources(role, chunks_by_source(scores, role), configured)
    pool = select_pool(scores, role, EVAL, sources.sources)
    available = sum(scores.n_tokens[scores.index[c]] for c in pool)
    draw = draw_chunks(scores, pool, min(eval_tokens, available), seed + HELD_OUT_SEED_OFFSET)
    n_tokens = tuple(int(scores.n_tokens[scores.index[c]]) for c in draw.chunk_ids)
    return HeldOut(role, sources, draw.chunk_ids, n_tokens)


# --- spread of per-chunk losses ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSpread:
    """How the held-out chunks' losses spread (nats per token); NaN everywhere when there are no chunks."""

    chunks: int
    min: float
    p10: float
    median: float
    p90: float
    max: float
    std: float  # population std of the chunk losses (each chunk counts once)
    robust_sd: float  # 1.4826 · median absolute deviation
    outlier_chunks: int  # chunks more than OUTLIER_ROBUST_SDS robust SDs from the median
    outlier_token_share: float  # their share of the held-out tokens


def eval_spread(
    chunk_losses: Sequence[float], chunk_tokens: Sequence[int], robust_sds: float = OUTLIER_ROBUST_SDS
) -> EvalSpread:
    """The spread of per-chunk losses, and the share of tokens held by chunks far from the median.

    With a MAD of 0 (half the chunks share the median loss) any chunk off the median is an outlier.
    """
    if len(chunk_losses) != len(chunk_tokens):
        raise ValueError(f"{len(chunk_losses)} chunk losses but {len(chunk_tokens)} token counts")
    if not chunk_losses:
        nan = math.nan
        return EvalSpread(0, nan, nan, nan, nan, nan, nan, nan, 0, nan)
    x = np.asarray(chunk_losses, dtype=np.float64)
    n = np.asarray(chunk_tokens, dtype=np.float64)
    median = float(np.median(x))
    robust_sd = 1.4826 * float(np.median(np.abs(x - median)))
    outlier = np.abs(x - median) > robust_sds * robust_sd
    p10, p90 = np.percentile(x, [10, 90])
    return EvalSpread(
        chunks=int(x.size),
        min=float(x.min()),
        p10=float(p10),
        median=median,
        p90=float(p90),
        max=float(x.max()),
        std=float(x.std()),
        robust_sd=robust_sd,
        outlier_chunks=int(outlier.sum()),
        outlier_token_share=float(n[outlier].sum() / n.sum()) if n.sum() > 0 else math.nan,
    )


# --- rows of a pilot curve -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PilotRunInfo:
    """The columns of a pilot curve that are the same on every row."""

    partition: str
    regime: str
    mix_ratio: float
    size_tokens: int
    train_chunks: int
    stats: SubsetStats | None  # of the domain chunks trained on; None without any
    model_revision: str
    mlflow_run_id: str
    dagster_run_id: str
    config_hash: str
    scores_version: int
    eval_set: str


def point_metrics(point: EvalPoint) -> dict[str, float]:
    """The scalar metrics of an evaluation point (MLflow metrics and table columns)."""
    return {
        "tokens": point.tokens,
        "domain_loss": point.domain_loss,
        "general_loss": point.general_loss,
        "train_loss": point.train_loss,
        "learning_rate": point.learning_rate,
        "domain_tokens": point.domain_tokens,
        "general_tokens": point.general_tokens,
    }


def curve_rows(result: TrainResult, info: PilotRunInfo, domain: HeldOut, general: HeldOut) -> list[dict[str, object]]:
    """One row of ``PILOT_POINTS_SCHEMA`` per evaluation point, with the per-chunk losses of both held-out sets."""
    stats = info.stats
    base = {
        "partition": info.partition,
        "regime": info.regime,
        "mix_ratio": info.mix_ratio,
        "size_tokens": info.size_tokens,
        "train_chunks": info.train_chunks,
        "mu": stats.mu if stats else None,
        "sigma": stats.sigma if stats else None,
        "log_mu": stats.log_mu if stats else None,
        "log_sigma": stats.log_sigma if stats else None,
        "model_revision": info.model_revision,
        "mlflow_run_id": info.mlflow_run_id,
        "dagster_run_id": info.dagster_run_id,
        "config_hash": info.config_hash,
        "scores_version": info.scores_version,
        "eval_set": info.eval_set,
        "domain_chunk_tokens": list(domain.n_tokens),
        "general_chunk_tokens": list(general.n_tokens),
        "domain_eval_sources": list(domain.sources.sources),
        "general_eval_sources": list(general.sources.sources),
    }
    last = len(result.curve) - 1
    rows = []
    for i, point in enumerate(result.curve):
        for held_out, losses in ((domain, point.domain_chunk_losses), (general, point.general_chunk_losses)):
            if len(losses) != len(held_out.chunk_ids):
                raise ValueError(
                    f"the point at T={point.tokens} has {len(losses)} {held_out.role} chunk losses for "
                    f"{len(held_out.chunk_ids)} held-out chunks"
                )
        rows.append(
            base
            | point_metrics(point)
            | {
                "step": point.step,
                "is_final": i == last,
                "domain_chunk_losses": list(point.domain_chunk_losses),
                "general_chunk_losses": list(point.general_chunk_losses),
            }
        )
    if rows and set(rows[0]) != set(PILOT_POINTS_SCHEMA.names):
        raise ValueError(
            f"pilot rows do not match PILOT_POINTS_SCHEMA: {sorted(set(rows[0]) ^ set(PILOT_POINTS_SCHEMA.names))}"
        )
    return rows
