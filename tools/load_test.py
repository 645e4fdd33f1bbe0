"""Load test of `sknet serve` against a Python baseline (tools/baseline_server.py: FastAPI,
uvicorn, PyTorch), on loopback with wrk, bounded in time.

For skresnet18 (timm's initialisation, saved as a timm safetensors file that both servers load)
and the shipped CIFAR-10 model, at each concurrency: requests/s, p50 and p99 latency, errors.
With --soak S, sknet serve runs S seconds under load at concurrency 8 while its RSS is sampled
every 5 s.

    python tools/load_test.py --sknet target/release/sknet --out bench/serve \
        --duration 15 --concurrency 1,8,32 --soak 300

Needs Debian's `wrk`, and torch, timm, torchvision, safetensors, fastapi, uvicorn (pip).
"""
import argparse
import csv
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.dirname(os.path.abspath(__file__))


def start(cmd, url_timeout=120):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + url_timeout
    line = proc.stdout.readline()
    if not line.startswith("listening on ") or time.time() > deadline:
        stop(proc)
        raise SystemExit(f"{' '.join(cmd)} did not start: {line!r}")
    url = line.split("listening on ", 1)[1].strip()
    # A server may announce itself before its socket accepts: wait for /healthz.
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=5).read()
            return proc, url
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                stop(proc)
                raise SystemExit(f"{' '.join(cmd)} never answered /healthz")
            time.sleep(0.2)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wrk_script(image, path):
    # wrk's Lua reads the image once and posts it with every request.
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write('wrk.headers["Content-Type"] = "image/jpeg"\n')
        f.write(f'local f = assert(io.open("{image}", "rb"))\n')
        f.write("wrk.body = f:read(\"*all\")\nf:close()\n")
    return path


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url, script, concurrency, duration):
    cmd = ["wrk", "-t", str(min(concurrency, 2)), "-c", str(concurrency), "-d", f"{duration}s",
           "--timeout", "30s", "--latency", "-s", script, f"{url}/v1/predict"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": to_ms(latency["50"]),
        "p99": to_ms(latency["99"]),
        "requests": total,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0),
    }


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sknet", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--soak", type=int, default=0, help="seconds of soak (0: none)")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    cpu = next(l.split(":", 1)[1].strip() for l in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))

    import timm

    torch.manual_seed(0)
    r18 = os.path.join(args.out, "skresnet18.safetensors")
    model = timm.create_model("skresnet18", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, r18)
    cifar_image = os.path.join(ROOT, "data", "cifar10-mini", "cat", "0000.jpg")
    photo = os.path.join(args.out, "cat-320x240.jpg")
    Image.open(cifar_image).convert("RGB").resize((320, 240), Image.BICUBIC).save(photo, quality=90)
    cifar = os.path.join(ROOT, "models", "cifar10.safetensors")
    cases = [
        ("skresnet18", photo,
         [args.sknet, "serve", "--weights", r18, "--arch", "skresnet18", "--port", "0"],
         [args.python, os.path.join(TOOLS, "baseline_server.py"), "--weights", r18, "--arch", "skresnet18", "--port", "18081"]),
        ("sknet-tiny-cifar10 (shipped)", cifar_image,
         [args.sknet, "serve", "--weights", cifar, "--port", "0"],
         [args.python, os.path.join(TOOLS, "baseline_server.py"), "--weights", cifar, "--port", "18082"]),
    ]
    rows = []
    for name, image, sknet_cmd, python_cmd in cases:
        script = wrk_script(image, os.path.join(args.out, "post.lua"))
        for server, cmd in [("sknet serve", sknet_cmd), ("FastAPI + PyTorch", python_cmd)]:
            proc, url = start(cmd)
            try:
                wrk(url, script, 1, 2)  # warm-up
                for c in levels:
                    r = wrk(url, script, c, args.duration)
                    rows.append((name, server, c, r))
                    print(name, server, c, r, flush=True)
            finally:
                stop(proc)
    lines = [f"CPU: {cpu}; wrk on loopback, {args.duration} s per cell; both servers on the same 2 cores", "",
             "| model | server | concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for name, server, c, r in rows:
        lines.append(f"| {name} | {server} | {c} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
    if args.soak:
        proc, url = start(cases[1][2])
        samples = []
        try:
            script = wrk_script(cases[1][1], os.path.join(args.out, "post.lua"))
            load = subprocess.Popen(["wrk", "-t", "2", "-c", "8", "-d", f"{args.soak}s", "--timeout", "30s",
                                     "-s", script, f"{url}/v1/predict"], stdout=subprocess.PIPE, text=True)
            start_time = time.time()
            while load.poll() is None:
                samples.append((round(time.time() - start_time), rss_mib(proc.pid)))
                time.sleep(5)
            out = load.stdout.read()
        finally:
            stop(proc)
        with open(os.path.join(args.out, "soak.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seconds", "rss_mib"])
            w.writerows(samples)
        rss = [s[1] for s in samples]
        total = re.search(r"(\d+) requests in", out).group(1)
        lines += ["", f"Soak: sknet serve, shipped CIFAR-10 model, concurrency 8, {args.soak} s, {total} requests: "
                  f"RSS first {rss[0]:.0f} MiB, max {max(rss):.0f} MiB, last {rss[-1]:.0f} MiB "
                  f"({len(rss)} samples, soak.csv)"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "load.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
