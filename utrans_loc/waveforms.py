"""The 60 s cut: one pick's traces to the (6000, 3) E N Z window at 100 Hz the model reads.

:func:`cut_window` turns one pick into the window, with the P arrival
``p_position_s`` seconds into it: channel choice, merge, resampling,
rotation. A pick that cannot be used raises :class:`~utrans_loc.picks.PickError`,
one line naming the station and the pick time. The window's constants
(:data:`SAMPLING_RATE`, :data:`NPTS`, ...) are shared with the data builders
in 00_data/, and the resamplers (:func:`resample_to_100hz`,
:func:`interpolate_to_grid`) with the SeisBench converter.

Where the data are already at 100 Hz, E/N/Z as the inventory says and without
gaps, the window is exactly the raw samples (no detrend, no dtype change), so
the model sees what tester1 sees reading the same trace from STEAD. Only data
that must be resampled are detrended first (the resampler's edges need it).
Band-pass and normalisation are not done here (:mod:`utrans_loc.locate`).

Picks, stations, waveform sources and the writers of example files have their
own modules: :mod:`utrans_loc.picks`, :mod:`utrans_loc.stations`,
:mod:`utrans_loc.sources`, :mod:`utrans_loc.exporters`.

Must not import keras: reading and checking the inputs needs no backend.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from utrans_loc.picks import PickError, pick_label

# The model's window, shared with the data builders in 00_data/ (they import these).
SAMPLING_RATE = 100.0          # the model's input rate (STEAD)
NPTS = 6000                    # window length in samples: 60 s at SAMPLING_RATE
# Where a builder puts P when a longer trace must be cut to NPTS: 10 s into the window.
P_LEAD_SAMPLES = 1000
MIN_SAMPLING_RATE = 20.0       # below: Nyquist under 10 Hz, most of the 1-45 Hz band missing
DEFAULT_CHANNEL_PRIORITY = ("HH", "BH", "EH", "HN")
MAX_GAP_S = 1.0
LANCZOS_A = 20                 # ObsPy: a >= 20 is good up to the Nyquist frequency
# Anti-alias filter before downsampling: zero-phase Butterworth below the new
# Nyquist (50 Hz); the model's band-pass ends at 45 Hz.
ANTIALIAS_HZ = 45.0
ANTIALIAS_CORNERS = 8
RESAMPLE_MARGIN_S = 5.0        # data kept on each side of the window for the resampler's edges
NOMINAL_ORIENTATION = {"E": (90.0, 0.0), "N": (0.0, 0.0), "Z": (None, -90.0)}
ORIENTATION_TOLERANCE_DEG = 1e-6


@dataclasses.dataclass
class Window:
    """One pick's model window and how it was made."""

    data: np.ndarray          # (npts, 3) E, N, Z; raw dtype when untouched
    start: object             # UTCDateTime of the first sample
    channels: tuple           # the three channel codes used
    location: str
    sampling_rate_in: tuple   # input rate of each channel (Hz)
    resampled: bool
    rotated: bool


def cut_window(traces, network, station, p_time, p_position_s, stations, npts=NPTS,
               channel_priority=DEFAULT_CHANNEL_PRIORITY, max_gap_s=MAX_GAP_S, location=None):
    """The (npts, 3) E N Z window at 100 Hz of one pick, P at ``p_position_s``.

    Channels: the first band+instrument code of ``channel_priority`` (e.g.
    'HH') with three components that gives a window; others are not used.
    Per component: gaps inside the window up to ``max_gap_s`` are
    interpolated (ObsPy merge), longer ones are an error. Data at 100 Hz are
    cut at the nearest sample (at most half a sample from the asked start);
    other rates (at least :data:`MIN_SAMPLING_RATE`) are detrended, low-passed
    if downsampled, and Lanczos-interpolated onto the exact 100 Hz grid of the
    window (up to one input sample beyond either end of the data is filled
    with the edge value). Horizontals not E/N, or oriented otherwise than the
    inventory's nominal E/N/Z, are rotated to E/N/Z (``rotate2zne``).

    Parameters
    ----------
    traces : list of obspy Trace
        The station's traces around the window (``read`` of
        :class:`WaveformFiles` or :class:`SDSArchive`).
    network, station : str
    p_time : obspy.UTCDateTime
    p_position_s : float
        Seconds from the window start to the P pick.
    stations : Stations
        Orientation of the channels (and must know the station).
    npts : int
        Window length in samples at 100 Hz.
    channel_priority : sequence of str
        Band+instrument codes, most preferred first.
    max_gap_s : float
        Longest gap inside the window that is interpolated.
    location : str or None
        Only this location code (None: any, '' first).

    Returns
    -------
    Window

    Raises
    ------
    PickError
        No usable channels, fewer than 3 components, a long gap, the window
        outside the data, a sampling rate that cannot be resampled, missing
        orientations: one line naming the station and time.
    """
    label = pick_label(network, station, p_time)
    if not traces:
        raise PickError(f"{label}: no waveforms for this station")
    groups = {}
    for tr in traces:
        cha, loc = tr.stats.channel, tr.stats.location
        if len(cha) == 3 and cha[:2] in channel_priority and (location is None or loc == location):
            groups.setdefault((channel_priority.index(cha[:2]), loc, cha[:2]), []).append(tr)
    if not groups:
        found = sorted({f"{tr.stats.location}.{tr.stats.channel}".lstrip(".") for tr in traces})
        raise PickError(f"{label}: no {'/'.join(channel_priority)} channels "
                        f"{'' if location is None else f'at location {location!r} '}(found: "
                        f"{', '.join(found[:8])}); see --channel_priority")
    window_start = p_time - p_position_s
    errors = []
    for key in sorted(groups):
        _, loc, band = key
        try:
            return _window_from(groups[key], label, loc, window_start, npts, stations, max_gap_s)
        except PickError as err:
            errors.append((f"{loc}.{band}".lstrip("."), str(err)))
    first = errors[0][1]
    if len(errors) > 1:
        first += "; also tried " + ", ".join(f"{code}: {msg.split(': ', 1)[-1]}"
                                             for code, msg in errors[1:])
    raise PickError(first)


def _components(traces, label, code):
    """The three component letters to use, e.g. ('E', 'N', 'Z') or ('1', '2', 'Z')."""
    present = sorted({tr.stats.channel[2] for tr in traces})
    for wanted in (("E", "N", "Z"), ("1", "2", "Z")):
        if set(wanted) <= set(present):
            return wanted
    if len(present) == 3:
        return tuple(present)
    raise PickError(f"{label}: {code} has {len(present)} component(s) ({', '.join(present)}) "
                    "in the data around the window, 3 are needed (E/N/Z, 1/2/Z or three "
                    "oriented in the inventory)")


def _window_from(traces, label, loc, window_start, npts, stations, max_gap_s):
    code = f"{loc}.{traces[0].stats.channel[:2]}".lstrip(".")
    letters = _components(traces, label, code)
    window_end = window_start + (npts - 1) / SAMPLING_RATE
    columns, rates, resampled, ids = [], [], False, []
    for letter in letters:
        parts = [tr for tr in traces if tr.stats.channel[2] == letter]
        tr = _merged(parts, label, window_start, window_end, max_gap_s)
        ids.append(tr.id)
        rate = float(tr.stats.sampling_rate)
        rates.append(rate)
        if math.isclose(rate, SAMPLING_RATE, rel_tol=1e-9):
            columns.append(_cut(tr, label, window_start, npts))
        else:
            columns.append(_resampled(tr, label, window_start, window_end, npts))
            resampled = True
    # A masked sample (left by a reader or a merge) would be an arbitrary number once stacked.
    columns = [np.ma.filled(c.astype(np.float64), np.nan) if np.ma.isMaskedArray(c) else c
               for c in columns]
    if not all(np.isfinite(c).all() for c in columns):
        raise PickError(f"{label}: NaN, Inf or masked samples in the window of "
                        f"{', '.join(ids)}")
    data, rotated = _to_enz(columns, letters, ids, stations, label, window_start)
    return Window(data=data, start=window_start, channels=tuple(i.split(".")[-1] for i in ids),
                  location=loc, sampling_rate_in=tuple(rates), resampled=resampled,
                  rotated=rotated)


def _merged(parts, label, window_start, window_end, max_gap_s):
    """One trace of a component around the window; long gaps inside it are errors."""
    from obspy import Stream

    seed_id = parts[0].id
    rates = {float(tr.stats.sampling_rate) for tr in parts}
    if len(rates) > 1:
        raise PickError(f"{label}: {seed_id} has pieces at different sampling rates "
                        f"({', '.join(f'{r:g}' for r in sorted(rates))} Hz)")
    rate = rates.pop()
    if not (math.isfinite(rate) and rate >= MIN_SAMPLING_RATE):
        raise PickError(f"{label}: sampling rate {rate:g} Hz of {seed_id} cannot be resampled to "
                        f"{SAMPLING_RATE:g} Hz (below {MIN_SAMPLING_RATE:g} Hz most of the "
                        "1-45 Hz band the model reads is missing)")
    margin = RESAMPLE_MARGIN_S if not math.isclose(rate, SAMPLING_RATE, rel_tol=1e-9) else 1.0
    near = [tr for tr in parts if tr.stats.endtime >= window_start - margin and
            tr.stats.starttime <= window_end + margin]
    if not near:
        raise _outside(label, seed_id, window_start, window_end, parts)
    if len(near) == 1:
        return near[0]
    # Slicing copies the header (ObsPy's bookkeeping): only the few pieces near the window.
    stream = Stream([tr.slice(window_start - margin, window_end + margin) for tr in near])
    stream.traces = [tr for tr in stream if tr.stats.npts]
    for gap in stream.get_gaps():
        gap_start, gap_end, duration = gap[4], gap[5], gap[6]
        if duration > max_gap_s and gap_start < window_end and gap_end > window_start:
            raise PickError(f"{label}: gap of {duration:.2f} s in {seed_id} from {gap_start} "
                            f"inside the window (longer than {max_gap_s:g} s)")
    if len(stream) > 1:
        stream = stream.copy()          # merge makes new arrays; never touch the caller's traces
        if len({tr.data.dtype for tr in stream}) > 1:
            # ObsPy joins only pieces of one sample type (e.g. a day file of int32 counts
            # beside a float64 one); float64 holds int32 and float32 samples exactly.
            for tr in stream:
                tr.data = tr.data.astype(np.float64)
        try:
            stream.merge(method=1, fill_value="interpolate")
        except Exception as err:   # ObsPy raises a bare Exception for pieces it cannot join
            raise PickError(f"{label}: cannot merge the pieces of {seed_id} ({err})") from None
    return stream[0]


def _outside(label, seed_id, window_start, window_end, traces):
    """The error of a window the data do not cover, with the nearest data named.

    A piece of data lying within the window (both its ends inside, so neither
    was cut by a windowed read) means the window is longer than the data
    there: said with both spans.
    """
    length = window_end - window_start
    inside = sorted((tr.stats.starttime, tr.stats.endtime) for tr in traces
                    if tr.stats.starttime >= window_start and tr.stats.endtime <= window_end)
    if inside:
        spans = "; ".join(f"{first} - {last}, {last - first:.2f} s" for first, last in inside[:3])
        more = ", ..." if len(inside) > 3 else ""
        return PickError(f"{label}: window {window_start} - {window_end} ({length:.2f} s) is "
                         f"longer than the data of {seed_id} there ({spans}{more})")
    before = [tr.stats.endtime for tr in traces if tr.stats.starttime <= window_start]
    after = [tr.stats.starttime for tr in traces if tr.stats.endtime >= window_end]
    near = [f"data end at {max(before)}" if before else "",
            f"data start at {min(after)}" if after else ""]
    near = "; ".join(n for n in near if n) or "no data around it"
    return PickError(f"{label}: window {window_start} - {window_end} is outside the data of "
                     f"{seed_id} ({near})")


def _cut(tr, label, window_start, npts):
    """Raw samples of the window at the nearest sample (a view, dtype kept)."""
    first = int(round((window_start - tr.stats.starttime) * tr.stats.sampling_rate))
    if first < 0 or first + npts > tr.stats.npts:
        raise _outside(label, tr.id, window_start, window_start + (npts - 1) / SAMPLING_RATE, [tr])
    return tr.data[first:first + npts]


def _resampled(tr, label, window_start, window_end, npts):
    """The window interpolated onto the exact 100 Hz grid from another rate."""
    delta = tr.stats.delta
    if window_start < tr.stats.starttime - delta or window_end > tr.stats.endtime + delta:
        raise _outside(label, tr.id, window_start, window_end, [tr])
    seg = tr.slice(window_start - RESAMPLE_MARGIN_S, window_end + RESAMPLE_MARGIN_S).copy()
    _prepare_for_interpolation(seg)
    if window_start < seg.stats.starttime:
        seg.data = np.concatenate([seg.data[:1], seg.data])
        seg.stats.starttime -= delta
    if window_end > seg.stats.endtime:
        seg.data = np.concatenate([seg.data, seg.data[-1:]])
    seg.interpolate(SAMPLING_RATE, method="lanczos", a=LANCZOS_A, starttime=window_start,
                    npts=npts)
    return seg.data


def _prepare_for_interpolation(tr):
    """float64, detrended, and low-passed below the new Nyquist when downsampling."""
    tr.data = np.require(tr.data, dtype=np.float64)
    # A trend left in makes a step at the edges, which the interpolation rings on.
    tr.detrend("linear")
    if tr.stats.sampling_rate > SAMPLING_RATE:
        tr.filter("lowpass", freq=ANTIALIAS_HZ, corners=ANTIALIAS_CORNERS, zerophase=True)


def samples_at_100hz(n, sampling_rate):
    """How many 100 Hz samples fit in ``n`` samples at ``sampling_rate`` (first one shared)."""
    return int(math.floor((n - 1) * SAMPLING_RATE / sampling_rate + 1e-6)) + 1


def resample_to_100hz(samples, sampling_rate, npts=None):
    """One channel (1-D array at ``sampling_rate``) on the 100 Hz grid from its first sample.

    Rates with an exact small ratio to 100 Hz (20, 40, 50, 200, 250, 500 Hz, ...)
    go through scipy's polyphase resampler (``resample_poly``, Kaiser-windowed
    anti-alias FIR, edges padded along the linear trend), about 200 times
    faster than Lanczos interpolation; any other rate through
    :func:`interpolate_to_grid`. Returns float64, ``npts`` samples (default:
    all that fit in the data).
    """
    from fractions import Fraction

    from scipy.signal import resample_poly

    data = np.asarray(samples, dtype=np.float64)
    npts = samples_at_100hz(len(data), sampling_rate) if npts is None else npts
    ratio = Fraction(SAMPLING_RATE / float(sampling_rate)).limit_denominator(100)
    if abs(float(ratio) - SAMPLING_RATE / sampling_rate) > 1e-12:
        return interpolate_to_grid(data, sampling_rate, npts)
    out = resample_poly(data, ratio.numerator, ratio.denominator, padtype="line")
    if len(out) < npts:   # never more than a sample short; hold the last value
        out = np.concatenate([out, np.repeat(out[-1:], npts - len(out))])
    return out[:npts]


def interpolate_to_grid(samples, sampling_rate, npts=None):
    """One channel (1-D array at ``sampling_rate``) onto the 100 Hz grid from its first
    sample: the locator's resampler (detrend, anti-alias low-pass, ObsPy Lanczos), for
    arrays (the SeisBench converter). Returns float64, ``npts`` samples (default: all
    that fit in the data)."""
    from obspy import Trace

    tr = Trace(np.asarray(samples), header={"sampling_rate": float(sampling_rate)})
    _prepare_for_interpolation(tr)
    npts = samples_at_100hz(tr.stats.npts, sampling_rate) if npts is None else npts
    tr.interpolate(SAMPLING_RATE, method="lanczos", a=LANCZOS_A, starttime=tr.stats.starttime,
                   npts=npts)
    return tr.data


def _to_enz(columns, letters, ids, stations, label, time):
    """(npts, 3) E, N, Z and whether a rotation was applied."""
    orientations = [stations.orientation(seed_id, time) for seed_id in ids]
    if letters == ("E", "N", "Z") and all(
            o is None or _nominal(o, letter) for o, letter in zip(orientations, letters)):
        return np.stack(columns, axis=1), False
    missing = [seed_id for seed_id, o in zip(ids, orientations) if o is None]
    if stations.inventory is None:
        raise PickError(f"{label}: channels {', '.join(ids)} are not E/N/Z and the CSV inventory "
                        f"{stations.path} has no orientations to rotate them (use StationXML)")
    if missing:
        raise PickError(f"{label}: no azimuth/dip for {', '.join(missing)} in the inventory "
                        f"{stations.path}; needed to rotate to E/N/Z")
    from obspy.signal.rotate import rotate2zne

    args = []
    for column, (azimuth, dip) in zip(columns, orientations):
        args += [np.asarray(column, dtype=np.float64), azimuth, dip]
    try:
        z, n, e = rotate2zne(*args)
    except ValueError as err:
        raise PickError(f"{label}: cannot rotate {', '.join(ids)} to E/N/Z ({err})") from None
    return np.stack([e, n, z], axis=1), True


def _nominal(orientation, letter):
    azimuth, dip = orientation
    want_azimuth, want_dip = NOMINAL_ORIENTATION[letter]
    if abs(dip - want_dip) > ORIENTATION_TOLERANCE_DEG:
        return False
    return want_azimuth is None or abs((azimuth - want_azimuth + 180) % 360 - 180) <= \
        ORIENTATION_TOLERANCE_DEG

