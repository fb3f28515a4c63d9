"""Waveform files to model windows: picks, stations, ObsPy streams, the 60 s cut.

Reads what a user has, with ObsPy: waveforms by time span, from files
(miniSEED, SAC, ... indexed by their headers: :class:`WaveformFiles`) or an
SDS archive (:class:`SDSArchive`), station metadata (StationXML, or a CSV of
coordinates: :func:`read_stations`) and P and S picks (CSV, or an event file
such as QuakeML: :func:`read_picks`). :func:`cut_window` turns one pick into the
(6000, 3) E N Z window at 100 Hz the model reads, with the P arrival
``p_position_s`` seconds into it: channel choice, merge, resampling,
rotation. A pick that cannot be used raises :class:`PickError`, one line
naming the station and the pick time.

Where the data are already at 100 Hz, E/N/Z as the inventory says and without
gaps, the window is exactly the raw samples (no detrend, no dtype change), so
the model sees what tester1 sees reading the same trace from STEAD. Only data
that must be resampled are detrended first (the resampler's edges need it).
Band-pass and normalisation are not done here (:mod:`utrans_loc.locate`).

:func:`export_stead` writes STEAD traces as miniSEED, StationXML and a picks
CSV: the worked example of the README and the tests use it.

Must not import keras: reading and checking the inputs needs no backend.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import sys

import numpy as np
import pandas as pd

# The model's window, shared with the data builders in 00_data/ (they import these).
SAMPLING_RATE = 100.0          # the model's input rate (STEAD)
NPTS = 6000                    # window length in samples: 60 s at SAMPLING_RATE
# Where a builder puts P when a longer trace must be cut to NPTS: 10 s into the window.
P_LEAD_SAMPLES = 1000
MIN_SAMPLING_RATE = 20.0       # below: Nyquist under 10 Hz, most of the 1-45 Hz band missing
DEFAULT_CHANNEL_PRIORITY = ("HH", "BH", "EH", "HN")
MAX_GAP_S = 1.0
LANCZOS_A = 20                 # ObsPy: a >= 20 is good up to the Nyquist frequency
# Anti-alias filter before downsampling: zero-phase Butterworth below the new
# Nyquist (50 Hz); the model's band-pass ends at 45 Hz.
ANTIALIAS_HZ = 45.0
ANTIALIAS_CORNERS = 8
RESAMPLE_MARGIN_S = 5.0        # data kept on each side of the window for the resampler's edges
# Data read beyond each end of a window: the resampler's margin and a second to spare
# (pieces are cut at whole records and samples).
READ_MARGIN_S = RESAMPLE_MARGIN_S + 1.0
# Picks of one station whose windows are this close share one read, up to this long a span.
SHARED_READ_GAP_S = 60.0
SHARED_READ_MAX_S = 3600.0
NOMINAL_ORIENTATION = {"E": (90.0, 0.0), "N": (0.0, 0.0), "Z": (None, -90.0)}
ORIENTATION_TOLERANCE_DEG = 1e-6
PICK_COLUMNS = ("network", "station", "p_time")
STATION_COLUMNS = ("network", "station", "latitude", "longitude")


class PickError(ValueError):
    """A pick that cannot be located; the message names the station and the time."""


def pick_label(network, station, p_time):
    """``NET.STA at <ISO time>``: how every message names a pick."""
    return f"{network}.{station} at {p_time}"


# --------------------------------------------------------------------------
# Picks
# --------------------------------------------------------------------------
# Phase hints read as P or S (QuakeML phase_hint, the picks CSV's phase column);
# any other hint is listed in skipped.csv, never guessed.
PHASE_HINTS = {"P": "P", "Pg": "P", "Pn": "P", "Pb": "P",
               "S": "S", "Sg": "S", "Sn": "S", "Sb": "S"}
PICKS_TABLE_COLUMNS = ("network", "station", "location", "time", "phase", "event_id",
                       "p_position_s", "reason")


def phase_of(hint):
    """(phase, reason): ``'P'`` or ``'S'`` and ``''``, or None and why the hint is not used."""
    hint = "" if hint is None else str(hint).strip()
    if hint in PHASE_HINTS:
        return PHASE_HINTS[hint], ""
    accepted = ", ".join(PHASE_HINTS)
    return None, (f"phase hint {hint!r} is neither P nor S (accepted: {accepted})" if hint else
                  f"no phase hint (accepted: {accepted})")


def read_picks(path):
    """Picks from a CSV or an event file ObsPy reads (QuakeML, ...), with their phase.

    CSV: columns ``network, station, p_time`` (or ``time``; ISO 8601, UTC
    unless the time says otherwise), optional ``phase`` (:data:`PHASE_HINTS`;
    ``P`` when the column or the cell is empty), ``event_id``, ``location``
    (only that location code is used; empty: any) and ``p_position_s`` (a P
    pick's position in the window, overriding the run's). Event file: every
    pick, its phase from its phase hint (else from an Arrival that refers to
    it), one P and one S pick per event and station (later ones are listed as
    not used), ``event_id`` a readable form of the event's resource id
    (:func:`readable_ids`).

    Returns
    -------
    pandas.DataFrame
        ``network, station, location (str or None), time (UTCDateTime),
        phase ('P', 'S' or None), event_id (str), p_position_s (float, NaN:
        the run's), reason`` (why the pick cannot be used, '' when it can),
        one row per pick, in file order. Picks without an event id get their
        own (``NET.STA_<time>``).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"picks file not found: {path}")
    if _looks_like_csv(path, "p_time", "time"):
        picks = _picks_from_csv(path)
    else:
        picks = _picks_from_events(path)
    if not len(picks):
        raise ValueError(f"{path}: no picks")
    # object columns keep None: pandas' str dtype would turn a missing code into NaN
    # (a float, and truthy) where some rows have one.
    for column in ("location", "phase"):
        picks[column] = pd.Series([v if isinstance(v, str) else None for v in picks[column]],
                                  index=picks.index, dtype=object)
    own = picks["event_id"] == ""
    picks.loc[own, "event_id"] = [f"{n}.{s}_{t.strftime('%Y%m%dT%H%M%S.%fZ')}" for n, s, t in
                                  zip(picks.loc[own, "network"], picks.loc[own, "station"],
                                      picks.loc[own, "time"])]
    return picks.reset_index(drop=True)


def _looks_like_csv(path, *columns):
    """True when the first line of ``path`` is a CSV header naming one of ``columns``."""
    with open(path, "rb") as fh:
        head = fh.readline(4096).decode("utf8", "replace")
    return bool(set(columns) & {c.strip().strip('"') for c in head.split(",")})


def _picks_from_csv(path):
    from obspy import UTCDateTime

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    time_column = "p_time" if "p_time" in table.columns else "time"
    missing = [c for c in ("network", "station", time_column) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: picks CSV lacks column(s) {', '.join(missing)} (needs "
                         f"{', '.join(PICK_COLUMNS)}; optional phase, event_id, location, "
                         "p_position_s)")
    times, positions = [], []
    for row, (text, position) in enumerate(zip(
            table[time_column], table.get("p_position_s", [""] * len(table))), start=2):
        try:
            times.append(UTCDateTime(text.strip()))
        except (TypeError, ValueError):
            raise ValueError(f"{path}, line {row}: {time_column} {text!r} is not an ISO 8601 "
                             "time (e.g. 2020-01-31T12:00:05.25Z)") from None
        try:
            positions.append(float(position) if position.strip() else math.nan)
        except ValueError:
            raise ValueError(f"{path}, line {row}: p_position_s {position!r} is not a "
                             "number") from None
    hints = table["phase"].str.strip() if "phase" in table else [""] * len(table)
    phases = [phase_of(hint) if hint else ("P", "") for hint in hints]
    location = table["location"].str.strip() if "location" in table else [""] * len(table)
    return pd.DataFrame({
        "network": table["network"].str.strip(), "station": table["station"].str.strip(),
        "location": [loc if loc else None for loc in location],
        "time": times, "phase": [phase for phase, _ in phases],
        "event_id": table["event_id"].str.strip() if "event_id" in table else "",
        "p_position_s": positions, "reason": [reason for _, reason in phases]},
        columns=PICKS_TABLE_COLUMNS)


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
    from obspy import read_events

    try:
        catalog = read_events(path)
    except Exception as err:   # ObsPy raises many types for a file it cannot parse
        raise ValueError(f"{path}: neither a picks CSV (columns {', '.join(PICK_COLUMNS)}) nor an "
                         f"event file ObsPy reads ({type(err).__name__}: {err})") from None
    rows = []
    for event, event_id in zip(catalog, readable_ids(e.resource_id for e in catalog)):
        # A pick without a hint may still be named by an Arrival of an Origin.
        arrival_phase = {str(a.pick_id): a.phase for origin in event.origins
                         for a in origin.arrivals if a.pick_id is not None and a.phase}
        seen = set()
        for pick in event.picks:
            wid = pick.waveform_id
            network = (wid.network_code or "") if wid is not None else ""
            station = (wid.station_code or "") if wid is not None else ""
            hint = pick.phase_hint or arrival_phase.get(str(pick.resource_id))
            phase, reason = phase_of(hint)
            if not station:
                phase, reason = None, "no station code (waveform_id)"
            elif pick.time is None:
                phase, reason = None, "no pick time"
            elif phase is not None and (network, station, phase) in seen:
                phase, reason = None, (f"another {phase} pick of {network}.{station} comes first "
                                       "in this event (one per phase and station is used)")
            if phase is not None:
                seen.add((network, station, phase))
            rows.append({"network": network, "station": station,
                         "location": (wid.location_code or None) if wid is not None else None,
                         "time": pick.time, "phase": phase, "event_id": event_id,
                         "p_position_s": math.nan, "reason": reason})
    return pd.DataFrame(rows, columns=PICKS_TABLE_COLUMNS)


# --------------------------------------------------------------------------
# Stations
# --------------------------------------------------------------------------
class Stations:
    """Station coordinates and channel orientations at a time.

    From an ObsPy Inventory (StationXML) or a coordinates table (CSV, no
    orientations: channels must then be E/N/Z).
    """

    def __init__(self, path, inventory=None, table=None):
        self.path, self.inventory, self.table = str(path), inventory, table

    def coordinates(self, network, station, time):
        """(latitude, longitude, elevation_m) of the station at ``time``; PickError if absent."""
        if self.table is not None:
            rows = self.table[(self.table["network"] == network) &
                              (self.table["station"] == station)]
            if len(rows):
                row = rows.iloc[0]
                return float(row["latitude"]), float(row["longitude"]), float(row["elevation"])
        else:
            for net in self.inventory.select(network=network, station=station, time=time):
                for sta in net.stations:
                    if net.code == network and sta.code == station:
                        return float(sta.latitude), float(sta.longitude), float(sta.elevation or 0)
        raise PickError(f"{pick_label(network, station, time)}: station not in the inventory "
                        f"{self.path}")

    def orientation(self, seed_id, time):
        """(azimuth, dip) in degrees of a channel at ``time``; None where unknown."""
        if self.inventory is None:
            return None
        network, station, location, channel = seed_id.split(".")
        for net in self.inventory.select(network=network, station=station, location=location,
                                         channel=channel, time=time):
            for sta in net.stations:
                for cha in sta.channels:
                    if (cha.location_code, cha.code) == (location, channel) and \
                            cha.azimuth is not None and cha.dip is not None:
                        return float(cha.azimuth), float(cha.dip)
        return None


def read_stations(path):
    """Station metadata: StationXML (any inventory ObsPy reads) or a CSV
    ``network,station,latitude,longitude`` (optional ``elevation``, m)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"inventory file not found: {path}")
    if _looks_like_csv(path, "latitude"):
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in STATION_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: station CSV lacks column(s) {', '.join(missing)}")
        for col in ("network", "station"):
            table[col] = table[col].str.strip()
        if "elevation" not in table:
            table["elevation"] = "0"
        table["elevation"] = table["elevation"].replace("", "0")
        try:
            for col in ("latitude", "longitude", "elevation"):
                table[col] = table[col].replace("", "nan").astype(float)
        except ValueError as err:
            raise ValueError(f"{path}: station coordinates must be numbers ({err})") from None
        return Stations(path, table=table)
    from obspy import read_inventory

    try:
        inventory = read_inventory(path)
    except Exception as err:   # ObsPy raises many types for a file it cannot parse
        raise ValueError(f"{path}: neither StationXML nor a CSV with columns "
                         f"{', '.join(STATION_COLUMNS)} ({type(err).__name__}: {err})") from None
    return Stations(path, inventory=inventory)


# --------------------------------------------------------------------------
# Waveforms
# --------------------------------------------------------------------------
def waveform_files(spec):
    """The files of a folder (not its subfolders), or of a glob (``**`` recursive)."""
    spec = str(spec)
    if os.path.isdir(spec):
        names = [os.path.join(spec, n) for n in sorted(os.listdir(spec)) if not n.startswith(".")]
    else:
        names = sorted(glob.glob(spec, recursive=True))
    names = [n for n in names if os.path.isfile(n)]
    if not names:
        raise FileNotFoundError(f"no waveform files found at {spec} (a folder or a glob such as "
                                "'data/*.mseed')")
    return names


def _one_line(err):
    """A reader's message on one line (some span several)."""
    return " ".join(str(err).split())


class WaveformReadError(ValueError):
    """Data that could not be read for a span (the message names the file or archive)."""


class WaveformFiles:
    """Waveform files (folder or glob) indexed by their headers, read by time span.

    The index holds, per (network, station), each trace's file, start and end
    (ObsPy reads the headers without the samples); :meth:`read` then reads
    only the files that overlap a span, and only that span of them (for
    miniSEED ObsPy finds the records by bisection). Files ObsPy cannot read
    (a README, the StationXML in the same folder) are skipped, one warning
    naming how many and the first.
    """

    def __init__(self, spec):
        from obspy import read

        self.spec = str(spec)
        self.where = f"the waveform files {self.spec}"
        self.index, unreadable = {}, []
        for name in waveform_files(self.spec):
            try:
                stream = read(name, headonly=True)
            except Exception as err:   # ObsPy raises many types for a file it cannot parse
                unreadable.append(f"{name} ({type(err).__name__})")
                continue
            for tr in stream:
                self.index.setdefault((tr.stats.network, tr.stats.station), []).append(
                    (name, tr.stats.starttime, tr.stats.endtime))
        if unreadable:
            print(f"warning: skipped {len(unreadable)} file(s) ObsPy cannot read as waveforms, "
                  f"first: {unreadable[0]}", file=sys.stderr)

    def read(self, network, station, start, end):
        """The station's traces within ``start`` - ``end`` (every channel and location)."""
        from obspy import read

        entries = self.index.get((network, station), [])
        names = dict.fromkeys(name for name, first, last in entries
                              if first <= end and last >= start)
        traces = []
        for name in names:
            try:
                stream = read(name, starttime=start, endtime=end)
            except Exception as err:   # ObsPy raises many types for a file it cannot parse
                raise WaveformReadError(f"cannot read {start} - {end} of {name} "
                                        f"({type(err).__name__}: {_one_line(err)})") from None
            traces += [tr for tr in stream if tr.stats.npts and
                       (tr.stats.network, tr.stats.station) == (network, station)]
        return traces

    def no_data(self, network, station, window_start, window_end):
        """Why a window found no data: no files of the station, or the nearest data."""
        entries = self.index.get((network, station), [])
        if not entries:
            return f"no waveforms for this station in {self.where}"
        before = [last for _, first, last in entries if first <= window_start]
        after = [first for _, first, last in entries if last >= window_end]
        near = "; ".join(n for n in (f"data end at {max(before)}" if before else "",
                                     f"data start at {min(after)}" if after else "") if n)
        return (f"window {window_start} - {window_end} is outside the data of {network}."
                f"{station} in {self.where} ({near or 'no data around it'})")


class SDSArchive:
    """An SDS archive (``YEAR/NET/STA/CHAN.D/NET.STA.LOC.CHAN.D.YEAR.DOY``) read by time span
    through ObsPy's :class:`obspy.clients.filesystem.sds.Client`."""

    def __init__(self, root):
        from obspy.clients.filesystem.sds import Client

        self.root = check_sds_root(root)
        self.where = f"the SDS archive {self.root}"
        self.client = Client(self.root)

    def read(self, network, station, start, end):
        """The station's traces within ``start`` - ``end`` (every channel and location);
        pieces are not merged here (:func:`cut_window` merges as for files)."""
        try:
            stream = self.client.get_waveforms(network, station, "*", "*", start, end,
                                               merge=None)
        except Exception as err:   # ObsPy raises many types for a file it cannot parse
            raise WaveformReadError(f"cannot read {network}.{station} {start} - {end} from "
                                    f"{self.where} ({type(err).__name__}: {_one_line(err)})"
                                    ) from None
        return [tr for tr in stream if tr.stats.npts]

    def no_data(self, network, station, window_start, window_end):
        """Why a window found no data: no files of the station, or none for that time."""
        if not self.client.has_data(network, station, "*", "*"):
            return f"no waveforms for this station in {self.where}"
        return (f"window {window_start} - {window_end} is outside the data of {network}."
                f"{station} in {self.where} (no data around it)")


def check_sds_root(root):
    """``root`` (str) when it is a folder; else a one-line error naming it."""
    root = str(root)
    if not os.path.isdir(root):
        raise ValueError(f"--input_sds {root}: not a folder (the root of an SDS archive, "
                         "YEAR/NET/STA/CHAN.D/NET.STA.LOC.CHAN.D.YEAR.DOY)")
    return root


def check_waveform_options(input_waveforms=None, input_sds=None):
    """Exactly one of the two given, and ``input_sds`` a folder; else a one-line error."""
    if (input_waveforms is None) == (input_sds is None):
        raise ValueError("give exactly one of --input_waveforms (a folder or glob of waveform "
                         "files) and --input_sds (the root of an SDS archive)"
                         + ("" if input_waveforms is None else f"; got both: {input_waveforms} "
                            f"and {input_sds}"))
    if input_sds is not None:
        check_sds_root(input_sds)


def open_waveforms(input_waveforms=None, input_sds=None):
    """The waveform source of the run: files (:class:`WaveformFiles`) or an SDS archive
    (:class:`SDSArchive`); exactly one of the two must be given."""
    check_waveform_options(input_waveforms, input_sds)
    return WaveformFiles(input_waveforms) if input_sds is None else SDSArchive(input_sds)


def read_spans(spans, max_gap_s=SHARED_READ_GAP_S, max_length_s=SHARED_READ_MAX_S):
    """Group time spans so that spans close in time share one read.

    ``spans``: (start, end, item) tuples of one station. Sorted by start,
    a span joins the group before it when it starts at most ``max_gap_s``
    after the group's end and the group stays within ``max_length_s``.

    Returns
    -------
    list of (start, end, list of item)
    """
    groups = []
    for start, end, item in sorted(spans, key=lambda s: s[0]):
        if groups and start - groups[-1][1] <= max_gap_s and \
                max(end, groups[-1][1]) - groups[-1][0] <= max_length_s:
            first, last, items = groups[-1]
            groups[-1] = (first, max(last, end), items + [item])
        else:
            groups.append((start, end, [item]))
    return groups


@dataclasses.dataclass
class Window:
    """One pick's model window and how it was made."""

    data: np.ndarray          # (npts, 3) E, N, Z; raw dtype when untouched
    start: object             # UTCDateTime of the first sample
    channels: tuple           # the three channel codes used
    location: str
    sampling_rate_in: tuple   # input rate of each channel (Hz)
    resampled: bool
    rotated: bool


def cut_window(traces, network, station, p_time, p_position_s, stations, npts=NPTS,
               channel_priority=DEFAULT_CHANNEL_PRIORITY, max_gap_s=MAX_GAP_S, location=None):
    """The (npts, 3) E N Z window at 100 Hz of one pick, P at ``p_position_s``.

    Channels: the first band+instrument code of ``channel_priority`` (e.g.
    'HH') with three components that gives a window; others are not used.
    Per component: gaps inside the window up to ``max_gap_s`` are
    interpolated (ObsPy merge), longer ones are an error. Data at 100 Hz are
    cut at the nearest sample (at most half a sample from the asked start);
    other rates (at least :data:`MIN_SAMPLING_RATE`) are detrended, low-passed
    if downsampled, and Lanczos-interpolated onto the exact 100 Hz grid of the
    window (up to one input sample beyond either end of the data is filled
    with the edge value). Horizontals not E/N, or oriented otherwise than the
    inventory's nominal E/N/Z, are rotated to E/N/Z (``rotate2zne``).

    Parameters
    ----------
    traces : list of obspy Trace
        The station's traces around the window (``read`` of
        :class:`WaveformFiles` or :class:`SDSArchive`).
    network, station : str
    p_time : obspy.UTCDateTime
    p_position_s : float
        Seconds from the window start to the P pick.
    stations : Stations
        Orientation of the channels (and must know the station).
    npts : int
        Window length in samples at 100 Hz.
    channel_priority : sequence of str
        Band+instrument codes, most preferred first.
    max_gap_s : float
        Longest gap inside the window that is interpolated.
    location : str or None
        Only this location code (None: any, '' first).

    Returns
    -------
    Window

    Raises
    ------
    PickError
        No usable channels, fewer than 3 components, a long gap, the window
        outside the data, a sampling rate that cannot be resampled, missing
        orientations: one line naming the station and time.
    """
    label = pick_label(network, station, p_time)
    if not traces:
        raise PickError(f"{label}: no waveforms for this station")
    groups = {}
    for tr in traces:
        cha, loc = tr.stats.channel, tr.stats.location
        if len(cha) == 3 and cha[:2] in channel_priority and (location is None or loc == location):
            groups.setdefault((channel_priority.index(cha[:2]), loc, cha[:2]), []).append(tr)
    if not groups:
        found = sorted({f"{tr.stats.location}.{tr.stats.channel}".lstrip(".") for tr in traces})
        raise PickError(f"{label}: no {'/'.join(channel_priority)} channels "
                        f"{'' if location is None else f'at location {location!r} '}(found: "
                        f"{', '.join(found[:8])}); see --channel_priority")
    window_start = p_time - p_position_s
    errors = []
    for key in sorted(groups):
        _, loc, band = key
        try:
            return _window_from(groups[key], label, loc, window_start, npts, stations, max_gap_s)
        except PickError as err:
            errors.append((f"{loc}.{band}".lstrip("."), str(err)))
    first = errors[0][1]
    if len(errors) > 1:
        first += "; also tried " + ", ".join(f"{code}: {msg.split(': ', 1)[-1]}"
                                             for code, msg in errors[1:])
    raise PickError(first)


def _components(traces, label, code):
    """The three component letters to use, e.g. ('E', 'N', 'Z') or ('1', '2', 'Z')."""
    present = sorted({tr.stats.channel[2] for tr in traces})
    for wanted in (("E", "N", "Z"), ("1", "2", "Z")):
        if set(wanted) <= set(present):
            return wanted
    if len(present) == 3:
        return tuple(present)
    raise PickError(f"{label}: {code} has {len(present)} component(s) ({', '.join(present)}) "
                    "in the data around the window, 3 are needed (E/N/Z, 1/2/Z or three "
                    "oriented in the inventory)")


def _window_from(traces, label, loc, window_start, npts, stations, max_gap_s):
    code = f"{loc}.{traces[0].stats.channel[:2]}".lstrip(".")
    letters = _components(traces, label, code)
    window_end = window_start + (npts - 1) / SAMPLING_RATE
    columns, rates, resampled, ids = [], [], False, []
    for letter in letters:
        parts = [tr for tr in traces if tr.stats.channel[2] == letter]
        tr = _merged(parts, label, window_start, window_end, max_gap_s)
        ids.append(tr.id)
        rate = float(tr.stats.sampling_rate)
        rates.append(rate)
        if math.isclose(rate, SAMPLING_RATE, rel_tol=1e-9):
            columns.append(_cut(tr, label, window_start, npts))
        else:
            columns.append(_resampled(tr, label, window_start, window_end, npts))
            resampled = True
    # A masked sample (left by a reader or a merge) would be an arbitrary number once stacked.
    columns = [np.ma.filled(c.astype(np.float64), np.nan) if np.ma.isMaskedArray(c) else c
               for c in columns]
    if not all(np.isfinite(c).all() for c in columns):
        raise PickError(f"{label}: NaN, Inf or masked samples in the window of "
                        f"{', '.join(ids)}")
    data, rotated = _to_enz(columns, letters, ids, stations, label, window_start)
    return Window(data=data, start=window_start, channels=tuple(i.split(".")[-1] for i in ids),
                  location=loc, sampling_rate_in=tuple(rates), resampled=resampled,
                  rotated=rotated)


def _merged(parts, label, window_start, window_end, max_gap_s):
    """One trace of a component around the window; long gaps inside it are errors."""
    from obspy import Stream

    seed_id = parts[0].id
    rates = {float(tr.stats.sampling_rate) for tr in parts}
    if len(rates) > 1:
        raise PickError(f"{label}: {seed_id} has pieces at different sampling rates "
                        f"({', '.join(f'{r:g}' for r in sorted(rates))} Hz)")
    rate = rates.pop()
    if not (math.isfinite(rate) and rate >= MIN_SAMPLING_RATE):
        raise PickError(f"{label}: sampling rate {rate:g} Hz of {seed_id} cannot be resampled to "
                        f"{SAMPLING_RATE:g} Hz (below {MIN_SAMPLING_RATE:g} Hz most of the "
                        "1-45 Hz band the model reads is missing)")
    margin = RESAMPLE_MARGIN_S if not math.isclose(rate, SAMPLING_RATE, rel_tol=1e-9) else 1.0
    near = [tr for tr in parts if tr.stats.endtime >= window_start - margin and
            tr.stats.starttime <= window_end + margin]
    if not near:
        raise _outside(label, seed_id, window_start, window_end, parts)
    if len(near) == 1:
        return near[0]
    # Slicing copies the header (ObsPy's bookkeeping): only the few pieces near the window.
    stream = Stream([tr.slice(window_start - margin, window_end + margin) for tr in near])
    stream.traces = [tr for tr in stream if tr.stats.npts]
    for gap in stream.get_gaps():
        gap_start, gap_end, duration = gap[4], gap[5], gap[6]
        if duration > max_gap_s and gap_start < window_end and gap_end > window_start:
            raise PickError(f"{label}: gap of {duration:.2f} s in {seed_id} from {gap_start} "
                            f"inside the window (longer than {max_gap_s:g} s)")
    if len(stream) > 1:
        stream = stream.copy()          # merge makes new arrays; never touch the caller's traces
        if len({tr.data.dtype for tr in stream}) > 1:
            # ObsPy joins only pieces of one sample type (e.g. a day file of int32 counts
            # beside a float64 one); float64 holds int32 and float32 samples exactly.
            for tr in stream:
                tr.data = tr.data.astype(np.float64)
        try:
            stream.merge(method=1, fill_value="interpolate")
        except Exception as err:   # ObsPy raises a bare Exception for pieces it cannot join
            raise PickError(f"{label}: cannot merge the pieces of {seed_id} ({err})") from None
    return stream[0]


def _outside(label, seed_id, window_start, window_end, traces):
    """The error of a window the data do not cover, with the nearest data named.

    A piece of data lying within the window (both its ends inside, so neither
    was cut by a windowed read) means the window is longer than the data
    there: said with both spans.
    """
    length = window_end - window_start
    inside = sorted((tr.stats.starttime, tr.stats.endtime) for tr in traces
                    if tr.stats.starttime >= window_start and tr.stats.endtime <= window_end)
    if inside:
        spans = "; ".join(f"{first} - {last}, {last - first:.2f} s" for first, last in inside[:3])
        more = ", ..." if len(inside) > 3 else ""
        return PickError(f"{label}: window {window_start} - {window_end} ({length:.2f} s) is "
                         f"longer than the data of {seed_id} there ({spans}{more})")
    before = [tr.stats.endtime for tr in traces if tr.stats.starttime <= window_start]
    after = [tr.stats.starttime for tr in traces if tr.stats.endtime >= window_end]
    near = [f"data end at {max(before)}" if before else "",
            f"data start at {min(after)}" if after else ""]
    near = "; ".join(n for n in near if n) or "no data around it"
    return PickError(f"{label}: window {window_start} - {window_end} is outside the data of "
                     f"{seed_id} ({near})")


def _cut(tr, label, window_start, npts):
    """Raw samples of the window at the nearest sample (a view, dtype kept)."""
    first = int(round((window_start - tr.stats.starttime) * tr.stats.sampling_rate))
    if first < 0 or first + npts > tr.stats.npts:
        raise _outside(label, tr.id, window_start, window_start + (npts - 1) / SAMPLING_RATE, [tr])
    return tr.data[first:first + npts]


def _resampled(tr, label, window_start, window_end, npts):
    """The window interpolated onto the exact 100 Hz grid from another rate."""
    delta = tr.stats.delta
    if window_start < tr.stats.starttime - delta or window_end > tr.stats.endtime + delta:
        raise _outside(label, tr.id, window_start, window_end, [tr])
    seg = tr.slice(window_start - RESAMPLE_MARGIN_S, window_end + RESAMPLE_MARGIN_S).copy()
    _prepare_for_interpolation(seg)
    if window_start < seg.stats.starttime:
        seg.data = np.concatenate([seg.data[:1], seg.data])
        seg.stats.starttime -= delta
    if window_end > seg.stats.endtime:
        seg.data = np.concatenate([seg.data, seg.data[-1:]])
    seg.interpolate(SAMPLING_RATE, method="lanczos", a=LANCZOS_A, starttime=window_start,
                    npts=npts)
    return seg.data


def _prepare_for_interpolation(tr):
    """float64, detrended, and low-passed below the new Nyquist when downsampling."""
    tr.data = np.require(tr.data, dtype=np.float64)
    # A trend left in makes a step at the edges, which the interpolation rings on.
    tr.detrend("linear")
    if tr.stats.sampling_rate > SAMPLING_RATE:
        tr.filter("lowpass", freq=ANTIALIAS_HZ, corners=ANTIALIAS_CORNERS, zerophase=True)


def samples_at_100hz(n, sampling_rate):
    """How many 100 Hz samples fit in ``n`` samples at ``sampling_rate`` (first one shared)."""
    return int(math.floor((n - 1) * SAMPLING_RATE / sampling_rate + 1e-6)) + 1


def resample_to_100hz(samples, sampling_rate, npts=None):
    """One channel (1-D array at ``sampling_rate``) on the 100 Hz grid from its first sample.

    Rates with an exact small ratio to 100 Hz (20, 40, 50, 200, 250, 500 Hz, ...)
    go through scipy's polyphase resampler (``resample_poly``, Kaiser-windowed
    anti-alias FIR, edges padded along the linear trend), about 200 times
    faster than Lanczos interpolation; any other rate through
    :func:`interpolate_to_grid`. Returns float64, ``npts`` samples (default:
    all that fit in the data).
    """
    from fractions import Fraction

    from scipy.signal import resample_poly

    data = np.asarray(samples, dtype=np.float64)
    npts = samples_at_100hz(len(data), sampling_rate) if npts is None else npts
    ratio = Fraction(SAMPLING_RATE / float(sampling_rate)).limit_denominator(100)
    if abs(float(ratio) - SAMPLING_RATE / sampling_rate) > 1e-12:
        return interpolate_to_grid(data, sampling_rate, npts)
    out = resample_poly(data, ratio.numerator, ratio.denominator, padtype="line")
    if len(out) < npts:   # never more than a sample short; hold the last value
        out = np.concatenate([out, np.repeat(out[-1:], npts - len(out))])
    return out[:npts]


def interpolate_to_grid(samples, sampling_rate, npts=None):
    """One channel (1-D array at ``sampling_rate``) onto the 100 Hz grid from its first
    sample: the locator's resampler (detrend, anti-alias low-pass, ObsPy Lanczos), for
    arrays (the SeisBench converter). Returns float64, ``npts`` samples (default: all
    that fit in the data)."""
    from obspy import Trace

    tr = Trace(np.asarray(samples), header={"sampling_rate": float(sampling_rate)})
    _prepare_for_interpolation(tr)
    npts = samples_at_100hz(tr.stats.npts, sampling_rate) if npts is None else npts
    tr.interpolate(SAMPLING_RATE, method="lanczos", a=LANCZOS_A, starttime=tr.stats.starttime,
                   npts=npts)
    return tr.data


def _to_enz(columns, letters, ids, stations, label, time):
    """(npts, 3) E, N, Z and whether a rotation was applied."""
    orientations = [stations.orientation(seed_id, time) for seed_id in ids]
    if letters == ("E", "N", "Z") and all(
            o is None or _nominal(o, letter) for o, letter in zip(orientations, letters)):
        return np.stack(columns, axis=1), False
    missing = [seed_id for seed_id, o in zip(ids, orientations) if o is None]
    if stations.inventory is None:
        raise PickError(f"{label}: channels {', '.join(ids)} are not E/N/Z and the CSV inventory "
                        f"{stations.path} has no orientations to rotate them (use StationXML)")
    if missing:
        raise PickError(f"{label}: no azimuth/dip for {', '.join(missing)} in the inventory "
                        f"{stations.path}; needed to rotate to E/N/Z")
    from obspy.signal.rotate import rotate2zne

    args = []
    for column, (azimuth, dip) in zip(columns, orientations):
        args += [np.asarray(column, dtype=np.float64), azimuth, dip]
    try:
        z, n, e = rotate2zne(*args)
    except ValueError as err:
        raise PickError(f"{label}: cannot rotate {', '.join(ids)} to E/N/Z ({err})") from None
    return np.stack([e, n, z], axis=1), True


def _nominal(orientation, letter):
    azimuth, dip = orientation
    want_azimuth, want_dip = NOMINAL_ORIENTATION[letter]
    if abs(dip - want_dip) > ORIENTATION_TOLERANCE_DEG:
        return False
    return want_azimuth is None or abs((azimuth - want_azimuth + 180) % 360 - 180) <= \
        ORIENTATION_TOLERANCE_DEG


# --------------------------------------------------------------------------
# STEAD traces as files (worked example, tests)
# --------------------------------------------------------------------------
def export_stead(stead_hdf5, out_dir, trace_names=None, exact_windows=True):
    """Write STEAD traces as miniSEED files, a StationXML and a picks CSV.

    One miniSEED file per trace (``<trace_name>.mseed``: channels
    ``<receiver_type>E/N/Z``, location code empty, float32 samples as
    stored, start time ``trace_start_time``), ``stations.xml`` (each
    station's coordinates and E/N/Z channels, azimuth 90/0/0, dip 0/0/-90) and
    ``picks.csv`` (``network, station, p_time, event_id``: the P pick at
    ``p_arrival_sample`` / 100 s after the trace start, the STEAD
    ``source_id``).

    Parameters
    ----------
    stead_hdf5 : str
        A STEAD file (``merge.hdf5``, ``chunkN.hdf5`` or the older layout).
    out_dir : str
        A folder that does not exist yet.
    trace_names : sequence of str, optional
        The traces to write (default: every earthquake trace in the file).
    exact_windows : bool
        Add a ``p_position_s`` column (``p_arrival_sample`` / 100), so the
        locator cuts exactly the STEAD window.

    Returns
    -------
    dict
        ``waveforms`` (folder), ``inventory``, ``picks`` (paths).
    """
    from obspy import UTCDateTime

    from utrans_loc import files
    from utrans_loc.traces import H5Reader, LAYOUT_COLLECTED, STEAD_OLD_GROUPS

    reader = H5Reader(stead_hdf5)
    try:
        if reader.layout == LAYOUT_COLLECTED:
            raise ValueError(f"{stead_hdf5}: not a STEAD file (no data/ or earthquake/local/ "
                             "group); DataCollected files lack the trace start times")
        if trace_names is None:
            group = reader.file["data" if "data" in reader.file else STEAD_OLD_GROUPS[0]]
            trace_names = [n for n in group if _text(group[n].attrs.get("trace_category"))
                           != "noise"]
        files.check_new_output_dir(out_dir, hint="choose another folder")
        wave_dir = os.path.join(out_dir, "waveforms")
        os.makedirs(wave_dir)
        picks, stations = [], {}
        for name in trace_names:
            node = reader.group(name)
            attrs = node.attrs
            net, sta = _text(attrs.get("network_code")), _text(attrs.get("receiver_code"))
            band = _text(attrs.get("receiver_type"))
            start = UTCDateTime(_text(attrs.get("trace_start_time")))
            data = np.asarray(node)
            write_enz_mseed(os.path.join(wave_dir, f"{name}.mseed"), data, net, sta, band, start)
            p_s = float(np.asarray(attrs["p_arrival_sample"]).ravel()[0]) / SAMPLING_RATE
            pick = {"network": net, "station": sta,
                    "p_time": (start + p_s).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "event_id": _text(attrs.get("source_id"))}
            if exact_windows:
                pick["p_position_s"] = p_s
            picks.append(pick)
            stations.setdefault((net, sta), (float(attrs["receiver_latitude"]),
                                             float(attrs["receiver_longitude"]),
                                             float(attrs.get("receiver_elevation_m", 0.0)),
                                             set()))[3].add(band)
    finally:
        reader.close()
    inventory_path = os.path.join(out_dir, "stations.xml")
    write_enz_inventory(stations, inventory_path, "utrans_loc.waveforms.export_stead")
    picks_path = os.path.join(out_dir, "picks.csv")
    files.atomic_write(picks_path, lambda fh: pd.DataFrame(picks).to_csv(fh, index=False))
    return {"waveforms": wave_dir, "inventory": inventory_path, "picks": picks_path}


def write_enz_mseed(path, data, network, station, band, start):
    """One miniSEED file of a (samples, 3) E/N/Z array at 100 Hz from ``start``
    (channels ``<band>E/N/Z``, empty location code), written atomically."""
    from obspy import Stream, Trace

    from utrans_loc import files

    # astype gives the '=' (native) byte order: ObsPy 1.5's miniSEED writer
    # byte-swaps any other mark, and h5py marks little-endian data '<'.
    traces = [Trace(np.asarray(data)[:, i].astype(np.float32), header={
        "network": network, "station": station, "location": "", "channel": band + comp,
        "sampling_rate": SAMPLING_RATE, "starttime": start})
        for i, comp in enumerate("ENZ")]
    files.atomic_save(path, lambda tmp: Stream(traces).write(tmp, format="MSEED"))


def write_sds(traces, root, **write_options):
    """Write traces as an SDS archive under ``root`` (a new folder), one miniSEED file
    per channel and day (ObsPy's ``Client.FMTSTR`` layout, type D).

    Traces crossing midnight are split there at the sample (no sample written
    twice); the pieces of one channel and day go to one file.
    ``write_options`` go to ObsPy's miniSEED writer (e.g. ``encoding``,
    ``reclen``). Returns the paths written.
    """
    from obspy import Stream, UTCDateTime
    from obspy.clients.filesystem.sds import Client

    from utrans_loc import files

    files.check_new_output_dir(str(root), hint="choose another folder")
    pieces = {}
    for tr in traces:
        start, rate, n = tr.stats.starttime, tr.stats.sampling_rate, tr.stats.npts
        first = 0
        while first < n:
            t = start + first / rate
            midnight = UTCDateTime(t.year, t.month, t.day) + 86400
            last = min(n, int(math.ceil(round((midnight - start) * rate, 6))))
            piece = tr.__class__(tr.data[first:last], header={
                key: tr.stats[key] for key in ("network", "station", "location", "channel",
                                               "sampling_rate", "mseed") if key in tr.stats})
            piece.stats.starttime = t
            name = Client.FMTSTR.format(
                network=tr.stats.network, station=tr.stats.station, location=tr.stats.location,
                channel=tr.stats.channel, sds_type="D", year=t.year, doy=t.julday)
            pieces.setdefault(os.path.join(str(root), name), []).append(piece)
            first = last
    for path, parts in pieces.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.atomic_save(path, lambda tmp, parts=parts: Stream(parts).write(
            tmp, format="MSEED", **write_options))
    return sorted(pieces)


def write_enz_inventory(stations, path, source):
    """StationXML of ``{(network, station): (lat, lon, elevation_m, bands)}``, each
    band with E/N/Z channels (azimuth 90/0/0, dip 0/0/-90), written atomically."""
    from obspy.core.inventory import Channel, Inventory, Network, Station

    from utrans_loc import files

    networks = {}
    for (net, sta), (lat, lon, elev, bands) in sorted(stations.items()):
        channels = [Channel(code=band + comp, location_code="", latitude=lat, longitude=lon,
                            elevation=elev, depth=0.0, azimuth=azimuth, dip=dip,
                            sample_rate=SAMPLING_RATE)
                    for band in sorted(bands)
                    for comp, azimuth, dip in (("E", 90.0, 0.0), ("N", 0.0, 0.0),
                                               ("Z", 0.0, -90.0))]
        networks.setdefault(net, []).append(Station(code=sta, latitude=lat, longitude=lon,
                                                    elevation=elev, channels=channels))
    inventory = Inventory(networks=[Network(code=net, stations=s) for net, s in networks.items()],
                          source=source)
    files.atomic_save(path, lambda tmp: inventory.write(tmp, format="STATIONXML"))


def _text(value):
    """An HDF5 text attribute as str ('' when absent)."""
    if isinstance(value, bytes):
        value = value.decode("utf8", "replace")
    return "" if value is None else str(value).strip()
