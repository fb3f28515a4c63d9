"""Location-error metrics for single-station earthquake location.

Reads the per-trace table written by the tester (``X_test_results.csv``),
turns it into signed / absolute location errors, summary metrics (MAE, RMSE,
median, 90th percentile, bias, std), a constant-predictor baseline, and the
coverage of the Monte-Carlo error bars (for a calibrated table, of the raw and
the calibrated spread side by side). Figures are in :mod:`utrans_loc.figures`.

All files are written atomically (:mod:`utrans_loc.files`). Must not import
keras: the reader runs without a deep-learning backend.
"""
import os

import numpy as np
import pandas as pd
from geographiclib.geodesic import Geodesic
from sklearn import metrics as skm

from utrans_loc.files import atomic_write

RESULTS_NAME = 'X_test_results.csv'   # the tester's per-trace table
QUANTITIES = ('lat_deg', 'lon_deg', 'depth_km', 'epicentral_km', 'hypocentral_km')

REQUIRED_COLUMNS = ('trace_name', 'station_lat', 'station_lon',
                    'event_lat', 'event_lon', 'depth_km',
                    'pred_event_lat', 'pred_event_lon', 'pred_depth_km')
TRUTH_COLUMNS = ('event_lat', 'event_lon', 'depth_km')
PRED_COLUMNS = ('pred_event_lat', 'pred_event_lon', 'pred_depth_km')
METRIC_COLUMNS = ('quantity', 'n', 'mae', 'rmse', 'median', 'p90', 'bias', 'std')
# Predicted (Monte-Carlo) standard deviation of each error quantity.
STD_COLUMNS = {'lat_deg': 'pred_event_lat_std', 'lon_deg': 'pred_event_lon_std',
               'depth_km': 'pred_depth_km_std', 'epicentral_km': 'pred_epicentre_std_km'}
COVERAGE_COLUMNS = ('quantity', 'n', 'mean_std', 'median_std', 'expected_1sigma',
                    'coverage_1sigma', 'expected_2sigma', 'coverage_2sigma',
                    'spearman_std_abs_error')
# A model with a variance head (trainer1 --aleatoric) writes the parts of each
# total std column beside it: <column>_aleatoric (predicted variance) and, when
# sampled, <column>_epistemic (Monte-Carlo spread).
STD_PARTS = ('aleatoric', 'epistemic')
RANKING_COLUMNS = ('quantity', 'std', 'n', 'mean_std', 'spearman_std_abs_error')
# A calibrated table (tester1 --calibration_set / --calibration) keeps the raw
# Monte-Carlo spread of every std column in <column>_raw.
RAW_SUFFIX = '_raw'
SPREADS = ('raw', 'calibrated')
# Reliability levels of the raw-vs-calibrated comparison: 10 points, every
# other one of reliability_curve's 19, so the raw curve matches an uncalibrated run's.
COMPARISON_LEVELS = np.round(np.linspace(0.05, 0.95, 10), 10)
# Bin edges of the breakdowns (left-closed); a bin with no trace is left out.
BREAKDOWN_BINS = {
    'epicentral_distance_km': (0, 20, 40, 60, 80, 110, 150, np.inf),
    'true_depth_km': (-np.inf, 5, 10, 15, 20, 30, np.inf),
    'magnitude': (-np.inf, 1, 2, 3, 4, np.inf),
    'snr_db': (-np.inf, 10, 20, 30, 40, np.inf),
}
BREAKDOWN_COLUMNS = ('attribute', 'bin', 'n', 'epicentral_mae_km', 'epicentral_median_km',
                     'depth_mae_km', 'baseline_epicentral_mae_km', 'ratio_to_baseline')


def read_results(path):
    """Read a tester results CSV and check its columns.

    Parameters
    ----------
    path : str or os.PathLike
        Path to ``X_test_results.csv``.

    Returns
    -------
    pandas.DataFrame
        One row per trace; numeric columns as float, unknown columns kept.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is empty/unparsable, a required column is missing, or a
        required numeric column holds non-numeric text.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: cannot parse CSV ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s): {', '.join(missing)}")
    for col in REQUIRED_COLUMNS[1:]:
        # Empty truth columns are read as float NaN; text would be a writer bug.
        try:
            df[col] = pd.to_numeric(df[col]).astype(float)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: column {col} is not numeric ({exc})") from exc
    return df


def geodesic_km(lat1, lon1, lat2, lon2):
    """WGS84 geodesic distance in kilometres, element-wise.

    Parameters
    ----------
    lat1, lon1, lat2, lon2 : array_like
        Coordinates in degrees; broadcast against each other.

    Returns
    -------
    numpy.ndarray
        Distances in km (float); NaN wherever any input is NaN.
    """
    a, b, c, d = np.broadcast_arrays(*(np.asarray(x, dtype=float)
                                       for x in (lat1, lon1, lat2, lon2)))
    out = np.full(a.shape, np.nan)
    ok = ~(np.isnan(a) | np.isnan(b) | np.isnan(c) | np.isnan(d))
    inverse = Geodesic.WGS84.Inverse
    # geographiclib is scalar-only; the loop is fast enough for test sets
    # of ~1e5 traces and keeps the reference implementation.
    out[ok] = [inverse(p, q, r, s, Geodesic.DISTANCE)['s12']
               for p, q, r, s in zip(a[ok], b[ok], c[ok], d[ok])]
    return out / 1000.0


def km_per_degree(lat):
    """Kilometres per degree of latitude and of longitude at latitude ``lat`` (WGS84).

    The meridional and prime-vertical radii of curvature: exact for small
    offsets, which is what a std in degrees is turned into km with.
    """
    a, f = Geodesic.WGS84.a, Geodesic.WGS84.f
    e2 = f * (2 - f)
    phi = np.deg2rad(np.asarray(lat, float))
    w = 1 - e2 * np.sin(phi) ** 2
    per_rad = np.pi / 180 / 1000.0
    return a * (1 - e2) / w ** 1.5 * per_rad, a / np.sqrt(w) * np.cos(phi) * per_rad


def sample_spread_km(lat_samples, lon_samples):
    """Spread of Monte-Carlo epicentre samples, in km on the WGS84 ellipsoid.

    Parameters
    ----------
    lat_samples, lon_samples : array_like, shape (n_samples, n_traces)
        Sampled epicentres in degrees.

    Returns
    -------
    std_north_km, std_east_km, epicentre_std_km : numpy.ndarray, shape (n_traces,)
        Standard deviations (ddof=0) of the north and east offsets of each
        sample from the trace's mean epicentre (geodesic distance and
        azimuth), and ``sqrt(std_north**2 + std_east**2)``: the RMS radial
        scatter of the epicentre.
    """
    lat = np.asarray(lat_samples, float)
    lon = np.asarray(lon_samples, float)
    mean_lat, mean_lon = lat.mean(axis=0), lon.mean(axis=0)
    inverse = Geodesic.WGS84.Inverse
    north = np.empty_like(lat)
    east = np.empty_like(lat)
    for i, j in np.ndindex(lat.shape):
        g = inverse(mean_lat[j], mean_lon[j], lat[i, j], lon[i, j],
                    Geodesic.DISTANCE | Geodesic.AZIMUTH)
        azimuth = np.deg2rad(g['azi1'])
        north[i, j] = g['s12'] * np.cos(azimuth) / 1000.0
        east[i, j] = g['s12'] * np.sin(azimuth) / 1000.0
    std_n, std_e = north.std(axis=0), east.std(axis=0)
    return std_n, std_e, np.hypot(std_n, std_e)


def _scorable(df):
    """Rows whose truth is complete (others cannot be scored)."""
    return df.loc[df[list(TRUTH_COLUMNS)].notna().all(axis=1)]


def _errors_from(df, pred_lat, pred_lon, pred_depth):
    """Error table for predictions aligned with the (scorable) rows of df."""
    dlat = np.asarray(pred_lat, float) - df['event_lat'].to_numpy(float)
    # Wrap to [-180, 180) so a dateline crossing is not a 360-degree error.
    dlon = (np.asarray(pred_lon, float) - df['event_lon'].to_numpy(float) + 180.0) % 360.0 - 180.0
    ddep = np.asarray(pred_depth, float) - df['depth_km'].to_numpy(float)
    epi = geodesic_km(df['event_lat'], df['event_lon'], pred_lat, pred_lon)
    return pd.DataFrame({'lat_deg': dlat, 'lon_deg': dlon, 'depth_km': ddep,
                         'epicentral_km': epi,
                         'hypocentral_km': np.hypot(epi, ddep)},
                        index=df.index, columns=list(QUANTITIES))


def location_errors(df):
    """Per-trace location errors of the model.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`read_results`.

    Returns
    -------
    pandas.DataFrame
        Columns ``QUANTITIES``, index aligned with ``df``. ``lat_deg``,
        ``lon_deg`` (wrapped to [-180, 180)) and ``depth_km`` are signed
        errors (prediction - truth); ``epicentral_km`` is the WGS84 geodesic
        distance between true and predicted epicentre; ``hypocentral_km`` is
        ``sqrt(epicentral_km**2 + depth_err**2)``. Rows with any NaN truth
        are dropped.

    Raises
    ------
    ValueError
        If a scorable row has a NaN prediction (a model/tester failure that
        must not be hidden by silently dropping it).
    """
    sc = _scorable(df)
    bad = sc[list(PRED_COLUMNS)].isna().any(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} scorable row(s) have NaN predictions "
                         f"in {', '.join(PRED_COLUMNS)}")
    return _errors_from(sc, sc['pred_event_lat'], sc['pred_event_lon'], sc['pred_depth_km'])


def constant_baseline(df):
    """Errors of the constant "mean offset" predictor.

    For every scorable trace the prediction is ``station - mean(station -
    event)`` for latitude and longitude and ``mean(depth)`` for depth, means
    taken over the scorable rows of ``df``. Because it uses the evaluated
    set's own means it is an optimistic "knowing nothing" baseline.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`read_results`.

    Returns
    -------
    pandas.DataFrame
        Same format as :func:`location_errors`.
    """
    sc = _scorable(df)
    off_lat = (sc['station_lat'] - sc['event_lat']).mean()
    off_lon = (sc['station_lon'] - sc['event_lon']).mean()
    depth = np.full(len(sc), sc['depth_km'].mean())
    return _errors_from(sc, sc['station_lat'] - off_lat, sc['station_lon'] - off_lon, depth)


def _rmse(zero, err):
    if hasattr(skm, 'root_mean_squared_error'):  # scikit-learn >= 1.4
        return skm.root_mean_squared_error(zero, err)
    return float(np.sqrt(skm.mean_squared_error(zero, err)))


def metrics_table(errors):
    """Summary metrics of an error table.

    Parameters
    ----------
    errors : pandas.DataFrame
        Output of :func:`location_errors` or :func:`constant_baseline`.

    Returns
    -------
    pandas.DataFrame
        Columns ``quantity, n, mae, rmse, median, p90, bias, std``, one row
        per quantity in ``QUANTITIES`` order. ``mae``/``rmse``/``median``
        are scikit-learn metrics of the error against a zero target;
        ``p90`` is the 90th percentile of |error| (linear interpolation);
        ``bias`` is the mean signed error and ``std`` the population
        standard deviation (ddof=0) of the signed error. For the
        non-negative distances the same definitions apply, so their bias
        equals their MAE.

    Raises
    ------
    ValueError
        If ``errors`` has no rows.
    """
    if len(errors) == 0:
        raise ValueError("no scorable rows: cannot compute metrics")
    rows = []
    for q in QUANTITIES:
        err = errors[q].to_numpy(float)
        zero = np.zeros_like(err)
        rows.append({'quantity': q, 'n': len(err),
                     'mae': skm.mean_absolute_error(zero, err),
                     'rmse': _rmse(zero, err),
                     'median': skm.median_absolute_error(zero, err),
                     'p90': np.percentile(np.abs(err), 90),
                     'bias': err.mean(),
                     'std': err.std(ddof=0)})
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def expected_coverage(quantity, k):
    """Fraction inside k sigma for a calibrated Gaussian error.

    1-D quantities: erf(k / sqrt 2) (0.683, 0.954). ``epicentral_km`` is a
    radius in 2-D: with ``sigma`` the RMS radial scatter of an isotropic
    Gaussian, P(r <= k sigma) = 1 - exp(-k**2) (0.632, 0.982).
    """
    from scipy.special import erf

    k = np.asarray(k, float)
    return 1.0 - np.exp(-k ** 2) if quantity == 'epicentral_km' else erf(k / np.sqrt(2.0))


def _k_for_level(quantity, level):
    """Inverse of :func:`expected_coverage`: the k whose expected coverage is ``level``."""
    from scipy.special import erfinv

    level = np.asarray(level, float)
    return np.sqrt(-np.log1p(-level)) if quantity == 'epicentral_km' else np.sqrt(2.0) * erfinv(level)


def _uncertainty_pairs(df, errors):
    """(quantity, predicted std, |error|) for every quantity with a std column; rows
    whose std is NaN (a non-finite predicted variance) are left out."""
    sc = df.loc[errors.index]
    for q, col in STD_COLUMNS.items():
        if col in sc.columns:
            sigma = sc[col].to_numpy(float)
            ok = ~np.isnan(sigma)
            yield q, sigma[ok], np.abs(errors[q].to_numpy(float))[ok]


def coverage_table(df, errors):
    """Calibration of the predicted standard deviations.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`read_results` with ``pred_*_std`` columns.
    errors : pandas.DataFrame
        Output of :func:`location_errors`.

    Returns
    -------
    pandas.DataFrame or None
        Columns ``COVERAGE_COLUMNS``: per quantity the fraction of traces
        whose truth lies within 1 and 2 predicted sigma (next to the
        fraction a calibrated Gaussian gives, see :func:`expected_coverage`)
        and the Spearman rank correlation between predicted std and actual
        |error| (does a larger error bar mean a larger error?). None without
        std columns.
    """
    rows = []
    for q, sigma, abs_err in _uncertainty_pairs(df, errors):
        rows.append({'quantity': q, 'n': len(sigma), 'mean_std': sigma.mean(),
                     'median_std': np.median(sigma),
                     'expected_1sigma': float(expected_coverage(q, 1)),
                     'coverage_1sigma': float(np.mean(abs_err <= sigma)),
                     'expected_2sigma': float(expected_coverage(q, 2)),
                     'coverage_2sigma': float(np.mean(abs_err <= 2 * sigma)),
                     'spearman_std_abs_error': _spearman(sigma, abs_err)})
    return pd.DataFrame(rows, columns=list(COVERAGE_COLUMNS)) if rows else None


def _spearman(sigma, abs_err):
    """Spearman rank correlation of predicted std and |error|; NaN where undefined
    (fewer than 3 rows, or a constant input such as zero errors)."""
    from scipy.stats import spearmanr

    varied = len(sigma) > 2 and np.ptp(sigma) > 0 and np.ptp(abs_err) > 0
    return float(spearmanr(sigma, abs_err).statistic) if varied else float('nan')


def std_parts(df):
    """The parts of the std columns present in ``df`` (:data:`STD_PARTS`, in order)."""
    return [part for part in STD_PARTS
            if any(f'{col}_{part}' in df.columns for col in STD_COLUMNS.values())]


def ranking_table(df, errors):
    """How well each part of the error bar ranks the errors (a model with a variance head).

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`read_results`: ``*_std`` (the total) with
        ``*_std_aleatoric`` and, when sampled, ``*_std_epistemic`` beside it.
    errors : pandas.DataFrame
        Output of :func:`location_errors`.

    Returns
    -------
    pandas.DataFrame or None
        Columns ``RANKING_COLUMNS``: per quantity (lat, lon, depth,
        epicentre) the Spearman rank correlation between |error| and the
        std of each part and of the total (``std``: 'epistemic',
        'aleatoric', 'total'), all as predicted: the total of a calibrated
        table is scored before calibration (``*_std_raw``), so the three
        rows compare like with like (calibration rescales lat, lon and depth
        by constants, but the epicentre by a mix of two). None for a table
        without parts (a model without a variance head).
    """
    parts = std_parts(df)
    if not parts:
        return None
    views = {part: _std_view(df, f'_{part}') for part in reversed(parts)}
    views['total'] = raw_spread(df)
    rows = [{'quantity': q, 'std': name, 'n': len(sigma), 'mean_std': sigma.mean(),
             'spearman_std_abs_error': _spearman(sigma, abs_err)}
            for name, view in views.items() for q, sigma, abs_err in _uncertainty_pairs(view, errors)]
    order = {q: i for i, q in enumerate(STD_COLUMNS)}
    table = pd.DataFrame(rows, columns=list(RANKING_COLUMNS))
    return table.sort_values('quantity', key=lambda q: q.map(order), kind='stable',
                             ignore_index=True)


def reliability_curve(df, errors, levels=np.linspace(0.05, 0.95, 19)):
    """Expected vs observed coverage of central intervals, per quantity.

    For each nominal level the interval half-width is k(level) x predicted
    std (Gaussian; 2-D radial for the epicentre); the observed value is the
    fraction of traces whose |error| falls inside. A calibrated model lies on
    the diagonal; below it the error bars are too small (over-confident).
    """
    rows = []
    for q, sigma, abs_err in _uncertainty_pairs(df, errors):
        for level in levels:
            k = _k_for_level(q, level)
            rows.append({'quantity': q, 'expected': float(level),
                         'observed': float(np.mean(abs_err <= k * sigma))})
    return pd.DataFrame(rows, columns=['quantity', 'expected', 'observed'])


def is_calibrated(df):
    """Whether the table holds calibrated std columns with the raw spread beside them."""
    return any(col + RAW_SUFFIX in df.columns for col in STD_COLUMNS.values())


def _std_view(df, suffix):
    """A copy of ``df`` in which every column with a ``<column><suffix>`` beside it
    holds that column's values (e.g. the raw or one part of the std)."""
    out = df.copy()
    for col in df.columns:
        if col + suffix in df.columns:
            out[col] = df[col + suffix]
    return out


def raw_spread(df):
    """A copy of a calibrated table whose std columns (every column with a
    ``<column>_raw`` beside it) hold the std before calibration again."""
    return _std_view(df, RAW_SUFFIX)


def _by_spread(make, df, errors):
    """``make(table, errors)`` for the raw and the calibrated spread, with a 'spread'
    column after 'quantity', rows of one quantity next to each other."""
    parts = []
    for spread, table in zip(SPREADS, (raw_spread(df), df)):
        part = make(table, errors)
        if part is None:
            return None
        part.insert(1, 'spread', spread)
        parts.append(part)
    both = pd.concat(parts, ignore_index=True)
    order = {q: i for i, q in enumerate(both['quantity'].drop_duplicates())}
    return both.sort_values('quantity', key=lambda q: q.map(order), kind='stable',
                            ignore_index=True)


def coverage_comparison(df, errors):
    """:func:`coverage_table` of the raw and of the calibrated spread, side by side.

    Parameters
    ----------
    df : pandas.DataFrame
        A calibrated results table (:func:`is_calibrated`).
    errors : pandas.DataFrame
        Output of :func:`location_errors`.

    Returns
    -------
    pandas.DataFrame or None
        ``COVERAGE_COLUMNS`` with ``spread`` ('raw' | 'calibrated') after
        ``quantity``; for each quantity the raw row, then the calibrated one.
    """
    return _by_spread(coverage_table, df, errors)


def reliability_comparison(df, errors, levels=COMPARISON_LEVELS):
    """:func:`reliability_curve` of the raw and the calibrated spread (``spread`` column)."""
    return _by_spread(lambda table, err: reliability_curve(table, err, levels), df, errors)


def uncertainty_summary(df):
    """Predicted-uncertainty statistics over all rows (also unlabeled ones); for a
    calibrated table each std column is followed by its raw spread."""
    columns = [c for col in STD_COLUMNS.values() for c in (col, col + RAW_SUFFIX)]
    rows = [{'column': col, 'n': int(df[col].notna().sum()), 'mean': df[col].mean(),
             'median': df[col].median(), 'p90': df[col].quantile(0.9)}
            for col in columns if col in df.columns]
    return pd.DataFrame(rows, columns=['column', 'n', 'mean', 'median', 'p90']) if rows else None


def _breakdown_values(sc):
    """The attributes the breakdowns use, for the scored rows, where present."""
    values = {'epicentral_distance_km': geodesic_km(sc['station_lat'], sc['station_lon'],
                                                    sc['event_lat'], sc['event_lon']),
              'true_depth_km': sc['depth_km'].to_numpy(float)}
    for column in ('magnitude', 'snr_db'):
        if column in sc.columns and pd.to_numeric(sc[column], errors='coerce').notna().any():
            values[column] = pd.to_numeric(sc[column], errors='coerce').to_numpy(float)
    return values


def breakdown_table(df, errors, baseline_errors):
    """Errors per bin of true epicentral distance, depth, magnitude and SNR.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`read_results` (``magnitude`` and ``snr_db`` are used
        when present).
    errors, baseline_errors : pandas.DataFrame
        Model errors and constant-predictor errors (:func:`constant_baseline`,
        same rows), so each bin shows how far the model is from knowing nothing.

    Returns
    -------
    pandas.DataFrame
        Columns ``BREAKDOWN_COLUMNS``; bins are left-closed intervals; empty
        bins and traces with a missing attribute are left out.
    """
    sc = df.loc[errors.index]
    rows = []
    for attribute, values in _breakdown_values(sc).items():
        bins = pd.cut(values, BREAKDOWN_BINS[attribute], right=False)
        for interval in bins.categories:
            inside = np.asarray(bins == interval)
            if not inside.any():
                continue
            epi = errors['epicentral_km'].to_numpy(float)[inside]
            base = baseline_errors['epicentral_km'].to_numpy(float)[inside].mean()
            rows.append({'attribute': attribute, 'bin': str(interval), 'n': int(inside.sum()),
                         'epicentral_mae_km': epi.mean(),
                         'epicentral_median_km': np.median(epi),
                         'depth_mae_km': np.abs(errors['depth_km'].to_numpy(float)[inside]).mean(),
                         'baseline_epicentral_mae_km': base,
                         'ratio_to_baseline': epi.mean() / base if base > 0 else np.nan})
    return pd.DataFrame(rows, columns=list(BREAKDOWN_COLUMNS))


def fmt(v):
    """4-decimal float without a distracting '-0.0000' for tiny negatives."""
    s = f"{v:.4f}"
    return s[1:] if s.startswith('-') and float(s) == 0 else s


def _markdown(table):
    """Markdown pipe table (no tabulate dependency)."""
    head = '| ' + ' | '.join(table.columns) + ' |'
    floats = [c for c in table.columns if pd.api.types.is_float_dtype(table[c])]
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    rule = '|' + '|'.join('---:' if c in numeric else ':---' for c in table.columns) + '|'
    body = []
    for _, r in table.iterrows():
        cells = [fmt(r[c]) if c in floats else str(r[c]) for c in table.columns]
        body.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join([head, rule] + body)


def _epicentral_mae(table):
    return float(table.set_index('quantity').loc['epicentral_km', 'mae'])


def _write_csv(table, path, columns=None):
    columns = list(table.columns if columns is None else columns)
    return atomic_write(path, lambda fh: table[columns].to_csv(fh, index=False))


OVERLAP_MARK = 'test set overlaps training'


def recorded_overlap(report_path):
    """The tester's ``split_overlap`` finding from its X_report.txt, when the test
    split shares traces or earthquakes with training; None when clean, not
    checked, or there is no report."""
    if not os.path.isfile(report_path):
        return None
    for line in open(report_path, encoding='utf8', errors='replace'):
        if line.startswith('split_overlap: '):
            value = line.split(': ', 1)[1].strip()
            return None if value in ('none found', 'not checked') else value
    return None


def write_metrics(table, out_dir, baseline=None, coverage=None, breakdown=None,
                  reliability=None, overlap=None, ranking=None):
    """Write the metric tables into ``out_dir`` atomically.

    Parameters
    ----------
    table : pandas.DataFrame
        Model metrics from :func:`metrics_table` -> ``metrics.csv``.
    out_dir : str or os.PathLike
        Destination folder (created if missing). Only the files named here
        are replaced; nothing else in it is touched.
    baseline : pandas.DataFrame, optional
        Constant-predictor metrics -> ``metrics_baseline.csv``.
    coverage : pandas.DataFrame, optional
        :func:`coverage_table` -> ``uncertainty.csv``.
    breakdown : pandas.DataFrame, optional
        :func:`breakdown_table` -> ``breakdown.csv``.
    reliability : pandas.DataFrame, optional
        :func:`reliability_curve` -> ``reliability.csv``.
    overlap : str, optional
        :func:`recorded_overlap`: marks metrics.md "test set overlaps training".
    ranking : pandas.DataFrame, optional
        :func:`ranking_table` -> ``uncertainty_parts.csv``.

    All given tables also go into ``metrics.md``, with the model/baseline
    ratio of epicentral MAE.

    Returns
    -------
    list of str
        Paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = [_write_csv(table, os.path.join(out_dir, 'metrics.csv'), METRIC_COLUMNS)]
    parts = ['# Location metrics', '',
             'Errors are prediction - truth; lat/lon in degrees, others in km; '
             'std uses ddof=0.', '']
    if overlap:
        parts += [f"**Warning: {OVERLAP_MARK}** ({overlap}); these metrics are optimistic.", '']
    parts += ['## Model' + (f' ({OVERLAP_MARK})' if overlap else ''), '', _markdown(table), '']
    if baseline is not None:
        paths.append(_write_csv(baseline, os.path.join(out_dir, 'metrics_baseline.csv'),
                                METRIC_COLUMNS))
        m, b = _epicentral_mae(table), _epicentral_mae(baseline)
        parts += ['## Constant predictor (test-set mean offset; optimistic)', '',
                  _markdown(baseline), '',
                  f"Epicentral MAE ratio model/baseline: {m / b:.4f} "
                  f"({m:.3f} km / {b:.3f} km)" if b > 0 else
                  f"Epicentral MAE: model {m:.3f} km, baseline 0 km (ratio undefined)", '']
    if coverage is not None:
        paths.append(_write_csv(coverage, os.path.join(out_dir, 'uncertainty.csv')))
        source = ('the Monte-Carlo standard deviation' if ranking is None else
                  'the total std: predicted variance (variance head) and Monte-Carlo spread'
                  if 'epistemic' in set(ranking['std']) else
                  'the predicted variance of the variance head (one pass, no sampling)')
        parts += ['## Predicted uncertainty', '',
                  f'Fraction of traces whose truth lies within 1 and 2 predicted sigma ({source}), '
                  'next to the fraction a calibrated Gaussian gives (epicentre: 2-D radius); '
                  'Spearman correlation of predicted std with |error|.', '',
                  _markdown(coverage), '']
        if 'spread' in coverage.columns:
            parts[-1:-1] = ['', f'spread: raw = {source} (`*_std_raw`), calibrated = scaled by '
                            "the factors of the tester's calibration (`*_std`)."]
    if ranking is not None:
        paths.append(_write_csv(ranking, os.path.join(out_dir, 'uncertainty_parts.csv')))
        parts += ['## Which part of the error bar ranks the errors', '',
                  'Spearman correlation of |error| with each part of the std: epistemic '
                  '(Monte-Carlo spread, `*_std_epistemic`), aleatoric (predicted variance, '
                  '`*_std_aleatoric`) and their total (`*_std`; before calibration, as the '
                  'parts).', '', _markdown(ranking), '']
    if reliability is not None and len(reliability):
        paths.append(_write_csv(reliability, os.path.join(out_dir, 'reliability.csv')))
    if breakdown is not None and len(breakdown):
        paths.append(_write_csv(breakdown, os.path.join(out_dir, 'breakdown.csv')))
        parts += ['## Breakdown by true distance, depth, magnitude and SNR', '',
                  _markdown(breakdown), '']
    md_path = os.path.join(out_dir, 'metrics.md')
    paths.append(atomic_write(md_path, lambda fh: fh.write('\n'.join(parts))))
    return paths


def format_table(table):
    """Fixed-width text rendering of a metrics table for the terminal.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`metrics_table`.

    Returns
    -------
    str
    """
    return table.to_string(index=False, float_format=fmt)
