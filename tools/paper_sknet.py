"""A PyTorch SKNet built from an sknet config (the JSON printed by `sknet config --arch NAME`),
written from the paper's description (Li et al., CVPR 2019, sec. 3) rather than from timm.

Its module paths equal timm's checkpoint keys, so the same deterministic weights load into it, into
timm and into sknet. It supports ImageNet (PyTorch or Caffe max-pool) and CIFAR stems, basic and
bottleneck blocks, and every SK option of the config (branch kernels, true or dilated, groups,
split input, attention width rule, BN+ReLU on z, biases, logit layout).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_divisible(v, divisor):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def attn_width(rule, channels):
    if rule["rule"] == "paper":
        return max(channels // rule["reduction"], rule["min_width"])
    if rule["rule"] == "divisible":
        return make_divisible(channels * rule["ratio"], rule["divisor"])
    return rule["width"]


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride=1, dilation=1, groups=1, bias=False, act=True, eps=1e-5):
        super().__init__()
        pad = ((stride - 1) + dilation * (k - 1)) // 2
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, dilation, groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout, eps=eps)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.act else x


class SKAttn(nn.Module):
    """Fuse (GAP of the branch sum, W_reduce, [BN+ReLU]) and select (W_select, softmax over M)."""

    def __init__(self, c, m, d, norm_act, bias, layout, eps):
        super().__init__()
        self.fc_reduce = nn.Conv2d(c, d, 1, bias=bias)
        self.bn = nn.BatchNorm2d(d, eps=eps) if norm_act else None
        self.fc_select = nn.Conv2d(d, c * m, 1, bias=bias)
        self.m, self.layout = m, layout

    def forward(self, u):  # u: [B, C, H, W], the fused map
        s = u.mean((2, 3), keepdim=True)
        z = self.fc_reduce(s)
        if self.bn is not None:
            z = F.relu(self.bn(z))
        logits = self.fc_select(z).flatten(1)
        b, c = u.shape[0], u.shape[1]
        if self.layout == "branch_major":
            logits = logits.view(b, self.m, c)
        else:
            logits = logits.view(b, c, self.m).transpose(1, 2)
        return torch.softmax(logits, dim=1)  # [B, M, C]


class SK(nn.Module):
    def __init__(self, cin, cout, stride, sk, eps):
        super().__init__()
        m = len(sk["kernel_sizes"])
        self.split = sk["split_input"]
        branch_in = cin // m if self.split else cin
        groups = min(sk["groups"], cout)
        paths = []
        for k in sk["kernel_sizes"]:
            kk, dil = (3, (k - 1) // 2) if sk["dilated_3x3"] else (k, 1)
            paths.append(ConvBn(branch_in, cout, kk, stride, dil, groups, sk["conv_bias"], True, eps))
        self.paths = nn.ModuleList(paths)
        d = attn_width(sk["attn_width"], cout)
        self.attn = SKAttn(cout, m, d, sk["attn_norm_act"], sk["attn_bias"], sk["layout"], eps)
        self.last_attention = None

    def forward(self, x):
        if self.split:
            xs = torch.chunk(x, len(self.paths), dim=1)
            us = [p(xi) for p, xi in zip(self.paths, xs)]
        else:
            us = [p(x) for p in self.paths]
        a = self.attn(sum(us))
        self.last_attention = a
        return sum(u * a[:, i, :, None, None] for i, u in enumerate(us))


def projection(cin, cout, stride, eps):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=eps))


class Basic(nn.Module):
    def __init__(self, cin, planes, stride, cfg, eps):
        super().__init__()
        self.conv1 = SK(cin, planes, stride, cfg["sk"], eps)
        self.conv2 = ConvBn(planes, planes, 3, act=False, eps=eps)
        self.downsample = projection(cin, planes, stride, eps) if stride != 1 or cin != planes else None

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride, cfg, eps):
        super().__init__()
        width = int(math.floor(planes * cfg["base_width"] / 64) * cfg["cardinality"])
        out = planes * 4
        self.conv1 = ConvBn(cin, width, 1, eps=eps)
        self.conv2 = SK(width, width, stride, cfg["sk"], eps)
        self.conv3 = ConvBn(width, out, 1, act=False, eps=eps)
        self.downsample = projection(cin, out, stride, eps) if stride != 1 or cin != out else None

    def forward(self, x):
        y = self.conv3(self.conv2(self.conv1(x)))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class PaperSKNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg["padding"] == "symmetric" and not cfg["conv_bias"], "Keras-style configs: use tools/keras_seed.py"
        eps = cfg["norm"]["eps"]
        stem = cfg["stem"]
        w = stem["width"]
        if stem["kind"] == "imagenet":
            self.conv1 = nn.Conv2d(cfg["in_channels"], w, 7, 2, 3, bias=False)
            if stem["caffe_pool"]:
                self.maxpool = nn.MaxPool2d(3, 2, 0, ceil_mode=True)
            else:
                self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(cfg["in_channels"], w, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(w, eps=eps)
        block = {"basic": Basic, "bottleneck": Bottleneck}[cfg["block"]]
        expansion = 4 if cfg["block"] == "bottleneck" else 1
        cin = w
        for i, (n, planes, stride) in enumerate(zip(cfg["layers"], cfg["planes"], cfg["strides"])):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride if j == 0 else 1, cfg, eps))
                cin = planes * expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(cfg["layers"])
        self.fc = nn.Linear(cin, cfg["num_classes"])

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean((2, 3)))

    def attentions(self):
        """[(path, [B, M, C])] of the last forward."""
        return [(name, m.last_attention) for name, m in self.named_modules() if isinstance(m, SK)]
