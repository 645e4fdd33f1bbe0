"""Writes tests/fixtures/auto_augment.json: RandAugment / TrivialAugment op outputs from timm's own
op functions, torchvision's TrivialAugmentWide op application, and Pillow, for
src/data/auto_augment.rs to match.

    /work/venv/bin/python tools/gen_auto_augment_fixtures.py

The input is a 16x12 crop (24x16 for Equalize) of a CIFAR-10 training JPEG. Each case records the op, the magnitude
(or TA bin) and sign, the concrete argument timm's level function gives, and the output bytes
(base64). Geometric ops use bilinear resampling, as the Rust side does.
"""

import base64
import json
import os
import random

import PIL
import timm
import torch
import torchvision
from PIL import Image
from timm.data import auto_augment as aa
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as tva

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.environ.get("CIFAR_JPEG", "/work/shared/data/cifar10/train/ship/0001.jpg")
OUT = os.path.join(ROOT, "tests", "fixtures", "auto_augment.json")
FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean, times 255, rounded
BILINEAR = Image.BILINEAR


def b64(img):
    assert img.mode == "RGB"
    return base64.b64encode(img.tobytes()).decode("ascii")


def level_arg(name, magnitude, negate):
    """timm's level function, with `_randomly_negate`'s draw forced to `negate`."""
    fn = aa.LEVEL_TO_ARG[name]
    if fn is None:
        return ()
    orig = random.random
    # `_randomly_negate` negates when random.random() > 0.5.
    random.random = lambda: 0.9 if negate else 0.1
    try:
        return fn(magnitude, aa._HPARAMS_DEFAULT)
    finally:
        random.random = orig


def main():
    img = Image.open(SRC).convert("RGB").crop((8, 10, 24, 22))  # 16 wide, 12 high
    w, h = img.size
    kwargs = dict(fillcolor=FILL, resample=BILINEAR)

    rand = []
    plan = [
        ("AutoContrast", [(0, False)]),
        ("Equalize", [(0, False)]),
        ("Invert", [(0, False)]),
        ("Posterize", [(9, False), (5, False)]),
        ("PosterizeIncreasing", [(9, False), (3, False)]),
        ("Solarize", [(9, False), (4, False)]),
        ("SolarizeIncreasing", [(9, False), (4, False)]),
        ("SolarizeAdd", [(9, False)]),
        ("Color", [(9, False), (2, False)]),
        ("ColorIncreasing", [(9, True), (9, False)]),
        ("Contrast", [(9, False), (2, False)]),
        ("ContrastIncreasing", [(9, True)]),
        ("Brightness", [(9, False), (2, False)]),
        ("BrightnessIncreasing", [(9, True)]),
        ("Sharpness", [(9, False), (2, False)]),
        ("SharpnessIncreasing", [(9, True), (9, False)]),
        ("Rotate", [(9, False), (6.3, True), (10, True)]),
        ("ShearX", [(9, False), (5.5, True)]),
        ("ShearY", [(9, True), (4, False)]),
        ("TranslateXRel", [(9, False), (3.7, True)]),
        ("TranslateYRel", [(9, True), (5, False)]),
    ]
    for name, settings in plan:
        for magnitude, negate in settings:
            args = level_arg(name, magnitude, negate)
            out = aa.NAME_TO_OP[name](img, *args, **kwargs)
            arg = args[0] if args else None
            if name == "TranslateXRel":
                arg = arg * w  # the pixels timm's translate_x_rel computes
            elif name == "TranslateYRel":
                arg = arg * h
            rand.append(
                dict(
                    name=f"{name}(m={magnitude}, negate={negate})",
                    op=name,
                    magnitude=float(magnitude),
                    negate=negate,
                    arg=None if arg is None else float(arg),
                    out=b64(out),
                )
            )

    # TrivialAugmentWide: torchvision's own tables and op application on the PIL image.
    ta_model = tva.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR, fill=list(FILL))
    space = ta_model._augmentation_space(31)
    ta_bins = {
        name: [float(v) for v in mags.tolist()]
        for name, (mags, _signed) in space.items()
        if mags.ndim > 0
    }
    ta = []
    ta_plan = [
        ("Identity", 0, False),
        ("ShearX", 20, True),
        ("ShearY", 11, False),
        ("TranslateX", 7, False),
        ("TranslateY", 13, True),
        ("Rotate", 20, False),  # 90 degrees on a non-square image: a real affine
        ("Rotate", 30, True),
        ("Rotate", 9, False),
        ("Brightness", 25, False),
        ("Color", 17, True),
        ("Contrast", 28, False),
        ("Sharpness", 30, False),
        ("Sharpness", 12, True),
        ("Posterize", 24, False),
        ("Solarize", 11, False),
        ("AutoContrast", 0, False),
        ("Equalize", 0, False),
    ]
    for name, b, negate in ta_plan:
        mags, signed = space[name]
        magnitude = float(mags[b].item()) if mags.ndim > 0 else 0.0
        if signed and negate:
            magnitude = -magnitude
        out = tva._apply_op(img, name, magnitude, interpolation=InterpolationMode.BILINEAR, fill=list(FILL))
        ta.append(
            dict(
                name=f"TA {name}(bin={b}, negate={negate})",
                op=name,
                bin=b,
                negate=negate,
                magnitude=magnitude,
                out=b64(out),
            )
        )

    # Equalize leaves images under 256 pixels alone (its step is 0): a larger 24x16 crop.
    big = Image.open(SRC).convert("RGB").crop((4, 8, 28, 24))
    equalize = dict(width=big.size[0], height=big.size[1], image=b64(big), out=b64(aa.equalize(big)))

    fixture = dict(
        generator="tools/gen_auto_augment_fixtures.py",
        versions=dict(
            timm=timm.__version__,
            pillow=PIL.__version__,
            torchvision=torchvision.__version__,
            torch=torch.__version__,
        ),
        source=os.path.relpath(SRC, "/work/shared/data") if SRC.startswith("/work/shared/data") else SRC,
        crop=[8, 10, 24, 22],
        width=w,
        height=h,
        fill=list(FILL),
        image=b64(img),
        rand=rand,
        ta=ta,
        ta_bins=ta_bins,
        equalize=equalize,
    )
    # One case (or table) a line: readable diffs, small file.
    lines = []
    for key, value in fixture.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            body = ",\n".join("  " + json.dumps(v) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{body}\n ]")
        elif isinstance(value, dict) and key == "ta_bins":
            body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items())
            lines.append(f" {json.dumps(key)}: {{\n{body}\n }}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    with open(OUT, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main()
