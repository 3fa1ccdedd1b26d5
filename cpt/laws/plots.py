"""Plots of the fitted laws as PNG bytes (matplotlib's object API: no pyplot, no global state)."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cpt.laws.cmr import CmrAnalysis
from cpt.laws.ppl_law import PplLawFit, PplOptimum, g


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def ppl_fit_png(fit: PplLawFit, observed: np.ndarray) -> bytes:
    """Observed against predicted domain loss: the fit on all runs, and each run predicted with it held out."""
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    lo, hi = float(np.nanmin(observed)), float(np.nanmax(observed))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="y = x")
    ax.scatter(observed, fit.predicted, s=22, label=f"fitted (R² {fit.r2:.3f}, RMSE {fit.rmse:.4f})")
    if np.isfinite(fit.loo_predicted).any():
        label = f"held out, leave-one-run-out (RMSE {fit.loo_rmse:.4f})"
        ax.scatter(observed, fit.loo_predicted, s=28, marker="x", label=label)
    ax.set_xlabel("observed domain test loss")
    ax.set_ylabel("predicted")
    ax.set_title("Perplexity-aware law: observed vs predicted")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def ppl_surface_png(fit: PplLawFit, mu: np.ndarray, sigma: np.ndarray, D: float, optimum: PplOptimum) -> bytes:
    """The fitted loss over (μ, σ) at budget ``D``, with the pilot points, the support region and the optimum."""
    region = optimum.region
    mus = np.linspace(region.mu_min, region.mu_max, 120)
    sigmas = np.linspace(region.sigma_min, region.sigma_max, 120)
    loss = fit.params.predict(mus[None, :], sigmas[:, None], D)
    fig = Figure(figsize=(5.6, 4.6))
    ax = fig.add_subplot()
    contour = ax.contourf(mus, sigmas, loss, levels=20, cmap="viridis")
    fig.colorbar(contour, ax=ax, label=f"predicted loss at D = {D:,.0f} tokens")
    ax.scatter(mu, sigma, c="white", edgecolors="black", s=26, label="pilot runs")
    tag = " (on the region's boundary)" if optimum.on_boundary else ""
    ax.scatter([optimum.mu], [optimum.sigma], marker="*", c="red", s=180, label=f"optimum{tag}")
    ax.set_xlabel("μ (mean chunk PPL)")
    ax.set_ylabel("σ (std of chunk PPL)")
    ax.set_title(f"Loss surface; g max {float(g(fit.params, optimum.mu, optimum.sigma)):.3f}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def cmr_trajectories_png(
    analysis: CmrAnalysis, trajectories: Mapping[float, tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> bytes:
    """The CMR paper's view: ΔL_gen against ΔL_dom along each ratio's run, observed points and fitted curves."""
    fig = Figure(figsize=(6.0, 4.6))
    ax = fig.add_subplot()
    ax.axhline(analysis.options.eps, color="grey", ls="--", lw=1, label=f"tolerance ε = {analysis.options.eps:g}")
    for fit in analysis.fits:
        T, dom, gen = (np.asarray(a, dtype=np.float64) for a in trajectories[fit.ratio])
        line = ax.plot(dom - analysis.L_dom0, gen - analysis.L_gen0, "o", ms=3)[0]
        grid = np.geomspace(max(T[T > 0].min(), 1.0), analysis.t_max, 100)
        ax.plot(fit.dom.value(grid), fit.gen.value(grid), color=line.get_color(), lw=1.2, label=f"R = {fit.ratio:.3g}")
    ax.set_xlabel("ΔL_dom (domain loss − before CPT)")
    ax.set_ylabel("ΔL_gen (general loss − before CPT)")
    ax.set_title("Mixture pilots: general vs domain loss change")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def cmr_law_png(analysis: CmrAnalysis) -> bytes:
    """The (T0, R) points, the fitted CMR law and its prediction at the target budget."""
    fig = Figure(figsize=(5.6, 4.4))
    ax = fig.add_subplot()
    if analysis.cmr_law_points:
        t0, r = np.array(analysis.cmr_law_points).T
        ax.scatter(t0, r, s=28, label="(T0, R) of the pilot ratios")
    right = max(analysis.t_max, analysis.target_tokens or 0.0)
    if analysis.cmr_law is not None:
        grid = np.geomspace(right / 1e3, right, 200)
        ax.plot(grid, analysis.cmr_law.predict(grid), label="CMR law R(T) = α4·T^s4 + β3")
    if analysis.predicted_cmr is not None and analysis.target_tokens:
        label = f"predicted CMR {analysis.predicted_cmr:.3f} at T = {analysis.target_tokens:,.0f}"
        ax.scatter([analysis.target_tokens], [analysis.predicted_cmr], marker="*", c="red", s=160, label=label)
    if analysis.tolerance_bound is not None:
        ax.axhline(analysis.tolerance_bound, color="grey", ls="--", lw=1, label="tolerance bound on R")
    ax.set_xscale("log")
    ax.set_xlabel("CPT tokens T")
    ax.set_ylabel("mixture ratio R")
    ax.set_title(f"Critical mixture ratio (λ = {analysis.options.lam:g}, ε = {analysis.options.eps:g})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
