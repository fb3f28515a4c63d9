"""Locator memory and speed against day-file archives: 1 day vs 12 days, files vs SDS.

Writes once (to ``--workdir``, reused by later runs) a synthetic archive of one
station (XX.MEM, HHE/HHN/HHZ, 100 Hz, int32 Gaussian noise, Steim-2 miniSEED
day files, one file per channel and day: SDS names and layout), a StationXML
and ``--picks`` P picks on day 1. The 1-day archive holds hard links to the
first day's files of the 12-day one, so both are the same bytes. Then runs
the locator (a child process each, on ``--input_model``) four ways:

    --input_waveforms '<archive>/**/XX.MEM*'   (files indexed by their headers)
    --input_sds <archive>                      (ObsPy's SDS client)

for the 1-day and the 12-day archive, and prints one Markdown table row per
run: peak RSS of the child (``os.wait4``), wall time, the locator's own
``time_read_s`` (picks, inventory, waveform index), ``time_windows_s``
(windowed reads and cuts, in the reader thread), ``time_predict_s`` (the
model) and ``time_stream_s`` (the whole pick stream: reading runs ahead of
the prediction) from its report.txt; picks/s of the model alone, of the
stream (their ratio: does reading keep up with the model?) and of the whole
run (Python start, TensorFlow import and model build included).
``--locator`` measures another checkout's locator (e.g. an older commit
exported with ``git archive``) the files way only. A benchmark, not a test.

Example::

    python bench/locator_memory.py --days 1 12 --picks 20

Each run's locator outputs go to a new ``runs/<time>`` folder in the workdir.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STATION = ("XX", "MEM")
COORDINATES = (47.737167, 12.795714, 860.0)   # obspy.read()'s RJOB, written as given
FIRST_DAY = "2020-01-01T00:00:00Z"
MARKER = "locator_memory_archive.txt"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default=str(ROOT / "bench_work" / "locator_memory"),
                   help="folder for the archive (written once, reused) and the runs")
    p.add_argument("--days", type=int, nargs="+", default=[1, 12],
                   help="archive lengths to measure (days); the longest is written")
    p.add_argument("--picks", type=int, default=20, help="P picks, all on day 1")
    p.add_argument("--input_model", default=str(
        ROOT.parent / "shared" / "fixtures" / "upstream_parity" / "location_ckpt_keras2.h5"),
                   help="location weights the locator runs with")
    p.add_argument("--locator", default=str(ROOT / "04_locate" / "locator.py"),
                   help="locator script to measure (another checkout's: files only)")
    p.add_argument("--ways", nargs="+", default=["files", "sds"], choices=["files", "sds"],
                   help="how the locator reads the archive")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and pick times")
    return p


def write_archive(workdir, days, n_picks, seed):
    """The longest archive (SDS layout), links for the shorter ones, StationXML, picks."""
    import numpy as np
    import pandas as pd
    from obspy import Trace, UTCDateTime

    from utrans_loc import exporters, files

    staged = workdir / "days"          # one SDS tree per day, linked into the archives
    marker = workdir / MARKER
    wanted = f"days {max(days)} picks {n_picks} seed {seed}\n"
    if marker.is_file():
        if marker.read_text() != wanted:
            raise SystemExit(f"{workdir} holds another archive ({marker.read_text().strip()}); "
                             "use another --workdir")
        return
    workdir.parent.mkdir(parents=True, exist_ok=True)
    files.check_new_output_dir(str(workdir), hint="choose another --workdir")
    staged.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    first = UTCDateTime(FIRST_DAY)
    start = time.time()
    for day in range(max(days)):
        # One channel-day at a time: a day of 100 Hz int32 is 35 MB in memory.
        traces = [Trace((rng.standard_normal(8_640_000) * 500).astype(np.int32), header={
            "network": STATION[0], "station": STATION[1], "channel": "HH" + c,
            "sampling_rate": 100.0, "starttime": first + 86400 * day}) for c in "ENZ"]
        exporters.write_sds(traces, staged / f"day{day:02d}", encoding="STEIM2", reclen=4096)
        print(f"day {day + 1}/{max(days)} written ({time.time() - start:.0f} s)", flush=True)
    # Each archive: hard links to its first n days (the same bytes, no copy).
    for n in sorted(set(days)):
        for day in range(n):
            for path in sorted((staged / f"day{day:02d}").rglob("*.D.*")):
                target = workdir / f"archive_{n}d" / path.relative_to(staged / f"day{day:02d}")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
    exporters.write_enz_inventory({STATION: (*COORDINATES, {"HH"})}, workdir / "stations.xml",
                                  "bench/locator_memory.py")
    times = sorted(first + 600 + float(x) for x in rng.uniform(0, 86400 - 1200, n_picks))
    pd.DataFrame({"network": STATION[0], "station": STATION[1],
                  "p_time": [t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in times],
                  "event_id": [f"ev{i:03d}" for i in range(n_picks)]}).to_csv(
        workdir / "picks.csv", index=False)
    marker.write_text(wanted)


def measure(command, cwd):
    """(exit status, peak RSS in MB, wall s) of one child process."""
    start = time.time()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        print(err, file=sys.stderr)
    return proc.returncode, usage.ru_maxrss / 1024.0, time.time() - start


def report_value(path, key):
    match = re.search(rf"^{key}: (.*)$", path.read_text(), flags=re.M)
    return float(match.group(1)) if match else float("nan")


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return re.search(r"^Model name:\s*(.*)$", out, flags=re.M).group(1).strip()
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return "unknown CPU"


def main(argv=None):
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir).resolve()
    write_archive(workdir, args.days, args.picks, args.seed)
    runs = workdir / "runs" / time.strftime("%Y%m%d_%H%M%S")
    runs.mkdir(parents=True)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| picks | archive | read via | peak RSS (MB) | wall (s) | read + index (s) | "
          "windows (s) | predict (s) | stream (s) | picks/s (model) | picks/s (stream) | "
          "stream / model | picks/s (whole run) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for days in args.days:
        archive = workdir / f"archive_{days}d"
        for way in args.ways:
            source = ["--input_sds", str(archive)] if way == "sds" else \
                ["--input_waveforms", str(archive / "**" / f"{'.'.join(STATION)}*")]
            name = f"{way}_{days}d"
            command = [sys.executable, args.locator, *source,
                       "--input_inventory", str(workdir / "stations.xml"),
                       "--input_picks", str(workdir / "picks.csv"),
                       "--input_model", args.input_model, "--output_name", name,
                       "--no-figures", "--verbose", "0"]
            status, rss, wall = measure(command, runs)
            if status:
                print(f"| {days} d | {way} | failed (exit {status}) |")
                continue
            report = runs / f"{name}_outputs" / "report.txt"
            read_s, windows_s, predict_s, stream_s = (report_value(report, f"time_{k}_s") for k in
                                                      ("read", "windows", "predict", "stream"))
            located = int(report_value(report, "n_located"))
            model_rate = located / max(predict_s, 1e-9)
            stream_rate = located / max(stream_s, 1e-9)
            print(f"| {args.picks} | {days} d | {way} | {rss:.0f} | {wall:.1f} | {read_s:.2f} | "
                  f"{windows_s:.2f} | {predict_s:.2f} | {stream_s:.2f} | {model_rate:.0f} | "
                  f"{stream_rate:.0f} | {stream_rate / model_rate:.2f} | {located / wall:.2f} |",
                  flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
