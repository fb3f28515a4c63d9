"""utrans_loc/prediction.py: tester1's run, predict_samples (batching, timings, parity, the
two batch sources) and the results table's columns."""

import os

import numpy as np
import pandas as pd
import pytest
from conftest import PARITY, SMALL_HEAD, need, working_dir

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints, prediction
import tester1 as te


@pytest.mark.slow
def test_location_parity_through_tester1(tmp_path):
    ref = np.load(need(PARITY / "location_ref.npz"))
    with working_dir(tmp_path):
        res = te.tester1(input_hdf5=need(PARITY / "collected_50.hdf5"),
                         input_testset=need(PARITY / "collected_50_ids.npy"),
                         input_model=need(PARITY / "location_ckpt_keras2.h5"),
                         output_name="parity", batch_size=16, verbose=0)
    df = pd.read_csv(tmp_path / "parity_outputs" / "X_test_results.csv")
    assert list(df["trace_name"]) == list(ref["trace_name"])
    y = np.stack([df["station_lat"] - df["pred_event_lat"],
                  df["station_lon"] - df["pred_event_lon"],
                  U.depth_to_label(df["pred_depth_km"])], axis=1)
    assert np.abs(y - ref["prediction"]).max() < 1e-5
    assert res["summary"]["n_with_truth"] == 50


def test_tester_pads_the_last_batch_and_reports_timings(trained, synthetic, tmp_path):
    ids = np.load(synthetic["test"])[:13]
    model = U.build_location_model(**SMALL_HEAD)
    checkpoints.load_location_weights(model, trained["best_weights"])
    whole = np.asarray(model.predict_on_batch(U.DataGeneratorPrediction(
        ids, synthetic["hdf5"], batch_size=13)[0][0]))
    timings = {}
    padded = te.predict_samples(model, U.DataGeneratorPrediction(ids, synthetic["hdf5"],
                                                                 batch_size=5),
                                progress=False, timings=timings)
    assert padded.shape == (13, 3)
    np.testing.assert_allclose(padded, whole, rtol=1e-5, atol=1e-6)
    assert timings["compile_s"] > 0 and timings["predict_s"] > 0
    # the in-memory source (the locator's) gives the generator's outputs bit for bit
    x = U.DataGeneratorPrediction(ids, synthetic["hdf5"], batch_size=13)[0][0]
    in_memory = prediction.ArrayBatches(x, 5)
    assert isinstance(in_memory, prediction.BatchSource)
    assert isinstance(U.DataGeneratorPrediction(ids, synthetic["hdf5"]), prediction.BatchSource)
    np.testing.assert_array_equal(te.predict_samples(model, in_memory, progress=False), padded)
    assert prediction.ArrayBatches(x[:3], 40).batch_size == 3     # a few windows: no batch of 40
    # the warm-up compile leaves the Monte-Carlo samples of a seed unchanged
    gen = lambda: U.DataGeneratorPrediction(ids, synthetic["hdf5"], batch_size=5)  # noqa: E731
    plain = te.predict_samples(model, gen(), n_samples=3, seed=5, progress=False)
    timed = te.predict_samples(model, gen(), n_samples=3, seed=5, progress=False, timings={})
    np.testing.assert_array_equal(plain, timed)
    assert not np.array_equal(plain[0], plain[1])
    np.save(tmp_path / "test.npy", ids)
    with working_dir(tmp_path):
        out = te.tester1(input_hdf5=synthetic["hdf5"], input_testset=str(tmp_path / "test.npy"),
                         input_model=trained["best_weights"], output_name="timed", batch_size=5,
                         verbose=0)
    report = open(os.path.join(out["output_dir"], "X_report.txt")).read()
    for key in ("time_setup_s:", "time_compile_s:", "time_predict_s:", "time_write_s:",
                "traces_per_s_after_setup:"):
        assert key in report


def test_results_table_is_the_truth_beside_the_location_columns():
    meta = pd.DataFrame({"trace_name": ["a", "b"], "station_lat": [34.0, 35.0],
                         "station_lon": [-118.0, -117.0], "event_lat": [34.1, np.nan],
                         "event_lon": [-118.2, np.nan], "depth_km": [5.0, np.nan],
                         "snr_db": [10.0, 20.0]})
    pred = np.random.default_rng(0).uniform(0.0, 0.5, (4, 2, 3))
    columns = prediction.location_columns(meta["station_lat"], meta["station_lon"], pred,
                                          U.MAX_D, U.MIN_D)
    assert list(columns) == ["pred_event_lat", "pred_event_lon", "pred_depth_km",
                             "pred_event_lat_std", "pred_event_lon_std", "pred_depth_km_std",
                             "pred_event_lat_std_km", "pred_event_lon_std_km",
                             "pred_epicentre_std_km"]
    table = prediction.results_table(meta, pred, U.MAX_D, U.MIN_D)
    assert list(table.columns) == ["trace_name", "station_lat", "station_lon", "event_lat",
                                   "event_lon", "depth_km", *columns, "snr_db"]
    for name, values in columns.items():
        np.testing.assert_array_equal(table[name].to_numpy(), values)
    one = prediction.location_columns(meta["station_lat"], meta["station_lon"], pred[0],
                                      U.MAX_D, U.MIN_D)
    assert list(one) == ["pred_event_lat", "pred_event_lon", "pred_depth_km"]
    np.testing.assert_array_equal(one["pred_event_lat"], meta["station_lat"] - pred[0, :, 0])
