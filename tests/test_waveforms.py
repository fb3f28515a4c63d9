"""utrans_loc/{picks,sources,waveforms}.py: picks with phases, waveforms read by time span
(files indexed by their headers, SDS archives), and the cut's messages and merges.

The locator runs on these are in test_locate.py; nothing here needs a model.
"""

import os

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime, read
from obspy.core.event import (Arrival, Catalog, Event, Origin, Pick, ResourceIdentifier,
                              WaveformStreamID)

from utrans_loc import exporters, sources, waveforms
from utrans_loc import picks as pick_files
from utrans_loc import stations as station_files

T0 = UTCDateTime("2020-01-01T23:00:00Z")
ACCEPTED = "accepted: P, Pg, Pn, Pb, S, Sg, Sn, Sb"


def _stations(tmp_path, network="XX", station="STA"):
    path = tmp_path / "stations.csv"
    path.write_text(f"network,station,latitude,longitude\n{network},{station},34.0,-118.0\n")
    return station_files.read_stations(path)


def _traces(start=T0, seconds=7200.0, rate=100.0, dtype=np.int32, seed=0, station="STA"):
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    return [Trace(rng.integers(-2000, 2000, n).astype(dtype), header={
        "network": "XX", "station": station, "channel": "HH" + c, "sampling_rate": rate,
        "starttime": start}) for c in "ENZ"]


# --------------------------------------------------------------------------
# Picks and phases
# --------------------------------------------------------------------------
def test_picks_csv_phase_column_and_location_codes(tmp_path):
    path = tmp_path / "picks.csv"
    path.write_text("network,station,p_time,phase,location\n"
                    "XX,A,2020-01-01T00:00:01Z,,00\n"       # empty phase: P
                    "XX,B,2020-01-01T00:00:02Z,S,\n"
                    "XX,C,2020-01-01T00:00:03Z,Pg,\n"
                    "XX,D,2020-01-01T00:00:04Z,PKP,\n")
    picks = pick_files.read_picks(path)
    assert list(picks["phase"]) == ["P", "S", "P", None]
    assert list(picks["reason"][:3]) == ["", "", ""]
    assert picks["reason"][3] == f"phase hint 'PKP' is neither P nor S ({ACCEPTED})"
    # a missing location code stays None beside given ones (pandas would make it NaN)
    assert list(picks["location"]) == ["00", None, None, None]
    # no phase column: every pick is P; the time column may be called time
    path.write_text("network,station,time\nXX,A,2020-01-01T00:00:01Z\n")
    picks = pick_files.read_picks(path)
    assert list(picks["phase"]) == ["P"] and picks["time"][0] == UTCDateTime(2020, 1, 1, 0, 0, 1)


def test_quakeml_written_by_obspy_phase_hints_and_readable_ids(tmp_path):
    """ObsPy's own ids (smi:local/<uuid>); every hint mapped or listed with its reason."""
    t = UTCDateTime("2020-01-01T00:00:00Z")

    def pick(station, hint, dt=0.0):
        return Pick(time=t + dt, phase_hint=hint, waveform_id=WaveformStreamID("XX", station))

    by_arrival = pick("G", None, 9.0)
    event = Event(picks=[pick("A", "P"), pick("A", "S", 5.0), pick("B", "Pn", 1.0),
                         pick("B", "Sg", 6.0), pick("C", "PKP", 2.0), pick("D", None, 3.0),
                         pick("A", "Pg", 0.5), by_arrival])
    event.origins.append(Origin(time=t, latitude=0, longitude=0, arrivals=[
        Arrival(pick_id=by_arrival.resource_id, phase="S")]))
    other = Event(resource_id=ResourceIdentifier("quakeml:us.anss.org/event/us7000abcd"),
                  picks=[pick("A", "P", 100.0)])
    Catalog(events=[event, other]).write(str(tmp_path / "picks.xml"), format="QUAKEML")
    picks = pick_files.read_picks(tmp_path / "picks.xml")
    uuid = str(event.resource_id).split("/")[-1]
    assert str(event.resource_id) == f"smi:local/{uuid}"
    assert list(picks["event_id"]) == [uuid] * 8 + ["us7000abcd"]
    assert list(picks["phase"]) == ["P", "S", "P", "S", None, None, None, "S", "P"]
    reasons = list(picks["reason"])
    assert reasons[4] == f"phase hint 'PKP' is neither P nor S ({ACCEPTED})"
    assert reasons[5] == f"no phase hint ({ACCEPTED})"
    assert reasons[6].startswith("another P pick of XX.A comes first in this event")
    assert picks["time"][1] == t + 5.0


def test_readable_ids_keep_full_ids_where_short_ones_would_meet():
    ids = ["smi:a/event/1", "smi:b/event/1", "quakeml:x.org/event/ev2", "plain"]
    assert pick_files.readable_ids(ids) == ["smi:a/event/1", "smi:b/event/1", "ev2", "plain"]


# --------------------------------------------------------------------------
# Waveforms read by time span
# --------------------------------------------------------------------------
def test_files_are_indexed_by_headers_and_read_by_window(tmp_path, capsys):
    folder = tmp_path / "waveforms"
    folder.mkdir()
    full = _traces()
    Stream(full).write(str(folder / "two_hours.mseed"), format="MSEED", encoding="STEIM2")
    (folder / "README.txt").write_text("not a waveform file\n")
    source = sources.WaveformFiles(folder)
    assert "skipped 1 file(s) ObsPy cannot read as waveforms, first: " in capsys.readouterr().err
    assert [(os.path.basename(n), a, b) for n, a, b in source.index[("XX", "STA")]] == \
        [("two_hours.mseed", T0, T0 + 7199.99)] * 3
    got = source.read("XX", "STA", T0 + 600, T0 + 672)
    assert len(got) == 3 and all(tr.stats.npts == 7201 for tr in got)   # not 720000
    window = waveforms.cut_window(got, "XX", "STA", T0 + 613, 7.0, _stations(tmp_path))
    whole = waveforms.cut_window(full, "XX", "STA", T0 + 613, 7.0, _stations(tmp_path))
    assert window.data.dtype == np.int32
    np.testing.assert_array_equal(window.data, whole.data)
    assert source.read("XX", "STA", T0 + 8000, T0 + 8100) == []
    assert source.no_data("XX", "STA", T0 + 8000, T0 + 8060) == (
        f"window {T0 + 8000} - {T0 + 8060} is outside the data of XX.STA in the waveform files "
        f"{folder} (data end at {T0 + 7199.99})")
    assert source.no_data("XX", "NOPE", T0, T0 + 60) == \
        f"no waveforms for this station in the waveform files {folder}"


def test_sds_archive_window_across_midnight_is_merged_as_from_files(tmp_path):
    """Day files of an SDS archive (split at midnight by write_sds): the window of a
    pick near midnight reads both and is the samples of the unsplit traces."""
    full = _traces(seconds=7200.0)                    # 23:00 - 00:59:59.99
    paths = exporters.write_sds(full, tmp_path / "sds", encoding="STEIM2")
    assert [os.path.relpath(p, tmp_path / "sds") for p in paths[:2]] == [
        "2020/XX/STA/HHE.D/XX.STA..HHE.D.2020.001", "2020/XX/STA/HHE.D/XX.STA..HHE.D.2020.002"]
    midnight = UTCDateTime("2020-01-02T00:00:00Z")
    day1, day2 = read(paths[0])[0], read(paths[1])[0]
    assert (day1.stats.endtime, day2.stats.starttime) == (midnight - 0.01, midnight)
    assert day1.stats.npts + day2.stats.npts == full[0].stats.npts
    stations = _stations(tmp_path)
    # windows (P 30 s in): across midnight, and wholly in the second day file
    for pick in (midnight + 10.0, midnight + 40.0):
        whole = waveforms.cut_window(full, "XX", "STA", pick, 30.0, stations)
        for source in (sources.SDSArchive(tmp_path / "sds"),
                       sources.WaveformFiles(str(tmp_path / "sds" / "**" / "XX.STA*"))):
            got = source.read("XX", "STA", pick - 36.0, pick + 36.0)
            window = waveforms.cut_window(got, "XX", "STA", pick, 30.0, stations)
            assert window.data.dtype == np.int32
            np.testing.assert_array_equal(window.data, whole.data)
    archive = sources.SDSArchive(tmp_path / "sds")
    assert archive.no_data("XX", "NOPE", T0, T0 + 60) == \
        f"no waveforms for this station in the SDS archive {tmp_path / 'sds'}"
    assert "is outside the data of XX.STA in the SDS archive" in archive.no_data(
        "XX", "STA", T0 + 86400 * 3, T0 + 86400 * 3 + 60)


def test_waveform_source_is_exactly_one_folder_or_files(tmp_path):
    with pytest.raises(ValueError, match="give exactly one of --input_waveforms .* --input_sds"):
        sources.open_waveforms(None, None)
    with pytest.raises(ValueError, match="got both: a and b"):
        sources.open_waveforms("a", "b")
    (tmp_path / "file").write_text("")
    for root in (tmp_path / "absent", tmp_path / "file"):
        with pytest.raises(ValueError) as err:
            sources.open_waveforms(None, root)
        assert str(err.value).startswith(f"--input_sds {root}: not a folder")
        assert "\n" not in str(err.value)
    with pytest.raises(FileExistsError):
        exporters.write_sds(_traces(seconds=10), tmp_path)      # never into an existing folder


def test_close_windows_share_one_read():
    spans = [(T0 + 3600, T0 + 3660, "c"), (T0, T0 + 60, "a"), (T0 + 100, T0 + 160, "b"),
             (T0 + 7000, T0 + 7060, "e"), (T0 + 3700, T0 + 3760, "d")]
    groups = sources.read_spans(spans, max_gap_s=60.0, max_length_s=3600.0)
    assert [items for _, _, items in groups] == [["a", "b"], ["c", "d"], ["e"]]
    assert groups[0][:2] == (T0, T0 + 160)
    # the length limit starts a new read even for overlapping windows
    groups = sources.read_spans([(T0 + 50 * i, T0 + 50 * i + 60, i) for i in range(100)],
                                max_length_s=1000.0)
    assert all(last - first <= 1000.0 for first, last, _ in groups) and len(groups) == 6


# --------------------------------------------------------------------------
# The cut: messages and merges
# --------------------------------------------------------------------------
def test_window_longer_than_obspys_example_stream_names_both_spans(tmp_path):
    """obspy.read()'s 30 s example stream, a pick inside it: the 60 s window does not fit."""
    stream = read()
    start, end = stream[0].stats.starttime, stream[0].stats.endtime
    stations = _stations(tmp_path, "BW", "RJOB")
    with pytest.raises(pick_files.PickError) as err:
        waveforms.cut_window(list(stream), "BW", "RJOB", start + 5.0, 7.0, stations)
    text = str(err.value)
    assert text == (f"BW.RJOB at {start + 5}: window {start - 2} - {start + 57.99} (59.99 s) is "
                    f"longer than the data of BW.RJOB..EHE there ({start} - {end}, 29.99 s)")
    assert "no data around it" not in text


def test_pieces_of_different_sample_types_are_merged_as_float64(tmp_path):
    """One channel in two files, int32 counts then float64 (ObsPy merges one type only)."""
    full = _traces(start=T0, seconds=120.0)
    pieces = []
    for tr in full:
        first, second = tr.slice(T0, T0 + 59.99).copy(), tr.slice(T0 + 60.0).copy()
        second.data = second.data.astype(np.float64)
        pieces += [first, second]
    window = waveforms.cut_window(pieces, "XX", "STA", T0 + 40.0, 7.0, _stations(tmp_path))
    assert window.data.dtype == np.float64
    whole = waveforms.cut_window(full, "XX", "STA", T0 + 40.0, 7.0, _stations(tmp_path))
    np.testing.assert_array_equal(window.data, whole.data.astype(np.float64))


def test_missing_component_in_the_window_says_where(tmp_path):
    traces = _traces(seconds=120.0)[:2]
    with pytest.raises(pick_files.PickError, match=r"HH has 2 component\(s\) \(E, N\) in the "
                                                   "data around the window"):
        waveforms.cut_window(traces, "XX", "STA", T0 + 30.0, 7.0, _stations(tmp_path))
