"""Fixtures for sknet's training recipe, from timm's own code.

- mixup.json: timm.data.Mixup (batch mode) on a small batch, for fixed `lam` and CutMix box
  centres: the mixed pixels, the box, the corrected `lam`, and the targets of `mixup_target`
  with label smoothing. timm draws `lam` and the centre at random; here they are fixed by
  replacing its `_params_per_batch` and numpy's `randint` for the call.
- ema.json: timm.utils.ModelEmaV3's decay per update, with and without warmup.

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


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, fixture in [("mixup.json", mixup_fixture()), ("ema.json", ema_fixture())]:
        path = os.path.join(OUT, name)
        with open(path + ".tmp", "w") as f:
            json.dump(fixture, f)
        os.replace(path + ".tmp", path)
        print(path)


if __name__ == "__main__":
    main()
