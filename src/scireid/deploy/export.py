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
from ..io_utils import atomic_write
from .backend import TorchBackend, make_fingerprint

log = logging.getLogger("scireid")


class _TestForward(torch.nn.Module):
    def __init__(self, model, half: bool):
        super().__init__()
        self.model = model.half() if half else model
        self.half = half

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.half() if self.half else images
        f = self.model.forward(x)["feat"].float()
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def export_onnx(run: str | Path, out: str | Path, opset: int = 17, dynamic_batch: bool = True, fp16: bool = False,
                static_batch: int | None = None) -> dict[str, Any]:
    """``static_batch`` N fixes the graph's batch at N (else dynamic, unless ``dynamic_batch=False``: 2)."""
    import onnx

    out = Path(out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: expected a file name ending in .onnx")
    be = TorchBackend(run, device="cpu")
    model = be.embedder.model.eval().float()
    pre = be.pre
    wrapper = _TestForward(model, fp16).eval()
    if static_batch is not None:
        dynamic_batch = False
    x = torch.randn(static_batch or 2, 3, pre.height, pre.width)
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
                                                  "colour_order": pre.colour_order}),
                "scireid_source": str(be.ckpt), "scireid_precision": "fp16" if fp16 else "fp32"}
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
    return {"onnx": str(out), "fingerprint": fingerprint, "dim": model.feat_dim, "preprocess": pre.describe()}


def check_parity(run: str | Path, onnx_path: str | Path, images: list[str] | None = None, n_random: int = 8
                 ) -> dict[str, Any]:
    """Run PyTorch (fp32) and onnxruntime on the same inputs: max |diff| and min cosine of the features."""
    from .backend import OnnxBackend
    from .embed import load_image
    from .inputs import Item

    be = TorchBackend(run, device="cpu")
    ob = OnnxBackend(onnx_path)
    if images:
        x = np.stack([be.pre(load_image(Item(p))) for p in images])
    else:
        x = np.random.default_rng(0).normal(size=(n_random, 3, be.pre.height, be.pre.width)).astype(np.float32)
    a, b = be(x), ob(x)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"images": len(x), "max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(cos.min())}
