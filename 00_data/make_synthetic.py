"""Command line: write a synthetic California-STEAD HDF5 file and its splits.

Example::

    python 00_data/make_synthetic.py --output_hdf5 demo_run/synthetic_california.hdf5 \
        --output_dir demo_run --n_traces 3000 --n_stations 6 --seed 0

Existing outputs are never replaced unless ``--overwrite`` is given.
"""

import argparse
import sys
from pathlib import Path


def build_parser():
    """Argument parser (separate so it can be inspected/tested)."""
    p = argparse.ArgumentParser(
        description="Generate a synthetic California-STEAD data set (DataCollected "
                    "HDF5 layout) plus train/valid/test_Events.npy split files "
                    "grouped by synthetic earthquake.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output_hdf5", required=True,
                   help="HDF5 file to write (one group per trace id).")
    p.add_argument("--output_dir", required=True,
                   help="folder for train_Events.npy, valid_Events.npy, "
                        "test_Events.npy (created if missing).")
    p.add_argument("--n_traces", type=int, default=3000,
                   help="number of earthquake traces (>= 10).")
    p.add_argument("--n_stations", type=int, default=6,
                   help="number of synthetic stations in California (>= 1).")
    p.add_argument("--n_noise", type=int, default=0,
                   help="number of extra noise-only traces (never in a split).")
    p.add_argument("--split", type=float, nargs=3, default=[0.7, 0.1, 0.2],
                   metavar=("TRAIN", "VALID", "TEST"),
                   help="fractions of events in train/valid/test (non-negative, sum 1).")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (catalogue, waveforms and split).")
    # The physics (synthetic_california.Physics); None: the demo set's value.
    p.add_argument("--vp", type=float, default=None, help="P velocity, km/s (none: 6.0).")
    p.add_argument("--vs", type=float, default=None, help="S velocity, km/s (none: 3.5).")
    p.add_argument("--depth_range", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="range of the source zones' depths, km (none: 2 25).")
    p.add_argument("--snr_range", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="range of the traces' SNR, dB (none: 5 40).")
    p.add_argument("--p_position_range", type=float, nargs=2, default=None,
                   metavar=("MIN", "MAX"),
                   help="range of the P arrival's place in the 60 s trace, s (none: 5 15).")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (otherwise they are never touched).")
    p.add_argument("--no_progress", action="store_true",
                   help="hide the progress bar.")
    return p


def main(argv=None):
    """Run the command line; returns the process exit status."""
    # Import the module from this script's folder whatever the working dir.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from synthetic_california import Physics, make_synthetic_california

    args = build_parser().parse_args(argv)
    prog = Path(sys.argv[0]).name or "make_synthetic.py"
    try:
        given = {"vp_km_s": args.vp, "vs_km_s": args.vs, "snr_db": args.snr_range,
                 "zone_depth_km": args.depth_range, "p_position_s": args.p_position_range}
        physics = Physics(**{k: (tuple(v) if isinstance(v, list) else v)
                             for k, v in given.items() if v is not None})
        out = make_synthetic_california(
            args.output_hdf5, args.output_dir, n_traces=args.n_traces,
            n_stations=args.n_stations, n_noise=args.n_noise, split=tuple(args.split),
            seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress,
            physics=physics)
    except FileExistsError as e:
        print(f"{prog}: error: output file already exists: {e.filename}; "
              "pass another path or --overwrite to replace it", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    c = out["counts"]
    print(f"wrote {out['n_traces']} earthquake traces ({out['n_events']} events) "
          f"and {out['n_noise']} noise traces to {out['hdf5']}")
    print(f"splits (traces): train {c['train']} -> {out['train']}, "
          f"valid {c['valid']} -> {out['valid']}, test {c['test']} -> {out['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
