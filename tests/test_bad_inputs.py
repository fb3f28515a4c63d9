"""Bad input to any stage script (trainer1, tester1, reader, build_california): exit
status 2, a one-line message naming the file or trace, and nothing changed; --debug
shows the traceback; an all-zero trace is not an error."""

import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest
from conftest import (BUILD, FOUNDATION_H5, READ, TEST, TRAIN, need, run_main, run_script,
                      working_dir)

import EqT_utils_Loc_California as U


def _hashes(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[path] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def bad(synthetic, tmp_path_factory):
    """A work folder with good and deliberately broken inputs."""
    work = tmp_path_factory.mktemp("bad")
    good = work / "good.hdf5"
    shutil.copy(synthetic["hdf5"], good)
    train = np.load(synthetic["train"])
    valid = np.load(synthetic["valid"])
    np.save(work / "train.npy", train)
    np.save(work / "valid.npy", valid)
    np.save(work / "test.npy", np.load(synthetic["test"]))
    np.save(work / "missing_id.npy", np.append(train, "NO_SUCH.TRACE_EV"))
    np.save(work / "noise.npy", np.append(train, synthetic["noise_ids"][0]))
    np.save(work / "empty.npy", np.array([], dtype=str))
    (work / "truncated.hdf5").write_bytes(good.read_bytes()[:len(good.read_bytes()) // 3])
    broken = work / "broken.hdf5"
    shutil.copy(good, broken)
    names = {}
    with h5py.File(broken, "r+") as fh:
        names["nan"], names["short"], names["zero"], names["no_lat"], names["none_depth"] = train[:5]
        fh[names["nan"]]["data"][100, 1] = np.nan
        del fh[names["short"]]["data"]
        fh[names["short"]]["data"] = np.ones((3000, 3), np.float32)
        fh[names["zero"]]["data"][...] = 0.0
        del fh[names["no_lat"]].attrs["event_lat"]
        fh[names["none_depth"]].attrs["depth"] = "None"
    for key, trace in names.items():
        # 48 ids = 6 full batches of 8: every id is read in the first epoch
        np.save(work / f"{key}.npy", np.concatenate([[trace], train[5:52]]))
    (work / "existing_outputs").mkdir()
    (work / "existing_outputs" / "result.txt").write_text("an earlier result")
    (work / "a_file").write_text("not a folder")
    return {"work": work, "names": names}


def _train_args(hdf5="good.hdf5", train="train.npy", name="run", *extra):
    return ["--input_hdf5", hdf5, "--input_trainset", train, "--input_validset", "valid.npy",
            "--output_name", name, "--foundation_weights", "none", "--epochs", "1",
            "--batch_size", "8", "--convmixer_filters", "16", "--convmixer_depth", "2", *extra]


def _test_args(model, hdf5="good.hdf5", test="test.npy", name="t", *extra):
    return ["--input_hdf5", hdf5, "--input_testset", test, "--input_model", model,
            "--output_name", name, *extra]


CASES = [
    # (id, script, args(bad, names, model), expected message fragments)
    ("missing_hdf5", TRAIN, lambda n, m: _train_args("absent.hdf5"), ["absent.hdf5", "not found"]),
    ("truncated_hdf5", TRAIN, lambda n, m: _train_args("truncated.hdf5"),
     ["truncated.hdf5", "not a readable HDF5"]),
    ("id_not_in_file", TRAIN, lambda n, m: _train_args(train="missing_id.npy"),
     ["NO_SUCH.TRACE_EV", "1 of"]),
    ("noise_in_split", TRAIN, lambda n, m: _train_args(train="noise.npy"), ["_NO", "lack"]),
    # found while training: the run's own new folder keeps its config, nothing else changes
    ("nan_trace", TRAIN, lambda n, m: _train_args("broken.hdf5", "nan.npy", "nanrun"),
     ["{nan}", "NaN"]),
    ("short_trace", TRAIN, lambda n, m: _train_args("broken.hdf5", "short.npy"),
     ["{short}", "(3000, 3)"]),
    ("missing_event_lat", TRAIN, lambda n, m: _train_args("broken.hdf5", "no_lat.npy"),
     ["{no_lat}"]),
    ("none_depth", TRAIN, lambda n, m: _train_args("broken.hdf5", "none_depth.npy"),
     ["{none_depth}"]),
    ("empty_split", TRAIN, lambda n, m: _train_args(train="empty.npy"), ["empty.npy", "empty"]),
    ("existing_output", TRAIN, lambda n, m: _train_args(name="existing"),
     ["existing_outputs already exists", "--resume"]),
    ("path_as_output_name", TRAIN, lambda n, m: _train_args(name="a_file/run"),
     ["'a_file/run'", "must be a plain name"]),
    ("negative_batch", TRAIN, lambda n, m: _train_args() + ["--batch_size", "-4"], ["batch_size"]),
    ("max_d_le_min_d", TRAIN, lambda n, m: _train_args() + ["--max_d", "1", "--min_d", "5"],
     ["max_d"]),
    ("missing_foundation", TRAIN, lambda n, m: _train_args()[:-8] + [
        "--foundation_weights", "nowhere/UTrans.h5"], ["nowhere/UTrans.h5"]),
    ("wrong_weights_file", TEST, lambda n, m: _test_args(need(FOUNDATION_H5)),
     ["UTrans_Foundation.h5"]),
    ("tester_negative_batch", TEST, lambda n, m: _test_args(m, "good.hdf5", "test.npy", "t2",
                                                            "--batch_size", "0"), ["batch_size"]),
    ("tester_short_trace", TEST, lambda n, m: _test_args(m, "broken.hdf5", "short.npy", "t3"),
     ["{short}", "(3000, 3)"]),
    ("tester_existing_output", TEST, lambda n, m: _test_args(m, name="existing"),
     ["already exists"]),
    ("reader_missing_folder", READ, lambda n, m: ["--input", "nowhere_outputs"],
     ["nowhere_outputs"]),
    ("builder_missing_input", BUILD, lambda n, m: [
        "--stead_hdf5", "absent_merge.hdf5", "--stead_csv", "absent_merge.csv",
        "--output_hdf5", "built.hdf5", "--output_dir", "built"], ["absent_merge"]),
]


# One case per script runs as a real process (exit status, stderr); the others call the
# script's main() in this process, which is the same code without the start-up cost.
IN_A_PROCESS = {"missing_hdf5", "tester_short_trace", "reader_missing_folder",
                "builder_missing_input"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_and_changes_nothing(case, bad, trained):
    name, script, make_args, fragments = case
    work = bad["work"]
    before = _hashes(work)
    run = (run_script if name in IN_A_PROCESS else run_main)(
        script, *make_args(bad["names"], trained["best_weights"]), cwd=work)
    assert run.returncode == 2, (run.stdout[-2000:], run.stderr[-2000:])
    message = run.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment.format(**bad["names"]) in message, message
    assert "Traceback" not in run.stderr
    after = _hashes(work)
    assert {k: v for k, v in after.items() if k in before} == before
    new = {p for p in set(after) - set(before) if "nanrun_outputs" not in p}
    assert not new, f"files left behind: {sorted(new)}"


def test_debug_flag_shows_the_traceback(bad):
    import trainer1

    with working_dir(bad["work"]), pytest.raises(FileNotFoundError, match="absent.hdf5"):
        trainer1.main([*_train_args("absent.hdf5"), "--debug"])   # raised, not turned into 2


@pytest.mark.slow
def test_zero_trace_trains_and_predicts_finite(bad, tmp_path):
    """An all-zero (or constant) trace is normalised to zeros, never NaN."""
    x, _ = U.DataGenerator(np.load(bad["work"] / "zero.npy"), bad["work"] / "broken.hdf5",
                           batch_size=8, shuffle=False)[0]
    assert np.isfinite(x).all() and (x[0] == 0).all()
