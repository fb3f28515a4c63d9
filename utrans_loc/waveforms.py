"""The 60 s cut: one pick's traces to the (6000, 3) E N Z window at 100 Hz the model reads.

:func:`cut_window` turns one pick into the window, with the P arrival
``p_position_s`` seconds into it: channel choice, merge, resampling,
rotation. A pick that cannot be used raises :class:`~utrans_loc.picks.PickError`,
one line naming the station and the pick time. The window itself is one spec,
:data:`WINDOW` (:class:`WindowSpec`: rate, length, default P position,
channel order, band-pass and the one resampler, :func:`resample_to_100hz`),
which the data builders in 00_data/ use too, so training data and located
picks are cut alike (:data:`SAMPLING_RATE`, :data:`NPTS`, ... are its numbers).

Where the data are already at 100 Hz, E/N/Z as the inventory says and without
gaps, the window is exactly the raw samples (no detrend, no dtype change), so
the model sees what tester1 sees reading the same trace from STEAD. Band-pass
and normalisation are not done here (:mod:`utrans_loc.estimates`).

Picks, stations, waveform sources and the writers of example files have their
own modules: :mod:`utrans_loc.picks`, :mod:`utrans_loc.stations`,
:mod:`utrans_loc.sources`, :mod:`utrans_loc.exporters`.

Must not import keras: reading and checking the inputs needs no backend.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from utrans_loc.picks import PickError, pick_label

MIN_SAMPLING_RATE = 20.0       # below: Nyquist under 10 Hz, most of the 1-45 Hz band missing
DEFAULT_CHANNEL_PRIORITY = ("HH", "BH", "EH", "HN")
MAX_GAP_S = 1.0
# The window's resampler (resample_to_100hz): a Kaiser-windowed sinc whose half
# length is POLYPHASE_HALF_LENGTH x max(up, down) taps of the up-sampled rate and
# whose beta gives about 100 dB of stop band; scipy's default (10 x, beta 5)
# lets 1e-3 of ripple and aliasing into the 1-45 Hz band (bench/resamplers.py).
POLYPHASE_HALF_LENGTH = 40
POLYPHASE_KAISER_BETA = 10.0
# Rates without a small exact ratio to 100 Hz (99.99 Hz, ...): Lanczos interpolation.
LANCZOS_A = 20                 # ObsPy: a >= 20 is good up to the Nyquist frequency
# Its anti-alias filter before downsampling: zero-phase Butterworth below the new
# Nyquist (50 Hz); the model's band-pass ends at 45 Hz.
ANTIALIAS_HZ = 45.0
ANTIALIAS_CORNERS = 8
RESAMPLE_MARGIN_S = 5.0        # data kept on each side of the window for the resampler's edges
NOMINAL_ORIENTATION = {"E": (90.0, 0.0), "N": (0.0, 0.0), "Z": (None, -90.0)}
ORIENTATION_TOLERANCE_DEG = 1e-6


def samples_at_100hz(n, sampling_rate):
    """How many 100 Hz samples fit in ``n`` samples at ``sampling_rate`` (first one shared)."""
    return int(math.floor((n - 1) * SAMPLING_RATE / sampling_rate + 1e-6)) + 1


def resample_to_100hz(samples, sampling_rate, npts=None):
    """One channel (1-D array at ``sampling_rate``) on the 100 Hz grid from its first sample.

    The window's one resampler (:attr:`WindowSpec.resample`): the data builders
    resample whole traces with it, the locator the window plus
    :data:`RESAMPLE_MARGIN_S` on each side. Rates with an exact small ratio to
    100 Hz (20, 40, 50, 80, 200, 250, 500 Hz, ...) go through scipy's polyphase
    resampler (``resample_poly``, edges padded along the line between the end
    samples, so no detrend is needed) with a Kaiser-windowed sinc of
    :data:`POLYPHASE_HALF_LENGTH` x max(up, down) taps each side, beta
    :data:`POLYPHASE_KAISER_BETA`; any other rate through
    :func:`interpolate_to_grid` (Lanczos).

    Chosen by measurement against the exact 100 Hz signal
    (``bench/resamplers.py``): error = RMS of the model's 1-45 Hz band-pass of
    (resampled - exact) over that of the exact signal, on 60 s inside 70 s
    (the locator's window and margins); median over 30 real STEAD channels
    (10 fixture traces, at 200/250 Hz with as much noise again above 55 Hz)
    and over 5 synthetic sums of sinusoids (up to 45 Hz or 0.9 x the input's
    Nyquist; at 200/250 Hz as much again out of band); time per 70 s channel
    on the tests' 2-core CPU::

        Hz   Lanczos (the locator's)   scipy's default filter    this filter (chosen)
             STEAD   synth.   ms       STEAD   synth.   ms       STEAD   synth.   ms
        40   1.4e-4  9.9e-4   4.7      9.0e-4  7.2e-3   0.2      2.1e-6  2.7e-6   0.4
        50   7.4e-5  9.5e-4   4.7      6.4e-4  6.7e-3   0.2      1.7e-6  2.4e-6   0.3
        200  6.5e-4  3.7e-2   5.4      5.8e-3  4.4e-3   0.3      2.4e-6  2.1e-6   0.6
        250  1.3e-3  4.0e-2   6.6      4.6e-3  4.1e-3   0.3      2.4e-6  2.4e-6   0.9

    Lanczos loses the top of the band (40-45 Hz) to its 45 Hz anti-alias
    Butterworth when downsampling; scipy's default filter (the builders'
    before) lets about 1e-3 of pass-band ripple and, above 100 Hz, aliasing
    from 55-60 Hz through; this one does neither and is 8-15 times faster
    than Lanczos. Over a whole trace (the builders': edges inside) the first
    and last ~0.5 s ring where the data do not end quietly: 3e-3 (STEAD with
    noise, 200/250 Hz; Lanczos 1.7e-3) and 1e-3 (synthetic; Lanczos 3e-2).

    Returns float64, ``npts`` samples (default: all that fit in the data;
    beyond the data the last value is held).
    """
    from fractions import Fraction

    from scipy.signal import resample_poly

    data = np.asarray(samples, dtype=np.float64)
    fit = samples_at_100hz(len(data), sampling_rate)
    npts = fit if npts is None else npts
    ratio = Fraction(SAMPLING_RATE / float(sampling_rate)).limit_denominator(100)
    if abs(float(ratio) - SAMPLING_RATE / sampling_rate) > 1e-12:
        out = interpolate_to_grid(data, sampling_rate, min(npts, fit))
    elif ratio == 1:
        out = data.copy()
    else:
        up, down = ratio.numerator, ratio.denominator
        out = resample_poly(data, up, down, window=_polyphase_taps(max(up, down)),
                            padtype="line")[:fit]
    if len(out) < npts:
        out = np.concatenate([out, np.repeat(out[-1:], npts - len(out))])
    return out[:npts]


@functools.lru_cache(maxsize=16)
def _polyphase_taps(longest):
    """The anti-alias FIR of a polyphase ratio whose larger term is ``longest`` (designed
    once: 8001 taps for 99 Hz; resample_poly copies it)."""
    from scipy.signal import firwin

    return firwin(2 * POLYPHASE_HALF_LENGTH * longest + 1, 1.0 / longest,
                  window=("kaiser", POLYPHASE_KAISER_BETA))


def interpolate_to_grid(samples, sampling_rate, npts=None):
    """One channel (1-D array at ``sampling_rate``) onto the 100 Hz grid from its first
    sample by Lanczos interpolation (detrend, anti-alias low-pass, ObsPy Lanczos):
    :func:`resample_to_100hz` for rates without a small exact ratio to 100 Hz.
    Returns float64, ``npts`` samples (default: all that fit in the data)."""
    from obspy import Trace

    tr = Trace(np.asarray(samples), header={"sampling_rate": float(sampling_rate)})
    _prepare_for_interpolation(tr)
    npts = samples_at_100hz(tr.stats.npts, sampling_rate) if npts is None else npts
    tr.interpolate(SAMPLING_RATE, method="lanczos", a=LANCZOS_A, starttime=tr.stats.starttime,
                   npts=npts)
    return tr.data


def _prepare_for_interpolation(tr):
    """float64, detrended, and low-passed below the new Nyquist when downsampling."""
    tr.data = np.require(tr.data, dtype=np.float64)
    # A trend left in makes a step at the edges, which the interpolation rings on.
    tr.detrend("linear")
    if tr.stats.sampling_rate > SAMPLING_RATE:
        tr.filter("lowpass", freq=ANTIALIAS_HZ, corners=ANTIALIAS_CORNERS, zerophase=True)


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """The model's window: one spec for the data builders (00_data/) and the locator.

    The training data and the locator's windows are made by the same numbers
    and the same resampler, so a trace cut by either gives the same model
    input (tests/test_window_spec.py: bitwise at 100 Hz).

    Attributes
    ----------
    sampling_rate : float
        The model's input rate, Hz (STEAD's).
    npts : int
        Window length in samples (60 s).
    p_position_s : float
        Where P sits in the window when nothing else says: the locator's
        default for a model without a recorded ``p_position_s`` (an upstream
        Keras 2 checkpoint), and where a builder puts P when a longer trace
        must be cut. 7 s: the published model was trained on STEAD windows
        (UTRANS_SPEC.md section 1: DataCollected built from STEAD, 6000 x 3
        at 100 Hz; the spec states no P position), and STEAD's windows hold P
        at 4-9 s, median 7 s, in the 50 fixture traces. Its training also
        shifted every event circularly (section 4, shift_event_r 0.99), so it
        saw P everywhere in the window.
    channels : tuple of str
        Component order of the window's columns.
    bandpass_hz : tuple of float
        The band-pass the model's input gets (:func:`utrans_loc.traces.bandpass_taper`:
        zero-phase Butterworth, 2 corners, and a cosine taper).
    resample : callable
        ``resample(samples, sampling_rate, npts=None)``: one channel onto the
        window's grid from its first sample (:func:`resample_to_100hz`).
    """

    sampling_rate: float = 100.0
    npts: int = 6000
    p_position_s: float = 7.0
    channels: tuple = ("E", "N", "Z")
    bandpass_hz: tuple = (1.0, 45.0)
    resample: object = resample_to_100hz

    @property
    def length_s(self):
        return self.npts / self.sampling_rate

    @property
    def p_position_samples(self):
        return int(round(self.p_position_s * self.sampling_rate))

    def bandpass(self, data):
        """The band-pass and taper of (samples, channels) ``data`` (float32)."""
        from utrans_loc.traces import bandpass_taper

        return bandpass_taper(data, fs=self.sampling_rate, freqmin=self.bandpass_hz[0],
                              freqmax=self.bandpass_hz[1])

    def training_layout(self, p_arrival_samples, shifted):
        """Where P sat in a model's training windows, for ``model_config.json``.

        Parameters
        ----------
        p_arrival_samples : array-like
            P sample of each training trace (NaN where unknown: not counted).
        shifted : bool
            Whether training shifted the events (``shift_event_r`` > 0 with
            augmentation): the circular shift moves P anywhere in the window,
            so the model saw every position.

        Returns
        -------
        dict
            ``window`` (rate, samples, channels, band-pass), ``p_position_s``
            (median, s), ``p_position_data_range_s`` (5th and 95th percentiles,
            s), ``p_position_range_s`` (the positions the model saw: those,
            or the whole window when ``shifted``), ``p_position_count`` and
            ``shift_augmentation``. The P entries are None without a P.
        """
        p = np.asarray(p_arrival_samples, dtype=np.float64)
        p = p[np.isfinite(p)] / self.sampling_rate
        data_range = [float(v) for v in np.percentile(p, [5, 95])] if p.size else None
        return {"window": {"sampling_rate": self.sampling_rate, "npts": self.npts,
                           "channels": "".join(self.channels),
                           "bandpass_hz": list(self.bandpass_hz)},
                "p_position_s": float(np.median(p)) if p.size else None,
                "p_position_range_s": [0.0, self.length_s] if shifted else data_range,
                "p_position_data_range_s": data_range, "p_position_count": int(p.size),
                "shift_augmentation": bool(shifted)}


WINDOW = WindowSpec()
# The spec's numbers under the names the modules importing them use.
SAMPLING_RATE = WINDOW.sampling_rate
NPTS = WINDOW.npts
# Where a builder puts P when a longer trace must be cut to NPTS (the spec's P position).
P_LEAD_SAMPLES = WINDOW.p_position_samples


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
    other rates (at least :data:`MIN_SAMPLING_RATE`) go through the window's
    resampler (:attr:`WindowSpec.resample`, the data builders' too) over the
    window plus :data:`RESAMPLE_MARGIN_S` each side and are cut at the
    nearest 100 Hz sample in the same way (up to one input sample beyond
    either end of the data is filled with the edge value). Horizontals not
    E/N, or oriented otherwise than the inventory's nominal E/N/Z, are
    rotated to E/N/Z (``rotate2zne``).

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
    for wanted in (WINDOW.channels, ("1", "2", "Z")):
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
    """The window on the 100 Hz grid from another rate: :attr:`WindowSpec.resample` of the
    window plus :data:`RESAMPLE_MARGIN_S` each side, cut at the nearest 100 Hz sample (as
    100 Hz data are: the builders' grid starts at a data sample too)."""
    delta = tr.stats.delta
    if window_start < tr.stats.starttime - delta or window_end > tr.stats.endtime + delta:
        raise _outside(label, tr.id, window_start, window_end, [tr])
    seg = tr.slice(window_start - RESAMPLE_MARGIN_S, window_end + RESAMPLE_MARGIN_S)
    # A masked sample becomes NaN, which the window's finite check then names.
    data = np.ma.filled(seg.data.astype(np.float64), np.nan) if np.ma.isMaskedArray(seg.data) \
        else seg.data
    first_time = seg.stats.starttime
    # Up to one input sample beyond either end of the data: the edge value is held.
    if window_start < first_time:
        data = np.concatenate([data[:1], data])
        first_time -= delta
    if window_end > seg.stats.endtime:
        data = np.concatenate([data, data[-1:]])
    first = int(round((window_start - first_time) * SAMPLING_RATE))
    return WINDOW.resample(data, tr.stats.sampling_rate, first + npts)[first:first + npts]


def _to_enz(columns, letters, ids, stations, label, time):
    """(npts, 3) E, N, Z and whether a rotation was applied."""
    orientations = [stations.orientation(seed_id, time) for seed_id in ids]
    if letters == WINDOW.channels and all(
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

