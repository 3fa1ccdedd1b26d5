"""Stage ``pilots``: the small continual-pretraining runs both scaling laws are fitted on.

- ``pilots/regime_runs``, one partition per (regime, size): train the base model on the first ``size`` tokens of a
  candidate regime (``landscape/regimes``) and record μ, σ, D and the domain/general loss curve (paper A).
- ``pilots/mixture_runs``, one partition per mixture ratio R: train to ``T_max`` tokens on the first ``R·T_max``
  tokens of the DOS domain selection (``dataset/domain_selection``: the data the dataset will hold) interleaved with
  general replay at ratio R, evaluating both losses along the way (paper B).

Each partition is one MLflow run and one curve (one row per evaluation point) in its Delta table; re-running a
partition replaces its rows. Training steps share the ``cpt_training`` concurrency pool, so a backfill of every
partition from the UI queues instead of oversubscribing the machine.
"""

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, fields
from fractions import Fraction

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets.corpus import DOCUMENTS_TABLE
from assets.landscape import REGIMES, REGIMES_TABLE
from assets.lineage import commit_info, delta_metadata, governance, require_version
from assets.models import BASE_MODEL
from assets.resources import DeltaStoreResource, MlflowResource
from assets.scores import CHUNK_PERPLEXITY
from assets.tracking import finish, lineage_tags, log_metrics, start_run
from cpt.delta_store import DeltaStore, partition_predicate
from cpt.hashing import config_hash
from cpt.landscape.regimes import LOW_PPL, RANDOM, RegimeConfig, SubsetStats, window_name
from cpt.lineage.graph import model_record
from cpt.models.base_model import ModelManifest, load_model
from cpt.scoring.windows import Chunk
from cpt.training.pilot_data import rebuild_chunks
from cpt.training.pilot_inputs import (
    ROLES,
    HeldOut,
    MixtureSettings,
    PilotInputError,
    PilotRunInfo,
    PilotSettings,
    PinnedScores,
    RegimeRunSettings,
    check_landscape_pins,
    curve_rows,
    draw_chunks,
    draw_held_out,
    eval_spread,
    mixture_draws,
    pinned_scores,
    point_metrics,
    selection_regime,
    size_budget,
)
from cpt.training.schema import PILOT_POINTS_SCHEMA
from cpt.training.trainer import EvalPoint, TrainConfig, TrainResult, continue_pretraining
from spark_jobs.dataset import SELECTION_TABLE
from spark_jobs.scoring import SCORES_TABLE

REGIME_RUNS = dg.AssetKey(["pilots", "regime_runs"])
DOMAIN_SELECTION = dg.AssetKey(["dataset", "domain_selection"])  # materialized by assets.dataset
MIXTURE_RUNS = dg.AssetKey(["pilots", "mixture_runs"])
REGIME_RUNS_TABLE = "pilots/regime_runs"
MIXTURE_RUNS_TABLE = "pilots/mixture_runs"
FOLLOWUP_RUNS = dg.AssetKey(["pilots", "followup_runs"])  # materialized by assets.followups
FOLLOWUP_RUNS_TABLE = "pilots/followup_runs"
TRAINING_POOL = "cpt_training"

_regimes = RegimeConfig()  # the partitions name the default regimes; landscape/regimes must build the same ones
REGIME_NAMES = [window_name(c, w) for w in _regimes.widths for c in _regimes.centres] + [RANDOM, LOW_PPL]
PILOT_SIZES = ("small", "large")  # D per regime run: tokens set by RegimeRunConfig.size_tokens
MIX_RATIOS = ("0", "1/8", "1/4", "1/3", "1/2", "3/4", "1")

regime_size_partitions = dg.MultiPartitionsDefinition(
    {"regime": dg.StaticPartitionsDefinition(REGIME_NAMES), "size": dg.StaticPartitionsDefinition(list(PILOT_SIZES))}
)
mix_ratio_partitions = dg.StaticPartitionsDefinition(list(MIX_RATIOS))
# Every pilot partition reads the scores of every source: without this mapping Dagster would look for a scores
# partition named like the pilot partition (and a UI backfill would be refused).
ALL_SCORES = dg.AssetDep(CHUNK_PERPLEXITY, partition_mapping=dg.AllPartitionMapping())


_PILOT, _REGIME, _MIXTURE = PilotSettings(), RegimeRunSettings(), MixtureSettings()  # the defaults' one home


class PilotConfig(dg.Config):
    """Training hyperparameters and held-out sets of a pilot run (recorded in MLflow and on every row).

    Defaults come from :class:`cpt.training.pilot_inputs.PilotSettings`."""

    learning_rate: float = Field(
        _PILOT.learning_rate,
        description="peak AdamW learning rate; near the base model's final pretraining rate (the quick-start model "
        "ends at 2e-4): a much higher one re-warms the model and raises general loss even on general data",
    )
    schedule: str = Field(_PILOT.schedule, description="constant (after warmup; the CMR paper's) or cosine")
    warmup_steps: int = Field(_PILOT.warmup_steps, description="optimizer steps of linear warmup")
    micro_batch_size: int = Field(_PILOT.micro_batch_size, description="sequences per forward pass")
    grad_accum: int = Field(_PILOT.grad_accum, description="micro-batches per optimizer step")
    weight_decay: float = Field(_PILOT.weight_decay, description="AdamW weight decay")
    evals: int = Field(_PILOT.evals, description="evaluations after T = 0, evenly spaced up to the budget")
    eval_tokens: int = Field(
        _PILOT.eval_tokens, description="tokens in each held-out set (domain, general), fixed by the seed"
    )
    domain_eval_sources: list[str] = Field(
        list(_PILOT.domain_eval_sources),
        description="sources the held-out domain chunks are drawn from (their eval split); empty: the eval-only "
        "domain sources (split: eval) if any, else every domain source's eval split (with a warning)",
    )
    general_eval_sources: list[str] = Field(
        list(_PILOT.general_eval_sources), description="the same for the held-out general chunks"
    )
    seed: int = Field(_PILOT.seed, description="seed of the training order and of the draws")
    window_length: int = Field(
        _PILOT.window_length, description="must equal the scoring window policy the chunks were scored with"
    )
    min_tokens: int = Field(_PILOT.min_tokens, description="the scoring window policy's min_tokens")
    add_bos: bool = Field(_PILOT.add_bos, description="the scoring window policy's add_bos")
    precision: str = Field(
        _PILOT.precision,
        description="matrix products: auto (bfloat16 under autocast where the hardware runs it natively: a GPU, a "
        "CPU with AMX or AVX512-BF16; else float32), float32 or bfloat16; evaluation uses the same, so T = 0 is the "
        "scorer's loss",
    )

    def settings(self) -> PilotSettings:
        """The run config as the cpt settings (the fields they share; size and T_max stay with the asset)."""
        values = {f.name: getattr(self, f.name) for f in fields(PilotSettings)}
        return PilotSettings(**values | {f"{r}_eval_sources": tuple(values[f"{r}_eval_sources"]) for r in ROLES})


class RegimeRunConfig(PilotConfig):
    evals: int = Field(_REGIME.evals, description="evaluations after T = 0 (the law uses the final one)")
    size_tokens: dict[str, int] = Field(
        dict(_REGIME.size_tokens),
        description="D, the domain tokens a regime run trains on, per size partition (quick-start scale)",
    )


class MixtureConfig(PilotConfig):
    evals: int = Field(
        _MIXTURE.evals,
        description="evaluations after T = 0: the trajectory fits need 6 in the first three quarters of T_max, "
        "where their held-out check refits",
    )
    t_max_tokens: int = Field(
        _MIXTURE.t_max_tokens, description="T_max: tokens per mixture run, domain and general together"
    )


@contextlib.contextmanager
def as_failure():
    """A rule of the inputs that does not hold (a ValueError from cpt) fails the asset with the same message."""
    try:
        yield
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc


@dg.asset(
    key=REGIME_RUNS,
    ins={"base_model": dg.AssetIn(BASE_MODEL)},
    deps=[REGIMES, ALL_SCORES],
    partitions_def=regime_size_partitions,
    pool=TRAINING_POOL,
    group_name="pilots",
    kinds={"pytorch", "mlflow", "delta"},
    code_version="regime-runs-v2",
    **governance("pilots", PILOT_POINTS_SCHEMA),
    description="One pilot CPT run per (regime, size): the base model trained on the first `size` tokens of a "
    "landscape regime; μ, σ and D of what it trained on, and its domain/general loss curve.",
)
def regime_runs(
    context: dg.AssetExecutionContext,
    config: RegimeRunConfig,
    base_model: dict,
    delta: DeltaStoreResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    keys = context.partition_key.keys_by_dimension
    store = delta.store()
    with as_failure():
        settings, budget = config.settings(), size_budget(config.size_tokens, keys["size"])
        inputs = PilotInputs.load(store, ModelManifest.from_json(base_model), settings)
        draw = draw_chunks(inputs.scores, inputs.regime_chunk_ids(keys["regime"]), budget, settings.seed)
        train_config = settings.train_config(budget, 1.0)
    return run_pilot(
        context,
        store,
        mlflow,
        inputs,
        table=REGIME_RUNS_TABLE,
        regime=keys["regime"],
        ratio=1.0,
        train_config=train_config,
        domain_ids=draw.chunk_ids,
        general_ids=(),
        stats=draw.stats,
        params={"pilot": config.model_dump(), "regime": keys["regime"], "size": keys["size"], "size_tokens": budget},
    )


@dg.asset(
    key=MIXTURE_RUNS,
    ins={"base_model": dg.AssetIn(BASE_MODEL)},
    deps=[REGIMES, ALL_SCORES, DOMAIN_SELECTION],
    partitions_def=mix_ratio_partitions,
    pool=TRAINING_POOL,
    group_name="pilots",
    kinds={"pytorch", "mlflow", "delta"},
    code_version="mixture-runs-v3",
    **governance("pilots", PILOT_POINTS_SCHEMA),
    description="One pilot CPT run per mixture ratio R: the first R·T_max tokens of the DOS domain selection (the "
    "data the dataset will hold) interleaved with general replay at R, trained to T_max tokens, with domain and "
    "general loss trajectories from T = 0.",
)
def mixture_runs(
    context: dg.AssetExecutionContext,
    config: MixtureConfig,
    base_model: dict,
    delta: DeltaStoreResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    ratio, t_max = float(Fraction(context.partition_key)), config.t_max_tokens
    store = delta.store()
    with as_failure():
        settings = config.settings()
        inputs = PilotInputs.load(store, ModelManifest.from_json(base_model), settings)
        selection_version, order = inputs.selection_order()
        draws = mixture_draws(inputs.scores, ratio, t_max, settings.seed, domain_order=order)
        train_config = settings.train_config(t_max, ratio)
    return run_pilot(
        context,
        store,
        mlflow,
        inputs,
        table=MIXTURE_RUNS_TABLE,
        regime=selection_regime(selection_version),
        ratio=ratio,
        train_config=train_config,
        domain_ids=draws.domain.chunk_ids if draws.domain else (),
        general_ids=draws.general.chunk_ids if draws.general else (),
        stats=draws.domain.stats if draws.domain else None,
        params={"pilot": config.model_dump(), "mix_ratio": ratio, "t_max_tokens": t_max},
    )


class PilotInputs:
    """Reads what a pilot draws from, pinned to what ``landscape/regimes`` was built on (the rules are in
    :mod:`cpt.training.pilot_inputs`).

    Every pilot of both kinds reads the same scores version, model revision and window policy (those the landscape
    recorded), so all of them evaluate on the same held-out chunks and the law fits compare like with like.
    """

    def __init__(
        self, store: DeltaStore, manifest: ModelManifest, settings: PilotSettings, scores: PinnedScores, versions
    ):
        self.store, self.manifest, self.settings = store, manifest, settings
        self.scores, self.versions = scores, versions
        self.held_out: dict[str, HeldOut] = {
            role: draw_held_out(scores, role, settings.eval_sources(role), settings.eval_tokens, settings.seed)
            for role in ROLES
        }

    @classmethod
    def load(cls, store: DeltaStore, manifest: ModelManifest, settings: PilotSettings) -> "PilotInputs":
        versions = {REGIMES_TABLE: require_version(store, REGIMES_TABLE)}
        pins = store.read(
            REGIMES_TABLE, versions[REGIMES_TABLE], columns=["scores_version", "model_revision", "policy_hash"]
        )
        policy = settings.policy()
        pin = check_landscape_pins(pins.slice(0, 1).to_pylist(), versions[REGIMES_TABLE], manifest.revision, policy)
        versions[SCORES_TABLE] = pin.scores_version
        versions[DOCUMENTS_TABLE] = require_version(store, DOCUMENTS_TABLE)
        key = (_table_identity(store, SCORES_TABLE, pin.scores_version), manifest.revision, policy.policy_hash)
        if _PINNED.get("key") != key:  # a version of a table never changes: the same key is the same rows
            scores = store.read(
                SCORES_TABLE,
                versions[SCORES_TABLE],
                columns=["chunk_id", "doc_id", "source", "role", "split", "n_tokens", "ppl"],
                filters=[("model_revision", "=", manifest.revision), ("policy_hash", "=", policy.policy_hash)],
            )
            pinned = pinned_scores(
                scores.to_pydict(), scores_version=pin.scores_version, model_revision=manifest.revision, policy=policy
            )
            _PINNED.update(key=key, scores=pinned)
        return cls(store, manifest, settings, _PINNED["scores"], versions)

    def selection_order(self) -> tuple[int, list[str]]:
        """The current DOS selection's version and chunk ids in step order, drawn from the scores every pilot reads."""
        version = require_version(self.store, SELECTION_TABLE)
        rows = self.store.read(
            SELECTION_TABLE, version, columns=["step", "chunk_id", "scores_version", "model_revision", "policy_hash"]
        ).sort_by("step")
        pins = {
            (r["scores_version"], r["model_revision"], r["policy_hash"]) for r in rows.select([2, 3, 4]).to_pylist()
        }
        wanted = (self.versions[SCORES_TABLE], self.manifest.revision, self.settings.policy().policy_hash)
        if pins != {wanted}:
            raise PilotInputError(
                f"{SELECTION_TABLE} v{version} was selected from other scores {sorted(pins)} than the landscape pins "
                f"{wanted}: rerun laws/ppl_law and the selection"
            )
        self.versions[SELECTION_TABLE] = version
        return version, rows["chunk_id"].to_pylist()

    def regime_chunk_ids(self, name: str) -> list[str]:
        version = self.versions[REGIMES_TABLE]
        regime = self.store.read(REGIMES_TABLE, version, filters=[("name", "=", name)])
        if regime.num_rows != 1:
            raise PilotInputError(
                f"landscape/regimes v{version} has no regime {name!r}: the pilot partitions follow the default "
                f"RegimeConfig ({REGIME_NAMES})"
            )
        return regime["chunk_ids"][0].as_py()

    def held_out_chunks(self, tokenizer) -> tuple[list[Chunk], list[Chunk]]:
        """The held-out domain and general chunks, rebuilt once per process for the same documents version and
        ids (every pilot evaluates on them; the general ones are cut from whole books)."""
        ids = (self.held_out["domain"].chunk_ids, self.held_out["general"].chunk_ids)
        documents = _table_identity(self.store, DOCUMENTS_TABLE, self.versions[DOCUMENTS_TABLE])
        key = (documents, self.manifest.revision, ids)
        if key not in _HELD_OUT:
            _HELD_OUT.clear()
            _HELD_OUT[key] = self.chunk_sets(tokenizer, *ids)
        domain, general = _HELD_OUT[key]
        return domain, general

    def chunk_sets(self, tokenizer, *id_lists: Sequence[str]) -> list[list[Chunk]]:
        """The chunks of each list of ids, rebuilt from one read of their documents."""
        wanted = [c for ids in id_lists for c in ids]
        if not wanted:
            return [[] for _ in id_lists]
        doc_of = {c: self.scores.doc_id[self.scores.index[c]] for c in wanted}
        docs = self.store.read(
            DOCUMENTS_TABLE,
            self.versions[DOCUMENTS_TABLE],
            columns=["doc_id", "text"],
            filters=[("doc_id", "in", sorted(set(doc_of.values())))],
        )
        text_of = dict(zip(docs["doc_id"].to_pylist(), docs["text"].to_pylist(), strict=True))
        with as_failure():
            chunks = rebuild_chunks(tokenizer, wanted, doc_of, text_of, self.settings.policy(), self.manifest.revision)
        sets, start = [], 0
        for ids in id_lists:
            sets.append(chunks[start : start + len(ids)])
            start += len(ids)
        return sets


# Per process (a CLI run of many partitions reads the same versions): the pinned scores of the last scores version
# read, and the held-out chunks rebuilt for the last documents version.
_PINNED: dict[str, object] = {}
_HELD_OUT: dict[tuple, tuple[list[Chunk], list[Chunk]]] = {}


def _table_identity(store: DeltaStore, key: str, version: int) -> tuple[str, str, int]:
    """A version of a table, identified: a version never changes, and a table deleted and created again at the same
    path gets a new id."""
    return store.table_uri(key), store.table(key, version).metadata().id, version


# The base model's T = 0 evaluation per (model revision, held-out set, eval batch, precision): the same for every
# pilot of a process (a CLI run of many partitions), so it is computed once. Weights of a revision never change.
_BASE_EVALS: dict[tuple[str, str, int, str], EvalPoint] = {}


def train_pilot(
    context: dg.AssetExecutionContext,
    inputs: PilotInputs,
    train_config: TrainConfig,
    domain_ids: Sequence[str],
    general_ids: Sequence[str],
    label: str,
    on_eval=None,
) -> tuple[TrainResult, str]:
    """Train the base model on these chunks, evaluated on the pilots' held-out sets: (result, eval set hash)."""
    manifest, held_out = inputs.manifest, inputs.held_out
    for role in ROLES:
        for warning in held_out[role].sources.warnings:
            context.log.warning(warning)
    model, tokenizer = load_model(manifest.path)
    domain_eval, general_eval = inputs.held_out_chunks(tokenizer)
    domain_train, general_train = inputs.chunk_sets(tokenizer, domain_ids, general_ids)
    eval_set = config_hash(sorted(c.chunk_id for c in [*domain_eval, *general_eval]))
    known = (manifest.revision, eval_set, train_config.eval_batch_tokens, train_config.precision)
    context.log.info(
        f"pilot {label}: {len(domain_train)} domain + {len(general_train)} general train chunks, "
        f"{train_config.token_budget:,} tokens; eval on {len(domain_eval)} chunks of "
        f"{', '.join(held_out['domain'].sources.sources)} + {len(general_eval)} of "
        f"{', '.join(held_out['general'].sources.sources)}"
    )
    result = continue_pretraining(
        model,
        domain_train=domain_train,
        general_train=general_train,
        domain_eval=domain_eval,
        general_eval=general_eval,
        config=train_config,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.bos_token_id,
        on_eval=on_eval,
        initial=_BASE_EVALS.get(known),
    )
    _BASE_EVALS[known] = result.initial
    context.log.info(
        f"pilot {label}: {result.tokens:,} tokens in {result.seconds:.1f} s ({result.tokens_per_second:,.0f} tok/s, "
        f"{result.precision} products); "
        f"domain loss {result.initial.domain_loss:.4f} → {result.final.domain_loss:.4f}, general loss "
        f"{result.initial.general_loss:.4f} → {result.final.general_loss:.4f}"
    )
    return result, eval_set


def run_pilot(
    context: dg.AssetExecutionContext,
    store: DeltaStore,
    mlflow: MlflowResource,
    inputs: PilotInputs,
    *,
    table: str,
    regime: str,
    ratio: float,
    train_config: TrainConfig,
    domain_ids,
    general_ids,
    stats: SubsetStats | None,
    params: dict,
) -> dg.MaterializeResult:
    """Train one pilot, track it in MLflow, replace the partition's curve in Delta, and report."""
    manifest, versions, held_out = inputs.manifest, inputs.versions, inputs.held_out
    tags = lineage_tags(
        context, versions, mlflow, base_model_revision=manifest.revision, base_model_source=manifest.source
    )
    run_name = f"{context.asset_key.path[-1]}:{context.partition_key}"
    tracked = start_run(mlflow, "pilots", run_name, tags, params | {"train": asdict(train_config)})
    context.log.info(f"pilot {run_name}: MLflow run {tracked.run_id}")

    def on_eval(point: EvalPoint) -> None:
        log_metrics(mlflow, tracked, [point_metrics(point)], step_key="tokens")
        context.log.debug(
            f"T={point.tokens:,}: domain loss {point.domain_loss:.4f}, general loss {point.general_loss:.4f}"
        )

    try:
        result, eval_set = train_pilot(context, inputs, train_config, domain_ids, general_ids, run_name, on_eval)
        log_metrics(mlflow, tracked, [{"tokens": result.tokens, "seconds": result.seconds}], step_key="tokens")
        identity = {"train": train_config, "eval_set": eval_set, "eval_tokens": inputs.settings.eval_tokens}
        info = PilotRunInfo(
            partition=context.partition_key,
            regime=regime,
            mix_ratio=ratio,
            size_tokens=train_config.token_budget,
            train_chunks=len(domain_ids),
            stats=stats,
            model_revision=manifest.revision,
            mlflow_run_id=tracked.run_id,
            dagster_run_id=context.run.run_id,
            config_hash=config_hash(identity),
            scores_version=versions[SCORES_TABLE],
            eval_set=eval_set,
        )
        rows = pa.Table.from_pylist(
            curve_rows(result, info, held_out["domain"], held_out["general"]), schema=PILOT_POINTS_SCHEMA
        )
        commit = commit_info(
            context,
            context.asset_key,
            {"params": params, "train": train_config},
            versions,
            models=model_record(manifest.to_json()),
        )
        predicate = partition_predicate({"partition": context.partition_key})
        # add_columns: a pilot table written before a column existed gains it (older rows read it as null)
        version = store.overwrite(table, rows, commit, predicate=predicate, add_columns=True)
    except BaseException:
        finish(mlflow, tracked, ok=False)
        raise
    finish(mlflow, tracked, ok=True)  # only once its curve is committed
    metadata = delta_metadata(store.table_uri(table), version, PILOT_POINTS_SCHEMA, rows.num_rows)
    run_link = mlflow.run_link(tracked.experiment_id, tracked.run_id)
    return dg.MaterializeResult(metadata=metadata | _metadata(result, ratio, stats, versions, held_out, run_link))


def _metadata(result: TrainResult, ratio: float, stats: SubsetStats | None, versions, held_out, run_link) -> dict:
    first, last = result.initial, result.final
    return (
        {
            "mlflow_run": run_link,
            "mix_ratio": ratio,
            "tokens": result.tokens,
            "domain_tokens": result.domain_tokens,
            "domain_loss_T0": first.domain_loss,
            "domain_loss_final": last.domain_loss,
            "domain_loss_change": last.domain_loss - first.domain_loss,
            "general_loss_T0": first.general_loss,
            "general_loss_final": last.general_loss,
            "general_loss_change": last.general_loss - first.general_loss,
            "seconds": round(result.seconds, 1),
            "train_tokens_per_second": round(result.tokens_per_second, 1),
            "precision": result.precision,
            "domain_epochs": round(result.domain_epochs, 3),
            "curve": _curve_markdown(result),
            "input_versions": dg.MetadataValue.json(versions),
        }
        | _eval_metadata(result, held_out)
        | (
            {"mu": stats.mu, "sigma": stats.sigma, "log_mu": stats.log_mu, "log_sigma": stats.log_sigma}
            if stats
            else {}
        )
    )


def _eval_metadata(result: TrainResult, held_out: dict[str, HeldOut]) -> dict[str, object]:
    """Per role: the sources of its held-out set, why those, and the spread of its chunks' losses at T = 0 and at
    the end (a wide spread or a large outlier share means a few chunks can move the mean loss)."""
    meta: dict[str, object] = {
        "eval_warnings": dg.MetadataValue.json([w for h in held_out.values() for w in h.sources.warnings])
    }
    for role, h in held_out.items():
        spread = {
            name: asdict(eval_spread(getattr(point, f"{role}_chunk_losses"), h.n_tokens))
            for name, point in (("T0", result.initial), ("final", result.final))
        }
        meta |= {
            f"{role}_eval_sources": dg.MetadataValue.json(list(h.sources.sources)),
            f"{role}_eval_basis": h.sources.basis,
            f"{role}_chunk_loss_spread": dg.MetadataValue.json(spread),
        }
    return meta


def _curve_markdown(result: TrainResult) -> dg.MetadataValue:
    lines = "".join(
        f"| {p.tokens:,} | {p.domain_tokens:,} | {p.domain_loss:.4f} | {p.general_loss:.4f} | {p.train_loss:.4f} |\n"
        for p in result.curve
    )
    return dg.MetadataValue.md(
        "| T | domain tokens | domain loss | general loss | train loss |\n|---|---|---|---|---|\n" + lines
    )
