"""Velocity models: the travel times of the locator's multi-station origins.

:class:`HalfSpace` (``--vp``/``--vs``, straight rays) or :class:`LayeredModel`
(``--velocity_model``: 1-D layers whose first-arrival times are ObsPy TauP's,
on an interpolated table); :func:`velocity_model` picks one. Nothing here
imports Keras.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from scipy import interpolate

VP_KM_S, VS_KM_S = 6.0, 3.5
MAX_DEPTH_KM = 100.0
# ak135 below the user's layers: its upper mantle from this depth on.
_AK135_FROM_KM = 210.0
_PHASES = {"P": ["p", "P", "Pn", "Pg"], "S": ["s", "S", "Sn", "Sg"]}


class HalfSpace:
    """Homogeneous half-space: straight rays at ``vp`` / ``vs`` km/s.

    Distances are from the hypocentre to the station at its elevation.
    """

    def __init__(self, vp=VP_KM_S, vs=VS_KM_S):
        check_velocities(vp, vs, "--vp/--vs")
        self.velocity = {"P": float(vp), "S": float(vs)}
        self.description = f"homogeneous half-space, vp {vp:g} km/s, vs {vs:g} km/s, straight rays"

    def travel_time(self, phase, epicentral_km, depth_km, elevation_km=0.0):
        """Travel time (s) of ``phase`` ('P' or 'S'); arrays broadcast."""
        vertical = np.asarray(depth_km, float) + np.asarray(elevation_km, float)
        return np.hypot(epicentral_km, vertical) / self.velocity[phase]


class LayeredModel:
    """1-D layered model; first-arrival times from ObsPy TauP on a table.

    Parameters
    ----------
    layers : list of (depth_top_km, vp, vs)
        Layer tops increasing from 0; each layer's velocities hold down to the
        next top, the last down to 210 km, where ak135's mantle continues
        (TauP needs a whole Earth; local rays never go that deep).
    max_distance_km, max_depth_km : float
        Extent of the travel-time table.
    name : str
        Named in the description (the file it came from).

    Notes
    -----
    TauP's Earth is spherical and its station is at the surface (elevation
    ignored). The table's nodes are 2 km apart in distance to 20 km, 5 km to
    100 km and 10 km beyond; 2 km in depth to 40 km, 5 km below. Bilinear
    interpolation between them differs from TauP by less than ~0.05 s, half
    the default P pick error.
    """

    def __init__(self, layers, max_distance_km=300.0, max_depth_km=MAX_DEPTH_KM, name="layers"):
        from obspy.geodetics import kilometers2degrees
        from obspy.taup import TauPyModel
        from obspy.taup.taup_time import TauPTime
        from obspy.taup.taup_create import build_taup_model

        self.layers = check_layers(layers, name)
        self.description = (f"1-D layered model {name} ({len(self.layers)} layers: "
                            + "; ".join(f"{z:g} km vp {p:g} vs {s:g}" for z, p, s in self.layers)
                            + "), first arrivals by ObsPy TauP")
        with tempfile.TemporaryDirectory() as tmp:
            nd = os.path.join(tmp, "utrans_loc_model.nd")
            with open(nd, "w") as fh:
                fh.write(taup_nd_text(self.layers))
            build_taup_model(nd, output_folder=tmp, verbose=False)
            model = TauPyModel(os.path.join(tmp, "utrans_loc_model.npz"))
        self.distances = _nodes([(20.0, 2.0), (100.0, 5.0)], max_distance_km, 10.0)
        self.depths = _nodes([(40.0, 2.0)], max_depth_km, 5.0)
        table = {p: np.full((len(self.distances), len(self.depths)), np.nan) for p in _PHASES}
        for j, depth in enumerate(self.depths):
            # One TauPTime per depth: its phases are built once (the costly part)
            # and then timed at every distance.
            timer = TauPTime(model.model, _PHASES["P"] + _PHASES["S"], float(depth), 0.0)
            timer.run()
            for i, distance in enumerate(self.distances):
                timer.calc_time(kilometers2degrees(float(distance)))
                for phase, names in _PHASES.items():
                    times = [a.time for a in timer.arrivals if a.name in names]
                    if times:
                        table[phase][i, j] = min(times)
        for phase, values in table.items():
            if np.isnan(values).any():
                raise ValueError(f"{name}: TauP finds no {phase} arrival for some distances/"
                                 "depths of the table; check the layers")
        self._interp = {p: interpolate.RegularGridInterpolator(
            (self.distances, self.depths), v, bounds_error=False, fill_value=None)
            for p, v in table.items()}

    @classmethod
    def from_file(cls, path, **kwargs):
        """The model of a ``depth_top_km, vp, vs`` file (:func:`read_layers`)."""
        return cls(read_layers(path), name=os.path.basename(path), **kwargs)

    def travel_time(self, phase, epicentral_km, depth_km, elevation_km=0.0):
        """Travel time (s) of ``phase``; depth clipped to the table, elevation ignored."""
        d, z = np.broadcast_arrays(np.asarray(epicentral_km, float), np.asarray(depth_km, float))
        z = np.clip(z, 0.0, self.depths[-1])
        d = np.clip(d, 0.0, None)
        return self._interp[phase](np.stack([d.ravel(), z.ravel()], axis=-1)).reshape(d.shape)


def _nodes(steps, stop, last_step):
    out, start = [], 0.0
    for end, step in steps:
        end = min(end, stop)
        out.append(np.arange(start, end, step))
        start = end
    out.append(np.arange(start, stop + last_step / 2, last_step))
    return np.unique(np.concatenate(out))


def check_velocities(vp, vs, where):
    if not (np.isfinite(vp) and np.isfinite(vs) and vp > 0 and vs > 0):
        raise ValueError(f"{where}: velocities must be positive, got vp {vp}, vs {vs}")
    if vs >= vp:
        raise ValueError(f"{where}: vs must be below vp, got vp {vp}, vs {vs}")


def read_layers(path):
    """Layers of a velocity model file: one ``depth_top_km, vp, vs`` line per layer.

    Commas or spaces separate the numbers; ``#`` starts a comment; a header
    line of words is allowed first. Errors name the file and the line.
    """
    layers = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            text = line.split("#", 1)[0].replace(",", " ").split()
            if not text:
                continue
            try:
                values = [float(v) for v in text]
            except ValueError:
                if not layers and all(not _is_number(v) for v in text):
                    continue   # a header
                raise ValueError(f"{path}, line {number}: expected 'depth_top_km, vp, vs' "
                                 f"numbers, got {line.strip()!r}") from None
            if len(values) != 3:
                raise ValueError(f"{path}, line {number}: expected 3 numbers (depth_top_km, "
                                 f"vp, vs), got {len(values)}: {line.strip()!r}")
            layers.append((tuple(values), number))
    if not layers:
        raise ValueError(f"{path}: no layers (expected 'depth_top_km, vp, vs' lines)")
    for (values, number) in layers:
        check_velocities(values[1], values[2], f"{path}, line {number}")
    return check_layers([v for v, _ in layers], path, [n for _, n in layers])


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_layers(layers, name, lines=None):
    """Layers as float tuples, checked: first top at 0, tops increasing, velocities sane."""
    layers = [tuple(float(v) for v in layer) for layer in layers]
    lines = lines or list(range(1, len(layers) + 1))
    where = [f"{name}, line {n}" for n in lines]
    if not layers or layers[0][0] != 0.0:
        raise ValueError(f"{where[0] if layers else name}: the first layer must start at "
                         "depth 0 km")
    for k, (top, vp, vs) in enumerate(layers):
        check_velocities(vp, vs, where[k])
        if k and not top > layers[k - 1][0]:
            raise ValueError(f"{where[k]}: layer tops must increase with depth, {top:g} km "
                             f"after {layers[k - 1][0]:g} km")
        if top >= _AK135_FROM_KM:
            raise ValueError(f"{where[k]}: layer top {top:g} km; a crustal model ends above "
                             f"{_AK135_FROM_KM:g} km")
    return layers


def taup_nd_text(layers):
    """A TauP ``.nd`` model: the layers, then ak135 from 210 km down.

    TauP names the top of the first layer with vp >= 7.6 km/s (else the
    210 km boundary) the mantle, so Pn/Sn are the head waves along it.
    """
    import obspy

    out, mantle = [], False
    for k, (top, vp, vs) in enumerate(layers):
        bottom = layers[k + 1][0] if k + 1 < len(layers) else _AK135_FROM_KM
        if vp >= 7.6 and not mantle and k > 0:
            out.append("mantle")
            mantle = True
        rho = 1.74 * vp ** 0.25   # Gardner's density; travel times do not use it
        out += [f"{top:.4f} {vp:.4f} {vs:.4f} {rho:.4f}", f"{bottom:.4f} {vp:.4f} {vs:.4f} {rho:.4f}"]
    if not mantle:
        out.append("mantle")
    ak135 = os.path.join(os.path.dirname(obspy.__file__), "taup", "data", "ak135f_no_mud.nd")
    with open(ak135) as fh:
        lines = fh.read().splitlines()
    started = False
    for line in lines:
        parts = line.split()
        if parts and _is_number(parts[0]):
            started = started or float(parts[0]) >= _AK135_FROM_KM
            if started:
                out.append(" ".join(parts[:4]))
        elif started and parts:
            out.append(line.strip())
    # At 210 km: the last layer's bottom, then ak135's two (equal) 210 km lines: TauP
    # reads repeated depths as a discontinuity.
    return "\n".join(out) + "\n"


def velocity_model(vp=VP_KM_S, vs=VS_KM_S, path=None):
    """``path``'s layered model when given, else the half-space of ``vp``/``vs``."""
    return LayeredModel.from_file(path) if path else HalfSpace(vp, vs)
