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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utrans_loc import cli  # noqa: E402  (no backend import: it sets the environment first)

if __name__ == "__main__":
    cli.prepare_environment()

import EqT_utils_Loc_California as U  # noqa: E402
import utrans_backbone as ub  # noqa: E402
from utrans_loc import training  # noqa: E402
from utrans_loc.traces import MAX_PRELOAD_GB  # noqa: E402


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
             shift_event_r=U.CALIFORNIA_AUGMENTATION["shift_event_r"],
             add_noise_r=U.CALIFORNIA_AUGMENTATION["add_noise_r"],
             drop_channel_r=U.CALIFORNIA_AUGMENTATION["drop_channe_r"],
             add_gap_r=None,
             scale_amplitude_r=None,
             pre_emphasis=False,
             mode="generator",
             max_preload_gb=MAX_PRELOAD_GB,
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
             convmixer_filters=U.PUBLISHED_HEAD["convmixer_filters"],
             convmixer_depth=U.PUBLISHED_HEAD["convmixer_depth"],
             convmixer_kernel=U.PUBLISHED_HEAD["convmixer_kernel"],
             convmixer_patch=U.PUBLISHED_HEAD["convmixer_patch"],
             seed=None,
             verbose=1,
             resume=False,
             bandpass=False,
             mixed_precision="off",
             jit_compile=None,
             allow_overlap=False):
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
        ``UTrans_Foundation.h5`` (a file that is not the official release is
        used with a warning); None: the ``UTRANS_WEIGHTS`` variable, else
        ``weights/UTrans_Foundation.h5`` (must be the official file), else the
        official file fetched once into the cache (``$UTRANS_CACHE_DIR``,
        default ``~/.keras/utrans``) and verified by sha256; 'none': random
        initialisation.
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
    allow_overlap : bool
        Do not warn when the validation split shares trace ids or earthquakes
        (same ``source_id``, else the same epicentre, depth and origin time)
        with the training split; the overlap is still written to X_report.txt.
        A trace named twice inside one split is always an error.

    Returns
    -------
    dict
        ``output_dir``, ``history`` (dict of lists), ``best_epoch``,
        ``best_loss``, ``best_weights`` (path), ``time_s``.
    """
    return training.run(training.TrainConfig(**locals()))


def build_parser():
    """The command line; every default is trainer1's own."""
    import argparse

    d = cli.defaults_of(trainer1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.Formatter)
    f, n = cli.float_or_none, argparse.BooleanOptionalAction
    p.add_argument("--input_hdf5", default=d["input_hdf5"],
                   help="DataCollected HDF5, or a STEAD merge.hdf5/chunkN.hdf5 read directly "
                        "(see --bandpass); required except with --resume")
    p.add_argument("--input_trainset", default=d["input_trainset"], help=".npy of training trace ids")
    p.add_argument("--input_validset", default=d["input_validset"], help=".npy of validation trace ids")
    cli.add_output_name(p, d)
    p.add_argument("--input_dimention", type=int, nargs=2, default=list(d["input_dimention"]),
                   help="trace shape: samples channels")
    p.add_argument("--shuffle", action=n, default=d["shuffle"], help="shuffle training ids every epoch")
    p.add_argument("--label_type", default=d["label_type"],
                   help="kept for upstream compatibility (location labels are regression targets)")
    p.add_argument("--normalization_mode", default=d["normalization_mode"], choices=["std", "max"],
                   help="per-trace, per-channel normalisation")
    p.add_argument("--augmentation", action=n, default=d["augmentation"],
                   help="half-batch augmentation of training data")
    for name, what in (("add_event_r", "adding a second event copy"),
                       ("shift_event_r", "circular event shifts"),
                       ("add_noise_r", "added Gaussian noise (SNR >= 10 dB)"),
                       ("drop_channel_r", "zeroing channels (SNR >= 10 dB)"),
                       ("add_gap_r", "zeroed gaps"),
                       ("scale_amplitude_r", "amplitude scaling")):
        p.add_argument(f"--{name}", type=f, default=d[name], help=f"rate of {what} (none: off)")
    p.add_argument("--pre_emphasis", action=n, default=d["pre_emphasis"],
                   help="pre-emphasis filter in augmentation")
    p.add_argument("--mode", default=d["mode"], choices=training.MODES,
                   help="generator: read batches from the HDF5 file; pre_load_generator: read "
                        "all waveforms into memory once")
    p.add_argument("--max_preload_gb", type=float, default=d["max_preload_gb"],
                   help="pre_load_generator refuses to load more than this (GB)")
    p.add_argument("--batch_size", type=int, default=d["batch_size"], help="traces per batch")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="maximum number of epochs")
    p.add_argument("--monitor", default=d["monitor"],
                   help="quantity monitored for checkpoints and stopping")
    p.add_argument("--patience", type=int, default=d["patience"],
                   help="early-stopping patience (epochs)")
    cli.add_device_options(p, d, multi_gpu=True)
    p.add_argument("--use_multiprocessing", action=n, default=d["use_multiprocessing"],
                   help="generator workers as processes instead of threads")
    p.add_argument("--workers", type=int, default=d["workers"], help="parallel generator workers")
    p.add_argument("--max_d", type=float, default=d["max_d"], help="depth normalisation maximum (km)")
    p.add_argument("--min_d", type=float, default=d["min_d"], help="depth normalisation minimum (km)")
    p.add_argument("--foundation_weights", default=d["foundation_weights"],
                   help="UTrans_Foundation.h5 path, or 'none' for random init "
                        f"(default: ${ub.WEIGHTS_ENV}, else {ub.DEFAULT_WEIGHTS}, else the "
                        f"official file fetched into ${ub.CACHE_ENV} or ~/.keras/utrans, "
                        "sha256-verified)")
    p.add_argument("--learning_rate", type=float, default=d["learning_rate"],
                   help="base of the learning-rate schedule")
    cli.add_head_options(p, d)
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="random seed (init, shuffle, augmentation)")
    p.add_argument("--verbose", type=int, default=d["verbose"], choices=[0, 1, 2],
                   help="Keras fit verbosity")
    p.add_argument("--bandpass", action=n, default=d["bandpass"],
                   help="band-pass 1-45 Hz and taper on reading (for raw STEAD files)")
    cli.add_precision_option(p, d, "compute precision (variables and output layer stay float32)")
    p.add_argument("--jit_compile", action=n, default=d["jit_compile"],
                   help="XLA-compile the steps (default: Keras auto: on a single TensorFlow "
                        "GPU, always on JAX)")
    p.add_argument("--allow_overlap", action="store_true",
                   help="no warning when validation shares traces or earthquakes with training")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run <output_name>_outputs from its last epoch")
    cli.add_debug(p)
    return p


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    args["input_dimention"] = tuple(args["input_dimention"])
    return cli.run_main(trainer1, args, "trainer1", interrupted=(
        f"every completed epoch is saved: continue with --output_name {args['output_name']} "
        "--resume"))


if __name__ == "__main__":
    status = main()
    if status:
        # A failed fit may leave backend input-pipeline threads behind; do not
        # let them hold the process at exit (all outputs are already written).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
