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
"""

import sys

import builder_cli


def build_parser():
    """Argument parser (separate so it can be inspected and tested)."""
    p = builder_cli.parser(__doc__, "build_from_seisbench.py")
    p.add_argument("--dataset_dir", required=True,
                   help="SeisBench dataset folder (metadata*.csv + waveforms*.hdf5)")
    builder_cli.add_outputs_and_region(p)
    p.add_argument("--use_dataset_split", action="store_true",
                   help="use the dataset's own 'split' column (train, dev -> valid, test) "
                        "instead of splitting by event")
    return builder_cli.add_run_options(p)


# main(argv=None): the options to seisbench_data.build_from_seisbench; returns the exit
# status (2: bad input, 130: interrupted).
main = builder_cli.make_main(build_parser, "seisbench_data", "build_from_seisbench")


if __name__ == "__main__":
    sys.exit(main())
