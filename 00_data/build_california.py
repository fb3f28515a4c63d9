"""Build the California STEAD training set (DataCollected HDF5 + event-grouped splits).

Reads STEAD pairs (merge.hdf5 + merge.csv, or chunk2.hdf5 + chunk2.csv ...
chunk6), keeps the earthquake_local traces whose station and event lie in
California, band-passes (1-45 Hz, Butterworth, 2 corners, zero phase) and
tapers (1 %, at most 2 s) every trace as the upstream DataCollected builder
did, and writes OUTPUT_HDF5 plus, in OUTPUT_DIR, train_Events.npy,
valid_Events.npy, test_Events.npy (no earthquake in two splits),
california_traces.csv, skipped_traces.csv and build_report.txt.

Example:

    python 00_data/build_california.py --stead_hdf5 merge.hdf5 --stead_csv merge.csv \\
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
    p.add_argument("--stead_hdf5", nargs="+", required=True, metavar="HDF5",
                   help="STEAD waveform files (released data/<name> or older "
                        "earthquake/local/<name> layout), paired in order with --stead_csv")
    p.add_argument("--stead_csv", nargs="+", required=True, metavar="CSV",
                   help="STEAD metadata CSV files, one per --stead_hdf5 file, same order")
    cli.add_builder_outputs(p)
    p.add_argument("--region_mode", choices=["polygon", "bbox"], default="polygon",
                   help="California as a 14-vertex state polygon (offshore margin on the "
                        "coast) or the box lat 32..42, lon -125..-114")
    p.add_argument("--region", type=float, nargs=4, default=None,
                   metavar=("LAT_MIN", "LAT_MAX", "LON_MIN", "LON_MAX"),
                   help="a custom box instead of --region_mode (station and event must be inside)")
    p.add_argument("--min_snr_db", type=float, default=None,
                   help="keep traces whose mean SNR over the 3 components is at least this (dB)")
    p.add_argument("--max_distance_km", type=float, default=None,
                   help="keep traces with source_distance_km at most this")
    p.add_argument("--min_magnitude", type=float, default=None,
                   help="keep traces with source_magnitude at least this")
    p.add_argument("--csv_chunk_rows", type=int, default=100_000,
                   help="CSV rows read at a time")
    cli.add_builder_run_options(p)
    return p


def main(argv=None):
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    from stead_california import build_california

    return cli.run_builder(build_california, dict(
        stead_hdf5=args.stead_hdf5, stead_csv=args.stead_csv, output_hdf5=args.output_hdf5,
        output_dir=args.output_dir, region_mode=args.region_mode, region=args.region,
        min_snr_db=args.min_snr_db, max_distance_km=args.max_distance_km,
        min_magnitude=args.min_magnitude, split=args.split, seed=args.seed,
        shard_size=args.shard_size, csv_chunk_rows=args.csv_chunk_rows,
        progress=not args.no_progress), "build_california.py", args.output_hdf5, args.debug)


if __name__ == "__main__":
    sys.exit(main())
