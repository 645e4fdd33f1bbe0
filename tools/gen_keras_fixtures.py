"""Generates the Keras parity fixtures in tests/fixtures/ from the notebook's model (tools/keras_seed.py).

    pip install -r tools/requirements.txt
    cargo build && python tools/gen_keras_fixtures.py

- keras_seed_summary.json: what model.summary() prints for SKNet((224,224,3), outputs=1000).
- keras_seed_keras.json: that model's logits (the input of its final softmax) for the deterministic weights and
  input of tools/detinit.py.
- tiny_keras_m3_keras.json: the same for a small variant (3 branches, G=4, r=4, L=8) on an odd-sized input.
- tiny_keras.safetensors / tiny_keras.json: Keras-initialised weights through tools/keras_to_safetensors.py.
"""
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import keras_seed as ks  # noqa: E402
from detinit import f32_list, input_tensor, tensor, write_fixture  # noqa: E402

tf = ks.tf
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")
SKNET = os.environ.get("SKNET_BIN", os.path.join(ROOT, "target", "debug", "sknet"))


def preset(name):
    return json.loads(subprocess.check_output([SKNET, "config", "--arch", name]))


def role(key):
    leaf = key.rsplit(".", 1)[1]
    is_bn = any(key.startswith(p) for p in ("input_bn.", "bn1.")) or ".bn" in key or ".downsample.1." in key
    if is_bn:
        return {"weight": "norm_weight", "bias": "norm_bias"}.get(leaf, leaf)
    return "bias" if leaf == "bias" else "weight"


def load_deterministic(model):
    listing = []
    for key, targets in ks.weight_map(model):
        shape = ks.sknet_shape((key, targets))
        value = tensor(key, shape, role(key))
        listing.append([key, shape])
        for var, kind, rows in targets:
            part = value[rows] if rows is not None else value
            var.assign(ks.to_keras(part, kind))
    return listing


def logits(model, x_nchw):
    features = tf.keras.Model(model.input, model.layers[-2].output)(np.transpose(x_nchw, (0, 2, 3, 1))).numpy()
    dense = model.layers[-1]
    return features.astype(np.float64) @ dense.kernel.numpy().astype(np.float64) + dense.bias.numpy()


def case(name, model, config, input_shape, source):
    keys = load_deterministic(model)
    out = logits(model, input_tensor(input_shape))
    write_fixture(os.path.join(OUT, f"{name}.json"), {
        "name": name, "source": source, "mode": "eval", "config": config, "input_shape": input_shape,
        "tensors": keys, "logits": f32_list(out),
    })
    print(f"{name}: logits {out.shape}, max |logit| {np.abs(out).max():.3f}")


def summary_rows(model):
    rows = []
    for layer in model.layers:
        shape = layer.output_shape
        if isinstance(shape, list):
            shape = shape[0]
        rows.append({"name": layer.name, "type": layer.__class__.__name__,
                     "output_shape": list(shape), "params": int(layer.count_params())})
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"layers": rows, "total_params": trainable + frozen, "trainable_params": trainable,
            "non_trainable_params": frozen}


def main():
    os.makedirs(OUT, exist_ok=True)
    v = f"TensorFlow {tf.__version__}, tf-keras"
    tf.keras.backend.clear_session()
    m = ks.SKNet((224, 224, 3), outputs=1000)
    lines = []
    m.summary(print_fn=lines.append)
    s = summary_rows(m)
    s["source"] = f"model.summary() of the notebook's SKNet((224, 224, 3), outputs=1000) ({v})"
    s["printed"] = lines
    with open(os.path.join(OUT, "keras_seed_summary.json"), "w") as f:
        json.dump(s, f)
        f.write("\n")
    print(f"summary: {s['total_params']} params")
    case("keras_seed_keras", m, preset("keras-seed"), [1, 3, 224, 224], f"the notebook's SKNet((224,224,3), 1000) ({v})")

    c = preset("keras-seed")
    c.update(name="tiny-keras-m3", num_classes=7, layers=[1, 2], planes=[16, 32], strides=[1, 2],
             default_input=[40, 40])
    c["sk"].update(kernel_sizes=[3, 5, 7], groups=4, attn_width={"rule": "paper", "reduction": 4, "min_width": 8})
    tf.keras.backend.clear_session()
    m = ks.sknet_general((41, 37, 3), 7, filters=[16, 32], repeats=[1, 2], strides=[1, 2], M=3, G=4, r=4, L=8)
    case("tiny_keras_m3_keras", m, c, [2, 3, 41, 37], f"the notebook's classes, 3 branches, G=4, r=4, L=8 ({v})")



def converter_fixture():
    """tiny_keras.safetensors: a small notebook-family model with Keras' own random initialisation (and randomised
    BN statistics), saved as .h5 and converted by tools/keras_to_safetensors.py; tiny_keras.json: its logits."""
    import tempfile

    import keras_to_safetensors as conv

    c = preset("keras-seed")
    c.update(name="tiny-keras", num_classes=5, layers=[1, 1], planes=[8, 16], strides=[1, 2], default_input=[36, 36])
    c["sk"].update(kernel_sizes=[3, 5, 7], groups=4, attn_width={"rule": "paper", "reduction": 4, "min_width": 8})
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    m = conv.keras_model(c)
    rng = np.random.default_rng(0)
    for layer in m.submodules:
        if isinstance(layer, ks.layers.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.uniform(-0.2, 0.2, layer.beta.shape))
            layer.moving_mean.assign(rng.uniform(-0.2, 0.2, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    with tempfile.TemporaryDirectory() as tmp:
        h5 = os.path.join(tmp, "tiny.weights.h5")
        m.save_weights(h5)
        m2 = conv.keras_model(c)
        m2.load_weights(h5)
        conv.convert(m2, c, os.path.join(OUT, "tiny_keras.safetensors"))
    out = logits(m2, input_tensor([2, 3, 36, 36]))
    write_fixture(os.path.join(OUT, "tiny_keras.json"), {
        "name": "tiny_keras", "source": f"notebook classes, Keras random init, via tools/keras_to_safetensors.py "
                                        f"(TensorFlow {tf.__version__})",
        "input_shape": [2, 3, 36, 36], "logits": f32_list(out)})
    print(f"tiny_keras: logits {out.shape}")


if __name__ == "__main__":
    main()
    converter_fixture()
