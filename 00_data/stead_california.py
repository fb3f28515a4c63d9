"""Build the California STEAD training set from the real STEAD release.

Reads one or more STEAD pairs (``merge.hdf5`` + ``merge.csv``, or
``chunk2.hdf5`` + ``chunk2.csv`` ... ``chunk6``), selects the local-earthquake
traces whose station AND event lie in California, band-passes and tapers each
trace as the upstream DataCollected builder did, and writes

* the DataCollected HDF5 (UTRANS_SPEC section 1): group ``<trace_name>`` with
  dataset ``data`` (6000, 3) float32 and the upstream attribute names;
* ``train_Events.npy``, ``valid_Events.npy``, ``test_Events.npy``: trace ids
  grouped by ``source_id``, so no earthquake is in two splits;
* ``california_traces.csv`` (every written trace with its split),
  ``skipped_traces.csv`` (every selected trace that was not written, with the
  reason) and ``build_report.txt`` (counts per step, split and network).

Both STEAD HDF5 layouts are read: the released one (``data/<trace_name>``)
and the older one (``earthquake/local/<name>``, ``non_earthquake/noise/<name>``).
The CSV is used for the selection, the HDF5 attributes for the values.

Streaming and resume: traces are read, filtered and written one at a time
into shard files of ``shard_size`` traces inside ``<output_hdf5>.partial/``;
a shard is written to a temporary name and renamed when complete, so an
interrupted run (Ctrl-C, kill, power loss) started again with the same
arguments redoes at most one shard. At the end the shards are merged into the
output file, and the outputs are moved to their final names; an existing
output is never overwritten.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from california import LAT_RANGE, LON_RANGE, check_split_fractions, split_by_event  # noqa: E402
from utrans_loc import traces as T  # noqa: E402
from utrans_loc.files import atomic_save  # noqa: E402

__all__ = [
    "CA_POLYGON", "CA_BBOX", "Region", "make_region", "SkipTrace",
    "check_inputs", "select_traces", "process_trace", "build_california",
    "SteadSource", "build_dataset", "output_paths", "split_summary",
]

DIM = (6000, 3)
EARTHQUAKE = "earthquake_local"

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

_CSV_REQUIRED = ("trace_name", "trace_category", "receiver_latitude", "receiver_longitude",
                 "source_latitude", "source_longitude")
_CSV_OPTIONAL = ("network_code", "receiver_code", "source_id", "source_magnitude",
                 "source_distance_km", "snr_db", "source_origin_time")
_FILTER_COLUMN = {"min_snr_db": "snr_db", "max_distance_km": "source_distance_km",
                  "min_magnitude": "source_magnitude"}
_COORDS = ("station_lat", "station_long", "event_lat", "event_long")
# Columns of the per-shard record (one row per selected trace).
_RECORD = ("trace_name", "input", "status", "kind", "reason", "network_code",
           "receiver_code", "source_id", "group_key", "station_lat", "station_long",
           "event_lat", "event_long", "depth", "magnitude", "snr_db", "source_distance_km")
SPLITS = ("train", "valid", "test")
_FORMAT = 1   # bump when the work-folder format changes (an old one is then refused)


# --------------------------------------------------------------------------
# Region
# --------------------------------------------------------------------------
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


def make_region(region_mode="polygon", region=None):
    """The selection region.

    Parameters
    ----------
    region_mode : {'polygon', 'bbox'}
        ``polygon``: :data:`CA_POLYGON`; ``bbox``: :data:`CA_BBOX`
        (lat 32-42, lon -125 to -114).
    region : sequence of 4 floats, optional
        lat_min, lat_max, lon_min, lon_max; overrides ``region_mode``.

    Returns
    -------
    Region
    """
    if region is not None:
        try:
            bounds = tuple(float(v) for v in region)
        except (TypeError, ValueError):
            raise ValueError(f"region must be 4 numbers lat_min lat_max lon_min lon_max, "
                             f"got {region!r}") from None
        if len(bounds) != 4 or not all(math.isfinite(b) for b in bounds):
            raise ValueError(f"region must be 4 finite numbers lat_min lat_max lon_min "
                             f"lon_max, got {region!r}")
        la0, la1, lo0, lo1 = bounds
        if not (-90 <= la0 < la1 <= 90 and -180 <= lo0 < lo1 <= 180):
            raise ValueError(f"region {list(bounds)}: need -90 <= lat_min < lat_max <= 90 and "
                             "-180 <= lon_min < lon_max <= 180")
        return Region("bbox", bounds=bounds, name="custom")
    if region_mode == "polygon":
        return Region("polygon", vertices=CA_POLYGON, name="California")
    if region_mode == "bbox":
        return Region("bbox", bounds=CA_BBOX, name="California")
    raise ValueError(f"region_mode must be 'polygon' or 'bbox', got {region_mode!r}")


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
    needed = set(_CSV_REQUIRED) | {_FILTER_COLUMN[k] for k, v in (filters or {}).items()
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


def select_traces(stead_csv, region, min_snr_db=None, max_distance_km=None,
                  min_magnitude=None, chunk_rows=100_000):
    """Select the traces to build from the STEAD CSV files (read in chunks).

    A trace is selected when ``trace_category == 'earthquake_local'``, station
    AND event are inside ``region``, and it passes the optional filters: mean
    SNR of the 3 components >= ``min_snr_db``, ``source_distance_km <=
    max_distance_km``, ``source_magnitude >= min_magnitude`` (a missing value
    fails a filter that is set). Noise traces are never selected.

    Parameters
    ----------
    stead_csv : list of str
        CSV files; the position of a file is the ``input`` index of its rows.
    region : Region
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
    selected, rejected, seen = [], [], set()
    for index, path in enumerate(stead_csv):
        header = set(pd.read_csv(path, nrows=0).columns)
        usecols = [c for c in _CSV_REQUIRED + _CSV_OPTIONAL if c in header]
        n_file = 0
        # Strings only: STEAD writes missing values as 'None', which pandas would
        # otherwise turn into mixed object columns; numbers are converted below.
        reader = pd.read_csv(path, usecols=usecols, dtype=str, keep_default_na=False,
                             chunksize=int(chunk_rows))
        for chunk in reader:
            n_file += len(chunk)
            for category, n in chunk["trace_category"].value_counts().items():
                counts["categories"][category] = counts["categories"].get(category, 0) + int(n)
            eq = chunk[chunk["trace_category"] == EARTHQUAKE].copy()
            counts["earthquake_local"] += len(eq)
            if eq.empty:
                continue
            for column in ("receiver_latitude", "receiver_longitude", "source_latitude",
                           "source_longitude", "source_magnitude", "source_distance_km"):
                if column in eq:
                    eq[column] = pd.to_numeric(eq[column], errors="coerce")
            coords = eq[["receiver_latitude", "receiver_longitude", "source_latitude",
                         "source_longitude"]].to_numpy(float)
            has = np.isfinite(coords).all(axis=1)
            if (~has).any():
                counts["missing_coordinates"] += int((~has).sum())
                rejected.append(pd.DataFrame({
                    "trace_name": eq["trace_name"][~has], "input": index,
                    "kind": "csv_coordinates",
                    "reason": "missing station or event coordinates in the CSV"}))
            eq, coords = eq[has], coords[has]
            inside = region.contains(coords[:, 0], coords[:, 1]) & \
                region.contains(coords[:, 2], coords[:, 3])
            counts["outside_region"] += int((~inside).sum())
            eq = eq[inside]
            if eq.empty:
                continue
            eq["snr_db"] = _snr_mean(eq["snr_db"]) if "snr_db" in eq else np.nan
            for name, column, limit, sign in (
                    ("below_min_snr_db", "snr_db", min_snr_db, 1),
                    ("above_max_distance_km", "source_distance_km", max_distance_km, -1),
                    ("below_min_magnitude", "source_magnitude", min_magnitude, 1)):
                if limit is None:
                    continue
                # value >= limit (sign 1) or value <= limit (sign -1); NaN fails.
                ok = (sign * (eq[column].to_numpy(float) - limit) >= 0)
                counts[name] += int((~ok).sum())
                eq = eq[ok]
            dup = eq["trace_name"].isin(seen).to_numpy() | eq["trace_name"].duplicated().to_numpy()
            if dup.any():
                counts["duplicates"] += int(dup.sum())
                rejected.append(pd.DataFrame({
                    "trace_name": eq["trace_name"][dup], "input": index, "kind": "duplicate",
                    "reason": "trace name already selected from an earlier input"}))
                eq = eq[~dup]
            seen.update(eq["trace_name"])
            eq.insert(1, "input", index)
            selected.append(eq)
        counts["rows_in_per_file"].append(n_file)
        counts["rows_in"] += n_file
    columns = ["trace_name", "input"] + [c for c in _CSV_REQUIRED[1:] + _CSV_OPTIONAL]
    selected = pd.concat(selected, ignore_index=True) if selected else pd.DataFrame()
    selected = selected.reindex(columns=columns)
    counts["selected"] = len(selected)
    rejected = pd.concat(rejected, ignore_index=True) if rejected else \
        pd.DataFrame(columns=["trace_name", "input", "kind", "reason"])
    return selected, rejected, counts


# --------------------------------------------------------------------------
# One trace
# --------------------------------------------------------------------------
class SkipTrace(Exception):
    """A trace that is not written; ``kind`` is a short code for the report."""

    def __init__(self, kind, reason):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def process_trace(reader, trace_name, region):
    """Read one STEAD trace, check it, band-pass and taper it.

    Parameters
    ----------
    reader : utrans_loc.traces.H5Reader
        Reader of the STEAD file (``bandpass=False``: raw counts).
    trace_name : str
        The trace.
    region : Region
        Station and event (from the HDF5 attributes) must be inside.

    Returns
    -------
    data : numpy.ndarray
        (6000, 3) float32: 1-45 Hz zero-phase Butterworth (2 corners) and a
        cosine taper of 1 % per end, at most 2 s (``T.bandpass_taper``).
    attrs : dict
        Upstream attribute names (``T.stead_to_upstream``).

    Raises
    ------
    SkipTrace
        Not in the file ('missing'), wrong shape ('shape'), NaN/Inf samples
        ('nonfinite'), all zeros ('zero'), missing coordinates or depth in the
        HDF5 attributes ('coordinates'), or HDF5 coordinates outside the
        region although the CSV's were inside ('region').
    """
    if not reader.has(trace_name):
        raise SkipTrace("missing", f"not in {reader.file_name}")
    try:
        raw = reader.waveform(trace_name, DIM)
    except T.TraceError:
        shape = reader.group(trace_name).shape
        raise SkipTrace("shape", f"waveform shape {shape}, expected {DIM}") from None
    if not np.isfinite(raw).all():
        raise SkipTrace("nonfinite", f"{int((~np.isfinite(raw)).sum())} NaN/Inf samples")
    if not raw.any():
        raise SkipTrace("zero", "all-zero waveform")
    attrs = reader.attrs(trace_name)
    missing = [n for n in _COORDS + ("depth",) if not math.isfinite(T.attr_float(attrs, n))]
    if missing:
        raise SkipTrace("coordinates", f"no usable {', '.join(missing)} in the HDF5 attributes")
    values = {n: T.attr_float(attrs, n) for n in _COORDS}
    if not (region.contains(values["station_lat"], values["station_long"])[0]
            and region.contains(values["event_lat"], values["event_long"])[0]):
        raise SkipTrace("region", "station or event outside the region by the HDF5 attributes "
                                  "(the CSV placed it inside)")
    return T.bandpass_taper(raw), attrs


def _short(value):
    """A float with the stored precision: float32 0.45 -> 0.45, not 0.44999998807907104."""
    value = np.asarray(value).ravel()[0] if np.ndim(value) else value
    number = T.attr_float({"v": value}, "v")
    return float(str(value)) if isinstance(value, np.float32) and math.isfinite(number) \
        else number


def _record(trace_name, index, attrs, status, kind="", reason=""):
    """One row of a shard's record (written or skipped trace)."""
    rec = dict.fromkeys(_RECORD, "")
    rec.update(trace_name=trace_name, input=int(index), status=status, kind=kind, reason=reason)
    if attrs:
        for name in ("network_code", "receiver_code", "source_id"):
            rec[name] = attrs.get(name, "None")
        for name in _COORDS + ("depth", "magnitude", "source_distance_km"):
            rec[name] = _short(attrs.get(name, "None"))
        snr = T.attr_snr(attrs)
        rec["snr_db"] = round(float(np.nanmean(snr)), 3) if np.isfinite(snr).any() else math.nan
        # Event key for the split: STEAD's source_id; without one, origin time
        # and epicentre (recordings of one event share them).
        rec["group_key"] = rec["source_id"] if rec["source_id"] != "None" else \
            f"{attrs.get('source_origin_time', 'None')}|{rec['event_lat']:.3f}|" \
            f"{rec['event_long']:.3f}"
    return rec


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------
def output_paths(output_hdf5, output_dir):
    """Final paths written by :func:`build_california`."""
    d = Path(output_dir)
    return {"hdf5": Path(output_hdf5), "train": d / "train_Events.npy",
            "valid": d / "valid_Events.npy", "test": d / "test_Events.npy",
            "traces_csv": d / "california_traces.csv",
            "skipped_csv": d / "skipped_traces.csv", "report": d / "build_report.txt"}


def _save_npy(path, ids):
    with open(path, "wb") as fh:   # a file object: np.save would add '.npy' to a name
        np.save(fh, np.asarray(ids, dtype=str))


def file_id(path):
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _check_outputs(paths, inputs, output_dir, work):
    """Refuse an output that is an input, a folder, or (outside a commit) exists."""
    inputs = {str(Path(p).resolve()) for p in inputs}
    for p in paths.values():
        if str(p.resolve()) in inputs:
            raise ValueError(f"output {p} is one of the inputs")
        if p.is_dir():
            raise ValueError(f"output path is a directory: {p}")
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"output_dir is not a folder: {output_dir}")
    if (work / "COMMIT.json").exists():
        return   # an interrupted commit: some outputs are already ours
    for p in paths.values():
        if p.exists():
            raise FileExistsError(f"output file already exists: {p} (it is never "
                                  "overwritten: pass another path or move it away)")


def _open_work_dir(work, manifest):
    """Create the work folder, or check that an existing one is this run's.

    Returns True when an interrupted run is resumed.
    """
    man_path = work / "manifest.json"
    if work.exists():
        if not man_path.is_file():
            raise ValueError(f"{work} exists but is not a build_california work folder "
                             "(no manifest.json): move it away")
        old = json.loads(man_path.read_text())
        differ = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        if differ:
            raise ValueError(f"{work} holds an interrupted run with other arguments or inputs "
                             f"(differs in: {', '.join(differ)}); rerun with the same arguments "
                             "to resume, or delete that folder to start over")
        return True
    work.mkdir(parents=True)
    atomic_save(man_path, lambda p: Path(p).write_text(json.dumps(manifest, indent=2)))
    return False


def _selection(work, source, region, log):
    """Select once; a resumed run reads the saved list (same traces, same order)."""
    sel_path, rej_path, cnt_path = (work / "selection.csv", work / "selection_rejected.csv",
                                    work / "selection.json")
    if cnt_path.exists():   # written last: the other two are complete
        selected = pd.read_csv(sel_path, usecols=list(source.selection_columns),
                               dtype={"trace_name": str, "input": int, "split": str})
        rejected = pd.read_csv(rej_path, dtype={"trace_name": str, "input": int, "kind": str,
                                                "reason": str})
        return selected, rejected, json.loads(cnt_path.read_text())
    log("selecting traces from " + ", ".join(source.selection_inputs))
    selected, rejected, counts = source.select(region)
    atomic_save(sel_path, lambda p: selected.to_csv(p, index=False))
    atomic_save(rej_path, lambda p: rejected.to_csv(p, index=False))
    atomic_save(cnt_path, lambda p: Path(p).write_text(json.dumps(counts, indent=2)))
    return selected, rejected, counts


def _write_shard(rows, readers, source, region, path, bar, budget):
    """Process and write one shard (trace by trace); returns the traces processed.

    The shard goes to ``<path>.tmp`` and is renamed when complete, after its
    record ``<path stem>.csv``: a shard file that exists is always whole.
    """
    tmp = path.with_name(path.name + ".tmp")
    records = []
    with h5py.File(tmp, "w") as out:
        for row in rows.to_dict("records"):
            trace_name, index = row["trace_name"], row["input"]
            if budget is not None:
                if budget[0] <= 0:
                    raise KeyboardInterrupt("interrupt_after reached")
                budget[0] -= 1
            try:
                data, attrs = source.process(readers, row, region)
            except SkipTrace as skip:
                attrs = None if skip.kind == "missing" else source.skipped_attrs(readers, row)
                records.append(_record(trace_name, index, attrs, "skipped", skip.kind,
                                       skip.reason))
            else:
                group = out.create_group(trace_name)
                group.create_dataset("data", data=data)
                group.attrs.update(attrs)
                records.append(_record(trace_name, index, attrs, "written"))
            bar.update(1)
    atomic_save(path.with_suffix(".csv"),
                  lambda p: pd.DataFrame(records, columns=_RECORD).to_csv(p, index=False))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(records)


def _process(work, selected, source, region, shard_size, progress, log, interrupt_after):
    """Write every shard not yet written; returns (shard paths, processed, seconds, resumed)."""
    n_shards = math.ceil(len(selected) / shard_size)
    shards = [work / f"shard_{k:06d}.h5" for k in range(n_shards)]
    for leftover in work.glob("*.tmp*"):
        leftover.unlink()   # a shard or file cut short by an interruption
    done = [p.exists() for p in shards]
    if any(done):
        log(f"resuming: {sum(done)} of {n_shards} shards already written in {work}")
    readers = source.open()
    budget = None if interrupt_after is None else [int(interrupt_after)]
    n_done = sum(len(selected.iloc[k * shard_size:(k + 1) * shard_size])
                 for k in range(n_shards) if done[k])
    processed, t0 = 0, time.time()
    bar = tqdm(total=len(selected), initial=n_done, unit="trace", desc="traces",
               disable=not progress, mininterval=0.5)
    try:
        for k in range(n_shards):
            if not done[k]:
                rows = selected.iloc[k * shard_size:(k + 1) * shard_size]
                processed += _write_shard(rows, readers, source, region, shards[k], bar,
                                          budget)
    finally:
        bar.close()
        for reader in readers:
            reader.close()
    return shards, processed, time.time() - t0, sum(done)


def _merge(shards, dest):
    """Copy every trace group of the shards into ``dest`` (atomic)."""
    if len(shards) == 1:
        atomic_save(dest, lambda tmp: shutil.copyfile(shards[0], tmp))
        return

    def write(tmp):
        with h5py.File(tmp, "w") as out:
            for shard in shards:
                with h5py.File(shard, "r") as src:
                    for name in src:
                        src.copy(src[name], out, name=name)
    atomic_save(dest, write)


def _records(shards, rejected, source):
    """Written traces and the skip list (CSV rejections + traces skipped on reading)."""
    text = dict.fromkeys(("trace_name", "status", "kind", "reason", "network_code",
                          "receiver_code", "source_id", "group_key"), str)
    records = pd.concat([pd.read_csv(p.with_suffix(".csv"), dtype=text, keep_default_na=False,
                                     na_values=[""]) for p in shards], ignore_index=True)
    written = records[records["status"] == "written"].reset_index(drop=True)
    skipped = pd.concat([rejected, records.loc[records["status"] == "skipped",
                                               ["trace_name", "input", "kind", "reason"]]],
                        ignore_index=True)
    skipped.insert(1, "input_hdf5", [source.input_label(i) for i in skipped["input"]])
    return written, skipped.drop(columns="input")


def split_summary(traces):
    """Traces per network and split (rows: networks + 'total'; columns: splits + 'total')."""
    table = pd.crosstab(traces["network_code"], traces["split"]).reindex(
        columns=list(SPLITS), fill_value=0)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.index.name = "network"
    table.columns.name = None
    return table


def _report_text(info):
    c, s = info["counts"], info["selection"]
    lines = [
        f"{info['title']} report",
        *info["inputs"],
        f"region: {info['region']}",
        info["split_text"],
        *info["selection_lines"],
        f"selected: {s['selected']}; written (rows out): {c['written']}; skipped on reading: "
        f"{c['skipped_reading']}; skip list by kind: {c['skipped_by_kind']}",
        f"events: {c['events']}; traces per split: {c['splits']}; events per split: "
        f"{c['split_events']}; events in more than one split: {c['events_in_two_splits']}",
        f"time: {info['time_s']:.1f} s; traces processed in this run: {info['processed']} "
        f"({info['traces_per_s']:.1f} traces/s); shards resumed: {info['shards_resumed']}",
        "",
        "traces per network and split:",
        info["per_network"].to_string(),
    ]
    return "\n".join(lines) + "\n"


def build_california(stead_hdf5, stead_csv, output_hdf5, output_dir, region_mode="polygon",
                     region=None, min_snr_db=None, max_distance_km=None, min_magnitude=None,
                     split=(0.7, 0.1, 0.2), seed=0, shard_size=1000, csv_chunk_rows=100_000,
                     progress=True, log=None, interrupt_after=None):
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
    region_mode : {'polygon', 'bbox'}
        California as :data:`CA_POLYGON` or :data:`CA_BBOX`.
    region : sequence of 4 floats, optional
        lat_min lat_max lon_min lon_max; overrides ``region_mode``.
    min_snr_db, max_distance_km, min_magnitude : float, optional
        Extra filters (see :func:`select_traces`).
    split : 3 floats
        Fractions of events (source_id) for train, valid, test; sum 1.
    seed : int
        Seed of the event shuffle.
    shard_size : int
        Traces per intermediate shard: the unit of resume.
    csv_chunk_rows : int
        CSV rows read at a time.
    progress : bool
        tqdm progress bar (traces/s).
    log : callable, optional
        Called with one-line status messages (selection, resume, merge).
    interrupt_after : int, optional
        Testing hook: raise KeyboardInterrupt before the trace after this
        many traces processed in this call, as a Ctrl-C would.

    Returns
    -------
    dict
        ``paths`` (final outputs, str). Unless the call only finished moving
        the outputs of an interrupted run: ``selection`` (CSV counts),
        ``counts`` (written, skipped, events, per split), ``per_network``
        (DataFrame), ``processed`` (traces processed in this call),
        ``shards_resumed``, ``time_s``, ``traces_per_s``.

    Raises
    ------
    FileNotFoundError, ValueError
        Bad input or parameter (the message names it).
    FileExistsError
        An output exists (the message names it).
    KeyboardInterrupt
        Interrupted; run again with the same arguments to resume.

    Notes
    -----
    Work folder ``<output_hdf5>.partial/``: ``manifest.json`` (arguments and
    input sizes/times: a resumed run must match), the selection, shard files
    of ``shard_size`` traces with their records, then the staged outputs and
    ``COMMIT.json``. Memory is bounded by one trace plus the selection table
    (a few hundred bytes per selected trace); disk needs about twice the
    output size until the end (shards + merged file).
    """
    filters = {"min_snr_db": min_snr_db, "max_distance_km": max_distance_km,
               "min_magnitude": min_magnitude}
    for name, value in filters.items():
        if value is not None and not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if int(csv_chunk_rows) < 1:
        raise ValueError(f"csv_chunk_rows must be >= 1, got {csv_chunk_rows}")
    _check_build_parameters(split, shard_size)
    region_obj = make_region(region_mode, region)
    source = SteadSource(stead_hdf5, stead_csv, filters, int(csv_chunk_rows))
    return build_dataset(source, output_hdf5, output_dir, region_obj, split=split, seed=seed,
                         shard_size=shard_size, progress=progress, log=log,
                         interrupt_after=interrupt_after)


class SteadSource:
    """STEAD pairs as the input of :func:`build_dataset`.

    A source gives the builder its inputs (``inputs``, ``manifest``,
    ``describe``), the selection (``select``, ``selection_columns``,
    ``selection_report``) and one trace at a time (``open``, ``process``,
    ``skipped_attrs``); ``fixed_splits`` may impose the splits.
    """

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
        return {"inputs": [{"hdf5": file_id(h), "csv": file_id(c)}
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


def build_dataset(source, output_hdf5, output_dir, region, split=(0.7, 0.1, 0.2), seed=0,
                  shard_size=1000, progress=True, log=None, interrupt_after=None):
    """The build steps every data builder shares, on one ``source`` (:class:`SteadSource`,
    ``seisbench_data.SeisBenchSource``): select, process trace by trace into shards
    (resumable), split by event (or as the source fixes), stage, commit.

    Parameters and return value as :func:`build_california` (``region`` is a
    :class:`Region`); ``interrupt_after`` is the testing hook described there.
    """
    start = time.time()
    log = log or (lambda message: None)
    split = _check_build_parameters(split, shard_size)
    paths = output_paths(output_hdf5, output_dir)
    work = Path(f"{paths['hdf5']}.partial")
    _check_outputs(paths, source.inputs, output_dir, work)
    manifest = {"format": _FORMAT, **source.manifest(),
                "outputs": {k: str(Path(v).resolve()) for k, v in paths.items()},
                "region": region.describe(), "split": list(split),
                "seed": int(seed), "shard_size": int(shard_size)}
    paths["hdf5"].parent.mkdir(parents=True, exist_ok=True)
    _open_work_dir(work, manifest)
    commit = work / "COMMIT.json"
    if commit.exists():
        log(f"finishing an interrupted run: moving the outputs out of {work}")
        return _finish(work, commit, paths)

    # 1. Selection.
    selected, rejected, sel_counts = _selection(work, source, region, log)
    if not len(selected):
        shutil.rmtree(work)
        raise ValueError(source.nothing_selected(sel_counts, region))
    # 2. Waveforms, trace by trace, into shards.
    shards, processed, t_proc, resumed = _process(work, selected, source, region,
                                                  int(shard_size), progress, log, interrupt_after)
    # 3. Splits by event (or the source's own); every output staged in the work folder first.
    written, skipped = _records(shards, rejected, source)
    if not len(written):
        raise ValueError(f"all {len(selected)} selected traces were skipped (reasons in the "
                         f"shard_*.csv files in {work}); nothing to write")
    fixed = source.fixed_splits(selected)
    parts, traces = _assign_splits(written, source, split, seed, fixed)
    staged = _stage_outputs(work, paths, shards, parts, traces, skipped, log)
    counts = _counts(written, skipped, rejected, parts)
    if counts["events_in_two_splits"]:
        log(f"warning: {counts['events_in_two_splits']} event(s) have traces in more than one "
            "split of the dataset's own split column (a leak between them)")
    info = {"title": source.title, "inputs": source.describe(), "region": region.describe(),
            "split": list(split), "seed": seed,
            "split_text": "split: the dataset's own split column (train, dev -> valid, test)"
            if fixed is not None else f"split (fractions of events): {list(split)}, seed {seed}",
            "selection": sel_counts, "selection_lines": source.selection_report(sel_counts),
            "counts": counts, "per_network": split_summary(traces), "processed": processed,
            "shards_resumed": resumed, "time_s": time.time() - start,
            "traces_per_s": processed / t_proc if processed and t_proc > 0 else math.nan}
    atomic_save(staged["report"], lambda p: Path(p).write_text(_report_text(info)))
    # 4. Commit: record what goes where, then move (a rerun finishes the moves).
    moves = {k: [str(staged[k]), str(paths[k])] for k in paths}
    atomic_save(commit, lambda p: Path(p).write_text(json.dumps(moves, indent=2)))
    return {**_finish(work, commit, paths), **info}


def _check_build_parameters(split, shard_size):
    """Reject bad sizes before any work; returns the split fractions."""
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return check_split_fractions(split)


def _assign_splits(written, source, split, seed, fixed=None):
    """Split the written traces by event (or as ``fixed``: trace id -> split); returns the
    3 id arrays and the traces table (with its ``split`` column); ``written`` gets the
    column too."""
    names = written["trace_name"].to_numpy()
    if fixed is None:
        parts = split_by_event(names, written["group_key"].to_numpy(), split=split, seed=seed)
    else:
        given = np.array([fixed[n] for n in names], dtype=str)
        parts = tuple(np.asarray(names[given == s], dtype=str) for s in SPLITS)
    split_of = {name: s for s, ids in zip(SPLITS, parts) for name in ids}
    written.insert(1, "split", written["trace_name"].map(split_of))
    written["input_hdf5"] = [source.input_label(i) for i in written["input"]]
    return parts, written.drop(columns=["input", "status", "kind", "reason", "group_key"])


def _stage_outputs(work, paths, shards, parts, traces, skipped, log):
    """Merge the shards and write every output under the work folder; returns their paths."""
    stage = work / "stage"
    stage.mkdir(exist_ok=True)
    staged = {"hdf5": work / "output.h5"}
    if not staged["hdf5"].exists():
        log(f"merging {len(shards)} shard(s) into one HDF5 file")
        _merge(shards, staged["hdf5"])
    staged.update({k: stage / paths[k].name for k in paths if k != "hdf5"})
    for name, ids in zip(SPLITS, parts):
        atomic_save(staged[name], lambda p, ids=ids: _save_npy(p, ids))
    atomic_save(staged["traces_csv"], lambda p: traces.to_csv(p, index=False))
    atomic_save(staged["skipped_csv"], lambda p: skipped.to_csv(p, index=False))
    return staged


def _counts(written, skipped, rejected, parts):
    return {"written": len(written),
            "skipped_reading": len(skipped) - len(rejected),
            "skipped_by_kind": {k: int(v) for k, v in skipped["kind"].value_counts().items()},
            "events": int(written["group_key"].nunique()),
            "splits": {s: int(len(ids)) for s, ids in zip(SPLITS, parts)},
            "split_events": {s: int(written.loc[written["split"] == s, "group_key"].nunique())
                             for s in SPLITS},
            "events_in_two_splits": int((written.groupby("group_key")["split"].nunique() > 1)
                                        .sum())}


def _finish(work, commit, paths):
    """Move the staged outputs to their final names, then remove the work folder.

    COMMIT.json is data: each move must take a file from inside the work folder
    to the output path this call computed, or nothing is moved.
    """
    moves = json.loads(Path(commit).read_text())
    inside = Path(work).resolve()
    for key, pair in moves.items():
        ok = key in paths and isinstance(pair, list) and len(pair) == 2 and \
            Path(pair[0]).resolve().is_relative_to(inside) and \
            Path(pair[1]).resolve() == Path(paths[key]).resolve()
        if not ok:
            raise ValueError(f"{commit}: move {key!r} is not one of this build's outputs "
                             "(edited or foreign COMMIT.json); nothing moved: delete "
                             f"{work} and build again")
    for src, dst in moves.values():
        dst = Path(dst)
        if not Path(src).exists():
            continue   # moved before an interruption
        if dst.exists():
            raise FileExistsError(f"output file already exists: {dst} (it is never "
                                  "overwritten: move it away and run again)")
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dst)
        except OSError:   # another file system: copy, then rename into place
            atomic_save(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
            os.unlink(src)
    shutil.rmtree(work)
    return {"paths": {k: dst for k, (src, dst) in moves.items()}}
