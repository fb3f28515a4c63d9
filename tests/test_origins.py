"""Multi-station origins (utrans_loc.origins): travel times, the posterior, its errors."""

import math

import numpy as np
import pytest

from utrans_loc import metrics, origins, velocity

STATIONS = np.array([[35.9, -118.3], [35.1, -117.7], [35.6, -117.5], [35.3, -118.6]])
TRUTH = {"lat": 35.5, "lon": -118.0, "depth": 12.0, "t0": 100.0}


def network(n=4, phases=("P", "S"), noise=0.0, seed=0, model=None, estimate_offset_km=0.0,
            estimate_std_km=(20.0, 20.0, 8.0), model_noise=0.0):
    """Single-station estimates and picks of TRUTH at the first ``n`` stations.

    Pick times get ``noise`` x the phase's pick error and ``model_noise`` x
    the travel time of Gaussian noise.
    """
    rng = np.random.default_rng(seed)
    model = model or velocity.HalfSpace(6.0, 3.5)
    plane = origins.Plane(TRUTH["lat"], TRUTH["lon"])
    lat, lon = STATIONS[:n, 0], STATIONS[:n, 1]
    sx, sy = plane.xy(lat, lon)
    distance = np.hypot(sx, sy)
    picks = {k: [] for k in ("lat", "lon", "elevation_km", "phase", "time", "std")}
    for phase in phases:
        std = origins.PICK_STD_S[phase]
        times = TRUTH["t0"] + model.travel_time(phase, distance, TRUTH["depth"])
        for k in range(n):
            picks["lat"].append(lat[k])
            picks["lon"].append(lon[k])
            picks["elevation_km"].append(0.0)
            picks["phase"].append(phase)
            travel = times[k] - TRUTH["t0"]
            picks["time"].append(times[k] + noise * std * rng.standard_normal()
                                 + model_noise * travel * rng.standard_normal())
            picks["std"].append(std)
    north = TRUTH["lat"] + estimate_offset_km / plane.km_lat
    # With noise the estimates scatter by their own 1-sigma errors.
    scatter = noise * rng.standard_normal((3, n)) * np.array(estimate_std_km)[:, None]
    estimates = {"lat": north + scatter[0] / plane.km_lat,
                 "lon": TRUTH["lon"] + scatter[1] / plane.km_lon,
                 "depth_km": TRUTH["depth"] + scatter[2],
                 "lat_std_km": np.full(n, estimate_std_km[0]),
                 "lon_std_km": np.full(n, estimate_std_km[1]),
                 "depth_std_km": np.full(n, estimate_std_km[2])}
    return estimates, {k: np.asarray(v) for k, v in picks.items()}


def epicentral_error(result):
    return float(metrics.geodesic_km(TRUTH["lat"], TRUTH["lon"], result["latitude"],
                                     result["longitude"])[()])


def test_half_space_travel_times_by_hand():
    model = velocity.HalfSpace(6.0, 3.5)
    assert model.travel_time("P", 30.0, 40.0) == pytest.approx(50.0 / 6.0)
    assert model.travel_time("S", 30.0, 40.0) == pytest.approx(50.0 / 3.5)
    # The station's elevation lengthens the vertical path.
    assert model.travel_time("P", 0.0, 10.0, elevation_km=2.0) == pytest.approx(2.0)


def test_exact_picks_give_the_true_origin_and_zero_residuals():
    estimates, picks = network()
    result = origins.hybrid_origin(estimates, picks, velocity.HalfSpace(6.0, 3.5))
    assert epicentral_error(result) < 0.3
    # The travel-time error grows with the travel time, so its log-variance term
    # favours slightly shorter paths: about 1 km shallower here, within the errors.
    assert result["depth_km"] == pytest.approx(TRUTH["depth"], abs=1.5)
    assert abs(result["depth_km"] - TRUTH["depth"]) < result["depth_km_std"]
    assert result["time"] == pytest.approx(TRUTH["t0"], abs=0.05)
    assert result["rms_s"] < 0.02
    assert len(result["residuals"]) == 8


def test_arrival_times_beat_a_biased_prior():
    """Estimates 15 km north of the truth: the picks pull the origin back."""
    estimates, picks = network(estimate_offset_km=15.0, noise=1.0, seed=3,
                               model=velocity.HalfSpace(6.0, 3.5))
    result = origins.hybrid_origin(estimates, picks, velocity.HalfSpace(6.2, 3.6))
    assert epicentral_error(result) < 3.0
    # Without picks the posterior is the prior: its mean, its (combined) spread.
    one = {k: v[:1] for k, v in picks.items()}
    prior_only = origins.hybrid_origin(estimates, one, velocity.HalfSpace(6.0, 3.5))
    assert prior_only["latitude_std_km"] == pytest.approx(20.0 / 2.0, rel=0.05)


def test_errors_grow_with_fewer_phases_and_with_model_error():
    estimates, picks = network()
    model = velocity.HalfSpace(6.0, 3.5)
    both = origins.hybrid_origin(estimates, picks, model)
    p_only = {k: v[picks["phase"] == "P"] for k, v in picks.items()}
    only_p = origins.hybrid_origin(estimates, p_only, model)
    assert only_p["depth_km_std"] > both["depth_km_std"]
    exact_model = origins.hybrid_origin(estimates, picks, model, model_error=0.0)
    assert exact_model["latitude_std_km"] < both["latitude_std_km"]


@pytest.mark.slow
def test_one_sigma_errors_cover_about_two_thirds():
    """Pick and travel-time errors as the posterior assumes them: coverage near nominal."""
    inside, trials = {"lat": 0, "lon": 0, "depth": 0}, 60
    for seed in range(trials):
        estimates, picks = network(noise=1.0, seed=seed, model_noise=origins.MODEL_ERROR)
        result = origins.hybrid_origin(estimates, picks, velocity.HalfSpace(6.0, 3.5))
        inside["lat"] += abs(result["latitude"] - TRUTH["lat"]) <= result["latitude_std"]
        inside["lon"] += abs(result["longitude"] - TRUTH["lon"]) <= result["longitude_std"]
        inside["depth"] += abs(result["depth_km"] - TRUTH["depth"]) <= result["depth_km_std"]
    for key, count in inside.items():
        assert 0.5 <= count / trials <= 0.9, (key, count / trials)


def test_error_ellipse_and_gap_on_known_geometry():
    major, minor, azimuth = origins.error_ellipse(np.array([[1.0, 0.0], [0.0, 4.0]]))
    assert (major, minor, azimuth) == pytest.approx((2.0, 1.0, 0.0))
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rot = np.array([[s, -c], [c, s]])      # east/north of an axis at azimuth 30 deg
    cov = rot @ np.diag([9.0, 1.0]) @ rot.T
    assert origins.error_ellipse(cov) == pytest.approx((3.0, 1.0, 30.0))
    # Stations N, E, S of the epicentre: the largest gap is the western 180 deg.
    gap = origins.azimuthal_gap(35.0, -118.0, [35.5, 35.0, 34.5], [-118.0, -117.4, -118.0])
    assert gap == pytest.approx(180.0, abs=0.5)
    assert origins.azimuthal_gap(35.0, -118.0, [35.5], [-118.0]) == 360.0


def test_velocity_model_file_checks(tmp_path):
    good = tmp_path / "model.csv"
    good.write_text("depth_top_km, vp, vs\n0, 5.5, 3.2  # sediments\n5.5 6.3 3.6\n\n32, 7.8, 4.5\n")
    assert velocity.read_layers(good) == [(0.0, 5.5, 3.2), (5.5, 6.3, 3.6), (32.0, 7.8, 4.5)]
    cases = {
        "0, 5.5, 3.2\n5, six, 3.6\n": "line 2",
        "0, 5.5, 3.2\n5, 6.0\n": "line 2: expected 3 numbers",
        "0, 5.5, 3.2\n10, 6.0, 3.5\n8, 6.5, 3.7\n": "line 3: layer tops must increase",
        "0, 5.5, 3.2\n10, -6.0, 3.5\n": "line 2: velocities must be positive",
        "0, 5.5, 6.2\n": "line 1: vs must be below vp",
        "2, 5.5, 3.2\n": "the first layer must start at depth 0",
        "# nothing\n": "no layers",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.txt"
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as err:
            velocity.read_layers(path)
        assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="--vp/--vs"):
        velocity.HalfSpace(0.0, 3.5)


@pytest.mark.slow
def test_layered_model_times_are_taup_first_arrivals():
    """A model of two equal layers is a half-space: TauP's times match straight rays."""
    layered = velocity.LayeredModel([(0.0, 6.0, 3.5), (30.0, 6.0, 3.5)], max_distance_km=60.0,
                                   max_depth_km=20.0)
    straight = velocity.HalfSpace(6.0, 3.5)
    for distance, depth in ((0.0, 5.0), (13.0, 7.0), (47.0, 15.0)):
        for phase in ("P", "S"):
            assert float(layered.travel_time(phase, distance, depth)) == pytest.approx(
                float(straight.travel_time(phase, distance, depth)), abs=0.03)
    # A fast lower layer makes a head wave that arrives first far away.
    fast = velocity.LayeredModel([(0.0, 6.0, 3.5), (10.0, 8.0, 4.6)], max_distance_km=120.0,
                                max_depth_km=8.0)
    assert float(fast.travel_time("P", 110.0, 5.0)) < float(straight.travel_time("P", 110.0, 5.0)) - 1.0


@pytest.fixture(scope="module")
def uniform_layers():
    """A layered model equal to the 6.0/3.5 half-space (TauP's table to 160 km, 100 km deep)."""
    return velocity.LayeredModel([(0.0, 6.0, 3.5), (30.0, 6.0, 3.5)], max_distance_km=160.0)


@pytest.mark.slow
def test_errors_stay_finite_at_the_depth_bound(uniform_layers):
    """A shallow solution at depth 0 of a layered model: curvature taken inside the bound."""
    estimates, picks = network(n=3, noise=1.0, seed=7, model_noise=0.05)
    layered = origins.hybrid_origin(estimates, picks, uniform_layers)
    straight = origins.hybrid_origin(estimates, picks, velocity.HalfSpace(6.0, 3.5))
    assert layered["depth_km"] < 1.0
    for key in ("latitude_std_km", "longitude_std_km", "depth_km_std", "time_std"):
        assert np.isfinite(layered[key]) and layered[key] < 3.0 * straight[key] + 1.0, key


def test_a_network_across_the_antimeridian():
    """The test network moved 62 deg west: stations on both sides of 180 deg."""
    estimates, picks = network()
    for table in (estimates, picks):
        table["lon"] = (table["lon"] + 180.0 - 62.0) % 360.0 - 180.0
    result = origins.hybrid_origin(estimates, picks, velocity.HalfSpace(6.0, 3.5))
    true_lon = (TRUTH["lon"] - 62.0 + 180.0) % 360.0 - 180.0
    assert (picks["lon"] > 0).any() and (picks["lon"] < 0).any()
    assert abs(result["latitude"] - TRUTH["lat"]) < 0.01
    assert abs((result["longitude"] - true_lon + 180.0) % 360.0 - 180.0) < 0.01
