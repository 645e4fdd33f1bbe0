"""GPU check of sknet's Vulkan build, run by tools/gpu/run_device.sh on a machine with torch and timm.

Each GPU build given (`--gpu-bin`, repeatable: the `wgpu` build compiles kernels through WGSL, the `vulkan`
build through cubecl's own SPIR-V compiler) is checked and timed:
1. Parity: timm models with random BN statistics are saved as safetensors; `sknet predict --json --topk 1000`
   on one image gives all class probabilities from the CPU build and from the GPU build, and timm on CUDA
   gives them from the same image and weights. Prints and records the largest differences.
2. Speed: `sknet bench` against PyTorch on CUDA (same GPU, same cases as tools/bench_compare.py, plus
   inference at batch 64), median of the timed runs after warm-up, with a CUDA synchronize around each run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOOLS)
from check_timm_roundtrip import timm_with_bn_statistics  # noqa: E402
PARITY_ARCHS = ["skresnet18", "skresnext50_32x4d"]
SPEED_CASES = [
    ("inference", "skresnext50_32x4d", 1, 224),
    ("inference", "skresnext50_32x4d", 8, 224),
    ("inference", "skresnext50_32x4d", 64, 224),
    ("inference", "skresnet18", 1, 224),
    ("train", "skresnext50_32x4d", 8, 224),
    ("train", "sknet-tiny", 32, 32),
]


def run_json(cmd, timeout=240):
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    print(f"  {os.path.basename(cmd[0])} {cmd[1]} done in {time.time() - t:.1f} s", flush=True)
    return json.loads(proc.stdout)


def probabilities(predictions, classes=1000):
    p = np.zeros(classes)
    for s in predictions[0]["top"]:
        p[s["index"]] = s["probability"]
    return p


def parity(args, gpu_bin, tmp):
    image = os.path.join(tmp, "image.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(image)
    results = {}
    for arch in PARITY_ARCHS:
        model = timm_with_bn_statistics(arch)
        weights = os.path.join(tmp, f"{arch}.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
        cmd = ["predict", image, "--weights", weights, "--arch", arch, "--topk", "1000", "--json"]
        cpu = probabilities(run_json([args.cpu_bin] + cmd))
        gpu = probabilities(run_json([gpu_bin] + cmd))
        cfg = timm.data.resolve_data_config({}, model=model)
        x = timm.data.create_transform(**cfg)(Image.open(image).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            ref = torch.softmax(model.to(args.device)(x.to(args.device)), 1)[0].double().cpu().numpy()
        results[arch] = {
            "gpu_vs_cpu_max_abs": float(np.abs(gpu - cpu).max()),
            "gpu_vs_timm_cuda_max_abs": float(np.abs(gpu - ref).max()),
            "cpu_vs_timm_cuda_max_abs": float(np.abs(cpu - ref).max()),
            "top1_equal": int(gpu.argmax()) == int(cpu.argmax()) == int(ref.argmax()),
        }
        print(arch, json.dumps(results[arch]), flush=True)
    return results


def torch_case(args, mode, arch, batch, size):
    if arch == "sknet-tiny":
        from paper_sknet import PaperSKNet

        cfg = json.loads(subprocess.check_output([args.cpu_bin, "config", "--arch", arch]))
        model = PaperSKNet(cfg)
    else:
        model = timm.create_model(arch)
    model = model.to(args.device)
    x = torch.randn(batch, 3, size, size, device=args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times = []
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        for i in range(args.warmup + args.runs):
            sync()
            t = time.perf_counter()
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            sync()
            times.append(time.perf_counter() - t)
    else:
        model.eval()
        with torch.inference_mode():
            for i in range(args.warmup + args.runs):
                sync()
                t = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - t)
    times = sorted(times[args.warmup:])
    return times[len(times) // 2] * 1e3


def speed(args, torch_ms):
    rows = []
    for mode, arch, batch, size in SPEED_CASES:
        cmd = [args.current_bin, "bench", "--arch", arch, "--batch", str(batch), "--input", str(size),
               "--warmup", str(args.warmup), "--runs", str(args.runs), "--json"]
        if mode == "train":
            cmd.append("--train")
        try:
            ours = run_json(cmd)["median_ms"]
        except Exception as e:  # noqa: BLE001 - record and go on to the next case
            print(f"sknet {mode} {arch} b{batch}: {e}", flush=True)
            ours = None
        key = (mode, arch, batch, size)
        if key not in torch_ms:
            torch_ms[key] = torch_case(args, mode, arch, batch, size)
        theirs = torch_ms[key]
        row = {"case": f"{mode} {arch} b{batch} {size}x{size}", "sknet_gpu_ms": ours, "pytorch_cuda_ms": theirs,
               "ratio": ours / theirs if ours else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-bin", required=True)
    ap.add_argument("--gpu-bin", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--device", default="cuda", help="PyTorch's device (cpu: a smoke test of this script)")
    ap.add_argument("--quick", action="store_true", help="only the small cases (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        SPEED_CASES[:] = [c for c in SPEED_CASES if c[1] != "skresnext50_32x4d"]
        PARITY_ARCHS[:] = ["skresnet18"]
    gpu_name = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    report = {"gpu": gpu_name, "torch": torch.__version__, "timm": timm.__version__,
              "builds": {}}
    torch_ms = {}
    lines = [f"GPU: {report['gpu']}, PyTorch {report['torch']}, timm {report['timm']}", ""]
    ok = True
    for gpu_bin in args.gpu_bin:
        name = os.path.basename(gpu_bin)
        print(f"== {name}", flush=True)
        build = {}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                build["parity"] = parity(args, gpu_bin, tmp)
            except Exception as e:  # noqa: BLE001 - the timings are still worth having
                print(f"parity failed: {e}", flush=True)
                build["parity_error"] = str(e)
        args.current_bin = gpu_bin
        build["speed"] = speed(args, torch_ms)
        report["builds"][name] = build
        ok &= "parity" in build and all(p["gpu_vs_cpu_max_abs"] < 1e-4 and p["top1_equal"]
                                        for p in build["parity"].values())
        lines += [f"### {name}", "", "| case | sknet (GPU) ms | PyTorch (CUDA) ms | sknet/PyTorch |", "|---|---|---|---|"]
        for r in build["speed"]:
            ours = f"{r['sknet_gpu_ms']:.2f}" if r["sknet_gpu_ms"] else "failed"
            ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
            lines.append(f"| {r['case']} | {ours} | {r['pytorch_cuda_ms']:.2f} | {ratio} |")
        lines.append("")
        with open(os.path.join(args.out, "gpu_results.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(args.out, "gpu_results.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    main()
