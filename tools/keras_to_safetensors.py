"""Converts the Keras notebook's weights (.h5 or .keras, as saved by model.save / model.save_weights) into an
sknet safetensors file for the `keras-seed` preset (or a config of the same family).

    python tools/keras_to_safetensors.py notebook.weights.h5 --output keras_seed.safetensors --classes 1000
    sknet predict cat.jpg --weights keras_seed.safetensors

The notebook's model is rebuilt from an sknet config (default: `sknet config --arch keras-seed`, with --classes
and --input applied), the weights are loaded into it, and each Keras variable is written under its sknet key
(tools/keras_seed.py's weight_map) in sknet's PyTorch layouts. The config travels in the file's metadata, so
sknet needs no --arch. The output is written to a temporary file and renamed, never left half-written.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import keras_seed as ks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKNET = os.environ.get("SKNET_BIN", os.path.join(ROOT, "target", "debug", "sknet"))


def keras_model(config):
    """The notebook's model for an sknet keras-seed-family config."""
    sk = config["sk"]
    rule = sk["attn_width"]
    if config["block"] != "keras_seed" or rule["rule"] != "paper" or sk["dilated_3x3"]:
        raise SystemExit("config is not of the Keras notebook's family (block keras_seed, paper attention width)")
    if config["stem"]["width"] != 64:
        raise SystemExit("the notebook's stem is 64 wide")
    h, w = config["default_input"]
    return ks.sknet_general((h, w, config["in_channels"]), config["num_classes"], filters=config["planes"],
                            repeats=config["layers"], strides=config["strides"], M=len(sk["kernel_sizes"]),
                            G=sk["groups"], r=rule["reduction"], L=rule["min_width"])


def convert(model, config, output, classes=None):
    from safetensors.numpy import save_file

    tensors = {}
    for key, targets in ks.weight_map(model):
        parts = [ks.to_sknet(var.numpy(), kind) for var, kind, _ in targets]
        tensors[key] = np.ascontiguousarray(np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0],
                                            dtype=np.float32)
    meta = {"format": "pt", "sknet.config": json.dumps(config)}
    if classes:
        meta["sknet.classes"] = json.dumps(classes)
    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("weights", help=".h5 or .keras file saved from the notebook's model")
    ap.add_argument("--output", "-o", required=True)
    ap.add_argument("--config", help="sknet config JSON (default: the keras-seed preset)")
    ap.add_argument("--classes", type=int, help="classifier outputs (default: the config's)")
    ap.add_argument("--input", type=int, nargs=2, metavar=("H", "W"), help="input size the model was built for")
    ap.add_argument("--class-names", help="text file, one class name per line, stored in the metadata")
    args = ap.parse_args()
    if args.config:
        with open(args.config) as f:
            config = json.load(f)
    else:
        config = json.loads(subprocess.check_output([SKNET, "config", "--arch", "keras-seed"]))
    if args.classes:
        config["num_classes"] = args.classes
    if args.input:
        config["default_input"] = list(args.input)
    model = keras_model(config)
    model.load_weights(args.weights)
    names = None
    if args.class_names:
        with open(args.class_names) as f:
            names = [line.rstrip("\n") for line in f if line.strip()]
    tensors = convert(model, config, args.output, names)
    print(f"wrote {args.output}: {len(tensors)} tensors, {sum(t.size for t in tensors.values())} values")


if __name__ == "__main__":
    main()
