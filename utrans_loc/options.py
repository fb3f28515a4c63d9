"""trainer1's options, each declared once: name, default, command-line help, docstring text.

:data:`TRAIN_OPTIONS` is the one table. From it come trainer1's command line
(:func:`add_arguments`), the Parameters section of trainer1's docstring
(:func:`document`) and the fields of :class:`utrans_loc.training.TrainConfig`
(:func:`config_fields`). trainer1 keeps its explicit upstream signature, so a
user reads the defaults where they call it; :func:`signature_mismatches` (run
by the tests) keeps that signature and the table the same.

Adding a training option: one row here and one parameter in trainer1's
signature. Adding an augmentation: also its transform and one line in
``EqT_utils_Loc_California.build_augmentations`` (the training generator gets
every option named like a parameter of that function).

Imports the model module for its published defaults: import this after
``cli.prepare_environment`` (as the stage scripts do).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import textwrap

import EqT_utils_Loc_California as U
import utrans_backbone as ub
from utrans_loc.cli import HEAD_HELP, float_or_none
from utrans_loc.devices import PRECISION_POLICIES
from utrans_loc.traces import MAX_PRELOAD_GB

MODES = ("generator", "pre_load_generator")
MONITORS = ("auto", "val_loss", "val_mae", "loss", "mae")


@dataclasses.dataclass(frozen=True)
class Option:
    """One parameter of a stage function.

    Parameters
    ----------
    name : str
        The parameter name (also ``--name`` on the command line).
    default : object
        Its default, as the function's signature has it.
    kind : str
        The type line of the numpy-style docstring ('int', 'float or None', ...).
    help : str
        Command-line help (argparse adds the default).
    doc : str or None
        Docstring text; None: the help text as a sentence.
    cli : dict
        Further ``add_argument`` keywords (type, choices, action, nargs).
        Without them a bool (or None with ``action``) is a ``--x/--no-x`` flag.
    ignored : bool
        Accepted for upstream compatibility and not passed on: not a config field.
    """

    name: str
    default: object
    kind: str
    help: str
    doc: str | None = None
    cli: dict = dataclasses.field(default_factory=dict)
    ignored: bool = False

    @property
    def text(self):
        """The docstring text."""
        return self.doc or self.help[0].upper() + self.help[1:] + "."


def _flag(name, default, help, doc=None, kind="bool"):
    return Option(name, default, kind, help, doc, {"action": argparse.BooleanOptionalAction})


def _rate(name, default, what, doc):
    return Option(name, default, "float or None", f"rate of {what} (none: off)", doc,
                  {"type": float_or_none})


def _head(key, doc):
    return Option(f"convmixer_{key}", U.PUBLISHED_HEAD[f"convmixer_{key}"], "int",
                  HEAD_HELP[key], doc, {"type": int})


# In trainer1's signature order (a test checks both).
TRAIN_OPTIONS = (
    Option("input_hdf5", None, "str",
           "DataCollected HDF5, or a STEAD merge.hdf5/chunkN.hdf5 read directly (see "
           "--bandpass); required except with --resume",
           "DataCollected HDF5 file (one group per trace id, ``<id>/data``), or a STEAD "
           "``merge.hdf5`` / ``chunkN.hdf5`` read directly (see ``bandpass``)."),
    Option("input_trainset", "train_Events.npy", "str", ".npy of training trace ids",
           "``.npy`` array of training trace ids."),
    Option("input_validset", "valid_Events.npy", "str", ".npy of validation trace ids",
           "``.npy`` array of validation trace ids."),
    Option("output_name", "trainer_outputs", "str",
           "results go to <output_name>_outputs/ (must not exist)",
           "Results go to ``<output_name>_outputs/`` in the working directory (an existing "
           "folder is never touched, except to continue it with ``resume``)."),
    Option("input_dimention", (6000, 3), "tuple", "trace shape: samples channels",
           "Trace shape (6000, 3).", {"type": int, "nargs": 2}),
    _flag("shuffle", True, "shuffle training ids every epoch"),
    Option("label_type", "gaussian", "str",
           "accepted for upstream compatibility and ignored (location labels are "
           "regression targets)",
           "Accepted for upstream compatibility and ignored; the labels are the 3-value "
           "location target.", ignored=True),
    Option("normalization_mode", "std", "{'std', 'max'}", "per-trace, per-channel normalisation",
           cli={"choices": ["std", "max"]}),
    _flag("augmentation", True, "half-batch augmentation of training data",
          "Half-batch augmentation of the training set (never of validation): each id is "
          "used twice per epoch, once only shifted, once through the chain of the rates "
          "below."),
    _rate("add_event_r", None, "adding a second event copy",
          "Rate of adding a scaled copy of the event after its coda (SNR >= 10 dB); None: off."),
    _rate("shift_event_r", U.CALIFORNIA_AUGMENTATION["shift_event_r"], "circular event shifts",
          "Rate of circular shifts of the trace (California: 0.99); the untouched copy of "
          "each id is shifted at half this rate. None: off."),
    _rate("add_noise_r", U.CALIFORNIA_AUGMENTATION["add_noise_r"],
          "added Gaussian noise (SNR >= 10 dB)",
          "Rate of added Gaussian noise (SNR >= 10 dB; California: 0.5). None: off."),
    _rate("drop_channel_r", U.CALIFORNIA_AUGMENTATION["drop_channel_r"],
          "zeroing channels (SNR >= 10 dB)",
          "Rate of zeroing one or two channels (SNR >= 10 dB; California: 0.1). None: off."),
    _rate("add_gap_r", None, "zeroed gaps", "Rate of zeroing a window of the trace; None: off."),
    _rate("scale_amplitude_r", None, "amplitude scaling",
          "Rate of multiplying, and again of dividing, by U(1, 3); None: off."),
    _flag("pre_emphasis", False, "pre-emphasis filter in augmentation",
          "Pre-emphasis (x[t] - 0.97 x[t-1]) in the augmentation chain."),
    Option("mode", "generator", "{'generator', 'pre_load_generator'}",
           "generator: read batches from the HDF5 file; pre_load_generator: read all "
           "waveforms into memory once",
           "'generator': waveforms are read from the HDF5 file batch by batch (memory does "
           "not grow with the data set). 'pre_load_generator': the training and validation "
           "waveforms are read into memory once (float32, 72 kB per trace), then augmented "
           "per batch as in 'generator'; for data sets that fit (and raw STEAD files with "
           "``bandpass``, which then filter each trace once instead of every epoch).",
           {"choices": MODES}),
    Option("max_preload_gb", MAX_PRELOAD_GB, "float",
           "pre_load_generator refuses to load more than this (GB)",
           "With 'pre_load_generator', refuse (before reading) when the training and "
           "validation waveforms together would take more than this many GB, or more than "
           "90% of the memory available.", {"type": float}),
    Option("batch_size", 40, "int", "traces per batch", "Traces per batch (40).",
           {"type": int}),
    Option("epochs", 50, "int", "maximum number of epochs", "Maximum number of epochs (50).",
           {"type": int}),
    Option("monitor", "auto", "{" + ", ".join(map(repr, MONITORS)) + "}",
           "quantity monitored for the best checkpoint, early stopping and plateau "
           "reduction; auto: val_loss (MSE, as published) for the plain model, val_mae "
           "(the mean's MAE) for the variance head",
           "Quantity for the best checkpoint, early stopping and plateau reduction. 'auto': "
           "``val_loss`` (the MSE, as published) for the plain model; ``val_mae`` (MAE of "
           "the mean) for the variance head, whose beta-NLL can fall while the mean gets "
           "worse. The name used is written to run_config.json and X_report.txt.",
           {"choices": list(MONITORS)}),
    Option("patience", 10, "int", "early-stopping patience (epochs)",
           "Early-stopping patience; the learning rate is reduced by sqrt(0.1) after "
           "``patience - 2`` epochs without improvement.", {"type": int}),
    _flag("multi_gpu", False, "data-parallel training on several GPUs",
          "Data-parallel training on ``number_of_gpus`` devices."),
    Option("number_of_gpus", 4, "int", "GPUs used with --multi_gpu",
           "Devices used when ``multi_gpu``.", {"type": int}),
    Option("gpuid", None, "int or None", "use only this GPU",
           "The GPU to use (the command line sets CUDA_VISIBLE_DEVICES from it).",
           {"type": int}),
    Option("gpu_limit", None, "float or None", "fraction of GPU memory to use",
           "Fraction of the GPU memory the process may use.", {"type": float}),
    _flag("use_multiprocessing", False, "generator workers as processes instead of threads",
          "Generator workers as processes (True) or threads (False)."),
    Option("workers", 1, "int", "parallel generator workers",
           "Generator workers (batches prepared in parallel with training).", {"type": int}),
    Option("max_d", U.MAX_D, "float", "depth normalisation maximum (km)",
           "Depth normalisation maximum in km (California: 114.5).", {"type": float}),
    Option("min_d", U.MIN_D, "float", "depth normalisation minimum (km)",
           "Depth normalisation minimum in km (California: 1e-5).", {"type": float}),
    Option("foundation_weights", None, "str or None",
           f"UTrans_Foundation.h5 path, or 'none' for random init (default: ${ub.WEIGHTS_ENV}, "
           f"else {ub.DEFAULT_WEIGHTS}, else the official file fetched into ${ub.CACHE_ENV} or "
           "~/.keras/utrans, sha256-verified)",
           "``UTrans_Foundation.h5`` (a file that is not the official release is used with a "
           f"warning); None: the ``{ub.WEIGHTS_ENV}`` variable, else ``{ub.DEFAULT_WEIGHTS}`` "
           "(must be the official file), else the official file fetched once into the cache "
           f"(``${ub.CACHE_ENV}``, default ``~/.keras/utrans``) and verified by sha256; "
           "'none': random initialisation."),
    Option("learning_rate", 1e-4, "float", "base of the learning-rate schedule",
           "Base of the step schedule (1e-4).", {"type": float}),
    _head("filters", "ConvMixer width (published: 512)."),
    _head("depth", "ConvMixer blocks (published: 10)."),
    _head("kernel", "ConvMixer depthwise kernel (published: 13)."),
    _head("patch", "ConvMixer patch size (published: 10)."),
    Option("seed", None, "int or None", "random seed (init, shuffle, augmentation)",
           "Seed for weight initialisation, shuffling and augmentation; None: a random one "
           "(written to run_config.json).", {"type": int}),
    Option("verbose", 1, "int", "Keras fit verbosity",
           "Keras fit verbosity (0 silent, 1 progress bar, 2 one line per epoch).",
           {"type": int, "choices": [0, 1, 2]}),
    Option("resume", False, "bool",
           "continue the interrupted run <output_name>_outputs from its last epoch",
           "Continue the interrupted run in ``<output_name>_outputs/`` from its last completed "
           "epoch (model, optimizer, learning-rate schedule, best value, early-stopping count, "
           "history), with the parameters saved in its ``run_config.json``.",
           {"action": "store_true"}),
    _flag("bandpass", False, "band-pass 1-45 Hz and taper on reading (for raw STEAD files)",
          "Band-pass (1-45 Hz) and taper every trace on reading, as the DataCollected builder "
          "did: for training straight from a STEAD ``merge.hdf5`` (costs 1-2 ms of CPU per "
          "trace read). Off for DataCollected files."),
    Option("mixed_precision", "off", "{" + ", ".join(map(repr, PRECISION_POLICIES)) + "}",
           "compute precision (variables and output layer stay float32)",
           "Compute precision of the layers ('off': float32). Variables and the output layer "
           "stay float32; 'float16' adds dynamic loss scaling. bfloat16 suits recent GPUs "
           "(A100, H100) and CPUs with AVX512-BF16.", {"choices": list(PRECISION_POLICIES)}),
    _flag("jit_compile", None, "XLA-compile the steps (default: Keras auto: on a single "
                               "TensorFlow GPU, always on JAX)",
          "XLA-compile the train and predict steps; None: Keras' 'auto' (TensorFlow: on with "
          "a GPU, off on a CPU, where XLA measured slower here, and under ``multi_gpu``; JAX: "
          "always on).", kind="bool or None"),
    Option("allow_overlap", False, "bool",
           "no warning when validation shares traces or earthquakes with training",
           "Do not warn when the validation split shares trace ids or earthquakes (same "
           "``source_id``; else epicentre, depth and origin time within 0.01 deg, 1 km, 2 s; "
           "without ids or origin times, the same epicentre, depth and magnitude) with the "
           "training split; the overlap is still written to X_report.txt. A trace named twice inside "
           "one split is always an error.", {"action": "store_true"}),
    _flag("aleatoric", False,
          "add a variance head (predicted log-variance per quantity, beta-NLL loss) for "
          "per-trace error bars",
          "Add the variance head: a second Dense(3) of log-variances beside ``output_layer`` "
          "(float32, clipped), trained with beta-NLL (beta 0.5) instead of MSE; recorded in "
          "model_config.json, so tester1 and the locator give ``*_std`` (aleatoric, plus the "
          "Monte-Carlo spread when sampling). Off: the published model."),
    Option("bn_recalibration", 0, "int",
           "before each validation, re-estimate the BatchNormalization statistics on this "
           "many clean (un-augmented) training batches, dropout off (0: off, as published)",
           "Before each epoch's validation, replace the BatchNormalization moving statistics "
           "by the average of the batch statistics over this many un-augmented training "
           "batches, with the current weights and dropout off (precise BN; no weight "
           "changes), so validation, the checkpoint and the tester see statistics that "
           "match the weights; history.csv records how far they had drifted "
           "(``bn_shift_*``, ``bn_log_var_*``). 0: off (the published recipe); see "
           "docs/training.md for the measured effect.", {"type": int}),
    Option("lr_schedule", "step", "{" + ", ".join(map(repr, U.LR_SCHEDULES)) + "}",
           "step: upstream's step schedule; cosine: warm-up then cosine decay over "
           "--epochs, set every batch (both times the plateau factor)",
           "'step': the upstream step schedule (x0.1 after epoch 20, ...). 'cosine': linear "
           "warm-up over ``warmup_epochs`` from 0.1 x ``learning_rate``, then cosine decay "
           "to 0.01 x ``learning_rate`` at the last epoch (``keras.optimizers.schedules."
           "CosineDecay``), set every batch. Both are multiplied by the plateau factor.",
           {"choices": list(U.LR_SCHEDULES)}),
    Option("warmup_epochs", 0.0, "float", "warm-up length of --lr_schedule cosine (epochs)",
           "Warm-up of the cosine schedule, in epochs (fractions allowed); 0: none.",
           {"type": float}),
    Option("nll_beta", U.BETA_NLL, "float",
           "beta of the variance head's beta-NLL loss (0: Gaussian NLL, 1: the mean learns as "
           "with MSE)",
           "beta of the variance head's beta-NLL loss: each trace's NLL weighted by its "
           "predicted variance to the power beta (no gradient). 0: the Gaussian NLL (the mean's "
           "gradient shrinks on traces given a large variance); 1: the mean's gradient is "
           "MSE's; 0.5: Seitzer et al.'s compromise. Only with ``aleatoric``.",
           {"type": float}),
    _flag("detach_variance", False,
          "the variance head learns from the features without training them (with "
          "--nll_beta 1 the mean then learns as the plain model)",
          "With ``aleatoric``: no gradient from the predicted log-variances into the shared "
          "features (the variance head's own weights still learn), so the mean learns as in "
          "the plain model (exactly so with ``nll_beta`` 1, whose gradient on the mean is "
          "MSE's). The model computes the same function; only training differs."),
    _flag("freeze_foundation", False,
          "keep the pretrained U-Trans foundation fixed; train the decoder stream and the "
          "ConvMixer head only",
          "Keep the U-Trans foundation's weights (input to latent) fixed and train only the "
          "decoder stream and the ConvMixer head (about 1.4x faster steps on a CPU). Off: "
          "the published fine-tuning of the whole model."),
    Option("variance_head_units", 0, "int",
           "hidden units of a nonlinear variance head (0: one Dense(3)); its log-variances "
           "start at the training labels' variance",
           "With ``aleatoric``: 0 makes the variance head one Dense(3) on the pooled features "
           "(the published head); N > 0 puts a hidden Dense(N, gelu) before it (detached with "
           "``detach_variance``), and the head starts at the training labels' log-variance "
           "(the constant predictor's error bar) instead of a std of 1 (1 degree, the whole "
           "depth range), which a short run does not come down from.",
           {"type": int}),
)


def add_arguments(parser, table):
    """One ``--name`` per option of ``table``, with its default and help."""
    for opt in table:
        kwargs = dict(opt.cli)
        if kwargs.get("nargs"):
            kwargs["default"] = list(opt.default)   # as argparse returns it
        else:
            kwargs["default"] = opt.default
        parser.add_argument(f"--{opt.name}", help=opt.help, **kwargs)
    return parser


def parameters_doc(table, indent=""):
    """The numpy-style Parameters entries of ``table`` (name : kind, then the text)."""
    lines = []
    for opt in table:
        lines.append(f"{indent}{opt.name} : {opt.kind}")
        lines += textwrap.wrap(opt.text, 88 - len(indent) - 4, initial_indent=indent + "    ",
                               subsequent_indent=indent + "    ", break_on_hyphens=False)
    return "\n".join(lines)


def document(func, table):
    """Fill the ``{parameters}`` line of ``func``'s docstring from ``table``; returns ``func``."""
    if func.__doc__ is None:   # python -OO strips docstrings
        return func
    match = re.search(r"^( *)\{parameters\}$", func.__doc__, flags=re.M)
    if match is None:
        raise ValueError(f"{func.__name__}'s docstring has no {{parameters}} line")
    func.__doc__ = (func.__doc__[:match.start()] + parameters_doc(table, match.group(1))
                    + func.__doc__[match.end():])
    return func


def config_fields(table):
    """``dataclasses.make_dataclass`` fields of ``table``: every option with its default;
    an ignored one is an init-only variable (accepted, never stored or passed on)."""
    return [(opt.name, dataclasses.InitVar[opt.kind] if opt.ignored else opt.kind,
             dataclasses.field(default=opt.default)) for opt in table]


def signature_mismatches(func, table):
    """What differs between ``func``'s parameters (names, order, defaults) and ``table``."""
    params = inspect.signature(func).parameters
    names = [opt.name for opt in table]
    if list(params) != names:
        return [f"parameters {list(params)} != table {names}"]
    return [f"{opt.name}: signature default {params[opt.name].default!r} != table "
            f"{opt.default!r}" for opt in table if params[opt.name].default != opt.default]
