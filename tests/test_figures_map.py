"""The locator's map (figures.location_map): tick labels that never overlap, the truth.

Small hand-made tables in the shape write_outputs passes (locate.py: the located
picks and the combined origins); the figure is kept open and drawn with Agg.
"""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402

from utrans_loc import figures  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """location_map(...) -> its Figure, drawn and kept open (and its PNG written)."""
    import matplotlib.pyplot as plt

    kept = []

    def keep(fig, path):
        fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
        kept.append(fig)
        return path

    monkeypatch.setattr(figures, "_save", keep)

    def run(*args, **kwargs):
        figures.location_map(*args, **kwargs)
        fig = kept[-1]
        fig.canvas.draw()
        return fig

    yield run
    for fig in kept:
        plt.close(fig)


def _tables(lon0, lon1, lat0, lat1, n_events=3, std=True):
    """Stations at the corners of [lon0, lon1] x [lat0, lat1], two picks per event
    (a combined origin for each), in the columns write_outputs passes."""
    rng = np.random.default_rng(0)
    stations = [(lat0, lon0), (lat1, lon1), (lat0, lon1)]
    rows, origins, truth = [], [], []
    for k in range(n_events):
        event_id = f"SY{k:07d}"
        true_lat, true_lon = rng.uniform(lat0, lat1), rng.uniform(lon0, lon1)
        truth.append({"event_id": event_id, "latitude": true_lat, "longitude": true_lon,
                      "depth_km": 10.0 + k})
        preds = []
        for s_lat, s_lon in stations[:2]:
            preds.append((true_lat + 0.05 * (lat1 - lat0) * rng.standard_normal(),
                          true_lon + 0.05 * (lon1 - lon0) * rng.standard_normal()))
            row = {"network": "SY", "station": f"S{len(rows) % 3}", "event_id": event_id,
                   "station_lat": s_lat, "station_lon": s_lon,
                   "pred_event_lat": preds[-1][0], "pred_event_lon": preds[-1][1],
                   "pred_depth_km": 12.0}
            if std:
                row.update(pred_event_lat_std=0.02 * (lat1 - lat0),
                           pred_event_lon_std=0.02 * (lon1 - lon0))
            rows.append(row)
        lat, lon = np.mean(preds, axis=0)
        origins.append({"event_id": event_id, "latitude": lat, "longitude": lon,
                        "depth_km": 12.0, "method": "hybrid"})
    return pd.DataFrame(rows), pd.DataFrame(origins), pd.DataFrame(truth)


EXTENTS = {
    # North-south strip: with the axes box shrunk to the aspect (the old map) the
    # longitude labels ran into each other ("-117.75-117.50-117.25").
    "narrow": (-117.8, -117.2, 32.5, 34.6),
    "wide": (-122.5, -114.5, 33.0, 33.6),
    "tiny": (-117.013, -117.001, 33.002, 33.011),
    "square": (-118.0, -116.5, 32.5, 34.0),
}


def _visible_labels(ax, axis):
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    tol = 1e-9 * (hi - lo)
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [label for label in labels
            if label.get_visible() and label.get_text()
            and lo - tol <= label.get_position()[0 if axis == "x" else 1] <= hi + tol]


def _overlaps(boxes):
    return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes)
            if i < j and a.overlaps(b)]


@pytest.mark.parametrize("with_truth", [False, True], ids=["estimates", "with_truth"])
@pytest.mark.parametrize("extent", sorted(EXTENTS))
def test_map_tick_labels_do_not_overlap(drawn, tmp_path, extent, with_truth):
    locations, combined, truth = _tables(*EXTENTS[extent])
    fig = drawn(locations, combined, tmp_path / "map.png",
                **({"truth": truth} if with_truth else {}))
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    for axis in ("x", "y"):
        labels = _visible_labels(ax, axis)
        assert len(labels) >= 2, (extent, axis, [t.get_text() for t in labels])
        boxes = [label.get_window_extent(renderer) for label in labels]
        assert not _overlaps(boxes), (extent, axis, [t.get_text() for t in labels])
    # Longitude and latitude labels do not collide in the corner either.
    boxes = [label.get_window_extent(renderer)
             for axis in ("x", "y") for label in _visible_labels(ax, axis)]
    assert not _overlaps(boxes), extent
    assert (tmp_path / "map.png").stat().st_size > 1000


def test_map_ticks_in_degrees_with_equal_distance_aspect(drawn, tmp_path):
    locations, combined, truth = _tables(*EXTENTS["narrow"])
    fig = drawn(locations, combined, tmp_path / "map.png")
    ax = fig.axes[0]
    x_text = [t.get_text() for t in _visible_labels(ax, "x")]
    y_text = [t.get_text() for t in _visible_labels(ax, "y")]
    assert 2 <= len(x_text) <= 5 and 2 <= len(y_text) <= 5
    assert all(t.endswith("\N{DEGREE SIGN}W") for t in x_text), x_text
    assert all(t.endswith("\N{DEGREE SIGN}N") for t in y_text), y_text
    # One km on the ground is as long east-west as north-south on the page.
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    box = ax.get_window_extent(fig.canvas.get_renderer())
    mean_lat = np.deg2rad(0.5 * (y0 + y1))
    px_per_km_east = box.width / ((x1 - x0) * np.cos(mean_lat))
    px_per_km_north = box.height / (y1 - y0)
    assert px_per_km_east == pytest.approx(px_per_km_north, rel=0.05)


def _truth_artists(ax):
    """The green 'X' markers and the truth -> preferred origin line collection."""
    markers = [c for c in ax.collections if isinstance(c, PathCollection)
               and c.get_label() == "true epicentre"]
    lines = [c for c in ax.collections if isinstance(c, LineCollection)
             and c.get_label() == "true epicentre to preferred origin"]
    return markers, lines


def test_map_draws_truth_with_lines_to_preferred_origins(drawn, tmp_path):
    locations, combined, truth = _tables(*EXTENTS["square"])
    # A fourth event located by one station only: its preferred origin is that estimate.
    lone = locations.iloc[[0]].assign(event_id="SY0000009", pred_event_lat=33.9,
                                      pred_event_lon=-117.9)
    locations = pd.concat([locations, lone], ignore_index=True)
    truth = pd.concat([truth, pd.DataFrame([{"event_id": "SY0000009", "latitude": 33.8,
                                             "longitude": -117.7, "depth_km": 5.0}])],
                      ignore_index=True)
    fig = drawn(locations, combined, tmp_path / "map.png", truth=truth)
    ax = fig.axes[0]
    markers, lines = _truth_artists(ax)
    assert len(markers) == 1 and len(lines) == 1
    np.testing.assert_allclose(markers[0].get_offsets(),
                               truth[["longitude", "latitude"]].to_numpy(float))
    segments = sorted(tuple(map(tuple, np.asarray(s))) for s in lines[0].get_segments())
    expected = sorted(
        [((t.longitude, t.latitude), (o.longitude, o.latitude))
         for t, o in zip(truth.iloc[:3].itertuples(), combined.itertuples())]
        + [((-117.7, 33.8), (-117.9, 33.9))])
    np.testing.assert_allclose(np.array(segments), np.array(expected))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "true epicentre" in legend and "true epicentre to preferred origin" in legend


def test_map_truth_ids_match_across_types_and_unlocated_truth_has_no_line(drawn, tmp_path):
    locations, combined, truth = _tables(*EXTENTS["square"], n_events=2, std=False)
    ids = {"SY0000000": 1, "SY0000001": 2}
    locations["event_id"] = locations["event_id"].map(ids).astype(str)
    combined["event_id"] = combined["event_id"].map(ids).astype(str)
    truth["event_id"] = truth["event_id"].map(ids)          # read back from a CSV: integers
    truth = pd.concat([truth, pd.DataFrame([{"event_id": 3, "latitude": 33.0,
                                             "longitude": -117.0}])], ignore_index=True)
    fig = drawn(locations, combined, tmp_path / "map.png", truth=truth[["event_id", "latitude",
                                                                         "longitude"]])
    markers, lines = _truth_artists(fig.axes[0])
    assert len(markers[0].get_offsets()) == 3          # the unlocated event is still shown
    assert len(lines[0].get_segments()) == 2           # ... but joined to nothing


@pytest.mark.parametrize("truth", [None, "empty"])
def test_map_without_truth_draws_no_truth(drawn, tmp_path, truth):
    locations, combined, table = _tables(*EXTENTS["square"])
    fig = drawn(locations, combined, tmp_path / "map.png",
                **({} if truth is None else {"truth": table.iloc[:0]}))
    ax = fig.axes[0]
    assert _truth_artists(ax) == ([], [])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any("true" in text for text in legend)
    assert "combined origin" in legend and "station" in legend


def test_map_without_combined_origins(drawn, tmp_path):
    locations, combined, truth = _tables(*EXTENTS["narrow"], n_events=1)
    fig = drawn(locations.iloc[:1], combined.iloc[:0], tmp_path / "map.png", truth=truth)
    markers, lines = _truth_artists(fig.axes[0])
    assert len(lines[0].get_segments()) == 1          # to the single-station estimate
    np.testing.assert_allclose(lines[0].get_segments()[0][1],
                               locations[["pred_event_lon", "pred_event_lat"]].to_numpy(float)[0])


def test_demo_truth_map_is_an_extra_file_and_never_overwrites(tmp_path, capsys):
    """demo.truth_map draws the locator's outputs with the truth as figures/map_truth.png,
    leaves the locator's map.png alone and keeps a file that is already there."""
    import demo
    from utrans_loc.locate import EVENTS_CSV_NAME, LOCATIONS_NAME, MAP_NAME

    locations, combined, truth = _tables(*EXTENTS["square"])
    # events.csv: the combined origins and one event whose preferred origin is one station's.
    lone = locations.iloc[[0]].assign(event_id="SY0000009")
    locations = pd.concat([locations, lone], ignore_index=True)
    events = pd.concat([combined, pd.DataFrame([{
        "event_id": "SY0000009", "latitude": lone["pred_event_lat"].iloc[0],
        "longitude": lone["pred_event_lon"].iloc[0], "depth_km": 12.0,
        "method": "single-station"}])], ignore_index=True)
    outputs = tmp_path / "demo_locator_outputs"
    (outputs / "figures").mkdir(parents=True)
    locations.to_csv(outputs / LOCATIONS_NAME, index=False)
    events.to_csv(outputs / EVENTS_CSV_NAME, index=False)
    (outputs / "figures" / MAP_NAME).write_bytes(b"the locator's own map")
    truth.to_csv(tmp_path / "truth.csv", index=False)

    path = demo.truth_map(str(tmp_path), str(tmp_path / "truth.csv"))
    assert path == str(tmp_path / demo.TRUTH_MAP) == str(outputs / "figures" / "map_truth.png")
    png = (outputs / "figures" / "map_truth.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert (outputs / "figures" / MAP_NAME).read_bytes() == b"the locator's own map"

    assert demo.truth_map(str(tmp_path), str(tmp_path / "truth.csv")) is None
    assert (outputs / "figures" / "map_truth.png").read_bytes() == png
    assert "exists; it is kept" in capsys.readouterr().err
