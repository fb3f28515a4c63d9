"""Monte-Carlo uncertainty in tester1 and the reader's calibration and breakdown report."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SMALL_HEAD, working_dir
from geographiclib.geodesic import Geodesic

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints, uncertainty
from utrans_loc import metrics as lm
import reader as rd
import tester1 as t1


@pytest.fixture(scope="module")
def loaded(trained):
    model = U.build_location_model(**SMALL_HEAD)
    checkpoints.load_location_weights(model, trained["best_weights"])
    return model


@pytest.fixture(scope="module")
def batch(synthetic):
    ids = np.load(synthetic["test"])[:12]
    return U.DataGeneratorPrediction(ids, synthetic["hdf5"], batch_size=12)


def test_sampling_spread_reproducibility_and_batchnorm(loaded, batch):
    before = [w.numpy().copy() for w in loaded.non_trainable_weights]
    deterministic = t1.predict_samples(loaded, batch, 1, progress=False)
    samples = t1.predict_samples(loaded, batch, 30, seed=7, progress=False)
    assert samples.shape == (30, 12, 3)
    spread = samples.std(axis=0)
    assert (spread > 0).all()
    assert np.unique(np.round(spread[:, 0], 9)).size == 12      # differs between traces
    # The sample mean stays near the deterministic prediction. Dropout before
    # BatchNorm biases the samples of an undertrained model ("variance shift",
    # about 1.5 spreads for this 2-epoch model), so only gross errors are caught.
    assert np.abs(samples.mean(axis=0) - deterministic).mean() < 3 * spread.mean()
    np.testing.assert_array_equal(samples, t1.predict_samples(loaded, batch, 30, seed=7,
                                                               progress=False))
    assert not np.allclose(samples, t1.predict_samples(loaded, batch, 30, seed=8,
                                                        progress=False))
    for w, old in zip(loaded.non_trainable_weights, before):
        np.testing.assert_array_equal(w.numpy(), old)
    # deterministic mode is exactly model.predict
    np.testing.assert_array_equal(deterministic, loaded.predict_on_batch(batch[0][0]))


def test_sampling_model_keeps_upstream_frozen_dropout_off(loaded):
    sampler = uncertainty.mc_sampling_model(loaded, seed=0)
    kinds = {layer.name: type(layer).__name__ for layer in sampler.layers}
    frozen = [n for n in kinds if n.startswith("convf1_dropout")]
    assert len(frozen) == 3 and all(kinds[n] == "Dropout" for n in frozen)
    assert sum(k.startswith("MC") for k in kinds.values()) > 10
    for a, b in zip(sampler.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sample_spread_in_km():
    lat = 34.0 + np.array([[-0.01], [0.01]])
    lon = np.full((2, 1), -118.0)
    std_n, std_e, epi = lm.sample_spread_km(lat, lon)
    half = Geodesic.WGS84.Inverse(34.0, -118.0, 34.01, -118.0)["s12"] / 1000.0
    assert std_n[0] == pytest.approx(half, rel=1e-3) and std_e[0] == pytest.approx(0, abs=1e-9)
    assert epi[0] == pytest.approx(half, rel=1e-3)


def _csv(n=8, **extra):
    lat = 34.0 + 0.1 * np.arange(n)
    return pd.DataFrame({"trace_name": [f"t{i}" for i in range(n)], "station_lat": lat + 0.3,
                         "station_lon": -118.0, "event_lat": lat, "event_lon": -118.0,
                         "depth_km": 10.0, "pred_event_lat": lat, "pred_event_lon": -118.0,
                         "pred_depth_km": 10.0, **extra})


def test_coverage_on_known_answers():
    # depth errors of 0.5, 1.5, 2.5 and 3.5 sigma (two traces each), sigma = 2 km
    err = np.repeat([0.5, 1.5, 2.5, 3.5], 2) * 2.0
    df = _csv(pred_depth_km=10.0 + err * np.tile([1, -1], 4), pred_depth_km_std=2.0,
              pred_event_lat_std=0.01, pred_event_lon_std=0.01, pred_epicentre_std_km=1.0)
    table = lm.coverage_table(df, lm.location_errors(df)).set_index("quantity")
    assert table.loc["depth_km", "coverage_1sigma"] == 0.25
    assert table.loc["depth_km", "coverage_2sigma"] == 0.5
    assert table.loc["depth_km", "expected_1sigma"] == pytest.approx(0.6827, abs=1e-4)
    assert table.loc["epicentral_km", "expected_2sigma"] == pytest.approx(1 - np.exp(-4))
    assert table.loc["lat_deg", "coverage_1sigma"] == 1.0       # zero lat error
    assert "spearman_std_abs_error" in table.columns


def test_calibrated_gaussian_errors_lie_on_the_diagonal():
    r = np.random.default_rng(0)
    n, sigma = 4000, r.uniform(0.5, 3.0, 4000)
    north, east = r.standard_normal(n) * sigma, r.standard_normal(n) * sigma
    errors = pd.DataFrame({"lat_deg": r.standard_normal(n) * sigma, "lon_deg": 0.0,
                           "depth_km": r.standard_normal(n) * sigma,
                           "epicentral_km": np.hypot(north, east), "hypocentral_km": 0.0})
    df = pd.DataFrame({"pred_event_lat_std": sigma, "pred_depth_km_std": sigma,
                       "pred_epicentre_std_km": np.sqrt(2) * sigma})
    curve = lm.reliability_curve(df, errors)
    assert set(curve["quantity"]) == {"lat_deg", "depth_km", "epicentral_km"}
    assert np.abs(curve["observed"] - curve["expected"]).max() < 0.04
    cov = lm.coverage_table(df, errors).set_index("quantity")
    assert cov.loc["epicentral_km", "coverage_1sigma"] == pytest.approx(0.632, abs=0.03)
    assert cov.loc["depth_km", "coverage_2sigma"] == pytest.approx(0.954, abs=0.02)


def test_breakdown_bins_on_known_answers():
    df = _csv(6, magnitude=[0.5, 1.5, 1.5, 2.5, 2.5, 2.5], snr_db=np.nan)
    df["depth_km"] = [2.0, 7.0, 7.0, 12.0, 12.0, 40.0]
    df["pred_depth_km"] = df["depth_km"] + [1, 2, 4, 0, 0, 10]
    df["pred_event_lat"] = df["event_lat"] + 0.1        # ~11 km epicentral error
    errors = lm.location_errors(df)
    table = lm.breakdown_table(df, errors, lm.constant_baseline(df))
    assert set(table["attribute"]) == {"epicentral_distance_km", "true_depth_km", "magnitude"}
    depth = table[table["attribute"] == "true_depth_km"].set_index("bin")
    assert list(depth["n"]) == [1, 2, 2, 1]
    assert depth.loc["[5.0, 10.0)", "depth_mae_km"] == pytest.approx(3.0)
    mag = table[table["attribute"] == "magnitude"].set_index("bin")
    assert list(mag["n"]) == [1, 2, 3]
    dist = table[table["attribute"] == "epicentral_distance_km"]
    assert dist["n"].sum() == 6 and (dist["bin"] == "[20.0, 40.0)").all()  # 0.3 deg ~ 33 km
    assert (table["epicentral_mae_km"] > 10.5).all() and (table["epicentral_mae_km"] < 11.5).all()
    assert (table["baseline_epicentral_mae_km"] < 1e-6).all()  # every offset equal


def test_reader_report_with_uncertainty(trained, synthetic, tmp_path):
    with working_dir(tmp_path):
        t1.tester1(input_hdf5=synthetic["hdf5"], input_testset=synthetic["test"],
                   input_model=trained["best_weights"], output_name="mc",
                   estimate_uncertainty=True, number_of_sampling=5, seed=1, verbose=0)
    df = pd.read_csv(tmp_path / "mc_outputs" / "X_test_results.csv")
    for col in ("pred_event_lat_std_km", "pred_event_lon_std_km", "pred_epicentre_std_km",
                "magnitude", "snr_db"):
        assert col in df.columns and df[col].notna().all()
    res = rd.reader(str(tmp_path / "mc_outputs"))
    cov = pd.read_csv(tmp_path / "mc_outputs" / "uncertainty.csv")
    assert list(cov["quantity"]) == ["lat_deg", "lon_deg", "depth_km", "epicentral_km"]
    assert cov["coverage_1sigma"].between(0, 1).all()
    breakdown = pd.read_csv(tmp_path / "mc_outputs" / "breakdown.csv")
    assert {"epicentral_distance_km", "true_depth_km", "magnitude", "snr_db"} <= set(breakdown["attribute"])
    for attribute, part in breakdown.groupby("attribute"):
        assert part["n"].sum() == res["n_scored"]
    figures = os.listdir(tmp_path / "mc_outputs" / "figures")
    assert {"reliability.png", "breakdown.png"} <= set(figures)
    assert "Predicted uncertainty" in (tmp_path / "mc_outputs" / "metrics.md").read_text()


def test_unlabeled_traces(trained, synthetic, tmp_path):
    np.save(tmp_path / "unlabeled.npy", np.array(synthetic["noise_ids"]))
    with working_dir(tmp_path):
        res = t1.tester1(input_hdf5=synthetic["hdf5"], input_testset="unlabeled.npy",
                         input_model=trained["best_weights"], output_name="u",
                         estimate_uncertainty=True, number_of_sampling=3, verbose=0)
    df = pd.read_csv(tmp_path / "u_outputs" / "X_test_results.csv")
    assert df[["event_lat", "event_lon", "depth_km"]].isna().all().all()
    assert df["pred_epicentre_std_km"].notna().all()
    assert res["summary"]["n_with_truth"] == 0
    run = subprocess.run([sys.executable, str(ROOT / "03_read" / "reader.py"), "--input", "u_outputs"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"0 scored / {len(df)} total" in run.stdout
    assert "pred_epicentre_std_km" in run.stdout and "no error table" in run.stdout
    assert not (tmp_path / "u_outputs" / "metrics.csv").exists()
