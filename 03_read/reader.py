"""Stage 03: turn a tester's X_test_results.csv into location metrics and figures.

Usage::

    python 03_read/reader.py --input NAME_outputs [--output_dir D] [--no_figures]

Writes ``metrics.csv``, ``metrics.md`` and ``figures/*.png`` into the output
folder (default: the input folder) and prints the constant-baseline table,
then the model table, then the epicentral-MAE comparison.
"""
import argparse
import os
import sys

# Run from any working directory: utrans_loc lives in the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utrans_loc import cli  # noqa: E402
from utrans_loc import metrics as lm  # noqa: E402
from utrans_loc.figures import make_figures  # noqa: E402
from utrans_loc.metrics import RESULTS_NAME  # noqa: E402


def reader(input, output_dir=None, figures=True):
    """Compute and write location metrics for one tester output folder.

    Parameters
    ----------
    input : str
        Tester output folder containing ``X_test_results.csv``.
    output_dir : str, optional
        Where to write results; defaults to ``input``.
    figures : bool
        Whether to write ``figures/*.png``.

    Returns
    -------
    dict
        ``n_total``, ``n_scored``, ``metrics``, ``baseline``, ``coverage``
        (only with std columns; with a ``spread`` column, raw | calibrated,
        when the tester calibrated them; for a model with a variance head
        the total std), ``ranking`` (a variance head's model only: Spearman
        std vs |error| of each part and the total) and ``breakdown`` (DataFrames,
        None when nothing is scorable), ``uncertainty`` (predicted-std summary
        over all traces, labeled or not; None without std columns), ``paths``
        (files written), ``message`` (why nothing was scored, else None) and
        ``overlap`` (the tester's split-overlap finding when the test split
        shares traces or earthquakes with training, else None).

    Raises
    ------
    FileNotFoundError
        If the folder or the CSV is missing.
    ValueError
        If a required column is missing or predictions are NaN.
    """
    if not os.path.isdir(input):
        raise FileNotFoundError(f"input folder not found: {input}")
    output_dir = input if output_dir is None else output_dir
    df = lm.read_results(os.path.join(input, RESULTS_NAME))
    errors = lm.location_errors(df)
    out = {'n_total': len(df), 'n_scored': len(errors), 'metrics': None,
           'baseline': None, 'coverage': None, 'ranking': None, 'breakdown': None,
           'uncertainty': lm.uncertainty_summary(df), 'paths': [], 'message': None,
           'overlap': None}
    if len(errors) == 0:
        out['message'] = ('no scorable rows: no trace has event_lat/event_lon/depth_km '
                          'truth (unlabeled traces), so there is no error table; '
                          'metrics.csv not written')
        return out
    out['overlap'] = lm.recorded_overlap(os.path.join(input, 'X_report.txt'))
    baseline_errors = lm.constant_baseline(df)
    out['metrics'] = lm.metrics_table(errors)
    out['baseline'] = lm.metrics_table(baseline_errors)
    # A calibrated table is scored with both spreads, so the report shows
    # what the calibration changed.
    if lm.is_calibrated(df):
        out['coverage'] = lm.coverage_comparison(df, errors)
        reliability = lm.reliability_comparison(df, errors)
    else:
        out['coverage'] = lm.coverage_table(df, errors)
        reliability = lm.reliability_curve(df, errors)
    out['ranking'] = lm.ranking_table(df, errors)
    out['breakdown'] = lm.breakdown_table(df, errors, baseline_errors)
    out['paths'] = lm.write_metrics(out['metrics'], output_dir, baseline=out['baseline'],
                                    coverage=out['coverage'], breakdown=out['breakdown'],
                                    reliability=reliability, overlap=out['overlap'],
                                    ranking=out['ranking'])
    if figures:
        out['paths'] += make_figures(df, errors, os.path.join(output_dir, 'figures'),
                                        reliability=reliability, breakdown=out['breakdown'])
    return out


def _report(res):
    """Print the summary; the model table and the comparison line come last."""
    print(f"traces: {res['n_scored']} scored / {res['n_total']} total")
    if res['uncertainty'] is not None:
        print('\npredicted uncertainty (all traces):')
        print(res['uncertainty'].to_string(index=False, float_format=lm.fmt))
    if res['metrics'] is None:
        print(res['message'])
        return
    for p in res['paths']:
        print(f"wrote {p}")
    if res['breakdown'] is not None and len(res['breakdown']):
        print('\nbreakdown (epicentral MAE per bin, model vs constant predictor):')
        print(res['breakdown'].to_string(index=False, float_format=lm.fmt))
    if res['coverage'] is not None:
        print('\nuncertainty calibration (fraction of truths inside 1 / 2 predicted sigma):')
        if 'spread' in res['coverage'].columns:
            print('spread: raw = the std before calibration (*_std_raw), calibrated = scaled '
                  "by the tester's calibration (*_std)")
        print(lm.format_table(res['coverage']))
    if res['ranking'] is not None:
        print('\nwhich part of the error bar ranks the errors (Spearman std vs |error|):')
        print(lm.format_table(res['ranking']))
    print('\nconstant predictor (test-set mean offset, optimistic):')
    print(lm.format_table(res['baseline']))
    print('\nmodel:' + (f" ({lm.OVERLAP_MARK}: {res['overlap']})" if res['overlap'] else ''))
    print(lm.format_table(res['metrics']))
    m, b = (float(t.set_index('quantity').loc['epicentral_km', 'mae'])
            for t in (res['metrics'], res['baseline']))
    ratio = f"{m / b:.3f}" if b > 0 else 'undefined'
    print(f"epicentral MAE: model {m:.2f} km vs constant predictor {b:.2f} km (ratio {ratio})")


def build_parser():
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=cli.Formatter)
    p.add_argument('--input', required=True,
                   help=f'tester output folder (NAME_outputs) holding {RESULTS_NAME}')
    p.add_argument('--output_dir', default=None,
                   help='folder for metrics.csv, metrics.md and figures/; if not given, the input folder')
    p.add_argument('--no_figures', action='store_true', help='skip writing figures/*.png')
    cli.add_debug(p)
    return p


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    args = vars(build_parser().parse_args(argv))
    figures = not args.pop('no_figures')
    return cli.run_main(
        lambda input, output_dir: _report(reader(input, output_dir, figures=figures)),
        args, 'reader')


if __name__ == '__main__':
    sys.exit(main())
