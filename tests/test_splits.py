"""utrans_loc/splits.py: split files read as data (never code), checked against the HDF5
file and against each other before a run starts."""

import dataclasses
import os

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
from conftest import TRAIN, run_script

import EqT_utils_Loc_California as U
import trainer1 as tr
from utrans_loc import cli, splits, traces, training


def test_noise_trace_in_split_is_an_error_naming_it(synthetic):
    ids = np.concatenate([np.load(synthetic["train"])[:7], synthetic["noise_ids"][:1]])
    gen = U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, shuffle=False)
    x, _ = gen[0]   # inside fit: a NaN batch stops training, then the error is raised
    assert np.isnan(x).all()
    assert isinstance(gen.failure, U.TraceError)
    assert synthetic["noise_ids"][0] in str(gen.failure)
    with pytest.raises(U.TraceError, match=synthetic["noise_ids"][0]):
        splits.check_split(synthetic["hdf5"], ids, "train", U.MAX_D, U.MIN_D)
    meta = splits.check_split(synthetic["hdf5"], ids, "test", U.MAX_D, U.MIN_D,
                              require_labels=False)
    assert meta["event_lat"].isna().sum() == 1


def test_depth_outside_range_is_counted_not_fatal(synthetic, capsys):
    ids = np.load(synthetic["train"])
    meta = splits.check_split(synthetic["hdf5"], ids, "train", max_d=3.0, min_d=1e-5)
    assert len(meta) == len(ids)
    assert "outside [1e-05, 3.0]" in capsys.readouterr().err


# ----------------------------------------------------------------- split files are data
class _Sentinel:
    """Unpickling this would create a file: a harmless stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.slow
def test_a_pickled_split_file_runs_nothing_and_is_refused(tmp_path):
    sentinel = tmp_path / "code_ran"
    ids = np.empty(2, dtype=object)
    ids[0], ids[1] = "A.TRACE_EV", _Sentinel(sentinel)
    np.save(tmp_path / "train_Events.npy", ids, allow_pickle=True)
    with pytest.raises(ValueError, match="train_Events.npy.*not allowed.*astype\\(str\\)"):
        splits.load_ids(tmp_path / "train_Events.npy")
    assert not sentinel.exists()
    run = run_script(TRAIN, "--input_hdf5", "x.hdf5", "--input_trainset", "train_Events.npy",
                     "--output_name", "pickled", cwd=tmp_path)
    assert run.returncode == 2 and "not allowed in a split file" in run.stderr
    assert not sentinel.exists() and not (tmp_path / "pickled_outputs").exists()


def test_older_object_array_splits_of_str_or_bytes_still_load(tmp_path):
    for name, values in (("str", ["a.EV", "b.EV"]), ("bytes", [b"a.EV", b"b.EV"])):
        np.save(tmp_path / f"{name}.npy", np.array(values, dtype=object), allow_pickle=True)
        assert list(splits.load_ids(tmp_path / f"{name}.npy")) == ["a.EV", "b.EV"]


def test_a_split_of_numbers_or_mixed_objects_is_refused(tmp_path):
    np.save(tmp_path / "ints.npy", np.arange(3))
    with pytest.raises(ValueError, match="ints.npy: holds int64 values"):
        splits.load_ids(tmp_path / "ints.npy")
    mixed = np.array(["a", 3], dtype=object)
    np.save(tmp_path / "mixed.npy", mixed, allow_pickle=True)
    with pytest.raises(ValueError, match="mixed.npy: the object array holds values that are not"):
        splits.load_ids(tmp_path / "mixed.npy")


# ----------------------------------------------------------------- leaks between splits
def test_a_trace_twice_in_one_split_is_an_error():
    with pytest.raises(U.TraceError, match="train.npy.*1 trace\\(s\\) more than once.*b"):
        splits.check_no_duplicates(["a", "b", "c", "b"], "input_trainset", "train.npy")
    splits.check_no_duplicates(["a", "b"], "input_trainset", "train.npy")


def _meta(rows):
    cols = ("trace_name", "event_lat", "event_lon", "depth_km", "source_id", "source_origin_time",
            "magnitude")
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


def test_overlap_counts_shared_traces_and_shared_earthquakes_by_source_id():
    train = _meta([("S1.a", 34.0, -118.0, 10.0, "E1", None), ("S2.a", 34.0, -118.0, 10.0, "E1", None),
                   ("S1.b", 35.0, -119.0, 5.0, "E2", None)])
    test = _meta([("S3.a", 34.0, -118.0, 10.0, "E1", None), ("S1.b", 35.0, -119.0, 5.0, "E2", None),
                  ("S1.c", 34.0, -118.0, 10.0, "E9", None)])   # same place, another event id
    found = splits.split_overlap("input_testset", test, "input_trainset", train)
    assert found["traces"] == ["S1.b"] and found["n_traces"] == 1
    assert found["n_events"] == 2 and found["event_traces"] == ["S3.a", "S1.b"]
    line = splits.overlap_lines([found])[0]
    assert line.startswith("input_testset vs input_trainset: 1 shared trace id(s) (first: S1.b)")


def test_overlap_without_source_id_uses_origin_time_else_identical_epicentre_depth_magnitude():
    t0 = "2019-07-06 03:19:53"
    f32 = lambda v: float(np.float32(v))   # the same catalogue value stored as float32
    train = _meta([("A.1", 35.770, -117.599, 8.0, None, t0, 2.1),
                   ("A.2", 33.0, -116.0, 12.0, None, None, 3.05),
                   ("A.3", 35.7701, -117.5993, 7.43, None, None, 1.87)])
    test = _meta([("B.1", 35.775, -117.595, 8.6, None, "2019-07-06 03:19:54", 2.3),   # same event
                  ("B.2", 35.770, -117.599, 8.0, None, "2019-07-06 05:00:00", 2.1),   # same place, later
                  ("B.3", 33.05, -116.0, 12.0, None, None, 3.05),                    # 0.05 deg away
                  ("B.4", 33.0, -116.004, 11.2, None, None, 3.05),   # no times: a neighbour, not it
                  ("B.5", 33.0, -116.0, 12.0, None, None, 3.05),     # no times, same values: same
                  ("B.6", 33.0, -116.0, 12.0, None, None, None),     # magnitude unknown: not the same
                  ("B.7", 33.0, -116.0, 12.0, None, None, 3.06),     # magnitude one step off: not it
                  ("B.8", 33.0, -116.0, 12.0, None, t0, 3.05),       # time on one side only: values
                  ("B.9", f32(35.7701), f32(-117.5993), f32(7.43), None, None, f32(1.87)),  # same
                  ("B.10", 35.7702, -117.5993, 7.43, None, None, 1.87)])   # 1e-4 deg off: not it
    found = splits.split_overlap("input_testset", test, "input_trainset", train)
    assert found["n_traces"] == 0
    assert found["event_traces"] == ["B.1", "B.5", "B.8", "B.9"]
    assert found["n_events"] == 3                # B.5 and B.8 record one earthquake (A.2)
    assert splits.overlap_lines([splits.split_overlap("a", train.iloc[1:2], "b", test.iloc[:2])]) == []
    no_magnitude = test.drop(columns="magnitude")   # a table without the column: values never match
    assert splits.split_overlap("t", no_magnitude, "r", train)["event_traces"] == ["B.1"]


def _clustered_catalogue(n_traces=2000, n_stations=4, seed=0):
    """The synthetic generator's catalogue (clustered source zones, some events recorded
    at two stations) as split metadata tables, attributes as make_synthetic_california
    writes them (magnitude to 0.01)."""
    import synthetic_california as sc

    cat, _, _ = sc._build_catalog(np.random.default_rng(seed), n_traces, n_stations, 0,
                                  second_station_prob=0.5)
    return pd.DataFrame({"trace_name": cat["trace_id"], "event_lat": cat["event_lat"],
                         "event_lon": cat["event_long"], "depth_km": cat["depth"],
                         "magnitude": cat["magnitude"].astype(float).round(2),
                         "source_id": cat["source_id"],
                         "source_origin_time": cat["origin_time"].astype(str)})


def _without_identity(meta):
    """As upstream DataCollected files: no source_id, no origin time."""
    return meta.assign(source_id=None, source_origin_time=None)


def test_leak_rule_on_a_clustered_catalogue_without_ids_or_origin_times():
    """Splits by event share no earthquake although the clustered events sit within
    0.01 deg and 1 km of each other across splits (the old rule called those one
    earthquake); splits by trace: every truly shared earthquake is found, nothing else."""
    from california import split_by_event

    meta = _clustered_catalogue()
    by_name = meta.set_index("trace_name")
    train, valid, test = (by_name.loc[ids].reset_index() for ids in split_by_event(
        meta["trace_name"].to_numpy(), meta["source_id"].to_numpy(), seed=0))
    for name, part in (("valid", valid), ("test", test)):
        found = splits.split_overlap(name, _without_identity(part), "train",
                                     _without_identity(train))
        assert (found["n_events"], found["event_traces"]) == (0, []), name
        # ... where distinct events lie within 0.01 deg and 1 km of each other across splits
        lat, lon, depth = (np.abs(part[c].to_numpy()[:, None] - train[c].to_numpy()[None])
                           for c in ("event_lat", "event_lon", "depth_km"))
        assert ((lat <= 0.01) & (lon <= 0.01) & (depth <= 1.0)).sum() >= 10, name
        with_ids = splits.split_overlap(name, part, "train", train)   # source_id, origin time
        assert with_ids["n_events"] == 0

    order = np.random.default_rng(1).permutation(len(meta))   # splits by trace
    train, test = meta.iloc[order[:1400]], meta.iloc[order[1600:]]
    truth = set(test["source_id"]) & set(train["source_id"])
    assert len(truth) >= 20
    found = splits.split_overlap("test", _without_identity(test), "train",
                                 _without_identity(train))
    assert set(found["event_traces"]) == set(test.loc[test["source_id"].isin(truth), "trace_name"])
    assert found["n_events"] == len(truth)


def test_leak_rule_reads_the_hdf5_attributes_of_one_event_as_one_earthquake(synthetic):
    """Through read_metadata: traces of one event at two stations match, by attributes alone."""
    ids = np.concatenate([splits.load_ids(synthetic[k]) for k in ("train", "valid", "test")])
    meta = splits.read_metadata(synthetic["hdf5"], ids)
    order = np.random.default_rng(0).permutation(len(meta))
    a, b = meta.iloc[order[: len(meta) // 2]], meta.iloc[order[len(meta) // 2:]]
    truth = set(a["source_id"]) & set(b["source_id"])
    assert truth                                       # the fixture has two-station events
    found = splits.split_overlap("a", _without_identity(a), "b", _without_identity(b))
    assert set(found["event_traces"]) == set(a.loc[a["source_id"].isin(truth), "trace_name"])
    assert found["n_events"] == len(truth)


def test_trainer_warns_about_validation_overlapping_training(synthetic, tmp_path, capsys):
    train = splits.load_ids(synthetic["train"])
    valid = np.concatenate([splits.load_ids(synthetic["valid"]), train[:3]])
    np.save(tmp_path / "valid_leaky.npy", valid)
    cfg = training.TrainConfig(**{**cli.defaults_of(tr.trainer1), "input_hdf5": synthetic["hdf5"],
                                  "input_trainset": synthetic["train"],
                                  "input_validset": str(tmp_path / "valid_leaky.npy")})
    data = training.check_data(cfg)     # the step of trainer1 that reads and checks the splits
    err = capsys.readouterr().err
    assert "trainer1: warning: splits overlap, input_validset vs input_trainset: 3 shared trace" in err
    assert "--allow_overlap" in err
    assert data["overlap"][0].startswith("input_validset vs input_trainset: 3 shared trace id(s)")
    report = dict(training.report_items(cfg, data, keras.Sequential([keras.Input((1,)),
                                                               keras.layers.Dense(1)]),
                                        "none", {"history": {}, "best_epoch": None,
                                                 "best_loss": None, "best_weights": None,
                                                 "time_s": 0.0}))
    assert report["split_overlap"].startswith("input_validset vs input_trainset: 3 shared trace")
    quiet = training.check_data(dataclasses.replace(cfg, allow_overlap=True))
    assert quiet["overlap"] == data["overlap"] and capsys.readouterr().err == ""


# ----------------------------------------------------------------- what new users feed it
def test_coordinates_out_of_range_are_an_error_naming_the_trace(synthetic, tmp_path):
    ids = list(splits.load_ids(synthetic["train"])[:4])
    path = tmp_path / "swapped.hdf5"
    with h5py.File(synthetic["hdf5"], "r") as src, h5py.File(path, "w") as dst:
        for t in ids:
            src.copy(src[t], dst, name=t)
        dst[ids[1]].attrs["station_lat"] = dst[ids[1]].attrs["station_long"]   # swapped: -118
        dst[ids[2]].attrs["event_long"] = 241.0 + 360.0
    with pytest.raises(U.TraceError, match=f"station_lat outside \\[-90, 90\\].*{ids[1]}"):
        splits.check_split(path, ids, "input_trainset", U.MAX_D, U.MIN_D)
    del_ids = [ids[0], ids[2], ids[3]]
    with pytest.raises(U.TraceError, match=f"event_lon outside \\[-180, 360\\].*{ids[2]}"):
        splits.check_split(path, del_ids, "input_trainset", U.MAX_D, U.MIN_D)


def test_transposed_waveforms_are_named_as_transposed(synthetic, tmp_path):
    ids = list(splits.load_ids(synthetic["train"])[:2])
    path = tmp_path / "transposed.hdf5"
    with h5py.File(synthetic["hdf5"], "r") as src, h5py.File(path, "w") as dst:
        for t in ids:
            g = dst.create_group(t)
            g.attrs.update(src[t].attrs)
            g["data"] = src[t]["data"][()].T
    with pytest.raises(U.TraceError, match="transposed\\?.*\\(3, 6000\\)"):
        splits.check_split(path, ids, "input_testset", U.MAX_D, U.MIN_D, dim=(6000, 3))
    with pytest.raises(U.TraceError, match="transposed\\?"):
        traces.H5Reader(path).waveform(ids[0], (6000, 3))


def test_bytes_one_element_arrays_int16_and_float64_read_like_the_plain_file(synthetic, tmp_path):
    ids = list(splits.load_ids(synthetic["train"])[:3])
    path = tmp_path / "odd_types.hdf5"
    with h5py.File(synthetic["hdf5"], "r") as src, h5py.File(path, "w") as dst:
        for i, t in enumerate(ids):
            g = dst.create_group(t)
            for key, value in src[t].attrs.items():
                if isinstance(value, str):
                    value = value.encode()                    # bytes, as older h5py wrote
                elif np.ndim(value) == 0:
                    value = np.array([value])                 # 1-element array
                g.attrs[key] = value
            data = src[t]["data"][()]
            g["data"] = (np.round(data * 30000 / np.abs(data).max()).astype(np.int16) if i == 0
                         else data.astype(np.float64))
    plain = splits.read_metadata(synthetic["hdf5"], ids)
    odd = splits.read_metadata(path, ids)
    pd.testing.assert_frame_equal(plain, odd)
    gen = U.DataGenerator(ids, str(path), batch_size=2, shuffle=False, seed=0, metadata=odd)
    ref = U.DataGenerator(ids, synthetic["hdf5"], batch_size=2, shuffle=False, seed=0)
    np.testing.assert_array_equal(gen[0][1], ref[0][1])            # labels
    np.testing.assert_array_equal(gen[0][0][1], ref[0][0][1])      # float64 -> float32, same
    with h5py.File(synthetic["hdf5"], "r") as src:
        data = src[ids[0]]["data"][()]
        expected = U.normalize(np.round(data * 30000 / np.abs(data).max()).astype(np.float32))
    np.testing.assert_allclose(gen[0][0][0], expected, atol=1e-6)  # int16 converted on read
