"""``scireid export``: the whole test-time forward as ONNX, with a parity check against PyTorch.

Contract (what tracker ReID backends expect): input ``images``, N x 3 x H x W float32, RGB,
normalised with the recorded mean/std after a bilinear resize to H x W; output ``output``, N x D,
L2-normalised. SIM runs inside with its frozen prototypes (no label input). The preprocessing
constants and the model fingerprint are stored in the ONNX metadata.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..durable import atomic_write
from .backend import TorchBackend, graph_input_preprocess, make_fingerprint

log = logging.getLogger("scireid")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# what a consumer feeds, by name: BoxMOT normalises every crop with ImageNet mean/std (its base_backend.py) after
# resizing it with OpenCV INTER_LINEAR to the graph's input size (its core/preprocessing.py)
CONSUMERS = {"boxmot": {"input_norm": "imagenet", "consumer_resize": "opencv"}}
# opsets the test-time graph exports at: 14 brings the operators it uses; 20 is the newest the TorchScript exporter writes
OPSETS = range(14, 21)


# the exact preprocessing, written into the metadata for readers who never import scireid (README: ONNX contract)
PIL_STEPS = ("decode to 8-bit RGB; Pillow Image.resize((W, H), Image.BILINEAR) on the uint8 image (triangle filter "
             "widened by the shrink factor: antialiased), result uint8; float32 / 255; (x - mean) / std per channel; "
             "HWC -> CHW")
OPENCV_STEPS = ("decode to 8-bit; cv2.resize(crop, (W, H), interpolation=cv2.INTER_LINEAR) on the uint8 image, "
                "result uint8; BGR -> RGB; float32 / 255; (x - mean) / std per channel; HWC -> CHW")


def consumer_resize_of(graph_input: dict) -> str:
    """How the graph's consumer brings crops to its input size: recorded for a graph that resizes inside, else
    OpenCV INTER_LINEAR (BoxMOT's; the normalisation is the only other thing such a graph adapts)."""
    return graph_input.get("consumer_resize") or "opencv"


def consumer_input_size(height: int, width: int) -> tuple[int, int]:
    """The input size ``--for`` picks: at least 512 px tall (crops up to that size reach the graph by OpenCV's
    upsample, which the fitted inside resize undoes best), at least twice the model's, the model's aspect."""
    h = max(512, 2 * height)
    return h, round(h * width / height)


class _TestForward(torch.nn.Module):
    """The test-time forward, behind an optional input adapter for what another tool feeds the graph.

    ``in_mean``/``in_std``: the normalisation the consumer applied; a per-channel multiply-add turns it
    into ours. ``in_size``: the graph takes that size and shrinks it to the model's with PIL's own
    bilinear (antialiased) weights, as scireid's preprocessing would have (``consumer_resize`` ``pil``), or with
    weights fitted to undo the consumer's OpenCV resize first (``opencv``; see ``resample.py``).
    """

    def __init__(self, model, half: bool, mean=None, std=None, in_mean=None, in_std=None, in_size=None,
                 out_size=None, consumer_resize: str = "pil"):
        super().__init__()
        self.model = model.half() if half else model
        self.half = half
        self.adapt = in_mean is not None
        if self.adapt:
            a = torch.tensor(in_std) / torch.tensor(std)
            b = (torch.tensor(in_mean) - torch.tensor(mean)) / torch.tensor(std)
            self.register_buffer("scale", a.view(1, 3, 1, 1))
            self.register_buffer("shift", b.view(1, 3, 1, 1))
        self.resize = in_size is not None and tuple(in_size) != tuple(out_size)
        if self.resize:
            from .resample import inside_resize
            ah, aw = inside_resize(consumer_resize, tuple(in_size), tuple(out_size))
            self.register_buffer("ah", torch.tensor(ah, dtype=torch.float32))
            self.register_buffer("aw", torch.tensor(aw, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.adapt:
            x = x * self.scale + self.shift
        if self.resize:  # mean/std are per channel, so normalising before or after a linear resize is the same
            x = torch.matmul(torch.matmul(self.ah, x), self.aw.t())
        x = x.half() if self.half else x
        f = self.model.forward(x)["feat"].float()
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def export_onnx(run: str | Path, out: str | Path, opset: int = 17, dynamic_batch: bool = True, fp16: bool = False,
                static_batch: int | None = None, input_norm: str = "model",
                input_size: tuple[int, int] | None = None, consumer_resize: str = "pil") -> dict[str, Any]:
    """``static_batch`` N fixes the graph's batch at N (else dynamic, unless ``dynamic_batch=False``: 2).

    ``input_norm``: ``model`` (the graph takes our mean/std-normalised RGB) or ``imagenet`` (ImageNet-
    normalised RGB, e.g. BoxMOT's crops; ours is applied inside). ``input_size`` (H, W): the graph takes
    that size and resizes inside to the model's. ``consumer_resize``: how the consumer brought its crops to that
    size: ``pil`` (the inside resize is PIL's bilinear) or ``opencv`` (INTER_LINEAR; the inside resize is fitted
    to undo it, see ``resample.py``; without ``input_size``, ``consumer_input_size``).
    """
    if input_norm not in ("model", "imagenet"):
        raise UserError(f"--input-norm {input_norm}: expected model or imagenet")
    if consumer_resize not in ("pil", "opencv"):
        raise UserError(f"--consumer-resize {consumer_resize}: expected pil or opencv")
    import onnx

    out = Path(out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: expected a file name ending in .onnx")
    be = TorchBackend(run, device="cpu")
    model = be.embedder.model.eval().float()
    pre = be.pre
    in_mean, in_std = (IMAGENET_MEAN, IMAGENET_STD) if input_norm == "imagenet" else (pre.mean, pre.std)
    if input_size is None and consumer_resize == "opencv":  # the fitted shrink needs room (consumer_input_size)
        input_size = consumer_input_size(pre.height, pre.width)
    in_h, in_w = input_size or (pre.height, pre.width)
    if in_h < pre.height or in_w < pre.width or max(in_h, in_w) > 4096:
        raise UserError(f"--input-size {in_h}x{in_w}: expected at least the model's {pre.height}x{pre.width} (the graph "
                        f"shrinks its input to that) and at most 4096")
    resized = (in_h, in_w) != (pre.height, pre.width)
    if consumer_resize == "opencv" and (in_h < pre.height or in_w < pre.width):
        raise UserError(f"--input-size {in_h}x{in_w}: a graph that undoes OpenCV's resize takes at least the model's "
                        f"{pre.height}x{pre.width} (512x256 or more works best)")
    adapt = input_norm != "model"
    wrapper = _TestForward(model, fp16, pre.mean, pre.std, in_mean if adapt else None, in_std if adapt else None,
                           (in_h, in_w), (pre.height, pre.width), consumer_resize).eval()
    graph_input = {"height": in_h, "width": in_w, "mean": list(in_mean), "std": list(in_std), "norm": input_norm,
                   "resize_inside": [pre.height, pre.width] if resized else None,
                   "consumer_resize": consumer_resize if resized else None}
    graph_input["steps"] = (OPENCV_STEPS if (adapt or resized) and consumer_resize_of(graph_input) == "opencv"
                            else PIL_STEPS)  # as consumer_input feeds it
    if static_batch is not None:
        dynamic_batch = False
    x = torch.randn(static_batch or 2, 3, in_h, in_w)
    fingerprint = make_fingerprint(be.fingerprint.split("/")[0], pre, "fp16" if fp16 else "fp32")

    def write(tmp: str) -> None:
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention's fused kernel has no ONNX form
        try:
            _export(tmp)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)
        _add_metadata(tmp)

    def _export(tmp: str) -> None:
        with torch.no_grad():
            torch.onnx.export(wrapper, (x,), tmp, input_names=["images"], output_names=["output"], opset_version=opset,
                              dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
                              dynamo=False)

    def _add_metadata(tmp: str) -> None:
        m = onnx.load(tmp)
        meta = {"scireid_fingerprint": fingerprint, "scireid_dim": str(model.feat_dim),
                "scireid_preprocess": json.dumps({"height": pre.height, "width": pre.width, "mean": list(pre.mean),
                                                  "std": list(pre.std), "interpolation": pre.interpolation,
                                                  "colour_order": pre.colour_order, "steps": PIL_STEPS}),
                "scireid_source": str(be.ckpt), "scireid_precision": "fp16" if fp16 else "fp32",
                "scireid_graph_input": json.dumps(graph_input)}
        for k, v in meta.items():
            p = m.metadata_props.add()
            p.key, p.value = k, v
        onnx.checker.check_model(m)
        onnx.save(m, tmp)
    try:
        atomic_write(out, write)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"ONNX export of {run} failed at opset {opset}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}") from None
    log.info("exported %s -> %s (%s, fingerprint %s)", be.ckpt, out, "fp16" if fp16 else "fp32", fingerprint)
    shown = pre.describe() if not adapt and (in_h, in_w) == (pre.height, pre.width) else (
        f"{in_h}x{in_w} RGB mean={list(in_mean)} std={list(in_std)}" +
        (f" (resized to {pre.height}x{pre.width} inside, " +
         ("PIL bilinear)" if consumer_resize == "pil" else "undoing OpenCV INTER_LINEAR)") if resized else ""))
    return {"onnx": str(out), "fingerprint": fingerprint, "dim": model.feat_dim, "preprocess": shown,
            "graph_input": graph_input}


def consumer_input(img, graph_input: dict) -> np.ndarray:
    """(3, H, W) float32 prepared as the graph's consumer prepares a crop: the uint8 image resized to the graph's
    input size (OpenCV INTER_LINEAR as BoxMOT does, or PIL bilinear where the consumer resize is ``pil``), then /255
    and the graph's input mean/std (BoxMOT's ``prepare_crop_batch``)."""
    return graph_input_preprocess({**graph_input, "consumer_resize": consumer_resize_of(graph_input)})(img)


def check_parity(run: str | Path, onnx_path: str | Path, images: list[str] | None = None, n_random: int = 8
                 ) -> dict[str, Any]:
    """PyTorch (fp32) against onnxruntime: max |diff|, min and mean cosine of the features.

    For a graph made for another tool's input (``--input-norm``/``--input-size``) with ``images``, PyTorch
    sees each image through scireid's own preprocessing and the graph sees it as that tool prepares it
    (``consumer_input``): the comparison a tracker's user cares about.
    """
    from .backend import OnnxBackend
    from .embed import load_image
    from .inputs import Item

    be = TorchBackend(run, device="cpu")
    ob = OnnxBackend(onnx_path)
    g = json.loads(ob.session.get_modelmeta().custom_metadata_map.get("scireid_graph_input", "null") or "null")
    consumer = g is not None and (g.get("norm") != "model" or g.get("resize_inside"))
    if images:
        pil = [load_image(Item(p)) for p in images]
        a = be(np.stack([be.pre(im) for im in pil]))
        b = ob(np.stack([consumer_input(im, g) for im in pil]) if consumer else np.stack([be.pre(im) for im in pil]))
    else:
        x = np.random.default_rng(0).normal(size=(n_random, 3, ob.pre.height, ob.pre.width)).astype(np.float32)
        if consumer:  # the same adapter in PyTorch: ImageNet -> ours, PIL-weight resize
            w = _TestForward(be.embedder.model.eval().float(), False, be.pre.mean, be.pre.std, g["mean"], g["std"],
                             (g["height"], g["width"]), (be.pre.height, be.pre.width),
                             g.get("consumer_resize") or "pil").eval()
            with torch.no_grad():
                a = w(torch.from_numpy(x)).numpy()
        else:
            a = be(x)
        b = ob(x)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"images": len(a), "max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()), "consumer_preprocessing": bool(consumer and images),
            "consumer_resize": ({"opencv": "OpenCV INTER_LINEAR", "pil": "PIL bilinear"}[consumer_resize_of(g)]
                                if consumer else None)}
