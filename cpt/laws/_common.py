"""Small helpers shared by the law fits: warning capture, percentile intervals, JSON-safe numbers."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import numpy as np
from threadpoolctl import threadpool_limits


def single_threaded_blas() -> AbstractContextManager[object]:
    """Limit BLAS/LAPACK to one thread for the block, restoring the previous limits after it.

    The fits make thousands of tiny LAPACK calls (L-BFGS-B's own, 30×6 lstsq); OpenBLAS threads on such calls spin
    and, on a shared 2-core machine, made a bootstrap 50× slower.
    """
    return threadpool_limits(limits=1, user_api="blas")


@contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Record every warning raised inside the block (numpy, scipy) as text instead of letting it print."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    messages.extend(f"{w.category.__name__}: {w.message}" for w in caught)


def unique_messages(messages: list[str]) -> tuple[str, ...]:
    """Each distinct message once, in first-seen order, with a repeat count when it recurred."""
    counts: dict[str, int] = {}
    for m in messages:
        counts[m] = counts.get(m, 0) + 1
    return tuple(m if n == 1 else f"{m} (×{n})" for m, n in counts.items())


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of finite samples (NaN, NaN when there are none)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return (math.nan, math.nan)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return (float(lo), float(hi))


def json_number(x: float | None) -> float | str | None:
    """A float JSON can carry: finite as is, ±inf as the strings "inf"/"-inf", NaN as None."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def json_map(d: dict, key: Callable[[object], str] = str) -> dict[str, object]:
    """A mapping with string keys and JSON-safe numbers (tuples become lists)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, tuple | list):
            out[key(k)] = [json_number(x) for x in v]
        else:
            out[key(k)] = json_number(v)
    return out
