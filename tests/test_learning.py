"""Training that learns (issue 29): BatchNormalization statistics re-estimated on
clean batches, the monitored quantity, the cosine schedule; each option checked
on the objects it builds, and resumed runs that continue the schedule."""

import json
import os

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_HEAD, run_main, tiny_training, working_dir, TRAIN

import EqT_utils_Loc_California as U
from utrans_loc import batchnorm, run_state, training
import trainer1 as tr


def _bn_model():
    inp = keras.Input((20, 2))
    x = keras.layers.Dense(4, name="features")(inp)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Dense(3)(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    return keras.Model(inp, x)


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(3.0, 2.0, (8, 20, 2)).astype("float32") for _ in range(n)]


def test_recalibration_sets_the_average_batch_statistics_with_dropout_off():
    model = _bn_model()
    batches = _batches(4)
    weights = [w.copy() for w in model.get_weights()]
    features = [keras.ops.convert_to_numpy(model.get_layer("features")(b)) for b in batches]
    out = batchnorm.recalibrate(model, batches)
    bn = model.get_layer("bn1")
    assert out["n_batches"] == 4
    # the plain average of the four batches' statistics, computed without dropout
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean),
                               np.mean([f.mean(axis=(0, 1)) for f in features], axis=0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance),
                               np.mean([f.var(axis=(0, 1)) for f in features], axis=0),
                               rtol=1e-4)
    # it had drifted from the initial statistics (mean 0, variance 1) ...
    assert out["shift"][0] > 0.5 and len(out["shift"]) == 2
    # ... and settings and weights are as they were, except the moving statistics
    assert bn.momentum == 0.99 and model.get_layer("drop").rate == 0.5
    moving = {id(v) for layer in batchnorm.batch_norm_layers(model)
              for v in (layer.moving_mean, layer.moving_variance)}
    for before, var in zip(weights, model.weights):
        if id(var) not in moving:
            np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(var))
    # the same batches again: nothing left to correct
    again = batchnorm.recalibrate(model, batches)
    assert np.all(again["shift"] < 1e-4) and np.all(again["log_variance_ratio"] < 1e-4)


def test_frozen_batch_norm_layers_are_left_alone():
    model = _bn_model()
    model.get_layer("bn1").trainable = False
    batchnorm.recalibrate(model, _batches(2))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("bn1").moving_mean),
                                  np.zeros(4))
    assert batchnorm.batch_norm_layers(model) == [model.get_layer("bn2")]


class _CleanBatches:
    """A generator stand-in: records which (epoch, batch) the callback reads."""

    failure = None

    def __init__(self, n):
        self.n, self.calls = n, []

    def __len__(self):
        return self.n

    def batch_at(self, epoch, index):
        self.calls.append((epoch, index))
        return _batches(1, seed=10 * epoch + index)[0], None


def test_the_callback_recalibrates_once_per_epoch_before_validation_and_logs_the_drift():
    model, clean = _bn_model(), _CleanBatches(3)
    cb = batchnorm.RecalibrateBatchNorm(clean, n_batches=5)
    cb.set_model(model)
    cb.on_test_begin()                       # an evaluate() outside fit: nothing
    assert clean.calls == []
    cb.on_epoch_begin(2)
    cb.on_test_begin()
    cb.on_test_begin()                       # once per epoch
    assert clean.calls == [(2, 0), (2, 1), (2, 2)]   # at most the generator's length
    logs = {}
    cb.on_epoch_end(2, logs)
    assert logs["bn_shift_decoder"] > 0 and {"bn_log_var_decoder", "bn_shift_head",
                                             "bn_log_var_head"} <= set(logs)


def test_the_location_model_has_its_batch_norms_in_the_decoder_and_the_head():
    model = U.build_location_model(**SMALL_HEAD)
    layers = batchnorm.batch_norm_layers(model)
    assert len(layers) == batchnorm.DECODER_BATCH_NORMS + 1 + 2 * SMALL_HEAD["convmixer_depth"]
    # the first ones normalise the decoder stream's 80 channels, the rest the head's
    assert {layer.input.shape[-1] for layer in layers[:batchnorm.DECODER_BATCH_NORMS]} == {80}
    assert {layer.input.shape[-1] for layer in layers[batchnorm.DECODER_BATCH_NORMS:]} == \
        {SMALL_HEAD["convmixer_filters"]}


def test_freeze_foundation_fixes_the_foundation_and_trains_the_rest(synthetic, tmp_path):
    cfg = training.TrainConfig(input_hdf5=synthetic["hdf5"], foundation_weights="none",
                               freeze_foundation=True, **SMALL_HEAD)
    model = training.build_model(cfg, None, training.Run(str(tmp_path), None))
    latent = model.layers.index(model.get_layer("utrans_latent"))
    assert not any(layer.trainable_weights for layer in model.layers[:latent + 1])
    assert all(layer.trainable for layer in model.layers[latent + 1:])
    # frozen weights are not in the optimizer's list: the decoder and head are
    names = {v.path for v in model.trainable_variables}
    assert not any(v.path in names for v in model.get_layer("utrans_latent").weights)
    assert any("batch_normalization" in n for n in names)
    assert len(model.trainable_variables) < len(
        training.build_model(training.TrainConfig(input_hdf5=synthetic["hdf5"], **SMALL_HEAD),
                             None, training.Run(str(tmp_path), None)).trainable_variables)


def test_nll_beta_reaches_the_compiled_loss(synthetic, tmp_path):
    cfg = training.TrainConfig(input_hdf5=synthetic["hdf5"], aleatoric=True, nll_beta=1.0,
                               **SMALL_HEAD)
    model = training.build_model(cfg, None, training.Run(str(tmp_path), None))
    assert isinstance(model.loss, U.BetaNLL) and model.loss.beta == 1.0
    assert training.TrainConfig().nll_beta == U.BETA_NLL == 0.5
    with pytest.raises(ValueError, match="nll_beta must be within 0-1, got 2"):
        training.check_parameters(training.TrainConfig(input_hdf5="x", nll_beta=2))


@pytest.mark.parametrize("detach", [False, True])
def test_a_detached_variance_head_trains_its_own_weights_only(detach):
    import tensorflow as tf

    model = U.build_location_model(input_shape=(6000, 3), aleatoric=True,
                                   detach_variance=detach, **SMALL_HEAD)
    assert model.get_layer("log_variance").detach_inputs is detach
    x = np.random.default_rng(0).normal(size=(2, 6000, 3)).astype("float32")
    with tf.GradientTape() as tape:
        _, log_var = U.split_mean_log_variance(model(x, training=True))
        loss = tf.reduce_sum(log_var)
    grads = tape.gradient(loss, model.trainable_variables)
    own = {v.path for v in model.get_layer("log_variance").trainable_variables}
    reached = {v.path for v, g in zip(model.trainable_variables, grads)
               if g is not None and float(tf.reduce_max(tf.abs(g))) > 0}
    assert own <= reached
    assert (reached == own) is detach     # attached: it trains the shared features too


@pytest.mark.parametrize("detach", [False, True])
def test_a_nonlinear_variance_head_has_its_hidden_layer_and_trains_only_itself(detach):
    import tensorflow as tf

    model = U.build_location_model(input_shape=(6000, 3), aleatoric=True,
                                   detach_variance=detach, variance_head_units=8, **SMALL_HEAD)
    hidden, last = model.get_layer("log_variance_hidden"), model.get_layer("log_variance")
    assert hidden.units == 8 and hidden.activation is keras.activations.gelu
    assert hidden.detach_inputs is detach and last.detach_inputs is False
    assert last.input is hidden.output
    assert model.get_layer("output_layer").input is hidden.input   # both read the pooled features
    x = np.random.default_rng(0).normal(size=(2, 6000, 3)).astype("float32")
    with tf.GradientTape() as tape:
        _, log_var = U.split_mean_log_variance(model(x, training=True))
        loss = tf.reduce_sum(log_var)
    grads = tape.gradient(loss, model.trainable_variables)
    own = {v.path for layer in (hidden, last) for v in layer.trainable_variables}
    reached = {v.path for v, g in zip(model.trainable_variables, grads)
               if g is not None and float(tf.reduce_max(tf.abs(g))) > 0}
    assert own <= reached
    assert (reached == own) is detach


def test_the_published_variance_head_is_one_dense_layer():
    model = U.build_location_model(input_shape=(6000, 3), aleatoric=True, **SMALL_HEAD)
    assert "log_variance_hidden" not in [layer.name for layer in model.layers]
    assert model.get_layer("log_variance").input is model.get_layer("output_layer").input


def test_the_variance_head_starts_at_the_training_labels_variance():
    """Not at a std of 1 (1 degree, the whole depth range): a short run does not come
    down from there, and lowers its variances along the largest features instead."""
    model = U.build_location_model(input_shape=(6000, 3), aleatoric=True,
                                   variance_head_units=8, **SMALL_HEAD)
    labels = np.random.default_rng(1).normal(size=(500, 3)) * [0.5, 0.3, 0.05] + [0, 0, 0.2]
    kernel = model.get_layer("log_variance").get_weights()[0]
    bias = U.set_log_variance_prior(model, labels)
    np.testing.assert_allclose(bias, np.log(labels.var(axis=0)), rtol=1e-5)
    after = model.get_layer("log_variance").get_weights()
    np.testing.assert_array_equal(after[0], kernel)
    np.testing.assert_allclose(after[1], bias)
    assert U.label_log_variance(np.zeros((4, 3)))[0] == U.LOG_VARIANCE_RANGE[0]


def test_a_nonlinear_variance_head_is_rebuilt_from_its_model_config(tmp_path):
    from utrans_loc import checkpoints

    model = U.build_location_model(input_shape=(6000, 3), aleatoric=True,
                                   variance_head_units=8, **SMALL_HEAD)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    checkpoints.write_model_config(str(tmp_path / checkpoints.MODEL_CONFIG_NAME), aleatoric=True,
                                   variance_head_units=8, **SMALL_HEAD)
    settings = checkpoints.model_settings(path)
    assert settings["variance_head_units"] == 8
    rebuilt, _ = checkpoints.build_from_checkpoint(path, settings)
    np.testing.assert_array_equal(rebuilt.get_layer("log_variance_hidden").get_weights()[0],
                                  model.get_layer("log_variance_hidden").get_weights()[0])


@pytest.mark.parametrize("change, message", [
    ({"variance_head_units": 8}, "variance_head_units needs aleatoric"),
    ({"variance_head_units": -1, "aleatoric": True}, "variance_head_units must be >= 0"),
])
def test_bad_variance_head_units_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        training.check_parameters(training.TrainConfig(input_hdf5="x.hdf5", **change))


def test_auto_monitor_is_the_published_loss_or_the_mean_of_the_variance_head():
    plain = training.TrainConfig(input_hdf5="x.hdf5")
    assert plain.monitor == "auto" and training.monitored(plain) == "val_loss"
    assert training.monitored(training.TrainConfig(aleatoric=True)) == "val_mae"
    assert training.monitored(training.TrainConfig(aleatoric=True, monitor="val_loss")) == \
        "val_loss"


@pytest.mark.parametrize("change, message", [
    ({"monitor": "val_accuracy"}, "monitor must be one of"),
    ({"bn_recalibration": -1}, "bn_recalibration must be >= 0"),
    ({"lr_schedule": "linear"}, "lr_schedule must be one of"),
    ({"warmup_epochs": 1.0}, "warmup_epochs .* needs --lr_schedule cosine"),
    ({"lr_schedule": "cosine", "warmup_epochs": 50}, "warmup_epochs must be >= 0 and below"),
])
def test_bad_training_options_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        training.check_parameters(training.TrainConfig(input_hdf5="x.hdf5", **change))


def test_a_bad_monitor_on_the_command_line_exits_2(tmp_path):
    run = run_main(TRAIN, "--input_hdf5", "x.hdf5", "--monitor", "val_acc", cwd=tmp_path)
    assert run.returncode == 2 and "--monitor" in run.stderr


def test_the_checkpoint_follows_the_monitored_metric_not_the_loss(tmp_path):
    model = _bn_model()
    cb = run_state.BestCheckpoint(str(tmp_path / "m_{epoch:03d}.weights.h5"), monitor="val_mae",
                                  verbose=0)
    cb.set_model(model)
    for epoch, logs in enumerate([{"val_loss": 1.0, "val_mae": 0.5},
                                  {"val_loss": 0.2, "val_mae": 0.6},    # loss better, mae worse
                                  {"val_loss": 9.0, "val_mae": 0.3}]):  # loss worse, mae better
        cb.on_epoch_end(epoch, logs)
    assert sorted(os.listdir(tmp_path)) == ["m_001.weights.h5", "m_003.weights.h5"]
    assert cb.best_path.endswith("m_003.weights.h5") and cb.best == 0.3


class _Steps:
    def __len__(self):
        return 10


def test_options_reach_the_callbacks_they_configure(tmp_path):
    cfg = training.TrainConfig(input_hdf5="x.hdf5", aleatoric=True, epochs=4,
                               learning_rate=1e-3, lr_schedule="cosine", warmup_epochs=1.0,
                               bn_recalibration=7)
    cfg = training.TrainConfig(**{**cfg.__dict__, "monitor": training.monitored(cfg)})
    run_ = training.Run(str(tmp_path), None)
    clean = _CleanBatches(20)
    cb = training.make_callbacks(cfg, run_, _Steps(), clean)
    # one monitored quantity for the checkpoint, the plateau factor and early stopping
    assert {cb["checkpoint"].monitor, cb["schedule"].monitor, cb["early_stopping"].monitor} == \
        {"val_mae"}
    recal = [c for c in cb["list"] if isinstance(c, batchnorm.RecalibrateBatchNorm)]
    assert len(recal) == 1 and recal[0].n_batches == 7 and recal[0].generator is clean
    # before the checkpoint and the saved state, which must see the new statistics
    order = cb["list"].index
    assert order(recal[0]) < order(cb["checkpoint"]) < order(cb["state"])
    schedule = cb["schedule"]
    assert isinstance(schedule, U.CosineScheduleWithPlateau)
    assert schedule.lr_for(0, 0) == pytest.approx(1e-4)          # warm-up from 0.1 x
    assert schedule.lr_for(1, 0) == pytest.approx(1e-3)          # the base after one epoch
    assert schedule.lr_for(4, 0) == pytest.approx(1e-5)           # 0.01 x at the run's end
    rates = [schedule.lr_for(e, b) for e in range(4) for b in range(10)]
    assert np.argmax(rates) == 10 and np.all(np.diff(rates[10:]) < 0)
    # the published recipe is untouched: no re-estimation, the step schedule
    plain = training.make_callbacks(training.TrainConfig(input_hdf5="x.hdf5",
                                                         monitor="val_loss"),
                                    training.Run(str(tmp_path / "p"), None), _Steps())
    assert type(plain["schedule"]) is U.ScheduleWithPlateau
    assert not any(isinstance(c, batchnorm.RecalibrateBatchNorm) for c in plain["list"])


def test_a_restored_cosine_schedule_continues_where_it_stopped():
    kwargs = dict(epochs=5, steps_per_epoch=10, warmup_epochs=0.5, monitor="val_mae",
                  patience=1, verbose=0)
    first = U.CosineScheduleWithPlateau(1e-3, **kwargs)
    first.scale, first.best, first.wait = first.factor, 0.5, 1   # after one plateau reduction
    resumed = U.CosineScheduleWithPlateau(1e-3, **kwargs)
    resumed.set_state(json.loads(json.dumps(first.get_state())))   # as state.json keeps it
    assert [resumed.lr_for(3, b) for b in range(10)] == [first.lr_for(3, b) for b in range(10)]
    fresh = U.CosineScheduleWithPlateau(1e-3, **kwargs)
    assert resumed.lr_for(3, 4) == pytest.approx(first.factor * fresh.lr_for(3, 4))


@pytest.mark.slow
def test_variance_head_run_with_recalibration_and_cosine_resumes_to_the_same_run(
        synthetic, tmp_path, monkeypatch):
    """trainer1 --aleatoric --bn_recalibration --lr_schedule cosine: history.csv has the
    drift columns, the report names the monitored quantity, and a run interrupted after
    epoch 2 and resumed continues the uninterrupted run's learning rates."""
    options = tiny_training(synthetic, epochs=3, learning_rate=1e-3, seed=2, aleatoric=True,
                            bn_recalibration=2, lr_schedule="cosine", warmup_epochs=0.5)
    with working_dir(tmp_path):
        whole = tr.trainer1(output_name="whole", **options)
        original = U.CosineScheduleWithPlateau.on_epoch_begin

        def stop_at_third(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt
            original(self, epoch, logs)

        monkeypatch.setattr(U.CosineScheduleWithPlateau, "on_epoch_begin", stop_at_third)
        with pytest.raises(KeyboardInterrupt):
            tr.trainer1(output_name="cut", **options)
        monkeypatch.setattr(U.CosineScheduleWithPlateau, "on_epoch_begin", original)
        resumed = tr.trainer1(output_name="cut", resume=True, verbose=0)
    assert whole["monitor"] == resumed["monitor"] == "val_mae"
    history = pd.read_csv(os.path.join(whole["output_dir"], "history.csv"))
    assert {"bn_shift_decoder", "bn_shift_head", "bn_log_var_head"} <= set(history.columns)
    assert (history["bn_shift_head"] > 0).all()
    again = pd.read_csv(os.path.join(resumed["output_dir"], "history.csv"))
    np.testing.assert_allclose(again["learning_rate"], history["learning_rate"], rtol=1e-6)
    np.testing.assert_allclose(again[["loss", "val_mae"]][:2], history[["loss", "val_mae"]][:2],
                               rtol=1e-6)
    # the resumed epoch: same weights, optimizer, rate and batches; dropout draws its own
    # masks (its random stream is not part of the saved state)
    np.testing.assert_allclose(again[["loss", "val_mae"]][2:], history[["loss", "val_mae"]][2:],
                               rtol=1e-2)
    report = open(os.path.join(whole["output_dir"], "X_report.txt")).read()
    assert "monitor: val_mae" in report and "best_val_mae:" in report
    assert json.load(open(os.path.join(whole["output_dir"], "run_config.json")))["monitor"] == \
        "val_mae"


def test_the_demo_passes_its_training_recipe_to_trainer1():
    import demo

    parser = tr.build_parser()
    default = parser.parse_args(
        list(map(str, demo.trainer_arguments(demo.build_parser().parse_args([]), "d.hdf5",
                                             "none"))))
    assert (default.epochs, default.bn_recalibration, default.monitor, default.aleatoric,
            default.nll_beta, default.detach_variance, default.freeze_foundation) == \
        (7, 20, "auto", True, 1.0, True, True)
    assert default.variance_head_units == 0
    nonlinear = parser.parse_args(list(map(str, demo.trainer_arguments(
        demo.build_parser().parse_args(["--variance_head_units", "32"]), "d.hdf5", "none"))))
    assert nonlinear.variance_head_units == 32
    earlier = parser.parse_args(list(map(str, demo.trainer_arguments(
        demo.build_parser().parse_args(["--no-aleatoric", "--bn_recalibration", "0",
                                        "--no-freeze_foundation", "--lr_schedule", "cosine",
                                        "--warmup_epochs", "0.5"]), "d.hdf5", "none"))))
    assert (earlier.aleatoric, earlier.detach_variance, earlier.bn_recalibration,
            earlier.freeze_foundation, earlier.lr_schedule, earlier.warmup_epochs) == \
        (False, False, 0, False, "cosine", 0.5)


def test_the_demo_knows_when_its_test_split_has_no_multi_station_event(synthetic):
    """Seed 4 of the demo's data has none: the locator stage is skipped, not crashed into."""
    import h5py

    import demo

    ids = np.load(synthetic["train"], allow_pickle=False)
    with h5py.File(synthetic["hdf5"], "r") as fh:
        sources = pd.Series([fh[t].attrs["source_id"] for t in ids])
    shared = set(sources[sources.duplicated()])
    assert shared and demo.multi_station_events(synthetic["hdf5"], ids)
    alone = [t for t, s in zip(ids, sources) if s not in shared]
    assert not demo.multi_station_events(synthetic["hdf5"], alone)
