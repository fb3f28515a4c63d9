"""Reading picks and inventories as users write them: a malformed row, epoch
seconds, station epochs, blank coordinates, duplicate picks, phase labels, and
corrupt miniSEED files (utrans_loc/picks.py, stations.py, sources.py).

Fast: no model, every input written under tmp_path.
"""

import warnings

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime
from obspy.core.event import Catalog, Event, Pick, WaveformStreamID
from obspy.core.inventory import Inventory, Network, Station

from utrans_loc import exporters, sources
from utrans_loc import picks as pick_files
from utrans_loc import stations as station_files

T0 = UTCDateTime("2020-01-01T00:00:00Z")


def _write(path, text):
    path.write_text(text)
    return path


def _unused(picks):
    """The rows locate.run lists in skipped.csv: phase None, with their reason."""
    return picks[picks["phase"].isna()]


# --------------------------------------------------------------------------
# 1. One malformed row does not refuse the file
# --------------------------------------------------------------------------
def test_malformed_rows_are_listed_with_file_and_line_and_the_rest_read(tmp_path):
    path = _write(tmp_path / "picks.csv",
                  "network,station,p_time,phase,event_id,p_position_s\n"
                  "XX,A,2020-01-01T00:00:01Z,P,ev1,7.5\n"
                  "XX,B,2020-01-01T00:00:02Z,P,ev1,7,5\n"           # decimal comma: 7 fields
                  "\n"
                  "XX,C,yesterday noon,P,ev1,\n"                    # unparseable time
                  "XX,D,2020-01-01T00:00:04Z,P,ev1,seven\n"         # p_position_s not a number
                  "XX,E,2020-01-01T00:00:05Z,S,ev1\n")              # short row: padded
    picks = pick_files.read_picks(path)
    assert list(picks["station"]) == ["A", "B", "C", "D", "E"]
    assert list(picks["phase"]) == ["P", None, None, None, "S"]
    assert picks["p_position_s"][0] == 7.5 and picks["time"][4] == T0 + 5
    reasons = list(_unused(picks)["reason"])
    assert reasons[0].startswith(f"{path}, line 3: 7 fields where the header has 6")
    assert reasons[1].startswith(f"{path}, line 5: p_time 'yesterday noon' is not")
    assert reasons[2] == f"{path}, line 6: p_position_s 'seven' is not a number"
    assert all("\n" not in r for r in reasons)
    assert list(_unused(picks)["event_id"]) == ["ev1"] * 3


def test_a_file_that_is_not_a_picks_file_is_refused_naming_it(tmp_path):
    text = _write(tmp_path / "notes.txt", "these are not picks\n")
    with pytest.raises(ValueError, match=f"^{text}: neither a picks CSV"):
        pick_files.read_picks(text)
    rows = _write(tmp_path / "picks.csv", "network,station,p_time\nXX,A,soon\nXX,B,later\n")
    with pytest.raises(ValueError) as err:
        pick_files.read_picks(rows)
    assert str(err.value) == (f"{rows}: no row could be read as a pick; first: {rows}, line 2: "
                              "p_time 'soon' is not an ISO 8601 time (e.g. "
                              "2020-01-31T12:00:05.25Z) nor POSIX seconds (e.g. 1580472005.25)")


# --------------------------------------------------------------------------
# 2. Epoch seconds
# --------------------------------------------------------------------------
def test_numeric_pick_times_are_posix_seconds(tmp_path):
    """A plain number is POSIX seconds in 1900-2100; a longer one a compact ISO time."""
    path = _write(tmp_path / "picks.csv", "network,station,time\n"
                                          "XX,A,1546300800.5\n"
                                          "XX,B,1546300800\n"
                                          "XX,C,2019-01-01T00:00:00.5Z\n"
                                          "XX,D,20190101000000.5\n"    # compact ISO, as before
                                          "XX,E,1.5463008005e9\n"
                                          "XX,F,99999999999999999\n")
    picks = pick_files.read_picks(path)
    new_year = UTCDateTime("2019-01-01T00:00:00Z")
    assert list(picks["time"][:5]) == [new_year + 0.5, new_year, new_year + 0.5,
                                       new_year + 0.5, new_year + 0.5]
    assert list(picks["phase"]) == ["P"] * 5 + [None]
    assert picks["reason"][5] == (
        f"{path}, line 7: time '99999999999999999' read as POSIX seconds is outside 1900-2100, "
        "and is not a compact ISO 8601 time either (e.g. 20200131120005.25)")


# --------------------------------------------------------------------------
# 3. Station epochs
# --------------------------------------------------------------------------
def _inventory(tmp_path, epochs=((2010, 2015), (2016, 2018))):
    stations = [Station(code="STA", latitude=34.0, longitude=-118.0, elevation=0.0,
                        start_date=UTCDateTime(a, 1, 1), end_date=UTCDateTime(b, 1, 1))
                for a, b in epochs]
    path = tmp_path / "stations.xml"
    Inventory(networks=[Network(code="XX", stations=stations)], source="test").write(
        str(path), format="STATIONXML")
    return path


def test_station_whose_epochs_end_before_the_pick_says_so(tmp_path):
    path = _inventory(tmp_path)
    stations = station_files.read_stations(path)
    assert stations.coordinates("XX", "STA", UTCDateTime(2017, 6, 1)) == (34.0, -118.0, 0.0)
    when = UTCDateTime(2019, 6, 1)
    with pytest.raises(pick_files.PickError) as err:
        stations.coordinates("XX", "STA", when)
    assert str(err.value) == (
        f"XX.STA at {when}: station in the inventory {path} but its epochs "
        "(2010-01-01T00:00:00.000000Z - 2015-01-01T00:00:00.000000Z; "
        "2016-01-01T00:00:00.000000Z - 2018-01-01T00:00:00.000000Z) do not cover the pick time")
    with pytest.raises(pick_files.PickError, match="XX.NOPE at .*: station not in the inventory"):
        stations.coordinates("XX", "NOPE", when)


# --------------------------------------------------------------------------
# 4. Coordinates missing from an inventory
# --------------------------------------------------------------------------
@pytest.mark.parametrize("row, what", [("XX,B,,-118.0", "latitude ''"),
                                       ("XX,B,34.0,west", "longitude 'west'"),
                                       ("XX,B,95.0,-118.0", "latitude '95.0'")])
def test_csv_inventory_row_without_coordinates_is_refused_naming_the_line(tmp_path, row, what):
    path = _write(tmp_path / "stations.csv",
                  f"network,station,latitude,longitude\nXX,A,34.0,-118.0\n{row}\n")
    with pytest.raises(ValueError) as err:
        station_files.read_stations(path)
    assert str(err.value).startswith(f"{path}, line 3: station XX.B: {what} is not a ")


def test_stationxml_station_without_latitude_is_refused_naming_it(tmp_path):
    path = _inventory(tmp_path, epochs=((2010, 2015),))
    text = path.read_text()
    start = text.index("<Latitude")
    path.write_text(text[:start] + text[text.index("</Latitude>") + len("</Latitude>"):])
    line = text[:text.index("<Station ")].count("\n") + 1
    with pytest.raises(ValueError) as err:
        station_files.read_stations(path)
    assert str(err.value) == f"{path}, line {line}: station XX.STA has no Latitude"


# --------------------------------------------------------------------------
# 5. Duplicate picks, CSV and QuakeML alike
# --------------------------------------------------------------------------
def test_duplicate_picks_are_used_once_from_csv_and_quakeml(tmp_path):
    rows = [("A", "P", 1.0), ("A", "P", 1.0), ("B", "P", 2.0), ("A", "S", 5.0), ("A", "S", 5.0)]
    csv = _write(tmp_path / "picks.csv", "network,station,p_time,phase,event_id\n" + "".join(
        f"XX,{sta},{T0 + dt},{phase},ev1\n" for sta, phase, dt in rows))
    event = Event(picks=[Pick(time=T0 + dt, phase_hint=phase, waveform_id=WaveformStreamID(
        "XX", sta)) for sta, phase, dt in rows])
    Catalog(events=[event]).write(str(tmp_path / "picks.xml"), format="QUAKEML")
    from_csv = pick_files.read_picks(csv)
    from_xml = pick_files.read_picks(tmp_path / "picks.xml")
    for picks in (from_csv, from_xml):
        assert list(picks["phase"]) == ["P", None, "P", "S", None]
    assert list(_unused(from_csv)["reason"]) == [
        f"{csv}, line 3: duplicate of line 2 (same network, station, location, phase, time "
        "and event): not used",
        f"{csv}, line 6: duplicate of line 5 (same network, station, location, phase, time "
        "and event): not used"]
    eid = from_xml["event_id"][0]
    assert list(_unused(from_xml)["reason"]) == [
        f"{tmp_path / 'picks.xml'}, event {eid}, pick 2: duplicate of pick 1 (same network, "
        "station, location, phase, time and event): not used",
        f"{tmp_path / 'picks.xml'}, event {eid}, pick 5: duplicate of pick 4 (same network, "
        "station, location, phase, time and event): not used"]


def test_duplicates_without_event_ids_and_near_duplicates(tmp_path):
    """No event_id column: each pick's own id is made from its time, so two equal
    rows are still duplicates; another location code or time is another pick."""
    csv = _write(tmp_path / "picks.csv", "network,station,p_time,location\n"
                                         f"XX,A,{T0},\nXX,A,{T0},\nXX,A,{T0},00\n"
                                         f"XX,A,{T0 + 0.01},\n")
    picks = pick_files.read_picks(csv)
    assert list(picks["phase"]) == ["P", None, "P", "P"]


# --------------------------------------------------------------------------
# 6. Phase labels kept
# --------------------------------------------------------------------------
def test_phase_hint_keeps_the_label_as_given(tmp_path):
    assert "phase_hint" in pick_files.PICKS_TABLE_COLUMNS
    csv = _write(tmp_path / "picks.csv", "network,station,p_time,phase\n"
                                         f"XX,A,{T0},Pg\nXX,B,{T0},\nXX,C,{T0}, Sn \n"
                                         f"XX,D,{T0},PKP\n")
    picks = pick_files.read_picks(csv)
    assert list(picks.columns) == list(pick_files.PICKS_TABLE_COLUMNS)
    assert list(picks["phase"]) == ["P", "P", "S", None]
    assert list(picks["phase_hint"]) == ["Pg", "P", "Sn", "PKP"]     # blank: its class
    event = Event(picks=[Pick(time=T0 + i, phase_hint=hint, waveform_id=WaveformStreamID(
        "XX", sta)) for i, (sta, hint) in enumerate([("A", "Pn"), ("B", "Sg"), ("C", None)])])
    Catalog(events=[event]).write(str(tmp_path / "picks.xml"), format="QUAKEML")
    picks = pick_files.read_picks(tmp_path / "picks.xml")
    assert list(picks["phase"]) == ["P", "S", None]
    assert list(picks["phase_hint"]) == ["Pn", "Sg", None]


# --------------------------------------------------------------------------
# 7. Corrupt miniSEED: one line per file, not one warning per record
# --------------------------------------------------------------------------
def _traces(start=T0, seconds=600.0):
    rng = np.random.default_rng(0)
    return [Trace(rng.integers(-2000, 2000, int(seconds * 100)).astype(np.int32), header={
        "network": "XX", "station": "STA", "channel": "HH" + c, "sampling_rate": 100.0,
        "starttime": start}) for c in "ENZ"]


def _corrupt(path):
    """Overwrite the start of every 20th 512-byte record of the first half of a file."""
    data = bytearray(open(path, "rb").read())
    for offset in range(512 * 10, len(data) // 2, 512 * 20):
        data[offset:offset + 8] = b"\xff" * 8       # not a SEED record any more
    open(path, "wb").write(bytes(data))


def test_corrupt_miniseed_says_one_line_per_file(tmp_path, capfd):
    folder = tmp_path / "waveforms"
    folder.mkdir()
    Stream(_traces()).write(str(folder / "bad.mseed"), format="MSEED", encoding="STEIM2",
                            reclen=512)
    _corrupt(folder / "bad.mseed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = sources.WaveformFiles(folder)
        traces = source.read("XX", "STA", T0 + 100, T0 + 200)
        source.read("XX", "STA", T0 + 200, T0 + 300)
    assert traces and not [w for w in caught if "SEED" in str(w.message)]
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: {folder / 'bad.mseed'}: ")
    assert " miniSEED warning(s), first: readMSEEDBuffer(): Not a SEED record." in lines[0]
    assert lines[0].endswith("; later ones of this file are not shown")


def test_corrupt_sds_day_file_says_one_line_per_read(tmp_path, capfd):
    paths = exporters.write_sds(_traces(), tmp_path / "sds", encoding="STEIM2", reclen=512)
    _corrupt(paths[0])                               # the HHE day file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        archive = sources.SDSArchive(tmp_path / "sds")
        got = archive.read("XX", "STA", T0, T0 + 600)
        archive.read("XX", "STA", T0 + 100, T0 + 200)      # the same station: not said again
    assert got and not [w for w in caught if "SEED" in str(w.message)]
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: XX.STA in the SDS archive {tmp_path / 'sds'}, "
                               f"{T0} - {T0 + 600}: ")
    assert lines[0].endswith("; later ones of this station are not shown")
    assert " miniSEED warning(s), first: readMSEEDBuffer(): Not a SEED record." in lines[0]
