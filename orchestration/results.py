"""The results block ``cptdata demo`` ends with: what the build holds now, read back from its tables (so a rerun that
skipped stages shows the same answers), in a few lines a newcomer can act on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from assets.law_publishing import CurrentFit, current_fit
from cpt.delta_store import DeltaStore


def _fit(store: DeltaStore, law: str) -> CurrentFit | None:
    try:
        return current_fit(store, law)
    except Exception:  # no fit yet (a dg.Failure): the block says so
        return None


def _read(store: DeltaStore, table: str, columns: Sequence[str] | None = None) -> tuple[int | None, pa.Table | None]:
    version = store.version(table)
    return (version, None) if version is None else (version, store.read(table, version, columns=list(columns or [])))


def corpus_lines(store: DeltaStore) -> list[str]:
    _, scores = _read(store, "scores/chunk_perplexity", ["role", "split", "n_tokens"])
    _, docs = _read(store, "corpus/documents", ["role"])
    if docs is None:
        return ["corpus: nothing ingested"]
    out = []
    for role in ("domain", "general"):
        n_docs = int(pc.sum(pc.equal(docs["role"], role)).as_py() or 0)
        line = f"{role}: {n_docs:,} documents"
        if scores is not None:
            mine = scores.filter(pc.equal(scores["role"], role))
            train = mine.filter(pc.equal(mine["split"], "train"))
            line += (
                f", {mine.num_rows:,} chunks, {int(pc.sum(mine['n_tokens']).as_py() or 0):,} tokens "
                f"({int(pc.sum(train['n_tokens']).as_py() or 0):,} train)"
            )
        out.append(line)
    return ["corpus: " + "; ".join(out)]


def landscape_lines(store: DeltaStore) -> list[str]:
    version, hist = _read(store, "landscape/histograms", ["role", "source", "split", "bin", "q10", "q50", "q90"])
    if hist is None:
        return ["landscape: not built"]
    rows = hist.filter(pc.and_(pc.equal(hist["source"], "*"), pc.equal(hist["bin"], 0))).to_pylist()
    parts = [
        f"{r['role']} {r['split']} median PPL {r['q50']:.1f} (p10 {r['q10']:.1f}, p90 {r['q90']:.1f})"
        for r in sorted(rows, key=lambda r: (r["role"], r["split"]))
    ]
    return [f"landscape (v{version}): " + "; ".join(parts)]


def ppl_answer_lines(store: DeltaStore) -> list[str]:
    fit = _fit(store, "ppl_law")
    if fit is None:
        return ["target landscape: no PPL-law fit"]
    a, optimum = fit.answer, (fit.result.get("optimum") or {})
    line = f"target landscape: μ {a['mu']:.4g}, σ {a['sigma']:.4g} ({fit.config.get('ppl_space', 'raw')} PPL); "
    line += f"basis: {a['basis']}"
    if a["basis"] == "law optimum" and optimum.get("mu_ci"):
        mu_ci, sigma_ci = optimum["mu_ci"], optimum["sigma_ci"]
        line += f"; 90 % interval μ {mu_ci[0]:.4g}–{mu_ci[1]:.4g}, σ {sigma_ci[0]:.4g}–{sigma_ci[1]:.4g}"
    flags = []
    if optimum.get("on_boundary"):
        flags.append(f"optimum on the boundary ({', '.join(optimum.get('boundary_sides') or [])})")
    flags.append("law gate passed" if fit.gate_passed else f"law gate FAILED (law not promoted; basis: {a['basis']})")
    out = [line, f"  flags: {'; '.join(flags)}", f"  why: {'; '.join(a.get('reasons') or [])}"]
    out += [f"  beat: {b}" for b in a.get("baselines") or []]
    followup = a.get("followup")
    if followup:
        state = "next round needed" if followup["needed"] else "stopped"
        out.append(f"  follow-up pilots: {followup['rounds_done']} round(s); {state}: {followup['reason']}")
    out.append(f"  MLflow run {fit.mlflow_run_id} (plots: observed_vs_predicted.png, loss_surface.png)")
    return out


def cmr_answer_lines(store: DeltaStore) -> list[str]:
    fit = _fit(store, "cmr")
    if fit is None:
        return ["CMR: no fit"]
    a = fit.answer
    ratio = "none tolerable" if a.get("ratio") is None else f"{a['ratio']:.3f}"
    line = f"CMR: {ratio} at {a.get('tokens', math.nan):,.0f} tokens; basis: {a.get('basis')}"
    if a.get("interval"):
        line += f"; {a.get('level') or 0.9:.0%} interval {a['interval'][0]:.3f}–{a['interval'][1]:.3f}"
    flags = [f"gate {'passed' if fit.gate_passed else 'FAILED'}"]
    if a.get("extrapolated"):
        flags.append("extrapolated beyond the pilots' budget")
    return [
        line,
        f"  flags: {'; '.join(flags)}",
        f"  why: {'; '.join(a.get('reasons') or []) or '—'}",
        f"  MLflow run {fit.mlflow_run_id} (plots: trajectories.png, cmr_law.png)",
    ]


def dataset_lines(store: DeltaStore) -> list[str]:
    version, rows = _read(store, "dataset/cpt_mixture", ["role", "n_tokens"])
    if rows is None:
        return ["dataset: not built"]
    tokens = int(pc.sum(rows["n_tokens"]).as_py() or 0)
    domain = int(pc.sum(rows.filter(pc.equal(rows["role"], "domain"))["n_tokens"]).as_py() or 0)
    share = domain / tokens if tokens else math.nan
    exports = f"{store.root_uri.rstrip('/')}/dataset/cpt_mixture_exports/v{version}/"
    return [
        f"dataset: dataset/cpt_mixture v{version}: {rows.num_rows:,} chunks, {tokens:,} tokens, domain share "
        f"{share:.3f}; exports {exports}"
    ]


def confirmation_lines(store: DeltaStore) -> list[str]:
    _, rows = _read(store, "validation/confirmations", ["claim", "verdict", "measured"])
    if rows is None:
        return ["confirmations: not run"]
    out = ["confirmations (the papers' claims on this build):"]
    out += [f"  {r['claim']}: {r['verdict'].upper()} — {r['measured']}" for r in rows.to_pylist()]
    return out


def plot_lines(store: DeltaStore) -> list[str]:
    _, hist = _read(store, "landscape/histograms", ["scores_version"])
    if hist is None or hist.num_rows == 0:
        return []
    version = pc.max(hist["scores_version"]).as_py()
    return [f"plots: {store.table_uri('landscape/histograms')}/_plots/landscape-v{version}.png; the fits' in MLflow"]


def results_block(store: DeltaStore, failed: Sequence[str], findings: Sequence[str], uis: dict[str, str]) -> list[str]:
    """Every line of the block, without the prefix."""
    lines = ["RESULTS"]
    for part in (corpus_lines, landscape_lines, ppl_answer_lines, cmr_answer_lines, dataset_lines):
        lines += part(store)
    lines += confirmation_lines(store)
    lines.append(f"blocking gates that failed: {', '.join(failed) if failed else 'none'}")
    if findings:
        lines.append(f"checks that failed without blocking (reported, not fatal): {', '.join(findings)}")
    lines += plot_lines(store)
    lines.append(
        f"open the Dagster UI on this data: make ui  → {uis['dagster']}; MLflow: make mlflow-ui  → {uis['mlflow']}; "
        "lineage: .venv/bin/cptdata audit"
    )
    return lines


def stage_table(timings: Sequence[tuple[str, float]]) -> list[str]:
    total = sum(s for _, s in timings)
    width = max((len(n) for n, _ in timings), default=5)
    lines = [f"{'stage':<{width}}  seconds"]
    lines += [f"{name:<{width}}  {seconds:7.1f}" for name, seconds in timings]
    lines.append(f"{'total':<{width}}  {total:7.1f}  ({total / 60:.1f} min)")
    return lines
