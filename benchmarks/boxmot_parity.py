"""scireid's exported model inside BoxMOT: are BoxMOT's features scireid's features?

Run with BoxMOT installed (``pip install -e ".[track]"``):

    python benchmarks/boxmot_parity.py RUN DATA_ROOT --out /tmp/boxmot_parity

For each export (default graph; ImageNet input; PIL-weight shrinks from 128x64 and 512x256; and ``--for boxmot``'s
default, a 512x256 input whose shrink is fitted to undo OpenCV's resize) it loads the
``.onnx`` through BoxMOT's own ReID backend (``boxmot.reid.core.ReID``, what its trackers build from
``reid_weights``), feeds it the crops as a tracker does (a BGR frame and xyxy boxes), and compares
with ``scireid.load(RUN).embed`` on the same crops:

- the demo's test images as they are (128x64 files), and the same people rescaled to detector-crop
  heights 80-400 px (PIL bicubic, aspect kept);
- retrieval (general / cloth-changing R-1 and mAP) on the demo's test protocol with BoxMOT's features on
  both sides against scireid's own, on the test set as stored and rescaled to ``--retrieval-height`` px;
- OpenCV ``INTER_LINEAR`` preprocessing by hand into the default graph, the figure a user who follows
  the contract with OpenCV instead of PIL gets.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

HEIGHTS = (80, 128, 200, 300, 400)


def boxmot_features(reid, crops: list[Image.Image]) -> np.ndarray:
    """Each crop pasted alone in a BGR frame, boxed exactly: what a tracker hands BoxMOT's ReID backend."""
    out = []
    for im in crops:
        rgb = np.asarray(im.convert("RGB"))
        frame = np.ascontiguousarray(rgb[..., ::-1])  # BoxMOT works on BGR frames (cv2)
        h, w = rgb.shape[:2]
        out.append(reid.get_features(np.array([[0, 0, w, h]], np.float32), frame)[0])
    return np.stack(out)


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"mean": float(c.mean()), "min": float(c.min())}


def opencv_contract(onnx_path: Path, sizes: dict, ours: dict) -> dict:
    """The README contract followed with OpenCV INTER_LINEAR instead of PIL, into the plain export."""
    from dataclasses import replace

    from scireid.deploy.backend import OnnxBackend
    ob = OnnxBackend(onnx_path)
    pre = replace(ob.pre, interpolation="opencv-linear")
    return {k: cosines(ob(np.stack([pre(im) for im in v])), ours[k]) for k, v in sizes.items()}


def markdown(res: dict) -> str:
    """The tables BENCHMARKS.md shows: cosine mean / min per crop size, retrieval against scireid's own."""
    exports = res["exports"]
    sizes = list(next(iter(exports.values()))["cosine_vs_scireid"])
    lines = ["| export | " + " | ".join(sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    rows = {k: v["cosine_vs_scireid"] for k, v in exports.items()}
    if "opencv_contract_cosine" in res:
        rows["default graph, contract followed with OpenCV INTER_LINEAR"] = res["opencv_contract_cosine"]
    for name, c in rows.items():
        lines.append(f"| `{name}` | " + " | ".join(f"{c[s]['mean']:.4f} / {c[s]['min']:.4f}" for s in sizes) + " |")
    h = res["retrieval_height"]
    lines += ["", f"| features | as stored: general R-1 / mAP | cc R-1 / mAP | rescaled to {h} px: general R-1 / mAP "
              "| cc R-1 / mAP | ms / crop |", "|---|---|---|---|---|---|"]

    def cells(r):
        return " | ".join(f"{r[p]['R-1']:.2f} / {r[p]['mAP']:.2f}" for p in ("general", "cloth-changing"))
    lines.append(f"| scireid's own | {cells(res['scireid_retrieval'])} | {cells(res['scireid_retrieval_rescaled'])} | |")
    for name, v in exports.items():
        lines.append(f"| BoxMOT, `{name}` | {cells(v['retrieval'])} | {cells(v['retrieval_rescaled'])} "
                     f"| {v.get('ms_per_crop', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("data", help="a synthetic set (scireid synth) with test/ and query/")
    ap.add_argument("--out", default="boxmot_parity")
    ap.add_argument("--images", type=int, default=120, help="crops per size for the cosine figures")
    ap.add_argument("--retrieval-height", type=int, default=300,
                    help="retrieval is also measured on the whole test set rescaled to this height (PIL bicubic)")
    ap.add_argument("--only", nargs="*", help="exports to run, by their names below (default: all)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch
    from boxmot.reid.core import ReID

    import scireid
    from scireid.data.datasets import build_dataset
    from scireid.deploy.export import export_onnx
    from scireid.eval.protocols import run_protocols

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    emb = scireid.load(a.run, device="cpu")
    ds = build_dataset("synthetic", Path(a.data))
    test = [Image.open(r.path).convert("RGB") for r in ds.test]
    sample = test[:: max(1, len(test) // a.images)][: a.images]
    sizes = {"as stored (128x64)": sample}
    for h in HEIGHTS:
        sizes[f"{h} px tall"] = [im.resize((max(1, round(im.width * h / im.height)), h), Image.BICUBIC) for im in sample]
    ours = {k: emb.embed(v).numpy() for k, v in sizes.items()}
    ours_all = emb.embed(test).numpy()
    res: dict = {"run": a.run, "images_per_size": len(sample), "boxmot": __import__("boxmot").__version__,
                 "date": time.strftime("%Y-%m-%d"), "exports": {}}
    ref = run_protocols(ds, ours_all)
    res["scireid_retrieval"] = {k: {m: ref[k][m] for m in ("R-1", "mAP")} for k in ref}
    exports = {"default graph": {}, "--input-norm imagenet": {"input_norm": "imagenet"},
               "--for boxmot --input-size 128x64 --consumer-resize pil":
                   {"input_norm": "imagenet", "input_size": (128, 64)},
               "--for boxmot --input-size 512x256 --consumer-resize pil":
                   {"input_norm": "imagenet", "input_size": (512, 256)},
               "--for boxmot --input-size 256x128": {"input_norm": "imagenet", "input_size": (256, 128),
                                                     "consumer_resize": "opencv"},
               "--for boxmot (512x256, OpenCV undone)": {"input_norm": "imagenet", "input_size": (512, 256),
                                                        "consumer_resize": "opencv"}}
    if a.only:
        exports = {k: v for k, v in exports.items() if k in a.only}
    big = [im.resize((max(1, round(im.width * a.retrieval_height / im.height)), a.retrieval_height), Image.BICUBIC)
           for im in test]
    ours_big = emb.embed(big).numpy()
    ref_big = run_protocols(ds, ours_big)
    res["scireid_retrieval_rescaled"] = {k: {m: ref_big[k][m] for m in ("R-1", "mAP")} for k in ref_big}
    res["retrieval_height"] = a.retrieval_height
    for name, kw in exports.items():
        path = out / (name.replace(" ", "_").replace("-", "").replace("/", "") + ".onnx")
        export_onnx(a.run, path, **kw)
        reid = ReID(weights=path, device=torch.device("cpu"), half=False).model
        row = {"cosine_vs_scireid": {k: cosines(boxmot_features(reid, v), ours[k]) for k, v in sizes.items()}}
        t0 = time.perf_counter()
        feats = boxmot_features(reid, test)
        row["ms_per_crop"] = 1000 * (time.perf_counter() - t0) / len(test)  # one crop per call, as a tracker's frame
        r = run_protocols(ds, feats)
        row["retrieval"] = {k: {m: r[k][m] for m in ("R-1", "mAP")} for k in r}
        r = run_protocols(ds, boxmot_features(reid, big))
        row["retrieval_rescaled"] = {k: {m: r[k][m] for m in ("R-1", "mAP")} for k in r}
        res["exports"][name] = row
        print(name, json.dumps(row), flush=True)
    if "default graph" in exports:  # the contract followed with OpenCV instead of PIL, into the default graph
        res["opencv_contract_cosine"] = opencv_contract(out / "default_graph.onnx", sizes, ours)
        print("OpenCV INTER_LINEAR contract", json.dumps(res["opencv_contract_cosine"]))
    (out / "boxmot_parity.json").write_text(json.dumps(res, indent=1))
    (out / "boxmot_parity.md").write_text(markdown(res))
    print(markdown(res))

if __name__ == "__main__":
    main()
