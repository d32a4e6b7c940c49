"""The two-stage engine end to end on a tiny synthetic set with a tiny CLIP, on CPU."""
import json
import os
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import scireid
from scireid.cli import main
from scireid.config import load_config
from scireid.engine.trainer import train
from conftest import tiny_cfg  # noqa: F401  (shared with the analysis tests)
from scireid.errors import CheckpointError, ConfigError, TrainingDiverged


def test_end_to_end_files_and_protocols(full_run, capsys):
    out, res = full_run
    for f in ("config.yaml", "env.json", "log.txt", "metrics.jsonl", "stage1.safetensors", "stage1_features.safetensors",
              "model_last.safetensors", "model_best.safetensors", "results.json"):
        assert (out / f).exists(), f
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in recs] == ["stage1"] * 2 + ["stage2"] * 3
    s2 = [r for r in recs if r["stage"] == "stage2"]
    assert all(set(r["eval"]) == {"general", "cloth-changing"} for r in s2)
    # the clothes classifier trains from epoch index 0, the adversarial loss joins at 1
    assert "cal" not in s2[0] and "clothes_acc" in s2[0] and "cal" in s2[1] and "clothes_acc" in s2[1]
    assert s2[-1]["gamma"] != 0.0  # the SIM gate moved
    assert "S_id" in recs[0] and "sse" in recs[0]
    for proto in ("general", "cloth-changing"):
        r = res["last"][proto]
        assert all(np.isfinite(r[k]) for k in ("R-1", "R-5", "R-10", "R-20", "mAP", "mINP"))
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["seed"] == 1
    # scireid eval reproduces the stored last-epoch numbers from the checkpoint alone
    capsys.readouterr()
    assert main(["eval", str(out / "model_last.safetensors"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["cloth-changing"]["mAP"] == pytest.approx(res["last"]["cloth-changing"]["mAP"], abs=1e-6)


def test_load_and_embed(full_run, data_root):
    out, _ = full_run
    model = scireid.load(out, device="cpu")
    paths = sorted((data_root / "query").iterdir())[:3]
    f = model.embed([str(p) for p in paths])
    assert f.shape == (3, model.dim) and torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)
    from PIL import Image
    g = model.embed([Image.open(paths[0])])
    assert torch.allclose(g[0], f[0], atol=1e-6)


def test_resume_after_kill_is_bit_identical(data_root, tmp_path, full_run):
    ref_dir, _ = full_run
    out = tmp_path / "killed"
    cfg = tiny_cfg(data_root, out, "run.stop_after_steps=10", "run.checkpoint_steps=1")  # dies mid stage-2 epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    st = torch.load(out / "stage2" / "last" / "state.pt", weights_only=True)
    assert (st["epoch"], st["batch"]) == (1, 1)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_cfg(data_root, out))
    train(tiny_cfg(data_root, out), resume=True)
    a = load_file(str(ref_dir / "model_last.safetensors"))
    b = load_file(str(out / "model_last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_resume_of_a_finished_run_keeps_its_results(full_run, data_root, tmp_path):
    import shutil
    out, res = full_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = train(tiny_cfg(data_root, copy), resume=True)
    assert again["last"]["cloth-changing"]["mAP"] == pytest.approx(res["last"]["cloth-changing"]["mAP"], abs=1e-6)
    assert json.loads((copy / "results.json").read_text())["last"]


def test_resume_rejects_changed_config(full_run, data_root):
    out, _ = full_run
    with pytest.raises(ConfigError, match="model.sim_attention"):
        train(tiny_cfg(data_root, out, "model.sim_attention=self"), resume=True)


def test_stage2_checks_stage1_checkpoint(full_run, data_root, tmp_path):
    out, _ = full_run
    other = tmp_path / "other"
    other.mkdir()
    import shutil
    shutil.copy(out / "stage1.safetensors", other / "stage1.safetensors")
    with pytest.raises(CheckpointError, match="height=64 but the config gives 128"):
        train(tiny_cfg(data_root, other, "data.height=128"), stage="2")


def test_stage1_then_stage2_as_separate_commands(data_root, tmp_path):
    out = tmp_path / "split"
    assert main(["train", "synthetic", "--stage", "1", "--out", str(out), f"data.root={data_root}", "data.height=64",
                 "data.width=32", "stage1.epochs=1", "stage1.batch_size=16", "run.tensorboard=false"]) == 0
    assert (out / "stage1.safetensors").exists() and not (out / "model_last.safetensors").exists()
    assert main(["train", "synthetic", "--stage", "2", "--out", str(out), f"data.root={data_root}", "data.height=64",
                 "data.width=32", "stage1.epochs=1", "stage1.batch_size=16", "stage2.epochs=1", "stage2.batch_size=16",
                 "run.max_steps_per_epoch=2", "run.tensorboard=false"]) == 0
    assert (out / "model_last.safetensors").exists()
    # a second stage-2 run into the same folder would overwrite it: refused
    assert main(["train", "synthetic", "--stage", "2", "--out", str(out), f"data.root={data_root}"]) == 2


def test_nan_loss_stops_with_step_and_terms(data_root, tmp_path, monkeypatch):
    import scireid.engine.tasks as tasks
    real = tasks.supcon
    monkeypatch.setattr(tasks, "supcon", lambda *a, **k: real(*a, **k) * float("nan"))
    cfg = tiny_cfg(data_root, tmp_path / "nan", "stage1.epochs=1")
    with pytest.raises(TrainingDiverged, match=r"stage1 epoch 1 step 1: loss is nan \(i2t=nan.*last good checkpoint: none yet"):
        train(cfg, stage="1")


def test_baseline_variant_trains(data_root, tmp_path):
    cfg = load_config("synthetic", variant="baseline")
    base = tiny_cfg(data_root, tmp_path / "b", "model.sse=false", "model.sim=false", "stage2.cal=false",
                    "stage1.contrastive_text=id", "stage2.epochs=1", "stage1.epochs=1")
    assert (cfg.model.sse, cfg.model.sim, cfg.stage2.cal) == (base.model.sse, base.model.sim, base.stage2.cal)
    res = train(base)
    assert res["last"]["general"]["num_valid"] > 0
    sd = load_file(str(tmp_path / "b" / "model_last.safetensors"))
    assert not any(k.startswith(("sim.", "clothes_prompts.")) for k in sd)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# SIM's gate closed, as the paper starts it: with it open, Adam's sign-normalised step turns float-summation-order
# noise in near-zero gradients into weight differences of up to 2 x lr per step, which says nothing about DDP
DDP_ARGS = ("run.device=cpu", "stage2.epochs=2", "model.sim_gate_init=0")


def _ddp_worker(rank, world, port, root, out, q):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    res = train(tiny_cfg(root, out, *DDP_ARGS))
    if rank == 0:
        q.put(json.dumps(res))
    import torch.distributed as dist
    dist.destroy_process_group()


def test_ddp_two_process_gloo_matches_single_process(data_root, tmp_path):
    import torch.multiprocessing as mp
    torch.set_num_threads(1)
    single = train(tiny_cfg(data_root, tmp_path / "single", *DDP_ARGS))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, str(data_root), str(tmp_path / "ddp"), q))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:  # a collective that one rank skips would hang forever: bound it
        p.join(timeout=240)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.terminate()
    assert not alive, "DDP workers hung"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    ddp = json.loads(q.get(timeout=5))
    for proto in ("general", "cloth-changing"):
        for k in ("R-1", "mAP"):
            assert ddp["last"][proto][k] == pytest.approx(single["last"][proto][k], abs=0.5), (proto, k)
    a = load_file(str(tmp_path / "single" / "model_last.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model_last.safetensors"))
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-3, worst


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_backbone_bn_keeps_pretrained_statistics(data_root, tmp_path, frozen):
    from scireid.data.source import load_dataset
    from scireid.engine.distributed import DistContext
    from scireid.engine.tasks import Stage2Task
    from scireid.engine.trainer import model_spec
    from scireid.models.sci import build_model
    cfg = tiny_cfg(data_root, tmp_path / "r", f"stage2.freeze_backbone_bn={str(frozen).lower()}")
    ds = load_dataset(cfg)
    model = build_model(model_spec(cfg, ds))
    task = Stage2Task(model, ds, cfg, DistContext())
    task.set_epoch(0, 0)
    stats = lambda: {n: b.clone() for n, b in model.visual.named_buffers() if n.endswith("running_mean")}  # noqa: E731
    before = stats()
    loss, _, _ = task.step(next(task.batches()), 0)
    loss.backward()
    after = stats()
    assert before and all(torch.equal(before[n], after[n]) for n in before) == frozen
    # the neck BN (not the CLIP trunk) keeps training either way
    assert model.bottleneck.training


def test_each_run_logs_only_to_its_own_log_txt(data_root, tmp_path):
    """Two runs in one process (the demo's workers, a notebook): the first run's log.txt stops with the first."""
    import logging
    over = ("model.sse=false", "model.sim=false", "stage2.cal=false", "stage1.epochs=1", "stage2.epochs=1",
            "stage2.eval_every=0")
    train(tiny_cfg(data_root, tmp_path / "a", *over))
    first = (tmp_path / "a" / "log.txt").read_text()
    train(tiny_cfg(data_root, tmp_path / "b", *over))
    assert (tmp_path / "a" / "log.txt").read_text() == first and str(tmp_path / "b") in (tmp_path / "b" / "log.txt").read_text()
    assert not [h for h in logging.getLogger("scireid").handlers if isinstance(h, logging.FileHandler)]
