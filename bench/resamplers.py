"""The model window's resampler, chosen by measurement: polyphase FIR or Lanczos.

Three resamplers are run on signals whose exact 100 Hz version is known, from
40, 50, 200 and 250 Hz: ``lanczos`` (:func:`utrans_loc.waveforms.interpolate_to_grid`,
the locator's before the window spec), ``polyphase_scipy`` (``resample_poly``
with scipy's default filter, the data builders' before) and ``polyphase``
(:func:`utrans_loc.waveforms.resample_to_100hz`, the window's resampler now).
The numbers are in that function's docstring and docs/locating.md.

* ``synthetic``: a sum of 400 sinusoids (random frequencies, phases and
  amplitudes) evaluated exactly at any time; in band from 1 Hz up to 45 Hz or
  0.9 x the input's Nyquist frequency (18 Hz at 40 Hz), and at 200/250 Hz as
  much again out of band (55 Hz to 0.9 x Nyquist), which the exact 100 Hz
  signal does not hold (aliasing shows up as error);
* ``stead``: each channel of real STEAD traces (fixture), taken as a
  periodic band-limited signal (detrended, 5 % Tukey taper) and sampled
  exactly by Fourier interpolation; at 40/50 Hz first low-passed (raised
  cosine 0.8-0.9 x the input's Nyquist), at 200/250 Hz with band-limited noise
  of the same RMS added above 55 Hz.

Error: the model's own band-pass (:func:`utrans_loc.traces.bandpass_taper`,
1-45 Hz) of (resampled - exact), RMS over that of the exact signal, on the
60 s in the middle of 70 s (``window``: the locator's window and margins) and
on the whole 60 s trace (``trace``: the builder's, edges included). Time: one
channel of 70 s, median of repeats. Prints one table; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utrans_loc import waveforms as W  # noqa: E402
from utrans_loc.traces import bandpass_taper  # noqa: E402

RATES = (40.0, 50.0, 200.0, 250.0)
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                       "shared", "fixtures", "stead_sample", "waveforms.hdf5")


def scipy_default_polyphase(samples, sampling_rate, npts):
    """``resample_poly`` with scipy's own filter (10 x max(up, down) taps each side,
    Kaiser beta 5): what the data builders used before the window spec."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(100.0 / sampling_rate).limit_denominator(100)
    out = resample_poly(np.asarray(samples, float), ratio.numerator, ratio.denominator,
                        padtype="line")[:npts]
    return np.concatenate([out, np.repeat(out[-1:], npts - len(out))])


METHODS = {"lanczos": W.interpolate_to_grid, "polyphase_scipy": scipy_default_polyphase,
           "polyphase": W.resample_to_100hz}


def synthetic(fs, seconds, rng):
    """(input at fs, exact 100 Hz in-band signal) of a random sum of sinusoids."""
    top = min(45.0, 0.45 * fs)
    n = 400
    freqs = rng.uniform(1.0, top, n)
    amps, phases = rng.uniform(0.2, 1.0, n) / np.sqrt(freqs), rng.uniform(0, 2 * np.pi, n)
    t_in, t_100 = np.arange(int(seconds * fs)) / fs, np.arange(int(seconds * 100)) / 100.0

    def at(t, f, a, p):
        out = np.zeros_like(t)
        for fi, ai, pi in zip(f, a, p):
            out += ai * np.sin(2 * np.pi * fi * t + pi)
        return out

    x_in, exact = at(t_in, freqs, amps, phases), at(t_100, freqs, amps, phases)
    if fs > 100.0:   # as much again out of band, which the 100 Hz signal must not hold
        f_out = rng.uniform(55.0, 0.45 * fs, n)
        x_in += at(t_in, f_out, rng.uniform(0.2, 1.0, n) / np.sqrt(f_out),
                   rng.uniform(0, 2 * np.pi, n))
    return x_in, exact


def stead(fs, trace, rng):
    """(input at fs, exact 100 Hz signal) of a real trace as a periodic band-limited signal."""
    from scipy.signal import detrend
    from scipy.signal.windows import tukey

    x = detrend(trace.astype(np.float64)) * tukey(len(trace), 0.05)
    spec, f = np.fft.rfft(x), np.fft.rfftfreq(len(x), 0.01)
    spec[f >= 50.0] = 0.0   # the 50 Hz bin is +50 and -50 Hz at once: not one signal elsewhere
    if fs < 100.0:   # only what the input can hold: raised cosine from 0.8 to 0.9 x Nyquist
        lo, hi = 0.4 * fs, 0.45 * fs
        spec *= np.where(f <= lo, 1.0, np.where(f >= hi, 0.0, 0.5 + 0.5 * np.cos(
            np.pi * (f - lo) / (hi - lo))))
    exact = np.fft.irfft(spec, len(x))
    n_in = int(round(len(x) * fs / 100.0))
    up = np.zeros(n_in // 2 + 1, complex)
    keep = min(len(spec), len(up))
    up[:keep] = spec[:keep] * n_in / len(x)
    if fs > 100.0:
        f_in = np.fft.rfftfreq(n_in, 1.0 / fs)
        band = (f_in >= 55.0) & (f_in <= 0.45 * fs)
        noise = np.zeros_like(up)
        noise[band] = rng.standard_normal(band.sum()) + 1j * rng.standard_normal(band.sum())
        noise *= np.sqrt(np.sum(np.abs(up) ** 2) / np.sum(np.abs(noise) ** 2))
        up += noise
    return np.fft.irfft(up, n_in), exact


def band_error(y, exact):
    """RMS of the model's 1-45 Hz band-pass of the error over that of the exact signal."""
    return float(np.sqrt(np.mean(bandpass_taper((y - exact)[:, None]) ** 2) /
                         np.mean(bandpass_taper(exact[:, None]) ** 2)))


def measure(kind, fs, method, rng, trace=None):
    """(window error, trace error) of one method on one signal at fs."""
    resample = METHODS[method]
    errors = []
    for seconds, margin in ((70.0, 5.0), (60.0, 0.0)):
        if kind == "synthetic":
            x_in, exact = synthetic(fs, seconds, rng)
        else:
            padded = np.pad(trace, int(margin * 100)) if margin else trace
            x_in, exact = stead(fs, padded, rng)
        exact = exact[:W.samples_at_100hz(len(x_in), fs)]   # the input's last sample ends it
        y = resample(x_in, fs, len(exact))
        m = int(margin * 100)
        errors.append(band_error(y[m:len(y) - m], exact[m:len(exact) - m]))
    return errors


def timing(fs, method, repeats):
    x = np.random.default_rng(0).standard_normal(int(70 * fs))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        METHODS[method](x, fs, W.samples_at_100hz(len(x), fs))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stead", default=FIXTURE, help="STEAD HDF5 (older layout) to read")
    parser.add_argument("--traces", type=int, default=10,
                        help="STEAD traces (every 5th of the file), 3 channels each")
    parser.add_argument("--draws", type=int, default=5, help="synthetic signals per rate")
    parser.add_argument("--repeats", type=int, default=7, help="timing repeats (median)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import h5py

    with h5py.File(args.stead, "r") as fh:
        group = fh["earthquake/local"]
        traces = [group[name][()] for name in sorted(group)[::5][:args.traces]]
    print("median error (window: 60 s inside 70 s | trace: whole 60 s) and ms per 70 s channel")
    print(f"{'rate':>4}  {'method':15s}  {'STEAD window':>12}  {'trace':>8}  "
          f"{'synthetic window':>16}  {'trace':>8}  {'ms':>6}")
    for fs in RATES:
        for method in METHODS:
            stead_errors = np.median([measure("stead", fs, method, np.random.default_rng(
                10 * i + c), trace[:, c]) for i, trace in enumerate(traces) for c in range(3)],
                axis=0)
            synthetic_errors = np.median([measure("synthetic", fs, method,
                                                  np.random.default_rng(seed))
                                          for seed in range(args.draws)], axis=0)
            ms = timing(fs, method, args.repeats) * 1e3
            print(f"{fs:4.0f}  {method:15s}  {stead_errors[0]:12.1e}  {stead_errors[1]:8.1e}  "
                  f"{synthetic_errors[0]:16.1e}  {synthetic_errors[1]:8.1e}  {ms:6.2f}")


if __name__ == "__main__":
    main()
