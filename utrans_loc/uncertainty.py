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
