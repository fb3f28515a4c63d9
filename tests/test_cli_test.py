"""Command line of 02_test/tester1.py: refused output folder and model, exit status 2."""

from conftest import PARITY, need, run_script


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
    run = run_script("02_test/tester1.py", *args, "--convmixer_filters", "16",
                     "--convmixer_depth", "2", cwd=tmp_path)
    assert run.returncode == 2 and "location_ckpt_keras2.h5" in run.stderr
    assert not (tmp_path / "y_outputs").exists()
