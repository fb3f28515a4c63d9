"""The located events out for relocation: a NonLinLoc phase file and a hypoDD phase file.

:func:`write_relocation_files` reads the locator's events.xml back (ObsPy,
:data:`EVENT_CHUNK` events at a time) and writes, from each event's preferred
origin and picks:

- ``events.nlloc_obs``: NonLinLoc's NLLOC_OBS phase file, every event's picks
  in time order, one block per event opened by ``PUBLIC_ID <event resource
  id>`` and closed by a blank line. Each line is written by ObsPy's
  NLLOC_OBS writer (``obspy.io.nlloc``), its Gaussian error the pick's time
  error (else the run's ``pick_std_s`` of its phase), followed by the format's
  PriorWt field: the pick's weight (below).
- ``events.pha``: hypoDD's ``ph2dt`` input (hypoDD manual, Waldhauser 2001,
  USGS Open-File Report 01-113, :data:`HYPODD_MANUAL`): per event a line
  ``#  YR MO DY HR MN SC LAT LON DEP MAG EH EZ RMS ID``, then ``STA TT WGHT
  PHA`` per pick (TT the travel time from the origin time, PHA P or S).
  Written here: ObsPy 1.5's HYPODDPHA writer gives an arrival of time_weight
  0 the weight 1 and passes phase hints such as Pg, which ph2dt does not take.
- ``events_pha_ids.csv``: ``hypodd_id, event_id, public_id``: which event each
  of events.pha's integer ids (1, 2, ... in events.xml's order) is.

A pick's weight is the ``time_weight`` of its Arrival in the preferred origin
(0: a pick the origin did not use), 1 where that Arrival gives none or the
origin has no Arrival for it (the S pick of a single-station origin). Events
without a preferred origin are left out and counted.

Must not import keras: it reads and writes text files only.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os

from utrans_loc import pick_formats
from utrans_loc import picks as pick_files

NLLOC_NAME, HYPODD_NAME, HYPODD_IDS_NAME = "events.nlloc_obs", "events.pha", "events_pha_ids.csv"
# QuakeML Events parsed at a time (the catalogue is never held whole).
EVENT_CHUNK = 200
# Waldhauser, F. (2001), hypoDD, USGS Open-File Report 01-113: ph2dt input format.
HYPODD_MANUAL = "https://pubs.usgs.gov/of/2001/0113/"
NLLOC_FORMAT = pick_formats.NLLOC_URL
DEG2KM = 111.19492664455873       # km per degree of a great circle (R = 6371 km)
# The origin time is rounded to 0.1 ms, the precision of both files' seconds.
TIME_STEP_NS = 100_000
INPUT_EVENT_ID = "input event_id: "     # the comment event_output writes on each Event


@dataclasses.dataclass
class RelocationFiles:
    """What :func:`write_relocation_files` wrote."""

    nlloc_obs: str
    pha: str
    ids: str
    n_events: int
    n_picks: int
    n_without_origin: int

    def line(self):
        """The report line."""
        left = (f"; {self.n_without_origin} event(s) without an origin left out"
                if self.n_without_origin else "")
        return (f"relocation files {os.path.basename(self.nlloc_obs)} (NonLinLoc) and "
                f"{os.path.basename(self.pha)} (hypoDD ph2dt, ids in "
                f"{os.path.basename(self.ids)}): {self.n_events} event(s), {self.n_picks} "
                f"pick(s){left}")


def write_relocation_files(folder, catalogue, pick_std_s=None, verbose=0):
    """events.nlloc_obs, events.pha and events_pha_ids.csv in ``folder`` from the
    QuakeML ``catalogue`` (the locator's events.xml); returns a :class:`RelocationFiles`.

    ``pick_std_s``: (P, S) time errors (s) written for picks that have none
    (default :data:`utrans_loc.origins.PICK_STD_S`). ``verbose``: print the
    report line.
    """
    if pick_std_s is None:
        from utrans_loc.origins import PICK_STD_S

        pick_std_s = (PICK_STD_S["P"], PICK_STD_S["S"])
    paths = [os.path.join(str(folder), name) for name in (NLLOC_NAME, HYPODD_NAME,
                                                          HYPODD_IDS_NAME)]
    n_events = n_picks = without = 0
    with open(paths[0], "w", encoding="utf-8") as nlloc, \
            open(paths[1], "w", encoding="utf-8") as pha, \
            open(paths[2], "w", encoding="utf-8", newline="") as ids_fh:
        ids = csv.writer(ids_fh)
        ids.writerow(["hypodd_id", "event_id", "public_id"])
        for event in iter_events(catalogue):
            origin = event.preferred_origin()
            if origin is None or origin.time is None or origin.latitude is None \
                    or origin.longitude is None:
                without += 1
                continue
            picks = weighted_picks(event, origin)
            n_events += 1
            n_picks += len(picks)
            nlloc.write(nlloc_obs_block(event, picks, pick_std_s))
            pha.write(pha_block(origin, picks, n_events, _magnitude(event)))
            ids.writerow([n_events, input_event_id(event), str(event.resource_id)])
    written = RelocationFiles(*paths, n_events=n_events, n_picks=n_picks,
                              n_without_origin=without)
    if verbose:
        print(f"locator: {written.line()}")
    return written


def iter_events(path, chunk=EVENT_CHUNK):
    """The Events of a QuakeML file, parsed ``chunk`` at a time (lxml's iterparse
    finds each ``<event>``; ObsPy reads a small document of a chunk of them)."""
    from lxml import etree
    from obspy import read_events

    head = (b'<?xml version="1.0" encoding="utf-8"?>\n'
            b'<q:quakeml xmlns:q="http://quakeml.org/xmlns/quakeml/1.2" '
            b'xmlns="http://quakeml.org/xmlns/bed/1.2">'
            b'<eventParameters publicID="smi:local/utrans_loc/relocation">')
    tail = b"</eventParameters></q:quakeml>"

    def parsed(parts):
        return read_events(io.BytesIO(head + b"".join(parts) + tail), format="QUAKEML")

    parts = []
    for _, element in etree.iterparse(str(path), events=("end",), tag="{*}event",
                                      resolve_entities=False, no_network=True):
        parts.append(etree.tostring(element))
        element.clear()
        while element.getprevious() is not None:
            del element.getparent()[0]
        if len(parts) == chunk:
            yield from parsed(parts)
            parts = []
    if parts:
        yield from parsed(parts)


def weighted_picks(event, origin):
    """(pick, weight) of the event's picks with a time, in time order: the weight is the
    time_weight of the pick's Arrival in ``origin``, 1 where there is none."""
    weights = {str(a.pick_id): a.time_weight for a in origin.arrivals if a.pick_id is not None}
    picks = sorted((p for p in event.picks if p.time is not None), key=lambda p: p.time)
    out = []
    for pick in picks:
        weight = weights.get(str(pick.resource_id))
        out.append((pick, 1.0 if weight is None else float(weight)))
    return out


def _phase(pick):
    """'P' or 'S' (the class of the pick's phase hint), or None."""
    return pick_files.phase_of(pick.phase_hint)[0]


def nlloc_obs_block(event, picks, pick_std_s):
    """One event's NLLOC_OBS block: ``PUBLIC_ID``, a line per pick (ObsPy's writer, then
    PriorWt), a blank line."""
    from obspy.core.event import Catalog, Event, Pick, QuantityError

    lines = [f"PUBLIC_ID {event.resource_id}"]
    for pick, weight in picks:
        error = pick.time_errors.uncertainty if pick.time_errors else None
        if error is None or not math.isfinite(error) or error <= 0:
            error = pick_std_s[1] if _phase(pick) == "S" else pick_std_s[0]
        one = Pick(time=pick.time, phase_hint=pick.phase_hint or "?",
                   waveform_id=pick.waveform_id, onset=pick.onset, polarity=pick.polarity,
                   time_errors=QuantityError(uncertainty=float(error)))
        buf = io.BytesIO()
        Catalog(events=[Event(picks=[one])]).write(buf, format="NLLOC_OBS")
        line = next(text for text in buf.getvalue().decode("utf-8").splitlines()
                    if text.strip() and not text.startswith("PUBLIC_ID"))
        lines.append(f"{line} {weight:9.2e}")
    return "\n".join(lines) + "\n\n"


def _rounded(time):
    from obspy import UTCDateTime

    return UTCDateTime(ns=int(round(time.ns / TIME_STEP_NS)) * TIME_STEP_NS)


def _number(value, scale=1.0):
    """``value`` x ``scale``, 0 where it is missing or not finite (hypoDD's 'unknown')."""
    try:
        value = float(value) * scale
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def _magnitude(event):
    magnitude = event.preferred_magnitude() or (event.magnitudes[0] if event.magnitudes
                                                else None)
    return _number(magnitude.mag) if magnitude is not None else 0.0


def horizontal_error_km(origin):
    """EH of hypoDD: the ellipse's major semi-axis, else the larger of the latitude and
    longitude errors (km); 0 where the origin has none."""
    ellipse = origin.origin_uncertainty
    if ellipse is not None and ellipse.max_horizontal_uncertainty is not None:
        return _number(ellipse.max_horizontal_uncertainty, 1e-3)
    lat = _number(origin.latitude_errors.uncertainty if origin.latitude_errors else None, DEG2KM)
    lon = _number(origin.longitude_errors.uncertainty if origin.longitude_errors else None,
                  DEG2KM * math.cos(math.radians(origin.latitude)))
    return max(lat, lon)


def pha_block(origin, picks, hypodd_id, magnitude=0.0):
    """One event of hypoDD's phase file: its ``#`` line and a ``STA TT WGHT PHA`` line per
    P or S pick (other phases are left out: ph2dt takes P and S)."""
    t = _rounded(origin.time)
    seconds = t.second + t.microsecond * 1e-6
    depth_km = _number(origin.depth, 1e-3)
    ez = _number(origin.depth_errors.uncertainty if origin.depth_errors else None, 1e-3)
    rms = _number(origin.quality.standard_error if origin.quality else None)
    lines = [f"# {t.year:4d} {t.month:2d} {t.day:2d} {t.hour:2d} {t.minute:2d} {seconds:7.4f} "
             f"{origin.latitude:9.5f} {origin.longitude:10.5f} {depth_km:8.3f} "
             f"{magnitude:5.2f} {horizontal_error_km(origin):8.3f} {ez:8.3f} {rms:7.4f} "
             f"{hypodd_id:9d}"]
    for pick, weight in picks:
        phase = _phase(pick)
        if phase is None:
            continue
        station = pick.waveform_id.station_code if pick.waveform_id else "?"
        lines.append(f"{station:<7s} {pick.time - t:10.4f} {weight:6.3f} {phase}")
    return "\n".join(lines) + "\n"


def input_event_id(event):
    """The event id the picks gave (event_output's comment), else the resource id's last
    part."""
    for comment in event.comments:
        if comment.text and comment.text.startswith(INPUT_EVENT_ID):
            return comment.text[len(INPUT_EVENT_ID):]
    return pick_files.readable_ids([event.resource_id])[0]
