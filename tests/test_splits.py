"""utrans_loc/splits.py: split files checked against the HDF5 file before a run starts."""

import numpy as np
import pytest

import EqT_utils_Loc_California as U
from utrans_loc import splits


def test_noise_trace_in_split_is_an_error_naming_it(synthetic):
    ids = np.concatenate([np.load(synthetic["train"])[:7], synthetic["noise_ids"][:1]])
    gen = U.DataGenerator(ids, synthetic["hdf5"], batch_size=8, shuffle=False)
    x, _ = gen[0]   # inside fit: a NaN batch stops training, then the error is raised
    assert np.isnan(x).all()
    assert isinstance(gen.failure, U.TraceError)
    assert synthetic["noise_ids"][0] in str(gen.failure)
    with pytest.raises(U.TraceError, match=synthetic["noise_ids"][0]):
        splits.check_split(synthetic["hdf5"], ids, "train", U.MAX_D, U.MIN_D)
    meta = splits.check_split(synthetic["hdf5"], ids, "test", U.MAX_D, U.MIN_D,
                              require_labels=False)
    assert meta["event_lat"].isna().sum() == 1


def test_depth_outside_range_is_counted_not_fatal(synthetic, capsys):
    ids = np.load(synthetic["train"])
    meta = splits.check_split(synthetic["hdf5"], ids, "train", max_d=3.0, min_d=1e-5)
    assert len(meta) == len(ids)
    assert "outside [1e-05, 3.0]" in capsys.readouterr().err
