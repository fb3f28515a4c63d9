"""Command line of 02_test/tester1.py: refused output folder and model, exit status 2."""

import os

import numpy as np
import pytest
from conftest import PARITY, READ, need, run_main, run_script, working_dir

import EqT_utils_Loc_California as U
import reader as rd
import tester1 as te
from utrans_loc import devices


def test_tester_refuses_existing_folder_and_bad_model(trained, synthetic, tmp_path):
    (tmp_path / "x_outputs").mkdir()
    (tmp_path / "x_outputs" / "keep.txt").write_text("earlier result")
    args = ["--input_hdf5", synthetic["hdf5"], "--input_testset", synthetic["test"],
            "--input_model", trained["best_weights"], "--output_name", "x"]
    run = run_script("02_test/tester1.py", *args, cwd=tmp_path)
    assert run.returncode == 2 and "x_outputs already exists" in run.stderr
    assert (tmp_path / "x_outputs" / "keep.txt").read_text() == "earlier result"
    args[-1] = "y"
    args[5] = need(PARITY / "location_ckpt_keras2.h5")  # published head != model_config
    run = run_main("02_test/tester1.py", *args, "--convmixer_filters", "16",
                     "--convmixer_depth", "2", cwd=tmp_path)
    assert run.returncode == 2 and "location_ckpt_keras2.h5" in run.stderr
    assert not (tmp_path / "y_outputs").exists()


def test_tester_warns_when_the_test_split_overlaps_training_and_the_reader_marks_it(
        synthetic, trained, tmp_path, capsys):
    train = np.load(synthetic["train"])
    leaky = np.concatenate([np.load(synthetic["test"]), train[:2]])
    np.save(tmp_path / "leaky_test.npy", leaky)
    common = dict(input_hdf5=synthetic["hdf5"], input_model=trained["best_weights"], verbose=0)
    with working_dir(tmp_path):
        te.tester1(input_testset="leaky_test.npy", output_name="leak", **common)
        err = capsys.readouterr().err
        # No splits given: the ones recorded with the model (model_config.json) are used.
        assert "tester1: warning: splits overlap, input_testset vs input_trainset: 2 shared " \
               "trace" in err
        report = (tmp_path / "leak_outputs" / "X_report.txt").read_text()
        assert "split_overlap: input_testset vs input_trainset: 2 shared trace id(s)" in report
        assert "split_overlap_checked_against: input_trainset " \
               f"{os.path.abspath(synthetic['train'])}" in report
        read = rd.reader("leak_outputs", figures=False)
        assert read["overlap"].startswith("input_testset vs input_trainset: 2 shared trace")
        assert "## Model (test set overlaps training)" in \
            (tmp_path / "leak_outputs" / "metrics.md").read_text()
        te.tester1(input_testset=synthetic["test"], output_name="clean", allow_overlap=True,
                   **common)
        assert "overlap" not in capsys.readouterr().err
        assert "split_overlap: none found" in \
            (tmp_path / "clean_outputs" / "X_report.txt").read_text()
        assert rd.reader("clean_outputs", figures=False)["overlap"] is None
    shown = run_script(READ, "--input", "leak_outputs", "--no_figures", cwd=tmp_path)
    assert "model: (test set overlaps training: input_testset vs input_trainset" in shown.stdout


def test_a_test_split_naming_a_trace_twice_is_refused(synthetic, trained, tmp_path):
    ids = np.load(synthetic["test"])
    np.save(tmp_path / "twice.npy", np.concatenate([ids, ids[:1]]))
    with working_dir(tmp_path), pytest.raises(U.TraceError, match="twice.npy\\) names 1 "
                                                                  "trace\\(s\\) more than once"):
        te.tester1(input_hdf5=synthetic["hdf5"], input_testset="twice.npy",
                   input_model=trained["best_weights"], output_name="twice", verbose=0)
    assert not (tmp_path / "twice_outputs").exists()


@pytest.mark.slow
def test_tester_names_its_device_in_the_start_up_line(synthetic, trained, tmp_path, capsys):
    with working_dir(tmp_path):
        te.tester1(input_hdf5=synthetic["hdf5"], input_testset=synthetic["test"],
                   input_model=trained["best_weights"], output_name="dev", verbose=1)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"tester1: predicting {len(np.load(synthetic['test']))} trace(s) of ")
    assert first.endswith(" on " + devices.device_description())     # e.g. 'CPU: no GPU visible'
