"""00_data/stead_california.py and its command line 00_data/build_california.py: STEAD ->
California DataCollected set and splits, on the shared engine (00_data/build_engine.py) and
region rules (00_data/california.py). (Reading the STEAD layouts: test_traces.py.)"""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import (PARITY, SAMPLE_CSV, STEAD_SAMPLE, UPSTREAM_ATTRS, need,
                      released_stead_pair, run_main, run_script, scipy_reference)

import build_engine as engine
import california
import stead_california as sc

CLI = "00_data/build_california.py"


def _sample():
    return need(STEAD_SAMPLE), need(SAMPLE_CSV)


def _build(tmp_path, name, hdf5, csv, **kw):
    kw.setdefault("progress", False)
    out = tmp_path / name
    return sc.build_california(hdf5, csv, out / "CA.hdf5", out, **kw), out


def _contents(path):
    with h5py.File(path, "r") as fh:
        return {k: (fh[k]["data"][()], {a: np.asarray(v).tolist() for a, v in fh[k].attrs.items()})
                for k in fh}


# ----------------------------------------------------------------------------- region
def test_region_polygon_and_bbox():
    places = {"Los Angeles": (34.05, -118.24), "San Diego": (32.72, -117.16),
              "Santa Cruz Island": (34.0, -119.75), "Cape Mendocino": (40.44, -124.41),
              "South Lake Tahoe": (38.94, -119.98), "El Centro": (32.79, -115.56),
              "Reno": (39.53, -119.81), "Las Vegas": (36.17, -115.14), "Tijuana": (32.52, -117.03),
              "Yuma": (32.69, -114.62), "Ensenada": (31.87, -116.6), "Portland": (45.5, -122.7)}
    inside = {"Los Angeles", "San Diego", "Santa Cruz Island", "Cape Mendocino",
              "South Lake Tahoe", "El Centro"}
    lat, lon = np.array(list(places.values())).T
    poly = california.make_region("state").contains(lat, lon)
    assert {p for p, ok in zip(places, poly) if ok} == inside
    box = california.make_region("bbox").contains(lat, lon)
    assert {p for p, ok in zip(places, box) if not ok} == {"Ensenada", "Portland"}
    custom = california.make_region("bbox", bbox=[33, 35, -119, -117])
    assert custom.contains([34.05, 32.72], [-118.24, -117.16]).tolist() == [True, False]
    assert not california.make_region().contains(np.nan, -118.0)[0]
    with pytest.raises(ValueError, match="lat_min < lat_max"):
        california.make_region("bbox", bbox=[35, 33, -119, -117])
    everywhere = california.make_region("none")
    assert everywhere.contains([45.5, np.nan], [-122.7, -118.0]).tolist() == [True, False]


def test_earlier_region_spellings_give_the_same_region_and_a_note():
    said = []
    old = california.region_from_options("polygon", note=said.append)
    assert old.describe() == california.make_region("state").describe()
    assert said == ["note: --region_mode polygon is an earlier spelling: use --region_mode state"]
    custom = california.region_from_options("polygon", region=[33, 35, -119, -117.5],
                                            note=said.append)   # --region overrode the mode
    assert custom.describe() == california.make_region("bbox", [33, 35, -119, -117.5]).describe()
    assert said[1] == ("note: --region 33 35 -119 -117.5 is an earlier spelling: use "
                       "--region_mode bbox --bbox 33 35 -119 -117.5")
    assert california.region_from_options("bbox", note=said.append).name == "California"
    assert len(said) == 2   # the current words: no note
    with pytest.raises(ValueError, match="not both"):
        california.region_from_options("bbox", bbox=[33, 35, -119, -117], region=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="region_mode must be one of state, bbox, none"):
        california.make_region("polygon")


# ------------------------------------------------------------------------- building
def test_build_the_real_sample(tmp_path):
    hdf5, csv = _sample()
    out, folder = _build(tmp_path, "poly", hdf5, csv)
    sel = out["selection"]
    assert (sel["rows_in"], sel["earthquake_local"], sel["outside_region"], sel["selected"]) == \
        (50, 50, 5, 45)   # 5 events in Baja California
    assert out["counts"]["written"] == 45 and out["counts"]["events"] == 45

    with h5py.File(STEAD_SAMPLE, "r") as raw, h5py.File(folder / "CA.hdf5", "r") as fh:
        assert len(fh) == 45
        for name in list(fh)[:5]:
            assert fh[name]["data"].dtype == np.float32
            expect = scipy_reference(raw[f"earthquake/local/{name}"][()])
            np.testing.assert_allclose(fh[name]["data"][()], expect, rtol=1e-6, atol=1e-6)
            attrs = fh[name].attrs
            assert set(UPSTREAM_ATTRS) <= set(attrs)
            assert attrs["data_category"] == "earthquake" and attrs["event_label"] == 1
            stead = raw[f"earthquake/local/{name}"].attrs
            assert attrs["station_lat"] == stead["receiver_latitude"]
        ids = set(fh)

    parts = {s: np.load(folder / f"{s}_Events.npy") for s in engine.SPLITS}
    assert sum(map(len, parts.values())) == 45 and set().union(*map(set, parts.values())) == ids
    assert [len(p) for p in parts.values()] == [31, 5, 9]   # 70/10/20 of 45 events
    traces = pd.read_csv(folder / "california_traces.csv", dtype={"source_id": str})
    assert traces.groupby("source_id")["split"].nunique().max() == 1
    report = (folder / "build_report.txt").read_text()
    assert "rows in: 50" in report and "written (rows out): 45" in report and "TA" in report

    box, _ = _build(tmp_path, "box", hdf5, csv, region_mode="bbox", split=(0.5, 0.25, 0.25),
                    seed=3)
    assert box["selection"]["selected"] == 48 and box["counts"]["splits"]["train"] == 24


def test_select_traces_filters():
    hdf5, csv = _sample()
    meta = pd.read_csv(csv)
    snr = meta["snr_db"].str.strip("[]").str.split(expand=True).astype(float).mean(axis=1)
    region = california.make_region("bbox")
    sel, rej, counts = sc.select_traces([csv], region, min_snr_db=40, max_distance_km=100,
                                        min_magnitude=3.0, chunk_rows=7)
    inside = (meta["source_latitude"] >= 32) & (meta["source_latitude"] <= 42)
    keep = inside & (snr >= 40) & (meta["source_distance_km"] <= 100) & \
        (meta["source_magnitude"] >= 3.0)
    assert sel["trace_name"].tolist() == meta.loc[keep, "trace_name"].tolist()
    assert counts["below_min_snr_db"] == int((inside & (snr < 40)).sum())
    assert counts["rows_in"] == 50 and rej.empty


def test_build_released_layout_selection_skips_and_events(tmp_path):
    pairs, sample_names = released_stead_pair(tmp_path)
    (h1, c1), (h2, c2) = pairs.values()
    out, folder = _build(tmp_path, "rel", [h1, h2], [c1, c2], split=(0.6, 0.2, 0.2), seed=1)
    with h5py.File(folder / "CA.hdf5", "r") as fh:
        written = set(fh)
        assert fh[sample_names[1]].attrs["coda_end_sample"].shape == ()
        assert fh[sample_names[2]].attrs["magnitude"] == "None"
        assert fh["TWO.CI_20060723155859_EV"].attrs["network_code"] == "CI"
    assert written == set(sample_names) | {"TWO.CI_20060723155859_EV", "DUP.TA_20100101000000_EV"}
    assert not any(n.startswith(("NOI", "NEV", "ORE", "BAJ")) for n in written)   # noise, outside

    skipped = pd.read_csv(folder / "skipped_traces.csv").set_index("trace_name")
    kinds = skipped["kind"].to_dict()
    assert kinds == {"NOCOORD.TA_1_EV": "csv_coordinates", "DUP.TA_20100101000000_EV": "duplicate",
                     "NAN.TA_1_EV": "nonfinite", "SHORT.TA_1_EV": "shape",
                     "GHOST.TA_1_EV": "missing"}
    assert "NaN" in skipped.loc["NAN.TA_1_EV", "reason"]
    assert skipped.loc["DUP.TA_20100101000000_EV", "input_hdf5"] == h2

    traces = pd.read_csv(folder / "california_traces.csv", dtype={"source_id": str})
    pair = traces[traces["trace_name"].isin([sample_names[0], "TWO.CI_20060723155859_EV"])]
    assert len(pair) == 2 and pair["split"].nunique() == 1   # one event, two stations
    splits = [set(np.load(folder / f"{s}_Events.npy")) for s in engine.SPLITS]
    assert set().union(*splits) == written and sum(map(len, splits)) == len(written)
    per_event = traces.groupby("source_id")["split"].nunique()
    assert per_event.max() == 1
    table = out["per_network"]
    assert table.loc["CI", "total"] == 1 and table.loc["total", "total"] == len(written)
    sel = out["selection"]
    assert sel["categories"] == {"noise": 3, "earthquake_local": 20}
    assert sel["outside_region"] == 3 and sel["rows_in_per_file"] == [4, 19]


def test_resume_after_an_interruption_matches_a_clean_build(tmp_path, monkeypatch):
    hdf5, csv = _sample()
    kw = dict(shard_size=7, seed=4)
    clean, clean_dir = _build(tmp_path, "clean", hdf5, csv, **kw)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, "cut", hdf5, csv, interrupt_after=17, **kw)
    work = tmp_path / "cut" / "CA.hdf5.partial"
    assert sorted(p.name for p in work.glob("shard_*.h5")) == ["shard_000000.h5", "shard_000001.h5"]
    (work / "shard_000002.h5.tmp").write_bytes(b"\x89HDF half written")   # as after a kill
    assert not (tmp_path / "cut" / "CA.hdf5").exists()

    with pytest.raises(ValueError, match="differs in: seed"):
        _build(tmp_path, "cut", hdf5, csv, shard_size=7, seed=5)
    resumed, cut_dir = _build(tmp_path, "cut", hdf5, csv, **kw)
    assert resumed["shards_resumed"] == 2 and resumed["processed"] == 45 - 14
    assert not work.exists()
    a, b = _contents(clean_dir / "CA.hdf5"), _contents(cut_dir / "CA.hdf5")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        assert a[name][1] == b[name][1]
    for s in engine.SPLITS:
        np.testing.assert_array_equal(np.load(clean_dir / f"{s}_Events.npy"),
                                      np.load(cut_dir / f"{s}_Events.npy"))

    # Interrupted while moving the outputs into place: a rerun finishes the moves.
    real_finish = engine._finish
    monkeypatch.setattr(engine, "_finish", lambda work, commit, paths: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, "late", hdf5, csv, **kw)
    monkeypatch.setattr(engine, "_finish", real_finish)
    done = sc.build_california(hdf5, csv, tmp_path / "late" / "CA.hdf5", tmp_path / "late",
                               progress=False, **kw)
    assert set(done) == {"paths"} and (tmp_path / "late" / "test_Events.npy").exists()
    assert _contents(tmp_path / "late" / "CA.hdf5").keys() == a.keys()


def test_bad_inputs_and_existing_outputs(tmp_path):
    hdf5, csv = _sample()
    out = tmp_path / "o"
    with pytest.raises(FileNotFoundError, match="nope.hdf5"):
        sc.build_california(tmp_path / "nope.hdf5", csv, out / "a.hdf5", out)
    (tmp_path / "bad.hdf5").write_text("not hdf5")
    with pytest.raises(ValueError, match="bad.hdf5: not a readable HDF5"):
        sc.build_california(tmp_path / "bad.hdf5", csv, out / "a.hdf5", out)
    with pytest.raises(ValueError, match="not a STEAD HDF5"):
        sc.build_california(need(PARITY / "collected_50.hdf5"), csv, out / "a.hdf5", out)
    with pytest.raises(ValueError, match="in pairs"):
        sc.build_california([hdf5, hdf5], csv, out / "a.hdf5", out)
    pd.read_csv(csv).drop(columns="source_latitude").to_csv(tmp_path / "cut.csv", index=False)
    with pytest.raises(ValueError, match="cut.csv: .*missing columns: source_latitude"):
        sc.build_california(hdf5, tmp_path / "cut.csv", out / "a.hdf5", out)
    with pytest.raises(ValueError, match="no trace selected"):
        sc.build_california(hdf5, csv, out / "a.hdf5", out, region=[40, 41, -124, -123])
    assert not (out / "a.hdf5.partial").exists()
    out.mkdir(exist_ok=True)
    (out / "valid_Events.npy").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match="valid_Events.npy"):
        sc.build_california(hdf5, csv, out / "a.hdf5", out)
    assert (out / "valid_Events.npy").read_bytes() == b"someone else's"


def _cli(*args, cwd):
    return run_script(CLI, *args, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_command_line(tmp_path):
    hdf5, csv = _sample()
    help_run = _cli("--help", cwd=tmp_path)
    assert help_run.returncode == 0
    for option in ("--stead_hdf5", "--region_mode", "--min_snr_db", "--shard_size", "(default: 0)"):
        assert option in help_run.stdout
    args = ("--stead_hdf5", hdf5, "--stead_csv", csv, "--output_hdf5", "out/CA.hdf5",
            "--output_dir", "out", "--no_progress")
    run = _cli(*args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "written (rows out): 45" in run.stdout and (tmp_path / "out" / "CA.hdf5").is_file()
    again = _cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0
    assert "already exists" in again.stderr and "CA.hdf5" in again.stderr
    missing = _cli("--stead_hdf5", "gone.hdf5", "--stead_csv", csv, "--output_hdf5", "x.hdf5",
                   "--output_dir", "x", cwd=tmp_path)
    assert missing.returncode == 2 and "gone.hdf5" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_foreign_commit_json_moves_nothing(tmp_path):
    hdf5, csv = _sample()
    victim = tmp_path / "precious.txt"
    victim.write_text("a user's file")
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, "cut", hdf5, csv, interrupt_after=5, shard_size=50)
    work = tmp_path / "cut" / "CA.hdf5.partial"
    # A crafted commit record that would move a file from outside the work folder.
    (work / "COMMIT.json").write_text(json.dumps({"hdf5": [str(victim), str(tmp_path / "stolen")]}))
    with pytest.raises(ValueError, match="COMMIT.json: move 'hdf5' is not one of this build"):
        _build(tmp_path, "cut", hdf5, csv, interrupt_after=None, shard_size=50)
    assert victim.read_text() == "a user's file" and not (tmp_path / "stolen").exists()


def test_command_line_earlier_region_spellings_build_the_same(tmp_path):
    """build_california.py's earlier words (--region_mode polygon, --region) still work, with
    a note naming the current spelling; the outputs equal those of the current words."""
    hdf5, csv = _sample()
    runs = {}
    for name, words in (("old", ["--region_mode", "polygon"]), ("new", []),
                        ("old_box", ["--region", "32.6", "34", "-118", "-115.9"]),
                        ("new_box", ["--region_mode", "bbox", "--bbox", "32.6", "34", "-118",
                                     "-115.9"])):
        runs[name] = run_main(CLI, "--stead_hdf5", hdf5, "--stead_csv", csv, "--output_hdf5",
                              tmp_path / name / "CA.hdf5", "--output_dir", tmp_path / name,
                              "--no_progress", *words)
        assert runs[name].returncode == 0, runs[name].stderr
    assert "note: --region_mode polygon is an earlier spelling: use --region_mode state" in \
        runs["old"].stderr
    assert "use --region_mode bbox --bbox 32.6 34 -118 -115.9" in runs["old_box"].stderr
    assert "note:" not in runs["new"].stderr + runs["new_box"].stderr

    def report(name):
        text = (tmp_path / name / "build_report.txt").read_text()
        return [line for line in text.splitlines() if not line.startswith("time:")]

    for old, new in (("old", "new"), ("old_box", "new_box")):
        a, b = _contents(tmp_path / old / "CA.hdf5"), _contents(tmp_path / new / "CA.hdf5")
        assert a.keys() == b.keys() and all(
            np.array_equal(a[k][0], b[k][0]) and a[k][1] == b[k][1] for k in a)
        assert report(old) == report(new)
        for s in engine.SPLITS:
            assert (tmp_path / old / f"{s}_Events.npy").read_bytes() == \
                (tmp_path / new / f"{s}_Events.npy").read_bytes()
    assert "custom bbox lat 32.6..34, lon -118..-115.9" in "\n".join(report("old_box"))
    bad = run_main(CLI, "--stead_hdf5", hdf5, "--stead_csv", csv, "--output_hdf5",
                   tmp_path / "x" / "CA.hdf5", "--output_dir", tmp_path / "x",
                   "--region", "32", "34", "-118", "-116", "--bbox", "32", "34", "-118", "-116")
    assert bad.returncode == 2 and "not both" in bad.stderr


def test_the_sources_keep_the_engine_contract(tmp_path):
    hdf5, csv = _sample()
    source = sc.SteadSource(hdf5, csv, {"min_snr_db": None})
    assert isinstance(source, engine.Source)
    assert len(engine.SOURCE_MEMBERS) == 14

    class Partial:   # a source that forgot most of the contract
        title = "partial"

        def select(self, region):
            raise AssertionError("never reached")

    with pytest.raises(TypeError, match="Partial is not a build source: it lacks "
                                        "selection_columns, inputs"):
        engine.build_dataset(Partial(), tmp_path / "CA.hdf5", tmp_path, california.make_region())
    assert not (tmp_path / "CA.hdf5.partial").exists()
    with pytest.raises(engine.SkipTrace, match="2 NaN/Inf samples") as nan:
        engine.check_samples(np.array([[0.0, np.nan], [np.inf, 1.0]]))
    assert nan.value.kind == "nonfinite"
    with pytest.raises(engine.SkipTrace, match="all-zero") as zero:
        engine.check_samples(np.zeros((6000, 3), np.float32))
    assert zero.value.kind == "zero"
