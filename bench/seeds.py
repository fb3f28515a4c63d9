"""The demo over seeds and TensorFlow's CPU paths: does training learn on every one?

Runs ``python demo.py`` once per seed and per oneDNN setting
(``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow's path for CPUs with AVX-512;
``0``: the path for CPUs without it), each in its own folder under
``--workdir``, and scores each run's test split from its tester table:
epicentral MAE and its ratio to the constant predictor, depth MAE against the
constant's, the checkpoint kept (by the monitored quantity) against the epoch
with the lowest val_mae, and, where the model has error bars, calibrated 1-sigma
coverage and Spearman(std, |error|) for the epicentre and the depth.

``--physics second`` runs the same on a second synthetic set with another
physics (:data:`SECOND_PHYSICS`: slower velocities, deeper and wider source
zones, noisier traces), made by ``00_data/make_synthetic.py`` into each run's
folder before the demo (which then reuses it). Demo options after ``--`` are
passed on (the recipe: ``--bn_recalibration 0 --monitor val_loss`` is the
earlier demo's). A run whose folder holds a tester table is not rerun, so an
interrupted sweep continues; the table is printed and written to
``--workdir``/``seeds.md`` and ``seeds.csv``. A benchmark: nothing is asserted;
demo times are wall times of the whole demo, comparable only within one sweep
on one machine.

Example::

    python bench/seeds.py --seeds 0 1 2 3 4 --onednn on off \\
        --foundation_weights weights/UTrans_Foundation.h5
    python bench/seeds.py --workdir bench_work/seeds_before -- --bn_recalibration 0 \\
        --monitor val_loss
"""

import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from utrans_loc import metrics  # noqa: E402
from utrans_loc.cli import Formatter  # noqa: E402

# make_synthetic.py options of the second set: another physics than the demo's.
SECOND_PHYSICS = ["--vp", 5.2, "--vs", 3.0, "--depth_range", 4, 40, "--snr_range", 0, 30]
PHYSICS = {"demo": [], "second": SECOND_PHYSICS}
ONEDNN = {"on": "1", "off": "0"}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("--workdir", default=os.path.join(ROOT, "bench_work", "seeds"),
                   help="one folder per run is made here; existing runs are reused")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="demo seeds")
    p.add_argument("--onednn", nargs="+", choices=list(ONEDNN), default=list(ONEDNN),
                   help="TF_ENABLE_ONEDNN_OPTS settings (on: the AVX-512 path, off: the path "
                        "of CPUs without it)")
    p.add_argument("--physics", choices=list(PHYSICS), default="demo",
                   help="the demo's synthetic set, or a second set with another physics")
    p.add_argument("--foundation_weights", default=None,
                   help="passed to demo.py (default: the demo's own search)")
    p.add_argument("demo_options", nargs="*",
                   help="further demo.py options, after '--' (the recipe under test)")
    return p


def run_demo(args, folder, seed, onednn):
    """demo.py in ``folder`` (its log beside it); the demo's wall time in s, or None if reused."""
    tester = os.path.join(folder, "demo_tester_outputs", metrics.RESULTS_NAME)
    if os.path.isfile(tester):
        return None
    os.makedirs(folder, exist_ok=True)
    if PHYSICS[args.physics] and not os.path.isfile(os.path.join(folder,
                                                                 "synthetic_california.hdf5")):
        # The demo's size (3000 traces, 3 stations), another physics.
        subprocess.run([sys.executable, os.path.join(ROOT, "00_data", "make_synthetic.py"),
                        "--output_hdf5", os.path.join(folder, "synthetic_california.hdf5"),
                        "--output_dir", folder, "--n_traces", "3000", "--n_stations", "3",
                        "--seed", str(seed), "--no_progress", *map(str, PHYSICS[args.physics])],
                       check=True, stdout=subprocess.DEVNULL)
    weights = ["--foundation_weights", args.foundation_weights] if args.foundation_weights else []
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": ONEDNN[onednn]}
    start = time.time()
    with open(os.path.join(folder, "demo.log"), "w") as log:
        code = subprocess.run([sys.executable, os.path.join(ROOT, "demo.py"), "--workdir", folder,
                               "--seed", str(seed), *weights, *args.demo_options],
                              stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        sys.exit(f"bench/seeds.py: demo.py failed in {folder} (exit status {code}); see "
                 f"{os.path.join(folder, 'demo.log')}")
    return time.time() - start


def demo_seconds(folder):
    """The demo's wall time: as this bench timed it, else the total the demo printed
    (a run whose sweep was interrupted), else NaN."""
    timing = os.path.join(folder, "demo_seconds.txt")
    if os.path.isfile(timing):
        return float(open(timing).read())
    totals = re.findall(r"; total (\d+) s", open(os.path.join(folder, "demo.log")).read())
    return float(totals[-1]) if totals else np.nan


def checkpoint_row(folder):
    """The epoch kept (the last checkpoint written) and the best val_mae epoch."""
    train = os.path.join(folder, "demo_trainer_outputs")
    history = pd.read_csv(os.path.join(train, "history.csv"))
    models = sorted(f for f in os.listdir(os.path.join(train, "models"))
                    if f.endswith(".weights.h5"))
    kept = int(models[-1].rsplit("_", 1)[1].split(".")[0])
    best = int(history["val_mae"].idxmin())
    return {"epoch_kept": kept, "val_mae_kept": history["val_mae"].iloc[kept - 1],
            "epoch_best_val_mae": best + 1, "val_mae_best": history["val_mae"].iloc[best]}


def score(folder):
    """Test-split scores of one demo run (its tester table)."""
    df = metrics.read_results(os.path.join(folder, "demo_tester_outputs", metrics.RESULTS_NAME))
    errors, constant = metrics.location_errors(df), metrics.constant_baseline(df)
    mae = {name: metrics.metrics_table(e).set_index("quantity")["mae"]
           for name, e in (("model", errors), ("constant", constant))}
    row = {"epi_mae_km": mae["model"]["epicentral_km"],
           "epi_ratio": mae["model"]["epicentral_km"] / mae["constant"]["epicentral_km"],
           "depth_mae_km": mae["model"]["depth_km"],
           "depth_constant_km": mae["constant"]["depth_km"]}
    if metrics.STD_COLUMNS["epicentral_km"] in df.columns:   # the model has error bars
        coverage = metrics.coverage_table(df, errors).set_index("quantity")
        for q, short in (("epicentral_km", "epi"), ("depth_km", "depth")):
            row[f"cov1_{short}"] = coverage.loc[q, "coverage_1sigma"]
            row[f"spearman_{short}"] = coverage.loc[q, "spearman_std_abs_error"]
    return row


def summary(table):
    """The sweep's lines against issue 29's targets."""
    ratio = table["epi_ratio"]
    kept_ok = (table["val_mae_kept"] <= 1.1 * table["val_mae_best"]).sum()
    return [f"runs: {len(table)}; epicentral ratio to the constant predictor: max "
            f"{ratio.max():.3f}, median {ratio.median():.3f} (targets <= 0.5, <= 0.4)",
            f"depth MAE below the constant predictor's: {(table['depth_mae_km'] < table['depth_constant_km']).sum()} of {len(table)}",
            f"checkpoint kept within 10 % of the best epoch's val_mae: {kept_ok} of {len(table)}"]


def main(argv=None):
    args = build_parser().parse_args(argv)
    rows = []
    for onednn in args.onednn:
        for seed in args.seeds:
            folder = os.path.join(args.workdir, f"{args.physics}_seed{seed}_onednn_{onednn}")
            seconds = run_demo(args, folder, seed, onednn)
            if seconds is not None:
                with open(os.path.join(folder, "demo_seconds.txt"), "w") as fh:
                    fh.write(f"{seconds:.1f}\n")
            rows.append({"physics": args.physics, "seed": seed, "onednn": onednn,
                         "demo_s": demo_seconds(folder),
                         **checkpoint_row(folder), **score(folder)})
            print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format="{:.3f}".format),
                  flush=True)
    table = pd.DataFrame(rows)
    lines = summary(table)
    text = metrics._markdown(table) + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    os.makedirs(args.workdir, exist_ok=True)
    table.to_csv(os.path.join(args.workdir, "seeds.csv"), index=False)
    with open(os.path.join(args.workdir, "seeds.md"), "w") as fh:
        fh.write(f"demo options: {' '.join(args.demo_options) or '(defaults)'}\n\n{text}")
    print("\n" + table.to_string(index=False, float_format="{:.3f}".format))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
