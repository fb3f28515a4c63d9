"""Tests of the synthetic California-STEAD generator (00_data/)."""

import hashlib
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import run_main, run_script
from geographiclib.geodesic import Geodesic

DATA_DIR = Path(__file__).resolve().parents[1] / "00_data"
sys.path.insert(0, str(DATA_DIR))
import synthetic_california as sc  # noqa: E402

CLI = "00_data/make_synthetic.py"

EVENT_ATTRS = ["event_lat", "event_long", "depth", "magnitude", "magnitude_type",
               "p_arrival_sample", "s_arrival_sample", "coda_end_sample", "snr_db",
               "P_polarity", "source_id", "source_distance_km", "back_azimuth_deg"]
ALL_ATTRS = EVENT_ATTRS + ["station_lat", "station_long", "data_category",
                           "event_label", "AI_Set", "receiver_code", "network_code"]


def _make(tmp_path, name="run", **kw):
    out = tmp_path / name
    kw = {"n_traces": 80, "n_stations": 4, "seed": 0, "progress": False, **kw}
    return sc.make_synthetic_california(out / "syn.hdf5", out, **kw)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("syn"), n_traces=150, n_noise=12)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _trace_at(rng, dist_km, depth_km, azimuth, snr=200.0, lat=35.0, lon=-118.0):
    g = Geodesic.WGS84.Direct(lat, lon, azimuth, dist_km * 1000.0)
    return sc.synthesize_trace(rng, lat, lon, g["lat2"], g["lon2"], depth_km, 2.5, snr)


# ----------------------------------------------------------------- layout
def test_layout_and_attributes(dataset):
    with h5py.File(dataset["hdf5"], "r") as f:
        ids = list(f)
        assert len(ids) == 150 + 12
        for tid in ids:
            grp = f[tid]
            assert isinstance(grp, h5py.Group)
            assert grp["data"].shape == (6000, 3)
            assert grp["data"].dtype == np.float32
            assert np.all(np.isfinite(grp["data"][:]))
            missing = set(ALL_ATTRS) - set(grp.attrs)
            assert not missing, (tid, missing)
            assert len(grp["data"].attrs) == 0  # metadata on the group only
            a = grp.attrs
            assert a["network_code"] == "SY" and a["AI_Set"] == "synthetic"
            assert tid.startswith(f"{a['receiver_code']}.SY_")
            if a["data_category"] == "earthquake":
                assert tid.endswith("_EV") and a["event_label"] == 1
                assert a["magnitude_type"] == "ml"
                assert a["P_polarity"] in ("positive", "negative")
                assert np.asarray(a["snr_db"]).shape == (3,)
                assert 0 < a["p_arrival_sample"] < a["s_arrival_sample"] \
                    < a["coda_end_sample"] < 6000
                assert 1.0 <= a["magnitude"] <= 4.5
            else:
                assert a["data_category"] == "noise"
                assert tid.endswith("_NO") and a["event_label"] == 0
                for k in EVENT_ATTRS:
                    assert a[k] == "None", k
                assert isinstance(a["station_lat"], (float, np.floating))


def test_splits_grouped_by_event(dataset):
    parts = {k: np.load(dataset[k]) for k in ("train", "valid", "test")}
    for k, ids in parts.items():
        assert ids.dtype.kind == "U"
        assert len(ids) == dataset["counts"][k] > 0
    with h5py.File(dataset["hdf5"], "r") as f:
        src = {t: f[t].attrs["source_id"] for t in f}
        cat = {t: f[t].attrs["data_category"] for t in f}
    eq = {t for t, c in cat.items() if c == "earthquake"}
    sets = [set(v) for v in parts.values()]
    assert sum(len(s) for s in sets) == len(set.union(*sets))  # disjoint
    assert set.union(*sets) == eq                               # noise excluded
    events = [{src[t] for t in s} for s in sets]
    assert not (events[0] & events[1] or events[0] & events[2] or events[1] & events[2])
    # Fractions are over events, roughly 0.7/0.1/0.2.
    n_ev = dataset["n_events"]
    assert abs(len(events[0]) / n_ev - 0.7) < 0.05
    # Some events are recorded twice, so grouping is actually exercised.
    assert len(eq) > n_ev


def test_split_by_event_function():
    ids = [f"T{i}" for i in range(40)]
    src = [f"E{i // 2}" for i in range(40)]
    tr, va, te = sc.split_by_event(ids, src, split=(0.5, 0.25, 0.25), seed=3)
    assert (len(tr), len(va), len(te)) == (20, 10, 10)
    for a, b in [(tr, va), (tr, te), (va, te)]:
        assert not {int(t[1:]) // 2 for t in a} & {int(t[1:]) // 2 for t in b}
    again = sc.split_by_event(ids, src, split=(0.5, 0.25, 0.25), seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((tr, va, te), again))
    with pytest.raises(ValueError, match="split"):
        sc.split_by_event(ids, src, split=(0.5, 0.5, 0.5))


# ----------------------------------------------------------------- physics
def test_travel_times_and_geometry(dataset):
    with h5py.File(dataset["hdf5"], "r") as f:
        eq = [f[t].attrs for t in f if f[t].attrs["data_category"] == "earthquake"]
        rows = [{k: a[k] for k in a} for a in eq]
    for a in rows:
        g = Geodesic.WGS84.Inverse(a["station_lat"], a["station_long"],
                                   a["event_lat"], a["event_long"])
        epi = g["s12"] / 1000.0
        assert epi == pytest.approx(a["source_distance_km"], abs=1e-6)
        assert (g["azi1"] % 360) == pytest.approx(a["back_azimuth_deg"], abs=1e-6)
        r = math.hypot(epi, a["depth"])
        sp = (r / 3.5 - r / 6.0) * 100.0
        assert abs((a["s_arrival_sample"] - a["p_arrival_sample"]) - sp) <= 2.0
        assert 32.0 <= a["event_lat"] <= 42.0 and -125.0 <= a["event_long"] <= -114.0
        assert 32.0 <= a["station_lat"] <= 42.0 and -125.0 <= a["station_long"] <= -114.0
        assert 0.0 <= a["depth"] <= 60.0
    epis = np.array([a["source_distance_km"] for a in rows])
    assert np.mean((epis >= 5.0) & (epis <= 150.0)) >= 0.95
    # Clustering: each station's events sit in a few zones, so back-azimuths
    # are far from uniform (a large share falls in a few 30-degree bins).
    stations = {a["receiver_code"] for a in rows}
    for sta in stations:
        baz = np.array([a["back_azimuth_deg"] for a in rows if a["receiver_code"] == sta])
        if len(baz) >= 20:
            hist = np.sort(np.histogram(baz, bins=12, range=(0, 360))[0])[::-1]
            assert hist[:5].sum() >= 0.8 * len(baz)


def test_snr_is_honest():
    rng = np.random.default_rng(5)
    data, a = _trace_at(rng, 60.0, 10.0, 45.0, snr=20.0)
    p, s = int(a["p_arrival_sample"]), int(a["s_arrival_sample"])
    # Pre-P part is noise only: its power vs. the signal window matches snr_db.
    noise_pow = np.mean(data[:p - 50].astype(float) ** 2, axis=0)
    win_pow = np.mean(data[p:s + 400].astype(float) ** 2, axis=0)
    est = 10 * np.log10(win_pow / noise_pow - 1.0)
    assert np.allclose(est, a["snr_db"], atol=3.0)
    assert np.mean(a["snr_db"]) == pytest.approx(20.0, abs=4.0)


@pytest.mark.parametrize("azimuth", [20.0, 110.0, 200.0, 315.0])
def test_p_motion_points_along_back_azimuth(azimuth):
    rng = np.random.default_rng(int(azimuth))
    data, a = _trace_at(rng, 50.0, 10.0, azimuth)
    p = int(a["p_arrival_sample"])
    h = data[p:p + 30, :2].astype(float)           # E, N right after P
    _, _, vt = np.linalg.svd(h, full_matrices=False)
    ang = math.degrees(math.atan2(vt[0, 0], vt[0, 1])) % 180.0
    diff = abs(ang - a["back_azimuth_deg"] % 180.0)
    assert min(diff, 180.0 - diff) < 10.0
    # Polarity attribute is the sign of the first vertical motion.
    z = data[p:p + 30, 2]
    first = z[np.argmax(np.abs(z) > 0.2 * np.abs(z).max())]
    assert (first > 0) == (a["P_polarity"] == "positive")


def test_p_vertical_share_grows_with_depth():
    ratios = []
    for depth in (3.0, 15.0, 40.0):
        data, a = _trace_at(np.random.default_rng(7), 40.0, depth, 75.0)
        p = int(a["p_arrival_sample"])
        w = data[p:p + 30].astype(float)
        ratios.append(np.sum(w[:, 2] ** 2) / np.sum(w[:, :2] ** 2))
    assert ratios[0] < ratios[1] < ratios[2]
    assert ratios[2] == pytest.approx((40.0 / 40.0) ** 2, rel=0.3)


@pytest.mark.parametrize("azimuth,depth", [(30.0, 8.0), (160.0, 20.0), (280.0, 5.0)])
def test_s_energy_mostly_transverse(azimuth, depth):
    data, a = _trace_at(np.random.default_rng(11), 70.0, depth, azimuth)
    s = int(a["s_arrival_sample"])
    b = math.radians(a["back_azimuth_deg"])
    e, n = data[s:s + 100, 0].astype(float), data[s:s + 100, 1].astype(float)
    radial = e * math.sin(b) + n * math.cos(b)
    transverse = e * math.cos(b) - n * math.sin(b)
    assert np.sum(transverse ** 2) > 2.0 * np.sum(radial ** 2)
    # S larger than P on the horizontals.
    p = int(a["p_arrival_sample"])
    assert np.abs(data[s:s + 100, :2]).max() > np.abs(data[p:p + 50, :2]).max()


def test_high_frequencies_decay_with_distance():
    def centroid(dist):
        data, a = _trace_at(np.random.default_rng(2), dist, 10.0, 90.0)
        p = int(a["p_arrival_sample"])
        spec = np.abs(np.fft.rfft(data[p:p + 100, 2].astype(float), n=1024)) ** 2
        f = np.fft.rfftfreq(1024, 0.01)
        return np.sum(f * spec) / np.sum(spec), np.abs(data[p:p + 100]).max()

    (f_near, a_near), (f_far, a_far) = centroid(10.0), centroid(140.0)
    assert f_far < f_near
    assert a_far < a_near


# ----------------------------------------------------------------- files/CLI
def test_overwrite_refused(tmp_path):
    res = _make(tmp_path, n_traces=20)
    before = {k: _sha(res[k]) for k in ("hdf5", "train", "valid", "test")}
    with pytest.raises(FileExistsError, match="syn.hdf5"):
        _make(tmp_path, n_traces=20, seed=1)
    # Only a split file present -> still refused, naming that file.
    other = tmp_path / "other"
    other.mkdir()
    (other / "valid_Events.npy").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="valid_Events.npy"):
        sc.make_synthetic_california(other / "new.hdf5", other, n_traces=20,
                                     progress=False)
    assert (other / "valid_Events.npy").read_bytes() == b"keep"
    assert not (other / "new.hdf5").exists()
    assert {k: _sha(res[k]) for k in before} == before

    cmd = ["--output_hdf5", res["hdf5"], "--output_dir", tmp_path / "run", "--n_traces", "20",
           "--no_progress"]
    proc = run_main(CLI, *cmd, cwd=tmp_path)
    assert proc.returncode == 2
    assert "syn.hdf5" in proc.stderr and "--overwrite" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {k: _sha(res[k]) for k in before} == before

    # --overwrite is the only way to replace.
    proc = run_main(CLI, *cmd, "--overwrite", "--seed", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _sha(res["hdf5"]) != before["hdf5"]


@pytest.mark.parametrize("kw,name", [
    ({"n_traces": 5}, "n_traces"),
    ({"n_traces": -3}, "n_traces"),
    ({"n_stations": 0}, "n_stations"),
    ({"n_noise": -1}, "n_noise"),
    ({"seed": -1}, "seed"),
    ({"split": (0.7, 0.2, 0.2)}, "split"),
    ({"split": (1.2, -0.1, -0.1)}, "split"),
])
def test_bad_parameters(tmp_path, kw, name):
    with pytest.raises(ValueError, match=name):
        _make(tmp_path, **kw)
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("args,name", [
    (["--n_traces", "5"], "n_traces"),
    (["--split", "0.5", "0.1", "0.1"], "split"),
    (["--n_noise", "-2"], "n_noise"),
])
def test_cli_bad_parameters(tmp_path, args, name):
    proc = run_main(CLI, "--output_hdf5", tmp_path / "s.hdf5", "--output_dir", tmp_path,
                    "--no_progress", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert name in proc.stderr
    assert not (tmp_path / "s.hdf5").exists()


@pytest.mark.slow
def test_cli_runs_from_other_directory(tmp_path):
    out = tmp_path / "out"
    proc = run_script(CLI, "--output_hdf5", out / "s.hdf5", "--output_dir", out, "--n_traces",
                      12, "--n_stations", 2, "--n_noise", 2, "--split", 0.5, 0.25, 0.25,
                      "--no_progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("s.hdf5", "train_Events.npy", "valid_Events.npy", "test_Events.npy"):
        assert (out / name).is_file()
    with h5py.File(out / "s.hdf5", "r") as f:
        assert len(f) == 14


@pytest.mark.slow
def test_import_cli_has_no_side_effects():
    code = (f"import sys; sys.path.insert(0, {str(DATA_DIR)!r}); import make_synthetic; "
            "make_synthetic.build_parser()")
    proc = run_script("-c", code)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_seed_reproducible(tmp_path):
    def load(res):
        with h5py.File(res["hdf5"], "r") as f:
            return {t: (f[t]["data"][:], f[t].attrs["event_lat"]) for t in f}

    a = load(_make(tmp_path, "a", n_traces=20, seed=4))
    b = load(_make(tmp_path, "b", n_traces=20, seed=4))
    c = load(_make(tmp_path, "c", n_traces=20, seed=5))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[t][0], b[t][0]) and a[t][1] == b[t][1] for t in a)
    for k in ("train", "valid", "test"):
        assert np.array_equal(np.load(tmp_path / "a" / f"{k}_Events.npy"),
                              np.load(tmp_path / "b" / f"{k}_Events.npy"))
    assert a.keys() != c.keys() or not all(np.array_equal(a[t][0], c[t][0]) for t in a)
    assert [v[1] for v in a.values()] != [v[1] for v in c.values()]


# ----------------------------------------------------------------- the locator's worked example
def test_event_files_have_one_origin_time_per_event(dataset, tmp_path):
    import pandas as pd
    from obspy import UTCDateTime, read, read_inventory

    from utrans_loc import events as events_stage

    ids = np.load(dataset["test"]).tolist() + np.load(dataset["train"]).tolist()
    out = sc.write_event_files(dataset["hdf5"], ids, tmp_path / "ex", n_events=3)
    picks, truth = pd.read_csv(out["picks"]), pd.read_csv(out["truth"])
    assert out["events"] == len(truth) <= 3 and len(truth) >= 1
    assert (truth["n_stations"] >= 2).all()
    inventory = read_inventory(out["inventory"])
    with h5py.File(dataset["hdf5"], "r") as fh:
        for event in truth.itertuples():
            rows = picks[picks["event_id"] == event.event_id]
            assert len(rows) == event.n_stations
            for pick in rows.itertuples():
                (trace_id,) = [t for t in ids if fh[t].attrs["source_id"] == event.event_id
                               and fh[t].attrs["receiver_code"] == pick.station]
                attrs = fh[trace_id].attrs
                hyp = math.hypot(attrs["source_distance_km"], attrs["depth"])
                # P time = the event's one origin time + P travel time (straight ray)
                assert abs(UTCDateTime(pick.p_time) - UTCDateTime(event.origin_time)
                           - hyp / sc.VP_KM_S) < 1e-5
                stream = read(str(Path(out["waveforms"]) / f"{trace_id}.mseed"))
                assert sorted(tr.stats.channel for tr in stream) == ["HHE", "HHN", "HHZ"]
                z = stream.select(channel="HHZ")[0]
                p_sample = round((UTCDateTime(pick.p_time) - z.stats.starttime) * 100)
                assert p_sample == attrs["p_arrival_sample"]
                np.testing.assert_array_equal(z.data, fh[trace_id]["data"][:, 2])
                coords = inventory.get_coordinates(f"SY.{pick.station}..HHZ")
                assert coords["latitude"] == pytest.approx(attrs["station_lat"])
    with pytest.raises(FileExistsError):
        sc.write_event_files(dataset["hdf5"], ids, tmp_path / "ex")     # never overwritten
    # compare_with_truth: each event's preferred origin (events.csv) against its truth
    events = pd.DataFrame({"event_id": [truth.event_id[0], "not-in-truth"],
                           "latitude": [truth.latitude[0] + 0.2, 0.0],
                           "longitude": [truth.longitude[0], 0.0],
                           "depth_km": [truth.depth_km[0] + 2.0, 0.0],
                           "latitude_std_km": [3.0, 1.0], "longitude_std_km": [4.0, 1.0],
                           "depth_km_std": [5.0, 1.0], "n_stations": [2, 1],
                           "method": ["hybrid", "single-station"]})
    table = events_stage.compare_with_truth(events, truth)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["stations"] == 2 and row["method"] == "hybrid"
    assert row["lat"] == pytest.approx(truth.latitude[0] + 0.2)
    assert (row["north_std_km"], row["east_std_km"], row["depth_std_km"]) == (3.0, 4.0, 5.0)
    assert row["depth_error_km"] == pytest.approx(2.0)
    assert row["epicentral_error_km"] == pytest.approx(0.2 * 111.0, rel=0.01)


def test_physics_places_p_where_asked_and_checks_its_ranges(tmp_path):
    """--p_position_range 10 10: every P at 10 s (a set cut around catalogue picks, for
    the locator's P-position measurement); the default spreads P over 5-15 s."""
    import h5py

    fixed = sc.make_synthetic_california(
        str(tmp_path / "fixed.hdf5"), str(tmp_path / "fixed"), n_traces=40, n_stations=3,
        progress=False, physics=sc.Physics(p_position_s=(10.0, 10.0)))
    with h5py.File(fixed["hdf5"] if isinstance(fixed, dict) else tmp_path / "fixed.hdf5") as fh:
        group = fh["data"] if "data" in fh else fh
        p = [group[k].attrs["p_arrival_sample"] for k in group
             if "p_arrival_sample" in group[k].attrs]
    assert len(p) == 40 and set(p) == {1000.0}
    for bad in ((12.0, 10.0), (0.0, 10.0), (10.0, 40.0)):
        with pytest.raises(ValueError, match="p_position_s"):
            sc.Physics(p_position_s=bad)
