"""Tiny on-disk trees with each dataset's real naming scheme (under a parent called my_code)."""
from pathlib import Path

import numpy as np
from PIL import Image


def img(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (16, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_ltcc(root: Path) -> Path:
    base = root / "LTCC_ReID"
    # train: pids 5 (clothes 1,2) and 9 (clothes 1); query/test: pids 3, 4
    for name in ["005_1_c1_000001.png", "005_1_c2_000002.png", "005_2_c3_000003.png", "009_1_c1_000004.png",
                 "009_1_c4_000005.png"]:
        img(base / "train" / name)
    for name in ["003_1_c1_000010.png", "004_2_c2_000011.png"]:
        img(base / "query" / name)
    for name in ["003_1_c2_000020.png", "003_2_c3_000021.png", "003_1_c1_000022.png", "004_1_c1_000023.png",
                 "004_2_c5_000024.png", "007_1_c1_000025.png"]:
        img(base / "test" / name)
    return root


def make_prcc(root: Path) -> Path:
    base = root / "prcc" / "rgb"
    for pid in ("001", "002"):
        for cam in "ABC":
            img(base / "train" / pid / f"{cam}_cropped_rgb{cam}01.jpg")
    img(base / "train" / "002" / "A_cropped_rgb002.jpg")
    for pid in ("010", "011", "012"):
        for cam in "ABC":
            for k in range(2):
                img(base / "test" / cam / pid / f"cropped_rgb{k:03d}.jpg")
    return root


def make_vcclothes(root: Path) -> Path:
    base = root / "VC-Clothes"
    for name in ["0001-01-01-01.jpg", "0001-02-01-02.jpg", "0001-03-02-03.jpg", "0002-04-01-01.jpg"]:
        img(base / "train" / name)
    for name in ["0100-02-01-01.jpg", "0101-03-02-01.jpg", "0102-01-01-01.jpg"]:
        img(base / "query" / name)
    for name in ["0100-03-01-05.jpg", "0100-04-02-06.jpg", "0101-04-01-07.jpg", "0101-02-02-08.jpg",
                 "0102-02-01-09.jpg"]:
        img(base / "gallery" / name)
    return root


def make_market(root: Path) -> Path:
    base = root / "Market-1501-v15.09.15"
    for name in ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_077419_03.jpg",
                 "-1_c1s1_000001_00.jpg"]:
        img(base / "bounding_box_train" / name)
    for name in ["0001_c1s1_001051_00.jpg", "0003_c2s1_000301_00.jpg"]:
        img(base / "query" / name)
    for name in ["0001_c2s1_000301_01.jpg", "0001_c1s1_000301_02.jpg", "0000_c1s1_000000_01.jpg",
                 "-1_c3s1_000401_03.jpg", "0003_c6s1_000301_01.jpg"]:
        img(base / "bounding_box_test" / name)
    return root


def make_msmt(root: Path) -> Path:
    base = root / "MSMT17_V1"
    train = ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0001/0001_001_05_0303noon_0100_1.jpg 1"]
    val = ["0002/0002_002_03_0303noon_0200_0.jpg 2"]
    query = ["0005/0005_010_02_0113morning_0001_0.jpg 5"]
    gallery = ["0005/0005_011_07_0113noon_0002_0.jpg 5", "0006/0006_012_02_0113noon_0003_0.jpg 6"]
    for lst, split, lines in (("list_train.txt", "train", train), ("list_val.txt", "train", val),
                              ("list_query.txt", "test", query), ("list_gallery.txt", "test", gallery)):
        (base).mkdir(parents=True, exist_ok=True)
        (base / lst).write_text("\n".join(lines) + "\n")
        for ln in lines:
            img(base / split / ln.split()[0])
    return root
