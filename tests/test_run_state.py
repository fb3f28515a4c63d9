"""utrans_loc/run_state.py (with the resume steps of utrans_loc/training.py): the NaN
guard, kill-and-resume from the saved state, best checkpoints of an interrupted epoch."""

import json
import os
import signal
import sys
import time

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import (ROOT, SMALL_HEAD, TRAIN, full_disk_at_second_history_write, run_main,
                      start_script, working_dir)

import EqT_utils_Loc_California as U
from utrans_loc import run_state, training
import trainer1 as tr


# ----------------------------------------------------------------- NaN during training
@pytest.mark.slow
def test_nan_loss_stops_training_naming_the_batch(synthetic, tmp_path, monkeypatch):
    calls = {"n": 0, "ids": None}
    original = U.DataGenerator.batch_at

    def poisoned(self, epoch, index):
        x, y = original(self, epoch, index)
        if self.augmentation:
            calls["n"] += 1
            if calls["n"] == 3:                      # the third training batch served
                calls["ids"] = set(self.batch_ids(index, epoch))
                y = y.copy()
                y[0, 0] = np.inf                     # finite input, infinite loss
        return x, y

    monkeypatch.setattr(U.DataGenerator, "batch_at", poisoned)
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


# ----------------------------------------------------------------- resume
def _wait_for_epoch(proc, state, epochs_done, timeout=300):
    """Poll until ``state`` records ``epochs_done`` epochs or more (or the process ends)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["epochs_done"] >= epochs_done:
            return
        time.sleep(0.02)


# Starts a command with SIGINT ignored, as a shell without job control starts a
# background job (``cmd &`` in a script, some CI runners); exec keeps it ignored.
_SIGINT_IGNORED = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                   "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def _start_training(synthetic, tmp_path, name, epochs, sigint_ignored=False):
    """A trainer1 process on 16 training traces (4 batches an epoch: a second epoch
    lasts long enough to be interrupted, the run stays short)."""
    train = tmp_path / "train16.npy"
    np.save(train, np.load(synthetic["train"])[:16])
    args = ["--input_hdf5", synthetic["hdf5"], "--input_trainset", train,
            "--input_validset", synthetic["valid"], "--output_name", name, "--epochs", epochs,
            "--batch_size", "4", "--foundation_weights", "none", "--seed", "3",
            "--convmixer_filters", "16", "--convmixer_depth", "2", "--verbose", "0"]
    if sigint_ignored:
        return start_script("-c", _SIGINT_IGNORED, ROOT / TRAIN, *args, cwd=tmp_path)
    return start_script(TRAIN, *args, cwd=tmp_path)


@pytest.mark.slow
def test_ctrl_c_kill_resume_and_a_second_trainer_on_the_same_name(synthetic, tmp_path):
    """One run through every interruption: Ctrl-C (exit 130, the message), a second
    trainer1 refused meanwhile, a resume killed hard (SIGKILL) in its epoch, and a
    resume that finishes the run.

    The trainer starts with SIGINT ignored, as a background job of a script inherits
    it (a Ctrl-C must still stop it), and the Ctrl-C is sent while the trainer is
    stopped after its first epoch: it is pending when the trainer continues, so it
    lands in the next epoch however loaded the machine is."""
    state = tmp_path / "c_outputs" / "resume" / "state.json"
    history_csv = tmp_path / "c_outputs" / "history.csv"
    proc = _start_training(synthetic, tmp_path, "c", 4, sigint_ignored=True)
    _wait_for_epoch(proc, state, 1)
    proc.send_signal(signal.SIGSTOP)   # hold it mid-run while the others start (seconds)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    paused_at = json.loads(state.read_text())["epochs_done"]
    # While it runs, a second trainer on that name is refused (a new run on an existing
    # folder is refused anyway: test_files covers the claim itself).
    with working_dir(tmp_path), pytest.raises(FileExistsError,
                                              match="in use by another running trainer1"):
        tr.trainer1(output_name="c", resume=True, verbose=0)
    proc.send_signal(signal.SIGINT)    # pending until it continues
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "trainer1: interrupted; every completed epoch is saved: continue with " \
           "--output_name c --resume" in err
    assert "Traceback" not in err
    done = json.loads(state.read_text())["epochs_done"]
    assert 1 <= done <= 2 and len(pd.read_csv(history_csv)) == done
    assert paused_at <= done <= paused_at + 1

    # A resume, killed hard while it trains the epoch after the next one it saves.
    again = start_script(TRAIN, "--output_name", "c", "--resume", "--verbose", "0", cwd=tmp_path)
    _wait_for_epoch(again, state, done + 1)
    assert again.poll() is None, again.communicate()[1][-2000:]
    os.kill(again.pid, signal.SIGKILL)
    assert "resuming" in again.communicate()[0]
    assert json.loads(state.read_text())["epochs_done"] == done + 1
    assert len(pd.read_csv(history_csv)) == done + 1

    with working_dir(tmp_path):
        tr.trainer1(output_name="c", resume=True, verbose=0)
    history = pd.read_csv(history_csv)
    assert list(history["epoch"]) == [0, 1, 2, 3]
    assert history[["loss", "val_loss"]].notna().all().all()
    assert json.loads(state.read_text())["epochs_done"] == 4
    assert "best_epoch:" in (tmp_path / "c_outputs" / "X_report.txt").read_text()


class _CtrlCInAFinalizer:
    """Ctrl-C arriving while the garbage collector runs a ``__del__`` (TensorFlow's
    AtomicFunction.__del__ in the run that lost one): Python prints "Exception
    ignored" and the KeyboardInterrupt is gone."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


class _PressDuring(keras.callbacks.Callback):
    def __init__(self, epoch, then=None):
        super().__init__()
        self.at, self.then, self.epochs = epoch, then, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.epochs == self.at and batch == 0:
            _CtrlCInAFinalizer()   # made and dropped at once: its __del__ runs here
            if self.then:
                raise self.then


def _tiny_fit(callbacks):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((8, 2), np.float32)
    return run_state.fit_reporting(model, [], x=x, y=x[:, :1], batch_size=2, epochs=5,
                                   verbose=0, callbacks=callbacks)


def test_a_ctrl_c_swallowed_in_a_finalizer_or_turned_into_another_error_still_stops_fit(
        monkeypatch):
    # Python's own handler, as the command line makes sure (cli.run_main); a test
    # run started in the background of a script inherits SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_checks(monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_checks(monkeypatch):
    lost = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: lost.append(u.exc_type))
    press = _PressDuring(epoch=2)
    with pytest.raises(KeyboardInterrupt):
        _tiny_fit([press])
    assert lost == [KeyboardInterrupt]         # Python itself dropped it ...
    assert press.epochs == 2                   # ... and the fit stopped in that epoch
    with pytest.raises(KeyboardInterrupt) as info:   # native code's SystemError for it
        _tiny_fit([_PressDuring(epoch=1, then=SystemError("bad argument to internal function"))])
    assert isinstance(info.value.__cause__, SystemError)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handler restored
    assert len(_tiny_fit([]).history["loss"]) == 5      # no Ctrl-C: the fit as before


def test_interrupted_best_checkpoint_is_set_aside(tmp_path):
    for epoch in (1, 2, 3):
        (tmp_path / f"run_{epoch:03d}.weights.h5").write_bytes(b"w")
    training.set_aside_interrupted_checkpoints(str(tmp_path), "run", epochs_done=2)
    assert sorted(os.listdir(tmp_path)) == ["run_001.weights.h5", "run_002.weights.h5",
                                            "run_003.weights.h5.interrupted"]


def test_resume_without_a_run_is_an_error(tmp_path):
    run = run_main(TRAIN, "--input_hdf5", "x.hdf5", "--output_name", "none", "--resume",
                     cwd=tmp_path)
    assert run.returncode == 2 and "nothing to resume" in run.stderr


# ----------------------------------------------------------------- trust: state, Ctrl-C, two runs, full disk
def test_a_state_json_naming_a_file_elsewhere_is_refused(tmp_path):
    state_dir = tmp_path / "resume"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(json.dumps({"epochs_done": 1,
                                                      "weights": "../../../etc/passwd"}))
    with pytest.raises(ValueError, match="names the snapshot '../../../etc/passwd'"):
        run_state.read_training_state(str(state_dir))
    (state_dir / "state.json").write_text(json.dumps({"epochs_done": 1,
                                                      "weights": "epoch_001.weights.h5"}))
    with pytest.raises(FileNotFoundError, match="epoch_001.weights.h5 is missing"):
        run_state.read_training_state(str(state_dir))


@pytest.mark.slow
def test_a_full_disk_at_history_csv_loses_no_earlier_epoch(synthetic, tmp_path, monkeypatch):
    flaky = full_disk_at_second_history_write()

    monkeypatch.setattr(run_state, "atomic_write_text", flaky)
    train = tmp_path / "train16.npy"   # 2 batches an epoch: what matters is the second write
    np.save(train, np.load(synthetic["train"])[:16])
    with working_dir(tmp_path), pytest.raises(OSError, match="history.csv"):
        tr.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=str(train),
                    input_validset=synthetic["valid"], output_name="full", batch_size=8,
                    epochs=2, foundation_weights="none", seed=1, verbose=0, **SMALL_HEAD)
    out = tmp_path / "full_outputs"
    saved = run_state.read_training_state(str(out / "resume"))
    assert saved["epochs_done"] == 1                          # epoch 1 is intact and resumable
    assert len(pd.read_csv(out / "history.csv")) == 1
    assert (out / "resume" / saved["weights"]).is_file()
    assert list((out / "models").glob("full_001.weights.h5"))
