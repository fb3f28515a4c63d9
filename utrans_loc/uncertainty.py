"""Monte-Carlo dropout: a copy of a trained model whose dropout layers keep sampling.

The tester's ``estimate_uncertainty`` runs this copy N times per batch; the
spread of the N predictions is the error bar. Builds on
:mod:`utrans_backbone` (its StochasticDepth) and plain Keras layers only.
"""

from __future__ import annotations

import keras
from keras import layers

import utrans_backbone as ub


@keras.saving.register_keras_serializable(package="utrans")
class MCDropout(layers.Dropout):
    """Dropout that also samples at inference (Monte-Carlo dropout)."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


@keras.saving.register_keras_serializable(package="utrans")
class MCStochasticDepth(ub.StochasticDepth):
    """Stochastic depth that also samples at inference."""

    def call(self, x, training=None):
        return super().call(x, training=True)


@keras.saving.register_keras_serializable(package="utrans")
class MCMultiHeadAttention(layers.MultiHeadAttention):
    """Multi-head attention whose attention dropout also samples at inference."""

    def call(self, query, value, key=None, **kwargs):
        kwargs["training"] = True
        return super().call(query, value, key, **kwargs)


_MC_CLASSES = {layers.Dropout: MCDropout, ub.StochasticDepth: MCStochasticDepth,
               layers.MultiHeadAttention: MCMultiHeadAttention}


def mc_sampling_model(model, seed=None):
    """A copy of ``model`` whose dropout-type layers sample at inference.

    Dropout, StochasticDepth and the attention dropout draw new masks on
    every call, while BatchNormalization stays in inference mode (the copy is
    only ever run with ``predict``, so its moving statistics are neither used
    nor updated from the batch). convF1's closing Dropout, which upstream
    never applies, stays off. Built once: N samples cost N forward passes of
    a compiled predict function. ``seed`` fixes every layer's random stream
    (layer i gets seed + i), so the same seed gives the same samples.
    """
    counter = iter(range(10**6))

    def clone(layer):
        config = layer.get_config()
        cls = _MC_CLASSES.get(type(layer))
        if cls is None or layer.name.startswith(ub.FROZEN_DROPOUT_PREFIX):
            return layer.__class__.from_config(config)
        if seed is not None:
            config["seed"] = int(seed) + next(counter)
        return cls.from_config(config)

    sampler = keras.models.clone_model(model, clone_function=clone)
    sampler.set_weights(model.get_weights())
    return sampler


# --------------------------------------------------------------------------
# Calibration of the Monte-Carlo spread
# --------------------------------------------------------------------------
CALIBRATION_NAME = "calibration.json"
CALIBRATION_FORMAT = 1
# quantity -> the results-table std columns it scales (degrees and km).
CALIBRATED_COLUMNS = {"lat": ("pred_event_lat_std", "pred_event_lat_std_km"),
                      "lon": ("pred_event_lon_std", "pred_event_lon_std_km"),
                      "depth": ("pred_depth_km_std",)}
EPICENTRE_STD = "pred_epicentre_std_km"


def read_calibration(path, input_model=None):
    """A saved calibration (``calibration.json``), checked.

    With ``input_model`` the calibration must have been fitted on that very
    model file (same sha256); otherwise ValueError naming both files.
    """
    import json
    import os

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"calibration file not found: {path}")
    try:
        cal = json.loads(open(path).read())
        factors = {q: float(cal["factors"][q]) for q in CALIBRATED_COLUMNS}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a calibration file written by tester1 ({err})") from None
    if cal.get("format") != CALIBRATION_FORMAT:
        raise ValueError(f"{path}: calibration format {cal.get('format')!r}, expected "
                         f"{CALIBRATION_FORMAT}")
    if not all(f > 0 and f < float("inf") for f in factors.values()):
        raise ValueError(f"{path}: calibration factors must be positive and finite, got {factors}")
    if input_model is not None:
        sha = ub.sha256_of(input_model)
        if sha != cal.get("model_sha256"):
            raise ValueError(
                f"calibration {path} was fitted on {cal.get('model_file')} (sha256 "
                f"{str(cal.get('model_sha256'))[:12]}...), not on {input_model} (sha256 "
                f"{sha[:12]}...): fit a calibration for this model (--calibration_set)")
    return {**cal, "factors": factors}


def apply_calibration(results, calibration):
    """The results table with calibrated std columns; the raw spread kept as ``*_std_raw``.

    Each std column of a quantity is multiplied by its factor (a standard
    deviation scale, the square root of the fitted variance factor); the
    epicentre spread is recomputed from the calibrated north and east parts.
    """
    out = results.copy()
    factors = calibration["factors"]
    for q, columns in CALIBRATED_COLUMNS.items():
        for col in columns:
            if col in out:
                out[col + "_raw"] = out[col]
                out[col] = out[col] * factors[q]
    if EPICENTRE_STD in out and "pred_event_lat_std_km" in out:
        import numpy as np

        out[EPICENTRE_STD + "_raw"] = out[EPICENTRE_STD]
        out[EPICENTRE_STD] = np.hypot(out["pred_event_lat_std_km"], out["pred_event_lon_std_km"])
    return out
