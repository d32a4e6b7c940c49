"""Hostile inputs and tampered files: each gets exit 2 and one line naming the option or file, before any file
is written; nothing non-finite is ever written; refused or stopped commands leave nothing half-made."""
import json
import shutil

import numpy as np
import pytest

from scireid.cli import main
from test_faults import one_line_error, train_args


@pytest.mark.parametrize("override,needle", [
    ("stage1.lr=1e30", "stage1.lr"), ("stage2.lr=1e30", "stage2.lr"), ("stage2.triplet_margin=-5", "triplet_margin"),
    ("stage2.cal_start_epoch=-7", "cal_start_epoch"), ("model.n_ctx=500", "model.n_ctx=500"),
    ("stage2.gate_lr_factor=0", "gate_lr_factor"), ("model.sim_gate=vector", "model.sim_gate"),
    ("run.device=cuda:7", "run.device"), ("stage2.eval_every=-1", "stage2.eval_every"),
])
def test_nonsense_settings_are_refused_before_any_file(data_root, tmp_path, capsys, override, needle):
    out = tmp_path / "run"
    one_line_error(capsys, train_args(data_root, out, override), needle)
    assert not out.exists()  # not even a folder holding only the lock


def test_binary_yaml_and_eval_overrides(full_run, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    one_line_error(capsys, ["train", str(bad), "--out", str(tmp_path / "r")], "bad.yaml", "UTF-8")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    one_line_error(capsys, ["train", str(tmp_path / "list.yaml"), "--out", str(tmp_path / "r")], "mapping")
    run = str(full_run[0])
    one_line_error(capsys, ["eval", run, "eval.batch_size=0"], "eval.batch_size=0")
    one_line_error(capsys, ["eval", run, "run.device=tpu"], "run.device")


def test_synth_bad_seed_leaves_nothing(tmp_path, capsys):
    one_line_error(capsys, ["synth", str(tmp_path / "s"), "--seed", "-1"], "--seed -1")
    assert not list(tmp_path.iterdir())


def test_stopped_synth_output_is_refused_by_every_reader(tmp_path, capsys, monkeypatch):
    import scireid.data.synthetic as syn

    def killed(out, **kw):
        (out / "train").mkdir(parents=True)
        raise KeyboardInterrupt
    monkeypatch.setattr(syn, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        syn.generate_complete(tmp_path / "s", ids=4, seed=0)
    (partial,) = tmp_path.glob(".s.*.tmp")  # durable.stage_dir's staging folder, beside the target
    assert partial.is_dir() and not (tmp_path / "s").exists()
    one_line_error(capsys, ["datasets", "check", "ltcc", str(partial)], "unfinished", "scireid synth")
    one_line_error(capsys, ["datasets", "stats", "synthetic", str(partial)], "unfinished")
    out = tmp_path / "r"
    one_line_error(capsys, train_args(partial, out), "unfinished")


@pytest.fixture
def inputs(tmp_path, data_root):
    d = tmp_path / "in"
    d.mkdir()
    (d / "binary.txt").write_bytes(bytes(range(256)) * 4)
    img = sorted((data_root / "query").glob("*.png"))[0]
    (d / "big.csv").write_text(f"path,pid\n{img},1e400\n")
    (d / "latin1.csv").write_bytes(f"path,pid\n{img},1\n# caf\xe9\n".encode("latin-1"))
    (d / "afile").write_text("not a folder")
    bad = d / "bad_images"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.png").write_bytes(b"not a png")
    return d, img


def test_embed_inputs_and_outputs_are_checked(full_run, inputs, tmp_path, capsys):
    d, img = inputs
    run = str(full_run[0])
    one_line_error(capsys, ["embed", run, str(d / "binary.txt"), "--out", str(tmp_path / "f.npy")], "binary.txt", "binary")
    one_line_error(capsys, ["embed", run, str(d / "big.csv"), "--out", str(tmp_path / "f.npy")], "line 2", "integer")
    one_line_error(capsys, ["embed", run, str(d / "latin1.csv"), "--out", str(tmp_path / "f.npy")], "latin1.csv",
                   "UTF-8")
    one_line_error(capsys, ["embed", run, str(img), "--out", str(d / "afile" / "x.npy")], "is a file")
    one_line_error(capsys, ["embed", run, str(img), "--out", str(d)], "is a folder")
    # nothing to do is an error, and no empty output is written
    one_line_error(capsys, ["embed", run, str(d / "bad_images"), "--out", str(tmp_path / "e.npy")], "none of the 3")
    assert not any(p.name.startswith("e.npy") for p in tmp_path.iterdir())
    assert not list(d.glob(".*.tmp"))


def test_search_inputs_outputs_and_huge_topk(full_run, data_root, inputs, tmp_path, capsys):
    d, img = inputs
    run = str(full_run[0])
    idx = tmp_path / "idx"
    assert main(["index", "build", run, str(data_root / "test"), "--out", str(idx)]) == 0
    one_line_error(capsys, ["search", str(idx), str(img), "--html", str(d / "afile" / "x.html")], "is a file")
    one_line_error(capsys, ["search", str(idx), str(d / "binary.txt")], "binary")
    one_line_error(capsys, ["search", str(idx), str(img), "--topk", str(10 ** 12), "--exclude-same-camera"], "--topk")
    capsys.readouterr()  # the largest allowed top-k, far beyond the gallery, allocates for the gallery only
    assert main(["search", str(idx), str(img), "--topk", "100000", "--exclude-same-camera", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < len(res[0]["results"]) <= len(list((data_root / "test").glob("*.png")))
    # an add of unreadable images writes no new version; the same inputs are never added twice
    before = (idx / "CURRENT").read_text()
    one_line_error(capsys, ["index", "add", str(idx), str(d / "bad_images")], "none of the 3")
    assert (idx / "CURRENT").read_text() == before
    one_line_error(capsys, ["index", "add", str(idx), str(data_root / "test")], "already added")


def test_tampered_index_json_is_refused(full_run, data_root, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert main(["index", "build", str(full_run[0]), str(data_root / "query"), "--out", str(idx)]) == 0
    meta_path = idx / (idx / "CURRENT").read_text().strip() / "index.json"
    meta = json.loads(meta_path.read_text())
    for key, value in (("kind", "pca-flat"), ("count", meta["count"] + 1), ("params", {"k_factor": 9})):
        meta_path.write_text(json.dumps(meta | {key: value}))
        one_line_error(capsys, ["search", str(idx), str(next((data_root / "query").glob("*.png")))], "index.json")


def test_tampered_weights_header_is_refused(full_run, tmp_path, capsys, data_root):
    other = tmp_path / "run"
    shutil.copytree(full_run[0], other, ignore=shutil.ignore_patterns(".scireid.lock"))
    for name in ("model_best.safetensors", "model_last.safetensors"):
        p = other / name
        raw = p.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = raw[8:8 + n].decode()
        assert "0.48145466" in header or "0.485" in header
        edited = header.replace("0.48145466", "1.48145466", 1) if "0.48145466" in header else header.replace(
            "0.485", "1.485", 1)
        p.write_bytes(raw[:8] + edited.encode() + raw[8 + n:])  # same size: only the checksum can tell
    one_line_error(capsys, ["embed", str(other), str(data_root / "query"), "--out", str(tmp_path / "f.npy")],
                   "header metadata")


def test_non_finite_weights_never_give_features(full_run, data_root, tmp_path, capsys):
    import torch

    from scireid.engine.checkpoint import read_meta, save_weights
    from scireid.models.sci import SCIModel, spec_from_meta
    other = tmp_path / "run"
    shutil.copytree(full_run[0], other, ignore=shutil.ignore_patterns(".scireid.lock"))
    for name in ("model_best.safetensors", "model_last.safetensors"):
        meta = read_meta(other / name)
        model = SCIModel(spec_from_meta(meta, name))
        with torch.no_grad():
            model.bottleneck_proj.weight.fill_(float("nan"))
            for p in model.visual.parameters():
                p.fill_(float("nan"))
        save_weights(other / name, model, {k: v for k, v in meta.items() if not k.endswith("sha256")})
    one_line_error(capsys, ["embed", str(other), str(data_root / "query"), "--out", str(tmp_path / "f.npy")],
                   "non-finite")
    assert not (tmp_path / "f.npy").exists()


def test_export_options_are_checked(full_run, tmp_path, capsys):
    run = str(full_run[0])
    one_line_error(capsys, ["export", run, "--out", str(tmp_path / "m.onnx"), "--input-size", "3x2"], "--input-size 3x2")
    one_line_error(capsys, ["export", run, "--out", str(tmp_path / "m.onnx"), "--for", "boxmot", "--input-norm", "model"],
                   "drop --input-norm model")
    one_line_error(capsys, ["export", run, "--out", str(tmp_path / "m.onnx"), "--opset", "5"], "--opset 5")
    assert not (tmp_path / "m.onnx").exists()


def test_analysis_labels_must_match_runs(full_run, tmp_path, capsys):
    one_line_error(capsys, ["analyze", "tsne", str(full_run[0]), "--labels", "a", "b", "--out", str(tmp_path)],
                   "--labels")


def test_unfinished_run_says_which_checkpoint_it_uses(full_run, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    shutil.copytree(full_run[0], run, ignore=shutil.ignore_patterns(".scireid.lock"))
    (run / "model_last.safetensors").unlink()
    import logging
    for argv in (["eval", str(run)], ["export", str(run), "--out", str(tmp_path / "m.onnx")]):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="scireid"):
            assert main(argv) == 0
        assert any("unfinished" in r.message and "model_best" in r.message for r in caplog.records), argv[0]


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch, capsys):
    import scireid.cli as cli

    def boom(a):
        raise RuntimeError("deep inside\nsecond line")
    monkeypatch.setattr(cli, "cmd_presets", boom)
    capsys.readouterr()
    assert main(["presets"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "deep inside" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["--debug", "presets"])


def test_analysis_cache_follows_the_checkpoint_content(full_run, tmp_path):
    from scireid.analysis.common import load_run
    run = tmp_path / "run"
    shutil.copytree(full_run[0], run, ignore=shutil.ignore_patterns(".scireid.lock"))
    a = load_run(run / "model_last.safetensors", device="cpu")
    fa = a.test_features()
    shutil.copy(run / "stage1.safetensors", run / "x.safetensors")
    # another checkpoint's content under the same name gets its own cache entry
    shutil.copy(full_run[0] / "model_best.safetensors", run / "model_last.safetensors")
    caches = list((run / "analysis" / "cache").glob("model_last-*"))
    assert len(caches) == 1
    b = load_run(run / "model_last.safetensors", device="cpu")
    b.test_features()
    assert len(list((run / "analysis" / "cache").glob("model_last-*"))) == 2 or np.allclose(
        fa.numpy(), b.test_features().numpy())


def _numeric_options():
    """(subcommand path, option string, dest, type) of every numeric option the CLI has."""
    return [(path, opt, dest, typ) for path, opt, dest, kind, positional, typ in _all_options() if kind == "num"]


def _argv_for(path, extra, positional=None, value=None):
    """A parseable command line for the subcommand at ``path``: dummies for its positionals and required options
    (the checks run before any of them is looked at), ``value`` in the ``positional`` one's place."""
    import argparse

    from scireid.cli import build_parser
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    argv = list(path)
    for act in parser._actions:
        if not act.option_strings and not isinstance(act, argparse._SubParsersAction):
            if act.dest == positional:
                argv.append(value)
            elif act.nargs != "*":
                argv.append("x")
        elif act.option_strings and act.required:
            argv += [act.option_strings[-1], "x"]
    return argv + _required_group_dummies(parser, extra) + extra


def _required_group_dummies(parser, given):
    """One member of each required either/or group (index remove --pid | --paths) unless ``given`` has one."""
    out = []
    for group in parser._mutually_exclusive_groups:
        opts = [a for a in group._group_actions if a.option_strings]
        if group.required and not any(a.option_strings[-1] in g or g.startswith(a.option_strings[-1] + "=")
                                      for a in opts for g in given):
            out += [opts[0].option_strings[-1], "1" if opts[0].type in (int, float) else "x"]
    return out


def test_every_numeric_option_has_a_range():
    from scireid.cli import NUMERIC_OPTIONS
    opts = _numeric_options()
    assert len(opts) >= 20
    missing = sorted({dest for _, _, dest, _ in opts} - set(NUMERIC_OPTIONS))
    assert not missing, f"numeric options without a range in NUMERIC_OPTIONS: {missing}"


@pytest.mark.parametrize("edge", ["-1", "huge", "nan", "word"])
def test_every_numeric_option_refuses_edge_values_in_one_line(capsys, edge):
    from scireid.cli import NUMERIC_OPTIONS
    for path, opt, dest, typ in _numeric_options():
        low, high = NUMERIC_OPTIONS[dest]
        value = {"-1": str(low - 1) if typ is int else str(low - 1.0), "huge": str(int(high) * 10 + 1),
                 "nan": "nan", "word": "many"}[edge]
        capsys.readouterr()
        rc = main(_argv_for(path, [opt, value]))
        err = capsys.readouterr().err.strip()
        assert rc == 2, (path, opt, value, rc, err)
        assert err.count("\n") == 0 and "Traceback" not in err, (path, opt, err)
        assert opt in err or opt.lstrip("-") in err or dest in err, (path, opt, err)


def _all_options():
    """(subcommand path, how it is written, dest, kind, positional?, type) for every option and positional of every
    subcommand; kind: num, choice, flag or text."""
    import argparse

    from scireid.cli import build_parser
    found = []

    def walk(parser, path):
        for act in parser._actions:
            if isinstance(act, argparse._SubParsersAction):
                for name, sp in act.choices.items():
                    walk(sp, path + [name])
            elif not isinstance(act, argparse._HelpAction):
                kind = ("num" if act.type in (int, float) else "choice" if act.choices else
                        "flag" if act.nargs == 0 else "text")
                found.append((tuple(path), act.option_strings[-1] if act.option_strings else act.dest, act.dest, kind,
                              not act.option_strings, act.type))
    walk(build_parser(), [])
    return found


EDGE = {"choice": ["no-such-choice"], "flag": ["=1"], "text": ["", "   ", "a\x00b"]}


def test_the_option_table_covers_every_option():
    opts = _all_options()
    kinds = {o[3] for o in opts}
    assert kinds == {"num", "choice", "flag", "text"} and len(opts) > 100


@pytest.mark.parametrize("kind", sorted(EDGE))
def test_every_option_refuses_nonsense_in_one_line(capsys, kind):
    """Every choice, flag and text option or positional of every subcommand (numbers: the test above) with values
    that cannot be right: exit 2 and one line that names it, before any work."""
    n = 0
    for path, opt, dest, k, positional, _ in _all_options():
        if k != kind or dest in ("help",):
            continue
        for value in EDGE[kind]:
            if positional:
                argv = _argv_for(path, [], dest, value)
            elif kind == "flag":
                argv = _argv_for(path, [opt + value])
            else:
                argv = _argv_for(path, [opt, value])
            capsys.readouterr()
            rc = main(argv)
            err = capsys.readouterr().err.strip()
            assert rc == 2, (argv, rc, err)
            assert err.count("\n") == 0 and "Traceback" not in err, (argv, err)
            assert opt in err or dest in err or opt.lstrip("-") in err, (argv, err)
            n += 1
    assert n >= {"choice": 10, "flag": 20, "text": 150}[kind]
