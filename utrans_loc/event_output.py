"""The locator's writers: events.csv rows and QuakeML Events, each built once from a Solution.

:func:`event_row` is events.csv's row and :func:`quakeml_event` the QuakeML
Event of one event, both from its :class:`~utrans_loc.solutions.Solution`
and the picks and estimates it was made from. Arrivals are attached to
Picks by pick id (:attr:`Solution.arrivals`), never by position.
:class:`QuakeMLStream` and :class:`CsvStream` write their file a chunk at a
time, so a run holds one chunk of events, not the catalogue.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re

import pandas as pd
from obspy.core.event import (Arrival, Catalog, Comment, Event, Origin, OriginQuality,
                              OriginUncertainty, Pick, QuantityError, ResourceIdentifier,
                              WaveformStreamID)

RESOURCE_PREFIX = "smi:local/utrans_loc"
EVENT_COLUMNS = ("event_id", "latitude", "longitude", "depth_km", "latitude_std_km",
                 "longitude_std_km", "depth_km_std", "origin_time", "origin_time_std_s",
                 "n_stations", "n_p", "n_s", "rms_s", "azimuthal_gap_deg", "method", "flag")
# A 1-sigma ellipse of a 2-D Gaussian holds 1 - exp(-1/2) of it.
ELLIPSE_CONFIDENCE = 100.0 * (1.0 - math.exp(-0.5))


def resource_key(text):
    """``text`` as a part of a QuakeML resource id: itself where every character is
    allowed there, else with the others replaced by ``_`` and a short hash of the
    text added (two ids never meet)."""
    text = str(text)
    safe = re.sub(r"[^A-Za-z0-9_.*()~'-]", "_", text)
    if safe != text or not safe:
        safe += "_" + hashlib.sha256(text.encode("utf8")).hexdigest()[:8]
    return safe


def pick_resource(pick_id):
    return ResourceIdentifier(f"{RESOURCE_PREFIX}/pick/{resource_key(pick_id)}")


def event_row(event_id, solution):
    """events.csv's row of one event (:data:`EVENT_COLUMNS`)."""
    s = solution
    return {"event_id": event_id, "latitude": s.latitude, "longitude": s.longitude,
            "depth_km": s.depth_km, "latitude_std_km": s.latitude_std_km,
            "longitude_std_km": s.longitude_std_km, "depth_km_std": s.depth_km_std,
            "origin_time": s.time,
            "origin_time_std_s": s.time_std_s, "n_stations": s.n_stations, "n_p": s.n_p,
            "n_s": s.n_s, "rms_s": s.rms_s, "azimuthal_gap_deg": s.azimuthal_gap_deg,
            "method": s.method, "flag": s.flag}


def _finite(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def set_errors(origin, lat_std, lon_std, depth_std_km, north_km, east_km, ellipse=None):
    """1-sigma errors in QuakeML's units (degrees, metres) and the horizontal ellipse
    (metres): ``ellipse`` (major km, minor km, azimuth) when given, else north/east.
    An error that is not a finite number (a direction nothing constrains) is left out."""
    origin.latitude_errors = QuantityError(uncertainty=_finite(lat_std))
    origin.longitude_errors = QuantityError(uncertainty=_finite(lon_std))
    depth = _finite(depth_std_km)
    origin.depth_errors = QuantityError(uncertainty=None if depth is None else depth * 1000.0)
    if ellipse is not None and all(_finite(v) is not None for v in ellipse):
        major, minor, azimuth = ellipse
    else:
        north, east = _finite(north_km), _finite(east_km)
        if north is None or east is None:
            return
        major, minor, azimuth = max(north, east), min(north, east), 0.0 if north >= east else 90.0
    origin.origin_uncertainty = OriginUncertainty(
        min_horizontal_uncertainty=minor * 1000.0, max_horizontal_uncertainty=major * 1000.0,
        azimuth_max_horizontal_uncertainty=azimuth, preferred_description="uncertainty ellipse",
        confidence_level=ELLIPSE_CONFIDENCE)


def _seed_id(network, station, location, channel=None):
    return WaveformStreamID(network_code=network, station_code=station,
                            location_code=location or "", channel_code=channel or None)


def quakeml_event(event_id, p_rows, s_rows, solution, context):
    """The QuakeML Event of one event.

    Parameters
    ----------
    event_id : str
    p_rows : pandas.DataFrame
        The event's located P picks (locations.csv's rows plus ``pick_id`` and
        ``phase_hint``).
    s_rows : pandas.DataFrame
        Its S picks (``pick_id, network, station, location, time, phase_hint``).
    solution : Solution
    context : EventContext
        Creation info, model name, velocity model, settings text.
    """
    key = resource_key(event_id)
    event = Event(resource_id=ResourceIdentifier(f"{RESOURCE_PREFIX}/event/{key}"),
                  event_type="earthquake", creation_info=context.info.copy(),
                  comments=[Comment(text=f"input event_id: {event_id}")])
    sampled = "pred_depth_km_std" in p_rows.columns
    for row in p_rows.itertuples(index=False):
        pick = Pick(resource_id=pick_resource(row.pick_id), time=row.p_time,
                    phase_hint=row.phase_hint, waveform_id=_seed_id(
                        row.network, row.station, row.location, row.channels.split(",")[-1]))
        event.picks.append(pick)
        if not all(_finite(v) is not None for v in (row.pred_event_lat, row.pred_event_lon,
                                                    row.pred_depth_km)) \
                or row.origin_time_approx is None or abs(row.pred_event_lat) > 90:
            event.comments.append(Comment(text=f"pick {row.pick_id}: its single-station "
                                               "estimate is not a finite location (no Origin)"))
            continue
        seed = ".".join(code for code in (row.network, row.station, row.location) if code)
        origin = Origin(
            resource_id=ResourceIdentifier(
                f"{RESOURCE_PREFIX}/origin/{key}/{resource_key(row.pick_id)}"),
            time=row.origin_time_approx, latitude=row.pred_event_lat,
            longitude=row.pred_event_lon, depth=row.pred_depth_km * 1000.0,
            method_id=ResourceIdentifier(
                f"{RESOURCE_PREFIX}/method/utrans_convmixer_single_station"),
            evaluation_mode="automatic", creation_info=context.info.copy(),
            arrivals=[Arrival(pick_id=pick.resource_id, phase=row.phase_hint)],
            comments=[Comment(text=f"single-station estimate from {seed} ({row.channels}; "
                                   f"input {row.sample_rate_in_hz} Hz, rotated: "
                                   f"{row.rotation_applied}) by {context.model_name}"),
                      Comment(text=context.time_note)])
        if sampled:
            set_errors(origin, row.pred_event_lat_std, row.pred_event_lon_std,
                       row.pred_depth_km_std, row.pred_event_lat_std_km,
                       row.pred_event_lon_std_km)
        event.origins.append(origin)
    for row in s_rows.itertuples(index=False):
        event.picks.append(Pick(resource_id=pick_resource(row.pick_id), time=row.time,
                                phase_hint=row.phase_hint,
                                waveform_id=_seed_id(row.network, row.station, row.location)))
    preferred = combined_origin(key, solution, event.picks, context)
    if preferred is not None:
        event.origins.append(preferred)
        event.preferred_origin_id = preferred.resource_id
    else:
        if solution.flags:
            event.comments.append(Comment(text=f"flagged: {solution.flag}"))
        own = [o for o in event.origins
               if str(o.resource_id).endswith("/" + resource_key(solution.source_pick or ""))]
        if own:
            event.preferred_origin_id = own[0].resource_id
    return event


def combined_origin(key, solution, picks, context):
    """The preferred Origin of a multi-station solution (None for one station's estimate,
    whose own Origin is then preferred, or for no origin at all)."""
    s = solution
    if s.method in ("single-station", "none"):
        return None
    hints = {str(p.resource_id): p.phase_hint for p in picks}
    arrivals = []
    for pick_id, fit in s.arrivals.items():
        rid = pick_resource(pick_id)
        arrivals.append(Arrival(
            pick_id=rid, phase=hints.get(str(rid), fit.phase),
            time_residual=_finite(fit.residual_s), distance=_finite(fit.distance_deg),
            azimuth=_finite(fit.azimuth_deg), time_weight=1.0 if fit.used else 0.0))
    origin = Origin(
        resource_id=ResourceIdentifier(f"{RESOURCE_PREFIX}/origin/{key}/preferred"),
        time=s.time, latitude=s.latitude, longitude=s.longitude, depth=s.depth_km * 1000.0,
        method_id=ResourceIdentifier(f"{RESOURCE_PREFIX}/method/{s.method}"),
        evaluation_mode="automatic", creation_info=context.info.copy(), arrivals=arrivals,
        time_errors=QuantityError(uncertainty=_finite(s.time_std_s)),
        quality=OriginQuality(
            used_station_count=s.n_stations, associated_station_count=s.n_stations,
            used_phase_count=sum(f.used for f in s.arrivals.values()),
            associated_phase_count=len(s.arrivals), standard_error=_finite(s.rms_s),
            azimuthal_gap=_finite(s.azimuthal_gap_deg)),
        comments=[Comment(text=f"preferred origin: {s.description}"),
                  Comment(text=f"velocity model: {context.velocity_model}")]
        + ([Comment(text=f"flagged: {s.flag}")] if s.flags else []))
    if s.method == "hybrid":
        set_errors(origin, s.latitude_std, s.longitude_std, s.depth_km_std,
                   s.latitude_std_km, s.longitude_std_km, s.ellipse)
        if s.ellipse is None:
            origin.origin_uncertainty = None
    else:
        set_errors(origin, s.latitude_std, s.longitude_std, s.depth_km_std,
                   s.latitude_std_km, s.longitude_std_km)
    return origin


class QuakeMLStream:
    """events.xml written a chunk of Events at a time (ObsPy serialises each chunk;
    its events are appended between the document's head and tail)."""

    def __init__(self, fh, description, info):
        self.fh, self.description, self.info, self.head_written = fh, description, info, False
        self.tail = None

    def _parts(self, events):
        buf = io.BytesIO()
        Catalog(events=events, creation_info=self.info,
                description=self.description).write(buf, format="QUAKEML")
        text = buf.getvalue().decode("utf-8")
        start = text.find("<event ")
        end = text.rfind("</eventParameters>")
        if start < 0:     # no events: ObsPy still writes head and tail around nothing
            start = end
        return text[:start], text[start:end], text[end:]

    def write(self, events):
        head, body, tail = self._parts(list(events))
        if not self.head_written:
            self.fh.write(head)
            self.head_written, self.tail = True, tail
        self.fh.write(body)

    def close(self):
        if not self.head_written:
            head, _, tail = self._parts([])
            self.fh.write(head)
            self.tail = tail
        self.fh.write(self.tail)


class CsvStream:
    """A CSV written a table at a time: the header with the first, the columns fixed then."""

    def __init__(self, fh, columns=None):
        self.fh, self.columns = fh, None if columns is None else list(columns)
        self.rows = 0
        if self.columns is not None:
            pd.DataFrame(columns=self.columns).to_csv(self.fh, index=False)

    def write(self, table):
        table = pd.DataFrame(table)
        if self.columns is None:
            self.columns = list(table.columns)
            table.to_csv(self.fh, index=False)
        else:
            table.reindex(columns=self.columns).to_csv(self.fh, index=False, header=False)
        self.rows += len(table)

