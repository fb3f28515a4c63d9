"""Multi-station origins: single-station estimates as priors, arrival times as likelihood.

The locator's ``--combine hybrid`` (:func:`hybrid_origin`): for an event with
picks at two or more stations, the preferred origin maximises a posterior
over (latitude, longitude, depth, origin time) in which

* each located station's single-station estimate is a Gaussian prior in
  north, east and depth with its 1-sigma errors (calibrated Monte-Carlo
  spreads when the locator has them, else
  :data:`utrans_loc.solutions.DEFAULT_SPREAD_KM`: :func:`utrans_loc.solutions.prior_spread`);
* each P or S pick is a Gaussian likelihood of its arrival time,
  ``t_obs - t0 - T(x)``, with variance ``pick_std^2 + (model_error * T)^2``:
  the second term is NonLinLoc's travel-time error, without which the error
  bars of a well-picked event shrink to the pick error while its true error
  is set by the velocity model.

The origin time enters linearly and is solved per location; the location is
searched on a coarse grid over every estimate and station, then refined from
the best grid points (local minima of arrival-time misfits are common with
2-3 stations). Errors come from the curvature of the posterior at its
maximum (Laplace approximation, all four parameters), so correlations such as
depth with origin time are carried into each marginal.

Horizontal positions are handled on a local east/north plane about the
estimates' inverse-variance mean (equirectangular, WGS84 kilometres per
degree there): for the distances a single station locates (< 300 km) its
distance error is below 0.3 %, far under the velocity-model error.

Travel times come from :mod:`utrans_loc.velocity` (``HalfSpace``: ``--vp``/``--vs``,
straight rays; ``LayeredModel``: ``--velocity_model``, 1-D layers whose
first-arrival times are ObsPy TauP's, on an interpolated table). Nothing here
imports Keras.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

from utrans_loc import metrics
from utrans_loc.velocity import MAX_DEPTH_KM

PICK_STD_S = {"P": 0.1, "S": 0.2}
MODEL_ERROR = 0.03
# Depth errors of one event's single-station estimates are nearly the same at
# every station (correlation 0.86 measured on the synthetic network of
# bench/multistation.py; the horizontal ones do not correlate, -0.1 to 0):
# n stations are not n independent depth measurements.
DEPTH_CORRELATION = 0.85
MAX_RMS_S = 1.0


# --------------------------------------------------------------------------
# the posterior
# --------------------------------------------------------------------------
class Plane:
    """Local east/north kilometres about (lat0, lon0) (equirectangular, WGS84 scale)."""

    def __init__(self, lat0, lon0):
        self.lat0, self.lon0 = float(lat0), float(lon0)
        self.km_lat, self.km_lon = (float(k) for k in metrics.km_per_degree(lat0))

    def xy(self, lat, lon):
        east = (np.asarray(lon, float) - self.lon0 + 180.0) % 360.0 - 180.0   # across 180 deg
        return east * self.km_lon, (np.asarray(lat, float) - self.lat0) * self.km_lat

    def latlon(self, x, y):
        return self.lat0 + y / self.km_lat, (self.lon0 + x / self.km_lon + 180.0) % 360.0 - 180.0


class Posterior:
    """Negative log posterior of (east, north, depth, origin time) of one event.

    Parameters
    ----------
    estimates : dict of arrays
        ``lat, lon, depth_km`` and their 1-sigma ``lat_std_km, lon_std_km,
        depth_std_km`` per located station.
    picks : dict of arrays
        ``lat, lon, elevation_km, phase`` ('P'/'S'), ``time`` (s from a
        reference), ``std`` (pick error, s) per pick.
    model : HalfSpace or LayeredModel
    model_error : float
        Travel-time error as a fraction of the travel time.
    depth_correlation : float
        Correlation of the stations' depth errors: each depth prior's
        variance is multiplied by ``1 + (n - 1) * depth_correlation`` (n
        stations), so that n estimates of correlation rho weigh as their
        mean does (exact for equal errors).
    """

    def __init__(self, estimates, picks, model, model_error=MODEL_ERROR,
                 depth_correlation=DEPTH_CORRELATION):
        self.model, self.model_error = model, float(model_error)
        w_lat = 1.0 / np.square(estimates["lat_std_km"])
        w_lon = 1.0 / np.square(estimates["lon_std_km"])
        # Circular mean of the longitudes: a network across 180 deg stays in one piece.
        lon = np.radians(np.asarray(estimates["lon"], float))
        self.plane = Plane(np.sum(w_lat * estimates["lat"]) / np.sum(w_lat), math.degrees(
            math.atan2(np.sum(w_lon * np.sin(lon)), np.sum(w_lon * np.cos(lon)))))
        ex, ey = self.plane.xy(estimates["lat"], estimates["lon"])
        self.prior_mean = np.stack([ex, ey, np.asarray(estimates["depth_km"], float)], axis=1)
        n = len(self.prior_mean)
        self.prior_std = np.stack([estimates["lon_std_km"], estimates["lat_std_km"],
                                   estimates["depth_std_km"]], axis=1).astype(float)
        self.prior_std[:, 2] *= math.sqrt(1.0 + (n - 1) * float(depth_correlation))
        self.sx, self.sy = self.plane.xy(picks["lat"], picks["lon"])
        self.elevation = np.asarray(picks["elevation_km"], float)
        self.phase = np.asarray(picks["phase"])
        self.time = np.asarray(picks["time"], float)
        self.pick_var = np.square(np.asarray(picks["std"], float))

    def travel_times(self, x, y, z):
        """(..., n_picks) travel times at locations of shape (...)."""
        x, y, z = (np.asarray(v, float)[..., None] for v in (x, y, z))
        distance = np.hypot(x - self.sx, y - self.sy)
        out = np.empty(np.broadcast_shapes(distance.shape, z.shape))
        for phase in ("P", "S"):
            use = self.phase == phase
            if use.any():
                out[..., use] = self.model.travel_time(phase, distance[..., use],
                                                       np.broadcast_to(z, distance.shape)[..., use],
                                                       self.elevation[use])
        return out

    def _terms(self, x, y, z):
        t = self.travel_times(x, y, z)
        var = self.pick_var + np.square(self.model_error * t)
        return t, var

    def origin_time(self, x, y, z):
        """Best origin time (s) at each location: the weighted mean of t_obs - T."""
        t, var = self._terms(x, y, z)
        return np.sum((self.time - t) / var, axis=-1) / np.sum(1.0 / var, axis=-1)

    def nlp(self, x, y, z, t0=None):
        """Negative log posterior (constants dropped); t0 None: solved per location."""
        t, var = self._terms(x, y, z)
        if t0 is None:
            t0 = np.sum((self.time - t) / var, axis=-1) / np.sum(1.0 / var, axis=-1)
        r = self.time - np.asarray(t0, float)[..., None] - t
        arrivals = 0.5 * np.sum(r * r / var + np.log(var), axis=-1)
        m = np.stack(np.broadcast_arrays(*(np.asarray(v, float) for v in (x, y, z))), axis=-1)
        prior = 0.5 * np.sum(np.square((m[..., None, :] - self.prior_mean) / self.prior_std),
                             axis=(-1, -2))
        return arrivals + prior

    def arrival_misfit(self, x, y, z):
        """Chi-square of the arrival times alone (origin time solved), priors left out."""
        t, var = self._terms(x, y, z)
        t0 = np.sum((self.time - t) / var, axis=-1) / np.sum(1.0 / var, axis=-1)
        r = self.time - t0[..., None] - t
        return np.sum(r * r / var, axis=-1)

    def residuals(self, x, y, z, t0):
        """Observed minus predicted arrival time (s) per pick."""
        return self.time - t0 - self.travel_times(x, y, z)


def maximise(post, max_depth_km=MAX_DEPTH_KM, grid=31, starts=3):
    """(east, north, depth) of the posterior's maximum: coarse grid, then Nelder-Mead.

    The grid spans every estimate and every station with 30 km to spare and
    depths 0 to ``max_depth_km``; the ``starts`` best grid nodes that are not
    neighbours seed the refinement.
    """
    points = np.concatenate([post.prior_mean[:, :2], np.stack([post.sx, post.sy], axis=1)])
    lo, hi = points.min(axis=0) - 30.0, points.max(axis=0) + 30.0
    xs, ys = np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid)
    zs = np.linspace(0.0, max_depth_km, max(grid // 2, 6))
    X, Y, Z = np.meshgrid(xs, ys, zs, indexing="ij")
    values = post.nlp(X, Y, Z)
    order = np.argsort(values, axis=None)
    seeds, spacing = [], np.array([xs[1] - xs[0], ys[1] - ys[0], zs[1] - zs[0]])
    for flat in order:
        node = np.array([X.flat[flat], Y.flat[flat], Z.flat[flat]])
        if all(np.any(np.abs(node - s) > 1.5 * spacing) for s in seeds):
            seeds.append(node)
        if len(seeds) == starts:
            break
    # The prior means are natural starts too: the posterior often peaks near them.
    seeds.append(np.average(post.prior_mean, axis=0, weights=1.0 / post.prior_std ** 2))
    best = None
    bounds = [(None, None), (None, None), (0.0, max_depth_km)]
    for seed in seeds:
        seed = np.clip(seed, [-np.inf, -np.inf, 0.0], [np.inf, np.inf, max_depth_km - 3.0])
        # An explicit simplex a few km wide: SciPy's default (5 % of each coordinate)
        # has no width at the plane's origin, where the estimates' mean seed lies.
        simplex = np.vstack([seed, seed + [5.0, 0, 0], seed + [0, 5.0, 0], seed + [0, 0, 3.0]])
        result = optimize.minimize(lambda m: float(post.nlp(*m)), seed, method="Nelder-Mead",
                                   bounds=bounds, options={"xatol": 1e-3, "fatol": 1e-6,
                                                           "maxiter": 4000,
                                                           "initial_simplex": simplex})
        if best is None or result.fun < best.fun:
            best = result
    return best.x


def laplace_covariance(post, m, t0, max_depth_km=MAX_DEPTH_KM):
    """Covariance of (east km, north km, depth km, t0 s) from the Hessian at the maximum.

    Central differences; at a depth bound (the search keeps 0 <= depth <=
    ``max_depth_km`` and a layered model's table ends there) the curvature is
    taken just inside it, where both sides of each difference exist. A
    direction without curvature (nothing constrains it) gets an infinite
    variance: its errors are NaN, not a number that looks measured.
    """
    steps = np.array([0.05, 0.05, 0.05, 0.005])
    point = np.array([*m, t0], float)
    point[2] = np.clip(point[2], 2.5 * steps[2], max_depth_km - 2.5 * steps[2])

    def f(p):
        return float(post.nlp(p[0], p[1], p[2], p[3]))

    n = len(point)
    hessian = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            ei, ej = np.eye(n)[i] * steps[i], np.eye(n)[j] * steps[j]
            hessian[i, j] = hessian[j, i] = (f(point + ei + ej) - f(point + ei - ej)
                                             - f(point - ei + ej) + f(point - ei - ej)) \
                / (4.0 * steps[i] * steps[j])
    values, vectors = np.linalg.eigh(hessian)
    flat = values <= 1e-6 * max(float(values.max()), 1e-12)
    cov = (vectors[:, ~flat] / values[~flat]) @ vectors[:, ~flat].T
    unconstrained = np.any(np.abs(vectors[:, flat]) > 1e-3, axis=1)
    cov[unconstrained, :] = np.nan
    cov[:, unconstrained] = np.nan
    return cov


def error_ellipse(cov_xy):
    """1-sigma horizontal ellipse: (semi-major km, semi-minor km, azimuth of the major axis, deg)."""
    if not np.all(np.isfinite(cov_xy)):
        return math.nan, math.nan, math.nan
    values, vectors = np.linalg.eigh(cov_xy)
    major = vectors[:, 1]            # (east, north)
    azimuth = math.degrees(math.atan2(major[0], major[1])) % 180.0
    return math.sqrt(max(values[1], 0.0)), math.sqrt(max(values[0], 0.0)), azimuth


def azimuthal_gap(lat, lon, station_lat, station_lon):
    """Largest azimuthal gap (deg) between stations seen from the epicentre."""
    from geographiclib.geodesic import Geodesic

    azimuths = sorted({round(Geodesic.WGS84.Inverse(lat, lon, a, b)["azi1"] % 360.0, 6)
                       for a, b in zip(station_lat, station_lon)})
    if len(azimuths) < 2:
        return 360.0
    gaps = np.diff(azimuths + [azimuths[0] + 360.0])
    return float(np.max(gaps))


# Stations this close to one line (smallest / largest spread of their positions)
# cannot tell a side of the line from the other by arrival times.
LINE_RATIO = 0.15
# The mirror point is as good when its arrival-time chi-square is within this of the origin's.
MIRROR_CHI2 = 1.0


def mirror_ambiguity(post, m):
    """A note when the stations lie nearly on a line and the origin's mirror image across
    it fits the arrival times as well (so the single-station estimates chose the side);
    else None."""
    points = np.unique(np.round(np.stack([post.sx, post.sy], axis=1), 3), axis=0)
    if len(points) < 2:
        return None
    centre = points.mean(axis=0)
    _, spread, axes = np.linalg.svd(points - centre, full_matrices=False)
    if len(spread) > 1 and spread[1] > LINE_RATIO * spread[0]:
        return None
    normal = np.array([-axes[0][1], axes[0][0]])
    offset = float(np.dot(np.asarray(m[:2]) - centre, normal))
    mirror = np.asarray(m[:2]) - 2.0 * offset * normal
    if abs(2.0 * offset) < 2.0:          # the origin is on the line: no other side
        return None
    here = float(post.arrival_misfit(m[0], m[1], m[2]))
    there = float(post.arrival_misfit(mirror[0], mirror[1], m[2]))
    if there > here + MIRROR_CHI2:
        return None
    lat, lon = post.plane.latlon(mirror[0], mirror[1])
    return (f"stations nearly on a line: the mirror point {float(lat):.4f}, {float(lon):.4f} "
            f"({abs(2 * offset):.0f} km away) fits the arrival times as well (chi-square "
            f"{there:.2f} vs {here:.2f}); the single-station estimates chose this side")


def hybrid_origin(estimates, picks, model, model_error=MODEL_ERROR, max_depth_km=MAX_DEPTH_KM,
                  depth_correlation=DEPTH_CORRELATION):
    """The hybrid origin of one event (see the module docstring).

    Parameters
    ----------
    estimates, picks : dict of arrays
        As :class:`Posterior`; pick ``time`` in seconds from any reference.
    model : HalfSpace or LayeredModel
    model_error : float
    max_depth_km : float
    depth_correlation : float
        As :class:`Posterior`.

    Returns
    -------
    dict
        ``latitude, longitude`` (deg), ``depth_km``, ``time`` (s, same
        reference as the picks) and their 1-sigma errors ``latitude_std,
        longitude_std`` (deg), ``latitude_std_km, longitude_std_km,
        depth_km_std, time_std``; the 1-sigma ellipse ``ellipse_major_km,
        ellipse_minor_km, ellipse_azimuth_deg``; ``residuals`` (s, per pick),
        ``rms_s``, ``azimuthal_gap_deg``; ``mirror`` (:func:`mirror_ambiguity`'s
        note or None).
    """
    post = Posterior(estimates, picks, model, model_error, depth_correlation)
    m = maximise(post, max_depth_km)
    t0 = float(post.origin_time(*m))
    cov = laplace_covariance(post, m, t0, max_depth_km)
    lat, lon = post.plane.latlon(m[0], m[1])
    residuals = post.residuals(m[0], m[1], m[2], t0)
    major, minor, azimuth = error_ellipse(cov[:2, :2])
    std = np.sqrt(np.diag(cov))
    return {"latitude": float(lat), "longitude": float(lon), "depth_km": float(m[2]),
            "time": t0, "latitude_std": std[1] / post.plane.km_lat,
            "longitude_std": std[0] / post.plane.km_lon, "latitude_std_km": std[1],
            "longitude_std_km": std[0], "depth_km_std": std[2], "time_std": std[3],
            "ellipse_major_km": major, "ellipse_minor_km": minor,
            "ellipse_azimuth_deg": azimuth, "residuals": residuals,
            "rms_s": float(np.sqrt(np.mean(residuals ** 2))),
            "azimuthal_gap_deg": azimuthal_gap(lat, lon, picks["lat"], picks["lon"]),
            "mirror": mirror_ambiguity(post, m)}
