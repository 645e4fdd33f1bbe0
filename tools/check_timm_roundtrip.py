"""Checks both directions of sknet's weight exchange with timm, on full-size models:

timm state dict -> safetensors -> `sknet export` -> timm.load_state_dict(strict=True), and logits equal.

    cargo build && python tools/check_timm_roundtrip.py
"""
import os
import subprocess
import sys
import tempfile

import timm
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKNET = os.environ.get("SKNET_BIN", os.path.join(ROOT, "target", "debug", "sknet"))


def timm_with_bn_statistics(name, seed=0):
    """A timm model in eval mode whose BN running statistics are random (not the identity), so that
    a check also covers how they are read and applied."""
    torch.manual_seed(seed)
    model = timm.create_model(name).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def main():
    ok = True
    for name in sys.argv[1:] or ["skresnet18", "skresnet34", "skresnext50_32x4d"]:
        src = timm_with_bn_statistics(name)
        with tempfile.TemporaryDirectory() as tmp:
            a, b = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
            save_file({k: v.contiguous() for k, v in src.state_dict().items()}, a)
            subprocess.run([SKNET, "export", "--weights", a, "--output", b], check=True)
            dst = timm.create_model(name).eval()
            dst.load_state_dict(load_file(b), strict=True)
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            err = ((src(x) - dst(x)).abs().max() / src(x).abs().max()).item()
        print(f"{name}: strict load ok, logits rel err {err:.2e}")
        ok &= err == 0.0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
