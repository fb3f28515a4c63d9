"""EqT_utils_Loc_California.py: labels, normalisation, augmentations, DataGenerator /
DataGeneratorPrediction, the learning-rate schedule and the location model."""

import math
import os

import h5py
import keras
import numpy as np
import pytest
from conftest import PARITY, need, rng
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints, splits

HIGH_SNR = np.array([30.0, 30.0, 30.0])
LOW_SNR = np.array([30.0, 8.0, 30.0])
CALIFORNIA = dict(augmentation=True, shift_event_r=0.99, add_noise_r=0.5, drop_channe_r=0.1)


def _wave(seed=0, n=6000):
    r = rng(seed)
    return (r.standard_normal((n, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.5]).astype(np.float32)


# ----------------------------------------------------------------- normalisation
def test_std_normalisation_per_channel():
    x = U.normalize(_wave())
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-5)


def test_zero_and_constant_channels_become_zero_not_nan():
    w = _wave()
    w[:, 0] = 0.0
    w[:, 2] = 7.5
    x = U.normalize(w)
    assert np.isfinite(x).all()
    assert (x[:, 0] == 0).all() and (x[:, 2] == 0).all()
    np.testing.assert_allclose(x[:, 1].std(), 1.0, atol=1e-5)


def test_batch_normalisation_equals_per_trace_and_max_mode():
    batch = np.stack([_wave(1), _wave(2)])
    np.testing.assert_array_equal(U.normalize(batch)[1], U.normalize(batch[1]))
    np.testing.assert_allclose(U.normalize(batch[0], "max").max(axis=0), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="normalization mode"):
        U.normalize(batch, "l2")


def test_normalisation_reproduces_upstream_inputs():
    ref = np.load(need(PARITY / "location_ref.npz"))
    with h5py.File(need(PARITY / "collected_50.hdf5"), "r") as fh:
        raw = np.stack([fh[t]["data"][()] for t in ref["trace_name"]])
    np.testing.assert_allclose(U.normalize(raw), ref["x"], atol=1e-6)


# ----------------------------------------------------------------- augmentations
def test_shift_is_circular_within_coda_limit():
    w = _wave()
    for seed in range(5):
        out = U.shift_event(w, coda_end=4000, rate=1.0, rng=rng(seed))
        n = next(k for k in range(1, 6000) if np.array_equal(np.roll(w, k, axis=0), out))
        assert 1 <= n < 2000
    assert U.shift_event(w, 4000, rate=0.0, rng=rng()) is w
    assert U.shift_event(w, math.nan, rate=1.0, rng=rng()) is w


def test_noise_only_when_every_snr_at_least_10db():
    w = _wave()
    assert U.add_noise(w, LOW_SNR, 1.0, rng()) is w
    noisy = U.add_noise(w, HIGH_SNR, 1.0, rng())
    diff = noisy - w
    peak = np.abs(w).max(axis=0)
    assert (diff.std(axis=0) >= 0.009 * peak).all() and (diff.std(axis=0) <= 0.16 * peak).all()


def test_drop_channel_zeroes_and_rescales():
    w = _wave()
    assert U.drop_channel(w, LOW_SNR, 1.0, rng()) is w
    seen_drop = False
    for seed in range(20):
        out = U.drop_channel(w, HIGH_SNR, 1.0, rng(seed))
        live = np.abs(out).max(axis=0) > 0
        assert live.any()
        if not live.all():
            seen_drop = True
            k = live.sum()
            np.testing.assert_allclose(out[:, live], w[:, live] * 3 / k, rtol=1e-6)
    assert seen_drop


def test_scale_amplitude_preemphasis_gaps_add_event():
    w = _wave()
    ratios = {round(float((U.scale_amplitude(w, 0.5, rng(s)) / w)[0, 0]), 6) for s in range(20)}
    assert all(1 / 3 <= r <= 3 for r in ratios) and len(ratios) > 2
    pe = U.pre_emphasis(w)
    np.testing.assert_allclose(pe[1:], w[1:] - 0.97 * w[:-1], rtol=1e-6)
    gapped = U.add_gaps(w, 1.0, rng(1))
    zero_rows = (gapped == 0).all(axis=1)
    assert zero_rows.sum() == np.diff(np.flatnonzero(np.diff(np.r_[0, zero_rows, 0]))).max()
    added = U.add_event(w, 500, 900, 2000, HIGH_SNR, 1.0, rng(2))
    assert np.array_equal(added[:2000], w[:2000]) and not np.array_equal(added, w)
    assert U.add_event(w, 500, 900, 2000, LOW_SNR, 1.0, rng(2)) is w


def test_picks_follow_the_shift_and_wrapped_picks_are_dropped():
    meta = {"p_arrival": 1000.0, "s_arrival": 1500.0, "coda_end": 3000.0, "snr": HIGH_SNR}
    moved = U.shifted_picks(meta, 2500, 6000)
    assert (moved["p_arrival"], moved["s_arrival"], moved["coda_end"]) == (3500, 4000, 5500)
    w = _wave()
    out, shift = U.shift_event(w, 3000, 1.0, rng(4), return_shift=True)
    np.testing.assert_array_equal(out, np.roll(w, shift, axis=0))
    # a wrapped pick stops add_event (nothing to copy from a known P onset)
    wrapped = U.shifted_picks(meta, 5200, 6000)
    assert math.isnan(wrapped["p_arrival"])
    assert U.add_event(w, wrapped["p_arrival"], wrapped["s_arrival"], wrapped["coda_end"],
                       HIGH_SNR, 1.0, rng(0)) is w


# ----------------------------------------------------------------- labels
def test_labels_match_upstream_and_invert():
    ref = np.load(need(PARITY / "location_ref.npz"))
    with h5py.File(need(PARITY / "collected_50.hdf5"), "r") as fh:
        y = np.stack([U.location_label(fh[t].attrs, t) for t in ref["trace_name"]])
        st_lat = np.array([fh[t].attrs["station_lat"] for t in ref["trace_name"]])
        st_lon = np.array([fh[t].attrs["station_long"] for t in ref["trace_name"]])
        depth = np.array([fh[t].attrs["depth"] for t in ref["trace_name"]], float)
    np.testing.assert_allclose(y, ref["y"], atol=1e-6)
    lat, lon, dep = U.prediction_to_location(st_lat, st_lon, y)
    np.testing.assert_allclose(dep, np.maximum(depth, 0), atol=1e-4)
    assert U.depth_to_label(-3.0) == U.depth_to_label(0.0)


def test_label_errors_name_the_trace():
    attrs = {"station_lat": 34.0, "station_long": -118.0, "event_lat": "None",
             "event_long": -117.0, "depth": 5.0}
    with pytest.raises(U.TraceError, match="TR.X_1.*event_lat"):
        U.location_label(attrs, "TR.X_1")
    assert math.isnan(U.attr_float({"depth": "None"}, "depth"))
    assert U.attr_float({"coda": np.array([[42.0]])}, "coda") == 42.0
    np.testing.assert_allclose(U.attr_snr({"snr_db": "[56.8 55.4 47.4]"}), [56.8, 55.4, 47.4])


# ----------------------------------------------------------------- generator
def _gen(synthetic, **kw):
    ids = np.load(synthetic["train"])
    return U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, seed=0, **kw), ids


def test_generator_without_augmentation(synthetic):
    gen, ids = _gen(synthetic, shuffle=False)
    assert len(gen) == len(ids) // 8
    x, y = gen[0]
    assert x.shape == (8, 6000, 3) and y.shape == (8, 3)
    assert len(set(gen.batch_ids(0))) == 8
    with h5py.File(synthetic["hdf5"], "r") as fh:
        for i, t in enumerate(ids[:8]):
            np.testing.assert_array_equal(x[i], U.normalize(fh[t]["data"][()]))
            np.testing.assert_allclose(y[i], U.location_label(fh[t].attrs, t))
    assert (0 <= y[:, 2]).all() and (y[:, 2] <= 1).all()


def test_half_batch_augmentation_semantics(synthetic):
    gen, ids = _gen(synthetic, augmentation=True, add_noise_r=1.0, drop_channe_r=1.0)
    assert len(gen) == 2 * (len(ids) // 8)
    batch = gen.batch_ids(0)
    np.testing.assert_array_equal(batch[:4], batch[4:])
    x, y = gen[0]
    np.testing.assert_array_equal(y[:4], y[4:])
    with h5py.File(synthetic["hdf5"], "r") as fh:
        clean = np.stack([U.normalize(fh[t]["data"][()]) for t in batch[:4]])
    # no shift rate: the first copy is only normalised, the second gets the chain
    np.testing.assert_array_equal(x[:4], clean)
    assert not np.allclose(x[4:], clean)
    np.testing.assert_allclose(x.std(axis=1)[np.abs(x).max(axis=1) > 0], 1.0, atol=1e-4)


def test_first_copy_is_only_shifted(synthetic):
    gen, _ = _gen(synthetic, augmentation=True, shift_event_r=1.0, add_noise_r=1.0)
    x, _ = gen[0]
    ids = gen.batch_ids(0)
    with h5py.File(synthetic["hdf5"], "r") as fh:
        for i in range(4):
            clean = U.normalize(fh[ids[i]]["data"][()])
            assert any(np.allclose(np.roll(clean, k, axis=0), x[i], atol=1e-5)
                       for k in range(0, 6000))


def test_generator_rejects_small_splits_and_unknown_ids(synthetic):
    ids = np.load(synthetic["train"])
    with pytest.raises(ValueError, match="smaller than one batch"):
        U.DataGenerator(ids[:3], synthetic["hdf5"], batch_size=8)
    with pytest.raises(U.TraceError, match="NOT_A_TRACE"):
        splits.read_metadata(synthetic["hdf5"], list(ids[:2]) + ["NOT_A_TRACE"])


def test_prediction_generator_keeps_every_trace_in_order(synthetic):
    ids = np.load(synthetic["test"])[:11]
    gen = U.DataGeneratorPrediction(ids, synthetic["hdf5"], batch_size=4)
    assert len(gen) == 3
    assert sum(len(gen[i][0]) for i in range(len(gen))) == 11


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
    rates = {k: v for k, v in CALIFORNIA.items() if k != "augmentation"}
    first = [U.shift_event(r, m["coda_end"], rates["shift_event_r"] / 2, rng)
             for r, m in zip(raw, metas)]
    second = [U.augment_event(r.copy(), m, rng, **rates) for r, m in zip(raw, metas)]
    expected = U.normalize(np.stack(first + second))
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(y[:4], y[4:])
    assert not np.array_equal(x[:4], x[4:])       # the augmentation did something


def test_augmentations_are_one_list_built_once_in_upstream_order():
    chain = U.build_augmentations(shift_event_r=0.99, add_event_r=0.3, add_noise_r=0.5,
                                  drop_channel_r=0.1, scale_amplitude_r=0.5, pre_emphasis=True,
                                  add_gap_r=0.2)
    assert str(chain) == ("[ShiftEvent(rate=0.99), AddEvent(rate=0.3), AddNoise(rate=0.5), "
                          "DropChannel(rate=0.1), ScaleAmplitude(rate=0.5), "
                          "PreEmphasis(coeff=0.97), AddGap(rate=0.2)]")
    assert U.build_augmentations() == [] and U.build_augmentations(add_noise_r=0) == []
    california = U.build_augmentations(**U.CALIFORNIA_AUGMENTATION)
    assert str(california) == "[ShiftEvent(rate=0.99), AddNoise(rate=0.5), DropChannel(rate=0.1)]"
    # the first copy of a half batch: the shift at half rate, nothing else
    assert str(U.first_copy_chain(chain)) == "[ShiftEvent(rate=0.495)]"


def test_generator_takes_a_list_or_the_upstream_keywords_alike(synthetic):
    ids = np.load(synthetic["train"])
    upstream = U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, seed=4, label_type="any",
                               add_event_r=0.5, scale_amplitude_r=0.5, pre_emphasis=True,
                               add_gap_r=0.5, **CALIFORNIA)
    chain = U.build_augmentations(add_event_r=0.5, scale_amplitude_r=0.5, pre_emphasis=True,
                                  add_gap_r=0.5, **U.CALIFORNIA_AUGMENTATION)
    listed = U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, seed=4, augmentation=True,
                             augmentations=chain)
    assert str(upstream.augmentations) == str(chain)
    assert not hasattr(upstream, "label_type")          # accepted, kept nowhere
    for (xa, ya), (xb, yb) in zip(_batches(upstream, 3), _batches(listed, 3)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match="drop_channe_r.*not both"):
        U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, augmentations=chain,
                        drop_channe_r=0.1)
    with pytest.raises(ValueError, match=r"augmentations\[1\] \(0\.5\) is not callable"):
        U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, augmentations=[chain[0], 0.5])


def test_generator_applies_any_transform_without_knowing_it(synthetic):
    """A plain function is a transform: the second copies get it, the first copies
    (no ``first_copy``) are only normalised."""
    def silence_z(data, meta, rng):
        data = data.copy()
        data[:, 2] = 0.0
        return data, meta

    gen, _ = _gen(synthetic, augmentation=True, augmentations=[silence_z])
    x, _ = gen[0]
    batch = gen.batch_ids(0)
    with h5py.File(synthetic["hdf5"], "r") as fh:
        clean = np.stack([U.normalize(fh[t]["data"][()]) for t in batch[:4]])
    np.testing.assert_array_equal(x[:4], clean)
    assert (x[4:, :, 2] == 0).all()
    np.testing.assert_array_equal(x[4:, :, :2], clean[:, :, :2])


# ----------------------------------------------------------------- learning rate
def test_lr_schedule_upstream_values():
    assert U.lr_schedule(0) == 1e-4 and U.lr_schedule(20) == 1e-4
    assert math.isclose(U.lr_schedule(21), 1e-5)
    assert math.isclose(U.lr_schedule(41), 1e-6)
    assert math.isclose(U.lr_schedule(61), 1e-7)
    assert math.isclose(U.lr_schedule(91), 5e-8)
    assert math.isclose(U.lr_schedule(5, base_lr=1e-3), 1e-3)


def test_plateau_reductions_survive_the_schedule():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1.0), loss="mse")
    cb = U.ScheduleWithPlateau(1e-4, patience=2, verbose=0)
    cb.set_model(model)
    for epoch, loss in enumerate([1.0, 1.1, 1.2, 1.3]):  # one reduction, after 2 bad epochs
        cb.on_epoch_begin(epoch)
        used, logs = cb.lr_for(epoch), {"val_loss": loss}
        cb.on_epoch_end(epoch, logs)
        assert math.isclose(logs["learning_rate"], used, rel_tol=1e-6)
    assert math.isclose(cb.scale, math.sqrt(0.1))
    cb.on_epoch_begin(5)
    assert math.isclose(float(model.optimizer.learning_rate), 1e-4 * math.sqrt(0.1), rel_tol=1e-6)
    assert math.isclose(cb.lr_for(25), 1e-5 * math.sqrt(0.1))
    cb.scale = 1e-9
    assert cb.lr_for(0) == cb.min_lr


# ----------------------------------------------------------------- model
def test_published_location_model_size():
    model = U.build_location_model()
    assert model.count_params() == 4_079_659
    assert model.output_shape == (None, 3)
    assert model.get_layer("output_layer").dtype_policy.compute_dtype == "float32"
    assert checkpoints.infer_head_from_legacy_h5(need(PARITY / "location_ckpt_keras2.h5")) == {
        "convmixer_filters": 512, "convmixer_depth": 10, "convmixer_kernel": 13,
        "convmixer_patch": 10}


# ----------------------------------------------------------------- properties
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
waves = arrays(np.float32, st.tuples(st.integers(8, 300), st.just(3)), elements=finite)


@settings(max_examples=60, deadline=None)
@given(waves)
def test_normalize_is_finite_and_standard(data):
    x = U.normalize(data)
    assert x.shape == data.shape and np.isfinite(x).all()
    std = x.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-6))


@settings(max_examples=60, deadline=None)
@given(waves, st.integers(0, 2**31 - 1), st.floats(0, 60), st.booleans())
def test_augmentation_chain_keeps_shape_and_finiteness(data, seed, snr, emphasis):
    n = len(data)
    meta = {"p_arrival": n * 0.1, "s_arrival": n * 0.2, "coda_end": n * 0.5,
            "snr": np.full(3, snr)}
    out = U.augment_event(data.copy(), meta, np.random.default_rng(seed), shift_event_r=0.99,
                          add_event_r=0.5, add_noise_r=0.5, drop_channe_r=0.5,
                          scale_amplitude_r=0.5, pre_emphasis_on=emphasis, add_gap_r=0.5)
    assert out.shape == data.shape and np.isfinite(out).all()
    assert np.isfinite(U.normalize(out)).all()


def test_epoch_stream_serves_fits_batches_in_order_without_moving_the_generator(synthetic):
    gen, _ = _gen(synthetic, augmentation=True, shift_event_r=0.9, add_noise_r=0.5)
    steps = len(gen)
    stream = U.EpochStream(gen)
    assert stream.num_batches is None and stream.steps_per_epoch == steps
    assert stream.start_epoch == 1   # fit(gen) began with the generator's epoch 1
    # Stream batch i is batch i % steps of epoch 1 + i // steps: the same arrays
    # as the generator positioned at that epoch, whatever order they are read in.
    reads = [2 * steps + 1, 0, steps - 1, steps]
    served = {i: stream[i] for i in reads}
    assert gen.epoch == 0                      # reading never moves the generator
    for i in reads:
        epoch, index = 1 + i // steps, i % steps
        gen.set_epoch(epoch)
        x, y = gen[index]
        np.testing.assert_array_equal(served[i][0], x)
        np.testing.assert_array_equal(served[i][1], y)
        np.testing.assert_array_equal(stream.batch_ids(i), gen.batch_ids(index))
    # Epochs differ (shuffle, augmentation draws); a resumed generator's stream
    # starts after the epochs done.
    assert not np.array_equal(stream[0][0], stream[steps][0])
    gen.set_epoch(5)
    assert U.EpochStream(gen).position(0) == (6, 0)
    assert U.EpochStream(gen, start_epoch=2).position(steps + 3) == (3, 3)


def test_cpu_memory_pooling_keeps_a_users_setting(monkeypatch):
    from utrans_loc import devices

    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
    applied = devices.pool_cpu_memory()
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    import platform
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied is True                 # every mallopt call accepted
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "false")
    devices.pool_cpu_memory()
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "false"
