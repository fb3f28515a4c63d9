"""Throughput features: the fast generator paths give the same batches, preload
mode, mixed precision, tester timings and padding, trainer timing columns."""

import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import PARITY, ROOT, SMALL_HEAD, need, working_dir

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints, devices, splits, traces
import tester1 as te
import trainer1 as t1

CALIFORNIA = dict(augmentation=True, shift_event_r=0.99, add_noise_r=0.5, drop_channe_r=0.1)


def _batches(gen, n=4):
    return [gen[i] for i in range(min(n, len(gen)))]


def test_metadata_table_and_preload_give_the_same_batches(synthetic):
    ids = np.load(synthetic["train"])
    meta = splits.read_metadata(synthetic["hdf5"], ids)
    kw = dict(batch_size=8, seed=11, **CALIFORNIA)
    lazy = _batches(U.DataGenerator(ids, synthetic["hdf5"], **kw))
    for other in (U.DataGenerator(ids, synthetic["hdf5"], metadata=meta, **kw),
                  U.DataGenerator(ids, synthetic["hdf5"], preload=True, **kw)):
        for (xa, ya), (xb, yb) in zip(lazy, _batches(other)):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    # the labels equal the per-trace attribute path
    gen = U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, shuffle=False, metadata=meta)
    import h5py
    with h5py.File(synthetic["hdf5"], "r") as fh:
        expected = np.stack([U.location_label(fh[t].attrs, t) for t in ids[:8]])
    np.testing.assert_array_equal(gen[0][1], expected)


def test_both_halves_are_augmented_from_the_same_raw_traces(synthetic):
    """UTRANS_SPEC section 5 order, rebuilt from the public transforms: the first
    half is shifted at half the rate, the second half gets the full chain from
    the raw trace (not from the shifted first half), then all is normalised."""
    import h5py
    ids = np.load(synthetic["train"])
    seed, index = 2, 1
    gen = U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, seed=seed, **CALIFORNIA)
    x, y = gen[index]
    batch = gen.batch_ids(index)
    rng = np.random.default_rng([seed, 0, index])
    with h5py.File(synthetic["hdf5"], "r") as fh:
        raw = [fh[t]["data"][()].astype(np.float32) for t in batch[:4]]
        metas = [U.trace_meta(fh[t].attrs) for t in batch[:4]]
    for meta in metas:
        meta["snr"] = np.min(meta["snr"])
    rates = gen.rates
    first = [U.shift_event(r, m["coda_end"], rates["shift_event_r"] / 2, rng)
             for r, m in zip(raw, metas)]
    second = [U.augment_event(r.copy(), m, rng, **rates) for r, m in zip(raw, metas)]
    expected = U.normalize(np.stack(first + second))
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(y[:4], y[4:])
    assert not np.array_equal(x[:4], x[4:])       # the augmentation did something


def test_preload_refuses_over_the_limit_naming_file_and_size(synthetic):
    ids = np.load(synthetic["train"])
    with pytest.raises(ValueError, match=r"syn\.hdf5\) needs 0\.\d+ GB, more than max_preload_gb"):
        U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, preload=True, max_preload_gb=0.001)
    assert traces.preload_size_gb(1000, (6000, 3)) == pytest.approx(0.072)


def test_preload_names_a_nan_trace_before_training(synthetic, tmp_path):
    import shutil

    import h5py
    ids = np.load(synthetic["train"])
    broken = tmp_path / "nan.hdf5"
    shutil.copy(synthetic["hdf5"], broken)
    with h5py.File(broken, "r+") as fh:
        fh[ids[3]]["data"][10, 0] = np.inf
    with pytest.raises(U.TraceError, match=f"'{ids[3]}'.*NaN/Inf") as failure:
        U.DataGenerator(ids, broken, batch_size=8, preload=True)
    # The failed preload closed its file, even while its traceback (which holds
    # the reader) lives: HDF5 refuses r+ on a file this process has open.
    with h5py.File(broken, "r+"):
        pass
    assert failure.traceback


def test_preload_limit_counts_training_and_validation_together(synthetic, tmp_path):
    n_train, n_valid = (len(np.load(synthetic[k])) for k in ("train", "valid"))
    limit = traces.preload_size_gb(n_train + n_valid // 2, (6000, 3))   # fits either split alone
    with working_dir(tmp_path):
        with pytest.raises(ValueError, match=r"syn\.hdf5, training and validation sets\) needs"):
            t1.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                        input_validset=synthetic["valid"], output_name="both",
                        mode="pre_load_generator", max_preload_gb=limit, batch_size=8,
                        epochs=1, foundation_weights="none", verbose=0, **SMALL_HEAD)
        assert not os.path.exists("both_outputs")


def test_available_memory_is_positive_where_readable():
    free = traces.available_memory_gb()
    assert free is None or free > 0
    with pytest.raises(ValueError, match=r"needs .* only .* GB of memory is available"):
        traces.check_preload(10**9, (6000, 3), 10**9, "a huge split")


def test_traces_stored_as_datasets_named_by_the_id(synthetic, tmp_path):
    """Older DataCollected files keep each waveform as a dataset at the root."""
    import h5py
    ids = np.load(synthetic["train"])[:8]
    flat = tmp_path / "flat.hdf5"
    with h5py.File(synthetic["hdf5"], "r") as src, h5py.File(flat, "w") as dst:
        for t in ids:
            dset = dst.create_dataset(t, data=src[t]["data"][()])
            dset.attrs.update(src[t].attrs)
    x_flat, y_flat = U.DataGenerator(ids, flat, batch_size=8, shuffle=False)[0]
    x, y = U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, shuffle=False)[0]
    np.testing.assert_array_equal(x_flat, x)
    np.testing.assert_array_equal(y_flat, y)


def test_trainer_preload_mode_and_timing_columns(synthetic, tmp_path):
    with working_dir(tmp_path):
        result = t1.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                             input_validset=synthetic["valid"], output_name="pre",
                             mode="pre_load_generator", batch_size=8, epochs=1,
                             foundation_weights="none", seed=1, verbose=0, **SMALL_HEAD)
        with pytest.raises(ValueError, match="max_preload_gb=0.0001"):
            t1.trainer1(input_hdf5=synthetic["hdf5"], input_trainset=synthetic["train"],
                        input_validset=synthetic["valid"], output_name="pre2",
                        mode="pre_load_generator", max_preload_gb=0.0001, batch_size=8,
                        epochs=1, foundation_weights="none", verbose=0, **SMALL_HEAD)
    history = pd.read_csv(os.path.join(result["output_dir"], "history.csv"))
    row = history.iloc[0]
    assert 0 < row["train_time_s"] < row["epoch_time_s"]     # validation is outside
    # traces through the model: with augmentation each id appears twice per epoch
    n_train = 2 * (len(np.load(synthetic["train"])) // 8) * 8
    assert row["train_traces_per_s"] == pytest.approx(n_train / row["train_time_s"])
    assert "mode: pre_load_generator" in open(os.path.join(result["output_dir"],
                                                           "X_report.txt")).read()


def test_bfloat16_predictions_within_1e_2_of_float32():
    """Same weights (the upstream location checkpoint), 50 real traces."""
    ckpt = need(PARITY / "location_ckpt_keras2.h5")
    x = np.load(need(PARITY / "location_ref.npz"))["x"]
    head = checkpoints.infer_head_from_legacy_h5(ckpt)
    pred = {}
    for precision in ("off", "bfloat16"):
        with devices.precision_policy(precision):
            model = U.build_location_model(**head)
        checkpoints.load_location_weights(model, ckpt)
        assert model.get_layer("output_layer").compute_dtype == "float32"
        assert model.layers[-2].compute_dtype == ("float32" if precision == "off" else "bfloat16")
        pred[precision] = np.asarray(model.predict(x, batch_size=25, verbose=0))
    assert keras.config.dtype_policy().name == "float32"        # policy restored
    assert pred["bfloat16"].dtype == np.float32
    diff = pred["bfloat16"] - pred["off"]
    assert 0 < np.linalg.norm(diff) / np.linalg.norm(pred["off"]) < 1e-2
    with pytest.raises(ValueError, match="mixed_precision"):
        with devices.precision_policy("fp8"):
            pass


def test_float16_training_uses_loss_scaling(synthetic):
    ids = np.load(synthetic["train"])
    x, y = U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, seed=0)[0]
    with devices.precision_policy("float16"):
        model = U.build_location_model(**SMALL_HEAD)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    losses = [float(np.asarray(model.train_on_batch(x, y))) for _ in range(3)]
    assert np.isfinite(losses).all()


def test_tester_pads_the_last_batch_and_reports_timings(trained, synthetic, tmp_path):
    ids = np.load(synthetic["test"])[:13]
    model = U.build_location_model(**SMALL_HEAD)
    checkpoints.load_location_weights(model, trained["best_weights"])
    whole = np.asarray(model.predict_on_batch(U.DataGeneratorPrediction(
        ids, synthetic["hdf5"], batch_size=13)[0][0]))
    timings = {}
    padded = te.predict_samples(model, U.DataGeneratorPrediction(ids, synthetic["hdf5"],
                                                                 batch_size=5),
                                progress=False, timings=timings)
    assert padded.shape == (13, 3)
    np.testing.assert_allclose(padded, whole, rtol=1e-5, atol=1e-6)
    assert timings["compile_s"] > 0 and timings["predict_s"] > 0
    # the warm-up compile leaves the Monte-Carlo samples of a seed unchanged
    gen = lambda: U.DataGeneratorPrediction(ids, synthetic["hdf5"], batch_size=5)  # noqa: E731
    plain = te.predict_samples(model, gen(), n_samples=3, seed=5, progress=False)
    timed = te.predict_samples(model, gen(), n_samples=3, seed=5, progress=False, timings={})
    np.testing.assert_array_equal(plain, timed)
    assert not np.array_equal(plain[0], plain[1])
    np.save(tmp_path / "test.npy", ids)
    with working_dir(tmp_path):
        out = te.tester1(input_hdf5=synthetic["hdf5"], input_testset=str(tmp_path / "test.npy"),
                         input_model=trained["best_weights"], output_name="timed", batch_size=5,
                         verbose=0)
    report = open(os.path.join(out["output_dir"], "X_report.txt")).read()
    for key in ("time_setup_s:", "time_compile_s:", "time_predict_s:", "time_write_s:",
                "traces_per_s_after_setup:"):
        assert key in report


def test_benchmark_help_runs():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--precision" in out.stdout and "(a)" in out.stdout
