"""Command line of 01_train/trainer1.py: refused output folder, bad split, exit status 2."""

import dataclasses
import hashlib
import inspect
import os
import re

import numpy as np
import pytest
from conftest import run_main, run_script, working_dir

import trainer1 as tr
from utrans_loc import options, training


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


def test_one_table_makes_signature_parser_config_and_docstring():
    table = options.TRAIN_OPTIONS
    names = [opt.name for opt in table]
    # the explicit upstream signature: same names, order and defaults as the table
    assert options.signature_mismatches(tr.trainer1, table) == []
    # the command line: exactly the table's options (and --debug), its defaults and help
    parser = tr.build_parser()
    actions = {a.dest: a for a in parser._actions}
    assert set(actions) == set(names) | {"help", "debug"}
    for opt in table:
        default = list(opt.default) if opt.cli.get("nargs") else opt.default
        assert actions[opt.name].default == default and actions[opt.name].help == opt.help
    args = vars(parser.parse_args(["--label_type", "detection", "--drop_channel_r", "none"]))
    assert args["label_type"] == "detection" and args["drop_channel_r"] is None
    # the config: every option but the ignored label_type, with the table's defaults
    fields = {f.name: f.default for f in dataclasses.fields(training.TrainConfig)}
    assert list(fields) == [opt.name for opt in table if not opt.ignored] \
        and [opt.name for opt in table if opt.ignored] == ["label_type"]
    assert all(fields[opt.name] == opt.default for opt in table if not opt.ignored)
    assert "label_type" not in dataclasses.asdict(training.TrainConfig(label_type="detection"))
    # the docstring documents exactly the signature's parameters, in order
    documented = re.findall(r"^(\w+) : ", inspect.getdoc(tr.trainer1), flags=re.M)
    assert documented == list(inspect.signature(tr.trainer1).parameters) == names
    assert "{parameters}" not in tr.trainer1.__doc__
