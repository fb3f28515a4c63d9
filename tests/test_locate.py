"""locator: waveform files + StationXML + picks -> locations, QuakeML, map.

Acceptance on the 50 real STEAD traces written as miniSEED: the locator gives
tester1's predictions; the horizontals rotated to 1/2 (azimuth 30/120) and
the data resampled to 40 and 200 Hz give the same locations within measured
bounds. Bad inputs are skipped with a reason; nothing located is exit 2.
"""

import hashlib
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import PARITY, ROOT, STEAD_SAMPLE, need, run_script, working_dir
from obspy import Stream, Trace, UTCDateTime, read, read_events, read_inventory
from obspy.core.event import Catalog, Event, Pick, WaveformStreamID
from obspy.core.inventory import Channel, Station
from scipy.signal import resample_poly

sys.path.insert(0, str(ROOT / "04_locate"))

import EqT_utils_Loc_California as U  # noqa: E402
import locator as lc  # noqa: E402
from utrans_loc import (checkpoints, cli, devices, estimates, event_output,  # noqa: E402
                        exporters, locate, metrics, solutions, waveforms)
from utrans_loc import events as event_stage  # noqa: E402
from utrans_loc import picks as pick_files  # noqa: E402
from utrans_loc import stations as station_files  # noqa: E402

CKPT = PARITY / "location_ckpt_keras2.h5"
PRED = ["pred_event_lat", "pred_event_lon", "pred_depth_km"]
# Station codes of the variants of 109C (same coordinates, same traces).
ROTATED, LOW, HIGH = "R09C", "L09C", "H09C"
# Measured on the 50 traces (max abs difference of the raw model outputs from
# the 100 Hz E/N/Z files): rotation 0 (bitwise), 40 Hz 4.7e-7, 200 Hz 2.5e-7;
# RMS difference of the normalised inputs 4.9e-4 (40 Hz), 2.8e-4 (200 Hz), with
# the window's polyphase resampler (Lanczos before: 5.5e-7, 4.2e-7; 5.1e-4, 3.4e-4).
# The bounds keep about 10x (outputs) and 4x (inputs) margin.
ROTATION_TOL = 1e-7
RESAMPLED_OUTPUT_TOL = 5e-6
RESAMPLED_INPUT_RMS_TOL = 2e-3


def _stead_ids():
    return pd.read_csv(need(STEAD_SAMPLE.parent / "metadata.csv"))["trace_name"].to_numpy(str)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The 50 STEAD traces as miniSEED + StationXML + picks, and three variants of
    station 109C: horizontals rotated to 1/2 (azimuth 30/120), 40 Hz and 200 Hz."""
    tmp = tmp_path_factory.mktemp("locate_files")
    paths = exporters.export_stead(need(STEAD_SAMPLE), str(tmp / "stead"))
    variants = tmp / "variants"
    variants.mkdir()
    for name in sorted(os.listdir(paths["waveforms"])):
        st = read(os.path.join(paths["waveforms"], name))
        e, n, z = (st.select(component=c)[0] for c in "ENZ")
        out = Stream()
        for azimuth, comp in ((30.0, "1"), (120.0, "2")):
            a = np.radians(azimuth)
            out += _copy(e, ROTATED, "BH" + comp, n.data * np.cos(a) + e.data * np.sin(a))
        out += _copy(z, ROTATED, "BHZ", z.data)
        # An independent resampler (scipy's polyphase filter), not the locator's.
        for code, up, down in ((LOW, 2, 5), (HIGH, 2, 1)):
            for tr in (e, n, z):
                out += _copy(tr, code, tr.stats.channel,
                             resample_poly(tr.data.astype(np.float64), up, down, padtype="line"),
                             rate=100.0 * up / down)
        out.write(str(variants / name), format="MSEED")
    inventory = read_inventory(paths["inventory"])
    base = inventory[0][0]
    orientation = {"1": (30.0, 0.0), "2": (120.0, 0.0), "E": (90.0, 0.0), "N": (0.0, 0.0),
                   "Z": (0.0, -90.0)}
    for code, comps, rate in ((ROTATED, "12Z", 100.0), (LOW, "ENZ", 40.0), (HIGH, "ENZ", 200.0),
                              ("NOWF", "ENZ", 100.0)):
        inventory[0].stations.append(Station(
            code=code, latitude=base.latitude, longitude=base.longitude, elevation=base.elevation,
            channels=[Channel(code="BH" + c, location_code="", latitude=base.latitude,
                              longitude=base.longitude, elevation=base.elevation, depth=0.0,
                              azimuth=orientation[c][0], dip=orientation[c][1], sample_rate=rate)
                      for c in comps]))
    inventory.write(str(tmp / "stations.xml"), format="STATIONXML")
    picks = pd.read_csv(paths["picks"], dtype=str)
    every = pd.concat([picks.assign(station=code) for code in ("109C", ROTATED, LOW, HIGH)])
    every.to_csv(tmp / "picks.csv", index=False)
    return {**paths, "dir": tmp, "all_waveforms": str(tmp / "**" / "*.mseed"),
            "all_inventory": str(tmp / "stations.xml"), "all_picks": str(tmp / "picks.csv"),
            "picks_table": picks}


def _copy(tr, station, channel, data, rate=None):
    out = tr.copy()
    out.stats.pop("mseed", None)       # the encoding read back (FLOAT32) would not fit float64
    out.stats.station, out.stats.channel = station, channel
    out.data = np.asarray(data, dtype=np.float64)
    if rate is not None:
        out.stats.sampling_rate = rate
    return out


@pytest.fixture(scope="module")
def model():
    ckpt = need(CKPT)
    return checkpoints.build_from_checkpoint(ckpt, checkpoints.model_settings(ckpt))[0]


@pytest.fixture(scope="module")
def located(files, model, tmp_path_factory):
    """One in-process locator run over the 200 picks (the model built once); the
    picks of an event are copies of one trace at one place, so they are combined by
    the inverse-variance mean (the hybrid origin is tested in test_locate_network)."""
    cfg = _config(files["all_waveforms"], files["all_inventory"], files["all_picks"], "all",
                  combine="weighted")
    with working_dir(tmp_path_factory.mktemp("locate_run")):
        result = locate.run(cfg, model=model)
    table = result.locations
    x, pred = _inputs_and_outputs(cfg, model)
    return {"locations": table, "output_dir": result.output_dir, "x": x, "pred": pred,
            "rows": {code: np.flatnonzero((table["station"] == code).to_numpy())
                     for code in ("109C", ROTATED, LOW, HIGH)}}


def _inputs_and_outputs(cfg, model):
    """The model input and raw outputs of every P pick of ``cfg``, by the locator's own
    stages (estimates.chunk_windows, prediction.predict_samples), in file order."""
    from utrans_loc import estimates, prediction, sources

    picks = pick_files.read_picks(cfg.input_picks)
    picks["pick_id"] = [str(i) for i in picks.index]
    batch = estimates.chunk_windows(
        picks[picks["phase"] == "P"], sources.open_waveforms(cfg.input_waveforms, cfg.input_sds),
        station_files.read_stations(cfg.input_inventory), locate.model_settings(cfg), cfg)
    return batch.x, prediction.predict_samples(model, prediction.ArrayBatches(batch.x, 50),
                                               progress=False)


def _config(wave, inventory, picks, name, **changes):
    args = cli.defaults_of(lc.locator)
    args.update(input_waveforms=wave, input_inventory=inventory, input_picks=picks,
                input_model=need(CKPT), output_name=name, batch_size=50, verbose=0,
                bandpass=True)
    args.update(changes)
    return locate.LocateConfig(**args)


def test_export_stead_writes_correct_stats(files):
    meta = pd.read_csv(need(STEAD_SAMPLE.parent / "metadata.csv")).set_index("trace_name")
    name = meta.index[3]
    st = read(os.path.join(files["waveforms"], f"{name}.mseed"))
    assert sorted(tr.stats.channel for tr in st) == ["BHE", "BHN", "BHZ"]
    start = UTCDateTime(meta.loc[name, "trace_start_time"])
    import h5py
    with h5py.File(STEAD_SAMPLE, "r") as fh:
        raw = fh[f"earthquake/local/{name}"][()]
    for i, comp in enumerate("ENZ"):
        tr = st.select(component=comp)[0]
        assert (tr.stats.network, tr.stats.station, tr.stats.location) == ("TA", "109C", "")
        assert tr.stats.starttime == start and tr.stats.sampling_rate == 100.0
        np.testing.assert_array_equal(tr.data, raw[:, i])
    inv = read_inventory(files["inventory"])
    assert [(c.code, c.azimuth, c.dip) for c in inv[0][0].channels] == [
        ("BHE", 90.0, 0.0), ("BHN", 0.0, 0.0), ("BHZ", 0.0, -90.0)]
    picks = files["picks_table"].set_index(_stead_ids())
    p_time = start + meta.loc[name, "p_arrival_sample"] / 100
    assert UTCDateTime(picks.loc[name, "p_time"]) == p_time
    assert picks.loc[name, "event_id"] == str(meta.loc[name, "source_id"])


@pytest.mark.slow
def test_locator_matches_tester1_on_real_traces(located, model):
    """tester1's reading of the raw STEAD file (band-pass on, all 50 ids in one batch) and
    its prediction (prediction.run's generator, predict_samples and results_table), on
    the same model object: the locator's inputs and outputs from the miniSEED files."""
    from utrans_loc import prediction, splits

    ids = _stead_ids()
    gen = U.DataGeneratorPrediction(ids, need(STEAD_SAMPLE), dim=(6000, 3), batch_size=50,
                                    bandpass=True)
    rows = located["rows"]["109C"]
    np.testing.assert_array_equal(located["x"][rows], gen[0][0])   # sample for sample
    y_ref = prediction.predict_samples(model, gen, progress=False)
    ref = prediction.results_table(splits.read_metadata(STEAD_SAMPLE, ids), y_ref,
                                   U.MAX_D, U.MIN_D)
    ours = located["locations"].iloc[rows].reset_index(drop=True)
    assert (ours["rotation_applied"] == "n").all() and (ours["resampled"] == "n").all()
    assert np.abs(ours[PRED].to_numpy() - ref[PRED].to_numpy()).max() < 1e-5   # measured 0
    assert np.abs(located["pred"][rows] - y_ref).max() < 1e-5                  # measured 0


@pytest.mark.slow
def test_rotated_horizontals_give_the_same_locations(located):
    table, rows = located["locations"], located["rows"]
    assert (table.iloc[rows[ROTATED]]["rotation_applied"] == "y").all()
    assert (table.iloc[rows[ROTATED]]["channels"] == "BH1,BH2,BHZ").all()
    diff = np.abs(located["pred"][rows[ROTATED]] - located["pred"][rows["109C"]]).max()
    assert diff <= ROTATION_TOL


@pytest.mark.slow
@pytest.mark.parametrize("code, rate", [(LOW, "40"), (HIGH, "200")])
def test_resampled_data_give_close_locations(located, code, rate):
    table, rows, x = located["locations"], located["rows"], located["x"]
    assert (table.iloc[rows[code]]["sample_rate_in_hz"].astype(str) == rate).all()
    assert (table.iloc[rows[code]]["resampled"] == "y").all()
    rms = np.sqrt(np.mean((x[rows[code]] - x[rows["109C"]]) ** 2))
    assert rms < RESAMPLED_INPUT_RMS_TOL
    diff = np.abs(located["pred"][rows[code]] - located["pred"][rows["109C"]]).max()
    assert diff < RESAMPLED_OUTPUT_TOL


@pytest.mark.slow
def test_outputs_and_combined_origins_without_sampling(located):
    out = located["output_dir"]
    table = pd.read_csv(os.path.join(out, "locations.csv"), dtype={"event_id": str})
    assert list(table.columns[:10]) == ["network", "station", "location", "p_time", "event_id",
                                        "station_lat", "station_lon", *PRED]
    assert {"channels", "sample_rate_in_hz", "rotation_applied", "origin_time_approx"} <= \
        set(table.columns)
    assert len(table) == 200 and not any(c.endswith("_std") for c in table.columns)
    assert len(pd.read_csv(os.path.join(out, "skipped.csv"))) == 0
    catalog = read_events(os.path.join(out, "events.xml"))
    assert len(catalog) == 50
    event = catalog[0]
    rows = table[table["event_id"] == str(event.comments[0].text.split(": ")[1])]
    assert len(event.origins) == 5 and len(event.picks) == 4     # 4 stations + combined
    best = event.preferred_origin()
    assert best.resource_id == event.origins[-1].resource_id
    assert best.latitude == pytest.approx(rows["pred_event_lat"].mean(), abs=1e-9)
    assert best.depth == pytest.approx(rows["pred_depth_km"].mean() * 1000, abs=1e-6)
    assert best.depth_errors.uncertainty == pytest.approx(
        rows["pred_depth_km"].std(ddof=1) / 2 * 1000, rel=1e-6)
    assert "mean of 4" in best.comments[0].text
    assert "P travel time" in best.comments[0].text
    assert best.comments[1].text.startswith("velocity model: homogeneous half-space, vp 6")
    assert "approximate" in event.origins[0].comments[1].text
    # Origin time: P minus the P travel time of the run's velocity model (--vp 6 km/s,
    # straight ray to the station at its elevation).
    first = table.iloc[0]
    epicentral = np.sqrt(first["hypocentral_distance_km"] ** 2 - first["pred_depth_km"] ** 2)
    vertical = max(first["pred_depth_km"], 0.0) + first["station_elevation_m"] / 1000.0
    assert UTCDateTime(first["p_time"]) - UTCDateTime(first["origin_time_approx"]) == \
        pytest.approx(np.hypot(epicentral, vertical) / 6.0, abs=1e-5)
    assert os.path.getsize(os.path.join(out, "figures", "map.png")) > 1000


def _sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.mark.slow
def test_command_line_with_sampling_calibration_and_bad_picks(files, tmp_path):
    picks = files["picks_table"].iloc[:3]
    bad = pd.DataFrame([
        {**picks.iloc[0], "station": "XXXX", "event_id": "b1"},           # not in the inventory
        {**picks.iloc[0], "station": "NOWF", "event_id": "b2"},           # no waveforms
        {**picks.iloc[1], "p_time": str(UTCDateTime(picks.iloc[1]["p_time"]) + 86400),
         "event_id": "b3"}])                                             # window outside the data
    pd.concat([picks, picks.assign(station=ROTATED), bad]).to_csv(tmp_path / "picks.csv",
                                                                  index=False)
    factors = {"lat": 2.0, "lon": 3.0, "depth": 0.5}
    (tmp_path / "cal.json").write_text(json.dumps({
        "format": 1, "factors": factors, "model_file": str(CKPT), "model_sha256": _sha256(CKPT)}))
    run = run_script(
        "04_locate/locator.py",
        "--input_waveforms", files["all_waveforms"], "--input_inventory", files["all_inventory"],
        "--input_picks", "picks.csv", "--input_model", need(CKPT), "--output_name", "cli",
        "--estimate_uncertainty", "--number_of_sampling", "3", "--seed", "1",
        "--calibration", "cal.json", "--combine", "weighted", "--verbose", "0", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "cli_outputs"
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped["event_id"]) == ["b1", "b2", "b3"]
    for reason, text in zip(skipped["reason"], ("not in the inventory", "no waveforms",
                                                "outside the data")):
        assert text in reason and "at 20" in reason      # names the station and the time
    assert run.stderr.count("locator: skipped") == 3
    table = pd.read_csv(out / "locations.csv", dtype={"event_id": str})
    assert len(table) == 6
    np.testing.assert_allclose(table["pred_event_lat_std"], 2.0 * table["pred_event_lat_std_raw"])
    np.testing.assert_allclose(table["pred_depth_km_std"], 0.5 * table["pred_depth_km_std_raw"])
    assert (table["pred_event_lat_std_raw"] > 0).all()
    catalog = read_events(str(out / "events.xml"))
    assert len(catalog) == 3
    for event in catalog:
        rows = table[table["event_id"] == event.comments[0].text.split(": ")[1]]
        assert len(rows) == 2
        for origin, row in zip(event.origins, rows.itertuples()):
            assert origin.latitude_errors.uncertainty == pytest.approx(row.pred_event_lat_std)
            assert origin.depth_errors.uncertainty == pytest.approx(row.pred_depth_km_std * 1000)
        best = event.preferred_origin()
        assert "inverse-variance" in best.comments[0].text
        # weights from the km std, each floored at solutions.MIN_SPREAD_KM (one rule for
        # every combination)
        w = 1 / np.maximum(rows["pred_event_lat_std_km"], solutions.MIN_SPREAD_KM) ** 2
        assert best.latitude == pytest.approx((w * rows["pred_event_lat"]).sum() / w.sum(),
                                              abs=1e-9)
        # the mean is taken in kilometres, each spread floored at solutions.MIN_SPREAD_KM;
        # its error in degrees is converted at the mean's latitude
        per_degree = float(metrics.km_per_degree(best.latitude)[0])
        assert best.latitude_errors.uncertainty == pytest.approx(
            np.sqrt(1 / w.sum()) / per_degree, rel=1e-6)
        # one rule for every combination: a spread below solutions.MIN_SPREAD_KM is floored
        w = 1 / np.maximum(rows["pred_depth_km_std"], solutions.MIN_SPREAD_KM) ** 2
        assert best.depth_errors.uncertainty == pytest.approx(np.sqrt(1 / w.sum()) * 1000)
    assert (out / "figures" / "map.png").is_file()
    assert "input_model_sha256: " + _sha256(CKPT) in (out / "report.txt").read_text()


# --------------------------------------------------------------------------
# Bad input (no model needed)
# --------------------------------------------------------------------------
T0 = UTCDateTime("2020-01-01T00:00:00Z")


def _stations(tmp_path, channels="ENZ", csv=False):
    if csv:
        path = tmp_path / "stations.csv"
        path.write_text("network,station,latitude,longitude\nXX,STA,34.0,-118.0\n")
        return station_files.read_stations(path)
    from obspy.core.inventory import Inventory, Network
    orient = {"E": (90.0, 0.0), "N": (0.0, 0.0), "Z": (0.0, -90.0), "1": (30.0, 0.0),
              "2": (120.0, 0.0)}
    inv = Inventory(networks=[Network(code="XX", stations=[Station(
        code="STA", latitude=34.0, longitude=-118.0, elevation=0.0,
        channels=[Channel(code=band + c, location_code="", latitude=34.0, longitude=-118.0,
                          elevation=0.0, depth=0.0, azimuth=orient[c][0], dip=orient[c][1])
                  for band in ("HH", "BH") for c in channels])])], source="test")
    inv.write(str(tmp_path / "stations.xml"), format="STATIONXML")
    return station_files.read_stations(tmp_path / "stations.xml")


def _traces(band="HH", comps="ENZ", rate=100.0, start=T0, seconds=120.0, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    return [Trace(rng.standard_normal(n).astype(np.float32), header={
        "network": "XX", "station": "STA", "channel": band + c, "sampling_rate": rate,
        "starttime": start}) for c in comps]


def _cut(traces, stations, p_time=T0 + 30, **kw):
    return waveforms.cut_window(traces, "XX", "STA", p_time, 7.0, stations, **kw)


def test_window_is_the_raw_samples_and_band_priority(tmp_path):
    stations = _stations(tmp_path)
    hh, bh = _traces("HH"), _traces("BH", seed=1)
    window = _cut(hh + bh, stations)
    assert window.channels == ("HHE", "HHN", "HHZ") and not window.resampled
    assert window.data.dtype == np.float32
    np.testing.assert_array_equal(window.data[:, 2], hh[2].data[2300:8300])
    # HH without a third component: BH is used.
    window = _cut(hh[:2] + bh, stations)
    assert window.channels == ("BHE", "BHN", "BHZ")
    window = _cut(hh + bh, stations, channel_priority=("BH", "HH"))
    assert window.channels[0] == "BHE"


@pytest.mark.parametrize("case, message", [
    ("no waveforms", "no waveforms for this station"),
    ("two components", "2 component(s)"),
    ("long gap", "gap of 2.00 s"),
    ("outside", "outside the data"),
    ("5 Hz", "cannot be resampled"),
    ("LH only", "no HH/BH/EH/HN channels"),
    ("not in inventory", "not in the inventory"),
    ("NaN", "NaN, Inf or masked samples"),
])
def test_bad_picks_raise_one_line_naming_station_and_time(tmp_path, case, message):
    stations = _stations(tmp_path)
    traces = _traces()
    p_time = T0 + 30
    if case == "no waveforms":
        traces = []
    elif case == "two components":
        traces = traces[:2]
    elif case == "long gap":
        traces = traces[:2] + [traces[2].slice(T0, T0 + 40), traces[2].slice(T0 + 42.01, None)]
    elif case == "outside":
        p_time = T0 + 110
    elif case == "5 Hz":
        traces = _traces(rate=5.0)
    elif case == "LH only":
        traces = _traces("LH", rate=1.0)
    elif case == "NaN":
        traces[1].data[4000] = np.nan
    with pytest.raises(pick_files.PickError) as err:
        if case == "not in inventory":
            stations.coordinates("XX", "NOPE", p_time)
        _cut(traces, stations, p_time=p_time)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert str(p_time) in text and ("XX.STA" in text or "XX.NOPE" in text)


def test_short_gap_is_interpolated(tmp_path):
    stations = _stations(tmp_path)
    traces = _traces()
    z = traces[2]
    traces = traces[:2] + [z.slice(T0, T0 + 40), z.slice(T0 + 40.5, None)]
    window = _cut(traces, stations)
    assert np.isfinite(window.data).all()
    gap = slice(int((40.0 - 23.0) * 100) + 1, int((40.5 - 23.0) * 100))
    inside = window.data[gap, 2]
    assert np.all(np.diff(inside) == pytest.approx(np.diff(inside)[0], rel=1e-3))   # a line


def test_rotation_needs_orientations(tmp_path):
    traces = _traces(comps="12Z")
    assert _cut(traces, _stations(tmp_path, channels="12Z")).rotated
    with pytest.raises(pick_files.PickError, match="CSV inventory"):
        _cut(traces, _stations(tmp_path, csv=True))
    window = _cut(_traces(), _stations(tmp_path, csv=True))   # E/N/Z with a CSV: as they are
    assert not window.rotated


def test_quakeml_picks_read_like_csv(files, tmp_path):
    table = files["picks_table"].iloc[:4]
    events = [Event(picks=[Pick(time=UTCDateTime(row.p_time), phase_hint="P",
                                waveform_id=WaveformStreamID(row.network, row.station))])
              for row in table.itertuples()]
    Catalog(events=events).write(str(tmp_path / "picks.xml"), format="QUAKEML")
    picks = pick_files.read_picks(tmp_path / "picks.xml")
    csv = pick_files.read_picks(files["picks"])
    assert list(picks["station"]) == list(csv["station"][:4])
    assert all(a == b for a, b in zip(picks["time"], csv["time"][:4]))
    assert picks["event_id"].nunique() == 4


@pytest.mark.slow
def test_nothing_located_is_exit_2_and_existing_folder_is_refused(files, tmp_path, capsys):
    bad = files["picks_table"].iloc[:2].assign(station="XXXX")
    bad.to_csv(tmp_path / "bad.csv", index=False)
    args = ["--input_waveforms", files["waveforms"], "--input_inventory", files["inventory"],
            "--input_picks", str(tmp_path / "bad.csv"), "--input_model", need(CKPT),
            "--output_name", "none", "--verbose", "1"]
    with working_dir(tmp_path):
        assert lc.main(args) == 2
        out, err = capsys.readouterr()
        # the start-up line names the picks and the device, before any pick is skipped
        assert out.splitlines()[0] == (f"locator: locating 2 P pick(s) of {tmp_path / 'bad.csv'} "
                                       f"with {need(CKPT)} on {devices.device_description()}")
        assert "nothing could be located: all 2 P pick(s) skipped" in err
        assert err.count("locator: skipped TA.XXXX at ") == 2
        assert not [p for p in os.listdir(tmp_path) if p.startswith("none_outputs")]
        (tmp_path / "kept_outputs").mkdir()
        (tmp_path / "kept_outputs" / "mine.txt").write_text("earlier result")
        args[args.index("none")] = "kept"
        assert lc.main(args) == 2
        assert "kept_outputs already exists" in capsys.readouterr().err
        assert os.listdir(tmp_path / "kept_outputs") == ["mine.txt"]


def test_help_lists_every_option_with_its_default():
    text = lc.build_parser().format_help()
    for option in ("--input_waveforms", "--p_position_s", "--bandpass", "--channel_priority",
                   "--max_gap_s", "--calibration", "--number_of_sampling", "--seed"):
        assert option in text
    assert "(default: HH,BH,EH,HN)" in " ".join(text.split())


# --------------------------------------------------------------------------
# Waveform sources, phases, QuakeML (issue 22)
# --------------------------------------------------------------------------
def test_waveform_options_exactly_one_and_sds_must_be_a_folder(tmp_path, capsys):
    common = ["--input_inventory", "stations.xml", "--input_picks", "picks.csv",
              "--input_model", "model.h5", "--output_name", "x", "--verbose", "0"]
    (tmp_path / "not_a_folder").write_text("")
    with working_dir(tmp_path):
        for extra, message in (
                ([], "give exactly one of --input_waveforms (a folder or glob of waveform files) "
                     "and --input_sds (the root of an SDS archive)"),
                (["--input_waveforms", "w", "--input_sds", "s"], "got both: w and s"),
                (["--input_sds", "not_a_folder"], "--input_sds not_a_folder: not a folder")):
            assert lc.main(extra + common) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and message in err[0] and err[0].startswith("locator: error: ")
        assert not (tmp_path / "x_outputs").exists()


def test_model_that_is_not_hdf5_is_named_with_its_option(tmp_path, capsys):
    for name, text in (("stations.csv", "network,station,latitude,longitude\nXX,A,1,2\n"),
                       ("picks.csv", "network,station,p_time\nXX,A,2020-01-01T00:00:00Z\n"),
                       ("model.weights.h5", "this is not HDF5\n")):
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError) as err:
        checkpoints.model_settings(str(tmp_path / "model.weights.h5"))
    assert str(err.value).startswith(f"--input_model {tmp_path / 'model.weights.h5'}: not a "
                                     "readable HDF5 weights file")
    with working_dir(tmp_path):
        assert lc.main(["--input_waveforms", ".", "--input_inventory", "stations.csv",
                        "--input_picks", "picks.csv", "--input_model", "model.weights.h5",
                        "--output_name", "x", "--verbose", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("locator: error: --input_model model.weights.h5: not a readable HDF5")


def test_resource_ids_are_valid_quakeml_uris(tmp_path):
    """Every event_id gives a valid QuakeML URI (ObsPy warns otherwise); two never meet."""
    import warnings

    from obspy.core.event import ResourceIdentifier
    from obspy.io.quakeml.core import _validate

    keys = [event_output.resource_key(k) for k in ("ev1", "smi:local/3f2a", "a b", "a_b", "Ω", "")]
    assert keys[0] == "ev1" and len(set(keys)) == len(keys)
    prefix = event_output.RESOURCE_PREFIX
    event = Event(resource_id=ResourceIdentifier(f"{prefix}/event/{keys[1]}"),
                  picks=[Pick(resource_id=ResourceIdentifier(f"{prefix}/pick/{k}/0"), time=T0,
                              waveform_id=WaveformStreamID("XX", "STA")) for k in keys])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Catalog(events=[event]).write(str(tmp_path / "events.xml"), format="QUAKEML")
    assert _validate(str(tmp_path / "events.xml"))


@pytest.mark.slow
def test_quakeml_pick_file_from_obspy_gives_valid_events_and_keeps_s_picks(files, model, tmp_path,
                                                                           capsys):
    """An ObsPy-written pick file (ids smi:local/<uuid>; P, Pg, S, PKP hints): events.xml
    passes ObsPy's QuakeML 1.2 validator, event_id is the uuid, S picks are kept (result
    and events.xml), the others listed in skipped.csv; the progress bar says locator;
    coordinates are written as given and predictions read back bit for bit."""
    import warnings

    from obspy.io.quakeml.core import _validate

    table = files["picks_table"].iloc[:3]
    events = []
    for row in table.itertuples():
        # P 7 s into the 60 s trace: the window is the whole file
        p = UTCDateTime(row.p_time) - float(row.p_position_s) + 7.0
        events.append(Event(picks=[
            Pick(time=p, phase_hint="P", waveform_id=WaveformStreamID("TA", "109C")),
            Pick(time=p, phase_hint="Pg", waveform_id=WaveformStreamID("TA", ROTATED)),
            Pick(time=p + 4.0, phase_hint="S", waveform_id=WaveformStreamID("TA", "109C")),
            Pick(time=p + 4.0, phase_hint="S", waveform_id=WaveformStreamID("TA", "XXXX")),
            Pick(time=p + 1.0, phase_hint="PKP", waveform_id=WaveformStreamID("TA", "109C"))]))
    Catalog(events=events).write(str(tmp_path / "picks.xml"), format="QUAKEML")
    cfg = _config(files["all_waveforms"], files["all_inventory"], str(tmp_path / "picks.xml"),
                  "qml", verbose=1, figures=False)
    with working_dir(tmp_path), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = locate.run(cfg, model=model)
    assert not [w for w in caught if "QuakeML" in str(w.message)]
    err = capsys.readouterr().err
    assert "locator: 100%" in err and "tester1" not in err
    out = tmp_path / "qml_outputs"
    assert _validate(str(out / "events.xml"))
    uuids = [str(e.resource_id).split("/")[-1] for e in events]
    assert str(events[0].resource_id) == f"smi:local/{uuids[0]}"
    table = res.locations
    assert list(table["event_id"]) == [u for u in uuids for _ in range(2)]
    assert list(table["station"]) == ["109C", ROTATED] * 3
    s_picks = res.s_picks
    assert list(s_picks["event_id"]) == uuids and (s_picks["phase"] == "S").all()
    assert list(s_picks.columns) == list(event_stage.S_PICK_COLUMNS)
    assert (s_picks["time"] == [e.picks[2].time for e in events]).all()
    lat = res.stations.coordinates("TA", "109C", events[0].picks[0].time)[0]
    assert (s_picks["station_lat"] == lat).all()
    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    assert list(skipped.columns) == list(estimates.SKIPPED_COLUMNS)
    assert list(skipped["station"]) == ["XXXX", "109C"] * 3
    assert list(skipped["phase"]) == ["S", ""] * 3
    assert skipped["reason"][0].endswith("station not in the inventory " + files["all_inventory"])
    assert skipped["reason"][1].startswith("phase hint 'PKP' is neither P nor S")
    catalog = read_events(str(out / "events.xml"))
    for event, uuid in zip(catalog, uuids):
        assert event.comments[0].text == f"input event_id: {uuid}"
        assert [p.phase_hint for p in event.picks] == ["P", "Pg", "S"]     # as given
        assert event.picks[2].waveform_id.station_code == "109C"
    # coordinates as given (no %.17g noise), every float read back bit for bit
    text = (out / "locations.csv").read_text()
    assert f",{lat!r}," in text and "9999999" not in text.split("\n")[1].split(",")[5]
    back = pd.read_csv(out / "locations.csv", dtype={"event_id": str})
    for column in ("station_lat", "station_lon", *PRED, "hypocentral_distance_km"):
        np.testing.assert_array_equal(back[column].to_numpy(), table[column].to_numpy())


@pytest.mark.slow
def test_sds_archive_gives_the_files_locations_bit_for_bit(files, located, model, tmp_path):
    """The 50 STEAD traces of 109C written as an SDS archive (day files): --input_sds gives
    the same model inputs and predictions as the miniSEED files."""
    stream = read(os.path.join(files["waveforms"], "*.mseed"))
    exporters.write_sds(stream, tmp_path / "sds")
    cfg = _config(None, files["inventory"], files["picks"], "sds", input_sds=str(tmp_path / "sds"),
                  figures=False)
    with working_dir(tmp_path):
        res = locate.run(cfg, model=model)
    rows = located["rows"]["109C"]
    assert len(res.locations) == 50 and len(res.skipped) == 0
    x, pred = _inputs_and_outputs(cfg, model)
    np.testing.assert_array_equal(x, located["x"][rows])
    np.testing.assert_array_equal(pred, located["pred"][rows])
    np.testing.assert_array_equal(res.locations[PRED].to_numpy(),
                                  located["locations"].iloc[rows][PRED].to_numpy())


@pytest.mark.slow
def test_dense_array_of_colocated_stations_from_quakeml_picks(files, model, tmp_path):
    """Issue 30's failing case, rebuilt: ten real STEAD traces as miniSEED + StationXML,
    picks as an ObsPy-written QuakeML (two events, five stations each, the stations
    co-located as at a dense array or a network whose coordinates were copied), the
    parity checkpoint. Before: ``locator: error: On Arrival object: Value 'nan' for
    'azimuth' is not a finite floating point value`` (exit 2, nothing written; measured on
    the previous commit). Now all ten picks are located, events.xml is schema-valid and
    each event says why its picks were not combined (they are the real traces' own
    times, days apart)."""
    from obspy.io.quakeml.core import _validate

    picks = files["picks_table"]
    base = read_inventory(files["inventory"])[0][0]
    traces, stations, events = Stream(), {}, []
    for k in range(2):
        event_picks = []
        for i in range(5):
            row = picks.iloc[5 * k + i]
            code = f"D{k}{i:02d}"
            for tr in read(os.path.join(files["waveforms"], f"{_stead_ids()[5 * k + i]}.mseed")):
                traces += _copy(tr, code, tr.stats.channel, tr.data)
            stations[("TA", code)] = (base.latitude, base.longitude, base.elevation, {"BH"})
            # P 7 s into the 60 s trace (the default position): the window is the whole file
            p_time = UTCDateTime(row["p_time"]) - float(row["p_position_s"]) + 7.0
            event_picks.append(Pick(time=p_time, phase_hint="P",
                                    waveform_id=WaveformStreamID("TA", code)))
        events.append(Event(picks=event_picks))
    traces.write(str(tmp_path / "dense.mseed"), format="MSEED")
    exporters.write_enz_inventory(stations, tmp_path / "dense.xml", "test")
    Catalog(events=events).write(str(tmp_path / "dense_picks.xml"), format="QUAKEML")
    run = run_script(
        "04_locate/locator.py", "--input_waveforms", "dense.mseed", "--input_inventory",
        "dense.xml", "--input_picks", "dense_picks.xml", "--input_model", need(CKPT),
        "--output_name", "dense", "--no-figures", "--verbose", "0", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "dense_outputs"
    assert len(pd.read_csv(out / "locations.csv")) == 10
    assert len(pd.read_csv(out / "skipped.csv")) == 0
    assert _validate(str(out / "events.xml"))
    table = pd.read_csv(out / "events.csv")
    assert len(table) == 2 and table["latitude"].notna().all()
    assert table["flag"].str.contains("s apart").all()
    for event in read_events(str(out / "events.xml")):
        assert len(event.picks) == 5 and event.preferred_origin() is not None
        assert any(c.text.startswith("flagged: picks") for c in event.comments)
