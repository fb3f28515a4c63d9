"""trainer1's run, step by step: open the run, check the data, build, fit, write.

``01_train/trainer1.py`` holds the upstream signature; its documentation, its
command line and :class:`TrainConfig` come from one table of options
(:mod:`utrans_loc.options`). trainer1 hands one TrainConfig to :func:`run`. Each step
below is one function, so the main path reads in one screen and every detail
is one call away. Device and distribution specifics stay in
:mod:`utrans_loc.devices`, file safety and resume in :mod:`utrans_loc.files`
and :mod:`utrans_loc.run_state`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import time

import keras
import numpy as np

import EqT_utils_Loc_California as U
import utrans_backbone as ub
from utrans_loc import batchnorm, cli, devices, files, options, run_state, splits
from utrans_loc.checkpoints import (HEAD_KEYS, MODEL_CONFIG_NAME, check_variance_head,
                                    write_model_config)
from utrans_loc.figures import plot_history
from utrans_loc.options import MODES
from utrans_loc.traces import TraceError, check_max_preload_gb, check_preload
from utrans_loc.waveforms import WINDOW

RUN_CONFIG = "run_config.json"


class _TrainConfigMethods:
    """What TrainConfig derives from its fields."""

    @property
    def head(self):
        return {k: getattr(self, k) for k in HEAD_KEYS}

    @property
    def name(self):
        """The checkpoint and figure prefix (the last part of output_name)."""
        return os.path.basename(self.output_name)


# One field per row of options.TRAIN_OPTIONS, with its default. An ignored
# option (label_type) is accepted, as callers pass every trainer1 parameter,
# and not kept: it reaches neither the generators nor run_config.json.
TrainConfig = cli.config_class(
    "TrainConfig", options.config_fields(options.TRAIN_OPTIONS), _TrainConfigMethods, __name__,
    "Every trainer1 parameter (documented in ``trainer1``, declared in "
    ":data:`utrans_loc.options.TRAIN_OPTIONS`), in its order.")


@dataclasses.dataclass
class Run:
    """Where one training run writes, and what it resumes from."""

    output_dir: str
    state: dict | None   # the interrupted run's saved state, None for a fresh start

    @property
    def models_dir(self):
        return os.path.join(self.output_dir, "models")

    @property
    def state_dir(self):
        return os.path.join(self.output_dir, "resume")


NEW_NAME_HINT = ("choose another --output_name, move the folder away, or pass --resume to "
                 "continue that run")


def run(cfg):
    """Train as ``cfg`` says; returns trainer1's result dict."""
    start = time.time()
    output_dir = files.output_dir_for(cfg.output_name)
    if cfg.resume:
        cfg = resume_config(output_dir, cfg)
    check_parameters(cfg)
    cfg = dataclasses.replace(cfg, monitor=monitored(cfg))
    # Held for the whole run: a second trainer1 on the same name is refused.
    with files.claimed_output_dir(output_dir, not cfg.resume, NEW_NAME_HINT, "trainer1"):
        run_ = Run(output_dir, None)
        run_.state = run_state.read_training_state(run_.state_dir) if cfg.resume else None
        return train(cfg, run_, start)


def train(cfg, run_, start):
    """The run inside its claimed output folder: data, model, fit, outputs."""
    data = check_data(cfg)
    weights = None if run_.state else ub.resolve_foundation_weights(cfg.foundation_weights)
    cfg = dataclasses.replace(cfg, seed=cfg.seed if cfg.seed is not None
                              else int(np.random.SeedSequence().entropy % 2**31))
    keras.utils.set_random_seed(cfg.seed)
    devices.configure_gpus(cfg.gpu_limit, cfg.gpuid, cfg.multi_gpu, cfg.number_of_gpus)
    train_gen, valid_gen, clean_gen = make_generators(cfg, data)
    model = build_model(cfg, weights, run_)
    if cfg.variance_head_units and not run_.state:
        U.set_log_variance_prior(model, U.labels_from(data["input_trainset_meta"], cfg.max_d,
                                                      cfg.min_d))
    if not cfg.resume:
        write_run_files(cfg, run_, data)
    callbacks = make_callbacks(cfg, run_, train_gen, clean_gen)
    initial_epoch = restore(cfg, run_, callbacks, train_gen)
    print(f"trainer1: {len(data['input_trainset'])} training / {len(data['input_validset'])} "
          f"validation traces, {model.count_params():,} parameters, "
          f"{devices.replica_count(model)} replica(s) on {devices.device_description()}, "
          f"foundation weights: "
          f"{weights_note(run_, weights)}")
    if initial_epoch < cfg.epochs and not (run_.state and run_.state.get("stopped_early")):
        # Training reads one stream for the whole run (see EpochStream). Validation
        # stays a finite dataset: Keras makes a new validation iterator for every
        # pass anyway, and one over a finished dataset is let go without a wait.
        # shuffle=False: the generator shuffles itself each epoch; Keras must not
        # reorder its batches (the NaN guard maps batch numbers to trace ids).
        train = U.EpochStream(train_gen)
        callbacks["nan_guard"].batches = train
        run_state.fit_reporting(model, [train_gen, valid_gen, clean_gen], x=train,
                                steps_per_epoch=train.steps_per_epoch, validation_data=valid_gen,
                                epochs=cfg.epochs,
                                initial_epoch=initial_epoch, callbacks=callbacks["list"],
                                shuffle=False, verbose=cfg.verbose)
    raise_if_nan(callbacks)
    return write_outputs(cfg, run_, data, model, weights, callbacks, start)


def resume_config(output_dir, cfg):
    """The parameters of the interrupted run. They win over the call's, except
    ``resume``, ``verbose`` and a given ``input_hdf5`` (a moved data file); a
    parameter the run predates keeps the call's value."""
    path = os.path.join(output_dir, RUN_CONFIG)
    if not os.path.isdir(output_dir):
        raise FileNotFoundError(f"--resume: output folder {output_dir} not found; nothing to resume")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: {path} not found; {output_dir} is not a trainer1 run "
                                "that can be resumed")
    saved = json.loads(open(path).read())
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {**dataclasses.asdict(cfg), **{k: v for k, v in saved.items() if k in fields}}
    merged.update(input_dimention=tuple(merged["input_dimention"]), resume=True,
                  verbose=cfg.verbose, input_hdf5=cfg.input_hdf5 or saved["input_hdf5"])
    return TrainConfig(**merged)


def check_parameters(cfg):
    """Reject impossible settings before any work starts."""
    if not cfg.input_hdf5:
        raise ValueError("input_hdf5 is required")
    if int(cfg.batch_size) < 2:
        raise ValueError(f"batch_size must be >= 2, got {cfg.batch_size}")
    if int(cfg.epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if int(cfg.patience) < 1:
        raise ValueError(f"patience must be >= 1, got {cfg.patience}")
    if not cfg.max_d > cfg.min_d:
        raise ValueError(f"max_d ({cfg.max_d}) must be larger than min_d ({cfg.min_d})")
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.mode == "pre_load_generator":
        check_max_preload_gb(cfg.max_preload_gb)
    if cfg.detach_variance and not cfg.aleatoric:
        raise ValueError("detach_variance needs aleatoric (the variance head)")
    if int(cfg.variance_head_units) < 0:
        raise ValueError(f"variance_head_units must be >= 0, got {cfg.variance_head_units}")
    if cfg.variance_head_units and not cfg.aleatoric:
        raise ValueError("variance_head_units needs aleatoric (the variance head)")
    if not 0 <= float(cfg.nll_beta) <= 1:
        raise ValueError(f"nll_beta must be within 0-1, got {cfg.nll_beta}")
    if cfg.monitor not in options.MONITORS:
        raise ValueError(f"monitor must be one of {', '.join(options.MONITORS)}, got "
                         f"{cfg.monitor!r}")
    if int(cfg.bn_recalibration) < 0:
        raise ValueError(f"bn_recalibration must be >= 0 batches, got {cfg.bn_recalibration}")
    if cfg.lr_schedule not in U.LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(U.LR_SCHEDULES)}, got "
                         f"{cfg.lr_schedule!r}")
    if not 0 <= float(cfg.warmup_epochs) < int(cfg.epochs):
        raise ValueError(f"warmup_epochs must be >= 0 and below epochs ({cfg.epochs}), got "
                         f"{cfg.warmup_epochs}")
    if float(cfg.warmup_epochs) and cfg.lr_schedule != "cosine":
        raise ValueError(f"warmup_epochs ({cfg.warmup_epochs}) needs --lr_schedule cosine; "
                         "the step schedule has no warm-up")
    devices.check_mixed_precision(cfg.mixed_precision)


def monitored(cfg):
    """The quantity ``cfg.monitor`` names: 'auto' is val_loss (the published MSE) for
    the plain model and val_mae for the variance head (its beta-NLL can fall while
    the mean gets worse: issue 29)."""
    if cfg.monitor != "auto":
        return cfg.monitor
    return "val_mae" if cfg.aleatoric else "val_loss"


def check_data(cfg):
    """Both splits read and checked against the file and against each other:
    {split name: ids, split name + '_meta': metadata, 'overlap': report lines}."""
    data = {}
    for name in ("input_trainset", "input_validset"):
        ids = splits.load_ids(getattr(cfg, name))
        splits.check_no_duplicates(ids, name, getattr(cfg, name))
        data[name] = ids
        data[name + "_meta"] = splits.check_split(cfg.input_hdf5, ids, name, cfg.max_d, cfg.min_d,
                                                  require_labels=True, dim=cfg.input_dimention)
    data["overlap"] = splits.report_overlap(
        [splits.split_overlap("input_validset", data["input_validset_meta"], "input_trainset",
                              data["input_trainset_meta"])], cfg.allow_overlap, "trainer1")
    if cfg.mode == "pre_load_generator":
        # Both splits together, before either is read: each generator checks only its own.
        check_preload(len(set(data["input_trainset"])) + len(set(data["input_validset"])),
                      cfg.input_dimention, cfg.max_preload_gb,
                      f"{cfg.input_hdf5}, training and validation sets")
    return data


def make_generators(cfg, data):
    """The training generator (augmented, shuffled), the validation one (neither), and
    for ``bn_recalibration`` a shuffled, un-augmented view of the training set read
    from the file (never preloaded a second time); else None."""
    common = dict(file_name=cfg.input_hdf5, dim=cfg.input_dimention, batch_size=cfg.batch_size,
                  norm_mode=cfg.normalization_mode, max_d=cfg.max_d, min_d=cfg.min_d,
                  workers=cfg.workers,
                  use_multiprocessing=cfg.use_multiprocessing, bandpass=cfg.bandpass,
                  preload=cfg.mode == "pre_load_generator", max_preload_gb=cfg.max_preload_gb,
                  seed=cfg.seed)
    train = U.DataGenerator(data["input_trainset"], shuffle=cfg.shuffle,
                            augmentation=cfg.augmentation, augmentations=augmentations(cfg),
                            metadata=data["input_trainset_meta"], **common)
    valid = U.DataGenerator(data["input_validset"], shuffle=False, augmentation=False,
                            metadata=data["input_validset_meta"], **common)
    clean = None
    if cfg.bn_recalibration:
        clean = U.DataGenerator(data["input_trainset"], shuffle=True, augmentation=False,
                                metadata=data["input_trainset_meta"],
                                **{**common, "preload": False})
    return train, valid, clean


def augmentations(cfg):
    """The training chain: :func:`build_augmentations` of the options named like its
    parameters (so a new augmentation needs no line here)."""
    names = inspect.signature(U.build_augmentations).parameters
    return U.build_augmentations(**{name: getattr(cfg, name) for name in names})


def build_model(cfg, weights, run_):
    """The compiled location model (data-parallel when asked), restored when resuming."""
    with devices.distribution_scope(cfg.multi_gpu, cfg.number_of_gpus), \
            devices.precision_policy(cfg.mixed_precision):
        model = U.build_location_model(tuple(cfg.input_dimention), foundation_weights=weights,
                                       aleatoric=cfg.aleatoric,
                                       detach_variance=cfg.detach_variance,
                                       variance_head_units=cfg.variance_head_units, **cfg.head)
        if cfg.freeze_foundation:
            U.freeze_foundation(model)
        loss, metrics = U.location_loss_and_metrics(cfg.aleatoric, cfg.nll_beta)
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss,
                      metrics=metrics,
                      jit_compile="auto" if cfg.jit_compile is None else bool(cfg.jit_compile))
        # Built now, not in the first step: tf.function traces a step that creates
        # variables twice (about 20 s for this model on a CPU), and a resume needs
        # them to exist before the snapshot restores them.
        model.optimizer.build(model.trainable_variables)
        if not cfg.multi_gpu:   # under a strategy Keras builds them before the first step
            build_metrics(model)
        if run_.state:
            state_weights = os.path.join(run_.state_dir, run_.state["weights"])
            check_variance_head(model, state_weights, "--resume: the run's state")
            model.load_weights(state_weights)
    return model


def build_metrics(model):
    """Create the compiled metrics' variables now, on one row of zeros.

    Without a distribution strategy Keras' TensorFlow trainer creates them inside
    the first traced train step, and TensorFlow traces a step that creates
    variables a second time: measured 14.0 s -> 7.6 s to the first two epochs of
    the tests' small model on a CPU, identical losses. The state this leaves is
    reset at the start of every epoch.
    """
    row = np.zeros((1, 3), dtype="float32")
    model.compute_metrics(None, row, np.zeros((1, model.output.shape[-1]), dtype="float32"))
    model.reset_metrics()


def write_run_files(cfg, run_, data):
    """A new run's folders, run_config.json (for --resume) and models/model_config.json
    (with the training data's window layout, :func:`window_layout`)."""
    os.makedirs(run_.models_dir)
    os.makedirs(run_.state_dir)
    files.atomic_write_text(os.path.join(run_.output_dir, RUN_CONFIG),
                            json.dumps(dataclasses.asdict(cfg), indent=1, default=list))
    # The split files travel with the weights: a tester can check its test split
    # against the very splits this model was trained and validated on.
    write_model_config(os.path.join(run_.models_dir, MODEL_CONFIG_NAME),
                       input_dimention=list(cfg.input_dimention), max_d=cfg.max_d,
                       min_d=cfg.min_d, normalization_mode=cfg.normalization_mode,
                       bandpass=cfg.bandpass, mixed_precision=cfg.mixed_precision,
                       aleatoric=bool(cfg.aleatoric),
                       variance_head_units=int(cfg.variance_head_units), **cfg.head,
                       **window_layout(cfg, data["input_trainset_meta"]),
                       trained_on={"input_hdf5": os.path.abspath(cfg.input_hdf5),
                                   "input_trainset": os.path.abspath(cfg.input_trainset),
                                   "input_validset": os.path.abspath(cfg.input_validset)})


def window_layout(cfg, train_meta):
    """Where P sat in the training windows (:meth:`WindowSpec.training_layout` of the
    training split's ``p_arrival_sample``, read with the split's metadata): the
    locator's default P position is the median, and it warns of picks outside the
    range. The shift augmentation moves P anywhere in the window, so with it on the
    range is the whole window."""
    spec = dataclasses.replace(WINDOW, npts=int(cfg.input_dimention[0]))
    shifted = bool(cfg.augmentation) and float(cfg.shift_event_r or 0) > 0
    return spec.training_layout(train_meta["p_arrival_sample"], shifted)


def make_callbacks(cfg, run_, train_gen, clean_gen=None):
    """Checkpoint, schedule, early stopping, NaN guard, timer, BatchNormalization
    re-estimation (with ``clean_gen``) and the resume state."""
    verbose = min(cfg.verbose, 1)
    cb = {
        "checkpoint": run_state.BestCheckpoint(
            os.path.join(run_.models_dir, f"{cfg.name}_{{epoch:03d}}.weights.h5"),
            monitor=cfg.monitor, verbose=verbose),
        "schedule": U.learning_rate_schedule(
            cfg.lr_schedule, cfg.learning_rate, epochs=cfg.epochs,
            steps_per_epoch=len(train_gen), warmup_epochs=cfg.warmup_epochs,
            monitor=cfg.monitor, patience=cfg.patience - 2, verbose=verbose),
        "early_stopping": run_state.ResumableEarlyStopping(monitor=cfg.monitor, mode="min",
                                                           patience=cfg.patience),
    }
    stateful = dict(cb)
    cb["nan_guard"] = run_state.NaNGuard()   # given the training stream when fit starts
    cb["state"] = run_state.TrainingState(run_.state_dir,
                                          os.path.join(run_.output_dir, "history.csv"), stateful)
    timer = run_state.EpochTimer(len(train_gen) * cfg.batch_size)
    # Re-estimation first after the timer: validation, the checkpoint and the state
    # must all see the re-estimated statistics, and history.csv its drift columns.
    recalibration = ([batchnorm.RecalibrateBatchNorm(clean_gen, cfg.bn_recalibration)]
                     if clean_gen is not None else [])
    cb["list"] = [timer, *recalibration, cb["checkpoint"], cb["schedule"],
                  cb["early_stopping"], cb["nan_guard"], keras.callbacks.TerminateOnNaN(),
                  cb["state"]]
    return cb


def restore(cfg, run_, callbacks, train_gen):
    """Put callbacks, history and generator where the interrupted run stopped; the
    first epoch to run."""
    state = run_.state
    if not state:
        return 0
    set_aside_interrupted_checkpoints(run_.models_dir, cfg.name, state["epochs_done"])
    for key in ("checkpoint", "schedule", "early_stopping"):
        callbacks[key].set_state(state["callbacks"][key])
    callbacks["state"].history = {k: list(v) for k, v in state["history"].items()}
    train_gen.set_epoch(state["epochs_done"])
    print(f"trainer1: resuming {run_.output_dir} after epoch {state['epochs_done']}")
    return state["epochs_done"]


def set_aside_interrupted_checkpoints(models_dir, name, epochs_done):
    """Rename best-checkpoints written after the last saved state (a kill between
    the checkpoint and the state): the rerun epoch decides again. Renamed to
    ``*.interrupted``, never deleted."""
    for file in os.listdir(models_dir):
        match = re.fullmatch(re.escape(name) + r"_(\d+)\.weights\.h5", file)
        if match and int(match.group(1)) > epochs_done:
            path = os.path.join(models_dir, file)
            os.replace(path, path + ".interrupted")
            print(f"trainer1: {file} was written by the interrupted epoch; renamed to "
                  f"{file}.interrupted")


def raise_if_nan(callbacks):
    """A NaN/Inf training loss stops the run with the traces of that batch named."""
    bad = callbacks["nan_guard"].bad
    if bad:
        raise TraceError(
            f"training loss became NaN/Inf at epoch {bad['epoch']}, batch {bad['batch']}; "
            f"traces in that batch: {', '.join(bad['traces'][:10])}"
            f"{' ...' if len(bad['traces']) > 10 else ''}; training stopped, the last good "
            f"checkpoint is {callbacks['checkpoint'].best_path or 'none (no epoch completed)'}")


def weights_note(run_, weights):
    return "restored from the interrupted run" if run_.state else ub.weights_provenance(weights)


def write_outputs(cfg, run_, data, model, weights, callbacks, start):
    """The loss figure and X_report.txt; trainer1's result dict."""
    hist = callbacks["state"].history
    monitored = hist.get(cfg.monitor, [])
    best = int(np.nanargmin(monitored)) if monitored else None
    result = {"output_dir": run_.output_dir, "history": hist, "monitor": cfg.monitor,
              "best_epoch": None if best is None else best + 1,
              "best_loss": None if best is None else monitored[best],
              "best_weights": callbacks["checkpoint"].best_path,
              "time_s": time.time() - start}
    plot_history(hist, os.path.join(run_.output_dir, f"{cfg.name}_loss.png"))
    files.write_report(os.path.join(run_.output_dir, "X_report.txt"), "trainer1",
                       report_items(cfg, data, model, weights_note(run_, weights), result))
    print(f"trainer1: best {cfg.monitor} {result['best_loss']} at epoch {result['best_epoch']}; "
          f"weights {result['best_weights']}; {result['time_s']:.0f} s")
    return result


def report_items(cfg, data, model, weights_note_, result):
    """X_report.txt: every parameter, data sizes, outcome."""
    return [*dataclasses.asdict(cfg).items(),
            ("augmentation_chain", augmentations(cfg) if cfg.augmentation else "off"),
            ("foundation_weights_used", weights_note_),
            ("keras_backend", keras.backend.backend()), ("keras_version", keras.__version__),
            ("n_train_traces", len(data["input_trainset"])),
            ("n_valid_traces", len(data["input_validset"])),
            ("split_overlap", "; ".join(data["overlap"]) or "none found"),
            ("n_parameters", model.count_params()),
            ("epochs_run", len(result["history"].get("loss", []))),
            ("best_epoch", result["best_epoch"]), ("best_" + cfg.monitor, result["best_loss"]),
            ("best_weights", result["best_weights"]),
            ("time_taken_s", round(result["time_s"], 1))]
