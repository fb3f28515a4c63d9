"""Pick files to the picks table: a CSV or an event file ObsPy reads (QuakeML, ...).

:func:`read_picks` turns a picks file into one table row per pick, with its P
or S class (:data:`PHASE_HINTS`) or the reason it cannot be used. A pick
that cannot be located raises :class:`PickError`, one line naming the
station and the pick time (:func:`pick_label`), here and in every later
stage.

Must not import keras: reading and checking the inputs needs no backend.
"""

from __future__ import annotations

import math
import os

import pandas as pd

PICK_COLUMNS = ("network", "station", "p_time")


class PickError(ValueError):
    """A pick that cannot be located; the message names the station and the time."""


def pick_label(network, station, p_time):
    """``NET.STA at <ISO time>``: how every message names a pick."""
    return f"{network}.{station} at {p_time}"



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

