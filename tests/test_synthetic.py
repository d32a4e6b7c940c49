import json

import numpy as np
import pytest

from scireid.cli import main
from scireid.data.datasets import build_dataset
from scireid.data.loading import read_image
from scireid.data.synthetic import generate
from scireid.eval.protocols import run_protocols


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "data", ids=40, seed=3)


def test_layout_and_determinism(synth, tmp_path):
    ds = build_dataset("synthetic", synth)
    assert ds.num_train_pids == 20 and len({r.pid for r in ds.test}) == 20
    assert 2 <= ds.pid2clothes.sum(1).min() and ds.pid2clothes.sum(1).max() <= 5
    assert len({r.camid for r in ds.train}) >= 6
    res = run_protocols(ds, np.random.default_rng(0).normal(size=(len(ds.test), 8)))
    assert res["general"]["num_valid"] == res["general"]["num_query"]
    assert res["cloth-changing"]["num_valid"] > 0.8 * res["cloth-changing"]["num_query"]
    again = generate(tmp_path / "again", ids=4, seed=3)
    first = generate(tmp_path / "first", ids=4, seed=3)
    a = sorted(p.name for p in (again / "train").iterdir())
    assert a == sorted(p.name for p in (first / "train").iterdir())
    assert np.array_equal(np.asarray(read_image(str(again / "train" / a[0]))),
                          np.asarray(read_image(str(first / "train" / a[0]))))


def test_outfits_shared_across_people(synth):
    meta = json.loads((synth / "synthetic.json").read_text())
    assert meta["outfit_catalogue"] < meta["ids"]  # fewer outfits than people: outfits repeat
    ds = build_dataset("synthetic", synth)
    assert ds.num_train_clothes > ds.num_train_pids


def colour_histogram(path, bins=6):
    """Grey-world normalised colour histogram of the person's column: a clothes-colour matcher."""
    x = np.asarray(read_image(path), dtype=np.float32)
    x = x[10:-6, x.shape[1] // 5: -x.shape[1] // 5]
    x = x / (x.reshape(-1, 3).mean(0) + 1e-6) * 110  # cancels the camera's gain and tint
    q = np.clip(x * bins / 256, 0, bins - 1).astype(int)
    h = np.bincount((q[..., 0] * bins * bins + q[..., 1] * bins + q[..., 2]).ravel(), minlength=bins ** 3)
    return np.sqrt(h / h.sum())


def test_confounder_is_real(synth):
    """A colour-histogram matcher does far worse once clothes change."""
    ds = build_dataset("synthetic", synth)
    feats = np.stack([colour_histogram(r.path) for r in ds.test])
    res = run_protocols(ds, feats)
    assert res["general"]["R-1"] > 3 * res["cloth-changing"]["R-1"] and res["general"]["R-5"] > 15, res


def test_cli_synth_and_stats(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--ids", "6", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["datasets", "stats", "synthetic", str(tmp_path / "s"), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["splits"]["train"]["ids"] == 3
    assert main(["datasets", "check", "synthetic", str(tmp_path / "s")]) == 0
    # the validation split is decoded too: a corrupt val/ image is found and named
    (bad,) = sorted((tmp_path / "s" / "val").rglob("*.png"))[:1]
    bad.write_bytes(bad.read_bytes()[:40])
    capsys.readouterr()
    assert main(["datasets", "check", "synthetic", str(tmp_path / "s")]) == 1
    assert bad.name in capsys.readouterr().out


def test_validation_split_holds_other_people_and_leaves_train_test_unchanged(synth, tmp_path):
    ds = build_dataset("synthetic", synth)
    val = ds.validation()
    assert val is not None and not val.train
    val_pids = {r.pid for r in val.test}
    assert len(val_pids) == 40 // 3
    assert val_pids.isdisjoint({r.pid for r in ds.test}) and min(val_pids) >= 40  # named after train/test ids
    q = val.protocol("cloth-changing")
    res = run_protocols(val, np.random.default_rng(0).normal(size=(len(val.test), 8)))
    assert res["cloth-changing"]["num_valid"] > 0.8 * len(q.query)
    # its people come from their own random stream: no val, same train and test images
    none = generate(tmp_path / "noval", ids=40, seed=3, val_ids=0)
    assert not (none / "val").exists() and build_dataset("synthetic", none).validation() is None
    for split in ("train", "query", "test"):
        names = sorted(p.name for p in (synth / split).iterdir())
        assert names == sorted(p.name for p in (none / split).iterdir())
    name = sorted(p.name for p in (synth / "test").iterdir())[7]
    assert np.array_equal(np.asarray(read_image(str(synth / "test" / name))),
                          np.asarray(read_image(str(none / "test" / name))))


def test_validation_split_refused_when_it_shares_people(synth, tmp_path):
    import shutil

    from scireid.data.records import DatasetError
    copy = tmp_path / "copy"
    shutil.copytree(synth, copy)
    stray = sorted((copy / "test").iterdir())[0]
    shutil.copy(stray, copy / "val" / "test" / stray.name)
    with pytest.raises(DatasetError, match="validation identities"):
        build_dataset("synthetic", copy)


def test_synth_is_all_or_nothing(tmp_path, monkeypatch, capsys):
    """A generation that dies (here: disk full at the 30th image) leaves no folder that looks like data."""
    from PIL import Image

    calls = {"n": 0}
    real_save = Image.Image.save

    def save(self, fp, *a, **k):
        calls["n"] += 1
        if calls["n"] == 30:
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *a, **k)
    monkeypatch.setattr(Image.Image, "save", save)
    assert main(["synth", str(tmp_path / "s"), "--ids", "6"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # neither the dataset nor its staging folder
    monkeypatch.undo()
    # a folder that lost its completion record (an old in-place generation) is refused, in one line
    generate(tmp_path / "half", ids=4, seed=1)
    (tmp_path / "half" / "synthetic.json").unlink()
    assert main(["datasets", "stats", "synthetic", str(tmp_path / "half")]) == 2
    assert "generation never finished" in capsys.readouterr().err
    # synth never writes into a folder that holds something
    assert main(["synth", str(tmp_path / "half"), "--ids", "4"]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_larger_test_split_keeps_training_images_and_adds_people(synth, tmp_path):
    """Statistical power without more training: extra test people come from their own stream."""
    big = generate(tmp_path / "big", ids=40, seed=3, test_ids=30, val_ids=13)
    ds, ds_big = build_dataset("synthetic", synth), build_dataset("synthetic", big)
    names = sorted(p.name for p in (synth / "train").iterdir())
    assert names == sorted(p.name for p in (big / "train").iterdir())
    assert np.array_equal(np.asarray(read_image(str(synth / "train" / names[5]))),
                          np.asarray(read_image(str(big / "train" / names[5]))))
    assert len({r.pid for r in ds_big.test}) == 30 and {r.pid for r in ds.test} < {r.pid for r in ds_big.test}
    assert ds_big.num_train_pids == ds.num_train_pids
    meta = json.loads((big / "synthetic.json").read_text())
    assert meta["test_ids"] == 30 and len(meta["identities"]) == 50 and len(meta["outfits_worn"]) == 50
    # one query per (outfit, camera) view of every evaluation person: the first image of the view
    for split in (ds_big, ds_big.validation()):
        q = split.protocol("general").query
        views = {(r.pid, r.clothes, r.camid) for r in split.test}
        assert len(q) == len(views) == len({(split.test[i].pid, split.test[i].clothes, split.test[i].camid) for i in q})
    from scireid.data.records import DatasetError
    from scireid.data.synthetic import ensure_synthetic, generate_complete
    with pytest.raises(DatasetError, match="--test-ids 5"):
        generate_complete(tmp_path / "small", ids=40, seed=3, test_ids=5)
    with pytest.raises(DatasetError, match="test_ids=20"):  # a cached set of other split sizes is not reused
        ensure_synthetic(synth, ids=40, seed=3, test_ids=30)


def _clean_camera():
    from scireid.data.synthetic import Camera
    return Camera((90, 160, 90), (90, 160, 90), 1.0, (1.0, 1.0, 1.0), 0.0, 0.0)


def test_v5_drawing_keeps_every_attribute_visible_at_half_size():
    """The drawing contract behind the visibility table: what names an attribute survives the demo's 2x
    downsampling (stripes, sleeves, long hair), and a pattern's second colour always contrasts."""
    from PIL import Image

    from scireid.data.synthetic import HAIR, PALETTE, Identity, Outfit, _rand_outfit, render
    rng = np.random.default_rng(0)
    for _ in range(300):
        o = _rand_outfit(rng)
        assert np.linalg.norm(PALETTE[o.top] - PALETTE[o.top2]) > 120
    person = Identity(skin=0, hair=0, hair_style=0, height=1.0, build=1.0, head=1.0, shoes=0, glasses=False, bag=0)

    def half(ident, outfit, seed=1):
        img = render(ident, outfit, _clean_camera(), np.random.default_rng(seed))
        return np.asarray(img.resize((32, 64), Image.BILINEAR), dtype=np.float64)

    plain = Outfit(top=1, top_pattern=0, top2=4, long_sleeves=False, bottom=5, bottom_pattern=0, bottom_kind=0)
    striped = Outfit(**{**vars(plain), "top_pattern": 1})
    # stripes: the torso's rows alternate at half size (row-to-row change far above a plain top's)
    torso = (slice(14, 30), slice(12, 20))
    rows = lambda a: np.abs(np.diff(a[torso].mean(1), axis=0)).mean()  # noqa: E731
    assert rows(half(person, striped)) > 10 * max(rows(half(person, plain)), 1.0)
    # sleeves: the top's colour reaches much further down the arm
    long = Outfit(**{**vars(plain), "long_sleeves": True})
    blue = lambda a: int((np.linalg.norm(a - PALETTE[1], axis=-1) < 40).sum())  # noqa: E731
    assert blue(half(person, long)) >= blue(half(person, plain)) + 15
    # long hair shows over the shoulders, not only behind the head
    hair = lambda a: int((np.linalg.norm(a - HAIR[0], axis=-1) < 40).sum())  # noqa: E731
    assert hair(half(Identity(**{**vars(person), "hair_style": 1}), plain)) >= hair(half(person, plain)) + 15
