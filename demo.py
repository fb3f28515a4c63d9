"""Quick-start demo: synthetic California set -> trainer1 -> tester1 -> reader -> locator.

Runs the five stage scripts exactly as a user would, in ``./demo_run/``, and
prints the metrics table and the locator's per-event table last (times and
the spread over seeds and CPU paths: README and docs/training.md, measured by
``bench/seeds.py``). The locator stage writes test-split events recorded
by two or more stations as miniSEED + StationXML + a picks CSV
(``event_files/``, absolute times from one origin time per event) and
locates them with the model just trained. The model has the variance head
(``--aleatoric``): the tester's error bars come from one pass and are
calibrated on the validation split (``--calibration_set valid_Events.npy``),
so the report shows the raw and the calibrated coverage side by side.

The demo trains a REDUCED ConvMixer head (64 filters, depth 4) at learning
rate 1e-3 for 7 epochs on 3 stations with the U-Trans foundation kept fixed:
the published head (512 filters, depth 10, lr 1e-4) trains at ~13 traces/s
on such a CPU and does not learn within minutes. Its recipe (issue 29):
BatchNormalization statistics re-estimated on 20 clean training batches
before each validation, the best checkpoint by val_mae, the variance head
detached with beta 1 so that it does not slow the mean. trainer1's defaults
stay the published ones. The demo before that recipe: ``--epochs 5
--no-freeze_foundation --bn_recalibration 0 --monitor val_loss --nll_beta 0.5
--no-detach_variance``. The foundation weights
are taken from --foundation_weights, $UTRANS_WEIGHTS or
weights/UTrans_Foundation.h5, else the official file is fetched once into the
cache and verified; where it cannot be fetched (no network) the demo says so
and starts from random initialisation.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

from utrans_loc.cli import Formatter  # noqa: E402

DEFAULT_WEIGHTS = os.path.join("weights", "UTrans_Foundation.h5")


def _weights(value):
    """The foundation weights to use, or 'none' (said out loud)."""
    if value is not None:   # named: trainer1 checks it and warns if it is not the official file
        return value if value.strip().lower() in ("none", "") else os.path.abspath(value)
    import utrans_backbone as ub

    try:
        path = ub.resolve_foundation_weights(None, default=os.path.join(ROOT, DEFAULT_WEIGHTS))
    except FileNotFoundError as err:
        print(f"demo: {err}\ndemo: running from random initialisation instead.", flush=True)
        return "none"
    return "none" if path is None else os.path.abspath(path)


def _run(label, script, args, cwd, capture=False):
    start = time.time()
    cmd = [sys.executable, os.path.join(ROOT, script), *map(str, args)]
    print(f"\n=== {label}: {' '.join(cmd[1:])}", flush=True)
    run = subprocess.run(cmd, cwd=cwd, text=True, capture_output=capture)
    if run.returncode != 0:
        if capture:
            print(run.stdout + run.stderr)
        sys.exit(f"demo: {label} failed (exit status {run.returncode})")
    return time.time() - start, run.stdout if capture else ""


def build_parser():
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("--workdir", default="demo_run", help="folder for every demo file")
    p.add_argument("--n_traces", type=int, default=3000, help="synthetic earthquake traces")
    p.add_argument("--n_stations", type=int, default=3, help="synthetic stations")
    p.add_argument("--epochs", type=int, default=7, help="training epochs")
    p.add_argument("--aleatoric", action=argparse.BooleanOptionalAction, default=True,
                   help="train the variance head (trainer1 --aleatoric): error bars from one "
                        "pass, calibrated on the validation split")
    p.add_argument("--batch_size", type=int, default=32, help="training batch size")
    p.add_argument("--convmixer_filters", type=int, default=64, help="reduced head width")
    p.add_argument("--convmixer_depth", type=int, default=4, help="reduced head depth")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="base learning rate")
    p.add_argument("--bn_recalibration", type=int, default=20,
                   help="trainer1 --bn_recalibration: BatchNormalization statistics "
                        "re-estimated on this many clean training batches before each "
                        "validation (0: off, as published)")
    p.add_argument("--monitor", default="auto",
                   help="trainer1 --monitor: the quantity that picks the best checkpoint "
                        "(auto: val_mae with the variance head, else val_loss)")
    p.add_argument("--lr_schedule", default="step", choices=["step", "cosine"],
                   help="trainer1 --lr_schedule (the step schedule is constant over the "
                        "demo's epochs)")
    p.add_argument("--warmup_epochs", type=float, default=0.0,
                   help="trainer1 --warmup_epochs (with --lr_schedule cosine)")
    p.add_argument("--nll_beta", type=float, default=1.0,
                   help="trainer1 --nll_beta of the variance head's loss (1: the mean learns as "
                        "with MSE)")
    p.add_argument("--detach_variance", action=argparse.BooleanOptionalAction, default=True,
                   help="trainer1 --detach_variance: the variance head does not train the "
                        "shared features")
    p.add_argument("--variance_head_units", type=int, default=0,
                   help="trainer1 --variance_head_units: hidden units of the variance head "
                        "(0: one Dense(3); 32 measured in docs/uncertainty.md: it does not "
                        "rank the errors either)")
    p.add_argument("--freeze_foundation", action=argparse.BooleanOptionalAction, default=True,
                   help="trainer1 --freeze_foundation: train the decoder stream and the head only")
    p.add_argument("--foundation_weights", default=None,
                   help="UTrans_Foundation.h5 (default: $UTRANS_WEIGHTS, else weights/UTrans_Foundation.h5, "
                        "else the official file fetched into the cache; 'none': random init)")
    p.add_argument("--number_of_sampling", type=int, default=0,
                   help="Monte-Carlo dropout passes of the tester and the locator (0: one "
                        "deterministic pass; error bars then only from the variance head)")
    p.add_argument("--locate_events", type=int, default=4,
                   help="test-split events recorded by 2+ stations that the locator stage "
                        "writes as waveform files and locates")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation, augmentation, sampling")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    for name in ("demo_trainer_outputs", "demo_tester_outputs", "demo_locator_outputs",
                 "event_files"):
        if os.path.exists(os.path.join(work, name)):
            print(f"demo: {os.path.join(work, name)} exists from an earlier demo; it is kept. "
                  "Move it away or pass --workdir NEW_FOLDER.", file=sys.stderr)
            return 2
    try:
        weights = _weights(args.foundation_weights)
    except (ValueError, OSError) as err:   # a weights/ or cached file that is not the official one
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    print("demo configuration: "
          f"{args.n_traces} synthetic traces from {args.n_stations} stations, head "
          f"{args.convmixer_filters} filters x depth {args.convmixer_depth} (published: 512 x 10), "
          f"learning rate {args.learning_rate:g} (published: 1e-4), batch {args.batch_size}, "
          f"{args.epochs} epochs, variance head: {'yes' if args.aleatoric else 'no'}, "
          f"BatchNormalization statistics re-estimated on {args.bn_recalibration} clean "
          f"batches before each validation, best checkpoint by {args.monitor} monitor, "
          f"{args.lr_schedule} learning-rate schedule, "
          f"Monte-Carlo samples {args.number_of_sampling}, "
          f"foundation weights: {weights}", flush=True)

    times = {}
    data = os.path.join(work, "synthetic_california.hdf5")
    if os.path.isfile(data):
        print(f"demo: reusing {data}")
    else:
        times["data"], _ = _run("00 data", "00_data/make_synthetic.py", [
            "--output_hdf5", data, "--output_dir", work, "--n_traces", args.n_traces,
            "--n_stations", args.n_stations, "--seed", args.seed, "--no_progress"], work)
    times["train"], _ = _run("01 train", "01_train/trainer1.py",
                             trainer_arguments(args, data, weights), work)
    models = os.path.join(work, "demo_trainer_outputs", "models")
    best = sorted(f for f in os.listdir(models) if f.endswith(".weights.h5"))[-1]
    # The error bars are calibrated on the validation split, never on the test split.
    calibrate = ["--calibration_set", "valid_Events.npy"] if _error_bars(args) else []
    times["test"], _ = _run("02 test", "02_test/tester1.py", [
        "--input_hdf5", data, "--input_testset", "test_Events.npy",
        "--input_model", os.path.join(models, best), "--output_name", "demo_tester",
        *_sampling(args), *calibrate], work)
    times["read"], report = _run("03 read", "03_read/reader.py",
                                 ["--input", "demo_tester_outputs"], work, capture=True)
    times["locate"], events = _locate(work, data, os.path.join(models, best), args)
    print("\ndemo stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; total {sum(times.values()):.0f} s")
    print(f"results: {os.path.join(work, 'demo_tester_outputs')}\n")
    print(report.rstrip())
    if events is None:
        print("\nlocator: skipped (no multi-station event in the test split)")
        return 0
    print(f"\nlocator ({os.path.join(work, 'demo_locator_outputs')}): synthetic test-split events "
          "recorded by several stations, from the miniSEED + StationXML + picks in "
          f"{os.path.join(work, 'event_files')}; preferred location (as in events.xml) vs truth, "
          "1-sigma errors")
    print(events.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if os.path.isfile(os.path.join(work, TRUTH_MAP)):
        print(f"map of the estimates with the true epicentres: {os.path.join(work, TRUTH_MAP)}")
    return 0


def trainer_arguments(args, data, weights):
    """trainer1's command line for the demo's options (``args``)."""
    return [
        "--input_hdf5", data, "--input_trainset", "train_Events.npy",
        "--input_validset", "valid_Events.npy", "--output_name", "demo_trainer",
        "--epochs", args.epochs, "--patience", args.epochs, "--batch_size", args.batch_size,
        "--convmixer_filters", args.convmixer_filters, "--convmixer_depth", args.convmixer_depth,
        "--learning_rate", args.learning_rate, "--foundation_weights", weights,
        "--seed", args.seed, "--verbose", 2, "--bn_recalibration", args.bn_recalibration,
        "--monitor", args.monitor, "--lr_schedule", args.lr_schedule,
        "--warmup_epochs", args.warmup_epochs,
        *(["--freeze_foundation"] if args.freeze_foundation else []),
        *(["--aleatoric", "--nll_beta", args.nll_beta] if args.aleatoric else []),
        *(["--detach_variance"] if args.detach_variance and args.aleatoric else []),
        *(["--variance_head_units", args.variance_head_units]
          if args.variance_head_units and args.aleatoric else [])]


def _sampling(args):
    """The Monte-Carlo options of the tester and the locator."""
    return (["--estimate_uncertainty", "--number_of_sampling", args.number_of_sampling,
             "--seed", args.seed] if args.number_of_sampling > 1 else [])


def _error_bars(args):
    """Whether the predictions have std columns (a variance head or sampling)."""
    return args.aleatoric or args.number_of_sampling > 1


def multi_station_events(data, trace_ids, min_stations=2):
    """Whether any event (``source_id``) of ``trace_ids`` in ``data`` has ``min_stations``
    or more traces: the locator stage needs one."""
    import h5py
    import pandas as pd

    with h5py.File(data, "r") as fh:
        sources = pd.Series([fh[str(t)].attrs.get("source_id", "") for t in trace_ids])
    return bool((sources.value_counts() >= min_stations).any())


def _locate(work, data, model, args):
    """Stage 04: write the worked example (event files) and locate it; (seconds, table)."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, os.path.join(ROOT, "00_data"))
    from synthetic_california import write_event_files
    from utrans_loc.events import compare_with_truth
    from utrans_loc.locate import EVENTS_CSV_NAME
    from utrans_loc.uncertainty import CALIBRATION_NAME

    start = time.time()
    test_ids = np.load(os.path.join(work, "test_Events.npy"))
    if not multi_station_events(data, test_ids):
        # A small synthetic set (seed 4 of the demo's) can have none in its test split;
        # training events would make the worked example dishonest.
        print(f"\n=== 04 locate: skipped: no test-split event of {data} is recorded by 2 or "
              "more stations (another --seed or more --n_stations gives some)", flush=True)
        return time.time() - start, None
    example = write_event_files(data, test_ids, os.path.join(work, "event_files"),
                                n_events=args.locate_events)
    uncertainty = _sampling(args) + (
        ["--calibration", os.path.join("demo_tester_outputs", CALIBRATION_NAME)]
        if _error_bars(args) else [])
    seconds, _ = _run("04 locate", "04_locate/locator.py", [
        "--input_waveforms", example["waveforms"], "--input_inventory", example["inventory"],
        "--input_picks", example["picks"], "--input_model", model,
        "--output_name", "demo_locator", *uncertainty], work)
    table = compare_with_truth(
        pd.read_csv(os.path.join(work, "demo_locator_outputs", EVENTS_CSV_NAME)),
        pd.read_csv(example["truth"]))
    truth_map(work, example["truth"])
    return time.time() - start, table


TRUTH_MAP = os.path.join("demo_locator_outputs", "figures", "map_truth.png")


def truth_map(work, truth_csv):
    """The locator's map with the true epicentres drawn beside the estimates, as an extra
    file (:data:`TRUTH_MAP` in ``work``) next to the locator's own ``map.png``, which is
    left as the run wrote it; an existing file is never replaced. Returns its path or None."""
    import pandas as pd

    from utrans_loc import figures
    from utrans_loc.locate import EVENTS_CSV_NAME, LOCATIONS_NAME

    path = os.path.join(work, TRUTH_MAP)
    if os.path.exists(path):
        print(f"demo: {path} exists; it is kept (no map with the truth drawn)", file=sys.stderr)
        return None
    ids = {"event_id": str}
    outputs = os.path.join(work, "demo_locator_outputs")
    locations = pd.read_csv(os.path.join(outputs, LOCATIONS_NAME), dtype=ids)
    if not len(locations):
        return None
    events = pd.read_csv(os.path.join(outputs, EVENTS_CSV_NAME), dtype=ids)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return figures.location_map(locations, events[events["method"] != "single-station"], path,
                                truth=pd.read_csv(truth_csv, dtype=ids))


if __name__ == "__main__":
    sys.exit(main())
