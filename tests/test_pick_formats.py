"""The pickers' files in (issue 31): each tool's pick file, written in the layout its
documentation gives (cited at each writer below), reads back to the picks table:
times, phases, stations, probabilities and event ids; auto detection names each
layout; an unknown CSV is refused naming its columns (utrans_loc/pick_formats.py).

Fast: no model, every file written under tmp_path.
"""

import math

import pandas as pd
import pytest
from obspy import UTCDateTime
from obspy.core.event import Catalog, Event, Pick, QuantityError, ResourceIdentifier, \
    WaveformStreamID

from utrans_loc import pick_formats
from utrans_loc import picks as pick_files

T0 = UTCDateTime("2019-07-04T17:33:40.08Z")
# (network, station, location, phase, seconds after T0, probability), in time order
PICKS = [("CI", "CCC", None, "P", 0.0, 0.937), ("CI", "CLC", None, "P", 1.25, 0.881),
         ("CI", "CCC", None, "S", 5.42, 0.716), ("CI", "CLC", None, "S", 7.5, 0.502)]


def _inventory(tmp_path):
    """CSV inventory: CCC and CLC only in CI; AMB in two networks (ambiguous)."""
    path = tmp_path / "stations.csv"
    path.write_text("network,station,latitude,longitude\nCI,CCC,35.52,-117.36\n"
                    "CI,CLC,35.82,-117.60\nXX,AMB,35.0,-117.0\nYY,AMB,35.1,-117.1\n")
    return path


def _dt(seconds):
    """A naive datetime (as SeisBench's to_dataframe and EQTransformer keep UTC)."""
    return (T0 + seconds).datetime


def _in_time_order(picks):
    return picks.iloc[sorted(range(len(picks)), key=lambda i: picks["time"][i])].reset_index(
        drop=True)


def _check(picks, event_ids, probabilities=True):
    """The table has the schema of read_picks and the PICKS back (in time order)."""
    picks = _in_time_order(picks)
    assert list(picks.columns) == list(pick_files.PICKS_TABLE_COLUMNS)
    assert list(picks["network"]) == [p[0] for p in PICKS]
    assert list(picks["station"]) == [p[1] for p in PICKS]
    assert list(picks["phase"]) == [p[3] for p in PICKS]
    assert all(r == "" for r in picks["reason"])
    for time, pick in zip(picks["time"], PICKS):
        assert abs(time - (T0 + pick[4])) < 1e-4
    if probabilities:
        assert list(picks["probability"]) == pytest.approx([p[5] for p in PICKS])
    else:
        assert all(math.isnan(p) for p in picks["probability"])
    assert list(picks["event_id"]) == event_ids


def _own_ids(picks):
    """The ids read_picks gives picks without an event id (in time order)."""
    picks = _in_time_order(picks)
    return [f"{n}.{s}_{t.strftime('%Y%m%dT%H%M%S.%fZ')}"
            for n, s, t in zip(picks["network"], picks["station"], picks["time"])]


# --------------------------------------------------------------------------
# Each tool's layout, written as its documentation shows
# --------------------------------------------------------------------------
def write_seisbench(path):
    """SeisBench: ``PickList.to_dataframe().to_csv("picks.csv")`` (station = the pick's
    trace_id NET.STA.LOC, time = peak_time, probability = peak_value, phase);
    https://seisbench.readthedocs.io/en/main/_modules/seisbench/util/annotations.html
    (seisbench.util.annotations.PickList.to_dataframe)."""
    rows = [{"station": f"{n}.{s}.", "time": _dt(dt), "start_time": _dt(dt - 0.1),
             "end_time": _dt(dt + 0.2), "probability": prob, "phase": ph}
            for n, s, _, ph, dt, prob in PICKS]
    frame = pd.DataFrame(rows).sort_values("time").reset_index()     # as to_dataframe does
    frame.to_csv(path)           # as the docs say: the index column is written too
    return path


def write_seisbench_picks(path):
    """SeisBench Pick attributes (trace_id, start_time, end_time, peak_time, peak_value,
    phase), one row per seisbench.util.Pick; same documentation page."""
    rows = [{"trace_id": f"{n}.{s}.", "start_time": str(T0 + dt - 0.1),
             "end_time": str(T0 + dt + 0.2), "peak_time": str(T0 + dt), "peak_value": prob,
             "phase": ph} for n, s, _, ph, dt, prob in PICKS]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_phasenet(path):
    """PhaseNet's results/picks.csv: file_name, begin_time, station_id (NET.STA.LOC.CH,
    CH the band and instrument code), phase_index, phase_time, phase_score, phase_type;
    https://ai4eps.github.io/PhaseNet/ (prediction output)."""
    begin = (T0 - 30).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    rows = [{"file_name": f"{n}.{s}..HH.mseed", "begin_time": begin,
             "station_id": f"{n}.{s}..HH", "phase_index": int(round((30 + dt) * 100)),
             "phase_time": (T0 + dt).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3],
             "phase_score": prob, "phase_type": ph} for n, s, _, ph, dt, prob in PICKS]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_gamma(path):
    """GaMMA's picks with their assignments, tab separated, as its PhaseNet example
    writes them: station_id, phase_time, phase_type, phase_score, phase_amp,
    event_index (-1: not associated), gamma_score;
    https://github.com/AI4EPS/GaMMA/blob/master/docs/example_phasenet.ipynb."""
    rows = [{"station_id": f"{n}.{s}..HH", "phase_time": (T0 + dt).datetime,
             "phase_type": ph, "phase_score": prob, "phase_amp": 1e-6,
             "event_index": 7 if s == "CCC" else -1, "gamma_score": 0.9 if s == "CCC" else -1}
            for n, s, _, ph, dt, prob in PICKS]
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False, date_format="%Y-%m-%dT%H:%M:%S.%f",
                              columns=["station_id", "phase_time", "phase_type", "phase_score",
                                       "phase_amp", "event_index", "gamma_score"])
    return path


def write_pyocto(path):
    """PyOcto's assignments: event_idx, pick_idx, residual and every column of the picks
    it was given (station, phase, time as POSIX seconds; here a probability);
    https://pyocto.readthedocs.io/en/latest/pages/data_formats.html."""
    rows = [{"event_idx": 0 if s == "CCC" else 1, "pick_idx": i, "residual": 0.01,
             "station": f"{n}.{s}." if s == "CCC" else s, "phase": ph,
             "time": (T0 + dt).timestamp, "probability": prob}
            for i, (n, s, _, ph, dt, prob) in enumerate(PICKS)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


EQT_COLUMNS = ["file_name", "network", "station", "instrument_type", "station_lat",
               "station_lon", "station_elv", "event_start_time", "event_end_time",
               "detection_probability", "detection_uncertainty", "p_arrival_time",
               "p_probability", "p_uncertainty", "p_snr", "s_arrival_time", "s_probability",
               "s_uncertainty", "s_snr"]


def write_eqtransformer(path):
    """EQTransformer's X_prediction_results.csv: one detection per row, its P and S
    picks in p_arrival_time/p_probability and s_arrival_time/s_probability;
    https://eqtransformer.readthedocs.io/en/latest/tutorial.html (mseed_predictor
    outputs)."""
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    rows = []
    for sta in ("CCC", "CLC"):
        (_, _, _, _, p_dt, p_prob), (_, _, _, _, s_dt, s_prob) = [
            p for p in PICKS if p[1] == sta]
        rows.append(["CI_" + sta, "CI", sta + " ", "HH", 35.5, -117.4, 700,
                     (T0 + p_dt - 1).strftime(fmt), (T0 + s_dt + 5).strftime(fmt), 0.99, "",
                     (T0 + p_dt).strftime(fmt), p_prob, "", 12.3,
                     (T0 + s_dt).strftime(fmt), s_prob, "", 8.1])
    pd.DataFrame(rows, columns=EQT_COLUMNS).to_csv(path, index=False)
    return path


def write_nlloc_obs(path):
    """NonLinLoc's NLLOC_OBS, written by ObsPy's NLLOC_OBS writer (one event per call,
    blocks separated by a blank line); the fields as
    http://alomax.free.fr/nlloc/soft6.00/formats.html gives them."""
    blocks = []
    for number, sta in enumerate(("CCC", "CLC")):
        picks = [Pick(time=T0 + dt, phase_hint=ph, waveform_id=WaveformStreamID(
            n, s, channel_code="HHZ"), time_errors=QuantityError(uncertainty=0.1))
            for n, s, _, ph, dt, _ in PICKS if s == sta]
        event = Event(resource_id=ResourceIdentifier(f"smi:local/test/event/ev{number}"),
                      picks=picks)
        one = path.with_suffix(f".{number}")
        Catalog(events=[event]).write(str(one), format="NLLOC_OBS")
        blocks.append(one.read_text())
    path.write_text("\n".join(blocks))
    return path


WRITERS = {"seisbench": write_seisbench, "phasenet": write_phasenet, "gamma": write_gamma,
           "pyocto": write_pyocto, "eqtransformer": write_eqtransformer,
           "nlloc_obs": write_nlloc_obs}


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------
@pytest.mark.parametrize("writer", [write_seisbench, write_seisbench_picks])
def test_seisbench_picks_round_trip(tmp_path, writer, capsys):
    path = writer(tmp_path / "picks.csv")
    assert pick_formats.detect(path).name == "seisbench"
    picks = pick_files.read_picks(path)
    _check(picks, _own_ids(picks))
    assert list(picks["location"]) == [None] * 4          # 'CI.CCC.': empty location: any
    assert list(picks["band"]) == [None] * 4
    err = capsys.readouterr().err
    assert err.count("carry no event id") == 1 and "all pick(s) (SeisBench picks)" in err


def test_phasenet_picks_round_trip(tmp_path, capsys):
    path = write_phasenet(tmp_path / "picks.csv")
    assert pick_formats.detect(path).name == "phasenet"
    picks = pick_files.read_picks(path)
    _check(picks, _own_ids(picks))
    assert list(picks["band"]) == ["HH"] * 4 and list(picks["phase_hint"]) == ["P", "P", "S", "S"]
    assert capsys.readouterr().err.count("\n") == 1      # one line for the file, not per pick


def test_gamma_picks_round_trip_keep_events_and_unassociated_picks(tmp_path, capsys):
    path = write_gamma(tmp_path / "gamma_picks.csv")
    assert pick_formats.detect(path).name == "gamma"
    picks = pick_files.read_picks(path)
    ids = _own_ids(picks)
    _check(picks, ["7", ids[1], "7", ids[3]])            # event_index -1: no event
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 of 4 pick(s) (GaMMA picks) carry no event id" in err


def test_pyocto_assignments_round_trip_with_bare_station_codes(tmp_path, capsys):
    path = write_pyocto(tmp_path / "assignments.csv")
    assert pick_formats.detect(path).name == "pyocto"
    picks = pick_files.read_picks(path, inventory=_inventory(tmp_path))
    _check(picks, ["0", "1", "0", "1"])                  # 'CLC': network CI from inventory
    assert capsys.readouterr().err == ""                 # every pick has its event


def test_eqtransformer_results_round_trip_s_joins_its_p(tmp_path, capsys):
    path = write_eqtransformer(tmp_path / "X_prediction_results.csv")
    assert pick_formats.detect(path).name == "eqtransformer"
    picks = pick_files.read_picks(path)
    ids = _own_ids(picks)
    _check(picks, [ids[0], ids[1], ids[0], ids[1]])      # S with its row's P
    assert list(picks["band"]) == ["HH"] * 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "S pick with the P pick of its detection row" in err


def test_nlloc_obs_round_trip_by_blocks(tmp_path):
    path = write_nlloc_obs(tmp_path / "picks.obs")
    assert pick_formats.detect(path).name == "nlloc_obs"
    picks = pick_files.read_picks(path, inventory=_inventory(tmp_path))
    _check(picks, ["ev0", "ev1", "ev0", "ev1"], probabilities=False)
    assert list(picks["band"]) == ["HH"] * 4


def test_nlloc_obs_prior_weight_zero_and_a_short_line(tmp_path):
    path = tmp_path / "picks.obs"
    path.write_text("# a comment\n"
                    "CCC    ?    HHZ  ? P      ? 20190704 1733   40.0800 GAU  1.00e-01 "
                    "-1.00e+00 -1.00e+00 -1.00e+00  1.00e+00\n"
                    "CLC    ?    HHZ  ? P      ? 20190704 1733   41.3300 GAU  1.00e-01 "
                    "-1.00e+00 -1.00e+00 -1.00e+00  0.00e+00\n"
                    "CLC    ?    HHZ  ? S      ? 20190704 1733\n")
    picks = pick_files.read_picks(path, "nlloc_obs", inventory=_inventory(tmp_path))
    assert list(picks["phase"]) == ["P", None, None]
    assert picks["time"][0] == T0 and picks["time"][1] == T0 + 1.25
    assert picks["reason"][1] == (f"{path}, line 3: PriorWt 0 in the file (NonLinLoc: do not "
                                  "use reading): not used")
    assert picks["reason"][2].startswith(f"{path}, line 4: 8 fields where a NonLinLoc phase "
                                         "line has 14 or 15")
    assert set(picks["event_id"]) == {"picks.obs#1"}


# --------------------------------------------------------------------------
# Detection, named layouts and station ids
# --------------------------------------------------------------------------
def test_auto_detection_names_every_layout_and_the_old_ones(tmp_path):
    for name, writer in WRITERS.items():
        assert pick_formats.detect(writer(tmp_path / f"{name}.txt")).name == name, name
    locator = tmp_path / "locator.csv"
    locator.write_text(f"network,station,p_time,phase,event_id\nCI,CCC,{T0},P,ev1\n")
    assert pick_formats.detect(locator).name == "locator"
    xml = tmp_path / "picks.xml"
    Catalog(events=[Event(picks=[Pick(time=T0, phase_hint="P", waveform_id=WaveformStreamID(
        "CI", "CCC"))])]).write(str(xml), format="QUAKEML")
    assert pick_formats.detect(xml).name == "quakeml"


def test_an_unknown_csv_is_refused_naming_its_columns_and_the_layouts(tmp_path):
    path = tmp_path / "picks.csv"
    path.write_text("sta,arrival,kind\nCCC,2019-07-04T17:33:40,P\n")
    with pytest.raises(ValueError) as err:
        pick_files.read_picks(path)
    message = str(err.value)
    assert message.startswith(f"{path}: unknown picks layout: columns sta, arrival, kind. "
                              "Known layouts: ")
    for name in ("seisbench", "phasenet", "gamma", "pyocto", "eqtransformer", "nlloc_obs",
                 "locator", "quakeml"):
        assert name in message
    assert "station_id, phase_time, phase_type" in message and "--picks_format" in message


def test_a_named_layout_the_file_does_not_have_is_refused(tmp_path):
    path = write_phasenet(tmp_path / "picks.csv")
    with pytest.raises(ValueError, match=r"--picks_format pyocto needs the columns event_idx, "
                                         r"station, phase, time .*; found: file_name, "):
        pick_files.read_picks(path, "pyocto")
    assert list(pick_files.read_picks(path, "phasenet")["phase"]) == ["P", "P", "S", "S"]
    with pytest.raises(ValueError, match="picks_format must be one of auto, locator"):
        pick_files.read_picks(path, "hypodd")


def test_station_ids_against_the_inventory(tmp_path):
    ids = pick_formats.StationIds(_inventory(tmp_path))
    assert ids.split("CI.CCC.00.HHZ") == (("CI", "CCC", "00", "HH"), "")
    assert ids.split("CI.CCC..HH") == (("CI", "CCC", None, "HH"), "")
    assert ids.split("CI.CCC.") == (("CI", "CCC", None, None), "")
    assert ids.split("CCC") == (("CI", "CCC", None, None), "")
    assert ids.split("CCC", network="CI", band="EH") == (("CI", "CCC", None, "EH"), "")
    _, problem = ids.split("AMB")
    assert problem.endswith("has station AMB in networks XX, YY: ambiguous")
    _, problem = ids.split("NOPE")
    assert problem.endswith("has no station NOPE")
    _, problem = ids.split("A.B.C.D.E")
    assert problem == "station id 'A.B.C.D.E' is not NET.STA[.LOC[.CHA]] nor a station code"
    _, problem = pick_formats.StationIds(None).split("CCC")
    assert "names no network, and there is no inventory" in problem


def test_third_part_read_as_band_where_the_inventory_has_no_such_location(tmp_path):
    from obspy.core.inventory import Channel, Inventory, Network, Station

    channels = [Channel(code=c, location_code="", latitude=35.5, longitude=-117.4,
                        elevation=0, depth=0) for c in ("HHZ", "HHN", "HHE")]
    path = tmp_path / "stations.xml"
    Inventory(networks=[Network(code="CI", stations=[Station(
        code="CCC", latitude=35.5, longitude=-117.4, elevation=0, channels=channels)])],
        source="test").write(str(path), format="STATIONXML")
    ids = pick_formats.StationIds(path)
    assert ids.split("CI.CCC.HH") == (("CI", "CCC", None, "HH"), "")
    assert ids.split("CI.CCC.00") == (("CI", "CCC", "00", None), "")


def test_unreadable_rows_say_file_and_line_and_the_rest_is_read(tmp_path):
    path = tmp_path / "picks.csv"
    path.write_text("station_id,phase_time,phase_type,phase_score\n"
                    "CI.CCC..HH,2019-07-04T17:33:40.080,P,0.9\n"
                    "CI.CCC..HH,yesterday,S,0.8\n"
                    "CI.CLC..HH,2019-07-04T17:33:41.330,P,high\n"
                    "CI.CLC..HH,2019-07-04T17:33:41.330,P,0.9\n"
                    "CI.CLC..HH,2019-07-04T17:33:41.330,P,0.9\n")
    picks = pick_files.read_picks(path)
    assert list(picks["phase"]) == ["P", None, None, "P", None]
    assert picks["reason"][1].startswith(f"{path}, line 3: phase_time 'yesterday' is not")
    assert picks["reason"][2] == f"{path}, line 4: phase_score 'high' is not a number"
    assert picks["reason"][4].startswith(f"{path}, line 6: duplicate of line 5")


def test_locator_csv_keeps_an_optional_probability(tmp_path):
    path = tmp_path / "picks.csv"
    path.write_text(f"network,station,p_time,probability\nCI,CCC,{T0},0.75\nCI,CLC,{T0},\n")
    picks = pick_files.read_picks(path)
    assert picks["probability"][0] == 0.75 and math.isnan(picks["probability"][1])
    assert list(picks.columns) == list(pick_files.PICKS_TABLE_COLUMNS)

