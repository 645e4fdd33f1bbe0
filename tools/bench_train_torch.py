"""Images/s of one SGD training step in PyTorch for an sknet config (tools/paper_sknet.py builds the same
network), for comparison with sknet's training throughput on the same machine.

    python tools/bench_train_torch.py --arch sknet-tiny --batch 64 --steps 10 [--threads 2]
    python tools/bench_train_torch.py --config models/cifar10-config.json
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from paper_sknet import PaperSKNet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKNET = os.environ.get("SKNET_BIN", os.path.join(ROOT, "target", "debug", "sknet"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sknet-tiny")
    ap.add_argument("--config", help="sknet config JSON (overrides --arch)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.config:
        with open(args.config) as f:
            cfg = json.load(f)
    else:
        cfg = json.loads(subprocess.check_output([SKNET, "config", "--arch", args.arch]))
    cfg["num_classes"] = args.classes
    model = PaperSKNet(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    h, w = cfg["default_input"]
    x = torch.randn(args.batch, 3, h, w)
    y = torch.randint(0, args.classes, (args.batch,))
    times = []
    for _ in range(args.steps + 2):
        t = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    times = sorted(times[2:])
    med = times[len(times) // 2]
    print(json.dumps({"arch": cfg["name"], "batch": args.batch, "threads": args.threads, "median_step_s": med,
                      "images_per_s": args.batch / med}))


if __name__ == "__main__":
    main()
