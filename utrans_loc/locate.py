"""locator's run: P picks on waveform files to located events (CSV and QuakeML).

``04_locate/locator.py`` holds the signature, its documentation and the
command line and hands one :class:`LocateConfig` to :func:`run`. The run is a
stream of typed stages::

    picks (picks.read_picks) -> windows (estimates.chunk_windows) ->
    estimates (estimates.locations_table) -> per event Estimates + Arrivals
    (events.event_values) -> Solution (solutions.solve_event) -> writers
    (event_output)

Every input is checked before the first window is read (options, files,
velocity model, model settings). P picks go through in chunks of
:data:`CHUNK_PICKS`: the next chunk's windows are read while the model
predicts this one, locations.csv grows a chunk at a time and the windows are
dropped, so memory follows the chunk, not the number of picks. Prediction,
Monte-Carlo samples and the std columns are tester1's; a saved calibration
scales the std (:mod:`utrans_loc.uncertainty`).

A pick that cannot be used (unknown phase, station not in the inventory, no
data, a malformed row, ...) is listed in ``skipped.csv`` with the reason; an
event whose multi-station origin cannot be computed keeps the best origin
that can, flagged. The run fails (ValueError, exit status 2) only when no
pick can be located. Results are written into ``<output_name>_outputs.partial``
and renamed when complete (:func:`utrans_loc.files.staged_output_dir`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from utrans_loc import (checkpoints, cli, estimates, event_output, events, files, locate_options,
                        prediction, velocity, waveforms)
from utrans_loc import picks as pick_files
from utrans_loc import relocation, sources
from utrans_loc import stations as station_files
from utrans_loc.uncertainty import mc_sampling_model

# Where P sits in the window for a model that does not record it (an upstream Keras 2
# checkpoint): the window spec's, STEAD's median (waveforms.WindowSpec).
DEFAULT_P_POSITION_S = waveforms.WINDOW.p_position_s
# P picks per chunk of the stream: windows (6000 x 3 float64 each) and model
# input of one chunk, and of the next one being read, are what the run holds.
CHUNK_PICKS = 240
LOCATIONS_NAME, SKIPPED_NAME, EVENTS_NAME = "locations.csv", "skipped.csv", "events.xml"
EVENTS_CSV_NAME, MAP_NAME = "events.csv", "map.png"
# QuakeML Events serialised at a time.
EVENT_CHUNK = 200


class _LocateConfigMethods:
    """What LocateConfig derives from its fields."""

    @property
    def n_samples(self):
        return prediction.sampling_count(self.estimate_uncertainty, self.number_of_sampling)


# One field per row of locate_options.LOCATE_OPTIONS, in locator's order, with its
# default as locator passes it (channel_priority and pick_std_s as tuples).
LocateConfig = cli.config_class(
    "LocateConfig", locate_options.config_fields(), _LocateConfigMethods, __name__,
    "Every locator parameter (documented in ``locator``, declared in "
    ":data:`utrans_loc.locate_options.LOCATE_OPTIONS`), in its order.")


@dataclasses.dataclass
class LocateResult:
    """What a run wrote, and its tables (the located picks are small rows, no windows)."""

    output_dir: str
    locations: pd.DataFrame
    events: pd.DataFrame
    skipped: pd.DataFrame
    s_picks: pd.DataFrame
    stations: station_files.Stations
    settings: dict
    timings: dict
    time_s: float


def run(cfg, model=None):
    """Locate every pick of ``cfg``; returns a :class:`LocateResult`.

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
    travel = velocity.check_velocity_model(cfg.vp, cfg.vs, cfg.velocity_model)   # built, checked
    picks = pick_files.read_picks(cfg.input_picks, cfg.picks_format, cfg.input_inventory)
    picks["pick_id"] = [str(i) for i in picks.index]
    p_picks, s_picks = picks[picks["phase"] == "P"], picks[picks["phase"] == "S"]
    outside = p_positions_outside(p_picks, settings)
    if outside:
        print(outside, file=sys.stderr)
    if cfg.verbose:
        kept = f" (and {len(s_picks)} S pick(s) kept)" if len(s_picks) else ""
        print(prediction.start_line("locator", f"locating {len(p_picks)} P pick(s){kept} of "
                                               f"{cfg.input_picks} with {cfg.input_model}"))
    stations = station_files.read_stations(cfg.input_inventory)
    source = sources.open_waveforms(cfg.input_waveforms, cfg.input_sds)
    timings = {"read_s": time.time() - start}
    skipped = [estimates.skip_row(p, p.reason) for p in picks[picks["phase"].isna()].itertuples()]
    loaded = None
    if model is None:
        build_start = time.time()
        model, loaded = checkpoints.build_from_checkpoint(cfg.input_model, settings)
        timings["build_s"] = time.time() - build_start
    with files.staged_output_dir(output_dir, "locator") as staged:
        table, chunk_skipped = predict_stream(p_picks, source, stations, settings, cfg, model,
                                              travel, calibration, staged.path, timings)
        skipped += chunk_skipped
        s_table, s_skipped = station_picks(s_picks, stations)
        s_table, orphans = s_picks_of_located_events(s_table, table)
        skipped = report_skipped(skipped + s_skipped + orphans)
        if not len(table):
            raise ValueError(nothing_located(cfg.input_picks, picks, skipped))
        origin_start = time.time()
        events_table = write_events(staged.path, table, s_table, travel, cfg)
        timings["origins_s"] = time.time() - origin_start
        relocation.write_relocation_files(staged.path, os.path.join(staged.path, EVENTS_NAME),
                                          cfg.pick_std_s, cfg.verbose)
        skipped_out = skipped_table(skipped)
        files.atomic_write(os.path.join(staged.path, SKIPPED_NAME),
                           lambda fh: skipped_out.to_csv(fh, index=False))
        if cfg.figures:
            from utrans_loc import figures

            os.makedirs(os.path.join(staged.path, "figures"))
            figures.location_map(table, events_table[~events_table["method"].isin(
                ("single-station", "none"))], os.path.join(staged.path, "figures", MAP_NAME))
        elapsed = time.time() - start
        files.write_report(os.path.join(staged.path, "report.txt"), "locator",
                           report_items(cfg, settings, loaded, table, skipped, timings, elapsed,
                                        len(s_table), events_table, travel))
    if cfg.verbose:
        print(f"locator: {len(table)} pick(s) located, {len(skipped)} skipped, "
              f"{len(events_table)} event(s) -> {staged.final}")
    return LocateResult(output_dir=staged.final, locations=table, events=events_table,
                        skipped=skipped_out, s_picks=s_table, stations=stations,
                        settings=settings, timings=timings, time_s=elapsed)


def predict_stream(p_picks, source, stations, settings, cfg, model, travel, calibration,
                   folder, timings):
    """Windows, prediction and locations.csv's rows of the P picks, a chunk at a time.

    locations.csv is appended as each chunk is predicted; only its rows stay in
    memory. Returns (locations table in file order, skipped rows).
    """
    sampler = model if cfg.n_samples == 1 else mc_sampling_model(model, seed=cfg.seed)
    # Chunks a whole number of batches long: the batches, and so the Monte-Carlo
    # samples of a seed, are those of one prediction over all the picks.
    size = max(CHUNK_PICKS // cfg.batch_size, 1) * cfg.batch_size
    chunks = [p_picks.iloc[i:i + size] for i in range(0, len(p_picks), size)]
    tables, skipped, first = [], [], True
    timings.update(predict_s=0.0, windows_s=0.0)
    stream_start = time.time()

    def read(chunk):
        began = time.time()
        batch = estimates.chunk_windows(chunk, source, stations, settings, cfg)
        timings["windows_s"] += time.time() - began
        return batch

    bar = tqdm(total=len(p_picks), desc="locator", unit="pick", disable=not cfg.verbose)
    with open(os.path.join(folder, LOCATIONS_NAME), "w") as fh:
        out = event_output.CsvStream(fh)
        for batch in estimates.windows_ahead(chunks, read):
            skipped += batch.skipped
            if len(batch.located):
                stamp, began = {}, time.perf_counter()
                pred = prediction.predict_samples(
                    sampler, prediction.ArrayBatches(batch.x, cfg.batch_size), cfg.n_samples,
                    progress=False, timings=stamp if first else None, label="locator",
                    sampler=sampler)
                first = False
                # the first chunk's compilation is counted apart, as tester1 does
                timings["predict_s"] += time.perf_counter() - began - stamp.get("compile_s", 0.0)
                timings.setdefault("compile_s", stamp.get("compile_s", 0.0))
                table = estimates.locations_table(batch.located, pred, settings, travel,
                                                  calibration)
                out.write(csv_view(table))
                tables.append(table)
            bar.update(len(batch.located) + len(batch.skipped))
            bar.set_postfix(located=sum(len(t) for t in tables), skipped=len(skipped))
        bar.close()
    timings["stream_s"] = time.time() - stream_start
    if not tables:      # nothing located: no output at all, not an empty locations.csv
        os.remove(os.path.join(folder, LOCATIONS_NAME))
    table = pd.concat(tables) if tables else pd.DataFrame(columns=estimates.FIRST_COLUMNS)
    return table.reset_index(drop=True), skipped


def csv_view(table):
    """locations.csv's text columns: times as ISO strings. No float_format: pandas
    writes each float64 as its shortest repr, which reads back bit for bit."""
    out = table.copy()
    for col in ("p_time", "window_start", "origin_time_approx"):
        out[col] = ["" if t is None else str(t) for t in out[col]]
    return out


def write_events(folder, table, s_table, travel, cfg):
    """events.csv and events.xml, an event at a time; returns events.csv's table."""
    context = events.context_of(cfg, travel)
    rows, chunk = [], []
    with open(os.path.join(folder, EVENTS_NAME), "w", encoding="utf-8") as fh:
        xml = event_output.QuakeMLStream(fh, f"utrans_loc locator, model {context.model_name}",
                                         context.info)
        for _, _, row, event in events.locate_events(
                table, s_table, travel, events.origin_settings(cfg), context,
                progress=cfg.verbose > 0):
            rows.append(row)
            chunk.append(event)
            if len(chunk) == EVENT_CHUNK:
                xml.write(chunk)
                chunk = []
        xml.write(chunk)
        xml.close()
    out = pd.DataFrame(rows, columns=event_output.EVENT_COLUMNS)
    text = out.assign(origin_time=["" if t is None else str(t) for t in out["origin_time"]])
    files.atomic_write(os.path.join(folder, EVENTS_CSV_NAME),
                       lambda f: text.to_csv(f, index=False))
    return out


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


def report_skipped(rows):
    """The skipped rows in the picks' file order, each said on stderr."""
    rows = sorted(rows, key=lambda row: row["index"])
    for row in rows:
        print(f"locator: skipped {row['reason']}", file=sys.stderr)
    return rows


def skipped_table(skipped):
    """skipped.csv's table, in the picks' file order."""
    return pd.DataFrame(skipped, columns=estimates.SKIPPED_COLUMNS)


def station_picks(picks, stations):
    """S picks with their station's coordinates; those the inventory lacks are skipped.

    Returns
    -------
    (pandas.DataFrame, list of dict)
        :data:`events.S_PICK_COLUMNS` per usable pick, and the ``skipped`` rows.
    """
    rows, skipped, index = [], [], []
    for pick in picks.itertuples():
        try:
            lat, lon, elevation = stations.coordinates(pick.network, pick.station, pick.time)
        except pick_files.PickError as err:
            skipped.append(estimates.skip_row(pick, str(err)))
            continue
        index.append(pick.Index)     # the pick's place in the file, for skipped.csv's order
        rows.append({"pick_id": pick.pick_id, "network": pick.network, "station": pick.station,
                     "location": pick.location, "time": pick.time, "event_id": pick.event_id,
                     "phase": pick.phase, "phase_hint": pick.phase_hint, "station_lat": lat,
                     "station_lon": lon, "station_elevation_m": elevation})
    table = pd.DataFrame(rows, columns=events.S_PICK_COLUMNS, index=pd.Index(index, dtype=int))
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
    orphans = [estimates.skip_row(row, f"{pick_files.pick_label(row.network, row.station, row.time)}: "
                                       f"S pick of event {row.event_id}, which has no located P "
                                       "pick (an S pick joins its event's P picks by event_id)")
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


def check_origin_options(cfg):
    """The multi-station options, checked before any file is read (the velocity model too)."""
    from utrans_loc.solutions import COMBINE_METHODS

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


def model_settings(cfg):
    """The checkpoint's settings plus the locator's ``p_position_s``, ``p_position_range_s``
    and ``bandpass``.

    ``p_position_s``: given, else model_config.json's ``p_position_s`` (the
    median P position of the training data, trainer1), else
    :data:`DEFAULT_P_POSITION_S`. ``p_position_range_s``: the P positions the
    model was trained on (model_config.json), else the whole window (an
    upstream checkpoint: its training shifted every event, shift_event_r 0.99,
    UTRANS_SPEC.md section 4). ``bandpass``: given, else on (see ``locator``:
    the training waveforms were band-passed, in the DataCollected file or on
    reading).
    """
    settings = checkpoints.model_settings(cfg.input_model)
    saved = checkpoints.read_model_config(cfg.input_model)
    trained = saved.get("p_position_s")
    position = cfg.p_position_s if cfg.p_position_s is not None else \
        float(trained if trained is not None else DEFAULT_P_POSITION_S)
    length_s = settings["input_dimention"][0] / waveforms.SAMPLING_RATE
    if not 0 <= position < length_s:
        raise ValueError(f"p_position_s must be in [0, {length_s:g}) s, got {position}")
    settings["p_position_s"] = position
    seen = saved.get("p_position_range_s")
    settings["p_position_range_s"] = (float(seen[0]), float(seen[1])) if seen else \
        (0.0, length_s)
    settings["bandpass"] = True if cfg.bandpass is None else bool(cfg.bandpass)
    return settings


def p_positions_outside(p_picks, settings):
    """One warning line when P picks put P (their ``p_position_s``, else the run's)
    outside the positions the model was trained on; None when none do."""
    lo, hi = settings["p_position_range_s"]
    given = pd.to_numeric(p_picks["p_position_s"], errors="coerce").to_numpy(float)
    positions = np.where(np.isfinite(given), given, settings["p_position_s"])
    outside = (positions < lo) | (positions > hi)
    if not outside.any():
        return None
    values = sorted(set(positions[outside].tolist()))
    shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
    return (f"warning: {int(outside.sum())} of {len(positions)} P pick(s) put P at {shown} s "
            f"in the window, outside the {round(lo, 2):g}-{round(hi, 2):g} s where the model's "
            "training windows held it (model_config.json p_position_range_s): its estimates "
            "there are extrapolations")


def report_items(cfg, settings, loaded, table, skipped, timings, elapsed, n_s_picks, events_table,
                 travel):
    """report.txt: inputs, model settings, counts, timings."""
    predict = timings.get("predict_s", 0.0)
    flagged = events_table["flag"].fillna("") != ""
    return [
        ("input_waveforms", cfg.input_waveforms), ("input_sds", cfg.input_sds),
        ("input_inventory", cfg.input_inventory),
        ("input_picks", cfg.input_picks), ("picks_format", cfg.picks_format),
        ("input_model", cfg.input_model),
        ("input_model_sha256", loaded["sha256"] if loaded else "(model given in-process)"),
        ("output_name", cfg.output_name), ("channel_priority", ",".join(cfg.channel_priority)),
        ("max_gap_s", cfg.max_gap_s), ("estimate_uncertainty", cfg.estimate_uncertainty),
        ("number_of_sampling", cfg.n_samples), ("calibration", cfg.calibration),
        ("seed", cfg.seed), ("batch_size", cfg.batch_size), ("combine", cfg.combine),
        ("velocity_model", travel.description),
        ("pick_std_s", " ".join(f"{v:g}" for v in cfg.pick_std_s)),
        ("model_error", cfg.model_error), ("depth_correlation", cfg.depth_correlation),
        ("max_rms_s", cfg.max_rms_s), *settings.items(),
        ("n_located", len(table)), ("n_s_picks_kept", n_s_picks), ("n_skipped", len(skipped)),
        ("n_events", len(events_table)), ("n_events_flagged", int(flagged.sum())),
        ("n_resampled", int((table["resampled"] == "y").sum())),
        ("n_rotated", int((table["rotation_applied"] == "y").sum())),
        ("time_taken_s", round(elapsed, 1)),
        *((f"time_{k}", round(v, 2)) for k, v in timings.items()),
        ("picks_per_s_predict", round(len(table) / max(predict, 1e-9), 1)),
        ("picks_per_s_windows", round(len(table) / max(timings.get("windows_s", 0.0), 1e-9), 1)),
        ("picks_per_s_stream", round(len(table) / max(timings.get("stream_s", 0.0), 1e-9), 1))]
