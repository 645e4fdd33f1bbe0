"""Fixtures for `sknet attention`'s object enlargement, made with Pillow.

The paper's protocol (sec. 4.3) enlarges the central object by a scale: crop the centered
1/scale of the image, then resize it back to the network's input. This writes what Pillow and
torchvision's eval transform make of a synthetic scene (the same formula is rebuilt in
tests/attention.rs, so only the results are stored):

    crop: cw = round(w / s), left = round((w - cw) / 2) (Python rounds half to even), zero
          outside the image, as Image.crop does;
    eval: Resize(32) on the shorter side (longer side int(32 * long / short)), bicubic, then
          CenterCrop(32) with offsets int(round((size - 32) / 2)).

Usage: python tools/gen_attention_fixtures.py  (writes tests/fixtures/enlarge_scene_<s>.png)
"""

from pathlib import Path

import numpy as np
from PIL import Image

W, H = 45, 37
SCALES = [0.75, 1.5, 2.0, 3.0]
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def scene() -> Image.Image:
    y, x = np.mgrid[0:H, 0:W]
    r = (x * 37 + y * 11) % 256
    g = (x * y * 3) % 256
    b = ((x ^ y) * 29 + 40) % 256
    return Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8), "RGB")


def eval_transform(img: Image.Image, size: int = 32) -> Image.Image:
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def enlarge(img: Image.Image, s: float) -> Image.Image:
    w, h = img.size
    cw, ch = max(1, round(w / s)), max(1, round(h / s))
    left, top = round((w - cw) / 2), round((h - ch) / 2)
    return img.crop((left, top, left + cw, top + ch))


def main() -> None:
    img = scene()
    for s in SCALES:
        eval_transform(enlarge(img, s)).save(OUT / f"enlarge_scene_{s}.png")
        print(f"wrote enlarge_scene_{s}.png")


if __name__ == "__main__":
    main()
