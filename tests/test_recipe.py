"""The recipe against CLIP-ReID's own config files and code (Syliz517/CLIP-ReID).

Values cited from configs/person/cnn_clipreid.yml and configs/person/vit_clipreid.yml; the lr
formulas are re-derived here from CLIP-ReID's solver code (timm CosineLRScheduler stepped with
step(epoch) for epoch in 1..E; WarmupMultiStepLR stepped with step() at the start of each epoch).
"""
import math

import pytest
import torch

from scireid.config import load_config
from scireid.data.loading import build_transforms
from scireid.engine.schedule import cosine_with_warmup, warmup_multistep


@pytest.mark.parametrize("preset", ["ltcc", "prcc", "vcclothes", "market1501", "msmt17"])
def test_rn50_presets_use_cnn_clipreid_weights(preset):
    cfg = load_config(preset)
    assert cfg.model.arch == "RN50-quickgelu"
    assert cfg.stage2.id_weight == 1.0  # cnn_clipreid.yml ID_LOSS_WEIGHT: 1.0
    assert cfg.stage2.triplet_weight == 1.0 and cfg.stage2.i2t_weight == 1.0
    assert cfg.data.pixel_mean == [0.485, 0.456, 0.406]


def test_vit_backbone_takes_vit_clipreid_recipe(tmp_path):
    cfg = load_config("ltcc", ["model.arch=ViT-B-16-quickgelu"])
    # vit_clipreid.yml
    assert cfg.stage2.id_weight == 0.25
    assert cfg.data.pixel_mean == [0.5, 0.5, 0.5] and cfg.data.pixel_std == [0.5, 0.5, 0.5]
    assert cfg.stage1.epochs == 120 and cfg.stage1.lr == 3.5e-4 and cfg.stage1.weight_decay == 1e-4
    s2 = cfg.stage2
    assert (s2.lr, s2.warmup_factor, s2.warmup_epochs, s2.weight_decay, s2.epochs, s2.milestones, s2.bias_lr_factor) == \
        (5e-6, 0.1, 10, 1e-4, 60, [30, 50], 2.0)
    # the resolved values are what the saved config holds
    from scireid.config import save_config
    import yaml
    save_config(cfg, tmp_path / "c.yaml")
    saved = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert saved["stage2"]["lr"] == 5e-6 and saved["stage2"]["id_weight"] == 0.25
    # an explicit override still wins over the layer, and --backbone forces a layer
    assert load_config("ltcc", ["model.arch=ViT-B-16-quickgelu", "stage2.lr=1e-5"]).stage2.lr == 1e-5
    assert load_config("ltcc", backbone="vit").stage2.id_weight == 0.25
    assert load_config("ltcc").stage2.lr == 3.5e-4 and load_config("ltcc").stage2.milestones == [40, 70]


def clipreid_stage1_lr(epoch, base=3.5e-4, warmup_init=1e-5, warmup_t=5, t_initial=60, lr_min=1e-6):
    """timm CosineLRScheduler._get_lr(t) with warmup_prefix=False, cycle_limit=1, t_mul=1, decay_rate 0.1."""
    t = epoch
    if t < warmup_t:
        return warmup_init + t * (base - warmup_init) / warmup_t
    i = t // t_initial
    if i >= 1:
        return lr_min
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * (t % t_initial) / t_initial))


def clipreid_stage2_factor(last_epoch, milestones=(40, 70), gamma=0.1, warmup_factor=0.01, warmup_iters=10):
    f = 1.0
    if last_epoch < warmup_iters:
        alpha = last_epoch / warmup_iters
        f = warmup_factor * (1 - alpha) + alpha
    return f * gamma ** sum(1 for m in milestones if m <= last_epoch)


def test_stage1_lr_per_epoch_matches_clipreid():
    ours = [cosine_with_warmup(e + 1, 3.5e-4, 60, 5, 1e-5, 1e-6) for e in range(60)]  # engine's epoch index e
    ref = [clipreid_stage1_lr(t) for t in range(1, 61)]
    assert ours == pytest.approx(ref, rel=1e-12)
    assert ours[0] == pytest.approx(7.8e-5)  # not 1e-5
    assert ours[-1] == pytest.approx(1e-6)


def test_stage2_lr_per_epoch_matches_clipreid():
    ours = [warmup_multistep(e + 1, 10, 0.01, [40, 70], 0.1) for e in range(120)]
    ref = [clipreid_stage2_factor(t) for t in range(1, 121)]
    assert ours == pytest.approx(ref, rel=1e-12)
    assert ours[0] == pytest.approx(0.109)
    assert ours[9] == 1.0 and ours[38] == 1.0 and ours[39] == pytest.approx(0.1) and ours[69] == pytest.approx(0.01)


def test_tasks_step_lrs_with_clipreid_indexing(data_root, tmp_path):
    from conftest import tiny_cfg
    from scireid.data.source import load_dataset
    from scireid.engine.distributed import DistContext
    from scireid.engine.tasks import Stage1Task, Stage2Task
    from scireid.engine.trainer import model_spec
    from scireid.models.sci import build_model
    cfg = tiny_cfg(data_root, tmp_path / "r", "stage1.epochs=10", "stage1.warmup_epochs=5", "stage1.lr=3.5e-4",
                   "stage2.warmup_epochs=10", "stage2.lr=3.5e-4", "stage2.epochs=12", "stage2.milestones=[11]")
    ds = load_dataset(cfg)
    model = build_model(model_spec(cfg, ds))
    n = len(ds.train)
    t1 = Stage1Task(model, torch.zeros(n, model.visual.proj_dim), torch.tensor([r.pid for r in ds.train]),
                    torch.tensor([r.clothes for r in ds.train]), cfg, DistContext())
    n_batches = t1.set_epoch(0, 0)
    assert t1.opt.param_groups[0]["lr"] == pytest.approx(1e-5 + (3.5e-4 - 1e-5) / 5)
    # the last partial batch is trained too (CLIP-ReID's stage-1 loop keeps it)
    assert n_batches == math.ceil(n / 16) and sum(len(b) for b in t1.batches()) == n
    t2 = Stage2Task(model, ds, cfg, DistContext())
    t2.set_epoch(0, 0)
    assert t2.lr == pytest.approx(3.5e-4 * 0.109)
    t2.set_epoch(10, 0)  # the 11th epoch: the milestone 11 applies from it
    assert t2.lr == pytest.approx(3.5e-5)


def test_test_resize_is_bilinear_train_bicubic():
    import torchvision.transforms as T
    te = build_transforms(64, 32, [0.5] * 3, [0.5] * 3, train=False)
    tr = build_transforms(64, 32, [0.5] * 3, [0.5] * 3, train=True)
    assert te.transforms[0].interpolation == T.InterpolationMode.BILINEAR
    assert tr.transforms[0].interpolation == T.InterpolationMode.BICUBIC


def test_ablation_rows_match_the_paper():
    # eq. 21 is "the total loss for the SIM module" (CE + CAL): the +SIM row trains with CAL
    sim, sse, full, base = (load_config("ltcc", variant=v) for v in ("sim", "sse", "full", "baseline"))
    assert (sim.model.sim, sim.model.sse, sim.stage2.cal) == (True, False, True)
    assert (sse.model.sim, sse.model.sse, sse.stage2.cal) == (False, True, False)
    assert (full.model.sim, full.model.sse, full.stage2.cal) == (True, True, True)
    assert (base.model.sim, base.model.sse, base.stage2.cal) == (False, False, False)


@pytest.mark.parametrize("preset", ["ltcc", "prcc", "vcclothes", "market1501", "msmt17"])
@pytest.mark.parametrize("variant", [None, "baseline", "full"])
def test_real_data_presets_keep_clip_reids_raw_forms(preset, variant):
    """The scale-aware options are for the synthetic prior; real data trains as CLIP-ReID does."""
    cfg = load_config(preset, variant=variant)
    assert cfg.stage2.i2t_logits == "raw" and cfg.stage2.triplet_normalize is False
    assert cfg.stage2.triplet_margin == 0.3
    assert cfg.model.sim_residual == "absolute" and cfg.model.test_feature == "concat"
    assert cfg.data.padding == 10 and cfg.data.erasing_prob == 0.5  # CLIP-ReID's PADDING / RE_PROB at 256x128
    assert cfg.stage2.lr == 3.5e-4 and cfg.stage2.freeze_backbone_bn is False
    # SIM's gate as the paper reads eq. 17: one scalar starting at 0, moved at the stage's own lr (LTCC's 18k
    # steps give Adam room to open it to ~2); its own parameter group only drops the weight decay
    assert cfg.model.sim_gate == "scalar" and cfg.model.sim_gate_init == 0.0 and cfg.stage2.gate_lr_factor == 1.0


def test_default_stage2_loss_is_clipreids_formula(data_root, tmp_path):
    """With the defaults the real-data presets keep (raw i2t, raw triplet), the stage-2 loss is CLIP-ReID's
    make_loss: label-smoothed ID CE on both BN-neck logits + batch-hard triplet (margin 0.3, raw features) on
    the layer3 / layer4 / projected features + label-smoothed CE of p . T^T, recomputed here in float64."""
    import numpy as np
    from conftest import tiny_cfg
    from scireid.data.source import load_dataset
    from scireid.engine.distributed import DistContext
    from scireid.engine.tasks import Stage2Task
    from scireid.engine.trainer import model_spec
    from scireid.models.sci import SCIModel

    cfg = tiny_cfg(data_root, tmp_path / "r", "stage2.i2t_logits=raw", "stage2.triplet_normalize=false",
                   "stage2.cal=false", "model.sse=false", "model.sim=false", "stage2.freeze_backbone_bn=false")
    ds = load_dataset(cfg)
    torch.manual_seed(0)
    model = SCIModel(model_spec(cfg, ds))
    model.prototypes.normal_()
    task = Stage2Task(model, ds, cfg, DistContext())
    imgs = torch.randn(8, 3, 64, 32)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, terms, _ = task.step((imgs, pids, None, torch.zeros(8, dtype=torch.long), None), epoch=0)
    with torch.no_grad():
        out = model(imgs)  # train mode: the same batch statistics as the step used
    y = pids.numpy()

    def ce_smooth(z, eps=0.1):
        z = z.astype(np.float64)
        lp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        t = np.full_like(lp, eps / z.shape[1])
        t[np.arange(len(y)), y] += 1 - eps
        return float(-(t * lp).sum(1).mean())

    def triplet(f, m=0.3):
        f = f.astype(np.float64)
        d = np.sqrt(np.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 1e-12))
        same = y[:, None] == y[None]
        return float(np.maximum(np.where(same, d, -np.inf).max(1) - np.where(~same, d, np.inf).min(1) + m, 0).mean())
    o = {k: v.detach().numpy() for k, v in out.items()}
    ref = (ce_smooth(o["logits_g"]) + ce_smooth(o["logits_p"]) + sum(triplet(o[k]) for k in ("mid", "g", "p"))
           + ce_smooth(o["p"].astype(np.float64) @ model.prototypes.numpy().astype(np.float64).T))
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert terms["i2t"] == pytest.approx(ce_smooth(o["p"].astype(np.float64) @ model.prototypes.numpy().T), rel=1e-5)
