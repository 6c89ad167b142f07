"""Optimal one-to-one assignment (the linear sum assignment problem) for the tracker, in numpy.

Why not `scipy.optimize.linear_sum_assignment`: importing `scipy.optimize` costs the process
about 55 MiB and a second of start on a small CPU (it pulls in scipy.linalg, scipy.fft,
scipy.special), for a solver the tracker calls on matrices of tens of rows. This is the same
algorithm (the shortest augmenting path of Crouse, "On implementing 2D rectangular assignment
algorithms", 2016, which scipy implements in `rectangular_lsap.cpp`), with scipy's order of
operations and its tie-breaking, so it returns what scipy returns, pair for pair (checked against
scipy on random and tied matrices in tests/pipeline/test_tracking.py). Each augmenting step is
vectorised over the columns: O(rows^2 x columns) element operations, in rows^2 numpy calls.
"""

from __future__ import annotations

import numpy as np


def linear_sum_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost matching of rows to columns (min(rows, cols) pairs), as scipy's.

    cost: float [rows, cols], finite. Returns (row indices ascending, their column indices),
    int64 [min(rows, cols)] each.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-d matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost contains infinite or NaN entries")
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    nr, nc = cost.shape
    u, v = np.zeros(nr), np.zeros(nc)
    path = np.full(nc, -1, dtype=np.int64)
    col4row = np.full(nr, -1, dtype=np.int64)
    row4col = np.full(nc, -1, dtype=np.int64)
    for current in range(nr):
        shortest = np.full(nc, np.inf)
        rows_seen = np.zeros(nr, dtype=bool)
        cols_seen = np.zeros(nc, dtype=bool)
        remaining = np.arange(nc - 1, -1, -1, dtype=np.int64)  # scipy's scan order
        left = nc
        min_val = 0.0
        sink = -1
        i = current
        while sink == -1:
            rows_seen[i] = True
            rem = remaining[:left]
            reduced = min_val + cost[i, rem] - u[i] - v[rem]
            better = reduced < shortest[rem]
            path[rem[better]] = i
            shortest[rem[better]] = reduced[better]
            values = shortest[rem]
            lowest = values.min()
            ties = np.flatnonzero(values == lowest)
            free = ties[row4col[rem[ties]] == -1]
            # scipy keeps the first strict minimum, then moves to each later tie on a free column.
            index = int(free[-1]) if len(free) else int(ties[0])
            min_val = float(lowest)
            j = int(rem[index])
            if row4col[j] == -1:
                sink = j
            else:
                i = int(row4col[j])
            cols_seen[j] = True
            left -= 1
            remaining[index] = remaining[left]
        u[current] += min_val
        others = rows_seen.copy()
        others[current] = False
        u[others] += min_val - shortest[col4row[others]]
        v[cols_seen] -= min_val - shortest[cols_seen]
        j = sink
        while True:  # flip the path's pairs back to the current row
            i = int(path[j])
            row4col[j] = i
            col4row[i], j = j, int(col4row[i])
            if i == current:
                break
    if transposed:
        order = np.argsort(col4row, kind="stable")
        return col4row[order], order.astype(np.int64)
    return np.arange(nr, dtype=np.int64), col4row
