"""Waveform sources: the station's traces of a time span, from files or an SDS archive.

:class:`WaveformFiles` (miniSEED, SAC, ... indexed by their headers) and
:class:`SDSArchive` both implement :class:`WaveformSource`;
:func:`open_waveforms` gives the run's one. :func:`read_spans` groups the
windows of one station so that windows close in time share one read.

Must not import keras: reading and checking the inputs needs no backend.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
import warnings
from typing import Protocol

from utrans_loc.waveforms import RESAMPLE_MARGIN_S

# Data read beyond each end of a window: the resampler's margin and a second to spare
# (pieces are cut at whole records and samples).
READ_MARGIN_S = RESAMPLE_MARGIN_S + 1.0
# Picks of one station whose windows are this close share one read, up to this long a span.
SHARED_READ_GAP_S = 60.0
SHARED_READ_MAX_S = 3600.0


class WaveformSource(Protocol):
    """What the locator reads waveforms through (:func:`open_waveforms`).

    Implemented by :class:`WaveformFiles` and :class:`SDSArchive`. Times are
    ``obspy.UTCDateTime``; a source is made once per run and read once per
    group of close windows (:func:`read_spans`).
    """

    def read(self, network: str, station: str, start, end) -> list:
        """The station's traces (every channel and location, pieces not merged, none
        empty) within ``start`` - ``end``; ``[]`` where there are none.
        :class:`WaveformReadError` (naming the file or archive) where data
        that should be there cannot be read."""

    def no_data(self, network: str, station: str, window_start, window_end) -> str:
        """Why a window found no data (no data of the station, or none around the
        window), one line naming the source, for the pick's message."""


def waveform_files(spec):
    """The files of a folder (not its subfolders), or of a glob (``**`` recursive)."""
    spec = str(spec)
    if os.path.isdir(spec):
        names = [os.path.join(spec, n) for n in sorted(os.listdir(spec)) if not n.startswith(".")]
    else:
        names = sorted(glob.glob(spec, recursive=True))
    names = [n for n in names if os.path.isfile(n)]
    if not names:
        raise FileNotFoundError(f"no waveform files found at {spec} (a folder or a glob such as "
                                "'data/*.mseed')")
    return names


def _one_line(err):
    """A reader's message on one line (some span several)."""
    return " ".join(str(err).split())


class WaveformReadError(ValueError):
    """Data that could not be read for a span (the message names the file or archive)."""


@contextlib.contextmanager
def mseed_warnings(where, said, key=None, unit="file"):
    """Gather ObsPy's miniSEED warnings raised inside into one line on stderr.

    A corrupt file makes libmseed warn once per bad record (dozens of lines);
    this says ``warning: <where>: N miniSEED warning(s), first: <message>;
    later ones of this <unit> are not shown`` instead, once per ``key``
    (default ``where``): ``said`` holds the keys already said. Said also when
    the read fails. Other warnings pass on unchanged.
    """
    from obspy.io.mseed import InternalMSEEDWarning

    key = where if key is None else key
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        mseed = [w for w in caught if issubclass(w.category, InternalMSEEDWarning) or
                 "mseed" in os.path.normpath(w.filename).split(os.sep)]
        for w in caught:
            if not any(w is m for m in mseed):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if mseed and key not in said:
            said.add(key)
            print(f"warning: {where}: {len(mseed)} miniSEED warning(s), first: "
                  f"{_one_line(mseed[0].message)}; later ones of this {unit} are not shown",
                  file=sys.stderr)


class WaveformFiles:
    """Waveform files (folder or glob) indexed by their headers, read by time span.

    The index holds, per (network, station), each trace's file, start and end
    (ObsPy reads the headers without the samples); :meth:`read` then reads
    only the files that overlap a span, and only that span of them (for
    miniSEED ObsPy finds the records by bisection). Files ObsPy cannot read
    (a README, the StationXML in the same folder) are skipped, one warning
    naming how many and the first. A file that reads with miniSEED warnings
    (corrupt records, skipped) is said once, on one line
    (:func:`mseed_warnings`).
    """

    def __init__(self, spec):
        from obspy import read

        self.spec = str(spec)
        self.where = f"the waveform files {self.spec}"
        self.index, unreadable, self.said = {}, [], set()
        for name in waveform_files(self.spec):
            try:
                with mseed_warnings(name, self.said):
                    stream = read(name, headonly=True)
            except Exception as err:   # ObsPy raises many types for a file it cannot parse
                unreadable.append(f"{name} ({type(err).__name__})")
                continue
            for tr in stream:
                self.index.setdefault((tr.stats.network, tr.stats.station), []).append(
                    (name, tr.stats.starttime, tr.stats.endtime))
        if unreadable:
            print(f"warning: skipped {len(unreadable)} file(s) ObsPy cannot read as waveforms, "
                  f"first: {unreadable[0]}", file=sys.stderr)

    def read(self, network, station, start, end):
        """The station's traces within ``start`` - ``end`` (every channel and location)."""
        from obspy import read

        entries = self.index.get((network, station), [])
        names = dict.fromkeys(name for name, first, last in entries
                              if first <= end and last >= start)
        traces = []
        for name in names:
            try:
                with mseed_warnings(name, self.said):
                    stream = read(name, starttime=start, endtime=end)
            except Exception as err:   # ObsPy raises many types for a file it cannot parse
                raise WaveformReadError(f"cannot read {start} - {end} of {name} "
                                        f"({type(err).__name__}: {_one_line(err)})") from None
            traces += [tr for tr in stream if tr.stats.npts and
                       (tr.stats.network, tr.stats.station) == (network, station)]
        return traces

    def no_data(self, network, station, window_start, window_end):
        """Why a window found no data: no files of the station, or the nearest data."""
        entries = self.index.get((network, station), [])
        if not entries:
            return f"no waveforms for this station in {self.where}"
        before = [last for _, first, last in entries if first <= window_start]
        after = [first for _, first, last in entries if last >= window_end]
        near = "; ".join(n for n in (f"data end at {max(before)}" if before else "",
                                     f"data start at {min(after)}" if after else "") if n)
        return (f"window {window_start} - {window_end} is outside the data of {network}."
                f"{station} in {self.where} ({near or 'no data around it'})")


class SDSArchive:
    """An SDS archive (``YEAR/NET/STA/CHAN.D/NET.STA.LOC.CHAN.D.YEAR.DOY``) read by time span
    through ObsPy's :class:`obspy.clients.filesystem.sds.Client`. miniSEED warnings are
    said on one line per station (the client does not name the file;
    :func:`mseed_warnings`)."""

    def __init__(self, root):
        from obspy.clients.filesystem.sds import Client

        self.root = check_sds_root(root)
        self.where = f"the SDS archive {self.root}"
        self.client = Client(self.root)
        self.said = set()

    def read(self, network, station, start, end):
        """The station's traces within ``start`` - ``end`` (every channel and location);
        pieces are not merged here (:func:`cut_window` merges as for files)."""
        try:
            with mseed_warnings(f"{network}.{station} in {self.where}, {start} - {end}",
                                self.said, key=(network, station), unit="station"):
                stream = self.client.get_waveforms(network, station, "*", "*", start, end,
                                                   merge=None)
        except Exception as err:   # ObsPy raises many types for a file it cannot parse
            raise WaveformReadError(f"cannot read {network}.{station} {start} - {end} from "
                                    f"{self.where} ({type(err).__name__}: {_one_line(err)})"
                                    ) from None
        return [tr for tr in stream if tr.stats.npts]

    def no_data(self, network, station, window_start, window_end):
        """Why a window found no data: no files of the station, or none for that time."""
        if not self.client.has_data(network, station, "*", "*"):
            return f"no waveforms for this station in {self.where}"
        return (f"window {window_start} - {window_end} is outside the data of {network}."
                f"{station} in {self.where} (no data around it)")


def check_sds_root(root):
    """``root`` (str) when it is a folder; else a one-line error naming it."""
    root = str(root)
    if not os.path.isdir(root):
        raise ValueError(f"--input_sds {root}: not a folder (the root of an SDS archive, "
                         "YEAR/NET/STA/CHAN.D/NET.STA.LOC.CHAN.D.YEAR.DOY)")
    return root


def check_waveform_options(input_waveforms=None, input_sds=None):
    """Exactly one of the two given, and ``input_sds`` a folder; else a one-line error."""
    if (input_waveforms is None) == (input_sds is None):
        raise ValueError("give exactly one of --input_waveforms (a folder or glob of waveform "
                         "files) and --input_sds (the root of an SDS archive)"
                         + ("" if input_waveforms is None else f"; got both: {input_waveforms} "
                            f"and {input_sds}"))
    if input_sds is not None:
        check_sds_root(input_sds)


def open_waveforms(input_waveforms=None, input_sds=None) -> WaveformSource:
    """The waveform source of the run: files (:class:`WaveformFiles`) or an SDS archive
    (:class:`SDSArchive`); exactly one of the two must be given."""
    check_waveform_options(input_waveforms, input_sds)
    return WaveformFiles(input_waveforms) if input_sds is None else SDSArchive(input_sds)


def read_spans(spans, max_gap_s=SHARED_READ_GAP_S, max_length_s=SHARED_READ_MAX_S):
    """Group time spans so that spans close in time share one read.

    ``spans``: (start, end, item) tuples of one station. Sorted by start,
    a span joins the group before it when it starts at most ``max_gap_s``
    after the group's end and the group stays within ``max_length_s``.

    Returns
    -------
    list of (start, end, list of item)
    """
    groups = []
    for start, end, item in sorted(spans, key=lambda s: s[0]):
        if groups and start - groups[-1][1] <= max_gap_s and \
                max(end, groups[-1][1]) - groups[-1][0] <= max_length_s:
            first, last, items = groups[-1]
            groups[-1] = (first, max(last, end), items + [item])
        else:
            groups.append((start, end, [item]))
    return groups

