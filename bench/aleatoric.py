"""The variance head (trainer1 --aleatoric) against the plain model, same data and seed.

Trains the demo's model twice on the synthetic set (``00_data/make_synthetic.py``;
reduced head 64 x 4, learning rate 1e-3, 10 epochs, batch 32, the same seed):
once as published, once with ``--aleatoric``. Then tester1 predicts the test
split three times, each calibrated on the validation split
(``--calibration_set valid_Events.npy``):

* plain, Monte-Carlo: the plain model, ``--estimate_uncertainty`` (the
  error bars of the published model);
* aleatoric, Monte-Carlo: the variance-head model with sampling (std: the
  total of predicted variance and Monte-Carlo spread);
* aleatoric, one pass: the variance-head model without sampling (std: the
  predicted variance alone).

Prints and writes (``--workdir``/``aleatoric.md``; ``aleatoric.csv``,
``aleatoric_spearman_intervals.csv``, ``aleatoric_parts.csv``) per run the
epicentral and depth MAE, the calibrated 1- and 2-sigma coverage and the
Spearman correlation of the calibrated std with |error| for lat, lon, depth
and epicentre (with 95 % bootstrap intervals over the test traces); for the
variance-head model that of each part (epistemic, aleatoric) and of the
total before calibration (the reader's ``uncertainty_parts.csv``);
and the reliability diagram of the calibrated std of the three runs
(``--figure``). A benchmark: nothing is asserted. Stages whose outputs exist
in ``--workdir`` are reused (only with the settings the folder was made
with), so a rerun only recomputes the tables.
Example::

    python bench/aleatoric.py --foundation_weights weights/UTrans_Foundation.h5
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from utrans_loc import metrics  # noqa: E402
from utrans_loc.cli import Formatter  # noqa: E402

RUNS = {"plain_mc": ("plain", True), "aleatoric_mc": ("aleatoric", True),
        "aleatoric_one_pass": ("aleatoric", False)}
QUANTITIES = {"lat_deg": "lat", "lon_deg": "lon", "depth_km": "depth", "epicentral_km": "epicentre"}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("--workdir", default=os.path.join(ROOT, "bench_work", "aleatoric"),
                   help="folder for the data, the two trainings and the tester runs (made if missing)")
    p.add_argument("--foundation_weights", default="none",
                   help="UTrans_Foundation.h5 for both trainings ('none': random initialisation)")
    p.add_argument("--n_traces", type=int, default=3000, help="synthetic traces (the demo's)")
    p.add_argument("--n_stations", type=int, default=6, help="synthetic stations (the demo's)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (the demo's)")
    p.add_argument("--convmixer_filters", type=int, default=64, help="head width (the demo's)")
    p.add_argument("--convmixer_depth", type=int, default=4, help="head depth (the demo's)")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="learning rate (the demo's)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and sampling")
    p.add_argument("--number_of_sampling", type=int, default=20, help="Monte-Carlo passes")
    p.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures",
                                                    "aleatoric_reliability.png"),
                   help="reliability diagram of the three runs ('' to skip)")
    return p


def _run(cmd, cwd, log):
    """Run a stage script, its output into ``log``; seconds taken."""
    start = time.time()
    with open(log, "w") as fh:
        code = subprocess.run([sys.executable, *map(str, cmd)], cwd=cwd, stdout=fh,
                              stderr=subprocess.STDOUT).returncode
    if code:
        with open(log) as fh:
            tail = fh.read().splitlines()[-5:]
        sys.exit("\n".join([f"bench/aleatoric.py: {os.path.basename(cmd[0])} failed "
                             f"(exit status {code}); the end of {log}:", *tail]))
    return time.time() - start


def make_data(args):
    data = os.path.join(args.workdir, "synthetic_california.hdf5")
    if not os.path.isfile(data):
        _run([os.path.join(ROOT, "00_data", "make_synthetic.py"), "--output_hdf5", data,
              "--output_dir", args.workdir, "--n_traces", args.n_traces, "--n_stations",
              args.n_stations, "--seed", args.seed, "--no_progress"], args.workdir,
             os.path.join(args.workdir, "data.log"))
    return data


def train(args, data, kind):
    """trainer1 as the demo runs it (``--aleatoric`` for kind 'aleatoric'); the last epoch's weights."""
    out = os.path.join(args.workdir, f"{kind}_outputs")
    models = os.path.join(out, "models")
    if os.path.isdir(out) and not os.path.isfile(os.path.join(out, "X_report.txt")):
        sys.exit(f"bench/aleatoric.py: {out} holds an unfinished training (no X_report.txt): "
                 "finish it with trainer1 --resume, or move it away")
    if not os.path.isdir(models):
        seconds = _run([os.path.join(ROOT, "01_train", "trainer1.py"), "--input_hdf5", data,
                        "--input_trainset", "train_Events.npy", "--input_validset",
                        "valid_Events.npy", "--output_name", kind, "--epochs", args.epochs,
                        "--patience", args.epochs, "--batch_size", 32,
                        "--convmixer_filters", args.convmixer_filters,
                        "--convmixer_depth", args.convmixer_depth,
                        "--learning_rate", args.learning_rate,
                        "--foundation_weights", args.foundation_weights, "--seed", args.seed,
                        "--verbose", 2, *(["--aleatoric"] if kind == "aleatoric" else [])],
                       args.workdir, os.path.join(args.workdir, f"train_{kind}.log"))
        print(f"trained {kind} in {seconds:.0f} s", flush=True)
    # As the demo: the last checkpoint saved (the best validation loss).
    best = sorted(f for f in os.listdir(models) if f.endswith(".weights.h5"))[-1]
    return os.path.join(models, best)


def test(args, data, name, model, sampled):
    """tester1 on the test split, calibrated on the validation split; its results table."""
    out = os.path.join(args.workdir, f"{name}_outputs")
    if not os.path.isdir(out):
        sampling = (["--estimate_uncertainty", "--number_of_sampling", args.number_of_sampling]
                    if sampled else [])
        seconds = _run([os.path.join(ROOT, "02_test", "tester1.py"), "--input_hdf5", data,
                        "--input_testset", "test_Events.npy", "--input_model", model,
                        "--output_name", name, "--seed", args.seed, "--calibration_set",
                        "valid_Events.npy", "--verbose", 0, *sampling],
                       args.workdir, os.path.join(args.workdir, f"test_{name}.log"))
        print(f"tested {name} in {seconds:.0f} s", flush=True)
    return metrics.read_results(os.path.join(out, metrics.RESULTS_NAME))


def summary_row(name, df):
    """MAE, calibrated coverage and Spearman of the total std of one run."""
    errors = metrics.location_errors(df)
    coverage = metrics.coverage_table(df, errors).set_index("quantity")
    row = {"run": name, "n": len(errors),
           "epicentral_mae_km": errors["epicentral_km"].abs().mean(),
           "depth_mae_km": errors["depth_km"].abs().mean()}
    for q, short in QUANTITIES.items():
        row[f"cov1_{short}"] = coverage.loc[q, "coverage_1sigma"]
        row[f"cov2_{short}"] = coverage.loc[q, "coverage_2sigma"]
    for q, short in QUANTITIES.items():
        row[f"spearman_{short}"] = coverage.loc[q, "spearman_std_abs_error"]
    return row


def spearman_interval(df, n_boot=1000, seed=0):
    """95 % bootstrap interval (traces resampled) of Spearman std vs |error| per
    quantity, for the std the reader scores (the calibrated one)."""
    rng = np.random.default_rng(seed)
    out = {}
    for q, sigma, abs_err in metrics._uncertainty_pairs(df, metrics.location_errors(df)):
        picks = rng.integers(0, len(sigma), size=(n_boot, len(sigma)))
        rho = [metrics._spearman(sigma[i], abs_err[i]) for i in picks]
        out[QUANTITIES[q]] = "{:.2f}-{:.2f}".format(*np.nanpercentile(rho, [2.5, 97.5]))
    return out


def check_settings(args):
    """Reuse a work folder only for the settings it was made with (else exit, naming both)."""
    keys = ("foundation_weights", "n_traces", "n_stations", "epochs", "convmixer_filters",
            "convmixer_depth", "learning_rate", "seed", "number_of_sampling")
    wanted = {k: getattr(args, k) for k in keys}
    path = os.path.join(args.workdir, "bench_settings.json")
    if os.path.isfile(path):
        with open(path) as fh:
            saved = json.load(fh)
        changed = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        if changed:
            sys.exit(f"bench/aleatoric.py: {args.workdir} was made with other settings "
                     f"(saved, given): {changed}; use another --workdir")
    else:
        with open(path, "w") as fh:
            json.dump(wanted, fh, indent=1)


def ranking_rows(name, df):
    """Spearman std vs |error| of each part of a variance-head run's std."""
    table = metrics.ranking_table(df, metrics.location_errors(df))
    wide = table.pivot(index="std", columns="quantity", values="spearman_std_abs_error")
    return [{"run": name, "std": part, **{f"spearman_{QUANTITIES[q]}": wide.loc[part, q]
                                          for q in QUANTITIES}}
            for part in table["std"].drop_duplicates()]


def reliability_figure(results, path):
    """One panel per quantity: observed vs nominal coverage of each run's calibrated std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    for name, df in results.items():
        curve = metrics.reliability_curve(df, metrics.location_errors(df))
        for ax, q in zip(axes, QUANTITIES):
            part = curve[curve["quantity"] == q]
            ax.plot(part["expected"], part["observed"], marker="o", ms=3, label=name)
    for ax, q in zip(axes, QUANTITIES):
        ax.plot([0, 1], [0, 1], "k:", lw=1, label="ideal (Gaussian errors)")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=QUANTITIES[q],
               xlabel="expected coverage (nominal level)", ylabel="observed coverage")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("calibrated std (fitted on the validation split), test split")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown(table):
    return metrics._markdown(table.reset_index(drop=True))


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    check_settings(args)
    data = make_data(args)
    models = {kind: train(args, data, kind) for kind in ("plain", "aleatoric")}
    results = {name: test(args, data, name, models[kind], sampled)
               for name, (kind, sampled) in RUNS.items()}
    summary = pd.DataFrame([summary_row(name, df) for name, df in results.items()])
    parts = pd.DataFrame([row for name in ("aleatoric_mc", "aleatoric_one_pass")
                          for row in ranking_rows(name, results[name])])
    intervals = pd.DataFrame([{"run": name, **spearman_interval(df)}
                              for name, df in results.items()])
    mae = summary.set_index("run")[["epicentral_mae_km", "depth_mae_km"]]
    change = (mae.loc["aleatoric_mc"] / mae.loc["plain_mc"] - 1.0) * 100.0
    lines = ["## Summary (calibrated std of each run, test split)", "", _markdown(summary), "",
             "## 95 % bootstrap intervals of the Spearman correlations above", "",
             _markdown(intervals), "",
             "## Spearman std vs |error| of each part and the total, before calibration "
             "(variance-head model)", "",
             _markdown(parts), "",
             f"MAE of the variance-head model vs the plain one: epicentral "
             f"{change['epicentral_mae_km']:+.1f} %, depth {change['depth_mae_km']:+.1f} %", ""]
    summary.to_csv(os.path.join(args.workdir, "aleatoric.csv"), index=False)
    parts.to_csv(os.path.join(args.workdir, "aleatoric_parts.csv"), index=False)
    intervals.to_csv(os.path.join(args.workdir, "aleatoric_spearman_intervals.csv"), index=False)
    with open(os.path.join(args.workdir, "aleatoric.md"), "w") as fh:
        fh.write("\n".join(lines))
    if args.figure:
        lines.append(f"figure: {reliability_figure(results, args.figure)}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
