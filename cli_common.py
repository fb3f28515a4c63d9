"""Small command-line helpers shared by the stage scripts (no heavy imports).

Kept free of keras/tensorflow imports so that a script can read its GPU
options and set the environment (CUDA_VISIBLE_DEVICES, quiet TF logs) before
the deep-learning backend is imported.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


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


def prepare_environment(argv=None):
    """Set backend environment variables from the command line, before keras loads.

    ``--gpuid N`` restricts the process to GPU N (CUDA_VISIBLE_DEVICES), and
    ``--gpu_limit F`` caps the fraction of GPU memory JAX pre-allocates
    (TensorFlow applies it after import, see EqT_utils configure_gpus).
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


def run_main(func, args, prog):
    """Call ``func(**args)``; user errors exit with status 2 and one clear line.

    ``args['debug']`` (popped) re-raises to show the traceback.
    """
    debug = args.pop("debug", False)
    try:
        func(**args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, OSError) as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    return 0
