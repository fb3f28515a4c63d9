"""00_data/seisbench_data.py and 00_data/build_from_seisbench.py: SeisBench-format datasets
-> DataCollected set and splits, checked against build_california on the same real traces."""

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_CSV, STEAD_SAMPLE, UPSTREAM_ATTRS, need, run_main, run_script
from scipy.signal import decimate

import build_engine as engine
import california
import seisbench_data as sb
import stead_california as sc

CLI = "00_data/build_from_seisbench.py"
# SeisBench's STEAD converter renames the STEAD columns so (seisbench/data/stead.py).
STEAD_TO_SEISBENCH = {
    "network_code": "station_network_code", "receiver_code": "station_code",
    "receiver_type": "trace_channel", "receiver_latitude": "station_latitude_deg",
    "receiver_longitude": "station_longitude_deg", "receiver_elevation_m": "station_elevation_m",
    "p_arrival_sample": "trace_p_arrival_sample", "p_status": "trace_p_status",
    "p_weight": "trace_p_weight", "p_travel_sec": "path_p_travel_sec",
    "s_arrival_sample": "trace_s_arrival_sample", "s_status": "trace_s_status",
    "s_weight": "trace_s_weight", "source_latitude": "source_latitude_deg",
    "source_longitude": "source_longitude_deg", "source_distance_deg": "path_ep_distance_deg",
    "source_distance_km": "path_ep_distance_km", "back_azimuth_deg": "path_back_azimuth_deg",
    "snr_db": "trace_snr_db", "coda_end_sample": "trace_coda_end_sample",
    "trace_name": "trace_name_original",
}
DATA_FORMAT = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": 100,
               "measurement": "velocity", "unit": "counts",
               "instrument_response": "not restituted"}


def write_seisbench(folder, rate=100, bucket_size=20, chunks=("",), chunks_file=False,
                    dataset_split=None):
    """The 50 real STEAD traces as a SeisBench dataset, as WaveformDataWriter writes one:
    ZNE, (traces, channels, samples) buckets, trace_name 'bucketN$i,:3,:npts', the STEAD
    name kept in trace_name_original. ``rate`` 50 decimates every trace (and its sample
    columns) by 2. Traces go round-robin into ``chunks``."""
    folder.mkdir(parents=True)
    meta = pd.read_csv(need(SAMPLE_CSV), dtype=str, keep_default_na=False)
    raw = h5py.File(need(STEAD_SAMPLE), "r")["earthquake/local"]
    meta = meta.rename(columns=STEAD_TO_SEISBENCH)
    meta["trace_sampling_rate_hz"] = str(rate)
    if dataset_split is not None:
        meta["split"] = dataset_split
    for k, chunk in enumerate(chunks):
        rows = meta.iloc[k::len(chunks)].copy()
        waves = []
        for name in rows["trace_name_original"]:
            zne = raw[name][()][:, [2, 1, 0]].T               # E N Z -> Z N E, channels first
            if rate != 100:
                zne = decimate(zne.astype(np.float64), 100 // rate, ftype="fir", zero_phase=True)
            waves.append(zne.astype(np.float32))
        if rate != 100:
            for column in ("trace_p_arrival_sample", "trace_s_arrival_sample",
                           "trace_coda_end_sample"):
                rows[column] = [str(float(v) * rate / 100) if v != "None" else v
                                for v in rows[column]]
        names = []
        with h5py.File(folder / f"waveforms{chunk}.hdf5", "w") as fh:
            for b in range(0, len(waves), bucket_size):
                block = np.stack(waves[b:b + bucket_size])
                fh.create_dataset(f"data/bucket{b // bucket_size}", data=block)
                names += [f"bucket{b // bucket_size}${i},:3,:{block.shape[2]}"
                          for i in range(len(block))]
            for key, value in {**DATA_FORMAT, "sampling_rate": rate}.items():
                fh.create_dataset(f"data_format/{key}", data=value)
        rows.insert(0, "trace_name", names)
        rows.to_csv(folder / f"metadata{chunk}.csv", index=False)
    if chunks_file:
        (folder / "chunks").write_text("\n".join(chunks) + "\n")
    return folder


def _contents(path):
    with h5py.File(path, "r") as fh:
        return {k: (fh[k]["data"][()], dict(fh[k].attrs)) for k in fh}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """build_california on the 50 real traces (the state polygon keeps 45)."""
    out = tmp_path_factory.mktemp("stead")
    sc.build_california(need(STEAD_SAMPLE), need(SAMPLE_CSV), out / "CA.hdf5", out,
                        progress=False)
    return out


def _convert(tmp_path, dataset, name="out", **kw):
    kw.setdefault("progress", False)
    out = tmp_path / name
    return sb.build_from_seisbench(dataset, out / "CA.hdf5", out, **kw), out


# ------------------------------------------------------------------- the format
def test_trace_names_are_parsed_never_evaluated():
    assert sb.parse_trace_name("bucket3$17,:3,:6000") == \
        ("bucket3", (17, slice(None, 3), slice(None, 6000)))
    assert sb.parse_trace_name("b$1, 0:3:1, 10:-10") == ("b", (1, slice(0, 3, 1), slice(10, -10)))
    assert sb.parse_trace_name("109C.TA_20060723155859_EV") == ("109C.TA_20060723155859_EV", ())
    for bad in ("b$__import__('os')", "b$1$2", "$1,:3", "b$1,,:3", "b$1,:3:4:5"):
        with pytest.raises(ValueError, match="trace_name"):
            sb.parse_trace_name(bad)


def test_chunks_are_found_as_seisbench_finds_them(tmp_path):
    plain = write_seisbench(tmp_path / "plain")
    assert [c.name for c in sb.find_chunks(plain)] == [""]
    named = write_seisbench(tmp_path / "named", chunks=("_b", "_a"))
    assert [c.name for c in sb.find_chunks(named)] == ["_a", "_b"]   # sorted, as SeisBench
    listed = write_seisbench(tmp_path / "listed", chunks=("_b", "_a"), chunks_file=True)
    assert [c.name for c in sb.find_chunks(listed)] == ["_b", "_a"]  # the chunks file's order
    (listed / "metadata_a.csv").unlink()
    with pytest.raises(FileNotFoundError, match="metadata_a.csv"):
        sb.find_chunks(listed)
    with pytest.raises(FileNotFoundError, match="not a SeisBench dataset"):
        sb.find_chunks(tmp_path)


def test_window_reorders_resamples_cuts_and_pads():
    rng = np.random.default_rng(0)
    zne = rng.standard_normal((3, 6000)).astype(np.float32)
    window, start, scale, n = sb.to_window(zne, "ZNE", 100.0, 700.0)
    np.testing.assert_array_equal(window, zne[[2, 1, 0]].T)          # exact E N Z at 100 Hz
    assert (start, scale, n) == (0, 1.0, 6000)
    long = rng.standard_normal((3, 12000)).astype(np.float32)
    window, start, _, n = sb.to_window(long, "ENZ", 100.0, 6500.0)   # P at 65 s of 120 s
    assert start == 6500 - sb.P_LEAD_SAMPLES and n == 6000
    _, late, _, _ = sb.to_window(long, "ENZ", 100.0, 11500.0)        # the end limits the cut
    assert late == 6000
    np.testing.assert_array_equal(window, long[:, start:start + 6000].T)
    short = rng.standard_normal((3, 2000))
    window, start, scale, n = sb.to_window(short, "ZNE", 50.0, 500.0)   # 40 s at 50 Hz
    assert (start, scale, n) == (0, 2.0, 3999)
    assert not window[n:].any() and window[:n].any()
    with pytest.raises(engine.SkipTrace, match="no E/N component"):
        sb.to_window(zne, "Z12", 100.0)
    with pytest.raises(engine.SkipTrace, match="outside"):
        sb.to_window(zne, "ZNE", 100.0, 7000.0)


# ------------------------------------------------------------------ conversion
def test_converted_traces_equal_build_california_on_the_same_traces(tmp_path, reference):
    dataset = write_seisbench(tmp_path / "sb100")
    out, folder = _convert(tmp_path, dataset)
    assert (out["selection"]["rows_in"], out["selection"]["outside_region"],
            out["counts"]["written"]) == (50, 5, 45)
    got, want = _contents(folder / "CA.hdf5"), _contents(reference / "CA.hdf5")
    assert set(got) == set(want)                       # ids: the STEAD trace names
    for name, (data, attrs) in want.items():
        np.testing.assert_array_equal(got[name][0], data)   # bitwise: same samples, same filter
        for key in set(UPSTREAM_ATTRS) - {"AI_Set"}:
            a, b = got[name][1][key], attrs[key]
            if isinstance(b, str):
                assert a == b, (name, key)
            else:   # CSV text vs the HDF5 attribute's float: equal to float32 precision
                np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-6)
        assert got[name][1]["AI_Set"] == "SeisBench"
        assert got[name][1]["seisbench_trace_name"].startswith("bucket")
    for split in engine.SPLITS:                        # the same split rule gives the same splits
        np.testing.assert_array_equal(np.load(folder / f"{split}_Events.npy"),
                                      np.load(reference / f"{split}_Events.npy"))
    report = (folder / "build_report.txt").read_text()
    assert report.startswith("build_from_seisbench report") and "trace_category" in report


def test_a_50_hz_chunked_copy_converts_within_the_measured_tolerance(tmp_path, reference):
    dataset = write_seisbench(tmp_path / "sb50", rate=50, chunks=("_a", "_b"))
    out, folder = _convert(tmp_path, dataset, region_mode="bbox", bbox=[32, 42, -125, -114])
    assert out["counts"]["written"] == 48            # the box keeps 3 more than the polygon
    got, want = _contents(folder / "CA.hdf5"), _contents(reference / "CA.hdf5")
    assert set(want) < set(got)
    errors = []
    for name, (data, attrs) in want.items():
        converted, got_attrs = got[name]
        assert converted.shape == (6000, 3) and converted.dtype == np.float32
        # The 50 Hz copy lost everything above 25 Hz (the band-pass keeps 1-45 Hz):
        # relative RMS difference per trace; measured: median 0.0019, max 0.0025.
        errors.append(np.sqrt(np.mean((converted - data) ** 2) / np.mean(data ** 2)))
        assert got_attrs["p_arrival_sample"] == attrs["p_arrival_sample"]   # 350 * 2 = 700
        assert got_attrs["event_lat"] == pytest.approx(attrs["event_lat"], rel=1e-6)
    errors = np.array(errors)
    assert np.median(errors) < 0.005 and errors.max() < 0.01, np.round(np.sort(errors), 4)


def test_dataset_split_column_and_the_leak_it_may_hold(tmp_path):
    given = np.array(["train"] * 30 + ["dev"] * 8 + ["test"] * 12)
    given[1] = "test"                                  # row 1 shares no event: no leak
    dataset = write_seisbench(tmp_path / "split", dataset_split=given)
    said = []
    out, folder = _convert(tmp_path, dataset, region_mode="none", use_dataset_split=True,
                           log=said.append)
    meta = pd.read_csv(dataset / "metadata.csv", dtype=str)
    want = {s: meta.loc[meta["split"] == k, "trace_name_original"].tolist()
            for k, s in sb.DATASET_SPLITS.items()}
    for split in engine.SPLITS:
        assert np.load(folder / f"{split}_Events.npy").tolist() == want[split]
    assert out["counts"]["events_in_two_splits"] == 0
    assert not any("more than one split" in m for m in said)
    # Two traces of one event on both sides of the dataset's split: counted and warned.
    meta.loc[1, "source_id"] = meta.loc[0, "source_id"]
    meta.to_csv(dataset / "metadata.csv", index=False)
    out, _ = _convert(tmp_path, dataset, name="leak", region_mode="none",
                      use_dataset_split=True, log=said.append)
    assert out["counts"]["events_in_two_splits"] == 1
    assert any("more than one split" in m for m in said)


def test_bad_datasets_are_named(tmp_path):
    dataset = write_seisbench(tmp_path / "bad")
    with h5py.File(dataset / "waveforms.hdf5", "a") as fh:
        del fh["data_format/component_order"]
    with pytest.raises(ValueError, match="waveforms.hdf5: no data_format/component_order"):
        _convert(tmp_path, dataset)
    with pytest.raises(ValueError, match="no 'split' column"):
        _convert(tmp_path, write_seisbench(tmp_path / "nosplit"), use_dataset_split=True)
    meta = pd.read_csv(tmp_path / "nosplit" / "metadata.csv")
    meta.drop(columns="source_depth_km").to_csv(tmp_path / "nosplit" / "metadata.csv",
                                                index=False)
    with pytest.raises(ValueError, match="metadata.csv: .*missing columns: source_depth_km"):
        _convert(tmp_path, tmp_path / "nosplit", name="o2")
    with pytest.raises(ValueError, match="bbox is given but region_mode"):
        california.make_region("state", bbox=[32, 42, -125, -114])


@pytest.mark.slow
def test_command_line(tmp_path):
    dataset = write_seisbench(tmp_path / "cli")
    run = run_script(CLI, "--dataset_dir", dataset, "--output_hdf5", tmp_path / "o" / "CA.hdf5",
                     "--output_dir", tmp_path / "o", "--no_progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "written (rows out): 45" in run.stdout
    again = run_script(CLI, "--dataset_dir", dataset, "--output_hdf5", tmp_path / "o" / "CA.hdf5",
                       "--output_dir", tmp_path / "o", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = run_script(CLI, "--dataset_dir", tmp_path / "nowhere", "--output_hdf5",
                         tmp_path / "x.hdf5", "--output_dir", tmp_path / "x", cwd=tmp_path)
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    assert "Traceback" not in missing.stderr + again.stderr
    assert (ROOT / CLI).is_file()


def test_one_region_vocabulary_with_the_earlier_spellings(tmp_path):
    """The SeisBench builder takes the STEAD builder's earlier words too (one vocabulary)."""
    dataset = write_seisbench(tmp_path / "words")
    assert isinstance(sb.SeisBenchSource(dataset), engine.Source)
    run = run_main(CLI, "--dataset_dir", dataset, "--output_hdf5", tmp_path / "o" / "CA.hdf5",
                   "--output_dir", tmp_path / "o", "--no_progress", "--region_mode", "polygon")
    assert run.returncode == 0, run.stderr
    assert "written (rows out): 45" in run.stdout
    assert "use --region_mode state" in run.stderr
    said = []
    out, _ = _convert(tmp_path, dataset, name="box", region=[32, 42, -125, -114],
                      log=said.append)
    assert out["counts"]["written"] == 48 and "custom bbox lat 32..42" in out["region"]
    assert "note: --region 32 42 -125 -114 is an earlier spelling: use --region_mode bbox " \
        "--bbox 32 42 -125 -114" in said
