"""Split files and the metadata of the traces they name.

A split is a ``.npy`` array of trace-id strings (``train_Events.npy``, ...).
:func:`load_ids` reads one; :func:`check_split` checks it against the HDF5
file before any training or testing starts and returns its metadata table
(:func:`read_metadata`), so a bad split fails in seconds with a message that
names the file and the first offending traces, never after an epoch.

Must not import keras.
"""

from __future__ import annotations

import math
import os
import pickle
import sys

import numpy as np
import pandas as pd

from utrans_loc import vocabulary
from utrans_loc.traces import H5Reader, TraceError, attr_float, attr_snr, attr_text

def load_ids(path):
    """A split file (.npy array of trace-id strings) as a str array.

    Never unpickles anything that can run code: a plain string array is read
    with ``allow_pickle=False``; an older object array (which NumPy stores as
    a pickle) is read by :func:`_load_object_ids`, which accepts only a NumPy
    array of str/bytes. Anything else is refused with the conversion to use.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        ids = np.load(path, allow_pickle=False)
    except ValueError:
        ids = _load_object_ids(path)
    except OSError as err:
        raise ValueError(f"{path}: not a numpy .npy file ({err})") from None
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "USO":
        raise ValueError(f"{path}: holds {getattr(ids, 'dtype', type(ids).__name__)} values, "
                         "not trace-id strings")
    ids = np.asarray(ids).ravel().astype(str)
    if ids.size == 0:
        raise ValueError(f"split file {path} is empty: no trace ids")
    return ids


CONVERT_HINT = ("convert it, once, if you trust it: python -c \"import numpy as np; "
                "np.save('NEW.npy', np.load('OLD.npy', allow_pickle=True).astype(str))\"")
# The only callables an object array of strings needs to be rebuilt.
_ARRAY_PICKLE_NAMES = {("numpy.core.multiarray", "_reconstruct"),
                       ("numpy._core.multiarray", "_reconstruct"),
                       ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles a NumPy object array and nothing else: any other global (os.system,
    builtins.eval, ...) is refused before it can be called."""

    def find_class(self, module, name):
        if (module, name) in _ARRAY_PICKLE_NAMES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a split file")


def _load_object_ids(path):
    """An object-dtype .npy of str/bytes (older split files), read without running code."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(fh)
        except ValueError as err:
            raise ValueError(f"{path}: not a numpy .npy file ({err})") from None
        if dtype.hasobject:
            try:
                ids = _ArrayOnlyUnpickler(fh).load()
            except Exception as err:   # any malformed or hostile pickle: refuse, never run
                raise ValueError(f"{path}: not a plain array of trace-id strings ({err}); "
                                 f"{CONVERT_HINT}") from None
        else:
            raise ValueError(f"{path}: unreadable .npy file; {CONVERT_HINT}")
    if not isinstance(ids, np.ndarray) or \
            not all(isinstance(v, (str, bytes)) for v in ids.ravel().tolist()):
        raise ValueError(f"{path}: the object array holds values that are not strings; "
                         f"{CONVERT_HINT}")
    return np.array([v.decode("utf8", "replace") if isinstance(v, bytes) else v
                     for v in ids.ravel().tolist()], dtype=str)


META_COLUMNS = ("station_lat", "station_lon", "event_lat", "event_lon", "depth_km",
                "magnitude", "p_arrival_sample", "s_arrival_sample", "coda_end_sample",
                "snr_db", "snr_db_min", "source_distance_km")
TEXT_COLUMNS = ("source_id", "source_origin_time")   # event identity, where the file has it
_ATTR_OF = vocabulary.mapping("table", "datacollected")   # station_lon -> station_long, ...


def read_metadata(file_name, ids):
    """Per-trace metadata (station, truth, magnitude, picks, mean SNR) as a DataFrame.

    Missing or 'None' values become NaN (noise or unlabeled traces keep their
    station coordinates and get empty truth). ``file_name`` may be a
    DataCollected file or a STEAD file (released or older layout; its
    attributes are read under the upstream names, :func:`stead_to_upstream`).
    Raises FileNotFoundError / TraceError naming the file and the first
    missing ids.
    """
    file_name = str(file_name)
    if not os.path.isfile(file_name):
        raise FileNotFoundError(f"HDF5 file not found: {file_name}")
    rows = []
    reader = H5Reader(file_name)
    try:
        missing = [t for t in ids if not reader.has(t)]
        if missing:
            raise TraceError(f"{len(missing)} of {len(ids)} ids are not in {file_name}, "
                             f"first: {', '.join(missing[:5])}")
        for trace_id in ids:
            attrs = reader.attrs(trace_id)
            row = {column: attr_float(attrs, _ATTR_OF.get(column, column))
                   for column in META_COLUMNS}
            snr = attr_snr(attrs)
            row["snr_db"] = float(np.nanmean(snr)) if np.isfinite(snr).any() else math.nan
            row["snr_db_min"] = float(np.min(snr))   # NaN unless all 3 are known
            for column in TEXT_COLUMNS:
                text = attr_text(attrs, column)
                row[column] = None if text == "None" else text
            rows.append({"trace_name": trace_id, **row})
    finally:
        reader.close()
    return pd.DataFrame(rows, columns=("trace_name",) + META_COLUMNS + TEXT_COLUMNS)


def check_split(file_name, ids, split_name, max_d, min_d, require_labels=True, dim=None):
    """Check a split before training or testing; return its metadata.

    Every id must be in the file with station coordinates and, when ``dim``
    is given, a waveform of that shape; with ``require_labels`` every trace
    needs finite event coordinates and depth. The error names the split, the
    file and the first offending traces. Depths outside [min_d, max_d] are
    counted and reported on stderr (their labels leave [0, 1]) but allowed.
    """
    meta = read_metadata(file_name, ids)
    if dim is not None:
        check_shapes(file_name, ids, split_name, dim)
    needed = ["station_lat", "station_lon"]
    if require_labels:
        needed += ["event_lat", "event_lon", "depth_km"]
    bad = meta.loc[~np.isfinite(meta[needed].to_numpy(float)).all(axis=1), "trace_name"]
    if len(bad):
        what = "event location/depth" if require_labels else "station coordinates"
        raise TraceError(
            f"{split_name}: {len(bad)} trace(s) in {file_name} lack {what} "
            f"(noise or unlabeled traces cannot be used here), first: {', '.join(bad[:5])}")
    _check_coordinates(meta, file_name, split_name)
    depth = meta["depth_km"].to_numpy(float)
    outside = np.isfinite(depth) & ((depth < min_d) | (depth > max_d))
    if outside.any():
        print(f"warning: {split_name}: {int(outside.sum())} of {len(meta)} trace(s) have a depth "
              f"outside [{min_d}, {max_d}] km (labels outside [0, 1]; negative depths count "
              "as 0)", file=sys.stderr)
    return meta


def _check_coordinates(meta, file_name, split_name):
    """Latitudes in [-90, 90] and longitudes in [-180, 360) (a swapped or scaled
    coordinate would silently give labels of hundreds of degrees)."""
    limits = {"station_lat": 90.0, "event_lat": 90.0, "station_lon": 360.0, "event_lon": 360.0}
    for column, limit in limits.items():
        values = meta[column].to_numpy(float)
        low = -90.0 if limit == 90.0 else -180.0
        bad = meta.loc[np.isfinite(values) & ((values < low) | (values > limit)), "trace_name"]
        if len(bad):
            raise TraceError(f"{split_name}: {len(bad)} trace(s) in {file_name} have {column} "
                             f"outside [{low:g}, {limit:g}] degrees (swapped or scaled "
                             f"coordinates?), first: {', '.join(bad[:5])}")


def check_shapes(file_name, ids, split_name, dim):
    """Every waveform of the split has shape ``dim`` (read from the HDF5 headers only)."""
    dim = tuple(int(d) for d in dim)
    reader = H5Reader(file_name)
    try:
        checked = [(t, reader.waveform_shape(t)) for t in ids]
        bad = [f"{t} {shape}" for t, shape in checked if shape != dim]
    finally:
        reader.close()
    if bad:
        hint = " (transposed? the data must be samples x channels)" if any(
            shape == dim[::-1] for _, shape in checked if shape != dim) else ""
        raise TraceError(f"{split_name}: {len(bad)} trace(s) in {file_name} do not have the "
                         f"shape {dim}{hint}, first: {', '.join(bad[:5])}")


# --------------------------------------------------------------------------
# Leaks between splits
# --------------------------------------------------------------------------
# When do two traces record the same earthquake? (:func:`_same_events`)
#
# 1. Both carry a ``source_id``: exactly when the ids agree.
# 2. Otherwise, both carry an origin time: epicentre within SAME_EVENT_TOL["deg"],
#    depth within SAME_EVENT_TOL["depth_km"] and origin times within
#    SAME_EVENT_TOL["origin_s"] (catalogue rounding; two events that close in space
#    and time are one).
# 3. Otherwise (the upstream DataCollected layout has neither id nor origin time):
#    epicentre, depth AND magnitude agree within SAME_RECORD_TOL. A builder copies
#    one catalogue row into the attributes of every trace of an event, so two
#    recordings of one earthquake carry the very same event_lat/event_long/depth/
#    magnitude; only their storage may differ (float32 vs float64: < 1e-5 degrees,
#    < 1e-4 km). Catalogues give epicentres to 1e-4 degrees (~10 m), depths to
#    0.01 km and magnitudes to 0.01: the tolerances are half of one such step, so
#    equal values match and two different catalogue values never do. Distinct
#    events close together (aftershocks and swarms, often within 0.01 degrees and
#    1 km of each other in California) differ by at least one step somewhere,
#    almost always in the epicentre itself, and are not called one earthquake.
#    A missing magnitude (or epicentre, depth) matches nothing.
SAME_EVENT_TOL = {"deg": 0.01, "depth_km": 1.0, "origin_s": 2.0}
SAME_RECORD_TOL = {"deg": 5e-5, "depth_km": 0.005, "magnitude": 0.005}


def check_no_duplicates(ids, split_name, path):
    """TraceError when a split names a trace more than once (it would be weighted twice)."""
    values, counts = np.unique(np.asarray(ids, dtype=str), return_counts=True)
    dup = values[counts > 1]
    if len(dup):
        raise TraceError(f"{split_name} ({path}) names {len(dup)} trace(s) more than once, "
                         f"first: {', '.join(dup[:5])}; remove the duplicates")


def _column(meta, name, dtype):
    """A column of a metadata table, or all-missing when the table lacks it."""
    if name in meta:
        return meta[name].to_numpy(dtype)
    return np.full(len(meta), None if dtype is object else np.nan, dtype=dtype)


def _origin_seconds(meta):
    if "source_origin_time" not in meta:
        return np.full(len(meta), np.nan)
    times = pd.to_datetime(meta["source_origin_time"], errors="coerce", utc=True, format="mixed")
    return ((times - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()).to_numpy(float)


def _near_pairs(xa, xb, scale):
    """Pairs (i, j) with every ``|xa[i] - xb[j]| <= scale`` (rows with a NaN match nothing)."""
    from scipy.spatial import cKDTree

    xa, xb = xa / scale, xb / scale
    rows_a = np.flatnonzero(np.isfinite(xa).all(axis=1))
    rows_b = np.flatnonzero(np.isfinite(xb).all(axis=1))
    if not len(rows_a) or not len(rows_b):
        return np.empty(0, int), np.empty(0, int)
    near = cKDTree(xa[rows_a]).sparse_distance_matrix(cKDTree(xb[rows_b]), max_distance=1.0,
                                                      p=np.inf, output_type="ndarray")
    return rows_a[near["i"]], rows_b[near["j"]]


def _same_events(a, b):
    """Pairs (i, j) of rows of metadata tables ``a`` and ``b`` that record one earthquake,
    by the rules written above SAME_EVENT_TOL: source_id, else origin time with
    epicentre and depth, else the same epicentre, depth and magnitude (SAME_RECORD_TOL)."""
    pairs = set()
    ida, idb = _column(a, "source_id", object), _column(b, "source_id", object)
    by_id = {}
    for j, sid in enumerate(idb):
        if sid is not None and sid == sid:   # NaN != NaN: no id
            by_id.setdefault(sid, []).append(j)
    for i, sid in enumerate(ida):
        if sid is not None and sid == sid:
            pairs.update((i, j) for j in by_id.get(sid, ()))
    has_id_a = np.array([v is not None and v == v for v in ida], dtype=bool)
    has_id_b = np.array([v is not None and v == v for v in idb], dtype=bool)
    if has_id_a.all() and has_id_b.all():
        return sorted(pairs)
    place = ["event_lat", "event_lon", "depth_km"]
    pa, pb = a[place].to_numpy(float), b[place].to_numpy(float)
    ta, tb = _origin_seconds(a), _origin_seconds(b)
    # Origin times on both sides: epicentre, depth and time within SAME_EVENT_TOL.
    tol = SAME_EVENT_TOL
    i, j = _near_pairs(np.column_stack([pa, ta]), np.column_stack([pb, tb]),
                       np.array([tol["deg"], tol["deg"], tol["depth_km"], tol["origin_s"]]))
    timed = ~(has_id_a[i] & has_id_b[j])
    pairs.update(zip(i[timed].tolist(), j[timed].tolist()))
    # Otherwise: epicentre, depth and magnitude the same values (SAME_RECORD_TOL).
    tol = SAME_RECORD_TOL
    ma, mb = _column(a, "magnitude", float), _column(b, "magnitude", float)
    i, j = _near_pairs(np.column_stack([pa, ma]), np.column_stack([pb, mb]),
                       np.array([tol["deg"], tol["deg"], tol["depth_km"], tol["magnitude"]]))
    untimed = ~(has_id_a[i] & has_id_b[j]) & ~(np.isfinite(ta[i]) & np.isfinite(tb[j]))
    pairs.update(zip(i[untimed].tolist(), j[untimed].tolist()))
    return sorted(pairs)


def split_overlap(name_a, meta_a, name_b, meta_b):
    """What splits ``a`` and ``b`` share: the same trace ids, and the same earthquakes.

    Two traces record the same earthquake when their ``source_id`` agree; without
    one, when epicentre, depth and origin time agree (within 0.01 degrees, 1 km,
    2 s); without ids or origin times (upstream DataCollected files), only when
    epicentre, depth and magnitude are the same values (within 5e-5 degrees,
    0.005 km, 0.005): see SAME_EVENT_TOL and SAME_RECORD_TOL.

    Returns
    -------
    dict
        ``pair`` ('a vs b'), ``n_traces`` and ``traces`` (shared trace ids),
        ``n_events`` (earthquakes recorded in both: the ``a`` traces of shared
        earthquakes grouped by the same rules) and ``event_traces`` (those ``a``
        traces); empty lists when clean.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    shared = sorted(set(meta_a["trace_name"]) & set(meta_b["trace_name"]))
    rows_a = sorted({i for i, _ in _same_events(meta_a, meta_b)})
    n_events = 0
    if rows_a:
        mine = meta_a.iloc[rows_a].reset_index(drop=True)
        links = np.array(_same_events(mine, mine)).reshape(-1, 2)
        graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])),
                           shape=(len(rows_a), len(rows_a)))
        n_events = int(connected_components(graph, directed=False)[0])
    return {"pair": f"{name_a} vs {name_b}", "n_traces": len(shared), "traces": shared,
            "n_events": n_events, "event_traces": list(meta_a["trace_name"].iloc[rows_a])}


def overlap_lines(findings):
    """One line per overlapping pair of splits (for stderr and X_report.txt); [] when clean."""
    lines = []
    for f in findings:
        if f["n_traces"] or f["n_events"]:
            lines.append(f"{f['pair']}: {f['n_traces']} shared trace id(s)"
                         f"{' (first: ' + ', '.join(f['traces'][:5]) + ')' if f['traces'] else ''}, "
                         f"{f['n_events']} shared earthquake(s) in {len(f['event_traces'])} "
                         f"trace(s) (first: {', '.join(f['event_traces'][:5]) or '-'})")
    return lines


def report_overlap(findings, allow_overlap, prog):
    """Print the overlap warning (unless ``allow_overlap``); returns the report lines."""
    lines = overlap_lines(findings)
    if lines and not allow_overlap:
        for line in lines:
            print(f"{prog}: warning: splits overlap, {line}; scores on the first split are optimistic "
                  "(pass --allow_overlap if this is on purpose)", file=sys.stderr)
    return lines
