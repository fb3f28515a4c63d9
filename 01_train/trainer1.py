"""Stage 01: train the U-Trans + ConvMixer location model (trainer1).

Example::

    python 01_train/trainer1.py --input_hdf5 DataCollected_California.hdf5 \\
        --input_trainset train_Events.npy --input_validset valid_Events.npy \\
        --output_name california --foundation_weights weights/UTrans_Foundation.h5

Writes ``<output_name>_outputs/``: ``models/<output_name>_{epoch:03d}.weights.h5``
(each time val_loss improves), ``models/model_config.json``, ``history.csv``,
``<output_name>_loss.png`` and ``X_report.txt``. An existing output folder is
never touched: the run stops and asks for another name.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli_common  # noqa: E402

if __name__ == "__main__":
    cli_common.prepare_environment()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import EqT_utils_Loc_California as U  # noqa: E402
import utrans_backbone as ub  # noqa: E402


def trainer1(input_hdf5=None,
             input_trainset="train_Events.npy",
             input_validset="valid_Events.npy",
             output_name="trainer_outputs",
             input_dimention=(6000, 3),
             shuffle=True,
             label_type="gaussian",
             normalization_mode="std",
             augmentation=True,
             add_event_r=None,
             shift_event_r=0.99,
             add_noise_r=0.5,
             drop_channel_r=0.1,
             add_gap_r=None,
             scale_amplitude_r=None,
             pre_emphasis=False,
             mode="generator",
             max_preload_gb=U.MAX_PRELOAD_GB,
             batch_size=40,
             epochs=50,
             monitor="val_loss",
             patience=10,
             multi_gpu=False,
             number_of_gpus=4,
             gpuid=None,
             gpu_limit=None,
             use_multiprocessing=False,
             workers=1,
             max_d=U.MAX_D,
             min_d=U.MIN_D,
             foundation_weights=None,
             learning_rate=1e-4,
             convmixer_filters=512,
             convmixer_depth=10,
             convmixer_kernel=13,
             convmixer_patch=10,
             seed=None,
             verbose=1,
             resume=False,
             bandpass=False,
             mixed_precision="off",
             jit_compile=None):
    """Train the location model and write ``<output_name>_outputs/``.

    Parameters
    ----------
    input_hdf5 : str
        DataCollected HDF5 file (one group per trace id, ``<id>/data``).
    input_trainset, input_validset : str
        ``.npy`` arrays of training / validation trace ids.
    output_name : str
        Results go to ``<output_name>_outputs/`` in the working directory.
    input_dimention : tuple
        Trace shape (6000, 3).
    shuffle : bool
        Shuffle the training ids every epoch.
    label_type : str
        Kept for upstream compatibility; the labels are the 3-value location target.
    normalization_mode : {'std', 'max'}
        Per-trace, per-channel normalisation.
    augmentation : bool
        Half-batch augmentation of the training set (never of validation).
    add_event_r, shift_event_r, add_noise_r, drop_channel_r, add_gap_r, scale_amplitude_r : float or None
        Augmentation rates (upstream California: None, 0.99, 0.5, 0.1, None, None).
    pre_emphasis : bool
        Pre-emphasis in the augmentation chain.
    mode : {'generator', 'pre_load_generator'}
        'generator': waveforms are read from the HDF5 file batch by batch
        (memory does not grow with the data set). 'pre_load_generator': the
        training and validation waveforms are read into memory once (float32,
        72 kB per trace), then augmented per batch as in 'generator'; for
        data sets that fit (and raw STEAD files with ``bandpass``, which
        then filter each trace once instead of every epoch).
    max_preload_gb : float
        With 'pre_load_generator', refuse (before reading) when the training
        and validation waveforms together would take more than this many GB,
        or more than 90% of the memory available.
    batch_size : int
        Traces per batch (40).
    epochs : int
        Maximum number of epochs (50).
    monitor : str
        Quantity for checkpointing, early stopping and plateau reduction.
    patience : int
        Early-stopping patience; the learning rate is reduced by sqrt(0.1)
        after ``patience - 2`` epochs without improvement.
    multi_gpu : bool
        Data-parallel training on ``number_of_gpus`` devices.
    number_of_gpus : int
        Devices used when ``multi_gpu``.
    gpuid : int or None
        The GPU to use (the command line sets CUDA_VISIBLE_DEVICES from it).
    gpu_limit : float or None
        Fraction of the GPU memory the process may use.
    use_multiprocessing : bool
        Generator workers as processes (True) or threads (False).
    workers : int
        Generator workers (batches prepared in parallel with training).
    max_d, min_d : float
        Depth normalisation range in km (California: 114.5, 1e-5).
    foundation_weights : str or None
        ``UTrans_Foundation.h5``; None: the ``UTRANS_WEIGHTS`` variable or
        ``weights/UTrans_Foundation.h5``; 'none': random initialisation.
    learning_rate : float
        Base of the step schedule (1e-4).
    convmixer_filters, convmixer_depth, convmixer_kernel, convmixer_patch : int
        ConvMixer head size (published: 512, 10, 13, 10).
    seed : int or None
        Seed for weight initialisation, shuffling and augmentation.
    verbose : int
        Keras fit verbosity (0 silent, 1 progress bar, 2 one line per epoch).
    bandpass : bool
        Band-pass (1-45 Hz) and taper every trace on reading, as the
        DataCollected builder did: for training straight from a STEAD
        ``merge.hdf5`` (costs 1-2 ms of CPU per trace read). Off for DataCollected files.
    mixed_precision : {'off', 'bfloat16', 'float16'}
        Compute precision of the layers ('off': float32). Variables and the
        output layer stay float32; 'float16' adds dynamic loss scaling.
        bfloat16 suits recent GPUs (A100, H100) and CPUs with AVX512-BF16.
    jit_compile : bool or None
        XLA-compile the train and predict steps; None: Keras' 'auto' (TensorFlow:
        on with a GPU, off on a CPU, where XLA measured slower here, and under
        ``multi_gpu``; JAX: always on).
    resume : bool
        Continue the interrupted run in ``<output_name>_outputs/`` from its
        last completed epoch (model, optimizer, learning-rate schedule, best
        value, early-stopping count, history), with the parameters saved in
        its ``run_config.json``.

    Returns
    -------
    dict
        ``output_dir``, ``history`` (dict of lists), ``best_epoch``,
        ``best_loss``, ``best_weights`` (path), ``time_s``.
    """
    scope = dict(locals())
    return _train({name: scope[name] for name in PARAMETERS})


PARAMETERS = trainer1.__code__.co_varnames[:trainer1.__code__.co_argcount]
DEFAULTS = dict(zip(PARAMETERS, trainer1.__defaults__))
RUN_CONFIG = "run_config.json"


def _resume_parameters(output_dir, params):
    """The parameters of the interrupted run (they win over the call's, except
    ``resume``, ``verbose`` and a given ``input_hdf5``)."""
    path = os.path.join(output_dir, RUN_CONFIG)
    if not os.path.isdir(output_dir):
        raise FileNotFoundError(f"--resume: output folder {output_dir} not found; nothing to resume")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: {path} not found; {output_dir} is not a trainer1 run "
                                "that can be resumed")
    saved = {**DEFAULTS, **json.loads(open(path).read())}  # runs saved before a parameter existed
    saved["input_dimention"] = tuple(saved["input_dimention"])
    # A moved data file may be given again; every other parameter is the run's own.
    hdf5 = params["input_hdf5"] or saved["input_hdf5"]
    return {**saved, "input_hdf5": hdf5, "resume": True, "verbose": params["verbose"]}


def _train(p):
    start = time.time()
    output_dir = os.path.abspath(f"{p['output_name']}_outputs")
    if p["resume"]:
        p = _resume_parameters(output_dir, p)
    elif os.path.exists(output_dir):
        raise FileExistsError(
            f"output folder {output_dir} already exists; it is left untouched: choose another "
            "--output_name, move the folder away, or pass --resume to continue that run")
    check_parameters(p["input_hdf5"], p["batch_size"], p["epochs"], p["patience"], p["max_d"],
                     p["min_d"], p["mode"], p["mixed_precision"], p["max_preload_gb"])
    U.check_output_parent(output_dir)
    train_ids = U.load_ids(p["input_trainset"])
    valid_ids = U.load_ids(p["input_validset"])
    metadata = {name: U.check_split(p["input_hdf5"], ids, name, max_d=p["max_d"],
                                    min_d=p["min_d"], require_labels=True,
                                    dim=p["input_dimention"])
                for name, ids in (("input_trainset", train_ids), ("input_validset", valid_ids))}
    state_dir = os.path.join(output_dir, "resume")
    state = U.read_training_state(state_dir) if p["resume"] else None
    weights = None if state else ub.resolve_foundation_weights(p["foundation_weights"])
    seed = p["seed"] if p["seed"] is not None else int(np.random.SeedSequence().entropy % 2**31)
    keras.utils.set_random_seed(seed)
    U.configure_gpus(p["gpu_limit"], p["gpuid"], p["multi_gpu"], p["number_of_gpus"])
    if p["mode"] == "pre_load_generator":
        # Both splits together, before either is read: each generator checks only its own.
        U.check_preload(len(set(train_ids)) + len(set(valid_ids)), p["input_dimention"],
                        p["max_preload_gb"], f"{p['input_hdf5']}, training and validation sets")

    common = dict(file_name=p["input_hdf5"], dim=p["input_dimention"],
                  batch_size=p["batch_size"], norm_mode=p["normalization_mode"],
                  label_type=p["label_type"], max_d=p["max_d"], min_d=p["min_d"],
                  workers=p["workers"], use_multiprocessing=p["use_multiprocessing"],
                  bandpass=p["bandpass"], preload=p["mode"] == "pre_load_generator",
                  max_preload_gb=p["max_preload_gb"])
    training_generator = U.DataGenerator(
        train_ids, shuffle=p["shuffle"], augmentation=p["augmentation"],
        add_event_r=p["add_event_r"], add_gap_r=p["add_gap_r"], shift_event_r=p["shift_event_r"],
        add_noise_r=p["add_noise_r"], drop_channe_r=p["drop_channel_r"],
        scale_amplitude_r=p["scale_amplitude_r"], pre_emphasis=p["pre_emphasis"], seed=seed,
        metadata=metadata["input_trainset"], **common)
    validation_generator = U.DataGenerator(valid_ids, shuffle=False, augmentation=False,
                                           seed=seed, metadata=metadata["input_validset"],
                                           **common)

    head = {k: p[k] for k in U.HEAD_KEYS}
    with U.distribution_scope(p["multi_gpu"], p["number_of_gpus"]), \
            U.precision_policy(p["mixed_precision"]):
        model = U.build_location_model(tuple(p["input_dimention"]), foundation_weights=weights,
                                       **head)
        model.compile(optimizer=keras.optimizers.Adam(p["learning_rate"]), loss="mse",
                      metrics=["mae"], jit_compile="auto" if p["jit_compile"] is None
                      else bool(p["jit_compile"]))
        if state:
            # Optimizer variables exist only once built; then the snapshot restores them.
            model.optimizer.build(model.trainable_variables)
            model.load_weights(os.path.join(state_dir, state["weights"]))

    models_dir = os.path.join(output_dir, "models")
    if not p["resume"]:
        os.makedirs(models_dir)
        os.makedirs(state_dir)
        U.atomic_write_text(os.path.join(output_dir, RUN_CONFIG),
                            json.dumps({**p, "seed": seed}, indent=1, default=list))
        U.write_model_config(os.path.join(models_dir, U.MODEL_CONFIG_NAME),
                             input_dimention=list(p["input_dimention"]), max_d=p["max_d"],
                             min_d=p["min_d"], normalization_mode=p["normalization_mode"],
                             bandpass=p["bandpass"], mixed_precision=p["mixed_precision"],
                             **head)
    name = os.path.basename(p["output_name"])
    verbose = min(p["verbose"], 1)
    checkpoint = U.BestCheckpoint(os.path.join(models_dir, f"{name}_{{epoch:03d}}.weights.h5"),
                                  monitor=p["monitor"], verbose=verbose)
    schedule = U.ScheduleWithPlateau(p["learning_rate"], monitor=p["monitor"],
                                     patience=p["patience"] - 2, verbose=verbose)
    stopping = U.ResumableEarlyStopping(monitor=p["monitor"], patience=p["patience"])
    nan_guard = U.NaNGuard(training_generator)
    stateful = {"checkpoint": checkpoint, "schedule": schedule, "early_stopping": stopping}
    initial_epoch, history = 0, {}
    if state:
        set_aside_interrupted_checkpoints(models_dir, name, state["epochs_done"])
        for key, callback in stateful.items():
            callback.set_state(state["callbacks"][key])
        initial_epoch, history = state["epochs_done"], state["history"]
        training_generator.set_epoch(initial_epoch)
        print(f"trainer1: resuming {output_dir} after epoch {initial_epoch}")
    timer = U.EpochTimer(len(training_generator) * p["batch_size"])
    callbacks = [timer, checkpoint, schedule, stopping, nan_guard, keras.callbacks.TerminateOnNaN(),
                 U.TrainingState(state_dir, os.path.join(output_dir, "history.csv"), stateful,
                                 history)]
    print(f"trainer1: {len(train_ids)} training / {len(valid_ids)} validation traces, "
          f"{model.count_params():,} parameters, {U.replica_count(model)} replica(s), foundation weights: "
          f"{'from the resumed run' if state else ub.weights_provenance(weights)}")
    if initial_epoch < p["epochs"] and not (state and state.get("stopped_early")):
        # shuffle=False: the generator shuffles itself each epoch; Keras must not
        # reorder its batches (the NaN guard maps batch numbers to trace ids).
        U.fit_reporting(model, [training_generator, validation_generator],
                        x=training_generator, validation_data=validation_generator,
                        epochs=p["epochs"], initial_epoch=initial_epoch, callbacks=callbacks,
                        shuffle=False, verbose=p["verbose"])
    if nan_guard.bad:
        bad = nan_guard.bad
        raise U.TraceError(
            f"training loss became NaN/Inf at epoch {bad['epoch']}, batch {bad['batch']}; "
            f"traces in that batch: {', '.join(bad['traces'][:10])}"
            f"{' ...' if len(bad['traces']) > 10 else ''}; training stopped, the last good "
            f"checkpoint is {checkpoint.best_path or 'none (no epoch completed)'}")

    hist = callbacks[-1].history
    monitored = hist.get(p["monitor"], [])
    best = int(np.nanargmin(monitored)) if monitored else None
    result = {
        "output_dir": output_dir, "history": hist,
        "best_epoch": None if best is None else best + 1,
        "best_loss": None if best is None else monitored[best],
        "best_weights": checkpoint.best_path,
        "time_s": time.time() - start,
    }
    U.plot_history(hist, os.path.join(output_dir, f"{name}_loss.png"))
    U.write_report(os.path.join(output_dir, "X_report.txt"), "trainer1", locals_report(
        {**p, "seed": seed}, len(train_ids), len(valid_ids), model,
        "restored from the interrupted run" if state else ub.weights_provenance(weights), result))
    print(f"trainer1: best {p['monitor']} {result['best_loss']} at epoch {result['best_epoch']}; "
          f"weights {result['best_weights']}; {result['time_s']:.0f} s")
    return result


def set_aside_interrupted_checkpoints(models_dir, name, epochs_done):
    """Rename best-checkpoints written after the last saved state (a kill between
    the checkpoint and the state): the rerun epoch decides again. Renamed to
    ``*.interrupted``, never deleted."""
    import re

    for file in os.listdir(models_dir):
        match = re.fullmatch(re.escape(name) + r"_(\d+)\.weights\.h5", file)
        if match and int(match.group(1)) > epochs_done:
            path = os.path.join(models_dir, file)
            os.replace(path, path + ".interrupted")
            print(f"trainer1: {file} was written by the interrupted epoch; renamed to "
                  f"{file}.interrupted")


def locals_report(scope, n_train, n_valid, model, weights_note, result):
    """The X_report.txt content: every parameter, data sizes, outcome."""
    lines = [(name, scope[name]) for name in PARAMETERS if name in scope]
    lines += [("foundation_weights_used", weights_note),
              ("keras_backend", keras.backend.backend()), ("keras_version", keras.__version__),
              ("n_train_traces", n_train), ("n_valid_traces", n_valid),
              ("n_parameters", model.count_params()),
              ("epochs_run", len(result["history"].get("loss", []))),
              ("best_epoch", result["best_epoch"]), ("best_" + scope["monitor"], result["best_loss"]),
              ("best_weights", result["best_weights"]),
              ("time_taken_s", round(result["time_s"], 1))]
    return lines


def check_parameters(input_hdf5, batch_size, epochs, patience, max_d, min_d, mode,
                     mixed_precision="off", max_preload_gb=U.MAX_PRELOAD_GB):
    """Reject impossible settings before any work starts."""
    if not input_hdf5:
        raise ValueError("input_hdf5 is required")
    if int(batch_size) < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if int(patience) < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if not max_d > min_d:
        raise ValueError(f"max_d ({max_d}) must be larger than min_d ({min_d})")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "pre_load_generator":
        U.check_max_preload_gb(max_preload_gb)
    U.check_mixed_precision(mixed_precision)


MODES = ("generator", "pre_load_generator")


def build_parser():
    import argparse
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli_common.Formatter)
    f, n = cli_common.float_or_none, argparse.BooleanOptionalAction
    p.add_argument("--input_hdf5", default=None,
                   help="DataCollected HDF5, or a STEAD merge.hdf5/chunkN.hdf5 read directly "
                        "(see --bandpass); required except with --resume")
    p.add_argument("--input_trainset", default="train_Events.npy", help=".npy of training trace ids")
    p.add_argument("--input_validset", default="valid_Events.npy", help=".npy of validation trace ids")
    p.add_argument("--output_name", default="trainer_outputs",
                   help="results go to <output_name>_outputs/ (must not exist)")
    p.add_argument("--input_dimention", type=int, nargs=2, default=[6000, 3],
                   help="trace shape: samples channels")
    p.add_argument("--shuffle", action=n, default=True, help="shuffle training ids every epoch")
    p.add_argument("--label_type", default="gaussian",
                   help="kept for upstream compatibility (location labels are regression targets)")
    p.add_argument("--normalization_mode", default="std", choices=["std", "max"],
                   help="per-trace, per-channel normalisation")
    p.add_argument("--augmentation", action=n, default=True, help="half-batch augmentation of training data")
    p.add_argument("--add_event_r", type=f, default=None, help="rate of adding a second event copy (none: off)")
    p.add_argument("--shift_event_r", type=f, default=0.99, help="rate of circular event shifts")
    p.add_argument("--add_noise_r", type=f, default=0.5, help="rate of added Gaussian noise (SNR >= 10 dB)")
    p.add_argument("--drop_channel_r", type=f, default=0.1, help="rate of zeroing channels (SNR >= 10 dB)")
    p.add_argument("--add_gap_r", type=f, default=None, help="rate of zeroed gaps (none: off)")
    p.add_argument("--scale_amplitude_r", type=f, default=None, help="rate of amplitude scaling (none: off)")
    p.add_argument("--pre_emphasis", action=n, default=False, help="pre-emphasis filter in augmentation")
    p.add_argument("--mode", default="generator", choices=MODES,
                   help="generator: read batches from the HDF5 file; pre_load_generator: read "
                        "all waveforms into memory once")
    p.add_argument("--max_preload_gb", type=float, default=U.MAX_PRELOAD_GB,
                   help="pre_load_generator refuses to load more than this (GB)")
    p.add_argument("--batch_size", type=int, default=40, help="traces per batch")
    p.add_argument("--epochs", type=int, default=50, help="maximum number of epochs")
    p.add_argument("--monitor", default="val_loss", help="quantity monitored for checkpoints and stopping")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience (epochs)")
    p.add_argument("--multi_gpu", action=n, default=False, help="data-parallel training on several GPUs")
    p.add_argument("--number_of_gpus", type=int, default=4, help="GPUs used with --multi_gpu")
    p.add_argument("--gpuid", type=int, default=None, help="use only this GPU")
    p.add_argument("--gpu_limit", type=float, default=None, help="fraction of GPU memory to use")
    p.add_argument("--use_multiprocessing", action=n, default=False,
                   help="generator workers as processes instead of threads")
    p.add_argument("--workers", type=int, default=1, help="parallel generator workers")
    p.add_argument("--max_d", type=float, default=U.MAX_D, help="depth normalisation maximum (km)")
    p.add_argument("--min_d", type=float, default=U.MIN_D, help="depth normalisation minimum (km)")
    p.add_argument("--foundation_weights", default=None,
                   help="UTrans_Foundation.h5 path, or 'none' for random init "
                        f"(default: $UTRANS_WEIGHTS, else {ub.DEFAULT_WEIGHTS})")
    p.add_argument("--learning_rate", type=float, default=1e-4, help="base of the learning-rate schedule")
    p.add_argument("--convmixer_filters", type=int, default=512, help="ConvMixer width")
    p.add_argument("--convmixer_depth", type=int, default=10, help="ConvMixer blocks")
    p.add_argument("--convmixer_kernel", type=int, default=13, help="ConvMixer depthwise kernel")
    p.add_argument("--convmixer_patch", type=int, default=10, help="ConvMixer patch size")
    p.add_argument("--seed", type=int, default=None, help="random seed (init, shuffle, augmentation)")
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="Keras fit verbosity")
    p.add_argument("--bandpass", action=n, default=False,
                   help="band-pass 1-45 Hz and taper on reading (for raw STEAD files)")
    p.add_argument("--mixed_precision", default="off", choices=list(U.PRECISION_POLICIES),
                   help="compute precision (variables and output layer stay float32)")
    p.add_argument("--jit_compile", action=n, default=None,
                   help="XLA-compile the steps (default: Keras auto: on a single TensorFlow "
                        "GPU, always on JAX)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run <output_name>_outputs from its last epoch")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    args["input_dimention"] = tuple(args["input_dimention"])
    return cli_common.run_main(trainer1, args, "trainer1")


if __name__ == "__main__":
    status = main()
    if status:
        # A failed fit may leave backend input-pipeline threads behind; do not
        # let them hold the process at exit (all outputs are already written).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
