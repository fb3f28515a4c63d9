"""Shared test setup: import paths, fixture files, small synthetic data."""

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
for sub in ("", "00_data", "01_train", "02_test", "03_read"):
    sys.path.insert(0, str(ROOT / sub))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# UTRANS_FIXTURES lets a run point elsewhere (or nowhere, to check the skips).
FIXTURES = Path(os.environ.get("UTRANS_FIXTURES", ROOT.parent / "shared" / "fixtures"))
FOUNDATION_H5 = FIXTURES / "utrans" / "UTrans_Foundation.h5"
STEAD_SAMPLE = FIXTURES / "stead_sample" / "waveforms.hdf5"
PARITY = FIXTURES / "upstream_parity"

# Small head used wherever a test trains: the published one is ~10x slower on CPU.
SMALL_HEAD = dict(convmixer_filters=16, convmixer_depth=2)


def need(path):
    """Skip the test (with the missing file named) when a fixture is absent."""
    if not Path(path).exists():
        pytest.skip(f"fixture not found: {path} (the tests expect ../shared/fixtures "
                    "beside the repository)")
    return str(path)


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
    import h5py
    with h5py.File(info["hdf5"], "r") as fh:
        info["noise_ids"] = [k for k in fh if fh[k].attrs["data_category"] == "noise"]
    return info


@pytest.fixture(scope="session")
def trained(synthetic, tmp_path_factory):
    """trainer1 run for 2 tiny epochs on the synthetic set (shared by several tests)."""
    import trainer1 as t1

    work = tmp_path_factory.mktemp("train")
    with working_dir(work):
        result = t1.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                             input_validset=synthetic["valid"], output_name="tiny",
                             batch_size=8, epochs=2, foundation_weights="none",
                             learning_rate=1e-3, seed=5, verbose=0, **SMALL_HEAD)
    result["work"] = work
    return result


def rng(seed=0):
    return np.random.default_rng(seed)
