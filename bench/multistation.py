"""Multi-station origins on a synthetic network where the truth is known.

Makes events recorded by 2-4 stations of a synthetic set's network
(``00_data/synthetic_california.make_network_events``: the stations and
source zones of ``make_synthetic_california`` with the same ``--n_stations``
and ``--seed``), predicts every trace with a trained model (tester1,
Monte-Carlo dropout, the error bars calibrated by ``--calibration``), adds
Gaussian pick noise to the true P and S times, and locates each event:

* single: each station's own estimate (the median over stations);
* weighted: the inverse-variance mean of the estimates (``--combine weighted``);
* hybrid P / hybrid P+S: ``utrans_loc.origins.hybrid_origin`` with the
  P picks only, and with P and S, in a velocity model that is NOT the one that
  made the data (``--vp``/``--vs``; the data: straight rays at 6.0 / 3.5 km/s).

Prints and writes (``--workdir``/``multistation.csv``, ``multistation.md``)
the median and mean epicentral error and the median absolute depth error by
number of stations, and the hybrid's 1-sigma coverage. A benchmark: nothing
is asserted. Example::

    python bench/multistation.py --model demo_run/demo_trainer_outputs/models/demo_trainer_010.weights.h5 \\
        --calibration demo_run/demo_tester_outputs/calibration.json --n_stations 15
"""

import argparse
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "00_data")]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from obspy import UTCDateTime  # noqa: E402

from utrans_loc import metrics, origins, solutions, velocity  # noqa: E402
from utrans_loc.cli import Formatter  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("--model", required=True, help="trained .weights.h5 (model_config.json beside it)")
    p.add_argument("--calibration", default=None,
                   help="calibration.json of tester1 for this model (else raw Monte-Carlo spreads)")
    p.add_argument("--workdir", default=os.path.join(ROOT, "bench_work", "multistation"),
                   help="folder for the network set and results (made if missing)")
    p.add_argument("--n_events", type=int, default=200, help="network events")
    p.add_argument("--n_stations", type=int, default=15,
                   help="stations of the synthetic network (its seed: --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic set's network")
    p.add_argument("--event_seed", type=int, default=1, help="seed of the network events")
    p.add_argument("--number_of_sampling", type=int, default=20, help="Monte-Carlo passes")
    p.add_argument("--vp", type=float, default=6.2, help="P velocity the events are located with")
    p.add_argument("--vs", type=float, default=3.6, help="S velocity the events are located with")
    p.add_argument("--pick_noise_p", type=float, default=0.1, help="std of the P pick noise (s)")
    p.add_argument("--pick_noise_s", type=float, default=0.2, help="std of the S pick noise (s)")
    p.add_argument("--model_error", type=float, default=origins.MODEL_ERROR,
                   help="travel-time error as a fraction of the travel time")
    return p


def predict(args, net):
    """tester1 on the network traces: its results table."""
    out = os.path.join(args.workdir, "tester")
    if not os.path.isdir(out + "_outputs"):     # tester1 writes <name>_outputs in its cwd
        cmd = [sys.executable, os.path.join(ROOT, "02_test", "tester1.py"),
               "--input_hdf5", net["hdf5"], "--input_testset", net["ids"],
               "--input_model", os.path.abspath(args.model), "--output_name", "tester",
               "--estimate_uncertainty",
               "--number_of_sampling", str(args.number_of_sampling), "--seed", "0"]
        if args.calibration:
            cmd += ["--calibration", os.path.abspath(args.calibration)]
        subprocess.run(cmd, check=True, cwd=args.workdir)
    return pd.read_csv(os.path.join(out + "_outputs", "X_test_results.csv"))


def weighted_mean(estimates, station, model):
    """The locator's ``--combine weighted`` origin of one event (no arrival times)."""
    n = len(station)
    values = solutions.Estimates(
        pick_id=tuple(map(str, range(n))), station=tuple(station), lat=estimates["lat"],
        lon=estimates["lon"], depth_km=estimates["depth_km"],
        north_std_km=estimates["lat_std_km"], east_std_km=estimates["lon_std_km"],
        depth_std_km=estimates["depth_std_km"], origin_time=(UTCDateTime(0),) * n)
    none = solutions.Arrivals(pick_id=(), station=(), phase=np.array([], dtype=object), time=(),
                              lat=np.array([]), lon=np.array([]), elevation_km=np.array([]))
    return solutions.solve_event(values, none, model, solutions.OriginSettings(combine="weighted"))


def locate_all(results, arrivals, args):
    """One row per event and method: errors and (hybrid) 1-sigma coverage."""
    rng = np.random.default_rng(0)
    model = velocity.HalfSpace(args.vp, args.vs)
    table = results.merge(arrivals[["trace_name", "event_id", "p_time", "s_time"]],
                          on="trace_name")
    rows = []
    for event_id, ev in table.groupby("event_id"):
        truth = ev.iloc[0]
        reference = UTCDateTime(truth["p_time"])
        p = np.array([UTCDateTime(t) - reference for t in ev["p_time"]])
        s = np.array([UTCDateTime(t) - reference for t in ev["s_time"]])
        p = p + rng.normal(0.0, args.pick_noise_p, len(p))
        s = s + rng.normal(0.0, args.pick_noise_s, len(s))
        estimates = {"lat": ev["pred_event_lat"].to_numpy(), "lon": ev["pred_event_lon"].to_numpy(),
                     "depth_km": ev["pred_depth_km"].to_numpy(),
                     "lat_std_km": ev["pred_event_lat_std_km"].to_numpy(),
                     "lon_std_km": ev["pred_event_lon_std_km"].to_numpy(),
                     "depth_std_km": ev["pred_depth_km_std"].to_numpy()}
        n = len(ev)

        def record(method, lat, lon, depth, extra=None):
            rows.append({"event_id": event_id, "n_stations": n, "method": method,
                         "epicentral_error_km": float(metrics.geodesic_km(
                             truth["event_lat"], truth["event_lon"], lat, lon)[()]),
                         "depth_error_km": abs(depth - truth["depth_km"]), **(extra or {})})

        for k in range(n):
            record("single", estimates["lat"][k], estimates["lon"][k], estimates["depth_km"][k])
        best = weighted_mean(estimates, ev["trace_name"].astype(str).tolist(), model)
        record("weighted", best.latitude, best.longitude, best.depth_km)
        for method, phases in (("hybrid P", ("P",)), ("hybrid P+S", ("P", "S"))):
            times = {"P": p, "S": s}
            picks = {"lat": np.concatenate([ev["station_lat"].to_numpy()] * len(phases)),
                     "lon": np.concatenate([ev["station_lon"].to_numpy()] * len(phases)),
                     "elevation_km": np.zeros(n * len(phases)),
                     "phase": np.repeat(phases, n),
                     "time": np.concatenate([times[f] for f in phases]),
                     "std": np.repeat([origins.PICK_STD_S[f] for f in phases], n)}
            r = origins.hybrid_origin(estimates, picks, model, args.model_error)
            plane = origins.Plane(r["latitude"], r["longitude"])
            east, north = plane.xy(truth["event_lat"], truth["event_lon"])
            cov = _ellipse_cov(r)
            inside = float(np.array([east, north]) @ np.linalg.solve(cov, [east, north])) <= 1.0
            record(method, r["latitude"], r["longitude"], r["depth_km"], {
                "lat_in_1sigma": abs(truth["event_lat"] - r["latitude"]) <= r["latitude_std"],
                "lon_in_1sigma": abs(truth["event_lon"] - r["longitude"]) <= r["longitude_std"],
                "depth_in_1sigma": abs(truth["depth_km"] - r["depth_km"]) <= r["depth_km_std"],
                "epicentre_in_ellipse": inside, "rms_s": r["rms_s"]})
    return pd.DataFrame(rows)


def _ellipse_cov(r):
    a = math.radians(r["ellipse_azimuth_deg"])
    major = np.array([math.sin(a), math.cos(a)])          # east, north
    minor = np.array([math.cos(a), -math.sin(a)])
    return (r["ellipse_major_km"] ** 2 * np.outer(major, major)
            + r["ellipse_minor_km"] ** 2 * np.outer(minor, minor))


def summary(rows):
    """Median/mean epicentral, median depth error by n stations and method; hybrid coverage."""
    out = []
    for (n, method), g in [*rows.groupby(["n_stations", "method"]),
                           *((("all", m), g) for m, g in rows.groupby("method"))]:
        line = {"n_stations": n, "method": method, "events": g["event_id"].nunique(),
                "median_epicentral_km": g["epicentral_error_km"].median(),
                "mean_epicentral_km": g["epicentral_error_km"].mean(),
                "median_depth_km": g["depth_error_km"].median()}
        if method.startswith("hybrid"):
            for col in ("lat_in_1sigma", "lon_in_1sigma", "depth_in_1sigma",
                        "epicentre_in_ellipse"):
                line[col] = g[col].astype(float).mean()
        out.append(line)
    order = {"single": 0, "weighted": 1, "hybrid P": 2, "hybrid P+S": 3}
    table = pd.DataFrame(out)
    return table.sort_values(["n_stations", "method"], key=lambda c: c.map(
        lambda v: order.get(v, v if not isinstance(v, str) else 99)), kind="stable")


def main(argv=None):
    args = build_parser().parse_args(argv)
    from synthetic_california import make_network_events

    os.makedirs(args.workdir, exist_ok=True)
    start = time.time()
    hdf5 = os.path.join(args.workdir, "network.hdf5")
    if os.path.isfile(hdf5):
        net = {"hdf5": hdf5, "ids": os.path.join(args.workdir, "network_Events.npy"),
               "arrivals": os.path.join(args.workdir, "network_arrivals.csv")}
    else:
        net = make_network_events(hdf5, args.workdir, n_events=args.n_events,
                                  n_stations=args.n_stations, seed=args.seed,
                                  event_seed=args.event_seed)
    results = predict(args, net)
    rows = locate_all(results, pd.read_csv(net["arrivals"]), args)
    table = summary(rows)
    rows.to_csv(os.path.join(args.workdir, "multistation_events.csv"), index=False)
    table.to_csv(os.path.join(args.workdir, "multistation.csv"), index=False)
    text = metrics._markdown(table.round(2))
    with open(os.path.join(args.workdir, "multistation.md"), "w") as fh:
        fh.write(text + "\n")
    print(f"data: straight rays at 6.0/3.5 km/s; located with vp {args.vp}, vs {args.vs}, "
          f"pick noise P {args.pick_noise_p} s, S {args.pick_noise_s} s, model error "
          f"{args.model_error}; model {args.model}; {time.time() - start:.0f} s\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
