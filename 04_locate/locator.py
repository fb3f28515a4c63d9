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

from utrans_loc import locate, origins, velocity, waveforms  # noqa: E402


def locator(input_waveforms=None,
            input_sds=None,
            input_inventory=None,
            input_picks=None,
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
    input_waveforms : str or None
        A folder (its files) or a glob (``'data/**/*.mseed'``) of waveform
        files ObsPy reads: miniSEED, SAC, ... They are indexed once by their
        headers; each pick reads only the span its window needs. Files ObsPy
        cannot read are skipped with a warning. Give this or ``input_sds``.
    input_sds : str or None
        The root folder of an SDS archive
        (``YEAR/NET/STA/CHAN.D/NET.STA.LOC.CHAN.D.YEAR.DOY``), read by time
        span with ObsPy's SDS client. Give this or ``input_waveforms``.
    input_inventory : str
        StationXML (coordinates; channel azimuth and dip for the rotation),
        or a CSV ``network,station,latitude,longitude`` (optional
        ``elevation``; no orientations, so channels must be E/N/Z).
    input_picks : str
        CSV ``network,station,p_time`` (ISO 8601 UTC, or POSIX seconds; the column may be
        called ``time``), optional ``phase`` (P when absent; P, Pg, Pn, Pb,
        S, Sg, Sn, Sb), ``event_id`` (picks sharing one are combined into one
        event), ``location`` and ``p_position_s`` (this pick's P position in
        the window); or an event file ObsPy reads (QuakeML: its picks by
        phase hint, grouped by event). Only P picks make windows; S picks are
        kept (result ``s_picks``, Picks in events.xml); picks of another or
        no phase are listed in skipped.csv.
    input_model : str
        Location weights: trainer1's ``.weights.h5`` (head size and depth
        range from the ``model_config.json`` beside it) or an upstream Keras 2 ``.h5``.
    output_name : str
        Results go to ``<output_name>_outputs/`` (must not exist).
    p_position_s : float or None
        Seconds from the window start to the P pick; None: the checkpoint's
        model_config.json ``p_position_s``, else 7 s. A ``p_position_s``
        column in the picks overrides it per pick.
    bandpass : bool or None
        Band-pass 1-45 Hz and taper the window as the DataCollected builder
        did. None: on, because the model's training waveforms were
        band-passed, in the DataCollected file or on reading
        (``trainer1 --bandpass``; model_config.json's ``bandpass`` only says
        which). False only for a model trained on unfiltered waveforms.
    channel_priority : sequence of str
        Band+instrument codes tried in order (the first with three
        components that covers the window is used); other codes are not used.
    max_gap_s : float
        Gaps inside the window up to this long are interpolated; longer ones
        skip the pick.
    estimate_uncertainty : bool
        Monte-Carlo dropout (as tester1): the prediction is the mean of
        ``number_of_sampling`` passes, the CSV gets the std columns and the
        QuakeML origins their uncertainties; the multi-station origin
        weights each station by them (else by ``DEFAULT_SPREAD_KM`` of
        :mod:`utrans_loc.origins` for ``hybrid``; for ``weighted``, the
        plain mean). A model trained with ``--aleatoric`` gives std columns
        without sampling too (its predicted variance; with sampling the total).
    number_of_sampling : int
        Passes per pick with ``estimate_uncertainty``.
    calibration : str or None
        A ``calibration.json`` fitted by tester1 on this very model file:
        scales the std (the raw spread kept as ``*_std_raw``). Needs
        ``estimate_uncertainty`` or a model trained with ``--aleatoric``.
    seed : int or None
        Seed of the Monte-Carlo sampling.
    batch_size : int
        Windows per prediction batch.
    combine : {'hybrid', 'weighted'}
        The preferred origin of an event with picks at 2+ stations.
        'hybrid': the maximum of a posterior over latitude, longitude, depth
        and origin time in which each station's estimate is a Gaussian prior
        (its 1-sigma errors) and each P and S pick a Gaussian likelihood of
        its arrival time (pick error plus ``model_error`` x travel time),
        travel times from ``vp``/``vs`` or ``velocity_model``; one Arrival
        per pick with its residual, the error ellipse, origin time error,
        RMS residual and azimuthal gap (:mod:`utrans_loc.origins`).
        'weighted': the inverse-variance mean of the estimates (2+ located
        stations; arrival times unused). One station: its own Origin.
    vp, vs : float
        P and S velocity (km/s) of a homogeneous half-space (straight rays)
        for ``hybrid``, when no ``velocity_model`` is given.
    velocity_model : str or None
        A 1-D model file, one ``depth_top_km, vp, vs`` line per layer (tops
        increasing from 0, ``#`` comments); travel times are ObsPy TauP's
        first arrivals (a table built once per run, ~20 s).
    pick_std_s : (float, float)
        Pick errors of P and S picks (s).
    model_error : float
        Travel-time error of the velocity model, a fraction of the travel
        time (NonLinLoc's model error): added in quadrature to the pick error.
    depth_correlation : float
        Correlation of the depth errors of one event's single-station
        estimates (0.86 measured on a synthetic network; the horizontal
        errors do not correlate): each station's depth prior variance is
        multiplied by ``1 + (n - 1) * depth_correlation``, so n stations do
        not count as n independent depths.
    max_rms_s : float
        A hybrid origin whose RMS residual exceeds this (s) is flagged in its
        Origin comment and in events.csv (located, not dropped).
    figures : bool
        Write ``figures/map.png``.
    verbose : int
        0: quiet; 1: progress bar and summary.

    Returns
    -------
    dict
        ``output_dir``, ``locations``, ``events`` (events.csv's table),
        ``skipped`` and ``s_picks`` (the S
        picks with their station's coordinates) (DataFrames), ``stations``
        (the inventory read, :class:`utrans_loc.stations.Stations`),
        ``catalog`` (obspy Catalog), ``pred`` (model outputs), ``x`` (model
        inputs), ``settings``, ``timings``, ``time_s``.
    """
    if isinstance(channel_priority, str):
        channel_priority = [c.strip() for c in channel_priority.split(",") if c.strip()]
    cfg = dict(locals())
    cfg["channel_priority"] = tuple(channel_priority)
    cfg["pick_std_s"] = tuple(float(v) for v in pick_std_s)
    return locate.run(locate.LocateConfig(**cfg))


def build_parser():
    """The command line; every default is locator's own."""
    import argparse

    d = cli.defaults_of(locator)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.Formatter)
    p.add_argument("--input_waveforms", default=d["input_waveforms"],
                   help="folder or glob of waveform files ObsPy reads (miniSEED, SAC, ...); "
                        "this or --input_sds")
    p.add_argument("--input_sds", default=d["input_sds"],
                   help="root folder of an SDS archive (YEAR/NET/STA/CHAN.D/...); "
                        "this or --input_waveforms")
    p.add_argument("--input_inventory", required=True,
                   help="StationXML, or CSV network,station,latitude,longitude (channels E/N/Z)")
    p.add_argument("--input_picks", required=True,
                   help="CSV network,station,p_time[,phase,event_id,location,p_position_s] "
                        "or QuakeML")
    cli.add_input_model(p)
    cli.add_output_name(p, d)
    p.add_argument("--p_position_s", type=float, default=d["p_position_s"],
                   help="seconds from window start to the P pick; default: model_config.json, "
                        f"else {locate.DEFAULT_P_POSITION_S:g}")
    p.add_argument("--bandpass", action=argparse.BooleanOptionalAction, default=d["bandpass"],
                   help="band-pass 1-45 Hz and taper each window as the training data were; "
                        "default: on (the training waveforms were band-passed)")
    p.add_argument("--channel_priority", default=",".join(d["channel_priority"]),
                   help="band+instrument codes tried in order, comma-separated")
    p.add_argument("--max_gap_s", type=float, default=d["max_gap_s"],
                   help="longest gap inside a window that is interpolated (s)")
    cli.add_prediction_options(
        p, d, per="pick", batch_of="windows",
        calibration_help="calibration.json of tester1 for this model (scales the std)")
    g = p.add_argument_group("multi-station origin (events with picks at 2+ stations)")
    g.add_argument("--combine", choices=locate.COMBINE_METHODS, default=d["combine"],
                   help="hybrid: single-station estimates as priors + P/S arrival times; "
                        "weighted: inverse-variance mean of the estimates")
    g.add_argument("--vp", type=float, default=d["vp"],
                   help="P velocity of a homogeneous half-space (km/s), without --velocity_model")
    g.add_argument("--vs", type=float, default=d["vs"],
                   help="S velocity of a homogeneous half-space (km/s), without --velocity_model")
    g.add_argument("--velocity_model", default=d["velocity_model"],
                   help="1-D model file, one 'depth_top_km, vp, vs' line per layer "
                        "(travel times by ObsPy TauP)")
    g.add_argument("--pick_std_s", type=float, nargs=2, metavar=("P", "S"),
                   default=list(d["pick_std_s"]), help="pick errors of P and S picks (s)")
    g.add_argument("--model_error", type=float, default=d["model_error"],
                   help="velocity-model travel-time error, a fraction of the travel time")
    g.add_argument("--depth_correlation", type=float, default=d["depth_correlation"],
                   help="correlation of the stations' depth errors (hybrid; 0: independent)")
    g.add_argument("--max_rms_s", type=float, default=d["max_rms_s"],
                   help="flag hybrid origins whose RMS residual exceeds this (s)")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=d["figures"],
                   help="write figures/map.png")
    return cli.add_summary_options(p, d)


def main(argv=None):
    return cli.run_main(locator, vars(build_parser().parse_args(argv)), "locator")


if __name__ == "__main__":
    sys.exit(main())
