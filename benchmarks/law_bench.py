"""Bootstrap refits of the perplexity-aware law: the platform fitter against a naive 7-parameter fit.

The platform refit (``cpt.laws.ppl.law.bootstrap_ppl_law``): L-BFGS-B with an analytic gradient on standardised
features, warm-started from the full fit. The baseline: L-BFGS-B on the same Huber objective in the raw parameters
``[E, log D_c, α0, α1, β0, β1, αD]``, finite-difference gradients, one fixed start, no variable projection — what a
first notebook does. Both see the same resamples of the same 30 synthetic points (10 (μ, σ) regimes × 3 sizes).
It prints seconds, refits/s, the speed ratio, and how often the baseline reaches the platform's optimum.

Then the CMR analysis at the quick-start's pilot shape (7 ratios × 12 checkpoints): its fits alone, and with the
200-replicate bootstrap whose checkpoint noise is calibrated as AR(1) by simulation — what the honest intervals cost.

    .venv/bin/python -m benchmarks.law_bench
    BENCH_REFITS=200 .venv/bin/python -m benchmarks.law_bench   (a quicker look)
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
from scipy.optimize import minimize

from cpt.laws._common import single_threaded_blas
from cpt.laws.ppl.law import (
    PplLawOptions,
    PplLawParams,
    bootstrap_ppl_law,
    fit_ppl_law,
    sample_observations,
)

TRUE = PplLawParams(E=2.0, D_c=2100.0, alpha0=0.5335, alpha1=-0.01335, beta0=0.5737, beta1=-0.00869, alpha_D=0.3)
REGIMES = [(6, 2), (8, 5), (10, 3), (12, 8), (15, 5), (18, 12), (22, 6), (26, 15), (32, 9), (40, 18)]
SIZES = [1e8, 3e8, 1e9]
N_REFITS = int(os.environ.get("BENCH_REFITS", "1000"))
N_BASELINE = max(N_REFITS // 10, 20)  # the baseline is slow: fewer of the same resamples, scaled
DELTA = 1e-3


def naive_objective(theta: np.ndarray, mu, sigma, d, log_loss, w) -> float:
    E, log_dc, a0, a1, b0, b1, ad = theta
    u = log_dc - (a0 + a1 * sigma) * np.log(mu) - (b0 + b1 * mu) * np.log(sigma) - ad * np.log(d)
    r = np.log(E + np.exp(u)) - log_loss
    a = np.abs(r)
    return float(np.dot(w, np.where(a <= DELTA, 0.5 * r * r, DELTA * (a - 0.5 * DELTA)))) / DELTA**2


def naive_refit(mu, sigma, d, loss, w) -> np.ndarray:
    start = np.array([1.0, np.log(1000.0), 0.1, 0.0, 0.1, 0.0, 0.1])
    bounds = [(1e-6, float(loss[w > 0].min()) * (1 - 1e-6)), *[(None, None)] * 5, (1e-8, None)]
    res = minimize(
        naive_objective,
        start,
        args=(mu, sigma, d, np.log(loss), w),
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 2000},
    )
    E, log_dc, *rest = res.x
    return np.array([E, np.exp(log_dc), *rest])


def objective_of(params_row: np.ndarray, mu, sigma, d, loss, w) -> float:
    E, dc, *rest = params_row
    return naive_objective(np.array([E, np.log(dc), *rest]), mu, sigma, d, np.log(loss), w)


def main() -> None:
    mu = np.array([m for m, _ in REGIMES for _ in SIZES], dtype=float)
    sigma = np.array([s for _, s in REGIMES for _ in SIZES], dtype=float)
    d = np.array([x for _ in REGIMES for x in SIZES])
    obs = sample_observations(TRUE, mu, sigma, d, 0.01, np.random.default_rng(0))
    full = fit_ppl_law(obs, PplLawOptions(n_bootstrap=0, held_out=False), np.random.default_rng(0))
    print(f"full fit: {full.params}  R²={full.r2:.4f}  rmse={full.rmse:.4f}")

    options = PplLawOptions(n_bootstrap=N_REFITS)
    start = time.perf_counter()
    draws = bootstrap_ppl_law(obs, full.params, options, np.random.default_rng(42))
    platform_s = time.perf_counter() - start
    print(
        f"platform: {N_REFITS} bootstrap refits in {platform_s:.2f} s = {N_REFITS / platform_s:.0f} refits/s "
        f"({int(np.isfinite(draws[:, 0]).sum())} converged)"
    )

    # the same resamples: bootstrap_ppl_law draws regime counts with rng.integers(0, n, n); here one regime per row
    rng = np.random.default_rng(42)
    weights = [np.bincount(rng.integers(0, 30, size=30), minlength=30).astype(float) for _ in range(N_BASELINE)]
    start = time.perf_counter()
    with single_threaded_blas(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = [naive_refit(mu, sigma, d, obs.loss, w) for w in weights]
    naive_s = time.perf_counter() - start
    per_naive = naive_s / N_BASELINE
    per_platform = platform_s / N_REFITS
    print(
        f"baseline: {N_BASELINE} refits in {naive_s:.2f} s = {1 / per_naive:.0f} refits/s "
        f"(≈ {per_naive * N_REFITS:.1f} s for {N_REFITS})"
    )
    print(f"speed-up: {per_naive / per_platform:.1f}× per refit")

    gaps = np.array(
        [
            objective_of(naive[i], mu, sigma, d, obs.loss, weights[i])
            / objective_of(draws[i], mu, sigma, d, obs.loss, weights[i])
            - 1
            for i in range(N_BASELINE)
        ]
    )
    reached = float(np.mean(gaps < 1e-6))
    print(
        f"baseline reached the platform's optimum (objective within 1e-6) in {reached:.0%} of the resamples; "
        f"median objective excess {np.median(gaps):.2e}"
    )


def cmr_bench() -> None:
    from cpt.laws.cmr.analysis import CmrOptions, analyse_cmr
    from cpt.laws.cmr.forms import DomTrajectory, GenTrajectory
    from cpt.laws.serial_noise import ar1_noise

    t_max, tokens = 64_000.0, np.linspace(0.0, 64_000.0, 13)
    rng = np.random.default_rng(0)
    data = {}
    for r in (0.0, 1 / 8, 1 / 4, 1 / 3, 1 / 2, 3 / 4, 1.0):
        dom = DomTrajectory(-(0.03 + 0.5 * r) * t_max**-0.3, 0.3, 0.0)
        gen = GenTrajectory(0.21 * r * t_max**-0.35, 0.35, -0.0316 * t_max**-0.9, 0.9, 0.0)
        t = np.maximum(tokens, 1.0)
        noise = ar1_noise(rng, 0.8, 0.005, (2, tokens.size))
        data[r] = (
            tokens,
            6.2 + np.where(tokens > 0, dom.value(t), 0) + noise[0],
            5.4 + np.where(tokens > 0, gen.value(t), 0) + noise[1],
        )
    timings = {}
    for n in (0, 200):
        start = time.perf_counter()
        result = analyse_cmr(data, 6.2, 5.4, t_max, CmrOptions(n_bootstrap=n), rng=np.random.default_rng(1))
        timings[n] = time.perf_counter() - start
    noise = result.noise
    print(
        f"CMR analysis, 7 ratios × 12 checkpoints: fits and decision {timings[0]:.2f} s; with 200 AR(1)-calibrated "
        f"bootstrap replicates {timings[200]:.2f} s ({timings[200] / timings[0]:.0f}×); calibrated ρ: domain "
        f"{noise['dom'].rho:.2f}, general {noise['gen'].rho:.2f} (simulated 0.8)"
    )


if __name__ == "__main__":
    main()
    cmr_bench()
