"""utrans_loc/checkpoints.py: loading a location checkpoint into a model."""

import pytest

import EqT_utils_Loc_California as U
from utrans_loc import checkpoints


@pytest.mark.slow
def test_location_weights_of_another_head_are_refused(tmp_path):
    small = U.build_location_model(convmixer_filters=16, convmixer_depth=2)
    path = tmp_path / "small.weights.h5"
    small.save_weights(path)
    other = U.build_location_model(convmixer_filters=32, convmixer_depth=2)
    with pytest.raises(Exception, match="small.weights.h5"):
        checkpoints.load_location_weights(other, path)
