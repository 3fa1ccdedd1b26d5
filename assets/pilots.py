"""Stage ``pilots``: the small continual-pretraining runs both scaling laws are fitted on.

- ``pilots/regime_runs``, one partition per (regime, size): train the base model on the first ``size`` tokens of a
  candidate regime (``landscape/regimes``) and record μ, σ, D and the domain/general loss curve (paper A).
- ``pilots/mixture_runs``, one partition per mixture ratio R: train to ``T_max`` tokens on domain chunks interleaved
  with general replay at ratio R, evaluating both losses along the way (paper B).

Each partition is one MLflow run and one curve (one row per evaluation point) in its Delta table; re-running a
partition replaces its rows. Training steps share the ``cpt_training`` concurrency pool, so a backfill of every
partition from the UI queues instead of oversubscribing the machine.
"""

from dataclasses import asdict
from fractions import Fraction

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.corpus import DOCUMENTS_TABLE
from assets.landscape import LARGEST_PILOT_TOKENS, REGIMES, REGIMES_TABLE
from assets.lineage import commit_info, delta_metadata, require_version
from assets.models import BASE_MODEL
from assets.resources import DeltaStoreResource, MlflowResource
from assets.scores import CHUNK_PERPLEXITY
from assets.tracking import TrackedRun, finish, lineage_tags, log_metrics, start_run
from cpt.delta_store import DeltaStore, partition_predicate
from cpt.hashing import config_hash
from cpt.landscape.regimes import LOW_PPL, RANDOM, RegimeConfig, SubsetStats, regime_tokens_prefix, window_name
from cpt.models.base_model import ModelManifest, load_model
from cpt.scoring.windows import Chunk, WindowPolicy
from cpt.training.pilot_data import rebuild_chunks
from cpt.training.schema import PILOT_POINTS_SCHEMA
from cpt.training.trainer import EvalPoint, TrainConfig, TrainResult, continue_pretraining
from spark_jobs.scoring import SCORES_TABLE

REGIME_RUNS = dg.AssetKey(["pilots", "regime_runs"])
MIXTURE_RUNS = dg.AssetKey(["pilots", "mixture_runs"])
REGIME_RUNS_TABLE = "pilots/regime_runs"
MIXTURE_RUNS_TABLE = "pilots/mixture_runs"
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


class PilotConfig(dg.Config):
    """Training hyperparameters and held-out sets of a pilot run (recorded in MLflow and on every row)."""

    learning_rate: float = Field(
        3e-4,
        description="peak AdamW learning rate; near the base model's final pretraining rate (the quick-start model "
        "ends at 2e-4): a much higher one re-warms the model and raises general loss even on general data",
    )
    schedule: str = Field("constant", description="constant (after warmup; the CMR paper's) or cosine")
    warmup_steps: int = 5
    micro_batch_size: int = Field(8, description="sequences per forward pass")
    grad_accum: int = Field(1, description="micro-batches per optimizer step")
    weight_decay: float = 0.1
    evals: int = Field(4, description="evaluations after T = 0, evenly spaced up to the budget")
    eval_tokens: int = Field(8_000, description="tokens in each held-out set (domain, general), fixed by the seed")
    seed: int = 0
    window_length: int = Field(256, description="must equal the scoring window policy the chunks were scored with")
    min_tokens: int = 32
    add_bos: bool = True

    def policy(self) -> WindowPolicy:
        return WindowPolicy(length=self.window_length, min_tokens=self.min_tokens, add_bos=self.add_bos)

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
            seed=self.seed,
        )


class RegimeRunConfig(PilotConfig):
    size_tokens: dict[str, int] = Field(
        {"small": 16_000, "large": LARGEST_PILOT_TOKENS},
        description="D, the domain tokens a regime run trains on, per size partition (quick-start scale)",
    )


class MixtureConfig(PilotConfig):
    evals: int = Field(12, description="evaluations after T = 0: the trajectory fits need at least 8")
    t_max_tokens: int = Field(64_000, description="T_max: tokens per mixture run, domain and general together")


@dg.asset(
    key=REGIME_RUNS,
    ins={"base_model": dg.AssetIn(BASE_MODEL)},
    deps=[REGIMES, ALL_SCORES],
    partitions_def=regime_size_partitions,
    pool=TRAINING_POOL,
    group_name="pilots",
    kinds={"pytorch", "mlflow", "delta"},
    code_version="regime-runs-v1",
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
    if keys["size"] not in config.size_tokens:
        raise dg.Failure(f"size {keys['size']!r} has no token count in size_tokens {config.size_tokens}")
    regime_name, budget = keys["regime"], config.size_tokens[keys["size"]]
    store = delta.store()
    inputs = _PilotInputs.load(store, ModelManifest.from_json(base_model), config)
    regime = store.read(REGIMES_TABLE, inputs.versions[REGIMES_TABLE], filters=[("name", "=", regime_name)])
    if regime.num_rows != 1:
        raise dg.Failure(
            f"landscape/regimes v{inputs.versions[REGIMES_TABLE]} has no regime {regime_name!r}: the pilot partitions "
            f"follow the default RegimeConfig ({REGIME_NAMES})"
        )
    draw = inputs.draw(regime["chunk_ids"][0].as_py(), budget, config.seed)
    return _run(
        context,
        store,
        mlflow,
        inputs,
        table=REGIME_RUNS_TABLE,
        regime=regime_name,
        ratio=1.0,
        train_config=config.train_config(budget, 1.0),
        domain_ids=draw.chunk_ids,
        general_ids=(),
        stats=draw.stats,
        params={"pilot": config.model_dump(), "regime": regime_name, "size": keys["size"], "size_tokens": budget},
    )


@dg.asset(
    key=MIXTURE_RUNS,
    ins={"base_model": dg.AssetIn(BASE_MODEL)},
    deps=[REGIMES, ALL_SCORES],
    partitions_def=mix_ratio_partitions,
    pool=TRAINING_POOL,
    group_name="pilots",
    kinds={"pytorch", "mlflow", "delta"},
    code_version="mixture-runs-v1",
    description="One pilot CPT run per mixture ratio R: domain train chunks interleaved with general replay at R, "
    "trained to T_max tokens, with domain and general loss trajectories from T = 0.",
)
def mixture_runs(
    context: dg.AssetExecutionContext,
    config: MixtureConfig,
    base_model: dict,
    delta: DeltaStoreResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    ratio = float(Fraction(context.partition_key))
    store = delta.store()
    inputs = _PilotInputs.load(store, ModelManifest.from_json(base_model), config)
    t_max = config.t_max_tokens
    domain = inputs.draw(inputs.pool("domain", "train"), round(ratio * t_max), config.seed) if ratio > 0 else None
    general = (
        inputs.draw(inputs.pool("general", "train"), round((1 - ratio) * t_max), config.seed) if ratio < 1 else None
    )
    return _run(
        context,
        store,
        mlflow,
        inputs,
        table=MIXTURE_RUNS_TABLE,
        regime="mixture",
        ratio=ratio,
        train_config=config.train_config(t_max, ratio),
        domain_ids=domain.chunk_ids if domain else (),
        general_ids=general.chunk_ids if general else (),
        stats=domain.stats if domain else None,
        params={"pilot": config.model_dump(), "mix_ratio": ratio, "t_max_tokens": t_max},
    )


class _PilotInputs:
    """The scores and documents a pilot draws its chunks from, pinned to what ``landscape/regimes`` was built on.

    Every pilot of both kinds reads the same scores version, model revision and window policy (those the landscape
    recorded), so all of them evaluate on the same held-out chunks and the law fits compare like with like.
    """

    def __init__(self, store: DeltaStore, manifest: ModelManifest, config: PilotConfig, scores: pa.Table, versions):
        self.store, self.manifest, self.config, self.scores, self.versions = store, manifest, config, scores, versions
        self.by_id = {c: i for i, c in enumerate(scores["chunk_id"].to_pylist())}

    @classmethod
    def load(cls, store: DeltaStore, manifest: ModelManifest, config: PilotConfig) -> "_PilotInputs":
        versions = {REGIMES_TABLE: require_version(store, REGIMES_TABLE)}
        pins = store.read(
            REGIMES_TABLE, versions[REGIMES_TABLE], columns=["scores_version", "model_revision", "policy_hash"]
        )
        if pins.num_rows == 0:
            raise dg.Failure(f"landscape/regimes v{versions[REGIMES_TABLE]} is empty: rebuild the landscape")
        pin = pins.slice(0, 1).to_pylist()[0]
        policy = config.policy()
        if pin["model_revision"] != manifest.revision or pin["policy_hash"] != policy.policy_hash:
            raise dg.Failure(
                f"landscape/regimes was built from scores of model {pin['model_revision']} under window policy "
                f"{pin['policy_hash']}, but the base model is {manifest.revision} and the pilot's policy {policy} "
                f"({policy.policy_hash}): rebuild the landscape for this model, or set the pilot's window policy"
            )
        versions[SCORES_TABLE] = pin["scores_version"]
        versions[DOCUMENTS_TABLE] = require_version(store, DOCUMENTS_TABLE)
        scores = store.read(
            SCORES_TABLE,
            versions[SCORES_TABLE],
            columns=["chunk_id", "doc_id", "role", "split", "n_tokens", "ppl"],
            filters=[("model_revision", "=", manifest.revision), ("policy_hash", "=", policy.policy_hash)],
        )
        if scores.num_rows == 0:
            raise dg.Failure(
                f"scores/chunk_perplexity v{versions[SCORES_TABLE]} holds no chunks scored by model "
                f"{manifest.revision} under {policy}: score the corpus with this model and window policy first"
            )
        return cls(store, manifest, config, scores, versions)

    def pool(self, role: str, split: str) -> list[str]:
        mask = pc.and_(pc.equal(self.scores["role"], role), pc.equal(self.scores["split"], split))
        return self.scores.filter(mask)["chunk_id"].to_pylist()

    def draw(self, chunk_ids: list[str], budget: int, seed: int):
        missing = [c for c in chunk_ids if c not in self.by_id]
        if missing:
            raise dg.Failure(
                f"{len(missing)} chunks are not in the pinned scores (e.g. {missing[:3]}): rebuild the regimes"
            )
        rows = [self.by_id[c] for c in chunk_ids]
        n_tokens = dict(zip(chunk_ids, self.scores["n_tokens"].take(rows).to_pylist(), strict=True))
        ppl = dict(zip(chunk_ids, self.scores["ppl"].take(rows).to_pylist(), strict=True))
        try:
            return regime_tokens_prefix(chunk_ids, n_tokens, ppl, budget, seed)
        except ValueError as exc:
            raise dg.Failure(f"cannot draw {budget:,} tokens: {exc}") from exc

    def chunk_sets(self, tokenizer, *id_lists) -> list[list[Chunk]]:
        """The chunks of each list of ids, rebuilt from one read of their documents."""
        wanted = [c for ids in id_lists for c in ids]
        doc_ids = self.scores["doc_id"].take(pa.array([self.by_id[c] for c in wanted], pa.int64())).to_pylist()
        docs = self.store.read(
            DOCUMENTS_TABLE,
            self.versions["corpus/documents"],
            columns=["doc_id", "text"],
            filters=[("doc_id", "in", sorted(set(doc_ids)))],
        )
        text_of = dict(zip(docs["doc_id"].to_pylist(), docs["text"].to_pylist(), strict=True))
        doc_of = dict(zip(wanted, doc_ids, strict=True))
        try:
            chunks = rebuild_chunks(tokenizer, wanted, doc_of, text_of, self.config.policy(), self.manifest.revision)
        except ValueError as exc:
            raise dg.Failure(str(exc)) from exc
        sets, start = [], 0
        for ids in id_lists:
            sets.append(chunks[start : start + len(ids)])
            start += len(ids)
        return sets

    def held_out_ids(self, role: str) -> tuple[str, ...]:
        """The fixed evaluation chunks of a role: a seeded draw of ``eval_tokens`` from its eval split."""
        pool = self.pool(role, "eval")
        if not pool:
            raise dg.Failure(f"no {role} eval chunks are scored: a pilot needs held-out {role} data")
        available = sum(self.scores["n_tokens"].take([self.by_id[c] for c in pool]).to_pylist())
        budget = min(self.config.eval_tokens, available)
        return self.draw(pool, budget, seed=self.config.seed + 1).chunk_ids


def _run(
    context: dg.AssetExecutionContext,
    store: DeltaStore,
    mlflow: MlflowResource,
    inputs: _PilotInputs,
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
    manifest = inputs.manifest
    model, tokenizer = load_model(manifest.path)
    domain_eval, general_eval, domain_train, general_train = inputs.chunk_sets(
        tokenizer, inputs.held_out_ids("domain"), inputs.held_out_ids("general"), domain_ids, general_ids
    )
    versions = inputs.versions
    eval_set = config_hash(sorted(c.chunk_id for c in [*domain_eval, *general_eval]))
    tags = lineage_tags(context, versions, base_model_revision=manifest.revision, base_model_source=manifest.source)
    run_name = f"{context.asset_key.path[-1]}:{context.partition_key}"
    tracked = start_run(mlflow, "pilots", run_name, tags, params | {"train": asdict(train_config)})
    context.log.info(
        f"pilot {run_name}: {len(domain_train)} domain + {len(general_train)} general train chunks, "
        f"{train_config.token_budget:,} tokens; eval on {len(domain_eval)} + {len(general_eval)} chunks; "
        f"MLflow run {tracked.run_id}"
    )

    def on_eval(point: EvalPoint) -> None:
        log_metrics(mlflow, tracked, [_metrics(point)], step_key="tokens")
        context.log.info(
            f"T={point.tokens:,}: domain loss {point.domain_loss:.4f}, general loss {point.general_loss:.4f}"
        )

    try:
        result = continue_pretraining(
            model,
            domain_train=domain_train,
            general_train=general_train,
            domain_eval=domain_eval,
            general_eval=general_eval,
            config=train_config,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.bos_token_id,
            on_eval=on_eval,
        )
        log_metrics(mlflow, tracked, [{"tokens": result.tokens, "seconds": result.seconds}], step_key="tokens")
        identity = {"train": train_config, "eval_set": eval_set, "eval_tokens": inputs.config.eval_tokens}
        lineage = {"scores_version": versions[SCORES_TABLE], "eval_set": eval_set, "config_hash": config_hash(identity)}
        rows = _rows(context, result, tracked, stats, regime, ratio, train_config, manifest, len(domain_train), lineage)
        commit = commit_info(context, context.asset_key, {"params": params, "train": train_config}, versions)
        predicate = partition_predicate({"partition": context.partition_key})
        version = store.overwrite(table, rows, commit, predicate=predicate)
    except BaseException:
        finish(mlflow, tracked, ok=False)
        raise
    finish(mlflow, tracked, ok=True)  # only once its curve is committed
    first, last = result.initial, result.final
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(table), version, PILOT_POINTS_SCHEMA, rows.num_rows)
        | {
            "mlflow_run": mlflow.run_link(tracked.experiment_id, tracked.run_id),
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
            "domain_epochs": round(result.domain_epochs, 3),
            "curve": _curve_markdown(result),
            "input_versions": dg.MetadataValue.json(versions),
        }
        | (
            {"mu": stats.mu, "sigma": stats.sigma, "log_mu": stats.log_mu, "log_sigma": stats.log_sigma}
            if stats
            else {}
        )
    )


def _metrics(point: EvalPoint) -> dict[str, float]:
    return {
        "tokens": point.tokens,
        "domain_loss": point.domain_loss,
        "general_loss": point.general_loss,
        "train_loss": point.train_loss,
        "learning_rate": point.learning_rate,
        "domain_tokens": point.domain_tokens,
        "general_tokens": point.general_tokens,
    }


def _rows(
    context, result: TrainResult, tracked: TrackedRun, stats, regime, ratio, train_config, manifest, n_chunks, lineage
):
    last = len(result.curve) - 1
    base = {
        "partition": context.partition_key,
        "regime": regime,
        "mix_ratio": ratio,
        "size_tokens": train_config.token_budget,
        "train_chunks": n_chunks,
        "mu": stats.mu if stats else None,
        "sigma": stats.sigma if stats else None,
        "log_mu": stats.log_mu if stats else None,
        "log_sigma": stats.log_sigma if stats else None,
        "model_revision": manifest.revision,
        "mlflow_run_id": tracked.run_id,
        "dagster_run_id": context.run.run_id,
        **lineage,
    }
    rows = [base | _metrics(p) | {"step": p.step, "is_final": i == last} for i, p in enumerate(result.curve)]
    return pa.Table.from_pylist(rows, schema=PILOT_POINTS_SCHEMA)


def _curve_markdown(result: TrainResult) -> dg.MetadataValue:
    lines = "".join(
        f"| {p.tokens:,} | {p.domain_tokens:,} | {p.domain_loss:.4f} | {p.general_loss:.4f} | {p.train_loss:.4f} |\n"
        for p in result.curve
    )
    return dg.MetadataValue.md(
        "| T | domain tokens | domain loss | general loss | train loss |\n|---|---|---|---|---|\n" + lines
    )
