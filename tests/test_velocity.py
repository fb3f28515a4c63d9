"""Velocity models (utrans_loc.velocity): units, columns, TauP's gaps, smooth travel times."""

import copy
import time

import numpy as np
import pytest

from utrans_loc import origins, velocity

# A 4-layer crust over a mantle, and the two low-velocity zones (LVZ) TauP mishandles.
LAYERS = [(0.0, 5.5, 3.2), (4.0, 6.3, 3.6), (16.0, 6.7, 3.9), (30.0, 7.8, 4.5)]
MANTLE_LVZ = [(0.0, 6.0, 3.5), (15.0, 6.5, 3.75), (35.0, 8.0, 4.5), (60.0, 7.5, 4.2)]
CRUSTAL_LVZ = [(0.0, 6.0, 3.5), (10.0, 5.0, 2.9), (20.0, 6.5, 3.7), (35.0, 8.0, 4.5)]


def _refused(tmp_path, text, *messages):
    path = tmp_path / "model.txt"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        velocity.read_layers(path)
    for message in (str(path),) + messages:
        assert message in str(err.value), (message, str(err.value))


# --------------------------------------------------------------------------
# a. units
# --------------------------------------------------------------------------
def test_velocities_in_m_per_s_are_refused(tmp_path):
    for vp, vs in ((6000.0, 3500.0), (6.0, 3500.0)):
        with pytest.raises(ValueError, match="--vp/--vs: v[ps] [0-9]+ looks like m/s"):
            velocity.check_velocity_model(vp, vs)
        with pytest.raises(ValueError, match="looks like m/s"):
            velocity.HalfSpace(vp, vs)
    _refused(tmp_path, "depth_top_km, vp, vs\n0, 5500, 3180\n5, 6300, 3600\n",
             "line 2: vp 5500 looks like m/s")
    _refused(tmp_path, "0, 5.5, 3.2\n5, 6.3, 3600\n", "line 2: vs 3600 looks like m/s")
    # Out of the range of rock, not m/s.
    with pytest.raises(ValueError, match="--vp/--vs: vp 20 km/s is outside 1-15 km/s"):
        velocity.check_velocities(20.0, 3.5, "--vp/--vs")
    _refused(tmp_path, "0, 5.5, 0.1\n", "line 1: vs 0.1 km/s is outside 0.3-10 km/s")
    # The edges of the range and a slow near-surface layer are accepted.
    (tmp_path / "ok.txt").write_text("0, 1.6, 0.4\n0.5, 6.0, 3.5\n40, 8.1, 4.6\n")
    assert velocity.read_layers(tmp_path / "ok.txt")[0] == (0.0, 1.6, 0.4)


# --------------------------------------------------------------------------
# b. vs below vp (refused already before velocity.py: kept)
# --------------------------------------------------------------------------
def test_vs_not_below_vp_is_refused_naming_option_or_line(tmp_path):
    with pytest.raises(ValueError, match="--vp/--vs: vs must be below vp"):
        velocity.check_velocity_model(3.5, 3.5)
    _refused(tmp_path, "0, 5.5, 3.2\n10, 6.0, 6.5\n", "line 2: vs must be below vp")


# --------------------------------------------------------------------------
# c. a vp/vs ratio column read as vs
# --------------------------------------------------------------------------
@pytest.mark.parametrize("header", ["depth,vp,vpvs", "depth_km vp_km_s vp/vs",
                                    "Depth(km), Vp(km/s), Vp/Vs", "z vp ratio"])
def test_a_header_naming_a_ratio_is_refused(tmp_path, header):
    # Values a ratio file and a (slow) vs file could both have: only the header tells.
    _refused(tmp_path, f"{header}\n0, 3.0, 1.8\n1, 3.4, 1.9\n", "line 1", "names a vp/vs ratio")


def test_headerless_ratio_values_are_refused_and_real_slow_vs_is_not(tmp_path):
    _refused(tmp_path, "0, 6.0, 1.73\n15, 6.5, 1.75\n35, 8.0, 1.78\n",
             "line 3", "looks like a vp/vs ratio", "vp/vs 4.49")
    # Genuine: shallow layers with vs 1.4-2.1 km/s but a rock's vp/vs; a model
    # that reaches crystalline crust; headers naming vs (and a ratio beside it).
    for text in ("0, 2.8, 1.5\n1, 3.4, 1.9\n",
                 "0, 3.0, 1.6\n2, 6.0, 3.5\n",
                 "depth_top_km, vp, vs\n0, 6.0, 3.5\n",
                 "depth vp vs   # vp/vs 1.71\n0 6.0 3.5\n",
                 "Depth(km) Vp(km/s) Vs(km/s)\n0 6.0 3.5\n"):
        path = tmp_path / "good.txt"
        path.write_text(text)
        velocity.read_layers(path)


# --------------------------------------------------------------------------
# d. low-velocity zones: what TauP misses is filled by Fermat's bound
# --------------------------------------------------------------------------
def test_mantle_lvz_nodes_without_an_arrival_are_filled_with_the_direct_one():
    distances = np.arange(100.0, 301.0, 10.0)
    depths = np.array([34.0, 36.0, 38.0, 40.0])
    table = velocity.taup_table(MANTLE_LVZ, distances, depths)
    missing = {p: ~np.isfinite(v) for p, v in table.items()}
    # TauP: no first P 36-40 km deep beyond 160 km (this made LayeredModel fail).
    assert missing["P"][distances < 160].sum() == 0 and missing["P"][:, 1].sum() == 15
    notes = velocity.fermat_bound(table, distances, depths, MANTLE_LVZ, "lvz.txt")
    assert notes and notes[0].startswith("P filled at 22 table node(s), depths 36-40 km")
    # The rays TauP missed turn in the lid above the LVZ: the same layers
    # without the LVZ time them.
    lid = velocity.taup_table(MANTLE_LVZ[:3], distances, depths)
    for phase in ("P", "S"):
        assert np.all(np.isfinite(table[phase]))
        assert np.abs(table[phase] - lid[phase])[missing[phase]].max() < 0.05


def test_crustal_lvz_late_taup_arrivals_are_lowered_and_right_ones_kept():
    distances = np.arange(120.0, 201.0, 10.0)
    depths = np.array([0.0, 2.0, 4.0])
    table = velocity.taup_table(CRUSTAL_LVZ, distances, depths)
    raw = copy.deepcopy(table)
    # At 2 km depth TauP's first P from 160 km on is a later phase (the direct
    # wave at 6 km/s reaches 160 km in 26.7 s, as from 0 and 4 km).
    assert raw["P"][4, 1] - 160.0 / 6.0 > 1.0
    notes = velocity.fermat_bound(table, distances, depths, CRUSTAL_LVZ, "crust.txt")
    assert any(n.startswith("P lowered") and "depths 2 km" in n for n in notes)
    assert table["P"][4, 1] == pytest.approx(160.0 / 6.0, abs=0.05)
    kept = np.ones_like(raw["P"], bool)
    kept[distances >= 160, 1] = False
    for phase in ("P", "S"):
        assert np.abs(table[phase] - raw[phase])[kept].max() < 0.002


def test_a_table_without_any_arrival_names_file_phase_depths_and_distances():
    distances, depths = np.array([0.0, 10.0]), np.array([0.0, 2.0])
    table = {"P": np.full((2, 2), np.nan), "S": np.ones((2, 2))}
    with pytest.raises(ValueError, match=r"m\.txt: TauP finds no first P arrival at depths "
                                         r"0-2 km, epicentral distances 0-10 km"):
        velocity.fermat_bound(table, distances, depths, LAYERS, "m.txt")


def test_check_velocity_model_builds_the_model_once(tmp_path, monkeypatch):
    """The locator's up-front check: the model built, checked, kept for the run."""
    built = []

    def building(vp, vs, path):
        built.append(path)
        return velocity.HalfSpace(vp, vs) if path is None else object()

    monkeypatch.setattr(velocity, "velocity_model", building)
    monkeypatch.setattr(velocity, "_BUILT", {})     # what earlier tests built is not ours
    half = velocity.check_velocity_model(6.0, 3.5)
    assert isinstance(half, velocity.HalfSpace) and velocity.check_velocity_model(6.0, 3.5) is half
    path = tmp_path / "m.txt"
    path.write_text("0, 6.0, 3.5\n")
    model = velocity.check_velocity_model(6.0, 3.5, str(path))
    assert velocity.check_velocity_model(6.0, 3.5, str(path)) is model
    path.write_text("0, 6.1, 3.5\n")     # a changed file is built again
    assert velocity.check_velocity_model(6.0, 3.5, str(path)) is not model
    assert built == [None, str(path), str(path)]
    with pytest.raises(ValueError, match="--vp/--vs"):
        velocity.check_velocity_model(6000.0, 3500.0, str(path))


@pytest.mark.slow
def test_an_lvz_file_builds_up_front(tmp_path):
    path = tmp_path / "lvz.txt"
    path.write_text("".join(f"{z}, {p}, {s}\n" for z, p, s in MANTLE_LVZ))
    velocity.read_layers(path)
    model = velocity.check_velocity_model(path=str(path))
    assert any("P filled" in f for f in model.filled) and "P filled" in model.description


# --------------------------------------------------------------------------
# e. smooth travel times: no solution depths trapped on table nodes
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def layered():
    start = time.time()
    model = velocity.LayeredModel(LAYERS, max_distance_km=120.0, max_depth_km=30.0)
    model.build_s = time.time() - start
    return model


def test_travel_times_between_nodes_match_taup(layered):
    distances = np.array([1.1, 7.3, 13.9, 27.5, 48.2, 77.7, 103.4, 117.3])
    depths = np.array([0.7, 5.1, 9.7, 15.3, 21.9, 27.1])
    taup = velocity.taup_table(LAYERS, distances, depths)
    d, z = np.meshgrid(distances, depths, indexing="ij")
    for phase in ("P", "S"):
        error = np.abs(layered.travel_time(phase, d, z) - taup[phase])
        assert error.max() < 0.05, (phase, error.max())
    # Smooth between nodes: the slope in depth changes little across one.
    eps = 1e-3
    for node in (10.0, 20.0):
        above = (layered.travel_time("P", 50.0, node) - layered.travel_time("P", 50.0, node - eps))
        below = (layered.travel_time("P", 50.0, node + eps) - layered.travel_time("P", 50.0, node))
        assert abs(above - below) / eps < 1e-3
    # Beyond the table the time goes on at the last slope.
    last = layered.distances[-1]
    slope = float(layered.travel_time("P", last, 10.0) - layered.travel_time("P", last - 1, 10.0))
    assert float(layered.travel_time("P", last + 20, 10.0)) == pytest.approx(
        float(layered.travel_time("P", last, 10.0)) + 20 * slope, abs=0.02)


def _events(model, n, seed):
    rng = np.random.default_rng(seed)
    lat0, lon0 = 35.5, -118.0
    plane = origins.Plane(lat0, lon0)
    for _ in range(n):
        angle, r = rng.uniform(0, 2 * np.pi, 3), rng.uniform(10, 80, 3)
        east, north = r * np.cos(angle), r * np.sin(angle)
        lat, lon = plane.latlon(east, north)
        depth = rng.uniform(2, 25)
        picks = {k: [] for k in ("lat", "lon", "elevation_km", "phase", "time", "std")}
        for phase in ("P", "S"):
            std = origins.PICK_STD_S[phase]
            times = (100 + model.travel_time(phase, np.hypot(east, north), depth)
                     + std * rng.standard_normal(3))
            for k in range(3):
                for key, value in zip(picks, (lat[k], lon[k], 0.0, phase, times[k], std)):
                    picks[key].append(value)
        estimates = {"lat": lat0 + rng.normal(0, 5, 3) / plane.km_lat,
                     "lon": lon0 + rng.normal(0, 5, 3) / plane.km_lon,
                     "depth_km": depth + rng.normal(0, 5, 3),
                     "lat_std_km": np.full(3, 5.0), "lon_std_km": np.full(3, 5.0),
                     "depth_std_km": np.full(3, 5.0)}
        yield estimates, {k: np.asarray(v) for k, v in picks.items()}


def test_hybrid_origin_depths_are_not_trapped_on_table_nodes(layered):
    """Bilinear times put 11 of these 60 solution depths on an inner node (18 %); splines none."""
    depths = np.array([origins.hybrid_origin(e, p, layered, max_depth_km=30.0)["depth_km"]
                       for e, p in _events(layered, 60, 3)])
    inner = layered.depths[1:-1]       # 0 and 30 km are the search's bounds
    on_node = np.min(np.abs(depths[:, None] - inner[None, :]), axis=1) < 0.01
    assert on_node.mean() < 0.1, np.sort(depths[on_node])
