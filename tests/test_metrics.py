"""Tests for loc_metrics and the stage-03 reader, on hand-made CSVs."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from geographiclib.geodesic import Geodesic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from utrans_loc import metrics as lm  # noqa: E402

READER = os.path.join(ROOT, '03_read', 'reader.py')


def _frame(n=6, dlat=0.0, dlon=0.0, ddep=0.0, lat0=34.0):
    """Results table whose predictions are truth + fixed offsets."""
    i = np.arange(n, dtype=float)
    ev_lat, ev_lon, dep = lat0 + 0.1 * i, -118.0 + 0.05 * i, 5.0 + i
    return pd.DataFrame({
        'trace_name': [f'tr{k}' for k in range(n)],
        'station_lat': ev_lat + 0.2, 'station_lon': ev_lon - 0.3,
        'event_lat': ev_lat, 'event_lon': ev_lon, 'depth_km': dep,
        'pred_event_lat': ev_lat + dlat, 'pred_event_lon': ev_lon + dlon,
        'pred_depth_km': dep + ddep, 'magnitude': 2.5})


def _write(tmp_path, df, name='m_outputs'):
    folder = tmp_path / name
    folder.mkdir()
    df.to_csv(folder / 'X_test_results.csv', index=False)
    return folder


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, READER, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _row(table, q):
    return table.set_index('quantity').loc[q]


def test_known_offsets_give_exact_bias_and_mae():
    errs = lm.location_errors(_frame(dlat=0.02, dlon=-0.03, ddep=1.5))
    t = lm.metrics_table(errs)
    assert list(t['quantity']) == list(lm.QUANTITIES)
    assert list(t.columns) == ['quantity', 'n', 'mae', 'rmse', 'median', 'p90', 'bias', 'std']
    for q, off in (('lat_deg', 0.02), ('lon_deg', -0.03), ('depth_km', 1.5)):
        r = _row(t, q)
        assert r['bias'] == pytest.approx(off, abs=1e-9)
        assert r['mae'] == pytest.approx(abs(off), abs=1e-9)
        assert r['rmse'] == pytest.approx(abs(off), abs=1e-9)
        assert r['std'] == pytest.approx(0.0, abs=1e-9)


def test_one_degree_latitude_at_34N():
    errs = lm.location_errors(_frame(n=1, dlat=1.0))
    ref = Geodesic.WGS84.Inverse(34.0, -118.0, 35.0, -118.0)['s12'] / 1000.0
    assert errs['epicentral_km'].iloc[0] == pytest.approx(ref, rel=1e-9)
    assert abs(errs['epicentral_km'].iloc[0] - 110.9) < 0.5
    assert errs['hypocentral_km'].iloc[0] == pytest.approx(ref, rel=1e-9)


def test_hypocentral_combines_epicentral_and_depth():
    errs = lm.location_errors(_frame(n=3, dlat=0.1, ddep=-4.0))
    expect = np.sqrt(errs['epicentral_km'] ** 2 + 16.0)
    np.testing.assert_allclose(errs['hypocentral_km'], expect)
    assert (errs['epicentral_km'] >= 0).all()


def test_geodesic_nan_in_nan_out():
    d = lm.geodesic_km([34.0, np.nan], [-118.0, -118.0], [35.0, 35.0], [-118.0, -118.0])
    assert np.isfinite(d[0]) and np.isnan(d[1])


def test_rmse_ge_mae_and_p90_ge_median():
    rng = np.random.default_rng(0)
    df = _frame(n=50)
    df['pred_event_lat'] += rng.normal(0, 0.1, 50)
    df['pred_event_lon'] += rng.normal(0, 0.1, 50)
    df['pred_depth_km'] += rng.normal(0, 3, 50)
    t = lm.metrics_table(lm.location_errors(df))
    assert (t['rmse'] >= t['mae'] - 1e-12).all()
    assert (t['p90'] >= t['median']).all()
    assert (t['std'] >= 0).all()


def test_nan_truth_rows_excluded():
    df = _frame(n=5, ddep=2.0)
    df.loc[[1, 3], 'depth_km'] = np.nan
    df.loc[4, 'event_lat'] = np.nan
    t = lm.metrics_table(lm.location_errors(df))
    assert (t['n'] == 2).all()
    assert _row(t, 'depth_km')['mae'] == pytest.approx(2.0)


def test_constant_baseline_zero_when_offsets_equal():
    df = _frame(n=4)
    df['depth_km'] = 8.0
    t = lm.metrics_table(lm.constant_baseline(df))
    assert np.allclose(t[['mae', 'rmse', 'bias', 'std']].to_numpy(), 0.0, atol=1e-6)


def test_read_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.csv'):
        lm.read_results(tmp_path / 'nope.csv')
    path = tmp_path / 'x.csv'
    _frame().drop(columns='pred_depth_km').to_csv(path, index=False)
    with pytest.raises(ValueError, match='pred_depth_km'):
        lm.read_results(path)


def test_write_metrics_columns_and_markdown(tmp_path):
    df = _frame(dlat=0.1)
    t = lm.metrics_table(lm.location_errors(df))
    b = lm.metrics_table(lm.constant_baseline(df))
    lm.write_metrics(t, tmp_path, baseline=b)
    out = pd.read_csv(tmp_path / 'metrics.csv')
    assert list(out.columns) == ['quantity', 'n', 'mae', 'rmse', 'median', 'p90', 'bias', 'std']
    md = (tmp_path / 'metrics.md').read_text()
    assert md.count('| quantity |') == 2 and 'ratio' in md
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


def test_cli_end_to_end(tmp_path):
    df = _frame(n=8, dlat=0.05, dlon=0.02, ddep=1.0)
    df['pred_depth_km_std'] = 0.5
    folder = _write(tmp_path, df)
    other = folder / 'X_report.txt'
    other.write_text('tester report\n')
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    for _ in range(2):  # re-running replaces the reader's own outputs
        res = _run('--input', folder, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    assert (folder / 'metrics.csv').exists() and (folder / 'metrics.md').exists()
    pngs = sorted(os.listdir(folder / 'figures'))
    assert len(pngs) == 11 and 'map_epicentres.png' in pngs
    assert {'reliability.png', 'breakdown.png'} <= set(pngs)  # std column -> reliability
    assert hashlib.sha256(other.read_bytes()).hexdigest() == digest
    lines = res.stdout.strip().splitlines()
    assert lines[-1].startswith('epicentral MAE: model')
    assert lines[-2].lstrip().startswith('hypocentral_km')  # model table printed last
    assert 'model:' in res.stdout and res.stdout.index('constant predictor') < res.stdout.index('model:')
    assert '8 scored / 8 total' in res.stdout


def test_cli_output_dir_no_figures(tmp_path):
    folder = _write(tmp_path, _frame(dlat=0.1))
    out = tmp_path / 'elsewhere'
    res = _run('--input', folder, '--output_dir', out, '--no_figures')
    assert res.returncode == 0, res.stderr
    assert (out / 'metrics.csv').exists() and not (out / 'figures').exists()
    assert not (folder / 'metrics.csv').exists()


def test_cli_missing_column_exit_2(tmp_path):
    folder = _write(tmp_path, _frame().drop(columns='pred_event_lon'))
    res = _run('--input', folder)
    assert res.returncode == 2
    assert 'pred_event_lon' in res.stderr and 'Traceback' not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_missing_folder_exit_2(tmp_path):
    res = _run('--input', tmp_path / 'missing_outputs')
    assert res.returncode == 2
    assert 'missing_outputs' in res.stderr and 'Traceback' not in res.stderr


def test_cli_no_scorable_rows(tmp_path):
    df = _frame(n=3)
    df[['event_lat', 'event_lon', 'depth_km']] = np.nan
    folder = _write(tmp_path, df)
    res = _run('--input', folder)
    assert res.returncode == 0, res.stderr
    assert '0 scored / 3 total' in res.stdout and 'no scorable rows' in res.stdout
    assert not (folder / 'metrics.csv').exists()
