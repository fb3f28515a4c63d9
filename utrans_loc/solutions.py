"""One event's preferred origin: the typed values between the locator's stages.

The locator's stages pass small values, never column names or list order::

    picks -> windows -> Estimates + Arrivals (per event) -> Solution -> writers

:class:`Estimates` holds an event's single-station estimates (one per located
P pick), :class:`Arrivals` its picks used as arrival times, both keyed by the
pick's id (its place in the input file). :func:`solve_event` turns them into
a :class:`Solution` and never raises: where the preferred method cannot give
a finite origin (co-located stations, identical pick times, non-finite
numbers, picks hours apart, ...), the event gets the best origin that can be
computed (hybrid, else the weighted mean of the estimates, else one
station's estimate) and the reason in :attr:`Solution.flags`. Residuals are
keyed by pick id in :attr:`Solution.arrivals`, so a writer can never attach
one to the wrong pick. Nothing here knows CSV columns or QuakeML.

:func:`prior_spread` is the one rule for a station's error bar (missing,
NaN or zero), used by every combination.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from utrans_loc import metrics, origins

COMBINE_METHODS = ("hybrid", "weighted")
# Prior spread of a single-station estimate without an error bar (no sampling,
# no variance head, or a NaN std): wide enough that arrival times decide
# wherever they can (north, east, depth).
DEFAULT_SPREAD_KM = (30.0, 30.0, 15.0)
# A zero spread (one Monte-Carlo pass) would make one station decide alone.
MIN_SPREAD_KM = 0.1
# The arrival times of one local event span at most the S travel time across
# the locator's range (300 km at 3.5 km/s: 86 s) plus the pick errors: picks of
# one event id further apart than this are two events, not one to combine.
MAX_ARRIVAL_SPAN_S = 120.0


@dataclasses.dataclass(frozen=True)
class OriginSettings:
    """How an event's estimates and picks are combined (the locator's options)."""

    combine: str = "hybrid"
    pick_std_s: tuple = (origins.PICK_STD_S["P"], origins.PICK_STD_S["S"])
    model_error: float = origins.MODEL_ERROR
    depth_correlation: float = origins.DEPTH_CORRELATION
    max_rms_s: float = origins.MAX_RMS_S
    max_depth_km: float = origins.MAX_DEPTH_KM
    max_arrival_span_s: float = MAX_ARRIVAL_SPAN_S


class _PerPick:
    """Values with one entry per pick (``pick_id`` first): their count and a subset."""

    def __len__(self):
        return len(self.pick_id)

    def subset(self, keep):
        """The same values for the picks where ``keep`` is true."""
        keep = np.asarray(keep, bool)
        return type(self)(**{f.name: _take(getattr(self, f.name), keep)
                             for f in dataclasses.fields(self)})


def _take(values, keep):
    if isinstance(values, np.ndarray):
        return values[keep]
    return tuple(v for v, k in zip(values, keep) if k)


@dataclasses.dataclass(frozen=True)
class Estimates(_PerPick):
    """An event's single-station estimates, one per located P pick.

    ``*_std_km`` NaN: that estimate has no error bar (see :func:`prior_spread`);
    ``origin_time``: P time minus the P travel time from the estimate.
    """

    pick_id: tuple
    station: tuple            # "NET.STA"
    lat: np.ndarray
    lon: np.ndarray
    depth_km: np.ndarray
    north_std_km: np.ndarray
    east_std_km: np.ndarray
    depth_std_km: np.ndarray
    origin_time: tuple        # UTCDateTime

    @property
    def has_error_bars(self):
        return bool(np.any(np.isfinite(self.north_std_km) | np.isfinite(self.depth_std_km)))


@dataclasses.dataclass(frozen=True)
class Arrivals(_PerPick):
    """An event's picks used as arrival times: its located P picks and its S picks."""

    pick_id: tuple
    station: tuple            # "NET.STA"
    phase: np.ndarray         # "P" or "S": the class the travel time is modelled for
    time: tuple               # UTCDateTime
    lat: np.ndarray
    lon: np.ndarray
    elevation_km: np.ndarray



@dataclasses.dataclass(frozen=True)
class ArrivalFit:
    """One pick's place in a solution: its residual and where it is seen from the origin."""

    phase: str
    residual_s: float
    distance_deg: float
    azimuth_deg: float
    used: bool = True         # False: kept, but left out of the origin (reason in the flags)


@dataclasses.dataclass(frozen=True)
class Solution:
    """An event's preferred origin, its 1-sigma errors (NaN: not constrained) and quality."""

    method: str               # "hybrid", "weighted", "single-station" or "none"
    latitude: float
    longitude: float
    depth_km: float
    time: object              # UTCDateTime, or None when no origin could be computed
    latitude_std_km: float = math.nan
    longitude_std_km: float = math.nan
    depth_km_std: float = math.nan
    time_std_s: float = math.nan
    ellipse: tuple | None = None      # (major km, minor km, azimuth of the major axis deg)
    arrivals: dict = dataclasses.field(default_factory=dict)   # pick id -> ArrivalFit
    n_stations: int = 0
    n_p: int = 0
    n_s: int = 0
    rms_s: float = math.nan
    azimuthal_gap_deg: float = math.nan
    description: str = ""
    flags: tuple = ()
    source_pick: str | None = None    # single-station: the pick whose estimate it is

    @property
    def located(self):
        return self.time is not None

    @property
    def latitude_std(self):
        """Latitude error in degrees."""
        return self.latitude_std_km / float(metrics.km_per_degree(self.latitude)[0])

    @property
    def longitude_std(self):
        """Longitude error in degrees."""
        return self.longitude_std_km / float(metrics.km_per_degree(self.latitude)[1])

    @property
    def flag(self):
        return "; ".join(self.flags)


def prior_spread(north_std_km, east_std_km, depth_std_km):
    """The one rule for an estimate's 1-sigma spread (km): the error bar where it is a
    finite number (floored at :data:`MIN_SPREAD_KM`), :data:`DEFAULT_SPREAD_KM` where
    it is missing or NaN. Returns ((north, east, depth) arrays, number defaulted)."""
    out, missing = [], np.zeros(len(np.atleast_1d(north_std_km)), bool)
    for values, default in zip((north_std_km, east_std_km, depth_std_km),
                               (DEFAULT_SPREAD_KM[1], DEFAULT_SPREAD_KM[0], DEFAULT_SPREAD_KM[2])):
        values = np.atleast_1d(np.asarray(values, float))
        missing |= ~np.isfinite(values)
        out.append(np.maximum(np.where(np.isfinite(values), values, default), MIN_SPREAD_KM))
    return tuple(out), int(missing.sum())


def wrap_latlon(lat, lon):
    """Latitudes past a pole continue on its other side (longitude + 180); longitudes
    in [-180, 180). The one place estimates are put back on the globe."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    over = np.abs(lat) > 90.0
    lat = np.where(over, np.sign(lat) * 180.0 - lat, lat)
    lon = np.where(over, lon + 180.0, lon)
    return lat, (lon + 180.0) % 360.0 - 180.0


def _spread_text(estimates, n_default):
    default = (f"{DEFAULT_SPREAD_KM[0]:g} km north and east, {DEFAULT_SPREAD_KM[2]:g} km "
               "depth")
    if not estimates.has_error_bars:
        return f"each station's estimate with the default spread (no error bars): {default}"
    return "each station's estimate weighted by its predicted error bars" + (
        f" ({n_default} without one: the default spread {default})" if n_default else "")


def solve_event(estimates, arrivals, model, settings=OriginSettings()):
    """The preferred origin of one event; never raises.

    Parameters
    ----------
    estimates : Estimates
    arrivals : Arrivals
        The event's picks (P picks of located stations and S picks).
    model : velocity.HalfSpace or velocity.LayeredModel
    settings : OriginSettings

    Returns
    -------
    Solution
        ``hybrid`` (``settings.combine``, arrivals at 2+ stations), else the
        weighted mean of 2+ estimates, else one station's estimate, else
        ``none``; every reason it fell back, and every pick left out, in
        ``flags``.
    """
    flags, keep_est = [], _finite_estimates(estimates)
    if not keep_est.all():
        flags.append(f"{int((~keep_est).sum())} single-station estimate(s) not finite numbers: "
                     "left out")
    estimates = estimates.subset(keep_est)
    estimates = dataclasses.replace(estimates, lon=wrap_latlon(estimates.lat, estimates.lon)[1])
    used, notes = usable_arrivals(arrivals)
    flags += notes
    span = _span_s(arrivals.subset(used))
    if span > settings.max_arrival_span_s:
        flags.append(f"picks {span:.0f} s apart, more than one local event's arrivals can be "
                     f"({settings.max_arrival_span_s:g} s; an event_id used for two events?): "
                     "not combined")
        return _single(estimates, arrivals, used, model, flags)
    if settings.combine == "hybrid" and len({s for s, u in zip(arrivals.station, used) if u}) > 1 \
            and len(estimates):
        try:
            solution = _hybrid(estimates, arrivals, used, model, settings, flags)
        except Exception as err:     # noqa: BLE001 (no event may stop a run)
            flags.append(f"hybrid origin failed ({type(err).__name__}: {err}): fell back")
        else:
            if solution is not None:
                return solution
            flags.append("hybrid origin not a finite location: fell back")
    if len(estimates) > 1:
        return _weighted(estimates, arrivals, used, model, flags)
    return _single(estimates, arrivals, used, model, flags)


def _finite_estimates(estimates):
    return (np.isfinite(estimates.lat) & np.isfinite(estimates.lon)
            & np.isfinite(estimates.depth_km) & (np.abs(estimates.lat) <= 90.0)
            & np.array([_finite_time(t) for t in estimates.origin_time], bool))


def _finite_time(t):
    try:
        return t is not None and math.isfinite(float(t.timestamp))
    except (AttributeError, TypeError, ValueError):
        return False


def usable_arrivals(arrivals):
    """Which picks can enter an origin (finite station coordinates and time; an S pick
    not before its station's P) and one flag per kind left out."""
    ok = (np.isfinite(arrivals.lat) & np.isfinite(arrivals.lon) & (np.abs(arrivals.lat) <= 90.0)
          & np.array([_finite_time(t) for t in arrivals.time], bool))
    notes = []
    if not ok.all():
        notes.append(f"{int((~ok).sum())} pick(s) without finite coordinates or time: left out")
    first_p = {}
    for station, phase, when, good in zip(arrivals.station, arrivals.phase, arrivals.time, ok):
        if good and phase == "P":
            first_p[station] = min(first_p.get(station, when), when)
    early = np.array([bool(g and ph == "S" and st in first_p and t <= first_p[st])
                      for st, ph, t, g in zip(arrivals.station, arrivals.phase, arrivals.time,
                                              ok)], bool)
    if early.any():
        notes.append(f"{int(early.sum())} S pick(s) not after their station's P pick: left out")
    return ok & ~early, notes


def _span_s(arrivals):
    """How far apart the picks are (s); the estimates' own origin times are left out (an
    estimate far off would make one event look like two)."""
    times = list(arrivals.time)
    if len(times) < 2:
        return 0.0
    return float(max(times) - min(times))


def _counts(arrivals, used):
    phases = arrivals.phase[used]
    stations = {s for s, u in zip(arrivals.station, used) if u}
    return len(stations), int(np.sum(phases == "P")), int(np.sum(phases == "S"))


def _fits(lat, lon, arrivals, used, residuals=None):
    """Each pick's ArrivalFit, keyed by pick id; ``residuals`` (s) for the used ones."""
    from geographiclib.geodesic import Geodesic
    from obspy.geodetics import kilometers2degrees

    out, values = {}, iter(() if residuals is None else residuals)
    for pick_id, phase, plat, plon, good in zip(arrivals.pick_id, arrivals.phase, arrivals.lat,
                                                 arrivals.lon, used):
        residual = float(next(values)) if good and residuals is not None else math.nan
        distance = azimuth = math.nan
        if math.isfinite(plat) and math.isfinite(plon) and abs(plat) <= 90.0:
            g = Geodesic.WGS84.Inverse(lat, lon, plat, plon)
            distance, azimuth = kilometers2degrees(g["s12"] / 1000.0), g["azi1"] % 360.0
        out[pick_id] = ArrivalFit(phase=str(phase), residual_s=residual,
                                  distance_deg=_or_nan(distance), azimuth_deg=_or_nan(azimuth),
                                  used=bool(good))
    return out


def _or_nan(value):
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _hybrid(estimates, arrivals, used, model, settings, flags):
    (north, east, depth), n_default = prior_spread(estimates.north_std_km, estimates.east_std_km,
                                                   estimates.depth_std_km)
    picks = arrivals.subset(used)
    reference = min(picks.time)
    p_std, s_std = settings.pick_std_s
    fit = origins.hybrid_origin(
        {"lat": estimates.lat, "lon": estimates.lon,
         # A depth estimate outside the searched range (an untrained model's -400 km)
         # would pull the origin to the boundary with all its weight: it starts there.
         "depth_km": np.clip(estimates.depth_km, 0.0, settings.max_depth_km),
         "lat_std_km": north, "lon_std_km": east, "depth_std_km": depth},
        {"lat": picks.lat, "lon": picks.lon, "elevation_km": picks.elevation_km,
         "phase": picks.phase, "time": np.array([t - reference for t in picks.time], float),
         "std": np.where(picks.phase == "S", float(s_std), float(p_std))},
        model, settings.model_error, settings.max_depth_km, settings.depth_correlation)
    if not all(math.isfinite(fit[k]) for k in ("latitude", "longitude", "depth_km", "time")):
        return None
    # Near a pole the local plane can step past it: the origin continues over the pole.
    fit["latitude"], fit["longitude"] = (float(v) for v in wrap_latlon(fit["latitude"],
                                                                        fit["longitude"]))
    n_stations, n_p, n_s = _counts(arrivals, used)
    problems = list(flags)
    if fit["rms_s"] > settings.max_rms_s:
        problems.append(f"RMS residual {fit['rms_s']:.2f} s above --max_rms_s "
                        f"{settings.max_rms_s:g} s: picks or velocity model inconsistent with "
                        "one origin")
    loose = [name for name, key in (("longitude", "longitude_std_km"),
                                    ("latitude", "latitude_std_km"), ("depth", "depth_km_std"),
                                    ("origin time", "time_std")) if not np.isfinite(fit[key])]
    if loose:
        problems.append(f"not constrained by the picks and estimates: {', '.join(loose)} "
                        "(no error given)")
    if fit.get("mirror"):
        problems.append(fit["mirror"])
    ellipse = (fit["ellipse_major_km"], fit["ellipse_minor_km"], fit["ellipse_azimuth_deg"])
    return Solution(
        method="hybrid", latitude=fit["latitude"], longitude=fit["longitude"],
        depth_km=fit["depth_km"], time=reference + fit["time"],
        latitude_std_km=float(fit["latitude_std_km"]),
        longitude_std_km=float(fit["longitude_std_km"]), depth_km_std=float(fit["depth_km_std"]),
        time_std_s=float(fit["time_std"]),
        ellipse=ellipse if np.all(np.isfinite(ellipse)) else None,
        arrivals=_fits(fit["latitude"], fit["longitude"], arrivals, used, fit["residuals"]),
        n_stations=n_stations, n_p=n_p, n_s=n_s, rms_s=float(fit["rms_s"]),
        azimuthal_gap_deg=float(fit["azimuthal_gap_deg"]),
        description=(
            f"hybrid, the maximum of a posterior over latitude, longitude, depth and origin "
            f"time: {_spread_text(estimates, n_default)} (Gaussian priors), and the arrival "
            f"times of {n_p} P and {n_s} S pick(s) (Gaussian, pick error P {p_std:g} s, S "
            f"{s_std:g} s, plus {settings.model_error:g} x travel time for the velocity "
            f"model); the stations' depth estimates taken as correlated "
            f"({settings.depth_correlation:g}); errors and ellipse from the posterior's "
            "curvature (1 sigma)"),
        flags=tuple(problems))


def _weighted(estimates, arrivals, used, model, flags):
    """Per coordinate the inverse-variance mean of the estimates (spreads of
    :func:`prior_spread`); its error sqrt(1 / sum of weights), or, when no estimate
    has an error bar, the standard error of the mean between stations."""
    (north, east, depth), n_default = prior_spread(estimates.north_std_km, estimates.east_std_km,
                                                   estimates.depth_std_km)
    n = len(estimates)
    plane = origins.Plane(estimates.lat[0], estimates.lon[0])   # one piece across 180 deg
    x, y = plane.xy(estimates.lat, estimates.lon)
    values, stds = [], []
    for value, spread in ((y, north), (x, east), (estimates.depth_km, depth)):
        weight = 1.0 / spread ** 2
        values.append(float(np.sum(weight * value) / np.sum(weight)))
        stds.append(float(np.sqrt(1.0 / np.sum(weight))) if estimates.has_error_bars
                    else float(np.std(value, ddof=1) / math.sqrt(n)))
    lat, lon = plane.latlon(values[1], values[0])
    when = _origin_time(lat, lon, values[2], estimates, arrivals, used, model)
    n_stations, n_p, n_s = _counts(arrivals, used)
    method = (f"inverse-variance weighted mean of {n} single-station estimates "
              f"({_spread_text(estimates, n_default)}; uncertainty sqrt(1/sum of weights))"
              if estimates.has_error_bars else
              f"mean of {n} single-station estimates (uncertainty: standard error of the mean "
              "between stations)")
    return Solution(
        method="weighted", latitude=float(lat), longitude=float(lon), depth_km=values[2],
        time=when, latitude_std_km=stds[0], longitude_std_km=stds[1], depth_km_std=stds[2],
        arrivals=_fits(float(lat), float(lon), arrivals, used),
        n_stations=max(n_stations, len(set(estimates.station))), n_p=n_p, n_s=n_s,
        description=f"{method}; origin time: the mean over the P picks of P time minus the "
                    f"P travel time ({model.description})",
        flags=tuple(flags))


def _origin_time(lat, lon, depth_km, estimates, arrivals, used, model):
    """Mean over the used P picks of P time minus the P travel time from (lat, lon, depth);
    without one, the estimates' own origin times."""
    p = arrivals.subset(used & (arrivals.phase == "P"))
    if len(p):
        distance = metrics.geodesic_km(p.lat, p.lon, lat, lon)
        travel = model.travel_time("P", distance, np.full(len(p), depth_km), p.elevation_km)
        times = [t - float(tt) for t, tt in zip(p.time, np.atleast_1d(travel))]
    else:
        times = list(estimates.origin_time)
    return times[0] + float(np.mean([t - times[0] for t in times]))


def _single(estimates, arrivals, used, model, flags):
    """The estimate with the smallest horizontal error bar (the first when none has one)."""
    if not len(estimates):
        return Solution(method="none", latitude=math.nan, longitude=math.nan,
                        depth_km=math.nan, time=None,
                        arrivals=_fits(0.0, 0.0, arrivals, np.zeros(len(arrivals), bool)),
                        description="no finite single-station estimate: no origin",
                        flags=tuple(flags) + ("no origin could be computed",))
    size = np.hypot(estimates.north_std_km, estimates.east_std_km)
    i = int(np.nanargmin(size)) if np.isfinite(size).any() else 0
    one = estimates.subset(np.arange(len(estimates)) == i)
    n_stations, n_p, n_s = _counts(arrivals, used)
    lat, lon = float(one.lat[0]), float(one.lon[0])
    return Solution(
        method="single-station", latitude=lat, longitude=lon, depth_km=float(one.depth_km[0]),
        time=one.origin_time[0], latitude_std_km=float(one.north_std_km[0]),
        longitude_std_km=float(one.east_std_km[0]), depth_km_std=float(one.depth_std_km[0]),
        arrivals=_fits(lat, lon, arrivals, used), n_stations=max(n_stations, 1), n_p=n_p,
        n_s=n_s, description=f"single-station estimate from {one.station[0]} (pick "
                             f"{one.pick_id[0]})",
        flags=tuple(flags), source_pick=one.pick_id[0])
