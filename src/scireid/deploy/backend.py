"""One interface over a trained run (PyTorch) and an exported ``.onnx`` file (onnxruntime).

Both share one preprocessing function (PIL bilinear resize, as CLIP-ReID's test transform, then
mean/std), and both carry the model fingerprint: a hash of the weights plus the preprocessing, so
features of different models are never mixed silently.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import UserError


class FingerprintMismatch(UserError):
    pass


@dataclass(frozen=True)
class Preprocess:
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    colour_order: str = "RGB"

    def __call__(self, img: Image.Image) -> np.ndarray:
        """(3, H, W) float32, normalised. ``opencv-linear``: a graph made for a tool that resizes with OpenCV
        (``scireid export --for boxmot``) is fed as that tool feeds it."""
        rgb = img.convert("RGB")
        if self.interpolation == "opencv-linear":
            import cv2
            x = cv2.resize(np.asarray(rgb), (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        else:
            x = np.asarray(rgb.resize((self.width, self.height), Image.BILINEAR))
        x = x.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def describe(self) -> str:
        return (f"{self.height}x{self.width} {self.interpolation} {self.colour_order} mean={list(self.mean)} "
                f"std={list(self.std)}")


def graph_input_preprocess(g: dict) -> Preprocess:
    """What an export's ``scireid_graph_input`` metadata asks for: its size and mean/std, resized the consumer's
    way (OpenCV INTER_LINEAR for a graph fitted to undo it, else PIL bilinear)."""
    interp = "opencv-linear" if g.get("consumer_resize") == "opencv" else "bilinear"
    return Preprocess(g["height"], g["width"], tuple(g["mean"]), tuple(g["std"]), interp, "RGB")


def file_hash(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def make_fingerprint(weights_hash: str, pre: Preprocess, precision: str = "fp32") -> str:
    return f"{weights_hash}/{hashlib.sha256(pre.describe().encode()).hexdigest()[:8]}" + (
        "" if precision == "fp32" else f"/{precision}")


def check_fingerprint(have: str, want: str, what: str) -> None:
    if have != want:
        raise FingerprintMismatch(f"{what} was made with model {want}, but this model is {have}; "
                                  f"features of different models cannot be mixed (re-embed with the same model)")


class TorchBackend:
    def __init__(self, source: str | Path, device: str | None = None):
        import torch

        from ..engine.evaluation import resolve_checkpoint
        from ..inference import load
        self.source = str(source)
        self.ckpt = resolve_checkpoint(source)
        self.embedder = load(source, device=device)
        m = self.embedder.model
        t = self.embedder.transform.transforms[-1]  # Normalize
        self.pre = Preprocess(m.spec.height, m.spec.width, tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std))
        self.dim = self.embedder.dim
        self.fingerprint = make_fingerprint(file_hash(self.ckpt), self.pre)
        self._torch = torch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        from ..engine.features import autocast
        with torch.no_grad():
            t = torch.from_numpy(x).to(self.embedder.device)
            with autocast(self.embedder.device):
                return self.embedder.model.embed_tensor(t).float().cpu().numpy()


class OnnxBackend:
    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort
        self.source = str(path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "scireid_fingerprint" not in meta:
            raise UserError(f"{path}: an ONNX model without scireid metadata; export it with 'scireid export'")
        pre = json.loads(meta["scireid_preprocess"])
        self.pre = Preprocess(pre["height"], pre["width"], tuple(pre["mean"]), tuple(pre["std"]), pre["interpolation"],
                              pre["colour_order"])
        self.fingerprint = meta["scireid_fingerprint"]
        self.dim = int(meta["scireid_dim"])
        if "scireid_graph_input" in meta:  # a graph made for another tool's input: feed it what it expects
            self.pre = graph_input_preprocess(json.loads(meta["scireid_graph_input"]))

        shape = self.session.get_inputs()[0].shape
        self.static_batch = shape[0] if isinstance(shape[0], int) else None  # a graph exported with a fixed batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        n = self.static_batch
        if n is None or len(x) == n:
            return self.session.run(["output"], {"images": x})[0].astype(np.float32)
        out = []  # a fixed-batch graph: run it in slices of its size, the last one padded
        for s in range(0, len(x), n):
            part = x[s:s + n]
            pad = np.concatenate([part, np.zeros((n - len(part), *part.shape[1:]), np.float32)]) if len(part) < n else part
            out.append(self.session.run(["output"], {"images": pad})[0][:len(part)])
        return np.concatenate(out).astype(np.float32)


def open_backend(model: str | Path, device: str | None = None):
    """A run directory or checkpoint (PyTorch), or an ``.onnx`` file (onnxruntime)."""
    if str(model).endswith(".onnx"):
        if not Path(model).is_file():
            raise UserError(f"{model}: no such ONNX file")
        return OnnxBackend(model)
    return TorchBackend(model, device)


def embed_arrays(backend, batch: Sequence[np.ndarray], flip: bool = False) -> np.ndarray:
    x = np.stack(batch)
    f = backend(x)
    if flip:
        f = f + backend(np.ascontiguousarray(x[..., ::-1]))
        f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
    f = np.asarray(f, dtype=np.float32)
    bad = ~np.isfinite(f).all(axis=1)
    if bad.any():  # a diverged run: never write (or search with) NaN features
        from ..errors import UserError
        raise UserError(f"the model {getattr(backend, 'source', '')} gives non-finite features for {int(bad.sum())} of "
                        f"{len(f)} images (its weights hold NaN or inf: did training diverge?); nothing was written")
    return f
