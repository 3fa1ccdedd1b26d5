"""Stage ``dataset``: the platform's product (docs/science.md §2 DOS and §4).

- ``dataset/domain_selection``: distance-to-optimum selection over the leak-free domain train pool toward the target
  landscape of the current ``laws/ppl_law`` fit (its answer, whatever its basis), in greedy step order. The mixture
  pilots train on its prefixes, so the CMR is measured on the data the dataset will hold.
- ``dataset/cpt_mixture``: for a budget ``T_target``, the first ``R·T_target`` domain tokens of the selection and a
  seeded draw of ``(1 − R)·T_target`` general replay tokens, interleaved, at the CMR answer ``R`` of the current
  ``laws/cmr`` fit. Each build replaces the table (version N = build N; older builds by time travel) and commits a
  build record (answers, bases, fits, versions) with it. The blocking checks run on the planned rows (a failure
  writes nothing) and on the rows read back; only a build whose checks pass is exported (token-id and text shards
  with ``manifest.json``, :mod:`cpt.dataset.exports`); a build that fails after its commit is undone.

Nothing is built on a CMR fit whose gate failed, on a landscape answer its basis does not support, nor on a
selection or CMR that is stale against the other.
"""

import json
import math
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pydantic import Field

from assets.corpus import DOCUMENTS_TABLE
from assets.landscape import REGIMES, REGIMES_TABLE
from assets.law_publishing import FITS_TABLE, CurrentFit, current_fit
from assets.laws import CMR, PPL_LAW
from assets.lineage import commit_info, delta_metadata, governance, package_version, require_version
from assets.models import BASE_MODEL
from assets.pilots import DOMAIN_SELECTION
from assets.resources import DeltaStoreResource, SparkResource
from cpt.dataset import checks as dataset_checks
from cpt.dataset.exports import (
    MANIFEST,
    MANIFEST_FORMAT,
    TMP_PREFIX,
    manifest_problems,
    publish_folder,
    stale_temporaries,
    write_manifest,
)
from cpt.dataset.plan import (
    DOMAIN,
    GENERAL,
    DatasetPlanError,
    MixtureBudget,
    check_pools,
    dos_target,
    landscape_of,
    mixture_rows,
    statistic,
    tokens_prefix,
)
from cpt.dataset.schema import DATASET_SCHEMA, SELECTION_SCHEMA
from cpt.delta_store import COMMIT_ID_KEY, CommitInfo, DeltaStore
from cpt.landscape.regimes import regime_tokens_prefix
from cpt.laws.cmr.answer import CmrAnswerModel, answer_with_interval
from cpt.lineage.graph import model_record
from cpt.models.base_model import ModelManifest
from cpt.scoring.windows import WindowPolicy
from cpt.selection.dos import DosError, select_dos
from cpt.training.pilot_inputs import MixtureSettings, PilotSettings
from spark_jobs.dataset import DATASET_TABLE, SELECTION_TABLE, CandidatePools, export_dataset, leak_free_train_chunks
from spark_jobs.scoring import SCORES_TABLE

CPT_MIXTURE = dg.AssetKey(["dataset", "cpt_mixture"])
BUILD_KEY = "cptdata.build"  # the dataset commit's build record (JSON)
CHECKS = (
    "budget_and_ratio_met",
    "no_eval_leakage",
    "no_duplicate_chunk",
    "landscape_reached",
    "manifest_matches_files",
)
DEFAULT_BUDGET = MixtureSettings().t_max_tokens  # the mixture pilots' T_max: where the CMR is measured
_TOL, _PILOT = dataset_checks.Tolerances(), PilotSettings()


class SelectionConfig(dg.Config):
    budget_tokens: int = Field(
        DEFAULT_BUDGET,
        description="domain tokens DOS selects, in greedy order; must cover the mixture pilots' T_max and the "
        "dataset's R·T_target (a prefix of the order is the DOS selection at any smaller budget)",
    )
    w_mean: float | None = Field(None, description="weight of (μ − μ̂)²; default 1/μ̂² (squared relative error)")
    w_var: float | None = Field(None, description="weight of (σ² − σ̂²)²; default 1/σ̂⁴")


class DatasetConfig(dg.Config):
    target_tokens: int | None = Field(
        None, description="T_target, all tokens of the dataset; default: the budget the CMR answer was given for"
    )
    seed: int = Field(0, description="seed of the general replay draw")
    shard_chunks: int = Field(4096, description="chunks per export shard")
    window_length: int = Field(_PILOT.window_length, description="the scoring window policy the chunks were cut with")
    min_tokens: int = Field(_PILOT.min_tokens, description="the scoring window policy's min_tokens")
    add_bos: bool = Field(_PILOT.add_bos, description="the scoring window policy's add_bos")
    budget_tolerance: float = Field(_TOL.budget_rel, description="check: |tokens − T_target| / T_target")
    ratio_tolerance: float = Field(_TOL.ratio_abs, description="check: |achieved domain share − R|")
    landscape_tolerance: float = Field(
        _TOL.landscape_rel, description="check: relative gap of the domain rows' μ and σ to the target"
    )

    def tolerances(self) -> dataset_checks.Tolerances:
        return dataset_checks.Tolerances(**_tolerances(self.model_dump()))


def _pins(store: DeltaStore) -> tuple[dict, dict[str, int]]:
    versions = {
        REGIMES_TABLE: require_version(store, REGIMES_TABLE),
        DOCUMENTS_TABLE: require_version(store, DOCUMENTS_TABLE),
    }
    pins = store.read(
        REGIMES_TABLE, versions[REGIMES_TABLE], columns=["scores_version", "model_revision", "policy_hash"]
    )
    if pins.num_rows == 0:
        raise dg.Failure(f"{REGIMES_TABLE} v{versions[REGIMES_TABLE]} is empty: rebuild the landscape")
    pin = pins.slice(0, 1).to_pylist()[0]
    return pin, versions | {SCORES_TABLE: pin["scores_version"]}


def _pools(spark: SparkResource, store: DeltaStore, pin: dict, documents_version: int) -> CandidatePools:
    return leak_free_train_chunks(
        spark.session(),
        store,
        scores_version=pin["scores_version"],
        documents_version=documents_version,
        model_revision=pin["model_revision"],
        policy_hash=pin["policy_hash"],
    )


def _role(table: pa.Table, role: str) -> pa.Table:
    return table.filter(pc.equal(table["role"], role))


@dg.asset(
    key=DOMAIN_SELECTION,
    deps=[PPL_LAW, REGIMES],
    group_name="dataset",
    kinds={"spark", "delta"},
    code_version="domain-selection-v1",
    **governance("dataset", SELECTION_SCHEMA),
    description="Distance-to-optimum selection: domain train chunks (no eval document, no group shared with one) "
    "chosen greedily so their (μ, σ) reach the target landscape of the current PPL-law answer; one row per chunk "
    "in step order, so a prefix is the selection at any smaller budget.",
)
def domain_selection(
    context: dg.AssetExecutionContext, config: SelectionConfig, delta: DeltaStoreResource, spark: SparkResource
) -> dg.MaterializeResult:
    store = delta.store()
    fit = current_fit(store, "ppl_law").require_supported_answer()
    pin, versions = _pins(store)
    if fit.input_versions.get(REGIMES_TABLE) not in (None, versions[REGIMES_TABLE]):
        raise dg.Failure(
            f"the current laws/ppl_law fit was made on landscape/regimes v{fit.input_versions[REGIMES_TABLE]}, the "
            f"landscape is now v{versions[REGIMES_TABLE]}: rerun the regime pilots and refit the law"
        )
    ppl_space, sigma_kind = fit.config.get("ppl_space", "raw"), fit.config.get("sigma_kind", "std")
    answer = fit.answer
    pools = _pools(spark, store, pin, versions[DOCUMENTS_TABLE])
    domain = _role(pools.chunks, DOMAIN)
    n_tokens = domain["n_tokens"].to_numpy().astype(np.int64)
    try:
        target = dos_target(answer["mu"], answer["sigma"], sigma_kind)
        target = type(target)(target.mean, target.var, config.w_mean, config.w_var)
        start = time.perf_counter()
        selection = select_dos(
            statistic(domain["ppl"].to_numpy(), ppl_space),
            n_tokens,
            target,
            config.budget_tokens,
            tie_keys=np.asarray(domain["chunk_id"].to_pylist(), dtype=str),
        )
        seconds = time.perf_counter() - start
    except (DosError, DatasetPlanError) as exc:
        raise dg.Failure(f"no domain selection: {exc}") from exc
    order = selection.order
    chosen = domain.take(pa.array(order))
    rows = pa.table(
        {
            "step": pa.array(np.arange(len(order), dtype=np.int64)),
            "chunk_id": chosen["chunk_id"],
            "doc_id": chosen["doc_id"],
            "source": chosen["source"],
            "n_tokens": chosen["n_tokens"].cast(pa.int64()),
            "ppl": chosen["ppl"],
            "cumulative_tokens": pa.array(selection.cumulative_tokens, pa.int64()),
            "objective": pa.array(selection.objective, pa.float64()),
            "basis": [answer["basis"]] * len(order),
            "target_mu": [float(answer["mu"])] * len(order),
            "target_sigma": [float(answer["sigma"])] * len(order),
            "ppl_space": [ppl_space] * len(order),
            "sigma_kind": [sigma_kind] * len(order),
            "scores_version": [pin["scores_version"]] * len(order),
            "documents_version": [versions[DOCUMENTS_TABLE]] * len(order),
            "model_revision": [pin["model_revision"]] * len(order),
            "policy_hash": [pin["policy_hash"]] * len(order),
            "fit_key": [fit.fit_key] * len(order),
            "fit_mlflow_run_id": [fit.mlflow_run_id] * len(order),
        },
        schema=SELECTION_SCHEMA,
    )
    inputs = versions | {FITS_TABLE: fit.fits_version}
    version = _unchanged_selection(store, rows)
    if version is None:  # a new selection: the mixture pilots and the CMR must be rerun on it
        commit = commit_info(
            context,
            DOMAIN_SELECTION,
            config.model_dump() | {"fit": fit.fit_key},
            inputs,
            input_parts={FITS_TABLE: [fit.lineage_part]},
        )
        version = store.overwrite(SELECTION_TABLE, rows, commit, predicate=None)
    else:
        context.log.info(f"the selection equals {SELECTION_TABLE} v{version}: kept (the CMR measured on it stands)")
    mu, sigma = landscape_of(statistic(chosen["ppl"].to_numpy(), ppl_space), sigma_kind)
    gap = selection.gap()
    context.log.info(
        f"DOS: {len(order)} of {domain.num_rows} domain chunks, {selection.tokens:,} tokens, toward the "
        f"{answer['basis']} target μ {answer['mu']:.4g}, σ {answer['sigma']:.4g}: reached μ {mu:.4g}, σ {sigma:.4g} "
        f"in {seconds:.2f} s"
    )
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(SELECTION_TABLE), version, SELECTION_SCHEMA, rows.num_rows)
        | {
            "summary": (
                f"{len(order)} of {domain.num_rows} domain chunks, {selection.tokens:,} tokens, toward the "
                f"{answer['basis']} target μ {answer['mu']:.4g}, σ {answer['sigma']:.4g}: reached μ {mu:.4g} "
                f"({gap['mean_rel']:+.2%}), σ {sigma:.4g} ({gap['std_rel']:+.2%})"
            ),
            "basis": str(answer["basis"]),
            "target_mu": float(answer["mu"]),
            "target_sigma": float(answer["sigma"]),
            "mu": mu,
            "sigma": sigma,
            "mu_rel_gap": gap["mean_rel"],
            "std_rel_gap": gap["std_rel"],
            "reached_within_2pct": selection.reached(0.02),
            "tokens": selection.tokens,
            "pool_chunks": domain.num_rows,
            "pool_tokens": int(n_tokens.sum()),
            "train_chunks_left_out_for_eval_overlap": dg.MetadataValue.json(pools.left_out),
            "ppl_space": ppl_space,
            "sigma_kind": sigma_kind,
            "seconds": round(seconds, 3),
            "fit": dg.MetadataValue.json(fit.provenance()),
            "input_versions": dg.MetadataValue.json(inputs),
        }
    )


def _unchanged_selection(store: DeltaStore, rows: pa.Table) -> int | None:
    """The current selection's version when it holds exactly ``rows`` (chunks, order, target, pins, fit inputs),
    else None: an identical reselection keeps its version, so what was measured on it stays valid."""
    version = store.version(SELECTION_TABLE)
    if version is None:
        return None
    current = store.read(SELECTION_TABLE, version)
    if current.schema.names != rows.schema.names:
        return None
    same = (
        current.sort_by("step")
        .drop_columns(["fit_mlflow_run_id"])
        .cast(rows.drop_columns(["fit_mlflow_run_id"]).schema)
    )
    return version if same.equals(rows.drop_columns(["fit_mlflow_run_id"])) else None


@dg.asset(
    key=CPT_MIXTURE,
    ins={"base_model": dg.AssetIn(BASE_MODEL)},
    deps=[CMR, DOMAIN_SELECTION],
    group_name="dataset",
    kinds={"spark", "delta"},
    code_version="cpt-mixture-v1",
    **governance("dataset", DATASET_SCHEMA),
    check_specs=[dg.AssetCheckSpec(name, asset=CPT_MIXTURE, blocking=True) for name in CHECKS],
    description="The CPT dataset: R·T_target domain tokens of the DOS selection and (1 − R)·T_target general "
    "replay tokens at the CMR answer R, interleaved; one row per chunk with why it is there and the versions it "
    "came from; token-id and text shards with a manifest, exported only when every blocking check passes.",
)
def cpt_mixture(
    context: dg.AssetExecutionContext,
    config: DatasetConfig,
    base_model: dict,
    delta: DeltaStoreResource,
    spark: SparkResource,
) -> dg.MaterializeResult:
    tolerances = _validated(config)
    store = delta.store()
    manifest_model = ModelManifest.from_json(base_model)
    ppl_fit = current_fit(store, "ppl_law").require_supported_answer()
    cmr_fit = current_fit(store, "cmr").require_passed()
    selection_version = require_version(store, SELECTION_TABLE)
    selection = store.read(SELECTION_TABLE, selection_version).sort_by("step")
    _check_consistent(selection, selection_version, ppl_fit, cmr_fit, manifest_model)
    head = selection.slice(0, 1).to_pylist()[0]
    policy = WindowPolicy(config.window_length, config.min_tokens, config.add_bos)
    if policy.policy_hash != head["policy_hash"]:
        raise dg.Failure(
            f"the window policy {policy} is not the one the selected chunks were scored with ({head['policy_hash']}): "
            "set window_length, min_tokens and add_bos as the scoring run had them"
        )
    cmr_answer = _cmr_answer(cmr_fit, config.target_tokens)
    if cmr_answer.ratio is None:
        raise dg.Failure(f"no dataset: {cmr_answer.summary()}")
    try:
        budget = MixtureBudget(round(cmr_answer.tokens), cmr_answer.ratio)
        pools = _pools(spark, store, head, head["documents_version"])
        general = _role(pools.chunks, GENERAL)
        check_pools(
            budget, int(pc.sum(selection["n_tokens"]).as_py() or 0), int(pc.sum(general["n_tokens"]).as_py() or 0)
        )
        rows = _plan(selection, general, budget, head, selection_version, config.seed)
    except DatasetPlanError as exc:
        raise dg.Failure(f"no dataset: {exc}") from exc
    previous = store.version(DATASET_TABLE)
    _require_passed(_table_checks(store, rows, budget, head, tolerances), "the planned rows", previous)
    build = _build_record(config, budget, cmr_answer, ppl_fit, cmr_fit, head, selection_version, manifest_model)
    build["window_policy"] = asdict(policy)
    inputs = {
        SELECTION_TABLE: selection_version,
        SCORES_TABLE: head["scores_version"],
        DOCUMENTS_TABLE: head["documents_version"],
        FITS_TABLE: max(cmr_fit.fits_version, ppl_fit.fits_version),
    }
    commit = commit_info(
        context,
        CPT_MIXTURE,
        build,
        inputs,
        input_parts={FITS_TABLE: [ppl_fit.lineage_part, cmr_fit.lineage_part]},
        models=model_record(base_model),
    )
    commit = type(commit)(**(asdict(commit) | {"extra": {BUILD_KEY: json.dumps(build, sort_keys=True, default=str)}}))
    version = _write(spark, store, rows, commit)
    try:  # the rows as written pass the same checks, and are exported; otherwise the table goes back
        written = store.read(DATASET_TABLE, version)
        outcomes = _table_checks(store, written, budget, head, tolerances)
        _require_passed(outcomes, f"{DATASET_TABLE} v{version} as written", previous)
        outcomes.append(_export(context, spark, store, version, manifest_model, config.shard_chunks))
        _require_passed(outcomes[-1:], f"the export of v{version}", previous)
    except BaseException:
        _undo(store, version, previous, commit, context.log)
        raise
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(DATASET_TABLE), version, DATASET_SCHEMA, written.num_rows)
        | _metadata(written, build, outcomes),
        check_results=[_check_result(o) for o in outcomes],
    )


def _validated(config: DatasetConfig) -> dataset_checks.Tolerances:
    """The tolerances, and every other setting checked before any work."""
    problems = []
    if config.target_tokens is not None and config.target_tokens <= 0:
        problems.append(f"target_tokens must be positive or unset, got {config.target_tokens}")
    if config.shard_chunks <= 0:
        problems.append(f"shard_chunks must be positive, got {config.shard_chunks}")
    try:
        tolerances = config.tolerances()
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise dg.Failure(f"invalid run config: {'; '.join(problems)}")
    return tolerances


def _require_passed(outcomes, what: str, previous: int | None) -> None:
    failed = [o for o in outcomes if not o.passed]
    if failed:
        kept = "nothing" if previous is None else f"v{previous}"
        raise dg.Failure(
            f"no dataset: {what} fail the blocking checks "
            + "; ".join(f"{o.name}: {'; '.join(o.problems)}" for o in failed)
            + f" — {DATASET_TABLE} stays at {kept} and nothing is exported",
            metadata={o.name: dg.MetadataValue.json(_jsonable(o.values)) for o in outcomes},
        )


def _undo(store: DeltaStore, version: int, previous: int | None, commit, log) -> None:
    """Put the table back to its last good build (or empty it when there was none) — unless another build has
    committed since ours: then ours is not the latest, and undoing would discard that build."""
    try:
        if store.version(DATASET_TABLE) != version:
            log.warning(f"{DATASET_TABLE} moved past the failed v{version}: left as it is")
            return
        if previous is None:  # an empty version: it holds nothing, so it claims no lineage and no build record
            bare = CommitInfo(commit.run_id, commit.asset_key, commit.code_version, commit.config_hash)
            store.overwrite(DATASET_TABLE, store.read(DATASET_TABLE, version).slice(0, 0), bare, predicate=None)
        else:  # the restoring commit carries the restored build's record, so that version exports as it did
            record = store.commit_metadata(DATASET_TABLE, previous).get(BUILD_KEY)
            restoring = type(commit)(**(asdict(commit) | {"extra": {BUILD_KEY: record} if record else {}}))
            store.restore(DATASET_TABLE, previous, restoring)
    except Exception as exc:  # the original failure matters more; say that the undo failed too
        log.error(f"could not restore {DATASET_TABLE} to its last good version after a failed build: {exc}")


def _jsonable(value):
    return json.loads(json.dumps(value, default=str).replace("NaN", "null"))


def _check_consistent(selection: pa.Table, version: int, ppl_fit: CurrentFit, cmr_fit: CurrentFit, model) -> None:
    """The selection was made from the current PPL-law fit, the CMR measured on pilots drawn from this selection,
    and the base model is the one the chunks were scored with."""
    if selection.num_rows == 0:
        raise dg.Failure(f"{SELECTION_TABLE} v{version} is empty: rerun the selection")
    head = selection.slice(0, 1).to_pylist()[0]
    if head["fit_key"] != ppl_fit.fit_key:
        raise dg.Failure(
            f"{SELECTION_TABLE} v{version} was selected for another laws/ppl_law fit (MLflow run "
            f"{head['fit_mlflow_run_id']}) than the current one ({ppl_fit.mlflow_run_id}): rerun the selection, the "
            "mixture pilots and laws/cmr"
        )
    measured_on = cmr_fit.input_versions.get(SELECTION_TABLE)
    if measured_on != version:
        raise dg.Failure(
            f"the current laws/cmr fit was measured on mixture pilots drawn from "
            f"{'random domain data' if measured_on is None else f'{SELECTION_TABLE} v{measured_on}'}, not from the "
            f"selection v{version} the dataset would hold: rerun the mixture pilots (a backfill of all ratios) and "
            "laws/cmr"
        )
    if head["model_revision"] != model.revision:
        raise dg.Failure(
            f"the selection's chunks were scored by model {head['model_revision']}, the base model is now "
            f"{model.revision}: rescore and rebuild the landscape, pilots and laws"
        )


def _cmr_answer(fit: CurrentFit, target_tokens: int | None):
    model = CmrAnswerModel.from_json(fit.result["answer_model"])
    draws = tuple(CmrAnswerModel.from_json(d) for d in fit.result.get("answer_draws", []))
    level = float(fit.result.get("options", {}).get("ci_level", 0.9))
    tokens = target_tokens or fit.answer.get("tokens") or model.t_max
    return answer_with_interval(model, draws, float(tokens), level)


def _plan(selection: pa.Table, general: pa.Table, budget: MixtureBudget, head: dict, selection_version: int, seed: int):
    steps = tokens_prefix(selection["n_tokens"].to_pylist(), budget.domain_tokens)
    domain_rows = selection.slice(0, steps).to_pylist()
    general_rows: list[dict] = []
    if budget.general_tokens > 0:
        ids = general["chunk_id"].to_pylist()
        n_tok = dict(zip(ids, general["n_tokens"].to_pylist(), strict=True))
        ppl = dict(zip(ids, general["ppl"].to_pylist(), strict=True))
        draw = regime_tokens_prefix(ids, n_tok, ppl, budget.general_tokens, seed)
        by_id = {
            r["chunk_id"]: r for r in general.select(["chunk_id", "doc_id", "source", "n_tokens", "ppl"]).to_pylist()
        }
        general_rows = [by_id[c] for c in draw.chunk_ids]
    versions = {
        "scores_version": head["scores_version"],
        "documents_version": head["documents_version"],
        "selection_version": selection_version,
        "model_revision": head["model_revision"],
        "policy_hash": head["policy_hash"],
    }
    target = f"the {head['basis']} target μ {head['target_mu']:.4g}, σ {head['target_sigma']:.4g}"
    rows = mixture_rows(
        domain_rows,
        general_rows,
        budget.ratio,
        versions,
        domain_reason="DOS step {step} toward " + target.replace("{", "{{").replace("}", "}}"),
        general_reason=f"replay draw {{draw}} (seed {seed}) of the general train pool",
    )
    return pa.Table.from_pylist(rows, schema=DATASET_SCHEMA)


def _build_record(config, budget, cmr_answer, ppl_fit, cmr_fit, head, selection_version, model) -> dict:
    return {
        "config": config.model_dump(),
        "target_tokens": budget.target_tokens,
        "ratio": budget.ratio,
        "cmr_answer": cmr_answer.to_json(),
        "landscape_answer": ppl_fit.answer,
        "landscape_target": {
            "mu": head["target_mu"],
            "sigma": head["target_sigma"],
            "ppl_space": head["ppl_space"],
            "sigma_kind": head["sigma_kind"],
            "basis": head["basis"],
        },
        "fits": {"ppl_law": ppl_fit.provenance(), "cmr": cmr_fit.provenance()},
        "selection_version": selection_version,
        "model": {"revision": model.revision, "source": model.source, "path": model.path},
        "window_policy_hash": head["policy_hash"],
        "code_version": f"cptdata {package_version()}",
    }


def _write(spark: SparkResource, store: DeltaStore, rows: pa.Table, commit) -> int:
    from spark_jobs.dataset import write_dataset

    return write_dataset(spark.session(), store, rows, commit)


def _table_checks(store: DeltaStore, written: pa.Table, budget: MixtureBudget, head: dict, tol) -> list:
    docs = store.read(DOCUMENTS_TABLE, head["documents_version"], columns=["doc_id", "group_id", "split"])
    latest = store.read(DOCUMENTS_TABLE, columns=["doc_id", "group_id", "split"])  # eval data ingested since counts
    eval_docs = pa.concat_tables([docs, latest]).filter(pc.equal(pa.concat_tables([docs, latest])["split"], "eval"))
    scores = store.read(
        SCORES_TABLE,
        head["scores_version"],
        columns=["chunk_id"],
        filters=[("split", "=", "eval"), ("model_revision", "=", head["model_revision"])],
    )
    domain = written.filter(pc.equal(written["role"], DOMAIN))
    return [
        dataset_checks.budget_and_ratio(written["n_tokens"].to_pylist(), written["role"].to_pylist(), budget, tol),
        dataset_checks.no_eval_leakage(
            written["chunk_id"].to_pylist(),
            written["doc_id"].to_pylist(),
            dict(zip(docs["doc_id"].to_pylist(), docs["group_id"].to_pylist(), strict=True)),
            set(scores["chunk_id"].to_pylist()),
            set(eval_docs["doc_id"].to_pylist()),
            set(eval_docs["group_id"].to_pylist()),
        ),
        dataset_checks.no_duplicate_chunk(written["chunk_id"].to_pylist()),
        dataset_checks.landscape_reached(
            domain["ppl"].to_pylist(),
            head["target_mu"],
            head["target_sigma"],
            ppl_space=head["ppl_space"],
            sigma_kind=head["sigma_kind"],
            tol=tol,
        ),
    ]


def exports_root(store: DeltaStore) -> str:
    """Where the exports of the dataset table live: a folder beside the table."""
    return f"{store.table_uri(DATASET_TABLE)}_exports"


def _export(context, spark, store, version, model, shard_chunks) -> dataset_checks.CheckOutcome:
    folder, problems, manifest = export_version(
        spark.session(), store, version, model, shard_chunks, context.log.info, checked=True
    )
    values = {
        "exported": not problems,
        "folder": folder,
        "files": len(manifest.get("files", [])),
        "bytes": sum(f["bytes"] for f in manifest.get("files", [])),
    }
    return dataset_checks.CheckOutcome("manifest_matches_files", not problems, tuple(problems), values)


def export_version(
    spark_session,
    store: DeltaStore,
    version: int,
    model: ModelManifest,
    shard_chunks: int,
    log=None,
    *,
    checked: bool = False,
):
    """Export dataset ``version`` (atomically, see :mod:`cpt.dataset.exports`) unless a verified export exists;
    returns (folder, problems of its manifest, the manifest). Used by the asset and ``cptdata export``. Unless the
    caller has just ``checked`` it, the version's blocking table checks run first: a build that fails one is never
    exported."""
    build = json.loads(store.commit_metadata(DATASET_TABLE, version).get(BUILD_KEY) or "null")
    if build is None:
        raise dg.Failure(f"{DATASET_TABLE} v{version} has no build record: it was not written by a dataset build")
    if not checked:
        rows = store.read(DATASET_TABLE, version)
        head = rows.slice(0, 1).to_pylist()[0] | build["landscape_target"]
        head = head | {f"target_{k}": build["landscape_target"][k] for k in ("mu", "sigma")}
        tol = dataset_checks.Tolerances(**_tolerances(build["config"]))
        failed = [
            o
            for o in _table_checks(store, rows, MixtureBudget(build["target_tokens"], build["ratio"]), head, tol)
            if not o.passed
        ]
        if failed:
            raise dg.Failure(
                f"{DATASET_TABLE} v{version} fails its blocking checks, so it is not exported: "
                + "; ".join(f"{o.name}: {'; '.join(o.problems)}" for o in failed)
            )
    if build["model"]["revision"] != model.revision:
        raise dg.Failure(
            f"{DATASET_TABLE} v{version} was built with model {build['model']['revision']}; the base model is now "
            f"{model.revision}, whose tokenizer may cut the chunks otherwise: export with that model"
        )
    commit_id = store.commit_metadata(DATASET_TABLE, version).get(COMMIT_ID_KEY)
    fs, root = pafs.FileSystem.from_uri(exports_root(store))
    final = f"{root}/v{version}"
    if not manifest_problems(fs, final) and _read_manifest(fs, final)["dataset"].get("commit_id") == commit_id:
        (log or print)(f"dataset v{version}: a verified export exists at {final}")
        return final, [], _read_manifest(fs, final)
    for stale in stale_temporaries(fs, root, older_than_s=3600):
        fs.delete_dir(stale)
    tmp = f"{root}/{TMP_PREFIX}v{version}-{uuid.uuid4().hex[:8]}"
    fs.create_dir(tmp, recursive=True)
    rows = store.read(DATASET_TABLE, version)
    docs_version = int(rows["documents_version"][0].as_py())
    policy = WindowPolicy(**build["window_policy"])
    files = export_dataset(
        spark_session,
        store,
        dataset_version=version,
        documents_version=docs_version,
        model_path=model.path,
        model_revision=model.revision,
        policy=policy,
        folder=_uri(exports_root(store), tmp, root),
        shard_chunks=shard_chunks,
    )
    manifest = _manifest(store, version, rows, build, files, policy)
    manifest["dataset"]["commit_id"] = commit_id  # ties the export to this commit of this table
    write_manifest(fs, tmp, manifest)  # last: it lists only files already written and hashed
    problems = manifest_problems(fs, tmp)
    if problems:  # never served: the temporary folder stays where no reader looks
        return tmp, problems, manifest
    publish_folder(fs, tmp, final)
    (log or print)(f"dataset v{version}: exported {len(files)} files to {final}")
    return final, manifest_problems(fs, final), manifest


def _tolerances(config: dict) -> dict[str, float]:
    return {
        "budget_rel": config["budget_tolerance"],
        "ratio_abs": config["ratio_tolerance"],
        "landscape_rel": config["landscape_tolerance"],
    }


def _uri(root_uri: str, path: str, root_path: str) -> str:
    """``path`` (a path on the exports' file system) as a URI of the same kind as ``root_uri``."""
    return root_uri + path[len(root_path) :]


def _read_manifest(fs, folder: str) -> dict:
    with fs.open_input_stream(f"{folder}/{MANIFEST}") as fh:
        return json.loads(fh.read())


def _manifest(store, version, rows: pa.Table, build: dict, files: list[dict], policy: WindowPolicy) -> dict:
    roles = np.asarray(rows["role"].to_pylist())
    tokens = rows["n_tokens"].to_numpy()
    domain_ppl = rows.filter(pc.equal(rows["role"], DOMAIN))["ppl"].to_numpy()
    target = build["landscape_target"]
    mu, sigma = landscape_of(statistic(domain_ppl, target["ppl_space"]), target["sigma_kind"])
    total = int(tokens.sum())
    return {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "dataset": {"table": DATASET_TABLE, "version": version, "uri": store.table_uri(DATASET_TABLE)},
        "counts": {
            "chunks": rows.num_rows,
            "domain": int((roles == DOMAIN).sum()),
            "general": int((roles == GENERAL).sum()),
        },
        "tokens": {
            "predicted": total,
            "domain": int(tokens[roles == DOMAIN].sum()),
            "general": int(tokens[roles == GENERAL].sum()),
            "target": build["target_tokens"],
        },
        "ratio": {
            "achieved": (int(tokens[roles == DOMAIN].sum()) / total) if total else None,
            "target": build["ratio"],
        },
        "landscape": {"achieved": {"mu": _number(mu), "sigma": _number(sigma)}, "target": target},
        "answers": {"cmr": build["cmr_answer"], "landscape": build["landscape_answer"]},
        "fits": build["fits"],
        "inputs": {
            "selection_version": build["selection_version"],
            "scores_version": int(rows["scores_version"][0].as_py()),
            "documents_version": int(rows["documents_version"][0].as_py()),
        },
        "model": build["model"],
        "window_policy": {**asdict(policy), "policy_hash": policy.policy_hash},
        "code_version": build["code_version"],
        "files": files,
    }


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN (R = 0: no domain landscape)


def _metadata(written: pa.Table, build: dict, outcomes) -> dict:
    by_name = {o.name: o for o in outcomes}
    ratio = by_name["budget_and_ratio_met"].values
    land = by_name["landscape_reached"].values
    export = by_name["manifest_matches_files"].values
    cmr_answer = build["cmr_answer"]
    return {
        "summary": (
            f"{written.num_rows} chunks, {ratio['tokens']:,} tokens (target {build['target_tokens']:,}); domain share "
            f"{ratio['achieved_ratio']:.3f} (CMR {build['ratio']:.3f}, basis {cmr_answer['basis']}"
            f"{', extrapolated' if cmr_answer['extrapolated'] else ''}); domain μ {land.get('mu', float('nan')):.4g} σ "
            f"{land.get('sigma', float('nan')):.4g} vs target μ {build['landscape_target']['mu']:.4g} σ "
            f"{build['landscape_target']['sigma']:.4g} (basis {build['landscape_target']['basis']})"
        ),
        "tokens": ratio["tokens"],
        "domain_tokens": ratio["domain_tokens"],
        "achieved_ratio": ratio["achieved_ratio"],
        "target_ratio": build["ratio"],
        "cmr_basis": cmr_answer["basis"],
        "landscape_basis": build["landscape_target"]["basis"],
        "achieved_landscape": dg.MetadataValue.json(
            {k: land.get(k) for k in ("mu", "sigma", "mu_rel_gap", "sigma_rel_gap")}
        ),
        "target_landscape": dg.MetadataValue.json(build["landscape_target"]),
        "exported": bool(export.get("exported")),
        "export_folder": export.get("folder", ""),
        "build": dg.MetadataValue.json(json.loads(json.dumps(build, default=str))),
    }


def _check_result(outcome: dataset_checks.CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        metadata={
            "problems": dg.MetadataValue.json(list(outcome.problems)),
            "values": dg.MetadataValue.json(json.loads(json.dumps(dict(outcome.values), default=str))),
        },
        description="; ".join(outcome.problems) or None,
    )
