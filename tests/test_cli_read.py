"""Command line of 03_read/reader.py on hand-made results tables: outputs, figures,
exit status 2 on a bad input."""

import hashlib
import os

import numpy as np
import pytest
from conftest import READ, results_frame, run_main, run_script


def _write(tmp_path, df, name='m_outputs'):
    folder = tmp_path / name
    folder.mkdir()
    df.to_csv(folder / 'X_test_results.csv', index=False)
    return folder


def _run(*args, cwd=None):
    """The reader's main() in this process (its real process: test_cli_end_to_end)."""
    return run_main(READ, *args, cwd=cwd)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    df = results_frame(n=8, dlat=0.05, dlon=0.02, ddep=1.0)
    df['pred_depth_km_std'] = 0.5
    folder = _write(tmp_path, df)
    other = folder / 'X_report.txt'
    other.write_text('tester report\n')
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    first = _run('--input', folder, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # the real process, again: re-running replaces the reader's own outputs
    res = run_script(READ, '--input', folder, cwd=tmp_path, timeout=120)
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
    folder = _write(tmp_path, results_frame(dlat=0.1))
    out = tmp_path / 'elsewhere'
    res = _run('--input', folder, '--output_dir', out, '--no_figures')
    assert res.returncode == 0, res.stderr
    assert (out / 'metrics.csv').exists() and not (out / 'figures').exists()
    assert not (folder / 'metrics.csv').exists()


def test_cli_missing_column_exit_2(tmp_path):
    folder = _write(tmp_path, results_frame().drop(columns='pred_event_lon'))
    res = _run('--input', folder)
    assert res.returncode == 2
    assert 'pred_event_lon' in res.stderr and 'Traceback' not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_missing_folder_exit_2(tmp_path):
    res = _run('--input', tmp_path / 'missing_outputs')
    assert res.returncode == 2
    assert 'missing_outputs' in res.stderr and 'Traceback' not in res.stderr


def test_cli_no_scorable_rows(tmp_path):
    df = results_frame(n=3)
    df[['event_lat', 'event_lon', 'depth_km']] = np.nan
    folder = _write(tmp_path, df)
    res = _run('--input', folder)
    assert res.returncode == 0, res.stderr
    assert '0 scored / 3 total' in res.stdout and 'no scorable rows' in res.stdout
    assert not (folder / 'metrics.csv').exists()
