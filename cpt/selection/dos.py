"""Distance-to-Optimum Selection (DOS): greedily pick chunks so the selection's statistics reach a target.

Each chunk carries one statistic ``x`` (the caller chooses: raw PPL or ln PPL) and a token count. DOS minimises

    J(S) = w_μ (μ(S) − μ̂)² + w_σ (σ²(S) − σ̂²)²        (default w_μ = 1/μ̂², w_σ = 1/σ̂⁴: squared relative errors)

where μ(S) and σ²(S) are the chunk-weighted mean and population variance of ``x`` over the selection, by adding one
chunk at a time — the one whose addition gives the lowest J — and stops at the first step whose cumulative tokens
reach the budget. Greedy choices never depend on the budget, so **a prefix of the greedy order is the DOS selection
at a smaller budget** (:meth:`DosSelection.steps_for` finds its length); one run serves every budget up to its own.

**J depends on a candidate only through its x.** With n chunks chosen, running mean m and sum of squared deviations
M2 (Welford), adding x with y = x − m and n' = n + 1 gives m' = m + y/n' and M2' = M2 + (n/n') y², so

    J(y) = w_μ (d₀ + y/n')² + w_σ (e₀ + k y²)²,    d₀ = m − μ̂,  e₀ = M2/n' − σ̂²,  k = n/n'².

For n ≥ 1 this is a quartic in y with a positive leading term; dJ/dy / (4 w_σ k²) is the depressed cubic
y³ + p y + q with p = e₀/k + c (n'/n)², q = c d₀ n' (n'/n)², c = w_μ / (2 w_σ). It is solved in closed form — the
hyperbolic (sinh) form when p > 0, the cosh form when p < 0 with one real root, the trigonometric form when there are
three — without ever forming p³, then polished by one Newton step. Its local minima are the single real root, or the
smallest and largest of three; each gives a target value x* = m + y*. For n = 0 (k = 0) J is a parabola in x and
x* = μ̂. J is monotone between stationary points, so the discrete argmin over the pool lies next to some x*.

**Neighbourhood.** The pool is sorted once by (x, tie key) with ``np.lexsort``; the sorted position is the tie-break
rank. For each x*, a bisection finds where it falls, and the candidates are the two nearest *distinct* available values
below it and the two above it (two rather than one on each side, so a root off by rounding cannot miss the argmin),
each resolved to the lowest available sorted position holding that value. Availability lives in two union-find arrays
— "next available position ≥ i" and "previous available ≤ i" — with iterative path compression, so removing a chosen
chunk is O(1) and each look-up O(α(N)) amortised. A step costs O(log N); K steps over N chunks cost O(N log N) for the
sort plus O(K log N), against O(K·N) for evaluating every chunk at every step.

**Exactness.** J is evaluated by one function, :func:`_objective`, on Python floats in the greedy loop and on numpy
arrays in :func:`select_dos_brute_force` (which scores every available chunk at every step); both run the same
IEEE operations in the same order, so their values agree bit for bit. Both take the minimum by (J, sorted position):
among equal J the lowest sorted position wins, so equal x goes to the lowest tie key (default: the input index).
The tests hold the two to identical orders. That holds while float J tells the values near a minimum apart from the
rest, as the default (relative) weights do, and custom ones within a few orders of magnitude of them; weights so
lopsided that one term falls below the rounding of the other make float J flat over wide ranges of x, and the two
may then break those ties differently (at the first difference, both pick a chunk of the same float J). If the cubic
overflows (extreme weights), a step falls back to scoring every available chunk.

The loop runs on ``array`` module buffers (contiguous, measured faster than lists for bisection and the union-find,
and a quarter of the memory): 10 M chunks with 1 M chosen take about 10 s on one core (`benchmarks.dos_bench`).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

_TWO_THIRDS_PI = 2.0 * math.pi / 3.0


class DosError(ValueError):
    """Distance-to-Optimum Selection could not run on the inputs it was given."""


class PoolTooSmall(DosError):
    """The pool holds fewer tokens than the budget asks for."""

    def __init__(self, pool_tokens: int, n_chunks: int, budget_tokens: int) -> None:
        super().__init__(
            f"the pool holds {pool_tokens} tokens in {n_chunks} chunks; the budget is {budget_tokens}: "
            "lower the budget or widen the pool"
        )
        self.pool_tokens = pool_tokens
        self.n_chunks = n_chunks
        self.budget_tokens = budget_tokens


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise DosError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise DosError(f"{name} must be finite, got {out}")
    return out


@dataclass(frozen=True)
class DosTarget:
    """The statistics the selection should reach, in the terms of the statistic x (raw PPL or ln PPL).

    ``mean`` is μ̂ (finite, non-zero: relative errors divide by it), ``var`` is σ̂², the population variance of x
    (> 0). The weights default to 1/μ̂² and 1/σ̂⁴, which makes J the sum of the squared relative errors of μ and σ².
    """

    mean: float
    var: float
    w_mean: float | None = None  # None: 1/mean²
    w_var: float | None = None  # None: 1/var²

    def __post_init__(self) -> None:
        mean = _real("target mean", self.mean)
        var = _real("target variance", self.var)
        if mean == 0.0:
            raise DosError("target mean must be non-zero (the relative errors divide by it), got 0")
        if var <= 0.0:
            raise DosError(f"target variance must be > 0, got {var}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "var", var)
        for name, given, default in (
            ("w_mean", self.w_mean, 1.0 / (mean * mean)),
            ("w_var", self.w_var, 1.0 / (var * var)),
        ):
            if given is not None:
                weight = _real(name, given)
                if weight <= 0.0:
                    raise DosError(f"{name} must be > 0, got {weight}")
                object.__setattr__(self, name, weight)
            elif not (math.isfinite(default) and default > 0.0):
                raise DosError(
                    f"the default {name} (1/{'mean²' if name == 'w_mean' else 'var²'}) is {default} for mean "
                    f"{mean}, var {var}; rescale the statistic or pass {name}"
                )

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    @property
    def weights(self) -> tuple[float, float]:
        """(w_μ, w_σ) with the defaults resolved."""
        w_mean = 1.0 / (self.mean * self.mean) if self.w_mean is None else self.w_mean
        w_var = 1.0 / (self.var * self.var) if self.w_var is None else self.w_var
        return w_mean, w_var

    def objective(self, mean: float, var: float) -> float:
        """J of a selection with these statistics."""
        w_mean, w_var = self.weights
        d_mean, d_var = mean - self.mean, var - self.var
        return w_mean * d_mean * d_mean + w_var * d_var * d_var


@dataclass(frozen=True, eq=False)
class DosSelection:
    """The greedy order of a DOS run: step ``i`` chose ``order[i]`` (an index into the caller's arrays).

    ``cumulative_tokens[i]`` and ``objective[i]`` are the tokens and J after step i; ``mean`` and ``var`` are the
    statistics of the whole selection. Every prefix of ``order`` is the DOS selection at a smaller budget.
    """

    order: np.ndarray  # int64, greedy step order
    cumulative_tokens: np.ndarray  # int64
    objective: np.ndarray  # float64, J after each step
    target: DosTarget
    budget_tokens: int
    mean: float
    var: float
    _values: np.ndarray = field(repr=False)  # float64, x of order[i], in step order

    @property
    def steps(self) -> int:
        return int(self.order.size)

    @property
    def tokens(self) -> int:
        return int(self.cumulative_tokens[-1])

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def _check_steps(self, steps: object) -> int:
        if isinstance(steps, bool) or not isinstance(steps, Integral) or not 1 <= steps <= self.steps:
            raise DosError(f"steps must be an integer in [1, {self.steps}], got {steps!r}")
        return int(steps)

    def steps_for(self, tokens: int) -> int:
        """The smallest number of steps whose cumulative tokens reach ``tokens``: the DOS selection at that budget."""
        if isinstance(tokens, bool) or not isinstance(tokens, Integral) or tokens <= 0:
            raise DosError(f"tokens must be a positive integer, got {tokens!r}")
        if tokens > self.tokens:
            raise DosError(f"the selection holds {self.tokens} tokens in {self.steps} steps; asked for {tokens}")
        return int(np.searchsorted(self.cumulative_tokens, tokens, side="left")) + 1

    def prefix_stats(self, steps: int) -> tuple[float, float]:
        """(mean, population variance) of x over the first ``steps`` chosen chunks."""
        return _moments(self._values[: self._check_steps(steps)])

    def gap(self, steps: int | None = None) -> dict[str, float]:
        """Relative errors of the mean and the standard deviation, and J, after ``steps`` (default: all)."""
        steps = self.steps if steps is None else self._check_steps(steps)
        mean, var = (self.mean, self.var) if steps == self.steps else self.prefix_stats(steps)
        return {
            "mean_rel": (mean - self.target.mean) / self.target.mean,
            "std_rel": (math.sqrt(var) - self.target.std) / self.target.std,
            "objective": float(self.objective[steps - 1]),
        }

    def reached(self, tolerance: float = 0.02, steps: int | None = None) -> bool:
        """Whether both the mean and the standard deviation are within ``tolerance`` (relative) of the target."""
        gap = self.gap(steps)
        return abs(gap["mean_rel"]) <= tolerance and abs(gap["std_rel"]) <= tolerance


def _moments(x: np.ndarray) -> tuple[float, float]:
    mean = float(np.mean(x))
    return mean, float(np.mean((x - mean) ** 2))


# --- the shared arithmetic: the fast loop and the brute force run exactly these operations ----------------------------


def _objective(x, m, d0, e0, k, n1, w_mean, w_var):
    """J after adding x (a float, or an array of floats) to the state (n, m, M2); see the module docstring."""
    y = x - m
    a = d0 + y / n1
    b = e0 + k * y * y
    return w_mean * a * a + w_var * b * b


def _step_terms(n: int, m: float, m2: float, mu: float, var: float) -> tuple[float, float, float, float]:
    """(d₀, e₀, k, n') of the state (n, m, M2)."""
    n1 = n + 1.0
    return m - mu, m2 / n1 - var, n / (n1 * n1), n1


def _push(n: int, m: float, m2: float, x: float) -> tuple[int, float, float]:
    """Welford: the state after adding x."""
    n1 = n + 1
    y = x - m
    m_new = m + y / n1
    return n1, m_new, m2 + y * (x - m_new)


def _polish(y: float, p: float, q: float) -> float:
    """One Newton step on y³ + p y + q, kept only if it lowers the residual."""
    f = (y * y + p) * y + q
    slope = 3.0 * y * y + p
    if slope != 0.0:
        y2 = y - f / slope
        if abs((y2 * y2 + p) * y2 + q) < abs(f):
            return y2
    return y


def _cubic_minima(p: float, q: float) -> tuple[float, ...]:
    """The roots of y³ + p y + q where it turns from negative to positive: the local minima of its integral."""
    s = math.sqrt(abs(p) / 3.0)
    ps = p * s
    if ps == 0.0:  # p = 0, or so small that the cube root alone decides
        return (_polish(math.cbrt(-q), p, q),)
    t = 1.5 * q / ps
    if p > 0.0:  # one real root
        return (_polish(-2.0 * s * math.sinh(math.asinh(t) / 3.0), p, q),)
    if t > 1.0 or t < -1.0:  # one real root
        y = 2.0 * s * math.cosh(math.acosh(abs(t)) / 3.0)
        return (_polish(-y if q > 0.0 else y, p, q),)
    third = math.acos(t) / 3.0  # three real roots: the smallest and the largest are minima
    return (
        _polish(2.0 * s * math.cos(third + _TWO_THIRDS_PI), p, q),
        _polish(2.0 * s * math.cos(third), p, q),
    )


def _targets(n: int, m: float, d0: float, e0: float, k: float, n1: float, c: float, mu: float) -> tuple[float, ...]:
    """The values x* = m + y* at which J (as a function of the added x) has its local minima."""
    if n == 0:
        return (mu,)
    r = n1 / n
    return tuple(m + y for y in _cubic_minima(e0 / k + c * r * r, c * d0 * n1 * r * r))


# --- inputs -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pool:
    perm: np.ndarray  # sorted position → input index
    x: np.ndarray  # float64, sorted by (x, tie key)
    tokens: np.ndarray  # int64, in sorted order
    mu: float
    var: float
    w_mean: float
    w_var: float
    budget: int


def _prepare(values, n_tokens, target, budget_tokens, tie_keys) -> _Pool:
    if not isinstance(target, DosTarget):
        raise DosError(f"target must be a DosTarget, got {type(target).__name__}")
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, Integral) or budget_tokens <= 0:
        raise DosError(f"budget_tokens must be a positive integer, got {budget_tokens!r}")
    budget = int(budget_tokens)
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DosError(f"values must be numbers: {exc}") from exc
    tokens = np.asarray(n_tokens)
    if x.ndim != 1 or tokens.ndim != 1 or x.shape != tokens.shape:
        raise DosError(f"values (shape {x.shape}) and n_tokens (shape {tokens.shape}) must be 1-D of the same length")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise DosError(f"values must be finite: values[{bad[0]}] = {x[bad[0]]} ({bad.size} non-finite)")
    if tokens.dtype.kind not in "iuf":
        raise DosError(f"n_tokens must be integers, got dtype {tokens.dtype}")
    if tokens.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(tokens) | (tokens != np.round(tokens)))
        if bad.size:
            raise DosError(f"n_tokens must be whole numbers: n_tokens[{bad[0]}] = {tokens[bad[0]]}")
    tokens = tokens.astype(np.int64)
    bad = np.flatnonzero(tokens <= 0)
    if bad.size:
        raise DosError(f"token counts must be positive: n_tokens[{bad[0]}] = {tokens[bad[0]]} ({bad.size} ≤ 0)")
    keys = None
    if tie_keys is not None:
        keys = np.asarray(tie_keys)
        if keys.shape != x.shape:
            raise DosError(f"tie_keys (shape {keys.shape}) must match values (shape {x.shape})")
        if keys.dtype.kind not in "iuUS":
            raise DosError(f"tie_keys must be integers or strings, got dtype {keys.dtype}")
    pool_tokens = int(tokens.sum())
    if pool_tokens < budget:
        raise PoolTooSmall(pool_tokens, int(x.size), budget)

    perm = np.argsort(x, kind="stable") if keys is None else np.lexsort((keys, x))
    w_mean, w_var = target.weights
    return _Pool(perm, x[perm], tokens[perm], target.mean, target.var, w_mean, w_var, budget)


def _result(pool: _Pool, positions: np.ndarray, objective: np.ndarray, target: DosTarget) -> DosSelection:
    chosen = pool.x[positions]
    mean, var = _moments(chosen)
    arrays = (pool.perm[positions], np.cumsum(pool.tokens[positions]), objective, chosen)
    for a in arrays:
        a.flags.writeable = False
    order, cumulative, objective, chosen = arrays
    return DosSelection(order, cumulative, objective, target, pool.budget, mean, var, chosen)


def _overflow(j_value: float, step: int) -> DosError:
    return DosError(
        f"the objective is {j_value} at step {step}: the statistic or the weights are too large for float64; "
        "rescale them"
    )


# --- the selections ---------------------------------------------------------------------------------------------------


def select_dos(values, n_tokens, target: DosTarget, budget_tokens: int, *, tie_keys=None) -> DosSelection:
    """Distance-to-Optimum Selection in O(N log N + K log N): see the module docstring.

    ``values`` is the per-chunk statistic x, ``n_tokens`` the chunks' token counts (positive integers), ``tie_keys``
    optional integers or strings that order chunks of equal x (default: their index). Raises :class:`PoolTooSmall`
    when the pool holds fewer tokens than ``budget_tokens``, :class:`DosError` on malformed input.
    """
    pool = _prepare(values, n_tokens, target, budget_tokens, tie_keys)
    size = int(pool.x.size)
    xs = array("d", pool.x.tobytes())
    tok = array("q", pool.tokens.tobytes())
    ident = np.arange(size + 1, dtype=np.int64).tobytes()
    nxt = array("q", ident)  # nxt: root is the first available position ≥ i (size: none)
    prv = array("q", ident)  # prv[i + 1]: root − 1 is the last available position ≤ i (root 0: none)

    def find_next(i: int) -> int:
        root = i
        up = nxt[root]
        while up != root:
            root = up
            up = nxt[root]
        while i != root:
            up = nxt[i]
            nxt[i] = root
            i = up
        return root

    def find_prev(i: int) -> int:
        t = i + 1
        root = t
        up = prv[root]
        while up != root:
            root = up
            up = prv[root]
        while t != root:
            up = prv[t]
            prv[t] = root
            t = up
        return root - 1

    def lowest_holding(p: int) -> int:
        """The start of the block of sorted positions holding xs[p]."""
        v = xs[p]
        if p == 0 or xs[p - 1] != v:
            return p
        return bisect_left(xs, v, 0, p)

    def neighbourhood(x_star: float, out: list[int]) -> None:
        i = bisect_left(xs, x_star)
        s = find_next(i)  # the lowest available position with the smallest value ≥ x*
        if s < size:
            out.append(s)
            v = xs[s]
            j = s + 1
            if j < size and xs[j] == v:
                j = bisect_right(xs, v, j)
            s = find_next(j)
            if s < size:
                out.append(s)
        p = find_prev(i - 1)  # the largest available value < x*, resolved to its lowest available position
        for _ in range(2):
            if p < 0:
                break
            lo = lowest_holding(p)
            out.append(p if lo == p else find_next(lo))
            p = find_prev(lo - 1)

    mu, var, w_mean, w_var, budget = pool.mu, pool.var, pool.w_mean, pool.w_var, pool.budget
    c = w_mean / (2.0 * w_var)
    objective = _objective
    positions = array("q")
    values_j = array("d")
    n, m, m2, tokens = 0, 0.0, 0.0, 0
    candidates: list[int] = []
    while tokens < budget:
        d0, e0, k, n1 = _step_terms(n, m, m2, mu, var)
        candidates.clear()
        x_stars = _targets(n, m, d0, e0, k, n1, c, mu)
        if all(math.isfinite(x_star) for x_star in x_stars):
            for x_star in x_stars:
                neighbourhood(x_star, candidates)
        else:  # the cubic overflowed (extreme weights): score every available chunk
            i = find_next(0)
            while i < size:
                candidates.append(i)
                i = find_next(i + 1)
        best, best_j = size, math.inf
        for pos in candidates:
            value = objective(xs[pos], m, d0, e0, k, n1, w_mean, w_var)
            if value < best_j or (value == best_j and pos < best):
                best, best_j = pos, value
        if not best_j < math.inf:
            raise _overflow(best_j, n)
        n, m, m2 = _push(n, m, m2, xs[best])
        tokens += tok[best]
        positions.append(best)
        values_j.append(best_j)
        nxt[best] = best + 1
        prv[best + 1] = best
    return _result(
        pool, np.frombuffer(positions, dtype=np.int64).copy(), np.frombuffer(values_j, dtype=np.float64).copy(), target
    )


def select_dos_brute_force(values, n_tokens, target: DosTarget, budget_tokens: int, *, tie_keys=None) -> DosSelection:
    """The reference: every step scores every available chunk (O(K·N)); same arguments, result and tie-breaks."""
    pool = _prepare(values, n_tokens, target, budget_tokens, tie_keys)
    mu, var, w_mean, w_var, budget = pool.mu, pool.var, pool.w_mean, pool.w_var, pool.budget
    available = np.arange(pool.x.size)  # sorted positions, ascending
    positions: list[int] = []
    values_j: list[float] = []
    n, m, m2, tokens = 0, 0.0, 0.0, 0
    while tokens < budget:
        d0, e0, k, n1 = _step_terms(n, m, m2, mu, var)
        scores = _objective(pool.x[available], m, d0, e0, k, n1, w_mean, w_var)
        a = int(np.argmin(scores))  # the first minimum: the lowest sorted position among equal J
        best, best_j = int(available[a]), float(scores[a])
        if not best_j < math.inf:
            raise _overflow(best_j, n)
        n, m, m2 = _push(n, m, m2, float(pool.x[best]))
        tokens += int(pool.tokens[best])
        positions.append(best)
        values_j.append(best_j)
        available = np.delete(available, a)
    return _result(pool, np.array(positions, dtype=np.int64), np.array(values_j, dtype=np.float64), target)
