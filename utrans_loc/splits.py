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
import sys

import numpy as np
import pandas as pd

from utrans_loc.traces import H5Reader, TraceError, attr_float, attr_snr

def load_ids(path):
    """A split file (.npy array of trace-id strings) as a str array."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        ids = np.load(path, allow_pickle=False)
    except ValueError:
        # Older split files were saved as object arrays, which need pickle.
        ids = np.load(path, allow_pickle=True)
    except OSError as err:
        raise ValueError(f"{path}: not a numpy .npy file ({err})") from None
    ids = np.asarray(ids).ravel().astype(str)
    if ids.size == 0:
        raise ValueError(f"split file {path} is empty: no trace ids")
    return ids


META_COLUMNS = ("station_lat", "station_lon", "event_lat", "event_lon", "depth_km",
                "magnitude", "p_arrival_sample", "s_arrival_sample", "coda_end_sample",
                "snr_db", "snr_db_min", "source_distance_km")
_ATTR_OF = {"station_lon": "station_long", "event_lon": "event_long", "depth_km": "depth"}


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
            rows.append({"trace_name": trace_id, **row})
    finally:
        reader.close()
    return pd.DataFrame(rows, columns=("trace_name",) + META_COLUMNS)


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
    depth = meta["depth_km"].to_numpy(float)
    outside = np.isfinite(depth) & ((depth < min_d) | (depth > max_d))
    if outside.any():
        print(f"warning: {split_name}: {int(outside.sum())} of {len(meta)} trace(s) have a depth "
              f"outside [{min_d}, {max_d}] km (labels outside [0, 1]; negative depths count "
              "as 0)", file=sys.stderr)
    return meta


def check_shapes(file_name, ids, split_name, dim):
    """Every waveform of the split has shape ``dim`` (read from the HDF5 headers only)."""
    dim = tuple(int(d) for d in dim)
    reader = H5Reader(file_name)
    try:
        shapes = ((t, reader.waveform_shape(t)) for t in ids)
        bad = [f"{t} {shape}" for t, shape in shapes if shape != dim]
    finally:
        reader.close()
    if bad:
        raise TraceError(f"{split_name}: {len(bad)} trace(s) in {file_name} do not have the "
                         f"shape {dim}, first: {', '.join(bad[:5])}")
