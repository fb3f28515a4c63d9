"""Build a DataCollected training set (+ leak-free splits) from any SeisBench-format dataset.

Reads a SeisBench dataset folder (metadata.csv + waveforms.hdf5, or the chunked
metadata<chunk>.csv + waveforms<chunk>.hdf5 pairs: STEAD, INSTANCE, ETHZ,
LenDB, ... or your own, written with SeisBench's WaveformDataWriter) with h5py
and pandas (the seisbench package is not needed), keeps the earthquake traces
whose station and event lie in the region, reorders the components to E N Z,
resamples to 100 Hz where the dataset differs, cuts or pads to 6000 samples
with the P arrival inside, band-passes and tapers as the DataCollected files
are, and writes OUTPUT_HDF5 plus, in OUTPUT_DIR, train_Events.npy,
valid_Events.npy, test_Events.npy (split by event, or the dataset's own split
with --use_dataset_split), california_traces.csv, skipped_traces.csv and
build_report.txt.

Example (SeisBench's STEAD, cached in ~/.seisbench/datasets/stead):

    python 00_data/build_from_seisbench.py --dataset_dir ~/.seisbench/datasets/stead \\
        --output_hdf5 DataCollected_California.hdf5 --output_dir .

An interrupted run (Ctrl-C, kill) resumes when started again with the same
arguments (its work folder is OUTPUT_HDF5.partial/). Existing outputs are never
overwritten.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from utrans_loc import cli  # noqa: E402


def build_parser():
    """Argument parser (separate so it can be inspected and tested)."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.Formatter)
    p.add_argument("--dataset_dir", required=True,
                   help="SeisBench dataset folder (metadata*.csv + waveforms*.hdf5)")
    cli.add_builder_outputs(p)
    p.add_argument("--region_mode", choices=["state", "bbox", "none"], default="state",
                   help="station and event inside the California state polygon, inside "
                        "--bbox (default box: lat 32..42, lon -125..-114), or anywhere")
    p.add_argument("--bbox", type=float, nargs=4, default=None,
                   metavar=("LAT_MIN", "LAT_MAX", "LON_MIN", "LON_MAX"),
                   help="the box for --region_mode bbox")
    p.add_argument("--use_dataset_split", action="store_true",
                   help="use the dataset's own 'split' column (train, dev -> valid, test) "
                        "instead of splitting by event")
    cli.add_builder_run_options(p)
    return p


def main(argv=None):
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    from seisbench_data import build_from_seisbench

    return cli.run_builder(build_from_seisbench, dict(
        dataset_dir=args.dataset_dir, output_hdf5=args.output_hdf5, output_dir=args.output_dir,
        region_mode=args.region_mode, bbox=args.bbox, use_dataset_split=args.use_dataset_split,
        split=args.split, seed=args.seed, shard_size=args.shard_size,
        progress=not args.no_progress), "build_from_seisbench.py", args.output_hdf5, args.debug)


if __name__ == "__main__":
    sys.exit(main())
