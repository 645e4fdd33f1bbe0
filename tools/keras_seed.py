"""The Keras notebook's SKNet (shared/seed), verbatim, plus what sknet's tools need around it.

Run with Keras 2 semantics: TensorFlow 2.x with `tf-keras` and TF_USE_LEGACY_KERAS=1 (set below). Under
Keras 3 the notebook fails: its empty Sequential identity shortcut cannot be built.

`weight_map(model, config)` pairs every sknet tensor key with the Keras variable(s) it corresponds to,
so that weights can be moved either way (sknet keys use PyTorch layouts: OIHW convs, [out, in] dense).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.keras import layers, models  # noqa: E402


# ---- The notebook's code, unchanged -------------------------------------------------------------

class SKUnit(tf.keras.Model):
    def __init__(self, filters, strides, M=2, G=32, r=16, L=32):
        super().__init__()
        self.M = M
        self.filters = filters

        self.convs = []
        for i in range(M):
            self.convs.append(models.Sequential([
                layers.Conv2D(filters, 3+2*i, strides,
                              padding='same', groups=G),
                layers.BatchNormalization(),
                layers.Activation('relu'),
            ]))

        self.gap = layers.GlobalAveragePooling2D()
        self.fc = layers.Dense(max(filters//r, L))
        self.fcs = []
        for i in range(M):
            self.fcs.append(layers.Dense(filters))

    def call(self, input):
        for i in range(self.M):
            feat = self.convs[i](input)
            feat = tf.expand_dims(feat, axis=-1)
            feats_U = feat if i == 0 else tf.concat([feats_U, feat], axis=-1)

        feats_s = self.gap(tf.reduce_sum(feats_U, axis=-1))

        feats_Z = self.fc(feats_s)

        for i in range(self.M):
            fcs = self.fcs[i](feats_Z)
            att_vec = fcs if i == 0 else tf.concat([att_vec, fcs], axis=-1)

        att_vec = layers.Reshape((1, 1, self.filters, self.M))(att_vec)
        att_vec = tf.nn.softmax(att_vec, axis=-1)

        mul = tf.multiply(feats_U, att_vec)

        return tf.reduce_sum(mul, axis=-1)


class SKConv(tf.keras.Model):
    def __init__(self, filters, strides, M=2, G=32, r=16, L=32):
        super().__init__()
        self.filters = filters
        self.strides = strides

        self.conv1x1_1 = layers.Conv2D(filters, 1, 1)
        self.bn1 = layers.BatchNormalization()

        self.skunit = SKUnit(filters, strides, M, G, r, L)
        self.bn2 = layers.BatchNormalization()

        self.conv1x1_2 = layers.Conv2D(filters*2, 1, 1)
        self.bn3 = layers.BatchNormalization()

    def build(self, input_shape):
        if input_shape[-1] != self.filters*2:
            self.shortcut = models.Sequential([
                layers.Conv2D(self.filters*2, 1, self.strides),
                layers.BatchNormalization()
            ])
        else:
            self.shortcut = models.Sequential()

    def call(self, input):
        x = input
        x = self.conv1x1_1(x)
        x = self.bn1(x)
        x = tf.nn.relu(x)

        x = self.skunit(x)
        x = self.bn2(x)

        x = self.conv1x1_2(x)
        x = self.bn3(x)
        x = tf.nn.relu(x)

        shortcut = self.shortcut(input)

        return tf.nn.relu(tf.add(x, shortcut))


def stage(input, filters, strides, repeat, M=2, G=32, r=16, L=32):
    x = SKConv(filters, strides, M, G, r, L)(input)

    for _ in range(1, repeat):
        x = SKConv(filters, 1, M, G, r, L)(x)

    return x


def SKNet(input_shape, outputs=10):
    input = layers.Input(shape=input_shape)
    x = layers.BatchNormalization()(input)
    x = layers.Conv2D(64, 7, strides=2, padding='same')(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation('relu')(x)
    x = layers.MaxPooling2D((3, 3), strides=2, padding='same')(x)

    x = stage(x, filters=128, strides=1, repeat=3)
    x = stage(x, filters=256, strides=2, repeat=4)
    x = stage(x, filters=512, strides=2, repeat=6)
    x = stage(x, filters=1024, strides=2, repeat=3)

    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(outputs, activation = 'softmax')(x)

    return models.Model(input, x)

# ---- End of the notebook's code -----------------------------------------------------------------


def sknet_general(input_shape, outputs, filters, repeats, strides, M=2, G=32, r=16, L=32):
    """The notebook's SKNet with its stage list, branch count and SK parameters as arguments."""
    input = layers.Input(shape=input_shape)
    x = layers.BatchNormalization()(input)
    x = layers.Conv2D(64, 7, strides=2, padding='same')(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation('relu')(x)
    x = layers.MaxPooling2D((3, 3), strides=2, padding='same')(x)
    for f, n, s in zip(filters, repeats, strides):
        x = stage(x, filters=f, strides=s, repeat=n, M=M, G=G, r=r, L=L)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(outputs, activation='softmax')(x)
    return models.Model(input, x)


def _conv(prefix, conv):
    # Keras kernels are HWIO; sknet's are OIHW.
    out = [(f"{prefix}.weight", conv.kernel, "conv")]
    if conv.use_bias:
        out.append((f"{prefix}.bias", conv.bias, "plain"))
    return out


def _bn(prefix, bn):
    return [(f"{prefix}.weight", bn.gamma, "plain"), (f"{prefix}.bias", bn.beta, "plain"),
            (f"{prefix}.running_mean", bn.moving_mean, "plain"),
            (f"{prefix}.running_var", bn.moving_variance, "plain")]


def weight_map(model):
    """[(sknet key, [(keras variable, transform, row slice)])] for the notebook's model.

    transform: 'conv' (OIHW <-> HWIO), 'dense' ([out, in] <-> [in, out]), 'pointwise' ([out, in, 1, 1] <->
    Dense [in, out]), 'plain'. The attention's M Dense layers share the one sknet key `attn.fc_select`, each
    holding a slice of C rows, in concatenation order."""
    entries = []
    bns = [l for l in model.layers if isinstance(l, layers.BatchNormalization)]
    convs = [l for l in model.layers if isinstance(l, layers.Conv2D)]
    blocks = [l for l in model.layers if isinstance(l, SKConv)]
    dense = [l for l in model.layers if isinstance(l, layers.Dense)][-1]
    for key, var, kind in _bn("input_bn", bns[0]) + _conv("conv1", convs[0]) + _bn("bn1", bns[1]):
        entries.append((key, [(var, kind, None)]))
    # Stage boundaries: a block whose output width changes starts a new stage.
    stage, index, width = 0, -1, None
    for block in blocks:
        if block.filters * 2 != width:
            stage, index, width = stage + 1, 0, block.filters * 2
        else:
            index += 1
        p = f"layer{stage}.{index}"
        sk = block.skunit
        c = sk.filters
        items = _conv(f"{p}.conv1.conv", block.conv1x1_1) + _bn(f"{p}.conv1.bn", block.bn1)
        for m, seq in enumerate(sk.convs):
            items += _conv(f"{p}.conv2.paths.{m}.conv", seq.layers[0]) + _bn(f"{p}.conv2.paths.{m}.bn", seq.layers[1])
        for key, var, kind in items:
            entries.append((key, [(var, kind, None)]))
        entries.append((f"{p}.conv2.attn.fc_reduce.weight", [(sk.fc.kernel, "pointwise", None)]))
        entries.append((f"{p}.conv2.attn.fc_reduce.bias", [(sk.fc.bias, "plain", None)]))
        entries.append((f"{p}.conv2.attn.fc_select.weight",
                        [(d.kernel, "pointwise", slice(m * c, (m + 1) * c)) for m, d in enumerate(sk.fcs)]))
        entries.append((f"{p}.conv2.attn.fc_select.bias",
                        [(d.bias, "plain", slice(m * c, (m + 1) * c)) for m, d in enumerate(sk.fcs)]))
        items = _bn(f"{p}.bn2", block.bn2) + _conv(f"{p}.conv3.conv", block.conv1x1_2) + _bn(f"{p}.conv3.bn", block.bn3)
        if block.shortcut.layers:
            items += _conv(f"{p}.downsample.0", block.shortcut.layers[0]) + _bn(f"{p}.downsample.1", block.shortcut.layers[1])
        for key, var, kind in items:
            entries.append((key, [(var, kind, None)]))
    entries.append(("fc.weight", [(dense.kernel, "dense", None)]))
    entries.append(("fc.bias", [(dense.bias, "plain", None)]))
    return entries


def to_sknet(var_value, kind):
    """A Keras variable's value in sknet's layout."""
    if kind == "conv":
        return np.transpose(var_value, (3, 2, 0, 1))
    if kind == "dense":
        return var_value.T
    if kind == "pointwise":
        return var_value.T[:, :, None, None]
    return var_value


def to_keras(value, kind):
    """An sknet tensor in the Keras variable's layout."""
    if kind == "conv":
        return np.transpose(value, (2, 3, 1, 0))
    if kind == "dense":
        return value.T
    if kind == "pointwise":
        return value[:, :, 0, 0].T
    return value


def sknet_shape(entry):
    """The sknet shape of one weight_map entry."""
    parts = [to_sknet(np.zeros(v.shape, np.float32), kind) for v, kind, _ in entry[1]]
    return list(np.concatenate(parts, axis=0).shape) if len(parts) > 1 else list(parts[0].shape)
