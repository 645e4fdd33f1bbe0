"""ONNX Runtime against sknet, on full-size networks, and sknet's ONNX file against torch.onnx's.

For each network (skresnet18, skresnext50_32x4d, sknet50, keras-seed):
1. Weights: timm's own initialisation (timm networks), the paper-design PyTorch model of
   tools/paper_sknet.py (sknet50), or sknet's deterministic weights (keras-seed, which has no
   PyTorch counterpart), with random BatchNorm statistics so that folding them matters.
2. `sknet export --format onnx`, then ONNX Runtime on real images, preprocessed from the file's
   own metadata_props (size, crop_pct, interpolation, mean, std) with Pillow. Its probabilities
   are compared with `sknet predict --json` on the same images (all classes), and its logits
   with the PyTorch model's on the same tensor where there is one.
3. torch.onnx's export of the same PyTorch model (opset 17, dynamic batch): node counts, and the
   median ONNX Runtime latency of both files at batch 1 and 8 (2 threads).

    python tools/onnx_compare.py --sknet target/release/sknet \
        --init target/release/examples/init_weights --out bench/onnx

Needs: torch, timm, safetensors, onnx, onnxruntime, pillow (pip), and onnxscript if this torch
exports with dynamo only.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORKS = ["skresnet18", "skresnext50_32x4d", "sknet50", "keras-seed"]


def randomize_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def torch_model(arch, sknet):
    """The PyTorch model for `arch`, or None where there is none."""
    torch.manual_seed(0)
    if arch in ("skresnet18", "skresnext50_32x4d"):
        import timm

        model = timm.create_model(arch, pretrained=False)
    elif arch == "sknet50":
        import paper_sknet

        config = json.loads(run([sknet, "config", "--arch", arch]))
        model = paper_sknet.PaperSKNet(config)
    else:
        return None
    randomize_bn(model, 1)
    return model.eval()


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return out.stdout


def images(n):
    root = os.path.join(ROOT, "data", "cifar10-mini")
    classes = sorted(os.listdir(root))
    return [os.path.join(root, classes[i % len(classes)], f"{i // len(classes):04d}.jpg") for i in range(n)]


def preprocess(path, meta):
    """timm's eval transform from the ONNX file's metadata: resize the shorter side to
    floor(size / crop_pct), center crop, scale, normalize."""
    h, w = (int(v) for v in meta["size"].split(","))
    crop_pct = float(meta["crop_pct"])
    mean = np.array([float(v) for v in meta["mean"].split(",")], dtype=np.float32)
    std = np.array([float(v) for v in meta["std"].split(",")], dtype=np.float32)
    filt = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[meta["interpolation"]]
    img = Image.open(path).convert("RGB")
    scale = int(min(h, w) / crop_pct) if h == w else None
    if scale is not None:
        iw, ih = img.size
        if iw <= ih:
            size = (scale, int(scale * ih / iw))
        else:
            size = (int(scale * iw / ih), scale)
        img = img.resize(size, filt)
    else:
        img = img.resize((int(w / crop_pct), int(h / crop_pct)), filt)
    iw, ih = img.size
    left, top = int(round((iw - w) / 2.0)), int(round((ih - h) / 2.0))
    img = img.crop((left, top, left + w, top + h))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - mean) / std
    return x.transpose(2, 0, 1)


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def median_ms(sess, x, runs):
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def torch_export(model, path, size):
    x = torch.zeros(1, 3, size[0], size[1])
    kwargs = dict(
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    try:
        torch.onnx.export(model, x, path, dynamo=False, **kwargs)
    except Exception:  # noqa: BLE001 (torch versions without the TorchScript exporter)
        torch.onnx.export(model, x, path, dynamo=True, **kwargs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sknet", required=True, help="the sknet binary")
    ap.add_argument("--init", required=True, help="the init_weights example binary")
    ap.add_argument("--out", required=True, help="folder for the files and onnx.md")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--only", nargs="*", default=NETWORKS)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    cpu = next(
        (l.split(":", 1)[1].strip() for l in run(["lscpu"]).splitlines() if l.startswith("Model name")),
        "unknown CPU",
    )
    rows = []
    for arch in args.only:
        weights = os.path.join(args.out, f"{arch}.safetensors")
        model = torch_model(arch, args.sknet)
        if model is not None:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
        else:
            run([args.init, arch, weights])
        onnx_path = os.path.join(args.out, f"{arch}.sknet.onnx")
        print(run([args.sknet, "export", "--weights", weights, "--arch", arch, "--format", "onnx", "-o", onnx_path]).strip())
        sess = session(onnx_path)
        meta = sess.get_modelmeta().custom_metadata_map
        paths = images(args.images)
        x = np.stack([preprocess(p, meta) for p in paths]).astype(np.float32)
        logits = sess.run(None, {"input": x})[0]
        classes = logits.shape[1]
        predicted = json.loads(
            run([args.sknet, "predict", "--weights", weights, "--arch", arch, "--json", "--topk", str(classes)] + paths)
        )
        want = np.zeros_like(logits)
        for i, p in enumerate(predicted):
            for t in p["top"]:
                want[i, t["index"]] = t["probability"]
        prob_err = float(np.abs(softmax(logits) - want).max())
        top1 = int((softmax(logits).argmax(1) == want.argmax(1)).sum())
        row = dict(arch=arch, prob_err=prob_err, top1=f"{top1}/{len(paths)}")
        if model is not None:
            with torch.inference_mode():
                ref = model(torch.from_numpy(x)).numpy()
            row["logit_rel_err"] = float(np.abs(logits - ref).max() / np.abs(ref).max())
            torch_path = os.path.join(args.out, f"{arch}.torch.onnx")
            torch_export(model, torch_path, [int(v) for v in meta["size"].split(",")])
            row["torch_nodes"] = len(onnx.load(torch_path).graph.node)
            torch_sess = session(torch_path)
        row["sknet_nodes"] = len(onnx.load(onnx_path).graph.node)
        size = [int(v) for v in meta["size"].split(",")]
        for batch in (1, 8):
            xb = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
            row[f"sknet_ms_b{batch}"] = median_ms(sess, xb, args.runs)
            if model is not None:
                row[f"torch_ms_b{batch}"] = median_ms(torch_sess, xb, args.runs)
        print(json.dumps(row))
        rows.append(row)

    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else "-"

    lines = [
        f"CPU: {cpu}; ONNX Runtime {ort.__version__}, 2 intra-op threads; torch {torch.__version__}",
        "",
        "| network | probs max abs err vs sknet | top-1 agree | logits rel err vs PyTorch "
        "| nodes sknet / torch.onnx | ORT ms b1 sknet / torch | ORT ms b8 sknet / torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['prob_err']:.1e} | {r['top1']} | {cell(r, 'logit_rel_err', '{:.1e}')} "
            f"| {r['sknet_nodes']} / {cell(r, 'torch_nodes', '{}')} "
            f"| {r['sknet_ms_b1']:.1f} / {cell(r, 'torch_ms_b1', '{:.1f}')} "
            f"| {r['sknet_ms_b8']:.1f} / {cell(r, 'torch_ms_b8', '{:.1f}')} |"
        )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "onnx.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
