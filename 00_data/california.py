"""California region and split rules shared by both data builders.

``build_california.py`` (real STEAD) and ``make_synthetic.py`` (synthetic)
select the same region and split the same way: by event, so no earthquake is
in two splits. Neither builder imports the other; both import this.
Must not import keras.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Region where events must lie (upstream California subset bounds).
LAT_RANGE = (32.0, 42.0)
LON_RANGE = (-125.0, -114.0)


def check_split_fractions(split):
    """(train, valid, test) fractions as floats: three, non-negative, summing to 1."""
    try:
        split = tuple(float(x) for x in split)
    except (TypeError, ValueError):
        raise ValueError(f"split must be three numbers, got {split!r}") from None
    if len(split) != 3:
        raise ValueError(f"split must have 3 values (train, valid, test), got {len(split)}")
    if any(not math.isfinite(x) or x < 0 for x in split):
        raise ValueError(f"split values must be non-negative, got {split}")
    if abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split values must sum to 1, got {split} (sum {sum(split):g})")
    return split


def split_by_event(trace_ids, source_ids, split=(0.7, 0.1, 0.2), seed=0):
    """Split trace ids into train/valid/test, keeping each event in one split.

    Parameters
    ----------
    trace_ids : sequence of str
        Trace ids (earthquake traces only).
    source_ids : sequence of str
        Event id of each trace (same length as ``trace_ids``).
    split : tuple of 3 floats
        Fractions of *events* for train, valid and test; non-negative, sum 1.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    train, valid, test : numpy.ndarray
        Arrays of trace-id strings (dtype str). A split with a positive
        fraction gets at least one event when there are enough events.
    """
    split = check_split_fractions(split)
    trace_ids = np.asarray(trace_ids, dtype=str)
    source_ids = np.asarray(source_ids, dtype=str)
    if trace_ids.shape != source_ids.shape:
        raise ValueError("trace_ids and source_ids must have the same length")
    events = pd.unique(source_ids)
    n = len(events)
    # Largest-remainder allocation of events to splits.
    exact = np.array(split) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in range(3):  # no empty split that was asked for, if possible
        if split[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    by_event = pd.Series(np.arange(len(trace_ids))).groupby(source_ids).apply(list)
    out = []
    for i in range(3):
        ev = events[order[bounds[i]:bounds[i + 1]]]
        idx = [j for e in ev for j in by_event[e]]
        out.append(np.array(trace_ids[idx], dtype=str))
    return tuple(out)
