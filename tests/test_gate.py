"""SIM's gate (eq. 17): initial value, scalar or per channel, its own parameter group."""
import pytest
import torch

from scireid.config import ConfigError, validate_config
from scireid.models.sci import ModelSpec, SCIModel
from scireid.models.sim import SIM


@pytest.mark.parametrize("gate,shape", [("scalar", ()), ("channel", (16,))])
def test_gate_shape_and_initial_value_set_the_update(gate, shape):
    torch.manual_seed(0)
    sim = SIM(8, 16, gate=gate, gate_init=0.25).double()
    assert tuple(sim.gamma.shape) == shape and torch.all(sim.gamma == 0.25)
    p, z, protos = torch.randn(3, 16).double(), torch.randn(3, 8, 4, 2).double(), torch.randn(5, 16).double()
    r = sim.cross(protos, z, p)
    assert torch.allclose(sim.update(p, z, protos), p + 0.25 * r)  # eq. 17 by hand
    if gate == "channel":  # each channel of p has its own gate
        sim.gamma.data = torch.arange(16).double()
        assert torch.allclose(sim.update(p, z, protos), p + torch.arange(16).double() * r)
    assert sim.gate_value() == pytest.approx(float(sim.gamma.detach().mean()))


def test_sim_share_is_measured_in_forward():
    torch.manual_seed(0)
    m = SCIModel(ModelSpec("tiny-rn", 4, 6, 64, 32, sse=False, sim=True, sim_gate_init=0.3,
                           sim_residual="relative")).eval()
    out = m(torch.randn(2, 3, 64, 32))
    f = m.image_features(torch.randn(2, 3, 64, 32))
    assert torch.allclose(f["p"], f["p0"] + 0.3 * f["p0"].norm(dim=1, keepdim=True) * (f["p"] - f["p0"]) /
                          (f["p"] - f["p0"]).norm(dim=1, keepdim=True), atol=1e-5)
    # relative residual: |p' - p| = 0.3 |p|, so the share |p' - p| / |p'| is 0.3 |p| / |p'|
    assert out["sim_share"].shape == (2,) and torch.all(out["sim_share"] > 0)
    closed = SCIModel(ModelSpec("tiny-rn", 4, 6, 64, 32, sse=False, sim=True)).eval()
    assert torch.all(closed(torch.randn(2, 3, 64, 32))["sim_share"] == 0)  # the paper's closed gate moves nothing


def test_gate_has_its_own_group_lr_and_no_weight_decay(data_root, tmp_path):
    from conftest import tiny_cfg
    from scireid.data.source import load_dataset
    from scireid.engine.distributed import DistContext
    from scireid.engine.tasks import Stage2Task
    from scireid.engine.trainer import model_spec
    from scireid.models.sci import build_model

    cfg = tiny_cfg(data_root, tmp_path / "r", "stage2.gate_lr_factor=50", "model.sim_gate=channel")
    ds = load_dataset(cfg)
    model = build_model(model_spec(cfg, ds))
    task = Stage2Task(model, ds, cfg, DistContext())
    groups = [g for g in task.opt.param_groups if any(p is model.sim.gamma for p in g["params"])]
    assert len(groups) == 1 and groups[0]["params"] == [model.sim.gamma]
    assert groups[0]["weight_decay"] == 0.0 and groups[0]["base_lr"] == pytest.approx(cfg.stage2.lr * 50)
    others = [g for g in task.opt.param_groups if g is not groups[0]]
    assert all(g["weight_decay"] == cfg.stage2.weight_decay for g in others)
    task.set_epoch(cfg.stage2.warmup_epochs + 1, 0)
    assert groups[0]["lr"] == pytest.approx(50 * others[0]["lr"])
    # one Adam step moves the gate by about its own lr, whatever its gradient's scale
    before = model.sim.gamma.detach().clone()
    model.sim.gamma.grad = torch.full_like(model.sim.gamma, 1e-6)
    for p in model.parameters():
        if p is not model.sim.gamma and p.requires_grad:
            p.grad = None
    task.opt.step()
    assert torch.allclose(before - model.sim.gamma.detach(), torch.full_like(before, groups[0]["lr"]), rtol=0.02)


def test_baseline_has_no_gate_group(data_root, tmp_path):
    from conftest import tiny_cfg
    from scireid.data.source import load_dataset
    from scireid.engine.distributed import DistContext
    from scireid.engine.tasks import Stage2Task
    from scireid.engine.trainer import model_spec
    from scireid.models.sci import build_model

    cfg = tiny_cfg(data_root, tmp_path / "r", "model.sim=false", "model.sse=false")
    ds = load_dataset(cfg)
    task = Stage2Task(build_model(model_spec(cfg, ds)), ds, cfg, DistContext())
    assert len(task.opt.param_groups) == 2  # CLIP-ReID's two groups, unchanged


@pytest.mark.parametrize("bad", ["stage2.gate_lr_factor=0", "model.sim_gate=vector", "model.sim_gate_init=nan"])
def test_gate_options_are_validated(bad):
    from scireid.config import load_config
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        validate_config(load_config("synthetic", [bad]))
