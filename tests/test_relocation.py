"""Out for relocation (issue 31): events.xml to NonLinLoc's NLLOC_OBS and hypoDD's ph2dt
phase file (utrans_loc/relocation.py), read back: times, stations, phases, weights.

The hypoDD lines follow the ph2dt input of the hypoDD manual (Waldhauser 2001, USGS
Open-File Report 01-113, https://pubs.usgs.gov/of/2001/0113/); the NonLinLoc lines the
NLLOC_OBS phase format (http://alomax.free.fr/nlloc/soft6.00/formats.html).

Fast: a synthetic catalogue, no model.
"""

import csv
import math

import pytest
from obspy import UTCDateTime, read_events
from obspy.core.event import (Arrival, Catalog, Comment, Event, Origin, OriginQuality,
                              OriginUncertainty, Pick, QuantityError, ResourceIdentifier,
                              WaveformStreamID)

from utrans_loc import picks as pick_files
from utrans_loc import relocation

T0 = UTCDateTime("2020-03-01T10:20:30.123456Z")


def _pick(key, station, phase, seconds, channel=None):
    return Pick(resource_id=ResourceIdentifier(f"smi:local/test/pick/{key}"), time=T0 + seconds,
                phase_hint=phase, waveform_id=WaveformStreamID("XX", station, "",
                                                              channel_code=channel))


def _event(key, picks, origin=None):
    event = Event(resource_id=ResourceIdentifier(f"smi:local/utrans_loc/event/{key}"),
                  picks=picks, comments=[Comment(text=f"input event_id: {key}")])
    if origin is not None:
        event.origins.append(origin)
        event.preferred_origin_id = origin.resource_id
    return event


def _catalogue(tmp_path):
    """ev1: a multi-station origin (A's S pick at weight 0, errors, RMS); ev2: a
    single-station origin (its Arrival names the P pick only, without weight); ev3:
    picks and no origin (left out)."""
    p1 = [_pick("a_p", "A", "Pg", 2.0, "HHZ"), _pick("b_p", "B", "P", 3.5, "HHZ"),
          _pick("a_s", "A", "S", 3.6), _pick("b_s", "B", "Sn", 6.1)]
    origin1 = Origin(
        resource_id=ResourceIdentifier("smi:local/test/origin/1"), time=T0, latitude=35.5,
        longitude=-117.5, depth=8400.0, depth_errors=QuantityError(uncertainty=1500.0),
        origin_uncertainty=OriginUncertainty(max_horizontal_uncertainty=1200.0,
                                             min_horizontal_uncertainty=800.0),
        quality=OriginQuality(standard_error=0.21),
        arrivals=[Arrival(pick_id=p.resource_id, phase=p.phase_hint,
                          time_weight=0.0 if p.resource_id.id.endswith("a_s") else 1.0)
                  for p in p1])
    p2 = [_pick("c_p", "C", "P", 61.0, "HHZ"), _pick("c_s", "C", "S", 63.5)]
    origin2 = Origin(resource_id=ResourceIdentifier("smi:local/test/origin/2"), time=T0 + 59,
                     latitude=35.6, longitude=-117.4, depth=10000.0,
                     arrivals=[Arrival(pick_id=p2[0].resource_id, phase="P")])
    p3 = [_pick("d_p", "D", "P", 100.0, "HHZ")]
    path = tmp_path / "events.xml"
    Catalog(events=[_event("ev1", p1, origin1), _event("ev2", p2, origin2),
                    _event("ev3", p3)]).write(str(path), format="QUAKEML")
    return path


def _pha(path):
    """hypoDD's phase file parsed: [(header fields, [(sta, tt, weight, phase)])]."""
    events = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields[0] == "#":
            events.append((fields[1:], []))
        else:
            sta, tt, weight, phase = fields
            events[-1][1].append((sta, float(tt), float(weight), phase))
    return events


def test_relocation_files_round_trip(tmp_path, capsys):
    catalogue = _catalogue(tmp_path)
    written = relocation.write_relocation_files(tmp_path, catalogue, (0.1, 0.2), verbose=1)
    assert (written.n_events, written.n_picks, written.n_without_origin) == (2, 6, 1)
    assert "2 event(s), 6 pick(s); 1 event(s) without an origin left out" in \
        capsys.readouterr().out

    # hypoDD: '#  yr mo dy hr mn sc lat lon dep mag eh ez rms id', then 'sta tt wght pha'
    (head1, lines1), (head2, lines2) = _pha(tmp_path / relocation.HYPODD_NAME)
    assert [int(v) for v in head1[:5]] == [2020, 3, 1, 10, 20]
    assert float(head1[5]) == pytest.approx(30.1235, abs=1e-9)     # 0.1 ms
    assert [float(v) for v in head1[6:13]] == pytest.approx(
        [35.5, -117.5, 8.4, 0.0, 1.2, 1.5, 0.21])
    assert int(head1[13]) == 1 and int(head2[13]) == 2
    origin1 = T0 - 0.123456 + 0.1235
    assert lines1 == [("A", pytest.approx(T0 + 2.0 - origin1, abs=1e-4), 1.0, "P"),
                      ("B", pytest.approx(T0 + 3.5 - origin1, abs=1e-4), 1.0, "P"),
                      ("A", pytest.approx(T0 + 3.6 - origin1, abs=1e-4), 0.0, "S"),
                      ("B", pytest.approx(T0 + 6.1 - origin1, abs=1e-4), 1.0, "S")]
    assert [(s, ph, w) for s, _, w, ph in lines2] == [("C", "P", 1.0), ("C", "S", 1.0)]
    assert lines2[1][1] == pytest.approx(63.5 - 59.0, abs=1e-4)
    assert float(head2[10]) == 0.0 and float(head2[12]) == 0.0     # no errors, no RMS: 0
    # ObsPy's HYPODDPHA reader takes it too, weights as Arrival time_weight
    back = read_events(str(tmp_path / relocation.HYPODD_NAME), format="HYPODDPHA")
    arrivals = back[0].preferred_origin().arrivals
    assert [a.time_weight for a in arrivals] == [1.0, 1.0, 0.0, 1.0]
    assert [abs(p.time - q) < 1e-4 for p, q in zip(
        back[0].picks, [T0 + 2.0, T0 + 3.5, T0 + 3.6, T0 + 6.1])] == [True] * 4
    with open(tmp_path / relocation.HYPODD_IDS_NAME, newline="") as fh:
        assert [(r["hypodd_id"], r["event_id"]) for r in csv.DictReader(fh)] == [
            ("1", "ev1"), ("2", "ev2")]

    # NonLinLoc: read back by the NLLOC_OBS reader of the locator (ObsPy writes, not reads)
    inventory = tmp_path / "stations.csv"
    inventory.write_text("network,station,latitude,longitude\nXX,A,35,-117\nXX,B,35,-117\n"
                         "XX,C,35,-117\nXX,D,35,-117\n")
    picks = pick_files.read_picks(tmp_path / relocation.NLLOC_NAME, "nlloc_obs", inventory)
    assert list(picks["event_id"]) == ["ev1"] * 4 + ["ev2"] * 2
    assert list(picks["station"]) == ["A", "B", "A", "B", "C", "C"]
    assert list(picks["phase_hint"]) == ["Pg", "P", "S", "Sn", "P", "S"]
    assert list(picks["phase"]) == ["P", "P", None, "S", "P", "S"]      # weight 0: not used
    assert "PriorWt 0" in picks["reason"][2]
    for time, seconds in zip(picks["time"], (2.0, 3.5, 3.6, 6.1, 61.0, 63.5)):
        assert abs(time - (T0 + seconds)) < 1e-4
    text = (tmp_path / relocation.NLLOC_NAME).read_text()
    lines = [line.split() for line in text.splitlines() if line and not line.startswith("P")]
    assert [(f[0], f[2], f[9], float(f[10]), float(f[14])) for f in lines] == [
        ("A", "HHZ", "GAU", 0.1, 1.0), ("B", "HHZ", "GAU", 0.1, 1.0), ("A", "?", "GAU", 0.2, 0.0),
        ("B", "?", "GAU", 0.2, 1.0), ("C", "HHZ", "GAU", 0.1, 1.0), ("C", "?", "GAU", 0.2, 1.0)]
    assert text.startswith("PUBLIC_ID smi:local/utrans_loc/event/ev1\n")
    assert "\n\nPUBLIC_ID smi:local/utrans_loc/event/ev2\n" in text and text.endswith("\n\n")


def test_catalogue_read_a_chunk_at_a_time(tmp_path):
    catalogue = _catalogue(tmp_path)
    events = list(relocation.iter_events(catalogue, chunk=2))
    assert [str(e.resource_id).rsplit("/", 1)[-1] for e in events] == ["ev1", "ev2", "ev3"]
    assert [len(e.picks) for e in events] == [4, 2, 1]
    assert math.isclose(events[0].preferred_origin().latitude, 35.5)


def test_the_locators_own_events_xml_goes_out(tmp_path):
    """events.xml as locate.write_events writes it (the event stage and QuakeMLStream):
    a hybrid origin of three stations' P and two S picks, every pick at weight 1."""
    import pandas as pd
    from obspy.core.event import CreationInfo
    from obspy.geodetics import gps2dist_azimuth

    from utrans_loc import event_output, events, solutions, velocity

    travel = velocity.HalfSpace(6.0, 3.5)
    stations = [(35.0, -118.0), (35.3, -117.6), (34.7, -117.7)]
    rows, s_rows = [], []
    for i, (lat, lon) in enumerate(stations):
        distance = math.hypot(gps2dist_azimuth(35.0, -117.8, lat, lon)[0] / 1000.0, 8.0)
        p_time = T0 + distance / 6.0
        rows.append({"pick_id": str(i), "network": "XX", "station": f"S{i}", "location": "",
                     "p_time": p_time, "event_id": "ev", "station_lat": lat, "station_lon": lon,
                     "station_elevation_m": 0.0, "pred_event_lat": 35.0, "pred_event_lon": -117.8,
                     "pred_depth_km": 8.0, "channels": "HHE,HHN,HHZ", "sample_rate_in_hz": "100",
                     "rotation_applied": "n", "origin_time_approx": T0, "phase_hint": "P"})
        if i < 2:
            s_rows.append({"pick_id": f"s{i}", "network": "XX", "station": f"S{i}",
                           "location": "", "time": T0 + distance / 3.5, "event_id": "ev",
                           "phase": "S", "phase_hint": "Sg", "station_lat": lat,
                           "station_lon": lon, "station_elevation_m": 0.0})
    context = events.EventContext(info=CreationInfo(author="test"), model_name="m.weights.h5",
                                  velocity_model=travel.description, time_note="approximate")
    out = list(events.locate_events(pd.DataFrame(rows),
                                    pd.DataFrame(s_rows, columns=events.S_PICK_COLUMNS), travel,
                                    solutions.OriginSettings(), context))
    path = tmp_path / "events.xml"
    with open(path, "w", encoding="utf-8") as fh:
        stream = event_output.QuakeMLStream(fh, "test", context.info)
        stream.write([event for _, _, _, event in out])
        stream.close()
    written = relocation.write_relocation_files(tmp_path, path)
    assert (written.n_events, written.n_picks, written.n_without_origin) == (1, 5, 0)
    ((head, lines),) = _pha(tmp_path / relocation.HYPODD_NAME)
    assert sorted((s, ph) for s, _, _, ph in lines) == [
        ("S0", "P"), ("S0", "S"), ("S1", "P"), ("S1", "S"), ("S2", "P")]
    assert all(w == 1.0 for _, _, w, _ in lines) and all(tt > 0 for _, tt, _, _ in lines)
    with open(tmp_path / relocation.HYPODD_IDS_NAME, newline="") as fh:
        assert [r["event_id"] for r in csv.DictReader(fh)] == ["ev"]
