"""Stage 02: predict event locations for a test split (tester1).

Example::

    python 02_test/tester1.py --input_hdf5 DataCollected_California.hdf5 \\
        --input_testset test_Events.npy \\
        --input_model california_outputs/models/california_031.weights.h5 \\
        --output_name california_tester --max_d 114.5 --min_d 1e-5

``input_model`` is a trainer1 checkpoint (Keras 3 ``.weights.h5``; the head size
is read from the ``model_config.json`` beside it) or an upstream Keras 2 ``.h5``
location checkpoint (head size inferred from its shapes). Writes
``<output_name>_outputs/X_test_results.csv`` (one row per trace) and
``X_report.txt``; an existing output folder is never touched. With
``--estimate_uncertainty --calibration_set valid_Events.npy`` the Monte-Carlo
error bars are calibrated on the validation split first (``calibration.json``;
reuse it with ``--calibration``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utrans_loc import cli  # noqa: E402  (no backend import: it sets the environment first)

if __name__ == "__main__":
    cli.prepare_environment()

import EqT_utils_Loc_California as U  # noqa: E402
from utrans_loc import prediction  # noqa: E402
# Library functions that users of tester1 call directly, importable from here as before.
from utrans_loc.checkpoints import model_settings  # noqa: E402,F401
from utrans_loc.metrics import RESULTS_NAME  # noqa: E402,F401
from utrans_loc.prediction import predict_samples, results_table, summarize  # noqa: E402,F401


def tester1(input_hdf5=None,
            input_testset="test_Events.npy",
            input_model=None,
            output_name="tester_outputs",
            max_d=None,
            min_d=None,
            batch_size=40,
            estimate_uncertainty=False,
            number_of_sampling=5,
            normalization_mode=None,
            foundation_weights="none",
            input_dimention=None,
            convmixer_filters=None,
            convmixer_depth=None,
            convmixer_kernel=None,
            convmixer_patch=None,
            gpuid=None,
            gpu_limit=None,
            seed=None,
            bandpass=None,
            mixed_precision="off",
            verbose=1,
            calibration_set=None,
            calibration=None,
            input_trainset=None,
            input_validset=None,
            allow_overlap=False):
    """Predict the test split and write ``<output_name>_outputs/``.

    Parameters
    ----------
    input_hdf5 : str
        DataCollected HDF5 file.
    input_testset : str
        ``.npy`` of test trace ids. Traces without event attributes are
        predicted too; their truth columns stay empty.
    input_model : str
        Location weights: trainer1's ``.weights.h5`` or an upstream Keras 2 ``.h5``.
    output_name : str
        Results go to ``<output_name>_outputs/`` (must not exist).
    max_d, min_d : float or None
        Depth normalisation range (km) used in training; None: from the
        checkpoint's model_config.json, else 114.5 / 1e-5 (California).
    batch_size : int
        Traces per prediction batch.
    estimate_uncertainty : bool
        Monte-Carlo dropout: ``number_of_sampling`` stochastic forward passes
        (Dropout, StochasticDepth and attention dropout active, BatchNorm in
        inference mode); the CSV gets the sample mean as prediction and the
        standard deviations ``pred_event_lat_std``, ``pred_event_lon_std``
        (degrees), ``pred_depth_km_std``, ``pred_event_lat_std_km``,
        ``pred_event_lon_std_km`` and ``pred_epicentre_std_km`` (RMS radial
        scatter of the epicentre). Off: one deterministic pass, exactly
        ``model.predict``. A model trained with ``--aleatoric`` (its
        model_config.json says so) adds its predicted variance: the std
        columns are then the total, with ``*_std_aleatoric`` and (when
        sampling) ``*_std_epistemic`` beside them; see docs/uncertainty.md.
    number_of_sampling : int
        Forward passes per trace with ``estimate_uncertainty``.
    normalization_mode : {'std', 'max'} or None
        Normalisation used in training; None: from model_config.json, else 'std'.
    foundation_weights : str
        Starting weights of the backbone before the checkpoint is loaded. The
        location checkpoint holds the backbone weights, so the default 'none'
        is enough; a path is loaded (and checked) first.
    input_dimention : tuple or None
        Trace shape; None: from model_config.json, else (6000, 3).
    convmixer_filters, convmixer_depth, convmixer_kernel, convmixer_patch : int or None
        Head size; None: from model_config.json or the Keras 2 checkpoint's
        shapes, else the published 512, 10, 13, 10.
    gpuid, gpu_limit
        As in trainer1 (the command line applies gpuid before import).
    seed : int or None
        Seed of the Monte-Carlo sampling: the same seed gives the same samples.
    bandpass : bool or None
        Band-pass and taper on reading (raw STEAD files); None: as in training
        (model_config.json), else off.
    mixed_precision : {'off', 'bfloat16', 'float16'}
        Compute precision of the prediction (the output layer stays float32).
        Not taken from the training run: 'off' (float32) gives the reference
        predictions whatever precision trained the weights.
    verbose : int
        0: quiet; 1: progress bar and summary.
    calibration_set : str or None
        ``.npy`` of labeled trace ids in ``input_hdf5`` (e.g. the validation
        split ``valid_Events.npy``, never the test split) on which the
        predicted std (the Monte-Carlo spread; with a variance head the
        total) is calibrated: it is predicted first (same
        ``number_of_sampling`` and ``seed``), one std factor per quantity
        (lat, lon, depth) is fitted so that the 1- and 2-sigma intervals
        cover the truth as often as a Gaussian's
        (:func:`utrans_loc.uncertainty.fit_calibration`), written to
        ``<output_name>_outputs/calibration.json`` and applied to the test
        predictions: the ``*_std`` columns are then calibrated and the raw
        spread is kept in ``*_std_raw``. Needs ``estimate_uncertainty`` or a
        model trained with ``--aleatoric``.
    calibration : str or None
        A saved ``calibration.json`` to apply instead of fitting one; refused
        when fitted on another model file. Needs ``estimate_uncertainty`` or
        a variance head; not together with ``calibration_set``.

    input_trainset, input_validset : str or None
        The training and validation splits (ids in ``input_hdf5``) to check
        the test split against; None: the ones trainer1 recorded in the
        checkpoint's model_config.json, when their files exist. Shared trace
        ids and shared earthquakes (same ``source_id``; else epicentre, depth
        and origin time within 0.01 deg, 1 km, 2 s; without ids or origin
        times, the same epicentre, depth and magnitude, see
        ``utrans_loc.splits``) are a warning, and are written to
        X_report.txt (``split_overlap``); the reader then marks its tables.
    allow_overlap : bool
        No warning for such an overlap (it is still reported).

    Returns
    -------
    dict
        ``output_dir``, ``results`` (DataFrame), ``summary`` (n, MAEs),
        ``calibration`` (the calibration dict applied, or None), ``time_s``
        (whole call) and ``timings``: ``setup_s`` (checks, model build,
        weights), ``calibration_s`` (with ``calibration_set``: sampling it
        and fitting), ``compile_s`` (the prediction function, on a zero
        batch), ``predict_s`` (reading, normalising and predicting,
        overlapped), ``write_s`` (results table and CSV).
    """
    return prediction.run(prediction.TestConfig(**locals()))


def build_parser():
    """The command line; every default is tester1's own."""
    import argparse

    d = cli.defaults_of(tester1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.Formatter)
    p.add_argument("--input_hdf5", required=True,
                   help="DataCollected HDF5, or a STEAD merge.hdf5/chunkN.hdf5 read directly "
                        "(see --bandpass)")
    p.add_argument("--input_testset", default=d["input_testset"], help=".npy of test trace ids")
    cli.add_input_model(p)
    cli.add_output_name(p, d)
    p.add_argument("--max_d", type=float, default=d["max_d"],
                   help="depth normalisation maximum (km); default: from the checkpoint's "
                        f"model_config.json, else {U.MAX_D}")
    p.add_argument("--min_d", type=float, default=d["min_d"],
                   help=f"depth normalisation minimum (km); default: model_config.json, else {U.MIN_D}")
    cli.add_prediction_options(
        p, d, per="trace", batch_of="traces",
        calibration_help="apply a saved calibration.json (fitted on this --input_model) instead "
                         "of fitting one; needs --estimate_uncertainty")
    p.add_argument("--calibration_set", default=d["calibration_set"],
                   help=".npy of labeled trace ids in --input_hdf5 (e.g. valid_Events.npy): "
                        "sample it first, fit one std factor per quantity, write "
                        "calibration.json and apply it (raw spread kept in *_std_raw); "
                        "needs --estimate_uncertainty")
    p.add_argument("--input_trainset", default=d["input_trainset"],
                   help="training split to check the test split against (default: the one "
                        "recorded with the model, if found)")
    p.add_argument("--input_validset", default=d["input_validset"],
                   help="validation split to check the test split against (default: as recorded)")
    p.add_argument("--allow_overlap", action="store_true",
                   help="no warning when the test split shares traces or earthquakes with them")
    p.add_argument("--normalization_mode", default=d["normalization_mode"], choices=["std", "max"],
                   help="normalisation used in training; default: model_config.json, else std")
    p.add_argument("--foundation_weights", default=d["foundation_weights"],
                   help="backbone weights loaded before the checkpoint (not needed: the "
                        "checkpoint holds them)")
    p.add_argument("--input_dimention", type=int, nargs=2, default=d["input_dimention"],
                   help="trace shape; default: model_config.json, else 6000 3")
    cli.add_head_options(p, d, fallback=U.PUBLISHED_HEAD)
    cli.add_device_options(p, d)
    p.add_argument("--bandpass", action=argparse.BooleanOptionalAction, default=d["bandpass"],
                   help="band-pass 1-45 Hz and taper on reading; default: as in training")
    cli.add_precision_option(p, d, "compute precision of the prediction (output layer stays "
                                   "float32); not taken from training: float32 is the reference")
    return cli.add_summary_options(p, d)


def main(argv=None):
    return cli.run_main(tester1, vars(build_parser().parse_args(argv)), "tester1")


if __name__ == "__main__":
    sys.exit(main())
