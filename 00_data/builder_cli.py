"""The command line both data builders share (build_california.py, build_from_seisbench.py).

A builder script adds only its own options (inputs, filters) between the
shared groups: outputs and region (:func:`add_outputs_and_region`), splits
and run options (:func:`add_run_options`); :func:`make_main` hands every option
to the build function parameter of the same name. Region words are
``california``'s (one vocabulary for every builder, earlier spellings
accepted with a note).

Must not import keras.
"""

import argparse
import importlib
import inspect
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from california import OLD_REGION_MODES, REGION_MODES  # noqa: E402
from utrans_loc import cli  # noqa: E402

RESUME_NOTE = ("An interrupted run (Ctrl-C, kill) resumes when started again with the same\n"
               "arguments (its work folder is OUTPUT_HDF5.partial/). Existing outputs are never\n"
               "overwritten.")


def parser(doc, prog):
    """A builder's parser: ``doc`` (the script's docstring) and the resume note as its text."""
    text = (doc or "").rstrip()   # python -OO strips docstrings
    return argparse.ArgumentParser(prog=prog, description=f"{text}\n\n{RESUME_NOTE}",
                                   formatter_class=cli.Formatter)


def add_outputs_and_region(p):
    """--output_hdf5, --output_dir, --region_mode, --bbox (and the earlier --region)."""
    cli.add_builder_outputs(p)
    earlier = ", ".join(f"'{old}' for '{new}'" for old, new in OLD_REGION_MODES.items())
    p.add_argument("--region_mode", choices=list(REGION_MODES) + list(OLD_REGION_MODES),
                   default=REGION_MODES[0], metavar="{" + ",".join(REGION_MODES) + "}",
                   help="station and event inside the California state polygon (14 vertices, "
                        "offshore margin on the coast), inside --bbox (default box: lat "
                        f"32..42, lon -125..-114), or anywhere (earlier spelling: {earlier})")
    p.add_argument("--bbox", type=float, nargs=4, default=None,
                   metavar=("LAT_MIN", "LAT_MAX", "LON_MIN", "LON_MAX"),
                   help="the box for --region_mode bbox")
    p.add_argument("--region", type=float, nargs=4, default=None,
                   metavar=("LAT_MIN", "LAT_MAX", "LON_MIN", "LON_MAX"),
                   help="earlier spelling of --region_mode bbox --bbox LAT_MIN LAT_MAX LON_MIN "
                        "LON_MAX (accepted, with a note)")


def add_run_options(p):
    """--split, --seed, --shard_size, --no_progress, --debug; returns the parser."""
    cli.add_builder_run_options(p)
    return p


def make_main(build_parser, module, function):
    """A builder's ``main(argv=None)``: parse, then call ``module.function`` with every
    option of the same name (exit status as :func:`utrans_loc.cli.run_builder`)."""
    def main(argv=None):
        """Run the command line; returns the process exit status."""
        p = build_parser()
        args = p.parse_args(argv)
        # Imported after parsing: --help and usage errors stay fast.
        build = getattr(importlib.import_module(module), function)
        wanted = inspect.signature(build).parameters
        kwargs = {name: value for name, value in vars(args).items() if name in wanted}
        unused = set(vars(args)) - set(kwargs) - {"no_progress", "debug"}
        if unused:   # an option that reaches no parameter would silently do nothing
            raise TypeError(f"{module}.{function} takes no parameter for option(s) "
                            f"{', '.join(sorted(unused))}")
        kwargs["progress"] = not args.no_progress
        return cli.run_builder(build, kwargs, p.prog, args.output_hdf5, args.debug)

    return main
