"""utrans_loc/devices.py: data-parallel training (``multi_gpu``) checked on a CPU split
into 2 logical devices, GPU settings, and mixed precision.

Each distribution test runs its backend code in a fresh Python process (this
file, run as a script, see ``_worker``): the devices must be set up before the
backend starts, and the JAX distribution is process-wide.
``CUDA_VISIBLE_DEVICES=''`` hides any GPU, so the tests take the same CPU path on
every machine. The precision tests run in the test process.
"""

import json
import socket
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import PARITY, ROOT, SMALL_HEAD, child_env, need, run_script, start_script

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints, devices

# Relative tolerance of 1- vs 2-device losses. The runs differ only in the
# order of float32 sums (per-replica means, then the all-reduce of gradients):
# measured differences <= 5e-7 over 3 SGD steps, on both backends. Summed
# instead of averaged gradients (a doubled SGD step) change the third loss by
# 9-11 % (measured with a doubled learning rate), far above this.
RTOL = 1e-4


def _env(backend, **extra):
    """A child on ``backend`` with every GPU hidden, outside any TF_CONFIG cluster."""
    env = child_env(backend, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return {**env, **extra}


def _run(args, backend, cwd=ROOT, timeout=300, **extra_env):
    return run_script(*args, cwd=cwd, env=_env(backend, **extra_env), timeout=timeout)


def _worker(name, backend, **extra_env):
    """Run ``_<name>_worker`` below in a fresh process; its last stdout line is JSON."""
    out = _run([Path(__file__).resolve(), name], backend, **extra_env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------
# 1 device vs 2 devices, same steps
# --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_train_like_one(backend):
    if backend == "jax":
        pytest.importorskip("jax", reason="the JAX backend is not installed")
    # XLA's CPU optimisation passes (not the numerics) dominate 3 steps on JAX:
    # -O0 halves the time; both runs use it.
    flags = {"XLA_FLAGS": "--xla_backend_optimization_level=0"} if backend == "jax" else {}
    res = _worker("equivalence", backend, **flags)
    assert res["replicas"] == [1, 2]              # num_replicas_in_sync / DataParallel mesh
    assert res["weight_copies"] == [1, 2]         # the variables really live on both devices
    one, two = np.array(res["loss_1_device"]), np.array(res["loss_2_devices"])
    print(f"{backend}: 1 device {one.tolist()}, 2 devices {two.tolist()}, "
          f"max rel. diff {float(np.max(np.abs(two - one) / one)):.2e}")
    np.testing.assert_allclose(two, one, rtol=RTOL)
    # The steps must move the loss far more than the tolerance, or the
    # comparison could not tell averaged from summed gradients.
    assert abs(one[2] - one[0]) > 100 * RTOL * one[0]


def _equivalence_worker():
    """3 plain-SGD steps on 1 device, then on 2; prints the per-step losses.

    Same initial weights (one set, copied into both models), every dropout
    rate 0: each replica draws its own dropout masks by design, so with
    dropout on, 1 and 2 devices would differ for that reason alone.

    The global batch of 8 is the same 4 traces twice, [a, b, c, d, a, b, c, d]:
    MirroredStrategy gives each replica 4 of them, and each replica's
    BatchNormalization normalises with its own batch statistics (per replica,
    as upstream Keras 2). With the duplicated batch those equal the
    statistics of the whole batch on one device, so the steps must agree.

    Plain SGD, not the trainer's Adam: an SGD step is proportional to the
    gradient, so a wrong gradient scale (summed instead of averaged over
    replicas) shows in the loss. Adam normalises the gradient scale away
    (apart from epsilon) and would hide that error.
    """
    import keras

    import EqT_utils_Loc_California as U
    import utrans_backbone as ub

    devices.configure_gpus(multi_gpu=True, number_of_gpus=2)  # before the backend starts
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6000, 3)).astype("float32")
    y = rng.normal(scale=0.3, size=(4, 3)).astype("float32")
    x, y = np.concatenate([x, x]), np.concatenate([y, y])
    keras.utils.set_random_seed(0)
    weights = U.build_location_model(foundation_weights=None, **SMALL_HEAD).get_weights()

    def without_dropout(layer):
        config = layer.get_config()
        for key, cls in (("rate", keras.layers.Dropout), ("drop_prob", ub.StochasticDepth),
                         ("dropout", keras.layers.MultiHeadAttention)):
            if isinstance(layer, cls):
                config[key] = 0.0
        return layer.__class__.from_config(config)

    def train(multi_gpu):
        with devices.distribution_scope(multi_gpu, 2):
            model = keras.models.clone_model(
                U.build_location_model(foundation_weights=None, **SMALL_HEAD),
                clone_function=without_dropout)
            model.set_weights(weights)
            model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
            model.optimizer.build(model.trainable_variables)   # as trainer1: one trace
        # 3 epochs of one batch each: History holds the loss of every step.
        history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        return history.history["loss"], devices.replica_count(model), _copies(model.weights[0])

    # One device first: on JAX the distribution is process-wide once set.
    (loss1, rep1, copies1), (loss2, rep2, copies2) = train(False), train(True)
    return {"loss_1_device": loss1, "loss_2_devices": loss2, "replicas": [rep1, rep2],
            "weight_copies": [copies1, copies2]}


def _copies(variable):
    """Devices holding a copy of a Keras variable."""
    value = variable.value
    if hasattr(value, "sharding"):                      # JAX array
        return len(value.sharding.device_set)
    return len(getattr(value, "values", [value]))       # tf MirroredVariable: one per replica


# --------------------------------------------------------------------------
# Several machines: MultiWorkerMirroredStrategy from TF_CONFIG
# --------------------------------------------------------------------------
def _linear_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 4)).astype("float32")
    return x, (x @ np.array([[1.0], [2.0], [3.0], [4.0]]) + 0.5).astype("float32")


@pytest.mark.slow
def test_two_workers_from_tf_config():
    """Two local processes as the two machines of a TF_CONFIG cluster.

    A linear model with zero initial weights, so that the exact SGD steps on
    the global batches can be written down: both workers must end with them
    (gradients averaged over the 2 replicas, each seeing half of each batch).
    """
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("localhost", 0))
            ports.append(sock.getsockname()[1])
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    procs = [start_script(Path(__file__).resolve(), "multiworker", cwd=ROOT,
                          env=_env("tensorflow", TF_CONFIG=json.dumps(
                              {"cluster": cluster, "task": {"type": "worker", "index": i}})))
             for i in range(2)]
    try:
        outs = [proc.communicate(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()  # a worker left waiting for its peer would hang forever
    results = []
    for proc, (stdout, stderr) in zip(procs, outs):
        assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    x, y = _linear_data()
    w, b, losses = np.zeros((4, 1)), 0.0, []
    for _ in range(2):                       # 2 epochs of 2 batches of 8, SGD(0.05)
        steps = []
        for start in (0, 8):
            xb, yb = x[start:start + 8].astype(float), y[start:start + 8].astype(float)
            err = xb @ w + b - yb
            steps.append(float(np.mean(err ** 2)))
            w, b = w - 0.05 * 2 * xb.T @ err / 8, b - 0.05 * 2 * float(err.mean())
        losses.append(np.mean(steps))
    for res in results:
        assert res["multi_worker"] and res["replicas"] == 2
        np.testing.assert_allclose(res["loss"], losses, rtol=1e-5)
        np.testing.assert_allclose(res["weights"][0], w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res["weights"][1], [b], rtol=1e-5, atol=1e-6)


def _multiworker_worker():
    import keras
    import tensorflow as tf

    devices.configure_gpus(multi_gpu=True, number_of_gpus=1)
    x, y = _linear_data()
    with devices.distribution_scope(True, 1):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, kernel_initializer="zeros")])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return {"multi_worker": isinstance(model.distribute_strategy,
                                       tf.distribute.MultiWorkerMirroredStrategy),
            "replicas": devices.replica_count(model), "loss": history.history["loss"],
            "weights": [w.tolist() for w in model.get_weights()]}


# --------------------------------------------------------------------------
# trainer1 command line
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """60 synthetic traces; 20 % validation so that one batch of 8 exists."""
    sys.path.insert(0, str(ROOT / "00_data"))
    import synthetic_california as sc

    out = tmp_path_factory.mktemp("dist_data")
    return sc.make_synthetic_california(out / "syn.hdf5", out, n_traces=60, n_stations=3,
                                        split=(0.6, 0.2, 0.2), seed=4, progress=False)


def _trainer_args(data, *extra):
    return [ROOT / "01_train" / "trainer1.py", "--input_hdf5", data["hdf5"],
            "--input_trainset", data["train"], "--input_validset", data["valid"],
            "--batch_size", 8, "--epochs", 1, "--no-augmentation", "--foundation_weights", "none",
            "--convmixer_filters", SMALL_HEAD["convmixer_filters"],
            "--convmixer_depth", SMALL_HEAD["convmixer_depth"], "--seed", 1, "--verbose", 0, *extra]


@pytest.mark.slow
def test_trainer_cli_on_two_devices_from_the_fetched_foundation(tiny_set, tmp_path,
                                                               weights_origin):
    """No --foundation_weights: the official file is fetched (file:// origin), verified,
    and the run on 2 logical devices starts from it; with the variance head (--aleatoric) and
    the BatchNormalization statistics re-estimated before validation."""
    args = _trainer_args(tiny_set, "--output_name", "two", "--multi_gpu", "--number_of_gpus", 2,
                         "--aleatoric", "--bn_recalibration", 2)
    at = args.index("--foundation_weights")
    out = _run(args[:at] + args[at + 2:], "tensorflow", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "CPU is split into 2 logical devices" in out.stdout
    assert "2 replica(s)" in out.stdout
    models = tmp_path / "two_outputs" / "models"
    assert (models / "two_001.weights.h5").is_file()
    report = (tmp_path / "two_outputs" / "X_report.txt").read_text()
    assert "multi_gpu: True" in report and "number_of_gpus: 2" in report
    assert checkpoints.has_variance_head(models / "two_001.weights.h5")
    history = pd.read_csv(tmp_path / "two_outputs" / "history.csv")
    assert np.isfinite(history[["loss", "val_loss", "mae"]].to_numpy()).all()
    # the statistics were re-estimated under the strategy, and the report names the monitor
    assert np.isfinite(history[["bn_shift_decoder", "bn_shift_head"]].to_numpy()).all()
    assert "monitor: val_mae" in report
    cached = weights_origin["cached"]
    assert f"foundation weights: fetched {weights_origin['url']} into {cached} (sha256 verified)" \
        in out.stderr
    assert f"foundation_weights_used: {cached} (official U-Trans release" in report


@pytest.mark.slow
def test_cli_multi_gpu_gives_jax_two_host_devices():
    """The command line's XLA_FLAGS (set before JAX starts) split the CPU for JAX."""
    pytest.importorskip("jax", reason="the JAX backend is not installed")
    script = ("from utrans_loc import cli; cli.prepare_environment(['--multi_gpu', "
              "'--number_of_gpus', '2']); import os, jax; "
              "print(os.environ['XLA_FLAGS']); print(len(jax.devices('cpu')))")
    out = _run(["-c", script], "jax", XLA_FLAGS="--xla_cpu_enable_fast_math=false")
    assert out.returncode == 0, out.stderr[-2000:]
    flags, count = out.stdout.split("\n")[-3:-1]
    assert flags == ("--xla_cpu_enable_fast_math=false "
                     "--xla_force_host_platform_device_count=2")  # appended, not replaced
    assert count == "2"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_configure_gpus_rejects_bad_settings():
    res = _worker("errors", "tensorflow")
    for value in ("1.5", "0", "-0.2", "'half'"):
        assert res[f"gpu_limit={value}"].startswith("gpu_limit must be a fraction"), res
    assert "gpuid=0" in res["gpuid=0"] and "CUDA_VISIBLE_DEVICES=''" in res["gpuid=0"]
    assert "number_of_gpus" in res["number_of_gpus=0"]
    assert res["gpu_limit=1"] == "ok"
    # After TensorFlow started, the CPU can no longer be split.
    assert "number_of_gpus=2" in res["too_late"] and "fresh process" in res["too_late"]


def _errors_worker():
    """The ValueError message of each bad configure_gpus call ('ok' if none)."""

    calls = {"gpu_limit=1.5": dict(gpu_limit=1.5), "gpu_limit=0": dict(gpu_limit=0),
             "gpu_limit=-0.2": dict(gpu_limit=-0.2), "gpu_limit='half'": dict(gpu_limit="half"),
             "gpuid=0": dict(gpuid=0), "number_of_gpus=0": dict(multi_gpu=True, number_of_gpus=0),
             "gpu_limit=1": dict(gpu_limit=1),
             "too_late": dict(multi_gpu=True, number_of_gpus=2)}  # last: it starts TensorFlow
    messages = {}
    for name, kwargs in calls.items():
        if name == "too_late":
            import tensorflow as tf
            tf.constant(1.0) + 1.0  # starts the runtime
        try:
            devices.configure_gpus(**kwargs)
            messages[name] = "ok"
        except ValueError as err:
            messages[name] = str(err)
    return messages


@pytest.mark.slow
def test_trainer_cli_gpuid_without_gpu_is_one_line(tiny_set, tmp_path):
    # GPU 99 exists nowhere: the same error with or without GPUs.
    out = _run(_trainer_args(tiny_set, "--output_name", "nogpu", "--gpuid", 99), "tensorflow",
               cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("trainer1: error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr
    assert "gpuid=99" in errors[0] and "CUDA_VISIBLE_DEVICES='99'" in errors[0]
    assert not (tmp_path / "nogpu_outputs").exists()


# --------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------
@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("aleatoric", [False, True], ids=["plain", "variance_head"])
def test_float16_training_uses_loss_scaling(synthetic, aleatoric):
    ids = np.load(synthetic["train"])
    x, y = U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, seed=0)[0]
    loss, _ = U.location_loss_and_metrics(aleatoric)
    with devices.precision_policy("float16"):
        model = U.build_location_model(aleatoric=aleatoric, **SMALL_HEAD)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        model.optimizer.build(model.trainable_variables)   # as trainer1: one trace
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    losses = [float(np.asarray(model.train_on_batch(x, y))) for _ in range(3)]
    assert np.isfinite(losses).all()
    out = np.asarray(model.predict_on_batch(x))
    assert out.dtype == np.float32 and out.shape == (8, 6 if aleatoric else 3)
    assert np.isfinite(out).all()


if __name__ == "__main__":
    # Worker mode: python tests/test_devices.py <name> (conftest set sys.path).
    result = globals()[f"_{sys.argv[1]}_worker"]()
    print(json.dumps(result))
