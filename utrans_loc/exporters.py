"""Writers of waveform, station and pick files: STEAD traces as files, SDS archives.

The worked example of the README, the tests, the synthetic data set and the
benchmarks make their locator inputs with these: :func:`export_stead`,
:func:`write_enz_mseed`, :func:`write_sds`, :func:`write_enz_inventory`.

Must not import keras.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from utrans_loc.waveforms import SAMPLING_RATE


def export_stead(stead_hdf5, out_dir, trace_names=None, exact_windows=True):
    """Write STEAD traces as miniSEED files, a StationXML and a picks CSV.

    One miniSEED file per trace (``<trace_name>.mseed``: channels
    ``<receiver_type>E/N/Z``, location code empty, float32 samples as
    stored, start time ``trace_start_time``), ``stations.xml`` (each
    station's coordinates and E/N/Z channels, azimuth 90/0/0, dip 0/0/-90) and
    ``picks.csv`` (``network, station, p_time, event_id``: the P pick at
    ``p_arrival_sample`` / 100 s after the trace start, the STEAD
    ``source_id``).

    Parameters
    ----------
    stead_hdf5 : str
        A STEAD file (``merge.hdf5``, ``chunkN.hdf5`` or the older layout).
    out_dir : str
        A folder that does not exist yet.
    trace_names : sequence of str, optional
        The traces to write (default: every earthquake trace in the file).
    exact_windows : bool
        Add a ``p_position_s`` column (``p_arrival_sample`` / 100), so the
        locator cuts exactly the STEAD window.

    Returns
    -------
    dict
        ``waveforms`` (folder), ``inventory``, ``picks`` (paths).
    """
    from obspy import UTCDateTime

    from utrans_loc import files
    from utrans_loc.traces import H5Reader, LAYOUT_COLLECTED, STEAD_OLD_GROUPS

    reader = H5Reader(stead_hdf5)
    try:
        if reader.layout == LAYOUT_COLLECTED:
            raise ValueError(f"{stead_hdf5}: not a STEAD file (no data/ or earthquake/local/ "
                             "group); DataCollected files lack the trace start times")
        if trace_names is None:
            group = reader.file["data" if "data" in reader.file else STEAD_OLD_GROUPS[0]]
            trace_names = [n for n in group if _text(group[n].attrs.get("trace_category"))
                           != "noise"]
        files.check_new_output_dir(out_dir, hint="choose another folder")
        wave_dir = os.path.join(out_dir, "waveforms")
        os.makedirs(wave_dir)
        picks, stations = [], {}
        for name in trace_names:
            node = reader.group(name)
            attrs = node.attrs
            net, sta = _text(attrs.get("network_code")), _text(attrs.get("receiver_code"))
            band = _text(attrs.get("receiver_type"))
            start = UTCDateTime(_text(attrs.get("trace_start_time")))
            data = np.asarray(node)
            write_enz_mseed(os.path.join(wave_dir, f"{name}.mseed"), data, net, sta, band, start)
            p_s = float(np.asarray(attrs["p_arrival_sample"]).ravel()[0]) / SAMPLING_RATE
            pick = {"network": net, "station": sta,
                    "p_time": (start + p_s).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "event_id": _text(attrs.get("source_id"))}
            if exact_windows:
                pick["p_position_s"] = p_s
            picks.append(pick)
            stations.setdefault((net, sta), (float(attrs["receiver_latitude"]),
                                             float(attrs["receiver_longitude"]),
                                             float(attrs.get("receiver_elevation_m", 0.0)),
                                             set()))[3].add(band)
    finally:
        reader.close()
    inventory_path = os.path.join(out_dir, "stations.xml")
    write_enz_inventory(stations, inventory_path, "utrans_loc.exporters.export_stead")
    picks_path = os.path.join(out_dir, "picks.csv")
    files.atomic_write(picks_path, lambda fh: pd.DataFrame(picks).to_csv(fh, index=False))
    return {"waveforms": wave_dir, "inventory": inventory_path, "picks": picks_path}


def write_enz_mseed(path, data, network, station, band, start):
    """One miniSEED file of a (samples, 3) E/N/Z array at 100 Hz from ``start``
    (channels ``<band>E/N/Z``, empty location code), written atomically."""
    from obspy import Stream, Trace

    from utrans_loc import files

    # astype gives the '=' (native) byte order: ObsPy 1.5's miniSEED writer
    # byte-swaps any other mark, and h5py marks little-endian data '<'.
    traces = [Trace(np.asarray(data)[:, i].astype(np.float32), header={
        "network": network, "station": station, "location": "", "channel": band + comp,
        "sampling_rate": SAMPLING_RATE, "starttime": start})
        for i, comp in enumerate("ENZ")]
    files.atomic_save(path, lambda tmp: Stream(traces).write(tmp, format="MSEED"))


def write_sds(traces, root, **write_options):
    """Write traces as an SDS archive under ``root`` (a new folder), one miniSEED file
    per channel and day (ObsPy's ``Client.FMTSTR`` layout, type D).

    Traces crossing midnight are split there at the sample (no sample written
    twice); the pieces of one channel and day go to one file.
    ``write_options`` go to ObsPy's miniSEED writer (e.g. ``encoding``,
    ``reclen``). Returns the paths written.
    """
    from obspy import Stream, UTCDateTime
    from obspy.clients.filesystem.sds import Client

    from utrans_loc import files

    files.check_new_output_dir(str(root), hint="choose another folder")
    pieces = {}
    for tr in traces:
        start, rate, n = tr.stats.starttime, tr.stats.sampling_rate, tr.stats.npts
        first = 0
        while first < n:
            t = start + first / rate
            midnight = UTCDateTime(t.year, t.month, t.day) + 86400
            last = min(n, int(math.ceil(round((midnight - start) * rate, 6))))
            piece = tr.__class__(tr.data[first:last], header={
                key: tr.stats[key] for key in ("network", "station", "location", "channel",
                                               "sampling_rate", "mseed") if key in tr.stats})
            piece.stats.starttime = t
            name = Client.FMTSTR.format(
                network=tr.stats.network, station=tr.stats.station, location=tr.stats.location,
                channel=tr.stats.channel, sds_type="D", year=t.year, doy=t.julday)
            pieces.setdefault(os.path.join(str(root), name), []).append(piece)
            first = last
    for path, parts in pieces.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.atomic_save(path, lambda tmp, parts=parts: Stream(parts).write(
            tmp, format="MSEED", **write_options))
    return sorted(pieces)


def write_enz_inventory(stations, path, source):
    """StationXML of ``{(network, station): (lat, lon, elevation_m, bands)}``, each
    band with E/N/Z channels (azimuth 90/0/0, dip 0/0/-90), written atomically."""
    from obspy.core.inventory import Channel, Inventory, Network, Station

    from utrans_loc import files

    networks = {}
    for (net, sta), (lat, lon, elev, bands) in sorted(stations.items()):
        channels = [Channel(code=band + comp, location_code="", latitude=lat, longitude=lon,
                            elevation=elev, depth=0.0, azimuth=azimuth, dip=dip,
                            sample_rate=SAMPLING_RATE)
                    for band in sorted(bands)
                    for comp, azimuth, dip in (("E", 90.0, 0.0), ("N", 0.0, 0.0),
                                               ("Z", 0.0, -90.0))]
        networks.setdefault(net, []).append(Station(code=sta, latitude=lat, longitude=lon,
                                                    elevation=elev, channels=channels))
    inventory = Inventory(networks=[Network(code=net, stations=s) for net, s in networks.items()],
                          source=source)
    files.atomic_save(path, lambda tmp: inventory.write(tmp, format="STATIONXML"))


def _text(value):
    """An HDF5 text attribute as str ('' when absent)."""
    if isinstance(value, bytes):
        value = value.decode("utf8", "replace")
    return "" if value is None else str(value).strip()
