"""U-Trans foundation backbone (Keras 3).

The U-Trans foundation is a 1-D U-Net whose bottleneck is a compact
convolutional transformer (CCT). It was trained self-supervised to reconstruct
clean 3-component waveforms (6000 samples, E/N/Z, 100 Hz) from corrupted ones;
downstream tasks take its transformer output, the *latent* of shape (75, 80).

The official weights ``UTrans_Foundation.h5`` are a Keras 2 legacy weights
file. Such files are matched to a model by the ORDER of the layers that own
weights, so the layers below are created in exactly the upstream order and the
loader checks every layer's weight count and shapes instead of trusting it.

Public API
----------
build_foundation(input_shape=(6000, 3), d1=5, weights=None) -> keras.Model
latent_model(foundation) -> keras.Model               # (B, 75, 80)
decoder_stream(latent, ...) -> tensor                  # (B, 6000, 1)
load_legacy_h5_weights(model, path) -> dict            # strict, order-based
resolve_foundation_weights(value=None) -> str | None   # CLI/env/default/cache
fetch_foundation_weights(url=None, cache_dir=None) -> str   # download once, verified
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import warnings
from pathlib import Path

import h5py
import keras
import numpy as np
from keras import layers, ops

OFFICIAL_SHA256 = "56760438ba460ee9162130a7748fe13e9197ebe75335f19e8e7b0d5abe3613ab"
DEFAULT_WEIGHTS = os.path.join("weights", "UTrans_Foundation.h5")
WEIGHTS_ENV = "UTRANS_WEIGHTS"
LATENT_NAME = "utrans_latent"
# convF1's closing Dropout is never active upstream; Monte-Carlo sampling keeps it off.
FROZEN_DROPOUT_PREFIX = "convf1_dropout"
# The official file, fetched on first use (HEAD: the repository's default branch;
# the sha256 pins the content, so a changed upstream file is refused, not used).
OFFICIAL_URL = ("https://raw.githubusercontent.com/omarmohamed15/"
                "U-Trans-Foundation-For-Seismic-Waveform-Representation/HEAD/"
                "weights/UTrans_Foundation.h5")
URL_ENV = "UTRANS_WEIGHTS_URL"        # another origin (a mirror, or file:// in tests)
CACHE_ENV = "UTRANS_CACHE_DIR"        # cache folder (default: Keras' ~/.keras)
CACHE_SUBDIR = "utrans"
FETCH_TIMEOUT_S = 60
DOWNLOAD_HINT = (
    "download it from the U-Trans repository "
    "(omarmohamed15/U-Trans-Foundation-For-Seismic-Waveform-Representation, "
    "file weights/UTrans_Foundation.h5) and pass its path with "
    "--foundation_weights, set UTRANS_WEIGHTS, or use --foundation_weights none"
)

# CCT bottleneck hyper-parameters of the published foundation.
PROJECTION_DIM = 80
NUM_HEADS = 4
TRANSFORMER_LAYERS = 4
STOCHASTIC_DEPTH_RATE = 0.1


class WeightsFileError(ValueError):
    """A weights file that does not fit the model it is loaded into."""


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="utrans")
class StochasticDepth(layers.Layer):
    """Drop the whole residual branch per sample with probability ``drop_prob``.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` in training; identity
    at inference. Uses the static rank, which works in graph mode and on every
    backend (the upstream ``len(tf.shape(x))`` does not).
    """

    def __init__(self, drop_prob, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.drop_prob = float(drop_prob)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.drop_prob <= 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(shape, dtype=x.dtype, seed=self.seed_generator)
        mask = ops.floor(keep_prob + noise)
        return x / keep_prob * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "drop_prob": self.drop_prob, "seed": self.seed}


def _conv(x, filters, kernel_size=3, activation="relu", name=None):
    return layers.Conv1D(
        filters, kernel_size, padding="same", activation=activation,
        kernel_initializer="he_normal", name=name,
    )(x)


def _double_conv(x, filters):
    return _conv(_conv(x, filters), filters)


def _mlp(x, hidden_units, dropout_rate):
    for units in hidden_units:
        x = layers.Dense(units, activation="gelu")(x)
        x = layers.Dropout(dropout_rate)(x)
    return x


def cct_bottleneck(x, projection_dim=PROJECTION_DIM, num_heads=NUM_HEADS,
                   transformer_layers=TRANSFORMER_LAYERS,
                   stochastic_depth_rate=STOCHASTIC_DEPTH_RATE):
    """Compact convolutional transformer: tokenizer, 4 pre-norm blocks, LayerNorm.

    The upstream tokenizer is a custom layer wrapping a Sequential with one
    bias-free Conv1D; the weights file stores it as one layer with one kernel,
    so a plain Conv1D named ``cct_tokenizer1`` is the same function.
    No positional embedding.
    """
    x = layers.Conv1D(projection_dim, 3, padding="same", use_bias=False,
                      activation="relu", kernel_initializer="he_normal",
                      name="cct_tokenizer1")(x)
    drop_rates = np.linspace(0.0, stochastic_depth_rate, transformer_layers)
    for rate in drop_rates:
        x1 = layers.LayerNormalization(epsilon=1e-5)(x)
        attn = layers.MultiHeadAttention(num_heads=num_heads, key_dim=projection_dim,
                                         dropout=0.1)(x1, x1)
        attn = StochasticDepth(rate)(attn)
        x2 = layers.Add()([attn, x])
        x3 = layers.LayerNormalization(epsilon=1e-5)(x2)
        x3 = _mlp(x3, [projection_dim, projection_dim], 0.1)
        x3 = StochasticDepth(rate)(x3)
        x = layers.Add()([x3, x2])
    return layers.LayerNormalization(epsilon=1e-5, name=LATENT_NAME)(x)


def _up_block(x, skip, filters, up, up_kernel):
    up_x = _conv(layers.UpSampling1D(up)(x), filters, up_kernel)
    x = layers.Concatenate()([skip, up_x])
    return _double_conv(x, filters)


def build_foundation(input_shape=(6000, 3), d1=5, weights=None):
    """Build the U-Trans foundation model (output: reconstruction, (6000, 3)).

    Parameters
    ----------
    input_shape : tuple
        (samples, channels) of one trace; the published model uses (6000, 3).
    d1 : int
        Width of the first encoder stage; later stages double it (5 published).
    weights : str or None
        Path to ``UTrans_Foundation.h5`` (Keras 2 legacy weights file), or None
        for random (he_normal) initialisation. Loading is strict: see
        :func:`load_legacy_h5_weights`.

    Returns
    -------
    keras.Model
        Input named ``input``; the transformer output is the layer named
        ``utrans_latent``; the output is the reconstruction.
    """
    d2, d3, d4, d5 = 2 * d1, 4 * d1, 8 * d1, 16 * d1
    inputs = keras.Input(shape=input_shape, name="input")
    c1 = _double_conv(inputs, d1)
    c2 = _double_conv(layers.MaxPooling1D(2)(c1), d2)
    c3 = _double_conv(layers.MaxPooling1D(2)(c2), d3)
    c4 = _double_conv(layers.MaxPooling1D(2)(c3), d4)
    p4 = layers.MaxPooling1D(2)(c4)
    c5 = _double_conv(p4, d5)
    c6 = _double_conv(layers.MaxPooling1D(5)(c5), d5)
    latent = cct_bottleneck(c6, projection_dim=d5)

    x = _up_block(latent, p4, d5, up=5, up_kernel=3)
    x = _up_block(x, c4, d4, up=2, up_kernel=3)
    x = _up_block(x, c3, d3, up=2, up_kernel=2)
    x = _up_block(x, c2, d2, up=2, up_kernel=2)
    x = _up_block(x, c1, d1, up=2, up_kernel=2)
    x = _conv(x, d1, 3, activation=None)
    outputs = _conv(x, input_shape[-1], 3, activation=None, name="picker_P")
    model = keras.Model(inputs, outputs, name="utrans_foundation")
    if weights is not None:
        load_legacy_h5_weights(model, weights)
    return model


def latent_model(foundation):
    """Model from the foundation input to its latent, (B, 75, 80)."""
    return keras.Model(foundation.input, foundation.get_layer(LATENT_NAME).output,
                       name="utrans_latent_model")


def convF1(x, d1=80, kernel_size=13, dropout=0.1, name=None):
    """Residual conv block of the upstream location model (``convF1``).

    Two Conv-BN layers with a skip from the block input, then a Conv-BN
    projection to ``d1`` channels. Every Conv-BN is followed by an Activation
    layer that is linear in the published location model (checked against the
    upstream checkpoint: GELU or ReLU there changes the predictions). The
    closing Dropout is called with ``training=False`` upstream, so it never
    acts; it is kept so the layer list matches the upstream one.
    """
    filters = x.shape[-1]
    a = _conv_bn_act(x, filters, kernel_size)
    b = _conv_bn_act(a, filters, kernel_size)
    b = layers.Add()([b, x])
    out = _conv_bn_act(b, d1, kernel_size)
    drop_name = f"{FROZEN_DROPOUT_PREFIX}_{name}" if name else None
    return layers.Dropout(dropout, name=drop_name)(out, training=False)


def _conv_bn_act(x, filters, kernel_size, activation="linear"):
    x = layers.Conv1D(filters, kernel_size, padding="same",
                      kernel_initializer="he_normal")(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation(activation)(x)


# convF1 blocks of the location model's decoder stream (upstream: 3).
DECODER_BLOCKS = 3


def decoder_stream(latent, n_blocks=DECODER_BLOCKS, d1=80, kernel_size=13, dropout=0.1):
    """Decoder feature stream on the latent: ``n_blocks`` x convF1, flattened.

    (B, 75, 80) -> (B, 6000, 1): the flattened features line up with the 6000
    input samples so they can be concatenated with the raw waveform.
    """
    x = latent
    for k in range(n_blocks):
        x = convF1(x, d1, kernel_size, dropout, name=str(k + 1))
    flat = layers.Flatten()(x)
    return layers.Reshape((flat.shape[-1], 1))(flat)


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------
def sha256_of(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _as_str(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_legacy_h5(path):
    """Read a Keras 2 legacy weights file.

    Returns
    -------
    list of (layer_name, list of (weight_name, np.ndarray))
        Only layers that own weights, in file order.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        raise WeightsFileError(f"{path}: not a readable HDF5 file ({err})") from None
    with fh:
        root = fh["model_weights"] if "model_weights" in fh else fh
        if "layer_names" not in root.attrs:
            raise WeightsFileError(
                f"{path}: not a Keras 2 (legacy .h5) weights file: no 'layer_names' "
                "attribute (a Keras 3 '.weights.h5' file is loaded with model.load_weights)")
        out = []
        for name in map(_as_str, root.attrs["layer_names"]):
            group = root[name]
            names = [_as_str(w) for w in group.attrs.get("weight_names", [])]
            if names:
                out.append((name, [(w, np.asarray(group[w])) for w in names]))
        return out


def load_legacy_h5_weights(model, path):
    """Load a Keras 2 legacy weights file into ``model``, strictly.

    The file is matched to the model by the order of the layers that own
    weights (as Keras does), but every layer must receive weights and every
    array must have the model's shape; otherwise nothing is half-loaded and a
    :class:`WeightsFileError` names the first mismatch.

    Returns
    -------
    dict
        ``{'path', 'sha256', 'official', 'n_layers'}``; ``official`` tells
        whether the file is the released ``UTrans_Foundation.h5``.
    """
    file_layers = read_legacy_h5(path)
    model_layers = [layer for layer in model.layers if layer.weights]
    if len(file_layers) != len(model_layers):
        raise WeightsFileError(
            f"{path}: holds weights for {len(file_layers)} layers but model "
            f"'{model.name}' has {len(model_layers)} layers with weights; this is not "
            "a weights file for this model")
    for layer, (fname, arrays) in zip(model_layers, file_layers):
        want = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for _, a in arrays]
        if want != got:
            raise WeightsFileError(
                f"{path}: layer '{fname}' in the file has weight shapes {got} but model "
                f"layer '{layer.name}' expects {want}; this is not a weights file for "
                "this model")
    for layer, (_, arrays) in zip(model_layers, file_layers):
        layer.set_weights([a for _, a in arrays])
    digest = sha256_of(path)
    return {"path": str(path), "sha256": digest, "official": digest == OFFICIAL_SHA256,
            "n_layers": len(model_layers)}


def weights_provenance(path):
    """One line saying whether ``path`` is the official foundation release (by sha256)."""
    if path is None:
        return "none (random initialisation)"
    digest = sha256_of(path)
    kind = "official U-Trans release" if digest == OFFICIAL_SHA256 else "NOT the official release"
    return f"{path} ({kind}, sha256 {digest})"


def _say(message):
    print(f"foundation weights: {message}", file=sys.stderr, flush=True)


def cached_weights_path(cache_dir=None):
    """Where :func:`fetch_foundation_weights` keeps the official file."""
    base = (cache_dir or os.environ.get(CACHE_ENV) or os.environ.get("KERAS_HOME")
            or os.path.join("~", ".keras"))   # Keras' own cache home
    return Path(os.path.expanduser(base)) / CACHE_SUBDIR / "UTrans_Foundation.h5"


def fetch_foundation_weights(url=None, cache_dir=None, log=_say):
    """The official ``UTrans_Foundation.h5``, downloaded once into a cache and verified.

    Parameters
    ----------
    url : str, optional
        Origin; default ``$UTRANS_WEIGHTS_URL``, else :data:`OFFICIAL_URL`
        (``file://`` works too: tests and offline mirrors).
    cache_dir : str, optional
        Cache folder; default ``$UTRANS_CACHE_DIR``, else Keras' home
        (``$KERAS_HOME`` or ``~/.keras``). The file is ``<cache_dir>/utrans/UTrans_Foundation.h5``.
    log : callable
        Gets the one line that says where the weights came from.

    Returns
    -------
    str
        Path of the cached file, whose sha256 is :data:`OFFICIAL_SHA256`.

    Raises
    ------
    FileNotFoundError
        The file could not be fetched (no network, bad URL); the message says
        how to get it by hand.
    WeightsFileError
        The fetched file's sha256 is not the official one (message: file,
        both hashes); it is never used.
    """
    url = url or os.environ.get(URL_ENV) or OFFICIAL_URL
    target = cached_weights_path(cache_dir)
    cached = sha256_of(target) if target.is_file() else None
    if cached == OFFICIAL_SHA256:
        log(f"{target} (cached official release, sha256 verified)")
        return str(target)
    if cached is not None:
        log(f"cached {target} has sha256 {cached}, not the official "
            f"{OFFICIAL_SHA256}: fetching it again")
    try:   # get_file silently falls back to /tmp when the cache folder is missing
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the weights cache folder {target.parent} ({err}); set "
                      f"{CACHE_ENV} to a writable folder") from None
    # urlretrieve has no timeout of its own; a dead network must fail, not hang.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(FETCH_TIMEOUT_S)
    try:
        path = keras.utils.get_file(
            fname=target.name, origin=url, file_hash=OFFICIAL_SHA256,
            hash_algorithm="sha256", cache_dir=str(target.parent.parent),
            cache_subdir=CACHE_SUBDIR)
    except KeyboardInterrupt:
        raise
    except Exception as err:   # get_file re-raises URL errors as plain Exception
        fetched = sha256_of(target) if target.is_file() else OFFICIAL_SHA256
        if fetched != OFFICIAL_SHA256:
            raise WeightsFileError(
                f"{target}: fetched from {url} but its sha256 is {fetched}, not "
                f"the official {OFFICIAL_SHA256}; it is not used") from None
        raise FileNotFoundError(
            f"U-Trans foundation weights are not here and could not be fetched from {url} "
            f"({err}); {DOWNLOAD_HINT}") from None
    finally:
        socket.setdefaulttimeout(previous)
    log(f"fetched {url} into {path} (sha256 verified)")
    return str(path)


def resolve_foundation_weights(value=None, log=_say, default=DEFAULT_WEIGHTS):
    """Where the foundation weights come from.

    Precedence: an explicit ``value`` (``--foundation_weights``), then the
    ``UTRANS_WEIGHTS`` environment variable, then ``weights/UTrans_Foundation.h5``,
    then the official file fetched into the cache
    (:func:`fetch_foundation_weights`). The strings 'none' / '' mean random
    initialisation (returns None, warns).

    A file named by ``--foundation_weights`` or ``UTRANS_WEIGHTS`` that is not
    the official release is used with a warning (fine-tuned foundations are
    legitimate); ``weights/UTrans_Foundation.h5`` and the cache must be the
    official file, or this raises :class:`WeightsFileError` naming the file and
    both hashes. A named path that does not exist is an error. ``default``
    is the weights/ path to look at (the demo passes the repository's).
    """
    named = value if value is not None else os.environ.get(WEIGHTS_ENV)
    if named is not None:
        if str(named).strip().lower() in ("none", ""):
            warnings.warn("foundation weights: none -> the U-Trans backbone starts from "
                          "random initialisation (not the pretrained foundation)", stacklevel=2)
            return None
        if not Path(named).is_file():
            raise FileNotFoundError(f"U-Trans foundation weights not found: {named}; "
                                    f"{DOWNLOAD_HINT}")
        digest = sha256_of(named)
        if digest != OFFICIAL_SHA256:
            warnings.warn(f"foundation weights {named} are NOT the official release (sha256 "
                          f"{digest}, official {OFFICIAL_SHA256}); used because they were "
                          "named explicitly", stacklevel=2)
        return str(named)
    if Path(default).is_file():
        digest = sha256_of(default)
        if digest != OFFICIAL_SHA256:
            raise WeightsFileError(
                f"{default}: sha256 {digest} is not the official release's "
                f"{OFFICIAL_SHA256}; replace it with the official file, or pass "
                f"--foundation_weights {default} to use it anyway")
        log(f"{default} (official release, sha256 verified)")
        return str(default)
    return fetch_foundation_weights(log=log)
