"""Training that survives: best checkpoints, NaN guard, early stopping and resume.

Keras callbacks whose state is saved at the end of every epoch
(:class:`TrainingState`), so a killed run continues where it stopped, plus
:func:`fit_reporting`, which brings a bad trace met inside ``fit`` back to the
main thread as an error that names it. Every file goes through
:mod:`utrans_loc.files` (atomic); nothing here deletes a file it did not write.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
import types
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from utrans_loc.files import atomic_save_weights, atomic_write_text


class BestCheckpoint(keras.callbacks.Callback):
    """Save the weights (atomically) each time ``monitor`` improves.

    Like ``ModelCheckpoint(save_best_only=True, save_weights_only=True)``
    with ``{epoch:03d}`` in the name, but a kill during a save never leaves a
    truncated checkpoint, and its best value can be restored on resume.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=1):
        super().__init__()
        self.filepath, self.monitor, self.verbose = filepath, monitor, verbose
        self.best, self.best_path = math.inf, None

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or not np.isfinite(current) or current >= self.best:
            return
        path = self.filepath.format(epoch=epoch + 1)
        atomic_save_weights(self.model, path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5g} to "
                  f"{current:.5g}; saved {path}")
        self.best, self.best_path = float(current), path

    def get_state(self):
        return {"best": self.best, "best_path": self.best_path}

    def set_state(self, state):
        self.best, self.best_path = state["best"], state["best_path"]


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose wait/best survive a resume."""

    _restored = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._restored:
            self.wait, self.best = self._restored["wait"], self._restored["best"]

    def get_state(self):
        best = self.best if self.best is None else float(self.best)
        return {"wait": int(self.wait), "best": best}

    def set_state(self, state):
        self._restored = state


class NaNGuard(keras.callbacks.Callback):
    """Stop at the first non-finite training loss and remember which traces
    made that batch, so the run can name them.

    ``batches`` maps the n-th training batch of this fit (0, 1, ...) to its
    trace ids: ``EpochStream.batch_ids``. It may be set after construction."""

    def __init__(self, batches=None):
        super().__init__()
        self.batches = batches
        self.epoch = 0
        self.served = 0
        self.bad = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)) and self.bad is None:
            self.bad = {"epoch": self.epoch + 1, "batch": batch + 1,
                        "traces": list(dict.fromkeys(self.batches.batch_ids(self.served)))}
            self.model.stop_training = True
        self.served += 1


class EpochTimer(keras.callbacks.Callback):
    """Add ``train_time_s`` (the training pass: loading, augmentation and
    steps, without validation), ``epoch_time_s`` and ``train_traces_per_s`` to
    each epoch's logs, hence to history.csv. Put it first in the callback list."""

    def __init__(self, traces_per_epoch):
        super().__init__()
        self.traces_per_epoch = int(traces_per_epoch)
        self._start = self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train_end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self._start is None:
            return
        now = time.perf_counter()
        train = (self._train_end or now) - self._start
        logs["train_time_s"] = train
        logs["epoch_time_s"] = now - self._start
        logs["train_traces_per_s"] = self.traces_per_epoch / train if train > 0 else math.nan


class TrainingState(keras.callbacks.Callback):
    """Everything a resumed run needs, written at the end of every epoch.

    ``<state_dir>/epoch_XXX.weights.h5`` holds the model and optimizer
    variables; ``state.json`` the completed epoch count, the history, and the
    states of the stateful callbacks (plateau factor, early stopping, best
    checkpoint). Weights are written first and state.json is renamed into
    place last, so it always points to a complete weights file. The
    history CSV is rewritten whole (atomically) every epoch.
    """

    STATE = "state.json"

    def __init__(self, state_dir, history_csv, stateful, history=None):
        super().__init__()
        self.state_dir, self.history_csv = state_dir, history_csv
        self.stateful = stateful
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch, logs=None):
        if not all(np.isfinite(float(v)) for k, v in (logs or {}).items() if "loss" in k):
            return   # a NaN/Inf epoch must not replace the last good snapshot
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        weights = os.path.join(self.state_dir, f"epoch_{epoch + 1:03d}.weights.h5")
        atomic_save_weights(self.model, weights)
        state = {"epochs_done": epoch + 1, "weights": os.path.basename(weights),
                 "stopped_early": bool(self.model.stop_training), "history": self.history,
                 "callbacks": {name: cb.get_state() for name, cb in self.stateful.items()}}
        table = pd.DataFrame(self.history)
        table.insert(0, "epoch", np.arange(len(table)))
        atomic_write_text(self.history_csv, table.to_csv(index=False))
        # state.json last: it commits the epoch once everything it names exists.
        atomic_write_text(os.path.join(self.state_dir, self.STATE), json.dumps(state, indent=1))
        for old in os.listdir(self.state_dir):   # only this callback's own older snapshots
            if old.startswith("epoch_") and old != os.path.basename(weights):
                os.remove(os.path.join(self.state_dir, old))


@contextlib.contextmanager
def ctrl_c_recorded():
    """While the block runs, Ctrl-C (SIGINT) raises KeyboardInterrupt as always and is
    also remembered: ``.pressed`` of the yielded object.

    Installed only in the main thread and only over Python's own handler: a
    caller's handler, or SIGINT ignored on purpose, is left alone (the command
    line, :func:`utrans_loc.cli.run_main`, puts Python's handler back where the
    process inherited SIGINT ignored).
    """
    state = types.SimpleNamespace(pressed=False)
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield state
        return

    def handler(signum, frame):
        state.pressed = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class CtrlCCheck(keras.callbacks.Callback):
    """Stop the fit at the next batch or epoch end once Ctrl-C was pressed.

    Python raises KeyboardInterrupt wherever the main thread is when SIGINT
    arrives. Inside a finalizer (a ``__del__`` the garbage collector runs at
    any allocation, e.g. TensorFlow's ``AtomicFunction.__del__``) it is printed
    as "Exception ignored" and lost, and the run would go on to its last epoch.
    This callback, given the state of :func:`ctrl_c_recorded`, raises it again.
    Put it last: a finished epoch is saved before the run stops.
    """

    async_safe = True   # it only reads a flag: batch hooks may stay asynchronous

    def __init__(self, ctrl_c):
        super().__init__()
        self.ctrl_c = ctrl_c

    def _check(self, *args, **kwargs):
        if self.ctrl_c.pressed:
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_epoch_end = _check


def fit_reporting(model, generators, **fit_kwargs):
    """``model.fit``, then raise the TraceError a generator met (it names the trace).

    A generator that meets a bad trace records the error and serves a NaN
    batch (see DataGenerator.__getitem__), so the error surfaces here in the
    main thread rather than wrapped by the backend's input pipeline.

    Ctrl-C always ends the fit with KeyboardInterrupt (:func:`ctrl_c_recorded`,
    :class:`CtrlCCheck`): also when the interrupt was swallowed by a finalizer,
    or turned into another error by native code (TensorFlow's tracing raises
    ``SystemError: ... bad argument to internal function`` for it).
    """
    def failure():
        return next((g.failure for g in generators if getattr(g, "failure", None)), None)

    with ctrl_c_recorded() as ctrl_c:
        fit_kwargs["callbacks"] = [*(fit_kwargs.get("callbacks") or []), CtrlCCheck(ctrl_c)]
        try:
            history = model.fit(**fit_kwargs)
        except Exception as err:
            if ctrl_c.pressed:
                raise KeyboardInterrupt from err
            if failure() is not None:
                raise failure() from None
            raise
        if ctrl_c.pressed:   # pressed after the last check and swallowed
            raise KeyboardInterrupt
    if failure() is not None:
        raise failure()
    return history


def read_training_state(state_dir):
    """The saved state of an interrupted run, or None if it never finished an epoch.

    state.json is data: the snapshot it names must be one of this callback's
    own files in ``state_dir`` (``epoch_NNN.weights.h5``), never a path elsewhere.
    """
    import re

    path = os.path.join(state_dir, TrainingState.STATE)
    if not os.path.isfile(path):
        return None
    try:
        state = json.loads(Path(path).read_text())
        weights = state["weights"]
        int(state["epochs_done"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a trainer1 resume state ({err})") from None
    if not isinstance(weights, str) or not re.fullmatch(r"epoch_\d{3,}\.weights\.h5", weights):
        raise ValueError(f"{path}: names the snapshot {weights!r}, which is not one of this "
                         "run's epoch_NNN.weights.h5 files")
    if not os.path.isfile(os.path.join(state_dir, weights)):
        raise FileNotFoundError(f"{path}: its snapshot {os.path.join(state_dir, weights)} is "
                                "missing; the run cannot be resumed")
    return state
