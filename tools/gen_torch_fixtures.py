"""Generates the PyTorch parity fixtures in tests/fixtures/ (timm and a paper-design model).

    pip install -r tools/requirements.txt
    cargo build && python tools/gen_torch_fixtures.py

Every model gets the deterministic weights of tools/detinit.py (so full-size models need no stored
weights) and the deterministic input; a fixture holds the sknet config, the list of tensor keys and
shapes, the logits and, for some, attention weights, or a training step's loss, gradients and
running statistics.
"""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import timm
import torch
from timm.models.resnet import ResNet
from timm.models.sknet import SelectiveKernelBasic, SelectiveKernelBottleneck

sys.path.insert(0, os.path.dirname(__file__))
from detinit import f32_list, init_torch, input_tensor, write_fixture  # noqa: E402
from paper_sknet import PaperSKNet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")
SKNET = os.environ.get("SKNET_BIN", os.path.join(ROOT, "target", "debug", "sknet"))
torch.set_num_threads(max(1, os.cpu_count() or 1))


def preset(name):
    return json.loads(subprocess.check_output([SKNET, "config", "--arch", name]))


def timm_attention_hooks(model, paths):
    got = {}
    modules = dict(model.named_modules())
    for p in paths:
        def hook(_m, _i, out, p=p):
            got[p] = out.detach()[..., 0, 0]  # [B, M, C]
        modules[p + ".attn"].register_forward_hook(hook)
    return got


def relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def eval_case(name, model, config, input_shape, attention_paths=(), source=""):
    model.eval()
    keys = init_torch(model)
    hooks = timm_attention_hooks(model, attention_paths) if attention_paths and not isinstance(model, PaperSKNet) else None
    x = torch.from_numpy(input_tensor(input_shape))
    with torch.no_grad():
        logits = model(x)
    fixture = {
        "name": name,
        "source": source,
        "mode": "eval",
        "config": config,
        "input_shape": list(input_shape),
        "tensors": keys,
        "logits": f32_list(logits.numpy()),
    }
    if attention_paths:
        if isinstance(model, PaperSKNet):
            att = dict(model.attentions())
            att = {p: att[p] for p in attention_paths}
        else:
            att = hooks
        fixture["attention"] = {p: f32_list(att[p].numpy()) for p in attention_paths}
    write_fixture(os.path.join(OUT, f"{name}.json"), fixture)
    print(f"{name}: logits {tuple(logits.shape)}, max |logit| {logits.abs().max():.3f}")
    return logits


def main():
    os.makedirs(OUT, exist_ok=True)
    v = f"timm {timm.__version__}, torch {torch.__version__}"

    # Full-size timm models.
    eval_case("skresnet18_timm", timm.create_model("skresnet18"), preset("skresnet18"), [2, 3, 96, 96],
              ["layer1.0.conv1", "layer4.1.conv1"], f"timm skresnet18 ({v})")
    ref = eval_case("skresnext50_timm", timm.create_model("skresnext50_32x4d"), preset("skresnext50_32x4d"),
                    [1, 3, 224, 224], ["layer3.5.conv2"], f"timm skresnext50_32x4d ({v})")

    # The paper-design model agrees with timm where their designs coincide.
    same = PaperSKNet(preset("skresnext50_32x4d")).eval()
    init_torch(same)
    with torch.no_grad():
        err = relerr(same(torch.from_numpy(input_tensor([1, 3, 224, 224]))), ref)
    assert err < 1e-5, f"paper model differs from timm: {err}"
    print(f"paper-design model vs timm skresnext50_32x4d: rel err {err:.2e}")

    # The paper's SKNet-50 (Caffe max-pool), odd-ish input size.
    eval_case("sknet50_paper", PaperSKNet(preset("sknet50")), preset("sknet50"), [1, 3, 200, 200],
              ["layer1.0.conv2", "layer4.2.conv2"], f"tools/paper_sknet.py ({v})")

    # Small configs.
    c = preset("skresnet18")
    # (timm's plain stem is always 64 wide.)
    c.update(name="tiny-basic-m4", num_classes=5, layers=[1, 1, 1, 1], planes=[16, 32, 48, 64],
             strides=[1, 2, 2, 2])
    c["sk"].update(kernel_sizes=[3, 5, 7, 9], attn_width={"rule": "divisible", "ratio": 0.25, "divisor": 8})
    m = ResNet(block=SelectiveKernelBasic, layers=[1, 1, 1, 1], channels=(16, 32, 48, 64), num_classes=5, zero_init_last=False,
               block_args=dict(sk_kwargs=dict(kernel_size=[3, 5, 7, 9], rd_ratio=0.25, rd_divisor=8,
                                              split_input=True)))
    eval_case("tiny_basic_m4_timm", m, c, [2, 3, 64, 64], ["layer1.0.conv1", "layer2.0.conv1"],
              f"timm ResNet(SelectiveKernelBasic), 4 branches, split input ({v})")

    c = preset("skresnext50_32x4d")
    c.update(name="tiny-bottleneck-5x5", num_classes=6, layers=[1, 1, 1, 1], planes=[16, 32, 48, 64],
             strides=[1, 2, 2, 2], base_width=16, cardinality=4)
    c["sk"].update(dilated_3x3=False, groups=4, attn_width={"rule": "divisible", "ratio": 1 / 16, "divisor": 8})
    m = ResNet(block=SelectiveKernelBottleneck, layers=[1, 1, 1, 1], channels=(16, 32, 48, 64),
               cardinality=4, base_width=16, num_classes=6, zero_init_last=False,
               block_args=dict(sk_kwargs=dict(keep_3x3=False, rd_ratio=1 / 16, rd_divisor=8, split_input=False)))
    eval_case("tiny_bottleneck_5x5_timm", m, c, [1, 3, 72, 56], ["layer3.0.conv2", "layer4.0.conv2"],
              f"timm ResNet(SelectiveKernelBottleneck), true 5x5 kernels ({v})")

    c = preset("sknet29")
    c.update(name="tiny-cifar-channel-major", num_classes=10, layers=[1, 1], planes=[8, 16], strides=[1, 2],
             base_width=32, cardinality=4)
    c["stem"]["width"] = 16
    c["sk"].update(groups=8, attn_width={"rule": "paper", "reduction": 4, "min_width": 8},
                   attn_norm_act=False, attn_bias=True, layout="channel_major")
    eval_case("tiny_cifar_paper", PaperSKNet(c), c, [2, 3, 32, 32], ["layer1.0.conv2", "layer2.0.conv2"],
              f"tools/paper_sknet.py, CIFAR stem, no norm on z, biased attention, channel-major ({v})")

    # Trainable parameter counts of every PyTorch-family preset.
    counts = {}
    for name in ["sknet26", "sknet50", "sknet101", "skresnet18", "skresnet34", "skresnext50_32x4d", "sknet29",
                 "sknet-tiny"]:
        n = sum(p.numel() for p in PaperSKNet(preset(name)).parameters())
        if name.startswith("skres"):
            n_timm = sum(p.numel() for p in timm.create_model(name).parameters())
            assert n == n_timm, (name, n, n_timm)
        counts[name] = n
    write_fixture(os.path.join(OUT, "param_counts.json"), {
        "source": f"trainable parameters of tools/paper_sknet.py, equal to timm's for the timm models ({v})",
        "trainable_params": counts})
    print(counts)

    # One training step, against timm.
    c = preset("skresnet18")
    c.update(name="tiny-train", num_classes=4, layers=[1, 1, 1, 1], planes=[16, 32, 48, 64],
             strides=[1, 2, 2, 2])
    m = ResNet(block=SelectiveKernelBasic, layers=[1, 1, 1, 1], channels=(16, 32, 48, 64), num_classes=4,
               zero_init_last=False,
               block_args=dict(sk_kwargs=dict(rd_ratio=1 / 8, rd_divisor=16, split_input=True)))
    keys = init_torch(m)
    m.train()
    x = torch.from_numpy(input_tensor([4, 3, 48, 48]))
    labels = torch.tensor([0, 1, 2, 3])
    logits = m(x)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    params = dict(m.named_parameters())
    grad_keys = ["conv1.weight", "bn1.weight", "layer1.0.conv1.paths.1.conv.weight",
                 "layer1.0.conv1.attn.fc_reduce.weight", "layer1.0.conv1.attn.bn.weight",
                 "layer1.0.conv1.attn.fc_select.weight", "layer2.0.downsample.0.weight", "fc.weight", "fc.bias"]
    buffers = dict(m.named_buffers())
    running_keys = ["bn1.running_mean", "bn1.running_var", "layer1.0.conv1.attn.bn.running_var",
                    "layer2.0.conv2.bn.running_var"]
    write_fixture(os.path.join(OUT, "train_step_timm.json"), {
        "name": "train_step_timm",
        "source": f"timm ResNet(SelectiveKernelBasic), train mode, cross-entropy ({v})",
        "mode": "train",
        "config": c,
        "input_shape": [4, 3, 48, 48],
        "labels": labels.tolist(),
        "tensors": keys,
        "logits": f32_list(logits.detach().numpy()),
        "loss": float(loss.detach()),
        "grads": {k: f32_list(params[k].grad.numpy()) for k in grad_keys},
        "running": {k: f32_list(buffers[k].numpy()) for k in running_keys},
    })
    print(f"train_step_timm: loss {float(loss.detach()):.6f}")


if __name__ == "__main__":
    main()
