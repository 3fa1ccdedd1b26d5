"""Least-squares fits of sums of power terms, ``y = Σ_k a_k·x^(s_k) + b``, the shape of every curve in Paper B.

For fixed exponents the model is linear in the amplitudes and the intercept (variable projection): a grid over
the exponents is solved in closed form all at once, the best few grid points start a bounded trust-region polish
(scipy ``least_squares``), and the best polish wins. ``x`` should be scaled to order one by the caller.

One-term fits are exact 1-D problems after the projection: the SSE profile over the exponent is gridded and
minimised by Brent's method.

Bootstrap replicates are refitted all at once (``refit_rows``): the same exponent grid solved for every replicate
in one pass, then a batched Levenberg–Marquardt from each replicate's best grid point and from the full fit, the
better of the two kept. How replicates are drawn (serially correlated noise) is ``serial_noise``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, minimize_scalar


@dataclass(frozen=True)
class PowerSumFit:
    amplitudes: tuple[float, ...]  # a_k, terms sorted by exponent
    exponents: tuple[float, ...]  # s_k, ascending
    intercept: float
    sse: float
    n: int
    success: bool
    message: str

    @property
    def theta(self) -> np.ndarray:
        return np.array([*self.amplitudes, *self.exponents, self.intercept])

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.sse / self.n))


def _powers(x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x^s`` and ``log x`` broadcast, with ``0^s = 0`` and its s-derivative 0 at ``x = 0`` — the limits for
    ``s > 0``; callers that pass ``x = 0`` bound the exponents above 0."""
    pos = x > 0
    logx = np.log(np.where(pos, x, 1.0))
    return np.where(pos, np.exp(s * logx), 0.0), np.where(pos, logx, 0.0)


def model(theta: np.ndarray, x: np.ndarray, n_terms: int) -> np.ndarray:
    """``Σ a_k x^(s_k) + b`` for parameters ``θ = [a_1..a_K, s_1..s_K, b]``, batched over leading axes of θ."""
    a = theta[..., :n_terms, None]
    s = theta[..., n_terms : 2 * n_terms, None]
    p, _ = _powers(x, s)
    return (a * p).sum(axis=-2) + theta[..., -1, None]


def jacobian(theta: np.ndarray, x: np.ndarray, n_terms: int) -> np.ndarray:
    """∂model/∂θ with shape (..., n, 2K + 1)."""
    a = theta[..., :n_terms, None]
    s = theta[..., n_terms : 2 * n_terms, None]
    p, logx = _powers(x, s)
    ones = np.ones((*theta.shape[:-1], 1, x.shape[-1]))
    return np.concatenate([p, a * p * logx, ones], axis=-2).swapaxes(-1, -2)


def _to_natural(phi: np.ndarray, n_terms: int) -> np.ndarray:
    """``φ = [a.., s_1, d_2..d_K, b]`` (exponent gaps ``d ≥ min_gap``) → ``θ = [a.., s_1..s_K, b]``."""
    theta = phi.copy()
    theta[..., n_terms : 2 * n_terms] = np.cumsum(phi[..., n_terms : 2 * n_terms], axis=-1)
    return theta


def _to_phi(theta: np.ndarray, n_terms: int) -> np.ndarray:
    phi = theta.copy()
    phi[..., n_terms + 1 : 2 * n_terms] = np.diff(theta[..., n_terms : 2 * n_terms], axis=-1)
    return phi


def _jacobian_phi(phi: np.ndarray, x: np.ndarray, n_terms: int) -> np.ndarray:
    """∂model/∂φ: an exponent gap moves every later exponent (reverse cumulative sum of the s-columns)."""
    J = jacobian(_to_natural(phi, n_terms), x, n_terms)
    s_cols = J[..., n_terms : 2 * n_terms]
    J[..., n_terms : 2 * n_terms] = np.flip(np.cumsum(np.flip(s_cols, axis=-1), axis=-1), axis=-1)
    return J


def _phi_bounds(
    n_terms: int, s_bounds: tuple[float, float], min_gap: float, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Box bounds in φ: amplitudes within ±1e3·max|y| (larger only when terms cancel), the smallest exponent in
    ``s_bounds``, each gap in ``[min_gap, width]`` (so the largest exponent may exceed ``s_bounds[1]``)."""
    amp = 1e3 * max(float(np.abs(y).max()), 1e-12)
    width = s_bounds[1] - s_bounds[0]
    lower = np.array([-amp] * n_terms + [s_bounds[0]] + [min_gap] * (n_terms - 1) + [-np.inf])
    upper = np.array([amp] * n_terms + [s_bounds[1]] + [width] * (n_terms - 1) + [np.inf])
    return lower, upper


def _grid_coefficients(x: np.ndarray, Y: np.ndarray, combos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares amplitudes and intercept for every exponent combination (C, K) and every row of ``Y``.

    ``Y`` is (n,) or (B, n); returns coefficients (…, C, K+1) and SSE (…, C). The design does not depend on ``Y``,
    so its (column-normalised) pseudo-inverse is computed once per combination.
    """
    p, _ = _powers(x, combos[:, :, None])  # (C, K, n)
    A = np.concatenate([p, np.ones((len(combos), 1, x.size))], axis=1).swapaxes(1, 2)  # (C, n, K+1)
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    pinv = np.linalg.pinv(A / norms, rcond=1e-12) / norms.swapaxes(1, 2)  # (C, K+1, n)
    coef = np.einsum("ckn,...n->...ck", pinv, Y)
    resid = Y[..., None, :] - np.einsum("cnk,...ck->...cn", A, coef)
    sse = np.einsum("...cn,...cn->...c", resid, resid)
    return coef, np.where(np.isfinite(sse), sse, np.inf)


def _grid_theta(coef: np.ndarray, combos: np.ndarray, idx: np.ndarray, n_terms: int) -> np.ndarray:
    """Natural parameters of grid combination(s) ``idx`` from their coefficients."""
    return np.concatenate([coef[..., :n_terms], combos[idx], coef[..., -1:]], axis=-1)


def _exponent_combos(
    n_terms: int, s_bounds: tuple[float, float], grid_size: int, min_gap: float, avoid_zero: float
) -> np.ndarray:
    grid = np.linspace(s_bounds[0], s_bounds[1], grid_size)
    grid = grid[np.abs(grid) >= avoid_zero]  # s ≈ 0 makes x^s collinear with the intercept
    if n_terms == 1:
        return grid[:, None]
    i, j = np.triu_indices(len(grid), k=1)
    combos = np.column_stack([grid[i], grid[j]])
    return combos[combos[:, 1] - combos[:, 0] >= min_gap]


def fit_power_sum(
    x: np.ndarray,
    y: np.ndarray,
    n_terms: int,
    s_bounds: tuple[float, float],
    grid_size: int = 81,
    n_starts: int = 3,
    min_gap: float = 0.1,
    avoid_zero: float = 0.02,
) -> PowerSumFit:
    """Fit ``y = Σ a_k x^(s_k) + b`` with exponents in ``s_bounds`` (grid, then bounded polish from the best few)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if n_terms == 1:
        return _fit_one_term(x, y, s_bounds, grid_size, n_starts, avoid_zero)
    combos = _exponent_combos(n_terms, s_bounds, grid_size // 2, min_gap, avoid_zero)
    coef, sse = _grid_coefficients(x, y, combos)
    order = np.argsort(sse)[:n_starts]
    lower, upper = _phi_bounds(n_terms, s_bounds, min_gap, y)
    pad = 1e-9 * (1.0 + np.abs(np.where(np.isfinite(lower), lower, 0.0)))

    best = None
    for c in order:
        phi0 = _to_phi(_grid_theta(coef[c], combos, c, n_terms), n_terms)
        phi0 = np.clip(phi0, lower + pad, upper - pad)  # least_squares wants a strictly interior start
        res = least_squares(
            lambda f: model(_to_natural(f, n_terms), x, n_terms) - y,
            phi0,
            jac=lambda f: _jacobian_phi(f, x, n_terms),
            bounds=(lower, upper),
            method="trf",
            x_scale="jac",
            xtol=1e-12,
            ftol=1e-12,
            gtol=1e-12,
            max_nfev=2000,
        )
        value = 2.0 * float(res.cost)
        if np.isfinite(value) and (best is None or value < best[1]):
            best = (res, value)
    if best is None:
        c = int(order[0])
        return _as_fit(
            _grid_theta(coef[c], combos, c, n_terms),
            n_terms,
            float(sse[c]),
            len(x),
            False,
            "every polish failed; grid point kept",
        )
    res, value = best
    if value > float(sse[order[0]]):  # a polish that made things worse: keep the grid point
        c = int(order[0])
        return _as_fit(
            _grid_theta(coef[c], combos, c, n_terms),
            n_terms,
            float(sse[c]),
            len(x),
            bool(res.success),
            "grid point kept",
        )
    return _as_fit(_to_natural(res.x, n_terms), n_terms, value, len(x), bool(res.success), str(res.message))


def _profile(x: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``y ≈ a·x^s + b``: the least-squares ``a``, ``b`` and SSE at each exponent ``s`` (closed form)."""
    p, _ = _powers(x, np.asarray(s, dtype=np.float64)[..., None])
    pc = p - p.mean(axis=-1, keepdims=True)
    yc = y - y.mean()
    spp = np.einsum("...n,...n->...", pc, pc)
    flat = spp <= 1e-24 * max(float(np.dot(yc, yc)), 1e-300)  # x^s constant: no slope to fit
    a = np.where(flat, 0.0, np.einsum("...n,n->...", pc, yc) / np.where(flat, 1.0, spp))
    b = y.mean() - a * p.mean(axis=-1)
    r = yc - a[..., None] * pc
    return a, b, np.einsum("...n,...n->...", r, r)


def _fit_one_term(
    x: np.ndarray, y: np.ndarray, s_bounds: tuple[float, float], grid_size: int, n_starts: int, avoid_zero: float
) -> PowerSumFit:
    """One term: the SSE profile over ``s`` (``a``, ``b`` in closed form), gridded, then Brent on the best brackets.

    Exact variable projection: the 3-parameter problem is a 1-D one, so no trust-region polish is needed.
    """
    grid = _exponent_combos(1, s_bounds, grid_size, 0.0, avoid_zero)[:, 0]
    _, _, sse = _profile(x, y, grid)
    sse = np.where(np.isfinite(sse), sse, np.inf)
    best_s, best_sse = float(grid[int(np.argmin(sse))]), float(sse.min())
    for i in np.argsort(sse)[:n_starts]:
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        if hi <= lo:
            continue
        res = minimize_scalar(
            lambda v: float(_profile(x, y, np.array(v))[2]),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-10},
        )
        if np.isfinite(res.fun) and res.fun < best_sse:
            best_s, best_sse = float(res.x), float(res.fun)
    a, b, sse_best = _profile(x, y, np.array(best_s))
    return _as_fit(
        np.array([float(a), best_s, float(b)]),
        1,
        float(sse_best),
        len(x),
        bool(np.isfinite(sse_best)),
        "profile minimum",
    )


def _as_fit(theta: np.ndarray, n_terms: int, sse: float, n: int, success: bool, message: str) -> PowerSumFit:
    t = np.asarray(theta, dtype=np.float64)
    return PowerSumFit(
        tuple(float(v) for v in t[:n_terms]),
        tuple(float(v) for v in t[n_terms : 2 * n_terms]),
        float(t[-1]),
        sse,
        n,
        success,
        message,
    )


def batched_levenberg_marquardt(
    x: np.ndarray,
    Y: np.ndarray,
    theta0: np.ndarray,
    n_terms: int,
    s_bounds: tuple[float, float],
    min_gap: float = 0.1,
    max_iter: int = 200,
    rtol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray]:
    """Least squares for every row of ``Y`` (B, n) at once from ``theta0``: one start (p,) or one per row (B, p).

    Projected Levenberg–Marquardt in the gap parametrisation, with Marquardt's diagonal scaling and a damping per
    row. Returns natural parameters (B, 2K + 1) and a convergence flag per row.
    """
    lower, upper = _phi_bounds(n_terms, s_bounds, min_gap, Y)
    B = Y.shape[0]
    phi = np.clip(_to_phi(np.broadcast_to(theta0, (B, theta0.shape[-1])).copy(), n_terms), lower, upper)
    r = model(_to_natural(phi, n_terms), x, n_terms) - Y
    sse = np.einsum("bn,bn->b", r, r)
    damping = np.full(B, 1e-3)
    done = np.zeros(B, dtype=bool)
    eye = np.eye(phi.shape[1])
    for _ in range(max_iter):
        if done.all():
            break
        J = _jacobian_phi(phi, x, n_terms)
        JtJ = np.einsum("bnp,bnq->bpq", J, J)
        diag = np.einsum("bpp->bp", JtJ)
        scale = diag + 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300
        grad = np.einsum("bnp,bn->bp", J, r)
        step = np.linalg.solve(JtJ + damping[:, None, None] * scale[:, :, None] * eye, -grad[..., None])[..., 0]
        trial = np.clip(phi + step, lower, upper)
        r_trial = model(_to_natural(trial, n_terms), x, n_terms) - Y
        sse_trial = np.einsum("bn,bn->b", r_trial, r_trial)
        accept = ~done & np.isfinite(sse_trial) & (sse_trial < sse)
        rel = np.where(accept, (sse - sse_trial) / np.maximum(sse, 1e-300), np.inf)
        promised = -np.einsum("bp,bp->b", grad, step)  # first-order SSE decrease (halved) the step promised
        # converged: a nearly Gauss–Newton step (small damping) that no longer improves the fit, or a rejected
        # step that promised no more than rounding; stuck: no damping finds a descent step
        done |= accept & (rel <= rtol) & (damping <= 1.0)
        done |= ~done & ~accept & ((promised <= rtol * sse) | (damping >= 1e10))
        phi[accept] = trial[accept]
        r[accept] = r_trial[accept]
        sse[accept] = sse_trial[accept]
        damping = np.where(accept, np.maximum(damping / 3.0, 1e-12), damping * 4.0)
    return _to_natural(phi, n_terms), done


def refit_rows(
    x: np.ndarray,
    Y: np.ndarray,
    warm: np.ndarray,
    n_terms: int,
    s_bounds: tuple[float, float],
    min_gap: float = 0.1,
    grid_size: int = 81,
    avoid_zero: float = 0.02,
    block: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit every row of ``Y`` (B, n): per row, LM from its best exponent-grid point and from ``warm``; the better wins.

    The same variable-projection grid as ``fit_power_sum`` (solved for all rows at once), with the batched LM in
    place of one trust-region polish per row. Returns natural parameters (B, 2K+1), SSE (B,), and whether the
    winning LM met its convergence test.
    """
    combos = _exponent_combos(n_terms, s_bounds, grid_size if n_terms == 1 else grid_size // 2, min_gap, avoid_zero)
    starts = np.empty((Y.shape[0], 2 * n_terms + 1))
    for lo in range(0, Y.shape[0], block):  # blocks bound the (rows × combinations × n) residual array
        coef, sse = _grid_coefficients(x, Y[lo : lo + block], combos)
        best = np.argmin(sse, axis=1)
        starts[lo : lo + block] = _grid_theta(coef[np.arange(len(best)), best], combos, best, n_terms)
    candidates = [batched_levenberg_marquardt(x, Y, start, n_terms, s_bounds, min_gap) for start in (starts, warm)]
    sses = np.array([np.einsum("bn,bn->b", model(t, x, n_terms) - Y, model(t, x, n_terms) - Y) for t, _ in candidates])
    sses = np.where(np.isfinite(sses), sses, np.inf)
    pick = np.argmin(sses, axis=0)
    rows = np.arange(Y.shape[0])
    theta = np.stack([t for t, _ in candidates])[pick, rows]
    converged = np.stack([c for _, c in candidates])[pick, rows]
    return theta, sses[pick, rows], converged
