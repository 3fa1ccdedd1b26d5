"""Plots of the fitted laws as PNG bytes (matplotlib's object API: no pyplot, no global state)."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from cpt.laws.cmr.analysis import CmrAnalysis
from cpt.laws.cmr.answer import CmrAnswer
from cpt.laws.ppl.optimum import region_grid
from cpt.laws.reports import PplReport


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def ppl_fit_png(report: PplReport) -> bytes:
    """Observed against predicted domain loss: the fit on all runs, and each regime predicted with it held out, by
    the landscape law and by the size-only law (the null it must beat)."""
    fit, observed = report.fit, report.observations.loss
    fig = Figure(figsize=(5.4, 4.8))
    ax = fig.add_subplot()
    lo, hi = float(np.nanmin(observed)), float(np.nanmax(observed))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="y = x")
    ax.scatter(observed, fit.predicted, s=22, label=f"landscape law, fitted (R² {fit.r2:.3f})")
    c = report.comparison
    ax.scatter(
        observed,
        fit.heldout_predicted,
        s=28,
        marker="x",
        label=f"landscape law, regime held out ({c.ppl_heldout_rmse:.4f})",
    )
    ax.scatter(
        observed,
        report.size_fit.heldout_predicted,
        s=22,
        marker="+",
        label=f"size-only law, regime held out ({c.size_heldout_rmse:.4f})",
    )
    ax.set_xlabel("observed domain test loss")
    ax.set_ylabel("predicted")
    ax.set_title(f"Perplexity-aware law vs the size-only law (gain {c.gain:.4f})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def ppl_surface_png(report: PplReport) -> bytes:
    """The fitted loss over the search region at the largest pilot size, with the reachable boundary, the pilots,
    the near-optimal set, the optimum and the answer."""
    optimum, answer, region = report.optimum, report.answer, report.region
    grid = region_grid(region)
    obs = report.observations
    (mu_lo, mu_hi), (s_lo, s_hi) = region.trust.mu_range, region.trust.sigma_range
    mu_lo, mu_hi = min(mu_lo, obs.mu.min()), max(mu_hi, obs.mu.max())
    s_lo, s_hi = min(s_lo, obs.sigma.min()), max(s_hi, obs.sigma.max())
    mus = np.linspace(mu_lo, mu_hi, 160)
    sigmas = np.linspace(s_lo, s_hi, 160)
    loss = report.fit.params.predict(mus[None, :], sigmas[:, None], optimum.D_ref)
    fig = Figure(figsize=(6.0, 4.8))
    ax = fig.add_subplot()
    contour = ax.contourf(mus, sigmas, loss, levels=20, cmap="viridis", alpha=0.85)
    fig.colorbar(contour, ax=ax, label=f"predicted loss at D = {optimum.D_ref:,.0f} tokens")
    hull = np.vstack([region.trust.vertices, region.trust.vertices[:1]])
    ax.plot(hull[:, 0], hull[:, 1], color="white", lw=0.8, ls=":", label="pilot hull (trust region)")
    if region.reachable is not None:  # what DOS can reach from the pool at the selection size
        reach = region.reachable
        ax.plot(
            reach.mu, reach.sigma_lo, color="cyan", lw=0.9, ls="--", label=f"reachable by DOS ({reach.count} chunks)"
        )
        ax.plot(reach.mu, reach.sigma_hi, color="cyan", lw=0.9, ls="--")
    ax.plot(grid.mu, grid.sigma[:, 0], color="white", lw=1.2, label="search region (reachable ∩ trust region)")
    ax.plot(grid.mu, grid.sigma[:, -1], color="white", lw=1.2)
    if optimum.loss_ci is not None:
        surface = report.fit.params.predict(grid.mu[:, None], grid.sigma, optimum.D_ref)
        near = surface <= optimum.loss_ci[1]
        ax.scatter(
            np.broadcast_to(grid.mu[:, None], near.shape)[near][::7],
            grid.sigma[near][::7],
            s=2,
            c="orange",
            label="near-optimal set",
        )
    ax.scatter(obs.mu, obs.sigma, c="white", edgecolors="black", s=26, label="pilot runs")
    tag = " (on the boundary)" if optimum.on_boundary else ""
    ax.scatter([optimum.mu], [optimum.sigma], marker="*", c="red", s=180, label=f"law optimum{tag}")
    ax.scatter(
        [answer.mu],
        [answer.sigma],
        marker="D",
        facecolors="none",
        edgecolors="red",
        s=90,
        label=f"answer ({answer.basis})",
    )
    ax.set_xlim(mu_lo, mu_hi)
    ax.set_ylim(s_lo, s_hi)
    ax.set_xlabel("μ (mean chunk PPL)")
    ax.set_ylabel("σ (spread of chunk PPL)")
    ax.set_title("Loss surface over the landscapes the pool can reach", fontsize=9)
    ax.legend(fontsize=6, loc="best")
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


def cmr_law_png(analysis: CmrAnalysis, answer: CmrAnswer) -> bytes:
    """The (T0, R) points, the fitted CMR law, the measured CMR at the pilots' budget and the answer."""
    fig = Figure(figsize=(5.8, 4.4))
    ax = fig.add_subplot()
    if analysis.cmr_law_points:
        t0, r = np.array(analysis.cmr_law_points).T
        ax.scatter(t0, r, s=28, label="(T0, R) of the pilot ratios")
    right = max(analysis.t_max, answer.tokens)
    left = min([right / 30, *(t for t, _ in analysis.cmr_law_points)]) / 2
    if analysis.cmr_law is not None:
        grid = np.geomspace(left, right, 200)
        state = "determined" if analysis.answer_model.law_determined else "not determined"
        ax.plot(grid, analysis.cmr_law.predict(grid), label=f"CMR law R(T) = α4·T^s4 + β3 ({state})")
    ax.scatter(
        [analysis.t_max],
        [analysis.cmr],
        marker="s",
        c="black",
        s=40,
        label=f"CMR measured at T_max: {analysis.cmr:.3f}",
    )
    if answer.ratio is not None:
        err = None
        if answer.interval is not None:
            lo, hi = answer.interval  # a percentile interval need not hold the point answer: no negative bars
            err = [[max(answer.ratio - lo, 0.0)], [max(hi - answer.ratio, 0.0)]]
        label = f"answer {answer.ratio:.3f} at {answer.tokens:,.0f} tokens (basis: {answer.basis})"
        ax.errorbar([answer.tokens], [answer.ratio], yerr=err, fmt="*", c="red", ms=14, capsize=4, label=label)
    if analysis.tolerance is not None:
        ax.axhline(analysis.tolerance[1], color="grey", ls="--", lw=1, label="tolerance bound on R at T_max")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(left, right * 1.5)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("CPT tokens T")
    ax.set_ylabel("mixture ratio R")
    ax.set_title(f"Critical mixture ratio (λ = {analysis.options.lam:g}, ε = {analysis.options.eps:g})", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)
