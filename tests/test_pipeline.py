"""trainer1 -> tester1 -> reader, on synthetic data and on the real 50-trace sample."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import PARITY, ROOT, SMALL_HEAD, need, working_dir

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints
import reader as rd
import tester1 as t1
import trainer1 as tr

RESULT_COLUMNS = ["trace_name", "station_lat", "station_lon", "event_lat", "event_lon",
                  "depth_km", "pred_event_lat", "pred_event_lon", "pred_depth_km"]


def _cli(script, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _tree_hash(folder):
    digest = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            digest.update(path.encode())
            with open(path, "rb") as fh:
                digest.update(fh.read())
    return digest.hexdigest()


def test_trainer_outputs(trained):
    out = trained["output_dir"]
    assert os.path.basename(out) == "tiny_outputs"
    models = sorted(os.listdir(os.path.join(out, "models")))
    assert checkpoints.MODEL_CONFIG_NAME in models
    assert all(m.startswith("tiny_0") and m.endswith(".weights.h5")
               for m in models if m != checkpoints.MODEL_CONFIG_NAME)
    assert os.path.isfile(trained["best_weights"])
    history = pd.read_csv(os.path.join(out, "history.csv"))
    assert list(history["epoch"]) == [0, 1]
    assert {"loss", "val_loss", "learning_rate"} <= set(history.columns)
    assert os.path.getsize(os.path.join(out, "tiny_loss.png")) > 1000
    report = open(os.path.join(out, "X_report.txt")).read()
    for key in ("input_hdf5:", "batch_size: 8", "n_train_traces:", "best_epoch:",
                "time_taken_s:", "convmixer_filters: 16",
                "foundation_weights_used: none (random initialisation)"):
        assert key in report


def test_trainer_refuses_existing_output_folder(trained, synthetic):
    before = _tree_hash(trained["output_dir"])
    with working_dir(trained["work"]):
        with pytest.raises(FileExistsError, match="tiny_outputs"):
            tr.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                        input_validset=synthetic["valid"], output_name="tiny",
                        foundation_weights="none")
    run = _cli("01_train/trainer1.py", "--input_hdf5", synthetic["hdf5"], "--input_trainset",
               synthetic["train"], "--input_validset", synthetic["valid"], "--output_name",
               "tiny", "--foundation_weights", "none", cwd=trained["work"])
    assert run.returncode == 2
    assert "tiny_outputs already exists" in run.stderr and "Traceback" not in run.stderr
    assert _tree_hash(trained["output_dir"]) == before


def test_trainer_rejects_noise_trace_in_training_split(synthetic, tmp_path):
    ids = np.concatenate([np.load(synthetic["train"]), synthetic["noise_ids"][:1]])
    np.save(tmp_path / "train_bad.npy", ids)
    run = _cli("01_train/trainer1.py", "--input_hdf5", synthetic["hdf5"], "--input_trainset",
               tmp_path / "train_bad.npy", "--input_validset", synthetic["valid"],
               "--output_name", "bad", "--foundation_weights", "none", cwd=tmp_path)
    assert run.returncode == 2
    assert synthetic["noise_ids"][0] in run.stderr
    assert not (tmp_path / "bad_outputs").exists()


def test_tester_and_reader_end_to_end(trained, synthetic, tmp_path):
    ids = np.concatenate([np.load(synthetic["test"]), synthetic["noise_ids"]])
    np.save(tmp_path / "test_with_noise.npy", ids)
    with working_dir(tmp_path):
        res = t1.tester1(input_hdf5=synthetic["hdf5"], input_testset="test_with_noise.npy",
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

    run = _cli("03_read/reader.py", "--input", "tt_outputs", cwd=tmp_path)
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


def test_tester_uncertainty_gives_a_spread(trained, synthetic, tmp_path):
    with working_dir(tmp_path):
        res = t1.tester1(input_hdf5=synthetic["hdf5"], input_testset=synthetic["test"],
                         input_model=trained["best_weights"], output_name="mc",
                         estimate_uncertainty=True, number_of_sampling=4, verbose=0)
    df = res["results"]
    for col in ("pred_event_lat_std", "pred_event_lon_std", "pred_depth_km_std"):
        assert (df[col] > 0).all()


def test_tester_refuses_existing_folder_and_bad_model(trained, synthetic, tmp_path):
    (tmp_path / "x_outputs").mkdir()
    (tmp_path / "x_outputs" / "keep.txt").write_text("earlier result")
    args = ["--input_hdf5", synthetic["hdf5"], "--input_testset", synthetic["test"],
            "--input_model", trained["best_weights"], "--output_name", "x"]
    run = _cli("02_test/tester1.py", *args, cwd=tmp_path)
    assert run.returncode == 2 and "x_outputs already exists" in run.stderr
    assert (tmp_path / "x_outputs" / "keep.txt").read_text() == "earlier result"
    args[-1] = "y"
    args[5] = need(PARITY / "location_ckpt_keras2.h5")  # published head != model_config
    run = _cli("02_test/tester1.py", *args, "--convmixer_filters", "16", "--convmixer_depth", "2",
               cwd=tmp_path)
    assert run.returncode == 2 and "location_ckpt_keras2.h5" in run.stderr
    assert not (tmp_path / "y_outputs").exists()


def test_location_parity_through_tester1(tmp_path):
    ref = np.load(need(PARITY / "location_ref.npz"))
    with working_dir(tmp_path):
        res = t1.tester1(input_hdf5=need(PARITY / "collected_50.hdf5"),
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


def test_real_sample_end_to_end(tmp_path):
    h5 = need(PARITY / "collected_50.hdf5")
    ids = np.load(need(PARITY / "collected_50_ids.npy"))
    np.save(tmp_path / "train_Events.npy", ids[:32])
    np.save(tmp_path / "valid_Events.npy", ids[32:40])
    np.save(tmp_path / "test_Events.npy", ids[40:])
    with working_dir(tmp_path):
        result = tr.trainer1(input_hdf5=h5, output_name="real", batch_size=8, epochs=1,
                             foundation_weights="none", seed=1, verbose=0, **SMALL_HEAD)
        t1.tester1(input_hdf5=h5, input_testset="test_Events.npy",
                   input_model=result["best_weights"], output_name="real_test", verbose=0)
        res = rd.reader("real_test_outputs", figures=False)
    assert res["n_scored"] == 10
    assert res["metrics"].set_index("quantity").loc["epicentral_km", "mae"] > 0


@pytest.mark.parametrize("script", ["00_data/make_synthetic.py", "01_train/trainer1.py",
                                    "02_test/tester1.py", "03_read/reader.py"])
def test_help(script, tmp_path):
    run = _cli(script, "--help", cwd=tmp_path)
    assert run.returncode == 0 and "usage:" in run.stdout
    assert "(default:" in run.stdout
