"""trainer1 -> tester1 -> reader together: on synthetic data, with Monte-Carlo
uncertainty and unlabeled traces, and on the real 50-trace sample; every stage
script's --help."""

import os

import numpy as np
import pandas as pd
import pytest
from conftest import PARITY, SMALL_HEAD, need, run_main, run_script, working_dir

import reader as rd
import tester1 as te
import trainer1 as tr

RESULT_COLUMNS = ["trace_name", "station_lat", "station_lon", "event_lat", "event_lon",
                  "depth_km", "pred_event_lat", "pred_event_lon", "pred_depth_km"]


def test_tester_and_reader_end_to_end(trained, synthetic, tmp_path):
    ids = np.concatenate([np.load(synthetic["test"]), synthetic["noise_ids"]])
    np.save(tmp_path / "test_with_noise.npy", ids)
    with working_dir(tmp_path):
        res = te.tester1(input_hdf5=synthetic["hdf5"], input_testset="test_with_noise.npy",
                         input_model=trained["best_weights"], output_name="tt",
                         batch_size=7, verbose=0)
    csv = pd.read_csv(tmp_path / "tt_outputs" / "X_test_results.csv")
    assert list(csv.columns[:9]) == RESULT_COLUMNS
    assert list(csv["trace_name"]) == list(ids)
    noise = csv["trace_name"].isin(synthetic["noise_ids"])
    assert csv.loc[noise, ["event_lat", "event_lon", "depth_km"]].isna().all().all()
    assert csv.loc[~noise, ["event_lat", "event_lon", "depth_km"]].notna().all().all()
    assert csv[["pred_event_lat", "pred_event_lon", "pred_depth_km"]].notna().all().all()
    assert res["summary"]["n"] == len(ids)
    assert res["summary"]["n_with_truth"] == (~noise).sum()
    assert "input_model_sha256" in (tmp_path / "tt_outputs" / "X_report.txt").read_text()

    run = run_script("03_read/reader.py", "--input", "tt_outputs", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("epicentral MAE: model")
    metrics = pd.read_csv(tmp_path / "tt_outputs" / "metrics.csv")
    assert list(metrics.columns) == ["quantity", "n", "mae", "rmse", "median", "p90", "bias", "std"]
    assert list(metrics["quantity"]) == ["lat_deg", "lon_deg", "depth_km", "epicentral_km",
                                         "hypocentral_km"]
    assert (metrics["n"] == (~noise).sum()).all()
    assert (tmp_path / "tt_outputs" / "metrics.md").is_file()
    figures = os.listdir(tmp_path / "tt_outputs" / "figures")
    assert {"scatter_lat.png", "scatter_depth.png", "map_epicentres.png"} <= set(figures)


def test_reader_report_with_uncertainty(trained, synthetic, tmp_path):
    with working_dir(tmp_path):
        te.tester1(input_hdf5=synthetic["hdf5"], input_testset=synthetic["test"],
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
        res = te.tester1(input_hdf5=synthetic["hdf5"], input_testset="unlabeled.npy",
                         input_model=trained["best_weights"], output_name="u",
                         estimate_uncertainty=True, number_of_sampling=3, verbose=0)
    df = pd.read_csv(tmp_path / "u_outputs" / "X_test_results.csv")
    assert df[["event_lat", "event_lon", "depth_km"]].isna().all().all()
    assert df["pred_epicentre_std_km"].notna().all()
    assert res["summary"]["n_with_truth"] == 0
    run = run_main("03_read/reader.py", "--input", "u_outputs", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"0 scored / {len(df)} total" in run.stdout
    assert "pred_epicentre_std_km" in run.stdout and "no error table" in run.stdout
    assert not (tmp_path / "u_outputs" / "metrics.csv").exists()


@pytest.mark.slow
def test_real_sample_end_to_end(tmp_path):
    h5 = need(PARITY / "collected_50.hdf5")
    ids = np.load(need(PARITY / "collected_50_ids.npy"))
    np.save(tmp_path / "train_Events.npy", ids[:32])
    np.save(tmp_path / "valid_Events.npy", ids[32:40])
    np.save(tmp_path / "test_Events.npy", ids[40:])
    with working_dir(tmp_path):
        result = tr.trainer1(input_hdf5=h5, output_name="real", batch_size=8, epochs=1,
                             foundation_weights="none", seed=1, verbose=0, **SMALL_HEAD)
        te.tester1(input_hdf5=h5, input_testset="test_Events.npy",
                   input_model=result["best_weights"], output_name="real_test", verbose=0)
        res = rd.reader("real_test_outputs", figures=False)
    assert res["n_scored"] == 10
    assert res["metrics"].set_index("quantity").loc["epicentral_km", "mae"] > 0


@pytest.mark.parametrize("script", ["00_data/make_synthetic.py", "00_data/build_from_seisbench.py",
                                    "01_train/trainer1.py",
                                    "02_test/tester1.py", "03_read/reader.py"])
def test_help(script, tmp_path):
    run = run_main(script, "--help", cwd=tmp_path)
    assert run.returncode == 0 and "usage:" in run.stdout
    assert "(default:" in run.stdout
