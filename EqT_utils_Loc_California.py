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

import json
import math
import os
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
def normalize(data, mode="std"):
    """Per-trace, per-channel normalisation along the time axis (axis -2).

    ``std``: subtract the mean, divide by the standard deviation; ``max``:
    subtract the mean, divide by the maximum (upstream EQTransformer). A
    channel whose divisor is 0 (all zeros or constant) is divided by 1, so it
    becomes zeros, never NaN. Works on (T, C) and (B, T, C); returns float32.
    Statistics are taken in float64 (this reproduces the upstream inputs
    exactly; float32 sums differ by up to ~1e-4 on spiky traces).
    """
    data = np.asarray(data, dtype=np.float64)
    data = data - data.mean(axis=-2, keepdims=True)
    if mode == "std":
        scale = data.std(axis=-2, keepdims=True)
    elif mode == "max":
        scale = data.max(axis=-2, keepdims=True)
    else:
        raise ValueError(f"normalization mode must be 'std' or 'max', got {mode!r}")
    scale[scale == 0] = 1.0
    return (data / scale).astype(np.float32)


def bandpass_taper(data, fs=100.0, freqmin=1.0, freqmax=45.0, corners=2,
                   taper_fraction=0.01, max_taper_s=2.0):
    """Band-pass and taper as the DataCollected builder did (per channel, axis 0).

    Zero-phase Butterworth band-pass (``corners`` poles, scipy sosfiltfilt),
    then a cosine (Tukey) taper on each end over ``taper_fraction`` of the
    trace, at most ``max_taper_s`` seconds.
    """
    from scipy.signal import butter, sosfiltfilt
    from scipy.signal.windows import tukey

    sos = butter(corners, [freqmin, freqmax], btype="bandpass", fs=fs, output="sos")
    filtered = sosfiltfilt(sos, np.asarray(data, dtype=np.float64), axis=0)
    n = filtered.shape[0]
    side = min(taper_fraction * n, max_taper_s * fs)   # samples per end
    window = tukey(n, alpha=min(2.0 * side / n, 1.0))
    return (filtered * window[:, None]).astype(np.float32)


def shift_event(data, coda_end, rate, rng):
    """With probability ``rate``, circularly shift all channels by n in [1, T - coda_end)."""
    n_samples = data.shape[0]
    if not np.isfinite(coda_end) or rng.uniform() >= rate:
        return data
    nrotate = int(rng.uniform(1, max(n_samples - int(coda_end), 2)))
    return np.roll(data, nrotate, axis=0)


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
    return data + rng.standard_normal(data.shape).astype(data.dtype) * level.astype(data.dtype)


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
        data = shift_event(data, meta["coda_end"], shift_event_r, rng)
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
    """One open HDF5 file per process: reopened after a fork, never per batch."""

    def __init__(self, file_name):
        self.file_name = str(file_name)
        self._fh = None
        self._pid = None

    @property
    def file(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = h5py.File(self.file_name, "r")
            self._pid = os.getpid()
        return self._fh

    def group(self, trace_id):
        try:
            return self.file[trace_id]
        except KeyError:
            raise TraceError(f"trace '{trace_id}' is not in {self.file_name}") from None

    def waveform(self, trace_id, dim):
        group = self.group(trace_id)
        dset = group["data"] if isinstance(group, h5py.Group) else group
        if dset.shape != tuple(dim):
            raise TraceError(f"trace '{trace_id}' in {self.file_name} has shape "
                             f"{dset.shape}, expected {tuple(dim)}")
        return np.asarray(dset[()], dtype=np.float32)

    def attrs(self, trace_id):
        return self.group(trace_id).attrs

    def __getstate__(self):
        return {"file_name": self.file_name, "_fh": None, "_pid": None}


def trace_meta(attrs):
    """Augmentation metadata of a trace (NaN where unknown)."""
    return {"p_arrival": attr_float(attrs, "p_arrival_sample"),
            "s_arrival": attr_float(attrs, "s_arrival_sample"),
            "coda_end": attr_float(attrs, "coda_end_sample"),
            "snr": attr_snr(attrs)}


# --------------------------------------------------------------------------
# Data generators
# --------------------------------------------------------------------------
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
                 use_multiprocessing=False, max_queue_size=10):
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
        self.rng = np.random.default_rng(seed)
        self.reader = _H5Reader(file_name)
        self.indexes = np.arange(len(self.list_IDs))
        self.on_epoch_end()

    def __len__(self):
        n = len(self.list_IDs) // self.batch_size
        return 2 * n if self.augmentation else n

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.indexes)

    def batch_ids(self, index):
        """Trace ids of batch ``index`` (duplicated halves with augmentation)."""
        if self.augmentation:
            half = self.batch_size // 2
            ids = self.list_IDs[self.indexes[index * half:(index + 1) * half]]
            return np.concatenate([ids, ids])
        return self.list_IDs[self.indexes[index * self.batch_size:(index + 1) * self.batch_size]]

    def __getitem__(self, index):
        ids = self.batch_ids(index)
        x = np.empty((len(ids),) + self.dim, dtype=np.float32)
        y = np.empty((len(ids), 3), dtype=np.float32)
        half = len(ids) // 2
        for i, trace_id in enumerate(ids):
            attrs = self.reader.attrs(trace_id)
            y[i] = location_label(attrs, trace_id, self.max_d, self.min_d)
            data = self.reader.waveform(trace_id, self.dim)
            if self.augmentation:
                meta = trace_meta(attrs)
                if i < half:
                    if self.rates["shift_event_r"]:
                        data = shift_event(data, meta["coda_end"],
                                           self.rates["shift_event_r"] / 2, self.rng)
                else:
                    data = augment_event(data, meta, self.rng, **self.rates)
            x[i] = normalize(data, self.norm_mode)
        return x, y


class DataGeneratorPrediction(keras.utils.PyDataset):
    """Normalised waveforms of every id in order, last batch possibly short; no labels."""

    def __init__(self, list_IDs, file_name, dim=6000, batch_size=40, n_channels=3,
                 norm_mode="std", workers=1, use_multiprocessing=False, max_queue_size=10):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.list_IDs = np.asarray(list_IDs).astype(str)
        self.dim = (int(dim), int(n_channels)) if np.isscalar(dim) else tuple(int(d) for d in dim)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.norm_mode = norm_mode
        self.reader = _H5Reader(file_name)

    def __len__(self):
        return math.ceil(len(self.list_IDs) / self.batch_size)

    def __getitem__(self, index):
        ids = self.list_IDs[index * self.batch_size:(index + 1) * self.batch_size]
        x = np.stack([self.reader.waveform(t, self.dim) for t in ids])
        return (normalize(x, self.norm_mode),)


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
                 patience=8, min_lr=0.5e-6, verbose=1):
        super().__init__()
        self.base_lr, self.monitor, self.factor = base_lr, monitor, factor
        self.patience, self.min_lr, self.verbose = max(int(patience), 1), min_lr, verbose
        self.scale, self.best, self.wait = 1.0, math.inf, 0

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
        if current < self.best:
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
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(config, fh, indent=2, default=str)
    os.replace(tmp, path)


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
                "snr_db", "source_distance_km")
_ATTR_OF = {"station_lon": "station_long", "event_lon": "event_long", "depth_km": "depth"}


def read_metadata(file_name, ids):
    """Per-trace metadata (station, truth, magnitude, picks, mean SNR) as a DataFrame.

    Missing or 'None' values become NaN (noise or unlabeled traces keep their
    station coordinates and get empty truth). Raises FileNotFoundError /
    TraceError naming the file and the first missing ids.
    """
    import pandas as pd

    file_name = str(file_name)
    if not os.path.isfile(file_name):
        raise FileNotFoundError(f"HDF5 file not found: {file_name}")
    rows = []
    with h5py.File(file_name, "r") as fh:
        missing = [t for t in ids if t not in fh]
        if missing:
            raise TraceError(f"{len(missing)} of {len(ids)} ids are not in {file_name}, "
                             f"first: {', '.join(missing[:5])}")
        for trace_id in ids:
            attrs = fh[trace_id].attrs
            row = {column: attr_float(attrs, _ATTR_OF.get(column, column))
                   for column in META_COLUMNS}
            snr = attr_snr(attrs)
            row["snr_db"] = float(np.nanmean(snr)) if np.isfinite(snr).any() else math.nan
            rows.append({"trace_name": trace_id, **row})
    return pd.DataFrame(rows, columns=("trace_name",) + META_COLUMNS)


def check_split(file_name, ids, split_name, max_d=MAX_D, min_d=MIN_D, require_labels=True):
    """Check a split before training or testing; return its metadata.

    Every id must be in the file with station coordinates; with
    ``require_labels`` every trace needs finite event coordinates and depth.
    The error names the split, the file and the first offending traces.
    """
    meta = read_metadata(file_name, ids)
    needed = ["station_lat", "station_lon"]
    if require_labels:
        needed += ["event_lat", "event_lon", "depth_km"]
    bad = meta.loc[~np.isfinite(meta[needed].to_numpy(float)).all(axis=1), "trace_name"]
    if len(bad):
        what = "event location/depth" if require_labels else "station coordinates"
        raise TraceError(
            f"{split_name}: {len(bad)} trace(s) in {file_name} lack {what} "
            f"(noise or unlabeled traces cannot be used here), first: {', '.join(bad[:5])}")
    return meta


# --------------------------------------------------------------------------
# Devices (backend-specific code lives only here)
# --------------------------------------------------------------------------
def distribution_scope(multi_gpu=False, number_of_gpus=1):
    """Context for building/compiling a model that trains data-parallel.

    TensorFlow backend: ``tf.distribute.MirroredStrategy`` over the first
    ``number_of_gpus`` GPUs. JAX backend: ``keras.distribution.DataParallel``.
    Without ``multi_gpu`` (or with one device) a no-op.
    """
    import contextlib

    if not multi_gpu:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = [d.name.replace("physical_device:", "") for d in tf.config.list_physical_devices("GPU")]
        devices = gpus[:number_of_gpus] or None
        return tf.distribute.MirroredStrategy(devices=devices).scope()
    if backend == "jax":
        devices = keras.distribution.list_devices("gpu")[:number_of_gpus] or None
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext()
    raise ValueError(f"multi_gpu is supported on the tensorflow and jax backends, not {backend}")


def configure_gpus(gpu_limit=None):
    """TensorFlow: let GPU memory grow, capped at ``gpu_limit`` x total when given.

    (JAX reads its cap from XLA_PYTHON_CLIENT_MEM_FRACTION, which the command
    line sets before import.) No GPU: nothing to do.
    """
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        if gpu_limit:
            total_mb = tf.config.experimental.get_device_details(gpu).get("memory_limit_mb")
            if total_mb is None:
                total_mb = _nvidia_total_mb()
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(gpu_limit * total_mb))])
        else:
            tf.config.experimental.set_memory_growth(gpu, True)


def _nvidia_total_mb():
    import subprocess

    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
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
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write("\n".join(text) + "\n")
    os.replace(tmp, path)


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mc_dropout(model, enabled=True):
    """Context for Monte-Carlo sampling with ``model(x, training=True)``.

    Freezes every BatchNormalization layer for the duration: a frozen BN runs
    in inference mode even when called with training=True, and its moving
    statistics are not updated, while Dropout/StochasticDepth stay active.
    Restores the trainable flags on exit.
    """
    import contextlib

    @contextlib.contextmanager
    def _ctx():
        bns = [l for l in model._flatten_layers() if isinstance(l, layers.BatchNormalization)]
        flags = [l.trainable for l in bns]
        try:
            if enabled:
                for layer in bns:
                    layer.trainable = False
            yield model
        finally:
            for layer, flag in zip(bns, flags):
                layer.trainable = flag

    return _ctx()
