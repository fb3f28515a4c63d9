"""The locator's event stage: typed values in, one Solution out, never an exception.

Property-based: hypothesis draws station geometries and pick sets, degenerate
ones included (co-located stations, identical pick times, one station, an S
before its P, picks hours apart, stations at the poles and across 180 deg,
NaN anywhere, zero and missing error bars); every event gets a finite origin
or a flagged "none", every pick keeps its residual under its own id, and the
QuakeML validates against the QuakeML 1.2 schema.
"""

import io
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from obspy import UTCDateTime, read_events
from obspy.io.quakeml.core import _validate

from utrans_loc import event_output, events, solutions, velocity

T0 = UTCDateTime(2021, 5, 1, 12)
HALF_SPACE = velocity.HalfSpace(6.0, 3.5)
N_EXAMPLES = 200


class _Context:
    pass


def _context():
    from obspy.core.event import CreationInfo

    return events.EventContext(info=CreationInfo(author="test"), model_name="m.weights.h5",
                               velocity_model=HALF_SPACE.description, time_note="approximate")


def _table(stations, estimates, p_times, std, s_times):
    """locations.csv's rows and the S picks of one event ("ev"), as the locator makes them."""
    rows, s_rows = [], []
    for i, ((lat, lon), (elat, elon, edepth), p_time) in enumerate(zip(stations, estimates,
                                                                         p_times)):
        row = {"pick_id": str(i), "network": "XX", "station": f"S{i}", "location": "",
               "p_time": p_time, "event_id": "ev", "station_lat": lat, "station_lon": lon,
               "station_elevation_m": 100.0, "pred_event_lat": elat, "pred_event_lon": elon,
               "pred_depth_km": edepth, "channels": "HHE,HHN,HHZ", "sample_rate_in_hz": "100",
               "rotation_applied": "n", "origin_time_approx": p_time - 5.0, "phase_hint": "P"}
        if std is not None:
            north, east, depth = std[i]
            row.update(pred_event_lat_std=north / 111.0, pred_event_lon_std=east / 90.0,
                       pred_depth_km_std=depth, pred_event_lat_std_km=north,
                       pred_event_lon_std_km=east)
        rows.append(row)
    for j, (i, s_time) in enumerate(s_times):
        lat, lon = stations[i]
        s_rows.append({"pick_id": f"s{j}", "network": "XX", "station": f"S{i}", "location": "",
                       "time": s_time, "event_id": "ev", "phase": "S", "phase_hint": "Sg",
                       "station_lat": lat, "station_lon": lon, "station_elevation_m": 100.0})
    return pd.DataFrame(rows), pd.DataFrame(s_rows, columns=events.S_PICK_COLUMNS)


@st.composite
def event_case(draw):
    n = draw(st.integers(1, 6))
    lat0 = draw(st.one_of(st.floats(-60, 60), st.sampled_from([89.99, -89.99, 0.0])))
    lon0 = draw(st.one_of(st.floats(-179.9, 179.9), st.sampled_from([179.99, -179.99])))
    spread = draw(st.sampled_from([0.0, 1e-6, 0.01, 0.5, 2.0]))   # 0: co-located stations
    stations = [(float(np.clip(lat0 + draw(st.floats(-1, 1)) * spread, -90, 90)),
                 lon0 + draw(st.floats(-1, 1)) * spread) for _ in range(n)]
    if draw(st.booleans()):   # a NaN or an impossible coordinate somewhere
        i = draw(st.integers(0, n - 1))
        stations[i] = (draw(st.sampled_from([math.nan, 95.0, stations[i][0]])),
                       draw(st.sampled_from([math.nan, stations[i][1]])))
    estimates = [(lat0 + draw(st.floats(-1, 1)) * 0.5, lon0 + draw(st.floats(-1, 1)) * 0.5,
                  draw(st.sampled_from([-400.0, 0.0, 8.0, 8.0, 30.0, 300.0])))
                 for _ in range(n)]
    if draw(st.integers(0, 4)) == 0:     # a non-finite number in one estimate
        i, k = draw(st.integers(0, n - 1)), draw(st.integers(0, 2))
        estimates[i] = tuple(draw(st.sampled_from([math.nan, math.inf])) if j == k else v
                             for j, v in enumerate(estimates[i]))
    same_time = draw(st.booleans())
    hours = draw(st.sampled_from([0.0, 0.0, 3 * 3600.0]))
    p_times = [T0 + (0.0 if same_time else draw(st.floats(0, 20))) + (hours if i == n - 1
                                                                        else 0.0)
               for i in range(n)]
    std = draw(st.sampled_from([None, "finite", "zero", "nan"]))
    if std is not None:
        value = {"finite": (3.0, 4.0, 5.0), "zero": (0.0, 0.0, 0.0),
                 "nan": (math.nan, math.nan, math.nan)}[std]
        std = [value if draw(st.booleans()) else (2.0, 2.0, 3.0) for _ in range(n)]
    s_times = [(i, p_times[i] + draw(st.sampled_from([-2.0, 0.0, 3.0, 8.0])))
               for i in range(n) if draw(st.booleans())]
    return stations, estimates, p_times, std, s_times, draw(st.sampled_from(
        solutions.COMBINE_METHODS))


@settings(max_examples=N_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=event_case())
def test_every_drawn_event_gets_an_origin_or_a_flag_and_valid_quakeml(case, tmp_path_factory):
    stations, estimates, p_times, std, s_times, combine = case
    table, s_table = _table(stations, estimates, p_times, std, s_times)
    settings_ = solutions.OriginSettings(combine=combine)
    out = list(events.locate_events(table, s_table, HALF_SPACE, settings_, _context()))
    assert len(out) == 1
    _, solution, row, event = out[0]
    # every pick keeps its residual under its own id
    assert set(solution.arrivals) == set(table["pick_id"]) | set(s_table["pick_id"])
    if solution.located:
        assert all(math.isfinite(v) for v in (solution.latitude, solution.longitude,
                                              solution.depth_km))
        assert -90 <= solution.latitude <= 90 and -180 <= solution.longitude < 180
    else:
        assert solution.method == "none" and solution.flags
    assert row["flag"] == solution.flag and row["method"] == solution.method
    path = tmp_path_factory.mktemp("qml") / "events.xml"
    with open(path, "w", encoding="utf-8") as fh:
        stream = event_output.QuakeMLStream(fh, "test", _context().info)
        stream.write([event])
        stream.close()
    assert _validate(str(path))
    back = read_events(str(path))[0]
    assert len(back.picks) == len(table) + len(s_table)
    assert {p.phase_hint for p in back.picks} <= {"P", "Sg"}


def _event(stations, p_times, estimate=(35.0, -118.0, 8.0), std=None, s_times=()):
    table, s_table = _table(stations, [estimate] * len(stations), p_times, std, s_times)
    out = list(events.locate_events(table, s_table, HALF_SPACE, solutions.OriginSettings(),
                                    _context()))
    return out[0][1], out[0][3]


def test_picks_of_one_event_id_hours_apart_are_not_combined():
    """Before: the hybrid origin of picks 3 h apart landed 8,487 km away (written as
    preferred); weighted averaged the origin time over 3 h."""
    stations = [(35.0, -118.0), (35.3, -118.2), (35.1, -117.7)]
    solution, event = _event(stations, [T0 + 3.0, T0 + 4.0, T0 + 3 * 3600.0 + 3.5])
    assert solution.method == "single-station"
    import re

    span = float(re.search(r"picks (\d+) s apart", solution.flag).group(1))
    assert span > 3 * 3600 - 10 and "not combined" in solution.flag
    assert any("flagged" in c.text for c in event.comments)


def test_an_s_pick_before_its_p_is_kept_marked_and_left_out():
    stations = [(35.0, -118.0), (35.3, -118.2), (35.1, -117.7)]
    times = [T0 + 3.0, T0 + 4.0, T0 + 3.5]
    solution, event = _event(stations, times, s_times=[(0, times[0] - 1.0), (1, times[1] + 3.0)])
    assert solution.method == "hybrid"
    assert solution.arrivals["s0"].used is False and solution.arrivals["s1"].used is True
    assert "1 S pick(s) not after their station's P pick: left out" in solution.flag
    weights = {str(a.pick_id).split("/")[-1]: a.time_weight
               for a in event.preferred_origin().arrivals}
    assert weights["s0"] == 0.0 and weights["s1"] == 1.0


def test_residuals_follow_pick_ids_not_list_order():
    """A late S pick's residual is on that pick, whatever order the picks come in."""
    stations = [(35.0, -118.0), (35.3, -118.2), (35.1, -117.7), (34.8, -118.1)]
    model = HALF_SPACE
    truth = (35.1, -117.95, 9.0)
    from utrans_loc import metrics

    def time_of(phase, i):
        d = float(metrics.geodesic_km(truth[0], truth[1], *stations[i])[()])
        return T0 + float(model.travel_time(phase, d, truth[2], 0.1))

    p_times = [time_of("P", i) for i in range(4)]
    s_times = [(i, time_of("S", i) + (2.0 if i == 2 else 0.0)) for i in (3, 2, 1, 0)]
    solution, _ = _event(stations, p_times, estimate=truth, std=[(2.0, 2.0, 3.0)] * 4,
                         s_times=s_times)
    residuals = {k: v.residual_s for k, v in solution.arrivals.items()}
    late = "s1"     # the second S pick given is station 2's, 2 s late
    assert residuals[late] == max(residuals.values()) and residuals[late] > 0.5


def test_one_rule_for_a_missing_or_zero_error_bar():
    (north, east, depth), n_default = solutions.prior_spread([2.0, math.nan, 0.0],
                                                             [2.0, 1.0, 0.0],
                                                             [3.0, 3.0, math.nan])
    assert n_default == 2
    assert list(north) == [2.0, solutions.DEFAULT_SPREAD_KM[0], solutions.MIN_SPREAD_KM]
    assert list(depth) == [3.0, 3.0, solutions.DEFAULT_SPREAD_KM[2]]


@pytest.mark.parametrize("combine", solutions.COMBINE_METHODS)
def test_a_station_without_error_bar_gets_the_default_spread_in_both_combinations(combine):
    """Before: weighted dropped a station with a NaN std, hybrid gave it the default spread."""
    stations = [(35.0, -118.0), (35.3, -118.2)]
    table, s_table = _table(stations, [(35.0, -118.0, 8.0), (35.5, -118.0, 8.0)],
                            [T0 + 3.0, T0 + 4.0], [(2.0, 2.0, 3.0), (math.nan,) * 3], [])
    settings_ = solutions.OriginSettings(combine=combine)
    _, solution, _, _ = next(events.locate_events(table, s_table, HALF_SPACE, settings_,
                                                  _context()))
    assert "1 without one: the default spread" in solution.description
    # the second estimate, 55 km north, pulls with weight (2/30)^2 of the first's
    assert 35.0 < solution.latitude < 35.02 or combine == "hybrid"


def test_a_one_sided_network_reports_its_mirror_ambiguity():
    """Before: stations on a line gave a mirror solution 261 km off, flagged only by RMS.
    Now the origin says that the mirror point fits the arrival times as well."""
    from utrans_loc import metrics

    stations = [(35.0, -118.0 + 0.3 * i) for i in range(4)]      # an east-west line
    truth = (35.4, -117.5, 10.0)                                   # 44 km north of it

    def time_of(phase, i):
        d = float(metrics.geodesic_km(truth[0], truth[1], *stations[i])[()])
        return T0 + float(HALF_SPACE.travel_time(phase, d, truth[2], 0.1))

    p_times = [time_of("P", i) for i in range(4)]
    s_times = [(i, time_of("S", i)) for i in range(4)]
    # estimates on the wrong (south) side: arrival times cannot tell, the flag must
    solution, event = _event(stations, p_times, estimate=(34.6, -117.5, 10.0),
                             std=[(5.0, 5.0, 5.0)] * 4, s_times=s_times)
    assert solution.method == "hybrid" and solution.latitude < 35.0
    import re

    found = re.search(r"stations nearly on a line: the mirror point ([-\d.]+), ([-\d.]+)",
                      solution.flag)
    assert found and abs(float(found.group(1)) - truth[0]) < 0.05
    assert abs(float(found.group(2)) - truth[1]) < 0.05
    assert solution.rms_s < 0.1        # the RMS alone would not have flagged it
    # a network around the event has no such note
    around = [(35.0, -118.0), (35.8, -117.5), (35.4, -116.9), (35.3, -118.1)]
    p_times = [T0 + float(HALF_SPACE.travel_time("P", float(metrics.geodesic_km(
        truth[0], truth[1], *s)[()]), truth[2], 0.1)) for s in around]
    solution, _ = _event(around, p_times, estimate=truth, std=[(5.0, 5.0, 5.0)] * 4)
    assert "mirror" not in solution.flag


def test_estimates_past_a_pole_or_the_dateline_are_put_back_on_the_globe():
    """Before: a station near a pole whose estimate landed past 90 deg stopped the run in
    origin_time() (``cannot convert float NaN to integer``); single-station longitudes
    near the dateline were written as -180.547."""
    from utrans_loc import estimates

    located = pd.DataFrame({
        "network": ["XX", "XX"], "station": ["POLE", "DATE"], "location": ["", ""],
        "p_time": [T0, T0], "event_id": ["a", "b"], "station_lat": [89.9, 10.0],
        "station_lon": [0.0, -179.9], "station_elevation_m": [0.0, 0.0]})
    # model outputs are station minus event offsets (deg) and a normalised depth
    pred = np.array([[-0.3, 0.0, 0.1], [0.0, 0.647, 0.1]])
    table = estimates.locations_table(located, pred, {"max_d": 100.0, "min_d": 0.0},
                                      HALF_SPACE)
    assert table["pred_event_lat"][0] == pytest.approx(89.8)          # over the pole
    assert table["pred_event_lon"][0] == pytest.approx(-180.0)
    assert table["pred_event_lon"][1] == pytest.approx(179.453)
    assert all(isinstance(t, UTCDateTime) for t in table["origin_time_approx"])
    assert np.isfinite(table["hypocentral_distance_km"]).all()


def test_the_approximate_origin_time_follows_the_runs_velocity_model():
    """Before: P time minus distance / 6 km/s whatever --vp or --velocity_model said."""
    from utrans_loc import estimates

    located = pd.DataFrame({
        "network": ["XX"], "station": ["A"], "location": [""], "p_time": [T0],
        "event_id": ["a"], "station_lat": [35.0], "station_lon": [-118.0],
        "station_elevation_m": [0.0]})
    pred = np.array([[0.3, 0.0, 0.1]])     # 33 km south, 10 km deep
    times = {vp: estimates.locations_table(located, pred, {"max_d": 100.0, "min_d": 0.0},
                                           velocity.HalfSpace(vp, 3.0))
             ["origin_time_approx"][0] for vp in (5.0, 6.0)}
    distance = float(estimates.locations_table(
        located, pred, {"max_d": 100.0, "min_d": 0.0}, HALF_SPACE)["hypocentral_distance_km"][0])
    for vp, when in times.items():
        assert T0 - when == pytest.approx(distance / vp, rel=1e-6)


def test_a_hybrid_origin_near_a_pole_stays_on_the_globe():
    """Found by the property test: stations at 89.99 deg gave a hybrid latitude of 90.27
    (the local plane stepped past the pole)."""
    stations = [(89.99, 148.88), (89.99, 148.88)]
    table, s_table = _table(stations, [(89.9, 149.0, 0.0), (89.95, -31.1, 0.0)],
                            [T0, T0 + 0.3], None, [])
    _, solution, _, event = next(events.locate_events(
        table, s_table, HALF_SPACE, solutions.OriginSettings(), _context()))
    assert solution.located and -90 <= solution.latitude <= 90
    assert -180 <= solution.longitude < 180
