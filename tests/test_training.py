"""utrans_loc/training.py: trainer1's run, its outputs, seeds, preload mode and timings."""

import os

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_HEAD, working_dir

from utrans_loc import checkpoints, devices, traces
import trainer1 as tr


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
                "foundation_weights_used: none (random initialisation)",
                "augmentation_chain: [ShiftEvent(rate=0.99), AddNoise(rate=0.5), "
                "DropChannel(rate=0.1)]"):
        assert key in report
    # label_type is accepted for upstream callers and passed on nowhere
    assert "label_type" not in report
    assert "label_type" not in open(os.path.join(out, "run_config.json")).read()


def test_same_seed_same_loss_also_preloaded_and_timing_columns(trained, synthetic, tmp_path,
                                                               capsys):
    """The shared run's settings and seed again, with the traces preloaded: the same
    first-epoch loss (same batches, same initialisation, same augmentation)."""
    with working_dir(tmp_path):
        result = tr.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                             input_validset=synthetic["valid"], output_name="pre",
                             mode="pre_load_generator", batch_size=8, epochs=1,
                             foundation_weights="none", learning_rate=1e-3, seed=5, verbose=0,
                             **SMALL_HEAD)
        # the start-up line names the device the run computes on
        started = [line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("trainer1: ") and "validation traces" in line]
        assert len(started) == 1 and f"on {devices.device_description()}," in started[0]
        with pytest.raises(ValueError, match="max_preload_gb=0.0001"):
            tr.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                        input_validset=synthetic["valid"], output_name="pre2",
                        mode="pre_load_generator", max_preload_gb=0.0001, batch_size=8,
                        epochs=1, foundation_weights="none", verbose=0, **SMALL_HEAD)
    assert result["history"]["loss"][0] == pytest.approx(trained["history"]["loss"][0], rel=1e-6)
    history = pd.read_csv(os.path.join(result["output_dir"], "history.csv"))
    row = history.iloc[0]
    assert 0 < row["train_time_s"] < row["epoch_time_s"]     # validation is outside
    # traces through the model: with augmentation each id appears twice per epoch
    n_train = 2 * (len(np.load(synthetic["train"])) // 8) * 8
    assert row["train_traces_per_s"] == pytest.approx(n_train / row["train_time_s"])
    assert "mode: pre_load_generator" in open(os.path.join(result["output_dir"],
                                                           "X_report.txt")).read()


def test_preload_limit_counts_training_and_validation_together(synthetic, tmp_path):
    n_train, n_valid = (len(np.load(synthetic[k])) for k in ("train", "valid"))
    limit = traces.preload_size_gb(n_train + n_valid // 2, (6000, 3))   # fits either split alone
    with working_dir(tmp_path):
        with pytest.raises(ValueError, match=r"syn\.hdf5, training and validation sets\) needs"):
            tr.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                        input_validset=synthetic["valid"], output_name="both",
                        mode="pre_load_generator", max_preload_gb=limit, batch_size=8,
                        epochs=1, foundation_weights="none", verbose=0, **SMALL_HEAD)
        assert not os.path.exists("both_outputs")
