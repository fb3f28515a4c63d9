"""U-Trans foundation: structure, official weights, parity with upstream, loader errors."""

import os
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest
from conftest import FOUNDATION_H5, PARITY, ROOT, STEAD_SAMPLE, need

import EqT_utils_Loc_California as U
import utrans_backbone as ub


@pytest.fixture(scope="module")
def foundation():
    return ub.build_foundation(weights=need(FOUNDATION_H5))


def test_structure_latent_and_decoder_stream():
    model = ub.build_foundation()
    assert model.output_shape == (None, 6000, 3)
    assert model.count_params() == 662_098
    latent = ub.latent_model(model)
    assert latent.output_shape == (None, 75, 80)
    assert latent.layers[-1].name == ub.LATENT_NAME
    stream = ub.decoder_stream(latent.output)
    assert tuple(stream.shape) == (None, 6000, 1)


def test_every_weight_equals_the_file(foundation):
    info = ub.load_legacy_h5_weights(foundation, need(FOUNDATION_H5))
    assert info["official"] and info["n_layers"] == 51
    assert "official U-Trans release" in ub.weights_provenance(str(FOUNDATION_H5))
    with h5py.File(FOUNDATION_H5, "r") as fh:
        names = [n.decode() if isinstance(n, bytes) else n for n in fh.attrs["layer_names"]]
        with_weights = [n for n in names if len(fh[n].attrs["weight_names"])]
        layers = [l for l in foundation.layers if l.weights]
        assert len(layers) == len(with_weights)
        for layer, name in zip(layers, with_weights):
            group = fh[name]
            for var, wname in zip(layer.weights, group.attrs["weight_names"]):
                np.testing.assert_array_equal(var.numpy(), group[wname][()])


def test_parity_with_upstream_foundation(foundation):
    ref = np.load(need(PARITY / "foundation_ref.npz"))
    latent = ub.latent_model(foundation).predict(ref["x"], verbose=0)
    recon = foundation.predict(ref["x"], verbose=0)
    assert np.abs(latent - ref["latent"]).max() < 1e-4
    assert np.abs(recon - ref["reconstruction"]).max() < 1e-4


def _real_traces():
    with h5py.File(need(STEAD_SAMPLE), "r") as fh:
        group = fh["earthquake/local"]
        raw = [group[k][()] for k in sorted(group)]
    return np.stack([U.normalize(U.bandpass_taper(t)) for t in raw])


def _median_channel_correlation(model, x):
    recon = model.predict(x, verbose=0)
    corr = [np.corrcoef(x[i, :, c], recon[i, :, c])[0, 1]
            for i in range(len(x)) for c in range(3)]
    return float(np.nanmedian(corr))


def test_official_weights_reconstruct_real_traces(foundation):
    x = _real_traces()
    assert x.shape == (50, 6000, 3)
    loaded = _median_channel_correlation(foundation, x)
    random = _median_channel_correlation(ub.build_foundation(), x)
    assert loaded >= 0.95
    assert random < 0.9 and random < loaded - 0.1


def test_wrong_weights_files_fail_loudly(tmp_path):
    model = ub.build_foundation()
    with pytest.raises(ub.WeightsFileError, match="layers with weights"):
        ub.load_legacy_h5_weights(model, need(PARITY / "location_ckpt_keras2.h5"))
    not_h5 = tmp_path / "junk.h5"
    not_h5.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ub.WeightsFileError, match="junk.h5"):
        ub.load_legacy_h5_weights(model, not_h5)
    keras3 = tmp_path / "k3.weights.h5"
    model.save_weights(keras3)
    with pytest.raises(ub.WeightsFileError, match="not a Keras 2"):
        ub.load_legacy_h5_weights(model, keras3)
    with pytest.raises(FileNotFoundError):
        ub.load_legacy_h5_weights(model, tmp_path / "absent.h5")


def test_shape_mismatch_names_the_layer_and_loads_nothing(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(need(FOUNDATION_H5), "r") as src, h5py.File(bad, "w") as dst:
        for key in src:
            src.copy(key, dst)
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        del dst["conv1d_3/conv1d_3/bias:0"]
        dst["conv1d_3/conv1d_3/bias:0"] = np.zeros(11, np.float32)
    model = ub.build_foundation()
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ub.WeightsFileError, match="conv1d_3"):
        ub.load_legacy_h5_weights(model, bad)
    assert "NOT the official release" in ub.weights_provenance(str(bad))
    for b, w in zip(before, model.weights):
        np.testing.assert_array_equal(b, w.numpy())


def test_weights_path_precedence(tmp_path, monkeypatch):
    real = tmp_path / "a.h5"
    real.write_bytes(b"x")
    env = tmp_path / "env.h5"
    env.write_bytes(b"x")
    monkeypatch.setenv(ub.WEIGHTS_ENV, str(env))
    assert ub.resolve_foundation_weights(str(real)) == str(real)
    assert ub.resolve_foundation_weights(None) == str(env)
    monkeypatch.delenv(ub.WEIGHTS_ENV)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="U-Trans repository"):
        ub.resolve_foundation_weights(None)
    with pytest.warns(UserWarning, match="random initialisation"):
        assert ub.resolve_foundation_weights("none") is None
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        ub.resolve_foundation_weights(str(tmp_path / "missing.h5"))


def test_stochastic_depth_drops_whole_samples():
    layer = ub.StochasticDepth(0.5, seed=1)
    x = np.ones((400, 7, 3), np.float32)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    per_sample = y.reshape(400, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all()
    assert 0.35 < (per_sample[:, 0] == 0).mean() < 0.65


JAX_SCRIPT = """
import numpy as np, keras, sys
sys.path.insert(0, {root!r})
import utrans_backbone as ub
assert keras.backend.backend() == "jax"
m = ub.build_foundation(weights={weights!r})
ref = np.load({ref!r})
lat = np.asarray(ub.latent_model(m).predict(ref["x"], verbose=0))
rec = np.asarray(m.predict(ref["x"], verbose=0))
import EqT_utils_Loc_California as U
from utrans_loc import checkpoints
loc = U.build_location_model()
checkpoints.load_location_weights(loc, {ckpt!r})
lref = np.load({lref!r})
pred = np.asarray(loc.predict(lref["x"], verbose=0))
print(float(np.abs(lat - ref["latent"]).max()), float(np.abs(rec - ref["reconstruction"]).max()),
      float(np.abs(pred - lref["prediction"]).max()))
"""


def test_official_weights_and_location_checkpoint_under_jax_backend():
    pytest.importorskip("jax", reason="the JAX backend is not installed")
    script = JAX_SCRIPT.format(root=str(ROOT), weights=need(FOUNDATION_H5),
                               ref=need(PARITY / "foundation_ref.npz"),
                               ckpt=need(PARITY / "location_ckpt_keras2.h5"),
                               lref=need(PARITY / "location_ref.npz"))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lat_err, rec_err, loc_err = map(float, out.stdout.split()[-3:])
    assert lat_err < 1e-4 and rec_err < 1e-4 and loc_err < 1e-5
