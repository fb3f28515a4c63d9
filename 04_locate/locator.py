"""Stage 04: locate events from your own waveform files (locator).

Example::

    python 04_locate/locator.py --input_waveforms event_files/waveforms \\
        --input_inventory event_files/stations.xml --input_picks event_files/picks.csv \\
        --input_model california_outputs/models/california_031.weights.h5 \\
        --output_name my_events --estimate_uncertainty --number_of_sampling 20

Waveforms come from files (--input_waveforms, indexed by their headers) or an
SDS archive (--input_sds); each pick reads only the span its window needs.
Each P pick becomes one 60 s, 100 Hz E/N/Z window of its station (channel
choice, merge, resampling and rotation with ObsPy), band-passed and
normalised as the training data were, and one single-station location; S
picks are kept for their events. Writes ``<output_name>_outputs/``:
``locations.csv`` (one row per located pick), ``skipped.csv`` (picks that
could not be used, with the reason), ``events.csv`` (one row per event, its
preferred origin), ``events.xml`` (QuakeML: one Event per event_id, one
Origin per station and, for picks at 2+ stations, a preferred Origin from the
estimates and the P and S arrival times, ``--combine hybrid``, or their
inverse-variance mean, ``--combine weighted``), ``figures/map.png`` and
``report.txt``. An existing output folder is never touched.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utrans_loc import cli  # noqa: E402  (no backend import: it sets the environment first)

if __name__ == "__main__":
    cli.prepare_environment()

# Not locate: it imports the backend (run after prepare_environment), and --help
# must not wait for it.
from utrans_loc import locate_options, origins, velocity, waveforms  # noqa: E402


def locator(input_waveforms=None,
            input_sds=None,
            input_inventory=None,
            input_picks=None,
            picks_format="auto",
            input_model=None,
            output_name="locator",
            p_position_s=None,
            bandpass=None,
            channel_priority=waveforms.DEFAULT_CHANNEL_PRIORITY,
            max_gap_s=waveforms.MAX_GAP_S,
            estimate_uncertainty=False,
            number_of_sampling=20,
            calibration=None,
            seed=None,
            batch_size=40,
            combine="hybrid",
            vp=velocity.VP_KM_S,
            vs=velocity.VS_KM_S,
            velocity_model=None,
            pick_std_s=(origins.PICK_STD_S["P"], origins.PICK_STD_S["S"]),
            model_error=origins.MODEL_ERROR,
            depth_correlation=origins.DEPTH_CORRELATION,
            max_rms_s=origins.MAX_RMS_S,
            figures=True,
            verbose=1):
    """Locate P picks on waveform files and write ``<output_name>_outputs/``.

    Parameters
    ----------
    {parameters}

    Returns
    -------
    utrans_loc.locate.LocateResult
        ``output_dir``, ``locations``, ``events`` (events.csv's table),
        ``skipped`` and ``s_picks`` (the S picks with their station's
        coordinates) (DataFrames), ``stations`` (the inventory read,
        :class:`utrans_loc.stations.Stations`), ``settings``, ``timings``,
        ``time_s``.
    """
    from utrans_loc import locate   # the backend loads here, not at import (fast --help)

    return locate.run(locate.LocateConfig(**locate_options.config_values(locals())))


# {parameters} is filled from locate_options.LOCATE_OPTIONS, where each option's text and
# command-line help are written once; the tests keep the defaults above equal to it.
locate_options.document(locator)


def build_parser():
    """The command line: one option per row of ``locate_options.LOCATE_OPTIONS``, and --debug."""
    return locate_options.build_parser(__doc__)


def main(argv=None):
    return cli.run_main(locator, vars(build_parser().parse_args(argv)), "locator")


if __name__ == "__main__":
    sys.exit(main())
