"""The locator's multi-station origins end to end: synthetic events, P and S picks."""

import os
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from obspy import UTCDateTime, read_events
from obspy.io.quakeml.core import _validate

import synthetic_california as sc
from conftest import ROOT, run_script, working_dir

sys.path.insert(0, str(ROOT / "04_locate"))

import locator as lc  # noqa: E402
from utrans_loc import cli, event_output, locate, metrics, origins, velocity  # noqa: E402
from utrans_loc import events as events_stage  # noqa: E402



@pytest.fixture(scope="module")
def network_files(synthetic, tmp_path_factory):
    """The worked example of every multi-station event of the synthetic set, with S picks."""
    ids = np.concatenate([np.load(synthetic[k]) for k in ("train", "valid", "test")])
    out = tmp_path_factory.mktemp("network") / "event_files"
    files = sc.write_event_files(synthetic["hdf5"], ids, out, n_events=3)
    picks = pd.read_csv(files["picks"])
    truth = pd.read_csv(files["truth"])
    with h5py.File(synthetic["hdf5"], "r") as fh:
        by_key = {(fh[t].attrs["source_id"], fh[t].attrs["receiver_code"]): dict(fh[t].attrs)
                  for t in ids}
    s_rows = []
    for pick in picks.itertuples(index=False):
        attrs = by_key[(pick.event_id, pick.station)]
        s_lag = (attrs["s_arrival_sample"] - attrs["p_arrival_sample"]) / sc.FS
        s_rows.append({**pick._asdict(), "p_time": str(UTCDateTime(pick.p_time) + s_lag),
                       "phase": "S"})
    both = pd.concat([picks.assign(phase="P"), pd.DataFrame(s_rows)], ignore_index=True)
    both.to_csv(out / "picks_ps.csv", index=False)
    # One event's S picks 8 s late: no single origin explains them.
    bad = both.copy()
    late = (bad["event_id"] == truth["event_id"].iloc[0]) & (bad["phase"] == "S")
    bad.loc[late, "p_time"] = [str(UTCDateTime(t) + 8.0) for t in bad.loc[late, "p_time"]]
    bad.to_csv(out / "picks_bad.csv", index=False)
    return {**files, "picks_ps": str(out / "picks_ps.csv"), "picks_bad": str(out / "picks_bad.csv"),
            "truth_table": truth}


def _locate(files, picks, name, trained, tmp_path, *extra):
    run = run_script(
        "04_locate/locator.py", "--input_waveforms", files["waveforms"],
        "--input_inventory", files["inventory"], "--input_picks", picks,
        "--input_model", trained["best_weights"], "--output_name", name, "--verbose", "0",
        "--no-figures", *extra, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = tmp_path / f"{name}_outputs"
    return out, pd.read_csv(out / locate.EVENTS_CSV_NAME, dtype={"event_id": str})


def test_hybrid_origins_in_events_csv_and_quakeml(network_files, trained, tmp_path):
    out, events = _locate(network_files, network_files["picks_ps"], "hybrid", trained, tmp_path)
    assert list(events.columns) == list(event_output.EVENT_COLUMNS)
    multi = events[events["n_stations"] > 1]
    assert len(multi) and (multi["method"] == "hybrid").all()
    assert (multi["n_p"] == multi["n_stations"]).all() and (multi["n_s"] == multi["n_p"]).all()
    # The RMS flag follows the RMS residual, whatever the model's estimates are worth (how
    # well the hybrid origin fits good estimates and picks: test_origins and the unit
    # tests below; a flagged origin is still located).
    assert (multi["rms_s"] > 0).all()
    rms_flagged = multi["flag"].fillna("").str.contains("above --max_rms_s")
    assert (rms_flagged == (multi["rms_s"] > 1.0)).all()
    assert (multi[["latitude_std_km", "depth_km_std", "origin_time_std_s"]] > 0).all().all()
    assert _validate(str(out / "events.xml"))
    catalog = read_events(str(out / "events.xml"))
    event = next(e for e in catalog if len(e.picks) > 2)
    best = event.preferred_origin()
    assert len(best.arrivals) == len(event.picks)
    assert {a.phase for a in best.arrivals} == {"P", "S"}
    assert all(np.isfinite(a.time_residual) for a in best.arrivals)
    picks = {p.resource_id for p in event.picks}
    assert {a.pick_id for a in best.arrivals} == picks
    assert best.quality.used_phase_count == len(event.picks)
    assert best.quality.standard_error == pytest.approx(
        float(events.set_index("event_id").loc[
            event.comments[0].text.split(": ", 1)[1], "rms_s"]), rel=1e-6)
    assert best.origin_uncertainty.max_horizontal_uncertainty >= \
        best.origin_uncertainty.min_horizontal_uncertainty > 0
    assert "hybrid" in best.comments[0].text and "half-space" in best.comments[1].text


def test_weighted_keeps_the_inverse_variance_mean(network_files, trained, tmp_path):
    _, weighted = _locate(network_files, network_files["picks_ps"], "weighted", trained,
                          tmp_path, "--combine", "weighted")
    multi = weighted[weighted["n_stations"] > 1]
    assert len(multi) and (multi["method"] == "weighted").all() and multi["rms_s"].isna().all()
    assert multi["flag"].isna().all()     # empty in events.csv


def _event_table(estimate_offset_km=(0.0, 0.0, 0.0), s_late_s=0.0):
    """A located event of 3 stations as locate.locations_table gives it, and its S picks."""
    truth = {"lat": 35.5, "lon": -118.0, "depth": 10.0, "t0": UTCDateTime(2021, 5, 1, 12)}
    stations = [("AAA", 35.9, -118.3), ("BBB", 35.1, -117.7), ("CCC", 35.6, -117.4)]
    model = velocity.HalfSpace(6.0, 3.5)
    plane = origins.Plane(truth["lat"], truth["lon"])
    rows, s_rows = [], []
    for code, lat, lon in stations:
        distance = float(np.hypot(*plane.xy(lat, lon)))
        p_time = truth["t0"] + float(model.travel_time("P", distance, truth["depth"]))
        s_time = truth["t0"] + float(model.travel_time("S", distance, truth["depth"])) + s_late_s
        north, east, down = estimate_offset_km
        rows.append({"pick_id": f"p{code}", "phase_hint": "P",
                     "network": "XX", "station": code, "location": "", "p_time": p_time,
                     "event_id": "ev1", "station_lat": lat, "station_lon": lon,
                     "station_elevation_m": 0.0,
                     "pred_event_lat": truth["lat"] + north / plane.km_lat,
                     "pred_event_lon": truth["lon"] + east / plane.km_lon,
                     "pred_depth_km": truth["depth"] + down, "channels": "HHE,HHN,HHZ",
                     "sample_rate_in_hz": "100", "rotation_applied": "n",
                     "origin_time_approx": p_time - 10.0})
        s_rows.append({"pick_id": f"s{code}", "phase_hint": "S",
                       "network": "XX", "station": code, "location": "", "time": s_time,
                       "event_id": "ev1", "phase": "S", "station_lat": lat, "station_lon": lon,
                       "station_elevation_m": 0.0})
    return truth, pd.DataFrame(rows), pd.DataFrame(s_rows, columns=events_stage.S_PICK_COLUMNS)


def _config(**changes):
    args = cli.defaults_of(lc.locator)
    args.update(input_waveforms="w", input_inventory="i", input_picks="p", input_model="m.h5",
                **changes)
    args["pick_std_s"] = tuple(args["pick_std_s"])
    args["channel_priority"] = tuple(args["channel_priority"])
    return locate.LocateConfig(**args)


def _catalog(table, s_picks, **changes):
    cfg = _config(**changes)
    travel = velocity.velocity_model(cfg.vp, cfg.vs, cfg.velocity_model)
    return events_stage.build_catalog(table, s_picks, travel, events_stage.origin_settings(cfg),
                                      events_stage.context_of(cfg, travel))


def test_hybrid_origin_of_good_estimates_and_exact_picks_is_the_truth(tmp_path):
    truth, table, s_picks = _event_table(estimate_offset_km=(12.0, -8.0, 4.0))
    catalog, events = _catalog(table, s_picks)
    row = events.iloc[0]
    assert row["method"] == "hybrid" and (row["n_stations"], row["n_p"], row["n_s"]) == (3, 3, 3)
    assert float(metrics.geodesic_km(truth["lat"], truth["lon"], row["latitude"],
                                     row["longitude"])[()]) < 1.0
    assert row["depth_km"] == pytest.approx(truth["depth"], abs=2.0)
    assert abs(row["origin_time"] - truth["t0"]) < 0.1 and row["rms_s"] < 0.05
    path = tmp_path / "events.xml"
    catalog.write(str(path), format="QUAKEML")
    assert _validate(str(path))
    best = read_events(str(path))[0].preferred_origin()
    assert len(best.arrivals) == 6 and best.time_errors.uncertainty > 0
    assert best.quality.azimuthal_gap == pytest.approx(row["azimuthal_gap_deg"])
    # weighted: the estimates' mean, 12 km north of the truth
    _, weighted = _catalog(table, s_picks, combine="weighted")
    assert float(metrics.geodesic_km(truth["lat"], truth["lon"], weighted["latitude"][0],
                                     weighted["longitude"][0])[()]) > 10.0


def test_inconsistent_picks_are_located_and_flagged():
    _, table, s_picks = _event_table(s_late_s=15.0)
    catalog, events = _catalog(table, s_picks)
    row = events.iloc[0]
    assert row["rms_s"] > 1.0 and "above --max_rms_s 1 s" in row["flag"]
    assert any(c.text.startswith("flagged") for c in catalog[0].preferred_origin().comments)


def test_bad_velocity_model_exits_2_naming_the_line(network_files, trained, tmp_path):
    """The command line; every kind of bad line is checked in test_origins."""
    (tmp_path / "model.txt").write_text("0, 5.5, 3.2\n8, 6.2, 3.6\n4, 6.5, 3.7\n")
    message = "line 3: layer tops must increase"
    with working_dir(tmp_path):
        run = run_script(
            "04_locate/locator.py", "--input_waveforms", network_files["waveforms"],
            "--input_inventory", network_files["inventory"], "--input_picks",
            network_files["picks"], "--input_model", trained["best_weights"],
            "--velocity_model", "model.txt", cwd=tmp_path)
    assert run.returncode == 2
    assert message in run.stderr and "model.txt" in run.stderr
    assert not os.path.exists(tmp_path / "locator_outputs")


def test_s_picks_of_events_without_a_located_p_pick_are_listed_as_skipped():
    _, table, s_picks = _event_table()
    lonely = s_picks.iloc[:1].assign(event_id="ev2")
    s_all = pd.concat([s_picks, lonely]).set_axis([3, 4, 5, 9])     # file order of the picks
    kept, skipped = locate.s_picks_of_located_events(s_all, table)
    assert len(kept) == 3 and set(kept["event_id"]) == {"ev1"}
    assert [row["index"] for row in skipped] == [9]
    assert "S pick of event ev2, which has no located P pick" in skipped[0]["reason"]
    assert "XX.AAA" in skipped[0]["reason"]


@pytest.mark.parametrize("change, message", [
    ({"combine": "median"}, "--combine must be one of hybrid, weighted"),
    ({"vp": 3.0, "vs": 3.5}, "vs must be below vp"),
    ({"pick_std_s": (0.1, 0.0)}, "--pick_std_s must be two positive numbers"),
    ({"model_error": -0.1}, "--model_error must be a fraction"),
    ({"depth_correlation": 1.5}, "--depth_correlation must be in"),
    ({"max_rms_s": 0.0}, "--max_rms_s must be > 0"),
    ({"velocity_model": "no_such_model.txt"}, "--velocity_model file not found"),
])
def test_bad_origin_options_are_named(change, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        locate.check_origin_options(_config(**change))
