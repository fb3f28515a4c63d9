"""Station metadata: coordinates and channel orientations, from StationXML or a CSV.

:func:`read_stations` reads any inventory ObsPy reads (StationXML) or a CSV
of coordinates into a :class:`Stations`, which answers where a station was
and how its channels were oriented at a pick's time.

Must not import keras: reading and checking the inputs needs no backend.
"""

from __future__ import annotations

import os

import pandas as pd

from utrans_loc.picks import PickError, _looks_like_csv, pick_label

STATION_COLUMNS = ("network", "station", "latitude", "longitude")


class Stations:
    """Station coordinates and channel orientations at a time.

    From an ObsPy Inventory (StationXML) or a coordinates table (CSV, no
    orientations: channels must then be E/N/Z).
    """

    def __init__(self, path, inventory=None, table=None):
        self.path, self.inventory, self.table = str(path), inventory, table

    def coordinates(self, network, station, time):
        """(latitude, longitude, elevation_m) of the station at ``time``; PickError if absent."""
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
        raise PickError(f"{pick_label(network, station, time)}: station not in the inventory "
                        f"{self.path}")

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
    ``network,station,latitude,longitude`` (optional ``elevation``, m)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"inventory file not found: {path}")
    if _looks_like_csv(path, "latitude"):
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in STATION_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: station CSV lacks column(s) {', '.join(missing)}")
        for col in ("network", "station"):
            table[col] = table[col].str.strip()
        if "elevation" not in table:
            table["elevation"] = "0"
        table["elevation"] = table["elevation"].replace("", "0")
        try:
            for col in ("latitude", "longitude", "elevation"):
                table[col] = table[col].replace("", "nan").astype(float)
        except ValueError as err:
            raise ValueError(f"{path}: station coordinates must be numbers ({err})") from None
        return Stations(path, table=table)
    from obspy import read_inventory

    try:
        inventory = read_inventory(path)
    except Exception as err:   # ObsPy raises many types for a file it cannot parse
        raise ValueError(f"{path}: neither StationXML nor a CSV with columns "
                         f"{', '.join(STATION_COLUMNS)} ({type(err).__name__}: {err})") from None
    return Stations(path, inventory=inventory)
