"""locator's run: P picks on waveform files to located events (CSV and QuakeML).

``04_locate/locator.py`` holds the signature, its documentation and the
command line and hands one :class:`LocateConfig` to :func:`run`. Waveforms
are read by time span, from files indexed by their headers or from an SDS
archive (:func:`utrans_loc.sources.open_waveforms`); picks of one station
close in time share one read. Each P pick
becomes a model window (:mod:`utrans_loc.waveforms`), band-passed as the
training data were (:func:`utrans_loc.traces.bandpass_taper`) and normalised
as tester1 does (``U.normalize``), so a STEAD trace written to files gets
tester1's prediction. Prediction, Monte-Carlo samples and the std columns
are tester1's (:func:`utrans_loc.prediction.predict_samples` over an
:class:`~utrans_loc.prediction.ArrayBatches` of the windows,
:func:`~utrans_loc.prediction.location_columns`); a saved calibration scales
the std (:mod:`utrans_loc.uncertainty`). The picks of one event are combined into
a preferred origin (:func:`combine_estimates`) and written as QuakeML with
ObsPy (:func:`build_catalog`).

S picks make no window: they are kept, with their station's coordinates, in
the result's ``s_picks`` (for an origin from arrival times) and written as
Picks of their Event. A pick that cannot be used (unknown phase, station not
in the inventory, no data, ...) is listed in ``skipped.csv`` with the reason;
the run fails (ValueError, exit status 2) only when no pick can be located.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import sys
import time

import numpy as np
import pandas as pd
from obspy import UTCDateTime
from obspy.core.event import (Arrival, Catalog, Comment, CreationInfo, Event, Origin,
                              OriginQuality, OriginUncertainty, Pick, QuantityError,
                              ResourceIdentifier, WaveformStreamID)

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints, files, metrics, origins, prediction, uncertainty, velocity, waveforms
from utrans_loc import picks as pick_files, sources, stations as station_files
from utrans_loc.traces import bandpass_taper, check_finite

DEFAULT_P_POSITION_S = 7.0
P_VELOCITY_KM_S = 6.0          # crustal P velocity for the approximate origin time
LOCATIONS_NAME, SKIPPED_NAME, EVENTS_NAME = "locations.csv", "skipped.csv", "events.xml"
MAP_NAME = "map.png"
SKIPPED_COLUMNS = ("network", "station", "phase", "time", "event_id", "reason")
S_PICK_COLUMNS = ("network", "station", "location", "time", "event_id", "phase",
                  "station_lat", "station_lon", "station_elevation_m")
RESOURCE_PREFIX = "smi:local/utrans_loc"
EVENTS_CSV_NAME = "events.csv"
# locations.csv has std columns when the picks have error bars (Monte-Carlo
# sampling, a variance head or both); the combinations weight by them then.
HAS_STD_COLUMN = "pred_depth_km_std"
# A 1-sigma ellipse of a 2-D Gaussian holds 1 - exp(-1/2) of it.
ELLIPSE_CONFIDENCE = 100.0 * (1.0 - math.exp(-0.5))


@dataclasses.dataclass(frozen=True)
class LocateConfig:
    """Every locator parameter (documented in ``locator``), in its order."""

    input_waveforms: str | None
    input_sds: str | None
    input_inventory: str
    input_picks: str
    input_model: str
    output_name: str
    p_position_s: float | None
    bandpass: bool | None
    channel_priority: tuple
    max_gap_s: float
    estimate_uncertainty: bool
    number_of_sampling: int
    calibration: str | None
    seed: int | None
    batch_size: int
    combine: str
    vp: float
    vs: float
    velocity_model: str | None
    pick_std_s: tuple
    model_error: float
    depth_correlation: float
    max_rms_s: float
    figures: bool
    verbose: int

    @property
    def n_samples(self):
        return prediction.sampling_count(self.estimate_uncertainty, self.number_of_sampling)


def run(cfg, model=None):
    """Locate every pick of ``cfg``; returns the locator's result dict.

    ``model``: the location model of ``cfg.input_model``, already built (a
    caller locating several pick sets with one model skips the rebuild).
    """
    start = time.time()
    check_parameters(cfg)
    output_dir = files.check_new_output_dir(files.output_dir_for(cfg.output_name))
    for what, path in (("model weights", cfg.input_model), ("inventory", cfg.input_inventory),
                       ("picks", cfg.input_picks)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} file not found: {path}")
    settings = model_settings(cfg)
    prediction.check_calibration_spread(cfg, settings)
    calibration = prediction.read_saved_calibration(cfg)  # checked against input_model's sha256
    picks = pick_files.read_picks(cfg.input_picks)
    p_picks, s_picks = picks[picks["phase"] == "P"], picks[picks["phase"] == "S"]
    if cfg.verbose:
        kept = f" (and {len(s_picks)} S pick(s) kept)" if len(s_picks) else ""
        print(prediction.start_line("locator", f"locating {len(p_picks)} P pick(s){kept} of "
                                               f"{cfg.input_picks} with {cfg.input_model}"))
    stations = station_files.read_stations(cfg.input_inventory)
    source = sources.open_waveforms(cfg.input_waveforms, cfg.input_sds)
    timings = {"read_s": time.time() - start}
    located, windows, skipped = prepare_windows(p_picks, source, stations, settings, cfg)
    s_table, s_skipped = station_picks(s_picks, stations)
    skipped = add_skipped([], skipped + s_skipped + [
        skip_row(pick, pick.reason) for pick in picks[picks["phase"].isna()].itertuples()])
    timings["windows_s"] = time.time() - start - timings["read_s"]
    if not windows:
        raise ValueError(nothing_located(cfg.input_picks, picks, skipped))
    x = model_input(windows, settings)
    del windows          # the raw windows are in x now; the prediction needs only x
    loaded = None
    if model is None:
        build_start = time.time()
        model, loaded = checkpoints.build_from_checkpoint(cfg.input_model, settings)
        timings["build_s"] = time.time() - build_start
    pred = prediction.predict_samples(model, prediction.ArrayBatches(x, cfg.batch_size),
                                      cfg.n_samples, seed=cfg.seed, progress=cfg.verbose > 0,
                                      timings=timings, label="locator")
    table = locations_table(located, pred, settings, calibration)
    s_table, orphans = s_picks_of_located_events(s_table, table)
    skipped = add_skipped(skipped, orphans)
    origin_start = time.time()
    catalog, combined = build_catalog(table, cfg, settings, s_table)
    timings["origins_s"] = time.time() - origin_start
    os.makedirs(output_dir)
    write_outputs(output_dir, table, skipped, catalog, combined, cfg)
    elapsed = time.time() - start
    files.write_report(os.path.join(output_dir, "report.txt"), "locator",
                       report_items(cfg, settings, loaded, table, skipped, timings, elapsed,
                                    len(s_table), combined))
    if cfg.verbose:
        print(f"locator: {len(table)} pick(s) located, {len(skipped)} skipped, "
              f"{len(catalog)} event(s) -> {output_dir}")
    return {"output_dir": output_dir, "locations": table, "events": combined,
            "skipped": skipped_table(skipped), "s_picks": s_table, "stations": stations,
            "catalog": catalog, "pred": pred, "x": x, "settings": settings,
            "timings": timings, "time_s": elapsed}


def nothing_located(path, picks, skipped):
    """The error of a run where no P pick gave a window: how many of each, the first reason."""
    n_p = int((picks["phase"] == "P").sum())
    first = next((row["reason"] for row in skipped if row["phase"] == "P"), None)
    if n_p:
        return f"nothing could be located: all {n_p} P pick(s) skipped; first: {first}"
    n_s = int((picks["phase"] == "S").sum())
    first = f"; first not usable: {skipped[0]['reason']}" if skipped else ""
    return (f"nothing could be located: no usable P pick in {path} ({n_s} S pick(s), "
            f"{len(picks) - n_s} without a usable phase{first})")


def skip_row(pick, reason):
    """One row of skipped.csv for a pick (a row of :func:`picks.read_picks`'
    table); ``index`` keeps the file order."""
    return {"index": pick.Index, "network": pick.network, "station": pick.station,
            "phase": pick.phase if isinstance(pick.phase, str) else "",
            "time": str(pick.time), "event_id": pick.event_id,
            "reason": reason}


def add_skipped(skipped, new):
    """``skipped`` and the ``new`` rows, in the picks' file order; each new one said on stderr."""
    new = sorted(new, key=lambda row: row["index"])
    for row in new:
        print(f"locator: skipped {row['reason']}", file=sys.stderr)
    return sorted(skipped + new, key=lambda row: row["index"])


def skipped_table(skipped):
    """skipped.csv's table, in the picks' file order."""
    return pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


def station_picks(picks, stations):
    """S picks with their station's coordinates; those the inventory lacks are skipped.

    Returns
    -------
    (pandas.DataFrame, list of dict)
        :data:`S_PICK_COLUMNS` per usable pick, and the ``skipped`` rows.
    """
    rows, skipped, index = [], [], []
    for pick in picks.itertuples():
        try:
            lat, lon, elevation = stations.coordinates(pick.network, pick.station, pick.time)
        except pick_files.PickError as err:
            skipped.append(skip_row(pick, str(err)))
            continue
        index.append(pick.Index)     # the pick's place in the file, for skipped.csv's order
        rows.append({"network": pick.network, "station": pick.station,
                     "location": pick.location, "time": pick.time, "event_id": pick.event_id,
                     "phase": pick.phase, "station_lat": lat, "station_lon": lon,
                     "station_elevation_m": elevation})
    table = pd.DataFrame(rows, columns=S_PICK_COLUMNS, index=pd.Index(index, dtype=int))
    table["location"] = pd.Series(list(table["location"]), index=table.index, dtype=object)
    return table, skipped


def s_picks_of_located_events(s_table, table):
    """The S picks whose event has a located P pick; the others as ``skipped`` rows.

    An origin needs at least one station's estimate; an S pick of an event
    without one (its P picks all skipped, or no ``event_id`` to join it to
    its P pick) would otherwise be lost without a word.
    """
    located = set(table["event_id"].astype(str))
    keep = s_table["event_id"].astype(str).isin(located).to_numpy()
    orphans = [skip_row(row, f"{pick_files.pick_label(row.network, row.station, row.time)}: "
                             f"S pick of event {row.event_id}, which has no located P pick (an "
                             "S pick joins its event's P picks by event_id)")
               for row in s_table[~keep].itertuples()]
    return s_table[keep].reset_index(drop=True), orphans


def check_parameters(cfg):
    """Reject impossible settings before any file is read."""
    sources.check_waveform_options(cfg.input_waveforms, cfg.input_sds)
    prediction.check_sampling_options(cfg)
    check_origin_options(cfg)
    if not cfg.max_gap_s >= 0:
        raise ValueError(f"max_gap_s must be >= 0, got {cfg.max_gap_s}")
    if not cfg.channel_priority or any(len(c) != 2 for c in cfg.channel_priority):
        raise ValueError("channel_priority must list band+instrument codes of 2 letters "
                         f"(e.g. HH,BH,EH,HN), got {','.join(cfg.channel_priority)}")


def model_settings(cfg):
    """The checkpoint's settings plus the locator's ``p_position_s`` and ``bandpass``.

    ``p_position_s``: given, else model_config.json's ``p_position_s``, else
    7 s. ``bandpass``: given, else on (see ``locator``: the training
    waveforms were band-passed, in the DataCollected file or on reading).
    """
    settings = checkpoints.model_settings(cfg.input_model)
    saved = checkpoints.read_model_config(cfg.input_model)
    position = cfg.p_position_s if cfg.p_position_s is not None else \
        float(saved.get("p_position_s", DEFAULT_P_POSITION_S))
    length_s = settings["input_dimention"][0] / waveforms.SAMPLING_RATE
    if not 0 <= position < length_s:
        raise ValueError(f"p_position_s must be in [0, {length_s:g}) s, got {position}")
    settings["p_position_s"] = position
    settings["bandpass"] = True if cfg.bandpass is None else bool(cfg.bandpass)
    return settings


def prepare_windows(picks, source, stations, settings, cfg):
    """Windows of the P picks that can be used; the others with their reason.

    Picks of one station whose windows are close in time share one read of
    ``source`` (:func:`sources.read_spans`), each read only the span its
    windows need plus :data:`sources.READ_MARGIN_S`; the data of one read
    are dropped before the next, so memory follows the windows, not the
    archive.

    Parameters
    ----------
    picks : pandas.DataFrame
        P picks (rows of :func:`picks.read_picks`, its index kept).
    source : sources.WaveformFiles or sources.SDSArchive

    Returns
    -------
    (pandas.DataFrame, list of Window, list of dict)
        The usable picks in file order (with station coordinates and what was
        done to their data), their windows in the same order, and one
        ``skipped`` row (:func:`skip_row`) per pick that cannot be used.
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
                     "window_start": window.start, "p_position_s": position})
    return pd.DataFrame(rows), windows, skipped


def model_input(windows, settings):
    """The normalised model input (N, npts, 3) float32 of the windows.

    Band-pass (when on) then normalisation, as tester1 reads a raw STEAD
    trace with ``bandpass=True``: :func:`bandpass_taper` on the cut window,
    then ``U.normalize`` with the model's mode.
    """
    data = [bandpass_taper(w.data) if settings["bandpass"] else np.asarray(w.data, np.float64)
            for w in windows]
    x = U.normalize(np.stack(data), settings["normalization_mode"])
    check_finite(x, [f"{w.channels[0]} {w.start}" for w in windows], "the waveform files")
    return x


def locations_table(located, pred, settings, calibration=None):
    """One row per located pick: station, prediction (std when sampled), how the data were used.

    The prediction and std columns are tester1's
    (:func:`~utrans_loc.prediction.location_columns`); added: the approximate
    origin time (:func:`origin_time`).
    """
    table = located.assign(**prediction.location_columns(
        located["station_lat"].to_numpy(), located["station_lon"].to_numpy(), pred,
        settings["max_d"], settings["min_d"],
        names=[f"{r.network}.{r.station} P {r.p_time}" for r in located.itertuples()]))
    if calibration is not None:
        table = uncertainty.apply_calibration(table, calibration)
    distance, when = origin_time(table["p_time"], table["station_lat"], table["station_lon"],
                                 table["pred_event_lat"], table["pred_event_lon"],
                                 table["pred_depth_km"])
    table["hypocentral_distance_km"] = distance
    table["origin_time_approx"] = when
    first = ["network", "station", "location", "p_time", "event_id", "station_lat",
             "station_lon", "pred_event_lat", "pred_event_lon", "pred_depth_km"]
    spread = [c for c in table.columns if c.startswith("pred_") and c not in first]
    rest = [c for c in table.columns if c not in first + spread]
    return table[first + spread + rest].reset_index(drop=True)


def origin_time(p_time, station_lat, station_lon, event_lat, event_lon, depth_km,
                velocity=P_VELOCITY_KM_S):
    """Hypocentral distance (km) and approximate origin time: P time minus distance / velocity.

    Distance: WGS84 geodesic epicentral distance and depth below sea level
    (station elevation ignored: a few hundred metres against the model's
    kilometres of error).
    """
    epicentral = metrics.geodesic_km(station_lat, station_lon, event_lat, event_lon)
    distance = np.hypot(epicentral, np.asarray(depth_km, float))
    return distance, [t - d / velocity for t, d in zip(p_time, distance)]


COMBINED = (("latitude", "pred_event_lat"), ("longitude", "pred_event_lon"),
            ("depth_km", "pred_depth_km"))


def combine_estimates(rows, sampled):
    """The preferred origin of one event from its single-station estimates.

    With error bars (``sampled``: the Monte-Carlo spread and/or the variance
    head's std, calibrated when a calibration was applied): per coordinate
    the inverse-variance weighted mean (weights 1 / std^2) and its
    uncertainty sqrt(1 / sum of weights); a station whose std is NaN is left
    out of it (``method`` says so). Without error bars (or where a std is 0,
    or every one NaN): the plain mean and the standard error of the mean
    between stations (std, ddof 1, / sqrt(n)).

    Returns
    -------
    dict
        ``latitude, longitude`` (deg), ``depth_km`` and their 1-sigma
        uncertainties ``latitude_std, longitude_std`` (deg),
        ``depth_km_std``; ``method`` says which combination (one line).
    """
    n = len(rows)
    out, weighted, left_out = {}, sampled, 0
    for key, col in COMBINED:
        value = rows[col].to_numpy(float)
        std = rows[col + "_std"].to_numpy(float) if sampled else np.zeros(n)
        # A NaN std (a non-finite predicted variance) would give its station
        # all the weight of a plain mean: that station is left out instead.
        usable = np.isfinite(std)
        if sampled and usable.any() and np.all(std[usable] > 0):
            weight = 1.0 / std[usable] ** 2
            out[key] = float(np.sum(weight * value[usable]) / np.sum(weight))
            out[key + "_std"] = float(np.sqrt(1.0 / np.sum(weight)))
            left_out = max(left_out, int(n - usable.sum()))
        else:
            weighted = False
            out[key] = float(np.mean(value))
            out[key + "_std"] = float(np.std(value, ddof=1) / math.sqrt(n))
    out["method"] = (
        f"inverse-variance weighted mean of {n} single-station estimates (weights 1/std^2 of "
        "their predicted std per coordinate; uncertainty sqrt(1/sum of weights))"
        + (f"; {left_out} with a NaN std left out" if left_out else "")
        if weighted else
        f"mean of {n} single-station estimates (uncertainty: standard error of the mean "
        "between stations)")
    return out


def resource_key(text):
    """``text`` as a part of a QuakeML resource id: itself where every character is
    allowed there, else with the others replaced by ``_`` and a short hash of the
    text added (two ids never meet)."""
    text = str(text)
    safe = re.sub(r"[^A-Za-z0-9_.*()~'-]", "_", text)
    if safe != text or not safe:
        safe += "_" + hashlib.sha256(text.encode("utf8")).hexdigest()[:8]
    return safe


COMBINE_METHODS = ("hybrid", "weighted")
EVENT_COLUMNS = ("event_id", "latitude", "longitude", "depth_km", "latitude_std_km",
                 "longitude_std_km", "depth_km_std", "origin_time", "origin_time_std_s",
                 "n_stations", "n_p", "n_s", "rms_s", "azimuthal_gap_deg", "method", "flag")


def check_origin_options(cfg):
    """The multi-station options, checked before any file is read (the velocity model too)."""
    if cfg.combine not in COMBINE_METHODS:
        raise ValueError(f"--combine must be one of {', '.join(COMBINE_METHODS)}, got "
                         f"{cfg.combine!r}")
    velocity.check_velocities(cfg.vp, cfg.vs, "--vp/--vs")
    if len(cfg.pick_std_s) != 2 or not all(np.isfinite(v) and v > 0 for v in cfg.pick_std_s):
        raise ValueError(f"--pick_std_s must be two positive numbers (P, S), got "
                         f"{' '.join(map(str, cfg.pick_std_s))}")
    if not (np.isfinite(cfg.model_error) and 0 <= cfg.model_error < 1):
        raise ValueError(f"--model_error must be a fraction in [0, 1), got {cfg.model_error}")
    if not 0 <= cfg.depth_correlation <= 1:
        raise ValueError(f"--depth_correlation must be in [0, 1], got {cfg.depth_correlation}")
    if not cfg.max_rms_s > 0:
        raise ValueError(f"--max_rms_s must be > 0, got {cfg.max_rms_s}")
    if cfg.velocity_model is not None:
        if not os.path.isfile(cfg.velocity_model):
            raise FileNotFoundError(f"--velocity_model file not found: {cfg.velocity_model}")
        velocity.read_layers(cfg.velocity_model)


class TravelTimes:
    """The run's velocity model, built on first use (a layered model's table takes seconds)."""

    def __init__(self, cfg):
        self.cfg, self._model = cfg, None

    @property
    def model(self):
        if self._model is None:
            self._model = velocity.velocity_model(self.cfg.vp, self.cfg.vs, self.cfg.velocity_model)
        return self._model


def build_catalog(table, cfg, settings, s_picks=None):
    """QuakeML of the located picks: one Event per event_id; and the events table.

    Each Event holds its P picks (and the S picks of ``s_picks`` with its
    event_id, phase hint S) and one Origin per station estimate (with lat/lon
    uncertainty in degrees and depth uncertainty in metres, QuakeML's units,
    when sampled; origin time approximate: P time minus hypocentral distance /
    6 km/s). The preferred Origin: with picks at 2+ stations, ``--combine
    hybrid`` maximises the posterior of :mod:`utrans_loc.origins` (estimates
    as priors, P and S arrival times, one Arrival per pick with its
    residual, the error ellipse, origin time error and quality), ``weighted``
    the inverse-variance mean of the estimates (:func:`combine_estimates`,
    2+ located stations); else the one station's Origin.

    Returns
    -------
    (obspy.core.event.Catalog, pandas.DataFrame)
        The catalog and ``events.csv``'s table (:data:`EVENT_COLUMNS`, one
        row per event: its preferred origin).
    """
    # Error bars come from Monte-Carlo sampling, a variance head, or both.
    sampled = HAS_STD_COLUMN in table.columns
    info = CreationInfo(author="utrans_loc locator", creation_time=UTCDateTime())
    model_name = os.path.basename(cfg.input_model)
    method = ResourceIdentifier(f"{RESOURCE_PREFIX}/method/utrans_convmixer_single_station")
    time_note = (f"origin time approximate: P time minus hypocentral distance / "
                 f"{P_VELOCITY_KM_S:g} km/s")
    travel = TravelTimes(cfg)
    events, rows_out = [], []
    s_by_event = {} if s_picks is None else dict(tuple(s_picks.groupby("event_id", sort=False)))
    for event_id, rows in table.groupby("event_id", sort=False):
        key = resource_key(event_id)
        event = Event(resource_id=ResourceIdentifier(f"{RESOURCE_PREFIX}/event/{key}"),
                      event_type="earthquake", creation_info=info.copy(),
                      comments=[Comment(text=f"input event_id: {event_id}")])
        for i, row in enumerate(rows.itertuples(index=False)):
            seed = ".".join(code for code in (row.network, row.station, row.location) if code)
            pick = Pick(resource_id=ResourceIdentifier(f"{RESOURCE_PREFIX}/pick/{key}/{i}"),
                        time=row.p_time, phase_hint="P", waveform_id=WaveformStreamID(
                            network_code=row.network, station_code=row.station,
                            location_code=row.location, channel_code=row.channels.split(",")[-1]))
            event.picks.append(pick)
            origin = Origin(
                resource_id=ResourceIdentifier(f"{RESOURCE_PREFIX}/origin/{key}/{i}"),
                time=row.origin_time_approx, latitude=row.pred_event_lat,
                longitude=row.pred_event_lon, depth=row.pred_depth_km * 1000.0,
                method_id=method, evaluation_mode="automatic", creation_info=info.copy(),
                arrivals=[Arrival(pick_id=pick.resource_id, phase="P")],
                comments=[Comment(text=f"single-station estimate from {seed} "
                                       f"({row.channels}; input {row.sample_rate_in_hz} Hz, "
                                       f"rotated: {row.rotation_applied}) by {model_name}"),
                          Comment(text=time_note)])
            if sampled:
                set_errors(origin, row.pred_event_lat_std, row.pred_event_lon_std,
                           row.pred_depth_km_std, row.pred_event_lat_std_km,
                           row.pred_event_lon_std_km)
            event.origins.append(origin)
        s_rows = s_by_event.get(event_id, pd.DataFrame(columns=S_PICK_COLUMNS))
        for j, row in enumerate(s_rows.itertuples()):
            event.picks.append(Pick(
                resource_id=ResourceIdentifier(f"{RESOURCE_PREFIX}/pick/{key}/s{j}"),
                time=row.time, phase_hint="S", waveform_id=WaveformStreamID(
                    network_code=row.network, station_code=row.station,
                    location_code=row.location)))
        n_stations = len(set(zip(rows["network"], rows["station"]))
                         | set(zip(s_rows["network"], s_rows["station"])))
        if cfg.combine == "hybrid" and n_stations > 1:
            origin, row = hybrid_origin(rows, s_rows, cfg, travel.model, event, key, info)
        elif cfg.combine == "weighted" and len(rows) > 1:
            origin, row = weighted_origin(rows, s_rows, sampled, key, info, time_note)
        else:
            origin, row = None, single_row(rows, s_rows, sampled)
        if origin is not None:
            origin.method_id = ResourceIdentifier(f"{RESOURCE_PREFIX}/method/{cfg.combine}")
            event.origins.append(origin)
        rows_out.append({"event_id": event_id, **row})
        event.preferred_origin_id = event.origins[-1].resource_id
        events.append(event)
    catalog = Catalog(events=events, creation_info=info,
                      description=f"utrans_loc locator, model {model_name}")
    return catalog, pd.DataFrame(rows_out, columns=EVENT_COLUMNS)


def hybrid_origin(rows, s_rows, cfg, model, event, key, info):
    """The preferred Origin of ``--combine hybrid`` and its events.csv row."""
    best = origins.event_origin(rows, s_rows, model, HAS_STD_COLUMN in rows.columns,
                                cfg.pick_std_s, cfg.model_error,
                                depth_correlation=cfg.depth_correlation)
    p_ids = [p.resource_id for p in event.picks if p.phase_hint == "P"]
    s_ids = [p.resource_id for p in event.picks if p.phase_hint == "S"]
    ids = iter(p_ids + s_ids)     # event_origin lists the P picks, then the S picks, in order
    arrivals = [Arrival(pick_id=next(ids), phase=a["phase"], time_residual=a["residual_s"],
                        distance=a["distance_deg"], azimuth=a["azimuth_deg"])
                for a in best["arrivals"]]
    problems = []
    if best["rms_s"] > cfg.max_rms_s:
        problems.append(f"RMS residual {best['rms_s']:.2f} s above --max_rms_s "
                        f"{cfg.max_rms_s:g} s: picks or velocity model inconsistent with one "
                        "origin")
    loose = [name for name, key in (("longitude", "longitude_std_km"),
                                    ("latitude", "latitude_std_km"), ("depth", "depth_km_std"),
                                    ("origin time", "time_std"))
             if not np.isfinite(best[key])]
    if loose:
        problems.append(f"not constrained by the picks and estimates: {', '.join(loose)} "
                        "(no error given)")
    flag = "; ".join(problems)
    flagged = bool(problems)
    p_std, s_std = cfg.pick_std_s
    origin = Origin(
        resource_id=ResourceIdentifier(f"{RESOURCE_PREFIX}/origin/{key}/combined"),
        time=best["time"], latitude=best["latitude"], longitude=best["longitude"],
        depth=best["depth_km"] * 1000.0, evaluation_mode="automatic",
        creation_info=info.copy(), arrivals=arrivals,
        time_errors=QuantityError(uncertainty=_finite(best["time_std"])),
        quality=OriginQuality(
            used_station_count=best["n_stations"], associated_station_count=best["n_stations"],
            used_phase_count=best["n_p"] + best["n_s"],
            associated_phase_count=best["n_p"] + best["n_s"],
            standard_error=best["rms_s"], azimuthal_gap=best["azimuthal_gap_deg"]),
        comments=[Comment(text=(
            f"preferred origin: hybrid, the maximum of a posterior over latitude, longitude, "
            f"depth and origin time: {best['prior']} (Gaussian priors), and the arrival "
            f"times of {best['n_p']} P and {best['n_s']} S pick(s) (Gaussian, pick error P "
            f"{p_std:g} s, S {s_std:g} s, plus {cfg.model_error:g} x travel time for the "
            "velocity model); the stations' depth estimates taken as correlated "
            f"({cfg.depth_correlation:g}); errors and ellipse from the posterior's curvature "
            "(1 sigma)")),
            Comment(text=f"velocity model: {model.description}")]
        + ([Comment(text=f"flagged: {flag}")] if flagged else []))
    set_errors(origin, best["latitude_std"], best["longitude_std"], best["depth_km_std"],
               best["latitude_std_km"], best["longitude_std_km"])
    if np.isfinite(best["ellipse_major_km"]):
        origin.origin_uncertainty = OriginUncertainty(
            min_horizontal_uncertainty=best["ellipse_minor_km"] * 1000.0,
            max_horizontal_uncertainty=best["ellipse_major_km"] * 1000.0,
            azimuth_max_horizontal_uncertainty=best["ellipse_azimuth_deg"],
            preferred_description="uncertainty ellipse", confidence_level=ELLIPSE_CONFIDENCE)
    else:
        origin.origin_uncertainty = None
    return origin, {
        "latitude": best["latitude"], "longitude": best["longitude"],
        "depth_km": best["depth_km"], "latitude_std_km": best["latitude_std_km"],
        "longitude_std_km": best["longitude_std_km"], "depth_km_std": best["depth_km_std"],
        "origin_time": best["time"], "origin_time_std_s": best["time_std"],
        "n_stations": best["n_stations"], "n_p": best["n_p"], "n_s": best["n_s"],
        "rms_s": best["rms_s"], "azimuthal_gap_deg": best["azimuthal_gap_deg"],
        "method": "hybrid", "flag": flag}


def weighted_origin(rows, s_rows, sampled, key, info, time_note):
    """The preferred Origin of ``--combine weighted`` and its events.csv row."""
    best = combine_estimates(rows, sampled)
    _, times = origin_time(rows["p_time"], rows["station_lat"], rows["station_lon"],
                           best["latitude"], best["longitude"], best["depth_km"])
    when = times[0] + float(np.mean([t - times[0] for t in times]))
    origin = Origin(
        resource_id=ResourceIdentifier(f"{RESOURCE_PREFIX}/origin/{key}/combined"),
        time=when, latitude=best["latitude"], longitude=best["longitude"],
        depth=best["depth_km"] * 1000.0, evaluation_mode="automatic",
        creation_info=info.copy(),
        quality=OriginQuality(used_station_count=len(rows), used_phase_count=len(rows),
                              associated_station_count=len(rows)),
        comments=[Comment(text=f"preferred origin: {best['method']}"),
                  Comment(text=time_note.replace("P time", "the mean over stations of "
                                                           "P time"))])
    per_lat, per_lon = (float(k) for k in metrics.km_per_degree(best["latitude"]))
    set_errors(origin, best["latitude_std"], best["longitude_std"], best["depth_km_std"],
               best["latitude_std"] * per_lat, best["longitude_std"] * per_lon)
    return origin, {
        "latitude": best["latitude"], "longitude": best["longitude"],
        "depth_km": best["depth_km"], "latitude_std_km": best["latitude_std"] * per_lat,
        "longitude_std_km": best["longitude_std"] * per_lon,
        "depth_km_std": best["depth_km_std"], "origin_time": when,
        "origin_time_std_s": np.nan,
        "n_stations": len(set(zip(rows["network"], rows["station"]))
                          | set(zip(s_rows["network"], s_rows["station"]))),
        "n_p": len(rows), "n_s": len(s_rows), "rms_s": np.nan, "azimuthal_gap_deg": np.nan,
        "method": "weighted", "flag": ""}


def single_row(rows, s_rows, sampled):
    """events.csv's row of an event whose preferred origin is one station's estimate."""
    row = rows.iloc[0]
    std = (lambda col: row[col]) if sampled else (lambda col: np.nan)
    return {"latitude": row["pred_event_lat"], "longitude": row["pred_event_lon"],
            "depth_km": row["pred_depth_km"], "latitude_std_km": std("pred_event_lat_std_km"),
            "longitude_std_km": std("pred_event_lon_std_km"),
            "depth_km_std": std("pred_depth_km_std"), "origin_time": row["origin_time_approx"],
            "origin_time_std_s": np.nan, "n_stations": 1, "n_p": len(rows), "n_s": len(s_rows),
            "rms_s": np.nan, "azimuthal_gap_deg": np.nan, "method": "single-station",
            "flag": ""}


def set_errors(origin, lat_std, lon_std, depth_std_km, lat_std_km, lon_std_km):
    """1-sigma errors in QuakeML's units: degrees, metres; the horizontal ellipse in metres.

    An error that is not a finite number (a direction nothing constrains) is left out.
    """
    origin.latitude_errors = QuantityError(uncertainty=_finite(lat_std))
    origin.longitude_errors = QuantityError(uncertainty=_finite(lon_std))
    depth = _finite(depth_std_km)
    origin.depth_errors = QuantityError(uncertainty=None if depth is None else depth * 1000.0)
    north, east = _finite(lat_std_km), _finite(lon_std_km)
    if north is None or east is None:
        return
    north, east = north * 1000.0, east * 1000.0
    origin.origin_uncertainty = OriginUncertainty(
        min_horizontal_uncertainty=min(north, east), max_horizontal_uncertainty=max(north, east),
        azimuth_max_horizontal_uncertainty=0.0 if north >= east else 90.0,
        preferred_description="uncertainty ellipse",
        confidence_level=ELLIPSE_CONFIDENCE)


def _finite(value):
    value = float(value)
    return value if math.isfinite(value) else None


def write_outputs(output_dir, table, skipped, catalog, combined, cfg):
    """locations.csv, skipped.csv, events.xml and figures/map.png (each atomically)."""
    out = table.copy()
    for col in ("p_time", "window_start", "origin_time_approx"):
        out[col] = [str(t) for t in out[col]]
    # No float_format: pandas writes each float64 as its shortest repr, which reads back
    # bit for bit and keeps coordinates as given (47.737167, not 47.737166999999999).
    files.atomic_write(os.path.join(output_dir, LOCATIONS_NAME),
                       lambda fh: out.to_csv(fh, index=False))
    files.atomic_write(os.path.join(output_dir, SKIPPED_NAME),
                       lambda fh: skipped_table(skipped).to_csv(fh, index=False))
    files.atomic_save(os.path.join(output_dir, EVENTS_NAME),
                      lambda tmp: catalog.write(tmp, format="QUAKEML"))
    events = combined.assign(origin_time=[str(t) for t in combined["origin_time"]])
    files.atomic_write(os.path.join(output_dir, EVENTS_CSV_NAME),
                       lambda fh: events.to_csv(fh, index=False))
    if cfg.figures:
        from utrans_loc import figures

        os.makedirs(os.path.join(output_dir, "figures"))
        figures.location_map(table, combined[combined["method"] != "single-station"],
                             os.path.join(output_dir, "figures", MAP_NAME))


def report_items(cfg, settings, loaded, table, skipped, timings, elapsed, n_s_picks, events):
    """report.txt: inputs, model settings, counts, timings."""
    predict = timings.get("predict_s", 0.0)
    return [
        ("input_waveforms", cfg.input_waveforms), ("input_sds", cfg.input_sds),
        ("input_inventory", cfg.input_inventory),
        ("input_picks", cfg.input_picks), ("input_model", cfg.input_model),
        ("input_model_sha256", loaded["sha256"] if loaded else "(model given in-process)"),
        ("output_name", cfg.output_name), ("channel_priority", ",".join(cfg.channel_priority)),
        ("max_gap_s", cfg.max_gap_s), ("estimate_uncertainty", cfg.estimate_uncertainty),
        ("number_of_sampling", cfg.n_samples), ("calibration", cfg.calibration),
        ("seed", cfg.seed), ("batch_size", cfg.batch_size), ("combine", cfg.combine),
        ("velocity_model", cfg.velocity_model or f"half-space vp {cfg.vp:g} vs {cfg.vs:g} km/s"),
        ("pick_std_s", " ".join(f"{v:g}" for v in cfg.pick_std_s)),
        ("model_error", cfg.model_error), ("depth_correlation", cfg.depth_correlation),
        ("max_rms_s", cfg.max_rms_s), *settings.items(),
        ("n_located", len(table)), ("n_s_picks_kept", n_s_picks), ("n_skipped", len(skipped)),
        ("n_events", len(events)),
        ("n_events_flagged", int((events["flag"].fillna("") != "").sum())),
        ("n_resampled", int((table["resampled"] == "y").sum())),
        ("n_rotated", int((table["rotation_applied"] == "y").sum())),
        ("time_taken_s", round(elapsed, 1)),
        *((f"time_{k}", round(v, 2)) for k, v in timings.items()),
        ("picks_per_s_predict", round(len(table) / max(predict, 1e-9), 1))]


def compare_with_truth(events, truth):
    """Each event's preferred location (events.csv) beside its true one.

    Parameters
    ----------
    events : pandas.DataFrame
        The locator's ``events.csv`` table (one row per event: the preferred
        origin, :data:`EVENT_COLUMNS`).
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
