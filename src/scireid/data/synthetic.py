"""A procedural cloth-changing ReID dataset in LTCC's on-disk layout.

The confounder is kept honest: clothes cover most pixels and come from one catalogue shared
by every identity, so two people often wear the same outfit and one person changes outfits.
What stays with a person is small: skin tone, hair colour and style, body proportions,
shoes, glasses, a bag. Cameras differ in background, light, blur and noise.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

H, W = 128, 64
# 3: val/ split; 4: one query per (outfit, camera) view, extra test identities from their own stream;
# 5: every attribute drawn large enough to see at the demo's 64x32 (issue #24; BENCHMARKS.md, visibility).
# Bump when the drawing or the splits change: a cached set of another version is not reused.
GENERATOR_VERSION = 5
PALETTE = np.array([  # garment colours
    (200, 30, 30), (30, 60, 170), (30, 140, 60), (230, 200, 40), (240, 240, 240), (25, 25, 25),
    (120, 120, 120), (150, 80, 30), (230, 120, 170), (100, 40, 130), (250, 140, 20), (20, 150, 160),
    (170, 200, 230), (90, 110, 40),
])
# skin tones spaced ~45 levels apart, so a camera's gain (+-10%) cannot turn one into its neighbour
SKIN = np.array([(255, 226, 204), (222, 174, 132), (180, 122, 80), (128, 82, 52), (78, 50, 32)])
HAIR = np.array([(20, 15, 10), (90, 60, 30), (200, 160, 80), (150, 50, 20), (180, 180, 180)])
SHOES = np.array([(15, 15, 15), (240, 240, 240), (140, 30, 30), (40, 60, 120), (120, 90, 50)])


@dataclass
class Identity:
    skin: int
    hair: int
    hair_style: int  # 0 short, 1 long, 2 ponytail, 3 bald
    height: float  # body scale factor
    build: float  # width factor
    head: float
    shoes: int
    glasses: bool
    bag: int  # 0 none, 1 backpack, 2 shoulder bag


@dataclass
class Outfit:
    top: int
    top_pattern: int  # 0 solid, 1 stripes, 2 checks, 3 logo
    top2: int
    long_sleeves: bool
    bottom: int
    bottom_pattern: int  # 0 solid, 1 stripes
    bottom_kind: int  # 0 trousers, 1 shorts, 2 skirt


@dataclass
class Camera:
    bg_top: tuple
    bg_bottom: tuple
    gain: float
    tint: tuple
    blur: float
    noise: float


def _rand_identity(rng) -> Identity:
    return Identity(int(rng.integers(len(SKIN))), int(rng.integers(len(HAIR))), int(rng.integers(4)),
                    float(rng.uniform(0.86, 1.0)), float(rng.uniform(0.8, 1.15)), float(rng.uniform(0.85, 1.15)),
                    int(rng.integers(len(SHOES))), bool(rng.random() < 0.3), int(rng.choice(3, p=[0.6, 0.2, 0.2])))


# per palette colour, the colours far from it (RGB distance > 120): a pattern's second colour, so it shows
_FAR = [[j for j in range(len(PALETTE)) if np.linalg.norm(PALETTE[j] - PALETTE[i]) > 120] for i in range(len(PALETTE))]


def _contrasting(rng, base: int) -> int:
    far = _FAR[base]
    return int(far[int(rng.integers(len(far)))])


def _rand_outfit(rng) -> Outfit:
    top = int(rng.integers(len(PALETTE)))
    return Outfit(top, int(rng.choice(4, p=[0.5, 0.2, 0.15, 0.15])), _contrasting(rng, top), bool(rng.random() < 0.5),
                  int(rng.integers(len(PALETTE))), int(rng.choice(2, p=[0.8, 0.2])),
                  int(rng.choice(3, p=[0.65, 0.2, 0.15])))


def _rand_camera(rng) -> Camera:
    c1 = tuple(int(v) for v in rng.integers(40, 220, 3))
    c2 = tuple(int(v) for v in rng.integers(40, 220, 3))
    # light and colour cast within what leaves 14 garment colours and 5 skin tones nameable (v5; was gain
    # 0.7-1.25, cast 0.85-1.15, blur up to 1.2, which merged white/grey, yellow/orange and neighbouring skins)
    return Camera(c1, c2, float(rng.uniform(0.9, 1.1)), tuple(float(v) for v in rng.uniform(0.95, 1.05, 3)),
                  float(rng.uniform(0.0, 0.8)), float(rng.uniform(2, 8)))


# written first into a folder being generated, removed last: a dataset loader refuses a folder that still has it
INCOMPLETE = ".scireid-incomplete"

# part labels of the mask ``render`` can return: what the cross-attention check scores against
BACKGROUND, TRAIT, GARMENT = 0, 1, 2


class _Painter:
    """Draws on the image and, in parallel, a part-label mask (identity trait vs garment)."""

    def __init__(self, img: Image.Image, with_mask: bool):
        self.d = ImageDraw.Draw(img)
        self.mask = Image.new("L", img.size, BACKGROUND) if with_mask else None
        self.m = ImageDraw.Draw(self.mask) if with_mask else None

    def __getattr__(self, shape):  # rectangle / ellipse / chord / polygon / line
        def draw(*args, label: int, **kw):
            getattr(self.d, shape)(*args, **kw)
            if self.m is not None:
                kw = {k: (label if k == "fill" else v) for k, v in kw.items()}
                getattr(self.m, shape)(*args, **kw)
        return draw


def _fill_pattern(p: _Painter, box, color, color2, pattern, label: int):
    x0, y0, x1, y1 = box
    p.rectangle(box, fill=color, label=label)
    # sizes at 128x64, chosen to survive the demo's 2x downsampling: 4-pixel stripes every 10, 5-pixel checks
    if pattern == 1:
        for y in range(int(y0) + 2, int(y1), 10):
            p.rectangle((x0, y, x1, min(y + 3, y1)), fill=color2, label=label)
    elif pattern == 2:
        for row, y in enumerate(range(int(y0) + 1, int(y1), 5)):
            for x in range(int(x0) + (row % 2) * 5, int(x1), 10):
                p.rectangle((x, y, min(x + 4, x1), min(y + 4, y1)), fill=color2, label=label)
    elif pattern == 3:
        cx, cy = (x0 + x1) / 2, y0 + (y1 - y0) * 0.35
        p.ellipse((cx - 7, cy - 7, cx + 7, cy + 7), fill=color2, label=label)


def render(ident: Identity, outfit: Outfit, cam: Camera, rng, with_mask: bool = False, seen: dict | None = None):
    """One person image: camera background, body from identity, garments from outfit, camera effects.

    The person fills the frame as a detector's box would. ``seen`` (if given) receives what is
    visible in this view (a back view hides glasses and a front view a backpack; an occluder hides
    the feet), so captions never name what the image does not show. With ``with_mask`` the
    function returns ``(image, mask)``, the mask holding TRAIT / GARMENT / BACKGROUND per pixel.
    """
    grad = np.linspace(0, 1, H)[:, None, None]
    bg = (1 - grad) * np.array(cam.bg_top) + grad * np.array(cam.bg_bottom)
    bg = np.repeat(bg, W, axis=1) + rng.normal(0, 6, (H, W, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = _Painter(img, with_mask)

    view = int(rng.integers(3))  # 0 front, 1 back, 2 side
    s = ident.height * rng.uniform(0.9, 1.05)
    cx = W / 2 + rng.normal(0, 2)
    top_y = 2 + rng.uniform(0, 4) + (1 - ident.height) * 24
    # width grows as build^1.5 (v5): slim (< 0.9) and broad (> 1.05) bodies differ by ~8 pixels at 128x64
    bw = 36 * ident.build ** 1.5 * (0.75 if view == 2 else 1.0)
    head_r = 10.5 * ident.head
    skin = tuple(int(v) for v in SKIN[ident.skin])
    hair = tuple(int(v) for v in HAIR[ident.hair])
    col = lambda i: tuple(int(v) for v in PALETTE[i])  # noqa: E731

    hy = top_y + head_r
    torso_y0 = hy + head_r + 1
    torso_y1 = torso_y0 + 42 * s
    leg_y1 = min(H - 4, torso_y1 + 50 * s)
    d.ellipse((cx - head_r, hy - head_r, cx + head_r, hy + head_r), fill=skin, label=TRAIT)
    if ident.hair_style != 3:
        d.chord((cx - head_r - 1, hy - head_r - 2, cx + head_r + 1, hy + head_r * (1.6 if view == 1 else 0.3)),
                180, 360, fill=hair, label=TRAIT)
    if ident.glasses and view != 1:
        d.rectangle((cx - head_r, hy - 3, cx + head_r, hy + 3), fill=(10, 10, 10), label=TRAIT)
    # arms (9 pixels wide): sleeve colour down to just below the shoulder or to the wrist, skin below
    arm_w = 9 * ident.build
    for sx in (-1, 1):
        ax0, ax1 = (cx - bw / 2 - arm_w, cx - bw / 2) if sx < 0 else (cx + bw / 2, cx + bw / 2 + arm_w)
        if view == 2 and sx < 0:
            continue
        elbow = torso_y0 + (38 if outfit.long_sleeves else 10) * s
        d.rectangle((ax0, torso_y0 + 1, ax1, elbow), fill=col(outfit.top), label=GARMENT)
        d.rectangle((ax0, elbow, ax1, torso_y0 + 40 * s), fill=skin, label=TRAIT)
    # legs / bottom garment: trousers to the ankle, shorts to mid-thigh with a gap between the legs, a skirt
    # flared wider than the hips
    lw = bw / 2 - 2
    knee = torso_y1 + (14 if outfit.bottom_kind == 1 else 42) * s
    if outfit.bottom_kind == 2:
        knee = torso_y1 + 28 * s
        d.polygon([(cx - bw / 2, torso_y1), (cx + bw / 2, torso_y1), (cx + bw / 2 + 9, knee),
                   (cx - bw / 2 - 9, knee)], fill=col(outfit.bottom), label=GARMENT)
    for lx0 in (cx - bw / 2 + 1, cx + 2):
        if outfit.bottom_kind != 2:
            _fill_pattern(d, (lx0, torso_y1, lx0 + lw - 1, min(knee, leg_y1)), col(outfit.bottom),
                          col(outfit.top2), outfit.bottom_pattern, GARMENT)
        if knee < leg_y1:
            d.rectangle((lx0 + 1, knee, lx0 + lw - 2, leg_y1), fill=skin, label=TRAIT)
        d.rectangle((lx0 - 2, leg_y1 - 6, lx0 + lw + 1, leg_y1 + 2), fill=tuple(int(v) for v in SHOES[ident.shoes]),
                    label=TRAIT)
    # torso / top garment
    top_pattern = outfit.top_pattern if view != 1 or outfit.top_pattern != 3 else 0
    _fill_pattern(d, (cx - bw / 2, torso_y0, cx + bw / 2, torso_y1), col(outfit.top), col(outfit.top2),
                  top_pattern, GARMENT)
    # hair over the shoulders, drawn after the torso (v5: long hair drawn behind the head was hidden by it)
    if ident.hair_style == 1:  # long: strands beside the face to the chest, a sheet down the back
        if view == 1:
            d.rectangle((cx - head_r - 2, hy, cx + head_r + 2, torso_y0 + 16 * s), fill=hair, label=TRAIT)
        else:
            for x0 in (cx - head_r - 3, cx + head_r - 4):
                d.rectangle((x0, hy - 2, x0 + 7, torso_y0 + 14 * s), fill=hair, label=TRAIT)
    elif ident.hair_style == 2:  # ponytail: a bun on top and a tail hanging behind the head's side
        d.ellipse((cx - 5, hy - head_r - 7, cx + 5, hy - head_r + 3), fill=hair, label=TRAIT)
        tx = cx if view == 1 else cx + head_r - 1
        d.rectangle((tx - 3, hy - head_r + 2, tx + 3, hy + head_r * 1.8), fill=hair, label=TRAIT)
    # bag
    bag_seen = 0
    if ident.bag == 1 and view != 0:
        bx = cx - bw / 2 - 4 if view == 2 else cx - bw / 3
        d.rectangle((bx, torso_y0 + 4, bx + (10 if view == 2 else bw * 2 / 3), torso_y0 + 28 * s), fill=(60, 45, 30),
                    label=TRAIT)
        bag_seen = 1
    elif ident.bag == 2:
        d.line((cx - bw / 2, torso_y0, cx + bw / 2, torso_y1 - 8), fill=(30, 30, 30), width=3, label=TRAIT)
        d.rectangle((cx + bw / 2 - 3, torso_y1 - 14, cx + bw / 2 + 8, torso_y1 - 2), fill=(110, 20, 40), label=TRAIT)
        bag_seen = 2
    # occasional occlusion by a foreground object
    occluded = rng.random() < 0.12
    if occluded:
        oy = rng.uniform(H * 0.55, H * 0.8)
        d.rectangle((0, oy, W, H), fill=tuple(int(v) for v in rng.integers(60, 200, 3)), label=BACKGROUND)
    if seen is not None:
        seen.update(view=view, glasses=view != 1, bag=(bag_seen if ident.bag == 0 or bag_seen else None),
                    top_pattern=top_pattern, feet=not occluded, bottom=not occluded or bool(oy > torso_y1 + 12))
    mask = d.mask
    # camera: scale/viewpoint jitter, light, blur, noise
    zoom = rng.uniform(0.95, 1.06)
    if abs(zoom - 1) > 0.01:
        img = _zoom(img, zoom, cam.bg_bottom, Image.BILINEAR)
        mask = _zoom(mask, zoom, BACKGROUND, Image.NEAREST) if mask is not None else None
    if cam.blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(cam.blur))
    arr = np.asarray(img, dtype=np.float32) * cam.gain * np.array(cam.tint, dtype=np.float32)
    arr += rng.normal(0, cam.noise, arr.shape)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return (out, mask) if with_mask else out


def _zoom(img: Image.Image, zoom: float, fill, resample) -> Image.Image:
    big = img.resize((int(W * zoom), int(H * zoom)), resample)
    ox, oy = (big.width - W) // 2, (big.height - H) // 2
    if zoom > 1:
        return big.crop((ox, oy, ox + W, oy + H))
    canvas = Image.new(img.mode, (W, H), fill)
    canvas.paste(big, (-ox, -oy))
    return canvas


def generate(out: str | Path, ids: int = 120, seed: int = 0, cameras: int = 8, outfit_pool: int | None = None,
             images_per_view: tuple[int, int] = (2, 4), progress: bool = False, val_ids: int | None = None,
             test_ids: int | None = None) -> Path:
    """Write OUT/{train,query,test}/<pid>_<clothes>_c<cam>_<frame>.png (LTCC naming). ``ids // 2`` identities train.

    The test split holds the other ``ids - ids // 2`` identities, plus, when ``test_ids`` is larger, further
    ones from their own random stream (so the training images are the same whatever the test size: the
    splits can grow to give the comparison statistical power without changing what is trained on).
    OUT/val/{query,test} holds a validation query/gallery of ``val_ids`` further identities (default
    max(4, ids // 3)), in neither train nor test: model selection and recipe choices use it, never
    the test queries; also from their own stream. Every (outfit, camera) view of a test or validation
    person gives one query image; the rest of the view goes to the gallery. Also OUT/masks/<name>.png
    for test-split images (part labels: 1 identity trait, 2 garment) and OUT/synthetic.json with every
    person's traits and outfits.
    """
    from tqdm import tqdm
    import sys

    out = Path(out)
    n_val = max(4, ids // 3) if val_ids is None else val_ids
    n_train = ids // 2
    n_test = ids - n_train if test_ids is None else test_ids
    n_extra = max(0, n_test - (ids - n_train))
    for sub in ("train", "query", "test", "masks") + (("val/query", "val/test") if n_val else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cams = [_rand_camera(rng) for _ in range(cameras)]
    catalogue = [_rand_outfit(rng) for _ in range(outfit_pool or max(12, ids // 3))]
    people = [_rand_identity(rng) for _ in range(ids)]
    vrng = np.random.default_rng((0x7A11D, seed))  # the validation people's own stream
    val_people = [_rand_identity(vrng) for _ in range(n_val)]
    xrng = np.random.default_rng((0x7E57, seed))  # the extra test people's own stream
    extra_people = [_rand_identity(xrng) for _ in range(n_extra)]
    worn: list[list[int]] = []
    n_written = {"train": 0, "query": 0, "test": 0, "val/query": 0, "val/test": 0}
    frame = [0]
    bar = tqdm(total=ids + n_extra + n_val, desc="synth", disable=not (progress and sys.stderr.isatty()))

    def person_images(pid: int, person: Identity, r, role: str) -> list[int]:
        """role: train | test (query + gallery, with masks) | val (query + gallery under val/)."""
        n_out = int(r.integers(2, 6))
        outfit_ids = r.choice(len(catalogue), size=n_out, replace=False)
        prefix = "val/" if role == "val" else ""
        for clothes_idx, oid in enumerate(outfit_ids):
            n_cams = int(r.integers(2, 5))
            view_cams = r.choice(cameras, size=n_cams, replace=False)
            for cam in view_cams:
                n_img = int(r.integers(images_per_view[0], images_per_view[1] + 1))
                for k in range(n_img):
                    img, mask = render(person, catalogue[oid], cams[cam], r, with_mask=True) if role == "test" else (
                        render(person, catalogue[oid], cams[cam], r), None)  # masks score test images only
                    # test / val: the first image of every view is a query, the rest gallery
                    split = "train" if role == "train" else prefix + ("query" if k == 0 else "test")
                    name = f"{pid:03d}_{clothes_idx + 1}_c{cam + 1}_{frame[0]:06d}.png"
                    img.save(out / split / name, compress_level=1)
                    if mask is not None:
                        mask.save(out / "masks" / name, compress_level=1)
                    n_written[split] += 1
                    frame[0] += 1
        bar.update(1)
        return [int(o) for o in outfit_ids]

    for pid, person in enumerate(people):
        # clothes label k (1-based in the name) is outfit worn[pid][k-1]
        worn.append(person_images(pid, person, rng, "train" if pid < n_train else "test"))
    worn += [person_images(ids + i, person, xrng, "test") for i, person in enumerate(extra_people)]
    val_worn = [person_images(ids + n_extra + i, person, vrng, "val") for i, person in enumerate(val_people)]
    bar.close()
    meta = {"generator": "scireid.synthetic", "version": GENERATOR_VERSION, "ids": ids, "seed": seed, "cameras": cameras,
            "outfit_catalogue": len(catalogue), "images": n_written,
            "test_ids": n_test, "identities": [asdict(p) for p in people + extra_people], "catalogue": [asdict(o) for o in catalogue], "outfits_worn": worn,
            "val_ids": n_val, "val_identities": [asdict(p) for p in val_people], "val_outfits_worn": val_worn}
    (out / "synthetic.json").write_text(json.dumps(meta, indent=1))
    log.info("synthetic dataset: %s images in %s", n_written, out)
    return out


def generate_complete(out: str | Path, ids: int = 120, seed: int = 0, val_ids: int | None = None,
                      test_ids: int | None = None) -> Path:
    """``generate`` into a staging folder beside OUT (``durable.stage_dir``), switched in as OUT only when
    complete: a full disk or a kill never leaves a folder that looks like a dataset (the staging folder holds
    an ``INCOMPLETE`` marker that every reader refuses, and the next run removes it). OUT must not exist or be
    empty."""
    from ..durable import discard, publish_dir, stage_dir
    from .records import DatasetError
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: already exists and is not an empty folder; choose another output folder")
    if ids < 2 or (val_ids is not None and val_ids < 0):
        raise DatasetError(f"--ids {ids} / --val-ids {val_ids}: expected at least 2 identities and val-ids >= 0")
    if test_ids is not None and test_ids < ids - ids // 2:
        raise DatasetError(f"--test-ids {test_ids}: expected at least ids - ids // 2 = {ids - ids // 2} (the test split "
                           f"only grows, from its own random stream)")
    tmp = None
    try:
        tmp = stage_dir(out)
        (tmp / INCOMPLETE).write_text("scireid synth was writing this folder\n")
        generate(tmp, ids=ids, seed=seed, progress=True, val_ids=val_ids, test_ids=test_ids)
        (tmp / INCOMPLETE).unlink()
    except OSError as e:
        if tmp is not None:
            discard(tmp)
        raise DatasetError(f"{out}: could not write the synthetic set ({e.strerror or e}); nothing was left behind") from None
    if out.exists():
        out.rmdir()
    return publish_dir(tmp, out)


def ensure_synthetic(root: str | Path, ids: int = 120, seed: int = 0, test_ids: int | None = None,
                     val_ids: int | None = None) -> Path:
    """Generate once; an existing dataset with other parameters is an error, not silently reused."""
    root = Path(root)
    meta_path = root / "synthetic.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        want = {"ids": ids, "seed": seed, "version": GENERATOR_VERSION,
                "test_ids": ids - ids // 2 if test_ids is None else test_ids,
                "val_ids": max(4, ids // 3) if val_ids is None else val_ids}
        have = {k: meta.get(k) for k in want}
        if have != want:
            from .records import DatasetError
            raise DatasetError(f"{root} holds a synthetic set with {' '.join(f'{k}={v}' for k, v in have.items())}, not "
                               f"{' '.join(f'{k}={v}' for k, v in want.items())}; choose another folder")
        return root
    return generate_complete(root, ids=ids, seed=seed, test_ids=test_ids, val_ids=val_ids)
