"""locator's options, each declared once: name, default, command-line help, docstring text.

:data:`LOCATE_OPTIONS` is the one table, in ``locator``'s signature order. From
it come the locator's command line (:func:`build_parser`), the Parameters
section of ``locator``'s docstring (:func:`document`) and the fields of
:class:`utrans_loc.locate.LocateConfig` (:func:`config_fields`, defaults
included). ``locator`` keeps its explicit signature, so a user reads the
defaults where they call it; :func:`signature_mismatches` (run by the tests)
keeps that signature and the table the same.

The options the locator shares with tester1 (``--input_model``,
``--output_name``, the Monte-Carlo and batch options, ``--verbose``) are
added by :mod:`utrans_loc.cli`'s helpers, so both stages say them alike: their
rows name the helper (``shared``) instead of a help text.

Adding a locator option: one row here and one parameter in ``locator``'s
signature (the tests say when they differ); ``report_items`` in
:mod:`utrans_loc.locate` if report.txt should show it.

Imports no deep-learning backend (``--help`` stays fast and quiet): only the
modules that own the defaults (velocity, origins, waveforms, solutions, pick_formats).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import textwrap
from typing import Callable

from utrans_loc import cli, origins, pick_formats, solutions, velocity, waveforms

# locate.DEFAULT_P_POSITION_S, named in --p_position_s's help (locate imports the
# backend; the tests keep the two equal).
P_POSITION_FALLBACK_S = 7.0
ORIGIN_GROUP = "multi-station origin (events with picks at 2+ stations)"


@dataclasses.dataclass(frozen=True)
class Option:
    """One parameter of ``locator``.

    Parameters
    ----------
    name : str
        The parameter name (also ``--name`` on the command line and the
        :class:`~utrans_loc.locate.LocateConfig` field).
    default : object
        Its default, as ``locator``'s signature has it.
    kind : str
        The type line of the numpy-style docstring ('int', 'float or None', ...).
    doc : str
        The docstring text.
    help : str or None
        Command-line help (argparse adds the default); None for a ``shared`` option,
        whose help the cli helper writes.
    cli : dict
        Further ``add_argument`` keywords (type, choices, action, nargs, required).
    group : str or None
        The ``--help`` section (argparse group title); None: the main options.
    shared : str or None
        The :data:`SHARED` helper of :mod:`utrans_loc.cli` that adds this option.
    value : callable or None
        Makes the LocateConfig value of what a caller or the command line gives
        (e.g. comma-separated codes to a tuple); None: kept as given.
    shown : callable or None
        The command line's default from ``default`` (e.g. codes joined by commas);
        None: ``default`` (a list for ``nargs``, as argparse returns it).
    """

    name: str
    default: object
    kind: str
    doc: str
    help: str | None = None
    cli: dict = dataclasses.field(default_factory=dict)
    group: str | None = None
    shared: str | None = None
    value: Callable | None = None
    shown: Callable | None = None

    @property
    def cli_default(self):
        """The default as the command line holds it (what ``--help`` shows)."""
        if self.shown is not None:
            return self.shown(self.default)
        return list(self.default) if self.cli.get("nargs") else self.default

    def config_value(self, given):
        """The LocateConfig value of ``given`` (a ``locator`` argument or a parsed option)."""
        return given if self.value is None else self.value(given)


def channel_codes(codes):
    """'HH,BH' (the command line) or a sequence of codes -> a tuple of codes."""
    if isinstance(codes, str):
        codes = [c.strip() for c in codes.split(",") if c.strip()]
    return tuple(codes)


def pick_errors(values):
    """The (P, S) pick errors as a tuple of floats."""
    return tuple(float(v) for v in values)


def _float(name, default, kind, help, doc, group=None):
    return Option(name, default, kind, doc, help, {"type": float}, group)


def _origin(name, default, help, doc, kind="float"):
    return _float(name, default, kind, help, doc, ORIGIN_GROUP)


CALIBRATION_HELP = "calibration.json of tester1 for this model (scales the std)"

# The cli helpers that add the options the locator shares with tester1; each is
# called once, at its first row, with the table's defaults. (--debug comes with
# add_summary_options.)
SHARED = {
    "input_model": lambda parser, defaults: cli.add_input_model(parser),
    "output_name": cli.add_output_name,
    "prediction": lambda parser, defaults: cli.add_prediction_options(
        parser, defaults, per="pick", batch_of="windows", calibration_help=CALIBRATION_HELP),
    "summary": cli.add_summary_options,
}

# In locator's signature order (a test checks both).
LOCATE_OPTIONS = (
    Option("input_waveforms", None, "str or None",
           "A folder (its files) or a glob (``'data/**/*.mseed'``) of waveform files ObsPy "
           "reads: miniSEED, SAC, ... They are indexed once by their headers; each pick reads "
           "only the span its window needs. Files ObsPy cannot read are skipped with a "
           "warning. Give this or ``input_sds``.",
           "folder or glob of waveform files ObsPy reads (miniSEED, SAC, ...); "
           "this or --input_sds"),
    Option("input_sds", None, "str or None",
           "The root folder of an SDS archive "
           "(``YEAR/NET/STA/CHAN.D/NET.STA.LOC.CHAN.D.YEAR.DOY``), read by time span with "
           "ObsPy's SDS client. Give this or ``input_waveforms``.",
           "root folder of an SDS archive (YEAR/NET/STA/CHAN.D/...); this or --input_waveforms"),
    Option("input_inventory", None, "str",
           "StationXML (coordinates; channel azimuth and dip for the rotation), or a CSV "
           "``network,station,latitude,longitude`` (optional ``elevation``; no orientations, "
           "so channels must be E/N/Z).",
           "StationXML, or CSV network,station,latitude,longitude (channels E/N/Z)",
           {"required": True}),
    Option("input_picks", None, "str",
           "CSV ``network,station,p_time`` (ISO 8601 UTC; the column may be called ``time``), "
           "optional ``phase`` (P when absent; P, Pg, Pn, Pb, S, Sg, Sn, Sb), ``event_id`` "
           "(picks sharing one are combined into one event), ``location`` and "
           "``p_position_s`` (this pick's P position in the window); or an event file ObsPy "
           "reads (QuakeML: its picks by phase hint, grouped by event). Only P picks make "
           "windows; S picks are kept (result ``s_picks``, Picks in events.xml); picks of "
           "another or no phase are listed in skipped.csv.",
           "CSV network,station,p_time[,phase,event_id,location,p_position_s] or QuakeML",
           {"required": True}),
    Option("picks_format", "auto", "str",
           "The layout of ``input_picks``. 'auto': told by a CSV's columns, else by the "
           "file's text; or one of 'locator' (the CSV above), 'quakeml' (an event file "
           "ObsPy reads), 'seisbench', 'phasenet', 'gamma', 'pyocto', 'eqtransformer', "
           "'nlloc_obs': the files those tools write (columns and documentation in "
           "docs/locating.md, :mod:`utrans_loc.pick_formats`). Their station ids are split "
           "into network, station and location (a station code without its network is "
           "looked up in ``input_inventory``), a pick's probability or score is kept, and "
           "picks an associator put into one event (GaMMA, PyOcto, an NLLOC_OBS block) are "
           "combined; the others are each located at their own station, as picks without "
           "an event_id are.",
           "layout of --input_picks: auto (by its columns or text), or the file of: "
           "locator, quakeml, seisbench, phasenet, gamma, pyocto, eqtransformer, nlloc_obs",
           {"choices": pick_formats.FORMATS}),
    Option("input_model", None, "str",
           "Location weights: trainer1's ``.weights.h5`` (head size and depth range from the "
           "``model_config.json`` beside it) or an upstream Keras 2 ``.h5``.",
           shared="input_model"),
    Option("output_name", "locator", "str",
           "Results go to ``<output_name>_outputs/`` (must not exist).", shared="output_name"),
    _float("p_position_s", None, "float or None",
           "seconds from window start to the P pick; default: model_config.json, "
           f"else {P_POSITION_FALLBACK_S:g}",
           "Seconds from the window start to the P pick; None: the checkpoint's "
           f"model_config.json ``p_position_s``, else {P_POSITION_FALLBACK_S:g} s. A "
           "``p_position_s`` column in the picks overrides it per pick."),
    Option("bandpass", None, "bool or None",
           "Band-pass 1-45 Hz and taper the window as the DataCollected builder did. None: "
           "on, because the model's training waveforms were band-passed, in the DataCollected "
           "file or on reading (``trainer1 --bandpass``; model_config.json's ``bandpass`` only "
           "says which). False only for a model trained on unfiltered waveforms.",
           "band-pass 1-45 Hz and taper each window as the training data were; "
           "default: on (the training waveforms were band-passed)",
           {"action": argparse.BooleanOptionalAction}),
    Option("channel_priority", waveforms.DEFAULT_CHANNEL_PRIORITY, "sequence of str",
           "Band+instrument codes tried in order (the first with three components that "
           "covers the window is used); other codes are not used. A string is split at its "
           "commas (``'HH,BH'``).",
           "band+instrument codes tried in order, comma-separated",
           value=channel_codes, shown=",".join),
    _float("max_gap_s", waveforms.MAX_GAP_S, "float",
           "longest gap inside a window that is interpolated (s)",
           "Gaps inside the window up to this long are interpolated; longer ones skip the "
           "pick."),
    Option("estimate_uncertainty", False, "bool",
           "Monte-Carlo dropout (as tester1): the prediction is the mean of "
           "``number_of_sampling`` passes, the CSV gets the std columns and the QuakeML "
           "origins their uncertainties; the multi-station origin weights each station by "
           "them (else by ``DEFAULT_SPREAD_KM`` of :mod:`utrans_loc.origins` for ``hybrid``; "
           "for ``weighted``, the plain mean). A model trained with ``--aleatoric`` gives std "
           "columns without sampling too (its predicted variance; with sampling the total).",
           shared="prediction"),
    Option("number_of_sampling", 20, "int",
           "Passes per pick with ``estimate_uncertainty``.", shared="prediction"),
    Option("calibration", None, "str or None",
           "A ``calibration.json`` fitted by tester1 on this very model file: scales the std "
           "(the raw spread kept as ``*_std_raw``). Needs ``estimate_uncertainty`` or a model "
           "trained with ``--aleatoric``.", CALIBRATION_HELP, shared="prediction"),
    Option("seed", None, "int or None", "Seed of the Monte-Carlo sampling.",
           shared="prediction"),
    Option("batch_size", 40, "int", "Windows per prediction batch.", shared="prediction"),
    Option("combine", "hybrid", "{" + ", ".join(map(repr, solutions.COMBINE_METHODS)) + "}",
           "The preferred origin of an event with picks at 2+ stations. 'hybrid': the "
           "maximum of a posterior over latitude, longitude, depth and origin time in which "
           "each station's estimate is a Gaussian prior (its 1-sigma errors) and each P and "
           "S pick a Gaussian likelihood of its arrival time (pick error plus "
           "``model_error`` x travel time), travel times from ``vp``/``vs`` or "
           "``velocity_model``; one Arrival per pick with its residual, the error ellipse, "
           "origin time error, RMS residual and azimuthal gap (:mod:`utrans_loc.origins`). "
           "'weighted': the inverse-variance mean of the estimates (2+ located stations; "
           "arrival times unused). One station: its own Origin.",
           "hybrid: single-station estimates as priors + P/S arrival times; "
           "weighted: inverse-variance mean of the estimates",
           {"choices": solutions.COMBINE_METHODS}, ORIGIN_GROUP),
    *(_origin(name, default, f"{name[1].upper()} velocity of a homogeneous half-space "
                             "(km/s), without --velocity_model", doc)
      for name, default, doc in (
          ("vp", velocity.VP_KM_S, "P velocity (km/s) of a homogeneous half-space (straight "
                                   "rays) for ``hybrid``, when no ``velocity_model`` is given."),
          ("vs", velocity.VS_KM_S, "S velocity (km/s) of the half-space of ``vp``."))),
    Option("velocity_model", None, "str or None",
           "A 1-D model file, one ``depth_top_km, vp, vs`` line per layer (tops increasing "
           "from 0, ``#`` comments); travel times are ObsPy TauP's first arrivals (a table "
           "built once per run, ~20 s).",
           "1-D model file, one 'depth_top_km, vp, vs' line per layer "
           "(travel times by ObsPy TauP)", group=ORIGIN_GROUP),
    Option("pick_std_s", (origins.PICK_STD_S["P"], origins.PICK_STD_S["S"]), "(float, float)",
           "Pick errors of P and S picks (s).", "pick errors of P and S picks (s)",
           {"type": float, "nargs": 2, "metavar": ("P", "S")}, ORIGIN_GROUP,
           value=pick_errors),
    _origin("model_error", origins.MODEL_ERROR,
            "velocity-model travel-time error, a fraction of the travel time",
            "Travel-time error of the velocity model, a fraction of the travel time "
            "(NonLinLoc's model error): added in quadrature to the pick error."),
    _origin("depth_correlation", origins.DEPTH_CORRELATION,
            "correlation of the stations' depth errors (hybrid; 0: independent)",
            "Correlation of the depth errors of one event's single-station estimates (0.86 "
            "measured on a synthetic network; the horizontal errors do not correlate): each "
            "station's depth prior variance is multiplied by ``1 + (n - 1) * "
            "depth_correlation``, so n stations do not count as n independent depths."),
    _origin("max_rms_s", origins.MAX_RMS_S,
            "flag hybrid origins whose RMS residual exceeds this (s)",
            "A hybrid origin whose RMS residual exceeds this (s) is flagged in its Origin "
            "comment and in events.csv (located, not dropped)."),
    Option("figures", True, "bool", "Write ``figures/map.png``.", "write figures/map.png",
           {"action": argparse.BooleanOptionalAction}),
    Option("verbose", 1, "int", "0: quiet; 1: progress bar and summary.", shared="summary"),
)

NAMES = tuple(opt.name for opt in LOCATE_OPTIONS)


def defaults():
    """{name: default} of the command line (what the cli helpers take)."""
    return {opt.name: opt.cli_default for opt in LOCATE_OPTIONS}


def build_parser(description):
    """The locator's command line: one option per row, in the table's order and
    groups (the shared ones by their cli helper), then --debug."""
    parser = argparse.ArgumentParser(description=description, formatter_class=cli.Formatter)
    shown, groups, added = defaults(), {None: parser}, set()
    for opt in LOCATE_OPTIONS:
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group)
        where = groups[opt.group]
        if opt.shared is None:
            where.add_argument(f"--{opt.name}", default=shown[opt.name], help=opt.help,
                               **opt.cli)
        elif opt.shared not in added:
            SHARED[opt.shared](where, shown)
            added.add(opt.shared)
    return parser


def config_values(values):
    """{field: value} of a LocateConfig from ``locator``'s arguments (or the parsed
    command line): every option of the table, each made by its ``value``; other keys
    (``debug``, a function's other locals) are left out."""
    return {opt.name: opt.config_value(values[opt.name]) for opt in LOCATE_OPTIONS}


def config_fields():
    """``dataclasses.make_dataclass`` fields of LocateConfig: every option, with its
    default made as ``locator`` makes it (a tuple of codes, a tuple of floats)."""
    return [(opt.name, opt.kind, dataclasses.field(default=opt.config_value(opt.default)))
            for opt in LOCATE_OPTIONS]


def parameters_doc(indent=""):
    """The numpy-style Parameters entries of the table (name : kind, then the text)."""
    lines = []
    for opt in LOCATE_OPTIONS:
        lines.append(f"{indent}{opt.name} : {opt.kind}")
        lines += textwrap.wrap(opt.doc, 88 - len(indent) - 4, initial_indent=indent + "    ",
                               subsequent_indent=indent + "    ", break_on_hyphens=False)
    return "\n".join(lines)


def document(func):
    """Fill the ``{parameters}`` line of ``func``'s docstring from the table; returns ``func``."""
    if func.__doc__ is None:   # python -OO strips docstrings
        return func
    match = re.search(r"^( *)\{parameters\}$", func.__doc__, flags=re.M)
    if match is None:
        raise ValueError(f"{func.__name__}'s docstring has no {{parameters}} line")
    func.__doc__ = (func.__doc__[:match.start()] + parameters_doc(match.group(1))
                    + func.__doc__[match.end():])
    return func


def signature_mismatches(func):
    """What differs between ``func``'s parameters (names, order, defaults) and the table."""
    params = inspect.signature(func).parameters
    if tuple(params) != NAMES:
        return [f"parameters {list(params)} != table {list(NAMES)}"]
    return [f"{opt.name}: signature default {params[opt.name].default!r} != table "
            f"{opt.default!r}" for opt in LOCATE_OPTIONS
            if params[opt.name].default != opt.default]
