"""Shared test setup: import paths, fixture files, small synthetic data, and the
helpers that several test files use (running a stage script, hand-made inputs)."""

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy.signal import butter, sosfiltfilt
from scipy.signal.windows import tukey

ROOT = Path(__file__).resolve().parents[1]
for sub in ("", "00_data", "01_train", "02_test", "03_read"):
    sys.path.insert(0, str(ROOT / sub))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# UTRANS_FIXTURES lets a run point elsewhere (or nowhere, to check the skips).
FIXTURES = Path(os.environ.get("UTRANS_FIXTURES", ROOT.parent / "shared" / "fixtures"))
FOUNDATION_H5 = FIXTURES / "utrans" / "UTrans_Foundation.h5"
STEAD_SAMPLE = FIXTURES / "stead_sample" / "waveforms.hdf5"
PARITY = FIXTURES / "upstream_parity"
SAMPLE_CSV = STEAD_SAMPLE.parent / "metadata.csv"

# No test reaches the network or the user's weights cache (stage scripts inherit
# this): the weights origin is a file:// URL that exists only where a test puts
# a copy of the fixture there (see ``weights_origin``).
_ISOLATED = Path(tempfile.mkdtemp(prefix="utrans_tests_"))
os.environ["UTRANS_CACHE_DIR"] = str(_ISOLATED / "cache")
os.environ["UTRANS_WEIGHTS_URL"] = (_ISOLATED / "no_origin" / "UTrans_Foundation.h5").as_uri()
os.environ.pop("UTRANS_WEIGHTS", None)

# The attributes of a DataCollected trace, as upstream names them.
UPSTREAM_ATTRS = ("station_lat", "station_long", "event_lat", "event_long", "depth", "magnitude",
                  "magnitude_type", "p_arrival_sample", "s_arrival_sample", "coda_end_sample",
                  "snr_db", "data_category", "P_polarity", "event_label", "AI_Set")

# Small head used wherever a test trains: the published one is ~10x slower on CPU.
SMALL_HEAD = dict(convmixer_filters=16, convmixer_depth=2)


def need(path):
    """Skip the test (with the missing file named) when a fixture is absent."""
    if not Path(path).exists():
        pytest.skip(f"fixture not found: {path} (the tests expect ../shared/fixtures "
                    "beside the repository)")
    return str(path)


@pytest.fixture
def weights_origin(tmp_path, monkeypatch):
    """A file:// origin holding a copy of the official weights, and an empty cache."""
    import shutil

    origin = tmp_path / "origin" / "UTrans_Foundation.h5"
    origin.parent.mkdir()
    shutil.copyfile(need(FOUNDATION_H5), origin)
    monkeypatch.setenv("UTRANS_WEIGHTS_URL", origin.as_uri())
    monkeypatch.setenv("UTRANS_CACHE_DIR", str(tmp_path / "cache"))
    return {"origin": origin, "url": origin.as_uri(),
            "cached": tmp_path / "cache" / "utrans" / "UTrans_Foundation.h5"}


@contextlib.contextmanager
def working_dir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield Path(path)
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A small synthetic DataCollected file with splits and 3 noise traces."""
    import synthetic_california as sc

    out = tmp_path_factory.mktemp("synthetic")
    info = sc.make_synthetic_california(out / "syn.hdf5", out, n_traces=90, n_stations=3,
                                        n_noise=3, seed=3, progress=False)
    with h5py.File(info["hdf5"], "r") as fh:
        info["noise_ids"] = [k for k in fh if fh[k].attrs["data_category"] == "noise"]
    return info


@pytest.fixture(scope="session")
def trained(synthetic, tmp_path_factory):
    """trainer1 run for 2 tiny epochs on the synthetic set (shared by several tests)."""
    import trainer1 as t1

    work = tmp_path_factory.mktemp("train")
    with working_dir(work):
        result = t1.trainer1(**tiny_training(synthetic, output_name="tiny", learning_rate=1e-3,
                                             seed=5))
    result["work"] = work
    return result


def rng(seed=0):
    return np.random.default_rng(seed)


# The stage scripts, relative to the repository.
TRAIN = "01_train/trainer1.py"
TEST = "02_test/tester1.py"
READ = "03_read/reader.py"
BUILD = "00_data/build_california.py"


def child_env(backend=None, **extra):
    """The environment of a fresh interpreter: this one's, with ``KERAS_BACKEND``
    (``'jax'`` also keeps JAX on the CPU) and ``extra`` variables set."""
    env = dict(os.environ)
    if backend:
        env["KERAS_BACKEND"] = backend
        if backend == "jax":
            env["JAX_PLATFORMS"] = "cpu"
    env.update({name: str(value) for name, value in extra.items()})
    return env


def _command(script, args):
    """``python <script> args``: a script path relative to the repository (or
    absolute), or an interpreter flag such as ``-c``."""
    first = str(script) if str(script).startswith("-") else str(ROOT / script)
    return [sys.executable, first, *map(str, args)]


def run_script(script, *args, cwd=None, timeout=600, env=None):
    """Run ``python <script> args`` in a fresh interpreter (the one subprocess
    helper of the tests); ``env`` from :func:`child_env`. Returns the
    CompletedProcess with text stdout and stderr."""
    return subprocess.run(_command(script, args), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_script(script, *args, cwd=None, env=None):
    """:func:`run_script` without waiting: the Popen (text pipes), for tests that
    signal, kill or talk to the process while it runs."""
    return subprocess.Popen(_command(script, args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def tiny_training(data, **changes):
    """trainer1 keywords of the tests' tiny runs on a synthetic set: small head,
    batch 8, 2 epochs, no foundation weights, silent; ``changes`` override."""
    return {"input_hdf5": data["hdf5"], "input_trainset": data["train"],
            "input_validset": data["valid"], "batch_size": 8, "epochs": 2,
            "foundation_weights": "none", "seed": 1, "verbose": 0, **SMALL_HEAD, **changes}


def run_main(script, *args, cwd=None):
    """A stage script's ``main(argv)`` in this process, answered as :func:`run_script`
    answers (status, stdout, stderr): the exit-2 path and ``--help`` without paying
    a Python + TensorFlow start each time. The real process is run_script's test."""
    import importlib
    import io

    module = importlib.import_module(Path(script).stem)
    out, err, env = io.StringIO(), io.StringIO(), dict(os.environ)
    try:
        with working_dir(cwd or os.getcwd()), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                status = module.main([str(a) for a in args])
            except SystemExit as stop:   # argparse: --help, a bad option
                status = stop.code
    finally:
        os.environ.clear()
        os.environ.update(env)
    return subprocess.CompletedProcess([script, *args], status, out.getvalue(), err.getvalue())


def results_frame(n=6, dlat=0.0, dlon=0.0, ddep=0.0, lat0=34.0):
    """A tester results table (X_test_results.csv) whose predictions are truth + fixed offsets."""
    i = np.arange(n, dtype=float)
    ev_lat, ev_lon, dep = lat0 + 0.1 * i, -118.0 + 0.05 * i, 5.0 + i
    return pd.DataFrame({
        'trace_name': [f'tr{k}' for k in range(n)],
        'station_lat': ev_lat + 0.2, 'station_lon': ev_lon - 0.3,
        'event_lat': ev_lat, 'event_lon': ev_lon, 'depth_km': dep,
        'pred_event_lat': ev_lat + dlat, 'pred_event_lon': ev_lon + dlon,
        'pred_depth_km': dep + ddep, 'magnitude': 2.5})


def scipy_reference(raw):
    """The upstream processing written out with scipy alone (not bandpass_taper)."""
    sos = butter(2, [1.0, 45.0], btype="bandpass", fs=100.0, output="sos")
    taper = tukey(6000, alpha=2 * min(0.01 * 6000, 2.0 * 100) / 6000)   # 1 %, at most 2 s
    return (sosfiltfilt(sos, raw.astype(np.float64), axis=0) * taper[:, None]).astype(np.float32)


def released_stead_pair(tmp_path):
    """Two STEAD pairs in the released layout (data/<name>) made from the real sample.

    chunk1: 3 noise traces and one earthquake trace that chunk2 repeats.
    chunk2: 10 Californian sample traces (one with coda_end_sample as [[x]], one
    with magnitude 'None'), a second station for one event, an event in Nevada,
    a station in Oregon, an event in Baja California, a NaN trace, a short
    trace, a CSV row without coordinates and a CSV row whose trace is missing.
    """
    raw = h5py.File(need(STEAD_SAMPLE), "r")["earthquake/local"]
    meta = pd.read_csv(need(SAMPLE_CSV), dtype=str, keep_default_na=False)
    meta = meta[meta["source_latitude"].astype(float) > 32.6].reset_index(drop=True)
    chunks = {"chunk1": [], "chunk2": []}

    def add(chunk, base, name, data=None, **changes):
        row = meta.iloc[base].copy()
        attrs = dict(raw[row["trace_name"]].attrs)
        row["trace_name"] = attrs["trace_name"] = name
        for key, value in changes.items():
            attrs[key] = _number_or_text(value)
            row[key] = str(value.ravel()[0]) if isinstance(value, np.ndarray) else value
        chunks[chunk].append((row, raw[meta.iloc[base]["trace_name"]][()] if data is None
                              else data, attrs))

    noise_changes = {k: "None" for k in meta.columns if k.startswith("source_") or k in (
        "p_arrival_sample", "s_arrival_sample", "coda_end_sample", "back_azimuth_deg")}
    for i in range(3):
        add("chunk1", i, f"NOI{i}.TA_2010010100000{i}_NO",
            data=np.random.default_rng(i).standard_normal((6000, 3)).astype(np.float32),
            trace_category="noise", snr_db="None", **noise_changes)
    add("chunk1", 0, "DUP.TA_20100101000000_EV")
    for i in range(10):
        changes = {}
        if i == 1:
            changes["coda_end_sample"] = np.array([[float(meta.iloc[1]["coda_end_sample"])]])
        if i == 2:
            changes["source_magnitude"] = "None"
        add("chunk2", i, meta.iloc[i]["trace_name"], **changes)
    add("chunk2", 0, "TWO.CI_20060723155859_EV", network_code="CI", receiver_code="TWO",
        receiver_latitude="34.1", receiver_longitude="-118.2")            # same event, 2nd station
    add("chunk2", 3, "NEV.NN_1_EV", source_latitude="39.5", source_longitude="-119.8")
    add("chunk2", 4, "ORE.UO_1_EV", receiver_latitude="44.0", receiver_longitude="-121.0")
    add("chunk2", 5, "BAJ.BC_1_EV", source_latitude="32.2", source_longitude="-116.5")
    nan = raw[meta.iloc[6]["trace_name"]][()].copy()
    nan[100:110, 1] = np.nan
    add("chunk2", 6, "NAN.TA_1_EV", data=nan)
    add("chunk2", 7, "SHORT.TA_1_EV", data=raw[meta.iloc[7]["trace_name"]][:5999])
    add("chunk2", 8, "NOCOORD.TA_1_EV", receiver_latitude="None")
    add("chunk2", 0, "DUP.TA_20100101000000_EV")
    paths = {}
    for chunk, items in chunks.items():
        h5, csv = tmp_path / f"{chunk}.hdf5", tmp_path / f"{chunk}.csv"
        with h5py.File(h5, "w") as fh:
            for row, data, attrs in items:
                dset = fh.create_dataset(f"data/{row['trace_name']}", data=data)
                for key, value in attrs.items():
                    dset.attrs[key] = value
        rows = pd.DataFrame([r for r, _, _ in items])
        if chunk == "chunk2":   # listed in the CSV, absent from the HDF5 file
            ghost = rows.iloc[0].copy()
            ghost["trace_name"] = "GHOST.TA_1_EV"
            rows = pd.concat([rows, ghost.to_frame().T])
        rows.to_csv(csv, index=False)
        paths[chunk] = (str(h5), str(csv))
    return paths, [meta.iloc[i]["trace_name"] for i in range(10)]


def _number_or_text(value):
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def pytest_collection_modifyitems(items):
    """A test that uses the shared training run (``trained``, directly or through
    another fixture) trains a model: it belongs to the slow tier whatever its marks."""
    for item in items:
        if "trained" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def full_disk_at_second_history_write():
    """A stand-in for ``files.atomic_write_text`` whose second write of a history.csv
    fails as a full disk does (ENOSPC); every other write goes through."""
    import errno

    from utrans_loc import files

    original, calls = files.atomic_write_text, {"history": 0}

    def write(path, text):
        if str(path).endswith("history.csv"):
            calls["history"] += 1
            if calls["history"] == 2:
                raise OSError(errno.ENOSPC, f"could not write {path} (No space left on device)")
        return original(path, text)

    return write
