"""utrans_loc/metrics.py: location errors, metric tables, baseline, coverage, reliability
and breakdown, on hand-made results tables."""

import os

import numpy as np
import pandas as pd
import pytest
from conftest import results_frame
from geographiclib.geodesic import Geodesic

from utrans_loc import metrics as lm


def _row(table, q):
    return table.set_index('quantity').loc[q]


def test_known_offsets_give_exact_bias_and_mae():
    errs = lm.location_errors(results_frame(dlat=0.02, dlon=-0.03, ddep=1.5))
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
    errs = lm.location_errors(results_frame(n=1, dlat=1.0))
    ref = Geodesic.WGS84.Inverse(34.0, -118.0, 35.0, -118.0)['s12'] / 1000.0
    assert errs['epicentral_km'].iloc[0] == pytest.approx(ref, rel=1e-9)
    assert abs(errs['epicentral_km'].iloc[0] - 110.9) < 0.5
    assert errs['hypocentral_km'].iloc[0] == pytest.approx(ref, rel=1e-9)


def test_hypocentral_combines_epicentral_and_depth():
    errs = lm.location_errors(results_frame(n=3, dlat=0.1, ddep=-4.0))
    expect = np.sqrt(errs['epicentral_km'] ** 2 + 16.0)
    np.testing.assert_allclose(errs['hypocentral_km'], expect)
    assert (errs['epicentral_km'] >= 0).all()


def test_geodesic_nan_in_nan_out():
    d = lm.geodesic_km([34.0, np.nan], [-118.0, -118.0], [35.0, 35.0], [-118.0, -118.0])
    assert np.isfinite(d[0]) and np.isnan(d[1])


def test_rmse_ge_mae_and_p90_ge_median():
    rng = np.random.default_rng(0)
    df = results_frame(n=50)
    df['pred_event_lat'] += rng.normal(0, 0.1, 50)
    df['pred_event_lon'] += rng.normal(0, 0.1, 50)
    df['pred_depth_km'] += rng.normal(0, 3, 50)
    t = lm.metrics_table(lm.location_errors(df))
    assert (t['rmse'] >= t['mae'] - 1e-12).all()
    assert (t['p90'] >= t['median']).all()
    assert (t['std'] >= 0).all()


def test_nan_truth_rows_excluded():
    df = results_frame(n=5, ddep=2.0)
    df.loc[[1, 3], 'depth_km'] = np.nan
    df.loc[4, 'event_lat'] = np.nan
    t = lm.metrics_table(lm.location_errors(df))
    assert (t['n'] == 2).all()
    assert _row(t, 'depth_km')['mae'] == pytest.approx(2.0)


def test_constant_baseline_zero_when_offsets_equal():
    df = results_frame(n=4)
    df['depth_km'] = 8.0
    t = lm.metrics_table(lm.constant_baseline(df))
    assert np.allclose(t[['mae', 'rmse', 'bias', 'std']].to_numpy(), 0.0, atol=1e-6)


def test_read_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.csv'):
        lm.read_results(tmp_path / 'nope.csv')
    path = tmp_path / 'x.csv'
    results_frame().drop(columns='pred_depth_km').to_csv(path, index=False)
    with pytest.raises(ValueError, match='pred_depth_km'):
        lm.read_results(path)


def test_write_metrics_columns_and_markdown(tmp_path):
    df = results_frame(dlat=0.1)
    t = lm.metrics_table(lm.location_errors(df))
    b = lm.metrics_table(lm.constant_baseline(df))
    lm.write_metrics(t, tmp_path, baseline=b)
    out = pd.read_csv(tmp_path / 'metrics.csv')
    assert list(out.columns) == ['quantity', 'n', 'mae', 'rmse', 'median', 'p90', 'bias', 'std']
    md = (tmp_path / 'metrics.md').read_text()
    assert md.count('| quantity |') == 2 and 'ratio' in md
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


# ----------------------------------------------------------------- Monte-Carlo uncertainty
def test_sample_spread_in_km():
    lat = 34.0 + np.array([[-0.01], [0.01]])
    lon = np.full((2, 1), -118.0)
    std_n, std_e, epi = lm.sample_spread_km(lat, lon)
    half = Geodesic.WGS84.Inverse(34.0, -118.0, 34.01, -118.0)["s12"] / 1000.0
    assert std_n[0] == pytest.approx(half, rel=1e-3) and std_e[0] == pytest.approx(0, abs=1e-9)
    assert epi[0] == pytest.approx(half, rel=1e-3)


def _csv(n=8, **extra):
    lat = 34.0 + 0.1 * np.arange(n)
    return pd.DataFrame({"trace_name": [f"t{i}" for i in range(n)], "station_lat": lat + 0.3,
                         "station_lon": -118.0, "event_lat": lat, "event_lon": -118.0,
                         "depth_km": 10.0, "pred_event_lat": lat, "pred_event_lon": -118.0,
                         "pred_depth_km": 10.0, **extra})


def test_coverage_on_known_answers():
    # depth errors of 0.5, 1.5, 2.5 and 3.5 sigma (two traces each), sigma = 2 km
    err = np.repeat([0.5, 1.5, 2.5, 3.5], 2) * 2.0
    df = _csv(pred_depth_km=10.0 + err * np.tile([1, -1], 4), pred_depth_km_std=2.0,
              pred_event_lat_std=0.01, pred_event_lon_std=0.01, pred_epicentre_std_km=1.0)
    table = lm.coverage_table(df, lm.location_errors(df)).set_index("quantity")
    assert table.loc["depth_km", "coverage_1sigma"] == 0.25
    assert table.loc["depth_km", "coverage_2sigma"] == 0.5
    assert table.loc["depth_km", "expected_1sigma"] == pytest.approx(0.6827, abs=1e-4)
    assert table.loc["epicentral_km", "expected_2sigma"] == pytest.approx(1 - np.exp(-4))
    assert table.loc["lat_deg", "coverage_1sigma"] == 1.0       # zero lat error
    assert "spearman_std_abs_error" in table.columns


def test_calibrated_gaussian_errors_lie_on_the_diagonal():
    r = np.random.default_rng(0)
    n, sigma = 4000, r.uniform(0.5, 3.0, 4000)
    north, east = r.standard_normal(n) * sigma, r.standard_normal(n) * sigma
    errors = pd.DataFrame({"lat_deg": r.standard_normal(n) * sigma, "lon_deg": 0.0,
                           "depth_km": r.standard_normal(n) * sigma,
                           "epicentral_km": np.hypot(north, east), "hypocentral_km": 0.0})
    df = pd.DataFrame({"pred_event_lat_std": sigma, "pred_depth_km_std": sigma,
                       "pred_epicentre_std_km": np.sqrt(2) * sigma})
    curve = lm.reliability_curve(df, errors)
    assert set(curve["quantity"]) == {"lat_deg", "depth_km", "epicentral_km"}
    assert np.abs(curve["observed"] - curve["expected"]).max() < 0.04
    cov = lm.coverage_table(df, errors).set_index("quantity")
    assert cov.loc["epicentral_km", "coverage_1sigma"] == pytest.approx(0.632, abs=0.03)
    assert cov.loc["depth_km", "coverage_2sigma"] == pytest.approx(0.954, abs=0.02)


def test_breakdown_bins_on_known_answers():
    df = _csv(6, magnitude=[0.5, 1.5, 1.5, 2.5, 2.5, 2.5], snr_db=np.nan)
    df["depth_km"] = [2.0, 7.0, 7.0, 12.0, 12.0, 40.0]
    df["pred_depth_km"] = df["depth_km"] + [1, 2, 4, 0, 0, 10]
    df["pred_event_lat"] = df["event_lat"] + 0.1        # ~11 km epicentral error
    errors = lm.location_errors(df)
    table = lm.breakdown_table(df, errors, lm.constant_baseline(df))
    assert set(table["attribute"]) == {"epicentral_distance_km", "true_depth_km", "magnitude"}
    depth = table[table["attribute"] == "true_depth_km"].set_index("bin")
    assert list(depth["n"]) == [1, 2, 2, 1]
    assert depth.loc["[5.0, 10.0)", "depth_mae_km"] == pytest.approx(3.0)
    mag = table[table["attribute"] == "magnitude"].set_index("bin")
    assert list(mag["n"]) == [1, 2, 3]
    dist = table[table["attribute"] == "epicentral_distance_km"]
    assert dist["n"].sum() == 6 and (dist["bin"] == "[20.0, 40.0)").all()  # 0.3 deg ~ 33 km
    assert (table["epicentral_mae_km"] > 10.5).all() and (table["epicentral_mae_km"] < 11.5).all()
    assert (table["baseline_epicentral_mae_km"] < 1e-6).all()  # every offset equal
