"""The locator's epicentral error against the P-position offset of its window.

A model sees P where its training put it. The locator cuts each window with P
at ``--p_position_s`` (default: the model's own); a pick whose window puts P
elsewhere gives the model a window its training may never have shown. This
bench reads the test split as tester1 does (band-pass, normalisation), moves P
by each offset (-3 to +3 s by default) with a circular shift of the window
(as trainer1's ``shift_event`` augmentation does: the synthetic traces are
exactly 60 s, so there are no data beyond them to cut a longer window from),
predicts, and prints one Markdown row per model and offset: epicentral MAE
(km) and its ratio to the unshifted window's, and the depth MAE.

Example (the two models of docs/locating.md's table)::

    python bench/p_offset.py --input_hdf5 fixed/synthetic_california.hdf5 \\
        --input_testset fixed/test_Events.npy \\
        --model "P at 10 s, no shift=fixed/demo_trainer_outputs/models/demo_trainer_007.weights.h5" \\
        --model "P 5-15 s + shifts=varied/demo_trainer_outputs/models/demo_trainer_007.weights.h5"

A benchmark, not a test.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utrans_loc import cli  # noqa: E402

cli.prepare_environment()


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input_hdf5", required=True, help="the data set (DataCollected layout)")
    p.add_argument("--input_testset", required=True, help=".npy of the test trace ids")
    p.add_argument("--model", action="append", required=True,
                   help="'label=path.weights.h5' (repeat for each model)")
    p.add_argument("--offsets", type=float, nargs="+", default=[-3, -2, -1, 0, 1, 2, 3],
                   help="P-position offsets (s) of the window; 0 is the data's own")
    p.add_argument("--batch_size", type=int, default=40, help="prediction batch size")
    return p


def offset_errors(model, settings, x, meta, offset_s):
    """Epicentral and depth MAE (km) of ``model`` on ``x`` with P moved by ``offset_s``."""
    from utrans_loc import metrics, prediction

    shifted = np.roll(x, int(round(offset_s * 100)), axis=1)
    pred = prediction.predict_samples(model, prediction.ArrayBatches(shifted, 40),
                                      progress=False)
    table = prediction.results_table(meta, pred, settings["max_d"], settings["min_d"])
    epicentral = metrics.geodesic_km(table["event_lat"], table["event_lon"],
                                     table["pred_event_lat"], table["pred_event_lon"])
    depth = np.abs(table["pred_depth_km"] - table["depth_km"])
    return float(np.mean(epicentral)), float(np.mean(depth))


def main(argv=None):
    args = build_parser().parse_args(argv)
    from utrans_loc import checkpoints, prediction, splits

    ids = np.load(args.input_testset, allow_pickle=False).astype(str)
    meta = splits.read_metadata(args.input_hdf5, ids)
    print(f"{len(ids)} test traces of {args.input_hdf5}; P moved by a circular shift")
    print("| model | P offset (s) | epicentral MAE (km) | / unshifted | depth MAE (km) |")
    print("|---|---|---|---|---|")
    for spec in args.model:
        label, _, path = spec.partition("=")
        settings = checkpoints.model_settings(path)
        model = checkpoints.build_from_checkpoint(path, settings)[0]
        gen = prediction.prediction_generator(ids, argparse.Namespace(
            input_hdf5=args.input_hdf5, batch_size=args.batch_size), settings)
        x = np.concatenate([gen[i][0] for i in range(len(gen))])[:len(ids)]
        errors = {offset: offset_errors(model, settings, x, meta, offset)
                  for offset in sorted(set(args.offsets) | {0.0})}
        for offset, (epi, depth) in errors.items():
            print(f"| {label} | {offset:+g} | {epi:.1f} | {epi / errors[0.0][0]:.2f} | "
                  f"{depth:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
