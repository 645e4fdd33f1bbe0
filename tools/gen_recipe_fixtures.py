"""Fixtures for sknet's training recipe, from timm's own code.

- mixup.json: timm.data.Mixup (batch mode) on a small batch, for fixed `lam` and CutMix box
  centres: the mixed pixels, the box, the corrected `lam`, and the targets of `mixup_target`
  with label smoothing. timm draws `lam` and the centre at random; here they are fixed by
  replacing its `_params_per_batch` and numpy's `randint` for the call.
- ema.json: timm.utils.ModelEmaV3's decay per update, with and without warmup.
- random_erasing.json: timm.data.RandomErasing in `const` mode on an image of ones, with
  Python's `random` draws replaced by sknet's generator (SplitMix64, reimplemented here) in the
  order sknet draws them: the boxes it erases, for several seeds, counts and image sizes.

Usage: python tools/gen_recipe_fixtures.py  (writes both files in tests/fixtures/)
"""

import json
import os

import numpy as np
import timm
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def f32(t):
    """A float32 tensor's values, each written in the fewest digits that read back exactly."""
    return [float(str(np.float32(v))) for v in t.flatten().tolist()]


def mixup_fixture():
    n, c, h, w = 6, 2, 5, 6
    classes, smoothing = 4, 0.1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen)
    labels = torch.tensor([0, 3, 1, 1, 2, 3])
    cases = []
    for lam, cutmix, centre in [
        (0.7, False, None),
        (0.31, False, None),
        (1.0, False, None),
        (0.6, True, (2, 3)),
        (0.25, True, (0, 5)),
        (0.9, True, (5, 1)),
    ]:
        mix = Mixup(
            mixup_alpha=1.0,
            cutmix_alpha=1.0,
            prob=1.0,
            switch_prob=0.5,
            mode="batch",
            correct_lam=True,
            label_smoothing=smoothing,
            num_classes=classes,
        )
        mix._params_per_batch = lambda lam=lam, cutmix=cutmix: (lam, cutmix)
        box, corrected = None, lam
        saved = np.random.randint
        if cutmix:
            # timm draws the centre as np.random.randint(...) for y, then for x.
            seq = iter(centre)
            np.random.randint = lambda *a, **k: next(seq)
            try:
                yl, yh, xl, xh = timm.data.mixup.rand_bbox((n, c, h, w), lam)
            finally:
                np.random.randint = saved
            box = [int(yl), int(yh), int(xl), int(xh)]
            corrected = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
            seq = iter(centre)
            np.random.randint = lambda *a, **k: next(seq)
        try:
            xm, targets = mix(x.clone(), labels.clone())
        finally:
            np.random.randint = saved
        case = {
            "lam": lam,
            "cutmix": cutmix,
            "mixed": f32(xm),
            "targets": f32(targets),
        }
        if cutmix:
            case.update({"centre": list(centre), "box": box, "lam_corrected": corrected})
        cases.append(case)
    return {
        "timm": timm.__version__,
        "torch": torch.__version__,
        "shape": [n, c, h, w],
        "input": f32(x),
        "labels": labels.tolist(),
        "classes": classes,
        "smoothing": smoothing,
        "cases": cases,
    }


def ema_fixture():
    model = torch.nn.Linear(2, 2)
    out = {"timm": timm.__version__, "decay": 0.9, "runs": []}
    for warmup in (False, True):
        ema = ModelEmaV3(model, decay=0.9, use_warmup=warmup)
        out["runs"].append({"warmup": warmup, "decays": [ema.get_decay(s) for s in range(1, 40)]})
    return out


class SplitMix64:
    """sknet's data::rng::Rng."""

    MASK = (1 << 64) - 1

    def __init__(self, seed):
        self.state = seed & self.MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next_u64() >> 11) / float(1 << 53)

    def below(self, n):
        return self.next_u64() % n


def random_erasing_fixture():
    import random

    from timm.data.random_erasing import RandomErasing

    cases = []
    saved = (random.random, random.uniform, random.randint)
    try:
        for seed, (h, w), max_count in [(1, (8, 12), 1), (2, (16, 16), 1), (3, (10, 7), 3), (4, (32, 32), 4), (5, (5, 5), 1), (6, (24, 20), 2)]:
            for repeat in range(4):
                rng = SplitMix64(seed * 100 + repeat)
                random.random = rng.uniform
                random.uniform = lambda a, b: a + (b - a) * rng.uniform()
                random.randint = lambda a, b: a + rng.below(b - a + 1)
                erase = RandomErasing(probability=0.9, mode="const", max_count=max_count, device="cpu")
                img = torch.ones(3, h, w)
                erase._erase(img, 3, h, w, img.dtype)
                cases.append(
                    {
                        "seed": seed * 100 + repeat,
                        "size": [h, w],
                        "max_count": max_count,
                        "prob": 0.9,
                        "erased": "".join("1" if v else "0" for v in (img[0] == 0).flatten().tolist()),
                    }
                )
    finally:
        random.random, random.uniform, random.randint = saved
    return {"timm": timm.__version__, "cases": cases}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, fixture in [
        ("mixup.json", mixup_fixture()),
        ("ema.json", ema_fixture()),
        ("random_erasing.json", random_erasing_fixture()),
    ]:
        path = os.path.join(OUT, name)
        with open(path + ".tmp", "w") as f:
            json.dump(fixture, f)
        os.replace(path + ".tmp", path)
        print(path)


if __name__ == "__main__":
    main()
