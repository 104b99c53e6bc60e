"""Greedy k-center (farthest-point) coresets: a few patches that cover many.

`kcenter_order(x, k)` returns the first k centres of the greedy selection in the order they were
picked. The order is the point: its first m entries are exactly the greedy solution for m centres,
so a reference stores one ordered list and the memory takes whatever prefix its budget allows
(models/anomaly/memory.py). Greedy k-center is a 2-approximation of the minimal covering radius
(Gonzalez 1985); PatchCore uses it to subsample its memory bank.
"""

from __future__ import annotations

import numpy as np


def kcenter_order(x: np.ndarray, k: int) -> np.ndarray:
    """Indices (int64, at most k, distinct) of greedy farthest-point centres of x (n, D), in order.

    Deterministic: the first centre is the point farthest from the mean (ties: lowest index), each
    next one the point farthest from the centres so far. Stops early once every point coincides
    with a centre (duplicates never become centres twice).
    """
    x = np.asarray(x, dtype=np.float64)  # float64: tiny distances must not underflow to 0
    if x.ndim != 2:
        raise ValueError(f"x must be (n, D), got shape {x.shape}")
    n = x.shape[0]
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    first = int(np.argmax(_sq_dist(x, x.mean(axis=0))))
    order = [first]
    nearest = _sq_dist(x, x[first])  # (n,) squared distance to the closest centre so far
    while len(order) < min(k, n):
        nxt = int(np.argmax(nearest))
        if nearest[nxt] <= 0.0:
            break
        order.append(nxt)
        np.minimum(nearest, _sq_dist(x, x[nxt]), out=nearest)
    return np.asarray(order, dtype=np.int64)


def covering_radius(x: np.ndarray, centres: np.ndarray) -> float:
    """Largest distance from a point of x (n, D) to its nearest centre (m, D); inf if m == 0."""
    x = np.asarray(x, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    if len(centres) == 0:
        return float("inf") if len(x) else 0.0
    if len(x) == 0:
        return 0.0
    d2 = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d2.min(axis=1).max()))


def _sq_dist(x: np.ndarray, point: np.ndarray) -> np.ndarray:
    diff = x - point[None, :]
    return np.einsum("nd,nd->n", diff, diff)
