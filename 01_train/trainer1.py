"""Stage 01: train the U-Trans + ConvMixer location model (trainer1).

Example::

    python 01_train/trainer1.py --input_hdf5 DataCollected_California.hdf5 \\
        --input_trainset train_Events.npy --input_validset valid_Events.npy \\
        --output_name california --foundation_weights weights/UTrans_Foundation.h5

Writes ``<output_name>_outputs/``: ``models/<output_name>_{epoch:03d}.weights.h5``
(each time the monitored quantity improves), ``models/model_config.json``, ``history.csv``,
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
from utrans_loc import options, training  # noqa: E402
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
             drop_channel_r=U.CALIFORNIA_AUGMENTATION["drop_channel_r"],
             add_gap_r=None,
             scale_amplitude_r=None,
             pre_emphasis=False,
             mode="generator",
             max_preload_gb=MAX_PRELOAD_GB,
             batch_size=40,
             epochs=50,
             monitor="auto",
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
             allow_overlap=False,
             aleatoric=False,
             bn_recalibration=0,
             lr_schedule="step",
             warmup_epochs=0.0,
             nll_beta=U.BETA_NLL,
             detach_variance=False,
             freeze_foundation=False,
             variance_head_units=0):
    """Train the location model and write ``<output_name>_outputs/``.

    Parameters
    ----------
    {parameters}

    Returns
    -------
    dict
        ``output_dir``, ``history`` (dict of lists), ``best_epoch``,
        ``best_loss``, ``best_weights`` (path), ``time_s``.
    """
    return training.run(training.TrainConfig(**locals()))


# {parameters} is filled from options.TRAIN_OPTIONS, where each option's text and
# command-line help are written once; the tests keep the defaults above equal to it.
options.document(trainer1, options.TRAIN_OPTIONS)


def build_parser():
    """The command line: one option per row of ``options.TRAIN_OPTIONS``, and --debug."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.Formatter)
    options.add_arguments(p, options.TRAIN_OPTIONS)
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
