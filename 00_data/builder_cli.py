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
    add_outputs(p)
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


def make_main(build_parser, module, function):
    """A builder's ``main(argv=None)``: parse, then call ``module.function`` with every
    option of the same name (exit status as :func:`run_builder`)."""
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
        return run_builder(build, kwargs, p.prog, args.output_hdf5, args.debug)

    return main


def add_outputs(p):
    """--output_hdf5 and --output_dir of a data builder (00_data/build_*.py)."""
    p.add_argument("--output_hdf5", required=True,
                   help="DataCollected HDF5 to write (must not exist)")
    p.add_argument("--output_dir", required=True,
                   help="folder for train/valid/test_Events.npy, california_traces.csv, "
                        "skipped_traces.csv, build_report.txt (created if missing)")


def add_run_options(p):
    """--split, --seed, --shard_size, --no_progress, --debug; returns the parser."""
    p.add_argument("--split", type=float, nargs=3, default=[0.7, 0.1, 0.2],
                   metavar=("TRAIN", "VALID", "TEST"),
                   help="fractions of events (source_id) in train/valid/test; sum 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the event shuffle for the splits")
    p.add_argument("--shard_size", type=int, default=1000,
                   help="traces per intermediate shard (the unit of resume)")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def run_builder(build, kwargs, prog, output_hdf5, debug=False):
    """A data builder's command line: ``build(**kwargs, log=...)``, then its report.

    Status lines go to stderr prefixed with ``prog``; exit status as
    :func:`utrans_loc.cli.run_main` (2 for bad input, 130 for Ctrl-C, saying how to
    resume).
    """
    def job():
        out = build(**kwargs, log=lambda message: print(f"{prog}: {message}", file=sys.stderr))
        with open(out["paths"]["report"], encoding="utf8") as fh:
            print(fh.read(), end="")
        print("wrote " + ", ".join(map(str, out["paths"].values())))

    return cli.run_main(job, {"debug": debug}, prog,
                        interrupted=f"finished work is kept in {output_hdf5}.partial/: run the "
                                    "same command again to resume")
