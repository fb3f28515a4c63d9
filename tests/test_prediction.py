"""utrans_loc/prediction.py: tester1's run and predict_samples (batching, timings, parity)."""

import os

import numpy as np
import pandas as pd
from conftest import PARITY, SMALL_HEAD, need, working_dir

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints
import tester1 as te


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
