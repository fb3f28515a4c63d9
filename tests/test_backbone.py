"""U-Trans foundation: structure, official weights, parity with upstream, loader errors."""

import hashlib
import shutil

import h5py
import numpy as np
import pytest
from conftest import FOUNDATION_H5, PARITY, ROOT, STEAD_SAMPLE, child_env, need, run_script

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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # Named files that are not the official release: used, with a warning naming both hashes.
    with pytest.warns(UserWarning, match=f"NOT the official release.*{ub.OFFICIAL_SHA256}"):
        assert ub.resolve_foundation_weights(str(real)) == str(real)
    with pytest.warns(UserWarning, match="env.h5 are NOT the official"):
        assert ub.resolve_foundation_weights(None) == str(env)
    monkeypatch.delenv(ub.WEIGHTS_ENV)
    monkeypatch.chdir(tmp_path)
    # Nothing named, no weights/ file, and the origin unreachable (conftest).
    with pytest.raises(FileNotFoundError, match="could not be fetched.*U-Trans repository"):
        ub.resolve_foundation_weights(None)
    with pytest.warns(UserWarning, match="random initialisation"):
        assert ub.resolve_foundation_weights("none") is None
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        ub.resolve_foundation_weights(str(tmp_path / "missing.h5"))


def test_default_weights_file_must_be_the_official_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    (tmp_path / ub.DEFAULT_WEIGHTS).write_bytes(b"not the release")
    bad = ub.sha256_of(ub.DEFAULT_WEIGHTS)
    with pytest.raises(ub.WeightsFileError, match=f"{ub.DEFAULT_WEIGHTS}: sha256 {bad} is not "
                                                  f"the official release's {ub.OFFICIAL_SHA256}"):
        ub.resolve_foundation_weights(None)
    with pytest.warns(UserWarning, match="NOT the official"):   # named explicitly: allowed
        assert ub.resolve_foundation_weights(ub.DEFAULT_WEIGHTS) == ub.DEFAULT_WEIGHTS
    shutil.copyfile(need(FOUNDATION_H5), ub.DEFAULT_WEIGHTS)
    said = []
    assert ub.resolve_foundation_weights(None, log=said.append) == ub.DEFAULT_WEIGHTS
    assert said == [f"{ub.DEFAULT_WEIGHTS} (official release, sha256 verified)"]


def test_weights_fetched_once_verified_and_refetched_when_corrupted(weights_origin):
    said = []
    path = ub.resolve_foundation_weights(None, log=said.append)
    assert path == str(weights_origin["cached"])
    assert ub.sha256_of(path) == ub.OFFICIAL_SHA256
    assert said == [f"fetched {weights_origin['url']} into {path} (sha256 verified)"]
    weights_origin["origin"].unlink()   # the second call must not need the origin
    assert ub.fetch_foundation_weights(log=said.append) == path
    assert said[-1] == f"{path} (cached official release, sha256 verified)"
    # A corrupted cache (a cut download, a flipped byte) is detected and fetched again.
    shutil.copyfile(need(FOUNDATION_H5), weights_origin["origin"])
    with open(path, "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\x00\x01\x02\x03")
    corrupted = ub.sha256_of(path)
    assert ub.fetch_foundation_weights(log=said.append) == path
    assert said[-2] == (f"cached {path} has sha256 {corrupted}, not the official "
                        f"{ub.OFFICIAL_SHA256}: fetching it again")
    assert ub.sha256_of(path) == ub.OFFICIAL_SHA256


def test_fetched_file_with_another_hash_is_never_used(weights_origin):
    weights_origin["origin"].write_bytes(b"a mirror serving something else")
    wrong = hashlib.sha256(b"a mirror serving something else").hexdigest()
    with pytest.raises(ub.WeightsFileError) as err:
        ub.resolve_foundation_weights(None, log=lambda m: None)
    message = str(err.value)
    assert str(weights_origin["cached"]) in message and wrong in message
    assert ub.OFFICIAL_SHA256 in message and "not used" in message
    # The next call does not take the bad cached file either.
    with pytest.raises(ub.WeightsFileError):
        ub.fetch_foundation_weights(log=lambda m: None)


def test_weights_cache_folder_that_cannot_be_made(tmp_path, weights_origin):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=f"{ub.CACHE_ENV} to a writable folder"):
        ub.fetch_foundation_weights(cache_dir=str(blocker / "cache"))


def test_demo_fetches_weights_or_says_it_starts_from_random(weights_origin, monkeypatch, capsys):
    import demo

    assert demo._weights(None) == str(weights_origin["cached"])
    assert "fetched" in capsys.readouterr().err
    monkeypatch.setenv("UTRANS_WEIGHTS_URL", (weights_origin["origin"].parent / "gone.h5").as_uri())
    monkeypatch.setenv("UTRANS_CACHE_DIR", str(weights_origin["origin"].parent / "empty"))
    assert demo._weights(None) == "none"
    out = capsys.readouterr().out
    assert "could not be fetched" in out and "running from random initialisation" in out
    assert demo._weights("none") == "none"


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


@pytest.mark.slow
def test_official_weights_and_location_checkpoint_under_jax_backend():
    pytest.importorskip("jax", reason="the JAX backend is not installed")
    script = JAX_SCRIPT.format(root=str(ROOT), weights=need(FOUNDATION_H5),
                               ref=need(PARITY / "foundation_ref.npz"),
                               ckpt=need(PARITY / "location_ckpt_keras2.h5"),
                               lref=need(PARITY / "location_ref.npz"))
    # XLA's CPU optimisation passes, not the numerics, dominate here: -O0 takes 26 s
    # down to 19 s, with the same errors to 1e-7.
    out = run_script("-c", script, timeout=300,
                     env=child_env("jax", XLA_FLAGS="--xla_backend_optimization_level=0"))
    assert out.returncode == 0, out.stderr[-2000:]
    lat_err, rec_err, loc_err = map(float, out.stdout.split()[-3:])
    assert lat_err < 1e-4 and rec_err < 1e-4 and loc_err < 1e-5
