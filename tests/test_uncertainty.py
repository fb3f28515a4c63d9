"""utrans_loc/uncertainty.py: Monte-Carlo dropout sampling in tester1."""

import numpy as np
import pytest
from conftest import SMALL_HEAD, working_dir

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints, uncertainty
import tester1 as te


@pytest.fixture(scope="module")
def loaded(trained):
    model = U.build_location_model(**SMALL_HEAD)
    checkpoints.load_location_weights(model, trained["best_weights"])
    return model


@pytest.fixture(scope="module")
def batch(synthetic):
    ids = np.load(synthetic["test"])[:12]
    return U.DataGeneratorPrediction(ids, synthetic["hdf5"], batch_size=12)


@pytest.mark.slow
def test_sampling_spread_reproducibility_and_batchnorm(loaded, batch):
    before = [w.numpy().copy() for w in loaded.non_trainable_weights]
    deterministic = te.predict_samples(loaded, batch, 1, progress=False)
    samples = te.predict_samples(loaded, batch, 30, seed=7, progress=False)
    assert samples.shape == (30, 12, 3)
    spread = samples.std(axis=0)
    assert (spread > 0).all()
    assert np.unique(np.round(spread[:, 0], 9)).size == 12      # differs between traces
    # The sample mean stays near the deterministic prediction. Dropout before
    # BatchNorm biases the samples of an undertrained model ("variance shift",
    # about 1.5 spreads for this 2-epoch model), so only gross errors are caught.
    assert np.abs(samples.mean(axis=0) - deterministic).mean() < 3 * spread.mean()
    np.testing.assert_array_equal(samples, te.predict_samples(loaded, batch, 30, seed=7,
                                                               progress=False))
    assert not np.allclose(samples, te.predict_samples(loaded, batch, 30, seed=8,
                                                        progress=False))
    for w, old in zip(loaded.non_trainable_weights, before):
        np.testing.assert_array_equal(w.numpy(), old)
    # deterministic mode is exactly model.predict
    np.testing.assert_array_equal(deterministic, loaded.predict_on_batch(batch[0][0]))


@pytest.mark.slow
def test_sampling_model_keeps_upstream_frozen_dropout_off(loaded):
    sampler = uncertainty.mc_sampling_model(loaded, seed=0)
    kinds = {layer.name: type(layer).__name__ for layer in sampler.layers}
    frozen = [n for n in kinds if n.startswith("convf1_dropout")]
    assert len(frozen) == 3 and all(kinds[n] == "Dropout" for n in frozen)
    assert sum(k.startswith("MC") for k in kinds.values()) > 10
    for a, b in zip(sampler.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_tester_uncertainty_gives_a_spread(trained, synthetic, tmp_path):
    with working_dir(tmp_path):
        res = te.tester1(input_hdf5=synthetic["hdf5"], input_testset=synthetic["test"],
                         input_model=trained["best_weights"], output_name="mc",
                         estimate_uncertainty=True, number_of_sampling=4, verbose=0)
    df = res["results"]
    for col in ("pred_event_lat_std", "pred_event_lon_std", "pred_depth_km_std"):
        assert (df[col] > 0).all()
