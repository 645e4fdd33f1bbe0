"""The Python baseline for tools/load_test.py: a classifier served the usual way, FastAPI on
uvicorn with a PyTorch model, one image per request, no batching.

    python tools/baseline_server.py --weights W.safetensors --arch skresnet18 --port 8081
    python tools/baseline_server.py --weights models/cifar10.safetensors --port 8082

The network is timm's for timm architectures, else the paper-design PyTorch model of
tools/paper_sknet.py built from the config stored in the sknet file. The transform is timm's eval
transform with the file's preprocessing (sknet's own files) or ImageNet's.
"""
import argparse
import io
import json
import os
import sys

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision import transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build(weights, arch):
    with safe_open(weights, "pt") as f:
        meta = f.metadata() or {}
    state = {k: v for k, v in load_file(weights).items()}
    if "sknet.config" in meta and arch is None:
        from paper_sknet import PaperSKNet

        model = PaperSKNet(json.loads(meta["sknet.config"]))
    else:
        import timm

        model = timm.create_model(arch, pretrained=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{weights}: missing {missing}, unexpected {unexpected}")
    pre = json.loads(meta.get("sknet.preprocess", "null")) or {
        "size": [224, 224],
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    classes = json.loads(meta.get("sknet.classes", "null"))
    size = pre["size"]
    interpolation = transforms.InterpolationMode(pre["interpolation"])
    transform = transforms.Compose([
        transforms.Resize(int(size[0] / pre["crop_pct"]), interpolation=interpolation),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(pre["mean"], pre["std"]),
    ])
    return model.eval(), transform, classes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--arch", help="a timm architecture (default: the file's sknet config)")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, transform, classes = build(args.weights, args.arch)
    app = FastAPI()

    def infer(body, topk):
        x = transform(Image.open(io.BytesIO(body)).convert("RGB")).unsqueeze(0)
        with torch.inference_mode():
            probs = model(x).softmax(1)[0]
        p, i = probs.topk(topk)
        return [
            {"index": int(j), "label": classes[j] if classes else str(int(j)), "probability": float(q)}
            for q, j in zip(p, i)
        ]

    @app.post("/v1/predict")
    async def predict(request: Request, topk: int = 5):
        body = await request.body()
        try:
            top = await run_in_threadpool(infer, body, topk)
        except Exception as e:  # noqa: BLE001 (a bad image is the client's error)
            return JSONResponse({"error": str(e)}, status_code=400)
        return {"path": "body", "top": top}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    print(f"listening on http://127.0.0.1:{args.port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
