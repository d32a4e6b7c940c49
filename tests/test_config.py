import pytest
import yaml

from scireid.config import ConfigError, config_from_dict, list_presets, list_variants, load_config, save_config


def test_presets_carry_the_paper_recipe():
    assert list_presets() == ["ltcc", "market1501", "msmt17", "prcc", "synthetic", "vcclothes"]
    ltcc = load_config("ltcc")
    assert (ltcc.stage1.epochs, ltcc.stage2.epochs) == (60, 120)
    assert (ltcc.data.height, ltcc.data.width, ltcc.stage2.batch_size, ltcc.data.num_instances) == (256, 128, 64, 4)
    assert ltcc.stage2.batch_size // ltcc.data.num_instances == 16
    prcc = load_config("prcc")
    assert (prcc.stage1.epochs, prcc.stage2.epochs) == (20, 20)
    for name in list_presets():
        assert load_config(name).data.name == name


def test_variants_are_switches():
    assert set(list_variants()) >= {"baseline", "sse", "sim", "full", "self_attention"}
    b = load_config("ltcc", variant="baseline")
    assert (b.model.sse, b.model.sim, b.stage2.cal, b.stage1.contrastive_text) == (False, False, False, "id")
    f = load_config("ltcc", variant="full")
    assert (f.model.sse, f.model.sim, f.stage2.cal) == (True, True, True)
    assert load_config("ltcc", variant="self_attention").model.sim_attention == "self"


def test_overrides_typed():
    c = load_config("ltcc", ["stage2.epochs=3", "model.sim=false", "stage2.milestones=[1,2]", "stage1.lr=1e-3"])
    assert c.stage2.epochs == 3 and c.model.sim is False and c.stage2.milestones == [1, 2] and c.stage1.lr == 1e-3


@pytest.mark.parametrize("item,match", [
    ("stage2.epoch=3", "unknown key 'epoch'.*allowed in stage2: epochs"),
    ("stage3.epochs=3", "unknown section 'stage3'"),
    ("stage2.epochs=three", "stage2.epochs: expected an integer, got 'three'"),
    ("model.sim=maybe", "model.sim: expected true/false"),
    ("model.sim_attention=cross", "'cross' is not one of nonlocal, self"),
    ("epochs", "expected section.key=value"),
])
def test_bad_overrides(item, match):
    with pytest.raises(ConfigError, match=match):
        load_config("ltcc", [item])


def test_bad_yaml_key_names_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("stage1:\n  lr: 1\n  lamda1: 2\n")
    with pytest.raises(ConfigError, match=r"x.yaml: stage1.lamda1: unknown key"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="no such file and no preset"):
        load_config("nope")


def test_roundtrip(tmp_path):
    c = load_config("prcc", ["run.seed=7"])
    save_config(c, tmp_path / "config.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == c


def test_import_is_light():
    """`import scireid` must not pull in torch or open_clip (CLI start-up, docs builds)."""
    import subprocess
    import sys
    code = "import sys, scireid; bad = [m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
