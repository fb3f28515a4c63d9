"""The pick files of other tools, read into the picks table of :func:`utrans_loc.picks.read_picks`.

Besides the locator's own CSV and the event files ObsPy reads (QuakeML, ...),
``--input_picks`` takes the files seismologists' pickers and associators
write, each in the layout its documentation gives (:data:`LAYOUTS`, with the
documentation's address):

- SeisBench: ``PickList.to_dataframe().to_csv(...)`` (``station`` = the trace
  id, ``time`` = the peak time, ``probability``, ``phase``) or a table of its
  :class:`Pick` attributes (``trace_id, start_time, end_time, peak_time,
  peak_value, phase``);
- PhaseNet's ``picks.csv`` (``station_id, phase_time, phase_type,
  phase_score``);
- GaMMA's picks with their assignments (PhaseNet's columns and
  ``event_index``, -1: not associated);
- PyOcto's assignments (``event_idx, station, phase, time``, any further
  column of the picks it was given);
- EQTransformer's ``X_prediction_results.csv`` (``network, station,
  instrument_type``, ``p_arrival_time, p_probability``, ``s_arrival_time,
  s_probability``: a P and an S pick per detection row);
- NonLinLoc's phase file NLLOC_OBS (ObsPy writes it but does not read it: read
  here by the documented fields; a blank line ends an event).

:func:`detect` tells the layout by a CSV's columns (comma or tab separated) or
by the text of the file; ``--picks_format`` names it instead. Station ids
(``NET.STA.LOC.CHA``, ``NET.STA..HH``, ``NET.STA.LOC``, a bare ``STA``) are
split by :class:`StationIds`, which looks in the inventory for what the id
leaves out (the network of a bare station code) or leaves open (whether a
third part is a location or a band code). A pick's probability or score is
kept in ``probability`` (NaN where the format has none), its band and
instrument code in ``band`` where the id names a channel. Picks that an
associator put into an event (GaMMA, PyOcto, an NLLOC_OBS block) keep that
event as ``event_id``; the others are each located on their own, as picks
without an event id always were, and :func:`read` says so once for the file.

Must not import keras: reading and checking the inputs needs no backend.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys

import pandas as pd

from utrans_loc import picks as pick_files

# The values of --picks_format.
FORMATS = ("auto", "locator", "quakeml", "seisbench", "phasenet", "gamma", "pyocto",
           "eqtransformer", "nlloc_obs")
# Texts that mean "no value" in the tools' CSVs (pandas writes NaN, EQTransformer None).
_MISSING = {"", "nan", "none", "null", "nat"}
_BAND = re.compile(r"[A-Z][A-Z]")


@dataclasses.dataclass(frozen=True)
class Layout:
    """One pick file layout.

    ``columns``: the column sets that tell it (any one, all of its columns
    present); ``optional``: further columns read when present; ``url``: the
    documentation its columns follow; ``events``: whether its picks carry an
    associator's event id.
    """

    name: str
    title: str
    columns: tuple
    optional: tuple
    url: str
    events: bool = False

    def needs(self):
        """The columns it needs, as a message says them."""
        return " or ".join(", ".join(c) for c in self.columns)


SEISBENCH_URL = "https://seisbench.readthedocs.io/en/main/_modules/seisbench/util/annotations.html"
PHASENET_URL = "https://ai4eps.github.io/PhaseNet/"
GAMMA_URL = "https://github.com/AI4EPS/GaMMA/blob/master/docs/example_phasenet.ipynb"
PYOCTO_URL = "https://pyocto.readthedocs.io/en/latest/pages/data_formats.html"
EQT_URL = "https://eqtransformer.readthedocs.io/en/latest/tutorial.html"
NLLOC_URL = "http://alomax.free.fr/nlloc/soft6.00/formats.html"

# CSV layouts, in the order they are tried (an associator's output, which keeps every
# column of the picks it was given, before the pickers' layouts).
LAYOUTS = (
    Layout("pyocto", "PyOcto assignments", (("event_idx", "station", "phase", "time"),),
           ("probability", "peak_value", "phase_score", "pick_idx", "residual"), PYOCTO_URL,
           events=True),
    Layout("gamma", "GaMMA picks", (("station_id", "phase_time", "phase_type", "event_index"),),
           ("phase_score", "phase_prob", "phase_amp", "gamma_score"), GAMMA_URL, events=True),
    Layout("locator", "the locator's picks CSV",
           (("network", "station", "p_time"), ("network", "station", "time")),
           ("phase", "event_id", "location", "p_position_s", "probability"),
           "docs/locating.md"),
    Layout("phasenet", "PhaseNet picks", (("station_id", "phase_time", "phase_type"),),
           ("phase_score", "phase_prob", "file_name", "begin_time", "phase_index",
            "phase_amp"), PHASENET_URL),
    Layout("eqtransformer", "EQTransformer X_prediction_results.csv",
           (("network", "station", "p_arrival_time", "s_arrival_time"),),
           ("instrument_type", "p_probability", "s_probability"), EQT_URL),
    Layout("seisbench", "SeisBench picks",
           (("trace_id", "peak_time", "phase"), ("station", "time", "start_time", "end_time",
                                                   "phase")),
           ("peak_value", "probability", "start_time", "end_time"), SEISBENCH_URL),
)
QUAKEML = Layout("quakeml", "an event file ObsPy reads (QuakeML, ...)", (), (),
                 "https://docs.obspy.org/packages/autogen/obspy.core.event.read_events.html",
                 events=True)
NLLOC_OBS = Layout("nlloc_obs", "NonLinLoc phase file (NLLOC_OBS)", (), (), NLLOC_URL,
                   events=True)
BY_NAME = {layout.name: layout for layout in (*LAYOUTS, QUAKEML, NLLOC_OBS)}
assert set(BY_NAME) == set(FORMATS) - {"auto"}


def known_layouts():
    """One line naming every layout and what tells it (for the unknown-layout error)."""
    csvs = "; ".join(f"{layout.name} ({layout.title}: {layout.needs()})" for layout in LAYOUTS)
    return (f"{csvs}; not CSV: nlloc_obs (NonLinLoc phase lines), quakeml (an event file "
            "ObsPy reads)")


# --------------------------------------------------------------------------
# Telling the layout
# --------------------------------------------------------------------------
def _first_line(path):
    with open(path, "rb") as fh:
        return fh.readline(4096).decode("utf-8-sig", "replace").strip()


def csv_header(path):
    """(names, delimiter) of a file whose first line is a CSV header (comma or tab
    separated, 2+ names), else None. Quotes and spaces around a name are dropped."""
    head = _first_line(path)
    if head.startswith("<"):                 # XML (QuakeML, ...), even on one line
        return None
    delimiter = "\t" if head.count("\t") > head.count(",") else ","
    names = [name.strip().strip('"').strip() for name in head.split(delimiter)]
    if len(names) < 2:
        return None
    return names, delimiter


def _is_nlloc_obs(path):
    """True when the first phase line of ``path`` reads as a NonLinLoc phase line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh):
            if number > 200:
                return False
            line = raw.decode("utf-8", "replace").strip()
            if not line or line.startswith("#") or line.startswith("PUBLIC_ID"):
                continue
            fields = line.split()
            return (len(fields) >= 14 and re.fullmatch(r"\d{8}", fields[6]) is not None
                    and re.fullmatch(r"\d{3,4}", fields[7]) is not None
                    and re.fullmatch(r"[A-Za-z]+", fields[9]) is not None)
    return False


def detect(path, picks_format="auto"):
    """The :class:`Layout` of the picks file ``path`` (``picks_format``: one of
    :data:`FORMATS`; ``'auto'``: told by its columns, or its text).

    A CSV whose columns fit no layout is refused (ValueError naming the
    columns found and the layouts known); a file that is not a CSV is an
    NLLOC_OBS file when its first phase line reads as one, else an event file
    for ObsPy. A named layout whose columns the CSV lacks is refused naming
    them.
    """
    path = str(path)
    if picks_format not in FORMATS:
        raise ValueError(f"picks_format must be one of {', '.join(FORMATS)}, got "
                         f"{picks_format!r}")
    header = csv_header(path)
    if picks_format != "auto":
        layout = BY_NAME[picks_format]
        if layout.columns and layout.name != "locator":
            found = set(header[0]) if header else set()
            if not any(set(c) <= found for c in layout.columns):
                shown = ", ".join(header[0]) if header else "(not a CSV)"
                raise ValueError(f"{path}: --picks_format {layout.name} needs the columns "
                                 f"{layout.needs()} ({layout.title}, {layout.url}); found: "
                                 f"{shown}")
        return layout
    if header is None:
        return NLLOC_OBS if _is_nlloc_obs(path) else QUAKEML
    names = set(header[0])
    for layout in LAYOUTS:
        if any(set(c) <= names for c in layout.columns):
            return layout
    raise ValueError(f"{path}: unknown picks layout: columns {', '.join(header[0])}. Known "
                     f"layouts: {known_layouts()}. Name one with --picks_format.")


# --------------------------------------------------------------------------
# Station ids
# --------------------------------------------------------------------------
class StationIds:
    """Splits the tools' station ids into (network, station, location, band).

    ``inventory``: a path, a :class:`~utrans_loc.stations.Stations`, or None;
    read only when an id needs it (a bare station code, a third part that may
    be a location or a band code).
    """

    def __init__(self, inventory=None):
        self._inventory, self._stations = inventory, None

    def _codes(self):
        if self._inventory is None:
            return None
        if self._stations is None:
            from utrans_loc import stations as station_files

            self._stations = (self._inventory if hasattr(self._inventory, "codes")
                              else station_files.read_stations(self._inventory))
        return self._stations.codes()

    def split(self, text, network=None, band=None):
        """((network, station, location or None, band or None), problem) of a station id.

        ``NET.STA.LOC.CHA`` (band: the channel's first two letters),
        ``NET.STA.LOC`` (SeisBench's trace id), ``NET.STA``, ``STA``; ``network``
        and ``band`` given apart (EQTransformer's columns) where the id is the
        station code alone. A missing network is the one network of the
        inventory that has the station; an empty location is None (any). A
        third part of two letters that is no location code of the station in
        the inventory but could be a band code (``CI.CCC.HH``) is read as the
        band. ``problem``: why the id cannot be used ('' when it can).
        """
        text = (text or "").strip()
        parts = text.split(".") if text else []
        if not parts or len(parts) > 4 or not parts[min(1, len(parts) - 1)].strip():
            return (network or "", text, None, band), (
                f"station id {text!r} is not NET.STA[.LOC[.CHA]] nor a station code")
        if len(parts) == 1:
            parts = [network or "", parts[0]]
        net, sta = parts[0].strip(), parts[1].strip()
        location = parts[2].strip() if len(parts) > 2 else ""
        if len(parts) == 4:
            channel = parts[3].strip()
            band = channel[:2] if len(channel) >= 2 else band
        problem = ""
        codes = None
        if not net or (len(parts) == 3 and _BAND.fullmatch(location)):
            codes = self._codes()
        if not net:
            net, problem = self._network(text, sta, codes)
        if len(parts) == 3 and codes is not None and _BAND.fullmatch(location):
            places = codes.get(sta, {}).get(net)
            if places is not None and location not in places and "" in places:
                location, band = "", location     # 'CI.CCC.HH': a band, not a location
        return (net, sta, location or None, band or None), problem

    def _network(self, text, sta, codes):
        """(network, problem) of a station id without one."""
        where = getattr(self._inventory, "path", self._inventory)
        if codes is None:
            return "", (f"station id {text!r} names no network, and there is no inventory "
                        "to look it up in")
        networks = sorted(codes.get(sta, {}))
        if len(networks) == 1:
            return networks[0], ""
        if not networks:
            return "", (f"station id {text!r} names no network, and the inventory "
                        f"{where} has no station {sta}")
        return "", (f"station id {text!r} names no network, and the inventory "
                    f"{where} has station {sta} in networks {', '.join(networks)}: ambiguous")


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------
def read(path, layout, inventory=None):
    """(table, places) of the picks file ``path`` in ``layout`` (:func:`detect`):
    the rows of :data:`utrans_loc.picks.PICKS_TABLE_COLUMNS` and each row's place in
    the file (``line 3``), as :func:`utrans_loc.picks.read_picks` takes them on.

    A row that cannot be read (a time or number that does not parse, a station
    id that cannot be placed) is a row with ``phase`` None and the reason
    naming the file and the line; a file none of whose rows can be read is
    refused. Where some picks carry no event id, one line on stderr says so.
    """
    path = str(path)
    if layout.name == "locator":
        return pick_files._picks_from_csv(path)
    if layout.name == "quakeml":
        return pick_files._picks_from_events(path)
    ids = StationIds(inventory)
    if layout.name == "nlloc_obs":
        records, places = _nlloc_obs(path, ids)
    else:
        records, places = _tool_csv(path, layout, ids)
    table = pd.DataFrame(records, columns=pick_files.PICKS_TABLE_COLUMNS)
    errors = [r for r in table["reason"] if r]
    if len(table) and len(errors) == len(table):
        raise ValueError(f"{path}: no row could be read as a pick ({layout.title}); first: "
                         f"{errors[0]}")
    _say_events(path, layout, table)
    return table, places


def _say_events(path, layout, table):
    """One stderr line for a file whose picks (some or all) carry no associator's event id."""
    if not len(table):
        return
    if layout.name == "eqtransformer":
        print(f"picks: {path}: {layout.title} carries no event ids: each of its "
              f"{len(table)} pick(s) is located at its own station (single-station), an "
              "S pick with the P pick of its detection row", file=sys.stderr)
        return
    without = int((table["event_id"] == "").sum())
    if without:
        share = "all" if without == len(table) else f"{without} of {len(table)}"
        print(f"picks: {path}: {share} pick(s) ({layout.title}) carry no event id"
              f"{' (-1: not associated)' if layout.events else ''}: each P pick is "
              "located at its own station (single-station), and an S pick without an event "
              "id joins none (listed in skipped.csv)", file=sys.stderr)


def _cells(header, fields):
    column = {name: i for i, name in reversed(list(enumerate(header)))}   # first one wins

    def cell(*names):
        for name in names:
            if name in column and column[name] < len(fields):
                text = fields[column[name]].strip()
                if text.lower() not in _MISSING:
                    return text
        return ""
    return cell


def _number(text, what):
    """(float or NaN, problem) of an optional number's text."""
    if not text:
        return math.nan, ""
    try:
        value = float(text)
    except ValueError:
        return math.nan, f"{what} {text!r} is not a number"
    return value, ""


def _event_id(text):
    """An associator's event id as text ('' for none, or -1: not associated)."""
    if not text:
        return ""
    try:
        value = float(text)
    except ValueError:
        return text
    if value < 0:
        return ""
    return str(int(value)) if value.is_integer() else text


def _hint(text):
    """The phase label, with a lower-case p or s (PhaseNet's JSON) read as P or S."""
    text = text.strip()
    return text.upper() if text in ("p", "s") else text


def _record(path, place, ids, station_id, time_text, hint, probability_text, event_id,
            time_column, probability_column, network=None, band=None):
    """One row of the picks table, or the row not used with its reason."""
    (net, sta, location, band), problem = ids.split(station_id, network, band)
    time = None
    try:
        time = pick_files.pick_time(time_text)
    except ValueError as err:
        problem = problem or f"{time_column} {err}"
    probability, bad = _number(probability_text, probability_column)
    problem = problem or bad
    phase, reason = pick_files.phase_of(hint)
    if problem:
        phase, reason = None, f"{path}, {place}: {problem}"
    return {"network": net, "station": sta, "location": location, "time": time,
            "phase": phase, "phase_hint": hint or None, "event_id": event_id,
            "p_position_s": math.nan, "reason": reason, "probability": probability,
            "band": band}


def _tool_csv(path, layout, ids):
    """(records, places) of a pickers' or associators' CSV in ``layout``."""
    header, delimiter = csv_header(path)
    header, rows = pick_files._csv_rows(path, delimiter=delimiter)
    records, places = [], []
    for line, fields in rows:
        cell = _cells(header, fields)
        place = f"line {line}"
        if len(fields) > len(header):
            records.append(_unreadable(path, place, cell, len(fields), len(header)))
            places.append(place)
            continue
        if layout.name == "eqtransformer":
            _eqtransformer_row(path, line, cell, ids, records, places)
            continue
        if layout.name == "seisbench":
            sid, time_column = cell("trace_id", "station"), (
                "peak_time" if cell("peak_time") else "time" if cell("time") else "start_time")
            prob_column = "peak_value" if cell("peak_value") else "probability"
            event = ""
        elif layout.name in ("phasenet", "gamma"):
            sid, time_column = cell("station_id"), "phase_time"
            prob_column = "phase_score" if cell("phase_score") else "phase_prob"
            event = _event_id(cell("event_index")) if layout.events else ""
        else:                                                  # pyocto
            sid, time_column = cell("station"), "time"
            prob_column = next((c for c in ("probability", "peak_value", "phase_score")
                                if cell(c)), "probability")
            event = _event_id(cell("event_idx"))
        hint = _hint(cell("phase") if layout.name in ("seisbench", "pyocto")
                     else cell("phase_type"))
        records.append(_record(path, place, ids, sid, cell(time_column), hint, cell(prob_column),
                               event, time_column, prob_column))
        places.append(place)
    return records, places


def _unreadable(path, place, cell, n_fields, n_header):
    return {"network": "", "station": cell("station", "station_id", "trace_id"),
            "location": None, "time": None, "phase": None, "phase_hint": None, "event_id": "",
            "p_position_s": math.nan, "probability": math.nan, "band": None,
            "reason": (f"{path}, {place}: {n_fields} fields where the header has {n_header} "
                       "(a comma inside a value: a decimal comma, or text that needs quotes?)")}


def _eqtransformer_row(path, line, cell, ids, records, places):
    """A detection row's P and S picks (either may be missing). The S pick joins its P
    pick: both get the P pick's own event id (``NET.STA_<P time>``, as
    :func:`utrans_loc.picks.read_picks` names a pick without one)."""
    network, station, band = cell("network"), cell("station"), cell("instrument_type")
    made = []
    for phase in ("P", "S"):
        time_column, prob_column = f"{phase.lower()}_arrival_time", f"{phase.lower()}_probability"
        if not cell(time_column):
            continue
        place = f"line {line} ({phase})"
        made.append(_record(path, place, ids, station, cell(time_column), phase,
                            cell(prob_column), "", time_column, prob_column, network=network,
                            band=band if _BAND.fullmatch(band or "") else None))
        places.append(place)
    anchor = next((r for r in made if r["phase_hint"] == "P" and r["time"] is not None), None)
    if anchor is not None:
        event = (f"{anchor['network']}.{anchor['station']}_"
                 f"{anchor['time'].strftime('%Y%m%dT%H%M%S.%fZ')}")
        for record in made:
            record["event_id"] = event
    records.extend(made)


# --------------------------------------------------------------------------
# NLLOC_OBS
# --------------------------------------------------------------------------
def nlloc_obs_lines(path):
    """(event number, public id or None, line number, fields) of every phase line of a
    NonLinLoc phase file: events are separated by blank lines; ``PUBLIC_ID <id>``
    names the event it opens; lines starting with ``#`` are comments."""
    out, event, public_id, open_event = [], 1, None, False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                if open_event:
                    event, public_id, open_event = event + 1, None, False
                continue
            if line.startswith("#"):
                continue
            if line.startswith("PUBLIC_ID"):
                if open_event:                      # a new id without a blank line first
                    event, open_event = event + 1, False
                public_id = line[len("PUBLIC_ID"):].strip() or None
                continue
            out.append((event, public_id, number, line.split()))
            open_event = True
    return out


def _nlloc_obs(path, ids):
    """(records, places) of an NLLOC_OBS file: Station, Instrument, Component, P phase
    onset, Phase descriptor, First motion, Date (yyyymmdd), Hour/min (hhmm), Seconds,
    Err (GAU), ErrMag, Coda duration, Amplitude, Period[, PriorWt] per line; a PriorWt
    of 0 ("do not use reading") makes the pick one not used. Event ids: the block's
    PUBLIC_ID (its last path part), else ``<file name>#<block number>``."""
    from obspy import UTCDateTime

    lines = nlloc_obs_lines(path)
    named = {}
    for event, public_id, _, _ in lines:
        named.setdefault(event, public_id)
    public = [named[e] for e in sorted(named) if named[e]]
    short = dict(zip(public, pick_files.readable_ids(public)))
    stem = os.path.basename(path)
    records, places = [], []
    for event, public_id, number, fields in lines:
        place = f"line {number}"
        event_id = short[public_id] if public_id else f"{stem}#{event}"
        problem, time, weight = "", None, math.nan
        if len(fields) < 14:
            problem = (f"{len(fields)} fields where a NonLinLoc phase line has 14 or 15 "
                       f"({NLLOC_URL})")
        else:
            try:
                seconds = float(fields[8])
                if not (re.fullmatch(r"\d{8}", fields[6]) and re.fullmatch(r"\d{3,4}",
                                                                            fields[7])):
                    raise ValueError
                hhmm = int(fields[7])
                time = UTCDateTime(fields[6]) + (hhmm // 100) * 3600 + (hhmm % 100) * 60 + seconds
            except (TypeError, ValueError):
                problem = (f"time {' '.join(fields[6:9])!r} is not 'yyyymmdd hhmm seconds'")
            if len(fields) > 14:
                weight, bad = _number(fields[14], "PriorWt")
                problem = problem or bad
        component = fields[2] if len(fields) > 2 else ""
        band = component[:2] if len(component) == 3 and _BAND.fullmatch(component[:2]) else None
        (net, sta, location, band), where = ids.split(fields[0] if fields else "", band=band)
        problem = problem or where
        hint = _hint(fields[4]) if len(fields) > 4 else ""
        phase, reason = pick_files.phase_of(hint)
        if problem:
            phase, reason = None, f"{path}, {place}: {problem}"
        elif weight == 0:
            phase, reason = None, (f"{path}, {place}: PriorWt 0 in the file (NonLinLoc: do not "
                                   "use reading): not used")
        records.append({"network": net, "station": sta, "location": location, "time": time,
                        "phase": phase, "phase_hint": hint or None, "event_id": event_id,
                        "p_position_s": math.nan, "reason": reason, "probability": math.nan,
                        "band": band})
        places.append(place)
    return records, places
