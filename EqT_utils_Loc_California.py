"""The California STEAD location example's shared module (Keras 3).

What the upstream utils module provides for this example, and nothing else:
location labels, std normalisation and the augmentations, the HDF5
``DataGenerator`` / ``DataGeneratorPrediction``, the learning-rate schedule,
the ConvMixer head and ``build_location_model``. Model code uses only
``keras.*``, so the TensorFlow (default) and JAX backends both work.

Everything around it lives in ``utrans_loc/``, one module per job: how traces
are stored and read (``traces``), splits, checkpoints, devices, training
safety, Monte-Carlo sampling, metrics and figures. This module must not grow
device, file-safety or reporting code: it reads top to bottom in one sitting.

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

import math

import keras
import numpy as np
from keras import layers

import utrans_backbone as ub
# Trace storage lives in utrans_loc.traces; these names are re-exported because
# users of the upstream module find them here (U.TraceError, U.bandpass_taper, ...).
from utrans_loc.traces import (MAX_PRELOAD_GB, H5Reader, TraceError, attr_float,  # noqa: F401
                               attr_snr, bandpass_taper, check_finite, preload_waveforms,
                               trace_meta)
from utrans_loc import devices, vocabulary

devices.pool_cpu_memory()   # before the backend's first operation: see its docstring

MAX_D = 114.5   # California depth normalisation (km), as published
MIN_D = 1e-5
# The label's inputs as DataCollected attributes (station_lat, station_long, ...).
LABEL_ATTRS = vocabulary.names(*vocabulary.LABEL_FIELDS, to="datacollected")
# The published ConvMixer head (UTRANS_SPEC section 3) and the upstream
# California augmentation rates (section 4): each default is said once, here.
PUBLISHED_HEAD = dict(convmixer_filters=512, convmixer_depth=10, convmixer_kernel=13,
                      convmixer_patch=10)
# (build_augmentations keywords, as trainer1 names them; the rest off.)
CALIFORNIA_AUGMENTATION = dict(shift_event_r=0.99, add_noise_r=0.5, drop_channel_r=0.1)


# --------------------------------------------------------------------------
# Location labels
# --------------------------------------------------------------------------
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
    values = {field: attr_float(attrs, attr)
              for field, attr in zip(vocabulary.LABEL_FIELDS, LABEL_ATTRS)}
    bad = [attr for attr, v in zip(LABEL_ATTRS, values.values()) if not np.isfinite(v)]
    if bad:
        raise TraceError(
            f"trace '{trace_id}' has no usable {', '.join(bad)} (a noise trace or a "
            "trace without event attributes cannot be in a location training split)")
    return labels_from(values, max_d, min_d)


def labels_from(values, max_d=MAX_D, min_d=MIN_D):
    """Location target(s) from the label fields under their table names
    (:data:`vocabulary.LABEL_FIELDS`: station_lat, station_lon, event_lat,
    event_lon, depth_km), scalars or columns; float32, shape (3,) or (N, 3)."""
    return np.stack([np.subtract(values["station_lat"], values["event_lat"]),
                     np.subtract(values["station_lon"], values["event_lon"]),
                     depth_to_label(np.asarray(values["depth_km"], dtype=float), max_d, min_d)],
                    axis=-1).astype(np.float32)


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


# One small callable per transform (SeisBench's pattern): the generator gets a
# list and applies it in order, without knowing the transforms' names.
class Augmentation:
    """A transform of the chain at a ``rate``: ``transform(data, meta, rng) -> (data, meta)``.

    ``meta`` holds the trace's p_arrival, s_arrival, coda_end (samples) and snr;
    only a transform that moves the waveform returns it changed. Every random
    draw comes from ``rng`` (repeatable per seed, epoch and batch).
    """

    def __init__(self, rate):
        self.rate = rate

    def first_copy(self):
        """What the first copy of an id gets in a half batch (UTRANS_SPEC section 5):
        None (nothing) unless the transform says otherwise."""
        return None

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class ShiftEvent(Augmentation):
    """:func:`shift_event` at ``rate``; the picks move with the waveform."""

    def __call__(self, data, meta, rng):
        data, shift = shift_event(data, meta["coda_end"], self.rate, rng, return_shift=True)
        return data, shifted_picks(meta, shift, data.shape[0])

    def first_copy(self):
        return ShiftEvent(self.rate / 2)


class AddEvent(Augmentation):
    """:func:`add_event` at ``rate`` (a second event after the coda)."""

    def __call__(self, data, meta, rng):
        return add_event(data, meta["p_arrival"], meta["s_arrival"], meta["coda_end"],
                         meta["snr"], self.rate, rng), meta


class AddNoise(Augmentation):
    """:func:`add_noise` at ``rate``."""

    def __call__(self, data, meta, rng):
        return add_noise(data, meta["snr"], self.rate, rng), meta


class DropChannel(Augmentation):
    """:func:`drop_channel` at ``rate``."""

    def __call__(self, data, meta, rng):
        return drop_channel(data, meta["snr"], self.rate, rng), meta


class ScaleAmplitude(Augmentation):
    """:func:`scale_amplitude` at ``rate``."""

    def __call__(self, data, meta, rng):
        return scale_amplitude(data, self.rate, rng), meta


class PreEmphasis(Augmentation):
    """:func:`pre_emphasis` (always; draws nothing)."""

    def __init__(self, coeff=0.97):
        self.coeff = coeff

    def __call__(self, data, meta, rng):
        return pre_emphasis(data, self.coeff), meta


class AddGap(Augmentation):
    """:func:`add_gaps` at ``rate``."""

    def __call__(self, data, meta, rng):
        return add_gaps(data, self.rate, rng), meta


def build_augmentations(shift_event_r=None, add_event_r=None, add_noise_r=None,
                        drop_channel_r=None, scale_amplitude_r=None, pre_emphasis=False,
                        add_gap_r=None):
    """The upstream full augmentation chain, in its order, for the given rates.

    Parameters
    ----------
    shift_event_r, add_event_r, add_noise_r, drop_channel_r, scale_amplitude_r,
    add_gap_r : float or None
        Rate of each transform; None (or 0) leaves it out of the chain (it then
        draws no random numbers). California: :data:`CALIFORNIA_AUGMENTATION`.
    pre_emphasis : bool
        Pre-emphasis after the amplitude scaling.

    Returns
    -------
    list of Augmentation
        E.g. ``[ShiftEvent(rate=0.99), AddNoise(rate=0.5), DropChannel(rate=0.1)]``,
        for ``DataGenerator(augmentations=...)`` or :func:`augment`.
    """
    # Upstream's order, which fixes the order of the random draws (seeded runs).
    steps = [(shift_event_r, ShiftEvent), (add_event_r, AddEvent), (add_noise_r, AddNoise),
             (drop_channel_r, DropChannel), (scale_amplitude_r, ScaleAmplitude),
             (pre_emphasis, lambda _: PreEmphasis()), (add_gap_r, AddGap)]
    return [make(setting) for setting, make in steps if setting]


def augment(augmentations, data, meta, rng):
    """``data`` through each transform of ``augmentations`` in order (before normalisation)."""
    for transform in augmentations:
        data, meta = transform(data, meta, rng)
    return data


def first_copy_chain(augmentations):
    """What the first copy of each id gets in a half batch (UTRANS_SPEC section 5):
    each transform's ``first_copy()``, where it has one (:class:`ShiftEvent`: the
    shift at half rate)."""
    firsts = (getattr(t, "first_copy", lambda: None)() for t in augmentations)
    return [t for t in firsts if t is not None]


def augment_event(data, meta, rng, *, shift_event_r=None, add_event_r=None,
                  add_noise_r=None, drop_channe_r=None, scale_amplitude_r=None,
                  pre_emphasis_on=False, add_gap_r=None):
    """The upstream full augmentation chain for an event trace, with the upstream
    keyword names (``augment(build_augmentations(...), data, meta, rng)``).

    ``meta`` holds p_arrival, s_arrival, coda_end and snr (3 values). A rate
    of None (or 0) skips that transform. Labels are not touched.
    """
    return augment(build_augmentations(
        shift_event_r=shift_event_r, add_event_r=add_event_r, add_noise_r=add_noise_r,
        drop_channel_r=drop_channe_r, scale_amplitude_r=scale_amplitude_r,
        pre_emphasis=pre_emphasis_on, add_gap_r=add_gap_r), data, meta, rng)


class TraceLabels:
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
        self.labels[:] = labels_from({f: rows[f].to_numpy(float) for f in vocabulary.LABEL_FIELDS},
                                     self.max_d, self.min_d)
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
        Accepted for upstream compatibility and ignored; location labels are
        always the 3-value regression target.
    augmentation : bool
        Use the half-batch augmentation scheme (see Notes).
    augmentations : list of callable, optional
        The full chain, applied in order to the second copy of each id:
        callables ``(data, meta, rng) -> (data, meta)``, as
        :func:`build_augmentations` makes them. A transform's ``first_copy()``
        (when it has one) is what the first copy gets.
    add_event_r, add_gap_r, shift_event_r, add_noise_r, drop_channe_r,
    scale_amplitude_r : float or None
        Upstream keywords, for when ``augmentations`` is not given: the chain
        is then ``build_augmentations`` of these rates (None: off).
    pre_emphasis : bool
        Upstream keyword: pre-emphasis in that chain.
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
    only a shift (at half ``shift_event_r``: ``ShiftEvent.first_copy``) and
    normalisation; the second copy gets the full chain. An epoch has
    ``2 * floor(N / batch_size)`` batches; without augmentation
    ``floor(N / batch_size)`` batches of distinct ids.
    """

    def __init__(self, list_IDs, file_name, dim=6000, batch_size=40, n_channels=3,
                 shuffle=True, norm_mode="std", label_type="gaussian", augmentation=False,
                 add_event_r=None, add_gap_r=None, shift_event_r=None, add_noise_r=None,
                 drop_channe_r=None, scale_amplitude_r=None, pre_emphasis=False,
                 max_d=MAX_D, min_d=MIN_D, seed=None, workers=1,
                 use_multiprocessing=False, max_queue_size=10, bandpass=False, metadata=None,
                 preload=False, max_preload_gb=MAX_PRELOAD_GB, augmentations=None):
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
        del label_type   # accepted for upstream callers, used nowhere
        self.augmentation = augmentation
        self.augmentations = self._chain(augmentations, dict(
            shift_event_r=shift_event_r, add_event_r=add_event_r, add_noise_r=add_noise_r,
            drop_channe_r=drop_channe_r, scale_amplitude_r=scale_amplitude_r,
            pre_emphasis=pre_emphasis, add_gap_r=add_gap_r))
        self.first_copy = first_copy_chain(self.augmentations)
        self.max_d, self.min_d = max_d, min_d
        # Randomness derives from (seed, epoch, batch index): repeatable with
        # a seed whatever the worker order, and resumable at any epoch.
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.bandpass = bool(bandpass)
        self.reader = H5Reader(file_name, bandpass=self.bandpass)
        if preload:
            self.reader = preload_waveforms(self.reader, self.list_IDs, self.dim, max_preload_gb)
        self.info = TraceLabels(self.list_IDs, max_d, min_d, metadata)
        self.failure = None
        self._orders = {}
        self.set_epoch(0)

    @staticmethod
    def _chain(augmentations, upstream):
        """``augmentations`` checked, or the chain of the upstream keywords."""
        if augmentations is None:
            upstream = dict(upstream)
            return build_augmentations(drop_channel_r=upstream.pop("drop_channe_r"), **upstream)
        given = [name for name, value in upstream.items() if value]
        if given:
            raise ValueError(f"DataGenerator: give augmentations or the rates "
                             f"({', '.join(given)}), not both")
        augmentations = list(augmentations)
        for i, transform in enumerate(augmentations):
            if not callable(transform):
                raise ValueError(f"DataGenerator: augmentations[{i}] ({transform!r}) is not "
                                 "callable (expected transform(data, meta, rng) -> (data, meta))")
        return augmentations

    def __len__(self):
        n = len(self.list_IDs) // self.batch_size
        return 2 * n if self.augmentation else n

    def set_epoch(self, epoch):
        """Position the generator at ``epoch`` (its shuffle order and random streams)."""
        self.epoch = int(epoch)
        self.indexes = self.order(self.epoch)

    def order(self, epoch):
        """The ids' order in ``epoch``: a function of (seed, epoch) only."""
        n = len(self.list_IDs)
        if not self.shuffle:
            return np.arange(n)
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
            # A new dict, swapped in whole: worker threads may read it meanwhile
            # (a race costs at most a recomputed order). A stream reads at most
            # two epochs at once; the oldest others are dropped.
            kept = sorted(self._orders)[-2:]
            self._orders = {**{e: self._orders[e] for e in kept}, epoch: order}
        return order

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def batch_positions(self, index, epoch=None):
        """Positions in ``list_IDs`` of batch ``index`` of ``epoch`` (default: the
        current one); duplicated halves with augmentation."""
        indexes = self.indexes if epoch is None else self.order(epoch)
        if self.augmentation:
            half = self.batch_size // 2
            positions = indexes[index * half:(index + 1) * half]
            return np.concatenate([positions, positions])
        return indexes[index * self.batch_size:(index + 1) * self.batch_size]

    def batch_ids(self, index, epoch=None):
        """Trace ids of batch ``index`` of ``epoch`` (duplicated halves with augmentation)."""
        return self.list_IDs[self.batch_positions(index, epoch)]

    def __getitem__(self, index):
        return self.batch_at(self.epoch, index)

    def batch_at(self, epoch, index):
        """Batch ``index`` of ``epoch``, whatever the current epoch: what
        :class:`EpochStream` reads, so a batch of the next epoch can be prepared
        while this one trains. Identical to ``self[index]`` after ``set_epoch(epoch)``."""
        try:
            return self._batch(index, int(epoch))
        except TraceError as err:
            # Raising inside the backend's input pipeline gets the error wrapped
            # and can leave its worker threads blocked. Instead remember it and
            # hand over a NaN batch: the NaN guard stops training, no snapshot
            # or checkpoint takes the NaN epoch, and fit_reporting raises this.
            self.failure = err
            n = len(self.batch_ids(index, epoch))
            return (np.full((n,) + self.dim, np.nan, np.float32),
                    np.zeros((n, 3), np.float32))

    def _batch(self, index, epoch):
        positions = self.batch_positions(index, epoch)
        ids = self.list_IDs[positions]
        rng = np.random.default_rng([self.seed, epoch, index])
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
            # All first copies, then all second copies: the order of the draws
            # from rng, so a seeded run repeats bit for bit.
            if self.first_copy:
                for i in range(n_read):
                    x[i] = augment(self.first_copy, x[i], metas[i], rng)
            for i in range(n_read):
                x[n_read + i] = augment(self.augmentations, x[n_read + i], metas[i], rng)
        x = normalize(x, self.norm_mode)
        check_finite(x, ids, self.reader.file_name)
        return x, y


class EpochStream(keras.utils.PyDataset):
    """A :class:`DataGenerator`'s epochs one after another, as one endless dataset.

    ``fit(EpochStream(gen), steps_per_epoch=len(gen))`` feeds the same batches
    as ``fit(gen)`` did (batch ``i`` is batch ``i % len(gen)`` of epoch
    ``start_epoch + i // len(gen)``), through one input pipeline for the whole
    run. Keras otherwise makes a new backend iterator for every epoch (and
    validation pass) over a PyDataset; with TensorFlow, measured on a 2-core
    CPU, about one epoch in four then began with a ~5 s wait in which no
    thread ran. Only for training: Keras renews the validation iterator at
    every pass whatever the dataset, and an endless one is then let go while
    its prefetch is still running (measured: the same wait), so validation
    data stay a finite :class:`DataGenerator`.

    Parameters
    ----------
    generator : DataGenerator
        The batches; its ``workers``, ``use_multiprocessing`` and
        ``max_queue_size`` are the stream's.
    start_epoch : int, optional
        The generator epoch of the first batch. Default: the one after the
        generator's current epoch, the epoch ``fit(gen)`` began with (Keras
        calls ``on_epoch_end`` once before the first epoch), so seeded runs
        repeat those made before the stream, and a resumed run (generator at
        ``set_epoch(epochs_done)``) continues where it stopped.
    """

    def __init__(self, generator, start_epoch=None):
        super().__init__(workers=generator.workers, use_multiprocessing=generator.use_multiprocessing,
                         max_queue_size=generator.max_queue_size)
        self.generator = generator
        self.start_epoch = generator.epoch + 1 if start_epoch is None else int(start_epoch)

    @property
    def num_batches(self):
        return None   # endless: fit's steps_per_epoch ends each epoch

    @property
    def steps_per_epoch(self):
        return len(self.generator)

    def position(self, i):
        """(generator epoch, batch index) of stream batch ``i``."""
        epoch, index = divmod(int(i), self.steps_per_epoch)
        return self.start_epoch + epoch, index

    def __getitem__(self, i):
        return self.generator.batch_at(*self.position(i))

    def batch_ids(self, i):
        """Trace ids of stream batch ``i``."""
        epoch, index = self.position(i)
        return self.generator.batch_ids(index, epoch)


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
        self.reader = H5Reader(file_name, bandpass=self.bandpass)

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
def lr_schedule(epoch, base_lr=1e-4):
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


_lr_schedule = lr_schedule   # the upstream name


class ScheduleWithPlateau(keras.callbacks.Callback):
    """The upstream step schedule times a ReduceLROnPlateau factor.

    Upstream ran LearningRateScheduler and ReduceLROnPlateau side by side, so
    the scheduler silently undid every plateau reduction at the next epoch.
    Here the plateau reductions accumulate in ``scale`` and multiply the
    schedule: lr(epoch) = lr_schedule(epoch, base_lr) * scale, not reduced
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
        scheduled = lr_schedule(epoch, self.base_lr)
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


LR_SCHEDULES = ("step", "cosine")
# The cosine schedule's warm-up starts at this fraction of the base rate, and its
# decay ends at this fraction of it (not 0: the last epochs still learn).
WARMUP_START, COSINE_ALPHA = 0.1, 0.01


class CosineScheduleWithPlateau(ScheduleWithPlateau):
    """Linear warm-up then cosine decay over the whole run, set every batch, times
    the same plateau factor as :class:`ScheduleWithPlateau`.

    The rate is a function of the step (epoch x steps_per_epoch + batch), given
    by ``keras.optimizers.schedules.CosineDecay``: from ``WARMUP_START x base_lr``
    up to ``base_lr`` over ``warmup_epochs``, then down to ``COSINE_ALPHA x
    base_lr`` at the end of epoch ``epochs``. A resumed run continues it from its
    epoch; only the plateau state needs saving.
    """

    def __init__(self, base_lr, epochs, steps_per_epoch, warmup_epochs=0.0, **kwargs):
        super().__init__(base_lr, **kwargs)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        total = max(int(epochs), 1) * self.steps_per_epoch
        warmup = min(int(round(float(warmup_epochs) * self.steps_per_epoch)), total - 1)
        self.cosine = keras.optimizers.schedules.CosineDecay(
            base_lr * WARMUP_START if warmup else base_lr, decay_steps=total - warmup,
            alpha=COSINE_ALPHA, warmup_target=base_lr if warmup else None, warmup_steps=warmup)

    def lr_for(self, epoch, batch=0):
        scheduled = float(keras.ops.convert_to_numpy(
            self.cosine(epoch * self.steps_per_epoch + batch)))
        return max(scheduled * self.scale, min(self.min_lr, scheduled))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        if batch:   # batch 0 was set by on_epoch_begin
            self.model.optimizer.learning_rate.assign(self.lr_for(self._epoch, batch))


def learning_rate_schedule(kind, base_lr, epochs=None, steps_per_epoch=None, warmup_epochs=0.0,
                           **plateau):
    """The schedule callback of ``kind`` ('step': upstream's, 'cosine': warm-up and cosine
    decay), both with the plateau factor (``plateau``: ScheduleWithPlateau's keywords)."""
    if kind == "step":
        return ScheduleWithPlateau(base_lr, **plateau)
    if kind == "cosine":
        return CosineScheduleWithPlateau(base_lr, epochs, steps_per_epoch, warmup_epochs,
                                         **plateau)
    raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {kind!r}")


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
def bn_relu_dropout(x, dropout):
    """BatchNorm -> ReLU -> Dropout, after every ConvMixer convolution."""
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    return layers.Dropout(dropout)(x)


def conv_stem(x, filters, patch_size, dropout):
    """Patch embedding: a strided convolution, one patch of ``patch_size`` samples per step."""
    x = layers.Conv1D(filters, patch_size, strides=patch_size, padding="valid")(x)
    return bn_relu_dropout(x, dropout)


def conv_mixer_block(x, filters, kernel_size, dropout):
    """Depthwise (time) mixing with a residual, then pointwise (channel) mixing."""
    residual = x
    x = layers.DepthwiseConv1D(kernel_size, padding="same")(x)
    x = layers.Add()([bn_relu_dropout(x, dropout), residual])
    x = layers.Conv1D(filters, 1)(x)
    return bn_relu_dropout(x, dropout)


def conv_mixer_head(x, filters=512, depth=10, kernel_size=13, patch_size=10, dropout=0.1):
    """ConvMixer: the patch stem, then ``depth`` mixer blocks. Returns (B, T/patch, filters)."""
    x = conv_stem(x, filters, patch_size, dropout)
    for _ in range(depth):
        x = conv_mixer_block(x, filters, kernel_size, dropout)
    return x


# The variance head's log-variances (normalised-target units: degrees for the
# lat/lon offsets, depth / (max_d - min_d) for depth) are clipped to this range.
# exp(-12) is a std of 0.0025 (0.3 km in lat or depth), below any location
# precision; exp(6) a std of 20, far above the whole target range. Outside it
# the likelihood divides by ~0 or saturates, and a single trace can make the
# loss infinite.
LOG_VARIANCE_RANGE = (-12.0, 6.0)
BETA_NLL = 0.5   # Seitzer et al. (2022): 0 is the plain Gaussian NLL, 1 weights like MSE


@keras.saving.register_keras_serializable(package="utrans")
class VarianceHiddenDense(layers.Dense):
    """The hidden layer of a nonlinear variance head (``variance_head_units``).

    ``detach_inputs``: no gradient flows from its outputs into the features it
    reads (the layer's own weights still learn), so the variance head cannot pull
    the shared features away from the mean. The forward pass is the same.
    """

    def __init__(self, units, detach_inputs=False, **kwargs):
        super().__init__(units, **kwargs)
        self.detach_inputs = bool(detach_inputs)

    def call(self, inputs, training=None):
        if self.detach_inputs:
            inputs = keras.ops.stop_gradient(inputs)
        return super().call(inputs)

    def get_config(self):
        return {**super().get_config(), "detach_inputs": self.detach_inputs}


@keras.saving.register_keras_serializable(package="utrans")
class LogVarianceDense(VarianceHiddenDense):
    """The log-variance output: :class:`VarianceHiddenDense` (``detach_inputs`` the same)
    with its outputs clipped to :data:`LOG_VARIANCE_RANGE`."""

    def call(self, inputs, training=None):
        return keras.ops.clip(super().call(inputs), *LOG_VARIANCE_RANGE)


def label_log_variance(labels):
    """Per-target log-variance of training labels (N, 3), clipped to
    :data:`LOG_VARIANCE_RANGE`: the error bar of the constant predictor."""
    var = np.var(np.asarray(labels, dtype=np.float64), axis=0)
    return np.clip(np.log(np.maximum(var, 1e-30)), *LOG_VARIANCE_RANGE).astype(np.float32)


def set_log_variance_prior(model, labels):
    """Start the variance head at the training labels' variance (the constant
    predictor's error bar): the ``log_variance`` bias set to
    :func:`label_log_variance`, its kernel left as initialised. Returns the bias.

    With the bias at 0 the head starts at a std of 1 (1 degree, the whole depth
    range), 1-3 log units above the errors; Adam moves the bias about one
    learning rate per step, so in a short run the head lowers its variances
    through the kernel instead, fastest along the largest features (those of
    the farthest events): measured on the demo, std against distance Spearman
    -0.76 while the errors grow with distance (+0.37).
    """
    layer = model.get_layer("log_variance")
    kernel, _ = layer.get_weights()
    bias = label_log_variance(labels)
    layer.set_weights([kernel, bias])
    return bias


def split_mean_log_variance(y_pred):
    """(mean, log_variance) of an aleatoric model's (..., 6) output (``keras.ops``)."""
    return y_pred[..., :3], y_pred[..., 3:]


@keras.saving.register_keras_serializable(package="utrans")
class BetaNLL(keras.losses.Loss):
    """beta-NLL (Seitzer et al. 2022) of a [mean(3), log_variance(3)] prediction.

    Per element ``0.5 * (log_var + (y - mu)^2 / var) * stop_gradient(var)^beta``,
    averaged over the 3 targets (and, by Keras, over the batch). ``beta = 0``
    is the Gaussian NLL, which lets the network explain hard traces by a large
    variance and stop fitting their mean; the ``var^beta`` weight (no gradient)
    gives them back part of the mean's gradient. ``beta = 0.5`` is the paper's
    recommended compromise.
    """

    def __init__(self, beta=BETA_NLL, name="beta_nll", **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = float(beta)

    def call(self, y_true, y_pred):
        y_pred = keras.ops.cast(y_pred, "float32")
        y_true = keras.ops.cast(y_true, "float32")
        mean, log_var = split_mean_log_variance(y_pred)
        var = keras.ops.exp(log_var)
        nll = 0.5 * (log_var + keras.ops.square(y_true - mean) / var)
        if self.beta:
            nll = nll * keras.ops.power(keras.ops.stop_gradient(var), self.beta)
        return keras.ops.mean(nll, axis=-1)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


def mean_absolute_error_of_mean(y_true, y_pred):
    """MAE of the mean part of a [mean, log_variance] prediction (history column ``mae``)."""
    mean, _ = split_mean_log_variance(keras.ops.cast(y_pred, "float32"))
    return keras.ops.mean(keras.ops.abs(keras.ops.cast(y_true, "float32") - mean), axis=-1)


def freeze_foundation(model):
    """Keep the U-Trans foundation's weights fixed: every layer from the input to the
    latent (``utrans_latent``) made non-trainable, the decoder stream and the head
    left trainable. The foundation has no BatchNormalization layer, so this changes
    no statistics. Call before ``compile``; returns the layers frozen."""
    order = model.layers
    end = order.index(model.get_layer(ub.LATENT_NAME)) + 1
    for layer in order[:end]:
        layer.trainable = False
    return order[:end]


def location_loss_and_metrics(aleatoric=False, beta=BETA_NLL):
    """compile()'s loss and metrics: MSE and MAE, or beta-NLL (``beta``) and the mean's
    MAE (``mae``)."""
    if not aleatoric:
        return "mse", ["mae"]
    return BetaNLL(beta), [keras.metrics.MeanMetricWrapper(mean_absolute_error_of_mean, name="mae")]


def build_location_model(input_shape=(6000, 3), foundation_weights=None,
                         convmixer_filters=PUBLISHED_HEAD["convmixer_filters"],
                         convmixer_depth=PUBLISHED_HEAD["convmixer_depth"],
                         convmixer_kernel=PUBLISHED_HEAD["convmixer_kernel"],
                         convmixer_patch=PUBLISHED_HEAD["convmixer_patch"],
                         dropout=0.1, d1=5, foundation=None, aleatoric=False,
                         detach_variance=False, variance_head_units=0):
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
    aleatoric : bool
        Add the variance head: a second Dense(3) on the pooled features,
        ``log_variance`` (float32, clipped to :data:`LOG_VARIANCE_RANGE`); the
        output is then ``mean_and_log_variance``, [mean(3), log_variance(3)],
        trained with :class:`BetaNLL`. Every other layer keeps its name and
        order; False builds exactly the published model.
    detach_variance : bool
        With ``aleatoric``: the variance head reads the pooled features without
        training them (:class:`LogVarianceDense` ``detach_inputs``); the same
        function, another training.
    variance_head_units : int
        With ``aleatoric``: 0 (default) makes the variance head one Dense(3);
        N > 0 puts a hidden ``Dense(N, gelu)`` (``log_variance_hidden``,
        :class:`VarianceHiddenDense`, detached with ``detach_variance``) before it.

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
    if aleatoric:
        features, detach_last = x, detach_variance
        if int(variance_head_units) > 0:
            features = VarianceHiddenDense(int(variance_head_units), activation="gelu",
                                           detach_inputs=detach_variance,
                                           name="log_variance_hidden", dtype="float32")(x)
            detach_last = False   # its input is the head's own hidden layer
        log_var = LogVarianceDense(3, detach_inputs=detach_last, name="log_variance",
                                   dtype="float32")(features)
        outputs = layers.Concatenate(name="mean_and_log_variance",
                                     dtype="float32")([outputs, log_var])
    return keras.Model(foundation.input, outputs, name="utrans_convmixer_location")
