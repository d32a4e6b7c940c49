"""Exports made for trackers: the preprocessing contract, ImageNet-normalised input, PIL-weight resize in the graph,
and (slow, with the real package) BoxMOT's own ReID backend and tracker on our export."""
import json

import numpy as np
import pytest
from PIL import Image

import scireid
from scireid.cli import main
from scireid.deploy.resample import pil_bilinear_matrix, pil_resize_float


def test_pil_bilinear_matrices_reproduce_pillow():
    rng = np.random.default_rng(0)
    for h, w in ((256, 128), (301, 133), (87, 41), (64, 32), (40, 20)):
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        ref = np.asarray(Image.fromarray(img).resize((32, 64), Image.BILINEAR), dtype=np.float64)
        assert np.abs(pil_resize_float(img, 64, 32) - ref).max() <= 1.0  # Pillow rounds to 8 bits between passes
    np.testing.assert_allclose(pil_bilinear_matrix(5, 5), np.eye(5))
    np.testing.assert_allclose(pil_bilinear_matrix(8, 4).sum(1), 1.0)


def contract_features(onnx_path, paths):
    """The README contract, followed by someone who never imports scireid: PIL + numpy + onnxruntime."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pre = json.loads(sess.get_modelmeta().custom_metadata_map["scireid_preprocess"])
    xs = []
    for p in paths:
        im = Image.open(p).convert("RGB").resize((pre["width"], pre["height"]), Image.BILINEAR)
        x = np.asarray(im, dtype=np.float32) / 255.0
        xs.append(((x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)).transpose(2, 0, 1))
    return sess.run(["output"], {"images": np.stack(xs)})[0]


def test_readme_contract_reproduces_our_features(full_run, data_root, tmp_path):
    run, _ = full_run
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    paths = sorted(str(p) for p in (data_root / "test").glob("*.png"))[:24]
    a = contract_features(tmp_path / "m.onnx", paths)
    b = scireid.load(run, device="cpu").embed(paths).numpy()
    assert ((a * b).sum(1)).min() >= 0.9999


def test_imagenet_input_graph_equals_our_features(full_run, data_root, tmp_path, capsys):
    """--for boxmot: fed ImageNet-normalised crops, the graph gives scireid's features."""
    run, _ = full_run
    paths = sorted(str(p) for p in (data_root / "test").glob("*.png"))[:16]
    ours = scireid.load(run, device="cpu").embed(paths).numpy()
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "b.onnx"), "--for", "boxmot", "--check"]) == 0
    out = capsys.readouterr().out
    assert "mean=[0.485, 0.456, 0.406]" in out and "OK" in out
    import onnxruntime as ort
    sess = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    g = json.loads(sess.get_modelmeta().custom_metadata_map["scireid_graph_input"])
    assert g["norm"] == "imagenet" and g["resize_inside"] is None
    xs = []
    for p in paths:
        im = Image.open(p).convert("RGB").resize((g["width"], g["height"]), Image.BILINEAR)
        x = np.asarray(im, dtype=np.float32) / 255.0
        xs.append(((x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32))
                  .transpose(2, 0, 1))
    b = sess.run(["output"], {"images": np.stack(xs)})[0]
    assert ((ours * b).sum(1)).min() >= 0.9999
    # the same file works with our own embed (it reads the graph's input contract from the metadata)
    assert main(["embed", str(tmp_path / "b.onnx"), paths[0], "--out", str(tmp_path / "f.npy")]) == 0
    f = np.load(tmp_path / "f.npy")
    assert float(f[0] @ ours[0]) >= 0.9999


def test_larger_input_graph_resizes_like_pil(full_run, data_root, tmp_path):
    """--input-size: the graph shrinks its input with PIL's weights, so a crop resized to that size by any
    library lands close to what scireid's own PIL resize gives."""
    run, _ = full_run
    assert main(["export", str(run), "--out", str(tmp_path / "l.onnx"), "--input-norm", "imagenet",
                 "--input-size", "128x64"]) == 0
    import onnxruntime as ort
    sess = ort.InferenceSession(str(tmp_path / "l.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[2:] == [128, 64]
    paths = sorted(str(p) for p in (data_root / "test").glob("*.png"))[:16]  # stored 128x64: no resize outside
    xs = []
    for p in paths:
        x = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
        assert x.shape[:2] == (128, 64)
        xs.append(((x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32))
                  .transpose(2, 0, 1))
    b = sess.run(["output"], {"images": np.stack(xs)})[0]
    ours = scireid.load(run, device="cpu").embed(paths).numpy()
    assert ((ours * b).sum(1)).min() >= 0.999
    for bad in (["--input-size", "12"], ["--input-size", "0x32"]):
        capsys_free = main(["export", str(run), "--out", str(tmp_path / "x.onnx"), *bad])
        assert capsys_free == 2 and not (tmp_path / "x.onnx").exists()



@pytest.mark.slow
def test_boxmot_reid_backend_and_tracker_use_our_export(full_run, data_root, tmp_path):
    """With the real BoxMOT (pip install -e ".[track]"): its ReID backend, fed as its trackers feed it, gives our
    features; one of its ReID trackers runs a short MOT sequence with the export."""
    pytest.importorskip("boxmot")
    import torch
    from boxmot.reid.core import ReID

    run, _ = full_run
    onnx = tmp_path / "scireid_boxmot.onnx"
    assert main(["export", str(run), "--out", str(onnx), "--for", "boxmot", "--input-size", "128x64"]) == 0
    reid = ReID(weights=onnx, device=torch.device("cpu"), half=False).model
    paths = sorted(str(p) for p in (data_root / "test").glob("*.png"))[:40]
    ours = scireid.load(run, device="cpu").embed(paths).numpy()
    theirs = []
    for p in paths:
        bgr = np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB"))[..., ::-1])
        theirs.append(reid.get_features(np.array([[0, 0, bgr.shape[1], bgr.shape[0]]], np.float32), bgr)[0])
    cos = (ours * np.stack(theirs)).sum(1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.999, (cos.mean(), cos.min())
    # a tracker with appearance: two people walking, three frames, detections as a detector would give them
    from boxmot.trackers.box.botsort.tracker import BotSort
    tracker = BotSort(reid_weights=onnx, device="cpu", half=False, use_cmc=False)
    people = [Image.open(p).convert("RGB") for p in paths[:2]]
    ids = []
    for t in range(3):
        frame = Image.new("RGB", (320, 200), (90, 90, 90))
        boxes = []
        for k, im in enumerate(people):
            x, y = 20 + 150 * k + 5 * t, 30
            frame.paste(im, (x, y))
            boxes.append([x, y, x + im.width, y + im.height, 0.9, 0])
        out = tracker.update(np.array(boxes, np.float32), np.ascontiguousarray(np.asarray(frame)[..., ::-1]))
        ids.append(sorted(int(r[4]) for r in out))
    assert ids[-1] and len(ids[-1]) == 2 and ids[-1] == ids[-2]  # two tracks, stable identities
