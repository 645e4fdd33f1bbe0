"""Writes the fuzzers' seed inputs into fuzz/corpus/<target>/ (the fuzzers add what they find).

    python tools/fuzz_seeds.py SKNET_BINARY

Needs numpy, safetensors and pillow. The PyTorch seeds are written in torch.save's two formats
(the zip archive and the legacy pickle stream) without torch itself: the pickles name torch's
rebuild functions and storage classes exactly as torch.save does, which is all a reader sees.
"""

import collections
import io
import json
import pathlib
import pickle
import subprocess
import sys
import tempfile
import types
import zipfile

import numpy as np
from PIL import Image
from safetensors.numpy import save as save_safetensors

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


# --- torch.save's formats, without torch -------------------------------------------------

def _fake_torch():
    """Modules and classes pickled under torch's names, so that the pickle opcodes are torch's."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch._utils = utils

    def _rebuild_tensor_v2(*args):
        raise NotImplementedError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storages = {}
    for name in ["FloatStorage", "HalfStorage", "DoubleStorage", "BFloat16Storage", "LongStorage"]:
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
        storages[name] = cls
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return _rebuild_tensor_v2, storages


REBUILD, STORAGES = _fake_torch()
STORAGE_OF = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("int64"): "LongStorage",
}


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage):
        self.storage = storage

    def __reduce_ex__(self, protocol):
        a = self.storage.array
        stride = tuple(s // a.itemsize for s in a.strides)
        return (REBUILD, (self.storage, 0, a.shape, stride, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            cls = STORAGES[STORAGE_OF[obj.array.dtype]]
            if self.legacy:
                return ("storage", cls, obj.key, "cpu", obj.array.size, None)
            return ("storage", cls, obj.key, "cpu", obj.array.size)
        return None


def _state_dict(tensors):
    storages = [_Storage(str(i), np.ascontiguousarray(a)) for i, a in enumerate(tensors.values())]
    state = collections.OrderedDict((k, _Tensor(s)) for k, s in zip(tensors, storages))
    return state, storages


def pth_zip(tensors, nest=None, compression=zipfile.ZIP_STORED):
    state, storages = _state_dict(tensors)
    obj = {nest: state} if nest else state
    pkl = io.BytesIO()
    _Pickler(pkl, legacy=False).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        z.writestr("archive/data.pkl", pkl.getvalue())
        z.writestr("archive/byteorder", "little")
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.array.tobytes())
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def pth_legacy(tensors):
    state, storages = _state_dict(tensors)
    out = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, out, protocol=2)
    pickle.dump(1001, out, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, out, protocol=2)
    _Pickler(out, legacy=True).dump(state)
    pickle.dump([s.key for s in storages], out, protocol=2)
    for s in storages:
        out.write(np.int64(s.array.size).tobytes())
        out.write(s.array.tobytes())
    return out.getvalue()


# --- seeds ------------------------------------------------------------------------------

def sknet(binary, *args):
    done = subprocess.run([binary, *args], capture_output=True)
    if done.returncode != 0:
        sys.exit(f"sknet {' '.join(args)}: {done.stderr.decode()}")
    return done.stdout


def checkpoint_seeds(binary):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        config = json.loads(sknet(binary, "config", "--arch", "sknet-tiny"))
        config.update(num_classes=2, layers=[1, 1], planes=[4, 8], strides=[1, 2])
        config["stem"]["width"] = 4
        config["sk"]["attn_width"]["divisor"] = 4
        (tmp / "tiny.json").write_text(json.dumps(config))
        data = tmp / "data"
        for label in ["airplane", "cat"]:
            (data / label).mkdir(parents=True)
            for i in range(4):
                src = sorted((ROOT / "data" / "cifar10-mini" / label).iterdir())[i]
                (data / label / src.name).write_bytes(src.read_bytes())
        sknet(binary, "train", "--data", str(data), "--config", str(tmp / "tiny.json"),
              "--epochs", "1", "--batch", "2", "--val-per-class", "1",
              "--output", str(tmp / "run"))
        for name in ["best.safetensors", "checkpoint.safetensors"]:
            write("checkpoint", f"sknet_{name}", (tmp / "run" / name).read_bytes())
        from safetensors.numpy import load_file
        weights = load_file(str(tmp / "run" / "best.safetensors"))
    small = dict([(k, v) for k, v in weights.items() if v.dtype == np.float32][:6])
    write("checkpoint", "timm_keys.pth", pth_zip(weights))
    write("checkpoint", "nested_state_dict.pth", pth_zip(small, nest="state_dict"))
    write("checkpoint", "legacy.pth", pth_legacy(small))
    mixed = {
        "conv1.weight": np.arange(24, dtype=np.float16).reshape(2, 3, 2, 2),
        "fc.weight": np.ones((2, 3), dtype=np.float64),
        "bn1.num_batches_tracked": np.zeros((), dtype=np.int64),
    }
    write("checkpoint", "dtypes.pth", pth_zip(mixed))
    # 32 MiB of zeros in a 32 KiB file: a deflated entry expanding far beyond the file.
    bomb = {"fc.weight": np.zeros((2048, 4096), dtype=np.float32)}
    write("checkpoint", "zip_bomb.pth", pth_zip(bomb, compression=zipfile.ZIP_DEFLATED))
    meta = {"sknet.classes": json.dumps(["a", "b"]),
            "sknet.preprocess": json.dumps({"size": [8, 8], "crop_pct": 1.0,
                                            "mean": [0.5] * 3, "std": [0.25] * 3,
                                            "interpolation": "bilinear"})}
    write("checkpoint", "dtypes.safetensors", save_safetensors(mixed, metadata=meta))
    write("checkpoint", "empty_metadata.safetensors",
          save_safetensors({"fc.bias": np.zeros(2, np.float32)}, metadata={}))


def config_seeds(binary):
    archs = json.loads(sknet(binary, "archs", "--json"))
    for row in archs:
        name = row["name"]
        write("config", f"{name}.json", b"\x00" + sknet(binary, "config", "--arch", name))
        write("config", f"{name}.toml", b"\x01" + sknet(binary, "config", "--arch", name, "--toml"))
    write("config", "shipped_cifar10.cfg", b"\x02" + (ROOT / "models" / "cifar10-config.json").read_bytes())


def image_seeds():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), "RGB")
    forms = {
        "rgb.png": (rgb, "PNG", {}),
        "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "gray16.png": (rgb.convert("I;16"), "PNG", {}),
        "palette.png": (rgb.convert("P"), "PNG", {}),
        "baseline.jpg": (rgb, "JPEG", {"quality": 80}),
        "progressive.jpg": (rgb, "JPEG", {"progressive": True}),
        "gray.jpg": (rgb.convert("L"), "JPEG", {}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {}),
        "still.gif": (rgb.convert("P"), "GIF", {}),
        "rgb.bmp": (rgb, "BMP", {}),
        "rgb.tiff": (rgb, "TIFF", {}),
        "lzw.tiff": (rgb, "TIFF", {"compression": "tiff_lzw"}),
        "lossy.webp": (rgb, "WEBP", {"quality": 50}),
        "lossless.webp": (rgb, "WEBP", {"lossless": True}),
    }
    for name, (img, fmt, options) in forms.items():
        out = io.BytesIO()
        img.save(out, fmt, **options)
        write("image", name, out.getvalue())
    frames = [rgb.convert("P"), rgb.transpose(Image.FLIP_LEFT_RIGHT).convert("P")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=10)
    write("image", "animated.gif", out.getvalue())
    write("image", "cifar.jpg", (ROOT / "tests" / "fixtures" / "preprocess_cifar.jpg").read_bytes())


if __name__ == "__main__":
    binary = sys.argv[1]
    checkpoint_seeds(binary)
    config_seeds(binary)
    image_seeds()
