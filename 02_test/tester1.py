"""Stage 02: predict event locations for a test split (tester1).

Example::

    python 02_test/tester1.py --input_hdf5 DataCollected_California.hdf5 \\
        --input_testset test_Events.npy \\
        --input_model california_outputs/models/california_031.weights.h5 \\
        --output_name california_tester --max_d 114.5 --min_d 1e-5

``input_model`` is a trainer1 checkpoint (Keras 3 ``.weights.h5``; the head size
is read from the ``model_config.json`` beside it) or an upstream Keras 2 ``.h5``
location checkpoint (head size inferred from its shapes). Writes
``<output_name>_outputs/X_test_results.csv`` (one row per trace) and
``X_report.txt``; an existing output folder is never touched.
"""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli_common  # noqa: E402

if __name__ == "__main__":
    cli_common.prepare_environment()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import EqT_utils_Loc_California as U  # noqa: E402
import loc_metrics as lm  # noqa: E402
import utrans_backbone as ub  # noqa: E402

RESULTS_NAME = "X_test_results.csv"


def tester1(input_hdf5=None,
            input_testset="test_Events.npy",
            input_model=None,
            output_name="tester_outputs",
            max_d=None,
            min_d=None,
            batch_size=40,
            estimate_uncertainty=False,
            number_of_sampling=5,
            normalization_mode=None,
            foundation_weights="none",
            input_dimention=None,
            convmixer_filters=None,
            convmixer_depth=None,
            convmixer_kernel=None,
            convmixer_patch=None,
            gpuid=None,
            gpu_limit=None,
            seed=None,
            bandpass=None,
            mixed_precision="off",
            verbose=1):
    """Predict the test split and write ``<output_name>_outputs/``.

    Parameters
    ----------
    input_hdf5 : str
        DataCollected HDF5 file.
    input_testset : str
        ``.npy`` of test trace ids. Traces without event attributes are
        predicted too; their truth columns stay empty.
    input_model : str
        Location weights: trainer1's ``.weights.h5`` or an upstream Keras 2 ``.h5``.
    output_name : str
        Results go to ``<output_name>_outputs/`` (must not exist).
    max_d, min_d : float or None
        Depth normalisation range (km) used in training; None: from the
        checkpoint's model_config.json, else 114.5 / 1e-5 (California).
    batch_size : int
        Traces per prediction batch.
    estimate_uncertainty : bool
        Monte-Carlo dropout: ``number_of_sampling`` stochastic forward passes
        (Dropout, StochasticDepth and attention dropout active, BatchNorm in
        inference mode); the CSV gets the sample mean as prediction and the
        standard deviations ``pred_event_lat_std``, ``pred_event_lon_std``
        (degrees), ``pred_depth_km_std``, ``pred_event_lat_std_km``,
        ``pred_event_lon_std_km`` and ``pred_epicentre_std_km`` (RMS radial
        scatter of the epicentre). Off: one deterministic pass, exactly
        ``model.predict``.
    number_of_sampling : int
        Forward passes per trace with ``estimate_uncertainty``.
    normalization_mode : {'std', 'max'} or None
        Normalisation used in training; None: from model_config.json, else 'std'.
    foundation_weights : str
        Starting weights of the backbone before the checkpoint is loaded. The
        location checkpoint holds the backbone weights, so the default 'none'
        is enough; a path is loaded (and checked) first.
    input_dimention : tuple or None
        Trace shape; None: from model_config.json, else (6000, 3).
    convmixer_filters, convmixer_depth, convmixer_kernel, convmixer_patch : int or None
        Head size; None: from model_config.json or the Keras 2 checkpoint's
        shapes, else the published 512, 10, 13, 10.
    gpuid, gpu_limit
        As in trainer1 (the command line applies gpuid before import).
    seed : int or None
        Seed of the Monte-Carlo sampling: the same seed gives the same samples.
    bandpass : bool or None
        Band-pass and taper on reading (raw STEAD files); None: as in training
        (model_config.json), else off.
    mixed_precision : {'off', 'bfloat16', 'float16'}
        Compute precision of the prediction (the output layer stays float32).
        Not taken from the training run: 'off' (float32) gives the reference
        predictions whatever precision trained the weights.
    verbose : int
        0: quiet; 1: progress bar and summary.

    Returns
    -------
    dict
        ``output_dir``, ``results`` (DataFrame), ``summary`` (n, MAEs),
        ``time_s`` (whole call) and ``timings``: ``setup_s`` (checks, model
        build, weights), ``compile_s`` (the prediction function, on a zero
        batch), ``predict_s`` (reading, normalising and predicting,
        overlapped), ``write_s`` (results table and CSV).
    """
    start = time.time()
    if not input_hdf5:
        raise ValueError("input_hdf5 is required")
    if not input_model:
        raise ValueError("input_model is required")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if estimate_uncertainty and int(number_of_sampling) < 2:
        raise ValueError(f"number_of_sampling must be >= 2, got {number_of_sampling}")
    output_dir = os.path.abspath(f"{output_name}_outputs")
    if os.path.exists(output_dir):
        raise FileExistsError(f"output folder {output_dir} already exists; it is left untouched: "
                              "choose another --output_name (or move the folder away)")
    if not os.path.isfile(input_model):
        raise FileNotFoundError(f"model weights file not found: {input_model}")
    U.check_output_parent(output_dir)

    cfg = model_settings(input_model, input_dimention=input_dimention, max_d=max_d, min_d=min_d,
                         normalization_mode=normalization_mode, bandpass=bandpass,
                         convmixer_filters=convmixer_filters, convmixer_depth=convmixer_depth,
                         convmixer_kernel=convmixer_kernel, convmixer_patch=convmixer_patch)
    if not cfg["max_d"] > cfg["min_d"]:
        raise ValueError(f"max_d ({cfg['max_d']}) must be larger than min_d ({cfg['min_d']})")
    test_ids = U.load_ids(input_testset)
    meta = U.check_split(input_hdf5, test_ids, "input_testset", max_d=cfg["max_d"],
                         min_d=cfg["min_d"], require_labels=False, dim=cfg["input_dimention"])
    U.configure_gpus(gpu_limit, gpuid)

    weights = ub.resolve_foundation_weights(foundation_weights) \
        if str(foundation_weights).lower() != "none" else None
    with U.precision_policy(mixed_precision):
        model = U.build_location_model(tuple(cfg["input_dimention"]), foundation_weights=weights,
                                       **{k: cfg[k] for k in U.HEAD_KEYS})
    loaded = U.load_location_weights(model, input_model)

    generator = U.DataGeneratorPrediction(test_ids, input_hdf5, dim=cfg["input_dimention"],
                                          batch_size=batch_size,
                                          norm_mode=cfg["normalization_mode"],
                                          bandpass=cfg["bandpass"])
    n_samples = int(number_of_sampling) if estimate_uncertainty else 1
    timings = {"setup_s": time.time() - start}
    pred = predict_samples(model, generator, n_samples, seed=seed, progress=verbose > 0,
                           timings=timings)
    table_start = time.time()
    results = results_table(meta, pred, cfg["max_d"], cfg["min_d"])

    os.makedirs(output_dir)
    csv_path = os.path.join(output_dir, RESULTS_NAME)
    lm._atomic_write(csv_path, lambda fh: results.to_csv(fh, index=False, float_format="%.17g"))
    summary = summarize(results)
    elapsed = time.time() - start
    timings["write_s"] = time.time() - table_start
    U.write_report(os.path.join(output_dir, "X_report.txt"), "tester1", [
        ("input_hdf5", input_hdf5), ("input_testset", input_testset),
        ("input_model", input_model), ("input_model_sha256", loaded["sha256"]),
        ("output_name", output_name), ("batch_size", batch_size),
        ("estimate_uncertainty", estimate_uncertainty), ("number_of_sampling", n_samples),
        ("seed", seed), ("mixed_precision", mixed_precision),
        ("foundation_weights", weights or "none (backbone weights from input_model)"),
        *cfg.items(), ("keras_backend", keras.backend.backend()),
        *summary.items(), ("time_taken_s", round(elapsed, 1)),
        *((f"time_{k}", round(v, 2)) for k, v in timings.items()),
        ("traces_per_s", round(len(results) / max(elapsed, 1e-9), 1)),
        ("traces_per_s_after_setup",
         round(len(results) / max(timings["predict_s"] + timings["write_s"], 1e-9), 1))])
    if verbose:
        print(f"tester1: n={summary['n']} (with truth: {summary['n_with_truth']}), "
              f"epicentral MAE {summary['epicentral_mae_km']:.2f} km, "
              f"depth MAE {summary['depth_mae_km']:.2f} km -> {csv_path}")
    return {"output_dir": output_dir, "results": results, "summary": summary, "time_s": elapsed,
            "timings": timings}


def model_settings(input_model, **given):
    """Model/label settings: explicit values, else the checkpoint's
    model_config.json (trainer1), else the Keras 2 file's shapes, else the
    published defaults."""
    defaults = {"input_dimention": (6000, 3), "max_d": U.MAX_D, "min_d": U.MIN_D,
                "normalization_mode": "std", "bandpass": False,
                "convmixer_filters": 512, "convmixer_depth": 10,
                "convmixer_kernel": 13, "convmixer_patch": 10}
    saved = U.read_model_config(input_model)
    if not saved and U.is_legacy_h5(input_model):
        saved = U.infer_head_from_legacy_h5(input_model)
    cfg = {}
    for key, default in defaults.items():
        value = given.get(key)
        cfg[key] = value if value is not None else saved.get(key, default)
    cfg["input_dimention"] = tuple(cfg["input_dimention"])
    return cfg


def predict_samples(model, generator, n_samples=1, seed=None, progress=True, timings=None):
    """Model outputs: (N, 3) deterministic, or (n_samples, N, 3) Monte-Carlo samples.

    Deterministic: ``predict_on_batch``, bit for bit the plain prediction.
    Sampling: a copy of the model with its dropout-type layers always on
    (:func:`EqT_utils_Loc_California.mc_sampling_model`), built once and run
    ``n_samples`` times per batch; BatchNorm stays in inference mode. The
    upstream sampled in inference mode and got identical samples.

    A short last batch is padded to the batch size (and the padding dropped),
    so the compiled prediction function is reused rather than rebuilt. With a
    ``timings`` dict the function is compiled first on a zero batch (without
    changing the samples a seed gives), and ``compile_s`` and ``predict_s``
    are recorded there.
    """
    start = time.perf_counter()
    sampler = model if n_samples == 1 else U.mc_sampling_model(model, seed=seed)
    size = generator.batch_size

    def run(x):
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
        for index in tqdm(range(len(generator)), desc="tester1", unit="batch",
                          disable=not progress):
            (x,) = pending.result()
            if index + 1 < len(generator):
                pending = loader.submit(generator.__getitem__, index + 1)
            outputs.append(run(x))
    pred = np.concatenate(outputs, axis=1).astype(np.float64)
    if timings is not None:
        timings["predict_s"] = time.perf_counter() - start
    return pred[0] if n_samples == 1 else pred


def results_table(meta, pred, max_d, min_d):
    """One row per trace: metadata, truth and predicted location (and std with sampling)."""
    samples = pred if pred.ndim == 3 else pred[None]
    lat, lon, depth = np.stack([
        U.prediction_to_location(meta["station_lat"].to_numpy(), meta["station_lon"].to_numpy(),
                                 sample, max_d, min_d) for sample in samples], axis=1)
    out = meta[["trace_name", "station_lat", "station_lon", "event_lat", "event_lon",
                "depth_km"]].copy()
    out["pred_event_lat"] = lat.mean(axis=0)
    out["pred_event_lon"] = lon.mean(axis=0)
    out["pred_depth_km"] = depth.mean(axis=0)
    if pred.ndim == 3:
        out["pred_event_lat_std"] = lat.std(axis=0)
        out["pred_event_lon_std"] = lon.std(axis=0)
        out["pred_depth_km_std"] = depth.std(axis=0)
        (out["pred_event_lat_std_km"], out["pred_event_lon_std_km"],
         out["pred_epicentre_std_km"]) = lm.sample_spread_km(lat, lon)
    extra = [c for c in meta.columns if c not in out.columns]
    return out.join(meta[extra])


def summarize(results):
    """n, number with truth, epicentral and depth MAE (km) of the scorable rows."""
    errors = lm.location_errors(results)
    return {"n": len(results), "n_with_truth": len(errors),
            "epicentral_mae_km": float(errors["epicentral_km"].abs().mean()) if len(errors) else float("nan"),
            "depth_mae_km": float(errors["depth_km"].abs().mean()) if len(errors) else float("nan")}


def build_parser():
    import argparse
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli_common.Formatter)
    p.add_argument("--input_hdf5", required=True,
                   help="DataCollected HDF5, or a STEAD merge.hdf5/chunkN.hdf5 read directly "
                        "(see --bandpass)")
    p.add_argument("--input_testset", default="test_Events.npy", help=".npy of test trace ids")
    p.add_argument("--input_model", required=True,
                   help="location weights: trainer1 .weights.h5 or upstream Keras 2 .h5")
    p.add_argument("--output_name", default="tester_outputs",
                   help="results go to <output_name>_outputs/ (must not exist)")
    p.add_argument("--max_d", type=float, default=None,
                   help="depth normalisation maximum (km); default: from the checkpoint's "
                        f"model_config.json, else {U.MAX_D}")
    p.add_argument("--min_d", type=float, default=None,
                   help=f"depth normalisation minimum (km); default: model_config.json, else {U.MIN_D}")
    p.add_argument("--batch_size", type=int, default=40, help="traces per prediction batch")
    p.add_argument("--estimate_uncertainty", action="store_true",
                   help="Monte-Carlo dropout: sample the model and report the std")
    p.add_argument("--number_of_sampling", type=int, default=5,
                   help="samples per trace with --estimate_uncertainty")
    p.add_argument("--normalization_mode", default=None, choices=["std", "max"],
                   help="normalisation used in training; default: model_config.json, else std")
    p.add_argument("--foundation_weights", default="none",
                   help="backbone weights loaded before the checkpoint (not needed: the "
                        "checkpoint holds them)")
    p.add_argument("--input_dimention", type=int, nargs=2, default=None,
                   help="trace shape; default: model_config.json, else 6000 3")
    for name, published in (("filters", 512), ("depth", 10), ("kernel", 13), ("patch", 10)):
        p.add_argument(f"--convmixer_{name}", type=int, default=None,
                       help=f"ConvMixer {name}; default: model_config.json or the checkpoint, "
                            f"else {published}")
    p.add_argument("--gpuid", type=int, default=None, help="use only this GPU")
    p.add_argument("--gpu_limit", type=float, default=None, help="fraction of GPU memory to use")
    p.add_argument("--seed", type=int, default=None, help="seed of the Monte-Carlo sampling")
    p.add_argument("--bandpass", action=argparse.BooleanOptionalAction, default=None,
                   help="band-pass 1-45 Hz and taper on reading; default: as in training")
    p.add_argument("--mixed_precision", default="off", choices=list(U.PRECISION_POLICIES),
                   help="compute precision of the prediction (output layer stays float32); not "
                        "taken from training: float32 is the reference")
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1], help="progress bar and summary")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    return cli_common.run_main(tester1, args, "tester1")


if __name__ == "__main__":
    sys.exit(main())
