"""Monte-Carlo dropout: a copy of a trained model whose dropout layers keep sampling,
and the calibration of the spread it gives.

The tester's ``estimate_uncertainty`` runs this copy N times per batch; the
spread of the N predictions is the error bar. That spread measures only how
much dropout moves the prediction, so it is usually too small:
:func:`fit_calibration` finds, on a labeled split, one standard-deviation
factor per quantity (lat, lon, depth) that makes the error bars cover the
truth as often as a Gaussian says; :func:`write_calibration` /
:func:`read_calibration` keep it beside the model it was fitted on, and
:func:`apply_calibration` scales a results table. Builds on
:mod:`utrans_backbone` (its StochasticDepth), plain Keras layers and
:mod:`utrans_loc.metrics`.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
from keras import layers

import utrans_backbone as ub
from utrans_loc import files, metrics


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
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"calibration file not found: {path}")
    try:
        with open(path) as fh:
            cal = json.load(fh)
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
    deviation scale; the variance scales by its square); the epicentre
    spread is recomputed from the calibrated north and east parts.
    """
    out = results.copy()
    factors = calibration["factors"]
    for q, columns in CALIBRATED_COLUMNS.items():
        for col in columns:
            if col in out:
                out[col + "_raw"] = out[col]
                out[col] = out[col] * factors[q]
    if EPICENTRE_STD in out and "pred_event_lat_std_km" in out:
        out[EPICENTRE_STD + "_raw"] = out[EPICENTRE_STD]
        out[EPICENTRE_STD] = np.hypot(out["pred_event_lat_std_km"], out["pred_event_lon_std_km"])
    return out


# quantity -> (error column of metrics.location_errors, raw std column it is scored against)
FIT_COLUMNS = {"lat": ("lat_deg", "pred_event_lat_std"),
               "lon": ("lon_deg", "pred_event_lon_std"),
               "depth": ("depth_km", "pred_depth_km_std")}
# The coverage fit matches the two intervals the reports show: 1 and 2 sigma.
COVERAGE_SIGMAS = (1.0, 2.0)
CALIBRATION_METHODS = ("coverage", "mle")


def variance_factor_mle(z):
    """Gaussian maximum-likelihood variance factor of normalised errors ``z = error / sigma``.

    With errors ~ N(0, s^2 sigma^2) the likelihood of one common factor
    ``s^2`` peaks at ``mean(z^2)``.
    """
    z = np.asarray(z, float)
    return float(np.mean(z ** 2))


def std_factor_coverage(z, sigmas=COVERAGE_SIGMAS):
    """The std factor ``s`` whose intervals ``k s sigma`` (k in ``sigmas``) cover best.

    Minimises ``sum_k (mean(|z| <= k s) - P_gauss(k))^2``: the squared gaps
    between the observed and the Gaussian coverage of the 1- and 2-sigma
    intervals. The objective only changes where some ``|z_i| / k`` is
    crossed, so it is evaluated once on every plateau between those points
    (at the geometric middle) and the best plateau wins: exact, no search
    tolerance. With one ``k`` this is the quantile fit (``s`` = the
    P_gauss(k) quantile of ``|z|`` / k).
    """
    abs_z = np.sort(np.abs(np.asarray(z, float)))
    ks = np.asarray(sigmas, float)
    expected = np.asarray(metrics.expected_coverage("lat_deg", ks), float)
    edges = np.unique((abs_z[:, None] / ks[None, :]).ravel())
    edges = edges[edges > 0]
    if not len(edges):
        raise ValueError("all normalised errors are zero: no spread factor can be fitted")
    candidates = np.concatenate([[edges[0] / 2], np.sqrt(edges[:-1] * edges[1:]),
                                 [edges[-1] * 2]])
    observed = np.searchsorted(abs_z, candidates[:, None] * ks[None, :], side="right") / len(abs_z)
    return float(candidates[np.argmin(((observed - expected) ** 2).sum(axis=1))])


def _normalised_errors(results):
    """{quantity: error / raw sigma} over the scorable rows with a positive, finite sigma."""
    if any(std_col + "_raw" in results for _, std_col in FIT_COLUMNS.values()):
        raise ValueError("the table is already calibrated (it has *_std_raw columns): fit on "
                         "the raw Monte-Carlo spread")
    errors = metrics.location_errors(results)
    if not len(errors):
        raise ValueError("calibration set: no trace has event location and depth")
    out = {}
    for q, (err_col, std_col) in FIT_COLUMNS.items():
        if std_col not in results:
            raise ValueError(f"calibration needs the std column {std_col} (predict with "
                             "estimate_uncertainty, or with a model trained with --aleatoric)")
        sigma = results.loc[errors.index, std_col].to_numpy(float)
        err = errors[err_col].to_numpy(float)
        ok = np.isfinite(sigma) & (sigma > 0) & np.isfinite(err)
        if ok.sum() < 2:
            raise ValueError(f"calibration set: {int(ok.sum())} trace(s) with a positive "
                             f"{std_col}; at least 2 are needed")
        out[q] = err[ok] / sigma[ok]
    return out, errors


def _coverage_summary(table, errors):
    """{quantity: {'1sigma': fraction, '2sigma': fraction}} from metrics.coverage_table."""
    cov = metrics.coverage_table(table, errors)
    return {r.quantity: {"1sigma": float(r.coverage_1sigma), "2sigma": float(r.coverage_2sigma)}
            for r in cov.itertuples()}


def fit_calibration(results, method="coverage", model_file=None, **provenance):
    """Fit one std factor per quantity (lat, lon, depth) on a labeled results table.

    Parameters
    ----------
    results : pandas.DataFrame
        tester1's results table of a labeled split, predicted with Monte-Carlo
        sampling (raw ``*_std`` columns, no ``*_std_raw``). Errors are
        prediction - truth (:func:`utrans_loc.metrics.location_errors`):
        lat / lon in degrees against ``pred_event_lat_std`` /
        ``pred_event_lon_std``, depth in km against ``pred_depth_km_std``.
    method : {'coverage', 'mle'}
        'coverage' (default): :func:`std_factor_coverage`, the factor whose 1-
        and 2-sigma intervals cover the truth as closely as a Gaussian's
        (0.683, 0.954). 'mle': :func:`variance_factor_mle`, ``s^2 =
        mean((error / sigma)^2)``. Both are recorded; ``method`` says which
        one the factors are.
    model_file : str, optional
        The model the samples came from; its path and sha256 are recorded so
        :func:`read_calibration` can refuse the calibration for another model.
    **provenance
        Recorded as given (``calibration_set``, ``input_hdf5``,
        ``number_of_sampling``, ``seed``, ...).

    Returns
    -------
    dict
        The calibration (:data:`CALIBRATION_FORMAT`): ``factors`` (std
        multipliers), ``variance_factors`` (their squares), ``method``,
        ``factors_mle`` and ``factors_coverage`` (both fits), ``n_traces``,
        the provenance, ``model_file`` / ``model_sha256`` and ``coverage``
        (``raw`` and ``calibrated``, 1 and 2 sigma per quantity, on this
        table). Fitting on the set it is evaluated on is optimistic: judge it
        on another split.

    Raises
    ------
    ValueError
        Unknown method, no std columns, fewer than 2 usable traces, or a
        table that is already calibrated.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
                         f"got {method!r}")
    z, errors = _normalised_errors(results)
    fits = {"coverage": {q: std_factor_coverage(v) for q, v in z.items()},
            "mle": {q: float(np.sqrt(variance_factor_mle(v))) for q, v in z.items()}}
    factors = fits[method]
    cal = {"format": CALIBRATION_FORMAT, "method": method, "factors": factors,
           "variance_factors": {q: f ** 2 for q, f in factors.items()},
           "factors_coverage": fits["coverage"], "factors_mle": fits["mle"],
           "n_traces": len(errors), "n_used": {q: int(len(v)) for q, v in z.items()},
           **provenance}
    if model_file is not None:
        cal["model_file"] = os.path.abspath(model_file)
        cal["model_sha256"] = ub.sha256_of(model_file)
    scored = results.loc[errors.index]
    cal["coverage"] = {"raw": _coverage_summary(scored, errors),
                       "calibrated": _coverage_summary(apply_calibration(scored, cal), errors)}
    return cal


def write_calibration(path, calibration):
    """Write a calibration as JSON (atomically); returns ``path``."""
    return files.atomic_write_text(path, json.dumps(calibration, indent=2) + "\n")
