"""Generates the weight-import and preprocessing fixtures in tests/fixtures/.

    cargo build && python tools/gen_weights_fixtures.py

- tiny_timm.safetensors, tiny_timm.pth, tiny_timm_nested.pth: a small timm SK-ResNet with PyTorch's own random
  initialisation (and randomised BN statistics), saved the ways people save them; tiny_timm.json: its sknet config,
  an input and timm's logits.
- preprocess_*.png: an image and what timm's eval transform (PIL bicubic resize of the shorter side to
  224 / 0.875, center crop 224) makes of it; preprocess_cifar.jpg likewise for a JPEG.
- predict_skresnet18.json: logits of skresnet18 (deterministic weights) for preprocess_scene.png through timm's
  whole eval pipeline.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from timm.models.resnet import ResNet
from timm.models.sknet import SelectiveKernelBasic

sys.path.insert(0, os.path.dirname(__file__))
from detinit import f32_list, init_torch, input_tensor, write_fixture  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")
SKNET = os.environ.get("SKNET_BIN", os.path.join(ROOT, "target", "debug", "sknet"))
CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10", "train", "cat", "0000.jpg")


def preset(name):
    return json.loads(subprocess.check_output([SKNET, "config", "--arch", name]))


def tiny_timm():
    torch.manual_seed(0)
    m = ResNet(block=SelectiveKernelBasic, layers=[1, 1, 1, 1], channels=(8, 16, 16, 32), num_classes=10,
               block_args=dict(sk_kwargs=dict(rd_ratio=1 / 8, rd_divisor=16, split_input=True)))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    c = preset("skresnet18")
    c.update(name="tiny-timm", num_classes=10, layers=[1, 1, 1, 1], planes=[8, 16, 16, 32])
    return m.eval(), c


def scene(w=640, h=480):
    """A smooth synthetic picture with edges, deterministic."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 120 * np.sin(x / 37.0) * np.cos(y / 23.0)
    g = 255 * (x / w) * (1 - y / h) + 40 * ((x // 40 + y // 40) % 2)
    b = 255 * ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (h / 3) ** 2) * 0.8 + 30
    return Image.fromarray(np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8))


def main():
    os.makedirs(OUT, exist_ok=True)
    v = f"timm {timm.__version__}, torch {torch.__version__}"
    m, c = tiny_timm()
    sd = m.state_dict()
    save_file({k: t.contiguous() for k, t in sd.items()}, os.path.join(OUT, "tiny_timm.safetensors"))
    torch.save(sd, os.path.join(OUT, "tiny_timm.pth"))
    torch.save({"epoch": 3, "state_dict": sd}, os.path.join(OUT, "tiny_timm_nested.pth"))
    x = torch.from_numpy(input_tensor([2, 3, 64, 64]))
    with torch.no_grad():
        logits = m(x)
    write_fixture(os.path.join(OUT, "tiny_timm.json"), {
        "name": "tiny_timm", "source": f"timm ResNet(SelectiveKernelBasic) with torch.manual_seed(0) weights ({v})",
        "config": c, "input_shape": [2, 3, 64, 64], "logits": f32_list(logits.numpy())})
    print("tiny_timm:", sum(t.numel() for t in sd.values()), "values")

    # timm's eval transform, step by step and whole.
    ref = timm.create_model("skresnet18")
    cfg = resolve_data_config({}, model=ref)
    transform = create_transform(**cfg)
    img = scene()
    img.save(os.path.join(OUT, "preprocess_scene.png"))
    shutil.copyfile(CIFAR, os.path.join(OUT, "preprocess_cifar.jpg"))
    for name, src in [("scene", os.path.join(OUT, "preprocess_scene.png")),
                      ("cifar", os.path.join(OUT, "preprocess_cifar.jpg"))]:
        im = Image.open(src).convert("RGB")
        cropped = transform.transforms[1](transform.transforms[0](im))  # Resize, CenterCrop
        cropped.save(os.path.join(OUT, f"preprocess_{name}_expected.png"))
    print("transform:", transform)

    init_torch(ref)
    ref.eval()
    x = transform(Image.open(os.path.join(OUT, "preprocess_scene.png")).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        logits = ref(x)
    write_fixture(os.path.join(OUT, "predict_skresnet18.json"), {
        "name": "predict_skresnet18",
        "source": f"timm skresnet18, deterministic weights, timm eval transform of preprocess_scene.png ({v})",
        "image": "preprocess_scene.png", "logits": f32_list(logits.numpy())})


if __name__ == "__main__":
    main()
