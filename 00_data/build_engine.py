"""The resumable build engine both data builders run on: select, shards, merge, commit.

A builder is a *source* (:class:`Source`: ``stead_california.SteadSource``,
``seisbench_data.SeisBenchSource``) handed to :func:`build_dataset`, which
writes what every builder writes:

* the DataCollected HDF5 (UTRANS_SPEC section 1): group ``<trace id>`` with
  dataset ``data`` (6000, 3) float32 and the upstream attribute names;
* ``train_Events.npy``, ``valid_Events.npy``, ``test_Events.npy``: trace ids
  split by event (``california.split_by_event``), or as the source fixes;
* ``california_traces.csv`` (every written trace with its split),
  ``skipped_traces.csv`` (every selected trace that was not written, with the
  reason) and ``build_report.txt`` (counts per step, split and network).

The steps shared by the sources are written here once: the selection after
reading (:func:`select_rows`: missing coordinates -> region -> the source's
filters -> duplicates) and the sample check of a trace (:func:`check_samples`).

Streaming and resume: traces are processed one at a time into shard files of
``shard_size`` traces inside ``<output_hdf5>.partial/``; a shard is written
to a temporary name and renamed when complete, so an interrupted run (Ctrl-C,
kill, power loss) started again with the same arguments redoes at most one
shard. At the end the shards are merged into the output file, every output is
staged in the work folder, ``COMMIT.json`` records the moves, and the outputs
are moved to their final names; an existing output is never overwritten.

Must not import keras.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from california import Region, check_split_fractions, split_by_event  # noqa: E402
from utrans_loc import traces as T  # noqa: E402
from utrans_loc import vocabulary  # noqa: E402
from utrans_loc.files import atomic_save  # noqa: E402

__all__ = ["Source", "SkipTrace", "check_samples", "select_rows", "build_dataset",
           "check_build_parameters", "output_paths", "file_id", "split_summary", "SPLITS",
           "LOCATION_FIELDS", "SOURCE_MEMBERS"]

SPLITS = ("train", "valid", "test")
_FORMAT = 1   # bump when the work-folder format changes (an old one is then refused)
# Station and event position (canonical names), in the order the region test reads them.
LOCATION_FIELDS = ("station_lat", "station_lon", "event_lat", "event_lon")


LOCATION_ATTRS = vocabulary.names(*LOCATION_FIELDS, to="datacollected")
# Attributes of a written trace copied into its record: text, then numbers.
_RECORD_TEXT = vocabulary.names("network_code", "receiver_code", "source_id", to="datacollected")
_RECORD_NUMBERS = vocabulary.names(*LOCATION_FIELDS, "depth_km", "magnitude",
                                   "source_distance_km", to="datacollected")
# Columns of the per-shard record (one row per selected trace); the written traces'
# rows, less the bookkeeping columns, are california_traces.csv.
_RECORD = ("trace_name", "input", "status", "kind", "reason", *_RECORD_TEXT, "group_key",
           *vocabulary.names(*LOCATION_FIELDS, "depth_km", "magnitude", "snr_db",
                           "source_distance_km", to="datacollected"))
_REJECTED = ["trace_name", "input", "kind", "reason"]


# --------------------------------------------------------------------------
# The contract between a source and the engine
# --------------------------------------------------------------------------
@runtime_checkable
class Source(Protocol):
    """What :func:`build_dataset` needs from a data source (one per input format).

    The builder reads its inputs through these members only; each source
    checks its inputs when it is made (a bad file raises before any work).
    """

    title: str
    """Report title and name of the builder, e.g. ``'build_california'``."""
    selection_columns: tuple[str, ...]
    """Columns of a selected row kept for the trace loop (saved, read back on resume)."""

    @property
    def inputs(self) -> list[str]:
        """Every input file (no output may be one of them)."""

    @property
    def selection_inputs(self) -> list[str]:
        """The files the selection reads (named in the status line)."""

    def manifest(self) -> dict[str, Any]:
        """Inputs (path, size, mtime) and options: a resumed run must match them."""

    def input_label(self, index: int) -> str:
        """The waveform file of input ``index`` (the ``input_hdf5`` column of the CSVs)."""

    def describe(self) -> list[str]:
        """Report lines naming the inputs and the source's options."""

    def select(self, region: Region) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
        """(selected rows, rejected rows, counts): :func:`select_rows` after reading."""

    def selection_report(self, counts: dict) -> list[str]:
        """Report lines of the selection counts."""

    def nothing_selected(self, counts: dict, region: Region) -> str:
        """The error message when no trace is selected."""

    def open(self) -> list[Any]:
        """Open readers, one per input (each with ``close()``), for :meth:`process`."""

    def process(self, readers: list[Any], row: dict, region: Region
                ) -> tuple[np.ndarray, dict]:
        """(data (6000, 3) float32, upstream attributes) of one selected row; SkipTrace."""

    def skipped_attrs(self, readers: list[Any], row: dict) -> dict:
        """Upstream attributes of a row that was skipped on reading (for its record)."""

    def fixed_splits(self, selected: pd.DataFrame) -> dict[str, str] | None:
        """trace id -> split imposed by the source; None: split by event."""


# The members of the contract, for the error that names what a source lacks.
SOURCE_MEMBERS = tuple(Source.__annotations__) + tuple(
    name for name in vars(Source) if not name.startswith("_"))


class SkipTrace(Exception):
    """A trace that is not written; ``kind`` is a short code for the report."""

    def __init__(self, kind, reason):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def check_samples(wave):
    """Raise :class:`SkipTrace` for NaN/Inf samples ('nonfinite') or an all-zero trace ('zero')."""
    if not np.isfinite(wave).all():
        raise SkipTrace("nonfinite", f"{int((~np.isfinite(wave)).sum())} NaN/Inf samples")
    if not wave.any():
        raise SkipTrace("zero", "all-zero waveform")


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------
def select_rows(blocks: Iterable[tuple[int, pd.DataFrame]], region: Region,
                coordinates: Sequence[str], counts: dict,
                filters: Sequence[tuple[str, Callable[[pd.DataFrame], np.ndarray]]] = (),
                prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                missing_reason: str = "missing station or event coordinates",
                duplicate_reason: str = "trace id already selected"):
    """The selection steps every source shares, on its earthquake rows.

    Per block, in order: rows without every ``coordinates`` value are
    rejected (kind 'csv_coordinates'); rows whose station or event lies
    outside ``region`` are dropped; ``prepare`` (if given) adds what the
    filters need to the rows left; each ``filters`` entry drops the rows its
    mask is False for; a trace id met before (in this block or an earlier
    one) is rejected (kind 'duplicate'). ``counts`` gets
    ``missing_coordinates``, ``outside_region``, each filter's name,
    ``duplicates`` and ``selected`` added.

    Parameters
    ----------
    blocks : iterable of (int, pandas.DataFrame)
        Input index and earthquake rows (a ``trace_name`` column with the
        output trace id, numeric ``coordinates`` columns), in input order.
    region : Region
        Station and event must be inside.
    coordinates : sequence of str
        Columns of station latitude, longitude, event latitude, longitude
        (the region is tested on these), then any other column that must be known.
    counts : dict
        The source's counts (rows read, categories, ...); updated in place.
    filters : sequence of (str, callable)
        Count name and ``frame -> boolean mask`` of the rows to keep.
    prepare : callable, optional
        ``frame -> frame`` on the rows inside the region (work done only there).
    missing_reason, duplicate_reason : str
        The ``reason`` of the two kinds of rejected rows.

    Returns
    -------
    selected : pandas.DataFrame
        The kept rows, ``input`` (the block's index) inserted after ``trace_name``.
    rejected : pandas.DataFrame
        ``trace_name, input, kind, reason``.
    counts : dict
    """
    for name in ("missing_coordinates", "outside_region", "duplicates") + \
            tuple(name for name, _ in filters):
        counts.setdefault(name, 0)
    selected, rejected, seen = [], [], set()
    for index, frame in blocks:
        values = frame[list(coordinates)].to_numpy(float)
        has = np.isfinite(values).all(axis=1)
        if (~has).any():
            counts["missing_coordinates"] += int((~has).sum())
            rejected.append(pd.DataFrame({"trace_name": frame["trace_name"][~has], "input": index,
                                          "kind": "csv_coordinates", "reason": missing_reason}))
        frame, values = frame[has], values[has]
        inside = region.contains(values[:, 0], values[:, 1]) & \
            region.contains(values[:, 2], values[:, 3])
        counts["outside_region"] += int((~inside).sum())
        frame = frame[inside]
        if frame.empty:
            continue
        if prepare is not None:
            frame = prepare(frame)
        for name, keep in filters:
            ok = np.asarray(keep(frame), dtype=bool)
            counts[name] += int((~ok).sum())
            frame = frame[ok]
        ids = frame["trace_name"]
        dup = ids.isin(seen).to_numpy() | ids.duplicated().to_numpy()
        if dup.any():
            counts["duplicates"] += int(dup.sum())
            rejected.append(pd.DataFrame({"trace_name": ids[dup], "input": index,
                                          "kind": "duplicate", "reason": duplicate_reason}))
            frame = frame[~dup]
        seen.update(frame["trace_name"])
        frame.insert(1, "input", index)
        selected.append(frame)
    selected = pd.concat(selected, ignore_index=True) if selected else pd.DataFrame()
    counts["selected"] = len(selected)
    rejected = pd.concat(rejected, ignore_index=True) if rejected else \
        pd.DataFrame(columns=_REJECTED)
    return selected, rejected, counts


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------
def build_dataset(source, output_hdf5, output_dir, region, split=(0.7, 0.1, 0.2), seed=0,
                  shard_size=1000, progress=True, log=None, interrupt_after=None):
    """Build the DataCollected HDF5 and its splits from one ``source``.

    Select, process trace by trace into shards (resumable), split by event (or
    as the source fixes), stage every output, commit.

    Parameters
    ----------
    source : Source
        The inputs (``stead_california.SteadSource``, ``seisbench_data.SeisBenchSource``).
    output_hdf5 : str or Path
        DataCollected HDF5 to write; must not exist.
    output_dir : str or Path
        Folder for the split files, ``california_traces.csv``,
        ``skipped_traces.csv`` and ``build_report.txt`` (none may exist).
    region : california.Region
        Station and event must be inside.
    split : 3 floats
        Fractions of events for train, valid, test; sum 1.
    seed : int
        Seed of the event shuffle.
    shard_size : int
        Traces per intermediate shard: the unit of resume.
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
        the outputs of an interrupted run: ``selection`` (selection counts),
        ``counts`` (written, skipped, events, per split), ``per_network``
        (DataFrame), ``processed`` (traces processed in this call),
        ``shards_resumed``, ``time_s``, ``traces_per_s``.

    Raises
    ------
    TypeError
        ``source`` lacks a member of :class:`Source`.
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
    if not isinstance(source, Source):
        missing = [m for m in SOURCE_MEMBERS if not hasattr(source, m)]
        raise TypeError(f"{type(source).__name__} is not a build source: it lacks "
                        f"{', '.join(missing)} (see build_engine.Source)")
    start = time.time()
    log = log or (lambda message: None)
    split = check_build_parameters(split, shard_size)
    paths = output_paths(output_hdf5, output_dir)
    work = Path(f"{paths['hdf5']}.partial")
    _check_outputs(paths, source.inputs, output_dir, work)
    manifest = {"format": _FORMAT, **source.manifest(),
                "outputs": {k: str(Path(v).resolve()) for k, v in paths.items()},
                "region": region.describe(), "split": list(split),
                "seed": int(seed), "shard_size": int(shard_size)}
    paths["hdf5"].parent.mkdir(parents=True, exist_ok=True)
    _open_work_dir(work, manifest, source.title)
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



def check_build_parameters(split, shard_size):
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


def output_paths(output_hdf5, output_dir):
    """Final paths written by :func:`build_dataset`."""
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


def _open_work_dir(work, manifest, title):
    """Create the work folder, or check that an existing one is this run's.

    Returns True when an interrupted run is resumed.
    """
    man_path = work / "manifest.json"
    if work.exists():
        if not man_path.is_file():
            raise ValueError(f"{work} exists but is not a {title} work folder "
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
        for name in _RECORD_TEXT:
            rec[name] = attrs.get(name, "None")
        for name in _RECORD_NUMBERS:
            rec[name] = _short(attrs.get(name, "None"))
        snr = T.attr_snr(attrs)
        rec["snr_db"] = round(float(np.nanmean(snr)), 3) if np.isfinite(snr).any() else math.nan
        # Event key for the split: STEAD's source_id; without one, origin time
        # and epicentre (recordings of one event share them).
        rec["group_key"] = rec["source_id"] if rec["source_id"] != "None" else \
            f"{attrs.get('source_origin_time', 'None')}|{rec[LOCATION_ATTRS[2]]:.3f}|" \
            f"{rec[LOCATION_ATTRS[3]]:.3f}"
    return rec


