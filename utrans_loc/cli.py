"""Command-line pieces shared by the stage scripts: option groups, the exit-2 path.

Every option takes its default from the stage function's own signature
(:func:`defaults_of`), so a default is said once. Must not import keras or a
backend: a script reads its GPU options and sets the environment
(CUDA_VISIBLE_DEVICES, quiet TF logs) with :func:`prepare_environment` before
the deep-learning backend is imported.
"""

import argparse
import contextlib
import inspect
import os
import signal
import sys
import threading

HEAD_HELP = {"filters": "ConvMixer width", "depth": "ConvMixer blocks",
             "kernel": "ConvMixer depthwise kernel", "patch": "ConvMixer patch size"}


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def float_or_none(text):
    """argparse type: a float, or 'none' for an augmentation that is off."""
    if str(text).lower() in ("none", "null", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def defaults_of(func):
    """{parameter: default} of a function (the stage functions document them)."""
    return {name: par.default for name, par in inspect.signature(func).parameters.items()
            if par.default is not inspect.Parameter.empty}


def add_output_name(parser, defaults):
    parser.add_argument("--output_name", default=defaults["output_name"],
                        help="results go to <output_name>_outputs/ (must not exist)")


def add_device_options(parser, defaults, multi_gpu=False):
    """--gpuid, --gpu_limit and, for training, --multi_gpu / --number_of_gpus."""
    if multi_gpu:
        parser.add_argument("--multi_gpu", action=argparse.BooleanOptionalAction,
                            default=defaults["multi_gpu"],
                            help="data-parallel training on several GPUs")
        parser.add_argument("--number_of_gpus", type=int, default=defaults["number_of_gpus"],
                            help="GPUs used with --multi_gpu")
    parser.add_argument("--gpuid", type=int, default=defaults["gpuid"], help="use only this GPU")
    parser.add_argument("--gpu_limit", type=float, default=defaults["gpu_limit"],
                        help="fraction of GPU memory to use")


def add_head_options(parser, defaults, fallback=None):
    """--convmixer_filters/depth/kernel/patch. ``fallback`` (the published head)
    is named in the help when the default is None (read from the checkpoint)."""
    for name, what in HEAD_HELP.items():
        key = f"convmixer_{name}"
        text = what if fallback is None else \
            f"{what}; default: model_config.json or the checkpoint, else {fallback[key]}"
        parser.add_argument(f"--{key}", type=int, default=defaults[key], help=text)


def add_precision_option(parser, defaults, text):
    """--mixed_precision (call after the backend is imported: the choices come from it)."""
    from utrans_loc.devices import PRECISION_POLICIES

    parser.add_argument("--mixed_precision", default=defaults["mixed_precision"],
                        choices=list(PRECISION_POLICIES), help=text)


def add_debug(parser):
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def add_input_model(parser):
    """--input_model of a stage that predicts (tester1, locator)."""
    parser.add_argument("--input_model", required=True,
                        help="location weights: trainer1 .weights.h5 or upstream Keras 2 .h5")


def add_prediction_options(parser, defaults, per, batch_of, calibration_help):
    """--estimate_uncertainty, --number_of_sampling, --calibration, --seed, --batch_size.

    The sampling and batching of a stage that predicts (tester1, locator):
    ``per`` names one input in the help ('trace', 'pick'), ``batch_of`` what a
    batch holds ('traces', 'windows'); ``calibration_help`` says where the
    calibration comes from.
    """
    parser.add_argument("--estimate_uncertainty", action="store_true",
                        help="Monte-Carlo dropout: sample the model and report the std")
    parser.add_argument("--number_of_sampling", type=int, default=defaults["number_of_sampling"],
                        help=f"samples per {per} with --estimate_uncertainty")
    parser.add_argument("--calibration", default=defaults["calibration"], help=calibration_help)
    parser.add_argument("--seed", type=int, default=defaults["seed"],
                        help="seed of the Monte-Carlo sampling")
    parser.add_argument("--batch_size", type=int, default=defaults["batch_size"],
                        help=f"{batch_of} per prediction batch")


def add_summary_options(parser, defaults):
    """--verbose (0 or 1: progress bar and summary) and --debug, a predicting stage's last
    options; returns the parser."""
    parser.add_argument("--verbose", type=int, default=defaults["verbose"], choices=[0, 1],
                        help="progress bar and summary")
    add_debug(parser)
    return parser


def prepare_environment(argv=None):
    """Set backend environment variables from the command line, before keras loads.

    ``--gpuid N`` restricts the process to GPU N (CUDA_VISIBLE_DEVICES), and
    ``--gpu_limit F`` caps the fraction of GPU memory JAX pre-allocates
    (TensorFlow applies it after import, see utrans_loc.devices.configure_gpus).
    ``--multi_gpu`` adds ``--xla_force_host_platform_device_count=<number_of_gpus>``
    to XLA_FLAGS: JAX reads it once, when it starts, to split the CPU into
    that many devices where there is no GPU (it does not touch GPUs).
    TensorFlow's info logs are silenced unless TF_CPP_MIN_LOG_LEVEL is set.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--gpuid", type=int, default=None)
    pre.add_argument("--gpu_limit", type=float, default=None)
    pre.add_argument("--multi_gpu", action=argparse.BooleanOptionalAction, default=False)
    pre.add_argument("--number_of_gpus", type=int, default=4)  # trainer1's default
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if known.gpuid is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(known.gpuid)
    if known.gpu_limit is not None and 0 < known.gpu_limit <= 1:  # else configure_gpus says why
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(known.gpu_limit)
    flags = os.environ.get("XLA_FLAGS", "")
    if known.multi_gpu and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={max(known.number_of_gpus, 1)}".strip())


@contextlib.contextmanager
def ctrl_c_enabled():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt while the block runs, also in a process
    that inherited SIGINT ignored (started with ``&`` by a script or a CI runner
    without job control: Python then keeps it ignored and a Ctrl-C or ``kill -INT``
    would be lost). The inherited setting comes back afterwards."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_main(func, args, prog, interrupted=""):
    """Call ``func(**args)``; user errors exit with status 2 and one clear line.

    Ctrl-C (SIGINT) exits with status 130 and one line, followed by
    ``interrupted`` (what to do next, e.g. how to resume). ``args['debug']``
    (popped) re-raises to show the traceback.
    """
    debug = args.pop("debug", False)
    try:
        with ctrl_c_enabled():
            func(**args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted{'; ' + interrupted if interrupted else ''}", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, OSError) as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    return 0


def config_class(name, fields, methods, module, doc):
    """A frozen dataclass of a stage's options: ``fields`` from its option table
    (``make_dataclass`` fields), ``methods`` the class of what it derives from them."""
    import dataclasses

    cls = dataclasses.make_dataclass(name, fields, bases=(methods,), frozen=True)
    cls.__module__ = module   # (make_dataclass's module= needs Python 3.12)
    cls.__doc__ = doc
    return cls
