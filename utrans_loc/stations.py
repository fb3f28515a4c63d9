"""Station metadata: coordinates and channel orientations, from StationXML or a CSV.

:func:`read_stations` reads any inventory ObsPy reads (StationXML) or a CSV
of coordinates into a :class:`Stations`, which answers where a station was
and how its channels were oriented at a pick's time.

Must not import keras: reading and checking the inputs needs no backend.
"""

from __future__ import annotations

import math
import os

import pandas as pd

from utrans_loc.picks import PickError, _csv_rows, _looks_like_csv, pick_label

STATION_COLUMNS = ("network", "station", "latitude", "longitude")


class Stations:
    """Station coordinates and channel orientations at a time.

    From an ObsPy Inventory (StationXML) or a coordinates table (CSV, no
    orientations: channels must then be E/N/Z).
    """

    def __init__(self, path, inventory=None, table=None):
        self.path, self.inventory, self.table = str(path), inventory, table

    def coordinates(self, network, station, time):
        """(latitude, longitude, elevation_m) of the station at ``time``; PickError if absent.

        A station of the inventory whose epochs (or its network's, or its
        channels') do not cover ``time`` is said to be so, with the epochs.
        """
        if self.table is not None:
            rows = self.table[(self.table["network"] == network) &
                              (self.table["station"] == station)]
            if len(rows):
                row = rows.iloc[0]
                return float(row["latitude"]), float(row["longitude"]), float(row["elevation"])
        else:
            for net in self.inventory.select(network=network, station=station, time=time):
                for sta in net.stations:
                    if net.code == network and sta.code == station:
                        return float(sta.latitude), float(sta.longitude), float(sta.elevation or 0)
            why = self._not_at(network, station, time)
            if why:
                raise PickError(f"{pick_label(network, station, time)}: station in the inventory "
                                f"{self.path} but {why} the pick time")
        raise PickError(f"{pick_label(network, station, time)}: station not in the inventory "
                        f"{self.path}")

    def _not_at(self, network, station, time):
        """Which epochs of an inventory's station miss ``time`` ('its epochs (a - b) do not
        cover'), or None where the inventory has no such station."""
        networks, stations, channels = [], [], []
        for net in self.inventory.select(network=network, station=station):
            for sta in net.stations:
                if net.code != network or sta.code != station:
                    continue
                if not net.is_active(time=time):
                    networks.append(net)
                elif not sta.is_active(time=time):
                    stations.append(sta)
                else:
                    channels += sta.channels
        for owner, items in (("its channels'", channels), ("its", stations),
                             (f"network {network}'s", networks)):
            spans = list(dict.fromkeys(f"{item.start_date or '(no start date)'} - "
                                       f"{item.end_date or '(no end date)'}" for item in items))
            if spans:
                plural = len(spans) > 1
                return (f"{owner} epoch{'s' if plural else ''} ({'; '.join(spans)}) "
                        f"do{'' if plural else 'es'} not cover")
        return None

    def codes(self):
        """{station code: {network code: its location codes (a set), or None for a CSV
        inventory, which lists none}}: what a pick file's station id is matched against
        when it leaves out the network or could name a location or a channel
        (:mod:`utrans_loc.pick_formats`). Made once."""
        if getattr(self, "_codes", None) is None:
            codes = {}
            if self.table is not None:
                for network, station in zip(self.table["network"], self.table["station"]):
                    codes.setdefault(str(station), {})[str(network)] = None
            else:
                for net in self.inventory:
                    for sta in net.stations:
                        places = codes.setdefault(sta.code, {}).setdefault(net.code, set())
                        places.update(cha.location_code or "" for cha in sta.channels)
            self._codes = codes
        return self._codes

    def orientation(self, seed_id, time):
        """(azimuth, dip) in degrees of a channel at ``time``; None where unknown."""
        if self.inventory is None:
            return None
        network, station, location, channel = seed_id.split(".")
        for net in self.inventory.select(network=network, station=station, location=location,
                                         channel=channel, time=time):
            for sta in net.stations:
                for cha in sta.channels:
                    if (cha.location_code, cha.code) == (location, channel) and \
                            cha.azimuth is not None and cha.dip is not None:
                        return float(cha.azimuth), float(cha.dip)
        return None


def read_stations(path):
    """Station metadata: StationXML (any inventory ObsPy reads) or a CSV
    ``network,station,latitude,longitude`` (optional ``elevation``, m; empty: 0).

    A CSV row without a station code, or whose latitude, longitude or
    elevation is not a number (blank, text, NaN; latitude outside [-90, 90],
    longitude outside [-180, 360]), and a StationXML station without a
    latitude or longitude refuse the file: ValueError naming the file, the
    line and the station.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"inventory file not found: {path}")
    if _looks_like_csv(path, "latitude"):
        return Stations(path, table=_station_table(path))
    from obspy import read_inventory

    try:
        inventory = read_inventory(path)
    except Exception as err:   # ObsPy raises many types for a file it cannot parse
        raise ValueError(_without_coordinates(path) or (
            f"{path}: neither StationXML nor a CSV with columns {', '.join(STATION_COLUMNS)} "
            f"({type(err).__name__}: {err})")) from None
    return Stations(path, inventory=inventory)


def _station_table(path):
    """The CSV inventory as a table (coordinates float); ValueError naming a bad row's line."""
    header, rows = _csv_rows(path)
    missing = [c for c in STATION_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: station CSV lacks column(s) {', '.join(missing)}")
    column = {name: i for i, name in reversed(list(enumerate(header)))}   # first one wins
    records = []
    for line, fields in rows:
        if len(fields) > len(header):
            raise ValueError(f"{path}, line {line}: {len(fields)} fields where the header has "
                             f"{len(header)} (a comma inside a value: a decimal comma?)")
        fields = [f.strip() for f in fields] + [""] * (len(header) - len(fields))
        record = {name: fields[i] for name, i in column.items()}
        where = f"{path}, line {line}: station {record['network']}.{record['station']}"
        if not record["station"]:
            raise ValueError(f"{path}, line {line}: no station code")
        record["elevation"] = record.get("elevation") or "0"
        for name, low, high in (("latitude", -90, 90), ("longitude", -180, 360),
                                ("elevation", -math.inf, math.inf)):
            text = record[name]
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and low <= value <= high):
                limits = f" in [{low}, {high}]" if math.isfinite(low) else " (m; empty: 0)"
                raise ValueError(f"{where}: {name} {text!r} is not a number{limits}")
            record[name] = value
        records.append(record)
    columns = list(dict.fromkeys(list(column) + ["elevation"]))
    return pd.DataFrame(records, columns=columns)


def _without_coordinates(path):
    """'<path>, line N: station NET.STA has no Latitude' for the first Station of a
    StationXML file without a usable latitude or longitude; None where there is none
    (or the file is not XML)."""
    from lxml import etree

    try:
        tree = etree.parse(path)
    except Exception:   # not XML: the caller's message says what the file is not
        return None
    for sta in tree.iter("{*}Station"):
        parent = sta.getparent()
        code = f"{parent.get('code') if parent is not None else ''}.{sta.get('code')}"
        for tag in ("Latitude", "Longitude"):
            element = sta.find(f"{{*}}{tag}")
            text = (element.text or "").strip() if element is not None else ""
            try:
                usable = math.isfinite(float(text))
            except ValueError:
                usable = False
            if not usable:
                what = f"has {tag} {text!r}, not a number" if text else f"has no {tag}"
                return f"{path}, line {sta.sourceline}: station {code} {what}"
    return None
