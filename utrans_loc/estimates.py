"""The locator's middle stages: P picks -> model windows -> single-station estimates.

:func:`prepare_windows` cuts each usable P pick's window from a
:class:`~utrans_loc.sources.WaveformSource` (picks of one station close in
time share one read), :func:`model_input` band-passes and normalises them as
tester1 does, :func:`locations_table` turns the model's outputs into
locations.csv's rows. The locator runs them a chunk of picks at a time
(:func:`windows_ahead` reads the next chunk while the model predicts this
one), so memory follows the chunk, not the number of picks.

A pick that cannot be used becomes a ``skipped`` row (:func:`skip_row`) with
its reason; nothing here stops a run for one pick.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

import EqT_utils_Loc_California as U
from utrans_loc import metrics, prediction, solutions, uncertainty, waveforms
from utrans_loc import picks as pick_files
from utrans_loc import sources
from utrans_loc.traces import bandpass_taper

SKIPPED_COLUMNS = ("network", "station", "phase", "time", "event_id", "reason")
# locations.csv: these first, then the prediction's spread columns, then the rest.
FIRST_COLUMNS = ("network", "station", "location", "p_time", "event_id", "station_lat",
                 "station_lon", "pred_event_lat", "pred_event_lon", "pred_depth_km")


def skip_row(pick, reason):
    """One row of skipped.csv for a pick (a row of :func:`picks.read_picks`' table);
    ``index`` keeps the file order."""
    return {"index": pick.Index, "network": pick.network, "station": pick.station,
            "phase": pick.phase if isinstance(pick.phase, str) else "",
            "time": str(pick.time), "event_id": pick.event_id, "reason": reason}


@dataclasses.dataclass
class WindowBatch:
    """One chunk's windows: the usable picks (rows, file order), their model input, and
    the chunk's skipped rows."""

    located: pd.DataFrame
    x: np.ndarray
    skipped: list


def prepare_windows(picks, source, stations, settings, cfg):
    """Windows of the P picks that can be used; the others with their reason.

    Picks of one station whose windows are close in time share one read of
    ``source`` (:func:`sources.read_spans`), each read only the span its
    windows need plus :data:`sources.READ_MARGIN_S`.

    Parameters
    ----------
    picks : pandas.DataFrame
        P picks (rows of :func:`picks.read_picks`, its index kept).
    source : sources.WaveformSource
    stations : stations.Stations
    settings : dict
        The model's settings (``input_dimention``, ``p_position_s``).
    cfg : LocateConfig

    Returns
    -------
    (pandas.DataFrame, list of waveforms.Window, list of dict)
        The usable picks in file order (with station coordinates and what was
        done to their data), their windows in the same order, and one
        ``skipped`` row per pick that cannot be used.
    """
    npts = int(settings["input_dimention"][0])
    length_s = npts / waveforms.SAMPLING_RATE
    spans, skipped, made = {}, [], {}
    for pick in picks.itertuples():
        position = settings["p_position_s"] if not np.isfinite(pick.p_position_s) \
            else float(pick.p_position_s)
        try:
            if not 0 <= position < length_s:
                raise pick_files.PickError(
                    f"{pick_files.pick_label(pick.network, pick.station, pick.time)}: "
                    f"p_position_s {position} outside [0, {length_s:g}) s")
            coordinates = stations.coordinates(pick.network, pick.station, pick.time)
        except pick_files.PickError as err:
            skipped.append(skip_row(pick, str(err)))
            continue
        first = pick.time - position
        spans.setdefault((pick.network, pick.station), []).append(
            (first, first + (npts - 1) / waveforms.SAMPLING_RATE, (pick, position, coordinates)))
    margin = sources.READ_MARGIN_S
    for (network, station), station_spans in spans.items():
        for first, last, group in sources.read_spans(station_spans):
            try:
                traces, error = source.read(network, station, first - margin, last + margin), ""
            except sources.WaveformReadError as err:
                traces, error = [], str(err)
            for pick, position, coordinates in group:
                label = pick_files.pick_label(network, station, pick.time)
                window_start = pick.time - position
                try:
                    if error or not traces:
                        raise pick_files.PickError(f"{label}: " + (error or source.no_data(
                            network, station, window_start,
                            window_start + (npts - 1) / waveforms.SAMPLING_RATE)))
                    window = waveforms.cut_window(
                        traces, network, station, pick.time, position, stations, npts=npts,
                        channel_priority=tuple(cfg.channel_priority), max_gap_s=cfg.max_gap_s,
                        location=pick.location)
                except pick_files.PickError as err:
                    skipped.append(skip_row(pick, str(err)))
                    continue
                made[pick.Index] = (pick, position, coordinates, window)
    rows, windows = [], []
    for index in sorted(made):
        pick, position, (lat, lon, elevation), window = made[index]
        windows.append(window)
        rates = sorted(set(window.sampling_rate_in))
        rows.append({"network": pick.network, "station": pick.station,
                     "location": window.location, "p_time": pick.time,
                     "event_id": pick.event_id, "station_lat": lat, "station_lon": lon,
                     "station_elevation_m": elevation, "channels": ",".join(window.channels),
                     "sample_rate_in_hz": "/".join(f"{r:g}" for r in rates),
                     "resampled": "y" if window.resampled else "n",
                     "rotation_applied": "y" if window.rotated else "n",
                     "window_start": window.start, "p_position_s": position,
                     "pick_id": pick.pick_id, "phase_hint": pick.phase_hint})
    return pd.DataFrame(rows, index=pd.Index(sorted(made), dtype=int)), windows, skipped


def model_input(windows, settings):
    """The normalised model input (N, npts, 3) float32 of the windows, and which are finite.

    Band-pass (when on) then normalisation, as tester1 reads a raw STEAD
    trace with ``bandpass=True``: :func:`bandpass_taper` on the cut window,
    then ``U.normalize`` with the model's mode.
    """
    data = [bandpass_taper(w.data) if settings["bandpass"] else np.asarray(w.data, np.float64)
            for w in windows]
    x = U.normalize(np.stack(data), settings["normalization_mode"])
    return x, np.isfinite(x).reshape(len(x), -1).all(axis=1)


def chunk_windows(picks, source, stations, settings, cfg):
    """:func:`prepare_windows` and :func:`model_input` of one chunk of P picks; a window
    with NaN or infinite samples is skipped, not fed to the model."""
    located, windows, skipped = prepare_windows(picks, source, stations, settings, cfg)
    if not windows:
        return WindowBatch(located, np.zeros((0,) + tuple(settings["input_dimention"]),
                                             np.float32), skipped)
    x, finite = model_input(windows, settings)
    del windows
    if not finite.all():
        for pick in picks.loc[located.index[~finite]].itertuples():
            skipped.append(skip_row(pick, f"{pick_files.pick_label(pick.network, pick.station, pick.time)}: "
                                          "the window has NaN or infinite samples"))
        located, x = located[finite], x[finite]
    return WindowBatch(located, x, skipped)


def windows_ahead(chunks, prepare):
    """``prepare(chunk)`` of each chunk, the next one read in a thread while the caller
    predicts this one (reading waveforms is the slow stage)."""
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(prepare, chunks[0])
        for i in range(len(chunks)):
            batch = pending.result()
            if i + 1 < len(chunks):
                pending = reader.submit(prepare, chunks[i + 1])
            yield batch


def locations_table(located, pred, settings, travel, calibration=None):
    """One row per located pick: station, prediction (std when sampled), how the data were used.

    The prediction and std columns are tester1's
    (:func:`~utrans_loc.prediction.location_columns`), with the estimate
    wrapped onto the globe (:func:`solutions.wrap_latlon`); added: the hypocentral
    distance and approximate origin time (:func:`origin_time`, travel time
    from ``travel``, the run's velocity model).
    """
    table = located.assign(**prediction.location_columns(
        located["station_lat"].to_numpy(), located["station_lon"].to_numpy(), pred,
        settings["max_d"], settings["min_d"],
        names=[f"{r.network}.{r.station} P {r.p_time}" for r in located.itertuples()]))
    table["pred_event_lat"], table["pred_event_lon"] = solutions.wrap_latlon(table["pred_event_lat"],
                                                                   table["pred_event_lon"])
    if calibration is not None:
        table = uncertainty.apply_calibration(table, calibration)
    distance, when = origin_time(table["p_time"], table["station_lat"], table["station_lon"],
                                 table["station_elevation_m"], table["pred_event_lat"],
                                 table["pred_event_lon"], table["pred_depth_km"], travel)
    table["hypocentral_distance_km"] = distance
    table["origin_time_approx"] = when
    first = list(FIRST_COLUMNS)
    spread = [c for c in table.columns if c.startswith("pred_") and c not in first]
    rest = [c for c in table.columns if c not in first + spread]
    return table[first + spread + rest]


def origin_time(p_time, station_lat, station_lon, station_elevation_m, event_lat, event_lon,
                depth_km, travel):
    """Hypocentral distance (km) and approximate origin time: P time minus the P travel
    time of ``travel`` (the run's velocity model) from the estimate; None where the
    estimate is not a finite location.

    Distance: WGS84 geodesic epicentral distance and depth below sea level.
    """
    epicentral = metrics.geodesic_km(station_lat, station_lon, event_lat, event_lon)
    depth = np.clip(np.asarray(depth_km, float), 0.0, None)
    distance = np.hypot(epicentral, np.asarray(depth_km, float))
    elevation = np.nan_to_num(np.asarray(station_elevation_m, float)) / 1000.0
    with np.errstate(invalid="ignore"):
        travel_s = np.atleast_1d(travel.travel_time("P", np.nan_to_num(epicentral),
                                                    np.nan_to_num(depth), elevation))
    finite = np.isfinite(distance) & np.isfinite(travel_s)
    return distance, [t - float(s) if ok else None
                      for t, s, ok in zip(p_time, travel_s, finite)]
