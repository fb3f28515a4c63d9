"""Devices, distribution and compute precision: the only backend-specific code.

:func:`configure_gpus` chooses the GPUs and their memory before the backend
runs anything; :func:`distribution_scope` is where a data-parallel model is
built (TensorFlow ``tf.distribute`` strategies, JAX ``keras.distribution``);
:func:`precision_policy` sets Keras mixed precision while a model is built.

This is the only module that imports tensorflow or jax (lazily, inside the
function for that backend), so model and training code stay backend-neutral.
"""

from __future__ import annotations

import contextlib
import os

import keras
import numpy as np


PRECISION_POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16",
                      "float16": "mixed_float16"}

# glibc mallopt parameters (malloc.h) and the values pool_cpu_memory sets.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOPT = {_M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 2**30, _M_TOP_PAD: 64 * 2**20}


def pool_cpu_memory():
    """Keep the CPU memory of a training step for the next step, instead of handing
    it back to the operating system and faulting it in again.

    Without oneDNN (TensorFlow's default on CPUs without AVX-512 VNNI/AMX, such
    as most AMD EPYC and laptop CPUs) TensorFlow allocates every tensor with
    plain ``malloc``, and glibc returns large blocks to the system when they are
    freed: measured on the tests' small model, ~410,000 page faults per
    training step, 0.7 of a core in the kernel, training at 0.6 of the model's
    rate. This sets ``TF_CPU_ALLOCATOR_USE_BFC=true`` (TensorFlow's pooling
    allocator; a value the user set is kept) and glibc's mmap threshold (32 MB),
    trim threshold (1 GB) and top pad (64 MB), after which a step faults a few
    hundred pages. It must run before TensorFlow creates its CPU allocator (the
    first operation); the stage modules call it on import. Elsewhere than glibc
    (macOS, musl) the malloc part is skipped. The cost: freed memory stays with
    the process (peak RSS is measured in bench/RESULTS.md).
    """
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in _MALLOPT.items())


def check_mixed_precision(mixed_precision):
    """ValueError unless ``mixed_precision`` is a key of :data:`PRECISION_POLICIES`."""
    if mixed_precision not in PRECISION_POLICIES:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISION_POLICIES)}, "
                         f"got {mixed_precision!r}")


@contextlib.contextmanager
def precision_policy(mixed_precision="off"):
    """Context in which new layers compute in ``mixed_precision``.

    'off': float32; 'bfloat16' / 'float16': Keras mixed precision (variables
    stay float32, the output layer computes in float32; with 'float16'
    ``compile`` wraps the optimizer in a LossScaleOptimizer). The global
    policy is restored on exit.
    """
    check_mixed_precision(mixed_precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISION_POLICIES[mixed_precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)



def distribution_scope(multi_gpu=False, number_of_gpus=1):
    """Context in which to build and compile a model that trains data-parallel.

    Parameters
    ----------
    multi_gpu : bool
        Off: a no-op context (the backend's default device).
    number_of_gpus : int
        Replicas wanted. GPUs when there are any, else the logical CPU devices
        :func:`configure_gpus` split the host into. Fewer available: those
        are used and one line says so.

    Returns
    -------
    context manager
        TensorFlow: the scope of a ``tf.distribute.MirroredStrategy`` over
        those devices, or of a ``MultiWorkerMirroredStrategy`` when
        ``TF_CONFIG`` is set (several machines; each uses its local GPUs).
        JAX: a no-op context; a ``keras.distribution.DataParallel`` over
        those devices is set as the process-wide distribution, because
        ``fit`` reads it when it runs (after the ``with`` block).

    Notes
    -----
    Keras feeds each replica ``batch_size / replicas`` traces of every batch
    and averages the gradients, so one step equals a single-device step on
    the whole batch, except for BatchNormalization on TensorFlow: each
    replica normalises with its own batch statistics (per replica, as with
    upstream's MirroredStrategy). On JAX the whole step is one program over
    the sharded batch, so the statistics are the whole batch's. Call
    :func:`configure_gpus` with the same ``multi_gpu`` and ``number_of_gpus``
    first.
    """
    if not multi_gpu:
        return contextlib.nullcontext()
    _check_number_of_gpus(number_of_gpus)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tf_strategy(int(number_of_gpus)).scope()
    if backend == "jax":
        keras.distribution.set_distribution(_jax_data_parallel(int(number_of_gpus)))
        return contextlib.nullcontext()
    raise ValueError(f"multi_gpu is supported on the tensorflow and jax backends, not {backend}")


def replica_count(model):
    """Number of devices (over all machines) that ``model.fit`` splits a batch across."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return int(model.distribute_strategy.num_replicas_in_sync)
    if backend == "jax":
        distribution = keras.distribution.distribution()
        return 1 if distribution is None else int(np.size(distribution.device_mesh.devices))
    return 1


def configure_gpus(gpu_limit=None, gpuid=None, multi_gpu=False, number_of_gpus=1):
    """Choose and set up the devices; call it before the backend runs anything.

    Parameters
    ----------
    gpu_limit : float or None
        Fraction of each used GPU's memory the process may take, in (0, 1].
        TensorFlow: a logical device with that memory limit (None: memory
        grows as needed). JAX: ``XLA_PYTHON_CLIENT_MEM_FRACTION``.
    gpuid : int or None
        Use only this GPU (its number as ``nvidia-smi`` shows it, or as listed
        in ``CUDA_VISIBLE_DEVICES``). The command line already restricts
        ``CUDA_VISIBLE_DEVICES`` to it; a Python call is restricted here.
    multi_gpu : bool
        Data-parallel training will follow (:func:`distribution_scope`).
        Without a GPU, the host CPU is split into ``number_of_gpus`` logical
        devices, so the same code runs (slowly) and can be tested on a CPU.
    number_of_gpus : int
        Devices for ``multi_gpu``.

    Raises
    ------
    ValueError
        ``gpu_limit`` outside (0, 1], ``number_of_gpus`` < 1, ``gpuid`` given
        but no such GPU visible, or a setting that can no longer be applied
        because the backend already started in this process.
    """
    if gpu_limit is not None and not _is_fraction(gpu_limit):
        raise ValueError(f"gpu_limit must be a fraction of the GPU memory in (0, 1], got {gpu_limit!r}")
    if multi_gpu:
        _check_number_of_gpus(number_of_gpus)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        _configure_tensorflow(gpu_limit, gpuid, multi_gpu, int(number_of_gpus))
    elif backend == "jax":
        _configure_jax(gpu_limit, gpuid, multi_gpu, int(number_of_gpus))
    elif gpuid is not None or gpu_limit is not None or multi_gpu:
        raise ValueError(f"gpuid, gpu_limit and multi_gpu are supported on the tensorflow and "
                         f"jax backends, not {backend}")


def _is_fraction(value):
    try:
        return 0 < float(value) <= 1
    except (TypeError, ValueError):
        return False


def _check_number_of_gpus(number_of_gpus):
    if int(number_of_gpus) < 1:
        raise ValueError(f"number_of_gpus must be >= 1, got {number_of_gpus}")


def _visible_gpu_index(gpuid, n_visible=None):
    """Position of GPU ``gpuid`` among the GPUs this process sees.

    The command line sets ``CUDA_VISIBLE_DEVICES=<gpuid>`` (position 0); a
    Python call may find any list there, or none (position = gpuid).
    ``n_visible`` None: not known yet (JAX not started), not checked.
    """
    visible_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"CUDA_VISIBLE_DEVICES={visible_env!r}"
    if n_visible == 0:
        raise ValueError(f"gpuid={gpuid} was given but no GPU is visible to this process "
                         f"({where}); leave gpuid out to run on the CPU")
    visible = [v.strip() for v in visible_env.split(",")] if visible_env else []
    if str(gpuid) in visible:
        index = visible.index(str(gpuid))
    elif visible and all(v.isdigit() for v in visible):
        index = -1  # a list of GPU numbers without this one
    else:
        index = int(gpuid)  # no list, or UUIDs: gpuid counts the visible GPUs
    if index < 0 or (n_visible is not None and index >= n_visible):
        raise ValueError(f"gpuid={gpuid} is not among the GPUs visible to this process "
                         f"({n_visible or 'unknown number'}, {where})")
    return index


def _fewer_devices(kind, found, asked):
    print(f"multi_gpu: number_of_gpus={asked} but only {found} {kind} device(s) available; "
          f"training on {found}")


def _too_late(what, err):
    return ValueError(f"{what}: this must be set before the {keras.backend.backend()} backend "
                      f"starts, and it already runs in this process ({err}); call "
                      "configure_gpus before anything else uses the backend, or use a fresh "
                      "process")


def _configure_tensorflow(gpu_limit, gpuid, multi_gpu, number_of_gpus):
    """TensorFlow: visible GPUs, their memory, and the CPU split for multi_gpu.

    Every call is made only when it changes something, because TensorFlow
    refuses changes once its runtime started (RuntimeError), even no-op ones
    for some settings; a second trainer1/tester1 call in one process with the
    same settings must still work.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpuid is not None:
        gpus = [gpus[_visible_gpu_index(gpuid, len(gpus))]]
    elif multi_gpu and os.environ.get("TF_CONFIG"):
        # MultiWorkerMirroredStrategy takes every visible GPU: hide the extra ones.
        gpus = gpus[:number_of_gpus]
    if gpuid is not None or (multi_gpu and os.environ.get("TF_CONFIG")):
        if tf.config.get_visible_devices("GPU") != gpus:
            try:
                tf.config.set_visible_devices(gpus, "GPU")
            except RuntimeError as err:
                what = f"gpuid={gpuid}" if gpuid is not None else f"number_of_gpus={number_of_gpus}"
                raise _too_late(f"{what} (the visible GPUs)", err) from None
    for gpu in gpus:
        if gpu_limit is not None:
            # CUDA numbers the visible GPUs like TensorFlow: /physical_device:GPU:<n>.
            total_mb = _nvidia_total_mb(int(gpu.name.rsplit(":", 1)[1]))
            wanted = [tf.config.LogicalDeviceConfiguration(memory_limit=int(gpu_limit * total_mb))]
            if tf.config.get_logical_device_configuration(gpu) != wanted:
                try:
                    tf.config.set_logical_device_configuration(gpu, wanted)
                except RuntimeError as err:
                    raise _too_late(f"gpu_limit={gpu_limit}", err) from None
        elif tf.config.get_logical_device_configuration(gpu) is None:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass  # already running: keep its memory policy (growth is only a nicety)
    if multi_gpu and not gpus and not os.environ.get("TF_CONFIG"):
        _tf_split_host_cpu(number_of_gpus)


def _tf_split_host_cpu(n):
    """Split the host CPU into ``n`` logical devices (TensorFlow, no GPU).

    MirroredStrategy then runs its usual replica code on them: no speed-up,
    but the multi-device path runs and can be tested without a GPU.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or []
    if len(current) >= n:
        return  # already split (an earlier call in this process)
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:
        raise _too_late(f"multi_gpu without a GPU splits the CPU into number_of_gpus={n} "
                        "devices", err) from None
    _cpu_split_note(n)


def _cpu_split_note(n):
    print(f"multi_gpu: no GPU found; the CPU is split into {n} logical devices (same code path, "
          "no speed-up)")


def _tf_strategy(n):
    """MultiWorkerMirroredStrategy with TF_CONFIG, else MirroredStrategy on ``n`` devices."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        # Several machines: TF_CONFIG names the workers and this one's index; each
        # worker uses its local GPUs (configure_gpus hid all but n), or its CPU.
        return _tf_fix_multiworker_reduce(tf.distribute.MultiWorkerMirroredStrategy())
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    kind = "GPU"
    if not devices:
        devices, kind = [d.name for d in tf.config.list_logical_devices("CPU")], "CPU"
    if len(devices) < n:
        _fewer_devices(kind, len(devices), n)
    return tf.distribute.MirroredStrategy(devices=devices[:n])


def _tf_fix_multiworker_reduce(strategy):
    """Make ``strategy.reduce`` accept the two calls Keras 3's ``fit`` makes.

    Keras 3 (checked with 3.15) fails under MultiWorkerMirroredStrategy
    (keras-team/keras#20585): it reduces the first (x, y) batch as one
    structure with ``axis=None`` (to build the model), and each scalar
    metric with ``axis=0``. Reduce each element separately, and scalars over
    the replicas only, which is what both calls mean.
    """
    import tensorflow as tf

    reduce = strategy.reduce

    def reduce_each(reduce_op, value, axis=None):
        def one(v):
            parts = getattr(v, "values", (v,))
            scalar = all(getattr(p, "shape", None) is not None and p.shape.rank == 0 for p in parts)
            return reduce(reduce_op, v, None if scalar else axis)
        return tf.nest.map_structure(one, value)

    strategy.reduce = reduce_each
    return strategy


def _configure_jax(gpu_limit, gpuid, multi_gpu, number_of_gpus):
    """JAX: settings JAX reads when it creates its backends (its first computation).

    Applied here while JAX has not started (the command line has set their
    environment equivalents already). Afterwards the GPU memory is reserved
    and the device list fixed: gpuid then only makes that GPU the default
    device, and a different gpu_limit or too few CPU devices raise.
    """
    import jax

    started = _jax_started()
    if not started:
        if gpu_limit is not None:
            os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(gpu_limit)
        if multi_gpu and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            # Splits only the host (CPU) platform, so harmless where there are GPUs.
            jax.config.update("jax_num_cpu_devices", number_of_gpus)
        if gpuid is not None:
            jax.config.update("jax_cuda_visible_devices", str(_visible_gpu_index(gpuid)))
    elif gpu_limit is not None and os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") != str(gpu_limit):
        raise _too_late(f"gpu_limit={gpu_limit}", "GPU memory already reserved")
    gpus = _jax_gpus()
    if gpuid is not None:
        # Not started: that GPU is the only one left, so only "none at all" is checked.
        index = _visible_gpu_index(gpuid, len(gpus)) if started or not gpus else 0
        if len(gpus) > 1:
            jax.config.update("jax_default_device", gpus[index])
    if multi_gpu and not gpus:
        n_cpu = len(jax.devices("cpu"))
        if started and n_cpu < number_of_gpus:
            raise _too_late(f"multi_gpu without a GPU splits the CPU into number_of_gpus="
                            f"{number_of_gpus} devices", f"{n_cpu} CPU device(s)")
        if n_cpu >= number_of_gpus:
            _cpu_split_note(number_of_gpus)


def _jax_started():
    """Whether JAX already created its backends (then device settings are fixed)."""
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume it has started
        return True


def _jax_gpus():
    import jax

    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU platform
        return []


def _jax_data_parallel(n):
    """``keras.distribution.DataParallel`` over ``n`` GPUs, else ``n`` host CPU devices."""
    if os.environ.get("TF_CONFIG"):
        raise ValueError("TF_CONFIG (training on several machines) is supported on the "
                         "tensorflow backend; unset it, or set KERAS_BACKEND=tensorflow")
    kind = "GPU" if _jax_gpus() else "CPU"
    devices = keras.distribution.list_devices(kind.lower())
    if len(devices) < n:
        _fewer_devices(kind, len(devices), n)
    return keras.distribution.DataParallel(devices=devices[:n])


def _nvidia_total_mb(index):
    """Total memory (MB) of the index-th GPU visible to this process."""
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    device = visible[index].strip() if index < len(visible) and visible[index].strip() else str(index)
    out = subprocess.run(["nvidia-smi", "-i", device, "--query-gpu=memory.total",
                          "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[0])


def device_description():
    """The device(s) this process computes on, in words, for a start-up line:
    ``'GPU: NVIDIA H100 80GB HBM3'`` (``' x2'`` for two alike), or
    ``'CPU: no GPU visible'`` so that a user who meant to train on a GPU sees
    at once that the backend did not find it (see docs/training.md for the GPU
    install lines)."""
    names = _gpu_names()
    if not names:
        return "CPU: no GPU visible"
    counted = {name: names.count(name) for name in names}
    return "GPU: " + ", ".join(name + (f" x{n}" if n > 1 else "") for name, n in counted.items())


def _gpu_names():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                for g in gpus]
    if backend == "jax":
        return [getattr(d, "device_kind", str(d)) for d in _jax_gpus()]
    return []
