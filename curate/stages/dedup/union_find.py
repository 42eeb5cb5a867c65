"""Union-find over an edge list, vectorised: connected components of rows joined by
verified duplicate pairs.

Classic union-find walks one edge at a time in Python. Here all edges are processed at
once per round: compress every parent pointer to its root (pointer jumping), then hook
the larger root of each still-split edge under the smaller one (`np.minimum.at`). Roots
only ever decrease, so it terminates, and each component ends rooted at its smallest
row index, which makes the labels independent of edge order (deterministic).
A round is O(n + edges); the number of rounds grows with the log of component size
in practice, a handful for dedup clusters.
"""
from __future__ import annotations

import numpy as np


def _compress(parent: np.ndarray) -> np.ndarray:
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Root (smallest member index) of each of `n` nodes after uniting every
    (left[i], right[i]) pair."""
    parent = np.arange(n, dtype=np.int64)
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    if len(left) == 0:
        return parent
    while True:
        parent = _compress(parent)
        rl, rr = parent[left], parent[right]
        split = rl != rr
        if not split.any():
            return parent
        lo = np.minimum(rl[split], rr[split])
        hi = np.maximum(rl[split], rr[split])
        # Several edges may hook the same root: the smallest target wins, the others
        # are picked up in the next round through the compressed pointers.
        np.minimum.at(parent, hi, lo)
