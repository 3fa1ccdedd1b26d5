"""Stage ``laws``: both scaling laws fitted on the pilot runs, recorded in MLflow and registered as pyfunc models.

- ``laws/ppl_law``: the perplexity-aware data law ``L(μ, σ, D)`` on the final domain losses of the regime runs, its
  bootstrap intervals and leave-one-run-out error, and the optimal landscape (μ̂, σ̂) the dataset stage selects for.
- ``laws/cmr``: the CMR analysis of the mixture runs: trajectory fits, T0 per ratio, tolerance and feasible sets, the
  CMR law and the predicted critical mixture ratio at the target budget, with a λ × ε sensitivity table.

Each fit is one MLflow run (params, metrics, the result JSON, plots, the pyfunc model registered under a stable name)
and one row of the Delta table ``laws/fits``; blocking checks gate everything downstream on the fit's quality.
"""

import base64
import json
import math
import tempfile
from fractions import Fraction
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.lineage import commit_info, delta_metadata, require_version
from assets.pilots import MIXTURE_RUNS, MIXTURE_RUNS_TABLE, REGIME_RUNS, REGIME_RUNS_TABLE
from assets.resources import DeltaStoreResource, MlflowResource
from assets.tracking import TrackedRun, finish, lineage_tags, log_metrics, start_run
from cpt.delta_store import partition_predicate
from cpt.hashing import config_hash
from cpt.landscape.regimes import RANDOM
from cpt.laws.cmr import CmrOptions, analyse_cmr, cmr_law_at_bound, cmr_law_residual, trajectory_heldout_error
from cpt.laws.errors import LawFitError
from cpt.laws.ppl_law import PplLawOptions, PplObservations, SupportRegion, fit_ppl_law, ppl_optimum

PPL_LAW = dg.AssetKey(["laws", "ppl_law"])
CMR = dg.AssetKey(["laws", "cmr"])
FITS_TABLE = "laws/fits"
CHECK_PPL_QUALITY = "ppl_law_fit_quality"
CHECK_CMR_QUALITY = "cmr_fit_quality"

FITS_SCHEMA = pa.schema(
    [
        pa.field("law", pa.string()),  # ppl_law | cmr
        pa.field("fit_key", pa.string()),  # hash of (inputs, config): a rerun on the same inputs replaces its row
        pa.field("params", pa.string()),  # JSON: the fitted coefficients
        pa.field("quality", pa.string()),  # JSON: R², RMSE, held-out error, convergence
        pa.field("result", pa.string()),  # JSON: the full typed result
        pa.field("config", pa.string()),  # JSON: the fit options
        pa.field("input_versions", pa.string()),  # JSON: Delta versions of the pilot tables read
        pa.field("mlflow_run_id", pa.string()),
        pa.field("registered_model", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("dagster_run_id", pa.string()),
    ]
)


class PplLawConfig(dg.Config):
    """Options of the perplexity-aware law fit (recorded with it) and the quality gate."""

    sigma_kind: str = Field("std", description="σ as standard deviation (std) or variance (var)")
    ppl_space: str = Field("raw", description="statistics of raw PPL (raw) or of log-PPL (log)")
    n_bootstrap: int = Field(200, description="bootstrap refits over pilot runs for the intervals")
    ci_level: float = 0.9
    seed: int = 0
    max_heldout_relative_error: float = Field(
        0.05, description="gate: leave-one-run-out RMSE / mean loss must not exceed this"
    )
    registered_model: str = "cptdata-ppl-law"

    def options(self) -> PplLawOptions:
        return PplLawOptions(
            sigma_kind=self.sigma_kind, ppl_space=self.ppl_space, n_bootstrap=self.n_bootstrap, ci_level=self.ci_level
        )


class CmrConfig(dg.Config):
    """Options of the CMR analysis (recorded with it) and the quality gate."""

    lam: float = Field(1000.0, description="λ: weight of general against domain loss (the paper used 100–7000)")
    eps: float = Field(0.05, description="general-loss tolerance ε")
    relative_eps: bool = Field(False, description="ε as a fraction of L_gen0 instead of absolute")
    target_tokens: int = Field(256_000, description="the CPT budget the dataset is built for")
    n_bootstrap: int = 200
    seed: int = 0
    max_trajectory_rmse: float = Field(0.05, description="gate: largest RMSE of a trajectory fit (loss units)")
    holdout_fraction: float = Field(0.25, description="last share of each run's tokens held out to score the fits")
    max_heldout_rmse: float = Field(0.05, description="gate: RMSE of the trajectories at held-out checkpoints")
    max_cmr_law_residual: float = Field(0.1, description="gate: RMSE (in R) of the CMR law at its (T0, R) points")
    registered_model: str = "cptdata-cmr-law"

    def options(self) -> CmrOptions:
        return CmrOptions(lam=self.lam, eps=self.eps, relative_eps=self.relative_eps, n_bootstrap=self.n_bootstrap)


@dg.asset(
    key=PPL_LAW,
    deps=[REGIME_RUNS],
    group_name="laws",
    kinds={"scipy", "mlflow", "delta"},
    code_version="ppl-law-v1",
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_PPL_QUALITY,
            asset=PPL_LAW,
            blocking=True,
            description="The fit converged and its leave-one-run-out error is within the configured bound.",
        )
    ],
    description="The perplexity-aware data law L(μ, σ, D) fitted on the final domain losses of the regime pilots: "
    "parameters with bootstrap intervals, R², RMSE, leave-one-run-out error, and the optimal landscape (μ̂, σ̂).",
)
def ppl_law(
    context: dg.AssetExecutionContext, config: PplLawConfig, delta: DeltaStoreResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    store = delta.store()
    version = require_version(store, REGIME_RUNS_TABLE)
    final = _final_points(store.read(REGIME_RUNS_TABLE, version))
    observations, reference = _observations(final, config)
    try:
        options = config.options()
        fit = fit_ppl_law(observations, options, np.random.default_rng(config.seed))
        region = SupportRegion.around(observations.mu, observations.sigma)
        optimum = ppl_optimum(fit.params, region, reference=reference)
    except (LawFitError, ValueError) as exc:  # ValueError: invalid options
        raise dg.Failure(f"the perplexity-aware law cannot be fitted on {len(final)} pilot runs: {exc}") from exc
    result = {"fit": fit.to_json(), "optimum": optimum.to_json(), "runs": list(observations.run_ids)}
    mean_loss = float(np.mean(observations.loss))
    heldout = (fit.loo_rmse or math.nan) / mean_loss
    quality = {
        "r2": fit.r2,
        "rmse": fit.rmse,
        "loo_rmse": fit.loo_rmse,
        "loo_relative_error": heldout,
        "converged": fit.converged,
        "n_runs": fit.n_runs,
        "n_bootstrap_ok": fit.n_bootstrap_ok,
    }

    from cpt.laws.plots import ppl_fit_png, ppl_surface_png

    plots = {
        "observed_vs_predicted.png": ppl_fit_png(fit, observations.loss),
        "loss_surface.png": ppl_surface_png(
            fit, observations.mu, observations.sigma, float(np.median(observations.D)), optimum
        ),
    }
    inputs = {REGIME_RUNS_TABLE: version}
    registered_before = _registered_version(store, _fit_key("ppl_law", inputs, config))
    tracked, model_version = _track(
        context,
        mlflow,
        run_name="ppl_law",
        inputs=inputs,
        params={"options": config.model_dump(), "n_points": fit.n_points},
        metrics={k: v for k, v in quality.items() if isinstance(v, (int, float)) and v is not None},
        result=result,
        plots=plots,
        model=None if registered_before else ("ppl", config.registered_model),
    )
    model_version = registered_before or model_version
    delta_version = _record(
        context,
        store,
        PPL_LAW,
        "ppl_law",
        fit.params.as_dict(),
        quality,
        result,
        config,
        inputs,
        tracked,
        config.registered_model,
        model_version,
    )
    passed = fit.converged and heldout <= config.max_heldout_relative_error
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(FITS_TABLE), delta_version, FITS_SCHEMA, 1)
        | {
            "mlflow_run": mlflow.run_link(tracked.experiment_id, tracked.run_id),
            "registered_model": f"models:/{config.registered_model}/{model_version}",
            "pilot_runs": fit.n_runs,
            "r2": fit.r2,
            "rmse": fit.rmse,
            "loo_rmse": fit.loo_rmse if fit.loo_rmse is not None else math.nan,
            "loo_relative_error": heldout,
            "converged": fit.converged,
            "params": dg.MetadataValue.json(fit.params.as_dict()),
            "intervals": dg.MetadataValue.json({k: list(v) for k, v in fit.ci.items()}),
            "optimum_mu": optimum.mu,
            "optimum_sigma": optimum.sigma,
            "optimum_on_boundary": optimum.on_boundary,
            "warnings": dg.MetadataValue.json(list(fit.warnings)),
            "input_versions": dg.MetadataValue.json(inputs),
            **{f"plot_{name[:-4]}": _image(png) for name, png in plots.items()},
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_PPL_QUALITY,
                passed=bool(passed),
                metadata={
                    "loo_relative_error": heldout,
                    "bound": config.max_heldout_relative_error,
                    "converged": fit.converged,
                },
            )
        ],
    )


@dg.asset(
    key=CMR,
    deps=[MIXTURE_RUNS],
    group_name="laws",
    kinds={"scipy", "mlflow", "delta"},
    code_version="cmr-v1",
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_CMR_QUALITY,
            asset=CMR,
            blocking=True,
            description="Trajectory fits within their RMSE bound, in sample and at held-out later checkpoints; the "
            "CMR law fitted, its exponent determined (not on a bound) and close to its (T0, R) points.",
        )
    ],
    description="The critical-mixture-ratio analysis of the mixture pilots: loss trajectories per ratio, T0, the "
    "tolerance and feasible sets, the CMR, the CMR law and the predicted CMR at the target budget, with a λ × ε "
    "sensitivity table.",
)
def cmr(
    context: dg.AssetExecutionContext, config: CmrConfig, delta: DeltaStoreResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    store = delta.store()
    version = require_version(store, MIXTURE_RUNS_TABLE)
    trajectories, L_dom0, L_gen0, t_max = _trajectories(store.read(MIXTURE_RUNS_TABLE, version))
    try:
        analysis = analyse_cmr(
            trajectories,
            L_dom0,
            L_gen0,
            t_max,
            config.options(),
            target_tokens=config.target_tokens,
            rng=np.random.default_rng(config.seed),
        )
        heldout = trajectory_heldout_error(trajectories, L_dom0, L_gen0, config.holdout_fraction)
    except (LawFitError, ValueError) as exc:  # ValueError: invalid options
        raise dg.Failure(f"the CMR analysis failed on {len(trajectories)} mixture ratios: {exc}") from exc
    result = analysis.to_json() | {"heldout": heldout.to_json()}
    worst_rmse = max(max(f.dom_rmse, f.gen_rmse) for f in analysis.fits)
    law_residual = cmr_law_residual(analysis)
    law_at_bound = cmr_law_at_bound(analysis.cmr_law)
    problems = [
        *([f"a trajectory fit has RMSE {worst_rmse:.4f}"] if worst_rmse > config.max_trajectory_rmse else []),
        *([f"held-out RMSE {heldout.rmse:.4f}"] if heldout.rmse > config.max_heldout_rmse else []),
        *(["no CMR law: fewer than 3 ratios have a critical point"] if analysis.cmr_law is None else []),
        *(
            ["the CMR law's exponent sits on its bound (the (T0, R) points do not determine it)"]
            if law_at_bound
            else []
        ),
        *(
            [f"the CMR law misses its points by {law_residual:.3f} in R"]
            if law_residual is not None and law_residual > config.max_cmr_law_residual
            else []
        ),
    ]
    quality = {
        "max_trajectory_rmse": worst_rmse,
        "heldout_rmse": heldout.rmse,
        "cmr_law_residual": law_residual,
        "cmr_law_exponent_at_bound": law_at_bound,
        "cmr_law_fitted": analysis.cmr_law is not None,
        "n_ratios": len(analysis.fits),
        "cmr": analysis.cmr,
        "predicted_cmr": analysis.predicted_cmr,
    }

    from cpt.laws.plots import cmr_law_png, cmr_trajectories_png

    plots = {"trajectories.png": cmr_trajectories_png(analysis, trajectories), "cmr_law.png": cmr_law_png(analysis)}
    inputs = {MIXTURE_RUNS_TABLE: version}
    params = {"cmr_law": result["cmr_law"], "cmr": analysis.cmr, "predicted_cmr": analysis.predicted_cmr}
    metrics = {
        "max_trajectory_rmse": worst_rmse,
        "heldout_rmse": heldout.rmse,
        "cmr": analysis.cmr,
        "L_dom0": L_dom0,
        "L_gen0": L_gen0,
        **({"predicted_cmr": analysis.predicted_cmr} if analysis.predicted_cmr is not None else {}),
    }
    registered_before = _registered_version(store, _fit_key("cmr", inputs, config))
    model = ("cmr", config.registered_model) if analysis.cmr_law is not None and not registered_before else None
    tracked, model_version = _track(
        context,
        mlflow,
        run_name="cmr",
        inputs=inputs,
        params={"options": config.model_dump(), "t_max": t_max, "ratios": sorted(trajectories)},
        metrics=metrics,
        result=result,
        plots=plots,
        model=model,
    )
    delta_version = _record(
        context,
        store,
        CMR,
        "cmr",
        params,
        quality,
        result,
        config,
        inputs,
        tracked,
        config.registered_model if model or registered_before else "",
        model_version,
    )
    return dg.MaterializeResult(
        metadata=delta_metadata(store.table_uri(FITS_TABLE), delta_version, FITS_SCHEMA, 1)
        | {
            "mlflow_run": mlflow.run_link(tracked.experiment_id, tracked.run_id),
            "registered_model": f"models:/{config.registered_model}/{model_version}"
            if model_version
            else "not registered",
            "cmr": analysis.cmr,
            "predicted_cmr": analysis.predicted_cmr if analysis.predicted_cmr is not None else math.nan,
            "target_tokens": config.target_tokens,
            "t_max": t_max,
            "tolerance_set": dg.MetadataValue.json(list(analysis.tolerance_set)),
            "feasible_set": dg.MetadataValue.json(list(analysis.feasible_set)),
            "max_trajectory_rmse": worst_rmse,
            "heldout_rmse": heldout.rmse,
            "heldout_by_ratio": dg.MetadataValue.json(heldout.to_json()["per_ratio"]),
            "cmr_law": dg.MetadataValue.json(result["cmr_law"]),
            "cmr_law_residual": law_residual if law_residual is not None else math.nan,
            "t0_by_ratio": dg.MetadataValue.json({str(f.ratio): [f.t0, f.t0_kind] for f in analysis.fits}),
            "sensitivity": _sensitivity_markdown(analysis),
            "notes": dg.MetadataValue.json(list(analysis.notes)),
            "input_versions": dg.MetadataValue.json(inputs),
            **{f"plot_{name[:-4]}": _image(png) for name, png in plots.items()},
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_CMR_QUALITY,
                passed=not problems,
                metadata={
                    "problems": dg.MetadataValue.json(problems),
                    "max_trajectory_rmse": worst_rmse,
                    "heldout_rmse": heldout.rmse,
                    "cmr_law_residual": law_residual if law_residual is not None else math.nan,
                },
                description="; ".join(problems) or None,
            )
        ],
    )


def _comparable(table: pa.Table, name: str) -> pa.Table:
    """The pilot rows, refused unless every run used the same base model, scores version and held-out set."""
    if table.num_rows == 0:
        raise dg.Failure(f"{name} is empty: backfill its partitions first")
    for column in ("model_revision", "scores_version", "eval_set"):
        values = set(table[column].to_pylist())
        if len(values) != 1:
            raise dg.Failure(
                f"{name} mixes pilot runs with different {column} ({sorted(map(str, values))}): they are not "
                "comparable; rerun the stale partitions (a backfill of all partitions) before fitting"
            )
    return table


def _final_points(table: pa.Table) -> pa.Table:
    table = _comparable(table, REGIME_RUNS_TABLE)
    final = table.filter(table["is_final"])
    if final.num_rows == 0:
        raise dg.Failure(f"{REGIME_RUNS_TABLE} holds no finished pilot run: backfill pilots/regime_runs first")
    return final


def _observations(final: pa.Table, config: PplLawConfig) -> tuple[PplObservations, tuple[float, float] | None]:
    """One observation per regime run: (μ, σ) of what it trained on, D the tokens it trained on, its domain loss."""
    log = config.ppl_space == "log"
    mu = np.asarray(final["log_mu" if log else "mu"].to_numpy(), dtype=np.float64)
    sigma = np.asarray(final["log_sigma" if log else "sigma"].to_numpy(), dtype=np.float64)
    if config.sigma_kind == "var":
        sigma = sigma**2
    obs = PplObservations(
        mu=mu,
        sigma=sigma,
        D=np.asarray(final["tokens"].to_numpy(), dtype=np.float64),
        loss=np.asarray(final["domain_loss"].to_numpy(), dtype=np.float64),
        run_ids=tuple(final["partition"].to_pylist()),
    )
    # the reference landscape for the predicted gain: the random subset (the papers' baseline), at its largest size
    random_rows = [i for i, r in enumerate(final["regime"].to_pylist()) if r == RANDOM]
    largest = max(random_rows, key=lambda i: obs.D[i], default=None)
    reference = None if largest is None else (float(mu[largest]), float(sigma[largest]))
    return obs, reference


def _trajectories(table: pa.Table):
    """{R: (T, L_dom, L_gen)} per mixture run, the losses before CPT (T = 0, the same base model) and T_max."""
    table = _comparable(table, MIXTURE_RUNS_TABLE)
    budgets = set(table["size_tokens"].to_pylist())
    if len(budgets) != 1:
        raise dg.Failure(f"{MIXTURE_RUNS_TABLE} mixes runs to different T_max {sorted(budgets)}: rerun all ratios")
    out = {}
    for key in sorted(set(table["partition"].to_pylist()), key=Fraction):
        rows = table.filter(pc.equal(table["partition"], key)).sort_by("tokens")
        out[float(Fraction(key))] = tuple(
            np.asarray(rows[c].to_numpy(), dtype=np.float64) for c in ("tokens", "domain_loss", "general_loss")
        )
    start = table.filter(pc.equal(table["tokens"], 0))
    if start.num_rows == 0:
        raise dg.Failure(f"{MIXTURE_RUNS_TABLE} has no T = 0 evaluation: the losses before CPT are unknown")
    t_max = float(budgets.pop())
    return out, float(pc.mean(start["domain_loss"]).as_py()), float(pc.mean(start["general_loss"]).as_py()), t_max


def _track(context, mlflow: MlflowResource, *, run_name, inputs, params, metrics, result, plots, model):
    """One MLflow run holding the fit: params, metrics, result JSON, plots and (optionally) the registered model."""
    import mlflow as mlflow_lib

    import cpt
    from cpt.laws.serving import CmrLawModel, PplLawModel

    tracked = start_run(mlflow, "laws", run_name, lineage_tags(context, inputs), params)
    client = mlflow.client()
    ok = False
    model_version = ""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fit_path = Path(tmp, "fit.json")
            fit_path.write_text(json.dumps(result, indent=2, default=str))
            for name, png in plots.items():
                Path(tmp, name).write_bytes(png)
            client.log_artifacts(tracked.run_id, tmp)
            log_metrics(mlflow, tracked, [metrics | {"step": 0}], step_key="step")
            if model is not None:
                kind, registered = model
                python_model = PplLawModel() if kind == "ppl" else CmrLawModel()
                mlflow_lib.set_tracking_uri(mlflow.tracking_uri)
                mlflow_lib.set_registry_uri(mlflow.registry_uri or mlflow.tracking_uri)
                with mlflow_lib.start_run(run_id=tracked.run_id):
                    info = mlflow_lib.pyfunc.log_model(
                        name=f"{kind}_law",
                        python_model=python_model,
                        artifacts={"fit": str(fit_path)},
                        code_paths=[str(Path(cpt.__file__).parent)],
                        signature=False,  # the model checks its columns itself and takes ints or floats
                        pip_requirements=_pip_requirements(),
                        registered_model_name=registered,
                    )
                model_version = str(info.registered_model_version)
        ok = True
    finally:
        finish(mlflow, tracked, ok)
    return tracked, model_version


def _pip_requirements() -> list[str]:
    """What the served model imports (``cpt`` itself travels in ``code_paths``), at the versions running now."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "numpy", "pandas", "scipy", "threadpoolctl")]


def _fit_key(law: str, inputs: dict, config) -> str:
    return config_hash({"law": law, "inputs": inputs, "config": config.model_dump()})


def _registered_version(store, fit_key: str) -> str:
    """The model version registered by an earlier fit of the same inputs and config ("" if none): a rerun of an
    identical (seeded, deterministic) fit records a new MLflow run but does not register a duplicate model."""
    if not store.exists(FITS_TABLE):
        return ""
    rows = store.read(FITS_TABLE, filters=[("fit_key", "=", fit_key)], columns=["model_version"])
    return rows["model_version"][0].as_py() if rows.num_rows else ""


def _record(
    context, store, key, law, params, quality, result, config, inputs, tracked: TrackedRun, registered, model_version
) -> int:
    """Replace this fit's row of ``laws/fits`` (same inputs and config → same key → no duplicate)."""
    fit_key = _fit_key(law, inputs, config)
    row = {
        "law": law,
        "fit_key": fit_key,
        "params": json.dumps(params, default=str),
        "quality": json.dumps(quality, default=str),
        "result": json.dumps(result, default=str),
        "config": json.dumps(config.model_dump()),
        "input_versions": json.dumps(inputs),
        "mlflow_run_id": tracked.run_id,
        "registered_model": registered,
        "model_version": model_version,
        "dagster_run_id": context.run.run_id,
    }
    commit = commit_info(context, key, config.model_dump(), inputs)
    table = pa.Table.from_pylist([row], schema=FITS_SCHEMA)
    return store.overwrite(FITS_TABLE, table, commit, predicate=partition_predicate({"law": law, "fit_key": fit_key}))


def _sensitivity_markdown(analysis) -> dg.MetadataValue:
    lines = "".join(
        f"| {c.lam:g} | {c.eps:g} | {list(c.feasible_set)} | {c.cmr} | "
        f"{'—' if c.predicted_cmr is None else f'{c.predicted_cmr:.3f}'} |\n"
        for c in analysis.sensitivity
    )
    return dg.MetadataValue.md("| λ | ε | feasible ratios | CMR | predicted CMR |\n|---|---|---|---|---|\n" + lines)


def _image(png: bytes) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![plot](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")
