"""One metadata vocabulary: each field's name in every format the project reads.

The canonical name of a field is its column in the per-trace tables
(:func:`utrans_loc.splits.read_metadata`, the tester's results; the builders'
``california_traces.csv`` keeps the DataCollected spellings of the file it
describes). The same field is spelled differently by the upstream DataCollected
HDF5 attributes, by STEAD's metadata and by SeisBench's; every reader maps
names through :func:`mapping` instead of keeping its own list, so a field is
renamed or added here once.

Imports nothing from the project: the card's module and every reader may use it.
"""

VOCABULARIES = ("table", "datacollected", "stead", "seisbench")

# canonical (table) name: (DataCollected attribute, STEAD column, SeisBench column);
# None where the format has no such field.
FIELDS = {
    "station_lat": ("station_lat", "receiver_latitude", "station_latitude_deg"),
    "station_lon": ("station_long", "receiver_longitude", "station_longitude_deg"),
    "station_elevation_m": (None, "receiver_elevation_m", "station_elevation_m"),
    "event_lat": ("event_lat", "source_latitude", "source_latitude_deg"),
    "event_lon": ("event_long", "source_longitude", "source_longitude_deg"),
    "depth_km": ("depth", "source_depth_km", "source_depth_km"),
    "magnitude": ("magnitude", "source_magnitude", "source_magnitude"),
    "magnitude_type": ("magnitude_type", "source_magnitude_type", "source_magnitude_type"),
    "p_arrival_sample": ("p_arrival_sample", "p_arrival_sample", "trace_p_arrival_sample"),
    "s_arrival_sample": ("s_arrival_sample", "s_arrival_sample", "trace_s_arrival_sample"),
    "coda_end_sample": ("coda_end_sample", "coda_end_sample", "trace_coda_end_sample"),
    "snr_db": ("snr_db", "snr_db", "trace_snr_db"),
    "data_category": ("data_category", "trace_category", "trace_category"),
    "source_id": ("source_id", "source_id", "source_id"),
    "source_origin_time": ("source_origin_time", "source_origin_time", "source_origin_time"),
    "source_distance_km": ("source_distance_km", "source_distance_km", "path_ep_distance_km"),
    "back_azimuth_deg": ("back_azimuth_deg", "back_azimuth_deg", "path_back_azimuth_deg"),
    "network_code": ("network_code", "network_code", "station_network_code"),
    "receiver_code": ("receiver_code", "receiver_code", "station_code"),
    "trace_start_time": ("trace_start_time", "trace_start_time", "trace_start_time"),
}

# The location target's inputs (UTRANS_SPEC section 1), by canonical name.
LABEL_FIELDS = ("station_lat", "station_lon", "event_lat", "event_lon", "depth_km")


def _check(vocabulary):
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown metadata vocabulary {vocabulary!r}; "
                         f"one of {', '.join(VOCABULARIES)}")


def name(field, vocabulary):
    """``field`` (canonical) as ``vocabulary`` spells it, None where it has none."""
    _check(vocabulary)
    if vocabulary == "table":
        return field if field in FIELDS else None
    return FIELDS[field][VOCABULARIES.index(vocabulary) - 1]


def names(*fields, to):
    """The names of canonical ``fields`` in vocabulary ``to``, as a tuple (None where
    it has none)."""
    return tuple(name(f, to) for f in fields)


def mapping(source, target, fields=None):
    """{name in ``source``: name in ``target``} for the fields both have.

    ``fields`` (canonical names) restricts and orders the result; by default
    every field, in :data:`FIELDS` order.
    """
    _check(source)
    _check(target)
    pairs = ((name(f, source), name(f, target)) for f in (FIELDS if fields is None else fields))
    return {a: b for a, b in pairs if a is not None and b is not None}
