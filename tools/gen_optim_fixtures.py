"""Fixture for sknet's optimizers: every step of torch.optim.SGD and torch.optim.AdamW.

Parameters named as sknet's keys, in timm's parameter groups: weight decay on conv and linear
weights only (not on BatchNorm parameters or biases), and the backbone's learning rate a
multiple of the classifier's (`fc.*`). The learning rate changes every step, as a schedule
makes it. Random gradients, seeded.

Usage: python tools/gen_optim_fixtures.py  (writes tests/fixtures/optim_steps.json)
"""

import json
import os

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

PARAMS = [
    # (key, shape, decayed)
    ("layer1.0.conv1.paths.0.conv.weight", (4, 3, 3, 3), True),
    ("layer1.0.conv1.paths.0.bn.weight", (4,), False),
    ("layer1.0.conv1.paths.0.bn.bias", (4,), False),
    ("fc.weight", (5, 4), True),
    ("fc.bias", (5,), False),
]
LRS = [1e-3, 3e-3, 2e-3, 5e-4, 1e-3]
BACKBONE_LR_SCALE = 0.5


def run(make, extra):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=gen, dtype=torch.float32) for _, shape, _ in PARAMS]
    params = [torch.nn.Parameter(t.clone()) for t in tensors]
    groups = []
    for (key, _, decay), p in zip(PARAMS, params):
        head = key.startswith("fc.")
        groups.append({
            "params": [p],
            "weight_decay": extra["weight_decay"] if decay else 0.0,
            "scale": 1.0 if head else BACKBONE_LR_SCALE,
        })
    opt = make(groups)
    grads = [[] for _ in PARAMS]
    after = [[] for _ in PARAMS]
    for lr in LRS:
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        for i, p in enumerate(params):
            # Gradients of a few magnitudes, and some exact zeros.
            g = torch.randn(p.shape, generator=gen) * (10.0 ** (i % 3 - 1))
            g[g.abs() < 0.05] = 0.0
            p.grad = g
            grads[i].append(g.flatten().tolist())
        opt.step()
        for i, p in enumerate(params):
            after[i].append(p.detach().flatten().tolist())
    return {
        **extra,
        "backbone_lr_scale": BACKBONE_LR_SCALE,
        "lrs": LRS,
        "params": [
            {
                "key": key,
                "decay": decay,
                "initial": t.flatten().tolist(),
                "grads": grads[i],
                "after": after[i],
            }
            for i, ((key, _, decay), t) in enumerate(zip(PARAMS, tensors))
        ],
    }


def main():
    cases = [
        run(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True),
            {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
        run(lambda g: torch.optim.AdamW(g, lr=0.1, betas=(0.9, 0.99), eps=1e-8),
            {"optimizer": "adamw", "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.05}),
    ]
    path = os.path.join(OUT, "optim_steps.json")
    with open(path, "w") as f:
        json.dump({
            "source": f"torch.optim.SGD and torch.optim.AdamW (torch {torch.__version__})",
            "cases": cases,
        }, f)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
