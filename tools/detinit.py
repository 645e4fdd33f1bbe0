"""Deterministic tensors shared by the sknet parity fixtures and `sknet::weights::deterministic`.

Element i of the tensor keyed k gets f = 2u - 1 with u = (fmix64((fnv1a32(k) << 32) ^ i) >> 40) / 2^24,
scaled by role: weights f * sqrt(6 / fan_in); biases, BN shifts and means 0.1 f; BN scales 0.5 + 0.25 f;
BN variances 1 + 0.5 f. Products are computed in float64 and rounded once to float32, as in Rust.
"""
import json

import numpy as np

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def fnv1a32(s: str) -> int:
    h = 0x811C9DC5
    for b in s.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def units(key: str, n: int) -> np.ndarray:
    """n values in [-1, 1) for `key`, float64."""
    with np.errstate(over="ignore"):
        x = (np.uint64(fnv1a32(key)) << np.uint64(32)) ^ np.arange(n, dtype=np.uint64)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xC4CEB9FE1A85EC53)
        x ^= x >> np.uint64(33)
    return 2.0 * ((x >> np.uint64(40)).astype(np.float64) / float(1 << 24)) - 1.0


ROLE_SCALE = {
    "bias": (0.1, 0.0),
    "norm_bias": (0.1, 0.0),
    "running_mean": (0.1, 0.0),
    "norm_weight": (0.25, 0.5),
    "running_var": (0.5, 1.0),
    "input": (1.0, 0.0),
}


def tensor(key: str, shape, role: str) -> np.ndarray:
    """The deterministic float32 tensor for `key` (row-major, PyTorch layout)."""
    n = int(np.prod(shape)) if len(shape) else 1
    if role == "weight":
        fan_in = max(n // max(shape[0], 1), 1)
        scale, offset = np.sqrt(6.0 / fan_in), 0.0
    else:
        scale, offset = ROLE_SCALE[role]
    return (offset + scale * units(key, n)).astype(np.float32).reshape(shape)


def torch_role(module, leaf: str) -> str:
    import torch.nn as nn

    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"weight": "norm_weight", "bias": "norm_bias"}.get(leaf, leaf)
    return "bias" if leaf == "bias" else "weight"


def init_torch(model):
    """Sets every parameter and BN buffer of a PyTorch model from the formula.

    Returns [(key, shape)] of the float tensors, in state_dict order."""
    import torch

    modules = dict(model.named_modules())
    sd = model.state_dict()
    out, listing = {}, []
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            out[key] = value
            continue
        prefix, _, leaf = key.rpartition(".")
        role = torch_role(modules[prefix], leaf)
        out[key] = torch.from_numpy(tensor(key, list(value.shape), role))
        listing.append([key, list(value.shape)])
    model.load_state_dict(out)
    return listing


def input_tensor(shape) -> np.ndarray:
    """The deterministic input, NCHW."""
    return tensor("input", shape, "input")


def f32_list(a) -> list:
    return [float(f"{float(v):.9g}") for v in np.asarray(a, dtype=np.float32).ravel()]


def write_fixture(path: str, fixture: dict):
    with open(path, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
