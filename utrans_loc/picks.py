"""Pick files to the picks table: a CSV, an event file ObsPy reads (QuakeML, ...), or
the pick files of other tools (SeisBench, PhaseNet, GaMMA, PyOcto, EQTransformer,
NLLOC_OBS: :mod:`utrans_loc.pick_formats`).

:func:`read_picks` turns a picks file into one table row per pick, with its P
or S class (:data:`PHASE_HINTS`) and its label as given, or the reason it
cannot be used (a label that is neither P nor S, a row that cannot be read,
a duplicate: such rows are listed in skipped.csv by the locator). A pick
that cannot be located raises :class:`PickError`, one line naming the
station and the pick time (:func:`pick_label`), here and in every later
stage.

Must not import keras: reading and checking the inputs needs no backend.
"""

from __future__ import annotations

import csv
import decimal
import math
import os
import re

import numpy as np
import pandas as pd

PICK_COLUMNS = ("network", "station", "p_time")
# Phase hints read as P or S (QuakeML phase_hint, the picks CSV's phase column);
# any other hint is listed in skipped.csv, never guessed.
PHASE_HINTS = {"P": "P", "Pg": "P", "Pn": "P", "Pb": "P",
               "S": "S", "Sg": "S", "Sn": "S", "Sb": "S"}
PICKS_TABLE_COLUMNS = ("network", "station", "location", "time", "phase", "phase_hint",
                       "event_id", "p_position_s", "reason", "probability", "band")
# A pick time that is a plain number is POSIX seconds when it falls in 1900-2100;
# a number beyond is a compact ISO 8601 time without separators (20200131120005.25).
POSIX_SPAN_S = (-2208988800, 4102444800)      # 1900-01-01 to 2100-01-01, UTC
ISO_EXAMPLE, POSIX_EXAMPLE = "2020-01-31T12:00:05.25Z", "1580472005.25"
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
DUPLICATE_KEY = "same network, station, location, phase, time and event"


class PickError(ValueError):
    """A pick that cannot be located; the message names the station and the time."""


def pick_label(network, station, p_time):
    """``NET.STA at <ISO time>``: how every message names a pick."""
    return f"{network}.{station} at {p_time}"


def phase_of(hint):
    """(phase, reason): ``'P'`` or ``'S'`` and ``''``, or None and why the hint is not used."""
    hint = "" if hint is None else str(hint).strip()
    if hint in PHASE_HINTS:
        return PHASE_HINTS[hint], ""
    accepted = ", ".join(PHASE_HINTS)
    return None, (f"phase hint {hint!r} is neither P nor S (accepted: {accepted})" if hint else
                  f"no phase hint (accepted: {accepted})")


def read_picks(path, picks_format="auto", inventory=None):
    """Picks from a CSV, an event file ObsPy reads (QuakeML, ...) or another tool's pick
    file, with their phase.

    ``picks_format``: one of :data:`utrans_loc.pick_formats.FORMATS`; ``'auto'``
    tells the layout by a CSV's columns, else by the file's text
    (:func:`utrans_loc.pick_formats.detect`; a CSV of no known layout is
    refused naming its columns and the layouts known). ``inventory``: the
    inventory file (or a :class:`~utrans_loc.stations.Stations`) a station id
    without a network is looked up in (:class:`utrans_loc.pick_formats.StationIds`).

    CSV: columns ``network, station, p_time`` (or ``time``), optional
    ``phase`` (:data:`PHASE_HINTS`; ``P`` when the column or the cell is
    empty), ``event_id``, ``location`` (only that location code is used;
    empty: any), ``p_position_s`` (a P pick's position in the window,
    overriding the run's) and ``probability``. A time is ISO 8601 (UTC unless the time says
    otherwise), or a plain number: POSIX seconds (UTC) when it falls in
    1900-2100 (``1546300800.5``), else a compact ISO 8601 time without
    separators as ObsPy reads it (``20190101000000.5``); see :func:`pick_time`.
    A row that cannot be read (more fields than the header, e.g. a decimal
    comma; a time or ``p_position_s`` that cannot be parsed) does not refuse
    the file: it is a row of the table with ``phase`` None and a reason
    naming the file and the line. A file none of whose rows can be read, or
    that is neither such a CSV nor an event file, is refused (ValueError
    naming it).

    Event file: every pick, its phase from its phase hint (else from an
    Arrival that refers to it), one P and one S pick per event and station
    (later ones are listed as not used), ``event_id`` a readable form of the
    event's resource id (:func:`readable_ids`).

    Other tools' files (:mod:`utrans_loc.pick_formats`): their station ids
    split into network, station, location and band, their probability or
    score kept, an associator's event id (GaMMA, PyOcto, an NLLOC_OBS block)
    kept as ``event_id``; a row that cannot be read is a row not used, with
    file and line, as in a CSV.

    All: a pick equal to an earlier one (:func:`mark_duplicates`) is listed
    as a duplicate, not used twice.

    Returns
    -------
    pandas.DataFrame
        :data:`PICKS_TABLE_COLUMNS`: ``network, station, location (str or
        None), time (UTCDateTime; None where the row could not be read),
        phase ('P', 'S' or None), phase_hint (the label as given, e.g.
        'Pg'; the class where none was given), event_id (str), p_position_s (float,
        NaN: the run's), reason`` (why the pick cannot be used, '' when it
        can), one row per pick, in file order. Picks without an event id get
        their own (``NET.STA_<time>``). ``probability`` (float; NaN where
        the file has none) and ``band`` (band and instrument code, e.g.
        'HH', where the file names a channel; else None).
    """
    from obspy import UTCDateTime

    from utrans_loc import pick_formats

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"picks file not found: {path}")
    layout = pick_formats.detect(path, picks_format)
    picks, places = pick_formats.read(path, layout, inventory)
    if not len(picks):
        raise ValueError(f"{path}: no picks")
    # object columns keep None: pandas' str dtype would turn a missing code into NaN
    # (a float, and truthy) where some rows have one.
    for column in ("location", "phase", "phase_hint", "band"):
        picks[column] = pd.Series([v if isinstance(v, str) else None for v in picks[column]],
                                  index=picks.index, dtype=object)
    # A pick given as its class only (a CSV without a phase column) is labelled by it.
    picks["phase_hint"] = pd.Series([h if h is not None else p for h, p in
                                     zip(picks["phase_hint"], picks["phase"])],
                                    index=picks.index, dtype=object)
    own = (picks["event_id"] == "").to_numpy() & np.array(
        [isinstance(t, UTCDateTime) for t in picks["time"]], dtype=bool)
    picks.loc[own, "event_id"] = [f"{n}.{s}_{t.strftime('%Y%m%dT%H%M%S.%fZ')}" for n, s, t in
                                  zip(picks.loc[own, "network"], picks.loc[own, "station"],
                                      picks.loc[own, "time"])]
    picks["probability"] = pd.to_numeric(picks["probability"], errors="coerce").astype(float)
    mark_duplicates(picks, places, path)
    if layout.events:      # grouped into events by the file: one P and one S per station
        _one_per_phase_and_station(picks)
    return picks.reset_index(drop=True)


def pick_time(text):
    """The UTCDateTime of a pick time's text; ValueError saying why not.

    ISO 8601, UTC unless the text says otherwise. A plain number (digits, an
    optional decimal point and exponent) is POSIX seconds (UTC) when it falls
    in 1900-2100 (:data:`POSIX_SPAN_S`); a larger one is read as ObsPy reads a
    compact ISO 8601 time without separators (``20200131120005.25``), as
    before POSIX seconds were accepted. The two overlap only for a compact
    date without seconds (``20200131``, ``2020013112``): read as POSIX
    seconds, since a pick needs its seconds.
    """
    from obspy import UTCDateTime

    text = text.strip()
    if not text:
        raise ValueError("is empty")
    if _NUMBER.fullmatch(text):
        seconds = decimal.Decimal(text)
        if POSIX_SPAN_S[0] <= seconds < POSIX_SPAN_S[1]:
            return UTCDateTime(ns=int((seconds * 10 ** 9).to_integral_value()))
        try:
            return UTCDateTime(text)
        except (TypeError, ValueError):
            raise ValueError(f"{text!r} read as POSIX seconds is outside 1900-2100, and is not a "
                             "compact ISO 8601 time either (e.g. 20200131120005.25)") from None
    try:
        return UTCDateTime(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. {ISO_EXAMPLE}) nor POSIX "
                         f"seconds (e.g. {POSIX_EXAMPLE})") from None


def mark_duplicates(picks, places, path):
    """Mark in place each usable pick equal to an earlier one as not used (both readers).

    Equal: same network, station, location code, phase (P or S), time and
    event_id. The later copy gets ``phase`` None and the reason
    ``<path>, <its place>: duplicate of <the first's place> (...)``, where
    ``places`` names each row's place in the file (``line 3``, ``event ev1,
    pick 2``; the first's is named by its last part). Picks already not used
    are not compared.
    """
    first = {}
    for i, row in enumerate(picks.itertuples(index=False)):
        if not isinstance(row.phase, str):
            continue
        key = (row.network, row.station, row.location, row.phase, row.time.ns, row.event_id)
        if key not in first:
            first[key] = i
            continue
        earlier = places[first[key]].rsplit(", ", 1)[-1]     # 'line 3', 'pick 1'
        picks.iloc[i, picks.columns.get_loc("phase")] = None
        picks.iloc[i, picks.columns.get_loc("reason")] = (
            f"{path}, {places[i]}: duplicate of {earlier} ({DUPLICATE_KEY}): not used")


def _looks_like_csv(path, *columns):
    """True when the first line of ``path`` is a CSV header naming one of ``columns``."""
    with open(path, "rb") as fh:
        head = fh.readline(4096).decode("utf8", "replace")
    return bool(set(columns) & {c.strip().strip('"') for c in head.split(",")})


def _csv_rows(path, delimiter=","):
    """(header, rows) of a CSV file: the header's names stripped, each row as (its first
    line's number, fields; empty fields beyond the header's dropped); rows without any
    text skipped. UTF-8 (a BOM is ignored); ``delimiter``: ',' or a tab."""
    rows, reader = [], None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            line = reader.line_num + 1
            for fields in reader:
                while len(fields) > len(header) and not fields[-1].strip():
                    fields = fields[:-1]          # a trailing comma (spreadsheets write them)
                if any(field.strip() for field in fields):
                    rows.append((line, fields))
                line = reader.line_num + 1
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    except csv.Error as err:
        raise ValueError(f"{path}, line {reader.line_num if reader else 1}: {err}") from None
    return header, rows


def _picks_from_csv(path):
    """(table, places) of a picks CSV; a row that cannot be read is a row not used."""
    header, rows = _csv_rows(path)
    time_column = "p_time" if "p_time" in header else "time"
    missing = [c for c in ("network", "station", time_column) if c not in header]
    if missing:
        raise ValueError(f"{path}: picks CSV lacks column(s) {', '.join(missing)} (needs "
                         f"{', '.join(PICK_COLUMNS)}; optional phase, event_id, location, "
                         "p_position_s, probability)")
    column = {name: i for i, name in reversed(list(enumerate(header)))}   # first one wins
    records, places, errors = [], [], []
    for line, fields in rows:
        n_fields = len(fields)
        fields = fields + [""] * (len(header) - n_fields)

        def cell(name):
            return fields[column[name]].strip() if name in column else ""

        hint = cell("phase")
        phase, reason = phase_of(hint) if hint else ("P", "")
        time, position, probability, problem = None, math.nan, math.nan, ""
        if n_fields > len(header):
            problem = (f"{n_fields} fields where the header has {len(header)} (a comma inside "
                       "a value: a decimal comma, or text that needs quotes?)")
        else:
            try:
                time = pick_time(cell(time_column))
            except ValueError as err:
                problem = f"{time_column} {err}"
            text = cell("p_position_s")
            try:
                position = float(text) if text else math.nan
            except ValueError:
                problem = problem or f"p_position_s {text!r} is not a number"
            text = cell("probability")
            try:
                probability = float(text) if text else math.nan
            except ValueError:
                problem = problem or f"probability {text!r} is not a number"
        if problem:
            phase, reason, position = None, f"{path}, line {line}: {problem}", math.nan
            probability = math.nan
            errors.append(reason)
        records.append({"network": cell("network"), "station": cell("station"),
                        "location": cell("location") or None, "time": time, "phase": phase,
                        "phase_hint": hint or None, "event_id": cell("event_id"),
                        "p_position_s": position, "reason": reason,
                        "probability": probability, "band": None})
        places.append(f"line {line}")
    if records and len(errors) == len(records):
        raise ValueError(f"{path}: no row could be read as a pick; first: {errors[0]}")
    return pd.DataFrame(records, columns=PICKS_TABLE_COLUMNS), places


def readable_ids(resource_ids):
    """Short, readable event ids: the last path part of each resource id.

    ``smi:local/4f1c...`` -> ``4f1c...``, ``quakeml:us.anss.org/event/us7000abcd``
    -> ``us7000abcd``. Where two ids would get the same short form, both keep
    their full text.
    """
    full = [str(r) for r in resource_ids]
    short = [f.rstrip("/").rsplit("/", 1)[-1] or f for f in full]
    owners = {}
    for f, s in zip(full, short):
        owners.setdefault(s, set()).add(f)
    return [s if len(owners[s]) == 1 else f for f, s in zip(full, short)]


def _picks_from_events(path):
    """(table, places) of an event file: every pick, in event and pick order."""
    from obspy import read_events

    try:
        catalog = read_events(path)
    except Exception as err:   # ObsPy raises many types for a file it cannot parse
        raise ValueError(f"{path}: neither a picks CSV (columns {', '.join(PICK_COLUMNS)}) nor an "
                         f"event file ObsPy reads ({type(err).__name__}: {err})") from None
    rows, places = [], []
    for event, event_id in zip(catalog, readable_ids(e.resource_id for e in catalog)):
        # A pick without a hint may still be named by an Arrival of an Origin.
        arrival_phase = {str(a.pick_id): a.phase for origin in event.origins
                         for a in origin.arrivals if a.pick_id is not None and a.phase}
        for number, pick in enumerate(event.picks, start=1):
            wid = pick.waveform_id
            network = (wid.network_code or "") if wid is not None else ""
            station = (wid.station_code or "") if wid is not None else ""
            hint = pick.phase_hint or arrival_phase.get(str(pick.resource_id))
            phase, reason = phase_of(hint)
            if not station:
                phase, reason = None, "no station code (waveform_id)"
            elif pick.time is None:
                phase, reason = None, "no pick time"
            channel = (wid.channel_code or "") if wid is not None else ""
            rows.append({"network": network, "station": station,
                         "location": (wid.location_code or None) if wid is not None else None,
                         "time": pick.time, "phase": phase,
                         "phase_hint": str(hint).strip() or None if hint else None,
                         "event_id": event_id, "p_position_s": math.nan, "reason": reason,
                         "probability": math.nan,
                         "band": channel[:2] if len(channel) == 3 else None})
            places.append(f"event {event_id}, pick {number}")
    return pd.DataFrame(rows, columns=PICKS_TABLE_COLUMNS), places


def _one_per_phase_and_station(picks):
    """Event files: a second usable pick of one phase at one station in an event is not used."""
    seen = set()
    for i, row in enumerate(picks.itertuples(index=False)):
        if not isinstance(row.phase, str):
            continue
        key = (row.event_id, row.network, row.station, row.phase)
        if key in seen:
            picks.iloc[i, picks.columns.get_loc("phase")] = None
            picks.iloc[i, picks.columns.get_loc("reason")] = (
                f"another {row.phase} pick of {row.network}.{row.station} comes first in this "
                "event (one per phase and station is used)")
        seen.add(key)
