"""The variance head (trainer1 --aleatoric): model, beta-NLL loss, checkpoints, resume and
the std columns of tester1 and the locator."""

import json
import os
import re
import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import (SMALL_HEAD, child_env, full_disk_at_second_history_write, run_script,
                      tiny_training, working_dir)

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints, devices, estimates, metrics, prediction, run_state, velocity
import tester1 as te
import trainer1 as tr

MAX_D, MIN_D = 114.5, 1e-5


def beta_nll_numpy(y, pred, beta=0.5):
    """The beta-NLL written out by hand: mean over elements of 0.5 (log var + r^2 / var) var^beta."""
    mu, log_var = pred[:, :3].astype(float), pred[:, 3:].astype(float)
    var = np.exp(log_var)
    return np.mean(0.5 * (log_var + (y - mu) ** 2 / var) * var ** beta)


def _known_inputs():
    r = np.random.default_rng(4)
    y = r.normal(size=(5, 3)).astype("float32")
    pred = np.concatenate([y + r.normal(scale=0.5, size=(5, 3)),
                           r.uniform(-3, 2, size=(5, 3))], axis=1).astype("float32")
    return y, pred


def test_beta_nll_against_a_hand_computation_and_its_gradient():
    import tensorflow as tf

    y, pred = _known_inputs()
    for beta in (0.5, 0.0):
        loss = float(U.BetaNLL(beta=beta)(y, pred))
        assert loss == pytest.approx(beta_nll_numpy(y, pred, beta), rel=1e-5)
    assert U.BetaNLL().beta == 0.5 == U.BETA_NLL
    # the var^beta weight carries no gradient: d/d mu = w (mu - y) / var / n_elements
    p = tf.Variable(pred)
    with tf.GradientTape() as tape:
        value = U.BetaNLL()(y, p)
    grad = tape.gradient(value, p).numpy()
    var = np.exp(pred[:, 3:].astype(float))
    w = var ** 0.5
    np.testing.assert_allclose(grad[:, :3], w * (pred[:, :3] - y) / var / y.size, rtol=1e-4)
    np.testing.assert_allclose(grad[:, 3:], w * 0.5 * (1 - (y - pred[:, :3]) ** 2 / var) / y.size,
                               rtol=1e-4, atol=1e-7)
    mae = np.asarray(U.mean_absolute_error_of_mean(y, pred))
    np.testing.assert_allclose(mae, np.abs(y - pred[:, :3]).mean(axis=1), rtol=1e-6)


def _aleatoric_copy_of(plain):
    """An aleatoric model holding ``plain``'s weights in every layer they share (the
    first ones, in order)."""
    model = U.build_location_model(aleatoric=True, **SMALL_HEAD)
    for mine, theirs in zip(model.layers, plain.layers):
        mine.set_weights(theirs.get_weights())
    return model


def _kind(layer):
    """A layer's name without the number Keras appends to automatic names."""
    return re.sub(r"_\d+$", "", layer.name)


@pytest.mark.slow
def test_the_variance_head_adds_two_layers_and_leaves_the_mean_bitwise_alone():
    import keras

    keras.utils.set_random_seed(2)
    plain = U.build_location_model(**SMALL_HEAD)
    keras.utils.set_random_seed(2)
    default = U.build_location_model(aleatoric=False, **SMALL_HEAD)
    for a, b in zip(plain.get_weights(), default.get_weights()):
        np.testing.assert_array_equal(a, b)
    model = _aleatoric_copy_of(plain)
    names = [_kind(layer) for layer in model.layers]
    assert names[:len(plain.layers)] == [_kind(layer) for layer in plain.layers]
    assert names[len(plain.layers):] == ["log_variance", "mean_and_log_variance"]
    assert model.get_layer("log_variance").dtype_policy.compute_dtype == "float32"
    x = np.random.default_rng(0).standard_normal((2, 6000, 3)).astype("float32")
    out = np.asarray(model.predict_on_batch(x))
    assert out.shape == (2, 6)
    np.testing.assert_array_equal(out[:, :3], np.asarray(plain.predict_on_batch(x)))
    # mixed precision: the variance head and the output stay float32
    with devices.precision_policy("bfloat16"):
        mixed = U.build_location_model(aleatoric=True, **SMALL_HEAD)
    assert mixed.get_layer("log_variance").dtype_policy.compute_dtype == "float32"
    assert mixed.get_layer("output_layer").dtype_policy.compute_dtype == "float32"
    assert any(layer.dtype_policy.compute_dtype == "bfloat16" for layer in mixed.layers)
    assert mixed.output.dtype == "float32"
    # extreme features: the log-variances stay in the clipped range
    head = model.get_layer("log_variance")
    head.set_weights([w + 50.0 for w in head.get_weights()])
    assert np.asarray(model.predict_on_batch(x))[:, 3:].max() == U.LOG_VARIANCE_RANGE[1]


@pytest.mark.slow
def test_a_variance_head_checkpoint_needs_its_model_config(tmp_path):
    plain = U.build_location_model(**SMALL_HEAD)
    model = _aleatoric_copy_of(plain)
    (tmp_path / "a").mkdir()
    (tmp_path / "p").mkdir()
    head_file, plain_file = tmp_path / "a" / "m.weights.h5", tmp_path / "p" / "m.weights.h5"
    model.save_weights(head_file)
    plain.save_weights(plain_file)
    settings = checkpoints.model_settings(str(head_file))
    assert settings["aleatoric"] is False      # no model_config.json: nothing says so
    with pytest.raises(Exception, match=r"m\.weights\.h5: has a variance head .*"
                                        r"model_config\.json .* is missing"):
        checkpoints.build_from_checkpoint(str(head_file), settings)
    checkpoints.write_model_config(tmp_path / "a" / "model_config.json", aleatoric=True,
                                   **SMALL_HEAD)
    settings = checkpoints.model_settings(str(head_file))
    loaded, _ = checkpoints.build_from_checkpoint(str(head_file), settings)
    x = np.zeros((1, 6000, 3), "float32")
    np.testing.assert_array_equal(loaded.predict_on_batch(x), model.predict_on_batch(x))
    # a plain checkpoint given to an aleatoric model: named, refused
    with pytest.raises(Exception, match=r"p/m\.weights\.h5: has no variance head"):
        checkpoints.load_location_weights(model, plain_file)


def _station():
    return np.array([34.0, 36.0]), np.array([-118.0, -117.0])


def test_location_columns_of_a_variance_head_without_sampling():
    lat, lon = _station()
    pred = np.array([[0.1, -0.2, 0.1, np.log(0.04), np.log(0.09), np.log(0.01)],
                     [0.3, 0.2, 0.2, np.log(0.01), np.log(0.01), np.log(0.04)]])
    out = prediction.location_columns(lat, lon, pred, MAX_D, MIN_D)
    np.testing.assert_allclose(out["pred_event_lat_std"], [0.2, 0.1])
    np.testing.assert_allclose(out["pred_event_lon_std"], [0.3, 0.1])
    np.testing.assert_allclose(out["pred_depth_km_std"], np.array([0.1, 0.2]) * (MAX_D - MIN_D))
    per_lat, per_lon = metrics.km_per_degree(out["pred_event_lat"])
    np.testing.assert_allclose(out["pred_event_lat_std_km"], [0.2, 0.1] * per_lat)
    np.testing.assert_allclose(out["pred_event_lon_std_km"], [0.3, 0.1] * per_lon)
    np.testing.assert_allclose(out["pred_epicentre_std_km"],
                               np.hypot(out["pred_event_lat_std_km"],
                                        out["pred_event_lon_std_km"]))
    for column in [c for c in out if c.endswith("_aleatoric")]:
        np.testing.assert_array_equal(out[column], out[column[:-len("_aleatoric")]])
    assert not [c for c in out if c.endswith("_epistemic")]
    # the mean is the plain model's
    plain = prediction.location_columns(lat, lon, pred[:, :3], MAX_D, MIN_D)
    assert list(plain) == ["pred_event_lat", "pred_event_lon", "pred_depth_km"]
    for column, value in plain.items():
        np.testing.assert_array_equal(out[column], value)


def test_location_columns_of_a_variance_head_with_sampling_and_a_bad_variance(capsys):
    lat, lon = _station()
    r = np.random.default_rng(1)
    samples = np.concatenate([r.normal(0.2, 0.05, size=(7, 2, 3)),
                              r.uniform(-6, -2, size=(7, 2, 3))], axis=2)
    out = prediction.location_columns(lat, lon, samples, MAX_D, MIN_D, names=["a", "b"])
    mc = prediction.location_columns(lat, lon, samples[..., :3], MAX_D, MIN_D)
    for column in ("pred_event_lat", "pred_event_lon", "pred_depth_km"):
        np.testing.assert_array_equal(out[column], mc[column])
    for column in [c for c in mc if "_std" in c]:       # epistemic: the Monte-Carlo spread
        np.testing.assert_array_equal(out[column + "_epistemic"], mc[column])
    var = np.exp(samples[..., 3:]).mean(axis=0)
    np.testing.assert_allclose(out["pred_event_lat_std_aleatoric"], np.sqrt(var[:, 0]))
    np.testing.assert_allclose(out["pred_depth_km_std_aleatoric"],
                               np.sqrt(var[:, 2]) * (MAX_D - MIN_D))
    for column in [c for c in mc if "_std" in c and "epicentre" not in c]:
        np.testing.assert_allclose(out[column], np.hypot(out[column + "_aleatoric"],
                                                         out[column + "_epistemic"]))
    np.testing.assert_allclose(out["pred_epicentre_std_km"] ** 2,
                               out["pred_epicentre_std_km_aleatoric"] ** 2
                               + out["pred_epicentre_std_km_epistemic"] ** 2)
    samples[3, 1, 4] = np.nan
    out = prediction.location_columns(lat, lon, samples, MAX_D, MIN_D, names=["a", "b"])
    assert "NaN or infinite variance" in capsys.readouterr().err.splitlines()[-1]
    assert capsys.readouterr().err == ""
    std = [c for c in out if "_std" in c]
    assert all(np.isnan(out[c][1]) and np.isfinite(out[c][0]) for c in std)
    assert np.isfinite(out["pred_event_lat"]).all()


def test_the_warning_names_the_trace(capsys):
    lat, lon = _station()
    pred = np.zeros((2, 6))
    pred[0, 5] = np.inf
    prediction.location_columns(lat, lon, pred, MAX_D, MIN_D, names=["TR.A_1", "TR.B_2"])
    err = capsys.readouterr().err
    assert "TR.A_1" in err and "TR.B_2" not in err


@pytest.mark.slow
def test_beta_nll_and_the_variance_head_under_jax():
    pytest.importorskip("jax", reason="the JAX backend is not installed")
    y, pred = _known_inputs()
    script = textwrap.dedent(f"""
        import numpy as np, keras, jax
        import EqT_utils_Loc_California as U
        assert keras.backend.backend() == "jax"
        y = np.array({y.tolist()}, "float32"); pred = np.array({pred.tolist()}, "float32")
        print("loss", float(U.BetaNLL()(y, pred)))
        g = jax.grad(lambda p: U.BetaNLL()(y, p))(pred)
        var = np.exp(pred[:, 3:].astype(float))
        np.testing.assert_allclose(np.asarray(g)[:, :3],
                                   var ** 0.5 * (pred[:, :3] - y) / var / y.size, rtol=1e-4)
        m = U.build_location_model(aleatoric=True, convmixer_filters=8, convmixer_depth=1)
        loss, metrics = U.location_loss_and_metrics(True)
        m.compile(optimizer="adam", loss=loss, metrics=metrics)
        x = np.random.default_rng(0).standard_normal((2, 6000, 3)).astype("float32")
        logs = m.train_on_batch(x, y[:2], return_dict=True)
        assert sorted(logs) == ["loss", "mae"] and np.isfinite(logs["loss"]), logs
        print("out", np.asarray(m.predict_on_batch(x)).shape)
    """)
    run = run_script("-c", script, env=child_env(
        "jax", XLA_FLAGS="--xla_backend_optimization_level=0"))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
    assert float(lines["loss"]) == pytest.approx(beta_nll_numpy(y, pred), rel=1e-5)
    assert lines["out"] == "(2, 6)"


def _interrupted_run(synthetic, tmp_path, monkeypatch, name, **changes):
    """A 2-epoch run stopped after epoch 1 (the second history.csv write fails)."""
    flaky = full_disk_at_second_history_write()

    train = tmp_path / "train16.npy"
    np.save(train, np.load(synthetic["train"])[:16])
    with monkeypatch.context() as patch, working_dir(tmp_path):
        patch.setattr(run_state, "atomic_write_text", flaky)
        with pytest.raises(OSError, match="history.csv"):
            tr.trainer1(**tiny_training(synthetic, input_trainset=str(train), output_name=name,
                                        **changes))
    return tmp_path / f"{name}_outputs"


@pytest.mark.slow
def test_aleatoric_training_resume_and_the_tester_columns(synthetic, tmp_path, monkeypatch):
    out = _interrupted_run(synthetic, tmp_path, monkeypatch, "ale", aleatoric=True)
    config = json.loads((out / "models" / "model_config.json").read_text())
    assert config["aleatoric"] is True
    with working_dir(tmp_path):
        result = tr.trainer1(output_name="ale", resume=True, verbose=0)
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(history.columns)
    assert np.isfinite(history[["loss", "val_loss", "mae"]].to_numpy()).all()
    best = result["best_weights"]
    assert checkpoints.has_variance_head(best)
    ids = tmp_path / "test.npy"
    np.save(ids, np.load(synthetic["test"])[:10])
    with working_dir(tmp_path):
        sampled = te.tester1(input_hdf5=synthetic["hdf5"], input_testset=str(ids),
                             input_model=best, output_name="mc", batch_size=5,
                             estimate_uncertainty=True, number_of_sampling=4, seed=0,
                             verbose=0)["results"]
        single = te.tester1(input_hdf5=synthetic["hdf5"], input_testset=str(ids),
                            input_model=best, output_name="one", batch_size=5,
                            verbose=0)["results"]
    csv = pd.read_csv(tmp_path / "mc_outputs" / "X_test_results.csv")
    for part in ("", "_aleatoric", "_epistemic"):
        for column in ("pred_event_lat_std", "pred_depth_km_std", "pred_epicentre_std_km"):
            assert np.isfinite(csv[column + part]).all() and (csv[column + part] > 0).all()
    np.testing.assert_allclose(csv["pred_depth_km_std"] ** 2,
                               csv["pred_depth_km_std_aleatoric"] ** 2
                               + csv["pred_depth_km_std_epistemic"] ** 2, rtol=1e-9)
    assert "pred_depth_km_std_epistemic" in sampled
    # without sampling: the aleatoric std alone, from the variance head
    assert "pred_depth_km_std_epistemic" not in single
    np.testing.assert_array_equal(single["pred_depth_km_std"],
                                  single["pred_depth_km_std_aleatoric"])
    # calibrated without sampling: the factors fit the variance head's std (the total)
    valid = tmp_path / "valid.npy"
    np.save(valid, np.load(synthetic["valid"])[:12])
    with working_dir(tmp_path):
        fitted = te.tester1(input_hdf5=synthetic["hdf5"], input_testset=str(ids),
                            input_model=best, output_name="cal", batch_size=5,
                            calibration_set=str(valid), verbose=0)
    calibration = json.loads((tmp_path / "cal_outputs" / "calibration.json").read_text())
    assert calibration["number_of_sampling"] == 1
    assert calibration["n_traces"] == len(np.load(valid)) > 2
    factor = calibration["factors"]["depth"]
    table = fitted["results"]
    np.testing.assert_allclose(table["pred_depth_km_std_raw"], single["pred_depth_km_std"])
    np.testing.assert_allclose(table["pred_depth_km_std"], factor * single["pred_depth_km_std"])
    np.testing.assert_array_equal(table["pred_depth_km_std_aleatoric"],
                                  single["pred_depth_km_std_aleatoric"])
    model, _ = checkpoints.build_from_checkpoint(best, checkpoints.model_settings(best))
    x = U.DataGeneratorPrediction(np.load(ids), synthetic["hdf5"], batch_size=10)[0][0]
    log_var = np.asarray(model.predict_on_batch(x), float)[:, 5]
    np.testing.assert_allclose(single["pred_depth_km_std"],
                               np.exp(log_var / 2) * (U.MAX_D - U.MIN_D), rtol=1e-5)


@pytest.mark.slow
def test_resuming_a_plain_run_with_aleatoric_names_the_state_file(synthetic, tmp_path,
                                                                   monkeypatch):
    out = _interrupted_run(synthetic, tmp_path, monkeypatch, "plain")
    run_config = out / "run_config.json"
    saved = json.loads(run_config.read_text())
    del saved["aleatoric"]          # a run that predates the option
    run_config.write_text(json.dumps(saved))
    with working_dir(tmp_path), pytest.raises(Exception, match=r"--resume: the run's state "
                                                               r"\S+resume\S+\.weights\.h5: "
                                                               "has no variance head"):
        tr.trainer1(output_name="plain", resume=True, aleatoric=True, verbose=0)
    assert os.path.isfile(out / "history.csv")


def test_coverage_leaves_out_rows_whose_std_is_nan():
    from conftest import results_frame

    df = results_frame(6, dlat=0.01, dlon=0.01, ddep=1.0)
    df = df.assign(pred_event_lat_std=0.02, pred_event_lon_std=0.02, pred_depth_km_std=2.0,
                   pred_epicentre_std_km=3.0)
    df.loc[2, ["pred_event_lat_std", "pred_depth_km_std"]] = np.nan
    table = metrics.coverage_table(df, metrics.location_errors(df)).set_index("quantity")
    assert table.loc["lat_deg", "n"] == 5 and table.loc["lon_deg", "n"] == 6
    assert table.loc["lat_deg", "coverage_1sigma"] == 1.0


def test_the_locator_table_takes_the_variance_head_and_names_a_bad_pick(capsys):
    from obspy import UTCDateTime

    lat, lon = _station()
    located = pd.DataFrame({"network": ["CI", "CI"], "station": ["AAA", "BBB"],
                            "location": ["", ""], "p_time": [UTCDateTime(2020, 1, 1)] * 2,
                            "event_id": ["e1", "e1"], "station_lat": lat, "station_lon": lon,
                            "station_elevation_m": 0.0})
    pred = np.zeros((2, 6))
    pred[:, 3:] = np.log(0.01)
    pred[1, 4] = np.nan
    table = estimates.locations_table(located, pred, {"max_d": MAX_D, "min_d": MIN_D},
                                      velocity.HalfSpace())
    assert "CI.BBB P 2020-01-01" in capsys.readouterr().err
    np.testing.assert_allclose(table["pred_event_lat_std"], [0.1, np.nan])
    assert "pred_depth_km_std_aleatoric" in table and np.isfinite(table["pred_event_lat"]).all()


def _parts_frame(n=40):
    """Results whose errors grow with row number; the aleatoric std grows with them, the
    epistemic std shrinks, and the total is their quadrature sum."""
    from conftest import results_frame

    df = results_frame(n)
    grow = np.linspace(0.01, 0.4, n)
    df["pred_event_lat"] += grow
    df["pred_event_lon"] -= grow
    df["pred_depth_km"] += 10 * grow
    columns = {}
    for col, scale in (("pred_event_lat_std", 1.0), ("pred_event_lon_std", 1.0),
                       ("pred_depth_km_std", 20.0), ("pred_epicentre_std_km", 150.0)):
        columns[col + "_aleatoric"] = scale * grow
        columns[col + "_epistemic"] = scale * 0.05 * grow[::-1]
        columns[col] = np.hypot(columns[col + "_aleatoric"], columns[col + "_epistemic"])
    return df.assign(**columns)


def test_the_ranking_table_scores_each_part_and_the_total():
    df = _parts_frame()
    table = metrics.ranking_table(df, metrics.location_errors(df))
    assert list(table.columns) == list(metrics.RANKING_COLUMNS)
    assert list(table["quantity"]) == [q for q in metrics.STD_COLUMNS for _ in range(3)]
    assert list(table["std"]) == ["epistemic", "aleatoric", "total"] * 4
    rho = table.set_index(["quantity", "std"])["spearman_std_abs_error"]
    for q in metrics.STD_COLUMNS:
        assert rho[q, "aleatoric"] == pytest.approx(1.0)
        assert rho[q, "epistemic"] == pytest.approx(-1.0)
        assert rho[q, "total"] > 0.9      # dominated by the aleatoric part
    mean = table.set_index(["quantity", "std"])["mean_std"]
    assert mean["depth_km", "epistemic"] == pytest.approx(df["pred_depth_km_std_epistemic"].mean())
    # a calibrated table: the total is scored before calibration, like its parts
    calibrated = df.assign(pred_epicentre_std_km_raw=df["pred_epicentre_std_km"],
                           pred_epicentre_std_km=df["pred_epicentre_std_km"].to_numpy()[::-1])
    rho = metrics.ranking_table(calibrated, metrics.location_errors(df)).set_index(
        ["quantity", "std"])["spearman_std_abs_error"]
    assert rho["epicentral_km", "total"] > 0.9
    # a model without a variance head: no parts, no table
    plain = df.drop(columns=[c for c in df if c.endswith(("_aleatoric", "_epistemic"))])
    assert metrics.std_parts(plain) == [] and metrics.ranking_table(
        plain, metrics.location_errors(plain)) is None
    # without sampling: the aleatoric part and the total only
    single = df.drop(columns=[c for c in df if c.endswith("_epistemic")])
    assert list(metrics.ranking_table(single, metrics.location_errors(single))["std"][:2]) == \
        ["aleatoric", "total"]


def test_the_reader_writes_the_ranking_and_the_reliability_of_the_total(tmp_path, capsys):
    import reader as rd

    df = _parts_frame()
    df.to_csv(tmp_path / metrics.RESULTS_NAME, index=False)
    res = rd.reader(str(tmp_path))
    parts = pd.read_csv(tmp_path / "uncertainty_parts.csv")
    assert len(parts) == 12 and set(parts["std"]) == {"epistemic", "aleatoric", "total"}
    md = (tmp_path / "metrics.md").read_text()
    assert "## Which part of the error bar ranks the errors" in md
    assert "the total std: predicted variance" in md
    # the reliability diagram is the total's: its coverage is that of the *_std columns
    curve = pd.read_csv(tmp_path / "reliability.csv")
    row = curve[curve["quantity"] == "depth_km"].iloc[9]
    errors = metrics.location_errors(df)
    k = metrics._k_for_level("depth_km", row["expected"])
    assert row["observed"] == pytest.approx(
        np.mean(np.abs(errors["depth_km"]) <= k * df["pred_depth_km_std"]))
    assert row["observed"] != pytest.approx(
        np.mean(np.abs(errors["depth_km"]) <= k * df["pred_depth_km_std_epistemic"]))
    assert (tmp_path / "figures" / "reliability.png").stat().st_size > 0
    rd._report(res)
    assert "which part of the error bar ranks the errors" in capsys.readouterr().out


def test_the_locator_weights_stations_by_the_variance_heads_std():
    """No sampling, a variance head: the std columns weight the stations (weighted and
    hybrid); a NaN std (non-finite variance) gets the default spread in both."""
    from test_locate_network import _catalog, _config, _event_table

    truth, table, s_picks = _event_table()
    table.loc[1:, "pred_event_lat"] += 0.2           # two stations 22 km off, with large std
    std_deg = np.array([0.01, 0.3, 0.3])
    table = table.assign(pred_event_lat_std=std_deg, pred_event_lon_std=std_deg,
                         pred_depth_km_std=[1.0, 10.0, 10.0],
                         pred_event_lat_std_km=std_deg * 111, pred_event_lon_std_km=std_deg * 90,
                         pred_epicentre_std_km=std_deg * 143)
    assert _config(combine="weighted").estimate_uncertainty is False
    _, weighted = _catalog(table, s_picks.iloc[:0], combine="weighted")
    assert weighted["latitude"][0] == pytest.approx(truth["lat"], abs=0.002)
    _, plain = _catalog(table.drop(columns=[c for c in table if "_std" in c]), s_picks.iloc[:0],
                        combine="weighted")
    assert plain["latitude"][0] == pytest.approx(truth["lat"] + 0.133, abs=0.01)
    # weighted: a station with a NaN std gets the default spread (one rule with hybrid),
    # not a plain mean's weight
    nan_std = table.copy()
    nan_std.loc[1, [c for c in table if "_std" in c]] = np.nan
    catalog, weighted = _catalog(nan_std, s_picks.iloc[:0], combine="weighted")
    assert weighted["latitude"][0] == pytest.approx(truth["lat"], abs=0.002)
    assert "1 without one: the default spread" in catalog[0].preferred_origin().comments[0].text
    table.loc[0, ["pred_event_lat_std_km", "pred_depth_km_std"]] = np.nan
    catalog, hybrid = _catalog(table, s_picks)
    assert np.isfinite(hybrid.loc[0, ["latitude", "longitude", "depth_km"]].astype(float)).all()
    assert float(metrics.geodesic_km(truth["lat"], truth["lon"], hybrid["latitude"][0],
                                     hybrid["longitude"][0])[()]) < 2.0
    assert "predicted error bars (1 without one: the default spread" in " ".join(
        c.text for c in catalog[0].preferred_origin().comments)


def test_a_calibration_needs_a_spread_or_a_variance_head():
    from types import SimpleNamespace

    for name in ("calibration", "calibration_set"):
        cfg = SimpleNamespace(estimate_uncertainty=False, input_model="runs/m.weights.h5",
                              **{"calibration": None, "calibration_set": None, name: "x"})
        with pytest.raises(ValueError, match=rf"^{name} scales .*estimate_uncertainty.*"
                                             r"runs/m\.weights\.h5 has no variance head"):
            prediction.check_calibration_spread(cfg, {"aleatoric": False})
        prediction.check_calibration_spread(cfg, {"aleatoric": True})
        cfg.estimate_uncertainty = True
        prediction.check_calibration_spread(cfg, {"aleatoric": False})
