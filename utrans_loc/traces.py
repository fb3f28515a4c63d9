"""Trace storage: the HDF5 layouts, their attributes, readers and preloading.

Reads the three layouts the pipeline accepts (:func:`h5_layout`): DataCollected
(the upstream file, a group per trace id holding ``data``), released STEAD
(``data/<trace_name>``) and older STEAD (``earthquake/local/<name>``,
``non_earthquake/noise/<name>``). STEAD attributes are served under the
upstream names (:func:`stead_to_upstream`), so labels and metadata read every
layout the same way. Also: the DataCollected band-pass (:func:`bandpass_taper`),
in-memory preloading with its memory checks.

Knows nothing about models or labels: must not import keras (the data builders
in ``00_data/`` use it without loading a backend).
"""

from __future__ import annotations

import functools
import math
import os

import h5py
import numpy as np

from utrans_loc import vocabulary


class TraceError(ValueError):
    """A trace that cannot be used (missing attributes, wrong shape, ...)."""



def attr_float(attrs, name):
    """A scalar attribute as float; NaN when absent, 'None', empty or non-numeric."""
    if name not in attrs:
        return math.nan
    value = attrs[name]
    if isinstance(value, bytes):
        value = value.decode("utf8", "replace")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    arr = np.asarray(value, dtype=float).ravel()
    return float(arr[0]) if arr.size else math.nan


def attr_text(attrs, name):
    """A text attribute as str; 'None' when absent or empty (bytes and 1-element arrays unwrapped)."""
    return _text(attrs[name]) if name in attrs else "None"


def attr_snr(attrs):
    """The 3 SNR values (dB); NaN where absent. Accepts arrays, strings like '[1 2 3]'."""
    value = attrs.get("snr_db", None)
    if isinstance(value, bytes):
        value = value.decode("utf8", "replace")
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.strip("[] ").replace(",", " ").split()]
        except ValueError:
            value = []
    arr = np.asarray(value if value is not None else [], dtype=float).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    return arr if arr.size == 3 else np.full(3, np.nan)



def bandpass_taper(data, fs=100.0, freqmin=1.0, freqmax=45.0, corners=2,
                   taper_fraction=0.01, max_taper_s=2.0):
    """Band-pass and taper as the DataCollected builder did (per channel, axis 0).

    Zero-phase Butterworth band-pass (``corners`` poles, scipy sosfiltfilt),
    then a cosine (Tukey) taper on each end over ``taper_fraction`` of the
    trace, at most ``max_taper_s`` seconds.
    """
    from scipy.signal import sosfiltfilt

    sos, window = _filter_design(fs, freqmin, freqmax, corners, taper_fraction, max_taper_s,
                                 len(data))
    filtered = sosfiltfilt(sos, np.asarray(data, dtype=np.float64), axis=0)
    return (filtered * window[:, None]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _filter_design(fs, freqmin, freqmax, corners, taper_fraction, max_taper_s, n):
    """Butterworth sections and taper window, designed once per setting."""
    from scipy.signal import butter
    from scipy.signal.windows import tukey

    sos = butter(corners, [freqmin, freqmax], btype="bandpass", fs=fs, output="sos")
    side = min(taper_fraction * n, max_taper_s * fs)   # samples per end
    return sos, tukey(n, alpha=min(2.0 * side / n, 1.0))



def check_finite(x, ids, file_name):
    """Raise TraceError naming the first trace of batch ``x`` with NaN/Inf values."""
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if not finite.all():
        trace_id = ids[int(np.argmin(finite))]
        raise TraceError(f"trace '{trace_id}' in {file_name} has NaN/Inf samples; "
                         "remove it from the split (or repair the file)")




LAYOUT_COLLECTED, LAYOUT_STEAD, LAYOUT_STEAD_OLD = "datacollected", "stead", "stead_old"
STEAD_OLD_GROUPS = ("earthquake/local", "non_earthquake/noise")

# STEAD attribute -> upstream DataCollected attribute (UTRANS_SPEC section 1).
STEAD_TO_UPSTREAM = vocabulary.mapping("stead", "datacollected", fields=(
    "station_lat", "station_lon", "event_lat", "event_lon", "depth_km", "magnitude",
    "magnitude_type", "p_arrival_sample", "s_arrival_sample", "coda_end_sample", "snr_db",
    "data_category"))
# STEAD attributes kept under their own names (metadata columns, grouping by event).
STEAD_EXTRAS = ("network_code", "receiver_code", "source_id", "source_distance_km",
                "back_azimuth_deg", "trace_start_time", "source_origin_time")
_STEAD_TEXT = {"source_magnitude_type", "network_code", "receiver_code", "source_id",
               "trace_start_time", "source_origin_time", "P_polarity"}
_CATEGORY = {"earthquake_local": "earthquake", "noise": "noise"}


def h5_layout(fh):
    """Layout of an open HDF5 file.

    Returns
    -------
    str
        ``'stead'``: released STEAD, one dataset per trace at
        ``data/<trace_name>``; ``'stead_old'``: older STEAD,
        ``earthquake/local/<name>`` and ``non_earthquake/noise/<name>``;
        ``'datacollected'``: anything else (one group per trace id holding
        ``data``, the upstream layout).
    """
    node = fh.get("data")
    # A DataCollected trace that happens to be called 'data' holds a 'data' dataset.
    if isinstance(node, h5py.Group) and not isinstance(node.get("data"), h5py.Dataset):
        return LAYOUT_STEAD
    if any(isinstance(fh.get(group), h5py.Group) for group in STEAD_OLD_GROUPS):
        return LAYOUT_STEAD_OLD
    return LAYOUT_COLLECTED


def _text(value):
    if isinstance(value, bytes):
        value = value.decode("utf8", "replace")
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else None
        return _text(value)
    if value is None:
        return "None"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "None"
        # Numeric ids (e.g. source_id read back as 8556349.0) keep their integer form.
        return str(int(value)) if float(value).is_integer() else str(value)
    text = str(value).strip()
    return "None" if text.lower() in ("", "none", "nan") else text


def _number(value):
    """A scalar number (numpy dtype kept) or 'None'; [[x]] -> x, '1.5' -> 1.5."""
    if isinstance(value, bytes):
        value = value.decode("utf8", "replace")
    if isinstance(value, str):
        try:
            value = float(value.strip("[] "))
        except ValueError:
            return "None"
    arr = np.asarray(value)
    if arr.size == 0 or arr.dtype.kind not in "fiu":
        return "None"
    scalar = arr.ravel()[0]
    return scalar if np.isfinite(scalar) else "None"


def stead_to_upstream(attrs, category=None):
    """STEAD trace attributes under the upstream (DataCollected) names.

    Parameters
    ----------
    attrs : mapping
        A STEAD trace's attributes (h5py attrs or a dict, e.g. a CSV row).
    category : str, optional
        ``trace_category`` to use when ``attrs`` has none (the older layout
        encodes it in the folder).

    Returns
    -------
    dict
        ``station_lat, station_long, event_lat, event_long, depth, magnitude,
        magnitude_type, p_arrival_sample, s_arrival_sample, coda_end_sample,
        snr_db`` (3 floats), ``data_category`` ('earthquake' | 'noise'),
        ``P_polarity``, ``event_label`` (1 | 0), ``AI_Set`` ('STEAD') and the
        STEAD extras ``network_code, receiver_code, source_id,
        source_distance_km, back_azimuth_deg, trace_start_time,
        source_origin_time``. Missing, 'None', NaN or empty values become the
        string 'None'; array-valued scalars (``coda_end_sample`` as [[x]]) are
        unwrapped; numbers keep their numpy dtype.
    """
    out = {}
    for stead, name in STEAD_TO_UPSTREAM.items():
        value = attrs.get(stead, None) if hasattr(attrs, "get") else None
        if name == "snr_db":
            snr = attr_snr({"snr_db": value}) if value is not None else np.full(3, np.nan)
            out[name] = snr.astype(np.float64) if np.isfinite(snr).any() else "None"
        elif name == "data_category":
            raw = _text(value) if value is not None else _text(category)
            out[name] = _CATEGORY.get(raw, raw)
        elif stead in _STEAD_TEXT:
            out[name] = _text(value)
        else:
            out[name] = _number(value) if value is not None else "None"
    out["P_polarity"] = _text(attrs.get("P_polarity", None))
    out["event_label"] = 1 if out["data_category"] == "earthquake" else 0
    out["AI_Set"] = "STEAD"
    for name in STEAD_EXTRAS:
        value = attrs.get(name, None)
        out[name] = _text(value) if name in _STEAD_TEXT else \
            (_number(value) if value is not None else "None")
    return out


def trace_meta(attrs):
    """Augmentation metadata of a trace (NaN where unknown)."""
    return {"p_arrival": attr_float(attrs, "p_arrival_sample"),
            "s_arrival": attr_float(attrs, "s_arrival_sample"),
            "coda_end": attr_float(attrs, "coda_end_sample"),
            "snr": attr_snr(attrs)}



def describe_open_error(file_name, err):
    """The one-line message for an HDF5 file h5py could not open for reading."""
    if "unable to lock file" in str(err).lower():
        return (f"{file_name}: is open for writing by another process (HDF5 file lock): wait "
                "until it has finished writing the file, then run again")
    return f"{file_name}: not a readable HDF5 file ({err})"


class H5Reader:
    """One open HDF5 file per process: reopened after a fork, never per batch.

    Reads the three layouts :func:`h5_layout` knows: DataCollected (group per
    trace id holding ``data``), released STEAD (``data/<trace_name>``) and
    older STEAD (``earthquake/local/<name>``, ``non_earthquake/noise/<name>``).
    For STEAD files :meth:`attrs` returns the attributes under the upstream
    names (:func:`stead_to_upstream`), so labels and metadata work unchanged.
    ``bandpass=True`` band-passes and tapers every waveform on reading, as the
    DataCollected builder did (:func:`bandpass_taper`).
    """

    def __init__(self, file_name, bandpass=False):
        self.file_name = str(file_name)
        self.bandpass = bool(bandpass)
        self._fh = None
        self._pid = None
        self._layout = None

    @property
    def file(self):
        if self._fh is None or self._pid != os.getpid():
            try:
                self._fh = h5py.File(self.file_name, "r")
            except OSError as err:
                raise ValueError(describe_open_error(self.file_name, err)) from None
            self._pid = os.getpid()
            self._layout = h5_layout(self._fh)
        return self._fh

    @property
    def layout(self):
        """``'datacollected'``, ``'stead'`` or ``'stead_old'`` (see :func:`h5_layout`)."""
        self.file  # noqa: B018 (opens the file and detects the layout)
        return self._layout

    def _paths(self, trace_id):
        if self.layout == LAYOUT_STEAD:
            return (f"data/{trace_id}",)
        if self.layout == LAYOUT_STEAD_OLD:
            return tuple(f"{group}/{trace_id}" for group in STEAD_OLD_GROUPS)
        return (trace_id,)

    def has(self, trace_id):
        """True when the file holds ``trace_id``."""
        return any(self.file.get(path) is not None for path in self._paths(trace_id))

    def group(self, trace_id):
        """The trace's HDF5 object: a DataCollected group or a STEAD dataset."""
        for path in self._paths(trace_id):
            node = self.file.get(path)
            if node is not None:
                return node
        raise TraceError(f"trace '{trace_id}' is not in {self.file_name}")

    def waveform_shape(self, trace_id):
        group = self.group(trace_id)
        return tuple((group["data"] if isinstance(group, h5py.Group) else group).shape)

    def _dataset_paths(self, trace_id):
        if self.layout == LAYOUT_COLLECTED:
            # A group with a 'data' dataset, or (older files) a dataset named by the id.
            return (f"{trace_id}/data".encode(), trace_id.encode())
        return tuple(path.encode() for path in self._paths(trace_id))

    def read_into(self, trace_id, out):
        """Read a waveform into ``out`` (a float32 array of the expected shape).

        One low-level HDF5 open and read (HDF5 converts the stored dtype): the
        high-level path costs about 3x more per trace in Python overhead.
        """
        for path in self._dataset_paths(trace_id):
            try:
                dset = h5py.h5d.open(self.file.id, path)
            except KeyError:
                continue
            if dset.shape != out.shape:
                hint = " (transposed? the data must be samples x channels)" \
                    if dset.shape == out.shape[::-1] else ""
                raise TraceError(f"trace '{trace_id}' in {self.file_name} has shape "
                                 f"{dset.shape}, expected {out.shape}{hint}")
            dset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
            if self.bandpass:
                out[...] = bandpass_taper(out)
            return out
        raise TraceError(f"trace '{trace_id}' is not in {self.file_name}")

    def waveform(self, trace_id, dim):
        """A trace's waveform as a new float32 array of shape ``dim``."""
        return self.read_into(trace_id, np.empty(tuple(dim), dtype=np.float32))

    def attrs(self, trace_id):
        node = self.group(trace_id)
        if self.layout == LAYOUT_COLLECTED:
            return node.attrs
        # Older layout: the folder says the category when the attribute is absent.
        folder = node.parent.name.strip("/")
        category = "earthquake_local" if folder == STEAD_OLD_GROUPS[0] else \
            "noise" if folder == STEAD_OLD_GROUPS[1] else None
        return stead_to_upstream(node.attrs, category=category)

    def close(self):
        """Close the file (it reopens on the next access)."""
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = self._pid = self._layout = None

    def __getstate__(self):
        return {"file_name": self.file_name, "bandpass": self.bandpass,
                "_fh": None, "_pid": None, "_layout": None}


MAX_PRELOAD_GB = 12.0     # the California training + validation sets (~8.7 GB) fit


class MemoryReader:
    """Waveforms held in memory (``pre_load_generator``); reads like :class:`H5Reader`.

    Attributes still come from the file (read once per trace, see :class:`TraceInfo`).
    """

    def __init__(self, source, ids, data):
        self.source = source
        self.file_name = source.file_name
        self.bandpass = source.bandpass          # already applied to ``data``
        self.row = {trace_id: i for i, trace_id in enumerate(ids)}
        self.data = data

    def read_into(self, trace_id, out):
        row = self.row.get(trace_id)
        if row is None:
            raise TraceError(f"trace '{trace_id}' was not preloaded from {self.file_name}")
        out[...] = self.data[row]
        return out

    def attrs(self, trace_id):
        return self.source.attrs(trace_id)

    def close(self):
        self.source.close()


def preload_size_gb(n_traces, dim):
    """GB of memory that ``n_traces`` float32 waveforms of shape ``dim`` take."""
    return n_traces * int(np.prod(dim)) * 4 / 1e9


def available_memory_gb():
    """Memory this process may still take, in GB: the machine's MemAvailable,
    or less where a cgroup (container) memory limit leaves less; None where
    neither can be read."""
    free = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free.append(int(line.split()[1]) * 1024 / 1e9)
    except OSError:
        pass
    # cgroup v2, then v1: a container's limit is below the host's MemAvailable.
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as fh:
                limit = fh.read().strip()
            with open(usage_file) as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:     # "max" or a huge v1 value: no limit
            free.append(max(int(limit) - usage, 0) / 1e9)
        break
    return min(free) if free else None


def check_max_preload_gb(max_preload_gb):
    """ValueError unless ``max_preload_gb`` is a positive number."""
    if max_preload_gb is None or not max_preload_gb > 0:
        raise ValueError(f"max_preload_gb must be > 0, got {max_preload_gb}")


def check_preload(n_traces, dim, max_preload_gb, what):
    """Refuse (ValueError) to preload ``n_traces`` waveforms of shape ``dim``
    when they exceed ``max_preload_gb`` or 90% of :func:`available_memory_gb`.

    ``what`` names the data in the message (file and splits). Returns the GB needed.
    """
    check_max_preload_gb(max_preload_gb)
    need = preload_size_gb(n_traces, dim)
    if need > max_preload_gb:
        raise ValueError(
            f"preloading {n_traces} traces of {tuple(dim)} ({what}) needs {need:.2f} GB, more "
            f"than max_preload_gb={max_preload_gb:g}: use mode='generator' (reads batch by "
            "batch) or raise --max_preload_gb")
    free = available_memory_gb()
    if free is not None and need > 0.9 * free:
        raise ValueError(
            f"preloading {n_traces} traces ({what}) needs {need:.2f} GB but only {free:.2f} GB "
            "of memory is available: use mode='generator'")
    return need


def preload_waveforms(reader, ids, dim, max_preload_gb=MAX_PRELOAD_GB):
    """Read the waveforms of ``ids`` into memory once (upstream ``pre_load_generator``).

    Refuses with a ValueError, before reading anything, when the estimate
    exceeds ``max_preload_gb`` or the memory available now
    (:func:`check_preload`). On any error the file is closed.

    Returns
    -------
    MemoryReader
        Serves the waveforms (band-passed once, if ``reader.bandpass``).
    """
    from tqdm import tqdm

    ids = list(dict.fromkeys(np.asarray(ids).astype(str)))   # unique, in order
    try:
        check_preload(len(ids), dim, max_preload_gb, reader.file_name)
        data = np.empty((len(ids),) + tuple(dim), dtype=np.float32)
        for i, trace_id in enumerate(tqdm(ids, desc="preload", unit="trace", disable=None,
                                          mininterval=2.0)):
            check_finite(reader.read_into(trace_id, data[i])[None], [trace_id],
                         reader.file_name)
    except BaseException:
        reader.close()
        raise
    return MemoryReader(reader, ids, data)
