"""SeisBench-format datasets -> the DataCollected layout, without the seisbench package.

SeisBench (Woollam et al., 2022) stores a dataset as a folder with
``metadata.csv`` + ``waveforms.hdf5``, or chunks ``metadata<chunk>.csv`` +
``waveforms<chunk>.hdf5`` (listed in a ``chunks`` file, else found by name).
This module reads that format with h5py and pandas only (seisbench pulls in
PyTorch), as SeisBench's ``data/base.py`` implements it (the format carries no
version marker; checked against seisbench's source at commit 2a6b5bc2 and its
``data_format`` documentation):

* ``/data_format``: datasets (not attributes) ``dimension_order`` (default
  "CW"), ``component_order`` (e.g. "ZNE"), ``sampling_rate``, and the
  informative ``measurement``, ``unit``, ``instrument_response``; strings may
  be bytes;
* ``/data/<bucket>``: traces, addressed by the metadata column ``trace_name``
  ``"<bucket>$<index>,:<channels>,:<samples>"``; a plain name is a dataset
  ``/data/<name>`` holding one trace;
* per-trace metadata columns win over ``data_format``: ``trace_component_order``
  over ``component_order``, ``trace_sampling_rate_hz`` (else ``1 /
  trace_dt_s``) over ``sampling_rate`` (as SeisBench does).

Each earthquake trace is turned into what ``build_california.py`` writes from
STEAD, by the model window's spec (:data:`utrans_loc.waveforms.WINDOW`, the
locator's too): components E, N, Z; 100 Hz (its resampler,
:func:`utrans_loc.waveforms.resample_to_100hz`); 6000 samples with the P
arrival inside (longer traces are cut, shorter ones zero-padded at the end);
band-passed and tapered as the DataCollected files are (its band-pass,
:func:`utrans_loc.traces.bandpass_taper`); the SeisBench metadata under the
upstream attribute names (:mod:`utrans_loc.vocabulary`). :class:`SeisBenchSource`
hands this to the shared engine (:func:`build_engine.build_dataset`: shards,
resume, splits by event, reports, commit), as the STEAD builder does.

Must not import keras.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
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
from utrans_loc import waveforms as W  # noqa: E402
from utrans_loc.waveforms import P_LEAD_SAMPLES  # noqa: E402,F401  (where to_window puts P)

__all__ = ["Chunk", "find_chunks", "read_data_format", "parse_trace_name", "read_trace",
           "to_window", "select_seisbench", "SeisBenchSource", "build_from_seisbench",
           "DATASET_SPLITS"]

# The dataset's own split values -> the three split files.
DATASET_SPLITS = {"train": "train", "dev": "valid", "test": "test"}


# Sample positions: moved onto the 100 Hz window before they are kept.
_SAMPLE_FIELDS = ("p_arrival_sample", "s_arrival_sample", "coda_end_sample")
_SAMPLE_COLUMNS = vocabulary.mapping("seisbench", "stead", fields=_SAMPLE_FIELDS)
# The other fields T.stead_to_upstream keeps (the category is derived, see _attrs):
# SeisBench column -> STEAD name, then mapped exactly as a STEAD file's attributes are.
_TO_STEAD = {sb: st for sb, st in vocabulary.mapping("seisbench", "stead").items()
             if st in set(T.STEAD_TO_UPSTREAM) | set(T.STEAD_EXTRAS)
             and st not in set(_SAMPLE_COLUMNS.values()) | {"trace_category"}}
_LOCATION = vocabulary.names(*engine.LOCATION_FIELDS, "depth_km", to="seisbench")   # must be known
_REQUIRED = ("trace_name",) + _LOCATION
_TEXT = ("trace_name", "trace_name_original", "source_type", "split",
         "trace_component_order") + vocabulary.names(
    "source_id", "source_origin_time", "network_code", "receiver_code", "data_category",
    "magnitude_type", "trace_start_time", "snr_db", to="seisbench")
_USED = tuple(dict.fromkeys(_REQUIRED + _TEXT + tuple(_TO_STEAD) + tuple(_SAMPLE_COLUMNS) + (
    "trace_sampling_rate_hz", "trace_dt_s")))
_EARTHQUAKE = re.compile(r"earthquake", re.IGNORECASE)


# --------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """One ``metadata<name>.csv`` + ``waveforms<name>.hdf5`` pair ('' when not chunked)."""
    name: str
    metadata: Path
    waveforms: Path


def find_chunks(dataset_dir):
    """The chunks of a SeisBench dataset folder, as SeisBench finds them.

    A ``chunks`` file (one name per line) wins; else ``waveforms.hdf5`` means
    one unnamed chunk; else every name with both ``metadata<name>.csv`` and
    ``waveforms<name>.hdf5``. Raises FileNotFoundError (naming the folder or
    file) when nothing or only half a pair is there.
    """
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"SeisBench dataset folder not found: {folder}")
    listed = folder / "chunks"
    names = [x.strip() for x in listed.read_text().splitlines() if x.strip()] \
        if listed.is_file() else []
    if not names:
        if (folder / "waveforms.hdf5").is_file():
            names = [""]
        else:
            meta = {p.name[len("metadata"):-len(".csv")] for p in folder.glob("metadata*.csv")}
            wave = {p.name[len("waveforms"):-len(".hdf5")] for p in folder.glob("waveforms*.hdf5")}
            names = sorted(meta & wave)
            if not names:
                raise FileNotFoundError(
                    f"{folder}: not a SeisBench dataset (no metadata.csv + waveforms.hdf5 and "
                    "no metadata<chunk>.csv + waveforms<chunk>.hdf5 pairs)")
    chunks = [Chunk(n, folder / f"metadata{n}.csv", folder / f"waveforms{n}.hdf5") for n in names]
    for chunk in chunks:
        for path in (chunk.metadata, chunk.waveforms):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (chunk {chunk.name!r} of {folder})")
    return chunks


def _decoded(value):
    value = value[()] if isinstance(value, h5py.Dataset) else value
    if isinstance(value, bytes):
        return value.decode("utf8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return "".join(v.decode() if isinstance(v, bytes) else str(v) for v in value.ravel())
    return value.item() if isinstance(value, np.generic) else value


def read_data_format(fh, path):
    """``/data_format`` of an open waveforms file as a dict of plain values.

    ``dimension_order`` defaults to "CW" (as SeisBench); it must name the
    channel (C) and sample (W) axes of one trace. Raises ValueError naming
    ``path`` otherwise.
    """
    group = fh.get("data_format")
    fmt = {k: _decoded(group[k]) for k in group.keys()} if isinstance(group, h5py.Group) else {}
    fmt.setdefault("dimension_order", "CW")
    order = str(fmt["dimension_order"]).upper()
    if sorted(order) != ["C", "W"]:
        raise ValueError(f"{path}: data_format/dimension_order is {order!r}; supported are 'CW' "
                         "and 'WC' (one trace = channels x samples)")
    fmt["dimension_order"] = order
    if "data" not in fh or not isinstance(fh["data"], h5py.Group):
        raise ValueError(f"{path}: no /data group of traces: not a SeisBench waveforms file")
    return fmt


_SLICE = re.compile(r"^(-?\d*)(?::(-?\d*))?(?::(-?\d*))?$")


def parse_trace_name(trace_name):
    """``(bucket, index)`` of a SeisBench ``trace_name``.

    ``"bucket3$17,:3,:6000"`` -> ``("bucket3", (17, slice(None, 3), slice(None, 6000)))``;
    a plain name -> ``(name, ())`` (the whole dataset). Only integers and slices
    are accepted (the name is data, never evaluated); a bad one raises ValueError.
    """
    name = str(trace_name)
    if "$" not in name:
        return name, ()
    bucket, _, location = name.partition("$")
    if "$" in location or not bucket:
        raise ValueError(f"trace_name {name!r}: expected "
                         "'<bucket>$<index>,:<channels>,:<samples>'")
    index = []
    for part in location.replace(" ", "").split(","):
        match = _SLICE.match(part)
        if not match or part == "":
            raise ValueError(f"trace_name {name!r}: {part!r} is not an index or a slice")
        if ":" not in part:
            index.append(int(part))
        else:
            index.append(slice(*(int(v) if v not in (None, "") else None for v in match.groups())))
    return bucket, tuple(index)


def read_trace(fh, trace_name, dimension_order="CW"):
    """One trace as (channels, samples) from an open waveforms file (KeyError when absent)."""
    bucket, index = parse_trace_name(trace_name)
    data = fh["data"].get(bucket)
    if not isinstance(data, h5py.Dataset):
        raise KeyError(f"/data/{bucket}")
    wave = np.asarray(data[index] if index else data[()])
    if wave.ndim != 2:
        raise ValueError(f"trace {trace_name!r}: {wave.ndim}-D after indexing, expected channels "
                         "x samples")
    return wave if dimension_order == "CW" else wave.T


def to_window(wave, components, sampling_rate, p_sample=math.nan):
    """One trace -> the (6000, 3) E N Z window at 100 Hz, before filtering.

    The window is :data:`utrans_loc.waveforms.WINDOW`'s (read when called):
    its channel order, rate, length, resampler and P position.

    Parameters
    ----------
    wave : array (C, W)
        The trace in the file's channel order.
    components : str
        Its component letters (``"ZNE"``, ``"ENZ"``, ...); E, N and Z must be there.
    sampling_rate : float
        Hz. Other rates than 100 Hz are resampled onto the 100 Hz grid from
        the first sample (the window's resampler,
        :func:`utrans_loc.waveforms.resample_to_100hz`).
    p_sample : float
        P arrival (sample of the original trace), NaN when unknown.

    Returns
    -------
    window : numpy.ndarray
        (6000, 3) float32; zero-padded at the end when the trace is shorter.
    start : int
        First 100 Hz sample of the trace in the window: 0, unless a trace
        longer than 60 s had to be cut to keep P inside (then P sits the
        window's ``p_position_s`` into it, or later where the trace ends
        sooner).
    scale : float
        100 / sampling_rate (sample positions of the trace times this, minus
        ``start``, are positions in the window).
    n : int
        Samples of data in the window (the rest, up to 6000, is padding).

    Raises
    ------
    engine.SkipTrace
        Missing component ('components'), P outside the data ('p_outside').
    """
    spec = W.WINDOW
    letters = str(components).upper()
    if len(letters) != wave.shape[0]:
        raise engine.SkipTrace("components", f"component order {components!r} names "
                                             f"{len(letters)} channels, the trace has "
                                             f"{wave.shape[0]}")
    missing = [c for c in spec.channels if c not in letters]
    if missing:
        raise engine.SkipTrace("components", f"no {'/'.join(missing)} component (order "
                                             f"{components!r}); horizontals are not rotated "
                                             "here")
    enz = wave[[letters.index(c) for c in spec.channels]]
    scale = spec.sampling_rate / float(sampling_rate)
    if abs(scale - 1.0) > 1e-9:
        enz = np.stack([spec.resample(c, sampling_rate) for c in enz])
    n = enz.shape[1]
    p = p_sample * scale if math.isfinite(p_sample) else math.nan
    if math.isfinite(p) and not 0 <= p < n:
        raise engine.SkipTrace("p_outside", f"P arrival at sample {p_sample:g} is outside "
                                            f"the {n}-sample trace")
    start, npts, lead = 0, spec.npts, spec.p_position_samples
    if n > npts and math.isfinite(p) and p >= npts - lead:
        start = int(min(round(p) - lead, n - npts))
    window = np.zeros((npts, len(spec.channels)), np.float32)
    part = enz[:, start:start + npts].T
    window[:len(part)] = part
    return window, start, scale, len(part)


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------
def _read_metadata(path):
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{path}: not a SeisBench metadata file for location (missing columns: "
                         f"{', '.join(missing)})")
    usecols = [c for c in _USED if c in header]
    meta = pd.read_csv(path, usecols=usecols, dtype={c: str for c in _TEXT if c in usecols},
                       keep_default_na=False, na_values={c: [""] for c in usecols
                                                         if c not in _TEXT})
    for column in usecols:
        if column not in _TEXT:
            meta[column] = pd.to_numeric(meta[column], errors="coerce")
    return meta


def _categories(meta):
    """Earthquake mask from ``trace_category`` (or ``source_type``); all when neither."""
    for column in ("trace_category", "source_type"):
        if column in meta:
            return meta[column].str.contains(_EARTHQUAKE, na=False).to_numpy(), column
    return np.ones(len(meta), bool), None


def output_ids(meta, chunk):
    """DataCollected trace ids: ``trace_name_original`` where the writer kept it, else
    ``trace_name`` (prefixed ``<chunk>|`` in chunked datasets); '/' becomes '_'."""
    names = chunk + "|" + meta["trace_name"] if chunk else meta["trace_name"]
    if "trace_name_original" in meta:   # unique across chunks: the writer's input names
        original = meta["trace_name_original"].fillna("")
        names = original.where(original != "", names)
    return names.str.replace("/", "_", regex=False)


def select_seisbench(chunks, region, use_dataset_split=False):
    """The earthquake traces to convert; (selected, rejected, counts) as the STEAD builder's.

    A trace is selected when its category says earthquake (``trace_category``
    or ``source_type`` contains 'earthquake'; every trace when the dataset has
    neither column), station and event coordinates and depth are known, both
    lie in ``region``, and (``use_dataset_split``) its ``split`` is train, dev
    or test. ``selected`` has ``trace_name`` (the output id), ``input`` (chunk
    index), ``row`` (row of that chunk's metadata) and ``split``. The steps
    after reading are :func:`build_engine.select_rows`.
    """
    counts = {"rows_in": 0, "rows_in_per_file": [], "categories": {}, "category_column": None,
              "earthquakes": 0, "missing_coordinates": 0, "outside_region": 0,
              "no_dataset_split": 0, "duplicates": 0, "selected": 0}
    filters = [("no_dataset_split", lambda rows: rows["split"].notna().to_numpy())] \
        if use_dataset_split else []
    selected, rejected, counts = engine.select_rows(
        _earthquake_rows(chunks, counts), region, _LOCATION, counts, filters,
        missing_reason="missing station or event coordinates or depth in the metadata",
        duplicate_reason="trace id already selected from an earlier row")
    return selected.reindex(columns=list(SeisBenchSource.selection_columns)), rejected, counts


def _earthquake_rows(chunks, counts):
    """(chunk index, earthquake rows: output id, row, split, coordinates) of each chunk;
    counts rows and categories."""
    for index, chunk in enumerate(chunks):
        meta = _read_metadata(chunk.metadata)
        counts["rows_in"] += len(meta)
        counts["rows_in_per_file"].append(len(meta))
        quake, column = _categories(meta)
        counts["category_column"] = column
        if column:
            for value, n in meta[column].fillna("(empty)").value_counts().items():
                counts["categories"][value] = counts["categories"].get(value, 0) + int(n)
        rows = pd.DataFrame({"trace_name": output_ids(meta, chunk.name),
                             "row": np.arange(len(meta)),
                             "split": meta["split"].map(DATASET_SPLITS) if "split" in meta
                             else np.nan})
        rows = pd.concat([rows, meta[list(_LOCATION)]], axis=1)[quake]
        counts["earthquakes"] += len(rows)
        yield index, rows


# --------------------------------------------------------------------------
# The source the shared build engine runs on
# --------------------------------------------------------------------------
class SeisBenchSource:
    """A SeisBench dataset as a :class:`build_engine.Source`."""

    title = "build_from_seisbench"
    selection_columns = ("trace_name", "input", "row", "split")

    def __init__(self, dataset_dir, use_dataset_split=False):
        self.dataset_dir = Path(dataset_dir)
        self.chunks = find_chunks(dataset_dir)
        self.use_dataset_split = bool(use_dataset_split)
        self.formats, self._meta, self._files = [], {}, {}
        for chunk in self.chunks:
            try:
                with h5py.File(chunk.waveforms, "r") as fh:
                    self.formats.append(read_data_format(fh, chunk.waveforms))
            except OSError as err:
                raise ValueError(T.describe_open_error(chunk.waveforms, err)) from None
            header = pd.read_csv(chunk.metadata, nrows=0).columns
            if "trace_component_order" not in header and \
                    "component_order" not in self.formats[-1]:
                raise ValueError(f"{chunk.waveforms}: no data_format/component_order and "
                                 f"{chunk.metadata.name} has no trace_component_order column: "
                                 "the channel order is unknown")
            if not {"trace_sampling_rate_hz", "trace_dt_s"} & set(header) and \
                    "sampling_rate" not in self.formats[-1]:
                raise ValueError(f"{chunk.waveforms}: no data_format/sampling_rate and "
                                 f"{chunk.metadata.name} has no trace_sampling_rate_hz column: "
                                 "the sampling rate is unknown")
            if self.use_dataset_split and "split" not in header:
                raise ValueError(f"{chunk.metadata}: no 'split' column, so --use_dataset_split "
                                 "cannot be used (drop it to split by event)")

    @property
    def inputs(self):
        """Every input file (for the manifest and the output checks)."""
        return [str(p) for c in self.chunks for p in (c.waveforms, c.metadata)]

    @property
    def selection_inputs(self):
        return [str(c.metadata) for c in self.chunks]

    def manifest(self):
        return {"inputs": [{"waveforms": engine.file_id(c.waveforms),
                            "metadata": engine.file_id(c.metadata)} for c in self.chunks],
                "use_dataset_split": self.use_dataset_split}

    def input_label(self, index):
        return str(self.chunks[int(index)].waveforms)

    def nothing_selected(self, s, region):
        return (f"no trace selected from {self.dataset_dir} ({s['rows_in']} rows, "
                f"{s['earthquakes']} earthquakes, {s['outside_region']} outside the "
                f"{region.name} region): check --region_mode (none keeps every place)")

    def describe(self):
        return [f"dataset: {self.dataset_dir} ({len(self.chunks)} chunk(s): "
                f"{', '.join(repr(c.name) for c in self.chunks)})",
                f"data_format: {self.formats[0]}"]

    def select(self, region):
        return select_seisbench(self.chunks, region, self.use_dataset_split)

    def selection_report(self, s):
        categories = f"{s['category_column']}: {s['categories']}" if s["category_column"] \
            else "no category column: every trace taken as an earthquake"
        return [f"rows in: {s['rows_in']} (per chunk: {s['rows_in_per_file']}); {categories}",
                f"earthquakes: {s['earthquakes']}; removed: missing coordinates or depth "
                f"{s['missing_coordinates']}, outside the region {s['outside_region']}, no "
                f"train/dev/test split {s['no_dataset_split']}, duplicates {s['duplicates']}"]

    def open(self):
        return [h5py.File(c.waveforms, "r") for c in self.chunks]

    def metadata(self, index):
        index = int(index)
        if index not in self._meta:
            self._meta = {index: _read_metadata(self.chunks[index].metadata)}   # one at a time
        return self._meta[index]

    def process(self, readers, row, region):
        """(data, attrs) of one selected trace; raises engine.SkipTrace."""
        index = int(row["input"])
        meta = self.metadata(index).iloc[int(row["row"])]
        fmt = self.formats[index]
        name = meta["trace_name"]
        try:
            wave = read_trace(readers[index], name, fmt["dimension_order"])
        except KeyError:
            raise engine.SkipTrace("missing", f"{name}: not in {self.chunks[index].waveforms}") \
                from None
        except (ValueError, IndexError, TypeError) as err:
            raise engine.SkipTrace("shape", f"{name}: {err}") from None
        engine.check_samples(wave)
        rate = _sampling_rate(meta, fmt)
        components = meta.get("trace_component_order") or fmt.get("component_order")
        window, start, scale, n = to_window(wave, components, rate,
                                            _number(meta.get("trace_p_arrival_sample")))
        # Filtered and tapered over the data only; the padding stays zero.
        window[:n] = W.WINDOW.bandpass(window[:n])
        return window, self._attrs(meta, start, scale)

    def skipped_attrs(self, readers, row):
        meta = self.metadata(int(row["input"])).iloc[int(row["row"])]
        return self._attrs(meta, 0, 1.0)

    def _attrs(self, meta, start, scale):
        stead = {st: meta.get(sb) for sb, st in _TO_STEAD.items() if _known(meta.get(sb))}
        for sb, st in _SAMPLE_COLUMNS.items():
            value = _number(meta.get(sb)) * scale - start
            if math.isfinite(value) and 0 <= value < W.WINDOW.npts:
                stead[st] = value
        category = meta.get("trace_category") or meta.get("source_type") or "earthquake"
        stead["trace_category"] = "earthquake_local" if _EARTHQUAKE.search(str(category)) \
            else category
        if start and _known(meta.get("trace_start_time")):
            moved = pd.to_datetime(meta["trace_start_time"], errors="coerce")
            if not pd.isna(moved):
                stead["trace_start_time"] = str(moved + pd.Timedelta(seconds=start /
                                                                     W.WINDOW.sampling_rate))
        attrs = T.stead_to_upstream(stead)
        attrs["AI_Set"] = "SeisBench"
        attrs["seisbench_trace_name"] = str(meta["trace_name"])
        return attrs

    def fixed_splits(self, selected):
        """trace id -> split from the dataset's own column (None: split by event)."""
        if not self.use_dataset_split:
            return None
        return dict(zip(selected["trace_name"], selected["split"]))


def _known(value):
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and \
        str(value) not in ("", "None", "nan")


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _sampling_rate(meta, fmt):
    rate = _number(meta.get("trace_sampling_rate_hz"))
    if not math.isfinite(rate):
        dt = _number(meta.get("trace_dt_s"))
        rate = 1.0 / dt if math.isfinite(dt) and dt > 0 else _number(fmt.get("sampling_rate"))
    if not (math.isfinite(rate) and rate > 0):
        raise engine.SkipTrace("sampling_rate", "no usable sampling rate in the metadata "
                                                "or data_format")
    return rate


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------
def build_from_seisbench(dataset_dir, output_hdf5, output_dir, region_mode="state", bbox=None,
                         use_dataset_split=False, split=(0.7, 0.1, 0.2), seed=0,
                         shard_size=1000, progress=True, log=None, interrupt_after=None,
                         region=None):
    """Convert a SeisBench-format dataset into a DataCollected HDF5 and splits.

    Parameters
    ----------
    dataset_dir : str or Path
        Folder with ``metadata.csv`` + ``waveforms.hdf5`` (or chunk pairs).
    output_hdf5 : str or Path
        DataCollected HDF5 to write; must not exist.
    output_dir : str or Path
        Folder for ``train/valid/test_Events.npy``, ``california_traces.csv``,
        ``skipped_traces.csv``, ``build_report.txt`` (none may exist).
    region_mode : {'state', 'bbox', 'none'}
        Station and event inside the California polygon, inside ``bbox``
        (default: the California box), or anywhere
        (:func:`california.make_region`).
    bbox : 4 floats, optional
        lat_min lat_max lon_min lon_max (``region_mode='bbox'``).
    use_dataset_split : bool
        Take the dataset's ``split`` column (train / dev -> valid / test)
        instead of splitting by event; events that this puts in two splits
        are counted in the report (and warned about), not moved.
    split : 3 floats
        Fractions of events (``source_id``; else origin time + epicentre) for
        train, valid, test when splitting by event.
    seed, shard_size, progress, log, interrupt_after, region
        As :func:`stead_california.build_california` (``region``: the earlier
        spelling of a ``bbox``, accepted with a note to ``log``).

    Returns
    -------
    dict
        The output paths and the counts of the report (see
        :func:`build_engine.build_dataset`).
    """
    region = region_from_options(region_mode, bbox, region, log)
    source = SeisBenchSource(dataset_dir, use_dataset_split)
    return engine.build_dataset(source, output_hdf5, output_dir, region, split=split, seed=seed,
                                shard_size=shard_size, progress=progress, log=log,
                                interrupt_after=interrupt_after)
