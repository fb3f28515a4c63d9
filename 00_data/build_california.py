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
"""

import sys

import builder_cli


def build_parser():
    """Argument parser (separate so it can be inspected and tested)."""
    p = builder_cli.parser(__doc__, "build_california.py")
    p.add_argument("--stead_hdf5", nargs="+", required=True, metavar="HDF5",
                   help="STEAD waveform files (released data/<name> or older "
                        "earthquake/local/<name> layout), paired in order with --stead_csv")
    p.add_argument("--stead_csv", nargs="+", required=True, metavar="CSV",
                   help="STEAD metadata CSV files, one per --stead_hdf5 file, same order")
    builder_cli.add_outputs_and_region(p)
    p.add_argument("--min_snr_db", type=float, default=None,
                   help="keep traces whose mean SNR over the 3 components is at least this (dB)")
    p.add_argument("--max_distance_km", type=float, default=None,
                   help="keep traces with source_distance_km at most this")
    p.add_argument("--min_magnitude", type=float, default=None,
                   help="keep traces with source_magnitude at least this")
    p.add_argument("--csv_chunk_rows", type=int, default=100_000,
                   help="CSV rows read at a time")
    return builder_cli.add_run_options(p)


# main(argv=None): parse, then stead_california.build_california(**options); returns the
# exit status (2: bad input, 130: interrupted).
main = builder_cli.make_main(build_parser, "stead_california", "build_california")


if __name__ == "__main__":
    sys.exit(main())
