"""Exports made for trackers: the preprocessing contract, ImageNet-normalised input, the resize inside the graph
(PIL's weights, or fitted to undo OpenCV's), and (slow, with the real package) BoxMOT's own ReID backend and
tracker on our export."""
import json

import numpy as np
import pytest
from PIL import Image

import scireid
from scireid.cli import main
from scireid.deploy.resample import (fitted_shrink_matrix, inside_resize, opencv_linear_matrix, pil_bilinear_matrix,
                                     pil_resize_float)


def test_pil_bilinear_matrices_reproduce_pillow():
    rng = np.random.default_rng(0)
    for h, w in ((256, 128), (301, 133), (87, 41), (64, 32), (40, 20)):
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        ref = np.asarray(Image.fromarray(img).resize((32, 64), Image.BILINEAR), dtype=np.float64)
        assert np.abs(pil_resize_float(img, 64, 32) - ref).max() <= 1.0  # Pillow rounds to 8 bits between passes
    np.testing.assert_allclose(pil_bilinear_matrix(5, 5), np.eye(5))
    np.testing.assert_allclose(pil_bilinear_matrix(8, 4).sum(1), 1.0)


def test_opencv_matrices_reproduce_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    for n_in, n_out in ((80, 512), (200, 512), (400, 512), (700, 512), (128, 64), (64, 128), (7, 3), (33, 256)):
        x = rng.random((n_in, 4)).astype(np.float32)
        ref = cv2.resize(x, (4, n_out), interpolation=cv2.INTER_LINEAR)  # rows only: width unchanged
        np.testing.assert_allclose(opencv_linear_matrix(n_in, n_out) @ x, ref, atol=1e-5)


def test_fitted_shrink_is_the_least_squares_optimum():
    """The normal equations solved right: the objective, computed here from OpenCV's own resize and PIL's weights,
    is lowest at the fitted matrix (random perturbations only raise it) and below PIL's plain weights."""
    cv2 = pytest.importorskip("cv2")
    n_in, n_out, sizes, corr = 48, 8, [8, 16, 24, 32, 40, 48], 1.0

    def objective(g):
        total = 0.0
        for s in sizes:
            c = cv2.resize(np.eye(s, dtype=np.float32), (s, n_in), interpolation=cv2.INTER_LINEAR).astype(np.float64)
            p = pil_bilinear_matrix(s, n_out)
            i = np.arange(s)
            cov = np.exp(-np.abs(i[:, None] - i[None]) / (corr * s / n_out))
            d = g @ c - p
            total += np.trace(d @ cov @ d.T) / np.trace(p @ cov @ p.T)
        return total

    g = fitted_shrink_matrix(n_in, n_out, sizes, corr, ridge=0.0)
    best = objective(g)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert objective(g + 1e-3 * rng.normal(size=g.shape)) > best
    assert best < 0.9 * objective(pil_bilinear_matrix(n_in, n_out))


def test_fitted_inside_resize_undoes_opencv_better_than_pil_weights():
    """Crops of 100-400 px resized by OpenCV to 512x256, then shrunk inside: the fitted weights land closer to PIL's
    direct shrink than PIL's own weights do, at the worst crop size (8-bit pixel units)."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    fitted, pil = inside_resize("opencv", (512, 256), (64, 32)), inside_resize("pil", (512, 256), (64, 32))
    np.testing.assert_allclose(fitted[0].sum(1), 1.0, atol=0.01)  # flat grey stays flat grey
    worst = {"fitted": 0.0, "pil": 0.0}
    for h in (100, 200, 300, 400):
        for _ in range(3):
            im = Image.fromarray(rng.integers(0, 256, (32, 16, 3)).astype(np.uint8)).resize((h // 2, h), Image.BICUBIC)
            ref = np.asarray(im.resize((32, 64), Image.BILINEAR), np.float64)
            x = cv2.resize(np.asarray(im), (256, 512), interpolation=cv2.INTER_LINEAR).astype(np.float64)
            for name, (ah, aw) in (("fitted", fitted), ("pil", pil)):
                y = np.einsum("oh,hwc,pw->opc", ah, x, aw, optimize=True)
                worst[name] = max(worst[name], float(np.sqrt(((y - ref) ** 2).mean())))
    assert worst["fitted"] < 0.85 * worst["pil"], worst


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
    """--input-norm imagenet: fed ImageNet-normalised crops, the graph gives scireid's features."""
    run, _ = full_run
    paths = sorted(str(p) for p in (data_root / "test").glob("*.png"))[:16]
    ours = scireid.load(run, device="cpu").embed(paths).numpy()
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "b.onnx"), "--input-norm", "imagenet", "--check"]) == 0
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
    for bad in (["--input-size", "12"], ["--input-size", "0x32"],
                ["--input-size", "32x16", "--consumer-resize", "opencv"]):  # smaller than the model's 64x32
        capsys_free = main(["export", str(run), "--out", str(tmp_path / "x.onnx"), *bad])
        assert capsys_free == 2 and not (tmp_path / "x.onnx").exists()


def test_for_boxmot_default_graph_undoes_opencv_resize(full_run, data_root, tmp_path, capsys):
    """--for boxmot alone: a 512x256 ImageNet-normalised input whose inside shrink undoes OpenCV's resize; --check
    feeds it crops of several sizes the way BoxMOT does (OpenCV INTER_LINEAR, ImageNet mean/std)."""
    run, _ = full_run
    crops = tmp_path / "crops"
    crops.mkdir()
    for i, p in enumerate(sorted((data_root / "test").glob("*.png"))[:12]):
        im = Image.open(p).convert("RGB")
        h = (96, 200, 300, 400)[i % 4]
        im.resize((h // 2, h), Image.BICUBIC).save(crops / f"{i:03d}.png")
    capsys.readouterr()
    onnx = tmp_path / "bm.onnx"
    assert main(["export", str(run), "--out", str(onnx), "--for", "boxmot", "--check", "--images", str(crops)]) == 0
    out = capsys.readouterr().out
    assert "512x256" in out and "undoing OpenCV INTER_LINEAR" in out and "OK" in out, out
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[2:] == [512, 256]
    g = json.loads(sess.get_modelmeta().custom_metadata_map["scireid_graph_input"])
    assert g["norm"] == "imagenet" and g["consumer_resize"] == "opencv" and g["resize_inside"] == [64, 32]
    assert "cv2.INTER_LINEAR" in g["steps"]
    assert "antialiased" in json.loads(sess.get_modelmeta().custom_metadata_map["scireid_preprocess"])["steps"]
    # scireid's own embed feeds the file as BoxMOT would, so it gives scireid's features too
    assert main(["embed", str(onnx), str(crops), "--out", str(tmp_path / "f.npy")]) == 0
    names = sorted(p.name for p in crops.glob("*.png"))
    ours = scireid.load(run, device="cpu").embed([str(crops / n) for n in names]).numpy()
    assert ((np.load(tmp_path / "f.npy") * ours).sum(1)).min() >= 0.999



@pytest.mark.slow
def test_boxmot_reid_backend_and_tracker_use_our_export(full_run, data_root, tmp_path):
    """With the real BoxMOT (pip install -e ".[track]"): its ReID backend, fed as its trackers feed it, gives our
    features; one of its ReID trackers runs a short MOT sequence with the export."""
    pytest.importorskip("boxmot")
    import torch
    from boxmot.reid.core import ReID

    run, _ = full_run
    onnx = tmp_path / "scireid_boxmot.onnx"
    assert main(["export", str(run), "--out", str(onnx), "--for", "boxmot"]) == 0
    reid = ReID(weights=onnx, device=torch.device("cpu"), half=False).model
    paths = sorted(str(p) for p in (data_root / "test").glob("*.png"))[:40]
    emb = scireid.load(run, device="cpu")
    ah, aw = inside_resize("opencv", (512, 256), (64, 32))
    for height in (None, 200, 400):  # the stored crops, and detector-sized ones
        ims = [Image.open(p).convert("RGB") for p in paths]
        if height:
            ims = [im.resize((height // 2, height), Image.BICUBIC) for im in ims]
        ours = emb.embed(ims).numpy()
        theirs, rmse = [], []
        for im in ims:
            bgr = np.ascontiguousarray(np.asarray(im)[..., ::-1])
            box = np.array([[0, 0, bgr.shape[1], bgr.shape[0]]], np.float32)
            theirs.append(reid.get_features(box, bgr)[0])
            # the pixels the model sees: BoxMOT's own crop tensor, shrunk inside as the graph does, in 8-bit levels
            crop = reid.get_crops(box, bgr)[0].cpu().numpy().transpose(1, 2, 0)
            crop = (crop * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])) * 255
            seen = np.einsum("oh,hwc,pw->opc", ah, crop, aw, optimize=True)
            rmse.append(np.sqrt(((seen - np.asarray(im.resize((32, 64), Image.BILINEAR), np.float64)) ** 2).mean()))
        cos = (ours * np.stack(theirs)).sum(1)
        assert cos.mean() >= 0.999 and cos.min() >= 0.999, (height, cos.mean(), cos.min())
        # PIL's own shrink of the crop, within 0.6 of a level on average (its own 8-bit rounding is 0.29 of it);
        # PIL's weights from a 128x64 input land at 0.9 for 200-px crops of the demo
        assert np.mean(rmse) <= 0.6, (height, np.mean(rmse))
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
