"""The locator's event stage: one event's rows -> typed values -> Solution -> outputs.

:func:`event_values` is the one place the locator's tables (locations.csv's
rows, the S picks) become :class:`~utrans_loc.solutions.Estimates` and
:class:`~utrans_loc.solutions.Arrivals`; :func:`locate_events` solves each
event (:func:`~utrans_loc.solutions.solve_event`, which never raises) and
builds its events.csv row and QuakeML Event once, from the solution.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
from obspy import UTCDateTime
from obspy.core.event import Catalog, CreationInfo
from tqdm import tqdm

from utrans_loc import event_output, metrics, solutions

S_PICK_COLUMNS = ("pick_id", "network", "station", "location", "time", "event_id", "phase",
                  "phase_hint", "station_lat", "station_lon", "station_elevation_m")


@dataclasses.dataclass(frozen=True)
class EventContext:
    """What every event's QuakeML shares: creation info, names, notes."""

    info: CreationInfo
    model_name: str
    velocity_model: str
    time_note: str


def context_of(cfg, travel):
    return EventContext(
        info=CreationInfo(author="utrans_loc locator", creation_time=UTCDateTime()),
        model_name=os.path.basename(cfg.input_model), velocity_model=travel.description,
        time_note=f"origin time approximate: P time minus the P travel time from the "
                  f"estimate ({travel.description})")


def origin_settings(cfg):
    """The locator's options that decide an event's origin."""
    return solutions.OriginSettings(
        combine=cfg.combine, pick_std_s=tuple(float(v) for v in cfg.pick_std_s),
        model_error=float(cfg.model_error), depth_correlation=float(cfg.depth_correlation),
        max_rms_s=float(cfg.max_rms_s))


def _std(rows, column):
    return rows[column].to_numpy(float) if column in rows.columns else np.full(len(rows), np.nan)


def _km(elevation_m):
    return np.nan_to_num(np.asarray(elevation_m, float)) / 1000.0


def event_values(p_rows, s_rows):
    """An event's :class:`Estimates` and :class:`Arrivals` from its locations.csv rows
    (``pick_id``, ``pred_*``, their ``*_std_km`` when the run has error bars) and S picks."""
    p_station = tuple(f"{n}.{s}" for n, s in zip(p_rows["network"], p_rows["station"]))
    s_station = tuple(f"{n}.{s}" for n, s in zip(s_rows["network"], s_rows["station"]))
    estimates = solutions.Estimates(
        pick_id=tuple(p_rows["pick_id"]), station=p_station,
        lat=p_rows["pred_event_lat"].to_numpy(float), lon=p_rows["pred_event_lon"].to_numpy(float),
        depth_km=p_rows["pred_depth_km"].to_numpy(float),
        north_std_km=_std(p_rows, "pred_event_lat_std_km"),
        east_std_km=_std(p_rows, "pred_event_lon_std_km"),
        depth_std_km=_std(p_rows, "pred_depth_km_std"),
        origin_time=tuple(p_rows["origin_time_approx"]))
    arrivals = solutions.Arrivals(
        pick_id=tuple(p_rows["pick_id"]) + tuple(s_rows["pick_id"]),
        station=p_station + s_station,
        phase=np.array(["P"] * len(p_rows) + ["S"] * len(s_rows), dtype=object),
        time=tuple(p_rows["p_time"]) + tuple(s_rows["time"]),
        lat=np.concatenate([p_rows["station_lat"].to_numpy(float),
                            s_rows["station_lat"].to_numpy(float)]),
        lon=np.concatenate([p_rows["station_lon"].to_numpy(float),
                            s_rows["station_lon"].to_numpy(float)]),
        elevation_km=np.concatenate([_km(p_rows["station_elevation_m"]),
                                     _km(s_rows["station_elevation_m"])]))
    return estimates, arrivals


def locate_events(table, s_table, travel, settings, context, progress=False):
    """(event_id, Solution, events.csv row, QuakeML Event) of each event, in file order.

    ``table``: locations.csv's rows (with ``pick_id``, ``phase_hint``);
    ``s_table``: the S picks of located events (:data:`S_PICK_COLUMNS`).
    """
    s_by_event = dict(tuple(s_table.groupby("event_id", sort=False))) if len(s_table) else {}
    empty = pd.DataFrame(columns=S_PICK_COLUMNS)
    groups = table.groupby("event_id", sort=False)
    for event_id, rows in tqdm(groups, total=groups.ngroups, desc="locator: origins",
                               unit="event", disable=not progress):
        s_rows = s_by_event.get(event_id, empty)
        solution = solutions.solve_event(*event_values(rows, s_rows), travel, settings)
        yield (event_id, solution, event_output.event_row(event_id, solution),
               event_output.quakeml_event(event_id, rows, s_rows, solution, context))


def build_catalog(table, s_table, travel, settings, context):
    """The whole catalogue and events table in memory (tests, small runs)."""
    out = list(locate_events(table, s_table, travel, settings, context))
    catalog = Catalog(events=[e for *_, e in out], creation_info=context.info,
                      description=f"utrans_loc locator, model {context.model_name}")
    return catalog, pd.DataFrame([r for _, _, r, _ in out], columns=event_output.EVENT_COLUMNS)


def compare_with_truth(events, truth):
    """Each event's preferred location (events.csv) beside its true one.

    Parameters
    ----------
    events : pandas.DataFrame
        The locator's ``events.csv`` table (one row per event: the preferred
        origin, :data:`event_output.EVENT_COLUMNS`).
    truth : pandas.DataFrame
        ``event_id, latitude, longitude, depth_km`` per event (e.g. the
        ``truth.csv`` of the synthetic example).

    Returns
    -------
    pandas.DataFrame
        One row per located event with a truth: method, stations, true and
        located latitude, longitude, depth, the located 1-sigma errors (km),
        epicentral error (km, geodesic) and depth error (km).
    """
    truth = truth.set_index(truth["event_id"].astype(str))
    rows = []
    for event in events.itertuples(index=False):
        event_id = str(event.event_id)
        if event_id not in truth.index:
            continue
        true = truth.loc[event_id]
        rows.append({
            "event_id": event_id, "method": event.method, "stations": event.n_stations,
            "true_lat": true["latitude"], "lat": event.latitude,
            "true_lon": true["longitude"], "lon": event.longitude,
            "true_depth_km": true["depth_km"], "depth_km": event.depth_km,
            "north_std_km": event.latitude_std_km, "east_std_km": event.longitude_std_km,
            "depth_std_km": event.depth_km_std,
            "epicentral_error_km": float(metrics.geodesic_km(
                true["latitude"], true["longitude"], event.latitude, event.longitude)[()]),
            "depth_error_km": event.depth_km - true["depth_km"]})
    return pd.DataFrame(rows)
