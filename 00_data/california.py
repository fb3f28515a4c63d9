"""California region and split rules shared by the data builders.

``build_california.py`` (real STEAD) and ``build_from_seisbench.py`` (SeisBench
datasets) select the same region (:func:`make_region`, one option vocabulary:
``state | bbox | none`` with a ``bbox``); they and ``make_synthetic.py``
(synthetic, inside :data:`LAT_RANGE` / :data:`LON_RANGE`) split the same way:
by event, so no earthquake is in two splits (:func:`split_by_event`). No builder
imports another; all import this.
Must not import keras.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Region where events must lie (upstream California subset bounds).
LAT_RANGE = (32.0, 42.0)
LON_RANGE = (-125.0, -114.0)

# Coarse California polygon, (lat, lon) clockwise, 14 vertices. North, east
# and south sides follow the legal state boundary: 42 N; 120 W down to Lake
# Tahoe; the oblique line to the Colorado River at 35 N; the Colorado River
# (coarse, within ~15 km); the 1848 border line to the Pacific. The west
# side runs 0.3-0.8 deg offshore (outside the Channel Islands, San Clemente
# Island and Cape Mendocino, never west of 125 W) so near-shore events count
# as Californian; offshore Baja California stays out. The vertices are
# approximate coordinates (0.01 deg) of the named boundary points, placed by
# hand: a few km off on the land borders, enough to keep Nevada, Arizona,
# Oregon and Mexico out, not a legal boundary.
CA_POLYGON = np.array([
    (42.00, -125.00),   # offshore, Oregon line
    (42.00, -120.00),   # Oregon / Nevada / California corner
    (39.00, -120.00),   # Lake Tahoe: start of the oblique Nevada line
    (35.00, -114.63),   # Colorado River at the Nevada line
    (34.30, -114.14),   # Colorado River, Parker Dam
    (33.60, -114.52),   # Colorado River, Blythe
    (32.72, -114.72),   # Colorado River at the Mexican border (Yuma)
    (32.53, -117.12),   # Mexican border at the Pacific
    (32.45, -118.60),   # offshore, south of San Clemente Island
    (33.40, -120.20),   # offshore, outer Channel Islands
    (34.50, -121.20),   # off Point Arguello
    (36.50, -122.50),   # off Point Sur / Monterey
    (38.00, -123.60),   # off Point Reyes / Farallon Islands
    (40.40, -125.00),   # off Cape Mendocino
])
# California box (the synthetic generator's region): lat_min, lat_max, lon_min, lon_max.
# It also takes in western Nevada and northern Baja California.
CA_BBOX = (*LAT_RANGE, *LON_RANGE)   # (32, 42, -125, -114)

# The region words of every builder: the state polygon, a box, or everywhere.
REGION_MODES = ("state", "bbox", "none")
# Earlier words, still accepted with a note naming the new one.
OLD_REGION_MODES = {"polygon": "state"}   # build_california.py's --region_mode polygon


class Region:
    """A lat/lon region: a polygon (matplotlib.path) or a bounding box.

    Parameters
    ----------
    mode : {'polygon', 'bbox', 'all'}
        Kind of region ('all': every place with finite coordinates).
    vertices : array (N, 2), optional
        (lat, lon) vertices of the polygon (``mode='polygon'``).
    bounds : tuple of 4 floats, optional
        lat_min, lat_max, lon_min, lon_max (``mode='bbox'``, inclusive).
    name : str
        Name used in reports.
    """

    def __init__(self, mode, vertices=None, bounds=None, name=""):
        self.mode, self.name = mode, name
        if mode == "polygon":
            from matplotlib.path import Path as MplPath

            self.vertices = np.asarray(vertices, dtype=float)
            self._path = MplPath(self.vertices[:, ::-1])   # (x, y) = (lon, lat)
        elif mode == "bbox":
            self.bounds = tuple(float(b) for b in bounds)
        elif mode != "all":
            raise ValueError(f"region mode must be 'polygon', 'bbox' or 'all', got {mode!r}")

    def contains(self, lat, lon):
        """Boolean array: points inside the region (NaN coordinates: False)."""
        lat = np.atleast_1d(np.asarray(lat, dtype=float))
        lon = np.atleast_1d(np.asarray(lon, dtype=float))
        ok = np.isfinite(lat) & np.isfinite(lon)
        inside = np.zeros(lat.shape, dtype=bool)
        if self.mode == "all":
            inside = ok
        elif self.mode == "bbox":
            la0, la1, lo0, lo1 = self.bounds
            inside[ok] = (lat[ok] >= la0) & (lat[ok] <= la1) & (lon[ok] >= lo0) & (lon[ok] <= lo1)
        elif ok.any():
            inside[ok] = self._path.contains_points(np.column_stack([lon[ok], lat[ok]]))
        return inside

    def describe(self):
        """One line for reports and the resume manifest."""
        if self.mode == "all":
            return f"{self.name} (no region selection)"
        if self.mode == "bbox":
            return f"{self.name} bbox lat {self.bounds[0]:g}..{self.bounds[1]:g}, " \
                   f"lon {self.bounds[2]:g}..{self.bounds[3]:g}"
        pts = " ".join(f"{a:g},{b:g}" for a, b in self.vertices)
        return f"{self.name} polygon ({len(self.vertices)} vertices lat,lon: {pts})"


def make_region(region_mode="state", bbox=None):
    """The selection region of a builder.

    Parameters
    ----------
    region_mode : {'state', 'bbox', 'none'}
        ``state``: the California polygon :data:`CA_POLYGON`; ``bbox``:
        ``bbox``, or the California box :data:`CA_BBOX` (lat 32-42, lon -125
        to -114) when ``bbox`` is None; ``none``: everywhere.
    bbox : sequence of 4 floats, optional
        lat_min, lat_max, lon_min, lon_max (only with ``region_mode='bbox'``).

    Returns
    -------
    Region

    Raises
    ------
    ValueError
        An unknown mode, a ``bbox`` with another mode, or a bad ``bbox``.
    """
    if region_mode not in REGION_MODES:
        raise ValueError(f"region_mode must be one of {', '.join(REGION_MODES)}, got "
                         f"{region_mode!r}")
    if bbox is not None and region_mode != "bbox":
        raise ValueError(f"bbox is given but region_mode is {region_mode!r}: use "
                         "--region_mode bbox with --bbox")
    if region_mode == "none":
        return Region("all", name="everywhere")
    if region_mode == "state":
        return Region("polygon", vertices=CA_POLYGON, name="California")
    if bbox is None:
        return Region("bbox", bounds=CA_BBOX, name="California")
    return Region("bbox", bounds=_check_bbox(bbox), name="custom")


def _check_bbox(bbox):
    try:
        bounds = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"bbox must be 4 numbers lat_min lat_max lon_min lon_max, "
                         f"got {bbox!r}") from None
    if len(bounds) != 4 or not all(math.isfinite(b) for b in bounds):
        raise ValueError(f"bbox must be 4 finite numbers lat_min lat_max lon_min lon_max, "
                         f"got {bbox!r}")
    la0, la1, lo0, lo1 = bounds
    if not (-90 <= la0 < la1 <= 90 and -180 <= lo0 < lo1 <= 180):
        raise ValueError(f"bbox {list(bounds)}: need -90 <= lat_min < lat_max <= 90 and "
                         "-180 <= lon_min < lon_max <= 180")
    return bounds


def region_from_options(region_mode="state", bbox=None, region=None, note=None):
    """:func:`make_region` of a builder's options, earlier spellings accepted.

    Earlier spellings (``build_california.py`` before the builders shared one
    vocabulary): ``region_mode='polygon'`` is ``'state'``; ``region``
    (lat_min lat_max lon_min lon_max, which overrode the mode) is
    ``region_mode='bbox'`` with ``bbox``. Each one used is named, with its
    current spelling, in a call of ``note`` (a one-line message).
    """
    note = note or (lambda message: None)
    if region is not None:   # it overrode the mode, whatever that was
        if bbox is not None:
            raise ValueError("give --bbox or its earlier spelling --region, not both")
        words = " ".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in region)
        note(f"note: --region {words} is an earlier spelling: use --region_mode bbox "
             f"--bbox {words}")
        region_mode, bbox = "bbox", region
    elif region_mode in OLD_REGION_MODES:
        note(f"note: --region_mode {region_mode} is an earlier spelling: use --region_mode "
             f"{OLD_REGION_MODES[region_mode]}")
        region_mode = OLD_REGION_MODES[region_mode]
    return make_region(region_mode, bbox)


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
