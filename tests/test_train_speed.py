"""Issue #26 on CPU: the training step reads nothing back from the device, the engine reads the loss every
``run.sync_every`` steps and still stops at the first non-finite one, before any checkpoint holds it."""
from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import tiny_cfg
from scireid.data.source import load_dataset
from scireid.engine.distributed import DistContext
from scireid.engine.engine import Engine, StepMeter
from scireid.engine.tasks import Stage1Task, Stage2Task
from scireid.engine.trainer import model_spec
from scireid.errors import TrainingDiverged
from scireid.models.sci import SCIModel

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


@contextlib.contextmanager
def host_reads(forbid: bool):
    """Count (or refuse) every way a tensor's value reaches Python: on a GPU each of them waits for the device."""
    count = {"n": 0}
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name):
        real = saved[name]

        def read(self, *a, **k):
            if forbid:
                raise AssertionError(f"Tensor.{name} in the hot path")
            count["n"] += 1
            return real(self, *a, **k)
        return read
    for name in READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield count
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)


def test_stage_steps_read_nothing_from_the_device(data_root, tmp_path):
    cfg = tiny_cfg(data_root, tmp_path / "r", "stage2.cal_start_epoch=0", "stage2.cal_classifier_start_epoch=0")
    ds = load_dataset(cfg)
    torch.manual_seed(0)
    model = SCIModel(model_spec(cfg, ds))
    model.prototypes.normal_()
    task = Stage2Task(model, ds, cfg, DistContext())
    engine = Engine(tmp_path, DistContext(), amp=False)
    pids = torch.arange(4).repeat_interleave(4)
    batch = (torch.randn(16, 3, 64, 32), pids, torch.zeros(16, dtype=torch.long), pids * 2, torch.arange(16))
    task.set_epoch(0, 0)
    with host_reads(forbid=True):  # SIM, CAL's classifier update and adversarial loss, the optimizer step
        loss, terms, n = task.step(batch, 0)
        engine._backward_step(task, loss, None)
    assert {"cal", "clothes_acc_within", "sim_share"} <= set(terms) and n == 16
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in terms.values())

    feats = torch.randn(len(ds.train), model.prototypes.shape[1])
    s1 = Stage1Task(model, feats, torch.tensor([r.pid for r in ds.train]), torch.tensor([r.clothes for r in ds.train]),
                    cfg, DistContext())
    s1.set_epoch(0, 0)
    idx = next(iter(s1.batches()))
    with host_reads(forbid=True):  # prompts, SSE's orthogonalisation and its two cosine terms
        loss, terms, _ = s1.step(idx, 0)
        engine._backward_step(s1, loss, None)
    assert {"sse", "S_id", "S_clo"} <= set(terms)


class _Steps:
    """A task of 12 steps whose loss turns non-finite at step ``bad`` (0-based), or never."""
    name, epochs = "toy", 1

    def __init__(self, bad: int | None):
        self.model = torch.nn.Linear(2, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.bad = bad

    def optimizers(self):
        return {"main": self.opt}

    def set_epoch(self, epoch, start_batch):
        return 12

    def batches(self):
        return iter(range(12))

    def step(self, i, epoch):
        loss = self.model(torch.ones(1, 2)).sum() ** 2
        if i == self.bad:
            loss = loss * float("nan")
        return loss, {"sq": loss.detach(), "i": torch.tensor(float(i))}, 4

    def meta(self):
        return {"stage": "toy"}

    def end_epoch(self, epoch):
        return {}


def test_engine_reads_the_loss_every_sync_every_steps_and_names_the_first_bad_one(tmp_path):
    def run(sync_every: int, bad=None, checkpoint_steps: int = 0):
        engine = Engine(tmp_path / f"r{sync_every}-{bad}-{checkpoint_steps}", DistContext(), amp=False, checkpoint_steps=checkpoint_steps)
        engine.sync_every = sync_every  # what a GPU run gets (CPU reads every step: free there)
        task = _Steps(bad)
        with host_reads(forbid=False) as reads:
            engine.run(task)
        return reads["n"], engine

    every, _ = run(1)
    sparse, _ = run(6)
    # reads at 2 of the 12 steps instead of at all 12 (the epoch's end, the checkpoint, reads the same in both)
    assert every - sparse >= 12 - 2
    # the first non-finite step is named with its own terms, even when it is read 4 steps later
    with pytest.raises(TrainingDiverged, match=r"toy epoch 1 step 3: loss is nan \(sq=nan, i=2\)"):
        run(6, bad=2)
    # a checkpoint inside the epoch is preceded by a read: one after the bad step is never written
    with pytest.raises(TrainingDiverged, match="step 3"):
        run(6, bad=2, checkpoint_steps=4)
    assert not (tmp_path / "r6-2-4" / "toy" / "last").exists()
    _, engine = run(6, checkpoint_steps=4)  # the same without the bad step: checkpoints at steps 4 and 8, and the end
    assert (tmp_path / "r6-None-4" / "toy" / "last" / "state.pt").exists()


def test_step_meter_means_match_the_terms():
    m = StepMeter(torch.device("cpu"))
    for i in range(5):
        m.add(torch.tensor(float(i)), {"a": torch.tensor(i * 2.0), "b": 0.5}, i)
    assert m.means() == {"a": 4.0, "b": 0.5} and m.first_nonfinite() is None
    with pytest.raises(ValueError, match="changed within an epoch"):
        m.add(torch.tensor(1.0), {"a": torch.tensor(1.0)}, 5)


@pytest.mark.parametrize("size,padding,erasing", [((32, 16), 3, 0.5), ((24, 12), 0, 1.0), ((64, 32), 2, 0.0)])
def test_device_augmentation_equals_the_pil_path_bit_for_bit(tmp_path, size, padding, erasing):
    """Decoded once, augmented as a batch: every image equals the PIL transform's output from the same seed."""
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader

    from scireid.data.device_augment import DeviceAugment, Draws, collate_draws, decode_all
    from scireid.data.loading import ImageDataset, build_transforms
    from scireid.data.records import Record

    rng = np.random.default_rng(0)
    records = []
    for k in range(12):  # LTCC's naming; sizes unlike the input, so the bicubic resize does work
        path = tmp_path / f"{k:03d}_{k % 3:02d}_c{k % 4 + 1}_{k:06d}.png"
        Image.fromarray(rng.integers(0, 256, (40 + k, 19 + k % 5, 3), dtype=np.uint8)).save(path)
        records.append(Record(str(path), k // 2, k % 4, k))
    tf = build_transforms(*size, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], True, 0.5, padding, erasing)
    keys = [(k % 12, 1000 + 7919 * k) for k in range(48)]  # each image several times, with other seeds
    pil = torch.stack([ImageDataset(records, tf)[key][0] for key in keys])
    augment = DeviceAugment(decode_all(records, tf, torch.device("cpu")), tf)
    loader = DataLoader(Draws(records, tf), batch_size=16, sampler=keys, collate_fn=collate_draws)
    dev = torch.cat([augment(draws) for draws, *_ in loader])
    assert torch.equal(dev, pil)
    draws = [Draws(records, tf)[key][0] for key in keys]
    assert 0 < sum(d[1] for d in draws) < len(keys)  # both flipped and unflipped images were compared
    if padding:
        assert len({(d[2], d[3]) for d in draws}) > 5  # crop offsets vary
    erased = sum(d[5].numel() > 0 for d in draws)
    assert (erased == 0) if not erasing else (erased > len(keys) // 3)  # erasing boxes drawn and filled with noise


def test_device_augmentation_trains_like_the_pil_path(data_root, tmp_path):
    """The same losses, step for step, from the cached path as from PIL (config data.device_augment)."""
    losses = {}
    for on in (False, True):
        cfg = tiny_cfg(data_root, tmp_path / f"r{on}", f"data.device_augment={str(on).lower()}", "data.padding=2",
                       "data.erasing_prob=0.5", "stage2.cal=false")
        ds = load_dataset(cfg)
        torch.manual_seed(0)
        model = SCIModel(model_spec(cfg, ds))
        task = Stage2Task(model, ds, cfg, DistContext())
        task.set_epoch(0, 0)
        losses[on] = [task.step(batch, 0)[0].item() for _, batch in zip(range(2), task.batches())]
    assert losses[True] == losses[False]


def test_sse_off_diagonal_mean_is_the_boolean_mask_mean_bit_for_bit():
    """S_clo (eq. 8) without boolean indexing (a GPU sync) gives exactly the value boolean indexing gives."""
    from scireid.models.sse import sse_terms
    torch.manual_seed(0)
    for b in (2, 3, 17, 64):
        t_id, t_clo = torch.randn(b, 12), torch.randn(b, 12)
        t_ort = t_id - 0.3 * t_clo
        cos = torch.nn.functional.normalize(t_ort, dim=-1) @ torch.nn.functional.normalize(t_clo, dim=-1).T
        assert torch.equal(sse_terms(t_id, t_clo, t_ort)[1], cos[~torch.eye(b, dtype=torch.bool)].mean())


@pytest.mark.slow  # about a minute: inductor compiles both stages' graphs on CPU
def test_compile_trains_both_stages_like_eager_and_saves_the_same_names(data_root, tmp_path, monkeypatch):
    """``run.compile`` compiles stage 1's text encoder and stage 2's trunk; the losses follow eager's to rounding,
    and the weights file has the eager model's names (a compiled run's checkpoint loads into an eager model)."""
    from safetensors.torch import load_file

    from scireid.engine.engine import read_metrics
    from scireid.engine.trainer import train

    compiled, real_compile = [], torch.compile

    def recording_compile(fn, **kw):
        compiled.append(getattr(fn, "__name__", type(fn).__name__))
        return real_compile(fn, **kw)
    monkeypatch.setattr(torch, "compile", recording_compile)
    runs = {}
    for on in ("false", "true"):
        out = tmp_path / f"compile-{on}"
        train(tiny_cfg(data_root, out, f"run.compile={on}", "stage2.eval_every=0"))
        runs[on] = ([r for r in read_metrics(out / "metrics.jsonl")], load_file(str(out / "model_last.safetensors")))
    assert compiled == ["TextEncoder", "trunk"]  # what the compiled run compiled, stage by stage
    (eager, w_eager), (comp, w_comp) = runs["false"], runs["true"]
    assert [(r["stage"], r["epoch"]) for r in comp] == [(r["stage"], r["epoch"]) for r in eager]
    keys = {"i2t", "t2i", "sse", "id", "tri", "cal"}
    compared = 0
    for a, b in zip(eager, comp):
        for k in keys & set(a):
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-4), (a["stage"], a["epoch"], k)
            compared += 1
    assert compared >= 14  # stage 1's three terms twice, stage 2's id, tri three times and cal twice
    assert w_comp.keys() == w_eager.keys()
    for k in w_eager:
        torch.testing.assert_close(w_comp[k], w_eager[k], rtol=1e-2, atol=1e-3)
