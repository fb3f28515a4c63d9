"""Figures: training curves and the evaluation figures of the reader.

The only module that imports matplotlib (headless, Agg). Every figure is
written atomically (:mod:`utrans_loc.files`).
"""
import os

import numpy as np

from utrans_loc.files import atomic_write
from utrans_loc.metrics import QUANTITIES


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')  # headless: no display on clusters / CI
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    """Save a figure atomically and close it."""
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format='png', dpi=120, bbox_inches='tight'), mode='wb')
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
    return path


def _scatter(plt, truth, pred, std, label, path):
    fig, ax = plt.subplots(figsize=(5, 5))
    if std is not None:
        ax.errorbar(truth, pred, yerr=std, fmt='none', ecolor='0.7', lw=0.5, zorder=1)
    ax.scatter(truth, pred, s=4, alpha=0.5, zorder=2)
    lo = np.nanmin([np.nanmin(truth), np.nanmin(pred)])
    hi = np.nanmax([np.nanmax(truth), np.nanmax(pred)])
    ax.plot([lo, hi], [lo, hi], 'k--', lw=1, label='1:1')
    ax.set_xlabel(f'true {label}')
    ax.set_ylabel(f'predicted {label}')
    ax.legend(loc='upper left')
    return _save(fig, path)


def _map(plt, sc, path):
    from matplotlib.collections import LineCollection
    fig, ax = plt.subplots(figsize=(7, 7))
    segs = np.stack([sc[['event_lon', 'event_lat']].to_numpy(float),
                     sc[['pred_event_lon', 'pred_event_lat']].to_numpy(float)], axis=1)
    ax.add_collection(LineCollection(segs, colors='0.6', linewidths=0.3, zorder=1))
    ax.scatter(sc['event_lon'], sc['event_lat'], s=5, c='tab:blue', label='true epicentre', zorder=2)
    ax.scatter(sc['pred_event_lon'], sc['pred_event_lat'], s=5, c='tab:red',
               label='predicted epicentre', zorder=3)
    st = sc[['station_lon', 'station_lat']].drop_duplicates()
    ax.scatter(st['station_lon'], st['station_lat'], marker='^', s=40, c='k',
               label='station', zorder=4)
    # Equal ground distance per degree on both axes at the mean latitude.
    ax.set_aspect(1.0 / np.cos(np.deg2rad(sc['event_lat'].mean())))
    ax.autoscale_view()
    ax.set_xlabel('longitude (deg)')
    ax.set_ylabel('latitude (deg)')
    ax.legend(loc='best', fontsize=8)
    return _save(fig, path)


def make_figures(df, errors, fig_dir, reliability=None, breakdown=None):
    """Write the standard evaluation figures as PNG files.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`read_results`.
    errors : pandas.DataFrame
        Output of :func:`location_errors` (its index selects the scored rows).
    fig_dir : str or os.PathLike
        Destination folder (created if missing).
    reliability, breakdown : pandas.DataFrame, optional
        :func:`reliability_curve` (or :func:`reliability_comparison`: one
        panel per quantity, raw and calibrated spread) and
        :func:`breakdown_table` outputs; when given (and not empty)
        ``reliability.png`` / ``breakdown.png`` are added.

    Returns
    -------
    list of str
        ``error_hist_<quantity>.png`` for each quantity, ``scatter_lat.png``,
        ``scatter_lon.png``, ``scatter_depth.png``, ``map_epicentres.png`` and
        the optional two.
    """
    plt = _pyplot()
    os.makedirs(fig_dir, exist_ok=True)
    sc = df.loc[errors.index]
    paths = []
    for q in QUANTITIES:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.hist(errors[q].to_numpy(float), bins=50)
        ax.set_xlabel(f'error {q}')
        ax.set_ylabel('traces')
        paths.append(_save(fig, os.path.join(fig_dir, f'error_hist_{q}.png')))
    for short, col, label in (('lat', 'event_lat', 'latitude (deg)'),
                              ('lon', 'event_lon', 'longitude (deg)'),
                              ('depth', 'depth_km', 'depth (km)')):
        pcol = 'pred_' + col
        std = sc[pcol + '_std'].to_numpy(float) if pcol + '_std' in sc else None
        paths.append(_scatter(plt, sc[col].to_numpy(float), sc[pcol].to_numpy(float),
                              std, label, os.path.join(fig_dir, f'scatter_{short}.png')))
    paths.append(_map(plt, sc, os.path.join(fig_dir, 'map_epicentres.png')))
    if reliability is not None and len(reliability):
        paths.append(_reliability_figure(plt, reliability, os.path.join(fig_dir, 'reliability.png')))
    if breakdown is not None and len(breakdown):
        paths.append(_breakdown_figure(plt, breakdown, os.path.join(fig_dir, 'breakdown.png')))
    return paths


def _reliability_figure(plt, curve, path):
    if 'spread' in curve.columns:
        return _reliability_comparison_figure(plt, curve, path)
    fig, ax = plt.subplots(figsize=(5, 5))
    for q, part in curve.groupby('quantity', sort=False):
        ax.plot(part['expected'], part['observed'], marker='o', ms=3, label=q)
    ax.plot([0, 1], [0, 1], 'k--', lw=1, label='calibrated')
    ax.set_xlabel('expected coverage (nominal level)')
    ax.set_ylabel('observed coverage')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title('below the diagonal: error bars too small')
    ax.legend(loc='upper left', fontsize=8)
    return _save(fig, path)


def _reliability_comparison_figure(plt, curve, path):
    """One panel per quantity: the raw and the calibrated spread against the diagonal."""
    quantities = list(dict.fromkeys(curve['quantity']))
    cols = min(len(quantities), 2)
    rows = -(-len(quantities) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    style = {'raw': dict(ls='--', marker='o', color='tab:red', label='raw std'),
             'calibrated': dict(ls='-', marker='s', color='tab:blue', label='calibrated std')}
    for ax, q in zip(axes.ravel(), quantities):
        for spread, part in curve[curve['quantity'] == q].groupby('spread', sort=False):
            ax.plot(part['expected'], part['observed'], ms=3, **style[spread])
        ax.plot([0, 1], [0, 1], 'k:', lw=1, label='ideal (Gaussian errors)')
        ax.set(xlim=(0, 1), ylim=(0, 1), title=q, xlabel='expected coverage (nominal level)',
               ylabel='observed coverage')
    for ax in axes.ravel()[len(quantities):]:
        ax.set_visible(False)
    axes[0][0].legend(loc='upper left', fontsize=8)
    fig.suptitle('below the diagonal: error bars too small')
    fig.tight_layout()
    return _save(fig, path)


def _breakdown_figure(plt, table, path):
    attributes = list(dict.fromkeys(table['attribute']))
    fig, axes = plt.subplots(1, len(attributes), figsize=(4.2 * len(attributes), 4), squeeze=False)
    for ax, attribute in zip(axes[0], attributes):
        part = table[table['attribute'] == attribute]
        x = np.arange(len(part))
        ax.bar(x - 0.2, part['epicentral_mae_km'], 0.4, label='model')
        ax.bar(x + 0.2, part['baseline_epicentral_mae_km'], 0.4, color='0.7',
               label='constant predictor')
        ax.set_xticks(x, [f"{b}\nn={n}" for b, n in zip(part['bin'], part['n'])],
                      fontsize=7, rotation=30)
        ax.set_title(attribute)
        ax.set_ylabel('epicentral MAE (km)')
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_history(history, path):
    """Loss curves (training and validation) per epoch, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "val_loss"):
        if history.get(key):
            ax.plot(np.arange(1, len(history[key]) + 1), history[key], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, dpi=120, format="png"), mode="wb")
    finally:
        plt.close(fig)
    return path


def _degree_formatter(positive, negative):
    """Tick labels in degrees with a hemisphere letter (``117.25°W``, ``33.5°N``).

    As many decimals as the tick spacing needs and no more, so that labels stay
    short; never an offset ("+1.17e2") nor scientific notation.
    """
    from matplotlib.ticker import Formatter

    class DegreeFormatter(Formatter):
        decimals = 0

        def set_locs(self, locs):
            super().set_locs(locs)
            locs = np.asarray(locs, float)
            locs = locs[np.isfinite(locs)]
            self.decimals = next((d for d in range(7)
                                  if np.allclose(np.round(locs, d), locs, rtol=0, atol=1e-9)), 6)

        def __call__(self, x, pos=None):
            x = round(float(x), self.decimals)
            hemisphere = positive if x > 0 else negative if x < 0 else ''
            return f'{abs(x):.{self.decimals}f}\N{DEGREE SIGN}{hemisphere}'

    return DegreeFormatter()


def _label_boxes(ax, axis, renderer):
    """Window extents of the tick labels ``axis`` ('x' or 'y') draws (inside the view)."""
    lo, hi = sorted(ax.get_xlim() if axis == 'x' else ax.get_ylim())
    tol = 1e-9 * max(1.0, abs(hi - lo))
    boxes = []
    for label in (ax.get_xticklabels() if axis == 'x' else ax.get_yticklabels()):
        where = label.get_position()[0 if axis == 'x' else 1]
        if label.get_visible() and label.get_text() and lo - tol <= where <= hi + tol:
            boxes.append(label.get_window_extent(renderer))
    return boxes


def _overlapping(boxes, pad):
    """Whether any two boxes (display units) come closer than ``pad`` pixels."""
    return any(a.x0 - pad < b.x1 and b.x0 - pad < a.x1 and a.y0 - pad < b.y1 and b.y0 - pad < a.y1
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _map_axes(ax, mean_lat, nbins=6):
    """Degree ticks that never overlap, at equal ground distance per degree on both axes.

    The aspect (1/cos(mean latitude)) is reached by widening the data limits, not by
    shrinking the axes box (``adjustable='datalim'``): the box keeps the figure's size
    whatever the extent, so a tall narrow region cannot squeeze its longitude labels
    together. At most ``nbins`` + 1 ticks per axis; where labels come closer than half
    a character once drawn (long labels of a small extent), fewer ticks are used.
    """
    from matplotlib.ticker import MaxNLocator

    ax.set_aspect(1.0 / np.cos(np.deg2rad(mean_lat)), adjustable='datalim')
    ax.xaxis.set_major_formatter(_degree_formatter('E', 'W'))
    ax.yaxis.set_major_formatter(_degree_formatter('N', 'S'))
    for n in range(nbins, 0, -1):
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=n, steps=[1, 2, 2.5, 5, 10]))
        ax.figure.canvas.draw()
        renderer = ax.figure.canvas.get_renderer()
        # at least half a character apart (half the label font size, in pixels)
        labels = ax.xaxis.get_ticklabels()
        pad = 0.5 * (labels[0].get_fontsize() if labels else 10.0) * ax.figure.dpi / 72.0
        if not (_overlapping(_label_boxes(ax, 'x', renderer), pad)
                or _overlapping(_label_boxes(ax, 'y', renderer), pad)):
            break


def _preferred_origins(locations, combined):
    """event_id -> (lon, lat) of each event's preferred origin: its combined origin, else
    its (first) single-station estimate, as in the locator's events.csv."""
    where = {}
    if 'event_id' in locations:
        for event_id, lon, lat in zip(locations['event_id'].astype(str),
                                      locations['pred_event_lon'].to_numpy(float),
                                      locations['pred_event_lat'].to_numpy(float)):
            where.setdefault(event_id, (lon, lat))
    if len(combined) and 'event_id' in combined:
        for event_id, lon, lat in zip(combined['event_id'].astype(str),
                                      combined['longitude'].to_numpy(float),
                                      combined['latitude'].to_numpy(float)):
            where[event_id] = (lon, lat)
    return where


def location_map(locations, combined, path, truth=None):
    """Map of a locator run: stations, single-station estimates, combined origins.

    Tick labels are degrees with a hemisphere letter, at most seven per axis, and
    never overlap whatever the extent; both axes have equal ground distance per
    degree at the map's mean latitude.

    Parameters
    ----------
    locations : pandas.DataFrame
        One row per located pick: ``station_lat, station_lon,
        pred_event_lat, pred_event_lon`` (and ``event_id``, used with ``truth``)
        and, when sampled, ``pred_event_lat_std, pred_event_lon_std``
        (degrees), drawn as 1-sigma ellipses (axes along north and east).
    combined : pandas.DataFrame
        ``latitude, longitude`` (and ``event_id``) of the origins combining
        2+ stations (may be empty).
    path : str or os.PathLike
        PNG file to write (atomically).
    truth : pandas.DataFrame, optional
        ``event_id, latitude, longitude[, depth_km]``: the true epicentres where
        they are known (synthetic data), drawn as green crosses, each joined by a
        dashed line to its event's preferred origin (the combined origin, else
        the event's single-station estimate).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Ellipse

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 7))
    segs = np.stack([locations[['station_lon', 'station_lat']].to_numpy(float),
                     locations[['pred_event_lon', 'pred_event_lat']].to_numpy(float)], axis=1)
    ax.add_collection(LineCollection(segs, colors='0.6', linewidths=0.5, zorder=1))
    if 'pred_event_lat_std' in locations:
        for lon, lat, s_lon, s_lat in locations[['pred_event_lon', 'pred_event_lat',
                                                 'pred_event_lon_std',
                                                 'pred_event_lat_std']].to_numpy(float):
            ax.add_patch(Ellipse((lon, lat), 2 * s_lon, 2 * s_lat, fill=False, ec='tab:red',
                                 lw=0.6, alpha=0.7, zorder=2))
    ax.scatter(locations['pred_event_lon'], locations['pred_event_lat'], s=10, c='tab:red',
               label='single-station estimate' + (' (1-sigma)' if 'pred_event_lat_std' in
                                                  locations else ''), zorder=3)
    if len(combined):
        ax.scatter(combined['longitude'], combined['latitude'], marker='*', s=160, c='gold',
                   edgecolors='k', label='combined origin', zorder=5)
    st = locations[['station_lon', 'station_lat']].drop_duplicates()
    ax.scatter(st['station_lon'], st['station_lat'], marker='^', s=50, c='k', label='station',
               zorder=4)
    lats = [locations['station_lat'].to_numpy(float), locations['pred_event_lat'].to_numpy(float)]
    if truth is not None and len(truth):
        preferred = _preferred_origins(locations, combined)
        links = [((lon, lat), preferred[str(event_id)])
                 for event_id, lon, lat in zip(truth['event_id'],
                                               truth['longitude'].to_numpy(float),
                                               truth['latitude'].to_numpy(float))
                 if str(event_id) in preferred]
        if links:
            ax.add_collection(LineCollection(links, colors='tab:green', linewidths=1.2,
                                             linestyles='--', zorder=6,
                                             label='true epicentre to preferred origin'))
        ax.scatter(truth['longitude'], truth['latitude'], marker='X', s=90, c='tab:green',
                   edgecolors='k', linewidths=0.6, label='true epicentre', zorder=7)
        lats.append(truth['latitude'].to_numpy(float))
    ax.autoscale_view()
    ax.set_xlabel('longitude')
    ax.set_ylabel('latitude')
    ax.legend(loc='best', fontsize=8)
    lats = np.concatenate(lats)
    _map_axes(ax, 0.5 * (np.nanmin(lats) + np.nanmax(lats)))
    return _save(fig, path)
