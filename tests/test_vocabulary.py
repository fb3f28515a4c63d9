"""The metadata vocabulary: one table of names, the same labels from every reader."""

import numpy as np
import pandas as pd
import pytest

import EqT_utils_Loc_California as U
from utrans_loc import vocabulary
from utrans_loc.traces import STEAD_TO_UPSTREAM


def test_each_format_spells_the_label_fields_as_its_files_do():
    assert vocabulary.mapping("table", "datacollected", vocabulary.LABEL_FIELDS) == {
        "station_lat": "station_lat", "station_lon": "station_long", "event_lat": "event_lat",
        "event_lon": "event_long", "depth_km": "depth"}
    assert vocabulary.mapping("seisbench", "stead", ("station_lon", "source_distance_km")) == {
        "station_longitude_deg": "receiver_longitude", "path_ep_distance_km": "source_distance_km"}
    assert STEAD_TO_UPSTREAM["receiver_longitude"] == "station_long"
    assert STEAD_TO_UPSTREAM["source_depth_km"] == "depth"
    assert STEAD_TO_UPSTREAM["trace_category"] == "data_category"
    # a field a format lacks is left out, not mapped to None
    assert "station_elevation_m" not in vocabulary.mapping("table", "datacollected").values()
    assert None not in vocabulary.mapping("stead", "datacollected")


def test_names_are_unique_within_each_format():
    for vocab in vocabulary.VOCABULARIES:
        names = [vocabulary.name(f, vocab) for f in vocabulary.FIELDS]
        names = [n for n in names if n is not None]
        assert len(names) == len(set(names)), vocab


def test_an_unknown_vocabulary_is_named():
    with pytest.raises(ValueError, match="obspy"):
        vocabulary.mapping("obspy", "table")


def test_labels_from_attributes_and_from_a_table_agree():
    attrs = {"station_lat": 35.1, "station_long": -118.2, "event_lat": 34.9,
             "event_long": -118.0, "depth": 7.5}
    one = U.location_label(attrs, "tr1")
    table = pd.DataFrame({"trace_name": ["tr1"], "station_lat": [35.1], "station_lon": [-118.2],
                          "event_lat": [34.9], "event_lon": [-118.0], "depth_km": [7.5],
                          "p_arrival_sample": [500.0], "s_arrival_sample": [900.0],
                          "coda_end_sample": [2000.0], "snr_db_min": [20.0]})
    labels = U.TraceLabels(np.array(["tr1"]), metadata=table)
    assert labels.known[0]
    np.testing.assert_array_equal(labels.labels[0], one)
    np.testing.assert_allclose(one, [0.2, -0.2, (7.5 - U.MIN_D) / (U.MAX_D - U.MIN_D)], rtol=1e-6)
    assert one.dtype == np.float32


def test_a_missing_label_attribute_is_named_as_the_file_spells_it():
    with pytest.raises(U.TraceError, match="tr9.*station_long"):
        U.location_label({"station_lat": 35.0, "event_lat": 34.0, "event_long": -118.0,
                          "depth": 5.0}, "tr9")
