"""utrans_loc/traces.py: the HDF5 layouts (DataCollected, released and older STEAD,
root-level datasets), STEAD attributes under the upstream names, preloading and its
memory checks."""

import re

import h5py
import numpy as np
import pytest
from conftest import (PARITY, STEAD_SAMPLE, UPSTREAM_ATTRS, need, released_stead_pair,
                      scipy_reference, start_script)

import EqT_utils_Loc_California as U
from utrans_loc import splits, traces


# ----------------------------------------------------------------- layouts
def test_stead_attributes_map_to_the_upstream_names():
    ids = np.load(need(PARITY / "collected_50_ids.npy"))
    reader = traces.H5Reader(need(STEAD_SAMPLE))
    assert reader.layout == traces.LAYOUT_STEAD_OLD
    with h5py.File(need(PARITY / "collected_50.hdf5"), "r") as ref:
        for cid in ids:
            name = re.sub(r"_\d{5}_EV$", "_EV", cid)
            mapped, expected = reader.attrs(name), ref[cid].attrs
            for key in expected:
                np.testing.assert_array_equal(mapped[key], expected[key], err_msg=key)
                assert np.asarray(mapped[key]).dtype == np.asarray(expected[key]).dtype, key
            assert mapped["source_id"] and mapped["network_code"] == "TA"
    reader.close()

    odd = {"receiver_latitude": b"33.5", "receiver_longitude": np.float32(-117.0),
           "source_latitude": "None", "source_longitude": np.nan, "source_depth_km": "",
           "coda_end_sample": np.array([[2896.0]]), "snr_db": "[56.8 55.4 47.4]",
           "source_id": 8556349, "trace_category": "noise"}
    out = traces.stead_to_upstream(odd)
    assert out["station_lat"] == 33.5 and out["station_long"] == np.float32(-117.0)
    assert out["event_lat"] == out["event_long"] == out["depth"] == out["magnitude"] == "None"
    assert out["coda_end_sample"] == 2896.0 and np.ndim(out["coda_end_sample"]) == 0
    np.testing.assert_allclose(out["snr_db"], [56.8, 55.4, 47.4])
    assert (out["data_category"], out["event_label"], out["AI_Set"], out["P_polarity"]) == \
        ("noise", 0, "STEAD", "None")
    assert out["source_id"] == "8556349" and out["trace_start_time"] == "None"
    assert traces.stead_to_upstream({}, category="earthquake_local")["data_category"] == "earthquake"
    assert set(UPSTREAM_ATTRS) <= set(out)


def test_generator_reads_the_older_stead_layout_directly():
    ids = np.load(need(PARITY / "collected_50_ids.npy"))[:8]
    names = [re.sub(r"_\d{5}_EV$", "_EV", c) for c in ids]
    common = dict(batch_size=8, shuffle=False, augmentation=False)
    x_ref, y_ref = U.DataGenerator(ids, need(PARITY / "collected_50.hdf5"), **common)[0]
    x, y = U.DataGenerator(names, need(STEAD_SAMPLE), **common)[0]
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)

    xb, _ = U.DataGenerator(names, STEAD_SAMPLE, bandpass=True, **common)[0]
    with h5py.File(STEAD_SAMPLE, "r") as fh:
        raw = fh[f"earthquake/local/{names[3]}"][()]
    np.testing.assert_allclose(xb[3], U.normalize(scipy_reference(raw)), atol=1e-5)
    (xp,) = U.DataGeneratorPrediction(names, STEAD_SAMPLE, batch_size=8, bandpass=True)[0]
    np.testing.assert_array_equal(xp, xb)

    meta = splits.check_split(STEAD_SAMPLE, names, "test split", U.MAX_D, U.MIN_D)
    assert np.isfinite(meta[["event_lat", "depth_km", "snr_db", "source_distance_km"]]
                       .to_numpy(float)).all()


def test_generator_reads_the_released_layout_and_rejects_noise(tmp_path):
    (noise_h5, _), (eq_h5, _) = released_stead_pair(tmp_path)[0].values()
    assert traces.H5Reader(eq_h5).layout == traces.LAYOUT_STEAD
    names = ["TWO.CI_20060723155859_EV", "NEV.NN_1_EV"]
    x, y = U.DataGenerator(names, eq_h5, batch_size=2, shuffle=False)[0]
    assert x.shape == (2, 6000, 3) and np.isfinite(y).all()
    with pytest.raises(U.TraceError, match="NOI0.TA_20100101000000_NO"):
        splits.check_split(noise_h5, ["NOI0.TA_20100101000000_NO"], "input_trainset", U.MAX_D,
                           U.MIN_D)
    with pytest.raises(U.TraceError, match="not in"):
        splits.read_metadata(eq_h5, ["NOPE_EV"])


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


# ----------------------------------------------------------------- preloading
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


def test_available_memory_is_positive_where_readable():
    free = traces.available_memory_gb()
    assert free is None or free > 0
    with pytest.raises(ValueError, match=r"needs .* only .* GB of memory is available"):
        traces.check_preload(10**9, (6000, 3), 10**9, "a huge split")


def test_an_hdf5_file_open_for_writing_elsewhere_is_named_as_locked(tmp_path):
    path = tmp_path / "being_written.hdf5"
    with h5py.File(path, "w") as fh:
        fh["x"] = np.zeros(3)
    writer = start_script("-c", f"import h5py, time; f = h5py.File({str(path)!r}, 'a'); "
                                "print('open', flush=True); time.sleep(60)")
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(ValueError, match="being_written.hdf5: is open for writing by another "
                                             "process"):
            traces.H5Reader(path).file
        with pytest.raises(ValueError, match="open for writing by another process"):
            splits.read_metadata(path, ["x"])
    finally:
        writer.kill()
        writer.wait()
