"""sknet against PyTorch (timm), in one run, on this machine, with the same thread count.

    cargo build --release && python tools/bench_compare.py [--threads 2] [--runs 5] [--rounds 3] [--only train]

Each case runs in fresh processes on each side (so peak memory is the case's own), the sides taking turns for
--rounds rounds (the machine's speed drifts; turns spread a slow spell over all sides): inference at batch 1 and 8
(224x224) of skresnext50_32x4d (the paper's SKNet-50 compute) and batch 1 of skresnet18, a training step at batch
8 (224x224) of skresnext50_32x4d, and one at batch 32 (32x32) of sknet-tiny (PyTorch: tools/paper_sknet.py).
Inference cases also run ONNX Runtime on the timm model exported with torch.onnx (pip install onnx onnxruntime
onnxscript; the column is left out when it is not installed). Prints a Markdown table with medians, images/s, peak
RSS and the time ratios sknet/PyTorch and sknet/ONNX Runtime.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKNET = os.environ.get("SKNET_BIN", os.path.join(ROOT, "target", "release", "sknet"))

TORCH_CASE = r'''
import json, os, resource, sys, time, subprocess
import torch, timm
sys.path.insert(0, {tools!r})
from paper_sknet import PaperSKNet
torch.set_num_threads({threads})
arch, batch, size, train, runs = {arch!r}, {batch}, {size}, {train}, {runs}
if arch == "sknet-tiny":
    cfg = json.loads(subprocess.check_output([{sknet!r}, "config", "--arch", arch]))
    m = PaperSKNet(cfg)
else:
    m = timm.create_model(arch)
x = torch.randn(batch, 3, size, size)
times = []
if train:
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for i in range(runs + 1):
        t = time.perf_counter()
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
        times.append(time.perf_counter() - t)
else:
    m.eval()
    with torch.inference_mode():
        for i in range(runs + 2):
            t = time.perf_counter()
            m(x)
            times.append(time.perf_counter() - t)
times = sorted(times[(1 if train else 2):])
med = times[len(times) // 2]
print(json.dumps({{"median_ms": med * 1e3, "images_per_s": batch / med,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
'''

ORT_EXPORT = r'''
import torch, timm
m = timm.create_model({arch!r}).eval()
x = torch.randn({batch}, 3, {size}, {size})
torch.onnx.export(m, (x,), {path!r}, input_names=["x"], output_names=["logits"], dynamo=False)
'''

# Runs in its own process without torch, so that its peak memory is ONNX Runtime's own.
ORT_CASE = r'''
import json, resource, time
import numpy as np, onnxruntime as ort
opts = ort.SessionOptions()
opts.intra_op_num_threads = {threads}
opts.inter_op_num_threads = 1
sess = ort.InferenceSession({path!r}, opts, providers=["CPUExecutionProvider"])
batch, runs = {batch}, {runs}
feed = {{"x": np.random.default_rng(0).standard_normal((batch, 3, {size}, {size})).astype(np.float32)}}
times = []
for i in range(runs + 2):
    t = time.perf_counter()
    sess.run(None, feed)
    times.append(time.perf_counter() - t)
times = sorted(times[2:])
med = times[len(times) // 2]
print(json.dumps({{"median_ms": med * 1e3, "images_per_s": batch / med,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
'''

CASES = [
    ("inference", "skresnext50_32x4d", 1, 224),
    ("inference", "skresnext50_32x4d", 8, 224),
    ("inference", "skresnet18", 1, 224),
    ("train", "skresnext50_32x4d", 8, 224),
    ("train", "sknet-tiny", 32, 32),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="processes per side and case, taking turns")
    ap.add_argument("--only", help="run only the cases whose name ('train sknet-tiny', ...) contains this")
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    try:
        import onnxruntime  # noqa: F401
        with_ort = True
    except ImportError:
        with_ort = False
    print(f"threads: {args.threads}, runs: {args.runs} per process (median), rounds: {args.rounds} "
          "(median of the process medians)\n")
    ort_head = " ORT ms | sknet/ORT | ORT peak MiB |" if with_ort else ""
    print("| case | sknet ms | PyTorch ms | sknet/PyTorch |" + ort_head +
          " sknet img/s | PyTorch img/s | sknet peak MiB | PyTorch peak MiB |")
    print("|---|---|---|---|" + ("---|---|---|" if with_ort else "") + "---|---|---|---|")
    tools = os.path.dirname(os.path.abspath(__file__))

    def run_json(cmd):
        return json.loads(subprocess.check_output(cmd, env=env))

    for mode, arch, batch, size in CASES:
        if args.only and args.only not in f"{mode} {arch}":
            continue
        cmd = [SKNET, "bench", "--arch", arch, "--batch", str(batch), "--input", str(size), "--runs",
               str(args.runs), "--warmup", "1" if mode == "train" else "2", "--json"]
        if mode == "train":
            cmd.append("--train")
        torch_code = TORCH_CASE.format(tools=tools, threads=args.threads, arch=arch, batch=batch, size=size,
                                       train=mode == "train", runs=args.runs, sknet=SKNET)
        sides = {"sknet": cmd, "torch": [sys.executable, "-c", torch_code]}
        if with_ort and mode == "inference":
            path = os.path.join(tempfile.mkdtemp(), f"{arch}-b{batch}.onnx")
            export = ORT_EXPORT.format(arch=arch, batch=batch, size=size, path=path)
            subprocess.check_call([sys.executable, "-c", export], env=env, stderr=subprocess.DEVNULL)
            ort_code = ORT_CASE.format(threads=args.threads, batch=batch, size=size, runs=args.runs, path=path)
            sides["ort"] = [sys.executable, "-c", ort_code]
        # The sides take turns, round after round, so that a slow spell of the machine falls on all
        # of them; each side's figure is the median over rounds of its per-process medians.
        results = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, side_cmd in sides.items():
                results[side].append(run_json(side_cmd))
        summary = {
            side: {
                "median_ms": statistics.median(r["median_ms"] for r in runs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            }
            for side, runs in results.items()
        }
        ours, theirs = summary["sknet"], summary["torch"]
        ort_cells = " - | - | - |" if with_ort else ""
        if "ort" in summary:
            onnx = summary["ort"]
            ort_cells = (f" {onnx['median_ms']:.0f} | {ours['median_ms'] / onnx['median_ms']:.2f} | "
                         f"{onnx['peak_rss_mb']:.0f} |")
        print(f"| {mode} {arch} b{batch} {size}x{size} | {ours['median_ms']:.0f} | {theirs['median_ms']:.0f} | "
              f"{ours['median_ms'] / theirs['median_ms']:.2f} |{ort_cells} {batch * 1e3 / ours['median_ms']:.1f} | "
              f"{batch * 1e3 / theirs['median_ms']:.1f} | {ours['peak_rss_mb']:.0f} | {theirs['peak_rss_mb']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
