"""The locator's options are declared once (utrans_loc.locate_options): the table,
locator()'s signature, its docstring, the command line, LocateConfig and report.txt
agree; a command line becomes the LocateConfig the Python call would make."""

import dataclasses
import inspect
import re
import sys

import pandas as pd
import pytest
from conftest import ROOT, run_script

sys.path.insert(0, str(ROOT / "04_locate"))

import locator as lc  # noqa: E402
from utrans_loc import locate, locate_options, origins, solutions, velocity, waveforms  # noqa: E402

TABLE = locate_options.LOCATE_OPTIONS
NAMES = [opt.name for opt in TABLE]
# A typical command line (its three required inputs are not read: run is replaced).
REQUIRED = ["--input_inventory", "stations.xml", "--input_picks", "picks.csv",
            "--input_model", "model.weights.h5"]
# Options report.txt shows by another name: the settings used (p_position_s and
# bandpass as resolved from the checkpoint), the travel-time model's description
# (vp, vs), number_of_sampling as the passes made; figures and verbose only
# change what is written or printed.
NOT_REPORTED = {"p_position_s", "bandpass", "vp", "vs", "figures", "verbose"}


def _actions():
    return {a.dest: a for a in lc.build_parser()._actions}


def _help_entries(text):
    """{first option string: its whole --help entry, whitespace collapsed}."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"  (--?\w[\w-]*)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.fixture
def captured(monkeypatch):
    """locate.run replaced: the LocateConfig each locator call hands it."""
    configs = []
    monkeypatch.setattr(locate, "run", lambda cfg, model=None: configs.append(cfg))
    return configs


def test_signature_matches_the_table():
    assert locate_options.signature_mismatches(lc.locator) == []
    assert len(NAMES) == len(set(NAMES)) == 26


def test_every_config_field_is_an_option_and_a_parameter_with_the_same_default():
    fields = {f.name: f.default for f in dataclasses.fields(locate.LocateConfig)}
    signature = inspect.signature(lc.locator).parameters
    actions = _actions()
    assert list(fields) == list(signature) == NAMES
    assert set(actions) == set(NAMES) | {"help", "debug"}
    for opt in TABLE:
        assert signature[opt.name].default == opt.default, opt.name
        assert actions[opt.name].default == opt.cli_default, opt.name
        # the Python default and the command line's make the same config value
        assert fields[opt.name] == opt.config_value(signature[opt.name].default) \
            == opt.config_value(actions[opt.name].default), opt.name
    # the defaults still come from the modules that own them
    assert fields["channel_priority"] == tuple(waveforms.DEFAULT_CHANNEL_PRIORITY)
    assert fields["max_gap_s"] == waveforms.MAX_GAP_S
    assert (fields["vp"], fields["vs"]) == (velocity.VP_KM_S, velocity.VS_KM_S)
    assert fields["pick_std_s"] == (origins.PICK_STD_S["P"], origins.PICK_STD_S["S"])
    assert (fields["model_error"], fields["depth_correlation"], fields["max_rms_s"]) == \
        (origins.MODEL_ERROR, origins.DEPTH_CORRELATION, origins.MAX_RMS_S)
    assert tuple(actions["combine"].choices) == tuple(solutions.COMBINE_METHODS)
    assert locate_options.P_POSITION_FALLBACK_S == locate.DEFAULT_P_POSITION_S


def test_every_option_has_help_and_documentation():
    actions = _actions()
    for opt in TABLE:
        assert actions[opt.name].help and actions[opt.name].help.strip(), opt.name
        assert opt.doc.strip() and opt.kind.strip(), opt.name
        # a row writes its help, or names the cli helper that does (shared with tester1)
        assert (opt.help is None) != (opt.shared is None) or opt.name == "calibration", opt.name
        if opt.help is not None:
            assert actions[opt.name].help == opt.help, opt.name
    assert actions["debug"].help


def test_docstring_documents_every_parameter_in_order():
    doc = inspect.getdoc(lc.locator)
    assert "{parameters}" not in doc
    documented = re.findall(r"^(\w+) : (.+)$", doc, flags=re.M)
    assert [name for name, _ in documented] == list(inspect.signature(lc.locator).parameters)
    assert dict(documented) == {opt.name: opt.kind for opt in TABLE}
    assert "Returns\n-------" in doc
    # each entry carries the table's text (rewrapped)
    flat = " ".join(doc.split())
    assert all(" ".join(opt.doc.split()) in flat for opt in TABLE)


def test_help_lists_every_option_with_its_default():
    text = lc.build_parser().format_help()
    entries = _help_entries(text)
    for opt in TABLE:
        entry = entries.get(f"--{opt.name}")
        assert entry is not None, f"--{opt.name} not in --help"
        assert entry.endswith(f"(default: {opt.cli_default})"), entry
    assert entries["--channel_priority"].endswith("(default: HH,BH,EH,HN)")
    assert entries["--pick_std_s"].endswith("(default: [0.1, 0.2])")
    assert "--bandpass, --no-bandpass" in text and "--figures, --no-figures" in text
    origin_section = text.split("multi-station origin (events with picks at 2+ stations):")[1]
    for opt in TABLE:
        assert (f"--{opt.name} " in origin_section) == (opt.group is not None), opt.name


def test_command_line_round_trip_to_config(captured):
    argv = ["--input_waveforms", "event_files/waveforms", *REQUIRED, "--output_name", "mine",
            "--channel_priority", "HH, BH", "--pick_std_s", "0.15", "0.3", "--no-bandpass",
            "--no-figures", "--estimate_uncertainty", "--number_of_sampling", "5",
            "--seed", "3", "--combine", "weighted", "--vp", "6.2", "--p_position_s", "5",
            "--max_gap_s", "0.5", "--verbose", "0"]
    args = vars(lc.build_parser().parse_args(argv))
    assert args.pop("debug") is False
    cfg = locate.LocateConfig(**locate_options.config_values(args))
    assert cfg == locate.LocateConfig(
        input_waveforms="event_files/waveforms", input_inventory="stations.xml",
        input_picks="picks.csv", input_model="model.weights.h5", output_name="mine",
        channel_priority=("HH", "BH"), pick_std_s=(0.15, 0.3), bandpass=False, figures=False,
        estimate_uncertainty=True, number_of_sampling=5, seed=3, combine="weighted", vp=6.2,
        p_position_s=5.0, max_gap_s=0.5, verbose=0)
    assert cfg.n_samples == 5
    # main() hands locate.run exactly that config; the Python call with the same values too
    assert lc.main(argv) == 0
    lc.locator(input_waveforms="event_files/waveforms", input_inventory="stations.xml",
               input_picks="picks.csv", input_model="model.weights.h5", output_name="mine",
               channel_priority=["HH", "BH"], pick_std_s=[0.15, "0.3"], bandpass=False,
               figures=False, estimate_uncertainty=True, number_of_sampling=5, seed=3,
               combine="weighted", vp=6.2, p_position_s=5.0, max_gap_s=0.5, verbose=0)
    assert captured == [cfg, cfg]


def test_defaults_round_trip(captured):
    """The bare command line and the bare Python call make the same config: the
    table's defaults (bandpass None: on; figures on; one pass without sampling)."""
    assert lc.main(["--input_sds", "sds", *REQUIRED, "--bandpass"]) == 0
    lc.locator(input_sds="sds", input_inventory="stations.xml", input_picks="picks.csv",
               input_model="model.weights.h5", bandpass=True)
    defaults = locate.LocateConfig(input_sds="sds", input_inventory="stations.xml",
                                   input_picks="picks.csv", input_model="model.weights.h5",
                                   bandpass=True)
    assert captured == [defaults, defaults]
    assert defaults.n_samples == 1 and defaults.figures is True and defaults.verbose == 1
    assert lc.build_parser().parse_args(REQUIRED).bandpass is None


def test_report_names_every_option():
    """report.txt (locate.report_items) shows every option but those it shows by
    another name (NOT_REPORTED); a new option must be added to one or the other."""
    cfg = locate.LocateConfig(input_waveforms="w", input_inventory="i", input_picks="p",
                              input_model="m.h5")
    travel = velocity.velocity_model(cfg.vp, cfg.vs, cfg.velocity_model)
    table = pd.DataFrame({"resampled": ["n"], "rotation_applied": ["n"]})
    items = dict(locate.report_items(cfg, {"p_position_s": 7.0, "bandpass": True}, None, table,
                                     [], {}, 1.0, 0, pd.DataFrame({"flag": [None]}), travel))
    assert NOT_REPORTED <= set(NAMES)
    assert [name for name in NAMES if name not in NOT_REPORTED and name not in items] == []


@pytest.mark.slow
def test_help_is_fast_and_loads_no_backend():
    """--help neither imports the deep-learning backend nor prints its log lines."""
    run = run_script("04_locate/locator.py", "--help", timeout=120)
    assert run.returncode == 0 and run.stderr == ""
    assert "--max_rms_s" in run.stdout
    probe = run_script("-c", "import sys; sys.path.insert(0, '04_locate'); import locator; "
                             "locator.build_parser().format_help(); "
                             "print(sorted({'tensorflow', 'keras', 'jax', 'torch'} "
                             "& set(sys.modules)))", cwd=ROOT, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"
