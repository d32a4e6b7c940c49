import numpy as np
import pytest
import torch

from scireid.data.loading import ImageDataset, ImageReadError, PKSampler, build_transforms, read_image
from scireid.data.records import Record


def test_pk_batches_and_determinism():
    pids = np.repeat(np.arange(10), [3, 5, 8, 4, 4, 6, 2, 9, 4, 4])
    s = PKSampler(pids, batch_size=16, num_instances=4, seed=1)
    idx = list(s)
    assert len(idx) == len(s) and len(idx) % 16 == 0 and len(idx) > 0
    for b in range(0, len(idx), 16):
        batch = pids[idx[b:b + 16]]
        assert len(np.unique(batch)) == 4 and all((batch == p).sum() == 4 for p in np.unique(batch))
    assert idx == list(PKSampler(pids, 16, 4, seed=1))
    s.set_epoch(1)
    assert list(s) != idx


def test_fewer_ids_than_p_still_yields_batches():
    pids = np.repeat(np.arange(3), 5)
    s = PKSampler(pids, batch_size=64, num_instances=4, seed=0)
    assert s.p == 3 and len(list(s)) > 0 and s.local_batch_size == 12


def test_ddp_shards_union_is_single_process_batch():
    pids = np.repeat(np.arange(12), 6)
    full = list(PKSampler(pids, 16, 4, seed=5))
    r0 = list(PKSampler(pids, 16, 4, seed=5, rank=0, world_size=2))
    r1 = list(PKSampler(pids, 16, 4, seed=5, rank=1, world_size=2))
    assert len(r0) == len(r1) == len(full) // 2
    for b in range(len(full) // 16):
        assert sorted(r0[b * 8:(b + 1) * 8] + r1[b * 8:(b + 1) * 8]) == sorted(full[b * 16:(b + 1) * 16])
    with pytest.raises(ValueError, match="cannot be split"):
        PKSampler(pids, 12, 4, world_size=2)


def test_resume_position_skips_done_batches():
    pids = np.repeat(np.arange(12), 6)
    s = PKSampler(pids, 16, 4, seed=2)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start_batch=2)
    assert list(s) == full[32:]


def test_transforms_and_reader(tmp_path):
    from PIL import Image
    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 20, 3), np.uint8)).save(p)
    tr = build_transforms(32, 16, [0.5] * 3, [0.5] * 3, train=True)
    te = build_transforms(32, 16, [0.5] * 3, [0.5] * 3, train=False)
    ds = ImageDataset([Record(str(p), 0, 0, 0)], te)
    x, pid, cam, clo, i = ds[0]
    assert x.shape == (3, 32, 16) and torch.allclose(x, torch.full_like(x, -1.0))
    assert tr(read_image(str(p))).shape == (3, 32, 16)
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(str(tmp_path / "missing.png"))


def test_seeded_augmentation_draws_only_from_the_seed(tmp_path):
    """(index, seed) keys: the same seed gives the same augmented tensor as seeding torch's global generator
    the classic way, and the caller's own random stream is left where it was."""
    from PIL import Image
    rng = np.random.default_rng(0)
    p = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(p)
    tr = build_transforms(64, 32, [0.5] * 3, [0.5] * 3, train=True, padding=4, erasing_prob=0.5)
    ds = ImageDataset([Record(str(p), 0, 0, 0)], tr)
    for seed in range(6):
        torch.manual_seed(123)
        got = ds[(0, seed)][0]
        after = torch.rand(1)
        torch.manual_seed(seed)
        ref = tr(read_image(str(p)))
        torch.manual_seed(123)
        assert torch.equal(got, ref) and torch.equal(after, torch.rand(1))
