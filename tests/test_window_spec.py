"""One window spec (utrans_loc.waveforms.WINDOW) for the data builders and the locator.

A real STEAD trace cut by the SeisBench builder (00_data/seisbench_data.py) and
by the locator (waveforms.cut_window on the same samples as miniSEED) gives the
same model input: bitwise at 100 Hz, within a measured bound at 50 and 200 Hz.
trainer1 records where P sat in its training windows; the locator takes its
default P position from there and warns once of picks outside that range.
"""

import dataclasses
import inspect
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import PARITY, STEAD_SAMPLE, need, working_dir
from obspy import Stream, Trace, UTCDateTime, read
from scipy.signal import decimate, resample_poly

import EqT_utils_Loc_California as U
import seisbench_data as sb
from utrans_loc import checkpoints, estimates, exporters, locate, waveforms
from utrans_loc import stations as station_files
from utrans_loc.traces import bandpass_taper

TRACE = "109C.TA_20060723155859_EV"
NET, STA, BAND = "TA", "109C", "BH"
START = UTCDateTime("2006-07-23T15:59:00.96")
# RMS difference of the normalised inputs, builder vs locator, measured on this
# trace (both resample with WINDOW.resample): 4.8e-8 (50 Hz, 180 s) and 4.6e-8
# (200 Hz, 60 and 180 s): float32 vs float64 into the band-pass; 3.8e-5 (50 Hz,
# 60 s: 5999 samples at 100 Hz, where the builder pads one zero and the locator
# holds the last value; 1.1e-6 without the last second). Bounds: 2.5-4x.
RMS_BOUND = {(50, 60): 1e-4, (50, 180): 2e-7, (200, 60): 2e-7, (200, 180): 2e-7}


def _stead_enz():
    with h5py.File(need(STEAD_SAMPLE), "r") as fh:
        group = fh["earthquake/local"]
        return group[TRACE][()], float(group[TRACE].attrs["p_arrival_sample"])


def _trace_at(rate, seconds):
    """(samples x 3 E N Z float32 at ``rate``, P sample): the STEAD trace, or for 180 s
    between two other traces of the sample file (P then at 67 s: the builder must cut)."""
    enz, p = _stead_enz()
    if seconds == 180:
        with h5py.File(need(STEAD_SAMPLE), "r") as fh:
            before, after = (fh[f"earthquake/local/109C.TA_{name}_EV"][()]
                             for name in ("20061103155652", "20061103161223"))
        enz, p = np.concatenate([before, enz, after]), p + 6000
    data = enz.astype(np.float64)
    if rate == 50:
        data = decimate(data, 2, ftype="fir", zero_phase=True, axis=0)
    elif rate == 200:
        data = resample_poly(data, 2, 1, axis=0, padtype="line")
    return data.astype(np.float32), p * rate / 100.0


def _builder(tmp_path, enz, rate, p_sample):
    """What the SeisBench builder stores for this trace: (window, P sample in it)."""
    folder = tmp_path / "seisbench"
    folder.mkdir()
    with h5py.File(folder / "waveforms.hdf5", "w") as fh:
        fh.create_dataset(f"data/{TRACE}", data=enz.T)            # channels first
        fh.create_dataset("data_format/dimension_order", data="CW")
    pd.DataFrame([{"trace_name": TRACE, "station_latitude_deg": 32.9,
                   "station_longitude_deg": -117.1, "source_latitude_deg": 33.0,
                   "source_longitude_deg": -116.9, "source_depth_km": 10.0,
                   "trace_sampling_rate_hz": rate, "trace_component_order": "ENZ",
                   "trace_p_arrival_sample": p_sample}]).to_csv(folder / "metadata.csv",
                                                                index=False)
    source = sb.SeisBenchSource(folder)
    readers = source.open()
    try:
        window, attrs = source.process(readers, {"input": 0, "row": 0}, region=None)
    finally:
        for fh in readers:
            fh.close()
    return window, float(attrs["p_arrival_sample"])


def _locator(tmp_path, enz, rate, p_time_s, p_position_s):
    """The locator's window of the same samples written as miniSEED: the pick ``p_time_s``
    after the first sample, P at ``p_position_s`` in the window."""
    path = tmp_path / "trace.mseed"
    if rate == 100:
        exporters.write_enz_mseed(str(path), enz, NET, STA, BAND, START)
    else:
        Stream([Trace(enz[:, i].copy(), header={
            "network": NET, "station": STA, "channel": BAND + c, "sampling_rate": float(rate),
            "starttime": START}) for i, c in enumerate("ENZ")]).write(str(path), format="MSEED")
    inventory = tmp_path / "stations.xml"
    exporters.write_enz_inventory({(NET, STA): (32.9, -117.1, 0.0, {BAND})}, str(inventory),
                                  "test_window_spec")
    stations = station_files.read_stations(str(inventory))
    return waveforms.cut_window(list(read(str(path))), NET, STA, START + p_time_s,
                                p_position_s, stations)


@pytest.mark.parametrize("rate, seconds", [(100, 60), (100, 180), (50, 60), (50, 180),
                                           (200, 60), (200, 180)])
def test_builder_and_locator_give_the_same_model_input(tmp_path, rate, seconds):
    enz, p_sample = _trace_at(rate, seconds)
    stored, p_in_window = _builder(tmp_path, enz, rate, p_sample)
    # STEAD's P (7 s); the long trace is cut to put P at the spec's position.
    assert p_in_window == 700 == waveforms.WINDOW.p_position_samples
    window = _locator(tmp_path, enz, rate, p_sample / rate,
                      p_in_window / waveforms.WINDOW.sampling_rate)
    assert window.resampled == (rate != 100)
    built = U.normalize(stored[None], "std")
    located, finite = estimates.model_input([window], {"bandpass": True,
                                                       "normalization_mode": "std"})
    assert finite.all() and located.shape == built.shape == (1, 6000, 3)
    if rate == 100:
        np.testing.assert_array_equal(located, built)
    else:
        rms = float(np.sqrt(np.mean((located - built) ** 2)))
        assert rms < RMS_BOUND[(rate, seconds)], rms


def test_both_paths_take_the_window_from_the_spec(tmp_path, monkeypatch):
    """The builder and the locator read waveforms.WINDOW when they cut: a spec with
    another resampler and P position changes both."""
    calls = []

    def spy(samples, sampling_rate, npts=None):
        callers = {frame.function for frame in inspect.stack(0)[1:4]}
        calls.append("builder" if "to_window" in callers else
                     "locator" if "_resampled" in callers else "?")
        return waveforms.resample_to_100hz(samples, sampling_rate, npts)

    monkeypatch.setattr(waveforms, "WINDOW", dataclasses.replace(
        waveforms.WINDOW, resample=spy, p_position_s=5.0))
    enz, p_sample = _trace_at(50, 180)
    stored, p_in_window = _builder(tmp_path, enz, 50, p_sample)
    assert p_in_window == 500                                   # the spec's P position
    window = _locator(tmp_path, enz, 50, p_sample / 50, 5.0)
    assert sorted(calls) == ["builder"] * 3 + ["locator"] * 3
    assert window.resampled and window.data.shape == stored.shape


def test_the_spec_is_the_numbers_everyone_uses():
    spec = waveforms.WINDOW
    assert (spec.sampling_rate, spec.npts, spec.channels) == (100.0, 6000, ("E", "N", "Z"))
    assert (waveforms.SAMPLING_RATE, waveforms.NPTS) == (spec.sampling_rate, spec.npts)
    assert sb.P_LEAD_SAMPLES == spec.p_position_samples == 700
    assert locate.DEFAULT_P_POSITION_S == spec.p_position_s == 7.0
    assert checkpoints.MODEL_DEFAULTS["input_dimention"] == (spec.npts, len(spec.channels))
    # The locator band-passes with bandpass_taper's defaults (estimates.model_input):
    # they must be the spec's band, and WINDOW.bandpass the same function.
    defaults = {k: p.default for k, p in inspect.signature(bandpass_taper).parameters.items()}
    assert (defaults["fs"], defaults["freqmin"], defaults["freqmax"]) == \
        (spec.sampling_rate, *spec.bandpass_hz)
    x = np.random.default_rng(0).standard_normal((6000, 3))
    np.testing.assert_array_equal(spec.bandpass(x), bandpass_taper(x))


def test_resampler_is_exact_for_a_band_limited_signal():
    """The measurement of resample_to_100hz's docstring, on one synthetic signal:
    well under 1e-4 of the 1-45 Hz band inside the window, from every rate."""
    t100 = np.arange(7000) / 100.0
    rng = np.random.default_rng(1)
    for rate in (40.0, 50.0, 200.0, 250.0):
        freqs = rng.uniform(1.0, min(45.0, 0.45 * rate), 50)
        phases = rng.uniform(0, 2 * np.pi, 50)

        def signal(t, f=freqs, p=phases):
            return np.sin(2 * np.pi * f[None, :] * t[:, None] + p[None, :]).sum(axis=1)

        x = signal(np.arange(int(70 * rate)) / rate)
        if rate > 100:   # out of band: must not alias into the window
            x += 5 * np.sin(2 * np.pi * 0.42 * rate * np.arange(len(x)) / rate)
        exact = signal(t100)
        out = waveforms.resample_to_100hz(x, rate, 7000)
        inside = slice(500, 6500)
        error = bandpass_taper((out - exact)[inside, None])
        assert np.sqrt(np.mean(error ** 2) / np.mean(bandpass_taper(exact[inside, None]) ** 2)) \
            < 1e-4, rate


# ------------------------------------------------------- the training windows' layout
def test_training_layout_is_where_p_sat_or_the_whole_window_when_shifted():
    p = np.r_[np.arange(500, 1000, 5.0), np.nan]                 # 4.95 s apart, one unknown
    plain = waveforms.WINDOW.training_layout(p, shifted=False)
    assert plain["p_position_s"] == pytest.approx(np.median(p[:-1]) / 100)
    assert plain["p_position_range_s"] == plain["p_position_data_range_s"] == \
        pytest.approx(np.percentile(p[:-1], [5, 95]) / 100)
    assert plain["p_position_count"] == 100 and plain["shift_augmentation"] is False
    shifted = waveforms.WINDOW.training_layout(p, shifted=True)
    assert shifted["p_position_range_s"] == [0.0, 60.0]
    assert shifted["p_position_data_range_s"] == plain["p_position_data_range_s"]
    assert shifted["window"] == {"sampling_rate": 100.0, "npts": 6000, "channels": "ENZ",
                                 "bandpass_hz": [1.0, 45.0]}
    none = waveforms.WINDOW.training_layout([np.nan], shifted=False)
    assert none["p_position_s"] is None and none["p_position_range_s"] is None
    json.dumps(plain)                                             # model_config.json holds it


def test_trainer1_records_the_training_windows_layout(trained, synthetic):
    output = Path(trained["output_dir"])
    output = output if output.is_absolute() else Path(trained["work"]) / output
    config = json.loads((output / "models" / "model_config.json").read_text())
    ids = np.load(synthetic["train"]).astype(str)
    with h5py.File(synthetic["hdf5"], "r") as fh:
        p = np.array([float(fh[i].attrs["p_arrival_sample"]) for i in ids]) / 100.0
    assert config["p_position_s"] == pytest.approx(np.median(p))
    assert config["p_position_data_range_s"] == pytest.approx(np.percentile(p, [5, 95]))
    assert config["p_position_count"] == len(ids)
    # trainer1's default augmentation shifts events (shift_event_r 0.99): every position.
    assert config["shift_augmentation"] is True and config["p_position_range_s"] == [0.0, 60.0]
    assert config["window"]["npts"] == 6000 and config["window"]["channels"] == "ENZ"


# ------------------------------------------------------------------- the locator's side
def _config(input_model, **changes):
    return locate.LocateConfig(**{"input_waveforms": "w", "input_inventory": "i",
                                  "input_picks": "p", "input_model": str(input_model),
                                  **changes})


def _model_with_layout(tmp_path, **layout):
    weights = tmp_path / "models" / "m.weights.h5"
    weights.parent.mkdir()
    h5py.File(weights, "w").close()               # an HDF5 file; never loaded here
    checkpoints.write_model_config(weights.parent / checkpoints.MODEL_CONFIG_NAME,
                                   input_dimention=[6000, 3], **layout)
    return weights


def test_the_default_p_position_is_the_models_own(tmp_path):
    weights = _model_with_layout(tmp_path, p_position_s=5.5, p_position_range_s=[4.0, 9.0])
    settings = locate.model_settings(_config(weights))
    assert settings["p_position_s"] == 5.5 and settings["p_position_range_s"] == (4.0, 9.0)
    assert locate.model_settings(_config(weights, p_position_s=8.0))["p_position_s"] == 8.0
    # An upstream Keras 2 checkpoint records nothing: the spec's 7 s, every position seen.
    legacy = locate.model_settings(_config(need(PARITY / "location_ckpt_keras2.h5")))
    assert legacy["p_position_s"] == waveforms.WINDOW.p_position_s
    assert legacy["p_position_range_s"] == (0.0, 60.0)


def test_picks_outside_the_trained_positions_get_one_warning_per_run(tmp_path, capsys):
    weights = _model_with_layout(tmp_path, p_position_s=5.5, p_position_range_s=[4.0, 9.0])
    picks = tmp_path / "picks.csv"
    pd.DataFrame({"network": NET, "station": STA,
                  "p_time": ["2020-01-01T00:00:00", "2020-01-01T00:01:00",
                             "2020-01-01T00:02:00", "2020-01-01T00:03:00"],
                  "p_position_s": ["", "2", "12.5", "8"]}).to_csv(picks, index=False)
    inventory = tmp_path / "stations.csv"
    inventory.write_text("network,station,latitude,longitude\nTA,109C,not-a-number,0\n")
    cfg = _config(weights, input_picks=str(picks), input_inventory=str(inventory),
                  input_waveforms=str(tmp_path / "*.mseed"), output_name="run")
    with working_dir(tmp_path), pytest.raises(ValueError, match="stations.csv"):
        locate.run(cfg)                           # stops at the inventory, read next
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning")]
    assert len(lines) == 1
    assert "2 of 4 P pick(s) put P at 2, 12.5 s" in lines[0] and "4-9 s" in lines[0]
    # The run's own position outside the range counts too.
    settings = {"p_position_s": 3.0, "p_position_range_s": (4.0, 9.0)}
    table = pd.read_csv(picks).assign(p_position_s=np.nan)
    assert locate.p_positions_outside(table, settings).startswith("warning: 4 of 4")
    assert locate.p_positions_outside(table, {**settings, "p_position_s": 7.0}) is None
