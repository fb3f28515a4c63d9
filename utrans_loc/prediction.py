"""tester1's run: rebuild the trained model, predict a split, write the results table.

``02_test/tester1.py`` holds the upstream signature, its documentation and the
command line and hands one :class:`TestConfig` to :func:`run`. With a
calibration (fitted here on ``calibration_set``, or a saved ``calibration``)
the std columns are scaled by :mod:`utrans_loc.uncertainty` and the raw
Monte-Carlo spread is kept beside them.
:func:`predict_samples` (deterministic or Monte-Carlo) reads any
:class:`BatchSource`; :func:`location_columns` turns its output into the
prediction columns and :func:`results_table` adds the truth beside them. These
are the library part, used by anything that predicts (the locator too).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import keras
import numpy as np
from tqdm import tqdm

import EqT_utils_Loc_California as U
import utrans_backbone as ub
from utrans_loc import checkpoints, devices, files, metrics, splits, uncertainty
from utrans_loc.uncertainty import mc_sampling_model


@runtime_checkable
class BatchSource(Protocol):
    """What :func:`predict_samples` reads: batches of normalised model input.

    ``U.DataGeneratorPrediction`` (traces of an HDF5 file) and
    :class:`ArrayBatches` (windows already in memory) are the two sources.
    """

    batch_size: int      # a short last batch is padded to this size
    dim: tuple           # the shape of one input, (npts, channels)

    def __len__(self) -> int:
        """Number of batches."""

    def __getitem__(self, index: int) -> tuple:
        """``(x,)``: batch ``index``, float32 of shape (n <= batch_size, *dim)."""


class ArrayBatches:
    """A :class:`BatchSource` over model input already in memory (N, *dim).

    The batch size is capped at N: a few windows are padded to N, not to a
    batch of 40.
    """

    def __init__(self, x, batch_size):
        if not len(x):
            raise ValueError("ArrayBatches: no model input to predict (x is empty)")
        self.x, self.dim = x, tuple(x.shape[1:])
        self.batch_size = min(int(batch_size), len(x))

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        return (self.x[index * self.batch_size:(index + 1) * self.batch_size],)


def sampling_count(estimate_uncertainty, number_of_sampling):
    """Forward passes per input: ``number_of_sampling`` with Monte-Carlo dropout, else 1."""
    return int(number_of_sampling) if estimate_uncertainty else 1


def check_sampling_options(cfg):
    """Reject a batch size, sample count or pair of calibrations a predicting stage
    cannot use (whether there is a spread to calibrate depends on the model:
    :func:`check_calibration_spread`).

    ``cfg`` has ``batch_size``, ``estimate_uncertainty``, ``number_of_sampling``
    and ``calibration`` (and, for tester1, ``calibration_set``).
    """
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.estimate_uncertainty and int(cfg.number_of_sampling) < 2:
        raise ValueError(f"number_of_sampling must be >= 2, got {cfg.number_of_sampling}")
    if getattr(cfg, "calibration_set", None) and cfg.calibration:
        raise ValueError("give calibration_set (fit a new calibration) or calibration (reuse a "
                         "saved one), not both")


def check_calibration_spread(cfg, settings):
    """Reject a calibration when the predictions will have no std to scale: neither
    Monte-Carlo sampling (``estimate_uncertainty``) nor a variance head
    (``settings['aleatoric']``, from the model's model_config.json)."""
    if cfg.estimate_uncertainty or settings.get("aleatoric"):
        return
    if os.path.isfile(cfg.input_model) and checkpoints.has_variance_head(cfg.input_model):
        return    # its missing model_config.json is named when the model is built
    for name in ("calibration_set", "calibration"):
        if getattr(cfg, name, None):
            raise ValueError(f"{name} scales the predicted std: it needs estimate_uncertainty "
                             f"(Monte-Carlo spread) or a model trained with --aleatoric "
                             f"({cfg.input_model} has no variance head)")


def start_line(prog, what):
    """The first status line of a predicting stage: what it does and on which device."""
    return f"{prog}: {what} on {devices.device_description()}"


@dataclasses.dataclass(frozen=True)
class TestConfig:
    """Every tester1 parameter (documented in ``tester1``), in its order."""

    __test__ = False   # not a pytest test class

    input_hdf5: str | None
    input_testset: str
    input_model: str | None
    output_name: str
    max_d: float | None
    min_d: float | None
    batch_size: int
    estimate_uncertainty: bool
    number_of_sampling: int
    normalization_mode: str | None
    foundation_weights: str
    input_dimention: tuple | None
    convmixer_filters: int | None
    convmixer_depth: int | None
    convmixer_kernel: int | None
    convmixer_patch: int | None
    gpuid: int | None
    gpu_limit: float | None
    seed: int | None
    bandpass: bool | None
    mixed_precision: str
    verbose: int
    calibration_set: str | None = None
    calibration: str | None = None
    input_trainset: str | None = None
    input_validset: str | None = None
    allow_overlap: bool = False

    @property
    def n_samples(self):
        return sampling_count(self.estimate_uncertainty, self.number_of_sampling)


def run(cfg):
    """Predict ``cfg.input_testset``; returns tester1's result dict."""
    start = time.time()
    check_parameters(cfg)
    output_dir = files.check_new_output_dir(files.output_dir_for(cfg.output_name))
    if not os.path.isfile(cfg.input_model):
        raise FileNotFoundError(f"model weights file not found: {cfg.input_model}")
    settings = checkpoints.model_settings(
        cfg.input_model, **{k: getattr(cfg, k) for k in checkpoints.MODEL_DEFAULTS})
    check_calibration_spread(cfg, settings)
    test_ids = splits.load_ids(cfg.input_testset)
    splits.check_no_duplicates(test_ids, "input_testset", cfg.input_testset)
    meta = splits.check_split(cfg.input_hdf5, test_ids, "input_testset", settings["max_d"],
                              settings["min_d"], require_labels=False,
                              dim=settings["input_dimention"])
    overlap = check_leaks(cfg, meta)
    # Both calibration inputs are checked before the model is built: a wrong
    # file fails in seconds, not after the sampling.
    calibration = read_saved_calibration(cfg)
    calibration_meta = check_calibration_set(cfg, settings, test_ids)
    devices.configure_gpus(cfg.gpu_limit, cfg.gpuid)
    if cfg.verbose:
        print(start_line("tester1", f"predicting {len(test_ids)} trace(s) of "
                                    f"{cfg.input_testset} with {cfg.input_model}"))
    weights = ub.resolve_foundation_weights(cfg.foundation_weights) \
        if str(cfg.foundation_weights).lower() != "none" else None
    model, loaded = checkpoints.build_from_checkpoint(cfg.input_model, settings, weights,
                                                      cfg.mixed_precision)
    generator = prediction_generator(test_ids, cfg, settings)
    timings = {"setup_s": time.time() - start}
    if calibration_meta is not None:
        calibration = fit_on_calibration_set(model, calibration_meta, cfg, settings, timings)
    pred = predict_samples(model, generator, cfg.n_samples, seed=cfg.seed,
                           progress=cfg.verbose > 0, timings=timings)
    table_start = time.time()
    results = results_table(meta, pred, settings["max_d"], settings["min_d"])
    if calibration is not None:
        results = uncertainty.apply_calibration(results, calibration)
    csv_path = write_results(output_dir, results,
                             fitted=calibration if cfg.calibration_set else None)
    summary = summarize(results)
    elapsed = time.time() - start
    timings["write_s"] = time.time() - table_start
    files.write_report(os.path.join(output_dir, "X_report.txt"), "tester1",
                       report_items(cfg, settings, loaded, weights, summary, timings, elapsed,
                                    len(results), calibration_items(cfg, calibration, output_dir)
                                    + overlap))
    if cfg.verbose:
        print_summary(summary, csv_path, calibration)
    return {"output_dir": output_dir, "results": results, "summary": summary, "time_s": elapsed,
            "timings": timings, "calibration": calibration}


def training_splits(cfg):
    """The splits to check the test split against: [(name, split file, HDF5 file)].

    ``input_trainset`` / ``input_validset`` when given (in ``input_hdf5``), else
    the ones trainer1 recorded in the checkpoint's model_config.json; the second
    value says where they came from (or why nothing is checked).
    """
    given = [(n, getattr(cfg, n), cfg.input_hdf5) for n in ("input_trainset", "input_validset")
             if getattr(cfg, n)]
    if given:
        return given, "given"
    recorded = checkpoints.read_model_config(cfg.input_model).get("trained_on") or {}
    found = [(n, recorded[n], recorded.get("input_hdf5")) for n in ("input_trainset",
                                                                  "input_validset")
             if recorded.get(n) and os.path.isfile(recorded[n])]
    if not recorded:
        return [], "not checked (no training splits given or recorded with the model)"
    if not found or not all(h and os.path.isfile(h) for _, _, h in found):
        return [], ("not checked (the training run's split or data files are not found: "
                    f"{recorded})")
    return found, "the training run's model_config.json"


def check_leaks(cfg, meta):
    """The test split against the training run's splits: shared traces and earthquakes
    (a warning unless ``allow_overlap``); returns the X_report.txt items."""
    against, source = training_splits(cfg)
    findings = [splits.split_overlap("input_testset", meta, name,
                                     splits.read_metadata(hdf5, splits.load_ids(path)))
                for name, path, hdf5 in against]
    lines = splits.report_overlap(findings, cfg.allow_overlap, "tester1")
    return [("split_overlap", "; ".join(lines) if lines else
             ("none found" if against else "not checked")),
            ("split_overlap_checked_against",
             ", ".join(f"{name} {path}" for name, path, _ in against) or source)]


def check_parameters(cfg):
    """Reject impossible settings before any work starts."""
    if not cfg.input_hdf5:
        raise ValueError("input_hdf5 is required")
    if not cfg.input_model:
        raise ValueError("input_model is required")
    check_sampling_options(cfg)


def prediction_generator(ids, cfg, settings):
    """The prediction generator of a split, read as in training."""
    return U.DataGeneratorPrediction(ids, cfg.input_hdf5, dim=settings["input_dimention"],
                                     batch_size=cfg.batch_size,
                                     norm_mode=settings["normalization_mode"],
                                     bandpass=settings["bandpass"])


def read_saved_calibration(cfg):
    """``cfg.calibration`` read and checked against ``cfg.input_model``, or None."""
    if not cfg.calibration:
        return None
    calibration = uncertainty.read_calibration(cfg.calibration, cfg.input_model)
    fitted_with = calibration.get("number_of_sampling")
    if fitted_with is not None and int(fitted_with) != cfg.n_samples:
        # The spread of few samples is biased low, so the factor depends on N.
        print(f"warning: calibration {cfg.calibration} was fitted with number_of_sampling "
              f"{fitted_with}, this run uses {cfg.n_samples}", file=sys.stderr)
    return calibration


def check_calibration_set(cfg, settings, test_ids):
    """Metadata of ``cfg.calibration_set`` (labeled traces of input_hdf5), or None."""
    if not cfg.calibration_set:
        return None
    ids = splits.load_ids(cfg.calibration_set)
    meta = splits.check_split(cfg.input_hdf5, ids, "calibration_set", settings["max_d"],
                              settings["min_d"], require_labels=True,
                              dim=settings["input_dimention"])
    shared = np.intersect1d(ids, test_ids).size
    if shared:
        print(f"warning: {shared} of the {len(ids)} calibration_set traces are also in "
              "input_testset: their coverage will look better than it is", file=sys.stderr)
    return meta


def fit_on_calibration_set(model, meta, cfg, settings, timings):
    """Sample the calibration set as the test set will be (same N, same seed) and fit."""
    start = time.time()
    pred = predict_samples(model, prediction_generator(meta["trace_name"].to_numpy(), cfg,
                                                       settings),
                           cfg.n_samples, seed=cfg.seed, progress=cfg.verbose > 0)
    table = results_table(meta, pred, settings["max_d"], settings["min_d"])
    calibration = uncertainty.fit_calibration(
        table, model_file=cfg.input_model, calibration_set=os.path.abspath(cfg.calibration_set),
        input_hdf5=os.path.abspath(cfg.input_hdf5), number_of_sampling=cfg.n_samples,
        seed=cfg.seed)
    timings["calibration_s"] = time.time() - start
    return calibration


def write_results(output_dir, results, fitted=None):
    """Create ``output_dir`` and write the results CSV (and the calibration fitted in this run)."""
    os.makedirs(output_dir)
    if fitted is not None:
        uncertainty.write_calibration(os.path.join(output_dir, uncertainty.CALIBRATION_NAME),
                                      fitted)
    csv_path = os.path.join(output_dir, metrics.RESULTS_NAME)
    files.atomic_write(csv_path, lambda fh: results.to_csv(fh, index=False, float_format="%.17g"))
    return csv_path


def print_summary(summary, csv_path, calibration):
    print(f"tester1: n={summary['n']} (with truth: {summary['n_with_truth']}), "
          f"epicentral MAE {summary['epicentral_mae_km']:.2f} km, "
          f"depth MAE {summary['depth_mae_km']:.2f} km -> {csv_path}")
    if calibration is not None:
        print(f"tester1: std columns calibrated ({factors_text(calibration)}; raw spread in "
              "*_std_raw)")


def factors_text(calibration):
    """'lat 2.1, lon 1.9, depth 3.4': the std factors of a calibration."""
    return ", ".join(f"{q} {f:.4g}" for q, f in calibration["factors"].items())


def calibration_items(cfg, calibration, output_dir):
    """X_report.txt lines saying which calibration scaled the std columns."""
    if calibration is None:
        return [("calibration", "none (std columns as predicted, not calibrated)")]
    source = (f"fitted on {cfg.calibration_set} -> "
              f"{os.path.join(output_dir, uncertainty.CALIBRATION_NAME)}"
              if cfg.calibration_set else f"{os.path.abspath(cfg.calibration)} (reused)")
    return [("calibration", source), ("calibration_method", calibration.get("method")),
            ("calibration_factors", factors_text(calibration)),
            ("calibration_n_traces", calibration.get("n_traces"))]


def report_items(cfg, settings, loaded, weights, summary, timings, elapsed, n, calibration=()):
    """X_report.txt: inputs, model settings, calibration, summary, timings."""
    return [
        ("input_hdf5", cfg.input_hdf5), ("input_testset", cfg.input_testset),
        ("input_model", cfg.input_model), ("input_model_sha256", loaded["sha256"]),
        ("output_name", cfg.output_name), ("batch_size", cfg.batch_size),
        ("estimate_uncertainty", cfg.estimate_uncertainty), ("number_of_sampling", cfg.n_samples),
        ("seed", cfg.seed), *calibration, ("mixed_precision", cfg.mixed_precision),
        ("foundation_weights", weights or "none (backbone weights from input_model)"),
        *settings.items(), ("keras_backend", keras.backend.backend()),
        *summary.items(), ("time_taken_s", round(elapsed, 1)),
        *((f"time_{k}", round(v, 2)) for k, v in timings.items()),
        ("traces_per_s", round(n / max(elapsed, 1e-9), 1)),
        ("traces_per_s_after_setup",
         round(n / max(timings["predict_s"] + timings["write_s"], 1e-9), 1))]


def predict_samples(model, generator, n_samples=1, seed=None, progress=True, timings=None,
                    label="tester1", sampler=None):
    """Model outputs: (N, 3) deterministic, or (n_samples, N, 3) Monte-Carlo samples
    (6 values instead of 3, [mean, log_variance], for a model with the variance head).

    ``generator`` is a :class:`BatchSource`; ``label`` names the progress bar.

    Deterministic: ``predict_on_batch``, bit for bit the plain prediction.
    Sampling: a copy of the model with its dropout-type layers always on
    (:func:`utrans_loc.uncertainty.mc_sampling_model`), built once and run
    ``n_samples`` times per batch; BatchNorm stays in inference mode. The
    upstream sampled in inference mode and got identical samples. A caller
    predicting in chunks passes its ``sampler`` (built once): its random
    streams then run on from chunk to chunk, as in one call.

    A short last batch is padded to the batch size (and the padding dropped),
    so the compiled prediction function is reused rather than rebuilt. With a
    ``timings`` dict the function is compiled first on a zero batch (without
    changing the samples a seed gives), and ``compile_s`` and ``predict_s``
    are recorded there.
    """
    start = time.perf_counter()
    if sampler is None:
        sampler = model if n_samples == 1 else mc_sampling_model(model, seed=seed)
    size = generator.batch_size

    def run_batch(x):
        n = len(x)
        if n < size:
            x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
        return np.stack([np.asarray(sampler.predict_on_batch(x))[:n] for _ in range(n_samples)])

    if timings is not None:
        # Compile on a zero batch, then rewind every variable (the dropout
        # random streams among them): the samples stay those of the seed.
        saved = [keras.ops.convert_to_numpy(v) for v in sampler.variables]
        sampler.predict_on_batch(np.zeros((size,) + generator.dim, np.float32))
        for variable, value in zip(sampler.variables, saved):
            variable.assign(value)
        timings["compile_s"] = time.perf_counter() - start
        start = time.perf_counter()
    outputs = []
    # One thread reads and normalises the next batch while this one is predicted.
    with ThreadPoolExecutor(max_workers=1) as loader:
        pending = loader.submit(generator.__getitem__, 0) if len(generator) else None
        for index in tqdm(range(len(generator)), desc=label, unit="batch",
                          disable=not progress):
            (x,) = pending.result()
            if index + 1 < len(generator):
                pending = loader.submit(generator.__getitem__, index + 1)
            outputs.append(run_batch(x))
    pred = np.concatenate(outputs, axis=1).astype(np.float64)
    if timings is not None:
        timings["predict_s"] = time.perf_counter() - start
    return pred[0] if n_samples == 1 else pred


def location_columns(station_lat, station_lon, pred, max_d, min_d, names=None):
    """The prediction columns of a results table, from model outputs and station coordinates.

    Parameters
    ----------
    station_lat, station_lon : array_like, shape (N,)
        Station coordinates (degrees) of the N inputs.
    pred : numpy.ndarray
        :func:`predict_samples`' output: (N, 3), or (n_samples, N, 3); a model
        with the variance head (``aleatoric``) gives 6 values, [mean(3),
        log_variance(3)], instead of 3.
    max_d, min_d : float
        The depth normalisation range (km) of the model.
    names : sequence of str, optional
        A name per input (trace id, station and pick time), for the warning
        about a non-finite predicted variance.

    Returns
    -------
    dict
        Column name -> (N,) array, in table order: ``pred_event_lat``,
        ``pred_event_lon``, ``pred_depth_km`` (the sample mean), and with
        samples or a variance head their std (degrees, km) and
        ``pred_event_lat_std_km``, ``pred_event_lon_std_km``,
        ``pred_epicentre_std_km``. With a variance head each std is the total
        ``sqrt(aleatoric^2 + epistemic^2)``: aleatoric from the predicted
        variance (the mean of the sampled variances), epistemic the spread of
        the sampled means (0 without sampling); the parts are beside it as
        ``*_std_aleatoric`` and (with samples) ``*_std_epistemic``. A row
        whose predicted variance is not finite gets NaN std (with a warning).
    """
    samples = pred if pred.ndim == 3 else pred[None]
    aleatoric = samples.shape[-1] == 6
    station_lat, station_lon = np.asarray(station_lat), np.asarray(station_lon)
    lat, lon, depth = np.stack([U.prediction_to_location(station_lat, station_lon,
                                                         sample[:, :3], max_d, min_d)
                                for sample in samples], axis=1)
    out = {"pred_event_lat": lat.mean(axis=0), "pred_event_lon": lon.mean(axis=0),
           "pred_depth_km": depth.mean(axis=0)}
    sampled = pred.ndim == 3
    if not sampled and not aleatoric:
        return out
    if sampled:
        north_km, east_km, _ = metrics.sample_spread_km(lat, lon)
        epistemic = std_columns(lat.std(axis=0), lon.std(axis=0), depth.std(axis=0),
                                north_km, east_km)
        if not aleatoric:
            out.update(epistemic)
            return out
    lat_std, lon_std, depth_std = aleatoric_std(samples, max_d, min_d)
    per_lat, per_lon = metrics.km_per_degree(out["pred_event_lat"])
    parts = {"aleatoric": std_columns(lat_std, lon_std, depth_std, lat_std * per_lat,
                                      lon_std * per_lon)}
    if sampled:
        parts["epistemic"] = epistemic
    # Parts add in quadrature; the total epicentre follows from the total north and east.
    total = std_columns(*(np.sqrt(sum(part[c] ** 2 for part in parts.values()))
                          for c in STD_ARGUMENTS))
    columns = {**total, **{f"{c}_{name}": v for name, part in parts.items()
                           for c, v in part.items()}}
    bad = ~np.all(np.isfinite(samples[..., 3:]), axis=(0, 2))
    if bad.any():
        which = [str(names[i]) if names is not None else f"input {i}" for i in np.flatnonzero(bad)]
        print(f"warning: {bad.sum()} prediction(s) with a NaN or infinite variance (std columns "
              f"set to NaN): {', '.join(which[:10])}{' ...' if len(which) > 10 else ''}",
              file=sys.stderr)
    out.update({c: np.where(bad, np.nan, v) for c, v in columns.items()})
    return out


# The columns std_columns is made from, in its arguments' order.
STD_ARGUMENTS = ("pred_event_lat_std", "pred_event_lon_std", "pred_depth_km_std",
                 "pred_event_lat_std_km", "pred_event_lon_std_km")


def std_columns(lat_deg, lon_deg, depth_km, north_km, east_km):
    """The std columns of one kind of spread, in table order (epicentre: north and east)."""
    return {"pred_event_lat_std": lat_deg, "pred_event_lon_std": lon_deg,
            "pred_depth_km_std": depth_km, "pred_event_lat_std_km": north_km,
            "pred_event_lon_std_km": east_km, "pred_epicentre_std_km": np.hypot(north_km,
                                                                                east_km)}


def aleatoric_std(samples, max_d, min_d):
    """Aleatoric std of lat, lon (degrees) and depth (km) from (n_samples, N, 6) outputs.

    The variance of each quantity is the mean of its sampled variances
    ``exp(log_variance)`` (in target units: degrees^2 for the lat/lon offsets,
    depth normalised by ``max_d - min_d``, so the depth std is scaled by it).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        var = np.exp(np.asarray(samples[..., 3:], np.float64)).mean(axis=0)
    std = np.sqrt(var)
    return std[:, 0], std[:, 1], std[:, 2] * (max_d - min_d)


def results_table(meta, pred, max_d, min_d):
    """One row per trace: metadata, truth and predicted location (and std with sampling).

    ``meta`` has the truth columns (``event_lat, event_lon, depth_km``, NaN for
    unlabeled traces); the prediction columns are :func:`location_columns`.
    """
    out = meta[["trace_name", "station_lat", "station_lon", "event_lat", "event_lon",
                "depth_km"]].copy()
    out = out.assign(**location_columns(meta["station_lat"].to_numpy(),
                                        meta["station_lon"].to_numpy(), pred, max_d, min_d,
                                        names=meta["trace_name"].to_numpy()))
    extra = [c for c in meta.columns if c not in out.columns]
    return out.join(meta[extra])


def summarize(results):
    """n, number with truth, epicentral and depth MAE (km) of the scorable rows."""
    errors = metrics.location_errors(results)
    nan = float("nan")
    return {"n": len(results), "n_with_truth": len(errors),
            "epicentral_mae_km": float(errors["epicentral_km"].abs().mean()) if len(errors) else nan,
            "depth_mae_km": float(errors["depth_km"].abs().mean()) if len(errors) else nan}
