"""Shared utilities for the California STEAD location example (Keras 3).

DataGenerator (HDF5, "DataCollected" layout), std normalisation, the upstream
augmentations, location labels, the learning-rate schedule, the ConvMixer head
and ``build_location_model``. Model code uses only ``keras.*`` so the
TensorFlow (default) and JAX backends both work.

DataCollected layout (one HDF5 group per trace id)::

    <trace_id>/data            float (6000, 3), E N Z, band-passed 1-45 Hz
    <trace_id>.attrs           station_lat, station_long, event_lat, event_long,
                               depth (km), magnitude, p_arrival_sample,
                               s_arrival_sample, coda_end_sample, snr_db (3),
                               data_category, ... ; missing values are 'None'

Location target of one trace (UTRANS_SPEC section 1)::

    [station_lat - event_lat, station_long - event_long,
     (max(depth, 0) - min_d) / (max_d - min_d)]
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from pathlib import Path

import h5py
import keras
import numpy as np
from keras import layers

import utrans_backbone as ub

MAX_D = 114.5   # California depth normalisation (km), as published
MIN_D = 1e-5
LABEL_ATTRS = ("station_lat", "station_long", "event_lat", "event_long", "depth")


class TraceError(ValueError):
    """A trace that cannot be used (missing attributes, wrong shape, ...)."""


# --------------------------------------------------------------------------
# Attributes and labels
# --------------------------------------------------------------------------
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


def depth_to_label(depth_km, max_d=MAX_D, min_d=MIN_D):
    """Normalise depth (km) to the model's range; negative depths count as 0."""
    return (np.maximum(depth_km, 0.0) - min_d) / (max_d - min_d)


def label_to_depth(y2, max_d=MAX_D, min_d=MIN_D):
    """Inverse of :func:`depth_to_label` (for non-negative depths)."""
    return np.asarray(y2) * (max_d - min_d) + min_d


def location_label(attrs, trace_id="?", max_d=MAX_D, min_d=MIN_D):
    """Regression target of one trace from its HDF5 attributes.

    Raises
    ------
    TraceError
        When any of station/event coordinates or depth is missing or not
        finite (for example a noise trace in a location split); the message
        names the trace. Upstream silently reused the previous trace's labels.
    """
    values = {name: attr_float(attrs, name) for name in LABEL_ATTRS}
    bad = [name for name, v in values.items() if not np.isfinite(v)]
    if bad:
        raise TraceError(
            f"trace '{trace_id}' has no usable {', '.join(bad)} (a noise trace or a "
            "trace without event attributes cannot be in a location training split)")
    return np.array([values["station_lat"] - values["event_lat"],
                     values["station_long"] - values["event_long"],
                     depth_to_label(values["depth"], max_d, min_d)], dtype=np.float32)


def prediction_to_location(station_lat, station_lon, y, max_d=MAX_D, min_d=MIN_D):
    """Model output (N, 3) -> predicted event lat, lon (degrees) and depth (km)."""
    y = np.asarray(y, dtype=np.float64)
    return (np.asarray(station_lat) - y[:, 0], np.asarray(station_lon) - y[:, 1],
            label_to_depth(y[:, 2], max_d, min_d))


# --------------------------------------------------------------------------
# Normalisation and augmentations (numpy; one small function per transform)
# --------------------------------------------------------------------------
NORMALIZE_CHUNK = 8


def normalize(data, mode="std"):
    """Per-trace, per-channel normalisation along the time axis (axis -2).

    ``std``: subtract the mean, divide by the standard deviation; ``max``:
    subtract the mean, divide by the maximum (upstream EQTransformer). A
    channel whose divisor is 0 (all zeros or constant) is divided by 1, so it
    becomes zeros, never NaN. Works on (T, C) and (B, T, C); returns float32.
    Statistics are taken in float64 (this reproduces the upstream inputs
    exactly; float32 sums differ by up to ~1e-4 on spiky traces).
    """
    if mode not in ("std", "max"):
        raise ValueError(f"normalization mode must be 'std' or 'max', got {mode!r}")
    data = np.asarray(data)
    if data.ndim == 3 and len(data) > NORMALIZE_CHUNK:
        # A few traces at a time keep the float64 temporaries in cache (2x faster).
        out = np.empty(data.shape, dtype=np.float32)
        for start in range(0, len(data), NORMALIZE_CHUNK):
            out[start:start + NORMALIZE_CHUNK] = normalize(
                data[start:start + NORMALIZE_CHUNK], mode)
        return out
    # Time axis last and contiguous: numpy's reductions along a strided axis of
    # length 3 are ~8x slower; the float64 arithmetic (and result) is unchanged.
    data = np.array(np.swapaxes(data, -1, -2), dtype=np.float64, order="C")  # always a copy
    data -= data.mean(axis=-1, keepdims=True)
    scale = data.std(axis=-1, keepdims=True) if mode == "std" else \
        data.max(axis=-1, keepdims=True)
    scale[scale == 0] = 1.0
    data /= scale
    return np.swapaxes(data, -1, -2).astype(np.float32, order="C")


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


def shift_event(data, coda_end, rate, rng, return_shift=False):
    """With probability ``rate``, circularly shift all channels by n in [1, T - coda_end).

    With ``return_shift`` also returns n (0 when not shifted).
    """
    n_samples = data.shape[0]
    nrotate = 0
    if np.isfinite(coda_end) and rng.uniform() < rate:
        nrotate = int(rng.uniform(1, max(n_samples - int(coda_end), 2)))
        data = np.roll(data, nrotate, axis=0)
    return (data, nrotate) if return_shift else data


def shifted_picks(meta, shift, n_samples):
    """Picks after a circular shift; a pick that wrapped around becomes NaN
    (as EQTransformer, so no second event is added on a wrapped trace)."""
    out = dict(meta)
    for key in ("p_arrival", "s_arrival", "coda_end"):
        moved = meta[key] + shift
        out[key] = moved if moved < n_samples else math.nan
    return out


def add_event(data, p_arrival, s_arrival, coda_end, snr, rate, rng):
    """With probability ``rate`` (all SNR >= 10 dB), add a scaled copy of the
    event, starting from its P arrival, after the coda (EQTransformer)."""
    if not (np.isfinite(p_arrival) and np.isfinite(s_arrival) and np.isfinite(coda_end)):
        return data
    n_samples = data.shape[0]
    p, s_p, coda = int(p_arrival), int(s_arrival - p_arrival), int(coda_end)
    if rng.uniform() >= rate or not np.all(snr >= 10.0) or n_samples - s_p - 21 - coda <= 20:
        return data
    start = int(rng.integers(coda, n_samples - s_p - 21))
    scale = 1.0 / rng.integers(1, 10)
    space = min(n_samples - start, n_samples - p)
    added = data.copy()
    added[start:start + space] += data[p:p + space] * scale
    return added


def add_noise(data, snr, rate, rng):
    """With probability ``rate`` (all SNR >= 10 dB), add Gaussian noise with std
    U(0.01, 0.15) x the channel's peak, drawn per channel."""
    if rng.uniform() >= rate or not np.all(snr >= 10.0):
        return data
    level = rng.uniform(0.01, 0.15, size=data.shape[1]) * np.abs(data).max(axis=0)
    noise = rng.standard_normal(data.shape, dtype=np.float32)
    return data + noise * level.astype(np.float32)


def drop_channel(data, snr, rate, rng):
    """With probability ``rate`` (all SNR >= 10 dB), zero a random subset of
    channels (at least one kept), then rescale by C / number of live channels."""
    if rng.uniform() >= rate or not np.all(snr >= 10.0):
        return data
    keep = rng.integers(0, 2, size=data.shape[1]).astype(bool)
    if not keep.any():
        return data
    data = data.copy()
    data[:, ~keep] = 0.0
    return adjust_amplitude_for_multichannels(data)


def adjust_amplitude_for_multichannels(data):
    """Scale by C / (number of non-zero channels), keeping the total energy comparable."""
    live = np.count_nonzero(np.abs(data).max(axis=0))
    return data * (data.shape[1] / live) if live else data


def scale_amplitude(data, rate, rng):
    """Multiply (probability ``rate``) or divide (another ``rate``) by U(1, 3)."""
    u = rng.uniform()
    if u < rate:
        return data * rng.uniform(1, 3)
    if u < 2 * rate:
        return data / rng.uniform(1, 3)
    return data


def add_gaps(data, rate, rng):
    """With probability ``rate``, zero a random window of all channels."""
    start = int(rng.integers(0, 4000))
    end = int(rng.integers(start, 5500))
    if rng.uniform() >= rate:
        return data
    data = data.copy()
    data[start:end] = 0.0
    return data


def pre_emphasis(data, coeff=0.97):
    """x[t] - coeff * x[t-1] per channel (first sample kept)."""
    out = data.copy()
    out[1:] = data[1:] - coeff * data[:-1]
    return out


def augment_event(data, meta, rng, *, shift_event_r=None, add_event_r=None,
                  add_noise_r=None, drop_channe_r=None, scale_amplitude_r=None,
                  pre_emphasis_on=False, add_gap_r=None):
    """The upstream full augmentation chain for an event trace (before normalisation).

    ``meta`` holds p_arrival, s_arrival, coda_end and snr (3 values). A rate
    of None (or 0) skips that transform. Labels are not touched.
    """
    if shift_event_r:
        data, shift = shift_event(data, meta["coda_end"], shift_event_r, rng, return_shift=True)
        meta = shifted_picks(meta, shift, data.shape[0])
    if add_event_r:
        data = add_event(data, meta["p_arrival"], meta["s_arrival"], meta["coda_end"],
                         meta["snr"], add_event_r, rng)
    if add_noise_r:
        data = add_noise(data, meta["snr"], add_noise_r, rng)
    if drop_channe_r:
        data = drop_channel(data, meta["snr"], drop_channe_r, rng)
    if scale_amplitude_r:
        data = scale_amplitude(data, scale_amplitude_r, rng)
    if pre_emphasis_on:
        data = pre_emphasis(data)
    if add_gap_r:
        data = add_gaps(data, add_gap_r, rng)
    return data


# --------------------------------------------------------------------------
# HDF5 access
# --------------------------------------------------------------------------
class _H5Reader:
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
                raise ValueError(f"{self.file_name}: not a readable HDF5 file ({err})") from None
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
                raise TraceError(f"trace '{trace_id}' in {self.file_name} has shape "
                                 f"{dset.shape}, expected {out.shape}")
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


class _MemoryReader:
    """Waveforms held in memory (``pre_load_generator``); reads like :class:`_H5Reader`.

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
    _MemoryReader
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
    return _MemoryReader(reader, ids, data)


# --------------------------------------------------------------------------
# STEAD files read directly (released and older layouts)
# --------------------------------------------------------------------------
LAYOUT_COLLECTED, LAYOUT_STEAD, LAYOUT_STEAD_OLD = "datacollected", "stead", "stead_old"
STEAD_OLD_GROUPS = ("earthquake/local", "non_earthquake/noise")

# STEAD attribute -> upstream DataCollected attribute (UTRANS_SPEC section 1).
STEAD_TO_UPSTREAM = {
    "receiver_latitude": "station_lat",
    "receiver_longitude": "station_long",
    "source_latitude": "event_lat",
    "source_longitude": "event_long",
    "source_depth_km": "depth",
    "source_magnitude": "magnitude",
    "source_magnitude_type": "magnitude_type",
    "p_arrival_sample": "p_arrival_sample",
    "s_arrival_sample": "s_arrival_sample",
    "coda_end_sample": "coda_end_sample",
    "snr_db": "snr_db",
    "trace_category": "data_category",
}
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


# --------------------------------------------------------------------------
# Data generators
# --------------------------------------------------------------------------
def check_finite(x, ids, file_name):
    """Raise TraceError naming the first trace of batch ``x`` with NaN/Inf values."""
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if not finite.all():
        trace_id = ids[int(np.argmin(finite))]
        raise TraceError(f"trace '{trace_id}' in {file_name} has NaN/Inf samples; "
                         "remove it from the split (or repair the file)")


class TraceInfo:
    """Location labels and augmentation metadata of a list of trace ids, as arrays.

    Filled from a metadata table (:func:`read_metadata`, which training reads
    anyway to check its splits) or trace by trace from the HDF5 attributes on
    first use; either way each trace's attributes are read at most once, not
    once per epoch. Rows are positions in ``ids``.
    """

    def __init__(self, ids, max_d=MAX_D, min_d=MIN_D, metadata=None):
        self.ids = ids
        self.max_d, self.min_d = max_d, min_d
        self.labels = np.full((len(ids), 3), np.nan, dtype=np.float32)
        # p_arrival, s_arrival, coda_end (samples) and the lowest channel SNR (dB)
        self.meta = np.full((len(ids), 4), np.nan, dtype=np.float64)
        self.known = np.zeros(len(ids), dtype=bool)
        if metadata is not None:
            self._fill(metadata)

    def _fill(self, metadata):
        table = metadata.drop_duplicates("trace_name").set_index("trace_name")
        rows = table.reindex(self.ids)
        if "snr_db_min" not in rows:
            return
        present = rows["station_lat"].notna().to_numpy()
        self.labels[:] = np.stack([
            rows["station_lat"] - rows["event_lat"], rows["station_lon"] - rows["event_lon"],
            depth_to_label(rows["depth_km"].to_numpy(float), self.max_d, self.min_d)], axis=1)
        self.meta[:] = rows[["p_arrival_sample", "s_arrival_sample", "coda_end_sample",
                             "snr_db_min"]].to_numpy(float)
        # Rows without finite labels stay unknown: read (and reported) on use.
        self.known[:] = present & np.isfinite(self.labels).all(axis=1)

    def get(self, position, reader):
        """(label, meta dict) of ``ids[position]``; reads its attributes the first time."""
        if not self.known[position]:
            trace_id = self.ids[position]
            attrs = reader.attrs(trace_id)
            self.labels[position] = location_label(attrs, trace_id, self.max_d, self.min_d)
            meta = trace_meta(attrs)
            self.meta[position] = (meta["p_arrival"], meta["s_arrival"], meta["coda_end"],
                                   np.min(meta["snr"]))
            self.known[position] = True
        p, s, coda, snr = self.meta[position]
        return self.labels[position], {"p_arrival": p, "s_arrival": s, "coda_end": coda,
                                       "snr": snr}


class DataGenerator(keras.utils.PyDataset):
    """Batches of (waveforms, location labels) from a DataCollected HDF5 file.

    Parameters
    ----------
    list_IDs : sequence of str
        Trace ids (keys of the HDF5 file).
    file_name : str
        Path of the HDF5 file.
    dim : int or tuple
        Samples per trace (6000) or the full trace shape (6000, 3).
    batch_size : int
        Traces per batch. With augmentation a batch holds batch_size // 2 ids,
        each used twice (see Notes).
    n_channels : int
        Components per trace (3).
    shuffle : bool
        Shuffle the ids at the start and after every epoch.
    norm_mode : {'std', 'max'}
        Per-trace, per-channel normalisation.
    label_type : str
        Kept for upstream compatibility; location labels are always the
        3-value regression target.
    augmentation : bool
        Use the half-batch augmentation scheme.
    add_event_r, add_gap_r, shift_event_r, add_noise_r, drop_channe_r,
    scale_amplitude_r : float or None
        Rates of the upstream augmentations (None: off).
    pre_emphasis : bool
        Apply pre-emphasis in the full chain.
    max_d, min_d : float
        Depth normalisation range (km).
    seed : int or None
        Seed of the augmentation/shuffle random generator.
    workers, use_multiprocessing, max_queue_size
        Passed to ``keras.utils.PyDataset``.
    bandpass : bool
        Band-pass (1-45 Hz) and taper each waveform on reading, as the
        DataCollected builder did: for raw traces, e.g. a STEAD ``merge.hdf5``
        read directly (``file_name`` may be a DataCollected file or a STEAD
        file in the released or older layout, see :func:`h5_layout`).
    metadata : pandas.DataFrame, optional
        The split's :func:`read_metadata` table (as :func:`check_split`
        returns it): labels and augmentation metadata come from it instead of
        the HDF5 attributes.
    preload : bool
        Read every waveform of ``list_IDs`` into memory once (upstream
        ``mode='pre_load_generator'``), after checking the size against
        ``max_preload_gb``; batches then never touch the file.
    max_preload_gb : float
        Largest preload (GB of float32 waveforms) accepted.

    Notes
    -----
    With augmentation (UTRANS_SPEC section 5) the first copy of each id gets
    only a shift (at half ``shift_event_r``) and normalisation; the second
    copy gets the full chain. An epoch has ``2 * floor(N / batch_size)``
    batches; without augmentation ``floor(N / batch_size)`` batches of
    distinct ids.
    """

    def __init__(self, list_IDs, file_name, dim=6000, batch_size=40, n_channels=3,
                 shuffle=True, norm_mode="std", label_type="gaussian", augmentation=False,
                 add_event_r=None, add_gap_r=None, shift_event_r=None, add_noise_r=None,
                 drop_channe_r=None, scale_amplitude_r=None, pre_emphasis=False,
                 max_d=MAX_D, min_d=MIN_D, seed=None, workers=1,
                 use_multiprocessing=False, max_queue_size=10, bandpass=False, metadata=None,
                 preload=False, max_preload_gb=MAX_PRELOAD_GB):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.list_IDs = np.asarray(list_IDs).astype(str)
        self.dim = (int(dim), int(n_channels)) if np.isscalar(dim) else tuple(int(d) for d in dim)
        self.batch_size = int(batch_size)
        if self.batch_size < 2 or (augmentation and self.batch_size % 2):
            raise ValueError(f"batch_size must be >= 2 (and even with augmentation), got {batch_size}")
        if len(self.list_IDs) < self.batch_size:
            raise ValueError(f"only {len(self.list_IDs)} ids for batch_size {self.batch_size}: "
                             "the split is smaller than one batch")
        self.n_channels = n_channels
        self.shuffle = shuffle
        self.norm_mode = norm_mode
        self.label_type = label_type
        self.augmentation = augmentation
        self.rates = dict(add_event_r=add_event_r, add_gap_r=add_gap_r,
                          shift_event_r=shift_event_r, add_noise_r=add_noise_r,
                          drop_channe_r=drop_channe_r, scale_amplitude_r=scale_amplitude_r,
                          pre_emphasis_on=pre_emphasis)
        self.max_d, self.min_d = max_d, min_d
        # Randomness derives from (seed, epoch, batch index): repeatable with
        # a seed whatever the worker order, and resumable at any epoch.
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.bandpass = bool(bandpass)
        self.reader = _H5Reader(file_name, bandpass=self.bandpass)
        if preload:
            self.reader = preload_waveforms(self.reader, self.list_IDs, self.dim, max_preload_gb)
        self.info = TraceInfo(self.list_IDs, max_d, min_d, metadata)
        self.failure = None
        self.set_epoch(0)

    def __len__(self):
        n = len(self.list_IDs) // self.batch_size
        return 2 * n if self.augmentation else n

    def set_epoch(self, epoch):
        """Position the generator at ``epoch`` (its shuffle order and random streams)."""
        self.epoch = int(epoch)
        n = len(self.list_IDs)
        self.indexes = (np.random.default_rng([self.seed, self.epoch]).permutation(n)
                        if self.shuffle else np.arange(n))

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def batch_positions(self, index):
        """Positions in ``list_IDs`` of batch ``index`` (duplicated halves with augmentation)."""
        if self.augmentation:
            half = self.batch_size // 2
            positions = self.indexes[index * half:(index + 1) * half]
            return np.concatenate([positions, positions])
        return self.indexes[index * self.batch_size:(index + 1) * self.batch_size]

    def batch_ids(self, index):
        """Trace ids of batch ``index`` (duplicated halves with augmentation)."""
        return self.list_IDs[self.batch_positions(index)]

    def __getitem__(self, index):
        try:
            return self._batch(index)
        except TraceError as err:
            # Raising inside the backend's input pipeline gets the error wrapped
            # and can leave its worker threads blocked. Instead remember it and
            # hand over a NaN batch: the NaN guard stops training, no snapshot
            # or checkpoint takes the NaN epoch, and fit_reporting raises this.
            self.failure = err
            n = len(self.batch_ids(index))
            return (np.full((n,) + self.dim, np.nan, np.float32),
                    np.zeros((n, 3), np.float32))

    def _batch(self, index):
        positions = self.batch_positions(index)
        ids = self.list_IDs[positions]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = np.empty((len(ids),) + self.dim, dtype=np.float32)
        y = np.empty((len(ids), 3), dtype=np.float32)
        # With augmentation the second half repeats the first: read each trace once.
        n_read = len(ids) // 2 if self.augmentation else len(ids)
        metas = []
        for i in range(n_read):
            y[i], meta = self.info.get(positions[i], self.reader)
            metas.append(meta)
            self.reader.read_into(ids[i], x[i])
        if self.augmentation:
            x[n_read:], y[n_read:] = x[:n_read], y[:n_read]
            if self.rates["shift_event_r"]:
                for i in range(n_read):
                    x[i] = shift_event(x[i], metas[i]["coda_end"],
                                       self.rates["shift_event_r"] / 2, rng)
            for i in range(n_read):
                x[n_read + i] = augment_event(x[n_read + i], metas[i], rng, **self.rates)
        x = normalize(x, self.norm_mode)
        check_finite(x, ids, self.reader.file_name)
        return x, y


class DataGeneratorPrediction(keras.utils.PyDataset):
    """Normalised waveforms of every id in order, last batch possibly short; no labels."""

    def __init__(self, list_IDs, file_name, dim=6000, batch_size=40, n_channels=3,
                 norm_mode="std", workers=1, use_multiprocessing=False, max_queue_size=10,
                 bandpass=False):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.list_IDs = np.asarray(list_IDs).astype(str)
        self.dim = (int(dim), int(n_channels)) if np.isscalar(dim) else tuple(int(d) for d in dim)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.norm_mode = norm_mode
        self.bandpass = bool(bandpass)
        self.reader = _H5Reader(file_name, bandpass=self.bandpass)

    def __len__(self):
        return math.ceil(len(self.list_IDs) / self.batch_size)

    def __getitem__(self, index):
        ids = self.list_IDs[index * self.batch_size:(index + 1) * self.batch_size]
        x = np.empty((len(ids),) + self.dim, dtype=np.float32)
        for i, trace_id in enumerate(ids):
            self.reader.read_into(trace_id, x[i])
        x = normalize(x, self.norm_mode)
        check_finite(x, ids, self.reader.file_name)
        return (x,)


# --------------------------------------------------------------------------
# Learning rate
# --------------------------------------------------------------------------
def _lr_schedule(epoch, base_lr=1e-4):
    """Upstream step schedule: base, x0.1 after epoch 20, x1e-2 after 40,
    x1e-3 after 60, x0.5e-3 after 90 (``epoch`` counted from 0)."""
    if epoch > 90:
        return base_lr * 0.5e-3
    if epoch > 60:
        return base_lr * 1e-3
    if epoch > 40:
        return base_lr * 1e-2
    if epoch > 20:
        return base_lr * 1e-1
    return base_lr


class ScheduleWithPlateau(keras.callbacks.Callback):
    """The upstream step schedule times a ReduceLROnPlateau factor.

    Upstream ran LearningRateScheduler and ReduceLROnPlateau side by side, so
    the scheduler silently undid every plateau reduction at the next epoch.
    Here the plateau reductions accumulate in ``scale`` and multiply the
    schedule: lr(epoch) = _lr_schedule(epoch, base_lr) * scale, not reduced
    below ``min_lr`` by the plateau part.
    """

    def __init__(self, base_lr=1e-4, monitor="val_loss", factor=math.sqrt(0.1),
                 patience=8, min_lr=0.5e-6, min_delta=1e-4, verbose=1):
        super().__init__()
        self.base_lr, self.monitor, self.factor = base_lr, monitor, factor
        self.min_delta = min_delta   # as keras ReduceLROnPlateau
        self.patience, self.min_lr, self.verbose = max(int(patience), 1), min_lr, verbose
        self.scale, self.best, self.wait = 1.0, math.inf, 0

    def get_state(self):
        return {"scale": self.scale, "best": self.best, "wait": self.wait}

    def set_state(self, state):
        self.scale, self.best, self.wait = state["scale"], state["best"], state["wait"]

    def lr_for(self, epoch):
        scheduled = _lr_schedule(epoch, self.base_lr)
        return max(scheduled * self.scale, min(self.min_lr, scheduled))

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.lr_for(epoch)
        self.model.optimizer.learning_rate.assign(lr)
        if self.verbose:
            print(f"Epoch {epoch + 1}: learning rate {lr:.3g}")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        current = logs.get(self.monitor)
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(
            self.model.optimizer.learning_rate))
        if current is None:
            return
        if current < self.best - self.min_delta:
            self.best, self.wait = current, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.scale *= self.factor
            self.wait = 0
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} has not improved for "
                      f"{self.patience} epochs; learning-rate factor now {self.scale:.3g}")


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
def _bn_relu_drop(x, dropout):
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    return layers.Dropout(dropout)(x)


def conv_mixer_head(x, filters=512, depth=10, kernel_size=13, patch_size=10, dropout=0.1):
    """ConvMixer: patch stem, ``depth`` blocks of depthwise (spatial) mixing
    with a residual, then pointwise (channel) mixing. Returns (B, T/patch, filters)."""
    x = layers.Conv1D(filters, patch_size, strides=patch_size, padding="valid")(x)
    x = _bn_relu_drop(x, dropout)
    for _ in range(depth):
        residual = x
        x = layers.DepthwiseConv1D(kernel_size, padding="same")(x)
        x = _bn_relu_drop(x, dropout)
        x = layers.Add()([x, residual])
        x = layers.Conv1D(filters, 1)(x)
        x = _bn_relu_drop(x, dropout)
    return x


PRECISION_POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16",
                      "float16": "mixed_float16"}


def check_mixed_precision(mixed_precision):
    """ValueError unless ``mixed_precision`` is a key of :data:`PRECISION_POLICIES`."""
    if mixed_precision not in PRECISION_POLICIES:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISION_POLICIES)}, "
                         f"got {mixed_precision!r}")


@contextlib.contextmanager
def precision_policy(mixed_precision="off"):
    """Context in which new layers compute in ``mixed_precision``.

    'off': float32; 'bfloat16' / 'float16': Keras mixed precision (variables
    stay float32, the output layer computes in float32; with 'float16'
    ``compile`` wraps the optimizer in a LossScaleOptimizer). The global
    policy is restored on exit.
    """
    check_mixed_precision(mixed_precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISION_POLICIES[mixed_precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_location_model(input_shape=(6000, 3), foundation_weights=None,
                         convmixer_filters=512, convmixer_depth=10, convmixer_kernel=13,
                         convmixer_patch=10, dropout=0.1, d1=5, foundation=None):
    """U-Trans + ConvMixer location model (UTRANS_SPEC section 3).

    input (6000, 3) -> U-Trans encoder + transformer -> latent (75, 80) ->
    3 x convF1 -> (6000, 1), concatenated with the raw input -> (6000, 4) ->
    ConvMixer -> global average pooling -> Dense(3, 'output_layer').

    Parameters
    ----------
    input_shape : tuple
        Trace shape; the latent must flatten to ``input_shape[0]`` values
        (75 x 80 = 6000 for the published model).
    foundation_weights : str or None
        ``UTrans_Foundation.h5`` to start from, or None (random init).
    convmixer_filters, convmixer_depth, convmixer_kernel, convmixer_patch : int
        ConvMixer size; published: 512, 10, 13, 10 (about 4.08 M parameters).
    dropout : float
        Dropout rate of the ConvMixer.
    d1 : int
        First-stage width of the U-Trans encoder (5).
    foundation : keras.Model, optional
        A foundation model to build on (its weights are shared).

    Returns
    -------
    keras.Model
        Named ``utrans_convmixer_location``; output layer ``output_layer`` is
        float32 whatever the compute precision.
    """
    if foundation is None:
        foundation = ub.build_foundation(input_shape, d1=d1, weights=foundation_weights)
    latent = foundation.get_layer(ub.LATENT_NAME).output
    stream = ub.decoder_stream(latent)
    if stream.shape[1] != input_shape[0]:
        raise ValueError(f"decoder stream has {stream.shape[1]} samples, input has "
                         f"{input_shape[0]}: input_shape {input_shape} is not supported")
    x = layers.Concatenate()([stream, foundation.input])
    x = conv_mixer_head(x, convmixer_filters, convmixer_depth, convmixer_kernel,
                        convmixer_patch, dropout)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(3, name="output_layer", dtype="float32")(x)
    return keras.Model(foundation.input, outputs, name="utrans_convmixer_location")


HEAD_KEYS = ("convmixer_filters", "convmixer_depth", "convmixer_kernel", "convmixer_patch")
MODEL_CONFIG_NAME = "model_config.json"


def write_model_config(path, **config):
    """Write the model/label configuration a tester needs (atomic)."""
    atomic_write_text(path, json.dumps(config, indent=2, default=str))


def read_model_config(weights_path):
    """The ``model_config.json`` saved by trainer1 beside a checkpoint, or {}."""
    cfg = Path(weights_path).resolve().parent / MODEL_CONFIG_NAME
    return json.loads(cfg.read_text()) if cfg.is_file() else {}


def infer_head_from_legacy_h5(path):
    """ConvMixer size of an upstream (Keras 2 .h5) location checkpoint, from its shapes."""
    file_layers = ub.read_legacy_h5(path)
    depthwise = [arrs for name, arrs in file_layers if name.startswith("depthwise_conv1d")]
    # The ConvMixer stem is the only conv that reads the 4-channel concatenation.
    stems = [arrs for name, arrs in file_layers
             if name.startswith("conv1d") and arrs[0][1].ndim == 3 and arrs[0][1].shape[1] == 4]
    if not depthwise or not stems:
        raise ub.WeightsFileError(f"{path}: not a U-Trans + ConvMixer location checkpoint "
                                  "(no ConvMixer layers found)")
    stem_kernel = stems[0][0][1]
    return {"convmixer_filters": int(stem_kernel.shape[2]),
            "convmixer_depth": len(depthwise),
            "convmixer_kernel": int(depthwise[0][0][1].shape[0]),
            "convmixer_patch": int(stem_kernel.shape[0])}


def is_legacy_h5(path):
    """True for a Keras 2 weights file (root or model_weights has 'layer_names')."""
    with h5py.File(path, "r") as fh:
        root = fh["model_weights"] if "model_weights" in fh else fh
        return "layer_names" in root.attrs


def _keras3_weight_shapes(path):
    """Shapes of the model arrays in a Keras 3 ``.weights.h5`` file (a checkpoint
    of a compiled model also holds the optimizer state, which is not compared)."""
    shapes = []

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset):
            shapes.append(tuple(obj.shape))

    with h5py.File(path, "r") as fh:
        for key in ("layers", "vars"):
            if key in fh:
                fh[key].visititems(visit)
    return shapes


def load_location_weights(model, path):
    """Load a location checkpoint: trainer1's Keras 3 ``.weights.h5`` or an
    upstream Keras 2 ``.h5``. Fails with a message naming the file when it
    does not fit the model."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model weights file not found: {path}")
    try:
        legacy = is_legacy_h5(path)
    except OSError as err:
        raise ub.WeightsFileError(f"{path}: not a readable HDF5 weights file ({err})") from None
    if legacy:
        return ub.load_legacy_h5_weights(model, path)
    saved = sorted(_keras3_weight_shapes(path))
    wanted = sorted(tuple(w.shape) for w in model.weights)
    if saved != wanted:
        raise ub.WeightsFileError(
            f"{path}: holds {len(saved)} arrays that do not match the {len(wanted)} weights of "
            "this location model (another ConvMixer size? pass --convmixer_filters/--convmixer_depth "
            "or keep model_config.json beside the checkpoint)")
    import warnings

    try:
        with warnings.catch_warnings():
            # Keras only warns when it skips part of a file: treat that as a mismatch.
            warnings.simplefilter("error")
            model.load_weights(path)
    except (ValueError, KeyError, UserWarning) as err:
        raise ub.WeightsFileError(f"{path}: does not fit the location model ({err})") from None
    return {"path": path, "sha256": ub.sha256_of(path), "official": False,
            "n_layers": len([l for l in model.layers if l.weights])}


# --------------------------------------------------------------------------
# Splits and metadata
# --------------------------------------------------------------------------
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
    import pandas as pd

    file_name = str(file_name)
    if not os.path.isfile(file_name):
        raise FileNotFoundError(f"HDF5 file not found: {file_name}")
    rows = []
    reader = _H5Reader(file_name)
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


def check_split(file_name, ids, split_name, max_d=MAX_D, min_d=MIN_D, require_labels=True,
                dim=None):
    """Check a split before training or testing; return its metadata.

    Every id must be in the file with station coordinates and, when ``dim``
    is given, a waveform of that shape; with ``require_labels`` every trace
    needs finite event coordinates and depth. The error names the split, the
    file and the first offending traces. Depths outside [min_d, max_d] are
    counted and reported on stderr (their labels leave [0, 1]) but allowed.
    """
    import sys

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
    reader = _H5Reader(file_name)
    try:
        shapes = ((t, reader.waveform_shape(t)) for t in ids)
        bad = [f"{t} {shape}" for t, shape in shapes if shape != dim]
    finally:
        reader.close()
    if bad:
        raise TraceError(f"{split_name}: {len(bad)} trace(s) in {file_name} do not have the "
                         f"shape {dim}, first: {', '.join(bad[:5])}")


def check_output_parent(output_dir):
    """The folder that will hold ``output_dir`` exists and is writable."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise OSError(f"cannot write {output_dir}: {parent} is not a writable folder")


# --------------------------------------------------------------------------
# Devices (backend-specific code lives only here)
# --------------------------------------------------------------------------
def distribution_scope(multi_gpu=False, number_of_gpus=1):
    """Context in which to build and compile a model that trains data-parallel.

    Parameters
    ----------
    multi_gpu : bool
        Off: a no-op context (the backend's default device).
    number_of_gpus : int
        Replicas wanted. GPUs when there are any, else the logical CPU devices
        :func:`configure_gpus` split the host into. Fewer available: those
        are used and one line says so.

    Returns
    -------
    context manager
        TensorFlow: the scope of a ``tf.distribute.MirroredStrategy`` over
        those devices, or of a ``MultiWorkerMirroredStrategy`` when
        ``TF_CONFIG`` is set (several machines; each uses its local GPUs).
        JAX: a no-op context; a ``keras.distribution.DataParallel`` over
        those devices is set as the process-wide distribution, because
        ``fit`` reads it when it runs (after the ``with`` block).

    Notes
    -----
    Keras feeds each replica ``batch_size / replicas`` traces of every batch
    and averages the gradients, so one step equals a single-device step on
    the whole batch, except for BatchNormalization on TensorFlow: each
    replica normalises with its own batch statistics (per replica, as with
    upstream's MirroredStrategy). On JAX the whole step is one program over
    the sharded batch, so the statistics are the whole batch's. Call
    :func:`configure_gpus` with the same ``multi_gpu`` and ``number_of_gpus``
    first.
    """
    if not multi_gpu:
        return contextlib.nullcontext()
    _check_number_of_gpus(number_of_gpus)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tf_strategy(int(number_of_gpus)).scope()
    if backend == "jax":
        keras.distribution.set_distribution(_jax_data_parallel(int(number_of_gpus)))
        return contextlib.nullcontext()
    raise ValueError(f"multi_gpu is supported on the tensorflow and jax backends, not {backend}")


def replica_count(model):
    """Number of devices (over all machines) that ``model.fit`` splits a batch across."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return int(model.distribute_strategy.num_replicas_in_sync)
    if backend == "jax":
        distribution = keras.distribution.distribution()
        return 1 if distribution is None else int(np.size(distribution.device_mesh.devices))
    return 1


def configure_gpus(gpu_limit=None, gpuid=None, multi_gpu=False, number_of_gpus=1):
    """Choose and set up the devices; call it before the backend runs anything.

    Parameters
    ----------
    gpu_limit : float or None
        Fraction of each used GPU's memory the process may take, in (0, 1].
        TensorFlow: a logical device with that memory limit (None: memory
        grows as needed). JAX: ``XLA_PYTHON_CLIENT_MEM_FRACTION``.
    gpuid : int or None
        Use only this GPU (its number as ``nvidia-smi`` shows it, or as listed
        in ``CUDA_VISIBLE_DEVICES``). The command line already restricts
        ``CUDA_VISIBLE_DEVICES`` to it; a Python call is restricted here.
    multi_gpu : bool
        Data-parallel training will follow (:func:`distribution_scope`).
        Without a GPU, the host CPU is split into ``number_of_gpus`` logical
        devices, so the same code runs (slowly) and can be tested on a CPU.
    number_of_gpus : int
        Devices for ``multi_gpu``.

    Raises
    ------
    ValueError
        ``gpu_limit`` outside (0, 1], ``number_of_gpus`` < 1, ``gpuid`` given
        but no such GPU visible, or a setting that can no longer be applied
        because the backend already started in this process.
    """
    if gpu_limit is not None and not _is_fraction(gpu_limit):
        raise ValueError(f"gpu_limit must be a fraction of the GPU memory in (0, 1], got {gpu_limit!r}")
    if multi_gpu:
        _check_number_of_gpus(number_of_gpus)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        _configure_tensorflow(gpu_limit, gpuid, multi_gpu, int(number_of_gpus))
    elif backend == "jax":
        _configure_jax(gpu_limit, gpuid, multi_gpu, int(number_of_gpus))
    elif gpuid is not None or gpu_limit is not None or multi_gpu:
        raise ValueError(f"gpuid, gpu_limit and multi_gpu are supported on the tensorflow and "
                         f"jax backends, not {backend}")


def _is_fraction(value):
    try:
        return 0 < float(value) <= 1
    except (TypeError, ValueError):
        return False


def _check_number_of_gpus(number_of_gpus):
    if int(number_of_gpus) < 1:
        raise ValueError(f"number_of_gpus must be >= 1, got {number_of_gpus}")


def _visible_gpu_index(gpuid, n_visible=None):
    """Position of GPU ``gpuid`` among the GPUs this process sees.

    The command line sets ``CUDA_VISIBLE_DEVICES=<gpuid>`` (position 0); a
    Python call may find any list there, or none (position = gpuid).
    ``n_visible`` None: not known yet (JAX not started), not checked.
    """
    visible_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"CUDA_VISIBLE_DEVICES={visible_env!r}"
    if n_visible == 0:
        raise ValueError(f"gpuid={gpuid} was given but no GPU is visible to this process "
                         f"({where}); leave gpuid out to run on the CPU")
    visible = [v.strip() for v in visible_env.split(",")] if visible_env else []
    if str(gpuid) in visible:
        index = visible.index(str(gpuid))
    elif visible and all(v.isdigit() for v in visible):
        index = -1  # a list of GPU numbers without this one
    else:
        index = int(gpuid)  # no list, or UUIDs: gpuid counts the visible GPUs
    if index < 0 or (n_visible is not None and index >= n_visible):
        raise ValueError(f"gpuid={gpuid} is not among the GPUs visible to this process "
                         f"({n_visible or 'unknown number'}, {where})")
    return index


def _fewer_devices(kind, found, asked):
    print(f"multi_gpu: number_of_gpus={asked} but only {found} {kind} device(s) available; "
          f"training on {found}")


def _too_late(what, err):
    return ValueError(f"{what}: this must be set before the {keras.backend.backend()} backend "
                      f"starts, and it already runs in this process ({err}); call "
                      "configure_gpus before anything else uses the backend, or use a fresh "
                      "process")


def _configure_tensorflow(gpu_limit, gpuid, multi_gpu, number_of_gpus):
    """TensorFlow: visible GPUs, their memory, and the CPU split for multi_gpu.

    Every call is made only when it changes something, because TensorFlow
    refuses changes once its runtime started (RuntimeError), even no-op ones
    for some settings; a second trainer1/tester1 call in one process with the
    same settings must still work.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpuid is not None:
        gpus = [gpus[_visible_gpu_index(gpuid, len(gpus))]]
    elif multi_gpu and os.environ.get("TF_CONFIG"):
        # MultiWorkerMirroredStrategy takes every visible GPU: hide the extra ones.
        gpus = gpus[:number_of_gpus]
    if gpuid is not None or (multi_gpu and os.environ.get("TF_CONFIG")):
        if tf.config.get_visible_devices("GPU") != gpus:
            try:
                tf.config.set_visible_devices(gpus, "GPU")
            except RuntimeError as err:
                what = f"gpuid={gpuid}" if gpuid is not None else f"number_of_gpus={number_of_gpus}"
                raise _too_late(f"{what} (the visible GPUs)", err) from None
    for gpu in gpus:
        if gpu_limit is not None:
            # CUDA numbers the visible GPUs like TensorFlow: /physical_device:GPU:<n>.
            total_mb = _nvidia_total_mb(int(gpu.name.rsplit(":", 1)[1]))
            wanted = [tf.config.LogicalDeviceConfiguration(memory_limit=int(gpu_limit * total_mb))]
            if tf.config.get_logical_device_configuration(gpu) != wanted:
                try:
                    tf.config.set_logical_device_configuration(gpu, wanted)
                except RuntimeError as err:
                    raise _too_late(f"gpu_limit={gpu_limit}", err) from None
        elif tf.config.get_logical_device_configuration(gpu) is None:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass  # already running: keep its memory policy (growth is only a nicety)
    if multi_gpu and not gpus and not os.environ.get("TF_CONFIG"):
        _tf_split_host_cpu(number_of_gpus)


def _tf_split_host_cpu(n):
    """Split the host CPU into ``n`` logical devices (TensorFlow, no GPU).

    MirroredStrategy then runs its usual replica code on them: no speed-up,
    but the multi-device path runs and can be tested without a GPU.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or []
    if len(current) >= n:
        return  # already split (an earlier call in this process)
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:
        raise _too_late(f"multi_gpu without a GPU splits the CPU into number_of_gpus={n} "
                        "devices", err) from None
    _cpu_split_note(n)


def _cpu_split_note(n):
    print(f"multi_gpu: no GPU found; the CPU is split into {n} logical devices (same code path, "
          "no speed-up)")


def _tf_strategy(n):
    """MultiWorkerMirroredStrategy with TF_CONFIG, else MirroredStrategy on ``n`` devices."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        # Several machines: TF_CONFIG names the workers and this one's index; each
        # worker uses its local GPUs (configure_gpus hid all but n), or its CPU.
        return _tf_fix_multiworker_reduce(tf.distribute.MultiWorkerMirroredStrategy())
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    kind = "GPU"
    if not devices:
        devices, kind = [d.name for d in tf.config.list_logical_devices("CPU")], "CPU"
    if len(devices) < n:
        _fewer_devices(kind, len(devices), n)
    return tf.distribute.MirroredStrategy(devices=devices[:n])


def _tf_fix_multiworker_reduce(strategy):
    """Make ``strategy.reduce`` accept the two calls Keras 3's ``fit`` makes.

    Keras 3 (checked with 3.15) fails under MultiWorkerMirroredStrategy
    (keras-team/keras#20585): it reduces the first (x, y) batch as one
    structure with ``axis=None`` (to build the model), and each scalar
    metric with ``axis=0``. Reduce each element separately, and scalars over
    the replicas only, which is what both calls mean.
    """
    import tensorflow as tf

    reduce = strategy.reduce

    def reduce_each(reduce_op, value, axis=None):
        def one(v):
            parts = getattr(v, "values", (v,))
            scalar = all(getattr(p, "shape", None) is not None and p.shape.rank == 0 for p in parts)
            return reduce(reduce_op, v, None if scalar else axis)
        return tf.nest.map_structure(one, value)

    strategy.reduce = reduce_each
    return strategy


def _configure_jax(gpu_limit, gpuid, multi_gpu, number_of_gpus):
    """JAX: settings JAX reads when it creates its backends (its first computation).

    Applied here while JAX has not started (the command line has set their
    environment equivalents already). Afterwards the GPU memory is reserved
    and the device list fixed: gpuid then only makes that GPU the default
    device, and a different gpu_limit or too few CPU devices raise.
    """
    import jax

    started = _jax_started()
    if not started:
        if gpu_limit is not None:
            os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(gpu_limit)
        if multi_gpu and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            # Splits only the host (CPU) platform, so harmless where there are GPUs.
            jax.config.update("jax_num_cpu_devices", number_of_gpus)
        if gpuid is not None:
            jax.config.update("jax_cuda_visible_devices", str(_visible_gpu_index(gpuid)))
    elif gpu_limit is not None and os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") != str(gpu_limit):
        raise _too_late(f"gpu_limit={gpu_limit}", "GPU memory already reserved")
    gpus = _jax_gpus()
    if gpuid is not None:
        # Not started: that GPU is the only one left, so only "none at all" is checked.
        index = _visible_gpu_index(gpuid, len(gpus)) if started or not gpus else 0
        if len(gpus) > 1:
            jax.config.update("jax_default_device", gpus[index])
    if multi_gpu and not gpus:
        n_cpu = len(jax.devices("cpu"))
        if started and n_cpu < number_of_gpus:
            raise _too_late(f"multi_gpu without a GPU splits the CPU into number_of_gpus="
                            f"{number_of_gpus} devices", f"{n_cpu} CPU device(s)")
        if n_cpu >= number_of_gpus:
            _cpu_split_note(number_of_gpus)


def _jax_started():
    """Whether JAX already created its backends (then device settings are fixed)."""
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume it has started
        return True


def _jax_gpus():
    import jax

    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU platform
        return []


def _jax_data_parallel(n):
    """``keras.distribution.DataParallel`` over ``n`` GPUs, else ``n`` host CPU devices."""
    if os.environ.get("TF_CONFIG"):
        raise ValueError("TF_CONFIG (training on several machines) is supported on the "
                         "tensorflow backend; unset it, or set KERAS_BACKEND=tensorflow")
    kind = "GPU" if _jax_gpus() else "CPU"
    devices = keras.distribution.list_devices(kind.lower())
    if len(devices) < n:
        _fewer_devices(kind, len(devices), n)
    return keras.distribution.DataParallel(devices=devices[:n])


def _nvidia_total_mb(index):
    """Total memory (MB) of the index-th GPU visible to this process."""
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    device = visible[index].strip() if index < len(visible) and visible[index].strip() else str(index)
    out = subprocess.run(["nvidia-smi", "-i", device, "--query-gpu=memory.total",
                          "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[0])


# --------------------------------------------------------------------------
# Reports and figures
# --------------------------------------------------------------------------
def write_report(path, title, items):
    """Write ``name: value`` lines to a text report (temporary file, then rename)."""
    import datetime

    text = [f"{title} report, {datetime.datetime.now().isoformat(timespec='seconds')}"]
    text += [f"{name}: {value}" for name, value in items]
    atomic_write_text(path, "\n".join(text) + "\n")


def plot_history(history, path):
    """Loss curves (training and validation) per epoch, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "val_loss"):
        if history.get(key):
            ax.plot(np.arange(1, len(history[key]) + 1), history[key], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.partial{os.getpid()}"
    fig.savefig(tmp, dpi=120, format="png")
    os.replace(tmp, path)
    plt.close(fig)


# --------------------------------------------------------------------------
# Monte-Carlo dropout
# --------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="utrans")
class MCDropout(layers.Dropout):
    """Dropout that also samples at inference (Monte-Carlo dropout)."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


@keras.saving.register_keras_serializable(package="utrans")
class MCStochasticDepth(ub.StochasticDepth):
    """Stochastic depth that also samples at inference."""

    def call(self, x, training=None):
        return super().call(x, training=True)


@keras.saving.register_keras_serializable(package="utrans")
class MCMultiHeadAttention(layers.MultiHeadAttention):
    """Multi-head attention whose attention dropout also samples at inference."""

    def call(self, query, value, key=None, **kwargs):
        kwargs["training"] = True
        return super().call(query, value, key, **kwargs)


_MC_CLASSES = {layers.Dropout: MCDropout, ub.StochasticDepth: MCStochasticDepth,
               layers.MultiHeadAttention: MCMultiHeadAttention}


def mc_sampling_model(model, seed=None):
    """A copy of ``model`` whose dropout-type layers sample at inference.

    Dropout, StochasticDepth and the attention dropout draw new masks on
    every call, while BatchNormalization stays in inference mode (the copy is
    only ever run with ``predict``, so its moving statistics are neither used
    nor updated from the batch). convF1's closing Dropout, which upstream
    never applies, stays off. Built once: N samples cost N forward passes of
    a compiled predict function. ``seed`` fixes every layer's random stream
    (layer i gets seed + i), so the same seed gives the same samples.
    """
    counter = iter(range(10**6))

    def clone(layer):
        config = layer.get_config()
        cls = _MC_CLASSES.get(type(layer))
        if cls is None or layer.name.startswith(ub.FROZEN_DROPOUT_PREFIX):
            return layer.__class__.from_config(config)
        if seed is not None:
            config["seed"] = int(seed) + next(counter)
        return cls.from_config(config)

    sampler = keras.models.clone_model(model, clone_function=clone)
    sampler.set_weights(model.get_weights())
    return sampler


# --------------------------------------------------------------------------
# Training safety: atomic files, NaN guard, resumable state
# --------------------------------------------------------------------------
def atomic_save_weights(model, path):
    """``model.save_weights`` to a temporary name in the same folder, then rename:
    a kill at any moment leaves either the old or the new complete file."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name[:-len('.weights.h5')]}.partial{os.getpid()}.weights.h5")
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path, text):
    """Write text to ``path`` through a temporary file and a rename."""
    tmp = f"{path}.partial{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


class BestCheckpoint(keras.callbacks.Callback):
    """Save the weights (atomically) each time ``monitor`` improves.

    Like ``ModelCheckpoint(save_best_only=True, save_weights_only=True)``
    with ``{epoch:03d}`` in the name, but a kill during a save never leaves a
    truncated checkpoint, and its best value can be restored on resume.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=1):
        super().__init__()
        self.filepath, self.monitor, self.verbose = filepath, monitor, verbose
        self.best, self.best_path = math.inf, None

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or not np.isfinite(current) or current >= self.best:
            return
        path = self.filepath.format(epoch=epoch + 1)
        atomic_save_weights(self.model, path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5g} to "
                  f"{current:.5g}; saved {path}")
        self.best, self.best_path = float(current), path

    def get_state(self):
        return {"best": self.best, "best_path": self.best_path}

    def set_state(self, state):
        self.best, self.best_path = state["best"], state["best_path"]


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose wait/best survive a resume."""

    _restored = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._restored:
            self.wait, self.best = self._restored["wait"], self._restored["best"]

    def get_state(self):
        best = self.best if self.best is None else float(self.best)
        return {"wait": int(self.wait), "best": best}

    def set_state(self, state):
        self._restored = state


class NaNGuard(keras.callbacks.Callback):
    """Stop at the first non-finite training loss and remember which traces
    made that batch, so the run can name them."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator
        self.epoch = 0
        self.bad = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)) and self.bad is None:
            self.bad = {"epoch": self.epoch + 1, "batch": batch + 1,
                        "traces": list(dict.fromkeys(self.generator.batch_ids(batch)))}
            self.model.stop_training = True


class EpochTimer(keras.callbacks.Callback):
    """Add ``train_time_s`` (the training pass: loading, augmentation and
    steps, without validation), ``epoch_time_s`` and ``train_traces_per_s`` to
    each epoch's logs, hence to history.csv. Put it first in the callback list."""

    def __init__(self, traces_per_epoch):
        super().__init__()
        self.traces_per_epoch = int(traces_per_epoch)
        self._start = self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train_end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self._start is None:
            return
        now = time.perf_counter()
        train = (self._train_end or now) - self._start
        logs["train_time_s"] = train
        logs["epoch_time_s"] = now - self._start
        logs["train_traces_per_s"] = self.traces_per_epoch / train if train > 0 else math.nan


class TrainingState(keras.callbacks.Callback):
    """Everything a resumed run needs, written at the end of every epoch.

    ``<state_dir>/epoch_XXX.weights.h5`` holds the model and optimizer
    variables; ``state.json`` the completed epoch count, the history, and the
    states of the stateful callbacks (plateau factor, early stopping, best
    checkpoint). Weights are written first and state.json is renamed into
    place last, so it always points to a complete weights file. The
    history CSV is rewritten whole (atomically) every epoch.
    """

    STATE = "state.json"

    def __init__(self, state_dir, history_csv, stateful, history=None):
        super().__init__()
        self.state_dir, self.history_csv = state_dir, history_csv
        self.stateful = stateful
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch, logs=None):
        import pandas as pd

        if not all(np.isfinite(float(v)) for k, v in (logs or {}).items() if "loss" in k):
            return   # a NaN/Inf epoch must not replace the last good snapshot
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        weights = os.path.join(self.state_dir, f"epoch_{epoch + 1:03d}.weights.h5")
        atomic_save_weights(self.model, weights)
        state = {"epochs_done": epoch + 1, "weights": os.path.basename(weights),
                 "stopped_early": bool(self.model.stop_training), "history": self.history,
                 "callbacks": {name: cb.get_state() for name, cb in self.stateful.items()}}
        table = pd.DataFrame(self.history)
        table.insert(0, "epoch", np.arange(len(table)))
        atomic_write_text(self.history_csv, table.to_csv(index=False))
        # state.json last: it commits the epoch once everything it names exists.
        atomic_write_text(os.path.join(self.state_dir, self.STATE), json.dumps(state, indent=1))
        for old in os.listdir(self.state_dir):   # only this callback's own older snapshots
            if old.startswith("epoch_") and old != os.path.basename(weights):
                os.remove(os.path.join(self.state_dir, old))


def fit_reporting(model, generators, **fit_kwargs):
    """``model.fit``, then raise the TraceError a generator met (it names the trace).

    A generator that meets a bad trace records the error and serves a NaN
    batch (see DataGenerator.__getitem__), so the error surfaces here in the
    main thread rather than wrapped by the backend's input pipeline.
    """
    def failure():
        return next((g.failure for g in generators if getattr(g, "failure", None)), None)

    try:
        history = model.fit(**fit_kwargs)
    except Exception:
        if failure() is not None:
            raise failure() from None
        raise
    if failure() is not None:
        raise failure()
    return history


def read_training_state(state_dir):
    """The saved state of an interrupted run, or None if it never finished an epoch."""
    path = os.path.join(state_dir, TrainingState.STATE)
    return json.loads(Path(path).read_text()) if os.path.isfile(path) else None
