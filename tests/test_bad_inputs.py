"""Reliability: bad input -> exit 2 with a clear message and nothing changed; NaN
guard; kill-and-resume; seeded reproducibility; property tests of the transforms."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import FOUNDATION_H5, ROOT, SMALL_HEAD, need, working_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import EqT_utils_Loc_California as U
from utrans_loc import splits, training
import trainer1 as tr

TRAIN = "01_train/trainer1.py"
TEST = "02_test/tester1.py"
READ = "03_read/reader.py"
BUILD = "00_data/build_california.py"


def _run(script, args, cwd, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _hashes(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[path] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def bad(synthetic, tmp_path_factory):
    """A work folder with good and deliberately broken inputs."""
    work = tmp_path_factory.mktemp("bad")
    good = work / "good.hdf5"
    shutil.copy(synthetic["hdf5"], good)
    train = np.load(synthetic["train"])
    valid = np.load(synthetic["valid"])
    np.save(work / "train.npy", train)
    np.save(work / "valid.npy", valid)
    np.save(work / "test.npy", np.load(synthetic["test"]))
    np.save(work / "missing_id.npy", np.append(train, "NO_SUCH.TRACE_EV"))
    np.save(work / "noise.npy", np.append(train, synthetic["noise_ids"][0]))
    np.save(work / "empty.npy", np.array([], dtype=str))
    (work / "truncated.hdf5").write_bytes(good.read_bytes()[:len(good.read_bytes()) // 3])
    broken = work / "broken.hdf5"
    shutil.copy(good, broken)
    names = {}
    with h5py.File(broken, "r+") as fh:
        names["nan"], names["short"], names["zero"], names["no_lat"], names["none_depth"] = train[:5]
        fh[names["nan"]]["data"][100, 1] = np.nan
        del fh[names["short"]]["data"]
        fh[names["short"]]["data"] = np.ones((3000, 3), np.float32)
        fh[names["zero"]]["data"][...] = 0.0
        del fh[names["no_lat"]].attrs["event_lat"]
        fh[names["none_depth"]].attrs["depth"] = "None"
    for key, trace in names.items():
        # 48 ids = 6 full batches of 8: every id is read in the first epoch
        np.save(work / f"{key}.npy", np.concatenate([[trace], train[5:52]]))
    (work / "existing_outputs").mkdir()
    (work / "existing_outputs" / "result.txt").write_text("an earlier result")
    (work / "a_file").write_text("not a folder")
    return {"work": work, "names": names}


def _train_args(hdf5="good.hdf5", train="train.npy", name="run", *extra):
    return ["--input_hdf5", hdf5, "--input_trainset", train, "--input_validset", "valid.npy",
            "--output_name", name, "--foundation_weights", "none", "--epochs", "1",
            "--batch_size", "8", "--convmixer_filters", "16", "--convmixer_depth", "2", *extra]


def _test_args(model, hdf5="good.hdf5", test="test.npy", name="t", *extra):
    return ["--input_hdf5", hdf5, "--input_testset", test, "--input_model", model,
            "--output_name", name, *extra]


CASES = [
    # (id, script, args(bad, names, model), expected message fragments)
    ("missing_hdf5", TRAIN, lambda n, m: _train_args("absent.hdf5"), ["absent.hdf5", "not found"]),
    ("truncated_hdf5", TRAIN, lambda n, m: _train_args("truncated.hdf5"),
     ["truncated.hdf5", "not a readable HDF5"]),
    ("id_not_in_file", TRAIN, lambda n, m: _train_args(train="missing_id.npy"),
     ["NO_SUCH.TRACE_EV", "1 of"]),
    ("noise_in_split", TRAIN, lambda n, m: _train_args(train="noise.npy"), ["_NO", "lack"]),
    # found while training: the run's own new folder keeps its config, nothing else changes
    ("nan_trace", TRAIN, lambda n, m: _train_args("broken.hdf5", "nan.npy", "nanrun"),
     ["{nan}", "NaN"]),
    ("short_trace", TRAIN, lambda n, m: _train_args("broken.hdf5", "short.npy"),
     ["{short}", "(3000, 3)"]),
    ("missing_event_lat", TRAIN, lambda n, m: _train_args("broken.hdf5", "no_lat.npy"),
     ["{no_lat}"]),
    ("none_depth", TRAIN, lambda n, m: _train_args("broken.hdf5", "none_depth.npy"),
     ["{none_depth}"]),
    ("empty_split", TRAIN, lambda n, m: _train_args(train="empty.npy"), ["empty.npy", "empty"]),
    ("existing_output", TRAIN, lambda n, m: _train_args(name="existing"),
     ["existing_outputs already exists", "--resume"]),
    ("unwritable_output", TRAIN, lambda n, m: _train_args(name="a_file/run"),
     ["a_file", "cannot write"]),
    ("negative_batch", TRAIN, lambda n, m: _train_args() + ["--batch_size", "-4"], ["batch_size"]),
    ("max_d_le_min_d", TRAIN, lambda n, m: _train_args() + ["--max_d", "1", "--min_d", "5"],
     ["max_d"]),
    ("missing_foundation", TRAIN, lambda n, m: _train_args()[:-8] + [
        "--foundation_weights", "nowhere/UTrans.h5"], ["nowhere/UTrans.h5"]),
    ("wrong_weights_file", TEST, lambda n, m: _test_args(need(FOUNDATION_H5)),
     ["UTrans_Foundation.h5"]),
    ("tester_negative_batch", TEST, lambda n, m: _test_args(m, "good.hdf5", "test.npy", "t2",
                                                            "--batch_size", "0"), ["batch_size"]),
    ("tester_short_trace", TEST, lambda n, m: _test_args(m, "broken.hdf5", "short.npy", "t3"),
     ["{short}", "(3000, 3)"]),
    ("tester_existing_output", TEST, lambda n, m: _test_args(m, name="existing"),
     ["already exists"]),
    ("reader_missing_folder", READ, lambda n, m: ["--input", "nowhere_outputs"],
     ["nowhere_outputs"]),
    ("builder_missing_input", BUILD, lambda n, m: [
        "--stead_hdf5", "absent_merge.hdf5", "--stead_csv", "absent_merge.csv",
        "--output_hdf5", "built.hdf5", "--output_dir", "built"], ["absent_merge"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_and_changes_nothing(case, bad, trained):
    _, script, make_args, fragments = case
    work = bad["work"]
    before = _hashes(work)
    run = _run(script, make_args(bad["names"], trained["best_weights"]), cwd=work)
    assert run.returncode == 2, (run.stdout[-2000:], run.stderr[-2000:])
    message = run.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment.format(**bad["names"]) in message, message
    assert "Traceback" not in run.stderr
    after = _hashes(work)
    assert {k: v for k, v in after.items() if k in before} == before
    new = {p for p in set(after) - set(before) if "nanrun_outputs" not in p}
    assert not new, f"files left behind: {sorted(new)}"


def test_debug_flag_shows_the_traceback(bad):
    run = _run(TRAIN, _train_args("absent.hdf5") + ["--debug"], cwd=bad["work"])
    assert run.returncode != 0 and "Traceback" in run.stderr


def test_zero_trace_trains_and_predicts_finite(bad, tmp_path):
    """An all-zero (or constant) trace is normalised to zeros, never NaN."""
    x, _ = U.DataGenerator(np.load(bad["work"] / "zero.npy"), bad["work"] / "broken.hdf5",
                           batch_size=8, shuffle=False)[0]
    assert np.isfinite(x).all() and (x[0] == 0).all()


def test_depth_outside_range_is_counted_not_fatal(synthetic, capsys):
    ids = np.load(synthetic["train"])
    meta = splits.check_split(synthetic["hdf5"], ids, "train", max_d=3.0, min_d=1e-5)
    assert len(meta) == len(ids)
    assert "outside [1e-05, 3.0]" in capsys.readouterr().err


# ----------------------------------------------------------------- NaN during training
def test_nan_loss_stops_training_naming_the_batch(synthetic, tmp_path, monkeypatch):
    calls = {"n": 0, "ids": None}
    original = U.DataGenerator.__getitem__

    def poisoned(self, index):
        x, y = original(self, index)
        if self.augmentation:
            calls["n"] += 1
            if calls["n"] == 3:                      # the third training batch served
                calls["ids"] = set(self.batch_ids(index))
                y = y.copy()
                y[0, 0] = np.inf                     # finite input, infinite loss
        return x, y

    monkeypatch.setattr(U.DataGenerator, "__getitem__", poisoned)
    with working_dir(tmp_path), pytest.raises(U.TraceError, match="NaN/Inf at epoch 1") as err:
        tr.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                    input_validset=synthetic["valid"], output_name="nan", batch_size=8,
                    epochs=2, foundation_weights="none", seed=1, verbose=0, workers=1,
                    **SMALL_HEAD)
    named = str(err.value).split("traces in that batch: ")[1].split(";")[0].split(", ")
    assert set(named) == calls["ids"]                # exactly the poisoned batch's traces
    assert not list((tmp_path / "nan_outputs" / "models").glob("*.weights.h5"))
    # the NaN epoch did not overwrite the (here: absent) last good resume state
    assert not (tmp_path / "nan_outputs" / "resume" / "state.json").exists()


# ----------------------------------------------------------------- resume and seeds
def test_kill_during_second_epoch_then_resume(synthetic, tmp_path):
    args = ["--input_hdf5", synthetic["hdf5"], "--input_trainset", synthetic["train"],
            "--input_validset", synthetic["valid"], "--output_name", "k", "--epochs", "3",
            "--batch_size", "4", "--foundation_weights", "none", "--seed", "3",
            "--convmixer_filters", "16", "--convmixer_depth", "2", "--verbose", "0"]
    proc = subprocess.Popen([sys.executable, str(ROOT / TRAIN), *map(str, args)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = tmp_path / "k_outputs" / "resume" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["epochs_done"] == 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(state.read_text())["epochs_done"] == 1
    history = pd.read_csv(tmp_path / "k_outputs" / "history.csv")
    assert len(history) == 1

    again = _run(TRAIN, ["--output_name", "k", "--resume", "--verbose", "0",
                         "--input_hdf5", synthetic["hdf5"]], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout
    history = pd.read_csv(tmp_path / "k_outputs" / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    assert history[["loss", "val_loss"]].notna().all().all()
    assert json.loads(state.read_text())["epochs_done"] == 3
    assert "best_epoch:" in (tmp_path / "k_outputs" / "X_report.txt").read_text()


def test_interrupted_best_checkpoint_is_set_aside(tmp_path):
    for epoch in (1, 2, 3):
        (tmp_path / f"run_{epoch:03d}.weights.h5").write_bytes(b"w")
    training.set_aside_interrupted_checkpoints(str(tmp_path), "run", epochs_done=2)
    assert sorted(os.listdir(tmp_path)) == ["run_001.weights.h5", "run_002.weights.h5",
                                            "run_003.weights.h5.interrupted"]


def test_resume_without_a_run_is_an_error(tmp_path):
    run = _run(TRAIN, ["--input_hdf5", "x.hdf5", "--output_name", "none", "--resume"], cwd=tmp_path)
    assert run.returncode == 2 and "nothing to resume" in run.stderr


def test_same_seed_same_first_epoch_loss(synthetic, tmp_path):
    losses = []
    for name in ("s1", "s2"):
        with working_dir(tmp_path):
            result = tr.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                                 input_validset=synthetic["valid"], output_name=name,
                                 batch_size=8, epochs=1, foundation_weights="none", seed=11,
                                 verbose=0, **SMALL_HEAD)
        losses.append(result["history"]["loss"][0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


# ----------------------------------------------------------------- properties
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
waves = arrays(np.float32, st.tuples(st.integers(8, 300), st.just(3)), elements=finite)


@settings(max_examples=60, deadline=None)
@given(waves)
def test_normalize_is_finite_and_standard(data):
    x = U.normalize(data)
    assert x.shape == data.shape and np.isfinite(x).all()
    std = x.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-6))


@settings(max_examples=60, deadline=None)
@given(waves, st.integers(0, 2**31 - 1), st.floats(0, 60), st.booleans())
def test_augmentation_chain_keeps_shape_and_finiteness(data, seed, snr, emphasis):
    n = len(data)
    meta = {"p_arrival": n * 0.1, "s_arrival": n * 0.2, "coda_end": n * 0.5,
            "snr": np.full(3, snr)}
    out = U.augment_event(data.copy(), meta, np.random.default_rng(seed), shift_event_r=0.99,
                          add_event_r=0.5, add_noise_r=0.5, drop_channe_r=0.5,
                          scale_amplitude_r=0.5, pre_emphasis_on=emphasis, add_gap_r=0.5)
    assert out.shape == data.shape and np.isfinite(out).all()
    assert np.isfinite(U.normalize(out)).all()
