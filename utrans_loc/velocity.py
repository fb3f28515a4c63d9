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
# Velocities accepted (km/s, inclusive): from unconsolidated near-surface
# sediment to the deepest mantle; anything >= 100 is taken for m/s.
VP_RANGE_KM_S = (1.0, 15.0)
VS_RANGE_KM_S = (0.3, 10.0)
# ak135 below the user's layers: its upper mantle from this depth on.
_AK135_FROM_KM = 210.0
_PHASES = {"P": ["p", "P", "Pn", "Pg"], "S": ["s", "S", "Sn", "Sg"]}
_EARTH_RADIUS_KM = 6371.0   # TauP's and obspy.geodetics' kilometres per degree


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
        Named in the description and in errors (the file it came from).

    Notes
    -----
    TauP's Earth is spherical and its station is at the surface (elevation
    ignored). The table's nodes are 2 km apart in distance to 20 km, 5 km to
    100 km and 10 km beyond; 2 km in depth to 40 km, 5 km below. Between
    them a bicubic interpolating spline (scipy ``RectBivariateSpline``): its
    times and derivatives are continuous, so a misfit has no kinks at the
    nodes to trap an optimiser (bilinear interpolation put 13-22 % of
    solution depths exactly on a node); beyond the table's last distance the
    time continues along the spline's slope there. Table nodes where TauP
    misses the first arrival are filled or corrected by :func:`fermat_bound`
    (:attr:`filled` lists what was changed).
    """

    def __init__(self, layers, max_distance_km=300.0, max_depth_km=MAX_DEPTH_KM, name="layers"):
        self.layers = check_layers(layers, name)
        self.distances = _nodes([(20.0, 2.0), (100.0, 5.0)], max_distance_km, 10.0)
        self.depths = _nodes([(40.0, 2.0)], max_depth_km, 5.0)
        table = taup_table(self.layers, self.distances, self.depths)
        self.filled = fermat_bound(table, self.distances, self.depths, self.layers, name)
        self.description = (f"1-D layered model {name} ({len(self.layers)} layers: "
                            + "; ".join(f"{z:g} km vp {p:g} vs {s:g}" for z, p, s in self.layers)
                            + "), first arrivals by ObsPy TauP"
                            + "".join(f"; {f}" for f in self.filled))
        self.table = table
        kx, ky = min(3, len(self.distances) - 1), min(3, len(self.depths) - 1)
        self._spline = {p: interpolate.RectBivariateSpline(self.distances, self.depths, v,
                                                           kx=kx, ky=ky)
                        for p, v in table.items()}

    @classmethod
    def from_file(cls, path, **kwargs):
        """The model of a ``depth_top_km, vp, vs`` file (:func:`read_layers`)."""
        return cls(read_layers(path), name=str(path), **kwargs)

    def travel_time(self, phase, epicentral_km, depth_km, elevation_km=0.0):
        """Travel time (s) of ``phase``; depth clipped to the table, elevation ignored."""
        d, z = np.broadcast_arrays(np.asarray(epicentral_km, float), np.asarray(depth_km, float))
        shape = d.shape
        d, z = np.clip(d.ravel(), 0.0, None), np.clip(z.ravel(), 0.0, self.depths[-1])
        spline, last = self._spline[phase], self.distances[-1]
        inside = np.minimum(d, last)
        t = spline.ev(inside, z)
        beyond = d > last
        if beyond.any():
            t[beyond] += (d[beyond] - last) * spline.ev(inside[beyond], z[beyond], dx=1)
        return t.reshape(shape)


def taup_table(layers, distances, depths):
    """TauP's first-arrival P and S times (s) of ``layers`` at every (distance, depth) node.

    ``{'P': array, 'S': array}`` of shape (len(distances), len(depths)); NaN
    where TauP finds no arrival of the phase.
    """
    from obspy.geodetics import kilometers2degrees
    from obspy.taup import TauPyModel
    from obspy.taup.taup_create import build_taup_model
    from obspy.taup.taup_time import TauPTime

    with tempfile.TemporaryDirectory() as tmp:
        nd = os.path.join(tmp, "utrans_loc_model.nd")
        with open(nd, "w") as fh:
            fh.write(taup_nd_text(layers))
        build_taup_model(nd, output_folder=tmp, verbose=False)
        model = TauPyModel(os.path.join(tmp, "utrans_loc_model.npz"))
    table = {p: np.full((len(distances), len(depths)), np.nan) for p in _PHASES}
    for j, depth in enumerate(depths):
        # One TauPTime per depth: its phases are built once (the costly part)
        # and then timed at every distance.
        timer = TauPTime(model.model, _PHASES["P"] + _PHASES["S"], float(depth), 0.0)
        timer.run()
        for i, distance in enumerate(distances):
            timer.calc_time(kilometers2degrees(float(distance)))
            for phase, names in _PHASES.items():
                times = [a.time for a in timer.arrivals if a.name in names]
                if times:
                    table[phase][i, j] = min(times)
    return table


def fermat_bound(table, distances, depths, layers, name):
    """Lower, in place, every node of TauP's table to the bound its neighbours set.

    TauP samples ray parameters, not rays, and misses some: for a source a
    little below the top of a constant-velocity layer over slower rock (a
    mantle lid over a low-velocity zone, an upper crust over a crustal one)
    its down-going branch starts beyond the distance where the up-going one
    ends. In between it gives a later phase as the first arrival (1.0 s late
    for P at 2 km depth, 160-180 km, in the crustal LVZ of the tests) or no
    arrival at all (NaN; 36-40 km deep beyond 160 km under the mantle LVZ).

    By Fermat's principle (and reciprocity) a first arrival at a source
    position is no later than one at a neighbouring position plus the time of
    any path between the two: along distance at the node's depth, at that
    depth's velocity (the faster one on a layer top) over the arc of the
    segment; along depth, the vertical time through the layers between them.
    Sweeping those bounds until nothing changes fills such nodes with the
    direct arrival TauP missed (checked against TauP for the same layers
    without the LVZ: within 0.002 s) and leaves TauP's right times alone.
    Below the layers (ak135, 210 km down) nothing is bounded.

    Returns lines describing what was filled or lowered by more than 0.01 s.
    A phase left without an arrival at some node (no neighbour with one) is
    refused, naming ``name``, the phase and the depths and distances.
    """
    distances, depths = np.asarray(distances, float), np.asarray(depths, float)
    notes = []
    for phase, values in table.items():
        column = 1 if phase == "P" else 2
        tops = np.array([layer[0] for layer in layers] + [_AK135_FROM_KM])
        v = np.array([layer[column] for layer in layers])
        k = np.clip(np.searchsorted(tops, depths, side="right") - 1, 0, len(v) - 1)
        faster = np.where(np.isin(depths, tops[1:-1]), np.maximum(v[k], v[np.maximum(k - 1, 0)]),
                          v[k])
        inside = depths < _AK135_FROM_KM
        along = np.where(inside, (_EARTH_RADIUS_KM - depths) / _EARTH_RADIUS_KM / faster, np.inf)
        slowness = np.array([np.sum(np.clip(np.minimum(z, tops[1:]) - tops[:-1], 0.0, None) / v)
                             for z in np.minimum(depths, _AK135_FROM_KM)])
        down = np.where(inside[1:], np.diff(slowness), np.inf)
        step = np.diff(distances)
        before = values.copy()
        t = np.where(np.isfinite(values), values, np.inf)
        while True:
            old = t.copy()
            for i in range(1, len(distances)):
                t[i] = np.minimum(t[i], t[i - 1] + step[i - 1] * along)
            for i in range(len(distances) - 2, -1, -1):
                t[i] = np.minimum(t[i], t[i + 1] + step[i] * along)
            for j in range(1, len(depths)):
                t[:, j] = np.minimum(t[:, j], t[:, j - 1] + down[j - 1])
            for j in range(len(depths) - 2, -1, -1):
                t[:, j] = np.minimum(t[:, j], t[:, j + 1] + down[j])
            if np.array_equal(old, t):
                break
        missing = ~np.isfinite(t)
        if missing.any():
            i, j = np.nonzero(missing)
            raise ValueError(f"{name}: TauP finds no first {phase} arrival at depths "
                             f"{_ranges(depths[np.unique(j)])} km, epicentral distances "
                             f"{_ranges(distances[np.unique(i)])} km; check the layers")
        values[...] = t
        for label, where in (("filled", ~np.isfinite(before)),
                             ("lowered", np.isfinite(before) & (before - t > 0.01))):
            if where.any():
                i, j = np.nonzero(where)
                extra = (f" (by up to {np.max((before - t)[where]):.2f} s)"
                         if label == "lowered" else "")
                notes.append(f"{phase} {label}{extra} at {where.sum()} table node(s), depths "
                             f"{_ranges(depths[np.unique(j)])} km, distances "
                             f"{_ranges(distances[np.unique(i)])} km, where TauP missed the "
                             "direct arrival")
    return notes


def _ranges(values):
    return f"{values[0]:g}-{values[-1]:g}" if len(values) > 1 else f"{values[0]:g}"


def _nodes(steps, stop, last_step):
    out, start = [], 0.0
    for end, step in steps:
        end = min(end, stop)
        out.append(np.arange(start, end, step))
        start = end
    out.append(np.arange(start, stop + last_step / 2, last_step))
    return np.unique(np.concatenate(out))


def check_velocities(vp, vs, where):
    """Refuse velocities that are not km/s of rock: non-positive, m/s, out of range, vs >= vp.

    ``where`` (the option or the file and line) starts the message.
    """
    if not (np.isfinite(vp) and np.isfinite(vs) and vp > 0 and vs > 0):
        raise ValueError(f"{where}: velocities must be positive, got vp {vp}, vs {vs}")
    for label, value, (low, high) in (("vp", vp, VP_RANGE_KM_S), ("vs", vs, VS_RANGE_KM_S)):
        if value >= 100:
            raise ValueError(f"{where}: {label} {value:g} looks like m/s; velocities are in km/s "
                             f"({label} {value / 1000:g}?)")
        if not low <= value <= high:
            raise ValueError(f"{where}: {label} {value:g} km/s is outside {low:g}-{high:g} km/s, "
                             "the range of crustal and mantle rock")
    if vs >= vp:
        raise ValueError(f"{where}: vs must be below vp, got vp {vp}, vs {vs}")


def read_layers(path):
    """Layers of a velocity model file: one ``depth_top_km, vp, vs`` line per layer.

    Commas or spaces separate the numbers; ``#`` starts a comment; a header
    line of words is allowed first. Errors name the file and the line.

    A third column of vp/vs ratios instead of vs is refused (:func:`check_ratio_column`).
    """
    layers, header = [], None
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            text = line.split("#", 1)[0].replace(",", " ").split()
            if not text:
                continue
            try:
                values = [float(v) for v in text]
            except ValueError:
                if not layers and all(not _is_number(v) for v in text):
                    header = (line.split("#", 1)[0], number)
                    continue
                raise ValueError(f"{path}, line {number}: expected 'depth_top_km, vp, vs' "
                                 f"numbers, got {line.strip()!r}") from None
            if len(values) != 3:
                raise ValueError(f"{path}, line {number}: expected 3 numbers (depth_top_km, "
                                 f"vp, vs), got {len(values)}: {line.strip()!r}")
            layers.append((tuple(values), number))
    if not layers:
        raise ValueError(f"{path}: no layers (expected 'depth_top_km, vp, vs' lines)")
    check_ratio_column(path, header, layers)
    for (values, number) in layers:
        check_velocities(values[1], values[2], f"{path}, line {number}")
    return check_layers([v for v, _ in layers], path, [n for _, n in layers])


def _ratio_name(name):
    return any(word in name for word in ("vpvs", "ratio", "poisson"))


def check_ratio_column(path, header, layers):
    """Refuse a layers file whose third column is a vp/vs ratio, not vs.

    ``header`` is ``(text, line number)`` or None; ``layers`` is a list of
    ``((depth, vp, third), line number)``. Two rules:

    * a header that names a ratio (``vpvs``, ``vp/vs``, ``vp_vs``, ``ratio``,
      ``poisson``) and no vs column (a name with ``vs`` in it that is not a
      ratio): the reliable rule;
    * without a header, every third value within 1.4-2.1 (the vp/vs of rock)
      and, read as vs, some layer with vp/vs >= 2.5 (a Poisson's ratio of
      0.4, which crustal rock with such a vs does not have; a misread ratio
      gives vp / 1.73, e.g. 3.5 at vp 6). Real shallow models can have vs
      between 1.4 and 2.1 km/s, but not in every layer together with such a
      vp, so a genuine file is not refused; a ratio file whose layers are all
      slow (vp < 3.5 km/s) or whose ratios leave 1.4-2.1 passes this rule.
    """
    if header is not None:
        text, number = header
        sep = "," if "," in text else None
        names = ["".join(c for c in n.lower() if c.isalnum()) for n in text.split(sep)]
        names = [n for n in names if n]
        if any(_ratio_name(n) for n in names) and not any(
                "vs" in n and not _ratio_name(n) for n in names):
            raise ValueError(f"{path}, line {number}: the header {text.strip()!r} names a vp/vs "
                             "ratio, not vs; the file needs 'depth_top_km, vp, vs' (km/s) "
                             "columns (vs = vp / ratio)")
        return
    thirds = np.array([v[2] for v, _ in layers])
    vp = np.array([v[1] for v, _ in layers])
    k = int(np.argmax(vp / thirds))
    if np.all((thirds >= 1.4) & (thirds <= 2.1)) and vp[k] / thirds[k] >= 2.5:
        raise ValueError(
            f"{path}, line {layers[k][1]}: the third column looks like a vp/vs ratio (every "
            f"value within 1.4-2.1), not vs: read as vs, vp {vp[k]:g} and vs {thirds[k]:g} km/s "
            f"give vp/vs {vp[k] / thirds[k]:.2f}; the file needs 'depth_top_km, vp, vs' (km/s) "
            "columns (vs = vp / ratio)")


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


_BUILT = {}


def check_velocity_model(vp=VP_KM_S, vs=VS_KM_S, path=None):
    """The run's travel-time model, built (and so checked) before any work.

    As :func:`velocity_model`, with ``--vp``/``--vs`` checked even when a
    layers file is given; a layered model's TauP table (seconds to build)
    is built here, so a model TauP cannot time fails before the first
    window is read. The last model built is kept: a second call with the
    same arguments (and the file's text unchanged) returns it.
    """
    check_velocities(vp, vs, "--vp/--vs")
    key = (float(vp), float(vs), None)
    if path is not None:
        with open(path, "rb") as fh:
            key = (float(vp), float(vs), os.path.abspath(path), fh.read())
    if key not in _BUILT:
        model = velocity_model(vp, vs, path)
        _BUILT.clear()
        _BUILT[key] = model
    return _BUILT[key]
