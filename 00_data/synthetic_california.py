"""Synthetic California-STEAD generator.

Writes single-station, 3-component (E, N, Z) 60 s / 100 Hz traces in the
"DataCollected" HDF5 layout (one group per trace id, ``<trace_id>/data`` of
shape (6000, 3), metadata as group attributes) plus train/valid/test split
files of trace ids grouped by synthetic earthquake.

The physics is deliberately simple but carries the cues a single-station
location model needs:

* S-P time gives the hypocentral distance (Vp = 6.0 km/s, Vs = 3.5 km/s);
* P particle motion points along the back-azimuth, with a vertical share set
  by the incidence angle (depth vs. epicentral distance);
* S energy is mostly transverse to the ray;
* high frequencies and amplitude decay with distance, amplitude grows with
  magnitude;
* seismicity is clustered in a few source zones per station, so direction is
  learnable from one station in a short training run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from geographiclib.geodesic import Geodesic
from scipy import signal
from tqdm import tqdm

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from california import LAT_RANGE, LON_RANGE, check_split_fractions, split_by_event  # noqa: E402
from utrans_loc.waveforms import NPTS, SAMPLING_RATE  # noqa: E402

__all__ = [
    "make_synthetic_california",
    "synthesize_trace",
    "split_by_event",
    "FS",
    "N_SAMPLES",
    "VP_KM_S",
    "VS_KM_S",
    "Physics",
]

FS = SAMPLING_RATE   # sampling rate, Hz (the model's)
N_SAMPLES = NPTS     # 60 s traces
VP_KM_S = 6.0
VS_KM_S = 3.5



@dataclasses.dataclass(frozen=True)
class Physics:
    """What the synthetic earth is like; the defaults are the demo's set.

    A second set with other values is data the model was never tuned on
    (issue 29: every training claim is checked on both).

    Parameters
    ----------
    vp_km_s, vs_km_s : float
        Straight-ray P and S velocities (S-P time, hence the distance cue).
    zone_depth_km : tuple of 2 floats
        Range of the source zones' central depths (events scatter 2 km about
        them; 3 % are deep, 30-60 km).
    snr_db : tuple of 2 floats
        Range of the traces' target SNR (dB).
    p_position_s : tuple of 2 floats
        Range of the P arrival's place in the 60 s trace (s); (10, 10) puts
        every P at 10 s, as a set cut around catalogue picks would (the
        locator's P-position measurement trains on such a set).
    """

    vp_km_s: float = VP_KM_S
    vs_km_s: float = VS_KM_S
    zone_depth_km: tuple = (2.0, 25.0)
    snr_db: tuple = (5.0, 40.0)
    p_position_s: tuple = (5.0, 15.0)

    def __post_init__(self):
        if not 0 < self.vs_km_s < self.vp_km_s:
            raise ValueError(f"velocities must satisfy 0 < vs < vp (km/s), got vp "
                             f"{self.vp_km_s}, vs {self.vs_km_s}")
        for name in ("zone_depth_km", "snr_db", "p_position_s"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} must be (min, max) with min <= max, got ({lo}, {hi})")
        if self.p_position_s[0] < 1 or self.p_position_s[1] > 30:
            raise ValueError(f"p_position_s must lie within 1-30 s of the 60 s trace, got "
                             f"{self.p_position_s}")
        if self.zone_depth_km[0] < 0 or self.zone_depth_km[1] > 60:
            raise ValueError(f"zone_depth_km must lie within 0-60 km, got {self.zone_depth_km}")


# Epicentral distance range of events from their recording station, km.
EPI_RANGE_KM = (5.0, 150.0)
# Samples after S used as the "signal" window for the SNR.
SNR_WINDOW_AFTER_S = 400

# Approximate coordinates of places with real seismic stations; codes are
# invented (network "SY") so the data cannot be mistaken for real records.
STATION_LIST = [
    ("PASA", 34.148, -118.171),
    ("ISAB", 35.663, -118.474),
    ("GOLD", 35.302, -116.806),
    ("BERK", 37.876, -122.236),
    ("PARK", 35.945, -120.542),
    ("COLU", 38.035, -120.386),
    ("MAMM", 37.630, -118.840),
    ("BARR", 32.680, -116.670),
    ("PINO", 33.611, -116.459),
    ("OROV", 39.556, -121.500),
    ("HOPL", 38.990, -123.070),
    ("FRES", 36.780, -119.790),
    ("SBAR", 34.440, -119.710),
    ("YREK", 41.732, -122.710),
]

_GEOD = Geodesic.WGS84
# Band-pass of the real files (1-45 Hz); zero-phase so arrivals do not shift.
_SOS_BANDPASS = signal.butter(2, [1.0, 45.0], btype="bandpass", fs=FS, output="sos")
_T = np.arange(N_SAMPLES) / FS
_FREQS = np.fft.rfftfreq(N_SAMPLES, d=1.0 / FS)
_EVENT_ATTRS = (
    "event_lat", "event_long", "depth", "magnitude", "magnitude_type",
    "p_arrival_sample", "s_arrival_sample", "coda_end_sample", "snr_db",
    "P_polarity", "source_id", "source_distance_km", "back_azimuth_deg",
    "source_origin_time",
)


# --------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------
def _inside(lat, lon, margin=0.0):
    return (LAT_RANGE[0] + margin <= lat <= LAT_RANGE[1] - margin
            and LON_RANGE[0] + margin <= lon <= LON_RANGE[1] - margin)


def _distance_baz(station_lat, station_lon, event_lat, event_lon):
    """Epicentral distance (km) and back-azimuth (deg, station -> event)."""
    g = _GEOD.Inverse(station_lat, station_lon, event_lat, event_lon)
    return g["s12"] / 1000.0, g["azi1"] % 360.0


def _direct(lat, lon, azimuth_deg, distance_km):
    g = _GEOD.Direct(lat, lon, azimuth_deg, distance_km * 1000.0)
    return g["lat2"], g["lon2"]


# --------------------------------------------------------------------------
# waveform helpers
# --------------------------------------------------------------------------
def _berlage(t0_s, freq):
    """Causal Berlage wavelet starting at ``t0_s``, unit peak.

    Causal so that the first motion is exactly at the pick and its sign is the
    polarity; decays within ~2 periods.
    """
    tau = _T - t0_s
    tau = np.where(tau > 0.0, tau, 0.0)
    alpha = 4.0 * freq  # envelope tau^2 exp(-alpha tau) peaks half a period in
    w = tau * tau * np.exp(-alpha * tau) * np.sin(2.0 * np.pi * freq * tau)
    peak = np.max(np.abs(w))
    return w / peak if peak > 0 else w


def _band_gain(lo, hi, order=2):
    """Butterworth-like magnitude response on the rfft grid."""
    f = np.maximum(_FREQS, 1e-6)
    return 1.0 / np.sqrt((1.0 + (lo / f) ** (2 * order)) * (1.0 + (f / hi) ** (2 * order)))


def _colored_noise(rng, bands):
    """Unit-std band-limited Gaussian noise, 3 channels per (lo, hi) band.

    One FFT pair for all bands keeps the per-trace cost low.
    """
    white = rng.standard_normal((N_SAMPLES, 3 * len(bands)))
    spec = np.fft.rfft(white, axis=0)
    for k, (lo, hi) in enumerate(bands):
        g = _band_gain(lo, hi)
        # Expected output variance (Parseval, even N) -> unit std without a
        # data pass.
        var = (g[0] ** 2 + 2.0 * np.sum(g[1:-1] ** 2) + g[-1] ** 2) / N_SAMPLES
        spec[:, 3 * k:3 * k + 3] *= (g / math.sqrt(var))[:, None]
    out = np.fft.irfft(spec, n=N_SAMPLES, axis=0)
    return [out[:, 3 * k:3 * k + 3] for k in range(len(bands))]


def synthesize_trace(rng, station_lat, station_lon, event_lat, event_lon,
                     depth_km, magnitude, snr_db_target, physics=Physics()):
    """Synthesize one 3-component record of one event at one station.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (P pick position, frequencies, polarity, noise).
    station_lat, station_lon : float
        Station coordinates, degrees.
    event_lat, event_lon : float
        Epicentre, degrees.
    depth_km : float
        Hypocentral depth, km (>= 0).
    magnitude : float
        Local magnitude; scales amplitude and coda duration.
    snr_db_target : float
        Target SNR in dB: mean (over channels) signal power in the window
        [P, S + 4 s] over mean noise power.

    Returns
    -------
    data : numpy.ndarray
        float32 array of shape (6000, 3), channel order E, N, Z, band-passed
        1-45 Hz.
    attrs : dict
        ``p_arrival_sample``, ``s_arrival_sample``, ``coda_end_sample``
        (floats), ``snr_db`` (float array of 3, honest per-channel
        10*log10(signal power / noise power)), ``P_polarity``
        ('positive'/'negative', first motion on Z), ``source_distance_km``
        (epicentral), ``back_azimuth_deg`` (station -> event, clockwise from N).
    """
    depth_km = max(float(depth_km), 0.0)
    epi_km, baz = _distance_baz(station_lat, station_lon, event_lat, event_lon)
    hyp_km = math.hypot(epi_km, depth_km)
    hyp_eff = max(hyp_km, 1.0)  # avoid a 1/R blow-up at zero distance

    # Integer picks; S-P from straight-ray travel times.
    sp_samples = int(round((hyp_km / physics.vs_km_s - hyp_km / physics.vp_km_s) * FS))
    first, last = (int(round(v * FS)) for v in physics.p_position_s)
    p = int(rng.integers(first, last + 1))
    if p + sp_samples > N_SAMPLES - 500:  # keep S and some coda in the trace
        p = N_SAMPLES - 500 - sp_samples
        if p < 100:
            raise ValueError(
                f"hypocentral distance {hyp_km:.1f} km too large for a 60 s trace")
    s = p + sp_samples

    # Attenuation: dominant frequency falls with distance, S lower than P.
    f_p = max(rng.uniform(6.0, 12.0) / math.sqrt(1.0 + hyp_eff / 50.0), 2.5)
    f_p *= 10.0 ** (-0.1 * (magnitude - 2.5))  # larger events: lower corner
    f_p = float(np.clip(f_p, 2.5, 20.0))
    f_s = max(f_p * rng.uniform(0.5, 0.7), 1.5)

    # Amplitude: grows with magnitude, geometric spreading 1/R.
    amp_p = 100.0 * 10.0 ** magnitude / hyp_eff
    amp_s = amp_p * rng.uniform(1.5, 3.0)

    b = math.radians(baz)
    inc = math.atan2(epi_km, depth_km)  # angle of the ray from vertical
    polarity = 1.0 if rng.random() < 0.5 else -1.0
    # Compressional first motion: up and away from the event (i.e. along
    # -baz horizontally); one sign multiplies all three components.
    p_dir = polarity * np.array([-math.sin(b) * math.sin(inc),
                                 -math.cos(b) * math.sin(inc),
                                 math.cos(inc)])
    sh_dir = np.array([math.cos(b), -math.sin(b), 0.0])            # transverse
    sv_dir = np.array([math.sin(b) * math.cos(inc),                # radial/vert
                       math.cos(b) * math.cos(inc),
                       -math.sin(inc)])
    sv_share = rng.uniform(0.1, 0.3) * (1.0 if rng.random() < 0.5 else -1.0)
    sh_sign = 1.0 if rng.random() < 0.5 else -1.0

    t_p, t_s = p / FS, s / FS
    w_p = _berlage(t_p, f_p)
    w_s = _berlage(t_s, f_s)
    w_sv = _berlage(t_s, f_s * rng.uniform(0.9, 1.1))
    sig = amp_p * np.outer(w_p, p_dir)
    sig += amp_s * (sh_sign * np.outer(w_s, sh_dir) + sv_share * np.outer(w_sv, sv_dir))

    # Codas and background noise (band-limited), generated in one FFT pass.
    noise_lo, noise_hi = rng.uniform(0.5, 2.0), rng.uniform(8.0, 40.0)
    p_coda_n, s_coda_n, noise = _colored_noise(
        rng, [(0.5 * f_p, min(2.0 * f_p, 45.0)),
              (0.5 * f_s, min(2.0 * f_s, 45.0)),
              (noise_lo, noise_hi)])
    tau_p = rng.uniform(1.0, 3.0)
    tau_s = rng.uniform(2.0, 5.0) * 10.0 ** (0.15 * (magnitude - 1.0))
    dt_p = np.maximum(_T - t_p, 0.0)
    dt_s = np.maximum(_T - t_s, 0.0)
    # Rising envelopes so the direct pulses dominate their first cycles.
    env_p = 0.1 * amp_p * (1.0 - np.exp(-dt_p / 1.0)) * np.exp(-dt_p / tau_p)
    amp_coda = 0.35 * amp_s
    env_s = amp_coda * (1.0 - np.exp(-dt_s / 1.0)) * np.exp(-dt_s / tau_s)
    coda_w = np.array([1.0, 1.0, rng.uniform(0.4, 0.8)])
    sig += env_p[:, None] * p_coda_n + env_s[:, None] * (s_coda_n * coda_w)

    # Band-pass signal and noise together (one call), keep them separate so
    # the SNR can be computed exactly.
    both = signal.sosfiltfilt(_SOS_BANDPASS, np.hstack([sig, noise]), axis=0)
    sig_f, noise_f = both[:, :3], both[:, 3:]
    win = slice(p, min(N_SAMPLES, s + SNR_WINDOW_AFTER_S))
    p_sig = np.mean(sig_f[win] ** 2, axis=0)
    p_noise = np.mean(noise_f ** 2, axis=0)
    gain2 = p_sig.mean() / (p_noise.mean() * 10.0 ** (snr_db_target / 10.0))
    noise_f *= math.sqrt(gain2)
    p_noise = p_noise * gain2
    snr_db = 10.0 * np.log10(np.maximum(p_sig, 1e-30) / np.maximum(p_noise, 1e-30))

    # Coda end: S-coda envelope decays to the noise standard deviation.
    noise_std = math.sqrt(p_noise.mean())
    if amp_coda > noise_std:
        coda_end = s + tau_s * FS * math.log(amp_coda / noise_std)
    else:
        coda_end = s + FS  # coda below noise: end one second after S
    coda_end = float(np.clip(round(coda_end), s + 1, N_SAMPLES - 1))

    data = (sig_f + noise_f).astype(np.float32)
    attrs = {
        "p_arrival_sample": float(p),
        "s_arrival_sample": float(s),
        "coda_end_sample": coda_end,
        "snr_db": snr_db.astype(np.float64),
        "P_polarity": "positive" if polarity > 0 else "negative",
        "source_distance_km": float(epi_km),
        "back_azimuth_deg": float(baz),
    }
    return data, attrs


def _noise_trace(rng):
    """Pure band-limited noise record (for data_category 'noise')."""
    (noise,) = _colored_noise(rng, [(rng.uniform(0.5, 2.0), rng.uniform(8.0, 40.0))])
    noise = signal.sosfiltfilt(_SOS_BANDPASS, noise, axis=0)
    noise *= 10.0 ** rng.uniform(0.0, 2.0) / noise.std()
    return noise.astype(np.float32)


# --------------------------------------------------------------------------
# catalogue
# --------------------------------------------------------------------------
def _make_stations(rng, n_stations):
    """Pick stations from the fixed list, then draw extras inside California."""
    n_fixed = min(n_stations, len(STATION_LIST))
    idx = rng.choice(len(STATION_LIST), size=n_fixed, replace=False)
    stations = [STATION_LIST[i] for i in sorted(idx)]
    for k in range(n_stations - n_fixed):
        stations.append((f"SX{k:02d}", float(rng.uniform(33.0, 40.0)),
                         float(rng.uniform(-122.0, -116.0))))
    return stations


def _make_zones(rng, station_lat, station_lon, physics=Physics()):
    """A few clustered source zones around one station."""
    zones = []
    for _ in range(int(rng.integers(3, 6))):
        for _try in range(1000):
            dist = rng.uniform(15.0, 135.0)  # scatter stays within 5-150 km
            az = rng.uniform(0.0, 360.0)
            lat, lon = _direct(station_lat, station_lon, az, dist)
            if _inside(lat, lon, margin=0.15):
                break
        else:  # pragma: no cover - stations are well inside the region
            raise RuntimeError("could not place a source zone inside California")
        zones.append({"lat": lat, "lon": lon,
                      "scatter_km": rng.uniform(3.0, 8.0),
                      "depth_km": rng.uniform(*physics.zone_depth_km)})
    weights = rng.dirichlet(np.full(len(zones), 2.0))
    return zones, weights


def _gr_magnitude(rng, m_min=1.0, m_max=4.5, b=1.0):
    """Truncated Gutenberg-Richter magnitude (inverse-CDF sampling)."""
    u = rng.random()
    return m_min - math.log10(1.0 - u * (1.0 - 10.0 ** (-b * (m_max - m_min)))) / b


def _sample_event(rng, station, zones, weights):
    """Event location/depth in one of the station's zones."""
    _, s_lat, s_lon = station
    z = zones[int(rng.choice(len(zones), p=weights))]
    for _try in range(1000):
        # Isotropic 2-D Gaussian scatter about the zone centre.
        off = z["scatter_km"] * math.sqrt(rng.chisquare(2))
        lat, lon = _direct(z["lat"], z["lon"], rng.uniform(0.0, 360.0), off)
        epi, _ = _distance_baz(s_lat, s_lon, lat, lon)
        if _inside(lat, lon) and EPI_RANGE_KM[0] <= epi <= EPI_RANGE_KM[1]:
            break
    else:  # pragma: no cover
        raise RuntimeError("could not place an event inside California")
    if rng.random() < 0.03:  # a few deep events
        depth = rng.uniform(30.0, 60.0)
    else:
        depth = float(np.clip(z["depth_km"] + rng.normal(0.0, 2.0), 0.5, 30.0))
    return lat, lon, depth


def _build_catalog(rng, n_traces, n_stations, n_noise, second_station_prob=0.2,
                   physics=Physics()):
    """One row per trace (earthquake traces first, then noise)."""
    stations = _make_stations(rng, n_stations)
    zones = [_make_zones(rng, s[1], s[2], physics) for s in stations]
    t = datetime(2015, 1, 1)
    used_ids = set()
    rows = []

    def trace_id(code, start, suffix):
        # Bump by a second on (unlikely) collisions so ids stay unique.
        while True:
            tid = f"{code}.SY_{start:%Y%m%d%H%M%S}_{suffix}"
            if tid not in used_ids:
                used_ids.add(tid)
                return tid, start
            start += timedelta(seconds=1)

    n_events = 0
    while len(rows) < n_traces:
        k = int(rng.integers(len(stations)))
        lat, lon, depth = _sample_event(rng, stations[k], *zones[k])
        mag = _gr_magnitude(rng)
        t += timedelta(seconds=int(rng.integers(120, 2 * 86400)))
        source_id = f"SY{n_events:07d}"
        n_events += 1
        recorders = [k]
        if len(rows) + 2 <= n_traces and rng.random() < second_station_prob:
            # Second recording where another station is within range.
            near = [j for j, st in enumerate(stations) if j != k
                    and EPI_RANGE_KM[0] <= _distance_baz(st[1], st[2], lat, lon)[0]
                    <= EPI_RANGE_KM[1]]
            if near:
                recorders.append(near[int(rng.integers(len(near)))])
        for j in recorders:
            code, s_lat, s_lon = stations[j]
            tid, _ = trace_id(code, t, "EV")
            rows.append({"trace_id": tid, "source_id": source_id,
                         "receiver_code": code, "station_lat": s_lat,
                         "station_long": s_lon, "event_lat": lat,
                         "event_long": lon, "depth": depth, "magnitude": mag,
                         "origin_time": t, "snr_db_target": rng.uniform(*physics.snr_db),
                         "data_category": "earthquake"})
    for _ in range(n_noise):
        code, s_lat, s_lon = stations[int(rng.integers(len(stations)))]
        t_noise = datetime(2015, 1, 1) + timedelta(seconds=int(rng.integers(0, 5 * 365 * 86400)))
        tid, t_noise = trace_id(code, t_noise, "NO")
        rows.append({"trace_id": tid, "source_id": None, "receiver_code": code,
                     "station_lat": s_lat, "station_long": s_lon,
                     "event_lat": np.nan, "event_long": np.nan, "depth": np.nan,
                     "magnitude": np.nan, "origin_time": t_noise,
                     "snr_db_target": np.nan, "data_category": "noise"})
    return pd.DataFrame(rows), stations, n_events


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------
def _check_params(n_traces, n_stations, n_noise, split, seed):
    def _int(name, value, minimum):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return int(value)

    n_traces = _int("n_traces", n_traces, 10)
    n_stations = _int("n_stations", n_stations, 1)
    n_noise = _int("n_noise", n_noise, 0)
    seed = _int("seed", seed, 0)
    return n_traces, n_stations, n_noise, check_split_fractions(split), seed


def output_paths(output_hdf5, output_dir):
    """Paths written by :func:`make_synthetic_california`."""
    d = Path(output_dir)
    return {"hdf5": Path(output_hdf5), "train": d / "train_Events.npy",
            "valid": d / "valid_Events.npy", "test": d / "test_Events.npy"}


def _none_attrs():
    return {k: "None" for k in _EVENT_ATTRS}


def make_synthetic_california(output_hdf5, output_dir, n_traces=3000, n_stations=6,
                              n_noise=0, split=(0.7, 0.1, 0.2), seed=0,
                              overwrite=False, progress=True, physics=Physics()):
    """Write a synthetic California-STEAD HDF5 file and event-grouped splits.

    Parameters
    ----------
    output_hdf5 : str or Path
        HDF5 file to write (one group per trace id, ``<id>/data`` (6000, 3)
        float32, metadata as group attributes).
    output_dir : str or Path
        Folder for ``train_Events.npy``, ``valid_Events.npy``,
        ``test_Events.npy``; created if missing.
    n_traces : int
        Number of earthquake traces (>= 10).
    n_stations : int
        Number of stations (>= 1).
    n_noise : int
        Number of extra noise-only traces (never in a split).
    split : tuple of 3 floats
        Train/valid/test fractions of events (non-negative, sum 1).
    seed : int
        Seed for everything (catalogue, waveforms, split).
    overwrite : bool
        Replace existing outputs; otherwise an existing output raises.
    progress : bool
        Show a tqdm progress bar.
    physics : Physics
        Velocities, source depths and SNR range (default: the demo's set).

    Returns
    -------
    dict
        ``hdf5``, ``train``, ``valid``, ``test`` (paths as str), ``n_traces``
        (earthquake traces), ``n_noise``, ``n_events``, ``counts`` (traces per
        split), ``stations`` (list of (code, lat, lon)) and ``catalog``
        (pandas DataFrame, one row per trace, with a ``split`` column).

    Raises
    ------
    ValueError
        Bad parameter (the message names it).
    FileExistsError
        An output exists and ``overwrite`` is False (``filename`` is set).
    """
    n_traces, n_stations, n_noise, split, seed = _check_params(
        n_traces, n_stations, n_noise, split, seed)
    paths = output_paths(output_hdf5, output_dir)
    if len({p.resolve() for p in paths.values()}) != len(paths):
        raise ValueError("output_hdf5 must differ from the split files in output_dir")
    for p in paths.values():
        if p.is_dir():
            raise ValueError(f"output path is a directory: {p}")
        if p.exists() and not overwrite:
            err = FileExistsError(
                f"output file already exists: {p} (pass another path or overwrite=True)")
            err.filename = str(p)
            raise err

    rng = np.random.default_rng(seed)
    catalog, stations, n_events = _build_catalog(rng, n_traces, n_stations, n_noise,
                                                 physics=physics)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    paths["hdf5"].parent.mkdir(parents=True, exist_ok=True)

    # Write to a temporary file and rename, so a failed run never leaves a
    # half-written file under the requested name.
    tmp = paths["hdf5"].with_name(f".{paths['hdf5'].name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            for row in tqdm(catalog.itertuples(index=False), total=len(catalog),
                            desc="synthetic traces", disable=not progress):
                base = {"station_lat": float(row.station_lat),
                        "station_long": float(row.station_long),
                        "receiver_code": row.receiver_code, "network_code": "SY",
                        "AI_Set": "synthetic", "data_category": row.data_category}
                if row.data_category == "earthquake":
                    data, a = synthesize_trace(
                        rng, row.station_lat, row.station_long, row.event_lat,
                        row.event_long, row.depth, row.magnitude, row.snr_db_target, physics)
                    attrs = {**base, **a,
                             "event_lat": float(row.event_lat),
                             "event_long": float(row.event_long),
                             "depth": float(row.depth),
                             "magnitude": round(float(row.magnitude), 2),
                             "magnitude_type": "ml", "event_label": 1,
                             "source_id": row.source_id,
                             "source_origin_time": f"{row.origin_time:%Y-%m-%d %H:%M:%S}"}
                else:
                    data = _noise_trace(rng)
                    attrs = {**base, **_none_attrs(), "event_label": 0}
                grp = f.create_group(row.trace_id)
                grp.create_dataset("data", data=data)
                grp.attrs.update(attrs)
        os.replace(tmp, paths["hdf5"])
    finally:
        if tmp.exists():
            tmp.unlink()

    eq = catalog[catalog["data_category"] == "earthquake"]
    parts = split_by_event(eq["trace_id"].to_numpy(), eq["source_id"].to_numpy(),
                           split=split, seed=seed)
    catalog["split"] = "none"
    for name, ids in zip(("train", "valid", "test"), parts):
        np.save(paths[name], ids)
        catalog.loc[catalog["trace_id"].isin(ids), "split"] = name

    return {**{k: str(v) for k, v in paths.items()},
            "n_traces": int(len(eq)), "n_noise": n_noise, "n_events": n_events,
            "counts": {k: int(len(v)) for k, v in zip(("train", "valid", "test"), parts)},
            "stations": stations, "catalog": catalog}


def write_event_files(hdf5, trace_ids, out_dir, n_events=4, min_stations=2):
    """The worked example of the locator: synthetic events as a network records them.

    Takes the ``n_events`` events of ``trace_ids`` recorded by the most
    stations (at least ``min_stations``) and writes, in the new folder
    ``out_dir``: ``waveforms/<trace_id>.mseed`` (one 60 s E/N/Z file per
    station and event), ``stations.xml`` (StationXML), ``picks.csv``
    (``network, station, p_time, event_id, p_position_s``: the P's place in its
    file, so the locator's window is the whole file) and ``truth.csv`` (each event's
    epicentre, depth, magnitude and origin time). Absolute times are those of
    one origin time per event: each file starts so that its P arrives at the
    origin time plus the straight-ray P travel time (``VP_KM_S``) over the
    hypocentral distance, as the generator placed S after P.

    Returns
    -------
    dict
        ``waveforms``, ``inventory``, ``picks``, ``truth`` (paths) and
        ``events`` (their count).
    """
    from obspy import UTCDateTime

    from utrans_loc import files
    from utrans_loc.exporters import write_enz_inventory, write_enz_mseed

    with h5py.File(hdf5, "r") as f:
        traces = pd.DataFrame([{"trace": str(t), **{k: f[str(t)].attrs[k] for k in (
            "source_id", "source_origin_time", "event_lat", "event_long", "depth", "magnitude",
            "network_code", "receiver_code", "station_lat", "station_long", "p_arrival_sample",
            "source_distance_km")}} for t in trace_ids])
        counts = traces.groupby("source_id")["receiver_code"].nunique()
        chosen = counts[counts >= min_stations].sort_values(ascending=False, kind="stable")
        chosen = list(chosen.index[:n_events])
        if not chosen:
            raise ValueError(f"{hdf5}: no event of the {len(trace_ids)} traces is recorded by "
                             f"{min_stations} or more stations")
        files.check_new_output_dir(out_dir, hint="choose another folder")
        wave_dir = os.path.join(out_dir, "waveforms")
        os.makedirs(wave_dir)
        picks, stations, truth = [], {}, []
        for source_id in chosen:
            rows = traces[traces["source_id"] == source_id]
            first = rows.iloc[0]
            origin = UTCDateTime(str(first["source_origin_time"]).replace(" ", "T"))
            truth.append({"event_id": source_id, "origin_time": str(origin),
                          "latitude": first["event_lat"], "longitude": first["event_long"],
                          "depth_km": first["depth"], "magnitude": first["magnitude"],
                          "n_stations": len(rows)})
            for row in rows.itertuples():
                hyp_km = math.hypot(row.source_distance_km, max(row.depth, 0.0))
                p_time = origin + hyp_km / VP_KM_S
                start = p_time - row.p_arrival_sample / FS
                net, sta = str(row.network_code), str(row.receiver_code)
                write_enz_mseed(os.path.join(wave_dir, f"{row.trace}.mseed"),
                                f[row.trace]["data"][()], net, sta, "HH", start)
                # p_position_s: the P's place in this 60 s file, so the
                # locator's window is the file (the default 7 s may not fit).
                picks.append({"network": net, "station": sta,
                              "p_time": p_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                              "event_id": source_id,
                              "p_position_s": row.p_arrival_sample / FS})
                stations[(net, sta)] = (float(row.station_lat), float(row.station_long), 0.0,
                                        {"HH"})
    paths = {"waveforms": wave_dir, "inventory": os.path.join(out_dir, "stations.xml"),
             "picks": os.path.join(out_dir, "picks.csv"),
             "truth": os.path.join(out_dir, "truth.csv"), "events": len(chosen)}
    write_enz_inventory(stations, paths["inventory"], "synthetic_california.write_event_files")
    files.atomic_write(paths["picks"], lambda fh: pd.DataFrame(picks).to_csv(fh, index=False))
    files.atomic_write(paths["truth"], lambda fh: pd.DataFrame(truth).to_csv(fh, index=False))
    return paths


def make_network_events(output_hdf5, output_dir, n_events=200, n_stations=6, seed=0,
                        event_seed=1, min_stations=2, max_stations=4, overwrite=False):
    """Events recorded by 2-4 stations of a synthetic set's own network, truth known.

    Rebuilds the stations and source zones of ``make_synthetic_california``
    with the same ``n_stations`` and ``seed`` (so a model trained on that set
    meets its own seismicity) and draws ``n_events`` new events from the
    zones with ``event_seed``; each is recorded by every station within the
    generator's epicentral range (at most ``max_stations`` of them, chosen at
    random), and kept when at least ``min_stations`` record it.

    Writes ``output_hdf5`` (traces, the generator's layout),
    ``network_Events.npy`` (their ids) and ``network_arrivals.csv`` in
    ``output_dir``: one row per trace with ``trace_name, event_id,
    network, station, station_lat, station_lon, event_lat, event_lon,
    depth_km, origin_time, p_time, s_time`` (absolute, UTC: the origin time
    plus the straight-ray P time at ``VP_KM_S``; S as placed in the trace).

    Returns
    -------
    dict
        ``hdf5``, ``ids``, ``arrivals`` (paths), ``n_events``, ``n_traces``.
    """
    if not 1 <= min_stations <= max_stations:
        raise ValueError(f"need 1 <= min_stations <= max_stations, got {min_stations}, "
                         f"{max_stations}")
    paths = {"hdf5": Path(output_hdf5), "ids": Path(output_dir) / "network_Events.npy",
             "arrivals": Path(output_dir) / "network_arrivals.csv"}
    for p in paths.values():
        if p.exists() and not overwrite:
            raise FileExistsError(f"output file already exists: {p} (pass another path or "
                                  "overwrite=True)")
    rng = np.random.default_rng(seed)      # the set's network, as _build_catalog draws it
    stations = _make_stations(rng, n_stations)
    zones = [_make_zones(rng, s[1], s[2]) for s in stations]
    rng = np.random.default_rng([seed, event_seed])
    t, rows, data = datetime(2020, 1, 1), [], {}
    while len({r["event_id"] for r in rows}) < n_events:
        k = int(rng.integers(len(stations)))
        lat, lon, depth = _sample_event(rng, stations[k], *zones[k])
        near = [j for j, st in enumerate(stations)
                if EPI_RANGE_KM[0] <= _distance_baz(st[1], st[2], lat, lon)[0] <= EPI_RANGE_KM[1]]
        if len(near) < min_stations:
            continue
        if len(near) > max_stations:
            near = sorted(rng.choice(near, size=max_stations, replace=False).tolist())
        mag = _gr_magnitude(rng)
        t += timedelta(seconds=int(rng.integers(120, 86400)))
        event_id = f"NW{len({r['event_id'] for r in rows}):06d}"
        from obspy import UTCDateTime

        origin = UTCDateTime(t)
        for j in near:
            code, s_lat, s_lon = stations[j]
            trace, attrs = synthesize_trace(rng, s_lat, s_lon, lat, lon, depth, mag,
                                            rng.uniform(5.0, 40.0))
            hyp_km = math.hypot(attrs["source_distance_km"], max(depth, 0.0))
            p_time = origin + hyp_km / VP_KM_S
            s_time = p_time + (attrs["s_arrival_sample"] - attrs["p_arrival_sample"]) / FS
            name = f"{code}.SY_{t:%Y%m%d%H%M%S}_NW"
            data[name] = (trace, {"station_lat": float(s_lat), "station_long": float(s_lon),
                                  "receiver_code": code, "network_code": "SY",
                                  "AI_Set": "synthetic", "data_category": "earthquake", **attrs,
                                  "event_lat": float(lat), "event_long": float(lon),
                                  "depth": float(depth), "magnitude": round(float(mag), 2),
                                  "magnitude_type": "ml", "event_label": 1,
                                  "source_id": event_id,
                                  "source_origin_time": f"{t:%Y-%m-%d %H:%M:%S}"})
            rows.append({"trace_name": name, "event_id": event_id, "network": "SY",
                         "station": code, "station_lat": s_lat, "station_lon": s_lon,
                         "event_lat": lat, "event_lon": lon, "depth_km": depth,
                         "origin_time": str(origin), "p_time": str(p_time),
                         "s_time": str(s_time)})
    from utrans_loc import files

    def write_traces(tmp):
        with h5py.File(tmp, "w") as f:
            for name, (trace, attrs) in data.items():
                group = f.create_group(name)
                group.create_dataset("data", data=trace)
                group.attrs.update(attrs)

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    files.atomic_save(paths["hdf5"], write_traces)
    np.save(paths["ids"], np.array(list(data), dtype=str))
    pd.DataFrame(rows).to_csv(paths["arrivals"], index=False)
    return {**{k: str(v) for k, v in paths.items()}, "n_events": n_events,
            "n_traces": len(rows)}
