"""Command line of 01_train/trainer1.py: refused output folder, bad split, exit status 2."""

import hashlib
import os

import numpy as np
import pytest
from conftest import run_main, run_script, working_dir

import trainer1 as tr


def _tree_hash(folder):
    digest = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            digest.update(path.encode())
            with open(path, "rb") as fh:
                digest.update(fh.read())
    return digest.hexdigest()


def test_trainer_refuses_existing_output_folder(trained, synthetic):
    before = _tree_hash(trained["output_dir"])
    with working_dir(trained["work"]):
        with pytest.raises(FileExistsError, match="tiny_outputs"):
            tr.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                        input_validset=synthetic["valid"], output_name="tiny",
                        foundation_weights="none")
    run = run_script("01_train/trainer1.py", "--input_hdf5", synthetic["hdf5"], "--input_trainset",
                     synthetic["train"], "--input_validset", synthetic["valid"], "--output_name",
                     "tiny", "--foundation_weights", "none", cwd=trained["work"])
    assert run.returncode == 2
    assert "tiny_outputs already exists" in run.stderr and "Traceback" not in run.stderr
    assert _tree_hash(trained["output_dir"]) == before


def test_trainer_rejects_noise_trace_in_training_split(synthetic, tmp_path):
    ids = np.concatenate([np.load(synthetic["train"]), synthetic["noise_ids"][:1]])
    np.save(tmp_path / "train_bad.npy", ids)
    run = run_main("01_train/trainer1.py", "--input_hdf5", synthetic["hdf5"], "--input_trainset",
                     tmp_path / "train_bad.npy", "--input_validset", synthetic["valid"],
                     "--output_name", "bad", "--foundation_weights", "none", cwd=tmp_path)
    assert run.returncode == 2
    assert synthetic["noise_ids"][0] in run.stderr
    assert not (tmp_path / "bad_outputs").exists()


def test_trainer_without_weights_or_network_says_how_to_get_them(synthetic, tmp_path):
    # (the fetch that works: test_devices, the two-device command line)
    run = run_main("01_train/trainer1.py", "--input_hdf5", synthetic["hdf5"], "--input_trainset",
                     synthetic["train"], "--input_validset", synthetic["valid"], "--output_name",
                     "offline", cwd=tmp_path)
    assert run.returncode == 2
    assert "could not be fetched" in run.stderr and "--foundation_weights none" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "offline_outputs").exists()
