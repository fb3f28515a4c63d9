"""Location checkpoints: the model configuration saved beside them, and loading them.

trainer1 writes ``models/model_config.json`` next to its checkpoints (head
size, depth range, normalisation, band-pass, variance head); :func:`model_settings` reads it
back (or infers the head from an upstream Keras 2 file) so the tester, and
anything else that predicts, rebuilds exactly the trained model with
:func:`build_from_checkpoint`. :func:`load_location_weights` refuses, naming
the file, any checkpoint that does not fit the model.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import h5py

import EqT_utils_Loc_California as U
import utrans_backbone as ub
from utrans_loc.devices import precision_policy
from utrans_loc.files import atomic_write_text

HEAD_KEYS = tuple(U.PUBLISHED_HEAD)
MODEL_CONFIG_NAME = "model_config.json"


def write_model_config(path, **config):
    """Write the model/label configuration a tester needs (atomic)."""
    atomic_write_text(path, json.dumps(config, indent=2, default=str))


def read_model_config(weights_path):
    """The ``model_config.json`` saved by trainer1 beside a checkpoint, or {}."""
    cfg = Path(weights_path).resolve().parent / MODEL_CONFIG_NAME
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text())
    except ValueError as err:   # JSON or text decoding
        raise ValueError(f"{cfg} (beside --input_model {weights_path}): not valid JSON "
                         f"({err})") from None


def infer_head_from_legacy_h5(path):
    """ConvMixer size of an upstream (Keras 2 .h5) location checkpoint, from its shapes."""
    file_layers = ub.read_legacy_h5(path)
    depthwise = [arrs for name, arrs in file_layers if name.startswith("depthwise_conv1d")]
    # The ConvMixer stem is the only conv that reads the 4-channel concatenation.
    stems = [arrs for name, arrs in file_layers
             if name.startswith("conv1d") and arrs[0][1].ndim == 3 and arrs[0][1].shape[1] == 4]
    if not depthwise or not stems:
        raise ub.WeightsFileError(f"{path}: not a U-Trans + ConvMixer location checkpoint "
                                  "(no ConvMixer layers found)")
    stem_kernel = stems[0][0][1]
    return {"convmixer_filters": int(stem_kernel.shape[2]),
            "convmixer_depth": len(depthwise),
            "convmixer_kernel": int(depthwise[0][0][1].shape[0]),
            "convmixer_patch": int(stem_kernel.shape[0])}


def is_legacy_h5(path):
    """True for a Keras 2 weights file (root or model_weights has 'layer_names').

    A file that is not HDF5 raises :class:`~utrans_backbone.WeightsFileError`
    naming the file and ``--input_model`` (h5py's own message names neither).
    """
    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        raise ub.WeightsFileError(f"--input_model {path}: not a readable HDF5 weights file "
                                  f"(.weights.h5 of trainer1 or a Keras 2 .h5; h5py: {err})"
                                  ) from None
    with fh:
        root = fh["model_weights"] if "model_weights" in fh else fh
        return "layer_names" in root.attrs


def _keras3_weight_shapes(path):
    """Shapes of the model arrays in a Keras 3 ``.weights.h5`` file (a checkpoint
    of a compiled model also holds the optimizer state, which is not compared)."""
    shapes = []

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset):
            shapes.append(tuple(obj.shape))

    with h5py.File(path, "r") as fh:
        for key in ("layers", "vars"):
            if key in fh:
                fh[key].visititems(visit)
    return shapes


# Keras 3 stores a layer's arrays under its class name: the variance head's
# LogVarianceDense is ``layers/log_variance_dense`` in a .weights.h5 file.
VARIANCE_HEAD_GROUP = "log_variance_dense"


def has_variance_head(path):
    """True when the weights file ``path`` holds a variance head (trained with --aleatoric)."""
    if is_legacy_h5(path):
        return False
    with h5py.File(path, "r") as fh:
        return "layers" in fh and VARIANCE_HEAD_GROUP in fh["layers"]


def model_has_variance_head(model):
    """True for a location model built with ``aleatoric=True``."""
    return any(layer.name == "log_variance" for layer in model.layers)


def check_variance_head(model, path, what="--input_model"):
    """Refuse, naming the file, a checkpoint whose variance head the model does not match."""
    in_file, in_model = has_variance_head(path), model_has_variance_head(model)
    if in_model and not in_file:
        raise ub.WeightsFileError(
            f"{what} {path}: has no variance head (log_variance): it was not trained with "
            "--aleatoric, so it cannot be resumed or loaded as an aleatoric model")
    if in_file and not in_model:
        config = Path(path).resolve().parent / MODEL_CONFIG_NAME
        why = ("does not say so ('aleatoric': true)" if config.is_file() else "is missing")
        raise ub.WeightsFileError(
            f"{what} {path}: has a variance head (trained with --aleatoric) but its "
            f"model_config.json ({config}) {why}: keep trainer1's models/model_config.json "
            "beside the weights")


def load_location_weights(model, path):
    """Load a location checkpoint: trainer1's Keras 3 ``.weights.h5`` or an
    upstream Keras 2 ``.h5``. Fails with a message naming the file when it
    does not fit the model (a variance head in one and not the other among them)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model weights file not found: {path}")
    check_variance_head(model, path)
    if is_legacy_h5(path):
        return ub.load_legacy_h5_weights(model, path)
    saved = sorted(_keras3_weight_shapes(path))
    wanted = sorted(tuple(w.shape) for w in model.weights)
    if saved != wanted:
        raise ub.WeightsFileError(
            f"{path}: holds {len(saved)} arrays that do not match the {len(wanted)} weights of "
            "this location model (another ConvMixer size? pass --convmixer_filters/--convmixer_depth "
            "or keep model_config.json beside the checkpoint)")
    try:
        with warnings.catch_warnings():
            # Keras only warns when it skips part of a file: treat that as a mismatch.
            warnings.simplefilter("error")
            model.load_weights(path)
    except (ValueError, KeyError, UserWarning) as err:
        raise ub.WeightsFileError(f"{path}: does not fit the location model ({err})") from None
    return {"path": path, "sha256": ub.sha256_of(path), "official": False,
            "n_layers": len([l for l in model.layers if l.weights])}


# Settings of a model, in the order they are looked for: given, model_config.json,
# the Keras 2 file's shapes, these defaults.
MODEL_DEFAULTS = {"input_dimention": (6000, 3), "max_d": U.MAX_D, "min_d": U.MIN_D,
                  "normalization_mode": "std", "bandpass": False, **U.PUBLISHED_HEAD}


def model_settings(input_model, **given):
    """Model/label settings of a checkpoint: explicit values (not None), else the
    checkpoint's model_config.json (trainer1), else the Keras 2 file's shapes,
    else :data:`MODEL_DEFAULTS` (the published model). ``aleatoric`` (the
    variance head) comes from model_config.json only (False without it)."""
    saved = read_model_config(input_model)
    if not saved and is_legacy_h5(input_model):
        saved = infer_head_from_legacy_h5(input_model)
    cfg = {}
    for key, default in MODEL_DEFAULTS.items():
        value = given.get(key)
        cfg[key] = value if value is not None else saved.get(key, default)
    cfg["input_dimention"] = tuple(cfg["input_dimention"])
    cfg["aleatoric"] = bool(saved.get("aleatoric", False))
    cfg["variance_head_units"] = int(saved.get("variance_head_units", 0))
    if not cfg["max_d"] > cfg["min_d"]:
        raise ValueError(f"max_d ({cfg['max_d']}) must be larger than min_d ({cfg['min_d']})")
    return cfg


def build_from_checkpoint(input_model, cfg, foundation_weights=None, mixed_precision="off"):
    """The location model of ``cfg`` (:func:`model_settings`) with ``input_model`` loaded.

    Returns
    -------
    (keras.Model, dict)
        The model and what :func:`load_location_weights` says of the file
        (path, sha256).
    """
    with precision_policy(mixed_precision):
        model = U.build_location_model(tuple(cfg["input_dimention"]),
                                       foundation_weights=foundation_weights,
                                       aleatoric=bool(cfg.get("aleatoric", False)),
                                       variance_head_units=int(cfg.get("variance_head_units",
                                                                       0)),
                                       **{k: cfg[k] for k in HEAD_KEYS})
    return model, load_location_weights(model, input_model)
