"""Throughput benchmark: does the input pipeline keep up with the model?

One run on synthetic California-STEAD files prints a table of

(a) DataGenerator traces/s on one core (California augmentation settings,
    metadata read once, as trainer1 builds it),
(b) model-only training traces/s (``train_on_batch`` on a batch in memory),
(c) end-to-end trainer1 training traces/s (generator, workers, prefetch and
    steps; the ``train_traces_per_s`` trainer1 writes to history.csv for its
    last epoch, so the first epoch's compilation is left out),
(d) model-only prediction traces/s (``predict_on_batch`` on a batch in memory),
(e) end-to-end tester1 traces/s after setup (reading, normalising,
    predicting, results table and CSV; model building and compilation
    excluded) on the test split of the large file,
(f) peak RSS of trainer1 in generator mode for a small and a 10x larger file,

and the ratios c/b and e/d. A benchmark, not a test: nothing is asserted.

Example::

    python bench/throughput.py                       # TensorFlow, float32, published head
    KERAS_BACKEND=jax python bench/throughput.py --precision bfloat16

Synthetic files are written once to ``--workdir`` and reused; each run's
trainer/tester outputs go to a new ``runs/<time>`` folder there.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL_RSS_HEAD = dict(convmixer_filters=16, convmixer_depth=2)
HEADS = {"published": dict(convmixer_filters=512, convmixer_depth=10),
         "small": dict(convmixer_filters=64, convmixer_depth=4)}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default=str(ROOT / "bench_work"),
                   help="folder for the synthetic files (reused) and the runs")
    p.add_argument("--n_small", type=int, default=2000, help="traces in the small file")
    p.add_argument("--n_large", type=int, default=20000,
                   help="traces in the large file (peak RSS (f) and tester1 end to end (e))")
    p.add_argument("--batch_size", type=int, default=40, help="traces per batch")
    p.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                   choices=["tensorflow", "jax"], help="Keras backend")
    p.add_argument("--precision", default="off", choices=["off", "bfloat16", "float16"],
                   help="mixed precision of the model")
    p.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=None,
                   help="XLA compilation (default: Keras auto: on a single TensorFlow GPU, "
                        "always on JAX)")
    p.add_argument("--head", default="published", choices=list(HEADS),
                   help="ConvMixer head: published 512x10 or small 64x4")
    p.add_argument("--steps", type=int, default=20, help="timed steps for (b) and (d)")
    p.add_argument("--epochs", type=int, default=2,
                   help="trainer1 epochs for (c); the last one is reported")
    p.add_argument("--workers", type=int, default=1, help="trainer1 generator workers")
    p.add_argument("--use_multiprocessing", action="store_true",
                   help="trainer1 workers as processes")
    p.add_argument("--skip", nargs="*", default=[], choices=list("abcdef"),
                   help="measurements to leave out")
    p.add_argument("--output_json", default=None, help="also write the results here")
    return p


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def synthetic_file(workdir, n_traces):
    """A synthetic file of ``n_traces`` with its splits, written once and reused."""
    folder = Path(workdir) / f"synthetic_{n_traces}"
    h5 = folder / "synthetic_california.hdf5"
    splits = {name: folder / f"{name}_Events.npy" for name in ("train", "valid", "test")}
    if not (h5.is_file() and all(f.is_file() for f in splits.values())):
        sys.path.insert(0, str(ROOT / "00_data"))
        from synthetic_california import make_synthetic_california

        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing {n_traces} synthetic traces to {h5} (once)", flush=True)
        make_synthetic_california(h5, folder, n_traces=n_traces, n_stations=20, seed=0,
                                  overwrite=True, progress=sys.stderr.isatty())
    return {"hdf5": str(h5), **{k: str(v) for k, v in splits.items()}}


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------
def generator_rate(data, batch_size, min_seconds=5.0):
    """(a) traces/s of the training DataGenerator, main thread pinned to one core."""
    import EqT_utils_Loc_California as U
    from utrans_loc.splits import load_ids, read_metadata

    ids = load_ids(data["train"])
    gen = U.DataGenerator(ids, data["hdf5"], batch_size=batch_size, seed=0,
                          metadata=read_metadata(data["hdf5"], ids), augmentation=True,
                          augmentations=U.build_augmentations(**U.CALIFORNIA_AUGMENTATION))
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        gen[0]
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            for index in range(len(gen)):
                n += len(gen[index][0])
            gen.on_epoch_end()
        rate = n / (time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, cores)
    return rate


def model_rates(data, args, head):
    """(b) train_on_batch and (d) predict_on_batch traces/s on one batch in memory."""
    import keras

    import EqT_utils_Loc_California as U
    from utrans_loc.devices import precision_policy
    from utrans_loc.splits import load_ids

    ids = load_ids(data["train"])
    x, y = U.DataGenerator(ids, data["hdf5"], batch_size=args.batch_size, seed=0,
                           augmentation=True,
                           augmentations=U.build_augmentations(**U.CALIFORNIA_AUGMENTATION))[0]
    with precision_policy(args.precision):
        model = U.build_location_model(**head)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse", metrics=["mae"],
                      jit_compile="auto" if args.jit_compile is None else args.jit_compile)
    rates = {}
    for name, step in (("b", lambda: model.train_on_batch(x, y)),
                       ("d", lambda: model.predict_on_batch(x))):
        if name in args.skip:
            continue
        for _ in range(3):                      # compile and warm up
            out = step()
        _block(out)
        start = time.perf_counter()
        for _ in range(args.steps):
            out = step()
        _block(out)
        rates[name] = args.steps * len(x) / (time.perf_counter() - start)
    return rates


def _block(out):
    """Wait for asynchronous backends (JAX) before reading the clock."""
    import numpy as np

    np.asarray(out[0] if isinstance(out, (list, tuple)) else out)


def run_measured(cmd, log_path, poll_s=0.2):
    """Run a command; return its peak RSS in MB (RuntimeError naming the log if it fails).

    The peak is the child's own VmHWM (/proc/<pid>/status), read every
    ``poll_s`` until it exits: the rusage of a child started from this big
    process would include the memory of the fork made before exec.
    """
    peak_kb = 0
    with open(log_path, "w") as log:
        # Output names are plain names (no paths): run in the folder of the log.
        proc = subprocess.Popen(cmd, cwd=Path(log_path).parent, stdout=log,
                                stderr=subprocess.STDOUT)
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(poll_s)
    if proc.returncode:
        raise RuntimeError(f"{Path(cmd[1]).stem} failed (status {proc.returncode}); "
                           f"see {log_path}")
    return peak_kb / 1024


def trainer_cmd(data, out_name, args, head, epochs):
    cmd = [sys.executable, str(ROOT / "01_train" / "trainer1.py"), "--input_hdf5", data["hdf5"],
           "--input_trainset", data["train"], "--input_validset", data["valid"],
           "--output_name", out_name, "--epochs", str(epochs),
           "--batch_size", str(args.batch_size), "--foundation_weights", "none",
           "--seed", "0", "--verbose", "2", "--workers", str(args.workers),
           "--mixed_precision", args.precision,
           "--convmixer_filters", str(head["convmixer_filters"]),
           "--convmixer_depth", str(head["convmixer_depth"])]
    if args.use_multiprocessing:
        cmd.append("--use_multiprocessing")
    if args.jit_compile is not None:
        cmd.append("--jit_compile" if args.jit_compile else "--no-jit_compile")
    return cmd


def trainer_rate(data, run_dir, args, head):
    """(c) trainer1's train_traces_per_s of its last epoch, and its checkpoint."""
    import pandas as pd

    out = run_dir / "c_train"
    run_measured(trainer_cmd(data, out.name, args, head, args.epochs), run_dir / "c_train.log")
    history = pd.read_csv(f"{out}_outputs/history.csv")
    checkpoint = sorted(Path(f"{out}_outputs/models").glob("*.weights.h5"))[-1]
    return float(history["train_traces_per_s"].iloc[-1]), str(checkpoint)


def tester_rate(data, run_dir, args, checkpoint):
    """(e) tester1's traces/s after setup, from its X_report.txt."""
    out = run_dir / "e_test"
    cmd = [sys.executable, str(ROOT / "02_test" / "tester1.py"), "--input_hdf5", data["hdf5"],
           "--input_testset", data["test"], "--input_model", checkpoint,
           "--output_name", out.name, "--batch_size", str(args.batch_size),
           "--mixed_precision", args.precision, "--verbose", "0"]
    run_measured(cmd, run_dir / "e_test.log")
    report = dict(line.split(": ", 1) for line in
                  Path(f"{out}_outputs/X_report.txt").read_text().splitlines() if ": " in line)
    return float(report["traces_per_s_after_setup"])


def peak_rss(data, run_dir, args, label):
    """(f) peak RSS (MB) of a one-epoch trainer1 run in generator mode (small head)."""
    out = run_dir / f"f_rss_{label}"
    return run_measured(trainer_cmd(data, out.name, args, SMALL_RSS_HEAD, 1),
                        run_dir / f"f_rss_{label}.log")


# --------------------------------------------------------------------------
def device_description():
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        devices = f"{len(gpus)} GPU(s)" if gpus else "CPU"
    return f"{backend} on {devices}; {cpu_description()}"


def cpu_description():
    """The CPU as the results depend on it: model name, cores, AVX2 / AVX-512
    flags, and whether TensorFlow uses oneDNN (on by default only where the CPU
    has AVX-512 VNNI, AVX-512 BF16, AVX-VNNI or AMX; TF_ENABLE_ONEDNN_OPTS=0
    makes an AVX-512 machine run TensorFlow as an AVX2-only one does)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    key_flags = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    isa = (f"AVX-512 ({', '.join(key_flags)})" if "avx512f" in flags else "no AVX-512") + \
        ("; AVX2" if "avx2" in flags else "; no AVX2")
    onednn_cpu = bool({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16"} & flags)
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    onednn = onednn_cpu if setting is None else setting.strip().lower() in ("1", "true")
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{os.cpu_count()} CPU cores, {model}, {isa}; TensorFlow oneDNN "
            f"{'on' if onednn else 'off'}{f' (TF_ENABLE_ONEDNN_OPTS={setting})' if setting else ''}"
            f"{f', ONEDNN_MAX_CPU_ISA={isa_cap}' if isa_cap else ''}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    head = HEADS[args.head]
    workdir = Path(args.workdir).resolve()
    run_dir = workdir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    small = synthetic_file(workdir, args.n_small)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
               "head": f"{head['convmixer_filters']}x{head['convmixer_depth']}",
               "batch_size": args.batch_size, "precision": args.precision,
               "jit_compile": "auto" if args.jit_compile is None else args.jit_compile}
    results["device"] = device_description()
    print(f"benchmark: {results['device']}; head {results['head']}, batch {args.batch_size}, "
          f"precision {args.precision}; outputs in {run_dir}", flush=True)

    if "a" not in args.skip:
        results["a_generator_traces_per_s"] = generator_rate(small, args.batch_size)
    rates = model_rates(small, args, head)
    results.update({f"{k}_model_{'train' if k == 'b' else 'predict'}_traces_per_s": v
                    for k, v in rates.items()})
    checkpoint = None
    if "c" not in args.skip or "e" not in args.skip:
        rate, checkpoint = trainer_rate(small, run_dir, args, head)
        if "c" not in args.skip:
            results["c_trainer1_traces_per_s"] = rate
    large = synthetic_file(workdir, args.n_large) if {"e", "f"} - set(args.skip) else None
    if "e" not in args.skip:
        # The large file's test split: a short last batch (padded, see tester1)
        # would otherwise weigh on a small run.
        results["e_tester1_traces_per_s"] = tester_rate(large, run_dir, args, checkpoint)
    if "f" not in args.skip:
        results["f_rss_small_mb"] = peak_rss(small, run_dir, args, "small")
        results["f_rss_large_mb"] = peak_rss(large, run_dir, args, "large")
        results["f_rss_growth_mb"] = results["f_rss_large_mb"] - results["f_rss_small_mb"]
    if "c_trainer1_traces_per_s" in results and "b_model_train_traces_per_s" in results:
        results["ratio_c_over_b"] = results["c_trainer1_traces_per_s"] / \
            results["b_model_train_traces_per_s"]
    if "e_tester1_traces_per_s" in results and "d_model_predict_traces_per_s" in results:
        results["ratio_e_over_d"] = results["e_tester1_traces_per_s"] / \
            results["d_model_predict_traces_per_s"]
    print(format_table(results, args))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=1))
    return 0


ROWS = [("a_generator_traces_per_s", "(a) DataGenerator, one core", "traces/s", ">= 3000"),
        ("b_model_train_traces_per_s", "(b) model only, train_on_batch", "traces/s", ""),
        ("c_trainer1_traces_per_s", "(c) trainer1 end to end (last epoch)", "traces/s", ""),
        ("d_model_predict_traces_per_s", "(d) model only, predict_on_batch", "traces/s", ""),
        ("e_tester1_traces_per_s", "(e) tester1 end to end (after setup)", "traces/s", ""),
        ("f_rss_small_mb", "(f) trainer1 peak RSS, small file", "MB", ""),
        ("f_rss_large_mb", "(f) trainer1 peak RSS, large file", "MB", ""),
        ("f_rss_growth_mb", "(f) growth, large - small", "MB", "<= 200"),
        ("ratio_c_over_b", "c / b", "", ">= 0.9"),
        ("ratio_e_over_d", "e / d", "", ">= 0.9")]


def format_table(results, args):
    lines = ["| measurement | value | unit | target |", "|---|---:|---|---|"]
    for key, label, unit, target in ROWS:
        if key in results:
            value = results[key]
            # Rates of a few traces/s (the published head on a CPU) keep 3 figures.
            text = f"{value:.2f}" if key.startswith("ratio") else \
                f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
            if key.startswith("f_rss") and key != "f_rss_growth_mb":
                label = label.replace("small file", f"{args.n_small} traces").replace(
                    "large file", f"{args.n_large} traces")
            lines.append(f"| {label} | {text} | {unit} | {target} |")
    lines.append(f"\n{results['device']}")   # every result with the CPU it was measured on
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
