"""Faults found when scireid was tried as a new user would: each gets a one-line error or is survived."""
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import scireid
from scireid.cli import main
from scireid.config import ConfigError, load_config, validate_config
from scireid.engine.trainer import train
from conftest import tiny_cfg


def one_line_error(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def train_args(data_root, out, *extra):
    return ["train", "synthetic", "--out", str(out), f"data.root={data_root}", "model.arch=tiny-rn", "model.weights=none",
            "data.height=64", "data.width=32", "stage1.epochs=1", "stage2.epochs=1", "stage1.batch_size=16",
            "stage2.batch_size=16", "run.max_steps_per_epoch=1", "run.tensorboard=false", *extra]


@pytest.mark.parametrize("override,needle", [
    ("stage1.batch_size=0", "stage1.batch_size=0"), ("data.num_instances=0", "data.num_instances=0"),
    ("data.height=70", "multiples of 32"), ("data.height=0", "data.height=0"), ("stage2.lr=nan", "stage2.lr=nan"),
    ("stage2.epochs=-3", "stage2.epochs=-3"), ("stage2.epochs=0", "stage2.epochs=0"), ("run.device=tpu", "run.device"),
    ("stage2.batch_size=30", "multiple of data.num_instances=4"), ("stage2.batch_size=-4", "stage2.batch_size=-4"),
    ("stage2.lr_gamma=-3", "stage2.lr_gamma=-3"), ("model.sim_heads=0", "model.sim_heads=0"),
    ("stage2.eval_every=-2", "stage2.eval_every=-2"), ("run.seed=-5", "run.seed=-5"),
    ("run.stop_after_steps=-1", "run.stop_after_steps=-1"), ("stage2.i2t_logits=dot", "stage2.i2t_logits"),
    ("stage2.i2t_scale=0", "stage2.i2t_scale=0"), ("model.sim_residual=big", "model.sim_residual"),
])
def test_bad_settings_fail_before_any_training(data_root, tmp_path, capsys, override, needle):
    out = tmp_path / "run"
    one_line_error(capsys, train_args(data_root, out, override), needle)
    assert not (out / "stage1.safetensors").exists() and not (out / "metrics.jsonl").exists()


def test_moved_synthetic_data_is_refused_not_regenerated(data_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    out = tmp_path / "run"
    assert main(train_args(data, out)) == 0
    moved = tmp_path / "moved"
    data.rename(moved)
    one_line_error(capsys, ["eval", str(out)], "data moved or changed", "data.root=")
    assert not data.exists()  # nothing was generated at the old path
    assert main(["eval", str(out), f"data.root={moved}"]) == 0  # the same data at its new place is fine
    # other data at the recorded place is refused too
    other = tmp_path / "other"
    shutil.copytree(moved, other)
    next((other / "test").glob("*.png")).unlink()
    one_line_error(capsys, ["eval", str(out), f"data.root={other}"], "data moved or changed")
    # training never generates data
    one_line_error(capsys, train_args(tmp_path / "nowhere", tmp_path / "r2"), "scireid synth")


def test_run_directory_has_one_writer(data_root, tmp_path, capsys):
    from scireid.engine.rundir import RunLock
    out = tmp_path / "run"
    with RunLock(out):
        one_line_error(capsys, train_args(data_root, out), f"is in use by pid {os.getpid()}")
    assert main(train_args(data_root, out)) == 0  # released with the holder


def test_folder_with_user_files_is_refused(data_root, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text("my own results")
    one_line_error(capsys, train_args(data_root, mine), "not a scireid run")
    assert (mine / "results.json").read_text() == "my own results" and not (mine / "log.txt").exists()
    f = tmp_path / "a_file"
    f.write_text("x")
    one_line_error(capsys, train_args(data_root, f), "is a file")
    one_line_error(capsys, train_args(data_root, f / "under"), "is a file")
    one_line_error(capsys, ["demo", "--quick", "--out", str(f)], "is a file")


@pytest.mark.parametrize("kill_at", ["state_write", "first_rename", "second_rename", "cleanup"])
def test_kill_at_each_step_of_save_recovers(tmp_path, monkeypatch, kill_at):
    import scireid.engine.checkpoint as ck
    model = torch.nn.Linear(2, 2)
    d = tmp_path / "stage2" / "last"
    ck.save_state(d, model, {"epoch": 1}, {"epoch": 1})
    model.weight.data += 1
    calls = {"replace": 0}
    real_replace, real_rmtree, real_save = os.replace, shutil.rmtree, torch.save

    def replace(a, b):
        if Path(a).name.startswith(".last.") and str(a).endswith(".tmp") or str(b).endswith(".last.old") \
                or str(b).endswith("last"):
            calls["replace"] += 1
            if (kill_at == "first_rename" and calls["replace"] == 1) or (kill_at == "second_rename" and calls["replace"] == 2):
                raise KeyboardInterrupt("killed")
        return real_replace(a, b)

    def rmtree(p, *a, **k):
        if kill_at == "cleanup" and str(p).endswith(".last.old"):
            raise KeyboardInterrupt("killed")
        return real_rmtree(p, *a, **k)

    def save(obj, f, *a, **k):
        if kill_at == "state_write":
            raise KeyboardInterrupt("killed")
        return real_save(obj, f, *a, **k)
    import scireid.durable as durable
    monkeypatch.setattr(durable.os, "replace", replace)  # every folder swap goes through durable
    monkeypatch.setattr(durable.shutil, "rmtree", rmtree)
    monkeypatch.setattr(ck.torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_state(d, model, {"epoch": 2}, {"epoch": 2})
    monkeypatch.undo()
    assert ck.recover(d)  # a complete copy is back at `last`
    epoch = ck.load_state(d)["epoch"]
    assert epoch == (1 if kill_at in ("state_write", "first_rename") else 2)
    # the next save keeps working and leaves exactly one copy
    ck.save_state(d, model, {"epoch": 3}, {"epoch": 3})
    assert ck.load_state(d)["epoch"] == 3 and not (d.parent / ".last.old").exists()


def test_resume_after_kill_mid_swap_continues_not_restarts(data_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(data_root, out, "stage2.epochs=2"), stage="1")
    train(tiny_cfg(data_root, out, "stage2.epochs=2"), stage="2")
    # as if killed between the two renames of the final save: only the complete .old copy exists
    (out / "stage2" / "last").rename(out / "stage2" / ".last.old")
    train(tiny_cfg(data_root, out, "stage2.epochs=2"), stage="2", resume=True)
    assert (out / "stage2" / "last" / "state.pt").is_file() and not (out / "stage2" / ".last.old").exists()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"stage2"' in x]
    assert [r["epoch"] for r in recs] == [1, 2]  # nothing re-trained from epoch 1


def test_checkpoint_is_written_before_evaluation(data_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    first_test = sorted((data / "test").glob("*.png"))[0]
    first_test.write_bytes(first_test.read_bytes()[:40])  # truncated
    out = tmp_path / "run"
    one_line_error(capsys, train_args(data, out), first_test.name)
    assert json.loads(json.dumps(torch.load(out / "stage2" / "last" / "state.pt", weights_only=True)["epoch"])) == 1


def test_unreadable_files_give_one_line(data_root, tmp_path, capsys, full_run):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(os.urandom(256))
    one_line_error(capsys, train_args(data_root, tmp_path / "r1", f"model.weights={bad}"), "not a readable safetensors")
    z = tmp_path / "fake.pt"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("archive/constants.pkl", b"junk")
    one_line_error(capsys, train_args(data_root, tmp_path / "r2", f"model.weights={z}"), "not a TorchScript model")
    pickled = tmp_path / "p.pt"
    torch.save({"x": torch.zeros(1), "obj": zipfile.ZipInfo("a")}, pickled)
    err = one_line_error(capsys, train_args(data_root, tmp_path / "r3", f"model.weights={pickled}"), "weights-only")
    assert "weights_only=False" not in err and "weights_only" not in err.replace("weights-only", "")
    # a truncated trainer state on --resume
    run, _ = full_run
    cp = tmp_path / "copy"
    shutil.copytree(run, cp)
    (cp / "stage2" / "last" / "state.pt").write_bytes((cp / "stage2" / "last" / "state.pt").read_bytes()[:100])
    (cp / "results.json").unlink()
    cfg_args = ["train", str(cp / "config.yaml"), "--out", str(cp), "--resume"]
    one_line_error(capsys, cfg_args, "state.pt", "truncated or corrupt")
    # an empty saved config names the file
    (cp / "config.yaml").write_text("")
    one_line_error(capsys, cfg_args, str(cp / "config.yaml"), "empty")


def test_yaml_error_keeps_line_and_column(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  name: ltcc\n  root: [unclosed\n")
    one_line_error(capsys, ["train", str(p)], "line", "column")


def test_full_disk_says_so(tmp_path, monkeypatch):
    import scireid.engine.checkpoint as ck
    from scireid.durable import DiskFull
    model = torch.nn.Linear(2, 2)
    d = tmp_path / "last"
    ck.save_state(d, model, {}, {"epoch": 1})

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed; unexpected pos 64 vs 0")
    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(DiskFull, match=f"no space left.*previous checkpoint in {d} is intact"):
        ck.save_state(d, model, {}, {"epoch": 2})
    monkeypatch.undo()
    assert ck.load_state(d)["epoch"] == 1


def test_load_refuses_foreign_files_and_reads_stage2_last(full_run, data_root, tmp_path):
    from safetensors.torch import save_file
    from scireid.errors import CheckpointError
    foreign = tmp_path / "f.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a scireid checkpoint"):
        scireid.load(foreign)
    run, _ = full_run
    e = scireid.load(run / "stage2" / "last" / "model.safetensors", device="cpu")
    img = sorted((data_root / "test").glob("*.png"))[0]
    ref = scireid.load(run / "model_last.safetensors", device="cpu").embed([img])
    torch.testing.assert_close(e.embed([img]), ref)


def test_strict_json_and_file_permissions(tmp_path):
    from scireid.durable import atomic_write_json
    old = os.umask(0o022)
    try:
        p = atomic_write_json(tmp_path / "r.json", {"std": float("nan"), "x": [1.0, float("inf")]})
    finally:
        os.umask(old)
    assert json.loads(p.read_text()) == {"std": None, "x": [1.0, None]}
    assert "NaN" not in p.read_text()
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)


def test_engine_modules_form_no_import_circle():
    import ast
    from pathlib import Path
    src = Path(scireid.__file__).parent / "engine"
    imports = {}
    for f in src.glob("*.py"):
        mods = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                mods.add(node.module.split(".")[0])
        imports[f.stem] = mods
    assert "trainer" not in imports["evaluation"]  # dataset loading lives in scireid.data.source now

    def reach(a, seen):
        for b in imports.get(a, ()):
            if b in imports and b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen
    cycles = [m for m in imports if m in reach(m, set())]
    assert not cycles, cycles


def test_presets_command_says_where(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "ltcc" in out and "backbones" in out and "synthetic-clip" in out
    assert str(scireid.config.PRESET_DIR) in out


def test_validate_accepts_every_shipped_preset():
    for name in ("ltcc", "prcc", "vcclothes", "market1501", "msmt17"):
        for v in ("baseline", "sse", "sim", "full", "self_attention"):
            validate_config(load_config(name, ["model.weights=none"], variant=v))
    with pytest.raises(ConfigError, match="model.arch"):
        validate_config(load_config("ltcc", ["model.arch=RN51"]))
