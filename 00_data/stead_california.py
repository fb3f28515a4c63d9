"""The STEAD source of the data build: the real STEAD release -> California DataCollected set.

Reads one or more STEAD pairs (``merge.hdf5`` + ``merge.csv``, or
``chunk2.hdf5`` + ``chunk2.csv`` ... ``chunk6``), selects the local-earthquake
traces whose station AND event lie in the region (default: California),
band-passes and tapers each trace as the upstream DataCollected builder did.
:class:`SteadSource` hands this to the shared engine
(:func:`build_engine.build_dataset`: shards, resume, splits by event,
reports, commit), which writes the outputs listed there.

Both STEAD HDF5 layouts are read: the released one (``data/<trace_name>``)
and the older one (``earthquake/local/<name>``, ``non_earthquake/noise/<name>``).
The CSV is used for the selection, the HDF5 attributes for the values.

Must not import keras.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import build_engine as engine  # noqa: E402
from california import region_from_options  # noqa: E402
from utrans_loc import traces as T  # noqa: E402
from utrans_loc import vocabulary  # noqa: E402
from utrans_loc.waveforms import WINDOW  # noqa: E402

__all__ = ["check_inputs", "select_traces", "process_trace", "build_california", "SteadSource"]

DIM = (WINDOW.npts, len(WINDOW.channels))   # STEAD's traces are the model's window as they are
EARTHQUAKE = "earthquake_local"


_LOCATION = vocabulary.names(*engine.LOCATION_FIELDS, to="stead")
_CSV_REQUIRED = ("trace_name", *vocabulary.names("data_category", to="stead"), *_LOCATION)
_CSV_OPTIONAL = vocabulary.names("network_code", "receiver_code", "source_id", "magnitude",
                                 "source_distance_km", "snr_db", "source_origin_time", to="stead")
# Each optional filter: (count of the rows it removes, its column, +1: keep value >= limit,
# -1: keep value <= limit).
_FILTERS = {"min_snr_db": ("below_min_snr_db", vocabulary.name("snr_db", "stead"), 1),
            "max_distance_km": ("above_max_distance_km",
                                vocabulary.name("source_distance_km", "stead"), -1),
            "min_magnitude": ("below_min_magnitude", vocabulary.name("magnitude", "stead"), 1)}
_NUMERIC = _LOCATION + vocabulary.names("magnitude", "source_distance_km", to="stead")
# The HDF5 attributes (DataCollected names) that must place the trace.
_COORDS = engine.LOCATION_ATTRS
_DEPTH = vocabulary.name("depth_km", "datacollected")


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------
def check_inputs(stead_hdf5, stead_csv, filters=None):
    """Check the STEAD input pairs before any work; return them as path lists.

    Raises
    ------
    FileNotFoundError
        A file is missing (the message names it).
    ValueError
        Unequal numbers of HDF5 and CSV files, an HDF5 file that cannot be
        read or is not in a STEAD layout, a CSV without the STEAD columns (or
        without a column a requested filter needs); the message names the file.
    """
    hdf5s = [str(p) for p in _as_list(stead_hdf5)]
    csvs = [str(p) for p in _as_list(stead_csv)]
    if not hdf5s or not csvs:
        raise ValueError("give at least one STEAD pair: --stead_hdf5 FILE.hdf5 "
                         "--stead_csv FILE.csv")
    if len(hdf5s) != len(csvs):
        raise ValueError(f"got {len(hdf5s)} stead_hdf5 and {len(csvs)} stead_csv files: give "
                         "them in pairs, in the same order (merge.hdf5 with merge.csv, ...)")
    for path in hdf5s:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"STEAD HDF5 file not found: {path}")
        try:
            with h5py.File(path, "r") as fh:
                layout = T.h5_layout(fh)
        except OSError as err:
            raise ValueError(f"{path}: not a readable HDF5 file ({err})") from None
        if layout == T.LAYOUT_COLLECTED:
            raise ValueError(f"{path}: not a STEAD HDF5 file (no 'data' group of traces and no "
                             "'earthquake/local' group)")
    needed = set(_CSV_REQUIRED) | {_FILTERS[k][1] for k, v in (filters or {}).items()
                                   if v is not None}
    for path in csvs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"STEAD CSV file not found: {path}")
        try:
            header = pd.read_csv(path, nrows=0).columns
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
                OSError) as err:
            raise ValueError(f"{path}: not a readable CSV file ({err})") from None
        missing = sorted(needed - set(header))
        if missing:
            raise ValueError(f"{path}: not a STEAD metadata CSV (missing columns: "
                             f"{', '.join(missing)})")
    return hdf5s, csvs


def _as_list(paths):
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def _snr_mean(text):
    """Mean of STEAD's snr_db column ('[56.8 55.4 47.4]'); NaN when absent."""
    parts = text.str.strip("[] ").str.replace(",", " ", regex=False).str.split(expand=True)
    if parts.shape[1] == 0:
        return pd.Series(np.nan, index=text.index)
    return parts.apply(pd.to_numeric, errors="coerce").mean(axis=1).astype(float)


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------
def select_traces(stead_csv, region, min_snr_db=None, max_distance_km=None,
                  min_magnitude=None, chunk_rows=100_000):
    """Select the traces to build from the STEAD CSV files (read in chunks).

    A trace is selected when ``trace_category == 'earthquake_local'``, station
    AND event are inside ``region``, and it passes the optional filters: mean
    SNR of the 3 components >= ``min_snr_db``, ``source_distance_km <=
    max_distance_km``, ``source_magnitude >= min_magnitude`` (a missing value
    fails a filter that is set). Noise traces are never selected. The steps
    after reading are :func:`build_engine.select_rows`.

    Parameters
    ----------
    stead_csv : list of str
        CSV files; the position of a file is the ``input`` index of its rows.
    region : california.Region
        Station and event must be inside.
    min_snr_db, max_distance_km, min_magnitude : float or None
        Optional filters (None: off).
    chunk_rows : int
        CSV rows read at a time (memory stays bounded for any CSV size).

    Returns
    -------
    selected : pandas.DataFrame
        One row per selected trace, in input order: ``trace_name``, ``input``
        and the CSV's coordinates, ids, magnitude, distance and mean SNR.
    rejected : pandas.DataFrame
        Earthquake rows that cannot be placed (``kind`` 'csv_coordinates') or
        repeat an earlier trace name (``kind`` 'duplicate'), with ``reason``.
    counts : dict
        Rows in (per file and total), per category, and how many rows each
        step removed.
    """
    counts = {"rows_in": 0, "rows_in_per_file": [], "categories": {},
              "earthquake_local": 0, "missing_coordinates": 0, "outside_region": 0,
              "below_min_snr_db": 0, "above_max_distance_km": 0, "below_min_magnitude": 0,
              "duplicates": 0, "selected": 0}
    limits = {"min_snr_db": min_snr_db, "max_distance_km": max_distance_km,
              "min_magnitude": min_magnitude}
    filters = [(_FILTERS[k][0], _limit_filter(*_FILTERS[k][1:], limit))
               for k, limit in limits.items() if limit is not None]
    selected, rejected, counts = engine.select_rows(
        _earthquake_rows(stead_csv, int(chunk_rows), counts), region, _LOCATION, counts,
        filters, prepare=_with_snr_mean,
        missing_reason="missing station or event coordinates in the CSV",
        duplicate_reason="trace name already selected from an earlier input")
    columns = ["trace_name", "input"] + list(_CSV_REQUIRED[1:] + _CSV_OPTIONAL)
    return selected.reindex(columns=columns), rejected, counts


def _earthquake_rows(stead_csv, chunk_rows, counts):
    """(input index, earthquake rows) of each CSV chunk; counts rows and categories."""
    category = _CSV_REQUIRED[1]
    for index, path in enumerate(stead_csv):
        header = set(pd.read_csv(path, nrows=0).columns)
        usecols = [c for c in _CSV_REQUIRED + _CSV_OPTIONAL if c in header]
        n_file = 0
        # Strings only: STEAD writes missing values as 'None', which pandas would
        # otherwise turn into mixed object columns; numbers are converted below.
        for chunk in pd.read_csv(path, usecols=usecols, dtype=str, keep_default_na=False,
                                 chunksize=chunk_rows):
            n_file += len(chunk)
            for value, n in chunk[category].value_counts().items():
                counts["categories"][value] = counts["categories"].get(value, 0) + int(n)
            eq = chunk[chunk[category] == EARTHQUAKE].copy()
            counts["earthquake_local"] += len(eq)
            if eq.empty:
                continue
            for column in _NUMERIC:
                if column in eq:
                    eq[column] = pd.to_numeric(eq[column], errors="coerce")
            yield index, eq
        counts["rows_in_per_file"].append(n_file)
        counts["rows_in"] += n_file


def _with_snr_mean(rows):
    """The rows with snr_db as the mean of the 3 components (parsed where needed only)."""
    column = vocabulary.name("snr_db", "stead")
    return rows.assign(**{column: _snr_mean(rows[column]) if column in rows else np.nan})


def _limit_filter(column, sign, limit):
    """Mask of the rows with value >= limit (sign 1) or <= limit (sign -1); NaN fails."""
    return lambda rows: sign * (rows[column].to_numpy(float) - limit) >= 0


# --------------------------------------------------------------------------
# One trace
# --------------------------------------------------------------------------
def process_trace(reader, trace_name, region):
    """Read one STEAD trace, check it, band-pass and taper it.

    Parameters
    ----------
    reader : utrans_loc.traces.H5Reader
        Reader of the STEAD file (``bandpass=False``: raw counts).
    trace_name : str
        The trace.
    region : california.Region
        Station and event (from the HDF5 attributes) must be inside.

    Returns
    -------
    data : numpy.ndarray
        (6000, 3) float32: 1-45 Hz zero-phase Butterworth (2 corners) and a
        cosine taper of 1 % per end, at most 2 s (the window's band-pass,
        ``WINDOW.bandpass``).
    attrs : dict
        Upstream attribute names (``T.stead_to_upstream``).

    Raises
    ------
    build_engine.SkipTrace
        Not in the file ('missing'), wrong shape ('shape'), NaN/Inf samples
        ('nonfinite'), all zeros ('zero'), missing coordinates or depth in the
        HDF5 attributes ('coordinates'), or HDF5 coordinates outside the
        region although the CSV's were inside ('region').
    """
    if not reader.has(trace_name):
        raise engine.SkipTrace("missing", f"not in {reader.file_name}")
    try:
        raw = reader.waveform(trace_name, DIM)
    except T.TraceError:
        shape = reader.group(trace_name).shape
        raise engine.SkipTrace("shape", f"waveform shape {shape}, expected {DIM}") from None
    engine.check_samples(raw)
    attrs = reader.attrs(trace_name)
    missing = [n for n in _COORDS + (_DEPTH,) if not math.isfinite(T.attr_float(attrs, n))]
    if missing:
        raise engine.SkipTrace("coordinates",
                               f"no usable {', '.join(missing)} in the HDF5 attributes")
    lat, lon, event_lat, event_lon = (T.attr_float(attrs, n) for n in _COORDS)
    if not (region.contains(lat, lon)[0] and region.contains(event_lat, event_lon)[0]):
        raise engine.SkipTrace("region", "station or event outside the region by the HDF5 "
                                         "attributes (the CSV placed it inside)")
    return WINDOW.bandpass(raw), attrs


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------
def build_california(stead_hdf5, stead_csv, output_hdf5, output_dir, region_mode="state",
                     region=None, min_snr_db=None, max_distance_km=None, min_magnitude=None,
                     split=(0.7, 0.1, 0.2), seed=0, shard_size=1000, csv_chunk_rows=100_000,
                     progress=True, log=None, interrupt_after=None, bbox=None):
    """Build the California DataCollected HDF5 and event-grouped splits from STEAD.

    Parameters
    ----------
    stead_hdf5, stead_csv : str or list of str
        STEAD pairs in the same order (``merge.hdf5`` / ``merge.csv``, or
        ``chunk2.hdf5`` / ``chunk2.csv``, ...). Released (``data/<name>``) or
        older (``earthquake/local/<name>``) HDF5 layout.
    output_hdf5 : str or Path
        DataCollected HDF5 to write; must not exist.
    output_dir : str or Path
        Folder for the split files, ``california_traces.csv``,
        ``skipped_traces.csv`` and ``build_report.txt`` (none may exist).
    region_mode : {'state', 'bbox', 'none'}
        Station and event inside the California polygon, inside ``bbox``
        (default: the California box), or anywhere
        (:func:`california.make_region`).
    bbox : sequence of 4 floats, optional
        lat_min lat_max lon_min lon_max (``region_mode='bbox'``).
    min_snr_db, max_distance_km, min_magnitude : float, optional
        Extra filters (see :func:`select_traces`).
    split, seed, shard_size, progress, log, interrupt_after
        As :func:`build_engine.build_dataset`.
    csv_chunk_rows : int
        CSV rows read at a time.
    region : sequence of 4 floats, optional
        Earlier spelling of ``region_mode='bbox', bbox=region`` (as
        ``region_mode='polygon'`` is of ``'state'``): accepted, with a note to
        ``log`` (:func:`california.region_from_options`).

    Returns
    -------
    dict
        As :func:`build_engine.build_dataset`.

    Raises
    ------
    FileNotFoundError, ValueError, FileExistsError, KeyboardInterrupt
        As :func:`build_engine.build_dataset`.
    """
    filters = {"min_snr_db": min_snr_db, "max_distance_km": max_distance_km,
               "min_magnitude": min_magnitude}
    for name, value in filters.items():
        if value is not None and not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if int(csv_chunk_rows) < 1:
        raise ValueError(f"csv_chunk_rows must be >= 1, got {csv_chunk_rows}")
    engine.check_build_parameters(split, shard_size)
    region_obj = region_from_options(region_mode, bbox, region, log)
    source = SteadSource(stead_hdf5, stead_csv, filters, int(csv_chunk_rows))
    return engine.build_dataset(source, output_hdf5, output_dir, region_obj, split=split,
                                seed=seed, shard_size=shard_size, progress=progress, log=log,
                                interrupt_after=interrupt_after)


class SteadSource:
    """STEAD pairs as a :class:`build_engine.Source`."""

    title = "build_california"
    selection_columns = ("trace_name", "input")

    def __init__(self, stead_hdf5, stead_csv, filters, chunk_rows=100_000):
        self.hdf5s, self.csvs = check_inputs(stead_hdf5, stead_csv, filters)
        self.filters, self.chunk_rows = filters, int(chunk_rows)

    @property
    def inputs(self):
        return self.hdf5s + self.csvs

    @property
    def selection_inputs(self):
        return self.csvs

    def manifest(self):
        return {"inputs": [{"hdf5": engine.file_id(h), "csv": engine.file_id(c)}
                           for h, c in zip(self.hdf5s, self.csvs)], "filters": self.filters}

    def input_label(self, index):
        return self.hdf5s[int(index)]

    def describe(self):
        return [f"inputs: {', '.join(f'{h} + {v}' for h, v in zip(self.hdf5s, self.csvs))}",
                f"filters: {self.filters}"]

    def select(self, region):
        return select_traces(self.csvs, region, chunk_rows=self.chunk_rows, **self.filters)

    def selection_report(self, s):
        return [f"rows in: {s['rows_in']} (per file: {s['rows_in_per_file']}); categories: "
                f"{s['categories']}",
                f"earthquake_local: {s['earthquake_local']}; removed: missing coordinates (CSV) "
                f"{s['missing_coordinates']}, outside the region {s['outside_region']}, "
                f"min_snr_db {s['below_min_snr_db']}, max_distance_km "
                f"{s['above_max_distance_km']}, min_magnitude {s['below_min_magnitude']}, "
                f"duplicates {s['duplicates']}"]

    def nothing_selected(self, s, region):
        return (f"no trace selected from {', '.join(self.csvs)} ({s['rows_in']} rows, "
                f"{s['earthquake_local']} earthquake_local, {s['outside_region']} outside the "
                f"{region.name} region): check the region and filters")

    def open(self):
        return [T.H5Reader(p) for p in self.hdf5s]

    def process(self, readers, row, region):
        return process_trace(readers[int(row["input"])], row["trace_name"], region)

    def skipped_attrs(self, readers, row):
        return readers[int(row["input"])].attrs(row["trace_name"])

    def fixed_splits(self, selected):
        return None
